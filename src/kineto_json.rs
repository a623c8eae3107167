//! Columnar reader of Kineto (PyTorch profiler) Chrome-trace JSON.
//!
//! The file is streamed: read (and gunzipped) in blocks, `traceEvents` cut into its elements by
//! a scanner that tracks strings and nesting, each element deserialised (borrowed) from its own
//! bytes into Arrow columns. The JSON text is never held whole, so memory is the columns plus one
//! block, and the Python ingester (`tracesim.ingest.kineto`) never sees the bytes. Times are
//! exact: the decimal text of `ts`/`dur` is scaled by 10^3 (µs → ns) and by 1 (already ns) into
//! i64 with round-half-even, as Python's `Decimal(text) * scale` then `to_integral_value()`.
//!
//! Values that the ingester compares or prints are given in the form Python's `str()` gives a
//! `json.loads` value (`"abc"` → `abc`, `null` → `None`, numbers as written), as the Python
//! ingester had them when it parsed the JSON itself (its reports and op names are unchanged).

use std::borrow::Cow;
use std::fmt;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Int64Builder, LargeStringBuilder, StringBuilder, StringViewBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::json_stream::{json_error, open, ScanError, Scanner};

/// Malformed input; the message names the file and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct KinetoJsonError(pub String);

/// A parsed Kineto file: the events as columns and the top-level fields the ingester reads.
#[derive(Debug)]
pub struct KinetoColumns {
    /// One row per `traceEvents` element that is a JSON object (see [`schema`]).
    pub events: RecordBatch,
    /// `displayTimeUnit`, when it is a string.
    pub display_time_unit: Option<String>,
    /// The JSON text of `distributedInfo`, when present.
    pub distributed_info: Option<String>,
    /// `traceEvents` elements that are not objects (numbers, strings, lists, null): not events.
    pub non_objects: u64,
}

/// The columns of [`KinetoColumns::events`].
///
/// The strings of every event are Utf8View, each distinct value held once; those of some events
/// only (`id`, `correlation`, `stream`) are Utf8 (4 bytes an event rather than 16), `args`
/// LargeUtf8 (whole `args` of every event can pass 2 GiB), and `shapes` a Utf8View of distinct
/// values. A `traceEvents` key given twice: the events of both lists (nothing is dropped).
///
/// - `ph`, `name`, `cat`, `pid`, `tid`: `str()` of the value (`name`/`cat` default `""`,
///   `ph`/`pid`/`tid` default `None`).
/// - `ts_us`/`dur_us`: the value × 1000 (µs → ns); `ts_ns`/`dur_ns`: × 1, rounded half-even;
///   null when not a number (or a string holding one); `dur` absent counts as 0.
///   `ts_text`/`dur_text`: the value was written with a fraction/exponent or as a string.
/// - `id`: the JSON text of `id` (flow events), null when absent.
/// - `correlation`: JSON text of `args.correlation`, null when absent or null.
/// - `stream`: `str()` of `args.stream`, null when absent.
/// - `bytes`: `args.bytes` as an integer (truncated), null when absent or not a number.
/// - `has_dims`: `args` has `Input Dims` or `Input dims`; `has_coll`: `args` has
///   `Collective name`.
/// - `shapes`: for events with dims, a JSON object of the `args` fields that give shapes
///   (`Input Dims`/`Input dims`, `Input type`/`Input types`, `Concrete Inputs`): a key for
///   events of equal shapes (their `args` differ in ids).
/// - `args`: the JSON text of `args` when the ingester needs more of it: events with collective
///   metadata and `record_param_comms`.
/// - With `keep_ids` only (the pairing with an execution trace): `rf_id`, `external_id`,
///   `concrete`: the JSON text of `args`' `Record function id`, `External id` and `Concrete
///   Inputs`, null when absent.
pub fn schema(keep_ids: bool) -> Schema {
    let s = |n: &str, null: bool| Field::new(n, DataType::Utf8View, null);
    let u = |n: &str| Field::new(n, DataType::Utf8, true);
    let i = |n: &str| Field::new(n, DataType::Int64, true);
    let b = |n: &str| Field::new(n, DataType::Boolean, false);
    let mut fields = vec![
        s("ph", false),
        s("name", false),
        s("cat", false),
        s("pid", false),
        s("tid", false),
        i("ts_us"),
        i("ts_ns"),
        b("ts_text"),
        i("dur_us"),
        i("dur_ns"),
        b("dur_text"),
        u("id"),
        u("correlation"),
        u("stream"),
        i("bytes"),
        b("has_dims"),
        b("has_coll"),
        Field::new("args", DataType::LargeUtf8, true),
        s("shapes", true),
    ];
    if keep_ids {
        fields.extend([u("rf_id"), u("external_id"), u("concrete")]);
    }
    Schema::new(fields)
}

