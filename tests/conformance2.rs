//! Conformance, second pass: concurrency, permissions through `allow_other`, the overlay
//! whiteout format and interop with kernel overlayfs on the same directories, mixed
//! filesystems, and open descriptors of removed entries. Each test asserts what kernel
//! overlayfs (or ext4) does on the same fixture. Where a comment says what unionmount did
//! wrong, that was the behaviour before the fix: the reason the test exists.
mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Run `sh -c script` as uid/gid 1000 with no supplementary groups, in `dir`.
/// Returns (exit code, stderr).
fn as_user(dir: &Path, script: &str) -> (i32, String) {
    sh_as(1000, dir, script)
}

/// Every entry below `root` as the merged view shows it: "f <content>", "d", "l <target>"...
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk_tree(root, |p, md| {
        if p == root {
            return;
        }
        let v = if md.is_dir() {
            "d".to_string()
        } else if md.file_type().is_symlink() {
            format!("l {}", fs::read_link(p).unwrap().display())
        } else if md.is_file() {
            format!("f {}", String::from_utf8_lossy(&fs::read(p).unwrap()))
        } else {
            format!("other {:o}", md.mode())
        };
        out.insert(p.strip_prefix(root).unwrap().display().to_string(), v);
    });
    out
}

// =============================================================================================
// Bugs
// =============================================================================================

/// With `-o whiteout=overlay` a deleted lower directory leaves a char-device whiteout under its
/// own name. Renaming a new directory onto that (merged-view-absent) name must work, as on
/// overlayfs and ext4. Today the kernel rename of a directory over the char device fails.
#[test]
fn overlay_whiteout_rename_dir_onto_whiteout() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "old/x"), "x");
    let m = fx.mount(&["-o", "whiteout=overlay"]);
    fs::remove_file(fx.m("old/x")).unwrap();
    fs::remove_dir(fx.m("old")).unwrap();
    fs::create_dir(fx.m("new")).unwrap();
    fs::write(fx.m("new/n"), "n").unwrap();
    fs::rename(fx.m("new"), fx.m("old")).expect("rename dir onto a whited-out name");
    assert_eq!(names(&fx.mnt), strs(&["old"]));
    assert_eq!(names(&fx.m("old")), strs(&["n"]));
    let m = m.remount();
    assert_eq!(names(&fx.m("old")), strs(&["n"]));
    drop(m);
}

/// Same spot: link(2) onto a whited-out name must succeed (overlayfs, ext4: it does not
/// exist). Today linkat meets the char-device whiteout in the upper: EEXIST.
#[test]
fn overlay_whiteout_link_onto_whiteout() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "a"), "lower");
    let m = fx.mount(&["-o", "whiteout=overlay"]);
    fs::remove_file(fx.m("a")).unwrap();
    fs::write(fx.m("n"), "new").unwrap();
    fs::hard_link(fx.m("n"), fx.m("a")).expect("link onto a whited-out name");
    assert_eq!(read(&fx.m("a")), "new");
    assert_eq!(ino(&fx.m("a")), ino(&fx.m("n")));
    drop(m);
}

/// `-o whiteout=overlay` promises the kernel's on-disk format. A lower directory renamed
/// through unionmount is recorded only in trusted.unionmount.redirect, which kernel
/// overlayfs (which follows trusted.overlay.redirect by default) does not know: mounted on
/// the same upper, the kernel shows the moved directory empty.
#[test]
fn overlay_whiteout_moved_lower_dir_seen_by_kernel_overlayfs() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    put(&fx.l(0, "mv/inner/x"), "in");
    let m = fx.mount(&["-o", "whiteout=overlay"]);
    fs::rename(fx.m("mv"), fx.m("moved")).unwrap();
    let ours = tree(&fx.mnt);
    m.unmount();
    let k = fx.kernel_overlay("");
    let kernel = tree(&fx.mnt);
    drop(k);
    assert_eq!(
        kernel, ours,
        "kernel overlayfs vs unionmount on the same upper"
    );
}

/// The other direction: kernel overlayfs with redirect_dir=on records a moved lower
/// directory as `trusted.overlay.redirect` (here relative, as the kernel writes it for a
/// rename in the same parent) plus a whiteout at the old name. unionmount reads
/// trusted.overlay.* opaque markers and whiteouts but ignores this redirect: the moved
/// directory shows empty.
#[test]
fn kernel_overlay_redirect_is_followed() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    put(&fx.l(0, "mv/inner/x"), "in");
    mkdir_p(&fx.u("moved"));
    xattr::set(fx.u("moved"), "trusted.overlay.redirect", b"mv").unwrap();
    mknod_whiteout(&fx.u("mv"));
    let m = fx.mount(&[]);
    assert_eq!(names(&fx.mnt), strs(&["moved"]));
    assert_eq!(names(&fx.m("moved")), strs(&["inner"]));
    assert_eq!(read(&fx.m("moved/inner/x")), "in");
    drop(m);
}

