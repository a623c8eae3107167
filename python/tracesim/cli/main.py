"""`tracesim` commands. Errors print one line on stderr and exit non-zero; the traceback
only with TRACESIM_DEBUG=1."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tracesim.exceptions import TracesimError
from tracesim.simulate import ComputeModelName, NetworkModelName, Result, simulate
from tracesim.system import load_device, load_link, load_nmc_unit, load_system, load_tier, preset_names
from tracesim.trace import Trace, read_trace, write_trace

app = typer.Typer(
    name="tracesim",
    help="Replay AI training and inference traces on hardware that does not exist yet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()


def _ms(ns: float) -> str:
    return f"{ns / 1e6:,.3f} ms"


def print_summary(result: Result, title: str, max_ranks: int = 8) -> None:
    s = result.summary
    console.print(f"[bold]{title}[/bold]")
    console.print(
        f"  system {s['system']['name']} ({s['system']['nodes']} x {s['system']['devices_per_node']} "
        f"{s['system']['device']['name']}), compute model {s['compute_model']}, network {s['network_model']}"
    )
    mfu = "n/a" if s["mfu"] is None else f"{s['mfu'] * 100:.1f}%"
    console.print(
        f"  makespan {_ms(s['makespan_ns'])}   energy {s['energy_j']:.3f} J   MFU {mfu}   ops {s['ops']:,}"
    )
    table = Table("rank", "end", "compute", "comm", "exposed comm", "wait", "idle", "peak memory")
    for r in s["ranks"][:max_ranks]:
        peak = sum(r["peak_memory_bytes"].values())
        table.add_row(
            str(r["rank"]),
            _ms(r["end_ns"]),
            _ms(r["compute_ns"]),
            _ms(r["comm_ns"]),
            _ms(r["exposed_comm_ns"]),
            _ms(r["wait_ns"]),
            _ms(r["idle_ns"]),
            f"{peak / 2**30:.2f} GiB" if peak else "-",
        )
    console.print(table)
    if len(s["ranks"]) > max_ranks:
        console.print(f"  ... {len(s['ranks']) - max_ranks} more ranks in summary.json")
    for w in s["warnings"]:
        console.print(f"  [yellow]warning:[/yellow] {w}")


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="also write the result directory here")] = None,
) -> None:
    """Replay the embedded sample (an 8-GPU data-parallel training step) on three systems."""
    from tracesim.samples import data_parallel_step

    trace = data_parallel_step(ranks=8, layers=8)
    console.print(
        f"Sample: data-parallel training step, {trace.ranks} ranks, {trace.num_ops} ops "
        "(synthetic, measured-like durations on dgx-h100)\n"
    )
    result = simulate(trace, "dgx-h100")
    print_summary(result, "Replay on its own system (measured durations)")
    console.print()
    table = Table("system", "compute model", "step time", "vs dgx-h100", "energy", "exposed comm (rank 0)")
    for name in ("dgx-a100", "dgx-h100", "dgx-h200"):
        r = simulate(trace, name)
        table.add_row(
            name,
            r.summary["compute_model"],
            _ms(r.makespan_ns),
            f"{r.makespan_ns / result.makespan_ns:.2f}x",
            f"{r.summary['energy_j']:.3f} J",
            _ms(r.summary["ranks"][0]["exposed_comm_ns"]),
        )
    console.print("[bold]What if: the same step on other systems (auto: retimed from dgx-h100)[/bold]")
    console.print(table)
    if out is not None:
        result.write(out)
        console.print(f"wrote {out}/timeline.parquet and {out}/summary.json")


@app.command()
def systems() -> None:
    """List the shipped presets: systems, devices, memory tiers, link technologies and
    near-memory compute units."""
    table = Table("system", "device", "per node", "scale-up GB/s", "scale-out GB/s", title="systems")
    for name in preset_names("systems"):
        s = load_system(name)
        table.add_row(
            name,
            s.device.name,
            str(s.devices_per_node),
            f"{s.network.scale_up.bw_bytes / 1e9:g}",
            f"{s.network.scale_out.bw_bytes / 1e9:g}",
        )
    console.print(table)
    devices = Table("device", "bf16 TFLOP/s", "memory tiers (GB @ TB/s read)", title="devices")
    for name in preset_names("devices"):
        d = load_device(name)
        mem = ", ".join(
            f"{k} {t.capacity_bytes / 1e9:g} @ {t.read_bw_bytes / 1e12:g}" for k, t in d.memory.items()
        )
        bf16 = d.peak_flops.get("bf16")
        devices.add_row(name, "-" if bf16 is None else f"{bf16 / 1e12:g}", mem)
    console.print(devices)
    tiers = Table("tier", "latency ns", "read pJ/bit", "write pJ/bit", "retention", title="memory tiers")
    for name in preset_names("tiers"):
        t = load_tier(name)
        retention = t.get("retention_s")
        tiers.add_row(
            name,
            f"{t.get('latency_ns', 0):g}",
            f"{t.get('read_energy_pj_per_bit', 0):g}",
            f"{t.get('write_energy_pj_per_bit', 0):g}",
            "-" if retention is None else f"{retention / 3600:g} h",
        )
    console.print(tiers)
    links = Table(
        "link", "Gb/s", "lanes", "reach m", "pJ/bit", "FIT", "latency ns", title="link technologies"
    )
    for name in preset_names("links"):
        k = load_link(name)
        links.add_row(
            name,
            f"{k.gbps:g}",
            f"{k.lanes} × {k.gbps_per_lane:g}",
            f"{k.reach_m:g}",
            f"{k.pj_per_bit:g}",
            "-" if k.fit is None else f"{k.fit:g}",
            f"{k.serdes_latency_ns:g} + {k.propagation_ns_per_m:g}/m",
        )
    console.print(links)
    units = Table(
        "nmc unit", "tier", "fp16 TFLOP/s", "internal TB/s", "link GB/s", title="near-memory compute units"
    )
    for name in preset_names("nmc"):
        u = load_nmc_unit(name)
        fp16 = u.peak_flops.get("fp16")
        units.add_row(
            name,
            u.tier,
            "-" if fp16 is None else f"{fp16 / 1e12:g}",
            f"{u.internal_bw_bytes / 1e12:g}",
            f"{u.link_bw_bytes / 1e9:g}",
        )
    console.print(units)


@app.command()
def validate(trace: Annotated[Path, typer.Argument(help="trace directory")]) -> None:
    """Check a trace against the trace format (docs/trace-format.md)."""
    t = read_trace(trace)
    console.print(f"{trace}: valid, {t.ranks} ranks, {t.num_ops:,} ops")


@app.command(name="simulate")
def simulate_cmd(
    trace: Annotated[Path, typer.Argument(help="trace directory")],
    out: Annotated[Path, typer.Option("--out", help="result directory to write")],
    system: Annotated[str, typer.Option(help="preset name or system TOML file")] = "dgx-h100",
    nodes: Annotated[int | None, typer.Option(help="number of nodes (default: enough for the trace)")] = None,
    compute_model: Annotated[
        ComputeModelName, typer.Option(help="auto, measured, roofline or retime")
    ] = "auto",
    network: Annotated[NetworkModelName, typer.Option(help="analytical or flow")] = "analytical",
    source_system: Annotated[
        str | None, typer.Option(help="system the trace was measured on (retime)")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a system field, e.g. device.memory.hbm.read_bw_bytes=6e12"),
    ] = None,
    allow_oom: Annotated[
        bool, typer.Option(help="place tensors over capacity with a warning instead of failing")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="print nothing on success")] = False,
) -> None:
    """Replay a trace on a system and write timeline.parquet and summary.json."""
    result = simulate(
        trace,
        system,
        compute_model=compute_model,
        network=network,
        nodes=nodes,
        overrides=set_ or [],
        source_system=source_system,
        allow_oom=allow_oom,
    )
    result.write(out)
    if not quiet:
        print_summary(result, f"{trace} on {result.summary['system']['name']}")
        console.print(f"wrote {out}/timeline.parquet and {out}/summary.json")


ingest_app = typer.Typer(
    help="Convert traces from other tools into the tracesim format.", no_args_is_help=True
)
app.add_typer(ingest_app, name="ingest")


def _write_ingested(trace: Trace, report: list[str], out: Path, overwrite: bool) -> None:
    """Writes an ingested trace and prints its ingest report."""
    write_trace(trace, out, overwrite=overwrite)
    console.print(f"[bold]{out}[/bold]: {trace.num_ops:,} ops on {trace.ranks} ranks", highlight=False)
    for line in report:
        console.print("  " + line, highlight=False, markup=False)


@ingest_app.command(name="kineto")
def ingest_kineto_cmd(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Kineto Chrome-trace JSON files (.json or .json.gz), one per rank; a directory: "
            "the .json/.json.gz files in it"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="trace directory to write")],
    time_unit: Annotated[
        str, typer.Option(help="auto, us or ns: unit of ts/dur (auto: from displayTimeUnit and the values)")
    ] = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
) -> None:
    """Ingest PyTorch profiler (Kineto) traces and print what was mapped and what was not."""
    from tracesim.exceptions import TraceError
    from tracesim.ingest.kineto import TimeUnit, ingest_kineto

    units: dict[str, TimeUnit] = {"auto": "auto", "us": "us", "ns": "ns"}
    if time_unit not in units:
        raise TraceError(f"--time-unit: expected auto, us or ns, got {time_unit!r}")
    trace, report = ingest_kineto(files, time_unit=units[time_unit])
    _write_ingested(trace, report.lines(), out, overwrite)


export_app = typer.Typer(help="Export a replay result to other tools' formats.", no_args_is_help=True)
app.add_typer(export_app, name="export")


def _parse_ranks(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ranks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TracesimError(
            f"--ranks: expected comma-separated rank numbers, e.g. 0,1,2; got {text!r}"
        ) from None
    if not ranks:
        raise TracesimError(f"--ranks: no rank given in {text!r}")
    return ranks


@export_app.command(name="chrome")
def export_chrome_cmd(
    result: Annotated[Path, typer.Argument(help="result directory (tracesim simulate --out)")],
    out: Annotated[Path, typer.Option("--out", help="Chrome trace-event JSON file to write")],
    trace: Annotated[
        Path | None, typer.Option(help="the trace replayed (default: the one recorded in summary.json)")
    ] = None,
    ranks: Annotated[str | None, typer.Option(help="only these ranks, e.g. 0,1,2")] = None,
    start_ns: Annotated[int | None, typer.Option(help="only ops that end at or after this time")] = None,
    end_ns: Annotated[int | None, typer.Option(help="only ops that start at or before this time")] = None,
) -> None:
    """Write a result as Chrome trace-event JSON for Perfetto (ui.perfetto.dev) or chrome://tracing."""
    from tracesim.export.chrome import write_chrome
    from tracesim.simulate import read_result

    if not (result / "timeline.parquet").is_file() or not (result / "summary.json").is_file():
        raise TracesimError(f"{result}: not a result directory (expected timeline.parquet and summary.json)")
    res = read_result(result)
    if trace is None:
        recorded = (res.summary.get("trace") or {}).get("path")
        if recorded is None:
            raise TracesimError(f"{result}/summary.json: records no trace path; pass --trace TRACE")
        trace = Path(recorded)
        if not trace.exists():
            raise TracesimError(
                f"{result}/summary.json: the recorded trace {recorded} does not exist here; "
                "pass --trace TRACE"
            )
    path = write_chrome(
        res,
        read_trace(trace, validate=False),
        out,
        ranks=_parse_ranks(ranks),
        start_ns=start_ns,
        end_ns=end_ns,
    )
    console.print(f"wrote {path} (open it in ui.perfetto.dev or chrome://tracing)", highlight=False)


