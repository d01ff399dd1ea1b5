"""Operator commands that need no cluster: serve-config, simulate, bench, down."""

import json

import yaml
from typer.testing import CliRunner

from fabric.cli import app

runner = CliRunner()


def test_serve_config_is_a_valid_serve_deploy_file(tmp_path):
    from ray.serve.llm import LLMConfig
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "serve.yaml"
    r = runner.invoke(app, ["serve-config", "--model", "/models/tiny", "--port", "8123", "-o", str(out)])
    assert r.exit_code == 0, r.output
    config = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(config)
    assert config["http_options"]["port"] == 8123
    apps = {a["name"]: a for a in config["applications"]}
    # one gateway serves /v1 and every /<region>/v1 (one replica, not one per region)
    assert set(apps) == {"fabric", "model-tiny-llama", "model-tiny-llama-large", "tenant-api"}
    assert apps["tenant-api"]["route_prefix"] == "/fabric" and len(apps["tenant-api"]["args"]["tenants"]) == 4
    small, large = apps["model-tiny-llama"], apps["model-tiny-llama-large"]
    assert (small["route_prefix"], large["route_prefix"]) == ("/models/tiny-llama", "/models/tiny-llama-large")
    llm = LLMConfig.model_validate(small["args"]["llm_configs"][0])
    assert llm.model_id == "tiny-llama" and llm.server_cls.__name__ == "FabricLLMServer"
    assert llm.model_loading_config.model_source == "/models/tiny"      # --model: the first model
    router = llm.deployment_config["request_router_config"]["request_router_class"]
    assert router == "fabric.routing.router:FabricRequestRouter"
    assert llm.deployment_config["placement_group_bundle_label_selector"] == [
        {"fabric/site": "in(edge-a,cloud-a)"}]
    big = LLMConfig.model_validate(large["args"]["llm_configs"][0])
    assert big.deployment_config["placement_group_bundle_label_selector"] == [{"fabric/site": "in(cloud-b)"}]
    assert big.model_loading_config.model_source.endswith(tuple("0123456789abcdef"))  # built offline
    # /v1 chooses the model; each region's gateway pins its region
    gateway = apps["fabric"]
    assert gateway["import_path"] == "fabric.layers.gateway:build_gateway"
    assert gateway["route_prefix"] == "/" and gateway["args"]["region"] is None
    assert {m["id"]: m["url"] for m in gateway["args"]["models"]} == {
        "tiny-llama": "http://127.0.0.1:8123/models/tiny-llama/v1",
        "tiny-llama-large": "http://127.0.0.1:8123/models/tiny-llama-large/v1"}
    assert gateway["args"]["regions"] == ["edge", "cloud"]
    assert [m["edge"] for m in gateway["args"]["models"]] == [True, False]
    assert "internal_key_hash" in gateway["args"] and not gateway["args"]["internal_key_hash"]


def test_a_one_model_fabric_has_a_gateway_per_region(tmp_path):
    from fabric.serve_config import fabric_apps
    from fabric.spec import default_spec_path, load_spec

    spec = load_spec(default_spec_path())
    spec.models = spec.models[:1]
    apps = {a["name"]: a for a in fabric_apps(spec, {spec.models[0].id: "/models/tiny"}, "k")}
    assert set(apps) == {"fabric", "region-edge", "region-cloud", "tenant-api"}
    assert apps["fabric"]["route_prefix"] == "/"  # the engine's own app
    assert (apps["region-edge"]["route_prefix"], apps["region-edge"]["args"]["region"]) == (
        "/edge", "edge")
    assert apps["region-edge"]["args"]["internal_key_hash"]  # the live deployment's key, hashed


def test_simulate_command_reports_json_and_refuses_bad_input():
    r = runner.invoke(app, ["simulate", "--requests", "5000", "--json", "--policy", "least_load"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["arrivals"] == 5000 == result["served"] + result["dropped"]
    assert result["policy"] == "least_load"
    bad = runner.invoke(app, ["simulate", "--policy", "nope"])
    assert bad.exit_code == 2 and "unknown policy 'nope'" in bad.output


def test_bench_names_its_benchmarks():
    r = runner.invoke(app, ["bench", "nope"])
    assert r.exit_code == 2 and "no benchmark 'nope'" in r.output and "scheduler" in r.output


def test_down_without_a_running_fabric(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKEN_FABRIC_CACHE", str(tmp_path))
    r = runner.invoke(app, ["down"])
    assert r.exit_code == 0 and "no running fabric" in r.output
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "current.json").write_text(json.dumps({"pid": 999_999_999, "spec": "x"}))
    r = runner.invoke(app, ["down"])
    assert r.exit_code == 0 and "no longer running" in r.output
    assert not (tmp_path / "run" / "current.json").exists()


def test_a_handled_stop_signal_exits_zero_even_inside_exec_code(tmp_path):
    """Ctrl-C / SIGTERM land wherever the main thread is, often in code an import runs through
    exec(); a handled stop must still exit 0 (a plain KeyboardInterrupt there exits -2)."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "stop.py"
    script.write_text(
        "import sys, time\n"
        "from fabric.cli import _stop_on_signals\n"
        "_stop_on_signals()\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    exec('import time\\nfor _ in range(600): time.sleep(0.1)')\n"
        "except KeyboardInterrupt as exc:\n"
        "    print('stopped', type(exc).__name__, flush=True)\n")
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)  # inside the exec()'d loop
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped Stopped" in out, (sig, proc.returncode, out)
