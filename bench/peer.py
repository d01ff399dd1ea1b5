"""bench/peer: the fabric measured by vLLM's own benchmark client, beside the engine served
without it.

vLLM's benchmark client (``vllm.benchmarks.serve``: its own argparse via ``add_cli_args``, then
``main``) drives each target with its random dataset (128 random prompt tokens, 64 output
tokens, ignore_eos; the offline model's tokenizer), backend openai-chat on /v1/chat/completions,
at concurrency 1 and 64. The API key goes in OPENAI_API_KEY, which the client reads.

Targets (same engine and settings as bench/overhead.py; see bench/_servers.py):

    a  vLLM's own OpenAI server (bare)           the throughput baseline
    c  ray.serve.llm direct streaming + HAProxy   the fabric's data path without the fabric
    d  the fabric, routing + metering on, one engine (model.hosting = [edge-a])

Reports req/s, output tok/s, TTFT p50/p99, TPOT p50, ITL p50/p99 and E2E latency side by side
with d's ratio to each baseline. Writes bench/results/peer.json (the client's own per-run
output goes to bench/results/peer-<target>.log).

    .venv/bin/python bench/peer.py [--targets a,c,d] [--concurrency 1,64] [--prompts-per-level 384]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _servers
from _servers import DEMO_KEY, MODEL_ID, RESULTS, TARGETS, ServerError, add_machine_args

OUT = {"stream": sys.stdout}
PEER_TARGETS = ("a", "c", "d")
KEYS = {"req_per_s": "request_throughput", "out_tok_per_s": "output_throughput",
        "ttft_p50_ms": "p50_ttft_ms", "ttft_p99_ms": "p99_ttft_ms", "tpot_p50_ms": "p50_tpot_ms",
        "itl_p50_ms": "p50_itl_ms", "itl_p99_ms": "p99_itl_ms", "e2el_p50_ms": "p50_e2el_ms",
        "e2el_p99_ms": "p99_e2el_ms"}


def say(msg: str = "") -> None:
    OUT["stream"].write(msg + "\n")
    OUT["stream"].flush()


def vllm_bench(base_url: str, model_path: str, concurrency: int, prompts: int, args, log) -> dict:
    """One run of vLLM's benchmark client against ``base_url`` (…/v1)."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    root = base_url.rstrip("/").removesuffix("/v1")
    bench_args = parser.parse_args([
        "--backend", "openai-chat", "--base-url", root, "--endpoint", "/v1/chat/completions",
        "--model", MODEL_ID, "--tokenizer", model_path,
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--ignore-eos",
        "--num-prompts", str(prompts), "--max-concurrency", str(concurrency),
        "--num-warmups", str(max(8, concurrency)), "--seed", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--disable-tqdm",
    ])
    os.environ["OPENAI_API_KEY"] = DEMO_KEY  # read by the client's request functions
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            result = bench_main(bench_args)
    finally:
        log.write(buf.getvalue())
        log.flush()
    row = {"concurrency": concurrency, "prompts": prompts,
           "completed": result.get("completed"), "failed": result.get("failed"),
           "duration_s": round(result.get("duration", 0.0), 3)}
    for ours, theirs in KEYS.items():
        value = result.get(theirs)
        row[ours] = round(value, 2) if isinstance(value, (int, float)) else None
    errors = [e for e in result.get("errors", []) if e]
    if errors:
        row["first_error"] = str(errors[0])[:300]
    return row


def run_target(target: str, model_path: str, engine_kwargs: dict, engine_env: dict, args) -> dict:
    out = {"name": TARGETS[target], "levels": []}
    server_log = RESULTS / f"peer-{target}-server.log"
    with _servers.serving(target, model_path, engine_kwargs, engine_env, server_log,
                          args.bare_omp_threads) as (url, stream), \
            open(RESULTS / f"peer-{target}.log", "w") as log:
        OUT["stream"] = stream
        try:
            say(f"  up at {url}")
            for c in args.concurrency:
                prompts = args.prompts_c1 if c == 1 else max(args.prompts_per_level, 4 * c)
                for attempt in range(args.retries + 1):
                    watch = _servers.LoadWatch()
                    row = vllm_bench(url, model_path, c, prompts, args, log)
                    foreign, top = watch.stop()
                    row["foreign_cores"] = round(foreign, 3)
                    row["disturbed"] = foreign > args.max_foreign_cores
                    if not row["disturbed"] or attempt == args.retries:
                        break
                    say(f"  c={c}: other processes used {foreign:.2f} cores ({', '.join(top)}); "
                        "waiting, then repeating")
                    try:
                        _servers.wait_idle(say=say, max_foreign_cores=args.max_foreign_cores)
                    except ServerError as exc:  # still busy: keep the figures, marked disturbed
                        say(f"  {exc}; keeping the disturbed figures")
                        break
                out["levels"].append(row)
                say(f"  c={c:<3} {row['completed']}/{prompts} {row['req_per_s']:>7} req/s "
                    f"{row['out_tok_per_s']:>8} tok/s  ttft p50 {row['ttft_p50_ms']} ms  "
                    f"tpot p50 {row['tpot_p50_ms']} ms"
                    + ("  [DISTURBED by other load]" if row["disturbed"] else ""))
        finally:
            OUT["stream"] = sys.stdout
    return out


