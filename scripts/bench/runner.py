"""bench-compare: every workload, on a fresh mount with an empty upper, for every target."""

import argparse
import datetime
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time

import fixture
import report
import rootfs
import targets as T
import workloads as W

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="scripts/bench-compare",
        description="Side-by-side benchmark of unionmount against a plain directory, kernel "
                    "overlayfs, fuse-overlayfs 1.x and 2.x, unionfs-fuse and mergerfs, as root "
                    "and rootless. Needs root.")
    ap.add_argument("--targets", default=",".join(T.ALL),
                    help=f"comma-separated, from {','.join(T.ALL)} (default: all)")
    ap.add_argument("--rootless", action="store_true",
                    help="also run the rootless variant (-rootless) of each chosen FUSE target "
                         "that has one")
    ap.add_argument("--rootless-user", default="umbench",
                    help="the unprivileged user of the rootless targets, created (system user, "
                         "no login) if missing (default umbench)")
    ap.add_argument("--cache", default="/var/cache/unionmount-bench",
                    help="downloads and builds kept across runs: fuse-overlayfs 2 (cargo "
                         "install), the Debian rootfs and .debs (default "
                         "/var/cache/unionmount-bench)")
    ap.add_argument("--fuse-overlayfs-2", dest="fo2", default=None,
                    help="fuse-overlayfs 2.x binary (default: CACHE/fo2/bin/fuse-overlayfs, "
                         "installed with cargo install if missing)")
    ap.add_argument("--workloads", default="all",
                    help="comma-separated ids 1..19, L (lookup vs layers), M (memory); "
                         "default: all")
    ap.add_argument("--runs", type=int, default=None,
                    help="runs per cell, the median is reported (default 3, 1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="small fixture (3k files, 64 MiB) for a smoke run")
    ap.add_argument("--out", default=None,
                    help="directory for results.md, results.json, ratios.svg, logs "
                         "(default: SCRATCH/results/DATE)")
    ap.add_argument("--scratch", default="/var/tmp/unionmount-bench",
                    help="fixture and mount scratch space (default /var/tmp/unionmount-bench); "
                         "the fixture is reused if present")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per timed phase before it counts as 'timeout' "
                         "(default 300, 120 with --quick)")
    ap.add_argument("--unionmount", default=None,
                    help="use this unionmount binary instead of building target/release")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release")
    ap.add_argument("--no-install", action="store_true",
                    help="do not apt-get install missing peers")
    ap.add_argument("--nofile", type=int, default=None,
                    help="set RLIMIT_NOFILE (soft and hard) of the FUSE daemons to N "
                         "(default: inherit the caller's limits)")
    ap.add_argument("--trace", choices=["strace", "perf"], default=None,
                    help="attach strace -c -f or perf record -g to each FUSE daemon during the "
                         "timed phases (slows them down; for diagnosis); output in OUT/trace")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------
# machine preparation

def ensure_fo2(cache, binary):
    """fuse-overlayfs 2.x (the Rust rewrite) from crates.io into CACHE/fo2, once."""
    if os.access(binary, os.X_OK):
        return
    if binary != T.fo2_binary(cache):
        log(f"{binary} is missing (given with --fuse-overlayfs-2): not installing")
        return
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    if not os.access(cargo, os.X_OK):
        log("cargo not found: fuse-overlayfs-2 will be marked fail")
        return
    root = os.path.join(cache, T.FO2_DIR)
    log(f"cargo install fuse-overlayfs --version '{T.FO2_CRATE_VERSION}' --root {root} "
        "(once; a few minutes)")
    r = subprocess.run([cargo, "install", "--locked", "fuse-overlayfs", "--version",
                        T.FO2_CRATE_VERSION, "--root", root],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        log(f"cargo install fuse-overlayfs failed (fuse-overlayfs-2 will be marked fail): "
            f"{r.stderr.strip()[-300:]}")


def ensure_user(name):
    """(name, uid, gid) of the rootless bench user; created as a system user if missing."""
    import pwd
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        log(f"creating the rootless bench user {name}")
        r = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir",
                            "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            log(f"useradd {name} failed (rootless targets will be marked fail): "
                f"{r.stderr.strip()}")
            return None
        pw = pwd.getpwnam(name)
    ensure_subids(name)
    return (name, pw.pw_uid, pw.pw_gid)


