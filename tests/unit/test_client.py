import math

from fabric.client import StepResult, WorkloadReport, percentile


def test_percentile():
    assert percentile([3, 1, 2], 50) == 2
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4, 5], 100) == 5
    assert math.isnan(percentile([], 50))


def test_report_summarises_results():
    results = [StepResult(agent=0, step=0, ok=True, region="edge", prompt_tokens=10,
                          completion_tokens=5, ttft_s=0.1, latency_s=0.5),
               StepResult(agent=0, step=1, ok=True, region="cloud", prompt_tokens=20,
                          completion_tokens=5, ttft_s=0.3, latency_s=0.7),
               StepResult(agent=1, step=0, ok=False, error="http 503: no capacity")]
    s = WorkloadReport(results=results, wall_s=2.0).summary
    assert s["requests"] == 3 and s["succeeded"] == 2 and s["errors"] == 1
    assert s["tokens_in"] == 30 and s["tokens_out"] == 10 and s["tokens_per_s"] == 5.0
    assert s["ttft_p50_ms"] == 200.0 and s["latency_p99_ms"] == 698.0
    assert s["region_share"] == {"cloud": 0.5, "edge": 0.5}
    assert s["error_kinds"] == {"http 503": 1}


def test_report_splits_traffic_around_events():
    results = [StepResult(agent=0, step=i, ok=True, site=site, started_s=t, completion_tokens=1)
               for i, (site, t) in enumerate([("a", 0.1), ("b", 0.2), ("a", 1.5), ("a", 1.6)])]
    report = WorkloadReport(results=results, wall_s=2.0, events=[{"at_s": 1.0, "what": "cut b"}])
    event = report.summary["events"][0]
    assert event["site_share_before"] == {"a": 0.5, "b": 0.5}
    assert event["site_share_after"] == {"a": 1.0}
    assert report.summary["site_share"] == {"a": 0.75, "b": 0.25}
