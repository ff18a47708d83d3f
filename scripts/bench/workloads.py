"""The workloads: what runs in the mount, which stack it needs, and the goal vs overlayfs.

Commands are bash, run with these in the environment:
  M  the merged directory (for `plain`, a directory holding the same names)
  F  the fixture root (read-only bind mount)
  U  the upper directory (for `plain`, M)
  and the size parameters below (BIG_MB, CREATE_N, ...), and for the container rows:
  ROOTFS_ENTRIES  what `find` lists in the Debian rootfs (its root included)
  WALKX           the layer-diff walker (rootfs.WALKX_C): lstat + llistxattr + lgetxattr
  APT_PACKAGES    the packages workload 16 installs (their .debs are in a layer below)
  UNSHARE         `unshare -m` for root targets, `unshare -r -m` (a user namespace) for rootless
  UNIONMOUNT      the unionmount binary (snapshot/rollback, workload 17)
and for the snapshot layers (workload 18):
  SNAP_ENTRIES    what `find` lists through the snapshot layers over the tree (its root included)
  SNAP_HOT, SNAP_HOT_SIZE  the file every snapshot appended to, and its size in the newest one
and for the podman build (workload 19, no mount of ours: podman mounts its layers itself):
  PODMAN_DEBIAN   scripts/podman-debian.sh (setup / build / check / teardown of one storage)
  PODMAN_DIR      the target's scratch storage root (graphroot, runroot, build context)
  MOUNT_PROGRAM   the target's daemon as podman's overlay mount_program; empty for `overlay`
                  (podman's own overlay driver: kernel overlayfs)
  ROOTFS_TAR, DEBS  the Debian rootfs as a tar (the base image) and the .debs the build installs
Commands on a rootless target run as the rootless bench user, in /.
A command may print BENCH_ELAPSED=<seconds> to report its own time (used where process
start-up would blur a short measurement); otherwise the wall time of the command counts.
"""

from dataclasses import dataclass, field

# unionmount's goals, as a ratio to kernel overlayfs (from the issue)
GOALS = {
    ("data", "cold"): 1.2, ("data", "warm"): 1.2,
    ("metadata", "cold"): 3.0, ("metadata", "warm"): 2.0,
    ("namespace", "cold"): 3.0, ("namespace", "warm"): 3.0,
    ("copy-up", "cold"): 1.5, ("copy-up", "warm"): 1.5,
    ("build", "cold"): 1.3, ("build", "warm"): 1.3,
    # a first walk of a fresh mount with the branches in the page cache: every entry is a
    # LOOKUP, as a cold walk (issue 18: no row above 3x)
    ("metadata", "fresh"): 3.0,
    # apt-get install in a chroot on the mount (issue 18)
    ("package", "fresh"): 1.5,
    # podman build of a Debian-based image, kernel overlay driver vs mount_program (issue 18)
    ("container", "fresh"): 1.5,
}
# rows in absolute time (no kernel overlayfs equivalent): the goal in milliseconds (issue 19)
ABS_GOALS_MS = {"snapshot": 100, "rollback": 100}


@dataclass
class Phase:
    mode: str                 # "cold": caches dropped first; "warm": right after a pass;
                              # "fresh": first pass on a fresh mount, branches warmed first
    cmd: str
    expect: str = ""          # the variable whose value the command's output must equal


@dataclass
class Workload:
    wid: str
    title: str
    kind: str                 # data | metadata | namespace | copy-up | build | package
                              # | container | snapshot
    stack: str                # "main" | "layers32" | "scale:N" | "snaps" | "debian"... |
                              # "podman" (nothing mounted by us: podman mounts its layers)
    phases: list
    plain: str = "direct"     # direct (the fixture itself) | empty | copy | stack
    plain_copy: list = field(default_factory=list)
    pre: str = ""             # untimed, in the upper ($U) before the mount: upper files
    setup: str = ""           # untimed, after mount
    prime: str = ""           # untimed, before a first phase that is warm
    check: str = ""           # untimed, after the phases; failing marks the cell "fail"
    read_only: bool = False   # mergerfs (no whiteouts, no copy-up) runs only these
    # Mounted as podman mounts a parent layer to diff against it: the lowers and an empty
    # directory, read-only, no upper (overlayfs needs two lowers without one).
    lowers_only: bool = False
    prewarm: str = ""         # untimed, before the mount, as root: reads the branches ($LOWERS)
    drop_first: bool = True   # drop caches before the first phase (not for fresh/prewarmed)
    only: tuple = ()          # run only on targets of these filesystems (base); n/a elsewhere
    supported: str = ""       # untimed probe; failing: the cell is "not supported"
    absolute: bool = False    # report milliseconds (no ratio: overlayfs has no such operation)
    needs: str = ""           # "rootfs" | "debs": the Debian rootfs (and the .deb layer) |
                              # "podman": the rootfs as a tar, and the .debs
    teardown: str = ""        # untimed, always last (after a failure too)

    def goal(self, mode):
        if self.absolute:
            return None
        return GOALS.get((self.kind, mode))

    def goal_ms(self, mode):
        return ABS_GOALS_MS.get(mode) if self.absolute else None


