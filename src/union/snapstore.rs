//! Where snapshots live on disk, and how an operation on them survives a crash.
//!
//! Beside the upper `DIR` is `DIR.snapshots/`, on the same filesystem: one directory per
//! snapshot, `NNNN-NAME` (NNNN its sequence number, oldest lowest), each a plain layer
//! directory that works as a lower for unionmount (and, in the overlay whiteout format,
//! for kernel overlayfs). A snapshot is the upper directory itself, moved there by one
//! `renameat2(RENAME_EXCHANGE)` with a fresh empty directory that becomes the upper; a
//! rollback exchanges the upper with a fresh one the same way and moves the discarded
//! directories into `.trash/`. `.times` keeps when each snapshot was taken.
//!
//! Crash safety: everything an operation needs is prepared first where it changes nothing
//! (a fresh directory `.pending`, copies inside the upper's hidden `.wh..wh..snap`), then
//! `.journal` is written and synced: that is the commit point. Every step after it checks
//! what is already done, so the same code finishes the operation live and at the next mount
//! (`recover`) after a kill at any point. Without a journal the leftovers of preparation
//! are removed: the state is the old one.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::WhiteoutFormat;
use super::layer::{DEFAULT_WORKDIR, remove_tree_contents};
use super::merge::Planned;
use crate::error::{Context, Error, Result};
use crate::sys;

/// Appended to the upper directory's name: where its snapshots live.
pub const DIR_SUFFIX: &str = ".snapshots";
const JOURNAL: &str = ".journal";
const PENDING: &str = ".pending";
const TRASH: &str = ".trash";
const TIMES: &str = ".times";
/// Inside the upper: copies of files open for writing, made before a snapshot's commit
/// point. Hidden (`.wh..wh.` names never show) and gone when the snapshot is done.
pub const SNAP_WORK: &str = ".wh..wh..snap";

/// A snapshot as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub seq: u32,
    pub name: String,
    /// Its layer directory.
    pub dir: PathBuf,
    /// When it was taken (seconds since the epoch).
    pub time: i64,
}

/// The snapshot directory of the upper `upper`.
pub fn store_of(upper: &Path) -> PathBuf {
    let mut name = upper.file_name().unwrap_or(OsStr::new("upper")).to_owned();
    name.push(DIR_SUFFIX);
    upper.with_file_name(name)
}

/// A snapshot name: what a person types, and safe in a directory name and in kernel
/// overlayfs' `lowerdir=` list (no `:` or `,`).
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid snapshot name {name:?}: use 1-64 letters, digits and . _ - + @, not \
             starting with . or -"
        ))
    }
}

fn dir_name(seq: u32, name: &str) -> String {
    format!("{seq:04}-{name}")
}

fn parse_dir_name(n: &str) -> Option<(u32, &str)> {
    let (seq, name) = n.split_once('-')?;
    if seq.len() < 4 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    check_name(name).ok()?;
    Some((seq.parse().ok()?, name))
}

/// The snapshots in `store`, oldest first (none if it does not exist).
pub fn list(store: &Path) -> Result<Vec<Snap>> {
    let entries = match std::fs::read_dir(store) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(e, "list snapshots").at(store.display())),
    };
    let times = read_times(store);
    let mut out = Vec::new();
    for e in entries {
        let e = e.op("list snapshots")?;
        let n = e.file_name();
        let Some((seq, name)) = n.to_str().and_then(parse_dir_name) else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let time = times
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, t)| *t)
            .or_else(|| e.metadata().ok().map(|m| m.ctime()))
            .unwrap_or(0);
        out.push(Snap {
            seq,
            name: name.to_string(),
            dir: e.path(),
            time,
        });
    }
    out.sort_by_key(|s| s.seq);
    Ok(out)
}

fn read_times(store: &Path) -> Vec<(u32, i64)> {
    let text = std::fs::read_to_string(store.join(TIMES)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (s, t) = l.split_once(' ')?;
            Some((s.parse().ok()?, t.trim().parse().ok()?))
        })
        .collect()
}

