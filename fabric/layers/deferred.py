"""Deferred work: requests that may wait for a cheaper or greener window, up to a deadline.

A client that does not need its answer now submits the request with a deadline
(``POST /fabric/v1/deferred``) and collects the answer later (``GET .../deferred/<id>``) — no
connection is held while it waits. The ``DeferredQueue`` actor (``fabric:deferred``) keeps
the jobs in a write-ahead log (a submitted job survives the actor's restart; one that was
running is run again), asks each site's grid (the Sites actor) for the forecast every tick,
and releases each job when ``fabric.scheduling.deferral`` says now is its window — at the
latest when its deadline, less a margin for the run, comes. A released job goes through the
fabric's own endpoint on behalf of its tenant, so it is routed, limited, metered and billed
like any other request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from pathlib import Path

import ray

from fabric.layers.batches import file_object
from fabric.metering.records import RETRIED_STATUSES
from fabric.scheduling.deferral import (DeferralPolicy, GridPoint, planned_start, sample_times,
                                        scores, should_release)

logger = logging.getLogger("fabric.deferred")
DEFERRED_NAME = "fabric:deferred"
PATHS = ("/v1/chat/completions", "/v1/completions")
MAX_DEADLINE_S = 7 * 86400
MIN_DEADLINE_S = 10.0
VIEW = ("id", "object", "status", "endpoint", "created_at", "deadline", "planned_start",
        "started_at", "finished_at", "attempts", "status_code", "error", "served_by")


class JobStore:
    """Jobs as an append-only JSON-lines log (fsynced before a submit is acknowledged); the
    state is the log replayed. No Ray here."""

    def __init__(self, root: str | Path):
        self.path = Path(root) / "jobs.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_bytes().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a torn last line was never acknowledged
                self.jobs.setdefault(event["id"], {}).update(event)
        for job in self.jobs.values():
            if job["status"] == "running":  # cut off by a restart: run it again
                job["status"] = "queued"
        self._log = open(self.path, "ab")

    def write(self, job_id: str, **fields) -> dict:
        return self.write_many([(job_id, fields)])[0]

    def write_many(self, events: list[tuple[str, dict]]) -> list[dict]:
        """Several events, one fsync (a batch's lines are queued at once)."""
        out = []
        for job_id, fields in events:
            job = self.jobs.setdefault(job_id, {"id": job_id})
            job.update(fields)
            self._log.write(json.dumps({"id": job_id, **fields}, separators=(",", ":")).encode() + b"\n")
            out.append(job)
        self._log.flush()
        os.fsync(self._log.fileno())
        return out


def view(job: dict, with_response: bool = True) -> dict:
    out = {k: job.get(k) for k in VIEW}
    out["object"] = "fabric.deferred"
    if with_response:
        out["response"] = job.get("response")
    return out


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class DeferredQueue:
    def __init__(self, root: str, endpoint: str, internal_key: str, sites: list[str],
                 policy: dict | None = None, tick_s: float = 1.0, concurrency: int = 32,
                 mwh_per_mtok: dict[str, float] | None = None, max_body: int = 8 * 2**20):
        from fabric.layers.batches import Batches

        self.store = JobStore(root)
        self.batches = Batches(root, self.store, max_body, MIN_DEADLINE_S + 30.0, MAX_DEADLINE_S)
        self.endpoint = endpoint.rstrip("/")          # http://host:port
        self.internal_key = internal_key              # in memory only, never written
        self.sites = sites
        self.mwh_per_mtok = mwh_per_mtok or {}
        self.policy = DeferralPolicy(**(policy or {}))
        self.tick_s = tick_s
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._loop = None
        self._client = None
        self._sites_actor = None  # the Sites actor (every site's grid), looked up once

    def _ensure_loop(self) -> None:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._forever())

    async def submit(self, tenant: str, path: str, request: dict, deadline: float) -> dict:
        self._ensure_loop()
        now = time.time()
        job = self.store.write(f"defer-{uuid.uuid4().hex}", status="queued", tenant=tenant,
                               endpoint=path, request=request, created_at=round(now, 3),
                               deadline=round(deadline, 3), attempts=0)
        return view(job)

    async def get(self, tenant: str, job_id: str) -> dict | None:
        self._ensure_loop()
        job = self.store.jobs.get(job_id)
        return view(job) if job and job["tenant"] == tenant else None

    async def list(self, tenant: str) -> list[dict]:
        self._ensure_loop()
        return [view(j, with_response=False) for j in self.store.jobs.values()
                if j["tenant"] == tenant and not j.get("batch_id")]

    async def batch_api(self, method: str, tenant: str, *args) -> dict:
        """The Batch API's calls (``fabric.layers.batches.Batches``); a refusal comes back as
        ``{"refused": [status, message, param, code]}``."""
        from fabric.layers.batches import BatchError

        self._ensure_loop()
        try:
            if method == "create":
                payload, via = args
                return self.batches.create(tenant, payload, via, time.time(), await self._at_once())
            if method == "cancel":
                return self.batches.cancel(tenant, args[0], time.time())
            if method in ("upload", "get", "list"):
                return getattr(self.batches, method)(tenant, *args)
            files = self.batches.files
            if method == "file_list":
                return {"object": "list", "data": [file_object(f) for f in files.list(tenant, *args)],
                        "has_more": False}
            f = files.get(tenant, args[0])
            if f is None:
                raise BatchError(404, f"no file {args[0]!r}", "file_id", "not_found")
            if method == "file_get":
                return file_object(f)
            if method == "file_content":
                return {"content": files.content(tenant, args[0]), "filename": f["filename"]}
            if method == "file_delete":
                files.delete(tenant, args[0])
                return {"id": args[0], "object": "file", "deleted": True}
            raise BatchError(404, f"unknown call {method!r}")
        except BatchError as exc:
            return {"refused": [exc.status, exc.message, exc.param, exc.code]}

    async def _grids(self):
        """The Sites actor (every site's grid), looked up once, off the event loop."""
        from fabric.layers import naming

        if self._sites_actor is None:
            self._sites_actor = await asyncio.to_thread(ray.get_actor, naming.SITES,
                                                        namespace=naming.NAMESPACE)
        return self._sites_actor

    async def _at_once(self) -> dict:
        """Each site's grid now: what running a batch at once would pay (``fabric usage
        --batch`` prices its tokens both ways)."""
        out = {}
        for site in self.sites:
            try:
                s = (await (await self._grids()).forecast.remote(site, [time.time()]))[0]
            except Exception:  # a site without a grid answer prices nothing
                continue
            out[site] = {"price_usd_per_mwh": s["price_usd_per_mwh"],
                         "carbon_g_per_kwh": s["carbon_g_per_kwh"]}
        return out

    async def cancel(self, tenant: str, job_id: str) -> dict | None:
        job = self.store.jobs.get(job_id)
        if not job or job["tenant"] != tenant:
            return None
        if job["status"] == "queued":
            job = self.store.write(job_id, status="cancelled", finished_at=round(time.time(), 3))
        return view(job)

    async def ping(self) -> bool:
        self._ensure_loop()
        return True

    async def _forever(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception as exc:  # a bad tick must not stop the queue
                logger.warning("deferred queue tick failed: %s", exc)
            try:
                self.batches.finalise(time.time(), self._running)
            except Exception as exc:
                logger.warning("closing batches failed: %s", exc)
            await asyncio.sleep(self.tick_s)

    async def _forecast(self, times: list[float]) -> list[list[GridPoint]]:
        rows: list[list[GridPoint]] = [[] for _ in times]
        for site in self.sites:
            try:
                states = await (await self._grids()).forecast.remote(site, times)
            except Exception:  # a site without a grid answer is left out of the forecast
                continue
            for row, s in zip(rows, states):
                row.append(GridPoint(s["price_usd_per_mwh"], s["carbon_g_per_kwh"], s["curtailed"],
                                     self.mwh_per_mtok.get(site, 1.0)))
        return rows

    async def _tick(self) -> None:
        now = time.time()
        queued = [j for j in self.store.jobs.values() if j["status"] == "queued"
                  and j["id"] not in self._running and j.get("retry_at", 0) <= now]
        if not queued:
            return
        latest = {j["id"]: j["deadline"] - self.policy.margin_s for j in queued}
        times = sample_times(now, max(latest.values()), self.policy.samples)
        forecast = await self._forecast(times)
        for job in queued:
            idx = [i for i, t in enumerate(times) if t <= max(latest[job["id"]], now)]
            rows = [forecast[i] for i in idx]
            job_scores = scores(rows, self.policy) if all(rows) else []
            if job_scores:  # re-planned every tick; written when the plan moves
                plan = round(planned_start([times[i] for i in idx], job_scores, self.policy), 3)
                if job.get("planned_start") is None or abs(plan - job["planned_start"]) > 1.0:
                    self.store.write(job["id"], planned_start=plan)
            if should_release(now, latest[job["id"]], job_scores, self.policy):
                self._running.add(job["id"])
                task = asyncio.get_running_loop().create_task(self._run(job["id"]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, job_id: str) -> None:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10))
        try:
            async with self._slots:
                job = self.store.jobs[job_id]
                if job["status"] != "queued":
                    return
                job = self.store.write(job_id, status="running", started_at=round(time.time(), 3),
                                       attempts=job.get("attempts", 0) + 1)
                headers = {"authorization": f"Bearer {self.internal_key}",
                           "x-fabric-on-behalf-of": job["tenant"]}
                if job.get("batch_id"):  # one usage record per line, however often it runs
                    headers["x-fabric-request-id"] = job_id
                try:
                    r = await self._client.post(self.endpoint + job.get("via", "") + job["endpoint"],
                                                json=job["request"], headers=headers)
                    body = r.json()
                except (httpx.HTTPError, ValueError) as exc:
                    return self._retry_or_fail(job, 0, f"the fabric did not answer: {exc}")
                if r.status_code == 200:
                    served = {k: r.headers.get(f"x-fabric-{k}", "") for k in ("region", "site", "model")}
                    served["model"] = served["model"] or (body.get("model", "") if isinstance(body, dict) else "")
                    self.store.write(job_id, status="completed", status_code=200, response=body,
                                     served_by=served, finished_at=round(time.time(), 3))
                elif r.status_code in RETRIED_STATUSES:
                    message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
                    self._retry_or_fail(job, r.status_code, message or r.text[:500])
                else:
                    error = body.get("error") if isinstance(body, dict) else None
                    self.store.write(job_id, status="failed", status_code=r.status_code,
                                     error=(error or {}).get("message") or r.text[:500],
                                     response=body if job.get("batch_id") else None,
                                     finished_at=round(time.time(), 3))
        finally:
            self._running.discard(job_id)

    def _retry_or_fail(self, job: dict, status: int, message: str) -> None:
        """A transient refusal: back in the queue, retried after a backoff (1, 2, 4 … 30 s)
        while its deadline allows; else failed with the last reason."""
        now = time.time()
        if now < job["deadline"]:
            backoff = min(30.0, 2.0 ** (job.get("attempts", 1) - 1))
            self.store.write(job["id"], status="queued", status_code=status, error=message,
                             retry_at=round(min(now + backoff, job["deadline"]), 3))
        else:
            self.store.write(job["id"], status="failed", status_code=status, error=message,
                             finished_at=round(time.time(), 3))


