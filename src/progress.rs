//! What `sluice once` shows while it works: a one-line progress bar on a terminal (files and
//! bytes, rate, estimate), a plain progress line every few seconds elsewhere, and a summary
//! table at the end.
//!
//! The bar is redrawn in place on stderr, where log lines also go; [`LogWriter`] clears the bar
//! before a log line and draws it again after, so the two never tangle. A few lines of our own
//! do this: a crate such as indicatif would bring a terminal layer for one line of text.

use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::info;
use tracing_subscriber::fmt::MakeWriter;

use crate::service::{Service, Snapshot, Summary};

/// How often the bar is redrawn.
const BAR_TICK: Duration = Duration::from_millis(200);

/// How often a plain progress line is written when stderr is not a terminal.
const LINE_TICK: Duration = Duration::from_secs(10);

/// Cells of the bar itself.
const BAR_CELLS: usize = 24;

/// The bar line now on the terminal, if any; shared with [`LogWriter`].
static DRAWN: Mutex<Option<String>> = Mutex::new(None);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A bar redrawn in place (stderr is a terminal).
    Bar,
    /// A plain log line now and then.
    Lines,
}

impl Style {
    /// A bar when stderr is a terminal, plain lines otherwise (a pipe, a file, the journal).
    pub fn for_stderr() -> Style {
        if io::stderr().is_terminal() {
            Style::Bar
        } else {
            Style::Lines
        }
    }
}

