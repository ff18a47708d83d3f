//! Killing privileges (FUSE_HANDLE_KILLPRIV_V2): a write, truncate, chown, fallocate or `O_TRUNC` open
//! through the mount strips set-id bits and file capabilities exactly as the same steps do
//! on a plain directory of the local filesystem, for a caller without CAP_FSETID (the union
//! kills them on the upper copy: the daemon's own writes to the branch keep them) and for
//! root, whose set-id bits stay. Lower files (copied up by the step) and upper files; with
//! FUSE passthrough (a privileged daemon) and without (`noatime` turns it off); and a file
//! given set-id bits while the user has it open for writing (passthrough, if on, was
//! chosen at open).
mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The unprivileged caller (gid the same, no supplementary groups): owner of every file.
const USER: u32 = 65534;

/// (file, mode, a file capability set by root beforehand). `w*` are appended to, `t*`
/// truncated, `c*` chgrp'd to the owner's own group, `o*` opened with `O_TRUNC`, `f*`
/// grown with fallocate. `*2` lacks
/// group-execute: its set-group-ID bit marks mandatory locking and survives a write.
const FILES: &[(&str, u32, bool)] = &[
    ("w6", 0o6755, false),
    ("w2", 0o2745, false),
    ("wc", 0o755, true),
    ("t6", 0o6755, false),
    ("t2", 0o2745, false),
    ("tc", 0o755, true),
    ("c6", 0o6755, false),
    ("c2", 0o2755, false),
    ("cc", 0o755, true),
    ("o6", 0o6755, false),
    ("o2", 0o2745, false),
    ("f6", 0o6755, false),
];

/// Where a file starts in the mount: `L` in the lower (the step copies it up), `U` in the
/// upper. Who takes the step: `u` the user, `r` root.
const PLACES: [&str; 2] = ["L", "U"];
const ACTORS: [&str; 2] = ["u", "r"];

fn name(place: &str, actor: &str, file: &str) -> String {
    format!("{place}{actor}{file}")
}

/// Make every test file in `dir` for `place`: "data", owned by USER, its mode and capability.
fn make_files(dir: &Path, place: &str) {
    for actor in ACTORS {
        for &(f, mode, cap) in FILES {
            let p = dir.join(name(place, actor, f));
            put(&p, "data");
            chown(&p, USER, USER);
            set_mode(&p, mode);
            if cap {
                let out = run(Command::new("setcap").arg("cap_net_raw+ep").arg(&p));
                assert!(out.ok(), "setcap {}: {}", p.display(), out.stderr);
            }
        }
    }
}

/// The steps, on every file of `actor` in the current directory.
fn steps(actor: &str) -> String {
    let mut s = String::from("set -e\n");
    for place in PLACES {
        let n = |f: &str| name(place, actor, f);
        for f in ["w6", "w2", "wc"] {
            s += &format!("printf x >> {}\n", n(f));
        }
        s += &format!("truncate -s 1 {} {} {}\n", n("t6"), n("t2"), n("tc"));
        s += &format!("chgrp {USER} {} {} {}\n", n("c6"), n("c2"), n("cc"));
        for f in ["o6", "o2"] {
            s += &format!(": > {}\n", n(f));
        }
        s += &format!("fallocate -l 8192 {}\n", n("f6"));
    }
    s
}

/// Take the steps in `dir`: the user's files as USER, root's as root.
fn take_steps(dir: &Path) {
    let (rc, err) = sh_as(USER, dir, &steps("u"));
    assert_eq!(rc, 0, "steps as {USER} in {}: {err}", dir.display());
    let out = run(Command::new("sh")
        .args(["-c", &steps("r")])
        .current_dir(dir));
    assert!(
        out.ok(),
        "steps as root in {}: {}",
        dir.display(),
        out.stderr
    );
}

/// Every test file's mode as `stat -c %a` shows it (a statx asking for the mode alone: a
/// stale attribute cache would answer it) and whether it has a file capability.
fn state(dir: &Path) -> BTreeMap<String, (String, bool)> {
    let mut names = Vec::new();
    for place in PLACES {
        for actor in ACTORS {
            for &(f, _, _) in FILES {
                names.push(name(place, actor, f));
            }
        }
    }
    let modes = run(Command::new("stat")
        .arg("-c")
        .arg("%n %a")
        .args(&names)
        .current_dir(dir));
    assert!(modes.ok(), "stat in {}: {}", dir.display(), modes.stderr);
    let caps = run(Command::new("getcap").args(&names).current_dir(dir));
    assert!(caps.ok(), "getcap in {}: {}", dir.display(), caps.stderr);
    let capped: Vec<&str> = caps
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    modes
        .stdout
        .lines()
        .map(|l| {
            let (n, m) = l.split_once(' ').unwrap();
            (n.to_string(), (m.to_string(), capped.contains(&n)))
        })
        .collect()
}

