import os

import pyarrow.parquet as pq
import pytest

from fabric.metering.records import UsageRecord, attribute, billed_usd
from fabric.metering.report import read_usage, totals
from fabric.metering.store import LedgerStore


def rec(i, **kw):
    return UsageRecord(request_id=f"r{i}", ts=1_700_000_000 + i, prompt_tokens=10,
                       completion_tokens=5, energy_j=2.0, carbon_g=0.1, **kw).model_dump()


def test_attribution_formula():
    energy, carbon, cost = attribute(power_w=700, latency_s=2.0, concurrency=4, pue=1.2,
                                     carbon_g_per_kwh=360, price_usd_per_mwh=50)
    assert energy == pytest.approx(700 * 2 / 4 * 1.2)            # 420 J
    assert carbon == pytest.approx(420 / 3.6e6 * 360)            # 0.042 g
    assert cost == pytest.approx(420 / 3.6e9 * 50)
    assert attribute(700, 2.0, 0.2, 1.0, 0, 0)[0] == 1400        # concurrency floors at 1
    assert billed_usd(1_000_000, 500_000, 0.05, 0.20) == pytest.approx(0.15)


def test_append_flush_and_read_back(tmp_path):
    store = LedgerStore(tmp_path)
    assert store.append([rec(i) for i in range(10)]) == 10
    assert store.flush() == 10
    table = read_usage(tmp_path)
    assert table.num_rows == 10 and sorted(table["request_id"].to_pylist()) == sorted(f"r{i}" for i in range(10))
    assert list((tmp_path / "usage").glob("date=2023-11-14/part-*.parquet"))  # partitioned by date
    assert store.flush() == 0


def test_duplicates_are_dropped_even_across_restarts(tmp_path):
    store = LedgerStore(tmp_path)
    store.append([rec(1), rec(2)])
    assert store.append([rec(2), rec(3)]) == 1    # a retried send
    store.flush()
    again = LedgerStore(tmp_path)                   # a restarted ledger remembers recent ids
    assert again.append([rec(3), rec(4)]) == 1
    again.flush()
    assert sorted(read_usage(tmp_path)["request_id"].to_pylist()) == ["r1", "r2", "r3", "r4"]


def test_crash_between_append_and_flush_loses_nothing(tmp_path):
    store = LedgerStore(tmp_path)
    store.append([rec(i) for i in range(5)])
    # the process dies here: no flush, no close
    recovered = LedgerStore(tmp_path)
    assert read_usage(tmp_path).num_rows == 5
    assert recovered.flush() == 0


def test_crash_mid_flush_is_idempotent(tmp_path):
    store = LedgerStore(tmp_path)
    store.append([rec(i) for i in range(4)])
    store.flush()
    # simulate: a WAL moved aside and written to Parquet, but the crash came before its delete
    store.append([rec(i) for i in range(4, 8)])
    store._wal.close()
    store._wal = None
    moving = tmp_path / "_wal" / "wal-000000099.flushing"
    os.replace(tmp_path / "_wal" / "wal.jsonl", moving)
    raw = moving.read_bytes()
    store._flush_file(moving)
    moving.write_bytes(raw)                          # ... and it is still there after the crash
    LedgerStore(tmp_path)
    ids = read_usage(tmp_path)["request_id"].to_pylist()
    assert sorted(ids) == sorted(f"r{i}" for i in range(8))  # none lost, none twice


def test_torn_last_line_is_skipped(tmp_path):
    store = LedgerStore(tmp_path)
    store.append([rec(1)])
    with open(tmp_path / "_wal" / "wal.jsonl", "ab") as f:
        f.write(b'{"request_id": "r2", "ts"')   # never acknowledged
    store._wal = None
    LedgerStore(tmp_path)
    assert read_usage(tmp_path)["request_id"].to_pylist() == ["r1"]


def test_totals_per_group(tmp_path):
    store = LedgerStore(tmp_path)
    store.append([rec(1, tenant="a", site="x"), rec(2, tenant="a", site="y"), rec(3, tenant="b", site="x")])
    store.flush()
    rows = {r["tenant"]: r for r in totals(read_usage(tmp_path), "tenant")}
    assert rows["a"]["requests"] == 2 and rows["a"]["prompt_tokens"] == 20
    assert rows["a"]["j_per_token"] == pytest.approx(4.0 / 30, abs=1e-6)
    assert rows["b"]["gco2_per_mtok"] == pytest.approx(0.1 / 15 * 1e6)
    assert [r["site"] for r in totals(read_usage(tmp_path), "site")] == ["x", "y"]
    with pytest.raises(ValueError):
        totals(read_usage(tmp_path), "colour")
    assert totals(read_usage(tmp_path / "empty"), "tenant") == []


def test_dataset_reads_with_plain_pyarrow(tmp_path):
    store = LedgerStore(tmp_path)
    store.append([rec(1)])
    store.flush()
    [f] = list((tmp_path / "usage").rglob("*.parquet"))
    names = pq.read_table(f).column_names
    for col in ("request_id", "tenant", "agent_id", "session_id", "model", "tier", "region", "site",
                "node", "prompt_tokens", "completion_tokens", "cached_tokens", "ttft_s",
                "latency_s", "status", "energy_j", "carbon_g", "energy_cost_usd", "billed_usd"):
        assert col in names


