//! Running commands with a deadline: the `unionmount` tools, helpers such as mount(8), and
//! waiting for a child or a condition without hanging the test run.

use super::{BIN, mount_fstype, mounts, mounts_under};
use std::ffi::OsStr;
use std::fmt::Display;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a command run by `run` may take before it is killed and the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A command that ran to completion.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// It exited 0.
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// It failed, and said `text` on stderr.
    #[track_caller]
    pub fn assert_fails_with(&self, text: &str) {
        assert!(!self.ok() && self.stderr.contains(text), "{}", self.stderr);
    }

    /// Its exit code, -1 if a signal ended it.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// `unionmount ARGS...` to run or spawn: RUST_LOG and NO_COLOR unset, stdin, stdout and
/// stderr null (`run` gives it files for its output).
pub fn unionmount<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Run `cmd` to completion within `limit`: RUST_LOG unset (neither it nor what it starts
/// logs), stdin null, output in files outside any fixture (a detaching daemon keeps its
/// inherited stdio open until it has reported the mount live, so pipes would be held open
/// by it). Past `limit` it is killed and the test fails.
pub fn run_within(cmd: &mut Command, limit: Duration) -> Finished {
    let out = tempfile::tempdir().unwrap();
    let (o, e) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = cmd
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&o).unwrap())
        .stderr(fs::File::create(&e).unwrap())
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {cmd:?}: {err}"));
    let status = wait_or_kill(&mut child, limit, format_args!("{cmd:?} did not return"));
    let text = |p: PathBuf| String::from_utf8_lossy(&fs::read(p).unwrap()).into_owned();
    Finished {
        status,
        stdout: text(o),
        stderr: text(e),
    }
}

/// `run_within(cmd, DEADLINE)`.
pub fn run(cmd: &mut Command) -> Finished {
    run_within(cmd, DEADLINE)
}

/// `unionmount ARGS...` (an inspection command, or a detaching mount) run to completion.
pub fn tool<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Finished {
    run(&mut unionmount(args))
}

/// `tool(ARGS)`, which must succeed: its stdout.
pub fn tool_ok<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    expect_ok(&mut unionmount(args))
}

/// `run(cmd)`, which must succeed: its stdout.
pub fn expect_ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(
        o.ok(),
        "{cmd:?} failed ({}):\n{}{}",
        o.status,
        o.stdout,
        o.stderr
    );
    o.stdout
}

/// `setpriv --reuid=UID --regid=UID --clear-groups`, to which the command to run as `uid`
/// (gid the same, no supplementary groups) is added.
pub fn as_user(uid: u32) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
    ]);
    c
}

/// Run `sh -c script` in `dir` as `uid` (gid the same, no supplementary groups):
/// (exit code, stderr).
pub fn sh_as(uid: u32, dir: &Path, script: &str) -> (i32, String) {
    let out = run(as_user(uid).args(["sh", "-c", script]).current_dir(dir));
    (out.code(), out.stderr)
}

/// `chown -R UID:GID DIR`, which must succeed.
pub fn chown_r(dir: &Path, uid: u32, gid: u32) {
    let owner = format!("{uid}:{gid}");
    assert!(
        succeeds(
            "chown",
            [OsStr::new("-R"), OsStr::new(&owner), dir.as_os_str()]
        ),
        "chown -R {owner} {}",
        dir.display()
    );
}

/// Wait up to `limit` for `child` to exit: its status, or None if it still runs.
pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        sleep(Duration::from_millis(10));
    }
}

/// Wait up to `limit` for `child` to exit; if it does not, kill it and fail the test with
/// "`what` within `limit`".
pub fn wait_or_kill(child: &mut Child, limit: Duration, what: impl Display) -> ExitStatus {
    wait_within(child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} within {limit:?}");
    })
}

/// Poll `cond` every 10 ms for up to `limit`: whether it came true.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(10));
    }
}

/// `CMD ARGS...` run to completion with its output thrown away: whether it exited 0.
pub fn succeeds<S: AsRef<OsStr>>(cmd: &str, args: impl IntoIterator<Item = S>) -> bool {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `fusermount3 -u MP`: whether it worked.
pub fn fusermount_u(mp: &Path) -> bool {
    succeeds("fusermount3", [OsStr::new("-u"), mp.as_os_str()])
}

/// `fusermount3 -u MP`, else `umount -l MP` (a mount busy for a moment is detached
/// lazily): whether either worked.
pub fn unmount(mp: &Path) -> bool {
    fusermount_u(mp) || succeeds("umount", [OsStr::new("-l"), mp.as_os_str()])
}

/// `unmount(mp)`, which must work, then wait until no mount is left on `mp`.
pub fn unmount_and_wait(mp: &Path) {
    assert!(unmount(mp), "fusermount3 -u and umount -l {}", mp.display());
    let gone = eventually(Duration::from_secs(10), || mount_fstype(mp).is_none());
    assert!(
        gone,
        "{} still mounted 10 s after unmount: {:?}",
        mp.display(),
        mounts()
            .into_iter()
            .filter(|(p, _)| p == mp)
            .collect::<Vec<_>>()
    );
}

/// Unmounts every mount at or below its directory when dropped, so a test that fails (or a
/// daemon the harness does not own) leaves no mount behind.
pub struct UnmountGuard(pub PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        unmount_all(&self.0);
    }
}

/// Unmount every mount at or below `dir`, dead or alive, stacked or not, as well as it can.
pub fn unmount_all(dir: &Path) {
    // Mounts stacked on one point are listed bottom first: the top goes first.
    for _ in 0..4 {
        let left = mounts_under(dir);
        if left.is_empty() {
            return;
        }
        for mp in left.into_iter().rev() {
            unmount(&mp);
        }
    }
}