def ensure_subids(name):
    """Subordinate uid and gid ranges for the user (/etc/subuid, /etc/subgid), which rootless
    podman (row 19) maps its images' owners to; 65,536 ids past every range there."""
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            with open(path) as f:
                lines = [ln.split(":") for ln in f.read().splitlines() if ln.count(":") == 2]
        except FileNotFoundError:
            lines = []
        if any(ln[0] == name for ln in lines):
            continue
        start = max([100000] + [int(ln[1]) + int(ln[2]) for ln in lines
                                if ln[1].isdigit() and ln[2].isdigit()])
        with open(path, "a") as f:
            f.write(f"{name}:{start}:65536\n")
        log(f"{path}: {name}:{start}:65536 (rootless podman, row 19)")


def chown_fixture(root, user):
    """The rootless targets' workloads change lower files as their user: let it own them.
    Each top-level part whose owner differs is chowned (parts are regenerated as root)."""
    parts = [os.path.join(root, x) for x in os.listdir(root) if not x.startswith(".")]
    lower = os.path.join(root, "lower")
    if os.path.isdir(lower):
        parts.remove(lower)
        parts += [os.path.join(lower, x) for x in os.listdir(lower)]
        os.chown(lower, user[1], user[2])
    os.chown(root, user[1], user[2])
    for p in parts:
        if os.lstat(p).st_uid != user[1]:
            log(f"chown -R {user[0]} {p}")
            subprocess.run(["chown", "-R", f"{user[1]}:{user[2]}", p], check=True)


def ensure_peers(names, need_fio):
    pkgs = []
    for t in {T.BASES.get(x, x) for x in names}:
        if t in T.APT_PACKAGE and not shutil.which(t) and T.APT_PACKAGE[t] not in pkgs:
            pkgs.append(T.APT_PACKAGE[t])
    if need_fio and not shutil.which("fio"):
        pkgs.append("fio")
    if not pkgs:
        return
    log(f"installing from the distribution: {' '.join(pkgs)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq"] + pkgs
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    if r.returncode != 0:
        log(f"apt-get install failed (those targets will be marked fail): "
            f"{r.stderr.strip()[-300:]}")


def build_unionmount():
    log("cargo build --release")
    r = subprocess.run(["cargo", "build", "--release"], cwd=REPO, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        log("cargo build --release failed:\n" + r.stderr[-2000:])
    return os.path.join(REPO, "target", "release", "unionmount")


def drop_caches(level=3):
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write(str(level))


def machine_info(tlist, unionmount_bin, scratch):
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True).stdout.strip()
        except OSError:
            return ""
    cpu = sh("lscpu | sed -n 's/^Model name: *//p' | head -1") or platform.processor()
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    fs = sh(f"findmnt -n -o FSTYPE,SOURCE -T {shlex.quote(scratch)}")
    rev = sh(f"git -C {shlex.quote(REPO)} rev-parse --short HEAD")
    dirty = sh(f"git -C {shlex.quote(REPO)} status --porcelain -- src Cargo.toml Cargo.lock")
    ovl = {os.path.basename(p): sh(f"cat {p}") for p in
           ("/sys/module/overlay/parameters/redirect_dir", "/sys/module/overlay/parameters/index",
            "/sys/module/overlay/parameters/metacopy", "/sys/module/overlay/parameters/xino_auto")}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": os.uname().release, "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
        "scratch_fs": fs, "unionmount_rev": rev + (" (modified)" if dirty else ""),
        "overlay_params": ovl,
        "versions": {t.name: t.version() for t in tlist},
        "unionmount_bin": unionmount_bin,
        "nofile": " / ".join(sh(f"ulimit -{x}n") for x in ("S", "H")),
    }


# ---------------------------------------------------------------------------
# running one command

class Outcome:
    def __init__(self, status, sec=None, out="", err=""):
        self.status, self.sec, self.out, self.err = status, sec, out, err


