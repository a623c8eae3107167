"""Topologies, collective algorithms, the flow-level model and optical circuit switching
(docs/network.md), end to end through `tracesim.simulate`."""

from __future__ import annotations

from pathlib import Path

import pytest

import tracesim
from tests.systems import derived_system
from tracesim.samples import single_collective
from tracesim.trace import Trace

GIB = 1 << 30


def _system(tmp_path: Path, body: str, name: str = "sys.toml") -> tracesim.System:
    return derived_system(tmp_path, "dgx-h100", body, name)


def _two_concurrent_all_reduces(ranks: int, comm_bytes: int) -> Trace:
    """Every rank runs two all-reduces at once on two streams, over two groups of the same
    ranks: they compete for the same links."""
    rows = [(r, s) for s in (0, 1) for r in range(ranks)]
    ops = {
        "op_id": list(range(len(rows))),
        "rank": [r for r, _ in rows],
        "stream": [s for _, s in rows],
        "name": ["all_reduce"] * len(rows),
        "kind": ["collective"] * len(rows),
        "coll": ["all_reduce"] * len(rows),
        "group_id": [s for _, s in rows],
        "coll_seq": [0] * len(rows),
        "comm_bytes": [comm_bytes] * len(rows),
    }
    groups = {"group_id": [0, 1], "ranks": [list(range(ranks))] * 2}
    return Trace.from_tables(ops, ranks=ranks, groups=groups, source="test")


def test_flow_matches_analytical_without_contention() -> None:
    system = tracesim.load_system("dgx-h100", overrides=["network.algorithm=ring"])
    trace = single_collective(8, GIB)
    analytical = tracesim.simulate(trace, system, network="analytical")
    flow = tracesim.simulate(trace, system, network="flow")
    assert flow.summary["network_model"] == "flow"
    # Ring on one NVSwitch: 14 steps of 936.25 ns, then 2·7/8 GiB at 450 GB/s; rounding to ns.
    expect = 14 * 936.25 + 14 / 8 * GIB / 450e9 * 1e9
    assert analytical.makespan_ns == round(expect)
    assert abs(flow.makespan_ns - analytical.makespan_ns) <= 1


def test_flow_shares_links_between_concurrent_collectives() -> None:
    system = tracesim.load_system("dgx-h100", overrides=["network.algorithm=ring"])
    trace = _two_concurrent_all_reduces(8, GIB)
    analytical = tracesim.simulate(trace, system, network="analytical")
    flow = tracesim.simulate(trace, system, network="flow")
    latency = 14 * 936.25
    # The analytical model times each all-reduce alone; in the flow model both share every
    # scale-up link, so each moves its bytes at half the rate.
    assert analytical.makespan_ns == round(latency + 14 / 8 * GIB / 450e9 * 1e9)
    assert flow.makespan_ns == pytest.approx(latency + 2 * 14 / 8 * GIB / 450e9 * 1e9, abs=2)
    # Same bytes on the links either way; the flow model's busy time is measured.
    assert analytical.links is not None and flow.links is not None
    assert flow.links["bytes"].to_list() == analytical.links["bytes"].to_list()
    assert flow.links["busy_ns"].max() <= flow.makespan_ns


def test_auto_picks_hierarchical_across_nodes_and_ring_bytes_follow_the_rails() -> None:
    h100 = tracesim.load_system("dgx-h100")
    system = h100.model_copy(update={"network": h100.network.model_copy(update={"nccl": None})})
    trace = single_collective(16, GIB)
    auto = tracesim.simulate(trace, system)
    ring = tracesim.simulate(trace, tracesim.load_system(system, overrides=["network.algorithm=ring"]))
    assert auto.links is not None and ring.links is not None
    nic = "scale_out"
    sent_auto = auto.links.filter((auto.links["link"] == nic) & auto.links["rank"].is_not_null())["bytes"]
    sent_ring = ring.links.filter((ring.links["link"] == nic) & ring.links["rank"].is_not_null())["bytes"]
    # Hierarchical: every rank's NIC carries 2·(1/2)·(n/8); the flat ring crosses nodes at two
    # ranks only, each with 2·15/16·n.
    assert sorted(set(sent_auto.to_list())) == [GIB / 8]
    assert sorted(sent_ring.to_list())[-2:] == [2 * 15 / 16 * GIB] * 2
    assert sent_ring.sum() > sent_auto.sum()


