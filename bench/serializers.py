"""What a serializer costs for a small dict (issue 17, item 3): raw bytes against msgspec, msgpack, json
and pickle, per message through a topic (publish + receive, a direct subscriber on a shared-memory
session, one process) and per call round trip (ClientSession.call to a @broker.function on a
shared-memory session, server in its own thread), plus encode + decode alone. Each figure is the
median of 5 interleaved repetitions (bench/RESULTS.md).

    .venv/bin/python bench/serializers.py
"""
import multiprocessing, os, statistics, tempfile, time, shmbroker as broker

ORDER = {"id": 1234, "sym": "ACME", "px": 101.25, "qty": 300, "side": "buy", "tags": ["a", "b"]}
KINDS = ["raw bytes", "msgspec", "msgpack", "json", "pickle"]
N, REPS = 20000, 5


class Shop(broker.Session):
    @broker.function(1)
    def echo(self, m):
        m.reply(m.read_view(0))  # the same bytes back: what the serializers add is the client's


def serve(path: str, stop) -> None:
    with broker.Server(path, Shop):
        stop.wait()


def main() -> None:
    d = tempfile.mkdtemp()
    path = os.path.join(d, "s")
    stop = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(path, stop))
    server.start()
    while not os.path.exists(path):
        time.sleep(0.01)
    raw_bytes = broker.serializer("msgspec").encode(ORDER)
    print(f"a small dict: {len(raw_bytes)} bytes as MessagePack, {len(broker.serializer('pickle').encode(ORDER))} pickled")
    rows = {k: {"codec": [], "topic": [], "call": []} for k in KINDS}
    with broker.connect(path) as s:
        for rep in range(REPS):
            for kind in KINDS:
                ser = None if kind == "raw bytes" else kind
                msg = raw_bytes if ser is None else ORDER
                codec = broker.serializer(ser)
                if codec is not None:
                    t0 = time.perf_counter_ns()
                    for _ in range(N):
                        codec.decode(codec.encode(ORDER))
                    rows[kind]["codec"].append((time.perf_counter_ns() - t0) / N)
                else:
                    rows[kind]["codec"].append(0.0)
                pub = s.publisher("t" + kind, serializer=ser, block_timeout=5)
                sub = s.subscriber("t" + kind, serializer=ser, capacity=100000)
                for _ in range(200):
                    pub.publish(msg); sub.receive(1)
                t0 = time.perf_counter_ns()
                for _ in range(N):
                    pub.publish(msg)
                    sub.receive(1)
                rows[kind]["topic"].append((time.perf_counter_ns() - t0) / N)
                pub.close(); sub.close()
                for _ in range(200):
                    s.call(1, msg, serializer=ser)
                t0 = time.perf_counter_ns()
                for _ in range(N // 4):
                    s.call(1, msg, serializer=ser)
                rows[kind]["call"].append((time.perf_counter_ns() - t0) / (N // 4))
            print(f"repetition {rep + 1}/{REPS} done", flush=True)
    stop.set()
    server.join()
    print(f"{'(median / best)':16} {'encode+decode':>16} {'publish+receive':>16} {'call round trip':>18}")
    for kind in KINDS:
        r = {k: (statistics.median(v) / 1000, min(v) / 1000) for k, v in rows[kind].items()}
        print(f"{kind:16} {r['codec'][0]:6.2f} / {r['codec'][1]:5.2f} us {r['topic'][0]:6.2f} / {r['topic'][1]:5.2f} us"
              f" {r['call'][0]:7.2f} / {r['call'][1]:6.2f} us")
    import shutil
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
