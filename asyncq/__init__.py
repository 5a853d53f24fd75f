"""asyncq: an asyncio-native distributed task queue."""

from asyncq.__about__ import __version__

__all__ = ["__version__"]
