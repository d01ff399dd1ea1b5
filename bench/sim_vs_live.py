"""Can the simulator be trusted? One seeded trace, live and simulated, side by side.

The same trace runs (1) through the live local fabric — real Ray, Serve, HAProxy and vLLM on
this machine's CPU, the small model on edge-a and cloud-a — and (2) through the simulator
(``fabric.sim``) with the same spec and a serving profile measured from the local engine a
moment before: the prefill rate and the fixed time to a first token from short and long
prompts, and the decode step of one stream and of a full batch of concurrent streams
(``ServingProfile.step1_s`` and ``step_s``: a first token on a busy engine rides its steps).
No number is set by hand. Output lengths are forced (``ignore_eos``) so both runs do the same
work; the simulated prompts are the prompt lengths the engines reported for the live run. The
simulated policy sees what the live scheduler sees (``SimConfig.signals``: the sites' figures
from the GPU model, capacity counted in batch slots), so the two runs decide alike.

Printed side by side: each site's share of requests, TTFT p50/p99 and drops. Targets: shares
within 10 points, TTFT p50 within 2×. Writes ``bench/results/sim_vs_live.json``.

    .venv/bin/python bench/sim_vs_live.py [--requests 300] [--rate 3] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fabric.cluster import free_port  # noqa: E402
from fabric.runtime import quiet_output, running_fabric  # noqa: E402
from fabric.sim.engine import SimConfig, Simulator  # noqa: E402
from fabric.sim.fleet import site_figures  # noqa: E402
from fabric.sim.gpus import ServingProfile  # noqa: E402
from fabric.sim.traces import RequestBatch, SyntheticTrace  # noqa: E402
from fabric.spec import default_spec_path, load_spec  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "sim_vs_live.json"
WORD = " fabric"  # one token of the offline model's tokenizer per repetition, roughly


class FixedTrace:
    """A materialised trace: the simulator reads it as one batch."""

    def __init__(self, t, prompt, output, describe: str):
        n = len(t)
        zeros = np.zeros(n, np.int32)
        self.batch = RequestBatch(np.asarray(t, float), np.asarray(prompt, np.int64),
                                  np.asarray(output, np.int64), np.zeros(n, np.int64),
                                  zeros, zeros.copy())
        self.describe, self.tenants, self.classes = describe, ["default"], ["default"]

    def batches(self):
        yield self.batch


async def one(client: httpx.AsyncClient, url: str, model: str, prompt_words: int,
              max_tokens: int) -> dict:
    """A streamed request: status, site, TTFT (first token), latency, tokens as reported."""
    body = {"model": model, "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": WORD * max(1, prompt_words)}]}
    t0 = time.perf_counter()
    out = {"status": 0, "site": None, "ttft_s": None, "latency_s": None, "prompt_tokens": None}
    try:
        async with client.stream("POST", f"{url}/chat/completions", json=body) as r:
            out["status"], out["site"] = r.status_code, r.headers.get("x-fabric-site")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if out["ttft_s"] is None and chunk.get("choices") and \
                        chunk["choices"][0].get("delta", {}).get("content") is not None:
                    out["ttft_s"] = time.perf_counter() - t0
                if chunk.get("usage"):
                    out["prompt_tokens"] = chunk["usage"]["prompt_tokens"]
                    out["completion_tokens"] = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["latency_s"] = time.perf_counter() - t0
    return out


async def calibrate(url: str, model: str, batch: int, say) -> tuple[ServingProfile, dict]:
    """The local engine's prefill rate and full-batch decode step, measured."""
    limits = httpx.Limits(max_connections=batch + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=AUTH) as c:
        for _ in range(3):  # warm-up: both engines compile and cache
            await asyncio.gather(*(one(c, url, model, 64, 8) for _ in range(4)))
        # TTFT = fixed + prompt / rate: short and long prompts, alternating (so a passing
        # disturbance hits both alike), twelve of each (medians)
        runs: dict[int, list[dict]] = {16: [], 1536: []}
        for _ in range(12):
            for words, rs in runs.items():
                rs.append(await one(c, url, model, words, 1))
        points = {statistics.median(r["prompt_tokens"] for r in rs): statistics.median(
            r["ttft_s"] for r in rs) for rs in runs.values()}
        (p1, t1), (p2, t2) = sorted(points.items())
        if t2 <= t1:
            raise SystemExit(f"calibration failed: a {p2}-token prompt's first token came no later "
                             f"than a {p1}-token one's ({t2 * 1e3:.1f} vs {t1 * 1e3:.1f} ms); "
                             "is something else loading this machine?")
        rate = (p2 - p1) / (t2 - t1)
        fixed = max(0.0, t1 - p1 / rate)
        say(f"  prefill: {rate:,.0f} prompt tokens/s, plus {fixed * 1e3:.1f} ms to a first token")
        steps = {}
        for conc in (1, batch):
            rs = await asyncio.gather(*(one(c, url, model, 32, 64) for _ in range(conc)))
            per = [(r["latency_s"] - r["ttft_s"]) / (r["completion_tokens"] - 1)
                   for r in rs if r["status"] == 200 and r["ttft_s"]]
            steps[conc] = statistics.median(per)
            say(f"  decode step with {conc} in the batch: {steps[conc] * 1e3:.1f} ms")
    profile = ServingProfile(prefill_tok_s=rate, step_s=steps[batch], step1_s=steps[1],
                             batch=batch, ttft_fixed_s=fixed)
    return profile, {"prefill_tok_s": rate, "ttft_fixed_s": fixed, "ttft_by_prompt": points,
                     "step_s_by_batch": {str(k): v for k, v in steps.items()}}


