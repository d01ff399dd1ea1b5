import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fabric.power.grid import GridModel, ReplayClock
from fabric.power.series import SeriesError, load_mix, load_series
from fabric.spec import Curtailment, PowerProfile, SeriesRef

DATA = Path(__file__).resolve().parents[2] / "fabric" / "data" / "grid"
CISO = DATA / "carbon" / "CISO_2022-07-11_week.csv"
CISO_PRICE = DATA / "price" / "US-CAL-CISO_2023-07-11_week.csv"


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_carbon_series_replays_the_file_hour_by_hour():
    s = load_series(str(CISO))
    data = rows(CISO)
    assert len(s.values) == 168 and s.period_s == 168 * 3600
    for hour in (0, 1, 13, 167):
        assert s.at(hour * 3600) == pytest.approx(float(data[hour]["avg_CI"]))
        assert s.at(hour * 3600 + 3599) == pytest.approx(float(data[hour]["avg_CI"]))
    assert s.at(168 * 3600 + 5) == s.at(5)  # wraps around


def test_price_series_and_mix():
    p = load_series(str(CISO_PRICE))
    assert p.at(2 * 3600) == pytest.approx(float(rows(CISO_PRICE)[2]["Price (USD/MWh)"]))
    mix = load_mix(str(CISO)).at(13 * 3600)  # 13:00 UTC is 06:00 in California
    assert set(mix) <= {"nuclear", "hydro", "wind", "solar", "gas", "coal", "oil", "other"}
    assert sum(mix.values()) == pytest.approx(1, abs=1e-3)
    noon = load_mix(str(CISO)).at(20 * 3600)  # 13:00 local: solar is up
    assert noon["solar"] > mix.get("solar", 0)


def test_parquet_and_custom_column(tmp_path):
    path = tmp_path / "budget.parquet"
    ts = pa.array([0, 1800, 3600], type=pa.timestamp("s", tz="UTC"))
    pq.write_table(pa.table({"timestamp": ts, "mw": [1.0, 2.0, 3.0]}), path)
    s = load_series(str(path), "mw")
    assert [s.at(0), s.at(1799), s.at(1800), s.at(4000)] == [1.0, 1.0, 2.0, 3.0]
    with pytest.raises(SeriesError, match="no value column"):
        load_series(str(path), "nope")


def test_bad_series_files(tmp_path):
    no_time = tmp_path / "x.csv"
    no_time.write_text("when,value\n1,2\n")
    with pytest.raises(SeriesError, match="no timestamp column"):
        load_series(str(no_time))
    with pytest.raises(SeriesError, match="cannot read"):
        load_series(str(tmp_path / "missing.csv"))


def test_grid_model_curtailment_window_and_values():
    profile = PowerProfile(budget_mw=2.0, price_usd_per_mwh=SeriesRef(file=str(CISO_PRICE)),
                           carbon_g_per_kwh=SeriesRef(file=str(CISO)),
                           curtailments=[Curtailment(start_s=3600, duration_s=1800, budget_fraction=0.25)])
    g = GridModel(profile)
    before, during, after = g.state(3599), g.state(3600), g.state(5400)
    assert before.budget_w == 2e6 and not before.curtailed
    assert during.budget_w == 0.5e6 and during.curtailed and during.budget_fraction == 0.25
    assert after.budget_w == 2e6 and not after.curtailed
    assert during.carbon_g_per_kwh == pytest.approx(float(rows(CISO)[1]["avg_CI"]), abs=1e-3)
    assert g.state(0).source_mix == {"grid": 1.0}
    # what the site can count on until then: the lowest budget scheduled in a window
    assert g.lowest_budget_w(0, 3599) == 2e6 and g.lowest_budget_w(3000, 3600) == 0.5e6
    assert g.lowest_budget_w(5000, 9000) == 0.5e6 and g.lowest_budget_w(5400, 9000) == 2e6


def test_events_between_lists_starts_and_ends_in_order():
    g = GridModel(PowerProfile(budget_mw=1.0, curtailments=[
        Curtailment(start_s=100, duration_s=50, budget_fraction=0.5)]))
    assert [e["kind"] for e in g.events_between(0, 1000)] == ["curtailment_start", "curtailment_end"]
    assert g.events_between(0, 99) == [] and g.events_between(100, 149) == []
    assert g.events_between(99, 100)[0]["offset_s"] == 100


def test_overlapping_curtailments_take_the_deepest_cut():
    g = GridModel(PowerProfile(budget_mw=1.0, curtailments=[
        Curtailment(start_s=0, duration_s=100, budget_fraction=0.5),
        Curtailment(start_s=50, duration_s=100, budget_fraction=0.2)]))
    assert [g.budget_fraction(t) for t in (10, 60, 120, 200)] == [0.5, 0.2, 0.2, 1.0]


def test_replay_clock_runs_faster_than_real_time():
    clock = ReplayClock(speed=60, start_s=100, t0=1000.0)
    assert clock.offset(now=1000.0) == 100
    assert clock.offset(now=1010.0) == 700


def test_next_change_is_the_next_sample_or_event_edge():
    """The grid actor sleeps until the profile's next edge: every change of the state, and of
    the lowest budget over the look-ahead, happens exactly at one of those edges."""
    s = load_series(str(CISO))
    assert s.next_after(0) == 3600 and s.next_after(3599.5) == 3600
    assert s.next_after(167 * 3600 + 10) == 168 * 3600  # the wrap back to the first sample
    profile = PowerProfile(budget_mw=1.0, price_usd_per_mwh=40.0,
                           carbon_g_per_kwh={"file": str(CISO)},
                           curtailments=[Curtailment(start_s=10_000, duration_s=500,
                                                     budget_fraction=0.5)])
    grid = GridModel(profile)
    assert grid.next_change_s(7300, ahead_s=1000) == 9000  # the curtailment enters the look-ahead
    assert grid.next_change_s(9000, ahead_s=1000) == 10_000
    assert grid.next_change_s(10_000, ahead_s=1000) == 10_500
    assert grid.next_change_s(10_500, ahead_s=1000) == 10_800  # the next hourly sample
    # between two edges nothing a reader sees changes
    for start in (7300, 9000, 10_000, 10_500):
        end = grid.next_change_s(start, ahead_s=1000)
        probes = [start + f * (end - start) for f in (0.0, 0.3, 0.99)]
        views = {(grid.state(t).model_dump_json(exclude={"offset_s"}),
                  grid.lowest_budget_w(t, t + 1000)) for t in probes}
        assert len(views) == 1, (start, end)
    flat = GridModel(PowerProfile(budget_mw=1.0, price_usd_per_mwh=40.0, carbon_g_per_kwh=100.0))
    assert flat.next_change_s(0) == float("inf")
