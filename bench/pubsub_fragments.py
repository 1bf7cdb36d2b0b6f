"""Messages bigger than a publisher ring's record, in fragments, to a direct subscriber: GB/s.

    .venv/bin/python bench/pubsub_fragments.py [SIZE_MIB] [COUNT]   # default: 8 MiB x 200

A publisher with the default ring (4 MiB: records of 2 MiB) publishes COUNT bytearrays of SIZE MiB; a
subscriber of the same session (it reads the ring in place), in a forked child, receives them and
checks each one's first bytes; the rate is the subscriber's, from its first message to its last.
"""
from __future__ import annotations

import os
import struct
import sys
import tempfile
import time

import shmbroker as broker


def main(size: int, count: int) -> None:
    home = tempfile.TemporaryDirectory(prefix="broker-bench-frag-")  # (removed at the end, with its socket)
    path = os.path.join(home.name, "b.sock")
    with home, broker.Server(path), broker.connect(path) as s:
        pub = s.publisher("frag", block_timeout=60)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                with broker.connect(path) as c, c.subscriber("frag") as sub:
                    os.write(w, b"r")
                    t0 = 0.0
                    for k in range(count):
                        m = sub.receive(60)
                        if k == 0:
                            t0 = time.perf_counter()
                        assert struct.unpack_from("<Q", m)[0] == k and len(m) == size
                    rate = (count - 1) * size / (time.perf_counter() - t0) / 1e9
                    os.write(w, struct.pack("<d", rate) + (b"D" if sub.in_place else b"R"))
            finally:
                os._exit(0)
        assert os.read(r, 1) == b"r"
        buf = bytearray(size)
        for k in range(count):
            struct.pack_into("<Q", buf, 0, k)
            pub.publish(buf)
        data = os.read(r, 9)
        os.waitpid(pid, 0)
        rate, how = struct.unpack("<d", data[:8])[0], data[8:]
        print(f"{size >> 20} MiB x {count} in fragments, {'direct' if how == b'D' else 'relayed'}: {rate:.2f} GB/s")
        pub.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) << 20 if len(sys.argv) > 1 else 8 << 20, int(sys.argv[2]) if len(sys.argv) > 2 else 200)
