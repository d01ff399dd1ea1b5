"""Values that change now and then, and readers that wait for the next change (long polls).

The control plane's signals change far less often than a fixed polling period: a grid price
every replayed hour, a site's draw when its load moves, a routing table when the policy moves a
weight. So a producer keeps its value in a ``Watched`` and a reader asks ``wait(since)`` with the
version it holds: the answer comes at once when that is not the current version, else when the
value next changes or after ``wait_s``. A quiet fabric then sends one call per reader per
``wait_s``, and a change reaches its readers in one call's time rather than a polling period.

Versions start from the wall clock in milliseconds, so a restarted producer never reuses a
version an old reader holds (the reader gets the new value at once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

logger = logging.getLogger("fabric.watch")

FOLLOW_WAIT_S = 30.0  # a long poll's longest wait: a reader hears from its producer this often


class Watched:
    """A value with a version that moves when the value changes."""

    def __init__(self) -> None:
        self.value: Any = None
        self.version = int(time.time() * 1000)
        self._changed: asyncio.Event | None = None

    def set(self, value: Any) -> bool:
        """Store ``value``; wake the waiting readers if it differs. Returns whether it did."""
        if value == self.value:
            return False
        self.value = value
        self.bump()
        return True

    def bump(self) -> None:
        """A new version without comparing (for values whose change is known, not computed)."""
        self.version += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait(self, since: int | None, wait_s: float) -> bool:
        """Return once the version differs from ``since`` or after ``wait_s``. Returns whether
        the reader's version is out of date."""
        if since != self.version:
            return True
        if wait_s <= 0:
            return False
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), wait_s)
        except asyncio.TimeoutError:
            pass
        return since != self.version

    async def answer(self, since: int | None, wait_s: float) -> tuple[int, Any]:
        """A long poll's answer: (version, value), the value None when the reader has it."""
        changed = await self.wait(since, wait_s)
        return self.version, (self.value if changed else None)


class WatchedMap:
    """Keyed values (one per site, say) under one version: a reader holding version ``since``
    is answered with only the keys that changed after it, so one long poll follows them all
    and a quiet key costs its reader nothing. A ``since`` this map never gave (a new reader,
    or one that read a producer since restarted) gets every key."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._all = Watched()
        self._first = self._all.version
        self._changed_at: dict[str, int] = {}  # key -> the version its value last changed at

    @property
    def version(self) -> int:
        return self._all.version

    def set(self, key: str, value: Any) -> bool:
        """Store ``key``'s value; wake the waiting readers if it differs. Returns whether it did."""
        if key in self.values and self.values[key] == value:
            return False
        self.values[key] = value
        self._all.bump()
        self._changed_at[key] = self._all.version
        return True

    async def answer(self, since: int | None, wait_s: float) -> tuple[int, dict | None]:
        """A long poll's answer: (version, {key: value} changed after ``since``), None for the
        values when nothing changed within ``wait_s``."""
        if since is None or not self._first <= since <= self._all.version:
            return self._all.version, dict(self.values)
        if not await self._all.wait(since, wait_s):
            return self._all.version, None
        return self._all.version, {k: self.values[k] for k, at in self._changed_at.items()
                                   if at > since}


async def follow(ask: Callable[[int | None, float], Awaitable[tuple[int, Any]]],
                 apply: Callable[[Any], None], wait_s: float = FOLLOW_WAIT_S,
                 retry_s: float = 1.0, on_error: Callable[[Exception], None] | None = None) -> None:
    """Keep ``apply``-ing a producer's value as it changes, forever: ``ask(since, wait_s)`` is a
    long poll answering (version, value or None). A failed ask (producer restarting or gone) is
    retried after ``retry_s`` from scratch (``on_error`` first, e.g. to look the producer up)."""
    version: int | None = None
    while True:
        try:
            version, value = await ask(version, wait_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("long poll failed, retrying: %s", exc)
            version = None
            if on_error is not None:
                on_error(exc)
            await asyncio.sleep(retry_s)
            continue
        if value is not None:
            apply(value)
