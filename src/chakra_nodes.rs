//! Chakra nodes (protobuf, [`crate::chakra_pb`], or JSON `workload_graph`) as columns of what
//! `tracesim.ingest.chakra` maps: the node's id, name, type, times and the attributes the mapping
//! reads, typed as it reads them; deps as flat lists. A node is added as it is read and dropped.

use std::path::Path;

use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::chakra_pb::{AttrValue, PbNode};
use crate::json_stream::ListReader;

/// The fields of a Chakra JSON node the mapper reads (the node's own, then its attributes).
const NODE_KEYS: [&str; 17] = [
    "Id",
    "Name",
    "NodeType",
    "data_deps",
    "ctrlDeps",
    "ctrl_deps",
    "runtime",
    "is_cpu_op",
    "tid",
    "stream",
    "num_ops",
    "tensor_size",
    "comm_size",
    "comm_type",
    "comm_dst",
    "comm_src",
    "pg_name",
];

/// `text` with the tokens Python's json writes for non-finite floats (NaN, Infinity, -Infinity),
/// outside strings, as `null`.
fn without_non_finite(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut k = 0;
    while k < text.len() {
        let b = text[k];
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            k += 1;
            continue;
        }
        let rest = &text[k..];
        if let Some(token) = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.extend_from_slice(b"null");
            k += token.len();
            continue;
        }
        in_string = b == b'"';
        out.push(b);
        k += 1;
    }
    out
}

/// METADATA_NODE: its `inputs` carry the process groups.
const METADATA_NODE: i64 = 1;

/// Lists of ids, flat: list i is `values[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Default, PartialEq)]
pub struct FlatLists {
    pub offsets: Vec<i64>,
    pub values: Vec<i64>,
}

impl FlatLists {
    fn new() -> Self {
        FlatLists {
            offsets: vec![0],
            values: Vec::new(),
        }
    }

    fn push(&mut self, list: &[i128]) -> Result<(), i128> {
        for &v in list {
            self.values.push(i64::try_from(v).map_err(|_| v)?);
        }
        self.offsets.push(self.values.len() as i64);
        Ok(())
    }
}

/// The nodes' columns (one row per node, in file order).
#[derive(Debug, Default)]
pub struct NodeColumns {
    pub id: Vec<i64>,
    pub name: Vec<String>,
    pub node_type: Vec<i64>,
    pub dur_ns: Vec<Option<i64>>,
    pub start_ns: Vec<Option<i64>>,
    /// `is_cpu_op`, as Python's truth of its value (absent: false).
    pub is_cpu: Vec<bool>,
    /// `tid` (else `stream`) as a key: equal Python values, equal keys; None: absent or null.
    pub thread: Vec<Option<String>>,
    /// `num_ops` when a number.
    pub flops: Vec<Option<f64>>,
    /// Integer attributes (an integral float or a bool counts, as the Python mapper reads them).
    pub tensor_size: Vec<Option<i64>>,
    pub comm_size: Vec<Option<i64>>,
    pub comm_type: Vec<Option<i64>>,
    pub comm_dst: Vec<Option<i64>>,
    pub comm_src: Vec<Option<i64>>,
    /// `pg_name` as Python's `str()` of it; None when absent, null or "".
    pub pg_name: Vec<Option<String>>,
    /// `inputs` of METADATA nodes (the process groups); None for the others.
    pub inputs: Vec<Option<String>>,
    pub ctrl: FlatLists,
    pub data: FlatLists,
}

/// An integer as the mapper reads attributes: an int, a bool, or an integral float (None when
/// beyond int64).
fn int_of(v: &AttrValue) -> Option<i64> {
    match v {
        AttrValue::Int(i) => i64::try_from(*i).ok(),
        AttrValue::Bool(b) => Some(i64::from(*b)),
        AttrValue::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(*f as i64),
        _ => None,
    }
}

