"""Calibration of the roofline compute model against measured kernel tables (docs/calibration.md).

The measured tables are vidur's per-operator profiles of one Llama-2 transformer layer
(`data/profiling/compute/<gpu>/meta-llama/<model>/mlp.csv`, MIT, microsoft/vidur): for each
number of tokens (1-4096) and tensor-parallel degree (1, 2, 4, 8) the median GPU time of the
embedding gather, the two RMSNorms, the QKV, output, up (fused gate+up) and down projections,
rotary embedding, SiLU-and-mul and the residual add, in fp16.

`vidur_ops` turns each row × operator into one canonical op (trace format, DESIGN.md §2) with
the measured median as `duration_ns` and the FLOPs, bytes and GEMM shape derived from the model
dimensions; `fit` searches the device's efficiency parameters and launch overhead so that the
Rust roofline (`tracesim.op_times`, compute model "roofline") matches the measurements;
`evaluate` reports the error. Run `python -m tracesim.calibration --data ../shared/data/vidur`
to fit on Llama-2-7B and check on Llama-2-70B (held out).
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl
import pyarrow as pa

from tracesim import format as fmt
from tracesim.simulate import op_times
from tracesim.system import System, load_system

# ---------------------------------------------------------------------------------------------
# Measured tables → canonical ops
# ---------------------------------------------------------------------------------------------

FP16_BYTES = 2  # every tensor in the vidur profiles is fp16 (mlp_wrapper casts the model)
INDEX_BYTES = 8  # token ids and positions are int64

# vidur operator → trace-format category. Only "gemm" ops carry FLOPs (see vidur_ops).
OP_CATEGORY: dict[str, str] = {
    "emb": "embedding",
    "input_layernorm": "norm",
    "attn_pre_proj": "gemm",
    "attn_rope": "elementwise",
    "attn_post_proj": "gemm",
    "post_attention_layernorm": "norm",
    "mlp_up_proj": "gemm",
    "mlp_act": "elementwise",
    "mlp_down_proj": "gemm",
    "add": "elementwise",
}
GEMM = "gemm"
MEMORY = "memory"  # every op that is not a GEMM: memory-bound by construction
OP_CLASSES = (GEMM, MEMORY)


def _gemm(m: pl.Expr, n: pl.Expr, k: pl.Expr) -> dict[str, pl.Expr]:
    """A GEMM C[M,N] = A[M,K] · B[K,N]: FLOPs = 2MNK; reads A and B once (2(MK + KN) bytes)
    and writes C once (2MN bytes) - the compulsory traffic, which is what the roofline wants."""
    return {
        "flops": (2 * m * n * k).cast(pl.Float64),
        "bytes_read": FP16_BYTES * (m * k + k * n),
        "bytes_written": FP16_BYTES * m * n,
        "gemm_m": m,
        "gemm_n": n,
        "gemm_k": k,
    }


def _memory(read: pl.Expr, written: pl.Expr) -> dict[str, pl.Expr]:
    """A memory-bound op: no FLOPs (the device's `peak_flops` is the tensor-core peak, which
    these kernels do not use, and a FLOP count would also put them on the GEMM saturation
    curve), compulsory bytes read and written."""
    return {
        "flops": pl.lit(None, dtype=pl.Float64),
        "bytes_read": read,
        "bytes_written": written,
        "gemm_m": pl.lit(None, dtype=pl.Int64),
        "gemm_n": pl.lit(None, dtype=pl.Int64),
        "gemm_k": pl.lit(None, dtype=pl.Int64),
    }


def _op_columns(op: str) -> dict[str, pl.Expr]:
    """FLOPs, bytes and GEMM shape of one vidur operator, per CSV row, as polars expressions.

    Symbols (all per row): T = num_tokens, P = TP degree (num_tensor_parallel_workers; the row is
    one GPU's shard), E = n_embd, H = n_head, Hkv = n_kv_head, d = E/H (head dim),
    F = n_expanded_embd (FFN width), g = 2 if use_gated_mlp else 1. Layer code: vidur
    vidur/profiling/mlp/mlp_impl.py (sarathi-serve layers); Llama-2 has no biases.
    """
    t, p, e = pl.col("T"), pl.col("P"), pl.col("E")
    h, hkv, d, f, g = pl.col("H"), pl.col("Hkv"), pl.col("d"), pl.col("F"), pl.col("g")
    b = FP16_BYTES
    if op == "emb":
        # VocabParallelEmbedding (vocab sharded over TP, every token id falls in rank 0's shard):
        # gather T rows of E → read T·E·2 + the T int64 ids, write T·E·2.
        return _memory(b * t * e + INDEX_BYTES * t, b * t * e)
    if op in ("input_layernorm", "post_attention_layernorm"):
        # RMSNorm over the full hidden size (not sharded): read T·E·2 + the E·2 weight,
        # write T·E·2.
        return _memory(b * t * e + b * e, b * t * e)
    if op == "attn_pre_proj":
        # Fused QKV (ColumnParallelLinear): M = T, K = E, N = (H + 2·Hkv)·d / P.
        return _gemm(t, (h + 2 * hkv) * d // p, e)
    if op == "attn_rope":
        # Rotary embedding, in place on this shard's q and k: read and write T·(H + Hkv)·d/P·2,
        # plus read the T int64 positions and T rows of the cos/sin cache (d fp16 values each).
        qk = b * t * (h + hkv) * d // p
        return _memory(qk + INDEX_BYTES * t + b * t * d, qk)
    if op == "attn_post_proj":
        # Output projection (RowParallelLinear, input already sharded): M = T, K = H·d / P, N = E.
        return _gemm(t, e, h * d // p)
    if op == "mlp_up_proj":
        # Gate and up projections fused (ColumnParallelLinear): M = T, K = E, N = g·F / P.
        return _gemm(t, g * f // p, e)
    if op == "mlp_act":
        # Gated: SiLU-and-mul reads the T × 2F/P up output and writes T × F/P.
        # Not gated: GELU reads and writes T × F/P.
        return _memory(b * t * g * f // p, b * t * f // p)
    if op == "mlp_down_proj":
        # Down projection (RowParallelLinear): M = T, K = F / P, N = E.
        return _gemm(t, e, f // p)
    if op == "add":
        # Residual add: read two T × E tensors, write one.
        return _memory(2 * b * t * e, b * t * e)
    raise ValueError(f"unknown vidur operator {op!r}")


def vidur_ops(csv_path: str | Path) -> pa.Table:
    """One canonical op (DESIGN.md §2, `tracesim.format.OPS`) per row × operator of a vidur
    `mlp.csv`, with the measured median as `duration_ns`, and the FLOPs, bytes and GEMM shape
    from the model dimensions, num_tokens and the TP degree.

    Extra columns, kept by the format: `model` (the CSV's parent folder, e.g. "Llama-2-7b-hf"),
    `num_tokens`, `tp`."""
    path = Path(csv_path)
    raw = pl.read_csv(path)
    tp_col = (
        "num_tensor_parallel_workers"
        if "num_tensor_parallel_workers" in raw.columns
        else "num_tensor_parallel_work"
    )
    dims = raw.with_columns(
        pl.col("num_tokens").cast(pl.Int64).alias("T"),
        pl.col(tp_col).cast(pl.Int64).alias("P"),
        pl.col("n_embd").cast(pl.Int64).alias("E"),
        pl.col("n_head").cast(pl.Int64).alias("H"),
        pl.col("n_kv_head").cast(pl.Int64).alias("Hkv"),
        (pl.col("n_embd") // pl.col("n_head")).cast(pl.Int64).alias("d"),
        pl.col("n_expanded_embd").cast(pl.Int64).alias("F"),
        pl.when(pl.col("use_gated_mlp").cast(pl.Boolean)).then(2).otherwise(1).cast(pl.Int64).alias("g"),
    )
    frames = []
    for op, category in OP_CATEGORY.items():
        cols = _op_columns(op)
        frames.append(
            dims.select(
                pl.lit(op).alias("name"),
                pl.lit(category).alias("category"),
                (pl.col(f"time_stats.{op}.median") * 1e6).round().cast(pl.Int64).alias("duration_ns"),
                *(expr.alias(name) for name, expr in cols.items()),
                pl.col("T").alias("num_tokens"),
                pl.col("P").alias("tp"),
            )
        )
    ops = pl.concat(frames).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt64).alias("op_id"),
        pl.lit(0, dtype=pl.UInt32).alias("rank"),
        pl.lit(0, dtype=pl.UInt32).alias("stream"),
        pl.lit("compute").alias("kind"),
        pl.lit("fp16").alias("dtype"),
        pl.lit(path.parent.name).alias("model"),
    )
    order = ["op_id", "rank", "stream", "name", "kind", "category", "dtype", "flops", "bytes_read"]
    order += ["bytes_written", "duration_ns", "gemm_m", "gemm_n", "gemm_k", "model", "num_tokens", "tp"]
    return fmt.conform(ops.select(order).to_arrow(), fmt.OPS, str(path))


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    """A vidur GPU folder and the tracesim system that models it."""

    key: str  # folder under data/profiling/compute
    system: str  # system preset the device comes from
    sm_count: int  # datasheet constant, not fitted
    preset: str | None  # device preset the fitted values go into (None: no preset)
    overrides: tuple[str, ...] = ()  # to describe a device that has no preset
    note: str = ""


GPUS: dict[str, Gpu] = {
    # NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020): the A100 has 108 SMs enabled.
    "a100": Gpu("a100", "dgx-a100", 108, "a100-sxm-80g"),
    # NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022): the H100 SXM5 has 132 SMs
    # (the PCIe card 114). vidur labels its folder only "h100"; see docs/calibration.md.
    "h100": Gpu("h100", "dgx-h100", 132, "h100-sxm"),
    # NVIDIA A40 datasheet: 10,752 CUDA cores = 84 GA102 SMs, 149.7 TFLOP/s dense fp16 tensor,
    # 48 GB GDDR6 at 696 GB/s. No preset ships for it: described on top of the A100 preset.
    "a40": Gpu(
        "a40",
        "dgx-a100",
        84,
        None,
        overrides=(
            "device.name=a40",
            "device.peak_flops.fp16=149.7e12",
            "device.memory.hbm.read_bw_bytes=696e9",
            "device.memory.hbm.write_bw_bytes=696e9",
        ),
        note="no held-out model in the data: in-sample only",
    ),
}


@dataclass(frozen=True)
class Params:
    """The compute-model parameters of one device (`[efficiency]`, `launch_overhead_ns`,
    `sm_count`). The defaults are a plain roofline: no saturation, no wave quantisation, no
    launch overhead."""

    launch_overhead_ns: float = 0.0
    sm_count: int = 0
    gemm_max: float = 1.0
    gemm_half_flops: float = 0.0
    mem_max: float = 1.0
    mem_half_bytes: float = 0.0
    tile_m: int = 128
    tile_n: int = 128
    # Per-category memory efficiency: category → (mem_max, mem_half_bytes), overriding the two
    # device-wide values for the ops of that category (`[efficiency.category.<category>]`).
    mem_category: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def overrides(self) -> list[str]:
        """The `load_system` overrides that set these parameters (and only these: category
        tables the system already has are dropped)."""
        e = "device.efficiency"
        categories = [f"{e}.category={{}}"]
        for cat, (mem_max, mem_half_bytes) in sorted(self.mem_category.items()):
            categories += [
                f"{e}.category.{cat}.mem_max={mem_max!r}",
                f"{e}.category.{cat}.mem_half_bytes={mem_half_bytes!r}",
            ]
        return [
            f"device.launch_overhead_ns={self.launch_overhead_ns!r}",
            f"device.sm_count={self.sm_count}",
            f"{e}.gemm_max={self.gemm_max!r}",
            f"{e}.gemm_half_flops={self.gemm_half_flops!r}",
            f"{e}.mem_max={self.mem_max!r}",
            f"{e}.mem_half_bytes={self.mem_half_bytes!r}",
            f"{e}.tile_m={self.tile_m}",
            f"{e}.tile_n={self.tile_n}",
            *categories,
        ]

    def with_values(self, values: Mapping[str, float]) -> Params:
        """These parameters with the searched ones (`MEMORY_AXES`, `GEMM_AXES`) set from `values`."""
        unknown = set(values) - {a.name for a in (*MEMORY_AXES, *GEMM_AXES)}
        if unknown:
            raise ValueError(f"not searched parameters: {sorted(unknown)}")
        return replace(
            self,
            launch_overhead_ns=values.get("launch_overhead_ns", self.launch_overhead_ns),
            gemm_max=values.get("gemm_max", self.gemm_max),
            gemm_half_flops=values.get("gemm_half_flops", self.gemm_half_flops),
            mem_max=values.get("mem_max", self.mem_max),
            mem_half_bytes=values.get("mem_half_bytes", self.mem_half_bytes),
        )

    def apply(self, system: System) -> System:
        """`system` with these parameters in place of its device's."""
        return load_system(system, overrides=self.overrides())

    def rounded(self) -> Params:
        """The values as they go into a preset (3 significant digits; whole nanoseconds)."""
        return replace(
            self,
            launch_overhead_ns=float(round(self.launch_overhead_ns)),
            gemm_max=_sig(self.gemm_max),
            gemm_half_flops=_sig(self.gemm_half_flops),
            mem_max=_sig(self.mem_max),
            mem_half_bytes=_sig(self.mem_half_bytes),
            mem_category={c: (_sig(m), _sig(h)) for c, (m, h) in self.mem_category.items()},
        )

    def with_category(self, category: str, mem_max: float, mem_half_bytes: float) -> Params:
        """These parameters with the memory curve of `category` set (added or replaced)."""
        return replace(self, mem_category={**self.mem_category, category: (mem_max, mem_half_bytes)})

    def single_curve(self) -> Params:
        """These parameters without the per-category memory curves."""
        return replace(self, mem_category={})


def _sig(x: float, digits: int = 3) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits - 1}e}")


