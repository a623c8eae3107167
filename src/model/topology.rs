//! The fabric: devices, switches and directed links built from `[network.topology]`, and the
//! route a transfer takes between two of its nodes.
//!
//! Nodes `0..devices` are the devices (rank r runs on device r); switches follow. A link's
//! `latency_ns` and `energy_pj_per_bit` sit on the hop that leaves a device, so a path through
//! one switch costs the level's end-to-end latency and energy once (as `network.scale_up`
//! and `network.scale_out` state them), and a multi-hop torus path pays them per hop.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::system::{Link, System, TopologySpec};

/// Most devices a fully connected topology may have (it has devices² links).
const MAX_FULLY_CONNECTED: u32 = 1024;

#[derive(Debug, Clone)]
pub struct FabricLink {
    pub src: u32,
    pub dst: u32,
    /// Bytes per second in this direction.
    pub bw_bytes: f64,
    pub latency_ns: f64,
    pub energy_pj_per_bit: f64,
    /// scale_up, scale_out, spine, torus, circuit or custom: how reports group links.
    pub level: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcsPolicy {
    /// Circuits set once for the job: a ring per rail across scale-up domains.
    Static,
    /// Circuits follow each collective's pattern; one reconfiguration per collective.
    PerCollective,
    /// Circuits follow each algorithm step; one reconfiguration per step.
    PerStep,
}

#[derive(Debug, Clone, Copy)]
pub struct Ocs {
    pub policy: OcsPolicy,
    pub reconfig_ns: f64,
}

enum Shape {
    /// Scale-up switch per domain; scale-out leaf per (rail, pod) under one spine. With `ocs`
    /// dynamic, the scale-out fabric is one optical crossbar whose circuits follow the traffic.
    Switched {
        domain: u32,
        /// Per device: [to domain switch, from domain switch].
        up: Vec<[u32; 2]>,
        /// Per device: [to leaf, from leaf] (or to/from the optical crossbar).
        nic: Vec<[u32; 2]>,
        /// Per device: its leaf index.
        leaf_of: Vec<u32>,
        /// Per leaf: [to spine, from spine]; empty when one leaf serves everything.
        leaf_up: Vec<[u32; 2]>,
        domain_switch0: u32,
        spine: Option<u32>,
        in_network: bool,
    },
    /// Scale-up switch per domain; scale-out circuits form a ring per rail across domains.
    StaticRing {
        domain: u32,
        domain_switch0: u32,
        in_network: bool,
        up: Vec<[u32; 2]>,
        /// Per device: [to next domain's device on the rail, to previous one].
        circuit: Vec<[u32; 2]>,
        domains: u32,
    },
    Torus {
        dims: Vec<u32>,
    },
    Full,
    Graph {
        adj: Vec<Vec<(u32, u32)>>,
    },
}

pub struct Fabric {
    pub links: Vec<FabricLink>,
    pub devices: u32,
    names: Vec<String>,
    shape: Shape,
    pub ocs: Option<Ocs>,
    routes: Mutex<HashMap<(u32, u32), Vec<u32>>>,
}

fn err(system: &System, msg: String) -> Error {
    Error::Config(format!("{}: network.topology: {msg}", system.name))
}

impl Fabric {
    pub fn build(system: &System) -> Result<Fabric> {
        let devices = u32::try_from(system.devices())
            .map_err(|_| err(system, format!("{} devices exceed the model's limit", system.devices())))?;
        let default = TopologySpec {
            kind: "switched".into(),
            ..TopologySpec::default()
        };
        let spec = system.network.topology.as_ref().unwrap_or(&default);
        let fields: [(&str, bool); 11] = [
            ("scale_up_domain", spec.scale_up_domain.is_some()),
            ("nodes_per_leaf", spec.nodes_per_leaf.is_some()),
            ("oversubscription", spec.oversubscription.is_some()),
            ("spine_latency_ns", spec.spine_latency_ns.is_some()),
            ("in_network_reduction", spec.in_network_reduction.is_some()),
            ("dims", spec.dims.is_some()),
            ("edges", spec.edges.is_some()),
            ("ports_per_device", spec.ports_per_device.is_some()),
            ("reconfig_ns", spec.reconfig_ns.is_some()),
            ("policy", spec.policy.is_some()),
            ("kind", true),
        ];
        let allowed: &[&str] = match spec.kind.as_str() {
            "switched" => &[
                "scale_up_domain",
                "nodes_per_leaf",
                "oversubscription",
                "spine_latency_ns",
                "in_network_reduction",
            ],
            "torus" => &["dims"],
            "ring" | "fully_connected" => &[],
            "custom" => &["edges"],
            "ocs" => &[
                "scale_up_domain",
                "ports_per_device",
                "reconfig_ns",
                "policy",
                "in_network_reduction",
            ],
            other => {
                return Err(err(
                    system,
                    format!("unknown kind {other:?}; expected switched, torus, ring, fully_connected, custom or ocs"),
                ))
            }
        };
        for (name, set) in fields {
            if set && name != "kind" && !allowed.contains(&name) {
                return Err(err(
                    system,
                    format!("field {name:?} does not apply to kind {:?}", spec.kind),
                ));
            }
        }
        let mut f = Fabric {
            links: Vec::new(),
            devices,
            names: (0..devices).map(|d| format!("gpu{d}")).collect(),
            shape: Shape::Full,
            ocs: None,
            routes: Mutex::new(HashMap::new()),
        };
        let net = &system.network;
        match spec.kind.as_str() {
            "switched" => f.build_switched(system, spec, true)?,
            "ocs" => {
                let ports = spec.ports_per_device.unwrap_or(1);
                if ports == 0 {
                    return Err(err(system, "ports_per_device must be at least 1".into()));
                }
                let reconfig_ns = spec
                    .reconfig_ns
                    .ok_or_else(|| err(system, "kind \"ocs\" needs reconfig_ns".into()))?;
                if !(reconfig_ns.is_finite() && reconfig_ns >= 0.0) {
                    return Err(err(system, format!("reconfig_ns must be >= 0, got {reconfig_ns}")));
                }
                let policy = match spec.policy.as_deref().unwrap_or("per_collective") {
                    "static" => OcsPolicy::Static,
                    "per_collective" => OcsPolicy::PerCollective,
                    "per_step" => OcsPolicy::PerStep,
                    other => {
                        return Err(err(
                            system,
                            format!("unknown policy {other:?}; expected static, per_collective or per_step"),
                        ))
                    }
                };
                f.ocs = Some(Ocs { policy, reconfig_ns });
                if policy == OcsPolicy::Static {
                    if ports < 2 {
                        return Err(err(
                            system,
                            "policy \"static\" builds a ring per rail and needs ports_per_device >= 2".into(),
                        ));
                    }
                    f.build_static_ring(system, spec, f64::from(ports / 2))?;
                } else {
                    f.build_switched(system, spec, false)?;
                    // One optical crossbar: each device's ports carry its circuits.
                    if let Shape::Switched { nic, .. } = &f.shape {
                        for pair in nic.clone() {
                            for l in pair {
                                f.links[l as usize].bw_bytes = net.scale_out.bw_bytes * f64::from(ports);
                                f.links[l as usize].level = "circuit";
                            }
                        }
                    }
                }
            }
            "torus" | "ring" => {
                let dims = if spec.kind == "ring" {
                    vec![devices]
                } else {
                    spec.dims
                        .clone()
                        .ok_or_else(|| err(system, "kind \"torus\" needs dims".into()))?
                };
                let product: u64 = dims.iter().map(|&d| u64::from(d)).product();
                if dims.is_empty() || dims.contains(&0) || product != u64::from(devices) {
                    return Err(err(
                        system,
                        format!("dims {dims:?} must multiply to the device count {devices}"),
                    ));
                }
                for d in 0..devices {
                    let mut stride = 1u32;
                    for &size in &dims {
                        let coord = (d / stride) % size;
                        for step in [1, size - 1] {
                            let next = d - coord * stride + ((coord + step) % size) * stride;
                            f.push(d, next, &net.scale_up, "torus");
                        }
                        stride *= size;
                    }
                }
                f.shape = Shape::Torus { dims };
            }
            "fully_connected" => {
                if devices > MAX_FULLY_CONNECTED {
                    return Err(err(
                        system,
                        format!("fully_connected supports at most {MAX_FULLY_CONNECTED} devices, got {devices}"),
                    ));
                }
                for a in 0..devices {
                    for b in 0..devices {
                        if a != b {
                            f.push(a, b, &net.scale_up, "scale_up");
                        }
                    }
                }
                f.shape = Shape::Full;
            }
            "custom" => f.build_custom(system, spec)?,
            // Every other kind was refused above.
            _ => {}
        }
        Ok(f)
    }

