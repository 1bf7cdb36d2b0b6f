"""The session rule: the kernel's facts about real peers (other users, namespaces, audit
sessions, TCP, dead and reused pids) and the pure decision over them."""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import pickle
import select
import shutil
import socket
import struct
import tempfile
import time
from typing import Any, Callable, Iterator

import pytest

from shmbroker.transport import identity as _identity
from shmbroker.transport.identity import AUDIT_SID_UNSET, Decision, Facts, PolicyError, decide, local_facts, peer_facts, policy_from

from tests.helpers import Child

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 20.0
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x08000000, 0x10000000, 0x20000000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18


# --- 1. the pure decision ------------------------------------------------------------

BASE = Facts(pid=100, uid=1000, gid=1000, user_ns=11, mnt_ns=12, ipc_ns=13, shm=(27, 1), sessionid=5)


def f(**changes: Any) -> Facts:
    return dataclasses.replace(BASE, **changes)


GONE = Facts.foreign("the peer (pid 7) has exited", 7, 1000, 1000)
SAME = "same user 1000, namespaces and /dev/shm"

# (server, client, keyword arguments, shm?, the exact reason)
TABLE = {
    "policy off": (BASE, BASE, {"policy": "off"}, False, "policy off: sockets only"),
    "off comes first": (GONE, GONE, {"policy": "off", "transport": "tcp", "client_socket_only": True}, False,
                        "policy off: sockets only"),
    "client asks for sockets": (BASE, BASE, {"client_socket_only": True}, False, "the client asked for sockets only"),
    "socket-only before transport": (BASE, GONE, {"client_socket_only": True, "transport": "tcp"}, False,
                                     "the client asked for sockets only"),
    "tcp": (BASE, BASE, {"transport": "tcp"}, False, "TCP never gets shared memory"),
    "tcp before inspection": (GONE, GONE, {"transport": "tcp"}, False, "TCP never gets shared memory"),
    "other transport": (BASE, BASE, {"transport": "vsock"}, False,
                        "vsock transport never gets shared memory (Unix sockets only)"),
    "client not inspected": (BASE, GONE, {}, False, "client not inspected: the peer (pid 7) has exited"),
    "client before server": (Facts.foreign("server trouble"), GONE, {}, False,
                             "client not inspected: the peer (pid 7) has exited"),
    "server not inspected": (Facts.foreign("cannot read /proc/self/ns/user: Permission denied"), BASE, {}, False,
                             "server not inspected: cannot read /proc/self/ns/user: Permission denied"),
    "uid": (BASE, f(uid=1001), {}, False, "different effective uid (client 1001, server 1000)"),
    "uid before namespaces": (BASE, f(uid=0, user_ns=99, shm=(1, 1)), {}, False,
                              "different effective uid (client 0, server 1000)"),
    "user namespace": (BASE, f(user_ns=91), {}, False, "different user namespace (client 91, server 11)"),
    "mount namespace": (BASE, f(mnt_ns=92), {}, False, "different mount namespace (client 92, server 12)"),
    "ipc namespace": (BASE, f(ipc_ns=93), {}, False, "different ipc namespace (client 93, server 13)"),
    "mount and ipc": (BASE, f(mnt_ns=92, ipc_ns=93), {}, False,
                      "different mount and ipc namespaces (client mount 92 ipc 93, server mount 12 ipc 13)"),
    "all three": (BASE, f(user_ns=91, mnt_ns=92, ipc_ns=93), {}, False,
                  "different user, mount and ipc namespaces (client user 91 mount 92 ipc 93, "
                  "server user 11 mount 12 ipc 13)"),
    "namespaces before /dev/shm": (BASE, f(ipc_ns=93, shm=(28, 2)), {}, False,
                                   "different ipc namespace (client 93, server 13)"),
    "/dev/shm": (BASE, f(shm=(28, 2)), {}, False,
                 "different /dev/shm (client device 28 inode 2, server device 27 inode 1)"),
    "/dev/shm inode only": (BASE, f(shm=(27, 2)), {}, False,
                            "different /dev/shm (client device 27 inode 2, server device 27 inode 1)"),
    "session": (BASE, f(sessionid=6), {}, False, "different login session (client 6, server 5)"),
    "set vs unset": (f(sessionid=AUDIT_SID_UNSET), BASE, {}, False, "different login session (client 5, server unset)"),
    "unset vs set": (BASE, f(sessionid=AUDIT_SID_UNSET), {}, False, "different login session (client unset, server 5)"),
    "no audit vs unset": (f(sessionid=None), f(sessionid=AUDIT_SID_UNSET), {}, False,
                          "different login session (client unset, server none (no audit session ids on this kernel))"),
    "/dev/shm before session": (BASE, f(shm=(28, 2), sessionid=6), {}, False,
                                "different /dev/shm (client device 28 inode 2, server device 27 inode 1)"),
    "same session": (BASE, f(pid=200, gid=7), {}, True, f"{SAME}, login session 5"),
    "unset matches unset": (f(sessionid=AUDIT_SID_UNSET), f(pid=200, sessionid=AUDIT_SID_UNSET), {}, True,
                            f"{SAME}, login session unset"),
    "no audit on the kernel": (f(sessionid=None), f(pid=200, sessionid=None), {}, True,
                               f"{SAME}, login session none (no audit session ids on this kernel)"),
    "explicit strict": (BASE, f(sessionid=6), {"policy": "strict"}, False,
                        "different login session (client 6, server 5)"),
    "same-user skips the session": (BASE, f(sessionid=6), {"policy": "same-user"}, True,
                                    f"{SAME} (login session not checked)"),
    "same-user, unset vs set": (BASE, f(sessionid=AUDIT_SID_UNSET), {"policy": "same-user"}, True,
                                f"{SAME} (login session not checked)"),
    "same-user checks uid": (BASE, f(uid=1001), {"policy": "same-user"}, False,
                             "different effective uid (client 1001, server 1000)"),
    "same-user checks namespaces": (BASE, f(mnt_ns=92), {"policy": "same-user"}, False,
                                    "different mount namespace (client 92, server 12)"),
    "same-user checks /dev/shm": (BASE, f(shm=(28, 2)), {"policy": "same-user"}, False,
                                  "different /dev/shm (client device 28 inode 2, server device 27 inode 1)"),
    "same-user checks inspection": (BASE, GONE, {"policy": "same-user"}, False,
                                    "client not inspected: the peer (pid 7) has exited"),
    "same-user, client asks for sockets": (BASE, BASE, {"policy": "same-user", "client_socket_only": True}, False,
                                           "the client asked for sockets only"),
}


