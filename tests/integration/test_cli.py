"""`fabric demo` and `fabric up` as a user runs them: the report, and nothing left behind."""

import re
import signal
import subprocess
import time

import pytest

from fabric.cluster import free_port
from procs import FABRIC, Watched, assert_nothing_left_behind

# Each test starts a fabric of its own: they run before the shared one starts (conftest).
pytestmark = [pytest.mark.integration, pytest.mark.own_fabric]


def one_model_spec(tmp_path) -> str:
    """The local spec with its small model only (one engine fewer to start): what `up`,
    `status` and `down` do does not depend on the models."""
    import yaml

    from fabric.spec import default_spec_path, load_spec

    spec = load_spec(default_spec_path())
    spec.models = spec.models[:1]
    spec.metering.path = str(tmp_path / "ledger")  # the test's own ledger and batches
    for _, site in spec.sites:
        if site.name not in spec.models[0].hosting:
            site.local.llm_slots = 0
    path = tmp_path / "one-model.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return str(path)


def test_demo_prints_report_with_both_regions_and_leaves_nothing_running(tmp_path):
    # 12 agents: the cheapest site (cloud-a) serves them until the power event (raised after
    # 40 % of the steps) cuts it, then the edge does; 12 steps each keep traffic flowing well
    # past the event, so both regions appear in the report
    import json

    port = free_port()
    report_json = tmp_path / "demo.json"
    run = Watched("demo", "--agents", "12", "--steps", "12", "--max-tokens", "16",
                  "--port", str(port), "--log-file", str(tmp_path / "demo.log"),
                  "--report-json", str(report_json))
    rc = run.finish(timeout=600)
    out = run.output
    assert rc == 0, out
    assert "agent workload report" in out and "144 (144 ok, 0 errors)" in out
    assert "power event" in out and "sites before" in out
    assert re.search(r"region cloud\s.*\d+ req", out) and re.search(r"region edge\s.*\d+ req", out)
    assert "TTFT p50" in out and "latency p50" in out
    # the promise, not its shadow: once the event took effect, the curtailed site got < 10 %
    [event] = json.loads(report_json.read_text())["summary"]["events"]
    assert event["site"] == "cloud-a" and event["site_share_before"].get("cloud-a", 0) > 0.1, event
    assert event["requests_after"] >= 30, event
    assert event["site_share_after"].get("cloud-a", 0) < 0.1, event
    assert len(run.seen) > 5  # it really started raylets, workers and engines
    assert run.survivors() == []
    assert (tmp_path / "demo.log").stat().st_size > 0  # Ray/vLLM noise went to the log
    assert_nothing_left_behind(None, port)


def test_ctrl_c_while_starting_shuts_everything_down(tmp_path):
    """Ctrl-C in the middle of start-up (raylets up, engines starting): nothing is left."""
    run = Watched("up", "--spec", one_model_spec(tmp_path), "--port", str(free_port()),
                  "--log-file", str(tmp_path / "up.log"))
    assert run.wait_for(r"deploying", timeout=400), run.output
    time.sleep(1.0)  # into the engines' start
    run.proc.send_signal(signal.SIGINT)
    rc = run.finish(timeout=120)
    assert rc == 0 and "shut down" in run.output, run.output
    assert "serving" not in run.output
    assert len(run.seen) > 3  # it had started raylets and workers
    assert run.survivors() == []


def client(port: int):
    import openai

    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="fabric-local",
                         max_retries=0, timeout=60)


def run_batch_at_the_root(port: int) -> tuple[str, bytes]:
    """One model, no gateway: the engine's own app serves the Batch API at ``/v1``. Returns
    the completed batch's id and its output file."""
    import json

    import openai

    c = client(port)
    model = c.models.list().data[0].id
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": model, "max_tokens": 4,
                       "messages": [{"role": "user", "content": f"question {i}"}]}}
             for i in range(2)]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    file_id = c.files.create(file=("q.jsonl", data), purpose="batch").id
    batch = c.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                             completion_window="45s")
    deadline = time.time() + 150
    while (batch := c.batches.retrieve(batch.id)).status not in ("completed", "failed", "cancelled"):
        assert time.time() < deadline, f"batch still {batch.status}"
        time.sleep(1)
    assert batch.status == "completed" and batch.request_counts.completed == 2, batch
    out = c.files.content(batch.output_file_id).content
    assert sorted(json.loads(x)["custom_id"] for x in out.splitlines()) == ["q0", "q1"]
    with pytest.raises(openai.NotFoundError):
        c.batches.retrieve("batch_no-such-batch")
    return batch.id, out


def up(spec: str, port: int, tmp_path, log: str) -> Watched:
    run = Watched("up", "--spec", spec, "--port", str(port), "--log-file", str(tmp_path / log))
    assert run.wait_for(r"serving", timeout=400), run.output
    return run


def down(run: Watched, port: int) -> None:
    from fabric.status import read_run

    address = read_run()["address"]
    stop = subprocess.run([*FABRIC, "down"], capture_output=True, text=True, timeout=200)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    assert run.finish(timeout=30) == 0
    assert run.survivors() == []
    assert_nothing_left_behind(address, port)


def test_up_status_down(tmp_path):
    """`fabric up` records the running fabric; `fabric status` and `fabric down` find it; a
    batch finished before a restart on the same ledger is still there after it."""
    import json

    spec, port = one_model_spec(tmp_path), free_port()
    run = up(spec, port, tmp_path, "up.log")
    status = subprocess.run([*FABRIC, "status", "--json"], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    snap = json.loads(status.stdout)
    assert {s["site"] for s in snap["sites"]} == {"edge-a", "cloud-a", "cloud-b"}
    assert snap["metrics"] and all(u.startswith("http://127.0.0.1:") for u in snap["metrics"])
    batch_id, output = run_batch_at_the_root(port)
    down(run, port)
    again = subprocess.run([*FABRIC, "down"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "no running fabric" in again.stdout

    run = up(spec, port, tmp_path, "up-again.log")
    c = client(port)
    kept = c.batches.retrieve(batch_id)
    assert kept.status == "completed" and c.files.content(kept.output_file_id).content == output
    down(run, port)