/// Reads a Kineto trace file, plain or gzip (by its magic bytes), streaming.
pub fn read_kineto_file(path: &Path, keep_ids: bool) -> Result<KinetoColumns, KinetoJsonError> {
    let name = path.display().to_string();
    let (reader, io_what) = open(path).map_err(KinetoJsonError)?;
    read_stream(reader, &name, keep_ids, io_what)
}

/// Reads a Kineto trace's JSON text. `path` only names the file in errors.
#[cfg(test)]
pub fn read_kineto(text: &[u8], path: &str, keep_ids: bool) -> Result<KinetoColumns, KinetoJsonError> {
    read_stream(text, path, keep_ids, "cannot read")
}

/// `io_what`: how a read error is described (a gzip stream's errors are its corruption).
fn read_stream<R: BufRead>(
    reader: R,
    path: &str,
    keep_ids: bool,
    io_what: &str,
) -> Result<KinetoColumns, KinetoJsonError> {
    let mut cols = Builders::new(keep_ids);
    let mut scan = Scanner::new(reader);
    let top = read_top(&mut scan, &mut cols).map_err(|e| match e {
        ScanError::Io(e) => KinetoJsonError(format!("{path}: {io_what}: {e}")),
        ScanError::Json(m) => KinetoJsonError(format!("{path}: not valid JSON: {m}")),
    })?;
    if let Some(e) = cols.error.take() {
        return Err(KinetoJsonError(format!("{path}: {e}")));
    }
    if !top.has_events {
        return Err(KinetoJsonError(format!(
            "{path}: not a Chrome trace (no 'traceEvents' list)"
        )));
    }
    let events = cols.finish().map_err(|e| KinetoJsonError(format!("{path}: {e}")))?;
    Ok(KinetoColumns {
        events,
        display_time_unit: top.display_time_unit,
        distributed_info: top.distributed_info,
        non_objects: cols.non_objects,
    })
}

// ---------------------------------------------------------------------------------------------
// Streaming: the top level and `traceEvents` by hand, each value they hold by serde_json.

#[derive(Default)]
struct Top {
    has_events: bool,
    display_time_unit: Option<String>,
    distributed_info: Option<String>,
}

/// The whole text: an object whose `traceEvents` list is streamed (its other values are read
/// whole: they are small), or a bare list of events.
fn read_top<R: BufRead>(scan: &mut Scanner<R>, cols: &mut Builders) -> Result<Top, ScanError> {
    let mut top = Top::default();
    let mut buf = Vec::new();
    match scan.peek()? {
        Some(b'{') => {
            scan.consume(1);
            let mut first = true;
            while let Some(key) = scan.next_key(first, &mut buf)? {
                first = false;
                if key == "traceEvents" && scan.peek()? == Some(b'[') {
                    read_events(scan, cols, &mut buf)?;
                    top.has_events = true;
                    continue;
                }
                let at = scan.value(&mut buf)?;
                let raw: &RawValue = serde_json::from_slice(&buf).map_err(|e| json_error(&e, at))?;
                match key.as_str() {
                    "displayTimeUnit" => top.display_time_unit = json_str(raw).map(Cow::into_owned),
                    "distributedInfo" => top.distributed_info = Some(raw.get().to_owned()),
                    _ => {}
                }
            }
        }
        Some(b'[') => {
            read_events(scan, cols, &mut buf)?;
            top.has_events = true;
        }
        _ => {
            let at = scan.value(&mut buf)?;
            serde_json::from_slice::<IgnoredAny>(&buf).map_err(|e| json_error(&e, at))?;
        }
    }
    scan.end()?;
    Ok(top)
}

