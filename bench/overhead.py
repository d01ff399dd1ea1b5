"""bench/overhead: what the fabric's data path costs against the engine served bare.

The same engine (the offline tiny model; enforce_eager, bfloat16, max_num_seqs 64,
max_model_len 2048, VLLM_CPU_KVCACHE_SPACE=1 — the fabric's CPU settings) served several ways:

    a  vLLM's own OpenAI server (python -m vllm.entrypoints.openai.api_server)
    b  ray.serve.llm's OpenAI app, default mode (Serve proxy -> ingress -> LLMServer)
    c  ray.serve.llm with direct streaming + HAProxy (HAProxy -> engine's own HTTP server)
    d  the fabric (fabric.runtime.running_fabric on deployments/local.yaml) with routing and
       metering on, restricted to ONE hosting site (model.hosting = [edge-a], max_replicas 1)
       so that it runs one engine like the others; everything else of the fabric (4 raylets,
       power/site/GPU actors, scheduler, ledger, regional endpoints) runs as usual.
    f  (c) on d's cluster shape: the same head and site raylets, dashboard and Ray/Serve
       settings, the same one engine at edge-a, deployed by plain ray.serve.llm. d/f is what
       the fabric's own code costs; d/c adds what its multi-node local cluster costs.

(b), (c) and (f) run in subprocesses that never import fabric (``import fabric`` switches Ray
Serve's data path on at import). Each server is warmed up, then driven by a closed-loop
aiohttp client at concurrency 1, 16 and 64, streaming and not, with unique ~128-token chat
prompts and max_tokens 64 with ignore_eos (every request generates exactly 64 tokens).
Reported per level: req/s, output tok/s, TTFT p50/p99 (streaming, first non-empty content
delta), latency p50/p99; for the lowest and highest concurrency streaming levels also the CPU
each process group used (cores, and CPU ms per request): on a small box throughput is
CPU-bound, so this is where the time goes.

Same engine means same threads too: Ray starts the engines of b, c, d and f with
OMP_NUM_THREADS=1 (one-CPU placement bundle), so (a) gets OMP_NUM_THREADS=1 as well
(``--bare-omp-threads 0`` gives it vLLM's default, one thread per core). On a shared machine
every target first waits until no test run or other Ray cluster is running, and a level during
which other processes used more than ``--max-foreign-cores`` is repeated (marked if it stays so).
Ratios d/a and d/c, the TTFT p50 delta at concurrency 1, and the issue's targets (d >= 0.9x
a's throughput at concurrency 64; d adds <= 5 ms TTFT p50 at concurrency 1) are printed.

``--profile`` adds one extra (unmeasured) concurrency-64 streaming run per target during which
py-spy samples the busiest Python processes (raw collapsed stacks in
bench/results/overhead-<target>-<process>.txt) and prints their top frames.

Writes bench/results/overhead.json; server logs go to bench/results/overhead-<target>.log.
About 10 minutes with the defaults. On a GPU machine (the gpu extra installed), the same
script with ``--accelerator gpu --model <Hugging Face id or path>``: every target runs that
model on one GPU with vLLM's defaults, and d/a >= 0.9 is the goal there.

    .venv/bin/python bench/overhead.py [--targets a,b,c,d,e,f] [--requests-per-level 128]
                                       [--concurrency 1,16,64] [--profile] [--open-loop 2,6]

``--open-loop RATES`` adds, per target, open-loop streaming levels: the shipped Mooncake
conversation slice's arrival times rescaled to each offered rate (requests sent when they
arrive, not when a worker is free), with d/a and d/c ratios of throughput and TTFT p50.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _servers
from _servers import MODEL_ID, RESULTS, TARGETS, ServerError, add_machine_args

OUT = {"stream": sys.stdout}  # where the report goes (the terminal, also while the fabric runs)


def say(msg: str = "") -> None:
    OUT["stream"].write(msg + "\n")
    OUT["stream"].flush()


# ----------------------------------------------------------------------------- prompts

WORDS_TEXT = (
    "power budget energy price carbon region site replica request token agent session "
    "tenant ledger router scheduler engine cache batch stream latency throughput grid "
    "capacity facility node pool model tier edge cloud table weight signal tick drain "
    "the a of to and in is for on with as by at from it be this that are was")


def make_prompts(model_path: str, n: int, prompt_tokens: int, seed: int = 0):
    """n texts whose chat prompt is ``prompt_tokens`` tokens long (template included, minus a
    few for the unique prefix each request gets). Returns (texts, template overhead, a function
    giving a text's prompt length in tokens)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    def prompt_len(text: str) -> int:
        chat = tok.apply_chat_template([{"role": "user", "content": text}],
                                       add_generation_prompt=True, tokenize=False)
        return len(tok(chat, add_special_tokens=False)["input_ids"])

    overhead = prompt_len("")
    budget = max(8, prompt_tokens - overhead - 4)  # 4: the unique "#<n>" prefix
    rng = random.Random(seed)
    words_pool = WORDS_TEXT.split()
    texts = []
    for _ in range(n):
        words = " ".join(rng.choice(words_pool) for _ in range(budget * 2))
        ids = tok(words, add_special_tokens=False)["input_ids"][:budget]
        texts.append(tok.decode(ids))
    return texts, overhead, prompt_len


# ----------------------------------------------------------------------------- load

_CONTENT = re.compile(rb'"content":\s?"(?!")')  # a delta that carries text


class Load:
    """Closed-loop load: ``concurrency`` workers, each sending the next request as soon as its
    previous one finished, until ``n`` were sent (or ``max_s`` passed)."""

    def __init__(self, base_url: str, texts: list[str], max_tokens: int, api_key: str):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.texts, self.max_tokens = texts, max_tokens
        self.headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        self.serial = 0

    def payload(self, stream: bool) -> bytes:
        self.serial += 1
        text = f"#{self.serial} " + self.texts[self.serial % len(self.texts)]
        body = {"model": MODEL_ID, "messages": [{"role": "user", "content": text}],
                "max_tokens": self.max_tokens, "ignore_eos": True}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body).encode()

    async def one(self, session, stream: bool) -> dict:
        import aiohttp

        payload = self.payload(stream)
        t0 = time.perf_counter()
        ttft, usage, status, error = None, None, 0, None
        try:
            async with session.post(self.url, data=payload, headers=self.headers) as resp:
                status = resp.status
                if status != 200:
                    error = (await resp.text())[:300]
                elif stream:
                    async for line in resp.content:
                        if ttft is None and _CONTENT.search(line):
                            ttft = time.perf_counter() - t0
                        if b'"completion_tokens"' in line and line.startswith(b"data: "):
                            usage = json.loads(line[6:]).get("usage")
                else:
                    usage = json.loads(await resp.read()).get("usage")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            error = repr(exc)
        return {"ok": status == 200 and error is None, "status": status, "error": error,
                "ttft": ttft, "latency": time.perf_counter() - t0,
                "prompt_tokens": (usage or {}).get("prompt_tokens", 0),
                "completion_tokens": (usage or {}).get("completion_tokens", 0)}

    async def run(self, concurrency: int, n: int, stream: bool, max_s: float) -> tuple[list[dict], float]:
        import aiohttp

        results: list[dict] = []
        sent = 0
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=600)) as session:
            start = time.perf_counter()
            deadline = start + max_s

            async def worker():
                nonlocal sent
                while sent < n and time.perf_counter() < deadline:
                    sent += 1
                    results.append(await self.one(session, stream))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return results, time.perf_counter() - start


    async def open_loop(self, arrivals: list[float], stream: bool) -> tuple[list[dict], float]:
        """Open-loop load: each request sent at its arrival time (s from the start), whether or
        not earlier ones have finished, as real users arrive."""
        import aiohttp

        results: list[dict] = []
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=600)) as session:
            start = time.perf_counter()

            async def at(t: float):
                await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
                late = time.perf_counter() - start - t
                r = await self.one(session, stream)
                r["late_s"] = late  # how far behind its arrival the client sent it
                results.append(r)

            await asyncio.gather(*(at(t) for t in arrivals))
            return results, time.perf_counter() - start


