"""Every token metered, for real: engine → usage record → TokenLedger → Parquet."""

import json
import subprocess
import sys
import uuid

import httpx  # noqa: F401

from conftest import HTTP, POWER_SOURCES, session_records as records_for
import openai
import pytest


pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "Meter this step."}]


def test_every_request_gets_one_exact_record(fabric):
    session = f"meter-{uuid.uuid4().hex[:8]}"
    client = openai.OpenAI(base_url=fabric.base_url, api_key="fabric-local", max_retries=0,
                           default_headers={"x-session-id": session, "x-fabric-agent": "agent-7"})
    model = fabric.spec.model.id
    expected = []  # (prompt, completion) per request, as the client saw them
    for n in (3, 5, 8):
        r = client.chat.completions.create(model=model, messages=MSG, max_tokens=n,
                                           extra_body={"ignore_eos": True})
        expected.append((r.usage.prompt_tokens, r.usage.completion_tokens))
    for n in (4, 6):  # streams that did not ask for usage: none is shown to the client
        chunks = list(client.chat.completions.create(model=model, messages=MSG, max_tokens=n,
                                                     stream=True, extra_body={"ignore_eos": True}))
        assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
        expected.append((None, n))
    for n in (2, 7):  # streams that asked for usage keep getting it
        chunks = list(client.chat.completions.create(model=model, messages=MSG, max_tokens=n,
                                                     stream=True, stream_options={"include_usage": True},
                                                     extra_body={"ignore_eos": True}))
        usage = chunks[-1].usage
        expected.append((usage.prompt_tokens, usage.completion_tokens))
    r = client.completions.create(model=model, prompt="The fabric", max_tokens=5,
                                  extra_body={"ignore_eos": True})
    expected.append((r.usage.prompt_tokens, r.usage.completion_tokens))

    rows = records_for(fabric, session, len(expected))
    assert len(rows) == len(expected) and len({r["request_id"] for r in rows}) == len(rows)
    assert sum(r["completion_tokens"] for r in rows) == sum(c for _, c in expected)
    known_prompt = [p for p, _ in expected if p is not None]
    chat_prompt = expected[0][0]  # every chat request had the same prompt
    assert sum(r["prompt_tokens"] for r in rows) == sum(known_prompt) + 2 * chat_prompt
    for r in rows:
        assert r["status"] == 200 and r["agent_id"] == "agent-7" and r["model"] == model
        assert r["site"] in {"edge-a", "cloud-a"} and r["region"] in {"edge", "cloud"}
        assert r["energy_j"] > 0 and r["carbon_g"] > 0 and r["billed_usd"] > 0
        assert 0 < r["ttft_s"] <= r["latency_s"] and r["power_source"] in POWER_SOURCES
        assert r["tier"] == "small"
        # the decision explains itself: the policy, the table, least_load's counterfactual
        assert r["policy"] == "fabric" and r["table_version"] > 1.6e12
        assert r["counterfactual_site"] in {"edge-a", "cloud-a"}
        assert r["counterfactual_energy_cost_usd"] > 0 and r["counterfactual_carbon_g"] > 0
        # billed exactly at the spec's per-million-token prices
        price = fabric.spec.model
        assert r["billed_usd"] == round((r["prompt_tokens"] * price.price_usd_per_mtok_in
                                         + r["completion_tokens"] * price.price_usd_per_mtok_out)
                                        / 1e6, 12)


def test_refused_and_client_labelled_requests_are_recorded_too(fabric):
    session = f"refused-{uuid.uuid4().hex[:8]}"
    headers = {"x-session-id": session, "x-request-id": "same-id-every-time"}
    body = {"model": fabric.spec.model.id, "messages": MSG, "max_tokens": 3}
    codes = [HTTP.post(f"{fabric.base_url}/chat/completions", json=body, headers=headers,
                        timeout=60).status_code for _ in range(2)]
    refused = HTTP.post(f"{fabric.base_url}/chat/completions", headers=headers, timeout=60,
                         json={**body, "metadata": {"fabric_region": "mars"}})
    assert codes == [200, 200] and refused.status_code == 503
    rows = records_for(fabric, session, 3)
    assert sorted(r["status"] for r in rows) == [200, 200, 503]
    assert len({r["request_id"] for r in rows}) == 3  # a reused client id does not merge records
    assert [r["completion_tokens"] for r in rows if r["status"] == 503] == [0]


def test_usage_command_reports_totals(fabric):
    records_for(fabric, "-", 0, timeout=1)  # flush
    r = subprocess.run([sys.executable, "-m", "fabric.cli", "usage", "--path", fabric.ledger_path,
                        "--by", "site", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    served = [row for row in rows if row["site"]]
    assert {row["site"] for row in served} <= {"edge-a", "cloud-a", "cloud-b"} and served
    assert all(row["requests"] > 0 and row["j_per_token"] > 0 for row in served)
    # requests a gateway refused (whichever test sent them) are there too: no site, no tokens
    assert all(row["completion_tokens"] == 0 and row["energy_j"] == 0 for row in rows
               if not row["site"])
    human = subprocess.run([sys.executable, "-m", "fabric.cli", "usage", "--path", fabric.ledger_path],
                           capture_output=True, text=True, timeout=120)
    assert human.returncode == 0 and "demo" in human.stdout  # the local spec's demo tenant
    saved = subprocess.run([sys.executable, "-m", "fabric.cli", "usage", "--path", fabric.ledger_path,
                            "--by", "site", "--savings", "--json"], capture_output=True, text=True,
                           timeout=120)
    assert saved.returncode == 0, saved.stderr
    by_site = {row["site"]: row for row in json.loads(saved.stdout)}
    assert sum(row["counterfactual_requests"] for row in by_site.values()) > 0
    # cloud-a (hydro) against least_load's even spread over it and the edge: cleaner
    assert by_site["cloud-a"]["saved_kg_co2"] > 0, by_site["cloud-a"]
