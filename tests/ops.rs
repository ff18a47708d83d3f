//! One focused test per operation: merged view, branch directories on disk, and after remount.
mod common;
use common::*;
use std::ffi::CStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

const MIB: u64 = 1 << 20;

/// A lower file with distinctive metadata: mode 0604, owner 1234:5678, user.k=v, old mtime.
fn meta_file(path: &Path, content: &str) {
    put(path, content);
    chown(path, 1234, 5678);
    set_mode(path, 0o604);
    xattr::set(path, "user.k", b"v").unwrap();
    set_mtime(path, 1_000_000_000, 123_456_789).unwrap();
}

fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn xattr_names(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = xattr::list(path)
        .unwrap()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn append(path: &Path, data: &str) -> std::io::Result<()> {
    OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(data.as_bytes())
}

#[test]
fn create_write_read() {
    let fx = Fixture::new(1);
    mkdir_p(&fx.l(0, "dir"));
    set_mode(&fx.l(0, "dir"), 0o751);
    let m = fx.mount(&[]);

    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(fx.m("new.txt"))
        .unwrap();
    f.write_all(b"hello").unwrap();
    drop(f);
    assert_eq!(read(&fx.m("new.txt")), "hello");
    assert_eq!(mode_of(&fx.m("new.txt")), 0o640);
    assert_eq!(read(&fx.u("new.txt")), "hello");
    assert_eq!(mode_of(&fx.u("new.txt")), 0o640);
    assert_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(fx.m("new.txt")),
        libc::EEXIST,
        "O_EXCL on existing file",
    );

    // Creating inside a lower-only directory copies the directory up first.
    fs::write(fx.m("dir/inner"), "inner").unwrap();
    assert_eq!(read(&fx.u("dir/inner")), "inner");
    assert_eq!(mode_of(&fx.u("dir")), 0o751);
    assert_eq!(names(&fx.mnt), strs(&["dir", "new.txt"]));

    let m = m.remount();
    assert_eq!(read(&fx.m("new.txt")), "hello");
    assert_eq!(read(&fx.m("dir/inner")), "inner");
    assert_eq!(mode_of(&fx.m("new.txt")), 0o640);
    drop(m);
}

#[test]
fn append_copies_up() {
    let fx = Fixture::new(1);
    meta_file(&fx.l(0, "f"), "abc");
    let lower = entry(&fx.l(0, "f"));
    let m = fx.mount(&[]);

    assert!(!lexists(&fx.u("f")), "no copy-up before a write");
    append(&fx.m("f"), "def").unwrap();
    assert_eq!(read(&fx.m("f")), "abcdef");
    assert_eq!(read(&fx.u("f")), "abcdef");
    let up = entry(&fx.u("f"));
    assert_eq!(
        (up.mode, up.uid, up.gid, &up.xattrs),
        (lower.mode, lower.uid, lower.gid, &lower.xattrs)
    );

    let m = m.remount();
    assert_eq!(read(&fx.m("f")), "abcdef");
    assert_eq!(
        xattr::get(fx.m("f"), "user.k").unwrap(),
        Some(b"v".to_vec())
    );
    drop(m);
}

#[test]
fn truncate_copies_up() {
    let fx = Fixture::new(1);
    for n in ["t1", "t2", "t3"] {
        meta_file(&fx.l(0, n), "0123456789");
    }
    let lower = entry(&fx.l(0, "t1"));
    let m = fx.mount(&[]);

    // ftruncate on a descriptor opened without O_TRUNC
    OpenOptions::new()
        .write(true)
        .open(fx.m("t1"))
        .unwrap()
        .set_len(4)
        .unwrap();
    // truncate(2) by path
    cvt(unsafe { libc::truncate(cstr(&fx.m("t2")).as_ptr(), 0) }).unwrap();
    // open(O_TRUNC)
    drop(
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(fx.m("t3"))
            .unwrap(),
    );

    let check = |when: &str| {
        assert_eq!(read(&fx.m("t1")), "0123", "{when}");
        assert_eq!(read(&fx.m("t2")), "", "{when}");
        assert_eq!(read(&fx.m("t3")), "", "{when}");
        assert_eq!(read(&fx.u("t1")), "0123", "{when}");
        assert_eq!(fs::metadata(fx.u("t2")).unwrap().len(), 0);
        assert_eq!(fs::metadata(fx.u("t3")).unwrap().len(), 0);
        for n in ["t1", "t2", "t3"] {
            let up = entry(&fx.u(n));
            assert_eq!(
                (up.mode, up.uid, up.gid, &up.xattrs),
                (lower.mode, lower.uid, lower.gid, &lower.xattrs),
                "{n}"
            );
        }
    };
    drop(m.check_across_remount(check));
}

/// The upper copy of a metadata change, with its data taken as what the merged view shows:
/// a chmod, chown, utimens or xattr change copies metadata only (the data stays in the
/// lower until the first write, as overlayfs' metacopy), so the upper file is sparse.
fn upper_metadata(upper: &Path, merged_expected: &Entry) -> Entry {
    let mut e = entry(upper);
    if e.size == merged_expected.size {
        e.data = merged_expected.data.clone();
    }
    e
}

#[test]
fn chmod_copies_up_preserving_metadata() {
    let fx = Fixture::new(1);
    meta_file(&fx.l(0, "f"), "content");
    let mut expected = entry(&fx.l(0, "f"));
    expected.mode = 0o751;
    let m = fx.mount(&[]);

    chmod(&fx.m("f"), 0o751).unwrap();
    assert_eq!(
        upper_metadata(&fx.u("f"), &expected),
        expected,
        "upper copy: size, owner, mtime, xattrs kept; new mode"
    );
    assert_eq!(entry(&fx.m("f")), expected, "merged view");
    let m = m.remount();
    assert_eq!(entry(&fx.m("f")), expected, "after remount");
    drop(m);
}

#[test]
fn chown_copies_up_preserving_metadata() {
    let fx = Fixture::new(1);
    meta_file(&fx.l(0, "f"), "content");
    let mut expected = entry(&fx.l(0, "f"));
    (expected.uid, expected.gid) = (4321, 8765);
    let m = fx.mount(&[]);

    std::os::unix::fs::chown(fx.m("f"), Some(4321), Some(8765)).unwrap();
    assert_eq!(upper_metadata(&fx.u("f"), &expected), expected);
    assert_eq!(entry(&fx.m("f")), expected);
    let m = m.remount();
    assert_eq!(entry(&fx.m("f")), expected);
    drop(m);
}

#[test]
fn utimens_copies_up_preserving_metadata() {
    let fx = Fixture::new(1);
    meta_file(&fx.l(0, "f"), "content");
    let mut expected = entry(&fx.l(0, "f"));
    expected.mtime = (2_000_000_000, 5);
    let m = fx.mount(&[]);

    set_mtime(&fx.m("f"), 2_000_000_000, 5).unwrap();
    assert_eq!(upper_metadata(&fx.u("f"), &expected), expected);
    assert_eq!(entry(&fx.m("f")), expected);
    let m = m.remount();
    assert_eq!(entry(&fx.m("f")), expected);
    drop(m);
}

#[test]
fn chmod_lower_dir_copies_up_dir_only() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "d/f"), "f");
    put(&fx.l(0, "d/sub/g"), "g");
    set_mode(&fx.l(0, "d"), 0o755);
    let m = fx.mount(&[]);

    chmod(&fx.m("d"), 0o700).unwrap();
    assert_eq!(mode_of(&fx.m("d")), 0o700);
    assert_eq!(mode_of(&fx.u("d")), 0o700);
    assert!(
        upper_names(&fx.u("d")).is_empty(),
        "directory copy-up copies no children"
    );
    assert_eq!(
        names(&fx.m("d")),
        strs(&["f", "sub"]),
        "the directory still merges"
    );
    assert_eq!(read(&fx.m("d/sub/g")), "g");
    let m = m.remount();
    assert_eq!(mode_of(&fx.m("d")), 0o700);
    assert_eq!(names(&fx.m("d")), strs(&["f", "sub"]));
    drop(m);
}

#[test]
fn xattrs() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "x"), "data");
    xattr::set(fx.l(0, "x"), "user.a", b"1").unwrap();
    mkdir_p(&fx.l(0, "dd"));
    let m = fx.mount(&[]);

    assert_eq!(
        xattr::get(fx.m("x"), "user.a").unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(xattr_names(&fx.m("x")), strs(&["user.a"]));
    assert_eq!(
        xattr::get(fx.m("x"), "user.none").unwrap(),
        None,
        "missing attribute is ENODATA"
    );
    assert!(!lexists(&fx.u("x")), "reading xattrs does not copy up");

    xattr::set(fx.m("x"), "user.b", b"2").unwrap();
    assert_eq!(xattr_names(&fx.m("x")), strs(&["user.a", "user.b"]));
    assert_eq!(
        xattr::get(fx.u("x"), "user.a").unwrap(),
        Some(b"1".to_vec()),
        "copied up with old xattrs"
    );
    assert_eq!(
        xattr::get(fx.u("x"), "user.b").unwrap(),
        Some(b"2".to_vec())
    );
    assert_eq!(read(&fx.m("x")), "data");
    assert_eq!(
        fs::metadata(fx.u("x")).unwrap().len(),
        4,
        "the copy has the file's size"
    );

    xattr::remove(fx.m("x"), "user.a").unwrap();
    assert_eq!(xattr::get(fx.m("x"), "user.a").unwrap(), None);
    assert_eq!(xattr_names(&fx.m("x")), strs(&["user.b"]));
    assert_eq!(xattr::get(fx.u("x"), "user.a").unwrap(), None);
    assert_errno(
        xattr::remove(fx.m("x"), "user.a"),
        libc::ENODATA,
        "remove missing xattr",
    );

    // On a lower directory.
    xattr::set(fx.m("dd"), "user.dir", b"yes").unwrap();
    assert_eq!(
        xattr::get(fx.u("dd"), "user.dir").unwrap(),
        Some(b"yes".to_vec())
    );

    let m = m.remount();
    assert_eq!(xattr_names(&fx.m("x")), strs(&["user.b"]));
    assert_eq!(
        xattr::get(fx.m("x"), "user.b").unwrap(),
        Some(b"2".to_vec())
    );
    assert_eq!(
        xattr::get(fx.m("dd"), "user.dir").unwrap(),
        Some(b"yes".to_vec())
    );
    drop(m);
}

