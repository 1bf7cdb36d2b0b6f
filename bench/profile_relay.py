"""Where the relay spends its time: py-spy samples the server and a socket subscriber while a ring publisher publishes.

    .venv/bin/python bench/profile_relay.py [SIZE]      # needs py-spy (pip install py-spy); SIZE bytes, 64 by default

The server runs as `shmbroker serve` (its own process), the subscriber on a socket session (socket_only), the
publisher in this process on a shared-memory session (its ring, relayed by the server). py-spy records each
of the two for 5 s at 400 Hz; the top frames by own and inclusive time are printed (bench/RESULTS.md).
"""
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from shmbroker import connect

d = tempfile.mkdtemp(prefix="broker-profile-relay-")
addr = os.path.join(d, "b.sock")
py = sys.executable
srv = subprocess.Popen([py, "-m", "shmbroker.cli", "serve", "--address", addr], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
for _ in range(200):
    if os.path.exists(addr):
        break
    time.sleep(0.05)
SUB = r'''
import sys, time
from shmbroker import connect
with connect(sys.argv[1], socket_only=True) as s, s.subscriber("t", capacity=4096) as sub:
    print("ready", flush=True)
    n = 0; t0 = time.monotonic()
    while time.monotonic() - t0 < float(sys.argv[2]):
        sub.receive(5); n += 1
    print("got", n, n / (time.monotonic() - t0), flush=True)
'''
dur = 8.0
sub = subprocess.Popen([py, "-c", SUB, addr, str(dur)], stdout=subprocess.PIPE, text=True)
assert sub.stdout.readline().strip() == "ready"
out = {}
spies = [subprocess.Popen([os.path.dirname(py) + "/py-spy", "record", "-p", str(p), "-d", "5", "-r", "400", "-f", "raw",
                           "-o", f"{d}/{name}.txt", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
         for name, p in (("server", srv.pid), ("subscriber", sub.pid))]
with connect(addr) as s:
    pub = s.publisher("t", block_timeout=30)
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    msg = b"x" * size
    inner = 1000 if size < 4096 else 10
    t0 = time.monotonic()
    k = 0
    while sub.poll() is None and time.monotonic() - t0 < dur + 2:
        for _ in range(inner):
            pub.publish(msg)
        k += inner
    pub.close()
print(sub.stdout.read().strip(), "published", k)
for sp in spies:
    sp.wait()
srv.send_signal(signal.SIGTERM); srv.wait()

def top(path, n=18):
    own = collections.Counter(); total = 0
    incl = collections.Counter()
    for line in open(path):
        stack, _, cnt = line.rstrip().rpartition(" ")
        cnt = int(cnt); total += cnt
        frames = stack.split(";")
        own[frames[-1]] += cnt
        for f in set(frames):
            incl[f] += cnt
    print(f"== {path}: {total} samples; own time")
    for f, c in own.most_common(n):
        print(f"{100*c/total:5.1f}%  {f[:150]}")
    print("-- inclusive")
    for f, c in incl.most_common(n):
        print(f"{100*c/total:5.1f}%  {f[:150]}")
for name in ("server", "subscriber"):
    if os.path.exists(f"{d}/{name}.txt"):
        top(f"{d}/{name}.txt")
shutil.rmtree(d, ignore_errors=True)
