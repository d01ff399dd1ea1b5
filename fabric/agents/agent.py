"""One agent's life as an asyncio task: tasks of chat-completion steps, with think time,
prompt growth, compaction and sub-agents, against any OpenAI-compatible endpoint.

Written on aiohttp with a hand-read SSE stream rather than the openai client: a swarm runs
thousands of these per process, and the per-request cost of the client library would be
the swarm's own bottleneck (see bench/agents.py). Every step becomes one ``Step`` record —
served, refused (with the HTTP status and message) or cancelled — never an exception.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

import aiohttp

from fabric.agents.workload import StepHints, Workload, words


@dataclass(slots=True)
class Step:
    workload: str
    agent: int
    task: int
    step: int
    depth: int              # 0: the agent itself; 1+: a sub-agent
    tier: str               # the tier hint it asked for
    ok: bool
    status: int = 0         # HTTP status; 0 when no response came (connection error, cancel)
    error: str = ""
    region: str = ""
    site: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = -1.0
    latency_s: float = -1.0
    started_s: float = 0.0  # since the swarm started
    request_id: str = ""


@dataclass
class Endpoint:
    base_url: str
    api_key: str
    model: str


class Agent:
    """Runs ``tasks`` of ``workload`` against ``endpoint``; appends a Step per request to
    ``sink``. ``on_task`` is told when a task completes."""

    def __init__(self, workload: Workload, index: int, endpoint: Endpoint,
                 session: aiohttp.ClientSession, sink, t0: float, seed: int, run_id: str,
                 on_task=None):
        self.w, self.i, self.ep, self.http = workload, index, endpoint, session
        self.sink, self.t0, self.run_id, self.on_task = sink, t0, run_id, on_task
        self.rng = random.Random(f"{seed}/{workload.name}/{index}")
        self.agent_id = f"{run_id}/{workload.name}/{index}"

    async def run(self, deadline: float | None) -> None:
        task = 0
        while self.w.tasks_per_agent is None or task < self.w.tasks_per_agent:
            if deadline is not None and time.monotonic() >= deadline:
                return
            messages = [{"role": "system", "content": self._system()},
                        {"role": "user", "content": f"Task {self.i}.{task}: "
                         + words(self.w.task_words.sample_int(self.rng, 1), self.rng)}]
            steps = self.w.steps.sample_int(self.rng, 1)
            await self._conversation(messages, steps, task, 0, self.w.hints, deadline)
            if self.on_task:
                self.on_task(self.w.name)
            task += 1

    def _system(self) -> str:
        shared = random.Random(f"system/{self.w.name}")  # the same filler for every agent
        return (self.w.system_prompt + " " + words(self.w.system_prompt_words, shared)).strip()

    async def _conversation(self, messages: list[dict], steps: int, task: int, depth: int,
                            hints: StepHints, deadline: float | None) -> None:
        last_tokens = 0
        for k in range(steps):
            if k:
                think = self.w.think_s.sample(self.rng)
                if deadline is not None:
                    think = min(think, max(0.0, deadline - time.monotonic()))
                await asyncio.sleep(think)
            if deadline is not None and time.monotonic() >= deadline:
                return
            if k:
                messages.append({"role": "user", "content": f"Step {k + 1}: "
                                 + words(self.w.followup_words.sample_int(self.rng), self.rng)})
                messages = self._compact(messages, last_tokens)
            max_tokens = self.w.max_tokens.sample_int(self.rng, 1)
            step, answer = await self.call(messages, max_tokens, hints, task, k, depth)
            self.sink(step)
            if step.ok:
                last_tokens = step.prompt_tokens + step.completion_tokens
                if self.w.carry_answers:
                    messages.append({"role": "assistant", "content": answer or "(no answer)"})
                else:
                    messages = messages[:2]
            elif messages[-1]["role"] == "user" and k:
                messages.pop()  # the step failed: its instruction is dropped, not repeated
            b = self.w.branching
            if step.ok and depth < b.max_depth and self.rng.random() < b.probability:
                fan = b.fanout.sample_int(self.rng, 1)
                sub_hints = b.hints or hints
                await asyncio.gather(*(self._conversation(
                    list(messages) + [{"role": "user", "content": f"Sub-task {j}: "
                                       + words(self.w.followup_words.sample_int(self.rng), self.rng)}],
                    b.steps.sample_int(self.rng, 1), task, depth + 1, sub_hints, deadline)
                    for j in range(fan)))

    def _compact(self, messages: list[dict], last_tokens: int) -> list[dict]:
        """Drop the oldest exchanges (keeping system prompt and task) once the last prompt
        plus what was added since would pass the workload's context limit."""
        limit = self.w.context_limit_tokens
        if limit is None:
            return messages
        estimate = last_tokens + 2 * len(messages[-1]["content"].split()) + 8
        while estimate > limit and len(messages) > 4:
            dropped = messages[2:4]
            del messages[2:4]
            estimate -= sum(2 * len(m["content"].split()) + 4 for m in dropped)
        return messages

    async def call(self, messages: list[dict], max_tokens: int, hints: StepHints, task: int,
                   k: int, depth: int) -> tuple[Step, str]:
        start = time.monotonic()
        step = Step(self.w.name, self.i, task, k, depth, hints.tier, ok=False,
                    started_s=round(start - self.t0, 4),
                    request_id=f"{self.agent_id}/{task}/{depth}/{k}/{self.rng.getrandbits(32):08x}")
        body = {"model": self.ep.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": self.w.temperature, "stream": True,
                "stream_options": {"include_usage": True},
                "metadata": {**hints.metadata(time.time()), "fabric_agent": self.agent_id}}
        headers = {"authorization": f"Bearer {self.ep.api_key}", "x-request-id": step.request_id,
                   "x-session-id": f"{self.agent_id}/{task}/{depth}", "x-fabric-agent": self.agent_id}
        if hints.deadline_s is not None:
            return await self._deferred(step, body, hints.deadline_s, start)
        text: list[str] = []
        try:
            async with self.http.post(f"{self.ep.base_url}/chat/completions", json=body,
                                      headers=headers) as resp:
                step.status = resp.status
                step.region = resp.headers.get("x-fabric-region", "")
                step.site = resp.headers.get("x-fabric-site", "")
                if resp.status != 200:
                    step.error = _error_message(await resp.read())
                    return step, ""
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        step.error = str(event["error"].get("message", event["error"]))[:200]
                        return step, "".join(text)
                    for choice in event.get("choices") or ():
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            if step.ttft_s < 0:
                                step.ttft_s = time.monotonic() - start
                            text.append(piece)
                    usage = event.get("usage")
                    if usage:
                        step.prompt_tokens = usage.get("prompt_tokens", 0)
                        step.completion_tokens = usage.get("completion_tokens", 0)
            step.latency_s = time.monotonic() - start
            step.ok = True
        except asyncio.CancelledError:
            step.error = "cancelled"
            self.sink(step)
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            step.error = f"{type(exc).__name__}: {exc}"[:200]
        return step, "".join(text)


    async def _deferred(self, step: Step, body: dict, deadline_s: float,
                        start: float) -> tuple[Step, str]:
        """A step with a deadline goes to the tenants' deferred API and is polled for (backing
        off to 10 s): the fabric runs it in a cheaper or greener window before the deadline.
        Its latency is submission to answer; it has no separate first token."""
        api = f"{_root(self.ep.base_url)}/fabric/v1/deferred"
        auth = {"authorization": f"Bearer {self.ep.api_key}"}
        request = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        try:
            async with self.http.post(api, json={"body": request, "deadline_s": deadline_s},
                                      headers=auth) as resp:
                if resp.status != 202:
                    step.status, step.error = resp.status, _error_message(await resp.read())
                    return step, ""
                job = await resp.json()
            poll = 0.5
            while job["status"] in ("queued", "running"):
                await asyncio.sleep(poll)
                poll = min(10.0, poll * 1.5)
                async with self.http.get(f"{api}/{job['id']}", headers=auth) as resp:
                    if resp.status != 200:
                        step.status, step.error = resp.status, _error_message(await resp.read())
                        return step, ""
                    job = await resp.json()
        except asyncio.CancelledError:
            step.error = "cancelled"
            self.sink(step)
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            step.error = f"{type(exc).__name__}: {exc}"[:200]
            return step, ""
        step.status = job.get("status_code") or 0
        served = job.get("served_by") or {}
        step.region, step.site = served.get("region", ""), served.get("site", "")
        if job["status"] != "completed":
            step.error = f"deferred job {job['status']}: {job.get('error') or ''}"[:200]
            return step, ""
        response = job.get("response") or {}
        usage = response.get("usage") or {}
        step.prompt_tokens = usage.get("prompt_tokens", 0)
        step.completion_tokens = usage.get("completion_tokens", 0)
        step.latency_s = step.ttft_s = time.monotonic() - start
        step.ok = True
        choices = response.get("choices") or [{}]
        return step, ((choices[0].get("message") or {}).get("content") or "")


def _root(base_url: str) -> str:
    """scheme://host:port of an endpoint URL (the tenants' API lives at the root)."""
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


def _error_message(raw: bytes) -> str:
    try:
        err = json.loads(raw).get("error", {})
        return str(err.get("message", err) if isinstance(err, dict) else err)[:200]
    except (ValueError, AttributeError):
        return raw[:200].decode(errors="replace")