    fn push(&mut self, src: u32, dst: u32, link: &Link, level: &'static str) -> u32 {
        self.push_raw(src, dst, link.bw_bytes, link.latency_ns, link.energy_pj_per_bit, level)
    }

    fn push_raw(&mut self, src: u32, dst: u32, bw: f64, latency_ns: f64, pj: f64, level: &'static str) -> u32 {
        self.links.push(FabricLink {
            src,
            dst,
            bw_bytes: bw,
            latency_ns,
            energy_pj_per_bit: pj,
            level,
        });
        (self.links.len() - 1) as u32
    }

    fn switch(&mut self, name: String) -> u32 {
        self.names.push(name);
        (self.names.len() - 1) as u32
    }

    fn domain_size(system: &System, spec: &TopologySpec, devices: u32) -> Result<u32> {
        let domain = spec.scale_up_domain.unwrap_or(system.devices_per_node);
        if domain == 0 || devices % domain != 0 {
            return Err(err(
                system,
                format!("scale_up_domain {domain} must divide the device count {devices}"),
            ));
        }
        Ok(domain)
    }

    /// Domain switches carry the scale-up links; returns per device [to switch, from switch].
    fn build_domains(&mut self, system: &System, domain: u32) -> (u32, Vec<[u32; 2]>) {
        let devices = self.devices;
        let first = self.names.len() as u32;
        for k in 0..devices / domain {
            self.switch(format!("nvswitch{k}"));
        }
        let up_link = &system.network.scale_up;
        let down = Link {
            latency_ns: 0.0,
            energy_pj_per_bit: 0.0,
            ..up_link.clone()
        };
        let up = (0..devices)
            .map(|d| {
                let s = first + d / domain;
                [self.push(d, s, up_link, "scale_up"), self.push(s, d, &down, "scale_up")]
            })
            .collect();
        (first, up)
    }