/// Rewrite `.times` for the snapshots there are, `seq` taken at `time`.
fn write_times(store: &Path, seq: u32, time: i64) -> Result<()> {
    let live: Vec<u32> = list(store)?.iter().map(|s| s.seq).collect();
    let mut times: Vec<(u32, i64)> = read_times(store)
        .into_iter()
        .filter(|(s, _)| live.contains(s) && *s != seq)
        .collect();
    if live.contains(&seq) {
        times.push((seq, time));
    }
    times.sort();
    let text: String = times.iter().map(|(s, t)| format!("{s} {t}\n")).collect();
    write_synced(store, TIMES, text.as_bytes())
}

/// Write `name` in `dir` whole or not at all, and durably.
fn write_synced(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .op("write")
        .map_err(|e| e.at(tmp.display()))?;
    f.write_all(data).op("write")?;
    f.sync_all().op("fsync")?;
    std::fs::rename(&tmp, dir.join(name))
        .op("rename")
        .map_err(|e| e.at(dir.join(name).display()))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir)
        .op("open")
        .map_err(|e| e.at(dir.display()))?;
    sys::fsync(f.as_raw_fd(), false).op("fsync dir")
}

/// What the journal of a snapshot or rollback records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    pub op: Op,
    /// Snapshot: the new snapshot's sequence number, name and time. Rollback: the target.
    pub seq: u32,
    pub name: String,
    pub time: i64,
    /// Inode number of the upper directory before the operation: once the upper path shows
    /// another, the exchange is done.
    pub upper_ino: u64,
    /// Snapshot: names of files open for writing, whose inode moves to the new upper while
    /// a copy (`SNAP_WORK/<work>`) stays in the snapshot.
    pub moves: Vec<Move>,
    /// Rollback: the snapshot directories discarded.
    pub discard: Vec<String>,
    /// Drop: where the layer above's redirected directories merge with the dropped one.
    pub planned: Vec<Planned>,
    /// Snapshot: directories (relative to the upper) whose times the moves change, with
    /// their times before ((atime, ns), (mtime, ns)): put back in both layers after.
    pub times: Vec<(PathBuf, DirTimes)>,
}

/// A directory's access and modification times.
pub type DirTimes = ((i64, i64), (i64, i64));

/// Times of the directory `rel` under `root`.
pub fn dir_times(root: RawFd, rel: &Path) -> Option<DirTimes> {
    let name = if rel.as_os_str().is_empty() {
        OsStr::new(".")
    } else {
        rel.as_os_str()
    };
    let st = sys::fstatat(root, name).ok()?;
    Some((
        (st.st_atime, st.st_atime_nsec),
        (st.st_mtime, st.st_mtime_nsec),
    ))
}

fn set_dir_times(root: &Path, rel: &Path, t: DirTimes) {
    let _ = sys::utimensat(
        libc::AT_FDCWD,
        root.join(rel).as_os_str(),
        Some(Some(t.0)),
        Some(Some(t.1)),
    );
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Op {
    #[default]
    Snapshot,
    Rollback,
    /// Merge the snapshot `seq` into the layer above it (see `merge.rs`).
    Drop,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Snapshot => "snapshot",
            Op::Rollback => "rollback",
            Op::Drop => "drop",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The name, relative to the upper.
    pub rel: PathBuf,
    /// The copy's name in `SNAP_WORK`.
    pub work: String,
    /// The inode that moves up (the one open for writing).
    pub ino: u64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Journal {
    fn encode(&self) -> String {
        let op = self.op.name();
        let mut s = format!(
            "op {op}\nseq {}\nname {}\ntime {}\nupper {}\n",
            self.seq, self.name, self.time, self.upper_ino
        );
        for m in &self.moves {
            s += &format!(
                "move {} {} {}\n",
                m.ino,
                m.work,
                hex(m.rel.as_os_str().as_bytes())
            );
        }
        for d in &self.discard {
            s += &format!("discard {d}\n");
        }
        for (rel, ((a, an), (m, mn))) in &self.times {
            s += &format!(
                "times {a} {an} {m} {mn} {}\n",
                hex(rel.as_os_str().as_bytes())
            );
        }
        for p in &self.planned {
            let x = p
                .x_path
                .as_ref()
                .map_or("-".to_string(), |x| hex(x.as_os_str().as_bytes()));
            s += &format!("plan {} {x}\n", hex(p.a_rel.as_os_str().as_bytes()));
        }
        s += "end\n";
        s
    }

    fn decode(text: &str) -> Option<Journal> {
        let mut j = Journal::default();
        let mut complete = false;
        for line in text.lines() {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            match k {
                "op" => {
                    j.op = [Op::Snapshot, Op::Rollback, Op::Drop]
                        .into_iter()
                        .find(|o| o.name() == v)?
                }
                "plan" => {
                    let (a, x) = v.split_once(' ')?;
                    let path = |h: &str| Some(PathBuf::from(OsString::from_vec(unhex(h)?)));
                    j.planned.push(Planned {
                        a_rel: path(a)?,
                        x_path: if x == "-" { None } else { Some(path(x)?) },
                    });
                }
                "seq" => j.seq = v.parse().ok()?,
                "name" => j.name = v.to_string(),
                "time" => j.time = v.parse().ok()?,
                "upper" => j.upper_ino = v.parse().ok()?,
                "move" => {
                    let mut f = v.split(' ');
                    let ino = f.next()?.parse().ok()?;
                    let work = f.next()?.to_string();
                    let rel = PathBuf::from(OsString::from_vec(unhex(f.next()?)?));
                    j.moves.push(Move { rel, work, ino });
                }
                "discard" => j.discard.push(v.to_string()),
                "times" => {
                    let f: Vec<&str> = v.split(' ').collect();
                    let n = |i: usize| f.get(i).and_then(|x| x.parse::<i64>().ok());
                    let rel = PathBuf::from(OsString::from_vec(unhex(f.get(4)?)?));
                    j.times.push((rel, ((n(0)?, n(1)?), (n(2)?, n(3)?))));
                }
                "end" => complete = true,
                _ => return None,
            }
        }
        complete.then_some(j)
    }
}

/// Open a directory by its path (O_PATH or O_RDONLY in `flags`), the path in any error.
pub(crate) fn open_dir_at(path: &Path, flags: i32) -> Result<OwnedFd> {
    sys::openat(
        libc::AT_FDCWD,
        path.as_os_str(),
        flags | libc::O_DIRECTORY,
        0,
    )
    .op("open")
    .map_err(|e| e.at(path.display()))
}

fn ino_at(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

fn exchange(a: &Path, b: &Path) -> Result<()> {
    sys::renameat2(
        libc::AT_FDCWD,
        a.as_os_str(),
        libc::AT_FDCWD,
        b.as_os_str(),
        sys::RENAME_EXCHANGE,
    )
    .op("exchange")
    .map_err(|e| e.at(format!("{} <-> {}", a.display(), b.display())))
}

fn rename(a: &Path, b: &Path) -> Result<()> {
    sys::renameat2(
        libc::AT_FDCWD,
        a.as_os_str(),
        libc::AT_FDCWD,
        b.as_os_str(),
        sys::RENAME_NOREPLACE,
    )
    .op("rename")
    .map_err(|e| e.at(format!("{} -> {}", a.display(), b.display())))
}

/// Remove a directory and everything below it (nothing if it is not there).
pub fn remove_tree(path: &Path) -> Result<()> {
    let fd = match sys::openat(
        libc::AT_FDCWD,
        path.as_os_str(),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    ) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::io(e, "remove").at(path.display())),
    };
    remove_tree_contents(fd.as_raw_fd()).map_err(|e| e.at(path.display()))?;
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(e, "remove").at(path.display()))
        }
        _ => Ok(()),
    }
}

/// A test may ask a daemon to die at a given step of an operation
/// (`UNIONMOUNT_CRASH_AT=<op>:<step>`), to show what a kill -9 there leaves.
fn crash_point(op: Op, step: u32) {
    if let Ok(v) = std::env::var("UNIONMOUNT_CRASH_AT")
        && v == format!("{}:{step}", op.name())
    {
        log::error!("UNIONMOUNT_CRASH_AT={v}: dying here as asked");
        std::process::abort();
    }
}

/// The snapshot store of one upper.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
    pub upper: PathBuf,
}

impl Store {
    pub fn of_upper(upper: &Path) -> Store {
        Store {
            dir: store_of(upper),
            upper: upper.to_path_buf(),
        }
    }

    pub fn list(&self) -> Result<Vec<Snap>> {
        list(&self.dir)
    }

    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Make the store directory if need be; it must be on the upper's filesystem (a
    /// snapshot is a rename).
    pub fn ensure(&self) -> Result<()> {
        let upper = std::fs::metadata(&self.upper)
            .op("stat")
            .map_err(|e| e.at(self.upper.display()))?;
        // Where it is (or would be made): checked first, so a refusal makes nothing.
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        let there = std::fs::metadata(if self.dir.exists() { &self.dir } else { parent })
            .op("stat")
            .map_err(|e| e.at(parent.display()))?;
        if there.dev() != upper.dev() {
            return Err(Error::new(
                libc::EXDEV,
                "snapshots are kept beside the upper, on its filesystem",
            )
            .at(format!(
                "{} would be on another filesystem than {} (is the upper a mount point?)",
                self.dir.display(),
                self.upper.display()
            )));
        }
        if !self.dir.exists() {
            // Readable as the upper is: the snapshots hold what it held.
            std::fs::DirBuilder::new()
                .mode(upper.mode() & 0o755)
                .create(&self.dir)
                .op("create the snapshot directory")
                .map_err(|e| e.at(self.dir.display()))?;
        }
        Ok(())
    }

