//! Open files by FUSE file handle, and the directory listings the kernel is reading.

use std::fs::File;
use std::sync::{Arc, Weak};

use fuser::BackingId;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::RwLock;

use crate::union::node::Node;
use crate::union::readdir::DirEntry;

#[derive(Debug)]
pub struct OpenFile {
    pub node: Arc<Node>,
    /// The real file, and the layer it was opened in: a read-only open of a lower file is
    /// reopened from the upper once the file has been copied up, so readers see writes.
    pub file: RwLock<(File, usize)>,
    pub flags: i32,
    /// Keeps the kernel's backing id alive while this handle is open.
    pub backing: Option<Arc<BackingId>>,
}

/// Open files by handle, and listings by directory node id. Directories have no handle:
/// the kernel opens them without asking (`FUSE_NO_OPENDIR_SUPPORT`) and reads a listing
/// from offset 0 to its end into its own cache, so a listing lives from its first read
/// to the one past its end (the kernel knows the end by an empty reply).
#[derive(Debug, Default)]
pub struct Handles {
    map: DashMap<u64, Arc<OpenFile>>,
    next: AtomicU64,
    listings: DashMap<u64, Arc<Vec<DirEntry>>>,
}

impl OpenFile {
    /// Tied to its inode (see `Node::opened`): open for writing, or in passthrough.
    fn pins(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_RDONLY || self.backing.is_some()
    }
}

impl Handles {
    pub fn insert(&self, f: OpenFile) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        f.node.opened(f.pins());
        self.map.insert(fh, Arc::new(f));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.map.get(&fh).map(|h| h.clone())
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<OpenFile>> {
        let f = self.map.remove(&fh).map(|(_, f)| f)?;
        f.node.closed(f.pins());
        Some(f)
    }

    /// The kernel forgot (some references to) node `id`: a listing it stopped reading
    /// half-way goes (taken again if needed).
    pub fn forgotten(&self, id: u64) {
        self.listings.remove(&id);
    }

    /// The listing of directory `id` being read: a fresh one from offset 0 (rewinddir must
    /// see the directory as it is now), else the one the earlier parts came from.
    pub fn listing(
        &self,
        id: u64,
        offset: u64,
        take: impl FnOnce() -> crate::error::Result<Vec<DirEntry>>,
    ) -> crate::error::Result<Arc<Vec<DirEntry>>> {
        if offset != 0
            && let Some(l) = self.listings.get(&id)
        {
            return Ok(l.clone());
        }
        let l = Arc::new(take()?);
        self.listings.insert(id, l.clone());
        Ok(l)
    }

    /// The kernel asked past the end of directory `id`: its listing is done with.
    pub fn listed(&self, id: u64) {
        self.listings.remove(&id);
    }
}

/// How the kernel does a file's I/O.
#[derive(Debug)]
pub enum IoMode {
    /// Reads and writes go straight to the real file (FUSE passthrough).
    Passthrough(Arc<BackingId>),
    /// Through the daemon, with the page cache kept across opens.
    Cached,
}

#[derive(Debug, Default)]
struct NodeIo {
    backing: Weak<BackingId>,
    real: (u64, u64),
    cached: usize,
}

/// The I/O mode of every open node, by node id. The kernel holds an inode in one mode at a time: while
/// a passthrough open is live every other open must be passthrough to the same backing
/// file, and while a cached open is live none may be passthrough (either mistake is EIO).
/// So a lower file that may still be copied up is read through the daemon: its upper copy
/// will be a different backing file. Upper files, and every file of a read-only stack,
/// use passthrough, all opens of one real file sharing one backing id; files whose set-id
/// bits a write must kill go through the daemon too (see `UnionFs::io_mode`).
#[derive(Debug, Default)]
pub struct Backings {
    map: DashMap<u64, NodeIo>,
}

