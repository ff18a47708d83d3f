#!/usr/bin/env bash
# The same `podman build` with three storage setups in one run: overlay with unionmount as
# mount_program, with fuse-overlayfs, and the kernel's overlay (no mount_program). Prints
# each build's seconds, the median and its ratio to the kernel, as a Markdown table.
#
#   scripts/podman-bench.sh [--runs N] [--keep]
#
# Needs root, podman, runc (or crun), busybox-static, fuse-overlayfs (installed from apt when
# missing, as scripts/podman-e2e.sh does). Each setup has its own scratch graphroot under one
# temp dir; the host's container storage is never touched. Builds run round-robin (each run
# builds once per setup) with --no-cache, so every run does the whole work.
set -euo pipefail

RUNS=3
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "podman-bench: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/podman-lib.sh"
podman_prepare podman-bench
UNIONMOUNT="$ROOT/target/release/unionmount"
if [ ! -x "$UNIONMOUNT" ]; then
    (cd "$ROOT" && cargo build --release --quiet)
fi
FUSE_OVERLAYFS=$(command -v fuse-overlayfs)

TMP=$(mktemp -d /tmp/podman-bench.XXXXXX)
chmod 755 "$TMP"
cleanup() {
    local rc=$?
    set +e
    if [ "$KEEP" = 1 ]; then
        echo "podman-bench: kept $TMP"
        exit $rc
    fi
    for s in "$TMP"/setup-*; do
        [ -x "$s/podman" ] || continue
        "$s/podman" rm -af -t 0 >/dev/null 2>&1
        "$s/podman" system reset -f >/dev/null 2>&1
    done
    unmount_below "$TMP"
    rm -rf "$TMP"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# setup NAME [MOUNT_PROGRAM]: a scratch storage and a podman wrapper in $TMP/setup-NAME.
setup() { scratch_podman "$TMP/setup-$1" "${2:-}"; }

# ---- the base image: busybox, 2000 small files in 20 directories, one 64 MiB file ----
R="$TMP/rootfs"
mkdir -p "$R"/{bin,etc,tmp,proc,sys,dev,root,data}
cp /bin/busybox "$R/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ -e "$R/bin/$applet" ] || ln -s busybox "$R/bin/$applet"
done
chmod 1777 "$R/tmp"
echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
for d in $(seq 0 19); do
    mkdir -p "$R/data/d$d"
    for f in $(seq 0 99); do
        head -c 4096 /dev/urandom >"$R/data/d$d/f$f"
    done
done
head -c $((64 << 20)) /dev/urandom >"$R/data/big"
tar -C "$R" -cf "$TMP/base.tar" .

mkdir -p "$TMP/ctx"
cat >"$TMP/ctx/Containerfile" <<'EOF'
FROM localhost/bench-base:latest
# 3000 new small files
RUN mkdir /new && cd /new && i=0 && while [ $i -lt 3000 ]; do echo "file $i" >f$i; i=$((i+1)); done
# every base file changed: 2000 copy-ups
RUN for f in /data/d*/f*; do echo x >>"$f"; done
# metadata, deletions, a directory removed and made again
RUN chmod -R go-w /data && rm -rf /data/d1 /data/d2 && mkdir /data/d1 && touch /data/d1/again
# read everything back, append to the big file (a 64 MiB copy-up)
RUN cat /data/d*/f* /new/* >/dev/null && tar -cf /tmp/t.tar /data /new && rm /tmp/t.tar && echo y >>/data/big
EOF

NAMES=(unionmount fuse-overlayfs kernel)
setup unionmount "$UNIONMOUNT"
setup fuse-overlayfs "$FUSE_OVERLAYFS"
setup kernel
for n in "${NAMES[@]}"; do
    "$TMP/setup-$n/podman" import --change 'CMD ["/bin/sh"]' "$TMP/base.tar" \
        localhost/bench-base:latest >/dev/null
done

declare -A TIMES
echo "podman-bench: $RUNS runs of podman build (4 RUN steps) per setup, in $TMP" >&2
for run in $(seq 1 "$RUNS"); do
    for n in "${NAMES[@]}"; do
        P="$TMP/setup-$n/podman"
        start=$(date +%s.%N)
        if ! "$P" build --no-cache --network none --pull=never \
            --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
            -t localhost/bench:latest "$TMP/ctx" >"$TMP/build-$n-$run.log" 2>&1; then
            echo "podman-bench: build with $n failed:" >&2
            tail -n 20 "$TMP/build-$n-$run.log" >&2
            exit 1
        fi
        end=$(date +%s.%N)
        t=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.3f", b - a}')
        TIMES[$n]="${TIMES[$n]:-} $t"
        printf 'run %d %-15s %6.2f s\n' "$run" "$n" "$t" >&2
        "$P" rmi -f localhost/bench:latest >/dev/null 2>&1 || true
        "$P" image prune -f >/dev/null 2>&1 || true
    done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
KERNEL=$(echo "${TIMES[kernel]}" | median)
echo
echo "| storage | builds (s) | median (s) | ratio to kernel overlay |"
echo "| --- | --- | ---: | ---: |"
for n in "${NAMES[@]}"; do
    m=$(echo "${TIMES[$n]}" | median)
    case $n in
        unionmount) label="overlay, mount_program = unionmount" ;;
        fuse-overlayfs) label="overlay, mount_program = fuse-overlayfs $("$FUSE_OVERLAYFS" --version 2>/dev/null | sed -n 's/.*version \([0-9.]*\).*/\1/p' | head -n1)" ;;
        kernel) label="overlay (kernel), no mount_program" ;;
    esac
    runs=$(printf '%s' "${TIMES[$n]}" | awk '{for (i = 1; i <= NF; i++) printf "%s%.2f", (i > 1 ? ", " : ""), $i}')
    printf '| %s | %s | %.2f | %.2f |\n' "$label" "$runs" "$m" "$(awk -v a="$m" -v b="$KERNEL" 'BEGIN {print a / b}')"
done
echo
echo "$(date -u +%Y-%m-%d), $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)), kernel $(uname -r), $(podman --version), $(basename "$RUNTIME")"
