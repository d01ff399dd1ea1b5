"""Layer 5: token distribution — the fabric's OpenAI-compatible endpoints on Ray Serve.

Each model is its own app, served in Ray Serve LLM's direct-streaming mode: HAProxy on the
head asks the app's ingress router for a replica (our FabricRequestRouter decides), then
streams bytes straight between the client and that replica's vLLM OpenAI server. No Python hop
per token. A fabric with one model serves it at ``/v1``; with several, each model's app is at
``/models/<slug>/v1`` and ``/v1`` is a gateway that chooses the model (by name, tier hint or
classifier: ``fabric.layers.gateway``) — the one choice a per-model router cannot make.
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
    """Start Serve on the head and deploy every model's app (and the model-choosing gateway
    when there are several). Returns the OpenAI base URL and the fabric's own API key for this
    deployment (warm-up, health checks; never stored)."""
    import secrets
    from ray import serve
    from ray.serve.llm import build_openai_app

    from fabric.layers.gateway import build_gateway, gateway_args
    from fabric.layers.llm.server import llm_config

    check_data_path()
    serve.start(http_options={"host": spec.endpoint.host, "port": spec.endpoint.port},
                proxy_location="HeadOnly")
    internal_key = secrets.token_urlsafe(24)
    for model in spec.models:
        app = build_openai_app({"llm_configs": [llm_config(spec, model, sources[model.id], internal_key)]})
        serve.run(app, name=model_app_name(spec, model), route_prefix=model_prefix(spec, model),
                  blocking=False, external_scaler_enabled=True)  # the scheduler sets replicas
    if len(spec.models) > 1:
        from fabric.metering.tenants import key_hash

        args = gateway_args(spec, model_urls(spec), None, key_hash(internal_key))
        serve.run(build_gateway(args), name=APP_NAME,
                  route_prefix="/", blocking=False)
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
