//! The filesystem's meaning, independent of FUSE: a stack of layers resolved top-down,
//! whiteouts, copy-up, and the namespace operations. Nothing here imports fuser, so unit
//! tests drive it on temp-dir branches without mounting.

pub mod copyup;
pub mod dir;
pub mod events;
pub mod file;
pub mod fileattr;
pub mod idmap;
pub mod index;
pub mod inode;
pub mod layer;
pub mod merge;
pub mod node;
pub mod readdir;
pub mod rename;
pub mod resolve;
pub mod settings;
pub mod snapshot;
pub mod snapstore;
pub mod whiteout;
pub mod xattr;

#[cfg(test)]
mod tests;

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Context, Error, Result};
use crate::sys::{self, Stat};
use layer::LayerStack;
use node::{DirSlot, HeldFd, LayerDir, Node, NodeState, NodeTable, Rare};
pub use settings::{Branch, Settings, WhiteoutFormat};

/// The inode number the merged root shows (as its node id, `node::ROOT_ID`, is 1). No other
/// node shows it (see `Union::ino_of`).
pub const ROOT_INO: u64 = 1;

/// Upper (st_dev, st_ino) -> (the inode number it shows, metadata only): see
/// `Union::origins`. Each record is tagged with the snapshot level it was made at (the
/// sequence number of the newest snapshot then): a rollback to snapshot N discards the
/// layers those made at N or later live in, and their inodes may be given to new files.
#[derive(Debug, Default)]
pub(crate) struct Origins {
    map: dashmap::DashMap<(u64, u64), (u64, bool, u32)>,
    level: std::sync::atomic::AtomicU32,
}

impl Origins {
    pub fn get(&self, key: &(u64, u64)) -> Option<(u64, bool)> {
        self.map.get(key).map(|v| (v.0, v.1))
    }

    pub fn insert(&self, key: (u64, u64), record: (u64, bool)) {
        let level = self.level.load(Ordering::Relaxed);
        self.map.insert(key, (record.0, record.1, level));
    }

    pub fn remove(&self, key: &(u64, u64)) -> Option<((u64, u64), (u64, bool))> {
        self.map.remove(key).map(|(k, v)| (k, (v.0, v.1)))
    }

    /// Records made from now on live above the snapshot `seq` (0: none).
    pub fn set_level(&self, seq: u32) {
        self.level.store(seq, Ordering::Relaxed);
    }

    /// Forget the records of inodes a rollback to snapshot `seq` discarded.
    pub fn discard_from(&self, seq: u32) {
        self.map.retain(|_, v| v.2 < seq);
    }
}

/// See `Union::dir_marks`.
#[derive(Debug, Default)]
pub(crate) struct DirMarks {
    pub opaque: bool,
    pub xwhiteouts: bool,
    pub redirect: Option<whiteout::Redirect>,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub whiteout: WhiteoutFormat,
    /// Skip the fsync that makes a copy-up durable before it is published.
    pub volatile: bool,
    /// A failed chown reports success (fuse-overlayfs' squash_to_*: the owner shown is the
    /// squashed one anyway).
    pub squash: bool,
    /// `xattr_permissions=`: the xattr the upper keeps owners and modes of new and changed
    /// files and directories in, instead of chown and chmod.
    pub owner_xattr: Option<&'static str>,
    /// Read the branches' files without marking their access time (`noatime`).
    pub noatime: bool,
}

pub struct Union {
    /// The layers, swapped whole by a snapshot or rollback (see `snapshot.rs`), under the
    /// gate held exclusively.
    stack: parking_lot::RwLock<Arc<LayerStack>>,
    /// Held shared by every operation, exclusively while the stack is swapped: no operation
    /// ever sees layer numbers of two stacks.
    gate: parking_lot::RwLock<()>,
    /// Told of every swap of the stack (the FUSE adapter's open files keep layer numbers).
    pub(crate) watchers: parking_lot::Mutex<Vec<Arc<dyn snapshot::Watcher>>>,
    pub nodes: NodeTable,
    pub opts: Options,
    /// What the union was made of: a swap of the stack opens it again from these.
    pub settings: Settings,
    /// There is an upper to write to (a swap of the stack keeps it so): asked on every
    /// lookup, so kept here rather than asked of the stack.
    writable: bool,
    /// Bumped by every rename of a directory that spans lower layers: locations computed
    /// before it may be stale and are recomputed on next use.
    generation: AtomicU64,
    /// Counts copy-ups: a probe that began before a node's copy-up may have seen where the
    /// node was before it, and must not move it back (see `NodeState::changed`).
    changes: AtomicU64,
    /// Distinct st_dev values of the layers, in stack order: tags inode numbers so files
    /// from different filesystems never share one.
    devs: Vec<u64>,
    /// Tags of filesystems met below a branch root (mounts inside a branch), given out as
    /// they are first seen.
    more_devs: dashmap::DashMap<u64, u64>,
    more_dev_count: AtomicU64,
    /// Upper (st_dev, st_ino) -> the inode number it shows: set by copy-up and rename, so a
    /// node keeps its number for the life of the mount even where no xattr can record it.
    pub(crate) origins: Origins,
    /// How many more lower-directory fds nodes may hold open (see `DirSlot`).
    fd_budget: Arc<std::sync::atomic::AtomicIsize>,
    /// Counters and the live event stream (`unionmount layers`, `trace`).
    pub events: events::Events,
    /// Whether a read-only stack's branches hold any xattr (see `xattr.rs`).
    xattr_scan: xattr::Scan,
    /// Truncations to 0 not yet made on the real file (see `file::HeldTruncations`).
    held: Arc<file::HeldTruncations>,
}