def base_system(gpu: Gpu) -> System:
    """The system preset of `gpu` as a plain roofline (its own efficiency values replaced)."""
    return Params(sm_count=0).apply(load_system(gpu.system, overrides=list(gpu.overrides)))


# ---------------------------------------------------------------------------------------------
# Error
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorStats:
    """Absolute relative error |predicted - measured| / measured of one class of ops."""

    n: int
    median: float
    p90: float


def op_class(category: pl.Expr) -> pl.Expr:
    return pl.when(category == "gemm").then(pl.lit(GEMM)).otherwise(pl.lit(MEMORY))


def relative_errors(ops: pa.Table, system: System) -> pl.DataFrame:
    """Per op with a measured duration: its name, category, class, measured and predicted ns
    (the Rust roofline, via `op_times`) and the absolute relative error `rel_err`."""
    predicted = op_times(ops, system, compute_model="roofline")
    keep = ["op_id", "name", "category", "duration_ns", "model", "num_tokens", "tp"]
    df = pl.DataFrame(ops.select([c for c in keep if c in ops.column_names]))
    return (
        df.with_columns(pl.Series("predicted_ns", predicted, dtype=pl.Int64))
        .filter(pl.col("duration_ns") > 0)
        .with_columns(
            op_class(pl.col("category")).alias("class"),
            ((pl.col("predicted_ns") - pl.col("duration_ns")).abs() / pl.col("duration_ns")).alias("rel_err"),
        )
    )


