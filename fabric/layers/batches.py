"""The OpenAI Batch API's files and batches, as plain data. No Ray here.

A tenant uploads a JSONL file (``purpose=batch``) of ``{custom_id, method, url, body}`` lines
and creates a batch over it; each valid line becomes one deferred job (``fabric.layers.deferred``)
whose deadline is the batch's completion window, so it runs in the cheapest or greenest
window the grid's forecast offers, through the fabric's own endpoint, metered like any
request. When every line has ended, the batch's output file (answers) and error file
(refusals and failures) are written, one JSON line per request, as the OpenAI API does.

Both stores are append-only JSON-lines logs, fsynced before a call is acknowledged, with file
contents as their own fsynced files: a restart replays them to the same state. Line-level
problems (bad JSON object, unknown url, duplicate custom_id, a body over the limit) fail the
batch at validation with an ``errors`` list naming each line, as the OpenAI API does; a
request the engine refuses when it runs is a line of the error file.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
MAX_LINES = 50_000
WINDOW = re.compile(r"^(\d+(?:\.\d+)?)([smh])$")
TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchError(ValueError):
    """A refused request: ``status`` and an OpenAI ``code``/``param``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def window_seconds(window: object, low: float, high: float) -> float:
    """``24h`` as OpenAI documents it; also ``<n>s|m|h`` between ``low`` and ``high``."""
    m = WINDOW.match(window) if isinstance(window, str) else None
    seconds = float(m[1]) * {"s": 1, "m": 60, "h": 3600}[m[2]] if m else None
    if seconds is None or not low <= seconds <= high:
        raise BatchError(400, f"completion_window must be '24h' (or <n>s, <n>m, <n>h between "
                         f"{low:g} s and {high / 3600:g} h), not {window!r}", "completion_window",
                         "invalid_value")
    return seconds


def check_jsonl(data: bytes) -> int:
    """Lines in an upload for ``purpose=batch``; BatchError when it is not JSONL of objects."""
    lines = 0
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if not ok:
            raise BatchError(400, f"the file is not JSONL: line {n} is not a JSON object",
                             "file", "invalid_file_format")
        lines += 1
    if not lines:
        raise BatchError(400, "the file has no lines", "file", "invalid_file_format")
    return lines


def validate_lines(data: bytes, endpoint: str, max_body: int) -> tuple[list[dict], list[dict]]:
    """(requests, errors) of a batch's input file: each request ``{line, custom_id, body}``;
    each error ``{code, message, param, line}`` as the Batch API's ``errors.data``."""
    requests, errors, seen = [], [], set()

    def bad(n, code, message, param=None):
        errors.append({"code": code, "message": message, "param": param, "line": n})

    for n, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        if not isinstance(line, dict):
            bad(n, "invalid_json_line", "the line is not a JSON object")
            continue
        custom_id, body = line.get("custom_id"), line.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            bad(n, "missing_required_parameter", "custom_id must be a non-empty string", "custom_id")
        elif custom_id in seen:
            bad(n, "duplicate_custom_id", f"custom_id {custom_id!r} is used by an earlier line",
                "custom_id")
        elif line.get("method", "POST") != "POST":
            bad(n, "invalid_value", "method must be POST", "method")
        elif line.get("url") not in ENDPOINTS:
            bad(n, "invalid_url", f"url must be one of {', '.join(ENDPOINTS)}", "url")
        elif line["url"] != endpoint:
            bad(n, "mismatched_endpoint", f"url {line['url']} is not the batch's endpoint {endpoint}",
                "url")
        elif not isinstance(body, dict):
            bad(n, "invalid_value", "body must be the request, a JSON object", "body")
        elif body.get("stream"):
            bad(n, "invalid_value", "a batch request cannot stream", "body.stream")
        elif len(json.dumps(body)) > max_body:
            bad(n, "request_too_large", f"the body is over the {max_body / 2**20:g} MiB limit", "body")
        else:
            requests.append({"line": n, "custom_id": custom_id, "body": body})
        if isinstance(custom_id, str):
            seen.add(custom_id)
    if len(requests) + len(errors) > MAX_LINES:
        errors.insert(0, {"code": "too_many_requests", "message": f"a batch holds at most "
                          f"{MAX_LINES:,} requests", "param": None, "line": None})
    return requests, errors


