"""The OpenAI Batch API on the real fabric, driven by the official ``openai`` client: files
uploaded, a batch run line by line as deferred jobs inside its completion window, output and
error files downloaded, usage billed to the tenant once per line, durable across the queue's
restart, and every tenant's files and batches its own."""

import json
import time
import uuid

import httpx
import openai
import pytest
import ray
from typer.testing import CliRunner

from conftest import wait_for

pytestmark = pytest.mark.integration
CHAT = "/v1/chat/completions"


def client(fabric, key="fabric-local", base=None) -> openai.OpenAI:
    return openai.OpenAI(base_url=base or fabric.base_url, api_key=key, max_retries=0, timeout=60)


def line(custom_id, model="auto", **extra) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": model, "messages": [{"role": "user", "content": f"summarise {custom_id}"}],
                     "max_tokens": 4, "metadata": {"fabric_tier": "small"}, **extra}}


def upload(c: openai.OpenAI, lines) -> str:
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    return c.files.create(file=("requests.jsonl", data), purpose="batch").id


def wait_closed(c: openai.OpenAI, batch_id: str, timeout: float = 180):
    return wait_for(f"batch {batch_id} to close",
                    lambda: (b := c.batches.retrieve(batch_id)).status in
                    ("completed", "failed", "cancelled", "expired") and b, timeout, every=1.0)


def batch_records(fabric, tenant: str, batch_id: str, at_least: int) -> list[dict]:
    from fabric.metering.report import read_usage

    def rows():
        table = read_usage(fabric.ledger_path, tenant=tenant)
        got = [r for r in table.to_pylist() if r["request_id"].startswith(batch_id + "-")] \
            if table.num_rows else []
        return got if len(got) >= at_least else None
    return wait_for(f"{at_least} usage records of {batch_id}", rows, 30)


def queue():
    from fabric.layers.deferred import DEFERRED_NAME
    from fabric.layers.naming import NAMESPACE

    return ray.get_actor(DEFERRED_NAME, namespace=NAMESPACE)


