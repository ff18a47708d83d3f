//! Conformance against kernel overlayfs / a local filesystem: each test asserts what
//! overlayfs (or ext4) does on the same fixture. Most began as a bug found by comparing the
//! two side by side; the comment says what went wrong before.
mod common;
use common::*;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

/// A 255-byte name (NAME_MAX), valid on the upper's filesystem.
fn long_name(c: char) -> String {
    std::iter::repeat_n(c, 255).collect()
}

/// Drop the page cache of an open file so the next read goes to the daemon.
fn drop_cache(f: &File) {
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise");
}

/// overlayfs refuses to create a whiteout device through the mount (ovl_mknod: EPERM);
/// (Before: unionmount created it in the upper, then could not find it again: EIO.)
#[test]
fn mknod_whiteout_device_is_eperm() {
    let fx = Fixture::new(1);
    let m = fx.mount(&[]);
    let p = cstr(&fx.m("cz"));
    let r = cvt(unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(0, 0)) });
    assert_errno(r, libc::EPERM, "mknod c 0 0");
    assert!(!lexists(&fx.u("cz")), "nothing left in the upper");
    drop(m);
}

/// fchmod / ftruncate / futimens on a descriptor whose name is gone work on ext4 and
/// overlayfs. (Before: unionmount resolved the node by its old name and got ENOENT.)
#[test]
fn fchmod_open_unlinked_file() {
    let fx = Fixture::new(1);
    let m = fx.mount(&[]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(fx.m("x"))
        .unwrap();
    fs::remove_file(fx.m("x")).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .expect("fchmod of an unlinked file");
    assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o600);
    drop(f);
    drop(m);
}

#[test]
fn ftruncate_open_unlinked_file() {
    let fx = Fixture::new(1);
    let m = fx.mount(&[]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(fx.m("x"))
        .unwrap();
    fs::remove_file(fx.m("x")).unwrap();
    f.set_len(10).expect("ftruncate of an unlinked file");
    assert_eq!(f.metadata().unwrap().len(), 10);
    drop(f);
    drop(m);
}

/// fchmod through a descriptor of an unlinked file must not touch the new file that now
/// carries the old name.
#[test]
fn fchmod_unlinked_fd_leaves_new_file_alone() {
    let fx = Fixture::new(1);
    let m = fx.mount(&[]);
    let old = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(fx.m("y"))
        .unwrap();
    fs::remove_file(fx.m("y")).unwrap();
    let new = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(fx.m("y"))
        .unwrap();
    set_mode_of_fd(&old, 0o600);
    assert_eq!(
        mode_of(&fx.u("y")),
        0o644,
        "the new y (on disk) was changed"
    );
    drop((old, new));
    let m = m.remount();
    assert_eq!(mode_of(&fx.m("y")), 0o644);
    drop(m);
}

fn set_mode_of_fd(f: &File, mode: u32) {
    // Either result is acceptable for the old descriptor; only the new file matters here.
    let _ = f.set_permissions(fs::Permissions::from_mode(mode));
}

/// A lower file removed through the mount stays removed, whatever is done through a
/// descriptor opened before the unlink (overlayfs answers the fchmod with an error and
/// copies nothing up).
#[test]
fn fchmod_unlinked_lower_file_does_not_resurrect_it() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "h"), "lower\n");
    let m = fx.mount(&[]);
    let f = File::open(fx.m("h")).unwrap();
    fs::remove_file(fx.m("h")).unwrap();
    set_mode_of_fd(&f, 0o640);
    drop(f);
    assert!(!lexists(&fx.u("h")), "upper/h was created by the fchmod");
    assert_eq!(names(&fx.mnt), Vec::<String>::new());
    let m = m.remount();
    assert_gone(&fx.m("h"));
    assert_eq!(names(&fx.mnt), Vec::<String>::new());
    drop(m);
}

/// A read-only descriptor opened on a lower file follows the file's copy-up, but must stay
/// on that file: after the name is unlinked and reused it must not read the new file.
#[test]
fn ro_fd_after_copy_up_stays_on_its_file() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "lower\n");
    let m = fx.mount(&[]);
    let r = File::open(fx.m("f")).unwrap();
    let mut w = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(fx.m("f"))
        .unwrap();
    w.write_all(b"upper\n").unwrap();
    drop(w);
    fs::remove_file(fx.m("f")).unwrap();
    fs::write(fx.m("f"), "NEWFILE\n").unwrap();
    drop_cache(&r);
    let mut buf = [0u8; 64];
    let n = r.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"upper\n");
    drop(r);
    drop(m);
}

