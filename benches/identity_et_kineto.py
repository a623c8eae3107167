"""PyTorch ET + Kineto pairs (docs/ingest.md): identity replay of the real pairs under
../shared/data, and ingest speed on a generated pair.

    python benches/identity_et_kineto.py               # real pairs, then a generated pair of 20,000 ops
    python benches/identity_et_kineto.py --ops 100000  # a larger generated pair

Identity: `ingest_pytorch_et_kineto`, replay in measured mode on dgx-h100, per-step (or whole
GPU span) simulated vs measured GPU step time, as `benches/identity_kineto.py` does for Kineto
traces alone (whose figure is printed next to it). Speed: MB/s of uncompressed JSON (ET and Kineto
together) for the paired ingest, and the Kineto ingest alone of the same Kineto file.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tracesim.ingest import ingest_kineto, ingest_pytorch_et_kineto

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benches.identity_kineto import step_errors

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# ET + Kineto files of the same run under ../shared/data (SOURCES.md). PARAM's linear_et /
# linear_kineto are not one: the ET covers another window of the process (refused: names disagree).
PAIRS = [
    (
        "hta/tests/data/execution_trace/benchmark_simple_add_et.json.gz",
        "hta/tests/data/execution_trace/benchmark_simple_add_trace.json.gz",
    ),
]


def _errs(spans: dict[tuple[int, int | None], tuple[int, int]]) -> tuple[float, float, float]:
    errs = [abs(s - m) / m for m, s in spans.values() if m > 0]
    return statistics.median(errs), max(errs), statistics.median(m for m, _ in spans.values()) / 1e6


def real_pairs() -> None:
    print(f"{'pair':<46} {'steps':>5} {'step ms':>9} {'median err':>10} {'worst':>7} {'Kineto alone':>12}")
    for et_rel, k_rel in PAIRS:
        et, kin = DATA / et_rel, DATA / k_rel
        if not et.is_file():
            print(f"{et}: absent (../shared/data not here)")
            continue
        trace, rep = ingest_pytorch_et_kineto([et], [kin])
        spans = step_errors(trace)
        med, worst, ms = _errs(spans)
        alone, _ = ingest_kineto([kin])
        amed, _, _ = _errs(step_errors(alone))
        steps = sum(1 for _, it in spans if it is not None) or "all"
        errs = f"{med * 100:>9.2f}% {worst * 100:>6.2f}% {amed * 100:>11.2f}%"
        print(f"{et.name:<46} {steps:>5} {ms:>9.3f} {errs}")
        print(
            f"    ET nodes {rep.et_nodes}, matched {sum(rep.et_matched.values())}, GPU ops with an ET op "
            f"{rep.gpu_with_et}, data deps added {rep.data_deps} (+{rep.data_deps_same_stream} by stream "
            f"order, {rep.data_deps_contradicted} contradicted), shapes from ET {rep.shapes_from_et}"
        )


def generate(tmp: Path, n_ops: int) -> tuple[Path, Path]:
    """A pair of n_ops operators: GEMMs on stream 7 and adds of their outputs on stream 13."""
    events: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = [
        {"id": 1, "name": "[pytorch|profiler|execution_trace|process]", "parent": 1, "rf_id": 0},
        {"id": 2, "name": "[pytorch|profiler|execution_trace|thread]", "parent": 1, "rf_id": 0, "tid": 1},
    ]
    t = "Tensor(c10::BFloat16)"
    for i in range(n_ops):
        ts = i * 50.0
        rf = i + 1
        mm = i % 2 == 0
        name = "aten::mm" if mm else "aten::add"
        args = {"External id": rf, "Record function id": rf}
        events.append(
            {"ph": "X", "cat": "cpu_op", "name": name, "pid": 1, "tid": 1, "ts": ts, "dur": 10, "args": args}
        )
        events.append(
            {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": ts + 2,
             "dur": 4, "args": {"correlation": rf}}
        )  # fmt: skip
        stream = 7 if mm else 13
        events.append(
            {"ph": "X", "cat": "kernel", "name": "sm80_xmma_gemm_bf16" if mm else "vectorized_kernel",
             "pid": 0, "tid": stream, "ts": ts + 10, "dur": 30 if mm else 8,
             "args": {"stream": stream, "correlation": rf}}
        )  # fmt: skip
        src = [i - 1, i - 1, 0, 4096, 2, "cuda:0"]
        out = [i, i, 0, 4096, 2, "cuda:0"]
        w = [10**9 + i, 10**9 + i, 0, 4096, 2, "cuda:0"]
        ins = [src, w] if i else [w, w]
        nodes.append(
            {"id": i + 3, "name": name, "parent": 2, "rf_id": rf, "tid": 1, "inputs": ins,
             "input_shapes": [[64, 64], [64, 64]], "input_types": [t, t], "outputs": [out]}
        )  # fmt: skip
    et, kin = tmp / "gen_et.0.json", tmp / "gen_kineto.json"
    et.write_text(json.dumps({"schema": "1.0.1", "pid": 1, "nodes": nodes}))
    kin.write_text(json.dumps({"distributedInfo": {"rank": 0}, "traceEvents": events}))
    return et, kin


def speed(n_ops: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        et, kin = generate(Path(d), n_ops)
        mb_pair = (et.stat().st_size + kin.stat().st_size) / 1e6
        mb_kin = kin.stat().st_size / 1e6
        best_pair = best_alone = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            trace, rep = ingest_pytorch_et_kineto([et], [kin])
            t1 = time.perf_counter()
            ingest_kineto([kin])
            t2 = time.perf_counter()
            best_pair, best_alone = min(best_pair, t1 - t0), min(best_alone, t2 - t1)
        print(
            f"generated pair, {n_ops:,} operators ({trace.num_ops:,} ops; {rep.data_deps:,} data deps): "
            f"ET + Kineto {mb_pair:.1f} MB in {best_pair:.2f} s = {mb_pair / best_pair:.1f} MB/s; "
            f"Kineto alone {mb_kin:.1f} MB in {best_alone:.2f} s = {mb_kin / best_alone:.1f} MB/s"
        )


def main(argv: list[str]) -> None:
    n = 20_000
    if argv[:1] == ["--ops"] and len(argv) > 1:
        n = int(argv[1])
    real_pairs()
    speed(n)


if __name__ == "__main__":
    main(sys.argv[1:])