/// Python's truth of a value.
fn truth(v: &AttrValue) -> bool {
    match v {
        AttrValue::Int(i) => *i != 0,
        AttrValue::Bool(b) => *b,
        AttrValue::Float(f) => *f != 0.0,
        AttrValue::Str(s) => !s.is_empty(),
        AttrValue::Bytes(b) => !b.is_empty(),
        AttrValue::List(l) => !l.is_empty(),
        AttrValue::Unknown => false,
    }
}

/// A key for a value, equal for values Python finds equal (1, 1.0 and True; not "1").
fn key_of(v: &AttrValue) -> Option<String> {
    match v {
        AttrValue::Unknown => None,
        AttrValue::Str(s) => Some(format!("s:{s}")),
        AttrValue::Bytes(b) => Some(format!("b:{b:?}")),
        AttrValue::List(_) => Some(format!("l:{v:?}")),
        _ => match int_of(v) {
            Some(i) => Some(format!("n:{i}")),
            None => Some(format!("f:{v:?}")),
        },
    }
}

/// Python's `str()` of a value, near enough for names.
fn py_str(v: &AttrValue) -> String {
    match v {
        AttrValue::Str(s) => s.clone(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
        AttrValue::Float(f) => format!("{f:?}"),
        AttrValue::Bytes(b) => format!("{b:?}"),
        AttrValue::List(l) => format!("{l:?}"),
        AttrValue::Unknown => "None".to_owned(),
    }
}

impl NodeColumns {
    /// Gives back the unused capacity of the deps (the largest columns).
    pub fn shrink(&mut self) {
        for lists in [&mut self.ctrl, &mut self.data] {
            lists.values.shrink_to_fit();
            lists.offsets.shrink_to_fit();
        }
    }

    pub fn new() -> Self {
        NodeColumns {
            ctrl: FlatLists::new(),
            data: FlatLists::new(),
            ..NodeColumns::default()
        }
    }

    /// Adds a node; an id or dep beyond int64, or a time beyond int64 ns, is an error.
    pub fn push(&mut self, n: PbNode) -> Result<(), String> {
        let id = i64::try_from(n.id).map_err(|_| format!("node id {} beyond int64", n.id))?;
        let ns = |v: Option<i128>, what: &str| -> Result<Option<i64>, String> {
            v.map(|us| {
                i64::try_from(us)
                    .ok()
                    .and_then(|us| us.checked_mul(1000))
                    .ok_or_else(|| format!("node {id}: {what} {us} µs beyond int64 ns"))
            })
            .transpose()
        };
        let dur = ns(n.dur_us, "duration")?;
        let start = ns(n.start_us, "start")?;
        let node_type = n.node_type.and_then(|t| i64::try_from(t).ok()).unwrap_or(0);
        self.ctrl
            .push(&n.ctrl_deps)
            .map_err(|d| format!("node {id}: dep {d} beyond int64"))?;
        self.data
            .push(&n.data_deps)
            .map_err(|d| format!("node {id}: dep {d} beyond int64"))?;
        // The last value of a name wins, as in the mapper's dict of attributes.
        let get = |key: &str| n.attrs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v);
        self.is_cpu.push(get("is_cpu_op").is_some_and(truth));
        self.thread.push(get("tid").or_else(|| get("stream")).and_then(key_of));
        self.flops.push(get("num_ops").and_then(|v| match v {
            AttrValue::Int(i) => Some(*i as f64),
            AttrValue::Float(f) => Some(*f),
            _ => None,
        }));
        let int = |key: &str| get(key).and_then(int_of);
        self.tensor_size.push(int("tensor_size"));
        self.comm_size.push(int("comm_size"));
        self.comm_type.push(int("comm_type"));
        self.comm_dst.push(int("comm_dst"));
        self.comm_src.push(int("comm_src"));
        self.pg_name.push(get("pg_name").and_then(|v| match v {
            AttrValue::Unknown => None,
            AttrValue::Str(s) if s.is_empty() => None,
            other => Some(py_str(other)),
        }));
        self.inputs.push((node_type == METADATA_NODE).then_some(n.inputs));
        self.id.push(id);
        self.name.push(n.name);
        self.node_type.push(node_type);
        self.dur_ns.push(dur);
        self.start_ns.push(start);
        Ok(())
    }
}

