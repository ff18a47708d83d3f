//! What containers need of a mount program beyond the union itself, on real mounts: ID
//! mapping (`uidmapping=`/`gidmapping=`), `squash_to_*`, owners kept in an xattr
//! (`xattr_permissions=`), and a daemon running rootless in a user namespace. Where
//! fuse-overlayfs is installed, the mapping is checked against it too.
mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// `-o lowerdir=LOWER0,upperdir=UPPER,workdir=ROOT/work[,EXTRA] MNT`
fn overlay_args(fx: &Fixture, extra: &str) -> Vec<String> {
    let mut o = overlay_opts(&[&fx.lowers[0]], &fx.upper, &fx.root.join("work"));
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
    succeeds(cmd, ["--version"])
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
        "{},uidmapping=0:100000:65536,gidmapping=0:100000:65536",
        overlay_opts(&[&fx.lowers[0]], &fx.upper, &fx.root.join("work"))
    );
    assert!(
        succeeds("fuse-overlayfs", ["-o", &o, &s(&fx.mnt)]),
        "fuse-overlayfs mount"
    );
    let peer = mapping_observations(&fx);
    fusermount_u(&fx.mnt);
    assert_eq!(peer, MAPPING_WANT, "fuse-overlayfs itself");
}

#[test]
fn squashing_shows_one_owner_and_forgives_a_failed_chown() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    put(&fx.l(0, "a"), "a");
    chown(&fx.l(0, "a"), 5, 6);
    let m = mount_overlay(
        &fx,
        "squash_to_uid=42,squash_to_gid=43,uidmapping=0:100000:65536",
    );
    // Squashing wins over the mapping in what stat shows.
    assert_eq!(owner(&fx.m("a")), "42:43");
    put(&fx.m("new"), "n");
    assert_eq!(owner(&fx.m("new")), "42:43");
    // ... and only there: the creator (root, mapped to the overflow ID) is stored.
    assert_eq!(owner(&fx.u("new")), "65534:0");
    std::os::unix::fs::lchown(fx.m("a"), Some(100007), None).unwrap();
    assert_eq!(owner(&fx.u("a")), "7:6");
    // A chown the filesystem refuses (an immutable file) still reports success.
    let immutable = succeeds("chattr", ["+i", &s(&fx.u("new"))]);
    if immutable {
        let r = std::os::unix::fs::lchown(fx.m("new"), Some(100001), Some(100001));
        let chmod = fs::set_permissions(fx.m("new"), fs::Permissions::from_mode(0o600));
        succeeds("chattr", ["-i", &s(&fx.u("new"))]);
        assert!(r.is_ok(), "chown of an immutable file: {r:?}");
        assert!(chmod.is_err(), "chmod failures are not forgiven");
        assert_eq!(owner(&fx.u("new")), "65534:0");
    } else {
        eprintln!("chattr +i not possible here: the failed chown is not checked");
    }
    m.unmount();
}

