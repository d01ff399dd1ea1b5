"""An agent workload from Python: N concurrent agents × M steps against a running fabric.

Start the fabric first (`.venv/bin/fabric up`), then: python examples/agent_workload.py
"""

import sys

from rich.console import Console

from fabric.client import AgentWorkload, run_with_progress

if __name__ == "__main__":
    base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1"
    console = Console()
    report = run_with_progress(base_url, AgentWorkload(agents=8, steps=4, max_tokens=48),
                               console=console)
    report.render(console)
