"""One naming scheme for every fabric actor, so the Ray dashboard reads like the stack."""

NAMESPACE = "fabric"
SCHEDULER = "fabric:scheduler"


SITE_PREFIX = "fabric:site:"


def site(site: str) -> str:
    """A site's actor: its AIFactory (layer 2), which holds its PowerGrid (layer 1)."""
    return f"{SITE_PREFIX}{site}"


def power(site_name: str) -> str:
    """Layer 1 of a site: served by the site's actor."""
    return site(site_name)


def aidc(site_name: str) -> str:
    """Layer 2 of a site: the site's actor."""
    return site(site_name)


def gpu(site: str, node_id: str) -> str:
    return f"fabric:gpu:{site}:{node_id[:8]}"


def gpu_prefix(site: str) -> str:
    return f"fabric:gpu:{site}:"
