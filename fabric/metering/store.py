"""The ledger's storage: a write-ahead log, then Parquet partitioned by date. No Ray here.

A record counts as written once its WAL line is fsynced. Flushing moves the WAL aside
(atomic rename to ``wal-<seq>.flushing``), writes its records as one Parquet file whose name
is derived from that file's content, then deletes it. Recovery flushes every ``*.flushing``
file again and rotates the live WAL: a crash anywhere rewrites the same Parquet file, so no
record is lost and none is duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from fabric.metering.records import to_table


class LedgerStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.wal_dir = self.root / "_wal"
        self.data_dir = self.root / "usage"
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._wal = None
        self._seen: dict[str, None] = {}  # recent request ids: a retried send is not a new record
        self._seq = max((int(p.name.split("-")[1].split(".")[0])
                         for p in self.wal_dir.glob("wal-*.flushing")), default=0)
        self.recover()
        self._load_recent_ids()

    def _load_recent_ids(self) -> None:
        parts = sorted(self.data_dir.glob("date=*"))[-2:]  # today and yesterday (UTC)
        for part in parts:
            for f in part.glob("part-*.parquet"):
                for rid in pq.read_table(f, columns=["request_id"]).column(0).to_pylist():
                    self._remember(rid)

    def _remember(self, rid: str) -> bool:
        """True if the id is new."""
        if rid in self._seen:
            return False
        self._seen[rid] = None
        if len(self._seen) > self.MAX_RECENT_IDS:
            self._seen.pop(next(iter(self._seen)))
        return True

    MAX_RECENT_IDS = 500_000

    def _open(self):
        if self._wal is None:
            self._wal = open(self.wal_dir / "wal.jsonl", "ab")
        return self._wal

    def append(self, records: list[dict]) -> int:
        """Durably log records (ids already logged are skipped); returns how many were new.
        Acknowledge to the sender only after this returns."""
        records = [r for r in records if self._remember(r["request_id"])]
        if not records:
            return 0
        wal = self._open()
        wal.write(b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records))
        wal.flush()
        os.fsync(wal.fileno())
        return len(records)

    def flush(self) -> int:
        """Move the WAL into Parquet. Returns the number of records flushed."""
        live = self.wal_dir / "wal.jsonl"
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        if not live.exists() or live.stat().st_size == 0:
            return 0
        self._seq += 1
        moving = self.wal_dir / f"wal-{self._seq:09d}.flushing"
        os.replace(live, moving)
        return self._flush_file(moving)

    def _flush_file(self, path: Path) -> int:
        raw = path.read_bytes()
        records, seen = [], set()
        for line in raw.splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a torn last line from a crash mid-write was never acknowledged
            if r["request_id"] not in seen:
                seen.add(r["request_id"])
                self._seen.setdefault(r["request_id"], None)
                records.append(r)
        if records:
            table = to_table(records)
            name = hashlib.sha256(raw).hexdigest()[:16]
            for date in sorted(set(table.column("date").to_pylist())):
                part = self.data_dir / f"date={date}"
                part.mkdir(exist_ok=True)
                rows = table.filter(table.column("date").to_numpy(zero_copy_only=False) == date)
                tmp = part / f".{name}.parquet.tmp"
                pq.write_table(rows.drop(["date"]), tmp)
                os.replace(tmp, part / f"part-{name}.parquet")
        path.unlink()
        return len(records)

    def recover(self) -> int:
        n = sum(self._flush_file(p) for p in sorted(self.wal_dir.glob("wal-*.flushing")))
        return n + self.flush()

    def close(self) -> None:
        self.flush()
