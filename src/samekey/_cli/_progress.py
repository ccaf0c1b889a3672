"""What ``samekey resume`` tells the operator while it runs.

Every line goes through one `Progress`, under one lock: result lines to stdout in the
journal's order, notes and ``-v`` attempt lines to stderr as they happen (the attempt
lines come from the ``on_retry`` hook, on the sending threads), and on a terminal a
one-line bar on stderr, erased before any other line is written and drawn again after.
The bar is written to the raw stream: the escaping stream would show its ``\\r`` as text.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from .._hooks import RetryDetails

__all__ = ["Progress"]

_BAR_COLUMNS = 24


class Progress:
    """The output of one resume run (``labels``: operation -> ``[n/total] name``)."""

    def __init__(
        self,
        out: TextIO | None,
        err: TextIO,
        raw_err: TextIO,
        labels: dict[str, str],
        *,
        verbose: bool,
        bar: bool,
    ) -> None:
        self.out, self.err, self.raw_err = out, err, raw_err
        self.labels = labels
        self.verbose = verbose
        self.bar = bar and len(labels) > 1 and _isatty(raw_err)
        self.lock = threading.Lock()
        self.finished = self.failed = 0
        self.started = time.monotonic()
        self._shown = False

    def retried(self, details: RetryDetails, /) -> None:
        """The ``on_retry`` hook: with ``-v``, one line per failed attempt that will be retried."""
        if not self.verbose:
            return
        label = self.labels.get(details.operation or "", details.operation or details.url)
        self.note(
            f"{label}: attempt {details.attempt} failed ({details.reason}); "
            f"attempt {details.attempt + 1} in {details.next_wait:.1f} s"
        )

    def note(self, line: str) -> None:
        """A line on stderr now (a lease being waited for, an attempt)."""
        with self.lock:
            self._erase()
            self.err.write(line + "\n")
            self.err.flush()
            self._draw()

    def result(self, line: str, *, failed: bool) -> None:
        """One operation's outcome on stdout; the bar moves on."""
        with self.lock:
            self._erase()
            self.finished += 1
            self.failed += failed
            if self.out is not None:  # None: --json, which prints one document at the end
                self.out.write(line + "\n")
                self.out.flush()
            self._draw()

    def start(self) -> None:
        with self.lock:
            self._draw()

    def close(self) -> None:
        with self.lock:
            self._erase()

    def _draw(self) -> None:
        if not self.bar:
            return
        total = len(self.labels)
        filled = _BAR_COLUMNS * self.finished // total
        elapsed = time.monotonic() - self.started
        self.raw_err.write(
            f"\r[{'#' * filled}{'-' * (_BAR_COLUMNS - filled)}] {self.finished}/{total} done, "
            f"{self.failed} failed, {elapsed:.0f} s\x1b[K"
        )
        self.raw_err.flush()
        self._shown = True

    def _erase(self) -> None:
        if self._shown:
            self.raw_err.write("\r\x1b[K")
            self.raw_err.flush()
            self._shown = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False
