"""Replay throughput and memory against Parquet reading (DESIGN.md §8). Prints figures only.

For each size it writes a synthetic trace once (benches/gen_trace.py, cached under
--trace-dir), then, in a fresh subprocess per case:

  (a) reads it: `tracesim.read_trace(dir, validate=False)`, best of --repeat;
  (b) replays it end to end: `tracesim.simulate(trace, "dgx-h100", compute_model="measured")`,
      best of --repeat;
  (c) memory of the first replay: RSS after loading the trace vs. the peak after replaying.
      `ru_maxrss` is the process's lifetime peak, so it also covers the Parquet read; the
      peak of the replay alone comes from resetting the kernel's VmHWM before it (Linux).

Unless --no-diagnose, one more subprocess per case times (b) and (c) again with the ops
table combined into one Arrow chunk beforehand (`read_trace` returns one chunk per Parquet
batch, which the engine concatenates), to show what that concatenation costs.

    python benches/bench_replay.py                        # 10M ops at 64 and at 4,096 ranks
    python benches/bench_replay.py --ranks 64 --ops 1000000 --repeat 1
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
SYSTEM = "dgx-h100"
TARGET_OPS_PER_S = 10e6
TARGET_BYTES_PER_OP = 150
TARGET_RATIO = 3.0

T = TypeVar("T")


def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes (empty where /proc is missing)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _maxrss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # kB on Linux


def _reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _timed(fn: Callable[[], T], repeat: int) -> tuple[float, float, T]:
    """Best wall and CPU seconds of `repeat` calls (each result dropped before the next), and
    the last result."""
    best_wall = best_cpu = float("inf")
    result: T | None = None
    for _ in range(max(1, repeat)):
        result = None
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    assert result is not None
    return best_wall, best_cpu, result


def _first_and_best(fn: Callable[[], Any], repeat: int) -> dict[str, Any]:
    """Runs `fn` once measuring memory (RSS before, VmHWM and ru_maxrss after), then
    `repeat - 1` more times; returns the best wall/CPU seconds and the memory figures."""
    gc.collect()
    rss_before = _status().get("VmRSS", 0)
    maxrss_before = _maxrss()
    hwm_reset = _reset_peak()
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    out = {
        "rss_before": rss_before,
        "maxrss_before": maxrss_before,
        "maxrss_after": _maxrss(),
        "hwm_after": _status().get("VmHWM", 0) if hwm_reset else 0,
        "result": result,
    }
    del result
    if repeat > 1:
        w, c, _ = _timed(fn, repeat - 1)
        wall, cpu = min(wall, w), min(cpu, c)
    out["wall_s"], out["cpu_s"] = wall, cpu
    return out


def child_simulate(trace_dir: Path, repeat: int) -> dict[str, Any]:
    """The case as users run it, in a fresh process: read, then `tracesim.simulate`."""
    import tracesim

    gc.collect()
    rss_start = _status().get("VmRSS", 0)
    read_s, read_cpu, trace = _timed(lambda: tracesim.read_trace(trace_dir, validate=False), repeat)
    run = _first_and_best(lambda: tracesim.simulate(trace, SYSTEM, compute_model="measured"), repeat)
    return {
        "ops": trace.num_ops,
        "ranks": trace.ranks,
        "chunks": trace.ops.column("op_id").num_chunks,
        "makespan_ns": run.pop("result").makespan_ns,
        "read_s": read_s,
        "read_cpu_s": read_cpu,
        "rss_start": rss_start,
        "trace_bytes": int(trace.ops.nbytes + (trace.groups.nbytes if trace.groups is not None else 0)),
        **run,
    }


def child_combined(trace_dir: Path, repeat: int) -> dict[str, Any]:
    """`tracesim.simulate` on the same trace with its ops table combined into one Arrow chunk
    beforehand (not timed), to show what the engine's concatenation of chunks costs."""
    import tracesim

    trace = tracesim.read_trace(trace_dir, validate=False)
    trace = dataclasses.replace(trace, ops=trace.ops.combine_chunks())
    run = _first_and_best(lambda: tracesim.simulate(trace, SYSTEM, compute_model="measured"), repeat)
    del run["result"]
    return {"ops": trace.num_ops, "chunks": trace.ops.column("op_id").num_chunks, **run}


