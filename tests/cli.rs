//! The command line: bad input is refused before anything is mounted or created; detaching,
//! foreground, unmounting and signals.
mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Every path under `dir` (including hidden work dirs) with its type, mode and mtime.
fn listing(dir: &Path) -> BTreeMap<String, (u32, (i64, i64))> {
    let mut out = BTreeMap::new();
    walk_tree(dir, |p, md| {
        let rel = p.strip_prefix(dir).unwrap().display().to_string();
        out.insert(rel, (md.mode(), (md.mtime(), md.mtime_nsec())));
    });
    out
}

/// The binary refuses `args`: non-zero exit, exactly one stderr line mentioning one of
/// `mentions` (if any given), nothing mounted, nothing created under the fixture.
fn expect_rejected(fx: &Fixture, args: Vec<String>, mentions: &[&str]) {
    let _cleanup = UnmountGuard(fx.root.clone());
    let before = listing(&fx.root);
    let r = tool(&args);
    let mounted = mounts_under(&fx.root);
    assert!(
        mounted.is_empty(),
        "{args:?} mounted {mounted:?} (exit {})",
        r.status
    );
    assert!(
        !r.status.success(),
        "{args:?} exited 0; stderr: {:?}",
        r.stderr
    );
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: want exactly one stderr line, got {:?}",
        r.stderr
    );
    if !mentions.is_empty() {
        assert!(
            mentions.iter().any(|m| lines[0].contains(m)),
            "{args:?}: message {:?} names none of {mentions:?}",
            lines[0]
        );
    }
    assert_eq!(
        listing(&fx.root),
        before,
        "{args:?} created or changed something"
    );
}

#[test]
fn rejects_malformed_spec() {
    let fx = Fixture::new(1);
    let spec = format!("{}=RW::{}=RO", s(&fx.upper), s(&fx.lowers[0]));
    expect_rejected(&fx, vec![spec, s(&fx.mnt)], &[]);
    expect_rejected(&fx, vec!["a::b".into(), s(&fx.mnt)], &[]);
}

#[test]
fn rejects_unknown_mode() {
    let fx = Fixture::new(1);
    let spec = format!("{}=RW:{}=RX", s(&fx.upper), s(&fx.lowers[0]));
    expect_rejected(&fx, vec![spec, s(&fx.mnt)], &["RX"]);
}

#[test]
fn rejects_missing_branch() {
    let fx = Fixture::new(1);
    let nope = fx.root.join("nope");
    let spec = format!("{}=RW:{}=RO", s(&fx.upper), s(&nope));
    expect_rejected(&fx, vec![spec, s(&fx.mnt)], &[&s(&nope)]);
}

#[test]
fn rejects_branch_that_is_a_file() {
    let fx = Fixture::new(1);
    let file = fx.root.join("plainfile");
    put(&file, "x");
    let spec = format!("{}=RW:{}=RO", s(&fx.upper), s(&file));
    expect_rejected(&fx, vec![spec, s(&fx.mnt)], &[&s(&file)]);
}

#[test]
fn rejects_same_dir_twice() {
    let fx = Fixture::new(1);
    let l = s(&fx.lowers[0]);
    let spec = format!("{}=RW:{l}=RO:{l}=RO", s(&fx.upper));
    expect_rejected(&fx, vec![spec, s(&fx.mnt)], &[&l]);
    let u = s(&fx.upper);
    let spec = format!("{u}=RW:{u}=RO");
    expect_rejected(&fx, vec![spec, s(&fx.mnt)], &[&u]);
    // The same directory spelled differently.
    let spec = format!("{}=RW:{l}=RO:{l}/.=RO", s(&fx.upper));
    expect_rejected(&fx, vec![spec, s(&fx.mnt)], &[&l]);
}

#[test]
fn rejects_two_rw_branches() {
    let fx = Fixture::new(1);
    let spec = format!("{}=RW:{}=RW", s(&fx.upper), s(&fx.lowers[0]));
    expect_rejected(&fx, vec![spec, s(&fx.mnt)], &[&s(&fx.lowers[0]), "RW"]);
}

#[test]
fn rejects_rw_not_first() {
    let fx = Fixture::new(1);
    let spec = format!("{}=RO:{}=RW", s(&fx.lowers[0]), s(&fx.upper));
    expect_rejected(&fx, vec![spec, s(&fx.mnt)], &[&s(&fx.upper)]);
}

#[test]
fn rejects_mountpoint_inside_a_branch() {
    let fx = Fixture::new(1);
    mkdir_p(&fx.u("m"));
    mkdir_p(&fx.l(0, "m"));
    expect_rejected(&fx, vec![fx.spec(), s(&fx.u("m"))], &[&s(&fx.upper)]);
    expect_rejected(&fx, vec![fx.spec(), s(&fx.l(0, "m"))], &[&s(&fx.lowers[0])]);
}

