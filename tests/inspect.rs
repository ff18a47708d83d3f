//! The inspection commands on real mounts: which, diff, export, commit, layers, trace, and
//! the control socket they talk to.
mod common;
use common::*;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `unionmount ARGS...` (an inspection command) run to completion.
fn tool(args: &[&str]) -> Out {
    let o = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run unionmount");
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(args: &[&str]) -> String {
    let o = tool(args);
    assert!(
        o.ok,
        "unionmount {args:?} failed:\n{}{}",
        o.stdout, o.stderr
    );
    o.stdout
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The seed's base layer: `1`, `app/hello.txt`, `usr/share/man/a`, `etc/hosts`.
fn seed(fx: &Fixture) {
    put(&fx.l(0, "1"), "I am base file 1\n");
    put(&fx.l(0, "app/hello.txt"), "hello from base\n");
    put(&fx.l(0, "usr/share/man/a"), "man\n");
    put(&fx.l(0, "etc/hosts"), &"h".repeat(3174));
}

/// The seed's changes, through the mount.
fn change(fx: &Fixture) {
    put(&fx.m("d"), "new file\n");
    put(&fx.m("1"), "OVERRIDDEN\n");
    fs::remove_file(fx.m("app/hello.txt")).unwrap();
    fs::remove_dir_all(fx.m("usr/share/man")).unwrap();
    mkdir_p(&fx.m("usr/share/man"));
    put(&fx.m("usr/share/man/b"), "new man\n");
    fs::hard_link(fx.m("d"), fx.m("d2")).unwrap();
    xattr::set(fx.m("d"), "user.comment", b"hi").unwrap();
}

const DIFF: &str = "\
C /1
C /app
D /app/hello.txt
A /d
A /d2
C /usr
C /usr/share
C /usr/share/man
D /usr/share/man/a
A /usr/share/man/b
";

#[test]
fn which_names_the_branch_and_what_it_hides() {
    let fx = Fixture::new(1);
    seed(&fx);
    let m = fx.mount(&[]);
    change(&fx);
    let out = ok(&[
        "which",
        &s(&fx.m("1")),
        &s(&fx.m("d")),
        &s(&fx.m("app/hello.txt")),
        &s(&fx.m("usr/share/man")),
        &s(&fx.m("etc/hosts")),
        &s(&fx.m("app")),
    ]);
    let blocks: Vec<&str> = out.split("\n\n").collect();
    assert_eq!(blocks.len(), 6, "{out}");
    assert!(
        blocks[0].contains("served by   upper (branch 0, RW"),
        "{out}"
    );
    assert!(blocks[0].contains("copied up"), "{out}");
    assert!(
        blocks[0].contains(&format!("hides       {} (file, lower0)", s(&fx.l(0, "1")))),
        "{out}"
    );
    assert!(blocks[1].contains("created in the upper"), "{out}");
    assert!(!blocks[1].contains("hides"), "{out}");
    assert!(blocks[2].contains("whited out  in upper"), "{out}");
    assert!(blocks[2].contains(&s(&fx.u("app/.wh.hello.txt"))), "{out}");
    assert!(blocks[3].contains("opaque directory"), "{out}");
    assert!(blocks[3].contains(&s(&fx.l(0, "usr/share/man"))), "{out}");
    assert!(
        blocks[4].contains("served by   lower0 (branch 1, RO"),
        "{out}"
    );
    assert!(blocks[4].contains("not copied up"), "{out}");
    assert!(blocks[5].contains("merged from upper, lower0"), "{out}");
    // A name that is nowhere fails, the others still answer.
    let o = tool(&["which", &s(&fx.m("nothing")), &s(&fx.m("1"))]);
    assert!(!o.ok && o.stderr.contains("no such file"), "{}", o.stderr);
    assert!(o.stdout.contains("copied up"), "{}", o.stdout);
    // The short form: a computed xattr, never listed (cp -a and tar do not copy it).
    let v = xattr::get(fx.m("etc/hosts"), "user.unionmount.layer")
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8(v).unwrap(),
        format!("1 {}", s(&fx.lowers[0]))
    );
    let listed: Vec<_> = xattr::list(fx.m("d")).unwrap().collect();
    assert_eq!(listed, ["user.comment"]);
    drop(m);
    let o = tool(&["which", &s(&fx.m("1"))]);
    assert!(
        !o.ok && o.stderr.contains("not inside a unionmount mount"),
        "{}",
        o.stderr
    );
}

#[test]
fn control_socket_is_private_and_outside_the_tree() {
    let fx = Fixture::new(1);
    seed(&fx);
    let m = fx.mount(&[]);
    let sock = control_socket(&fx.mnt);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let md = fs::symlink_metadata(&sock).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let dir = fs::metadata(sock.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    assert!(!sock.starts_with(&fx.mnt) && !sock.starts_with(&fx.upper));
    assert_eq!(names(&fx.mnt), ["1", "app", "etc", "usr"]);
    assert!(upper_names(&fx.upper).is_empty());
    m.unmount();
    assert!(!sock.exists(), "socket left behind at unmount");
}

/// A new mount whose device number a gone mount had (the kernel gives the lowest free one),
/// made while that mount's daemon is still exiting (its control socket still answers), gets
/// the control socket once the old one is gone. Before, it gave up at once: `which`,
/// `layers` and `commit` could not reach the new mount. The old daemon is played by a
/// listener on the socket path that closes after half a second.
#[test]
fn a_mount_waits_for_its_predecessors_control_socket_to_go() {
    let fx = Fixture::new(1);
    seed(&fx);
    let m = fx.mount(&[]);
    let old_dev = visible_unionmount(&fx.mnt).unwrap().dev;
    m.unmount();
    let sock = unionmount::inspect::control::socket_path(old_dev);
    fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let _ = fs::remove_file(&sock);
    let old = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let exiting = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(old); // the process exits; its socket file stays
    });
    let _m = fx.mount(&[]);
    if visible_unionmount(&fx.mnt).unwrap().dev != old_dev {
        eprintln!("note: the new mount got another device number; nothing to wait for");
    }
    exiting.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut o = tool(&["layers", &s(&fx.mnt)]);
    while !o.ok && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        o = tool(&["layers", &s(&fx.mnt)]);
    }
    assert!(
        o.ok && o.stdout.contains("lower0"),
        "{}{}",
        o.stdout,
        o.stderr
    );
}