# find prints one line per entry; the count is checked against the fixture (TREE_ENTRIES)
FIND = "find \"$M/tree\" -printf '%s %i\\n' | wc -l"
FIND_ROOT = "find \"$M\" -printf '%s %i\\n' | wc -l"
LOOKUP = r'''python3 -c '
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
for i in range(n):
    os.lstat(f"{d}/d/e/f/t{i:05d}")
print("BENCH_ELAPSED=%.6f" % (time.perf_counter() - t))' "$M" "$SCALE_TOP"'''
CREATE = r'''python3 -c '
import sys
d, b = sys.argv[1], b"x" * 4096
for i in range(int(sys.argv[2])):
    with open(f"{d}/file_{i:05d}", "wb") as f:
        f.write(b)' "$M/created" "$CREATE_N"'''
# the container rows (14-16) on the Debian rootfs
FIND_ROOTFS = "find \"$M\" -printf '%s %i\\n' | wc -l"
WALK_ROOTFS = '"$WALKX" "$M"'
PREWARM_META = 'for d in $LOWERS; do "$WALKX" "$d" >/dev/null; done'
PREWARM_DATA = ('for d in $LOWERS; do "$WALKX" "$d" >/dev/null && '
                'tar -cf - -C "$d" . | cat >/dev/null; done')
# apt-get install from the .debs in the layer above the rootfs, no network; /dev bound in a
# private mount namespace (unionmount mounts nodev as root; rootless FUSE is always nodev), so
# nothing is left mounted in the mount when the command ends
APT = (r"""$UNSHARE --propagation private sh -c 'mount --rbind /dev "$1/dev" && """
       r"""exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive """
       r"""LC_ALL=C chroot "$1" apt-get install -y -q -o APT::Sandbox::User=root """
       r"""--no-download $2' sh "$M" "$APT_PACKAGES" >/dev/null""")
# workload 19: each target's own storage root, the base imported (untimed); the build timed
PODMAN_SETUP = '"$PODMAN_DEBIAN" setup "$PODMAN_DIR" $MOUNT_PROGRAM'
PODMAN_BUILD = '"$PODMAN_DEBIAN" build "$PODMAN_DIR"'
PODMAN_CHECK = '"$PODMAN_DEBIAN" check "$PODMAN_DIR"'
PODMAN_TEARDOWN = '"$PODMAN_DEBIAN" teardown "$PODMAN_DIR"'
# the targets row 19 runs on (as podman's storage; the rootless ones by rootless podman, as
# their user); n/a elsewhere, uring included
PODMAN_TARGETS = ("overlay", "unionmount", "fuse-overlayfs", "fuse-overlayfs-2")
# snapshot / rollback (issue 19), timed around the one command
TIMED = ('t0=$(date +%s.%N) && {cmd} && t1=$(date +%s.%N) && '
         'awk -v a="$t0" -v b="$t1" \'BEGIN {{ printf "BENCH_ELAPSED=%.6f\\n", b - a }}\'')
SNAPSHOT = TIMED.format(cmd='"$UNIONMOUNT" snapshot "$M" >/dev/null')
# changes after the snapshot (untimed), then the rollback that discards them (timed)
ROLLBACK = ('rm -rf "$M/created" && mkdir "$M/after" && touch "$M/after/"f{1..100} && ' +
            TIMED.format(cmd='"$UNIONMOUNT" rollback "$M" >/dev/null'))
# workload 18: one untimed count of every target's view (the same for all), and the newest
# copy of the file every snapshot appended to on top
SNAP_CHECK = ('test "$(find "$M" | wc -l)" -eq "$SNAP_ENTRIES" && '
              'test "$(stat -c %s "$M/$SNAP_HOT")" -eq "$SNAP_HOT_SIZE"')
FIO = ("fio --name=randrw --filename=\"$M/fio.dat\" --size=${FIO_MB}m --io_size=${FIO_IO_MB}m "
       "--bs=4k --rw=randrw --ioengine=psync --randrepeat=1 --end_fsync=1 --output=/dev/null")


