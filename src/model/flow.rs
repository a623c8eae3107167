//! Flow-level network model (`--network flow`): every phase of a running collective or
//! send/recv is a set of flows routed over the fabric, and all flows in flight share link
//! bandwidth max-min fairly (progressive filling). Rates change only when a flow starts or
//! ends, so between events every flow moves at a constant rate.
//!
//! A ring phase that repeats the same step 2(p−1) times is one flow per hop carrying all of
//! its steps' bytes: under constant sharing that is exact, and it keeps the flow count at
//! one per transfer instead of one per step.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::model::collectives::{Plan, RoutedPhase};
use crate::model::topology::Fabric;

/// Bytes below which a flow counts as finished (float rounding of rate × time).
const DONE_BYTES: f64 = 1e-6;

struct Flow {
    instance: u32,
    links: Vec<u32>,
    remaining: f64,
    rate: f64,
}

struct Instance {
    plan: Arc<Plan>,
    bytes: f64,
    phase: usize,
    open: u32,
}

/// A time in ns ordered totally (times are finite and non-negative).
#[derive(Clone, Copy, PartialEq)]
struct At(f64);

impl Eq for At {}

impl PartialOrd for At {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for At {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

pub struct FlowSim {
    now: f64,
    /// Link capacity in bytes per ns.
    capacity: Vec<f64>,
    flows: Vec<Flow>,
    instances: Vec<Option<Instance>>,
    /// Phases waiting out their latency: (start time, instance).
    pending: BinaryHeap<Reverse<(At, u32)>>,
    /// Flows on each link, and the links with any.
    on_link: Vec<u32>,
    active_links: Vec<u32>,
    /// Time each link carried at least one flow.
    pub busy_ns: Vec<f64>,
    finished: Vec<(u32, f64)>,
    /// Scratch for rate computation.
    left: Vec<f64>,
    unfrozen: Vec<u32>,
    /// When the first flow in flight ends at the current rates ([`FlowSim::refresh`]).
    next_flow_end: Option<f64>,
}

impl FlowSim {
    pub fn new(fabric: &Fabric, instances: usize) -> FlowSim {
        let n = fabric.links.len();
        FlowSim {
            now: 0.0,
            capacity: fabric.links.iter().map(|l| l.bw_bytes * 1e-9).collect(),
            flows: Vec::new(),
            instances: (0..instances).map(|_| None).collect(),
            pending: BinaryHeap::new(),
            on_link: vec![0; n],
            active_links: Vec::new(),
            busy_ns: vec![0.0; n],
            finished: Vec::new(),
            left: vec![0.0; n],
            unfrozen: vec![0; n],
            next_flow_end: None,
        }
    }

    /// Starts rendezvous `instance` at `t` (not before the last event processed).
    pub fn start(&mut self, instance: u32, t: f64, plan: Arc<Plan>, bytes: u64) {
        self.advance(t);
        let first = plan.phases.first().map(|p| p.latency_ns);
        self.instances[instance as usize] = Some(Instance {
            plan,
            bytes: bytes as f64,
            phase: 0,
            open: 0,
        });
        match first {
            Some(latency) => self.pending.push(Reverse((At(t + latency), instance))),
            None => self.finished.push((instance, t)),
        }
        // A phase without latency starts its flows now, and they need their rates.
        if self.start_due() {
            self.refresh();
        }
    }

