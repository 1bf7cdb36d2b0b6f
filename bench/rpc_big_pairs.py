"""1 MiB request round trips from a fresh client/server pair (the server with keep_large_buffers, its
service reading the argument in place): p50 and p10 of 500. Run it several times: the figure
depends on where the scheduler puts the pair (bench/RESULTS.md).

    .venv/bin/python bench/rpc_big_pairs.py [CHUNK_KIB] [busy]
"""
import os, sys, tempfile, time
from shmbroker.api import Server, connect
from shmbroker.framework.session import Session
from shmbroker.core.malloc import keep_large_buffers
import shmbroker.transport.carrier as car
class S(Session):
    def service(self, m):
        v = m.read_view(0); m.complete(len(v))
d = tempfile.mkdtemp()
busy = "busy" in sys.argv
if len(sys.argv) > 1 and sys.argv[1].isdigit(): car.STREAM_CHUNK = int(sys.argv[1]) << 10
pid = os.fork()
path = os.path.join(d, "s")
if pid == 0:
    keep_large_buffers()
    srv = Server(path, S, busy_poll=busy); srv.start(); time.sleep(30); os._exit(0)
while not os.path.exists(path): time.sleep(0.01)
time.sleep(0.2)
s = connect(path, busy_poll=busy)
data = os.urandom(1<<20)
for _ in range(50): s.send_receive(1, data)
ts=[]
for _ in range(500):
    t=time.perf_counter_ns(); s.send_receive(1, data); ts.append(time.perf_counter_ns()-t)
ts.sort(); print(sys.argv[1:], "p50 us", ts[250]/1000, "p10", ts[50]/1000)
s.close(); os.kill(pid, 9); os.waitpid(pid, 0)
import shutil
shutil.rmtree(d, ignore_errors=True)
