//! A decoder of Chakra execution traces in protobuf (`et_def.proto`, package `ChakraProtoMsg`),
//! written against the wire format (no protobuf dependency): a file is varint-length-delimited
//! records, a `GlobalMetadata` then `Node`s. `tracesim.ingest.chakra` maps the nodes to ops.
//!
//! Every error names the byte offset in the (gunzipped) file. Integers are kept exact: varints
//! are read to 70 bits as the reference reader does, into `i128`.

/// An `AttributeProto` value (its `oneof`), or a list of them (the `*List` messages).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Float(f64),
    Int(i128),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<AttrValue>),
    /// A field of a type this decoder does not know for its number.
    Unknown,
}

/// One `Node` record.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PbNode {
    pub id: i128,
    pub name: String,
    /// None: absent (INVALID_NODE).
    pub node_type: Option<i128>,
    pub ctrl_deps: Vec<i128>,
    pub data_deps: Vec<i128>,
    pub start_us: Option<i128>,
    pub dur_us: Option<i128>,
    /// `inputs.values` (METADATA nodes carry the process groups there).
    pub inputs: String,
    /// (name, value), in record order (a name given twice: both, the last wins when read).
    pub attrs: Vec<(String, AttrValue)>,
}

/// Attributes (name, value) in record order.
pub type Attrs = Vec<(String, AttrValue)>;

/// The metadata attributes and the nodes of a file.
pub type Decoded = (Attrs, Vec<PbNode>);

/// A wire-format error: (byte offset, what).
pub type WireError = (usize, String);

/// A field's value: an integer (wire types 0, 1, 5) or a byte range (2).
#[derive(Clone, Copy)]
enum Field {
    Int(u128),
    Span(usize, usize),
}

struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8], start: usize, end: usize) -> Self {
        Wire { buf, pos: start, end }
    }

    fn varint(&mut self) -> Result<u128, WireError> {
        let start = self.pos;
        let (mut result, mut shift) = (0u128, 0u32);
        loop {
            let Some(&b) = self.buf.get(self.pos).filter(|_| self.pos < self.end) else {
                return Err((start, "truncated varint".to_owned()));
            };
            self.pos += 1;
            result |= u128::from(b & 0x7F) << shift;
            if b < 0x80 {
                return Ok(result);
            }
            shift += 7;
            if shift >= 70 {
                return Err((start, "varint longer than 10 bytes".to_owned()));
            }
        }
    }

    fn take(&mut self, n: u128) -> Result<(usize, usize), WireError> {
        let start = self.pos;
        match usize::try_from(n).ok().and_then(|n| start.checked_add(n)) {
            Some(stop) if stop <= self.end => {
                self.pos = stop;
                Ok((start, stop))
            }
            _ => Err((
                start,
                format!("field of {n} bytes runs past the end of its message (at {})", self.end),
            )),
        }
    }

    fn fixed(&mut self, n: usize) -> Result<u128, WireError> {
        let (s, e) = self.take(n as u128)?;
        Ok(self.buf[s..e]
            .iter()
            .rev()
            .fold(0u128, |acc, &b| (acc << 8) | u128::from(b)))
    }

    /// The next field: (number, wire type, value, offset after it); None at the end.
    fn field(&mut self) -> Result<Option<(u128, u8, Field)>, WireError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let (num, wt) = (key >> 3, (key & 7) as u8);
        if num == 0 {
            return Err((at, "field number 0 (not a protobuf message)".to_owned()));
        }
        let value = match wt {
            0 => Field::Int(self.varint()?),
            1 => Field::Int(self.fixed(8)?),
            5 => Field::Int(self.fixed(4)?),
            2 => {
                let n = self.varint()?;
                let (s, e) = self.take(n)?;
                Field::Span(s, e)
            }
            _ => return Err((at, format!("unsupported wire type {wt} (field {num})"))),
        };
        Ok(Some((num, wt, value)))
    }
}

