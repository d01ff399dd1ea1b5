"""Layer 7, agents: workloads as data (``workload``), agents as asyncio tasks (``agent``), many
agents per Ray actor (``swarm``), and ``run`` to drive a workload through the fabric."""

from fabric.agents.workload import Workload, list_workloads, load_workload


def run(*args, **kwargs):
    """See ``fabric.agents.runner.run`` (imported lazily: it needs Ray and aiohttp)."""
    from fabric.agents.runner import run as _run

    return _run(*args, **kwargs)


__all__ = ["Workload", "list_workloads", "load_workload", "run"]