/// Kernel overlayfs with metacopy=on copies up metadata only (chmod, chown): the upper
/// file is sparse, marked `trusted.overlay.metacopy`, its data still in the lower file.
/// unionmount serves the sparse upper file: zeros instead of the data.
#[test]
fn kernel_overlay_metacopy_reads_lower_data() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    put(&fx.l(0, "f"), "lower data\n");
    let f = File::create(fx.u("f")).unwrap();
    f.set_len(11).unwrap();
    drop(f);
    set_mode(&fx.u("f"), 0o600);
    xattr::set(fx.u("f"), "trusted.overlay.metacopy", b"").unwrap();
    let m = fx.mount(&[]);
    assert_eq!(mode_of(&fx.m("f")), 0o600);
    assert_eq!(read(&fx.m("f")), "lower data\n");
    drop(m);
}

/// Files of each size class for the metacopy tests: empty (overlayfs marks it too), a
/// few bytes and a few KiB (on ext4 the marked upper copy holds one block, for its
/// xattrs, as many as an ordinary file of that size), and 100 KiB (clearly fewer blocks
/// than its size). No run of zeros, so a sparse read shows.
fn metacopy_files() -> Vec<(&'static str, Vec<u8>)> {
    let pattern = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 251) as u8 + 1).collect() };
    vec![
        ("empty", Vec::new()),
        ("tiny", b"precious data\n".to_vec()),
        ("few_kib", pattern(3 * 1024 + 5)),
        ("big", pattern(100 * 1024)),
    ]
}

/// Kernel overlayfs with `metacopy=on` chmods every file of `metacopy_files` in lower0:
/// the upper copies hold metadata only.
fn kernel_metacopy_chmod(fx: &Fixture) -> Vec<(&'static str, Vec<u8>)> {
    let files = metacopy_files();
    for (name, data) in &files {
        fs::write(fx.l(0, name), data).unwrap();
    }
    let k = fx.kernel_overlay("metacopy=on,");
    for (name, _) in &files {
        set_mode(&fx.m(name), 0o600);
    }
    drop(k);
    assert_marked(&fx.upper, &files);
    files
}

/// Kernel overlayfs left its metacopy mark on each of `files` in `upper`.
fn assert_marked(upper: &Path, files: &[(&str, Vec<u8>)]) {
    for (name, _) in files {
        let mark = xattr::get(upper.join(name), "trusted.overlay.metacopy").unwrap();
        assert!(
            mark.is_some(),
            "kernel overlayfs left {name} without its metacopy mark"
        );
    }
}

/// unionmount over `layers` (top first), all read-only.
fn mount_stacked(fx: &Fixture, layers: &[&Path]) -> Mount {
    let list: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
    let opts = format!("lowerdir={}", list.join(":"));
    fx.mount_args(
        strs(&["-o", &opts, &fx.mnt.display().to_string()]),
        layers.iter().map(|l| l.to_path_buf()).collect(),
    )
}

/// Each of `files` shows `mode` and its data through the mount.
fn assert_read_through(fx: &Fixture, files: &[(&str, Vec<u8>)], mode: u32) {
    for (name, data) in files {
        assert_eq!(mode_of(&fx.m(name)), mode, "{name}");
        assert_eq!(
            fs::read(fx.m(name)).unwrap(),
            *data,
            "{name} through unionmount"
        );
    }
}

/// An upper written by kernel overlayfs with `metacopy=on` (the containers-storage default
/// on Fedora), mounted by unionmount: reads give the lower data, an append completes the
/// copy, and kernel overlayfs reads the same afterwards. unionmount asked for the mark only
/// of files with no blocks at all; ext4 charges the marked copy a block for its xattrs, so
/// the files read as zeros and an append left zeros plus the new bytes under a mark that
/// still sent kernel overlayfs to the lower data.
#[test]
fn kernel_overlay_metacopy_upper_read_and_written() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    let files = kernel_metacopy_chmod(&fx);
    let opts = overlay_opts(&[&fx.lowers[0]], &fx.upper, &fx.root.join("work"));
    let m = fx.mount_args(
        strs(&["-o", &opts, &fx.mnt.display().to_string()]),
        fx.lowers.clone(),
    );
    let mut want = Vec::new();
    for (name, data) in &files {
        assert_eq!(mode_of(&fx.m(name)), 0o600, "{name}");
        assert_eq!(
            fs::read(fx.m(name)).unwrap(),
            *data,
            "{name} through unionmount"
        );
        OpenOptions::new()
            .append(true)
            .open(fx.m(name))
            .unwrap()
            .write_all(b"more\n")
            .unwrap();
        let mut d = data.clone();
        d.extend_from_slice(b"more\n");
        assert_eq!(fs::read(fx.m(name)).unwrap(), d, "{name} after an append");
        want.push((name, d));
    }
    m.unmount();
    for (name, data) in &want {
        assert_eq!(fs::read(fx.u(name)).unwrap(), *data, "upper {name}");
        for mark in ["trusted.overlay.metacopy", "user.overlay.metacopy"] {
            assert_eq!(
                xattr::get(fx.u(name), mark).unwrap(),
                None,
                "{mark} on {name}"
            );
        }
    }
    let k = fx.kernel_overlay("metacopy=on,");
    let kernel: Vec<_> = want
        .iter()
        .map(|(n, _)| fs::read(fx.m(n)).unwrap())
        .collect();
    drop(k);
    for ((name, data), seen) in want.iter().zip(kernel) {
        assert_eq!(seen, *data, "{name} through kernel overlayfs");
    }
}