def _stats(errors: pl.Series) -> ErrorStats:
    if errors.len() == 0:
        return ErrorStats(0, math.nan, math.nan)
    median = errors.median()
    p90 = errors.quantile(0.9, interpolation="linear")
    assert isinstance(median, float) and isinstance(p90, float)
    return ErrorStats(errors.len(), median, p90)


def evaluate(ops: pa.Table, system: System) -> dict[str, ErrorStats]:
    """Median and 90th-percentile absolute relative error of `system`'s roofline on `ops`,
    for GEMMs ("gemm") and for memory-bound ops ("memory")."""
    errs = relative_errors(ops, system)
    return {c: _stats(errs.filter(pl.col("class") == c)["rel_err"]) for c in OP_CLASSES}


def memory_categories(ops: pa.Table) -> list[str]:
    """The categories of the memory-bound ops in `ops`, sorted."""
    cats = pl.DataFrame(ops.select(["category"])).filter(op_class(pl.col("category")) == MEMORY)
    return sorted(cats["category"].unique().to_list())


def evaluate_categories(ops: pa.Table, system: System) -> dict[str, ErrorStats]:
    """As `evaluate`, per category of the memory-bound ops ("embedding", "norm", ...)."""
    errs = relative_errors(ops, system).filter(pl.col("class") == MEMORY)
    return {c: _stats(errs.filter(pl.col("category") == c)["rel_err"]) for c in memory_categories(ops)}