/// What the steps do on the local filesystem, spelled out, so the comparison below is
/// known to compare something: the user's steps strip, root's keep, except chown.
fn check_plain(plain: &BTreeMap<String, (String, bool)>) {
    let expect = [
        ("uw6", "755"),
        ("uw2", "2745"),
        ("ut6", "755"),
        ("ut2", "2745"),
        ("uc6", "755"),
        ("uc2", "755"),
        ("uo6", "755"),
        ("uo2", "2745"),
        ("uf6", "755"),
        ("rf6", "6755"),
        ("rw6", "6755"),
        ("rt6", "6755"),
        ("ro6", "6755"),
        ("rc6", "755"),
    ];
    for place in PLACES {
        for (n, mode) in expect {
            let n = format!("{place}{n}");
            assert_eq!(plain[&n].0, mode, "{n} on the local filesystem");
        }
        for n in ["uwc", "utc", "ucc", "rwc", "rtc", "rcc"] {
            let n = format!("{place}{n}");
            assert!(
                !plain[&n].1,
                "{n} keeps its capability on the local filesystem"
            );
        }
    }
}

fn same_as_local_filesystem(extra: &[&str]) {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root (setcap, another user)") else {
        return;
    };
    set_mode(&fx.root, 0o755);
    let plain = fx.root.join("plain");
    mkdir_p(&plain);
    for place in PLACES {
        make_files(&plain, place);
    }
    make_files(&fx.lowers[0], "L");
    make_files(&fx.upper, "U");
    let m = fx.mount(extra);

    take_steps(&plain);
    take_steps(&fx.mnt);
    let want = state(&plain);
    check_plain(&want);
    let got = state(&fx.mnt);
    for (n, w) in &want {
        assert_eq!(
            &got[n], w,
            "{n}: (mode, capability) through the mount vs local"
        );
    }
    // The bits are gone from the upper copy itself, not only from the kernel's view.
    let upper = state(&fx.upper);
    assert_eq!(upper, got, "upper copies vs the merged view");
    m.unmount();
}

#[test]
fn kill_privileges_as_on_the_local_filesystem_passthrough() {
    same_as_local_filesystem(&[]);
}

#[test]
fn kill_privileges_as_on_the_local_filesystem_through_the_daemon() {
    same_as_local_filesystem(&["-o", "noatime"]);
}

/// The user opens `name` in `dir` for appending, root makes it 06755, the user writes
/// through the descriptor opened before: the file's mode after. Two fifos order the steps
/// (a fifo's open blocks until the other side opens it).
fn bits_set_while_open(dir: &Path, sync: &Path, name: &str) -> String {
    let tag = format!("{name}-{}", dir.file_name().unwrap().to_string_lossy());
    let (opened, go) = (
        sync.join(format!("opened-{tag}")),
        sync.join(format!("go-{tag}")),
    );
    for f in [&opened, &go] {
        mkfifo(f, 0o666).unwrap();
        set_mode(f, 0o666);
    }
    let script = format!(
        "exec 3>> {name} && echo > {o} && read x < {g} && printf x >&3",
        o = opened.display(),
        g = go.display()
    );
    let mut child = as_user(USER)
        .args(["sh", "-c", &script])
        .current_dir(dir)
        .spawn()
        .unwrap();
    // Returns once the user has opened the file and written the fifo.
    let said = std::fs::read_to_string(&opened).unwrap();
    assert_eq!(said, "\n", "{name}: the user's signal");
    set_mode(&dir.join(name), 0o6755);
    std::fs::write(&go, "\n").unwrap();
    let status = wait_or_kill(&mut child, Duration::from_secs(10), name);
    assert!(status.success(), "{name}: the user's write failed");
    let out = run(Command::new("stat")
        .args(["-c", "%a", name])
        .current_dir(dir));
    out.stdout.trim().to_string()
}

fn set_while_open(extra: &[&str]) {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root (another user)") else {
        return;
    };
    set_mode(&fx.root, 0o755);
    let (plain, sync) = (fx.root.join("plain"), fx.root.join("sync"));
    mkdir_p(&plain);
    mkdir_p(&sync);
    set_mode(&sync, 0o777);
    for p in [
        plain.join("Lh"),
        plain.join("Uh"),
        fx.l(0, "Lh"),
        fx.u("Uh"),
    ] {
        put(&p, "data");
        chown(&p, USER, USER);
        set_mode(&p, 0o755);
    }
    let m = fx.mount(extra);
    for n in ["Lh", "Uh"] {
        let want = bits_set_while_open(&plain, &sync, n);
        assert_eq!(want, "755", "{n} on the local filesystem");
        assert_eq!(
            bits_set_while_open(&fx.mnt, &sync, n),
            want,
            "{n} through the mount"
        );
        assert_eq!(mode_of(&fx.u(n)), 0o755, "{n}: the upper copy");
    }
    for l in std::fs::read_to_string(&fx.log).unwrap().lines() {
        if l.contains("fuser::request") {}
    }
    m.unmount();
}

#[test]
fn bits_set_while_open_are_killed_passthrough() {
    set_while_open(&[]);
}

#[test]
fn bits_set_while_open_are_killed_through_the_daemon() {
    set_while_open(&["-o", "noatime"]);
}
