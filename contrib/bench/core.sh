#!/usr/bin/env bash
# Core figures of a mailboxd build: pipelined control commands/s and the
# server's memory per idle SSE subscriber. Prints key=value lines.
#   usage: contrib/bench/core.sh [SUBSCRIBERS (default 10000)] [SENDS (default 200000)]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
subs=${1:-10000}
sends=${2:-200000}
per_proc=5000

cargo build --release --quiet --manifest-path "$root/Cargo.toml"
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bench="$here/target/release/mbx-bench"
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

"$root/target/release/mailboxd" --http 127.0.0.1:0 --control "$tmp/ctl.sock" \
    --max-connections 19000 2>"$tmp/log" &
srv=$!
pids+=("$srv")
until grep -q 'listening http=' "$tmp/log"; do sleep 0.05; done
port=$(grep -o 'http=127.0.0.1:[0-9]*' "$tmp/log" | cut -d: -f2)

"$bench" pipeline --control "$tmp/ctl.sock" --count "$sends" --mailboxes 1000

before=$(rss_kb "$srv")
procs=$(( (subs + per_proc - 1) / per_proc ))
for i in $(seq 0 $((procs - 1))); do
    n=$(( subs - i * per_proc < per_proc ? subs - i * per_proc : per_proc ))
    mkfifo "$tmp/in$i"
    "$bench" hold --addr "127.0.0.1:$port" --prefix /comet/idle --first $((i * per_proc + 1000000)) --n "$n" \
        <"$tmp/in$i" >"$tmp/out$i" &
    pids+=("$!")
    exec {fd}>"$tmp/in$i"
    eval "hold_fd_$i=$fd"
done
for i in $(seq 0 $((procs - 1))); do
    until grep -q '^ready' "$tmp/out$i"; do sleep 0.1; done
    grep '^hold' "$tmp/out$i"
done
after=$(rss_kb "$srv")
echo "idle_subscribers=$subs rss_before_kib=$before rss_after_kib=$after bytes_per_subscriber=$(( (after - before) * 1024 / subs ))"
