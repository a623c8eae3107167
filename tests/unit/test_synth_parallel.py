"""`tracesim synth train` parallelism options (tracesim.synth.train): interleaved 1F1B (--vp),
sequence parallelism (--sp), ZeRO 1–3 (--zero), mixture of experts with expert parallelism (--ep),
selective recompute, and --granularity block. Hand-checkable properties and bad-input errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import tracesim
from tracesim.synth import PlanError, analytic_flops, load_model, synth_train
from tracesim.synth.train import interleaved_order

DENSE = load_model("gpt3-1.7b", layers=8, hidden=512, heads=8, vocab=1024)
MOE = load_model("mixtral-8x7b", layers=4, hidden=256, heads=4, kv_heads=2, ffn_hidden=512, vocab=1024)


def ops_df(trace: tracesim.Trace) -> pl.DataFrame:
    return pl.from_arrow(trace.ops)  # type: ignore[return-value]


def tensors_df(trace: tracesim.Trace) -> pl.DataFrame:
    return pl.from_arrow(trace.tensors)  # type: ignore[return-value]


def replay(trace: tracesim.Trace) -> tracesim.Result:
    return tracesim.simulate(trace, "dgx-a100", compute_model="roofline")


# --- interleaved 1F1B ---------------------------------------------------------------------------


def test_interleaved_order_matches_megatron_by_hand() -> None:
    # pp 2, vp 2, m 4, stage 0: warm-up (2 − 0 − 1)·2 + (2 − 1)·2 = 4 forwards; micro-batches go
    # through the chunks in groups of pp = 2; backwards visit the chunks in reverse.
    assert interleaved_order(2, 0, 4, 2) == [
        ("F", 0, 0), ("F", 1, 0), ("F", 0, 1), ("F", 1, 1),
        ("F", 2, 0), ("B", 0, 1), ("F", 3, 0), ("B", 1, 1),
        ("F", 2, 1), ("B", 0, 0), ("F", 3, 1), ("B", 1, 0),
        ("B", 2, 1), ("B", 3, 1), ("B", 2, 0), ("B", 3, 0),
    ]  # fmt: skip
    # Every stage runs every (micro-batch, chunk) once forward and once backward, backward after forward.
    for pp, vp, m in ((4, 2, 8), (4, 3, 4), (2, 4, 6)):
        for stage in range(pp):
            order = interleaved_order(pp, stage, m, vp)
            pos = {x: i for i, x in enumerate(order)}
            assert len(order) == 2 * m * vp == len(pos)
            assert all(pos[("F", mb, c)] < pos[("B", mb, c)] for mb in range(m) for c in range(vp))


def test_interleaved_send_recv_count_peers_and_layers() -> None:
    m = 8
    plain = ops_df(synth_train(DENSE, gpus=4, pp=4, global_batch=m, seq=256))
    inter = ops_df(synth_train(DENSE, gpus=4, pp=4, vp=2, global_batch=m, seq=256))
    # Boundaries between virtual stages: pp − 1 without, pp·vp − 1 with interleaving; each carries
    # m activations forward and m gradients back.
    for df, boundaries in ((plain, 3), (inter, 7)):
        assert df.filter(pl.col("kind") == "send").height == 2 * m * boundaries
        assert df.filter(pl.col("kind") == "recv").height == 2 * m * boundaries
    # Stage 3 (rank 3) sends chunk-0 activations on to stage 0 (the wrap-around); layers are
    # laid out in chunks of 1: stage p holds layers p and 4 + p.
    acts = inter.filter((pl.col("kind") == "send") & pl.col("name").str.starts_with("send_act"))
    pairs = set(zip(acts["rank"].to_list(), acts["peer"].to_list(), strict=True))
    assert pairs == {(0, 1), (1, 2), (2, 3), (3, 0)}
    layers = inter.filter(pl.col("rank") == 1)["layer"].drop_nulls().unique().sort().to_list()
    assert layers == [1, 5]
    # Sends and receives pair up one to one.
    s = inter.filter(pl.col("kind") == "send").select("rank", "peer", "p2p_seq", "comm_bytes")
    r = inter.filter(pl.col("kind") == "recv").select("rank", "peer", "p2p_seq", "comm_bytes")
    j = s.join(r, left_on=["rank", "peer", "p2p_seq"], right_on=["peer", "rank", "p2p_seq"])
    assert j.height == s.height and (j["comm_bytes"] == j["comm_bytes_right"]).all()


def test_interleaving_shrinks_the_bubble() -> None:
    m, pp = 8, 4
    one = replay(synth_train(DENSE, gpus=1, global_batch=m, seq=512)).summary["makespan_ns"]
    base = replay(synth_train(DENSE, gpus=pp, pp=pp, global_batch=m, seq=512)).summary["makespan_ns"]
    inter = replay(synth_train(DENSE, gpus=pp, pp=pp, vp=2, global_batch=m, seq=512)).summary["makespan_ns"]
    ideal = one / pp
    assert inter < base
    # Bubble: (pp − 1)/m of the ideal time for 1F1B, (pp − 1)/(vp·m) interleaved.
    assert base / ideal == pytest.approx(1 + (pp - 1) / m, rel=0.1)
    assert inter / ideal == pytest.approx(1 + (pp - 1) / (2 * m), rel=0.1)


def test_interleaved_bad_plans() -> None:
    with pytest.raises(PlanError, match=r"--vp 3: .* 8 layers do not divide into pp × vp = 2 × 3"):
        synth_train(DENSE, gpus=2, pp=2, vp=3, global_batch=4)
    with pytest.raises(PlanError, match=r"--vp 2: interleaved stages need pp ≥ 2"):
        synth_train(DENSE, gpus=1, vp=2, global_batch=4)
    with pytest.raises(PlanError, match=r"micro-batches per step \(3\) to be a multiple of pp = 2"):
        synth_train(DENSE, gpus=2, pp=2, vp=2, global_batch=3)
    with pytest.raises(PlanError, match="--schedule 1f1b"):
        synth_train(DENSE, gpus=2, pp=2, vp=2, global_batch=4, schedule="gpipe")


# --- sequence parallelism -----------------------------------------------------------------------


def test_sequence_parallel_moves_the_same_bytes_and_shards_norms() -> None:
    kw: dict[str, Any] = {"gpus": 4, "tp": 4, "global_batch": 1, "seq": 256}
    ar = ops_df(synth_train(DENSE, **kw))
    sp = ops_df(synth_train(DENSE, sp=True, **kw))
    layer_fwd = (pl.col("layer") == 3) & (pl.col("phase") == "fwd") & (pl.col("kind") == "collective")
    a = ar.filter(layer_fwd & (pl.col("rank") == 0))
    s = sp.filter(layer_fwd & (pl.col("rank") == 0))
    assert a["coll"].to_list() == ["all_reduce", "all_reduce"]
    assert s["coll"].to_list() == ["all_gather", "reduce_scatter", "all_gather", "reduce_scatter"]
    # Ring wire bytes: all-reduce 2(n−1)/n·B; reduce-scatter and all-gather (n−1)/n·B each.
    n = 4
    wire_ar = sum(2 * (n - 1) / n * b for b in a["comm_bytes"].to_list())
    wire_sp = sum((n - 1) / n * b for b in s["comm_bytes"].to_list())
    assert wire_sp == wire_ar
    # Norm and dropout regions work on T/tp tokens.
    for op in ("l3.norm1", "l3.bias_dropout_add1", "l3.norm2", "l3.bias_dropout_add2"):
        full = ar.filter((pl.col("name") == op) & (pl.col("rank") == 0))
        shard = sp.filter((pl.col("name") == op) & (pl.col("rank") == 0))
        assert shard["bytes_read"].item() * 4 == full["bytes_read"].item()
        assert shard["flops"].item() * 4 == full["flops"].item()
    # Stored activations: the 10·T·h replicated part is split over tp too.
    T, h = 256, 512
    is_act = pl.col("class") == "activation"
    act = tensors_df(synth_train(DENSE, **kw)).filter(is_act)["bytes"].max()
    act_sp = tensors_df(synth_train(DENSE, sp=True, **kw)).filter(is_act)["bytes"].max()
    assert act - act_sp == 10 * T * h - 10 * T * h // 4  # type: ignore[operator]


def test_sequence_parallel_replays_and_pipeline_messages_shrink() -> None:
    kw: dict[str, Any] = {"gpus": 8, "tp": 2, "pp": 2, "global_batch": 4, "seq": 256}
    base, sp = synth_train(DENSE, **kw), synth_train(DENSE, sp=True, **kw)
    sp.validate()
    msg = ops_df(base).filter(pl.col("kind") == "send")["comm_bytes"].unique().to_list()
    msg_sp = ops_df(sp).filter(pl.col("kind") == "send")["comm_bytes"].unique().to_list()
    assert msg == [2 * msg_sp[0]]
    assert replay(sp).summary["makespan_ns"] > 0
    with pytest.raises(PlanError, match="--sp: sequence parallelism needs tp ≥ 2"):
        synth_train(DENSE, gpus=1, sp=True, global_batch=1)
    with pytest.raises(PlanError, match="--sp: sequence length 100 is not divisible by tp = 8"):
        synth_train(DENSE, gpus=8, tp=8, sp=True, global_batch=1, seq=100)


# --- ZeRO --------------------------------------------------------------------------------------


def _resident(trace: tracesim.Trace, rank: int = 0) -> dict[str, int]:
    t = tensors_df(trace).filter((pl.col("rank") == rank) & pl.col("alloc_op").is_null())
    return dict(t.group_by("class").agg(pl.col("bytes").sum()).iter_rows())


def _peak_class_bytes(trace: tracesim.Trace, result: tracesim.Result, cls: str, rank: int = 0) -> int:
    """Peak live bytes of one tensor class on `rank` in the replay (alloc at the alloc op's start,
    free at the free op's end)."""
    tl = result.timeline.filter(pl.col("rank") == rank).select("op_id", "start_ns", "end_ns")
    t = tensors_df(trace).filter((pl.col("rank") == rank) & (pl.col("class") == cls))
    t = t.join(tl.rename({"op_id": "alloc_op", "start_ns": "a"}).drop("end_ns"), on="alloc_op", how="left")
    t = t.join(tl.rename({"op_id": "free_op", "end_ns": "f"}).drop("start_ns"), on="free_op", how="left")
    events = sorted(
        [(a if a is not None else -1, 1, b) for a, b in zip(t["a"], t["bytes"], strict=True)]
        + [(f, 0, -b) for f, b in zip(t["f"], t["bytes"], strict=True) if f is not None]
    )
    live = peak = 0
    for _, _, b in events:
        live += b
        peak = max(peak, live)
    return peak


def test_zero_stages_shard_state_and_change_collectives() -> None:
    dp, m = 4, 2
    kw: dict[str, Any] = {"gpus": dp, "global_batch": dp * m, "seq": 128}
    traces = {z: synth_train(DENSE, zero=z, **kw) for z in (0, 1, 2, 3)}
    P = DENSE.params  # tp 1, pp 1: every rank holds the whole model
    res = {z: _resident(t) for z, t in traces.items()}
    assert res[0] == {"weight": 2 * P, "gradient": 2 * P, "optimizer_state": 12 * P}
    for z, shards in ((1, ("optimizer_state",)), (2, ("optimizer_state", "gradient")), (3, ("all",))):
        for cls, full in (("weight", 2 * P), ("gradient", 2 * P), ("optimizer_state", 12 * P)):
            sharded = cls in shards or shards == ("all",)
            assert res[z][cls] == pytest.approx(full / dp if sharded else full, rel=1e-3), (z, cls)
    rank0_coll = (pl.col("kind") == "collective") & (pl.col("rank") == 0)
    coll = {z: ops_df(t).filter(rank0_coll) for z, t in traces.items()}
    buckets = DENSE.layers + 2  # layers, embedding, output (tied at pp 1: only the final norm)
    counts = {z: dict(c.group_by("coll").len().iter_rows()) for z, c in coll.items()}
    assert counts[0] == {"all_reduce": buckets}
    assert counts[1] == {"all_reduce": buckets, "all_gather": buckets}
    assert counts[2] == {"reduce_scatter": m * buckets, "all_gather": buckets}
    # ZeRO-3: every micro-batch gathers each bucket before its forward and before its backward.
    assert counts[3] == {"reduce_scatter": m * buckets, "all_gather": 2 * m * buckets}
    opt = {z: ops_df(t).filter(pl.col("phase") == "optim")["flops"].max() for z, t in traces.items()}
    assert opt[1] == pytest.approx(opt[0] / dp, rel=1e-3)  # type: ignore[operator]
    for t in traces.values():
        t.validate()


def test_zero3_peak_weight_memory_is_shard_plus_gathered_layer() -> None:
    dp = 4
    tr = synth_train(DENSE, gpus=dp, zero=3, global_batch=dp * 2, seq=128)
    result = replay(tr)
    P, layer = DENSE.params, DENSE.params_per_layer
    peak = _peak_class_bytes(tr, result, "weight")
    shard = _resident(tr)["weight"]
    assert shard == pytest.approx(2 * P / dp, rel=1e-3)
    # One layer gathered, at most one more prefetched (the gather runs one op ahead).
    assert shard + 2 * layer <= peak <= shard + 2 * 2 * layer + 2 * DENSE.embedding_params
    zero0 = synth_train(DENSE, gpus=dp, global_batch=dp * 2, seq=128)
    assert _peak_class_bytes(zero0, replay(zero0), "weight") == 2 * P
    total = sum(result.summary["ranks"][0]["peak_memory_bytes"].values())
    total0 = sum(replay(zero0).summary["ranks"][0]["peak_memory_bytes"].values())
    assert total < total0 - 12 * P * (dp - 1) / dp


def test_zero_bad_stage() -> None:
    with pytest.raises(PlanError, match="--zero: expected 0, 1, 2 or 3, got 4"):
        synth_train(DENSE, gpus=2, zero=4, global_batch=2)


# --- mixture of experts ------------------------------------------------------------------------


def test_moe_expert_flops_all_to_all_and_groups() -> None:
    dp, ep, seq, b = 4, 2, 128, 2
    tr = synth_train(MOE, gpus=dp, ep=ep, global_batch=dp * b, micro_batch=b, seq=seq)
    df = ops_df(tr)
    tokens = dp * b * seq
    # Expert GEMMs in the forward: tokens · top_k · 2 · expert parameters, over all ranks.
    fwd_expert = df.filter(pl.col("name").str.contains(r"\.expert_fc") & (pl.col("phase") == "fwd"))
    assert fwd_expert["flops"].sum() == pytest.approx(tokens * MOE.top_k * 2 * MOE.expert_params * MOE.layers)
    # Each rank's grouped GEMM holds T·top_k routed tokens (capacity factor 1).
    assert set(fwd_expert["gemm_m"].to_list()) == {b * seq * MOE.top_k}
    # All GEMM + attention FLOPs match the closed form over active parameters (tp 1: nothing replicated).
    exact = df.filter(pl.col("category").is_in(["gemm", "attention"]))["flops"].sum()
    assert exact == pytest.approx(analytic_flops(MOE, tokens, seq), rel=1e-9)
    # Dispatch + combine all-to-all forward and backward, per layer and micro-batch, T·top_k·h·2 bytes.
    a2a = df.filter((pl.col("coll") == "all_to_all") & (pl.col("rank") == 0))
    assert a2a.height == 4 * MOE.layers
    assert set(a2a["comm_bytes"].to_list()) == {b * seq * MOE.top_k * MOE.hidden * 2}
    groups = {g["name"]: g["ranks"] for g in tr.groups.to_pylist()}  # type: ignore[union-attr]
    assert groups["ep0_0"] == [0, 1] and groups["ep1_0"] == [2, 3]
    assert groups["edp0_0"] == [0, 2] and groups["edp1_0"] == [1, 3]
    # Expert weights: experts/ep experts per rank; their gradients are reduced over the edp group.
    w = tensors_df(tr).filter((pl.col("rank") == 0) & (pl.col("class") == "weight"))["bytes"].sum()
    per_rank = MOE.params - MOE.layers * (MOE.experts - MOE.experts // ep) * MOE.expert_params
    assert w == 2 * per_rank
    red = df.filter(pl.col("name").str.starts_with("dp_all_reduce_grad.l0") & (pl.col("rank") == 0))
    gid = dict(zip(red["name"].to_list(), red["group_id"].to_list(), strict=True))
    names = {g["group_id"]: g["name"] for g in tr.groups.to_pylist()}  # type: ignore[union-attr]
    assert names[gid["dp_all_reduce_grad.l0"]] == "dp0"
    assert names[gid["dp_all_reduce_grad.l0.experts"]] == "edp0_0"
    assert replay(tr).summary["makespan_ns"] > 0


def test_moe_zoo_param_counts_and_bad_plans() -> None:
    # Published totals: Mixtral 8x7B 46.7 B (12.9 B active), 8x22B 141 B (39 B active).
    for name, total, active in (("mixtral-8x7b", 46.7, 12.9), ("mixtral-8x22b", 141, 39)):
        spec = load_model(name)
        assert spec.params / 1e9 == pytest.approx(total, rel=0.01)
        act = spec.layers * spec.active_gemm_params_per_layer + 2 * spec.embedding_params
        assert act / 1e9 == pytest.approx(active, rel=0.02)
    with pytest.raises(PlanError, match="--ep 3 does not divide the 8 experts"):
        synth_train(MOE, gpus=3, ep=3, global_batch=3)
    with pytest.raises(PlanError, match=r"--ep 4 does not divide dp = 2 \(expert parallelism lives inside"):
        synth_train(MOE, gpus=2, ep=4, global_batch=2)
    with pytest.raises(PlanError, match=r"--ep 2: model gpt3-1\.7b has no experts"):
        synth_train(DENSE, gpus=2, ep=2, global_batch=2)


# --- selective recompute, block granularity, combinations ----------------------------------------


def test_selective_recompute_reruns_attention_core_only() -> None:
    kw: dict[str, Any] = {"gpus": 1, "global_batch": 2, "seq": 256, "attention": "unfused"}
    none, sel = synth_train(DENSE, **kw), synth_train(DENSE, recompute="selective", **kw)
    df = ops_df(sel)
    re = df.filter(pl.col("name").str.starts_with("recompute."))
    assert set(n.split(".", 2)[2] for n in re["name"].to_list()) == {
        "attn_scores", "attn_softmax", "attn_dropout", "attn_context"
    }  # fmt: skip
    exact = df.filter(pl.col("category").is_in(["gemm", "attention"]))["flops"].sum()
    assert exact == pytest.approx(analytic_flops(DENSE, 2 * 256, 256, "selective"), rel=1e-9)
    # No s² terms stored: 5·a·s²·b/tp bytes less per layer and micro-batch.
    a0 = tensors_df(none).filter(pl.col("class") == "activation")["bytes"].max()
    a1 = tensors_df(sel).filter(pl.col("class") == "activation")["bytes"].max()
    assert a0 - a1 == 5 * DENSE.heads * 256 * 256  # type: ignore[operator]


def test_block_granularity_keeps_flops_bytes_and_step_time() -> None:
    # Big enough that launch overheads (lost for merged ops) do not dominate the step.
    model = load_model("gpt3-1.7b", layers=4, hidden=4096, heads=32, vocab=51200)
    kw: dict[str, Any] = {"gpus": 8, "tp": 2, "pp": 2, "global_batch": 8, "seq": 2048, "recompute": "full"}
    kw["attention"] = "unfused"
    op, blk = synth_train(model, **kw), synth_train(model, granularity="block", **kw)
    blk.validate()
    a, b = ops_df(op), ops_df(blk)
    assert b.height < a.height / 2
    for c in ("flops", "bytes_read", "bytes_written", "comm_bytes"):
        assert b[c].sum() == a[c].sum()
    assert b.filter(pl.col("kind") != "compute").height == a.filter(pl.col("kind") != "compute").height
    t_op, t_blk = replay(op).summary["makespan_ns"], replay(blk).summary["makespan_ns"]
    assert t_blk == pytest.approx(t_op, rel=0.06)


@pytest.mark.parametrize(
    "kw",
    [
        {"vp": 2, "sp": True, "zero": 1, "recompute": "full"},
        {"vp": 2, "zero": 3, "granularity": "block", "attention": "unfused"},
        {"sp": True, "zero": 2, "recompute": "selective", "dtype": "fp8"},
        {"model": MOE, "ep": 2, "vp": 2, "sp": True, "zero": 3, "recompute": "full"},
        {"model": MOE, "ep": 4, "zero": 2, "granularity": "block"},
        {"model": MOE, "zero": 1},  # ep 1: expert gradients reduced over the dp group
    ],
)
def test_combinations_validate_and_replay(kw: dict[str, Any]) -> None:
    model = kw.pop("model", DENSE)
    gpus = 16 if model is MOE else 8  # tp 2, pp 2, dp 4 / dp 2
    tr = synth_train(model, gpus=gpus, tp=2, pp=2, global_batch=8, seq=128, **kw)
    tr.validate()
    res = replay(tr)
    assert res.summary["ops"] == tr.num_ops and res.summary["makespan_ns"] > 0


def test_cli_parallel_options(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRACESIM_DEBUG"}
    env.update({"NO_COLOR": "1", "COLUMNS": "200"})
    args = [
        "synth", "train", "--model", "mixtral-8x7b", "--layers", "4", "--hidden", "256", "--heads", "4",
        "--kv-heads", "2", "--ffn-hidden", "512", "--gpus", "16", "--tp", "2", "--pp", "2", "--vp", "2",
        "--ep", "2", "--sp", "--zero", "1", "--recompute", "selective", "--global-batch", "8", "--seq", "128",
    ]  # fmt: skip
    run = [sys.executable, "-c", "from tracesim.cli import main; main()"]
    proc = subprocess.run([*run, *args, "--out", str(tmp_path / "t")], capture_output=True, text=True,
                          env=env, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "(tp 2, pp 2, dp 4, vp 2, ep 2, zero 1, sp," in proc.stdout
    meta = tracesim.read_trace(tmp_path / "t").meta["synth"]
    assert [meta[k] for k in ("vp", "ep", "zero", "sp", "recompute")] == [2, 2, 1, True, "selective"]
    bad = subprocess.run([*run, *args, "--vp", "3", "--out", str(tmp_path / "u")], capture_output=True,
                         text=True, env=env, timeout=120, check=False)  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "tracesim: error: --vp 3: model mixtral-8x7b: 4 layers do not divide into pp × vp = 2 × 3 = 6 "
        "model chunks"
    ]
