"""Ingest speed and peak memory of `tracesim ingest kineto` (issue #5: >= 50 MB/s of JSON, peak
memory below twice the JSON size).

Each file is ingested once in a fresh process (after `import tracesim`, so imports are not
timed), with `ingest_kineto([file])` as the CLI calls it. Printed per file: the JSON size
(uncompressed), the ingest time and rate, and the process's peak RSS over the JSON size: whole,
less the RSS after the imports (interpreter, polars, pyarrow and the extension), and less the RSS
after a warm-up ingest of a two-event trace (which also counts what the libraries load or set up
on first use: Polars' and Arrow's compute kernels and thread pools, ~35 MB). The last is the
memory the ingest of this file costs.

    python benches/ingest_speed.py                       # the 4 largest real traces
    python benches/ingest_speed.py FILE.json[.gz] ...     # e.g. benches/gen_kineto.py output
    python benches/ingest_speed.py R0.json+R1.json+...    # the rank files of one job, ingested together
    python benches/ingest_speed.py --pytorch-et ET.json ...  # PyTorch execution traces (ingest_pytorch_et)
    python benches/ingest_speed.py --chakra R.0.et R.0.json ...  # Chakra protobuf or JSON (ingest_chakra)

For Chakra, "JSON MB" is the file's size (protobuf is binary).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LARGEST = [
    "hta/tests/data/df_index_resolver/df_index_resolver.json.gz",
    "hta/tests/data/trace_diff/control/control.json.gz",
    "hta/tests/data/trace_diff/test/test.json.gz",
    "hta/tests/data/negative_queue_length_values_check/rank0.json.gz",
]

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import tracesim
from tracesim.ingest import ingest_chakra, ingest_kineto, ingest_pytorch_et

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0

imported = rss()
ingest = {"pytorch-et": ingest_pytorch_et, "chakra": ingest_chakra}.get(sys.argv[1], ingest_kineto)
with tempfile.TemporaryDirectory() as tmp:  # the warm-up: a tiny trace of the same kind
    tiny = Path(tmp) / "tiny.0.json"
    if ingest is ingest_chakra:
        tiny.write_text(json.dumps({"workload_graph": [
            {"Id": 1, "Name": "a", "NodeType": 4, "runtime": 5},
            {"Id": 2, "Name": "m", "NodeType": 1, "data_deps": [1]},
            {"Id": 3, "Name": "b", "NodeType": 4, "runtime": 5, "data_deps": [2, 1]},
        ]}))
    elif ingest is ingest_pytorch_et:
        tiny.write_text(json.dumps({"schema": "1.1.0", "nodes": [
            {"id": 1, "name": "[pytorch|profiler|execution_trace|thread]", "ctrl_deps": 0},
            {"id": 2, "name": "aten::mm", "ctrl_deps": 1},
        ]}))
    else:
        tiny.write_text(json.dumps({"traceEvents": [
            {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1,
             "ts": 0, "dur": 5, "args": {"correlation": 1}},
            {"ph": "X", "cat": "kernel", "name": "k", "pid": 1, "tid": 7, "ts": 6, "dur": 5,
             "args": {"correlation": 1, "stream": 7}},
        ]}))
    ingest([tiny])
before = rss()
t0 = time.perf_counter()
trace, report = ingest(sys.argv[2:])
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"s": dt, "peak": peak, "imported": imported, "before": before, "ops": trace.ops.num_rows}))
"""


def json_size(path: Path) -> int:
    with path.open("rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if not gz:
        return path.stat().st_size
    n = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            n += len(chunk)
    return n


def main(argv: list[str]) -> None:
    fmt = "kineto"
    if argv and argv[0] in ("--pytorch-et", "--chakra"):
        fmt, argv = argv[0][2:], argv[1:]
    jobs = [[Path(p) for p in a.split("+")] for a in argv] or [[DATA / p] for p in LARGEST]
    head = f"{'file':<48} {'JSON MB':>8} {'ops':>9} {'s':>7} {'MB/s':>6}"
    print(f"{head} {'peak/JSON':>9} {'(peak-imports)/JSON':>19} {'(peak-warm)/JSON':>16}")
    for job in jobs:
        size = sum(map(json_size, job))
        label = job[0].name if len(job) == 1 else f"{job[0].name} + {len(job) - 1} more ranks"
        out = subprocess.run(
            [sys.executable, "-c", CHILD, fmt, *map(str, job)], capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            print(f"{label[-48:]:<48} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mb = size / 1e6
        print(
            f"{label[-48:]:<48} {mb:8.1f} {r['ops']:9,} {r['s']:7.2f} {mb / r['s']:6.1f} "
            f"{r['peak'] / size:9.2f} {(r['peak'] - r['imported']) / size:19.2f} "
            f"{(r['peak'] - r['before']) / size:16.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
