"""The TokenLedger actor (``fabric:ledger``): receives usage records from every engine
replica and keeps them durably (``fabric.metering.store``). Named, detached, restartable:
after a restart it recovers its write-ahead log, and senders retry what it had not
acknowledged, so nothing acknowledged is lost and nothing is counted twice."""

from __future__ import annotations

import asyncio
import time

import ray

from fabric.metering.recent import RecentWindow
from fabric.metering.store import LedgerStore

LEDGER_NAME = "fabric:ledger"


async def hand_over(records: list[dict], ledger) -> None:
    """Send the oldest records (at most 5,000) to the ledger and drop them once it has
    acknowledged: durable in its write-ahead log. Raises if it has not (they stay to retry)."""
    batch = records[:5000]
    await ledger.append.remote(batch)
    del records[:len(batch)]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class TokenLedger:
    def __init__(self, root: str, flush_s: float = 1.0):
        self.store = LedgerStore(root)
        self.root = root
        self.flush_s = flush_s
        self.received = 0
        self.recent = RecentWindow()  # the last minutes, for the live page
        self._flusher = None

    @ray.method(enable_task_events=False)  # called every tick: no task event in the GCS
    async def append(self, records: list[dict]) -> int:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())
        self.received += len(records)
        acknowledged = self.store.append(records)
        self.recent.add(records, time.time())
        return acknowledged

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            self.store.flush()

    async def flush(self) -> int:
        return self.store.flush()

    async def recent_summary(self, window_s: float = 60.0) -> dict:
        """Per site and model over the last ``window_s`` (at most five minutes)."""
        return self.recent.summary(time.time(), min(window_s, self.recent.keep_s))

    async def info(self) -> dict:
        return {"root": self.root, "received": self.received}


def start_ledger(root: str, head_label: dict):
    from fabric.layers.naming import NAMESPACE

    actor = TokenLedger.options(name=LEDGER_NAME, namespace=NAMESPACE, lifetime="detached",
                                get_if_exists=True, label_selector=head_label).remote(root)
    ray.get(actor.info.remote())
    return actor
