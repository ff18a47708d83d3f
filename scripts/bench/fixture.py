"""The benchmark fixture: generated, deterministic, no downloads.

Layout under ROOT (one ROOT per size, e.g. /var/tmp/unionmount-bench/fixture-full):

  lower/tree/                source-like tree (src, lib, docs, tests, vendor, third_party)
  lower/tree/vendor/         exactly VENDOR files (workload 8 removes it)
  lower/tree/third_party/    exactly THIRD_PARTY files (workload 12 renames it)
  lower/wide/                one directory with WIDE entries (workload 2)
  lower/data/big.bin         BIG_MB MiB of incompressible data (workloads 4)
  lower/data/medium.bin      MEDIUM_MB MiB (workload 6, copy-up)
  lower/cproj/               a small C project with a Makefile (workload 13)
  tree.tar                   lower/tree as an uncompressed tar (workload 11)
  layers32/00 .. 31          the tree spread over 32 layers, 00 on top, with shadowed
                             copies lower down; files are sparse (sizes right, no data)
  scale/top, scale/lo001..   lookup scaling: SCALE_TOP files in top/d/e/f, every lower
                             holds d/e/f and a few files of its own
  many/                      MANY empty files for the memory test
  snaps/base/                a copy of lower/tree (workload 18)
  snaps/upper.snapshots/     SNAPSHOTS snapshot layers 0001-s1 .. NNNN-sN of an upper over
                             snaps/base, taken by the run's unionmount (`unionmount snapshot`)
                             after changing a few files through the mount each time: appends
                             (copy-ups) and new files, nothing deleted (no whiteouts, so every
                             peer stacks them as plain lowers)

Every component is stamped with its parameters; a component whose stamp matches is
reused, anything else is removed and generated again. `snaps` is made by the unionmount
binary of the run; its layers are plain directories, reused by later runs whatever binary
they use (bump VERSION if the snapshot layout changes).
"""

import json
import math
import os
import random
import shutil
import subprocess
import time

VERSION = 2

FULL = dict(
    tree_files=30000, vendor=5000, third_party=5000, wide=10000,
    big_mb=1024, medium_mb=256, layers=32, scale_top=5000, scale_lower_files=20,
    scale_max=128, many_dirs=100, many_per_dir=1000, c_files=40, c_funcs=8, snapshots=50,
    # not the fixture's shape, the workloads' sizes
    readdir_repeat=20, create_n=10000, fio_mb=128, fio_io_mb=64,
)
QUICK = dict(
    tree_files=3000, vendor=500, third_party=500, wide=2000,
    big_mb=64, medium_mb=32, layers=32, scale_top=2000, scale_lower_files=5,
    scale_max=128, many_dirs=10, many_per_dir=1000, c_files=8, c_funcs=8, snapshots=50,
    readdir_repeat=5, create_n=1000, fio_mb=32, fio_io_mb=16,
)

WORDS = ("core util net io fs mm sched crypto block drivers parser lexer codegen runtime "
         "alloc sync proto http json yaml config log trace cache store index query plan "
         "exec api cli ui render audio video image font text math geom test bench").split()
EXTS = [".c", ".h", ".rs", ".py", ".go", ".js", ".md", ".txt", ".json", ".toml"]


def _log(msg):
    print(f"[fixture] {msg}", flush=True)


class FixtureError(Exception):
    """A component could not be made (the snapshot layers: unionmount failed)."""


# ---------------------------------------------------------------------------
# the plan: which files the tree holds, with sizes (pure, deterministic)

def _split(rng, n, k):
    """Split n into k non-negative parts with random weights."""
    w = [rng.random() + 0.2 for _ in range(k)]
    s = sum(w)
    parts = [int(n * x / s) for x in w]
    parts[0] += n - sum(parts)
    return parts