/// `traceEvents`, from its `[`: each object element becomes a row, other elements are skipped.
fn read_events<R: BufRead>(scan: &mut Scanner<R>, cols: &mut Builders, buf: &mut Vec<u8>) -> Result<(), ScanError> {
    scan.consume(1);
    if scan.peek()? == Some(b']') {
        scan.consume(1);
        return Ok(());
    }
    let mut n = 0usize;
    loop {
        let at = scan.value(buf)?;
        let Element(ev) = serde_json::from_slice::<Element<'_>>(buf)
            .map_err(|e| ScanError::Json(format!("traceEvents[{n}]: {e} (in the value from byte {at})")))?;
        match ev {
            None => cols.non_objects += 1,
            Some(ev) if cols.error.is_none() => {
                let args = match ev.args.filter(|a| a.get().starts_with('{')) {
                    Some(a) => serde_json::from_str::<Args<'_>>(a.get()),
                    None => Ok(Args::default()),
                };
                match args {
                    Ok(args) => cols.push(&ev, &args),
                    Err(e) => cols.error = Some(format!("traceEvents[{n}].args: {e}")),
                }
            }
            Some(_) => {}
        }
        match scan.peek()? {
            Some(b',') => scan.consume(1),
            Some(b']') => {
                scan.consume(1);
                return Ok(());
            }
            Some(_) => return Err(scan.error("expected ',' or ']' after a trace event")),
            None => return Err(scan.error("EOF while parsing a list")),
        }
        n += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Decimal text → scaled integer.

#[derive(Clone, Copy, PartialEq)]
enum Round {
    HalfEven,
    Trunc,
}

/// `text` (a JSON number: `-?digits(.digits)?([eE][+-]?digits)?`) × 10^`pow10` as an i64, rounded;
/// None when it is not such a number or does not fit.
fn scaled(text: &str, pow10: i32, round: Round) -> Option<i64> {
    let b = text.as_bytes();
    let mut i = 0;
    let neg = b.first() == Some(&b'-');
    if neg || b.first() == Some(&b'+') {
        i += 1;
    }
    let mut mant: i128 = 0;
    let mut digits = 0usize;
    let mut exp: i64 = 0;
    let mut any = false;
    while i < b.len() && b[i].is_ascii_digit() {
        any = true;
        if mant != 0 || b[i] != b'0' {
            digits += 1;
        }
        if digits > 36 {
            return None;
        }
        mant = mant * 10 + i128::from(b[i] - b'0');
        i += 1;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            any = true;
            if mant != 0 || b[i] != b'0' {
                digits += 1;
            }
            if digits > 36 {
                return None;
            }
            mant = mant * 10 + i128::from(b[i] - b'0');
            exp -= 1;
            i += 1;
        }
    }
    if !any {
        return None;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        let eneg = b.get(i) == Some(&b'-');
        if eneg || b.get(i) == Some(&b'+') {
            i += 1;
        }
        let mut e: i64 = 0;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            e = e.saturating_mul(10).saturating_add(i64::from(b[i] - b'0'));
            i += 1;
        }
        if i == start {
            return None;
        }
        exp = exp.saturating_add(if eneg { -e } else { e });
    }
    if i != b.len() {
        return None;
    }
    let exp = exp.saturating_add(i64::from(pow10));
    let v: i128 = if mant == 0 {
        0
    } else if exp >= 0 {
        let mut v = mant;
        for _ in 0..exp {
            v = v.checked_mul(10)?;
            if v > i128::from(i64::MAX) {
                return None;
            }
        }
        v
    } else if exp < -38 {
        0 // below half a unit
    } else {
        let d = 10i128.pow(u32::try_from(-exp).ok()?);
        let (q, r) = (mant / d, mant % d);
        match round {
            Round::Trunc => q,
            Round::HalfEven => {
                if 2 * r > d || (2 * r == d && q % 2 == 1) {
                    q + 1
                } else {
                    q
                }
            }
        }
    };
    let v = if neg { -v } else { v };
    i64::try_from(v).ok()
}

/// The string a JSON string token holds; None for other tokens.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    if raw.get().starts_with('"') {
        serde_json::from_str::<Cow<'_, str>>(raw.get()).ok()
    } else {
        None
    }
}

/// Python's `str()` of the `json.loads` value (numbers as written: floats are read as text).
fn py_str(raw: &RawValue) -> Cow<'_, str> {
    if let Some(s) = json_str(raw) {
        return s;
    }
    match raw.get() {
        "null" => Cow::Borrowed("None"),
        "true" => Cow::Borrowed("True"),
        "false" => Cow::Borrowed("False"),
        t => Cow::Borrowed(t),
    }
}

