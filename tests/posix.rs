//! POSIX timestamps through the mount, side by side with a plain ext4 directory.
//!
//! Every case runs the same operation on four sides: a plain directory on ext4 (the
//! reference), and through one unionmount mount whose branches sit on the same ext4
//! filesystem, with the case's files starting in the upper (`u`), in the lower (`l`), or in
//! the lower below a directory present in both (`m`, a merged directory). For each observed
//! path the test records which of atime, mtime and ctime the operation changed: `-` kept,
//! `+` set to the current time, `S` set to the explicit value asked for, never absolute
//! values. The ext4 side must match what POSIX (and Linux) say; the union sides must match
//! ext4 except for the differences listed in README ("Differences from a local
//! filesystem"), which are asserted here explicitly.
//!
//! The ext4 filesystem is a loop-mounted image with known atime options (relatime, the
//! default; strictatime for the read/readdir test), so the comparison does not depend on
//! what /tmp is. Without loop devices the relatime test falls back to /tmp if that is ext4.
//!
//! Last, what a copy-up keeps of a file's privileges (owner, set-id bits, ACL,
//! security.capability), side by side with a plain directory on the branches' filesystem.
mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Times every setup entry starts with: atime in 2001, mtime in 2004 (atime older than
/// mtime, so a relatime filesystem updates atime on the first read).
const OLD_A: i64 = 1_000_000_000;
const OLD_M: i64 = 1_100_000_000;
/// Explicit times the utimensat cases set.
const SET_A: (i64, i64) = (1_200_000_000, 123);
const SET_M: (i64, i64) = (1_300_000_000, 456);
const EXT4_SUPER_MAGIC: i64 = 0xEF53;

// ---------------------------------------------------------------------------------------------
// An ext4 filesystem to compare with
// ---------------------------------------------------------------------------------------------

/// A directory on ext4: a loop-mounted image (unmounted on drop), or a plain temp dir when
/// the temp filesystem is ext4 itself and loop devices are unavailable.
struct Ext4 {
    dir: PathBuf,
    loop_mounted: bool,
    _tmp: tempfile::TempDir,
}

fn run_quiet(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn statfs_type(p: &Path) -> i64 {
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::statfs(cstr(p).as_ptr(), &mut s) }).unwrap();
    s.f_type
}

impl Ext4 {
    /// A fresh ext4 image mounted with `-o loop,OPTS`.
    fn loop_mount(opts: &str) -> Result<Ext4, String> {
        let tmp = tempfile::Builder::new()
            .prefix("unionmount-posix.")
            .tempdir()
            .unwrap();
        let img = tmp.path().join("ext4.img");
        let dir = tmp.path().join("fs");
        fs::create_dir(&dir).unwrap();
        File::create(&img).unwrap().set_len(64 << 20).unwrap();
        run_quiet(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))?;
        run_quiet(
            Command::new("mount")
                .args(["-t", "ext4", "-o", &format!("loop,{opts}")])
                .arg(&img)
                .arg(&dir),
        )?;
        Ok(Ext4 {
            dir,
            loop_mounted: true,
            _tmp: tmp,
        })
    }

    /// A relatime ext4 directory: a loop mount, else the temp dir if it is ext4 (relatime
    /// is the kernel's default); `None` (with a note on stderr) if neither is possible.
    fn relatime() -> Option<Ext4> {
        let err = match Ext4::loop_mount("relatime") {
            Ok(e) => return Some(e),
            Err(e) => e,
        };
        let tmp = tempfile::Builder::new()
            .prefix("unionmount-posix.")
            .tempdir()
            .unwrap();
        if statfs_type(tmp.path()) == EXT4_SUPER_MAGIC {
            eprintln!("posix: no loop device ({err}); using the temp dir, which is ext4");
            return Some(Ext4 {
                dir: tmp.path().canonicalize().unwrap(),
                loop_mounted: false,
                _tmp: tmp,
            });
        }
        eprintln!("posix: SKIPPED: no loop device ({err}) and the temp dir is not ext4");
        None
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if self.loop_mounted && run_quiet(Command::new("umount").arg(&self.dir)).is_err() {
            let _ = run_quiet(Command::new("umount").arg("-l").arg(&self.dir));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------------------------

type Ts = (i64, i64);

#[derive(Debug, Clone, Copy, PartialEq)]
struct Times {
    a: Ts,
    m: Ts,
    c: Ts,
}

fn times(p: &Path) -> Option<Times> {
    let md = fs::symlink_metadata(p).ok()?;
    Some(Times {
        a: (md.atime(), md.atime_nsec()),
        m: (md.mtime(), md.mtime_nsec()),
        c: (md.ctime(), md.ctime_nsec()),
    })
}

/// The kernel stamps files from the coarse clock (or a finer one, never earlier), so a
/// coarse reading taken before an operation is <= every timestamp it makes.
fn coarse_now() -> Ts {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut t) };
    (t.tv_sec, t.tv_nsec)
}