def test_torus_and_custom_topologies_replay(tmp_path: Path) -> None:
    torus = _system(
        tmp_path, "devices_per_node = 16\n[network.topology]\nkind = 'torus'\ndims = [4, 4]\n", "t.toml"
    )
    ring = tracesim.simulate(
        single_collective(16, GIB), tracesim.load_system(torus, overrides=["network.algorithm=ring"])
    )
    assert ring.links is not None
    assert set(ring.links["link"].unique().to_list()) == {"torus"}
    # Ring order 0..15 on 4×4: a row's last rank reaches the next row in two hops, and no two
    # transfers share a link, so 30 steps of two hops' latency and 30/16 of n per link.
    assert ring.makespan_ns == round(30 * 2 * 936.25 + 30 / 16 * GIB / 450e9 * 1e9)
    # NCCL's model does not apply off a switched fabric; auto takes the fastest algorithm.
    auto = tracesim.simulate(single_collective(16, GIB), torus)
    assert auto.makespan_ns <= ring.makespan_ns
    edges = "\n".join(
        f"[[network.topology.edges]]\na = 'gpu{k}'\nb = 'sw'\nbw_bytes = 1e11\nlatency_ns = 100.0\n"
        for k in range(8)
    )
    custom = _system(
        tmp_path, f"[network]\nalgorithm = 'ring'\n[network.topology]\nkind = 'custom'\n{edges}", "c.toml"
    )
    result = tracesim.simulate(single_collective(8, GIB), custom)
    # One switch: the ring's 14 steps pay one 100 ns device hop each, bytes at 100 GB/s.
    assert result.makespan_ns == round(14 * 100 + 14 / 8 * GIB / 1e11 * 1e9)


@pytest.mark.parametrize("delay_ns", [1e3, 1e6, 3e7])
def test_ocs_reconfiguration_delay_is_paid_per_collective(tmp_path: Path, delay_ns: float) -> None:
    """One rank per node, all-reduce over the optical fabric: per_collective pays the delay
    once; static circuits pay nothing but give each direction one port."""
    ocs = "[network]\nalgorithm = 'ring'\n[network.topology]\nkind = 'ocs'\nports_per_device = 2\n"
    dynamic = _system(tmp_path, ocs + f"reconfig_ns = {delay_ns}\npolicy = 'per_collective'\n", "d.toml")
    static = _system(tmp_path, ocs + f"reconfig_ns = {delay_ns}\npolicy = 'static'\n", "s.toml")
    ops = {
        "op_id": list(range(4)),
        "rank": [0, 8, 16, 24],
        "stream": [0] * 4,
        "name": ["all_reduce"] * 4,
        "kind": ["collective"] * 4,
        "coll": ["all_reduce"] * 4,
        "group_id": [0] * 4,
        "coll_seq": [0] * 4,
        "comm_bytes": [GIB] * 4,
    }
    trace = Trace.from_tables(
        ops, ranks=32, groups={"group_id": [0], "ranks": [[0, 8, 16, 24]]}, source="test"
    )
    t_dynamic = tracesim.simulate(trace, dynamic).makespan_ns
    t_static = tracesim.simulate(trace, static).makespan_ns
    wire = 6 * 1500.0
    assert t_dynamic == round(wire + delay_ns + 1.5 * GIB / 100e9 * 1e9)
    assert t_static == round(wire + 1.5 * GIB / 50e9 * 1e9)
    assert tracesim.simulate(trace, dynamic, network="flow").makespan_ns == pytest.approx(t_dynamic, abs=2)


def test_bad_topology_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        tracesim.SystemConfigError, match=r"field \"dims\" does not apply to kind \"switched\""
    ):
        system = _system(tmp_path, "[network.topology]\nkind = 'switched'\ndims = [8]\n")
        tracesim.simulate(single_collective(8, GIB), system)
    with pytest.raises(tracesim.SystemConfigError, match="kind"):
        _system(tmp_path, "[network.topology]\nkind = 'hypercube'\n", "h.toml")
    with pytest.raises(tracesim.SystemConfigError, match="algorithm"):
        _system(tmp_path, "[network]\nalgorithm = 'butterfly'\n", "a.toml")


def test_rank_to_device_moves_ranks_onto_other_nodes() -> None:
    """Two ranks on one node's NVSwitch, or mapped onto two nodes so their all-reduce crosses
    the NICs; links.parquet labels device links by the rank on the device."""
    base = tracesim.load_system("dgx-h100", nodes=2, overrides=["network.algorithm=ring"])
    trace = single_collective(2, GIB)
    near = tracesim.simulate(trace, base)
    far_system = tracesim.load_system(base, overrides=["network.rank_to_device=[0, 8]"])
    far = tracesim.simulate(trace, far_system)
    assert near.makespan_ns == round(2 * 936.25 + GIB / 450e9 * 1e9)
    assert far.makespan_ns == round(2 * 1500 + GIB / 50e9 * 1e9)
    assert far.links is not None
    nic = far.links.filter(
        (far.links["link"] == "scale_out") & (far.links["bytes"] > 0) & far.links["rank"].is_not_null()
    )
    assert sorted(nic["rank"].to_list()) == [0, 1]
    assert sorted(nic["src"].to_list()) == ["gpu0", "gpu8"]
    with pytest.raises(tracesim.SystemConfigError, match="puts a second rank on device 0"):
        tracesim.simulate(trace, tracesim.load_system(base, overrides=["network.rank_to_device=[0, 0]"]))
    with pytest.raises(tracesim.SystemConfigError, match="maps 1 ranks but the trace has 2"):
        tracesim.simulate(trace, tracesim.load_system(base, overrides=["network.rank_to_device=[3]"]))
