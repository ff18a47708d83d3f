//! Opening a merged entry's file for I/O: for writing it is copied up first (overlayfs'
//! file.c). An `O_TRUNC` open may hold its truncation back from the real file until the
//! file's data next changes (see `HeldTruncations`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Union;
use super::fileattr::Change;
use super::node::Node;
use crate::error::{Context, Result};
use crate::sys::{self, Stat};

impl Union {
    /// Open a node's file for I/O; opening for writing copies it up first.
    pub fn open(&self, node: &Arc<Node>, flags: i32) -> Result<(File, usize)> {
        self.open_killing(node, flags, false, false)
            .map(|(f, layer, _)| (f, layer))
    }

    /// `open`, and with `kill_suidgid` (an `O_TRUNC` open by a caller without CAP_FSETID)
    /// kill the set-id bits and file capability of the truncated upper file, as the
    /// truncate would on a local filesystem (see `kill_suidgid`). With `hold`, an `O_TRUNC`
    /// open for writing holds its truncation (see `HeldTruncations`). The bool: the mode
    /// changed.
    pub fn open_killing(
        &self,
        node: &Arc<Node>,
        flags: i32,
        kill_suidgid: bool,
        hold: bool,
    ) -> Result<(File, usize, bool)> {
        let opener = hold.then_some(Opener::Open);
        self.open_holding(node, flags, kill_suidgid, opener)
    }

    /// `open_killing`, holding the truncation (`opener`: what makes it when closed).
    fn open_holding(
        &self,
        node: &Arc<Node>,
        flags: i32,
        kill_suidgid: bool,
        opener: Option<Opener>,
    ) -> Result<(File, usize, bool)> {
        let _place = node.place.read();
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writing {
            let change = Change::Write {
                append: flags & libc::O_APPEND != 0,
                truncate: flags & libc::O_TRUNC != 0,
            };
            self.check_protection(node, change, "open")?;
        }
        let truncating = flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY;
        let opener = opener.filter(|_| truncating && node.kind == libc::S_IFREG);
        let loc = if truncating {
            self.copy_up_truncated(node)?
        } else if writing {
            self.copy_up(node)?
        } else {
            // A metadata-only copy reads its data from the lower file.
            let data = node.state().data().cloned();
            match data {
                Some(d) => d,
                None => self.locate(node)?,
            }
        };
        let real_flags = match opener {
            Some(_) => flags & !libc::O_TRUNC,
            None => flags,
        };
        let f = self
            .open_branch(loc.raw(), &loc.name, real_flags)
            .op("open")
            .map_err(|e| e.at(node.path()).in_layer(loc.layer))?;
        if let Some(opener) = opener
            && !self.held.hold(node, &f, opener)?
        {
            // The unmount has begun: nothing is held any more.
            sys::ftruncate(f.as_raw_fd(), 0)
                .op("truncate")
                .map_err(|e| e.at(node.path()).in_layer(loc.layer))?;
        }
        let killed = kill_suidgid
            && flags & libc::O_TRUNC != 0
            && loc.layer == 0
            && self.kill_suidgid(node, Some(&f))?;
        Ok((f, loc.layer, killed))
    }

    /// A descriptor opened in `layer` before the node was copied up reads the lower file,
    /// and its writes would miss the copy: the copy, opened the same way, to use instead.
    /// Not while a truncation is held: the copy is the truncated file, and what the
    /// kernel reads meanwhile is the old data.
    pub fn follow_copy_up(&self, node: &Arc<Node>, layer: usize, flags: i32) -> Option<File> {
        if layer == 0 || !node.data_in_upper() || !self.held.get(node.ino).is_empty() {
            return None;
        }
        self.reopen_copy(node, flags).ok()
    }

    /// May a file opened in `layer` be copied up while it is open (so its data move)?
    pub fn may_copy_up(&self, layer: usize) -> bool {
        layer > 0 && self.writable()
    }

    /// Reopen a node's file after it was copied up, for a descriptor opened on the lower
    /// file before: the copy itself, even if its name has since gone or been reused.
    pub fn reopen_copy(&self, node: &Arc<Node>, flags: i32) -> Result<File> {
        // Opened the same way, but creating and truncating were done the first time.
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
        let copy = node.state().kept().cloned().filter(|k| k.layer == 0);
        match copy.map(|k| k.fd) {
            Some(fd) => sys::openat(
                libc::AT_FDCWD,
                sys::proc_path(fd.as_raw_fd(), "".as_ref()).as_os_str(),
                flags,
                0,
            )
            .map(File::from)
            .op("reopen copy"),
            None => Ok(self.open(node, flags)?.0),
        }
    }
}

