"""Layer 4: token generators — vLLM replicas served through ``ray.serve.llm``.

One deployment per model whose replicas spread over the sites (one LLM slot resource per
site raylet, restricted by label to the spec's regions). Each replica publishes its site
and region so the request router can apply the routing table, and stamps them on every
HTTP response (``x-fabric-region`` / ``x-fabric-site``) from inside the engine's own app:
no extra hop.

The package, one job per module: ``tap`` (load meter and per-response token tap),
``guard`` (the hint guard), ``middleware`` (the data path, one usage record per request),
``stats`` (the engine's scheduler stats) and ``server`` (the replica and its LLMConfig).
Only ``server`` imports Serve and vLLM; it is loaded on first use of its names here.
"""

from __future__ import annotations

_SERVER = ("FabricLLMServer", "llm_config", "llm_config_fields", "CPU_ENGINE_DEFAULTS",
           "CPU_ENGINE_ENV")


def __getattr__(name: str):
    if name in _SERVER:
        from fabric.layers.llm import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
