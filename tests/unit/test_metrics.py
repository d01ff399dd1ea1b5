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


def test_engine_metrics_sum_requests_in_process_until_a_flush():
    e = EngineMetrics("r", "a", "m")
    served = {"status": 200, "tenant": "t", "completion_tokens": 3, "prompt_tokens": 4,
              "ttft_s": 0.1, "latency_s": 0.2, "energy_j": 1.0, "carbon_g": 0.1}
    for _ in range(50):
        e.observe(served, 2)
        e.queue_depth(3)
    e.observe({"status": 429, "tenant": "t"}, 1)
    sums = {(c.info["name"], tuple(tags.values())): v for c, tags, v in e._sums.values()}
    assert sums[("fabric_tokens_generated", ("r", "a", "m", "t"))] == 150
    assert sums[("fabric_requests", ("r", "a", "m", "t", "200"))] == 50
    assert sums[("fabric_requests", ("r", "a", "m", "t", "429"))] == 1
    assert sums[("fabric_energy_joules", ("r", "a", "m"))] == pytest.approx(50.0)
    # 51 requests: 7 counter series + 2 gauges + 100 latency observations, not ~550 calls
    assert e.flush() == 7 + 2 + 100
    assert e.flush() == 0  # nothing twice