/// The same kernel metacopy upper stacked read-only above its lower (`lowerdir=U:L`): a
/// marked file in a lower layer takes its data from the layer below, as on overlayfs.
#[test]
fn kernel_overlay_metacopy_upper_stacked_as_lower() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    let files = kernel_metacopy_chmod(&fx);
    let m = mount_stacked(&fx, &[&fx.upper, &fx.lowers[0]]);
    assert_read_through(&fx, &files, 0o600);
    drop(m);
}

/// A chain: kernel overlayfs with `metacopy=on` over that upper as its lower marks a second
/// upper, whose files find their data two layers down (`lowerdir=U2:U:L`). unionmount took
/// the marked file of the middle layer for the data: zeros.
#[test]
fn kernel_overlay_metacopy_chain_stacked_as_lowers() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    let files = kernel_metacopy_chmod(&fx);
    let upper2 = fx.root.join("upper2");
    mkdir_p(&upper2);
    let work = fx.root.join("kwork2");
    let lowers: [&Path; 2] = [&fx.upper, &fx.lowers[0]];
    let k = KernelMount::overlay(&lowers, &upper2, &work, &fx.mnt, "metacopy=on,");
    for (name, _) in &files {
        set_mode(&fx.m(name), 0o640);
    }
    drop(k);
    assert_marked(&upper2, &files);
    let m = mount_stacked(&fx, &[&upper2, &fx.upper, &fx.lowers[0]]);
    assert_read_through(&fx, &files, 0o640);
    drop(m);
}

/// A writable mount over a marked upper stacked as a lower (`lowerdir=U:L`, a new upper):
/// copy-ups take the data from where the marked file's data is. unionmount copied the
/// marked file's own (sparse) content: an append left zeros plus the new bytes, and a chmod
/// made a metadata-only copy whose data pointed at the marked file.
#[test]
fn copy_up_of_a_marked_lower_file_takes_its_data_from_below() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    let files = kernel_metacopy_chmod(&fx);
    let upper2 = fx.root.join("upper2");
    mkdir_p(&upper2);
    let opts = overlay_opts(&[&fx.upper, &fx.lowers[0]], &upper2, &fx.root.join("work2"));
    let args = strs(&["-o", &opts, &fx.mnt.display().to_string()]);
    let watched = vec![fx.upper.clone(), fx.lowers[0].clone()];
    let m = fx.mount_args(args.clone(), watched.clone());
    let mut want = Vec::new();
    for (i, (name, data)) in files.iter().enumerate() {
        let mut d = data.clone();
        if i % 2 == 0 {
            OpenOptions::new()
                .append(true)
                .open(fx.m(name))
                .unwrap()
                .write_all(b"more\n")
                .unwrap();
            d.extend_from_slice(b"more\n");
        } else {
            set_mode(&fx.m(name), 0o604);
        }
        assert_eq!(fs::read(fx.m(name)).unwrap(), d, "{name} after the change");
        want.push((name, d));
    }
    drop(m);
    let m = fx.mount_args(args, watched);
    for (name, d) in &want {
        assert_eq!(fs::read(fx.m(name)).unwrap(), *d, "{name} after a remount");
    }
    drop(m);
}