    /// When the next flow ends or the next phase starts.
    pub fn next_time(&self) -> Option<f64> {
        let phase = self.pending.peek().map(|Reverse((At(t), _))| *t);
        match (self.next_flow_end, phase) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves time to `t`, ending flows and phases due by then and starting the next phases.
    pub fn advance(&mut self, t: f64) {
        if t > self.now {
            let dt = t - self.now;
            for f in &mut self.flows {
                f.remaining -= f.rate * dt;
            }
            for &l in &self.active_links {
                self.busy_ns[l as usize] += dt;
            }
            self.now = t;
        }
        let mut changed = false;
        let mut k = 0;
        while k < self.flows.len() {
            // Within what the flow sends in a picosecond counts as done, so an event time
            // computed from the rate always ends its flow despite rounding.
            let f = &self.flows[k];
            if f.remaining <= DONE_BYTES + f.rate * 1e-3 {
                let f = self.flows.swap_remove(k);
                for &l in &f.links {
                    self.on_link[l as usize] -= 1;
                }
                self.flow_done(f.instance);
                changed = true;
            } else {
                k += 1;
            }
        }
        changed |= self.start_due();
        if changed {
            self.refresh();
        }
    }

    /// After flows started or ended: the links in use, every flow's rate, and when the first
    /// flow will end (rates stay constant until the next change, so that time does too).
    fn refresh(&mut self) {
        self.active_links.retain(|&l| self.on_link[l as usize] > 0);
        self.rates();
        let now = self.now;
        self.next_flow_end = self
            .flows
            .iter()
            .filter(|f| f.rate > 0.0)
            .map(|f| now + f.remaining / f.rate)
            .min_by(f64::total_cmp);
    }

    /// Instances that completed, with their end times; drained by the engine.
    pub fn take_finished(&mut self) -> Vec<(u32, f64)> {
        std::mem::take(&mut self.finished)
    }

    fn flow_done(&mut self, instance: u32) {
        let now = self.now;
        let Some(inst) = self.instances[instance as usize].as_mut() else {
            return;
        };
        inst.open -= 1;
        if inst.open == 0 {
            inst.phase += 1;
            match inst.plan.phases.get(inst.phase) {
                Some(p) => self.pending.push(Reverse((At(now + p.latency_ns), instance))),
                None => {
                    self.instances[instance as usize] = None;
                    self.finished.push((instance, now));
                }
            }
        }
    }

    /// Starts every phase whose latency has elapsed; true if any flow started.
    fn start_due(&mut self) -> bool {
        let mut started = false;
        while let Some(&Reverse((At(t), instance))) = self.pending.peek() {
            if t > self.now {
                break;
            }
            self.pending.pop();
            let Some(inst) = self.instances[instance as usize].as_ref() else {
                continue;
            };
            let plan = inst.plan.clone();
            let bytes = inst.bytes;
            let phase: &RoutedPhase = &plan.phases[inst.phase];
            let mut open = 0;
            for &(offset, len, share) in &phase.flows {
                let links = &plan.route_links[offset as usize..(offset + len) as usize];
                let volume = share * bytes;
                if links.is_empty() || volume <= DONE_BYTES {
                    continue;
                }
                for &l in links {
                    if self.on_link[l as usize] == 0 {
                        self.active_links.push(l);
                    }
                    self.on_link[l as usize] += 1;
                }
                self.flows.push(Flow {
                    instance,
                    links: links.to_vec(),
                    remaining: volume,
                    rate: 0.0,
                });
                open += 1;
            }
            if let Some(inst) = self.instances[instance as usize].as_mut() {
                inst.open = open;
            }
            if open == 0 {
                // Nothing to send in this phase: it ends as it starts.
                if let Some(inst) = self.instances[instance as usize].as_mut() {
                    inst.open = 1;
                }
                self.flow_done(instance);
            } else {
                started = true;
            }
        }
        started
    }

    /// Max-min fair rates by progressive filling: repeatedly the link with the smallest fair
    /// share fixes the rate of every unfixed flow through it.
    fn rates(&mut self) {
        for &l in &self.active_links {
            self.left[l as usize] = self.capacity[l as usize];
            self.unfrozen[l as usize] = self.on_link[l as usize];
        }
        let mut open: Vec<usize> = (0..self.flows.len()).collect();
        for f in &mut self.flows {
            f.rate = 0.0;
        }
        while !open.is_empty() {
            let mut share = f64::INFINITY;
            for &l in &self.active_links {
                let n = self.unfrozen[l as usize];
                if n > 0 {
                    share = share.min(self.left[l as usize] / f64::from(n));
                }
            }
            if !share.is_finite() {
                break;
            }
            let bottleneck = |l: u32, left: &[f64], unfrozen: &[u32]| {
                let n = unfrozen[l as usize];
                n > 0 && left[l as usize] / f64::from(n) <= share * (1.0 + 1e-12)
            };
            let mut k = 0;
            let mut froze = false;
            while k < open.len() {
                let f = &self.flows[open[k]];
                if f.links.iter().any(|&l| bottleneck(l, &self.left, &self.unfrozen)) {
                    let idx = open.swap_remove(k);
                    let flow = &mut self.flows[idx];
                    flow.rate = share;
                    for &l in &flow.links {
                        self.left[l as usize] = (self.left[l as usize] - share).max(0.0);
                        self.unfrozen[l as usize] -= 1;
                    }
                    froze = true;
                } else {
                    k += 1;
                }
            }
            if !froze {
                break;
            }
        }
    }
}

/// The plan of one message: a single flow along the route, after the path's latency.
pub fn p2p_plan(fabric: &Fabric, src: u32, dst: u32) -> Plan {
    let mut route = Vec::new();
    fabric.route(src, dst, &mut route);
    let latency: f64 = route.iter().map(|&l| fabric.links[l as usize].latency_ns).sum();
    Plan {
        alpha_ns: latency,
        beta_ns_per_byte: 0.0,
        link_load: route.iter().map(|&l| (l, 1.0)).collect(),
        phases: vec![RoutedPhase {
            latency_ns: latency,
            flows: vec![(0, route.len() as u32, 1.0)],
        }],
        route_links: route,
    }
}
