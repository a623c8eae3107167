//! Streaming reads of large JSON files (plain or gzip): a scanner that cuts the text into
//! values without parsing them, so that each can be deserialised from its own bytes and the
//! whole text is never held (`crate::kineto_json`), and a reader of one top-level list's
//! elements, one at a time, for the execution-trace ingesters.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;
use serde_json::value::RawValue;

/// The read block: large enough that per-block costs vanish, small beside any trace.
const BLOCK: usize = 1 << 20;

/// Opens `path` for reading, gunzipped when it starts with the gzip magic. Also gives how read
/// errors are described (a gzip stream's errors are its corruption). Errors name the file.
pub fn open(path: &Path) -> Result<(Box<dyn BufRead + Send>, &'static str), String> {
    let name = path.display();
    let file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!("{name}: no such file")
        } else {
            format!("{name}: cannot read: {e}")
        }
    })?;
    let mut raw = BufReader::with_capacity(BLOCK, file);
    let gz = raw
        .fill_buf()
        .map_err(|e| format!("{name}: cannot read: {e}"))?
        .starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        (
            Box::new(BufReader::with_capacity(BLOCK, MultiGzDecoder::new(raw))),
            "not a readable gzip file",
        )
    } else {
        (Box::new(raw), "cannot read")
    })
}

pub enum ScanError {
    Io(io::Error),
    Json(String),
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

/// Cuts a JSON text into values without parsing them: tracks strings (with escapes) and nesting
/// only. Whatever it cuts is then parsed by serde_json, which finds every error it lets through.
pub struct Scanner<R> {
    r: R,
    /// Bytes consumed so far (of the decompressed text), for error positions.
    pub offset: u64,
}

impl<R: BufRead> Scanner<R> {
    pub fn new(r: R) -> Self {
        Scanner { r, offset: 0 }
    }

    pub fn consume(&mut self, n: usize) {
        self.r.consume(n);
        self.offset += n as u64;
    }

    /// Skips whitespace; the next byte, not consumed (None at the end).
    pub fn peek(&mut self) -> Result<Option<u8>, ScanError> {
        loop {
            let buf = self.r.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => {
                    let c = buf[i];
                    self.consume(i);
                    return Ok(Some(c));
                }
                None => {
                    let n = buf.len();
                    self.consume(n);
                }
            }
        }
    }

    pub fn error(&self, what: &str) -> ScanError {
        ScanError::Json(format!("{what} at byte {}", self.offset))
    }

    /// Consumes `c` (after whitespace) or fails with `what`.
    pub fn eat(&mut self, c: u8, what: &str) -> Result<(), ScanError> {
        match self.peek()? {
            Some(b) if b == c => {
                self.consume(1);
                Ok(())
            }
            Some(_) => Err(self.error(what)),
            None => Err(self.error("EOF while parsing")),
        }
    }

    /// In an object, after its `{`: the next key (its `:` consumed), or None at the object's `}`
    /// (consumed). `first`: no field read yet, so no `,` before it. `buf` holds the key's text.
    pub fn next_key(&mut self, first: bool, buf: &mut Vec<u8>) -> Result<Option<String>, ScanError> {
        if self.peek()? == Some(b'}') {
            self.consume(1);
            return Ok(None);
        }
        if !first {
            self.eat(b',', "expected ',' or '}' after an object value")?;
        }
        let at = self.value(buf)?;
        if buf.first() != Some(&b'"') {
            return Err(self.error("key must be a string"));
        }
        let key: String = serde_json::from_slice(buf).map_err(|e| json_error(&e, at))?;
        self.eat(b':', "expected ':'")?;
        Ok(Some(key))
    }

    /// Only whitespace may follow.
    pub fn end(&mut self) -> Result<(), ScanError> {
        match self.peek()? {
            Some(_) => Err(self.error("trailing characters")),
            None => Ok(()),
        }
    }