/// Wait until the coarse clock is past `t`, so that anything stamped from now on differs
/// from a timestamp already present (one clock tick, a few ms).
fn wait_past(t: Ts) {
    while coarse_now() <= t {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// How one timestamp moved: `-` kept, `+` set to now, `S` set to the explicit value of the
/// utimensat cases, else the odd value itself.
fn class(before: Option<Ts>, after: Ts, now: Ts, explicit: Ts) -> String {
    if before == Some(after) {
        "-".into()
    } else if after == explicit {
        "S".into()
    } else if after >= now {
        "+".into()
    } else {
        format!("?{}.{:09}", after.0, after.1)
    }
}

fn row(before: Option<Times>, after: Option<Times>, now: Ts) -> String {
    match after {
        None => "gone".into(),
        Some(t) => format!(
            "a{} m{} c{}",
            class(before.map(|b| b.a), t.a, now, SET_A),
            class(before.map(|b| b.m), t.m, now, SET_M),
            class(before.map(|b| b.c), t.c, now, (-1, -1)),
        ),
    }
}

/// Set atime/mtime of every entry below `dir` (not following symlinks) to the old values.
fn age_tree(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            age_tree(&p);
        }
        set_times(&p, (OLD_A, 0), (OLD_M, 0));
    }
    set_times(dir, (OLD_A, 0), (OLD_M, 0));
}

