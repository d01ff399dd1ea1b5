"""The last minutes of the ledger, in memory: what the live page shows per site and model
(requests, tokens/s, TTFT p50/p99, refusals by status, $ and gCO2 per million tokens, saved
against least_load) without scanning the Parquet dataset. Pure."""

from __future__ import annotations

from collections import deque

import numpy as np

KEEP_S = 300.0


class RecentWindow:
    """Records' essentials for ``KEEP_S`` after they arrive (a record sent again after a
    ledger restart is counted once)."""

    def __init__(self, keep_s: float = KEEP_S):
        self.keep_s = keep_s
        self.rows: deque[tuple] = deque()
        self.ids: set[str] = set()

    def add(self, records: list[dict], now: float) -> None:
        for r in records:
            rid = r.get("request_id", "")
            if rid in self.ids:
                continue
            self.ids.add(rid)
            cf_usd, cf_g = r.get("counterfactual_energy_cost_usd"), r.get("counterfactual_carbon_g")
            self.rows.append((now, rid, r.get("site") or "", r.get("model") or "",
                              int(r.get("status", 200)), float(r.get("ttft_s") or 0.0),
                              int(r.get("prompt_tokens") or 0) + int(r.get("completion_tokens") or 0),
                              int(r.get("completion_tokens") or 0),
                              float(r.get("energy_cost_usd") or 0.0), float(r.get("carbon_g") or 0.0),
                              None if cf_usd is None else cf_usd - float(r.get("energy_cost_usd") or 0.0),
                              None if cf_g is None else cf_g - float(r.get("carbon_g") or 0.0)))
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self.rows and self.rows[0][0] < now - self.keep_s:
            self.ids.discard(self.rows.popleft()[1])

    def summary(self, now: float, window_s: float = 60.0) -> dict:
        """Per (site, model) over the last ``window_s``; refusals keyed by HTTP status."""
        self._expire(now)
        groups: dict[tuple[str, str], list[tuple]] = {}
        for row in self.rows:
            if row[0] >= now - window_s:
                groups.setdefault((row[2], row[3]), []).append(row)
        out = []
        for (site, model), rows in sorted(groups.items()):
            ok = [r for r in rows if r[4] == 200]
            ttft = np.array([r[5] for r in ok]) if ok else None
            tokens = sum(r[6] for r in ok)
            refused: dict[str, int] = {}
            for r in rows:
                if r[4] != 200:
                    refused[str(r[4])] = refused.get(str(r[4]), 0) + 1
            usd, g = sum(r[8] for r in ok), sum(r[9] for r in ok)
            saved_usd = [r[10] for r in ok if r[10] is not None]
            saved_g = [r[11] for r in ok if r[11] is not None]
            out.append({
                "site": site, "model": model, "requests": len(rows), "served": len(ok),
                "tokens_out_per_s": round(sum(r[7] for r in ok) / window_s, 3),
                "ttft_p50_s": None if ttft is None else round(float(np.percentile(ttft, 50)), 4),
                "ttft_p99_s": None if ttft is None else round(float(np.percentile(ttft, 99)), 4),
                "refused": refused,
                "usd_per_mtok": round(usd / tokens * 1e6, 6) if tokens else None,
                "gco2_per_mtok": round(g / tokens * 1e6, 3) if tokens else None,
                "saved_usd": round(sum(saved_usd), 9) if saved_usd else None,
                "saved_kg_co2": round(sum(saved_g) / 1e3, 9) if saved_g else None})
        return {"window_s": window_s, "groups": out}