    /// Copies the next JSON value's bytes into `out` (cleared first): an object or list to its
    /// closing bracket, a string to its closing quote, anything else up to a delimiter. Gives the
    /// offset it starts at.
    pub fn value(&mut self, out: &mut Vec<u8>) -> Result<u64, ScanError> {
        out.clear();
        let Some(first) = self.peek()? else {
            return Err(self.error("EOF while parsing a value"));
        };
        let start = self.offset;
        let scalar = !matches!(first, b'{' | b'[' | b'"');
        let (mut depth, mut in_str, mut esc) = (0u32, false, false);
        loop {
            let buf = self.r.fill_buf()?;
            if buf.is_empty() {
                return if scalar {
                    Ok(start)
                } else {
                    Err(self.error("EOF while parsing a value"))
                };
            }
            let mut end = None;
            for (i, &b) in buf.iter().enumerate() {
                if scalar {
                    if matches!(b, b',' | b']' | b'}') || b.is_ascii_whitespace() {
                        end = Some(i);
                        break;
                    }
                } else if in_str {
                    if esc {
                        esc = false;
                    } else if b == b'\\' {
                        esc = true;
                    } else if b == b'"' {
                        in_str = false;
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                } else {
                    match b {
                        b'"' => in_str = true,
                        b'{' | b'[' => depth = depth.saturating_add(1),
                        b'}' | b']' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                end = Some(i + 1);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            let take = end.unwrap_or(buf.len());
            out.extend_from_slice(&buf[..take]);
            self.consume(take);
            if end.is_some() {
                return Ok(start);
            }
        }
    }
}

/// A serde_json error in a value that started at byte `at`.
pub fn json_error(e: &serde_json::Error, at: u64) -> ScanError {
    ScanError::Json(format!("{e} (in the value from byte {at})"))
}

/// The elements of one top-level list of a JSON object (the first of `keys` found whose value
/// is a list), one at a time; the object's other fields are kept as JSON text (`header`).
pub struct ListReader {
    scan: Scanner<Box<dyn BufRead + Send>>,
    name: String,
    io_what: &'static str,
    keys: Vec<String>,
    /// The key whose list is read (None: none of `keys` is a list here).
    pub found: Option<String>,
    /// The object's other fields: (key, JSON text, cut but not parsed), in file order; complete
    /// once the list is.
    pub header: Vec<(String, String)>,
    /// Whether the text is a JSON object (known after `begin`).
    pub object: bool,
    state: State,
    buf: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    /// In the list; `true` before its first element.
    List(bool),
    /// After the list: the object's remaining fields.
    Rest,
    Done,
}

impl ListReader {
    pub fn open(path: &Path, keys: Vec<String>) -> Result<Self, String> {
        let (reader, io_what) = open(path)?;
        Ok(ListReader {
            scan: Scanner::new(reader),
            name: path.display().to_string(),
            io_what,
            keys,
            found: None,
            header: Vec::new(),
            object: false,
            state: State::Start,
            buf: Vec::new(),
        })
    }

    /// Reads up to the list (so that `found` is known) or, if there is none, to the end.
    pub fn begin(&mut self) -> Result<(), String> {
        if self.state != State::Start {
            return Ok(());
        }
        self.start().map_err(|e| {
            self.state = State::Done;
            self.describe(e)
        })
    }

    /// The error for an element that is not UTF-8.
    pub fn utf8_error(&self, e: &std::str::Utf8Error) -> String {
        format!(
            "{}: not valid JSON: {e} (in the list element ending at byte {})",
            self.name, self.scan.offset
        )
    }

    fn describe(&self, e: ScanError) -> String {
        match e {
            ScanError::Io(e) => format!("{}: {}: {e}", self.name, self.io_what),
            ScanError::Json(m) => format!("{}: not valid JSON: {m}", self.name),
        }
    }

    fn start(&mut self) -> Result<(), ScanError> {
        if self.scan.peek()? == Some(b'{') {
            self.scan.consume(1);
            self.object = true;
            self.state = if self.fields(true)? {
                State::List(true)
            } else {
                State::Done
            };
        } else {
            // Not an object: read it (an error if it is not JSON), give no elements.
            let at = self.scan.value(&mut self.buf)?;
            serde_json::from_slice::<&RawValue>(&self.buf).map_err(|e| json_error(&e, at))?;
            self.scan.end()?;
            self.state = State::Done;
        }
        Ok(())
    }

    /// The next element's JSON text (cut, not parsed: the caller parses it); None after the last
    /// (the header is then complete). Errors name the file and the byte offset.
    pub fn next_element(&mut self) -> Result<Option<&[u8]>, String> {
        match self.step() {
            Ok(true) => Ok(Some(&self.buf)),
            Ok(false) => Ok(None),
            Err(e) => {
                self.state = State::Done; // the text is not JSON from here: read no further
                Err(self.describe(e))
            }
        }
    }

    /// Reads up to the next element (true, in `buf`) or to the end (false).
    fn step(&mut self) -> Result<bool, ScanError> {
        loop {
            match self.state {
                State::Start => self.start()?,
                State::List(first) => {
                    match self.scan.peek()? {
                        Some(b']') => {
                            self.scan.consume(1);
                            self.state = State::Rest;
                            continue;
                        }
                        Some(b',') if !first => self.scan.consume(1),
                        Some(_) if first => {}
                        Some(_) => return Err(self.scan.error("expected ',' or ']' after a list element")),
                        None => return Err(self.scan.error("EOF while parsing a list")),
                    }
                    let at = self.scan.value(&mut self.buf)?;
                    if self.buf.is_empty() {
                        return Err(json_error_at("expected a value", at));
                    }
                    self.state = State::List(false);
                    return Ok(true);
                }
                State::Rest => {
                    self.fields(false)?;
                    self.state = State::Done;
                }
                State::Done => return Ok(false),
            }
        }
    }

    /// The object's fields up to one of `keys` holding a list (its `[` consumed: true) or to the
    /// object's end (false; the text must end there).
    fn fields(&mut self, mut first: bool) -> Result<bool, ScanError> {
        while let Some(key) = self.scan.next_key(first, &mut self.buf)? {
            first = false;
            if self.found.is_none() && self.keys.contains(&key) && self.scan.peek()? == Some(b'[') {
                self.scan.consume(1);
                self.found = Some(key);
                return Ok(true);
            }
            // Cut, not parsed: the caller parses it (as it does the elements).
            let at = self.scan.value(&mut self.buf)?;
            let text = std::str::from_utf8(&self.buf).map_err(|e| json_error_at(&format!("{e}"), at))?;
            self.header.push((key, text.to_owned()));
        }
        self.scan.end()?;
        Ok(false)
    }
}

fn json_error_at(what: &str, at: u64) -> ScanError {
    ScanError::Json(format!("{what} at byte {at}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (found key, elements, header) of a file holding `text`.
    type Read = (Option<String>, Vec<String>, Vec<(String, String)>);

    fn read_all(text: &[u8], keys: &[&str]) -> Result<Read, String> {
        let dir = std::env::temp_dir().join(format!("tracesim-list-{}-{}", std::process::id(), text.len()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join("l.json");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        let mut r = ListReader::open(&path, keys.iter().map(|k| (*k).to_owned()).collect())?;
        let mut out = Vec::new();
        while let Some(e) = r.next_element()? {
            out.push(String::from_utf8_lossy(e).into_owned());
        }
        std::fs::remove_dir_all(&dir).ok();
        Ok((r.found.clone(), out, r.header.clone()))
    }

    #[test]
    fn elements_and_header() {
        let (found, els, header) = read_all(
            br#" {"schema": "1.1", "nodes": [ {"id": 1, "s": "]"}, 2 , [3]], "finish": {"a": "}"}} "#,
            &["nodes"],
        )
        .expect("reads");
        assert_eq!(found.as_deref(), Some("nodes"));
        assert_eq!(els, [r#"{"id": 1, "s": "]"}"#, "2", "[3]"]);
        assert_eq!(
            header,
            [
                ("schema".to_owned(), r#""1.1""#.to_owned()),
                ("finish".to_owned(), r#"{"a": "}"}"#.to_owned())
            ]
        );
        let (found, els, _) = read_all(br#"{"nodes": [], "x": 1}"#, &["workload_graph", "nodes"]).expect("reads");
        assert_eq!((found.as_deref(), els.len()), (Some("nodes"), 0));
        let (found, els, header) = read_all(br#"{"nodes": {}}"#, &["nodes"]).expect("reads");
        assert_eq!((found, els.len(), header.len()), (None, 0, 1));
        let (found, _, _) = read_all(b"[1, 2]", &["nodes"]).expect("reads");
        assert_eq!(found, None);
    }

    #[test]
    fn errors() {
        for (text, what) in [
            (&br#"{"nodes": [1, 2"#[..], "EOF"),
            (br#"{"nodes": [1 2]}"#, "expected ',' or ']'"),
            (br#"{"nodes": [1,]}"#, "expected a value"),
            (br#"{"nodes": []} x"#, "trailing characters"),
            (br#"{"a" 1}"#, "expected ':'"),
            (b"", "EOF"),
        ] {
            let e = read_all(text, &["nodes"]).unwrap_err();
            assert!(e.contains("l.json: not valid JSON"), "{e}");
            assert!(e.contains(what), "{e} (wanted {what})");
        }
    }
}
