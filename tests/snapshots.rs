//! Snapshots and rollback of a live mount (issue #19): `unionmount snapshot`, `rollback` and
//! `snapshots`; the merged view across both, open descriptors, the kernel's caches,
//! persistence across a remount, crash safety at every step and under kill -9, concurrent
//! readers and writers against a reference model, and a stack 50 snapshots deep.
mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Helpers: the commands, the snapshot directory, trees
// ---------------------------------------------------------------------------------------------

/// `unionmount snapshot MNT [NAME]` run to completion.
fn snapshot_cmd(mnt: &Path, name: Option<&str>) -> Finished {
    let mut args = vec!["snapshot".to_string(), s(mnt)];
    args.extend(name.map(str::to_string));
    tool(args)
}

/// `unionmount rollback MNT [NAME]` run to completion.
fn rollback_cmd(mnt: &Path, name: Option<&str>) -> Finished {
    let mut args = vec!["rollback".to_string(), s(mnt)];
    args.extend(name.map(str::to_string));
    tool(args)
}

/// The snapshot directory of the fixture's upper: `UPPER.snapshots`, the upper's sibling.
fn store(fx: &Fixture) -> PathBuf {
    snapshot_store(&fx.upper)
}

/// Take a snapshot, which must succeed and say `snapshot NAME taken: DIR`; `seq` is the
/// sequence number its directory must carry. Returns DIR.
#[track_caller]
fn take(fx: &Fixture, name: Option<&str>, seq: u32) -> PathBuf {
    let out = snapshot_cmd(&fx.mnt, name);
    assert!(
        out.ok(),
        "unionmount snapshot {:?} failed ({}): {}{}",
        name,
        out.status,
        out.stdout,
        out.stderr
    );
    let shown = name.map_or_else(|| format!("snap-{seq}"), str::to_string);
    let dir = store(fx).join(format!("{seq:04}-{shown}"));
    assert_eq!(
        out.stdout,
        format!("snapshot {shown} taken: {}\n", dir.display()),
        "what `unionmount snapshot` says"
    );
    assert!(dir.is_dir(), "{} is not a directory", dir.display());
    dir
}

/// Roll back, which must succeed and say `rolled back to SHOWN`.
#[track_caller]
fn rollback(fx: &Fixture, name: Option<&str>, shown: &str) {
    let out = rollback_cmd(&fx.mnt, name);
    assert!(
        out.ok(),
        "unionmount rollback {:?} failed ({}): {}{}",
        name,
        out.status,
        out.stdout,
        out.stderr
    );
    assert_eq!(out.stdout, format!("rolled back to {shown}\n"));
}

/// A command that must fail with exit status 1, a message on stderr and nothing on stdout.
#[track_caller]
fn assert_refused(out: &Finished, what: &str) {
    assert_eq!(
        out.code(),
        1,
        "{what}: exit status (stdout {:?}, stderr {:?})",
        out.stdout,
        out.stderr
    );
    assert!(
        !out.stderr.trim().is_empty(),
        "{what}: no message on stderr"
    );
    assert!(out.stdout.is_empty(), "{what}: stdout {:?}", out.stdout);
}

/// One row of `unionmount snapshots`.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    name: String,
    entries: u64,
    dir: PathBuf,
}

/// `unionmount snapshots MNT`, parsed: the snapshots' rows, oldest first. Checks the
/// header, the TAKEN column and the last row, `(upper)`, which names the upper.
#[track_caller]
fn listed(fx: &Fixture) -> Vec<Row> {
    let out = tool_ok(["snapshots".to_string(), s(&fx.mnt)]);
    let lines: Vec<&str> = out.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "TAKEN", "ENTRIES", "SIZE", "DIRECTORY"],
        "{out}"
    );
    let last: Vec<&str> = lines.last().unwrap().split_whitespace().collect();
    assert_eq!(last.len(), 6, "the (upper) row: {out}");
    assert_eq!((last[0], last[1]), ("(upper)", "-"), "{out}");
    assert_eq!(last[5], s(&fx.upper), "{out}");
    lines[1..lines.len() - 1]
        .iter()
        .map(|l| {
            // NAME  YYYY-MM-DD HH:MM:SS UTC  ENTRIES  N UNIT  DIRECTORY
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 8, "a snapshot row: {l:?}");
            assert!(
                f[1].len() == 10 && f[2].len() == 8 && f[3] == "UTC",
                "TAKEN in {l:?}"
            );
            Row {
                name: f[0].to_string(),
                entries: f[4].parse().unwrap_or_else(|_| panic!("ENTRIES in {l:?}")),
                dir: PathBuf::from(f[7]),
            }
        })
        .collect()
}

/// The names `unionmount snapshots` lists, oldest first.
#[track_caller]
fn listed_names(fx: &Fixture) -> Vec<String> {
    listed(fx).into_iter().map(|r| r.name).collect()
}

/// Nothing half-done: no journal (nor a half-written one), pending upper or trash in the
/// snapshot directory, and no copies directory (`.wh..wh..snap`) in the upper or any
/// snapshot. A live rollback empties its trash in the background: waited for.
#[track_caller]
fn assert_nothing_half_done(fx: &Fixture, when: &str) {
    let st = store(fx);
    let trash = st.join(".trash");
    assert!(
        eventually(Duration::from_secs(10), || !lexists(&trash)),
        "{when}: {} is still there after 10 s",
        trash.display()
    );
    for n in [".journal", ".pending", ".journal.tmp"] {
        assert!(
            !lexists(&st.join(n)),
            "{when}: {} is left",
            st.join(n).display()
        );
    }
    for dir in std::iter::once(fx.upper.clone()).chain(snapshot_layers(&st)) {
        let copies = dir.join(".wh..wh..snap");
        assert!(!lexists(&copies), "{when}: {} is left", copies.display());
    }
}

/// Every entry below `dir` (not `dir` itself) by relative path: `file MODE CONTENT`,
/// `dir MODE`, `symlink TARGET`, or the type. Compared with a reference model.
type Tree = BTreeMap<String, String>;

fn tree_of(dir: &Path) -> Tree {
    let mut out = Tree::new();
    walk_tree(dir, |p, md| {
        let rel = p.strip_prefix(dir).unwrap().display().to_string();
        if rel.is_empty() {
            return;
        }
        let mode = md.mode() & 0o7777;
        let v = if md.is_file() {
            format!(
                "file {mode:o} {:?}",
                String::from_utf8_lossy(&fs::read(p).unwrap())
            )
        } else if md.is_dir() {
            format!("dir {mode:o}")
        } else if md.file_type().is_symlink() {
            format!("symlink {}", fs::read_link(p).unwrap().display())
        } else {
            format!("other {:?}", md.file_type())
        };
        out.insert(rel, v);
    });
    out
}

/// Human-readable differences between two trees ("" if equal).
fn tree_diff(got: &Tree, want: &Tree) -> String {
    let keys: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    let mut d = String::new();
    for k in keys {
        if got.get(k) != want.get(k) {
            d += &format!("  {k}: got {:?}, want {:?}\n", got.get(k), want.get(k));
        }
    }
    d
}

/// Inode number of every entry below `dir` (lstat), by relative path.
fn inos(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    walk_tree(dir, |p, md| {
        out.insert(p.strip_prefix(dir).unwrap().display().to_string(), md.ino());
    });
    out
}

/// `f`'s content read from offset 0 (the descriptor's position untouched).
fn pread_all(f: &fs::File) -> Vec<u8> {
    let len = f.metadata().unwrap().len() as usize;
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, 0).unwrap();
    buf
}

/// The errno of lstat(path), 0 if it exists.
fn stat_errno(path: &Path) -> i32 {
    fs::symlink_metadata(path).map_or_else(|e| e.raw_os_error().unwrap_or(-1), |_| 0)
}

