"""Writes a synthetic Kineto (PyTorch profiler) trace of a given size, for ingest benchmarks.

One rank of a data-parallel training job, step after step: `ProfilerStep#N` annotations, CPU
operators with recorded shapes (`aten::linear` → `aten::addmm`, `aten::add_`), CUDA runtime
launches with correlation ids, their kernels on two compute streams, device-to-device copies,
`record_param_comms` + NCCL all-reduce kernels with collective metadata on a third stream,
`ac2g` flow events, a `cudaStreamWaitEvent` per layer, and a `cudaDeviceSynchronize` per step.
Times are microseconds with three decimals (ns) around 1.7e12 µs, as Kineto writes them.

    python benches/gen_kineto.py OUT.json --size-mb 1024 [--rank 0 --world 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PID = 2417
TID = 2417
KERNELS = [
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_"
    "segment_k_off_kernel__5x_cublas",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, "
    "at::detail::Array<char*, 3> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, "
    "at::detail::Array<char*, 3>)",
]


def _x(name: str, cat: str, tid: int | str, ts: int, dur: int, args: dict[str, Any] | None = None) -> str:
    ev = {
        "ph": "X",
        "cat": cat,
        "name": name,
        "pid": PID if cat not in ("kernel", "gpu_memcpy") else 0,
        "tid": tid,
        "ts": f"@{ts}",
        "dur": f"@{dur}",
    }
    if args is not None:
        ev["args"] = args
    s = json.dumps(ev, separators=(", ", ": "))
    # times as µs with three decimals, unquoted
    return s.replace(f'"@{ts}"', f"{ts // 1000}.{ts % 1000:03d}").replace(
        f'"@{dur}"', f"{dur // 1000}.{dur % 1000:03d}"
    )


class _Gen:
    def __init__(self, rank: int, world: int) -> None:
        self.t = 1_732_800_000_000_000  # ns
        self.corr = 1
        self.ext = 1
        self.seq = 0
        self.rank = rank
        self.world = world

    def launch(
        self, out: list[str], kname: str, stream: int, kdur: int, kargs: dict[str, Any] | None = None
    ) -> int:
        c = self.corr
        self.corr += 1
        t0 = self.t
        out.append(
            _x(
                "cudaLaunchKernel",
                "cuda_runtime",
                TID,
                t0,
                4_210,
                {"External id": self.ext, "cbid": 211, "correlation": c},
            )
        )
        k0 = t0 + 6_000 + 37 * (c % 11)
        args = {
            "External id": self.ext,
            "queued": 0,
            "device": 0,
            "context": 1,
            "stream": stream,
            "correlation": c,
            "registers per thread": 168,
            "shared memory": 213_504,
            "blocks per SM": 0.5,
            "warps per SM": 6.0,
            "grid": [66, 1, 1],
            "block": [384, 1, 1],
            "est. achieved occupancy %": 0,
        }
        if kargs:
            args.update(kargs)
        out.append(_x(kname, "kernel", stream, k0, kdur, args))
        out.append(
            json.dumps(
                {
                    "ph": "s",
                    "id": c,
                    "pid": PID,
                    "tid": TID,
                    "ts": f"{t0 // 1000}.{t0 % 1000:03d}",
                    "cat": "ac2g",
                    "name": "ac2g",
                }
            )
            .replace('"ts": "', '"ts": ')
            .replace('", "cat"', ', "cat"')
        )
        out.append(
            json.dumps(
                {
                    "ph": "f",
                    "id": c,
                    "pid": 0,
                    "tid": stream,
                    "ts": f"{k0 // 1000}.{k0 % 1000:03d}",
                    "cat": "ac2g",
                    "name": "ac2g",
                    "bp": "e",
                }
            )
            .replace('"ts": "', '"ts": ')
            .replace('", "cat"', ', "cat"')
        )
        self.t += 4_500
        return k0 + kdur

    def layer(self, out: list[str], tokens: int, hidden: int) -> None:
        t0 = self.t
        ext = self.ext
        self.ext += 1
        self.t += 2_000
        inner_start = self.t
        self.launch(out, KERNELS[0], 7, 180_000 + 13 * (ext % 50))
        self.t += 1_500
        out.append(
            _x(
                "aten::addmm",
                "cpu_op",
                TID,
                inner_start - 500,
                self.t - inner_start + 500,
                {
                    "External id": ext + 1_000_000,
                    "Record function id": 0,
                    "Ev Idx": ext,
                    "Input Dims": [[hidden], [tokens, hidden], [hidden, hidden], [], []],
                    "Input type": ["c10::BFloat16", "c10::BFloat16", "c10::BFloat16", "Scalar", "Scalar"],
                    "Input Strides": [[1], [hidden, 1], [1, hidden], [], []],
                    "Concrete Inputs": ["", "", "", "1", "1"],
                },
            )
        )
        out.append(
            _x(
                "aten::linear",
                "cpu_op",
                TID,
                t0,
                self.t - t0,
                {
                    "External id": ext,
                    "Ev Idx": ext,
                    "Input Dims": [[tokens, hidden], [hidden, hidden], [hidden]],
                    "Input type": ["c10::BFloat16", "c10::BFloat16", "c10::BFloat16"],
                },
            )
        )
        t1 = self.t
        out.append(_x("cudaStreamWaitEvent", "cuda_runtime", TID, t1, 1_800, {"correlation": self.corr}))
        self.corr += 1
        self.t += 2_500
        t2 = self.t
        self.launch(out, KERNELS[1], 20, 9_000 + 7 * (ext % 13))
        out.append(
            _x(
                "aten::add_",
                "cpu_op",
                TID,
                t2 - 300,
                self.t - t2 + 600,
                {
                    "External id": self.ext,
                    "Input Dims": [[tokens, hidden], [tokens, hidden], []],
                    "Input type": ["c10::BFloat16", "c10::BFloat16", "Scalar"],
                },
            )
        )
        self.ext += 1
        self.t += 1_000

    def allreduce(self, out: list[str], nelems: int) -> None:
        t0 = self.t
        self.t += 3_000
        meta = {
            "Collective name": "allreduce",
            "In msg nelems": nelems,
            "Out msg nelems": nelems,
            "Group size": self.world,
            "dtype": "BFloat16",
            "In split size": "[]",
            "Out split size": "[]",
            "Process Group Name": "0",
            "Process Group Description": "default_pg",
            "Process Group Ranks": json.dumps(list(range(self.world))),
            "Rank": self.rank,
            "Seq": self.seq,
        }
        self.seq += 1
        self.launch(
            out,
            "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
            24,
            850_000,
            meta,
        )
        out.append(
            _x("record_param_comms", "cpu_op", TID, t0, self.t - t0 + 500, {**meta, "External id": self.ext})
        )
        self.ext += 1
        self.t += 1_000

    def memcpy(self, out: list[str]) -> None:
        c = self.corr
        self.corr += 1
        t0 = self.t
        out.append(_x("cudaMemcpyAsync", "cuda_runtime", TID, t0, 5_300, {"correlation": c}))
        out.append(
            _x(
                "Memcpy DtoD (Device -> Device)",
                "gpu_memcpy",
                7,
                t0 + 7_000,
                2_100,
                {
                    "device": 0,
                    "context": 1,
                    "stream": 7,
                    "correlation": c,
                    "bytes": 4_194_304,
                    "memory bandwidth (GB/s)": 1_997.2,
                },
            )
        )
        self.t += 6_000

    def step(self, out: list[str], n: int, layers: int) -> None:
        t0 = self.t
        self.t += 5_000
        for i in range(layers):
            self.layer(out, 4096, 4096)
            if i % 8 == 7:
                self.allreduce(out, 4096 * 4096)
            if i % 16 == 0:
                self.memcpy(out)
        c = self.corr
        self.corr += 1
        gpu_end = self.t + 900_000
        out.append(
            _x("cudaDeviceSynchronize", "cuda_runtime", TID, self.t, gpu_end - self.t, {"correlation": c})
        )
        self.t = gpu_end + 20_000
        out.append(
            _x(f"ProfilerStep#{n}", "user_annotation", TID, t0, self.t - t0, {"External id": self.ext})
        )
        out.append(
            _x(
                f"ProfilerStep#{n}",
                "gpu_user_annotation",
                7,
                t0 + 6_000,
                self.t - t0 - 10_000,
                {"External id": self.ext},
            )
        )
        self.ext += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size-mb", type=float, default=1024.0)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=8)
    ap.add_argument("--layers", type=int, default=96, help="layers per step")
    a = ap.parse_args()
    target = int(a.size_mb * 1e6)
    g = _Gen(a.rank, a.world)
    with a.out.open("w") as f:
        head = {
            "schemaVersion": 1,
            "deviceProperties": [
                {"id": 0, "name": "NVIDIA H100 80GB HBM3", "totalGlobalMem": 85_045_477_376}
            ],
            "distributedInfo": {
                "backend": "nccl",
                "rank": a.rank,
                "world_size": a.world,
                "pg_count": 1,
                "pg_config": [
                    {
                        "pg_name": "0",
                        "pg_desc": "default_pg",
                        "backend_config": "cuda:nccl",
                        "pg_size": a.world,
                        "ranks": list(range(a.world)),
                    }
                ],
                "nccl_version": "2.21.5",
            },
            "record_shapes": 1,
            "with_stack": 0,
            "traceName": str(a.out),
            "displayTimeUnit": "ms",
            "baseTimeNanoseconds": 1_732_790_000_000_000_000,
        }
        text = json.dumps(head, indent=2)[:-2] + ',\n  "traceEvents": [\n'
        f.write(text)
        written = len(text)
        meta = [
            {"name": "process_name", "ph": "M", "ts": 0, "pid": PID, "tid": 0, "args": {"name": "python"}},
            {"name": "thread_name", "ph": "M", "ts": 0, "pid": PID, "tid": TID, "args": {"name": "thread 1"}},
            {"name": "process_name", "ph": "M", "ts": 0, "pid": 0, "tid": 0, "args": {"name": "GPU 0"}},
        ]
        first = True
        for m in meta:
            s = ("" if first else ",\n") + "  " + json.dumps(m)
            first = False
            f.write(s)
            written += len(s)
        n = 0
        while written < target:
            out: list[str] = []
            g.step(out, n, a.layers)
            n += 1
            s = ",\n" + ",\n".join("  " + e for e in out)
            f.write(s)
            written += len(s)
        f.write("\n  ]\n}\n")
    print(f"{a.out}: {a.out.stat().st_size / 1e6:.1f} MB, {n} steps")


if __name__ == "__main__":
    main()
