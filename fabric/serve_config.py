"""``fabric serve-config``: the fabric's Serve applications as a Serve config file, so
operators can manage them with ``serve deploy`` / ``serve status`` like any Serve app.

The file holds one app per model (``ray.serve.llm:build_openai_app`` with the fabric's
LLMConfig: engine server class, label placement, request router), the gateways (with several
models one app at ``/`` that chooses the model at ``/v1`` and pins each region at
``/<region>/v1``; with one model one app per region), and the tenants' own API (usage, deferred
work, the live page). ``fabric up`` deploys the same list. The layer actors (power, sites, GPUs, scheduler, ledger) are not Serve apps: ``fabric up
--address`` starts them. The cluster must have been started with the data-path environment
(``fabric.cluster.DATA_PATH_ENV``, set in cluster.yaml) for direct streaming to be on.
"""

from __future__ import annotations

from fabric.spec import FabricSpec


def fabric_apps(spec: FabricSpec, sources: dict[str, str], internal_key: str = "") -> list[dict]:
    """Every Serve app of the fabric as a Serve config entry: what ``fabric up`` deploys and
    what ``fabric serve-config`` writes (``internal_key``: the fabric's own key for this
    deployment, left out of a written file). ``sources``: model id -> the engine's model
    source (path or Hugging Face id)."""
    from fabric.layers.distribution import model_app_name, model_prefix, model_urls
    from fabric.layers.gateway import regional_apps
    from fabric.layers.llm.server import llm_config_fields
    from fabric.layers.tenant_api import APP_NAME as TENANT_APP
    from fabric.layers.tenant_api import ROUTE_PREFIX, member_args
    from fabric.layers.ui import ui_args
    from fabric.metering.tenants import key_hash

    apps = [{"name": model_app_name(spec, m), "route_prefix": model_prefix(spec, m),
             "import_path": "ray.serve.llm:build_openai_app",
             "external_scaler_enabled": True,  # the scheduler sets replica targets
             "args": {"llm_configs": [llm_config_fields(spec, m, sources[m.id], internal_key)]}}
            for m in spec.models]
    apps += regional_apps(spec, model_urls(spec), key_hash(internal_key) if internal_key else "")
    apps.append({"name": TENANT_APP, "route_prefix": ROUTE_PREFIX,
                 "import_path": "fabric.layers.tenant_api:build_tenant_api",
                 "args": {"tenants": [t.model_dump() for t in spec.tenants],
                          "ui": ui_args(spec), "federation": member_args(spec, model_urls(spec))}})
    return apps


def serve_config(spec: FabricSpec, sources: dict[str, str]) -> dict:
    return {"proxy_location": "HeadOnly",
            "http_options": {"host": spec.endpoint.host, "port": spec.endpoint.port},
            "applications": fabric_apps(spec, sources)}