/// Kernel overlayfs (`metacopy=on,redirect_dir=on`) renames marked files: within their
/// directory (a relative redirect) and into another one (an absolute redirect). unionmount
/// looked for the data under the new name only, found none and read zeros.
#[test]
fn renamed_kernel_metacopy_files_find_their_data() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    let files = metacopy_files();
    mkdir_p(&fx.l(0, "d"));
    mkdir_p(&fx.l(0, "e"));
    for (name, data) in &files {
        fs::write(fx.l(0, &format!("d/{name}")), data).unwrap();
    }
    let opts = "metacopy=on,redirect_dir=on,";
    let k = fx.kernel_overlay(opts);
    let moved: Vec<(String, &Vec<u8>)> = files
        .iter()
        .enumerate()
        .map(|(i, (name, data))| {
            let from = fx.m(&format!("d/{name}"));
            set_mode(&from, 0o600);
            let to = if i % 2 == 0 {
                format!("d/{name}.renamed")
            } else {
                format!("e/{name}")
            };
            fs::rename(&from, fx.m(&to)).unwrap();
            (to, data)
        })
        .collect();
    drop(k);
    for (to, _) in &moved {
        let mark = xattr::get(fx.u(to), "trusted.overlay.metacopy").unwrap();
        assert!(
            mark.is_some(),
            "kernel overlayfs left {to} without its mark"
        );
    }
    let m = fx.mount(&[]);
    for (to, data) in &moved {
        assert_eq!(mode_of(&fx.m(to)), 0o600, "{to}");
        assert_eq!(
            fs::read(fx.m(to)).unwrap(),
            **data,
            "{to} through unionmount"
        );
    }
    drop(m);
}

/// unionmount's own metadata-only copies (the flag in `trusted.unionmount.origin`) in an
/// upper stacked read-only as a lower: the record was read only for the writable upper, so
/// these read as zeros.
#[test]
fn own_metacopy_upper_stacked_as_lower() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    let files = metacopy_files();
    for (name, data) in &files {
        fs::write(fx.l(0, name), data).unwrap();
    }
    let m = fx.mount(&[]);
    for (name, _) in &files {
        set_mode(&fx.m(name), 0o600);
    }
    m.unmount();
    assert!(
        fs::metadata(fx.u("big")).unwrap().blocks() * 512 < 100 * 1024,
        "chmod copied up the data: no metadata-only copy to test"
    );
    let m = mount_stacked(&fx, &[&fx.upper, &fx.lowers[0]]);
    assert_read_through(&fx, &files, 0o600);
    drop(m);
}

/// With `-o whiteout=overlay`, removing a directory that has an upper part swaps a
/// char-device whiteout into its place (RENAME_EXCHANGE) and only then empties the old
/// directory and forgets the name. A getattr in that window stats the whiteout and answers
/// a char device for a directory inode; the kernel marks the inode bad and every later
/// fstat of an open descriptor gives EIO (ext4, overlayfs: fstat always works).
#[test]
fn overlay_whiteout_rmdir_never_gives_eio_to_getattr() {
    let fx = Fixture::new(1);
    for i in 0..1500 {
        put(&fx.l(0, &format!("big/f{i}")), "");
    }
    // timeout=0: every fstat asks the daemon (with the default 1 s the window must meet an
    // attribute expiry; the more whiteouts the directory holds, the wider the window).
    let m = fx.mount(&["-o", "whiteout=overlay", "-o", "timeout=0"]);
    for i in 0..1500 {
        fs::remove_file(fx.m(&format!("big/f{i}"))).unwrap();
    }
    let dir = Arc::new(File::open(fx.m("big")).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = {
        let (dir, stop) = (dir.clone(), stop.clone());
        thread::spawn(move || {
            let mut eio = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = dir.metadata()
                    && e.raw_os_error() == Some(libc::EIO)
                {
                    eio += 1;
                }
            }
            eio
        })
    };
    thread::sleep(Duration::from_millis(50));
    fs::remove_dir(fx.m("big")).unwrap();
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let eio = spinner.join().unwrap();
    assert_eq!(
        eio, 0,
        "fstat of the directory's descriptor gave EIO {eio} times"
    );
    drop(dir);
    drop(m);
}

/// fstat of an open descriptor of a removed directory works on ext4 and overlayfs (the
/// directory lives on until closed). unionmount answers ENOENT: it keeps no handle on a
/// removed directory, and resolves the node by its (gone) name.
#[test]
fn fstat_open_removed_dir() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "lowerdir/x"), "x");
    let m = fx.mount(&[]);
    fs::create_dir(fx.m("upperdir")).unwrap();
    fs::remove_file(fx.m("lowerdir/x")).unwrap();
    for d in ["upperdir", "lowerdir"] {
        let f = File::open(fx.m(d)).unwrap();
        fs::remove_dir(fx.m(d)).unwrap();
        let md = f
            .metadata()
            .unwrap_or_else(|e| panic!("fstat of removed {d}: {e}"));
        assert!(md.is_dir());
    }
    drop(m);
}

/// README: "Open, unlinked files keep working through their descriptors (fstat, ...)".
/// True for an upper file; for a lower file (the unlink only writes a whiteout) fstat
/// gives ENOENT, although reads through the same descriptor still work. overlayfs: works.
#[test]
fn fstat_open_unlinked_lower_file() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "lower\n");
    let m = fx.mount(&[]);
    let f = File::open(fx.m("f")).unwrap();
    fs::remove_file(fx.m("f")).unwrap();
    let md = f.metadata().expect("fstat of an unlinked lower file");
    assert_eq!(md.len(), 6);
    drop(f);
    drop(m);
}