#[test]
fn layers_reports_stack_counters_and_kernel() {
    let fx = Fixture::new(1);
    seed(&fx);
    let _m = fx.mount(&["-o", "timeout=0.5"]);
    change(&fx);
    let out = ok(&["layers", &s(&fx.mnt)]);
    let row = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} row:\n{out}"))
            .to_string()
    };
    assert!(row("upper").contains(" RW "), "{out}");
    assert!(row("lower0").contains(" RO "), "{out}");
    assert_eq!(row("lower0").split_whitespace().nth(3), Some("4"), "{out}");
    assert!(out.contains("copy-ups"), "{out}");
    assert!(
        out.contains("2 whiteouts") || out.contains("3 whiteouts"),
        "{out}"
    );
    assert!(out.contains("1 opaque dirs"), "{out}");
    assert!(out.contains("kernel: FUSE"), "{out}");
    assert!(out.contains("entry/attr TTL 0.5s"), "{out}");
    let o = tool(&["layers", &s(&fx.m("app"))]);
    assert!(
        !o.ok && o.stderr.contains("give the mount point"),
        "{}",
        o.stderr
    );
}

#[test]
fn trace_streams_events_with_branch_names() {
    let fx = Fixture::new(1);
    seed(&fx);
    let _m = fx.mount(&[]);
    let mut child = Command::new(BIN)
        .args(["trace", &s(&fx.mnt)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // The subscription is live once the daemon answered; give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    fs::OpenOptions::new()
        .append(true)
        .open(fx.m("etc/hosts"))
        .unwrap();
    fs::remove_file(fx.m("app/hello.txt")).unwrap();
    fs::remove_dir_all(fx.m("usr/share/man")).unwrap();
    mkdir_p(&fx.m("usr/share/man"));
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lines.iter().any(|l: &String| l.starts_with("opaque")) && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = lines.join("\n");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("copy-up etc/hosts from lower0 (3.1 KiB, ")),
        "{all}"
    );
    assert!(lines.iter().any(|l| l == "whiteout app/hello.txt"), "{all}");
    assert!(lines.iter().any(|l| l == "opaque usr/share/man"), "{all}");
}

