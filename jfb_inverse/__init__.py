"""jfb-inverse: implicit (fixed-point) networks for imaging inverse problems, trained with JFB."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jfb-inverse")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
