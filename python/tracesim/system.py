"""System descriptions (DESIGN.md §4): TOML files validated by pydantic, shipped presets,
derivation from a preset (`base = "dgx-h100"`) and `--set key.path=value` overrides."""

from __future__ import annotations

import copy
import json
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tracesim.exceptions import SystemConfigError
from tracesim.format import PHASES, Category, Dtype, TensorClass

PRESET_KINDS = ("systems", "devices", "tiers", "links", "nmc")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemoryTier(_Strict):
    """One memory tier of a device; `tier` names the tier preset it derives from."""

    tier: str | None = None
    description: str = ""
    capacity_bytes: float = Field(gt=0)
    read_bw_bytes: float = Field(gt=0)
    write_bw_bytes: float = Field(gt=0)
    latency_ns: float = Field(default=0.0, ge=0)
    read_energy_pj_per_bit: float = Field(default=0.0, ge=0)
    write_energy_pj_per_bit: float = Field(default=0.0, ge=0)
    retention_s: float | None = Field(default=None, gt=0)
    write_endurance: float | None = Field(default=None, gt=0)


class MemoryEfficiency(_Strict):
    mem_max: float = Field(gt=0, le=1)
    mem_half_bytes: float = Field(default=0.0, ge=0)


class Efficiency(_Strict):
    """Achieved share of peak by op size (fitted on measured kernel tables; see
    docs/calibration.md). The defaults are a plain roofline."""

    gemm_max: float = Field(default=1.0, gt=0, le=1)
    gemm_half_flops: float = Field(default=0.0, ge=0)
    mem_max: float = Field(default=1.0, gt=0, le=1)
    mem_half_bytes: float = Field(default=0.0, ge=0)
    tile_m: int = Field(default=128, ge=1)
    tile_n: int = Field(default=128, ge=1)
    # Memory efficiency of particular op categories, overriding mem_max/mem_half_bytes for them.
    category: dict[Category, MemoryEfficiency] = Field(default_factory=dict)


class Device(_Strict):
    name: str
    description: str = ""
    peak_flops: dict[Dtype, float]
    launch_overhead_ns: float = Field(default=0.0, ge=0)
    sm_count: int = Field(default=0, ge=0)
    efficiency: Efficiency = Field(default_factory=Efficiency)
    tdp_w: float | None = Field(default=None, gt=0)
    static_power_w: float = Field(default=0.0, ge=0)
    energy_pj_per_flop: dict[Dtype, float] = Field(default_factory=dict)
    primary_memory: str
    memory: dict[str, MemoryTier]

    @model_validator(mode="after")
    def _primary_exists(self) -> Device:
        if self.primary_memory not in self.memory:
            raise ValueError(
                f"primary_memory {self.primary_memory!r} is not one of memory: {sorted(self.memory)}"
            )
        for dtype, v in self.peak_flops.items():
            if not v > 0:
                raise ValueError(f"peak_flops.{dtype} must be positive, got {v}")
        return self


class Link(_Strict):
    bw_bytes: float = Field(gt=0, description="bytes/s per direction, per device")
    latency_ns: float = Field(ge=0)
    energy_pj_per_bit: float = Field(default=0.0, ge=0)
    # Link technology (a presets/links/ name, `link = "cpo"`): resolved by the loader into the
    # numbers above (see _expand_link); kept for failure exposure. Not sent to the engine.
    link: str | None = None
    links_per_device: int | None = Field(default=None, ge=1)
    length_m: float | None = Field(default=None, ge=0)
    link_latency_ns: float | None = Field(default=None, ge=0)
    fit_per_link: float | None = Field(default=None, ge=0)


LINK_TECH_FIELDS = frozenset({"link", "links_per_device", "length_m", "link_latency_ns", "fit_per_link"})
LINK_LEVELS = ("scale_up", "scale_out")


