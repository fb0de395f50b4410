#!/usr/bin/env python3
"""Durability benchmark: mailboxd's journal beside Redis's append-only file,
on this machine, in one run.

    python3 contrib/bench/durability.py            # about 5 minutes
    python3 contrib/bench/durability.py --runs 1 --count 50000

For each fsync mode (never, everysec, always) and 1 and 16 backends:
- mailboxd --state-dir, pipelined SENDs of 20 bytes to 1,000 mailboxes, 64
  in flight per backend connection, all connections driven by one load
  generator thread (mbx-bench pipeline --depth 64 --connections N), as
  redis-benchmark drives its clients;
- redis-server --appendonly yes --appendfsync (no|everysec|always),
  redis-benchmark -t lpush -P 64 -d 20 -c (1|16).
Rates are medians of --runs runs (min-max in brackets); mailboxd also
reports journal syncs per second and journal bytes per message. Then the
restart time with 100,000 retained messages and the loop's pause when a
compaction forks. Everything stays on 127.0.0.1 and in temp dirs. Needs
redis-server and redis-tools (Debian).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from compare import BENCH, MAILBOXD, build
REDIS_MODES = {"never": "no", "everysec": "everysec", "always": "always"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def control(path, line):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(line.encode() + b"\n")
        return s.makefile().readline().strip()


def stat(path, name):
    return int(re.search(rf" {name}=(\d+)", control(path, "STATS")).group(1))


class Mailboxd:
    def __init__(self, state, fsync, extra=()):
        self.dir = tempfile.mkdtemp(prefix="mbx-dur-")
        self.control = os.path.join(self.dir, "control.sock")
        self.log = os.path.join(self.dir, "log")
        self.proc = subprocess.Popen(
            [MAILBOXD, "--http", f"127.0.0.1:{free_port()}", "--control", self.control,
             "--state-dir", state, "--fsync", fsync, *extra],
            stderr=open(self.log, "w"))
        self.started = time.monotonic()
        deadline = time.time() + 60
        while not (os.path.exists(self.control) and "listening control" in open(self.log).read()):
            if self.proc.poll() is not None or time.time() > deadline:
                sys.exit(f"mailboxd did not start:\n{open(self.log).read()}")
            time.sleep(0.005)
        self.ready = time.monotonic() - self.started

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def mailboxd_rate(fsync, backends, count):
    state = tempfile.mkdtemp(prefix="mbx-state-")
    m = Mailboxd(state, fsync)
    start = time.monotonic()
    out = subprocess.run([BENCH, "pipeline", "--control", m.control, "--count", str(count),
                          "--mailboxes", "1000", "--size", "20", "--depth", "64",
                          "--connections", str(backends)], capture_output=True, text=True).stdout
    secs = time.monotonic() - start
    if "errors=0" not in out:
        sys.exit(f"mbx-bench failed: {out}")
    rate = float(re.search(r"rate=(\d+)", out).group(1))
    syncs, written = stat(m.control, "journal_syncs"), stat(m.control, "journal_bytes")
    m.stop()
    shutil.rmtree(state, ignore_errors=True)
    return {"rate": rate, "syncs": syncs / secs, "bytes": written / count}


def redis_rate(fsync, backends, count):
    d = tempfile.mkdtemp(prefix="mbx-redis-")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--appendonly", "yes", "--appendfsync", REDIS_MODES[fsync],
                             "--save", "", "--dir", d], stdout=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.time() > deadline:
                sys.exit("redis-server did not start")
            time.sleep(0.05)
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "lpush", "-P", "64", "-d", "20",
                          "-c", str(backends), "-n", str(count), "-q"],
                         capture_output=True, text=True).stdout
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    shutil.rmtree(d, ignore_errors=True)
    rate = re.findall(r"LPUSH: ([\d.]+) requests per second", out.replace("\r", "\n"))
    if not rate:
        sys.exit(f"redis-benchmark said: {out}")
    return {"rate": float(rate[-1])}


def med(values):
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}–{max(values):,.0f}]"


def restart_and_compaction(messages):
    state = tempfile.mkdtemp(prefix="mbx-state-")
    m = Mailboxd(state, "never", ["--retain", "1000", "--compact-after", str(1 << 40)])
    subprocess.run([BENCH, "pipeline", "--control", m.control, "--count", str(messages),
                    "--mailboxes", "100", "--size", "20"], check=True, stdout=subprocess.DEVNULL)
    journal = stat(m.control, "journal_bytes")
    m.stop()
    m = Mailboxd(state, "never", ["--retain", "1000"])
    from_journal = m.ready
    replay = re.search(r"records replayed in (\d+) ms", open(m.log).read()).group(1)
    m.stop()
    # Force a compaction of the same state and see what the loop paid.
    m = Mailboxd(state, "never", ["--retain", "1000", "--compact-after", "1"])
    control(m.control, "SEND trigger 1\nx")
    deadline = time.time() + 30
    while "snapshot of" not in open(m.log).read() and time.time() < deadline:
        time.sleep(0.05)
    log = open(m.log).read()
    fork_us = re.search(r"forked in (\d+) us", log).group(1)
    snap = re.search(r"snapshot of (\d+) bytes written in (\d+) ms", log)
    m.stop()
    m = Mailboxd(state, "never", ["--retain", "1000"])
    from_snapshot = m.ready
    retained = stat(m.control, "retained")
    m.stop()
    shutil.rmtree(state, ignore_errors=True)
    return {
        "journal_bytes": journal, "start_journal_s": from_journal, "replay_ms": replay,
        "fork_us": fork_us, "snapshot_bytes": snap.group(1), "snapshot_ms": snap.group(2),
        "start_snapshot_s": from_snapshot, "retained": retained,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--count", type=int, default=200000)
    a = ap.parse_args()
    for tool in ("redis-server", "redis-benchmark"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install redis-server redis-tools")
    build()
    print("| fsync | backends | mailboxd SENDs/s | Redis LPUSH/s (AOF) | mailboxd / Redis | mailboxd syncs/s | journal bytes per message |")
    print("|---|---|---|---|---|---|---|")
    for fsync in ("never", "everysec", "always"):
        for backends in (1, 16):
            mbx = [mailboxd_rate(fsync, backends, a.count) for _ in range(a.runs)]
            red = [redis_rate(fsync, backends, a.count) for _ in range(a.runs)]
            rates = [r["rate"] for r in mbx]
            ratio = statistics.median(rates) / statistics.median([r["rate"] for r in red])
            print(f"| {fsync} | {backends} | {med(rates)} | {med([r['rate'] for r in red])} | {ratio:.2f}× "
                  f"| {statistics.median([r['syncs'] for r in mbx]):,.0f} | {statistics.median([r['bytes'] for r in mbx]):.1f} |",
                  flush=True)
    r = restart_and_compaction(100_000)
    print()
    print(f"100,000 retained messages: journal {int(r['journal_bytes']):,} bytes; restart from the journal "
          f"{r['start_journal_s'] * 1000:.0f} ms (replay {r['replay_ms']} ms); compaction: fork paused the loop "
          f"{r['fork_us']} us, the child wrote {int(r['snapshot_bytes']):,} bytes in {r['snapshot_ms']} ms; "
          f"restart from the snapshot {r['start_snapshot_s'] * 1000:.0f} ms ({r['retained']:,} retained)")


if __name__ == "__main__":
    main()
