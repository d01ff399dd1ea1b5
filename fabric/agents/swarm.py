"""AgentSwarm (layer 7): one process running many agents as asyncio tasks.

Agents far outnumber processes: an actor per agent would cost a worker process each, so a
swarm holds thousands of agents on one event loop and one HTTP connection pool. ``Swarm`` is
plain asyncio (usable without Ray, as bench/agents.py does); ``AgentSwarm`` is the Ray actor
that wraps it, spread over the cluster's nodes by ``fabric.agents.run``.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections import Counter

import aiohttp

from fabric.agents.agent import Agent, Endpoint, Step
from fabric.agents.workload import Workload


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Swarm:
    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.counts: Counter = Counter()
        self.tasks: list[asyncio.Task] = []
        self.http: aiohttp.ClientSession | None = None
        self.started = 0.0
        self.cpu0 = 0.0
        self.done = asyncio.Event()
        self.watcher: asyncio.Task | None = None

    def _sink(self, step: Step) -> None:
        self.steps.append(step)
        c = self.counts
        if step.ok:
            c["ok"] += 1
            c["tokens_in"] += step.prompt_tokens
            c["tokens_out"] += step.completion_tokens
        elif step.error != "cancelled":
            c["refused" if step.status >= 400 else "errors"] += 1

    def _task_done(self, _workload: str) -> None:
        self.counts["tasks"] += 1

    async def start(self, workload: Workload, agents: list[int], offsets: list[float],
                    endpoint: Endpoint, duration_s: float | None, seed: int, run_id: str,
                    connections: int = 0, request_timeout_s: float = 600.0) -> int:
        """Start ``agents`` (global indices) at their ``offsets`` (seconds); returns at once."""
        if self.http is None:
            self.http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=connections, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=request_timeout_s))
        self.started = time.monotonic()
        self.cpu0 = time.process_time()
        deadline = self.started + duration_s if duration_s else None
        for i, offset in zip(agents, offsets):
            agent = Agent(workload, i, endpoint, self.http, self._sink, self.started, seed,
                          run_id, on_task=self._task_done)
            self.tasks.append(asyncio.create_task(self._life(agent, offset, deadline)))
        self.watcher = asyncio.create_task(self._watch())  # held: the loop's reference is weak
        return len(agents)

    async def _life(self, agent: Agent, offset: float, deadline: float | None) -> None:
        await asyncio.sleep(offset)
        self.counts["started"] += 1
        try:
            await agent.run(deadline)
        finally:
            self.counts["finished"] += 1

    async def _watch(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.done.set()

    async def wait(self, timeout_s: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self.done.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    def progress(self) -> dict:
        c = self.counts
        return {"agents": len(self.tasks), "active": c["started"] - c["finished"],
                "finished": c["finished"], "tasks": c["tasks"], "ok": c["ok"],
                "refused": c["refused"], "errors": c["errors"], "tokens_in": c["tokens_in"],
                "tokens_out": c["tokens_out"], "done": self.done.is_set(), **self.usage()}

    def usage(self) -> dict:
        """This process's own cost: CPU cores used since start, resident memory."""
        wall = max(1e-9, time.monotonic() - self.started) if self.started else 0.0
        cpu = time.process_time() - self.cpu0
        return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "cpu_cores": round(cpu / wall, 3) if wall else 0.0, "rss_mib": round(_rss_bytes() / 2**20, 1)}

    async def stop(self) -> int:
        """Cancel every agent (their in-flight requests are closed, so the engines abort
        them); returns how many were still running."""
        running = [t for t in self.tasks if not t.done()]
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self.done.set()
        await self.close()
        return len(running)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None

    def results(self) -> tuple[list[Step], dict]:
        return self.steps, {**Swarm.progress(self), "pid": os.getpid()}


def _actor_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1000)
    class AgentSwarm(Swarm):
        """A Swarm as a Ray actor (async: every method runs on the actor's event loop)."""

        async def start(self, *a, **kw) -> int:
            return await Swarm.start(self, *a, **kw)

        async def wait(self, timeout_s: float | None = None) -> bool:
            return await Swarm.wait(self, timeout_s)

        async def progress(self) -> dict:
            return Swarm.progress(self)

        async def stop(self) -> int:
            return await Swarm.stop(self)

        async def results(self) -> tuple[list[Step], dict]:
            await self.close()
            steps, info = Swarm.results(self)
            return steps, {**info, "node_id": ray.get_runtime_context().get_node_id()}

    return AgentSwarm
