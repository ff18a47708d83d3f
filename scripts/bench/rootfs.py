"""A Debian rootfs for the container rows (14-16), built once and cached; and the walker.

Layout under CACHE/debian (CACHE defaults to /var/cache/unionmount-bench):

  rootfs/                    `debootstrap --variant=minbase bookworm`, as debootstrap left it
                             (6,768 entries: the base .debs and apt lists included)
  debs-layer/var/cache/apt/archives/*.deb
                             the packages of workload 16 and the dependencies the rootfs lacks,
                             downloaded once (a layer above rootfs: no network when timed)
  rootfs.tar                 rootfs/ as a tar (its /dev left empty): the base image of
                             workload 19, `podman import`ed into each storage root
  rootless/rootfs, rootless/debs-layer
                             the same, owned by the rootless bench user (rootless targets)
  synthetic/                 only if debootstrap failed: a generated tree of the same shape,
                             and the rows say SYNTHETIC in their titles
  .stamp-*                   what was built, and with which parameters

Everything is built by `ensure()`; a component whose stamp matches is reused.
"""

import json
import os
import random
import shutil
import subprocess
import time

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# workload 16: `apt-get install` of these (13 packages with their dependencies, ~2,500 files)
APT_PACKAGES = ["perl", "less", "file", "xz-utils", "bzip2", "patch"]
VERSION = 1


def _log(msg):
    print(f"[rootfs] {msg}", flush=True)


def _stamp_ok(path, want):
    try:
        with open(path) as f:
            return f.read() == want
    except FileNotFoundError:
        return False


def _write_stamp(path, want):
    with open(path, "w") as f:
        f.write(want)


def _rm(path):
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)


def _entries(root):
    """What `find root` lists: root itself and everything below it."""
    return 1 + sum(len(d) + len(f) for _, d, f in os.walk(root))


