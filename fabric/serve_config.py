"""``fabric serve-config``: the fabric's Serve applications as a Serve config file, so
operators can manage them with ``serve deploy`` / ``serve status`` like any Serve app.

The file holds one app per model (``ray.serve.llm:build_openai_app`` with the fabric's
LLMConfig: engine server class, label placement, request router), the model-choosing gateway
when there are several models, one regional gateway per region, and the tenants' own API (usage,
deferred work). The
layer actors (power, sites, GPUs, scheduler, ledger) are not Serve apps: ``fabric up
--address`` starts them. The cluster must have been started with the data-path environment
(``fabric.cluster.DATA_PATH_ENV``, set in cluster.yaml) for direct streaming to be on.
"""

from __future__ import annotations

from fabric.spec import FabricSpec


def serve_config(spec: FabricSpec, sources: dict[str, str]) -> dict:
    """``sources``: model id -> the engine's model source (path or Hugging Face id)."""
    from fabric.layers.distribution import (APP_NAME, model_app_name, model_prefix, model_urls)
    from fabric.layers.gateway import gateway_args
    from fabric.layers.llm.server import llm_config_fields
    from fabric.layers.tenant_api import APP_NAME as TENANT_APP
    from fabric.layers.tenant_api import ROUTE_PREFIX
    from fabric.layers.ui import ui_args

    apps = [{"name": model_app_name(spec, m), "route_prefix": model_prefix(spec, m),
             "import_path": "ray.serve.llm:build_openai_app",
             "external_scaler_enabled": True,  # the scheduler sets replica targets
             "args": {"llm_configs": [llm_config_fields(spec, m, sources[m.id])]}}
            for m in spec.models]
    urls = model_urls(spec)
    if len(spec.models) > 1:
        apps.append({"name": APP_NAME, "route_prefix": "/",
                     "import_path": "fabric.layers.gateway:build_gateway",
                     "args": gateway_args(spec, urls, None)})
    for region in spec.regions:
        apps.append({"name": f"region-{region.name}", "route_prefix": f"/{region.name}",
                     "import_path": "fabric.layers.gateway:build_gateway",
                     "args": gateway_args(spec, urls, region.name)})
    apps.append({"name": TENANT_APP, "route_prefix": ROUTE_PREFIX,
                 "import_path": "fabric.layers.tenant_api:build_tenant_api",
                 "args": {"tenants": [t.model_dump() for t in spec.tenants],
                          "ui": ui_args(spec)}})
    return {"proxy_location": "HeadOnly",
            "http_options": {"host": spec.endpoint.host, "port": spec.endpoint.port},
            "applications": apps}
