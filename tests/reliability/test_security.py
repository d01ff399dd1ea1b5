"""Keys hashed at rest and never logged; hints cannot buy rights a tenant lacks; local mode
listens on loopback only."""

import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil
import pytest
import yaml

from conftest import tenant_key

from fabric.internals import session_dir
from fabric.spec import default_spec_path

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "hello"}]


def post(fabric, key: str, **body) -> httpx.Response:
    return httpx.post(f"{fabric.base_url}/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": fabric.spec.model.id, "messages": MSG, "max_tokens": 4, **body},
                      timeout=60)


def test_raw_keys_are_neither_stored_nor_logged(fabric):
    secret = f"sk-never-log-{uuid.uuid4().hex}"
    assert post(fabric, secret).status_code == 401
    assert post(fabric, "fabric-local").status_code == 200
    spec_text = Path(default_spec_path()).read_text()
    assert "fabric-local" not in yaml.safe_load(spec_text)["tenants"].__repr__()  # hashes only
    session = Path(session_dir())
    ledger = Path(fabric.ledger_path)
    leaked = []
    for root in (session / "logs", ledger):
        for path in root.rglob("*"):
            if path.is_file() and path.stat().st_size < 200 * 2**20:
                data = path.read_bytes()
                if secret.encode() in data or b"Bearer fabric-local" in data:
                    leaked.append(str(path))
    assert not leaked, leaked


def test_hints_cannot_bypass_privacy_rights_or_budgets(fabric):
    # the trial tenant may not send private data, whatever else the request claims
    r = httpx.post(
        f"{fabric.base_url}/chat/completions",
        headers={"authorization": "Bearer trial-key", "x-fabric-tenant": "demo", "x-fabric-agent": "demo"},
        json={"model": fabric.spec.model.id, "messages": MSG, "max_tokens": 4,
              "metadata": {"fabric_privacy": "edge", "fabric_tenant": "demo"}}, timeout=60)
    assert r.status_code == 403 and "privacy=edge" in r.json()["error"]["message"]
    # a prepaid tenant (this test's own) spends its whole budget (its share on the edge
    # replica) in one request; no hint buys another
    statuses = [post(fabric, tenant_key("budget-hints-test"),
                     metadata={"fabric_region": "edge", **meta}).status_code
                for meta in ({}, {}, {"fabric_tier": "small"}, {"fabric_tenant": "demo"},
                             {"fabric_privacy": "edge"})]
    assert statuses == [200] + [402] * 4, statuses


def test_local_endpoint_listens_on_loopback_only(fabric):
    port = urlparse(fabric.base_url).port
    listeners = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN
                 and c.laddr.port == port]
    assert listeners and all(c.laddr.ip in ("127.0.0.1", "::1") for c in listeners), listeners
    external = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for ip in external:
        with socket.socket() as s:
            s.settimeout(3)
            assert s.connect_ex((ip, port)) != 0, f"endpoint reachable on {ip}:{port}"
