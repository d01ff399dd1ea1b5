"""The Ray/vLLM internals the fabric uses are all behind fabric.internals, and all present."""

import logging
import re
from pathlib import Path
from types import SimpleNamespace

from fabric import internals

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = re.compile(r"\b(ray|vllm)\.[\w.]*\b_(private|internal|common)\b|_engine_client|"
                     r"_add_middleware_to_built_app|SERVE_CONTROLLER_ACTOR|\.args\[0\]\.metadata")


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