/// What `unionmount layers` says of the branches' xattrs, once the daemon has looked (the
/// first xattr request starts the look, in the background).
fn xattr_look(mnt: &Path) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let _ = xattr::list(mnt);
        let out = tool_ok(["layers", &s(mnt)]);
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("xattrs in the branches: "))
            .expect("layers names the branches' xattrs")
            .to_string();
        if !line.starts_with("looking") && !line.starts_with("not asked") {
            return line;
        }
        assert!(std::time::Instant::now() < deadline, "still {line}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn read_only_stack_without_xattrs_tells_the_kernel_it_has_none() {
    let fx = Fixture::new(2);
    put(&fx.l(0, "a/b/f"), "top");
    put(&fx.l(1, "g"), "bottom");
    // The union's own records do not count.
    mkdir_p(&fx.l(0, "opaque"));
    xattr::set(fx.l(0, "opaque"), "user.overlay.opaque", b"y").unwrap();
    let m = fx.mount_args(vec![fx.ro_spec(), s(&fx.mnt)], fx.lowers.clone());
    assert_eq!(xattr_look(&fx.mnt), "none in any branch");
    for p in [fx.m("a/b/f"), fx.m("g"), fx.m("opaque"), fx.mnt.clone()] {
        assert_errno(xattr::list(&p).map(|l| l.count()), libc::EOPNOTSUPP, "list");
        assert_errno(xattr::get(&p, "user.k"), libc::EOPNOTSUPP, "get");
    }
    assert_eq!(read(&fx.m("a/b/f")), "top");
    let which = tool_ok(["which", &s(&fx.m("g"))]);
    assert!(which.contains(&s(&fx.lowers[1])), "{which}");
    drop(m);

    // A branch edited by hand is looked through again at the next mount.
    xattr::set(fx.l(1, "g"), "user.k", b"v").unwrap();
    let m = fx.mount_args(vec![fx.ro_spec(), s(&fx.mnt)], fx.lowers.clone());
    assert_eq!(xattr_look(&fx.mnt), "some branch holds them");
    assert_eq!(
        xattr::get(fx.m("g"), "user.k").unwrap(),
        Some(b"v".to_vec())
    );
    assert_eq!(xattr_names(&fx.m("a/b/f")), Vec::<String>::new());
    assert_eq!(xattr::get(fx.m("a/b/f"), "user.k").unwrap(), None);
    drop(m);
}

#[test]
fn xattrs_are_answered_on_writable_stacks_and_with_xattr_on() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "lower");
    let m = fx.mount(&[]);
    assert_eq!(xattr_look(&fx.mnt), "kept per file (writable stack)");
    assert_eq!(xattr_names(&fx.m("f")), Vec::<String>::new());
    xattr::set(fx.m("f"), "user.k", b"v").unwrap();
    assert_eq!(
        xattr::get(fx.m("f"), "user.k").unwrap(),
        Some(b"v".to_vec())
    );
    drop(m);
    fs::remove_dir_all(&fx.upper).unwrap();
    fs::create_dir(&fx.upper).unwrap();

    let args = vec!["-o".into(), "xattr=on".into(), fx.ro_spec(), s(&fx.mnt)];
    let m = fx.mount_args(args, fx.lowers.clone());
    for _ in 0..20 {
        assert_eq!(xattr_names(&fx.m("f")), Vec::<String>::new());
        assert_eq!(xattr::get(fx.m("f"), "user.k").unwrap(), None);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = tool_ok(["layers", &s(&fx.mnt)]);
    assert!(
        out.contains("xattrs in the branches: not asked for yet"),
        "{out}"
    );
    drop(m);
}

#[test]
fn overlay_markers_never_listed() {
    let fx = Fixture::new(2);
    for d in ["o1", "o2", "o3"] {
        put(&fx.l(1, &format!("{d}/old")), "old");
        mkdir_p(&fx.l(0, d));
    }
    xattr::set(fx.l(0, "o1"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(fx.l(0, "o2"), "user.overlay.opaque", b"y").unwrap();
    xattr::set(fx.l(0, "o2"), "user.keep", b"1").unwrap();
    put(&fx.l(1, "o4/old"), "old");
    let m = fx.mount(&[]);

    // o4 becomes opaque through the mount.
    fs::remove_dir_all(fx.m("o4")).unwrap();
    fs::create_dir(fx.m("o4")).unwrap();

    let check = |when: &str| {
        for d in ["o1", "o2", "o4"] {
            let listed = xattr_names(&fx.m(d));
            assert!(
                !listed
                    .iter()
                    .any(|n| n.starts_with("trusted.overlay.") || n.starts_with("user.overlay.")),
                "{when}: {d} lists a marker: {listed:?}"
            );
            assert!(names(&fx.m(d)).is_empty(), "{when}: {d} is opaque");
        }
        assert_eq!(xattr_names(&fx.m("o2")), strs(&["user.keep"]), "{when}");
    };
    drop(m.check_across_remount(check));
}

#[test]
fn copyup_deep_creates_parents_with_lower_modes() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "a/b/c/file"), "deep");
    put(&fx.l(0, "a/b/other"), "other");
    let dirs = [
        ("a", 0o750, 1001, 1002),
        ("a/b", 0o711, 1003, 1004),
        ("a/b/c", 0o705, 1005, 1006),
    ];
    for (d, mode, uid, gid) in dirs {
        chown(&fx.l(0, d), uid, gid);
        set_mode(&fx.l(0, d), mode);
    }
    let m = fx.mount(&[]);

    append(&fx.m("a/b/c/file"), "+").unwrap();
    assert_eq!(read(&fx.m("a/b/c/file")), "deep+");
    assert_eq!(read(&fx.u("a/b/c/file")), "deep+");
    for (d, mode, uid, gid) in dirs {
        let md = fs::metadata(fx.u(d)).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (mode, uid, gid),
            "upper {d}"
        );
        assert_eq!(mode_of(&fx.m(d)), mode, "merged {d}");
    }
    assert!(!lexists(&fx.u("a/b/other")), "siblings are not copied up");
    assert_eq!(upper_names(&fx.u("a/b")), strs(&["c"]));

    let m = m.remount();
    assert_eq!(read(&fx.m("a/b/c/file")), "deep+");
    assert_eq!(read(&fx.m("a/b/other")), "other");
    for (d, mode, _, _) in dirs {
        assert_eq!(mode_of(&fx.m(d)), mode, "merged {d} after remount");
    }
    drop(m);
}

#[test]
fn unlink_lower_file() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "f");
    put(&fx.l(0, "keep"), "k");
    let m = fx.mount(&[]);

    fs::remove_file(fx.m("f")).unwrap();
    assert_gone(&fx.m("f"));
    assert_eq!(names(&fx.mnt), strs(&["keep"]));
    assert_regular_file(&fx.u(".wh.f"));
    assert_eq!(upper_names(&fx.upper), strs(&[".wh.f"]));
    assert_errno(fs::remove_file(fx.m("f")), libc::ENOENT, "unlink twice");

    let m = m.remount();
    assert_gone(&fx.m("f"));
    assert_eq!(names(&fx.mnt), strs(&["keep"]));
    drop(m);
}

#[test]
fn unlink_upper_only_file() {
    let fx = Fixture::new(1);
    put(&fx.u("u"), "u");
    put(&fx.l(0, "keep"), "k");
    let m = fx.mount(&[]);

    fs::write(fx.m("n"), "n").unwrap();
    assert_eq!(names(&fx.mnt), strs(&["keep", "n", "u"]));
    fs::remove_file(fx.m("u")).unwrap();
    fs::remove_file(fx.m("n")).unwrap();
    assert_gone(&fx.m("u"));
    assert_gone(&fx.m("n"));
    assert_eq!(
        upper_names(&fx.upper),
        Vec::<String>::new(),
        "no whiteout needed for upper-only names"
    );

    let m = m.remount();
    assert_eq!(names(&fx.mnt), strs(&["keep"]));
    drop(m);
}

#[test]
fn unlink_file_in_both_layers() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "low");
    put(&fx.u("f"), "up");
    let m = fx.mount(&[]);

    assert_eq!(read(&fx.m("f")), "up", "upper wins");
    fs::remove_file(fx.m("f")).unwrap();
    assert_gone(&fx.m("f"));
    assert_eq!(upper_names(&fx.upper), strs(&[".wh.f"]));
    assert_regular_file(&fx.u(".wh.f"));

    let m = m.remount();
    assert_gone(&fx.m("f"));
    assert!(names(&fx.mnt).is_empty());
    drop(m);
}

#[test]
fn rmdir_lower_dir() {
    let fx = Fixture::new(1);
    mkdir_p(&fx.l(0, "ed"));
    put(&fx.l(0, "ld/x"), "x");
    put(&fx.l(0, "keep"), "k");
    let m = fx.mount(&[]);

    fs::remove_dir(fx.m("ed")).unwrap();
    assert_gone(&fx.m("ed"));
    assert_regular_file(&fx.u(".wh.ed"));

    fs::remove_file(fx.m("ld/x")).unwrap();
    assert!(names(&fx.m("ld")).is_empty());
    fs::remove_dir(fx.m("ld")).unwrap();
    assert_gone(&fx.m("ld"));
    assert_regular_file(&fx.u(".wh.ld"));
    assert!(
        !lexists(&fx.u("ld")),
        "the upper copy of a removed directory is gone too"
    );
    assert_eq!(names(&fx.mnt), strs(&["keep"]));

    let m = m.remount();
    assert_eq!(names(&fx.mnt), strs(&["keep"]));
    assert_gone(&fx.m("ld/x"));
    drop(m);
}

#[test]
fn rmdir_nonempty_merged_dir() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "d1/f"), "f"); // lower content
    put(&fx.l(0, "d2/f"), "f"); // lower content whited out in the upper: empty
    put(&fx.u("d2/.wh.f"), "");
    put(&fx.u("d3/g"), "g"); // upper content only
    put(&fx.l(0, "d4/f"), "f"); // lower content under an empty upper dir
    mkdir_p(&fx.u("d4"));
    let m = fx.mount(&[]);

    for d in ["d1", "d3", "d4"] {
        assert_errno(
            fs::remove_dir(fx.m(d)),
            libc::ENOTEMPTY,
            &format!("rmdir {d}"),
        );
        assert!(lexists(&fx.m(d)));
        assert!(
            !lexists(&fx.u(&format!(".wh.{d}"))),
            "no whiteout for failed rmdir {d}"
        );
    }
    assert!(names(&fx.m("d2")).is_empty());
    fs::remove_dir(fx.m("d2")).unwrap();
    assert_gone(&fx.m("d2"));
    assert!(lexists(&fx.u(".wh.d2")));

    let m = m.remount();
    assert_eq!(names(&fx.mnt), strs(&["d1", "d3", "d4"]));
    assert_eq!(names(&fx.m("d4")), strs(&["f"]));
    drop(m);
}

#[test]
fn mkdir_over_whiteout_is_opaque() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "d/f1"), "old1");
    put(&fx.l(0, "d/sub/f2"), "old2");
    let m = fx.mount(&[]);

    fs::remove_dir_all(fx.m("d")).unwrap();
    fs::create_dir(fx.m("d")).unwrap();
    assert!(names(&fx.m("d")).is_empty());
    assert_regular_file(&fx.u(&format!("d/{OPQ}")));
    assert!(!lexists(&fx.u(".wh.d")));
    fs::write(fx.m("d/f1"), "new1").unwrap();

    let check = |when: &str| {
        assert_eq!(names(&fx.m("d")), strs(&["f1"]), "{when}");
        assert_eq!(read(&fx.m("d/f1")), "new1", "{when}");
        assert_errno(fs::metadata(fx.m("d/sub")), libc::ENOENT, "stat d/sub");
        assert_errno(
            fs::File::open(fx.m("d/sub/f2")),
            libc::ENOENT,
            "open d/sub/f2",
        );
        assert_eq!(upper_names(&fx.u("d")), strs(&[OPQ, "f1"]), "{when}");
    };
    drop(m.check_across_remount(check));
}

