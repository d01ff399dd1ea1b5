"""The operator's live page on the real fabric, in a real headless Chromium (Debian's
``chromium``, driven by Playwright): every site drawn, the same numbers as ``fabric status
--json``, a curtailment on the page within 5 s, no console error, nothing fetched off the
machine; the event stream survives 100 connects and disconnects without leaking."""

import json
import shutil
import subprocess
import sys
import time
import urllib.parse

import httpx
import pytest

from conftest import HTTP, wait_for

pytestmark = pytest.mark.integration
# what Chromium needs here: as root, and with nothing reaching for Google's hosts
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no chromium on this machine: the live page's browser test drives Debian's "
                    "chromium (`make install` installs it when run as root; else `apt-get "
                    "install chromium`)")
    return path


def ui_url(fabric) -> str:
    return fabric.base_url.rsplit("/v1", 1)[0] + "/fabric/ui"


def test_the_live_page_draws_the_fabric_and_shows_a_curtailment(fabric, power, tmp_path):
    from playwright.sync_api import sync_playwright

    sites = {s.name: region for region, s in fabric.spec.sites}
    errors, off_machine = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's screen
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: off_machine.append(r.url) if urllib.parse.urlparse(
                r.url).hostname not in ("127.0.0.1", "localhost") else None)
            page.goto(ui_url(fabric))
            page.wait_for_function(f"document.querySelectorAll('#map [data-site]').length "
                                   f"=== {len(sites)}", timeout=20_000)
            drawn = page.eval_on_selector_all(
                "#map [data-site]", "els => els.map(e => [e.dataset.site, e.dataset.region])")
            assert dict(drawn) == sites

            # the page's numbers are fabric status --json's
            status = subprocess.run([sys.executable, "-m", "fabric.cli", "status", "--address",
                                     fabric.cluster.address, "--json"], capture_output=True,
                                    text=True, timeout=120)
            assert status.returncode == 0, status.stderr
            snap = {s["site"]: s for s in json.loads(status.stdout)["sites"]}
            for name in sites:
                row = f'#sites tr[data-site="{name}"]'
                cell = lambda field: page.inner_text(f'{row} td[data-field="{field}"]')  # noqa: E731
                assert cell("region") == snap[name]["region"]
                assert cell("budget_kw") == f"{snap[name]['budget_w'] / 1e3:.1f}"
                assert cell("curtailed") == "no"

            # the last minute per site and model, from the ledger: served and refused requests
            body = {"model": fabric.spec.model.id, "max_tokens": 4,
                    "messages": [{"role": "user", "content": "live page"}]}
            for _ in range(3):
                assert HTTP.post(f"{fabric.base_url}/chat/completions", json=body).status_code == 200
            mars = {**body, "metadata": {"fabric_region": "mars"}}
            assert HTTP.post(f"{fabric.base_url}/chat/completions", json=mars).status_code == 503
            page.wait_for_function("""() => {
                const rows = [...document.querySelectorAll('#recent tbody tr')];
                const cell = (r, f) => r.querySelector(`td[data-field="${f}"]`).textContent;
                return rows.some(r => Number(cell(r, 'served')) > 0 && cell(r, 'ttft_p50_ms') !== '-')
                    && rows.some(r => cell(r, 'refused').includes('503'));
            }""", timeout=20_000)

            # a curtailment raised now is on the page within 5 s, and marked on the chart
            cut = power.curtailment("cloud-a")
            power.seek("cloud-a", cut.start_s)
            raised = time.monotonic()
            page.wait_for_selector('#map [data-site="cloud-a"][data-curtailed="true"]',
                                   timeout=5_000)
            shown_s = time.monotonic() - raised
            assert page.inner_text('#sites tr[data-site="cloud-a"] td[data-field="curtailed"]') == "yes"
            page.wait_for_selector('#chart .power-event[data-site="cloud-a"]', state="attached",
                                   timeout=5_000)
            # a reloaded page keeps the chart: the server holds its last five minutes
            page.reload()
            page.wait_for_selector('#chart .power-event[data-site="cloud-a"]', state="attached",
                                   timeout=5_000)
            assert page.eval_on_selector('#chart polyline[data-site="cloud-a"]',
                                         "e => e.points.length") > 1
            shot = tmp_path / "live-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert errors == [], errors
    assert off_machine == [], off_machine
    assert shown_s < 5


def test_the_event_stream_survives_100_clients_and_bad_paths_are_404(fabric):
    url = ui_url(fabric)
    missing = httpx.get(f"{url}/nothing-here", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    def one_client():
        with httpx.stream("GET", f"{url}/events", timeout=30) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    return json.loads(line[len("data: "):])

    first = one_client()
    assert {s["site"] for s in first["sites"]} == {s.name for _, s in fabric.spec.sites}

    def server():
        return httpx.get(f"{url}/state", timeout=30).json()["server"]

    settled = wait_for("the first stream closed", lambda: (s := server())["streams"] == 0 and s,
                       timeout=30)
    for _ in range(100):
        one_client()
    after = wait_for("every stream closed", lambda: (s := server())["streams"] == 0 and s,
                     timeout=60)
    assert after["tasks"] <= settled["tasks"] + 2, (settled, after)
    assert after["rss_mib"] < settled["rss_mib"] + 64, (settled, after)