class _Log:
    """An append-only JSON-lines log of ``{id, ...fields}`` events; the state is them replayed."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.items: dict[str, dict] = {}
        if path.exists():
            for line in path.read_bytes().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a torn last line was never acknowledged
                self.items.setdefault(event["id"], {}).update(event)
        self._f = open(path, "ab")

    def write(self, item_id: str, **fields) -> dict:
        item = self.items.setdefault(item_id, {"id": item_id})
        item.update(fields)
        self._f.write(json.dumps({"id": item_id, **fields}, separators=(",", ":")).encode() + b"\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        return item


def _fsynced(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FileStore:
    """Tenants' files: contents under ``files/``, their metadata in ``files.jsonl``."""

    def __init__(self, root: str | Path):
        self.dir = Path(root) / "files"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = _Log(Path(root) / "files.jsonl")

    def create(self, tenant: str, filename: str, purpose: str, data: bytes) -> dict:
        file_id = f"file-{uuid.uuid4().hex}"
        _fsynced(self.dir / file_id, data)
        return self.log.write(file_id, tenant=tenant, filename=filename, purpose=purpose,
                              bytes=len(data), created_at=int(time.time()), deleted=False)

    def get(self, tenant: str, file_id: str) -> dict | None:
        f = self.log.items.get(file_id)
        return f if f and f["tenant"] == tenant and not f["deleted"] else None

    def content(self, tenant: str, file_id: str) -> bytes | None:
        return (self.dir / file_id).read_bytes() if self.get(tenant, file_id) else None

    def delete(self, tenant: str, file_id: str) -> bool:
        if not self.get(tenant, file_id):
            return False
        self.log.write(file_id, deleted=True)
        (self.dir / file_id).unlink(missing_ok=True)
        return True

    def list(self, tenant: str, purpose: str | None = None) -> list[dict]:
        return [f for f in self.log.items.values() if f["tenant"] == tenant and not f["deleted"]
                and purpose in (None, f["purpose"])]


def file_object(f: dict) -> dict:
    return {"id": f["id"], "object": "file", "bytes": f["bytes"], "created_at": f["created_at"],
            "filename": f["filename"], "purpose": f["purpose"], "status": "processed",
            "expires_at": None, "status_details": None}


BATCH_FIELDS = ("endpoint", "input_file_id", "completion_window", "status", "output_file_id",
                "error_file_id", "created_at", "in_progress_at", "expires_at", "finalizing_at",
                "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")


def batch_object(b: dict, counts: dict[str, int]) -> dict:
    out = {"id": b["id"], "object": "batch", **{k: b.get(k) for k in BATCH_FIELDS}}
    out["errors"] = {"object": "list", "data": b["errors"]} if b.get("errors") else None
    out["request_counts"] = counts
    out["metadata"] = b.get("metadata")
    return out


def job_id(batch_id: str, line: int) -> str:
    """A line's deferred job, and the request id its usage record is kept under: stable, so a
    line run again after a restart is billed once (the ledger keeps one record per id)."""
    return f"{batch_id}-{line}"


def output_lines(batch_id: str, jobs: list[dict]) -> tuple[bytes, bytes]:
    """(output file, error file) of a batch's ended jobs, in line order: answers in the one,
    refused or failed requests in the other; cancelled lines in neither."""
    out, err = [], []
    for job in sorted(jobs, key=lambda j: j["line"]):
        status = job["status"]
        if status == "completed":
            out.append({"id": f"batch_req_{job['id']}", "custom_id": job["custom_id"],
                        "response": {"status_code": 200, "request_id": job["id"],
                                     "body": job.get("response")}, "error": None})
        elif status == "failed" and job.get("status_code"):
            body = job.get("response")
            if not isinstance(body, dict) or "error" not in body:
                body = {"error": {"message": job.get("error"), "type": "APIError",
                                  "param": None, "code": job["status_code"]}}
            err.append({"id": f"batch_req_{job['id']}", "custom_id": job["custom_id"],
                        "response": {"status_code": job["status_code"], "request_id": job["id"],
                                     "body": body}, "error": None})
        elif status in ("failed", "expired"):
            code = "batch_expired" if status == "expired" else "request_failed"
            err.append({"id": f"batch_req_{job['id']}", "custom_id": job["custom_id"],
                        "response": None, "error": {"code": code, "message": job.get("error")}})
    dump = lambda rows: b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)
    return dump(out), dump(err)