#[test]
fn recreate_whited_out_file_removes_whiteout() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "old");
    put(&fx.l(0, "g"), "old");
    put(&fx.l(0, "h"), "old");
    let m = fx.mount(&[]);

    for n in ["f", "g", "h"] {
        fs::remove_file(fx.m(n)).unwrap();
        assert_regular_file(&fx.u(&format!(".wh.{n}")));
    }
    fs::write(fx.m("f"), "new").unwrap();
    fs::create_dir(fx.m("g")).unwrap();
    std::os::unix::fs::symlink("f", fx.m("h")).unwrap();

    let check = |when: &str| {
        assert_eq!(read(&fx.m("f")), "new", "{when}");
        assert!(fs::symlink_metadata(fx.m("g")).unwrap().is_dir(), "{when}");
        assert!(names(&fx.m("g")).is_empty(), "{when}");
        assert_eq!(fs::read_link(fx.m("h")).unwrap(), Path::new("f"), "{when}");
        assert_eq!(
            upper_names(&fx.upper),
            strs(&["f", "g", "h"]),
            "{when}: whiteouts removed"
        );
        assert_eq!(read(&fx.u("f")), "new");
    };
    drop(m.check_across_remount(check));
}

#[test]
fn rename_lower_file() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "a"), "A");
    set_mode(&fx.l(0, "a"), 0o640);
    xattr::set(fx.l(0, "a"), "user.k", b"v").unwrap();
    set_mtime(&fx.l(0, "a"), 1_000_000_000, 7).unwrap();
    let lower = entry(&fx.l(0, "a"));
    let m = fx.mount(&[]);

    let ino_a = ino(&fx.m("a"));
    fs::rename(fx.m("a"), fx.m("b")).unwrap();
    assert_gone(&fx.m("a"));
    assert_eq!(read(&fx.m("b")), "A");
    assert_eq!(ino(&fx.m("b")), ino_a, "rename keeps the inode number");
    assert_eq!(names(&fx.mnt), strs(&["b"]));
    assert_regular_file(&fx.u(".wh.a"));
    let up = entry(&fx.u("b"));
    assert_eq!(
        (up.mode, &up.xattrs, up.mtime, &up.data),
        (lower.mode, &lower.xattrs, lower.mtime, &lower.data)
    );

    let m = m.remount();
    assert_gone(&fx.m("a"));
    assert_eq!(read(&fx.m("b")), "A");
    assert_eq!(names(&fx.mnt), strs(&["b"]));
    drop(m);
}

#[test]
fn rename_over_existing() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "a"), "A");
    put(&fx.l(0, "b"), "B");
    put(&fx.l(0, "x"), "X");
    let m = fx.mount(&[]);

    let mut old_b = File::open(fx.m("b")).unwrap();
    fs::rename(fx.m("a"), fx.m("b")).unwrap();
    assert_eq!(read(&fx.m("b")), "A");
    assert_gone(&fx.m("a"));
    let mut s = String::new();
    old_b.read_to_string(&mut s).unwrap();
    assert_eq!(
        s, "B",
        "a descriptor open on the replaced file still reads it"
    );
    // An open descriptor would keep the mount busy across the remount below.
    drop(old_b);

    fs::write(fx.m("c"), "C").unwrap();
    fs::rename(fx.m("c"), fx.m("x")).unwrap();
    assert_eq!(read(&fx.m("x")), "C");
    assert_gone(&fx.m("c"));

    let check = |when: &str| {
        assert_eq!(names(&fx.mnt), strs(&["b", "x"]), "{when}");
        assert_eq!(read(&fx.m("b")), "A");
        assert_eq!(read(&fx.m("x")), "C");
        assert_eq!(read(&fx.u("b")), "A");
        assert_eq!(read(&fx.u("x")), "C");
        assert_regular_file(&fx.u(".wh.a"));
        assert!(
            !lexists(&fx.u(".wh.b")) && !lexists(&fx.u(".wh.x")),
            "{when}: target names are not whited out"
        );
    };
    drop(m.check_across_remount(check));
}

#[test]
fn rename_lower_dir_with_content() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "d/f1"), "1");
    put(&fx.l(0, "d/sub/f2"), "2");
    put(&fx.l(0, "target/ghost"), "g");
    put(&fx.l(0, "full/x"), "x");
    let m = fx.mount(&[]);

    fs::write(fx.m("d/new"), "n").unwrap(); // d is now partly in the upper
    fs::remove_file(fx.m("target/ghost")).unwrap();

    fs::rename(fx.m("d"), fx.m("e")).expect("renaming a lower directory must work (no EXDEV)");
    assert_gone(&fx.m("d"));
    assert_eq!(names(&fx.m("e")), strs(&["f1", "new", "sub"]));
    assert_eq!(read(&fx.m("e/sub/f2")), "2");

    // Onto an empty merged directory whose lower still has (whited-out) content.
    fs::rename(fx.m("e"), fx.m("target")).unwrap();
    assert_gone(&fx.m("e"));
    // Onto a non-empty directory.
    assert_errno(
        fs::rename(fx.m("target"), fx.m("full")),
        libc::ENOTEMPTY,
        "rename onto non-empty dir",
    );

    let check = |when: &str| {
        assert_eq!(names(&fx.mnt), strs(&["full", "target"]), "{when}");
        assert_eq!(
            names(&fx.m("target")),
            strs(&["f1", "new", "sub"]),
            "{when}: no ghost"
        );
        assert_eq!(names(&fx.m("target/sub")), strs(&["f2"]), "{when}");
        assert_eq!(read(&fx.m("target/f1")), "1");
        assert_eq!(read(&fx.m("target/new")), "n");
        assert_eq!(read(&fx.m("target/sub/f2")), "2");
        assert_errno(
            fs::File::open(fx.m("target/ghost")),
            libc::ENOENT,
            "open target/ghost",
        );
        assert_gone(&fx.m("d"));
        assert_gone(&fx.m("e"));
        assert_eq!(names(&fx.m("full")), strs(&["x"]));
        assert_regular_file(&fx.u(".wh.d"));
    };
    drop(m.check_across_remount(check));
}

#[test]
fn renameat2_noreplace() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "a"), "A");
    put(&fx.l(0, "b"), "B");
    let m = fx.mount(&[]);

    let noreplace = libc::RENAME_NOREPLACE;
    assert_errno(
        renameat2(&fx.m("a"), &fx.m("b"), noreplace),
        libc::EEXIST,
        "NOREPLACE onto b",
    );
    assert_eq!(read(&fx.m("a")), "A");
    assert_eq!(read(&fx.m("b")), "B");
    assert!(!lexists(&fx.u(".wh.a")));

    renameat2(&fx.m("a"), &fx.m("c"), noreplace).unwrap();
    assert_eq!(read(&fx.m("c")), "A");
    assert_gone(&fx.m("a"));
    assert_regular_file(&fx.u(".wh.a"));

    // A whited-out name does not exist.
    fs::remove_file(fx.m("b")).unwrap();
    renameat2(&fx.m("c"), &fx.m("b"), noreplace).unwrap();
    assert_eq!(read(&fx.m("b")), "A");

    let m = m.remount();
    assert_eq!(names(&fx.mnt), strs(&["b"]));
    assert_eq!(read(&fx.m("b")), "A");
    drop(m);
}

/// RENAME_WHITEOUT is refused with EINVAL, as overlayfs does (it would leave a 0/0 device,
/// which a union reads as a whiteout: the name vanished instead). Nothing changes.
#[test]
fn renameat2_whiteout_is_einval() {
    // the flag needs CAP_MKNOD
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    put(&fx.l(0, "a"), "A");
    let m = fx.mount(&[]);
    put(&fx.m("u"), "U");
    for name in ["a", "u"] {
        assert_errno(
            renameat2(&fx.m(name), &fx.m("new"), libc::RENAME_WHITEOUT),
            libc::EINVAL,
            &format!("RENAME_WHITEOUT of {name}"),
        );
    }
    assert_eq!(names(&fx.mnt), strs(&["a", "u"]));
    assert_eq!(upper_names(&fx.upper), strs(&["u"]));
    drop(m);
}

#[test]
fn renameat2_exchange() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "x"), "X");
    put(&fx.l(0, "y"), "Y");
    let m = fx.mount(&[]);

    let (ix, iy) = (ino(&fx.m("x")), ino(&fx.m("y")));
    renameat2(&fx.m("x"), &fx.m("y"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(read(&fx.m("x")), "Y");
    assert_eq!(read(&fx.m("y")), "X");
    assert_eq!(
        (ino(&fx.m("x")), ino(&fx.m("y"))),
        (iy, ix),
        "the inodes trade places"
    );
    assert_errno(
        renameat2(&fx.m("x"), &fx.m("nothere"), libc::RENAME_EXCHANGE),
        libc::ENOENT,
        "EXCHANGE with a missing name",
    );

    let check = |when: &str| {
        assert_eq!(read(&fx.m("x")), "Y", "{when}");
        assert_eq!(read(&fx.m("y")), "X", "{when}");
        assert_eq!(read(&fx.u("x")), "Y", "{when}");
        assert_eq!(read(&fx.u("y")), "X", "{when}");
        assert_eq!(names(&fx.mnt), strs(&["x", "y"]), "{when}");
    };
    drop(m.check_across_remount(check));
}

#[test]
fn hard_links() {
    let fx = Fixture::new(1);
    let m = fx.mount(&[]);

    fs::write(fx.m("a"), "1").unwrap();
    fs::hard_link(fx.m("a"), fx.m("b")).unwrap();
    let check = |when: &str| {
        let (ma, mb) = (
            fs::metadata(fx.m("a")).unwrap(),
            fs::metadata(fx.m("b")).unwrap(),
        );
        assert_eq!(ma.ino(), mb.ino(), "{when}: links share st_ino");
        assert_eq!((ma.nlink(), mb.nlink()), (2, 2), "{when}");
        let d = dir_inos(&fx.mnt);
        assert_eq!(
            (d["a"], d["b"]),
            (ma.ino(), ma.ino()),
            "{when}: d_ino equals st_ino"
        );
        assert_eq!(
            ino(&fx.u("a")),
            ino(&fx.u("b")),
            "{when}: one inode on disk"
        );
    };
    check("mounted");
    append(&fx.m("b"), "2").unwrap();
    assert_eq!(read(&fx.m("a")), "12", "write through b visible through a");

    let m = m.remount();
    check("after remount");
    assert_eq!(read(&fx.m("a")), "12");
    fs::remove_file(fx.m("a")).unwrap();
    assert_eq!(read(&fx.m("b")), "12");
    assert_eq!(fs::metadata(fx.m("b")).unwrap().nlink(), 1);
    drop(m);
}

#[test]
fn hard_link_of_lower_file() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "F");
    let m = fx.mount(&[]);

    let ino_f = ino(&fx.m("f"));
    fs::hard_link(fx.m("f"), fx.m("g")).unwrap();
    assert_eq!(read(&fx.m("g")), "F");
    append(&fx.m("g"), "G").unwrap();
    assert_eq!(read(&fx.m("f")), "FG", "write through g visible through f");

    let check = |when: &str| {
        let (mf, mg) = (
            fs::metadata(fx.m("f")).unwrap(),
            fs::metadata(fx.m("g")).unwrap(),
        );
        assert_eq!(mf.ino(), mg.ino(), "{when}");
        assert_eq!((mf.nlink(), mg.nlink()), (2, 2), "{when}");
        let (uf, ug) = (
            fs::metadata(fx.u("f")).unwrap(),
            fs::metadata(fx.u("g")).unwrap(),
        );
        assert_eq!(uf.ino(), ug.ino(), "{when}: copied up once, then linked");
        assert_eq!(read(&fx.m("f")), "FG");
        assert_eq!(read(&fx.m("g")), "FG");
    };
    check("mounted");
    assert_eq!(
        ino(&fx.m("f")),
        ino_f,
        "copy-up for the link keeps the inode number"
    );
    let m = m.remount();
    check("after remount");
    drop(m);
}

