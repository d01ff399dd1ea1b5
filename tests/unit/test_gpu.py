from types import SimpleNamespace

import pytest

from fabric.gpu import ModelledGpus, NvmlGpus, modelled_power_w
from fabric.layers.llm.tap import LoadMeter


def test_modelled_power_follows_load_and_limits():
    assert modelled_power_w(90, 700, 0) == 90
    assert modelled_power_w(90, 700, 1) == 700
    assert modelled_power_w(90, 700, 0.5) == 395
    assert modelled_power_w(90, 700, 1, limit_w=400) == 400
    assert modelled_power_w(90, 700, 7) == 700  # clamped


def test_modelled_gpus_are_labelled_and_limits_apply():
    gpus = ModelledGpus("H100", 2, tdp_w=700, idle_w=90)
    idle, busy = gpus.read(0.0), gpus.read(1.0)
    assert all(r.source == ModelledGpus.source and "modelled" in r.name for r in idle + busy)
    assert sum(r.power_w for r in busy) > sum(r.power_w for r in idle)
    assert gpus.set_power_limit(1, 350)["applied"]
    assert [r.power_w for r in gpus.read(1.0)] == [700, 350]
    with pytest.raises(ValueError):
        gpus.set_power_limit(0, 5000)
    with pytest.raises(IndexError):
        gpus.set_power_limit(9, 300)


class FakeNvml:
    """Just enough of pynvml's surface, with NVML's units (mW, bytes, percent)."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, count=2, permitted=True):
        self.count, self.permitted = count, permitted
        self.limits = {i: 700_000 for i in range(count)}
        self.inited = False

    def nvmlInit(self): self.inited = True
    def nvmlDeviceGetCount(self): return self.count
    def nvmlDeviceGetHandleByIndex(self, i): return i
    def nvmlDeviceGetName(self, h): return b"NVIDIA H100 80GB HBM3"
    def nvmlDeviceGetMemoryInfo(self, h): return SimpleNamespace(used=10 * 2**30, total=80 * 2**30)
    def nvmlDeviceGetPowerUsage(self, h): return 350_500 + h * 1000
    def nvmlDeviceGetUtilizationRates(self, h): return SimpleNamespace(gpu=42, memory=10)
    def nvmlDeviceGetTemperature(self, h, kind): return 61
    def nvmlDeviceGetPowerManagementLimit(self, h): return self.limits[h]
    def nvmlDeviceGetPowerManagementLimitConstraints(self, h): return (200_000, 700_000)

    def nvmlDeviceSetPowerManagementLimit(self, h, mw):
        if not self.permitted:
            raise self.NVMLError("Insufficient Permissions")
        self.limits[h] = mw


def test_nvml_readings_are_converted_to_watts_and_fractions():
    nv = FakeNvml()
    gpus = NvmlGpus(nv)
    r0, r1 = gpus.read()
    assert nv.inited and r0.source == "nvml" and r0.name == "NVIDIA H100 80GB HBM3"
    assert (r0.power_w, r1.power_w) == (350.5, 351.5)
    assert r0.utilisation == 0.42 and r0.temperature_c == 61
    assert r0.memory_used_mb == 10 * 1024 and r0.memory_total_mb == 80 * 1024
    assert r0.power_limit_w == 700


def test_nvml_power_limit_set_within_constraints_or_reported_refused():
    nv = FakeNvml()
    assert NvmlGpus(nv).set_power_limit(0, 450)["applied"] and nv.limits[0] == 450_000
    with pytest.raises(ValueError, match="outside"):
        NvmlGpus(nv).set_power_limit(0, 100)
    refused = NvmlGpus(FakeNvml(permitted=False)).set_power_limit(1, 450)
    assert refused["applied"] is False and "Permission" in refused["error"]


def test_no_driver_here_means_the_model():
    assert NvmlGpus.try_open() is None  # this machine has no NVIDIA driver


def test_load_meter_busy_share():
    now = [0.0]
    meter = LoadMeter(clock=lambda: now[0])
    now[0] = 1.0
    meter.start()            # busy from t=1
    now[0] = 2.0
    meter.start()            # two in flight: still just busy
    now[0] = 3.0
    meter.finish()
    meter.finish()           # idle from t=3
    now[0] = 4.0
    assert meter.take_utilisation() == pytest.approx(0.5)   # busy 2 of 4 s
    assert meter.inflight == 0
    now[0] = 6.0
    assert meter.take_utilisation() == 0.0
