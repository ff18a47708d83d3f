//! A merged entry: which file it is (its inode number for life), where it hangs in the
//! merged tree, and where it really lives in each layer.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A handle on a real entry that works without its name.
#[derive(Debug, Clone)]
pub struct Kept {
    pub fd: Arc<OwnedFd>,
    pub layer: usize,
}

/// Where a node's real entry is: `name` inside the directory `dir` of layer `layer`.
#[derive(Debug, Clone)]
pub struct Loc {
    pub dir: Arc<OwnedFd>,
    pub name: OsString,
    pub layer: usize,
}

impl Loc {
    pub fn raw(&self) -> RawFd {
        self.dir.as_raw_fd()
    }
}

/// A directory's presence in one layer, open for use.
#[derive(Debug, Clone)]
pub struct LayerDir {
    pub layer: usize,
    /// O_PATH fd of the directory in that layer.
    pub fd: Arc<OwnedFd>,
    /// Overlay opaque xattr "x": empty files in here may be xattr whiteouts.
    pub xwhiteouts: bool,
    /// Its path from the layer's root (for a lower layer, where nothing moves).
    pub path: Arc<Vec<OsString>>,
}

impl LayerDir {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A directory's presence in one layer, as a node keeps it. The fd of a lower directory is
/// held only while the open-file budget allows: a deep stack times many directories would
/// exceed the process limit. Without it the directory is reopened by its path, which never
/// changes in a read-only layer. The upper's are always held, since they move.
#[derive(Debug, Clone)]
pub struct DirSlot {
    pub layer: usize,
    pub held: Option<Arc<HeldFd>>,
    pub xwhiteouts: bool,
    pub path: Arc<Vec<OsString>>,
}

/// An fd counted against the open-file budget, given back when dropped.
#[derive(Debug)]
pub struct HeldFd {
    pub fd: Arc<OwnedFd>,
    budget: Option<Arc<std::sync::atomic::AtomicIsize>>,
}

impl HeldFd {
    pub fn new(fd: Arc<OwnedFd>, budget: Option<Arc<std::sync::atomic::AtomicIsize>>) -> HeldFd {
        HeldFd { fd, budget }
    }
}

impl Drop for HeldFd {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
pub struct NodeState {
    /// None only for the root.
    pub parent: Option<Arc<Node>>,
    pub name: Name,
    /// Topmost layer holding the entry.
    pub layer: usize,
    /// Directories: every layer that contributes, top first, cut at an opaque one.
    /// Shared, so a lookup takes the list without copying it (deep stacks).
    pub dirs: Arc<Vec<DirSlot>>,
    /// Rename generation this location was computed in (see `Union::refresh`).
    pub generation: u64,
    /// The copy-up count when a copy-up last moved the node. A lookup that raced it (the
    /// kernel revalidates and reads directories without the child's lock) may have found
    /// the old place; its result is not applied if its probe began before this.
    pub changed: u64,
    /// (st_dev, st_ino) of the topmost real file: tells a hard link (same real file) from
    /// another file that shows the same number (a copied-up link and its lower sibling).
    /// Set through `Node::set_real`.
    pub real: (u64, u64),
    /// Further names, kept handle, data location, unlinked: see `Rare`.
    pub rare: Rare,
}

/// A node's name: inline up to 22 bytes (most names: 95% of a Debian rootfs's), boxed
/// beyond, so that most nodes need no allocation of their own for it.
#[derive(Clone)]
pub enum Name {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Boxed(Box<OsStr>),
}

const INLINE_NAME: usize = 22;

impl std::ops::Deref for Name {
    type Target = OsStr;

