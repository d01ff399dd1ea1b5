"""GPU telemetry: NVML readings where a driver exists, a labelled power model where not.

Pure of Ray. ``NvmlGpus`` takes the ``pynvml`` module as an argument so tests drive it with a
fake library. ``ModelledGpus`` is the fallback: power = idle + (cap − idle) × utilisation,
with cap = min(TDP, power limit); every reading it produces says ``source="model"``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class GpuReading(BaseModel):
    index: int
    name: str
    source: str  # "nvml" or "model"
    power_w: float
    utilisation: float  # 0..1
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    temperature_c: float | None = None
    power_limit_w: float | None = None


def modelled_power_w(idle_w: float, tdp_w: float, utilisation: float,
                     limit_w: float | None = None) -> float:
    cap = min(tdp_w, limit_w) if limit_w else tdp_w
    u = min(1.0, max(0.0, utilisation))
    return idle_w + max(0.0, cap - idle_w) * u


class ModelledGpus:
    source = "model"

    def __init__(self, gpu_type: str, count: int, tdp_w: float, idle_w: float):
        self.gpu_type, self.count, self.tdp_w, self.idle_w = gpu_type, count, tdp_w, idle_w
        self.limits: dict[int, float] = {}

    def read(self, utilisation: float) -> list[GpuReading]:
        return [GpuReading(index=i, name=f"{self.gpu_type} (modelled)", source="model",
                           utilisation=round(utilisation, 4),
                           power_w=round(modelled_power_w(self.idle_w, self.tdp_w, utilisation,
                                                          self.limits.get(i)), 2),
                           power_limit_w=self.limits.get(i, self.tdp_w))
                for i in range(self.count)]

    def set_power_limit(self, index: int, watts: float) -> dict:
        if not 0 <= index < self.count:
            raise IndexError(f"no GPU {index} (have {self.count})")
        if not self.idle_w <= watts <= self.tdp_w:
            raise ValueError(f"limit {watts} W outside [{self.idle_w}, {self.tdp_w}] W")
        self.limits[index] = float(watts)
        return {"index": index, "power_limit_w": watts, "applied": True, "source": "model"}


class NvmlGpus:
    """Real readings through NVML (``pynvml`` from nvidia-ml-py)."""

    source = "nvml"

    def __init__(self, nvml: Any):
        self.nvml = nvml
        nvml.nvmlInit()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    @classmethod
    def try_open(cls) -> "NvmlGpus | None":
        """NVML if a driver answers, else None (the caller falls back to the model)."""
        try:
            import pynvml
            gpus = cls(pynvml)
        except Exception:
            return None
        return gpus if gpus.handles else None

    def read(self, utilisation: float | None = None) -> list[GpuReading]:
        nv = self.nvml
        out = []
        for i, h in enumerate(self.handles):
            name = nv.nvmlDeviceGetName(h)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            out.append(GpuReading(
                index=i, name=name.decode() if isinstance(name, bytes) else str(name),
                source="nvml", power_w=nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                utilisation=nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0,
                memory_used_mb=mem.used / 2**20, memory_total_mb=mem.total / 2**20,
                temperature_c=float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                power_limit_w=nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0))
        return out

    def set_power_limit(self, index: int, watts: float) -> dict:
        nv = self.nvml
        h = self.handles[index]
        lo, hi = nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
        if not lo / 1000 <= watts <= hi / 1000:
            raise ValueError(f"limit {watts} W outside [{lo / 1000}, {hi / 1000}] W")
        try:
            nv.nvmlDeviceSetPowerManagementLimit(h, int(watts * 1000))
        except nv.NVMLError as exc:  # typically: not permitted without root
            return {"index": index, "power_limit_w": watts, "applied": False, "source": "nvml",
                    "error": str(exc)}
        return {"index": index, "power_limit_w": watts, "applied": True, "source": "nvml"}