fn set_times(p: &Path, a: Ts, m: Ts) {
    utimens(p, a, m).unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

fn utimens(p: &Path, a: Ts, m: Ts) -> std::io::Result<()> {
    let ts = |t: Ts| libc::timespec {
        tv_sec: t.0 as libc::time_t,
        tv_nsec: t.1 as _,
    };
    let times = [ts(a), ts(m)];
    cvt(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(p).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

const NOW: Ts = (0, libc::UTIME_NOW);
const OMIT: Ts = (0, libc::UTIME_OMIT);

// ---------------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------------

struct Case {
    name: &'static str,
    /// Builds the case's entries in a branch (or the plain directory), before any mount.
    setup: fn(&Path),
    /// Runs before the "before" snapshot, through the view (e.g. a first read).
    pre: fn(&Path),
    /// The operation, through the view.
    op: fn(&Path),
    /// Paths (relative to the case directory; "." is the directory) and what POSIX on
    /// ext4 shows for each after the operation.
    expect: &'static [(&'static str, &'static str)],
}

fn nothing(_: &Path) {}
fn file_f(d: &Path) {
    put(&d.join("f"), "data");
}
fn dirs_a_b(d: &Path) {
    put(&d.join("a/f"), "data");
    mkdir_p(&d.join("b"));
}
fn read_all(p: &Path) {
    let mut s = String::new();
    File::open(p).unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "data");
}
fn list(p: &Path) {
    assert!(fs::read_dir(p).unwrap().count() > 0);
}
fn wo(p: &Path) -> File {
    OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}
fn truncate(p: &Path, len: i64) {
    cvt(unsafe { libc::truncate(cstr(p).as_ptr(), len) }).unwrap();
}

const UNCHANGED: &str = "a- m- c-";
const CHANGED: &str = "a- m+ c+";
const CTIME: &str = "a- m- c+";
const NEW: &str = "a+ m+ c+";

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "create",
            setup: nothing,
            pre: nothing,
            op: |d| drop(File::create(d.join("new")).unwrap()),
            expect: &[(".", CHANGED), ("new", NEW)],
        },
        Case {
            name: "write",
            setup: file_f,
            pre: nothing,
            op: |d| {
                let mut f = OpenOptions::new().append(true).open(d.join("f")).unwrap();
                f.write_all(b"more").unwrap();
            },
            expect: &[(".", UNCHANGED), ("f", CHANGED)],
        },
        Case {
            name: "open-O_TRUNC",
            setup: file_f,
            pre: nothing,
            op: |d| {
                let f = OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(d.join("f"));
                drop(f.unwrap());
            },
            expect: &[(".", UNCHANGED), ("f", CHANGED)],
        },
        Case {
            name: "ftruncate",
            setup: file_f,
            pre: nothing,
            op: |d| wo(&d.join("f")).set_len(2).unwrap(),
            expect: &[(".", UNCHANGED), ("f", CHANGED)],
        },
        // Linux's ftruncate marks the times even when the size does not change.
        Case {
            name: "ftruncate-same-size",
            setup: file_f,
            pre: nothing,
            op: |d| wo(&d.join("f")).set_len(4).unwrap(),
            expect: &[(".", UNCHANGED), ("f", CHANGED)],
        },
        Case {
            name: "truncate",
            setup: file_f,
            pre: nothing,
            op: |d| truncate(&d.join("f"), 1),
            expect: &[(".", UNCHANGED), ("f", CHANGED)],
        },
        // POSIX asks for the times only "if the size changed"; ext4 marks them anyway.
        Case {
            name: "truncate-same-size",
            setup: file_f,
            pre: nothing,
            op: |d| truncate(&d.join("f"), 4),
            expect: &[(".", UNCHANGED), ("f", CHANGED)],
        },
        Case {
            name: "open-O_WRONLY-no-write",
            setup: file_f,
            pre: nothing,
            op: |d| drop(wo(&d.join("f"))),
            expect: &[(".", UNCHANGED), ("f", UNCHANGED)],
        },
        Case {
            name: "chmod",
            setup: file_f,
            pre: nothing,
            op: |d| fs::set_permissions(d.join("f"), fs::Permissions::from_mode(0o600)).unwrap(),
            expect: &[(".", UNCHANGED), ("f", CTIME)],
        },
        Case {
            name: "chmod-dir",
            setup: |d| put(&d.join("s/x"), "x"),
            pre: nothing,
            op: |d| fs::set_permissions(d.join("s"), fs::Permissions::from_mode(0o700)).unwrap(),
            expect: &[(".", UNCHANGED), ("s", CTIME)],
        },
        Case {
            name: "chown",
            setup: file_f,
            pre: nothing,
            op: |d| chown(&d.join("f"), 1234, 5678),
            expect: &[(".", UNCHANGED), ("f", CTIME)],
        },
        Case {
            name: "utimensat-explicit",
            setup: file_f,
            pre: nothing,
            op: |d| utimens(&d.join("f"), SET_A, SET_M).unwrap(),
            expect: &[(".", UNCHANGED), ("f", "aS mS c+")],
        },
        Case {
            name: "utimensat-UTIME_NOW",
            setup: file_f,
            pre: nothing,
            op: |d| utimens(&d.join("f"), NOW, NOW).unwrap(),
            expect: &[(".", UNCHANGED), ("f", NEW)],
        },
        Case {
            name: "utimensat-OMIT-atime",
            setup: file_f,
            pre: nothing,
            op: |d| utimens(&d.join("f"), OMIT, SET_M).unwrap(),
            expect: &[(".", UNCHANGED), ("f", "a- mS c+")],
        },
        Case {
            name: "utimensat-NOW-atime-OMIT-mtime",
            setup: file_f,
            pre: nothing,
            op: |d| utimens(&d.join("f"), NOW, OMIT).unwrap(),
            expect: &[(".", UNCHANGED), ("f", "a+ m- c+")],
        },
        Case {
            name: "link",
            setup: dirs_a_b,
            pre: nothing,
            op: |d| fs::hard_link(d.join("a/f"), d.join("b/g")).unwrap(),
            expect: &[
                ("a", UNCHANGED),
                ("a/f", CTIME),
                ("b", CHANGED),
                ("b/g=a/f", CTIME),
            ],
        },
        Case {
            name: "unlink",
            setup: |d| {
                file_f(d);
                fs::hard_link(d.join("f"), d.join("h")).unwrap();
            },
            pre: nothing,
            op: |d| fs::remove_file(d.join("f")).unwrap(),
            expect: &[(".", CHANGED), ("f", "gone"), ("h", CTIME)],
        },
        Case {
            name: "rename-across-dirs",
            setup: dirs_a_b,
            pre: nothing,
            op: |d| fs::rename(d.join("a/f"), d.join("b/g")).unwrap(),
            expect: &[("a", CHANGED), ("b", CHANGED), ("b/g=a/f", CTIME)],
        },
        Case {
            name: "rename-in-dir",
            setup: file_f,
            pre: nothing,
            op: |d| fs::rename(d.join("f"), d.join("g")).unwrap(),
            expect: &[(".", CHANGED), ("g=f", CTIME)],
        },
        Case {
            name: "rename-over-file",
            setup: |d| {
                file_f(d);
                put(&d.join("g"), "old g");
            },
            pre: nothing,
            op: |d| fs::rename(d.join("f"), d.join("g")).unwrap(),
            expect: &[(".", CHANGED), ("g=f", CTIME)],
        },
        Case {
            name: "rename-dir",
            setup: |d| {
                put(&d.join("a/s/x"), "x");
                mkdir_p(&d.join("b"));
            },
            pre: nothing,
            op: |d| fs::rename(d.join("a/s"), d.join("b/t")).unwrap(),
            expect: &[
                ("a", CHANGED),
                ("b", CHANGED),
                ("b/t=a/s", CTIME),
                ("b/t/x=a/s/x", UNCHANGED),
            ],
        },
        Case {
            name: "mkdir",
            setup: nothing,
            pre: nothing,
            op: |d| fs::create_dir(d.join("new")).unwrap(),
            expect: &[(".", CHANGED), ("new", NEW)],
        },
        Case {
            name: "rmdir",
            setup: |d| mkdir_p(&d.join("s")),
            pre: nothing,
            op: |d| fs::remove_dir(d.join("s")).unwrap(),
            expect: &[(".", CHANGED), ("s", "gone")],
        },
        Case {
            name: "symlink",
            setup: nothing,
            pre: nothing,
            op: |d| std::os::unix::fs::symlink("target", d.join("sym")).unwrap(),
            expect: &[(".", CHANGED), ("sym", NEW)],
        },
        Case {
            name: "mkfifo",
            setup: nothing,
            pre: nothing,
            op: |d| mkfifo(&d.join("p"), 0o644).unwrap(),
            expect: &[(".", CHANGED), ("p", NEW)],
        },
        Case {
            name: "setxattr",
            setup: file_f,
            pre: nothing,
            op: |d| xattr::set(d.join("f"), "user.t", b"v").unwrap(),
            expect: &[(".", UNCHANGED), ("f", CTIME)],
        },
        Case {
            name: "removexattr",
            setup: |d| {
                file_f(d);
                xattr::set(d.join("f"), "user.t", b"v").unwrap();
            },
            pre: nothing,
            op: |d| xattr::remove(d.join("f"), "user.t").unwrap(),
            expect: &[(".", UNCHANGED), ("f", CTIME)],
        },
        // relatime: the first read after the file changed (atime older than mtime) marks
        // atime; a second one does not.
        Case {
            name: "read",
            setup: file_f,
            pre: nothing,
            op: |d| read_all(&d.join("f")),
            expect: &[(".", UNCHANGED), ("f", "a+ m- c-")],
        },
        Case {
            name: "read-again",
            setup: file_f,
            pre: |d| read_all(&d.join("f")),
            op: |d| read_all(&d.join("f")),
            expect: &[("f", UNCHANGED)],
        },
        Case {
            name: "readdir",
            setup: |d| put(&d.join("s/x"), "x"),
            pre: nothing,
            op: |d| list(&d.join("s")),
            expect: &[(".", UNCHANGED), ("s", "a+ m- c-"), ("s/x", UNCHANGED)],
        },
        Case {
            name: "readdir-again",
            setup: |d| put(&d.join("s/x"), "x"),
            pre: |d| list(&d.join("s")),
            op: |d| list(&d.join("s")),
            expect: &[("s", UNCHANGED)],
        },
    ]
}

