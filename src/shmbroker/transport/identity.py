"""Who a peer is, as the kernel says, and the session rule: may two processes share memory?

DESIGN.md section 3:
may these two processes share memory, or must the socket carry their traffic?

`local_facts()` and `peer_facts(sock)` gather the kernel's facts; `decide()` is a
pure function of two sides' facts and the policy, and says why.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import stat
import struct
from dataclasses import dataclass

from shmbroker._errors import BrokerError
from shmbroker.core.proc import read_stat

__all__ = [
    "AUDIT_SID_UNSET",
    "POLICIES",
    "Decision",
    "Facts",
    "PolicyError",
    "decide",
    "local_facts",
    "peer_facts",
    "policy_from",
]

AUDIT_SID_UNSET = 0xFFFFFFFF  # /proc/PID/sessionid of a process no login ever claimed
POLICIES = ("strict", "same-user", "off")
POLICY_ENV = "BROKER_SHM_POLICY"

# SO_PEERPIDFD (Linux >= 6.5) hands out a pidfd of the very process that connected,
# so a pid reused after the peer died is never mistaken for it. Python 3.11 has no
# name for it. Tests set this to None to exercise the pidfd_open fallback.
_SO_PEERPIDFD: int | None = getattr(socket, "SO_PEERPIDFD", 77)


class PolicyError(BrokerError, ValueError):
    """Not a policy name: the valid ones are 'strict', 'same-user' and 'off'."""


_REQUIRED = ("pid", "uid", "gid", "user_ns", "mnt_ns", "ipc_ns", "shm")  # of inspected facts (not sessionid)


@dataclass(frozen=True)
class Facts:
    """What the kernel says about one process, at one moment.

    `uid`/`gid` are effective ids as seen from this process's user namespace
    (SO_PEERCRED for a peer). `user_ns`, `mnt_ns`, `ipc_ns` are the inodes of
    /proc/PID/ns/*; `shm` is (st_dev, st_ino) of /dev/shm resolved inside the
    process's own root. `sessionid` is the kernel's audit session id as is:
    AUDIT_SID_UNSET (4294967295) when no login set one, None only when this kernel
    has no audit session ids at all (no /proc/self/sessionid).

    `inspected` is False when the process could not be inspected (not a Unix
    socket, gone, pid reused, permission denied...): `problem` says why, and
    fields not learnt are None. Such a peer is foreign.
    """

    pid: int | None
    uid: int | None
    gid: int | None
    user_ns: int | None = None
    mnt_ns: int | None = None
    ipc_ns: int | None = None
    shm: tuple[int, int] | None = None
    sessionid: int | None = None
    inspected: bool = True
    problem: str = ""

    def __post_init__(self) -> None:
        if self.inspected:
            missing = [n for n in _REQUIRED if getattr(self, n) is None]
            if missing or self.problem:
                raise ValueError(f"inspected facts need every field and no problem "
                                 f"(missing {missing}, problem {self.problem!r})")
        elif not self.problem:
            raise ValueError("facts that were not inspected must say why (problem)")

    @classmethod
    def foreign(cls, problem: str, pid: int | None = None, uid: int | None = None, gid: int | None = None) -> "Facts":
        """Facts of a process that could not be inspected, keeping what is known."""
        return cls(pid, uid, gid, inspected=False, problem=problem)


@dataclass(frozen=True)
class Decision:
    """The session rule's verdict: shared memory or socket, and why."""

    shm: bool
    reason: str
    policy: str

    @property
    def transport(self) -> str:
        return "shared memory" if self.shm else "socket"

    def __str__(self) -> str:
        return f"{self.transport}: {self.reason} (policy {self.policy})"


def _valid(value: str, where: str) -> str:
    if value not in POLICIES:
        raise PolicyError(f"bad shared-memory policy {value!r}{where}: use one of {', '.join(POLICIES)}")
    return value


def policy_from(value: str | None = None) -> str:
    """The policy named by `value`, else by $BROKER_SHM_POLICY (unset or empty: 'strict').

    Raises PolicyError (a ValueError) for any other name.
    """
    if value is not None:
        return _valid(value, "")
    env = os.environ.get(POLICY_ENV, "")
    return _valid(env, f" (from {POLICY_ENV})") if env else "strict"


def _session_text(sid: int | None) -> str:
    if sid is None:
        return "none (no audit session ids on this kernel)"
    return "unset" if sid == AUDIT_SID_UNSET else str(sid)


_NAMESPACES = (("user", "user_ns"), ("mount", "mnt_ns"), ("ipc", "ipc_ns"))


def decide(server: Facts, client: Facts, *, policy: str = "strict", transport: str = "unix",
           client_socket_only: bool = False) -> Decision:
    """Shared memory or socket for this client of this server (DESIGN.md section 3).

    Steps, in order; the first that fails gives the reason: policy off; the client
    asked for sockets only; not a Unix socket; client, then server, not inspected;
    effective uid; user, mount, ipc namespaces; /dev/shm; and, under 'strict' only,
    the audit login session (unset matches only unset).
    """
    _valid(policy, "")

    def no(reason: str) -> Decision:
        return Decision(False, reason, policy)

    if policy == "off":
        return no("policy off: sockets only")
    if client_socket_only:
        return no("the client asked for sockets only")
    if transport != "unix":
        return no("TCP never gets shared memory" if transport == "tcp"
                  else f"{transport} transport never gets shared memory (Unix sockets only)")
    if not client.inspected:
        return no(f"client not inspected: {client.problem}")
    if not server.inspected:
        return no(f"server not inspected: {server.problem}")
    if client.uid != server.uid:
        return no(f"different effective uid (client {client.uid}, server {server.uid})")
    differ = [(name, attr) for name, attr in _NAMESPACES if getattr(client, attr) != getattr(server, attr)]
    if len(differ) == 1:
        name, attr = differ[0]
        return no(f"different {name} namespace (client {getattr(client, attr)}, server {getattr(server, attr)})")
    if differ:
        names = ", ".join(n for n, _ in differ[:-1]) + " and " + differ[-1][0]

        def values(f: Facts) -> str:
            return " ".join(f"{n} {getattr(f, a)}" for n, a in differ)

        return no(f"different {names} namespaces (client {values(client)}, server {values(server)})")
    if client.shm != server.shm:
        assert client.shm is not None and server.shm is not None
        return no(f"different /dev/shm (client device {client.shm[0]} inode {client.shm[1]}, "
                  f"server device {server.shm[0]} inode {server.shm[1]})")
    same = f"same user {server.uid}, namespaces and /dev/shm"
    if policy == "same-user":
        return Decision(True, f"{same} (login session not checked)", policy)
    if client.sessionid != server.sessionid:
        return no(f"different login session (client {_session_text(client.sessionid)}, "
                  f"server {_session_text(server.sessionid)})")
    return Decision(True, f"{same}, login session {_session_text(server.sessionid)}", policy)


# --- gathering the facts -------------------------------------------------------------


class _Unfit(Exception):
    """The process cannot be inspected; the message is the problem."""


def _stat_in_root(root: str, path: str) -> os.stat_result:
    """stat `path` as the process whose root directory is `root` (/proc/PID/root) sees it.

    Symbolic links are resolved inside that root: the kernel would resolve an absolute
    link met under /proc/PID/root in *our* root, and /dev/shm is a link on some systems.
    """
    todo = [p for p in path.split("/") if p]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part in (".", ""):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        if stat.S_ISLNK(os.lstat(here).st_mode):
            links += 1
            if links > 40:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), here)
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo[:0] = [p for p in target.split("/") if p]
            continue
        done.append(part)
    return os.stat(os.path.join(root, *done))


def _audit_sessions() -> bool:
    return os.path.exists("/proc/self/sessionid")


def _read(base: str) -> tuple[int, int, int, tuple[int, int], int | None]:
    """(user_ns, mnt_ns, ipc_ns, shm, sessionid) of the process at `base` (/proc/PID)."""
    user_ns, mnt_ns, ipc_ns = (os.stat(f"{base}/ns/{n}").st_ino for n in ("user", "mnt", "ipc"))
    st = _stat_in_root(f"{base}/root", "/dev/shm")
    sessionid = None
    if _audit_sessions():
        with open(f"{base}/sessionid", "rb") as f:
            text = f.read()
        try:
            sessionid = int(text)
        except ValueError:
            raise _Unfit(f"unreadable audit session id {text!r} in {base}/sessionid") from None
    return user_ns, mnt_ns, ipc_ns, (st.st_dev, st.st_ino), sessionid


def local_facts() -> Facts:
    """The facts of this process."""
    pid, uid, gid = os.getpid(), os.geteuid(), os.getegid()
    try:
        user_ns, mnt_ns, ipc_ns, shm, sessionid = _read("/proc/self")
    except OSError as e:
        return Facts.foreign(f"cannot read {e.filename}: {e.strerror}", pid, uid, gid)
    except _Unfit as e:
        return Facts.foreign(str(e), pid, uid, gid)
    return Facts(pid, uid, gid, user_ns, mnt_ns, ipc_ns, shm, sessionid)


def _euid(base: str) -> int:
    with open(f"{base}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Uid:"):
                return int(line.split()[2])
    raise _Unfit(f"no Uid line in {base}/status")


def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited (zombie or reaped)."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(0))


def _pidfd_pid(pidfd: int) -> int | None:
    """The pid a pidfd names (-1 once reaped), per /proc/self/fdinfo; None if the kernel does not say."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
            for line in f:
                if line.startswith(b"Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _pidfd(sock: socket.socket, pid: int) -> int | None:
    """A pidfd of the peer: SO_PEERPIDFD, else pidfd_open(pid); None if the kernel has neither.

    Only SO_PEERPIDFD names the process that connected. pidfd_open names whoever holds
    the pid now: a peer that died and whose pid was reused before this call cannot be
    told from the new process (kernels < 6.5; the window is short, but it is there).
    """
    if _SO_PEERPIDFD is not None:
        try:
            fd: int = struct.unpack("i", sock.getsockopt(socket.SOL_SOCKET, _SO_PEERPIDFD, 4))[0]
            return fd
        except OSError as e:
            if e.errno != errno.ENOPROTOOPT:  # EINVAL/ESRCH: the peer was reaped (kernels < 6.16)
                raise _Unfit(f"the peer (pid {pid}) has exited (SO_PEERPIDFD: {e.strerror})") from None
    try:
        return os.pidfd_open(pid)
    except AttributeError:
        return None
    except OSError as e:
        if e.errno == errno.ENOSYS:
            return None
        if e.errno == errno.ESRCH:
            raise _Unfit(f"the peer (pid {pid}) has exited") from None
        raise _Unfit(f"cannot open a pidfd for pid {pid}: {e.strerror}") from None


def _inspect(pid: int, uid: int, pidfd: int | None) -> tuple[int, int, int, tuple[int, int], int | None]:
    """Read the facts of `pid`, proving it is the peer throughout (raises _Unfit otherwise).

    The pidfd pins the peer: if it has not exited after the reads, it lived through
    them, its pid was never freed, and every /proc/PID read named it.
    """
    base = f"/proc/{pid}"
    gone = f"the peer (pid {pid}) has exited"
    try:
        if pidfd is not None:
            named = _pidfd_pid(pidfd)
            if named == -1 or _exited(pidfd):
                raise _Unfit(gone)
            if named is not None and named != pid:  # e.g. /proc from another pid namespace
                raise _Unfit(f"the peer's pidfd names pid {named}, SO_PEERCRED pid {pid}")
        start = read_stat(base)[1]
        euid = _euid(base)
        if euid != uid:
            raise _Unfit(f"the peer's effective uid changed since it connected (SO_PEERCRED {uid}, now {euid})")
        facts = _read(base)
        if pidfd is not None and _exited(pidfd):
            raise _Unfit(f"{gone} while being inspected")
        if read_stat(base)[1] != start:
            raise _Unfit(f"pid {pid} names another process now: the peer has exited")
        return facts
    except OSError as e:
        if pidfd is not None and _exited(pidfd):
            raise _Unfit(gone) from None
        raise _Unfit(f"cannot read {e.filename or base}: {e.strerror}") from None
    except (ValueError, IndexError):
        raise _Unfit(f"unreadable {base}/stat or status") from None


def peer_facts(sock: socket.socket) -> Facts:
    """The facts of the process at the other end of a connected socket.

    Only a Unix socket's peer can be inspected: SO_PEERCRED gives pid, uid and gid
    (fixed when the peer connected; for a socketpair, its creator's), a pidfd pins
    that process while /proc/PID is read, and any doubt (gone, pid reused, uid
    changed, unreadable, e.g. an unprivileged server and a peer of another user or
    one that dropped privileges) gives facts with inspected=False and the problem.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return Facts.foreign("not a Unix socket: TCP never gets shared memory")
    if sock.family != socket.AF_UNIX:
        return Facts.foreign(f"not a Unix socket ({socket.AddressFamily(sock.family).name})")
    try:
        pid, uid, gid = struct.unpack("iII", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError as e:
        return Facts.foreign(f"no peer credentials (SO_PEERCRED: {e.strerror})")
    if pid <= 0:
        return Facts.foreign("no peer pid (not connected, or the peer is outside this pid namespace)",
                             None, uid, gid)
    pidfd: int | None = None
    try:
        pidfd = _pidfd(sock, pid)
        user_ns, mnt_ns, ipc_ns, shm, sessionid = _inspect(pid, uid, pidfd)
    except _Unfit as e:
        return Facts.foreign(str(e), pid, uid, gid)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return Facts(pid, uid, gid, user_ns, mnt_ns, ipc_ns, shm, sessionid)