def run_cmd(cmd, env, timeout, mount=None, user=None):
    """user: (name, uid, gid) to run the command as (rootless targets), in /."""
    kw = {}
    if user:
        kw = dict(user=user[1], group=user[2], extra_groups=[], cwd="/")
        env = dict(env, HOME="/tmp", USER=user[0], LOGNAME=user[0])
    t0 = time.perf_counter()
    p = subprocess.Popen(["bash", "-c", "set -o pipefail\n" + cmd], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            out, err = p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            # stuck in a FUSE request: killing the daemon aborts the connection
            if mount is not None and mount.proc is not None:
                mount.proc.kill()
            out, err = p.communicate(timeout=30)
        return Outcome("timeout", None, out, err)
    sec = time.perf_counter() - t0
    if p.returncode != 0:
        err = (err or "").strip()
        if len(err) > 600:  # the start says what ran, the end usually why it failed
            err = err[:150] + " [...] " + err[-450:]
        return Outcome("fail", None, out, err or f"exit {p.returncode}")
    for line in out.splitlines():
        if line.startswith("BENCH_ELAPSED="):
            sec = float(line.split("=", 1)[1])
    return Outcome("ok", sec, out, err)


class Tracer:
    def __init__(self, kind, pid, path):
        self.proc = None
        if kind == "strace":
            cmd = ["strace", "-c", "-f", "-q", "-o", path, "-p", str(pid)]
        else:
            cmd = ["perf", "record", "-q", "-g", "-F", "499", "-o", path, "-p", str(pid)]
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(0.5)
        except OSError as e:
            log(f"trace: {e}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---------------------------------------------------------------------------
# the bench

class Bench:
    def __init__(self, args, p, fix, tmap, tnames, out, deb=None, extra_env=None,
                 snaps_error=None):
        self.args, self.p, self.fix, self.tmap, self.tnames, self.out = \
            args, p, fix, tmap, tnames, out
        self.deb = deb  # rootfs.ensure()'s answer, or None when no workload needs it
        self.snaps_error = snaps_error  # why the snapshot layers (workload 18) are missing
        self.base = os.path.join(args.scratch, "run")
        self.upper = os.path.join(self.base, "upper")
        self.work = os.path.join(self.base, "work")
        self.mnt = os.path.join(self.base, "mnt")
        self.plain = os.path.join(self.base, "plain")
        # unionmount's own snapshot store for workload 18: the fixture's, bound read-only
        # beside the upper, where unionmount looks for the snapshots of that upper
        self.store = self.upper + ".snapshots"
        # workload 19: the storage root (graphroot, runroot, context) of one target's podman
        self.podman_dir = os.path.join(self.base, "podman")
        self.results = []
        self.memory = []
        self.unavailable = {}
        self.timeout = args.timeout or (120 if args.quick else 300)
        self.env_base = dict(os.environ, F=fix, LC_ALL="C",
                             **{k: str(v) for k, v in W.params_env(p).items()},
                             **(extra_env or {}))
        tree = os.path.join(fix, "lower", "tree")
        if os.path.isdir(tree):  # what `find tree` must list: the tree and everything in it
            self.env_base["TREE_ENTRIES"] = str(
                1 + sum(len(d) + len(f) for _, d, f in os.walk(tree)))
        if not snaps_error and os.path.isdir(fixture.snaps_store(fix)):
            # what `find` must list through the snapshot layers (the union of their paths and
            # the tree's), and the file every snapshot appended to, with its final size
            hot, size = fixture.snaps_plan(p)[1]
            self.env_base.update(SNAP_ENTRIES=str(fixture.snaps_entries(fix)),
                                 SNAP_HOT=hot, SNAP_HOT_SIZE=str(size))
        os.makedirs(os.path.join(out, "logs"), exist_ok=True)
        if args.trace:
            os.makedirs(os.path.join(out, "trace"), exist_ok=True)

    def reset_dirs(self, user=None):
        for m in T.mounts_below(self.base):
            log(f"stale mount {m}: unmounting")
            subprocess.run(["umount", "-l", m], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        # The store: workload 18's mount point (unmounted above), or the snapshots workload
        # 17 took of the upper.
        for d in (self.upper, self.work, self.plain, self.store, self.podman_dir):
            if os.path.lexists(d):
                subprocess.run(["rm", "-rf", "--one-file-system", d], check=False)
        os.makedirs(self.base, exist_ok=True)
        os.chmod(self.base, 0o755)
        # a rootless daemon writes its upper and work dirs and mounts on mnt; its snapshots
        # (workload 17) go beside the upper and swap it, so the parent is the user's too
        uid, gid = (user[1], user[2]) if user else (0, 0)
        os.chown(self.base, uid, gid)
        for d in (self.upper, self.work, self.mnt):
            os.makedirs(d, exist_ok=True)
            os.chown(d, uid, gid)

    def stack(self, w, t=None):
        """(lowers, cwd, plain view) for a workload's stack; t picks the rootless copies."""
        if w.stack == "podman":  # podman mounts its layers itself
            return [], None, None
        if w.stack in ("debian", "debian-apt"):
            d = self.deb["rootless"] if t is not None and t.rootless else self.deb
            lowers = [d["rootfs"]] if w.stack == "debian" else [d["debs"], d["rootfs"]]
            return lowers, None, d["rootfs"]
        if w.stack == "main":
            return [os.path.join(self.fix, "lower")], None, os.path.join(self.fix, "lower")
        if w.stack == "layers32":
            n = self.p["layers"]
            return [f"{i:02d}" for i in range(n)], os.path.join(self.fix, f"layers{n}"), \
                os.path.join(self.fix, "lower", "tree")
        if w.stack.startswith("scale:"):
            n = int(w.stack.split(":")[1])
            return ["top"] + [f"lo{i:03d}" for i in range(1, n)], \
                os.path.join(self.fix, "scale"), os.path.join(self.fix, "scale", "top")
        if w.stack == "many":
            return [os.path.join(self.fix, "many")], None, os.path.join(self.fix, "many")
        if w.stack == "snaps":
            # unionmount stacks the snapshots of its upper itself (bind_store): the tree only;
            # the others get every snapshot layer, newest first, then the tree
            snaps = [] if t is not None and t.base == "unionmount" else \
                [os.path.join(os.path.basename(fixture.snaps_store(self.fix)), d)
                 for d in fixture.snaps_layers(self.fix)]
            return snaps + ["base"], os.path.join(self.fix, "snaps"), None
        raise ValueError(w.stack)

    def bind_store(self):
        """The fixture's snapshot store, read-only, as the store of the upper of the mount."""
        os.makedirs(self.store)
        src = fixture.snaps_store(self.fix)
        for cmd in (["mount", "--bind", src, self.store],
                    ["mount", "-o", "remount,bind,ro", self.store]):
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                self.unbind_store()
                raise T.MountError(f"{' '.join(cmd)}: {r.stdout.strip()}")

    def unbind_store(self):
        if T.mounted(self.store):
            subprocess.run(["umount", "-l", self.store], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        try:
            os.rmdir(self.store)
        except OSError:
            pass

    def plain_view(self, w, view, lowers=None, cwd=None):
        if w.plain == "direct":
            return view
        os.makedirs(self.plain)
        if w.plain == "stack":  # every lower copied in, bottom first
            for low in reversed(lowers):
                subprocess.run(["cp", "-a", os.path.join(cwd or "", low) + "/.", self.plain],
                               check=True)
            return self.plain
        for rel in w.plain_copy:
            dst = os.path.join(self.plain, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            subprocess.run(["cp", "-a", os.path.join(view, rel), dst], check=True)
        return self.plain

    def cell(self, t, w, run):
        """One fresh mount, every phase of the workload: a list of result dicts."""
        rec = lambda mode, **kw: dict(wid=w.wid, mode=mode, target=t.name, run=run, **kw)
        if t.name in self.unavailable:
            return [rec(ph.mode, status="fail", err=self.unavailable[t.name]) for ph in w.phases]
        if t.base == "mergerfs" and not w.read_only:
            return [rec(ph.mode, status="n/a") for ph in w.phases]
        if w.only and t.base not in w.only:
            return [rec(ph.mode, status="n/a") for ph in w.phases]
        if w.stack == "podman" and t.uring:  # podman mounts with the daemon's defaults
            return [rec(ph.mode, status="n/a") for ph in w.phases]
        if w.needs:
            why = None
            if self.deb is None:
                why = "no Debian rootfs"
            elif w.needs in ("debs", "podman") and (self.deb["synthetic"] or
                                                     not self.deb["debs"]):
                why = ("needs the debootstrap rootfs and its .debs: " +
                       (self.deb.get("error") or self.deb.get("debs_error") or "?"))
            elif w.needs == "podman" and not self.deb.get("rootfs_tar"):
                why = "no tar of the rootfs"
            elif t.rootless and not self.deb.get("rootless"):
                why = "no rootless copy of the rootfs"
            if why:
                return [rec(ph.mode, status="fail", err=why) for ph in w.phases]
        if w.stack == "snaps" and (self.snaps_error or "SNAP_ENTRIES" not in self.env_base):
            return [rec(ph.mode, status="fail", err=f"no snapshot layers: {self.snaps_error}")
                    for ph in w.phases]
        user = t.user if t.rootless else None
        if w.supported:
            o = run_cmd(w.supported, dict(self.env_base, UNIONMOUNT=t.binary or ""),
                        self.timeout, user=user)
            if o.status != "ok":
                return [rec(ph.mode, status="not supported") for ph in w.phases]
        self.reset_dirs(user)
        lowers, cwd, view = self.stack(w, t)
        logpath = os.path.join(self.out, "logs", f"{t.name}-{w.wid}-{run}.log")
        m = None
        env = None
        out = []
        try:
            if w.prewarm:  # the branches into the page cache, before the mount
                o = run_cmd(w.prewarm, dict(self.env_base, LOWERS=" ".join(
                    os.path.join(cwd or "", x) for x in lowers)), self.timeout)
                if o.status != "ok":
                    return [rec(ph.mode, status="fail", err=f"prewarm: {o.err}")
                            for ph in w.phases]
            if w.stack == "podman":  # nothing of ours mounted: the target is podman's storage
                merged = upper = ""
            elif t.kind == "plain":
                merged = self.plain_view(w, view, lowers, cwd)
                upper = merged
                if w.pre:
                    o = run_cmd(w.pre, dict(self.env_base, U=upper), self.timeout)
                    if o.status != "ok":
                        return [rec(ph.mode, status="fail", err=f"pre: {o.err}")
                                for ph in w.phases]
            else:
                if w.pre:
                    o = run_cmd(w.pre, dict(self.env_base, U=self.upper), self.timeout,
                                user=user)
                    if o.status != "ok":
                        return [rec(ph.mode, status="fail", err=f"pre: {o.err}")
                                for ph in w.phases]
                try:
                    if w.stack == "snaps" and t.base == "unionmount":
                        self.bind_store()
                    if w.lowers_only:
                        empty = os.path.join(self.base, "empty")
                        os.makedirs(empty, exist_ok=True)
                        m = t.mount(lowers + [empty], None, None, self.mnt, cwd=cwd,
                                    logpath=logpath)
                    else:
                        m = t.mount(lowers, self.upper, self.work, self.mnt, cwd=cwd,
                                    logpath=logpath)
                except (T.MountError, OSError, subprocess.SubprocessError) as e:
                    return [rec(ph.mode, status="fail", err=f"mount: {e}") for ph in w.phases]
                merged, upper = self.mnt, self.upper
            env = dict(self.env_base, M=merged, U=upper, UNIONMOUNT=t.binary or "",
                       UNSHARE="unshare -r -m" if user else "unshare -m")
            if w.stack == "podman":
                prog = "" if t.kind == "kernel" else (shutil.which(t.binary) or t.binary)
                env.update(PODMAN_DIR=self.podman_dir, MOUNT_PROGRAM=prog,
                           PODMAN_DEBIAN=os.path.join(REPO, "scripts", "podman-debian.sh"),
                           ROOTFS_TAR=self.deb.get("rootfs_tar") or "",
                           DEBS=os.path.join(self.deb["debs"] or "", "var/cache/apt/archives"))
            if w.setup:
                o = run_cmd(w.setup, env, self.timeout, m, user=user)
                if o.status != "ok":
                    return [rec(ph.mode, status="fail", err=f"setup: {o.err}") for ph in w.phases]
            tracer = None
            if self.args.trace and m is not None and m.pid:
                ext = "txt" if self.args.trace == "strace" else "data"
                tracer = Tracer(self.args.trace, m.pid, os.path.join(
                    self.out, "trace", f"{self.args.trace}-{t.name}-{w.wid}-{run}.{ext}"))
            try:
                for i, ph in enumerate(w.phases):
                    if ph.mode == "cold" or (i == 0 and w.drop_first):
                        drop_caches()
                        if ph.mode == "warm" and w.prime:
                            run_cmd(w.prime, env, self.timeout, m, user=user)
                    cpu0 = m.cpu() if m else None
                    o = run_cmd(ph.cmd, env, self.timeout, m, user=user)
                    cpu1 = m.cpu() if m else None
                    r = rec(ph.mode, status=o.status, sec=o.sec,
                            cpu=(cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None)
                    if o.status == "ok" and ph.expect:
                        got = o.out.strip().splitlines()[-1:] or [""]
                        if got[0].strip() != env[ph.expect]:
                            r["status"] = "fail"
                            o.err = f"expected {ph.expect}={env[ph.expect]} lines, got {got[0]}"
                    if r["status"] != "ok":
                        r["err"] = o.err
                    out.append(r)
                    if m and not m.alive():
                        raise T.MountError(f"{t.name} daemon died (exit {m.proc.returncode})")
            finally:
                if tracer:
                    tracer.stop()
            if w.check and all(r["status"] == "ok" for r in out):
                o = run_cmd(w.check, env, self.timeout, m, user=user)
                if o.status != "ok":
                    for r in out:
                        r["status"], r["err"] = "fail", f"check failed: {w.check} {o.err}"
            hwm = m.hwm_kb() if m else None
            for r in out:
                r["hwm_kb"] = hwm
        except T.MountError as e:
            done = {r["mode"] for r in out}
            for r in out:
                r["status"], r["err"] = "fail", str(e)
            out += [rec(ph.mode, status="fail", err=str(e)) for ph in w.phases
                    if ph.mode not in done]
        finally:
            if m:
                m.unmount()
            if w.stack == "snaps":
                self.unbind_store()
            if w.teardown and env is not None:
                o = run_cmd(w.teardown, env, self.timeout, user=user)
                if o.status != "ok":
                    log(f"{t.name} {w.wid}: teardown {o.status}: {o.err[:200]}")
        return out

    def memory_test(self, t):
        """RSS after a find over MANY files; after drop_caches 2; after a second find."""
        r = dict(target=t.name)
        if t.kind != "fuse":
            return None
        if t.name in self.unavailable:
            return dict(r, status="fail", err=self.unavailable[t.name])
        user = t.user if t.rootless else None
        self.reset_dirs(user)
        w = W.Workload("M", "memory", "metadata", "many", [])
        lowers, cwd, _ = self.stack(w)
        m = None
        try:
            m = t.mount(lowers, self.upper, self.work, self.mnt, cwd=cwd,
                        logpath=os.path.join(self.out, "logs", f"{t.name}-M.log"))
            env = dict(self.env_base, M=self.mnt, U=self.upper)
            find = "find \"$M\" -printf '%s %i\\n' | wc -l"
            r["rss_mount_kb"] = m.rss_kb()
            drop_caches()
            o = run_cmd(find, env, self.timeout, m, user=user)
            if o.status != "ok":
                return dict(r, status=o.status, err=o.err)
            r["entries"] = int(o.out.split()[0])
            r["find_sec"] = o.sec
            time.sleep(0.5)
            r["rss_find_kb"] = m.rss_kb()
            r["fds_find"] = m.fds()
            drop_caches(2)
            time.sleep(2)  # FORGETs arrive asynchronously
            r["rss_drop_kb"] = m.rss_kb()
            r["fds_drop"] = m.fds()
            o = run_cmd(find, env, self.timeout, m, user=user)
            time.sleep(0.5)
            r["rss_find2_kb"] = m.rss_kb()
            r["hwm_kb"] = m.hwm_kb()
            r["status"] = "ok"
        except (T.MountError, OSError) as e:
            r.update(status="fail", err=str(e))
        finally:
            if m:
                m.unmount()
        return r

    def run(self, wl, do_memory):
        tl = [self.tmap[n] for n in self.tnames]
        for t in tl:
            ok, why = t.available()
            if not ok:
                self.unavailable[t.name] = why
                log(f"{t.name}: unavailable ({why}); its cells are marked fail")
        runs = self.args.runs
        total = len(wl) * runs * len(tl)
        k = 0
        t_start = time.monotonic()
        for w in wl:
            for run in range(1, runs + 1):
                for t in tl:
                    k += 1
                    t0 = time.monotonic()
                    try:
                        rs = self.cell(t, w, run)
                    except (OSError, subprocess.SubprocessError, ValueError) as e:
                        T.cleanup_all()
                        rs = [dict(wid=w.wid, mode=ph.mode, target=t.name, run=run,
                                   status="fail", err=f"{type(e).__name__}: {e}")
                              for ph in w.phases]
                    self.results += rs
                    parts = []
                    for r in rs:
                        if r["status"] == "ok":
                            s = f"{r['mode']} {r['sec']:.3f}s"
                            if r.get("cpu") is not None:
                                s += f" (cpu {r['cpu']:.2f}s)"
                        else:
                            s = f"{r['mode']} {r['status']}"
                            if r.get("err"):
                                s += f" [{r['err'][:160]}]"
                        parts.append(s)
                    log(f"[{k}/{total} {time.monotonic() - t_start:5.0f}s] {w.wid:>4} run {run} "
                        f"{t.name:<14} " + "; ".join(parts) +
                        f"  ({time.monotonic() - t0:.1f}s)")
        if do_memory:
            for t in tl:
                r = self.memory_test(t)
                if r:
                    self.memory.append(r)
                    if r.get("status") == "ok":
                        log(f"memory {t.name}: {r['entries']} entries, RSS after find "
                            f"{r['rss_find_kb'] / 1024:.1f} MiB, after drop_caches 2 "
                            f"{r['rss_drop_kb'] / 1024:.1f} MiB, after 2nd find "
                            f"{r['rss_find2_kb'] / 1024:.1f} MiB; open fds {r['fds_find']} -> "
                            f"{r['fds_drop']}")
                    else:
                        log(f"memory {t.name}: {r.get('status')} {r.get('err', '')[:200]}")
        self.reset_dirs()


def bind_ro(src, dst):
    """A read-only view of the fixture, so no filesystem under test can change it."""
    os.makedirs(dst, exist_ok=True)
    if T.mounted(dst):
        subprocess.run(["umount", "-l", dst])
    r1 = subprocess.run(["mount", "--bind", src, dst], stderr=subprocess.PIPE, text=True)
    if r1.returncode != 0:
        log(f"read-only bind mount failed ({r1.stderr.strip()}); using the fixture directly")
        return src, False
    r2 = subprocess.run(["mount", "-o", "remount,bind,ro", dst], stderr=subprocess.PIPE,
                        text=True)
    if r2.returncode != 0:
        log(f"remount ro failed ({r2.stderr.strip()}); the fixture is writable")
    return dst, True


def main(argv):
    args = parse_args(argv)

    def on_term(signum, frame):
        raise SystemExit(f"killed by signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    if os.geteuid() != 0:
        raise SystemExit("bench-compare needs root (mount -t overlay, drop_caches)")
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    tnames = [x.strip() for x in args.targets.split(",") if x.strip()]
    bad = [x for x in tnames if x not in T.ALL]
    if bad:
        raise SystemExit(f"unknown target(s): {','.join(bad)}; known: {','.join(T.ALL)}")
    if args.rootless:
        tnames += [r for r, b in T.ROOTLESS.items() if b in tnames and r not in tnames]
    tnames = [x for x in T.ALL if x in tnames]  # the report's column order
    bases = {T.BASES.get(x, x) for x in tnames}
    any_rootless = any(x in T.ROOTLESS for x in tnames)
    p = dict(fixture.QUICK if args.quick else fixture.FULL)
    wl, do_memory = W.select(W.all_workloads(p), args.workloads)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.abspath(args.out or os.path.join(args.scratch, "results", stamp))
    os.makedirs(out, exist_ok=True)
    t_begin = time.monotonic()
    with open("/proc/loadavg") as f:
        load_start = " ".join(f.read().split()[:3])

    fo2 = os.path.abspath(args.fo2 or T.fo2_binary(args.cache))
    if not args.no_install:
        ensure_peers(tnames, any(w.wid == "10" for w in wl))
        if "fuse-overlayfs-2" in bases:
            ensure_fo2(args.cache, fo2)
    user = ensure_user(args.rootless_user) if any_rootless else None
    ubin = args.unionmount
    if ubin is None:
        ubin = os.path.join(REPO, "target", "release", "unionmount")
        if "unionmount" in bases and not args.no_build:
            ubin = build_unionmount()
    tmap = T.make_targets(os.path.abspath(ubin), fo2, user)
    if args.nofile:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, max(hard, args.nofile)))
        except (ValueError, OSError) as e:
            raise SystemExit(f"--nofile {args.nofile}: cannot raise the hard limit {hard} "
                             f"({e}; needs CAP_SYS_RESOURCE and fs.nr_open >= N)")
    for t in tmap.values():
        t.nofile = args.nofile

    size = "quick" if args.quick else "full"
    fix_root = os.path.join(args.scratch, f"fixture-{size}")
    need = {"tree"}
    for w in wl:
        need |= {"main": {"tree", "wide", "data", "cproj"}, "layers32": {"layers"},
                 "snaps": {"snaps"}, "podman": set()}.get(w.stack, {"scale"})
    if do_memory:
        need.add("many")
    t0 = time.monotonic()
    snaps_error = None
    try:  # the snapshot layers ("snaps", made last) are taken by the run's unionmount
        fixture.ensure(fix_root, p, need, unionmount=tmap["unionmount"].binary)
    except fixture.FixtureError as e:
        snaps_error = str(e)
        log(f"{e}: workload 18 will be marked fail")
    if user:
        chown_fixture(fix_root, user)
    gen_sec = time.monotonic() - t0

    bindir = os.path.join(args.scratch, "bin")
    if user:
        for d in (args.scratch, bindir):  # the rootless user walks through these
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        for n in tnames:
            t = tmap[n]
            if t.rootless and t.binary and os.path.isabs(t.binary) and run_cmd(
                    f"test -x {shlex.quote(t.binary)}", {}, 30, user=user).status != "ok":
                copy = os.path.join(bindir, f"{t.base}-for-{user[0]}")
                log(f"{t.binary} is out of {user[0]}'s reach: {n} runs a copy, {copy}")
                shutil.copy2(t.binary, copy)
                os.chmod(copy, 0o755)
                t.binary = copy

    # the Debian rootfs of workloads 14-16, and the walker
    deb, deb_ro, extra_env = None, None, {}
    if any(w.needs for w in wl):
        walkx = rootfs.build_walkx(bindir)
        deb = rootfs.ensure(args.cache, user[0] if user else None)
        if any(w.needs == "podman" for w in wl) and not deb["synthetic"]:
            deb["rootfs_tar"] = rootfs.ensure_tar(args.cache)
        deb_src = os.path.join(args.cache, "debian")
        deb_ro, deb_bound = bind_ro(deb_src, os.path.join(args.scratch, "ro-debian"))
        if deb_bound:  # the same paths, seen through the read-only bind mount
            def ro(x):
                return deb_ro + x[len(deb_src):] if isinstance(x, str) and \
                    x.startswith(deb_src + "/") else x
            deb = {k: ({kk: ro(vv) for kk, vv in v.items()} if isinstance(v, dict) else ro(v))
                   for k, v in deb.items()}
        else:
            deb_ro = None
        if deb["synthetic"]:
            for w in wl:
                if w.needs:
                    w.title += " (SYNTHETIC tree: debootstrap failed)"
        extra_env = dict(ROOTFS_ENTRIES=str(deb["entries"]),
                         WALKX=walkx,
                         APT_PACKAGES=" ".join(rootfs.APT_PACKAGES))

    ro_dir = os.path.join(args.scratch, f"ro-{size}")
    fix, bound = bind_ro(fix_root, ro_dir)
    bench = Bench(args, p, fix, tmap, tnames, out, deb, extra_env, snaps_error)
    info = machine_info([tmap[n] for n in tnames], tmap["unionmount"].binary, args.scratch)
    info["command"] = "scripts/bench-compare" + "".join(" " + shlex.quote(a) for a in argv)
    info["fixture"] = {"root": fix_root, "params": p, "generate_sec": round(gen_sec, 1)}
    info["runs"] = args.runs
    info["loadavg_start"] = load_start
    info["daemon_nofile"] = args.nofile
    info["labels"] = {n: tmap[n].label() for n in tnames}
    info["rootless_user"] = user[0] if user else None
    if deb:
        info["rootfs"] = {k: deb.get(k) for k in ("rootfs", "debs", "synthetic", "entries",
                                                  "error", "debs_error", "rootfs_tar")}
        info["rootfs"]["apt_packages"] = rootfs.APT_PACKAGES
    interrupted = None
    try:
        bench.run(wl, do_memory)
    except (KeyboardInterrupt, SystemExit) as e:
        interrupted = str(e) or type(e).__name__
        log(f"interrupted: {interrupted}; writing what we have")
    except Exception as e:  # noqa: BLE001 - a bug here must not lose the results so far
        import traceback
        traceback.print_exc()
        interrupted = f"{type(e).__name__}: {e}"
    finally:
        T.cleanup_all()
        if bound:
            subprocess.run(["umount", ro_dir], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        if deb_ro:
            subprocess.run(["umount", deb_ro], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    info["elapsed_sec"] = round(time.monotonic() - t_begin, 1)
    with open("/proc/loadavg") as f:
        info["loadavg_end"] = " ".join(f.read().split()[:3])
    if interrupted:
        info["interrupted"] = interrupted
    md = report.write_all(out, info, wl, tnames, bench.results, bench.memory)
    print(md)
    log(f"results in {out} (results.md, results.json, ratios.svg); "
        f"total {info['elapsed_sec']:.0f}s")
    return 1 if interrupted else 0