/// Where a case's files start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The plain ext4 directory.
    Ext4,
    /// In the upper branch.
    Upper,
    /// In the lower branch only.
    Lower,
    /// Files in the lower, every directory in both (merged).
    Merged,
}

const UNION_SIDES: [Side; 3] = [Side::Upper, Side::Lower, Side::Merged];

impl Side {
    fn prefix(self) -> &'static str {
        match self {
            Side::Ext4 => "p",
            Side::Upper => "u",
            Side::Lower => "l",
            Side::Merged => "m",
        }
    }
}

/// An observed path: "new=old" is `new` after the operation compared with `old` before it
/// (a renamed or linked file).
fn was(p: &str) -> &str {
    p.split_once('=').map_or(p, |(_, old)| old)
}
fn is(p: &str) -> &str {
    p.split_once('=').map_or(p, |(new, _)| new)
}

/// Rows a union side shows instead of the reference: (case, side, path, row).
type Diffs = Vec<(&'static str, Side, &'static str, &'static str)>;

/// Copy-ups that happen in each case on the lower and merged sides.
const COPY_UP_CASES: &[&str] = &[
    "write",
    "open-O_TRUNC",
    "ftruncate",
    "ftruncate-same-size",
    "truncate",
    "truncate-same-size",
    "open-O_WRONLY-no-write",
    "chmod",
    "chmod-dir",
    "chown",
    "utimensat-explicit",
    "utimensat-UTIME_NOW",
    "utimensat-OMIT-atime",
    "utimensat-NOW-atime-OMIT-mtime",
    "setxattr",
    "removexattr",
];

/// What the daemon does differently from ext4 on purpose (README, "Differences from a local
/// filesystem"), seen with `-o timeout=0` (no attribute caching).
fn union_differences() -> Diffs {
    let mut v = Vec::new();
    for side in [Side::Lower, Side::Merged] {
        // A copy-up makes a new upper inode: its ctime is the time of the copy, also where
        // the operation itself changes nothing (an open for writing that writes nothing).
        v.push(("open-O_WRONLY-no-write", side, "f", CTIME));
        // A copy-up puts a new entry into the upper parent directory (and may create that
        // directory first): its atime and mtime are restored afterwards, its ctime cannot be.
        // (On the merged side the directory chmod-dir changes is in the upper already.)
        for case in COPY_UP_CASES {
            if side == Side::Lower || *case != "chmod-dir" {
                v.push((case, side, ".", CTIME));
            }
        }
        v.push(("link", side, "a", CTIME));
    }
    v
}

/// Where the kernel's attribute cache (`-o timeout`, 1 s by default) shows what the daemon
/// changed on its own a little late: the parent directory of a copy-up, and a file copied
/// up by an open that changes nothing else. Rows seen with a long timeout, compared with
/// the same side at `-o timeout=0`.
fn cache_differences() -> Diffs {
    let mut v = Vec::new();
    for (case, side, path, _) in union_differences() {
        if path == "." || path == "a" || case == "open-O_WRONLY-no-write" {
            v.push((case, side, path, UNCHANGED));
        }
    }
    v
}

/// The rows (path -> row) a case produced on one side.
type Rows = BTreeMap<String, String>;
type Results = BTreeMap<&'static str, Rows>;

/// Run every case in `view/<prefix>/<case>/` and return the observed rows per case.
fn run_cases(view: &Path, side: Side, cases: &[Case]) -> Results {
    let mut out = BTreeMap::new();
    for case in cases {
        let d = view.join(side.prefix()).join(case.name);
        (case.pre)(&d);
        let before: Vec<Option<Times>> = case
            .expect
            .iter()
            .map(|(p, _)| times(&d.join(was(p))))
            .collect();
        let newest = before
            .iter()
            .flatten()
            .flat_map(|t| [t.a, t.m, t.c])
            .max()
            .unwrap_or((0, 0));
        wait_past(newest);
        let now = coarse_now();
        (case.op)(&d);
        let rows = case
            .expect
            .iter()
            .zip(&before)
            .map(|((p, _), b)| (p.to_string(), row(*b, times(&d.join(is(p))), now)))
            .collect();
        out.insert(case.name, rows);
    }
    out
}

/// Build every case's entries for `side` below `branch/<prefix>/`.
fn setup_cases(branch: &Path, side: Side, cases: &[Case]) {
    for case in cases {
        let d = branch.join(side.prefix()).join(case.name);
        mkdir_p(&d);
        (case.setup)(&d);
    }
}

/// Make every directory below `lower` in `upper` too (the merged side).
fn mirror_dirs(lower: &Path, upper: &Path) {
    mkdir_p(upper);
    for e in fs::read_dir(lower).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            mirror_dirs(&e.path(), &upper.join(e.file_name()));
        }
    }
}