    /// Rail-optimised: one leaf per (pod, rail); otherwise one switch (the optical crossbar)
    /// joins every device's scale-out port.
    fn build_switched(&mut self, system: &System, spec: &TopologySpec, rail_optimised: bool) -> Result<()> {
        let devices = self.devices;
        let domain = Self::domain_size(system, spec, devices)?;
        let (domain_switch0, up) = self.build_domains(system, domain);
        let domains = devices / domain;
        let per_leaf = spec.nodes_per_leaf.unwrap_or(domains).clamp(1, domains.max(1));
        let oversub = spec.oversubscription.unwrap_or(1.0);
        if !(oversub.is_finite() && oversub >= 1.0) {
            return Err(err(system, format!("oversubscription must be >= 1, got {oversub}")));
        }
        let (pods, rails) = if rail_optimised {
            (domains.div_ceil(per_leaf), domain)
        } else {
            (1, 1)
        };
        // Local index k of every domain in a pod shares leaf (pod, k).
        let leaf0 = self.names.len() as u32;
        if rail_optimised {
            for pod in 0..pods {
                for rail in 0..rails {
                    self.switch(format!("leaf{pod}.{rail}"));
                }
            }
        } else {
            self.switch("ocs".into());
        }
        let out = &system.network.scale_out;
        let down = Link {
            latency_ns: 0.0,
            energy_pj_per_bit: 0.0,
            ..out.clone()
        };
        let mut nic = Vec::with_capacity(devices as usize);
        let mut leaf_of = Vec::with_capacity(devices as usize);
        for d in 0..devices {
            let leaf = if rail_optimised {
                (d / domain / per_leaf) * domain + d % domain
            } else {
                0
            };
            leaf_of.push(leaf);
            let s = leaf0 + leaf;
            nic.push([self.push(d, s, out, "scale_out"), self.push(s, d, &down, "scale_out")]);
        }
        let leaves = pods * rails;
        let mut leaf_up = Vec::new();
        let mut spine = None;
        if leaves > 1 {
            let sp = self.switch("spine".into());
            spine = Some(sp);
            let lat = spec.spine_latency_ns.unwrap_or(0.0);
            let bw = f64::from(per_leaf) * out.bw_bytes / oversub;
            for leaf in 0..leaves {
                let s = leaf0 + leaf;
                leaf_up.push([
                    self.push_raw(s, sp, bw, lat, 0.0, "spine"),
                    self.push_raw(sp, s, bw, lat, 0.0, "spine"),
                ]);
            }
        }
        self.shape = Shape::Switched {
            domain,
            up,
            nic,
            leaf_of,
            leaf_up,
            domain_switch0,
            spine,
            in_network: spec.in_network_reduction.unwrap_or(false),
        };
        Ok(())
    }

