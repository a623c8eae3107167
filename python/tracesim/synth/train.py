"""Synthesised per-rank traces of one training step of a dense transformer (docs/synth.md).

Rank layout (Megatron-LM): ``rank = dp_idx * (pp * tp) + pp_idx * tp + tp_idx``; tensor-parallel
groups are consecutive ranks, pipeline stages are ``tp`` ranks apart, data-parallel replicas
``pp * tp`` ranks apart.

Streams on every rank: 0 compute and tensor-parallel all-reduces (blocking, as in Megatron),
1 data-parallel gradient all-reduces (overlapped with backward), 2 sends of activations to the
next stage, 3 sends of gradients to the previous stage, 4 receives of activations, 5 receives of
gradients.

All ranks of a pipeline stage run the same op sequence, so one template is built per stage in
Python and expanded to every rank of the stage with NumPy/Arrow; the only per-rank columns are
rank, op_id, deps (shifted), group_id and peer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from tracesim.exceptions import TracesimError
from tracesim.synth.models import ModelSpec, load_model
from tracesim.trace import Trace

Recompute = Literal["none", "full"]
Schedule = Literal["1f1b", "gpipe"]
Attention = Literal["flash", "unfused"]
DType = Literal["bf16", "fp16", "fp8"]

S_COMPUTE, S_DP, S_SEND_ACT, S_SEND_GRAD, S_RECV_ACT, S_RECV_GRAD = range(6)
ROLE_NONE, ROLE_TP, ROLE_DP = 0, 1, 2
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
) -> Plan:
    """Checks the plan against the model and GPU count; raises PlanError with a clear message."""
    for name, v in (("gpus", gpus), ("tp", tp), ("pp", pp), ("micro-batch", micro_batch)):
        if v < 1:
            raise PlanError(f"--{name}: must be at least 1, got {v}")
    if dtype not in ("bf16", "fp16", "fp8"):
        raise PlanError(f"--dtype: expected bf16, fp16 or fp8, got {dtype!r}")
    if recompute not in ("none", "full"):
        raise PlanError(f"--recompute: expected none or full, got {recompute!r}")
    if schedule not in ("1f1b", "gpipe"):
        raise PlanError(f"--schedule: expected 1f1b or gpipe, got {schedule!r}")
    if attention not in ("flash", "unfused"):
        raise PlanError(f"--attention: expected flash or unfused, got {attention!r}")
    if model.experts:
        raise PlanError(f"model {model.name}: mixture-of-experts synthesis is not implemented yet")
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
    s = model.seq if seq is None else seq
    if s < 1:
        raise PlanError(f"--seq: must be at least 1, got {s}")
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
        microbatches=global_batch // (dp * micro_batch),
        seq=s,
        dtype=dtype,  # type: ignore[arg-type]
        recompute=recompute,  # type: ignore[arg-type]
        schedule=schedule,  # type: ignore[arg-type]
        vocab_padded=vocab_padded,
        attention=attention,  # type: ignore[arg-type]
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
    """The op and tensor sequence of one rank of a stage, with local op indices."""

    cols: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in _OP_COLS})
    deps: list[list[int]] = field(default_factory=list)
    role: list[int] = field(default_factory=list)
    peer: list[int] = field(default_factory=list)
    tensors: list[tuple[int, str, int | None, int | None]] = field(default_factory=list)
    coll_seq: dict[int, int] = field(default_factory=dict)
    p2p_seq: dict[int, int] = field(default_factory=dict)

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
        role: int = ROLE_NONE,
        peer: int = PEER_NONE,
        **kw: Any,
    ) -> int:
        i = self.n
        if kind == "collective":
            kw["coll_seq"] = self.coll_seq.get(role, 0)
            self.coll_seq[role] = kw["coll_seq"] + 1
        elif kind in ("send", "recv"):
            key = peer if kind == "send" else -peer
            kw["p2p_seq"] = self.p2p_seq.get(key, 0)
            self.p2p_seq[key] = kw["p2p_seq"] + 1
        for c in _OP_COLS:
            self.cols[c].append(kw.get(c))
        self.cols["stream"][-1] = stream
        self.cols["name"][-1] = name
        self.cols["kind"][-1] = kind
        self.deps.append(deps or [])
        self.role.append(role)
        self.peer.append(peer)
        return i

    def tensor(self, nbytes: int, cls: str, alloc: int | None = None, free: int | None = None) -> None:
        self.tensors.append((int(nbytes), cls, alloc, free))


class _StageBuilder:
    """Builds the template of one pipeline stage."""

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
        lp = model.layers // plan.pp
        self.layers = list(range(stage * lp, (stage + 1) * lp))
        self.first = stage == 0
        self.last = stage == plan.pp - 1
        self.dp_reduces: list[int] = []

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

    def tp_all_reduce(self, name: str, nbytes: int, layer: int | None, phase: str) -> int | None:
        if self.p.tp == 1:
            return None
        return self.t.op(
            S_COMPUTE,
            name,
            "collective",
            role=ROLE_TP,
            category="communication",
            coll="all_reduce",
            comm_bytes=nbytes,
            layer=layer,
            phase=phase,
        )

    # --- per-rank sizes ---------------------------------------------------------------------
    def layer_params(self) -> int:
        return self.m.gemm_params_per_layer // self.p.tp + 2 * self.m.norm_params

    def embedding_params(self) -> int:
        n = self.p.vocab_padded * self.m.hidden // self.p.tp
        return n + (self.m.seq * self.m.hidden if self.m.position == "learned" else 0)

    def output_params(self) -> int:
        """Output layer (a copy of the tied embedding on the last stage, as Megatron keeps one,
        or none when the first and last stage are the same) and the final norm."""
        shared = self.m.tied_embeddings and self.p.pp == 1
        return (0 if shared else self.p.vocab_padded * self.m.hidden // self.p.tp) + self.m.norm_params

    def layer_activation_bytes(self) -> int:
        """Stored activations of one layer and micro-batch without recompute (Korthikanti et al.
        2022, flash attention: no s² terms): 10·T·h replicated + (QKV out + attention out +
        FC1 out + FFN activation) split over tp, 2 bytes each."""
        m, tp, T = self.m, self.p.tp, self.tokens
        split = self.act * T * (m.qkv_out + m.hidden + m.fc1_out + m.ffn) // tp
        if self.p.attention == "unfused":  # softmax output, dropout mask and output: 5·a·s²·b / tp
            split += 5 * m.heads * self.p.seq * T // tp
        return 10 * T * m.hidden + split

    def raw(self, name: str, category: str, flops: float, br: int, bw: int, layer: int, phase: str) -> int:
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

    # --- layers -----------------------------------------------------------------------------
    def layer_fwd(self, layer: int, phase: str, prefix: str, deps: Any) -> tuple[int, int]:
        m, tp, T, h = self.m, self.p.tp, self.tokens, self.m.hidden
        L = f"{prefix}l{layer}."
        first = self.elem(L + "norm1", "norm", T * h, 1, 1, 5, layer, phase, deps)
        self.gemm(L + "qkv", T, m.qkv_out // tp, h, layer, phase)
        self.attention_fwd(L, layer, phase)
        self.gemm(L + "proj", T, h, h // tp, layer, phase)
        self.tp_all_reduce(L + "tp_all_reduce_attn", T * h * self.act, layer, phase)
        self.elem(L + "bias_dropout_add1", "elementwise", T * h, 2, 1, 2, layer, phase)
        self.elem(L + "norm2", "norm", T * h, 1, 1, 5, layer, phase)
        self.gemm(L + "fc1", T, m.fc1_out // tp, h, layer, phase)
        gated = m.activation == "swiglu"
        self.elem(L + m.activation, "elementwise", T * m.ffn // tp, 2 if gated else 1, 1, 8, layer, phase)
        self.gemm(L + "fc2", T, h, m.ffn // tp, layer, phase)
        self.tp_all_reduce(L + "tp_all_reduce_mlp", T * h * self.act, layer, phase)
        last = self.elem(L + "bias_dropout_add2", "elementwise", T * h, 2, 1, 2, layer, phase)
        return first, last

    def layer_bwd(self, layer: int, deps: Any) -> tuple[int, int]:
        m, tp, T, h = self.m, self.p.tp, self.tokens, self.m.hidden
        L = f"l{layer}."
        ph = "bwd"
        gated = m.activation == "swiglu"
        first = self.elem(L + "bias_dropout_add2_bwd", "elementwise", T * h, 2, 1, 1, layer, ph, deps)
        self.gemm(L + "fc2_dgrad", T, m.ffn // tp, h, layer, ph)
        self.gemm(L + "fc2_wgrad", m.ffn // tp, h, T, layer, ph)
        self.elem(
            L + m.activation + "_bwd", "elementwise", T * m.ffn // tp, 3 if gated else 2, 2 if gated else 1,
            8, layer, ph,
        )  # fmt: skip
        self.gemm(L + "fc1_dgrad", T, h, m.fc1_out // tp, layer, ph)
        self.gemm(L + "fc1_wgrad", h, m.fc1_out // tp, T, layer, ph)
        self.tp_all_reduce(L + "tp_all_reduce_mlp_bwd", T * h * self.act, layer, ph)
        self.elem(L + "norm2_bwd", "norm", T * h, 2, 1, 8, layer, ph)
        self.elem(L + "bias_dropout_add1_bwd", "elementwise", T * h, 2, 1, 1, layer, ph)
        self.gemm(L + "proj_dgrad", T, h // tp, h, layer, ph)
        self.gemm(L + "proj_wgrad", h // tp, h, T, layer, ph)
        self.attention_bwd(L, layer)
        self.gemm(L + "qkv_dgrad", T, h, m.qkv_out // tp, layer, ph)
        self.gemm(L + "qkv_wgrad", h, m.qkv_out // tp, T, layer, ph)
        self.tp_all_reduce(L + "tp_all_reduce_attn_bwd", T * h * self.act, layer, ph)
        last = self.elem(L + "norm1_bwd", "norm", T * h, 2, 1, 8, layer, ph)
        return first, last

    def forward(self, mb: int, deps: Any) -> int:
        T, h = self.tokens, self.m.hidden
        first_dep = deps
        if self.first:
            op = self.t.op(
                S_COMPUTE,
                "embedding",
                "compute",
                deps=first_dep,
                category="embedding",
                dtype=self.act_dtype,
                flops=0.0,
                bytes_read=T * h * self.act + T * 8,
                bytes_written=T * h * self.act,
                phase="fwd",
            )
            self.tp_all_reduce("embedding_tp_all_reduce", T * h * self.act, None, "fwd")
            first_dep = None
            self.t.tensor(T * h * self.act, "activation", op, None)  # freed below
            emb_tensor = len(self.t.tensors) - 1
        for layer in self.layers:
            first, last = self.layer_fwd(layer, "fwd", "", first_dep)
            first_dep = None
            full = self.p.recompute == "full"
            nbytes = T * h * self.act if full else self.layer_activation_bytes()
            self.t.tensor(nbytes, "activation", first, None)
            self.open_acts[(mb, layer)] = len(self.t.tensors) - 1
        if self.first:
            self.open_acts[(mb, -1)] = emb_tensor
        if self.last:
            V = self.p.vocab_padded // self.p.tp
            self.elem("final_norm", "norm", T * h, 1, 1, 5, None, "fwd")
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
            self.t.tensor(T * V * 4, "activation", logits, None)
            self.open_acts[(mb, self.m.layers)] = len(self.t.tensors) - 1
        return last

    def backward(self, mb: int, deps: Any) -> int:
        T, h = self.tokens, self.m.hidden
        first_dep = deps
        final = self.p.microbatches - 1
        if self.last:
            V = self.p.vocab_padded // self.p.tp
            self.elem("cross_entropy_bwd", "elementwise", T * V, 2, 1, 2, None, "bwd", first_dep)
            first_dep = None
            self.gemm("logits_dgrad", T, h, V, None, "bwd")
            self.gemm("logits_wgrad", h, V, T, None, "bwd")
            self.tp_all_reduce("logits_tp_all_reduce_bwd", T * h * self.act, None, "bwd")
            last = self.elem("final_norm_bwd", "norm", T * h, 2, 1, 8, None, "bwd")
            self._free(mb, self.m.layers, last)
            if mb == final:
                self.dp_reduce("output", self.output_params(), last, None)
        for layer in reversed(self.layers):
            if self.p.recompute == "full":
                rfirst, _ = self.layer_fwd(layer, "bwd", "recompute.", first_dep)
                first_dep = None
                self.t.tensor(self.layer_activation_bytes(), "activation", rfirst, None)
                transient = len(self.t.tensors) - 1
            _, last = self.layer_bwd(layer, first_dep)
            first_dep = None
            if self.p.recompute == "full":
                self.t.tensors[transient] = (*self.t.tensors[transient][:3], last)
            self._free(mb, layer, last)
            if mb == final:
                self.dp_reduce(f"l{layer}", self.layer_params(), last, layer)
        if self.first:
            last = self.t.op(
                S_COMPUTE,
                "embedding_bwd",
                "compute",
                deps=first_dep,
                category="embedding",
                dtype="fp32",
                flops=float(T * h),
                bytes_read=T * h * self.act,
                bytes_written=T * h * 4,
                phase="bwd",
            )
            self._free(mb, -1, last)
            if mb == final:
                self.dp_reduce("embedding", self.embedding_params(), last, None)
        return last

    def _free(self, mb: int, key: int, op: int) -> None:
        tid = self.open_acts.pop((mb, key))
        self.t.tensors[tid] = (*self.t.tensors[tid][:3], op)

    def dp_reduce(self, what: str, params: int, after: int, layer: int | None) -> None:
        if self.p.dp == 1:
            return
        self.dp_reduces.append(
            self.t.op(
                S_DP,
                f"dp_all_reduce_grad.{what}",
                "collective",
                deps=[after],
                role=ROLE_DP,
                category="communication",
                coll="all_reduce",
                comm_bytes=params * GRAD_BYTES,
                layer=layer,
                phase="bwd",
            )
        )

    def build(self) -> _Template:
        p, t = self.p, self.t
        self.open_acts: dict[tuple[int, int], int] = {}
        params = len(self.layers) * self.layer_params()
        if self.first:
            params += self.embedding_params()
        if self.last:
            params += self.output_params()
        self.params = params
        T, h = self.tokens, self.m.hidden
        msg = T * h * self.act
        for kind, mb in schedule_order(p.schedule, p.pp, self.stage, p.microbatches):
            if kind == "F":
                deps = None
                if not self.first:
                    deps = [t.op(S_RECV_ACT, f"recv_act.mb{mb}", "recv", peer=PEER_PREV,
                                 category="communication", comm_bytes=msg, phase="fwd")]  # fmt: skip
                last = self.forward(mb, deps)
                if not self.last:
                    t.op(S_SEND_ACT, f"send_act.mb{mb}", "send", deps=[last], peer=PEER_NEXT,
                         category="communication", comm_bytes=msg, phase="fwd")  # fmt: skip
            else:
                deps = None
                if not self.last:
                    deps = [t.op(S_RECV_GRAD, f"recv_grad.mb{mb}", "recv", peer=PEER_NEXT,
                                 category="communication", comm_bytes=msg, phase="bwd")]  # fmt: skip
                last = self.backward(mb, deps)
                if not self.first:
                    t.op(S_SEND_GRAD, f"send_grad.mb{mb}", "send", deps=[last], peer=PEER_PREV,
                         category="communication", comm_bytes=msg, phase="bwd")  # fmt: skip
        t.op(
            S_COMPUTE,
            "optimizer.adam",
            "compute",
            deps=list(self.dp_reduces),
            category="optimizer",
            dtype="fp32",
            flops=12.0 * params,
            bytes_read=params * (WEIGHT_BYTES + GRAD_BYTES + OPTIM_BYTES),
            bytes_written=params * (WEIGHT_BYTES + OPTIM_BYTES),
            phase="optim",
        )
        sizes = len(self.layers) * [self.layer_params()]
        if self.first:
            sizes.append(self.embedding_params())
        if self.last:
            sizes.append(self.output_params())
        for n in sizes:
            t.tensor(n * WEIGHT_BYTES, "weight")
            t.tensor(n * GRAD_BYTES, "gradient")
            t.tensor(n * OPTIM_BYTES, "optimizer_state")
        return t


_STR_COLS = ("name", "kind", "category", "dtype", "coll", "phase")
_INT_TYPES = {
    "stream": pa.uint32(),
    "coll_seq": pa.uint64(),
    "comm_bytes": pa.uint64(),
    "p2p_seq": pa.uint64(),
    "layer": pa.int32(),
    "bytes_read": pa.uint64(),
    "bytes_written": pa.uint64(),
    "gemm_m": pa.uint64(),
    "gemm_n": pa.uint64(),
    "gemm_k": pa.uint64(),
}


def _expand(
    tpl: _Template, ranks: np.ndarray, op_base: np.ndarray, tensor_base: np.ndarray, plan: Plan, n_tp: int
) -> tuple[pa.Table, pa.Table]:
    """The template's ops and tensors on every rank in `ranks`."""
    n, k = tpl.n, len(ranks)
    local = pa.table(
        {
            c: pa.array(tpl.cols[c], type=_INT_TYPES.get(c, pa.string() if c in _STR_COLS else None))
            for c in _OP_COLS
        }
    )
    idx = np.tile(np.arange(n, dtype=np.int64), k)
    ops = local.take(pa.array(idx))
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
    tp, pp = plan.tp, plan.pp
    tp_gid = rank_rep // tp
    dp_gid = n_tp + rank_rep % (pp * tp)
    gid = np.where(role == ROLE_TP, tp_gid, dp_gid)
    peer_role = np.tile(np.asarray(tpl.peer, dtype=np.int8), k)
    peer = np.where(peer_role == PEER_PREV, rank_rep - tp, rank_rep + tp)
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
    system: str | None = None,
    validate: bool = True,
) -> Trace:
    """One training step of `model` on `gpus` ranks (dp = gpus / (tp · pp)), as a trace.

    Raises PlanError when the plan does not divide the model or the GPU count."""
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
    )
    templates = []
    for stage in range(pp):
        b = _StageBuilder(spec, plan, stage)
        templates.append(b.build())
    ranks = np.arange(gpus, dtype=np.int64)
    stage_of = (ranks // tp) % pp
    n_ops = np.array([templates[s].n for s in stage_of], dtype=np.int64)
    n_tens = np.array([len(templates[s].tensors) for s in stage_of], dtype=np.int64)
    op_base = np.concatenate([[0], np.cumsum(n_ops)[:-1]])
    t_base = np.concatenate([[0], np.cumsum(n_tens)[:-1]])
    n_tp = gpus // tp if tp > 1 else 0
    op_parts, t_parts = [], []
    for s in range(pp):
        sel = ranks[stage_of == s]
        o, t = _expand(templates[s], sel, op_base[sel], t_base[sel], plan, n_tp)
        op_parts.append(o)
        t_parts.append(t)
    ops = pa.concat_tables(op_parts, promote_options="permissive")
    tensors = pa.concat_tables(t_parts)
    groups: dict[str, list[Any]] = {"group_id": [], "ranks": [], "name": []}
    if tp > 1:
        for g in range(gpus // tp):
            groups["group_id"].append(g)
            groups["ranks"].append(list(range(g * tp, (g + 1) * tp)))
            groups["name"].append(f"tp{g}")
    if plan.dp > 1:
        for j in range(pp * tp):
            groups["group_id"].append(n_tp + j)
            groups["ranks"].append(list(range(j, gpus, pp * tp)))
            groups["name"].append(f"dp{j}")
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
            "micro_batch": micro_batch,
            "global_batch": global_batch,
            "microbatches": plan.microbatches,
            "seq": plan.seq,
            "dtype": dtype,
            "recompute": recompute,
            "schedule": schedule,
            "attention": attention,
            "vocab_padded": plan.vocab_padded,
            "rank_layout": "rank = dp_idx*(pp*tp) + pp_idx*tp + tp_idx",
            "build_seconds": round(build_s, 3),
        },
    )
    return trace


def analytic_flops(model: ModelSpec, tokens: int, seq: int, recompute: str = "none") -> float:
    """Closed-form FLOPs of one step: 6·P_gemm·tokens + 12·L·h·s·tokens (attention), plus one more
    forward (2·P_layers·tokens + 4·L·h·s·tokens) with full recompute. P_gemm counts the layer
    GEMM weights and the output layer (V·h, unpadded)."""
    L, h = model.layers, model.hidden
    p_gemm = L * model.gemm_params_per_layer + model.vocab * h
    f = 6.0 * p_gemm * tokens + 12.0 * L * h * seq * tokens
    if recompute == "full":
        f += 2.0 * L * model.gemm_params_per_layer * tokens + 4.0 * L * h * seq * tokens
    return f
