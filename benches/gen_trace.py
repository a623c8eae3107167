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

    python benches/gen_trace.py --ranks 64 --ops 10000000 --out /tmp/trace64
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa

import tracesim

PERIOD = 16
_PAIR, _BLOCK, _P2P_A, _P2P_B, _LAST = 5, 9, 12, 13, 15
_COMM_SLOTS = (_PAIR, _BLOCK, _P2P_A, _P2P_B, _LAST)
# slot in the period -> (slot offset of its one dep on the same rank, first period that has it)
_DEPS = {
    _PAIR: (1, 0),
    _BLOCK: (1, 0),
    _P2P_A: (1, 0),
    _P2P_B: (2, 0),
    _LAST: (1, 0),
    7: (2, 0),  # ← pair all_reduce at slot 5
    11: (2, 0),  # ← block all_gather at slot 9
    14: (2, 0),  # ← send/recv at slot 12
    0: (3, 1),  # ← send/recv at slot 13 of the previous period
    1: (2, 1),  # ← collective at slot 15 of the previous period
}
_COMPUTE_NAMES = ("gemm", "gemm", "attention", "elementwise", "norm")
_MiB = 1 << 20
_GOLDEN = 0x9E3779B97F4A7C15
_MASK = 2**64 - 1

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


def _pick(slot: pl.Expr, by_slot: dict[int, pl.Expr], default: pl.Expr | None = None) -> pl.Expr:
    """`by_slot[slot]` where the slot has an entry; `default` (or null) elsewhere."""
    items = list(by_slot.items())
    first_slot, first_value = items[0]
    chain = pl.when(slot == first_slot).then(first_value)
    for s, value in items[1:]:
        chain = chain.when(slot == s).then(value)
    return chain.otherwise(default) if default is not None else chain.otherwise(None)