fn xattr_of(p: &Path, name: &str) -> Option<String> {
    xattr::get(p, name)
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

fn shown(p: &Path) -> String {
    let md = fs::symlink_metadata(p).unwrap();
    format!("{}:{}:{:o}", md.uid(), md.gid(), md.mode() & 0o7777)
}

const USER_XATTR: &str = "user.fuseoverlayfs.override_stat";

#[test]
fn xattr_permissions_keep_owners_and_modes_in_an_xattr() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    put(&fx.l(0, "plain"), "p");
    chown(&fx.l(0, "plain"), 5, 6);
    mkdir_p(&fx.l(0, "d"));
    chown(&fx.upper, 5, 6);
    set_mode(&fx.upper, 0o750);
    let m = mount_overlay(&fx, "xattr_permissions=2");
    // The upper's root gets its own owner and mode recorded (as fuse-overlayfs 1.10).
    assert_eq!(
        xattr_of(&fx.upper, USER_XATTR).as_deref(),
        Some("5:6:40750")
    );
    assert_eq!(shown(&fx.mnt), "5:6:750");
    // A lower file with no record shows its own.
    assert_eq!(shown(&fx.m("plain")), "5:6:644");

    // New entries: the caller's ids and the mode in the xattr, the object the daemon's.
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 022; echo n >{0}/new && mkdir {0}/newd && ln -s x {0}/newl",
            fx.mnt.display()
        ))
        .uid(0)
        .status()
        .unwrap();
    assert_eq!(
        xattr_of(&fx.u("new"), USER_XATTR).as_deref(),
        Some("0:0:100644")
    );
    assert_eq!(
        xattr_of(&fx.u("newd"), USER_XATTR).as_deref(),
        Some("0:0:40755")
    );
    assert_eq!(shown(&fx.m("new")), "0:0:644");
    assert_eq!(mode_of(&fx.u("new")), 0o755);
    // A symlink has no such record: it keeps its own owner.
    assert!(
        xattr::get(fx.u("newl"), USER_XATTR)
            .unwrap_or(None)
            .is_none()
    );

    // chmod and chown change the record, not the file; a chown clears set-id bits.
    fs::set_permissions(fx.m("new"), fs::Permissions::from_mode(0o4600)).unwrap();
    assert_eq!(
        xattr_of(&fx.u("new"), USER_XATTR).as_deref(),
        Some("0:0:104600")
    );
    std::os::unix::fs::lchown(fx.m("new"), Some(7), Some(8)).unwrap();
    // A group alone keeps the uid (fuse-overlayfs 1.10 records -1 for it).
    std::os::unix::fs::lchown(fx.m("new"), None, Some(9)).unwrap();
    assert_eq!(
        xattr_of(&fx.u("new"), USER_XATTR).as_deref(),
        Some("7:9:100600")
    );
    assert_eq!(shown(&fx.m("new")), "7:9:600");
    assert_eq!(
        (owner(&fx.u("new")), mode_of(&fx.u("new"))),
        ("0:0".into(), 0o755)
    );

    // A lower directory changed: copied up, its record written.
    fs::set_permissions(fx.m("d"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(
        xattr_of(&fx.u("d"), USER_XATTR).as_deref(),
        Some("0:0:40700")
    );
    assert_eq!(shown(&fx.m("d")), "0:0:700");

    // The record is the layering's own: not listed, not readable, not writable.
    let names: Vec<String> = xattr::list(fx.m("new"))
        .unwrap()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("override_stat")),
        "{names:?}"
    );
    assert!(xattr::get(fx.m("new"), USER_XATTR).unwrap().is_none());
    for name in [
        USER_XATTR,
        "user.fuseoverlayfs.other",
        "user.containers.override_stat",
        "security.fuseoverlayfs.override_stat",
    ] {
        assert_errno(
            xattr::set(fx.m("new"), name, b"0:0:104755"),
            libc::EPERM,
            name,
        );
    }
    xattr::set(fx.m("new"), "user.other", b"1").unwrap();
    m.unmount();

    // An entry without a record, put there by hand, shows its own attributes.
    put(&fx.u("hand"), "h");
    chown(&fx.u("hand"), 3, 3);
    let m = mount_overlay(&fx, "xattr_permissions=2");
    assert_eq!(shown(&fx.m("hand")), "3:3:644");
    assert_eq!(shown(&fx.m("new")), "7:9:600");
    m.unmount();
}

#[test]
fn layers_with_an_owner_xattr_on_their_root_show_owners_from_it() {
    // What containers-storage's force_mask leaves in a layer it unpacks.
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    put(&fx.l(0, "a"), "a");
    set_mode(&fx.l(0, "a"), 0o700);
    put(&fx.l(0, "b"), "b");
    xattr::set(&fx.lowers[0], "user.containers.override_stat", b"0:0:40755").unwrap();
    xattr::set(fx.l(0, "a"), "user.containers.override_stat", b"3:4:100640").unwrap();
    let m = mount_overlay(&fx, "uidmapping=0:100000:65536");
    // The record first, then the mapping.
    assert_eq!(shown(&fx.m("a")), "100003:4:640");
    assert_eq!(shown(&fx.m("b")), "100000:0:644");
    // A copy-up copies the record with the file: the copy shows the same.
    put(&fx.m("a"), "changed");
    assert_eq!(shown(&fx.m("a")), "100003:4:640");
    assert_eq!(read(&fx.m("a")), "changed");
    m.unmount();
}

