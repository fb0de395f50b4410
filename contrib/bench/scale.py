#!/usr/bin/env python3
"""Beyond one process: mailboxd instances sharing one Redis (--store) and one
port (--reuse-port), beside nginx + Nchan in its Redis mode (one worker per
instance, the same redis-server), in one run on this machine.

    python3 contrib/bench/scale.py                 # full run (about 10 minutes)
    python3 contrib/bench/scale.py --quick --runs 1

Scenarios, each with fresh servers and a fresh, empty Redis:

* fan-out: N subscribers spread over the instances by the kernel
  (SO_REUSEPORT), all members of one group (Nchan: one channel); M
  timestamped PUBLISHes; time to the last subscriber, losses.
* throughput: 1,000 mailboxes/channels, messages spread over them as fast as
  one publisher goes; delivered messages/s end to end.
* Redis's own CPU per delivered message, over the publishing window.
* memory: idle subscribers on one instance (one worker): the server's RSS and
  Redis's used_memory per subscriber.

50,000 subscribers need more local ports than Linux's default range gives
one destination: the script widens net.ipv4.ip_local_port_range for the run
(as root) and puts it back. All traffic stays on 127.0.0.1.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import compare
from compare import MAILBOXD, free_port, wait_port

NCHAN_REDIS = """
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes @WORKERS@;
worker_rlimit_nofile 20000;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log warn;
events { worker_connections 19800; }
http {
    access_log off;
    keepalive_requests 1000000;
    nchan_shared_memory_size 512m;
    upstream redis_server { nchan_redis_server redis://127.0.0.1:@REDIS@; }
    server {
        listen 127.0.0.1:@PORT@ backlog=4096 reuseport;
        location ~ ^/sub/(.+)$ {
            nchan_subscriber eventsource;
            nchan_channel_id $1;
            nchan_redis_pass redis_server;
        }
        location ~ ^/pub/(.+)$ {
            nchan_publisher;
            nchan_channel_id $1;
            nchan_redis_pass redis_server;
            nchan_message_buffer_length 1000;
        }
    }
}
"""


class Cluster(compare.Running):
    """A fresh Redis plus n mailboxd instances, or nginx + Nchan with n workers."""

    def __init__(self, kind, n):
        self.kind, self.n = kind, n
        self.dir = tempfile.mkdtemp(prefix=f"mbx-scale-{kind}-")
        self.procs = []
        rport = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(rport, self.redis, "redis-server")
        self.redis_port = rport
        self.port = free_port()
        if kind == "mailboxd":
            self.controls = []
            for i in range(n):
                control = os.path.join(self.dir, f"control{i}.sock")
                p = subprocess.Popen(
                    [MAILBOXD, "--store", f"redis://127.0.0.1:{rport}", "--control", control,
                     "--http", f"127.0.0.1:{self.port}", "--reuse-port", "--max-connections", "19500",
                     "--max-mailboxes", "200000"],
                    stderr=open(os.path.join(self.dir, f"mailboxd{i}.log"), "w"),
                )
                self.procs.append(p)
                self.controls.append(control)
                wait_port(self.port, p, "mailboxd")
            deadline = time.time() + 10
            while not all(os.path.exists(c) for c in self.controls) and time.time() < deadline:
                time.sleep(0.05)
            self.measure = [p.pid for p in self.procs]
            self.control = self.controls[0]
            self.target, self.prefix = "mailboxd", "/comet/"
        else:
            conf = NCHAN_REDIS.replace("@DIR@", self.dir).replace("@PORT@", str(self.port))
            conf = conf.replace("@WORKERS@", str(n)).replace("@REDIS@", str(rport))
            self.measure = []
            self.start_nginx(conf)
            self.target, self.prefix = "nchan", "/sub/"

    def stop(self):
        super().stop()
        self.redis.send_signal(signal.SIGTERM)
        self.redis.wait(timeout=10)


def measured(kind, n, args):
    c = Cluster(kind, n)
    try:
        r = compare.bench([*args[0], *c.common(), *c.pub_args(), *args[1],
                           "--server-pids", ",".join(map(str, c.measure)), "--store-pids", str(c.redis.pid)],
                          timeout=900)
        r = {k: float(v) for k, v in r.items()}
        r["redis_us_per_delivery"] = r["store_cpu_per_delivery_us"]
        return r
    finally:
        c.stop()


def redis_used_memory(c):
    out = subprocess.run(["redis-cli", "-p", str(c.redis_port), "INFO", "memory"], capture_output=True, text=True).stdout
    return int(next(line.split(":")[1] for line in out.splitlines() if line.startswith("used_memory:")))


def memory(kind, subs):
    """Idle subscribers on one instance / worker: its RSS and Redis's memory, per subscriber."""
    c = Cluster(kind, 1)
    try:
        r = compare.hold_idle(c, subs, settle=1.5, extra=lambda: redis_used_memory(c))
        return {"connected": r["connected"], "rss_per_sub": r["bytes_per_sub"], "redis_per_sub": r["extra_per_sub"]}
    finally:
        c.stop()


def fanout(kind, n, subs, msgs, interval):
    procs = max(2, min(8, subs // 7000 + 1))
    return measured(kind, n, (["fanout"], ["--subs", str(subs), "--msgs", str(msgs), "--interval-ms", str(interval),
                                          "--procs", str(procs), "--timeout", "300"]))


def throughput(kind, n, subs, msgs):
    return measured(kind, n, (["throughput"], ["--subs", str(subs), "--msgs", str(msgs), "--procs", "2",
                                              "--publishers", "16"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", action="append", choices=["memory", "big", "fanout", "throughput"])
    a = ap.parse_args()
    for tool in ("nginx", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install nginx libnginx-mod-nchan redis-server")
    compare.build()
    big = 5000 if a.quick else 50000
    fan_n = 2000 if a.quick else 10000
    thr = (200, 20000) if a.quick else (1000, 200000)
    wanted = set(a.only or ["memory", "big", "fanout", "throughput"])
    ports = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
    rows = []

    def row(name, unit, res, key, fmt="{:.0f}", scale=1.0):
        compare.table_row(rows, ["mailboxd", "nchan"], name, unit, res, key, fmt, scale)

    def fan_rows(label, res):
        row(f"{label}: time to last, median", "ms", res, "last_median_us", "{:.1f}", 1e-3)
        row(f"{label}: time to last, max", "ms", res, "last_max_us", "{:.1f}", 1e-3)
        row(f"{label}: delivery latency p99", "ms", res, "p99_us", "{:.1f}", 1e-3)
        row(f"{label}: lost + duplicated + reordered", "count",
            {k: [dict(v, x=v["lost"] + v["duplicates"] + v["reordered"] + v["expected"] - v["received"]) for v in vs]
             for k, vs in res.items()}, "x")
        row(f"{label}: server CPU per delivery", "µs", res, "cpu_per_delivery_us", "{:.2f}")
        row(f"{label}: Redis CPU per delivery", "µs", res, "redis_us_per_delivery", "{:.3f}")

    try:
        if "memory" in wanted:
            held = 2000 if a.quick else 19000
            print(f"memory {held}", flush=True)
            res = {k: [memory(k, held) for _ in range(a.runs)] for k in ("mailboxd", "nchan")}
            row(f"{held} idle subscribers on 1 instance / worker: connected", "count", res, "connected")
            row(f"{held} idle subscribers: server RSS per subscriber", "bytes", res, "rss_per_sub")
            row(f"{held} idle subscribers: Redis memory per subscriber", "bytes", res, "redis_per_sub")
        if "big" in wanted:
            subprocess.run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"], check=True)
            print(f"fan-out {big} over 3", flush=True)
            res = {k: [fanout(k, 3, big, 5, 3000) for _ in range(a.runs)] for k in ("mailboxd", "nchan")}
            fan_rows(f"{big} subscribers, 3 instances / workers, one group", res)
        if "fanout" in wanted:
            for n in (1, 2, 3):
                print(f"fan-out {fan_n} over {n}", flush=True)
                res = {k: [fanout(k, n, fan_n, 10, 1000) for _ in range(a.runs)] for k in ("mailboxd", "nchan")}
                fan_rows(f"{fan_n} subscribers, {n} instance(s) / worker(s)", res)
        if "throughput" in wanted:
            for n in (1, 2, 3):
                print(f"throughput over {n}", flush=True)
                res = {k: [throughput(k, n, *thr) for _ in range(a.runs)] for k in ("mailboxd", "nchan")}
                label = f"throughput {thr[0]} mailboxes, {n} instance(s) / worker(s)"
                row(label, "delivered msg/s", res, "delivered_per_sec")
                row(f"{label}: lost + duplicated + reordered", "count",
                    {k: [dict(v, x=v["lost"] + v["duplicates"] + v["reordered"]) for v in vs] for k, vs in res.items()}, "x")
                row(f"{label}: Redis CPU per delivery", "µs", res, "redis_us_per_delivery", "{:.3f}")
    finally:
        subprocess.run(["sysctl", "-qw", f"net.ipv4.ip_local_port_range={ports[0]} {ports[1]}"])
    print()
    print("| measure | mailboxd + Redis | nginx + Nchan + Redis | mailboxd / Nchan |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
