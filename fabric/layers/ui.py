"""Layer 5, the operator's live page: ``/fabric/ui`` on the fabric's own port.

The page (``ui.html``: plain JS and SVG, nothing fetched from the network) draws the sites by
region, the routing table against the traffic each site actually takes, tokens/s, $ and
gCO2 per million tokens and the scheduler's actions, from server-sent events
(``/fabric/ui/events``, one a second). Every number is ``fabric status --json``'s own
(``fabric.status.gather``), read once a second by one poller per replica however many pages
watch, and not at all while none does. Operator-only: with ``endpoint.operator_key_sha256``
set the key must come as ``?key=`` (a browser's EventSource cannot send headers); without
it the page is served only when the endpoint listens on loopback. Fleet data only: no
tenant's usage is on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import deque
from importlib import resources

from fabric.layers.errors import openai_error

PERIOD_S = 1.0
HISTORY_S = 300.0   # the chart's window, kept here so a reloaded page keeps its chart
MAX_STREAMS = 64
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def ui_args(spec) -> dict:
    return {"operator_key_sha256": spec.endpoint.operator_key_sha256,
            "loopback": spec.endpoint.host in LOOPBACK}


def operator_refusal(key_hash: str | None, loopback: bool, given: str,
                     needs: str = "this needs the operator key") -> object | None:
    """None when a caller holding ``given`` may see operator data (the live page, a member's
    snapshot for its federation), else the OpenAI-style refusal: with an operator key in the
    spec the key must match; without one only a loopback endpoint serves it."""
    if key_hash:
        digest = hashlib.sha256(given.encode()).hexdigest()
        if hmac.compare_digest(digest, key_hash):
            return None
        return openai_error(401, needs, None, "key", "invalid_api_key")
    if not loopback:
        return openai_error(403, "operator data is served on a loopback endpoint only, or "
                            "with endpoint.operator_key_sha256 set in the spec", None, None,
                            "operator_key_required")
    return None


def page() -> str:
    return resources.files("fabric.layers").joinpath("ui.html").read_text()


class LiveState:
    """The page's data: ``gather()`` (what ``fabric status --json`` prints) plus the
    scheduler's recent actions, refreshed every ``PERIOD_S`` while someone watches."""

    def __init__(self, operator_key_sha256: str | None = None, loopback: bool = True):
        self.key_hash, self.loopback = operator_key_sha256, loopback
        self.state: dict | None = None
        self.at = 0.0
        self.streams = 0
        self.history: deque[dict] = deque()
        self._lock = asyncio.Lock()

    def refusal(self, query: dict):
        """None when the caller may see the page, else the OpenAI-style refusal."""
        return operator_refusal(self.key_hash, self.loopback, query.get("key", ""),
                                "the live page needs the operator key: /fabric/ui?key=...")

    async def latest(self) -> dict:
        """The state at most ``PERIOD_S`` old (one gather for every caller in that time)."""
        async with self._lock:
            if self.state is None or time.monotonic() - self.at >= PERIOD_S:
                self.state = await asyncio.to_thread(_gather)
                self.at = time.monotonic()
                self._remember(self.state)
            return {**self.state, "server": self.server()}

    def _remember(self, state: dict) -> None:
        """The chart's point of this state (the page draws the same from each event)."""
        sites = state.get("sites") or []
        total = sum(s.get("tokens_per_s") or 0.0 for s in sites)
        self.history.append({
            "t": state["time"],
            "weights": {s["site"]: s.get("routing_weight") or 0.0 for s in sites},
            "shares": {s["site"]: (s.get("tokens_per_s") or 0.0) / total if total > 0 else 0.0
                       for s in sites},
            "curtailed": [s["site"] for s in sites if s.get("curtailed")]})
        while self.history and self.history[0]["t"] < state["time"] - HISTORY_S:
            self.history.popleft()

    async def first(self) -> dict:
        """The state with the chart's history: what a page gets first (on a reload too)."""
        state = await self.latest()
        return {**state, "history": list(self.history)}

    def server(self) -> dict:
        """What this replica holds for the page (a leak shows here): open streams, asyncio
        tasks, resident memory."""
        import psutil

        return {"streams": self.streams, "tasks": len(asyncio.all_tasks()),
                "rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1)}

    async def events(self, request):
        """Server-sent events: the state once a second until the client goes away."""
        self.streams += 1
        fresh = True
        try:
            while not await request.is_disconnected():
                try:
                    body = json.dumps(await (self.first() if fresh else self.latest()), default=str)
                    fresh = False
                except Exception as exc:  # the page says so, and the stream goes on
                    body = json.dumps({"error": f"the fabric's state is not readable now: {exc}"})
                yield f"data: {body}\n\n"
                await asyncio.sleep(PERIOD_S)
        finally:
            self.streams -= 1


def _gather() -> dict:
    from fabric.status import gather

    return {**gather(), "time": time.time()}
