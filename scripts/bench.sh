#!/usr/bin/env bash
# sluice's benchmarks (issue 7): sluice against the shell loop it replaces, side by side, in one
# run, on this machine, over HTTPS on loopback against the built-in emulator.
#
#   scripts/bench.sh                 the full run (about 10 minutes plus the release build)
#   BENCH_SCALE=small scripts/bench.sh   a quick run at a small scale, to try the script
#
# Prints a table of every figure and ratio with its target, and writes it as JSON to
# $CARGO_TARGET_DIR/bench/results.json (default target/bench/results.json). The sizes can be
# set one by one: BENCH_FILES, BENCH_FILE_KIB, BENCH_BIG_MIB, BENCH_KEEP_FILES, BENCH_IDLE_SECS,
# BENCH_REPEAT (runs of each digest, best kept), BENCH_PARTS (e.g. "1 3"). BENCH_BUDGET (840 s)
# is the time the whole run aims at, build included: part 4 loads fewer kept files when the
# measured load rate says all of them would not fit (it prints the number it used);
# BENCH_KEEP_BUDGET sets the seconds of that first load directly. Nothing here listens beyond
# 127.0.0.1, every server is bounded in time and killed on exit, the temporary folder is
# removed (BENCH_KEEP_WORK=1 keeps it).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"

if [[ ${BENCH_SCALE:-full} == small ]]; then
    : "${BENCH_FILES:=100}" "${BENCH_BIG_MIB:=64}" "${BENCH_KEEP_FILES:=2000}"
    : "${BENCH_IDLE_SECS:=10}" "${BENCH_REPEAT:=1}"
fi
FILES=${BENCH_FILES:-2000}
FILE_KIB=${BENCH_FILE_KIB:-64}
BIG_MIB=${BENCH_BIG_MIB:-2048}
KEEP_FILES=${BENCH_KEEP_FILES:-100000}
BUDGET=${BENCH_BUDGET:-840}
IDLE_SECS=${BENCH_IDLE_SECS:-60}
REPEAT=${BENCH_REPEAT:-3}
PARTS=" ${BENCH_PARTS:-1 2 3 4 5 6} "
WATCHES=10
MIB=1048576

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT_DIR=$TARGET_DIR/bench
SLUICE=$TARGET_DIR/release/sluice
JSON=()
ROWS=()
BENCH_START=$(now)

wants() { [[ $PARTS == *" $1 "* ]]; }

# ---- tools ---------------------------------------------------------------------------------

missing=()
for tool in cargo curl openssl sha256sum awk find touch getconf; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    say "bench: missing tools: ${missing[*]} (install them, e.g. apt-get install curl openssl coreutils)"
    exit 1
fi
GNU_TIME=
if [[ -x /usr/bin/time ]] && /usr/bin/time -v true 2>/dev/null; then
    GNU_TIME=/usr/bin/time
else
    say "bench: GNU time (/usr/bin/time -v) not found; peak memory is read from /proc/PID/status" \
        "instead (apt-get install time for its report)"
fi

# ---- machine -------------------------------------------------------------------------------

CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM_GIB=$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
SHA_NI=$(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)
say "machine: $(nproc) cpus, ${CPU_MODEL:-unknown cpu}, ${MEM_GIB} GiB, sha_ni=$SHA_NI," \
    "kernel $(uname -r), load average $LOAD_START"
json machine_nproc "$(nproc)"
json machine_cpu "$(jstr "${CPU_MODEL:-unknown}")"
json machine_mem_gib "$MEM_GIB"
json machine_sha_ni "$(jstr "$SHA_NI")"
json machine_kernel "$(jstr "$(uname -r)")"
json machine_load_start "$(jstr "$LOAD_START")"
json curl_version "$(jstr "$(curl --version | head -1 | cut -d' ' -f1-2)")"
json openssl_version "$(jstr "$(openssl version)")"

# ---- build ---------------------------------------------------------------------------------

