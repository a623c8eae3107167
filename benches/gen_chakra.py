"""A large Chakra JSON trace for `benches/ingest_speed.py --chakra`: the real feeder trace of
../shared/data (chakra `json_trace.tar.gz`: 3,664 nodes, ~50 data deps each) repeated with its
node ids renumbered, written compact (no indentation: ~10 bytes a dep, the densest case).

    python benches/gen_chakra.py OUT.0.json --copies 20    # 37.6 MB, 73,280 nodes, 3.6 M deps
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCE = DATA / "chakra" / "tests" / "data" / "json_trace.tar.gz"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--copies", type=int, default=20)
    args = ap.parse_args(argv)
    if not SOURCE.exists():
        sys.exit(f"{SOURCE}: not found (../shared/data is needed)")
    with tarfile.open(SOURCE) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("/chakra.0.json"))
        f = tf.extractfile(member)
        assert f is not None
        data = json.load(io.TextIOWrapper(f))
    graph = data["workload_graph"]
    span = max(n["Id"] for n in graph) + 1
    out = []
    for k in range(args.copies):
        off = k * span
        for n in graph:
            m = dict(n, Id=n["Id"] + off)
            for key in ("data_deps", "ctrlDeps"):
                if isinstance(m.get(key), list):
                    m[key] = [x + off for x in m[key]]
            out.append(m)
    data["workload_graph"] = out
    args.out.write_text(json.dumps(data, separators=(",", ":")))
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, {len(out):,} nodes")


if __name__ == "__main__":
    main(sys.argv[1:])
