"""Agent swarms from Python: run a workload inside the fabric's Ray cluster.

Start the fabric first (`.venv/bin/fabric up`), then: python examples/agent_swarm.py [WORKLOAD]
(WORKLOAD: coding, support, health_records, batch_summariser, or a YAML file).
"""

import sys

from rich.console import Console

import fabric.agents
from fabric.cluster import connect
from fabric.status import read_run

if __name__ == "__main__":
    run = read_run()
    if not run:
        sys.exit("no running fabric: start one with `fabric up`")
    connect(run["address"])
    console = Console()
    report = fabric.agents.run(sys.argv[1] if len(sys.argv) > 1 else "support", agents=24,
                               duration_s=60, base_url=run["base_url"], console=console)
    report.render(console)