say "bench: building sluice in release mode"
build_start=$(now)
(cd "$ROOT" && cargo build --release --locked --bin sluice >&2)
BUILD_SECS=$(since "$build_start")
say "bench: built in ${BUILD_SECS}s"
json build_seconds "$BUILD_SECS"

# ---- workspace and emulator ----------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")
EMU_PID=
RUN_PID=
RUN_IDLE=
IDLE_PID=
cleanup() {
    local pid
    for pid in $IDLE_PID $RUN_IDLE $RUN_PID $EMU_PID; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    [[ ${BENCH_KEEP_WORK:-0} == 1 ]] && say "bench: kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The big file and a margin, the small files, and per kept file its block and its share of
# the ledger (sled's file grows to about 4 KiB per record).
need_kib=$(((BIG_MIB + 1024) * 1024 + FILES * FILE_KIB * 2 + KEEP_FILES * 16))
free_kib=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
if ((free_kib < need_kib)); then
    say "bench: $WORK has $((free_kib / 1024)) MiB free, the run needs about $((need_kib / 1024)) MiB"
    exit 1
fi

PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
(umask 077 && printf '%s\n' "$PASSWORD" >"$WORK/password" &&
    printf 'user = "root:%s"\n' "$PASSWORD" >"$WORK/curl-auth")

# The emulator is bounded by --for, and killed by the trap in any case. Its log level is warn,
# so that it spends its time on loads.
RUST_LOG=warn "$SLUICE" emulate --mode redirect-tls-be --for 30m \
    --password-file "$WORK/password" --ca-out "$WORK/ca.pem" \
    --table bench.many_curl:3 --table bench.many_sluice:3 --table bench.big_curl:3 \
    --table bench.big_ossl:3 --table bench.big_sluice:3 --table bench.emu_big:3 \
    --table bench.emu_many:3 --table bench.keep:3 --table bench.idle:3 \
    >"$WORK/emulator.out" 2>"$WORK/emulator.err" &
EMU_PID=$!
for _ in $(seq 100); do
    grep -q '^mode=' "$WORK/emulator.out" 2>/dev/null && break
    sleep 0.1
done
ENDPOINT=$(sed -n 's/^endpoint=//p' "$WORK/emulator.out")
if [[ -z $ENDPOINT ]]; then
    say "bench: the emulator did not start:"
    cat "$WORK/emulator.err" >&2
    exit 1
fi
say "bench: emulator at $ENDPOINT ($(sed -n 's/^be=//p' "$WORK/emulator.out") behind it)"

# curl as an operator would run it: credentials from a file (-K, so not in `ps`), our CA,
# credentials sent again after the FE's redirect, Expect: 100-continue.
CURL=(curl -sS -K "$WORK/curl-auth" --cacert "$WORK/ca.pem" --location-trusted
    -H 'Expect: 100-continue' -H 'column_separator: ,')
emu_cpu() { cpu_seconds "$EMU_PID"; }
# The emulator's CPU seconds since MARK, an earlier `emu_cpu` reading.
emu_since() { calc "$(emu_cpu) - $1"; }
load_url() { printf '%s/api/bench/%s/_stream_load' "$ENDPOINT" "$1"; }

# A configuration for sluice: the emulator's endpoint and CA, one ledger, and one watch per
# `dir:table:after_load` argument.
write_config() {
    local file=$1 ledger=$2 spec dir table after
    shift 2
    cat >"$file" <<EOF
[cluster]
endpoint = "$ENDPOINT"
user = "root"
password_file = "$WORK/password"
ca_file = "$WORK/ca.pem"

[ledger]
path = "$ledger"

[load]
settle = "1s"
EOF
    for spec in "$@"; do
        IFS=: read -r dir table after <<<"$spec"
        mkdir -p "$dir"
        printf '\n[[watch]]\ndir = "%s"\ndatabase = "bench"\ntable = "%s"\n' "$dir" "$table" >>"$file"
        printf 'column_separator = ","\nafter_load = "%s"\n' "$after" >>"$file"
    done
}

# ---- data ----------------------------------------------------------------------------------

if wants 1 || wants 6; then
    say "bench: writing $FILES files of $FILE_KIB KiB"
    clock gen_many "$WORK/many" "$FILES" "$FILE_KIB"
    backdate "$WORK/many"
    say "bench: written in ${WALL}s"
fi
BIG=$WORK/big/big.csv
if wants 2 || wants 3 || wants 6; then
    say "bench: writing one file of $BIG_MIB MiB"
    mkdir -p "$WORK/big"
    clock gen_big "$BIG" "$BIG_MIB"
    backdate "$WORK/big"
    say "bench: written in ${WALL}s"
fi
BIG_BYTES=$( [[ -f $BIG ]] && stat -c %s "$BIG" || echo 0)
# Written back to disk now, so that no measurement below competes with the writeback; the
# files stay in the page cache, and every reader finds them there alike.
sync

# ---- 3. digest speed -----------------------------------------------------------------------

best_of() {
    # best_of VAR cmd...: the shortest wall time of $REPEAT runs.
    local var=$1 best= i
    shift
    for ((i = 0; i < REPEAT; i++)); do
        clock "$@" >/dev/null
        ((RC == 0)) || { say "bench: '$*' failed ($RC)"; exit 1; }
        if [[ -z $best ]] || holds "$WALL < $best"; then best=$WALL; fi
    done
    printf -v "$var" '%s' "$best"
}

if wants 3; then
    say "bench: 3. digest speed over $BIG_MIB MiB (best of $REPEAT)"
    best_of T_DIG_SLUICE "$SLUICE" label "$BIG" --database bench --table big_sluice
    best_of T_DIG_OSSL openssl dgst -sha256 "$BIG"
    saved=$REPEAT REPEAT=1
    best_of T_DIG_COREUTILS sha256sum "$BIG"
    REPEAT=$saved
    mbps() { calc "$BIG_BYTES / $MIB / $1"; }
    figure digest_sluice_mib_s 3 "sluice label (SHA-256 pass)" "$(mbps "$T_DIG_SLUICE")" " MiB/s"
    figure digest_openssl_mib_s 3 "openssl dgst -sha256" "$(mbps "$T_DIG_OSSL")" " MiB/s"
    figure digest_sha256sum_mib_s 3 "sha256sum" "$(mbps "$T_DIG_COREUTILS")" " MiB/s"
    target digest_speed_vs_openssl 3 "sluice speed / openssl speed" \
        "$(calc "$T_DIG_OSSL / $T_DIG_SLUICE")" "" ">=" 0.9
fi

# ---- 2. one big file -----------------------------------------------------------------------

hash_then_curl() {
    # hash_then_curl HASHER TABLE PREFIX OUT: digest for the label, then one curl -T.
    local sha
    case $1 in
    sha256sum) sha=$(sha256sum "$BIG" | cut -c1-64) ;;
    openssl) sha=$(openssl dgst -sha256 -r "$BIG" | cut -c1-64) ;;
    esac
    "${CURL[@]}" -H "label: $3_$sha" -T "$BIG" "$(load_url "$2")" >"$4"
}