fn signed64(v: u128) -> i128 {
    let v = v as i128;
    if v >= 1 << 63 {
        v - (1 << 64)
    } else {
        v
    }
}

fn zigzag(v: u128) -> i128 {
    ((v >> 1) as i128) ^ -((v & 1) as i128)
}

fn text(buf: &[u8], s: usize, e: usize) -> String {
    String::from_utf8_lossy(&buf[s..e]).into_owned()
}

/// One scalar of the `oneof` (field numbers 3..31, odd).
fn scalar(num: u128, wt: u8, v: Field, buf: &[u8]) -> AttrValue {
    match (num, wt, v) {
        (3, 1, Field::Int(v)) => AttrValue::Float(f64::from_bits(v as u64)),
        (5, 5, Field::Int(v)) => AttrValue::Float(f64::from(f32::from_bits(v as u32))),
        // int32/int64: negative values are sign-extended to 64 bits
        (7 | 9, 0, Field::Int(v)) => AttrValue::Int(signed64(v)),
        (11 | 13, 0, Field::Int(v)) => AttrValue::Int(v as i128),
        (15 | 17, 0, Field::Int(v)) => AttrValue::Int(zigzag(v)),
        (19 | 21, _, Field::Int(v)) => AttrValue::Int(v as i128),
        (23, 5, Field::Int(v)) => {
            let v = v as i128;
            AttrValue::Int(if v >= 1 << 31 { v - (1 << 32) } else { v })
        }
        (25, 1, Field::Int(v)) => AttrValue::Int(signed64(v)),
        (27, 0, Field::Int(v)) => AttrValue::Bool(v != 0),
        (29, 2, Field::Span(s, e)) => AttrValue::Str(text(buf, s, e)),
        (31, 2, Field::Span(s, e)) => AttrValue::Bytes(buf[s..e].to_vec()),
        _ => AttrValue::Unknown,
    }
}

/// A `*List` message (field `num`, even): repeated `values = 1`, packed (numeric) or not.
fn list(num: u128, s: usize, e: usize, buf: &[u8]) -> Result<AttrValue, WireError> {
    let elem = num - 1; // the scalar oneof number of the same type
    let mut out = Vec::new();
    let mut sub = Wire::new(buf, s, e);
    while let Some((fnum, wt, v)) = sub.field()? {
        if fnum != 1 {
            continue;
        }
        match v {
            Field::Span(ps, pe) if elem != 29 && elem != 31 => {
                let mut p = Wire::new(buf, ps, pe);
                while p.pos < p.end {
                    out.push(match elem {
                        3 | 21 | 25 => scalar(elem, 1, Field::Int(p.fixed(8)?), buf),
                        5 | 19 | 23 => scalar(elem, 5, Field::Int(p.fixed(4)?), buf),
                        _ => scalar(elem, 0, Field::Int(p.varint()?), buf),
                    });
                }
            }
            _ => out.push(scalar(elem, wt, v, buf)),
        }
    }
    Ok(AttrValue::List(out))
}

fn attr(s: usize, e: usize, buf: &[u8]) -> Result<(String, AttrValue), WireError> {
    let mut sub = Wire::new(buf, s, e);
    let (mut name, mut value) = (String::new(), AttrValue::Unknown);
    while let Some((num, wt, v)) = sub.field()? {
        match (num, v) {
            (1, Field::Span(a, b)) => name = text(buf, a, b),
            (3..=32, Field::Span(a, b)) if num % 2 == 0 => value = list(num, a, b, buf)?,
            (3..=32, _) => value = scalar(num, wt, v, buf),
            _ => {}
        }
    }
    Ok((name, value))
}

/// Appends a repeated uint64 field (one value, or packed) to `into`; `after`: the offset past it.
fn repeated_u64(num: u128, wt: u8, v: Field, buf: &[u8], after: usize, into: &mut Vec<i128>) -> Result<(), WireError> {
    match (wt, v) {
        (0, Field::Int(v)) => into.push(v as i128),
        (2, Field::Span(s, e)) => {
            let mut p = Wire::new(buf, s, e);
            while p.pos < p.end {
                into.push(p.varint()? as i128);
            }
        }
        _ => return Err((after, format!("field {num} (repeated uint64) has wire type {wt}"))),
    }
    Ok(())
}