/// Type, mode, owner, size, mtime and content of every entry below `dir`; files are read
/// with O_NOATIME (directory listings do mark atimes).
fn quiet_snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    walk_tree(dir, |p, md| {
        let data = quiet_content(p, md);
        let e = format!(
            "{:o} {}:{} {} {}.{} {:?}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            String::from_utf8_lossy(&data)
        );
        out.insert(p.to_path_buf(), e);
    });
    out
}

/// Mount `upper` over `lower` at `mnt` with `opts`, run the union sides, unmount, and check
/// the lower kept its contents. (The guard's own snapshot is not used: it reads every
/// file, which would mark the lower's atimes before the cases run.)
fn union_results(root: &Path, tag: &str, opts: &[&str], cases: &[Case]) -> Vec<(Side, Results)> {
    let (upper, lower, mnt) = (
        root.join(format!("upper-{tag}")),
        root.join(format!("lower-{tag}")),
        root.join(format!("mnt-{tag}")),
    );
    for d in [&upper, &lower, &mnt] {
        mkdir_p(d);
    }
    for side in UNION_SIDES {
        let branch = if side == Side::Upper { &upper } else { &lower };
        setup_cases(branch, side, cases);
    }
    mirror_dirs(&lower.join("m"), &upper.join("m"));
    age_tree(&upper);
    age_tree(&lower);
    let lower_before = quiet_snapshot(&lower);
    // Listing the lower marked its directories' atimes: put them back.
    age_tree(&lower);
    let mut args: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
    args.push(format!("{}=RW:{}=RO", upper.display(), lower.display()));
    args.push(mnt.display().to_string());
    let log = root.join(format!("unionmount-{tag}.log"));
    let m = Mount::start(args, &mnt, &log, Vec::new());
    let out = UNION_SIDES
        .iter()
        .map(|side| (*side, run_cases(&mnt, *side, cases)))
        .collect();
    m.unmount();
    assert_eq!(
        lower_before,
        quiet_snapshot(&lower),
        "the lower branch changed"
    );
    out
}

fn table(columns: &[(String, &Results)], cases: &[Case]) -> String {
    let mut s = format!("{:<31} {:<9}", "case", "path");
    for (name, _) in columns {
        s += &format!(" {name:<14}");
    }
    s += "\n";
    for case in cases {
        for (p, _) in case.expect {
            s += &format!("{:<31} {:<9}", case.name, p);
            for (_, rows) in columns {
                s += &format!(" {:<14}", rows[case.name][*p]);
            }
            s += "\n";
        }
    }
    s
}

/// Compare `got` with `base` row by row; rows listed in `diffs` for `side` must instead be
/// what the list says (and, for a single value, differ from `base`: a documented difference
/// that went away is reported too, so README stays true).
fn compare(
    what: &str,
    side: Side,
    got: &Results,
    base: &Results,
    diffs: &Diffs,
    cases: &[Case],
    failures: &mut Vec<String>,
) {
    for case in cases {
        for (p, _) in case.expect {
            let (got, want) = (&got[case.name][*p], &base[case.name][*p]);
            let documented = diffs
                .iter()
                .find(|(c, s, dp, _)| *c == case.name && *s == side && dp == p);
            // A documented row is one value, or alternatives "x|y" where either may show.
            let fits = |row: &str| row.split('|').any(|r| r == got);
            let differs = |row: &str| row.contains('|') || row != want;
            match documented {
                Some((_, _, _, row)) if !fits(row) || !differs(row) => failures.push(format!(
                    "{what} {}: {p}: {got}; documented as {row} (against {want})",
                    case.name
                )),
                None if got != want => {
                    failures.push(format!("{what} {}: {p}: {got}, expected {want}", case.name))
                }
                _ => {}
            }
        }
    }
}

