#!/usr/bin/env bash
# Benchmark of the ledger's auditors' side: fills a ledger with N records through the real
# `Ledger` (each written in the pipeline's three steps, each step flushed), reports its size on
# disk, then times `sluice ledger export` (JSON lines and CSV) and `verify` with their peak
# memory. Usage: scripts/bench-ledger.sh [N]   (default 1000000; BENCH_DIR keeps the files)
set -euo pipefail

records=${1:-1000000}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
work=${BENCH_DIR:-$(mktemp -d -t sluice-bench-ledger.XXXXXX)}
mkdir -p "$work"
ledger=$work/ledger
bin=$CARGO_TARGET_DIR/release/sluice

cargo build --release --quiet --bin sluice
if [ ! -e "$ledger/db" ]; then
    echo "filling $ledger with $records records..."
    SLUICE_BENCH_LEDGER=$ledger SLUICE_BENCH_RECORDS=$records \
        cargo test --release --quiet --test audit -- --ignored --exact \
        fill_a_ledger_for_the_benchmark --nocapture 2>&1 | grep -E '^filled|records/s' || true
fi

# Runs a command (its standard output into $work/NAME.out) and prints its time, rate and peak
# memory. Peak memory needs GNU time; without it only the wall time is shown.
measure() {
    local name=$1
    shift
    local start end
    start=$(date +%s.%N)
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f '%M' -o "$work/$name.mem" "$@" >"$work/$name.out"
    else
        "$@" >"$work/$name.out"
        echo 0 >"$work/$name.mem"
    fi
    end=$(date +%s.%N)
    local secs mem
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
    mem=$(tail -n1 "$work/$name.mem")
    awk -v n="$records" -v s="$secs" -v m="$mem" -v name="$name" 'BEGIN {
        printf "%-14s %8.2f s  %10.0f records/s  peak RSS %7.1f MiB\n", name, s, n / s, m / 1024 }'
}

bytes=$(du -sb "$ledger" | cut -f1)
awk -v b="$bytes" -v n="$records" 'BEGIN {
    printf "ledger on disk: %.0f MiB for %d records (%.2f GiB per million files)\n",
        b / 1048576, n, b / n * 1e6 / 1073741824 }'

measure export-jsonl "$bin" ledger export --ledger "$ledger" --out "$work/export.jsonl"
measure export-csv "$bin" ledger export --ledger "$ledger" --format csv --out "$work/export.csv"
measure list-json "$bin" ledger list --json --ledger "$ledger"
measure verify "$bin" ledger verify --ledger "$ledger" || {
    cat "$work/verify.out"
    exit 1
}
lines=$(wc -l <"$work/export.jsonl")
[ "$lines" -eq "$records" ] || { echo "export has $lines lines, expected $records" >&2; exit 1; }
awk -v b="$(stat -c %s "$work/export.jsonl")" -v c="$(stat -c %s "$work/export.csv")" 'BEGIN {
    printf "export size: jsonl %.0f MiB, csv %.0f MiB\n", b / 1048576, c / 1048576 }'
bytes=$(du -sb "$ledger" | cut -f1)
awk -v b="$bytes" 'BEGIN { printf "ledger on disk after the reads: %.0f MiB\n", b / 1048576 }'
[ -n "${BENCH_DIR:-}" ] || rm -rf "$work"