/// Truncations to zero by `O_TRUNC` opens (and truncates to 0, `truncate_holding`), held back
/// from the real file until its data next changes: a write, truncate or other setattr,
/// fallocate, copy_file_range, lseek or fsync of the file, the close of the open that
/// truncated, a snapshot or rollback, a tool that reads the upper (diff, export, commit),
/// or the unmount; and a second after the open at the latest. Meanwhile the file shows
/// size 0 and the time of the open, and reads get the old data.
///
/// Why: where the kernel reads a file through its page cache (FUSE without passthrough),
/// a read it sent before it learned of the truncation, answered after it, comes back
/// short; the kernel then fills the rest of the page with zeros, and if any attribute
/// reply came in between (another reader's stat) it keeps the old size, so the reader
/// gets zeros as long as the old file. The kernel learns of the truncation from the OPEN
/// reply, after the daemon has done it, with no lock a reader waits for. Held, the
/// truncation reaches the real file only through a request the truncating process sends
/// after its open returned, by which time the kernel knows the size is 0 and sends no
/// read for the old data; a read already under way finds the old data, as it would have
/// had it arrived a moment earlier.
#[derive(Default)]
pub struct HeldTruncations {
    /// Fast path: most requests find none held.
    count: AtomicUsize,
    list: parking_lot::Mutex<Vec<Arc<Held>>>,
    /// Wakes the thread that makes a truncation held `HOLD_AT_MOST` (see `reap`).
    wake: parking_lot::Condvar,
    reaper: std::sync::OnceLock<()>,
    closed: AtomicBool,
}

/// How long a truncation stays held at most, whatever the truncating process does: a read
/// the kernel sent before it knew has long been answered, and the upper has it about as
/// soon as a local filesystem's journal would (ext4 commits every 5 s).
const HOLD_AT_MOST: Duration = Duration::from_secs(1);

struct Held {
    /// The node's inode number, which finds it: a node forgotten by the kernel and
    /// looked up again has a new id, not a new number.
    ino: u64,
    node: Arc<Node>,
    /// The truncating open's descriptor: its close makes the truncation, not another's
    /// (the kernel sends a close late, when the same file may be truncated anew). -1 for
    /// a truncate, which no open stands for.
    opener: i32,
    /// The truncating open's file (a second descriptor), writable.
    file: File,
    /// When the open truncated: the mtime and ctime shown meanwhile.
    since: (i64, i64),
    at: Instant,
    /// Shared by a read, exclusive while the truncation is made and the change that
    /// asked for it done, so no read sees the file between the two.
    lock: parking_lot::RwLock<()>,
    done: AtomicBool,
}

/// What makes a held truncation at its close.
#[derive(Clone, Copy)]
enum Opener {
    /// The open that truncated (`O_TRUNC`): its RELEASE.
    Open,
    /// A truncate: no open makes it.
    Truncate,
}

impl HeldTruncations {
    /// Hold the truncation of `node`'s file `file` (opened without `O_TRUNC`); false once
    /// the unmount has begun, when the caller truncates at once.
    fn hold(self: &Arc<Self>, node: &Arc<Node>, file: &File, opener: Opener) -> Result<bool> {
        let mut list = self.list.lock();
        if self.closed.load(Ordering::Acquire) {
            return Ok(false);
        }
        // One truncation already held stands for this one too: made later, this one would
        // undo what the other open wrote meanwhile. (One made, whose change is still under
        // way, does not: this one goes after it, see `get`.)
        if list
            .iter()
            .any(|h| h.ino == node.ino && !h.done.load(Ordering::Acquire))
        {
            return Ok(true);
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or((0, 0), |d| {
                (d.as_secs() as i64, i64::from(d.subsec_nanos()))
            });
        list.push(Arc::new(Held {
            ino: node.ino,
            node: node.clone(),
            opener: match opener {
                Opener::Open => file.as_raw_fd(),
                Opener::Truncate => -1,
            },
            file: file
                .try_clone()
                .op("open")
                .map_err(|e| e.at(node.path()).in_layer(0))?,
            since,
            at: Instant::now(),
            lock: Default::default(),
            done: AtomicBool::new(false),
        }));
        self.count.store(list.len(), Ordering::Release);
        if list.len() == 1 {
            // The reaper waits for one without a deadline.
            self.wake.notify_one();
        }
        drop(list);
        self.reaper.get_or_init(|| {
            let me = self.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("held-truncations".into())
                .spawn(move || me.reap())
            {
                log::warn!("no thread to bound held truncations ({e}): each waits for its file's next change");
            }
        });
        Ok(true)
    }

    /// The truncations listed for inode number `ino`, oldest first: at most one not made,
    /// and before it any made whose change is still under way (see `make`).
    fn get(&self, ino: u64) -> Vec<Arc<Held>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let list = self.list.lock();
        list.iter().filter(|h| h.ino == ino).cloned().collect()
    }

    /// Make the last of `held` (one inode's, from `get`) after the changes of those before
    /// it, then run `change`.
    fn make_last<T>(&self, held: &[Arc<Held>], change: impl FnOnce() -> T) -> Result<T> {
        let Some((last, before)) = held.split_last() else {
            return Ok(change());
        };
        for h in before {
            drop(h.lock.read());
        }
        self.make(last, change)
    }

