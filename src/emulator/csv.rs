//! The BE's CSV reading, streaming: rows are cut as body bytes arrive, counted, checked against
//! the table's column count, and only a bounded sample of fields and error rows is kept, so a
//! body of any size is read in flat memory.
//!
//! Without `enclose` and `escape` the parser never looks at single bytes: it jumps between row
//! delimiters and counts separators with `memchr`'s vectorised search. With them it walks the
//! bytes with a small quote/escape state machine.

use memchr::memmem;

/// Rows longer than this are filtered instead of buffered.
const MAX_ROW_BYTES: usize = 64 << 20;

/// Bytes of a bad row shown in the error log.
const MAX_ERROR_ROW_BYTES: usize = 4096;

/// How the body is cut into rows and fields, from the load's headers.
#[derive(Debug, Clone)]
pub(crate) struct CsvOptions {
    pub(crate) column_separator: Vec<u8>,
    /// The number of fields every row must have.
    pub(crate) columns: usize,
    pub(crate) enclose: Option<u8>,
    pub(crate) escape: Option<u8>,
    pub(crate) row_delimiter: Vec<u8>,
    pub(crate) skip_header: u64,
    pub(crate) trim_space: bool,
}

impl Default for CsvOptions {
    fn default() -> CsvOptions {
        CsvOptions {
            column_separator: b"\t".to_vec(),
            columns: 1,
            enclose: None,
            escape: None,
            row_delimiter: b"\n".to_vec(),
            skip_header: 0,
            trim_space: false,
        }
    }
}

/// Turns a `column_separator` / `row_delimiter` header into bytes: `\x..` and `0x..` are hex
/// (an even number of digits), anything else is taken as written.
pub(crate) fn parse_delimiter(value: &str) -> Result<Vec<u8>, String> {
    if value.is_empty() {
        return Err("Delimiter cannot be empty or null".to_string());
    }
    let lower = value.to_ascii_lowercase();
    let Some(hex) = lower
        .strip_prefix("\\x")
        .or_else(|| lower.strip_prefix("0x"))
    else {
        return Ok(value.as_bytes().to_vec());
    };
    if hex.is_empty() {
        return Err(format!("Invalid delimiter '{value}': empty hex string"));
    }
    if hex.len() % 2 != 0 {
        return Err(format!(
            "Invalid delimiter '{value}': hex length must be a even number"
        ));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("Invalid delimiter '{value}': invalid hex format"))
}

/// What a body held.
#[derive(Debug, Default)]
pub(crate) struct CsvOutcome {
    /// Error log lines for the first filtered rows.
    pub(crate) errors: Vec<String>,
    pub(crate) filtered_rows: u64,
    pub(crate) loaded_rows: u64,
    /// Fields of the first loaded rows, up to the room asked for.
    pub(crate) sample: Vec<Vec<String>>,
    pub(crate) total_rows: u64,
}

/// A streaming CSV reader; feed it chunks in order, then [`CsvParser::finish`].
pub(crate) struct CsvParser {
    error_room: usize,
    /// Set when `enclose` or `escape` is in force.
    quoted: bool,
    opts: CsvOptions,
    out: CsvOutcome,
    /// Bytes of a row that started in an earlier chunk.
    pending: Vec<u8>,
    /// The pending row passed [`MAX_ROW_BYTES`]; its bytes were dropped.
    oversized: bool,
    row_finder: memmem::Finder<'static>,
    sample_room: usize,
    sep_finder: memmem::Finder<'static>,
    skipped: u64,
    // Quote state of the pending row (quoted mode only).
    in_quote: bool,
    escaped: bool,
}

