"""samekey's version: pyproject.toml's, as installed (the one source of it)."""

from importlib import metadata

try:
    __version__ = metadata.version("samekey")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
