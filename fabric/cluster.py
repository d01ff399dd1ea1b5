"""A real multi-node Ray cluster on one machine: a head plus one raylet per site.

Each site raylet carries the spec's region and site as node labels and a custom resource
for vLLM replica slots, so placement is decided by Ray's scheduler exactly as on a
``ray up`` cluster, never by convention.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path

from fabric.internals import FAKE_HEAD_NODE_ID, FAKE_NODE_PROVIDER
from fabric.spec import (EDGE_LABEL, LLM_SLOT_RESOURCE, REGION_LABEL, ROLE_LABEL, SITE_LABEL,
                         FabricSpec)

# Ray Serve LLM's no-hop data path: HAProxy streams from the client straight to the engine's
# own HTTP server; the request router only picks the replica. Read at import time by Ray,
# and inherited by every raylet this process starts.
DATA_PATH_ENV = {
    "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # The fabric's router reads request hints (e.g. metadata.fabric_region) from the body that
    # HAProxy forwards with its "which replica?" question; 256 KiB covers the hints when they
    # lead the body (regional endpoints put them first).
    "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1",
    "RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_BUFSIZE": str(256 * 1024),
    # A request whose engine dies before answering (empty response, 500/502/504) is replayed
    # on another replica; a stream that has begun is not (it ends with an error event).
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response response-timeout 500 502 504",
    "RAY_SERVE_HAPROXY_RETRIES": "3",
    # Hermetic local clusters: no token file in $HOME, no usage stats phone-home.
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


# The local cluster keeps all its traffic on loopback.
LOCAL_IP = "127.0.0.1"

# Ray and Serve settings for a cluster at rest on one small machine (bench/idle.py measures
# them; every Ray worker process already wakes 100 times a second to check for signals, so
# what is left to save is loops that run faster than anything they watch changes):
QUIET_ENV = {
    # Serve's controller reconciles every deployment ten times a second by default; twice is
    # plenty for a fabric whose deployments change when the scheduler parks or drains a site
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    # replicas and routers export their cached request metrics every 100 ms by default
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    # each node's dashboard agent checks that its raylet lives every 0.4 s by default
    "RAY_DASHBOARD_AGENT_CHECK_PARENT_INTERVAL_S": "2",
    # and reads every process's CPU and memory for the dashboard every 5 s by default
    "REPORTER_UPDATE_INTERVAL_MS": "10000",
}
# The fabric's own hook in Serve's controller: each model's ingress request router on the head
# only (fabric.internals.ingress_routers_on_the_head), where the HeadOnly proxy asks it.
ROUTERS_ON_THE_HEAD_ENV = {
    "RAY_SERVE_CONTROLLER_CALLBACK_IMPORT_PATH": "fabric.internals:ingress_routers_on_the_head",
}
QUIET_SYSTEM_CONFIG = {
    # no pool of idle workers kept or started ahead: the fabric's work runs in actors, and
    # each idle worker is a Python process waking 100 times a second (~250 MiB each)
    "prestart_worker_first_driver": False,
    "enable_worker_prestart": False,
    "num_workers_soft_limit": 0,
}
# Head-node arguments of a local cluster: the same settings, and no log monitor (it globs the
# session's log folder ten times a second to stream workers' output to drivers, and every
# fabric driver connects with log_to_driver=False; the logs stay in the session folder)
QUIET_HEAD_ARGS = {"_system_config": QUIET_SYSTEM_CONFIG, "include_log_monitor": False}


class ClusterError(RuntimeError):
    """The cluster cannot start or be reached; the message says what to do."""


def apply_data_path_env() -> None:
    for key, value in DATA_PATH_ENV.items():
        os.environ.setdefault(key, value)


def _loopback_only() -> None:
    """Keep a one-machine cluster on 127.0.0.1. By default Ray swaps loopback for the host's
    outward address (so other machines could join); a local cluster has no other machines.
    Ray reads this switch at import in the driver and at start-up in every process it spawns."""
    from fabric.internals import loopback_only

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    loopback_only()


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A TCP port free now on every address, outside the kernel's ephemeral range. The port is
    bound by its server only later (HAProxy binds its listeners a minute after the cluster
    starts), and meanwhile the kernel may hand an ephemeral port to any process that binds
    port 0, as Ray's servers and clients do all the time: such a port was once taken under
    HAProxy's stats listener, and the fabric failed to start."""
    low = _ephemeral_low()
    # below the ephemeral range and above Ray's default worker ports (10002-19999)
    ports = list(range(20000, low)) if low > 20100 else []
    random.shuffle(ports)
    for port in ports[:500]:
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # no such range here: any port the kernel has free
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ephemeral_low() -> int:
    """The lowest port of the kernel's ephemeral range (32768 where it cannot be read: Linux's
    default, and below the 49152 of the BSDs)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def site_node_args(region, site, object_store_mb: int = 128) -> dict:
    return {
        "num_cpus": site.num_cpus,
        "resources": {LLM_SLOT_RESOURCE: site.llm_slots} if site.llm_slots else {},
        "labels": {REGION_LABEL: region.name, SITE_LABEL: site.name, ROLE_LABEL: "site",
                   EDGE_LABEL: "true" if region.edge else "false"},
        "object_store_memory": object_store_mb * 1024 * 1024,
        "node_ip_address": LOCAL_IP,
    }


def autoscaling_config(spec: FabricSpec, gcs_address: str, idle_timeout_s: float = 12.0) -> dict:
    """A cluster-launcher config whose worker node types are the spec's sites (one raylet
    each, its labels and resources), started and released on this machine by Ray's fake
    multi-node provider — the same autoscaler a ``ray up`` cluster runs, with processes for
    machines. Sites start on demand (min_workers 0): an engine placed there brings its node up;
    a node left with nothing on it (a parked site's, handed back) is released."""
    types = {"ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0}}
    for region in spec.regions:
        for site in region.sites:
            args = site_node_args(region, site)
            types[site.name] = {
                "resources": {"CPU": args["num_cpus"], **args["resources"],
                              "object_store_memory": args["object_store_memory"]},
                "labels": args["labels"], "node_config": {},
                "min_workers": 0, "max_workers": 1}
    return {"cluster_name": f"fabric-{spec.name}", "max_workers": len(types) - 1,
            "idle_timeout_minutes": idle_timeout_s / 60.0, "upscaling_speed": 1.0,
            "provider": {"type": "external", "gcs_address": gcs_address,
                         "module": FAKE_NODE_PROVIDER,
                         "launch_multiple": True, "head_node_id": FAKE_HEAD_NODE_ID,
                         "disable_node_updaters": True},
            "head_node_type": "ray.head.default", "available_node_types": types,
            "auth": {"ssh_user": "fabric"}, "docker": {}, "file_mounts": {},
            "cluster_synced_files": [], "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": []}


@dataclass
class LocalCluster:
    """Head + one raylet per site, all on this machine. Use as a context manager.
    ``autoscale``: the site raylets are started and released by Ray's autoscaler (a fake
    multi-node provider: processes for machines) as engines need them, not up front."""

    spec: FabricSpec
    head_cpus: float = 4
    dashboard: bool = False
    autoscale: bool = False
    _cluster: object = field(default=None, init=False, repr=False)

    @property
    def address(self) -> str:
        return self._cluster.address

    def start(self) -> "LocalCluster":
        apply_data_path_env()
        for key, value in {**QUIET_ENV, **ROUTERS_ON_THE_HEAD_ENV}.items():
            os.environ.setdefault(key, value)  # inherited by every raylet and worker
        _loopback_only()
        # HAProxy's stats and metrics listeners have fixed default ports; give each local
        # cluster its own so two fabrics (or a fabric and the tests) can share a machine.
        os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
        os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
        from ray.cluster_utils import Cluster

        head_port = free_port()
        scaling = {}
        if self.autoscale:
            import json
            import tempfile

            config = autoscaling_config(self.spec, f"{LOCAL_IP}:{head_port}")
            with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="fabric-autoscaling-",
                                             delete=False) as f:
                json.dump(config, f)
            scaling = {"autoscaling_config": f.name}
            # the autoscaler (v2) with its fake provider: the head carries the provider's id
            # (set for the head's processes only; put back once they started)
            env = {"RAY_FAKE_CLUSTER": "1", "RAY_enable_autoscaler_v2": "1",
                   "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID, "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                   "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID}
            self._saved_env = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
        try:
            self._cluster = Cluster(initialize_head=True, head_node_args={
                "gcs_server_port": head_port,
                "num_cpus": self.head_cpus,
                "labels": {ROLE_LABEL: "head"},
                "include_dashboard": self.dashboard,
                # several local clusters may share a machine (a federation's members): the
                # dashboard takes 8265 or the next free port (None: Ray tries 50 from 8265),
                # its agent a port nobody holds
                "dashboard_port": None,
                "dashboard_agent_listen_port": free_port(),
                "object_store_memory": 256 * 1024 * 1024,
                "node_ip_address": LOCAL_IP,
                **QUIET_HEAD_ARGS,
                **scaling,
            })
            self._restore_env()
            if not self.autoscale:
                for region in self.spec.regions:
                    for site in region.sites:
                        self._cluster.add_node(**site_node_args(region, site))
            self._cluster.wait_for_nodes()
        except Exception as exc:
            self.shutdown()
            raise ClusterError(f"could not start the local Ray cluster: {exc}") from exc
        return self

    def _restore_env(self) -> None:
        for key, value in getattr(self, "_saved_env", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}

    def shutdown(self) -> None:
        self._restore_env()
        if self._cluster is None:
            return
        address = self._cluster.address
        try:
            self._cluster.shutdown()
        finally:
            self._cluster = None
            forget_session_pointer(address)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()


def forget_session_pointer(address: str) -> bool:
    """Remove Ray's "current cluster" pointer (``ray_current_cluster`` in Ray's temp folder)
    when it still names this cluster: left behind, it makes the machine's next plain
    ``ray.init(num_cpus=...)`` try to join the dead cluster and fail. Returns whether it did."""
    from fabric.internals import ray_address_file

    path = ray_address_file()
    try:
        with open(path) as f:
            if f.read().strip() != address:
                return False  # another cluster's: not ours to remove
        os.remove(path)
    except OSError:
        return False
    return True


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at a host:port address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "ray://...": let Ray resolve it
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address!r} ({exc.strerror or exc}). Start one with "
            "`ray up cluster.yaml` (or `ray start --head`), or leave out --address to start a "
            "local cluster.") from None


def connect(address: str, namespace: str = "fabric", node_ip: str | None = None) -> None:
    """Connect this process to a running cluster, with a useful error when it is not there.
    ``node_ip`` must match the local raylets' address when they were bound to loopback."""
    import ray

    apply_data_path_env()
    _check_reachable(address)
    if address.split(":")[0] in ("127.0.0.1", "localhost"):  # a loopback-only local cluster
        _loopback_only()
        node_ip = node_ip or LOCAL_IP
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False,
                 logging_level="ERROR", ignore_reinit_error=True,
                 **({"_node_ip_address": node_ip} if node_ip else {}))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address!r} ({exc}). Start one with `ray up cluster.yaml` "
            "(or `ray start --head`), or leave out --address to start a local cluster."
        ) from None
