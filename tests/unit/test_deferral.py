"""Deferred work: when it is released (pure), what a submission must say, and the job log."""

import pytest

from fabric.layers.deferred import JobStore, view
from fabric.layers.tenant_api import parse_deferred
from fabric.scheduling.deferral import (DeferralPolicy, GridPoint, planned_start, sample_times,
                                        scores, should_release)

POLICY = DeferralPolicy()


def prices(*values, carbon=100.0):
    return [[GridPoint(v, carbon)] for v in values]


def test_waits_for_a_cheaper_window_ahead():
    s = scores(prices(100, 80, 20, 90), POLICY)
    assert s.index(min(s)) == 2
    assert not should_release(0, 3600, s, POLICY)                      # the 20 $/MWh hour is ahead
    assert should_release(0, 3600, s[2:], POLICY)                       # ... and now it is here
    assert planned_start([0, 1200, 2400, 3600], s) == 2400


def test_never_waits_past_the_latest_start():
    s = scores(prices(100, 20), POLICY)
    assert should_release(3600, 3600, s, POLICY) and should_release(4000, 3600, s, POLICY)
    assert should_release(0, 3600, [], POLICY)                          # no forecast: run now


def test_a_marginally_better_window_is_not_worth_waiting_for():
    s = scores(prices(100, 99.5), DeferralPolicy(price_weight=1, carbon_weight=0, tolerance=0.02))
    assert should_release(0, 3600, s, POLICY)


def test_the_best_uncurtailed_site_counts_and_carbon_weighs_in():
    cut = [[GridPoint(10, 100, curtailed=True), GridPoint(100, 100)], [GridPoint(50, 100)]]
    s = scores(cut, POLICY)
    assert s[1] < s[0]                         # the cheap site is curtailed now: wait for 50
    green = [[GridPoint(50, 400)], [GridPoint(50, 50)]]
    assert not should_release(0, 600, scores(green, POLICY), POLICY)
    assert should_release(0, 600, scores(green, DeferralPolicy(carbon_weight=0)), POLICY)


def test_sample_times_span_now_to_the_latest_start():
    assert sample_times(100, 100, 5) == [100]
    t = sample_times(0, 100, 5)
    assert t[0] == 0 and t[-1] == 100 and len(t) == 5


def test_submissions_are_checked():
    now = 1_000_000.0
    assert parse_deferred({"body": {"model": "m"}, "deadline_s": 600}, now) == (
        "/v1/chat/completions", {"model": "m"}, now + 600)
    endpoint, _, deadline = parse_deferred({"body": {}, "endpoint": "/v1/completions",
                                            "deadline": "1970-01-12T14:00:00Z"}, now)
    assert endpoint == "/v1/completions" and deadline == 1_000_800.0
    for payload, needle in (
            ([], "must be a JSON object"), ({"body": "x", "deadline_s": 60}, "body must be"),
            ({"body": {"stream": True}, "deadline_s": 60}, "cannot stream"),
            ({"body": {}, "deadline_s": 60, "endpoint": "/v1/embeddings"}, "endpoint must be"),
            ({"body": {}}, "exactly one of"), ({"body": {}, "deadline_s": 60, "deadline": "x"}, "exactly one of"),
            ({"body": {}, "deadline_s": "soon"}, "must be a number"),
            ({"body": {}, "deadline_s": 1}, "between"), ({"body": {}, "deadline_s": 30 * 86400}, "between"),
            ({"body": {}, "deadline": "tomorrow"}, "ISO 8601"),
            ({"body": {}, "deadline_s": 60, "tenant": "other"}, "unknown field(s): tenant")):
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            parse_deferred(payload, now)


def test_the_job_log_survives_a_restart_and_reruns_cut_off_work(tmp_path):
    store = JobStore(tmp_path)
    store.write("a", status="queued", tenant="t", deadline=1.0)
    store.write("b", status="queued", tenant="t", deadline=1.0)
    store.write("a", status="running")
    store.write("b", status="completed", response={"ok": 1})
    with open(tmp_path / "jobs.jsonl", "ab") as f:
        f.write(b'{"id": "c", "stat')                    # torn: never acknowledged
    again = JobStore(tmp_path)
    assert again.jobs["a"]["status"] == "queued"         # cut off mid-run: it runs again
    assert view(again.jobs["b"])["response"] == {"ok": 1} and "c" not in again.jobs
    assert "response" not in view(again.jobs["b"], with_response=False)


def test_the_merit_orders_cost_scores_windows_in_dollars_per_token():
    policy = DeferralPolicy(carbon_usd_per_t=100)
    # $/Mtok = MWh/Mtok × (price + kg/MWh × $/t / 1000): 0.1 × (50 + 400 × 0.1) = 9
    rows = [[GridPoint(50, 400, mwh_per_mtok=0.1), GridPoint(30, 600, mwh_per_mtok=0.2)],
            [GridPoint(50, 50, mwh_per_mtok=0.1)]]
    assert scores(rows, policy) == pytest.approx([9.0, 5.5])
    assert not should_release(0, 600, scores(rows, policy), policy)  # greener window ahead