def trace_arrivals(n: int, rate: float) -> list[float]:
    """The shipped Mooncake conversation slice's first ``n`` arrival times, rescaled to ``rate``
    requests/s on average: its bursts kept, its prompt lengths not (the fixed prompts are)."""
    from importlib import resources

    import numpy as np

    from fabric.sim.traces import MooncakeTrace

    path = resources.files("fabric").joinpath("data/traces/mooncake_conversation_head2000.jsonl")
    t = np.concatenate([b.t for b in MooncakeTrace(str(path)).batches()])[:n]
    t = t - t[0]
    if len(t) < 2 or t[-1] <= 0:
        return [i / rate for i in range(len(t))]
    return [float(x) for x in t * ((len(t) - 1) / rate / t[-1])]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(values, q))


def summarize(results: list[dict], wall: float, concurrency: int, stream: bool) -> dict:
    ok = [r for r in results if r["ok"]]
    ttfts = [r["ttft"] * 1e3 for r in ok if r["ttft"] is not None]
    lats = [r["latency"] * 1e3 for r in ok]
    # first token only after 80% of the request's time: the response arrived as one burst
    bursts = [r for r in ok if r["ttft"] is not None and r["ttft"] > 0.8 * r["latency"]]
    tokens = sum(r["completion_tokens"] for r in ok)
    errors = Counter((r["status"], (r["error"] or "")[:120]) for r in results if not r["ok"])
    return {
        "concurrency": concurrency, "stream": stream, "requests": len(results), "ok": len(ok),
        "wall_s": round(wall, 3), "req_per_s": round(len(ok) / wall, 2),
        "out_tok_per_s": round(tokens / wall, 1),
        "completion_tokens_mean": round(tokens / len(ok), 2) if ok else 0,
        "prompt_tokens_mean": round(sum(r["prompt_tokens"] for r in ok) / len(ok), 1) if ok else 0,
        "ttft_p50_ms": _r(pct(ttfts, 50)), "ttft_p99_ms": _r(pct(ttfts, 99)),
        "latency_p50_ms": _r(pct(lats, 50)), "latency_p99_ms": _r(pct(lats, 99)),
        "burst_share": round(len(bursts) / len(ttfts), 3) if stream and ttfts else None,
        "errors": [{"status": s, "error": e, "count": c} for (s, e), c in errors.most_common(5)],
    }


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


