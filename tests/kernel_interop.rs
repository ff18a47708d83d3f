//! Kernel overlayfs and unionmount read each other's uppers (issue 15: every upper is a
//! valid lower). The same changes (copy-up by write, metadata-only copy-ups, whiteouts, an
//! opaque directory, directories moved by redirect and back, a hard link, symlinks) are made
//! through one of them; the other then mounts the upper, as the upper and as a lower under
//! a fresh upper, and must show the same merged view: names, kinds, modes, owners, sizes,
//! content and the xattrs a user sees. Every test needs root and a kernel with overlayfs,
//! and says so when it skips.
mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// What the kernel needs to write (and read back) every kind of change here: renamed lower
/// directories (redirect_dir=on) and metadata-only copy-ups (metacopy=on).
const KERNEL_RW: &str = "redirect_dir=on,metacopy=on";
/// The same, keeping a lower file's hard links together across copy-up (the kernel's index).
const KERNEL_INDEX: &str = "redirect_dir=on,metacopy=on,index=on";

// ---------------------------------------------------------------------------------------------
// Mounting
// ---------------------------------------------------------------------------------------------

/// Root, and a kernel that mounts overlayfs (a real `mount -t overlay` on scratch dirs);
/// otherwise the test prints why it is skipped.
fn ready(test: &str) -> bool {
    if !is_root() {
        eprintln!("{test}: skipped, mounting kernel overlayfs needs root");
        return false;
    }
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    match PROBE.get_or_init(probe_overlay) {
        Ok(()) => true,
        Err(why) => {
            eprintln!("{test}: skipped, kernel overlayfs unavailable: {why}");
            false
        }
    }
}

fn probe_overlay() -> Result<(), String> {
    let fx = Fixture::new(1);
    let work = fx.root.join("probe-work");
    mkdir_p(&work);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        fx.lowers[0].display(),
        fx.upper.display(),
        work.display()
    );
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&fx.mnt)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let _ = Command::new("umount").arg(&fx.mnt).status();
    Ok(())
}

/// A kernel overlayfs mount, unmounted on drop.
struct Kernel {
    mnt: PathBuf,
    mounted: bool,
}

