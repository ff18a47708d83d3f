//! Snapshots and rollback of a live mount: the changes so far become a read-only layer
//! under a fresh upper (`snapshot`), or every change since a snapshot is thrown away
//! (`rollback`), while the mount stays in use. The disk side (layout, journal, crash
//! recovery) is `snapstore.rs`; this is the live side.
//!
//! Both hold the gate exclusively (no operation is in flight), change the disk, reopen the
//! stack as a mount would (`LayerStack::reopen` finds the snapshots) and move every node to
//! the new layer numbers. A snapshot changes nothing in the view: the old upper's entries
//! are the same inodes one layer lower, so a node just moves down a number. Files open for
//! writing are the exception: their descriptors write to the inode (with passthrough, the
//! kernel does), so that inode moves to the new upper and the snapshot gets a copy. A
//! rollback changes the view: nodes whose entry or directory layers were discarded are
//! looked up again, top-down, and those gone are detached (as if unlinked: descriptors on
//! them read and write the discarded file, which no name reaches; by node, ESTALE); then
//! the kernel is told to drop what it cached of every entry that changed.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use super::copyup::{copy_dir_shell, copy_file_whole};
use super::layer::{INDEX_DIR, LayerStack};
use super::node::{DirSlot, HeldFd, Kept, Node, ROOT_ID};
use super::snapstore::{self, Journal, Move, Op, SNAP_WORK, Snap, Store};
use super::{Union, index, whiteout};
use crate::error::{Context, Error, Result};
use crate::sys;

/// Something outside the union that keeps layer numbers: the FUSE adapter's open files and
/// directory listings.
pub trait Watcher: Send + Sync {
    /// The stack was swapped (the gate is held exclusively): `map` turns a layer number of
    /// the old stack into the new one's, `None` for a discarded layer.
    fn restacked(&self, map: &dyn Fn(usize) -> Option<usize>);
    /// The gate is released again: the merged view changed here, and the kernel must drop
    /// what it cached.
    fn changed(&self, changes: &[Changed]);
}

/// Something of the merged view a rollback changed (node ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// The name `name` in the directory `parent` may now hold something else, or nothing.
    Entry { parent: u64, name: OsString },
    /// The node's attributes or data may differ.
    Inode(u64),
    /// The directory's attributes and listing may differ.
    Listing(u64),
}

/// What a snapshot prepares for files open for writing: the moves to journal, the nodes
/// to look up again after, and the directories whose times the moves change.
type Prepared = (
    Vec<Move>,
    Vec<Arc<Node>>,
    Vec<(PathBuf, snapstore::DirTimes)>,
);

/// Which nodes a restack looks up again.
struct Reprobe {
    /// Besides those that lost a layer: these (a snapshot's moved files and their parents).
    also: Vec<Arc<Node>>,
    /// A directory that changed has every known entry below it looked up again (the view
    /// changed: rollback); else only those named.
    cascade: bool,
    /// Handles on open files taken before their layer went: a detached one keeps working
    /// by node (fstat, fchmod) as an unlinked file does.
    keep: HashMap<u64, Arc<OwnedFd>>,
    /// A layer (old number) whose directories changed: every node with a part there is
    /// looked up again.
    touched: Option<usize>,
}

impl Union {
    /// Be told of every swap of the stack.
    pub fn watch(&self, w: Arc<dyn Watcher>) {
        self.watchers.lock().push(w);
    }

    fn store(&self, op: &str) -> Result<Store> {
        match self.settings.upper() {
            Some(u) if self.writable() => Ok(Store::of_upper(&u.path)),
            _ => Err(Error::new(libc::EROFS, "a read-only mount has no changes").at(op)),
        }
    }

    /// The snapshots of this mount's upper, oldest first.
    pub fn snapshots(&self) -> Result<Vec<Snap>> {
        match self.settings.upper() {
            Some(u) => Store::of_upper(&u.path).list(),
            None => Ok(Vec::new()),
        }
    }