/// A time: (× 1000, × 1, written as text). Numbers and strings holding numbers; else None.
fn time_of(raw: &RawValue) -> (Option<i64>, Option<i64>, bool) {
    let (txt, is_text): (Cow<'_, str>, bool) = match json_str(raw) {
        Some(s) => (Cow::Owned(s.trim().to_owned()), true),
        None => {
            let t = raw.get();
            if t == "null" || t == "true" || t == "false" || t.starts_with(['[', '{']) {
                return (None, None, false);
            }
            (Cow::Borrowed(t), t.contains(['.', 'e', 'E']))
        }
    };
    (
        scaled(&txt, 3, Round::HalfEven),
        scaled(&txt, 0, Round::HalfEven),
        is_text,
    )
}

// ---------------------------------------------------------------------------------------------
// Deserialisation.

/// The fields of one event that the ingester reads, as raw JSON (a key given twice: the last).
#[derive(Default)]
struct Event<'a> {
    ph: Option<&'a RawValue>,
    name: Option<&'a RawValue>,
    cat: Option<&'a RawValue>,
    pid: Option<&'a RawValue>,
    tid: Option<&'a RawValue>,
    ts: Option<&'a RawValue>,
    dur: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    args: Option<&'a RawValue>,
}

/// A `traceEvents` element: Some(event) for an object, None for anything else (skipped).
struct Element<'a>(Option<Event<'a>>);

impl<'de> Deserialize<'de> for Element<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

macro_rules! skip_scalar {
    ($($f:ident: $t:ty),*) => {
        $(fn $f<E: serde::de::Error>(self, _v: $t) -> Result<Self::Value, E> {
            Ok(Element(None))
        })*
    };
}

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = Element<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a trace event")
    }
    skip_scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Element(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Element(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let [ph, name, cat, pid, tid, ts, dur, id, args] = raw_fields(
            &mut map,
            &["ph", "name", "cat", "pid", "tid", "ts", "dur", "id", "args"],
        )?;
        Ok(Element(Some(Event {
            ph,
            name,
            cat,
            pid,
            tid,
            ts,
            dur,
            id,
            args,
        })))
    }
}

/// The raw JSON of the fields `keys` of an object (a key given twice: the last); the others are
/// skipped unread.
fn raw_fields<'de, A: MapAccess<'de>, const N: usize>(
    map: &mut A,
    keys: &[&str; N],
) -> Result<[Option<&'de RawValue>; N], A::Error> {
    let mut out = [None; N];
    while let Some(key) = map.next_key::<Cow<'de, str>>()? {
        match keys.iter().position(|k| *k == key).and_then(|i| out.get_mut(i)) {
            Some(slot) => *slot = Some(map.next_value::<&'de RawValue>()?),
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(out)
}

/// The `args` fields the ingester reads, as raw JSON (a key given twice: the last).
#[derive(Default)]
struct Args<'a> {
    correlation: Option<&'a RawValue>,
    stream: Option<&'a RawValue>,
    bytes: Option<&'a RawValue>,
    dims: Option<&'a RawValue>,
    dims_lower: Option<&'a RawValue>,
    types: Option<&'a RawValue>,
    types_plural: Option<&'a RawValue>,
    concrete: Option<&'a RawValue>,
    coll: Option<&'a RawValue>,
    rf_id: Option<&'a RawValue>,
    external_id: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Args<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ArgsVisitor)
    }
}

struct ArgsVisitor;

impl<'de> Visitor<'de> for ArgsVisitor {
    type Value = Args<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an args object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let [correlation, stream, bytes, dims, dims_lower, types, types_plural, concrete, coll, rf_id, external_id] =
            raw_fields(
                &mut map,
                &[
                    "correlation",
                    "stream",
                    "bytes",
                    "Input Dims",
                    "Input dims",
                    "Input type",
                    "Input types",
                    "Concrete Inputs",
                    "Collective name",
                    "Record function id",
                    "External id",
                ],
            )?;
        Ok(Args {
            correlation,
            stream,
            bytes,
            dims,
            dims_lower,
            types,
            types_plural,
            concrete,
            coll,
            rf_id,
            external_id,
        })
    }
}