def test_savings_against_least_load_and_ledgers_written_before_the_counterfactual(tmp_path):
    import datetime as dt

    import pyarrow as pa

    from fabric.metering.records import SCHEMA

    # a file as the previous schema wrote it: none of the decision columns
    old = [c for c in SCHEMA if c.name not in ("policy", "table_version", "counterfactual_site",
                                                "counterfactual_energy_cost_usd",
                                                "counterfactual_carbon_g", "date")]
    part = tmp_path / "usage" / "date=2023-11-14"
    part.mkdir(parents=True)
    row = {k: v for k, v in rec(0, tenant="a", energy_cost_usd=1e-6).items() if k in {c.name for c in old}}
    row["ts"] = dt.datetime.fromtimestamp(row["ts"], tz=dt.timezone.utc)
    pq.write_table(pa.Table.from_pylist([row], schema=pa.schema(old)), part / "part-old.parquet")
    store = LedgerStore(tmp_path)
    store.append([rec(1, tenant="a", energy_cost_usd=1e-6, policy="fabric",
                      table_version=7, counterfactual_site="dear",
                      counterfactual_energy_cost_usd=3e-6, counterfactual_carbon_g=0.5)])
    store.flush()
    table = read_usage(tmp_path)
    assert table.num_rows == 2 and table["policy"].to_pylist().count(None) == 1
    [a] = totals(table, "tenant")
    assert a["requests"] == 2 and a["counterfactual_requests"] == 1
    assert a["saved_usd"] == pytest.approx(2e-6) and a["saved_kg_co2"] == pytest.approx(0.4e-3)


def test_the_counterfactual_is_least_loads_spread_priced_at_its_sites():
    from fabric.scheduling.counterfactual import counterfactuals, price
    from fabric.scheduling.signals import ReplicaSignals, SiteSignals, Snapshot

    def site(name, price_, carbon, j, inflight=0):
        return SiteSignals(name=name, region="r", budget_w=1e4, facility_w=1e3, replicas=1,
                           price_usd_per_mwh=price_, carbon_g_per_kwh=carbon, j_per_token=j,
                           pue=1.0, inflight=inflight, max_inflight_per_replica=10,
                           engines=[ReplicaSignals(replica=name, model="m")])

    cf = counterfactuals(Snapshot(sites=[site("cheap", 10, 100, 1.0), site("dear", 90, 500, 2.0)]))
    # least_load splits an idle pair evenly: half at the cheap site's figures, half at the
    # dear one's (twice the joules per token)
    usd, grams = price(3.6e9, cf["cheap"])
    assert usd == pytest.approx(0.5 * 10 + 0.5 * 2 * 90)
    assert grams == pytest.approx((0.5 * 100 + 0.5 * 2 * 500) * 1e3)
    assert price(3.6e9, cf["dear"])[0] == pytest.approx(0.5 * 10 / 2 + 0.5 * 90)


def test_the_recent_window_summarises_the_last_minute_per_site_and_model():
    from fabric.metering.recent import RecentWindow

    w = RecentWindow(keep_s=300)
    ok = lambda i, ttft, site="cloud-a": {  # noqa: E731
        "request_id": f"r{i}", "site": site, "model": "m", "status": 200, "ttft_s": ttft,
        "prompt_tokens": 10, "completion_tokens": 90, "energy_cost_usd": 1e-4, "carbon_g": 0.5,
        "counterfactual_energy_cost_usd": 3e-4, "counterfactual_carbon_g": 2.5}
    w.add([ok(99, 5.0, "edge-a")], now=650.0)  # kept 300 s only: gone at the next add
    w.add([ok(i, 0.1 * (i + 1)) for i in range(10)], now=1000.0)
    w.add([ok(3, 9.9)], now=1001.0)  # sent again after a ledger restart: counted once
    w.add([{"request_id": "x", "site": "", "model": "m", "status": 429},
           {"request_id": "y", "site": "", "model": "m", "status": 429},
           {"request_id": "old", "site": "edge-a", "model": "m", "status": 200}], now=1001.0)
    s = {(g["site"], g["model"]): g for g in w.summary(now=1030.0, window_s=60)["groups"]}
    a = s[("cloud-a", "m")]
    assert a["requests"] == a["served"] == 10 and a["refused"] == {}
    assert a["ttft_p50_s"] == 0.55 and 0.99 <= a["ttft_p99_s"] <= 1.0
    assert a["tokens_out_per_s"] == 15.0 and a["usd_per_mtok"] == 1.0 and a["gco2_per_mtok"] == 5000
    assert abs(a["saved_usd"] - 2e-3) < 1e-12 and abs(a["saved_kg_co2"] - 0.02) < 1e-12
    assert s[("", "m")]["refused"] == {"429": 2} and s[("", "m")]["ttft_p50_s"] is None
    assert ("edge-a", "m") in s and s[("edge-a", "m")]["requests"] == 1
    assert w.summary(now=1100.0, window_s=60)["groups"] == []  # a quiet minute
    assert len(w.rows) == 13 and "r99" not in w.ids