# ----------------------------------------------------------------------------- where the time goes

_RAY_SYSTEM = ("raylet", "gcs_server", "dashboard", "runtime_env", "log_monitor", "monitor.py",
               "agent.py", "ray_client_server")


def label(proc, own_pid: int) -> str:
    """A process's role, for grouping its CPU time."""
    import psutil

    try:
        if proc.pid == own_pid:
            return "load generator (client)"
        name = proc.name()
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    head = cmd[0] if cmd else name
    if name.startswith("haproxy") or head.endswith("haproxy"):
        return "HAProxy"
    if "EngineCore" in head or "EngineCore" in name:
        return "vLLM EngineCore"
    if head.startswith("VLLM::") or name.startswith("VLLM::"):
        return (head if head.startswith("VLLM::") else name).split()[0]  # e.g. VLLM::Worker
    if head.startswith("ray::"):
        title = head.split()[0]
        if title.startswith("ray::ServeReplica:"):
            return title
        return title.split(".")[0]  # actor name without the running method
    joined = " ".join(cmd)
    if "vllm.entrypoints" in joined:
        return "vLLM API server"
    if "_servers.py ray-llm" in joined:
        return "Ray driver"
    if any(s in joined for s in _RAY_SYSTEM) or name in ("raylet", "gcs_server"):
        return "Ray system (raylet, GCS, agents)"
    return _servers._short(cmd, name) if cmd else name


def cpu_snapshot() -> dict[int, tuple[object, float]]:
    import psutil

    snap = {}
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            snap[p.pid] = (p, t.user + t.system)
    return snap


def cpu_split(before: dict, after: dict, wall: float, requests: int) -> dict:
    own = os.getpid()
    ours = _servers.own_pids()
    per_pid = {}
    groups: dict[str, float] = defaultdict(float)
    for pid, (proc, t1) in after.items():
        t0 = before.get(pid, (None, 0.0))[1]
        used = t1 - t0
        if used <= 0:
            continue
        name = label(proc, own) if pid in ours else "other processes (not this benchmark's)"
        per_pid[pid] = (name, used, pid in ours and _is_python(proc))
        groups[name] += used
    rows = sorted(groups.items(), key=lambda kv: -kv[1])
    return {
        "wall_s": round(wall, 3), "requests": requests,
        "total_cores": round(sum(groups.values()) / wall, 3),
        "groups": [{"group": g, "cores": round(s / wall, 3),
                    "cpu_ms_per_request": round(1e3 * s / max(1, requests), 3)}
                   for g, s in rows if s / wall >= 0.005],
        "pids": {pid: {"group": g, "cpu_s": round(s, 3), "python": py}
                 for pid, (g, s, py) in per_pid.items()},
    }


def _is_python(proc) -> bool:
    import psutil

    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return False
    head = cmd[0] if cmd else ""
    return "python" in Path(head.split()[0] if head else "").name or head.startswith(("ray::", "VLLM::"))


def profile_targets(split: dict, k: int) -> list[tuple[int, str]]:
    """The k busiest Python processes of the serving stack (the client excluded)."""
    rows = sorted(((info["cpu_s"], int(pid), info["group"]) for pid, info in split["pids"].items()
                   if info["python"] and info["group"] != "load generator (client)"), reverse=True)
    return [(pid, group) for _, pid, group in rows[:k]]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text.replace("ray::", "")).strip("-")[:60] or "proc"


def start_profilers(target: str, procs: list[tuple[int, str]], rate: int, max_s: float) -> list:
    pyspy = Path(sys.executable).parent / "py-spy"
    running = []
    for pid, group in procs:
        out = RESULTS / f"overhead-{target}-{_slug(group)}-{pid}.txt"
        cmd = [str(pyspy), "record", "--nonblocking", "-r", str(rate), "-d", str(int(max_s)),
               "-f", "raw", "-o", str(out), "-p", str(pid)]
        log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 (closed in stop_profilers)
        running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), out, group, pid, log))
    time.sleep(1.0)  # let the samplers attach
    return running


def stop_profilers(running: list, top: int = 8) -> list[dict]:
    report = []
    for proc, out, group, pid, log in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl-C
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
        report.append({"pid": pid, "group": group, "file": str(out.relative_to(RESULTS.parent.parent)),
                       **top_frames(out, top)})
    return report


def top_frames(path: Path, top: int) -> dict:
    """Self time by function (leaf frames) and inclusive time by function, from py-spy's raw
    collapsed stacks."""
    self_t: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        log = path.with_suffix(".log")
        return {"samples": 0, "error": log.read_text(errors="replace")[-300:] if log.exists() else "no output"}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]
        if frames:
            self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    share = lambda c: [{"frame": f, "share": round(v / total, 3)} for f, v in c.most_common(top)] if total else []
    return {"samples": total, "self": share(self_t), "inclusive": share(incl)}