impl Backings {
    /// The mode of a new open of node `id`. `real` gives the opened file's (st_dev,
    /// st_ino), asked only where a passthrough is live or begins (None: EIO).
    pub fn choose(
        &self,
        id: u64,
        real: impl FnOnce() -> Option<(u64, u64)>,
        through_daemon: bool,
        register: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Option<IoMode> {
        let mut io = self.map.entry(id).or_default();
        if let Some(live) = io.backing.upgrade() {
            // Another real file (opened just before a copy-up made this one) cannot be
            // served beside it: the caller opens the node again.
            return (io.real == real()?).then_some(IoMode::Passthrough(live));
        }
        if through_daemon || io.cached > 0 {
            io.cached += 1;
            return Some(IoMode::Cached);
        }
        let real = real()?;
        match register() {
            Ok(id) => {
                let id = Arc::new(id);
                io.backing = Arc::downgrade(&id);
                io.real = real;
                Some(IoMode::Passthrough(id))
            }
            Err(e) => {
                log::debug!("passthrough refused for node {id}: {e}");
                io.cached += 1;
                Some(IoMode::Cached)
            }
        }
    }

    /// The real file (st_dev, st_ino) of node `id`'s live passthrough backing, if any.
    pub fn live(&self, id: u64) -> Option<(u64, u64)> {
        let io = self.map.get(&id)?;
        (io.backing.strong_count() > 0).then_some(io.real)
    }

    /// A handle of node `id` closed (its backing id already dropped).
    pub fn release(&self, id: u64, was_cached: bool) {
        if let Some(mut io) = self.map.get_mut(&id)
            && was_cached
        {
            io.cached = io.cached.saturating_sub(1);
        }
        self.map.remove_if(&id, |_, io| {
            io.cached == 0 && io.backing.strong_count() == 0
        });
    }
}

impl Handles {
    /// The stack was swapped: every open file takes the new layer numbers (a file of a
    /// discarded layer counts as the upper's: it is reached by its descriptor only, and
    /// nothing is copied up from it).
    pub fn restacked(&self, map: &dyn Fn(usize) -> Option<usize>) {
        for f in self.map.iter() {
            let mut file = f.file.write();
            file.1 = map(file.1).unwrap_or(0);
        }
        // Listings being read were taken from the old layers (a rollback may have removed
        // their entries, a snapshot put a layer above them): the kernel's next read takes a
        // fresh one, which resumes at the same place (positions are name cookies).
        self.listings.clear();
    }
}

/// The FUSE side of a swap of the stack (see `union::snapshot`): open files and listings
/// take the new layer numbers, and the kernel drops what it cached of what changed.
pub struct StackWatcher {
    pub handles: Arc<Handles>,
    pub notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

impl crate::union::snapshot::Watcher for StackWatcher {
    fn restacked(&self, map: &dyn Fn(usize) -> Option<usize>) {
        self.handles.restacked(map);
    }

    fn changed(&self, changes: &[crate::union::snapshot::Changed]) {
        use crate::union::snapshot::Changed;
        let Some(n) = self.notifier.get() else {
            return;
        };
        // One epoch step (Linux 6.16+) has the kernel look up again every name it cached,
        // without taking a directory lock: a name's invalidation waits for the lock a
        // request in flight holds, and a daemon killed meanwhile could then never exit.
        let by_epoch = match n.inc_epoch() {
            Ok(()) => true,
            Err(e) => {
                log::debug!("epoch notification refused ({e}): invalidating name by name");
                false
            }
        };
        for c in changes {
            // A file's attributes only (offset -1): a page invalidation waits for pages a
            // read in flight holds. A file whose data changed has a new node (see
            // `relocate`). A directory's pages are its cached listing, which the kernel
            // locks only while it copies a reply in.
            let res = match c {
                Changed::Entry { .. } if by_epoch => continue,
                Changed::Entry { parent, name } => n.inval_entry(fuser::INodeNo(*parent), name),
                Changed::Inode(id) => n.inval_inode(fuser::INodeNo(*id), -1, 0),
                Changed::Listing(id) => n.inval_inode(fuser::INodeNo(*id), 0, 0),
            };
            // ENOENT: the kernel had nothing cached there.
            if let Err(e) = res
                && e.raw_os_error() != Some(libc::ENOENT)
            {
                log::debug!("invalidating {c:?} in the kernel: {e}");
            }
        }
    }
}