    /// Make `h` on the real file, then run `change`, with no read in between.
    fn make<T>(&self, h: &Arc<Held>, change: impl FnOnce() -> T) -> Result<T> {
        let _alone = h.lock.write();
        if !h.done.load(Ordering::Acquire) {
            let fd = h.file.as_raw_fd();
            // The mtime shown meanwhile, the open's, as a local filesystem gives it (a
            // write after sets its own).
            sys::ftruncate(fd, 0)
                .and_then(|()| sys::futimens(fd, None, Some(Some(h.since))))
                .op("truncate")
                .map_err(|e| e.at(h.node.path()).in_layer(0))?;
            h.done.store(true, Ordering::Release);
        }
        let out = change();
        let mut list = self.list.lock();
        list.retain(|other| !Arc::ptr_eq(other, h));
        self.count.store(list.len(), Ordering::Release);
        Ok(out)
    }

    /// The reaper's loop: make each truncation once it has been held `HOLD_AT_MOST`.
    fn reap(self: Arc<Self>) {
        let mut list = self.list.lock();
        while !self.closed.load(Ordering::Acquire) {
            let Some(oldest) = list.iter().min_by_key(|h| h.at).cloned() else {
                self.wake.wait(&mut list);
                continue;
            };
            let due = oldest.at + HOLD_AT_MOST;
            if Instant::now() < due {
                self.wake.wait_until(&mut list, due);
                continue;
            }
            parking_lot::MutexGuard::unlocked(&mut list, || {
                if let Err(e) = self.make(&oldest, || ()) {
                    // Not held on: the size shown would stay wrong for good.
                    log::warn!("{e}");
                    oldest.done.store(true, Ordering::Release);
                    let mut list = self.list.lock();
                    list.retain(|other| !Arc::ptr_eq(other, &oldest));
                    self.count.store(list.len(), Ordering::Release);
                }
            });
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _list = self.list.lock();
        self.wake.notify_all();
    }
}

impl Union {
    /// Run `read` on a node's file; `true` tells it a truncation is held (the file
    /// still has the old data, which only a read the kernel sent before the truncation
    /// should get: see `HeldTruncations`).
    pub fn read_held<T>(&self, node: &Node, read: impl FnOnce(bool) -> T) -> T {
        let held = self.held.get(node.ino);
        // Every one listed: a made one's change may still be under way.
        let _shared: Vec<_> = held.iter().map(|h| h.lock.read()).collect();
        read(held.iter().any(|h| !h.done.load(Ordering::Acquire)))
    }

    /// Make a node's held truncation (if any) on the real file, then run `change`, with
    /// no read in between.
    pub fn truncation_done<T>(&self, node: &Node, change: impl FnOnce() -> T) -> Result<T> {
        self.held.make_last(&self.held.get(node.ino), change)
    }

    /// A truncate to size 0 (`truncate`, `ftruncate`) held as an `O_TRUNC` open's is, for
    /// the same reason (see `HeldTruncations`), and with `kill_suidgid` the set-id bits
    /// killed. The file's attributes, and whether the mode changed.
    pub fn truncate_holding(&self, node: &Arc<Node>, kill_suidgid: bool) -> Result<(Stat, bool)> {
        let flags = libc::O_WRONLY | libc::O_TRUNC;
        let (_, _, killed) =
            self.open_holding(node, flags, kill_suidgid, Some(Opener::Truncate))?;
        Ok((self.getattr(node)?, killed))
    }

    /// The open that truncated (`opener`, its descriptor) is closed: its truncation, if
    /// still held, is made.
    pub fn truncation_closed(&self, node: &Node, opener: &File) -> Result<()> {
        let held = self.held.get(node.ino);
        match held.iter().position(|h| h.opener == opener.as_raw_fd()) {
            Some(i) => self.held.make_last(&held[..=i], || ()),
            None => Ok(()),
        }
    }

    /// Every held truncation made (before a snapshot, a rollback, the unmount, or a tool
    /// that reads the upper): the first error, after trying them all.
    pub fn truncations_done(&self) -> Result<()> {
        let held: Vec<_> = self.held.list.lock().clone();
        let mut first = Ok(());
        for h in held {
            if let Err(e) = self.held.make(&h, || ()) {
                log::warn!("{e}");
                first = first.and(Err(e));
            }
        }
        first
    }

    /// The unmount: none held from now on, and every held truncation made.
    pub(super) fn truncations_closed(&self) {
        self.held.close();
        let _ = self.truncations_done();
    }

    /// A stat as the mount shows it while the file's truncation is held: empty, changed
    /// at the open.
    pub(super) fn held_stat(&self, node: &Node, st: &mut Stat) {
        if let Some(h) = self
            .held
            .get(node.ino)
            .iter()
            .find(|h| !h.done.load(Ordering::Acquire))
        {
            st.st_size = 0;
            st.st_blocks = 0;
            (st.st_mtime, st.st_mtime_nsec) = h.since;
            (st.st_ctime, st.st_ctime_nsec) = h.since;
        }
    }
}
