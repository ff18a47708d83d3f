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

/// The seed's base layer: `1`, `app/hello.txt`, `usr/share/man/a`, `etc/hosts`.
fn seed(fx: &Fixture) {
    put(&fx.l(0, "1"), "I am base file 1\n");
    put(&fx.l(0, "app/hello.txt"), "hello from base\n");
    put(&fx.l(0, "usr/share/man/a"), "man\n");
    put(&fx.l(0, "etc/hosts"), &"h".repeat(3174));
}

/// The seed's changes, through the mount.
fn change(fx: &Fixture) {
    demo_changes(fx);
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
    let out = tool_ok([
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
    let o = tool(["which", &s(&fx.m("nothing")), &s(&fx.m("1"))]);
    o.assert_fails_with("no such file");
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
    let o = tool(["which", &s(&fx.m("1"))]);
    o.assert_fails_with("not inside a unionmount mount");
}

#[test]
fn control_socket_is_private_and_outside_the_tree() {
    let fx = Fixture::new(1);
    seed(&fx);
    let m = fx.mount(&[]);
    let sock = control_socket(&fx.mnt);
    eventually(Duration::from_secs(5), || sock.exists());
    let md = fs::symlink_metadata(&sock).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let dir = fs::metadata(sock.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    assert!(!sock.starts_with(&fx.mnt) && !sock.starts_with(&fx.upper));
    assert_eq!(names(&fx.mnt), ["1", "app", "etc", "usr"]);
    assert!(upper_names(&fx.upper).is_empty());
    m.unmount();
    assert!(
        socket_gone(&sock, md.ino()),
        "socket left behind at unmount"
    );
}

/// A new mount that got the device number of a gone mount (the kernel gives the lowest
/// free one) takes over that mount's control socket at once, even while the old daemon
/// still answers on it (it may not have finished exiting): no live mount shares the number.
/// The old daemon is played by a listener on the socket path that stays open.
#[test]
fn a_new_mount_takes_the_socket_of_a_gone_mount_with_its_device_number() {
    let fx = Fixture::new(1);
    seed(&fx);
    let m = fx.mount(&[]);
    let old_dev = visible_unionmount(&fx.mnt).unwrap().dev;
    m.unmount();
    let sock = unionmount::inspect::control::socket_path(old_dev);
    fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let _ = fs::remove_file(&sock);
    let _old = Listener::bind(&sock, "ok 0:1\n".into());
    let _m = fx.mount(&[]);
    if visible_unionmount(&fx.mnt).unwrap().dev != old_dev {
        eprintln!("note: the new mount got another device number; nothing to take over");
    }
    let layers = tool_ok(["layers", &s(&fx.mnt)]);
    assert!(layers.contains(&s(&fx.upper)), "{layers}");
}

/// Right after a mount, its control socket path may still hold the socket of a daemon that
/// died without removing it (an earlier mount with the same device number), until the new
/// daemon binds its own: a command waits for that, rather than fail on the dead socket. The
/// moment is played by moving the live socket aside, a dead one in its place, for 300 ms.
#[test]
fn a_command_waits_out_a_dead_socket_left_at_the_path() {
    let fx = Fixture::new(1);
    seed(&fx);
    let _m = fx.mount(&[]);
    let sock = control_socket(&fx.mnt);
    eventually(Duration::from_secs(5), || sock.exists());
    let aside = sock.with_extension(format!("aside-{}", std::process::id()));
    fs::hard_link(&sock, &aside).unwrap();
    let dead = sock.with_extension(format!("dead-{}", std::process::id()));
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    fs::rename(&dead, &sock).unwrap();
    let refused = std::os::unix::net::UnixStream::connect(&sock).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        fs::rename(&aside, &sock).unwrap();
    });
    let layers = tool_ok(["layers", &s(&fx.mnt)]);
    back.join().unwrap();
    assert!(layers.contains(&s(&fx.upper)), "{layers}");
}

/// A listener on a control socket path that answers every request with `reply`; its
/// socket file is removed on drop (if it is still its own).
struct Listener {
    path: std::path::PathBuf,
    ino: u64,
}

impl Listener {
    fn bind(path: &Path, reply: String) -> Listener {
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        let ino = fs::symlink_metadata(path).unwrap().ino();
        std::thread::spawn(move || {
            use std::io::Write;
            for c in l.incoming() {
                let Ok(mut c) = c else { break };
                let mut req = String::new();
                let _ = BufReader::new(&c).read_line(&mut req);
                let _ = c.write_all(reply.as_bytes());
            }
        });
        Listener {
            path: path.to_path_buf(),
            ino,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[test]
fn layers_reports_stack_counters_and_kernel() {
    let fx = Fixture::new(1);
    seed(&fx);
    let _m = fx.mount(&["-o", "timeout=0.5"]);
    change(&fx);
    let out = tool_ok(["layers", &s(&fx.mnt)]);
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
    let o = tool(["layers", &s(&fx.m("app"))]);
    o.assert_fails_with("give the mount point");
}

#[test]
fn trace_streams_events_with_branch_names() {
    let fx = Fixture::new(1);
    seed(&fx);
    let _m = fx.mount(&[]);
    let mut child = unionmount(["trace", &s(&fx.mnt)])
        .stdout(Stdio::piped())
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
    assert_eq!(tool_ok(["diff", &s(&fx.mnt)]), DIFF);
    let json = tool_ok(["diff", &s(&fx.mnt), "--json"]);
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
        tool_ok(["diff", &s(&fx.upper), "--lower", &s(&fx.lowers[0])]),
        DIFF
    );
    // Without it: C from the copy-up origin xattr; what the opaque dir hid is unknown.
    let alone = tool_ok(["diff", &s(&fx.upper)]);
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
        tool_ok(["diff", &s(&fx.upper), "--lower", &lower]),
        "D /a\nD /b\nC /o\nA /o/new\nD /o/old\nC /x\nD /x/c\n"
    );
    // A mount writing overlay-format whiteouts reads the same.
    let m = fx.mount(&["-o", "whiteout=overlay"]);
    fs::remove_file(fx.m("o/new")).unwrap();
    assert_eq!(
        tool_ok(["diff", &s(&fx.mnt)]),
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
    let digest = tool_ok(["export", &s(&fx.mnt), "--tar", &s(&tar), "--digest"]);
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
    let again = tool_ok(["export", &s(&fx.mnt), "--tar", "-", "--digest"]);
    assert!(!again.is_empty());
    let tar2 = fx.root.join("again.tar");
    assert_eq!(
        tool_ok(["export", &s(&fx.mnt), "--tar", &s(&tar2), "--digest"]),
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
    let o = tool([
        "export",
        &s(&fx.upper),
        "--tar",
        &s(&fx.root.join("no.tar")),
    ]);
    o.assert_fails_with("--lower");
    let with_lower = tool_ok([
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
    let out = tool_ok(["commit", &s(&fx.mnt), "--to", &s(&layer)]);
    assert!(out.contains("3 added, 5 changed, 2 deleted"), "{out}");
    assert!(lexists(&layer.join("app/.wh.hello.txt")));
    assert!(lexists(&layer.join("usr/share/man/.wh..wh..opq")));
    assert_eq!(ino(&layer.join("d")), ino(&layer.join("d2")));
    assert_eq!(entry(&layer.join("1")), entry(&fx.u("1")));
    // The mount went on; a non-empty target is refused.
    assert_eq!(read(&fx.m("1")), "OVERRIDDEN\n");
    let o = tool(["commit", &s(&fx.mnt), "--to", &s(&layer)]);
    o.assert_fails_with("not empty");
    // --remount is refused while a file is open, and nothing changes.
    let layer2 = fx.root.join("layer2");
    let held = fs::File::open(fx.m("d")).unwrap();
    let o = tool(["commit", &s(&fx.mnt), "--to", &s(&layer2), "--remount"]);
    assert!(
        !o.ok() && o.stderr.contains("busy") && o.stderr.contains("nothing was changed"),
        "{}",
        o.stderr
    );
    assert!(!lexists(&layer2));
    drop(held);
    let out = tool_ok(["commit", &s(&fx.mnt), "--to", &s(&layer2), "--remount"]);
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
    let layers = tool_ok(["layers", &s(&fx.mnt)]);
    assert!(
        layers.contains("layer2") && layers.contains("lower0"),
        "{layers}"
    );
    put(&fx.m("new"), "x");
    assert_eq!(tool_ok(["diff", &s(&fx.mnt)]), "A /new\n");
    // The guard sees its daemon exited cleanly (at the commit), and unmounts the new mount.
    drop(m);
}

#[test]
fn help_has_examples() {
    for t in ["which", "diff", "commit", "export", "layers", "trace"] {
        let out = tool_ok([t, "--help"]);
        assert!(out.contains("Example"), "{t}: {out}");
        assert!(out.contains(&format!("unionmount {t} ")), "{t}: {out}");
    }
    let out = tool_ok(["--help"]);
    assert!(out.contains("unionmount diff"), "{out}");
}

/// `export` of an upper written by kernel overlayfs with `metacopy=on`: a marked file's
/// layer entry carries the lower's data. Only our own origin record was asked, so the
/// layer carried the marked copy's zeros.
#[test]
fn export_of_a_kernel_metacopy_upper_carries_the_data() {
    let Some(fx) = Fixture::as_root(1, "skipped: needs root") else {
        return;
    };
    put(&fx.l(0, "f"), "the data is in the lower\n");
    let k = fx.kernel_overlay("metacopy=on,");
    let chmod = fs::set_permissions(fx.m("f"), fs::Permissions::from_mode(0o600));
    k.unmount();
    chmod.unwrap();
    assert!(
        xattr::get(fx.u("f"), "trusted.overlay.metacopy")
            .unwrap()
            .is_some()
    );
    let tar = fx.root.join("layer.tar");
    tool_ok([
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

// =============================================================================================
// One daemon per mount point: the tools reach the mount visible at the path now
// =============================================================================================

/// Two mounts stacked on one mount point (`-o stack`): every tool answers for the top one,
/// the one the path shows. Before, the top mount found the control socket taken by the one
/// below, and `which` said a file of the top did not exist while `layers` named the upper
/// below. One unmount takes off the top; the tools then answer for the mount below.
#[test]
fn tools_answer_for_the_top_of_stacked_mounts() {
    let below = Fixture::new(1);
    seed(&below);
    let top = Fixture::new(1);
    put(&top.l(0, "top-only"), "t\n");
    let mnt = below.mnt.clone();
    let _mb = below.mount(&[]);
    let mt = top.mount_on_top(&mnt, &[]);
    let out = tool_ok(["which", &s(&mnt.join("top-only"))]);
    assert!(out.contains(&s(&top.l(0, "top-only"))), "{out}");
    let o = tool(["which", &s(&mnt.join("1"))]);
    o.assert_fails_with("no such file");
    let layers = tool_ok(["layers", &s(&mnt)]);
    assert!(
        layers.contains(&s(&top.upper)) && !layers.contains(&s(&below.upper)),
        "{layers}"
    );
    put(&mnt.join("new"), "x");
    assert_eq!(read(&top.u("new")), "x");
    assert_eq!(tool_ok(["diff", &s(&mnt)]), "A /new\n");
    let tree = tool_ok(["tree", &s(&mnt), "--color", "never"]);
    assert!(
        tree.contains("top-only") && !tree.contains("hello"),
        "{tree}"
    );
    let layer = top.root.join("layer1");
    let out = tool_ok(["commit", &s(&mnt), "--to", &s(&layer)]);
    assert!(out.contains(&s(&top.upper)), "{out}");
    assert_eq!(read(&layer.join("new")), "x");
    // --remount mounts on top of the mount below again (the options keep `stack`).
    let layer2 = top.root.join("layer2");
    let out = tool_ok(["commit", &s(&mnt), "--to", &s(&layer2), "--remount"]);
    assert!(out.contains("stack"), "{out}");
    let layers = tool_ok(["layers", &s(&mnt)]);
    assert!(
        layers.contains(&s(&layer2)) && layers.contains(&s(&top.upper)),
        "{layers}"
    );
    assert_eq!(read(&mnt.join("new")), "x");
    // The guard takes the remounted top off; then the mount below answers.
    mt.unmount();
    let layers = tool_ok(["layers", &s(&mnt)]);
    assert!(layers.contains(&s(&below.upper)), "{layers}");
    assert_eq!(read(&mnt.join("1")), "I am base file 1\n");
}

/// A unionmount mount covered by another filesystem, on its mount point or on a directory
/// inside it, is not asked about what it does not serve: each tool says what covers it and
/// changes nothing. Before, `which` answered for a path the tmpfs on top serves.
#[test]
fn a_covered_unionmount_mount_is_not_asked() {
    let Some(fx) = Fixture::as_root(1, "skipped: mounting a tmpfs needs root") else {
        return;
    };
    seed(&fx);
    let _m = fx.mount(&[]);
    let tmpfs = |dir: &Path| KernelMount::new(&["-t", "tmpfs", "scratch"], dir);
    let t = tmpfs(&fx.m("app"));
    let o = tool(["which", &s(&fx.m("app/hello.txt"))]);
    let covers = format!(
        "scratch on {} type tmpfs covers the unionmount mount",
        s(&fx.m("app"))
    );
    o.assert_fails_with(&covers);
    assert!(tool_ok(["which", &s(&fx.m("1"))]).contains("lower0"));
    t.unmount();

    let t = tmpfs(&fx.mnt);
    let layer = fx.root.join("layer");
    let tar = fx.root.join("layer.tar");
    let covers = format!(
        "scratch on {} type tmpfs covers the unionmount mount",
        s(&fx.mnt)
    );
    for args in [
        vec!["layers", &s(&fx.mnt)],
        vec!["which", &s(&fx.m("1"))],
        vec!["trace", &s(&fx.mnt)],
        vec!["tree", &s(&fx.mnt)],
        vec!["diff", &s(&fx.mnt)],
        vec!["export", &s(&fx.mnt), "--tar", &s(&tar)],
        vec!["commit", &s(&fx.mnt), "--to", &s(&layer), "--remount"],
    ]
    .iter()
    .map(|v| v.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = tool(&args);
        assert!(
            !o.ok() && o.stderr.contains(&covers),
            "{args:?}: {}",
            o.stderr
        );
    }
    assert!(!lexists(&layer) && !lexists(&tar));
    t.unmount();
    let layers = tool_ok(["layers", &s(&fx.mnt)]);
    assert!(layers.contains(&s(&fx.upper)), "{layers}");
}

/// A process in a private mount namespace that holds a copy of the mount on `mnt`. It
/// unmounts its copies of every other unionmount mount at once, so the daemons of other
/// tests running meanwhile still exit at their unmount. Killed on drop, which ends the
/// namespace and its copy.
struct Holder(std::process::Child);

impl Holder {
    fn new(mnt: &Path) -> Option<Holder> {
        if !is_root() {
            eprintln!("skipped: unshare --mount needs root");
            return None;
        }
        let script = format!(
            "awk '$3 == \"fuse.unionmount\" && $2 != \"{}\" {{print $2}}' /proc/self/mounts \
             | while read -r m; do umount -l \"$m\"; done; echo ready; exec sleep 1000",
            s(mnt)
        );
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let holder = Holder(child);
        if line.trim() != "ready" {
            eprintln!("skipped: unshare --mount is not available here");
            return None;
        }
        Some(holder)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The socket file at `path` with inode `ino` is gone (another mount that got the same
/// device number since may have its own socket there).
fn socket_gone(path: &Path, ino: u64) -> bool {
    fs::symlink_metadata(path).map_or(true, |m| m.ino() != ino)
}

fn unmount_here(mnt: &Path) {
    assert!(succeeds("umount", [mnt]), "umount {}", mnt.display());
}

fn sigterm(pid: u32) {
    assert!(
        succeeds("kill", ["-TERM", &pid.to_string()]),
        "kill -TERM {pid}"
    );
}

/// A daemon whose mount another mount namespace still holds lives on after `umount` here,
/// but its socket is never answered here, a new mount at that place answers for itself,
/// and SIGTERM ends the old daemon within seconds, removing its socket and leaving the new
/// mount alone. Before, the new mount found the socket taken (the tools reached the old
/// stack) and the old daemon ignored SIGTERM.
#[test]
fn sigterm_ends_a_daemon_whose_mount_another_namespace_holds() {
    let fx = Fixture::new(1);
    seed(&fx);
    let mut old = fx.mount(&[]);
    let old_sock = control_socket(&fx.mnt);
    let old_ino = fs::symlink_metadata(&old_sock).unwrap().ino();
    let Some(holder) = Holder::new(&fx.mnt) else {
        return;
    };
    unmount_here(&fx.mnt);
    assert!(
        old.wait_exit(Duration::from_millis(500)).is_none(),
        "the daemon exited while another namespace used its mount"
    );
    assert!(old_sock.exists());
    let o = tool(["layers", &s(&fx.mnt)]);
    o.assert_fails_with("not inside a unionmount mount");

    let fx2 = Fixture::new(1);
    put(&fx2.l(0, "new-only"), "n\n");
    let args = vec![fx2.spec(), s(&fx.mnt)];
    let new = Mount::start(args, &fx.mnt, &fx2.log, fx2.lowers.clone());
    let layers = tool_ok(["layers", &s(&fx.mnt)]);
    assert!(
        layers.contains(&s(&fx2.upper)) && !layers.contains(&s(&fx.upper)),
        "{layers}"
    );
    let out = tool_ok(["which", &s(&fx.m("new-only"))]);
    assert!(out.contains(&s(&fx2.l(0, "new-only"))), "{out}");

    sigterm(old.pid());
    let st = old.wait_exit(Duration::from_secs(5));
    assert!(
        st.is_some_and(|st| st.success()),
        "{st:?} 5 s after SIGTERM\n{}",
        fx.log_tail()
    );
    assert!(
        socket_gone(&old_sock, old_ino),
        "{} left behind",
        old_sock.display()
    );
    let layers = tool_ok(["layers", &s(&fx.mnt)]);
    assert!(
        layers.contains(&s(&fx2.upper)),
        "the old daemon took the new mount away: {layers}"
    );
    drop(holder);
    drop(new);
    drop(old);
}

/// When the last copy of a mount goes (here with the namespace that held it), the kernel
/// ends the FUSE connection and the daemon exits by itself, socket and work directory
/// removed.
#[test]
fn a_daemon_exits_when_its_mount_is_gone_from_every_namespace() {
    let fx = Fixture::new(1);
    seed(&fx);
    let mut m = fx.mount(&[]);
    let sock = control_socket(&fx.mnt);
    let ino = fs::symlink_metadata(&sock).unwrap().ino();
    let Some(holder) = Holder::new(&fx.mnt) else {
        return;
    };
    unmount_here(&fx.mnt);
    assert!(
        m.wait_exit(Duration::from_millis(500)).is_none(),
        "the daemon exited while another namespace used its mount"
    );
    drop(holder);
    let st = m.wait_exit(Duration::from_secs(5));
    assert!(
        st.is_some_and(|st| st.success()),
        "{st:?} 5 s after the last copy went\n{}",
        fx.log_tail()
    );
    assert!(socket_gone(&sock, ino), "{} left behind", sock.display());
    assert!(!lexists(&fx.u(WORKDIR)), "work directory left behind");
}

/// A reply from a daemon that does not serve the mount visible at the path (played by a
/// listener put on the visible mount's socket path, answering for another device) is not
/// used: the tool says so, and `commit --remount` changes nothing.
#[test]
fn a_reply_for_another_mount_is_refused() {
    let fx = Fixture::new(1);
    seed(&fx);
    let _m = fx.mount(&[]);
    let sock = control_socket(&fx.mnt);
    fs::remove_file(&sock).unwrap();
    let upper = s(&fx.upper);
    let _fake = Listener::bind(
        &sock,
        format!("ok 0:1\npid 1\noptions \nbranch RW\t{upper}\t{upper}=RW\n"),
    );
    let layer = fx.root.join("layer");
    for args in [
        vec!["layers".to_string(), s(&fx.mnt)],
        vec![
            "commit".into(),
            s(&fx.mnt),
            "--to".into(),
            s(&layer),
            "--remount".into(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = tool(&args);
        assert!(
            !o.ok()
                && o.stderr
                    .contains("serves the mount with device 0:1, not the one visible"),
            "{args:?}: {}",
            o.stderr
        );
    }
    assert!(!lexists(&layer));
    assert_eq!(read(&fx.m("1")), "I am base file 1\n");
}

/// The socket a killed daemon leaves is never answered: the tools say the daemon has died,
/// and the next mount there (which detaches the dead one) answers for itself.
#[test]
fn a_killed_daemons_socket_is_never_answered() {
    let fx = Fixture::new(1);
    seed(&fx);
    let _g = UnmountGuard(fx.mnt.clone());
    let o = tool([&fx.spec(), &s(&fx.mnt)]);
    assert!(o.ok(), "{}", o.stderr);
    let sock = control_socket(&fx.mnt);
    let pid = unionmount::inspect::control::stack(&fx.mnt).unwrap().pid;
    assert!(succeeds("kill", ["-KILL", &pid.to_string()]));
    eventually(Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(sock.exists(), "a killed daemon removed its socket?");
    let o = tool(["layers", &s(&fx.mnt)]);
    o.assert_fails_with("its daemon has died");
    let fx2 = Fixture::new(1);
    let o = tool([&fx2.spec(), &s(&fx.mnt)]);
    assert!(o.ok(), "{}", o.stderr);
    let layers = tool_ok(["layers", &s(&fx.mnt)]);
    assert!(layers.contains(&s(&fx2.upper)), "{layers}");
    assert!(fusermount_u(&fx.mnt));
}