/// Run `cases` on ext4 (checked against their POSIX rows), then through a mount without
/// attribute caching (`timeout=0`: what the daemon does; compared with ext4 but for
/// `udiffs`) and through one that caches for the whole test (what a user sees right after
/// an operation; compared with the first mount but for `cdiffs`).
fn compare_with_ext4(ext4: &Ext4, cases: &[Case], udiffs: &Diffs, cdiffs: &Diffs) {
    let root = &ext4.dir;
    let plain = root.join("plain");
    setup_cases(&plain, Side::Ext4, cases);
    age_tree(&plain);
    let ext4_rows = run_cases(&plain, Side::Ext4, cases);
    let fresh = union_results(root, "fresh", &["-o", "timeout=0"], cases);
    let cached = union_results(root, "cached", &["-o", "timeout=3600"], cases);

    let mut columns = vec![("ext4".to_string(), &ext4_rows)];
    for (side, rows) in &fresh {
        columns.push((format!("{side:?}"), rows));
    }
    for (side, rows) in &cached {
        columns.push((format!("{side:?} cached"), rows));
    }
    let tbl = table(&columns, cases);
    eprintln!("{tbl}");

    let mut failures = Vec::new();
    for case in cases {
        for (p, want) in case.expect {
            let got = &ext4_rows[case.name][*p];
            if got != want {
                failures.push(format!("ext4 {}: {p}: {got}, POSIX: {want}", case.name));
            }
        }
    }
    for ((side, f), (_, c)) in fresh.iter().zip(&cached) {
        let what = format!("{side:?}");
        compare(&what, *side, f, &ext4_rows, udiffs, cases, &mut failures);
        let what = format!("{side:?} cached");
        compare(&what, *side, c, f, cdiffs, cases, &mut failures);
    }
    assert!(failures.is_empty(), "{}\n\n{tbl}", failures.join("\n"));
}

/// Every case under relatime (the kernel's default, and what the branches use).
#[test]
fn timestamps_match_ext4() {
    if !is_root() {
        eprintln!("posix: SKIPPED: needs root (loop mount, chown)");
        return;
    }
    let Some(ext4) = Ext4::relatime() else {
        return;
    };
    compare_with_ext4(&ext4, &cases(), &union_differences(), &cache_differences());
}

/// Reads and listings under strictatime, where every one marks atime.
#[test]
fn atime_under_strictatime() {
    if !is_root() {
        eprintln!("posix: SKIPPED: needs root (loop mount)");
        return;
    }
    let ext4 = match Ext4::loop_mount("strictatime") {
        Ok(e) => e,
        Err(e) => {
            eprintln!("posix: SKIPPED: cannot loop-mount ext4 with strictatime: {e}");
            return;
        }
    };
    let cases = vec![
        Case {
            name: "read",
            setup: file_f,
            pre: nothing,
            op: |d| read_all(&d.join("f")),
            expect: &[(".", UNCHANGED), ("f", "a+ m- c-")],
        },
        Case {
            name: "read-again",
            setup: file_f,
            pre: |d| read_all(&d.join("f")),
            op: |d| read_all(&d.join("f")),
            expect: &[("f", "a+ m- c-")],
        },
        Case {
            name: "readdir",
            setup: |d| put(&d.join("s/x"), "x"),
            pre: nothing,
            op: |d| list(&d.join("s")),
            expect: &[(".", UNCHANGED), ("s", "a+ m- c-")],
        },
        Case {
            name: "readdir-again",
            setup: |d| put(&d.join("s/x"), "x"),
            pre: |d| list(&d.join("s")),
            op: |d| list(&d.join("s")),
            expect: &[("s", "a+ m- c-")],
        },
    ];
    // Lower files of a writable stack are read through the daemon with the page cache
    // kept: a read the cache serves never reaches a branch, so it marks no atime.
    // Listings: the kernel may keep a directory's listing while its layers are unchanged
    // and serve a second one from that cache (the daemon decides at opendir).
    let mut udiffs = vec![
        ("read-again", Side::Lower, "f", UNCHANGED),
        ("read-again", Side::Merged, "f", UNCHANGED),
    ];
    // Without passthrough upper files are read through the page cache too.
    if suite_without_passthrough() {
        udiffs.push(("read-again", Side::Upper, "f", UNCHANGED));
    }
    for side in UNION_SIDES {
        udiffs.push(("readdir-again", side, "s", "a- m- c-|a+ m- c-"));
    }
    compare_with_ext4(&ext4, &cases, &udiffs, &Vec::new());
}

