"""One fabric over two Ray clusters: two member fabrics (each `fabric up` on a cluster of its
own, one small engine each) and `fabric federate` in front of them, all on this machine."""

import concurrent.futures as cf
import hashlib
import json
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from conftest import wait_for
from fabric.cluster import free_port
from procs import FABRIC, Watched, assert_nothing_left_behind

pytestmark = [pytest.mark.integration, pytest.mark.own_fabric]
KEY = {"authorization": "Bearer fabric-local"}  # the demo tenant, known to both members
MSG = [{"role": "user", "content": "which member?"}]
SEEK = """
import sys, ray
from fabric.cluster import connect
from fabric.layers import naming
connect(sys.argv[1])
sites = ray.get_actor(naming.SITES, namespace=naming.NAMESPACE)
print(ray.get(sites.seek.remote(sys.argv[2], float(sys.argv[3])))["curtailed"])
"""


class Member:
    """A member fabric: its spec (the shipped one, with this test's ports and ledger) and its
    `fabric up` run, recorded in a cache folder of its own."""

    def __init__(self, name: str, tmp_path):
        from fabric.spec import load_spec

        self.name, self.port, self.tmp = name, free_port(), tmp_path
        self.key = f"{name}-operator"
        spec = load_spec(f"deployments/federation/{name}.yaml")
        spec.endpoint.port = self.port
        spec.endpoint.operator_key_sha256 = hashlib.sha256(self.key.encode()).hexdigest()
        spec.metering.path = str(tmp_path / f"{name}-ledger")
        self.spec_path = tmp_path / f"{name}.yaml"
        self.spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        self.site = spec.sites[0][1].name
        self.cut = spec.sites[0][1].power.curtailments[0]
        self.cache = tmp_path / f"{name}-cache"
        self.run = None

    def start(self) -> "Member":
        self.run = Watched("up", "--spec", str(self.spec_path), "--log-file",
                           str(self.tmp / f"{self.name}-{time.time():.0f}.log"),
                           env={"TOKEN_FABRIC_CACHE": str(self.cache)})
        return self

    def wait(self) -> None:
        assert self.run.wait_for(r"serving", timeout=600), self.run.output

    @property
    def address(self) -> str:
        return json.loads((self.cache / "run" / "current.json").read_text())["address"]

    def seek(self, offset_s: float) -> bool:
        r = subprocess.run([sys.executable, "-c", SEEK, self.address, self.site, str(offset_s)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr[-2000:]
        return r.stdout.strip().splitlines()[-1] == "True"

    def own_usage(self) -> dict:
        """The member's own ledger, as its operator reads it (no federation in between)."""
        r = httpx.get(f"http://127.0.0.1:{self.port}/fabric/v1/federation/usage",
                      params={"group_by": "tenant"},
                      headers={"authorization": f"Bearer {self.key}"}, timeout=60)
        assert r.status_code == 200, r.text
        return {row["tenant"]: row for row in r.json()["rows"]}

    def stop(self) -> None:
        if self.run is not None and self.run.proc.poll() is None:
            self.run.proc.terminate()  # as `fabric down` does: the fabric tears itself down
            assert self.run.finish(timeout=200) == 0, self.run.output[-3000:]
        assert self.run.survivors() == []


def federation_spec(tmp_path, members) -> tuple:
    port = free_port()
    spec = {"name": "test-federation", "listen": {"host": "127.0.0.1", "port": port},
            "tick_s": 1.0, "health": {"timeout_s": 2.0, "readmit_after": 3}, "retries": 2,
            "members": [{"name": m.name, "url": f"http://127.0.0.1:{m.port}",
                         "regions": [m.name], "operator_key": m.key} for m in members]}
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, port


def ask(url: str, path: str = "/v1/chat/completions", metadata=None, timeout=120):
    body = {"model": "tiny-llama", "messages": MSG, "max_tokens": 4}
    if metadata:
        body = {"metadata": metadata, **body}
    r = httpx.post(url + path, json=body, headers=KEY, timeout=timeout)
    return r.status_code, r.headers.get("x-fabric-member"), r.headers.get("x-fabric-region"), r


@pytest.mark.timeout(1800)  # two clusters start, one is killed and started again
def test_federation_routes_by_policy_fails_over_and_merges_usage(tmp_path):
    west, east = Member("west", tmp_path), Member("east", tmp_path)
    fed = None
    try:
        west.start(), east.start()
        west.wait(), east.wait()
        fed_path, fed_port = federation_spec(tmp_path, [west, east])
        url = f"http://127.0.0.1:{fed_port}"
        fed = Watched("federate", "--spec", str(fed_path))
        assert fed.wait_for(r"serving", timeout=60), fed.output

        def status():
            return httpx.get(url + "/fabric/v1/federation/status", timeout=10).json()

        def states():
            return {m["name"]: m["state"] for m in status()["members"]}

        wait_for("both members in", lambda: states() == {"west": "in", "east": "in"}, timeout=60)

        # pinned requests reach only their region's member; unpinned ones follow the policy
        for m in (west, east):
            for _ in range(3):
                code, member, region, r = ask(url, f"/{m.name}/v1/chat/completions")
                assert (code, member, region) == (200, m.name, m.name), r.text
        code, member, _, _ = ask(url, metadata={"fabric_privacy": "edge"})
        assert (code, member) == (200, "west")  # only west holds an edge region
        weights = status()["table"]["weights"]
        cheap = max(weights, key=weights.get)  # east-a: hydro at $45/MWh
        assert cheap == "east-a", weights
        served = [ask(url)[1] for _ in range(12)]
        assert served.count("east") >= 9, served

        # a curtailment in east moves unpinned traffic to west within two of the federation's
        # ticks, with no failed request
        assert east.seek(east.cut.start_s)  # returns once east's grid is cut
        before = status()["ticks"]
        shed = wait_for("east-a shed by the federation", lambda: (s := status())["table"][
            "weights"].get("east-a", 1) == 0 and s, timeout=30, every=0.1)
        assert shed["ticks"] - before <= 2, (before, shed["ticks"])
        during = [ask(url) for _ in range(8)]
        assert all(code == 200 and member == "west" for code, member, _, _ in during), during
        east.seek(east.cut.start_s + east.cut.duration_s + 3600)  # its power is back
        wait_for("east-a weighted again", lambda: status()["table"]["weights"].get("east-a", 0) > 0,
                 timeout=120)

        # east's whole cluster killed mid-load (64 clients sending non-stop): requests east had
        # not answered are tried again on west, pinned requests to east get a 503 that says
        # why, nothing hangs
        results, stop = [], False

        def client():
            while not stop:
                code, member, _, r = ask(url, timeout=180)
                results.append((code, member, "" if code == 200 else r.text, time.time()))

        with cf.ThreadPoolExecutor(64) as pool:
            clients = [pool.submit(client) for _ in range(64)]
            wait_for("load on east", lambda: sum(r[1] == "east" for r in results) >= 64,
                     timeout=120, every=0.2)
            killed_at = time.time()
            killed = east.run.kill_tree()
            wait_for("load moved to west", lambda: sum(
                r[1] == "west" and r[3] > killed_at for r in results) >= 64, timeout=120, every=0.2)
            stop = True
            for c in clients:
                c.result()
        assert killed > 5
        failed = [r for r in results if r[0] != 200]
        # only a request that every member it was tried on failed may fail, and it says so
        assert all(r[0] == 503 and "no member could take" in r[2] and "east" in r[2]
                   for r in failed), failed[:5]
        print(f"\nmember killed under 64 concurrent clients: {len(results)} requests, "
              f"{len(failed)} failed, {sum(r[1] == 'east' for r in results)} served by east "
              f"(before it died), {sum(r[1] == 'west' for r in results)} by west")
        wait_for("east out of the table", lambda: states()["east"] == "out", timeout=10, every=0.2)
        code, _, _, r = ask(url, "/east/v1/chat/completions")
        assert code == 503 and "held by member 'east'" in r.json()["error"]["message"], r.text
        after = [ask(url) for _ in range(6)]
        assert all(code == 200 and member == "west" for code, member, _, _ in after), after

        # east comes back (its ledger kept): readmitted after good snapshots in a row
        east.start().wait()
        wait_for("east readmitted", lambda: states()["east"] == "in", timeout=120)
        code, member, _, r = ask(url, "/east/v1/chat/completions")
        assert (code, member) == (200, "east"), r.text
        wait_for("unpinned traffic back on east", lambda: ask(url)[1] == "east", timeout=120)

        # usage: the federation's totals are the members' own, summed (nothing copied twice)
        time.sleep(3)  # the engines hand their last records over (every 0.5 s) and flush
        own = [m.own_usage().get("demo", {"requests": 0}) for m in (west, east)]
        cli = subprocess.run([*FABRIC, "usage", "--federation", str(fed_path), "--json"],
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        merged = {row["tenant"]: row for row in json.loads(cli.stdout)["rows"]}
        assert merged["demo"]["requests"] == own[0]["requests"] + own[1]["requests"]
        ok = sum(1 for r in results if r[0] == 200)
        # east lost what its engine had not yet handed to its ledger when it was killed
        assert merged["demo"]["requests"] >= ok - 64, (merged, ok)
        tenant = httpx.get(url + "/fabric/v1/usage", headers=KEY, timeout=60)
        assert tenant.status_code == 200, tenant.text
        assert tenant.json()["totals"]["requests"] == merged["demo"]["requests"]
        assert tenant.json()["complete"] and set(tenant.json()["members"]) == {"west", "east"}
        bad = httpx.get(url + "/fabric/v1/usage", headers={"authorization": "Bearer nope"}, timeout=60)
        assert bad.status_code == 401
    finally:
        if fed is not None and fed.proc.poll() is None:
            fed.proc.terminate()
            fed.finish(timeout=30)
        for m in (west, east):
            if m.run is not None:
                m.stop()
    assert fed is None or fed.survivors() == []
    for m in (west, east):
        assert_nothing_left_behind(None, m.port)
