# shellcheck shell=bash
# Helpers of scripts/bench.sh: clocks, peak memory, data generators, results (table and JSON).
# Sourced, never run. Every function here works on the globals that bench.sh sets up.

# Wall clock in seconds with nanoseconds, as `date` prints it.
now() { date +%s.%N; }

# Seconds since START (a `now` value), to the millisecond.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

# Evaluates an awk arithmetic expression and prints it with 4 significant digits (whole
# numbers from 1000 up).
calc() { awk "BEGIN { v = $1; if (v >= 1000 || v <= -1000) printf \"%.0f\", v; else printf \"%.4g\", v }"; }

# Whether the awk comparison holds: `holds "1.2 < 2"`.
holds() { awk "BEGIN { exit !($1) }"; }

say() { printf '%s\n' "$*" >&2; }

# Runs a command and sets WALL (seconds), RSS_KIB (peak resident set, KiB) and RC.
# stdout goes to $1.out, stderr to $1.err. Peak memory comes from GNU time's -v report when
# /usr/bin/time is there, otherwise from polling /proc/PID/status for VmHWM.
measure() {
    local base=$1
    shift
    local start
    start=$(now)
    RC=0
    if [[ -n $GNU_TIME ]]; then
        "$GNU_TIME" -v -o "$base.time" "$@" >"$base.out" 2>"$base.err" || RC=$?
        WALL=$(since "$start")
        RSS_KIB=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$base.time")
        # GNU time reports the command's own status in its report, and exits with it.
    else
        "$@" >"$base.out" 2>"$base.err" &
        local pid=$! hwm=0 line
        while kill -0 "$pid" 2>/dev/null; do
            line=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
            [[ -n $line ]] && hwm=$line
            sleep 0.02
        done
        wait "$pid" || RC=$?
        WALL=$(since "$start")
        RSS_KIB=$hwm
    fi
    : "${RSS_KIB:=0}"
}

# Times a shell function or command without memory figures; sets WALL and RC.
clock() {
    local start
    start=$(now)
    RC=0
    "$@" || RC=$?
    WALL=$(since "$start")
}

# `once` summary fields: prints "loaded rows bytes duplicate rejected unfinished".
parse_summary() {
    sed -n 's/^loaded \([0-9]*\) (\([0-9]*\) rows, \([0-9]*\) bytes), duplicate \([0-9]*\), rejected \([0-9]*\), unfinished \([0-9]*\).*$/\1 \2 \3 \4 \5 \6/p' "$1" | tail -1
}

# Sum of NumberLoadedRows and count of "Status": "Success" over curl's answers in a file.
# Prints "successes rows".
parse_answers() {
    awk '/"Status": *"Success"/ { ok++ }
         /"NumberLoadedRows":/ { gsub(/[^0-9]/, "", $2); rows += $2 }
         END { printf "%d %d\n", ok, rows }' "$1"
}

# N CSV files of KIB KiB each in DIR, rows of exactly 32 bytes (3 columns), every file
# distinct (its number is in every row), so no two share a digest.
gen_many() {
    local dir=$1 n=$2 kib=$3
    mkdir -p "$dir"
    awk -v dir="$dir" -v n="$n" -v rows="$((kib * 32))" 'BEGIN {
        for (i = 1; i <= n; i++) {
            f = sprintf("%s/part-%06d.csv", dir, i)
            for (r = 1; r <= rows; r++)
                printf "%09d,%08d,%012d\n", i, r, (i * 7919 + r * 104729) % 999999999989 > f
            close(f)
        }
    }'
}

