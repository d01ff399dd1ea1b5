"""Each member as the federation sees it: its last snapshot and whether it takes traffic.

Pure (no I/O). A member is *in* while it answers; one failed snapshot (or a connection it
refused on the data path) puts it *out* at once, so it leaves the table within a tick; a member
that answers again is readmitted only after ``readmit_after`` good snapshots in a row
(hysteresis: a flapping member does not win traffic back on every good answer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fabric.federation.spec import MemberSpec
from fabric.scheduling.signals import SiteSignals

NEW, IN, OUT, BACK = "new", "in", "out", "coming back"


@dataclass
class MemberView:
    """What a member's snapshot says: its sites' signals, its models and its regions."""

    sites: list[SiteSignals]
    models: list[dict]              # {"id", "tier", "regions", "edge"}: the member's catalog
    edge_regions: frozenset[str]
    tick: int = 0

    @classmethod
    def parse(cls, data: dict) -> "MemberView":
        """From the member's ``/fabric/v1/federation/snapshot`` answer (ValueError if bad)."""
        try:
            snap = data.get("snapshot") or {"sites": []}
            sites = [SiteSignals.model_validate(s) for s in snap["sites"]]
            models = [dict(m) for m in data["models"]]
            edge = frozenset(r["name"] for r in data["regions"] if r.get("edge"))
            return cls(sites=sites, models=models, edge_regions=edge, tick=int(snap.get("tick", 0)))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a member snapshot: {exc!r}") from None

    def serves(self, model: str | None, tier: str | None, edge: bool) -> bool:
        """Whether the member has a model for the request (``auto``/None: any model)."""
        for m in self.models:
            if model not in (None, "auto") and m["id"] != model:
                continue
            if tier and model in (None, "auto") and m.get("tier") != tier:
                continue
            if edge and not m.get("edge"):
                continue
            return True
        return False

    def sites_for(self, model: str | None) -> list[str]:
        """Its sites serving ``model`` (all of them for auto/None)."""
        if model in (None, "auto"):
            return [s.name for s in self.sites]
        return [s.name for s in self.sites if s.serves == model]


@dataclass
class Member:
    spec: MemberSpec
    state: str = NEW
    good: int = 0                   # good snapshots in a row since it was last out
    reason: str = ""                # why it is out (or last failed)
    since: float = field(default_factory=time.time)  # when the state last changed
    view: MemberView | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def usable(self) -> bool:
        return self.state == IN and self.view is not None

    def answered(self, view: MemberView, readmit_after: int, now: float | None = None) -> bool:
        """A good snapshot. Returns whether the member (re)joined the table."""
        self.view = view
        self.good += 1
        if self.state == NEW or (self.state in (OUT, BACK) and self.good >= readmit_after):
            self._move(IN, "", now)
            return True
        if self.state == OUT:
            self._move(BACK, self.reason, now)
        return False

    def failed(self, reason: str, now: float | None = None) -> bool:
        """A failed snapshot or refused connection. Returns whether it just left the table."""
        self.good = 0
        self.reason = reason
        if self.state in (IN, NEW, BACK):
            left = self.state == IN
            self._move(OUT, reason, now)
            return left
        return False

    def _move(self, state: str, reason: str, now: float | None) -> None:
        self.state, self.reason = state, reason
        self.since = time.time() if now is None else now

    def status(self) -> dict:
        return {"name": self.name, "url": self.spec.url, "regions": self.spec.regions,
                "state": self.state, "reason": self.reason, "since": round(self.since, 3),
                "good_in_a_row": self.good,
                "sites": [s.name for s in self.view.sites] if self.view else [],
                "models": [m["id"] for m in self.view.models] if self.view else []}
