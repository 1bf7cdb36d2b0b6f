"""Per-call cost of publish() and receive() in one process, bytes against a 64 B numpy array (a direct
subscriber on a shared-memory session): 20 000 each, twice (bench/RESULTS.md).

    .venv/bin/python bench/topic_numpy_calls.py
"""
import os, tempfile, time, numpy as np, shmbroker as broker
d = tempfile.mkdtemp(); path = os.path.join(d, "s")
with broker.Server(path), broker.connect(path) as s:
    pub = s.publisher("t", block_timeout=5)
    sub = s.subscriber("t", capacity=100000)
    arr = np.arange(8, dtype=np.float64)
    b = arr.tobytes()
    for kind, msg in (("bytes", b), ("numpy", arr), ("bytes", b), ("numpy", arr)):
        N = 20000
        for _ in range(100): pub.publish(msg); sub.receive(1)
        t0 = time.perf_counter_ns()
        for _ in range(N): pub.publish(msg)
        t1 = time.perf_counter_ns()
        for _ in range(N): sub.receive(1)
        t2 = time.perf_counter_ns()
        print(kind, "publish %.0f ns" % ((t1 - t0) / N), "receive %.0f ns" % ((t2 - t1) / N))
import shutil
shutil.rmtree(d, ignore_errors=True)
