"""`tracesim synth train` (tracesim.synth): op counts, groups, send/recv pairing, FLOPs against the
closed form, memory per rank, the pipeline bubble, replay without deadlock and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

import tracesim
from tracesim.synth import ModelConfigError, PlanError, analytic_flops, load_model, synth_train
from tracesim.synth.models import zoo_names
from tracesim.synth.train import schedule_order

TINY = load_model("gpt3-1.7b", layers=2, hidden=256, heads=4, vocab=1024)


def ops_df(trace: tracesim.Trace) -> pl.DataFrame:
    return pl.from_arrow(trace.ops)  # type: ignore[return-value]


def test_zoo_loads_and_overrides() -> None:
    names = zoo_names()
    for n in ("gpt3-1.7b", "gpt3-175b", "gpt3-1t", "llama2-70b", "llama3-405b", "mixtral-8x7b"):
        assert n in names
    for n in names:
        load_model(n)
    l70 = load_model("llama2-70b")
    assert (l70.n_kv_heads, l70.activation, l70.fc1_out) == (8, "swiglu", 2 * 28672)
    assert abs(l70.params / 1e9 - 69.0) < 0.5  # Llama-2-70B has 68.98 B parameters
    assert abs(load_model("llama3-8b").params / 1e9 - 8.03) < 0.05
    assert abs(load_model("gpt3-175b").params / 1e9 - 175) < 1.0
    assert load_model("gpt3-1.7b", layers=3, kv_heads=8).layers == 3
    with pytest.raises(ModelConfigError, match="heads"):
        load_model("gpt3-1.7b", heads=7)
    with pytest.raises(ModelConfigError, match="neither a zoo model"):
        load_model("no-such-model")


def test_bad_plans_are_rejected() -> None:
    with pytest.raises(PlanError, match="not a multiple of tp × pp"):
        synth_train(TINY, gpus=6, tp=4, pp=1, global_batch=4)
    with pytest.raises(PlanError, match="layers do not divide"):
        synth_train(TINY, gpus=3, pp=3, global_batch=3)
    with pytest.raises(PlanError, match="global-batch"):
        synth_train(TINY, gpus=4, tp=2, global_batch=3)
    with pytest.raises(PlanError, match="not divisible by tp"):
        synth_train(TINY, gpus=8, tp=8, global_batch=1)
    with pytest.raises(PlanError, match="--ep 3 does not divide the 8 experts"):
        synth_train("mixtral-8x7b", gpus=3, ep=3, global_batch=3)


def test_op_counts_by_kind_tiny_config() -> None:
    # 2 layers, tp 2, pp 2, dp 1, 2 micro-batches, no recompute, flash attention.
    # Per layer: fwd 10 compute + 2 TP all-reduces, bwd 14 compute + 2 all-reduces.
    # Stage 0 per micro-batch: F = embedding + its all-reduce + 1 layer, send; B = recv, layer, embedding_bwd.
    #   compute 2·(11 + 15) + optimizer = 53, collectives 2·(3 + 2) = 10, 2 sends, 2 recvs.
    # Stage 1: F = recv, layer, final_norm, logits, cross_entropy; B = ce_bwd, logits d/wgrad, all-reduce,
    #   final_norm_bwd, layer, send.  compute 2·(13 + 18) + 1 = 63, collectives 2·(2 + 3) = 10.
    tr = synth_train(TINY, gpus=4, tp=2, pp=2, micro_batch=1, global_batch=2, seq=64)
    df = ops_df(tr)
    per_rank = {r: Counter(df.filter(pl.col("rank") == r)["kind"].to_list()) for r in range(4)}
    for r in (0, 1):
        assert per_rank[r] == {"compute": 53, "collective": 10, "send": 2, "recv": 2}
    for r in (2, 3):
        assert per_rank[r] == {"compute": 63, "collective": 10, "send": 2, "recv": 2}
    assert df.height == 2 * 67 + 2 * 77
    # GEMMs carry their shape; recompute adds one forward (10 compute + 2 all-reduces) per layer and mb.
    gemms = df.filter(pl.col("category") == "gemm")
    assert gemms["gemm_m"].null_count() == 0 and (gemms["flops"] > 0).all()
    full = synth_train(TINY, gpus=4, tp=2, pp=2, global_batch=2, seq=64, recompute="full")
    assert Counter(ops_df(full).filter(pl.col("rank") == 0)["kind"].to_list()) == {
        "compute": 53 + 2 * 10, "collective": 10 + 2 * 2, "send": 2, "recv": 2,
    }  # fmt: skip


def test_collectives_per_group_and_rank_layout() -> None:
    # gpus 8, tp 2, pp 2 → dp 2. rank = dp·4 + pp·2 + tp.
    tr = synth_train(TINY, gpus=8, tp=2, pp=2, global_batch=4, seq=64)
    groups = {g["group_id"]: g for g in tr.groups.to_pylist()}  # type: ignore[union-attr]
    tp_groups = [g["ranks"] for g in groups.values() if g["name"].startswith("tp")]
    dp_groups = [g["ranks"] for g in groups.values() if g["name"].startswith("dp")]
    assert sorted(tp_groups) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert sorted(dp_groups) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    coll = ops_df(tr).filter(pl.col("kind") == "collective")
    for gid, g in groups.items():
        mine = coll.filter(pl.col("group_id") == gid)
        assert sorted(set(mine["rank"].to_list())) == g["ranks"]
        per_rank = mine.group_by("rank").agg(pl.col("coll_seq").sort())
        seqs = per_rank["coll_seq"].to_list()
        assert all(s == list(range(len(seqs[0]))) for s in seqs)
    # DP gradient buckets: one per layer + embedding (stage 0) / output layer (stage 1), on stream 1.
    dp = coll.filter(pl.col("name").str.starts_with("dp_all_reduce"))
    assert (dp["stream"] == 1).all()
    assert dp.group_by("rank").len()["len"].to_list() == [2] * 8


def test_send_recv_pairing_across_stages() -> None:
    tr = synth_train(TINY.model_copy(update={"layers": 4}), gpus=8, tp=2, pp=4, global_batch=3, seq=64)
    df = ops_df(tr)
    sends = df.filter(pl.col("kind") == "send").select("rank", "peer", "p2p_seq", "comm_bytes", "name")
    recvs = df.filter(pl.col("kind") == "recv").select("rank", "peer", "p2p_seq", "comm_bytes")
    assert sends.height == recvs.height == 2 * 3 * 3 * 2  # 3 boundaries × 3 mbs × 2 directions × tp 2
    joined = sends.join(
        recvs, left_on=["rank", "peer", "p2p_seq"], right_on=["peer", "rank", "p2p_seq"], how="inner"
    )
    assert joined.height == sends.height
    assert (joined["comm_bytes"] == joined["comm_bytes_right"]).all()
    # activations go to the next stage (tp ranks further), gradients back; same tp index.
    acts = sends.filter(pl.col("name").str.starts_with("send_act"))
    assert ((acts["peer"] - acts["rank"]) == 2).all()
    grads = sends.filter(pl.col("name").str.starts_with("send_grad"))
    assert ((grads["rank"] - grads["peer"]) == 2).all()


def test_flops_match_closed_form() -> None:
    model = load_model("gpt3-1.7b", layers=4, hidden=1024, heads=8, vocab=4096)
    seq, batch = 512, 8
    for recompute in ("none", "full"):
        tr = synth_train(model, gpus=2, tp=2, global_batch=batch, micro_batch=2, seq=seq, recompute=recompute)
        df = ops_df(tr)
        expected = analytic_flops(model, batch * seq, seq, recompute)
        exact = df.filter(pl.col("category").is_in(["gemm", "attention"]))["flops"].sum()
        assert exact == pytest.approx(expected, rel=1e-9)
        assert df["flops"].sum() == pytest.approx(expected, rel=0.01)
    # Megatron's closed form (SC21 eq. 3, with recompute): 96·B·s·l·h²·(1 + s/6h + V/16lh).
    L, h, V = 4, 1024, 4096
    megatron = 96 * batch * seq * L * h**2 * (1 + seq / (6 * h) + V / (16 * L * h))
    assert analytic_flops(model, batch * seq, seq, "full") == pytest.approx(megatron, rel=1e-9)


def test_peak_memory_contains_weights_grads_optimizer() -> None:
    tr = synth_train(TINY, gpus=1, global_batch=4, micro_batch=2, seq=128)
    tensors = pl.from_arrow(tr.tensors)
    by_class = dict(tensors.group_by("class").agg(pl.col("bytes").sum()).iter_rows())
    p = TINY.params
    assert by_class["weight"] == 2 * p
    assert by_class["gradient"] == 2 * p
    assert by_class["optimizer_state"] == 12 * p
    res = tracesim.simulate(tr, "dgx-a100", compute_model="roofline")
    peak = sum(res.summary["ranks"][0]["peak_memory_bytes"].values())
    assert peak >= 16 * p
    # Activations of one micro-batch (2 layers, no recompute) are held at the peak, at most two mbs'.
    acts = tensors.filter(pl.col("class") == "activation")["bytes"].sum()
    assert 16 * p + acts / 2 * 0.99 <= peak <= 16 * p + acts
    # tp 2: GEMM weights and the vocabulary-parallel embedding are split, norms and positions are not.
    tr2 = synth_train(TINY, gpus=2, tp=2, global_batch=1, seq=128)
    w2 = pl.from_arrow(tr2.tensors).filter((pl.col("class") == "weight") & (pl.col("rank") == 0))
    h, L, V = 256, 2, 1024
    layer = (12 * h * h) // 2 + 2 * (2 * h)  # QKV+proj+FC1+FC2 split, two LayerNorms (scale+bias)
    expected = L * layer + V * h // 2 + 2048 * h + 2 * h  # + embedding shard, positions, final norm
    assert w2["bytes"].sum() == 2 * expected


def test_schedule_order_1f1b() -> None:
    assert schedule_order("1f1b", 4, 0, 4) == [
        ("F", 0), ("F", 1), ("F", 2), ("F", 3), ("B", 0), ("B", 1), ("B", 2), ("B", 3)
    ]  # fmt: skip
    assert schedule_order("1f1b", 4, 3, 3) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]
    assert schedule_order("1f1b", 2, 0, 3) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)]


def test_pipeline_bubble_shows_up() -> None:
    model = load_model("gpt3-1.7b", layers=8, hidden=1024, heads=8, vocab=1024)
    m = 8
    one = tracesim.simulate(
        synth_train(model, gpus=1, global_batch=m, seq=512), "dgx-a100", compute_model="roofline"
    )
    four = tracesim.simulate(
        synth_train(model, gpus=4, pp=4, global_batch=m, seq=512), "dgx-a100", compute_model="roofline"
    )
    ideal = one.summary["makespan_ns"] / 4
    ratio = four.summary["makespan_ns"] / ideal
    bubble = (m + 4 - 1) / m  # 1F1B: (m + p − 1) / m
    assert ratio == pytest.approx(bubble, rel=0.1)
    gpipe = tracesim.simulate(
        synth_train(model, gpus=4, pp=4, global_batch=m, seq=512, schedule="gpipe"),
        "dgx-a100",
        compute_model="roofline",
    )
    assert gpipe.summary["makespan_ns"] == pytest.approx(four.summary["makespan_ns"], rel=0.1)


@pytest.mark.parametrize(
    ("schedule", "recompute", "attention"),
    [("1f1b", "full", "unfused"), ("gpipe", "none", "flash"), ("1f1b", "none", "flash")],
)
def test_validates_and_replays_without_deadlock(schedule: str, recompute: str, attention: str) -> None:
    tr = synth_train(
        TINY.model_copy(update={"layers": 4}),
        gpus=16,
        tp=2,
        pp=4,
        global_batch=8,
        seq=64,
        schedule=schedule,
        recompute=recompute,
        attention=attention,
        dtype="fp8",
    )
    tr.validate()
    res = tracesim.simulate(tr, "dgx-a100", compute_model="roofline")
    assert res.summary["makespan_ns"] > 0
    assert res.summary["ops"] == tr.num_ops


def test_cli_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "t"
    env = {k: v for k, v in os.environ.items() if k != "TRACESIM_DEBUG"}
    env.update({"NO_COLOR": "1", "COLUMNS": "200"})
    args = [
        "synth", "train", "--model", "gpt3-1.7b", "--layers", "4", "--hidden", "512", "--heads", "8",
        "--gpus", "8", "--tp", "2", "--pp", "2", "--global-batch", "8", "--micro-batch", "2",
        "--seq", "128", "--dtype", "bf16", "--recompute", "full", "--schedule", "1f1b", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", "from tracesim.cli import main; main()", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ops on 8 ranks" in proc.stdout
    tr = tracesim.read_trace(out)
    assert tr.ranks == 8 and tr.meta["synth"]["model"]["hidden"] == 512
    assert tr.meta["synth"]["microbatches"] == 2
    res = tracesim.simulate(tr, "dgx-a100", compute_model="roofline")
    assert res.summary["makespan_ns"] > 0
    bad = subprocess.run(
        [sys.executable, "-c", "from tracesim.cli import main; main()", *args[:-1], str(tmp_path / "u"),
         "--gpus", "6"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and "not a multiple of tp × pp" in bad.stderr
