"""Synthesised per-rank traces of LLM inference serving: prefill and decode passes of a dense
transformer over a batch or a request trace, with continuous batching and a growing KV cache
(docs/synth.md, "synth infer").

Iterations follow a vLLM-like scheduler. At the start of iteration k the waiting requests that
have arrived are admitted in arrival order while the running batch stays within `max_batch`
sequences, the prefill within `max_prefill_tokens` (a single longer prompt is still admitted
alone) and the KV cache within its token budget; an admitted request reserves KV blocks for its
prompt and all its output, so nothing is ever preempted. The iteration then runs a **prefill
pass** over the admitted requests (it produces each one's first token) followed by a **decode
pass** over the requests that were already running (one more token each). A request leaves after
its last token and frees its KV blocks.

Admission needs to know when each iteration starts, so iterations are timed during synthesis
with the system's roofline compute model and its network model (collectives of the same size
are timed once). Arrivals are in the trace itself: a chain of host ops on stream 7 of every
first-stage rank ends at each request's arrival time, and the prefill that admits a request
depends on it, so a replay never serves a request before it arrives, whatever the system.

Streams per rank: 0 compute and the tensor-parallel collectives, 2 sends of activations to the
next pipeline stage, 4 receives from the previous one, 6 the sampled tokens sent from the last
stage back to the first (pp > 1), 7 the arrival clock (host ops, first stage only).

Request bookkeeping is in trace.json under `serving` (one list per field, one entry per request):
the arrival op, the op that produces the first token and the one that produces the last; the
replay's timeline turns them into TTFT, TPOT and throughput (`serving_metrics`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from tracesim.exceptions import TracesimError
from tracesim.format import OPS
from tracesim.synth.models import ModelSpec, load_model
from tracesim.synth.train import _OP_COLS as _TRAIN_OP_COLS
from tracesim.synth.train import PlanError
from tracesim.trace import Trace

# Streams, as in synth train where they overlap (0 compute, 2 sends, 4 receives of activations).
S_COMPUTE, S_SEND_ACT, S_RECV_ACT = 0, 2, 4
S_TOKENS, S_CLOCK = 6, 7
PEER_NONE, PEER_PREV, PEER_NEXT, PEER_FIRST, PEER_LAST = range(5)
KV_BYTES = 2  # bf16/fp16 KV cache
WEIGHT_BYTES = 2  # bf16/fp16 weights; 1 under fp8

REQUEST_COLUMNS = ("arrival_time_s | arrival_ns", "prompt_tokens", "output_tokens")


class RequestTraceError(TracesimError):
    """A request CSV that cannot be used (missing column, bad value)."""


@dataclass(frozen=True)
class Requests:
    """Requests sorted by arrival: arrival (ns), prompt and output tokens, and the CSV line each
    came from (for messages)."""

    arrival_ns: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    line: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_ns)

    @classmethod
    def batch(cls, batch: int, prompt: int, output: int) -> Requests:
        for name, v in (("batch", batch), ("prompt", prompt), ("output", output)):
            if v < 1:
                raise PlanError(f"--{name}: must be at least 1, got {v}")
        n = batch
        return cls(
            np.zeros(n, np.int64),
            np.full(n, prompt, np.int64),
            np.full(n, output, np.int64),
            np.zeros(n, np.int64),
        )


def read_requests(path: str | os.PathLike[str]) -> Requests:
    """A request trace CSV: one row per request with `arrival_time_s` (float seconds) or
    `arrival_ns` (integer), `prompt_tokens` and `output_tokens` (positive integers). Other
    columns are ignored. Raises RequestTraceError naming the file, the column and the line."""
    p = Path(path)
    if not p.is_file():
        raise RequestTraceError(f"{p}: no such file")
    try:
        df = pl.read_csv(p, infer_schema_length=0)  # everything as strings; parsed below
    except Exception as e:  # polars raises several types for unreadable CSV
        raise RequestTraceError(f"{p}: not a readable CSV file: {str(e).splitlines()[0]}") from None
    cols = [c.strip() for c in df.columns]
    df.columns = cols
    if "arrival_time_s" in cols:
        arrival_col = "arrival_time_s"
    elif "arrival_ns" in cols:
        arrival_col = "arrival_ns"
    else:
        raise RequestTraceError(
            f"{p}: column 'arrival_time_s' (or 'arrival_ns'): missing; expected columns "
            f"{', '.join(REQUEST_COLUMNS)}; found {', '.join(cols) or 'none'}"
        )
    for c in ("prompt_tokens", "output_tokens"):
        if c not in cols:
            raise RequestTraceError(
                f"{p}: column {c!r}: missing; expected columns {', '.join(REQUEST_COLUMNS)}; "
                f"found {', '.join(cols)}"
            )
    if df.height == 0:
        raise RequestTraceError(f"{p}: no requests (the file has a header but no rows)")

    def parse(col: str, as_float: bool, minimum: float) -> np.ndarray:
        raw = df.get_column(col).str.strip_chars()
        parsed = raw.cast(pl.Float64 if as_float else pl.Int64, strict=False)
        bad = parsed.is_null() | (parsed < minimum)
        if as_float:
            bad = bad | parsed.is_nan() | parsed.is_infinite()
        if bad.any():
            row = int(bad.arg_max() or 0)
            what = "a number" if as_float else "an integer"
            limit = "non-negative" if minimum == 0 else f"at least {minimum:g}"
            raise RequestTraceError(
                f"{p}: column {col!r}, line {row + 2}: expected {what}, {limit}; got {raw[row]!r}"
            )
        return parsed.to_numpy()

    if arrival_col == "arrival_time_s":
        arrival = np.round(parse(arrival_col, True, 0) * 1e9).astype(np.int64)
    else:
        arrival = parse(arrival_col, False, 0).astype(np.int64)
    prompt = parse("prompt_tokens", False, 1).astype(np.int64)
    output = parse("output_tokens", False, 1).astype(np.int64)
    order = np.argsort(arrival, kind="stable")
    lines = np.arange(df.height, dtype=np.int64) + 2
    return Requests(arrival[order], prompt[order], output[order], lines[order])


# --- op building --------------------------------------------------------------------------


# The columns synth train emits, plus the iteration and the host ops' durations; types from the
# one trace schema.
_OP_COLS = (*_TRAIN_OP_COLS, "iteration", "duration_ns")
_STR_COLS = tuple(c for c in _OP_COLS if OPS[c].type == pa.string())


@dataclass(frozen=True)
class _Plan:
    tp: int
    pp: int
    dtype: str
    vocab_padded: int


def _make_plan(model: ModelSpec, tp: int, pp: int, dtype: str) -> _Plan:
    for name, v in (("tp", tp), ("pp", pp)):
        if v < 1:
            raise PlanError(f"--{name}: must be at least 1, got {v}")
    if dtype not in ("bf16", "fp16", "fp8"):
        raise PlanError(f"--dtype: expected bf16, fp16 or fp8, got {dtype!r}")
    if model.experts:
        raise PlanError(f"model {model.name}: mixture-of-experts inference is not synthesised yet")
    if model.layers % pp:
        raise PlanError(f"model {model.name}: {model.layers} layers do not divide into pp = {pp} stages")
    for what, n in (("heads", model.heads), ("kv_heads", model.n_kv_heads), ("ffn_hidden", model.ffn)):
        if n % tp:
            raise PlanError(f"model {model.name}: {what} = {n} is not divisible by tp = {tp}")
    mult = 128 * tp  # vocabulary padded as Megatron (and synth train) do
    return _Plan(tp, pp, dtype, -(-model.vocab // mult) * mult)


@dataclass
class _Recorder:
    """Ops in local order, one list per column (a pass skeleton, or a stage's single ops)."""

    cols: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in _OP_COLS})
    deps: list[list[int]] = field(default_factory=list)
    peer: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.deps)

    def op(
        self,
        stream: int,
        name: str,
        kind: str,
        *,
        deps: list[int] | None = None,
        peer: int = PEER_NONE,
        **kw: Any,
    ) -> int:
        kw.update(stream=stream, name=name, kind=kind)
        for c in _OP_COLS:
            self.cols[c].append(kw.get(c))
        self.deps.append(deps or [])
        self.peer.append(peer)
        return self.n - 1