    fn deref(&self) -> &OsStr {
        use std::os::unix::ffi::OsStrExt;
        match self {
            Name::Inline { len, bytes } => OsStr::from_bytes(&bytes[..usize::from(*len)]),
            Name::Boxed(b) => b,
        }
    }
}

impl From<&OsStr> for Name {
    fn from(s: &OsStr) -> Name {
        use std::os::unix::ffi::OsStrExt;
        let b = s.as_bytes();
        match u8::try_from(b.len()) {
            Ok(len) if b.len() <= INLINE_NAME => {
                let mut bytes = [0; INLINE_NAME];
                bytes[..b.len()].copy_from_slice(b);
                Name::Inline { len, bytes }
            }
            _ => Name::Boxed(s.into()),
        }
    }
}

impl From<OsString> for Name {
    fn from(s: OsString) -> Name {
        if s.len() <= INLINE_NAME {
            Name::from(s.as_os_str())
        } else {
            Name::Boxed(s.into_boxed_os_str())
        }
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// What few nodes have, boxed apart so that the others pay one word for it (a mount holds a
/// node for every entry the kernel caches, and most are never linked twice, copied up or
/// unlinked while open).
#[derive(Debug, Default)]
pub struct Rare(Option<Box<RareFields>>);

#[derive(Debug, Default)]
struct RareFields {
    /// Further names of a hard-linked file seen through the mount.
    links: Vec<(Arc<Node>, OsString)>,
    /// An O_PATH handle on the node's real entry, taken where its name may go while it is
    /// still in use: at copy-up (descriptors opened on the lower file follow the copy) and
    /// when its name is removed (fstat, fchmod, ftruncate of an open, unlinked entry).
    kept: Option<Kept>,
    /// A metadata-only upper file: where its data still is (a lower file).
    data: Option<Loc>,
    /// Every name is gone (it may live on through open files). If its inode number shows up
    /// again, it is a new file that the filesystem gave the freed number.
    unlinked: bool,
}

impl Rare {
    /// A node's start: no further names, and `kept` and `data` as given.
    pub fn new(kept: Option<Kept>, data: Option<Loc>) -> Rare {
        let mut r = Rare(None);
        r.set_kept(kept);
        r.set_data(data);
        r
    }

    /// The same, with every name gone (`unlinked`) or not.
    pub fn unlinked(mut self, unlinked: bool) -> Rare {
        self.set_unlinked(unlinked);
        self
    }

    fn fields(&mut self) -> &mut RareFields {
        self.0.get_or_insert_with(Box::default)
    }

    /// Give the box back once nothing is in it.
    fn tidy(&mut self) {
        if self.0.as_ref().is_some_and(|r| {
            r.links.is_empty() && r.kept.is_none() && r.data.is_none() && !r.unlinked
        }) {
            self.0 = None;
        }
    }

    fn set_kept(&mut self, kept: Option<Kept>) {
        match kept {
            Some(k) => self.fields().kept = Some(k),
            None => {
                if let Some(r) = self.0.as_mut() {
                    r.kept = None;
                }
                self.tidy();
            }
        }
    }

    fn set_unlinked(&mut self, unlinked: bool) {
        if unlinked {
            self.fields().unlinked = true;
        } else if let Some(r) = self.0.as_mut() {
            r.unlinked = false;
            self.tidy();
        }
    }

    fn set_data(&mut self, data: Option<Loc>) {
        match data {
            Some(d) => self.fields().data = Some(d),
            None => {
                if let Some(r) = self.0.as_mut() {
                    r.data = None;
                }
                self.tidy();
            }
        }
    }
}

impl NodeState {
    /// Every name is gone (it may live on through open files). If its inode number shows up
    /// again, it is a new file that the filesystem gave the freed number.
    pub fn unlinked(&self) -> bool {
        self.rare.0.as_ref().is_some_and(|r| r.unlinked)
    }

    pub fn set_unlinked(&mut self, unlinked: bool) {
        self.rare.set_unlinked(unlinked);
    }

    /// Further names of a hard-linked file seen through the mount.
    pub fn links(&self) -> &[(Arc<Node>, OsString)] {
        self.rare.0.as_ref().map_or(&[], |r| &r.links)
    }

    /// Change the further names (`f` gets them to edit in place).
    pub fn edit_links<R>(&mut self, f: impl FnOnce(&mut Vec<(Arc<Node>, OsString)>) -> R) -> R {
        let r = f(&mut self.rare.fields().links);
        self.rare.tidy();
        r
    }

    /// An O_PATH handle on the node's real entry, taken where its name may go while it is
    /// still in use: at copy-up (descriptors opened on the lower file follow the copy) and
    /// when its name is removed (fstat, fchmod, ftruncate of an open, unlinked entry).
    pub fn kept(&self) -> Option<&Kept> {
        self.rare.0.as_ref().and_then(|r| r.kept.as_ref())
    }

    pub fn kept_mut(&mut self) -> Option<&mut Kept> {
        self.rare.0.as_mut().and_then(|r| r.kept.as_mut())
    }

    pub fn set_kept(&mut self, kept: Option<Kept>) {
        self.rare.set_kept(kept);
    }

    /// A metadata-only upper file: where its data still is (a lower file).
    pub fn data(&self) -> Option<&Loc> {
        self.rare.0.as_ref().and_then(|r| r.data.as_ref())
    }

    pub fn data_mut(&mut self) -> Option<&mut Loc> {
        self.rare.0.as_mut().and_then(|r| r.data.as_mut())
    }

    pub fn set_data(&mut self, data: Option<Loc>) {
        self.rare.set_data(data);
    }
}

/// The FUSE node id of the root (`FUSE_ROOT_ID`).
pub const ROOT_ID: u64 = 1;

/// Node ids are handed out once per process: the kernel keys its inodes by node id, so a
/// number never names two files, whatever the branches do with their inode numbers.
static NEXT_ID: AtomicU64 = AtomicU64::new(ROOT_ID + 1);

#[derive(Debug)]
pub struct Node {
    /// The FUSE node id: how the kernel names this node in its requests.
    pub id: u64,
    /// The inode number the mount shows (`st_ino`, `d_ino`): the real file's, kept for
    /// life across copy-up, shared by hard links.
    pub ino: u64,
    /// `S_IFMT` bits: a node never changes type.
    pub kind: u32,
    state: RwLock<NodeState>,
    /// Kernel lookup count; the node leaves the table when it drops to zero.
    lookups: AtomicU64,
    /// Serialises copy-up of this node: two writers copy up once.
    pub copy_up_lock: Mutex<()>,
    /// Held shared while the node's name is resolved to its real file and that file used
    /// (open, stat, setattr, xattrs, readlink), exclusively while a rename moves the file
    /// and the node follows, or a removal or rename replaces it: the name may then hold
    /// another file, and the kernel does not make such operations wait for either.
    pub place: RwLock<()>,
    /// Open files and directories on it: only such a node needs a handle kept when its
    /// name goes.
    opens: AtomicU32,
    /// Of those, opens that tie the node to its inode: open for writing, or whose I/O the
    /// kernel does itself (passthrough: one backing file per node). A snapshot leaves such
    /// a file where its descriptors are and puts a copy in the snapshot.
    pinned: AtomicU32,
    /// A directory: the fingerprint of its layers when the kernel last cached its listing
    /// (see `Union::listing_stale`); 0 for none.
    pub listed: AtomicU64,
    /// Immutable and append-only as last found for its real file (`Union::protection`): 0
    /// not known, else known and which. Forgotten when the real file changes (`set_real`).
    pub prot: AtomicU8,
}

impl Node {
    /// The node's topmost real file is now `real` (its state `s`, locked by the caller):
    /// what was known of the old one goes.
    pub fn set_real(&self, s: &mut NodeState, real: (u64, u64)) {
        if s.real != real {
            s.real = real;
            self.prot.store(0, Ordering::Relaxed);
        }
    }

    /// A node with a node id of its own.
    pub fn new(ino: u64, kind: u32, state: NodeState) -> Node {
        Node::with_id(NEXT_ID.fetch_add(1, Ordering::Relaxed), ino, kind, state)
    }

    pub fn new_root(ino: u64, state: NodeState) -> Node {
        Node::with_id(ROOT_ID, ino, libc::S_IFDIR, state)
    }

    fn with_id(id: u64, ino: u64, kind: u32, state: NodeState) -> Node {
        Node {
            id,
            ino,
            kind,
            state: RwLock::new(state),
            lookups: AtomicU64::new(0),
            copy_up_lock: Mutex::new(()),
            place: RwLock::new(()),
            opens: AtomicU32::new(0),
            pinned: AtomicU32::new(0),
            listed: AtomicU64::new(0),
            prot: AtomicU8::new(0),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    pub fn state(&self) -> RwLockReadGuard<'_, NodeState> {
        self.state.read()
    }

    pub fn state_mut(&self) -> RwLockWriteGuard<'_, NodeState> {
        self.state.write()
    }

    pub fn layer(&self) -> usize {
        self.state.read().layer
    }

    /// Its data is in the upper (copied up whole, or never lower).
    pub fn data_in_upper(&self) -> bool {
        let st = self.state.read();
        st.layer == 0 && st.data().is_none()
    }

    /// An open file or directory; `pinned`: see the field.
    pub fn opened(&self, pinned: bool) {
        self.opens.fetch_add(1, Ordering::AcqRel);
        if pinned {
            self.pinned.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn closed(&self, pinned: bool) {
        self.opens.fetch_sub(1, Ordering::AcqRel);
        if pinned {
            self.pinned.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Acquire) > 0
    }

    pub fn is_open(&self) -> bool {
        self.opens.load(Ordering::Acquire) > 0
    }

    pub fn is_unlinked(&self) -> bool {
        self.state.read().unlinked()
    }

    /// Is the real file `real`, found under this node's number, still this node's file?
    /// While the node has names, yes (the caller tells a hard link from a copy). Once they
    /// are gone, only if that real file cannot have been freed and its number given to
    /// another: a lower file never is, an upper one is kept open while the kernel holds the
    /// node. A lookup that raced the removal (a revalidation the kernel does without the
    /// directory lock) then gets the node the kernel has, not a second node for one file.
    pub fn still_is(&self, real: (u64, u64)) -> bool {
        let st = self.state.read();
        !st.unlinked() || (st.real == real && (st.layer > 0 || st.kept().is_some()))
    }

    /// The directory's slot in `layer`, if it is present there.
    pub fn slot_in(&self, layer: usize) -> Option<DirSlot> {
        let st = self.state.read();
        st.dirs.iter().find(|d| d.layer == layer).cloned()
    }

    /// The names from the root down to this node (for redirect paths).
    pub fn components(&self) -> Vec<OsString> {
        let mut parts = Vec::new();
        let mut cur = {
            let st = self.state.read();
            st.parent.clone().inspect(|_| {
                parts.push(st.name.to_os_string());
            })
        };
        while let Some(n) = cur {
            let st = n.state.read();
            cur = st.parent.clone();
            if cur.is_some() {
                parts.push(st.name.to_os_string());
            }
        }
        parts.reverse();
        parts
    }

    /// Path inside the merged tree, for messages and logs only (never for I/O).
    pub fn path(&self) -> String {
        let mut parts = Vec::new();
        let mut cur: Option<Arc<Node>> = None;
        {
            let st = self.state.read();
            if st.parent.is_some() {
                parts.push(st.name.to_os_string());
                cur = st.parent.clone();
            }
        }
        while let Some(n) = cur {
            let st = n.state.read();
            if st.parent.is_none() {
                break;
            }
            parts.push(st.name.to_os_string());
            cur = st.parent.clone();
        }
        let mut s = String::new();
        for p in parts.iter().rev() {
            s.push('/');
            s.push_str(&p.to_string_lossy());
        }
        if s.is_empty() {
            s.push('/');
        }
        s
    }

    /// Forget `name` under `parent` as one of this node's names, after an unlink or rename.
    /// Returns false if the node has no name left.
    pub fn drop_name(&self, parent: &Arc<Node>, name: &OsStr) -> bool {
        let mut st = self.state.write();
        if !st.links().is_empty() {
            st.edit_links(|l| l.retain(|(p, n)| !(Arc::ptr_eq(p, parent) && n == name)));
        }
        let primary = st
            .parent
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, parent) && *st.name == *name);
        if primary {
            let next = if st.links().is_empty() {
                None
            } else {
                st.edit_links(|l| l.pop())
            };
            if let Some((p, n)) = next {
                st.parent = Some(p);
                st.name = n.into();
            } else {
                st.set_unlinked(true);
                return false;
            }
        }
        true
    }

    /// One of the node's names moved (rename): update that name, whichever it is.
    pub fn move_name(&self, from: (&Arc<Node>, &OsStr), to: (&Arc<Node>, &OsStr)) {
        let mut st = self.state.write();
        let is_from = |p: &Arc<Node>, n: &OsStr| Arc::ptr_eq(p, from.0) && n == from.1;
        if st.parent.as_ref().is_some_and(|p| is_from(p, &st.name)) || st.links().is_empty() {
            st.parent = Some(to.0.clone());
            st.name = to.1.into();
        } else {
            st.edit_links(|links| {
                if let Some(l) = links.iter_mut().find(|(p, n)| is_from(p, n)) {
                    *l = (to.0.clone(), to.1.to_owned());
                }
            });
        }
    }

    /// Record a further name for a hard-linked file.
    pub fn add_name(&self, parent: &Arc<Node>, name: &OsStr) {
        let mut st = self.state.write();
        if st.unlinked() {
            // Its first name (an O_TMPFILE file linked in).
            st.parent = Some(parent.clone());
            st.name = name.into();
            st.set_unlinked(false);
            return;
        }
        let known = |p: &Arc<Node>, n: &OsStr| Arc::ptr_eq(p, parent) && n == name;
        if st.parent.as_ref().is_some_and(|p| known(p, &st.name))
            || st.links().iter().any(|(p, n)| known(p, n))
        {
            return;
        }
        st.edit_links(|l| l.push((parent.clone(), name.to_owned())));
    }
}

/// A table that held at least this many nodes gives memory back to the system once three
/// quarters of them are forgotten. Low enough that a mount of one small image (a Debian
/// rootfs is ~7000 entries, ~2 MiB of nodes and tables) shrinks too; the trim stays rare:
/// the peak restarts from what is left.
const TRIM_FLOOR: usize = 1024;

/// Every node the kernel holds, by node id, and which of them each shown inode number
/// names now.
///
/// A number is the real file's, so a branch gives it to its next new file once the old
/// one is freed; the kernel may still hold the old node then (its forget is on the way).
/// The new file gets a node of its own, with a new id: the old node lives on under its id
/// until the kernel forgets it, but no longer answers to the number.
#[derive(Debug, Default)]
pub struct NodeTable {
    map: DashMap<u64, Arc<Node>>,
    /// The node each number names. Lock order: an entry here before one in `map`, so a
    /// lookup counting a reference and a forget dropping the last are never interleaved.
    by_ino: DashMap<u64, Arc<Node>>,
    /// Nodes held, and the most held since the table last gave memory back.
    count: AtomicUsize,
    peak: AtomicUsize,
}

impl NodeTable {
    /// The node the kernel knows as `id`.
    pub fn get(&self, id: u64) -> Option<Arc<Node>> {
        self.map.get(&id).map(|n| n.clone())
    }

    /// Does the kernel still hold this very node?
    pub fn holds(&self, node: &Arc<Node>) -> bool {
        node.id == ROOT_ID
            || self
                .map
                .get(&node.id)
                .is_some_and(|n| Arc::ptr_eq(&n, node))
    }

    /// The live node that shows inode number `ino`.
    pub fn by_ino(&self, ino: u64) -> Option<Arc<Node>> {
        self.by_ino.get(&ino).map(|n| n.clone())
    }

    /// The live node for `ino`, or `make()` inserted as new; either way the kernel now holds
    /// one more reference. A live node of another type under the number, or one whose names
    /// are all gone and that is not `real` (see `Node::still_is`), is a file whose number
    /// was freed and given to this one: the new node takes the number over.
    pub fn get_or_insert(
        &self,
        ino: u64,
        kind: u32,
        real: (u64, u64),
        make: impl FnOnce() -> Node,
    ) -> (Arc<Node>, bool) {
        match self.by_ino.entry(ino) {
            dashmap::Entry::Occupied(mut o) => {
                let old = o.get();
                if old.kind == kind && old.still_is(real) {
                    old.lookups.fetch_add(1, Ordering::AcqRel);
                    return (old.clone(), false);
                }
                log::debug!(
                    "number {ino}: node {} replaced (kind {} vs {kind}, state {:?})",
                    old.id,
                    old.kind,
                    {
                        let st = old.state();
                        (st.unlinked(), st.real, st.layer, st.kept().is_some(), real)
                    }
                );
                let node = self.held(make());
                o.insert(node.clone());
                (node, true)
            }
            dashmap::Entry::Vacant(v) => {
                let node = self.held(make());
                v.insert(node.clone());
                (node, true)
            }
        }
    }

    /// A new node, with the kernel's first reference counted.
    fn held(&self, node: Node) -> Arc<Node> {
        let node = Arc::new(node);
        node.lookups.store(1, Ordering::Release);
        self.map.insert(node.id, node.clone());
        self.counted();
        node
    }

    /// The node no longer answers to its number (a rollback took its file away): a
    /// lookup of whatever now shows the number gets a node of its own.
    pub fn unbind(&self, node: &Arc<Node>) {
        self.by_ino
            .remove_if(&node.ino, |_, n| Arc::ptr_eq(n, node));
    }

    /// One more kernel reference to a node we hand out again (a link's reply).
    pub fn remember(&self, node: &Arc<Node>) {
        let number = self.by_ino.entry(node.ino);
        match self.map.entry(node.id) {
            dashmap::Entry::Occupied(o) => {
                o.get().lookups.fetch_add(1, Ordering::AcqRel);
            }
            dashmap::Entry::Vacant(v) => {
                node.lookups.store(1, Ordering::Release);
                v.insert(node.clone());
                self.counted();
                if let dashmap::Entry::Vacant(n) = number {
                    n.insert(node.clone());
                }
            }
        }
    }

    /// The kernel dropped `n` references to node `id`; remove it when none are left.
    pub fn forget(&self, id: u64, n: u64) {
        let Some(ino) = self.map.get(&id).map(|node| node.ino) else {
            return;
        };
        // Under the number's lock: a lookup cannot count a reference to the node between
        // its count reaching zero and its leaving the number.
        let gone = {
            let number = self.by_ino.entry(ino);
            let gone = self.map.remove_if(&id, |_, node| {
                let prev = node.lookups.fetch_sub(n, Ordering::AcqRel);
                prev <= n
            });
            if let dashmap::Entry::Occupied(o) = number
                && gone.is_some()
                && o.get().id == id
            {
                o.remove();
            }
            gone
        };
        // The number's lock is released: shrinking locks every shard.
        if gone.is_some() {
            let now = self.count.fetch_sub(1, Ordering::Relaxed) - 1;
            // The kernel let most of the table go (memory pressure, drop_caches): give the
            // memory back, so the daemon shrinks with it.
            let peak = self.peak.load(Ordering::Relaxed);
            if peak >= TRIM_FLOOR && now < peak / 4 {
                self.peak.store(now, Ordering::Relaxed);
                self.map.shrink_to_fit();
                self.by_ino.shrink_to_fit();
                crate::sys::trim_heap();
            }
        }
    }

    fn counted(&self) {
        let now = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    pub fn insert_root(&self, node: Arc<Node>) {
        node.lookups.store(u64::MAX / 2, Ordering::Relaxed);
        self.by_ino.insert(node.ino, node.clone());
        self.map.insert(node.id, node);
        self.counted();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every live node (used after a directory rename, which is rare).
    pub fn all(&self) -> Vec<Arc<Node>> {
        self.map.iter().map(|e| e.value().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mount holds a node for every entry the kernel caches: keep them small (issue 18).
    #[test]
    fn node_stays_small() {
        assert!(
            size_of::<Node>() <= 152,
            "Node is {} bytes",
            size_of::<Node>()
        );
        assert!(
            size_of::<NodeState>() <= 88,
            "NodeState is {}",
            size_of::<NodeState>()
        );
    }

    #[test]
    fn names_inline_up_to_22_bytes() {
        use std::os::unix::ffi::OsStrExt;
        for n in [
            &b""[..],
            b"a",
            b"\xff\xfe not utf-8",
            &[b'x'; 22],
            &[b'y'; 23],
            &[b'z'; 300],
        ] {
            let os = OsStr::from_bytes(n);
            for name in [Name::from(os), Name::from(os.to_os_string())] {
                assert_eq!(&*name, os);
                assert_eq!(matches!(name, Name::Inline { .. }), n.len() <= 22);
                assert_eq!(format!("{name:?}"), format!("{os:?}"));
            }
        }
    }

    #[test]
    fn rare_fields_box_only_while_set() {
        let mut st = NodeState {
            parent: None,
            name: OsStr::new("f").into(),
            layer: 0,
            dirs: Arc::new(Vec::new()),
            generation: 0,
            changed: 0,
            real: (0, 0),
            rare: Rare::new(None, None),
        };
        assert!(st.rare.0.is_none());
        let fd: OwnedFd = std::fs::File::open("/").unwrap().into();
        st.set_kept(Some(Kept {
            fd: Arc::new(fd),
            layer: 1,
        }));
        assert_eq!(st.kept().map(|k| k.layer), Some(1));
        assert!(st.data().is_none() && st.links().is_empty());
        st.set_kept(None);
        assert!(st.rare.0.is_none());
        st.set_unlinked(true);
        assert!(st.unlinked() && st.rare.0.is_some());
        st.set_unlinked(false);
        assert!(!st.unlinked() && st.rare.0.is_none());
    }
}
