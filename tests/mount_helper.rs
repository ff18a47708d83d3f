//! unionmount as a native filesystem type: the `SOURCE MOUNTPOINT -o OPTS` form mount.fuse3
//! runs, mount.fuse3 itself, and mount(8) with `-t fuse.unionmount` and fstab lines
//! (`mount -a -T FSTAB`), on real mounts; exit statuses.
//!
//! mount(8) clears PATH before it runs a helper and mount.fuse3 then finds `unionmount`
//! through /bin/sh's default PATH, so the mount(8) tests run in a private mount namespace
//! (`unshare -m`) where a directory holding a link to the built binary is bound over
//! /usr/local/sbin. They need root and unshare, and are skipped (with a note) without them.
mod common;
use common::*;
use std::borrow::BorrowMut;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The directory holding the built binary, first on PATH.
fn path_with_bin() -> String {
    let dir = Path::new(BIN).parent().unwrap();
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn mount_fuse3() -> Option<PathBuf> {
    ["/usr/sbin/mount.fuse3", "/sbin/mount.fuse3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Run to completion with stdio in files (a detaching daemon keeps its inherited stderr open
/// until it has reported the mount live, so pipes would be held open by it): (exit code,
/// stdout, stderr).
fn run(mut cmd: impl BorrowMut<Command>) -> (i32, String, String) {
    let r = run_within(cmd.borrow_mut(), Duration::from_secs(30));
    (r.code(), r.stdout, r.stderr)
}

/// (source, fstype) of the topmost mount on exactly `mp`, from /proc/self/mounts.
fn proc_mount(mp: &Path) -> Option<(String, String)> {
    let text = fs::read_to_string("/proc/self/mounts").unwrap();
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 2 && Path::new(&f[1].replace("\\040", " ")) == mp)
            .then(|| (f[0].to_string(), f[2].to_string()))
    })
}

/// The source /proc/mounts shows is meaningful: the fstab/command-line SOURCE, or the upper.
fn assert_source(mp: &Path, sources: &[&str]) {
    let (source, fstype) = proc_mount(mp).expect("not mounted");
    assert_eq!(fstype, "fuse.unionmount");
    assert!(
        sources.contains(&source.as_str()),
        "/proc/mounts source {source:?} is none of {sources:?}"
    );
}

// ---- the SOURCE MOUNTPOINT -o OPTS form, run directly ----

#[test]
fn source_mountpoint_options_form() {
    let fx = Fixture::new(1);
    let _c = UnmountGuard(fx.root.clone());
    put(&fx.l(0, "f"), "base");
    // What mount(8) + mount.fuse3 pass, plus fstab/systemd-only options a hand-written command
    // might carry: all of them accepted.
    let opts = "rw,noatime,nodev,nosuid,dev,suid,defaults,nofail,_netdev,auto,x-systemd.automount,comment=x";
    let (code, _, err) = run(unionmount([&fx.spec(), &s(&fx.mnt), "-o", opts]));
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(err, "", "a detaching mount prints nothing on success");
    assert_source(&fx.mnt, &[&fx.spec(), &s(&fx.upper)]);
    assert_eq!(read(&fx.m("f")), "base");
    fs::write(fx.m("new"), "n").unwrap();
    assert_eq!(read(&fx.u("new")), "n");
    unmount_and_wait(&fx.mnt);
    assert_eq!(read(&fx.l(0, "f")), "base");
}

#[test]
fn overlay_style_ignores_a_source_word() {
    for word in ["none", "unionmount", "overlay"] {
        let fx = Fixture::new(2);
        let _c = UnmountGuard(fx.root.clone());
        put(&fx.l(0, "top"), "l0");
        put(&fx.l(1, "top"), "l1");
        let work = fx.root.join("work");
        fs::create_dir(&work).unwrap();
        let opts = format!("{},rw,dev,suid", fx.overlay_opts(&work));
        let (code, _, err) = run(unionmount([word, &s(&fx.mnt), "-o", &opts]));
        assert_eq!(code, 0, "{word}: {err}");
        assert_source(&fx.mnt, &[word, &s(&fx.upper)]);
        assert_eq!(read(&fx.m("top")), "l0");
        fs::write(fx.m("new"), "n").unwrap();
        assert_eq!(read(&fx.u("new")), "n");
        unmount_and_wait(&fx.mnt);
    }
}

#[test]
fn a_branch_spec_beside_lowerdir_is_still_refused() {
    let fx = Fixture::new(1);
    let _c = UnmountGuard(fx.root.clone());
    let opts = format!("lowerdir={}", s(&fx.lowers[0]));
    let (code, _, err) = run(unionmount([&fx.spec(), &s(&fx.mnt), "-o", &opts]));
    assert_eq!(code, 32, "stderr: {err}");
    assert!(err.contains("twice"), "{err}");
    assert!(mounts_under(&fx.root).is_empty());
}

