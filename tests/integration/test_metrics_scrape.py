"""The fabric's metrics on Ray's Prometheus endpoints, scraped during a real run."""

import time
import urllib.request
from collections import defaultdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import HTTP, POWER_SOURCES
from fabric.status import metrics_urls

pytestmark = pytest.mark.integration


def scrape() -> dict[str, list[tuple[dict, float]]]:
    """Every ray_fabric_* sample on every node: name -> [(labels, value)]."""
    out = defaultdict(list)
    for url in metrics_urls():
        try:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("ray_fabric_"):
                    out[sample.name].append((sample.labels, sample.value))
    return out


def total(samples, **match) -> float:
    return sum(v for labels, v in samples if all(labels.get(k) == m for k, m in match.items()))


EXPECTED = ["ray_fabric_tokens_generated_total", "ray_fabric_prompt_tokens_total",
            "ray_fabric_requests_total", "ray_fabric_requests_refused_total",
            "ray_fabric_ttft_seconds_count", "ray_fabric_latency_seconds_bucket",
            "ray_fabric_queue_depth", "ray_fabric_energy_joules_total",
            "ray_fabric_energy_per_token_joules", "ray_fabric_carbon_grams_total",
            "ray_fabric_site_power_watts", "ray_fabric_site_power_budget_watts",
            "ray_fabric_site_headroom_watts", "ray_fabric_site_price_usd_per_mwh",
            "ray_fabric_site_carbon_g_per_kwh", "ray_fabric_site_curtailed",
            "ray_fabric_routing_weight", "ray_fabric_routing_table_version",
            "ray_fabric_traffic_shifted_last_tick"]


def test_metrics_reach_prometheus_with_sensible_values(fabric):
    model = fabric.spec.model.id
    before = scrape()
    tokens_before = total(before.get("ray_fabric_tokens_generated_total", []))
    for i in range(6):
        r = HTTP.post(f"{fabric.base_url}/chat/completions", json={
            "model": model, "max_tokens": 5, "messages": [{"role": "user", "content": f"count {i}"}]})
        assert r.status_code == 200
    bad = httpx.post(f"{fabric.base_url}/chat/completions", headers={"authorization": "Bearer wrong"},
                     json={"model": model, "messages": [{"role": "user", "content": "x"}]}, timeout=60)
    assert bad.status_code == 401
    deadline, got = time.monotonic() + 60, {}
    while time.monotonic() < deadline:  # the metrics agents export every 5 s
        got = scrape()
        if all(got.get(name) for name in EXPECTED) and total(
                got["ray_fabric_tokens_generated_total"]) >= tokens_before + 30 and total(
                got["ray_fabric_requests_refused_total"], reason="unauthenticated") >= 1:
            break
        time.sleep(2)
    missing = [name for name in EXPECTED if not got.get(name)]
    assert not missing, f"not exported: {missing}"
    sites = {s.name for _, s in fabric.spec.sites}
    serving = {s.name for m in fabric.spec.models for _, s in fabric.spec.hosting_sites(m)}

    assert total(got["ray_fabric_tokens_generated_total"]) >= tokens_before + 30
    assert {lab["site"] for lab, _ in got["ray_fabric_tokens_generated_total"]} <= serving
    labels = [lab for lab, _ in got["ray_fabric_tokens_generated_total"]]
    assert all(lab["tenant"] and lab["model"] in {m.id for m in fabric.spec.models}
               for lab in labels), [
        (lab.get("tenant"), lab.get("model"), lab.get("site")) for lab in labels]
    assert total(got["ray_fabric_requests_total"], status="200") >= 6
    # the bad key was refused by the /v1 gateway (it checks keys before choosing a model)
    assert total(got["ray_fabric_requests_refused_total"], reason="unauthenticated", site="-") >= 1
    assert total(got["ray_fabric_ttft_seconds_count"]) >= 6
    assert 0 < total(got["ray_fabric_energy_per_token_joules"])
    assert total(got["ray_fabric_energy_joules_total"]) > 0 and total(got["ray_fabric_carbon_grams_total"]) > 0
    assert all(v >= 0 for _, v in got["ray_fabric_queue_depth"])

    power = got["ray_fabric_site_power_watts"]
    assert {lab["site"] for lab, _ in power} == sites
    assert all(lab["source"] in POWER_SOURCES and v > 0 for lab, v in power)  # model: no driver
    assert all(v > 0 for _, v in got["ray_fabric_site_power_budget_watts"])
    assert all(v > 0 for _, v in got["ray_fabric_site_carbon_g_per_kwh"])
    assert all(v in (0.0, 1.0) for _, v in got["ray_fabric_site_curtailed"])
    weights = {lab["site"]: v for lab, v in got["ray_fabric_routing_weight"]}
    assert set(weights) <= sites
    for m in fabric.spec.models:  # each model's sites share its traffic
        hosts = {s.name for _, s in fabric.spec.hosting_sites(m)}
        assert sum(v for k, v in weights.items() if k in hosts) == pytest.approx(1.0, abs=0.01)
    assert max(v for _, v in got["ray_fabric_routing_table_version"]) > 1.6e12  # wall-clock ms
