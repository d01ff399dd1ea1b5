"""Every use of a private Ray or vLLM API, in one place, with the versions it was written for.

The fabric leans on a few internals that Ray and vLLM do not promise to keep (Serve's hook
that builds an app's ASGI app, the stat loggers vLLM hands each step's stats to, the Serve
controller's methods, ...). Each is used only through a function here, and each is listed in
``HOOKS`` with a check of the installed packages: ``missing_hooks()`` names what an upgrade
broke, ``fabric up`` says so at start-up, and a unit test fails on it — instead of a signal
quietly turning into None in production.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from importlib import metadata
from typing import Any, Callable

logger = logging.getLogger("fabric.internals")

WRITTEN_FOR = {"ray": "2.60.0", "vllm": "0.29.0", "torch": "2.13.0"}

# Ray's fake multi-node provider (an external node provider module) and the node id it
# gives the head: the local cluster's autoscaler launches raylets as its "machines"
FAKE_NODE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"

SERVE_CONTROLLER = "SERVE_CONTROLLER_ACTOR"  # Serve's own actor and namespace names
SERVE_NAMESPACE = "serve"


def _attr(module: str, *path: str) -> Any:
    obj: Any = importlib.import_module(module)
    for name in path:
        obj = getattr(obj, name)
    return obj


def _source_mentions(module: str, owner: str, text: str) -> bool:
    return text in inspect.getsource(_attr(module, owner))


def _fields(module: str, cls: str, *names: str) -> bool:
    annotations = {}
    for klass in reversed(_attr(module, cls).__mro__):
        annotations.update(getattr(klass, "__annotations__", {}))
    return all(n in annotations for n in names)


# name -> (what the fabric uses it for, a check that it is there in the installed packages)
HOOKS: dict[str, tuple[str, Callable[[], bool]]] = {
    "ray_constants.ENABLE_RAY_CLUSTER": (
        "keep a one-machine cluster on 127.0.0.1",
        lambda: hasattr(_attr("ray._private.ray_constants"), "ENABLE_RAY_CLUSTER")),
    "serve_constants.data_path_flags": (
        "check that HAProxy, direct streaming and body forwarding are on",
        lambda: all(hasattr(_attr("ray.serve._private.constants"), n) for n in
                    ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"))
        and hasattr(_attr("ray.llm._internal.serve.constants"),
                    "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING")),
    "LLMServer.__serve_build_asgi_app__": (
        "wrap each engine's ASGI app in the fabric's middleware",
        lambda: hasattr(_attr("ray.serve.llm.deployment", "LLMServer"), "__serve_build_asgi_app__")),
    "llm_server._add_middleware_to_built_app": (
        "add the metering middleware to the built app",
        lambda: callable(_attr("ray.llm._internal.serve.core.server.llm_server",
                               "_add_middleware_to_built_app"))),
    "VLLMEngine._engine_client": (
        "reach vLLM's engine client from Serve's engine wrapper",
        lambda: _source_mentions("ray.llm._internal.serve.engines.vllm.vllm_engine", "VLLMEngine",
                                 "self._engine_client")),
    "AsyncLLM.logger_manager.record": (
        "read running/waiting requests and KV-cache use from the stats of each engine step",
        lambda: _source_mentions("vllm.v1.engine.async_llm", "AsyncLLM", "self.logger_manager")
        and callable(getattr(_attr("vllm.v1.metrics.loggers", "StatLoggerManager"), "record"))),
    "serve_common.DeploymentID": (
        "name a deployment to the Serve controller",
        lambda: callable(_attr("ray.serve._private.common", "DeploymentID"))),
    "ServeController.update_deployment_replicas/get_serve_instance_details": (
        "set a model's replica target (parking, drain) and read its replicas",
        lambda: all(hasattr(_attr("ray.serve._private.controller", "ServeController"), n)
                    for n in ("update_deployment_replicas", "get_serve_instance_details"))
        and _attr("ray.serve._private.constants", "SERVE_CONTROLLER_NAME") == SERVE_CONTROLLER
        and _attr("ray.serve._private.constants", "SERVE_NAMESPACE") == SERVE_NAMESPACE),
    "ReplicaDetails.actor_name": (
        "stop one chosen engine by its actor's name",
        lambda: "actor_name" in _attr("ray.serve.schema", "ReplicaDetails").model_fields),
    "PendingRequest.args/metadata.session_id": (
        "read a request's hints and session in the request router",
        lambda: _fields("ray.serve._private.request_router.common", "PendingRequest",
                        "args", "metadata")
        and _fields("ray.serve._private.common", "RequestMetadata", "session_id")),
    "RunningReplica.replica_metadata": (
        "learn each replica's site from its record_replica_metadata hook",
        lambda: hasattr(_attr("ray.serve.request_router", "RunningReplica"), "replica_metadata")
        and _source_mentions("ray.serve._private.replica", "UserCallableWrapper",
                             "record_replica_metadata")),
    "worker._global_node.get_session_dir_path": (
        "find this session's log directory (security checks of what was logged)",
        lambda: hasattr(_attr("ray._private.node", "Node"), "get_session_dir_path")),
    "ray_common.get_ray_address_file": (
        "remove Ray's current-cluster pointer when the fabric's local cluster stops",
        lambda: callable(_attr("ray._common.utils", "get_ray_address_file"))),
    "DeploymentState._reconcile_ingress_request_router": (
        "run each app's ingress request router on the head only, where HAProxy asks it "
        "(Serve starts one on every node with replicas)",
        lambda: callable(getattr(_attr("ray.serve._private.deployment_state", "DeploymentState"),
                                 "_reconcile_ingress_request_router", None))
        and hasattr(_attr("ray.serve._private.constants"),
                    "RAY_SERVE_CONTROLLER_CALLBACK_IMPORT_PATH")),
    "fake_multi_node.FakeMultiNodeProvider": (
        "let the autoscaler start and release the local cluster's site raylets (fabric up "
        "--autoscale: processes for machines)",
        lambda: callable(_attr(*FAKE_NODE_PROVIDER.rsplit(".", 1)))
        and _attr(FAKE_NODE_PROVIDER.rsplit(".", 1)[0], "FAKE_HEAD_NODE_ID") == FAKE_HEAD_NODE_ID),
    "distributed_c10d.ProcessGroupGloo/_Options._devices": (
        "let a CPU engine's gloo process groups share one TCP device (one loop thread, not 13)",
        lambda: hasattr(_attr("torch.distributed.distributed_c10d", "ProcessGroupGloo"),
                        "create_default_device")
        and hasattr(_attr("torch.distributed", "ProcessGroupGloo", "_Options")(), "_devices")
        and _source_mentions("torch.distributed.distributed_c10d", "_new_process_group_helper",
                             "ProcessGroupGloo(")),
    "internal_kv._internal_kv_put/get/del": (
        "keep the spec where a restarted scheduler or Sites actor reads it (the GCS key-value "
        "store), not in an object owned by the `fabric up` process",
        lambda: all(callable(_attr("ray.experimental.internal_kv", n)) for n in
                    ("_internal_kv_put", "_internal_kv_get", "_internal_kv_del"))),
    "autoscaler.util.fillout_defaults/validate_config": (
        "validate cluster.yaml as `ray up` would",
        lambda: all(callable(_attr("ray.autoscaler._private.util", n))
                    for n in ("fillout_defaults", "validate_config"))),
}


def installed_versions() -> dict[str, str]:
    out = {}
    for package in WRITTEN_FOR:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


def missing_hooks() -> list[str]:
    """The hooks the installed Ray/vLLM no longer provide, each with what stops working."""
    missing = []
    for name, (use, check) in HOOKS.items():
        try:
            ok = bool(check())
        except Exception:  # moved, renamed, or its module gone
            ok = False
        if not ok:
            missing.append(f"{name} ({use})")
    return missing


def hooks_report() -> str | None:
    """One loud line if anything is missing (for start-up), None if all hooks are there."""
    missing = missing_hooks()
    if not missing:
        return None
    versions = ", ".join(f"{k} {v}" for k, v in installed_versions().items())
    written = ", ".join(f"{k} {v}" for k, v in WRITTEN_FOR.items())
    return (f"{len(missing)} Ray/vLLM internal(s) the fabric uses are missing from {versions} "
            f"(written for {written}): " + "; ".join(missing))


# ---- the uses themselves -----------------------------------------------------------------

def loopback_only() -> None:
    """Keep a one-machine cluster on 127.0.0.1 (Ray reads this at import in the driver)."""
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def data_path_flags() -> dict[str, bool]:
    from ray.llm._internal.serve import constants as llm_constants
    from ray.serve._private import constants as serve_constants

    return {"haproxy": bool(serve_constants.RAY_SERVE_ENABLE_HA_PROXY),
            "direct_streaming": bool(llm_constants.RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING),
            "forward_body": bool(serve_constants.RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY)}


def add_middleware(app, middleware: type, **kwargs) -> None:
    from ray.llm._internal.serve.core.server.llm_server import _add_middleware_to_built_app

    _add_middleware_to_built_app(app, middleware, **kwargs)


def wrap_stat_logger(engine, on_stats: Callable[[Any], None]) -> bool:
    """Call ``on_stats(scheduler_stats)`` with the stats vLLM hands its loggers after each
    step (no extra call). False, logged as an error, where they cannot be reached."""
    manager = getattr(getattr(engine, "_engine_client", None), "logger_manager", None)
    record = getattr(manager, "record", None)
    if record is None:
        logger.error("engine stats unavailable (running, waiting, KV-cache use will read as "
                     "unknown): vLLM's stat-logger manager is %s; %s",
                     "off (disable_log_stats?)" if manager is None and engine is not None
                     else "not found", hooks_report() or "all hooks present")
        return False

    def record_and_keep(*args, **kwargs):
        stats = kwargs.get("scheduler_stats", args[0] if args else None)
        if stats is not None:
            on_stats(stats)
        return record(*args, **kwargs)

    manager.record = record_and_keep
    return True


def deployment_id(name: str, app: str):
    from ray.serve._private.common import DeploymentID

    return DeploymentID(name=name, app_name=app)


def serve_controller():
    """The Serve controller's handle; ValueError while Serve is not running."""
    import ray

    return ray.get_actor(SERVE_CONTROLLER, namespace=SERVE_NAMESPACE)


