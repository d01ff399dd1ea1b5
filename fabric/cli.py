"""The ``fabric`` command line."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from fabric.cluster import ClusterError
from fabric.spec import SpecError, default_spec_path, load_spec

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="token-fabric: produce, route and meter LLM tokens across regions and sites.")
console = Console()


def error(text: object) -> None:
    """An error line for the user. The text is printed as it is: an exception's message may
    hold brackets (a file path with a line number) that would otherwise be read as markup."""
    console.print(f"[red]error:[/] {escape(str(text))}")


SpecOpt = typer.Option(None, "--spec", help="fabric spec YAML (default: deployments/local.yaml)")
ModelOpt = typer.Option(None, "--model", help="Hugging Face id or local path (default: the offline tiny model)")
PortOpt = typer.Option(None, "--port", help="HTTP port of the fabric's endpoint")
AddressOpt = typer.Option(None, "--address", help="existing Ray cluster (default: start a local one)")


def _load(spec_path: Optional[Path], port: Optional[int]):
    try:
        spec = load_spec(spec_path or default_spec_path())
    except SpecError as exc:
        error(exc)
        raise typer.Exit(2)
    if port is not None:
        spec.endpoint.port = port
    return spec


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (`fabric down`) asked the command to stop. A subclass, not a plain
    KeyboardInterrupt: CPython exits by SIGINT (status -2), even after the interrupt was
    handled, when a plain one passed through exec()'d code (imports and dataclasses run some)."""


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM raise `Stopped` (SIGINT stays ignored where the shell ignores it)."""
    def handler(signum, frame):
        raise Stopped
    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, handler)


@app.command("build-model")
def build_model_cmd(force: bool = typer.Option(False, help="rebuild even if cached")) -> None:
    """Build (once) the offline models (small and large): tiny Llamas with random weights and a
    local tokenizer."""
    import shutil

    from fabric.model import OFFLINE, default_model_dir, ensure_model

    for size, recipe in OFFLINE.items():
        if force and default_model_dir(recipe).exists():
            shutil.rmtree(default_model_dir(recipe))
        console.print(f"offline:{size}  " + ensure_model(f"offline:{size}",
                                                         log=lambda m: console.print(f"[dim]{m}[/]")))


@app.command()
def demo(spec_path: Optional[Path] = SpecOpt, model: Optional[str] = ModelOpt,
         port: Optional[int] = PortOpt, address: Optional[str] = AddressOpt,
         agents: int = typer.Option(32, min=1, help="concurrent agents"),
         steps: int = typer.Option(8, min=1, help="chat steps per agent"),
         max_tokens: int = typer.Option(96, min=1, help="tokens per answer"),
         power_event: bool = typer.Option(True, help="curtail a site part-way through the workload"),
         log_file: Optional[Path] = typer.Option(None, help="where Ray/vLLM output goes"),
         report_json: Optional[Path] = typer.Option(None, help="also write the report as JSON")) -> None:
    """Start the fabric, run an agent workload through it (with a power event part-way), print
    the report, shut down."""
    import threading

    from fabric.client import AgentWorkload, WorkloadReport, run_with_progress
    from fabric.layers.power import start_curtailment
    from fabric.runtime import quiet_output, running_fabric

    spec = _load(spec_path, port)
    _stop_on_signals()
    log = str(log_file or Path(tempfile.gettempdir()) / f"token-fabric-demo-{os.getpid()}.log")
    console.print(f"[bold]token-fabric demo[/] — spec [cyan]{spec.name}[/], "
                  f"regions {', '.join(r.name for r in spec.regions)}; Ray/vLLM output → {log}")
    start = time.perf_counter()
    report = None
    try:
        with quiet_output(log) as terminal:
            out = Console(file=terminal, force_terminal=console.is_terminal, log_path=False)
            with out.status("starting") as status:
                def step(msg: str) -> None:
                    out.log(msg)
                    status.update(msg)

                with running_fabric(spec, model=model, address=address, step=step) as fab:
                    _stop_on_signals()  # again: connecting to Ray installed its own handler
                    status.stop()
                    out.log(f"fabric up at [cyan]{fab.base_url}[/] "
                            f"(deploy {fab.timings.get('deploy_s', 0):.0f} s)"
                            + (f"; live page [cyan]{fab.tenant_api_url.removesuffix('/v1')}/ui[/]"
                               if fab.tenant_api_url else ""))
                    workload = AgentWorkload(agents=agents, steps=steps, max_tokens=max_tokens,
                                             model=spec.model.id)
                    events: list[dict] = []
                    trigger_at = (agents * steps * 2) // 5 if power_event else -1

                    def maybe_power_event(result, done: int) -> None:
                        if done == trigger_at:
                            # the workload's clock: this step's end is "now"
                            now_s = result.started_s + (result.latency_s if result.ok else 0.0)
                            t = time.perf_counter()

                            def fire():
                                event = start_curtailment(spec)
                                if event:
                                    at_s = now_s + time.perf_counter() - t  # the grid is cut
                                    # the policy sheds a site within two ticks of its cut
                                    shed_s = at_s + 2 * spec.scheduler.tick_s
                                    events.append({"at_s": round(at_s, 3),
                                                   "effective_s": round(shed_s, 3), **event})
                                    out.log(f"[bold yellow]power event[/]: {event['what']}")
                            threading.Thread(target=fire, daemon=True).start()

                    report = run_with_progress(fab.base_url, workload, console=out,
                                               on_step=maybe_power_event)
                    report = WorkloadReport(results=report.results, wall_s=report.wall_s,
                                            events=events)
                    status.start()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the fabric was shut down")
        raise typer.Exit(130)
    except (ClusterError, SpecError) as exc:
        error(exc)
        raise typer.Exit(1)
    except Exception as exc:
        error(f"{type(exc).__name__}: {exc}\n(see {log})")
        raise typer.Exit(1)
    report.render(console)
    console.print(f"[dim]total {time.perf_counter() - start:.0f} s; Ray/vLLM log: {log}[/]")
    if report_json:
        report_json.write_text(json.dumps(report.to_dict(), indent=2))
    if report.summary["errors"]:
        raise typer.Exit(1)


@app.command()
def up(spec_path: Optional[Path] = SpecOpt, model: Optional[str] = ModelOpt,
       port: Optional[int] = PortOpt, address: Optional[str] = AddressOpt,
       log_file: Optional[Path] = typer.Option(None, help="where Ray/vLLM output goes"),
       autoscale: bool = typer.Option(False, "--autoscale", help="local cluster: Ray's "
                                      "autoscaler starts each site's raylet when an engine "
                                      "needs it and releases it when its site is parked")) -> None:
    """Deploy the fabric onto a running Ray cluster (--address), or start a local multi-node
    cluster with the fabric on it; serve until Ctrl-C or `fabric down`."""
    from fabric.runtime import quiet_output, running_fabric
    from fabric.status import clear_run, record_run

    spec = _load(spec_path, port)
    _stop_on_signals()
    log = str(log_file or Path(tempfile.gettempdir()) / f"token-fabric-{os.getpid()}.log")
    try:
        with quiet_output(log) as terminal:
            out = Console(file=terminal, log_path=False)
            with running_fabric(spec, model=model, address=address, step=out.log,
                                dashboard=True, autoscale=autoscale) as fab:
                record_run({"address": fab.cluster.address if fab.cluster else address,
                            "base_url": fab.base_url,
                            "regional_urls": fab.regional_urls, "pid": os.getpid(),
                            "spec": spec.name})
                _stop_on_signals()  # again: connecting to Ray installed its own handler
                out.print(f"[bold green]serving[/] OpenAI API at [cyan]{fab.base_url}[/] "
                          f"(model {spec.model.id}); Ray/vLLM output → {log}; Ctrl-C stops")
                for region, url in fab.regional_urls.items():
                    out.print(f"  region {region}: [cyan]{url}[/]")
                if fab.tenant_api_url:
                    key = "?key=<operator key>" if spec.endpoint.operator_key_sha256 else ""
                    out.print(f"  live page: [cyan]{fab.tenant_api_url.removesuffix('/v1')}/ui{key}[/]")
                while True:
                    time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopped; the fabric was shut down")
    except (ClusterError, SpecError) as exc:
        error(exc)
        raise typer.Exit(1)
    finally:
        clear_run()


@app.command()
def down(timeout_s: float = typer.Option(120, "--timeout", help="seconds to wait for the shutdown")) -> None:
    """Stop the fabric that `fabric up` started (it tears down everything it started)."""
    import psutil

    from fabric.status import clear_run, read_run

    run = read_run()
    if not run:
        console.print("no running fabric found (nothing to stop)")
        return
    try:
        proc = psutil.Process(run["pid"])
        if "fabric" not in " ".join(proc.cmdline()):
            raise psutil.NoSuchProcess(run["pid"])
    except (psutil.Error, KeyError):
        clear_run()
        console.print("the recorded fabric is no longer running; cleared its record")
        return
    console.print(f"stopping the fabric (pid {proc.pid}, spec {run.get('spec', '?')}) …")
    proc.terminate()  # handled as its Ctrl-C (also when started in the background, where
    # SIGINT is ignored): it tears down everything it started, then exits
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:  # a zombie has exited: only its parent (the user's shell) has yet to reap it
            if proc.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    else:
        error(f"still shutting down after {timeout_s:.0f} s (pid {proc.pid})")
        raise typer.Exit(1)
    console.print("stopped")


@app.command("serve-config")
def serve_config_cmd(spec_path: Optional[Path] = SpecOpt, model: Optional[str] = ModelOpt,
                     port: Optional[int] = PortOpt,
                     out: Optional[Path] = typer.Option(None, "--out", "-o", help="file (default: stdout)")) -> None:
    """Write the fabric's Serve applications as a Serve config YAML (for `serve deploy`)."""
    import yaml

    from fabric.serve_config import serve_config

    from fabric.model import model_sources

    spec = _load(spec_path, port)
    # offline models are built (cached) so their paths exist
    sources = model_sources(spec, model, log=Console(stderr=True).print)
    text = yaml.safe_dump(serve_config(spec, sources), sort_keys=False, width=100)
    if out:
        out.write_text(text)
        console.print(f"wrote {out}: deploy with `serve deploy {out}` (start the layer actors "
                      "with `fabric up --address ...`)")
    else:
        print(text, end="")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context, name: str = typer.Argument(..., help="a file of bench/: scheduler, agents, policies, sim_vs_live, overhead, …")) -> None:
    """Run a benchmark from bench/ (extra arguments go to it; `fabric bench NAME --help`)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1] / "bench"
    script = root / f"{name}.py"
    if not script.exists():
        known = ", ".join(sorted(p.stem for p in root.glob("*.py"))) if root.exists() else "none"
        error(f"no benchmark {name!r} (known: {known})")
        raise typer.Exit(2)
    raise typer.Exit(subprocess.call([sys.executable, str(script), *ctx.args]))


@app.command()
def simulate(spec_path: Optional[Path] = SpecOpt,
             trace: Optional[Path] = typer.Option(None, help="request trace: the fabric's CSV, an Azure LLM inference trace CSV, BurstGPT CSV or Mooncake JSONL"),
             synthetic: str = typer.Option("diurnal", help="poisson | bursty | diurnal (without --trace)"),
             requests: Optional[int] = typer.Option(None, min=1, help="requests (synthetic) or trace cap"),
             rate: Optional[float] = typer.Option(None, help="arrivals/s (default: --load × capacity)"),
             load: float = typer.Option(0.6, help="mean arrival rate / fleet capacity"),
             sites: Optional[int] = typer.Option(None, min=1, help="scale the spec to N sites"),
             policy: Optional[str] = typer.Option(None, help="scheduling policy (default: the spec's)"),
             seed: int = typer.Option(0),
             plots: Optional[Path] = typer.Option(None, help="write PNG traffic plots here"),
             html: Optional[Path] = typer.Option(None, help="write the live page's views of the run to this one self-contained HTML file"),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Trace-driven simulation of the fabric with the live scheduling policies."""
    from fabric.sim.command import simulate as run_sim

    try:
        run_sim(spec_path, trace=trace, synthetic=synthetic, requests=requests, rate=rate,
                load=load, sites=sites, policy=policy, seed=seed, plot_dir=plots, html=html,
                json_out=as_json, console=console)
    except (ValueError, SpecError, OSError) as exc:
        error(exc)
        raise typer.Exit(2)