/// A file with several names in a lower layer stays one file after a copy-up: writing
/// through one name shows through the others, in this mount and after a remount
/// (overlayfs' index=on).
#[test]
fn lower_hard_links_survive_copy_up() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "a"), "A");
    mkdir_p(&fx.l(0, "d/e"));
    fs::hard_link(fx.l(0, "a"), fx.l(0, "d/e/b")).unwrap();
    fs::hard_link(fx.l(0, "a"), fx.l(0, "c")).unwrap();
    fs::hard_link(fx.l(0, "a"), fx.l(0, "gone")).unwrap();
    let m = fx.mount(&[]);
    let ino_a = ino(&fx.m("a"));
    assert_eq!(ino(&fx.m("d/e/b")), ino_a, "one file, one number");

    append(&fx.m("a"), "+a").unwrap();
    assert_eq!(
        read(&fx.m("d/e/b")),
        "A+a",
        "write through a seen through b"
    );
    assert_eq!(read(&fx.m("c")), "A+a", "and through c");
    fs::remove_file(fx.m("gone")).unwrap();
    append(&fx.m("d/e/b"), "+b").unwrap();
    assert_eq!(read(&fx.m("a")), "A+a+b", "write through b seen through a");
    for n in ["a", "d/e/b", "c"] {
        assert_eq!(ino(&fx.m(n)), ino_a, "{n} keeps the number");
        assert!(
            fs::metadata(fx.m(n)).unwrap().nlink() >= 3,
            "{n} counts its names"
        );
    }
    assert_eq!(read(&fx.l(0, "a")), "A", "the lower is untouched");

    // After a remount, a name nobody looked up since the copy-up still joins it.
    let m = m.remount();
    assert_eq!(read(&fx.m("c")), "A+a+b");
    append(&fx.m("c"), "+c").unwrap();
    for n in ["a", "d/e/b", "c"] {
        assert_eq!(read(&fx.m(n)), "A+a+b+c", "{n} after remount");
        assert_eq!(ino(&fx.m(n)), ino_a, "{n} keeps the number after remount");
    }
    assert!(!lexists(&fx.m("gone")), "a deleted name stays deleted");
    // On disk: the names share one upper inode; truncating through one empties all.
    let ua = fs::metadata(fx.u("a")).unwrap();
    assert_eq!(fs::metadata(fx.u("c")).unwrap().ino(), ua.ino());
    fs::write(fx.m("d/e/b"), "new").unwrap();
    assert_eq!(read(&fx.m("a")), "new", "O_TRUNC through b seen through a");
    assert!(
        !names(&fx.m("")).iter().any(|n| n.starts_with(".wh.")),
        "the index is never listed"
    );
    let m = m.remount();
    assert_eq!(read(&fx.m("c")), "new");
    drop(m);
}

#[test]
fn symlinks() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "F");
    std::os::unix::fs::symlink("f", fx.l(0, "ls")).unwrap();
    let m = fx.mount(&[]);

    assert_eq!(fs::read_link(fx.m("ls")).unwrap(), Path::new("f"));
    assert!(
        fs::symlink_metadata(fx.m("ls"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(read(&fx.m("ls")), "F");
    fs::write(fx.m("f"), "up").unwrap();
    assert_eq!(
        read(&fx.m("ls")),
        "up",
        "a lower symlink resolves in the merged namespace"
    );

    std::os::unix::fs::symlink("dangling/target", fx.m("s")).unwrap();
    let check = |when: &str| {
        let md = fs::symlink_metadata(fx.m("s")).unwrap();
        assert!(md.file_type().is_symlink(), "{when}");
        assert_eq!(
            md.len(),
            "dangling/target".len() as u64,
            "{when}: symlink size is target length"
        );
        assert_eq!(
            fs::read_link(fx.m("s")).unwrap(),
            Path::new("dangling/target"),
            "{when}"
        );
        assert_errno(
            fs::metadata(fx.m("s")),
            libc::ENOENT,
            "stat dangling symlink",
        );
        assert_eq!(
            fs::read_link(fx.u("s")).unwrap(),
            Path::new("dangling/target"),
            "{when}"
        );
    };
    check("mounted");
    assert_errno(
        std::os::unix::fs::symlink("x", fx.m("f")),
        libc::EEXIST,
        "symlink over file",
    );
    let m = m.remount();
    check("after remount");
    assert_eq!(read(&fx.m("ls")), "up");
    drop(m);
}

#[test]
fn mknod_fifo() {
    let fx = Fixture::new(1);
    let m = fx.mount(&[]);

    mkfifo(&fx.m("p"), 0o640).unwrap();
    let check = |when: &str| {
        let e = entry(&fx.m("p"));
        assert_eq!((e.kind, e.mode), (Kind::Fifo, 0o640), "{when}");
        assert_eq!(entry(&fx.u("p")).kind, Kind::Fifo, "{when}");
    };
    check("mounted");
    assert_errno(mkfifo(&fx.m("p"), 0o640), libc::EEXIST, "mkfifo twice");
    let m = m.remount();
    check("after remount");
    fs::remove_file(fx.m("p")).unwrap();
    assert_gone(&fx.m("p"));
    assert!(!lexists(&fx.u("p")));
    drop(m);
}

/// Raw readdir names (no sorting, no dedupe), minus . and ..
fn raw_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn assert_no_duplicates(dir: &Path) {
    let raw = raw_names(dir);
    let mut dedup = raw.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        raw.len(),
        dedup.len(),
        "duplicate names in readdir of {}: {raw:?}",
        dir.display()
    );
}

#[test]
fn readdir_dedupe_three_layers() {
    // upper, lower0 = middle, lower1 = bottom
    let fx = Fixture::new(2);
    let (top, mid, bot) = (fx.upper.clone(), fx.lowers[0].clone(), fx.lowers[1].clone());
    put(&bot.join("all"), "bottom");
    put(&bot.join("b"), "b");
    put(&bot.join("hidden"), "h");
    put(&bot.join("hd/x"), "x");
    put(&bot.join("d/b1"), "");
    put(&bot.join("d2/old"), "");
    put(&mid.join("all"), "middle");
    put(&mid.join("m"), "m");
    put(&mid.join(".wh.hidden"), "");
    put(&mid.join(".wh.hd"), "");
    put(&mid.join("d/m1"), "");
    put(&mid.join(format!("d2/{OPQ}")), "");
    put(&mid.join("d2/new"), "");
    put(&mid.join("mw"), "mw");
    put(&top.join("all"), "upper");
    put(&top.join("u"), "u");
    put(&top.join("d/u1"), "");
    put(&top.join(".wh.mw"), "");
    let m = fx.mount(&[]);

    let check = |when: &str| {
        assert_eq!(
            names(&fx.mnt),
            strs(&["all", "b", "d", "d2", "m", "u"]),
            "{when}"
        );
        assert_eq!(names(&fx.m("d")), strs(&["b1", "m1", "u1"]), "{when}");
        assert_eq!(names(&fx.m("d2")), strs(&["new"]), "{when}");
        for d in ["", "d", "d2"] {
            assert_no_duplicates(&fx.m(d));
        }
        assert_eq!(read(&fx.m("all")), "upper");
        assert_eq!(read(&fx.m("m")), "m");
        assert_eq!(read(&fx.m("b")), "b");
        for gone in [
            "hidden",
            "hd",
            "hd/x",
            "mw",
            "d2/old",
            ".wh.hidden",
            ".wh.mw",
        ] {
            assert_gone(&fx.m(gone));
        }
    };
    check("mounted");
    fs::remove_file(fx.m("all")).unwrap();
    assert_gone(&fx.m("all"));
    let m = m.remount();
    assert_gone(&fx.m("all"));
    assert_eq!(names(&fx.mnt), strs(&["b", "d", "d2", "m", "u"]));
    drop(m);
}

#[test]
fn readdir_large_merged_dir() {
    let fx = Fixture::new(2);
    for i in 0..300 {
        put(&fx.l(1, &format!("big/f{i:03}")), "bottom");
    }
    for i in 150..450 {
        put(&fx.l(0, &format!("big/f{i:03}")), "middle");
    }
    for i in 0..50 {
        put(&fx.l(0, &format!("big/.wh.f{i:03}")), "");
    }
    for i in 400..500 {
        put(&fx.u(&format!("big/f{i:03}")), "upper");
    }
    let expected: Vec<String> = (50..500).map(|i| format!("f{i:03}")).collect();
    let m = fx.mount(&[]);
    assert_eq!(names(&fx.m("big")), expected);
    assert_no_duplicates(&fx.m("big"));
    assert_eq!(read(&fx.m("big/f100")), "bottom");
    assert_eq!(read(&fx.m("big/f200")), "middle");
    assert_eq!(read(&fx.m("big/f420")), "upper");
    let m = m.remount();
    assert_eq!(names(&fx.m("big")), expected);
    drop(m);
}

#[test]
fn whiteouts_read_in_every_format() {
    let fx = Fixture::new(2);
    let (top, mid, bot) = (fx.upper.clone(), fx.lowers[0].clone(), fx.lowers[1].clone());
    for f in ["a", "b", "c", "d", "k"] {
        put(&bot.join(f), f);
    }
    for d in ["e", "f", "g", "h", "j"] {
        put(&bot.join(format!("{d}/old")), "old");
    }
    mknod_whiteout(&mid.join("a")); // char 0/0
    put(&mid.join(".wh.b"), ""); // .wh. file
    mknod_whiteout(&mid.join("x")); // whiteout of nothing
    put(&mid.join("e/mine"), "mine");
    xattr::set(mid.join("e"), "trusted.overlay.opaque", b"y").unwrap();
    put(&mid.join("f/mine"), "mine");
    xattr::set(mid.join("f"), "user.overlay.opaque", b"y").unwrap();
    put(&mid.join("g/mine"), "mine");
    put(&mid.join(format!("g/{OPQ}")), "");
    put(&mid.join("h/mine"), "mine");
    mknod_whiteout(&mid.join("h/old"));
    mknod_whiteout(&top.join("c"));
    put(&top.join(".wh.d"), "");
    put(&top.join("j/mine"), "mine");
    xattr::set(top.join("j"), "trusted.overlay.opaque", b"y").unwrap();
    let m = fx.mount(&[]);

    let check = |when: &str, gone: &[&str]| {
        for d in ["e", "f", "g", "h", "j"] {
            assert_eq!(names(&fx.m(d)), strs(&["mine"]), "{when}: {d}");
            assert_errno(
                File::open(fx.m(&format!("{d}/old"))),
                libc::ENOENT,
                &format!("{when}: open {d}/old"),
            );
        }
        for g in gone {
            assert_gone(&fx.m(g));
        }
    };
    check("mounted", &["a", "b", "c", "d", "x"]);
    assert_eq!(names(&fx.mnt), strs(&["e", "f", "g", "h", "j", "k"]));

    // Names hidden by whiteouts can be created again.
    fs::write(fx.m("a"), "new a").unwrap();
    fs::create_dir(fx.m("b")).unwrap();
    fs::write(fx.m("c"), "new c").unwrap(); // replaces the upper's char-device whiteout
    assert_eq!(entry(&fx.u("c")).kind, Kind::File);
    assert_eq!(read(&fx.u("c")), "new c");
    assert_eq!(read(&fx.m("a")), "new a");
    assert!(names(&fx.m("b")).is_empty());

    let m = m.remount();
    check("after remount", &["d", "x"]);
    assert_eq!(
        names(&fx.mnt),
        strs(&["a", "b", "c", "e", "f", "g", "h", "j", "k"])
    );
    assert_eq!(read(&fx.m("c")), "new c");
    assert_eq!(read(&fx.m("k")), "k");
    drop(m);
}

#[test]
fn wh_names_rejected() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "f");
    mkdir_p(&fx.l(0, "sub"));
    put(&fx.l(0, ".wh.gone"), ""); // whiteout of a name that does not exist
    let m = fx.mount(&[]);

    let eperm = |r: std::io::Result<()>, what: &str| assert_errno(r, libc::EPERM, what);
    eperm(fs::write(fx.m(".wh.x"), "x"), "create .wh.x");
    eperm(fs::write(fx.m("sub/.wh.y"), "y"), "create sub/.wh.y");
    eperm(fs::write(fx.m(OPQ), ""), "create .wh..wh..opq");
    eperm(fs::create_dir(fx.m(".wh.dir")), "mkdir .wh.dir");
    eperm(
        std::os::unix::fs::symlink("f", fx.m(".wh.sym")),
        "symlink .wh.sym",
    );
    eperm(mkfifo(&fx.m(".wh.fifo"), 0o644), "mkfifo .wh.fifo");
    eperm(
        fs::hard_link(fx.m("f"), fx.m(".wh.link")),
        "link to .wh.link",
    );
    eperm(fs::rename(fx.m("f"), fx.m(".wh.ren")), "rename to .wh.ren");
    assert_eq!(read(&fx.m("f")), "f");
    assert_gone(&fx.m(".wh.gone"));
    assert_gone(&fx.m("gone"));
    assert_eq!(names(&fx.mnt), strs(&["f", "sub"]));

    let wh_in_upper: Vec<String> = snapshot(&fx.upper)
        .into_keys()
        .filter(|k| {
            Path::new(k)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".wh."))
        })
        .collect();
    assert!(
        wh_in_upper.is_empty(),
        "marker names created in the upper: {wh_in_upper:?}"
    );
    let m = m.remount();
    assert_eq!(names(&fx.mnt), strs(&["f", "sub"]));
    drop(m);
}

