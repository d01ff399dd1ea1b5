"""The physical limit: the cheapest dispatch with perfect knowledge of arrivals and grid. Pure.

A linear program over time slots × sites (solved by HiGHS through scipy). For each slot ``t``
the trace's requests are known (their prompt and output tokens) and so is every site's grid
(price, carbon, budget). Variables: ``f[t,i]``, the share of slot t's requests served at site
i, and ``on[t,i]``, the share of site i's capacity powered (the rest parked: drawing nothing).
Constraints: every request served (Σ_i f = 1); a site's work fits its SLO-safe utilisation of
the powered capacity (f·W ≤ ρ*·slot·on); its facility power fits its grid budget (PUE ×
(idle·on + dynamic·work rate) ≤ budget). Objective: energy dollars plus carbon at the same
carbon price the dispatch policy uses. Parking decisions are relaxed to fractions and cold
starts are free, so no policy can do better: the result is a lower bound, the ceiling of what
scheduling can save.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from fabric.scheduling.capacity import slo_safe_utilisation
from fabric.sim.engine import J_PER_MWH, SimConfig, Trace
from fabric.sim.fleet import build_fleet
from fabric.spec import FabricSpec


class OracleResult(BaseModel):
    slots: int
    slot_s: float
    requests: int
    energy_mwh: float
    energy_cost_usd: float
    carbon_kg: float
    objective_usd: float      # energy dollars + carbon at the carbon price
    unserved_share: float     # of requests no site could take (infeasible slots)
    parked_share: float       # of site-slots left unpowered
    per_site: dict[str, dict[str, float]] = {}   # site -> share of requests, mean powered share,
                                                 # energy, its $ and carbon


def slot_demand(trace: Trace, slot_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Requests, prompt tokens and output tokens per slot of ``slot_s``."""
    n, p, o = [], [], []
    for b in trace.batches():
        if not len(b):
            continue
        k = (b.t // slot_s).astype(np.int64)
        size = int(k.max()) + 1
        for acc, w in ((n, None), (p, b.prompt), (o, b.output)):
            add = np.bincount(k, w, minlength=size)
            if len(acc) < size:
                acc.extend([0.0] * (size - len(acc)))
            for j in np.flatnonzero(add):
                acc[j] += add[j]
    return np.asarray(n), np.asarray(p), np.asarray(o)


def solve(spec: FabricSpec, trace: Trace, config: SimConfig | None = None,
          slot_s: float = 900.0, carbon_usd_per_t: float | None = None,
          max_utilisation: float | None = None) -> OracleResult:
    """``max_utilisation``: the most any site may be planned at (default: the dispatch
    policy's own, so the bound holds for it)."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    from fabric.scheduling.dispatch import DispatchParams

    cfg = config or SimConfig.from_spec(spec)
    if max_utilisation is None:
        max_utilisation = DispatchParams.model_fields["max_utilisation"].default
    fleet = build_fleet(spec, cfg.model_params_b, cfg.gpu_types, cfg.profiles)
    carbon_price = (spec.scheduler.carbon_price_usd_per_t if carbon_usd_per_t is None
                    else carbon_usd_per_t)
    reqs, prompt, output = slot_demand(trace, slot_s)
    hosts = np.flatnonzero(fleet.replicas > 0)
    T, N = len(reqs), len(hosts)
    mean_p = prompt.sum() / max(reqs.sum(), 1)
    mean_o = output.sum() / max(reqs.sum(), 1)
    # per site: its SLO-safe utilisation, as the dispatch policy derives it (a mean request's
    # time in a batch slot: its prefill, then a decode step per output token)
    rho = np.empty(N)
    for j, i in enumerate(hosts):
        prefill = mean_p / fleet.replica_prefill_tok_s[i]
        rho[j] = min(max_utilisation, slo_safe_utilisation(
            int(fleet.replicas[i] * fleet.batch), prefill + mean_o * fleet.step_s[i], prefill,
            cfg.slo_ttft_s))
    # work of slot t's requests at each site (site-seconds at full speed)
    W = prompt[:, None] / fleet.prefill_tok_s[hosts] + output[:, None] / fleet.decode_tok_s[hosts]
    price, carbon, budget = np.empty((T, N)), np.empty((T, N)), np.empty((T, N))
    for t in range(T):
        at = cfg.start_s + (t + 0.5) * slot_s
        for j, i in enumerate(hosts):
            g = fleet.grids[i].state(at)
            price[t, j], carbon[t, j], budget[t, j] = g.price_usd_per_mwh, max(0.0, g.carbon_g_per_kwh), g.budget_w
    pue, idle, dyn = fleet.pue[hosts], fleet.idle_w[hosts], fleet.dynamic_w[hosts]
    usd_per_j = price / J_PER_MWH + carbon / 3.6e6 * carbon_price / 1e6
    # energy (J) of f and of on, per slot and site
    e_f = pue * dyn * W                       # all of slot t's requests at site j
    e_on = pue * idle * slot_s
    nv = 2 * T * N + T                        # f, on, unserved
    f_ix = lambda t, j: t * N + j             # noqa: E731
    on_ix = lambda t, j: T * N + t * N + j    # noqa: E731
    c = np.concatenate([(usd_per_j * e_f).ravel(), (usd_per_j * e_on).ravel(),
                        np.full(T, 1e3 * float(usd_per_j.max() * e_f.max() + 1.0))])
    rows, cols, vals, ub = [], [], [], []
    r = 0
    for t in range(T):
        for j in range(N):
            # capacity: f·W ≤ ρ*·slot·on
            rows += [r, r]; cols += [f_ix(t, j), on_ix(t, j)]; vals += [W[t, j], -rho[j] * slot_s]
            ub.append(0.0); r += 1
            # power: pue·(idle·on + dyn·f·W/slot) ≤ budget
            rows += [r, r]; cols += [f_ix(t, j), on_ix(t, j)]
            vals += [pue[j] * dyn[j] * W[t, j] / slot_s, pue[j] * idle[j]]
            ub.append(budget[t, j]); r += 1
    a_ub = coo_matrix((vals, (rows, cols)), shape=(r, nv)).tocsr()
    eq_rows = [t for t in range(T) for _ in range(N)] + list(range(T))
    eq_cols = [f_ix(t, j) for t in range(T) for j in range(N)] + [2 * T * N + t for t in range(T)]
    a_eq = coo_matrix((np.ones(len(eq_rows)), (eq_rows, eq_cols)), shape=(T, nv)).tocsr()
    b_eq = (reqs > 0).astype(float)
    res = linprog(c, A_ub=a_ub, b_ub=np.asarray(ub), A_eq=a_eq, b_eq=b_eq,
                  bounds=[(0, 1)] * (2 * T * N) + [(0, 1)] * T, method="highs")
    if res.status != 0:
        raise RuntimeError(f"oracle LP failed: {res.message}")
    x = res.x
    f = x[: T * N].reshape(T, N)
    on = x[T * N: 2 * T * N].reshape(T, N)
    energy = f * e_f + on * e_on
    return OracleResult(
        slots=T, slot_s=slot_s, requests=int(reqs.sum()),
        energy_mwh=float(energy.sum() / J_PER_MWH),
        energy_cost_usd=float((energy * price / J_PER_MWH).sum()),
        carbon_kg=float((energy * carbon / 3.6e6).sum() / 1e3),
        objective_usd=float((energy * usd_per_j).sum()),
        unserved_share=float((x[2 * T * N:] * reqs).sum() / max(reqs.sum(), 1)),
        parked_share=float(1.0 - on.mean()) if on.size else 0.0,
        per_site={fleet.names[i]: {"share": round(float((f[:, j] * reqs).sum() / max(reqs.sum(), 1)), 4),
                                   "on": round(float(on[:, j].mean()), 4),
                                   "energy_mwh": round(float(energy[:, j].sum() / J_PER_MWH), 5),
                                   "cost_usd": round(float((energy[:, j] * price[:, j]).sum() / J_PER_MWH), 3),
                                   "carbon_kg": round(float((energy[:, j] * carbon[:, j]).sum() / 3.6e9), 2)}
                  for j, i in enumerate(hosts)})
