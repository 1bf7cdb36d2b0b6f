"""How long a publisher of 1 MiB bytes waits for room in its ring (the default, 4 MiB), per wait.

    .venv/bin/python bench/pubsub_wait_profile.py [keep=sub|pub|both]

One publisher publishes 2000 messages of 1 MiB of bytes, each built in the loop, to a direct subscriber in a
forked child. Every Ring.wait_room call is timed. It prints the rate, the number of waits, the time spent
waiting, and the waits' percentiles (bench/RESULTS.md). keep=sub, pub or both: that side calls
broker.keep_large_buffers() first (glibc then keeps freed large buffers instead of unmapping them).
"""
import os
import struct
import tempfile
import time

import shmbroker as broker
import sys
from shmbroker.core.malloc import keep_large_buffers
KEEP = dict(a.split("=", 1) for a in sys.argv[1:]).get("keep", "")
from shmbroker.core import ring as R
waits = []
orig = R._RingSide.wait_room
def timed(self, h, n, timeout, deadline):
    t = time.perf_counter_ns(); orig(self, h, n, timeout, deadline); waits.append(time.perf_counter_ns() - t)
R._RingSide.wait_room = timed
size, count = 1 << 20, 2000
d = tempfile.mkdtemp(); path = os.path.join(d, "b.sock")
with broker.Server(path), broker.connect(path) as s:
    pub = s.publisher("t", block_timeout=60)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        if KEEP in ("sub", "both"):
            keep_large_buffers()
        with broker.connect(path) as c, c.subscriber("t") as sub:
            os.write(w, b"r")
            for k in range(count):
                m = sub.receive(60)
            os.write(w, b"d")
        os._exit(0)
    os.read(r, 1)
    if KEEP in ("pub", "both"):
        keep_large_buffers()
    pad = b"\0" * (size - 16)
    t = time.perf_counter()
    for k in range(count):
        pub.publish(struct.pack("<QQ", k, 0) + pad)
    os.read(r, 1)
    el = time.perf_counter() - t
    os.waitpid(pid, 0)
ws = sorted(waits)
print("GB/s %.2f  waits %d  total %.1f ms of %.1f  p50 %.0f us p90 %.0f us max %.0f us" % (count*size/el/1e9, len(ws), sum(ws)/1e6, el*1e3, ws[len(ws)//2]/1e3, ws[int(len(ws)*.9)]/1e3, ws[-1]/1e3))