@pytest.mark.parametrize("case", list(TABLE), ids=list(TABLE))
def test_decide_table(case: str) -> None:
    server, client, kw, shm, reason = TABLE[case]
    d = decide(server, client, **kw)
    assert d == Decision(shm, reason, kw.get("policy", "strict"))
    assert str(d) == f"{'shared memory' if shm else 'socket'}: {reason} (policy {d.policy})"


def test_decide_rejects_a_bad_policy() -> None:
    with pytest.raises(PolicyError, match="strict, same-user, off"):
        decide(BASE, BASE, policy="lenient")
    with pytest.raises(ValueError):
        decide(BASE, BASE, policy="")


def test_facts_must_be_complete_or_say_why() -> None:
    with pytest.raises(ValueError, match="missing"):
        f(shm=None)
    with pytest.raises(ValueError, match="problem"):
        Facts(1, 0, 0, inspected=False)
    with pytest.raises(ValueError, match="problem"):
        f(problem="inspected facts have no problem")
    assert Facts.foreign("why", 5).pid == 5 and Facts.foreign("why").uid is None


def test_policy_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROKER_SHM_POLICY", raising=False)
    assert policy_from() == "strict"
    for name in ("strict", "same-user", "off"):
        assert policy_from(name) == name
        monkeypatch.setenv("BROKER_SHM_POLICY", name)
        assert policy_from() == name
    monkeypatch.setenv("BROKER_SHM_POLICY", "off")
    assert policy_from("strict") == "strict"  # an argument beats the environment
    monkeypatch.setenv("BROKER_SHM_POLICY", "")
    assert policy_from() == "strict"
    monkeypatch.setenv("BROKER_SHM_POLICY", "Strict")
    with pytest.raises(PolicyError, match=r"'Strict' \(from BROKER_SHM_POLICY\): use one of strict, same-user, off"):
        policy_from()
    assert policy_from("same-user") == "same-user"  # a valid argument does not read a bad environment
    with pytest.raises(ValueError, match=r"bad shared-memory policy 'on': use one of strict, same-user, off"):
        policy_from("on")


