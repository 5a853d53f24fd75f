"""The app's periodic entries (``app.schedule``): static ones from code and configuration,
dynamic ones persisted in the result backend so every scheduler sees them, and which entries
are disabled (stored alike, so every running beat honours it).

The backend offers no compare-and-set, so writers of the dynamic entries take a lock made of a
counter claim (see :meth:`BeatSchedule._update`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from asyncq._utils import describe_error, utcnow
from asyncq.beat_entries import KEY_PREFIX, LAST_RUN_PREFIX, CatchUp, Entry
from asyncq.exceptions import ConfigurationError

if TYPE_CHECKING:
    from asyncq.app import App


__all__ = ["ENTRIES_KEY", "BeatSchedule"]

logger = logging.getLogger(__name__)

ENTRIES_KEY: Final = KEY_PREFIX + "entries"
_LOCK_PREFIX: Final = KEY_PREFIX + "entries-lock:"

# A writer of the dynamic entries that holds the lock longer than this is presumed dead.
LOCK_LEASE: Final = 10.0
LOCK_POLL: Final = 0.05


class BeatSchedule:
    """``app.schedule``: the app's periodic entries.

    Static entries come from ``conf.beat_schedule`` and ``@app.periodic`` (the configuration
    wins on a name clash) and are read afresh each time, so setting ``beat_schedule`` after
    creating the app works. Dynamic entries, from :meth:`add`, are stored in the result
    backend as one JSON record under ``asyncq:beat:entries``, so every scheduler sharing the
    backend sees them (on ``memory://`` they live in this process only). A dynamic entry
    replaces a static one of the same name; :meth:`remove` of a static entry stores a
    tombstone that disables it until it is added again. :meth:`disable` keeps an entry (static
    or dynamic) but stops every scheduler sending it until :meth:`enable`.
    """

    def __init__(self, app: App) -> None:
        self._app = app
        self._periodic: dict[str, Entry] = {}
        # Schedulers of this process waiting to hear about changes: event -> its loop.
        self._listeners: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}
        self._parsed: tuple[bytes, int, dict[str, Entry | None], frozenset[str]] | None = None

    def __repr__(self) -> str:
        return f"<BeatSchedule of {self._app!r}>"

    # -- static ---------------------------------------------------------------------------------

    def add_static(self, entry: Entry) -> None:
        """Add an entry defined in code (``@app.periodic``); it lives as long as the process."""
        existing = self._periodic.get(entry.name)
        if existing is not None and existing != entry:
            raise ConfigurationError(f"a different periodic entry is already named {entry.name!r}")
        self._periodic[entry.name] = entry

    def static_entries(self) -> dict[str, Entry]:
        """Entries from ``@app.periodic`` and ``conf.beat_schedule``, validated."""
        entries = dict(self._periodic)
        config = self._app.conf.beat_schedule
        if not isinstance(config, Mapping):
            raise ConfigurationError(f"setting beat_schedule must be a dict, got {type(config).__name__}")
        for name, spec in config.items():
            entries[name] = Entry.from_config(name, spec)
        return entries

    # -- dynamic ----------------------------------------------------------------------------------

    async def add(
        self,
        name: str,
        task: object,
        schedule: object,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        catch_up: CatchUp = "skip",
    ) -> Entry:
        """Add or replace the entry ``name``, for every scheduler sharing the result backend.

        ``task`` is a task or a task name; ``schedule`` a crontab, an interval, a timedelta or
        seconds. Arguments and options must be JSON, since the entry is stored.
        """
        entry = Entry.build(
            name, task, schedule, args=args, kwargs=kwargs, options=options, catch_up=catch_up
        )
        config = entry.to_config()

        def change(entries: dict[str, Any], disabled: set[str]) -> None:
            entries[name] = config

        await self._update(change)
        return entry

    async def remove(self, name: str) -> bool:
        """Remove the entry ``name`` everywhere; return False if there was no such entry."""
        existed = name in (await self.snapshot())[0]

        def change(entries: dict[str, Any], disabled: set[str]) -> None:
            disabled.discard(name)
            if name in self.static_entries():
                entries[name] = None  # a tombstone: the static definition stays off
            else:
                entries.pop(name, None)

        if existed:
            await self._update(change)
        return existed

    async def disable(self, name: str) -> bool:
        """Stop every scheduler sending ``name`` (kept, listed as disabled); False if no such entry.

        Running schedulers drop it at their next refresh (``beat_refresh_interval``; at once in
        this process). Ticks that fall while it is disabled are never sent, not even by
        ``catch_up="once"`` once it is enabled again.
        """
        return await self._set_enabled(name, False)

    async def enable(self, name: str) -> bool:
        """Let the schedulers send ``name`` again, from its next tick; False if no such entry."""
        return await self._set_enabled(name, True)

    async def _set_enabled(self, name: str, enabled: bool) -> bool:
        entry = (await self.snapshot())[0].get(name)
        if entry is None:
            return False

        def change(entries: dict[str, Any], disabled: set[str]) -> None:
            if enabled:
                disabled.discard(name)
            else:
                disabled.add(name)

        if enabled and entry.catch_up == "once":
            # catch_up="once" sends the latest tick missed since the last run: make "now" the
            # last run, so re-enabling does not send a tick that fell while disabled.
            record = json.dumps({"tick": utcnow().timestamp(), "task_id": None}).encode()
            await self._app.backend.set(LAST_RUN_PREFIX + name, record, final=False, ttl=None)
        await self._update(change)
        return True

    async def entries(self) -> dict[str, Entry]:
        """Every entry in force (enabled): static ones, then dynamic ones over them; sorted by name."""
        merged, disabled = await self.snapshot()
        return {name: entry for name, entry in merged.items() if name not in disabled}

    async def snapshot(self) -> tuple[dict[str, Entry], frozenset[str]]:
        """Every entry, enabled or not, sorted by name, and the names of the disabled ones."""
        merged = self.static_entries()
        _, dynamic, disabled = await self._read()
        for name, entry in dynamic.items():
            if entry is None:
                merged.pop(name, None)
            else:
                merged[name] = entry
        return dict(sorted(merged.items())), disabled & frozenset(merged)

    async def _read(self) -> tuple[int, dict[str, Entry | None], frozenset[str]]:
        """The stored version, dynamic entries (None marks a removed static entry), disabled names."""
        await self._app.connect()
        raw = await self._app.backend.get(ENTRIES_KEY)
        if raw is None:
            return 0, {}, frozenset()
        if self._parsed is not None and self._parsed[0] == raw:
            return self._parsed[1], dict(self._parsed[2]), self._parsed[3]
        version, stored, disabled = _decode_entries(raw)
        entries: dict[str, Entry | None] = {}
        for name, spec in stored.items():
            if spec is None:
                entries[name] = None
                continue
            try:
                entries[name] = Entry.from_config(name, spec)
            except ConfigurationError as exc:
                # One bad stored entry must not stop the others; it was valid when stored, so
                # this is a newer asyncq reading an older record or a hand edit.
                logger.error("ignoring stored periodic entry: %s", describe_error(exc))
        self._parsed = (raw, version, entries, frozenset(disabled))
        return version, dict(entries), frozenset(disabled)

    async def _update(self, change: Callable[[dict[str, Any], set[str]], None]) -> None:
        """Read-modify-write the stored entries under a lock, so concurrent writers lose nothing.

        The backend offers no compare-and-set, so the lock is a claim: the writer that takes
        ``incr(lock:<version>:<generation>) == 1`` writes version + 1; the others wait for the
        version to move and retry on top of it. A holder silent for LOCK_LEASE seconds is
        presumed dead and the waiters move on to the next generation's key.
        """
        await self._app.connect()
        backend = self._app.backend
        generation = 0
        while True:
            raw = await backend.get(ENTRIES_KEY)
            version = 0 if raw is None else _decode_entries(raw)[0]
            claim = await backend.incr(f"{_LOCK_PREFIX}{version}:{generation}", ttl=LOCK_LEASE * 6)
            if claim == 1:
                # Our read may predate a write whose lock key has expired since: re-read.
                raw = await backend.get(ENTRIES_KEY)
                current, stored, disabled = (0, {}, set()) if raw is None else _decode_entries(raw)
                if current != version:
                    generation = 0
                    continue
                change(stored, disabled)
                record = json.dumps(
                    {"version": version + 1, "entries": stored, "disabled": sorted(disabled)}, sort_keys=True
                )
                await backend.set(ENTRIES_KEY, record.encode(), final=False, ttl=None)
                self._notify()
                return
            deadline = time.monotonic() + LOCK_LEASE
            while time.monotonic() < deadline:
                await asyncio.sleep(LOCK_POLL)
                raw = await backend.get(ENTRIES_KEY)
                if raw is not None and _decode_entries(raw)[0] != version:
                    generation = 0
                    break
            else:
                logger.warning(
                    "the writer of periodic entries version %d went silent; taking over", version + 1
                )
                generation += 1

    def _listen(self, event: asyncio.Event) -> None:
        self._listeners[event] = asyncio.get_running_loop()

    def _unlisten(self, event: asyncio.Event) -> None:
        self._listeners.pop(event, None)

    def _notify(self) -> None:
        """Wake this process's schedulers so a change applies now, not at the next refresh."""
        for event, loop in list(self._listeners.items()):
            if loop.is_closed():
                self._listeners.pop(event, None)
            else:
                loop.call_soon_threadsafe(event.set)


def _decode_entries(raw: bytes) -> tuple[int, dict[str, Any], set[str]]:
    try:
        data = json.loads(raw)
        # "disabled" is absent from records written before entries could be disabled.
        version, entries, disabled = data["version"], data["entries"], data.get("disabled", [])
        if not isinstance(version, int) or not isinstance(entries, dict) or not isinstance(disabled, list):
            raise TypeError("bad field types")
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigurationError(f"the stored periodic entries ({ENTRIES_KEY}) are corrupt: {exc}") from exc
    return version, entries, {str(name) for name in disabled}


# -- the loop -----------------------------------------------------------------------------------------
