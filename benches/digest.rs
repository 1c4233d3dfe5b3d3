//! The digest pass alone: sluice's SHA-256 pass (`label::digest_file`) against the same hash
//! fed by reads of other sizes and buffer placements, and against `openssl dgst -sha256` when
//! it is installed.
//!
//! `cargo bench --bench digest`; `BENCH_DIGEST_MIB` sets the file size (default 512), or
//! `BENCH_DIGEST_FILE` names a file to read instead. The file is written to a temporary folder
//! and read back from the page cache, so the figures are the CPU's, not the disk's. The first
//! call in a process is reported apart: it is what `sluice label` and a `sluice once` with one
//! big file see, and it was the slow one here (see the README, Benchmarks).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use sluice::label;

/// Runs of each variant; the fastest is reported, as the least disturbed by other work.
const RUNS: usize = 5;

/// Read sizes tried with the same hash.
const READ_SIZES: [usize; 3] = [64 << 10, 256 << 10, 1 << 20];

const MIB: u64 = 1 << 20;

fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::var("BENCH_DIGEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let dir = tempfile::tempdir()?;
    let path = match std::env::var_os("BENCH_DIGEST_FILE") {
        Some(file) => file.into(),
        None => {
            let path = dir.path().join("digest.csv");
            write_csv(&path, mib)?;
            path
        }
    };
    let bytes = std::fs::metadata(&path)?.len();

    // The first call runs before anything else in this process allocated a large buffer, as
    // in `sluice label` or a `sluice once` with one big file: glibc then serves the buffer
    // from a fresh mmap, 16 bytes past a page boundary, and that first call was the slow one
    // here. `BENCH_DIGEST_FIRST=aligned` makes the first call read into a fresh buffer that
    // starts on a 64-byte boundary instead, `misaligned` 16 bytes past one.
    let first_kind = std::env::var("BENCH_DIGEST_FIRST").unwrap_or_else(|_| "sluice".into());
    let started = Instant::now();
    let expected = match first_kind.as_str() {
        "aligned" => digest_with_reads(&path, 1 << 20, 0)?,
        "misaligned" => digest_with_reads(&path, 1 << 20, 16)?,
        _ => label::digest_file(&path)?.0,
    };
    let first = started.elapsed();

    println!(
        "digest of `{}` ({} MiB) from the page cache:",
        path.display(),
        bytes / MIB
    );
    report(
        &format!("1st call in the process: {first_kind}"),
        bytes,
        first,
    );
    let time = fastest(|| label::digest_file(&path).map(drop))?;
    report(
        &format!("sluice label::digest_file, best of {RUNS}"),
        bytes,
        time,
    );

    for size in READ_SIZES {
        for misalign in [0, 16] {
            let mut sha256 = String::new();
            let time = fastest(|| {
                sha256 = digest_with_reads(&path, size, misalign)?;
                Ok(())
            })?;
            anyhow::ensure!(sha256 == expected, "digest with {size}-byte reads differs");
            let placement = if misalign == 0 {
                "aligned".to_owned()
            } else {
                format!("64-byte line + {misalign}")
            };
            report(
                &format!("sha2, {} KiB reads, {placement}", size >> 10),
                bytes,
                time,
            );
        }
    }

    match fastest(|| openssl_dgst(&path)) {
        Ok(time) => report("openssl dgst -sha256 (process)", bytes, time),
        Err(err) => println!("  openssl dgst -sha256: not measured ({err})"),
    }
    Ok(())
}

/// A CSV file of `mib` MiB in 32-byte rows, written through a small buffer so that no large
/// allocation happens before the first digest.
fn write_csv(path: &Path, mib: u64) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for row in 0..mib * MIB / 32 {
        writeln!(
            out,
            "{:09},{:08},{:012}",
            1,
            row % 100_000_000,
            (row * 104_729) % 1_000_000_000_000
        )?;
    }
    out.into_inner()?.sync_all()
}

fn fastest(mut run: impl FnMut() -> io::Result<()>) -> io::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..RUNS {
        let started = Instant::now();
        run()?;
        best = best.min(started.elapsed());
    }
    Ok(best)
}

/// SHA-256 of the file read `size` bytes at a time into a buffer that starts `misalign` bytes
/// past a 64-byte boundary (a cache line). glibc serves large allocations from mmap with the
/// data 16 bytes past the page start, which is where a plain `vec![0; size]` lands.
fn digest_with_reads(path: &Path, size: usize, misalign: usize) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut backing = vec![0u8; size + 128];
    let start = backing.as_ptr().align_offset(64) + misalign;
    let buf = &mut backing[start..start + size];
    loop {
        match file.read(buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn openssl_dgst(path: &Path) -> io::Result<()> {
    let status = Command::new("openssl")
        .args(["dgst", "-sha256"])
        .arg(path)
        .stdout(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("openssl exited with {status}")))
    }
}

fn report(what: &str, bytes: u64, time: Duration) {
    // Lossy on purpose: a throughput figure needs no more than f64's precision.
    #[allow(clippy::cast_precision_loss, reason = "a figure for people")]
    let mib_s = bytes as f64 / MIB as f64 / time.as_secs_f64();
    println!("  {what:<40} {mib_s:>8.0} MiB/s");
}