#[test]
fn exit_statuses_follow_mount8() {
    let fx = Fixture::new(1);
    let _c = UnmountGuard(fx.root.clone());
    let bad = |args: &[&str]| run(unionmount(args));
    // 1: the command line cannot be parsed.
    for args in [&[][..], &["-x", "a", "b"], &["a", "b", "c"]] {
        let (code, _, err) = bad(args);
        assert_eq!(code, 1, "{args:?}: {err}");
    }
    // 0: --help and --version.
    assert_eq!(bad(&["--help"]).0, 0);
    assert_eq!(bad(&["--version"]).0, 0);
    // 32: refused branch, mount point or option; one line on stderr.
    let missing = format!("{}=RW:{}/nope", s(&fx.upper), s(&fx.root));
    for args in [
        vec![missing, s(&fx.mnt)],
        vec![fx.spec(), s(&fx.root.join("nomnt"))],
        vec!["-o".into(), "bogus".into(), fx.spec(), s(&fx.mnt)],
        vec!["none".into(), s(&fx.mnt)],
    ] {
        let (code, _, err) = run(unionmount(&args));
        assert_eq!(code, 32, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("unionmount: "), "{err}");
    }
    assert!(mounts_under(&fx.root).is_empty());
}

/// The mounts on exactly `mp`, bottom first, as `SOURCE type FSTYPE`.
fn stacked_on(mp: &Path) -> Vec<String> {
    unionmount::mounts::table()
        .into_iter()
        .filter(|m| m.mount_point == mp)
        .map(|m| format!("{} type {}", m.source, m.fstype))
        .collect()
}