@app.command()
def status(address: Optional[str] = typer.Option(None, help="Ray cluster (default: the one `fabric up` started)"),
           as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Show every layer of a running fabric: sites, power, GPUs, replicas, routing."""
    from fabric.cluster import connect
    from fabric.status import gather, read_run, render

    run = read_run() or {}
    address = address or run.get("address")
    if not address:
        console.print("[red]error:[/] no running fabric found; start one with `fabric up`, "
                      "or pass --address")
        raise typer.Exit(1)
    try:
        connect(address)
        snap = gather(run.get("base_url"), run.get("regional_urls"))
    except ClusterError as exc:
        error(exc)
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(snap, indent=2))
    else:
        render(snap, console if console.is_terminal else Console(width=140))


@app.command()
def usage(path: Optional[Path] = typer.Option(None, help="ledger directory (default: the user data dir)"),
          by: str = typer.Option("tenant", help="tenant | agent_id | model | tier | region | site | date"),
          hours: Optional[float] = typer.Option(None, help="only the last N hours"),
          savings: bool = typer.Option(False, "--savings", help="also the energy $ and kg CO2 "
                                       "saved against least_load at the same moments"),
          batch: Optional[str] = typer.Option(None, help="one Batch API batch: its tokens, and its "
                                              "energy $ and gCO2 against running it at once"),
          federation: Optional[Path] = typer.Option(None, help="a federation spec: every member's "
                                                    "own ledger, read with its operator key"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Totals from the token ledger: requests, tokens, $, J/token, gCO2 per million tokens
    (with --savings: against what least_load would have made of the same tokens)."""
    import datetime as dt

    from rich.table import Table

    from fabric.metering import default_ledger_path
    from fabric.metering.report import GROUPS, batch_usage, read_usage, totals

    if batch is not None:
        try:
            row = batch_usage(path or default_ledger_path(), batch)
        except ValueError as exc:
            error(exc)
            raise typer.Exit(2)
        if as_json:
            print(json.dumps(row, indent=2))
            return
        table = Table(title=f"batch {batch} ({row['status']}, tenant {row['tenant']})",
                      title_justify="left")
        for col in ("", "requests", "tokens in", "tokens out", "energy $", "gCO2"):
            table.add_column(col, justify="right")
        table.add_row("as run", str(row["requests"]), f"{row['prompt_tokens']:,}",
                      f"{row['completion_tokens']:,}", f"{row['energy_cost_usd']:.9f}",
                      f"{row['carbon_g']:.6f}")
        table.add_row("at once", "", "", "", f"{row['at_once_energy_cost_usd']:.9f}",
                      f"{row['at_once_carbon_g']:.6f}")
        Console(width=140).print(table)
        console.print("[dim]at once: the same energy at the same sites, priced at their grid's "
                      "price and carbon when the batch was created[/]")
        return

    if by not in GROUPS:
        error(f"--by must be one of {', '.join(GROUPS)}")
        raise typer.Exit(2)
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours) if hours else None
    members: dict[str, str] = {}
    if federation is not None:
        from fabric.federation.usage import federation_usage

        try:
            rows, members = federation_usage(federation, by, since)
        except (SpecError, RuntimeError) as exc:
            error(exc)
            raise typer.Exit(2)
        if as_json:
            print(json.dumps({"rows": rows, "members": members}, indent=2))
            return
    else:
        rows = totals(read_usage(path or default_ledger_path(), since=since), by)
        if as_json:
            print(json.dumps(rows, indent=2))
            return
    table = Table(title=f"usage by {by}", title_justify="left")
    cols = [by, "requests", "tokens in", "tokens out", "billed $", "energy $", "J/token", "gCO2/Mtok"]
    if savings:
        cols += ["saved $", "saved kg CO2", "of requests"]
    for col in cols:
        table.add_column(col, justify="left" if col == by else "right")
    for r in rows:
        cells = [str(r[by]), str(r["requests"]), f"{r['prompt_tokens']:,}",
                 f"{r['completion_tokens']:,}", f"{r['billed_usd']:.6f}",
                 f"{r['energy_cost_usd']:.9f}", f"{r['j_per_token']:.4f}", f"{r['gco2_per_mtok']:.1f}"]
        if savings:
            cells += [f"{r['saved_usd']:.9f}", f"{r['saved_kg_co2']:.9f}",
                      f"{r['counterfactual_requests']:,}"]
        table.add_row(*cells)
    Console(width=170 if savings else 140).print(table)
    for name, state in members.items():
        console.print(f"member {name}: {state}" if state == "ok" else
                      f"[red]member {name}: {state} — its records are not in these totals[/]")
    if savings:
        console.print("[dim]saved: the same tokens priced at the sites least_load would have "
                      "weighted at each request's moment, less what they cost where they ran; "
                      "records written before the counterfactual existed count as 0[/]")