    /// Make the changes so far a read-only layer below a fresh, empty upper.
    pub fn snapshot(&self, name: Option<&str>) -> Result<Snap> {
        let store = self.store("snapshot")?;
        let gate = self.gate.write();
        // The files' data as the mount shows it.
        self.truncations_done()?;
        store.ensure()?;
        let snaps = store.list()?;
        let seq = snaps.last().map_or(1, |s| s.seq + 1);
        let name = name.map_or_else(|| format!("snap-{seq}"), str::to_string);
        snapstore::check_name(&name).map_err(|m| Error::new(libc::EINVAL, "snapshot").at(m))?;
        if snaps.iter().any(|s| s.name == name) {
            return Err(Error::new(libc::EEXIST, "snapshot").at(format!(
                "a snapshot named {name} exists ({})",
                store.dir.display()
            )));
        }
        let stack = self.stack();
        let upper = stack.upper().ok_or(Error::new(libc::EROFS, "snapshot"))?;
        let upper_ino = root_ino(upper)?;
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let started = std::time::Instant::now();
        // Records made from here on (the moved files' new parents) are the new upper's.
        let level = snaps.last().map_or(0, |s| s.seq);
        self.origins.set_level(seq);
        let prepared = store.make_pending().and_then(|pending| {
            self.move_writers(&stack, pending.as_raw_fd(), seq)
                .map_err(|e| e.at(store.pending().display()))
        });
        let (moves, moved, times) = match prepared {
            Ok(p) => p,
            Err(e) => {
                // Nothing is decided yet: the old state stays.
                self.origins.discard_from(seq);
                self.origins.set_level(level);
                let _ = snapstore::remove_tree(&store.pending());
                let _ = snapstore::remove_tree(&upper.path.join(SNAP_WORK));
                return Err(e);
            }
        };
        let journal = Journal {
            op: Op::Snapshot,
            seq,
            name: name.clone(),
            time,
            upper_ino,
            moves,
            discard: Vec::new(),
            planned: Vec::new(),
            times,
        };
        store.commit(&journal)?;
        let done = store.finish(&journal, self.opts.whiteout);
        drop(stack);
        let reprobe = Reprobe {
            also: moved,
            cascade: false,
            keep: HashMap::new(),
            touched: None,
        };
        // Whatever the disk now holds, the live stack follows it.
        let changes = self.restack(&|i| Some(i + 1), reprobe);
        drop(gate);
        done?;
        changes?;
        log::info!(
            "snapshot {name} taken in {:.1} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        let snap = store.list()?.into_iter().find(|s| s.seq == seq);
        snap.ok_or_else(|| Error::new(libc::EIO, "snapshot").at(store.dir.display()))
    }

    /// Discard every change since the snapshot `name` (the latest if `None`), and the
    /// snapshots taken after it.
    pub fn rollback(&self, name: Option<&str>) -> Result<Snap> {
        let store = self.store("rollback")?;
        let gate = self.gate.write();
        // The files' data as the mount shows it.
        self.truncations_done()?;
        let snaps = store.list()?;
        let target = match name {
            Some(n) => named(&snaps, n, "rollback")?,
            None => snaps.last().cloned().ok_or_else(|| {
                Error::new(libc::ENOENT, "rollback").at("no snapshot to roll back to")
            })?,
        };
        let discard: Vec<String> = snaps
            .iter()
            .filter(|s| s.seq > target.seq)
            .filter_map(|s| Some(s.dir.file_name()?.to_str()?.to_string()))
            .collect();
        let stack = self.stack();
        let upper = stack.upper().ok_or(Error::new(libc::EROFS, "rollback"))?;
        let upper_ino = root_ino(upper)?;
        drop(stack);
        let started = std::time::Instant::now();
        let keep = self.keep_open_files(|l| l <= discard.len());
        // The fresh upper's root looks as the upper's did when the snapshot was taken.
        if let Err(e) = store.make_pending_like(&target.dir) {
            let _ = snapstore::remove_tree(&store.pending());
            return Err(e);
        }
        let journal = Journal {
            op: Op::Rollback,
            seq: target.seq,
            name: target.name.clone(),
            time: target.time,
            upper_ino,
            moves: Vec::new(),
            discard: discard.clone(),
            planned: Vec::new(),
            times: Vec::new(),
        };
        store.commit(&journal)?;
        let done = store.finish(&journal, self.opts.whiteout);
        // The discarded layers' inodes are freed: their numbers go to new files.
        self.origins.discard_from(target.seq);
        self.origins.set_level(target.seq);
        let gone = discard.len();
        let reprobe = Reprobe {
            also: Vec::new(),
            cascade: true,
            keep,
            touched: None,
        };
        let changes = self.restack(&|i| (i > gone).then(|| i - gone), reprobe);
        drop(gate);
        done?;
        let changes = changes?;
        for w in self.watchers.lock().iter() {
            w.changed(&changes);
        }
        log::info!(
            "rolled back to {} in {:.1} ms ({} entries changed)",
            target.name,
            started.elapsed().as_secs_f64() * 1000.0,
            changes.len()
        );
        store.empty_trash_later();
        Ok(target)
    }

    /// Forget the snapshot `name` as a point to go back to, keeping its changes: its layer
    /// merges into the layer above it (see `merge.rs`).
    pub fn drop_snapshot(&self, name: &str) -> Result<Snap> {
        let store = self.store("drop")?;
        let gate = self.gate.write();
        let snaps = store.list()?;
        let x = named(&snaps, name, "drop")?;
        let stack = self.stack();
        let xi = stack
            .layers
            .iter()
            .position(|l| l.snapshot.as_ref().is_some_and(|s| s.name == name))
            .ok_or_else(|| Error::new(libc::ENOENT, "drop").at(x.dir.display()))?;
        drop(stack);
        let started = std::time::Instant::now();
        let above = store.above(x.seq)?;
        let a_root = snapstore::open_dir_at(&above, libc::O_RDONLY)?;
        let journal = Journal {
            op: Op::Drop,
            seq: x.seq,
            name: x.name.clone(),
            planned: super::merge::plan(a_root.as_raw_fd()),
            ..Journal::default()
        };
        store.commit(&journal)?;
        let done = store.finish(&journal, self.opts.whiteout);
        let reprobe = Reprobe {
            also: Vec::new(),
            cascade: false,
            keep: HashMap::new(),
            touched: Some(xi),
        };
        let map = |i: usize| Some(if i < xi { i } else { i - 1 });
        let changes = self.restack(&map, reprobe);
        // What the merge left behind (all hidden) is deleted: its inodes' records go first.
        self.forget_origins_under(&store.trash_of(&x));
        drop(gate);
        done?;
        changes?;
        log::info!(
            "snapshot {name} dropped (merged into {}) in {:.1} ms",
            above.display(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        store.empty_trash_later();
        Ok(x)
    }

    /// Files open for writing (or in passthrough) in the upper: each one's inode goes to the new upper, a copy
    /// made now (in `SNAP_WORK`) to the snapshot. Makes the copies, and the parent
    /// directories in `pending` (the next upper), carrying the inode numbers they show.
    fn move_writers(&self, stack: &LayerStack, pending: RawFd, seq: u32) -> Result<Prepared> {
        let writers: Vec<Arc<Node>> = self
            .nodes
            .all()
            .into_iter()
            .filter(|n| n.kind == libc::S_IFREG && n.is_pinned() && !n.is_unlinked())
            .filter(|n| n.data_in_upper())
            .collect();
        let (mut moves, mut moved, mut times) = (Vec::new(), Vec::new(), Vec::new());
        if writers.is_empty() {
            return Ok((moves, moved, times));
        }
        let upper = stack.upper().ok_or(Error::new(libc::EROFS, "snapshot"))?;
        let root = upper.root.as_raw_fd();
        match sys::mkdirat(root, SNAP_WORK.as_ref(), 0o700) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                return Err(Error::io(e, "mkdir").at(upper.path.join(SNAP_WORK).display()));
            }
            _ => {}
        }
        let work = sys::open_dir_path(root, SNAP_WORK.as_ref()).op("open")?;
        for (k, node) in writers.iter().enumerate() {
            let real = node.state().real;
            let names = self.upper_names(stack, node, real)?;
            let Some((first, _)) = names.first() else {
                continue;
            };
            let st = sys::fstatat(root, first.as_os_str()).op("stat")?;
            let copy = format!("{seq}-{k}");
            copy_file_whole(
                root,
                first.as_os_str(),
                &st,
                work.as_raw_fd(),
                copy.as_ref(),
                !self.opts.volatile,
            )
            .map_err(|e| e.at(first.display()))?;
            for (j, (rel, chain)) in names.iter().enumerate() {
                self.make_parents(root, pending, rel, chain)?;
                for dir in rel.ancestors().skip(1) {
                    if !times.iter().any(|(d, _)| d == dir)
                        && let Some(t) = snapstore::dir_times(root, dir)
                    {
                        times.push((dir.to_path_buf(), t));
                    }
                }
                let name = if j == 0 {
                    copy.clone()
                } else {
                    let n = format!("{copy}.{j}");
                    sys::linkat(
                        work.as_raw_fd(),
                        copy.as_ref(),
                        work.as_raw_fd(),
                        n.as_ref(),
                    )
                    .op("link copy")?;
                    n
                };
                moves.push(Move {
                    rel: rel.clone(),
                    work: name,
                    ino: real.1,
                });
            }
            let mut up = node.state().parent.clone();
            while let Some(p) = up {
                up = p.state().parent.clone();
                moved.push(p);
            }
            moved.push(node.clone());
        }
        sys::fsync(
            sys::openat(
                root,
                SNAP_WORK.as_ref(),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )
            .op("open")?
            .as_raw_fd(),
            false,
        )
        .op("fsync")?;
        Ok((moves, moved, times))
    }

    /// Every name the upper file `real` has (relative paths), with the directory nodes
    /// above each where known: the node's own names, its index entry, and if the link count
    /// says there are more, the rest found by a walk of the upper.
    fn upper_names(
        &self,
        stack: &LayerStack,
        node: &Arc<Node>,
        real: (u64, u64),
    ) -> Result<Vec<(PathBuf, Vec<Arc<Node>>)>> {
        let root = stack.upper().map(|u| u.root.as_raw_fd()).unwrap_or(-1);
        let is_it = |rel: &std::path::Path| {
            sys::fstatat(root, rel.as_os_str()).is_ok_and(|s| (s.st_dev, s.st_ino) == real)
        };
        let mut out: Vec<(PathBuf, Vec<Arc<Node>>)> = Vec::new();
        let (primary, links) = {
            let st = node.state();
            (
                st.parent.clone().map(|p| (p, st.name.to_os_string())),
                st.links().to_vec(),
            )
        };
        for (parent, name) in primary.into_iter().chain(links) {
            let mut chain = vec![parent.clone()];
            let mut up = parent.state().parent.clone();
            while let Some(p) = up {
                up = p.state().parent.clone();
                chain.push(p);
            }
            chain.pop(); // the root
            chain.reverse();
            let mut rel: PathBuf = chain
                .iter()
                .map(|n| n.state().name.to_os_string())
                .collect();
            rel.push(&name);
            if is_it(&rel) && !out.iter().any(|(r, _)| *r == rel) {
                out.push((rel, chain));
            }
        }
        let key = PathBuf::from(INDEX_DIR).join(index::key(node.ino));
        if is_it(&key) {
            out.push((key, Vec::new()));
        }
        let nlink = sys::fstatat(
            root,
            out.first().map_or(OsStr::new(""), |r| r.0.as_os_str()),
        )
        .map_or(0, |s| s.st_nlink as usize);
        if out.len() < nlink {
            let mut found = Vec::new();
            find_names(root, &mut PathBuf::new(), real, &mut found);
            for rel in found {
                if !out.iter().any(|(r, _)| *r == rel) {
                    out.push((rel, Vec::new()));
                }
            }
        }
        Ok(out)
    }

    /// The directories above `rel` in `pending`, each a copy of the upper's (owner, mode,
    /// xattrs, times), showing the inode number its node shows (`chain`, where known).
    fn make_parents(
        &self,
        upper: RawFd,
        pending: RawFd,
        rel: &std::path::Path,
        chain: &[Arc<Node>],
    ) -> Result<()> {
        let parts: Vec<&OsStr> = rel.iter().collect();
        let mut at = PathBuf::new();
        for (i, part) in parts.iter().enumerate().take(parts.len().saturating_sub(1)) {
            let parent_fd = if at.as_os_str().is_empty() {
                None
            } else {
                Some(sys::open_dir_path(pending, at.as_os_str()).op("open")?)
            };
            let pfd = parent_fd.as_ref().map_or(pending, |f| f.as_raw_fd());
            at.push(part);
            if sys::fstatat(pfd, part).is_ok() {
                continue;
            }
            let src = sys::open_dir_path(upper, at.as_os_str()).op("open")?;
            copy_dir_shell(src.as_raw_fd(), pfd, part).map_err(|e| e.at(at.display()))?;
            if let Some(n) = chain.get(i) {
                let record = whiteout::encode_origin(n.ino, false);
                let _ = sys::lsetxattr(pfd, part, whiteout::ORIGIN_XATTR.as_ref(), &record, 0);
                self.record_origin(pfd, part, n.ino, false);
            }
        }
        Ok(())
    }

    /// Swap in the stack as the disk now holds it and move every node to its numbers
    /// (`map`: old layer number to new, `None` for a discarded layer). Nodes that lost a
    /// layer are looked up again; what changed is returned for the kernel.
    fn restack(
        &self,
        map: &dyn Fn(usize) -> Option<usize>,
        reprobe: Reprobe,
    ) -> Result<Vec<Changed>> {
        let fresh = LayerStack::reopen(&self.settings)?;
        let _ = fresh
            .override_xattrs
            .set(self.find_override_xattrs(&fresh)?);
        *self.stack.write() = Arc::new(fresh);
        let mut lost: HashSet<u64> = reprobe.also.iter().map(|n| n.id).collect();
        let nodes = self.nodes.all();
        for n in &nodes {
            if n.id == ROOT_ID {
                continue;
            }
            // An upper directory moving down keeps its path from now on (lower slots may be
            // reopened by it); in the upper it is the node's own path.
            let moves_down = map(0).is_some() && n.state().dirs.iter().any(|d| d.layer == 0);
            let path = moves_down.then(|| Arc::new(n.components()));
            let mut st = n.state_mut();
            let top = map(st.layer);
            let touched = reprobe.touched.is_some_and(|t| {
                st.layer == t
                    || st.dirs.iter().any(|d| d.layer == t)
                    || st.data().is_some_and(|d| d.layer == t)
            });
            let mut gone = top.is_none() || st.unlinked() || touched;
            st.layer = top.unwrap_or(0);
            if !st.dirs.is_empty() {
                let before = st.dirs.len();
                let dirs: Vec<DirSlot> = st
                    .dirs
                    .iter()
                    .filter_map(|d| {
                        let mut d = d.clone();
                        if d.layer == 0
                            && let Some(p) = &path
                        {
                            d.path = p.clone();
                        }
                        d.layer = map(d.layer)?;
                        Some(d)
                    })
                    .collect();
                gone |= dirs.len() != before;
                st.dirs = Arc::new(dirs);
            }
            if let Some(k) = st.kept_mut() {
                k.layer = map(k.layer).unwrap_or(0);
            }
            if let Some(d) = st.data_mut() {
                match map(d.layer) {
                    Some(l) => d.layer = l,
                    None => gone = true,
                }
            }
            if gone {
                lost.insert(n.id);
            }
        }
        let root = self.root();
        let root_dirs = self.root_slots()?;
        let root_changed = root.state().dirs.iter().any(|d| map(d.layer).is_none());
        root.state_mut().dirs = Arc::new(root_dirs);
        root.listed.store(0, std::sync::atomic::Ordering::Relaxed);
        for w in self.watchers.lock().iter() {
            w.restacked(map);
        }
        let mut changes = Vec::new();
        let mut changed: HashSet<u64> = HashSet::new();
        if root_changed {
            changed.insert(ROOT_ID);
            changes.push(Changed::Listing(ROOT_ID));
            for name in self.root_names() {
                changes.push(Changed::Entry {
                    parent: ROOT_ID,
                    name,
                });
            }
        }
        // Parents before children: a child is looked up in its parent's new layers.
        let mut order: Vec<(usize, Arc<Node>)> = nodes
            .into_iter()
            .filter(|n| n.id != ROOT_ID)
            .map(|n| (n.components().len(), n))
            .collect();
        order.sort_by_key(|(d, _)| *d);
        for (_, n) in order {
            let parent = n.state().parent.clone();
            let Some(parent) = parent else { continue };
            let cascade = reprobe.cascade && changed.contains(&parent.id);
            if !lost.contains(&n.id) && !cascade {
                continue;
            }
            if self.relocate(&parent, &n, &reprobe.keep) {
                if reprobe.cascade {
                    changed.insert(n.id);
                }
            } else {
                changed.insert(n.id);
            }
            if changed.contains(&n.id) {
                changes.push(Changed::Entry {
                    parent: parent.id,
                    name: n.state().name.to_os_string(),
                });
            }
            // A directory that lost a layer (or whose parent changed) lists differently
            // even where it stays the same node.
            if n.is_dir() {
                changes.push(Changed::Listing(n.id));
                n.listed.store(0, std::sync::atomic::Ordering::Relaxed);
            } else if changed.contains(&n.id) {
                changes.push(Changed::Inode(n.id));
            }
        }
        Ok(changes)
    }

    /// Look a node up again at its name in its parent's new layers. True if it is still
    /// there (its location updated); else it is detached: no name reaches it any more and
    /// its number is free for whatever a lookup finds there now.
    fn relocate(
        &self,
        parent: &Arc<Node>,
        n: &Arc<Node>,
        keep: &HashMap<u64, Arc<OwnedFd>>,
    ) -> bool {
        let name = n.state().name.clone();
        let found = self.probe(parent, &name).ok().flatten();
        let mut st = n.state_mut();
        // A file whose name now holds another real file gets a node of its own: the kernel
        // keeps one backing (passthrough) and one page cache per node, and a new node has
        // neither stale. A directory stays (its listing and attributes are invalidated).
        let same = |f: &super::resolve::Found| {
            f.ino == n.ino
                && f.st.st_mode & libc::S_IFMT == n.kind
                && (n.is_dir() || (f.st.st_dev, f.st.st_ino) == st.real)
        };
        match found {
            Some(f) if same(&f) => {
                st.layer = f.layer;
                st.dirs = self.keep_slots(f.dirs);
                n.set_real(&mut st, (f.st.st_dev, f.st.st_ino));
                st.set_data(f.data);
                st.set_unlinked(false);
                st.generation = self.generation();
                true
            }
            other => {
                log::debug!(
                    "{}: detached by the swap (found there now: {:?})",
                    st.name.to_string_lossy(),
                    other.map(|f| (f.ino, f.layer, f.st.st_ino))
                );
                st.set_unlinked(true);
                st.edit_links(|l| l.clear());
                if let Some(fd) = keep.get(&n.id) {
                    st.set_kept(Some(Kept {
                        fd: fd.clone(),
                        layer: 0,
                    }));
                }
                drop(st);
                self.nodes.unbind(n);
                false
            }
        }
    }

    /// Drop the origin records of every inode below `dir` (about to be deleted).
    fn forget_origins_under(&self, dir: &std::path::Path) {
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                if let Ok(m) = e.metadata() {
                    use std::os::unix::fs::MetadataExt;
                    self.origins.remove(&(m.dev(), m.ino()));
                    if m.is_dir() {
                        todo.push(e.path());
                    }
                }
            }
        }
    }

    /// An O_PATH handle on every open file whose entry is in a layer `doomed` says goes.
    fn keep_open_files(&self, doomed: impl Fn(usize) -> bool) -> HashMap<u64, Arc<OwnedFd>> {
        let mut keep = HashMap::new();
        for n in self.nodes.all() {
            if n.is_dir() || !n.is_open() || n.is_unlinked() || !doomed(n.layer()) {
                continue;
            }
            if let Some(loc) = self.try_locate(&n)
                && let Ok(fd) =
                    sys::openat(loc.raw(), &loc.name, libc::O_PATH | libc::O_NOFOLLOW, 0)
            {
                keep.insert(n.id, Arc::new(fd));
            }
        }
        keep
    }

    /// The root's directory in every layer, cut at an opaque one.
    pub(crate) fn root_slots(&self) -> Result<Vec<DirSlot>> {
        let mut dirs = Vec::new();
        for l in &self.stack().layers {
            let (opaque, xwhiteouts) = self.dir_markers(l.root.as_raw_fd())?;
            dirs.push(DirSlot {
                layer: l.index,
                held: Some(Arc::new(HeldFd::new(l.root.clone(), None))),
                xwhiteouts,
                path: Arc::new(Vec::new()),
            });
            if opaque {
                break;
            }
        }
        Ok(dirs)
    }

    /// Every name in the root of any layer (whiteouts as the names they hide): whatever
    /// the kernel may have cached at the root, positive or negative.
    fn root_names(&self) -> Vec<OsString> {
        let mut names: HashSet<OsString> = HashSet::new();
        for l in &self.stack().layers {
            let Ok(entries) = sys::read_dir(l.root.as_raw_fd(), true) else {
                continue;
            };
            for e in entries {
                let name = whiteout::whited_out(&e.name).map_or(e.name.clone(), OsStr::to_owned);
                if !whiteout::is_reserved(&name) {
                    names.insert(name);
                }
            }
        }
        names.into_iter().collect()
    }
}

