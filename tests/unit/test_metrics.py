"""Metric recorders: what one tick or one usage record adds (ray.util.metrics records outside
a cluster too; the Prometheus path is tests/integration/test_metrics_scrape.py)."""

import pytest

from fabric.metrics import EngineMetrics, SiteMetrics, refusal_reason


def _state(site, **kw):
    return {"region": "r", "site": site, "facility_power_w": 100.0, "budget_w": 200.0,
            "headroom_w": 100.0, "price_usd_per_mwh": 40.0, "carbon_g_per_kwh": 300.0,
            "curtailed": False, "power_source": "model", **kw}


def test_traffic_shifted_is_the_share_that_changed_site():
    m = SiteMetrics()
    states = [_state("a"), _state("b")]
    assert m.observe(states, {"a": 1, "b": 1}, 1) == 0.0          # first table: nothing moved
    assert m.observe(states, {"a": 3, "b": 1}, 2) == pytest.approx(0.25)
    assert m.observe(states, {"a": 0, "b": 1}, 3) == pytest.approx(0.75)
    assert m.observe(states, {"a": 0, "b": 1}, 4) == 0.0
    assert m.observe(states, {}, 5) == 0.0                          # no weights: nothing to move to


def test_refusal_reasons_follow_the_status():
    assert [refusal_reason(s) for s in (401, 402, 403, 429, 503, 418)] == [
        "unauthenticated", "budget", "forbidden", "rate_limit", "no_allowed_site", "http_418"]


def test_engine_metrics_take_served_and_refused_records():
    e = EngineMetrics("r", "a", "m")
    e.observe({"status": 200, "tenant": "t", "completion_tokens": 3, "prompt_tokens": 4,
               "ttft_s": 0.1, "latency_s": 0.2, "energy_j": 1.0, "carbon_g": 0.1}, 1)
    e.observe({"status": 429, "tenant": ""}, 0)
    with pytest.raises(KeyError):
        e.observe({"status": 200}, 0)  # a malformed record is an error, caught by the engine