class LinkPreset(_Strict):
    """A link technology (presets/links/*.toml): lanes × Gb/s per lane per direction, reach,
    power, failure rate (FIT: failures per 10^9 hours, per link or per lane) and added latency."""

    name: str
    description: str = ""
    lanes: int = Field(ge=1)
    gbps_per_lane: float = Field(gt=0)
    reach_m: float = Field(gt=0)
    w_per_end: float | None = Field(default=None, ge=0)
    energy_pj_per_bit: float | None = Field(default=None, ge=0)
    fit_per_link: float | None = Field(default=None, ge=0)
    fit_per_lane: float | None = Field(default=None, ge=0)
    propagation_ns_per_m: float = Field(default=5.0, ge=0)
    serdes_latency_ns: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _energy_and_fit(self) -> LinkPreset:
        if self.energy_pj_per_bit is None and self.w_per_end is None:
            raise ValueError("give energy_pj_per_bit or w_per_end")
        if self.fit_per_link is not None and self.fit_per_lane is not None:
            raise ValueError("give fit_per_link or fit_per_lane, not both")
        return self

    @property
    def gbps(self) -> float:
        """Gb/s per direction of one link."""
        return self.lanes * self.gbps_per_lane

    @property
    def pj_per_bit(self) -> float:
        """Energy per bit carried, both ends (w_per_end at both ends over the link's rate)."""
        if self.energy_pj_per_bit is not None:
            return self.energy_pj_per_bit
        assert self.w_per_end is not None
        return 2 * self.w_per_end / (self.gbps * 1e9) * 1e12

    @property
    def fit(self) -> float | None:
        """Failures per 10^9 hours of one link."""
        return self.fit_per_lane * self.lanes if self.fit_per_lane is not None else self.fit_per_link


class NcclTuning(_Strict):
    """Inputs of NCCL's cost model (hardware.md §3.4), used for all-reduce, all-gather and
    reduce-scatter when set: the GPU generation selects NCCL's constants; channels and the
    per-channel bandwidths are what NCCL's topology search finds (fitted, docs/network.md)."""

    arch: Literal["volta", "ampere", "hopper", "blackwell"]
    channels: int = Field(ge=1)
    bw_intra_gbps: float = Field(gt=0)
    bw_inter_gbps: float = Field(gt=0)
    latency_inter_us: float = Field(default=0.0, ge=0)


class Edge(_Strict):
    """One bidirectional link of a custom topology: devices are "gpu<k>", any other name is a
    switch."""

    a: str
    b: str
    bw_bytes: float = Field(gt=0, description="bytes/s per direction")
    latency_ns: float = Field(default=0.0, ge=0)
    energy_pj_per_bit: float = Field(default=0.0, ge=0)


class Topology(_Strict):
    """`[network.topology]` (docs/network.md): the engine checks which fields apply to which
    kind and names a misplaced one."""

    kind: Literal["switched", "torus", "ring", "fully_connected", "custom", "ocs"]
    scale_up_domain: int | None = Field(default=None, ge=1)
    nodes_per_leaf: int | None = Field(default=None, ge=1)
    oversubscription: float | None = Field(default=None, ge=1)
    spine_latency_ns: float | None = Field(default=None, ge=0)
    in_network_reduction: bool | None = None
    dims: list[int] | None = None
    edges: list[Edge] | None = None
    ports_per_device: int | None = Field(default=None, ge=1)
    reconfig_ns: float | None = Field(default=None, ge=0)
    policy: Literal["static", "per_collective", "per_step"] | None = None


CollectiveAlgorithm = Literal[
    "auto", "nccl", "ring", "tree", "halving_doubling", "direct", "hierarchical", "in_network"
]


class Network(_Strict):
    scale_up: Link
    scale_out: Link
    nccl: NcclTuning | None = None
    topology: Topology | None = None
    algorithm: CollectiveAlgorithm = "auto"
    # Rank r runs on device rank_to_device[r] (a permutation of devices); absent: device r.
    rank_to_device: list[int] | None = None