def test_dev_shm_is_resolved_inside_the_peer_root(tmp_path: Any) -> None:
    root = tmp_path / "root"
    (root / "run" / "shm").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "dev" / "shm").symlink_to("/run/shm")  # absolute: must not mean *our* /run/shm
    (root / "dev" / "rel").symlink_to("../run/./shm")
    (root / "dev" / "loop").symlink_to("loop")
    want = os.stat(root / "run" / "shm")
    for name in ("/dev/shm", "dev/rel", "/dev/../../dev/shm"):
        got = _identity._stat_in_root(str(root), name)
        assert (got.st_dev, got.st_ino) == (want.st_dev, want.st_ino), name
    with pytest.raises(OSError) as e:
        _identity._stat_in_root(str(root), "/dev/loop")
    assert e.value.errno == errno.ELOOP


# --- helpers for real peers ----------------------------------------------------------


class Forked:
    """A forked child whose function's return value comes back pickled through a pipe."""

    def __init__(self, fn: Callable[[], object]) -> None:
        r, w = os.pipe()

        def body() -> None:
            os.close(r)
            data = pickle.dumps(fn())
            with os.fdopen(w, "wb") as out:
                out.write(data)

        self.child = Child(body)
        os.close(w)
        self.fd: int | None = r

    def result(self, timeout: float = TIMEOUT) -> Any:
        assert self.fd is not None
        deadline, data = time.monotonic() + timeout, b""
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.fd], [], [], left)[0], f"child {self.child.pid} did not answer"
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                break
            data += chunk
        os.close(self.fd)
        self.fd = None
        code = self.child.join(timeout)
        assert code == 0, f"child failed with exit code {code} (its traceback is on stderr)"
        return pickle.loads(data)

    def exited(self) -> bool:
        pid, st = os.waitpid(self.child.pid, os.WNOHANG)
        if pid:
            self.child.status = os.waitstatus_to_exitcode(st)
        return self.child.status is not None

    def __enter__(self) -> "Forked":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.child.kill()


def accept(srv: socket.socket, peer: Forked) -> socket.socket:
    """Accept one connection, failing at once (not after a timeout) if the peer died first."""
    srv.settimeout(0.05)
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            conn, _ = srv.accept()
            conn.settimeout(TIMEOUT)
            return conn
        except TimeoutError:
            assert not peer.exited(), f"the peer exited ({peer.child.status}) before connecting"
            assert time.monotonic() < deadline, "the peer never connected"


def listen(path: str) -> socket.socket:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    os.chmod(path, 0o777)  # peers of other users connect too
    srv.listen()
    return srv


def serve_one(sockdir: str, prepare: Callable[[], object] | None = None,
              after_connect: Callable[[], None] | None = None) -> tuple[Facts, Facts, Any]:
    """A forked child runs prepare(), connects here and stays until this side has run
    peer_facts. Returns (what this side saw, the child's own local_facts(), what prepare returned)."""
    path = os.path.join(sockdir, "peer.sock")
    srv = listen(path)
    try:
        def peer() -> object:
            extra = prepare() if prepare else None
            with socket.socket(socket.AF_UNIX) as c:
                c.settimeout(TIMEOUT)
                c.connect(path)
                if after_connect:
                    after_connect()
                mine = local_facts()
                c.sendall(b"r")
                assert c.recv(1) == b"k"  # alive until the server has looked
            return mine, extra

        with Forked(peer) as child:
            with accept(srv, child) as conn:
                assert conn.recv(1) == b"r", "the peer failed after connecting"
                seen = peer_facts(conn)
                conn.sendall(b"k")
            mine, extra = child.result()
    finally:
        srv.close()
        os.unlink(path)
    return seen, mine, extra


@pytest.fixture
def sockdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="brk-identity-")
    os.chmod(d, 0o755)  # reachable by the second user
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_pidfds_left():
    """Every test here also fails if it leaves a pidfd open in this process."""
    before = pidfds()
    yield
    left = pidfds() - before
    for fd in left:  # close them, so that one leak does not fail every later test
        os.close(fd)
    assert not left, f"pidfds left open: {sorted(left)}"


def pidfds() -> set[int]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]":
                found.add(int(fd))
        except OSError:
            pass
    return found