@app.command()
def federate(spec_path: Path = typer.Option(..., "--spec", help="federation spec YAML "
                                            "(e.g. deployments/federation/federation.yaml)"),
             port: Optional[int] = typer.Option(None, "--port", help="the federation's HTTP port"),
             operator_key_sha256: Optional[str] = typer.Option(
                 None, "--operator-key-sha256", help="opens /fabric/v1/federation/status "
                 "(default: served to loopback callers only)")) -> None:
    """Run one fabric over several: pull every member fabric's snapshot, run the policy over
    all their sites, and route each request to the member holding the chosen site."""
    from fabric.federation.server import serve_federation
    from fabric.federation.spec import load_federation

    try:
        spec = load_federation(spec_path)
    except SpecError as exc:
        error(exc)
        raise typer.Exit(2)
    if port is not None:
        spec.listen.port = port
    from fabric.cluster import port_in_use
    if port_in_use(spec.listen.host, spec.listen.port):
        error(f"port {spec.listen.port} on {spec.listen.host} is already "
              "in use; choose another with --port")
        raise typer.Exit(1)
    base = f"http://{spec.listen.host}:{spec.listen.port}"

    def ready() -> None:
        console.print(f"[bold green]serving[/] federation {spec.name} of "
                      f"{len(spec.members)} members at [cyan]{base}/v1[/]; Ctrl-C stops")
        for m in spec.members:
            console.print(f"  member {m.name}: {m.url} (regions {', '.join(m.regions)})")
        console.print(f"  status: [cyan]{base}/fabric/v1/federation/status[/]")

    serve_federation(spec, operator_key_sha256, ready=ready)
    console.print("stopped")


