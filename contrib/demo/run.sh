#!/usr/bin/env bash
# The chat demo in one command: mailboxd, the Python backend and nginx in
# front, on 127.0.0.1. Open the printed address in two browser windows
# with ?name=alice and ?name=bob. Ctrl-C stops everything.
#
#   bash contrib/demo/run.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${1:-8080}
dir=$(mktemp -d /tmp/mailboxd-demo.XXXXXX)
cargo build --release --quiet
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mbx=$(free_port); backend=$(free_port)
target/release/mailboxd --http "127.0.0.1:$mbx" --control "$dir/control.sock" --mailbox-ttl 3600 &
pids+=($!)
while [ ! -S "$dir/control.sock" ]; do sleep 0.1; done
python3 contrib/demo/chat.py --listen "127.0.0.1:$backend" --control "$dir/control.sock" &
pids+=($!)
sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|" -e "s|@MAILBOXD@|$mbx|" -e "s|@BACKEND@|$backend|" \
    contrib/demo/nginx.conf > "$dir/nginx.conf"
nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' &
pids+=($!)
echo "chat demo: http://127.0.0.1:$port/?name=alice and http://127.0.0.1:$port/?name=bob"
wait