# ----------------------------------------------------------------------------- one target

@contextlib.contextmanager
def serve(target: str, model_path: str, engine_kwargs: dict, engine_env: dict, omp_threads: int = 1,
          accelerator: str = "cpu"):
    """Run one target; yields its base URL (the report follows the terminal meanwhile)."""
    log = RESULTS / f"overhead-{target}.log"
    with _servers.serving(target, model_path, engine_kwargs, engine_env, log, omp_threads,
                          accelerator) as (url, stream):
        OUT["stream"] = stream
        try:
            yield url
        finally:
            OUT["stream"] = sys.stdout


def measure_target(target: str, args, model_path: str, engine_kwargs: dict, engine_env: dict,
                   texts: list[str]) -> dict:
    out: dict = {"name": TARGETS[target]}
    t0 = time.perf_counter()
    with serve(target, model_path, engine_kwargs, engine_env, args.bare_omp_threads,
               args.accelerator) as url:
        out["startup_s"] = round(time.perf_counter() - t0, 1)
        say(f"  up in {out['startup_s']} s at {url}")
        load = Load(url, texts, args.max_tokens, _servers.DEMO_KEY)
        # warm-up: a few alone, then a full batch of each kind
        warm = asyncio.run(load.run(1, 3, True, 60))[0]
        warm += asyncio.run(load.run(64, 64, True, 120))[0]
        warm += asyncio.run(load.run(64, 64, False, 120))[0]
        bad = [r for r in warm if not r["ok"]]
        if bad:
            raise ServerError(f"{TARGETS[target]}: {len(bad)}/{len(warm)} warm-up requests failed, "
                              f"e.g. status {bad[0]['status']}: {bad[0]['error']}")
        tokens = {r["completion_tokens"] for r in warm}
        out["ignore_eos_honored"] = tokens == {args.max_tokens}
        if not out["ignore_eos_honored"]:
            say(f"  note: completion tokens in warm-up were {sorted(tokens)[:5]} (not all {args.max_tokens})")
        levels = []
        for c in args.concurrency:
            for stream in (True, False):
                n = max(args.requests_per_level, 6 * c)
                measure_cpu = c in (min(args.concurrency), max(args.concurrency)) and stream
                for attempt in range(args.retries + 1):
                    watch = _servers.LoadWatch()
                    before = cpu_snapshot() if measure_cpu else None
                    results, wall = asyncio.run(load.run(c, n, stream, args.max_level_s))
                    after = cpu_snapshot() if measure_cpu else None
                    foreign, top = watch.stop()
                    row = summarize(results, wall, c, stream)
                    row["foreign_cores"] = round(foreign, 3)
                    row["disturbed"] = foreign > args.max_foreign_cores
                    if not row["disturbed"] or attempt == args.retries:
                        break
                    say(f"  c={c} {'stream' if stream else 'plain'}: other processes used {foreign:.2f} "
                        f"cores ({', '.join(top)}); waiting, then repeating the level")
                    try:
                        _servers.wait_idle(say=say, max_foreign_cores=args.max_foreign_cores)
                    except ServerError as exc:  # still busy: keep the figures, marked disturbed
                        say(f"  {exc}; keeping the disturbed figures")
                        break
                if measure_cpu:
                    out.setdefault("cpu", {})[str(c)] = cpu_split(before, after, wall, len(results))
                levels.append(row)
                say(f"  c={c:<3} {'stream ' if stream else 'no-strm'} {row['ok']:>4}/{row['requests']:<4} "
                    f"{row['req_per_s']:>7.1f} req/s  {row['out_tok_per_s']:>8.0f} tok/s  "
                    f"ttft p50 {_fmt(row['ttft_p50_ms'])} ms  lat p50 {_fmt(row['latency_p50_ms'])} ms"
                    + (f"  burst {row['burst_share']:.0%}" if row["burst_share"] is not None else "")
                    + ("  [DISTURBED by other load]" if row["disturbed"] else ""))
        out["levels"] = levels
        for rate in args.open_loop:
            arrivals = trace_arrivals(args.open_loop_requests, rate)
            results, wall = asyncio.run(load.open_loop(arrivals, True))
            row = summarize(results, wall, 0, True)
            row.update(mode="open", offered_rps=rate,
                       client_late_p99_ms=_r(pct([r["late_s"] * 1e3 for r in results], 99)))
            out.setdefault("open_loop", []).append(row)
            say(f"  open {rate:>5.1f} req/s offered {row['ok']:>4}/{row['requests']:<4} "
                f"{row['req_per_s']:>7.1f} req/s  ttft p50 {_fmt(row['ttft_p50_ms'])} ms  "
                f"p99 {_fmt(row['ttft_p99_ms'])} ms  lat p50 {_fmt(row['latency_p50_ms'])} ms")
        if args.pause_control_plane and target == "d":
            out["paused"] = paused_levels(load, args)
        if args.profile and str(max(args.concurrency)) in out.get("cpu", {}):
            c = max(args.concurrency)
            procs = profile_targets(out["cpu"][str(c)], args.profile_procs)
            say(f"  profiling (extra, unmeasured c={c} streaming run): "
                + ", ".join(f"{g} [{p}]" for p, g in procs))
            running = start_profilers(target, procs, args.profile_rate, 120)
            try:
                asyncio.run(load.run(c, max(args.requests_per_level, 6 * c), True, args.max_level_s))
            finally:
                out["profile"] = stop_profilers(running)
    return out