/// NAME_MAX names: a rename or link to a 255-byte name of an upper-only file needs no
/// whiteout and works on overlayfs. (Before: unionmount did the rename/link, then failed
/// probing `.wh.<name>` (259 bytes) and reported ENAMETOOLONG for an operation it had done.)
#[test]
fn rename_to_255_byte_name() {
    let fx = Fixture::new(1);
    let m = fx.mount(&[]);
    fs::write(fx.m("s"), "x").unwrap();
    let n = long_name('a');
    fs::rename(fx.m("s"), fx.m(&n)).expect("rename to a 255-byte name");
    assert_eq!(names(&fx.mnt), vec![n.clone()]);
    let m = m.remount();
    assert_eq!(read(&fx.m(&n)), "x");
    drop(m);
}

#[test]
fn link_to_255_byte_name() {
    let fx = Fixture::new(1);
    let m = fx.mount(&[]);
    fs::write(fx.m("s"), "x").unwrap();
    let n = long_name('b');
    fs::hard_link(fx.m("s"), fx.m(&n)).expect("link to a 255-byte name");
    assert_eq!(names(&fx.mnt), vec![n.clone(), "s".to_string()]);
    drop(m);
}

/// Copy-up creates the parent directory in the upper, but on overlayfs the parent keeps
/// its mtime (ovl_copy_up_one restores the parent's timestamps). A chmod of d/f must not
/// make d look modified.
#[test]
fn copy_up_keeps_parent_mtime() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "d/f"), "hi\n");
    set_mtime(&fx.l(0, "d"), 1_000_000_000, 0).unwrap();
    let m = fx.mount(&[]);
    fs::set_permissions(fx.m("d/f"), fs::Permissions::from_mode(0o600)).unwrap();
    let md = fs::metadata(fx.u("d")).unwrap();
    assert_eq!(md.mtime(), 1_000_000_000, "upper d mtime");
    let m = m.remount();
    assert_eq!(fs::metadata(fx.m("d")).unwrap().mtime(), 1_000_000_000);
    drop(m);
}

/// Two lower names of one file: after one is written (copied up), both show the new data
/// (overlayfs with index=on), whatever order they are looked up in after a remount.
/// (Once: after a remount both names collapsed into one node and the first looked up won;
/// then, as overlayfs without index, the other name kept the old data.)
#[test]
fn copied_up_hard_link_keeps_its_data_after_remount() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "h1"), "a\n");
    fs::hard_link(fx.l(0, "h1"), fx.l(0, "h2")).unwrap();
    let m = fx.mount(&[]);
    OpenOptions::new()
        .append(true)
        .open(fx.m("h1"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    assert_eq!(read(&fx.m("h1")), "a\nmore\n");
    let m = m.remount();
    fs::symlink_metadata(fx.m("h2")).unwrap(); // h2 looked up first
    assert_eq!(read(&fx.m("h1")), "a\nmore\n");
    assert_eq!(read(&fx.m("h2")), "a\nmore\n");
    drop(m);
}

/// Renaming a lower file whose name is too long for a `.wh.` whiteout (README: such a
/// removal fails with ENAMETOOLONG) must fail without changing anything, or succeed.
/// (Before: unionmount copied the file up, renamed it, then failed writing the whiteout:
/// the caller got ENAMETOOLONG, yet the file showed under both names.)
#[test]
fn failed_rename_of_long_lower_name_changes_nothing() {
    let fx = Fixture::new(1);
    let n: String = std::iter::repeat_n('L', 253).collect();
    put(&fx.l(0, &n), "lower\n");
    let m = fx.mount(&[]);
    match fs::rename(fx.m(&n), fx.m("short")) {
        Ok(()) => assert_eq!(names(&fx.mnt), strs(&["short"])),
        Err(_) => {
            assert_eq!(
                names(&fx.mnt),
                vec![n.clone()],
                "failed rename left a change"
            );
            assert!(!lexists(&fx.u("short")));
        }
    }
    drop(m);
}

// ---- Behaviours checked and found right (kept as regression tests) ----

/// A new directory renamed over a lower directory whose contents were all removed: the
/// old lower entries must not show through, now or after a remount.
#[test]
fn rename_dir_over_emptied_lower_dir() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "e/x"), "lower\n");
    let m = fx.mount(&[]);
    fs::remove_file(fx.m("e/x")).unwrap();
    fs::create_dir(fx.m("new")).unwrap();
    fs::write(fx.m("new/n"), "n").unwrap();
    fs::rename(fx.m("new"), fx.m("e")).unwrap();
    assert_eq!(names(&fx.m("e")), strs(&["n"]));
    assert_errno(
        fs::rename(fx.m("e"), fx.m("e/sub")),
        libc::EINVAL,
        "rename into own subdir",
    );
    let m = m.remount();
    assert_eq!(names(&fx.mnt), strs(&["e"]));
    assert_eq!(names(&fx.m("e")), strs(&["n"]));
    drop(m);
}

