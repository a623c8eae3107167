"""`tracesim synth infer` figures (docs/synth.md, "synth infer"):

    python benches/synth_infer.py [--requests 200] [--rate 4.0] [--skip-trace]

1. Llama-2-70B, TP 8 on dgx-h100 (roofline): a static batch of 32 × 2048 prompt → 256 output
   tokens, and a Poisson request trace (seeded; prompts uniform in 64..2047, outputs in
   16..511); prints the trace size, synthesis and replay speed, decode step time, TTFT, TPOT
   and tokens/s.
2. Per-layer time of the ops that are not attention or communication (norms, QKV, projection,
   FC1, SwiGLU, FC2, residual adds) of Llama-2-70B at TP 8 on dgx-h100, as `synth infer` emits
   them (fp16), against vidur's measured H100 profile of the same operators
   (../shared/data/vidur/.../h100/meta-llama/Llama-2-70b-hf/mlp.csv, medians; the compute model
   was fitted on the 7B profile, so 70B is held out). vidur's `attn_rope` is not emitted by
   synth infer and is listed apart; attention and all-reduces are not in that profile.
3. One measured decode step: SGLang, Qwen3-8B, batch 32 at ~1,025 tokens of context, one AMD
   MI300X, CUDA-graph replay (../shared/data/tracelens/.../sglang_Qwen3-8B_decode.json.gz),
   kernel time per group against the same step synthesised with `synth infer` and replayed on
   the mi300x device preset, which is not calibrated (plain roofline, no launch overhead).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

import tracesim
from tracesim.simulate import op_times
from tracesim.synth import ModelSpec, synth_infer

DATA = Path(__file__).resolve().parents[2] / "shared/data"
SGLANG = DATA / "tracelens/tests/traces/inference/sglang_decode/sglang_Qwen3-8B_decode.json.gz"
VIDUR = (
    Path(__file__).resolve().parents[2]
    / "shared/data/vidur/data/profiling/compute/h100/meta-llama/Llama-2-70b-hf/mlp.csv"
)
# synth infer op (suffix of the name) → vidur operator, and how many times it runs per layer
OP_MAP = {
    "norm1": "input_layernorm",
    "qkv": "attn_pre_proj",
    "proj": "attn_post_proj",
    "norm2": "post_attention_layernorm",
    "fc1": "mlp_up_proj",
    "swiglu": "mlp_act",
    "fc2": "mlp_down_proj",
    "residual_add1": "add",
    "residual_add2": "add",
}


def serving_run(label: str, **kw: object) -> None:
    t0 = time.perf_counter()
    tr = synth_infer("llama2-70b", system="dgx-h100", tp=8, validate=False, **kw)  # type: ignore[arg-type]
    built = time.perf_counter() - t0
    t1 = time.perf_counter()
    tr.validate()
    validated = time.perf_counter() - t1
    t2 = time.perf_counter()
    res = tracesim.simulate(tr, "dgx-h100", compute_model="roofline")
    replayed = time.perf_counter() - t2
    s = res.summary["serving"]
    steps = res.summary["iterations"]
    decode_only = [it["step_ns"] / 1e6 for it in steps][-3:]
    print(f"\n{label}")
    print(
        f"  {tr.num_ops:,} ops, {tr.meta['synth']['iterations']:,} iterations; synthesis {built:.2f} s "
        f"({tr.num_ops / built / 1e6:.2f} M ops/s), validation {validated:.2f} s, replay {replayed:.2f} s"
    )
    print(f"  last decode steps (ms): {', '.join(f'{x:.2f}' for x in decode_only)}")
    print(
        f"  TTFT ms p50 {s['ttft_ms']['p50']:.1f} p90 {s['ttft_ms']['p90']:.1f}; "
        f"TPOT ms p50 {s['tpot_ms']['p50']:.2f} p90 {s['tpot_ms']['p90']:.2f}; "
        f"{s['tokens_per_s']:.0f} output tokens/s; peak HBM rank 0 "
        f"{res.summary['ranks'][0]['peak_memory_bytes']['hbm'] / 2**30:.1f} GiB"
    )


def vidur_rows() -> dict[int, dict[str, float]]:
    """Median ms per operator at TP 8, by num_tokens (the mean where a token count repeats)."""
    rows: dict[int, list[dict[str, float]]] = {}
    with VIDUR.open() as f:
        for row in csv.DictReader(f):
            if row["num_tensor_parallel_workers"] != "8":
                continue
            ops = {v: float(row[f"time_stats.{v}.median"]) for v in set(OP_MAP.values()) | {"attn_rope"}}
            rows.setdefault(int(row["num_tokens"]), []).append(ops)
    return {k: {op: float(np.mean([r[op] for r in v])) for op in v[0]} for k, v in rows.items()}


def layer_ms(tokens: int, decode: bool) -> float:
    """Predicted ms of layer 0's non-attention compute ops on rank 0 for a pass of `tokens`."""
    if decode:
        tr = synth_infer(
            "llama2-70b", system="dgx-h100", tp=8, batch=tokens, prompt=16, output=2, dtype="fp16"
        )
        phase = "decode"
    else:
        tr = synth_infer(
            "llama2-70b", system="dgx-h100", tp=8, batch=1, prompt=tokens, output=1, dtype="fp16"
        )
        phase = "prefill"
    ops = pl.DataFrame(tr.ops).with_columns(
        pl.Series("t_ns", op_times(tr, "dgx-h100").to_numpy(zero_copy_only=False))
    )
    sel = ops.filter((pl.col("rank") == 0) & (pl.col("layer") == 0) & (pl.col("phase") == phase))
    total = 0.0
    for suffix in OP_MAP:
        total += float(sel.filter(pl.col("name") == f"{phase}.l0.{suffix}")["t_ns"].sum())
    return total / 1e6


