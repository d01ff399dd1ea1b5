"""What the federation's hop costs: the same requests to a member fabric directly and through
``fabric federate`` in front of it, in the same run.

One member (``deployments/federation/west.yaml``: one small engine) is started on a local
cluster, and the federation (one member, its own process) in front of it. Closed-loop streaming
chat requests at each concurrency, alternating direct and federated levels; output lengths are
forced (``ignore_eos``) so both do the same work. Printed: requests/s and TTFT p50/p99 per
level, and the federated/direct ratios. Writes ``bench/results/federation.json``.

    .venv/bin/python bench/federation.py [--concurrency 1,16] [--requests 96]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fabric.cluster import free_port  # noqa: E402
from fabric.runtime import quiet_output, running_fabric  # noqa: E402
from fabric.spec import load_spec  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "federation.json"
KEY = {"authorization": "Bearer fabric-local"}


async def level(url: str, model: str, concurrency: int, requests: int, tokens: int) -> dict:
    """``requests`` streaming requests, ``concurrency`` at a time: req/s and TTFT."""
    ttfts: list[float] = []
    errors = 0
    todo = iter(range(requests))
    body = {"model": model, "stream": True, "max_tokens": tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": "measure the hop"}]}

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for _ in todo:
            t0 = time.perf_counter()
            first = None
            async with client.stream("POST", url + "/chat/completions", json=body) as r:
                async for chunk in r.aiter_bytes():
                    if first is None and b'"content"' in chunk:
                        first = time.perf_counter() - t0
                if r.status_code != 200:
                    errors += 1
            if first is not None:
                ttfts.append(first)

    async with httpx.AsyncClient(headers=KEY, timeout=300,
                                 limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        took = time.perf_counter() - start
    ttfts.sort()
    return {"concurrency": concurrency, "requests": requests, "errors": errors,
            "req_per_s": round(requests / took, 2),
            "ttft_p50_ms": round(statistics.median(ttfts) * 1e3, 2) if ttfts else None,
            "ttft_p99_ms": round(ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] * 1e3, 2)
            if ttfts else None}


def federation(member_url: str, key: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    spec = {"name": "bench", "listen": {"host": "127.0.0.1", "port": port}, "tick_s": 1.0,
            "members": [{"name": "west", "url": member_url, "regions": ["west"], "operator_key": key}]}
    path = log.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen([sys.executable, "-m", "fabric.cli", "federate", "--spec", str(path)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            states = httpx.get(url + "/fabric/v1/federation/status", timeout=2).json()["members"]
            if states[0]["state"] == "in":
                return proc, url + "/v1"
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the federation did not take its member in 60 s; see {log}")


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--requests", type=int, default=96, help="per level")
    ap.add_argument("--tokens", type=int, default=32, help="output tokens per request (forced)")
    ap.add_argument("--rounds", type=int, default=2, help="direct/federated pairs per level")
    args = ap.parse_args()
    spec = load_spec(ROOT / "deployments" / "federation" / "west.yaml")
    spec.endpoint.port = free_port()
    key = "bench-operator"
    spec.endpoint.operator_key_sha256 = hashlib.sha256(key.encode()).hexdigest()
    model = spec.models[0].id
    levels = [int(c) for c in args.concurrency.split(",")]
    out: dict = {"levels": []}
    with tempfile.TemporaryDirectory(prefix="bench-federation-") as tmp:
        spec.metering.path = str(Path(tmp) / "ledger")
        log = Path(tmp) / "member.log"
        print(f"member: {spec.name} (log {log}) …", flush=True)
        with quiet_output(str(log)) as terminal, running_fabric(spec) as fab:
            print("member up; starting the federation", file=terminal, flush=True)
            proc, fed_url = federation(f"http://127.0.0.1:{spec.endpoint.port}", key,
                                       Path(tmp) / "federation.log")
            try:
                asyncio.run(level(fab.base_url, model, 4, 16, args.tokens))  # warm both paths
                asyncio.run(level(fed_url, model, 4, 16, args.tokens))
                for c in levels:
                    runs = {"direct": [], "federated": []}
                    for _ in range(args.rounds):  # interleaved: drift hits both alike
                        for name, url in (("direct", fab.base_url), ("federated", fed_url)):
                            runs[name].append(asyncio.run(level(url, model, c, args.requests,
                                                                args.tokens)))
                    best = {n: max(r, key=lambda x: x["req_per_s"]) for n, r in runs.items()}
                    row = {"concurrency": c, **{n: best[n] for n in best},
                           "throughput_ratio": round(best["federated"]["req_per_s"]
                                                     / best["direct"]["req_per_s"], 3),
                           "ttft_p50_ratio": round(best["federated"]["ttft_p50_ms"]
                                                   / best["direct"]["ttft_p50_ms"], 3),
                           "ttft_p50_extra_ms": round(best["federated"]["ttft_p50_ms"]
                                                      - best["direct"]["ttft_p50_ms"], 2)}
                    out["levels"].append(row)
                    print(f"c={c:<3} direct {best['direct']['req_per_s']:7.2f} req/s TTFT p50 "
                          f"{best['direct']['ttft_p50_ms']:7.1f} ms | federated "
                          f"{best['federated']['req_per_s']:7.2f} req/s TTFT p50 "
                          f"{best['federated']['ttft_p50_ms']:7.1f} ms | ratio "
                          f"{row['throughput_ratio']:.3f}, TTFT +{row['ttft_p50_extra_ms']} ms",
                          file=terminal, flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS}")
    return out


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main()