# A CSV file of MIB MiB: a 1 MiB block of 32-byte rows written once, then repeated with cat.
gen_big() {
    local file=$1 mib=$2 dir
    dir=$(dirname "$file")
    awk 'BEGIN { for (r = 1; r <= 32768; r++) printf "%09d,%08d,%012d\n", 1, r, r * 104729 }' \
        >"$dir/block.1m"
    local i
    : >"$dir/block.64m"
    for ((i = 0; i < 64; i++)); do cat "$dir/block.1m"; done >"$dir/block.64m"
    {
        for ((i = 0; i < mib / 64; i++)); do cat "$dir/block.64m"; done
        for ((i = 0; i < mib % 64; i++)); do cat "$dir/block.1m"; done
    } >"$file"
    rm -f "$dir/block.1m" "$dir/block.64m"
}

# One-row CSV files number FROM to TO in DIR, each distinct.
gen_tiny() {
    local dir=$1 from=$2 to=$3
    mkdir -p "$dir"
    awk -v dir="$dir" -v from="$from" -v to="$to" 'BEGIN {
        for (i = from; i <= to; i++) {
            f = sprintf("%s/k-%06d.csv", dir, i)
            printf "%09d,%08d,%012d\n", i, 1, i * 104729 > f
            close(f)
        }
    }'
}

# Sets the mtime of every file in DIR that is newer than an hour to an hour back, so a scan
# finds it settled at once; files already set back are left alone (a kept file whose mtime
# changed would rightly be read again).
BACKDATE=$(($(date +%s) - 3600))
backdate() {
    find "$1" -type f -newermt "@$((BACKDATE + 1))" -exec touch -d "@$BACKDATE" {} +
}

# User and CPU seconds (utime + stime) a live process has used so far.
cpu_seconds() {
    local ticks
    ticks=$(getconf CLK_TCK)
    # Fields after the `(comm)` field: state is 3rd overall, utime 14th, stime 15th.
    sed 's/^.*) //' "/proc/$1/stat" | awk -v t="$ticks" '{ printf "%.3f", ($12 + $13) / t }'
}

# ---- results -------------------------------------------------------------------------------

# One JSON member, value already JSON (number, quoted string, true/false).
json() { JSON+=("\"$1\": $2"); }

# One row of the printed table: part, what, value, target, verdict.
row() { ROWS+=("$1"$'\t'"$2"$'\t'"$3"$'\t'"$4"$'\t'"$5"); }

# A row with a target: KEY, part, what, value (number), unit, comparison, threshold.
# The verdict is "met" or "NOT met", and both go to JSON as KEY and KEY_met.
target() {
    local key=$1 part=$2 what=$3 value=$4 unit=$5 op=$6 limit=$7 verdict
    if holds "$value $op $limit"; then verdict=met; else verdict="NOT met"; fi
    row "$part" "$what" "$value$unit" "$op $limit$unit" "$verdict"
    json "$key" "$value"
    json "${key}_met" "$([[ $verdict == met ]] && echo true || echo false)"
}

# A row without a target.
figure() {
    local key=$1 part=$2 what=$3 value=$4 unit=$5
    row "$part" "$what" "$value$unit" "" ""
    json "$key" "$value"
}

print_table() {
    {
        printf '%s\t%s\t%s\t%s\t%s\n' part measurement value target verdict
        printf '%s\n' "${ROWS[@]}"
    } | awk -F'\t' '
        { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR }
        END {
            for (r = 1; r <= n; r++) {
                line = ""
                for (i = 1; i <= 5; i++) line = line sprintf("%-" w[i] "s  ", cell[r, i])
                sub(/ +$/, "", line); print line
                if (r == 1) { s = ""; for (i = 1; i <= 5; i++) { d = ""; for (k = 0; k < w[i]; k++) d = d "-"; s = s d "  " } sub(/ +$/, "", s); print s }
            }
        }'
}

write_json() {
    local file=$1 i
    {
        printf '{\n'
        for ((i = 0; i < ${#JSON[@]}; i++)); do
            printf '  %s%s\n' "${JSON[i]}" "$([[ $i -lt $((${#JSON[@]} - 1)) ]] && echo ,)"
        done
        printf '}\n'
    } >"$file"
}

# A JSON string literal of plain text (quotes and backslashes escaped).
jstr() {
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}
