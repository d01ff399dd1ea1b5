"""token-fabric: produce, distribute, schedule and meter LLM tokens across regions and sites."""

from fabric.cluster import apply_data_path_env as _apply_data_path_env

# Ray Serve reads its data-path switches (direct streaming, HAProxy) when its modules are first
# imported, so they are set here, before any of them can be: importing fabric first is enough.
_apply_data_path_env()
