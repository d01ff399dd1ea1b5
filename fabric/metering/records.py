"""Usage records: one per request, the unit of billing and of energy and carbon accounting.

Energy attribution (per request, at the replica that served it):

    energy_J  = P_node × latency / concurrency × PUE
    carbon_g  = energy_J / 3.6e6 × carbon_g_per_kWh
    cost_usd  = energy_J / 3.6e9 × price_usd_per_MWh
    billed    = (prompt_tokens × price_in + completion_tokens × price_out) / 1e6

P_node is the node's measured (NVML) or modelled GPU power at the time; concurrency is the mean
number of requests the engine was running while this one ran (at least 1), so concurrent
requests split the batch's energy; PUE lifts IT energy to facility energy. Price and carbon are
the site's grid values at that time.
"""

from __future__ import annotations

import uuid
from typing import Callable

import pyarrow as pa
from pydantic import BaseModel, Field

SCHEMA = pa.schema([
    ("request_id", pa.string()), ("ts", pa.timestamp("ms", tz="UTC")), ("date", pa.string()),
    ("tenant", pa.string()), ("agent_id", pa.string()), ("session_id", pa.string()),
    ("model", pa.string()), ("tier", pa.string()), ("region", pa.string()), ("site", pa.string()),
    ("node", pa.string()), ("endpoint", pa.string()), ("status", pa.int32()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("cached_tokens", pa.int64()),
    ("ttft_s", pa.float64()), ("latency_s", pa.float64()), ("energy_j", pa.float64()),
    ("carbon_g", pa.float64()), ("energy_cost_usd", pa.float64()), ("billed_usd", pa.float64()),
    ("power_source", pa.string()),
    # why it ran where it did, and what least_load would have made of the same tokens (null in
    # records written before these columns existed, or where no table had reached the engine)
    ("policy", pa.string()), ("table_version", pa.int64()),
    ("counterfactual_site", pa.string()), ("counterfactual_energy_cost_usd", pa.float64()),
    ("counterfactual_carbon_g", pa.float64()),
])


class UsageRecord(BaseModel):
    request_id: str
    ts: float = Field(description="request start, seconds since the epoch (UTC)")
    tenant: str = "default"
    agent_id: str = ""
    session_id: str = ""
    model: str = ""
    tier: str = ""
    region: str = ""
    site: str = ""
    node: str = ""
    endpoint: str = ""
    status: int = 200
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: float = 0.0
    latency_s: float = 0.0
    energy_j: float = 0.0
    carbon_g: float = 0.0
    energy_cost_usd: float = 0.0
    billed_usd: float = 0.0
    power_source: str = "model"
    policy: str | None = None
    table_version: int | None = None
    counterfactual_site: str | None = None
    counterfactual_energy_cost_usd: float | None = None
    counterfactual_carbon_g: float | None = None


# What the fabric's own services (the deferred queue, batch lines) retry: a record with one of
# these statuses is not a request's last word, so it never takes the request's given name.
RETRIED_STATUSES = (429, 500, 502, 503, 504)


def request_record(header: Callable[[str], str], body: dict, *, ts: float, tenant: str,
                   status: int, endpoint: str, request_id: str = "", **measured) -> dict:
    """One request's usage record as the fabric's edges (the engine's middleware, the gateway)
    write it: who sent it and for what, from its headers and body, the same way at every edge;
    ``measured`` holds what the edge saw (tokens, latency, where it ran, energy). A refusal is a
    record with its status and no tokens.

    The id: the fabric's own services name a request (``x-fabric-request-id`` on behalf of a
    tenant: a batch line, one record however often it runs) and its outcome takes that name;
    an outcome they retry (``RETRIED_STATUSES``) gets a fresh id, since the ledger keeps the
    first record of an id and the retry's must not be lost. Otherwise ``request_id`` (the
    engine's own) or a fresh one; a client's ``x-request-id`` may repeat, so it is never used."""
    body = body if isinstance(body, dict) else {}
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    named = tenant and status not in RETRIED_STATUSES and header("x-fabric-on-behalf-of")
    return UsageRecord(
        request_id=(named and header("x-fabric-request-id")) or request_id
        or f"fabric-{uuid.uuid4().hex}", ts=ts, tenant=tenant,
        agent_id=header("x-fabric-agent") or str(metadata.get("fabric_agent", "")),
        session_id=header("x-session-id") or str(metadata.get("fabric_session", "")),
        model=str(body.get("model", "")), endpoint=endpoint, status=status, **measured,
    ).model_dump()


def attribute(power_w: float, latency_s: float, concurrency: float, pue: float,
              carbon_g_per_kwh: float, price_usd_per_mwh: float) -> tuple[float, float, float]:
    """(energy J, carbon g, energy cost $) of one request; the formula is in the module doc."""
    energy = max(0.0, power_w) * max(0.0, latency_s) / max(1.0, concurrency) * pue
    return energy, energy / 3.6e6 * carbon_g_per_kwh, energy / 3.6e9 * price_usd_per_mwh


def billed_usd(prompt_tokens: int, completion_tokens: int, price_in: float, price_out: float) -> float:
    """Billed price at per-million-token prices."""
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6


def to_table(records: list[dict]) -> pa.Table:
    import datetime as dt

    rows = []
    for r in records:
        t = dt.datetime.fromtimestamp(r["ts"], tz=dt.timezone.utc)
        rows.append({**r, "ts": t, "date": t.strftime("%Y-%m-%d")})
    return pa.Table.from_pylist(rows, schema=SCHEMA)
