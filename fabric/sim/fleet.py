"""The simulated fleet: per-site arrays of serving capacity and power, built from a spec.

Column-wise (one numpy entry per site) so a tick over a thousand sites is a few vector
operations. Power figures come from the spec's node pools (TDP, idle W), exactly what the live
GPU monitors model; throughput comes from ``fabric.sim.gpus``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fabric.power.grid import GridModel
from fabric.sim.gpus import (
    GpuType,
    ServingProfile,
    gpu_type,
    model_params_b,
    serving_profile,
)
from fabric.spec import FabricSpec


@dataclass
class Fleet:
    names: list[str]
    regions: list[str]
    edge: list[bool]
    latency: list[str]            # the region's latency class
    gpu_types: list[str]          # the primary (first serving) pool's GPU type
    grids: list[GridModel]
    replicas: np.ndarray          # engine replicas serving the model (0: site does not host it)
    batch: int                    # sequences per replica (the engine's max_num_seqs)
    prefill_tok_s: np.ndarray     # prompt tokens/s of the whole site
    decode_tok_s: np.ndarray      # output tokens/s of the whole site at full batches
    replica_prefill_tok_s: np.ndarray  # one replica of the primary pool: sets a request's TTFT
    step_s: np.ndarray            # one decode step of that replica: a request's time per token
    idle_w: np.ndarray            # all GPUs idle (IT)
    dynamic_w: np.ndarray         # serving GPUs at full load minus idle (IT)
    pue: np.ndarray
    it_limit_w: np.ndarray        # the site's IT capacity (capacity_mw)

    def __len__(self) -> int:
        return len(self.names)


def build_fleet(spec: FabricSpec, params_b: float | None = None,
                gpu_types: dict[str, GpuType] | None = None,
                profiles: dict[str, ServingProfile] | None = None) -> Fleet:
    """``profiles`` replace the roofline profile for a GPU type (e.g. measured figures)."""
    params_b = params_b or model_params_b(spec.model)
    batch = int(spec.model.engine_kwargs.get("max_num_seqs", 64))
    hosting = {s.name for _, s in spec.hosting_sites(spec.model)}
    cols: dict[str, list] = {k: [] for k in ("replicas", "prefill", "decode", "rprefill", "step",
                                             "idle", "dynamic", "gpu")}
    for _, site in spec.sites:
        replicas = prefill = decode = idle = dynamic = 0.0
        primary: tuple[str, ServingProfile] | None = None
        for pool in site.node_pools:
            gpus = pool.gpus_per_node * pool.nodes
            idle += gpus * pool.idle_w
            if site.name not in hosting:
                continue
            profile = (profiles or {}).get(pool.gpu_type) or serving_profile(
                gpu_type(pool.gpu_type, gpu_types), params_b, batch, max_tp=pool.gpus_per_node)
            n = pool.nodes * (pool.gpus_per_node // profile.tp)
            replicas += n
            prefill += n * profile.prefill_tok_s
            decode += n * profile.decode_tok_s
            dynamic += n * profile.tp * (pool.tdp_w - pool.idle_w)
            primary = primary or (pool.gpu_type, profile)
        cols["replicas"].append(replicas)
        cols["prefill"].append(prefill)
        cols["decode"].append(decode)
        cols["rprefill"].append(primary[1].prefill_tok_s if primary else 1.0)
        cols["step"].append(primary[1].step_s if primary else 1.0)
        cols["idle"].append(idle)
        cols["dynamic"].append(dynamic)
        cols["gpu"].append(primary[0] if primary else site.node_pools[0].gpu_type)
    edge = {s.name: r.edge for r in spec.regions for s in r.sites}
    latency = {s.name: r.latency_class for r in spec.regions for s in r.sites}
    arr = lambda k: np.asarray(cols[k], dtype=np.float64)
    return Fleet(
        names=[s.name for _, s in spec.sites], regions=[r for r, _ in spec.sites],
        edge=[edge[s.name] for _, s in spec.sites], gpu_types=cols["gpu"],
        latency=[latency[s.name] for _, s in spec.sites],
        grids=[GridModel(s.power) for _, s in spec.sites],
        replicas=arr("replicas").astype(np.int64), batch=batch,
        prefill_tok_s=arr("prefill"), decode_tok_s=arr("decode"),
        replica_prefill_tok_s=arr("rprefill"), step_s=arr("step"),
        idle_w=arr("idle"), dynamic_w=arr("dynamic"),
        pue=np.asarray([s.pue for _, s in spec.sites]),
        it_limit_w=np.asarray([s.capacity_mw * 1e6 for _, s in spec.sites]))
