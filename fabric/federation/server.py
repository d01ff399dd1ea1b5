"""``fabric federate``: the federation's control loop and its OpenAI-compatible endpoint.

Every ``tick_s`` the federation reads each member's snapshot (its sites' signals, models and
regions, ``/fabric/v1/federation/snapshot`` with the member's operator key), runs the same
policy as a member's scheduler over the sites of every member in the table, and keeps the
routing table. A request is routed by ``fabric.federation.route``: hard constraints first, then
the table's weights, and streamed on to the chosen member's endpoint (the same path: ``/v1/...``
or ``/<region>/v1/...``; tenants' keys are checked by the member, as there).

Why a Python hop and not HAProxy: the member is chosen per request from the JSON body's hints
and the model, a stream cut by a dying member must end with an OpenAI-style error event, and
a request that failed before its first byte is retried on another member; HAProxy's runtime
API could carry the weights but not those three. The hop is measured: ``bench/federation.py``.

Failures: a member whose snapshot fails, or that refuses a connection, is out of the table at
once (within a tick); it comes back after ``health.readmit_after`` good snapshots in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fabric.federation.members import IN, Member, MemberView
from fabric.federation.route import MemberChooser, Refused, ask_of
from fabric.federation.spec import FederationSpec
from fabric.layers.body import parse_object, read_limited, too_large
from fabric.layers.errors import openai_error
from fabric.scheduling.policies import make_policy
from fabric.scheduling.signals import Snapshot
from fabric.scheduling.table import RoutingTable

logger = logging.getLogger("fabric.federation")

FORWARD_HEADERS = ("authorization", "content-type", "x-session-id", "x-request-id",
                   "x-fabric-agent", "x-fabric-tier", "x-fabric-privacy", "x-fabric-region",
                   "x-fabric-max-latency-ms", "x-fabric-deadline")
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive"}
SNAPSHOT_PATH = "/fabric/v1/federation/snapshot"


def stream_error(message: str, code: str) -> bytes:
    """The end of a stream that its member cut: an OpenAI-style error event, then [DONE]."""
    error = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()


def describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Federation:
    """The global layer: members, the policy's routing table over all their sites, and the
    per-request choice of a member."""

    def __init__(self, spec: FederationSpec, client: httpx.AsyncClient | None = None):
        self.spec = spec
        self.members = [Member(m) for m in spec.members]
        params = {} if "park" in spec.scheduler.params else {"park": False}  # members park
        self.policy = make_policy(spec.scheduler.policy, **spec.scheduler.policy_kwargs(**params))
        self.table = RoutingTable()
        self.chooser = MemberChooser(spec)
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(300.0, connect=2.0), limits=httpx.Limits(max_connections=1000))
        self.ticks = 0
        self.actions: list[dict] = []
        self._loop: asyncio.Task | None = None

    # ---- control loop ---------------------------------------------------------------------

    async def _snapshot(self, member: Member) -> MemberView:
        key = member.spec.key()
        r = await self.client.get(member.spec.url + SNAPSHOT_PATH, timeout=self.spec.health.timeout_s,
                                  headers={"authorization": f"Bearer {key}"} if key else {})
        if r.status_code != 200:
            raise RuntimeError(f"snapshot answered {r.status_code}: {r.text[:200]}")
        return MemberView.parse(r.json())

    async def tick(self) -> RoutingTable:
        """Read every member's snapshot, move members in or out, recompute the table."""
        views = await asyncio.gather(*(self._snapshot(m) for m in self.members),
                                     return_exceptions=True)
        now = time.time()
        self.ticks += 1
        for member, view in zip(self.members, views):
            if isinstance(view, BaseException):
                if member.failed(describe(view), now):
                    self._log("member_out", member, member.reason)
            elif member.answered(view, self.spec.health.readmit_after, now):
                self._log("member_in", member)
        sites, seen = [], set()
        for member in self.members:
            if not member.usable:
                continue
            for site in member.view.sites:
                if site.name in seen:  # two members may not both claim one site
                    logger.error("site %s is reported by two members; %s's is ignored",
                                 site.name, member.name)
                    continue
                seen.add(site.name)
                sites.append(site)
        version = max(int(now * 1000), self.table.version + 1)
        self.table = self.policy.table(Snapshot(sites=sites, tick=self.ticks), version)
        return self.table

    def lost(self, member: Member, reason: str) -> None:
        """The data path could not reach a member: out of the table now, not at the next tick."""
        if member.failed(reason):
            self._log("member_out", member, reason)

    def _log(self, action: str, member: Member, reason: str = "") -> None:
        self.actions.append({"at": time.time(), "tick": self.ticks, "action": action,
                             "member": member.name, "reason": reason})
        self.actions = self.actions[-200:]
        logger.warning("%s %s %s", action, member.name, reason)

    async def run_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception as exc:  # a bad tick keeps the last table (fail-static)
                logger.exception("federation tick failed: %s", exc)
            await asyncio.sleep(max(0.0, self.spec.tick_s - (time.monotonic() - started)))

    def start(self) -> None:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self.run_forever())

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
        await self.client.aclose()

    def status(self) -> dict:
        return {"name": self.spec.name, "ticks": self.ticks, "policy": self.policy.name,
                "members": [m.status() for m in self.members],
                "table": self.table.model_dump(), "actions": self.actions[-20:]}

    # ---- data path --------------------------------------------------------------------------

    async def forward(self, request: Request, region: str | None = None) -> Response:
        limit = int(self.spec.max_body_mb * 2**20)
        raw = await read_limited(request.stream(), limit, request.headers.get("content-length", ""))
        if raw is None:
            return openai_error(413, too_large(limit), None, "body", "request_too_large")
        body, invalid = parse_object(raw)
        if invalid:
            return openai_error(400, invalid, None, "body", "invalid_request_body")
        try:
            order = self.chooser.candidates(self.members, self.table.weights,
                                            ask_of(body, request.headers, region))
        except Refused as r:
            return openai_error(r.status, r.message, None, r.param, r.code)
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARD_HEADERS}
        streaming = body.get("stream") is True
        failures = []
        for member in order[: 1 + self.spec.retries]:
            answer = await self._try(member, request.url.path, raw, headers, streaming)
            if isinstance(answer, Response):
                return answer
            failures.append(f"{member.name}: {answer}")
        return openai_error(503, "no member could take the request (" + "; ".join(failures) + ")",
                            None, None, "no_member_available")

    async def _try(self, member: Member, path: str, raw: bytes, headers: dict,
                   streaming: bool) -> Response | str:
        """The member's answer, or why it gave none (then another member is tried: nothing
        has reached the client yet)."""
        upstream = None
        try:
            upstream = await self.client.send(
                self.client.build_request("POST", member.spec.url + path, content=raw,
                                          headers=headers), stream=True)
            if upstream.status_code in (502, 503, 504) and "json" not in upstream.headers.get(
                    "content-type", ""):  # the member's proxy, not the fabric, answered
                text = (await upstream.aread())[:200].decode(errors="replace")
                await upstream.aclose()
                return f"its proxy answered {upstream.status_code} {text.strip()!r}"
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            out["x-fabric-member"] = member.name
            if not streaming:
                content = await upstream.aread()
                await upstream.aclose()
                return Response(content, status_code=upstream.status_code, headers=out)
            chunks = upstream.aiter_raw()
            first = await anext(chunks, b"")
        except httpx.TransportError as exc:
            if upstream is not None:
                await upstream.aclose()
            self.lost(member, describe(exc))
            return describe(exc)
        return StreamingResponse(self._relay(member, upstream, first, chunks),
                                 status_code=upstream.status_code, headers=out)

    async def _relay(self, member: Member, upstream: httpx.Response, first: bytes, chunks):
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        except httpx.TransportError as exc:
            self.lost(member, describe(exc))
            yield stream_error(f"member {member.name!r} stopped answering mid-stream "
                               f"({describe(exc)})", "member_lost")
        finally:
            await upstream.aclose()

    async def models(self, request: Request, region: str | None = None) -> Response:
        """Every usable member's models (as each member's own /v1/models lists them)."""
        path = f"/{region}/v1/models" if region else "/v1/models"
        members = [m for m in self.members if m.usable and (region is None or region in m.spec.regions)]
        auth = {"authorization": request.headers.get("authorization", "")}
        answers = await asyncio.gather(*(self.client.get(m.spec.url + path, headers=auth, timeout=10)
                                         for m in members), return_exceptions=True)
        data, seen = [], set()
        for answer in answers:
            if isinstance(answer, httpx.Response) and answer.status_code in (401, 403):
                return Response(answer.content, status_code=answer.status_code,
                                media_type="application/json")
            if isinstance(answer, httpx.Response) and answer.status_code == 200:
                for model in answer.json().get("data", []):
                    if model["id"] not in seen:
                        seen.add(model["id"])
                        data.append(model)
        if not members or not data:
            return openai_error(503, "no member of the federation answers now", None, None,
                                "no_member_available")
        return JSONResponse({"object": "list", "data": data})

    async def usage(self, request: Request) -> Response:
        """The tenant's usage over every member's ledger (each member checks the key and
        answers for its own records; the totals are summed, never copied)."""
        from fabric.metering.report import merge_usage

        headers = {"authorization": request.headers.get("authorization", "")}
        answers = await asyncio.gather(*(self.client.get(
            m.spec.url + "/fabric/v1/usage", params=dict(request.query_params), headers=headers,
            timeout=30) for m in self.members), return_exceptions=True)
        parts, members = [], {}
        for member, answer in zip(self.members, answers):
            if isinstance(answer, BaseException):
                members[member.name] = f"unreachable: {describe(answer)}"
            elif answer.status_code != 200:
                if answer.status_code in (400, 401, 403):  # the caller's fault: say it as is
                    return Response(answer.content, status_code=answer.status_code,
                                    media_type="application/json")
                members[member.name] = f"answered {answer.status_code}"
            else:
                members[member.name] = "ok"
                parts.append(answer.json())
        if not parts:
            return openai_error(503, "no member's ledger answers now: " + json.dumps(members),
                                None, None, "no_member_available")
        merged = merge_usage(parts)
        merged["members"] = members
        merged["complete"] = all(v == "ok" for v in members.values())
        return JSONResponse(merged)


