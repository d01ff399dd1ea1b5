"""Tenants: who may use the fabric, and how much. Pure: the engine's middleware calls it.

API keys are stored only as SHA-256 hashes (in the spec and in memory) and never logged.
Limits are enforced where requests are served, in each engine replica, without a call on the
data path: each of the model's N replicas enforces 1/N of a tenant's requests/min, tokens/min
and daily budget (a local-share limiter). The router spreads a tenant's traffic over the
replicas, so the fabric-wide limit holds within that share's granularity; a session pinned to
one replica meets its share sooner. Per-minute limits count over the last 60 s (a sliding
window), so no burst of twice the limit fits across a minute boundary, and Retry-After says
when the oldest counted request leaves the window.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable


def key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def from_spec(tenants: list[dict], internal_key_hash: str | None, share: float) -> "Gatekeeper":
    """Build from the spec's tenants (as plain dicts) plus the fabric's own internal key."""
    table = {t["api_key_sha256"]: TenantLimits(
        name=t["name"], requests_per_min=t.get("requests_per_min"),
        tokens_per_min=t.get("tokens_per_min"), daily_budget_usd=t.get("daily_budget_usd"),
        allowed_privacy=tuple(t.get("allowed_privacy") or ("none", "region", "edge")),
        allowed_regions=tuple(t["allowed_regions"]) if t.get("allowed_regions") is not None else None,
        allowed_tiers=tuple(t["allowed_tiers"]) if t.get("allowed_tiers") is not None else None)
        for t in tenants}
    if table and internal_key_hash:
        table[internal_key_hash] = TenantLimits(name=Gatekeeper.INTERNAL)
    return Gatekeeper(tenants=table, share=share)


@dataclass
class Refusal:
    status: int
    message: str
    code: str
    retry_after_s: float | None = None


WINDOW_S = 60.0  # requests/min and tokens/min count over this sliding window


@dataclass
class _Window:
    """Requests and tokens of the last minute (sliding), and dollars in the current UTC day."""

    requests: deque = field(default_factory=deque)   # admission times
    tokens: deque = field(default_factory=deque)     # (time, tokens) of served requests
    token_sum: int = 0
    day: int = -1
    spent_usd: float = 0.0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]

    def retry_after(self, now: float, oldest: float | None) -> int:
        """Whole seconds until the oldest counted entry leaves the window (1..60)."""
        wait = WINDOW_S if oldest is None else oldest + WINDOW_S - now
        return max(1, min(int(WINDOW_S), math.ceil(wait)))


@dataclass
class TenantLimits:
    name: str
    requests_per_min: float | None = None
    tokens_per_min: float | None = None
    daily_budget_usd: float | None = None
    allowed_privacy: tuple[str, ...] = ("none", "region", "edge")
    allowed_regions: tuple[str, ...] | None = None  # None: any
    allowed_tiers: tuple[str, ...] | None = None     # None: any


@dataclass
class Gatekeeper:
    """Authenticates a bearer key and applies one replica's share of each tenant's limits."""

    tenants: dict[str, TenantLimits]  # key hash -> limits
    share: float = 1.0                 # this replica's share of every limit (1/N)
    clock: Callable[[], float] = time.time
    _windows: dict[str, _Window] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        """No tenants configured: every request is the ``default`` tenant, unlimited."""
        return not self.tenants

    def authenticate(self, authorization: str) -> TenantLimits | Refusal:
        if self.open:
            return TenantLimits(name="default")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return Refusal(401, "missing API key: send 'Authorization: Bearer <key>'", "invalid_api_key")
        tenant = self.tenants.get(key_hash(key.strip()))
        if tenant is None:
            return Refusal(401, "invalid API key", "invalid_api_key")
        return tenant

    INTERNAL = "fabric-internal"

    def on_behalf_of(self, caller: TenantLimits, name: str) -> TenantLimits | Refusal:
        """The tenant a fabric service (the deferred queue) acts for: only the fabric's own key
        may name one. An open fabric has no tenants: everyone is ``default``."""
        if self.open:
            return caller
        if caller.name != self.INTERNAL:
            return Refusal(403, "x-fabric-on-behalf-of is reserved for the fabric's own services",
                           "permission_denied")
        tenant = next((t for t in self.tenants.values() if t.name == name), None)
        return tenant or Refusal(403, f"unknown tenant {name!r}", "permission_denied")

    def identify(self, authorization: str, behalf: str = "") -> TenantLimits | Refusal:
        """Who a request is for: its key's tenant, or the tenant the fabric's own key names in
        ``x-fabric-on-behalf-of``. The one identity check of the engine and the gateways."""
        tenant = self.authenticate(authorization)
        if behalf and not isinstance(tenant, Refusal):
            tenant = self.on_behalf_of(tenant, behalf)
        return tenant

    def _window(self, tenant: str) -> _Window:
        now = self.clock()
        w = self._windows.setdefault(tenant, _Window())
        w.expire(now)
        day = int(now // 86400)
        if w.day != day:
            w.day, w.spent_usd = day, 0.0
        return w

    def _share(self, value: float | None, floor: float = 0.0) -> float | None:
        return None if value is None else max(floor, value * self.share)

    def admit(self, t: TenantLimits, privacy: str = "none", region: str | None = None,
              tier: str = "") -> Refusal | None:
        """Count one request against the tenant, or refuse it. ``region`` is the request's
        region pin (the router has already kept it there), ``tier`` the serving model's.
        A tenant held to some regions must pin one: refusing only after an unpinned request
        had landed elsewhere would turn away work an allowed region could have served."""
        if privacy not in t.allowed_privacy:
            return Refusal(403, f"tenant {t.name!r} may not use privacy={privacy}", "permission_denied")
        if t.allowed_regions is not None and region not in t.allowed_regions:
            where = ", ".join(t.allowed_regions) or "none"
            return Refusal(403, f"tenant {t.name!r} may only run in region(s) {where}: pin one with "
                                "metadata.fabric_region or use its /<region>/v1 endpoint",
                           "permission_denied")
        if t.allowed_tiers is not None and tier and tier not in t.allowed_tiers:
            return Refusal(403, f"tenant {t.name!r} may not use the {tier} tier "
                                f"(allowed: {', '.join(t.allowed_tiers) or 'none'})", "permission_denied")
        w = self._window(t.name)
        now = self.clock()
        budget = self._share(t.daily_budget_usd)
        if budget is not None and w.spent_usd >= budget:
            return Refusal(402, f"tenant {t.name!r} has spent its daily budget "
                                f"(${t.daily_budget_usd:g}); it resets at 00:00 UTC",
                           "insufficient_quota", 86400 - self.clock() % 86400)
        rpm = self._share(t.requests_per_min, 1.0)
        if rpm is not None and len(w.requests) + 1 > rpm:
            return Refusal(429, f"tenant {t.name!r} is over its limit of "
                                f"{t.requests_per_min:g} requests/min", "rate_limit_exceeded",
                           w.retry_after(now, w.requests[0] if w.requests else None))
        tpm = self._share(t.tokens_per_min, 1.0)
        if tpm is not None and w.token_sum >= tpm:
            return Refusal(429, f"tenant {t.name!r} is over its limit of "
                                f"{t.tokens_per_min:g} tokens/min", "rate_limit_exceeded",
                           w.retry_after(now, w.tokens[0][0] if w.tokens else None))
        w.requests.append(now)
        return None

    def charge(self, t: TenantLimits, tokens: int, usd: float) -> None:
        """Count what a served request used (tokens this minute, dollars today)."""
        w = self._window(t.name)
        if tokens:
            w.tokens.append((self.clock(), tokens))
            w.token_sum += tokens
        w.spent_usd += usd
