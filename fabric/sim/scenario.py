"""Fabrics for simulations larger than any deployment file: a spec scaled up, or one generated
over the real grid series shipped in ``fabric/data/grid``.
"""

from __future__ import annotations

import random
from pathlib import Path

from fabric.sim.gpus import CATALOGUE, gpu_type, model_params_b, serving_profile
from fabric.spec import (
    Curtailment,
    FabricSpec,
    ModelSpec,
    NodePool,
    PowerProfile,
    RegionSpec,
    SchedulerSpec,
    SeriesRef,
    SiteSpec,
)

GRID = Path(__file__).resolve().parent.parent / "data" / "grid"
# Balancing authority → (price series or a constant $/MWh, carbon series): the shipped files.
GRID_REGIONS = {
    "ciso": ("price/US-CAL-CISO_2023-07-11_week.csv", "carbon/CISO_2022-07-11_week.csv"),
    "erco": ("price/US-TEX-ERCO_2023-07-11_week.csv", "carbon/ERCO_2022-07-11_week.csv"),
    "pjm": ("price/US-MIDA-PJM_2023-07-11_week.csv", "carbon/PJM_2022-07-11_week.csv"),
    "nyis": ("price/US-NY-NYIS_2023-07-11_week.csv", "carbon/NYIS_2022-07-11_week.csv"),
    "bpat": (38.0, "carbon/BPAT_2022-07-11_week.csv"),
}
WEEKS = ("july", "january")  # the shipped weeks: 11–17 July (default), 10–16 January


def _week(path, week: str):
    if week not in WEEKS:
        raise ValueError(f"unknown week {week!r}; shipped: {', '.join(WEEKS)}")
    if not isinstance(path, str) or week == "july":
        return path
    return path.replace("2023-07-11", "2023-01-10").replace("2022-07-11", "2022-01-10")
POOL_TYPES = ("H100", "H200", "A100", "L40S")


def scale_spec(spec: FabricSpec, sites: int) -> FabricSpec:
    """``sites`` sites made by repeating the spec's sites in order (``name-2``, ``name-3``, …),
    each copy in its original's region with the same pools and power profile."""
    if sites < 1:
        raise ValueError("sites must be at least 1")
    originals = spec.sites
    copies: dict[str, list[SiteSpec]] = {r.name: [] for r in spec.regions}
    clones: dict[str, list[str]] = {s.name: [] for _, s in originals}
    for k in range(sites):
        region, site = originals[k % len(originals)]
        copy = site.model_copy(deep=True)
        rep = k // len(originals)
        if rep:
            copy.name = f"{site.name[:55]}-{rep + 1}"
        clones[site.name].append(copy.name)
        copies[region].append(copy)
    data = spec.model_dump()
    data["regions"] = [{**r.model_dump(exclude={"sites"}), "sites": [s.model_dump() for s in copies[r.name]]}
                       for r in spec.regions if copies[r.name]]
    for m in data["models"]:  # hosting names sites (now each with its copies) or regions
        hosting = [h for name in m["hosting"] for h in clones.get(name, [name] if copies.get(name) else [])]
        if m["hosting"] and not hosting:
            raise ValueError(f"scaled to {sites} site(s), none of which hosts model {m['id']!r}")
        m["hosting"] = hosting
    return FabricSpec.model_validate(data)


def grid_spec(sites: int, seed: int = 0, nodes: int = 1, model: str = "llama-3.1-70b",
              tick_s: float = 1.0, policy: str = "fabric", week: str = "july") -> FabricSpec:
    """A fabric of ``sites`` sites spread over five US grids (real price and carbon series),
    each ``nodes`` × 8 GPUs of a seeded type, a grid budget 10 % above full draw, and one
    seeded curtailment in the first day (1–3 h at 20–60 % of budget) that binds."""
    if sites < 1:
        raise ValueError("sites must be at least 1")
    rng = random.Random(seed)
    spec_model = ModelSpec(id=model, tier="large")
    params_b = model_params_b(spec_model)
    regions: dict[str, list[SiteSpec]] = {name: [] for name in GRID_REGIONS}
    names = list(GRID_REGIONS)
    for i in range(sites):
        region = names[i % len(names)]
        price, carbon = (_week(x, week) for x in GRID_REGIONS[region])
        gpu = rng.choice(POOL_TYPES)
        spec_gpu = CATALOGUE[gpu]
        serving_profile(gpu_type(gpu), params_b, 64)  # fails here if the model does not fit
        pue = round(rng.uniform(1.1, 1.4), 2)
        it_mw = nodes * 8 * spec_gpu.max_w / 1e6
        start = rng.uniform(0, 21 * 3600)
        regions[region].append(SiteSpec(
            name=f"{region}-{i // len(names) + 1:04d}", capacity_mw=round(it_mw * 1.05, 6), pue=pue,
            power=PowerProfile(
                budget_mw=round(it_mw * pue * 1.1, 6),
                price_usd_per_mwh=price if isinstance(price, float) else SeriesRef(file=str(GRID / price)),
                carbon_g_per_kwh=SeriesRef(file=str(GRID / carbon)),
                curtailments=[Curtailment(start_s=round(start), duration_s=round(rng.uniform(3600, 10800)),
                                          budget_fraction=round(rng.uniform(0.2, 0.6), 2))]),
            node_pools=[NodePool(name=gpu.lower(), gpu_type=gpu, gpus_per_node=8, nodes=nodes,
                                 tdp_w=spec_gpu.max_w, idle_w=spec_gpu.idle_w)]))
    return FabricSpec(
        name=f"grid-{sites}" + ("" if week == "july" else f"-{week}"), models=[spec_model],
        regions=[RegionSpec(name=r, sites=s) for r, s in regions.items() if s],
        scheduler=SchedulerSpec(policy=policy, tick_s=tick_s))
