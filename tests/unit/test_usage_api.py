"""The tenants' usage API, its pure parts: the query it accepts and the answer it builds."""

import datetime as dt

import pytest

from fabric.layers.tenant_api import parse_query, tenant_usage
from fabric.metering.store import LedgerStore
from test_ledger_store import rec


def test_query_is_checked():
    assert parse_query({}) == (None, None, None)
    since, until, by = parse_query({"since": "2026-01-31T12:00:00", "until": "2026-02-01T00:00:00+01:00",
                                    "group_by": "model"})
    assert since == dt.datetime(2026, 1, 31, 12, tzinfo=dt.timezone.utc) and by == "model"
    assert until.utcoffset() == dt.timedelta(hours=1)
    for query, why in (({"tenant": "b"}, r"unknown parameter\(s\): tenant"),
                       ({"since": "yesterday"}, "since must be an ISO 8601 time"),
                       ({"since": "2026-02-01", "until": "2026-01-01"}, "since must be before until"),
                       ({"group_by": "tenant"}, "group_by must be one of")):
        with pytest.raises(ValueError, match=why):
            parse_query(query)


def test_a_tenant_sees_its_own_records_only(tmp_path):
    store = LedgerStore(tmp_path)
    store.append([rec(1, tenant="a", site="x"), rec(2, tenant="a", site="y"),
                  rec(3, tenant="b", site="x")])
    store.flush()
    a = tenant_usage(str(tmp_path), "a", group_by="site")
    assert a["tenant"] == "a" and a["totals"]["requests"] == 2 and a["totals"]["prompt_tokens"] == 20
    assert [(r["site"], r["requests"]) for r in a["data"]] == [("x", 1), ("y", 1)]
    b = tenant_usage(str(tmp_path), "b", group_by="date")
    assert b["totals"]["requests"] == 1 and len(b["data"]) == 1 and isinstance(b["data"][0]["date"], str)
    nobody = tenant_usage(str(tmp_path), "c")
    assert nobody["totals"]["requests"] == 0 and nobody["data"] == []
    later = tenant_usage(str(tmp_path), "a", since=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1))
    assert later["totals"]["requests"] == 0