async def replay(url: str, model: str, t: np.ndarray, prompt: np.ndarray,
                 output: np.ndarray, say) -> list[dict]:
    """Each request at its arrival time (open loop), streamed."""
    limits = httpx.Limits(max_connections=len(t) + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=AUTH) as c:
        start = time.perf_counter()

        async def at(i: int) -> dict:
            await asyncio.sleep(max(0.0, start + t[i] - time.perf_counter()))
            return await one(c, url, model, int(prompt[i]), int(output[i]))

        tasks = [asyncio.create_task(at(i)) for i in range(len(t))]
        done = 0
        while done < len(tasks):
            await asyncio.sleep(5)
            done = sum(x.done() for x in tasks)
            say(f"  live: {done}/{len(tasks)} requests done, {time.perf_counter() - start:.0f} s")
        return [x.result() for x in tasks]


def summary(sites: list[str], share: dict[str, float], ttft: list[float], drops: int,
            requests: int) -> dict:
    q = (lambda p: float(np.quantile(ttft, p)) if ttft else float("nan"))
    return {"share": {s: round(share.get(s, 0.0), 4) for s in sites}, "ttft_p50_s": q(0.5),
            "ttft_p99_s": q(0.99), "dropped": drops, "requests": requests}


AUTH = {"authorization": "Bearer fabric-local"}  # the local spec's demo tenant


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rate", type=float, default=3.0, help="mean arrivals/s (bursty)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--output-median", type=int, default=32,
                    help="median output tokens (forced); longer outputs hold batch slots longer, "
                         "so a lower rate fills the cheapest site and spills")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    say = lambda msg: (print(msg, flush=True))  # noqa: E731

    spec = load_spec(default_spec_path()).model_copy(deep=True)
    spec.models = spec.models[:1]  # the small model on edge-a and cloud-a (what the simulator runs)
    spec.endpoint.port = free_port()
    spec.power_clock.start_s = max((c.start_s + c.duration_s for _, s in spec.sites
                                    for c in s.power.curtailments), default=0.0)
    model = spec.model.id
    batch = int(spec.model.engine_kwargs.get("max_num_seqs", 64))
    trace = SyntheticTrace(kind="bursty", requests=args.requests, rate_per_s=args.rate,
                           seed=args.seed, prompt_median=128, prompt_sigma=0.6,
                           output_median=args.output_median, output_sigma=0.5,
                           max_tokens=max(256, 4 * args.output_median),
                           burst_factor=6.0, burst_share=0.2, burst_s=15.0)
    arrivals = RequestBatch.concat(list(trace.batches()))
    say(f"trace: {trace.describe}, {arrivals.t[-1]:.0f} s; spec {spec.name}, model {model}")
    with tempfile.TemporaryDirectory(prefix="sim-vs-live-") as ledger:
        spec.metering.path = ledger
        log = ROOT / "bench" / "results" / "sim_vs_live.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with quiet_output(str(log)) as terminal:
            def tell(msg):
                terminal.write(msg + "\n")
                terminal.flush()
            tell(f"starting the local fabric (log: {log}) ...")
            with running_fabric(spec, step=lambda m: tell(f"  fabric: {m}")) as fab:
                tell("calibrating the local engine ...")
                profile, calibration = asyncio.run(calibrate(fab.base_url, model, batch, tell))
                tell("replaying the trace live ...")
                live = asyncio.run(replay(fab.base_url, model, arrivals.t, arrivals.prompt,
                                          arrivals.output, tell))
    sites = [s.name for _, s in spec.hosting_sites(spec.model)]
    ok = [r for r in live if r["status"] == 200]
    live_share = {s: sum(r["site"] == s for r in ok) / max(1, len(ok)) for s in sites}
    live_sum = summary(sites, live_share, [r["ttft_s"] for r in ok if r["ttft_s"]],
                       len(live) - len(ok), len(live))

    # the simulator, on the same arrivals with the prompt lengths the engines counted
    prompts = [r["prompt_tokens"] or int(p) for r, p in zip(live, arrivals.prompt)]
    fixed = FixedTrace(arrivals.t, prompts, arrivals.output, trace.describe)
    # One engine per node here (the CPU serves for all its modelled GPUs): tp = the node's GPUs.
    # The policy sees what the live scheduler sees: the sites' figures from the GPU model, and
    # capacity counted in batch slots (fabric.scheduling.signals.site_signals).
    profiles = {p.gpu_type: profile.model_copy(update={"tp": p.gpus_per_node})
                for _, s in spec.sites for p in s.node_pools}
    live_view = {"service_s": 1.0, "prefill_s": 0.0, "requests_per_s": 0.0, "throughput_rps": 0.0}
    signals = {s.name: {**site_figures(spec, s), **live_view} for _, s in spec.sites}
    config = SimConfig.from_spec(spec, profiles=profiles, signals=signals, max_wait_s=600.0)
    sim = Simulator(spec, config).run(fixed)
    served = sum(s.served for s in sim.per_site)
    sim_share = {s.name: s.served / max(1, served) for s in sim.per_site}
    sim_sum = {"share": {s: round(sim_share.get(s, 0.0), 4) for s in sites},
               "ttft_p50_s": sim.ttft_p50_s, "ttft_p99_s": sim.ttft_p99_s,
               "dropped": sim.dropped, "requests": sim.arrivals}

    share_gap = max(abs(live_sum["share"][s] - sim_sum["share"][s]) for s in sites)
    p50_ratio = max(live_sum["ttft_p50_s"], sim_sum["ttft_p50_s"]) / max(
        1e-9, min(live_sum["ttft_p50_s"], sim_sum["ttft_p50_s"]))
    say(f"\n{'':18}{'live':>12}{'simulated':>12}")
    for s in sites:
        say(f"{'share ' + s:18}{live_sum['share'][s]:>12.1%}{sim_sum['share'][s]:>12.1%}")
    for k in ("ttft_p50_s", "ttft_p99_s"):
        say(f"{k:18}{live_sum[k]:>12.3f}{sim_sum[k]:>12.3f}")
    say(f"{'dropped':18}{live_sum['dropped']:>12}{sim_sum['dropped']:>12}")
    say(f"\nprofile (measured): prefill {profile.prefill_tok_s:,.0f} tok/s + "
        f"{profile.ttft_fixed_s * 1e3:.1f} ms, decode step {profile.step1_s * 1e3:.1f} ms with one "
        f"sequence, {profile.step_s * 1e3:.1f} ms at batch {batch}")
    say(f"target shares within 10 points: {share_gap * 100:.1f} points — "
        f"{'met' if share_gap <= 0.10 else 'NOT met'}")
    say(f"target TTFT p50 within 2x: {p50_ratio:.2f}x — {'met' if p50_ratio <= 2 else 'NOT met'}")
    result = {"trace": trace.model_dump(), "calibration": calibration, "live": live_sum,
              "simulated": sim_sum, "share_gap_points": share_gap * 100,
              "ttft_p50_ratio": p50_ratio, "targets_met": share_gap <= 0.10 and p50_ratio <= 2}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    say(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