impl std::fmt::Debug for Union {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Union")
            .field("stack", &self.stack())
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl Union {
    pub fn new(settings: &Settings) -> Result<Union> {
        let stack = LayerStack::open(settings)?;
        let writable = stack.upper().is_some();
        let mut devs: Vec<u64> = Vec::new();
        for l in &stack.layers {
            if !devs.contains(&l.dev) {
                devs.push(l.dev);
            }
        }
        let u = Union {
            stack: parking_lot::RwLock::new(Arc::new(stack)),
            gate: parking_lot::RwLock::new(()),
            watchers: Default::default(),
            nodes: NodeTable::default(),
            settings: settings.clone(),
            writable,
            opts: Options {
                whiteout: settings.whiteout,
                volatile: settings.volatile,
                squash: settings.owners.squashes(),
                owner_xattr: settings.owners.xattr,
                noatime: settings.noatime,
            },
            generation: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            devs,
            more_devs: Default::default(),
            more_dev_count: AtomicU64::new(0),
            origins: Default::default(),
            // Half the open-file limit: the rest is for open files and transient fds.
            fd_budget: Arc::new(std::sync::atomic::AtomicIsize::new(
                (sys::nofile_limit() / 2) as isize,
            )),
            events: Default::default(),
            xattr_scan: Default::default(),
            held: Default::default(),
        };
        let stack = u.stack();
        let _ = stack.override_xattrs.set(u.find_override_xattrs(&stack)?);
        // Records made from now on are the upper's, above its newest snapshot (layer 1).
        let newest = stack.layers.get(1).and_then(|l| l.snapshot.as_ref());
        u.origins.set_level(newest.map_or(0, |s| s.seq));
        let root = u.make_root()?;
        u.nodes.insert_root(Arc::new(root));
        Ok(u)
    }

    fn make_root(&self) -> Result<Node> {
        let dirs = self.root_slots()?;
        Ok(Node::new_root(
            ROOT_INO,
            NodeState {
                parent: None,
                name: OsStr::new(".").into(),
                layer: 0,
                dirs: Arc::new(dirs),
                generation: 0,
                changed: 0,
                real: (0, 0),
                rare: Rare::new(None, None),
            },
        ))
    }

    /// The layer stack now (it changes only while the gate is held exclusively).
    pub fn stack(&self) -> Arc<LayerStack> {
        self.stack.read().clone()
    }

    /// Enter the union for one operation: a snapshot or rollback waits until it is done,
    /// and it waits for one in progress.
    pub fn enter(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.gate.read()
    }

    pub fn root(&self) -> Arc<Node> {
        self.nodes
            .get(node::ROOT_ID)
            .expect("root node is never forgotten")
    }

    /// The node the kernel knows as node id `id`.
    pub fn node(&self, id: u64) -> Result<Arc<Node>> {
        self.nodes
            .get(id)
            .ok_or_else(|| Error::new(libc::ESTALE, "find node").at(format!("node {id}")))
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Fail with EROFS unless there is an upper branch to write to.
    pub fn check_writable(&self, op: &'static str) -> Result<()> {
        if self.writable() {
            Ok(())
        } else {
            Err(Error::new(libc::EROFS, op))
        }
    }

    /// The inode number a real file shows through the mount: its own, tagged with its
    /// filesystem when the branches span several (as overlayfs' xino does).
    pub fn ino_of(&self, st: &Stat) -> u64 {
        let tag = match self.devs.iter().position(|d| *d == st.st_dev) {
            Some(i) => i as u64,
            None => *self.more_devs.entry(st.st_dev).or_insert_with(|| {
                self.devs.len() as u64 + self.more_dev_count.fetch_add(1, Ordering::Relaxed)
            }),
        };
        let ino = st.st_ino ^ (tag << 48);
        if ino == ROOT_INO { ino | 1 << 63 } else { ino }
    }

    /// Attributes of a node as the merged view shows them.
    pub fn getattr(&self, node: &Arc<Node>) -> Result<Stat> {
        let place = node.place.read();
        let loc = self.locate(node)?;
        let mut st = sys::fstatat(loc.dir.as_raw_fd(), &loc.name)
            .op("stat")
            .map_err(|e| e.at(node.path()).in_layer(loc.layer))?;
        drop(place);
        if st.st_mode & libc::S_IFMT != node.kind {
            // The name went to another object under us (a removal in progress): answer for
            // the node's own entry, never with another type (the kernel calls that EIO).
            let kept = self
                .kept_loc(node)
                .and_then(|k| sys::fstatat(k.raw(), &k.name).ok());
            st = kept
                .filter(|k| k.st_mode & libc::S_IFMT == node.kind)
                .ok_or_else(|| Error::new(libc::ENOENT, "stat").at(node.path()))?;
        }
        self.present(node, &mut st);
        Ok(st)
    }

    /// Dress a real stat as the node's: its inode number, the link count of a file shared
    /// through the index, and nlink 1 for a directory merged from several layers (its true
    /// count is unknown, as on overlayfs), and a held truncation's size and times.
    pub fn present(&self, node: &Node, st: &mut Stat) {
        self.indexed_links(node, st);
        st.st_ino = node.ino;
        self.held_stat(node, st);
        // A metadata-only copy is sparse; its blocks are the lower file's (as on overlayfs).
        if let Some(d) = node.state().data()
            && let Ok(lower) = sys::fstatat(d.raw(), &d.name)
        {
            st.st_blocks = lower.st_blocks;
        }
        if node.is_dir() && node.state().dirs.len() > 1 {
            st.st_nlink = 1;
        }
        self.apply_override(node, st);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The copy-up count, read before a probe.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Count a copy-up whose new place is about to be recorded in its node.
    pub(crate) fn note_change(&self) -> u64 {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1
    }

    fn bump_generation(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Opaque marker or overlay xattr "y"; and whether its empty files may be xattr
    /// whiteouts (overlay xattr "x").
    pub fn dir_markers(&self, dir: i32) -> Result<(bool, bool)> {
        let m = self.dir_marks(dir, false)?;
        Ok((m.opaque, m.xwhiteouts))
    }

    /// What a directory (an open fd) says of the layers below it, from one listing of its
    /// xattrs: opaque, holding xattr whiteouts, and, if `redirect` is asked, where it was
    /// moved from (`whiteout::Redirect`).
    pub(crate) fn dir_marks(&self, dir: i32, redirect: bool) -> Result<DirMarks> {
        Ok(dir_marks_of(dir, redirect))
    }

    /// How a node keeps a directory it found: lower fds only within the budget.
    pub(crate) fn keep_slot(&self, d: LayerDir) -> DirSlot {
        let held = if d.layer == 0 {
            Some(HeldFd::new(d.fd, None))
        } else if self.fd_budget.fetch_sub(1, Ordering::Relaxed) > 0 {
            Some(HeldFd::new(d.fd, Some(self.fd_budget.clone())))
        } else {
            self.fd_budget.fetch_add(1, Ordering::Relaxed);
            None
        };
        DirSlot {
            layer: d.layer,
            held: held.map(Arc::new),
            xwhiteouts: d.xwhiteouts,
            path: d.path,
        }
    }

    pub(crate) fn keep_slots(&self, dirs: Vec<LayerDir>) -> Arc<Vec<DirSlot>> {
        if dirs.is_empty() {
            // Every file's: one shared, not an allocation per node.
            static NONE: std::sync::OnceLock<Arc<Vec<DirSlot>>> = std::sync::OnceLock::new();
            return NONE.get_or_init(|| Arc::new(Vec::new())).clone();
        }
        Arc::new(dirs.into_iter().map(|d| self.keep_slot(d)).collect())
    }

    /// A kept directory, open: its held fd, or reopened by its path in its layer (never
    /// through a symlink, so nothing in a branch can lead outside it): in one openat2 call,
    /// or one O_NOFOLLOW step at a time where openat2 is refused.
    pub(crate) fn open_slot(&self, s: &DirSlot) -> Result<LayerDir> {
        let fd = match &s.held {
            Some(h) => h.fd.clone(),
            None => {
                // Only an unheld slot needs its layer's root (the stack is not asked per probe).
                let root = self.stack().layers[s.layer].root.clone();
                if s.path.is_empty() {
                    root
                } else {
                    match sys::open_dir_beneath(root.as_raw_fd(), &s.path)
                        .op("reopen dir")
                        .map_err(|e| e.in_layer(s.layer))?
                    {
                        Some(fd) => Arc::new(fd),
                        None => self.walk_slot(s)?,
                    }
                }
            }
        };
        Ok(LayerDir {
            layer: s.layer,
            fd,
            xwhiteouts: s.xwhiteouts,
            path: s.path.clone(),
        })
    }

    /// The stat of a kept directory, without opening it: by its held fd, or by its path in
    /// its layer. For fingerprints only: a path is not checked for symlinks, so what it
    /// reports may come from outside the branch; nothing of it is shown or acted on.
    pub(crate) fn stat_slot(&self, s: &DirSlot) -> Result<sys::Stat> {
        let st = match &s.held {
            Some(h) => sys::fstat_path(h.fd.as_raw_fd()),
            None => {
                let root = self.stack().layers[s.layer].root.as_raw_fd();
                let path = s.path.join(std::ffi::OsStr::new("/"));
                sys::fstatat(root, if path.is_empty() { ".".as_ref() } else { &path })
            }
        };
        st.op("stat dir").map_err(|e| e.in_layer(s.layer))
    }

    fn walk_slot(&self, s: &DirSlot) -> Result<Arc<std::os::fd::OwnedFd>> {
        let mut cur = self.stack().layers[s.layer].root.clone();
        for part in s.path.iter() {
            let next = sys::open_dir_path(cur.as_raw_fd(), part)
                .op("reopen dir")
                .map_err(|e| e.in_layer(s.layer))?;
            cur = Arc::new(next);
        }
        Ok(cur)
    }

    /// Open a branch file; with `noatime`, without marking its access time where the
    /// daemon may (O_NOATIME needs the file's owner or CAP_FOWNER).
    pub(crate) fn open_branch(
        &self,
        dir: i32,
        name: &std::ffi::OsStr,
        flags: i32,
    ) -> std::io::Result<std::fs::File> {
        if self.opts.noatime {
            match sys::open_file(dir, name, flags | libc::O_NOATIME) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                r => return r,
            }
        }
        sys::open_file(dir, name, flags)
    }

    /// A directory node's fd in `layer`, if it is present there.
    pub(crate) fn dir_in(&self, dir: &Node, layer: usize) -> Option<Arc<std::os::fd::OwnedFd>> {
        let slot = dir.slot_in(layer)?;
        self.open_slot(&slot).ok().map(|d| d.fd)
    }

    /// Clean unmount: drop the work directory we made.
    pub fn shutdown(&self) {
        self.truncations_closed();
        self.stack().close();
    }
}

/// What a directory (an open fd) says of the layers below it, from one listing of its
/// xattrs: opaque, holding xattr whiteouts, and, if `redirect` is asked, where it was
/// moved from (`whiteout::Redirect`).
pub(crate) fn dir_marks_of(dir: i32, redirect: bool) -> DirMarks {
    let mut m = DirMarks::default();
    if sys::fstatat(dir, whiteout::OPAQUE_MARKER.as_ref()).is_ok() {
        m.opaque = true;
        return m;
    }
    // One listing first: most directories carry no xattr at all.
    let present = sys::llistxattr(dir, ".".as_ref()).unwrap_or_default();
    let has = |attr: &str| present.iter().any(|p| p == attr.as_bytes());
    for attr in whiteout::OPAQUE_XATTRS.into_iter().filter(|a| has(a)) {
        // trusted.* is unreadable without privilege; unreadable or unsupported means absent.
        if let Ok(Some(v)) = sys::lgetxattr(dir, ".".as_ref(), attr.as_ref()) {
            match whiteout::parse_opaque_xattr(&v) {
                Some(whiteout::OpaqueXattr::Opaque) => {
                    m.opaque = true;
                    m.xwhiteouts = false;
                    return m;
                }
                Some(whiteout::OpaqueXattr::HasXattrWhiteouts) => m.xwhiteouts = true,
                None => {}
            }
        }
    }
    if redirect && let Some(attr) = whiteout::REDIRECT_XATTRS.into_iter().find(|a| has(a)) {
        let v = sys::lgetxattr(dir, ".".as_ref(), attr.as_ref())
            .ok()
            .flatten();
        m.redirect = v.as_deref().and_then(whiteout::Redirect::parse);
        if m.redirect.is_none() {
            let v = String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned();
            log::warn!("ignoring a malformed redirect {attr}={v:?}");
        }
    }
    m
}