/// A JSON value as an attribute value (objects and null: Unknown).
fn attr_of(v: Value) -> AttrValue {
    match v {
        Value::Bool(b) => AttrValue::Bool(b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => AttrValue::Int(i128::from(i)),
            (_, Some(u)) => AttrValue::Int(i128::from(u)),
            _ => AttrValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AttrValue::Str(s),
        Value::Array(a) => AttrValue::List(a.into_iter().map(attr_of).collect()),
        Value::Null | Value::Object(_) => AttrValue::Unknown,
    }
}

/// Ids as the mapper reads deps: a list's integers (others dropped), or one non-negative one.
/// Integers beyond int64 are kept (refused when added).
fn ids_of(v: Option<Value>) -> Vec<i128> {
    let id = |x: Value| match attr_of(x) {
        AttrValue::Int(i) => Some(i),
        other => int_of(&other).map(i128::from),
    };
    match v {
        Some(Value::Array(items)) => items.into_iter().filter_map(id).collect(),
        Some(x) => id(x).filter(|&i| i >= 0).into_iter().collect(),
        None => Vec::new(),
    }
}

/// The nodes of a Chakra JSON file's `workload_graph`, streamed, each handed to `each`; errors
/// name the file and the node. Returns the file's other top-level fields (key, JSON text).
pub fn read_chakra_json(
    path: &Path,
    mut each: impl FnMut(PbNode) -> Result<(), String>,
) -> Result<Vec<(String, String)>, String> {
    let name = path.display().to_string();
    let mut reader = ListReader::open(path, vec!["workload_graph".to_owned()])?;
    reader.begin()?;
    if reader.found.is_none() {
        return Err(format!("{name}: Chakra JSON without a 'workload_graph' list"));
    }
    let mut i = 0usize;
    while let Some(elem) = reader.next_element()? {
        // Only the fields the mapper reads are parsed; the others are skipped unread (at any
        // depth). Python writes NaN and Infinity, which are not JSON: read as null.
        let sanitized;
        let fields: HashMap<String, &RawValue> = match serde_json::from_slice(elem) {
            Ok(m) => m,
            Err(e) => {
                sanitized = without_non_finite(elem);
                match serde_json::from_slice(&sanitized) {
                    Ok(m) => m,
                    // Valid JSON but not an object: not a node; else the reader's own error.
                    Err(_) if serde_json::from_slice::<&RawValue>(&sanitized).is_ok() => {
                        return Err(format!(
                            "{name}: workload_graph[{i}] is not a node with an integer 'Id'"
                        ));
                    }
                    Err(_) => return Err(format!("{name}: not valid JSON: workload_graph[{i}]: {e}")),
                }
            }
        };
        let mut d: HashMap<String, Value> = HashMap::new();
        for key in NODE_KEYS {
            if let Some(raw) = fields.get(key) {
                let v = serde_json::from_str(raw.get())
                    .map_err(|e| format!("{name}: not valid JSON: workload_graph[{i}].{key}: {e}"))?;
                d.insert(key.to_owned(), v);
            }
        }
        let not_a_node = || format!("{name}: workload_graph[{i}] is not a node with an integer 'Id'");
        let id = d
            .remove("Id")
            .map(attr_of)
            .as_ref()
            .and_then(int_of)
            .ok_or_else(not_a_node)?;
        let node_name = match d.remove("Name") {
            None => String::new(),
            Some(Value::String(s)) => s,
            Some(other) => py_str(&attr_of(other)),
        };
        let node_type = d
            .remove("NodeType")
            .map(attr_of)
            .as_ref()
            .and_then(int_of)
            .filter(|&t| t != 0);
        let data_deps = ids_of(d.remove("data_deps"));
        let ctrl = d.remove("ctrlDeps");
        let ctrl_other = d.remove("ctrl_deps");
        let ctrl_deps = ids_of(ctrl.or(ctrl_other));
        let dur = d.remove("runtime").map(attr_of).as_ref().and_then(int_of);
        let node = PbNode {
            id: i128::from(id),
            name: node_name,
            node_type: node_type.map(i128::from),
            ctrl_deps,
            data_deps,
            start_us: None,
            dur_us: dur.map(i128::from),
            inputs: String::new(),
            attrs: d.into_iter().map(|(k, v)| (k, attr_of(v))).collect(),
        };
        each(node).map_err(|e| format!("{name}: {e}"))?;
        i += 1;
    }
    Ok(reader.header.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_nodes_to_columns() {
        let dir = std::env::temp_dir().join(format!("tracesim-chakra-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("g.0.json");
        let text = r#"{"workload_graph": [
            {"Id": 1, "Name": "mm", "NodeType": 4, "runtime": 5, "data_deps": [7, true, 2.0, "x"],
             "is_cpu_op": 0, "tid": 3.0, "num_ops": 10, "tensor_size": 64},
            {"Id": 2.0, "Name": 5, "NodeType": 7, "ctrl_deps": 4, "comm_type": 0, "comm_size": 4096,
             "pg_name": 0, "is_cpu_op": "no", "stream": "7"}
        ], "schema": "x"}"#;
        std::fs::write(&path, text).expect("written");
        let mut cols = NodeColumns::new();
        let header = read_chakra_json(&path, |n| cols.push(n)).expect("reads");
        assert_eq!(header, vec![("schema".to_owned(), "\"x\"".to_owned())]);
        assert_eq!(cols.id, vec![1, 2]);
        assert_eq!(cols.name, vec!["mm".to_owned(), "5".to_owned()]);
        assert_eq!(cols.dur_ns, vec![Some(5000), None]);
        assert_eq!(
            cols.data,
            FlatLists {
                offsets: vec![0, 3, 3],
                values: vec![7, 1, 2]
            }
        );
        assert_eq!(
            cols.ctrl,
            FlatLists {
                offsets: vec![0, 0, 1],
                values: vec![4]
            }
        );
        assert_eq!(cols.is_cpu, vec![false, true]);
        assert_eq!(cols.thread, vec![Some("n:3".to_owned()), Some("s:7".to_owned())]);
        assert_eq!((cols.flops[0], cols.tensor_size[0]), (Some(10.0), Some(64)));
        assert_eq!((cols.comm_type[1], cols.comm_size[1]), (Some(0), Some(4096)));
        assert_eq!(cols.pg_name, vec![None, Some("0".to_owned())]);
        // NaN and Infinity (Python's json writes them) read as null; deep attributes not read.
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        let text = format!(
            r#"{{"workload_graph": [{{"Id": 7, "NodeType": 4, "runtime": Infinity, "num_ops": NaN,
               "name_of_s\"NaN": "NaN", "shapes": {deep}}}]}}"#
        );
        std::fs::write(&path, text).expect("written");
        let mut cols = NodeColumns::new();
        read_chakra_json(&path, |n| cols.push(n)).expect("reads");
        assert_eq!(
            (cols.id.clone(), cols.dur_ns.clone(), cols.flops.clone()),
            (vec![7], vec![None], vec![None])
        );
        std::fs::write(&path, r#"{"workload_graph": [3]}"#).expect("written");
        let err = read_chakra_json(&path, |n| cols.push(n)).expect_err("not an object");
        assert!(err.contains("workload_graph[0] is not a node"), "{err}");
        std::fs::write(&path, r#"{"workload_graph": [{"Id": 1,}]}"#).expect("written");
        let err = read_chakra_json(&path, |n| cols.push(n)).expect_err("bad JSON");
        assert!(err.contains("not valid JSON: workload_graph[0]"), "{err}");
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, r#"{"workload_graph": [{"Name": "x"}]}"#).expect("written");
        let err = read_chakra_json(&path, |n| cols.push(n)).expect_err("no Id");
        assert!(
            err.contains("workload_graph[0] is not a node with an integer 'Id'"),
            "{err}"
        );
        let _ = std::fs::remove_file(&path);
    }
}