# ---------------------------------------------------------------------------------------------
# Fit
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Axis:
    """One searched parameter: its range and whether it is searched on a log scale (then 0 is
    reachable as the range's bottom, see `_Axis.value`)."""

    name: str
    lo: float
    hi: float
    log: bool = False

    def value(self, u: float) -> float:
        """The parameter at position u ∈ [0, 1] of the range."""
        u = min(max(u, 0.0), 1.0)
        if self.log:
            # u = 0 is exactly 0 (no saturation); (0, 1] spans lo..hi geometrically.
            return 0.0 if u == 0.0 else self.lo * (self.hi / self.lo) ** u
        return self.lo + (self.hi - self.lo) * u


MEMORY_AXES = (
    _Axis("launch_overhead_ns", 0.0, 10_000.0),
    _Axis("mem_max", 0.2, 1.0),
    _Axis("mem_half_bytes", 1e4, 1e9, log=True),
)
# Per-category memory curves: the embedding gather reaches only ~15% of peak bandwidth, so the
# range of mem_max reaches lower than the device-wide one.
CATEGORY_AXES = (
    _Axis("mem_max", 0.05, 1.0),
    _Axis("mem_half_bytes", 1e4, 1e9, log=True),
)
GEMM_AXES = (
    _Axis("gemm_max", 0.2, 1.0),
    _Axis("gemm_half_flops", 1e6, 1e13, log=True),
)
TILES: tuple[tuple[int, int], ...] = ((128, 128), (128, 256), (256, 128))
# The objective is the median absolute relative error plus this share of the 90th percentile.
# The median alone is nearly flat along the launch-overhead / half-size ridge (the timings are
# whole microseconds, and op types sit at different achieved bandwidths), so its optimum moved
# by tens of points of p90 between search grids; a small p90 term picks among those near-ties.
P90_WEIGHT = 0.1