fn statvfs(p: &Path) -> libc::statvfs {
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::statvfs(cstr(p).as_ptr(), &mut s) }).unwrap();
    s
}

#[test]
fn statfs() {
    let fx = Fixture::new(1);
    let m = fx.mount(&[]);
    let (sm, su) = (statvfs(&fx.mnt), statvfs(&fx.upper));
    assert!(sm.f_bsize > 0 && sm.f_frsize > 0 && sm.f_blocks > 0 && sm.f_namemax > 0);
    assert_eq!(
        sm.f_blocks as u128 * sm.f_frsize as u128,
        su.f_blocks as u128 * su.f_frsize as u128,
        "the mount reports the upper filesystem's size"
    );
    assert!(sm.f_bavail as u128 * sm.f_frsize as u128 > 0);
    drop(m);
}

#[test]
fn fsync() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "lower");
    let m = fx.mount(&[]);

    let mut n = File::create(fx.m("n")).unwrap();
    n.write_all(b"synced").unwrap();
    n.sync_all().unwrap();
    n.sync_data().unwrap();
    drop(n);
    assert_eq!(read(&fx.u("n")), "synced");

    let f = File::open(fx.m("f")).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(
        !lexists(&fx.u("f")),
        "fsync of a read-only lower file does not copy up"
    );
    File::open(&fx.mnt).unwrap().sync_all().unwrap();

    let m = m.remount();
    assert_eq!(read(&fx.m("n")), "synced");
    drop(m);
}

#[test]
fn fallocate() {
    let fx = Fixture::new(1);
    put_mode(&fx.l(0, "f"), "abcd", 0o640);
    let m = fx.mount(&[]);

    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.m("f"))
        .unwrap();
    let fd = f.as_raw_fd();
    cvt(unsafe { libc::fallocate(fd, 0, 0, MIB as libc::off_t) }).unwrap();
    assert_eq!(f.metadata().unwrap().len(), MIB);
    cvt(unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, MIB as _, MIB as _) }).unwrap();
    assert_eq!(f.metadata().unwrap().len(), MIB, "KEEP_SIZE keeps the size");
    cvt(unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            2,
        )
    })
    .unwrap();
    drop(f);

    let check = |when: &str| {
        let data = fs::read(fx.m("f")).unwrap();
        assert_eq!(data.len() as u64, MIB, "{when}");
        assert_eq!(&data[..4], b"\0\0cd", "{when}");
        assert!(data[4..].iter().all(|&b| b == 0), "{when}");
        assert_eq!(fs::metadata(fx.u("f")).unwrap().len(), MIB, "{when}");
        assert_eq!(mode_of(&fx.u("f")), 0o640, "{when}");
    };
    drop(m.check_across_remount(check));
}

fn lseek(f: &File, off: u64, whence: libc::c_int) -> std::io::Result<u64> {
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// Data at [0, 1) and [4 MiB, 4 MiB + 1), a hole in between.
fn write_sparse(path: &Path) {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all_at(b"x", 0).unwrap();
    f.write_all_at(b"y", 4 * MIB).unwrap();
    f.sync_all().unwrap();
}

fn check_seek(path: &Path) {
    let f = File::open(path).unwrap();
    assert_eq!(lseek(&f, 0, libc::SEEK_DATA).unwrap(), 0);
    let hole = lseek(&f, 0, libc::SEEK_HOLE).unwrap();
    assert!(
        hole > 0 && hole < 4 * MIB,
        "SEEK_HOLE from 0 gave {hole}: the hole is not reported"
    );
    assert_eq!(lseek(&f, hole, libc::SEEK_DATA).unwrap(), 4 * MIB);
    assert_eq!(lseek(&f, 4 * MIB, libc::SEEK_HOLE).unwrap(), 4 * MIB + 1);
    assert_errno(
        lseek(&f, 4 * MIB + 1, libc::SEEK_DATA),
        libc::ENXIO,
        "SEEK_DATA at EOF",
    );
}

#[test]
fn seek_data_hole() {
    let fx = Fixture::new(1);
    write_sparse(&fx.l(0, "lower_sparse"));
    let m = fx.mount(&[]);

    write_sparse(&fx.m("sparse"));
    check_seek(&fx.m("sparse"));
    check_seek(&fx.m("lower_sparse"));
    assert!(
        !lexists(&fx.u("lower_sparse")),
        "lseek on a lower file does not copy up"
    );
    let m = m.remount();
    check_seek(&fx.m("sparse"));
    drop(m);
}

#[test]
fn copyup_preserves_holes() {
    let fx = Fixture::new(1);
    write_sparse(&fx.l(0, "s"));
    OpenOptions::new()
        .write(true)
        .open(fx.l(0, "s"))
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let m = fx.mount(&[]);

    chmod(&fx.m("s"), 0o600).unwrap();
    let md = fs::metadata(fx.u("s")).unwrap();
    assert_eq!(md.len(), 16 * MIB);
    // Two data bytes in 16 MiB: allow chunk-granular hole skipping, refuse a dense copy.
    assert!(
        md.blocks() * 512 < 4 * MIB,
        "copy-up filled the holes: {} bytes allocated",
        md.blocks() * 512
    );
    let data = fs::read(fx.m("s")).unwrap();
    assert_eq!((data[0], data[4 * MIB as usize]), (b'x', b'y'));
    assert_eq!(data.iter().filter(|&&b| b != 0).count(), 2);
    drop(m);
}

#[test]
fn inode_stable_across_copyup() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "f");
    put(&fx.l(0, "g"), "g");
    put(&fx.l(0, "d/inner"), "i");
    // timeout=0: the kernel re-asks the daemon on every access, so its answers are what we see.
    let m = fx.mount(&["-o", "timeout=0"]);

    let (i_f, i_d, i_inner) = (ino(&fx.m("f")), ino(&fx.m("d")), ino(&fx.m("d/inner")));
    assert_eq!(
        dir_inos(&fx.mnt)["f"],
        i_f,
        "d_ino == st_ino before copy-up"
    );
    assert_eq!(dir_inos(&fx.mnt)["d"], i_d);
    assert_eq!(dir_inos(&fx.m("d"))["inner"], i_inner);

    chmod(&fx.m("f"), 0o600).unwrap();
    fs::write(fx.m("d/new"), "n").unwrap();
    assert!(lexists(&fx.u("f")) && lexists(&fx.u("d")), "copied up");

    assert_eq!(ino(&fx.m("f")), i_f, "st_ino unchanged by copy-up");
    assert_eq!(
        ino(&fx.m("d")),
        i_d,
        "directory st_ino unchanged by copy-up"
    );
    assert_eq!(ino(&fx.m("d/inner")), i_inner);
    let root = dir_inos(&fx.mnt);
    assert_eq!(
        (root["f"], root["d"]),
        (i_f, i_d),
        "d_ino == st_ino after copy-up"
    );
    let d = dir_inos(&fx.m("d"));
    assert_eq!(d["new"], ino(&fx.m("d/new")));
    assert_eq!(d["inner"], i_inner);

    let mut all = vec![
        i_f,
        i_d,
        i_inner,
        ino(&fx.m("g")),
        ino(&fx.m("d/new")),
        ino(&fx.mnt),
    ];
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 6, "inode numbers are unique");
    drop(m);
}

