"""The Batch API's files and batches as plain data: validation, ownership, restart, output."""

import json

import pytest

from fabric.layers.batches import BatchError, Batches, check_jsonl, validate_lines, window_seconds
from fabric.layers.deferred import JobStore

CHAT = "/v1/chat/completions"


def line(custom_id, url=CHAT, **body):
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url,
                       "body": {"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                                **body}})


def jsonl(*lines) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def open_store(root):
    jobs = JobStore(root)
    return jobs, Batches(root, jobs, max_body=4096, min_window_s=40, max_window_s=7 * 86400)


def test_an_upload_must_be_jsonl_of_objects():
    assert check_jsonl(jsonl(line("a"), "", line("b"))) == 2
    for bad in (b"not json\n", b"[1, 2]\n", b"\n\n", b"{\"a\": 1}\nnope\n"):
        with pytest.raises(BatchError) as e:
            check_jsonl(bad)
        assert e.value.status == 400 and e.value.code == "invalid_file_format"


def test_each_bad_line_is_named_with_its_line_number():
    data = jsonl(line("a"), "{broken", line("a"), line("c", url="/v1/embeddings"),
                 line("d", url="/v1/completions"), json.dumps({"custom_id": "e", "url": CHAT}),
                 line("f", stream=True), line("g", padding="x" * 5000), line("h"))
    requests, errors = validate_lines(data, CHAT, max_body=4096)
    assert [r["custom_id"] for r in requests] == ["a", "h"]
    assert [(e["line"], e["code"]) for e in errors] == [
        (2, "invalid_json_line"), (3, "duplicate_custom_id"), (4, "invalid_url"),
        (5, "mismatched_endpoint"), (6, "invalid_value"), (7, "invalid_value"),
        (8, "request_too_large")]


def test_completion_windows():
    assert window_seconds("24h", 40, 7 * 86400) == 86400
    assert window_seconds("90s", 40, 7 * 86400) == 90
    for bad in ("10s", "8d", 24, "", "24 h"):
        with pytest.raises(BatchError):
            window_seconds(bad, 40, 7 * 86400)


def test_a_batch_queues_one_job_per_line_and_survives_a_restart(tmp_path):
    jobs, b = open_store(tmp_path)
    f = b.upload("acme", "in.jsonl", "batch", jsonl(line("a"), line("b"), line("c")))
    batch = b.create("acme", {"input_file_id": f["id"], "endpoint": CHAT, "completion_window": "1h",
                              "metadata": {"job": "nightly"}}, "/edge", 1000.0, {})
    assert batch["status"] == "in_progress" and batch["request_counts"] == {
        "total": 3, "completed": 0, "failed": 0}
    assert batch["expires_at"] - batch["created_at"] == 3600
    queued = [j for j in jobs.jobs.values() if j.get("batch_id") == batch["id"]]
    assert sorted(j["custom_id"] for j in queued) == ["a", "b", "c"]
    assert {j["via"] for j in queued} == {"/edge"} and {j["deadline"] for j in queued} == {4600}
    jobs.write(queued[0]["id"], status="completed", response={"choices": []})
    jobs.write(queued[1]["id"], status="failed", status_code=400,
               response={"error": {"message": "no such model", "code": 400}})
    # a restart replays both logs to the same state
    jobs2, b2 = open_store(tmp_path)
    assert b2.get("acme", batch["id"]) == b.get("acme", batch["id"])
    assert b2.files.content("acme", f["id"]) == b.files.content("acme", f["id"])
    jobs2.write(queued[2]["id"], status="completed", response={"choices": [1]})
    assert b2.finalise(2000.0, running=set()) == [batch["id"]]
    done = b2.get("acme", batch["id"])
    assert done["status"] == "completed" and done["request_counts"] == {
        "total": 3, "completed": 2, "failed": 1}
    out = [json.loads(x) for x in b2.files.content("acme", done["output_file_id"]).splitlines()]
    err = [json.loads(x) for x in b2.files.content("acme", done["error_file_id"]).splitlines()]
    assert [o["custom_id"] for o in out] == ["a", "c"] and out[0]["response"]["status_code"] == 200
    assert err[0]["custom_id"] == "b" and err[0]["response"]["status_code"] == 400
    assert b2.finalise(3000.0, running=set()) == []  # closed once


def test_a_batch_with_bad_lines_fails_validation_and_queues_nothing(tmp_path):
    jobs, b = open_store(tmp_path)
    f = b.upload("acme", "in.jsonl", "batch", jsonl(line("a"), line("a")))
    batch = b.create("acme", {"input_file_id": f["id"], "endpoint": CHAT,
                              "completion_window": "24h"}, "", 1000.0, {})
    assert batch["status"] == "failed" and batch["errors"]["data"][0]["line"] == 2
    assert not jobs.jobs


def test_files_and_batches_belong_to_their_tenant(tmp_path):
    _, b = open_store(tmp_path)
    f = b.upload("acme", "in.jsonl", "batch", jsonl(line("a")))
    assert b.files.get("other", f["id"]) is None and b.files.content("other", f["id"]) is None
    assert not b.files.delete("other", f["id"]) and b.files.list("other") == []
    for who, status in (("other", 404), ("acme", None)):
        payload = {"input_file_id": f["id"], "endpoint": CHAT, "completion_window": "24h"}
        if status:
            with pytest.raises(BatchError) as e:
                b.create(who, payload, "", 1000.0, {})
            assert e.value.status == status
        else:
            batch = b.create(who, payload, "", 1000.0, {})
    for call in (lambda: b.get("other", batch["id"]), lambda: b.cancel("other", batch["id"], 1.0)):
        with pytest.raises(BatchError) as e:
            call()
        assert e.value.status == 404
    assert b.list("other", None, 20)["data"] == [] and len(b.list("acme", None, 20)["data"]) == 1


def test_bad_batch_requests_are_refused(tmp_path):
    _, b = open_store(tmp_path)
    f = b.upload("acme", "in.jsonl", "batch", jsonl(line("a")))
    ok = {"input_file_id": f["id"], "endpoint": CHAT, "completion_window": "24h"}
    for change, param in (({"endpoint": "/v1/embeddings"}, "endpoint"),
                          ({"completion_window": "2s"}, "completion_window"),
                          ({"metadata": {"k": 1}}, "metadata"), ({"input_file_id": "file-x"},
                                                                 "input_file_id"),
                          ({"colour": "red"}, "colour")):
        with pytest.raises(BatchError) as e:
            b.create("acme", {**ok, **change}, "", 1000.0, {})
        assert e.value.param == param
    with pytest.raises(BatchError):
        b.upload("acme", "x.jsonl", "fine-tune", jsonl(line("a")))


def test_cancelling_stops_queued_lines_and_closes_with_what_ran(tmp_path):
    jobs, b = open_store(tmp_path)
    f = b.upload("acme", "in.jsonl", "batch", jsonl(line("a"), line("b")))
    batch = b.create("acme", {"input_file_id": f["id"], "endpoint": CHAT,
                              "completion_window": "24h"}, "", 1000.0, {})
    first = min(b.lines[batch["id"]])
    jobs.write(first, status="completed", response={"choices": []})
    assert b.cancel("acme", batch["id"], 1500.0)["status"] == "cancelling"
    b.finalise(1600.0, running=set())
    done = b.get("acme", batch["id"])
    assert done["status"] == "cancelled" and done["cancelled_at"] == 1600
    assert done["request_counts"]["completed"] == 1 and done["error_file_id"] is None
    with pytest.raises(BatchError) as e:  # a closed batch cannot be cancelled again
        f2 = b.upload("acme", "in.jsonl", "batch", jsonl(line("a")))
        other = b.create("acme", {"input_file_id": f2["id"], "endpoint": CHAT,
                                  "completion_window": "24h"}, "", 1000.0, {})
        jobs.write(b.lines[other["id"]][0], status="completed", response={})
        b.finalise(1700.0, running=set())
        b.cancel("acme", other["id"], 1800.0)
    assert e.value.status == 409


def test_an_upload_over_the_file_limit_or_not_multipart_is_a_400():
    from fastapi import FastAPI, Request
    from starlette.testclient import TestClient

    from fabric.layers.batch_api import BatchAPI
    from fabric.metering.tenants import from_spec

    api = BatchAPI(from_spec([], None, 1.0), None, max_file=1024)
    app = FastAPI()

    @app.post("/v1/files")
    async def upload(request: Request):
        return await api.upload(request)

    with TestClient(app) as http:
        for kw, needle in (({"files": {"file": ("x.jsonl", b"{}\n" * 400)}, "data": {"purpose": "batch"}},
                            "limit"),
                           ({"content": b"{}\n", "headers": {"content-type": "application/json"}},
                            "multipart"),
                           ({"files": {"purpose": (None, b"batch")}}, "no 'file'")):
            r = http.post("/v1/files", **kw)
            assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_the_batch_api_route_table():
    from fabric.layers.batch_api import route

    assert route("POST", "/v1/files") == ("upload", ())
    assert route("GET", "/v1/files/") == ("files", ())
    assert route("GET", "/v1/files/file-1a") == ("file_get", ("file-1a",))
    assert route("GET", "/v1/files/file-1a/content") == ("content", ("file-1a",))
    assert route("DELETE", "/v1/files/file-1a") == ("file_delete", ("file-1a",))
    assert route("POST", "/v1/batches") == ("create", ())
    assert route("GET", "/v1/batches") == ("batches", ())
    assert route("GET", "/v1/batches/batch_9") == ("get", ("batch_9",))
    assert route("POST", "/v1/batches/batch_9/cancel") == ("cancel", ("batch_9",))
    status, message = route("PUT", "/v1/batches/batch_9")
    assert status == 405 and "GET" in message
    assert route("GET", "/v1/batches/batch_9/nothing")[0] == 404
    assert route("GET", "/v1/files/../etc")[0] == 404


def test_a_batch_past_its_window_expires_keeping_what_completed(tmp_path):
    jobs, b = open_store(tmp_path)
    f = b.upload("acme", "in.jsonl", "batch", jsonl(line("a"), line("b"), line("c")))
    batch = b.create("acme", {"input_file_id": f["id"], "endpoint": CHAT,
                              "completion_window": "60s"}, "", 1000.0, {})
    a, running, queued = sorted(b.lines[batch["id"]], key=lambda i: jobs.jobs[i]["line"])
    jobs.write(a, status="completed", response={"choices": []})
    jobs.write(running, status="running")
    assert b.finalise(1059.0, running={running}) == []      # inside the window: waits
    assert b.get("acme", batch["id"])["status"] == "in_progress"
    assert b.finalise(1060.0, running={running}) == []      # expired, a line still running
    assert jobs.jobs[queued]["status"] == "expired" and jobs.jobs[running]["status"] == "running"
    assert b.get("acme", batch["id"])["status"] == "in_progress"
    jobs.write(running, status="completed", response={"choices": []})
    assert b.finalise(1070.0, running=set()) == [batch["id"]]
    done = b.get("acme", batch["id"])
    assert done["status"] == "expired" and done["expired_at"] == 1070
    assert done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    out = b.files.content("acme", done["output_file_id"]).splitlines()
    err = [json.loads(x) for x in b.files.content("acme", done["error_file_id"]).splitlines()]
    assert len(out) == 2 and [e["error"]["code"] for e in err] == ["batch_expired"]
    assert err[0]["custom_id"] == "c"