def objective(stats: ErrorStats) -> float:
    """What `fit` minimises for one class of ops."""
    return stats.median + P90_WEIGHT * stats.p90


def _search(
    axes: Sequence[_Axis],
    objective: Callable[[dict[str, float]], float],
    *,
    coarse: int = 8,
    fine: int = 5,
    rounds: int = 6,
) -> tuple[dict[str, float], float]:
    """Coarse-to-fine search over the unit cube of `axes`: the best point of a full grid of
    `coarse` + 1 points per axis, then coordinate descent - a line search of each axis on `fine`
    points around the current value, two sweeps per round - halving the window each round."""
    names = [a.name for a in axes]

    def params(pos: dict[str, float]) -> dict[str, float]:
        return {a.name: a.value(pos[a.name]) for a in axes}

    u: dict[str, float] = {}
    best = math.inf
    for corner in itertools.product(range(coarse + 1), repeat=len(axes)):
        trial = {n: i / coarse for n, i in zip(names, corner, strict=True)}
        v = objective(params(trial))
        if v < best:
            best, u = v, trial
    width = 1.0 / coarse
    for _ in range(rounds):
        for _sweep in range(2):
            for name in names:
                centre = u[name]
                for j in range(fine):
                    pos = centre - width + 2 * width * j / (fine - 1)
                    if not 0.0 <= pos <= 1.0 or pos == centre:
                        continue
                    trial = {**u, name: pos}
                    v = objective(params(trial))
                    if v < best:
                        best, u = v, trial
        width /= 2
    return params(u), best


