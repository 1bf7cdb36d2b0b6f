"""The `broker` command line."""
from __future__ import annotations

import argparse
import sys

from ._version import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="broker", description="A shared-memory message broker for one Linux host.")
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser("bench", help="run benchmarks side by side with the IPC you would otherwise use")
    bench_sub = bench.add_subparsers(dest="suite", metavar="SUITE")
    ring = bench_sub.add_parser("ring", help="the shared-memory ring against multiprocessing.Pipe and AF_UNIX")
    ring.add_argument("--json", metavar="FILE", help="also write every figure and ratio to FILE")
    ring.add_argument("--quick", action="store_true", help="fewer messages and repetitions (a smoke run)")
    rpc = bench_sub.add_parser("rpc", help="the framework's request/response against a raw AF_UNIX socket and Pipe")
    rpc.add_argument("--json", metavar="FILE", help="also write every figure, repetition and ratio to FILE")
    rpc.add_argument("--quick", action="store_true", help="fewer requests and samples (a smoke run)")
    args = parser.parse_args(argv)
    if args.command == "bench":
        if args.suite in (None, "ring"):
            from ._bench_ring import run

            return run(json_path=getattr(args, "json", None), quick=getattr(args, "quick", False))
        if args.suite == "rpc":
            from ._bench_rpc import run as run_rpc

            return run_rpc(json_path=args.json, quick=args.quick)
        parser.error(f"unknown benchmark {args.suite!r}")
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