def vidur_model_ms() -> dict[int, float]:
    """The compute model's ms for vidur's own op rows (tracesim.calibration.vidur_ops), TP 8, per
    token count: the same operators and adds counted twice, without attn_rope."""
    from tracesim.calibration import vidur_ops

    ops = vidur_ops(VIDUR)
    df = pl.DataFrame(ops).with_columns(
        pl.Series("t_ns", op_times(ops, "dgx-h100").to_numpy(zero_copy_only=False))
    )
    df = df.filter((pl.col("tp") == 8) & (pl.col("name") != "attn_rope") & (pl.col("name") != "emb"))
    df = df.with_columns(pl.when(pl.col("name") == "add").then(2.0).otherwise(1.0).alias("times"))
    per_op = df.group_by("num_tokens", "name").agg(pl.col("t_ns").mean(), pl.col("times").first())
    agg = per_op.group_by("num_tokens").agg((pl.col("t_ns") * pl.col("times")).sum() / 1e6)
    return {int(k): float(v) for k, v in agg.iter_rows()}


def vidur_comparison() -> None:
    if not VIDUR.is_file():
        print(f"\nvidur profile not found at {VIDUR}; skipping the comparison")
        return
    data = vidur_rows()
    model_on_vidur = vidur_model_ms()
    print("\nLlama-2-70B, TP 8, H100: one layer's norms + GEMMs + SwiGLU + adds (ms), synth infer vs vidur")
    print("| pass | tokens | synth infer ops | vidur's ops, same model | vidur | error | vidur attn_rope |")
    print("|---|---|---|---|---|---|---|")
    errs = []
    for tokens, decode in [
        (1, True),
        (8, True),
        (32, True),
        (64, True),
        (128, True),
        (256, True),
        (512, False),
        (2048, False),
        (4096, False),
    ]:
        if tokens not in data:
            continue
        v = data[tokens]
        measured = sum(v[name] for name in OP_MAP.values())
        pred = layer_ms(tokens, decode)
        err = pred / measured - 1
        errs.append(abs(err))
        kind = "decode" if decode else "prefill"
        same = model_on_vidur[tokens]
        rope = v["attn_rope"]
        print(f"| {kind} | {tokens} | {pred:.4f} | {same:.4f} | {measured:.4f} | {err:+.1%} | {rope:.4f} |")
    print(f"median |error| {np.median(errs):.1%}, max {max(errs):.1%} over {len(errs)} points")