/// rmdir of a merged directory whose lower part is entirely whited out.
#[test]
fn rmdir_fully_whited_out_dir() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "full/a"), "1");
    put(&fx.l(0, "full/s/b"), "2");
    let m = fx.mount(&[]);
    fs::remove_file(fx.m("full/s/b")).unwrap();
    fs::remove_file(fx.m("full/a")).unwrap();
    fs::remove_dir(fx.m("full/s")).unwrap();
    fs::remove_dir(fx.m("full")).unwrap();
    assert_eq!(names(&fx.mnt), Vec::<String>::new());
    let m = m.remount();
    assert_gone(&fx.m("full"));
    drop(m);
}

/// A POSIX ACL in its xattr form: version 2, then (tag, perm, id) entries.
fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// Mode and ACLs of an entry: what a default ACL decides about it.
fn acl_state(p: &std::path::Path) -> (u32, Option<Vec<u8>>, Option<Vec<u8>>) {
    (
        mode_of(p) & 0o7777,
        xattr::get(p, "system.posix_acl_access").unwrap(),
        xattr::get(p, "system.posix_acl_default").unwrap(),
    )
}

/// A directory's default ACL replaces the umask for entries made in it, as on ext4: a
/// plain twin directory gets the same script. unionmount applied the umask as well (mode
/// and ACL mask narrowed to the umask), and a directory made over a whited-out one (built
/// in the work dir, where the ACL is not) inherited nothing.
#[test]
fn default_acl_replaces_the_umask() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    let none = u32::MAX;
    let acl = acl_xattr(&[
        (0x01, 7, none),
        (0x02, 7, 1001),
        (0x04, 5, none),
        (0x10, 7, none),
        (0x20, 5, none),
    ]);
    let plain = fx.root.join("plain");
    for d in [fx.l(0, "d"), plain.join("d")] {
        mkdir_p(&d.join("y"));
        set_mode(&d, 0o755);
    }
    let m = fx.mount(&[]);
    let script = "umask 077 && touch d/f && mkdir d/sub && rmdir d/y && mkdir d/y";
    for root in [fx.mnt.clone(), plain.clone()] {
        xattr::set(root.join("d"), "system.posix_acl_default", &acl).unwrap();
        let (rc, err) = sh_as(0, &root, script);
        assert_eq!(rc, 0, "{}: {err}", root.display());
    }
    for name in ["d/f", "d/sub", "d/y"] {
        assert_eq!(
            acl_state(&fx.m(name)),
            acl_state(&plain.join(name)),
            "{name}: mode and ACLs"
        );
    }
    let m = m.remount();
    assert_eq!(acl_state(&fx.m("d/y")), acl_state(&plain.join("d/y")));
    drop(m);
}

/// A set-id bit asked for on a fifo made by a group member in a setgid directory stays, as
/// on ext4 (the daemon's chown to the caller cleared it, and only regular files got it
/// back).
#[test]
fn set_id_bits_of_a_new_fifo_survive_the_owner_change() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    set_mode(&fx.root, 0o755);
    let plain = fx.root.join("plain");
    for d in [fx.l(0, "g"), plain.join("g")] {
        mkdir_p(&d);
        std::os::unix::fs::chown(&d, Some(0), Some(1000)).unwrap();
        set_mode(&d, 0o2777);
    }
    let m = fx.mount(&["-o", "allow_other"]);
    for root in [fx.mnt.clone(), plain.clone()] {
        let (rc, err) = sh_as(
            1000,
            &root,
            "umask 0 && python3 -c 'import os; os.mkfifo(\"g/p\", 0o2777)'",
        );
        assert_eq!(rc, 0, "{}: {err}", root.display());
    }
    assert_eq!(mode_of(&fx.m("g/p")), mode_of(&plain.join("g/p")));
    assert_eq!(mode_of(&fx.m("g/p")) & 0o7777, 0o2777);
    drop(m);
}

