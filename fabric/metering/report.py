"""`fabric usage`: totals over the ledger's Parquet dataset (pyarrow only, no Ray)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

GROUPS = ("tenant", "agent_id", "model", "tier", "region", "site", "date")


def read_usage(root: str | Path, since: dt.datetime | None = None,
               until: dt.datetime | None = None, tenant: str | None = None) -> pa.Table:
    """The ledger's records (``date`` is the UTC day partition), optionally one tenant's only
    (a filtered scan: other tenants' rows are never loaded)."""
    path = Path(root) / "usage"
    if not path.exists() or not any(path.glob("date=*/*.parquet")):
        return pa.table({})
    from fabric.metering.records import SCHEMA

    only = None if tenant is None else ds.field("tenant") == tenant
    # the full schema: files written before a column existed read it as null
    table = ds.dataset(path, schema=SCHEMA, format="parquet", partitioning="hive").to_table(filter=only)
    if since is not None:
        table = table.filter(pc.greater_equal(table["ts"], pa.scalar(since, pa.timestamp("ms", tz="UTC"))))
    if until is not None:
        table = table.filter(pc.less(table["ts"], pa.scalar(until, pa.timestamp("ms", tz="UTC"))))
    return table


def totals(table: pa.Table, by: str | None = "tenant") -> list[dict]:
    """Requests, tokens, dollars, energy and carbon per ``by`` value (one row for all when
    ``by`` is None)."""
    if by is not None and by not in GROUPS:
        raise ValueError(f"--by must be one of {', '.join(GROUPS)}")
    if table.num_rows == 0:
        return []
    keys = [by] if by else []
    table = _with_savings(table)
    agg = table.group_by(keys).aggregate([
        ("request_id", "count"), ("prompt_tokens", "sum"), ("completion_tokens", "sum"),
        ("billed_usd", "sum"), ("energy_cost_usd", "sum"), ("energy_j", "sum"), ("carbon_g", "sum"),
        ("saved_usd", "sum"), ("saved_g", "sum"), ("counterfactual_energy_cost_usd", "count")])
    rows = []
    for r in agg.to_pylist():
        tokens = r["prompt_tokens_sum"] + r["completion_tokens_sum"]
        out = r["completion_tokens_sum"]
        rows.append({
            **({by: r[by] if isinstance(r[by], (str, int, float)) or r[by] is None else str(r[by])}
               if by else {}),
            "requests": r["request_id_count"], "prompt_tokens": r["prompt_tokens_sum"],
            "completion_tokens": out, "billed_usd": round(r["billed_usd_sum"], 6),
            "energy_cost_usd": round(r["energy_cost_usd_sum"], 9),
            "energy_j": round(r["energy_j_sum"], 3),
            "carbon_g": round(r["carbon_g_sum"], 6),
            "j_per_token": round(r["energy_j_sum"] / tokens, 6) if tokens else 0.0,
            "gco2_per_mtok": round(r["carbon_g_sum"] / tokens * 1e6, 3) if tokens else 0.0,
            # against least_load at the same moments, over the records that carry it
            "saved_usd": round(r["saved_usd_sum"] or 0.0, 9),
            "saved_kg_co2": round((r["saved_g_sum"] or 0.0) / 1e3, 9),
            "counterfactual_requests": r["counterfactual_energy_cost_usd_count"],
        })
    return sorted(rows, key=lambda r: str(r[by])) if by else rows


ADDITIVE = ("requests", "prompt_tokens", "completion_tokens", "billed_usd", "energy_cost_usd",
            "energy_j", "carbon_g", "saved_usd", "saved_kg_co2", "counterfactual_requests")


def merge_rows(parts: list[list[dict]], by: str | None) -> list[dict]:
    """``totals`` rows from several ledgers (a federation's members) as one set of rows:
    sums per ``by`` value, the per-token ratios computed again from the sums."""
    merged: dict = {}
    for rows in parts:
        for row in rows:
            key = row.get(by) if by else None
            into = merged.setdefault(key, {**({by: key} if by else {}),
                                           **{k: 0 for k in ADDITIVE}})
            for k in ADDITIVE:
                into[k] += row.get(k) or 0
    out = []
    for row in merged.values():
        tokens = row["prompt_tokens"] + row["completion_tokens"]
        row["j_per_token"] = round(row["energy_j"] / tokens, 6) if tokens else 0.0
        row["gco2_per_mtok"] = round(row["carbon_g"] / tokens * 1e6, 3) if tokens else 0.0
        for k in ("billed_usd", "energy_cost_usd", "saved_usd", "saved_kg_co2"):
            row[k] = round(row[k], 9)
        row["energy_j"], row["carbon_g"] = round(row["energy_j"], 3), round(row["carbon_g"], 6)
        out.append(row)
    return sorted(out, key=lambda r: str(r[by])) if by else out


def merge_usage(parts: list[dict]) -> dict:
    """The tenants' usage answers (``/fabric/v1/usage``) of several members as one answer."""
    first = parts[0]
    group_by = first.get("group_by")
    return {**{k: first.get(k) for k in ("object", "tenant", "since", "until")},
            "totals": (merge_rows([[p["totals"]] for p in parts], None) or [{}])[0],
            "group_by": group_by,
            "data": merge_rows([p.get("data") or [] for p in parts], group_by) if group_by else []}


def _with_savings(table: pa.Table) -> pa.Table:
    """Per record: energy $ and gCO2 saved against least_load (null where not recorded)."""
    for name in ("counterfactual_energy_cost_usd", "counterfactual_carbon_g"):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
    return (table.append_column("saved_usd", pc.subtract(table["counterfactual_energy_cost_usd"],
                                                          table["energy_cost_usd"]))
            .append_column("saved_g", pc.subtract(table["counterfactual_carbon_g"], table["carbon_g"])))


def batch_usage(root: str | Path, batch_id: str) -> dict:
    """A batch's records (kept under its lines' ids) in totals, and the same energy priced at
    each site's grid when the batch was created: what running it at once would have cost."""
    from fabric.layers.batches import read_batch

    batch = read_batch(Path(root) / "deferred", batch_id)
    if batch is None:
        raise ValueError(f"no batch {batch_id!r} under {root}")
    table = read_usage(root, tenant=batch["tenant"])
    if table.num_rows:
        table = table.filter(pc.starts_with(table["request_id"], batch_id + "-"))
    summary = (totals(table, None) or [{"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                         "billed_usd": 0.0, "energy_cost_usd": 0.0, "energy_j": 0.0,
                                         "carbon_g": 0.0}])[0]
    at_once = batch.get("at_once") or {}
    usd = g = 0.0
    priced = 0
    for site, energy in zip(table["site"].to_pylist() if table.num_rows else [],
                            table["energy_j"].to_pylist() if table.num_rows else []):
        grid = at_once.get(site)
        if grid is not None and energy is not None:
            usd += energy / 3.6e9 * grid["price_usd_per_mwh"]
            g += energy / 3.6e6 * grid["carbon_g_per_kwh"]
            priced += 1
    keep = ("requests", "prompt_tokens", "completion_tokens", "billed_usd", "energy_cost_usd",
            "energy_j", "carbon_g")
    return {"batch": batch_id, "tenant": batch["tenant"], "status": batch["status"],
            **{k: summary[k] for k in keep},
            "at_once_energy_cost_usd": round(usd, 12), "at_once_carbon_g": round(g, 9),
            "at_once_priced_requests": priced,
            "saved_usd": round(usd - summary["energy_cost_usd"], 12) if priced else None,
            "saved_carbon_g": round(g - summary["carbon_g"], 9) if priced else None}