#[test]
fn trace_option_prints_events_on_stderr() {
    let fx = Fixture::new(1);
    seed(&fx);
    let m = fx.mount(&["-o", "trace"]);
    fs::remove_file(fx.m("app/hello.txt")).unwrap();
    m.unmount();
    assert!(
        fx.log_tail().contains("whiteout app/hello.txt"),
        "{}",
        fx.log_tail()
    );
}

#[test]
fn diff_lists_changes_from_the_mount_or_the_upper() {
    let fx = Fixture::new(1);
    seed(&fx);
    let m = fx.mount(&[]);
    change(&fx);
    assert_eq!(ok(&["diff", &s(&fx.mnt)]), DIFF);
    let json = ok(&["diff", &s(&fx.mnt), "--json"]);
    assert!(
        json.trim_start().starts_with('[') && json.trim_end().ends_with(']'),
        "{json}"
    );
    assert!(
        json.contains(r#"{"kind": "D", "path": "/app/hello.txt", "type": "whiteout"}"#),
        "{json}"
    );
    assert!(
        json.contains(r#""path": "/usr/share/man", "type": "dir", "opaque": true"#),
        "{json}"
    );
    drop(m);
    // From the upper alone, with the lower named: the same.
    assert_eq!(
        ok(&["diff", &s(&fx.upper), "--lower", &s(&fx.lowers[0])]),
        DIFF
    );
    // Without it: C from the copy-up origin xattr; what the opaque dir hid is unknown.
    let alone = ok(&["diff", &s(&fx.upper)]);
    assert_eq!(alone, DIFF.replace("D /usr/share/man/a\n", ""));
}

#[test]
fn diff_reads_every_whiteout_format() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "a"), "a");
    put(&fx.l(0, "b"), "b");
    put(&fx.l(0, "x/c"), "c");
    put(&fx.l(0, "o/old"), "old");
    mknod_whiteout(&fx.u("a"));
    put(&fx.u(".wh.b"), "");
    mkdir_p(&fx.u("x"));
    xattr::set(fx.u("x"), "trusted.overlay.opaque", b"x").unwrap();
    put(&fx.u("x/c"), "");
    xattr::set(fx.u("x/c"), "trusted.overlay.whiteout", b"y").unwrap();
    mkdir_p(&fx.u("o"));
    xattr::set(fx.u("o"), "trusted.overlay.opaque", b"y").unwrap();
    put(&fx.u("o/new"), "new");
    mkdir_p(&fx.u(WORKDIR));
    let lower = s(&fx.lowers[0]);
    assert_eq!(
        ok(&["diff", &s(&fx.upper), "--lower", &lower]),
        "D /a\nD /b\nC /o\nA /o/new\nD /o/old\nC /x\nD /x/c\n"
    );
    // A mount writing overlay-format whiteouts reads the same.
    let m = fx.mount(&["-o", "whiteout=overlay"]);
    fs::remove_file(fx.m("o/new")).unwrap();
    assert_eq!(
        ok(&["diff", &s(&fx.mnt)]),
        "D /a\nD /b\nC /o\nD /o/old\nC /x\nD /x/c\n"
    );
    drop(m);
}