struct Dir(*mut libc::DIR);
impl Drop for Dir {
    fn drop(&mut self) {
        unsafe { libc::closedir(self.0) };
    }
}
impl Dir {
    fn open(p: &Path) -> Dir {
        let d = unsafe { libc::opendir(cstr(p).as_ptr()) };
        assert!(
            !d.is_null(),
            "opendir {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
        Dir(d)
    }
    fn tell(&self) -> libc::c_long {
        unsafe { libc::telldir(self.0) }
    }
    fn seek(&self, pos: libc::c_long) {
        unsafe { libc::seekdir(self.0, pos) }
    }
    fn rewind(&self) {
        unsafe { libc::rewinddir(self.0) }
    }
    fn next(&self) -> Option<String> {
        let e = unsafe { libc::readdir(self.0) };
        if e.is_null() {
            return None;
        }
        Some(
            unsafe { CStr::from_ptr((*e).d_name.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
        )
    }
    /// (position before the entry, name) for every remaining entry.
    fn rest(&self) -> Vec<(libc::c_long, String)> {
        let mut v = Vec::new();
        loop {
            let pos = self.tell();
            match self.next() {
                Some(n) => v.push((pos, n)),
                None => return v,
            }
        }
    }
}

#[test]
fn seekdir_telldir() {
    let fx = Fixture::new(1);
    for i in 0..150 {
        put(&fx.l(0, &format!("dir/n{i:03}")), "");
    }
    for i in 0..50 {
        put(&fx.u(&format!("dir/u{i:03}")), "");
    }
    for i in 0..10 {
        put(&fx.u(&format!("dir/.wh.n{i:03}")), "");
    }
    let m = fx.mount(&[]);

    let d = Dir::open(&fx.m("dir"));
    let all = d.rest();
    let mut got: Vec<String> = all
        .iter()
        .map(|(_, n)| n.clone())
        .filter(|n| n != "." && n != "..")
        .collect();
    got.sort();
    let mut expected: Vec<String> = (10..150).map(|i| format!("n{i:03}")).collect();
    expected.extend((0..50).map(|i| format!("u{i:03}")));
    assert_eq!(got, expected);

    for idx in [0, 1, 2, 37, 100, all.len() / 2, all.len() - 1] {
        d.seek(all[idx].0);
        let tail = d.rest();
        let want: Vec<String> = all[idx..].iter().map(|(_, n)| n.clone()).collect();
        let tail: Vec<String> = tail.into_iter().map(|(_, n)| n).collect();
        assert_eq!(tail, want, "after seekdir to the position of entry {idx}");
    }
    d.rewind();
    assert_eq!(
        d.rest(),
        all,
        "rewinddir gives the same listing and positions"
    );
    let d2 = Dir::open(&fx.m("dir"));
    let again: Vec<String> = d2.rest().into_iter().map(|(_, n)| n).collect();
    let first: Vec<String> = all.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(again, first, "a second opendir lists in the same order");
    drop((d, d2));
    drop(m);
}

/// Every way of writing fails with EROFS; reading works.
fn assert_read_only(fx: &Fixture) {
    let erofs = |r: std::io::Result<()>, what: &str| assert_errno(r, libc::EROFS, what);
    assert_eq!(read(&fx.m("f")), "F");
    erofs(
        OpenOptions::new().write(true).open(fx.m("f")).map(drop),
        "open f for writing",
    );
    erofs(
        OpenOptions::new().append(true).open(fx.m("f")).map(drop),
        "open f for append",
    );
    erofs(fs::write(fx.m("new"), "x"), "create new");
    erofs(fs::create_dir(fx.m("nd")), "mkdir");
    erofs(fs::remove_file(fx.m("f")), "unlink");
    erofs(fs::remove_dir(fx.m("e")), "rmdir");
    erofs(fs::rename(fx.m("f"), fx.m("f2")), "rename");
    erofs(chmod(&fx.m("f"), 0o600), "chmod");
    erofs(
        std::os::unix::fs::chown(fx.m("f"), Some(1), Some(1)),
        "chown",
    );
    erofs(set_mtime(&fx.m("f"), 1, 1), "utimens");
    erofs(xattr::set(fx.m("f"), "user.x", b"1"), "setxattr");
    erofs(std::os::unix::fs::symlink("f", fx.m("sym")), "symlink");
    erofs(fs::hard_link(fx.m("f"), fx.m("hl")), "link");
    erofs(mkfifo(&fx.m("fifo"), 0o644), "mkfifo");
    erofs(
        cvt(unsafe { libc::truncate(cstr(&fx.m("f")).as_ptr(), 0) }).map(drop),
        "truncate",
    );
    assert_eq!(read(&fx.m("f")), "F");
    assert_eq!(names(&fx.mnt), strs(&["d", "e", "f", "g"]));
}

fn populate_ro(fx: &Fixture) {
    put(&fx.l(0, "f"), "F");
    put(&fx.l(0, "d/x"), "x");
    mkdir_p(&fx.l(1, "e"));
    put(&fx.l(1, "g"), "G");
}

#[test]
fn no_rw_branch_is_read_only() {
    let fx = Fixture::new(2);
    populate_ro(&fx);
    let args = vec![fx.ro_spec(), fx.mnt.display().to_string()];
    let m = fx.mount_args(args, fx.lowers.clone());
    assert_read_only(&fx);
    assert_eq!(read(&fx.m("g")), "G");
    assert_eq!(read(&fx.m("d/x")), "x");
    assert!(
        names(&fx.upper).is_empty(),
        "the unused upper dir is untouched"
    );
    drop(m);
}

#[test]
fn ro_option_is_read_only() {
    let fx = Fixture::new(2);
    populate_ro(&fx);
    let m = fx.mount(&["-o", "ro"]);
    assert_read_only(&fx);
    assert_ne!(
        statvfs(&fx.mnt).f_flag & libc::ST_RDONLY,
        0,
        "statvfs reports ST_RDONLY"
    );
    assert!(
        upper_names(&fx.upper).is_empty(),
        "nothing written to the upper"
    );
    drop(m);
}

#[test]
fn sixty_four_lowers() {
    let fx = Fixture::new(64);
    for i in 0..64 {
        put(&fx.l(i, &format!("f{i:02}")), &i.to_string());
        put(&fx.l(i, "common"), &i.to_string());
        put(&fx.l(i, &format!("d/x{i:02}")), &i.to_string());
    }
    let m = fx.mount(&[]);

    let mut expected: Vec<String> = (0..64).map(|i| format!("f{i:02}")).collect();
    expected.extend(strs(&["common", "d"]));
    expected.sort();
    let check = |when: &str| {
        assert_eq!(names(&fx.mnt), expected, "{when}");
        assert_eq!(
            names(&fx.m("d")),
            (0..64).map(|i| format!("x{i:02}")).collect::<Vec<_>>(),
            "{when}"
        );
        assert_eq!(read(&fx.m("common")), "0", "{when}: topmost wins");
        for i in [0, 1, 31, 62] {
            assert_eq!(read(&fx.m(&format!("f{i:02}"))), i.to_string(), "{when}");
            assert_eq!(read(&fx.m(&format!("d/x{i:02}"))), i.to_string(), "{when}");
        }
    };
    check("mounted");
    append(&fx.m("f63"), "+").unwrap();
    assert_eq!(read(&fx.u("f63")), "63+");
    let m = m.remount();
    check("after remount");
    assert_eq!(read(&fx.m("f63")), "63+");
    drop(m);
}

#[test]
fn created_files_owned_by_caller() {
    let fx = Fixture::new(1);
    set_mode(&fx.root, 0o755); // let uid 1000 reach the mount point
    mkdir_p(&fx.l(0, "pub"));
    set_mode(&fx.l(0, "pub"), 0o777);
    put_mode(&fx.l(0, "rootfile"), "root\n", 0o644);
    put_mode(&fx.l(0, "pub/userown"), "mine\n", 0o644);
    chown(&fx.l(0, "pub/userown"), 1000, 1000);
    let m = fx.mount(&["-o", "allow_other"]);

    let script = "set -e; umask 027; cd \"$1/pub\"; echo hi > newfile; mkdir newdir; ln -s target link; \
                  echo more >> userown; if echo x >> ../rootfile; then exit 10; fi";
    let out = run(as_user(1000).args(["sh", "-c", script, "sh"]).arg(&fx.mnt));
    assert!(
        out.ok(),
        "script as uid 1000 failed ({}): {}",
        out.status,
        out.stderr
    );

    let owner = |p: &Path| {
        let md = fs::symlink_metadata(p).unwrap();
        (md.uid(), md.gid(), md.mode() & 0o7777)
    };
    let check = |when: &str| {
        assert_eq!(
            owner(&fx.m("pub/newfile")),
            (1000, 1000, 0o640),
            "{when}: merged newfile"
        );
        assert_eq!(
            owner(&fx.m("pub/newdir")),
            (1000, 1000, 0o750),
            "{when}: merged newdir"
        );
        assert_eq!(owner(&fx.m("pub/link")).0, 1000, "{when}: merged link");
        assert_eq!(
            owner(&fx.m("pub/userown")),
            (1000, 1000, 0o644),
            "{when}: copied-up file keeps its owner"
        );
        assert_eq!(
            owner(&fx.m("pub")),
            (0, 0, 0o777),
            "{when}: copied-up parent keeps its owner"
        );
        assert_eq!(read(&fx.m("pub/userown")), "mine\nmore\n");
        assert_eq!(read(&fx.m("rootfile")), "root\n");
    };
    check("mounted");
    assert_eq!(owner(&fx.u("pub/newfile")), (1000, 1000, 0o640));
    assert_eq!(owner(&fx.u("pub/newdir")), (1000, 1000, 0o750));
    assert_eq!(owner(&fx.u("pub/link")).0, 1000);
    assert_eq!(owner(&fx.u("pub/userown")), (1000, 1000, 0o644));
    assert_eq!(owner(&fx.u("pub")), (0, 0, 0o777));
    assert!(
        !lexists(&fx.u("rootfile")),
        "a refused write does not copy up"
    );
    let m = m.remount();
    check("after remount");
    drop(m);
}

/// fsync of a directory reaches its upper directory (a rename made durable by it must not
/// be lost), and is a no-op where there is none; with `volatile` no sync reaches the upper,
/// as on kernel overlayfs, and every sync still succeeds.
#[test]
fn fsync_of_files_and_directories_and_volatile() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "low/f"), "lower");
    for extra in [&[][..], &["-o", "volatile"][..]] {
        let m = fx.mount(extra);
        mkdir_p(&fx.m("d"));
        let mut f = File::create(fx.m("d/new")).unwrap();
        f.write_all(b"data").unwrap();
        f.sync_all().unwrap();
        f.sync_data().unwrap();
        drop(f);
        fs::rename(fx.m("d/new"), fx.m("d/renamed")).unwrap();
        for dir in [fx.m("d"), fx.m("low"), fx.mnt.clone()] {
            let d = File::open(&dir).unwrap();
            d.sync_all()
                .unwrap_or_else(|e| panic!("{extra:?} fsync {}: {e}", dir.display()));
            d.sync_data().unwrap();
        }
        assert!(
            !lexists(&fx.u("low")),
            "{extra:?}: syncing a lower directory copies nothing up"
        );
        drop(m);
        assert_eq!(read(&fx.u("d/renamed")), "data", "{extra:?}");
        fs::remove_dir_all(fx.u("d")).unwrap();
    }
}