@ingest_app.command(name="chakra")
def ingest_chakra_cmd(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Chakra ET files, one per rank (protobuf <prefix>.<rank>.et, optionally gzipped, or "
            "Chakra JSON), a directory of them, or the <prefix> of <prefix>.<rank>.et"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="trace directory to write")],
    deps: Annotated[
        str, typer.Option(help="data, ctrl or both: which node deps become op deps (Chakra feeder: data)")
    ] = "data",
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
) -> None:
    """Ingest Chakra execution traces and print what was mapped and what was not."""
    from tracesim.exceptions import TraceError
    from tracesim.ingest.chakra import DepMode, ingest_chakra

    modes: dict[str, DepMode] = {"data": "data", "ctrl": "ctrl", "both": "both"}
    if deps not in modes:
        raise TraceError(f"--deps: expected data, ctrl or both, got {deps!r}")
    trace, report = ingest_chakra(files, deps=modes[deps])
    _write_ingested(trace, report.lines(), out, overwrite)


@ingest_app.command(name="pytorch-et")
def ingest_pytorch_et_cmd(
    files: Annotated[
        list[Path],
        typer.Argument(help="PyTorch execution-trace JSON files (.json or .json.gz), one per rank"),
    ],
    out: Annotated[Path, typer.Option("--out", help="trace directory to write")],
    kineto: Annotated[
        list[Path] | None,
        typer.Option(
            "--kineto",
            help="Kineto trace of the same run, one per ET (repeat the option): GPU kernels and "
            "their times from it, data-flow deps and shapes from the ET; paired by the rank in the "
            "ET file name (<prefix>.<rank>.json) and distributedInfo.rank, else in the order given",
        ),
    ] = None,
    time_unit: Annotated[
        str, typer.Option(help="auto, us or ns: unit of the Kineto files' ts/dur (with --kineto)")
    ] = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
) -> None:
    """Ingest PyTorch execution traces (schema 1.0.x/1.1.x), alone or paired with their Kineto traces,
    and print what was mapped and what was not."""
    from tracesim.exceptions import TraceError
    from tracesim.ingest.chakra import ingest_pytorch_et
    from tracesim.ingest.et_kineto import ingest_pytorch_et_kineto
    from tracesim.ingest.kineto import TimeUnit

    units: dict[str, TimeUnit] = {"auto": "auto", "us": "us", "ns": "ns"}
    if time_unit not in units:
        raise TraceError(f"--time-unit: expected auto, us or ns, got {time_unit!r}")
    if kineto:
        paired, preport = ingest_pytorch_et_kineto(files, kineto, time_unit=units[time_unit])
        _write_ingested(paired, preport.lines(), out, overwrite)
        return
    if time_unit != "auto":
        raise TraceError("--time-unit: only for the Kineto files of --kineto, and none was given")
    trace, report = ingest_pytorch_et(files)
    _write_ingested(trace, report.lines(), out, overwrite)


from tracesim.cli import report as _report  # noqa: E402

_report.register(app)

from tracesim.cli import sweep as _sweep  # noqa: E402

_sweep.register(app)

from tracesim.cli import synth as _synth  # noqa: E402

_synth.register(app)


def main() -> None:
    """Entry point: one line per error on stderr, non-zero exit."""
    debug = os.environ.get("TRACESIM_DEBUG") == "1"
    try:
        app(standalone_mode=False)
    except (TracesimError, OSError) as e:
        if debug:
            raise
        print(f"tracesim: error: {e}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("tracesim: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:  # usage errors: typer prints its own message
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            print(f"tracesim: error: {e}", file=sys.stderr)
        sys.exit(int(getattr(e, "exit_code", 2)))
    except Exception as e:
        if debug:
            raise
        print(
            f"tracesim: internal error: {type(e).__name__}: {e} (set TRACESIM_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