    fn build_static_ring(&mut self, system: &System, spec: &TopologySpec, circuits_per_direction: f64) -> Result<()> {
        let devices = self.devices;
        let domain = Self::domain_size(system, spec, devices)?;
        let (domain_switch0, up) = self.build_domains(system, domain);
        let domains = devices / domain;
        let out = &system.network.scale_out;
        let mut circuit = Vec::with_capacity(devices as usize);
        for d in 0..devices {
            let (k, rail) = (d / domain, d % domain);
            let next = ((k + 1) % domains) * domain + rail;
            let prev = ((k + domains - 1) % domains) * domain + rail;
            let bw = out.bw_bytes * circuits_per_direction;
            circuit.push([
                self.push_raw(d, next, bw, out.latency_ns, out.energy_pj_per_bit, "circuit"),
                self.push_raw(d, prev, bw, out.latency_ns, out.energy_pj_per_bit, "circuit"),
            ]);
        }
        self.shape = Shape::StaticRing {
            domain,
            domain_switch0,
            in_network: spec.in_network_reduction.unwrap_or(false),
            up,
            circuit,
            domains,
        };
        Ok(())
    }

    fn build_custom(&mut self, system: &System, spec: &TopologySpec) -> Result<()> {
        let edges = spec
            .edges
            .as_ref()
            .ok_or_else(|| err(system, "kind \"custom\" needs edges".into()))?;
        let mut by_name: HashMap<String, u32> = HashMap::new();
        for (k, n) in self.names.iter().enumerate() {
            by_name.insert(n.clone(), k as u32);
        }
        let mut node = |f: &mut Fabric, name: &str, k: usize| -> Result<u32> {
            if let Some(&id) = by_name.get(name) {
                return Ok(id);
            }
            if let Some(rest) = name.strip_prefix("gpu") {
                if rest.parse::<u32>().is_ok() {
                    return Err(err(
                        system,
                        format!("edges[{k}] names {name:?}, but the system has {} devices", f.devices),
                    ));
                }
            }
            let id = f.switch(name.to_string());
            by_name.insert(name.to_string(), id);
            Ok(id)
        };
        let mut pairs = Vec::with_capacity(edges.len());
        for (k, e) in edges.iter().enumerate() {
            if !(e.bw_bytes.is_finite() && e.bw_bytes > 0.0) {
                return Err(err(
                    system,
                    format!("edges[{k}].bw_bytes must be positive, got {}", e.bw_bytes),
                ));
            }
            let a = node(self, &e.a, k)?;
            let b = node(self, &e.b, k)?;
            if a == b {
                return Err(err(system, format!("edges[{k}] joins {:?} to itself", e.a)));
            }
            pairs.push((a, b, e.clone()));
        }
        let mut adj = vec![Vec::new(); self.names.len()];
        for (a, b, e) in pairs {
            // Latency and energy on the hop out of a device, or on both hops between switches.
            let (la, pa) = if a < self.devices || b >= self.devices {
                (e.latency_ns, e.energy_pj_per_bit)
            } else {
                (0.0, 0.0)
            };
            let (lb, pb) = if b < self.devices || a >= self.devices {
                (e.latency_ns, e.energy_pj_per_bit)
            } else {
                (0.0, 0.0)
            };
            let ab = self.push_raw(a, b, e.bw_bytes, la, pa, "custom");
            let ba = self.push_raw(b, a, e.bw_bytes, lb, pb, "custom");
            adj[a as usize].push((b, ab));
            adj[b as usize].push((a, ba));
        }
        for d in 0..self.devices {
            if adj[d as usize].is_empty() {
                return Err(err(system, format!("device gpu{d} has no edge")));
            }
        }
        self.shape = Shape::Graph { adj };
        Ok(())
    }

