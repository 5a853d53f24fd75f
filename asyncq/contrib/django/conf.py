"""The project's App, built once from Django's settings (``ASYNCQ`` dict and ``ASYNCQ_*`` settings)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from asyncq.app import App
from asyncq.config import SETTINGS
from asyncq.exceptions import ConfigurationError

__all__ = ["INTEGRATION_SETTINGS", "app_settings", "get_app"]

#: Django settings of the integration itself, not asyncq settings.
INTEGRATION_SETTINGS = frozenset({"ASYNCQ", "ASYNCQ_APP", "ASYNCQ_APP_NAME", "ASYNCQ_AUTODISCOVER"})


def app_settings(settings: Any) -> dict[str, Any]:
    """The asyncq settings found in Django's ``settings`` (lower-case asyncq names -> values).

    Raises:
        asyncq.exceptions.ConfigurationError: ``ASYNCQ`` is not a dict, a name is not an asyncq
            setting, or one setting is given both in ``ASYNCQ`` and as ``ASYNCQ_<NAME>``.
    """
    block = getattr(settings, "ASYNCQ", None) or {}
    if not isinstance(block, Mapping):
        raise ConfigurationError(f"settings.ASYNCQ must be a dict of asyncq settings, not {block!r}")
    values: dict[str, Any] = {}
    for key, value in block.items():
        name = str(key).lower()
        _check_known(name, f"settings.ASYNCQ[{key!r}]")
        values[name] = value
    for attr in dir(settings):
        if not attr.startswith("ASYNCQ_") or attr in INTEGRATION_SETTINGS:
            continue
        name = attr.removeprefix("ASYNCQ_").lower()
        _check_known(name, f"settings.{attr}")
        if name in values:
            raise ConfigurationError(
                f"asyncq setting {name!r} is given twice, in settings.ASYNCQ and as settings.{attr}; keep one"
            )
        values[name] = getattr(settings, attr)
    return values


def _check_known(name: str, where: str) -> None:
    if name not in SETTINGS:
        import difflib

        close = difflib.get_close_matches(name, SETTINGS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigurationError(f"{where} is not an asyncq setting{hint}")


@functools.cache
def get_app() -> App:
    """The project's App: ``settings.ASYNCQ_APP`` ("module:attribute") if set, else one built here.

    A built App is named ``settings.ASYNCQ_APP_NAME`` (default: the settings module's top
    package) and configured from :func:`app_settings`. It is made once per process.
    """
    from django.conf import settings

    from asyncq._utils import import_string

    path = getattr(settings, "ASYNCQ_APP", None)
    if path:
        found = import_string(path)
        if not isinstance(found, App):
            raise ConfigurationError(f"settings.ASYNCQ_APP={path!r} is {found!r}, not an asyncq App")
        found.conf.update(app_settings(settings))
        return found
    default_name = (getattr(settings, "SETTINGS_MODULE", None) or "django").split(".")[0]
    return App(str(getattr(settings, "ASYNCQ_APP_NAME", default_name)), config=app_settings(settings))