def kill_replica(actor_name: str) -> None:
    import ray

    ray.kill(ray.get_actor(actor_name, namespace=SERVE_NAMESPACE), no_restart=True)


def request_payload(pending_request) -> Any:
    """The request body object a router sees (its ``metadata`` carries the fabric hints)."""
    return pending_request.args[0] if pending_request.args else None


def request_session(pending_request) -> str:
    return getattr(pending_request.metadata, "session_id", "") or ""


def session_dir() -> str:
    import ray

    return ray._private.worker._global_node.get_session_dir_path()


def ray_address_file() -> str:
    """Where Ray keeps the address of the cluster this machine last started."""
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def kv_put(key: str, value: bytes, namespace: str) -> None:
    """Store ``value`` in the cluster's GCS key-value store (lives as long as the GCS)."""
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, value, overwrite=True, namespace=namespace)


def kv_get(key: str, namespace: str) -> bytes | None:
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(key, namespace=namespace)


def kv_del_prefix(prefix: str, namespace: str) -> int:
    """Delete every key starting with ``prefix``; returns how many were deleted."""
    from ray.experimental.internal_kv import _internal_kv_del

    return int(_internal_kv_del(prefix, del_by_prefix=True, namespace=namespace))


def validate_cluster_config(config: dict) -> dict:
    """``config`` filled out and validated as ``ray up`` does (raises on a bad one)."""
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    filled = fillout_defaults(config)
    validate_config(filled)
    return filled


