#!/usr/bin/env python3
"""Side-by-side benchmark: mailboxd direct, mailboxd behind nginx FastCGI, and
nginx + Nchan with one worker, on this machine, in one run.

    python3 contrib/bench/compare.py               # full run (about 15 minutes)
    python3 contrib/bench/compare.py --runs 1 --quick

Every figure is the median of --runs runs (min-max in brackets); the ratio
column divides mailboxd direct by Nchan. Each run starts fresh servers. All
traffic stays on 127.0.0.1. Needs nginx and libnginx-mod-nchan (Debian).
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BENCH = os.path.join(HERE, "target", "release", "mbx-bench")
MAILBOXD = os.path.join(ROOT, "target", "release", "mailboxd")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def children_of(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class Running:
    """What every benchmark target shares (compare.py, scale.py, fronts.py):
    its processes (`procs`, stopped in reverse order), its directory, where
    subscribers connect (`target`, `port`, `prefix`) and how to publish
    (`control`, or Nchan's publisher location)."""

    def start_nginx(self, conf):
        """Runs nginx on `conf` until it listens on `port`; its workers join `measure`."""
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        ng = subprocess.Popen(
            ["nginx", "-p", self.dir, "-e", os.path.join(self.dir, "error.log"), "-c", path, "-g", "daemon off;"],
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(ng)
        wait_port(self.port, ng, "nginx")
        # The master may accept on the port before it has forked its workers.
        deadline = time.time() + 5
        workers = children_of(ng.pid)
        while not workers and time.time() < deadline:
            time.sleep(0.05)
            workers = children_of(ng.pid)
        self.measure = getattr(self, "measure", []) + workers

    def pub_args(self):
        if self.target == "mailboxd":
            return ["--control", self.control]
        return ["--pub-addr", f"127.0.0.1:{self.port}", "--pub-prefix", "/pub/"]

    def common(self):
        return ["--target", self.target, "--addr", f"127.0.0.1:{self.port}", "--prefix", self.prefix]

    def stop(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Server(Running):
    """A running target: where subscribers connect, how to publish, which pids to measure."""

    def __init__(self, kind):
        self.kind = kind
        self.dir = tempfile.mkdtemp(prefix=f"mbx-cmp-{kind}-")
        self.procs = []
        self.port = free_port()
        if kind in ("direct", "fastcgi"):
            self.control = os.path.join(self.dir, "control.sock")
            listen = ["--http", f"127.0.0.1:{self.port}"]
            if kind == "fastcgi":
                self.fcgi_port = free_port()
                listen = ["--fastcgi", f"127.0.0.1:{self.fcgi_port}"]
            mb = subprocess.Popen(
                [MAILBOXD, "--control", self.control, "--max-connections", "19500", *listen],
                stderr=open(os.path.join(self.dir, "mailboxd.log"), "w"),
            )
            self.procs.append(mb)
            wait_port(self.port if kind == "direct" else self.fcgi_port, mb, "mailboxd")
            self.measure = [mb.pid]
            self.target, self.prefix = "mailboxd", "/comet/"
            if kind == "fastcgi":
                conf = open(os.path.join(ROOT, "contrib", "nginx", "fastcgi.conf")).read()
                conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{self.port} backlog=4096;")
                conf = conf.replace("server 127.0.0.1:8421;", f"server 127.0.0.1:{self.fcgi_port};")
                conf = conf.replace("pid /run/nginx-mailboxd.pid;", f"pid {self.dir}/nginx.pid;")
                conf = conf.replace("/var/log/nginx/mailboxd-error.log", f"{self.dir}/error.log")
                self.start_nginx(conf)
        else:
            conf = open(os.path.join(HERE, "nchan.conf")).read()
            conf = conf.replace("@DIR@", self.dir).replace("@PORT@", str(self.port))
            self.start_nginx(conf)
            self.target, self.prefix = "nchan", "/sub/"




def kv(line):
    return {k: v for k, v in (f.split("=", 1) for f in line.split()[1:] if "=" in f)}


def bench(args, timeout=600):
    out = subprocess.run([BENCH, *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        sys.exit(f"mbx-bench {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return kv(out.stdout.strip().splitlines()[-1])


def hold_idle(srv, n, settle=0.5, extra=None):
    """Holds n idle SSE subscribers on `srv` (spread over processes of at most
    4,750, under the per-process descriptor limit) and measures the growth of
    `srv.measure`'s RSS per subscriber, and of `extra()` if given."""
    time.sleep(0.3)
    before = rss_kib(srv.measure)
    extra_before = extra() if extra else 0
    per = 4750
    holders = [subprocess.Popen([BENCH, "hold", "--addr", f"127.0.0.1:{srv.port}", "--prefix", srv.prefix + "h",
                                 "--first", str(i), "--n", str(min(per, n - i))],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for i in range(0, n, per)]
    connected = failed = 0
    secs = 0.0
    for p in holders:
        fields = kv(p.stdout.readline())
        connected += int(fields["connected"])
        failed += int(fields["failed"])
        secs = max(secs, float(fields["secs"]))
        assert p.stdout.readline().strip() == "ready"
    time.sleep(settle)
    after = rss_kib(srv.measure)
    extra_after = extra() if extra else 0
    for p in holders:
        p.stdin.close()
        p.wait()
    return {
        "connected": connected,
        "failed": failed,
        "connect_rate": connected / secs if secs else 0,
        "bytes_per_sub": (after - before) * 1024 / max(connected, 1),
        "extra_per_sub": (extra_after - extra_before) / max(connected, 1),
    }


def run_hold(kind, n):
    srv = Server(kind)
    try:
        return hold_idle(srv, n)
    finally:
        srv.stop()


def run_fanout(kind, n, msgs, interval):
    srv = Server(kind)
    try:
        procs = max(1, min(4, n // 2000 + 1))
        r = bench(["fanout", *srv.common(), *srv.pub_args(), "--subs", str(n), "--msgs", str(msgs),
                   "--interval-ms", str(interval), "--procs", str(procs),
                   "--server-pids", ",".join(map(str, srv.measure))])
        return {k: float(v) for k, v in r.items()}
    finally:
        srv.stop()


def run_throughput(kind, n, msgs):
    srv = Server(kind)
    try:
        r = bench(["throughput", *srv.common(), *srv.pub_args(), "--subs", str(n), "--msgs", str(msgs),
                   "--procs", "2", "--publishers", "16", "--server-pids", ",".join(map(str, srv.measure))])
        return {k: float(v) for k, v in r.items()}
    finally:
        srv.stop()


def run_pipeline():
    srv = Server("direct")
    try:
        r = bench(["pipeline", "--control", srv.control, "--count", "200000", "--mailboxes", "1000"])
        return {"rate": float(r["rate"])}
    finally:
        srv.stop()


def build():
    """Builds mailboxd and mbx-bench (release), as every benchmark needs."""
    for manifest in (os.path.join(ROOT, "Cargo.toml"), os.path.join(HERE, "Cargo.toml")):
        subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path", manifest], check=True)


def table_row(rows, kinds, name, unit, results, key, fmt="{:.0f}", scale=1.0):
    """Appends (and prints) one row: per kind the median of `key` over the
    runs, min–max in brackets, then the first kind divided by the last."""
    cells, meds = [], {}
    for k in kinds:
        vals = [r[key] * scale for r in results.get(k, [])]
        if vals:
            meds[k], text = summarize(vals, fmt)
        else:
            text = "n/a"
        cells.append(text)
    first, last = kinds[0], kinds[-1]
    ratio = f"{meds[first] / meds[last]:.2f}×" if meds.get(last) and first in meds else "–"
    rows.append((f"{name} ({unit})", *cells, ratio))
    print("  ", rows[-1], flush=True)


def summarize(values, fmt="{:.0f}"):
    med = statistics.median(values)
    if len(values) == 1:
        return med, fmt.format(med)
    return med, f"{fmt.format(med)} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    ap.add_argument("--only", action="append", choices=["hold", "fanout", "throughput", "pipeline"],
                    help="run only these scenarios (repeatable)")
    a = ap.parse_args()
    for tool in ("nginx",):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install nginx libnginx-mod-nchan")
    if not os.path.exists("/usr/lib/nginx/modules/ngx_nchan_module.so"):
        sys.exit("Nchan is needed: apt-get install libnginx-mod-nchan")
    build()

    hold_n = 2000 if a.quick else 19000
    fan_sizes = [500, 2000] if a.quick else [1000, 10000, 18000]
    msgs, interval = (5, 200) if a.quick else (20, 500)
    thr_subs, thr_msgs = (200, 20000) if a.quick else (1000, 200000)
    # Behind nginx every client costs nginx two descriptors; keep within the
    # 20,000-per-process limit of this machine.
    fcgi_hold = min(hold_n, 9000)
    fcgi_fan = [s for s in fan_sizes if s <= 10000]
    kinds = ["direct", "fastcgi", "nchan"]
    rows = []

    def row(name, unit, results, key, fmt="{:.0f}"):
        table_row(rows, kinds, name, unit, results, key, fmt)

    wanted = set(a.only or ["hold", "fanout", "throughput", "pipeline"])
    if "hold" in wanted:
        hold_rows(a, kinds, hold_n, fcgi_hold, row)
    if "fanout" in wanted:
        fanout_rows(a, kinds, fan_sizes, fcgi_fan, msgs, interval, row)
    if "throughput" in wanted:
        print("throughput", flush=True)
        res = {k: [run_throughput(k, thr_subs, thr_msgs) for _ in range(a.runs)] for k in kinds}
        row(f"throughput {thr_subs} mailboxes × {thr_msgs // thr_subs}", "delivered msg/s", res, "delivered_per_sec")
        row("throughput: lost + duplicated + reordered", "count",
            {k: [dict(v, x=v["lost"] + v["duplicates"] + v["reordered"]) for v in vs] for k, vs in res.items()}, "x")
    if "pipeline" in wanted:
        res = {"direct": [run_pipeline() for _ in range(a.runs)]}
        row("control socket: pipelined SENDs accepted", "commands/s", res, "rate")

    print()
    print("| measure | mailboxd direct | mailboxd via nginx FastCGI | nginx + Nchan (1 worker) | direct / Nchan |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def hold_rows(a, kinds, hold_n, fcgi_hold, row):
    print(f"hold {hold_n}", flush=True)
    res = {k: [run_hold(k, fcgi_hold if k == "fastcgi" else hold_n) for _ in range(a.runs)] for k in kinds}
    row(f"hold {hold_n}: connected", "of N; FastCGI: N=" + str(fcgi_hold), res, "connected")
    row(f"hold {hold_n}: failures", "count", res, "failed")
    row(f"hold {hold_n}: connect rate", "conn/s", res, "connect_rate")
    row(f"hold {hold_n}: server RSS per subscriber", "bytes", res, "bytes_per_sub")


def fanout_rows(a, kinds, fan_sizes, fcgi_fan, msgs, interval, row):
    for n in fan_sizes:
        print(f"fanout {n}", flush=True)
        res = {k: [run_fanout(k, n, msgs, interval) for _ in range(a.runs)]
               for k in kinds if k != "fastcgi" or n in fcgi_fan}

        def ms(key):
            return {k: [dict(v, x=v[key] / 1000) for v in vs] for k, vs in res.items()}

        row(f"fan-out {n}: time to last, median", "ms", ms("last_median_us"), "x", "{:.1f}")
        row(f"fan-out {n}: time to last, p99", "ms", ms("last_p99_us"), "x", "{:.1f}")
        row(f"fan-out {n}: delivery latency p50", "ms", ms("p50_us"), "x", "{:.1f}")
        row(f"fan-out {n}: delivery latency p99", "ms", ms("p99_us"), "x", "{:.1f}")
        row(f"fan-out {n}: server CPU per delivery", "µs", res, "cpu_per_delivery_us", "{:.2f}")
        bad = {k: [dict(v, x=v["lost"] + v["duplicates"] + v["reordered"] + (v["expected"] - v["received"]))
                   for v in vs] for k, vs in res.items()}
        row(f"fan-out {n}: lost + duplicated + reordered", "count", bad, "x")


if __name__ == "__main__":
    main()