/// The shape fields of `args` as a JSON object, keys in a fixed order.
fn shapes_of(args: &Args<'_>) -> String {
    let mut out = String::from("{");
    let fields = [
        ("Input Dims", args.dims),
        ("Input dims", args.dims_lower),
        ("Input type", args.types),
        ("Input types", args.types_plural),
        ("Concrete Inputs", args.concrete),
    ];
    for (key, v) in fields {
        if let Some(v) = v {
            if out.len() > 1 {
                out.push_str(", ");
            }
            out.push('"');
            out.push_str(key);
            out.push_str("\": ");
            out.push_str(v.get());
        }
    }
    out.push('}');
    out
}

struct Builders {
    keep_ids: bool,
    ph: StringViewBuilder,
    name: StringViewBuilder,
    cat: StringViewBuilder,
    pid: StringViewBuilder,
    tid: StringViewBuilder,
    ts_us: Int64Builder,
    ts_ns: Int64Builder,
    ts_text: BooleanBuilder,
    dur_us: Int64Builder,
    dur_ns: Int64Builder,
    dur_text: BooleanBuilder,
    id: StringBuilder,
    correlation: StringBuilder,
    stream: StringBuilder,
    bytes: Int64Builder,
    has_dims: BooleanBuilder,
    has_coll: BooleanBuilder,
    args: LargeStringBuilder,
    shapes: StringViewBuilder,
    rf_id: StringBuilder,
    external_id: StringBuilder,
    concrete: StringBuilder,
    non_objects: u64,
    error: Option<String>,
}

impl Builders {
    fn new(keep_ids: bool) -> Self {
        Builders {
            keep_ids,
            ph: StringViewBuilder::new().with_deduplicate_strings(),
            name: StringViewBuilder::new().with_deduplicate_strings(),
            cat: StringViewBuilder::new().with_deduplicate_strings(),
            pid: StringViewBuilder::new().with_deduplicate_strings(),
            tid: StringViewBuilder::new().with_deduplicate_strings(),
            ts_us: Int64Builder::new(),
            ts_ns: Int64Builder::new(),
            ts_text: BooleanBuilder::new(),
            dur_us: Int64Builder::new(),
            dur_ns: Int64Builder::new(),
            dur_text: BooleanBuilder::new(),
            id: StringBuilder::new(),
            correlation: StringBuilder::new(),
            stream: StringBuilder::new(),
            bytes: Int64Builder::new(),
            has_dims: BooleanBuilder::new(),
            has_coll: BooleanBuilder::new(),
            args: LargeStringBuilder::new(),
            shapes: StringViewBuilder::new().with_deduplicate_strings(),
            rf_id: StringBuilder::new(),
            external_id: StringBuilder::new(),
            concrete: StringBuilder::new(),
            non_objects: 0,
            error: None,
        }
    }

    fn push(&mut self, ev: &Event<'_>, args: &Args<'_>) {
        fn str_or<'v>(v: Option<&'v RawValue>, d: &'static str) -> Cow<'v, str> {
            v.map_or(Cow::Borrowed(d), py_str)
        }
        let name = str_or(ev.name, "");
        self.ph.append_value(str_or(ev.ph, "None"));
        self.cat.append_value(str_or(ev.cat, ""));
        self.pid.append_value(str_or(ev.pid, "None"));
        self.tid.append_value(str_or(ev.tid, "None"));
        let (us, ns, text) = ev.ts.map_or((None, None, false), time_of);
        self.ts_us.append_option(us);
        self.ts_ns.append_option(ns);
        self.ts_text.append_value(text);
        let (us, ns, text) = ev.dur.map_or((Some(0), Some(0), false), time_of);
        self.dur_us.append_option(us);
        self.dur_ns.append_option(ns);
        self.dur_text.append_value(text);
        self.id.append_option(ev.id.map(RawValue::get));
        self.correlation
            .append_option(args.correlation.map(RawValue::get).filter(|c| *c != "null"));
        self.stream.append_option(args.stream.map(py_str));
        self.bytes.append_option(args.bytes.and_then(|b| {
            let t = match json_str(b) {
                Some(s) => Cow::Owned(s.trim().to_owned()),
                None => Cow::Borrowed(b.get()),
            };
            scaled(&t, 0, Round::Trunc)
        }));
        let dims = args.dims.is_some() || args.dims_lower.is_some();
        self.has_dims.append_value(dims);
        self.has_coll.append_value(args.coll.is_some());
        let want = args.coll.is_some() || name == "record_param_comms";
        self.args
            .append_option(ev.args.filter(|a| want && a.get().starts_with('{')).map(RawValue::get));
        self.shapes.append_option(dims.then(|| shapes_of(args)));
        if self.keep_ids {
            let text = |v: Option<&'_ RawValue>| v.map(|v| v.get().to_owned()).filter(|t| t != "null");
            self.rf_id.append_option(text(args.rf_id));
            self.external_id.append_option(text(args.external_id));
            self.concrete.append_option(text(args.concrete));
        }
        self.name.append_value(name);
    }