agents_app = typer.Typer(no_args_is_help=True, help="Agent workloads: swarms inside the cluster, or a client here.")
app.add_typer(agents_app, name="agents")


@agents_app.command("list")
def agents_list() -> None:
    """The example workloads (examples/workloads/*.yaml)."""
    from fabric.agents import list_workloads

    for w in list_workloads():
        console.print(f"[bold]{w.name}[/]  {w.description}")


@agents_app.command("run")
def agents_run(workload: str = typer.Argument(..., help="workload name (see `fabric agents list`) or YAML file"),
               n: int = typer.Option(16, "--agents", min=1, help="agents in all, over every swarm"),
               duration: Optional[float] = typer.Option(None, min=1, help="seconds; stops starting new steps after"),
               swarms: Optional[int] = typer.Option(None, min=1, help="swarm actors (default: one per node)"),
               url: Optional[str] = typer.Option(None, help="fabric OpenAI base URL as seen from the nodes "
                                                 "(default: the running fabric's)"),
               address: Optional[str] = typer.Option(None, help="Ray cluster (default: the one `fabric up` started)"),
               api_key: str = typer.Option("fabric-local", envvar="FABRIC_API_KEY",
                                           help="tenant API key (default: the local demo tenant's)"),
               seed: int = typer.Option(0),
               report_json: Optional[Path] = typer.Option(None)) -> None:
    """Run a workload as agent swarms (Ray actors) inside the fabric's cluster; every token metered."""
    from fabric.agents import load_workload
    from fabric.agents.runner import run as run_swarm
    from fabric.cluster import connect
    from fabric.status import read_run

    try:
        wl = load_workload(workload)
    except ValueError as exc:
        error(exc)
        raise typer.Exit(2)
    info = read_run() or {}
    address = address or info.get("address")
    url = url or info.get("base_url")
    if not address or not url:
        console.print("[red]error:[/] no running fabric found; start one with `fabric up`, "
                      "or pass --address and --url")
        raise typer.Exit(1)
    _stop_on_signals()
    try:
        connect(address)
        _stop_on_signals()  # after connecting: Ray installs its own handler
        report = run_swarm(wl, agents=n, duration_s=duration, base_url=url, api_key=api_key,
                           swarms=swarms, seed=seed, console=console)
    except (ClusterError, RuntimeError, ValueError) as exc:
        error(exc)
        raise typer.Exit(1)
    report.render(console)
    if report_json:
        report_json.write_text(report.model_dump_json(indent=2))


@agents_app.command("client")
def agents_client(url: str = typer.Option("http://127.0.0.1:8000/v1", help="fabric OpenAI base URL"),
                  model: str = typer.Option("tiny-llama"), n: int = typer.Option(16, "--agents", min=1),
                  steps: int = typer.Option(6, min=1), max_tokens: int = typer.Option(64, min=1),
                  api_key: str = typer.Option("fabric-local", envvar="FABRIC_API_KEY",
                                              help="tenant API key (default: the local demo tenant's)"),
                  report_json: Optional[Path] = typer.Option(None)) -> None:
    """Run N agents × M steps from this process against any OpenAI endpoint."""
    from fabric.client import AgentWorkload, run_with_progress

    report = run_with_progress(url, AgentWorkload(agents=n, steps=steps, max_tokens=max_tokens,
                                                  model=model), console=console, api_key=api_key)
    report.render(console)
    if report_json:
        report_json.write_text(json.dumps(report.to_dict(), indent=2))


if __name__ == "__main__":
    app()