@dataclass(frozen=True)
class FitResult:
    params: Params
    fit_error: dict[str, ErrorStats]
    tile_objectives: dict[tuple[int, int], float] = field(default_factory=dict)
    # category → (objective of the single curve, objective of its own curve) on the fit data,
    # both with rounded values; the category's curve is kept only where the second is lower.
    category_objectives: dict[str, tuple[float, float]] = field(default_factory=dict)


def category_ops(ops: pa.Table, category: str) -> pa.Table:
    """The ops of one category."""
    mask = pl.DataFrame(ops.select(["category"]))["category"] == category
    return ops.filter(mask.to_arrow())


def fit_categories(
    memory_ops: pa.Table, system: System, params: Params
) -> tuple[Params, dict[str, tuple[float, float]]]:
    """`params` with a memory curve (`mem_max`, `mem_half_bytes`) fitted for each category of
    `memory_ops`, `launch_overhead_ns` and the device-wide curve fixed. A category keeps its
    curve only if that lowers the category's objective on `memory_ops` (rounded values, as
    written), compared with the device-wide curve. Also returns, per category, the objectives
    (device-wide curve, own curve)."""
    single = params.single_curve().rounded()
    result = params.single_curve()
    objectives: dict[str, tuple[float, float]] = {}
    for cat in memory_categories(memory_ops):
        ops = category_ops(memory_ops, cat)

        def cat_objective(x: dict[str, float], cat: str = cat, ops: pa.Table = ops) -> float:
            trial = single.with_category(cat, x["mem_max"], x["mem_half_bytes"])
            return objective(evaluate(ops, trial.apply(system))[MEMORY])

        x, _ = _search(CATEGORY_AXES, cat_objective)
        candidate = single.with_category(cat, x["mem_max"], x["mem_half_bytes"]).rounded()
        before = objective(evaluate(ops, single.apply(system))[MEMORY])
        after = objective(evaluate(ops, candidate.apply(system))[MEMORY])
        objectives[cat] = (before, after)
        if after < before:
            result = result.with_category(cat, *candidate.mem_category[cat])
    return result, objectives


def class_ops(ops: pa.Table, cls: str) -> pa.Table:
    """The ops of one class, `GEMM` or `MEMORY`."""
    mask = pl.DataFrame(ops.select(["category"])).select(op_class(pl.col("category")) == cls).to_series()
    return ops.filter(mask.to_arrow())


def fit(
    ops: pa.Table, system: System, sm_count: int, *, tiles: Sequence[tuple[int, int]] = TILES
) -> FitResult:
    """Fits the compute-model parameters of `system`'s device to the measured `ops`
    (`vidur_ops` of one GPU), minimising the median absolute relative error (with a small
    p90 term to break near-ties, see `objective`).

    The classes are fitted separately: first `launch_overhead_ns`, `mem_max` and
    `mem_half_bytes` on the memory-bound ops (the GEMM parameters cannot touch them: they
    carry no FLOPs), then, with those fixed, `gemm_max` and `gemm_half_flops` on the GEMMs
    for each candidate tile shape, keeping the tile with the lowest GEMM error. After the
    device-wide memory curve, each memory-bound category gets its own curve where that helps
    (`fit_categories`); GEMMs use the device-wide curve for their operand traffic. `sm_count`
    is the datasheet value and is not fitted."""
    memory_ops, gemm_ops = class_ops(ops, MEMORY), class_ops(ops, GEMM)
    start = Params(sm_count=sm_count)

    def memory_objective(x: dict[str, float]) -> float:
        return objective(evaluate(memory_ops, start.with_values(x).apply(system))[MEMORY])

    mem, _ = _search(MEMORY_AXES, memory_objective)
    after_memory, category_objectives = fit_categories(memory_ops, system, start.with_values(mem))

    best: tuple[float, Params] | None = None
    tile_objectives: dict[tuple[int, int], float] = {}
    for tile_m, tile_n in tiles:
        tiled = replace(after_memory, tile_m=tile_m, tile_n=tile_n)

        def gemm_objective(x: dict[str, float], tiled: Params = tiled) -> float:
            return objective(evaluate(gemm_ops, tiled.with_values(x).apply(system))[GEMM])

        g, _ = _search(GEMM_AXES, gemm_objective)
        candidate = tiled.with_values(g).rounded()
        # Judge the tile on the rounded values, as they will be written.
        err = objective(evaluate(gemm_ops, candidate.apply(system))[GEMM])
        tile_objectives[(tile_m, tile_n)] = err
        if best is None or err < best[0]:
            best = (err, candidate)
    assert best is not None
    params = best[1]
    return FitResult(params, evaluate(ops, params.apply(system)), tile_objectives, category_objectives)