#[test]
fn rejects_mountpoint_equal_to_a_branch() {
    let fx = Fixture::new(1);
    expect_rejected(&fx, vec![fx.spec(), s(&fx.lowers[0])], &[&s(&fx.lowers[0])]);
    expect_rejected(&fx, vec![fx.spec(), s(&fx.upper)], &[&s(&fx.upper)]);
}

#[test]
fn rejects_missing_mountpoint() {
    let fx = Fixture::new(1);
    let nomnt = fx.root.join("nomnt");
    expect_rejected(&fx, vec![fx.spec(), s(&nomnt)], &[&s(&nomnt)]);
}

/// `unionmount BRANCHES` without a mount point says the mount point is missing, as an
/// incorrect invocation (status 1). (Once: "no branches", the spec taken as the mount point.)
#[test]
fn rejects_branches_without_a_mountpoint() {
    let fx = Fixture::new(1);
    expect_rejected(&fx, vec![fx.spec()], &["missing MOUNTPOINT"]);
    expect_rejected(&fx, vec!["u=RW:l=RO".into()], &["missing MOUNTPOINT"]);
    let r = tool(&["-o".into(), "ro".into(), fx.spec()]);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r.stderr.contains(&fx.spec()), "{}", r.stderr);
    // A lone directory is taken as the mount point, and the message says so.
    let want = format!("no branches for mount point '{}'", s(&fx.mnt));
    expect_rejected(&fx, vec![s(&fx.mnt)], &[&want]);
}

#[test]
fn rejects_unknown_option() {
    let fx = Fixture::new(1);
    expect_rejected(
        &fx,
        vec!["-o".into(), "bogus_option".into(), fx.spec(), s(&fx.mnt)],
        &["bogus_option"],
    );
    expect_rejected(
        &fx,
        vec![
            "-o".into(),
            "ro,bogus_option=1".into(),
            fx.spec(),
            s(&fx.mnt),
        ],
        &["bogus_option"],
    );
    expect_rejected(
        &fx,
        vec!["-o".into(), "timeout=abc".into(), fx.spec(), s(&fx.mnt)],
        &["timeout"],
    );
}

/// The pids of unionmount processes serving `mnt` (other than zombies).
fn daemons_for(mnt: &Path) -> Vec<u32> {
    let bin = fs::canonicalize(BIN).unwrap();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if fs::read_link(e.path().join("exe")).ok().as_deref() != Some(bin.as_path()) {
            continue;
        }
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let serves = cmdline
            .split(|&b| b == 0)
            .any(|a| a == mnt.as_os_str().as_encoded_bytes());
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if serves && !zombie {
            out.push(pid);
        }
    }
    out
}

#[test]
fn detaches_only_once_mount_is_live() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "hello");
    let _cleanup = UnmountGuard(fx.mnt.clone());
    let r = tool(&[fx.spec(), s(&fx.mnt)]);
    assert!(r.status.success(), "detaching mount failed: {}", r.stderr);
    // No waiting: the mount must already be usable.
    assert_eq!(mount_fstype(&fx.mnt).as_deref(), Some("fuse.unionmount"));
    assert_eq!(names(&fx.mnt), strs(&["f"]));
    assert_eq!(read(&fx.m("f")), "hello");
    fs::write(fx.m("g"), "g").unwrap();
    assert_eq!(read(&fx.u("g")), "g");

    let pids = daemons_for(&fx.mnt);
    assert_eq!(pids.len(), 1, "one daemon serves the mount: {pids:?}");
    assert!(!pids.contains(&std::process::id()));
    assert!(fusermount_u(&fx.mnt));
    assert!(
        eventually(Duration::from_secs(10), || daemons_for(&fx.mnt).is_empty()),
        "daemon still running 10 s after unmount"
    );
    assert!(mount_fstype(&fx.mnt).is_none());
    assert_eq!(
        names(&fx.upper),
        strs(&["g"]),
        "work dir removed on clean unmount"
    );
}

#[test]
fn foreground_stays_in_foreground() {
    let fx = Fixture::new(1);
    let mut m = fx.mount(&[]);
    assert!(
        m.wait_exit(Duration::from_millis(500)).is_none(),
        "-f process exited while mounted"
    );
    assert_eq!(mount_fstype(&fx.mnt).as_deref(), Some("fuse.unionmount"));
    drop(m);
}

