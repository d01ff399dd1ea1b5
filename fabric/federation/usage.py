"""``fabric usage --federation``: every member's totals from its own ledger (read over HTTP with
the member's operator key) summed into one table; each member keeps its records, nothing is
copied."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx

from fabric.federation.spec import load_federation
from fabric.metering.report import merge_rows


def federation_usage(spec_path: Path, by: str, since: dt.datetime | None = None,
                     timeout_s: float = 60.0) -> tuple[list[dict], dict[str, str]]:
    """(merged rows, member -> "ok" or why its records are missing). RuntimeError if no
    member answered."""
    spec = load_federation(spec_path)
    params = {"group_by": by, **({"since": since.isoformat()} if since else {})}
    parts, members = [], {}
    with httpx.Client(timeout=timeout_s) as client:
        for m in spec.members:
            key = m.key()
            try:
                r = client.get(m.url + "/fabric/v1/federation/usage", params=params,
                               headers={"authorization": f"Bearer {key}"} if key else {})
            except httpx.HTTPError as exc:
                members[m.name] = f"unreachable ({type(exc).__name__}: {exc})"
                continue
            if r.status_code != 200:
                members[m.name] = f"answered {r.status_code}: {r.text[:200]}"
                continue
            members[m.name] = "ok"
            parts.append(r.json()["rows"])
    if not parts:
        raise RuntimeError("no member's ledger answered: " + "; ".join(
            f"{k}: {v}" for k, v in members.items()))
    return merge_rows(parts, by), members