#[test]
fn xattr_permissions_1_keeps_them_in_the_security_namespace() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root (security.* xattrs)") else {
        return;
    };
    let m = mount_overlay(&fx, "xattr_permissions=1");
    put(&fx.m("f"), "f");
    std::os::unix::fs::lchown(fx.m("f"), Some(11), Some(12)).unwrap();
    let v = xattr_of(&fx.u("f"), "security.fuseoverlayfs.override_stat");
    assert_eq!(v.as_deref(), Some("11:12:100644"));
    assert_eq!(owner(&fx.m("f")), "11:12");
    assert_eq!(owner(&fx.u("f")), "0:0");
    m.unmount();
}

/// Run `script` as root of a new user namespace (with its own mount namespace) whose root
/// is `nobody` outside, as rootless podman runs its mount program. `None` where user
/// namespaces or the tools are not available.
/// Run `sh -euc script` as nobody in a new user namespace where it is root, with `$BIN`
/// and `$ROOT` set: it must succeed; its stdout. None (with a note) where that cannot be
/// set up.
fn in_user_namespace(fx: &Fixture, script: &str) -> Option<String> {
    let userns = || {
        let mut c = as_user(65534);
        c.args(["unshare", "--user", "--map-root-user", "--mount"]);
        c
    };
    let possible = is_root()
        && available("unshare")
        && Path::new("/usr/bin/setpriv").exists()
        && userns().arg("true").status().is_ok_and(|st| st.success());
    if !possible {
        eprintln!("skipped: needs root to set up, setpriv and unprivileged user namespaces");
        return None;
    }
    let out = run(userns()
        .args(["sh", "-euc", script])
        .env("BIN", BIN)
        .env("ROOT", &fx.root));
    // The mount lived in the namespace, which is gone with the shell.
    assert!(mounts_under(&fx.root).is_empty());
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    Some(out.stdout)
}

/// A fixture the namespace's root (nobody outside) owns entirely.
fn rootless_fixture() -> Fixture {
    let fx = Fixture::new(1);
    fs::create_dir(fx.root.join("work")).unwrap();
    put(&fx.l(0, "f"), "base");
    put(&fx.l(0, "del"), "gone");
    put(&fx.l(0, "redo/old"), "old");
    put(&fx.l(0, "redo/sub/old2"), "old");
    put(&fx.l(0, "moved/x/y"), "y");
    put(&fx.l(0, "meta"), "meta");
    chown_r(&fx.root, 65534, 65534);
    fx
}

const ROOTLESS_MOUNT: &str = r#"
M=$ROOT/mnt
"$BIN" -o lowerdir=$ROOT/lower0,upperdir=$ROOT/upper,workdir=$ROOT/work "$M"
trap 'umount "$M"' EXIT
"#;

#[test]
fn rootless_in_a_user_namespace() {
    let fx = rootless_fixture();
    let script = format!(
        r#"{ROOTLESS_MOUNT}
echo more >>"$M/f"
rm "$M/del"
rm -rf "$M/redo" && mkdir "$M/redo" && echo new >"$M/redo/new"
[ ! -e "$M/redo/old" ] || {{ echo "old file still there"; exit 1; }}
mv "$M/moved" "$M/here"
echo "moved: $(cat "$M/here/x/y")"
echo n >"$M/created"
stat -c '%u:%g %n' "$M/f" "$M/created"
"#
    );
    let Some(stdout) = in_user_namespace(&fx, &script) else {
        return;
    };
    // Inside, the namespace's root owns everything.
    assert!(
        stdout.contains("0:0 ") && !stdout.contains("65534"),
        "{stdout}"
    );
    // On disk: the copy, the whiteouts and the opaque directory, all owned by nobody.
    assert_eq!(read(&fx.u("f")), "basemore\n");
    assert!(lexists(&fx.u(".wh.del")));
    assert!(lexists(&fx.u(&format!("redo/{OPQ}"))));
    assert_eq!(read(&fx.u("redo/new")), "new\n");
    assert!(!lexists(&fx.u("redo/old")));
    // Unprivileged, a moved directory records where its lower parts are as rootless
    // kernel overlayfs does (user.overlay.redirect): no file data is copied.
    assert!(lexists(&fx.u(".wh.moved")));
    assert_eq!(
        xattr::get(fx.u("here"), "user.overlay.redirect").unwrap(),
        Some(b"/moved".to_vec())
    );
    assert!(!lexists(&fx.u("here/x")));
    assert!(!lexists(&fx.u(&format!("here/{OPQ}"))));
    assert!(stdout.contains("moved: y"), "{stdout}");
    for p in ["f", ".wh.del", "redo", "redo/new", "here", "created"] {
        assert_eq!(owner(&fx.u(p)), "65534:65534", "{p}");
    }
    // The lower is untouched.
    assert_eq!(read(&fx.l(0, "f")), "base");
    assert!(lexists(&fx.l(0, "del")) && lexists(&fx.l(0, "redo/old")));
    // That upper stacked as a lower under a fresh upper: the move still holds.
    let fresh = fx.root.join("fresh");
    fs::create_dir(&fresh).unwrap();
    let spec = format!(
        "{}=RW:{}=RO:{}=RO",
        fresh.display(),
        fx.upper.display(),
        fx.lowers[0].display()
    );
    let m = fx.mount_args(vec![spec, fx.mnt.display().to_string()], vec![]);
    assert_eq!(read(&fx.m("here/x/y")), "y");
    assert!(!lexists(&fx.m("moved")));
    drop(m);
}