/// `-o noatime`: reads and listings through the mount mark no access time, neither through
/// the mount nor on the branch files the daemon reads (which a noatime mount is often asked
/// for). (Once: accepted and ignored.)
#[test]
fn noatime_mount_option_is_honoured() {
    let fx = Fixture::new(1);
    put(&fx.u("f"), "data");
    put(&fx.l(0, "g"), "data");
    put(&fx.l(0, "d/x"), "x");
    for p in [fx.u("f"), fx.l(0, "g"), fx.l(0, "d")] {
        set_times(&p, (OLD_A, 0), (OLD_M, 0));
    }
    let args = vec![
        "-o".to_string(),
        "noatime".to_string(),
        fx.spec(),
        fx.mnt.display().to_string(),
    ];
    let m = Mount::start(args, &fx.mnt, &fx.log, Vec::new());
    read_all(&fx.m("f"));
    read_all(&fx.m("g"));
    list(&fx.m("d"));
    for (p, branch) in [("f", fx.u("f")), ("g", fx.l(0, "g")), ("d", fx.l(0, "d"))] {
        let a = |p: &Path| times(p).unwrap().a;
        assert_eq!(a(&fx.m(p)), (OLD_A, 0), "atime of {p} through the mount");
        assert_eq!(a(&branch), (OLD_A, 0), "atime of {}", branch.display());
    }
    drop(m);
}

// ---------------------------------------------------------------------------------------------
// Set-id bits, file capabilities and ACLs across copy-up
// ---------------------------------------------------------------------------------------------

/// A version-2 file capability (cap_net_raw permitted), as `setcap cap_net_raw=p` writes it.
const FILE_CAP: [u8; 20] = [
    0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
const CAP_XATTR: &str = "security.capability";
const ACL_XATTR: &str = "system.posix_acl_access";

/// An access ACL in its xattr form: `mode`'s owner, group and other bits, and r-x for user
/// 1001 (the mask is the group bits, as a chmod leaves it).
fn acl_with_user_1001(mode: u32) -> Vec<u8> {
    const NO_ID: u32 = u32::MAX;
    let (u, g, o) = ((mode >> 6) & 7, (mode >> 3) & 7, mode & 7);
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, u, NO_ID),
        (0x02, 5, 1001),
        (0x04, g, NO_ID),
        (0x10, g, NO_ID),
        (0x20, o, NO_ID),
    ] {
        v.extend(tag.to_le_bytes());
        v.extend((perm as u16).to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

/// What a copy-up must carry over, and what a chown or a write may take away.
#[derive(PartialEq, Eq)]
struct Privs {
    uid: u32,
    gid: u32,
    mode: u32,
    cap: Option<Vec<u8>>,
    acl: Option<Vec<u8>>,
}

impl std::fmt::Debug for Privs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = |v: &Option<Vec<u8>>| match v {
            Some(v) => v.iter().map(|b| format!("{b:02x}")).collect(),
            None => "-".to_string(),
        };
        write!(
            f,
            "{}:{} {:o} cap {} acl {}",
            self.uid,
            self.gid,
            self.mode,
            hex(&self.cap),
            hex(&self.acl)
        )
    }
}

fn privs(p: &Path) -> Privs {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let x = |n: &str| xattr::get(p, n).unwrap_or_else(|e| panic!("{} {n}: {e}", p.display()));
    Privs {
        uid: md.uid(),
        gid: md.gid(),
        mode: md.mode() & 0o7777,
        cap: x(CAP_XATTR),
        acl: x(ACL_XATTR),
    }
}

/// A file of uid 1000, set-uid and set-gid, with an ACL and a capability (set last: the
/// chown would clear it).
fn privileged_file(p: &Path) {
    put(p, "data\n");
    chown(p, 1000, 1000);
    set_mode(p, 0o6755);
    xattr::set(p, ACL_XATTR, &acl_with_user_1001(0o755)).unwrap();
    xattr::set(p, CAP_XATTR, &FILE_CAP).unwrap();
}

fn open_for_write(p: &Path) {
    OpenOptions::new().write(true).open(p).unwrap();
}

fn append_line(p: &Path) {
    let mut f = OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(b"more\n").unwrap();
}

/// A change to the entry named: (name, change).
type PrivCase = (&'static str, fn(&Path));

/// Each case changes entry `name` of a plain directory and of the lower through the mount;
/// the entry must end up alike on both sides, and the upper copy too.
fn compare_privs(plain: &Path, fx: &Fixture, cases: &[PrivCase]) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, op) in cases {
        op(&plain.join(name));
        op(&fx.m(name));
    }
    for (name, _) in cases {
        let want = privs(&plain.join(name));
        for (side, p) in [("merged", fx.m(name)), ("upper", fx.u(name))] {
            let got = privs(&p);
            if got != want {
                failures.push(format!("{name} ({side}): {got:?}\n  plain dir: {want:?}"));
            }
        }
    }
    failures
}

