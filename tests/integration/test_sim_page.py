"""``fabric simulate --html``'s file in a real headless Chromium: the live page's views of a
simulated run, offline — every site drawn, a curtailment on the chart and in the action
log, the slider moves through time, no console error, nothing fetched."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_ui import ARGS, chromium

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def just_before_the_curtailment(tmp_path) -> Path:
    """The local spec, its grid replay starting 30 s before cloud-a's curtailment."""
    local = ROOT / "deployments" / "local.yaml"
    spec = yaml.safe_load(local.read_text())

    def absolute(node):
        if isinstance(node, dict):
            return {k: str((local.parent / v).resolve()) if k == "file" else absolute(v)
                    for k, v in node.items()}
        return [absolute(v) for v in node] if isinstance(node, list) else node

    spec = absolute(spec)
    cut = next(c for r in spec["regions"] for s in r["sites"] if s["name"] == "cloud-a"
               for c in s["power"].get("curtailments", []))
    spec["power_clock"] = {**spec.get("power_clock", {}), "start_s": cut["start_s"] - 30}
    path = tmp_path / "local-at-the-curtailment.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_simulated_run_replays_in_the_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    from fabric.sim.html import read_replay
    from fabric.spec import load_spec

    spec = just_before_the_curtailment(tmp_path)
    out = tmp_path / "sim.html"
    run = subprocess.run([sys.executable, "-m", "fabric.cli", "simulate", "--spec", str(spec),
                          "--synthetic", "poisson", "--requests", "2400", "--rate", "20",
                          "--html", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    frames = read_replay(out)["frames"]
    sites = {s.name: region for region, s in load_spec(spec).sites}
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri())
            page.wait_for_function(f"document.querySelectorAll('#map [data-site]').length "
                                   f"=== {len(sites)}", timeout=10_000)
            drawn = page.eval_on_selector_all(
                "#map [data-site]", "els => els.map(e => [e.dataset.site, e.dataset.region])")
            assert dict(drawn) == sites
            assert "simulated run" in page.title()
            # the page's numbers are the file's: the last bin's, then the first's
            last = {s["site"]: s for s in frames[-1]["sites"]}
            for name in sites:
                cell = page.inner_text(f'#sites tr[data-site="{name}"] td[data-field="budget_kw"]')
                assert cell == f"{last[name]['budget_w'] / 1e3:.1f}"
            # the curtailment: in the action log, marked on the chart, red on the map when
            # the slider is in it, not before
            assert page.eval_on_selector_all('#actions li[data-action="curtail"]', "els => els.length") >= 1
            assert page.eval_on_selector_all('#chart .power-event[data-site="cloud-a"]',
                                             "els => els.length") == 1
            assert page.get_attribute('#map [data-site="cloud-a"]', "data-curtailed") == "true"
            page.fill("#frame", "0")
            page.dispatch_event("#frame", "input")
            assert float(page.get_attribute("body", "data-updated")) == frames[0]["time"]
            assert page.get_attribute('#map [data-site="cloud-a"]', "data-curtailed") == "false"
            assert page.eval_on_selector('#chart .cursor', "e => e.getAttribute('x1')") is not None
            assert page.eval_on_selector_all("#chart polyline", "els => els.length") == len(sites)
            page.screenshot(path=str(tmp_path / "sim-page.png"), full_page=True)
        finally:
            browser.close()
    assert errors == [], errors
    assert requests == [out.as_uri()], requests
