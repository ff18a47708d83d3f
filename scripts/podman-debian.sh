#!/usr/bin/env bash
# bench-compare row 19: a `podman build --no-cache` of a five-step image on a Debian
# (debootstrap minbase) base, in a scratch storage root of its own (scripts/podman-lib.sh);
# rootful as root, rootless podman as any other user (who needs subordinate ids).
#
#   scripts/podman-debian.sh setup DIR [MOUNT_PROGRAM]   storage in DIR, the base imported
#   scripts/podman-debian.sh build DIR                   the build (the part to time)
#   scripts/podman-debian.sh check DIR                   the image runs its installed packages
#   scripts/podman-debian.sh teardown DIR                podman reset, unmount, rm -rf DIR
#
# setup needs ROOTFS_TAR (the rootfs as a tar, the image's base: `podman import`, no registry)
# and DEBS (a directory of .debs: the packages below and the dependencies the rootfs lacks,
# COPYed in through the build context; no network anywhere). Overlay storage, through
# MOUNT_PROGRAM if given (podman's overlay driver, i.e. the kernel's, if not).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/podman-lib.sh"
RUNTIME=$(command -v runc || command -v crun || true)
PACKAGES="perl less file xz-utils bzip2 patch"
cmd=${1:?usage: podman-debian.sh setup|build|check|teardown DIR [MOUNT_PROGRAM]}
D=${2:?podman-debian.sh $cmd: needs DIR}
P="$D/podman"

case "$cmd" in
setup)
    [ -n "$RUNTIME" ] || { echo "podman-debian: no runc or crun" >&2; exit 1; }
    : "${ROOTFS_TAR:?ROOTFS_TAR: the base rootfs as a tar}" "${DEBS:?DEBS: a directory of .debs}"
    rm -rf "$D"
    mkdir -p "$D"
    chmod 755 "$D"
    scratch_podman "$D" "${3:-}"
    "$P" import --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" localhost/bench-debian:latest \
        >/dev/null
    mkdir -p "$D/ctx/debs"
    cp "$DEBS"/*.deb "$D/ctx/debs/"
    # COPY; dpkg + apt-get; rm -r and mv of base directories; a hard link and chmod; dpkg again
    cat >"$D/ctx/Containerfile" <<EOF
FROM localhost/bench-debian:latest
COPY debs/ /tmp/debs/
RUN cp /tmp/debs/*.deb /var/cache/apt/archives/ && rm -r /tmp/debs && \\
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o APT::Sandbox::User=root \\
    --no-download $PACKAGES >/dev/null
RUN rm -r /usr/share/doc /usr/share/man /usr/share/info && \\
    mv /usr/share/locale /usr/share/locale.old && \\
    mv /var/lib/apt/lists /var/lib/apt/lists.old && mkdir /var/lib/apt/lists
RUN ln /usr/bin/perl /usr/local/bin/perl.hardlink && chmod -R go-rwx /etc/apt /var/cache/apt && \\
    chmod 0700 /root && chmod 4755 /usr/bin/less
RUN dpkg -r patch >/dev/null && dpkg -i /var/cache/apt/archives/patch_*.deb >/dev/null && \\
    dpkg -l >/var/lib/bench-packages.txt
EOF
    ;;
build)
    if ! "$P" build --no-cache --network none --pull=never \
        --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
        -t localhost/bench-deb:latest "$D/ctx" >"$D/build.log" 2>&1; then
        tail -n 20 "$D/build.log" >&2
        exit 1
    fi
    ;;
check)
    "$P" run --rm localhost/bench-deb:latest sh -c \
        'perl -e "print qq(perl \$^V\n)" && echo hi | xz | xz -d && file -b /usr/local/bin/perl.hardlink &&
         test -x /usr/local/bin/perl.hardlink && test ! -e /usr/share/doc/perl &&
         test -d /usr/share/locale.old && grep -q "^ii  patch " /var/lib/bench-packages.txt' \
        >"$D/check.log" 2>&1 || { cat "$D/check.log" >&2; exit 1; }
    ;;
teardown)
    if [ -x "$P" ]; then
        "$P" rm -af -t 0 >/dev/null 2>&1 || true
        "$P" system reset -f >/dev/null 2>&1 || true
        if [ "$(id -u)" -ne 0 ]; then
            # What the user's namespace owns, and its pause process (rootless podman).
            "$P" unshare rm -rf "$D/graph" "$D/run" >/dev/null 2>&1 || true
            [ ! -f "$D/tmp/pause.pid" ] || kill "$(cat "$D/tmp/pause.pid")" 2>/dev/null || true
        fi
    fi
    unmount_below "$D"
    rm -rf --one-file-system "$D"
    ;;
*)
    echo "podman-debian: unknown command '$cmd'" >&2
    exit 2
    ;;
esac