fn tar_list(tar: &Path) -> String {
    let o = Command::new("tar").arg("-tvf").arg(tar).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Extract `tar` into a new directory `into` with GNU tar, `flags` first.
fn untar(tar: &Path, into: &Path, flags: &[&str]) {
    mkdir_p(into);
    let st = Command::new("tar")
        .args(flags)
        .arg("-xpf")
        .arg(tar)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(st.success(), "tar -x {}", tar.display());
}

#[test]
fn export_writes_an_oci_layer() {
    let fx = Fixture::new(1);
    seed(&fx);
    put(&fx.l(0, "meta.txt"), "data stays in the lower\n");
    let m = fx.mount(&[]);
    change(&fx);
    // A metadata-only copy-up: the layer must carry the lower's data.
    fs::set_permissions(fx.m("meta.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("1", fx.m("sym")).unwrap();
    fs::set_permissions(fx.m("d"), fs::Permissions::from_mode(0o640)).unwrap();
    chown(&fx.m("1"), 1234, 5678);
    fs::rename(fx.m("etc"), fx.m("etc2")).unwrap();
    let tar = fx.root.join("layer.tar");
    let digest = ok(&["export", &s(&fx.mnt), "--tar", &s(&tar), "--digest"]);
    let sum = Command::new("sha256sum").arg(&tar).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(
        digest.trim(),
        format!("sha256:{}", sum.split_whitespace().next().unwrap())
    );
    let list = tar_list(&tar);
    for want in [
        "app/.wh.hello.txt",
        "usr/share/man/.wh..wh..opq",
        "d2 link to d",
        "sym -> 1",
        ".wh.etc",
        "etc2/.wh..wh..opq",
        "etc2/hosts",
        "1234/5678",
    ] {
        assert!(list.contains(want), "no {want} in\n{list}");
    }
    assert!(
        !list.contains(".wh..wh..work") && !list.contains("usr/share/man/.wh.a"),
        "{list}"
    );
    // The same upper gives the same bytes.
    let again = ok(&["export", &s(&fx.mnt), "--tar", "-", "--digest"]);
    assert!(!again.is_empty());
    let tar2 = fx.root.join("again.tar");
    assert_eq!(
        ok(&["export", &s(&fx.mnt), "--tar", &s(&tar2), "--digest"]),
        digest
    );
    drop(m);
    // GNU tar extracts it with owners, modes, xattrs and the hard link.
    let x = fx.root.join("x");
    untar(
        &tar,
        &x,
        &["--xattrs", "--xattrs-include=*", "--same-owner"],
    );
    assert_eq!(read(&x.join("etc2/hosts")), "h".repeat(3174));
    assert_eq!(read(&x.join("meta.txt")), "data stays in the lower\n");
    assert_eq!(mode_of(&x.join("meta.txt")) & 0o7777, 0o600);
    assert_eq!(
        xattr::get(x.join("d"), "user.comment").unwrap().unwrap(),
        b"hi"
    );
    assert_eq!(mode_of(&x.join("d")) & 0o7777, 0o640);
    assert_eq!(fs::metadata(x.join("1")).unwrap().uid(), 1234);
    assert_eq!(ino(&x.join("d")), ino(&x.join("d2")));
    // Tar keeps whole seconds of mtime.
    let secs = |mut e: Entry| {
        e.mtime.1 = 0;
        e
    };
    for f in ["1", "d", "sym", "usr/share/man/b"] {
        assert_eq!(secs(entry(&x.join(f))), secs(entry(&fx.u(f))), "{f}");
    }
    // From the upper alone a moved directory cannot be complete: refused, with the way out.
    let o = tool(&[
        "export",
        &s(&fx.upper),
        "--tar",
        &s(&fx.root.join("no.tar")),
    ]);
    assert!(!o.ok && o.stderr.contains("--lower"), "{}", o.stderr);
    let with_lower = ok(&[
        "export",
        &s(&fx.upper),
        "--lower",
        &s(&fx.lowers[0]),
        "--tar",
        &s(&fx.root.join("l.tar")),
        "--digest",
    ]);
    assert_eq!(
        with_lower, digest,
        "upper + --lower gives the mount's layer"
    );
}

#[test]
fn commit_makes_a_layer_and_remount_stacks_it() {
    let fx = Fixture::new(1);
    seed(&fx);
    let m = fx.mount(&[]);
    change(&fx);
    let before = snapshot(&fx.mnt);
    let layer = fx.root.join("layer1");
    let out = ok(&["commit", &s(&fx.mnt), "--to", &s(&layer)]);
    assert!(out.contains("3 added, 5 changed, 2 deleted"), "{out}");
    assert!(lexists(&layer.join("app/.wh.hello.txt")));
    assert!(lexists(&layer.join("usr/share/man/.wh..wh..opq")));
    assert_eq!(ino(&layer.join("d")), ino(&layer.join("d2")));
    assert_eq!(entry(&layer.join("1")), entry(&fx.u("1")));
    // The mount went on; a non-empty target is refused.
    assert_eq!(read(&fx.m("1")), "OVERRIDDEN\n");
    let o = tool(&["commit", &s(&fx.mnt), "--to", &s(&layer)]);
    assert!(!o.ok && o.stderr.contains("not empty"), "{}", o.stderr);
    // --remount is refused while a file is open, and nothing changes.
    let layer2 = fx.root.join("layer2");
    let held = fs::File::open(fx.m("d")).unwrap();
    let o = tool(&["commit", &s(&fx.mnt), "--to", &s(&layer2), "--remount"]);
    assert!(
        !o.ok && o.stderr.contains("busy") && o.stderr.contains("nothing was changed"),
        "{}",
        o.stderr
    );
    assert!(!lexists(&layer2));
    drop(held);
    let out = ok(&["commit", &s(&fx.mnt), "--to", &s(&layer2), "--remount"]);
    assert!(out.contains("remounted"), "{out}");
    // The same tree now comes from the new stack.
    let after = snapshot(&fx.mnt);
    let strip = |mut s: Snapshot| {
        s.remove("");
        s
    };
    let (before, after) = (strip(before), strip(after));
    assert!(before == after, "{}", snapshot_diff(&before, &after));
    assert_eq!(upper_names(&fx.upper), Vec::<String>::new());
    let layers = ok(&["layers", &s(&fx.mnt)]);
    assert!(
        layers.contains("layer2") && layers.contains("lower0"),
        "{layers}"
    );
    put(&fx.m("new"), "x");
    assert_eq!(ok(&["diff", &s(&fx.mnt)]), "A /new\n");
    // The guard sees its daemon exited cleanly (at the commit), and unmounts the new mount.
    drop(m);
}

#[test]
fn help_has_examples() {
    for t in ["which", "diff", "commit", "export", "layers", "trace"] {
        let out = ok(&[t, "--help"]);
        assert!(out.contains("Example"), "{t}: {out}");
        assert!(out.contains(&format!("unionmount {t} ")), "{t}: {out}");
    }
    let out = ok(&["--help"]);
    assert!(out.contains("unionmount diff"), "{out}");
}

/// `export` of an upper written by kernel overlayfs with `metacopy=on`: a marked file's
/// layer entry carries the lower's data. Only our own origin record was asked, so the
/// layer carried the marked copy's zeros.
#[test]
fn export_of_a_kernel_metacopy_upper_carries_the_data() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "the data is in the lower\n");
    let work = fx.root.join("kwork");
    mkdir_p(&work);
    let opts = format!(
        "metacopy=on,lowerdir={},upperdir={},workdir={}",
        fx.lowers[0].display(),
        fx.upper.display(),
        work.display()
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&fx.mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount -t overlay -o {opts}");
    let chmod = fs::set_permissions(fx.m("f"), fs::Permissions::from_mode(0o600));
    assert!(
        Command::new("umount")
            .arg(&fx.mnt)
            .status()
            .unwrap()
            .success()
    );
    chmod.unwrap();
    assert!(
        xattr::get(fx.u("f"), "trusted.overlay.metacopy")
            .unwrap()
            .is_some()
    );
    let tar = fx.root.join("layer.tar");
    ok(&[
        "export",
        &s(&fx.upper),
        "--lower",
        &s(&fx.lowers[0]),
        "--tar",
        &s(&tar),
    ]);
    let x = fx.root.join("x");
    untar(&tar, &x, &[]);
    assert_eq!(read(&x.join("f")), "the data is in the lower\n");
    assert_eq!(mode_of(&x.join("f")) & 0o7777, 0o600);
}
