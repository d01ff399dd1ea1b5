"""How fast a GPU serves a model, and what it draws: a roofline model per GPU type.

Why a model and not measurements: the simulator must price fabrics of GPUs no test machine
has. Prefill is compute-bound (tokens/s = MFU × FLOPs / (2 × params)); a decode step is
bandwidth-bound (every step reads the weights once: step = bytes / (efficiency × bandwidth))
and serves a full batch. A model larger than one GPU is split by tensor parallelism over the
smallest power of two of GPUs whose memory holds it with room for the KV cache.
Override ``ServingProfile`` per GPU type where real measurements exist.
"""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, Field

from fabric.spec import ModelSpec

MFU_PREFILL = 0.4      # share of peak FLOPs a prefill reaches
BANDWIDTH_EFF = 0.6    # share of peak memory bandwidth a decode step reaches
WEIGHT_BYTES = 2.0     # bytes per parameter (BF16)
WEIGHT_MEMORY_SHARE = 0.8  # at most this share of GPU memory for weights; the rest is KV cache
TIER_PARAMS_B = {"small": 8.0, "large": 70.0}


class GpuType(BaseModel):
    """Datasheet figures of one accelerator (dense BF16, HBM)."""

    memory_gb: float = Field(gt=0)
    bandwidth_tb_s: float = Field(gt=0)
    tflops: float = Field(gt=0)
    idle_w: float = Field(ge=0)
    max_w: float = Field(gt=0)


CATALOGUE: dict[str, GpuType] = {
    "H200": GpuType(memory_gb=141, bandwidth_tb_s=4.8, tflops=989, idle_w=100, max_w=700),
    "H100": GpuType(memory_gb=80, bandwidth_tb_s=3.35, tflops=989, idle_w=90, max_w=700),
    "A100": GpuType(memory_gb=80, bandwidth_tb_s=2.0, tflops=312, idle_w=60, max_w=400),
    "L40S": GpuType(memory_gb=48, bandwidth_tb_s=0.864, tflops=362, idle_w=35, max_w=350),
    "L4": GpuType(memory_gb=24, bandwidth_tb_s=0.3, tflops=121, idle_w=16, max_w=72),
    # A two-socket server counted as one device: what a CPU-only site offers.
    "CPU": GpuType(memory_gb=512, bandwidth_tb_s=0.3, tflops=6, idle_w=120, max_w=500),
}


class ServingProfile(BaseModel):
    """One engine replica of a model: ``tp`` GPUs, ``batch`` sequences decoded per step."""

    tp: int = Field(1, ge=1, description="GPUs per replica (tensor parallel)")
    prefill_tok_s: float = Field(gt=0, description="prompt tokens/s of one replica")
    step_s: float = Field(gt=0, description="one decode step of a full batch (time per output token)")
    batch: int = Field(64, ge=1)
    ttft_fixed_s: float = Field(0.0, ge=0, description="a request's time to first token beyond "
                                "its prefill on an idle engine: the request path, tokenisation")
    step1_s: float | None = Field(None, gt=0, description="one decode step of a single sequence "
                                  "(default: step_s; decode on a GPU is bound by weight reads, "
                                  "so a step costs about the same at any batch)")

    @property
    def decode_tok_s(self) -> float:
        return self.batch / self.step_s


def model_params_b(model: ModelSpec) -> float:
    """Billions of parameters, read from the model id or source (``…-8B…``), else its tier."""
    for text in (model.id, model.source or ""):
        m = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", text)
        if m:
            return float(m.group(1))
    return TIER_PARAMS_B[model.tier]


def gpu_type(name: str, extra: dict[str, GpuType] | None = None) -> GpuType:
    known = {**CATALOGUE, **(extra or {})}
    try:
        return known[name]
    except KeyError:
        raise ValueError(f"unknown GPU type {name!r}; known: {', '.join(sorted(known))}") from None


def serving_profile(gpu: GpuType, params_b: float, batch: int, max_tp: int = 8) -> ServingProfile:
    weights = params_b * 1e9 * WEIGHT_BYTES
    need = weights / (gpu.memory_gb * 1e9 * WEIGHT_MEMORY_SHARE)
    tp = 2 ** max(0, math.ceil(math.log2(need))) if need > 1 else 1
    if tp > max_tp:
        raise ValueError(f"a {params_b:g}B model needs {tp} GPUs of {gpu.memory_gb:g} GB per "
                         f"replica; the node has {max_tp}")
    return ServingProfile(
        tp=tp, batch=batch,
        prefill_tok_s=tp * MFU_PREFILL * gpu.tflops * 1e12 / (2 * params_b * 1e9),
        step_s=weights / (tp * BANDWIDTH_EFF * gpu.bandwidth_tb_s * 1e12))