class _Emitter:
    """Emits the ops of one forward pass of a pipeline stage into a recorder: the same layer
    forward as synth train (norm, QKV GEMM, attention, projection GEMM, TP all-reduce, add, norm,
    FC1 GEMM, activation, FC2 GEMM, TP all-reduce, add), with inference attention over a KV cache.

    A pass has the shape (T, n, pairs, ctx): tokens processed, sequences (one logit row each),
    causal query-key pairs per head, and tokens of context after the pass, summed over the
    sequences; every op's FLOPs and bytes are linear in these four numbers."""

    def __init__(self, model: ModelSpec, plan: _Plan, stage: int, layers: list[int] | None = None) -> None:
        self.m, self.p, self.stage, self.tp = model, plan, stage, plan.tp
        self.t = _Recorder()
        self.act = 2  # bytes per activation element (bf16/fp16, also under fp8 GEMMs)
        self.gemm_in = 1 if plan.dtype == "fp8" else 2
        self.act_dtype = "bf16" if plan.dtype == "fp8" else plan.dtype
        lp = model.layers // plan.pp
        self.layers = layers if layers is not None else list(range(stage * lp, (stage + 1) * lp))
        self.first = stage == 0
        self.last = stage == plan.pp - 1
        # KV bytes of one token in one layer on this rank: K and V of kv_heads/tp heads.
        self.kv_token_layer = 2 * (model.n_kv_heads // plan.tp) * model.head_dim * KV_BYTES
        self.kv_token = self.kv_token_layer * len(self.layers)
        self.shape = (0, 0, 0, 0)

    def gemm(self, name: str, m: int, n: int, k: int, layer: int | None, phase: str) -> int:
        return self.t.op(
            S_COMPUTE,
            name,
            "compute",
            category="gemm",
            dtype=self.p.dtype,
            flops=2.0 * m * n * k,
            bytes_read=(m * k + k * n) * self.gemm_in,
            bytes_written=m * n * self.act,
            gemm_m=m,
            gemm_n=n,
            gemm_k=k,
            layer=layer,
            phase=phase,
        )

    def raw(
        self,
        name: str,
        category: str,
        flops: float | None,
        br: int,
        bw: int,
        layer: int | None,
        phase: str,
        deps: list[int] | None = None,
    ) -> int:
        return self.t.op(
            S_COMPUTE,
            name,
            "compute",
            deps=deps,
            category=category,
            dtype=self.act_dtype,
            flops=None if flops is None else float(flops),
            bytes_read=int(br),
            bytes_written=int(bw),
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
        layer: int | None,
        phase: str,
        deps: list[int] | None = None,
    ) -> int:
        """A memory-bound op over `n` elements that reads `reads` and writes `writes` values per
        element. It carries no FLOPs: the compute model would time them against the tensor-core
        curve (docs/calibration.md, "Ops derived from a row"), as vidur's profiles are fitted."""
        a = self.act
        return self.raw(name, category, None, n * reads * a, n * writes * a, layer, phase, deps)

    def tp_coll(self, name: str, coll: str, nbytes: int, layer: int | None, phase: str) -> int | None:
        if self.tp == 1:
            return None
        return self.t.op(
            S_COMPUTE,
            name,
            "collective",
            category="communication",
            coll=coll,
            comm_bytes=nbytes,
            layer=layer,
            phase=phase,
        )

    def layer_fwd(self, layer: int, phase: str, deps: list[int] | None) -> tuple[int, int]:
        m, tp, T, h = self.m, self.tp, self.shape[0], self.m.hidden
        L = f"{phase}.l{layer}."
        first = self.elem(L + "norm1", "norm", T * h, 1, 1, layer, phase, deps)
        self.gemm(L + "qkv", T, m.qkv_out // tp, h, layer, phase)
        self.attention(L, layer, phase)
        self.gemm(L + "proj", T, h, h // tp, layer, phase)
        self.tp_coll(L + "tp_all_reduce_attn", "all_reduce", T * h * self.act, layer, phase)
        self.elem(L + "residual_add1", "elementwise", T * h, 2, 1, layer, phase)
        self.elem(L + "norm2", "norm", T * h, 1, 1, layer, phase)
        self.gemm(L + "fc1", T, m.fc1_out // tp, h, layer, phase)
        gated = m.activation == "swiglu"
        self.elem(L + m.activation, "elementwise", T * m.ffn // tp, 2 if gated else 1, 1, layer, phase)
        self.gemm(L + "fc2", T, h, m.ffn // tp, layer, phase)
        self.tp_coll(L + "tp_all_reduce_mlp", "all_reduce", T * h * self.act, layer, phase)
        last = self.elem(L + "residual_add2", "elementwise", T * h, 2, 1, layer, phase)
        return first, last

    def attention(self, L: str, layer: int, phase: str) -> None:
        """Causal attention of each sequence's new tokens over its cache (flash/paged attention:
        one kernel for the pass): 4·(h/tp) FLOPs per query-key pair; reads Q and the K/V of every
        token in context, writes the output and the new tokens' K/V."""
        T, _, pairs, ctx = self.shape
        h_rank, a = self.m.hidden // self.tp, self.act
        self.raw(
            L + "attention",
            "attention",
            4.0 * pairs * h_rank,
            T * h_rank * a + ctx * self.kv_token_layer,
            T * h_rank * a + T * self.kv_token_layer,
            layer,
            phase,
        )

    def run_pass(self, phase: str, shape: tuple[int, int, int, int]) -> tuple[int, int, int]:
        """One forward pass of this stage; returns (first op, last op, sample op or −1). The first
        op (the activation receive, or the embedding on the first stage) is the one that takes the
        pass's outside dependencies."""
        t, tp, h = self.t, self.tp, self.m.hidden
        self.shape = shape
        T, n_out = shape[0], shape[1]
        msg = T * h * self.act
        deps: list[int] | None = None
        if not self.first:
            recv = t.op(
                S_RECV_ACT,
                f"{phase}.recv_act",
                "recv",
                peer=PEER_PREV,
                category="communication",
                comm_bytes=msg,
                phase=phase,
            )
            deps = [recv]
        if self.first:
            t.op(
                S_COMPUTE,
                f"{phase}.embedding",
                "compute",
                category="embedding",
                dtype=self.act_dtype,
                bytes_read=T * h * self.act + T * 8,
                bytes_written=T * h * self.act,
                phase=phase,
            )
            self.tp_coll(f"{phase}.embedding_tp_all_reduce", "all_reduce", T * h * self.act, None, phase)
        for layer in self.layers:
            _, last = self.layer_fwd(layer, phase, deps)
            deps = None
        sample = -1
        if self.last:
            V = self.p.vocab_padded // tp
            self.elem(f"{phase}.final_norm", "norm", T * h, 1, 1, None, phase)
            self.gemm(f"{phase}.logits", n_out, V, h, None, phase)  # last position of each sequence
            self.tp_coll(f"{phase}.logits_all_gather", "all_gather", n_out * V * tp * self.act, None, phase)
            sample = t.op(
                S_COMPUTE,
                f"{phase}.sample",
                "compute",
                category="reduction",
                dtype="fp32",
                bytes_read=n_out * V * tp * self.act,
                bytes_written=n_out * 8,
                phase=phase,
            )
            last = sample
        else:
            last = t.op(
                S_SEND_ACT,
                f"{phase}.send_act",
                "send",
                deps=[last],
                peer=PEER_NEXT,
                category="communication",
                comm_bytes=msg,
                phase=phase,
            )
        return 0, last, sample

    def weight_params(self) -> int:
        """Parameters on one rank of this stage, split as synth train splits them: layer GEMMs over
        tp (norms replicated), the vocabulary-parallel embedding on the first stage, the output
        layer (unless tied and on the same stage) and final norm on the last."""
        m, tp, vp = self.m, self.tp, self.p.vocab_padded
        n = len(self.layers) * (m.gemm_params_per_layer // tp + 2 * m.norm_params)
        if self.first:
            n += vp * m.hidden // tp + (m.seq * m.hidden if m.position == "learned" else 0)
        if self.last:
            shared = m.tied_embeddings and self.p.pp == 1
            n += (0 if shared else vp * m.hidden // tp) + m.norm_params
        return n


_NO_LAYER = -(2**40)  # marks a null layer while columns are assembled in NumPy
_NUM_COLS = ("flops", "bytes_read", "bytes_written", "comm_bytes", "gemm_m", "gemm_n", "gemm_k")


class _Skeleton:
    """The ops of one kind of pass on one stage, with every numeric column as an affine function
    of the pass shape (T, n, pairs, ctx), found by emitting the pass at the origin and at the four
    unit shapes. Passes are then laid out with one matrix product per column."""

    def __init__(self, model: ModelSpec, plan: _Plan, stage: int, phase: str) -> None:
        probes = [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]
        recs = []
        for shape in probes:
            e = _Emitter(model, plan, stage)
            self.first, self.last, self.sample = e.run_pass(phase, shape)
            recs.append(e.t)
        base = recs[0]
        self.rec = base
        self.m = base.n
        # the pass's first compute op (after the activation receive on later stages): KV blocks
        # are allocated when it starts
        self.first_compute = base.cols["stream"].index(S_COMPUTE)
        self.null: dict[str, np.ndarray] = {}
        self.origin: dict[str, np.ndarray] = {}
        self.coef: dict[str, np.ndarray] = {}  # 4 × m
        for c in _NUM_COLS:
            vals = base.cols[c]
            null = np.array([v is None for v in vals])
            dt = np.float64 if c == "flops" else np.int64
            arrs = [np.array([0 if v is None else v for v in r.cols[c]], dtype=dt) for r in recs]
            self.null[c] = null
            self.origin[c] = arrs[0]
            self.coef[c] = np.stack([a - arrs[0] for a in arrs[1:]])
        self.dep_op = np.array([i for i, d in enumerate(base.deps) for _ in d], dtype=np.int64)
        self.dep_on = np.array([x for d in base.deps for x in d], dtype=np.int64)
        # Guard the affine assumption (a product of two shape terms would break it).
        check = _Emitter(model, plan, stage)
        check.run_pass(phase, (3, 2, 5, 7))
        for c in _NUM_COLS:
            want = np.array([0 if v is None else v for v in check.t.cols[c]], dtype=self.origin[c].dtype)
            if not np.array_equal(self.values(c, np.array([[3, 2, 5, 7]]))[0], want):
                raise AssertionError(f"synth infer: column {c} of a {phase} pass is not affine in its shape")

    def values(self, c: str, shapes: np.ndarray) -> np.ndarray:
        """Column `c` of every pass (rows) and op (columns) for `shapes` (passes × 4)."""
        x = shapes.astype(np.float64 if c == "flops" else np.int64)
        out: np.ndarray = self.origin[c][None, :] + x @ self.coef[c]
        return out


@dataclass
class _Passes:
    starts: list[int] = field(default_factory=list)
    shapes: list[tuple[int, int, int, int]] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    ext: list[tuple[int, int]] = field(default_factory=list)  # (pass number, dependency)


class _StageTrace:
    """A pipeline stage's ops in local order: single ops (arrival clock, token messages) and
    passes laid out from skeletons; every rank of the stage runs them."""

    def __init__(self, model: ModelSpec, plan: _Plan, stage: int) -> None:
        self.model, self.plan, self.stage = model, plan, stage
        self.skel = {ph: _Skeleton(model, plan, stage, ph) for ph in ("prefill", "decode")}
        probe = _Emitter(model, plan, stage)
        self.kv_token, self.weight_params = probe.kv_token, probe.weight_params()
        self.singles = _Recorder()
        self.single_idx: list[int] = []
        self.passes = {ph: _Passes() for ph in self.skel}
        self.tensors: list[tuple[int, str, int | None, int | None]] = []
        self.n = 0

    def op(
        self,
        stream: int,
        name: str,
        kind: str,
        *,
        deps: list[int] | None = None,
        peer: int = PEER_NONE,
        **kw: Any,
    ) -> int:
        self.singles.op(stream, name, kind, deps=deps, peer=peer, **kw)
        self.single_idx.append(self.n)
        self.n += 1
        return self.n - 1

    def add_pass(
        self, phase: str, shape: tuple[int, int, int, int], iteration: int, deps: list[int]
    ) -> tuple[int, int, int]:
        """Lays out one pass; `deps` go to its first op. Returns its first compute op, its last
        op and its sample op (−1 before the last stage)."""
        sk, ps = self.skel[phase], self.passes[phase]
        start = self.n
        ps.ext.extend((len(ps.starts), d) for d in deps)
        ps.starts.append(start)
        ps.shapes.append(shape)
        ps.iterations.append(iteration)
        self.n += sk.m
        return start + sk.first_compute, start + sk.last, (start + sk.sample if sk.sample >= 0 else -1)

    def tensor(self, nbytes: int, cls: str, alloc: int | None = None, free: int | None = None) -> int:
        self.tensors.append((int(nbytes), cls, alloc, free))
        return len(self.tensors) - 1

    def table(self) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The stage's ops (without op_id, rank, deps, group_id, peer), deps in CSR form with local
        indices (offsets, values), and the peer code per op."""
        N = self.n
        num = {c: np.zeros(N, np.float64 if c == "flops" else np.int64) for c in _NUM_COLS}
        null = {c: np.zeros(N, bool) for c in _NUM_COLS}
        iteration = np.full(N, -1, np.int64)
        duration = np.full(N, -1, np.int64)
        peer = np.zeros(N, np.int64)
        layer = np.full(N, _NO_LAYER, np.int64)
        stream = np.zeros(N, np.int64)
        strs: dict[str, tuple[list[str | None], np.ndarray]] = {
            c: ([None], np.zeros(N, np.int32)) for c in _STR_COLS
        }

        def put_strings(c: str, pos: np.ndarray, vals: list[Any]) -> None:
            dictionary, codes = strs[c]
            lookup = {v: i for i, v in enumerate(dictionary)}
            local = np.empty(len(vals), np.int32)
            for i, v in enumerate(vals):
                if v not in lookup:
                    lookup[v] = len(dictionary)
                    dictionary.append(v)
                local[i] = lookup[v]
            codes[pos] = local if pos.ndim == 1 else local[None, :]

        dep_ops, dep_on = [], []
        # single ops
        s, si = self.singles, np.asarray(self.single_idx, np.int64)
        if s.n:
            for c in _NUM_COLS:
                vals = s.cols[c]
                null[c][si] = [v is None for v in vals]
                num[c][si] = [0 if v is None else v for v in vals]
            iteration[si] = [-1 if v is None else v for v in s.cols["iteration"]]
            duration[si] = [-1 if v is None else v for v in s.cols["duration_ns"]]
            layer[si] = [_NO_LAYER if v is None else v for v in s.cols["layer"]]
            stream[si] = s.cols["stream"]
            peer[si] = s.peer
            for c in _STR_COLS:
                put_strings(c, si, s.cols[c])
            dep_ops.append(np.array([i for i, d in zip(si, s.deps, strict=True) for _ in d], np.int64))
            dep_on.append(np.array([x for d in s.deps for x in d], np.int64))
        # passes
        for ph, sk in self.skel.items():
            ps = self.passes[ph]
            if not ps.starts:
                continue
            starts = np.asarray(ps.starts, np.int64)
            pos = starts[:, None] + np.arange(sk.m)[None, :]
            shapes = np.asarray(ps.shapes, np.int64)
            for c in _NUM_COLS:
                num[c][pos] = sk.values(c, shapes)
                null[c][pos] = sk.null[c][None, :]
            iteration[pos] = np.asarray(ps.iterations, np.int64)[:, None]
            r = sk.rec
            layer[pos] = np.array([_NO_LAYER if v is None else v for v in r.cols["layer"]], np.int64)[None, :]
            stream[pos] = np.asarray(r.cols["stream"], np.int64)[None, :]
            peer[pos] = np.asarray(r.peer, np.int64)[None, :]
            for c in _STR_COLS:
                put_strings(c, pos, r.cols[c])
            dep_ops.append((starts[:, None] + sk.dep_op[None, :]).ravel())
            dep_on.append((starts[:, None] + sk.dep_on[None, :]).ravel())
            if ps.ext:
                ext = np.asarray(ps.ext, np.int64)
                dep_ops.append(starts[ext[:, 0]] + sk.first)
                dep_on.append(ext[:, 1])
        ops_arr = np.concatenate(dep_ops) if dep_ops else np.zeros(0, np.int64)
        on_arr = np.concatenate(dep_on) if dep_on else np.zeros(0, np.int64)
        order = np.argsort(ops_arr, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(ops_arr, minlength=N))])
        kind = np.array(strs["kind"][0], dtype=object)[strs["kind"][1]]
        is_coll = kind == "collective"
        coll_seq = np.cumsum(is_coll) - 1
        p2p_seq = np.full(N, -1, np.int64)
        for kd in ("send", "recv"):
            mk = kind == kd
            for code in np.unique(peer[mk]):
                sel = mk & (peer == code)
                p2p_seq[sel] = np.arange(int(sel.sum()))
        cols: dict[str, pa.Array] = {}
        for c in _STR_COLS:
            dictionary, codes = strs[c]
            cols[c] = pa.DictionaryArray.from_arrays(
                pa.array(codes, pa.int32()), pa.array(dictionary, pa.string())
            ).cast(pa.string())
        for c in _NUM_COLS:
            cols[c] = pa.array(num[c], type=OPS[c].type, mask=null[c])
        cols["stream"] = pa.array(stream, pa.uint32())
        cols["layer"] = pa.array(np.where(layer == _NO_LAYER, 0, layer), pa.int32(), mask=layer == _NO_LAYER)
        cols["iteration"] = pa.array(np.maximum(iteration, 0), pa.uint32(), mask=iteration < 0)
        cols["duration_ns"] = pa.array(np.maximum(duration, 0), pa.int64(), mask=duration < 0)
        cols["coll_seq"] = pa.array(np.maximum(coll_seq, 0), pa.uint64(), mask=~is_coll)
        cols["p2p_seq"] = pa.array(np.maximum(p2p_seq, 0), pa.uint64(), mask=p2p_seq < 0)
        table = pa.table({c: cols[c] for c in _OP_COLS})
        return table, offsets, on_arr[order], peer, is_coll


class _Timer:
    """Estimated pass time on the system, for the scheduler: one layer's compute ops timed by
    the roofline compute model and scaled to all layers, collectives by the network model (one
    replay per size). Passes whose shapes agree within 0.5% share an estimate."""

    def __init__(self, model: ModelSpec, plan: _Plan, system: Any) -> None:
        self.model, self.plan, self.system = model, plan, system
        self.one = _Plan(plan.tp, 1, plan.dtype, plan.vocab_padded)
        self.coll_cache: dict[tuple[str, int], int] = {}
        self.cache: dict[tuple[int, ...], float] = {}
        # (latency ns, bytes/s) of each stage boundary: the NIC where it crosses a node
        dpn, tp, net = system.devices_per_node, plan.tp, system.network
        self.boundaries = [
            net.scale_out if (s * tp) // dpn != ((s + 1) * tp) // dpn else net.scale_up
            for s in range(plan.pp - 1)
        ]

    def collective_ns(self, coll: str, nbytes: int) -> int:
        key = (coll, nbytes)
        if key not in self.coll_cache:
            from tracesim.samples import single_collective
            from tracesim.simulate import simulate

            res = simulate(
                single_collective(self.plan.tp, nbytes, coll), self.system, compute_model="roofline"
            )
            self.coll_cache[key] = res.makespan_ns
        return self.coll_cache[key]

    def pass_ns(self, shape: tuple[int, int, int, int]) -> float:
        from tracesim.simulate import op_times

        key = (
            shape[0],
            shape[1],
            *(round(math.log(x) / math.log(1.005)) if x > 0 else -1 for x in shape[2:]),
        )
        if key in self.cache:
            return self.cache[key]
        e = _Emitter(self.model, self.one, 0, layers=[0])
        e.run_pass("decode", shape)
        t = e.t
        n = t.n
        table = pa.table({c: pa.array(t.cols[c], type=OPS[c].type) for c in _OP_COLS})
        table = table.append_column("op_id", pa.array(np.arange(n, dtype=np.uint64)))
        table = table.append_column("rank", pa.array(np.zeros(n, np.uint32)))
        times = op_times(table, self.system, compute_model="roofline").to_pylist()
        total = 0.0
        for i in range(n):
            if t.cols["kind"][i] == "collective":
                d = float(self.collective_ns(t.cols["coll"][i], int(t.cols["comm_bytes"][i])))
            else:
                d = float(times[i] or 0)
            total += d * (self.model.layers if t.cols["layer"][i] == 0 else 1)
        msg = shape[0] * self.model.hidden * 2
        total += float(sum(link.latency_ns + msg / link.bw_bytes * 1e9 for link in self.boundaries))
        self.cache[key] = total
        return total


def _expand(
    st: _StageTrace, ranks: np.ndarray, op_base: np.ndarray, tensor_base: np.ndarray
) -> tuple[pa.Table, pa.Table]:
    """The stage's ops and tensors on every rank in `ranks`: the stage table repeated (zero-copy),
    with op_id, rank, deps, group_id and peer per rank."""
    tp, pp, stage = st.plan.tp, st.plan.pp, st.stage
    table, offsets, values, code, is_coll = st.table()
    n = st.n
    shift = np.zeros(n, np.int64)
    for c, off in (
        (PEER_PREV, -tp),
        (PEER_NEXT, tp),
        (PEER_FIRST, -stage * tp),
        (PEER_LAST, (pp - 1 - stage) * tp),
    ):
        shift[code == c] = off
    off32 = pa.array(offsets.astype(np.int32))
    extra: dict[str, list[pa.Array]] = {"op_id": [], "rank": [], "deps": [], "group_id": [], "peer": []}
    local = np.arange(n, dtype=np.int64)
    for r, base in zip(ranks, op_base, strict=True):
        extra["op_id"].append(pa.array((base + local).astype(np.uint64)))
        extra["rank"].append(pa.array(np.full(n, r, np.uint32)))
        extra["deps"].append(pa.ListArray.from_arrays(off32, pa.array((values + base).astype(np.uint64))))
        extra["group_id"].append(pa.array(np.full(n, r // tp, np.uint32), mask=~is_coll))
        extra["peer"].append(pa.array((r + shift).astype(np.uint32), mask=code == PEER_NONE))
    ops = pa.concat_tables([table] * len(ranks))
    for col, parts in extra.items():
        ops = ops.append_column(col, pa.chunked_array(parts))
    nt = len(st.tensors)
    tens_one = pa.table(
        {
            "bytes": pa.array([x[0] for x in st.tensors], pa.uint64()),
            "class": pa.array([x[1] for x in st.tensors], pa.string()),
        }
    )
    alloc = np.array([-1 if x[2] is None else x[2] for x in st.tensors], dtype=np.int64)
    free = np.array([-1 if x[3] is None else x[3] for x in st.tensors], dtype=np.int64)
    tparts: dict[str, list[pa.Array]] = {"tensor_id": [], "rank": [], "alloc_op": [], "free_op": []}
    tl = np.arange(nt, dtype=np.int64)
    for r, base, tbase in zip(ranks, op_base, tensor_base, strict=True):
        tparts["tensor_id"].append(pa.array((tbase + tl).astype(np.uint64)))
        tparts["rank"].append(pa.array(np.full(nt, r, np.uint32)))
        tparts["alloc_op"].append(pa.array((alloc + base).astype(np.uint64), mask=alloc < 0))
        tparts["free_op"].append(pa.array((free + base).astype(np.uint64), mask=free < 0))
    tens = pa.concat_tables([tens_one] * len(ranks))
    for col, tpart in tparts.items():
        tens = tens.append_column(col, pa.chunked_array(tpart))
    return ops, tens


# --- synthesis ----------------------------------------------------------------------------


def _kv_budget_tokens(
    builders: list[_StageTrace], system: Any, weight_bytes: float, memory_fraction: float, name: str
) -> int:
    """KV-cache tokens that fit on every rank: `memory_fraction` of the primary tier, less the
    rank's weights, divided by the KV bytes of one token on that rank (as vLLM sizes its cache)."""
    dev = system.device
    capacity = dev.memory[dev.primary_memory].capacity_bytes
    budget = None
    for b in builders:
        free = memory_fraction * capacity - b.weight_params * weight_bytes
        if free < b.kv_token:
            raise PlanError(
                f"model {name}: stage {b.stage} holds {b.weight_params * weight_bytes / 1e9:.1f} GB of "
                f"weights per rank, which leaves no room for a KV cache in {memory_fraction:g} × "
                f"{capacity / 1e9:.0f} GB of {dev.primary_memory} on {system.name}; use a larger --tp or --pp"
            )
        tokens = int(free // b.kv_token)
        budget = tokens if budget is None else min(budget, tokens)
    assert budget is not None
    return budget


def synth_infer(
    model: str | ModelSpec,
    *,
    system: Any = "dgx-h100",
    tp: int = 1,
    pp: int = 1,
    batch: int | None = None,
    prompt: int | None = None,
    output: int | None = None,
    requests: str | os.PathLike[str] | Requests | None = None,
    dtype: str = "bf16",
    max_batch: int | None = None,
    max_prefill_tokens: int = 8192,
    kv_block_tokens: int = 16,
    max_kv_tokens: int | None = None,
    memory_fraction: float = 0.9,
    validate: bool = True,
) -> Trace:
    """LLM serving on tp · pp ranks as a trace: either a static batch (`batch` requests of
    `prompt` tokens generating `output` tokens each, all arriving at 0) or a request trace
    (`requests`: a CSV path, see `read_requests`), under continuous batching (module docstring).

    `system` (a preset name, TOML path or System) times iterations for the scheduler and sizes
    the KV cache; `max_batch` (default 256, or `batch`) caps running sequences;
    `kv_block_tokens` is the paging granularity of the KV cache; `max_kv_tokens` overrides the
    budget derived from device memory. Raises PlanError or RequestTraceError on bad input."""
    from tracesim.system import System, load_system

    t0 = time.perf_counter()
    spec = load_model(model) if isinstance(model, str) else model
    static = (batch, prompt, output)
    if requests is None:
        if None in static:
            raise PlanError("give either --batch, --prompt and --output, or --requests FILE.csv")
        assert batch is not None and prompt is not None and output is not None
        reqs = Requests.batch(batch, prompt, output)
        src = f"batch {batch} × prompt {prompt} → output {output}"
    else:
        if any(v is not None for v in static):
            raise PlanError("--requests cannot be combined with --batch, --prompt or --output")
        reqs = requests if isinstance(requests, Requests) else read_requests(requests)
        src = str(requests) if not isinstance(requests, Requests) else "requests"
    for name, v in (
        ("max-batch", max_batch),
        ("max-prefill-tokens", max_prefill_tokens),
        ("kv-block", kv_block_tokens),
        ("max-kv-tokens", max_kv_tokens),
    ):
        if v is not None and v < 1:
            raise PlanError(f"--{name}: must be at least 1, got {v}")
    if not 0 < memory_fraction <= 1:
        raise PlanError(f"--memory-fraction: must be in (0, 1], got {memory_fraction}")
    cap_batch = max_batch if max_batch is not None else (batch if batch is not None else 256)
    gpus = tp * pp
    plan = _make_plan(spec, tp, pp, dtype)
    sys_ = system if isinstance(system, System) else load_system(system)
    if gpus > sys_.devices:
        sys_ = load_system(sys_, nodes=-(-gpus // sys_.devices_per_node))
    builders = [_StageTrace(spec, plan, s) for s in range(pp)]
    weight_bytes = 1.0 if dtype == "fp8" else float(WEIGHT_BYTES)
    if max_kv_tokens is None:
        budget = _kv_budget_tokens(builders, sys_, weight_bytes, memory_fraction, spec.name)
    else:
        budget = max_kv_tokens
    blk = kv_block_tokens
    total_blocks = budget // blk
    n = len(reqs)
    order = np.argsort(
        reqs.arrival_ns, kind="stable"
    )  # read_requests sorts; a Requests built by hand may not
    arrival, prm, out, line = (
        np.asarray(x, np.int64)[order] for x in (reqs.arrival_ns, reqs.prompt, reqs.output, reqs.line)
    )
    need = -(-(prm + out - 1) // blk)  # blocks reserved: prompt and every generated token but the last
    worst = int(np.argmax(need))
    if need[worst] > total_blocks:
        where = f"{src}, line {line[worst]}: " if requests is not None else ""
        raise PlanError(
            f"{where}a request of {prm[worst]} + {out[worst]} tokens needs {need[worst] * blk} tokens of KV "
            f"cache, but only {total_blocks * blk} fit ({spec.name}, tp {tp}, pp {pp} on {sys_.name})"
        )
    timer = _Timer(spec, plan, sys_)

    # Arrival clock: host ops on the first stage, each ending at one request's arrival.
    first = builders[0]
    arrival_local = np.zeros(n, np.int64)
    prev = 0
    for i in range(n):
        gap = int(arrival[i] - prev)
        arrival_local[i] = first.op(S_CLOCK, f"arrival.req{i}", "host", category="other", duration_ns=gap)
        prev = int(arrival[i])

    first_tok = np.full(n, -1, np.int64)  # local op index (last-stage template) of the sample op
    last_tok = np.full(n, -1, np.int64)
    gen = np.zeros(n, np.int64)  # tokens generated so far
    kv_blocks = np.zeros(n, np.int64)  # KV blocks allocated so far
    kv_tensors: list[dict[int, list[int]]] = [{} for _ in range(pp)]  # per stage: request → tensors
    free_blocks = total_blocks
    waiting: list[int] = []
    running: list[int] = []
    last_op = [-1] * pp  # last op of the previous iteration per stage
    clock = 0.0
    nxt = k = prev_sampled = 0
    est_ns: list[float] = []
    while nxt < n or waiting or running:
        while nxt < n and arrival[nxt] <= clock:
            waiting.append(nxt)
            nxt += 1
        if not waiting and not running:
            clock = float(arrival[nxt])
            continue
        admitted: list[int] = []
        ptoks = 0
        while waiting and len(running) + len(admitted) < cap_batch:
            r = waiting[0]
            if need[r] > free_blocks or (admitted and ptoks + prm[r] > max_prefill_tokens):
                break
            admitted.append(waiting.pop(0))
            free_blocks -= int(need[r])
            ptoks += int(prm[r])
        if not admitted and not running:  # cannot happen: every request fits an empty cache
            raise AssertionError("scheduler made no progress")
        decode = running
        pa_ = np.asarray(prm[admitted], np.int64)
        ctx_d = np.asarray(prm[decode] + gen[decode], np.int64)
        # (phase, requests, pass shape: tokens, sequences, query-key pairs, context after)
        passes = [
            (phase, rs, shape)
            for phase, rs, shape in (
                (
                    "prefill",
                    admitted,
                    (int(pa_.sum()), len(admitted), int((pa_ * (pa_ + 1) // 2).sum()), int(pa_.sum())),
                ),
                ("decode", decode, (len(decode), len(decode), int(ctx_d.sum()), int(ctx_d.sum()))),
            )
            if rs
        ]
        for s, b in enumerate(builders):
            deps: list[int] = []
            if s == 0:
                deps = [int(arrival_local[admitted[-1]])] if admitted else []
                if pp > 1 and k > 0:
                    deps.append(
                        b.op(
                            S_TOKENS,
                            "recv_tokens",
                            "recv",
                            peer=PEER_LAST,
                            category="communication",
                            comm_bytes=8 * prev_sampled,
                            phase="decode",
                            iteration=k,
                        )
                    )
            elif s == pp - 1 and k > 0:
                b.op(
                    S_TOKENS,
                    "send_tokens",
                    "send",
                    deps=[last_op[s]],
                    peer=PEER_FIRST,
                    category="communication",
                    comm_bytes=8 * prev_sampled,
                    phase="decode",
                    iteration=k,
                )
            for phase, rs, shape in passes:
                p_compute, p_last, sample = b.add_pass(phase, shape, k, deps)
                deps = []
                for r in rs:  # KV blocks this pass newly fills, allocated when the pass starts
                    tokens = int(prm[r] + (gen[r] if phase == "decode" else 0))
                    new_blocks = -(-tokens // blk) - int(kv_blocks[r])
                    if new_blocks > 0:
                        kv_tensors[s].setdefault(r, []).append(
                            b.tensor(new_blocks * blk * b.kv_token, "kv_cache", p_compute, None)
                        )
                    if (gen[r] + 1 if phase == "decode" else 1) >= out[r]:
                        # freed when the pass that produced its last token ends on this stage
                        for ti in kv_tensors[s].pop(r, []):
                            b.tensors[ti] = (*b.tensors[ti][:3], p_last)
                    if s == pp - 1:
                        if phase == "prefill":
                            first_tok[r] = sample
                        last_tok[r] = sample
                last_op[s] = p_last
        for r in admitted:
            kv_blocks[r] = -(-int(prm[r]) // blk)
            gen[r] = 1
        for r in decode:
            kv_blocks[r] = -(-int(prm[r] + gen[r]) // blk)
            gen[r] += 1
        for r in admitted + decode:
            if gen[r] >= out[r]:
                free_blocks += int(need[r])
        running = [r for r in decode + admitted if gen[r] < out[r]]
        prev_sampled = len(admitted) + len(decode)
        est = sum(timer.pass_ns(shape) for _, _, shape in passes)
        est_ns.append(est)
        clock += est
        k += 1
    sched_s = time.perf_counter() - t0

    # Expand each stage's template to its tp ranks.
    ranks = np.arange(gpus, dtype=np.int64)
    stage_of = ranks // tp
    for b in builders:
        b.tensor(round(b.weight_params * weight_bytes), "weight")
    n_ops = np.array([builders[s].n for s in stage_of], dtype=np.int64)
    n_tens = np.array([len(builders[s].tensors) for s in stage_of], dtype=np.int64)
    op_base = np.concatenate([[0], np.cumsum(n_ops)[:-1]])
    t_base = np.concatenate([[0], np.cumsum(n_tens)[:-1]])
    op_parts, t_parts = [], []
    for s, b in enumerate(builders):
        sel = ranks[stage_of == s]
        o, tt = _expand(b, sel, op_base[sel], t_base[sel])
        op_parts.append(o)
        t_parts.append(tt)
    ops = pa.concat_tables(op_parts, promote_options="permissive")
    tensors = pa.concat_tables(t_parts)
    groups = None
    if tp > 1:
        groups = {
            "group_id": list(range(pp)),
            "ranks": [list(range(g * tp, (g + 1) * tp)) for g in range(pp)],
            "name": [f"tp{g}" for g in range(pp)],
        }
    last_base = int(op_base[(pp - 1) * tp])
    build_s = time.perf_counter() - t0
    kv_token_bytes = 2 * spec.layers * spec.n_kv_heads * spec.head_dim * KV_BYTES
    return Trace.from_tables(
        ops,
        ranks=gpus,
        groups=groups,
        tensors=tensors,
        source="tracesim.synth.infer",
        source_system=sys_.name,
        validate=validate,
        synth={
            "mode": "infer",
            "model": spec.model_dump(),
            "params": spec.params,
            "tp": tp,
            "pp": pp,
            "dtype": dtype,
            "requests_from": src,
            "iterations": k,
            "max_batch": cap_batch,
            "max_prefill_tokens": max_prefill_tokens,
            "kv_block_tokens": blk,
            "kv_budget_tokens": total_blocks * blk,
            "kv_bytes_per_token": kv_token_bytes,
            "vocab_padded": plan.vocab_padded,
            "estimated_iteration_ns": [round(x) for x in est_ns],
            "rank_layout": "rank = pp_idx*tp + tp_idx",
            "schedule_seconds": round(sched_s, 3),
            "build_seconds": round(build_s, 3),
        },
        serving={
            "arrival_ns": arrival.tolist(),
            "prompt_tokens": prm.tolist(),
            "output_tokens": out.tolist(),
            "arrival_op": arrival_local.tolist(),
            "first_token_op": (first_tok + last_base).tolist(),
            "last_token_op": (last_tok + last_base).tolist(),
        },
    )


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    q = np.percentile(values, [50, 90, 99])
    return {
        "mean": round(float(values.mean()), 6),
        "p50": round(float(q[0]), 6),
        "p90": round(float(q[1]), 6),
        "p99": round(float(q[2]), 6),
    }


def serving_metrics(timeline: pl.DataFrame | Any, trace: Trace | dict[str, Any]) -> dict[str, Any]:
    """TTFT, TPOT, end-to-end latency (ms; mean, p50, p90, p99 by linear interpolation) and
    output tokens/s of a replay of a `synth infer` trace, from its timeline and the trace's
    `serving` bookkeeping. TTFT = end of the op that samples the first token − the request's
    arrival; TPOT = (last token − first token) / (output tokens − 1), over requests with more
    than one output token; tokens/s = all output tokens / (last token of all − first arrival).
    `timeline` may be a Result."""
    from tracesim.exceptions import TraceError

    tl = timeline if isinstance(timeline, pl.DataFrame) else timeline.timeline
    meta = trace.meta if isinstance(trace, Trace) else trace
    s = meta.get("serving")
    if not isinstance(s, dict):
        raise TraceError("trace.json: field 'serving': missing; the trace has no request bookkeeping")
    try:
        arr_op = np.asarray(s["arrival_op"], np.int64)
        first_op = np.asarray(s["first_token_op"], np.int64)
        last_op = np.asarray(s["last_token_op"], np.int64)
        out = np.asarray(s["output_tokens"], np.int64)
    except (KeyError, TypeError, ValueError) as err:
        raise TraceError(f"trace.json: field 'serving': {err}") from None
    wanted = np.unique(np.concatenate([arr_op, first_op, last_op])).tolist()
    sub = tl.filter(pl.col("op_id").is_in(wanted)).select("op_id", "end_ns")
    ends = dict(zip(sub.get_column("op_id").to_list(), sub.get_column("end_ns").to_list(), strict=True))
    try:
        a = np.array([ends[int(i)] for i in arr_op], np.float64)
        f = np.array([ends[int(i)] for i in first_op], np.float64)
        e = np.array([ends[int(i)] for i in last_op], np.float64)
    except KeyError as err:
        raise TraceError(f"trace.json: field 'serving': op_id {err} is not in the timeline") from None
    multi = out > 1
    span = float(e.max() - a.min()) if len(a) else 0.0
    total = int(out.sum())
    return {
        "requests": len(a),
        "output_tokens": total,
        "ttft_ms": _stats((f - a) / 1e6),
        "tpot_ms": _stats((e[multi] - f[multi]) / (out[multi] - 1) / 1e6),
        "e2e_ms": _stats((e - a) / 1e6),
        "tokens_per_s": round(total / (span / 1e9), 3) if span > 0 else None,
        "requests_per_s": round(len(a) / (span / 1e9), 3) if span > 0 else None,
    }