# ---------------------------------------------------------------------------------------------
# Command line: fit on Llama-2-7B, check on Llama-2-70B
# ---------------------------------------------------------------------------------------------


def mlp_csv(data: Path, gpu: str, model: str) -> Path:
    """`data` is the vidur checkout (or its copy): the folder holding data/profiling."""
    return data / "data" / "profiling" / "compute" / gpu / "meta-llama" / model / "mlp.csv"


FIT_MODEL = "Llama-2-7b-hf"
HELD_OUT_MODEL = "Llama-2-70b-hf"


@dataclass(frozen=True)
class Report:
    gpu: Gpu
    params: Params
    # (model, "fit" | "held-out", "plain" | "single curve" | "fitted") → class → error.
    # "single curve" is the fitted parameters without the per-category memory curves.
    errors: dict[tuple[str, str, str], dict[str, ErrorStats]]
    tile_objectives: dict[tuple[int, int], float]
    # The same keys → memory-bound category → error.
    category_errors: dict[tuple[str, str, str], dict[str, ErrorStats]] = field(default_factory=dict)
    category_objectives: dict[str, tuple[float, float]] = field(default_factory=dict)


def calibrate(data: Path, gpu: Gpu) -> Report:
    system = base_system(gpu)
    plain = Params().apply(system)
    fit_ops = vidur_ops(mlp_csv(data, gpu.key, FIT_MODEL))
    result = fit(fit_ops, system, gpu.sm_count)
    variants = {
        "plain": plain,
        "single curve": result.params.single_curve().apply(system),
        "fitted": result.params.apply(system),
    }
    data_sets = [(FIT_MODEL, "fit", fit_ops)]
    held_out = mlp_csv(data, gpu.key, HELD_OUT_MODEL)
    if held_out.is_file():
        data_sets.append((HELD_OUT_MODEL, "held-out", vidur_ops(held_out)))
    errors: dict[tuple[str, str, str], dict[str, ErrorStats]] = {}
    category_errors: dict[tuple[str, str, str], dict[str, ErrorStats]] = {}
    for model, split, ops in data_sets:
        for which, sys in variants.items():
            errors[(model, split, which)] = evaluate(ops, sys)
            category_errors[(model, split, which)] = evaluate_categories(ops, sys)
    return Report(
        gpu, result.params, errors, result.tile_objectives, category_errors, result.category_objectives
    )


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_table(reports: Sequence[Report]) -> str:
    """The error table, one row per GPU × data set × model × op class (markdown)."""
    lines = [
        "| GPU | data | set | model | op class | n | median | p90 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        for (model, split, which), by_class in r.errors.items():
            label = split if r.gpu.preset or split != "fit" else "fit (in-sample only)"
            for cls, s in by_class.items():
                lines.append(
                    f"| {r.gpu.key} | {model} | {label} | {which} | {cls} | {s.n} "
                    f"| {_pct(s.median)} | {_pct(s.p90)} |"
                )
    return "\n".join(lines)


def format_category_table(reports: Sequence[Report]) -> str:
    """The error of the memory-bound ops per category, one row per GPU × data set × category
    (markdown): plain roofline, single memory curve and fitted (per-category curves)."""
    lines = [
        "| GPU | data | set | category | n | plain median / p90 | single curve median / p90 "
        "| fitted median / p90 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        for model, split, which in r.category_errors:
            if which != "plain":
                continue
            label = split if r.gpu.preset or split != "fit" else "fit (in-sample only)"
            for cat, s in r.category_errors[(model, split, "plain")].items():
                cells = [
                    f"{_pct(e.median)} / {_pct(e.p90)}"
                    for e in (
                        r.category_errors[(model, split, w)][cat] for w in ("plain", "single curve", "fitted")
                    )
                ]
                lines.append(
                    f"| {r.gpu.key} | {model} | {label} | {cat} | {s.n} | " + " | ".join(cells) + " |"
                )
    return "\n".join(lines)


def toml_fragment(r: Report) -> str:
    """The lines to paste into the device preset (top-level keys go above its first table)."""
    p = r.params
    held = r.errors.get((HELD_OUT_MODEL, "held-out", "fitted"))
    if held is not None:
        g, m = held[GEMM], held[MEMORY]
        err = (
            f"held-out error on Llama-2-70B: GEMM median {_pct(g.median)} p90 {_pct(g.p90)}; "
            f"memory-bound median {_pct(m.median)} p90 {_pct(m.p90)}"
        )
    else:
        f = r.errors[(FIT_MODEL, "fit", "fitted")]
        g, m = f[GEMM], f[MEMORY]
        err = (
            f"in-sample error only (no held-out model): GEMM median {_pct(g.median)} p90 {_pct(g.p90)}; "
            f"memory-bound median {_pct(m.median)} p90 {_pct(m.p90)}"
        )
    lines = [
        f"# fitted by python -m tracesim.calibration on vidur Llama-2-7B mlp.csv ({r.gpu.key}),",
        f"# {err}",
        f"launch_overhead_ns = {p.launch_overhead_ns:.0f}",
        f"sm_count = {p.sm_count}",
        "",
        "[efficiency]",
        f"gemm_max = {p.gemm_max}",
        f"gemm_half_flops = {p.gemm_half_flops:.3g}",
        f"mem_max = {p.mem_max}",
        f"mem_half_bytes = {p.mem_half_bytes:.3g}",
        f"tile_m = {p.tile_m}",
        f"tile_n = {p.tile_n}",
    ]
    held_key = (HELD_OUT_MODEL, "held-out", "fitted")
    key, where = (
        (held_key, "held-out")
        if held_key in r.category_errors
        else ((FIT_MODEL, "fit", "fitted"), "in-sample")
    )
    single = r.category_errors.get((key[0], key[1], "single curve"), {})
    for cat, (mem_max, mem_half_bytes) in sorted(p.mem_category.items()):
        e = r.category_errors[key][cat]
        note = f"{where} {cat} median {_pct(e.median)} p90 {_pct(e.p90)}"
        if cat in single:
            s = single[cat]
            note += f" (single curve: {_pct(s.median)} / {_pct(s.p90)})"
        lines += [
            "",
            f"[efficiency.category.{cat}]  # fitted per category; {note}",
            f"mem_max = {mem_max}",
            f"mem_half_bytes = {mem_half_bytes:.3g}",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tracesim.calibration",
        description="Fit the roofline efficiency model on vidur's Llama-2-7B profiles and check it "
        "on Llama-2-70B (held out).",
    )
    parser.add_argument("--data", type=Path, required=True, help="the vidur folder (holds data/profiling)")
    parser.add_argument("--gpu", action="append", choices=sorted(GPUS), help="GPUs to fit (default: all)")
    args = parser.parse_args(argv)
    reports = [calibrate(args.data, GPUS[k]) for k in args.gpu or GPUS]
    print(format_table(reports))
    print()
    print(format_category_table(reports))
    for r in reports:
        tiles = ", ".join(f"{m}x{n}: {_pct(e)}" for (m, n), e in r.tile_objectives.items())
        cats = ", ".join(
            f"{c}: {_pct(b)} → {_pct(a)}{'' if a < b else ' (not kept)'}"
            for c, (b, a) in r.category_objectives.items()
        )
        print(f"\n## {r.gpu.key} → {r.gpu.preset or 'no preset'} ({r.gpu.note or 'fit on 7B, held out 70B'})")
        print(f"# GEMM objective (median + {P90_WEIGHT} p90) on the fit data by tile: {tiles}")
        print(f"# memory objective on the fit data by category, single curve → own curve: {cats}")
        print(toml_fragment(r))


if __name__ == "__main__":
    main()