/// A dead mount (its daemon gone) answers ENOTCONN (to a lookup of a new name: the kernel
/// answers what it cached); detach it (`fusermount3 -uz`, else
/// `umount -l`) and wait until no mount is left on it.
#[track_caller]
fn detach_dead(mnt: &Path) {
    assert_eq!(
        dead_mount_errno(mnt),
        libc::ENOTCONN,
        "a lookup in a mount whose daemon died"
    );
    let ok = succeeds("fusermount3", ["-uz", &s(mnt)]) || succeeds("umount", ["-l", &s(mnt)]);
    assert!(ok, "fusermount3 -uz and umount -l {}", mnt.display());
    assert!(
        eventually(Duration::from_secs(10), || mount_fstype(mnt).is_none()),
        "{} still mounted after detaching it",
        mnt.display()
    );
}

/// Wait (up to 10 s) for a daemon the test made die: how it ended.
#[track_caller]
fn wait_dead(child: &mut Child) -> std::process::ExitStatus {
    wait_within(child, Duration::from_secs(10)).expect("the daemon did not die within 10 s")
}

// ---------------------------------------------------------------------------------------------
// The commands
// ---------------------------------------------------------------------------------------------

/// `snapshot` names and says where it put the snapshot, `snapshots` lists them, `rollback`
/// goes back and drops the newer ones; bad names, duplicates and read-only mounts are
/// refused with exit status 1, changing nothing.
#[test]
fn snapshot_rollback_and_snapshots_commands() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "lower\n");
    let m = fx.mount(&[]);
    assert_eq!(listed(&fx), [], "no snapshots yet");
    assert_refused(&rollback_cmd(&fx.mnt, None), "rollback without snapshots");
    assert!(!store(&fx).exists() || snapshot_layers(&store(&fx)).is_empty());

    put(&fx.m("a"), "a\n");
    let d1 = take(&fx, None, 1);
    assert_eq!(d1.parent().unwrap(), store(&fx));
    assert_eq!(
        store(&fx).parent(),
        fx.upper.parent(),
        "UPPER.snapshots is the upper's sibling"
    );
    assert_eq!(store(&fx).file_name().unwrap(), "upper.snapshots");
    let d2 = take(&fx, Some("before-x_2.0"), 2);
    put(&fx.m("b"), "bb\n");

    let state = |fx: &Fixture| {
        (
            names(&store(fx)),
            tree_of(&fx.mnt),
            snapshot_layers(&store(fx))
                .iter()
                .map(|d| (d.clone(), tree_of(d)))
                .collect::<Vec<_>>(),
        )
    };
    let before = state(&fx);
    for bad in ["before-x_2.0", "a/b", ".x", "a:b", "a,b", "a b"] {
        let out = snapshot_cmd(&fx.mnt, Some(bad));
        assert_refused(&out, &format!("snapshot named {bad:?}"));
        assert!(state(&fx) == before, "snapshot {bad:?} changed something");
    }
    assert_refused(&rollback_cmd(&fx.mnt, Some("nope")), "rollback to nope");
    assert_refused(&rollback_cmd(&fx.mnt, Some("a/b")), "rollback to a/b");
    assert!(state(&fx) == before, "a refused rollback changed something");

    let rows = listed(&fx);
    assert_eq!(
        rows,
        [
            Row {
                name: "snap-1".into(),
                entries: 1,
                dir: d1.clone()
            },
            Row {
                name: "before-x_2.0".into(),
                entries: 0,
                dir: d2.clone()
            },
        ]
    );
    // The default name goes on numbering.
    let d3 = take(&fx, None, 3);
    assert_eq!(listed_names(&fx), ["snap-1", "before-x_2.0", "snap-3"]);

    put(&fx.m("c"), "c\n");
    rollback(&fx, Some("snap-1"), "snap-1");
    assert_eq!(listed_names(&fx), ["snap-1"], "newer snapshots are dropped");
    assert!(!d2.exists() && !d3.exists());
    assert!(d1.is_dir(), "the snapshot rolled back to stays");
    assert_eq!(names(&fx.mnt), ["a", "f"]);
    put(&fx.m("c"), "c\n");
    rollback(&fx, None, "snap-1");
    assert_eq!(names(&fx.mnt), ["a", "f"]);
    assert_eq!(listed_names(&fx), ["snap-1"]);
    assert_nothing_half_done(&fx, "after the rollbacks");
    m.unmount();

    // A read-only mount has no changes to snapshot and none to discard.
    let m = fx.mount(&["-o", "ro"]);
    assert_eq!(
        names(&fx.mnt),
        ["a", "f"],
        "the snapshots stacked read-only"
    );
    let before = state(&fx);
    assert_refused(
        &snapshot_cmd(&fx.mnt, Some("ro")),
        "snapshot of a -o ro mount",
    );
    assert_refused(&snapshot_cmd(&fx.mnt, None), "snapshot of a -o ro mount");
    assert_refused(&rollback_cmd(&fx.mnt, None), "rollback of a -o ro mount");
    assert!(state(&fx) == before, "a read-only mount changed something");
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// The view across a snapshot, the layer it leaves
// ---------------------------------------------------------------------------------------------

