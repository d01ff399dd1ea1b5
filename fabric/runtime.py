"""Bring a whole fabric up and down: local cluster (or an existing one), scheduler, endpoint.

Used by the CLI and by the integration tests, so both run exactly the same path. Teardown
is belt and braces: Ray's own shutdown first, then any process this one started that is
still alive (raylets, workers, vLLM engine cores, HAProxy) is terminated, so nothing is
left behind — also after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import psutil

from fabric.cluster import LOCAL_IP, ClusterError, LocalCluster, connect, port_in_use
from fabric.spec import FabricSpec


@dataclass
class Fabric:
    spec: FabricSpec
    base_url: str
    model_source: str
    cluster: LocalCluster | None = None
    regional_urls: dict[str, str] = field(default_factory=dict)
    model_sources: dict[str, str] = field(default_factory=dict)
    model_urls: dict[str, str] = field(default_factory=dict)   # each model's no-hop endpoint
    tenant_api_url: str = ""   # the tenants' own API: usage, deferred work
    ledger_path: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def check_endpoint_port(spec: FabricSpec) -> None:
    if port_in_use(spec.endpoint.host, spec.endpoint.port):
        raise ClusterError(
            f"port {spec.endpoint.port} on {spec.endpoint.host} is already in use; stop what holds "
            f"it or choose another with --port")


@contextlib.contextmanager
def running_fabric(spec: FabricSpec, model: str | None = None, address: str | None = None,
                   step: Callable[[str], None] = lambda msg: None,
                   dashboard: bool = False, autoscale: bool = False) -> Iterator[Fabric]:
    """Start (or connect to) a cluster, deploy the fabric, yield it, and tear it all down.
    ``autoscale``: a local cluster whose site raylets Ray's autoscaler starts and releases
    (``LocalCluster.autoscale``)."""
    from fabric.model import model_sources

    check_endpoint_port(spec)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    timings: dict[str, float] = {}
    t = time.perf_counter()
    step("model")
    sources = model_sources(spec, model)
    timings["model_s"] = time.perf_counter() - t
    cluster = None
    try:
        t = time.perf_counter()
        if address:
            step(f"connecting to {address}")
            connect(address)
        else:
            step(f"starting local cluster: head + {len(spec.sites)} site raylets"
                 + (" (started and released by Ray's autoscaler)" if autoscale else ""))
            cluster = LocalCluster(spec, dashboard=dashboard, autoscale=autoscale).start()
            connect(cluster.address, node_ip=LOCAL_IP)
        timings["cluster_s"] = time.perf_counter() - t
        from fabric.internals import hooks_report
        broken = hooks_report()  # an upgrade that moved an internal: say so now, not in a metric
        if broken:
            logging.getLogger("fabric").warning(broken)
            step(f"warning: {broken}")

        from fabric.layers.distribution import deploy, warm_up
        from fabric.layers.scheduler import start_scheduler

        from fabric.layers.stack import start_layers

        t = time.perf_counter()
        step("starting power, site and GPU actors")
        start_layers(spec, nodes_may_come=autoscale or bool(address))
        step("starting scheduler and token ledger")
        start_scheduler(spec)
        from fabric.metering import default_ledger_path
        from fabric.metering.ledger import start_ledger
        from fabric.spec import ROLE_LABEL
        ledger_path = spec.metering.path or str(default_ledger_path())
        start_ledger(ledger_path, {ROLE_LABEL: "head"})
        step(f"deploying {', '.join(m.id for m in spec.models)} (vLLM engines start), the "
             "regional endpoints and the tenants' API")
        base_url, internal_key = deploy(spec, sources)
        from fabric.layers.distribution import model_urls
        from fabric.layers.gateway import regional_urls
        from fabric.layers.tenant_api import api_url
        urls = model_urls(spec)
        regional = regional_urls(spec)
        tenant_api_url = api_url(spec)
        from fabric.layers.deferred import start_deferred
        start_deferred(spec, str(Path(ledger_path) / "deferred"), internal_key, {ROLE_LABEL: "head"})
        step("warming up replicas")
        for m in spec.models:
            warm_up(urls[m.id], m.id, requests=2 * len(spec.hosting_sites(m)), api_key=internal_key)
        timings["deploy_s"] = time.perf_counter() - t
        yield Fabric(spec=spec, base_url=base_url, model_source=sources[spec.model.id],
                     model_sources=sources, model_urls=urls, cluster=cluster,
                     regional_urls=regional, tenant_api_url=tenant_api_url, ledger_path=ledger_path,
                     timings=timings)
    finally:
        step("shutting down")
        teardown(cluster, before, delete_only=address is not None)


def teardown(cluster: LocalCluster | None, keep_pids: set[int], delete_only: bool = False) -> None:
    import ray

    # Ctrl-C during teardown must not leave half a cluster behind.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if delete_only and ray.is_initialized():
            from ray import serve

            from fabric.layers.distribution import APP_NAME
            from fabric.layers.stack import stop_layers

            with contextlib.suppress(Exception):
                for name in serve.status().applications:
                    if name in (APP_NAME, "tenant-api") or name.startswith(("region-", "model-")):
                        serve.delete(name)
            with contextlib.suppress(Exception):
                stop_layers()
        started = [p for p in _descendants() if p.pid not in keep_pids]
        # let engines hand over their last usage records (only if connected: Ray's get_actor
        # would otherwise connect to whatever cluster this machine last started, and hang)
        with contextlib.suppress(Exception):
            if not ray.is_initialized():
                raise RuntimeError("not connected")
            from fabric.layers.naming import NAMESPACE
            from fabric.metering.ledger import LEDGER_NAME
            time.sleep(1.0)
            ray.get(ray.get_actor(LEDGER_NAME, namespace=NAMESPACE).flush.remote(), timeout=10)
        with contextlib.suppress(Exception):
            ray.shutdown()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()
        started += [p for p in _descendants() if p.pid not in keep_pids]
        reap(started)
    finally:
        signal.signal(signal.SIGINT, old)


def _descendants() -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process().children(recursive=True)
    return []


def reap(procs: list[psutil.Process], grace_s: float = 5.0) -> list[int]:
    """Terminate, then kill, whichever of these processes are still alive. Returns the pids
    that had to be stopped here."""
    alive = [p for p in {p.pid: p for p in procs}.values() if _alive(p)]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for p in still:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return [p.pid for p in alive]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def quiet_output(log_path: str) -> Iterator[object]:
    """Send this process's (and its children's) stdout/stderr to ``log_path``; yield a file
    object on the real terminal for the user-facing report."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        terminal.close()