/// The snapshot called `name`, or an error for `op` saying there is none.
fn named(snaps: &[Snap], name: &str, op: &'static str) -> Result<Snap> {
    snaps
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| Error::new(libc::ENOENT, op).at(format!("no snapshot named {name}")))
}

/// The inode number of a layer's root directory (the journal's witness of an exchange).
fn root_ino(l: &super::layer::Layer) -> Result<u64> {
    Ok(sys::fstat_path(l.root.as_raw_fd()).op("stat upper")?.st_ino)
}

/// Every path below `dir` (relative, in `at`) of the file `real`, but in our own hidden
/// copies directory.
fn find_names(dir: RawFd, at: &mut PathBuf, real: (u64, u64), out: &mut Vec<PathBuf>) {
    let here = if at.as_os_str().is_empty() {
        OsStr::new(".")
    } else {
        at.as_os_str()
    };
    let Ok(fd) = sys::open_dir_path(dir, here) else {
        return;
    };
    let Ok(entries) = sys::read_dir(fd.as_raw_fd(), true) else {
        return;
    };
    for e in entries {
        if at.as_os_str().is_empty() && e.name == SNAP_WORK {
            continue;
        }
        at.push(&e.name);
        match sys::fstatat(dir, at.as_os_str()) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => find_names(dir, at, real, out),
            Ok(st) if (st.st_dev, st.st_ino) == real => out.push(at.clone()),
            _ => {}
        }
        at.pop();
    }
}
