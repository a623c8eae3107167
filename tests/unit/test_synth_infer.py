"""`tracesim synth infer` (tracesim.synth.infer): FLOPs of prefill and decode against closed forms,
KV-cache growth per token, TTFT/TPOT from the replay, continuous batching under a batch cap and
a KV budget and a prefill budget, arrivals honoured by the replay, pipeline stages, KV bytes and
tokens conserved over random request sets (hypothesis), bad request files and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracesim
from tests.cli import run_cli
from tracesim.synth import (
    PlanError,
    RequestTraceError,
    load_model,
    read_requests,
    serving_metrics,
    synth_infer,
)
from tracesim.synth.infer import Requests

# Llama-shaped (SwiGLU, RMSNorm, RoPE, untied, GQA 8 heads / 2 KV heads), small enough to replay fast.
TINY = load_model("llama2-7b", layers=2, hidden=256, heads=8, kv_heads=2, ffn_hidden=512, vocab=1000)
HEAD_DIM = 256 // 8
KV_PER_TOKEN = 2 * TINY.layers * 2 * HEAD_DIM * 2  # K and V · layers · kv_heads · head_dim · 2 bytes


def ops_df(trace: tracesim.Trace) -> pl.DataFrame:
    return pl.DataFrame(trace.ops)


def tensors_df(trace: tracesim.Trace) -> pl.DataFrame:
    assert trace.tensors is not None
    return pl.DataFrame(trace.tensors)


def write_csv(path: Path, rows: list[tuple[float, int, int]]) -> Path:
    path.write_text(
        "arrival_time_s,prompt_tokens,output_tokens\n" + "".join(f"{a},{p},{o}\n" for a, p, o in rows)
    )
    return path


def test_decode_and_prefill_flops_match_closed_form() -> None:
    B, P, G, tp = 4, 16, 3, 2
    tr = synth_infer(TINY, system="dgx-h100", tp=tp, batch=B, prompt=P, output=G, kv_block_tokens=1)
    df = ops_df(tr)
    V = tr.meta["synth"]["vocab_padded"]
    assert V == 1024  # padded to a multiple of 128 · tp
    h = TINY.hidden
    gemm_params = TINY.layers * TINY.gemm_params_per_layer + V * h  # layer GEMMs + output layer
    # Iteration 0 prefills all 4 requests; iterations 1 and 2 decode one token each.
    assert sorted(df["iteration"].drop_nulls().unique().to_list()) == [0, 1, 2]
    for it in (1, 2):
        step = df.filter((pl.col("iteration") == it) & (pl.col("phase") == "decode"))
        assert step.filter(pl.col("category") == "gemm")["flops"].sum() == 2.0 * gemm_params * B
        ctx = P + it  # tokens attended to by the one new token of each sequence
        assert (
            step.filter(pl.col("category") == "attention")["flops"].sum() == 4.0 * h * B * ctx * TINY.layers
        )
    pre = df.filter(pl.col("phase") == "prefill")
    layer_gemms = pre.filter((pl.col("category") == "gemm") & pl.col("layer").is_not_null())
    assert layer_gemms["flops"].sum() == 2.0 * TINY.layers * TINY.gemm_params_per_layer * B * P
    logits = pre.filter(pl.col("name") == "prefill.logits")  # only the last position of each prompt
    assert logits["flops"].sum() == 2.0 * V * h * B
    # causal: P(P+1)/2 query-key pairs per head and sequence, 4·head_dim FLOPs each
    attn = pre.filter(pl.col("category") == "attention")["flops"].sum()
    assert attn == 2.0 * h * B * P * (P + 1) * TINY.layers
    # TP: two all-reduces per layer + embedding all-reduce + logits all-gather, per pass and rank
    coll = df.filter(pl.col("kind") == "collective")
    passes = 3
    assert coll.height == tp * passes * (2 * TINY.layers + 2)
    assert set(coll["coll"].to_list()) == {"all_reduce", "all_gather"}


def test_kv_cache_grows_by_one_token_per_sequence_per_step() -> None:
    B, P, G, tp = 2, 5, 4, 2
    tr = synth_infer(TINY, system="dgx-h100", tp=tp, batch=B, prompt=P, output=G, kv_block_tokens=1)
    assert tr.meta["synth"]["kv_bytes_per_token"] == KV_PER_TOKEN
    ops = ops_df(tr).select("op_id", "iteration")
    kv = tensors_df(tr).filter(pl.col("class") == "kv_cache").join(ops, left_on="alloc_op", right_on="op_id")
    by_iter = dict(kv.group_by("iteration").agg(pl.col("bytes").sum()).iter_rows())
    # all ranks together: the prompt at prefill, then one token per sequence per decode step;
    # the last output token's K/V is never written.
    assert by_iter == {0: B * P * KV_PER_TOKEN, 1: B * KV_PER_TOKEN, 2: B * KV_PER_TOKEN, 3: B * KV_PER_TOKEN}
    assert kv["free_op"].null_count() == 0
    res = tracesim.simulate(tr, "dgx-h100", compute_model="roofline")
    tensors = tensors_df(tr).filter(pl.col("rank") == 0)
    weights = tensors.filter(pl.col("class") == "weight")["bytes"].sum()
    peak = res.summary["ranks"][0]["peak_memory_bytes"]["hbm"]
    assert peak == weights + B * (P + G - 1) * KV_PER_TOKEN // tp
    # memory over time on rank 0: after the last step everything but the weights is freed
    assert res.memory is not None
    mem = res.memory.filter(pl.col("rank") == 0).sort("time_ns")
    assert mem["used_bytes"].to_list()[-1] == weights
    # paged: with 16-token blocks each sequence holds one block for its 8 tokens
    paged = synth_infer(TINY, system="dgx-h100", tp=tp, batch=B, prompt=P, output=G, kv_block_tokens=16)
    kvp = tensors_df(paged).filter(pl.col("class") == "kv_cache")
    assert kvp["bytes"].sum() == B * 16 * KV_PER_TOKEN


def test_ttft_tpot_from_replay_of_a_single_request() -> None:
    tr = synth_infer(TINY, system="dgx-h100", tp=2, batch=1, prompt=64, output=5)
    res = tracesim.simulate(tr, "dgx-h100", compute_model="roofline")
    steps = [it["step_ns"] for it in res.summary["iterations"]]
    assert len(steps) == 5  # one prefill, four decode steps
    s = res.summary["serving"]
    assert s == serving_metrics(res, tr)
    assert s["ttft_ms"]["p50"] == pytest.approx(steps[0] / 1e6)  # arrival at 0: TTFT = prefill time
    assert s["tpot_ms"]["p50"] == pytest.approx(sum(steps[1:]) / 4 / 1e6)
    assert s["e2e_ms"]["p90"] == pytest.approx(res.makespan_ns / 1e6)
    assert s["tokens_per_s"] == pytest.approx(5 / (res.makespan_ns / 1e9), rel=1e-4)
    assert res.summary["warnings"] == []
    # The scheduler's estimates are the replay's times here (same models, nothing overlaps).
    est = tr.meta["synth"]["estimated_iteration_ns"]
    assert est == pytest.approx(steps, rel=1e-6)
    # A decode step is memory-bound: slower per token than the prefill per token, faster per step.
    assert steps[1] < steps[0]


def test_continuous_batching_with_a_batch_cap(tmp_path: Path) -> None:
    # a, b, c arrive together with max_batch 2; d arrives long after everyone is done.
    csv = write_csv(tmp_path / "r.csv", [(0, 8, 2), (0, 16, 4), (0, 24, 2), (1.0, 32, 2)])
    tr = synth_infer(TINY, system="dgx-h100", requests=csv, max_batch=2, kv_block_tokens=1)
    df = ops_df(tr)
    embed = df.filter(pl.col("name").str.ends_with(".embedding")).sort("op_id")
    # iter 0: prefill a+b; 1: decode a,b (a done); 2: prefill c + decode b; 3: decode b,c (both done);
    # 4: prefill d; 5: decode d.
    assert embed.select("iteration", "phase", "bytes_read").rows() == [
        (0, "prefill", (8 + 16) * (256 * 2 + 8)),
        (1, "decode", 2 * (256 * 2 + 8)),
        (2, "prefill", 24 * (256 * 2 + 8)),
        (2, "decode", 1 * (256 * 2 + 8)),
        (3, "decode", 2 * (256 * 2 + 8)),
        (4, "prefill", 32 * (256 * 2 + 8)),
        (5, "decode", 1 * (256 * 2 + 8)),
    ]
    res = tracesim.simulate(tr, "dgx-h100", compute_model="roofline")
    tl = res.timeline.join(df.select("op_id", "iteration", "name"), on="op_id")
    it4 = tl.filter(pl.col("iteration") == 4)
    assert it4["start_ns"].min() == 1_000_000_000  # d's prefill waits for its arrival
    s = res.summary["serving"]
    assert s["requests"] == 4 and s["output_tokens"] == 10
    meta = tr.meta["serving"]
    ends = dict(zip(res.timeline["op_id"].to_list(), res.timeline["end_ns"].to_list(), strict=True))
    d_ttft = ends[meta["first_token_op"][3]] - 1_000_000_000
    step4 = next(it["step_ns"] for it in res.summary["iterations"] if it["iteration"] == 4)
    assert d_ttft == step4
    # c waited for a to finish: its first token comes at the end of iteration 2's prefill
    c_first = meta["first_token_op"][2]
    assert df.filter(pl.col("op_id") == c_first)["iteration"].item() == 2


def test_kv_budget_serialises_requests() -> None:
    # Each request needs 10 + 3 - 1 = 12 tokens of KV; a budget of 20 fits one at a time.
    tr = synth_infer(
        TINY, system="dgx-h100", requests=read_requests_rows([(0, 10, 3), (0, 10, 3)]), max_kv_tokens=20,
        kv_block_tokens=1,
    )  # fmt: skip
    df = ops_df(tr)
    pre = df.filter(pl.col("name") == "prefill.embedding")["iteration"].to_list()
    assert pre == [0, 3]  # the second request is admitted once the first has finished (3 iterations)
    with pytest.raises(PlanError, match="needs 12 tokens of KV cache, but only 11 fit"):
        synth_infer(TINY, requests=read_requests_rows([(0, 10, 3)]), max_kv_tokens=11, kv_block_tokens=1)


def read_requests_rows(rows: list[tuple[float, int, int]]) -> Requests:
    return Requests(
        np.array([round(a * 1e9) for a, _, _ in rows], np.int64),
        np.array([p for _, p, _ in rows], np.int64),
        np.array([o for _, _, o in rows], np.int64),
        np.arange(len(rows), dtype=np.int64) + 2,
    )


def test_pipeline_stages_pair_and_replay() -> None:
    model = TINY.model_copy(update={"layers": 4})
    tr = synth_infer(model, system="dgx-h100", tp=2, pp=2, batch=3, prompt=16, output=3)
    df = ops_df(tr)
    sends = df.filter(pl.col("kind") == "send").select("rank", "peer", "p2p_seq", "comm_bytes", "name")
    recvs = df.filter(pl.col("kind") == "recv").select("rank", "peer", "p2p_seq", "comm_bytes")
    joined = sends.join(recvs, left_on=["rank", "peer", "p2p_seq"], right_on=["peer", "rank", "p2p_seq"])
    assert joined.height == sends.height == recvs.height
    assert (joined["comm_bytes"] == joined["comm_bytes_right"]).all()
    acts = sends.filter(pl.col("name").str.ends_with("send_act"))
    assert ((acts["peer"] - acts["rank"]) == 2).all() and acts.height == 2 * 3  # 3 passes × tp 2
    tokens = sends.filter(pl.col("name") == "send_tokens")
    assert ((tokens["rank"] - tokens["peer"]) == 2).all() and tokens.height == 2 * 2  # iterations 1, 2
    layers = df.group_by("rank").agg(pl.col("layer").drop_nulls().unique().sort())
    assert dict(layers.iter_rows()) == {0: [0, 1], 1: [0, 1], 2: [2, 3], 3: [2, 3]}
    res = tracesim.simulate(tr, "dgx-h100", compute_model="roofline")
    assert res.summary["serving"]["tpot_ms"]["p50"] > 0


def test_bad_request_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    missing.write_text("arrival_time_s,prompt_tokens\n0,5\n")
    with pytest.raises(RequestTraceError, match=r"missing\.csv: column 'output_tokens': missing"):
        read_requests(missing)
    no_arrival = tmp_path / "no_arrival.csv"
    no_arrival.write_text("t,prompt_tokens,output_tokens\n0,5,5\n")
    with pytest.raises(RequestTraceError, match=r"column 'arrival_time_s' \(or 'arrival_ns'\): missing"):
        read_requests(no_arrival)
    neg = write_csv(tmp_path / "neg.csv", [(0, 5, 5), (0.1, -3, 5)])
    with pytest.raises(
        RequestTraceError, match=r"neg\.csv: column 'prompt_tokens', line 3: .* at least 1; got '-3'"
    ):
        read_requests(neg)
    zero = write_csv(tmp_path / "zero.csv", [(0, 5, 0)])
    with pytest.raises(RequestTraceError, match=r"column 'output_tokens', line 2"):
        read_requests(zero)
    text = tmp_path / "text.csv"
    text.write_text("arrival_ns,prompt_tokens,output_tokens\n0,5,5\nsoon,5,5\n")
    with pytest.raises(RequestTraceError, match=r"column 'arrival_ns', line 3: expected an integer"):
        read_requests(text)
    late = tmp_path / "late.csv"
    late.write_text("arrival_time_s,prompt_tokens,output_tokens\n-1.5,5,5\n")
    with pytest.raises(
        RequestTraceError, match=r"column 'arrival_time_s', line 2: expected a number, non-negative"
    ):
        read_requests(late)
    with pytest.raises(RequestTraceError, match="no such file"):
        read_requests(tmp_path / "nope.csv")
    # arrival_ns works and rows are sorted by arrival
    ok = tmp_path / "ok.csv"
    ok.write_text("arrival_ns,prompt_tokens,output_tokens,user\n500,7,2,x\n100,3,4,y\n")
    r = read_requests(ok)
    assert r.arrival_ns.tolist() == [100, 500] and r.prompt.tolist() == [3, 7] and r.line.tolist() == [3, 2]
    with pytest.raises(PlanError, match="either --batch"):
        synth_infer(TINY, batch=2, prompt=5)
    with pytest.raises(PlanError, match="cannot be combined"):
        synth_infer(TINY, batch=2, prompt=5, output=2, requests=ok)
    with pytest.raises(PlanError, match="--prompt: must be at least 1"):
        synth_infer(TINY, batch=2, prompt=0, output=2)
    with pytest.raises(PlanError, match="not divisible by tp"):
        synth_infer(TINY, tp=16, batch=1, prompt=4, output=2)
    with pytest.raises(PlanError, match="leaves no room for a KV cache"):
        synth_infer("llama2-70b", system="dgx-h100", tp=1, batch=1, prompt=4, output=2)
    big = write_csv(tmp_path / "big.csv", [(0, 5, 5), (0, 500, 5)])
    with pytest.raises(PlanError, match=r"big\.csv, line 3: a request of 500 \+ 5 tokens"):
        synth_infer(TINY, requests=big, max_kv_tokens=100)


def test_cli_infer_then_simulate(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "reqs.csv", [(0, 32, 4), (0.001, 16, 3), (0.002, 48, 1)])
    out = tmp_path / "trace"
    proc = run_cli(
        "synth", "infer", "--model", "llama2-7b", "--layers", "2", "--hidden", "256", "--heads", "8",
        "--kv-heads", "2", "--ffn-hidden", "512", "--vocab", "1000", "--system", "dgx-h100", "--tp", "2",
        "--requests", csv, "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "3 requests" in proc.stdout and "ops on 2 ranks" in proc.stdout
    result = tmp_path / "result"
    sim = run_cli("simulate", out, "--system", "dgx-h100", "--compute-model", "roofline", "--out", result)
    assert sim.returncode == 0, sim.stderr
    summary = json.loads((result / "summary.json").read_text())
    serving = summary["serving"]
    assert serving["requests"] == 3 and serving["output_tokens"] == 8
    assert 0 < serving["ttft_ms"]["p50"] <= serving["e2e_ms"]["p50"]
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_time_s,prompt,output_tokens\n0,5,5\n")
    proc = run_cli(
        "synth", "infer", "--model", "llama2-7b", "--tp", "8", "--requests", bad, "--out", tmp_path / "x"
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "bad.csv: column 'prompt_tokens': missing" in proc.stderr


def test_serving_bookkeeping_that_does_not_match_the_timeline() -> None:
    tr = synth_infer(TINY, system="dgx-h100", batch=1, prompt=8, output=2)
    tr.meta["serving"]["first_token_op"] = [10**9]
    res = tracesim.simulate(tr, "dgx-h100", compute_model="roofline")
    assert "serving" not in res.summary
    assert any(
        "op_id 1000000000 is not in the timeline; no serving metrics" in w for w in res.summary["warnings"]
    )
    del tr.meta["serving"]
    with pytest.raises(tracesim.TraceError, match="field 'serving': missing"):
        serving_metrics(res, tr)
    assert "serving" not in tracesim.simulate(tr, "dgx-h100", compute_model="roofline").summary


def test_prefill_token_budget_admits_a_long_prompt_alone() -> None:
    reqs = read_requests_rows([(0, 15, 2), (0, 15, 2), (0, 30, 2)])
    tr = synth_infer(TINY, requests=reqs, max_prefill_tokens=20, kv_block_tokens=1)
    pre = ops_df(tr).filter(pl.col("name") == "prefill.embedding").sort("op_id")
    # 15 + 15 > 20: one prompt per iteration; the 30-token prompt exceeds the budget but runs alone
    assert pre.select("iteration", "bytes_read").rows() == [
        (0, 15 * (256 * 2 + 8)),
        (1, 15 * (256 * 2 + 8)),
        (2, 30 * (256 * 2 + 8)),
    ]


@settings(max_examples=15, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 3_000_000), st.integers(1, 40), st.integers(1, 6)), min_size=1, max_size=8
    ),
    max_batch=st.integers(1, 4),
    block=st.integers(1, 8),
)
def test_kv_and_tokens_are_conserved(rows: list[tuple[int, int, int]], max_batch: int, block: int) -> None:
    reqs = read_requests_rows([(a / 1e9, p, o) for a, p, o in rows])
    tr = synth_infer(TINY, requests=reqs, max_batch=max_batch, kv_block_tokens=block, max_kv_tokens=200)
    df = ops_df(tr)
    kv = tensors_df(tr).filter(pl.col("class") == "kv_cache")
    need = sum(-(-(p + o - 1) // block) * block for _, p, o in rows)  # blocks of every request
    assert kv["bytes"].sum() == need * KV_PER_TOKEN
    assert kv["free_op"].null_count() == 0
    # one sampled token per request per pass it takes part in: output tokens in all
    decode_seqs = int(df.filter(pl.col("name") == "decode.logits")["gemm_m"].sum())
    prefill_seqs = int(df.filter(pl.col("name") == "prefill.logits")["gemm_m"].sum())
    assert prefill_seqs == len(rows) and prefill_seqs + decode_seqs == sum(o for _, _, o in rows)
    logits = df.filter(pl.col("name").str.ends_with(".logits"))
    per_iteration = logits.group_by("iteration").agg(pl.col("gemm_m").sum())["gemm_m"].to_list()
    assert max(per_iteration) <= max_batch  # sequences prefilled plus sequences decoding
    res = tracesim.simulate(tr, "dgx-h100", compute_model="roofline")
    meta = tr.meta["serving"]
    ends = dict(zip(res.timeline["op_id"].to_list(), res.timeline["end_ns"].to_list(), strict=True))
    for a_op, f_op, l_op, arrival in zip(
        meta["arrival_op"], meta["first_token_op"], meta["last_token_op"], meta["arrival_ns"], strict=True
    ):
        assert ends[a_op] == arrival <= ends[f_op] <= ends[l_op]
