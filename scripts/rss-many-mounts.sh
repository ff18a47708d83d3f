#!/bin/bash
# Memory of many mounts of one tree (issue 18: 30 containers of one image): mount DIR N times
# with the daemon, `find -ls` in each mount, and print the daemons' total VmRSS.
#
#   sudo scripts/rss-many-mounts.sh [--daemon unionmount|fuse-overlayfs|PATH] [--mounts 30] DIR
#
# unionmount is the newest build of this tree (target/release, else target/debug); the
# mounts live in a temp dir and are taken down at the end.
set -eu
daemon=unionmount n=30
while [ $# -gt 1 ]; do
    case $1 in
        --daemon) daemon=$2; shift 2 ;;
        --mounts) n=$2; shift 2 ;;
        *) break ;;
    esac
done
lower=$(cd "${1:?usage: $0 [--daemon D] [--mounts N] DIR}" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "$daemon" = unionmount ]; then
    for b in "$here/target/release/unionmount" "$here/target/debug/unionmount"; do
        [ -x "$b" ] && { bin=$b; break; }
    done
else
    bin=$(command -v "$daemon")
fi
t=$(mktemp -d /tmp/rss-mounts.XXXXXX)
cleanup() {
    for m in "$t"/m*; do mountpoint -q "$m" && umount "$m"; done
    rm -rf "$t"
}
trap cleanup EXIT
pids=
for i in $(seq 1 "$n"); do
    mkdir -p "$t/u$i" "$t/w$i" "$t/m$i"
    case $daemon in
        unionmount) "$bin" "$t/u$i=RW:$lower=RO" "$t/m$i" ;;
        *) "$bin" -o "lowerdir=$lower,upperdir=$t/u$i,workdir=$t/w$i" "$t/m$i" 2>/dev/null ;;
    esac
done
for i in $(seq 1 "$n"); do find "$t/m$i" -ls >/dev/null 2>&1 || true; done
sleep 1
total=0 count=0
for p in $(pgrep -f "$bin"); do
    # Only the daemons of these mounts.
    tr '\0' ' ' </proc/"$p"/cmdline | grep -q "$t/" || continue
    kb=$(awk '/^VmRSS/{print $2}' /proc/"$p"/status)
    total=$((total + kb)) count=$((count + 1))
done
echo "$daemon: $count daemons, VmRSS in all $((total / 1024)) MiB ($((total / count)) kB each)"
