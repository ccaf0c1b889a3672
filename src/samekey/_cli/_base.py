"""Exit codes and the error every command raises for a usage or journal problem."""

from __future__ import annotations

__all__ = [
    "EXIT_CLOSED_PIPE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_CLOSED_PIPE = (
    130,
    141,
)  # 128 + SIGINT, 128 + SIGPIPE: what a shell reports for them


class CliError(Exception):
    """A usage or journal problem: one line on stderr, exit code 2."""