/// Files from different filesystems must never share an inode number in the merged view
/// (one st_dev): tar, cp -a, du and rsync -H take equal (st_dev, st_ino) for hard links.
/// The root of each branch is tagged by its filesystem, but every other filesystem (a mount
/// inside a branch) gets one and the same tag: two tmpfs mounted in two lowers collide.
#[test]
fn submounts_in_two_lowers_get_distinct_inode_numbers() {
    let Some(fx) = Fixture::as_root(2, "skipped: needs root") else {
        return;
    };
    let _a = KernelMount::tmpfs(&fx.l(0, "a"), "");
    let _b = KernelMount::tmpfs(&fx.l(1, "b"), "");
    for i in 0..3 {
        put(&fx.l(0, &format!("a/f{i}")), "a");
        put(&fx.l(1, &format!("b/f{i}")), "b");
    }
    let m = fx.mount(&[]);
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    for p in ["a", "b", "a/f0", "a/f1", "a/f2", "b/f0", "b/f1", "b/f2"] {
        let i = ino(&fx.m(p));
        if let Some(other) = seen.insert(i, p.to_string()) {
            panic!("{p} and {other} share inode number {i}");
        }
    }
    drop(m);
}

// =============================================================================================
// Checked and found right (kept as regression tests)
// =============================================================================================

/// Permission checks through `-o allow_other` for a non-root user, as on overlayfs: no
/// write to a root 0644 lower file (and no copy-up for trying), chmod/explicit utimes by a
/// non-owner refused, utimes(NULL) with write permission allowed, sticky directories,
/// O_CREAT in a directory the user cannot write, set-id bits cleared by a write.
#[test]
fn non_root_permissions_through_allow_other() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    set_mode(&fx.root, 0o755);
    put_mode(&fx.l(0, "f"), "root\n", 0o644);
    put_mode(&fx.l(0, "w"), "w\n", 0o666);
    put_mode(&fx.l(0, "suid"), "s\n", 0o6777);
    mkdir_p(&fx.l(0, "ro"));
    set_mode(&fx.l(0, "ro"), 0o755);
    put_mode(&fx.l(0, "sticky/rootf"), "r\n", 0o666);
    set_mode(&fx.l(0, "sticky"), 0o1777);
    let m = fx.mount(&["-o", "allow_other"]);
    let denied = "Permission denied";
    let eperm = "Operation not permitted";

    let (rc, err) = as_user(&fx.mnt, "echo x >> f");
    assert!(rc != 0 && err.contains(denied), "write 0644: {rc} {err}");
    assert!(!lexists(&fx.u("f")), "a refused write copied f up");
    let (rc, err) = as_user(&fx.mnt, "truncate -s 0 f");
    assert!(rc != 0 && err.contains(denied), "truncate: {err}");
    let (rc, err) = as_user(&fx.mnt, "chmod 777 f");
    assert!(rc != 0 && err.contains(eperm), "chmod by non-owner: {err}");
    let (rc, err) = as_user(&fx.mnt, "echo x > ro/new");
    assert!(rc != 0 && err.contains(denied), "O_CREAT in ro/: {err}");
    assert_eq!(upper_names(&fx.upper), Vec::<String>::new());

    let (rc, err) = as_user(&fx.mnt, "touch w");
    assert_eq!(rc, 0, "utimes(NULL) with write permission: {err}");
    let (rc, err) = as_user(&fx.mnt, "touch -d 2001-01-01 w");
    assert!(rc != 0 && err.contains(eperm), "explicit utimes: {err}");

    let (rc, err) = as_user(&fx.mnt, "rm -f sticky/rootf");
    assert!(rc != 0 && err.contains(eperm), "sticky unlink: {err}");
    let (rc, err) = as_user(&fx.mnt, "mv sticky/rootf sticky/x");
    assert!(rc != 0 && err.contains(eperm), "sticky rename: {err}");
    assert_eq!(names(&fx.m("sticky")), strs(&["rootf"]));

    let (rc, err) = as_user(&fx.mnt, "echo more >> suid");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        mode_of(&fx.m("suid")),
        0o777,
        "set-id bits after copy-up write"
    );
    set_mode(&fx.m("suid"), 0o6777);
    let (rc, err) = as_user(&fx.mnt, "echo more >> suid");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        mode_of(&fx.m("suid")),
        0o777,
        "set-id bits after upper write"
    );
    assert_eq!(read(&fx.u("suid")), "s\nmore\nmore\n");
    drop(m);
}

