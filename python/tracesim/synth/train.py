"""Synthesised per-rank traces of one training step of a transformer (docs/synth.md).

Rank layout (Megatron-LM): ``rank = dp_idx * (pp * tp) + pp_idx * tp + tp_idx``; tensor-parallel
groups are consecutive ranks, pipeline stages are ``tp`` ranks apart, data-parallel replicas
``pp * tp`` ranks apart. Expert parallelism (``ep``) lives inside data parallelism: the expert-
parallel group of a rank is the ``ep`` consecutive data-parallel indices ``[k·ep, (k+1)·ep)`` at the
same (pp, tp) position, and expert weights are data-parallel over the ``dp/ep`` ranks with the same
``dp_idx % ep`` (the expert-data-parallel group).

Streams on every rank: 0 compute and the blocking tensor-parallel / expert all-to-all collectives
(as in Megatron), 1 data-parallel gradient reductions (overlapped with backward) and ZeRO
parameter all-gathers after the optimizer, 2 sends of activations to the next stage, 3 sends of
gradients to the previous stage, 4 receives of activations, 5 receives of gradients, 6 the
sequence-parallel re-gather of a GEMM input for its weight gradient (overlapped with the dgrad
GEMM), 7 ZeRO-3 parameter all-gathers (prefetched one op ahead of the layer that needs them).

All ranks of a pipeline stage run the same op sequence, so one template is built per stage in
Python and expanded to every rank of the stage with NumPy/Arrow; the only per-rank columns are
rank, op_id, deps (shifted), group_id and peer. Within a template, the forward (backward) body
of every micro-batch on a model chunk is the same op sequence: the first is built op by op and
recorded (`_Body`), the others are replayed from the recording with shifted indices.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from tracesim.exceptions import TracesimError
from tracesim.format import OPS
from tracesim.synth.models import ModelSpec, load_model
from tracesim.trace import Trace

Recompute = Literal["none", "full", "selective"]
Schedule = Literal["1f1b", "gpipe"]
Attention = Literal["flash", "unfused"]
DType = Literal["bf16", "fp16", "fp8"]
Granularity = Literal["op", "block"]

S_COMPUTE, S_DP, S_SEND_ACT, S_SEND_GRAD, S_RECV_ACT, S_RECV_GRAD, S_TP_SIDE, S_ZERO = range(8)
ROLE_NONE, ROLE_TP, ROLE_DP, ROLE_EP, ROLE_EDP = range(5)
PEER_NONE, PEER_PREV, PEER_NEXT = 0, 1, 2

# Bytes per parameter of mixed-precision Adam (ZeRO paper §3.1): 2 weight, 2 gradient,
# 12 optimizer state (fp32 master weight, momentum, variance).
WEIGHT_BYTES, GRAD_BYTES, OPTIM_BYTES = 2, 2, 12


class PlanError(TracesimError):
    """A parallelism plan that does not fit the model or the GPU count."""


@dataclass(frozen=True)
class Plan:
    gpus: int
    tp: int
    pp: int
    dp: int
    micro_batch: int
    global_batch: int
    microbatches: int
    seq: int
    dtype: DType
    recompute: Recompute
    schedule: Schedule
    vocab_padded: int
    attention: Attention = "flash"
    vp: int = 1
    sp: bool = False
    zero: int = 0
    ep: int = 1
    granularity: Granularity = "op"

    @property
    def edp(self) -> int:
        """Size of the expert-data-parallel group (ranks holding the same experts)."""
        return self.dp // self.ep


def make_plan(
    model: ModelSpec,
    *,
    gpus: int,
    tp: int,
    pp: int,
    micro_batch: int,
    global_batch: int,
    seq: int | None,
    dtype: str,
    recompute: str,
    schedule: str,
    attention: str = "flash",
    vp: int = 1,
    sp: bool = False,
    zero: int = 0,
    ep: int = 1,
    granularity: str = "op",
) -> Plan:
    """Checks the plan against the model and GPU count; raises PlanError with a clear message."""
    for name, v in (
        ("gpus", gpus),
        ("tp", tp),
        ("pp", pp),
        ("micro-batch", micro_batch),
        ("vp", vp),
        ("ep", ep),
    ):
        if v < 1:
            raise PlanError(f"--{name}: must be at least 1, got {v}")
    if dtype not in ("bf16", "fp16", "fp8"):
        raise PlanError(f"--dtype: expected bf16, fp16 or fp8, got {dtype!r}")
    if recompute not in ("none", "full", "selective"):
        raise PlanError(f"--recompute: expected none, full or selective, got {recompute!r}")
    if schedule not in ("1f1b", "gpipe"):
        raise PlanError(f"--schedule: expected 1f1b or gpipe, got {schedule!r}")
    if attention not in ("flash", "unfused"):
        raise PlanError(f"--attention: expected flash or unfused, got {attention!r}")
    if zero not in (0, 1, 2, 3):
        raise PlanError(f"--zero: expected 0, 1, 2 or 3, got {zero}")
    if granularity not in ("op", "block"):
        raise PlanError(f"--granularity: expected op or block, got {granularity!r}")
    if gpus % (tp * pp):
        raise PlanError(f"--gpus {gpus} is not a multiple of tp × pp = {tp} × {pp} = {tp * pp}")
    dp = gpus // (tp * pp)
    if model.layers % pp:
        raise PlanError(f"model {model.name}: {model.layers} layers do not divide into pp = {pp} stages")
    for what, n in (
        ("heads", model.heads),
        ("kv_heads", model.n_kv_heads),
        ("ffn_hidden", model.ffn),
    ):
        if n % tp:
            raise PlanError(f"model {model.name}: {what} = {n} is not divisible by tp = {tp}")
    if global_batch % (dp * micro_batch):
        raise PlanError(
            f"--global-batch {global_batch} is not a multiple of dp × micro-batch = "
            f"{dp} × {micro_batch} = {dp * micro_batch}"
        )
    microbatches = global_batch // (dp * micro_batch)
    s = model.seq if seq is None else seq
    if s < 1:
        raise PlanError(f"--seq: must be at least 1, got {s}")
    if vp > 1:
        if pp < 2:
            raise PlanError(f"--vp {vp}: interleaved stages need pp ≥ 2, got pp = {pp}")
        if schedule != "1f1b":
            raise PlanError(f"--vp {vp}: interleaved stages need --schedule 1f1b, got {schedule}")
        if model.layers % (pp * vp):
            raise PlanError(
                f"--vp {vp}: model {model.name}: {model.layers} layers do not divide into pp × vp = "
                f"{pp} × {vp} = {pp * vp} model chunks"
            )
        if microbatches % pp:
            raise PlanError(
                f"--vp {vp}: the interleaved schedule needs micro-batches per step ({microbatches}) to be "
                f"a multiple of pp = {pp}"
            )
    if sp:
        if tp < 2:
            raise PlanError(f"--sp: sequence parallelism needs tp ≥ 2, got tp = {tp}")
        if s % tp:
            raise PlanError(f"--sp: sequence length {s} is not divisible by tp = {tp}")
    if ep > 1 and not model.experts:
        raise PlanError(f"--ep {ep}: model {model.name} has no experts (a dense model)")
    if model.experts:
        if model.experts % ep:
            raise PlanError(f"--ep {ep} does not divide the {model.experts} experts of model {model.name}")
        if dp % ep:
            raise PlanError(f"--ep {ep} does not divide dp = {dp} (expert parallelism lives inside dp)")
    # Megatron pads the vocabulary to a multiple of 128 · tp.
    mult = 128 * tp
    vocab_padded = -(-model.vocab // mult) * mult
    return Plan(
        gpus=gpus,
        tp=tp,
        pp=pp,
        dp=dp,
        micro_batch=micro_batch,
        global_batch=global_batch,
        microbatches=microbatches,
        seq=s,
        dtype=dtype,  # type: ignore[arg-type]
        recompute=recompute,  # type: ignore[arg-type]
        schedule=schedule,  # type: ignore[arg-type]
        vocab_padded=vocab_padded,
        attention=attention,  # type: ignore[arg-type]
        vp=vp,
        sp=sp,
        zero=zero,
        ep=ep,
        granularity=granularity,  # type: ignore[arg-type]
    )


def schedule_order(schedule: str, pp: int, stage: int, m: int) -> list[tuple[str, int]]:
    """The ("F"|"B", micro-batch) sequence a stage runs: GPipe or non-interleaved 1F1B."""
    if schedule == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    warmup = min(pp - stage - 1, m)
    order = [("F", i) for i in range(warmup)]
    for i in range(m - warmup):
        order += [("F", warmup + i), ("B", i)]
    order += [("B", i) for i in range(m - warmup, m)]
    return order


def interleaved_order(pp: int, stage: int, m: int, vp: int) -> list[tuple[str, int, int]]:
    """The ("F"|"B", micro-batch, model chunk) sequence of Megatron-LM's interleaved 1F1B
    (schedules.py, forward_backward_pipelining_with_interleaving): micro-batches go through the
    chunks in groups of pp; warm-up of (pp − stage − 1)·2 + (vp − 1)·pp forwards (all of them when
    m = pp), then one forward / one backward, then the remaining backwards."""
    total = m * vp

    def chunk(k: int, forward: bool) -> int:
        c = (k % (pp * vp)) // pp
        return c if forward else vp - 1 - c

    def micro(k: int) -> int:
        return (k // (pp * vp)) * pp + k % pp

    warmup = total if m == pp else min((pp - stage - 1) * 2 + (vp - 1) * pp, total)
    order = [("F", micro(k), chunk(k, True)) for k in range(warmup)]
    for i in range(total - warmup):
        k = warmup + i
        order += [("F", micro(k), chunk(k, True)), ("B", micro(i), chunk(i, False))]
    order += [("B", micro(k), chunk(k, False)) for k in range(total - warmup, total)]
    return order


_OP_COLS = (
    "stream",
    "name",
    "kind",
    "category",
    "dtype",
    "flops",
    "bytes_read",
    "bytes_written",
    "coll",
    "coll_seq",
    "comm_bytes",
    "p2p_seq",
    "layer",
    "phase",
    "gemm_m",
    "gemm_n",
    "gemm_k",
)


@dataclass
class _Template:
    """The op and tensor sequence of one rank of a stage, with local op indices. Sends and
    receives carry a message key in `msg`; their p2p_seq is assigned across stages afterwards
    (`_assign_p2p_seq`), since with interleaving two stages exchange both activations and gradients."""

    _cols: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in _OP_COLS})
    _pending: list[dict[str, Any]] = field(default_factory=list)  # rows not yet in _cols
    deps: list[list[int]] = field(default_factory=list)
    role: list[int] = field(default_factory=list)
    peer: list[int] = field(default_factory=list)
    msg: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    tensors: list[tuple[int, str, int | None, int | None]] = field(default_factory=list)
    coll_seq: dict[int, int] = field(default_factory=dict)
    p2p_seq: dict[int, int] = field(default_factory=dict)
    last_main: int | None = None
    journal: list[tuple[int, int]] | None = None  # set_free calls, while a body is recorded

    @property
    def n(self) -> int:
        return len(self.deps)

    @property
    def cols(self) -> dict[str, list[Any]]:
        """The op columns (rows are buffered by `op` and moved here column by column, which is
        several times faster than appending to every column per op)."""
        if self._pending:
            rows = self._pending
            for c in _OP_COLS:
                self._cols[c].extend([r.get(c) for r in rows])
            self._pending = []
        return self._cols

    def op(
        self,
        stream: int,
        name: str,
        kind: str,
        *,
        deps: list[int] | None = None,
        role: int = ROLE_NONE,
        peer: int = PEER_NONE,
        msg: tuple[str, int, int] | None = None,
        **kw: Any,
    ) -> int:
        i = self.n
        if kind == "collective":
            kw["coll_seq"] = self.coll_seq.get(role, 0)
            self.coll_seq[role] = kw["coll_seq"] + 1
        elif msg is not None:
            self.msg[i] = msg
        elif kind in ("send", "recv"):  # no message key: the n-th message to / from this peer
            key = peer if kind == "send" else -peer
            kw["p2p_seq"] = self.p2p_seq.get(key, 0)
            self.p2p_seq[key] = kw["p2p_seq"] + 1
        kw["stream"], kw["name"], kw["kind"] = stream, name, kind
        self._pending.append(kw)
        self.deps.append([d for d in deps if d is not None] if deps else [])
        self.role.append(role)
        self.peer.append(peer)
        if stream == S_COMPUTE:
            self.last_main = i
        return i

    def tensor(self, nbytes: int, cls: str, alloc: int | None = None, free: int | None = None) -> int:
        self.tensors.append((int(nbytes), cls, alloc, free))
        return len(self.tensors) - 1

    def set_free(self, tid: int, op: int) -> None:
        self.tensors[tid] = (*self.tensors[tid][:3], op)
        if self.journal is not None:
            self.journal.append((tid, op))


@dataclass(frozen=True)
class _Bucket:
    """Parameters of one gradient bucket on one rank (before ZeRO sharding), and the group that
    reduces them: the data-parallel group, or the expert-data-parallel group for expert weights."""

    what: str
    params: int
    layer: int | None
    role: int


_EXT_DEP, _EXT_LAST_MAIN = -1, -2  # recorded deps outside the body: the body's deps, last_main


@dataclass
class _Body:
    """One recorded forward or backward body (ops, tensors and their side effects) in indices
    relative to its first op and first tensor; `replay` appends it again for another micro-batch."""

    cols: dict[str, list[Any]]
    deps: list[list[int]]
    role: list[int]
    peer: list[int]
    coll_rel: list[tuple[int, int, int]]  # (op, role, n-th collective of that role in the body)
    coll_count: dict[int, int]
    tensors: list[tuple[int, str, int | None, int | None]]
    opened: list[tuple[int, int]]  # (open_acts key without mb, tensor index in the body)
    closed: list[tuple[int, int]]  # (open_acts key without mb, op in the body) freed here
    reduces: list[int]
    last_main: int | None
    last: int

    @staticmethod
    def record(
        b: _StageBuilder,
        mb: int,
        deps: list[int] | None,
        n0: int,
        nt0: int,
        seq0: dict[int, int],
        lm0: int | None,
        nred0: int,
        by_tid: dict[int, int],
        before: set[tuple[int, int]],
        journal: list[tuple[int, int]],
        last: int,
    ) -> _Body:
        t = b.t
        cols = t.cols
        n1 = t.n
        ext = {d: _EXT_DEP - i * 2 for i, d in enumerate(deps or [])}  # -1, -3, -5, …

        def rel(d: int) -> int:
            if d >= n0:
                return d - n0
            if d in ext:
                return ext[d]
            if d == lm0:
                return _EXT_LAST_MAIN
            raise AssertionError(f"synth: body of micro-batch {mb} depends on op {d} outside it")

        coll_rel = []
        for i in range(n0, n1):
            if cols["kind"][i] == "collective":
                role = t.role[i]
                coll_rel.append((i - n0, role, cols["coll_seq"][i] - seq0.get(role, 0)))
        return _Body(
            cols={c: cols[c][n0:n1] for c in _OP_COLS},
            deps=[[rel(d) for d in ds] for ds in t.deps[n0:n1]],
            role=t.role[n0:n1],
            peer=t.peer[n0:n1],
            coll_rel=coll_rel,
            coll_count={r: t.coll_seq.get(r, 0) - seq0.get(r, 0) for r in t.coll_seq},
            tensors=[
                (nb, c, None if a is None else a - n0, None if f is None else f - n0)
                for nb, c, a, f in t.tensors[nt0:]
            ],
            opened=[(k[1], tid - nt0) for k, tid in b.open_acts.items() if k not in before],
            closed=[(by_tid[tid], op - n0) for tid, op in journal if tid < nt0],
            reduces=[r - n0 for r in b.dp_reduces[nred0:]],
            last_main=None if t.last_main is None or t.last_main < n0 else t.last_main - n0,
            last=last - n0,
        )

    def replay(self, b: _StageBuilder, mb: int, deps: list[int] | None) -> int:
        t = b.t
        cols = t.cols
        n0, nt0, lm0 = t.n, len(t.tensors), t.last_main
        ext = {_EXT_DEP - i * 2: d for i, d in enumerate(deps or [])}
        if lm0 is not None:
            ext[_EXT_LAST_MAIN] = lm0
        for c in _OP_COLS:
            cols[c].extend(self.cols[c])
        seq_col = cols["coll_seq"]
        for i, role, k in self.coll_rel:
            seq_col[n0 + i] = t.coll_seq.get(role, 0) + k
        for role, k in self.coll_count.items():
            t.coll_seq[role] = t.coll_seq.get(role, 0) + k
        t.deps.extend([[d + n0 if d >= 0 else ext[d] for d in ds] for ds in self.deps])
        t.role.extend(self.role)
        t.peer.extend(self.peer)
        t.tensors.extend(
            (nb, c, None if a is None else a + n0, None if f is None else f + n0)
            for nb, c, a, f in self.tensors
        )
        for key, tid in self.opened:
            b.open_acts[(mb, key)] = nt0 + tid
        for key, op in self.closed:
            t.set_free(b.open_acts.pop((mb, key)), n0 + op)
        b.dp_reduces.extend(r + n0 for r in self.reduces)
        if self.last_main is not None:
            t.last_main = n0 + self.last_main
        return n0 + self.last


class _StageBuilder:
    """Builds the template of one pipeline stage (all its model chunks when interleaved)."""

    def __init__(self, model: ModelSpec, plan: Plan, stage: int) -> None:
        self.m = model
        self.p = plan
        self.stage = stage
        self.t = _Template()
        self.tokens = plan.micro_batch * plan.seq
        self.act = 2  # bytes per activation element (bf16/fp16 also under fp8 GEMMs)
        self.gemm_dtype = plan.dtype
        self.gemm_in = 1 if plan.dtype == "fp8" else 2
        self.act_dtype = "bf16" if plan.dtype == "fp8" else plan.dtype
        lc = model.layers // (plan.pp * plan.vp)
        # Model chunk c of this stage is virtual stage c·pp + stage (Megatron's interleaved layout).
        self.chunks = [
            list(range((c * plan.pp + stage) * lc, (c * plan.pp + stage + 1) * lc)) for c in range(plan.vp)
        ]
        self.layers = [layer for chunk in self.chunks for layer in chunk]
        self.has_first = stage == 0
        self.has_last = stage == plan.pp - 1
        self.dp_reduces: list[int] = []
        self.open_acts: dict[tuple[int, int], int] = {}
        self.bodies: dict[tuple[str, int, bool, int, bool], _Body] = {}
        # Tokens in the norm / dropout regions: split over tp under sequence parallelism.
        self.region = self.tokens // plan.tp if plan.sp else self.tokens
        moe = model.experts > 0
        self.local_experts = model.experts // plan.ep if moe else 0
        # Tokens routed to this rank's experts: T·top_k·capacity_factor, spread over its experts.
        self.expert_tokens = (
            math.ceil(self.tokens * model.top_k * model.capacity_factor * plan.ep / model.experts)
            if moe
            else 0
        )
        self.routed = self.local_experts * self.expert_tokens

    def is_first(self, chunk: int) -> bool:
        return self.has_first and chunk == 0

    def is_last(self, chunk: int) -> bool:
        return self.has_last and chunk == self.p.vp - 1

    def vstage(self, chunk: int) -> int:
        return chunk * self.p.pp + self.stage

    # --- op helpers -------------------------------------------------------------------------
    def gemm(self, name: str, m: int, n: int, k: int, layer: int | None, phase: str, deps: Any = None) -> int:
        return self.t.op(
            S_COMPUTE,
            name,
            "compute",
            deps=deps,
            category="gemm",
            dtype=self.gemm_dtype,
            flops=2.0 * m * n * k,
            bytes_read=(m * k + k * n) * self.gemm_in,
            bytes_written=m * n * self.act,
            gemm_m=m,
            gemm_n=n,
            gemm_k=k,
            layer=layer,
            phase=phase,
        )

    def elem(
        self,
        name: str,
        category: str,
        n: int,
        reads: int,
        writes: int,
        flops_per: float,
        layer: int | None,
        phase: str,
        deps: Any = None,
    ) -> int:
        return self.t.op(
            S_COMPUTE,
            name,
            "compute",
            deps=deps,
            category=category,
            dtype=self.act_dtype,
            flops=float(n * flops_per),
            bytes_read=n * reads * self.act,
            bytes_written=n * writes * self.act,
            layer=layer,
            phase=phase,
        )

    def coll(
        self,
        name: str,
        coll: str,
        role: int,
        nbytes: int,
        layer: int | None,
        phase: str,
        stream: int = S_COMPUTE,
        deps: Any = None,
    ) -> int:
        return self.t.op(
            stream,
            name,
            "collective",
            deps=deps,
            role=role,
            category="communication",
            coll=coll,
            comm_bytes=int(nbytes),
            layer=layer,
            phase=phase,
        )

    def tp_all_reduce(self, name: str, nbytes: int, layer: int | None, phase: str) -> int | None:
        if self.p.tp == 1:
            return None
        return self.coll(name, "all_reduce", ROLE_TP, nbytes, layer, phase)

    def tp_enter(self, name: str, layer: int | None, phase: str) -> int | None:
        """Entering a tensor-parallel region: all-gather of the sequence shards under --sp."""
        if not self.p.sp:
            return None
        return self.coll(
            name + "tp_all_gather",
            "all_gather",
            ROLE_TP,
            self.tokens * self.m.hidden * self.act,
            layer,
            phase,
        )

    def tp_exit(self, name: str, layer: int | None, phase: str) -> int | None:
        """Leaving a tensor-parallel region: all-reduce, or reduce-scatter to sequence shards under --sp."""
        if self.p.tp == 1:
            return None
        nbytes = self.tokens * self.m.hidden * self.act
        if self.p.sp:
            return self.coll(name + "tp_reduce_scatter", "reduce_scatter", ROLE_TP, nbytes, layer, phase)
        return self.coll(name + "tp_all_reduce", "all_reduce", ROLE_TP, nbytes, layer, phase)

    def regather(self, name: str, layer: int, after: int) -> list[int]:
        """Under --sp, the weight-gradient GEMM needs the full (gathered) input again: Megatron
        all-gathers it asynchronously while the dgrad GEMM runs (stream 6)."""
        if not self.p.sp:
            return []
        return [
            self.coll(name + "tp_all_gather_wgrad_input", "all_gather", ROLE_TP,
                      self.tokens * self.m.hidden * self.act, layer, "bwd", S_TP_SIDE, [after])
        ]  # fmt: skip

    # --- per-rank sizes ---------------------------------------------------------------------
    def dense_layer_params(self) -> int:
        """Layer parameters replicated over the whole data-parallel group: attention (split over
        tp), norms, and the FFN (split over tp) or, for a mixture of experts, the router."""
        m = self.m
        ffn = m.router_params if m.experts else m.expert_params // self.p.tp
        return m.attn_params // self.p.tp + ffn + 2 * m.norm_params

    def expert_layer_params(self) -> int:
        """This rank's experts of one layer (experts/ep of them, each split over tp)."""
        return self.local_experts * self.m.expert_params // self.p.tp

    def layer_params(self) -> int:
        return self.dense_layer_params() + self.expert_layer_params()

    def layer_buckets(self, layer: int) -> list[_Bucket]:
        out = [_Bucket(f"l{layer}", self.dense_layer_params(), layer, ROLE_DP)]
        if self.m.experts:
            # ep = 1: the experts are replicated over the whole data-parallel group.
            role = ROLE_EDP if self.p.ep > 1 else ROLE_DP
            out.append(_Bucket(f"l{layer}.experts", self.expert_layer_params(), layer, role))
        return out

    def embedding_params(self) -> int:
        n = self.p.vocab_padded * self.m.hidden // self.p.tp
        return n + (self.m.seq * self.m.hidden if self.m.position == "learned" else 0)

    def output_params(self) -> int:
        """Output layer (a copy of the tied embedding on the last stage, as Megatron keeps one,
        or none when the first and last stage are the same) and the final norm."""
        shared = self.m.tied_embeddings and self.p.pp == 1
        return (0 if shared else self.p.vocab_padded * self.m.hidden // self.p.tp) + self.m.norm_params

    def buckets(self) -> list[_Bucket]:
        out = [b for layer in self.layers for b in self.layer_buckets(layer)]
        if self.has_first:
            out.append(_Bucket("embedding", self.embedding_params(), None, ROLE_DP))
        if self.has_last:
            out.append(_Bucket("output", self.output_params(), None, ROLE_DP))
        return out

    def group_size(self, role: int) -> int:
        return self.p.dp if role == ROLE_DP else self.p.edp

    def shard(self, b: _Bucket, stage: int) -> int:
        """Parameters of bucket `b` held on this rank by a state that ZeRO stage `stage` shards."""
        return -(-b.params // self.group_size(b.role)) if self.p.zero >= stage else b.params

    def layer_activation_bytes(self) -> int:
        """Stored activations of one layer and micro-batch without recompute (Korthikanti et al.
        2022, flash attention: no s² terms): 10·T·h replicated (split over tp under --sp) +
        (QKV out + attention out + FC1 out + FFN activation) split over tp, 2 bytes each. A mixture
        of experts stores the routed tokens' FFN input, FC1 and activation outputs and the fp32
        router probabilities instead of the dense FFN's."""
        m, tp, T = self.m, self.p.tp, self.tokens
        rep = 10 * T * m.hidden // (tp if self.p.sp else 1)
        if m.experts:
            split = self.act * T * (m.qkv_out + m.hidden) // tp
            R = self.routed
            split += self.act * (R * m.hidden + R * (m.fc1_out + m.ffn) // tp) + 4 * T * m.experts
        else:
            split = self.act * T * (m.qkv_out + m.hidden + m.fc1_out + m.ffn) // tp
        if self.p.attention == "unfused" and self.p.recompute != "selective":
            split += (
                5 * m.heads * self.p.seq * T // tp
            )  # softmax output, dropout mask and output: 5·a·s²·b / tp
        return rep + split

    def boundary_bytes(self) -> int:
        """One layer input / pipeline message: T·h (T/tp·h under --sp), 2 bytes each."""
        return self.region * self.m.hidden * self.act

    def raw(
        self, name: str, category: str, flops: float, br: int, bw: int, layer: int | None, phase: str
    ) -> int:
        return self.t.op(
            S_COMPUTE,
            name,
            "compute",
            category=category,
            dtype=self.act_dtype,
            flops=float(flops),
            bytes_read=int(br),
            bytes_written=int(bw),
            layer=layer,
            phase=phase,
        )

    def attention_fwd(self, L: str, layer: int, phase: str) -> None:
        m, tp, T, h, a = self.m, self.p.tp, self.tokens, self.m.hidden, self.act
        s, b = self.p.seq, self.p.micro_batch
        q, kv = T * h // tp, T * (m.qkv_out - h) // tp  # elements of Q and of K+V on this rank
        if self.p.attention == "flash":
            self.raw(
                L + "attention", "attention", 4.0 * b * s * s * h / tp, (q + kv) * a, q * a, layer, phase
            )
            return
        s2 = b * (m.heads // tp) * s * s  # attention-score elements
        self.raw(
            L + "attn_scores", "attention", 2.0 * b * s * s * h / tp, (q + kv // 2) * a, s2 * a, layer, phase
        )
        self.raw(L + "attn_softmax", "elementwise", 5.0 * s2, s2 * a, s2 * a, layer, phase)
        self.raw(L + "attn_dropout", "elementwise", 1.0 * s2, s2 * a, s2 * (a + 1), layer, phase)
        self.raw(
            L + "attn_context", "attention", 2.0 * b * s * s * h / tp, (s2 + kv // 2) * a, q * a, layer, phase
        )

    def attention_bwd(self, L: str, layer: int) -> None:
        m, tp, T, h, a = self.m, self.p.tp, self.tokens, self.m.hidden, self.act
        s, b = self.p.seq, self.p.micro_batch
        q, kv = T * h // tp, T * (m.qkv_out - h) // tp
        if self.p.recompute == "selective":  # Megatron selective recompute: re-run the attention core
            self.attention_fwd("recompute." + L, layer, "bwd")
        if self.p.attention == "flash":
            self.raw(L + "attention_bwd", "attention", 8.0 * b * s * s * h / tp, (3 * q + kv) * a,
                     (q + kv) * a, layer, "bwd")  # fmt: skip
            return
        s2 = b * (m.heads // tp) * s * s
        self.raw(L + "attn_context_bwd", "attention", 4.0 * b * s * s * h / tp, (q + s2 + kv // 2) * a,
                 (s2 + kv // 2) * a, layer, "bwd")  # fmt: skip
        self.raw(L + "attn_dropout_bwd", "elementwise", 1.0 * s2, s2 * (a + 1), s2 * a, layer, "bwd")
        self.raw(L + "attn_softmax_bwd", "elementwise", 3.0 * s2, 2 * s2 * a, s2 * a, layer, "bwd")
        self.raw(L + "attn_scores_bwd", "attention", 4.0 * b * s * s * h / tp, (s2 + q + kv // 2) * a,
                 (q + kv // 2) * a, layer, "bwd")  # fmt: skip

    # --- feed-forward: dense or mixture of experts ------------------------------------------
    def ffn_fwd(self, L: str, layer: int, phase: str) -> None:
        m, tp, T, h = self.m, self.p.tp, self.tokens, self.m.hidden
        gated = m.activation == "swiglu"
        if not m.experts:
            self.gemm(L + "fc1", T, m.fc1_out // tp, h, layer, phase)
            self.elem(L + m.activation, "elementwise", T * m.ffn // tp, 2 if gated else 1, 1, 8, layer, phase)
            self.gemm(L + "fc2", T, h, m.ffn // tp, layer, phase)
            return
        E, R, a = m.experts, self.routed, self.act
        self.gemm(L + "router", T, E, h, layer, phase)
        self.raw(
            L + "router_topk", "reduction", 5.0 * T * E, T * E * a, T * E * 4 + T * m.top_k * 8, layer, phase
        )
        self.raw(L + "moe_permute", "copy", 0.0, T * h * a, R * h * a, layer, phase)
        if self.p.ep > 1:
            self.coll(L + "ep_all_to_all_dispatch", "all_to_all", ROLE_EP, R * h * a, layer, phase)
        # One grouped GEMM over the rank's local experts (Megatron's GroupedMLP): M = routed tokens.
        self.gemm(L + "expert_fc1", R, m.fc1_out // tp, h, layer, phase)
        self.elem(
            L + "expert_" + m.activation,
            "elementwise",
            R * m.ffn // tp,
            2 if gated else 1,
            1,
            8,
            layer,
            phase,
        )
        self.gemm(L + "expert_fc2", R, h, m.ffn // tp, layer, phase)
        if self.p.ep > 1:
            self.coll(L + "ep_all_to_all_combine", "all_to_all", ROLE_EP, R * h * a, layer, phase)
        self.raw(L + "moe_unpermute", "elementwise", 2.0 * R * h, R * h * a, T * h * a, layer, phase)

    def ffn_bwd(self, L: str, layer: int, regather_after: int) -> None:
        m, tp, T, h, ph = self.m, self.p.tp, self.tokens, self.m.hidden, "bwd"
        gated = m.activation == "swiglu"
        act_bwd = (3 if gated else 2, 2 if gated else 1)
        if not m.experts:
            self.gemm(L + "fc2_dgrad", T, m.ffn // tp, h, layer, ph)
            self.gemm(L + "fc2_wgrad", m.ffn // tp, h, T, layer, ph)
            self.elem(L + m.activation + "_bwd", "elementwise", T * m.ffn // tp, *act_bwd, 8, layer, ph)
            side = self.regather(L + "fc1_", layer, regather_after)
            self.gemm(L + "fc1_dgrad", T, h, m.fc1_out // tp, layer, ph)
            self.gemm(L + "fc1_wgrad", h, m.fc1_out // tp, T, layer, ph, deps=side)
            return
        E, R, a = m.experts, self.routed, self.act
        self.raw(L + "moe_unpermute_bwd", "elementwise", 2.0 * R * h, T * h * a, R * h * a, layer, ph)
        if self.p.ep > 1:
            self.coll(L + "ep_all_to_all_combine_bwd", "all_to_all", ROLE_EP, R * h * a, layer, ph)
        self.gemm(L + "expert_fc2_dgrad", R, m.ffn // tp, h, layer, ph)
        self.gemm(L + "expert_fc2_wgrad", m.ffn // tp, h, R, layer, ph)
        self.elem(
            L + "expert_" + m.activation + "_bwd", "elementwise", R * m.ffn // tp, *act_bwd, 8, layer, ph
        )
        self.gemm(L + "expert_fc1_dgrad", R, h, m.fc1_out // tp, layer, ph)
        self.gemm(L + "expert_fc1_wgrad", h, m.fc1_out // tp, R, layer, ph)
        if self.p.ep > 1:
            self.coll(L + "ep_all_to_all_dispatch_bwd", "all_to_all", ROLE_EP, R * h * a, layer, ph)
        self.raw(L + "moe_permute_bwd", "elementwise", 1.0 * R * h, R * h * a, T * h * a, layer, ph)
        self.raw(L + "router_topk_bwd", "elementwise", 3.0 * T * E, T * E * 4, T * E * a, layer, ph)
        side = self.regather(L + "router_", layer, regather_after)
        self.gemm(L + "router_dgrad", T, h, E, layer, ph)
        self.gemm(L + "router_wgrad", h, E, T, layer, ph, deps=side)

    # --- layers -----------------------------------------------------------------------------
    def layer_fwd(self, layer: int, phase: str, prefix: str, deps: Any) -> tuple[int, int]:
        m, tp, T, h, Tr = self.m, self.p.tp, self.tokens, self.m.hidden, self.region
        L = f"{prefix}l{layer}."
        first = self.elem(L + "norm1", "norm", Tr * h, 1, 1, 5, layer, phase, deps)
        self.tp_enter(L + "attn_", layer, phase)
        self.gemm(L + "qkv", T, m.qkv_out // tp, h, layer, phase)
        self.attention_fwd(L, layer, phase)
        self.gemm(L + "proj", T, h, h // tp, layer, phase)
        self.tp_exit(L + "attn_", layer, phase)
        self.elem(L + "bias_dropout_add1", "elementwise", Tr * h, 2, 1, 2, layer, phase)
        self.elem(L + "norm2", "norm", Tr * h, 1, 1, 5, layer, phase)
        self.tp_enter(L + "mlp_", layer, phase)
        self.ffn_fwd(L, layer, phase)
        self.tp_exit(L + "mlp_", layer, phase)
        last = self.elem(L + "bias_dropout_add2", "elementwise", Tr * h, 2, 1, 2, layer, phase)
        return first, last

    def layer_bwd(self, layer: int, deps: Any) -> tuple[int, int]:
        m, tp, T, h, Tr = self.m, self.p.tp, self.tokens, self.m.hidden, self.region
        L = f"l{layer}."
        ph = "bwd"
        first = self.elem(L + "bias_dropout_add2_bwd", "elementwise", Tr * h, 2, 1, 1, layer, ph, deps)
        self.tp_enter(L + "mlp_bwd_", layer, ph)  # gradient of the reduce-scatter
        self.ffn_bwd(L, layer, first)
        self.tp_exit(L + "mlp_bwd_", layer, ph)  # gradient of the all-gather (or the all-reduce)
        self.elem(L + "norm2_bwd", "norm", Tr * h, 2, 1, 8, layer, ph)
        mid = self.elem(L + "bias_dropout_add1_bwd", "elementwise", Tr * h, 2, 1, 1, layer, ph)
        self.tp_enter(L + "attn_bwd_", layer, ph)
        self.gemm(L + "proj_dgrad", T, h // tp, h, layer, ph)
        self.gemm(L + "proj_wgrad", h // tp, h, T, layer, ph)
        self.attention_bwd(L, layer)
        side = self.regather(L + "qkv_", layer, mid)
        self.gemm(L + "qkv_dgrad", T, h, m.qkv_out // tp, layer, ph)
        self.gemm(L + "qkv_wgrad", h, m.qkv_out // tp, T, layer, ph, deps=side)
        self.tp_exit(L + "attn_bwd_", layer, ph)
        last = self.elem(L + "norm1_bwd", "norm", Tr * h, 2, 1, 8, layer, ph)
        return first, last

    # --- ZeRO-3 parameter gathers -----------------------------------------------------------
    def gather(self, buckets: list[_Bucket], phase: str) -> tuple[list[int], int | None]:
        """ZeRO-3: all-gathers the full parameters of `buckets` (prefetched: each depends on the
        op issued just before on stream 0) and allocates them as a transient weight tensor.
        Returns the gather ops and the tensor (None without ZeRO-3)."""
        if self.p.zero < 3:
            return [], None
        ops = []
        for b in buckets:
            if self.group_size(b.role) > 1:
                name = f"zero3_all_gather_params.{b.what}"
                nbytes = b.params * WEIGHT_BYTES
                ops.append(
                    self.coll(name, "all_gather", b.role, nbytes, b.layer, phase, S_ZERO, [self.t.last_main])
                )
        if not ops:
            return [], None
        full = sum(b.params for b in buckets) * WEIGHT_BYTES
        return ops, self.t.tensor(full, "weight", ops[0], None)

    def grad_reduce(self, buckets: list[_Bucket], mb: int, first_bwd: int, after: int) -> None:
        """Data-parallel gradient reduction of `buckets` after their backward: an all-reduce on
        the last micro-batch (ZeRO 0/1), or a reduce-scatter after every micro-batch (ZeRO 2/3,
        which then keep only the shard; the full gradient lives from the backward to the
        reduce-scatter)."""
        per_mb = self.p.zero >= 2
        if not per_mb and mb != self.p.microbatches - 1:
            return
        for b in buckets:
            if self.group_size(b.role) == 1:
                continue
            coll = "reduce_scatter" if per_mb else "all_reduce"
            op = self.coll(f"dp_{coll}_grad.{b.what}", coll, b.role, b.params * GRAD_BYTES, b.layer, "bwd",
                           S_DP, [after])  # fmt: skip
            self.dp_reduces.append(op)
            if per_mb:
                self.t.tensor(b.params * GRAD_BYTES, "gradient", first_bwd, op)

    # --- micro-batches ----------------------------------------------------------------------
    def forward(self, mb: int, chunk: int, deps: Any) -> int:
        T, h, Tr = self.tokens, self.m.hidden, self.region
        first_dep = deps
        if self.is_first(chunk):
            g_ops, g_t = self.gather([_Bucket("embedding", self.embedding_params(), None, ROLE_DP)], "fwd")
            op = self.t.op(
                S_COMPUTE,
                "embedding",
                "compute",
                deps=(first_dep or []) + g_ops,
                category="embedding",
                dtype=self.act_dtype,
                flops=0.0,
                bytes_read=T * h * self.act + T * 8,
                bytes_written=T * h * self.act,
                phase="fwd",
            )
            exit_op = self.tp_exit("embedding_", None, "fwd")
            if g_t is not None:
                self.t.set_free(g_t, op if exit_op is None else exit_op)
            first_dep = None
            emb_tensor = self.t.tensor(Tr * h * self.act, "activation", op, None)  # freed in backward
        for layer in self.chunks[chunk]:
            g_ops, g_t = self.gather(self.layer_buckets(layer), "fwd")
            first, last = self.layer_fwd(layer, "fwd", "", (first_dep or []) + g_ops)
            if g_t is not None:
                self.t.set_free(g_t, last)
            first_dep = None
            nbytes = self.boundary_bytes() if self.p.recompute == "full" else self.layer_activation_bytes()
            self.open_acts[(mb, layer)] = self.t.tensor(nbytes, "activation", first, None)
        if self.is_first(chunk):
            self.open_acts[(mb, -1)] = emb_tensor
        if self.is_last(chunk):
            V = self.p.vocab_padded // self.p.tp
            g_ops, g_t = self.gather([_Bucket("output", self.output_params(), None, ROLE_DP)], "fwd")
            self.elem("final_norm", "norm", Tr * h, 1, 1, 5, None, "fwd", g_ops or None)
            self.tp_enter("logits_", None, "fwd")
            logits = self.gemm("logits", T, V, h, None, "fwd")
            last = self.t.op(
                S_COMPUTE,
                "cross_entropy",
                "compute",
                category="reduction",
                dtype="fp32",
                flops=float(5 * T * V),
                bytes_read=T * V * self.act,
                bytes_written=T * V * 4,
                phase="fwd",
            )
            if g_t is not None:
                self.t.set_free(g_t, last)
            self.open_acts[(mb, self.m.layers)] = self.t.tensor(T * V * 4, "activation", logits, None)
        return last

    def backward(self, mb: int, chunk: int, deps: Any) -> int:
        T, h, Tr = self.tokens, self.m.hidden, self.region
        first_dep = deps
        if self.is_last(chunk):
            V = self.p.vocab_padded // self.p.tp
            out = _Bucket("output", self.output_params(), None, ROLE_DP)
            g_ops, g_t = self.gather([out], "bwd")
            first = self.elem(
                "cross_entropy_bwd", "elementwise", T * V, 2, 1, 2, None, "bwd", (first_dep or []) + g_ops
            )
            first_dep = None
            self.gemm("logits_dgrad", T, h, V, None, "bwd")
            self.gemm("logits_wgrad", h, V, T, None, "bwd")
            self.tp_exit("logits_bwd_", None, "bwd")
            last = self.elem("final_norm_bwd", "norm", Tr * h, 2, 1, 8, None, "bwd")
            if g_t is not None:
                self.t.set_free(g_t, last)
            self._free(mb, self.m.layers, last)
            self.grad_reduce([out], mb, first, last)
        for layer in reversed(self.chunks[chunk]):
            g_ops, g_t = self.gather(self.layer_buckets(layer), "bwd")
            first_dep = (first_dep or []) + g_ops
            if self.p.recompute == "full":
                rfirst, _ = self.layer_fwd(layer, "bwd", "recompute.", first_dep)
                first_dep = None
                transient = self.t.tensor(self.layer_activation_bytes(), "activation", rfirst, None)
            first, last = self.layer_bwd(layer, first_dep)
            first_dep = None
            if self.p.recompute == "full":
                self.t.set_free(transient, last)
            if g_t is not None:
                self.t.set_free(g_t, last)
            self._free(mb, layer, last)
            self.grad_reduce(self.layer_buckets(layer), mb, first, last)
        if self.is_first(chunk):
            emb = _Bucket("embedding", self.embedding_params(), None, ROLE_DP)
            g_ops, g_t = self.gather([emb], "bwd")
            last = self.t.op(
                S_COMPUTE,
                "embedding_bwd",
                "compute",
                deps=(first_dep or []) + g_ops,
                category="embedding",
                dtype="fp32",
                flops=float(T * h),
                bytes_read=T * h * self.act,
                bytes_written=T * h * 4,
                phase="bwd",
            )
            if g_t is not None:
                self.t.set_free(g_t, last)
            self._free(mb, -1, last)
            self.grad_reduce([emb], mb, last, last)
        return last

    def body(self, kind: str, mb: int, chunk: int, deps: list[int] | None) -> int:
        """`forward` or `backward` of micro-batch `mb` on model chunk `chunk`. Every micro-batch's
        body is the same op sequence, so the first one of each kind is recorded (`_Body`) and the
        others are replayed from it with shifted indices, without building per-op Python
        objects again. Returns the body's last op."""
        final = mb == self.p.microbatches - 1
        key = (kind, chunk, final, len(deps or []), self.t.last_main is None)
        rec = self.bodies.get(key)
        if rec is not None:
            return rec.replay(self, mb, deps)
        run = self.forward if kind == "F" else self.backward
        t = self.t
        n0, nt0, seq0, lm0, nred0 = t.n, len(t.tensors), dict(t.coll_seq), t.last_main, len(self.dp_reduces)
        by_tid = {tid: k[1] for k, tid in self.open_acts.items() if k[0] == mb}
        before = set(self.open_acts)
        t.journal = []
        try:
            last = run(mb, chunk, deps)
        finally:
            journal, t.journal = t.journal, None
        self.bodies[key] = _Body.record(
            self, mb, deps, n0, nt0, seq0, lm0, nred0, by_tid, before, journal, last
        )
        return last

    def _free(self, mb: int, key: int, op: int) -> None:
        self.t.set_free(self.open_acts.pop((mb, key)), op)

    def build(self) -> _Template:
        p, t = self.p, self.t
        msg = self.boundary_bytes()
        if p.vp > 1:
            order = interleaved_order(p.pp, self.stage, p.microbatches, p.vp)
        else:
            order = [(k, mb, 0) for k, mb in schedule_order(p.schedule, p.pp, self.stage, p.microbatches)]
        for kind, mb, chunk in order:
            v = self.vstage(chunk)
            if kind == "F":
                deps = None
                if not self.is_first(chunk):
                    key = ("act", mb, v - 1)
                    deps = [t.op(S_RECV_ACT, f"recv_act.mb{mb}", "recv", peer=PEER_PREV, msg=key,
                                 category="communication", comm_bytes=msg, phase="fwd")]  # fmt: skip
                last = self.body("F", mb, chunk, deps)
                if not self.is_last(chunk):
                    key = ("act", mb, v)
                    t.op(S_SEND_ACT, f"send_act.mb{mb}", "send", deps=[last], peer=PEER_NEXT, msg=key,
                         category="communication", comm_bytes=msg, phase="fwd")  # fmt: skip
            else:
                deps = None
                if not self.is_last(chunk):
                    key = ("grad", mb, v + 1)
                    deps = [t.op(S_RECV_GRAD, f"recv_grad.mb{mb}", "recv", peer=PEER_NEXT, msg=key,
                                 category="communication", comm_bytes=msg, phase="bwd")]  # fmt: skip
                last = self.body("B", mb, chunk, deps)
                if not self.is_first(chunk):
                    key = ("grad", mb, v)
                    t.op(S_SEND_GRAD, f"send_grad.mb{mb}", "send", deps=[last], peer=PEER_PREV, msg=key,
                         category="communication", comm_bytes=msg, phase="bwd")  # fmt: skip
        buckets = self.buckets()
        opt = sum(self.shard(b, 1) for b in buckets)  # parameters this rank's optimizer updates
        self.params = sum(b.params for b in buckets)
        optim = t.op(
            S_COMPUTE,
            "optimizer.adam",
            "compute",
            deps=list(self.dp_reduces),
            category="optimizer",
            dtype="fp32",
            flops=12.0 * opt,
            bytes_read=opt * (WEIGHT_BYTES + GRAD_BYTES + OPTIM_BYTES),
            bytes_written=opt * (WEIGHT_BYTES + OPTIM_BYTES),
            phase="optim",
        )
        if p.zero in (1, 2):  # every rank updated its shard: gather the new parameters
            for b in buckets:
                if self.group_size(b.role) > 1:
                    name = f"zero_all_gather_params.{b.what}"
                    self.coll(
                        name, "all_gather", b.role, b.params * WEIGHT_BYTES, b.layer, "optim", S_DP, [optim]
                    )
        for b in buckets:
            t.tensor(self.shard(b, 3) * WEIGHT_BYTES, "weight")
            t.tensor(self.shard(b, 2) * GRAD_BYTES, "gradient")
            t.tensor(self.shard(b, 1) * OPTIM_BYTES, "optimizer_state")
        return t


_MEMORY_BOUND = frozenset({"elementwise", "norm", "copy", "reduction"})


def _fuse(t: _Template) -> _Template:
    """--granularity block: fewer, larger compute ops with about the same replay time.

    1. Within each stretch of stream-0 ops of one layer and phase (a new stretch also starts at
       any op with a dependency), the memory-bound ops (elementwise, norm, copy, reduction) that
       nothing depends on and no tensor lifetime refers to are folded into the stretch's last
       op when that is memory-bound too: their bytes and times add up there instead of hiding
       under a GEMM's compute time. Stream order makes their position within the stretch
       irrelevant to when it ends.
    2. Each run of consecutive compute ops on stream 0 of one layer and phase, with no
       dependency besides stream order after its first op, becomes one op (summed FLOPs and
       bytes; the category, dtype and GEMM shape of its largest-FLOP GEMM, else op).
    Collectives, sends, receives and the optimizer stay as they are; deps, tensor lifetimes and
    message keys are remapped to the merged ops. Launch overheads of merged ops are lost."""
    cols, n = t.cols, t.n
    out = _Template(coll_seq=dict(t.coll_seq))
    if n == 0:
        return out
    kind = np.array(cols["kind"], dtype=object)
    cat = np.array([c or "" for c in cols["category"]], dtype=object)
    stream = np.asarray(cols["stream"], dtype=np.int64)
    layer = np.array([-2 if x is None else x for x in cols["layer"]], dtype=np.int64)
    phase_codes: dict[Any, int] = {}
    phase = np.array([phase_codes.setdefault(x, len(phase_codes)) for x in cols["phase"]], dtype=np.int64)
    has_deps = np.fromiter((bool(d) for d in t.deps), dtype=bool, count=n)
    pinned = np.zeros(n, dtype=bool)
    pinned[[d for deps in t.deps for d in deps]] = True
    pinned[[x for _, _, a, f in t.tensors for x in (a, f) if x is not None]] = True
    compute = (kind == "compute") & (stream == S_COMPUTE)
    memory = compute & np.isin(cat, list(_MEMORY_BOUND))
    main = np.flatnonzero(stream == S_COMPUTE)
    # 1. Stretches of stream-0 ops (one layer and phase, broken at deps and at the optimizer).
    brk = np.ones(len(main), dtype=bool)
    brk[1:] = (
        has_deps[main[1:]]
        | (layer[main[1:]] != layer[main[:-1]])
        | (phase[main[1:]] != phase[main[:-1]])
        | (cat[main[1:]] == "optimizer")
    )
    sid = np.cumsum(brk) - 1
    last = np.empty(int(sid[-1]) + 1, dtype=np.int64)
    last[sid] = main  # the last op of each stretch (later writes win)
    tgt = last[sid]
    fold = memory[main] & memory[tgt] & ~pinned[main] & ~has_deps[main] & (tgt != main)
    sink = np.arange(n, dtype=np.int64)
    sink[main[fold]] = tgt[fold]
    # 2. Runs of consecutive compute ops among the ops that remain.
    keep = np.flatnonzero(sink == np.arange(n))
    ok = compute[keep] & (cat[keep] != "optimizer")
    join = np.zeros(len(keep), dtype=bool)
    join[1:] = (
        ok[1:]
        & ok[:-1]
        & ~has_deps[keep[1:]]
        & (layer[keep[1:]] == layer[keep[:-1]])
        & (phase[keep[1:]] == phase[keep[:-1]])
    )
    run_of_keep = np.cumsum(~join) - 1
    new_index = np.empty(n, dtype=np.int64)
    new_index[keep] = run_of_keep
    new_index[sink != np.arange(n)] = new_index[sink[sink != np.arange(n)]]
    n_runs = int(run_of_keep[-1]) + 1
    first = np.empty(n_runs, dtype=np.int64)
    first[run_of_keep[::-1]] = keep[::-1]  # the run's first op in stream order (earliest write wins)
    size = np.bincount(new_index, minlength=n_runs)
    flops = np.array([x or 0.0 for x in cols["flops"]], dtype=np.float64)
    sums = {
        c: np.bincount(
            new_index, weights=np.array([x or 0 for x in cols[c]], dtype=np.float64), minlength=n_runs
        )
        for c in ("flops", "bytes_read", "bytes_written")
    }
    # Largest-FLOP op of each run, and largest-FLOP GEMM (GEMMs sort after everything else);
    # the earliest one on ties.
    gemm = cat == "gemm"
    earlier = -np.arange(n)
    order = np.lexsort((earlier, flops, new_index))
    big = np.empty(n_runs, dtype=np.int64)
    big[new_index[order]] = order
    order = np.lexsort((earlier, flops, gemm, new_index))
    shape = np.empty(n_runs, dtype=np.int64)
    shape[new_index[order]] = order
    has_gemm = np.bincount(new_index, weights=gemm.astype(np.float64), minlength=n_runs) > 0
    out_cols = out.cols
    for c in _OP_COLS:
        out_cols[c] = [cols[c][i] for i in first.tolist()]
    for r in np.flatnonzero(size > 1).tolist():
        i, b, g = int(first[r]), int(big[r]), int(shape[r])
        out_cols["name"][r] = f"{cols['name'][i]}+{int(size[r]) - 1}"
        out_cols["category"][r] = "gemm" if has_gemm[r] else cols["category"][b]
        out_cols["dtype"][r] = cols["dtype"][g]
        out_cols["flops"][r] = float(sums["flops"][r])
        out_cols["bytes_read"][r] = int(sums["bytes_read"][r])
        out_cols["bytes_written"][r] = int(sums["bytes_written"][r])
        for c in ("gemm_m", "gemm_n", "gemm_k"):
            out_cols[c][r] = cols[c][g]
    out.deps = [sorted({int(new_index[d]) for d in t.deps[i]}) for i in first.tolist()]
    out.role = [t.role[i] for i in first.tolist()]
    out.peer = [t.peer[i] for i in first.tolist()]
    out.msg = {int(new_index[i]): key for i, key in t.msg.items()}
    out.tensors = [
        (b, c, None if a is None else int(new_index[a]), None if f is None else int(new_index[f]))
        for b, c, a, f in t.tensors
    ]
    return out


def _assign_p2p_seq(templates: list[_Template], pp: int) -> None:
    """p2p_seq of every send and receive: the n-th message from a stage to a peer stage, in the
    sender's op order; a receive takes the number of the send with the same message key."""
    seqs: dict[tuple[int, int, tuple[str, int, int]], int] = {}

    def peer_stage(s: int, role: int) -> int:
        return (s + (1 if role == PEER_NEXT else -1)) % pp

    for s, t in enumerate(templates):
        count: dict[int, int] = {}
        for i, key in t.msg.items():
            if t.cols["kind"][i] == "send":
                dst = peer_stage(s, t.peer[i])
                t.cols["p2p_seq"][i] = seqs[(s, dst, key)] = count.get(dst, 0)
                count[dst] = count.get(dst, 0) + 1
    for s, t in enumerate(templates):
        for i, key in t.msg.items():
            if t.cols["kind"][i] == "recv":
                t.cols["p2p_seq"][i] = seqs[(peer_stage(s, t.peer[i]), s, key)]


def _tile(arr: pa.Array, k: int) -> pa.Array:
    """`arr` repeated `k` times, built from its buffers with NumPy (much faster than `take`)."""
    n = len(arr)
    valid = None
    if arr.null_count:
        valid = pa.array(np.tile(arr.is_valid().to_numpy(zero_copy_only=False), k)).buffers()[1]
    if pa.types.is_string(arr.type):
        offs = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
        raw = arr.buffers()[2]
        data = (
            np.frombuffer(raw, dtype=np.uint8)[offs[0] : offs[-1]]
            if raw is not None
            else np.zeros(0, np.uint8)
        )
        size = len(data)
        if size * k >= 2**31 - 1:  # would overflow 32-bit offsets
            return arr.take(pa.array(np.tile(np.arange(n, dtype=np.int64), k)))
        new_offs = np.empty(n * k + 1, dtype=np.int32)
        new_offs[:-1] = np.tile(offs[:-1] - offs[0], k) + np.repeat(np.arange(k, dtype=np.int32) * size, n)
        new_offs[-1] = size * k
        return pa.StringArray.from_buffers(
            n * k, pa.py_buffer(new_offs), pa.py_buffer(np.tile(data, k)), valid, arr.null_count * k
        )
    if pa.types.is_null(arr.type):
        return pa.nulls(n * k)
    values = np.tile(arr.fill_null(0).to_numpy(zero_copy_only=False), k)
    return pa.Array.from_buffers(arr.type, n * k, [valid, pa.py_buffer(values)], arr.null_count * k)


@dataclass(frozen=True)
class _GroupBases:
    """First group_id of each kind of group (see `_groups`)."""

    tp: int
    dp: int
    ep: int
    edp: int


def _groups(plan: Plan) -> tuple[dict[str, list[Any]], _GroupBases]:
    """Communicators: tp<g> (consecutive ranks), dp<j> (ranks j, j + pp·tp, …), and for
    mixture-of-experts plans ep<k>_<j> (ep consecutive dp indices at position j = rank mod pp·tp)
    and edp<r>_<j> (the dp indices ≡ r mod ep at position j). Groups of one rank are left out."""
    gpus, tp, pp, dp, ep = plan.gpus, plan.tp, plan.pp, plan.dp, plan.ep
    mp = pp * tp
    groups: dict[str, list[Any]] = {"group_id": [], "ranks": [], "name": []}

    def add(name: str, ranks: list[int]) -> None:
        groups["group_id"].append(len(groups["group_id"]))
        groups["ranks"].append(ranks)
        groups["name"].append(name)

    base_tp = 0
    if tp > 1:
        for g in range(gpus // tp):
            add(f"tp{g}", list(range(g * tp, (g + 1) * tp)))
    base_dp = len(groups["group_id"])
    if dp > 1:
        for j in range(mp):
            add(f"dp{j}", list(range(j, gpus, mp)))
    base_ep = len(groups["group_id"])
    if ep > 1:
        for k in range(dp // ep):
            for j in range(mp):
                add(f"ep{k}_{j}", [(k * ep + i) * mp + j for i in range(ep)])
    base_edp = len(groups["group_id"])
    if plan.edp > 1 and ep > 1:  # with ep = 1, expert gradients use the dp groups
        for r in range(ep):
            for j in range(mp):
                add(f"edp{r}_{j}", [(i * ep + r) * mp + j for i in range(dp // ep)])
    return groups, _GroupBases(base_tp, base_dp, base_ep, base_edp)


def _expand(
    tpl: _Template,
    ranks: np.ndarray,
    op_base: np.ndarray,
    tensor_base: np.ndarray,
    plan: Plan,
    n_tp: int,
    *,
    stage: int | None = None,
    bases: _GroupBases | None = None,
) -> tuple[pa.Table, pa.Table]:
    """The template's ops and tensors on every rank in `ranks` (all of pipeline stage `stage`;
    without it, peers are rank ± tp). Group ids start at `bases` (default: tensor-parallel groups
    from 0, every other kind from `n_tp`)."""
    if bases is None:
        bases = _GroupBases(0, n_tp, n_tp, n_tp)
    n, k = tpl.n, len(ranks)
    local = pa.table({c: pa.array(tpl.cols[c], type=OPS[c].type) for c in _OP_COLS})
    idx = np.tile(np.arange(n, dtype=np.int64), k)
    ops = pa.table({c: _tile(local.column(c).combine_chunks(), k) for c in local.column_names})
    rank_rep = np.repeat(ranks, n)
    base_rep = np.repeat(op_base, n)
    op_id = base_rep + idx
    # deps: flattened local indices shifted by each rank's base.
    lens = np.fromiter((len(d) for d in tpl.deps), dtype=np.int64, count=n)
    flat = np.fromiter((x for d in tpl.deps for x in d), dtype=np.int64, count=int(lens.sum()))
    nd = len(flat)
    values = np.tile(flat, k) + np.repeat(op_base, nd)
    offs_local = np.concatenate([[0], np.cumsum(lens)[:-1]]) if n else np.zeros(0, np.int64)
    offsets = np.concatenate([(offs_local[None, :] + (np.arange(k) * nd)[:, None]).ravel(), [nd * k]])
    deps = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.uint64)))
    role = np.tile(np.asarray(tpl.role, dtype=np.int8), k)
    tp, mp = plan.tp, plan.pp * plan.tp
    pos = rank_rep % mp
    dp_idx = rank_rep // mp
    gid = np.select(
        [role == ROLE_TP, role == ROLE_DP, role == ROLE_EP],
        [
            bases.tp + rank_rep // tp,
            bases.dp + pos,
            bases.ep + (dp_idx // max(plan.ep, 1)) * mp + pos,
        ],
        default=bases.edp + (dp_idx % plan.ep) * mp + pos,
    )
    peer_role = np.tile(np.asarray(tpl.peer, dtype=np.int8), k)
    # Previous / next pipeline stage, wrapping around (interleaved chunks go from the last stage
    # back to the first).
    if stage is None:
        prev_rank, next_rank = rank_rep - tp, rank_rep + tp
    else:
        prev_rank = rank_rep + (((stage - 1) % plan.pp) - stage) * tp
        next_rank = rank_rep + (((stage + 1) % plan.pp) - stage) * tp
    peer = np.where(peer_role == PEER_PREV, prev_rank, next_rank)
    ops = (
        ops.append_column("op_id", pa.array(op_id.astype(np.uint64)))
        .append_column("rank", pa.array(rank_rep.astype(np.uint32)))
        .append_column("deps", deps)
        .append_column("group_id", pa.array(gid.astype(np.uint32), mask=role == ROLE_NONE))
        .append_column("peer", pa.array(np.maximum(peer, 0).astype(np.uint32), mask=peer_role == PEER_NONE))
        .append_column("iteration", pa.array(np.zeros(n * k, np.uint32)))
    )
    nt = len(tpl.tensors)
    tb = pa.table(
        {
            "bytes": pa.array([x[0] for x in tpl.tensors], pa.uint64()),
            "class": pa.array([x[1] for x in tpl.tensors], pa.string()),
        }
    )
    tidx = np.tile(np.arange(nt, dtype=np.int64), k)
    tens = tb.take(pa.array(tidx))
    tbase = np.repeat(tensor_base, nt)
    obase = np.repeat(op_base, nt)
    out = []
    for j in (2, 3):
        loc = np.array([-1 if x[j] is None else x[j] for x in tpl.tensors], dtype=np.int64)
        rep = np.tile(loc, k)
        out.append(pa.array((rep + obase).astype(np.uint64), mask=rep < 0))
    tens = (
        tens.append_column("tensor_id", pa.array((tbase + tidx).astype(np.uint64)))
        .append_column("rank", pa.array(np.repeat(ranks, nt).astype(np.uint32)))
        .append_column("alloc_op", out[0])
        .append_column("free_op", out[1])
    )
    return ops, tens


def synth_train(
    model: str | ModelSpec,
    *,
    gpus: int,
    tp: int = 1,
    pp: int = 1,
    micro_batch: int = 1,
    global_batch: int,
    seq: int | None = None,
    dtype: str = "bf16",
    recompute: str = "none",
    schedule: str = "1f1b",
    attention: str = "flash",
    vp: int = 1,
    sp: bool = False,
    zero: int = 0,
    ep: int = 1,
    granularity: str = "op",
    system: str | None = None,
    validate: bool = True,
) -> Trace:
    """One training step of `model` on `gpus` ranks (dp = gpus / (tp · pp)), as a trace.

    `vp` model chunks per stage (interleaved 1F1B), `sp` sequence parallelism, `zero` the ZeRO
    stage (0–3, sharding over dp), `ep` expert parallelism (mixture-of-experts models; inside dp),
    `granularity="block"` merges the compute ops between two communication ops (fewer ops, for
    very large traces). Raises PlanError when the plan does not divide the model or the GPU count."""
    t0 = time.perf_counter()
    spec = load_model(model) if isinstance(model, str) else model
    plan = make_plan(
        spec,
        gpus=gpus,
        tp=tp,
        pp=pp,
        micro_batch=micro_batch,
        global_batch=global_batch,
        seq=seq,
        dtype=dtype,
        recompute=recompute,
        schedule=schedule,
        attention=attention,
        vp=vp,
        sp=sp,
        zero=zero,
        ep=ep,
        granularity=granularity,
    )
    templates = []
    for stage in range(pp):
        tpl = _StageBuilder(spec, plan, stage).build()
        templates.append(_fuse(tpl) if plan.granularity == "block" else tpl)
    _assign_p2p_seq(templates, pp)
    ranks = np.arange(gpus, dtype=np.int64)
    stage_of = (ranks // tp) % pp
    n_ops = np.array([t.n for t in templates], dtype=np.int64)[stage_of]
    n_tens = np.array([len(t.tensors) for t in templates], dtype=np.int64)[stage_of]
    op_base = np.concatenate([[0], np.cumsum(n_ops)[:-1]])
    t_base = np.concatenate([[0], np.cumsum(n_tens)[:-1]])
    groups, bases = _groups(plan)
    op_parts, t_parts = [], []
    for s in range(pp):
        sel = ranks[stage_of == s]
        o, t = _expand(templates[s], sel, op_base[sel], t_base[sel], plan, 0, stage=s, bases=bases)
        op_parts.append(o)
        t_parts.append(t)
    ops = pa.concat_tables(op_parts, promote_options="permissive")
    tensors = pa.concat_tables(t_parts)
    build_s = time.perf_counter() - t0
    trace = Trace.from_tables(
        ops,
        ranks=gpus,
        groups=groups if groups["group_id"] else None,
        tensors=tensors,
        source="tracesim.synth.train",
        source_system=system,
        validate=validate,
        synth={
            "model": spec.model_dump(),
            "params": spec.params,
            "gpus": gpus,
            "tp": tp,
            "pp": pp,
            "dp": plan.dp,
            "vp": vp,
            "sp": sp,
            "zero": zero,
            "ep": ep,
            "micro_batch": micro_batch,
            "global_batch": global_batch,
            "microbatches": plan.microbatches,
            "seq": plan.seq,
            "dtype": dtype,
            "recompute": recompute,
            "schedule": schedule,
            "attention": attention,
            "granularity": granularity,
            "vocab_padded": plan.vocab_padded,
            "rank_layout": "rank = dp_idx*(pp*tp) + pp_idx*tp + tp_idx; ep groups: ep consecutive dp_idx",
            "build_seconds": round(build_s, 3),
        },
    )
    return trace


def analytic_flops(model: ModelSpec, tokens: int, seq: int, recompute: str = "none") -> float:
    """Closed-form FLOPs of one step: 6·P_gemm·tokens + 12·L·h·s·tokens (attention), plus one more
    forward (2·P_layers·tokens + 4·L·h·s·tokens) with full recompute, or of the attention core
    (4·L·h·s·tokens) with selective recompute. P_gemm counts the GEMM weights a token passes
    through (for a mixture of experts: attention, router and top_k experts, at capacity factor 1)
    and the output layer (V·h, unpadded)."""
    L, h = model.layers, model.hidden
    p_layer = model.active_gemm_params_per_layer
    p_gemm = L * p_layer + model.vocab * h
    f = 6.0 * p_gemm * tokens + 12.0 * L * h * seq * tokens
    if recompute == "full":
        f += 2.0 * L * p_layer * tokens + 4.0 * L * h * seq * tokens
    elif recompute == "selective":
        f += 4.0 * L * h * seq * tokens
    return f
