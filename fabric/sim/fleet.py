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
    step1_s: np.ndarray           # its decode step with one sequence running
    ttft_fixed_s: np.ndarray      # that replica's time to first token beyond the prefill
    idle_w: np.ndarray            # all GPUs idle (IT)
    dynamic_w: np.ndarray         # serving GPUs at full load minus idle (IT)
    pue: np.ndarray
    it_limit_w: np.ndarray        # the site's IT capacity (capacity_mw)

    @property
    def j_per_token(self) -> np.ndarray:
        """Marginal IT energy of an output token at full batches (dynamic W / decode tok/s)."""
        return np.divide(self.dynamic_w, self.decode_tok_s, out=np.zeros(len(self.names)),
                         where=self.decode_tok_s > 0)

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class SiteServing:
    """What one site's GPUs do for one model, from its node pools and the roofline profile."""

    replicas: int = 0
    prefill_tok_s: float = 0.0          # the whole site
    decode_tok_s: float = 0.0           # the whole site, full batches
    replica_prefill_tok_s: float = 1.0  # one replica of the primary pool
    step_s: float = 1.0                 # one decode step of that replica
    step1_s: float = 1.0                # its decode step with one sequence running
    ttft_fixed_s: float = 0.0           # its time to first token beyond the prefill
    idle_w: float = 0.0                 # every GPU idle (IT)
    dynamic_w: float = 0.0              # serving GPUs at full load minus idle (IT)
    gpu_type: str = ""

    @property
    def j_per_token(self) -> float:
        """Marginal IT energy of one output token at full batches."""
        return self.dynamic_w / self.decode_tok_s if self.decode_tok_s else 0.0


def site_serving(site, hosts: bool, params_b: float, batch: int,
                 gpu_types: dict[str, GpuType] | None = None,
                 profiles: dict[str, ServingProfile] | None = None) -> SiteServing:
    replicas = prefill = decode = idle = dynamic = 0.0
    primary: tuple[str, ServingProfile] | None = None
    for pool in site.node_pools:
        gpus = pool.gpus_per_node * pool.nodes
        idle += gpus * pool.idle_w
        if not hosts:
            continue
        profile = (profiles or {}).get(pool.gpu_type) or serving_profile(
            gpu_type(pool.gpu_type, gpu_types), params_b, batch, max_tp=pool.gpus_per_node)
        n = pool.nodes * (pool.gpus_per_node // profile.tp)
        replicas += n
        prefill += n * profile.prefill_tok_s
        decode += n * profile.decode_tok_s
        dynamic += n * profile.tp * (pool.tdp_w - pool.idle_w)
        primary = primary or (pool.gpu_type, profile)
    return SiteServing(
        replicas=int(replicas), prefill_tok_s=prefill, decode_tok_s=decode,
        replica_prefill_tok_s=primary[1].prefill_tok_s if primary else 1.0,
        step_s=primary[1].step_s if primary else 1.0,
        step1_s=(primary[1].step1_s or primary[1].step_s) if primary else 1.0,
        ttft_fixed_s=primary[1].ttft_fixed_s if primary else 0.0, idle_w=idle, dynamic_w=dynamic,
        gpu_type=primary[0] if primary else site.node_pools[0].gpu_type)


def build_fleet(spec: FabricSpec, params_b: float | None = None,
                gpu_types: dict[str, GpuType] | None = None,
                profiles: dict[str, ServingProfile] | None = None) -> Fleet:
    """``profiles`` replace the roofline profile for a GPU type (e.g. measured figures)."""
    params_b = params_b or model_params_b(spec.model)
    batch = int(spec.model.engine_kwargs.get("max_num_seqs", 64))
    hosting = {s.name for _, s in spec.hosting_sites(spec.model)}
    rows = [site_serving(site, site.name in hosting, params_b, batch, gpu_types, profiles)
            for _, site in spec.sites]
    edge = {s.name: r.edge for r in spec.regions for s in r.sites}
    latency = {s.name: r.latency_class for r in spec.regions for s in r.sites}
    arr = lambda k: np.asarray([getattr(r, k) for r in rows], dtype=np.float64)
    return Fleet(
        names=[s.name for _, s in spec.sites], regions=[r for r, _ in spec.sites],
        edge=[edge[s.name] for _, s in spec.sites], gpu_types=[r.gpu_type for r in rows],
        latency=[latency[s.name] for _, s in spec.sites],
        grids=[GridModel(s.power) for _, s in spec.sites],
        replicas=arr("replicas").astype(np.int64), batch=batch,
        prefill_tok_s=arr("prefill_tok_s"), decode_tok_s=arr("decode_tok_s"),
        replica_prefill_tok_s=arr("replica_prefill_tok_s"), step_s=arr("step_s"),
        step1_s=arr("step1_s"),
        ttft_fixed_s=arr("ttft_fixed_s"),
        idle_w=arr("idle_w"), dynamic_w=arr("dynamic_w"),
        pue=np.asarray([s.pue for _, s in spec.sites]),
        it_limit_w=np.asarray([s.capacity_mw * 1e6 for _, s in spec.sites]))


def site_figures(spec: FabricSpec, site) -> dict:
    """A site's static figures for the policy (PUE, idle and dynamic IT power, J per output
    token), for the first model it hosts, from the same GPU model the simulator uses. The live
    scheduler counts capacity in batch slots (it sees requests in flight, not their work), so
    service and prefill times stay at their defaults there."""
    model = next((m for m in spec.models if site.name in {s.name for _, s in spec.hosting_sites(m)}),
                 spec.model)
    batch = int(model.engine_kwargs.get("max_num_seqs", 64))
    serving = site_serving(site, True, model_params_b(model), batch)
    return {"pue": site.pue, "idle_w": serving.idle_w, "dynamic_w": serving.dynamic_w,
            "j_per_token": serving.j_per_token}