def ingress_routers_on_the_head() -> None:
    """Serve controller start-up callback (``RAY_SERVE_CONTROLLER_CALLBACK_IMPORT_PATH``, set
    by the fabric's local cluster): each app's ingress request router runs on the controller's
    node only — the head, where the HeadOnly proxy (HAProxy) asks it which replica to use.
    Serve would start one on every node that holds replicas: one idle Python process per node
    per model at rest, none of which HAProxy needs there."""
    import ray
    from ray.serve._private.deployment_state import DeploymentState

    original = DeploymentState._reconcile_ingress_request_router
    if getattr(original, "fabric_head_only", False):
        return
    head = ray.get_runtime_context().get_node_id()

    def reconcile(self, proxy_nodes):
        return original(self, {head} if head in proxy_nodes else proxy_nodes)

    reconcile.fabric_head_only = True
    DeploymentState._reconcile_ingress_request_router = reconcile


SHARE_GLOO_DEVICE_ENV = "FABRIC_SHARE_GLOO_DEVICE"


def share_gloo_device() -> None:
    """vLLM general plugin (entry point ``vllm.general_plugins``; acts only in a process whose
    environment sets ``FABRIC_SHARE_GLOO_DEVICE=1``, as the fabric's CPU engines do): every
    torch.distributed gloo group made in this process shares one TCP device.

    vLLM's CPU worker makes 13 gloo groups (world, tensor/pipeline/data/expert parallel, each a
    device group and a CPU group) even when it is the only rank, and each group's own device
    runs a loop thread that wakes every 10 ms: ~0.02 cores per engine, at rest and under load,
    for groups that one rank never uses. A gloo device is made to carry many contexts' pairs,
    so one serves them all; collectives are unchanged."""
    import datetime
    import os

    if os.environ.get(SHARE_GLOO_DEVICE_ENV) != "1":
        return
    from torch.distributed import distributed_c10d

    gloo = distributed_c10d.ProcessGroupGloo
    if getattr(gloo, "fabric_shared_device", False):
        return
    device: list = []

    class _Gloo(type(gloo)):
        def __instancecheck__(cls, obj):  # torch checks what it made against this name
            return isinstance(obj, gloo)

    class SharedDeviceGloo(gloo, metaclass=_Gloo):
        fabric_shared_device = True

        def __new__(cls, store, rank, size, timeout=datetime.timedelta(seconds=1800)):
            if not device:
                device.append(gloo.create_default_device())
            options = gloo._Options()
            options._devices = device
            options._timeout = timeout
            return gloo(store, rank, size, options)

    distributed_c10d.ProcessGroupGloo = SharedDeviceGloo