/// A snapshot changes nothing in the merged view (names, content, modes, times, inode
/// numbers); its directory is a plain layer (whiteouts as `.wh.` files) that never changes
/// afterwards; later writes land in the fresh upper.
#[test]
fn a_snapshot_keeps_the_view_and_its_layer_never_changes() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "1"), "I am base file 1\n");
    put(&fx.l(0, "app/hello.txt"), "hello from base\n");
    put(&fx.l(0, "usr/share/man/a"), "man a\n");
    put_mode(&fx.l(0, "keep/x"), "x\n", 0o640);
    put(&fx.l(0, "meta"), "metadata only\n");
    let m = fx.mount(&[]);
    demo_changes(&fx);
    set_mode(&fx.m("meta"), 0o600);
    put(&fx.m("h1"), "linked\n");
    mkdir_p(&fx.m("new"));
    fs::hard_link(fx.m("h1"), fx.m("new/h2")).unwrap();
    std::os::unix::fs::symlink("1", fx.m("sym")).unwrap();

    let view_before = view(&fx.mnt);
    let inos_before = inos(&fx.mnt);
    let dir = take(&fx, Some("s1"), 1);
    // Checked last, so that a difference here does not hide what the rest checks.
    let view_change = view_diff(&view_before, &view(&fx.mnt));
    let inos_after = inos(&fx.mnt);

    // The snapshot is what the upper held, as a plain layer in the default format.
    assert_eq!(read(&dir.join("d")), "new file\n");
    assert_eq!(read(&dir.join("1")), "OVERRIDDEN\n");
    assert_regular_file(&dir.join("app/.wh.hello.txt"));
    assert_regular_file(&dir.join("usr/share/man").join(OPQ));
    assert_eq!(read(&dir.join("usr/share/man/b")), "new man\n");
    assert_eq!(ino(&dir.join("h1")), ino(&dir.join("new/h2")), "hard links");
    assert_eq!(mode_of(&dir.join("meta")), 0o600);
    assert!(
        !lexists(&dir.join(WORKDIR)),
        "the work directory in the snapshot"
    );
    assert_eq!(
        upper_names(&fx.upper),
        Vec::<String>::new(),
        "a fresh upper"
    );
    let layer = snapshot(&dir);

    // Later changes land in the upper; the snapshot's layer stays as it was.
    put(&fx.m("d"), "changed\n");
    fs::OpenOptions::new()
        .append(true)
        .open(fx.m("h1"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    fs::remove_file(fx.m("1")).unwrap();
    fs::remove_dir_all(fx.m("usr")).unwrap();
    set_mode(&fx.m("keep/x"), 0o600);
    put(&fx.m("app/new"), "new\n");
    fs::rename(fx.m("new"), fx.m("renamed")).unwrap();
    assert_eq!(read(&fx.m("d")), "changed\n");
    assert_eq!(read(&fx.m("renamed/h2")), "linked\nmore\n");
    assert_eq!(read(&fx.u("d")), "changed\n", "writes land in the upper");
    assert!(lexists(&fx.u(".wh.1")) && lexists(&fx.u(".wh.usr")));
    assert_gone(&fx.m("1"));
    assert_eq!(
        names(&fx.mnt),
        ["app", "d", "h1", "keep", "meta", "renamed", "sym"]
    );
    let d = snapshot_diff(&layer, &snapshot(&dir));
    assert!(d.is_empty(), "the snapshot's layer changed:\n{d}");

    // Stacked as a plain lower under the fresh upper (the rotation remount() checks: the
    // upper and its snapshots moved down into the lowers), the view is the same.
    let after = view(&fx.mnt);
    let m = m.remount();
    let d = view_diff(&after, &view(&fx.mnt));
    assert!(d.is_empty(), "the view changed across a remount:\n{d}");
    assert!(snapshot_diff(&layer, &snapshot(&dir)).is_empty());
    assert!(
        view_change.is_empty(),
        "the view changed across the snapshot:\n{view_change}"
    );
    assert_eq!(inos_after, inos_before, "inode numbers across the snapshot");
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// Open descriptors
// ---------------------------------------------------------------------------------------------

/// A file open for writing at a snapshot: the copy the snapshot keeps has the `sync` and
/// `noatime` inode flags the live file has (`lsattr`), as a copy-up's copy has them.
#[test]
fn a_snapshot_copy_of_an_open_file_keeps_its_inode_flags() {
    const SYNC: u32 = 0x8;
    const NOATIME: u32 = 0x80;
    let fx = Fixture::new(1);
    let _m = fx.mount(&[]);
    let mut w = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(fx.m("f"))
        .unwrap();
    w.write_all(b"data\n").unwrap();
    if let Err(e) = set_inode_flags(&fx.m("f"), SYNC | NOATIME) {
        eprintln!("skipped: no inode flags here ({e})");
        return;
    }
    let dir = take(&fx, Some("s1"), 1);
    w.write_all(b"more\n").unwrap();
    assert_eq!(read(&dir.join("f")), "data\n", "the snapshot's copy");
    assert_eq!(
        inode_flags(&dir.join("f")).unwrap() & (SYNC | NOATIME),
        SYNC | NOATIME,
        "the snapshot's copy keeps sync and noatime"
    );
    assert_eq!(
        inode_flags(&fx.m("f")).unwrap() & (SYNC | NOATIME),
        SYNC | NOATIME,
        "the live file keeps them"
    );
    assert_eq!(read(&fx.m("f")), "data\nmore\n");
}

/// A file open for writing at a snapshot goes on being written through its descriptor, and
/// the merged view shows the writes; the snapshot holds its content as of the snapshot, under
/// each of its names; readers keep reading.
#[test]
fn open_descriptors_across_a_snapshot() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "lowfile"), "L0\n");
    put(&fx.l(0, "dir/deep"), "deep\n");
    let m = fx.mount(&[]);
    let mut w1 = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(fx.m("new"))
        .unwrap();
    w1.write_all(b"one\n").unwrap();
    fs::hard_link(fx.m("new"), fx.m("dir/new-link")).unwrap();
    let mut w2 = OpenOptions::new()
        .append(true)
        .open(fx.m("lowfile"))
        .unwrap();
    w2.write_all(b"two\n").unwrap();
    let mut w3 = OpenOptions::new()
        .write(true)
        .open(fx.m("dir/deep"))
        .unwrap();
    w3.write_all(b"DEEP\n").unwrap();
    put(&fx.m("stable"), "S\n");
    let r1 = fs::File::open(fx.m("lowfile")).unwrap();
    let mut r2 = fs::File::open(fx.m("stable")).unwrap();
    let ino_new = ino(&fx.m("new"));
    let view_before = view(&fx.mnt);
    let inos_before = inos(&fx.mnt);

    let dir = take(&fx, Some("s1"), 1);
    // Checked last, so that a difference here does not hide what the rest checks.
    let view_change = view_diff(&view_before, &view(&fx.mnt));
    let inos_after = inos(&fx.mnt);
    w1.write_all(b"after\n").unwrap();
    w2.write_all(b"after2\n").unwrap();
    w3.write_all(b"more\n").unwrap();

    assert_eq!(
        read(&fx.m("new")),
        "one\nafter\n",
        "the merged view shows the writes"
    );
    assert_eq!(read(&fx.m("dir/new-link")), "one\nafter\n");
    assert_eq!(read(&fx.m("lowfile")), "L0\ntwo\nafter2\n");
    assert_eq!(read(&fx.m("dir/deep")), "DEEP\nmore\n");
    assert_eq!(ino(&fx.m("new")), ino_new, "the inode number stays");
    assert_eq!(
        w1.metadata().unwrap().ino(),
        ino_new,
        "fstat of the open file"
    );
    assert_eq!(fs::metadata(fx.m("new")).unwrap().nlink(), 2);
    assert_eq!(pread_all(&w1), b"one\nafter\n");

    assert_eq!(
        read(&dir.join("new")),
        "one\n",
        "the snapshot: as of the snapshot"
    );
    assert_eq!(
        read(&dir.join("dir/new-link")),
        "one\n",
        "the snapshot's hard link"
    );
    assert_eq!(
        ino(&dir.join("new")),
        ino(&dir.join("dir/new-link")),
        "the snapshot's copy keeps its names linked"
    );
    assert_eq!(read(&dir.join("lowfile")), "L0\ntwo\n");
    assert_eq!(read(&dir.join("dir/deep")), "DEEP\n");

    assert_eq!(
        pread_all(&r1),
        b"L0\ntwo\nafter2\n",
        "a reader across the snapshot"
    );
    let mut got = String::new();
    r2.read_to_string(&mut got).unwrap();
    assert_eq!(got, "S\n");

    // The layer never changes, also across a second snapshot of the same open files.
    let layer = snapshot(&dir);
    let dir2 = take(&fx, Some("s2"), 2);
    w1.write_all(b"third\n").unwrap();
    assert_eq!(read(&fx.m("new")), "one\nafter\nthird\n");
    assert_eq!(read(&dir2.join("new")), "one\nafter\n");
    let d = snapshot_diff(&layer, &snapshot(&dir));
    assert!(d.is_empty(), "the first snapshot changed:\n{d}");
    drop((w1, w2, w3, r1, r2));
    assert_nothing_half_done(&fx, "after the snapshots");
    let m = m.check_across_remount(|when| {
        assert_eq!(read(&fx.m("new")), "one\nafter\nthird\n", "{when}");
        assert_eq!(read(&fx.m("dir/new-link")), "one\nafter\nthird\n", "{when}");
        assert_eq!(read(&fx.m("lowfile")), "L0\ntwo\nafter2\n", "{when}");
    });
    rollback(&fx, Some("s1"), "s1");
    assert_eq!(read(&fx.m("new")), "one\n");
    assert_eq!(read(&fx.m("dir/new-link")), "one\n");
    assert_eq!(read(&fx.m("lowfile")), "L0\ntwo\n");
    assert!(
        view_change.is_empty(),
        "the view changed across the snapshot:\n{view_change}"
    );
    assert_eq!(inos_after, inos_before, "inode numbers across the snapshot");
    m.unmount();
}