    /// Scale-up domains under electrically switched leaves and spine (no circuits).
    pub fn is_switched(&self) -> bool {
        matches!(self.shape, Shape::Switched { .. }) && self.ocs.is_none()
    }

    pub fn node_name(&self, node: u32) -> &str {
        self.names.get(node as usize).map_or("?", String::as_str)
    }

    /// Scale-up domain of a device (the node for switched fabrics; the device itself otherwise).
    pub fn domain_of(&self, device: u32) -> u32 {
        match &self.shape {
            Shape::Switched { domain, .. } | Shape::StaticRing { domain, .. } => device / domain,
            _ => device,
        }
    }

    /// The switch that reduces in the network for a group, when the fabric can.
    pub fn reduction_switch(&self, ranks: &[u32]) -> Option<u32> {
        if let Shape::StaticRing {
            domain,
            domain_switch0,
            in_network: true,
            ..
        } = &self.shape
        {
            // Only the scale-up switches reduce; the circuits cannot.
            let first = *ranks.first()?;
            return ranks
                .iter()
                .all(|&r| r / domain == first / domain)
                .then_some(domain_switch0 + first / domain);
        }
        let Shape::Switched {
            domain,
            domain_switch0,
            spine,
            leaf_of,
            in_network: true,
            ..
        } = &self.shape
        else {
            return None;
        };
        let first = *ranks.first()?;
        if ranks.iter().all(|&r| r / domain == first / domain) {
            return Some(domain_switch0 + first / domain);
        }
        if ranks
            .iter()
            .all(|&r| leaf_of.get(r as usize) == leaf_of.get(first as usize))
        {
            // One leaf serves the whole group: it is the first switch every member reaches.
            return None;
        }
        *spine
    }