def kernel_has_peer_pidfd() -> bool:
    a, b = socket.socketpair()
    with a, b:
        try:
            fd = struct.unpack("i", a.getsockopt(socket.SOL_SOCKET, 77, 4))[0]
        except OSError:
            return False
        os.close(fd)
        return True


@pytest.fixture(params=["SO_PEERPIDFD", "pidfd_open", "no pidfd"])
def pin(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """How peer_facts pins the peer: the kernel's SO_PEERPIDFD, else pidfd_open(pid), else start times only."""
    if request.param == "SO_PEERPIDFD":
        if not kernel_has_peer_pidfd():
            pytest.skip("this kernel has no SO_PEERPIDFD (Linux >= 6.5)")
    else:
        monkeypatch.setattr(_identity, "_SO_PEERPIDFD", None)
    if request.param == "no pidfd":
        monkeypatch.delattr(os, "pidfd_open")
    return str(request.param)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"unshare({flags:#x}): {os.strerror(e)}")


def mount(source: bytes | None, target: bytes, fstype: bytes | None, flags: int, data: bytes | None) -> None:
    if _libc.mount(source, target, fstype, flags, data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {target!r}: {os.strerror(e)}")


def require_unshare(flags: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("namespaces need root here")

    def probe() -> str:
        try:
            unshare(flags)
        except OSError as e:
            return str(e)
        return ""

    with Forked(probe) as child:
        problem = child.result()
    if problem:
        pytest.skip(f"cannot create namespaces here: {problem}")


def wait_zombie(pid: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        with open(f"/proc/{pid}/stat", "rb") as st:
            if st.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return
        assert time.monotonic() < deadline, f"{pid} never became a zombie"
        time.sleep(0.002)


# --- 2. real peers -------------------------------------------------------------------


def test_local_facts_agree_with_the_kernel() -> None:
    me = local_facts()
    assert me.inspected and me.problem == ""
    assert (me.pid, me.uid, me.gid) == (os.getpid(), os.geteuid(), os.getegid())
    for name, ino in (("user", me.user_ns), ("mnt", me.mnt_ns), ("ipc", me.ipc_ns)):
        assert os.readlink(f"/proc/self/ns/{name}") == f"{name}:[{ino}]"
    st = os.stat("/dev/shm")
    assert me.shm == (st.st_dev, st.st_ino)
    if os.path.exists("/proc/self/sessionid"):
        with open("/proc/self/sessionid") as s:
            assert me.sessionid == int(s.read())
    else:
        assert me.sessionid is None


def test_a_socketpair_peer_is_its_creator() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert peer_facts(a) == local_facts()  # SO_PEERCRED names whoever created the pair


def test_same_user_and_session_gets_shared_memory(sockdir: str, pin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []
    if pin != "no pidfd":
        real = os.pidfd_open
        monkeypatch.setattr(os, "pidfd_open", lambda pid, *a: opened.append(pid) or real(pid, *a))
    seen, mine, _ = serve_one(sockdir)
    assert seen == mine, "the server must see the peer exactly as the peer sees itself"
    assert seen.pid != os.getpid()
    assert opened == ([] if pin == "SO_PEERPIDFD" else [seen.pid] if pin == "pidfd_open" else [])
    server = local_facts()
    d = decide(server, seen)
    assert d.shm, d
    assert d.reason == f"same user {server.uid}, namespaces and /dev/shm, login session " + (
        "unset" if server.sessionid == AUDIT_SID_UNSET else str(server.sessionid))


def become(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def test_another_user_gets_the_socket(sockdir: str, other_user: tuple[int, int]) -> None:
    uid, gid = other_user
    seen, mine, _ = serve_one(sockdir, lambda: become(uid, gid))
    assert seen == mine and (seen.uid, seen.gid) == (uid, gid)
    d = decide(local_facts(), seen)
    assert not d.shm and d.reason == f"different effective uid (client {uid}, server {os.geteuid()})"


def test_a_peer_whose_uid_changed_after_connecting_is_not_inspected(sockdir: str, other_user: tuple[int, int]) -> None:
    uid, gid = other_user
    seen, mine, _ = serve_one(sockdir, after_connect=lambda: become(uid, gid))
    assert mine.uid == uid and seen.uid == os.geteuid()  # SO_PEERCRED keeps the uid of connect()
    assert not seen.inspected
    assert seen.problem == (f"the peer's effective uid changed since it connected "
                            f"(SO_PEERCRED {os.geteuid()}, now {uid})")
    assert decide(local_facts(), seen).reason.startswith("client not inspected: the peer's effective uid changed")


def test_a_server_that_may_not_inspect_the_peer_treats_it_as_foreign(sockdir: str, other_user: tuple[int, int]) -> None:
    uid, gid = other_user
    path = os.path.join(sockdir, "s")
    srv = listen(path)
    try:
        srv.settimeout(TIMEOUT)

        def server() -> object:  # an unprivileged server; its client (this process) is root
            become(uid, gid)
            conn, _ = srv.accept()
            with conn:
                seen = peer_facts(conn)
            me = local_facts()
            return me, seen, decide(me, seen)

        with Forked(server) as child, socket.socket(socket.AF_UNIX) as c:
            c.settimeout(TIMEOUT)
            c.connect(path)
            me, seen, d = child.result()
    finally:
        srv.close()
        os.unlink(path)
    assert me.inspected and me.uid == uid  # a process may always inspect itself
    assert not seen.inspected and (seen.pid, seen.uid) == (os.getpid(), os.geteuid())
    assert seen.problem == f"cannot read /proc/{os.getpid()}/ns/user: Permission denied"
    assert not d.shm and d.reason == f"client not inspected: {seen.problem}"


def set_dumpable() -> None:
    if _libc.prctl(4, 1, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")


def test_an_unprivileged_server_inspects_a_same_user_peer_only_if_it_is_dumpable(other_user: tuple[int, int]) -> None:
    uid, gid = other_user

    def server() -> object:
        become(uid, gid)  # the kernel marks a process whose uid changed not dumpable; children inherit it
        d = tempfile.mkdtemp(prefix="brk-identity-")
        try:
            me = local_facts()
            dropped, _, _ = serve_one(d)
            dumpable, _, _ = serve_one(d, set_dumpable)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return me, dropped, dumpable

    with Forked(server) as child:
        me, dropped, dumpable = child.result()
    assert not dropped.inspected and dropped.uid == uid
    assert dropped.problem == f"cannot read /proc/{dropped.pid}/ns/user: Permission denied"
    assert dumpable.inspected and dumpable.uid == uid
    d = decide(me, dumpable)
    assert d.shm, d


def private_shm_namespace() -> None:
    unshare(CLONE_NEWNS | CLONE_NEWIPC)
    mount(None, b"/", None, MS_REC | MS_PRIVATE, None)  # first, so nothing propagates back to the host
    mount(b"tmpfs", b"/dev/shm", b"tmpfs", 0, b"mode=1777,size=1m")


def test_other_mount_and_ipc_namespaces_with_their_own_dev_shm(sockdir: str) -> None:
    require_unshare(CLONE_NEWNS | CLONE_NEWIPC)
    host_shm = os.stat("/dev/shm")
    seen, mine, _ = serve_one(sockdir, private_shm_namespace)
    assert (os.stat("/dev/shm").st_dev, os.stat("/dev/shm").st_ino) == (host_shm.st_dev, host_shm.st_ino)
    assert seen == mine, "the server must see the peer's own namespaces and /dev/shm"
    server = local_facts()
    assert seen.user_ns == server.user_ns and seen.uid == server.uid
    assert seen.mnt_ns != server.mnt_ns and seen.ipc_ns != server.ipc_ns and seen.shm != server.shm
    d = decide(server, seen)
    assert not d.shm and d.reason == (
        f"different mount and ipc namespaces (client mount {seen.mnt_ns} ipc {seen.ipc_ns}, "
        f"server mount {server.mnt_ns} ipc {server.ipc_ns})")
    d = decide(server, dataclasses.replace(seen, mnt_ns=server.mnt_ns, ipc_ns=server.ipc_ns))
    assert d.reason.startswith("different /dev/shm (client device ")


def test_another_user_namespace_gets_the_socket(sockdir: str) -> None:
    require_unshare(CLONE_NEWUSER)
    seen, mine, _ = serve_one(sockdir, lambda: unshare(CLONE_NEWUSER))
    server = local_facts()
    assert seen.inspected and seen.uid == server.uid  # SO_PEERCRED maps the uid into our namespace
    assert mine.uid == 65534  # unmapped inside its own namespace
    assert seen.user_ns == mine.user_ns != server.user_ns and seen.mnt_ns == server.mnt_ns
    d = decide(server, seen)
    assert not d.shm and d.reason == f"different user namespace (client {seen.user_ns}, server {server.user_ns})"


def test_a_peer_outside_our_pid_namespace_is_not_inspected(sockdir: str) -> None:
    require_unshare(CLONE_NEWPID)
    path = os.path.join(sockdir, "s")
    srv = listen(path)
    try:
        srv.settimeout(TIMEOUT)

        def server_as_pid_1() -> object:
            conn, _ = srv.accept()
            with conn:
                return os.getpid(), peer_facts(conn)

        def parent_of_the_namespace() -> object:
            unshare(CLONE_NEWPID)  # the next child is pid 1 of a new namespace, which cannot see us
            with Forked(server_as_pid_1) as inner:
                return inner.result()

        with Forked(parent_of_the_namespace) as child, socket.socket(socket.AF_UNIX) as c:
            c.settimeout(TIMEOUT)
            c.connect(path)
            pid, seen = child.result()
    finally:
        srv.close()
        os.unlink(path)
    assert pid == 1
    assert not seen.inspected and seen.pid is None and seen.uid == os.geteuid()
    assert "outside this pid namespace" in seen.problem


def read_session() -> int:
    with open("/proc/self/sessionid") as s:
        return int(s.read())


def new_login_session() -> tuple[int, int, str]:
    """Claim this process for a login (write its loginuid): the kernel's audit gives it a new session."""
    before = read_session()
    try:
        with open("/proc/self/loginuid", "w") as lu:
            lu.write(str(os.getuid()))
    except OSError as e:
        return before, before, str(e)
    return before, read_session(), ""


def require_audit_sessions() -> None:
    if not os.path.exists("/proc/self/sessionid"):
        pytest.skip("this kernel has no audit session ids (/proc/self/sessionid)")
    if os.geteuid() != 0:
        pytest.skip("setting a loginuid needs root (CAP_AUDIT_CONTROL)")


def test_another_login_session_gets_the_socket_under_strict_only(sockdir: str) -> None:
    require_audit_sessions()
    seen, mine, (before, after, problem) = serve_one(sockdir, new_login_session)
    if after == before:
        pytest.skip(f"writing /proc/self/loginuid did not start a new audit session ({problem or 'unchanged'})")
    server = local_facts()
    assert seen == mine and seen.sessionid == after != server.sessionid
    d = decide(server, seen)
    theirs = "unset" if server.sessionid == AUDIT_SID_UNSET else str(server.sessionid)
    assert not d.shm and d.reason == f"different login session (client {after}, server {theirs})"
    d = decide(server, seen, policy="same-user")
    assert d.shm and d.reason == f"same user {server.uid}, namespaces and /dev/shm (login session not checked)"


def test_one_login_session_shares_and_a_nested_login_does_not(sockdir: str) -> None:
    require_audit_sessions()

    def server_in_a_session() -> object:  # both sides in a set session: no side is "unset"
        _, mine, problem = new_login_session()
        me = local_facts()
        same, _, _ = serve_one(sockdir)  # the peer inherits the session
        other, _, extra = serve_one(sockdir, new_login_session)
        return mine, problem, me, same, other, extra

    with Forked(server_in_a_session) as child:
        session, problem, me, same, other, (before, after, _) = child.result()
    if session == AUDIT_SID_UNSET or after == before:
        pytest.skip(f"writing /proc/self/loginuid did not start a new audit session ({problem or 'unchanged'})")
    assert me.sessionid == same.sessionid == session and other.sessionid == after != session
    d = decide(me, same)
    assert d.shm and d.reason == f"same user {me.uid}, namespaces and /dev/shm, login session {session}"
    d = decide(me, other)
    assert not d.shm and d.reason == f"different login session (client {after}, server {session})"


def test_a_tcp_peer_is_never_inspected() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv, \
            socket.create_connection(srv.getsockname()[:2], timeout=TIMEOUT) as c:
        conn, _ = srv.accept()
        with conn:
            seen = peer_facts(conn)
        assert peer_facts(c) == seen
    assert seen == Facts.foreign("not a Unix socket: TCP never gets shared memory")
    assert decide(local_facts(), seen, transport="tcp").reason == "TCP never gets shared memory"
    assert decide(local_facts(), seen).reason == "client not inspected: not a Unix socket: TCP never gets shared memory"


def connect_and_exit(path: str) -> Callable[[], None]:
    def peer() -> None:
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(TIMEOUT)
            c.connect(path)
    return peer


# what each way of pinning the peer reports for a peer that has exited
GONE_PROBLEM = {"SO_PEERPIDFD": "the peer (pid {}) has exited", "pidfd_open": "the peer (pid {}) has exited",
                "no pidfd": "cannot read /proc/{}/stat: No such file or directory"}


def test_a_peer_that_exited_and_was_reaped_is_not_inspected(sockdir: str, pin: str) -> None:
    path = os.path.join(sockdir, "s")
    with listen(path) as srv, Forked(connect_and_exit(path)) as peer:
        with accept(srv, peer) as conn:
            assert peer.child.join(TIMEOUT) == 0  # reaped before the server looks: deterministic
            seen = peer_facts(conn)
    pid = peer.child.pid
    assert not seen.inspected and (seen.pid, seen.uid) == (pid, os.geteuid())
    assert seen.problem.startswith(GONE_PROBLEM[pin].format(pid))  # kernels < 6.16 add "(SO_PEERPIDFD: ...)"
    assert decide(local_facts(), seen).reason == f"client not inspected: {seen.problem}"


def test_a_zombie_peer_is_not_inspected(sockdir: str, pin: str) -> None:
    path = os.path.join(sockdir, "s")
    with listen(path) as srv, Forked(connect_and_exit(path)) as peer:
        with accept(srv, peer) as conn:
            wait_zombie(peer.child.pid)  # exited, not yet reaped: /proc/PID still half there
            seen = peer_facts(conn)
        assert peer.child.join(TIMEOUT) == 0
    pid = peer.child.pid
    assert not seen.inspected and seen.pid == pid
    if pin == "no pidfd":  # without a pidfd the half-gone /proc entry is what tells
        assert seen.problem == f"cannot read /proc/{pid}/ns/mnt: No such file or directory"
    else:
        assert seen.problem == f"the peer (pid {pid}) has exited"


def test_a_reused_pid_is_never_mistaken_for_the_peer(sockdir: str) -> None:
    if not kernel_has_peer_pidfd():
        pytest.skip("only SO_PEERPIDFD (Linux >= 6.5) tells a reused pid from the peer")
    if os.geteuid() != 0:
        pytest.skip("choosing the next pid (ns_last_pid) needs root")
    path = os.path.join(sockdir, "s")
    with listen(path) as srv, Forked(connect_and_exit(path)) as peer:
        with accept(srv, peer) as conn:
            assert peer.child.join(TIMEOUT) == 0
            pid = peer.child.pid
            r, w = os.pipe()

            def impostor_body() -> None:  # same user, session and namespaces as the peer was
                os.close(w)
                os.read(r, 1)  # until the test closes its end

            impostor = None
            try:
                for _ in range(50):  # other processes on the host may take the pid first: retry
                    with open("/proc/sys/kernel/ns_last_pid", "w") as last:
                        last.write(str(pid - 1))
                    impostor = Child(impostor_body)
                    if impostor.pid == pid:
                        break
                    impostor.kill()
                    impostor = None
                if impostor is None:
                    pytest.skip(f"could not get pid {pid} again")
                seen = peer_facts(conn)
            finally:
                os.close(w)
                os.close(r)
                if impostor is not None:
                    assert impostor.join(TIMEOUT) == 0
    assert not seen.inspected and seen.problem.startswith(f"the peer (pid {pid}) has exited")
    assert not decide(local_facts(), seen).shm


def test_no_fd_leaks(sockdir: str, pin: str) -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(50):
        a, b = socket.socketpair()
        with a, b:
            assert peer_facts(a).inspected
    with socket.create_server(("127.0.0.1", 0)) as srv, \
            socket.create_connection(srv.getsockname()[:2], timeout=TIMEOUT) as c:
        for _ in range(20):
            assert not peer_facts(c).inspected
    path = os.path.join(sockdir, "s")
    with listen(path) as srv:
        for _ in range(10):
            with Forked(connect_and_exit(path)) as peer:
                with accept(srv, peer) as conn:
                    assert peer.child.join(TIMEOUT) == 0
                    assert not peer_facts(conn).inspected
    for _ in range(5):
        seen, _, _ = serve_one(sockdir)
        assert seen.inspected
    os.unlink(path)
    assert not pidfds()
    assert sorted(os.listdir("/proc/self/fd")) == before
