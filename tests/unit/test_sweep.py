"""Scenarios and sweeps (tracesim.sweep, `tracesim sweep`): grid expansion, stable ids, the
results table, resume after an interruption, failing variants, bad scenarios, scale_dp."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import tracesim
from tests.tracedirs import REPO_ROOT, SAMPLE_TRACES
from tracesim.sweep import (
    ScenarioError,
    expand,
    load_scenario,
    remap_ranks,
    round_robin,
    scale_dp,
    set_dtype,
    sweep,
)

SMALL_DP = """
system = "dgx-h100"
compute_model = "roofline"

[sample]
name = "data_parallel_step"
ranks = 2
layers = 2
hidden = 1024
tokens = 1024
"""


def scenario(tmp_path: Path, text: str, name: str = "scenario.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def grid_scenario(tmp_path: Path) -> Path:
    return scenario(
        tmp_path,
        SMALL_DP
        + """
[grid]
"device.memory.hbm.read_bw_bytes" = [3.35e12, 6e12]
nodes = [1, 2]
""",
    )


def stamps(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "variants").glob("*/variant.json")}


def test_grid_expands_to_the_cartesian_product_in_file_order(tmp_path: Path) -> None:
    sc, _ = load_scenario(grid_scenario(tmp_path))
    assert expand(sc) == [
        {"device.memory.hbm.read_bw_bytes": 3.35e12, "nodes": 1},
        {"device.memory.hbm.read_bw_bytes": 3.35e12, "nodes": 2},
        {"device.memory.hbm.read_bw_bytes": 6e12, "nodes": 1},
        {"device.memory.hbm.read_bw_bytes": 6e12, "nodes": 2},
    ]
    listed = scenario(
        tmp_path, SMALL_DP + '[[variants]]\nsystem = "dgx-a100"\n[[variants]]\nnodes = 2\n', "l.toml"
    )
    sc, _ = load_scenario(listed)
    assert expand(sc) == [{"system": "dgx-a100"}, {"nodes": 2}]
    sc, _ = load_scenario(scenario(tmp_path, SMALL_DP, "one.toml"))
    assert expand(sc) == [{}]


def test_sweep_writes_one_row_per_variant_with_stable_ids(tmp_path: Path) -> None:
    path = grid_scenario(tmp_path)
    df = sweep(path, tmp_path / "out", workers=2, progress=False)
    assert df.height == 4
    for col in (
        "id",
        "device.memory.hbm.read_bw_bytes",
        "nodes",
        "status",
        "error",
        "makespan_ns",
        "energy_j",
        "mfu",
        "mean_exposed_comm_ns",
        "peak_memory_bytes",
    ):
        assert col in df.columns, col
    assert df["status"].to_list() == ["ok"] * 4
    assert df["makespan_ns"].min() > 0  # type: ignore[operator]
    on_disk = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert on_disk.equals(df)
    for row in df.iter_rows(named=True):
        vdir = tmp_path / "out" / "variants" / row["id"]
        assert (vdir / "summary.json").is_file() and (vdir / "timeline.parquet").is_file()
        record = json.loads((vdir / "variant.json").read_text())
        assert record["values"]["nodes"] == row["nodes"]
        summary = json.loads((vdir / "summary.json").read_text())
        assert summary["system"]["nodes"] == row["nodes"]
        assert summary["makespan_ns"] == row["makespan_ns"]
    # Faster HBM makes the roofline step no slower.
    one_node = df.filter(pl.col("nodes") == 1).sort("device.memory.hbm.read_bw_bytes")
    assert one_node["makespan_ns"][1] <= one_node["makespan_ns"][0]
    # Ids depend on the content, not on where or when: a copy of the scenario elsewhere, and a
    # grid grown by one value, keep the ids of the variants they share.
    other = tmp_path / "elsewhere"
    other.mkdir()
    grown = path.read_text().replace("nodes = [1, 2]", "nodes = [1, 2, 4]")
    sc, raw = load_scenario(scenario(other, grown))
    from tracesim.sweep import variant_id

    ids = [variant_id(sc, raw, other, v) for v in expand(sc)]
    assert set(df["id"]) < set(ids) and len(set(ids)) == 6


def test_resume_runs_nothing_twice(tmp_path: Path) -> None:
    path = grid_scenario(tmp_path)
    out = tmp_path / "out"
    first = sweep(path, out, workers=2, progress=False)
    before = stamps(out)
    second = sweep(path, out, workers=2, progress=False)
    assert stamps(out) == before  # nothing simulated again
    assert second.drop("elapsed_s").equals(first.drop("elapsed_s"))


def test_interrupted_sweep_completes_without_duplicates(tmp_path: Path) -> None:
    path = grid_scenario(tmp_path)
    out = tmp_path / "out"
    first = sweep(path, out, workers=2, progress=False)
    ids = first["id"].to_list()
    before = stamps(out)
    # As a killed run leaves it: one variant never written, one written without its marker,
    # and a half-filled temporary directory.
    shutil.rmtree(out / "variants" / ids[0])
    (out / "variants" / ids[1] / "variant.json").unlink()
    partial = out / "variants" / f".{ids[2]}.abc123"
    partial.mkdir()
    (partial / "timeline.parquet").write_bytes(b"PAR1 partial")
    (out / "results.parquet").unlink()
    again = sweep(path, out, workers=2, progress=False)
    after = stamps(out)
    assert sorted(again["id"]) == sorted(ids) and again["id"].n_unique() == 4
    assert again["status"].to_list() == ["ok"] * 4
    assert after[ids[2]] == before[ids[2]] and after[ids[3]] == before[ids[3]]  # kept
    assert after[ids[0]] != before[ids[0]] and after[ids[1]] != before[ids[1]]  # redone
    assert sorted(p.name for p in (out / "variants").iterdir()) == sorted(ids)
    assert again["makespan_ns"].to_list() == first["makespan_ns"].to_list()


def test_a_failing_variant_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    path = scenario(
        tmp_path,
        SMALL_DP + '[grid]\n"device.memory.hbm.read_bw_bytes" = [6e12, -1.0]\n',
    )
    df = sweep(path, tmp_path / "out", workers=2, progress=False)
    assert df["status"].to_list() == ["ok", "failed"]
    error = df["error"][1]
    assert "read_bw_bytes" in error and df["makespan_ns"][1] is None
    # Failures are cached too (a rerun does not retry them unless asked).
    before = stamps(tmp_path / "out")
    sweep(path, tmp_path / "out", workers=1, progress=False)
    assert stamps(tmp_path / "out") == before
    retried = sweep(path, tmp_path / "out", workers=1, progress=False, retry_failed=True)
    assert stamps(tmp_path / "out")[df["id"][1]] != before[df["id"][1]]
    assert retried["status"].to_list() == ["ok", "failed"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (SMALL_DP + "colour = 3\n", "colour"),
        (SMALL_DP + "[transforms]\nscale = 2\n", "transforms.scale"),
        (SMALL_DP.replace("layers = 2", "layers = 2\nlayerz = 3"), "sample.layerz"),
        (SMALL_DP + '[grid]\n"device.memory.hbm.read_bw_byte" = [1e12]\n', "device.memory.hbm.read_bw_byte"),
        (SMALL_DP + '[grid]\ncompute_model = ["fast"]\n', "compute_model"),
    ],
)
def test_bad_scenario_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = scenario(tmp_path, text)
    with pytest.raises(ScenarioError) as e:
        sweep(path, tmp_path / "out", workers=1, progress=False)
    assert str(path) in str(e.value) and key in str(e.value)


def test_scale_dp_doubles_ranks_and_keeps_the_trace_valid() -> None:
    trace = tracesim.read_trace(SAMPLE_TRACES / "dp2_allreduce")
    scaled = scale_dp(trace, 2)
    scaled.validate()
    assert scaled.ranks == 4 and scaled.num_ops == 2 * trace.num_ops
    assert scaled.ops["op_id"].to_pylist() == sorted(set(scaled.ops["op_id"].to_pylist()))
    assert scaled.groups is not None
    groups = {g["group_id"]: g["ranks"] for g in scaled.groups.to_pylist()}
    assert groups[0] == [0, 1] and groups[1] == [2, 3] and groups[2] == [0, 1, 2, 3]
    ops = pl.DataFrame(scaled.ops)
    coll = ops.filter(pl.col("kind") == "collective")
    assert set(coll["group_id"]) == {2}  # the all-ranks group is widened over both replicas
    orig = pl.DataFrame(trace.ops).filter(pl.col("kind") == "collective")
    assert sorted(coll["comm_bytes"]) == sorted(orig["comm_bytes"].to_list() * 2)
    replica = ops.filter(pl.col("rank") >= 2)
    assert replica["deps"].explode().drop_nulls().min() >= trace.num_ops  # type: ignore[operator]
    assert scaled.tensors is not None and trace.tensors is not None
    assert scaled.tensors.num_rows == 2 * trace.tensors.num_rows
    result = tracesim.simulate(scaled, "dgx-h100", compute_model="roofline")
    assert len(result.summary["ranks"]) == 4
    # Send/recv peers move with their replica.
    pp = scale_dp(tracesim.read_trace(SAMPLE_TRACES / "pp8_gpipe"), 2)
    pp.validate()
    p2p = pl.DataFrame(pp.ops).filter(pl.col("kind").is_in(["send", "recv"]))
    assert (p2p["rank"] // 8 == p2p["peer"] // 8).all()


def test_remap_with_a_permutation_keeps_ops_and_measured_makespan() -> None:
    trace = tracesim.read_trace(SAMPLE_TRACES / "dp2_allreduce")
    swapped = remap_ranks(trace, [1, 0])
    swapped.validate()
    assert swapped.num_ops == trace.num_ops
    assert swapped.ops["op_id"].to_pylist() == trace.ops["op_id"].to_pylist()
    assert [1 - r for r in trace.ops["rank"].to_pylist()] == swapped.ops["rank"].to_pylist()
    assert swapped.tensors is not None and trace.tensors is not None
    assert [1 - r for r in trace.tensors["rank"].to_pylist()] == swapped.tensors["rank"].to_pylist()
    before = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    after = tracesim.simulate(swapped, "dgx-h100", compute_model="measured")
    assert after.makespan_ns == before.makespan_ns
    assert after.timeline.height == before.timeline.height
    # Send/recv peers follow their ranks.
    pp = tracesim.read_trace(SAMPLE_TRACES / "pp8_gpipe")
    perm = [7 - r for r in range(8)]
    reversed_pp = remap_ranks(pp, perm)
    reversed_pp.validate()
    old = pl.DataFrame(pp.ops).filter(pl.col("peer").is_not_null())
    new = pl.DataFrame(reversed_pp.ops).filter(pl.col("peer").is_not_null())
    assert new["peer"].to_list() == [perm[p] for p in old["peer"].to_list()]
    with pytest.raises(ScenarioError, match="permutation"):
        remap_ranks(trace, [0, 0])


def test_round_robin_spreads_consecutive_ranks_over_nodes() -> None:
    assert round_robin(16, 8) == [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]
    assert round_robin(4, 8) == [0, 1, 2, 3]  # one node: nothing moves
    assert sorted(round_robin(12, 8)) == list(range(12))


def test_round_robin_remap_moves_traffic_across_nodes(tmp_path: Path) -> None:
    trace = SAMPLE_TRACES / "dp16_two_nodes"
    base = f'trace = "{trace}"\nsystem = "dgx-h100"\ncompute_model = "roofline"\n'
    ring = '[transforms]\nset = ["network.algorithm=ring"]\n'
    plain = sweep(
        scenario(tmp_path, base + ring, "plain.toml"), tmp_path / "plain", workers=1, progress=False
    )
    path = scenario(
        tmp_path, base + '[transforms]\nset = ["network.algorithm=ring"]\nremap = "round_robin"\n', "rr.toml"
    )
    rr = sweep(path, tmp_path / "rr", workers=1, progress=False)
    assert plain["status"].to_list() == rr["status"].to_list() == ["ok"]
    assert plain["id"][0] != rr["id"][0]

    def links(out: Path, vid: str) -> pl.DataFrame:
        return pl.read_parquet(out / "variants" / vid / "links.parquet")

    def scale_out_bytes(out: Path, vid: str) -> float:
        summary = json.loads((out / "variants" / vid / "summary.json").read_text())
        return float(summary["network"]["scale_out"]["bytes"])

    def crossing(df: pl.DataFrame) -> list[int]:
        sent = df.filter(
            (pl.col("link") == "scale_out") & (pl.col("bytes") > 0) & pl.col("rank").is_not_null()
        )
        return sorted(sent["rank"].to_list())

    assert crossing(links(tmp_path / "plain", plain["id"][0])) != crossing(
        links(tmp_path / "rr", rr["id"][0])
    )
    assert scale_out_bytes(tmp_path / "plain", plain["id"][0]) < scale_out_bytes(tmp_path / "rr", rr["id"][0])


@pytest.mark.parametrize(
    ("remap", "detail"),
    [("[0, 0]", "not a permutation"), ("[1, 0, 2]", "has 3 entries"), ('"zigzag"', "remap")],
)
def test_bad_remap_is_a_clear_error(tmp_path: Path, remap: str, detail: str) -> None:
    path = scenario(tmp_path, SMALL_DP + f"[transforms]\nremap = {remap}\n")
    with pytest.raises(ScenarioError) as e:
        sweep(path, tmp_path / "out", workers=1, progress=False)
    assert str(path) in str(e.value) and "transforms.remap" in str(e.value) and detail in str(e.value)


def test_dtype_rewrites_compute_ops_only() -> None:
    trace = tracesim.read_trace(SAMPLE_TRACES / "dp2_allreduce")
    fp8 = set_dtype(trace, "fp8")
    ops = pl.DataFrame(fp8.ops)
    assert set(ops.filter(pl.col("kind") == "compute")["dtype"]) == {"fp8"}
    assert (
        ops.filter(pl.col("kind") != "compute")["dtype"].null_count()
        == ops.filter(pl.col("kind") != "compute").height
    )
    fast = tracesim.simulate(fp8, "dgx-h100", compute_model="roofline")
    slow = tracesim.simulate(trace, "dgx-h100", compute_model="roofline")
    assert fast.makespan_ns < slow.makespan_ns


def test_ray_executor_without_ray_is_one_clear_error(tmp_path: Path) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(ScenarioError, match=r"pip install 'tracesim\[ray\]'"):
            sweep(grid_scenario(tmp_path), tmp_path / "out", executor="ray", progress=False)
    else:
        pytest.skip("ray is installed; test_ray_executor covers it")


def test_ray_executor(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        df = sweep(grid_scenario(tmp_path), tmp_path / "out", executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert df["status"].to_list() == ["ok"] * 4


def test_cli_round_trip(tmp_path: Path) -> None:
    path = grid_scenario(tmp_path)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "TRACESIM_DEBUG"}
    env.update({"NO_COLOR": "1", "COLUMNS": "200"})
    cmd = [
        sys.executable,
        "-c",
        "from tracesim.cli import main; main()",
        "sweep",
        str(path),
        "--out",
        str(out),
    ]
    proc = subprocess.run(
        [*cmd, "--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 variants, 0 failed" in proc.stdout
    df = pl.read_parquet(out / "results.parquet")
    assert df.height == 4 and df["status"].to_list() == ["ok"] * 4
    bad = scenario(tmp_path, SMALL_DP + "colour = 3\n", "bad.toml")
    proc = subprocess.run(
        [*cmd[:4], str(bad), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "colour" in lines[0] and str(bad) in lines[0], proc.stderr