def counts(jobs: list[dict], total: int) -> dict[str, int]:
    return {"total": total, "completed": sum(j["status"] == "completed" for j in jobs),
            "failed": sum(j["status"] in ("failed", "expired") for j in jobs)}


class Batches:
    """Files, batches and their lines' jobs in one place: what the queue actor serves. ``jobs``
    is the queue's JobStore; every method that writes is durable when it returns."""

    def __init__(self, root: str | Path, jobs, max_body: int, min_window_s: float,
                 max_window_s: float):
        self.files = FileStore(root)
        self.log = _Log(Path(root) / "batches.jsonl")
        self.jobs, self.max_body = jobs, max_body
        self.window = (min_window_s, max_window_s)
        self.lines: dict[str, list[str]] = {}     # batch id -> its jobs' ids
        for job in jobs.jobs.values():
            if job.get("batch_id"):
                self.lines.setdefault(job["batch_id"], []).append(job["id"])
        for b in list(self.log.items.values()):   # cut off while validating: finish it
            if b["status"] == "validating":
                self._materialise(b, b.get("at_once") or {})

    # files
    def upload(self, tenant: str, filename: str, purpose: str, data: bytes) -> dict:
        if purpose != "batch":
            raise BatchError(400, f"purpose must be 'batch', not {purpose!r}", "purpose", "invalid_value")
        check_jsonl(data)
        return file_object(self.files.create(tenant, filename or "upload.jsonl", purpose, data))

    # batches
    def create(self, tenant: str, payload: object, via: str, now: float, at_once: dict) -> dict:
        if not isinstance(payload, dict):
            raise BatchError(400, "the request must be a JSON object", "body")
        unknown = sorted(set(payload) - {"input_file_id", "endpoint", "completion_window", "metadata"})
        if unknown:
            raise BatchError(400, f"unknown parameter(s): {', '.join(unknown)}", unknown[0])
        endpoint = payload.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise BatchError(400, f"endpoint must be one of {', '.join(ENDPOINTS)}", "endpoint",
                             "invalid_value")
        seconds = window_seconds(payload.get("completion_window"), *self.window)
        metadata = payload.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= 16 and all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                for k, v in metadata.items())):
            raise BatchError(400, "metadata must be at most 16 string pairs (keys up to 64 "
                             "characters, values up to 512)", "metadata", "invalid_value")
        file_id = payload.get("input_file_id")
        f = self.files.get(tenant, file_id) if isinstance(file_id, str) else None
        if f is None or f["purpose"] != "batch":
            raise BatchError(404, f"no file {file_id!r} with purpose 'batch'", "input_file_id",
                             "not_found")
        batch = self.log.write(f"batch_{uuid.uuid4().hex}", tenant=tenant, endpoint=endpoint,
                               input_file_id=file_id, completion_window=payload["completion_window"],
                               metadata=metadata, via=via, status="validating",
                               created_at=int(now), expires_at=int(now + seconds), at_once=at_once)
        return self.view(self._materialise(batch, at_once))

    def _materialise(self, batch: dict, at_once: dict) -> dict:
        """Validate the input file and queue one job per line (idempotent: a restart during
        validation queues what is missing)."""
        data = self.files.content(batch["tenant"], batch["input_file_id"])
        if data is None:
            return self.log.write(batch["id"], status="failed", failed_at=int(time.time()),
                                  errors=[{"code": "not_found", "message": "the input file was "
                                           "deleted", "param": "input_file_id", "line": None}])
        requests, errors = validate_lines(data, batch["endpoint"], self.max_body)
        if errors:
            return self.log.write(batch["id"], status="failed", failed_at=int(time.time()),
                                  errors=errors[:1000], total=len(requests) + len(errors))
        ids = [job_id(batch["id"], r["line"]) for r in requests]
        self.jobs.write_many([(i, {
            "status": "queued", "tenant": batch["tenant"], "endpoint": batch["endpoint"],
            "via": batch["via"], "request": r["body"], "created_at": batch["created_at"],
            "deadline": batch["expires_at"], "attempts": 0, "batch_id": batch["id"],
            "custom_id": r["custom_id"], "line": r["line"]})
            for i, r in zip(ids, requests) if i not in self.jobs.jobs])
        self.lines[batch["id"]] = ids
        return self.log.write(batch["id"], status="in_progress", in_progress_at=int(time.time()),
                              total=len(ids))

    def _mine(self, tenant: str, batch_id: str) -> dict:
        b = self.log.items.get(batch_id)
        if not b or b["tenant"] != tenant:  # another tenant's batch is as absent as none
            raise BatchError(404, f"no batch {batch_id!r}", "batch_id", "not_found")
        return b

    def view(self, b: dict) -> dict:
        jobs = [self.jobs.jobs[i] for i in self.lines.get(b["id"], ())]
        return batch_object(b, counts(jobs, b.get("total", 0)))

    def get(self, tenant: str, batch_id: str) -> dict:
        return self.view(self._mine(tenant, batch_id))

    def list(self, tenant: str, after: str | None, limit: int) -> dict:
        mine = sorted((b for b in self.log.items.values() if b["tenant"] == tenant),
                      key=lambda b: (b["created_at"], b["id"]), reverse=True)
        if after is not None:
            ids = [b["id"] for b in mine]
            mine = mine[ids.index(after) + 1:] if after in ids else []
        page = [self.view(b) for b in mine[:limit]]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(mine) > limit}

    def cancel(self, tenant: str, batch_id: str, now: float) -> dict:
        b = self._mine(tenant, batch_id)
        if b["status"] in ("validating", "in_progress"):
            self.jobs.write_many([(i, {"status": "cancelled", "finished_at": round(now, 3)})
                                  for i in self.lines.get(batch_id, ())
                                  if self.jobs.jobs[i]["status"] == "queued"])
            b = self.log.write(batch_id, status="cancelling", cancelling_at=int(now))
        elif b["status"] not in ("cancelling", "cancelled"):
            raise BatchError(409, f"batch {batch_id!r} is {b['status']}: only a batch in progress "
                             "can be cancelled", "batch_id", "conflict")
        return self.view(b)

    def finalise(self, now: float, running: set[str]) -> list[str]:
        """Close every batch whose lines have all ended: write its output and error files.
        A batch still in progress when its completion window ends expires: its lines not yet
        running end as ``expired`` (``batch_expired`` in the error file), the running ones
        finish, and what completed stays in the output file. Returns the ids closed."""
        closed = []
        for b in list(self.log.items.values()):
            if b["status"] not in ("in_progress", "cancelling"):
                continue
            jobs = [self.jobs.jobs[i] for i in self.lines.get(b["id"], ())]
            late = b["status"] == "in_progress" and now >= b["expires_at"]
            if late and not b.get("expiring") and any(j["status"] not in TERMINAL for j in jobs):
                self.jobs.write_many([(j["id"], {
                    "status": "expired", "finished_at": round(now, 3),
                    "error": "the batch's completion window ended before this line ran"})
                    for j in jobs if j["status"] == "queued" and j["id"] not in running])
                b = self.log.write(b["id"], expiring=True)  # in progress until its running lines end
                jobs = [self.jobs.jobs[i] for i in self.lines.get(b["id"], ())]
            if any(j["status"] not in TERMINAL or j["id"] in running for j in jobs):
                continue
            self.log.write(b["id"], finalizing_at=int(now)) if b["status"] == "in_progress" else None
            out, err = output_lines(b["id"], jobs)
            files = {}
            for key, data in (("output_file_id", out), ("error_file_id", err)):
                if data:
                    files[key] = self.files.create(b["tenant"], f"{b['id']}_{key[:-8]}.jsonl",
                                                   "batch_output", data)["id"]
            done = ("cancelled" if b["status"] == "cancelling" else
                    "expired" if b.get("expiring") else "completed")
            self.log.write(b["id"], status=done, **{f"{done}_at": int(now)}, **files)
            closed.append(b["id"])
        return closed


def read_batch(root: str | Path, batch_id: str) -> dict | None:
    """One batch's record from the queue's log, read only (``fabric usage --batch``)."""
    path, out = Path(root) / "batches.jsonl", None
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("id") == batch_id:
                out = {**(out or {}), **event}
    return out
