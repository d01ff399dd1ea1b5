"""Real NVML readings and power limits on a GPU machine (GPU layer, no Ray needed).

Reads every GPU through the same NvmlGpus class the GPUMonitor actor uses, loads GPU 0 for a
few seconds (torch matmuls, if torch with CUDA is installed) and reads again — power and
utilisation must rise — then tries to lower GPU 0's power limit by 10 % and restores it
(applied only where NVML permits, typically as root). Prints a table and writes
bench/results/gpu_smoke.json. Without an NVIDIA driver it says so and exits 0: the modelled
path is covered by the tests.

    .venv/bin/python bench/gpu_smoke.py
"""

import json
import sys
import time
from pathlib import Path

from fabric.gpu import NvmlGpus


def load_gpu(seconds: float) -> str:
    try:
        import torch
        if not torch.cuda.is_available():
            return "no CUDA torch: skipped the load step"
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
        end = time.time() + seconds
        while time.time() < end:
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
        return "loaded with fp16 matmuls"
    except ImportError:
        return "torch not installed: skipped the load step"


def main() -> int:
    gpus = NvmlGpus.try_open()
    if gpus is None:
        print("no NVIDIA driver on this machine: nothing to check (GPU readings are modelled here)")
        return 0
    idle = gpus.read()
    import threading
    note = {}
    t = threading.Thread(target=lambda: note.setdefault("load", load_gpu(6.0)))
    t.start()
    time.sleep(4.0)
    busy = gpus.read()
    t.join()
    limit = idle[0].power_limit_w or 0
    lowered = gpus.set_power_limit(0, round(limit * 0.9)) if limit else {"applied": False}
    after_limit = gpus.read()[0].power_limit_w
    restored = gpus.set_power_limit(0, limit) if lowered.get("applied") else None
    print(f"{'gpu':>3} {'name':<28} {'idle W':>8} {'busy W':>8} {'idle util':>9} {'busy util':>9} {'temp C':>7} {'limit W':>8}")
    for i, b in zip(idle, busy):
        print(f"{i.index:>3} {i.name[:28]:<28} {i.power_w:>8.1f} {b.power_w:>8.1f} {i.utilisation:>9.0%} "
              f"{b.utilisation:>9.0%} {b.temperature_c:>7.0f} {b.power_limit_w:>8.0f}")
    print(f"load: {note.get('load')}")
    print(f"power limit on GPU 0: {limit:.0f} W -> asked {round(limit * 0.9)} W: "
          f"{'applied' if lowered.get('applied') else 'not applied: ' + str(lowered.get('error'))}"
          f" (reads back {after_limit:.0f} W){'; restored' if restored else ''}")
    result = {"idle": [g.model_dump() for g in idle], "busy": [g.model_dump() for g in busy],
              "load": note.get("load"), "power_limit": lowered, "restored": restored}
    out = Path(__file__).parent / "results" / "gpu_smoke.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    ok = all(g.source == "nvml" for g in idle) and (
        "skipped" in str(note.get("load")) or busy[0].power_w > idle[0].power_w)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