class NmcUnit(_Strict):
    """A near-memory compute unit beside each device (docs/heterogeneous.md); `unit` names the
    presets/nmc/ preset it derives from."""

    name: str
    unit: str | None = None
    description: str = ""
    tier: str = Field(description="the device memory tier it sits on")
    peak_flops: dict[Dtype, float]
    internal_bw_bytes: float = Field(gt=0, description="bytes/s it reads and writes its tier at")
    energy_pj_per_flop: float = Field(default=0.0, ge=0)
    energy_pj_per_bit: float = Field(default=0.0, ge=0, description="its own accesses to its tier")
    link_bw_bytes: float = Field(gt=0, description="bytes/s of its link to the GPU")
    link_latency_ns: float = Field(default=0.0, ge=0)
    link_energy_pj_per_bit: float = Field(default=0.0, ge=0)
    launch_overhead_ns: float = Field(default=0.0, ge=0)


Phase = Literal[PHASES]  # type: ignore[valid-type]


class OffloadRule(_Strict):
    """Ops that match every field given run on `device` ("gpu" or an nmc unit's name)."""

    device: str
    category: Category | None = None
    phase: Phase | None = None
    tensor_class: TensorClass | None = None


class System(_Strict):
    name: str
    description: str = ""
    device: Device
    devices_per_node: int = Field(ge=1)
    nodes: int = Field(default=1, ge=1)
    network: Network
    # Tensor class → device memory tiers in order of preference; a tensor spills to the next
    # tier when one is full. Classes not listed go to the primary tier, then the others.
    placement: dict[TensorClass, list[str]] = Field(default_factory=dict)
    nmc: list[NmcUnit] = Field(default_factory=list)
    offload: list[OffloadRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _nmc_and_offload_are_consistent(self) -> System:
        names = [u.name for u in self.nmc]
        for k, u in enumerate(self.nmc):
            if u.name == "gpu" or u.name in names[:k]:
                raise ValueError(f"nmc[{k}].name {u.name!r} must be unique and not 'gpu'")
            if u.tier not in self.device.memory:
                raise ValueError(
                    f"nmc[{k}] ({u.name}) sits on tier {u.tier!r}, which device {self.device.name} does not "
                    f"have (it has: {', '.join(self.device.memory)})"
                )
        for k, r in enumerate(self.offload):
            if r.device != "gpu" and r.device not in names:
                known = ", ".join(["gpu", *names])
                raise ValueError(
                    f"offload[{k}].device {r.device!r} is not a device kind of this system ({known})"
                )
        return self

    @model_validator(mode="after")
    def _placement_tiers_exist(self) -> System:
        for cls, tiers in self.placement.items():
            if not tiers:
                raise ValueError(f"placement.{cls} lists no tiers")
            for t in tiers:
                if t not in self.device.memory:
                    raise ValueError(
                        f"placement.{cls} names tier {t!r}, which device {self.device.name} does not have "
                        f"(it has: {', '.join(self.device.memory)})"
                    )
        return self

    @property
    def devices(self) -> int:
        return self.nodes * self.devices_per_node

    def link_exposure(self) -> dict[str, dict[str, Any]]:
        """Per network level: the link technology, the number of device-attached links
        (devices × links_per_device) and their expected failures per year (links × FIT × 8766 h
        / 10^9); null where the level names no link technology. Switch-to-switch links are
        not counted."""
        out: dict[str, dict[str, Any]] = {}
        for level in LINK_LEVELS:
            link: Link = getattr(self.network, level)
            links = None if link.link is None else self.devices * (link.links_per_device or 1)
            failures = (
                None if links is None or link.fit_per_link is None else links * link.fit_per_link * 8766 / 1e9
            )
            out[level] = {
                "link": link.link,
                "links": links,
                "fit_per_link": link.fit_per_link,
                "failures_per_year": failures,
            }
        return out

    def engine_json(self) -> str:
        """The normalised description the Rust engine reads (src/system.rs)."""
        d = self.device
        return json.dumps(
            {
                "name": self.name,
                "nodes": self.nodes,
                "devices_per_node": self.devices_per_node,
                "device": {
                    "name": d.name,
                    "peak_flops": d.peak_flops,
                    "launch_overhead_ns": d.launch_overhead_ns,
                    "sm_count": d.sm_count,
                    "efficiency": d.efficiency.model_dump(),
                    "energy_pj_per_flop": d.energy_pj_per_flop,
                    "static_power_w": d.static_power_w,
                    "primary_memory": d.primary_memory,
                    "memory": {
                        k: {
                            "capacity_bytes": t.capacity_bytes,
                            "read_bw_bytes": t.read_bw_bytes,
                            "write_bw_bytes": t.write_bw_bytes,
                            "latency_ns": t.latency_ns,
                            "read_energy_pj_per_bit": t.read_energy_pj_per_bit,
                            "write_energy_pj_per_bit": t.write_energy_pj_per_bit,
                            "retention_s": t.retention_s,
                            "write_endurance": t.write_endurance,
                        }
                        for k, t in d.memory.items()
                    },
                },
                "network": self.network.model_dump(exclude={k: set(LINK_TECH_FIELDS) for k in LINK_LEVELS}),
                "placement": self.placement,
                "nmc": [u.model_dump(exclude={"unit", "description"}) for u in self.nmc],
                "offload": [r.model_dump() for r in self.offload],
            }
        )


def _preset_dir(kind: str) -> Any:
    return resources.files("tracesim") / "presets" / kind


def preset_names(kind: str) -> list[str]:
    """Names of the shipped presets of one kind: systems, devices or tiers."""
    return sorted(
        p.name.removesuffix(".toml") for p in _preset_dir(kind).iterdir() if p.name.endswith(".toml")
    )


def _load_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SystemConfigError(f"{where}: not valid TOML: {e}") from None


def _preset(kind: str, name: str) -> tuple[dict[str, Any], str]:
    p = _preset_dir(kind) / f"{name}.toml"
    if not p.is_file():
        label = "nmc unit" if kind == "nmc" else kind[:-1]
        raise SystemConfigError(f"unknown {label} preset {name!r}; presets: {', '.join(preset_names(kind))}")
    return _load_toml(p.read_text(), f"preset {kind}/{name}.toml"), f"{kind}/{name}.toml"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        # A table that names a different `kind` (a torus replacing a switched topology)
        # replaces the base's table: the base's kind-specific fields would not apply.
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        if both and "kind" in v and v["kind"] != out[k].get("kind"):
            both = False
        out[k] = _merge(out[k], v) if both else copy.deepcopy(v)
    return out


def load_link(name: str, where: str = "", key: str = "link") -> LinkPreset:
    """A link-technology preset (presets/links/NAME.toml); `where` and `key` name the file and
    key that asked for it in errors."""
    p = _preset_dir("links") / f"{name}.toml"
    if not p.is_file():
        prefix = f"{where}: key '{key}': " if where else ""
        raise SystemConfigError(
            f"{prefix}unknown link preset {name!r}; presets: {', '.join(preset_names('links'))}"
        )
    try:
        return LinkPreset.model_validate(_load_toml(p.read_text(), f"preset links/{name}.toml"))
    except ValidationError as e:
        raise SystemConfigError(_describe(e, f"preset links/{name}.toml")) from None


def _expand_link(
    level: dict[str, Any], explicit: set[str], where: str, key: str, *, final_latency: bool = False
) -> None:
    """Resolves `link = "NAME"` in one network level in place: bw_bytes = links_per_device ×
    lanes × Gb/s per lane, energy_pj_per_bit and fit_per_link from the preset, unless `explicit`
    (keys written next to `link`) has them. The link adds link_latency_ns = serdes_latency_ns +
    propagation × length_m to the level's latency_ns: the one written next to it, or else the
    inherited one less the previous link's. With `final_latency` (--set), an explicit
    latency_ns is the total."""
    name = level.get("link")
    if name is None:
        return
    if not isinstance(name, str):
        raise SystemConfigError(f"{where}: key '{key}.link': expected a link preset name, got {name!r}")
    tech = load_link(name, where, f"{key}.link")
    if level.get("links_per_device") is None:
        level["links_per_device"] = 1
    per_device = level["links_per_device"]
    if not isinstance(per_device, int) or isinstance(per_device, bool) or per_device < 1:
        raise SystemConfigError(
            f"{where}: key '{key}.links_per_device': expected a positive integer, got {per_device!r}"
        )
    length = level.get("length_m") or 0.0
    if not isinstance(length, int | float) or isinstance(length, bool):
        raise SystemConfigError(f"{where}: key '{key}.length_m': expected a number of metres, got {length!r}")
    if length > tech.reach_m:
        raise SystemConfigError(
            f"{where}: key '{key}.length_m': {length:g} m is beyond the reach of link {name!r} "
            f"({tech.reach_m:g} m)"
        )
    if "bw_bytes" not in explicit:
        level["bw_bytes"] = per_device * tech.gbps * 1e9 / 8
    if "energy_pj_per_bit" not in explicit:
        level["energy_pj_per_bit"] = tech.pj_per_bit
    if "fit_per_link" not in explicit:
        level["fit_per_link"] = tech.fit
    added = tech.serdes_latency_ns + tech.propagation_ns_per_m * length
    if "latency_ns" in explicit:
        if not final_latency:
            level["latency_ns"] = float(level["latency_ns"]) + added
    else:
        previous = level.get("link_latency_ns") or 0.0
        level["latency_ns"] = max(0.0, float(level.get("latency_ns", 0.0)) - previous) + added
    level["link_latency_ns"] = added


def _expand_links(
    raw: dict[str, Any], explicit: dict[str, set[str]], where: str, *, final_latency: bool = False
) -> None:
    network = raw.get("network")
    if not isinstance(network, dict):
        return
    for level, keys in explicit.items():
        if isinstance(network.get(level), dict):
            _expand_link(network[level], keys, where, f"network.{level}", final_latency=final_latency)


def _own_link_levels(raw: dict[str, Any]) -> dict[str, set[str]]:
    """Network levels of one file (before derivation) that name a link, with the keys written there."""
    network = raw.get("network")
    if not isinstance(network, dict):
        return {}
    return {k: set(v) for k, v in network.items() if k in LINK_LEVELS and isinstance(v, dict) and "link" in v}


def _resolve(kind: str, raw: dict[str, Any], where: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Expands `base` (derivation), the device preset of a system, tier presets of memories and
    link presets of network levels."""
    raw = dict(raw)
    own_links = _own_link_levels(raw) if kind == "systems" else {}
    base = raw.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise SystemConfigError(f"{where}: key 'base': expected a {kind[:-1]} preset name")
        if base in seen:
            raise SystemConfigError(f"{where}: key 'base': {' → '.join([*seen, base])} derives from itself")
        parent, parent_where = _preset(kind, base)
        raw = _merge(_resolve(kind, parent, parent_where, (*seen, base)), raw)
    if kind == "systems":
        device = raw.get("device")
        if isinstance(device, str):
            preset, pwhere = _preset("devices", device)
            raw["device"] = _resolve("devices", preset, pwhere)
        elif isinstance(device, dict):
            raw["device"] = _resolve("devices", device, where)
        _expand_links(raw, own_links, where)
        units = raw.get("nmc")
        if isinstance(units, list):
            raw["nmc"] = [_expand_unit(u, f"{where}: nmc[{k}]") for k, u in enumerate(units)]
    if kind == "devices":
        memory = raw.get("memory")
        if isinstance(memory, dict):
            for name, tier in memory.items():
                if isinstance(tier, dict) and isinstance(tier.get("tier"), str):
                    preset, _ = _preset("tiers", tier["tier"])
                    preset.pop("name", None)
                    memory[name] = _merge(preset, tier)
    return raw


def _expand_unit(unit: Any, where: str) -> Any:
    """An nmc unit that names a presets/nmc/ preset (`unit = "hbm-pim"`) takes its fields, then
    its own."""
    if not isinstance(unit, dict) or not isinstance(unit.get("unit"), str):
        return unit
    preset, _ = _preset("nmc", unit["unit"])
    preset.pop("name", None)
    merged = _merge(preset, unit)
    merged.setdefault("name", unit["unit"])
    return merged


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_override(raw: dict[str, Any], assignment: str) -> None:
    key, sep, value = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SystemConfigError(f"--set {assignment!r}: expected KEY.PATH=VALUE")
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            if nxt is None:
                nxt = node[part] = {}
            else:
                raise SystemConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a table")
        node = nxt
    node[parts[-1]] = _parse_value(value.strip())


def _describe(e: ValidationError, where: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}'")
        elif err["type"] == "missing":
            lines.append(f"missing key '{loc}'")
        else:
            lines.append(f"key '{loc}': {err['msg']}")
    return f"{where}: " + "; ".join(lines)


def load_system(
    spec: str | os.PathLike[str] | System,
    *,
    nodes: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> System:
    """Loads a system from a preset name or a TOML file, scaled to `nodes` and with
    `overrides` ("device.memory.hbm.read_bw_bytes=6e12") applied."""
    if isinstance(spec, System):
        raw: dict[str, Any] = spec.model_dump()
        where = f"system {spec.name}"
    else:
        path = Path(spec)
        if path.suffix == ".toml" or path.exists():
            if not path.is_file():
                raise SystemConfigError(f"{path}: no such system file")
            where = str(path)
            raw = _resolve("systems", _load_toml(path.read_text(), where), where)
        else:
            raw, where = _preset("systems", str(spec))
            where = f"preset {where}"
            raw = _resolve("systems", raw, where)
    for assignment in overrides:
        _apply_override(raw, assignment)
    # An override of a level's link, links_per_device or length_m resolves its link again;
    # the level's other keys set by overrides win over the link preset.
    set_keys: dict[str, set[str]] = {}
    for assignment in overrides:
        parts = assignment.partition("=")[0].strip().split(".")
        if len(parts) == 3 and parts[0] == "network" and parts[1] in LINK_LEVELS:
            set_keys.setdefault(parts[1], set()).add(parts[2])
    relink = {k: v for k, v in set_keys.items() if v & {"link", "links_per_device", "length_m"}}
    _expand_links(raw, relink, "--set", final_latency=True)
    if nodes is not None:
        raw["nodes"] = nodes
    try:
        return System.model_validate(raw)
    except ValidationError as e:
        raise SystemConfigError(_describe(e, where)) from None


def load_nmc_unit(name: str) -> NmcUnit:
    """A near-memory compute unit preset (presets/nmc/NAME.toml)."""
    raw, where = _preset("nmc", name)
    try:
        return NmcUnit.model_validate({**raw, "unit": name})
    except ValidationError as e:
        raise SystemConfigError(_describe(e, f"preset {where}")) from None


def load_device(name: str) -> Device:
    raw, where = _preset("devices", name)
    try:
        return Device.model_validate(_resolve("devices", raw, where))
    except ValidationError as e:
        raise SystemConfigError(_describe(e, f"preset {where}")) from None


def load_tier(name: str) -> dict[str, Any]:
    """A memory-tier preset: the technology's latency, energy, retention and endurance."""
    raw, _ = _preset("tiers", name)
    return raw
