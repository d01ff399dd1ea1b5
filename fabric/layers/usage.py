"""Layer 5, the tenants' usage API: ``GET /fabric/v1/usage`` — what a tenant has spent.

The caller's API key decides whose usage it sees: the answer is that tenant's records from
the token ledger and nobody else's (there is no parameter that names a tenant, and an unknown
parameter is refused). Records reach it within the ledger's flush period (about a second)
after the engine hands them over. Query parameters:

- ``since`` / ``until``: ISO 8601 times (UTC when no offset is given); default all time
- ``group_by``: one of model, tier, region, site, agent_id, date (default: totals only)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from fabric.layers.regional import openai_error
from fabric.metering.report import read_usage, totals
from fabric.metering.tenants import Refusal
from fabric.metering.tenants import from_spec as tenant_gate
from fabric.spec import ROLE_LABEL

ROUTE_PREFIX = "/fabric"
GROUP_BY = ("model", "tier", "region", "site", "agent_id", "date")
PARAMS = ("since", "until", "group_by")

app = FastAPI()


def _time(name: str, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def parse_query(query: dict[str, str]) -> tuple[dt.datetime | None, dt.datetime | None, str | None]:
    """(since, until, group_by) from the query string; ValueError says what is wrong."""
    unknown = sorted(set(query) - set(PARAMS))
    if unknown:
        raise ValueError(f"unknown parameter(s): {', '.join(unknown)} (known: {', '.join(PARAMS)})")
    since, until = _time("since", query.get("since")), _time("until", query.get("until"))
    if since and until and since >= until:
        raise ValueError("since must be before until")
    group_by = query.get("group_by")
    if group_by is not None and group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}")
    return since, until, group_by


def tenant_usage(root: str, tenant: str, since=None, until=None, group_by=None) -> dict:
    table = read_usage(root, since=since, until=until, tenant=tenant)
    empty = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "billed_usd": 0.0,
             "energy_cost_usd": 0.0, "energy_j": 0.0, "carbon_g": 0.0, "j_per_token": 0.0,
             "gco2_per_mtok": 0.0}
    summary = (totals(table, None) or [empty])[0]
    return {"object": "fabric.usage", "tenant": tenant,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "totals": summary, "group_by": group_by,
            "data": totals(table, group_by) if group_by else []}


@serve.deployment(ray_actor_options={"num_cpus": 0, "label_selector": {ROLE_LABEL: "head"}},
                  max_ongoing_requests=64)
@serve.ingress(app)
class UsageEndpoint:
    def __init__(self, tenants: list[dict]):
        self.gate = tenant_gate(tenants, None, share=1.0)
        self.root: str | None = None

    async def _ledger_root(self) -> str:
        if self.root is None:
            from fabric.layers.naming import NAMESPACE
            from fabric.metering.ledger import LEDGER_NAME

            ledger = await asyncio.to_thread(ray.get_actor, LEDGER_NAME, namespace=NAMESPACE)
            self.root = (await ledger.info.remote())["root"]
        return self.root

    @app.get("/v1/usage")
    async def usage(self, request: Request) -> JSONResponse:
        tenant = self.gate.authenticate(request.headers.get("authorization", ""))
        if isinstance(tenant, Refusal):
            return openai_error(tenant.status, tenant.message, "AuthenticationError")
        try:
            since, until, group_by = parse_query(dict(request.query_params))
        except ValueError as exc:
            return openai_error(400, str(exc), "BadRequestError", "query")
        try:
            root = await self._ledger_root()
        except Exception as exc:
            return openai_error(503, f"the token ledger is not reachable now: {exc}",
                                "ServiceUnavailableError")
        body = await asyncio.to_thread(tenant_usage, root, tenant.name, since, until, group_by)
        return JSONResponse(json.loads(json.dumps(body, default=str)))


def deploy_usage(spec) -> str:
    """Deploy the usage API; returns its URL."""
    serve.run(build_usage({"tenants": [t.model_dump() for t in spec.tenants]}),
              name="usage", route_prefix=ROUTE_PREFIX, blocking=False)
    return f"http://{spec.endpoint.host}:{spec.endpoint.port}{ROUTE_PREFIX}/v1/usage"


def build_usage(args: dict):
    """Serve config builder (``import_path: fabric.layers.usage:build_usage``)."""
    return UsageEndpoint.bind(args.get("tenants") or [])
