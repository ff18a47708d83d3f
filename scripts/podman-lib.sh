# Shared by scripts/podman-e2e.sh and scripts/podman-bench.sh (sourced, not run): the root
# check, the packages they need, and a scratch podman that touches nothing of the host's.

# podman_prepare NAME: exit unless root; install what is missing; set RUNTIME.
podman_prepare() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$1: run as root" >&2
        exit 2
    fi
    local need=()
    command -v podman >/dev/null || need+=(podman)
    command -v runc >/dev/null || command -v crun >/dev/null || need+=(runc)
    dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
    command -v fusermount3 >/dev/null || need+=(fuse3)
    command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
    if [ ${#need[@]} -gt 0 ]; then
        echo "$1: installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    RUNTIME=$(command -v runc || command -v crun)
}

# scratch_podman DIR [MOUNT_PROGRAM]: storage, containers and registries configs in DIR and a
# DIR/podman wrapper using only them; overlay storage, through MOUNT_PROGRAM if given. Run by
# a user other than root, rootless podman (the user needs subordinate ids), whose runtime
# directory is DIR/xdg.
scratch_podman() {
    local d=$1 program=${2:-} opt="" xdg=""
    mkdir -p "$d"/{graph,run,tmp,volumes}
    if [ "$(id -u)" -ne 0 ]; then
        mkdir -p -m 700 "$d/xdg"
        xdg="export XDG_RUNTIME_DIR=\"$d/xdg\""
    fi
    {
        printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/graph"\nrunroot = "%s/run"\n' "$d" "$d"
        printf '\n[storage.options.overlay]\nmountopt = "nodev"\n'
        [ -z "$program" ] || printf 'mount_program = "%s"\n' "$program"
    } >"$d/storage.conf"
    # Podman raises nofile and nproc to 1048576 by default, which a container or sandbox
    # without CAP_SYS_RESOURCE cannot do (runc: "error setting rlimit type 7").
    cat >"$d/containers.conf" <<EOF
[containers]
netns = "none"
log_driver = "k8s-file"
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
pull_policy = "never"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$d/events.log"
runtime = "$(basename "$RUNTIME")"
tmp_dir = "$d/tmp"
volume_path = "$d/volumes"
static_dir = "$d/graph/libpod"
EOF
    printf 'unqualified-search-registries = []\n' >"$d/registries.conf"
    [ -z "$program" ] || opt="--storage-opt overlay.mount_program=$program"
    cat >"$d/podman" <<EOF
#!/bin/sh
export CONTAINERS_STORAGE_CONF="$d/storage.conf"
export CONTAINERS_CONF="$d/containers.conf"
export CONTAINERS_REGISTRIES_CONF="$d/registries.conf"
export TMPDIR="$d/tmp"
$xdg
exec podman --root "$d/graph" --runroot "$d/run" --storage-driver overlay $opt "\$@"
EOF
    chmod 755 "$d/podman"
}

# unmount_below DIR: whatever is still mounted under DIR, deepest first.
unmount_below() {
    awk -v t="$1" '$2 ~ "^"t {print $2}' /proc/mounts | sort -r | while read -r m; do
        fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
}
