#!/bin/sh
# The two walkthroughs of the seeds, with unionmount in place of unionfs-fuse and overlayfs,
# step by step, printing base/upper/merged after each step. No Docker needed.
#
#   scripts/demo.sh [--pause] [DIR]
#
# --pause waits for Enter between steps (for a classroom). DIR (default: a new temp dir) is
# where the layers are made; it is removed at the end. The binary is $UNIONMOUNT, else the
# newer of this tree's target/debug and target/release builds, else `unionmount` on PATH.
# Headings are bold on a terminal only, and not with NO_COLOR set. Needs /dev/fuse (and root
# or fusermount3).
set -eu

pause=0
if [ "${1:-}" = "--pause" ]; then pause=1; shift; fi
here=$(cd "$(dirname "$0")/.." && pwd)
um=${UNIONMOUNT:-}
if [ -z "$um" ]; then
    # The newest build of this tree, else the installed one.
    for b in "$here/target/debug/unionmount" "$here/target/release/unionmount"; do
        if [ -x "$b" ] && { [ -z "$um" ] || [ "$b" -nt "$um" ]; }; then um=$b; fi
    done
    if [ -z "$um" ] && command -v unionmount >/dev/null 2>&1; then um=unionmount; fi
    if [ -z "$um" ]; then
        echo "demo: no unionmount binary (cargo build, or set UNIONMOUNT)" >&2; exit 1
    fi
fi
D=${1:-$(mktemp -d /tmp/unionmount-demo.XXXXXX)}
mkdir -p "$D"
D=$(cd "$D" && pwd)
# Commands are shown with paths relative to the demo directory.
cd "$D"
trace_pid=
cleanup() {
    [ -n "$trace_pid" ] && kill "$trace_pid" 2>/dev/null || true
    cd /
    for m in "$D"/*/merged; do
        mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount "$m"; }
    done
    rm -rf "$D"
}
trap cleanup EXIT INT TERM

# Bold headings on a terminal only (https://no-color.org: NO_COLOR set turns them off).
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then bold=$(printf '\033[1m') off=$(printf '\033[0m')
else bold= off=; fi
n=0
step() {
    n=$((n + 1))
    printf '\n%s== %d. %s%s\n' "$bold" "$n" "$*" "$off"
}
run() {
    printf '$ %s\n' "$*" | sed "s|$um |unionmount |g"
    sh -c "$*"
}
# Every branch and the merged view: each entry, and the content of small files.
tree() {
    dir=$1
    (cd "$dir" && find . -mindepth 1 -not -path './.wh..wh..work*' | LC_ALL=C sort) |
    while IFS= read -r p; do
        f="$dir/${p#./}"
        if [ -f "$f" ] && [ ! -s "$f" ]; then printf '    %s   (empty)\n' "${p#./}"
        elif [ -f "$f" ]; then printf '    %s = %s\n' "${p#./}" "$(head -c 60 "$f" | tr '\n' ' ')"
        elif [ -d "$f" ]; then printf '    %s/\n' "${p#./}"
        else printf '    %s (%s)\n' "${p#./}" "$(stat -c %F "$f")"
        fi
    done
}
show() {
    root=$1; shift
    for b in "$@"; do
        printf '  %s:\n' "$b"
        tree "$root/$b"
    done
    if [ "$pause" = 1 ]; then printf '[Enter] '; read -r _; fi
}

# ----------------------------------------------------------------------------------------
printf 'In %s, with %s\n\n' "$D" "$um"
printf '%s### Walkthrough 1: a union mount, the unionfs-fuse demo%s\n' "$bold" "$off"
U=ufs
step "Create the layer directories and the base (read-only) files"
run "mkdir -p $U/base $U/upper $U/merged"
run "echo 'I am base file 1' > $U/base/1"
run "mkdir -p $U/base/app && echo 'hello from base' > $U/base/app/hello.txt"
show "$U" base upper

step "Mount: upper (RW) over base (RO)"
run "$um $U/upper=RW:$U/base=RO $U/merged"
show "$U" base upper merged

step "Create a new file through the merged view: it lands in upper"
run "echo 'new file' > $U/merged/d"
show "$U" base upper merged

step "Override a base file: copy-on-write, base is untouched"
run "echo OVERRIDDEN > $U/merged/1"
run "cat $U/base/1 $U/upper/1 $U/merged/1"
run "$um which $U/merged/1"
show "$U" base upper merged

step "Delete a base file: a whiteout in upper hides it"
run "rm $U/merged/app/hello.txt"
run "ls -a $U/upper/app"
run "$um which $U/merged/app/hello.txt"
show "$U" base upper merged

step "Which branch serves what (also an xattr: getfattr -n user.unionmount.layer)"
run "$um which $U/merged/d $U/merged/app"
run "$um layers $U/merged"

step "Snapshot, make a mess, roll back: live, the mount stays in use"
run "$um snapshot $U/merged before-mess"
run "rm -rf $U/merged/app && echo oops > $U/merged/1"
run "$um diff $U/merged --since before-mess"
show "$U" base upper.snapshots/0001-before-mess upper merged
run "$um rollback $U/merged before-mess"
run "cat $U/merged/1 && ls $U/merged"
run "$um snapshots $U/merged"
show "$U" base upper.snapshots/0001-before-mess upper merged

step "Unmount"
run "fusermount3 -u $U/merged"
show "$U" base upper merged

# ----------------------------------------------------------------------------------------
printf '\n%s### Walkthrough 2: the Docker copy-on-write lab, without Docker%s\n' "$bold" "$off"
C=docker
step "An image layer (lower), an empty container layer (upper)"
run "mkdir -p $C/lower/opt $C/upper $C/merged"
run "echo layer1 > $C/lower/msg.txt && echo 'hello layers' > $C/lower/opt/hello.txt"
run "echo 'base file' > $C/lower/1"
show "$C" lower upper

step "'docker run': mount the container's root, and trace what the union does"
run "$um -o lowerdir=$C/lower,upperdir=$C/upper $C/merged"
"$um" trace "$C/merged" 2>/dev/null | sed 's/^/    [trace] /' &
trace_pid=$!
sleep 0.3
show "$C" lower upper merged

step "Change a file at runtime: copied up, then changed"
run "echo runtime-change >> $C/merged/msg.txt && cat $C/merged/msg.txt"
sleep 0.2
show "$C" lower upper merged

step "Add a file, delete an image file (a whiteout)"
run "echo 'new file' > $C/merged/d"
run "rm $C/merged/opt/hello.txt && ls -a $C/upper/opt"
sleep 0.2
show "$C" lower upper merged

step "'docker diff': what changed relative to the image"
run "$um diff $C/merged"

step "'docker commit': the upper becomes a read-only layer, a fresh upper starts"
run "$um commit $C/merged --to $C/layer1 --remount"
run "$um layers $C/merged"
show "$C" lower layer1 upper merged

step "Layer stacking: change the new container, the layers below stay as they are"
run "echo changed > $C/merged/1 && rm $C/merged/d"
sleep 0.2
run "$um diff $C/merged"
run "$um which $C/merged/1 $C/merged/msg.txt"
show "$C" lower layer1 upper merged

step "The committed layer as an OCI image layer tarball, and its diff ID"
run "$um export $C/layer1 --tar $C/layer1.tar --digest"
run "tar -tvf $C/layer1.tar"

step "Unmount"
kill "$trace_pid" 2>/dev/null || true
trace_pid=
run "fusermount3 -u $C/merged"
printf '\nDone. (The demo directory %s is removed now.)\n' "$D"