/// A mount point that already has a live mount (of any filesystem) is refused, detaching
/// or in the foreground: exit 32, one line naming the mount there, nothing mounted. Before,
/// the second mount stacked silently and the tools talked to the daemon underneath.
/// `-o stack` asks for it, and then one unmount takes off just the top mount.
#[test]
fn a_live_mount_point_is_refused_unless_stack_asks() {
    let fx = Fixture::new(1);
    let _c = UnmountGuard(fx.root.clone());
    put(&fx.l(0, "f"), "base");
    let _below = fx.mount(&[]);
    let before = stacked_on(&fx.mnt);
    assert_eq!(before.len(), 1, "{before:?}");
    for fg in [&[][..], &["-f"]] {
        let (code, _, err) = run(unionmount(fg).args([&fx.spec(), &s(&fx.mnt)]));
        assert_eq!(code, 32, "{fg:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("already has a live mount")
                && err.contains(&format!("on {} type fuse.unionmount", s(&fx.mnt)))
                && err.contains("-o stack"),
            "{err}"
        );
        assert_eq!(stacked_on(&fx.mnt), before);
    }
    // Any filesystem, not just ours.
    if is_root() {
        let other = fx.root.join("other");
        fs::create_dir(&other).unwrap();
        let tmpfs = KernelMount::new(&["-t", "tmpfs", "scratch"], &other);
        let (code, _, err) = run(unionmount([&fx.spec(), &s(&other)]));
        drop(tmpfs);
        assert_eq!(code, 32, "{err}");
        assert!(
            err.contains(&format!("(scratch on {} type tmpfs)", s(&other))),
            "{err}"
        );
    }
    // -o stack: on top, and `fusermount3 -u` takes off that one only.
    let fx2 = Fixture::new(1);
    put(&fx2.l(0, "f"), "top");
    let (code, _, err) = run(unionmount(["-o", "stack", &fx2.spec(), &s(&fx.mnt)]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(stacked_on(&fx.mnt).len(), 2);
    assert_eq!(read(&fx.m("f")), "top");
    assert!(fusermount_u(&fx.mnt));
    assert_eq!(stacked_on(&fx.mnt), before);
    assert_eq!(read(&fx.m("f")), "base");
}

// ---- mount.fuse3 ----

#[test]
fn through_mount_fuse3() {
    let Some(helper) = mount_fuse3() else {
        eprintln!("skipped: no mount.fuse3 (apt-get install fuse3)");
        return;
    };
    let fx = Fixture::new(1);
    let _c = UnmountGuard(fx.root.clone());
    put(&fx.l(0, "f"), "base");
    let work = fx.root.join("work");
    fs::create_dir(&work).unwrap();
    let (code, _, err) = run(Command::new(&helper)
        .args([&fx.spec(), &s(&fx.mnt), "-t", "fuse.unionmount"])
        .args(["-o", "rw,noatime,nofail,_netdev,users"])
        .env("PATH", path_with_bin()));
    assert_eq!(code, 0, "mount.fuse3 {}: {err}", fx.spec());
    assert_source(&fx.mnt, &[&fx.spec(), &s(&fx.upper)]);
    assert_eq!(read(&fx.m("f")), "base");
    fs::write(fx.m("f"), "changed").unwrap();
    assert_eq!(read(&fx.u("f")), "changed");
    unmount_and_wait(&fx.mnt);

    // Overlay style with a dummy source; and the old `type#source` form (no -t).
    let opts = fx.overlay_opts(&work);
    for (source, ty) in [
        ("none", &["-t", "fuse.unionmount"][..]),
        ("unionmount#none", &[]),
    ] {
        let (code, _, err) = run(Command::new(&helper)
            .args([source, &s(&fx.mnt), "-o", &opts])
            .args(ty)
            .env("PATH", path_with_bin()));
        assert_eq!(code, 0, "mount.fuse3 {source} {ty:?}: {err}");
        assert_source(&fx.mnt, &["none", &s(&fx.upper)]);
        assert_eq!(read(&fx.m("f")), "changed");
        unmount_and_wait(&fx.mnt);
    }

    // A refusal comes back through mount.fuse3 with our status and message.
    let missing = format!("{}/nope", s(&fx.root));
    let (code, _, err) = run(Command::new(&helper)
        .args([&missing, &s(&fx.mnt), "-t", "fuse.unionmount"])
        .env("PATH", path_with_bin()));
    assert_eq!(code, 32, "{err}");
    assert!(err.contains("no such directory"), "{err}");
    assert!(mounts_under(&fx.root).is_empty());
}

// ---- mount(8) and fstab, in a private mount namespace ----

/// A private mount namespace where `unionmount` resolves to the built binary for mount(8).
struct Namespace {
    bindir: tempfile::TempDir,
}

impl Namespace {
    fn new() -> Option<Namespace> {
        if !is_root() {
            eprintln!("skipped: mount(8) with fstab needs root");
            return None;
        }
        if mount_fuse3().is_none() {
            eprintln!("skipped: no mount.fuse3 (apt-get install fuse3)");
            return None;
        }
        if !succeeds("unshare", ["-m", "--propagation", "private", "true"]) {
            eprintln!("skipped: unshare -m is not available here");
            return None;
        }
        let bindir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(BIN, bindir.path().join("unionmount")).unwrap();
        Some(Namespace { bindir })
    }

    /// Run `script` with sh -e in a new private mount namespace, `unionmount` bound first on
    /// the PATH mount.fuse3 uses. Every mount under `root` it leaves is lazily unmounted on
    /// the way out (also on failure), which ends its daemon.
    fn run(&self, root: &Path, script: &str) -> Finished {
        let full = format!(
            "set -e\n\
             cleanup() {{ for m in $(awk '{{print $2}}' /proc/self/mounts | grep '^{root}/'); do umount -l \"$m\" || true; done; }}\n\
             trap cleanup EXIT\n\
             mount --bind {bin} /usr/local/sbin\n{script}",
            root = s(root),
            bin = s(self.bindir.path())
        );
        let out = run_within(
            Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &full]),
            Duration::from_secs(30),
        );
        if !out.ok() {
            panic!(
                "script failed ({}):\n{script}\n--- stdout\n{}--- stderr\n{}",
                out.status, out.stdout, out.stderr
            );
        }
        out
    }
}