/// `-o xattr=off` (fuse-overlayfs' `noxattrs=1`): no xattrs through the mount, also on a
/// writable stack; a copy-up still keeps the lower file's.
#[test]
fn xattr_off_shows_and_takes_no_xattrs() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "lower");
    xattr::set(fx.l(0, "f"), "user.k", b"v").unwrap();
    for opt in ["xattr=off", "noxattrs=1"] {
        let m = fx.mount(&["-o", opt]);
        assert_errno(
            xattr::list(fx.m("f")).map(|l| l.count()),
            libc::EOPNOTSUPP,
            opt,
        );
        assert_errno(xattr::get(fx.m("f"), "user.k"), libc::EOPNOTSUPP, opt);
        assert_errno(xattr::set(fx.m("f"), "user.n", b"1"), libc::EOPNOTSUPP, opt);
        assert_errno(xattr::remove(fx.m("f"), "user.k"), libc::EOPNOTSUPP, opt);
        // Writing copies the file up with its xattrs, which the mount does not show.
        fs::write(fx.m("f"), "upper").unwrap();
        drop(m);
        assert_eq!(read(&fx.u("f")), "upper");
        assert_eq!(
            xattr::get(fx.u("f"), "user.k").unwrap(),
            Some(b"v".to_vec()),
            "{opt}"
        );
        assert_eq!(xattr::get(fx.u("f"), "user.n").unwrap(), None, "{opt}");
        fs::remove_file(fx.u("f")).unwrap();
    }
}

/// `-o passthrough=0` (as on every rootless mount): every read and write goes through the
/// daemon and the kernel's page cache. A lower file opened for writing is copied up at that
/// open, an `O_TRUNC` open truncates the copy, a reader open before the copy-up reads the
/// copy, and a file removed while open (lower or upper) still reads, writes and truncates;
/// `O_APPEND` of one open does not move another open's writes.
#[test]
fn without_passthrough_files_go_through_the_daemon() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "a"), "lower-data");
    put(&fx.l(0, "b"), "0123456789");
    put(&fx.l(0, "d/f"), "in d");
    let m = fx.mount(&["-o", "passthrough=0"]);
    let layers = tool_ok(["layers", &s(&fx.mnt)]);
    assert!(
        layers.contains("through the daemon"),
        "the kernel line says where data goes:\n{layers}"
    );

    let r = File::open(fx.m("a")).unwrap();
    let mut buf = [0u8; 32];
    let n = r.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"lower-data");
    let w = OpenOptions::new().write(true).open(fx.m("a")).unwrap();
    assert_eq!(
        read(&fx.u("a")),
        "lower-data",
        "opening for writing copies up"
    );
    w.write_all_at(b"UPPER", 0).unwrap();
    assert_eq!(read(&fx.u("a")), "UPPER-data");
    let n = r.read_at(&mut buf, 0).unwrap();
    assert_eq!(
        &buf[..n],
        b"UPPER-data",
        "a reader open before the copy-up reads the copy"
    );
    drop((w, r));

    drop(
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(fx.m("b"))
            .unwrap(),
    );
    assert_eq!(fs::metadata(fx.m("b")).unwrap().len(), 0);
    assert_eq!(read(&fx.u("b")), "", "O_TRUNC truncates the copy");
    assert_eq!(read(&fx.l(0, "b")), "0123456789");

    let lower = File::open(fx.m("d/f")).unwrap();
    fs::remove_file(fx.m("d/f")).unwrap();
    let n = lower.read_at(&mut buf, 0).unwrap();
    assert_eq!(
        &buf[..n],
        b"in d",
        "a removed lower file open before still reads"
    );
    drop(lower);

    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(fx.m("new"))
        .unwrap();
    f.write_all(b"hello new").unwrap();
    fs::remove_file(fx.m("new")).unwrap();
    f.write_all_at(b"J", 0).unwrap();
    let n = f.read_at(&mut buf, 0).unwrap();
    assert_eq!(
        &buf[..n],
        b"Jello new",
        "a removed upper file still writes and reads"
    );
    f.set_len(3).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 3);
    let n = f.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"Jel");
    drop(f);

    let mut app = OpenOptions::new()
        .append(true)
        .create(true)
        .open(fx.m("app"))
        .unwrap();
    app.write_all(b"12").unwrap();
    let other = OpenOptions::new().write(true).open(fx.m("app")).unwrap();
    other.write_all_at(b"X", 0).unwrap();
    app.write_all(b"3").unwrap();
    drop((app, other));
    assert_eq!(read(&fx.m("app")), "X23");

    drop(m);
    assert_eq!(read(&fx.u("app")), "X23");
    assert!(
        lexists(&fx.u("d/.wh.f")),
        "the removed lower file is whited out"
    );
    assert!(!lexists(&fx.u("new")));
}

/// A file rewritten whole (`O_TRUNC`, then a write) while others read it, through the page
/// cache (`-o passthrough=0`): a reader sees the old contents, none, or the new ones, never
/// zeros. A read the kernel sent before it learned of the truncation came back short, and
/// with another reader's stat answered in between the kernel kept the old size and showed
/// the page's zero fill: about one read in a thousand with three readers, in pages of a
/// three-page file and in the one page of a small one.
#[test]
fn a_rewrite_racing_readers_never_shows_zeros() {
    rewrites_race_readers(|p, data| fs::write(p, data).unwrap());
}

/// The same with the file truncated to 0 by `ftruncate` on an open that did not truncate,
/// then written (as logrotate's copytruncate and many rewriting programs do): about one
/// read in a hundred showed zeros.
#[test]
fn a_truncate_racing_readers_never_shows_zeros() {
    rewrites_race_readers(|p, data| {
        let f = OpenOptions::new().write(true).open(p).unwrap();
        f.set_len(0).unwrap();
        f.write_all_at(data, 0).unwrap();
    });
}

/// One writer rewrites a file 3,000 times with `rewrite` under three readers.
fn rewrites_race_readers(rewrite: fn(&Path, &[u8])) {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "f 0\n");
    let _m = fx.mount(&["-o", "passthrough=0"]);
    let p = fx.m("f");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Small and three-page contents in turn, each a line of its number first.
    let contents = |i: usize| {
        let mut c = format!("f {i}\n").into_bytes();
        if i.is_multiple_of(2) {
            c.resize(10_000 + i % 7, b'x');
        }
        c
    };
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || {
            for i in 1..=3000 {
                rewrite(&p, &contents(i));
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut reads, mut bad) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let data = fs::read(&p).unwrap();
                    reads += 1;
                    if !data.is_empty() && (!data.starts_with(b"f ") || data.contains(&0)) {
                        bad.push(data[..data.len().min(8)].to_vec());
                    }
                }
                (reads, bad)
            })
        })
        .collect();
    writer.join().unwrap();
    let (mut reads, mut bad) = (0, Vec::new());
    for r in readers {
        let (n, b) = r.join().unwrap();
        reads += n;
        bad.extend(b);
    }
    assert!(reads > 300, "the readers raced the writer ({reads} reads)");
    assert!(
        bad.is_empty(),
        "{} of {reads} reads were neither old, empty nor new (first bytes): {:?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );
    assert_eq!(fs::read(&p).unwrap(), contents(3000));
    assert_eq!(fs::read(fx.u("f")).unwrap(), contents(3000));
}

/// Through the page cache an `O_TRUNC` open holds its truncation back from the upper file
/// until the file's data next changes (see the test above): the mount shows the file empty
/// at once, and the branch has it empty after an fsync or a write, a moment after the
/// close (at the RELEASE the kernel sends after close returns), or once `unionmount diff`
/// asked.
#[test]
fn an_o_trunc_open_shows_the_file_empty_and_the_branch_follows() {
    use std::os::unix::fs::MetadataExt;
    let fx = Fixture::new(1);
    for name in ["a", "b", "c", "d"] {
        put(&fx.l(0, name), "lower data\n");
    }
    let _m = fx.mount(&["-o", "passthrough=0"]);
    for name in ["a", "b", "c", "d"] {
        let mut f = OpenOptions::new().append(true).open(fx.m(name)).unwrap();
        f.write_all(b"more\n").unwrap();
    }
    let trunc = |name: &str| {
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(fx.m(name))
            .unwrap()
    };
    // Closed without a write.
    let f = trunc("a");
    let st = fs::metadata(fx.m("a")).unwrap();
    assert_eq!((st.len(), st.blocks()), (0, 0));
    assert_eq!(read(&fx.m("a")), "");
    std::thread::sleep(std::time::Duration::from_millis(20));
    drop(f);
    // Empty, with the time of the open shown before as its mtime.
    let shown = (0, st.mtime(), st.mtime_nsec());
    let closed = std::time::Instant::now();
    loop {
        let b = fs::metadata(fx.u("a")).unwrap();
        let branch = (b.len(), b.mtime(), b.mtime_nsec());
        if branch == shown {
            break;
        }
        // Well before the second after which the truncation is made anyway.
        assert!(
            closed.elapsed() < std::time::Duration::from_millis(500),
            "0.5 s after the close the branch has (size, mtime) {branch:?}, the mount \
             showed {shown:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Synced: the truncation is on the branch before the sync returns.
    let f = trunc("b");
    f.sync_all().unwrap();
    assert_eq!(fs::metadata(fx.u("b")).unwrap().len(), 0);
    drop(f);
    // Written: the new data only, on the mount and on the branch.
    let mut f = trunc("c");
    assert_eq!(read(&fx.m("c")), "");
    f.write_all(b"new\n").unwrap();
    assert_eq!(read(&fx.m("c")), "new\n");
    assert_eq!(read(&fx.u("c")), "new\n");
    drop(f);
    assert_eq!(read(&fx.m("c")), "new\n");
    // Still open: `unionmount diff` (which reads the upper) finds it as the mount shows it.
    let f = trunc("d");
    tool_ok(["diff", &s(&fx.mnt)]);
    assert_eq!(fs::metadata(fx.u("d")).unwrap().len(), 0);
    drop(f);
}

/// An ioctl the filesystem does not serve fails with ENOTTY, and a poll finds the file
/// ready, as on a local file; the daemon says nothing of either: Python's `open` asks
/// `isatty` (TCGETS) of every file it opens, and each one reaches the daemon.
#[test]
fn an_unserved_ioctl_or_poll_answers_as_a_local_file_and_logs_no_warning() {
    use std::io::IsTerminal;
    let fx = Fixture::new(1);
    fs::write(fx.l(0, "lower.txt"), "x").unwrap();
    let m = fx.mount(&[]);
    fs::write(fx.m("upper.txt"), "y").unwrap();
    for name in ["lower.txt", "upper.txt"] {
        let f = File::open(fx.m(name)).unwrap();
        assert!(!f.is_terminal(), "{name}");
        // SAFETY: termios is plain data, for which all zeros is a valid value.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: TCGETS writes one termios into `t`, which outlives the call; `f` is open.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, &mut t) };
        assert_eq!(rc, -1, "{name}");
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOTTY),
            "{name}"
        );
        let mut p = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN | libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 1000) }, 1, "{name}");
        assert_eq!(p.revents & libc::POLLIN, libc::POLLIN, "{name}");
    }
    drop(m);
    let log = fs::read_to_string(&fx.log).unwrap();
    assert!(
        log.contains("unmounted") && !log.contains("Not Implemented"),
        "{log}"
    );
}