def test_a_batch_runs_inside_its_window_with_output_and_error_files_and_usage(fabric):
    from fabric.cli import app

    c = client(fabric)
    file_id = upload(c, [line("a"), line("b"), line("c", model="no-such-model")])
    assert c.files.retrieve(file_id).purpose == "batch"
    assert file_id in {f.id for f in c.files.list()}
    batch = c.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="45s",
                             metadata={"run": "nightly"})
    assert batch.status == "in_progress" and batch.request_counts.total == 3
    assert batch.metadata == {"run": "nightly"} and batch.expires_at - batch.created_at == 45
    assert batch.id in {b.id for b in c.batches.list()}
    done = wait_closed(c, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert done.completed_at <= done.expires_at
    out = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == ["a", "b"]
    for o in out:
        assert o["response"]["status_code"] == 200
        assert o["response"]["body"]["usage"]["completion_tokens"] > 0
    err = [json.loads(x) for x in c.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in err] == ["c"]
    assert 400 <= err[0]["response"]["status_code"] < 500
    assert "no-such-model" in err[0]["response"]["body"]["error"]["message"]
    # billed to the tenant: one record per line under the line's id, the refusal included
    rows = batch_records(fabric, "demo", done.id, 3)
    assert len(rows) == len({r["request_id"] for r in rows}) == 3
    assert sum(r["completion_tokens"] for r in rows) > 0
    result = CliRunner().invoke(app, ["usage", "--path", fabric.ledger_path, "--batch", done.id,
                                      "--json"])
    assert result.exit_code == 0, result.output
    usage = json.loads(result.output)
    assert usage["requests"] == 3 and usage["completion_tokens"] > 0
    assert usage["at_once_priced_requests"] >= 2 and usage["at_once_energy_cost_usd"] > 0
    assert usage["saved_usd"] == pytest.approx(usage["at_once_energy_cost_usd"]
                                               - usage["energy_cost_usd"], abs=1e-9)
    table = CliRunner().invoke(app, ["usage", "--path", fabric.ledger_path, "--batch", done.id])
    assert table.exit_code == 0 and "at once" in table.output
    c.files.delete(done.output_file_id)
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(done.output_file_id)


def test_no_line_is_lost_or_billed_twice_when_the_queue_is_killed_mid_batch(fabric):
    c = client(fabric)
    ids = [f"line-{i}" for i in range(6)]
    batch = c.batches.create(input_file_id=upload(c, [line(i) for i in ids]), endpoint=CHAT,
                             completion_window="50s")
    ray.kill(queue(), no_restart=False)            # before any line ran
    wait_for("a first line done", lambda: c.batches.retrieve(batch.id).request_counts.completed
             or c.batches.retrieve(batch.id).status != "in_progress", 120, every=0.5)
    ray.kill(queue(), no_restart=False)            # while the rest run
    done = wait_closed(c, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 6, done
    out = [json.loads(x)["custom_id"] for x in c.files.content(done.output_file_id).text.splitlines()]
    assert sorted(out) == ids                      # each line once
    rows = batch_records(fabric, "demo", batch.id, 6)
    time.sleep(2)  # a second record of a line run twice would have arrived by now
    rows = batch_records(fabric, "demo", batch.id, 6)
    assert len(rows) == len({r["request_id"] for r in rows}) == 6


def test_a_batch_at_a_regional_endpoint_runs_in_that_region(fabric):
    c = client(fabric, base=fabric.regional_urls["edge"])
    batch = c.batches.create(input_file_id=upload(c, [line("here")]), endpoint=CHAT,
                             completion_window="45s")
    done = wait_closed(c, batch.id)
    assert done.status == "completed", done
    rows = batch_records(fabric, "demo", batch.id, 1)
    assert {r["region"] for r in rows} == {"edge"} and {r["site"] for r in rows} == {"edge-a"}


def test_cancel_stops_the_lines_still_waiting(fabric):
    c = client(fabric)
    batch = c.batches.create(input_file_id=upload(c, [line(f"x{i}") for i in range(3)]),
                             endpoint=CHAT, completion_window="1h")
    cancelled = c.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = wait_closed(c, batch.id, timeout=60)
    assert done.status == "cancelled" and done.cancelled_at is not None
    counts = done.request_counts
    assert counts.total == 3 and counts.completed + counts.failed <= 3
    assert c.batches.cancel(batch.id).status == "cancelled"   # asking again changes nothing


def test_bad_uploads_and_batches_get_openai_errors_and_tenants_see_only_their_own(fabric):
    c = client(fabric)
    for data, purpose, needle in ((b"not json\n", "batch", "not JSONL"),
                                  (b"[1, 2]\n", "batch", "not JSONL"),
                                  (b'{"custom_id": "a"}\n', "fine-tune", "purpose")):
        with pytest.raises(openai.BadRequestError) as e:
            c.files.create(file=("x.jsonl", data), purpose=purpose)
        assert needle in e.value.message
    # line-level problems fail the batch at validation, each named with its line
    big = line("big")
    big["body"]["messages"][0]["content"] = "x" * (int(fabric.spec.endpoint.max_body_mb * 2**20) + 10)
    file_id = upload(c, [line("a"), line("a"), {**line("u"), "url": "/v1/embeddings"},
                         {"custom_id": "nobody", "url": CHAT}, big])
    failed = c.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert failed.status == "failed"
    assert [(e.line, e.code) for e in failed.errors.data] == [
        (2, "duplicate_custom_id"), (3, "invalid_url"), (4, "invalid_value"), (5, "request_too_large")]
    for kw, param in (({"endpoint": "/v1/embeddings"}, "endpoint"),
                      ({"completion_window": "1s"}, "completion_window"),
                      ({"input_file_id": "file-nope"}, "input_file_id")):
        args = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h", **kw}
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as e:
            c.batches.create(**args)
        assert e.value.body["param"] == param
    # another tenant: the same ids are as absent as ids that never existed
    mine = c.batches.create(input_file_id=upload(c, [line("mine")]), endpoint=CHAT,
                            completion_window="1h")
    other = client(fabric, key="edge-only-key")
    for call in (lambda: other.files.retrieve(file_id), lambda: other.files.content(file_id),
                 lambda: other.files.delete(file_id), lambda: other.batches.retrieve(mine.id),
                 lambda: other.batches.cancel(mine.id),
                 lambda: other.batches.create(input_file_id=file_id, endpoint=CHAT,
                                              completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert mine.id not in {b.id for b in other.batches.list()}
    assert file_id not in {f.id for f in other.files.list()}
    c.batches.cancel(mine.id)
    with pytest.raises(openai.AuthenticationError):
        client(fabric, key="wrong").batches.list()
    r = httpx.get(f"{fabric.base_url}/batches", params={"limit": "0"},
                  headers={"authorization": "Bearer fabric-local"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
