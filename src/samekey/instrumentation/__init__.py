"""samekey's instrumentation: OpenTelemetry traces and metrics, on by itself.

As with any library instrumented with OpenTelemetry, samekey calls only the OpenTelemetry API
(``pip install "samekey[otel]"``), and only when it is installed: the application's
TracerProvider and MeterProvider decide where spans and metrics go. While none is set, samekey
only checks that at each call (about a microsecond). `set_opentelemetry(False)` turns it off.

What samekey reports (span and metric names, attributes) is listed in the observability guide.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from .._engine import Engine
    from .._hooks import CallTracker

__all__ = ["opentelemetry_enabled", "set_opentelemetry"]

_wanted = True
_available: bool | None = None  # None: not looked for yet
# _otel's, once loaded
_tracker: Callable[[Engine, httpx.Request], CallTracker | None] | None = None


def set_opentelemetry(enabled: bool) -> None:
    """Turn samekey's OpenTelemetry spans and metrics on (the default) or off, for every client."""
    global _wanted
    if not isinstance(enabled, bool):
        raise TypeError(f"set_opentelemetry takes True or False, got {enabled!r}")
    _wanted = enabled


def opentelemetry_enabled() -> bool:
    """Whether samekey reports to OpenTelemetry: on, and opentelemetry-api installed."""
    global _available
    if _available is None:
        try:
            _available = importlib.util.find_spec("opentelemetry.trace") is not None
        except ImportError:  # another opentelemetry-* package, without the API
            _available = False
    return _wanted and _available


def track(engine: Engine, request: httpx.Request) -> CallTracker | None:
    """The tracker of one call, or None when samekey reports to nothing."""
    global _tracker
    if _tracker is None:
        if not (_wanted and opentelemetry_enabled()):
            return None
        from ._otel import tracker  # imported on the first call: `import samekey` stays light

        _tracker = tracker
    return _tracker(engine, request) if _wanted else None
