#!/usr/bin/env bash
# Kills `sluice run` with SIGKILL at random moments while it loads a backlog, ROUNDS times,
# then lets `sluice once` finish, and checks with the emulator's own counts that every file
# was committed exactly once and no file was lost. Half the backlog is there at the start; the
# rest arrives a few files per round, and every load takes 150 ms on the emulator, so kills
# land before, during and after loads, claims and ledger writes.
#
#   scripts/crash-loop.sh [ROUNDS=100] [FILES=200]
#
# LOAD_DELAY (150ms) sets how long each load takes on the emulator; KEEP=1 keeps the work
# folder (configs, ledger, logs) for a look afterwards; EMULATOR_LOG=debug logs its requests.
#
# Loopback only: the emulator listens on 127.0.0.1 and stops by itself after an hour.
set -euo pipefail

ROUNDS=${1:-100}
FILES=${2:-200}
cd "$(dirname "$0")/.."

cargo build --release --quiet
BIN=$PWD/target/release/sluice
WORK=$(mktemp -d -t sluice-crash-XXXXXX)
EMU_PID=
cleanup() {
    [ -n "$EMU_PID" ] && kill "$EMU_PID" 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

cd "$WORK"
umask 077
printf 'crash-loop-pw' > password
printf 'machine localhost login root password crash-loop-pw\n' > netrc
RUST_LOG=${EMULATOR_LOG:-warn} "$BIN" emulate --mode redirect-tls-be --table db.flights:3 --password-file password \
    --load-delay ${LOAD_DELAY:-150ms} --ca-out ca.pem --for 1h > emulator.out 2> emulator.log &
EMU_PID=$!
for _ in $(seq 100); do grep -q '^mode=' emulator.out 2>/dev/null && break; sleep 0.1; done
ENDPOINT=$(sed -n 's/^endpoint=//p' emulator.out)

mkdir -p landing
cat > sluice.toml <<EOF
[cluster]
endpoint = "$ENDPOINT"
user = "root"
password_file = "password"
ca_file = "ca.pem"

[ledger]
path = "ledger"

[load]
settle = "200ms"
retry_initial = "100ms"
retry_max = "1s"

[[watch]]
dir = "landing"
database = "db"
table = "flights"
column_separator = ","
EOF

next=1
drop_files() {
    local n=$1
    while [ "$n" -gt 0 ] && [ "$next" -le "$FILES" ]; do
        printf '%s,%s,%s\n' "$next" "row-$next" "$RANDOM" > "landing/.f$next.part"
        mv "landing/.f$next.part" "landing/f$next.csv"
        next=$((next + 1)); n=$((n - 1))
    done
}
drop_files $(( FILES / 2 ))
per_round=$(( (FILES - FILES / 2 + ROUNDS - 1) / ROUNDS ))

kills=0
for round in $(seq 1 "$ROUNDS"); do
    drop_files "$per_round"
    RUST_LOG=error "$BIN" run --config sluice.toml 2>> run.log &
    pid=$!
    # 50 to 800 ms: sometimes before the first load, often in the middle of one.
    sleep "0.$(printf '%03d' $(( RANDOM % 750 + 50 )))"
    kill -9 "$pid" 2>/dev/null && kills=$((kills + 1)) || true
    wait "$pid" 2>/dev/null || true
    if [ $(( round % 10 )) -eq 0 ]; then
        loaded=$(find landing/done -type f 2>/dev/null | wc -l)
        echo "round $round: $loaded of $FILES files done"
    fi
done

set +e
RUST_LOG=warn "$BIN" once --config sluice.toml > once.out 2>> run.log
once_status=$?
set -e

stats=$(curl -sS --netrc-file netrc --cacert ca.pem "$ENDPOINT/_emulator/stats")
"$BIN" ledger export --config sluice.toml > ledger.jsonl
python3 - "$FILES" "$once_status" "$kills" <<PY
import json, os, sys
files, once_status, kills = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
stats = json.loads('''$stats''')
labels = stats["labels"]
commits = [l["commits"] for l in labels.values()]
attempts = sum(l["attempts"] for l in labels.values())
rows = stats["tables"]["db.flights"]["rows"]
done = len(os.listdir("landing/done")) if os.path.isdir("landing/done") else 0
left = [f for f in os.listdir("landing") if os.path.isfile(os.path.join("landing", f))]
records = [json.loads(l) for l in open("ledger.jsonl")]
retried = sum(1 for r in records if r["attempts"] > 1)
lost = sum(1 for r in records if "answer was lost" in (r["message"] or ""))
print(f"ledger: {len(records)} records; {retried} with more than one attempt, {lost} whose "
      f"answer a kill cut off and that were resolved by label without resending")
print(f"kills: {kills}, labels: {len(labels)}, commits per label: min {min(commits)} "
      f"max {max(commits)}, attempts seen by the cluster: {attempts}, rows: {rows}, "
      f"files done: {done}, left in landing: {len(left)}, final once exit: {once_status}")
ok = (len(labels) == files and set(commits) == {1} and rows == files and done == files
      and not left and once_status == 0)
print("OK: every file committed exactly once, none lost" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