expect_success() {
    # expect_success ANSWERS N WHAT: N answers must say Success.
    local ok
    read -r ok _ < <(parse_answers "$1")
    if ((ok != $2)); then
        say "bench: $3: $ok of $2 loads succeeded; answers in $1:"
        head -c 2000 "$1" >&2
        exit 1
    fi
}

if wants 2; then
    say "bench: 2. one file of $BIG_MIB MiB: sha256sum + curl"
    clock hash_then_curl sha256sum big_curl curl "$WORK/big_curl.json"
    T_BIG_BASE=$WALL
    expect_success "$WORK/big_curl.json" 1 "sha256sum + curl"
    say "bench: 2. openssl dgst + curl"
    clock hash_then_curl openssl big_ossl ossl "$WORK/big_ossl.json"
    T_BIG_LIMIT=$WALL
    expect_success "$WORK/big_ossl.json" 1 "openssl + curl"
    say "bench: 2. sluice once"
    write_config "$WORK/big.toml" "$WORK/ledger-big" "$WORK/big:big_sluice:keep"
    mark=$(emu_cpu)
    measure "$WORK/big_sluice" "$SLUICE" once --config "$WORK/big.toml"
    T_BIG_SLUICE=$WALL RSS_BIG=$RSS_KIB EMU_BIG_SLUICE=$(emu_since "$mark")
    read -r loaded _ < <(parse_summary "$WORK/big_sluice.out")
    if ((RC != 0)) || [[ ${loaded:-0} != 1 ]]; then
        say "bench: sluice once did not load the big file (exit $RC):"
        cat "$WORK/big_sluice.out" "$WORK/big_sluice.err" >&2
        exit 1
    fi
    figure big_sha256sum_curl_s 2 "sha256sum + curl -T" "$T_BIG_BASE" " s"
    figure big_openssl_curl_s 2 "openssl dgst + curl -T (limit)" "$T_BIG_LIMIT" " s"
    figure big_sluice_s 2 "sluice once" "$T_BIG_SLUICE" " s"
    figure big_sluice_mib_s 2 "sluice, end to end" "$(calc "$BIG_BYTES / $MIB / $T_BIG_SLUICE")" " MiB/s"
    target big_vs_baseline 2 "sluice / (sha256sum + curl)" \
        "$(calc "$T_BIG_SLUICE / $T_BIG_BASE")" "" "<=" 0.5
    target big_vs_limit 2 "sluice / (openssl + curl)" \
        "$(calc "$T_BIG_SLUICE / $T_BIG_LIMIT")" "" "<=" 1.15
    target big_peak_rss_mib 2 "sluice peak resident memory" \
        "$(calc "$RSS_BIG / 1024")" " MiB" "<" 64
    figure big_emulator_cores 2 "emulator CPU / wall during sluice once" \
        "$(calc "$EMU_BIG_SLUICE / $T_BIG_SLUICE")" " cores"
