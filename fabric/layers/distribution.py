"""Layer 5: token distribution — the fabric's OpenAI-compatible endpoint on Ray Serve.

Served in Ray Serve LLM's direct-streaming mode: HAProxy on the head asks the app's
ingress router for a replica (our FabricRequestRouter decides), then streams bytes straight
between the client and that replica's vLLM OpenAI server. No Python hop per token.
"""

from __future__ import annotations

from fabric.spec import FabricSpec

APP_NAME = "fabric"


def deploy(spec: FabricSpec, model_source: str) -> tuple[str, str]:
    """Start Serve on the head and deploy the model app. Returns the OpenAI base URL and the
    fabric's own API key for this deployment (warm-up, health checks; never stored)."""
    import secrets
    from ray import serve
    from ray.llm._internal.serve import constants as llm_constants
    from ray.serve._private import constants as serve_constants
    from ray.serve.llm import build_openai_app

    from fabric.layers.llm import llm_config

    if not (serve_constants.RAY_SERVE_ENABLE_HA_PROXY
            and llm_constants.RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING
            and serve_constants.RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY):
        raise RuntimeError("Ray Serve was imported before fabric, so the no-hop data path "
                           "(direct streaming + HAProxy) is off: import fabric first")

    serve.start(http_options={"host": spec.endpoint.host, "port": spec.endpoint.port},
                proxy_location="HeadOnly")
    internal_key = secrets.token_urlsafe(24)
    app = build_openai_app({"llm_configs": [llm_config(spec, spec.model, model_source, internal_key)]})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
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