impl CsvParser {
    pub(crate) fn new(opts: CsvOptions, sample_room: usize, error_room: usize) -> CsvParser {
        CsvParser {
            error_room,
            quoted: opts.enclose.is_some() || opts.escape.is_some(),
            out: CsvOutcome::default(),
            pending: Vec::new(),
            oversized: false,
            row_finder: memmem::Finder::new(&opts.row_delimiter).into_owned(),
            sample_room,
            sep_finder: memmem::Finder::new(&opts.column_separator).into_owned(),
            skipped: 0,
            in_quote: false,
            escaped: false,
            opts,
        }
    }

    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        if self.quoted {
            self.feed_quoted(chunk);
        } else {
            self.feed_plain(chunk);
        }
    }

    /// Ends the body; a last row without a delimiter still counts.
    pub(crate) fn finish(mut self) -> CsvOutcome {
        if !self.pending.is_empty() || self.oversized {
            let row = std::mem::take(&mut self.pending);
            self.row(&row);
        }
        self.out
    }

    fn feed_plain(&mut self, chunk: &[u8]) {
        let delim_len = self.opts.row_delimiter.len();
        let mut rest = chunk;
        if !self.pending.is_empty() || self.oversized {
            let mut row = std::mem::take(&mut self.pending);
            if let Some(split) = straddle(&row, rest, &self.opts.row_delimiter) {
                row.truncate(row.len() - split);
                rest = &rest[delim_len - split..];
            } else if let Some(pos) = self.find_row_end(rest) {
                row.extend_from_slice(&rest[..pos]);
                rest = &rest[pos + delim_len..];
            } else {
                self.pending = row;
                self.keep_pending(rest);
                return;
            }
            self.row(&row);
            row.clear();
            self.pending = row;
        }
        while let Some(pos) = self.find_row_end(rest) {
            self.row(&rest[..pos]);
            rest = &rest[pos + delim_len..];
        }
        self.keep_pending(rest);
    }

    fn find_row_end(&self, data: &[u8]) -> Option<usize> {
        match self.opts.row_delimiter.as_slice() {
            [byte] => memchr::memchr(*byte, data),
            _ => self.row_finder.find(data),
        }
    }

    /// Holds the unfinished tail of a chunk, unless the row grew too long; then only its last
    /// bytes are kept, in case a delimiter straddles the next chunk.
    fn keep_pending(&mut self, tail: &[u8]) {
        if self.pending.len() + tail.len() <= MAX_ROW_BYTES {
            self.pending.extend_from_slice(tail);
            return;
        }
        self.oversized = true;
        self.pending.extend_from_slice(tail);
        let keep = self.opts.row_delimiter.len() - 1;
        let cut = self.pending.len() - keep.min(self.pending.len());
        self.pending.drain(..cut);
    }

    fn feed_quoted(&mut self, chunk: &[u8]) {
        let last = *self.opts.row_delimiter.last().unwrap_or(&b'\n');
        let mut start = 0;
        for (i, &byte) in chunk.iter().enumerate() {
            if self.escaped {
                self.escaped = false;
            } else if Some(byte) == self.opts.escape {
                self.escaped = true;
            } else if Some(byte) == self.opts.enclose {
                self.in_quote = !self.in_quote;
            } else if !self.in_quote && byte == last {
                self.pending.extend_from_slice(&chunk[start..=i]);
                start = i + 1;
                if self.pending.ends_with(&self.opts.row_delimiter) {
                    let mut row = std::mem::take(&mut self.pending);
                    row.truncate(row.len() - self.opts.row_delimiter.len());
                    self.row(&row);
                    row.clear();
                    self.pending = row;
                }
            }
        }
        let tail = &chunk[start..];
        if self.pending.len() + tail.len() > MAX_ROW_BYTES {
            self.oversized = true;
            self.pending.clear();
        } else {
            self.pending.extend_from_slice(tail);
        }
    }

    /// One row, without its delimiter.
    fn row(&mut self, row: &[u8]) {
        if self.skipped < self.opts.skip_header {
            self.skipped += 1;
            self.oversized = false;
            return;
        }
        if std::mem::take(&mut self.oversized) {
            self.out.total_rows += 1;
            self.filter(row, "Row is too long.".to_string());
            return;
        }
        // The real scanner skips blank lines without counting them.
        if row.is_empty() {
            return;
        }
        self.out.total_rows += 1;
        let fields = self.count_fields(row);
        if fields != self.opts.columns {
            let reason = format!(
                "Value count does not match column count. Expect {}, but got {fields}.",
                self.opts.columns
            );
            self.filter(row, reason);
            return;
        }
        self.out.loaded_rows += 1;
        if self.out.sample.len() < self.sample_room {
            let fields = self.split_fields(row);
            self.out.sample.push(fields);
        }
    }

    fn filter(&mut self, row: &[u8], reason: String) {
        self.out.filtered_rows += 1;
        if self.out.errors.len() < self.error_room {
            let shown = String::from_utf8_lossy(&row[..row.len().min(MAX_ERROR_ROW_BYTES)]);
            self.out
                .errors
                .push(format!("Error: {reason} Row: {shown}"));
        }
    }

    fn count_fields(&self, row: &[u8]) -> usize {
        if self.quoted {
            return self.raw_fields(row).len();
        }
        1 + match self.opts.column_separator.as_slice() {
            [byte] => memchr::memchr_iter(*byte, row).count(),
            _ => self.sep_finder.find_iter(row).count(),
        }
    }

    fn split_fields(&self, row: &[u8]) -> Vec<String> {
        if self.quoted {
            return self
                .raw_fields(row)
                .into_iter()
                .map(|f| self.unquote(f))
                .collect();
        }
        let sep_len = self.opts.column_separator.len();
        let mut fields = Vec::with_capacity(self.opts.columns);
        let mut start = 0;
        for pos in self.sep_finder.find_iter(row) {
            fields.push(self.text(&row[start..pos]));
            start = pos + sep_len;
        }
        fields.push(self.text(&row[start..]));
        fields
    }

    /// The fields of a row in quoted mode, still with their enclose and escape bytes.
    fn raw_fields<'r>(&self, row: &'r [u8]) -> Vec<&'r [u8]> {
        let sep = self.opts.column_separator.as_slice();
        let mut fields = Vec::new();
        let (mut start, mut i) = (0, 0);
        let (mut in_quote, mut escaped) = (false, false);
        while i < row.len() {
            let byte = row[i];
            if escaped {
                escaped = false;
            } else if Some(byte) == self.opts.escape {
                escaped = true;
            } else if Some(byte) == self.opts.enclose {
                in_quote = !in_quote;
            } else if !in_quote && row[i..].starts_with(sep) {
                fields.push(&row[start..i]);
                i += sep.len();
                start = i;
                continue;
            }
            i += 1;
        }
        fields.push(&row[start..]);
        fields
    }

    /// A quoted-mode field as text: spaces trimmed outside the quotes, enclose bytes removed
    /// (a doubled one inside quotes stands for itself), escapes resolved.
    fn unquote(&self, field: &[u8]) -> String {
        let field = if self.opts.trim_space {
            trim_spaces(field)
        } else {
            field
        };
        let mut text = Vec::with_capacity(field.len());
        let (mut i, mut in_quote) = (0, false);
        while i < field.len() {
            let byte = field[i];
            if Some(byte) == self.opts.escape && i + 1 < field.len() {
                text.push(field[i + 1]);
                i += 2;
                continue;
            }
            if Some(byte) == self.opts.enclose {
                if in_quote && field.get(i + 1) == Some(&byte) {
                    text.push(byte);
                    i += 2;
                    continue;
                }
                in_quote = !in_quote;
                i += 1;
                continue;
            }
            text.push(byte);
            i += 1;
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    fn text(&self, field: &[u8]) -> String {
        let field = if self.opts.trim_space {
            trim_spaces(field)
        } else {
            field
        };
        String::from_utf8_lossy(field).into_owned()
    }
}

/// Where a delimiter begins in the last bytes of `head` and ends at the start of `tail`:
/// returns how many of its bytes are in `head`.
fn straddle(head: &[u8], tail: &[u8], delim: &[u8]) -> Option<usize> {
    (1..delim.len())
        .rev()
        .find(|&split| head.ends_with(&delim[..split]) && tail.starts_with(&delim[split..]))
}

fn trim_spaces(field: &[u8]) -> &[u8] {
    let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |p| p + 1);
    &field[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(opts: &CsvOptions, chunks: &[&[u8]]) -> CsvOutcome {
        let mut parser = CsvParser::new(opts.clone(), 1000, 50);
        for chunk in chunks {
            parser.feed(chunk);
        }
        parser.finish()
    }

    /// Every split of `body` into three chunks gives the same outcome as one chunk.
    fn assert_split_invariant(opts: &CsvOptions, body: &[u8]) -> CsvOutcome {
        let whole = parse_all(opts, &[body]);
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let parts = parse_all(opts, &[&body[..i], &body[i..j], &body[j..]]);
                assert_eq!(parts.total_rows, whole.total_rows, "split {i} {j}");
                assert_eq!(parts.loaded_rows, whole.loaded_rows, "split {i} {j}");
                assert_eq!(parts.filtered_rows, whole.filtered_rows, "split {i} {j}");
                assert_eq!(parts.sample, whole.sample, "split {i} {j}");
                assert_eq!(parts.errors, whole.errors, "split {i} {j}");
            }
        }
        whole
    }

    fn opts(sep: &str, delim: &str, columns: usize) -> CsvOptions {
        CsvOptions {
            column_separator: parse_delimiter(sep).unwrap(),
            row_delimiter: parse_delimiter(delim).unwrap(),
            columns,
            ..CsvOptions::default()
        }
    }

    #[test]
    fn chunk_boundaries_do_not_change_the_rows() {
        let opts = opts("||", "\\x0D0A", 3);
        let body = b"a||b||c\r\nd||e\r\n\r\nf||g||h\r\ni||j||k";
        let out = assert_split_invariant(&opts, body);
        assert_eq!(
            (out.total_rows, out.loaded_rows, out.filtered_rows),
            (4, 3, 1)
        );
        assert_eq!(out.sample[2], vec!["i", "j", "k"]);
        assert_eq!(
            out.errors,
            vec!["Error: Value count does not match column count. Expect 3, but got 2. Row: d||e"]
        );
    }

    #[test]
    fn quoted_fields_survive_any_chunk_boundary() {
        let opts = CsvOptions {
            enclose: Some(b'"'),
            escape: Some(b'\\'),
            trim_space: true,
            skip_header: 1,
            ..opts(",", "\n", 2)
        };
        let body = b"h1,h2\n \"a,1\" , b\n\"x\ny\",\"q\"\"z\"\nc\\,d,e\n";
        let out = assert_split_invariant(&opts, body);
        assert_eq!(out.loaded_rows, 3, "{:?}", out.errors);
        assert_eq!(out.sample[0], vec!["a,1", "b"]);
        assert_eq!(out.sample[1], vec!["x\ny", "q\"z"]);
        assert_eq!(out.sample[2], vec!["c,d", "e"]);
    }

    #[test]
    fn single_byte_separators_and_skip_header() {
        let opts = CsvOptions {
            skip_header: 2,
            trim_space: true,
            ..opts("\\x01", "\n", 2)
        };
        let out = assert_split_invariant(&opts, b"x\ny\n a \x01b\nc\x01d\x01e\n");
        assert_eq!(
            (out.total_rows, out.loaded_rows, out.filtered_rows),
            (2, 1, 1)
        );
        assert_eq!(out.sample, vec![vec!["a".to_string(), "b".to_string()]]);
    }

    #[test]
    fn parses_delimiters_like_the_fe() {
        assert_eq!(parse_delimiter("\\x01").unwrap(), vec![1]);
        assert_eq!(parse_delimiter("0x0D0a").unwrap(), vec![13, 10]);
        assert_eq!(parse_delimiter("||").unwrap(), b"||".to_vec());
        assert!(parse_delimiter("").is_err());
        assert!(parse_delimiter("\\x1").is_err());
        assert!(parse_delimiter("\\xzz").is_err());
        assert!(parse_delimiter("0x").is_err());
    }

    #[test]
    fn empty_bodies_have_no_rows() {
        let out = parse_all(&CsvOptions::default(), &[b"", b"\n\n"]);
        assert_eq!(out.total_rows, 0);
    }

    #[test]
    fn sample_is_bounded() {
        let mut parser = CsvParser::new(opts(",", "\n", 1), 2, 1);
        parser.feed(b"1\n2\n3\n4,4\n5,5\n");
        let out = parser.finish();
        assert_eq!(out.sample.len(), 2);
        assert_eq!(out.errors.len(), 1);
        assert_eq!((out.loaded_rows, out.filtered_rows), (3, 2));
    }

    /// Release-build speed check: `cargo test --release csv_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn csv_speed() {
        let row = b"12345,some text here,2024-01-01 00:00:00,42.5\n";
        let chunk: Vec<u8> = row.iter().copied().cycle().take(row.len() * 5000).collect();
        let mut parser = CsvParser::new(opts(",", "\n", 4), 1000, 50);
        let start = std::time::Instant::now();
        let rounds = 2000;
        for _ in 0..rounds {
            parser.feed(&chunk);
        }
        let out = parser.finish();
        let mib = (chunk.len() * rounds) as f64 / (1 << 20) as f64;
        let secs = start.elapsed().as_secs_f64();
        println!("{:.0} MiB/s, {} rows", mib / secs, out.loaded_rows);
        assert_eq!(out.filtered_rows, 0);
    }
}