def _ensure_trace(root: Path, ranks: int, ops: int, seed: int) -> Path:
    path = root / f"r{ranks}_n{ops}_s{seed}"
    if (path / "trace.json").is_file():
        return path
    cmd = [sys.executable, str(HERE / "gen_trace.py"), "--ranks", str(ranks), "--ops", str(ops)]
    cmd += ["--seed", str(seed), "--out", str(path)]
    print(f"# generating {path}", flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    sys.stderr.flush()
    return path


def _run_child(path: Path, mode: str, repeat: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", str(path), "--mode", mode, "--repeat", str(repeat)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _replay_bytes(r: dict[str, Any]) -> float | None:
    """Peak RSS of the replay alone above the RSS before it, per op (None without VmHWM)."""
    return (r["hwm_after"] - r["rss_before"]) / r["ops"] if r["hwm_after"] else None


def _print_case(r: dict[str, Any], diag: list[dict[str, Any]]) -> None:
    ops = r["ops"]
    mib = 2**20
    replay_bytes = _replay_bytes(r)
    rows: list[tuple[str, str]] = [
        ("ops", f"{ops:,} ({r['ranks']:,} ranks; ops table in {r['chunks']} Arrow chunks)"),
        ("Parquet read", f"{r['read_s']:.3f} s  (cpu {r['read_cpu_s']:.3f} s)"),
        ("replay (tracesim.simulate)", f"{r['wall_s']:.3f} s  (cpu {r['cpu_s']:.3f} s)"),
        (
            "replay ops/s",
            f"{ops / r['wall_s'] / 1e6:.2f} M/s wall, {ops / r['cpu_s'] / 1e6:.2f} M/s cpu"
            f"  (target >= {TARGET_OPS_PER_S / 1e6:.0f} M/s)",
        ),
        ("ratio replay/read", f"{r['wall_s'] / r['read_s']:.2f}  (target <= {TARGET_RATIO:g})"),
        ("RSS before read", f"{r['rss_start'] / mib:,.0f} MiB"),
        (
            "RSS after read",
            f"{r['rss_before'] / mib:,.0f} MiB  (Arrow tables {r['trace_bytes'] / mib:,.0f} MiB"
            f" = {r['trace_bytes'] / ops:.0f} B/op)",
        ),
        ("peak RSS (ru_maxrss) after", f"{r['maxrss_after'] / mib:,.0f} MiB"),
        (
            "bytes/op (ru_maxrss - loaded)",
            f"{(r['maxrss_after'] - r['rss_before']) / ops:.1f}  (target <= {TARGET_BYTES_PER_OP})"
            + ("  [ru_maxrss is the read's peak]" if r["maxrss_after"] == r["maxrss_before"] else ""),
        ),
    ]
    if replay_bytes is not None:
        rows.append(("bytes/op (replay's own peak)", f"{replay_bytes:.1f}  (VmHWM reset before the replay)"))
    rows.append(("total peak RSS/op", f"{r['maxrss_after'] / ops:.1f} bytes"))
    for d in diag:
        label = f"replay, ops in {d['chunks']} chunk{'s' if d['chunks'] > 1 else ''}"
        b = _replay_bytes(d)
        rows.append(
            (
                label,
                f"{d['wall_s']:.3f} s = {ops / d['wall_s'] / 1e6:.2f} M ops/s"
                + (f", peak +{b:.1f} B/op" if b is not None else ""),
            )
        )
    print(
        f"\n== {r['ranks']} ranks, {ops:,} ops, {SYSTEM}, compute_model=measured; "
        f"makespan {r['makespan_ns']} ns"
    )
    for label, value in rows:
        print(f"  {label:<31} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[64, 4096])
    parser.add_argument("--ops", type=int, default=10_000_000, help="total ops per trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--trace-dir", type=Path, default=Path("/tmp/tracesim-bench"))
    parser.add_argument("--no-diagnose", action="store_true", help="skip the one-chunk replay")
    parser.add_argument("--json", action="store_true", help="also print each case as JSON lines")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["simulate", "combined"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        if args.mode == "combined":
            out = child_combined(args.child, args.repeat)
        else:
            out = child_simulate(args.child, args.repeat)
        print(json.dumps(out))
        return
    for ranks in args.ranks:
        path = _ensure_trace(args.trace_dir, ranks, args.ops, args.seed)
        result = _run_child(path, "simulate", args.repeat)
        diag = [] if args.no_diagnose else [_run_child(path, "combined", args.repeat)]
        _print_case(result, diag)
        if args.json:
            for r in (result, *diag):
                print(json.dumps(r))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