    fn finish(&mut self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.ph.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.cat.finish()),
            Arc::new(self.pid.finish()),
            Arc::new(self.tid.finish()),
            Arc::new(self.ts_us.finish()),
            Arc::new(self.ts_ns.finish()),
            Arc::new(self.ts_text.finish()),
            Arc::new(self.dur_us.finish()),
            Arc::new(self.dur_ns.finish()),
            Arc::new(self.dur_text.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.correlation.finish()),
            Arc::new(self.stream.finish()),
            Arc::new(self.bytes.finish()),
            Arc::new(self.has_dims.finish()),
            Arc::new(self.has_coll.finish()),
            Arc::new(self.args.finish()),
            Arc::new(self.shapes.finish()),
        ];
        if self.keep_ids {
            cols.push(Arc::new(self.rf_id.finish()));
            cols.push(Arc::new(self.external_id.finish()));
            cols.push(Arc::new(self.concrete.finish()));
        }
        RecordBatch::try_new(Arc::new(schema(self.keep_ids)), cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, BooleanArray, Int64Array, LargeStringArray, StringArray, StringViewArray};

    fn col<'b, T: 'static>(b: &'b RecordBatch, n: &str) -> &'b T {
        b.column_by_name(n)
            .and_then(|c| c.as_any().downcast_ref::<T>())
            .expect("column")
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(
            scaled("1700000000123456.789", 3, Round::HalfEven),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(scaled("0.0005", 3, Round::HalfEven), Some(0));
        assert_eq!(scaled("0.0015", 3, Round::HalfEven), Some(2));
        assert_eq!(scaled("-2.5", 0, Round::HalfEven), Some(-2));
        assert_eq!(scaled("1.5e3", 0, Round::HalfEven), Some(1500));
        assert_eq!(scaled("12.9", 0, Round::Trunc), Some(12));
        assert_eq!(scaled("-12.9", 0, Round::Trunc), Some(-12));
        assert_eq!(scaled("1e400", 0, Round::HalfEven), None);
        assert_eq!(scaled("1e-400", 0, Round::HalfEven), Some(0));
        assert_eq!(scaled("abc", 3, Round::HalfEven), None);
        assert_eq!(scaled("", 3, Round::HalfEven), None);
        assert_eq!(scaled("1.", 3, Round::HalfEven), Some(1000));
    }

    #[test]
    fn reads_events_into_columns() {
        let text = br#"{"displayTimeUnit": "ns", "distributedInfo": {"rank": 3},
          "traceEvents": [
            {"ph": "X", "cat": "kernel", "name": "k\"1", "pid": 0, "tid": "stream 7",
             "ts": 1700000000123456.789, "dur": 2, "args": {"correlation": 5, "stream": 7}},
            {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 2, "ts": "10",
             "args": {"Input Dims": [[2, 3]], "bytes": "12.5", "Record function id": 9, "External id": null}},
            {"ph": "f", "id": "x", "ts": null, "name": null},
            3, "text"
          ], "other": [1, 2]}"#;
        let out = read_kineto(text, "f.json", false).expect("reads");
        assert_eq!(out.display_time_unit.as_deref(), Some("ns"));
        assert_eq!(out.distributed_info.as_deref(), Some(r#"{"rank": 3}"#));
        let b = &out.events;
        assert_eq!(b.num_rows(), 3);
        assert_eq!(out.non_objects, 2);
        let name = col::<StringViewArray>(b, "name");
        assert_eq!(name.value(0), "k\"1");
        assert_eq!(name.value(2), "None");
        assert_eq!(col::<StringViewArray>(b, "tid").value(0), "stream 7");
        assert_eq!(col::<StringViewArray>(b, "ph").value(1), "X");
        let ts = col::<Int64Array>(b, "ts_us");
        assert_eq!(ts.value(0), 1_700_000_000_123_456_789);
        assert_eq!(ts.value(1), 10_000);
        assert!(ts.is_null(2));
        assert!(col::<BooleanArray>(b, "ts_text").value(0));
        assert!(col::<BooleanArray>(b, "ts_text").value(1));
        let dur = col::<Int64Array>(b, "dur_ns");
        assert_eq!((dur.value(0), dur.value(1)), (2, 0));
        assert_eq!(col::<StringArray>(b, "correlation").value(0), "5");
        assert_eq!(col::<StringArray>(b, "stream").value(0), "7");
        assert!(col::<StringArray>(b, "stream").is_null(1));
        assert_eq!(col::<Int64Array>(b, "bytes").value(1), 12);
        assert!(col::<BooleanArray>(b, "has_dims").value(1));
        let args = col::<LargeStringArray>(b, "args");
        assert!(args.is_null(0));
        assert!(args.is_null(1)); // its shapes are enough
        assert!(b.column_by_name("rf_id").is_none()); // only with keep_ids
        let kept = read_kineto(text, "f.json", true).expect("reads");
        assert_eq!(col::<StringArray>(&kept.events, "rf_id").value(1), "9");
        assert!(col::<StringArray>(&kept.events, "external_id").is_null(1)); // null is absent
        assert!(col::<StringArray>(&kept.events, "concrete").is_null(1));
        let shapes = col::<StringViewArray>(b, "shapes");
        assert_eq!(shapes.value(1), r#"{"Input Dims": [[2, 3]]}"#);
        assert!(shapes.is_null(0));
        assert_eq!(col::<StringArray>(b, "id").value(2), r#""x""#);
    }

    #[test]
    fn top_level_list_and_errors() {
        let out = read_kineto(br#"[{"ph": "X"}]"#, "a.json", true).expect("reads");
        assert_eq!(out.events.num_rows(), 1);
        let e = read_kineto(br#"{"traceEvents": {}}"#, "b.json", false).unwrap_err();
        assert!(e.0.contains("b.json: not a Chrome trace"), "{e}");
        let e = read_kineto(br#"{"other": 1}"#, "c.json", false).unwrap_err();
        assert!(e.0.contains("no 'traceEvents'"), "{e}");
        let e = read_kineto(br#"{"traceEvents": [{"ph": "X",}]}"#, "d.json", false).unwrap_err();
        assert!(e.0.starts_with("d.json: not valid JSON"), "{e}");
        let e = read_kineto(b"{\"traceEvents\": [\xff]}", "e.json", false).unwrap_err();
        assert!(e.0.starts_with("e.json: not valid JSON"), "{e}");
        let out = read_kineto(br#"{"traceEvents": [{"ph": 1, "ph": "X"}]}"#, "g.json", false)
            .expect("a key given twice: the last");
        assert_eq!(col::<StringViewArray>(&out.events, "ph").value(0), "X");
        let e = read_kineto(br#"{"traceEvents": []} x"#, "h.json", false).unwrap_err();
        assert!(e.0.contains("h.json"), "{e}");
    }

    /// What a read gives, to compare two reads.
    fn dump(out: &KinetoColumns) -> (RecordBatch, Option<String>, Option<String>, u64) {
        (
            out.events.clone(),
            out.display_time_unit.clone(),
            out.distributed_info.clone(),
            out.non_objects,
        )
    }

    const SAMPLE: &[u8] = br#"  {"deviceProperties": [{"name": "A100 \"x\" ]}"}], "displayTimeUnit": "ms",
      "traceEvents": [ {"ph": "X", "cat": "kernel", "name": "k\\\"]}{[", "pid": 0, "tid": 7,
        "ts": 10.5, "dur": 2, "args": {"correlation": 5, "stream": 7, "note": "a]\"}"}} ,
        [1, {"x": "]"}], "}", 17, null, true,
        {"ph": "i", "name": "\u00e9\ud83d\ude00", "ts": "3", "args": {"Input Dims": [[1]]}}
      ] , "traceName": "x", "distributedInfo": {"rank": 1, "pg": "[0]"} }  "#;

    #[test]
    fn any_block_size_reads_the_same() {
        let whole = read_kineto(SAMPLE, "s.json", true).expect("reads");
        assert_eq!(whole.events.num_rows(), 2);
        let expect = dump(&whole);
        for cap in [1, 2, 3, 5, 7, 16, 64] {
            let r = std::io::BufReader::with_capacity(cap, SAMPLE);
            let got = read_stream(r, "s.json", true, "cannot read").expect("reads");
            assert_eq!(dump(&got), expect, "block of {cap} bytes");
        }
    }

    #[test]
    fn files_plain_and_gzip() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("tracesim-kineto-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let plain = dir.join("t.json");
        std::fs::write(&plain, SAMPLE).expect("write");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(SAMPLE).expect("gzip");
        let gz_bytes = enc.finish().expect("gzip");
        let gz = dir.join("t.json.gz");
        std::fs::write(&gz, &gz_bytes).expect("write");
        let a = read_kineto_file(&plain, true).expect("plain");
        let b = read_kineto_file(&gz, true).expect("gzip");
        assert_eq!(dump(&a), dump(&b));
        // cut short: the gzip stream's error, naming the file
        let cut = dir.join("cut.json.gz");
        std::fs::write(&cut, &gz_bytes[..gz_bytes.len() - 8]).expect("write");
        let e = read_kineto_file(&cut, false).unwrap_err();
        assert!(e.0.contains("cut.json.gz: not a readable gzip file"), "{e}");
        let bad = dir.join("bad.json.gz");
        std::fs::write(&bad, b"\x1f\x8b\x08\x00garbage-garbage-garbage").expect("write");
        let e = read_kineto_file(&bad, false).unwrap_err();
        assert!(e.0.contains("bad.json.gz: not a readable gzip file"), "{e}");
        let e = read_kineto_file(&dir.join("missing.json"), false).unwrap_err();
        assert!(e.0.ends_with("missing.json: no such file"), "{e}");
        let trunc = dir.join("trunc.json");
        std::fs::write(&trunc, &SAMPLE[..SAMPLE.len() / 2]).expect("write");
        let e = read_kineto_file(&trunc, false).unwrap_err();
        assert!(e.0.contains("trunc.json: not valid JSON: EOF"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn structure_errors() {
        for (text, what) in [
            (
                &br#"{"traceEvents": [{"ph": "X"} {"ph": "X"}]}"#[..],
                "expected ',' or ']'",
            ),
            (br#"{"traceEvents": [{"ph": "X"},]}"#, "traceEvents[1]"),
            (br#"{"a": 1 "traceEvents": []}"#, "expected ',' or '}'"),
            (br#"{1: 2}"#, "key must be a string"),
            (br#"{"traceEvents" []}"#, "expected ':'"),
            (br#"{"traceEvents": [{"ph": "X"}"#, "EOF"),
            (br#"{"x": [1, }"#, "in the value from byte 6"),
            (b"", "EOF"),
        ] {
            let e = read_kineto(text, "x.json", false).unwrap_err();
            assert!(e.0.starts_with("x.json: not valid JSON"), "{e}");
            assert!(e.0.contains(what), "{e} (wanted {what})");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Any bytes, and any cut or change of a valid trace: an error or columns, never a panic;
        /// and the same answer whatever the block size.
        #[test]
        fn never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            cut in 0usize..SAMPLE.len(),
            at in 0usize..SAMPLE.len(),
            byte in proptest::prelude::any::<u8>(),
            cap in 1usize..32,
        ) {
            let mut changed = SAMPLE.to_vec();
            changed[at] = byte;
            for text in [&bytes[..], &SAMPLE[..cut], &changed[..]] {
                let whole = read_kineto(text, "f.json", false);
                let blocks = read_stream(std::io::BufReader::with_capacity(cap, text), "f.json", false, "cannot read");
                match (whole, blocks) {
                    (Ok(a), Ok(b)) => proptest::prop_assert_eq!(dump(&a), dump(&b)),
                    (Err(a), Err(b)) => proptest::prop_assert_eq!(a, b),
                    (a, b) => proptest::prop_assert!(false, "{:?} vs {:?}", a.is_ok(), b.is_ok()),
                }
            }
        }
    }
}