def _debootstrap(cache):
    dst = os.path.join(cache, "rootfs")
    tmp = dst + ".tmp"
    _rm(tmp)
    if not shutil.which("debootstrap"):
        _log("installing debootstrap")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not shutil.which("debootstrap"):
            return "debootstrap is not installed and apt-get install debootstrap failed"
    _log(f"debootstrap --variant=minbase {SUITE} (once; a few minutes)")
    r = subprocess.run(["debootstrap", "--variant=minbase", SUITE, tmp, MIRROR],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        _rm(tmp)
        return "debootstrap failed: " + r.stdout.strip()[-300:]
    os.rename(tmp, dst)
    return None


def _download_debs(cache):
    """The packages of workload 16, resolved against the rootfs' own dpkg status and apt lists
    with the host's apt-get, downloaded into debs-layer/var/cache/apt/archives."""
    root = os.path.join(cache, "rootfs")
    dst = os.path.join(cache, "debs-layer")
    tmp = dst + ".tmp"
    _rm(tmp)
    arch = os.path.join(tmp, "var", "cache", "apt", "archives")
    os.makedirs(os.path.join(arch, "partial"))
    r = subprocess.run(
        ["apt-get", "-q", "-y", "-d",
         "-o", f"Dir::State::status={root}/var/lib/dpkg/status",
         "-o", f"Dir::State::Lists={root}/var/lib/apt/lists",
         "-o", f"Dir::Etc::sourcelist={root}/etc/apt/sources.list",
         "-o", "Dir::Etc::sourceparts=/dev/null",
         "-o", f"Dir::Cache::archives={arch}",
         "-o", "Debug::NoLocking=1",
         "install"] + APT_PACKAGES,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.rmdir(os.path.join(arch, "partial"))
    debs = [x for x in os.listdir(arch) if x.endswith(".deb")]
    if r.returncode != 0 or not debs:
        _rm(tmp)
        return "apt-get download of the packages failed: " + r.stdout.strip()[-300:]
    os.rename(tmp, dst)
    return None


def _synthetic(cache):
    """A tree shaped like a minbase rootfs (6.8k entries: 560 dirs, 5,600 files of lognormal
    sizes around 4 KiB, 600 symlinks), for when debootstrap cannot run (no network)."""
    dst = os.path.join(cache, "synthetic")
    tmp = dst + ".tmp"
    _rm(tmp)
    rng = random.Random(1234)
    top = ["bin", "etc", "lib", "usr/bin", "usr/lib/x86_64-linux-gnu", "usr/share/doc",
           "usr/share/locale", "usr/share/zoneinfo", "var/lib/dpkg/info", "var/cache/apt"]
    dirs = []
    for t in top:
        for i in range(56):
            d = os.path.join(tmp, t, f"d{i:02d}") if i else os.path.join(tmp, t)
            os.makedirs(d, exist_ok=True)
            dirs.append(d)
    files = []
    for i in range(5600):
        d = dirs[rng.randrange(len(dirs))]
        p = os.path.join(d, f"f{i:04d}")
        size = int(min(1 << 20, rng.lognormvariate(8.3, 1.3)))
        with open(p, "wb") as f:
            f.write(b"\0" * size)
        files.append(p)
    for i in range(600):
        d = dirs[rng.randrange(len(dirs))]
        os.symlink(os.path.relpath(files[rng.randrange(len(files))], d),
                   os.path.join(d, f"l{i:03d}"))
    os.rename(tmp, dst)


def _rootless_copy(cache, user):
    """rootfs and debs-layer copied and chowned to the rootless bench user."""
    dst = os.path.join(cache, "rootless")
    tmp = dst + ".tmp"
    _rm(tmp)
    os.makedirs(tmp)
    for part in ("rootfs", "debs-layer", "synthetic"):
        src = os.path.join(cache, part)
        if os.path.isdir(src):
            subprocess.run(["cp", "-a", src, os.path.join(tmp, part)], check=True)
    subprocess.run(["chown", "-R", f"{user}:{user}", tmp], check=True)
    os.chmod(tmp, 0o755)
    os.rename(tmp, dst)


def ensure(cache, rootless_user=None):
    """Build (or reuse) the rootfs. Returns a dict for the workloads:
    dict(rootfs=DIR, debs=DIR|None, synthetic=bool, entries=N, rootless={...}|None,
    error=why debootstrap or the download failed, or None)."""
    cache = os.path.join(cache, "debian")
    os.makedirs(cache, exist_ok=True)
    os.chmod(cache, 0o755)
    info = dict(synthetic=False, error=None, debs=None, rootless=None)
    want = json.dumps({"v": VERSION, "suite": SUITE})
    stamp = os.path.join(cache, ".stamp-rootfs")
    t0 = time.monotonic()
    if not (_stamp_ok(stamp, want) and os.path.isdir(os.path.join(cache, "rootfs"))):
        _rm(os.path.join(cache, "rootfs"))
        info["error"] = _debootstrap(cache)
        if info["error"] is None:
            _write_stamp(stamp, want)
            _log(f"rootfs: built in {time.monotonic() - t0:.0f}s")
    if info["error"] is None:
        info["rootfs"] = os.path.join(cache, "rootfs")
        want_d = json.dumps({"v": VERSION, "suite": SUITE, "pkgs": APT_PACKAGES})
        stamp_d = os.path.join(cache, ".stamp-debs")
        if not (_stamp_ok(stamp_d, want_d) and os.path.isdir(os.path.join(cache, "debs-layer"))):
            _rm(os.path.join(cache, "debs-layer"))
            err = _download_debs(cache)
            if err:
                info["debs_error"] = err
                _log(err)
            else:
                _write_stamp(stamp_d, want_d)
        if os.path.isdir(os.path.join(cache, "debs-layer")):
            info["debs"] = os.path.join(cache, "debs-layer")
    else:
        _log(f"{info['error']}; falling back to a SYNTHETIC tree of the same shape")
        if not os.path.isdir(os.path.join(cache, "synthetic")):
            _synthetic(cache)
        info["synthetic"] = True
        info["rootfs"] = os.path.join(cache, "synthetic")
    info["entries"] = _entries(info["rootfs"])
    if rootless_user:
        want_r = json.dumps({"v": VERSION, "user": rootless_user,
                             "src": [open(s).read() for s in
                                     (stamp, os.path.join(cache, ".stamp-debs"))
                                     if os.path.exists(s)],
                             "synthetic": info["synthetic"]})
        stamp_r = os.path.join(cache, ".stamp-rootless")
        if not (_stamp_ok(stamp_r, want_r) and os.path.isdir(os.path.join(cache, "rootless"))):
            _rm(os.path.join(cache, "rootless"))
            _rootless_copy(cache, rootless_user)
            _write_stamp(stamp_r, want_r)
        rl = os.path.join(cache, "rootless")
        info["rootless"] = dict(
            rootfs=os.path.join(rl, os.path.basename(info["rootfs"])),
            debs=os.path.join(rl, "debs-layer") if info["debs"] else None)
    return info


def ensure_tar(cache):
    """CACHE/debian/rootfs.tar: the debootstrap rootfs as a tar (device nodes of /dev left out:
    the container runtime makes its own), made once per rootfs stamp. Returns its path, or
    None when there is no debootstrap rootfs."""
    cache = os.path.join(cache, "debian")
    root = os.path.join(cache, "rootfs")
    stamp = os.path.join(cache, ".stamp-rootfs")
    if not (os.path.isdir(root) and os.path.exists(stamp)):
        return None
    dst = os.path.join(cache, "rootfs.tar")
    stamp_t = os.path.join(cache, ".stamp-rootfs-tar")
    with open(stamp) as f:
        want = f.read()
    if _stamp_ok(stamp_t, want) and os.path.exists(dst):
        return dst
    _log("tar of the rootfs (once)")
    tmp = dst + ".tmp"
    subprocess.run(["tar", "-C", root, "--exclude=./dev/*", "-cf", tmp, "."], check=True)
    os.rename(tmp, dst)
    _write_stamp(stamp_t, want)
    return dst


# The layer-diff walk of containers/storage (pkg/archive changes.go collectFileInfo): per entry
# lstat, lgetxattr("security.capability"), llistxattr and lgetxattr of every listed name, with
# paths built from strings as Go's walk does. Prints the entry count; times itself
# (BENCH_ELAPSED) so process start-up does not count.
WALKX_C = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>

static long entries;
static char names[65536], value[65536];

static void visit(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) { perror(path); exit(1); }
    entries++;
    lgetxattr(path, "security.capability", value, sizeof value);
    ssize_t n = llistxattr(path, names, sizeof names);
    for (ssize_t i = 0; i < n; i += strlen(names + i) + 1)
        lgetxattr(path, names + i, value, sizeof value);
    if (!S_ISDIR(st.st_mode))
        return;
    DIR *d = opendir(path);
    if (!d) { perror(path); exit(1); }
    struct dirent *e;
    size_t len = strlen(path);
    char *child = malloc(len + 258);
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(child, len + 258, "%s/%s", path, e->d_name);
        visit(child);
    }
    free(child);
    closedir(d);
}

int main(int argc, char **argv)
{
    struct timespec a, b;
    if (argc != 2) { fprintf(stderr, "usage: walkx DIR\n"); return 2; }
    clock_gettime(CLOCK_MONOTONIC, &a);
    visit(argv[1]);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("BENCH_ELAPSED=%.6f\n%ld\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9,
           entries);
    return 0;
}
"""


def build_walkx(bindir):
    """Compile the walker into BINDIR/walkx (once per source); returns its path."""
    os.makedirs(bindir, exist_ok=True)
    os.chmod(bindir, 0o755)
    src = os.path.join(bindir, "walkx.c")
    exe = os.path.join(bindir, "walkx")
    try:
        with open(src) as f:
            same = f.read() == WALKX_C
    except FileNotFoundError:
        same = False
    if not same or not os.access(exe, os.X_OK):
        with open(src, "w") as f:
            f.write(WALKX_C)
        subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe
