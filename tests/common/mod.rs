//! Test harness: temp branches, a real FUSE mount of the `unionmount` binary, and tree snapshots.
//!
//! Every `Mount` snapshots its read-only branches before the daemon starts and, when dropped
//! (even after a failed assertion), unmounts, waits for the daemon, and — unless the test is
//! already failing — asserts that the daemon exited cleanly, the mount is gone, and the
//! read-only branches are byte-for-byte, mode-for-mode unchanged.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_unionmount");
/// Hidden work directory the daemon may keep in the upper while mounted.
pub const WORKDIR: &str = ".wh..wh..work";
/// Opaque-directory marker file.
pub const OPQ: &str = ".wh..wh..opq";
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);

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

    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
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
        let mut logf = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        writeln!(logf, "=== {BIN} -f {}", args.join(" ")).unwrap();
        let child = Command::new(BIN)
            .arg("-f")
            .args(&args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn unionmount");
        let mut m = Mount {
            mnt: mnt.to_path_buf(),
            id: 0,
            mount_point: PathBuf::new(),
            args,
            log: log.to_path_buf(),
            child,
            exit: None,
            exited_by_itself: false,
            watched,
            stopped: false,
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            match visible_unionmount(mnt) {
                Some(v) if Some(v.id) != below => {
                    m.id = v.id;
                    m.mount_point = v.mount_point;
                    break;
                }
                _ => {}
            }
            if let Some(st) = m.child.try_wait().unwrap() {
                m.exit = Some(st);
                m.exited_by_itself = true;
                panic!(
                    "unionmount exited ({st}) before mounting {}\n{}",
                    mnt.display(),
                    log_tail(log)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} not mounted after {MOUNT_TIMEOUT:?}\n{}",
                    mnt.display(),
                    log_tail(log)
                );
            }
            sleep(Duration::from_millis(10));
        }
        m
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
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.exit = Some(st);
                self.exited_by_itself = true;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            sleep(Duration::from_millis(10));
        }
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
            let ok = quiet(Command::new("fusermount3").arg("-u").arg(&self.mnt));
            if !ok {
                quiet(Command::new("umount").arg("-l").arg(&self.mnt));
            }
        }
        if self.wait_exit(MOUNT_TIMEOUT).is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
        // A daemon that died leaves a dead mount behind; never leave one around.
        if self.visible() {
            quiet(Command::new("umount").arg("-l").arg(&self.mnt));
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

    /// Unmount (with all checks), move the upper down into the lowers under a fresh, empty
    /// upper at the same path, and mount that stack. Returns it, and how its merged view
    /// differs from the one before ("" when equal, as it must be).
    pub fn rotate(mut self) -> (Mount, String) {
        let before = view(&self.mnt);
        self.stop_and_check();
        let rotation = Rotation::new(&self.args).expect("a stack with an upper to rotate");
        let mut watched: Vec<PathBuf> = self.watched.iter().map(|(d, _)| d.clone()).collect();
        watched.push(rotation.layer.clone());
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
        watched.push(rotation.layer.clone());
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
pub struct Rotation {
    pub upper: PathBuf,
    pub layer: PathBuf,
    /// The mount arguments for the rotated stack.
    pub args: Vec<String>,
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
        let mut args = args.to_vec();
        let a = &args[i];
        args[i] = if a.contains("upperdir=") {
            let opts: Vec<String> = a
                .split(',')
                .map(|o| match o.strip_prefix("lowerdir=") {
                    Some(l) => format!("lowerdir={}:{l}", layer.display()),
                    None => o.to_string(),
                })
                .collect();
            opts.join(",")
        } else {
            let parts: Vec<String> = a
                .split(':')
                .map(|b| {
                    if Path::new(b.rsplit_once('=').map_or(b, |(p, _)| p)) == upper {
                        format!("{b}:{}=RO", layer.display())
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
        Some(Rotation { upper, layer, args })
    }

    /// Put the old upper back at its path (the fresh one must be empty).
    pub fn undo(self) {
        fs::remove_dir(&self.upper).unwrap();
        fs::rename(&self.layer, &self.upper).unwrap();
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

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
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

// ---------------------------------------------------------------------------------------------
// /proc/self/mountinfo
// ---------------------------------------------------------------------------------------------

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (mount point, fstype) of every mount.
pub fn mounts() -> Vec<(PathBuf, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or("").to_string();
        out.push((PathBuf::from(unescape_mountinfo(mp)), fstype));
    }
    out
}

/// The unionmount mount visible on exactly `path` (the top one), if it is one.
pub fn visible_unionmount(path: &Path) -> Option<unionmount::mounts::Mount> {
    unionmount::mounts::visible(path).ok().filter(|m| {
        m.is_unionmount()
            && (m.mount_point == path || path.canonicalize().is_ok_and(|c| c == m.mount_point))
    })
}

/// The control socket of the unionmount mount visible on `path`, waited for until it
/// takes connections (the daemon binds it just after the mount is live).
pub fn control_socket(path: &Path) -> PathBuf {
    let m = visible_unionmount(path).expect("no unionmount mount there");
    let sock = unionmount::inspect::control::socket_path(m.dev);
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never answered",
            sock.display()
        );
        sleep(Duration::from_millis(10));
    }
    sock
}

/// fstype of the (topmost) mount on exactly `path`, if any.
pub fn mount_fstype(path: &Path) -> Option<String> {
    mounts()
        .into_iter()
        .rev()
        .find(|(mp, _)| mp == path)
        .map(|(_, t)| t)
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .map(|(mp, _)| mp)
        .filter(|mp| mp.starts_with(dir))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Snapshots of branch trees
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char(u64),
    Block(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits incl. setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files only (0 otherwise).
    pub size: u64,
    pub mtime: (i64, i64),
    /// Hash of a regular file's content, or a symlink's target.
    pub data: String,
    /// Sorted `user.*` and `trusted.*` extended attributes.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

pub type Snapshot = BTreeMap<String, Entry>;

/// Metadata, content hash/target and xattrs of one path (not following symlinks).
pub fn entry(path: &Path) -> Entry {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else if ft.is_char_device() {
        Kind::Char(md.rdev())
    } else {
        Kind::Block(md.rdev())
    };
    let data = match kind {
        Kind::File => {
            let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            format!("{:016x}", h.finish())
        }
        Kind::Symlink => fs::read_link(path).unwrap().display().to_string(),
        _ => String::new(),
    };
    let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Ok(names) = xattr::list(path) {
        for n in names {
            let n = n.to_string_lossy().into_owned();
            // trusted.unionmount.* is unionmount's own bookkeeping (the inode number a
            // copied-up file keeps), not part of the file's content.
            let ours = n.starts_with("trusted.unionmount.");
            if (n.starts_with("user.") || n.starts_with("trusted.")) && !ours {
                let v = xattr::get(path, &n).ok().flatten().unwrap_or_default();
                xattrs.push((n, v));
            }
        }
    }
    xattrs.sort();
    Entry {
        size: if kind == Kind::File { md.size() } else { 0 },
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: (md.mtime(), md.mtime_nsec()),
        data,
        xattrs,
    }
}

/// Every entry under `dir` (relative paths, "" is `dir` itself), skipping the work directory.
pub fn snapshot(dir: &Path) -> Snapshot {
    fn walk(base: &Path, rel: &Path, out: &mut Snapshot) {
        let p = base.join(rel);
        let e = entry(&p);
        let is_dir = e.kind == Kind::Dir;
        out.insert(rel.display().to_string(), e);
        if is_dir {
            for de in fs::read_dir(&p).unwrap() {
                let name = de.unwrap().file_name();
                if name == WORKDIR {
                    continue;
                }
                walk(base, &rel.join(name), out);
            }
        }
    }
    let mut out = Snapshot::new();
    walk(dir, Path::new(""), &mut out);
    out
}

/// Human-readable differences between two snapshots ("" if equal).
pub fn snapshot_diff(a: &Snapshot, b: &Snapshot) -> String {
    let mut s = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => s += &format!("  removed {k:?}: {v:?}\n"),
            Some(w) if w != v => {
                s += &format!("  changed {k:?}:\n    before {v:?}\n    after  {w:?}\n")
            }
            _ => {}
        }
    }
    for (k, w) in b {
        if !a.contains_key(k) {
            s += &format!("  added {k:?}: {w:?}\n");
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Small helpers for populating branches and asserting
// ---------------------------------------------------------------------------------------------

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// -1 -> last OS error.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Write `content` to `path`, creating parent directories.
pub fn put(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `put` then chmod.
pub fn put_mode(path: &Path, content: &str, mode: u32) {
    put(path, content);
    set_mode(path, mode);
}

pub fn mkdir_p(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", path.display()));
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// Set atime and mtime (not following symlinks).
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    };
    let times = [ts, ts];
    cvt(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(path).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Overlayfs-style whiteout: a char device 0/0.
pub fn mknod_whiteout(path: &Path) {
    cvt(unsafe {
        libc::mknod(
            cstr(path).as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(0, 0),
        )
    })
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    cvt(unsafe { libc::mkfifo(cstr(path).as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// renameat2(AT_FDCWD, from, AT_FDCWD, to, flags) through the raw syscall.
pub fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (f, t) = (cstr(from), cstr(to));
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Sorted names in a directory, exactly as readdir returns them (minus . and ..).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `names`, ignoring the daemon's work directory (for upper directories).
pub fn upper_names(dir: &Path) -> Vec<String> {
    names(dir).into_iter().filter(|n| n != WORKDIR).collect()
}

/// Names as `["a", "b"]` literal helper.
pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn lexists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// The errno of a failed result; panics (with `what`) on success.
pub fn errno<T: std::fmt::Debug>(r: io::Result<T>, what: &str) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: not an OS error: {e}")),
    }
}

pub fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, expected: i32, what: &str) {
    let got = errno(r, what);
    assert_eq!(
        got,
        expected,
        "{what}: expected {}, got {}",
        io::Error::from_raw_os_error(expected),
        io::Error::from_raw_os_error(got)
    );
}

/// The path does not exist (lstat gives ENOENT).
pub fn assert_gone(path: &Path) {
    assert_errno(
        fs::symlink_metadata(path),
        libc::ENOENT,
        &format!("lstat {}", path.display()),
    );
}

/// A regular, empty-or-not file (the `.wh.` whiteout / opaque marker format).
pub fn assert_regular_file(path: &Path) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    assert!(
        md.file_type().is_file(),
        "{} is not a regular file: {:?}",
        path.display(),
        md.file_type()
    );
}

pub fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
        .ino()
}

/// name -> d_ino as readdir reports it.
pub fn dir_inos(dir: &Path) -> BTreeMap<String, u64> {
    use std::os::unix::fs::DirEntryExt;
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.ino())
        })
        .collect()
}

pub fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Running as root (some tests need privileges and skip themselves otherwise).
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Wait (up to 10 s) until `mnt` is, or is no longer, a unionmount mount point.
pub fn wait_mounted(mnt: &Path, mounted: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mount_fstype(mnt).is_some() != mounted {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: {} after 10 s",
            mnt.display(),
            if mounted {
                "not mounted"
            } else {
                "still mounted"
            }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `sh -c script` in `dir` as `uid` (gid the same, no supplementary groups):
/// (exit code, stderr).
pub fn sh_as(uid: u32, dir: &Path, script: &str) -> (i32, String) {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The content of a file (read without marking its atime) or a symlink's target; nothing
/// for other types.
pub fn quiet_content(p: &Path, md: &fs::Metadata) -> Vec<u8> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut data = Vec::new();
    if md.is_file() {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(p)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
    } else if md.file_type().is_symlink() {
        data = fs::read_link(p)
            .unwrap()
            .into_os_string()
            .into_encoded_bytes();
    }
    data
}