/// Across a rollback: descriptors on discarded files keep reading and writing them (fstat
/// too) and nothing of it shows in the mount; by path the mount shows the rolled-back state
/// at once, whatever the kernel had cached (the default timeouts: 10 s).
#[test]
fn open_descriptors_and_kernel_caches_across_a_rollback() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "del"), "lower del\n");
    put(&fx.l(0, "keep"), "keep\n");
    put(&fx.l(0, "d/x"), "x\n");
    let m = fx.mount(&[]);
    put(&fx.m("old"), "old\n");
    put(&fx.m("d/y"), "y\n");
    let at_snapshot = view(&fx.mnt);
    take(&fx, Some("s1"), 1);

    let mut created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(fx.m("created"))
        .unwrap();
    created.write_all(b"c\n").unwrap();
    let old = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.m("old"))
        .unwrap();
    old.write_all_at(b"NEW!", 0).unwrap();
    let keep = OpenOptions::new()
        .read(true)
        .append(true)
        .open(fx.m("keep"))
        .unwrap();
    (&keep).write_all(b"appended\n").unwrap();
    let reader = fs::File::open(fx.m("d/x")).unwrap();
    fs::remove_file(fx.m("del")).unwrap();
    fs::remove_file(fx.m("d/y")).unwrap();
    put(&fx.m("newdir/f"), "f\n");
    set_mode(&fx.m("d"), 0o700);
    // Everything in the kernel's caches: entries, negative entries, attributes, pages.
    assert_eq!(read(&fx.m("created")), "c\n");
    assert_eq!(read(&fx.m("old")), "NEW!");
    assert_eq!(read(&fx.m("keep")), "keep\nappended\n");
    assert_eq!(stat_errno(&fx.m("del")), libc::ENOENT);
    assert_eq!(stat_errno(&fx.m("d/y")), libc::ENOENT);
    assert_eq!(names(&fx.mnt), ["created", "d", "keep", "newdir", "old"]);
    assert_eq!(names(&fx.m("d")), ["x"]);
    assert_eq!(names(&fx.m("newdir")), ["f"]);
    assert_eq!(mode_of(&fx.m("d")), 0o700);

    rollback(&fx, Some("s1"), "s1");

    // By path: the state of the snapshot, right away.
    assert_eq!(
        stat_errno(&fx.m("created")),
        libc::ENOENT,
        "created after: gone"
    );
    assert_eq!(stat_errno(&fx.m("newdir")), libc::ENOENT);
    assert_eq!(stat_errno(&fx.m("newdir/f")), libc::ENOENT);
    assert_eq!(read(&fx.m("del")), "lower del\n", "deleted after: back");
    assert_eq!(read(&fx.m("d/y")), "y\n", "deleted after: back");
    assert_eq!(read(&fx.m("old")), "old\n");
    assert_eq!(fs::metadata(fx.m("old")).unwrap().len(), 4);
    assert_eq!(read(&fx.m("keep")), "keep\n");
    assert_eq!(names(&fx.mnt), ["d", "del", "keep", "old"]);
    assert_eq!(names(&fx.m("d")), ["x", "y"]);
    assert_eq!(mode_of(&fx.m("d")), mode_of(&fx.l(0, "d")));
    let d = view_diff(&at_snapshot, &view(&fx.mnt));
    assert!(d.is_empty(), "the view after the rollback:\n{d}");

    // Descriptors on discarded files: they go on with the discarded files.
    let md = created.metadata().expect("fstat of a discarded file");
    assert_eq!(md.len(), 2);
    created
        .write_all(b"more\n")
        .expect("write to a discarded file");
    assert_eq!(pread_all(&created), b"c\nmore\n");
    assert_eq!(pread_all(&old), b"NEW!", "read a discarded copy");
    old.write_all_at(b"STILL", 0)
        .expect("write a discarded copy");
    assert_eq!(pread_all(&old), b"STILL");
    old.metadata().expect("fstat of a discarded copy");
    (&keep)
        .write_all(b"again\n")
        .expect("append to a discarded copy");
    assert_eq!(pread_all(&keep), b"keep\nappended\nagain\n");
    let mut x = String::new();
    (&reader).read_to_string(&mut x).unwrap();
    assert_eq!(x, "x\n", "a reader of a file the rollback kept");
    assert_eq!(stat_errno(&fx.m("created")), libc::ENOENT);
    assert_eq!(read(&fx.m("old")), "old\n");
    assert_eq!(read(&fx.m("keep")), "keep\n");
    drop((created, old, keep, reader));
    let d = view_diff(&at_snapshot, &view(&fx.mnt));
    assert!(d.is_empty(), "the discarded files showed in the view:\n{d}");
    // Names made again after the rollback are new files.
    put(&fx.m("created"), "again\n");
    assert_eq!(read(&fx.m("created")), "again\n");
    assert_nothing_half_done(&fx, "after the rollback");
    m.unmount();
}

/// A file open for writing through a snapshot and then a rollback to it: the snapshot's copy
/// comes back by path; the descriptor stays on the file it wrote, which no name reaches.
#[test]
fn a_writer_across_a_snapshot_and_a_rollback_to_it() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "low"), "low\n");
    let m = fx.mount(&[]);
    let mut w = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(fx.m("log"))
        .unwrap();
    w.write_all(b"before\n").unwrap();
    let mut wl = OpenOptions::new().append(true).open(fx.m("low")).unwrap();
    wl.write_all(b"before\n").unwrap();
    take(&fx, Some("s1"), 1);
    w.write_all(b"after\n").unwrap();
    wl.write_all(b"after\n").unwrap();
    assert_eq!(read(&fx.m("log")), "before\nafter\n");
    rollback(&fx, Some("s1"), "s1");
    assert_eq!(
        read(&fx.m("log")),
        "before\n",
        "the snapshot's copy, by path"
    );
    assert_eq!(read(&fx.m("low")), "low\nbefore\n");
    w.write_all(b"later\n")
        .expect("write through the descriptor");
    wl.write_all(b"later\n")
        .expect("write through the descriptor");
    assert_eq!(
        pread_all(&w),
        b"before\nafter\nlater\n",
        "the descriptor's file"
    );
    w.metadata().expect("fstat");
    assert_eq!(read(&fx.m("log")), "before\n", "nothing of it shows");
    assert_eq!(read(&fx.m("low")), "low\nbefore\n", "nothing of it shows");
    drop((w, wl));
    let mut again = OpenOptions::new().append(true).open(fx.m("log")).unwrap();
    again.write_all(b"new\n").unwrap();
    drop(again);
    assert_eq!(read(&fx.m("log")), "before\nnew\n");
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------------

/// Unmount and mount again with the same command line: the snapshots stack again, the
/// list is the same, and rollback still works.
#[test]
fn the_snapshot_stack_survives_a_remount() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "a"), "a0\n");
    put(&fx.l(0, "b"), "b0\n");
    let m = fx.mount(&[]);
    let mut views = Vec::new();
    for (i, name) in ["s1", "s2", "s3"].iter().enumerate() {
        put(&fx.m("a"), &format!("a{}\n", i + 1));
        put(&fx.m(&format!("n{i}")), "n\n");
        if i == 1 {
            fs::remove_file(fx.m("b")).unwrap();
        }
        views.push(tree_of(&fx.mnt));
        take(&fx, Some(name), i as u32 + 1);
    }
    put(&fx.m("a"), "a4\n");
    let last = tree_of(&fx.mnt);
    let rows = listed(&fx);
    let m = m.remount();
    assert_eq!(tree_diff(&tree_of(&fx.mnt), &last), "", "after remount");
    assert_eq!(listed(&fx), rows, "the list after remount");
    rollback(&fx, Some("s2"), "s2");
    assert_eq!(
        tree_diff(&tree_of(&fx.mnt), &views[1]),
        "",
        "rolled back to s2"
    );
    assert_eq!(listed_names(&fx), ["s1", "s2"]);
    let m = m.remount();
    assert_eq!(
        tree_diff(&tree_of(&fx.mnt), &views[1]),
        "",
        "s2 after remount"
    );
    assert_eq!(listed_names(&fx), ["s1", "s2"]);
    rollback(&fx, Some("s1"), "s1");
    assert_eq!(
        tree_diff(&tree_of(&fx.mnt), &views[0]),
        "",
        "rolled back to s1"
    );
    take(&fx, Some("s2"), 2);
    assert_eq!(
        listed_names(&fx),
        ["s1", "s2"],
        "a dropped name can be taken again"
    );
    assert_nothing_half_done(&fx, "at the end");
    m.unmount();
}

