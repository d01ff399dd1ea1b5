"""What a simulated run looked like over time: the live page's views, bin by bin.

``fabric simulate --html`` records, per time bin and site, what the live page shows of the
real fabric (power, price, carbon, routing weight against the traffic actually served,
tokens/s, TTFT p50/p99, drops, $ and gCO2 per million tokens, savings against least_load)
and the scheduler's actions, then turns each bin into a state shaped like ``fabric status
--json``'s, so the same page (``fabric/layers/ui.html``) replays the run. Memory is bounded
as in the traffic timeline: at most ``max_bins`` bins, adjacent ones merged as the run grows.
Pure numpy: the simulator feeds it once a tick.
"""

from __future__ import annotations

import numpy as np

from fabric.scheduling.counterfactual import counterfactuals
from fabric.scheduling.table import RoutingTable

# TTFT per site and bin: 6 log-spaced bins per decade from 1 ms to 100,000 s (about 47 % wide)
TTFT_EDGES = np.logspace(-3, 5, 8 * 6 + 1)
SUMS = ("ticks", "served", "dropped", "output_tokens", "energy_j", "cost_usd", "carbon_g",
        "weight", "saved_usd", "saved_g")
LASTS = ("budget_w", "price", "carbon", "renewable", "curtailed", "parked", "cost_per_mtok",
         "engines_on")
MAX_ACTIONS = 2000


def _quantile(hist: np.ndarray, q: float) -> float | None:
    total = hist.sum()
    if not total:
        return None
    i = int(np.searchsorted(np.cumsum(hist), q * total))
    return float(np.sqrt(TTFT_EDGES[i] * TTFT_EDGES[i + 1]))


