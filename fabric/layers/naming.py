"""One naming scheme for every fabric actor, so the Ray dashboard reads like the stack."""

NAMESPACE = "fabric"
SCHEDULER = "fabric:scheduler"


SITES = "fabric:sites"  # every site's AIFactory (layer 2) with its PowerGrid (layer 1)


def gpu(site: str, node_id: str) -> str:
    return f"fabric:gpu:{site}:{node_id[:8]}"


def gpu_prefix(site: str) -> str:
    return f"fabric:gpu:{site}:"
