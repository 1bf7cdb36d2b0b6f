#!/usr/bin/env bash
# The floors the ring's figures are compared with (bench/RESULTS.md): build and run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flags=(-std=c11 -O2 -Wall -Wextra -Werror)
gcc "${flags[@]}" "$here/futex_rtt.c" -o "$out/futex_rtt"
gcc "${flags[@]}" "$here/memcpy_bw.c" -o "$out/memcpy_bw"
gcc "${flags[@]}" -I"$here/../../csrc" "$here/ring_pingpong.c" "$here/../../csrc/brk_ring.c" -o "$out/ring_pingpong"
echo "nproc: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
"$out/futex_rtt" 1000
"$out/ring_pingpong" 1000 0
"$out/memcpy_bw"