fi

# ---- 6. the emulator alone -----------------------------------------------------------------

# One config block per file for `curl --parallel`: options do not carry over `next`.
parallel_config() {
    local dir=$1 table=$2 i=0 f
    for f in "$dir"/*.csv; do
        ((i++ == 0)) || printf 'next\n'
        printf 'url = "%s"\nupload-file = "%s"\nheader = "label: emu_%d"\n' "$(load_url "$table")" "$f" "$i"
        printf 'header = "Expect: 100-continue"\nheader = "column_separator: ,"\n'
        printf 'cacert = "%s"\nlocation-trusted\nuser = "root:%s"\nsilent\nshow-error\n' \
            "$WORK/ca.pem" "$PASSWORD"
    done
}

if wants 6; then
    say "bench: 6. the emulator alone: curl -T of $BIG_MIB MiB"
    mark=$(emu_cpu)
    clock "${CURL[@]}" -H "label: emu_big" -T "$BIG" -o "$WORK/emu_big.json" "$(load_url emu_big)"
    T_EMU_BIG=$WALL EMU_BIG_CURL=$(emu_since "$mark")
    expect_success "$WORK/emu_big.json" 1 "curl -T alone"
    say "bench: 6. the emulator alone: curl --parallel-max 4 over $FILES files"
    (umask 077 && parallel_config "$WORK/many" emu_many >"$WORK/parallel.curl")
    mark=$(emu_cpu)
    clock curl -sS --parallel --parallel-max 4 -K "$WORK/parallel.curl" >"$WORK/emu_many.json" \
        2>"$WORK/emu_many.err"
    T_EMU_MANY=$WALL EMU_MANY_CURL=$(emu_since "$mark")
    expect_success "$WORK/emu_many.json" "$FILES" "curl --parallel"
    figure emulator_big_mib_s 6 "emulator via curl -T, one big file" \
        "$(calc "$BIG_BYTES / $MIB / $T_EMU_BIG")" " MiB/s"
    figure emulator_many_files_s 6 "emulator via curl --parallel-max 4" \
        "$(calc "$FILES / $T_EMU_MANY")" " files/s"
    figure emulator_cpu_ms_per_file 6 "emulator CPU per small file (curl)" \
        "$(calc "$EMU_MANY_CURL * 1000 / $FILES")" " ms"
    figure emulator_cpu_s_per_gib 6 "emulator CPU per GiB (curl)" \
        "$(calc "$EMU_BIG_CURL * 1024 / $BIG_MIB")" " s"
fi

# ---- 1. many files -------------------------------------------------------------------------

baseline_many() {
    local f sha
    for f in "$WORK/many"/*.csv; do
        sha=$(sha256sum "$f" | cut -c1-64)
        "${CURL[@]}" -H "label: curl_$sha" -T "$f" "$(load_url many_curl)" >>"$WORK/many_curl.json"
        echo >>"$WORK/many_curl.json"
    done
}

if wants 1; then
    say "bench: 1. $FILES files: the sha256sum + curl loop"
    clock baseline_many
    T_MANY_BASE=$WALL
    expect_success "$WORK/many_curl.json" "$FILES" "the curl loop"
    say "bench: 1. $FILES files: sluice once"
    write_config "$WORK/many.toml" "$WORK/ledger-many" "$WORK/many:many_sluice:move"
    mark=$(emu_cpu)
    measure "$WORK/many_sluice" "$SLUICE" once --config "$WORK/many.toml"
    T_MANY_SLUICE=$WALL RSS_MANY=$RSS_KIB EMU_MANY_SLUICE=$(emu_since "$mark")
    read -r loaded _ < <(parse_summary "$WORK/many_sluice.out")
    if ((RC != 0)) || [[ ${loaded:-0} != "$FILES" ]]; then
        say "bench: sluice once loaded ${loaded:-0} of $FILES files (exit $RC):"
        tail -5 "$WORK/many_sluice.out" "$WORK/many_sluice.err" >&2
        exit 1
    fi
    MANY_RATE=$(calc "$FILES / $T_MANY_SLUICE")
    figure many_curl_loop_s 1 "sha256sum + curl loop, $FILES x $FILE_KIB KiB" "$T_MANY_BASE" " s"
    figure many_sluice_s 1 "sluice once, $FILES x $FILE_KIB KiB" "$T_MANY_SLUICE" " s"
    figure many_sluice_files_s 1 "sluice rate" "$MANY_RATE" " files/s"
    figure many_sluice_peak_rss_mib 1 "sluice peak resident memory" "$(calc "$RSS_MANY / 1024")" " MiB"
    figure many_emulator_cores 1 "emulator CPU / wall during sluice once" \
        "$(calc "$EMU_MANY_SLUICE / $T_MANY_SLUICE")" " cores"
    target many_speedup 1 "loop time / sluice time" "$(calc "$T_MANY_BASE / $T_MANY_SLUICE")" "" ">=" 10
fi

# ---- 5. idle cost (started here, read at the end) -------------------------------------------

# The idle run costs only CPU time, not wall time, so it is measured while part 4 prepares its
# ledger (a step that is timed for information only): that keeps the whole run within budget.
# A process that sleeps uses the same CPU seconds however busy the machine is.
if wants 5; then
    say "bench: 5. idle: sluice run with $WATCHES watches on empty folders for ${IDLE_SECS}s" \
        "(in the background)"
    specs=()
    for ((i = 1; i <= WATCHES; i++)); do specs+=("$WORK/idle/w$i:idle:move"); done
    write_config "$WORK/idle.toml" "$WORK/ledger-idle" "${specs[@]}"
    "$SLUICE" run --config "$WORK/idle.toml" >/dev/null 2>"$WORK/idle.err" &
    RUN_IDLE=$!
    (
        sleep 2
        before=$(cpu_seconds "$RUN_IDLE")
        sleep "$IDLE_SECS"
        after=$(cpu_seconds "$RUN_IDLE")
        kill -TERM "$RUN_IDLE"
        echo "$before $after" >"$WORK/idle.cpu"
    ) &
    IDLE_PID=$!
fi

# ---- 4. restart over kept files ------------------------------------------------------------

# Waits until process PID has used no CPU for QUIET seconds (or DEADLINE passes, or it exits),
# and prints when it last used any: the moment it went idle. CPU time is read from
# /proc/PID/stat every 50 ms, in clock ticks (10 ms), which bounds the error.
wait_quiet() {
    local pid=$1 quiet=$2 deadline=$3 cpu last=-1 changed
    changed=$(now)
    while kill -0 "$pid" 2>/dev/null && holds "$(now) < $deadline"; do
        cpu=$(cpu_seconds "$pid" 2>/dev/null) || break
        if [[ $cpu != "$last" ]]; then
            last=$cpu
            changed=$(now)
        elif holds "$(now) - $changed >= $quiet"; then
            printf '%s' "$changed"
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# First load of kept files FROM..TO: writes them, runs `sluice once`, checks every one loaded.
first_load() {
    local from=$1 to=$2 tag=$3
    gen_tiny "$WORK/keep" "$from" "$to"
    backdate "$WORK/keep"
    measure "$WORK/$tag" "$SLUICE" once --config "$WORK/keep.toml"
    local loaded
    read -r loaded _ < <(parse_summary "$WORK/$tag.out")
    if ((RC != 0)) || [[ ${loaded:-0} != $((to - from + 1)) ]]; then
        say "bench: the first load loaded ${loaded:-0} of $((to - from + 1)) (exit $RC)"
        tail -5 "$WORK/$tag.out" "$WORK/$tag.err" >&2
        exit 1
    fi
}

if wants 4; then
    write_config "$WORK/keep.toml" "$WORK/ledger-keep" "$WORK/keep:keep:keep"
    # The first load is a preparation, and at a few hundred files a second the full 100,000
    # may not fit the 15 minutes: load a first batch, measure the rate, and add only as many
    # more files as the time left allows.
    batch=$((KEEP_FILES < 2000 ? KEEP_FILES : 2000))
    say "bench: 4. first load: $batch kept files, to measure the rate"
    first_load 1 "$batch" keep_first1
    T_KEEP_FIRST=$WALL
    n=$KEEP_FILES
    if ((n > batch)); then
        rate=$(calc "$batch / $WALL")
        budget=${BENCH_KEEP_BUDGET:-$(awk -v t="$(since "$BENCH_START")" -v b="$BUDGET" \
            'BEGIN { r = b - t - 60; print (r < 30 ? 30 : r) }')}
        fit=$(awk -v r="$rate" -v b="$budget" -v k="$batch" \
            'BEGIN { n = int((k + r * b) / 1000) * 1000; print (n < k ? k : n) }')
        if ((fit < n)); then
            say "bench: 4. at $rate files/s only $fit kept files fit the ${budget}s left for this" \
                "step: using $fit instead of $n"
            n=$fit
        fi
    fi
    if ((n > batch)); then
        say "bench: 4. first load: $((n - batch)) more kept files"
        first_load $((batch + 1)) "$n" keep_first2
        T_KEEP_FIRST=$(calc "$T_KEEP_FIRST + $WALL")
    fi
    records_before=$("$SLUICE" ledger export --config "$WORK/keep.toml" | wc -l)

    say "bench: 4. second start: sluice once over the same $n files"
    measure "$WORK/keep_again" "$SLUICE" once --config "$WORK/keep.toml"
    T_KEEP_ONCE=$WALL RSS_KEEP_ONCE=$RSS_KIB
    read -r l2 _ _ d2 _ u2 < <(parse_summary "$WORK/keep_again.out")
    records_after=$("$SLUICE" ledger export --config "$WORK/keep.toml" | wc -l)
    REREAD=$((${l2:-1} + ${d2:-0} + ${u2:-0} + records_after - records_before))

    say "bench: 4. third start: sluice run until it is idle"
    # At the default log level: a debug line per file would cost the run a fair share of its
    # time. Idle is when it has used no CPU for a second; a file read again would show as a
    # `loaded` or `duplicate` line (both info).
    run_start=$(now)
    "$SLUICE" --log-format json run --config "$WORK/keep.toml" >/dev/null 2>"$WORK/keep_run.err" &
    RUN_PID=$!
    if idle_at=$(wait_quiet "$RUN_PID" 1 "$(awk -v s="$run_start" 'BEGIN { printf "%.3f", s + 120 }')"); then
        T_KEEP_RUN=$(awk -v a="$run_start" -v b="$idle_at" 'BEGIN { printf "%.3f", b - a }')
    else
        T_KEEP_RUN=999
        say "bench: sluice run did not become idle within 120 s"
    fi
    RSS_KEEP_RUN=$(awk '/^VmHWM:/ { print $2 }' "/proc/$RUN_PID/status" 2>/dev/null || echo 0)
    CPU_KEEP_RUN=$(cpu_seconds "$RUN_PID" 2>/dev/null || echo 0)
    kill -TERM "$RUN_PID"
    wait "$RUN_PID" || true
    RUN_PID=
    RUN_REREAD=$(grep -c -E '"message":"(loaded|duplicate, not loaded again)"' "$WORK/keep_run.err" || true)

    figure keep_files 4 "kept files, all loaded before" "$n" ""
    figure keep_first_load_s 4 "their first load (sluice once, preparation)" "$T_KEEP_FIRST" " s"
    figure keep_first_load_files_s 4 "first load rate" "$(calc "$n / $T_KEEP_FIRST")" " files/s"
    target keep_once_read_again 4 "restart with once: files read again" "$REREAD" "" "==" 0
    target keep_once_s 4 "restart with once: wall time to exit" "$T_KEEP_ONCE" " s" "<=" 2
    target keep_once_peak_rss_mib 4 "restart with once: peak memory" \
        "$(calc "$RSS_KEEP_ONCE / 1024")" " MiB" "<" 64
    target keep_run_read_again 4 "restart with run: files read again" "$RUN_REREAD" "" "==" 0
    target keep_run_idle_s 4 "restart with run: time until idle" "$T_KEEP_RUN" " s" "<=" 2
    target keep_run_peak_rss_mib 4 "restart with run: peak memory" \
        "$(calc "$RSS_KEEP_RUN / 1024")" " MiB" "<" 64
    figure keep_run_cpu_s 4 "restart with run: CPU seconds until idle" "$CPU_KEEP_RUN" " s"
fi

# ---- 5. idle cost, read ----------------------------------------------------------------------

if [[ -n $IDLE_PID ]]; then
    wait "$IDLE_PID" || true
    wait "$RUN_IDLE" || true
    read -r cpu_before cpu_after <"$WORK/idle.cpu"
    target idle_cpu_s 5 "sluice run, $WATCHES idle watches: CPU seconds in ${IDLE_SECS}s" \
        "$(calc "$cpu_after - $cpu_before")" " s" "<" 0.05
fi

# ---- report --------------------------------------------------------------------------------

TOTAL=$(since "$BENCH_START")
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
json machine_load_end "$(jstr "$LOAD_END")"
json sizes "$(jstr "files=$FILES file_kib=$FILE_KIB big_mib=$BIG_MIB keep_files=${n:-0} idle_secs=$IDLE_SECS")"
json total_seconds "$TOTAL"
mkdir -p "$OUT_DIR"
write_json "$OUT_DIR/results.json"
{
    echo
    echo "sluice benchmarks, $(date -u +%Y-%m-%dT%H:%M:%SZ): $(nproc) cpus, ${CPU_MODEL:-unknown cpu}," \
        "${MEM_GIB} GiB; load average $LOAD_START at start, $LOAD_END at end"
    echo
    print_table
    echo
    echo "whole run ${TOTAL}s (build ${BUILD_SECS}s); JSON in $OUT_DIR/results.json"
} | tee "$OUT_DIR/results.txt"
