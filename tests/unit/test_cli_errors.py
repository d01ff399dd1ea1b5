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


def test_an_error_text_with_brackets_is_printed_as_it_is():
    # HAProxy names a config line as [/path/haproxy.cfg:96]: read as markup, it was a closing
    # tag that matched nothing, and the error itself ended in a traceback
    from fabric.cli import console, error

    with console.capture() as out:
        error("RuntimeError: Binding [/tmp/haproxy-serve/x/haproxy.cfg:96] failed [bold]")
    assert "Binding [/tmp/haproxy-serve/x/haproxy.cfg:96] failed [bold]" in out.get()


def test_a_chosen_port_is_free_and_outside_the_kernel_s_ephemeral_range(monkeypatch):
    from fabric import cluster

    assert cluster._ephemeral_low() > 1024  # read from the kernel here (or Linux's default)
    monkeypatch.setattr(cluster, "_ephemeral_low", lambda: 32768)
    for _ in range(20):
        port = cluster.free_port()
        assert 20000 <= port < 32768
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", port))  # free on every address
    monkeypatch.setattr(cluster, "_ephemeral_low", lambda: 20000)  # no such range: any free port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", cluster.free_port()))
