"""The CLI refuses bad input quickly, with a message that says what to do (no cluster needed)."""

import socket
import subprocess
import sys
from pathlib import Path

FABRIC = [sys.executable, "-m", "fabric.cli"]


def run(*args, timeout=240):
    return subprocess.run([*FABRIC, *args], capture_output=True, text=True, timeout=timeout)


def test_port_in_use_is_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        r = run("demo", "--port", str(port))
    assert r.returncode == 1
    assert f"port {port}" in r.stdout and "already in use" in r.stdout and "--port" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_unreachable_cluster_is_refused():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    from fabric.cluster import free_port
    r = run("demo", "--address", f"127.0.0.1:{port}", "--port", str(free_port()))
    assert r.returncode == 1
    assert "cannot reach a Ray cluster" in r.stdout and "ray up cluster.yaml" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_bad_spec_names_the_field(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("regions:\n  - name: Edge\n    sites: [{name: a}]\n")
    r = run("demo", "--spec", str(bad))
    assert r.returncode == 2
    assert "bad.yaml" in r.stdout and "regions[0].name" in r.stdout