# the fabric's own actor processes (its control plane: nothing on the request's path)
CONTROL_PLANE = ("ray::GPUMonitor", "ray::Sites", "ray::Scheduler", "ray::TokenLedger",
                 "ray::DeferredQueue")


def paused_levels(load, args) -> dict:
    """A diagnostic: c=1 streaming with the fabric's control-plane processes stopped
    (SIGSTOP) and then running again, back to back. The difference in TTFT is what those
    processes cost by being there (their wake-ups take the engine's cores); what stays over
    a baseline is the data path's own (router, middleware, metering)."""
    import psutil

    own = os.getpid()
    pids = []
    for pid in _servers.own_pids():
        with contextlib.suppress(psutil.Error):  # a process may end while we look
            proc = psutil.Process(pid)
            if label(proc, own) in CONTROL_PLANE:
                pids.append(proc)
    n = max(args.requests_per_level, 6)
    out = {"processes": sorted({label(p, own) for p in pids}), "count": len(pids)}
    for paused in (True, False):
        for p in pids if paused else ():
            with contextlib.suppress(psutil.Error):
                p.suspend()
        try:
            results, wall = asyncio.run(load.run(1, n, True, args.max_level_s))
        finally:
            for p in pids:
                with contextlib.suppress(psutil.Error):
                    p.resume()
        row = summarize(results, wall, 1, True)
        out["paused" if paused else "running"] = row
        say(f"  c=1   stream, control plane {'stopped' if paused else 'running'} "
            f"({len(pids)} processes) {row['ok']:>4}/{row['requests']:<4} "
            f"{row['req_per_s']:>7.1f} req/s  ttft p50 {_fmt(row['ttft_p50_ms'])} ms")
    p50 = lambda k: out[k]["ttft_p50_ms"]
    if p50("paused") is not None and p50("running") is not None:
        out["ttft_p50_delta_ms"] = round(p50("running") - p50("paused"), 2)
    return out


def _pct(x) -> str:
    return f"{x:.0%}" if isinstance(x, (int, float)) else "-"


def _fmt(x) -> str:
    return f"{x:7.1f}" if isinstance(x, (int, float)) else "     -"


# ----------------------------------------------------------------------------- report

def level(result: dict, c: int, stream: bool) -> dict | None:
    return next((l for l in result.get("levels", []) if l["concurrency"] == c and l["stream"] == stream), None)