def build_app(federation: Federation, operator_key_sha256: str | None = None,
              ready=None) -> Starlette:
    """The federation's endpoint: the OpenAI API (``/v1``, ``/<region>/v1``), the tenants'
    usage (``/fabric/v1/usage``) and its own status (``/fabric/v1/federation/status``).
    ``ready`` is called once it serves (after its first look at the members)."""
    from fabric.layers.ui import LOOPBACK, operator_refusal

    loopback = federation.spec.listen.host in LOOPBACK

    async def chat(request: Request) -> Response:
        return await federation.forward(request, request.path_params.get("region"))

    async def models(request: Request) -> Response:
        return await federation.models(request, request.path_params.get("region"))

    async def status(request: Request) -> Response:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        refused = operator_refusal(operator_key_sha256, loopback,
                                   given or request.query_params.get("key", ""),
                                   "the federation's status needs its operator key")
        return refused or JSONResponse(federation.status())

    async def health(request: Request) -> Response:
        usable = sum(m.state == IN for m in federation.members)
        return JSONResponse({"ok": usable > 0, "members_in": usable, "ticks": federation.ticks},
                            status_code=200 if usable else 503)

    async def unknown(request: Request) -> Response:
        return openai_error(404, f"no such endpoint: {request.method} {request.url.path}", None,
                            None, "not_found")

    generation = ["POST"]
    routes = [
        Route("/v1/chat/completions", chat, methods=generation),
        Route("/v1/completions", chat, methods=generation),
        Route("/v1/models", models, methods=["GET"]),
        Route("/{region}/v1/chat/completions", chat, methods=generation),
        Route("/{region}/v1/completions", chat, methods=generation),
        Route("/{region}/v1/models", models, methods=["GET"]),
        Route("/fabric/v1/usage", federation.usage, methods=["GET"]),
        Route("/fabric/v1/federation/status", status, methods=["GET"]),
        Route("/fabric/v1/federation/health", health, methods=["GET"]),
        Route("/{rest:path}", unknown, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:  # a first look at the members before serving (those that answer are in)
            await asyncio.wait_for(federation.tick(), federation.spec.health.timeout_s + 1)
        except Exception as exc:
            logger.warning("first look at the members failed: %s", exc)
        federation.start()
        if ready is not None:
            ready()
        yield
        await federation.close()

    return Starlette(routes=routes, lifespan=lifespan)


def serve_federation(spec: FederationSpec, operator_key_sha256: str | None = None,
                     ready=None) -> None:
    """Run the federation in the foreground until interrupted (Ctrl-C, SIGTERM)."""
    import uvicorn

    app = build_app(Federation(spec), operator_key_sha256, ready)
    config = uvicorn.Config(app, host=spec.listen.host, port=spec.listen.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()