/// `open(dir, O_TMPFILE)`: an unnamed file, in the upper; `linkat(fd, "", AT_EMPTY_PATH)`
/// names it (once it has a name it is an ordinary file, hard links and remounts included),
/// unless it was opened with `O_EXCL` (ENOENT, as on ext4). One never linked leaves nothing
/// behind. A plain twin directory gets the same calls. unionmount answered EOPNOTSUPP.
#[test]
fn o_tmpfile_makes_an_unnamed_file_that_linkat_names() {
    // linkat with AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    put(&fx.l(0, "d/base"), "base\n");
    let plain = fx.root.join("plain");
    mkdir_p(&plain.join("d"));
    let m = fx.mount(&[]);
    let tmpfile = |dir: &std::path::Path, flags: i32| -> File {
        let fd = unsafe {
            libc::open(
                cstr(dir).as_ptr(),
                libc::O_TMPFILE | libc::O_CLOEXEC | flags,
                0o640,
            )
        };
        assert!(
            fd >= 0,
            "O_TMPFILE in {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    };
    let link = |f: &File, to: &std::path::Path| -> std::io::Result<()> {
        let r = unsafe {
            libc::linkat(
                f.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                cstr(to).as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    for root in [fx.mnt.clone(), plain.clone()] {
        let d = root.join("d");
        let mut f = tmpfile(&d, libc::O_RDWR);
        f.write_all(b"unnamed\n").unwrap();
        let md = f.metadata().unwrap();
        assert_eq!(
            (md.nlink(), md.len()),
            (0, 8),
            "{}: before the link",
            root.display()
        );
        link(&f, &d.join("named")).unwrap();
        f.write_all(b"more\n").unwrap();
        assert_eq!(read(&d.join("named")), "unnamed\nmore\n");
        assert_eq!(f.metadata().unwrap().ino(), ino(&d.join("named")));
        link(&f, &d.join("second")).unwrap();
        assert_eq!(fs::metadata(d.join("named")).unwrap().nlink(), 2);
        let excl = tmpfile(&d, libc::O_RDWR | libc::O_EXCL);
        assert_errno(
            link(&excl, &d.join("nope")),
            libc::ENOENT,
            "link of an O_EXCL one",
        );
        tmpfile(&d, libc::O_WRONLY).write_all(b"dropped").unwrap();
    }
    for name in ["d/named", "d/second"] {
        let (a, b) = (
            fs::metadata(fx.m(name)).unwrap(),
            fs::metadata(plain.join(name)).unwrap(),
        );
        assert_eq!(
            (a.mode(), a.nlink(), a.len()),
            (b.mode(), b.nlink(), b.len()),
            "{name}"
        );
    }
    assert_eq!(names(&fx.m("d")), strs(&["base", "named", "second"]));
    assert_eq!(upper_names(&fx.u("d")), strs(&["named", "second"]));
    // A user's unnamed file is theirs, as any file they create.
    set_mode(&fx.root, 0o755);
    set_mode(&fx.m("d"), 0o777);
    let script = "python3 -c 'import os, sys; fd = os.open(\"d\", os.O_TMPFILE | os.O_RDWR, 0o600); \
                  st = os.fstat(fd); sys.exit(0 if (st.st_uid, st.st_gid) == (1000, 1000) else 3)'";
    drop(m);
    let m = fx.mount(&["-o", "allow_other"]);
    let (rc, err) = sh_as(1000, &fx.mnt, script);
    assert_eq!(rc, 0, "a user's O_TMPFILE file: {err}");
    assert_eq!(read(&fx.m("d/second")), "unnamed\nmore\n");
    assert_eq!(ino(&fx.m("d/named")), ino(&fx.m("d/second")));
    drop(m);
}
