"""Layer 5, the tenants' own API under ``/fabric/v1``: what they spent, and deferred work.

The caller's API key decides whose data it sees — that tenant's and nobody else's: no
parameter names a tenant, an unknown parameter is refused, another tenant's job is a 404.

``GET /fabric/v1/usage``: the tenant's records from the token ledger (they arrive within the
ledger's flush period, about a second, after the engine hands them over). Query parameters:

- ``since`` / ``until``: ISO 8601 times (UTC when no offset is given); default all time
- ``group_by``: one of model, tier, region, site, agent_id, date (default: totals only)

``POST /fabric/v1/deferred`` ``{"body": <a chat or completions request>, "endpoint":
"/v1/chat/completions", "deadline_s": 3600}`` (or ``"deadline": <ISO time>``): queue work that
may wait for a cheaper or greener window (``fabric.layers.deferred``); 202 with the job.
``GET /fabric/v1/deferred/<id>`` the job, with the response once completed;
``GET /fabric/v1/deferred`` the tenant's jobs; ``DELETE /fabric/v1/deferred/<id>`` cancels a
queued job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

import ray
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve

from fabric.layers.body import parse_object, read_limited, too_large
from fabric.layers.errors import openai_error
from fabric.layers.ui import MAX_STREAMS, LiveState, operator_refusal, page, ui_args
from fabric.metering.report import GROUPS, read_usage, totals
from fabric.metering.tenants import Refusal
from fabric.metering.tenants import from_spec as tenant_gate
from fabric.spec import ROLE_LABEL

ROUTE_PREFIX = "/fabric"
APP_NAME = "tenant-api"
GROUP_BY = ("model", "tier", "region", "site", "agent_id", "date")
PARAMS = ("since", "until", "group_by")
MAX_SUBMISSION = 8 * 2**20  # one deferred request: the endpoints' default body limit

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


def parse_deferred(payload: object, now: float) -> tuple[str, dict, float]:
    """(endpoint, request, deadline as epoch seconds) from a submission; ValueError says what
    is wrong with it."""
    from fabric.layers.deferred import MAX_DEADLINE_S, MIN_DEADLINE_S, PATHS

    if not isinstance(payload, dict):
        raise ValueError("the submission must be a JSON object")
    unknown = sorted(set(payload) - {"body", "endpoint", "deadline_s", "deadline"})
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    body = payload.get("body")
    if not isinstance(body, dict):
        raise ValueError("body must be the request, a JSON object")
    if body.get("stream"):
        raise ValueError("a deferred request cannot stream: its answer is collected later")
    endpoint = payload.get("endpoint", PATHS[0])
    if endpoint not in PATHS:
        raise ValueError(f"endpoint must be one of {', '.join(PATHS)}")
    if ("deadline_s" in payload) == ("deadline" in payload):
        raise ValueError("give exactly one of deadline_s (seconds from now) or deadline (ISO 8601)")
    if "deadline_s" in payload:
        seconds = payload["deadline_s"]
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise ValueError("deadline_s must be a number of seconds")
        deadline = now + float(seconds)
    else:
        when = _time("deadline", payload["deadline"]) if isinstance(payload["deadline"], str) else None
        if when is None:
            raise ValueError("deadline must be an ISO 8601 time")
        deadline = when.timestamp()
    if not MIN_DEADLINE_S <= deadline - now <= MAX_DEADLINE_S:
        raise ValueError(f"the deadline must be between {MIN_DEADLINE_S:g} s and "
                         f"{MAX_DEADLINE_S // 86400} days from now")
    return endpoint, body, deadline


def tenant_usage(root: str, tenant: str, since=None, until=None, group_by=None) -> dict:
    table = read_usage(root, since=since, until=until, tenant=tenant)
    empty = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "billed_usd": 0.0,
             "energy_cost_usd": 0.0, "energy_j": 0.0, "carbon_g": 0.0, "j_per_token": 0.0,
             "gco2_per_mtok": 0.0, "saved_usd": 0.0, "saved_kg_co2": 0.0,
             "counterfactual_requests": 0}
    summary = (totals(table, None) or [empty])[0]
    return {"object": "fabric.usage", "tenant": tenant,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "totals": summary, "group_by": group_by,
            "data": totals(table, group_by) if group_by else []}


@serve.deployment(ray_actor_options={"num_cpus": 0, "label_selector": {ROLE_LABEL: "head"}},
                  max_ongoing_requests=256)
@serve.ingress(app)
class TenantAPI:
    def __init__(self, tenants: list[dict], ui: dict | None = None,
                 federation: dict | None = None):
        self.gate = tenant_gate(tenants, None, share=1.0)
        self.root: str | None = None
        self.live = LiveState(**(ui or {}))
        self.ui = ui or {}
        self.member = federation or {}  # what a federation needs to know of this fabric
        self._scheduler = None

    def _tenant(self, request: Request):
        tenant = self.gate.authenticate(request.headers.get("authorization", ""))
        if isinstance(tenant, Refusal):
            return openai_error(tenant.status, tenant.message, "AuthenticationError", None, tenant.code)
        return tenant

    async def _actor(self, name: str):
        from fabric.layers.naming import NAMESPACE

        return await asyncio.to_thread(ray.get_actor, name, namespace=NAMESPACE)

    async def _ledger_root(self) -> str:
        if self.root is None:
            from fabric.metering.ledger import LEDGER_NAME

            self.root = (await (await self._actor(LEDGER_NAME)).info.remote())["root"]
        return self.root

    @app.get("/v1/usage")
    async def usage(self, request: Request) -> JSONResponse:
        tenant = self._tenant(request)
        if isinstance(tenant, JSONResponse):
            return tenant
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

    async def _queue(self):
        from fabric.layers.deferred import DEFERRED_NAME

        return await self._actor(DEFERRED_NAME)

    @app.post("/v1/deferred")
    async def submit(self, request: Request) -> JSONResponse:
        tenant = self._tenant(request)
        if isinstance(tenant, JSONResponse):
            return tenant
        raw = await read_limited(request.stream(), MAX_SUBMISSION,
                                 request.headers.get("content-length", ""))
        if raw is None:
            return openai_error(413, too_large(MAX_SUBMISSION), None, "body", "request_too_large")
        payload, invalid = parse_object(raw)
        if invalid:
            return openai_error(400, invalid, "BadRequestError", "body")
        try:
            endpoint, body, deadline = parse_deferred(payload, time.time())
        except ValueError as exc:
            return openai_error(400, str(exc), "BadRequestError", "body")
        try:
            job = await (await self._queue()).submit.remote(tenant.name, endpoint, body, deadline)
        except Exception as exc:
            return openai_error(503, f"the deferred queue is not reachable now: {exc}",
                                "ServiceUnavailableError")
        return JSONResponse(job, status_code=202)

    @app.get("/v1/deferred")
    async def jobs(self, request: Request) -> JSONResponse:
        tenant = self._tenant(request)
        if isinstance(tenant, JSONResponse):
            return tenant
        jobs = await (await self._queue()).list.remote(tenant.name)
        return JSONResponse({"object": "list", "data": jobs})

    @app.get("/v1/deferred/{job_id}")
    async def job(self, job_id: str, request: Request) -> JSONResponse:
        return await self._one(request, job_id, "get")

    @app.delete("/v1/deferred/{job_id}")
    async def cancel(self, job_id: str, request: Request) -> JSONResponse:
        return await self._one(request, job_id, "cancel")

    async def _one(self, request: Request, job_id: str, method: str) -> JSONResponse:
        tenant = self._tenant(request)
        if isinstance(tenant, JSONResponse):
            return tenant
        job = await getattr(await self._queue(), method).remote(tenant.name, job_id)
        if job is None:  # another tenant's job is as absent as one that never existed
            return openai_error(404, f"no deferred job {job_id!r}", "NotFoundError", "id")
        if method == "cancel" and job["status"] != "cancelled":
            return openai_error(409, f"job {job_id!r} is {job['status']}: only a queued job can be "
                                "cancelled", "ConflictError", "id")
        return JSONResponse(job)


    # what a federation reads of its members (operator key: fabric.federation)
    def _operator(self, request: Request):
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return operator_refusal(self.ui.get("operator_key_sha256"), self.ui.get("loopback", True),
                                given or request.query_params.get("key", ""),
                                "a federation's calls need this member's operator key "
                                "(Authorization: Bearer <key>)")

    @app.get("/v1/federation/snapshot")
    async def member_snapshot(self, request: Request) -> Response:
        """This fabric's sites' signals as its scheduler last read them (the ``Snapshot`` a
        federation's policy runs on), its routing table, its models and regions."""
        refused = self._operator(request)
        if refused:
            return refused
        from fabric.layers.naming import SCHEDULER

        try:
            if self._scheduler is None:
                self._scheduler = await self._actor(SCHEDULER)
            status = await self._scheduler.status.remote()
        except Exception as exc:
            self._scheduler = None
            return openai_error(503, f"the scheduler is not reachable now: {exc}",
                                "ServiceUnavailableError")
        if not status.get("snapshot"):
            return openai_error(503, "the scheduler has no snapshot yet", "ServiceUnavailableError")
        return JSONResponse({**self.member, "at": time.time(), "snapshot": status["snapshot"],
                             "table": status["table"]})

    @app.get("/v1/federation/usage")
    async def member_usage(self, request: Request) -> Response:
        """Every tenant's totals from this fabric's own ledger (``group_by``: one of
        tenant, agent_id, model, tier, region, site, date; ``since`` / ``until``)."""
        refused = self._operator(request)
        if refused:
            return refused
        query = dict(request.query_params)
        group_by = query.pop("group_by", "tenant")
        try:
            since, until, _ = parse_query(query)
            if group_by not in GROUPS:
                raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
            root = await self._ledger_root()
        except ValueError as exc:
            return openai_error(400, str(exc), "BadRequestError", "query")
        except Exception as exc:
            return openai_error(503, f"the token ledger is not reachable now: {exc}",
                                "ServiceUnavailableError")
        rows = await asyncio.to_thread(lambda: totals(read_usage(root, since, until), group_by))
        return JSONResponse(json.loads(json.dumps({"member": self.member.get("name"),
                                                   "group_by": group_by, "rows": rows},
                                                  default=str)))

    # the operator's live page (fabric.layers.ui)
    @app.get("/ui")
    async def ui_page(self, request: Request) -> Response:
        return self.live.refusal(dict(request.query_params)) or HTMLResponse(page())

    @app.get("/ui/state")
    async def ui_state(self, request: Request) -> Response:
        refused = self.live.refusal(dict(request.query_params))
        if refused:
            return refused
        try:
            state = await self.live.first()
        except Exception as exc:
            return openai_error(503, f"the fabric's state is not readable now: {exc}")
        return JSONResponse(json.loads(json.dumps(state, default=str)))

    @app.get("/ui/events")
    async def ui_events(self, request: Request) -> Response:
        refused = self.live.refusal(dict(request.query_params))
        if refused:
            return refused
        if self.live.streams >= MAX_STREAMS:
            return openai_error(429, f"{MAX_STREAMS} live pages are open already")
        return StreamingResponse(self.live.events(request), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    @app.api_route("/ui/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def ui_unknown(self, rest: str, request: Request) -> Response:
        return openai_error(404, f"no such page: /fabric/ui/{rest}", None, None, "not_found")


def api_url(spec) -> str:
    """The tenants' API's base URL (``.../fabric/v1``)."""
    return f"http://{spec.endpoint.host}:{spec.endpoint.port}{ROUTE_PREFIX}/v1"


def build_tenant_api(args: dict):
    """Serve config builder (``import_path: fabric.layers.tenant_api:build_tenant_api``)."""
    return TenantAPI.bind(args.get("tenants") or [], args.get("ui"), args.get("federation"))


def member_args(spec, urls: dict[str, str]) -> dict:
    """What a federation reads of this fabric besides its snapshot: name, regions, models."""
    from fabric.layers.gateway import catalog

    return {"name": spec.name,
            "regions": [{"name": r.name, "edge": r.edge, "sites": [s.name for s in r.sites]}
                        for r in spec.regions],
            "models": [{k: m[k] for k in ("id", "tier", "regions", "edge")}
                       for m in catalog(spec, urls)]}
