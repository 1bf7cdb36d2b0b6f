"""One client's 64 B calls with 1 ms idle between them, against the rpc harness's server in a child:
p50/p10 and the client's reply ring counters (sleeps, shared-CPU wait plans). With WAITGO=S it
prints both pids and waits S seconds first, for `perf sched record` or strace to attach.

    .venv/bin/python bench/rpc_idle_profile.py [CALLS] [SERVER_SECONDS]
"""
import os, sys, time, tempfile
from shmbroker.api import Server, connect
from shmbroker.framework.client import Buffer
from shmbroker.bench.rpc import _Bench, ECHO, PAYLOAD
d = tempfile.mkdtemp(); path = os.path.join(d, "s")
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    srv = Server(path, _Bench, spin_us=50, shm_policy="strict"); srv.start()
    os.write(w, str(os.getpid()).encode()); time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 60); os._exit(0)
os.read(r, 20)
s = connect(path, spin_us=50)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
if os.environ.get("WAITGO"): 
    print("client", os.getpid(), "server", pid, flush=True); time.sleep(float(os.environ["WAITGO"]))
ts = []
for i in range(n):
    b = Buffer(64); time.sleep(0.001)
    t0 = time.perf_counter_ns(); s.send_receive(ECHO, PAYLOAD, b); ts.append(time.perf_counter_ns() - t0)
ts.sort(); print("p50", ts[len(ts)//2]/1000, "p10", ts[len(ts)//10]/1000)
print(s._carrier.rx.stats()); s.close(); os.kill(pid, 9); os.waitpid(pid, 0)
import shutil
shutil.rmtree(d, ignore_errors=True)
