"""The engine's scheduler stats as the fabric's signals see them."""

from __future__ import annotations


class EngineStats:
    """The engine's latest scheduler stats (running and waiting requests, KV-cache use), taken
    from the stats vLLM already hands its loggers after each step — no extra call."""

    def __init__(self) -> None:
        self.running: int | None = None
        self.waiting: int | None = None
        self.kv_cache_usage: float | None = None

    def attach(self, engine) -> bool:
        """Wrap the engine's stat-logger manager; False where its stats are off or unreachable
        (then the signals say unknown, never a made-up value)."""
        from fabric.internals import wrap_stat_logger

        return wrap_stat_logger(engine, self.keep)

    def keep(self, stats) -> None:
        self.running = getattr(stats, "num_running_reqs", None)
        self.waiting = getattr(stats, "num_waiting_reqs", None)
        self.kv_cache_usage = getattr(stats, "kv_cache_usage", None)

    def as_dict(self) -> dict:
        return {"running": self.running, "waiting": self.waiting,
                "kv_cache_usage": self.kv_cache_usage}
