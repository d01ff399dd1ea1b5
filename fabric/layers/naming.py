"""One naming scheme for every fabric actor, so the Ray dashboard reads like the stack."""

NAMESPACE = "fabric"
SCHEDULER = "fabric:scheduler"


def power(site: str) -> str:
    return f"fabric:power:{site}"


def aidc(site: str) -> str:
    return f"fabric:aidc:{site}"


def gpu(site: str, node_id: str) -> str:
    return f"fabric:gpu:{site}:{node_id[:8]}"


def gpu_prefix(site: str) -> str:
    return f"fabric:gpu:{site}:"
