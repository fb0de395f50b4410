#!/usr/bin/env python3
"""Binary upgrade under load: how long SIGUSR2 takes to hand 10,000 and
19,000 parked clients to a new mailboxd, and what clients see meanwhile.

    python3 contrib/bench/upgrade.py              # 3 runs per case (about 3 minutes)
    python3 contrib/bench/upgrade.py --runs 1 --subs 10000

Per run: a fresh release mailboxd (--pid-file), N idle SSE subscribers in one
group (spread over mbx-bench processes), 10 probes getting a group message
every millisecond from a backend whose control connection moves too. The
bench sends SIGUSR2 and reports: the time from the signal until the new
process writes its pid (it then serves), the longest a probe waited for a
message (the pause a client sees), the snapshot's size per connection
(from the old process's log), both processes' RSS, and that every
subscriber got one message before and one after, exactly once, on the
connection it opened (closed=0: nobody reconnected).

Every figure is the median of --runs runs (min-max in brackets). No other
server takes part: nothing else hands parked connections over (docs/upgrade.md).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from compare import BENCH, MAILBOXD, build, free_port, kv, rss_kib, wait_port


def one(subs, store):
    d = tempfile.mkdtemp(prefix="mbx-upgrade-")
    port = free_port()
    control = os.path.join(d, "control.sock")
    pid_file = os.path.join(d, "mailboxd.pid")
    log_path = os.path.join(d, "mailboxd.log")
    args = [MAILBOXD, "--control", control, "--http", f"127.0.0.1:{port}", "--pid-file", pid_file,
            "--max-connections", "19900", "--heartbeat", "30"]
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    if store == "state-dir":
        args += ["--state-dir", os.path.join(d, "state"), "--fsync", "never"]
    log = open(log_path, "w")
    mb = subprocess.Popen(args, stderr=log, env=env)
    wait_port(port, mb, "mailboxd")
    try:
        old_rss = None

        def sample_old():
            return rss_kib([mb.pid])

        bench = subprocess.Popen([BENCH, "upgrade", "--target", "mailboxd", "--addr", f"127.0.0.1:{port}",
                                  "--prefix", "/", "--control", control, "--pid-file", pid_file,
                                  "--subs", str(subs)], stdout=subprocess.PIPE, text=True)
        # The old process's RSS once every subscriber is parked, just before the signal.
        while mb.poll() is None and not os.path.exists(pid_file):
            time.sleep(0.01)
        while mb.poll() is None:
            r = sample_old()
            if r:
                old_rss = r
            time.sleep(0.05)
        out, _ = bench.communicate(timeout=300)
        if bench.returncode != 0:
            sys.exit(f"mbx-bench upgrade failed:\n{out}")
        r = kv(out.strip().splitlines()[-1])
        new_pid = int(r["new_pid"])
        r["new_rss_kib"] = rss_kib([new_pid])
        r["old_rss_kib"] = old_rss
        text = open(log_path).read()
        m = re.search(r"took over (\d+) connections \((\d+) bytes of output not yet written, (\d+) bytes of snapshot\) (\d+) ms", text)
        if m:
            r["snapshot_per_conn"] = int(m.group(3)) / max(int(m.group(1)), 1)
            r["frozen_to_handed_ms"] = int(m.group(4))
        m = re.search(r"store loaded in (\d+) ms, \d+ connections adopted in (\d+) ms\); serving (\d+) ms after", text)
        if m:
            r["store_load_ms"] = int(m.group(1))
            r["adopt_ms"] = int(m.group(2))
            r["frozen_to_serving_ms"] = int(m.group(3))
        m = re.search(r"frozen into \d+ bytes in (\d+) ms", text)
        if m:
            r["freeze_ms"] = int(m.group(1))
        os.kill(new_pid, 15)
        for _ in range(200):
            if not os.path.exists(f"/proc/{new_pid}"):
                break
            time.sleep(0.05)
        return r
    finally:
        if mb.poll() is None:
            mb.terminate()
            mb.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--subs", type=int, nargs="*", default=[10000, 19000])
    ap.add_argument("--stores", nargs="*", default=["memory", "state-dir"])
    a = ap.parse_args()
    build()
    keys = ["serving_ms", "frozen_to_serving_ms", "freeze_ms", "store_load_ms", "adopt_ms", "probe_pause_ms", "snapshot_per_conn", "old_rss_kib", "new_rss_kib",
            "received", "expected", "lost", "duplicates", "closed", "probe_lost", "probe_duplicates", "probe_closed"]
    for store in a.stores:
        for subs in a.subs:
            runs = [one(subs, store) for _ in range(a.runs)]
            print(f"\n{store}, {subs} parked clients, {a.runs} runs")
            for k in keys:
                vals = [float(r[k]) for r in runs if r.get(k) is not None]
                if not vals:
                    continue
                med = statistics.median(vals)
                print(f"  {k:24} {med:12.1f}   [{min(vals):.1f}-{max(vals):.1f}]")


if __name__ == "__main__":
    main()