/// Flags cleared from the given files however a test ends: the fixture could not remove
/// an immutable or append-only file.
struct Unflag(Vec<std::path::PathBuf>);

impl Drop for Unflag {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Ok(f) = inode_flags(p) {
                let _ = set_inode_flags(p, f & !(0x10 | 0x20));
            }
        }
    }
}

/// `touch` of `p`: both times set to now (utimensat with no times).
fn touch_now(p: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid C string for the call; a null times pointer means now.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Immutable and append-only hold through the mount as on overlayfs: the kernel does not
/// know a FUSE inode's flags, and a change of a lower entry goes to an upper copy that has
/// none, so the union refuses what the kernel refuses such an inode. A copy-up that is
/// allowed (a parent of a changed child, a touch) keeps them in a record beside the copy
/// (`trusted.overlay.protattr`), not on it, where they would stop the union's own work;
/// `sync` and `noatime` go on the copy. chattr through the mount moves them in and out of
/// the record; a remount reads it back.
#[test]
fn immutable_and_append_only_hold_through_a_copy_up() {
    const SYNC: u32 = 0x8;
    const IMMUTABLE: u32 = 0x10;
    const APPEND: u32 = 0x20;
    const NOATIME: u32 = 0x80;
    const PROTATTR: &str = "trusted.overlay.protattr";
    let fx = Fixture::new(1);
    put(&fx.l(0, "imm"), "imm\n");
    put(&fx.l(0, "app"), "app\n");
    put(&fx.l(0, "sa"), "sa\n");
    mkdir_p(&fx.l(0, "idir/sub"));
    put(&fx.l(0, "idir/f"), "f\n");
    put(&fx.l(0, "idir/sub/g"), "g\n");
    let _unflag = Unflag(
        ["imm", "app", "idir"]
            .iter()
            .map(|n| fx.l(0, n))
            .chain(["imm", "app", "idir", "new"].iter().map(|n| fx.u(n)))
            .collect(),
    );
    let add = |p: &Path, bits: u32| set_inode_flags(p, inode_flags(p)? | bits);
    let clear = |p: &Path, bits: u32| set_inode_flags(p, inode_flags(p)? & !bits);
    if let Err(e) = add(&fx.l(0, "imm"), IMMUTABLE) {
        eprintln!("skipped: cannot make a file immutable here ({e})");
        return;
    }
    add(&fx.l(0, "idir"), IMMUTABLE).unwrap();
    add(&fx.l(0, "app"), APPEND).unwrap();
    add(&fx.l(0, "sa"), SYNC | NOATIME).unwrap();
    let m = fx.mount(&[]);
    let open = |p: &Path, o: &mut OpenOptions| o.open(p).map(drop);

    // What the kernel refuses an immutable or append-only inode.
    let refused: Vec<(&str, std::io::Result<()>)> = vec![
        (
            "write imm",
            open(&fx.m("imm"), OpenOptions::new().write(true)),
        ),
        (
            "append imm",
            open(&fx.m("imm"), OpenOptions::new().append(true)),
        ),
        (
            "write app",
            open(&fx.m("app"), OpenOptions::new().write(true)),
        ),
        (
            "truncate app",
            open(
                &fx.m("app"),
                OpenOptions::new().append(true).custom_flags(libc::O_TRUNC),
            ),
        ),
        ("rm imm", fs::remove_file(fx.m("imm"))),
        ("mv app", fs::rename(fx.m("app"), fx.m("app2"))),
        (
            "chmod imm",
            fs::set_permissions(fx.m("imm"), fs::Permissions::from_mode(0o600)),
        ),
        ("touch imm", touch_now(&fx.m("imm"))),
        ("setxattr app", xattr::set(fx.m("app"), "user.k", b"v")),
        ("ln app", fs::hard_link(fx.m("app"), fx.m("applink"))),
        ("create in idir", File::create(fx.m("idir/new")).map(drop)),
        ("mkdir in idir", fs::create_dir(fx.m("idir/d"))),
        ("rm in idir", fs::remove_file(fx.m("idir/f"))),
        ("mv out of idir", fs::rename(fx.m("idir/f"), fx.m("f2"))),
    ];
    for (what, r) in refused {
        assert_errno(r, libc::EPERM, what);
    }
    assert!(
        upper_names(&fx.upper).is_empty(),
        "a refused change copied nothing up: {:?}",
        upper_names(&fx.upper)
    );

    // What it allows: a touch and an append of an append-only file, a change inside an
    // immutable directory's subdirectory (which copies the directory up).
    touch_now(&fx.m("app")).unwrap();
    OpenOptions::new()
        .append(true)
        .open(fx.m("app"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    put(&fx.m("idir/sub/g"), "g2\n");
    put(&fx.m("sa"), "sa2\n");
    assert_eq!(read(&fx.u("app")), "app\nmore\n");
    assert_eq!(read(&fx.u("idir/sub/g")), "g2\n");
    assert_eq!(xattr::get(fx.u("idir"), PROTATTR).unwrap().unwrap(), b"i");
    assert_eq!(xattr::get(fx.u("app"), PROTATTR).unwrap().unwrap(), b"a");
    assert_eq!(
        inode_flags(&fx.u("idir")).unwrap() & (IMMUTABLE | APPEND),
        0
    );
    assert_eq!(inode_flags(&fx.u("app")).unwrap() & (IMMUTABLE | APPEND), 0);
    assert_eq!(
        inode_flags(&fx.u("sa")).unwrap() & (SYNC | NOATIME),
        SYNC | NOATIME
    );
    // The copies still show and keep them.
    assert_eq!(inode_flags(&fx.m("idir")).unwrap() & IMMUTABLE, IMMUTABLE);
    assert_eq!(inode_flags(&fx.m("app")).unwrap() & APPEND, APPEND);
    assert_errno(
        File::create(fx.m("idir/new")).map(drop),
        libc::EPERM,
        "create in the copy",
    );
    assert_errno(
        open(&fx.m("app"), OpenOptions::new().write(true)),
        libc::EPERM,
        "write the copy",
    );

    // chattr through the mount: -i on a lower file copies it up without the flag; +i on an
    // upper file goes to its record.
    clear(&fx.m("imm"), IMMUTABLE).unwrap();
    put(&fx.m("imm"), "written\n");
    assert_eq!(read(&fx.u("imm")), "written\n");
    assert_eq!(xattr::get(fx.u("imm"), PROTATTR).unwrap(), None);
    assert_eq!(inode_flags(&fx.l(0, "imm")).unwrap() & IMMUTABLE, IMMUTABLE);
    put(&fx.m("new"), "new\n");
    add(&fx.m("new"), IMMUTABLE).unwrap();
    assert_eq!(xattr::get(fx.u("new"), PROTATTR).unwrap().unwrap(), b"i");
    assert_eq!(inode_flags(&fx.u("new")).unwrap() & IMMUTABLE, 0);
    assert_errno(fs::remove_file(fx.m("new")), libc::EPERM, "rm new");

    let m = m.remount();
    assert_errno(
        File::create(fx.m("idir/x")).map(drop),
        libc::EPERM,
        "after a remount",
    );
    assert_errno(
        fs::remove_file(fx.m("new")),
        libc::EPERM,
        "rm new, remounted",
    );
    clear(&fx.m("new"), IMMUTABLE).unwrap();
    fs::remove_file(fx.m("new")).unwrap();
    assert!(!fx.u("new").exists());
    drop(m);
}

/// Inode flags (`lsattr`, `chattr`) as on overlayfs: read from the topmost file without a
/// copy-up; set on the upper copy, made first, the lower one left as it was; kept across a
/// remount. The xfs-style fsxattr read shows the same flag.
#[test]
fn inode_flags_are_read_from_the_top_and_set_on_a_copy_up() {
    const NODUMP: u32 = 0x40; // FS_NODUMP_FL: an owner may set it, no capability needed
    const NOATIME: u32 = 0x80; // FS_NOATIME_FL
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "f\n");
    put(&fx.l(0, "g"), "g\n");
    mkdir_p(&fx.l(0, "d"));
    let base = match inode_flags(&fx.l(0, "f")) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipped: the branches' filesystem has no inode flags ({e})");
            return;
        }
    };
    set_inode_flags(&fx.l(0, "f"), base | NODUMP).unwrap();
    let m = fx.mount(&[]);

    assert_eq!(inode_flags(&fx.m("f")).unwrap() & NODUMP, NODUMP);
    assert_eq!(inode_flags(&fx.m("g")).unwrap() & NODUMP, 0);
    assert!(
        upper_names(&fx.upper).is_empty(),
        "a read copied nothing up"
    );

    let g = inode_flags(&fx.m("g")).unwrap();
    set_inode_flags(&fx.m("g"), g | NODUMP).unwrap();
    assert_eq!(inode_flags(&fx.m("g")).unwrap() & NODUMP, NODUMP);
    assert_eq!(inode_flags(&fx.u("g")).unwrap() & NODUMP, NODUMP);
    assert_eq!(inode_flags(&fx.l(0, "g")).unwrap() & NODUMP, 0);
    assert_eq!(read(&fx.m("g")), "g\n");

    let d = inode_flags(&fx.m("d")).unwrap();
    set_inode_flags(&fx.m("d"), d | NOATIME).unwrap();
    assert_eq!(inode_flags(&fx.u("d")).unwrap() & NOATIME, NOATIME);
    assert_eq!(inode_flags(&fx.l(0, "d")).unwrap() & NOATIME, 0);

    // FS_IOC_FSGETXATTR: struct fsxattr, fsx_xflags first; FS_XFLAG_NODUMP is 0x80.
    let f = File::open(fx.m("g")).unwrap();
    let mut fsx = [0u8; 28];
    // SAFETY: FS_IOC_FSGETXATTR writes one 28-byte struct fsxattr into `fsx`.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x801c_581f_u32 as _, fsx.as_mut_ptr()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(
        u32::from_ne_bytes(fsx[..4].try_into().unwrap()) & 0x80,
        0x80
    );
    drop(f);

    let m = m.remount();
    assert_eq!(inode_flags(&fx.m("g")).unwrap() & NODUMP, NODUMP);
    assert_eq!(inode_flags(&fx.m("d")).unwrap() & NOATIME, NOATIME);
    drop(m);
}