#[test]
fn mountinfo_fstype() {
    let fx = Fixture::new(1);
    let m = fx.mount(&[]);
    assert_eq!(mount_fstype(&fx.mnt).as_deref(), Some("fuse.unionmount"));
    drop(m);
    assert_eq!(mount_fstype(&fx.mnt), None);
}

#[test]
fn version() {
    let r = tool(["--version"]);
    assert!(r.status.success());
    assert!(
        r.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {:?}",
        r.stdout
    );
}

#[test]
fn help_mentions_an_example() {
    let r = tool(["--help"]);
    assert!(r.status.success());
    assert!(
        r.stdout.to_lowercase().contains("example"),
        "--help has no example: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("=RW:"),
        "--help example shows no branch spec: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("lowerdir="),
        "--help does not mention overlay-style options"
    );
}

#[test]
fn umount_ends_daemon() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "f");
    let mut m = fx.mount(&[]);
    fs::write(fx.m("f"), "changed").unwrap();
    let st = Command::new("umount").arg(&fx.mnt).status().unwrap();
    assert!(st.success(), "umount failed");
    let exit = m
        .wait_exit(Duration::from_secs(10))
        .expect("daemon still running 10 s after umount");
    assert!(exit.success(), "daemon exit after umount: {exit}");
    assert!(mount_fstype(&fx.mnt).is_none());
    assert_eq!(
        names(&fx.upper),
        strs(&["f"]),
        "work dir removed on clean unmount"
    );
    drop(m);
}

#[test]
fn sigterm_unmounts_cleanly() {
    signal_unmounts_cleanly(libc::SIGTERM, "SIGTERM");
}

/// SIGINT (Ctrl-C on a foreground daemon) unmounts cleanly, as SIGTERM does.
#[test]
fn sigint_unmounts_cleanly() {
    signal_unmounts_cleanly(libc::SIGINT, "SIGINT");
}

fn signal_unmounts_cleanly(sig: libc::c_int, what: &str) {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "f");
    let mut m = fx.mount(&[]);
    fs::write(fx.m("f"), "changed").unwrap();
    assert_eq!(unsafe { libc::kill(m.pid() as libc::pid_t, sig) }, 0);
    let exit = m
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("daemon still running 10 s after {what}"));
    assert_eq!(
        exit.signal(),
        None,
        "daemon died of the signal instead of handling it"
    );
    assert!(exit.success(), "daemon exit after {what}: {exit}");
    assert!(
        mount_fstype(&fx.mnt).is_none(),
        "{what} left the mount behind"
    );
    assert_eq!(
        names(&fx.upper),
        strs(&["f"]),
        "work dir removed on clean unmount"
    );
    assert_eq!(read(&fx.u("f")), "changed");
    drop(m);
}

#[test]
fn overlay_style_options() {
    let fx = Fixture::new(2);
    put(&fx.l(0, "top"), "l0");
    put(&fx.l(1, "top"), "l1");
    put(&fx.l(1, "bottom"), "l1");
    let work = fx.root.join("work");
    fs::create_dir(&work).unwrap();
    let opts = fx.overlay_opts(&work);
    let args = vec!["-o".to_string(), opts, s(&fx.mnt)];
    let m = fx.mount_args(args.clone(), fx.lowers.clone());
    assert_eq!(names(&fx.mnt), strs(&["bottom", "top"]));
    assert_eq!(
        read(&fx.m("top")),
        "l0",
        "the first lowerdir is the topmost"
    );
    fs::write(fx.m("new"), "n").unwrap();
    fs::remove_file(fx.m("bottom")).unwrap();
    assert_eq!(read(&fx.u("new")), "n");
    assert_regular_file(&fx.u(".wh.bottom"));
    m.unmount();
    assert_eq!(
        names(&fx.upper),
        strs(&[".wh.bottom", "new"]),
        "workdir= is used instead of a work dir in the upper"
    );
    assert!(work.is_dir());

    let m = fx.mount_args(args, fx.lowers.clone());
    assert_eq!(names(&fx.mnt), strs(&["new", "top"]));
    drop(m);
}

#[test]
fn timeout_options() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "f");
    let m = fx.mount(&["-o", "timeout=5,negative_timeout=5"]);
    assert_errno(fs::metadata(fx.m("x")), libc::ENOENT, "stat x");
    fs::write(fx.m("x"), "x").unwrap();
    assert_eq!(
        read(&fx.m("x")),
        "x",
        "a cached negative entry is replaced by a create"
    );
    fs::remove_file(fx.m("f")).unwrap();
    assert_gone(&fx.m("f"));
    assert_eq!(names(&fx.mnt), strs(&["x"]));
    drop(m);
}