fn node(s: usize, e: usize, buf: &[u8]) -> Result<PbNode, WireError> {
    let mut n = PbNode::default();
    let mut sub = Wire::new(buf, s, e);
    while let Some((num, wt, v)) = sub.field()? {
        match (num, v) {
            (1, Field::Int(v)) if wt == 0 => n.id = v as i128,
            (2, Field::Span(a, b)) => n.name = text(buf, a, b),
            (3, Field::Int(v)) if wt == 0 => n.node_type = Some(v as i128),
            (4, _) => repeated_u64(num, wt, v, buf, sub.pos, &mut n.ctrl_deps)?,
            (5, _) => repeated_u64(num, wt, v, buf, sub.pos, &mut n.data_deps)?,
            (6, Field::Int(v)) if wt == 0 => n.start_us = Some(v as i128),
            (7, Field::Int(v)) if wt == 0 => n.dur_us = Some(v as i128),
            (8, Field::Span(a, b)) => {
                let mut io = Wire::new(buf, a, b);
                while let Some((f, _, v)) = io.field()? {
                    if let (1, Field::Span(x, y)) = (f, v) {
                        n.inputs = text(buf, x, y);
                        break;
                    }
                }
            }
            (10, Field::Span(a, b)) => n.attrs.push(attr(a, b, buf)?),
            _ => {}
        }
    }
    Ok(n)
}

/// The GlobalMetadata attributes (with `version`) and the nodes of a Chakra protobuf file; an
/// error gives the byte offset, except for an empty file (None).
pub fn decode(buf: &[u8]) -> Result<Decoded, (Option<usize>, String)> {
    let mut nodes = Vec::new();
    let meta = decode_each(buf, |n| {
        nodes.push(n);
        Ok(())
    })?;
    Ok((meta, nodes))
}

/// As [`decode`], each node handed to `each` as it is decoded (an error from `each` stops it).
pub fn decode_each(
    buf: &[u8],
    each: impl FnMut(PbNode) -> Result<(), String>,
) -> Result<Attrs, (Option<usize>, String)> {
    match decode_records(buf, each) {
        Ok(Some(meta)) => Ok(meta),
        Ok(None) => Err((None, "empty file (no GlobalMetadata record)".to_owned())),
        Err(Stop::Wire(at, what)) => Err((Some(at), what)),
        Err(Stop::Node(what)) => Err((None, what)),
    }
}

enum Stop {
    Wire(usize, String),
    Node(String),
}

impl From<WireError> for Stop {
    fn from((at, what): WireError) -> Self {
        Stop::Wire(at, what)
    }
}

