"""The Ray/vLLM internals the fabric uses are all behind fabric.internals, and all present."""

import logging
import re
from pathlib import Path
from types import SimpleNamespace

from fabric import internals

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = re.compile(r"\b(ray|vllm)\.[\w.]*\b_(private|internal|common)\b|_engine_client|"
                     r"_add_middleware_to_built_app|SERVE_CONTROLLER_ACTOR|internal_kv|\.args\[0\]\.metadata")


def test_every_hook_is_there_in_the_installed_ray_and_vllm():
    assert internals.missing_hooks() == [], internals.hooks_report()
    assert internals.hooks_report() is None


def test_no_private_api_is_used_outside_the_seam():
    offenders = []
    for folder in ("fabric", "bench", "tests", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "fabric" / "internals.py" or path == Path(__file__).resolve():
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if PRIVATE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_a_missing_hook_is_named_with_what_stops_working(monkeypatch):
    hooks = dict(internals.HOOKS)
    hooks["gone.hook"] = ("read the moon's phase", lambda: internals._attr("ray", "no_such_thing"))
    monkeypatch.setattr(internals, "HOOKS", hooks)
    assert internals.missing_hooks() == ["gone.hook (read the moon's phase)"]
    report = internals.hooks_report()
    assert "1 Ray/vLLM internal(s)" in report and "written for ray 2.60.0" in report


def test_engine_stats_come_from_the_stat_logger_or_say_loudly_they_cannot(caplog):
    seen, recorded = [], []
    manager = SimpleNamespace(record=lambda *a, **k: recorded.append((a, k)))
    engine = SimpleNamespace(_engine_client=SimpleNamespace(logger_manager=manager))
    assert internals.wrap_stat_logger(engine, seen.append)
    stats = SimpleNamespace(num_running_reqs=2)
    manager.record(scheduler_stats=stats, iteration_stats=None)
    assert seen == [stats] and recorded == [((), {"scheduler_stats": stats, "iteration_stats": None})]
    with caplog.at_level(logging.ERROR, logger="fabric.internals"):
        assert not internals.wrap_stat_logger(SimpleNamespace(), seen.append)
    assert "engine stats unavailable" in caplog.text


GLOO_GROUPS = """
import os, socket, sys
import torch, torch.distributed as dist
from fabric import internals
internals.share_gloo_device()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
groups = [dist.new_group([0], backend="gloo") for _ in range(12)]
x = torch.ones(3)
for g in groups:
    dist.all_reduce(x, group=g)
assert x.tolist() == [1.0, 1.0, 1.0] and dist.get_backend(groups[-1]) == "gloo"
loops = sum(open(f"/proc/self/task/{t}/comm").read().strip() == "gloo_tcp_loop"
            for t in os.listdir("/proc/self/task"))
dist.destroy_process_group()
print(loops)
"""


def _gloo_loops(env: dict) -> int:
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", GLOO_GROUPS], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **env}, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stdout.strip().splitlines()[-1])


def test_cpu_engine_gloo_groups_share_one_device_only_where_asked():
    """13 gloo groups (what vLLM's CPU worker makes): one loop thread when the fabric's engine
    environment asks for a shared device, one per group otherwise (a process the fabric did
    not start is left as it is)."""
    assert _gloo_loops({internals.SHARE_GLOO_DEVICE_ENV: "1"}) == 1
    assert _gloo_loops({internals.SHARE_GLOO_DEVICE_ENV: ""}) == 13