/// The script's `key=value` lines.
fn values(out: &Finished) -> std::collections::BTreeMap<String, String> {
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `source target fstype` of the mount on `$1` in the namespace's /proc/self/mounts.
const SHOW: &str =
    "show() { awk -v m=\"$1\" '$2==m{print $1\" \"$3}' /proc/self/mounts | tail -n1; }\n";

/// Two fstab lines, one per option style, with the options fstab and systemd add.
struct FstabFx {
    fx: Fixture,
    mnt2: PathBuf,
    upper2: PathBuf,
    work: PathBuf,
    fstab: PathBuf,
}

impl FstabFx {
    fn new() -> FstabFx {
        let fx = Fixture::new(1);
        put(&fx.l(0, "f"), "base");
        let (mnt2, upper2, work) = (
            fx.root.join("mnt2"),
            fx.root.join("upper2"),
            fx.root.join("work"),
        );
        for d in [&mnt2, &upper2, &work] {
            fs::create_dir(d).unwrap();
        }
        let fstab = fx.root.join("fstab");
        let text = format!(
            "# scratch fstab\n\
             {}  {}  fuse.unionmount  defaults,nofail,noatime,x-systemd.requires=/tmp  0 0\n\
             none  {}  fuse.unionmount  lowerdir={},upperdir={},workdir={},_netdev  0 0\n\
             {}  {}/never  fuse.unionmount  noauto  0 0\n",
            fx.spec(),
            s(&fx.mnt),
            s(&mnt2),
            s(&fx.lowers[0]),
            s(&upper2),
            s(&work),
            fx.spec(),
            s(&fx.root),
        );
        fs::write(&fstab, text).unwrap();
        FstabFx {
            fx,
            mnt2,
            upper2,
            work,
            fstab,
        }
    }
}

#[test]
fn fstab_mount_all() {
    let Some(ns) = Namespace::new() else { return };
    let t = FstabFx::new();
    let (m1, m2) = (s(&t.fx.mnt), s(&t.mnt2));
    let out = ns.run(
        &t.fx.root,
        &format!(
            "{SHOW}\
         mount -a -T {fstab} -t fuse.unionmount\n\
         echo m1=\"$(show {m1})\"\n\
         echo m2=\"$(show {m2})\"\n\
         echo f1=\"$(cat {m1}/f)\"\n\
         echo f2=\"$(cat {m2}/f)\"\n\
         echo one > {m1}/new\n\
         echo two > {m2}/new\n\
         umount {m1}\n\
         umount {m2}\n\
         echo left=\"$(show {m1})$(show {m2})\"\n",
            fstab = s(&t.fstab),
        ),
    );
    let v = values(&out);
    let spec = t.fx.spec();
    let ok1 = [
        format!("{spec} fuse.unionmount"),
        format!("{} fuse.unionmount", s(&t.fx.upper)),
    ];
    assert!(ok1.contains(&v["m1"]), "{:?}", v["m1"]);
    let ok2 = [
        "none fuse.unionmount".to_string(),
        format!("{} fuse.unionmount", s(&t.upper2)),
    ];
    assert!(ok2.contains(&v["m2"]), "{:?}", v["m2"]);
    assert_eq!((v["f1"].as_str(), v["f2"].as_str()), ("base", "base"));
    assert_eq!(v["left"], "", "umount left a mount behind");
    // Writes landed in the uppers; the lower and the noauto line untouched.
    assert_eq!(read(&t.fx.u("new")), "one\n");
    assert_eq!(read(&t.upper2.join("new")), "two\n");
    assert_eq!(names(&t.fx.lowers[0]), strs(&["f"]));
    assert!(!t.fx.root.join("never").exists());
    assert!(t.work.is_dir());
}

#[test]
fn fstab_mount_by_mountpoint_and_by_type() {
    let Some(ns) = Namespace::new() else { return };
    let t = FstabFx::new();
    let (m1, m2) = (s(&t.fx.mnt), s(&t.mnt2));
    let out = ns.run(&t.fx.root, &format!(
        "{SHOW}\
         mount -T {fstab} {m2}\n\
         echo m2=\"$(show {m2} | cut -d' ' -f2)\"\n\
         umount {m2}\n\
         mount -t fuse.unionmount -o ro,noatime {spec} {m1}\n\
         echo m1=\"$(show {m1} | cut -d' ' -f2)\"\n\
         echo f1=\"$(cat {m1}/f)\"\n\
         if echo x > {m1}/g 2>/dev/null; then echo ro=no; else echo ro=yes; fi\n\
         umount {m1}\n\
         mount -t fuse.unionmount -o lowerdir={l},upperdir={u2},workdir={w} none {m2}\n\
         echo f2=\"$(cat {m2}/f)\"\n\
         umount {m2}\n\
         if mount -t fuse.unionmount {root}/nope {m1} 2>/dev/null; then echo bad=0; else echo bad=$?; fi\n",
        fstab = s(&t.fstab),
        spec = t.fx.spec(),
        l = s(&t.fx.lowers[0]),
        u2 = s(&t.upper2),
        w = s(&t.work),
        root = s(&t.fx.root),
    ));
    let v = values(&out);
    assert_eq!(v["m2"], "fuse.unionmount");
    assert_eq!(v["m1"], "fuse.unionmount");
    assert_eq!(v["f1"], "base");
    assert_eq!(v["ro"], "yes", "-o ro through mount(8) is not read-only");
    assert_eq!(v["f2"], "base");
    assert_eq!(v["bad"], "32", "mount(8) passes on the helper's status");
    assert!(names(&t.fx.upper).is_empty());
}

/// `mount -a` twice mounts once: libmount knows a line is mounted when /proc/mounts shows
/// its source, which the daemon takes from SOURCE (passed on as `fsname=`).
#[test]
fn fstab_mount_all_is_idempotent() {
    let Some(ns) = Namespace::new() else { return };
    let t = FstabFx::new();
    let out = ns.run(
        &t.fx.root,
        &format!(
            "mount -a -T {fstab} -t fuse.unionmount\n\
         mount -a -T {fstab} -t fuse.unionmount\n\
         echo n=$(awk '$3==\"fuse.unionmount\"' /proc/self/mounts | grep -c {root})\n",
            fstab = s(&t.fstab),
            root = s(&t.fx.root),
        ),
    );
    assert_eq!(values(&out)["n"], "2");
}
