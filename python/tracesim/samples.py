"""Small synthetic traces in the canonical format: the samples in traces/ and the demo.

They are made by these functions, not measured: durations are the roofline time of each op
on an H100 SXM (hardware.md §2.1 peaks) divided by a fixed efficiency, so the traces are
self-consistent and `source_system = "dgx-h100"`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracesim.trace import Trace

_H100_BF16_FLOPS = 989.4e12  # hardware.md §2.1, dense
_H100_HBM_BYTES = 3.35e12  # hardware.md §2.1
_EFFICIENCY = 0.6


def _duration_ns(flops: float, nbytes: float) -> int:
    return max(1000, round(max(flops / _H100_BF16_FLOPS, nbytes / _H100_HBM_BYTES) / _EFFICIENCY * 1e9))


@dataclass
class _Builder:
    ops: list[dict[str, Any]] = field(default_factory=list)
    tensors: list[dict[str, Any]] = field(default_factory=list)

    def op(self, **fields: Any) -> int:
        op_id = len(self.ops)
        self.ops.append({"op_id": op_id, "deps": [], **fields})
        return op_id

    def tensor(self, rank: int, nbytes: int, cls: str, alloc: int | None, free: int | None) -> None:
        self.tensors.append(
            {
                "tensor_id": len(self.tensors),
                "rank": rank,
                "bytes": nbytes,
                "class": cls,
                "alloc_op": alloc,
                "free_op": free,
            }
        )

    def compute(self, rank: int, name: str, category: str, flops: float, nbytes: int, **kw: Any) -> int:
        return self.op(
            rank=rank,
            stream=0,
            name=name,
            kind="compute",
            category=category,
            dtype="bf16",
            flops=flops,
            bytes_read=nbytes // 2,
            bytes_written=nbytes - nbytes // 2,
            duration_ns=_duration_ns(flops, nbytes),
            **kw,
        )


def _table(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    return {k: [r.get(k) for r in rows] for k in keys}


def data_parallel_step(ranks: int = 2, layers: int = 4, hidden: int = 4096, tokens: int = 8192) -> Trace:
    """One data-parallel training step of a `layers`-layer MLP stack: forward and backward
    GEMMs on stream 0, one bucketed all-reduce per layer on stream 1 overlapping the rest of
    the backward pass, then the optimizer step once every bucket is reduced."""
    b = _Builder()
    weight = hidden * hidden * 2  # bf16
    act = tokens * hidden * 2
    gemm = 2.0 * tokens * hidden * hidden
    for r in range(ranks):
        for _ in range(layers):
            b.tensor(r, weight, "weight", None, None)
        fwd = []
        for layer in range(layers):
            op = b.compute(r, f"fwd_gemm_l{layer}", "gemm", gemm, weight + 2 * act, layer=layer, phase="fwd")
            fwd.append(op)
        reduces = []
        for layer in reversed(range(layers)):
            bwd = b.compute(
                r, f"bwd_gemm_l{layer}", "gemm", 2 * gemm, 2 * weight + 3 * act, layer=layer, phase="bwd"
            )
            b.tensor(r, act, "activation", fwd[layer], bwd)
            reduces.append(
                b.op(
                    rank=r,
                    stream=1,
                    name=f"allreduce_grad_l{layer}",
                    kind="collective",
                    category="communication",
                    coll="all_reduce",
                    group_id=0,
                    coll_seq=layers - 1 - layer,
                    comm_bytes=weight,
                    deps=[bwd],
                    layer=layer,
                    phase="bwd",
                )
            )
        b.compute(
            r,
            "adam_step",
            "optimizer",
            12.0 * layers * hidden * hidden,
            8 * layers * weight,
            deps=reduces,
            phase="optim",
        )
    for row in b.ops:
        row["iteration"] = 0
    # A collective's measured duration is its transfer time on NVLink4 (ring: 2(p-1)/p · n / 450 GB/s,
    # hardware.md §2.1) for the rank that arrives last; the replay makes the others wait.
    for row in b.ops:
        if row["kind"] == "collective":
            p = ranks
            row["duration_ns"] = round(
                936.25 * 2 * (p - 1) + 2 * (p - 1) / p * row["comm_bytes"] / 450e9 * 1e9
            )
    return Trace.from_tables(
        _table(b.ops),
        ranks=ranks,
        groups={"group_id": [0], "ranks": [list(range(ranks))], "name": ["dp"]},
        tensors=_table(b.tensors),
        source="tracesim.samples.data_parallel_step",
        source_system="dgx-h100",
    )


def pipeline_step(stages: int = 8, microbatches: int = 4, hidden: int = 4096, tokens: int = 4096) -> Trace:
    """One GPipe training step over `stages` ranks: all forward micro-batches, then all
    backward ones, activations and gradients passed between stages by send/recv."""
    b = _Builder()
    act = tokens * hidden * 2
    gemm = 2.0 * tokens * hidden * hidden * 4  # four GEMMs' worth per stage
    seq: dict[tuple[int, int], int] = {}

    def message(src: int, dst: int, name: str, after: int) -> tuple[int, int]:
        s = seq.get((src, dst), 0)
        seq[(src, dst)] = s + 1
        send = b.op(
            rank=src,
            stream=2,
            name=f"send_{name}",
            kind="send",
            category="communication",
            peer=dst,
            p2p_seq=s,
            comm_bytes=act,
            deps=[after],
            duration_ns=round(936.25 + act / 450e9 * 1e9),
        )
        recv = b.op(
            rank=dst,
            stream=1,
            name=f"recv_{name}",
            kind="recv",
            category="communication",
            peer=src,
            p2p_seq=s,
            comm_bytes=act,
            duration_ns=round(936.25 + act / 450e9 * 1e9),
        )
        return send, recv

    incoming: dict[tuple[int, int], int] = {}
    for m in range(microbatches):
        for s in range(stages):
            deps = [incoming[(s, m)]] if (s, m) in incoming else []
            fwd = b.compute(s, f"fwd_mb{m}", "gemm", gemm, 2 * act, deps=deps, phase="fwd")
            if s + 1 < stages:
                _, recv = message(s, s + 1, f"act_mb{m}", fwd)
                incoming[(s + 1, m)] = recv
    grads: dict[tuple[int, int], int] = {}
    for m in range(microbatches):
        for s in reversed(range(stages)):
            deps = [grads[(s, m)]] if (s, m) in grads else []
            bwd = b.compute(s, f"bwd_mb{m}", "gemm", 2 * gemm, 3 * act, deps=deps, phase="bwd")
            if s > 0:
                _, recv = message(s, s - 1, f"grad_mb{m}", bwd)
                grads[(s - 1, m)] = recv
    for row in b.ops:
        row["iteration"] = 0
    return Trace.from_tables(
        _table(b.ops),
        ranks=stages,
        source="tracesim.samples.pipeline_step",
        source_system="dgx-h100",
    )


def decode_steps(
    *,
    layers: int = 80,
    params: float = 70e9,
    weight_bytes_per_param: float = 1.0,
    kv_heads: int = 8,
    head_dim: int = 128,
    heads: int = 64,
    kv_bytes_per_value: int = 2,
    batch: int = 32,
    context: int = 2048,
    steps: int = 8,
) -> Trace:
    """`steps` decode steps of a dense transformer on one device, with weights and KV cache as
    tensors so memory tiers, placement and endurance can be studied (hardware.md §1.1).

    Per layer and step: one GEMM op that streams the layer's weights (params/layers of them)
    for `batch` tokens, and one attention op that reads every cached token's K and V of the
    batch and appends one token's worth. The defaults are the Llama-70B-class example of
    hardware.md §1.1 (FP8 weights, bf16 KV cache, 8 KV heads × 128, batch 32, context 2048).
    Durations are left out: this trace is meant for the roofline and retime models."""
    b = _Builder()
    per_layer_params = params / layers
    weight_bytes = round(per_layer_params * weight_bytes_per_param)
    kv_per_token = 2 * kv_heads * head_dim * kv_bytes_per_value  # K and V of one layer
    kv_capacity = batch * (context + steps) * kv_per_token
    weights = []
    caches = []
    for _ in range(layers):
        weights.append(len(b.tensors))
        b.tensor(0, weight_bytes, "weight", None, None)
        caches.append(len(b.tensors))
        b.tensor(0, kv_capacity, "kv_cache", None, None)
    accesses: list[dict[str, Any]] = []
    dtype = "fp8" if weight_bytes_per_param == 1 else "bf16"
    for step in range(steps):
        ctx = context + step
        for layer in range(layers):
            gemm = b.op(
                rank=0,
                stream=0,
                name=f"layer{layer}_gemms",
                kind="compute",
                category="gemm",
                dtype=dtype,
                flops=2.0 * per_layer_params * batch,
                bytes_read=weight_bytes,
                bytes_written=0,
                gemm_m=batch,
                iteration=step,
                layer=layer,
                phase="decode",
            )
            accesses.append(
                {"op_id": gemm, "tensor_id": weights[layer], "mode": "read", "bytes": weight_bytes}
            )
            read = batch * ctx * kv_per_token
            written = batch * kv_per_token
            attn = b.op(
                rank=0,
                stream=0,
                name=f"layer{layer}_attention",
                kind="compute",
                category="attention",
                dtype="bf16",
                flops=4.0 * batch * ctx * heads * head_dim,
                bytes_read=read,
                bytes_written=written,
                iteration=step,
                layer=layer,
                phase="decode",
            )
            accesses.append({"op_id": attn, "tensor_id": caches[layer], "mode": "read", "bytes": read})
            accesses.append({"op_id": attn, "tensor_id": caches[layer], "mode": "write", "bytes": written})
    return Trace.from_tables(
        _table(b.ops),
        ranks=1,
        tensors=_table(b.tensors),
        accesses=_table(accesses),
        source="tracesim.samples.decode_steps",
        source_system=None,
        batch=batch,
        tokens=batch * steps,
    )


def single_collective(ranks: int, comm_bytes: int, coll: str = "all_reduce") -> Trace:
    """One collective of `comm_bytes` (nccl-tests convention) over ranks 0..ranks-1 and
    nothing else, without measured durations: its replay time is the network model's."""
    ops = {
        "op_id": list(range(ranks)),
        "rank": list(range(ranks)),
        "stream": [0] * ranks,
        "name": [coll] * ranks,
        "kind": ["collective"] * ranks,
        "coll": [coll] * ranks,
        "group_id": [0] * ranks,
        "coll_seq": [0] * ranks,
        "comm_bytes": [comm_bytes] * ranks,
    }
    return Trace.from_tables(
        ops, ranks=ranks, groups={"group_id": [0], "ranks": [list(range(ranks))]}, source="single_collective"
    )