/// The same with the overlay-style command line (`-o lowerdir=..,upperdir=..,workdir=..`):
/// the snapshots live beside `upperdir`, and stack again at the next mount.
#[test]
fn snapshots_of_an_overlay_style_mount() {
    let fx = Fixture::new(2);
    put(&fx.l(0, "top"), "l0\n");
    put(&fx.l(1, "bottom"), "l1\n");
    let work = fx.root.join("work");
    fs::create_dir(&work).unwrap();
    let args = vec!["-o".to_string(), fx.overlay_opts(&work), s(&fx.mnt)];
    let m = fx.mount_args(args, fx.lowers.clone());
    put(&fx.m("top"), "changed\n");
    fs::remove_file(fx.m("bottom")).unwrap();
    let s1 = tree_of(&fx.mnt);
    let dir = take(&fx, Some("s1"), 1);
    assert_eq!(read(&dir.join("top")), "changed\n");
    assert_regular_file(&dir.join(".wh.bottom"));
    assert!(!lexists(&dir.join(WORKDIR)));
    put(&fx.m("later"), "later\n");
    let later = tree_of(&fx.mnt);
    // The remount checks the view with the upper and s1 moved down into lowerdir=.
    let m = m.remount();
    assert_eq!(tree_diff(&tree_of(&fx.mnt), &later), "", "after remount");
    assert_eq!(listed_names(&fx), ["s1"]);
    rollback(&fx, None, "s1");
    assert_eq!(tree_diff(&tree_of(&fx.mnt), &s1), "", "rolled back");
    assert_nothing_half_done(&fx, "at the end");
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// Crashes at each step
// ---------------------------------------------------------------------------------------------

fn crash_env(at: &str) -> [(&'static str, &str); 1] {
    [("UNIONMOUNT_CRASH_AT", at)]
}

/// The daemon dies (UNIONMOUNT_CRASH_AT) at each step of a snapshot after its commit
/// point, with a file open for writing (two names) so each step is reached; mounted again
/// with the same command line, the snapshot is there, whole, and nothing half-done is left.
#[test]
fn a_crash_at_each_step_of_a_snapshot_leaves_it_taken() {
    for step in 1..=4 {
        let at = format!("snapshot:{step}");
        let fx = Fixture::new(1);
        put(&fx.l(0, "f"), "lower\n");
        put(&fx.l(0, "gone"), "g\n");
        put(&fx.l(0, "sub/low"), "low\n");
        let mut child = fx.daemon_env(&[], &crash_env(&at));
        put(&fx.m("a"), "a\n");
        fs::remove_file(fx.m("gone")).unwrap();
        put(&fx.m("dir/b"), "b\n");
        let mut w = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(fx.m("sub/w"))
            .unwrap();
        w.write_all(b"w1\n").unwrap();
        fs::hard_link(fx.m("sub/w"), fx.m("w2")).unwrap();
        let want = tree_of(&fx.mnt);

        let out = snapshot_cmd(&fx.mnt, Some("s1"));
        let st = wait_dead(&mut child);
        assert!(
            !st.success(),
            "{at}: the daemon exited {st}\n{}",
            fx.log_tail()
        );
        assert!(!out.ok(), "{at}: snapshot said {:?}", out.stdout);
        drop(w);
        detach_dead(&fx.mnt);

        let m = fx.mount(&[]);
        assert_nothing_half_done(&fx, &at);
        assert_eq!(listed_names(&fx), ["s1"], "{at}: the snapshot is done");
        let dir = store(&fx).join("0001-s1");
        assert_eq!(tree_diff(&tree_of(&fx.mnt), &want), "", "{at}: the view");
        assert_eq!(
            ino(&fx.m("sub/w")),
            ino(&fx.m("w2")),
            "{at}: links in the view"
        );
        assert_eq!(read(&dir.join("a")), "a\n", "{at}");
        assert_regular_file(&dir.join(".wh.gone"));
        assert_eq!(read(&dir.join("dir/b")), "b\n", "{at}");
        assert_eq!(read(&dir.join("sub/w")), "w1\n", "{at}");
        assert_eq!(read(&dir.join("w2")), "w1\n", "{at}");
        assert_eq!(ino(&dir.join("sub/w")), ino(&dir.join("w2")), "{at}: links");
        assert!(
            !lexists(&dir.join(WORKDIR)),
            "{at}: work directory in the snapshot"
        );
        // Whatever the upper holds is what changed since: nothing.
        put(&fx.m("later"), "later\n");
        rollback(&fx, None, "s1");
        assert_eq!(tree_diff(&tree_of(&fx.mnt), &want), "", "{at}: rolled back");
        assert_eq!(read(&fx.m("sub/w")), "w1\n");
        m.unmount();
    }
}

/// The daemon dies at each step of a rollback (to the older of two snapshots, with files
/// open on what it discards) after its commit point; mounted again, the rollback is done.
#[test]
fn a_crash_at_each_step_of_a_rollback_leaves_it_done() {
    for step in 1..=3 {
        let at = format!("rollback:{step}");
        let fx = Fixture::new(1);
        put(&fx.l(0, "f"), "lower\n");
        put(&fx.l(0, "gone"), "g\n");
        let mut child = fx.daemon_env(&[], &crash_env(&at));
        put(&fx.m("a"), "a1\n");
        let s1 = tree_of(&fx.mnt);
        take(&fx, Some("s1"), 1);
        let layer1 = snapshot(&store(&fx).join("0001-s1"));
        put(&fx.m("a"), "a2\n");
        fs::remove_file(fx.m("gone")).unwrap();
        take(&fx, Some("s2"), 2);
        put(&fx.m("c"), "c\n");
        put(&fx.m("f"), "changed\n");
        let w = OpenOptions::new().append(true).open(fx.m("c")).unwrap();

        let out = rollback_cmd(&fx.mnt, Some("s1"));
        let st = wait_dead(&mut child);
        assert!(
            !st.success(),
            "{at}: the daemon exited {st}\n{}",
            fx.log_tail()
        );
        assert!(!out.ok(), "{at}: rollback said {:?}", out.stdout);
        drop(w);
        detach_dead(&fx.mnt);

        let m = fx.mount(&[]);
        assert_nothing_half_done(&fx, &at);
        assert_eq!(listed_names(&fx), ["s1"], "{at}: s2 is dropped");
        assert!(!store(&fx).join("0002-s2").exists(), "{at}");
        assert_eq!(tree_diff(&tree_of(&fx.mnt), &s1), "", "{at}: the view");
        let d = snapshot_diff(&layer1, &snapshot(&store(&fx).join("0001-s1")));
        assert!(
            d.is_empty(),
            "{at}: the snapshot rolled back to changed:\n{d}"
        );
        assert_eq!(
            upper_names(&fx.upper),
            Vec::<String>::new(),
            "{at}: the upper"
        );
        m.unmount();
    }
}

// ---------------------------------------------------------------------------------------------
// kill -9 at random moments
// ---------------------------------------------------------------------------------------------

/// Writer `t`'s stream of records: what its files must hold a prefix of.
fn record(t: usize, i: u64) -> String {
    format!("t{t} {i:010}\n")
}

/// The content of a file written with `record(t, 0..)` must be a prefix of that stream.
fn check_stream(path: &Path, t: usize) -> Result<(), String> {
    let got = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let rec = record(t, 0).len();
    let n = got.len().div_ceil(rec) as u64;
    let want: String = (0..n).map(|i| record(t, i)).collect();
    if want.as_bytes().starts_with(&got) {
        Ok(())
    } else {
        Err(format!(
            "{}: not a prefix of writer {t}'s records: {:?}",
            path.display(),
            String::from_utf8_lossy(&got[..got.len().min(200)])
        ))
    }
}

/// Check every `busy/tT-*` file below `root` against its writer's stream.
fn check_streams(root: &Path) -> Result<(), String> {
    let Ok(rd) = fs::read_dir(root.join("busy")) else {
        return Ok(());
    };
    for e in rd {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        let t = n[1..n.find('-').unwrap()].parse().unwrap();
        check_stream(&e.path(), t)?;
    }
    Ok(())
}

/// A writer appending `record(t, ..)` through a descriptor it keeps, a new file now and
/// then, until a write fails or `stop`; returns how many records it wrote.
fn stream_writer(mnt: PathBuf, t: usize, tag: String, stop: Arc<AtomicBool>) -> u64 {
    let mut total = 0;
    for file in 0.. {
        let p = mnt.join(format!("busy/t{t}-{tag}-{file}"));
        let Ok(mut f) = OpenOptions::new().append(true).create_new(true).open(&p) else {
            return total;
        };
        for i in 0..200 {
            if stop.load(Ordering::Relaxed) || f.write_all(record(t, i).as_bytes()).is_err() {
                return total;
            }
            total += 1;
        }
    }
    total
}

/// `m/` below the mount: what the controller writes, as a reference model keeps it.
type Files = BTreeMap<String, String>;

fn files_of(mnt: &Path) -> Files {
    files_in(&mnt.join("m"))
}

/// Change a few of the model's files through the mount, and the model alike.
fn mutate(mnt: &Path, files: &mut Files, rng: &mut Rng, tag: &str) {
    for k in 0..3 {
        let name = format!("f{}", rng.below(6));
        if rng.below(4) == 0 {
            if files.remove(&name).is_some() {
                fs::remove_file(mnt.join("m").join(&name)).unwrap();
            }
        } else {
            let content = format!("{name} {tag}.{k}\n");
            put(&mnt.join("m").join(&name), &content);
            files.insert(name, content);
        }
    }
}

/// kill -9 the daemon at random moments of snapshots and rollbacks while writers append
/// through open descriptors: mounted again, the view and the list are the model's state
/// before the operation or after it, never a mix; the writers' files hold a prefix of
/// what they wrote.
#[test]
// Each round's daemon is killed and waited for by its last operation (`killed`), which
// clippy cannot tell from the loop.
#[allow(clippy::zombie_processes)]
fn kill_9_during_snapshots_and_rollbacks_leaves_the_old_or_the_new_state() {
    let rounds = if std::env::var("UNIONMOUNT_LONG").is_ok_and(|v| v == "1") {
        60
    } else {
        10
    };
    let fx = Fixture::new(1);
    let _guard = UnmountGuard(fx.mnt.clone());
    put(&fx.l(0, "m/f0"), "f0 lower\n");
    put(&fx.l(0, "m/f1"), "f1 lower\n");
    mkdir_p(&fx.l(0, "busy"));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill -9 rounds: seed {seed}");
    let mut rng = Rng(seed);
    let mut files = files_in(&fx.l(0, "m"));
    let mut saved: Vec<(String, Files)> = Vec::new();
    let (mut seen_old, mut seen_new) = (0, 0);
    for round in 0..rounds {
        let mut child = fx.daemon(&[]);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let (mnt, stop, tag) = (fx.mnt.clone(), stop.clone(), format!("r{round}"));
                thread::spawn(move || stream_writer(mnt, t, tag, stop))
            })
            .collect();
        // A few operations that finish, then one the kill interrupts.
        let mut last = None;
        for op in 0..3 {
            mutate(&fx.mnt, &mut files, &mut rng, &format!("{round}.{op}"));
            let old = (files.clone(), saved.clone());
            let killed = op == 2;
            let rollback_to = (!saved.is_empty() && rng.below(3) == 0)
                .then(|| saved[rng.below(saved.len() as u64) as usize].0.clone());
            let (cmd, name) = match &rollback_to {
                Some(n) => ("rollback", n.clone()),
                None => ("snapshot", format!("k{round}-{op}")),
            };
            let mut tool_child = unionmount([cmd, &s(&fx.mnt), &name])
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            if killed {
                // The kill's moment is what varies; no condition to wait for here.
                thread::sleep(Duration::from_micros(rng.below(20_000)));
                let conn = fuse_connection(&fx.mnt).expect("the mount's FUSE connection");
                child.kill().unwrap();
                if wait_within(&mut child, Duration::from_secs(10)).is_none() {
                    // A thread of the daemon cannot die. The one known way (README, snapshots):
                    // killed while a rollback tells the kernel what changed, the thread waits
                    // in the kernel for a directory lock a request in flight holds, which only
                    // the end of the connection releases. Aborting it is the documented way
                    // out; the state on disk must still be the old or the new one.
                    let stacks = thread_stacks(child.id());
                    let known = cmd == "rollback" && stacks.contains("fuse_reverse_inval_entry");
                    let aborted = known && abort_fuse_connection(conn);
                    let died =
                        aborted && wait_within(&mut child, Duration::from_secs(10)).is_some();
                    if !died {
                        stop.store(true, Ordering::Relaxed);
                        panic!(
                            "round {round}: the daemon killed (SIGKILL) during `{cmd} {name}` \
                             did not die within 10 s (FUSE connection {conn} aborted: \
                             {aborted}); its threads:\n{stacks}"
                        );
                    }
                    eprintln!(
                        "round {round}: killed during the kernel invalidations of `{cmd} \
                         {name}`; the connection was aborted to free it"
                    );
                }
                wait_or_kill(&mut tool_child, DEADLINE, "the command after the kill");
            } else {
                let st = wait_or_kill(&mut tool_child, DEADLINE, "unionmount {cmd}");
                assert!(
                    st.success(),
                    "round {round}: {cmd} {name}\n{}",
                    fx.log_tail()
                );
            }
            // The model's new state.
            let mut new = old.clone();
            match &rollback_to {
                Some(n) => {
                    let at = new.1.iter().position(|(s, _)| s == n).unwrap();
                    new.1.truncate(at + 1);
                    new.0 = new.1[at].1.clone();
                }
                None => new.1.push((name.clone(), new.0.clone())),
            }
            if !killed {
                (files, saved) = new;
            } else {
                last = Some((cmd, name, old, new));
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        detach_dead(&fx.mnt);
        let (cmd, name, old, new) = last.unwrap();
        let mut child = fx.daemon(&[]);
        let got = (files_of(&fx.mnt), listed_names(&fx));
        let names = |st: &(Files, Vec<(String, Files)>)| -> Vec<String> {
            st.1.iter().map(|(n, _)| n.clone()).collect()
        };
        let is_old = got == (old.0.clone(), names(&old));
        let is_new = got == (new.0.clone(), names(&new));
        assert!(
            is_old || is_new,
            "round {round}: after a kill during {cmd} {name}, neither the old nor the new \
             state:\n  got {got:?}\n  old {:?} {:?}\n  new {:?} {:?}",
            old.0,
            names(&old),
            new.0,
            names(&new)
        );
        if let Err(e) = check_streams(&fx.mnt) {
            panic!("round {round}, after a kill during {cmd} {name}: {e}");
        }
        assert_nothing_half_done(&fx, &format!("round {round}, after a kill during {cmd}"));
        if is_new {
            seen_new += 1;
            (files, saved) = new;
        } else {
            seen_old += 1;
            (files, saved) = old;
        }
        // The snapshots kept are each the state the model saved.
        if let Some((n, want)) = saved.last().cloned()
            && rng.below(2) == 0
        {
            rollback(&fx, Some(&n), &n);
            assert_eq!(files_of(&fx.mnt), want, "round {round}: rolled back to {n}");
            files = want;
        }
        unmount_and_wait(&fx.mnt);
        assert!(wait_within(&mut child, Duration::from_secs(10)).is_some());
    }
    eprintln!("kill -9 rounds: {seen_old} left the old state, {seen_new} the new one");
    // The stack as a whole: mounted by the harness (rotation included) it shows the model.
    let m = fx.mount(&[]);
    assert_eq!(files_of(&fx.mnt), files);
    if let Some((n, want)) = saved.first().cloned() {
        rollback(&fx, Some(&n), &n);
        assert_eq!(
            files_of(&fx.mnt),
            want,
            "rolled back to the first snapshot {n}"
        );
    }
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

/// Snapshots and rollbacks while readers and writers work on the mount: no errors but
/// ENOENT for files a rollback (or a writer) removed, and once everything stops, the tree is
/// the reference model's. Modelled writers write whole files and keep a descriptor each
/// across the operations (each write and its model update are one step, which an operation
/// does not split); free writers append through descriptors and create and remove files
/// with no coordination at all; readers list and read everything.
#[test]
fn snapshots_and_rollbacks_under_concurrent_readers_and_writers() {
    let fx = Fixture::new(1);
    for i in 0..6 {
        put(&fx.l(0, &format!("w/s{i}")), &format!("s{i} lower\n"));
    }
    mkdir_p(&fx.l(0, "busy"));
    let m = fx.mount(&[]);
    let mnt = fx.mnt.clone();

    struct Model {
        files: Files,
        saved: Vec<(String, Files)>,
    }
    let mut start = Files::new();
    for i in 0..6 {
        start.insert(format!("s{i}"), format!("s{i} lower\n"));
    }
    let model = Arc::new(Mutex::new(Model {
        files: start,
        saved: Vec::new(),
    }));
    // Held shared by each modelled write with its model update, exclusively by an operation.
    let gate = Arc::new(RwLock::new(()));
    // Bumped by each rollback: descriptors opened before one are on discarded files.
    let generation = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let enoent = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();

    // Modelled writers: whole files w/s*, w/tT-*, and a long-lived descriptor on w/long-T
    // rewritten in place at a fixed width.
    for t in 0..2usize {
        let (mnt, model, gate, generation, stop, progress, errors) = (
            mnt.clone(),
            model.clone(),
            gate.clone(),
            generation.clone(),
            stop.clone(),
            progress.clone(),
            errors.clone(),
        );
        threads.push(thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9 + t as u64);
            let long = format!("long-{t}");
            let mut held: Option<(u64, fs::File)> = None;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let _g = gate.read().unwrap();
                let mut what = String::new();
                let mut recorded = false;
                let r: std::io::Result<(String, Option<String>)> = (|| match rng.below(4) {
                    0 => {
                        what = format!(
                            "rewrite w/{long} (generation {:?})",
                            held.as_ref().map(|h| h.0)
                        );
                        let now = generation.load(Ordering::SeqCst);
                        if held.as_ref().is_none_or(|(g, _)| *g != now) {
                            let f = OpenOptions::new()
                                .write(true)
                                .create(true)
                                .truncate(false)
                                .open(mnt.join("w").join(&long))?;
                            held = Some((now, f));
                        }
                        let v = format!("{long} {i:010}\n");
                        held.as_ref().unwrap().1.write_all_at(v.as_bytes(), 0)?;
                        Ok((long.clone(), Some(v)))
                    }
                    1 => {
                        let n = format!("t{t}-{}", rng.below(4));
                        what = format!("unlink w/{n}");
                        let there = model.lock().unwrap().files.contains_key(&n);
                        match fs::remove_file(mnt.join("w").join(&n)) {
                            // Expected: the model has no such file either.
                            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !there => {}
                            r => r?,
                        }
                        Ok((n, None))
                    }
                    2 => {
                        // Both writers write these: the write and its model update go
                        // together, or the model's order of two racing writes could be the
                        // other one than the file's.
                        let n = format!("s{}", rng.below(6));
                        let v = format!("{n} by {t} {i}\n");
                        what = format!("write w/{n}");
                        let mut md = model.lock().unwrap();
                        fs::write(mnt.join("w").join(&n), &v)?;
                        md.files.insert(n.clone(), v.clone());
                        recorded = true;
                        Ok((n, Some(v)))
                    }
                    _ => {
                        let n = format!("t{t}-{}", rng.below(4));
                        let v = format!("{n} {i}\n");
                        what = format!("write w/{n}");
                        fs::write(mnt.join("w").join(&n), &v)?;
                        Ok((n, Some(v)))
                    }
                })();
                match r {
                    Ok(_) if recorded => {}
                    Ok((n, Some(v))) => {
                        model.lock().unwrap().files.insert(n, v);
                    }
                    Ok((n, None)) => {
                        model.lock().unwrap().files.remove(&n);
                    }
                    Err(e) => errors
                        .lock()
                        .unwrap()
                        .push(format!("writer {t}: {what}: {e}")),
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Free writers: append streams through descriptors they keep, new files now and then.
    for t in 0..2usize {
        let (mnt, stop, errors) = (mnt.clone(), stop.clone(), errors.clone());
        threads.push(thread::spawn(move || {
            for file in 0.. {
                let p = mnt.join(format!("busy/t{t}-c-{file}"));
                let mut f = match OpenOptions::new().append(true).create_new(true).open(&p) {
                    Ok(f) => f,
                    Err(e) => {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("create {}: {e}", p.display()));
                        return;
                    }
                };
                for i in 0..100 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Err(e) = f.write_all(record(t, i).as_bytes()) {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("append {}: {e}", p.display()));
                        return;
                    }
                }
                if file % 3 == 2 {
                    let old = mnt.join(format!("busy/t{t}-c-{}", file - 2));
                    match fs::remove_file(&old) {
                        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => errors
                            .lock()
                            .unwrap()
                            .push(format!("unlink {}: {e}", old.display())),
                        _ => {}
                    }
                }
            }
        }));
    }
    // Readers: list and read everything; ENOENT is expected (files come and go), nothing else.
    for r in 0..2usize {
        let (mnt, stop, errors, enoent) =
            (mnt.clone(), stop.clone(), errors.clone(), enoent.clone());
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for dir in ["w", "busy", ""] {
                    let rd = match fs::read_dir(mnt.join(dir)) {
                        Ok(rd) => rd,
                        Err(e) => {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("reader {r}: readdir {dir}: {e}"));
                            continue;
                        }
                    };
                    for e in rd {
                        let p = match e {
                            Ok(e) => e.path(),
                            Err(e) => {
                                errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("reader {r}: readdir {dir}: {e}"));
                                break;
                            }
                        };
                        if p.is_dir() {
                            continue;
                        }
                        match fs::read(&p) {
                            Ok(data) => {
                                let text = String::from_utf8_lossy(&data);
                                let name = p.file_name().unwrap().to_string_lossy();
                                // Empty between a writer's truncate and its write.
                                let ok = text.is_empty() || text.starts_with(name.as_ref());
                                if dir == "w" && !ok {
                                    errors.lock().unwrap().push(format!(
                                        "reader {r}: {} holds {text:?}",
                                        p.display()
                                    ));
                                }
                            }
                            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                                enoent.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => errors
                                .lock()
                                .unwrap()
                                .push(format!("reader {r}: read {}: {e}", p.display())),
                        }
                    }
                }
            }
        }));
    }

    // The operations: between two, the writers make progress.
    let mut rng = Rng(12345);
    let (mut snaps, mut rollbacks) = (0, 0);
    for op in 0..24 {
        let p = progress.load(Ordering::Relaxed);
        assert!(
            eventually(Duration::from_secs(20), || progress.load(Ordering::Relaxed)
                >= p + 20),
            "the writers made no progress"
        );
        let _g = gate.write().unwrap();
        let mut md = model.lock().unwrap();
        if !md.saved.is_empty() && rng.below(3) == 0 {
            let at = rng.below(md.saved.len() as u64) as usize;
            let name = md.saved[at].0.clone();
            rollback(&fx, Some(&name), &name);
            md.files = md.saved[at].1.clone();
            md.saved.truncate(at + 1);
            generation.fetch_add(1, Ordering::SeqCst);
            rollbacks += 1;
        } else {
            let name = format!("c{op}");
            let out = snapshot_cmd(&fx.mnt, Some(&name));
            assert!(out.ok(), "snapshot {name}: {}{}", out.stderr, fx.log_tail());
            let files = md.files.clone();
            md.saved.push((name, files));
            snaps += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "errors other than ENOENT:\n{}",
        errors.join("\n")
    );
    eprintln!(
        "concurrency: {snaps} snapshots, {rollbacks} rollbacks, {} ENOENT, {} modelled writes",
        enoent.load(Ordering::Relaxed),
        progress.load(Ordering::Relaxed)
    );
    let md = model.lock().unwrap();
    let check = |when: &str| {
        let got = files_in(&fx.m("w"));
        assert_eq!(got, md.files, "{when}: w/ against the model");
        if let Err(e) = check_streams(&fx.mnt) {
            panic!("{when}: {e}");
        }
    };
    check("after everything stopped");
    let m = m.remount();
    check("after remount");
    let names_saved: Vec<String> = md.saved.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(listed_names(&fx), names_saved);
    if let Some((n, want)) = md.saved.first() {
        rollback(&fx, Some(n), n);
        assert_eq!(&files_in(&fx.m("w")), want, "rolled back to {n}");
    }
    m.unmount();
}

