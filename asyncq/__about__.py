"""The package version, read by the build and by ``asyncq --version``."""

__version__ = "0.1.0"