/// Several threads writing the same lower files at once: each file is copied up once and
/// no append is lost.
#[test]
fn racing_writers_copy_up_once() {
    let fx = Fixture::new(1);
    let n_files = 60;
    for k in 0..n_files {
        put(&fx.l(0, &format!("d{}/f{k}", k % 4)), "lower\n");
    }
    let m = fx.mount(&[]);
    let mnt = fx.mnt.clone();
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let mnt = mnt.clone();
            thread::spawn(move || {
                for k in 0..n_files {
                    let p = mnt.join(format!("d{}/f{k}", k % 4));
                    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
                    f.write_all(format!("w{w}\n").as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    for k in 0..n_files {
        let rel = format!("d{}/f{k}", k % 4);
        assert_eq!(read(&fx.m(&rel)).lines().count(), 7, "{rel}");
    }
    let m = m.remount();
    assert_eq!(read(&fx.m("d0/f0")).lines().count(), 7);
    drop(m);
}

/// Threads creating, writing, renaming (files and directories, plain and exchange),
/// linking, removing and listing in the same merged directories over the same lower files,
/// for a bounded time. Names `f*` are always files and `s*` always directories, so the only
/// errors ext4 gives for this workload are ENOENT, EEXIST and ENOTEMPTY. Afterwards the tree
/// is sane (every listed name stats, d_ino is st_ino, no marker shows) and the same after a
/// remount.
#[test]
fn concurrent_namespace_ops_stay_sane() {
    let fx = Fixture::new(1);
    for d in 0..3 {
        for f in 0..4 {
            put(&fx.l(0, &format!("d{d}/f{f}")), &format!("d{d}/f{f}\n"));
        }
        for s in 0..2 {
            for f in 0..3 {
                put(&fx.l(0, &format!("d{d}/s{s}/f{f}")), "deep\n");
            }
        }
    }
    let m = fx.mount(&[]);
    let deadline = Instant::now() + Duration::from_millis(1500);
    let workers: Vec<_> = (0..6u64)
        .map(|w| {
            let mnt = fx.mnt.clone();
            thread::spawn(move || {
                let mut r = Rng(0x9e3779b97f4a7c15 ^ ((w + 1) * 0x1234567));
                let mut bad = Vec::new();
                while Instant::now() < deadline {
                    let d = format!("d{}", r.below(3));
                    let dir = if r.below(3) == 0 {
                        format!("{d}/s{}", r.below(3))
                    } else {
                        d
                    };
                    let file = mnt.join(format!("{dir}/f{}", r.below(6)));
                    let file2 = mnt.join(format!("d{}/f{}", r.below(3), r.below(6)));
                    let sub = mnt.join(format!("d{}/s{}", r.below(3), r.below(3)));
                    let sub2 = mnt.join(format!("d{}/s{}", r.below(3), r.below(3)));
                    let op = r.below(12);
                    let res: std::io::Result<()> = match op {
                        0 => OpenOptions::new()
                            .append(true)
                            .open(&file)
                            .and_then(|mut f| f.write_all(b"w\n")),
                        1 => fs::read(&file).map(drop),
                        2 => OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(true)
                            .mode(0o644)
                            .open(&file)
                            .and_then(|mut f| f.write_all(b"new\n")),
                        3 => fs::remove_file(&file),
                        4 => fs::rename(&file, &file2),
                        5 => fs::rename(&sub, &sub2),
                        6 => fs::create_dir(&sub),
                        7 => fs::remove_dir(&sub),
                        8 => fs::read_dir(mnt.join(&dir)).map(|rd| {
                            for e in rd.flatten() {
                                let _ = fs::symlink_metadata(e.path());
                            }
                        }),
                        9 => fs::hard_link(&file, &file2),
                        10 => fs::set_permissions(&file, fs::Permissions::from_mode(0o600)),
                        _ => renameat2(&sub, &sub2, libc::RENAME_EXCHANGE),
                    };
                    if let Err(e) = res {
                        let ok = [libc::ENOENT, libc::EEXIST, libc::ENOTEMPTY];
                        if !e.raw_os_error().is_some_and(|n| ok.contains(&n)) {
                            bad.push(format!("op {op} on {}: {e}", file.display()));
                        }
                    }
                }
                bad
            })
        })
        .collect();
    let bad: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        bad.is_empty(),
        "errors ext4 would not give:\n{}",
        bad.join("\n")
    );

    fn check(root: &Path) {
        use std::os::unix::fs::DirEntryExt;
        let mut dirs = vec![root.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.starts_with(".wh."),
                    "marker shows: {}",
                    e.path().display()
                );
                let md = fs::symlink_metadata(e.path()).unwrap();
                assert_eq!(
                    e.ino(),
                    md.ino(),
                    "d_ino vs st_ino of {}",
                    e.path().display()
                );
                if md.is_dir() {
                    dirs.push(e.path());
                }
            }
        }
    }
    check(&fx.mnt);
    let before = tree(&fx.mnt);
    let m = m.remount();
    check(&fx.mnt);
    assert_eq!(tree(&fx.mnt), before, "tree changed across remount");
    drop(m);
}

/// `rm -rf` of a merged tree while other threads list and read it: the removal succeeds
/// and readers see only ENOENT, never another error. (A reader's lookup of a directory that
/// began before the removal copied it up used to move the node back to its lower layers:
/// rmdir then saw the files it had just whited out, ENOTEMPTY, about one run in thirty
/// with the CPUs saturated.)
#[test]
fn rm_rf_racing_readers() {
    let fx = Fixture::new(1);
    for d in 0..15 {
        for f in 0..15 {
            put(&fx.l(0, &format!("t/d{d}/f{f}")), "x");
        }
        put(&fx.l(0, &format!("t/d{d}/s/deep")), "y");
    }
    let m = fx.mount(&[]);
    for d in 0..15 {
        fs::write(fx.m(&format!("t/d{d}/up")), "u").unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (root, done) = (fx.m("t"), done.clone());
            thread::spawn(move || {
                let mut bad = Vec::new();
                let note = |bad: &mut Vec<String>, p: &Path, e: std::io::Error| {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        bad.push(format!("{}: {e}", p.display()));
                    }
                };
                while !done.load(Ordering::Relaxed) {
                    let mut stack = vec![root.clone()];
                    while let Some(d) = stack.pop() {
                        let rd = match fs::read_dir(&d) {
                            Ok(rd) => rd,
                            Err(e) => {
                                note(&mut bad, &d, e);
                                continue;
                            }
                        };
                        for e in rd {
                            let Ok(e) = e else { continue };
                            let p = e.path();
                            match fs::symlink_metadata(&p) {
                                Ok(md) if md.is_dir() => stack.push(p),
                                Ok(_) => {
                                    if let Err(e) = fs::read(&p) {
                                        note(&mut bad, &p, e);
                                    }
                                }
                                Err(e) => note(&mut bad, &p, e),
                            }
                        }
                    }
                }
                bad
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    let rm = fs::remove_dir_all(fx.m("t"));
    done.store(true, Ordering::Relaxed);
    let bad: Vec<String> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    rm.expect("rm -rf t");
    assert!(bad.is_empty(), "readers got:\n{}", bad.join("\n"));
    assert_eq!(names(&fx.mnt), Vec::<String>::new());
    let m = m.remount();
    assert_eq!(names(&fx.mnt), Vec::<String>::new());
    drop(m);
}

/// `-o whiteout=overlay` writes what kernel overlayfs writes (char 0/0 whiteouts,
/// trusted.overlay.opaque), so the kernel mounted on the same upper shows the same tree:
/// unlink, rmdir, rename of a file, mkdir over a whiteout.
#[test]
fn overlay_whiteouts_interoperate_with_kernel_overlayfs() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    put(&fx.l(0, "a"), "a");
    put(&fx.l(0, "ren"), "r");
    put(&fx.l(0, "d/b"), "b");
    put(&fx.l(0, "d/sub/c"), "c");
    put(&fx.l(0, "re/old"), "old");
    let m = fx.mount(&["-o", "whiteout=overlay"]);
    fs::remove_file(fx.m("a")).unwrap();
    fs::remove_file(fx.m("d/sub/c")).unwrap();
    fs::remove_dir(fx.m("d/sub")).unwrap();
    fs::rename(fx.m("ren"), fx.m("renamed")).unwrap();
    fs::remove_file(fx.m("re/old")).unwrap();
    fs::remove_dir(fx.m("re")).unwrap();
    fs::create_dir(fx.m("re")).unwrap();
    fs::write(fx.m("re/new"), "new").unwrap();
    let ours = tree(&fx.mnt);
    m.unmount();
    assert_eq!(entry(&fx.u("a")).kind, Kind::Char(0));
    assert_eq!(
        xattr::get(fx.u("re"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    let k = fx.kernel_overlay("");
    let kernel = tree(&fx.mnt);
    drop(k);
    assert_eq!(kernel, ours);
}

/// And back: changes made by kernel overlayfs (default options) read the same through
/// unionmount.
#[test]
fn kernel_overlayfs_changes_read_by_unionmount() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    put(&fx.l(0, "a"), "a");
    put(&fx.l(0, "w"), "w");
    put(&fx.l(0, "d/b"), "b");
    put(&fx.l(0, "re/old"), "old");
    let k = fx.kernel_overlay("");
    fs::remove_file(fx.m("a")).unwrap();
    fs::remove_file(fx.m("d/b")).unwrap();
    fs::remove_dir_all(fx.m("re")).unwrap();
    fs::create_dir(fx.m("re")).unwrap();
    fs::write(fx.m("re/new"), "new").unwrap();
    fs::write(fx.m("w"), "changed").unwrap();
    fs::rename(fx.m("w"), fx.m("w2")).unwrap();
    let kernel = tree(&fx.mnt);
    drop(k);
    let m = fx.mount(&["-o", "whiteout=overlay"]);
    assert_eq!(tree(&fx.mnt), kernel);
    drop(m);
}

/// Lower on a tmpfs, upper on the disk: numbers stay unique across the two filesystems,
/// readdir's d_ino is stat's st_ino, copy-up and hard links work across filesystems.
#[test]
fn lower_on_tmpfs_upper_on_disk() {
    let Some(fx) = Fixture::as_root(0, "skipped: needs root") else {
        return;
    };
    let lower = fx.root.join("tmpfs");
    let _t = KernelMount::tmpfs(&lower, "");
    for i in 0..10 {
        put(&lower.join(format!("d/f{i}")), &format!("{i}\n"));
        fs::write(fx.u(&format!("u{i}")), "u").unwrap();
    }
    let args = vec![
        format!("{}=RW:{}=RO", fx.upper.display(), lower.display()),
        fx.mnt.display().to_string(),
    ];
    let m = fx.mount_args(args, vec![lower.clone()]);
    OpenOptions::new()
        .append(true)
        .open(fx.m("d/f1"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    assert_eq!(read(&fx.u("d/f1")), "1\nmore\n");
    fs::hard_link(fx.m("d/f2"), fx.m("d/h2")).unwrap();
    assert_eq!(ino(&fx.m("d/f2")), ino(&fx.m("d/h2")));
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    for dir in [fx.mnt.clone(), fx.m("d")] {
        for (name, d_ino) in dir_inos(&dir) {
            let p = dir.join(&name);
            assert_eq!(d_ino, ino(&p), "d_ino of {}", p.display());
            if name == "h2" {
                continue;
            }
            if let Some(o) = seen.insert(d_ino, p.display().to_string()) {
                panic!("{} and {o} share {d_ino}", p.display());
            }
        }
    }
    drop(m);
}

/// Mounting on a mount point left behind by a killed daemon (reads give ENOTCONN) either
/// fails with mount(8)'s status 32 and one line naming the mount point and the reason, or
/// clears the dead mount and mounts (what the binary does at the time of writing).
#[test]
fn mount_on_dead_mount_point() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "a"), "a");
    let mut child = fx.daemon(&[]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        dead_mount_errno(&fx.mnt),
        libc::ENOTCONN,
        "readdir dead mount"
    );
    let out = tool([fx.spec(), s(&fx.mnt)]);
    let err = out.stderr;
    let listing = fs::read_dir(&fx.mnt).map(|rd| rd.count());
    unmount_all(&fx.mnt);
    match out.status.code() {
        Some(0) => assert_eq!(listing.ok(), Some(1), "mounted over a dead mount: {err}"),
        Some(32) => assert!(
            err.contains(&fx.mnt.display().to_string()) && err.contains("not connected"),
            "{err}"
        ),
        other => panic!("exit {other:?}: {err}"),
    }
}

/// An open lower file renamed over lives on through its descriptors, as one unlinked does:
/// fstat, and a new open through `/proc/self/fd` (no lookup, the kernel's node only).
/// unionmount kept no handle for a lower destination, so both answered ENOENT.
#[test]
fn open_lower_file_renamed_over_stays_reachable() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "lower\n");
    put(&fx.l(0, "g"), "other file\n");
    let m = fx.mount(&[]);
    let f = File::open(fx.m("f")).unwrap();
    fs::rename(fx.m("g"), fx.m("f")).unwrap();
    let md = f.metadata().expect("fstat of a lower file renamed over");
    assert_eq!(md.len(), 6);
    let again = fs::read_to_string(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .expect("reopen of a lower file renamed over");
    assert_eq!(again, "lower\n");
    assert_eq!(fs::read_to_string(fx.m("f")).unwrap(), "other file\n");
    drop(f);
    drop(m);
}

/// The same for an open directory another one replaces, in the upper or a lower layer
/// (rename kept no handle for a replaced directory: ENOENT).
#[test]
fn fstat_open_dir_renamed_over() {
    let fx = Fixture::new(1);
    fs::create_dir_all(fx.l(0, "lowerdir")).unwrap();
    fs::create_dir_all(fx.l(0, "from_lower")).unwrap();
    let m = fx.mount(&[]);
    fs::create_dir(fx.m("upperdir")).unwrap();
    fs::create_dir(fx.m("from_upper")).unwrap();
    for (d, by) in [("upperdir", "from_upper"), ("lowerdir", "from_lower")] {
        let f = File::open(fx.m(d)).unwrap();
        fs::rename(fx.m(by), fx.m(d)).unwrap();
        let md = f
            .metadata()
            .unwrap_or_else(|e| panic!("fstat of {d} renamed over: {e}"));
        assert!(md.is_dir());
    }
    drop(m);
}
