"""The filesystems compared: how each one mounts a stack, and how it is taken down.

A stack is a list of lower directories, top first, plus an empty upper and work directory.
FUSE daemons run in the foreground (-f) as our child, so we know their pid and can read
their CPU time and memory from /proc.

Two fuse-overlayfs versions run side by side: `fuse-overlayfs` is the distribution's (1.x, C),
`fuse-overlayfs-2` the Rust rewrite (`cargo install fuse-overlayfs`, 2.x) from the bench cache.
`unionmount-uring` is unionmount with FUSE over io_uring (Linux 6.14+): the fuse module's
`enable_uring` parameter is Y while its mount lives, and put back after.
The `*-rootless` targets run the same daemons as an unprivileged user (USER below): they mount
through the setuid fusermount3 (so `nosuid,nodev`, no `allow_other`, no FUSE passthrough, no
`trusted.*` xattrs), and every command of a workload on them runs as that user too.
"""

import os
import re
import resource
import shutil
import signal
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = ["plain", "overlay", "unionmount", "fuse-overlayfs", "fuse-overlayfs-2", "unionfs-fuse",
        "mergerfs"]
# rootless target -> the root target whose daemon it runs unprivileged
ROOTLESS = {"unionmount-rootless": "unionmount", "fuse-overlayfs-rootless": "fuse-overlayfs",
            "fuse-overlayfs-2-rootless": "fuse-overlayfs-2"}
# unionmount served through FUSE over io_uring: the fuse module's enable_uring is set to Y
# while its mount lives (and put back after); the other targets get the machine's setting
URING = {"unionmount-uring": "unionmount"}
BASES = {**ROOTLESS, **URING}
ALL = ROOT + list(URING) + list(ROOTLESS)
URING_PARAM = "/sys/module/fuse/parameters/enable_uring"
APT_PACKAGE = {"fuse-overlayfs": "fuse-overlayfs", "unionfs-fuse": "unionfs-fuse",
               "mergerfs": "mergerfs"}
# fuse-overlayfs 2.x: `cargo install fuse-overlayfs --version ^2 --root CACHE/FO2_DIR`
FO2_DIR = "fo2"
FO2_CRATE_VERSION = "^2"

_active = []  # live mounts, unmounted by cleanup_all() whatever happens


class MountError(Exception):
    pass


def _unescape(s):
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if _unescape(line.split()[4]) == path:
                return True
    return False


def mounts_below(prefix):
    prefix = os.path.realpath(prefix).rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            p = _unescape(line.split()[4])
            if p.startswith(prefix):
                out.append(p)
    return sorted(out, key=len, reverse=True)


def proc_cpu(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _run(cmd, timeout=60, cwd=None):
    return subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


class Mount:
    def __init__(self, target, mnt, upper, proc=None, log=None):
        self.target, self.mnt, self.upper, self.proc, self.log = target, mnt, upper, proc, log
        self.down = False
        self.uring_was = None  # enable_uring before this mount set it (put back at unmount)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def cpu(self):
        return proc_cpu(self.pid) if self.pid else None

    def hwm_kb(self):
        return proc_status_kb(self.pid, "VmHWM") if self.pid else None

    def rss_kb(self):
        return proc_status_kb(self.pid, "VmRSS") if self.pid else None

    def fds(self):
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd")) if self.pid else None
        except OSError:
            return None

    def alive(self):
        return self.proc is None or self.proc.poll() is None

    def unmount(self):
        if self.down:
            return
        self.down = True
        try:
            if self.target.kind != "plain":
                for sub in mounts_below(self.mnt):  # whatever a workload left mounted inside
                    _run(["umount", "-l", sub], timeout=60)
            if self.target.kind != "plain" and mounted(self.mnt):
                ok = False
                tries = (["fusermount3", "-u", self.mnt], ["umount", self.mnt]) \
                    if self.target.kind == "fuse" else (["umount", self.mnt],)
                for cmd in tries:
                    try:
                        if _run(cmd, timeout=60).returncode == 0:
                            ok = True
                            break
                    except subprocess.TimeoutExpired:
                        pass
                if not ok:
                    if self.proc and self.proc.poll() is None:
                        self.proc.kill()  # closing /dev/fuse aborts the connection
                    _run(["umount", "-l", self.mnt], timeout=60)
            if self.proc:
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=20)
        finally:
            if self in _active:
                _active.remove(self)
            if self.log:
                self.log.close()
            if self.uring_was is not None:
                with open(URING_PARAM, "w") as f:
                    f.write(self.uring_was)


