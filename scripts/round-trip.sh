#!/bin/bash
# The cost of one FUSE round trip on this machine: a loop of statx(AT_STATX_FORCE_SYNC) on
# one file, each of which the kernel must ask the daemon for (one GETATTR, answered with one
# fstat). Prints microseconds per call, the median of ROUNDS rounds of N calls.
#
#   scripts/round-trip.sh [--rounds 5] [-n 20000] FILE
#
# FILE on a local filesystem or kernel overlayfs gives the cost of the call itself (about
# 1 us here); on a FUSE mount, what a request adds. Run it under `taskset -c CPU` to place
# the caller, and `taskset -a -p -c CPU $(pidof unionmount)` to place the daemon.
set -eu
rounds=5 n=20000
while [ $# -gt 1 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        -n) n=$2; shift 2 ;;
        *) break ;;
    esac
done
file=${1:?usage: $0 [--rounds R] [-n N] FILE}
exec python3 - "$file" "$n" "$rounds" <<'EOF'
import ctypes, os, statistics, sys, time
path, n, rounds = os.fsencode(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_STATX_FORCE_SYNC, STATX_BASIC_STATS = -100, 0x2000, 0x7ff
buf = ctypes.create_string_buffer(256)  # struct statx
def loop():
    t = time.perf_counter()
    for _ in range(n):
        if libc.statx(AT_FDCWD, path, AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, buf):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), sys.argv[1])
    return (time.perf_counter() - t) / n * 1e6
loop()  # warm up
us = [loop() for _ in range(rounds)]
print(f"{statistics.median(us):.1f} us a call (rounds: {', '.join(f'{u:.1f}' for u in us)})")
EOF
