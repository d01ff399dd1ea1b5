"""``fabric serve-config``: the fabric's Serve applications as a Serve config file, so
operators can manage them with ``serve deploy`` / ``serve status`` like any Serve app.

The file holds the model app (``ray.serve.llm:build_openai_app`` with the fabric's LLMConfig:
engine server class, label placement, request router), one regional app per region, and the
tenants' usage API. The
layer actors (power, sites, GPUs, scheduler, ledger) are not Serve apps: ``fabric up
--address`` starts them. The cluster must have been started with the data-path environment
(``fabric.cluster.DATA_PATH_ENV``, set in cluster.yaml) for direct streaming to be on.
"""

from __future__ import annotations

from fabric.spec import FabricSpec


def serve_config(spec: FabricSpec, model_source: str) -> dict:
    from fabric.layers.distribution import APP_NAME, base_url
    from fabric.layers.llm import llm_config_fields
    from fabric.layers.usage import ROUTE_PREFIX

    cfg = llm_config_fields(spec, spec.model, model_source)
    apps = [{"name": APP_NAME, "route_prefix": "/", "import_path": "ray.serve.llm:build_openai_app",
             "args": {"llm_configs": [cfg]}}]
    for region in spec.regions:
        apps.append({"name": f"region-{region.name}", "route_prefix": f"/{region.name}",
                     "import_path": "fabric.layers.regional:build_regional",
                     "args": {"region": region.name, "upstream": base_url(spec)}})
    apps.append({"name": "usage", "route_prefix": ROUTE_PREFIX,
                 "import_path": "fabric.layers.usage:build_usage",
                 "args": {"tenants": [t.model_dump() for t in spec.tenants]}})
    return {"proxy_location": "HeadOnly",
            "http_options": {"host": spec.endpoint.host, "port": spec.endpoint.port},
            "applications": apps}