def report(results: dict, args) -> dict:
    say(f"\nthroughput and latency (closed loop; prompt ~{args.prompt_tokens} tokens, "
        f"{args.max_tokens} tokens out, ignore_eos)")
    say(f"{'target':<32} {'c':>3} {'mode':>7} {'req/s':>8} {'tok/s':>8} {'ttft50':>8} {'ttft99':>8} "
        f"{'lat50':>8} {'lat99':>8} {'burst':>6} {'ok':>9}")
    for t, r in results.items():
        for l in r.get("levels", []):
            say(f"{t + ' ' + r['name']:<32} {l['concurrency']:>3} {'stream' if l['stream'] else 'plain':>7} "
                f"{l['req_per_s']:>8.1f} {l['out_tok_per_s']:>8.0f} {_fmt(l['ttft_p50_ms']):>8} "
                f"{_fmt(l['ttft_p99_ms']):>8} {_fmt(l['latency_p50_ms']):>8} {_fmt(l['latency_p99_ms']):>8} "
                f"{_pct(l.get('burst_share')):>6} "
                f"{l['ok']:>4}/{l['requests']:<4}")
        if r.get("error"):
            say(f"{t + ' ' + r['name']:<32} FAILED: {r['error'].splitlines()[0]}")

    ratios: dict = {}
    for top, base in (("d", "a"), ("d", "b"), ("d", "c"), ("d", "f"), ("e", "d")):
        if "levels" not in results.get(top, {}) or "levels" not in results.get(base, {}):
            continue
        rows = []
        for c in args.concurrency:
            for stream in (True, False):
                d, b = level(results[top], c, stream), level(results[base], c, stream)
                if d and b and b["req_per_s"]:
                    rows.append({"concurrency": c, "stream": stream,
                                 "throughput_ratio": round(d["req_per_s"] / b["req_per_s"], 3)})
        c1d, c1b = level(results[top], min(args.concurrency), True), level(results[base], min(args.concurrency), True)
        delta = (round(c1d["ttft_p50_ms"] - c1b["ttft_p50_ms"], 2)
                 if c1d and c1b and c1d["ttft_p50_ms"] is not None and c1b["ttft_p50_ms"] is not None else None)
        ratios[f"{top}/{base}"] = {"throughput": rows, "ttft_p50_delta_ms_c1": delta}
    if ratios:
        say("\nthe fabric (d) against each baseline, and the gateway (e) against d: throughput "
            f"ratio (req/s), TTFT p50 delta at c={min(args.concurrency)}")
        header = "".join(f"{f'c={c} ' + ('strm' if s else 'plain'):>13}" for c in args.concurrency for s in (True, False))
        say(f"{'':<6}{header}{'ttft Δ ms':>12}")
        for name, r in ratios.items():
            cells = {(x["concurrency"], x["stream"]): x["throughput_ratio"] for x in r["throughput"]}
            line = "".join(f"{cells.get((c, s), float('nan')):>13.3f}" for c in args.concurrency for s in (True, False))
            say(f"{name:<6}{line}{_fmt(r['ttft_p50_delta_ms_c1']):>12}")

    open_rows = {t: r["open_loop"] for t, r in results.items() if r.get("open_loop")}
    if open_rows:
        say(f"\nopen loop: the shipped Mooncake slice's arrivals ({args.open_loop_requests} "
            "requests) rescaled to each offered rate, streaming")
        say(f"{'target':<32} {'offered':>8} {'req/s':>8} {'ttft50':>8} {'ttft99':>8} {'lat50':>8} "
            f"{'lat99':>8} {'ok':>9}")
        for t, rows in open_rows.items():
            for l in rows:
                say(f"{t + ' ' + results[t]['name']:<32} {l['offered_rps']:>8.1f} {l['req_per_s']:>8.1f} "
                    f"{_fmt(l['ttft_p50_ms']):>8} {_fmt(l['ttft_p99_ms']):>8} "
                    f"{_fmt(l['latency_p50_ms']):>8} {_fmt(l['latency_p99_ms']):>8} "
                    f"{l['ok']:>4}/{l['requests']:<4}")
        for top, base in (("d", "a"), ("d", "c"), ("d", "f")):
            if top not in open_rows or base not in open_rows:
                continue
            rows = []
            for d, b in zip(open_rows[top], open_rows[base]):
                rows.append({"offered_rps": d["offered_rps"],
                             "throughput_ratio": round(d["req_per_s"] / b["req_per_s"], 3) if b["req_per_s"] else None,
                             "ttft_p50_ratio": round(d["ttft_p50_ms"] / b["ttft_p50_ms"], 3)
                             if d["ttft_p50_ms"] and b["ttft_p50_ms"] else None,
                             "ttft_p50_delta_ms": round(d["ttft_p50_ms"] - b["ttft_p50_ms"], 2)
                             if d["ttft_p50_ms"] is not None and b["ttft_p50_ms"] is not None else None})
                say(f"  {top}/{base} at {d['offered_rps']:g} req/s: throughput "
                    f"{rows[-1]['throughput_ratio']}, TTFT p50 {rows[-1]['ttft_p50_ratio']}x "
                    f"({rows[-1]['ttft_p50_delta_ms']} ms)")
            ratios[f"open {top}/{base}"] = rows

    goals = {}
    if "d/a" in ratios:
        cmax = max(args.concurrency)
        at = {x["stream"]: x["throughput_ratio"] for x in ratios["d/a"]["throughput"] if x["concurrency"] == cmax}
        delta = ratios["d/a"]["ttft_p50_delta_ms_c1"]
        goals = {
            f"throughput_c{cmax}_stream_ge_0.9x_a": {"value": at.get(True), "met": bool(at.get(True) and at[True] >= 0.9)},
            f"throughput_c{cmax}_plain_ge_0.9x_a": {"value": at.get(False), "met": bool(at.get(False) and at[False] >= 0.9)},
            "ttft_p50_c1_delta_le_5ms": {"value": delta, "met": delta is not None and delta <= 5.0},
        }
        c1 = min(args.concurrency)
        bursts = {t: (level(results[t], c1, True) or {}).get("burst_share") for t in ("a", "d")}
        goals["ttft_p50_c1_delta_le_5ms"]["burst_share"] = bursts
        noisy = [t for t, v in bursts.items() if v is not None and v > 0.2]
        goals["ttft_p50_c1_delta_le_5ms"]["reliable"] = not noisy
        say("\ntargets")
        for k, g in goals.items():
            say(f"  {k:<36} {g['value']!s:>8}  {'MET' if g['met'] else 'NOT MET'}")
        if noisy:
            say(f"  caution: at c={c1}, " + ", ".join(f"{bursts[t]:.0%} of {t}'s" for t in noisy)
                + " streamed responses arrived in one burst (the HTTP front end waits for CPU while"
                  "\n  the engine's processes busy-poll both cores), so the TTFT comparison is not "
                  "reliable in this run")

    lean = lean_goals(results, ratios, args)
    if lean:
        say("\ntargets of the lean fabric (d against c, and against f: c on d's cluster shape)")
        for k, g in lean.items():
            say(f"  {k:<44} {g['value']!s:>8}  {'MET' if g['met'] else 'NOT MET'}")
        goals.update(lean)

    paused = results.get("d", {}).get("paused")
    if paused and paused.get("ttft_p50_delta_ms") is not None:
        say(f"\nTTFT p50 at c=1, d with its control plane stopped / running, back to back: "
            f"{paused['paused']['ttft_p50_ms']} / {paused['running']['ttft_p50_ms']} ms "
            f"(the control plane's presence: {paused['ttft_p50_delta_ms']:+.2f} ms)"
            + "".join(f"; {b} (its c=1 level) {level(results[b], 1, True)['ttft_p50_ms']} ms"
                      for b in ("c", "f") if b in results and level(results[b], 1, True)))

    for c in sorted({min(args.concurrency), max(args.concurrency)}, reverse=True):
        cpu_targets = {t: r["cpu"][str(c)] for t, r in results.items() if str(c) in r.get("cpu", {})}
        if not cpu_targets:
            continue
        say(f"\nwhere the time goes: CPU during the c={c} streaming level (cores busy, CPU ms per "
            "request).\n  Note: vLLM's engine core and worker busy-poll (sched_yield) while they wait, so "
            "their CPU also\n  soaks up idle cycles; the other roles' CPU is work done per request.")
        for t, cpu in cpu_targets.items():
            say(f"  {t} {results[t]['name']}: {cpu['total_cores']:.2f} cores over {cpu['wall_s']:.1f} s")
            for g in cpu["groups"][:12]:
                say(f"      {g['group']:<52} {g['cores']:>6.2f} cores {g['cpu_ms_per_request']:>8.2f} ms/req")
        for base in ("a", "c", "f"):
            if "d" in cpu_targets and base in cpu_targets:
                say(f"  d − {base} at c={c}: CPU ms per request by role"
                    + _role_diff(cpu_targets["d"], cpu_targets[base]))
    for t, r in results.items():
        for p in r.get("profile", []):
            say(f"\nprofile {t} {p['group']} [pid {p['pid']}] {p['samples']} samples -> {p['file']}")
            if p.get("error"):
                say(f"    py-spy: {p['error'].strip().splitlines()[-1] if p['error'].strip() else 'failed'}")
            for f in p.get("self", [])[:6]:
                say(f"    self {f['share']:>6.1%}  {f['frame'][:110]}")
            for f in [f for f in p.get("inclusive", []) if not _trivial(f["frame"])][:6]:
                say(f"    incl {f['share']:>6.1%}  {f['frame'][:110]}")
    return {"ratios": ratios, "goals": goals}