class Target:
    def __init__(self, name, kind, binary=None, base=None, user=None):
        self.name, self.kind, self.binary = name, kind, binary
        self.base = base or name  # which filesystem: rootless targets share their root one's
        self.user = user          # (name, uid, gid): daemon and commands run as this user
        self.nofile = None  # RLIMIT_NOFILE for the daemon; None: inherit ours
        self._version = None

    @property
    def rootless(self):
        return self.name in ROOTLESS

    @property
    def uring(self):
        return self.name in URING

    def label(self):
        """Column header: the name, with the major.minor version for fuse-overlayfs (so the
        report says "fuse-overlayfs 1.10" and "fuse-overlayfs 2.0")."""
        if self.base.startswith("fuse-overlayfs"):
            m = re.search(r"version:?\s*(\d+)\.(\d+)", self.version())
            head = f"fuse-overlayfs {m.group(1)}.{m.group(2)}" if m else self.base
            return head + (" rootless" if self.rootless else "")
        return self.name

    def available(self):
        if self.kind == "plain":
            return True, ""
        if self.kind == "kernel":
            with open("/proc/filesystems") as f:
                if "overlay" in f.read():
                    return True, ""
            r = _run(["modprobe", "overlay"])
            return r.returncode == 0, "no overlay in /proc/filesystems"
        if self.rootless and self.user is None:
            return False, "no rootless bench user"
        if self.uring and not os.access(URING_PARAM, os.W_OK):
            return False, f"no FUSE over io_uring here ({URING_PARAM} not writable)"
        if self.binary and (os.path.isabs(self.binary) and os.access(self.binary, os.X_OK)
                            or shutil.which(self.binary)):
            return True, ""
        return False, f"{self.binary} not found"

    def version(self):
        if self._version is None:
            self._version = self._read_version()
        return self._version

    def _read_version(self):
        try:
            if self.kind == "kernel":
                return "kernel " + os.uname().release
            if self.kind == "plain":
                return ""
            r = _run([self.binary, "--version"], timeout=10)
            lines = r.stdout.splitlines()
            own = [x for x in lines if self.base.removesuffix("-2") in x.lower()
                   and "version" in x.lower()]
            return (own or [x for x in lines if "version" in x.lower()] or lines or [""])[0] \
                .strip()
        except Exception as e:  # noqa: BLE001 - a version string is decoration
            return f"? ({e})"

    def command(self, lowers, upper, work, mnt):
        low = ":".join(lowers)
        name = self.base
        if upper is None:  # read-only: the lowers alone (see Workload.lowers_only)
            if name == "overlay":
                return ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={low}", mnt]
            if name in ("unionmount", "fuse-overlayfs", "fuse-overlayfs-2"):
                return [self.binary, "-f", "-o", f"lowerdir={low}", mnt]
            branches = ":".join(f"{x}=RO" for x in lowers)
            if name == "unionfs-fuse":
                return [self.binary, "-f", "-o", "allow_other", branches, mnt]
            if name == "mergerfs":
                return [self.binary, "-f", "-o", "allow_other", branches, mnt]
            raise ValueError(self.name)
        if name == "overlay":
            return ["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={low},upperdir={upper},workdir={work}", mnt]
        if name == "unionmount":
            return [self.binary, "-f", "-o", f"lowerdir={low},upperdir={upper},workdir={work}",
                    mnt]
        if name in ("fuse-overlayfs", "fuse-overlayfs-2"):
            return [self.binary, "-f", "-o", f"lowerdir={low},upperdir={upper},workdir={work}",
                    mnt]
        branches = ":".join([f"{upper}=RW"] + [f"{x}=RO" for x in lowers])
        if name == "unionfs-fuse":
            return [self.binary, "-f", "-o", "cow,allow_other", branches, mnt]
        if name == "mergerfs":
            return [self.binary, "-f", "-o", "allow_other", branches, mnt]
        raise ValueError(self.name)

    def mount(self, lowers, upper, work, mnt, cwd=None, logpath=None):
        """Mount the stack on mnt. Lowers may be relative to cwd (keeps option strings short)."""
        cmd = self.command(lowers, upper, work, mnt)
        if self.kind == "kernel":
            r = _run(cmd, cwd=cwd)
            if r.returncode != 0:
                raise MountError(f"{' '.join(cmd[:4])}...: {r.stdout.strip()}")
            m = Mount(self, mnt, upper)
            _active.append(m)
            return m
        log = open(logpath, "w") if logpath else subprocess.DEVNULL
        uring_was = None
        if self.uring:
            with open(URING_PARAM) as f:
                uring_was = f.read().strip()
            with open(URING_PARAM, "w") as f:
                f.write("Y")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        limit = self.nofile
        pre = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))) \
            if limit else None
        kw = {}
        if self.user:
            kw = dict(user=self.user[1], group=self.user[2], extra_groups=[])
            env.update(HOME="/tmp", USER=self.user[0], LOGNAME=self.user[0])
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, preexec_fn=pre, **kw)
        m = Mount(self, mnt, upper, proc, log if logpath else None)
        m.uring_was = uring_was
        _active.append(m)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if mounted(mnt):
                return m
            if proc.poll() is not None:
                m.unmount()
                tail = ""
                if logpath:
                    with open(logpath) as f:
                        tail = f.read()[-400:].strip()
                raise MountError(f"{self.name} exited with {proc.returncode}: {tail}")
            time.sleep(0.01)
        m.unmount()
        raise MountError(f"{self.name} did not mount within 20s")


def fo2_binary(cache):
    return os.path.join(cache, FO2_DIR, "bin", "fuse-overlayfs")


def make_targets(unionmount_bin, fo2_bin, user=None):
    """user: (name, uid, gid) of the rootless targets, or None (then they are unavailable)."""
    t = {
        "plain": Target("plain", "plain"),
        "overlay": Target("overlay", "kernel"),
        "unionmount": Target("unionmount", "fuse", unionmount_bin),
        "fuse-overlayfs": Target("fuse-overlayfs", "fuse", "fuse-overlayfs"),
        "fuse-overlayfs-2": Target("fuse-overlayfs-2", "fuse", fo2_bin),
        "unionfs-fuse": Target("unionfs-fuse", "fuse", "unionfs-fuse"),
        "mergerfs": Target("mergerfs", "fuse", "mergerfs"),
    }
    for name, base in ROOTLESS.items():
        t[name] = Target(name, "fuse", t[base].binary, base=base, user=user)
    for name, base in URING.items():
        t[name] = Target(name, "fuse", t[base].binary, base=base)
    return t


def cleanup_all():
    for m in list(_active):
        try:
            m.unmount()
        except Exception as e:  # noqa: BLE001 - keep taking the others down
            print(f"[bench] unmount of {m.mnt} failed: {e}", flush=True)
            if m.proc and m.proc.poll() is None:
                m.proc.send_signal(signal.SIGKILL)
            subprocess.run(["umount", "-l", m.mnt], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            if m in _active:
                _active.remove(m)
