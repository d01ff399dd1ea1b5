"""Layer 5: token distribution — the fabric's OpenAI-compatible endpoints on Ray Serve.

Each model is its own app, served in Ray Serve LLM's direct-streaming mode: HAProxy on the
head asks the app's ingress router for a replica (our FabricRequestRouter decides), then
streams bytes straight between the client and that replica's vLLM OpenAI server. No Python hop
per token. A fabric with one model serves it at ``/v1``; with several, each model's app is at
``/models/<slug>/v1`` and ``/v1`` is a gateway that chooses the model (by name, tier hint or
classifier: ``fabric.layers.gateway``) — the one choice a per-model router cannot make. The
apps deployed are the list ``fabric serve-config`` writes (``fabric.serve_config``).
"""

from __future__ import annotations

from fabric.spec import FabricSpec, ModelSpec, model_slug

APP_NAME = "fabric"


def model_prefix(spec: FabricSpec, model: ModelSpec) -> str:
    return "/" if len(spec.models) == 1 else f"/models/{model_slug(model.id)}"


def model_app_name(spec: FabricSpec, model: ModelSpec) -> str:
    return APP_NAME if len(spec.models) == 1 else f"model-{model_slug(model.id)}"


def model_urls(spec: FabricSpec) -> dict[str, str]:
    """Each model's own (no-hop) OpenAI base URL."""
    root = f"http://{spec.endpoint.host}:{spec.endpoint.port}"
    return {m.id: root + model_prefix(spec, m).rstrip("/") + "/v1" for m in spec.models}


def check_data_path() -> None:
    from fabric.internals import data_path_flags

    if not all(data_path_flags().values()):
        raise RuntimeError("Ray Serve was imported before fabric, so the no-hop data path "
                           "(direct streaming + HAProxy) is off: import fabric first")


def deploy(spec: FabricSpec, sources: dict[str, str]) -> tuple[str, str]:
    """Start Serve on the head and deploy every app of ``fabric serve-config``'s list (the
    models, the gateways, the tenants' API). Returns the OpenAI base URL and the fabric's own
    API key for this deployment (warm-up, health checks; never stored)."""
    import importlib
    import secrets

    from ray import serve

    from fabric.serve_config import fabric_apps

    def builder(path: str):  # "module:attr", as a Serve config's import_path
        module, _, attr = path.partition(":")
        return getattr(importlib.import_module(module), attr)

    check_data_path()
    serve.start(http_options={"host": spec.endpoint.host, "port": spec.endpoint.port},
                proxy_location="HeadOnly")
    internal_key = secrets.token_urlsafe(24)
    for app in fabric_apps(spec, sources, internal_key):
        serve.run(builder(app["import_path"])(app["args"]), name=app["name"],
                  route_prefix=app["route_prefix"], blocking=False,
                  external_scaler_enabled=app.get("external_scaler_enabled", False))
    return base_url(spec), internal_key


def base_url(spec: FabricSpec) -> str:
    return f"http://{spec.endpoint.host}:{spec.endpoint.port}/v1"


def warm_up(url: str, model_id: str, requests: int, api_key: str, timeout_s: float = 180.0) -> None:
    """One short request per replica before real traffic: the first batch of a fresh vLLM
    CPU engine is slow, and that start-up cost is not the fabric's steady-state latency."""
    import httpx

    body = {"model": model_id, "messages": [{"role": "user", "content": "warm up"}],
            "max_tokens": 4}
    with httpx.Client(timeout=timeout_s, headers={"authorization": f"Bearer {api_key}"}) as client:
        for _ in range(requests):
            client.post(f"{url}/chat/completions", json=body).raise_for_status()