def fabric_cpu_ms(d: dict, base: dict) -> float:
    """The fabric's own CPU per request over a baseline: every role but the engine's core and
    worker (they busy-poll, soaking up whatever the others leave) and the load generator."""
    skip = ("engine core + worker", "load generator (client)")
    def own(cpu):
        return sum(g["cpu_ms_per_request"] for g in cpu["groups"] if _role(g["group"]) not in skip)
    return round(own(d) - own(base), 2)


def lean_goals(results: dict, ratios: dict, args) -> dict:
    """d/c (and d/f) >= 0.95 at the highest concurrency, streaming and plain; TTFT p50 d - c
    <= 1 ms at the lowest; the fabric's own CPU over the baseline <= 1 ms per request."""
    goals = {}
    cmax = max(args.concurrency)
    for base in ("c", "f"):
        r = ratios.get(f"d/{base}")
        if not r:
            continue
        at = {x["stream"]: x["throughput_ratio"] for x in r["throughput"] if x["concurrency"] == cmax}
        for stream, mode in ((True, "stream"), (False, "plain")):
            v = at.get(stream)
            goals[f"d/{base}_c{cmax}_{mode}_ge_0.95"] = {"value": v, "met": bool(v and v >= 0.95)}
        delta = r["ttft_p50_delta_ms_c1"]
        goals[f"ttft_p50_c{min(args.concurrency)}_d-{base}_le_1ms"] = {
            "value": delta, "met": delta is not None and delta <= 1.0}
        cpu_d, cpu_b = (results[t].get("cpu", {}).get(str(cmax)) for t in ("d", base))
        if cpu_d and cpu_b:
            v = fabric_cpu_ms(cpu_d, cpu_b)
            goals[f"fabric_cpu_over_{base}_c{cmax}_le_1ms_per_req"] = {"value": v, "met": v <= 1.0}
    return goals


# Ray's and Serve's own actor processes (one dashboard agent per raylet: the cluster's shape)
RAY_ACTORS = {"ray::ServeController", "ray::IDLE", "ray::DashboardAgent", "ray::TelemetryAgent",
              "ray::HAProxyManager"}


def _role(group: str) -> str:
    """Coarse roles, comparable across targets."""
    if (group.startswith("ray::ServeReplica:") and "LLMServer" in group) or group == "vLLM API server":
        return "engine HTTP/API process"
    if group == "vLLM EngineCore" or group.startswith("VLLM::"):
        return "engine core + worker"
    if group.startswith("ray::ServeReplica:"):
        return "other Serve replicas (ingress/router/regional)"
    if group in ("HAProxy", "ray::ProxyActor"):
        return "HTTP proxy"
    if group in ("Ray system (raylet, GCS, agents)", "Ray driver") or group in RAY_ACTORS:
        return "Ray system + Serve controller"
    if group == "load generator (client)":
        return "load generator (client)"
    if group.startswith("ray::"):
        return "fabric actors (power, site, GPU, scheduler, ledger)"
    return "other"


