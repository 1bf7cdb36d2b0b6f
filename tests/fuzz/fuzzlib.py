"""What the fuzz targets share: how a target runs (atheris, libFuzzer's flags) and what counts as a bug.

Each tests/fuzz/fuzz_*.py is a script: `python tests/fuzz/fuzz_frames.py [libFuzzer flags] [corpus dirs]`
runs it under atheris (coverage of the broker package's Python, which the target instruments as it
imports it); imported (tests/test_fuzz.py), it gives TestOneInput to replay the corpus and the crashers
without atheris's instrumentation. A target's TestOneInput returns normally for every input the code
under test handled as it should (valid events, or the error the code documents for bad input) and
raises anything else: atheris then writes the input (crash-<sha1>) and exits non-zero.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
CRASHERS = os.path.join(HERE, "crashers")
NO_INSTRUMENT = "BROKER_FUZZ_NO_INSTRUMENT"


class Bug(AssertionError):
    """What a target raises when the code under test broke one of its rules."""


@contextlib.contextmanager
def instrumented(main: bool, modules: list[str]) -> Iterator[None]:
    """Around a target's imports of the broker package: atheris instruments `modules` (what the
    target reads hostile bytes with: their coverage guides the fuzzer) when the target runs as a
    script to fuzz. Imported, or only replaying inputs (NO_INSTRUMENT set: tests/test_fuzz.py's
    replay), nothing is instrumented, which saves seconds of start-up. Run as a script (main), the
    target first gets a peak RSS of its own (_own_peak_rss), for libFuzzer's -rss_limit_mb."""
    if main:
        _own_peak_rss()
    if not main or os.environ.get(NO_INSTRUMENT):
        yield
        return
    import atheris

    with atheris.instrument_imports(include=modules):
        yield


# how much of this process's peak RSS may have been its parent's before the run moves to a child of its own
INHERITED_PEAK_SLACK_MB = 64


def _own_peak_rss() -> None:
    """Make libFuzzer's -rss_limit_mb count this run's memory only: called first thing in a target run
    as a script (from instrumented(), before anything is imported or any thread started).

    libFuzzer checks the limit once a second against the process's *peak* RSS (getrusage's ru_maxrss,
    in a thread of its own). On Linux that peak is carried over from the parent: a process started with
    vfork + exec (how Python's subprocess starts one) begins with its parent's peak, and the parent can be
    pytest after the rest of the suite, which may have peaked at gigabytes. The run then stopped with an
    out-of-memory at its first check (about a second in, rss "2447Mb"), whatever its inputs did, and kept
    whichever input happened to be running. A process made by fork() has a peak of its own (what it has
    resident, here a few MB): when much of this process's peak is not its own (VmHWM, the high-water
    mark of its own memory since exec, is far below ru_maxrss), the run goes on in a forked child, and
    this process only passes signals on, waits for it and exits as it did."""
    try:
        with open("/proc/self/status") as f:
            own_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return  # not Linux: no VmHWM, and no peak carried over either
    import resource

    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if peak_kb - own_kb < INHERITED_PEAK_SLACK_MB << 10:
        return
    import signal

    print(f"fuzzlib: a peak RSS of {peak_kb >> 10} MB carried over from the parent process (this one has used "
          f"{own_kb >> 10} MB): the run goes on in a child, so that -rss_limit_mb counts its own memory only",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        import ctypes

        try:  # the child dies with this process (a harness's SIGKILL on a timeout), never orphaned
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:
            os._exit(1)
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda s, _frame: os.kill(pid, s))
    _, status = os.waitpid(pid, 0)  # retried after a signal's handler (PEP 475)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def run(test_one_input: Callable[[bytes], Any], argv: list[str] | None = None) -> None:
    """The target as a script: atheris's libFuzzer over TestOneInput (argv: libFuzzer's flags and corpus
    directories). The C extension is not instrumented: its crashes (a SIGSEGV) still stop the run and
    keep the input, and each target compares what C decodes with the Python reference."""
    import atheris

    atheris.Setup(sys.argv if argv is None else argv, test_one_input)
    atheris.Fuzz()


def inputs(target: str, kind: str) -> list[str]:
    """The files of one target's corpus (kind "corpus") or crashers (kind "crashers"), sorted."""
    d = os.path.join(HERE, kind, target)
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, f) for f in os.listdir(d) if not f.startswith("."))


def chunks(data: bytes, cuts: bytes) -> list[bytes]:
    """data cut in pieces (how a stream arrives, or records): each byte of `cuts` the length of the
    next piece, the rest of data the last one."""
    out, at = [], 0
    for n in cuts:
        out.append(data[at:at + n])
        at += n
        if at >= len(data):
            break
    if at < len(data):
        out.append(data[at:])
    return out