impl Kernel {
    /// `mount -t overlay -o OPTS,lowerdir=L1:L2[,upperdir=U,workdir=W] MNT` (lowers top
    /// first; without an upper the mount is read-only).
    fn mount(opts: &str, lowers: &[PathBuf], upper: Option<(&Path, &Path)>, mnt: &Path) -> Kernel {
        let lowers: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let mut o = format!("{opts},lowerdir={}", lowers.join(":"));
        if let Some((u, w)) = upper {
            mkdir_p(w);
            o += &format!(",upperdir={},workdir={}", u.display(), w.display());
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &o])
            .arg(mnt)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t overlay -o {o}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            kernel_log()
        );
        Kernel {
            mnt: mnt.to_path_buf(),
            mounted: true,
        }
    }

    /// Unmount, waiting out a moment's "target is busy" (a process forked by a test
    /// running beside this one holds copies of our descriptors until it execs).
    /// (Still busy after that, the panic leaves it to `drop` to detach it.)
    fn unmount(mut self) {
        for _ in 0..50 {
            let out = Command::new("umount").arg(&self.mnt).output().unwrap();
            if out.status.success() {
                self.mounted = false;
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("umount {}: still busy after 5 s", self.mnt.display());
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// The kernel's last overlayfs messages (why a mount or a lookup was refused).
fn kernel_log() -> String {
    let out = Command::new("dmesg").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("overlay")).collect();
    let start = lines.len().saturating_sub(10);
    format!("--- dmesg (overlayfs) ---\n{}", lines[start..].join("\n"))
}

/// unionmount in the overlayfs option form, writing overlay-format whiteouts. Its work
/// directory is outside the upper, so mounting leaves the upper's root as it was.
fn union_mount(fx: &Fixture, lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> Mount {
    let lowers_s: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let mut o = format!("whiteout=overlay,lowerdir={}", lowers_s.join(":"));
    if let Some((u, w)) = upper {
        o += &format!(",upperdir={},workdir={}", u.display(), w.display());
    }
    fx.mount_args(
        strs(&["-o", &o, &fx.mnt.display().to_string()]),
        lowers.to_vec(),
    )
}

// ---------------------------------------------------------------------------------------------
// The changes
// ---------------------------------------------------------------------------------------------

/// Bytes with no run of zeros, so a metadata-only copy read as its own sparse data shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 + 1).collect()
}

/// A base tree in `lower` under `set/`: what `change` works on.
fn populate(lower: &Path, set: &str) {
    let s = lower.join(set);
    put(&s.join("w"), "write me\n");
    mkdir_p(&s);
    fs::write(s.join("chmod"), pattern(20 * 1024)).unwrap();
    put(&s.join("chown"), "owned\n");
    put(&s.join("touch"), "touched\n");
    put(&s.join("xa"), "xattr\n");
    put(&s.join("gone"), "gone\n");
    put(&s.join("gone_dir/a"), "a\n");
    put(&s.join("gone_dir/b/c"), "c\n");
    put(&s.join("opq/x"), "x\n");
    put(&s.join("opq/sub/y"), "y\n");
    put(&s.join("mv/m1"), "m1\n");
    fs::write(s.join("mv/meta"), pattern(5000)).unwrap();
    put(&s.join("mv/sub/m2"), "m2\n");
    put(&s.join("src/s1"), "s1\n");
    put(&s.join("src/in/s2"), "s2\n");
    put(&s.join("other/o1"), "o1\n");
    put(&s.join("back/b1"), "b1\n");
    put(&s.join("link"), "linked\n");
    put(&s.join("xdir/f"), "in xdir\n");
    symlink("w", s.join("sym")).unwrap();
    symlink("../missing", s.join("dangling")).unwrap();
    xattr::set(s.join("xa"), "user.before", b"lower").unwrap();
}

fn append(p: &Path, s: &str) {
    OpenOptions::new()
        .append(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        .write_all(s.as_bytes())
        .unwrap();
}

fn rename(m: &Path, from: &str, to: &str) {
    fs::rename(m.join(from), m.join(to))
        .unwrap_or_else(|e| panic!("rename {from} -> {to} in {}: {e}", m.display()));
}

/// The changes of issue 15, through the mount at `m`, on `set/` as `populate` made it.
fn change(m: &Path, set: &str) {
    let s = m.join(set);
    append(&s.join("w"), "written\n"); // copy-up with data
    set_mode(&s.join("chmod"), 0o600); // metadata only from here to `xa`
    chown(&s.join("chown"), 1000, 1000);
    set_mtime(&s.join("touch"), 1_000_000_000, 5).unwrap();
    xattr::set(s.join("xa"), "user.note", b"set through the mount").unwrap();
    fs::remove_file(s.join("gone")).unwrap(); // whiteouts
    fs::remove_dir_all(s.join("gone_dir")).unwrap();
    fs::remove_dir_all(s.join("opq")).unwrap(); // opaque
    fs::create_dir(s.join("opq")).unwrap();
    put(&s.join("opq/new"), "new\n");
    rename(&s, "mv", "moved"); // redirect, in the same parent
    append(&s.join("moved/m1"), "more\n");
    set_mode(&s.join("moved/meta"), 0o640);
    rename(&s, "src", "other/dst"); // redirect, into another directory
    put(&s.join("other/dst/new"), "new\n");
    fs::remove_file(s.join("other/dst/in/s2")).unwrap();
    rename(&s, "back", "back_away"); // and back again
    rename(&s, "back_away", "back");
    fs::hard_link(s.join("link"), s.join("link2")).unwrap();
    symlink("moved/m1", s.join("newsym")).unwrap();
    chown(&s.join("sym"), 1000, 1000); // a lower symlink copied up
    xattr::set(s.join("xdir"), "user.dir", b"on a lower dir").unwrap();
}

/// Changes, one mount later, to what `change` left (now in a lower layer): data for a
/// metadata-only copy, removing what an opaque directory brought, a hard link's names.
/// With `moved_dirs`, also in the directories `change` moved: a new file, removing one it
/// brought along, and moving them again.
fn change_again(m: &Path, set: &str, moved_dirs: bool) {
    let s = m.join(set);
    append(&s.join("chmod"), "appended\n");
    set_mode(&s.join("w"), 0o640);
    fs::remove_file(s.join("opq/new")).unwrap();
    fs::remove_file(s.join("link2")).unwrap();
    append(&s.join("link"), "link\n");
    if moved_dirs {
        put(&s.join("moved/again"), "again\n");
        fs::remove_file(s.join("moved/sub/m2")).unwrap();
        rename(&s, "moved", "moved2");
        rename(&s, "other/dst", "dst2");
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing views
// ---------------------------------------------------------------------------------------------

/// unionmount's index of hard links copied up (`.wh..wh..index/` in the upper). unionmount
/// never shows it; kernel overlayfs, which keeps its own index in its work directory, shows
/// it as an ordinary directory (README, "Kernel overlayfs interoperability").
const UNION_INDEX: &str = ".wh..wh..index";

/// The merged view at `m` as a user sees it, but for unionmount's index. (`entry` leaves
/// out trusted.unionmount.* too, which the kernel shows: README, as above.)
fn view(m: &Path) -> Snapshot {
    let mut v = snapshot(m);
    v.retain(|rel, _| Path::new(rel).iter().next() != Some(UNION_INDEX.as_ref()));
    v
}

fn assert_same(what: &str, want: &Snapshot, got: &Snapshot) {
    let diff = snapshot_diff(want, got);
    assert!(diff.is_empty(), "{what}: the views differ:\n{diff}");
}

/// `assert_same` but for the root's mtime, which is the upper root's own: a fresh upper's
/// (made for the mount), or one where unionmount made its work directory (a branch spec).
fn assert_same_below_root(what: &str, want: &Snapshot, got: &Snapshot) {
    let mut got = got.clone();
    if let (Some(g), Some(w)) = (got.get_mut(""), want.get("")) {
        g.mtime = w.mtime;
    }
    let diff = snapshot_diff(want, &got);
    assert!(diff.is_empty(), "{what}: the views differ:\n{diff}");
}

/// The view shows the changes (guards against two engines agreeing on nothing).
fn assert_changed(v: &Snapshot, set: &str) {
    let e = |rel: &str| {
        v.get(&format!("{set}/{rel}"))
            .unwrap_or_else(|| panic!("{set}/{rel} missing from the view"))
    };
    assert_eq!(e("chmod").mode, 0o600);
    assert_eq!(e("chown").uid, 1000);
    assert_eq!(e("touch").mtime, (1_000_000_000, 5));
    for gone in ["gone", "gone_dir", "opq/x", "mv", "src", "back_away"] {
        assert!(!v.contains_key(&format!("{set}/{gone}")), "{set}/{gone}");
    }
    assert_eq!(e("moved/sub/m2").kind, Kind::File);
    assert_eq!(e("other/dst/s1").kind, Kind::File);
    assert_eq!(e("back/b1").kind, Kind::File);
    assert_eq!(e("sym").uid, 1000);
}

// ---------------------------------------------------------------------------------------------
// 1. unionmount writes, kernel overlayfs reads
// ---------------------------------------------------------------------------------------------

/// An upper unionmount wrote with `-o whiteout=overlay` mounts under kernel overlayfs with
/// the same merged view: as the upper (`redirect_dir=on,metacopy=on`, also with
/// `index=on`), as a lower under a fresh upper, and read-only as a lower
/// (`redirect_dir=follow`, which a read-only mount takes as `on`).
#[test]
fn unionmount_upper_under_kernel_overlayfs() {
    if !ready("unionmount_upper_under_kernel_overlayfs") {
        return;
    }
    let fx = Fixture::new(1);
    populate(&fx.lowers[0], "s");
    let work = fx.root.join("uwork");
    let m = union_mount(&fx, &fx.lowers, Some((&fx.upper, &work)));
    change(&fx.mnt, "s");
    let ours = view(&fx.mnt);
    m.unmount();
    assert_changed(&ours, "s");
    // The marks the kernel reads.
    assert_eq!(entry(&fx.u("s/gone")).kind, Kind::Char(0));
    assert_eq!(
        xattr::get(fx.u("s/opq"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert!(
        xattr::get(fx.u("s/moved"), "trusted.overlay.redirect")
            .unwrap()
            .is_some()
    );

    assert!(
        xattr::get(fx.u("s/chmod"), "trusted.overlay.metacopy")
            .unwrap()
            .is_some()
    );

    for (opts, work) in [(KERNEL_RW, "kwork"), (KERNEL_INDEX, "kwork-index")] {
        let kwork = fx.root.join(work);
        let k = Kernel::mount(opts, &fx.lowers, Some((&fx.upper, &kwork)), &fx.mnt);
        let kernel = view(&fx.mnt);
        k.unmount();
        assert_same(
            &format!("kernel overlayfs ({opts}) over unionmount's upper"),
            &ours,
            &kernel,
        );
    }

    let stack = vec![fx.upper.clone(), fx.lowers[0].clone()];
    let upper2 = fx.root.join("upper2");
    mkdir_p(&upper2);
    let kwork = fx.root.join("kwork2");
    let k = Kernel::mount(KERNEL_INDEX, &stack, Some((&upper2, &kwork)), &fx.mnt);
    let kernel = view(&fx.mnt);
    k.unmount();
    assert_same_below_root(
        "kernel overlayfs, unionmount's upper as a lower under a fresh upper",
        &ours,
        &kernel,
    );
    let k = Kernel::mount("redirect_dir=follow,metacopy=on", &stack, None, &fx.mnt);
    let kernel = view(&fx.mnt);
    k.unmount();
    assert_same(
        "kernel overlayfs, read-only, unionmount's upper as a lower",
        &ours,
        &kernel,
    );
}

/// The merged view at `m`, with the entries whose lstat fails left out and listed apart
/// with their errno.
fn view_lenient(m: &Path) -> (Snapshot, BTreeMap<String, i32>) {
    fn walk(m: &Path, rel: &Path, v: &mut Snapshot, failed: &mut BTreeMap<String, i32>) {
        let p = m.join(rel);
        if let Err(e) = fs::symlink_metadata(&p) {
            failed.insert(rel.display().to_string(), e.raw_os_error().unwrap_or(0));
            return;
        }
        let e = entry(&p);
        let is_dir = e.kind == Kind::Dir;
        v.insert(rel.display().to_string(), e);
        if is_dir {
            for de in fs::read_dir(&p).unwrap() {
                walk(m, &rel.join(de.unwrap().file_name()), v, failed);
            }
        }
    }
    let (mut v, mut failed) = (Snapshot::new(), BTreeMap::new());
    walk(m, Path::new(""), &mut v, &mut failed);
    (v, failed)
}

/// `redirect_dir=follow` on a writable kernel mount (which rules out `metacopy=on`) follows
/// unionmount's redirects and shows the rest the same, but refuses every metadata-only
/// copy with EPERM, as it does its own ("refusing to follow metacopy origin"): an upper
/// with such copies needs `metacopy=on`.
#[test]
fn unionmount_upper_under_kernel_redirect_follow() {
    if !ready("unionmount_upper_under_kernel_redirect_follow") {
        return;
    }
    let fx = Fixture::new(1);
    populate(&fx.lowers[0], "s");
    let m = union_mount(&fx, &fx.lowers, Some((&fx.upper, &fx.root.join("uwork"))));
    change(&fx.mnt, "s");
    let mut ours = view(&fx.mnt);
    m.unmount();
    let k = Kernel::mount(
        "redirect_dir=follow",
        &fx.lowers,
        Some((&fx.upper, &fx.root.join("kwork"))),
        &fx.mnt,
    );
    let (kernel, failed) = view_lenient(&fx.mnt);
    k.unmount();
    let metadata_only = ["s/chmod", "s/chown", "s/touch", "s/xa", "s/moved/meta"];
    let want: BTreeMap<String, i32> = metadata_only
        .iter()
        .map(|p| (p.to_string(), libc::EPERM))
        .collect();
    assert_eq!(failed, want, "what the kernel refused");
    ours.retain(|p, _| !want.contains_key(p));
    assert_same("kernel overlayfs, redirect_dir=follow", &ours, &kernel);
}

/// A metadata-only copy unionmount made, completed by a write through kernel overlayfs on
/// the same upper, reads as the kernel wrote it under unionmount again (the kernel drops its
/// own mark and keeps our origin record, which therefore must not say "metadata only").
#[test]
fn kernel_completes_a_unionmount_metacopy() {
    if !ready("kernel_completes_a_unionmount_metacopy") {
        return;
    }
    let fx = Fixture::new(1);
    fs::write(fx.l(0, "f"), pattern(10_000)).unwrap();
    let work = fx.root.join("uwork");
    let m = union_mount(&fx, &fx.lowers, Some((&fx.upper, &work)));
    set_mode(&fx.m("f"), 0o600);
    m.unmount();
    assert!(
        xattr::get(fx.u("f"), "trusted.overlay.metacopy")
            .unwrap()
            .is_some()
    );
    let k = Kernel::mount(
        KERNEL_RW,
        &fx.lowers,
        Some((&fx.upper, &fx.root.join("kwork"))),
        &fx.mnt,
    );
    append(&fx.m("f"), "kernel\n");
    let kernel = view(&fx.mnt);
    k.unmount();
    let mut want = pattern(10_000);
    want.extend_from_slice(b"kernel\n");
    assert_eq!(
        fs::read(fx.u("f")).unwrap(),
        want,
        "the kernel's whole copy"
    );
    let m = union_mount(&fx, &fx.lowers, Some((&fx.upper, &work)));
    assert_same(
        "unionmount after the kernel's write",
        &kernel,
        &view(&fx.mnt),
    );
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// 2. kernel overlayfs writes, unionmount reads
// ---------------------------------------------------------------------------------------------

/// An upper kernel overlayfs wrote with `redirect_dir=on,metacopy=on,index=on` mounts under
/// unionmount with the same merged view: (a) as the upper, in the overlayfs option form and
/// as a branch spec, and (b) as a lower under a fresh empty upper.
#[test]
fn kernel_upper_under_unionmount() {
    if !ready("kernel_upper_under_unionmount") {
        return;
    }
    let fx = Fixture::new(1);
    populate(&fx.lowers[0], "s");
    let kwork = fx.root.join("kwork");
    let k = Kernel::mount(KERNEL_INDEX, &fx.lowers, Some((&fx.upper, &kwork)), &fx.mnt);
    change(&fx.mnt, "s");
    let kernel = view(&fx.mnt);
    k.unmount();
    assert_changed(&kernel, "s");

    // (a) as the upper.
    let work = fx.root.join("uwork");
    let m = union_mount(&fx, &fx.lowers, Some((&fx.upper, &work)));
    assert_same(
        "unionmount, the kernel's upper as upper",
        &kernel,
        &view(&fx.mnt),
    );
    m.unmount();
    // Reading does not depend on the format unionmount writes in: the default here.
    let m = fx.mount(&[]);
    assert_same_below_root(
        "unionmount (branch spec), the kernel's upper as upper",
        &kernel,
        &view(&fx.mnt),
    );
    m.unmount();

    // (b) as a lower under a fresh upper.
    let upper2 = fx.root.join("upper2");
    mkdir_p(&upper2);
    let stack = vec![fx.upper.clone(), fx.lowers[0].clone()];
    let m = union_mount(&fx, &stack, Some((&upper2, &work)));
    assert_same_below_root(
        "unionmount, the kernel's upper as a lower",
        &kernel,
        &view(&fx.mnt),
    );
    m.unmount();
    assert!(
        upper_names(&upper2).is_empty(),
        "reading wrote to the upper"
    );
}

/// Kernel overlayfs with `index=on` keeps a lower file's hard links together across copy-up
/// by an index in its work directory: a write through one name shows through the other,
/// which stays in the lower. The index is not part of the upper, so where the kernel's work
/// directory is not at hand, neither the kernel (the upper stacked as a lower) nor
/// unionmount (which keeps its own index in the upper) shows the write through the other
/// name (README, "Kernel overlayfs interoperability").
#[test]
fn kernel_index_of_lower_hard_links() {
    if !ready("kernel_index_of_lower_hard_links") {
        return;
    }
    let fx = Fixture::new(1);
    put(&fx.l(0, "hl1"), "old\n");
    fs::hard_link(fx.l(0, "hl1"), fx.l(0, "hl2")).unwrap();
    let kwork = fx.root.join("kwork");
    let k = Kernel::mount(KERNEL_INDEX, &fx.lowers, Some((&fx.upper, &kwork)), &fx.mnt);
    append(&fx.m("hl1"), "new\n");
    assert_eq!(
        read(&fx.m("hl2")),
        "old\nnew\n",
        "the kernel, its index at hand"
    );
    k.unmount();
    assert!(
        !lexists(&fx.u("hl2")),
        "the kernel copied up the other name"
    );

    let upper2 = fx.root.join("upper2");
    mkdir_p(&upper2);
    let stack = vec![fx.upper.clone(), fx.lowers[0].clone()];
    let k = Kernel::mount(
        KERNEL_INDEX,
        &stack,
        Some((&upper2, &fx.root.join("kwork2"))),
        &fx.mnt,
    );
    let kernel = view(&fx.mnt);
    k.unmount();
    assert_ne!(
        kernel["hl2"].data, kernel["hl1"].data,
        "the kernel, the upper as a lower"
    );

    let work = fx.root.join("uwork");
    let m = union_mount(&fx, &stack, Some((&upper2, &work)));
    assert_same_below_root("unionmount, the upper as a lower", &kernel, &view(&fx.mnt));
    m.unmount();
    let m = union_mount(&fx, &fx.lowers, Some((&fx.upper, &work)));
    assert_same_below_root("unionmount, the upper as upper", &kernel, &view(&fx.mnt));
    m.unmount();
}

/// One upper, both writing in turn: a directory kernel overlayfs moved within its parent
/// (a relative redirect, "mv") moved again by unionmount into another directory, then read
/// by both. unionmount moves it keeping the relative redirect, which now names `other/mv`:
/// the directory loses its lower files, for unionmount and then for the kernel alike. (The
/// kernel rewrites a relative redirect as an absolute one when it moves the directory to
/// another parent.)
#[test]
fn unionmount_moves_a_kernel_moved_directory_into_another() {
    if !ready("unionmount_moves_a_kernel_moved_directory_into_another") {
        return;
    }
    let fx = Fixture::new(1);
    put(&fx.l(0, "mv/m1"), "m1\n");
    put(&fx.l(0, "mv/sub/m2"), "m2\n");
    mkdir_p(&fx.l(0, "other"));
    let kwork = fx.root.join("kwork");
    let k = Kernel::mount(KERNEL_RW, &fx.lowers, Some((&fx.upper, &kwork)), &fx.mnt);
    rename(&fx.mnt, "mv", "moved");
    k.unmount();
    assert_eq!(
        xattr::get(fx.u("moved"), "trusted.overlay.redirect").unwrap(),
        Some(b"mv".to_vec()),
        "the kernel's redirect, relative"
    );
    let m = union_mount(&fx, &fx.lowers, Some((&fx.upper, &fx.root.join("uwork"))));
    rename(&fx.mnt, "moved", "other/moved");
    let ours = view(&fx.mnt);
    m.unmount();
    assert_holds(&ours, "other/moved/sub/m2", "m2\n");
    let k = Kernel::mount(KERNEL_RW, &fx.lowers, Some((&fx.upper, &kwork)), &fx.mnt);
    let kernel = view(&fx.mnt);
    k.unmount();
    assert_same("kernel overlayfs after unionmount's move", &ours, &kernel);
}

/// And the other way: a directory unionmount moved (an absolute redirect) moved again by
/// kernel overlayfs on the same upper, into another directory and back out under a new
/// name, then read by both.
#[test]
fn kernel_moves_a_unionmount_moved_directory_into_another() {
    if !ready("kernel_moves_a_unionmount_moved_directory_into_another") {
        return;
    }
    let fx = Fixture::new(1);
    put(&fx.l(0, "mv/m1"), "m1\n");
    put(&fx.l(0, "mv/sub/m2"), "m2\n");
    mkdir_p(&fx.l(0, "other"));
    let uwork = fx.root.join("uwork");
    let m = union_mount(&fx, &fx.lowers, Some((&fx.upper, &uwork)));
    rename(&fx.mnt, "mv", "moved");
    m.unmount();
    let kwork = fx.root.join("kwork");
    let k = Kernel::mount(KERNEL_RW, &fx.lowers, Some((&fx.upper, &kwork)), &fx.mnt);
    rename(&fx.mnt, "moved", "other/moved");
    rename(&fx.mnt, "other/moved", "moved2");
    let kernel = view(&fx.mnt);
    k.unmount();
    assert_holds(&kernel, "moved2/sub/m2", "m2\n");
    let m = union_mount(&fx, &fx.lowers, Some((&fx.upper, &uwork)));
    assert_same(
        "unionmount after the kernel's moves",
        &kernel,
        &view(&fx.mnt),
    );
    m.unmount();
}

/// The view holds the file `rel` with `content` (a view keeps a hash of it, as `entry`).
fn assert_holds(v: &Snapshot, rel: &str, content: &str) {
    use std::hash::{Hash, Hasher};
    let e = v
        .get(rel)
        .unwrap_or_else(|| panic!("{rel} missing from the view"));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    content.as_bytes().to_vec().hash(&mut h);
    assert_eq!(e.data, format!("{:016x}", h.finish()), "content of {rel}");
}

// ---------------------------------------------------------------------------------------------
// 3. Stacked deeper
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Engine {
    Kernel,
    Union,
}

/// Mount `engine` at the fixture's mount point over `lowers` with `upper` (and its own
/// work dir) and run `f` on it; unmounts afterwards.
fn with_mount<T>(
    fx: &Fixture,
    engine: Engine,
    lowers: &[PathBuf],
    upper: &Path,
    f: impl FnOnce(&Path) -> T,
) -> T {
    let work = fx.root.join(format!(
        "work-{}",
        upper.file_name().unwrap().to_string_lossy()
    ));
    match engine {
        Engine::Kernel => {
            let k = Kernel::mount(KERNEL_INDEX, lowers, Some((upper, &work)), &fx.mnt);
            let r = f(&fx.mnt);
            k.unmount();
            r
        }
        Engine::Union => {
            let m = union_mount(fx, lowers, Some((upper, &work)));
            let r = f(&fx.mnt);
            m.unmount();
            r
        }
    }
}

/// Three mounts, alternating engines starting with `first`: each makes its changes, is
/// unmounted, and its upper becomes the top lower under a fresh upper for the next, which
/// must show what the previous one showed before making changes of its own (to new
/// entries, and again to what the previous mounts changed).
fn rotate(first: Engine, moved_dirs: bool) {
    let fx = Fixture::new(1);
    let sets = ["r0", "r1", "r2"];
    for set in sets {
        populate(&fx.lowers[0], set);
    }
    let other = |e: Engine| match e {
        Engine::Kernel => Engine::Union,
        Engine::Union => Engine::Kernel,
    };
    let mut lowers = fx.lowers.clone();
    let mut engine = first;
    let mut before: Option<(Engine, Snapshot)> = None;
    for (round, set) in sets.iter().enumerate() {
        let upper = fx.root.join(format!("upper{round}"));
        mkdir_p(&upper);
        let (seen, after) = with_mount(&fx, engine, &lowers, &upper, |m| {
            let seen = view(m);
            change(m, set);
            if round > 0 {
                change_again(m, sets[round - 1], moved_dirs);
            }
            (seen, view(m))
        });
        if let Some((prev, want)) = &before {
            assert_same_below_root(
                &format!("round {round}: {engine:?} over the upper {prev:?} wrote"),
                want,
                &seen,
            );
        }
        assert_changed(&after, set);
        lowers.insert(0, upper);
        before = Some((engine, after));
        engine = other(engine);
    }
    // The whole stack once more, read-only, by each engine.
    let (prev, want) = before.unwrap();
    let fresh = fx.root.join("upper-last");
    mkdir_p(&fresh);
    for e in [Engine::Kernel, Engine::Union] {
        let seen = with_mount(&fx, e, &lowers, &fresh, view);
        assert_same_below_root(
            &format!("{e:?} over every upper, the last written by {prev:?}"),
            &want,
            &seen,
        );
    }
}

/// unionmount, then kernel overlayfs, then unionmount, each over the previous uppers.
#[test]
fn rotate_starting_with_unionmount() {
    if !ready("rotate_starting_with_unionmount") {
        return;
    }
    rotate(Engine::Union, false);
}

/// Kernel overlayfs, then unionmount, then kernel overlayfs, each over the previous uppers.
#[test]
fn rotate_starting_with_kernel() {
    if !ready("rotate_starting_with_kernel") {
        return;
    }
    rotate(Engine::Kernel, false);
}

/// The rotations, also changing directories the previous mount moved (see
/// `kernel_copy_up_of_a_directory_unionmount_moved`).
#[test]
fn rotate_changing_moved_directories() {
    if !ready("rotate_changing_moved_directories") {
        return;
    }
    rotate(Engine::Union, true);
    rotate(Engine::Kernel, true);
}

/// The smallest case of the above. unionmount moves a lower directory (`mv` to `moved`,
/// recorded in trusted.unionmount.redirect and trusted.overlay.redirect, and a whiteout at
/// `mv`); kernel overlayfs over that upper as a lower creates a file in `moved`, which
/// copies the directory up into its own upper with every xattr but trusted.overlay.*: our
/// redirect comes along. unionmount then reads that upper over the other two and follows
/// the copied redirect from the new upper: to `mv` below it, which the middle layer has
/// whited out. The directory shows the new file only; kernel overlayfs (which merges the
/// copy with the middle layer's `moved` by name) shows the moved files too.
#[test]
fn kernel_copy_up_of_a_directory_unionmount_moved() {
    if !ready("kernel_copy_up_of_a_directory_unionmount_moved") {
        return;
    }
    let fx = Fixture::new(1);
    put(&fx.l(0, "mv/m1"), "m1\n");
    put(&fx.l(0, "mv/sub/m2"), "m2\n");
    let u0 = fx.upper.clone();
    let m = union_mount(&fx, &fx.lowers, Some((&u0, &fx.root.join("work0"))));
    rename(&fx.mnt, "mv", "moved");
    m.unmount();
    let u1 = fx.root.join("upper1");
    mkdir_p(&u1);
    let stack = vec![u0.clone(), fx.lowers[0].clone()];
    let k = Kernel::mount(
        KERNEL_INDEX,
        &stack,
        Some((&u1, &fx.root.join("work1"))),
        &fx.mnt,
    );
    put(&fx.m("moved/new"), "new\n");
    let kernel = view(&fx.mnt);
    k.unmount();
    assert_eq!(names(&fx.root.join("upper1/moved")), strs(&["new"]));
    let stack = vec![u1, u0, fx.lowers[0].clone()];
    let m = union_mount(&fx, &stack, None);
    let ours = view(&fx.mnt);
    m.unmount();
    assert_same_below_root("unionmount over the kernel's copy-up", &kernel, &ours);
}
