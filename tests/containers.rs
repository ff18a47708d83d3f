//! What containers need of a mount program beyond the union itself, on real mounts: ID
//! mapping (`uidmapping=`/`gidmapping=`). Where fuse-overlayfs is installed, the mapping is
//! checked against it too.
mod common;
use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// `-o lowerdir=LOWER0,upperdir=UPPER,workdir=ROOT/work[,EXTRA] MNT`
fn overlay_args(fx: &Fixture, extra: &str) -> Vec<String> {
    let mut o = format!(
        "lowerdir={},upperdir={},workdir={}",
        fx.lowers[0].display(),
        fx.upper.display(),
        fx.root.join("work").display()
    );
    if !extra.is_empty() {
        o = format!("{o},{extra}");
    }
    strs(&["-o", &o, &fx.mnt.display().to_string()])
}

fn mount_overlay(fx: &Fixture, extra: &str) -> Mount {
    fx.mount_args(overlay_args(fx, extra), fx.lowers.clone())
}

/// `uid:gid` of a path, not following a symlink.
fn owner(p: &Path) -> String {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    format!("{}:{}", md.uid(), md.gid())
}

fn available(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The lower of the mapping checks: files owned by 0, by a mapped ID and by one outside
/// the mapping, and a directory anyone may write in.
fn mapping_lower(fx: &Fixture) {
    put(&fx.l(0, "rootfile"), "r");
    put(&fx.l(0, "f5"), "5");
    chown(&fx.l(0, "f5"), 5, 6);
    put(&fx.l(0, "f70000"), "x");
    chown(&fx.l(0, "f70000"), 70000, 70000);
    mkdir_p(&fx.l(0, "d"));
    set_mode(&fx.l(0, "d"), 0o777);
    set_mode(&fx.lowers[0], 0o777);
    set_mode(&fx.upper, 0o777);
}

/// Through a mount of `mapping_lower` with `uidmapping=0:100000:65536` (and gid): what stat
/// shows, what a creator, chown and copy-up store. One line per observation.
fn mapping_observations(fx: &Fixture) -> Vec<String> {
    let mut out = Vec::new();
    for f in ["rootfile", "f5", "f70000", "d"] {
        out.push(format!("shown {f} {}", owner(&fx.m(f))));
    }
    let touched = Command::new("touch")
        .arg(fx.m("d/x"))
        .uid(100005)
        .gid(100005)
        .status()
        .unwrap();
    assert!(touched.success(), "touch as 100005");
    out.push(format!(
        "created by 100005: shown {} stored {}",
        owner(&fx.m("d/x")),
        owner(&fx.u("d/x"))
    ));
    std::os::unix::fs::lchown(fx.m("f5"), Some(100007), Some(100008)).unwrap();
    out.push(format!(
        "chown 100007:100008: shown {} stored {}",
        owner(&fx.m("f5")),
        owner(&fx.u("f5"))
    ));
    // 5 is outside the host range: stored as the overflow ID, which then shows shifted.
    std::os::unix::fs::lchown(fx.m("rootfile"), Some(5), Some(5)).unwrap();
    out.push(format!(
        "chown 5:5: shown {} stored {}",
        owner(&fx.m("rootfile")),
        owner(&fx.u("rootfile"))
    ));
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(fx.m("f70000"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"+").unwrap();
    drop(f);
    out.push(format!(
        "copy-up: shown {} stored {}",
        owner(&fx.m("f70000")),
        owner(&fx.u("f70000"))
    ));
    out
}

/// fuse-overlayfs' results (checked with fuse-overlayfs 1.10), with the usual overflow
/// ID 65534.
const MAPPING_WANT: &[&str] = &[
    "shown rootfile 100000:100000",
    "shown f5 100005:100006",
    "shown f70000 65534:65534",
    "shown d 100000:100000",
    "created by 100005: shown 100005:100005 stored 5:5",
    "chown 100007:100008: shown 100007:100008 stored 7:8",
    "chown 5:5: shown 165534:165534 stored 65534:65534",
    "copy-up: shown 65534:65534 stored 70000:70000",
];

#[test]
fn id_mapping_shifts_owners_as_fuse_overlayfs_does() {
    if !is_root() {
        eprintln!("skipped: needs root (chown, mapped IDs)");
        return;
    }
    let overflow = fs::read_to_string("/proc/sys/kernel/overflowuid").unwrap();
    if overflow.trim() != "65534" {
        eprintln!("skipped: the expected values assume overflowuid 65534");
        return;
    }
    let fx = Fixture::new(1);
    mapping_lower(&fx);
    let m = mount_overlay(&fx, "uidmapping=:0:100000:65536,gidmapping=:0:100000:65536");
    let got = mapping_observations(&fx);
    assert_eq!(got, MAPPING_WANT, "{}", fx.log_tail());
    m.unmount();

    // Several ranges: the first ID alone, then the rest.
    let fx = Fixture::new(1);
    mapping_lower(&fx);
    let _m = mount_overlay(
        &fx,
        "uidmapping=0:100000:1:1:200000:65535,gidmapping=0:0:10",
    );
    assert_eq!(owner(&fx.m("rootfile")), "100000:0");
    assert_eq!(owner(&fx.m("f5")), "200004:6");
    assert_eq!(owner(&fx.m("f70000")), "65534:65534");

    if !available("fuse-overlayfs") {
        eprintln!("fuse-overlayfs not installed: not compared");
        return;
    }
    let fx = Fixture::new(1);
    mapping_lower(&fx);
    fs::create_dir(fx.root.join("work")).unwrap();
    let o = format!(
        "lowerdir={},upperdir={},workdir={},uidmapping=0:100000:65536,gidmapping=0:100000:65536",
        fx.lowers[0].display(),
        fx.upper.display(),
        fx.root.join("work").display()
    );
    let ok = Command::new("fuse-overlayfs")
        .args(["-o", &o])
        .arg(&fx.mnt)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "fuse-overlayfs mount");
    let peer = mapping_observations(&fx);
    let _ = Command::new("fusermount3").arg("-u").arg(&fx.mnt).status();
    assert_eq!(peer, MAPPING_WANT, "fuse-overlayfs itself");
}