def _cell(x) -> str:
    return f"{x:>9.2f}" if isinstance(x, (int, float)) else f"{'-':>9}"


def _delta(d: dict, b: dict, key: str) -> float | None:
    return round(d[key] - b[key], 2) if d[key] is not None and b[key] is not None else None


def report(results: dict, args) -> dict:
    say(f"\nvLLM benchmark client (random {args.input_len} -> {args.output_len} tokens, ignore_eos, "
        "openai-chat)")
    cols = list(KEYS)
    say(f"{'target':<34}{'c':>4}" + "".join(f"{k.replace('_ms', '').replace('_per_s', '/s'):>12}"
                                          for k in cols) + f"{'ok':>10}")
    for t, r in results.items():
        if r.get("error"):
            say(f"{t + ' ' + r['name']:<34} FAILED: {r['error'].splitlines()[0]}")
            continue
        for row in r["levels"]:
            say(f"{t + ' ' + r['name']:<34}{row['concurrency']:>4}"
                + "".join(f"{_cell(row[k]):>12}" for k in cols)
                + f"{row['completed']!s:>6}/{row['prompts']}")
    ratios = {}
    d = results.get("d", {})
    for base in ("a", "c"):
        b = results.get(base, {})
        if not d.get("levels") or not b.get("levels"):
            continue
        rows = []
        for dl in d["levels"]:
            bl = next((x for x in b["levels"] if x["concurrency"] == dl["concurrency"]), None)
            if not bl or not bl["req_per_s"]:
                continue
            rows.append({"concurrency": dl["concurrency"],
                         "throughput_ratio": round(dl["req_per_s"] / bl["req_per_s"], 3),
                         **{f"{k}_delta_ms": _delta(dl, bl, f"{k}_ms")
                            for k in ("ttft_p50", "tpot_p50", "itl_p50")}})
        ratios[f"d/{base}"] = rows
    if ratios:
        say("\nfabric (d) against each baseline")
        for name, rows in ratios.items():
            for row in rows:
                say(f"  {name} c={row['concurrency']:<3} throughput x{row['throughput_ratio']:.3f}  "
                    f"TTFT p50 {row['ttft_p50_delta_ms']:+} ms  TPOT p50 {row['tpot_p50_delta_ms']:+} ms  "
                    f"ITL p50 {row['itl_p50_delta_ms']:+} ms")
    return ratios


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="a,c,d", help="which of a,c,d to run (b also works)")
    ap.add_argument("--concurrency", default="1,64")
    ap.add_argument("--prompts-per-level", type=int, default=384,
                    help="prompts per level above concurrency 1 (at least 4x the concurrency)")
    ap.add_argument("--prompts-c1", type=int, default=64, help="prompts at concurrency 1")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    add_machine_args(ap)
    ap.add_argument("--out", type=Path, default=RESULTS / "peer.json")
    args = ap.parse_args()
    chosen = args.targets.split(",")
    if set(chosen) - set(TARGETS):
        ap.error(f"--targets: choose from {','.join(TARGETS)}")
    targets = [t for t in "abcd" if t in chosen]
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",")})

    from fabric.model import ensure_model

    RESULTS.mkdir(parents=True, exist_ok=True)
    model_path = ensure_model(None)
    engine_kwargs, engine_env = _servers.engine_settings()
    results: dict = {}
    for t in targets:
        say(f"\n[{t}] {TARGETS[t]}")
        try:
            if not args.no_wait_idle:
                _servers.wait_idle(say=say)
            results[t] = run_target(t, model_path, engine_kwargs, engine_env, args)
        except (ServerError, ValueError) as exc:
            say(f"  FAILED: {exc}")
            results[t] = {"name": TARGETS[t], "error": str(exc)}
    ratios = report(results, args)
    payload = {"config": {"client": "vllm.benchmarks.serve (openai-chat, random dataset)",
                          "targets": {t: TARGETS[t] for t in targets},
                          "fabric_restriction": "model.hosting=[edge-a], max_replicas=1 (one engine)",
                          "input_len": args.input_len, "output_len": args.output_len, "ignore_eos": True,
                          "concurrency": args.concurrency, "engine_kwargs": engine_kwargs,
                          "engine_env": engine_env,
                          "bare_vllm_omp_threads": args.bare_omp_threads or "vLLM default",
                          "ray_engine_omp_threads": 1},
               "results": results, "ratios": ratios}
    args.out.write_text(json.dumps(payload, indent=2, default=str))
    say(f"\nwrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
