"""An engine crashes under load (its vLLM EngineCore process killed): non-streaming requests
are replayed on another replica and succeed, a stream that had begun ends with an error event,
nothing hangs, and the replica comes back. Destructive: runs after the other tests."""

import re
import threading
import time
from collections import Counter

import httpx
import psutil
import pytest

from conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.destructive]
H = {"authorization": "Bearer fabric-local"}


def site_of(proc: psutil.Process, fabric) -> str | None:
    """The site whose raylet the process runs under."""
    import ray

    raylets = {n.all_processes["raylet"][0].process.pid: n.node_id
               for n in fabric.cluster._cluster.list_all_nodes()}
    labels = {n["NodeID"]: n["Labels"] for n in ray.nodes()}
    p = proc
    while p is not None:
        if p.pid in raylets:
            return labels.get(raylets[p.pid], {}).get("fabric/site")
        p = p.parent()
    return None


def engine_cores(app: str = "model-tiny-llama:") -> list[psutil.Process]:
    """The vLLM engine processes of this session's fabric (under its raylets) that serve the
    small model (their parent is that app's Serve replica)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "EngineCore" in p.name() + " ".join(p.cmdline()):
                parent = p.parent()
                if parent is not None and app in parent.name() + " ".join(parent.cmdline()):
                    out.append(p)
        except psutil.Error:
            pass
    return out


def test_engine_crash_under_load(fabric):
    url = f"{fabric.base_url}/chat/completions"
    body = {"model": fabric.spec.model.id, "messages": [{"role": "user", "content": "load"}]}
    results: list[tuple] = []
    stop = threading.Event()

    def client(i: int, stream: bool) -> None:
        # half the clients pin the edge: both small-model engines carry load, whichever dies
        pin = {"metadata": {"fabric_region": "edge"}} if i % 2 else {}
        with httpx.Client(timeout=120, headers=H) as c:
            while not stop.is_set():
                try:
                    if stream:
                        with c.stream("POST", url, json={**body, **pin, "max_tokens": 64,
                                                         "stream": True}) as r:
                            tail = b"".join(r.iter_bytes())[-400:]
                            results.append(("stream", r.status_code, tail))
                    else:
                        r = c.post(url, json={**body, **pin, "max_tokens": 16})
                        results.append(("plain", r.status_code, r.text[:200].encode()))
                except httpx.HTTPError as exc:
                    results.append(("stream" if stream else "plain", "error", repr(exc).encode()))

    threads = [threading.Thread(target=client, args=(i, i % 3 == 0), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    wait_for("requests served before the crash", lambda: len(results) >= 6, timeout=120)
    cores = engine_cores()
    assert len(cores) == 2, cores  # one small-model engine per serving site
    # the one serving the unpinned clients (cloud-a, first in merit order) dies
    [victim] = [p for p in cores if site_of(p, fabric) == "cloud-a"]
    victim.kill()
    killed_at = len(results)
    # load goes on until enough plain requests have finished since the crash (replays included)
    try:
        wait_for("plain requests after the crash", lambda: sum(
            kind == "plain" for kind, _, _ in results[killed_at:]) > 20, timeout=240)
    finally:
        stop.set()
    for t in threads:
        t.join(150)
    assert not any(t.is_alive() for t in threads), "a request hung"
    after = results[killed_at:]
    plain = Counter(status for kind, status, _ in after if kind == "plain")
    assert plain[200] > 20 and set(plain) == {200}, plain   # replayed elsewhere, all succeeded
    for kind, status, tail in after:
        if kind == "stream":  # whole, or cut with an explicit error event — never silently
            assert status == 200 and tail.rstrip().endswith(b"data: [DONE]"), tail
            assert re.search(rb'"finish_reason":"(length|stop)"', tail) or b'"error"' in tail, tail

    deadline = time.monotonic() + 240  # Serve replaces the dead replica
    while time.monotonic() < deadline and len(engine_cores()) < 2:
        time.sleep(3)
    assert len(engine_cores()) == 2, "the crashed engine did not come back"

    def serves(region: str):  # once Serve has the new replica running and routable
        r = httpx.post(url, json={**body, "max_tokens": 4, "metadata": {"fabric_region": region}},
                       headers=H, timeout=60)
        assert r.status_code in (200, 503), r.text   # 503: "no replica there ... now"
        return r.status_code == 200 and r.headers["x-fabric-site"]

    sites = {wait_for(f"the {region} engine serving", lambda: serves(region), timeout=240)
             for region in ("edge", "cloud")}
    assert sites == {"edge-a", "cloud-a"}, sites