fn decode_records(buf: &[u8], mut each: impl FnMut(PbNode) -> Result<(), String>) -> Result<Option<Attrs>, Stop> {
    let mut w = Wire::new(buf, 0, buf.len());
    let mut meta: Option<Vec<(String, AttrValue)>> = None;
    while w.pos < w.end {
        let at = w.pos;
        let n = w.varint()?;
        if n == 0 && at + 1 == w.end {
            break; // a trailing zero length is EOF for the reference reader
        }
        let (s, e) = w.take(n).map_err(|_| {
            (
                at,
                format!("record of {n} bytes runs past the end of the file ({} bytes)", w.end),
            )
        })?;
        match meta {
            None => {
                let mut m = Vec::new();
                let mut sub = Wire::new(buf, s, e);
                while let Some((num, _, v)) = sub.field()? {
                    match (num, v) {
                        (2, Field::Span(a, b)) => m.push(attr(a, b, buf)?),
                        (1, Field::Span(a, b)) => m.push(("version".to_owned(), AttrValue::Str(text(buf, a, b)))),
                        _ => {}
                    }
                }
                meta = Some(m);
            }
            Some(_) => each(node(s, e, buf)?).map_err(Stop::Node)?,
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u128) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7F) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    fn vf(num: u128, v: u128) -> Vec<u8> {
        [varint(num << 3), varint(v)].concat()
    }

    fn ld(num: u128, payload: &[u8]) -> Vec<u8> {
        [varint(num << 3 | 2), varint(payload.len() as u128), payload.to_vec()].concat()
    }

    fn file(records: &[Vec<u8>]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|r| [varint(r.len() as u128), r.clone()].concat())
            .collect()
    }

    #[test]
    fn nodes_attrs_and_deps() {
        let meta = ld(1, b"0.0.4");
        let attr_int = [ld(1, b"comm_type"), vf(9, (1u128 << 64) - 5)].concat(); // int64 -5
        let attr_list = [ld(1, b"sizes"), ld(14, &ld(1, &[varint(3), varint(300)].concat()))].concat();
        let attr_str = [ld(1, b"op"), ld(29, "é".as_bytes())].concat();
        let node = [
            vf(1, 7),
            ld(2, b"aten::mm"),
            vf(3, 4),
            ld(4, &[varint(1), varint(300)].concat()), // packed ctrl deps
            vf(5, 2),                                  // unpacked data dep
            vf(7, 12),
            ld(10, &attr_int),
            ld(10, &attr_list),
            ld(10, &attr_str),
        ]
        .concat();
        let (m, nodes) = decode(&file(&[meta, node])).expect("decodes");
        assert_eq!(m, vec![("version".to_owned(), AttrValue::Str("0.0.4".to_owned()))]);
        let n = &nodes[0];
        assert_eq!(
            (n.id, n.name.as_str(), n.node_type, n.dur_us),
            (7, "aten::mm", Some(4), Some(12))
        );
        assert_eq!((n.ctrl_deps.clone(), n.data_deps.clone()), (vec![1, 300], vec![2]));
        assert_eq!(n.attrs[0], ("comm_type".to_owned(), AttrValue::Int(-5)));
        let sizes = AttrValue::List(vec![AttrValue::Int(3), AttrValue::Int(300)]);
        assert_eq!(n.attrs[1], ("sizes".to_owned(), sizes));
        assert_eq!(n.attrs[2], ("op".to_owned(), AttrValue::Str("é".to_owned())));
    }

    #[test]
    fn errors_name_the_offset() {
        let ok = file(&[ld(1, b"v"), [vf(1, 1)].concat()]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            ([ok.clone(), vec![0x85]].concat(), "truncated varint"),
            (b"\x07garbage and more".to_vec(), "unsupported wire type 7 (field 12)"),
            (
                b"\x50abc".to_vec(),
                "record of 80 bytes runs past the end of the file (4 bytes)",
            ),
            (
                file(&[ld(1, b"v"), vec![0x67, 1]]),
                "unsupported wire type 7 (field 12)",
            ),
            (file(&[ld(1, b"v"), vec![0x00, 1]]), "field number 0"),
            (
                file(&[ld(1, b"v"), [vec![0x0A, 9], b"ab".to_vec()].concat()]),
                "runs past the end of its message",
            ),
            (vec![0xFF; 12], "varint longer than 10 bytes"),
            (Vec::new(), "empty file"),
        ];
        for (bytes, what) in cases {
            match decode(&bytes) {
                Err((_, e)) => assert!(e.contains(what), "{e} lacks {what}"),
                Ok(_) => panic!("{bytes:?} decoded"),
            }
        }
        let err = decode(&[ok.clone(), vec![0x85]].concat()).map(|_| ()).unwrap_err();
        assert_eq!(err.0, Some(ok.len()));
        assert_eq!(decode(&[]).map(|_| ()).unwrap_err().0, None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// Any bytes decode or give an error at an offset inside the input: never a panic.
        #[test]
        fn any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Err((Some(at), _)) = decode(&bytes) {
                proptest::prop_assert!(at <= bytes.len());
            }
        }
    }
}