/// A copy-up carries the owner, the set-id bits, the ACL and security.capability as they
/// were, whether it copies metadata only (chmod, utimens, setxattr), the data too (an open
/// for writing), completes a metadata-only copy, copies a hard-linked file or a directory.
/// A chown clears set-id bits and the capability, so the copy must be chowned before they
/// are set.
#[test]
fn copy_up_keeps_capability_setid_bits_and_acl() {
    let Some(fx) = Fixture::as_root(1, "posix: SKIPPED: needs root (chown, security.capability)")
    else {
        return;
    };
    let plain = fx.root.join("plain");
    let cases: &[PrivCase] = &[
        ("chmod", |p| set_mode(p, 0o6711)),
        ("utimens", |p| set_times(p, SET_A, SET_M)),
        ("setxattr", |p| xattr::set(p, "user.t", b"v").unwrap()),
        ("open-for-write", open_for_write),
        ("chmod-then-open-for-write", |p| {
            set_mode(p, 0o6711);
            open_for_write(p);
        }),
        // Every write drops a capability; root's keeps the set-id bits.
        ("append", append_line),
        ("chmod-then-append", |p| {
            set_mode(p, 0o6711);
            append_line(p);
        }),
        ("linked", |p| set_mode(p, 0o6711)),
        ("linked.2", |_| {}),
        ("dir", |p| put(&p.join("new"), "new")),
    ];
    for side in [&plain, &fx.lowers[0]] {
        for (name, _) in cases {
            match *name {
                "linked.2" => fs::hard_link(side.join("linked"), side.join(name)).unwrap(),
                "dir" => {
                    let d = side.join(name);
                    mkdir_p(&d);
                    chown(&d, 1000, 1000);
                    set_mode(&d, 0o3775);
                    xattr::set(&d, ACL_XATTR, &acl_with_user_1001(0o775)).unwrap();
                }
                _ => privileged_file(&side.join(name)),
            }
        }
    }
    let m = fx.mount(&[]);
    let failures = compare_privs(&plain, &fx, cases);
    // What the plain directory shows, for the record (and to be sure the setup holds).
    assert_eq!(
        privs(&plain.join("chmod")).cap.as_deref(),
        Some(&FILE_CAP[..])
    );
    assert_eq!(privs(&plain.join("chmod")).mode, 0o6711);
    assert_eq!(privs(&plain.join("append")).cap, None);
    assert_eq!(privs(&plain.join("append")).mode, 0o6755);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(m);
}

/// A chown clears a capability (the kernel asks the filesystem to remove it first) and the
/// set-id bits, on a lower file as on ext4: the copy-up must not make that removal fail.
#[test]
fn chown_of_lower_file_with_capability_drops_it() {
    let Some(fx) = Fixture::as_root(1, "posix: SKIPPED: needs root (chown, security.capability)")
    else {
        return;
    };
    let plain = fx.root.join("plain");
    for side in [&plain, &fx.lowers[0]] {
        privileged_file(&side.join("to-root"));
        privileged_file(&side.join("to-same"));
    }
    let m = fx.mount(&[]);
    for (name, id) in [("to-root", 0), ("to-same", 1000)] {
        for p in [plain.join(name), fx.m(name)] {
            std::os::unix::fs::chown(&p, Some(id), Some(id))
                .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        }
    }
    let failures = compare_privs(&plain, &fx, &[("to-root", |_| {}), ("to-same", |_| {})]);
    assert_eq!(privs(&plain.join("to-root")).cap, None);
    assert_eq!(privs(&plain.join("to-root")).mode, 0o755);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(m);
}

/// A daemon without privilege (mounted with fusermount3) copies up the xattrs of a
/// read-only file (user.* ones need write permission, so before the mode), and a truncate
/// of a lower file with a capability works although the copy cannot carry it: the
/// kernel's removal of the capability first finds it gone.
#[test]
fn unprivileged_daemon_copies_up_read_only_file_and_capability() {
    let tools = ["/usr/bin/setpriv", "/usr/bin/perl"];
    if !is_root() || tools.iter().any(|t| !Path::new(t).exists()) {
        eprintln!("posix: SKIPPED: needs root to set up, setpriv and perl");
        return;
    }
    let fx = Fixture::new(1);
    put(&fx.l(0, "ro"), "ro\n");
    xattr::set(fx.l(0, "ro"), "user.k", b"v").unwrap();
    set_mode(&fx.l(0, "ro"), 0o444);
    put(&fx.l(0, "capped"), "capped\n");
    chown_r(&fx.root, 65534, 65534);
    xattr::set(fx.l(0, "capped"), CAP_XATTR, &FILE_CAP).unwrap();
    let script = r#"
"$BIN" "$ROOT/upper=RW:$ROOT/lower0=RO" "$ROOT/mnt"
trap 'fusermount3 -u "$ROOT/mnt"' EXIT
touch "$ROOT/mnt/ro"
perl -e 'truncate($ARGV[0], 3) or die "truncate $ARGV[0]: $!\n"' "$ROOT/mnt/capped"
"#;
    let out = run(as_user(65534)
        .args(["sh", "-euc", script])
        .env("BIN", BIN)
        .env("ROOT", &fx.root));
    wait_mounted(&fx.mnt, false);
    assert!(out.ok(), "{}", out.stderr);
    assert_eq!(mode_of(&fx.u("ro")), 0o444);
    assert_eq!(
        xattr::get(fx.u("ro"), "user.k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(read(&fx.u("capped")), "cap");
    assert_eq!(xattr::get(fx.u("capped"), CAP_XATTR).unwrap(), None);
    assert_eq!(read(&fx.l(0, "capped")), "capped\n");
}