def _role_diff(d: dict, base: dict) -> str:
    def by_role(cpu):
        out: dict[str, float] = defaultdict(float)
        for g in cpu["groups"]:
            out[_role(g["group"])] += g["cpu_ms_per_request"]
        return out

    dr, br = by_role(d), by_role(base)
    lines = ""
    for role in sorted(set(dr) | set(br), key=lambda r: -(dr.get(r, 0) - br.get(r, 0))):
        lines += f"\n      {role:<52} {dr.get(role, 0):>7.2f} vs {br.get(role, 0):>7.2f}  ({dr.get(role, 0) - br.get(role, 0):+.2f})"
    return lines


def _trivial(frame: str) -> bool:
    return any(frame.startswith(s) for s in ("<module>", "run (", "_run_once", "run_forever",
                                             "run_until_complete", "main (", "_run (", "start_worker"))


# ----------------------------------------------------------------------------- main

def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="a,b,c,d",
                    help="which of a,b,c,d,e,f to run (default a-d; e: through a gateway; "
                         "f: c on the fabric's cluster shape)")
    ap.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    ap.add_argument("--requests-per-level", type=int, default=128,
                    help="requests per (concurrency, mode) level; at least 6x the concurrency")
    ap.add_argument("--max-level-s", type=float, default=20.0,
                    help="stop sending new requests in a level after this long")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the busiest serving processes during an extra c=max streaming run")
    ap.add_argument("--profile-procs", type=int, default=4, help="how many processes to sample")
    ap.add_argument("--profile-rate", type=int, default=50, help="py-spy samples per second")
    ap.add_argument("--pause-control-plane", action="store_true",
                    help="diagnostic: one more c=1 streaming level for d with the fabric's actor "
                         "processes stopped (SIGSTOP), then one with them running")
    ap.add_argument("--open-loop", default="",
                    help="comma-separated offered rates (req/s) for open-loop levels replaying "
                         "the shipped trace slice's arrivals (e.g. 2,6)")
    ap.add_argument("--open-loop-requests", type=int, default=240,
                    help="requests per open-loop level")
    ap.add_argument("--model", default=None,
                    help="model source for every target: a Hugging Face id or local path "
                         "(default: the offline tiny model)")
    ap.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu",
                    help="where the engines compute: cpu (the fabric's CPU settings) or gpu "
                         "(one GPU per engine, vLLM's defaults; a GPU machine with the gpu extra)")
    add_machine_args(ap)
    ap.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    args = ap.parse_args()
    targets = [t for t in "abcdef" if t in args.targets.split(",")]
    if not targets or set(args.targets.split(",")) - set(TARGETS):
        ap.error(f"--targets: choose from {','.join(TARGETS)}")
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",")})
    args.open_loop = [float(r) for r in args.open_loop.split(",") if r.strip()]
    if any(r <= 0 for r in args.open_loop):
        ap.error("--open-loop: rates must be > 0")

    from fabric.model import ensure_model

    RESULTS.mkdir(parents=True, exist_ok=True)
    model_path = ensure_model(args.model)
    engine_kwargs, engine_env = _servers.engine_settings(accelerator=args.accelerator)
    texts, overhead, prompt_len = make_prompts(model_path, 256, args.prompt_tokens)
    say(f"prompts: {prompt_len('#1000 ' + texts[0])} tokens with the chat template "
        f"(template {overhead}); {args.max_tokens} tokens out")
    say(f"engine: {model_path}\n  kwargs {engine_kwargs}\n  env {engine_env}")
    results: dict = {}
    for t in targets:
        say(f"\n[{t}] {TARGETS[t]}")
        try:
            if not args.no_wait_idle:
                _servers.wait_idle(say=say)
            results[t] = measure_target(t, args, model_path, engine_kwargs, engine_env, texts)
        except ServerError as exc:
            say(f"  FAILED: {exc}")
            results[t] = {"name": TARGETS[t], "error": str(exc)}
    summary = report(results, args)
    payload = {"config": {"targets": {t: TARGETS[t] for t in targets},
                          "fabric_restriction": "model.hosting=[edge-a], max_replicas=1 (one engine)",
                          "concurrency": args.concurrency, "requests_per_level": args.requests_per_level,
                          "max_level_s": args.max_level_s, "prompt_tokens": args.prompt_tokens,
                          "chat_template_tokens": overhead, "max_tokens": args.max_tokens,
                          "ignore_eos": True, "engine_kwargs": engine_kwargs, "engine_env": engine_env,
                          "client": "aiohttp closed loop, one process", "cpus": os.cpu_count(),
                          "open_loop_rps": args.open_loop,
                          "open_loop_requests": args.open_loop_requests,
                          "open_loop_arrivals": "mooncake_conversation_head2000.jsonl, rescaled",
                          "bare_vllm_omp_threads": args.bare_omp_threads or "vLLM default",
                          "ray_engine_omp_threads": 1, "accelerator": args.accelerator,
                          "model": model_path},
               "results": results, **summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str))
    say(f"\nwrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