    pub fn pending(&self) -> PathBuf {
        self.dir.join(PENDING)
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL)
    }

    /// A fresh, empty directory `.pending` with the upper root's owner, mode, xattrs and
    /// times: the next upper. Returns an fd on it.
    pub fn make_pending(&self) -> Result<OwnedFd> {
        self.make_pending_like(&self.upper)
    }

    /// `.pending` with the root attributes of the directory `like`.
    pub fn make_pending_like(&self, like: &Path) -> Result<OwnedFd> {
        let p = self.pending();
        remove_tree(&p)?;
        let up = open_dir_at(like, libc::O_PATH)?;
        let dir = sys::open_dir_path(libc::AT_FDCWD, self.dir.as_os_str())
            .op("open")
            .map_err(|e| e.at(self.dir.display()))?;
        super::copyup::copy_dir_shell(up.as_raw_fd(), dir.as_raw_fd(), OsStr::new(PENDING))
            .map_err(|e| e.at(p.display()))?;
        sys::open_dir_path(dir.as_raw_fd(), OsStr::new(PENDING))
            .op("open")
            .map_err(|e| e.at(p.display()))
    }

    /// Write the journal: the operation is decided.
    pub fn commit(&self, j: &Journal) -> Result<()> {
        write_synced(&self.dir, JOURNAL, j.encode().as_bytes())?;
        crash_point(j.op, 1);
        Ok(())
    }

    fn read_journal(&self) -> Result<Option<Journal>> {
        match std::fs::read_to_string(self.journal_path()) {
            Ok(t) => Ok(Journal::decode(&t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(e, "read journal").at(self.journal_path().display())),
        }
    }

    /// Carry out a committed operation; each step first checks whether it is done.
    /// `format`: how the upper marks what a merge (drop) writes there.
    pub fn finish(&self, j: &Journal, format: WhiteoutFormat) -> Result<()> {
        match j.op {
            Op::Snapshot => self.finish_snapshot(j),
            Op::Rollback => self.finish_rollback(j),
            Op::Drop => self.finish_drop(j, format),
        }
    }

    /// The layer a drop of snapshot `seq` merges into: the next newer one, or the upper.
    pub fn above(&self, seq: u32) -> Result<PathBuf> {
        let snaps = self.list()?;
        Ok(snaps
            .iter()
            .find(|s| s.seq > seq)
            .map_or(self.upper.clone(), |s| s.dir.clone()))
    }

    fn finish_drop(&self, j: &Journal, format: WhiteoutFormat) -> Result<()> {
        let x = self.dir.join(dir_name(j.seq, &j.name));
        if x.exists() {
            let a = self.above(j.seq)?;
            let (a_root, x_root) = (
                open_dir_at(&a, libc::O_RDONLY)?,
                open_dir_at(&x, libc::O_RDONLY)?,
            );
            super::merge::Merge {
                a_root: a_root.as_raw_fd(),
                x_root: x_root.as_raw_fd(),
                planned: &j.planned,
                format,
            }
            .run()
            .map_err(|e| e.at(format!("merging {} into {}", x.display(), a.display())))?;
            sys::fsync(a_root.as_raw_fd(), false).op("fsync")?;
            crash_point(Op::Drop, 2);
            self.trash()?;
            rename(&x, &self.trash_of_seq(j.seq, &j.name))?;
        }
        sync_dir(&self.dir)?;
        write_times(&self.dir, j.seq, 0)?;
        self.end()
    }

    fn finish_snapshot(&self, j: &Journal) -> Result<()> {
        let pending = self.pending();
        let snap = self.dir.join(dir_name(j.seq, &j.name));
        if ino_at(&self.upper) == Some(j.upper_ino) {
            let work = self.upper.join(SNAP_WORK);
            for m in &j.moves {
                let at = self.upper.join(&m.rel);
                let copy = work.join(&m.work);
                // The copy takes the name in the upper (soon the snapshot); the file open
                // for writing goes to the pending upper.
                if ino_at(&at) == Some(m.ino) && copy.exists() {
                    exchange(&at, &copy)?;
                }
                if ino_at(&copy) == Some(m.ino) {
                    rename(&copy, &pending.join(&m.rel))?;
                }
                crash_point(Op::Snapshot, 2);
            }
            sync_dir(&self.upper)?;
            exchange(&self.upper, &pending)?;
            crash_point(Op::Snapshot, 3);
        }
        if pending.exists() && !snap.exists() {
            rename(&pending, &snap)?;
        }
        // The moves changed their directories' times, in the snapshot and the new upper.
        for (rel, t) in &j.times {
            set_dir_times(&snap, rel, *t);
            if self.upper.join(rel).is_dir() {
                set_dir_times(&self.upper, rel, *t);
            }
        }
        sync_dir(&self.dir)?;
        crash_point(Op::Snapshot, 4);
        remove_tree(&snap.join(SNAP_WORK))?;
        remove_tree(&snap.join(DEFAULT_WORKDIR))?;
        write_times(&self.dir, j.seq, j.time)?;
        self.end()
    }

    fn finish_rollback(&self, j: &Journal) -> Result<()> {
        let pending = self.pending();
        if ino_at(&self.upper) == Some(j.upper_ino) {
            exchange(&self.upper, &pending)?;
            crash_point(Op::Rollback, 2);
        }
        let trash = self.trash()?;
        if pending.exists() {
            rename(&pending, &trash.join(format!("upper-{}", j.upper_ino)))?;
        }
        for d in &j.discard {
            let p = self.dir.join(d);
            if p.exists() {
                rename(&p, &trash.join(d))?;
            }
            crash_point(Op::Rollback, 3);
        }
        sync_dir(&self.dir)?;
        write_times(&self.dir, j.seq, j.time)?;
        self.end()
    }

    fn end(&self) -> Result<()> {
        match std::fs::remove_file(self.journal_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(e, "remove journal").at(self.journal_path().display()));
            }
            _ => {}
        }
        sync_dir(&self.dir)
    }

    /// The trash directory, made if need be.
    fn trash(&self) -> Result<PathBuf> {
        let trash = self.dir.join(TRASH);
        if !trash.exists() {
            std::fs::create_dir(&trash)
                .op("create")
                .map_err(|e| e.at(trash.display()))?;
        }
        Ok(trash)
    }

    /// Where a dropped snapshot's leftovers wait to be deleted.
    pub fn trash_of(&self, s: &Snap) -> PathBuf {
        self.trash_of_seq(s.seq, &s.name)
    }

    fn trash_of_seq(&self, seq: u32, name: &str) -> PathBuf {
        self.dir.join(TRASH).join(dir_name(seq, name))
    }

    /// Discarded directories: deleted after the operation, or at the next mount.
    pub fn empty_trash(&self) -> Result<()> {
        remove_tree(&self.dir.join(TRASH))
    }

    /// `empty_trash` on a thread of its own: an operation does not wait for it.
    pub fn empty_trash_later(&self) {
        let store = self.clone();
        std::thread::spawn(move || {
            if let Err(e) = store.empty_trash() {
                log::warn!("emptying {}: {e}", store.dir.display());
            }
        });
    }

    /// At mount, before the layers are opened: finish an operation a crash interrupted, or
    /// remove what an uncommitted one prepared. `writable`: false for a read-only mount,
    /// which cannot, and refuses to show a half-done state.
    pub fn recover(&self, writable: bool, format: WhiteoutFormat) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        let journal = self.read_journal()?;
        if writable {
            // Half-written: a whole one was never renamed into place.
            for name in [JOURNAL, TIMES] {
                let _ = std::fs::remove_file(self.dir.join(format!("{name}.tmp")));
            }
        }
        if !writable {
            if journal.is_some() {
                return Err(Error::new(
                    libc::EROFS,
                    "a snapshot or rollback was interrupted; mount read-write once to finish it",
                )
                .at(self.dir.display()));
            }
            return Ok(());
        }
        match journal {
            Some(j) => {
                log::info!(
                    "finishing an interrupted {:?} in {}",
                    j.op,
                    self.dir.display()
                );
                self.finish(&j, format)?;
            }
            None => {
                remove_tree(&self.pending())?;
                remove_tree(&self.upper.join(SNAP_WORK))?;
                let _ = std::fs::remove_file(self.journal_path());
            }
        }
        self.empty_trash()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip_and_torn_journal_refused() {
        let j = Journal {
            op: Op::Snapshot,
            seq: 3,
            name: "before-apt".into(),
            time: 1_700_000_000,
            upper_ino: 42,
            moves: vec![Move {
                rel: PathBuf::from("a dir/f\nx"),
                work: "3-0".into(),
                ino: 7,
            }],
            discard: vec!["0004-x".into()],
            times: vec![("a b".into(), ((1, 2), (3, 4)))],
            planned: vec![
                Planned {
                    a_rel: "b/c".into(),
                    x_path: Some("a".into()),
                },
                Planned {
                    a_rel: "d".into(),
                    x_path: None,
                },
            ],
        };
        let text = j.encode();
        assert_eq!(Journal::decode(&text), Some(j));
        // Cut before "end": not a journal (it is written whole by rename, but be strict).
        assert_eq!(Journal::decode(&text[..text.len() - 4]), None);
    }

    #[test]
    fn names_are_checked_and_listed_in_order() {
        assert!(check_name("before-apt_2.0").is_ok());
        for bad in ["", ".x", "-x", "a/b", "a:b", "a,b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("up.snapshots");
        std::fs::create_dir(&store).unwrap();
        for d in ["0010-b", "0002-a", ".pending", "junk", "0003-.x"] {
            std::fs::create_dir(store.join(d)).unwrap();
        }
        let names: Vec<_> = list(&store).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(store_of(&tmp.path().join("up")), store);
    }
}
