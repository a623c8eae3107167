//! PyTorch execution-trace (ET) nodes as the pairing with Kineto traces reads them
//! (`tracesim.ingest.et_kineto`): id, name, record-function id, input shapes and types (as Kineto
//! writes them), and the tensor storages each node reads and writes. Streamed node by node
//! ([`crate::json_stream::ListReader`]), into columns.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, LargeListBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use serde_json::{Map, Value};

use crate::json_stream::ListReader;

/// The nodes of an ET file, and its other top-level fields as (key, JSON text).
pub struct EtNodes {
    /// One row per node, in file order: `id`, `name`, `rf_id` (null: none), `dims` (Kineto's
    /// `{"Input Dims": .., "Input type": ..}` of its inputs; null when the ET has no shapes and
    /// types of equal length), `inputs`/`outputs` (the storages of the tensors it reads and
    /// writes, as keys: equal keys are one (storage id, device)).
    pub nodes: RecordBatch,
    pub header: Vec<(String, String)>,
}

/// An integer as PyTorch writes ids: a JSON integer, or a string holding one.
fn int_field(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `Tensor(c10::Half)` → `c10::Half` (Kineto's `Input type`); anything else → "".
fn kineto_type(t: &Value) -> &str {
    t.as_str()
        .and_then(|s| s.strip_prefix("Tensor("))
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or("")
}

/// The attribute `key` of a node: from `attrs` ([{name, value}], the last of a name), else the
/// top-level field (schema 1.0.1). JSON null counts as absent.
fn attr<'v>(node: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    let from_attrs = node.get("attrs").and_then(Value::as_array).and_then(|attrs| {
        attrs
            .iter()
            .rev()
            .filter_map(Value::as_object)
            .find(|a| a.get("name").and_then(Value::as_str) == Some(key))
            .map(|a| a.get("value").unwrap_or(&Value::Null))
    });
    from_attrs.or_else(|| node.get(key)).filter(|v| !v.is_null())
}

/// Interns (storage id, device) pairs as keys.
#[derive(Default)]
struct Storages(HashMap<(String, String), i64>);

impl Storages {
    /// The storages of every tensor `[id, storage, offset, numel, elem size, device]` in `v`.
    fn collect(&mut self, v: &Value, out: &mut Vec<i64>) {
        let Value::Array(items) = v else { return };
        if let [Value::Number(_), Value::Number(storage), _, _, _, Value::String(device)] = items.as_slice() {
            let int = |v: &Value| v.is_i64() || v.is_u64();
            if int(&items[0]) && int(&items[1]) {
                let n = self.0.len() as i64;
                out.push(*self.0.entry((storage.to_string(), device.clone())).or_insert(n));
                return;
            }
        }
        for x in items {
            if x.is_array() {
                self.collect(x, out);
            }
        }
    }
}

