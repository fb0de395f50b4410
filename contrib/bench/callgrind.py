#!/usr/bin/env python3
"""Server instructions per fan-out delivery, counted by valgrind's callgrind.

Instruction counts are stable on noisy machines where timings are not. Each
server runs under callgrind twice on the same fixed scenario, 1,000 group
subscribers receiving 1 and then 21 messages; the difference between the two
totals is the cost of 20,000 deliveries, connection set-up cancelled out.
Counts are user-space instructions only (the kernel's TCP work is not seen).

    python3 contrib/bench/callgrind.py [--subs 1000]
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import BENCH, HERE, MAILBOXD, build, free_port, wait_port  # noqa: E402


def total_ir(path):
    with open(path) as f:
        for line in f:
            m = re.match(r"(summary|totals): (\d+)", line)
            if m:
                return int(m.group(2))
    sys.exit(f"no totals in {path}")


def run(kind, subs, msgs):
    d = tempfile.mkdtemp(prefix=f"mbx-cg-{kind}-")
    out = os.path.join(d, "callgrind.out")
    port = free_port()
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--quiet"]
    if kind == "mailboxd":
        control = os.path.join(d, "control.sock")
        cmd = [*valgrind, MAILBOXD, "--http", f"127.0.0.1:{port}", "--control", control]
        common = ["--target", "mailboxd", "--addr", f"127.0.0.1:{port}", "--prefix", "/comet/", "--control", control]
    else:
        conf = open(os.path.join(HERE, "nchan.conf")).read().replace("@DIR@", d).replace("@PORT@", str(port))
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(conf)
        cmd = [*valgrind, "nginx", "-p", d, "-e", os.path.join(d, "error.log"), "-c", os.path.join(d, "nginx.conf"),
               "-g", "daemon off; master_process off;"]
        common = ["--target", "nchan", "--addr", f"127.0.0.1:{port}", "--prefix", "/sub/",
                  "--pub-addr", f"127.0.0.1:{port}", "--pub-prefix", "/pub/"]
    server = subprocess.Popen(cmd, stderr=open(os.path.join(d, "stderr"), "w"))
    wait_port(port, server, kind)
    time.sleep(1)
    r = subprocess.run([BENCH, "fanout", *common, "--subs", str(subs), "--msgs", str(msgs), "--interval-ms", "300",
                        "--procs", "2", "--timeout", "300"], capture_output=True, text=True)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=120)
    line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr
    if "lost=0" not in line or f"received={subs * msgs}" not in line:
        sys.exit(f"{kind}: scenario did not complete cleanly: {line}")
    ir = total_ir(out)
    shutil.rmtree(d, ignore_errors=True)
    return ir


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--only", choices=["mailboxd", "nchan"], help="count one server only")
    a = ap.parse_args()
    build()
    deliveries = a.subs * 20
    result = {}
    for kind in [a.only] if a.only else ["mailboxd", "nchan"]:
        base = run(kind, a.subs, 1)
        full = run(kind, a.subs, 21)
        result[kind] = (full - base) / deliveries
        print(f"callgrind {kind}: base_ir={base} full_ir={full} deliveries={deliveries} "
              f"instructions_per_delivery={result[kind]:.0f}", flush=True)
    if len(result) == 2:
        print(f"callgrind ratio mailboxd/nchan={result['mailboxd'] / result['nchan']:.2f}")


if __name__ == "__main__":
    main()
