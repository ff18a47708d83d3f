//! Every inspection command piped into a reader that has gone (`unionmount layers M | head`)
//! ends quietly, as `cat` and `ls` do: no panic, no "Broken pipe" on stderr. The reports
//! die of SIGPIPE; `commit` finishes its work and exits 0 (killed between unmount and
//! remount it would leave the stack half swapped).
mod common;
use common::*;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::Duration;

/// `unionmount ARGS...` with stdout a pipe whose read end is already closed, so the first
/// write fails for sure (with `| head` it might fit in the pipe before head exits).
fn spawn_closed(args: &[String]) -> (Child, tempfile::NamedTempFile) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let err = tempfile::NamedTempFile::new().unwrap();
    let child = unionmount(args)
        .env("RUST_BACKTRACE", "1")
        .stdout(writer)
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    (child, err)
}

fn wait(child: &mut Child, args: &[String]) -> ExitStatus {
    let what = format!("unionmount {args:?} did not end after its stdout closed");
    wait_or_kill(child, DEADLINE, what)
}

/// What was not quiet: ended other than by SIGPIPE or with status 0, or wrote on stderr
/// other than lines starting with one of `allowed_stderr` (what it prints before output).
fn noise(args: &[String], st: ExitStatus, stderr: &str, allowed_stderr: &[&str]) -> Option<String> {
    let rest = stderr
        .lines()
        .any(|l| !allowed_stderr.iter().any(|a| l.starts_with(a)));
    let status_ok = st.signal() == Some(libc::SIGPIPE) || st.code() == Some(0);
    (rest || !status_ok).then(|| format!("unionmount {args:?}: {st}, stderr:\n{stderr}"))
}

fn assert_quiet(args: &[String], st: ExitStatus, stderr: &str, allowed_stderr: &[&str]) {
    if let Some(n) = noise(args, st, stderr, allowed_stderr) {
        panic!("{n}");
    }
}

fn run_closed(args: &[String]) -> (ExitStatus, String) {
    let (mut child, err) = spawn_closed(args);
    let st = wait(&mut child, args);
    (st, fs::read_to_string(err.path()).unwrap())
}

fn mount_with_changes() -> (Fixture, Mount) {
    let fx = Fixture::new(1);
    for i in 0..50 {
        put(&fx.l(0, &format!("dir/f{i:02}")), "base\n");
    }
    put(&fx.l(0, "gone"), "base\n");
    let m = fx.mount(&[]);
    put(&fx.m("dir/f00"), "changed\n");
    put(&fx.m("new"), "new\n");
    fs::remove_file(fx.m("gone")).unwrap();
    (fx, m)
}

#[test]
fn reports_end_quietly_on_a_closed_pipe() {
    let (fx, m) = mount_with_changes();
    let mnt = fx.mnt.display().to_string();
    let upper = fx.upper.display().to_string();
    let lower = fx.lowers[0].display().to_string();
    let runs: Vec<Vec<&str>> = vec![
        vec!["layers", &mnt],
        vec!["which", &mnt, &mnt],
        vec!["diff", &mnt],
        vec!["diff", &mnt, "--json"],
        vec!["diff", &upper, "--lower", &lower],
        vec!["export", &mnt, "--tar", "-"],
        vec!["export", &mnt, "--tar", "-", "--digest"],
        vec!["tree", &mnt],
        vec!["tree", &mnt, "--color", "always"],
        vec!["tree", &mnt, "--html", "-"],
        vec!["layers", "--help"],
        vec!["--help"],
    ];
    let mut loud = Vec::new();
    for args in runs {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (st, stderr) = run_closed(&args);
        // export --digest prints the digest on stderr once the tar is written: never, here.
        loud.extend(noise(&args, st, &stderr, &[]));
    }
    drop(m);
    assert!(loud.is_empty(), "{}", loud.join("\n"));
}

#[test]
fn trace_ends_quietly_when_its_reader_goes() {
    let (fx, m) = mount_with_changes();
    let args = vec!["trace".to_string(), fx.mnt.display().to_string()];
    let (mut child, err) = spawn_closed(&args);
    // The subscription is live once the daemon answered; give it a moment, then make
    // events until the first write kills the tracer.
    std::thread::sleep(Duration::from_millis(300));
    for i in 1..20 {
        put(&fx.m(&format!("dir/f{i:02}")), "changed\n");
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = wait(&mut child, &args);
    let stderr = fs::read_to_string(err.path()).unwrap();
    assert_quiet(&args, st, &stderr, &["tracing "]);
    drop(m);
}

#[test]
fn commit_finishes_its_work_on_a_closed_pipe() {
    let (fx, m) = mount_with_changes();
    let layer = fx.root.join("layer1");
    let args: Vec<String> = ["commit", &fx.mnt.display().to_string(), "--to"]
        .iter()
        .map(|a| a.to_string())
        .chain([layer.display().to_string()])
        .collect();
    let (st, stderr) = run_closed(&args);
    assert_quiet(&args, st, &stderr, &[]);
    assert_eq!(st.code(), Some(0), "{stderr}");
    assert_eq!(read(&layer.join("new")), "new\n");
    assert_eq!(read(&layer.join("dir/f00")), "changed\n");
    assert!(lexists(&layer.join(".wh.gone")));
    drop(m);
}