def _kernel_group(name: str) -> str:
    """The synth infer category a measured kernel corresponds to, or what it is if none."""
    if name.startswith("Cijk"):  # hipBLASLt GEMMs
        return "gemm"
    if "paged_attention" in name:
        return "attention"
    if "rmsnorm" in name:  # fused residual add + RMSNorm
        return "norm"
    if "act_and_mul" in name:
        return "elementwise"
    if "rotary" in name:
        return "rope (not emitted)"
    if "store_kvcache" in name:
        return "KV store (in attention)"
    if "elementwise_kernel_manual_unroll<128, 8" in name:  # 2 per layer: Qwen3's q/k norms
        return "q/k norm (not emitted)"
    return "other"


def sglang_comparison() -> None:
    if not SGLANG.is_file():
        print(f"\nSGLang trace not found at {SGLANG}; skipping")
        return
    with gzip.open(SGLANG) as f:
        events = json.loads(f.read())["traceEvents"]
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    # The first kernels belong to the previous step; the step starts after the long host gap.
    gaps = [b["ts"] - (a["ts"] + a["dur"]) for a, b in itertools.pairwise(kernels)]
    step = kernels[int(np.argmax(gaps)) + 1 :]
    measured: dict[str, float] = {}
    for e in step:
        g = _kernel_group(e["name"])
        measured[g] = measured.get(g, 0.0) + e["dur"] / 1e3
    wall = (step[-1]["ts"] + step[-1]["dur"] - step[0]["ts"]) / 1e3
    model = ModelSpec(
        name="qwen3-8b",
        family="qwen3",
        layers=36,
        hidden=4096,
        heads=32,
        kv_heads=8,
        ffn_hidden=12288,
        vocab=151936,
        activation="swiglu",
        norm="rmsnorm",
        position="rope",
        tied_embeddings=False,
    )
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "mi300x.toml"
        path.write_text('base = "dgx-h100"\nname = "mi300x-node"\ndevice = "mi300x"\n')
        system = tracesim.load_system(path)
    tr = synth_infer(model, system=system, batch=32, prompt=1024, output=2, max_prefill_tokens=32768)
    res = tracesim.simulate(tr, system, compute_model="roofline")
    ops = pl.DataFrame(tr.ops).select("op_id", "iteration", "category")
    tl = res.timeline.join(ops, on="op_id").filter(pl.col("iteration") == 1)
    tl = tl.with_columns(((pl.col("end_ns") - pl.col("start_ns")) / 1e6).alias("ms"))
    pred = dict(tl.group_by("category").agg(pl.col("ms").sum()).iter_rows())
    step_ms = (tl["end_ns"].max() - tl["start_ns"].min()) / 1e6
    print("\nQwen3-8B decode, batch 32, context ~1,025, MI300X: measured (SGLang) vs synth infer (ms)")
    print("| part | measured kernels | predicted |")
    print("|---|---|---|")
    for g in ("gemm", "attention", "norm", "elementwise"):
        print(f"| {g} | {measured.get(g, 0.0):.3f} | {pred.get(g, 0.0):.3f} |")
    for g in sorted(set(measured) - {"gemm", "attention", "norm", "elementwise"}):
        print(f"| {g} | {measured[g]:.3f} | |")
    total = sum(measured.values())
    print(
        f"| step | {total:.3f} kernels, {wall:.3f} wall | {step_ms:.3f} ({step_ms / wall - 1:+.0%} vs wall) |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rate", type=float, default=4.0, help="Poisson arrival rate, requests/s")
    ap.add_argument("--skip-trace", action="store_true", help="skip the request-trace run (the largest)")
    args = ap.parse_args()
    serving_run("llama2-70b tp 8, static batch 32 × 2048 → 256", batch=32, prompt=2048, output=256)
    if not args.skip_trace:
        rng = np.random.default_rng(0)
        arrival = np.cumsum(rng.exponential(1 / args.rate, args.requests))
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "requests.csv"
            with path.open("w") as f:
                f.write("arrival_time_s,prompt_tokens,output_tokens\n")
                for a, p, o in zip(
                    arrival,
                    rng.integers(64, 2048, args.requests),
                    rng.integers(16, 512, args.requests),
                    strict=True,
                ):
                    f.write(f"{a:.6f},{p},{o}\n")
            serving_run(f"llama2-70b tp 8, {args.requests} Poisson requests at {args.rate}/s", requests=path)
    vidur_comparison()
    sglang_comparison()


if __name__ == "__main__":
    main()