def _fill(rng, prefix, n, depth, out):
    """Append n (relpath, size) entries below prefix, nested like a source tree."""
    here = n if depth >= 5 else min(n, rng.randint(6, 24))
    for i in range(here):
        ext = rng.choice(EXTS)
        size = int(min(256 * 1024, rng.lognormvariate(math.log(3000), 1.0)))
        out.append((f"{prefix}/{rng.choice(WORDS)}_{i:04d}{ext}", size))
    rest = n - here
    if rest <= 0:
        return
    k = max(1, min(rng.randint(2, 6), rest // 4 or 1))
    for j, part in enumerate(_split(rng, rest, k)):
        if part:
            _fill(rng, f"{prefix}/{rng.choice(WORDS)}{j}", part, depth + 1, out)


def tree_plan(p):
    """[(path relative to lower/, size)] for lower/tree, always the same for the same p."""
    rng = random.Random(20240601)
    out = []
    rest = p["tree_files"] - p["vendor"] - p["third_party"]
    for name, n in zip(["src", "lib", "docs", "tests"], [rest * 6 // 10, rest * 2 // 10,
                                                       rest // 10, rest - rest * 9 // 10]):
        _fill(rng, f"tree/{name}", n, 1, out)
    _fill(rng, "tree/vendor", p["vendor"], 1, out)
    _fill(rng, "tree/third_party", p["third_party"], 1, out)
    return out


def _corpus():
    rng = random.Random(7)
    toks = WORDS + ["{", "}", "(", ")", ";", "=", "+", "->", "return", "if", "for", "int",
                    "static", "const", "0", "1", "42", "\n", "\n    ", "\n\t"]
    return " ".join(rng.choice(toks) for _ in range(400_000)).encode()[: 2 * 1024 * 1024]


# ---------------------------------------------------------------------------
# components

def _gen_tree(root, p):
    corpus = _corpus()
    rng = random.Random(11)
    made = set()
    lower = os.path.join(root, "lower")
    for rel, size in tree_plan(p):
        d = os.path.dirname(rel)
        if d not in made:
            os.makedirs(os.path.join(lower, d), exist_ok=True)
            made.add(d)
        off = rng.randrange(len(corpus) - size)
        with open(os.path.join(lower, rel), "wb") as f:
            f.write(corpus[off:off + size])
    # the tar of the tree, for the untar workload
    subprocess.run(["tar", "-C", lower, "-cf", os.path.join(root, "tree.tar"), "tree"],
                   check=True)


def _gen_wide(root, p):
    d = os.path.join(root, "lower", "wide")
    os.makedirs(d)
    body = b"x" * 64
    for i in range(p["wide"]):
        with open(os.path.join(d, f"entry_{i:05d}.txt"), "wb") as f:
            f.write(body)


def _gen_data(root, p):
    d = os.path.join(root, "lower", "data")
    os.makedirs(d)
    block = random.Random(3).randbytes(4 * 1024 * 1024)
    for name, mb in (("big.bin", p["big_mb"]), ("medium.bin", p["medium_mb"])):
        with open(os.path.join(d, name), "wb") as f:
            for _ in range(mb // 4):
                f.write(block)
            f.write(block[: (mb % 4) * 1024 * 1024])
            os.fsync(f.fileno())


C_FUNC = """
static unsigned long f{m}_{j}(unsigned long x, const struct ctx *c)
{{
    unsigned long acc = x ^ {k}UL;
    for (int i = 0; i < c->n; i++) {{
        switch ((acc + i) % 7) {{
        case 0: acc = acc * 31 + c->v[i % 16]; break;
        case 1: acc ^= (acc << 7) | (acc >> 3); break;
        case 2: acc += mix(acc, {k}UL, i); break;
        case 3: acc = acc / 3 + c->v[(i * 5) % 16]; break;
        case 4: acc -= (unsigned long)i * {k}UL; break;
        case 5: acc = rot(acc, (unsigned)(i % 13)); break;
        default: acc += table_{m}[(acc + {j}) % 32]; break;
        }}
    }}
    return acc;
}}
"""


def _gen_cproj(root, p):
    d = os.path.join(root, "lower", "cproj")
    os.makedirs(os.path.join(d, "include"))
    with open(os.path.join(d, "include", "common.h"), "w") as f:
        f.write("#ifndef COMMON_H\n#define COMMON_H\n#include <stdio.h>\n#include <string.h>\n"
                "struct ctx { int n; unsigned long v[16]; };\n"
                "static inline unsigned long mix(unsigned long a, unsigned long b, int i)\n"
                "{ return (a * 2654435761UL) ^ (b + (unsigned long)i); }\n"
                "static inline unsigned long rot(unsigned long a, unsigned s)\n"
                "{ return (a << s) | (a >> ((64 - s) & 63)); }\n")
        for m in range(p["c_files"]):
            f.write(f"unsigned long module_{m}(const struct ctx *c);\n")
        f.write("#endif\n")
    for m in range(p["c_files"]):
        sub = os.path.join(d, "src", f"part{m % 4}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"module_{m}.c"), "w") as f:
            f.write('#include "common.h"\n')
            f.write(f"static const unsigned long table_{m}[32] = {{"
                    + ", ".join(str((m * 977 + i * 131) % 65521) for i in range(32)) + "};\n")
            for j in range(p["c_funcs"]):
                f.write(C_FUNC.format(m=m, j=j, k=(m * 7919 + j * 104729) % 1000003))
            f.write(f"unsigned long module_{m}(const struct ctx *c)\n"
                    "{\n    unsigned long a = 0;\n")
            for j in range(p["c_funcs"]):
                f.write(f"    a += f{m}_{j}(a, c);\n")
            f.write("    return a;\n}\n")
    with open(os.path.join(d, "src", "main.c"), "w") as f:
        f.write('#include "common.h"\nint main(void)\n{\n    struct ctx c = { .n = 100 };\n'
                "    unsigned long s = 0;\n    for (int i = 0; i < 16; i++) c.v[i] = i * 3u;\n")
        for m in range(p["c_files"]):
            f.write(f"    s += module_{m}(&c);\n")
        f.write('    printf("%lu\\n", s);\n    return 0;\n}\n')
    with open(os.path.join(d, "Makefile"), "w") as f:
        f.write("CC ?= gcc\nCFLAGS ?= -O2 -Wall -Iinclude\n"
                "SRCS := $(wildcard src/*.c src/*/*.c)\nOBJS := $(SRCS:.c=.o)\n\n"
                "app: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\n"
                "%.o: %.c include/common.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n\n"
                "clean:\n\trm -f app $(OBJS)\n.PHONY: clean\n")


def _touch(path, size):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if size:
        os.ftruncate(fd, size)  # sparse: stat sees the size, no data is written
    os.close(fd)


def _gen_layers32(root, p):
    n = p["layers"]
    base = os.path.join(root, f"layers{n}")
    made = set()
    for i, (rel, size) in enumerate(tree_plan(p)):
        rel = rel[len("tree/"):]
        home = (i * 7) % n
        homes = [home]
        if i % 6 == 0:  # a sixth of the files are shadowed by copies lower down
            homes += [h for h in (home + 3, home + 11) if h < n]
        for k, layer in enumerate(homes):
            d = os.path.join(base, f"{layer:02d}", os.path.dirname(rel))
            if d not in made:
                os.makedirs(d, exist_ok=True)
                made.add(d)
            _touch(os.path.join(base, f"{layer:02d}", rel), size if k == 0 else size // 2 + 1)
    for layer in range(n):
        os.makedirs(os.path.join(base, f"{layer:02d}"), exist_ok=True)


def _gen_scale(root, p):
    base = os.path.join(root, "scale")
    top = os.path.join(base, "top", "d", "e", "f")
    os.makedirs(top)
    for i in range(p["scale_top"]):
        _touch(os.path.join(top, f"t{i:05d}"), 0)
    for layer in range(1, p["scale_max"]):
        d = os.path.join(base, f"lo{layer:03d}", "d", "e", "f")
        os.makedirs(d)
        for j in range(p["scale_lower_files"]):
            _touch(os.path.join(d, f"x{layer:03d}_{j:02d}"), 0)
        _touch(os.path.join(base, f"lo{layer:03d}", "d", f"y{layer:03d}"), 0)


def _gen_many(root, p):
    base = os.path.join(root, "many")
    for d in range(p["many_dirs"]):
        dd = os.path.join(base, f"d{d:03d}")
        os.makedirs(dd)
        for i in range(p["many_per_dir"]):
            _touch(os.path.join(dd, f"f{i:05d}"), 0)


# the snapshot layers of workload 18: per snapshot, SNAP_APPEND lower files appended to (so
# copied up; the first, SNAP_HOT, is the same file every time, so its newest copy must win) and
# SNAP_CREATE new files, each in a directory of the tree; nothing is deleted
SNAP_APPEND = 3
SNAP_CREATE = 2
SNAPS_UPPER = "upper"  # the store is snaps/upper.snapshots, as unionmount names it


def _snap_line(k):
    return f"// change {k:04d}\n".encode()


def snaps_plan(p):
    """[(appends, creates)] per snapshot, paths relative to the tree; and (the file appended to
    by every snapshot, its final size). Deterministic for the same p."""
    rng = random.Random(19)
    plan = [(rel[len("tree/"):], size) for rel, size in tree_plan(p)]
    files = [rel for rel, _ in plan]
    dirs = sorted({os.path.dirname(f) for f in files})
    n = p["snapshots"]
    picks = rng.sample(files, 1 + (SNAP_APPEND - 1) * n)
    hot = picks[0]
    out = []
    for k in range(1, n + 1):
        appends = [hot] + picks[1 + (SNAP_APPEND - 1) * (k - 1):1 + (SNAP_APPEND - 1) * k]
        creates = [f"{d}/snap{k:03d}_{j}.txt"
                   for j, d in enumerate(rng.sample(dirs, SNAP_CREATE))]
        out.append((appends, creates))
    hot_size = dict(plan)[hot] + sum(len(_snap_line(k)) for k in range(1, n + 1))
    return out, (hot, hot_size)


def snaps_store(root):
    return os.path.join(root, "snaps", SNAPS_UPPER + ".snapshots")


def snaps_layers(root):
    """The snapshot layer directories (names in the store), newest first."""
    store = snaps_store(root)
    return sorted((d for d in os.listdir(store) if d[:4].isdigit() and d[4:5] == "-"
                   and os.path.isdir(os.path.join(store, d))), reverse=True)


def snaps_entries(root):
    """What `find` lists in the union of snaps/base and every snapshot layer, its root
    included (nothing is deleted, so the union of the paths)."""
    store = snaps_store(root)
    seen = set()
    for top in [os.path.join(root, "snaps", "base")] + \
            [os.path.join(store, d) for d in snaps_layers(root)]:
        for d, dirs, files in os.walk(top):
            rel = os.path.relpath(d, top)
            seen.update(os.path.normpath(os.path.join(rel, x)) for x in dirs + files)
    return 1 + len(seen)


def _gen_snaps(root, p, unionmount=None):
    """Mount unionmount UPPER=RW:BASE=RO, then SNAPSHOTS times: change a few files through the
    mount and `unionmount snapshot MNT sK`; unmount. The empty upper is removed afterwards."""
    import targets as T  # mounted(); targets imports nothing of ours
    if not unionmount or not os.access(unionmount, os.X_OK):
        raise FixtureError(f"no unionmount binary to take the snapshots with ({unionmount})")
    snaps = os.path.join(root, "snaps")
    base, upper = os.path.join(snaps, "base"), os.path.join(snaps, SNAPS_UPPER)
    mnt = os.path.join(root, ".snaps-mnt")
    os.makedirs(snaps)
    subprocess.run(["cp", "-a", os.path.join(root, "lower", "tree"), base], check=True)
    os.makedirs(upper)
    os.makedirs(mnt, exist_ok=True)
    plan, (hot, hot_size) = snaps_plan(p)
    logpath = os.path.join(root, ".snaps-log")
    proc = None
    try:
        with open(logpath, "w") as log:
            proc = subprocess.Popen([unionmount, "-f", f"{upper}=RW:{base}=RO", mnt],
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        deadline = time.monotonic() + 20
        while not T.mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(logpath) as f:
                    tail = f.read()[-300:].strip()
                raise FixtureError(f"{unionmount} did not mount {upper}=RW:{base}=RO: {tail}")
            time.sleep(0.01)
        for k, (appends, creates) in enumerate(plan, 1):
            for rel in appends:
                with open(os.path.join(mnt, rel), "ab") as f:
                    f.write(_snap_line(k))
            for rel in creates:
                with open(os.path.join(mnt, rel), "wb") as f:
                    f.write(b"new in snapshot %d\n" % k)
            r = subprocess.run([unionmount, "snapshot", mnt, f"s{k}"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=60)
            if r.returncode != 0:
                raise FixtureError(f"unionmount snapshot {mnt} s{k}: {r.stdout.strip()[-300:]}")
        want = 1 + sum(len(d) + len(f) for _, d, f in os.walk(base)) + \
            SNAP_CREATE * len(plan)
        got = len(subprocess.run(["find", mnt], stdout=subprocess.PIPE, check=True)
                  .stdout.splitlines())
        if got != want or os.stat(os.path.join(mnt, hot)).st_size != hot_size:
            raise FixtureError(f"the mount shows {got} entries after the snapshots, not {want} "
                               f"(or {hot} is not {hot_size} bytes)")
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise FixtureError(f"snapshot layers: {type(e).__name__}: {e}") from e
    finally:
        if T.mounted(mnt):
            subprocess.run(["fusermount3", "-u", mnt], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        if proc is not None:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if T.mounted(mnt):
            subprocess.run(["umount", "-l", mnt])
        os.unlink(logpath)
        try:
            os.rmdir(mnt)
        except OSError:
            pass
    shutil.rmtree(upper)  # empty but for unionmount's work dir; run/upper is the timed one
    if len(snaps_layers(root)) != len(plan):
        raise FixtureError(f"{snaps_store(root)} holds {len(snaps_layers(root))} snapshots, "
                           f"not {len(plan)}")


# component name -> (generator, paths it owns relative to ROOT, parameter keys it uses)
COMPONENTS = {
    "tree": (_gen_tree, ["lower/tree", "tree.tar"], ["tree_files", "vendor", "third_party"]),
    "wide": (_gen_wide, ["lower/wide"], ["wide"]),
    "data": (_gen_data, ["lower/data"], ["big_mb", "medium_mb"]),
    "cproj": (_gen_cproj, ["lower/cproj"], ["c_files", "c_funcs"]),
    "layers": (_gen_layers32, ["layers32"], ["tree_files", "vendor", "third_party", "layers"]),
    "scale": (_gen_scale, ["scale"], ["scale_top", "scale_lower_files", "scale_max"]),
    "many": (_gen_many, ["many"], ["many_dirs", "many_per_dir"]),
    # after "tree", which it copies; made by the run's unionmount (ensure(unionmount=))
    "snaps": (_gen_snaps, ["snaps"], ["tree_files", "vendor", "third_party", "snapshots"]),
}


def _rm(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def ensure(root, p, need=None, unionmount=None):
    """Generate (or reuse) every component of the fixture in `need` (default: all);
    `unionmount`: the binary that takes the snapshots of "snaps". A component that fails
    (FixtureError) is removed again."""
    os.makedirs(root, exist_ok=True)
    for name, (gen, paths, keys) in COMPONENTS.items():
        if need is not None and name not in need:
            continue
        want = json.dumps({"v": VERSION, **{k: p[k] for k in keys}}, sort_keys=True)
        stamp = os.path.join(root, f".stamp-{name}")
        try:
            with open(stamp) as f:
                if f.read() == want:
                    continue
        except FileNotFoundError:
            pass
        t0 = time.monotonic()
        _rm(stamp)
        for rel in paths:
            _rm(os.path.join(root, rel))
        try:
            if name == "snaps":
                gen(root, p, unionmount)
            else:
                gen(root, p)
        except FixtureError:
            for rel in paths:
                _rm(os.path.join(root, rel))
            raise
        os.sync()
        with open(stamp, "w") as f:
            f.write(want)
        _log(f"{name}: generated in {time.monotonic() - t0:.1f}s")
