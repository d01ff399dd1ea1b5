"""The shipped Grafana dashboard only queries metrics the fabric exports."""

import json
import re
from pathlib import Path

import fabric.metrics

ROOT = Path(__file__).resolve().parents[2]


def test_dashboard_queries_only_exported_metrics():
    dash = json.loads((ROOT / "deployments" / "grafana" / "token-fabric.json").read_text())
    source = Path(fabric.metrics.__file__).read_text()
    defined = set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(fabric_\w+)"', source))
    assert len(defined) >= 18
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"ray_(fabric_\w+)", target["expr"]):
                used.add(re.sub(r"_(total|bucket|sum|count)$", "", name))
    assert used and used <= defined, used - defined
    assert defined - used == set(), f"exported but not drawn: {defined - used}"
