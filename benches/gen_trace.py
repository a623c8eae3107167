"""Synthetic canonical traces for the replay benchmarks: R ranks × M ops per rank, vectorised.

Every rank runs the same 16-slot pattern (one "layer"); slot s of rank r has
`op_id = s * R + r`, so the op_id order is a valid schedule: the members of a collective
or a send/recv pair are created together (same slot), deps only point to earlier slots,
and each (rank, stream) runs its ops in op_id order.

    slot  0-4   compute (stream 0)
    slot  5     all_reduce over pairs {2i, 2i+1}          (stream 1)
    slot  6-8   compute
    slot  9     all_gather over blocks of 8 ranks         (stream 1)
    slot 10-11  compute
    slot 12     send r→r+1 on even ranks, matching recv on odd ranks   (stream 2)
    slot 13     send r→r+1 (mod R) on odd ranks, recv on even ranks     (stream 2)
    slot 14     compute
    slot 15     all_reduce over all ranks every `allreduce_every` slots, otherwise
                reduce_scatter over the blocks of 8       (stream 1)

Each communication op depends on the compute op before it, and a compute op two or
three slots later depends on it (the data it produced). Durations are pseudo-random but
deterministic for a seed. No Python loop runs per op: the columns are Polars expressions.
Rows come in op_id order, or grouped by rank with `row_order="rank"` (as in a trace merged
from per-rank files); the ops are the same. benches/replay.rs builds the identical trace in
Rust, so both benchmarks replay to the same makespan.

    python benches/gen_trace.py --ranks 64 --ops 10000000 --out /tmp/trace64
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa

import tracesim

PERIOD = 16
_MiB = 1 << 20
_GOLDEN = 0x9E3779B97F4A7C15
_MASK = 2**64 - 1

_KINDS = ("compute", "collective", "send", "recv")
_COLLS = ("all_reduce", "all_gather", "reduce_scatter")
_CATEGORIES = ("gemm", "attention", "elementwise", "norm")
_NAMES = (*_CATEGORIES, "nccl:all_reduce", "nccl:all_gather", "nccl:reduce_scatter", "nccl:send", "nccl:recv")
_WORLD, _PAIR, _BLOCK = 1, 2, 3  # group kinds


@dataclass(frozen=True)
class _Variant:
    """What an op does, given its slot in the period (and its side of a send/recv pair, or
    whether slot 15 is the world all_reduce): one row of the lookup table the columns gather from."""

    kind: int
    stream: int
    name: int
    category: int | None = None
    coll: int | None = None
    group: int | None = None
    comm_bytes: int | None = None
    peer_step: int | None = None  # +1: peer is r+1, -1: r-1 (mod R)
    dep_back: int | None = None  # the op `dep_back` slots earlier on this rank is a dep ...
    dep_from: int = 0  # ... from this period on


def _compute(slot: int, dep_back: int | None = None, dep_from: int = 0) -> _Variant:
    cat = (0, 0, 1, 2, 3)[slot % 5]
    return _Variant(0, 0, cat, category=cat, dep_back=dep_back, dep_from=dep_from)


def _coll(coll: int, group: int, nbytes: int) -> _Variant:
    return _Variant(1, 1, 4 + coll, coll=coll, group=group, comm_bytes=nbytes, dep_back=1)


def _p2p(send: bool, step: int, dep_back: int) -> _Variant:
    kind, peer = (2, step) if send else (3, -step)
    return _Variant(kind, 2, 7 + kind - 2, comm_bytes=16 * _MiB, peer_step=peer, dep_back=dep_back)


_SEND_A, _SEND_B, _RS = 12, 13, 15  # variants that have a second form, listed after the 16 slots
_VARIANTS: tuple[_Variant, ...] = (
    _compute(0, dep_back=3, dep_from=1),  # ← send/recv at slot 13 of the previous period
    _compute(1, dep_back=2, dep_from=1),  # ← collective at slot 15 of the previous period
    *(_compute(s) for s in (2, 3, 4)),
    _coll(0, _PAIR, 32 * _MiB),  # 5: all_reduce over pairs
    _compute(6),
    _compute(7, dep_back=2),  # ← slot 5
    _compute(8),
    _coll(1, _BLOCK, 64 * _MiB),  # 9: all_gather over blocks of 8
    _compute(10),
    _compute(11, dep_back=2),  # ← slot 9
    _p2p(True, +1, dep_back=1),  # 12: even ranks send to r+1
    _p2p(True, +1, dep_back=2),  # 13: odd ranks send to r+1
    _compute(14, dep_back=2),  # ← slot 12
    _coll(0, _WORLD, 256 * _MiB),  # 15: world all_reduce
    _p2p(False, +1, dep_back=1),  # 16: slot 12 on odd ranks: recv from r-1
    _p2p(False, +1, dep_back=2),  # 17: slot 13 on even ranks: recv from r-1
    _coll(2, _BLOCK, 64 * _MiB),  # 18: slot 15 without the world all_reduce: reduce_scatter
)

RowOrder = Literal["op_id", "rank"]


def _u64(v: int) -> pl.Expr:
    return pl.lit(v, dtype=pl.UInt64)


def _shr(x: pl.Expr, bits: int) -> pl.Expr:
    return x // _u64(1 << bits)


def _noise(x: pl.Expr, salt: int, modulo: int) -> pl.Expr:
    """A deterministic pseudo-random integer in [0, modulo) per row (splitmix64 of x and salt)."""
    z = x + _u64((_GOLDEN * (salt + 1)) & _MASK)
    z = (z ^ _shr(z, 30)) * _u64(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * _u64(0x94D049BB133111EB)
    return (z ^ _shr(z, 31)) % _u64(modulo)


def _lookup(field: str, dtype: pl.DataType | type[pl.DataType]) -> pl.Expr:
    """`_VARIANTS[v].field` per row, as a gather from a 19-value literal."""
    values = pl.Series([getattr(v, field) for v in _VARIANTS], dtype=dtype)
    return pl.lit(values).gather(pl.col("v"))


def _group_counts(ranks: int) -> tuple[int, int]:
    return ranks // 2, -(-ranks // 8)


def _groups_table(ranks: int) -> pa.Table:
    """Group 0 = all ranks; then the pairs {2i, 2i+1}; then blocks of 8 (the last may be short)."""
    pairs, blocks = _group_counts(ranks)
    offsets = [0, ranks]
    offsets += [ranks + 2 * (i + 1) for i in range(pairs)]
    offsets += [2 * ranks + min(8 * (i + 1), ranks) for i in range(blocks)]
    values = pa.array(list(range(ranks)) * 3, pa.uint32())
    names = ["world"] + [f"pair{i}" for i in range(pairs)] + [f"block{i}" for i in range(blocks)]
    return pa.table(
        {
            "group_id": pa.array(range(1 + pairs + blocks), pa.uint32()),
            "ranks": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values),
            "name": pa.array(names, pa.string()),
        }
    )


def _dictionary(codes: pl.Series, values: tuple[str, ...]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(codes.to_arrow(), pa.array(values, pa.string()))


def make_ops(
    ranks: int, ops_per_rank: int, seed: int = 0, allreduce_every: int = 64, row_order: RowOrder = "op_id"
) -> pa.Table:
    """The ops table. String columns come out dictionary-encoded; `conform` decodes them."""
    if ranks < 2 or ranks % 2:
        raise ValueError(f"ranks must be even and at least 2, got {ranks}")
    if ops_per_rank < 1:
        raise ValueError(f"ops_per_rank must be positive, got {ops_per_rank}")
    if allreduce_every < PERIOD or allreduce_every % PERIOD:
        raise ValueError(f"allreduce_every must be a positive multiple of {PERIOD}, got {allreduce_every}")
    n = ranks * ops_per_rank
    every = allreduce_every // PERIOD  # periods per world all_reduce
    pairs, _ = _group_counts(ranks)
    row = pl.int_range(0, n, dtype=pl.UInt64)
    if row_order == "op_id":
        slot_rank = [(row // ranks).alias("s"), (row % ranks).alias("r")]
    else:
        slot_rank = [(row % ops_per_rank).alias("s"), (row // ops_per_rank).alias("r")]
    s, r, p, q, v = pl.col("s"), pl.col("r"), pl.col("p"), pl.col("q"), pl.col("v")
    odd = (r % 2) == 1
    variant = (
        pl.when((p == _SEND_A) & odd)
        .then(pl.lit(16, pl.UInt32))
        .when((p == _SEND_B) & ~odd)
        .then(pl.lit(17, pl.UInt32))
        .when((p == _RS) & ((q % every) != (every - 1)))
        .then(pl.lit(18, pl.UInt32))
        .otherwise(p.cast(pl.UInt32))
    )
    group_kind = _lookup("group", pl.UInt8)
    group_id = (
        pl.when(group_kind == _WORLD)
        .then(_u64(0))
        .when(group_kind == _PAIR)
        .then(_u64(1) + r // 2)
        .when(group_kind == _BLOCK)
        .then(_u64(1 + pairs) + r // 8)
    )
    # A block group runs one collective at slot 9 of every period and one at slot 15 of the
    # periods without the world all_reduce.
    block_seq = q * 2 - q // every
    coll_seq = (
        pl.when(v == 5)  # pairs
        .then(q)
        .when(v == 9)
        .then(block_seq)
        .when(v == 18)
        .then(block_seq + 1)
        .when(v == 15)
        .then(q // every)
    )
    step = _lookup("peer_step", pl.Int8)
    peer = pl.when(step == 1).then((r + 1) % ranks).when(step == -1).then((r + ranks - 1) % ranks)
    is_compute = _lookup("kind", pl.UInt8) == 0
    # Compute: 2-50 µs; communication: 5-100 µs (a collective takes its members' smallest).
    duration = (
        pl.when(is_compute)
        .then(_u64(2_000) + _noise(pl.col("op_id"), seed, 48_000))
        .otherwise(_u64(5_000) + _noise(pl.col("op_id"), seed + 1, 95_000))
        .cast(pl.Int64)
    )
    dep_back = _lookup("dep_back", pl.UInt64)
    has_dep = dep_back.is_not_null() & (q >= _lookup("dep_from", pl.UInt64))
    frame = (
        pl.LazyFrame()
        .select(slot_rank)
        .with_columns(p=s % PERIOD, q=s // PERIOD, op_id=s * _u64(ranks) + r)
        .with_columns(v=variant)
        .with_columns(duration_ns=duration, is_compute=is_compute)
        .select(
            pl.col("op_id"),
            r.cast(pl.UInt32).alias("rank"),
            _lookup("stream", pl.UInt32).alias("stream"),
            _lookup("name", pl.Int8).alias("name"),
            _lookup("kind", pl.Int8).alias("kind"),
            _lookup("category", pl.Int8).alias("category"),
            pl.when(pl.col("is_compute")).then(pl.lit(0, pl.Int8)).alias("dtype"),
            pl.when(pl.col("is_compute"))
            .then(pl.col("duration_ns").cast(pl.Float64) * 4.0e5)  # ~40% of the bf16 peak
            .alias("flops"),
            pl.when(pl.col("is_compute"))
            .then(pl.col("duration_ns").cast(pl.UInt64) * _u64(1_000))
            .alias("bytes_read"),
            pl.col("duration_ns"),
            _lookup("coll", pl.Int8).alias("coll"),
            group_id.cast(pl.UInt32).alias("group_id"),
            coll_seq.alias("coll_seq"),
            _lookup("comm_bytes", pl.UInt64).alias("comm_bytes"),
            peer.cast(pl.UInt32).alias("peer"),
            pl.when(step.is_not_null()).then(q).alias("p2p_seq"),
            (s * 4 // _u64(ops_per_rank)).cast(pl.UInt32).alias("iteration"),
            pl.when(has_dep).then((s - dep_back) * _u64(ranks) + r).alias("dep"),
        )
        .collect()
    )
    # deps: a list of 0 or 1 op_ids per op, assembled from offsets rather than per-row lists.
    dep = frame.get_column("dep")
    offsets = pl.concat([pl.Series([0], dtype=pl.Int32), dep.is_not_null().cast(pl.Int32).cum_sum()])
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for name in frame.columns:
        col = frame.get_column(name)
        if name == "dep":
            columns["deps"] = pa.ListArray.from_arrays(offsets.to_arrow(), dep.drop_nulls().to_arrow())
        elif name in _STRINGS:
            columns[name] = _dictionary(col, _STRINGS[name])
        else:
            columns[name] = col.to_arrow()
        if name == "bytes_read":
            columns["bytes_written"] = columns[name]
    return pa.table(columns)


_STRINGS = {"name": _NAMES, "kind": _KINDS, "category": _CATEGORIES, "dtype": ("bf16",), "coll": _COLLS}


def make_trace(
    ranks: int,
    ops_per_rank: int,
    seed: int = 0,
    *,
    allreduce_every: int = 64,
    row_order: RowOrder = "op_id",
) -> tracesim.Trace:
    """A valid, deadlock-free trace of `ranks × ops_per_rank` ops (not validated here: call
    `tracesim.read_trace` or `Trace.validate` for that)."""
    ops = make_ops(ranks, ops_per_rank, seed, allreduce_every, row_order)
    return tracesim.Trace.from_tables(
        ops,
        ranks=ranks,
        groups=_groups_table(ranks),
        validate=False,
        source="benches/gen_trace.py",
        source_system="dgx-h100",
        generator={"ops_per_rank": ops_per_rank, "seed": seed, "allreduce_every": allreduce_every},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--ops", type=int, default=10_000_000, help="total ops (rounded down to ranks × M)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allreduce-every", type=int, default=64, help="slots between world all_reduces")
    parser.add_argument("--row-order", choices=["op_id", "rank"], default="op_id")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--validate", action="store_true", help="read the trace back with validation")
    args = parser.parse_args()
    ops_per_rank = max(1, args.ops // args.ranks)
    t0 = time.perf_counter()
    trace = make_trace(
        args.ranks, ops_per_rank, args.seed, allreduce_every=args.allreduce_every, row_order=args.row_order
    )
    t1 = time.perf_counter()
    tracesim.write_trace(trace, args.out, overwrite=True)
    t2 = time.perf_counter()
    print(f"ops          {trace.num_ops:>14,}  ({args.ranks} ranks × {ops_per_rank:,})")
    print(f"generate     {t1 - t0:>14.2f} s   ({trace.num_ops / (t1 - t0) / 1e6:.1f} M ops/s)")
    print(f"write        {t2 - t1:>14.2f} s   -> {args.out}")
    if args.validate:
        tracesim.read_trace(args.out)
        print(f"validate     {time.perf_counter() - t2:>14.2f} s   ok")


if __name__ == "__main__":
    main()