class Recorder:
    """Per-bin, per-site series of a run plus its action log (curtail, readmit, park,
    unpark, shed, restore), each derived from what the simulated scheduler and grid did."""

    def __init__(self, names: list[str], regions: list[str], replicas: np.ndarray, model: str,
                 tick_s: float, max_bins: int = 240):
        self.names, self.regions, self.model = names, regions, model
        self.replicas = np.asarray(replicas)
        self.tick_s, self.ticks_per_bin = tick_s, 1
        self.max_bins = max(2, max_bins - max_bins % 2)
        n = len(names)
        self.data = {k: np.zeros((self.max_bins, n)) for k in SUMS + LASTS}
        self.ttft = np.zeros((self.max_bins, n, len(TTFT_EDGES) - 1), np.int32)
        self.version = np.zeros(self.max_bins, np.int64)
        self.bins = 0
        self.actions: list[dict] = []
        self.actions_dropped = 0
        self._prev: dict[str, np.ndarray] | None = None

    @property
    def bin_s(self) -> float:
        return self.tick_s * self.ticks_per_bin

    def _merge(self) -> None:
        half = self.max_bins // 2
        later = self.data["ticks"][1::2] > 0
        for k, a in self.data.items():
            merged = a[0::2] + a[1::2] if k in SUMS else np.where(later, a[1::2], a[0::2])
            a[:] = 0
            a[:half] = merged
        t = self.ttft[0::2] + self.ttft[1::2]
        self.ttft[:] = 0
        self.ttft[:half] = t
        v = np.maximum(self.version[0::2], self.version[1::2])
        self.version[:] = 0
        self.version[:half] = v
        self.ticks_per_bin *= 2
        self.bins = (self.bins + 1) // 2

    def add(self, tick: int, table: RoutingTable, snapshot, tick_figures: dict) -> None:
        """One tick: the table the policy published, the snapshot it saw and what the site
        arrays did (served, dropped, tokens, energy, cost, carbon, TTFTs of the served)."""
        while tick // self.ticks_per_bin >= self.max_bins:
            self._merge()
        b = tick // self.ticks_per_bin
        self.bins = max(self.bins, b + 1)
        n, d = len(self.names), self.data
        w = np.fromiter((table.weights.get(s, 0.0) for s in self.names), float, n)
        parked = np.fromiter((s in set(table.parked) for s in self.names), bool, n)
        cost = np.fromiter((table.cost_usd_per_mtok.get(s, np.nan) for s in self.names), float, n)
        f = tick_figures
        d["ticks"][b] += 1
        for k in ("served", "dropped", "output_tokens", "energy_j", "cost_usd", "carbon_g"):
            d[k][b] += f[k]
        d["weight"][b] += w
        # each request's energy priced twice, as the engines do live: here, and where
        # least_load would have sent it at this moment
        sig = {s.name: s for s in snapshot.sites}
        cf = counterfactuals(snapshot)
        req_j = np.array([f["output_tokens"][i] * (sig[s].j_per_token or 0.0) * sig[s].pue
                          for i, s in enumerate(self.names)])
        for i, s in enumerate(self.names):
            if s in cf and req_j[i] > 0:
                d["saved_usd"][b, i] += req_j[i] * (cf[s]["usd_per_j"] - f["price"][i] / 3.6e9)
                d["saved_g"][b, i] += req_j[i] * (cf[s]["g_per_j"] - f["carbon"][i] / 3.6e6)
        now = {"budget_w": f["budget_w"], "price": f["price"], "carbon": f["carbon"],
               "renewable": f["renewable"], "curtailed": f["curtailed"].astype(float),
               "parked": parked.astype(float), "cost_per_mtok": cost, "engines_on": f["engines_on"]}
        for k, v in now.items():
            d[k][b] = v
        site, ttft = f["ttft_site"], f["ttft"]
        if len(site):
            idx = np.clip(np.searchsorted(TTFT_EDGES, ttft, side="right") - 1, 0, len(TTFT_EDGES) - 2)
            np.add.at(self.ttft[b], (site, idx), 1)
        self.version[b] = table.version
        self._log(tick, now["curtailed"] > 0, parked, w, f["budget_w"])

    def _log(self, tick: int, curtailed, parked, w, budget) -> None:
        prev = self._prev
        self._prev = {"curtailed": curtailed, "parked": parked, "weighted": w > 0}
        if prev is None:
            return
        t = round(tick * self.tick_s, 3)
        changes = [("curtail", curtailed & ~prev["curtailed"]), ("readmit", ~curtailed & prev["curtailed"]),
                   ("park", parked & ~prev["parked"]), ("unpark", ~parked & prev["parked"]),
                   ("shed", ~(w > 0) & prev["weighted"] & ~parked),
                   ("restore", (w > 0) & ~prev["weighted"])]
        for action, mask in changes:
            for i in np.flatnonzero(mask):
                entry = {"tick": tick, "at": t, "action": action, "site": self.names[i]}
                if action == "curtail":
                    entry["budget_kw"] = round(float(budget[i]) / 1e3, 1)
                self.actions.append(entry)
        if len(self.actions) > MAX_ACTIONS:
            self.actions_dropped += len(self.actions) - MAX_ACTIONS
            del self.actions[:len(self.actions) - MAX_ACTIONS]

    def frames(self, policy: str, top: int | None = None) -> list[dict]:
        """Each bin as a state the live page renders (``fabric status --json``'s shape), for
        the ``top`` sites that served most (all by default)."""
        d, n = self.data, len(self.names)
        order = np.argsort(-d["served"][: self.bins].sum(axis=0), kind="stable")
        keep = sorted(order[: top or n])
        regions: dict[str, list[str]] = {}
        for i in keep:
            regions.setdefault(self.regions[i], []).append(self.names[i])
        out = []
        for b in range(self.bins):
            ticks = d["ticks"][b, 0] or 1
            span = ticks * self.tick_s
            t_end = (b * self.ticks_per_bin + ticks) * self.tick_s
            sites, nodes, groups, parked_now = [], [], [], []
            for i in keep:
                name = self.names[i]
                g = lambda k: float(d[k][b, i])  # noqa: E731
                facility = g("energy_j") / span
                tokens = g("output_tokens")
                cost = g("cost_per_mtok")
                parked = g("parked") > 0
                if parked:
                    parked_now.append(name)
                sites.append({
                    "site": name, "region": self.regions[i], "budget_w": g("budget_w"),
                    "facility_power_w": facility, "headroom_w": g("budget_w") - facility,
                    "price_usd_per_mwh": g("price"), "carbon_g_per_kwh": g("carbon"),
                    "renewable_share": g("renewable"), "curtailed": g("curtailed") > 0,
                    "routing_weight": g("weight") / ticks, "tokens_per_s": tokens / span,
                    "cost_usd_per_mtok": None if np.isnan(cost) else cost,
                    "engines_healthy": int(round(g("engines_on"))),
                    "engines_total": int(self.replicas[i])})
                nodes.append({"site": name, "tokens_per_s": tokens / span})
                served, dropped = int(g("served")), int(g("dropped"))
                if served or dropped:
                    mtok = tokens / 1e6
                    groups.append({
                        "site": name, "model": self.model, "requests": served + dropped,
                        "served": served, "tokens_out_per_s": tokens / span,
                        "ttft_p50_s": _quantile(self.ttft[b, i], 0.5),
                        "ttft_p99_s": _quantile(self.ttft[b, i], 0.99),
                        "refused": {"dropped": dropped} if dropped else {},
                        "usd_per_mtok": g("cost_usd") / mtok if mtok else None,
                        "gco2_per_mtok": g("carbon_g") / mtok if mtok else None,
                        "saved_usd": g("saved_usd"), "saved_kg_co2": g("saved_g") / 1e3})
            out.append({
                "time": t_end, "bin_s": span, "tick": int(b * self.ticks_per_bin + ticks - 1),
                "policy": policy, "routing_table": {"version": int(self.version[b])},
                "regions": [{"region": r, "sites": s} for r, s in regions.items()],
                "replica_targets": {"parked": parked_now}, "sites": sites, "nodes": nodes,
                "recent": {"groups": groups},
                "actions": [a for a in self.actions if a["at"] <= t_end][-50:]})
        return out
