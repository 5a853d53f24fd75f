"""Resolving a driver class from a URL scheme: built-in registry first, then entry points."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from asyncq._utils import import_string, redact_url
from asyncq.exceptions import ConfigurationError, MissingDependencyError

__all__ = ["driver_class", "url_scheme"]


def url_scheme(url: str) -> str:
    """Return the scheme of a driver URL, refusing strings that are not URLs."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"{url!r} is not a URL; expected something like 'redis://localhost:6379/0'")
    return urlsplit(url).scheme.lower()


def driver_class(kind: str, url: str, builtin: Mapping[str, str], group: str) -> Any:
    """Import and return the class registered for ``url``'s scheme.

    Args:
        kind: "broker" or "result backend", for messages.
        url: the configured URL.
        builtin: scheme -> "module:Class" for the drivers shipped with asyncq.
        group: the entry-point group third-party drivers register under.
    """
    scheme = url_scheme(url)
    target = builtin.get(scheme)
    if target is None:
        for ep in entry_points(group=group):
            if ep.name == scheme:
                return ep.load()
        known = ", ".join(sorted({*builtin, *(ep.name for ep in entry_points(group=group))}))
        raise ConfigurationError(f"unknown {kind} scheme {scheme!r} in {redact_url(url)!r}; known: {known}")
    try:
        # A driver whose client library is missing raises MissingDependencyError itself, naming
        # the extra that installs it; that error passes through unchanged.
        return import_string(target)
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(f"the {scheme}:// {kind} needs the missing module {exc.name!r}") from exc