/// Reads the nodes of a PyTorch ET JSON file (plain or gzip); errors name the file and the node.
pub fn read_et_nodes(path: &Path) -> Result<EtNodes, String> {
    let name = path.display().to_string();
    let mut reader = ListReader::open(path, vec!["nodes".to_owned()])?;
    reader.begin()?;
    if reader.found.is_none() {
        return Err(format!("{name}: not a PyTorch execution trace (no 'nodes' list)"));
    }
    let mut ids = Int64Builder::new();
    let mut names = StringBuilder::new();
    let mut rf_ids = Int64Builder::new();
    let mut dims = StringBuilder::new();
    let mut inputs = LargeListBuilder::new(Int64Builder::new());
    let mut outputs = LargeListBuilder::new(Int64Builder::new());
    let mut storages = Storages::default();
    let mut seen: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let mut i = 0usize;
    let mut buf: Vec<i64> = Vec::new();
    while let Some(elem) = reader.next_element()? {
        let v: Value = serde_json::from_slice(elem).map_err(|e| format!("{name}: not valid JSON: nodes[{i}]: {e}"))?;
        let Value::Object(node) = v else {
            return Err(format!("{name}: nodes[{i}] is not an object"));
        };
        let Some(nid) = node.get("id").filter(|v| !v.is_boolean()).and_then(int_field) else {
            return Err(format!("{name}: nodes[{i}]: 'id' is missing or not an integer"));
        };
        if !seen.insert(nid) {
            return Err(format!("{name}: nodes[{i}]: duplicate node id {nid}"));
        }
        let Some(op) = node.get("name").and_then(Value::as_str) else {
            return Err(format!("{name}: node {nid}: 'name' is missing or not a string"));
        };
        let rf = match attr(&node, "rf_id") {
            None => None,
            Some(raw) => match int_field(raw) {
                Some(rf) => Some(rf),
                None => return Err(format!("{name}: node {nid} ({op}): 'rf_id' is not an integer: {raw}")),
            },
        };
        // Schema 1.1: inputs {values, shapes, types}; 1.0: input_shapes/input_types beside them.
        let (shapes, types, ins) = match node.get("inputs") {
            Some(Value::Object(inp)) => (inp.get("shapes"), inp.get("types"), inp.get("values")),
            other => (node.get("input_shapes"), node.get("input_types"), other),
        };
        let outs = match node.get("outputs") {
            Some(Value::Object(o)) => o.get("values"),
            other => other,
        };
        ids.append_value(nid);
        names.append_value(op);
        rf_ids.append_option(rf);
        match (shapes, types) {
            (Some(Value::Array(s)), Some(Value::Array(t))) if s.len() == t.len() => {
                let types: Vec<&str> = t.iter().map(kineto_type).collect();
                let text = serde_json::to_string(&serde_json::json!({"Input Dims": s, "Input type": types}))
                    .map_err(|e| format!("{name}: node {nid}: {e}"))?;
                dims.append_value(text);
            }
            _ => dims.append_null(),
        }
        for (side, list) in [(ins, &mut inputs), (outs, &mut outputs)] {
            buf.clear();
            if let Some(v) = side {
                storages.collect(v, &mut buf);
            }
            list.values().append_slice(&buf);
            list.append(true);
        }
        i += 1;
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(ids.finish())),
        ("name", Arc::new(names.finish())),
        ("rf_id", Arc::new(rf_ids.finish())),
        ("dims", Arc::new(dims.finish())),
        ("inputs", Arc::new(inputs.finish())),
        ("outputs", Arc::new(outputs.finish())),
    ];
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let nodes = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|c| c.1).collect(),
    )
    .map_err(|e| format!("{name}: {e}"))?;
    debug_assert!(nodes.schema().field(0).data_type() == &DataType::Int64);
    Ok(EtNodes {
        nodes,
        header: reader.header.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_array::Array;

    fn read(text: &str) -> Result<EtNodes, String> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tracesim-et-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!("{n}.json"));
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        let out = read_et_nodes(&path);
        let _ = std::fs::remove_file(&path);
        out
    }

    #[test]
    fn nodes_shapes_and_storages() {
        let text = r#"{"schema": "1.1.0", "pid": 7, "nodes": [
            {"id": 3, "name": "aten::mm", "attrs": [{"name": "rf_id", "value": 11}],
             "inputs": {"values": [[1, 50, 0, 4, 2, "cuda:0"], [2, 51, 0, 4, 2, "cuda:0"]],
                        "shapes": [[2, 2], [2, 2]], "types": ["Tensor(c10::Half)", "Tensor(c10::Half)"]},
             "outputs": {"values": [[3, 52, 0, 4, 2, "cuda:0"]]}},
            {"id": 4, "name": "aten::relu", "rf_id": "12", "inputs": [[[3, 52, 0, 4, 2, "cuda:0"]]],
             "input_shapes": [[2, 2]], "input_types": ["Tensor(float)", "Int"], "outputs": []}
        ]}"#;
        let et = read(text).expect("reads");
        let b = &et.nodes;
        assert_eq!(b.num_rows(), 2);
        let rf = b.column(2).as_primitive::<Int64Type>();
        assert_eq!((rf.value(0), rf.value(1)), (11, 12));
        let dims = b.column(3).as_string::<i32>();
        assert_eq!(
            dims.value(0),
            r#"{"Input Dims":[[2,2],[2,2]],"Input type":["c10::Half","c10::Half"]}"#
        );
        assert!(dims.is_null(1)); // 1 shape, 2 types
        let ins = b.column(4).as_list::<i64>();
        let outs = b.column(5).as_list::<i64>();
        // storage 52 written by node 3 is the one node 4 reads.
        assert_eq!(outs.value(0).as_primitive::<Int64Type>().values(), &[2]);
        assert_eq!(ins.value(1).as_primitive::<Int64Type>().values(), &[2]);
        assert!(et.header.iter().any(|(k, v)| k == "pid" && v == "7"));
    }

    #[test]
    fn bad_nodes_name_the_node() {
        let cases = [
            (
                r#"{"nodes": [{"name": "x"}]}"#,
                "nodes[0]: 'id' is missing or not an integer",
            ),
            (
                r#"{"nodes": [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}]}"#,
                "duplicate node id 1",
            ),
            (r#"{"nodes": [{"id": 1}]}"#, "node 1: 'name' is missing"),
            (
                r#"{"nodes": [{"id": 4, "name": "aten::mm", "rf_id": "x1"}]}"#,
                "node 4 (aten::mm): 'rf_id' is not an integer",
            ),
            (r#"{"nodes": [3]}"#, "nodes[0] is not an object"),
            (r#"{"schema": "1.0"}"#, "not a PyTorch execution trace"),
            (r#"{"nodes": [{"id": 1, "name": "x"}"#, "not valid JSON"),
        ];
        for (text, msg) in cases {
            match read(text) {
                Err(e) => assert!(e.contains(msg), "{e} lacks {msg}"),
                Ok(_) => panic!("{text} read"),
            }
        }
    }
}