def make_ops(
    ranks: int, ops_per_rank: int, seed: int = 0, allreduce_every: int = 64, row_order: RowOrder = "op_id"
) -> pa.Table:
    """The ops table (canonical column names, Polars/Arrow types that `conform` casts)."""
    if ranks < 2 or ranks % 2:
        raise ValueError(f"ranks must be even and at least 2, got {ranks}")
    if ops_per_rank < 1:
        raise ValueError(f"ops_per_rank must be positive, got {ops_per_rank}")
    if allreduce_every < PERIOD or allreduce_every % PERIOD:
        raise ValueError(f"allreduce_every must be a positive multiple of {PERIOD}, got {allreduce_every}")
    n = ranks * ops_per_rank
    every = allreduce_every // PERIOD  # periods per all-rank all_reduce
    pairs, _ = _group_counts(ranks)
    row = pl.int_range(0, n, dtype=pl.UInt64)
    if row_order == "op_id":
        slot_rank = [(row // ranks).alias("s"), (row % ranks).alias("r")]
    else:
        slot_rank = [(row % ops_per_rank).alias("s"), (row // ops_per_rank).alias("r")]

    s, r = pl.col("s"), pl.col("r")
    p, q = pl.col("p"), pl.col("q")
    op_id = s * _u64(ranks) + r
    odd = (r % 2) == 1
    world = (q % every) == (every - 1)
    is_send = pl.when(p == _P2P_A).then(~odd).when(p == _P2P_B).then(odd).otherwise(None)
    kind = _pick(
        p,
        {
            _PAIR: pl.lit("collective"),
            _BLOCK: pl.lit("collective"),
            _LAST: pl.lit("collective"),
            _P2P_A: pl.when(is_send).then(pl.lit("send")).otherwise(pl.lit("recv")),
            _P2P_B: pl.when(is_send).then(pl.lit("send")).otherwise(pl.lit("recv")),
        },
        pl.lit("compute"),
    )
    coll = _pick(
        p,
        {
            _PAIR: pl.lit("all_reduce"),
            _BLOCK: pl.lit("all_gather"),
            _LAST: pl.when(world).then(pl.lit("all_reduce")).otherwise(pl.lit("reduce_scatter")),
        },
    )
    block_group = _u64(1 + pairs) + r // 8
    group_id = _pick(
        p,
        {
            _PAIR: _u64(1) + r // 2,
            _BLOCK: block_group,
            _LAST: pl.when(world).then(_u64(0)).otherwise(block_group),
        },
    )
    # Block groups run one collective at slot 9 of every period and one at slot 15 of the
    # periods without the world all_reduce.
    block_seq = q * 2 - q // every
    coll_seq = _pick(
        p,
        {
            _PAIR: q,
            _BLOCK: block_seq,
            _LAST: pl.when(world).then(q // every).otherwise(block_seq + 1),
        },
    )
    comm_bytes = _pick(
        p,
        {
            _PAIR: _u64(32 * _MiB),
            _BLOCK: _u64(64 * _MiB),
            _P2P_A: _u64(16 * _MiB),
            _P2P_B: _u64(16 * _MiB),
            _LAST: pl.when(world).then(_u64(256 * _MiB)).otherwise(_u64(64 * _MiB)),
        },
    )
    up, down = (r + 1) % ranks, (r + ranks - 1) % ranks
    peer = pl.when(p.is_in([_P2P_A, _P2P_B])).then(pl.when(is_send).then(up).otherwise(down))
    stream = (
        pl.when(p.is_in([_P2P_A, _P2P_B]))
        .then(pl.lit(2, pl.UInt32))
        .when(p.is_in([_PAIR, _BLOCK, _LAST]))
        .then(pl.lit(1, pl.UInt32))
        .otherwise(pl.lit(0, pl.UInt32))
    )
    is_compute = ~p.is_in(list(_COMM_SLOTS))
    category_code = p % len(_COMPUTE_NAMES)
    category = pl.when(is_compute).then(
        _pick(category_code, {i: pl.lit(c) for i, c in enumerate(_COMPUTE_NAMES)})
    )
    name = pl.when(is_compute).then(category).otherwise(pl.concat_str(pl.lit("nccl:"), coll.fill_null(kind)))
    # Compute: 2-50 µs; communication: 5-100 µs (a collective takes its members' smallest).
    duration = (
        pl.when(is_compute)
        .then(_u64(2_000) + _noise(pl.col("op_id"), seed, 48_000))
        .otherwise(_u64(5_000) + _noise(pl.col("op_id"), seed + 1, 95_000))
        .cast(pl.Int64)
    )
    flops = pl.when(is_compute).then(duration.cast(pl.Float64) * 4.0e5)  # ~40% of bf16 peak
    nbytes = pl.when(is_compute).then(duration.cast(pl.UInt64) * _u64(1_000))

    dep_slot = _pick(p, {slot: _u64(back) for slot, (back, _) in _DEPS.items()})
    dep_from = _pick(p, {slot: _u64(first) for slot, (_, first) in _DEPS.items()})
    has_dep = dep_slot.is_not_null() & (q >= dep_from)
    dep = pl.when(has_dep).then((s - dep_slot) * _u64(ranks) + r)

    frame = (
        pl.LazyFrame()
        .select(slot_rank)
        .with_columns(p=s % PERIOD, q=s // PERIOD)
        .with_columns(op_id=op_id)
        .select(
            pl.col("op_id"),
            r.cast(pl.UInt32).alias("rank"),
            stream.alias("stream"),
            name.alias("name"),
            kind.alias("kind"),
            category.alias("category"),
            pl.when(is_compute).then(pl.lit("bf16")).alias("dtype"),
            flops.alias("flops"),
            nbytes.alias("bytes_read"),
            nbytes.alias("bytes_written"),
            duration.alias("duration_ns"),
            coll.alias("coll"),
            group_id.cast(pl.UInt32).alias("group_id"),
            coll_seq.alias("coll_seq"),
            comm_bytes.alias("comm_bytes"),
            peer.cast(pl.UInt32).alias("peer"),
            pl.when(p.is_in([_P2P_A, _P2P_B])).then(q).alias("p2p_seq"),
            (s * 4 // _u64(ops_per_rank)).cast(pl.UInt32).alias("iteration"),
            dep.alias("dep"),
        )
        .collect()
    )
    # deps: a list of 0 or 1 op_ids per op, built from offsets rather than per-row lists.
    dep_col = frame.get_column("dep")
    counts = dep_col.is_not_null().cast(pl.Int32)
    offsets = pl.concat([pl.Series([0], dtype=pl.Int32), counts.cum_sum()])
    deps = pa.ListArray.from_arrays(offsets.to_arrow(), dep_col.drop_nulls().to_arrow())
    table = frame.drop("dep").to_arrow()
    return table.append_column(pa.field("deps", pa.list_(pa.uint64())), deps)


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