def params_env(p):
    return {
        "BIG_MB": p["big_mb"], "MEDIUM_MB": p["medium_mb"], "TREE_FILES": p["tree_files"],
        "VENDOR": p["vendor"], "THIRD_PARTY": p["third_party"], "WIDE": p["wide"],
        "READDIR_REPEAT": p["readdir_repeat"], "CREATE_N": p["create_n"],
        "FIO_MB": p["fio_mb"], "FIO_IO_MB": p["fio_io_mb"], "SCALE_TOP": p["scale_top"],
    }


def _k(n):
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _mib(mb):
    return f"{mb // 1024} GiB" if mb >= 1024 and mb % 1024 == 0 else f"{mb} MiB"


def all_workloads(p):
    W = Workload
    ws = [
        W("1", f"find + lstat of the tree ({_k(p['tree_files'])} files)", "metadata", "main",
          [Phase("cold", FIND, expect="TREE_ENTRIES"),
           Phase("warm", FIND, expect="TREE_ENTRIES")], read_only=True),
        W("2", f"readdir of a {_k(p['wide'])}-entry dir, x{p['readdir_repeat']}", "metadata",
          "main", [Phase("warm", 'for i in $(seq "$READDIR_REPEAT"); do ls -f "$M/wide" '
                                 '>/dev/null; done')],
          prime='ls -f "$M/wide" >/dev/null', read_only=True,
          check='test "$(ls -f "$M/wide" | wc -l)" -eq $((WIDE + 2))'),
        W("3", f"read every file of the tree ({_k(p['tree_files'])})", "metadata", "main",
          [Phase("cold", 'find "$M/tree" -type f -print0 | xargs -0 cat >/dev/null'),
           Phase("warm", 'find "$M/tree" -type f -print0 | xargs -0 cat >/dev/null')],
          read_only=True),
        W("4", f"sequential read of a {_mib(p['big_mb'])} file", "data", "main",
          [Phase("cold", 'dd if="$M/data/big.bin" of=/dev/null bs=1M status=none'),
           Phase("warm", 'dd if="$M/data/big.bin" of=/dev/null bs=1M status=none')],
          read_only=True),
        W("5", f"sequential write of a new {_mib(p['big_mb'])} file + fsync", "data", "main",
          [Phase("cold", 'dd if=/dev/zero of="$M/new.bin" bs=1M count="$BIG_MB" conv=fsync '
                         'status=none')],
          plain="empty", check='test "$(stat -c %s "$M/new.bin")" -eq $((BIG_MB << 20))'),
        W("6", f"copy-up: append 1 byte to a {_mib(p['medium_mb'])} lower file (+ syncfs)",
          "copy-up", "main",
          [Phase("cold", 'printf x >>"$M/data/medium.bin" && sync -f "$U"')],
          plain="copy", plain_copy=["data/medium.bin"],
          check='test "$(stat -c %s "$M/data/medium.bin")" -eq $(((MEDIUM_MB << 20) + 1))'),
        W("7", f"create {_k(p['create_n'])} 4 KiB files", "namespace", "main",
          [Phase("cold", CREATE)], plain="empty", setup='mkdir "$M/created"',
          check='test "$(ls -f "$M/created" | wc -l)" -eq $((CREATE_N + 2))'),
        W("8", f"rm -rf a lower subtree of {_k(p['vendor'])} files", "namespace", "main",
          [Phase("cold", 'rm -rf "$M/tree/vendor"')], plain="copy", plain_copy=["tree/vendor"],
          check='! test -e "$M/tree/vendor" && test -d "$M/tree"'),
        W("9", f"find + lstat across the {p['layers']}-layer stack", "metadata", "layers32",
          [Phase("cold", FIND_ROOT, expect="TREE_ENTRIES"),
           Phase("warm", FIND_ROOT, expect="TREE_ENTRIES")], read_only=True),
        W("10", f"fio 4k randrw, {p['fio_io_mb']} MiB on a {p['fio_mb']} MiB upper file",
          "data", "main", [Phase("cold", FIO)], plain="empty",
          pre='dd if="$F/lower/data/big.bin" of="$U/fio.dat" bs=1M count="$FIO_MB" status=none',
          check='test "$(stat -c %s "$M/fio.dat")" -eq $((FIO_MB << 20))'),
        W("11", f"untar the tree ({_k(p['tree_files'])} files) into the mount", "namespace",
          "main", [Phase("cold", 'tar -xf "$F/tree.tar" -C "$M/untar"')], plain="empty",
          setup='mkdir "$M/untar"',
          check='test "$(find "$M/untar/tree/vendor" -type f | wc -l)" -eq "$VENDOR"'),
        W("12", f"rename a lower directory of {_k(p['third_party'])} files (mv)", "namespace",
          "main", [Phase("cold", 'mv "$M/tree/third_party" "$M/tree/third_party.moved"')],
          plain="copy", plain_copy=["tree/third_party"],
          check=('! test -e "$M/tree/third_party" && test "$(find "$M/tree/third_party.moved" '
                 '-type f | wc -l)" -eq "$THIRD_PARTY"')),
        W("13", f"make -j2 of a C project ({p['c_files']} files) in the lower", "build",
          "main", [Phase("cold", 'make -C "$M/cproj" -j2 -s >/dev/null')], plain="copy",
          plain_copy=["cproj"], check='test -x "$M/cproj/app" && "$M/cproj/app" >/dev/null'),
    ]
    ws += [
        W("14", "find + lstat over a Debian minbase rootfs, fresh mount, branches warm",
          "metadata", "debian",
          [Phase("fresh", FIND_ROOTFS, expect="ROOTFS_ENTRIES"),
           Phase("warm", FIND_ROOTFS, expect="ROOTFS_ENTRIES")],
          read_only=True, prewarm=PREWARM_META, drop_first=False, needs="rootfs"),
        W("15", "layer-diff walk (lstat + llistxattr + lgetxattr) of a Debian rootfs, fresh "
          "mount, branches warm", "metadata", "debian",
          [Phase("fresh", WALK_ROOTFS, expect="ROOTFS_ENTRIES"),
           Phase("warm", WALK_ROOTFS, expect="ROOTFS_ENTRIES")],
          read_only=True, lowers_only=True, prewarm=PREWARM_META, drop_first=False,
          needs="rootfs"),
        W("16", "apt-get install perl less file xz-utils bzip2 patch (cached .debs) in a chroot "
          "on a Debian rootfs", "package", "debian-apt", [Phase("fresh", APT)], plain="stack",
          prewarm=PREWARM_DATA, drop_first=False, needs="debs",
          check='test -x "$M/usr/bin/perl" && test -x "$M/usr/bin/xz" && '
                'grep -q "^Package: perl$" "$M/var/lib/dpkg/status"'),
        W("17", f"snapshot after creating {_k(p['create_n'])} files; rollback (ms)",
          "snapshot", "main",
          [Phase("snapshot", SNAPSHOT), Phase("rollback", ROLLBACK)], plain="empty",
          setup='mkdir "$M/created" && ' + CREATE, drop_first=False, only=("unionmount",),
          # The usage line names the binary as run (any file name). grep reads it all:
          # `grep -q` would exit at the match and the help, still being written, die of
          # SIGPIPE (a failed pipeline under pipefail).
          supported=('"$UNIONMOUNT" snapshot --help 2>&1 '
                     '| grep "Usage: .* snapshot \\[OPTIONS\\] <MOUNTPOINT>" >/dev/null'),
          absolute=True,
          check=('test "$(ls -f "$M/created" | wc -l)" -eq $((CREATE_N + 2)) && '
                 '! test -e "$M/after"')),
    ]
    ws.append(
        W("18", f"find + lstat through {p['snapshots']} snapshot layers over the tree",
          "metadata", "snaps",
          [Phase("cold", FIND_ROOT, expect="SNAP_ENTRIES"),
           Phase("warm", FIND_ROOT, expect="SNAP_ENTRIES")],
          plain="stack", read_only=True, check=SNAP_CHECK))
    ws.append(
        W("19", "podman build --no-cache of a Debian-based image, 5 steps (as storage: "
          "overlay driver / mount_program)",
          "container", "podman", [Phase("fresh", PODMAN_BUILD)], setup=PODMAN_SETUP,
          check=PODMAN_CHECK, teardown=PODMAN_TEARDOWN, drop_first=False,
          only=PODMAN_TARGETS, needs="podman"))
    for n in (1, 8, 32, 128):
        layers = f"{n} layer" + ("s" if n > 1 else "")
        ws.append(W(f"L{n}", f"lookup of {_k(p['scale_top'])} top-layer files, {layers}",
                    "metadata", f"scale:{n}", [Phase("cold", LOOKUP)], read_only=True))
    return ws


def select(ws, spec):
    """--workloads 1,2,L,M: ids; L stands for L1,L8,L32,L128; M is the memory test."""
    if not spec or spec == "all":
        return ws, True
    want = [x.strip() for x in spec.split(",") if x.strip()]
    ids = {w.wid for w in ws}
    bad = [x for x in want if x not in ids and x not in ("L", "M", "mem", "lookup")]
    if bad:
        raise SystemExit(f"unknown workload(s): {','.join(bad)}; known: "
                         f"{','.join(w.wid for w in ws)},L,M")
    out = [w for w in ws if w.wid in want or (w.wid.startswith("L") and
                                              ("L" in want or "lookup" in want))]
    return out, ("M" in want or "mem" in want)
