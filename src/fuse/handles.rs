//! Open files and directory snapshots, by FUSE file handle.

use std::fs::File;
use std::sync::{Arc, Weak};

use fuser::BackingId;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

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

#[derive(Debug)]
pub struct OpenDir {
    pub node: Arc<Node>,
    /// The listing taken at the first readdir (or a rewind), shared by the replies.
    pub entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

#[derive(Debug)]
pub enum Handle {
    File(OpenFile),
    Dir(OpenDir),
}

#[derive(Debug, Default)]
pub struct Handles {
    map: DashMap<u64, Arc<Handle>>,
    next: AtomicU64,
}

impl Handle {
    pub fn node(&self) -> &Arc<Node> {
        match self {
            Handle::File(f) => &f.node,
            Handle::Dir(d) => &d.node,
        }
    }

    /// Tied to its inode (see `Node::opened`): open for writing, or in passthrough.
    fn pins(&self) -> bool {
        matches!(self, Handle::File(f)
            if f.flags & libc::O_ACCMODE != libc::O_RDONLY || f.backing.is_some())
    }
}

impl Handles {
    pub fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        h.node().opened(h.pins());
        self.map.insert(fh, Arc::new(h));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.map.get(&fh).map(|h| h.clone())
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        let h = self.map.remove(&fh).map(|(_, h)| h)?;
        h.node().closed(h.pins());
        Some(h)
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
/// use passthrough, all opens of one real file sharing one backing id; so do files whose
/// set-id bits a write must kill (see `UnionFs::io_mode`).
#[derive(Debug, Default)]
pub struct Backings {
    map: DashMap<u64, NodeIo>,
}

impl Backings {
    pub fn choose(
        &self,
        id: u64,
        real: (u64, u64),
        through_daemon: bool,
        register: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Option<IoMode> {
        let mut io = self.map.entry(id).or_default();
        if let Some(live) = io.backing.upgrade() {
            // Another real file (opened just before a copy-up made this one) cannot be
            // served beside it: the caller opens the node again.
            return (io.real == real).then_some(IoMode::Passthrough(live));
        }
        if through_daemon || io.cached > 0 {
            io.cached += 1;
            return Some(IoMode::Cached);
        }
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
        for h in self.map.iter() {
            match &**h.value() {
                Handle::File(f) => {
                    let mut file = f.file.write();
                    file.1 = map(file.1).unwrap_or(0);
                }
                // A listing's layers said which layers above an entry need no asking; a
                // layer put in above (the old upper, now a snapshot) may hold the name now:
                // a lookup from the listing asks every layer again.
                Handle::Dir(d) => {
                    let mut entries = d.entries.lock();
                    if let Some(list) = entries.as_mut() {
                        for e in Arc::make_mut(list).iter_mut() {
                            e.layer = 0;
                        }
                    }
                }
            }
        }
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
            // Attributes only (offset -1): a page invalidation waits for pages a read in
            // flight holds. A file whose data changed has a new node (see `relocate`).
            let res = match c {
                Changed::Entry { .. } if by_epoch => continue,
                Changed::Entry { parent, name } => n.inval_entry(fuser::INodeNo(*parent), name),
                Changed::Inode(id) => n.inval_inode(fuser::INodeNo(*id), -1, 0),
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
