#!/bin/bash
# Count the FUSE requests the kernel sends while a command runs, by type, from the kernel's
# own trace events (tracefs `fuse:fuse_request_send`, Linux 6.6+). Needs root. Counts every
# FUSE mount of the machine, so run it with only the mount under study busy.
#
#   sudo scripts/fuse-requests.sh -- sh -c 'cat /mnt/merged/dir/* > /dev/null'
#
# `--mount PATH` counts only the requests of the FUSE mount at PATH, for a machine where
# other FUSE mounts are busy.
#
# Prints "count opcode" lines, most frequent first, then the total.
set -euo pipefail

conn=""
if [ "${1:-}" = "--mount" ]; then
    # The trace names a connection by the kernel's dev_t of the mount: major << 20 | minor.
    IFS=: read -r major minor < <(mountpoint -d "$2")
    conn=$(( (major << 20) | minor ))
    shift 2
fi
[ "${1:-}" = "--" ] && shift
if [ $# -eq 0 ]; then
    echo "usage: $0 [--mount PATH] [--] COMMAND [ARG...]" >&2
    exit 1
fi
T=/sys/kernel/tracing
[ -d "$T/events" ] || mount -t tracefs nodev "$T"
EV="$T/events/fuse/fuse_request_send"
if [ ! -d "$EV" ]; then
    echo "$0: this kernel has no fuse trace events ($EV)" >&2
    exit 1
fi
OUT=$(mktemp)
SIZE=$(cat "$T/buffer_size_kb")
cleanup() {
    echo 0 > "$EV/enable"
    echo "$SIZE" > "$T/buffer_size_kb"
    rm -f "$OUT"
}
trap cleanup EXIT

# About 100 bytes an event: room for a few hundred thousand requests.
echo 65536 > "$T/buffer_size_kb"
echo > "$T/trace"
echo 1 > "$EV/enable"
echo 1 > "$T/tracing_on"
status=0
"$@" || status=$?
echo 0 > "$EV/enable"
cp "$T/trace" "$OUT"
# "# entries-in-buffer/entries-written: 5/7": events were dropped when the two differ.
read -r kept written < <(sed -n 's/.*entries-written: \([0-9]*\)\/\([0-9]*\).*/\1 \2/p' "$OUT")
if [ "${kept:-0}" != "${written:-0}" ]; then
    echo "$0: $((written - kept)) events lost: the trace buffer overflowed" >&2
fi
if [ -n "$conn" ]; then
    grep "fuse_request_send: connection $conn " "$OUT" > "$OUT.mine" || true
    mv "$OUT.mine" "$OUT"
fi
{ grep -o '([A-Z_0-9]*)' "$OUT" || true; } | tr -d '()' | sort | uniq -c | sort -rn
echo "$(grep -c 'fuse_request_send' "$OUT" || true) requests in all"
exit "$status"
