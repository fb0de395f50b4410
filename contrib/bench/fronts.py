#!/usr/bin/env python3
"""What the shipped web-server configs cost per client, and their fan-out:
every config in contrib/nginx and contrib/lighttpd in front of mailboxd,
beside nginx + Nchan, in one run on this machine.

    python3 contrib/bench/fronts.py            # about 10 minutes
    python3 contrib/bench/fronts.py --runs 1 --hold 2000 --fanout 1000

Per config: N idle SSE subscribers (default 9,000: every client costs the
web server two descriptors, and one process may hold 20,000 here), the
growth of the web server's and mailboxd's RSS divided by N; then a fan-out
to M subscribers of one group, time to the last subscriber. The configs are
used as shipped, with only ports and paths filled in. All on 127.0.0.1.
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile

import compare
from compare import MAILBOXD, ROOT, free_port, summarize, wait_port

FRONTS = [
    ("nginx", "fastcgi"),
    ("nginx", "scgi"),
    ("nginx", "http"),
    ("lighttpd", "fastcgi"),
    ("lighttpd", "scgi"),
    ("lighttpd", "http"),
]
DEFAULT_PORTS = {"fastcgi": 8421, "scgi": 8422, "http": 8420}


class Front(compare.Running):
    """mailboxd behind one shipped config (or nginx + Nchan)."""

    def __init__(self, server, gateway):
        self.dir = tempfile.mkdtemp(prefix=f"mbx-front-{server}-{gateway}-")
        self.procs, self.measure = [], []
        self.port = free_port()
        if server == "nchan":
            conf = open(os.path.join(compare.HERE, "nchan.conf")).read()
            conf = conf.replace("@DIR@", self.dir).replace("@PORT@", str(self.port))
            self.start_nginx(conf)
            self.target, self.prefix = "nchan", "/sub/"
            return
        self.control = os.path.join(self.dir, "control.sock")
        up = free_port()
        mb = subprocess.Popen(
            [MAILBOXD, "--control", self.control, "--max-connections", "19500", f"--{gateway}", f"127.0.0.1:{up}"],
            stderr=open(os.path.join(self.dir, "mailboxd.log"), "w"),
        )
        self.procs.append(mb)
        self.measure.append(mb.pid)
        wait_port(up, mb, "mailboxd")
        self.target, self.prefix = "mailboxd", "/comet/"
        path = os.path.join(ROOT, "contrib", server, f"{gateway}.conf")
        conf = open(path).read()
        if server == "nginx":
            conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{self.port} backlog=4096;")
            conf = conf.replace(f"server 127.0.0.1:{DEFAULT_PORTS[gateway]};", f"server 127.0.0.1:{up};")
            conf = conf.replace("pid /run/nginx-mailboxd.pid;", f"pid {self.dir}/nginx.pid;")
            conf = conf.replace("/var/log/nginx/mailboxd-error.log", f"{self.dir}/error.log")
            self.start_nginx(conf)
        else:
            conf = conf.replace("server.port = 8080", f'server.bind = "127.0.0.1"\nserver.port = {self.port}')
            conf = conf.replace('"port" => %d' % DEFAULT_PORTS[gateway], f'"port" => {up}')
            conf = conf.replace("/run/lighttpd-mailboxd.pid", f"{self.dir}/lighttpd.pid")
            conf = conf.replace("/var/log/lighttpd/mailboxd-error.log", f"{self.dir}/error.log")
            conf = conf.replace("/var/www/html", self.dir)
            # lighttpd cannot raise its descriptors past the hard limit (and
            # then falls back to 8,192); give it exactly that limit here.
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            conf = conf.replace("server.max-fds = 65536", f"server.max-fds = {hard}")
            path = os.path.join(self.dir, "lighttpd.conf")
            with open(path, "w") as f:
                f.write(conf)
            p = subprocess.Popen(["lighttpd", "-D", "-f", path], stderr=subprocess.DEVNULL)
            self.procs.append(p)
            wait_port(self.port, p, "lighttpd")
            self.measure.append(p.pid)



def fanout(front, n):
    r = compare.bench(["fanout", *front.common(), *front.pub_args(), "--subs", str(n), "--msgs", "10",
                       "--interval-ms", "500", "--procs", str(max(1, min(4, n // 2000 + 1))),
                       "--server-pids", ",".join(map(str, front.measure))])
    return {k: float(v) for k, v in r.items()}


def measured(server, gateway, what, n):
    front = Front(server, gateway)
    try:
        return compare.hold_idle(front, n) if what == "hold" else fanout(front, n)
    finally:
        front.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hold", type=int, default=9000)
    ap.add_argument("--fanout", type=int, default=5000)
    a = ap.parse_args()
    for tool in ("nginx", "lighttpd"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install nginx lighttpd libnginx-mod-nchan")
    compare.build()
    rows = []
    for server, gateway in FRONTS + [("nchan", "")]:
        label = "nginx + Nchan" if server == "nchan" else f"{server} {gateway} (contrib/{server}/{gateway}.conf)"
        holds = [measured(server, gateway, "hold", a.hold) for _ in range(a.runs)]
        fans = [measured(server, gateway, "fanout", a.fanout) for _ in range(a.runs)]
        _, rss = summarize([h["bytes_per_sub"] for h in holds])
        _, last = summarize([f["last_median_us"] / 1000 for f in fans], "{:.1f}")
        _, cpu = summarize([f["cpu_per_delivery_us"] for f in fans], "{:.1f}")
        bad = sum(f["lost"] + f["duplicates"] + f["reordered"] + f["expected"] - f["received"] for f in fans)
        connected = min(h["connected"] for h in holds)
        rows.append((label, f"{connected}", rss, last, cpu, f"{bad:.0f}"))
        print("  ", rows[-1], flush=True)
    print()
    print(f"| front | connected of {a.hold} | RSS per idle client, web server + mailboxd (bytes) "
          f"| fan-out {a.fanout}: time to last, median (ms) | CPU per delivery (µs) | lost + dup + reordered |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
