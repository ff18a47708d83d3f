//! The mount fixture: temp branches, a real FUSE mount of the `unionmount` binary guarded
//! by `Mount`, remounts, and rotations of the upper into the lowers.

use super::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Fixture: a TempDir holding upper/, lower0/.., mnt/
// ---------------------------------------------------------------------------------------------

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub upper: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub mnt: PathBuf,
    pub log: PathBuf,
}

/// Whatever a test left mounted in its fixture (a peer's mount it did not get to unmount, a
/// daemon that outlived a failed assertion) goes before the fixture's directory does.
impl Drop for Fixture {
    fn drop(&mut self) {
        unmount_all(&self.root);
    }
}

impl Fixture {
    pub fn new(n_lowers: usize) -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("unionmount-test.")
            .tempdir()
            .unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let upper = root.join("upper");
        let mnt = root.join("mnt");
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&mnt).unwrap();
        let lowers: Vec<PathBuf> = (0..n_lowers)
            .map(|i| root.join(format!("lower{i}")))
            .collect();
        for l in &lowers {
            fs::create_dir(l).unwrap();
        }
        let log = root.join("unionmount.log");
        Fixture {
            tmp,
            root,
            upper,
            lowers,
            mnt,
            log,
        }
    }

    /// `Fixture::new(n_lowers)` for a test that needs root; elsewhere None, after printing
    /// `skip_note` (the test then returns: skipped).
    pub fn as_root(n_lowers: usize, skip_note: &str) -> Option<Fixture> {
        if !is_root() {
            eprintln!("{skip_note}");
            return None;
        }
        Some(Fixture::new(n_lowers))
    }

    /// `lower<i>/rel`
    pub fn l(&self, i: usize, rel: &str) -> PathBuf {
        self.lowers[i].join(rel)
    }
    /// `upper/rel`
    pub fn u(&self, rel: &str) -> PathBuf {
        self.upper.join(rel)
    }
    /// `mnt/rel`
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `upper=RW:lower0=RO:lower1=RO...`
    pub fn spec(&self) -> String {
        let mut parts = vec![format!("{}=RW", self.upper.display())];
        parts.extend(self.lowers.iter().map(|l| format!("{}=RO", l.display())));
        parts.join(":")
    }

    /// `lower0=RO:lower1=RO...` (no writable branch)
    pub fn ro_spec(&self) -> String {
        let parts: Vec<String> = self
            .lowers
            .iter()
            .map(|l| format!("{}=RO", l.display()))
            .collect();
        parts.join(":")
    }

    /// `lowerdir=LOWER0:LOWER1..,upperdir=UPPER,workdir=WORK`, for `-o`.
    pub fn overlay_opts(&self, work: &Path) -> String {
        let lowers: Vec<&Path> = self.lowers.iter().map(PathBuf::as_path).collect();
        overlay_opts(&lowers, &self.upper, work)
    }

    /// Kernel overlayfs on `mnt` over lower 0 and the upper, its work directory `kwork`
    /// beside them; `extra` ("metacopy=on,") goes before the layers.
    pub fn kernel_overlay(&self, extra: &str) -> KernelMount {
        let work = self.root.join("kwork");
        KernelMount::overlay(&[&self.lowers[0]], &self.upper, &work, &self.mnt, extra)
    }

    /// `unionmount -f EXTRA... SPEC MNT`; every lower is checked unchanged after unmount.
    pub fn mount(&self, extra: &[&str]) -> Mount {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.push(self.spec());
        args.push(self.mnt.display().to_string());
        self.mount_args(args, self.lowers.clone())
    }

    /// `unionmount -f ARGS...` mounted on `self.mnt`; `read_only` branches are checked unchanged.
    pub fn mount_args(&self, args: Vec<String>, read_only: Vec<PathBuf>) -> Mount {
        Mount::start(args, &self.mnt, &self.log, read_only)
    }

    /// `unionmount -f -o stack EXTRA... SPEC MNT` on top of the live unionmount mount on
    /// `mnt` (another fixture's), waited for until it is the one visible there. Drop it
    /// before the one below.
    pub fn mount_on_top(&self, mnt: &Path, extra: &[&str]) -> Mount {
        let below = visible_unionmount(mnt).expect("no unionmount mount to stack on");
        let mut args = strs(&["-o", "stack"]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(self.spec());
        args.push(mnt.display().to_string());
        Mount::start_with(args, mnt, &self.log, self.lowers.clone(), Some(below.id))
    }

    /// A daemon the harness does not own (a test kills it, or leaves its mount for an
    /// `UnmountGuard`): `unionmount -f EXTRA... SPEC MNT` logging to the fixture's log,
    /// waited for until its mount is visible on `mnt`. No end-of-mount checks.
    pub fn daemon(&self, extra: &[&str]) -> Child {
        self.daemon_env(extra, &[])
    }

    /// `daemon(extra)` with `env` (NAME, VALUE) added to the daemon's environment (e.g.
    /// `UNIONMOUNT_CRASH_AT`, which makes it die at a given step of an operation).
    pub fn daemon_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Child {
        let mut args = strs(extra);
        args.push(self.spec());
        args.push(self.mnt.display().to_string());
        let mut child = spawn_daemon_env(&args, &self.log, "info", env);
        wait_live(&mut child, &self.mnt, &self.log, None);
        child
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

/// `unionmount -f ARGS...` with RUST_LOG=`level` and its output appended to `log`, after a
/// line naming the command.
fn spawn_daemon(args: &[String], log: &Path, level: &str) -> Child {
    spawn_daemon_env(args, log, level, &[])
}

/// Whether the suite mounts without passthrough (`UNIONMOUNT_TEST_OPTS=passthrough=0`):
/// every file's data then goes through the daemon and the page cache.
pub fn suite_without_passthrough() -> bool {
    std::env::var("UNIONMOUNT_TEST_OPTS").is_ok_and(|o| o.split(',').any(|x| x == "passthrough=0"))
}

/// `spawn_daemon` with `env` added to the daemon's environment.
fn spawn_daemon_env(args: &[String], log: &Path, level: &str, env: &[(&str, &str)]) -> Child {
    let mut logf = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    // `UNIONMOUNT_TEST_OPTS=passthrough=0` runs every mount of the suite so.
    let mut args = args.to_vec();
    if let Ok(o) = std::env::var("UNIONMOUNT_TEST_OPTS")
        && !o.is_empty()
    {
        args.splice(0..0, ["-o".to_string(), o]);
    }
    writeln!(logf, "=== {BIN} -f {}", args.join(" ")).unwrap();
    Command::new(BIN)
        .arg("-f")
        .args(&args)
        .env("RUST_LOG", level)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .expect("spawn unionmount")
}

/// Wait until a unionmount mount other than the mount `below` is visible on `mnt`: that
/// mount. Fails the test if the daemon exits first, or (killing it) after `MOUNT_TIMEOUT`.
fn wait_live(
    child: &mut Child,
    mnt: &Path,
    log: &Path,
    below: Option<u64>,
) -> unionmount::mounts::Mount {
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    loop {
        match visible_unionmount(mnt) {
            Some(v) if Some(v.id) != below => return v,
            _ => {}
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "unionmount exited ({st}) before mounting {}\n{}",
                mnt.display(),
                log_tail(log)
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} not mounted after {MOUNT_TIMEOUT:?}\n{}",
                mnt.display(),
                log_tail(log)
            );
        }
        sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Mount guard
// ---------------------------------------------------------------------------------------------

pub struct Mount {
    pub mnt: PathBuf,
    /// Its mount id and mount point as /proc/self/mountinfo shows them: a mount point may
    /// hold several mounts.
    pub id: u64,
    mount_point: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
    /// The daemon exited without being killed by the harness.
    exited_by_itself: bool,
    watched: Vec<(PathBuf, Snapshot)>,
    stopped: bool,
}

impl Mount {
    pub fn start(args: Vec<String>, mnt: &Path, log: &Path, read_only: Vec<PathBuf>) -> Mount {
        Mount::start_with(args, mnt, log, read_only, None)
    }

    /// `start`, waiting for a unionmount mount other than the mount `below` to be visible.
    fn start_with(
        args: Vec<String>,
        mnt: &Path,
        log: &Path,
        read_only: Vec<PathBuf>,
        below: Option<u64>,
    ) -> Mount {
        let watched = read_only.into_iter().map(|d| {
            let s = snapshot(&d);
            (d, s)
        });
        let watched: Vec<_> = watched.collect();
        let mut child = spawn_daemon(&args, log, "debug");
        let live = wait_live(&mut child, mnt, log, below);
        Mount {
            mnt: mnt.to_path_buf(),
            id: live.id,
            mount_point: live.mount_point,
            args,
            log: log.to_path_buf(),
            child,
            exit: None,
            exited_by_itself: false,
            watched,
            stopped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Wait up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        self.exit = wait_within(&mut self.child, timeout);
        self.exited_by_itself = self.exit.is_some();
        self.exit
    }

    /// Its mount is still in the mount table (visible or covered by another).
    pub fn mounted(&self) -> bool {
        unionmount::mounts::table()
            .iter()
            .any(|m| m.id == self.id && m.mount_point == self.mount_point)
    }

    /// Its mount is the one visible on its mount point (unmounting by path reaches it).
    fn visible(&self) -> bool {
        visible_unionmount(&self.mnt).is_some_and(|m| m.id == self.id)
    }

    /// Unmount (fusermount3 -u, else umount -l), wait for the daemon, kill it if it hangs.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // Ours, or one mounted in our place (`commit --remount`) once ours is gone.
        let replaced = self.id != 0 && !self.mounted() && visible_unionmount(&self.mnt).is_some();
        if self.visible() || replaced {
            unmount(&self.mnt);
        }
        if self.wait_exit(MOUNT_TIMEOUT).is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
        // A daemon that died leaves a dead mount behind; never leave one around.
        if self.visible() {
            succeeds("umount", [OsStr::new("-l"), self.mnt.as_os_str()]);
        }
    }

    /// Unmount and run every end-of-mount check (what Drop does, but explicit).
    pub fn unmount(mut self) {
        self.stop_and_check();
    }

    /// Unmount (with all checks) and mount again with the same arguments. On the way, the
    /// invariant that every upper is a valid lower is checked: the merged view stays the
    /// same with the upper moved down under a fresh, empty one (see `check_rotation`).
    pub fn remount(mut self) -> Mount {
        let before = (!std::thread::panicking()).then(|| view(&self.mnt));
        self.stop_and_check();
        if let Some(before) = before {
            self.check_rotation(&before);
        }
        let dirs = self.watched.iter().map(|(d, _)| d.clone()).collect();
        Mount::start(self.args.clone(), &self.mnt, &self.log, dirs)
    }

    /// `check("mounted")`, `remount()` (with its checks), then `check("after remount")`:
    /// the test's own checks hold before and after, and across the rotation `remount()`
    /// makes on the way. Returns the new mount.
    pub fn check_across_remount(self, check: impl Fn(&str)) -> Mount {
        check("mounted");
        let m = self.remount();
        check("after remount");
        m
    }

    /// Unmount (with all checks), move the upper down into the lowers under a fresh, empty
    /// upper at the same path, and mount that stack. Returns it, and how its merged view
    /// differs from the one before ("" when equal, as it must be).
    pub fn rotate(mut self) -> (Mount, String) {
        let before = view(&self.mnt);
        self.stop_and_check();
        let rotation = Rotation::new(&self.args).expect("a stack with an upper to rotate");
        let mut watched: Vec<PathBuf> = self.watched.iter().map(|(d, _)| d.clone()).collect();
        watched.extend(rotation.new_lowers());
        let m = Mount::start(rotation.args.clone(), &self.mnt, &self.log, watched);
        let after = view(&self.mnt);
        (m, view_diff(&before, &after))
    }

    /// Mount the stack rotated (the upper moved down under a fresh one), compare its view
    /// with `before`, and put everything back as it was. The rotated mount changes nothing:
    /// its old upper is checked unchanged like any lower, and its fresh upper stays empty.
    fn check_rotation(&self, before: &View) {
        let Some(rotation) = Rotation::new(&self.args) else {
            return;
        };
        let mut watched: Vec<PathBuf> = self.watched.iter().map(|(d, _)| d.clone()).collect();
        watched.extend(rotation.new_lowers());
        let m = Mount::start(rotation.args.clone(), &self.mnt, &self.log, watched);
        let after = view(&self.mnt);
        m.unmount();
        let left: Vec<String> = fs::read_dir(&rotation.upper)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        rotation.undo();
        let d = view_diff(before, &after);
        assert!(
            d.is_empty(),
            "the merged view changed when the upper moved down into the lowers:\n{d}"
        );
        assert!(
            left.is_empty(),
            "looking through a rotated stack wrote {left:?} to its fresh upper"
        );
    }

    fn stop_and_check(&mut self) {
        let was_stopped = self.stopped;
        self.stop();
        if was_stopped || std::thread::panicking() {
            return;
        }
        let log = log_tail(&self.log);
        assert!(
            self.exited_by_itself,
            "unionmount did not exit within {MOUNT_TIMEOUT:?} of unmount; killed\n{log}"
        );
        let st = self.exit.unwrap();
        assert!(
            st.success(),
            "unionmount exited with {st} after unmount\n{log}"
        );
        assert!(!self.mounted(), "{} still mounted", self.mnt.display());
        for (dir, before) in &self.watched {
            let after = snapshot(dir);
            let diff = snapshot_diff(before, &after);
            assert!(
                diff.is_empty(),
                "read-only branch {} was modified:\n{}",
                dir.display(),
                diff
            );
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop_and_check();
    }
}

// ---------------------------------------------------------------------------------------------
// Layer rotation: the upper moved down into the lowers, under a fresh upper
// ---------------------------------------------------------------------------------------------

static ROTATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A stack whose upper moved down: the old upper's content is now the lower `layer` (right
/// below the upper), and `upper`, at the old upper's path, is fresh and empty, with the old
/// root's mode, owner and times (the merged root shows the upper's).
///
/// The upper's snapshots (`UPPER.snapshots/NNNN-NAME`, stacked right below the upper,
/// newest first) move down with it: they are plain lower layers of the rotated stack,
/// right below `layer` in the same order, and their directory moves aside so the fresh
/// upper has no snapshots of its own. Left where they are, the mount would stack them
/// above the old upper's changes, which were made after them: another view.
pub struct Rotation {
    pub upper: PathBuf,
    pub layer: PathBuf,
    /// The old upper's snapshot layers, newest first, now lowers below `layer`.
    pub snapshots: Vec<PathBuf>,
    /// (where the upper's snapshot directory was, where it is now).
    store: Option<(PathBuf, PathBuf)>,
    /// The mount arguments for the rotated stack.
    pub args: Vec<String>,
}

/// `UPPER.snapshots`: where unionmount keeps the snapshots of the upper `upper`.
pub fn snapshot_store(upper: &Path) -> PathBuf {
    let mut name = upper.file_name().unwrap().to_os_string();
    name.push(".snapshots");
    upper.with_file_name(name)
}

/// The snapshot layer directories in the snapshot directory `store` (`NNNN-NAME`), oldest
/// first; none if it does not exist.
pub fn snapshot_layers(store: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(store) else {
        return Vec::new();
    };
    let mut v: Vec<(u32, PathBuf)> = rd
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let (seq, _) = n.split_once('-')?;
            (seq.len() >= 4 && seq.bytes().all(|b| b.is_ascii_digit()))
                .then(|| (seq.parse().unwrap(), e.path()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

impl Rotation {
    /// Rotate the stack that `args` (a `dir=RW:dir=RO...` spec, or `-o upperdir=..,lowerdir=..`)
    /// mounts; None for a stack without an upper.
    pub fn new(args: &[String]) -> Option<Rotation> {
        let (i, upper) = args.iter().enumerate().find_map(|(i, a)| {
            let up = if a.starts_with('-') {
                None
            } else if a.contains("upperdir=") {
                a.split(',').find_map(|o| o.strip_prefix("upperdir="))
            } else {
                a.split(':').find_map(|b| {
                    b.strip_suffix("=RW")
                        .or_else(|| b.strip_suffix("=rw"))
                        .or_else(|| b.strip_suffix("=Rw"))
                        .or_else(|| b.strip_suffix("=rW"))
                })
            };
            up.map(|u| (i, PathBuf::from(u)))
        })?;
        let n = ROTATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("rotated{n}");
        let layer = upper.parent().unwrap().join(&name);
        // The snapshots go down with the upper (see `Rotation`), their directory aside.
        let old_store = snapshot_store(&upper);
        let (store, snapshots) = if old_store.is_dir() {
            let moved = upper.parent().unwrap().join(format!("{name}.snapshots"));
            let mut layers: Vec<PathBuf> = snapshot_layers(&old_store)
                .iter()
                .map(|d| moved.join(d.file_name().unwrap()))
                .collect();
            layers.reverse();
            (Some((old_store, moved)), layers)
        } else {
            (None, Vec::new())
        };
        let below: Vec<String> = std::iter::once(&layer)
            .chain(&snapshots)
            .map(|d| d.display().to_string())
            .collect();
        let mut args = args.to_vec();
        let a = &args[i];
        args[i] = if a.contains("upperdir=") {
            let opts: Vec<String> = a
                .split(',')
                .map(|o| match o.strip_prefix("lowerdir=") {
                    Some(l) => format!("lowerdir={}:{l}", below.join(":")),
                    None => o.to_string(),
                })
                .collect();
            opts.join(",")
        } else {
            let parts: Vec<String> = a
                .split(':')
                .map(|b| {
                    if Path::new(b.rsplit_once('=').map_or(b, |(p, _)| p)) == upper {
                        format!("{b}:{}=RO", below.join("=RO:"))
                    } else {
                        b.to_string()
                    }
                })
                .collect();
            parts.join(":")
        };
        // Copy-ups are built beside the branches, not in the fresh upper: a work directory
        // made in it would change the merged root's times.
        let has_workdir = args.iter().any(|a| a.contains("workdir="));
        if !has_workdir {
            let work = upper.parent().unwrap().join(format!("{name}-work"));
            fs::create_dir(&work).unwrap();
            args.insert(0, format!("workdir={}", work.display()));
            args.insert(0, "-o".into());
        }
        let md = fs::symlink_metadata(&upper).unwrap();
        if let Some((from, to)) = &store {
            fs::rename(from, to).unwrap();
        }
        fs::rename(&upper, &layer).unwrap();
        fs::create_dir(&upper).unwrap();
        std::os::unix::fs::lchown(&upper, Some(md.uid()), Some(md.gid())).unwrap();
        fs::set_permissions(&upper, fs::Permissions::from_mode(md.mode() & 0o7777)).unwrap();
        let times = [
            libc::timespec {
                tv_sec: md.atime(),
                tv_nsec: md.atime_nsec(),
            },
            libc::timespec {
                tv_sec: md.mtime(),
                tv_nsec: md.mtime_nsec(),
            },
        ];
        // SAFETY: a valid C path and two timespecs, as utimensat(2) takes them.
        let r =
            unsafe { libc::utimensat(libc::AT_FDCWD, cstr(&upper).as_ptr(), times.as_ptr(), 0) };
        cvt(r).unwrap();
        Some(Rotation {
            upper,
            layer,
            snapshots,
            store,
            args,
        })
    }

    /// The layers the rotated stack has below its fresh upper that the old stack had
    /// elsewhere (the old upper, its snapshots): read-only there.
    pub fn new_lowers(&self) -> Vec<PathBuf> {
        std::iter::once(&self.layer)
            .chain(&self.snapshots)
            .cloned()
            .collect()
    }

    /// Put the old upper (and its snapshots) back at its path (the fresh one must be empty).
    pub fn undo(self) {
        fs::remove_dir(&self.upper).unwrap();
        fs::rename(&self.layer, &self.upper).unwrap();
        if let Some((from, to)) = &self.store {
            fs::rename(to, from).unwrap();
        }
    }
}

/// What the merged view shows, for comparing views: every entry (as `snapshot`), and which
/// paths are hard links of one file.
pub struct View {
    pub entries: Snapshot,
    pub links: std::collections::BTreeSet<Vec<String>>,
}

pub fn view(dir: &Path) -> View {
    let mut entries = snapshot(dir);
    // The default work directory lives in the upper's root, made at mount and removed at
    // unmount: the root's mtime moves with every mount, rotated or not.
    if let Some(root) = entries.get_mut("") {
        root.mtime = (0, 0);
    }
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (rel, e) in &entries {
        if e.kind != Kind::Dir {
            let md = fs::symlink_metadata(dir.join(rel)).unwrap();
            if md.nlink() > 1 {
                by_ino.entry(md.ino()).or_default().push(rel.clone());
            }
        }
    }
    View {
        entries,
        links: by_ino.into_values().filter(|v| v.len() > 1).collect(),
    }
}

/// Human-readable differences between two views ("" if equal).
pub fn view_diff(a: &View, b: &View) -> String {
    let mut d = snapshot_diff(&a.entries, &b.entries);
    if a.links != b.links {
        d += &format!(
            "  hard links before {:?}\n  hard links after  {:?}\n",
            a.links, b.links
        );
    }
    d
}

pub fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(80);
    format!(
        "--- last lines of {} ---\n{}",
        log.display(),
        lines[start..].join("\n")
    )
}