#[test]
fn rootless_metadata_changes_of_lower_files() {
    let fx = rootless_fixture();
    let script = format!(
        r#"{ROOTLESS_MOUNT}
chmod 600 "$M/meta"
touch -m -d 2001-02-03 "$M/f"
"#
    );
    if in_user_namespace(&fx, &script).is_none() {
        return;
    }
    assert_eq!(mode_of(&fx.u("meta")), 0o600);
    assert_eq!(read(&fx.u("meta")), "meta");
}

#[test]
fn rootless_copy_up_below_a_directory_of_an_unmapped_owner_fails() {
    let fx = rootless_fixture();
    // A directory owned by an ID the namespace does not map (it shows as 65534 inside),
    // holding a file the namespace's root owns.
    put(&fx.l(0, "foreign/mine"), "mine");
    chown(&fx.l(0, "foreign/mine"), 65534, 65534);
    chown(&fx.l(0, "foreign"), 4242, 4242);
    // Changing the file copies its directory up, owner included, which no chown inside
    // the namespace can give: the write fails, as on fuse-overlayfs, and nothing is left.
    let script = format!(
        r#"{ROOTLESS_MOUNT}
stat -c '%u:%g' "$M/foreign"
if echo more >>"$M/foreign/mine"; then echo "written"; fi
"#
    );
    let Some(stdout) = in_user_namespace(&fx, &script) else {
        return;
    };
    assert_eq!(stdout, "65534:65534\n");
    assert!(!lexists(&fx.u("foreign")));
    assert_eq!(read(&fx.l(0, "foreign/mine")), "mine");
}

/// Snapshots as rootless podman would use them: a daemon that is root only of a user
/// namespace (nobody outside) takes a snapshot, rolls back to it and drops it, live.
#[test]
fn rootless_snapshot_and_rollback_in_a_user_namespace() {
    let fx = rootless_fixture();
    let script = format!(
        r#"{ROOTLESS_MOUNT}
echo one >"$M/f"
rm "$M/del"
"$BIN" snapshot "$M" s1
echo two >"$M/f"
echo n >"$M/new"
mv "$M/moved" "$M/here"
"$BIN" rollback "$M" s1
echo "f=$(cat "$M/f") new=$([ -e "$M/new" ] && echo yes || echo no) moved=$(cat "$M/moved/x/y")"
echo three >"$M/f"
"$BIN" snapshot "$M" s2
"$BIN" snapshot "$M" --drop s1
"$BIN" snapshots "$M" | cut -c1-8
"#
    );
    let Some(stdout) = in_user_namespace(&fx, &script) else {
        return;
    };
    assert!(stdout.contains("rolled back to s1"), "{stdout}");
    assert!(stdout.contains("f=one new=no moved=y"), "{stdout}");
    assert!(stdout.contains("dropped"), "{stdout}");
    let names: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("NAME"))
        .skip(1)
        .map(str::trim)
        .collect();
    assert_eq!(names, ["s2", "(upper)"], "{stdout}");
    // On disk, owned by nobody: the remaining snapshot holds both changes (s1's merged in).
    let snap = fx.root.join("upper.snapshots/0002-s2");
    assert_eq!(read(&snap.join("f")), "three\n");
    assert!(lexists(&snap.join(".wh.del")));
    assert_eq!(owner(&snap), "65534:65534");
    assert_eq!(read(&fx.l(0, "f")), "base");
}