fn files_in(dir: &Path) -> Files {
    let mut out = Files::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            read(&e.path()),
        );
    }
    out
}

/// The concurrency test's failure in small: a reader lists and reads a lower directory
/// while snapshots and rollbacks go on; between two operations, a file there is rewritten,
/// a new one made and the one before removed. Each of those must work.
#[test]
fn changes_in_a_directory_a_reader_lists_across_rollbacks() {
    let fx = Fixture::new(1);
    for i in 0..4 {
        put(&fx.l(0, &format!("w/s{i}")), &format!("s{i}\n"));
    }
    let m = fx.mount(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (w, stop, reads) = (fx.m("w"), stop.clone(), reads.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(rd) = fs::read_dir(&w) {
                    for e in rd.flatten() {
                        let _ = fs::read(e.path());
                    }
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    take(&fx, Some("s1"), 1);
    let at_s1 = tree_of(&fx.mnt);
    let mut failures = Vec::new();
    let mut seq = 2;
    for k in 1..=60 {
        let r = reads.load(Ordering::Relaxed);
        assert!(
            eventually(Duration::from_secs(10), || reads.load(Ordering::Relaxed)
                > r),
            "the reader is stuck"
        );
        let steps: [(String, std::io::Result<()>); 3] = [
            (
                format!("rewrite w/s{}", k % 4),
                fs::write(fx.m(&format!("w/s{}", k % 4)), format!("{k}\n")),
            ),
            (
                format!("create w/n{k}"),
                fs::write(fx.m(&format!("w/n{k}")), format!("{k}\n")),
            ),
            (
                format!("unlink w/n{}", k - 1),
                match fs::remove_file(fx.m(&format!("w/n{}", k - 1))) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                    r => r,
                },
            ),
        ];
        for (what, r) in steps {
            if let Err(e) = r {
                failures.push(format!("after operation {k}: {what}: {e}"));
            }
        }
        if k % 3 == 0 {
            rollback(&fx, Some("s1"), "s1");
            seq = 2;
        } else {
            take(&fx, Some(&format!("k{k}")), seq);
            seq += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    rollback(&fx, Some("s1"), "s1");
    assert_eq!(
        tree_diff(&tree_of(&fx.mnt), &at_s1),
        "",
        "rolled back to s1"
    );
    m.unmount();
}

/// A file of the upper hard-linked after a snapshot, with a snapshot after that, then
/// written (copied up from the snapshot layer) and one of its names removed: one name left,
/// one link, as it was when the mount showed it before, and after a remount.
#[test]
fn link_counts_across_snapshots() {
    let fx = Fixture::new(1);
    let m = fx.mount(&[]);
    put(&fx.m("b"), "x\n");
    take(&fx, Some("m1"), 1);
    fs::hard_link(fx.m("b"), fx.m("a")).unwrap();
    assert_eq!(fs::metadata(fx.m("b")).unwrap().nlink(), 2);
    take(&fx, Some("m2"), 2);
    assert_eq!(fs::metadata(fx.m("b")).unwrap().nlink(), 2, "after m2");
    OpenOptions::new()
        .append(true)
        .open(fx.m("b"))
        .unwrap()
        .write_all(b"y\n")
        .unwrap();
    assert_eq!(read(&fx.m("a")), "x\ny\n", "the other name, after a write");
    fs::remove_file(fx.m("a")).unwrap();
    let m = m.check_across_remount(|when| {
        assert_eq!(names(&fx.mnt), ["b"], "{when}");
        assert_eq!(read(&fx.m("b")), "x\ny\n", "{when}");
        assert_eq!(
            fs::metadata(fx.m("b")).unwrap().nlink(),
            1,
            "{when}: nlink of b"
        );
    });
    rollback(&fx, Some("m2"), "m2");
    assert_eq!(read(&fx.m("a")), "x\n");
    assert_eq!(
        fs::metadata(fx.m("b")).unwrap().nlink(),
        2,
        "rolled back to m2"
    );
    rollback(&fx, Some("m1"), "m1");
    assert_eq!(names(&fx.mnt), ["b"]);
    assert_eq!(
        fs::metadata(fx.m("b")).unwrap().nlink(),
        1,
        "rolled back to m1"
    );
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// Depth
// ---------------------------------------------------------------------------------------------

/// 50 snapshots, each after a few changes: the view is right through 50 snapshot layers,
/// `snapshots` lists 50, rolling back to the 25th gives its state, and a remount keeps it.
#[test]
fn fifty_snapshots_deep() {
    let fx = Fixture::new(1);
    for i in 0..10 {
        put(&fx.l(0, &format!("f{i}")), &format!("base {i}\n"));
    }
    put(&fx.l(0, "dir/x"), "x\n");
    let m = fx.mount(&[]);
    let mut models: Vec<Tree> = vec![tree_of(&fx.mnt)];
    for i in 1..=50u32 {
        put(&fx.m(&format!("f{}", i % 10)), &format!("v{i}\n"));
        put(&fx.m(&format!("dir/n{i}")), &format!("n{i}\n"));
        if i % 3 == 0 {
            fs::remove_file(fx.m(&format!("dir/n{}", i - 1))).unwrap();
        }
        if i % 7 == 0 {
            set_mode(&fx.m(&format!("f{}", i % 10)), 0o600 + (i % 2) * 0o40);
        }
        if i % 10 == 5 {
            fs::remove_file(fx.m(&format!("f{}", (i + 3) % 10))).unwrap();
        }
        if i % 10 == 6 {
            put(&fx.m(&format!("f{}", (i + 2) % 10)), "again\n");
        }
        let state = tree_of(&fx.mnt);
        models.push(state);
        take(&fx, Some(&format!("s{i}")), i);
    }
    let last = models.last().unwrap();
    assert_eq!(
        tree_diff(&tree_of(&fx.mnt), last),
        "",
        "through 50 snapshot layers"
    );
    let want: Vec<String> = (1..=50).map(|i| format!("s{i}")).collect();
    assert_eq!(listed_names(&fx), want);
    assert_eq!(snapshot_layers(&store(&fx)).len(), 50);

    rollback(&fx, Some("s25"), "s25");
    assert_eq!(
        tree_diff(&tree_of(&fx.mnt), &models[25]),
        "",
        "rolled back to s25"
    );
    assert_eq!(listed_names(&fx), want[..25]);
    assert_eq!(snapshot_layers(&store(&fx)).len(), 25);
    let m = m.remount();
    assert_eq!(
        tree_diff(&tree_of(&fx.mnt), &models[25]),
        "",
        "s25 after remount"
    );
    assert_eq!(listed_names(&fx), want[..25]);
    rollback(&fx, Some("s10"), "s10");
    assert_eq!(
        tree_diff(&tree_of(&fx.mnt), &models[10]),
        "",
        "rolled back to s10"
    );
    assert_nothing_half_done(&fx, "at the end");
    m.unmount();
}