/// Shows the progress of `service` in `style` until `done` completes, then clears the bar.
///
/// Cancel-safe: dropping the future leaves at most a stale bar line, which the next log line
/// or [`clear`] removes.
pub async fn show(service: Arc<Service>, style: Style, done: impl Future<Output = ()>) {
    let started = Instant::now();
    let tick = match style {
        Style::Bar => BAR_TICK,
        Style::Lines => LINE_TICK,
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The first tick fires at once; plain lines start only after a full period, so a short run
    // writes none.
    if style == Style::Lines {
        interval.tick().await;
    }
    tokio::pin!(done);
    loop {
        tokio::select! {
            () = &mut done => break,
            _ = interval.tick() => {}
        }
        let snapshot = service.snapshot();
        let elapsed = started.elapsed();
        match style {
            Style::Bar => draw(&bar_line(&snapshot, elapsed)),
            Style::Lines => log_line(&snapshot, elapsed),
        }
    }
    if style == Style::Bar {
        clear();
    }
}

/// Files with an outcome, and the files planned, for a `once` run's snapshot.
fn counts(snapshot: &Snapshot) -> (u64, Option<u64>) {
    let s = &snapshot.summary;
    let done = s.loaded
        + s.duplicate
        + s.rejected
        + s.retrying
        + s.indeterminate
        + s.skipped
        + s.local_errors
        + snapshot.passed_over;
    (done, snapshot.planned_files)
}

/// The bar: `[#####-----] 12/40 files  3.1 MiB/10.2 MiB  1.2 MiB/s  ~6s left  2 loading`.
pub fn bar_line(snapshot: &Snapshot, elapsed: Duration) -> String {
    let (done, planned) = counts(snapshot);
    let Some(planned) = planned else {
        return format!("scanning landing folders ({})", clock(elapsed));
    };
    let fraction = if planned == 0 {
        1.0
    } else {
        (done as f64 / planned as f64).min(1.0)
    };
    let filled = (fraction * BAR_CELLS as f64).round() as usize;
    let bar = format!(
        "[{}{}]",
        "#".repeat(filled),
        "-".repeat(BAR_CELLS.saturating_sub(filled))
    );
    let loaded = snapshot.summary.bytes;
    format!(
        "{bar} {done}/{planned} files  {}/{}  {}/s  {}  {} loading",
        size(loaded),
        size(snapshot.planned_bytes),
        size(rate(loaded, elapsed)),
        estimate(fraction, elapsed),
        snapshot.loads_in_flight,
    )
}

/// A plain progress line, through the log.
fn log_line(snapshot: &Snapshot, elapsed: Duration) {
    let (done, planned) = counts(snapshot);
    info!(
        done,
        planned = planned.unwrap_or(0),
        loaded_bytes = snapshot.summary.bytes,
        loads_in_flight = snapshot.loads_in_flight,
        elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        "progress"
    );
}

/// The summary table printed at the end of `sluice once` on a terminal.
pub fn summary_table(summary: &Summary, elapsed: Duration) -> String {
    let unfinished = summary.retrying + summary.indeterminate + summary.local_errors;
    let mut out = String::new();
    out.push_str(&format!(
        "{:<14} {:>8} {:>12} {:>12}\n",
        "outcome", "files", "rows", "bytes"
    ));
    let rows = [
        (
            "loaded",
            summary.loaded,
            Some(summary.rows),
            Some(summary.bytes),
        ),
        ("duplicate", summary.duplicate, None, None),
        ("rejected", summary.rejected, None, None),
        ("retrying", summary.retrying, None, None),
        ("indeterminate", summary.indeterminate, None, None),
        ("local error", summary.local_errors, None, None),
    ];
    for (name, files, rows, bytes) in rows {
        out.push_str(&format!(
            "{name:<14} {files:>8} {:>12} {:>12}\n",
            rows.map_or_else(String::new, |r| r.to_string()),
            bytes.map_or_else(String::new, size),
        ));
    }
    out.push_str(&format!(
        "took {}, {}/s loaded; {}\n",
        clock(elapsed),
        size(rate(summary.bytes, elapsed)),
        if unfinished > 0 {
            format!("{unfinished} unfinished: run again later")
        } else if summary.rejected > 0 {
            "refused files are in the failed folders".to_owned()
        } else {
            "all done".to_owned()
        }
    ));
    out
}

/// Draws `line` in place of the current bar.
fn draw(line: &str) {
    let mut drawn = DRAWN.lock().unwrap_or_else(PoisonError::into_inner);
    let mut err = io::stderr().lock();
    let _ = write!(err, "\r\x1b[2K{line}");
    let _ = err.flush();
    *drawn = Some(line.to_owned());
}

/// Removes the bar from the terminal.
pub fn clear() {
    let mut drawn = DRAWN.lock().unwrap_or_else(PoisonError::into_inner);
    if drawn.take().is_some() {
        let mut err = io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}

/// A `tracing` writer for stderr that keeps a progress bar below the log lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let drawn = DRAWN.lock().unwrap_or_else(PoisonError::into_inner);
        let mut err = io::stderr().lock();
        match drawn.as_deref() {
            Some(line) => {
                err.write_all(b"\r\x1b[2K")?;
                err.write_all(buf)?;
                if buf.ends_with(b"\n") {
                    err.write_all(line.as_bytes())?;
                }
            }
            None => err.write_all(buf)?,
        }
        err.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

fn rate(bytes: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs < 0.001 {
        0
    } else {
        (bytes as f64 / secs) as u64
    }
}

/// Time left, from the share done so far; nothing until there is a share to go by.
fn estimate(fraction: f64, elapsed: Duration) -> String {
    if fraction >= 1.0 {
        return "finishing".to_owned();
    }
    if fraction <= 0.0 {
        return "estimating".to_owned();
    }
    let left = elapsed.as_secs_f64() * (1.0 - fraction) / fraction;
    format!("~{} left", clock(Duration::from_secs_f64(left.min(1e9))))
}

/// `3s`, `2m05s`, `1h02m`.
fn clock(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs < 60 {
        format!("{:.1}s", duration.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

/// Bytes in binary units: `512 B`, `3.1 MiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_files_bytes_rate_and_estimate() {
        let snapshot = Snapshot {
            summary: Summary {
                loaded: 9,
                duplicate: 1,
                bytes: 10 * 1024 * 1024,
                ..Summary::default()
            },
            planned_files: Some(40),
            planned_bytes: 40 * 1024 * 1024,
            passed_over: 0,
            loads_in_flight: 2,
            ..Snapshot::default()
        };
        let line = bar_line(&snapshot, Duration::from_secs(5));
        assert_eq!(
            line,
            "[######------------------] 10/40 files  10.0 MiB/40.0 MiB  2.0 MiB/s  \
             ~15.0s left  2 loading"
        );
    }

    #[test]
    fn before_the_scan_the_bar_says_so() {
        let line = bar_line(&Snapshot::default(), Duration::from_millis(1500));
        assert_eq!(line, "scanning landing folders (1.5s)");
    }

    #[test]
    fn an_empty_run_is_complete() {
        let snapshot = Snapshot {
            planned_files: Some(0),
            ..Snapshot::default()
        };
        let line = bar_line(&snapshot, Duration::from_secs(1));
        assert!(
            line.starts_with(&format!("[{}] 0/0 files", "#".repeat(24))),
            "{line}"
        );
        assert!(line.contains("finishing"), "{line}");
    }

    #[test]
    fn the_table_names_every_outcome_and_the_verdict() {
        let summary = Summary {
            loaded: 3,
            rows: 1516,
            bytes: 2048,
            rejected: 1,
            ..Summary::default()
        };
        let table = summary_table(&summary, Duration::from_secs(2));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "outcome           files         rows        bytes"
        );
        assert_eq!(
            lines[1],
            "loaded                3         1516      2.0 KiB"
        );
        assert!(lines[3].starts_with("rejected              1"), "{table}");
        assert_eq!(
            lines.last().unwrap(),
            &"took 2.0s, 1.0 KiB/s loaded; refused files are in the failed folders"
        );
    }

    #[test]
    fn sizes_and_clocks_read_well() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(clock(Duration::from_secs(125)), "2m05s");
        assert_eq!(clock(Duration::from_secs(3720)), "1h02m");
    }
}
