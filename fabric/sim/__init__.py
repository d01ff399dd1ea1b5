"""Offline, trace-driven simulator of the fabric, driven by the live scheduling policies.

Pure of Ray: it builds the same ``Snapshot`` the scheduler actor builds each tick, asks the
same ``Policy`` for a routing table, and routes arrivals by it, so what it measures (SLOs,
energy, cost, carbon, drops) is what the live policies would do at a scale no test cluster
reaches. ``fabric.sim.command.simulate`` is the one-call entry point.
"""

from fabric.sim.engine import SimConfig, Simulator
from fabric.sim.results import SimResult

__all__ = ["SimConfig", "SimResult", "Simulator"]