def start_deferred(spec, root: str, internal_key: str, head_label: dict):
    from fabric.layers import naming

    actor = DeferredQueue.options(name=DEFERRED_NAME, namespace=naming.NAMESPACE,
                                  lifetime="detached", get_if_exists=True,
                                  label_selector=head_label).remote(
        root, f"http://{spec.endpoint.host}:{spec.endpoint.port}", internal_key,
        sorted({s.name for m in spec.models for _, s in spec.hosting_sites(m)}),
        deferral_policy(spec), mwh_per_mtok=site_mwh_per_mtok(spec),
        max_body=int(spec.endpoint.max_body_mb * 2**20))
    ray.get(actor.ping.remote())
    return actor


def deferral_policy(spec) -> dict:
    """The queue scores windows by the merit order's cost, at the spec's carbon price."""
    return {"carbon_usd_per_t": spec.scheduler.carbon_price_usd_per_t}


def site_mwh_per_mtok(spec) -> dict[str, float]:
    """Facility MWh per million output tokens at each site (its GPUs and PUE, as simulated)."""
    from fabric.sim.fleet import site_figures

    out = {}
    for _, site in spec.sites:
        f = site_figures(spec, site)
        out[site.name] = f["j_per_token"] * f["pue"] * 1e6 / 3.6e9
    return out
