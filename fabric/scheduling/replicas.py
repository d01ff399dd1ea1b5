"""Replica targets: how many engine replicas each model keeps, and whose to stop.

Shedding a site's traffic (the policy, every tick) is cheap and instant; stopping its engines
is not — a vLLM engine takes tens of seconds to start again. So a site's replicas are drained
only after it has been short of power (curtailed, or drawing over its budget) for
``drain_after_s`` without a break, and come back once its power is back (not curtailed,
headroom at least ``readmit_headroom`` of its budget: the fabric policy's own readmission
rule). Capacity the policy parks at low load (``RoutingTable.parked``: whole sites;
``keep_engines``: some of a site's engines) is stopped the same way, and comes back when the
policy unparks it. Targets never leave the spec's
[min_replicas, max_replicas]: a model whose minimum needs the short site keeps its replica
there (serving nothing while shed).

Pure: no Ray. The scheduler actor applies the plan through Serve's external-scaler API.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fabric.scheduling.signals import Snapshot


@dataclass(frozen=True)
class ModelReplicas:
    """One model's replica bounds: ``per_site`` replicas on each of ``hosts``, clamped."""

    model: str
    hosts: tuple[str, ...]
    per_site: int = 1
    min_replicas: int = 1
    max_replicas: int | None = None

    def clamp(self, n: int) -> int:
        upper = self.per_site * len(self.hosts) if self.max_replicas is None else self.max_replicas
        return max(self.min_replicas, min(n, upper))

    @property
    def full(self) -> int:
        """The target with every host serving (what the fabric deploys)."""
        return self.clamp(self.per_site * len(self.hosts))


@dataclass(frozen=True)
class ReplicaPlan:
    model: str
    target: int                    # replicas Serve should keep
    stop_sites: tuple[str, ...]    # drained hosts, in order: the replicas to stop are theirs


@dataclass
class ReplicaPlanner:
    models: list[ModelReplicas]
    drain_after_s: float = 60.0
    readmit_headroom: float = 0.05
    short_since: dict[str, float] = field(default_factory=dict)  # site -> first short tick
    drained: set[str] = field(default_factory=set)

    def observe(self, snapshot: Snapshot, now: float) -> None:
        """Track each site's power: short since when, drained or back."""
        for s in snapshot.sites:
            short = s.curtailed or s.headroom_w < 0
            back = (not s.curtailed and s.budget_w > 0
                    and s.headroom_w / s.budget_w >= self.readmit_headroom)
            if short:
                self.short_since.setdefault(s.name, now)
                if now - self.short_since[s.name] >= self.drain_after_s:
                    self.drained.add(s.name)
            elif back:
                self.short_since.pop(s.name, None)
                self.drained.discard(s.name)
            # in between (power back but not enough headroom yet): hold whatever was decided

    def plan(self, snapshot: Snapshot, now: float, parked: frozenset[str] = frozenset(),
             keep: dict[str, int] | None = None) -> dict[str, ReplicaPlan]:
        """Each model's target with its drained (short of power) and parked hosts stopped,
        and at hosts the policy runs with fewer engines (``keep``: site -> engines) the rest."""
        self.observe(snapshot, now)
        keep = keep or {}
        out = {}
        for m in self.models:
            gone = [h for h in m.hosts if h in self.drained or h in parked]
            part = [h for h in m.hosts if h not in gone and keep.get(h, m.per_site) < m.per_site]
            target = m.clamp(sum(0 if h in gone else min(m.per_site, max(0, keep.get(h, m.per_site)))
                                 for h in m.hosts))
            out[m.model] = ReplicaPlan(m.model, target, tuple(gone + part) if target < m.full else ())
        return out