    /// Appends the links from node `a` to node `b` to `out` (nothing when a == b).
    pub fn route(&self, a: u32, b: u32, out: &mut Vec<u32>) {
        if a == b {
            return;
        }
        match &self.shape {
            Shape::Switched {
                domain,
                up,
                nic,
                leaf_of,
                leaf_up,
                domain_switch0,
                spine,
                ..
            } => {
                let dev = |x: u32| x < self.devices;
                match (dev(a), dev(b)) {
                    (true, true) if a / domain == b / domain => {
                        out.extend([up[a as usize][0], up[b as usize][1]]);
                    }
                    (true, true) => {
                        let (la, lb) = (leaf_of[a as usize], leaf_of[b as usize]);
                        out.push(nic[a as usize][0]);
                        if la != lb {
                            out.extend([leaf_up[la as usize][0], leaf_up[lb as usize][1]]);
                        }
                        out.push(nic[b as usize][1]);
                    }
                    // Device ↔ the switch that reduces for it.
                    (true, false) if b == domain_switch0 + a / domain => out.push(up[a as usize][0]),
                    (false, true) if a == domain_switch0 + b / domain => out.push(up[b as usize][1]),
                    (true, false) if Some(b) == *spine => {
                        out.extend([nic[a as usize][0], leaf_up[leaf_of[a as usize] as usize][0]]);
                    }
                    (false, true) if Some(a) == *spine => {
                        out.extend([leaf_up[leaf_of[b as usize] as usize][1], nic[b as usize][1]]);
                    }
                    _ => self.route_bfs(a, b, out),
                }
            }
            Shape::StaticRing {
                domain,
                domain_switch0,
                up,
                circuit,
                domains,
                ..
            } => {
                if b >= self.devices || a >= self.devices {
                    // A device and its domain switch (in-network reduction).
                    if b == domain_switch0 + a / domain {
                        out.push(up[a as usize][0]);
                    } else if a == domain_switch0 + b / domain {
                        out.push(up[b as usize][1]);
                    }
                    return;
                }
                if a / domain == b / domain {
                    out.extend([up[a as usize][0], up[b as usize][1]]);
                    return;
                }
                // Move to b's rail inside a's domain, then ride the rail's ring the short way.
                let rail = b % domain;
                let mut at = a - a % domain + rail;
                if at != a {
                    out.extend([up[a as usize][0], up[at as usize][1]]);
                }
                let (ka, kb) = (at / domain, b / domain);
                let forward = (kb + domains - ka) % domains;
                let (dir, hops) = if forward <= domains - forward {
                    (0, forward)
                } else {
                    (1, domains - forward)
                };
                for _ in 0..hops {
                    out.push(circuit[at as usize][dir]);
                    at = if dir == 0 {
                        (at + domain) % (domains * domain)
                    } else {
                        (at + (domains - 1) * domain) % (domains * domain)
                    };
                }
            }
            Shape::Torus { dims } => {
                // Dimension order, the short way round each ring.
                let mut at = a;
                let mut stride = 1u32;
                let nd = dims.len() as u32;
                for (k, &size) in dims.iter().enumerate() {
                    let (ca, cb) = ((at / stride) % size, (b / stride) % size);
                    let forward = (cb + size - ca) % size;
                    let (dir, hops) = if forward <= size - forward {
                        (0, forward)
                    } else {
                        (1, size - forward)
                    };
                    for _ in 0..hops {
                        // Links were pushed per device, per dimension, forward then backward.
                        out.push((at * nd + k as u32) * 2 + dir);
                        let c = (at / stride) % size;
                        let next = if dir == 0 {
                            (c + 1) % size
                        } else {
                            (c + size - 1) % size
                        };
                        at = at - c * stride + next * stride;
                    }
                    stride *= size;
                }
            }
            Shape::Full => {
                let d = self.devices;
                out.push(a * (d - 1) + if b < a { b } else { b - 1 });
            }
            Shape::Graph { .. } => self.route_bfs(a, b, out),
        }
    }

    /// Fewest-hop path, cached per pair (custom topologies and unusual endpoints).
    fn route_bfs(&self, a: u32, b: u32, out: &mut Vec<u32>) {
        if let Ok(cache) = self.routes.lock() {
            if let Some(r) = cache.get(&(a, b)) {
                out.extend_from_slice(r);
                return;
            }
        }
        let n = self.names.len();
        let mut adj: Vec<Vec<(u32, u32)>> = vec![Vec::new(); n];
        match &self.shape {
            Shape::Graph { adj: g } => adj.clone_from(g),
            _ => {
                for (k, l) in self.links.iter().enumerate() {
                    adj[l.src as usize].push((l.dst, k as u32));
                }
            }
        }
        let mut via = vec![u32::MAX; n];
        let mut queue = VecDeque::from([a]);
        let mut seen = vec![false; n];
        seen[a as usize] = true;
        while let Some(x) = queue.pop_front() {
            if x == b {
                break;
            }
            for &(y, l) in &adj[x as usize] {
                // Transit only through switches: devices do not forward in switched fabrics.
                if !seen[y as usize] && (y == b || y >= self.devices || matches!(self.shape, Shape::Graph { .. })) {
                    seen[y as usize] = true;
                    via[y as usize] = l;
                    queue.push_back(y);
                }
            }
        }
        let mut path = Vec::new();
        let mut at = b;
        while at != a && via[at as usize] != u32::MAX {
            let l = via[at as usize];
            path.push(l);
            at = self.links[l as usize].src;
        }
        path.reverse();
        if let Ok(mut cache) = self.routes.lock() {
            cache.insert((a, b), path.clone());
        }
        out.extend(path);
    }

    /// Whether every pair of devices is connected (custom topologies may not be).
    pub fn check_connected(&self, system: &System) -> Result<()> {
        if let Shape::Graph { .. } = self.shape {
            let mut path = Vec::new();
            for d in 1..self.devices {
                path.clear();
                self.route_bfs(0, d, &mut path);
                if path.is_empty() {
                    return Err(err(system, format!("no path from gpu0 to gpu{d}")));
                }
            }
        }
        Ok(())
    }
}
