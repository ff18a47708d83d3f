//! Lookup: resolve a name top-down through the parent's layers. Resolution stops at a
//! whiteout, at a non-directory, and after an opaque directory; directories found in
//! several layers merge.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::index;
use super::node::{LayerDir, Loc, Node, NodeState, Rare};
use super::whiteout::{self, Redirect};
use super::{ROOT_INO, Union};
use crate::error::{Context, Error, Result};
use crate::sys::{self, Stat};

/// What a probe of one name found.
#[derive(Debug)]
pub struct Found {
    /// Topmost layer holding the entry, and its stat there.
    pub layer: usize,
    pub st: Stat,
    /// For a directory, every contributing layer.
    pub dirs: Vec<LayerDir>,
    pub ino: u64,
    /// For an upper file holding metadata only: the lower file holding its data.
    pub data: Option<Loc>,
    /// The copy-up count before the probe began (see `NodeState::changed`).
    pub epoch: u64,
}

/// What the resolution rule found: the topmost entry's layer and stat, the directory that
/// holds it, and for a directory every layer it merges from.
struct Hit {
    layer: usize,
    st: Stat,
    dirs: Vec<LayerDir>,
    holder: LayerDir,
}

fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

impl Union {
    /// Resolve `name` in `parent`. `Ok(None)` means it does not exist in the merged view.
    /// A found node is counted as one more kernel reference.
    pub fn lookup(&self, parent: &Arc<Node>, name: &OsStr) -> Result<Option<(Arc<Node>, Stat)>> {
        let Some(found) = self.probe(parent, name)? else {
            return Ok(None);
        };
        Ok(Some(self.bind(parent, name, found)))
    }

    /// Turn a probe result into the node the kernel will hold.
    pub(crate) fn bind(&self, parent: &Arc<Node>, name: &OsStr, found: Found) -> (Arc<Node>, Stat) {
        let generation = self.generation();
        let kind = found.st.st_mode & libc::S_IFMT;
        let Found {
            layer,
            mut st,
            dirs,
            mut ino,
            data,
            epoch,
        } = found;
        let real = (st.st_dev, st.st_ino);
        // A number taken by another real file (a copied-up hard link's lower sibling shows
        // the copy's origin number) gets a number of its own, tagged in the top bits: the
        // number, then it ^ 1 << 61, then ^ 3 << 61 (`live_node` looks there too).
        let (mut tag, mut taken_over) = (1u64, false);
        loop {
            let (node, fresh) = self.nodes.get_or_insert(ino, kind, real, || {
                Node::new(
                    ino,
                    kind,
                    NodeState {
                        parent: Some(parent.clone()),
                        name: name.into(),
                        layer,
                        dirs: self.keep_slots(dirs.clone()),
                        generation,
                        changed: 0,
                        real,
                        rare: Rare::new(None, data.clone()),
                    },
                )
            });
            // Is what the probe saw still where the node is? Not if it raced the removal of
            // the node's last name (the node stays reachable through its kept handle only) or
            // a copy-up: the node stays where it is now, and so do the attributes replied.
            let mut stale = !fresh && node.is_unlinked();
            if !fresh && !stale {
                // Its directory node is gone (the kernel forgot it, or a rollback took it
                // away) while the kernel still holds the file's: found again under the
                // directory's new node, this is its place, not a further hard link. (Asked
                // before the node's lock is taken: one node's state lock at a time.)
                let old_parent = node.state().parent.clone();
                let orphaned = old_parent.is_some_and(|p| !self.nodes.holds(&p) || p.is_unlinked());
                let mut s = node.state_mut();
                let same_place =
                    s.parent.as_ref().is_some_and(|p| Arc::ptr_eq(p, parent)) && *s.name == *name;
                if node.is_dir() || same_place || orphaned {
                    stale = epoch < s.changed;
                    if !stale {
                        s.parent = Some(parent.clone());
                        s.name = name.into();
                        s.layer = layer;
                        s.dirs = self.keep_slots(dirs.clone());
                        s.generation = generation;
                        node.set_real(&mut s, real);
                        s.set_data(data.clone());
                    }
                } else if s.real == real {
                    drop(s);
                    // No rename or removal through the mount moves the node's names meanwhile
                    // (they hold it for writing), so what is read now stays true.
                    let place = node.place.read();
                    if !taken_over && self.lost_its_file(&node, real) {
                        // Its file left every name it had by hand, and the branch gave the
                        // freed number to this new file: the number is this one's now.
                        drop(place);
                        self.nodes.unbind(&node);
                        self.nodes.forget(node.id, 1);
                        taken_over = true;
                        continue;
                    }
                    node.add_name(parent, name);
                } else if tag < 3 {
                    drop(s);
                    self.nodes.forget(node.id, 1);
                    ino ^= tag << 61;
                    tag += 1;
                    continue;
                }
            }
            if let Some(now) = stale.then(|| self.getattr(&node).ok()).flatten() {
                return (node, now);
            }
            self.present(&node, &mut st);
            return (node, st);
        }
    }

    /// Whether none of `node`'s names holds its real file `real` any more (each is gone or
    /// another file): it was removed by hand, and a further name with its number is a new
    /// file, not a hard link. An error tells nothing: then it is not lost.
    fn lost_its_file(&self, node: &Node, real: (u64, u64)) -> bool {
        // Removed through the mount (a name may still bring it back), or open: a file the
        // daemon holds keeps its number, so it is this very file.
        if node.is_unlinked() || node.is_open() {
            return false;
        }
        let (names, layer) = {
            let st = node.state();
            if st.real != real {
                return false;
            }
            let mut names = st.links().to_vec();
            if let Some(p) = st.parent.clone() {
                names.push((p, st.name.to_os_string()));
            }
            (names, st.layer)
        };
        !names.is_empty()
            && names.iter().all(|(p, n)| {
                let Some(dir) = self.dir_in(p, layer) else {
                    return false;
                };
                match sys::fstatat(dir.as_raw_fd(), n) {
                    Ok(st) => (st.st_dev, st.st_ino) != real,
                    Err(e) => e.raw_os_error() == Some(libc::ENOENT),
                }
            })
    }

    /// The live node of a probed entry, if the kernel holds one: the node its number names,
    /// or the one `bind` gave a tagged number to, holding the entry's real file.
    pub(crate) fn live_node(&self, found: &Found) -> Option<Arc<Node>> {
        let real = (found.st.st_dev, found.st.st_ino);
        let first = self.nodes.by_ino(found.ino);
        if first.as_ref().is_none_or(|n| n.state().real == real) {
            return first;
        }
        [1u64, 3]
            .iter()
            .filter_map(|t| self.nodes.by_ino(found.ino ^ (t << 61)))
            .find(|n| n.state().real == real)
            .or(first)
    }

    /// The node for a probed entry without counting a kernel reference: the live one if
    /// the kernel holds it, else a transient one that lives as long as the caller needs it.
    pub fn node_for(&self, parent: &Arc<Node>, name: &OsStr, found: Found) -> Arc<Node> {
        if let Some(n) = self.live_node(&found) {
            return n;
        }
        Arc::new(Node::new(
            found.ino,
            found.st.st_mode & libc::S_IFMT,
            NodeState {
                parent: Some(parent.clone()),
                name: name.into(),
                layer: found.layer,
                dirs: self.keep_slots(found.dirs),
                generation: self.generation(),
                changed: 0,
                real: (found.st.st_dev, found.st.st_ino),
                rare: Rare::new(None, found.data),
            },
        ))
    }

    /// The parent's layer directories, recomputed first if a directory rename made them stale.
    pub fn dirs_of(&self, dir: &Arc<Node>) -> Result<Vec<LayerDir>> {
        let slots = self.slots_of(dir)?;
        slots.iter().map(|s| self.open_slot(s)).collect()
    }

    /// The parent's layer slots, unopened: a lookup opens only those it reaches, so a name
    /// in the top layer costs the same however many layers lie below.
    pub(crate) fn slots_of(&self, dir: &Arc<Node>) -> Result<Arc<Vec<super::node::DirSlot>>> {
        if !dir.is_dir() {
            return Err(Error::new(libc::ENOTDIR, "lookup").at(dir.path()));
        }
        self.refresh_if_stale(dir)?;
        Ok(dir.state().dirs.clone())
    }

    /// Probe `name` in every layer of `parent`, top-down.
    pub fn probe(&self, parent: &Arc<Node>, name: &OsStr) -> Result<Option<Found>> {
        self.probe_from(parent, name, 0)
    }

    /// Lookup of a name a listing just showed in layer `layer` (readdirplus): the read-only
    /// layers above it neither held the name nor hid it, so the probe skips them. The upper
    /// is still asked: it may have changed through the mount since the listing.
    pub fn lookup_listed(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        layer: usize,
    ) -> Result<Option<(Arc<Node>, Stat)>> {
        let Some(found) = self.probe_from(parent, name, layer)? else {
            return Ok(None);
        };
        Ok(Some(self.bind(parent, name, found)))
    }

    fn probe_from(&self, parent: &Arc<Node>, name: &OsStr, from: usize) -> Result<Option<Found>> {
        if whiteout::is_reserved(name) || name == "." || name == ".." {
            return Ok(None);
        }
        let epoch = self.changes();
        let slots = self.slots_of(parent)?;
        let reached = slots.iter().filter(|s| s.layer == 0 || s.layer >= from);
        let found = self
            .probe_layers(reached.map(|s| self.open_slot(s)), name)
            .map_err(|e| e.at(format!("{}/{}", parent.path(), name.to_string_lossy())))?;
        let Some(Hit {
            layer,
            st,
            dirs,
            holder: top,
        }) = found
        else {
            return Ok(None);
        };
        let (ino, ours) = self.derive_ino(Some(top.raw()), name, layer, &st);
        // A name of a lower file whose other name was copied up joins that copy first.
        if index::is_linked_lower(layer, &st)
            && self.writable()
            && self.join_on_lookup(parent, name, ino)
        {
            return self.probe(parent, name);
        }
        // With no layer below a marked file has no data to find: not worth asking.
        let below = slots.iter().any(|s| s.layer > layer);
        let metacopy = ours || (below && self.holds_metadata_only(top.raw(), name, layer, &st));
        let data = if metacopy {
            self.metacopy_data(&slots, layer, top.clone(), name)?
        } else {
            None
        };
        Ok(Some(Found {
            layer,
            st,
            dirs,
            ino,
            data,
            epoch,
        }))
    }

    /// Does this regular file hold metadata only, its data in a layer below? Kernel
    /// overlayfs marks such a file `*.overlay.metacopy`; our own copies say so in their
    /// origin record, which `derive_ino` has already read for the writable upper. In any
    /// other layer the file is a lower one and its record is read here.
    ///
    /// Only the xattrs tell; no stat field does. A marked file has no data blocks, but ext4
    /// may charge it a block for its xattrs: a marked 14-byte copy shows the 8 sectors of an
    /// ordinary 14-byte file, and a marked file can be empty. So every regular file with a
    /// layer below is asked, as overlayfs asks on each lookup, in one listing: most files
    /// carry no xattr.
    fn holds_metadata_only(&self, dir: i32, name: &OsStr, layer: usize, st: &Stat) -> bool {
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return false;
        }
        let Ok(present) = sys::llistxattr(dir, name) else {
            return false;
        };
        let has = |a: &str| present.iter().any(|p| p == a.as_bytes());
        if whiteout::METACOPY_XATTRS.iter().any(|a| has(a)) {
            return true;
        }
        let upper = layer == 0 && self.writable();
        !upper
            && has(whiteout::ORIGIN_XATTR)
            && sys::lgetxattr(dir, name, whiteout::ORIGIN_XATTR.as_ref())
                .ok()
                .flatten()
                .and_then(|v| whiteout::decode_origin(&v))
                .is_some_and(|(_, metacopy)| metacopy)
    }

    /// The lower file holding the data of a metadata-only file `name` of `parent`, found
    /// in `holder` (in `layer`): the next entry of the same name below it, or, for a file
    /// kernel overlayfs renamed, of the path its redirect records. If that one holds
    /// metadata only too (a marked upper stacked as a lower), the next below that.
    fn metacopy_data(
        &self,
        slots: &[super::node::DirSlot],
        mut layer: usize,
        mut holder: LayerDir,
        name: &OsStr,
    ) -> Result<Option<Loc>> {
        // Where the layers below look for the data: the parent's directories and the name,
        // until a redirect says otherwise.
        let mut pdirs = slots
            .iter()
            .filter(|s| s.layer > layer)
            .map(|s| self.open_slot(s))
            .collect::<Result<Vec<_>>>()?;
        let mut cur = name.to_owned();
        loop {
            match self.redirect_in(holder.raw(), &cur) {
                Some(Redirect::Absolute(to)) => {
                    let Some((last, at)) = to.split_last() else {
                        return Ok(None);
                    };
                    pdirs = self.dirs_below(layer, at)?;
                    cur = last.clone();
                }
                Some(Redirect::Relative(to)) => cur = to,
                None => {}
            }
            let below = pdirs.iter().filter(|d| d.layer > layer).cloned().map(Ok);
            let hit = self.probe_layers(below, &cur)?;
            let Some(hit) = hit.filter(|h| h.st.st_mode & libc::S_IFMT == libc::S_IFREG) else {
                log::warn!(
                    "metacopy {}: its lower data is gone",
                    name.to_string_lossy()
                );
                return Ok(None);
            };
            let more = hit.layer + 1 < self.stack().layers.len();
            if more && self.holds_metadata_only(hit.holder.raw(), &cur, hit.layer, &hit.st) {
                layer = hit.layer;
                holder = hit.holder;
                continue;
            }
            return Ok(Some(Loc {
                dir: hit.holder.fd,
                name: cur,
                layer: hit.layer,
            }));
        }
    }

    /// The resolution rule over layer directories, top first (opened as they are reached):
    /// the topmost entry, the directory holding it, and for a directory every layer it
    /// merges from. A directory moved within a layer (it carries a redirect) finds its
    /// parts in the layers below where it came from, whichever layer it is in: so an upper
    /// keeps its meaning when it is stacked as a lower.
    fn probe_layers(
        &self,
        pdirs: impl IntoIterator<Item = Result<LayerDir>>,
        name: &OsStr,
    ) -> Result<Option<Hit>> {
        // The name and parent directories the layers below are asked, until a redirect
        // changes them.
        let mut name = name.to_owned();
        let mut wh = whiteout::whiteout_name(&name);
        let mut pdirs = pdirs.into_iter().peekable();
        // Once a redirect is followed: the layers below, where it leads.
        let mut redirected: Option<std::vec::IntoIter<LayerDir>> = None;
        let mut top: Option<(usize, Stat, LayerDir)> = None;
        let mut dirs = Vec::new();
        loop {
            let d = match redirected.as_mut() {
                Some(below) => below.next(),
                None => pdirs.next().transpose()?,
            };
            let Some(d) = d else {
                break;
            };
            let st = match sys::fstatat(d.raw(), &name) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if more_below(&redirected, &mut pdirs) && sys::fstatat(d.raw(), &wh).is_ok() {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(Error::io(e, "lookup").in_layer(d.layer)),
            };
            if self.is_whiteout(&d, &name, &st) {
                break;
            }
            if top.is_some() && !is_dir(&st) {
                break; // a non-directory below a directory ends the merge
            }
            if top.is_none() {
                top = Some((d.layer, st, d.clone()));
            }
            if !is_dir(&st) {
                break;
            }
            let fd = sys::open_dir_path(d.raw(), &name)
                .op("open dir")
                .map_err(|e| e.in_layer(d.layer))?;
            // Only a layer with layers below can send them elsewhere.
            let below = d.layer + 1 < self.stack().layers.len();
            let marks = self.dir_marks(std::os::fd::AsRawFd::as_raw_fd(&fd), below)?;
            let (opaque, xwhiteouts) = (marks.opaque, marks.xwhiteouts);
            let mut path = (*d.path).clone();
            path.push(name.clone());
            dirs.push(LayerDir {
                layer: d.layer,
                fd: Arc::new(fd),
                xwhiteouts,
                path: Arc::new(path),
            });
            if opaque {
                break; // nothing below shows
            }
            match marks.redirect {
                Some(Redirect::Absolute(to)) => {
                    let Some((last, at)) = to.split_last() else {
                        break;
                    };
                    redirected = Some(self.dirs_below(d.layer, at)?.into_iter());
                    name = last.clone();
                    wh = whiteout::whiteout_name(&name);
                }
                Some(Redirect::Relative(to)) => {
                    name = to;
                    wh = whiteout::whiteout_name(&name);
                }
                // Deleted and recreated in this same layer: nothing below shows.
                None if more_below(&redirected, &mut pdirs)
                    && sys::fstatat(d.raw(), &wh).is_ok() =>
                {
                    break;
                }
                None => {}
            }
        }
        Ok(top.map(|(layer, st, holder)| Hit {
            layer,
            st,
            dirs,
            holder,
        }))
    }

    /// The redirect an entry `name` in `dir` carries, in our format or the kernel's.
    pub(crate) fn redirect_in(&self, dir: i32, name: &OsStr) -> Option<Redirect> {
        // One listing first: most entries carry no xattr at all.
        let present = sys::llistxattr(dir, name).ok()?;
        let attr = whiteout::REDIRECT_XATTRS
            .iter()
            .find(|a| present.iter().any(|p| p == a.as_bytes()))?;
        let v = sys::lgetxattr(dir, name, attr.as_ref()).ok().flatten()?;
        let r = Redirect::parse(&v);
        if r.is_none() {
            log::warn!(
                "{}: ignoring the malformed redirect {attr}={:?}",
                name.to_string_lossy(),
                String::from_utf8_lossy(&v)
            );
        }
        r
    }

    /// The recorded lower path of a moved upper directory `name` in `parent`, if any
    /// (a relative redirect resolved against the parent's path).
    pub(crate) fn redirect_of(
        &self,
        dir: i32,
        name: &OsStr,
        parent: &Node,
    ) -> Option<Vec<OsString>> {
        Some(match self.redirect_in(dir, name)? {
            Redirect::Absolute(p) => p,
            Redirect::Relative(n) => {
                let mut p = parent.components();
                p.push(n);
                p
            }
        })
    }

    /// The path at which the layers below the upper show `node`: its names up to the
    /// root, through the redirect of the nearest ancestor moved in the upper (as overlayfs
    /// builds one). What a rename records so the moved directory finds its lower parts.
    pub(crate) fn lower_path(&self, node: &Arc<Node>) -> Vec<OsString> {
        let mut rev: Vec<OsString> = Vec::new();
        let mut cur = node.clone();
        loop {
            let (parent, name) = {
                let st = cur.state();
                match st.parent.clone() {
                    Some(p) => (p, st.name.to_os_string()),
                    None => break,
                }
            };
            let moved = self
                .dir_in(&parent, 0)
                .and_then(|d| self.redirect_in(std::os::fd::AsRawFd::as_raw_fd(&*d), &name));
            match moved {
                Some(Redirect::Absolute(to)) => {
                    rev.extend(to.into_iter().rev());
                    break;
                }
                Some(Redirect::Relative(to)) => rev.push(to),
                None => rev.push(name),
            }
            cur = parent;
        }
        rev.reverse();
        rev
    }

    /// The merged directories at `path` (from the root) of the layers below `layer`, as
    /// if the layers above were absent; empty where no directory is there.
    pub(crate) fn dirs_below(&self, layer: usize, path: &[OsString]) -> Result<Vec<LayerDir>> {
        let root = self.root();
        let mut dirs: Vec<LayerDir> = self
            .dirs_of(&root)?
            .into_iter()
            .filter(|d| d.layer > layer)
            .collect();
        for part in path {
            match self.probe_layers(dirs.into_iter().map(Ok), part)? {
                Some(hit) if is_dir(&hit.st) => dirs = hit.dirs,
                _ => return Ok(Vec::new()),
            }
        }
        Ok(dirs)
    }

    /// One rule for inode numbers, shared by lookup and readdir: an upper entry that
    /// records its origin (copy-up, rename) keeps it; anything else shows its own. Also
    /// says whether the upper entry holds metadata only (see `whiteout::METACOPY`).
    pub(crate) fn derive_ino(
        &self,
        dir: Option<i32>,
        name: &OsStr,
        layer: usize,
        st: &Stat,
    ) -> (u64, bool) {
        if self.keeps_records(layer) {
            if let Some(o) = self.origins.get(&(st.st_dev, st.st_ino)) {
                return o;
            }
            let recorded = dir.and_then(|d| {
                sys::lgetxattr(d, name, whiteout::ORIGIN_XATTR.as_ref())
                    .ok()
                    .flatten()
            });
            if let Some(o) = recorded.and_then(|v| whiteout::decode_origin(&v)) {
                return o;
            }
        }
        (self.ino_of(st), false)
    }

    /// Whether the union's records on entries of `layer` are its own: the upper's, and
    /// those of snapshots of it (an upper once, where they were made).
    pub(crate) fn keeps_records(&self, layer: usize) -> bool {
        (layer == 0 && self.writable())
            || (layer > 0
                && self
                    .stack()
                    .layers
                    .get(layer)
                    .is_some_and(|l| l.snapshot.is_some()))
    }

    /// An upper inode is about to be freed: the filesystem may give its number to the next
    /// file created, which must not inherit the record.
    pub(crate) fn forget_origin(&self, st: &Stat) {
        self.origins.remove(&(st.st_dev, st.st_ino));
    }

    /// Remember which inode number the upper entry `name` in `dir` carries (copy-up, rename)
    /// and whether it holds metadata only.
    pub(crate) fn record_origin(&self, dir: i32, name: &OsStr, ino: u64, metacopy: bool) {
        if let Ok(st) = sys::fstatat(dir, name) {
            self.origins.insert((st.st_dev, st.st_ino), (ino, metacopy));
        }
    }

    /// Is this entry a whiteout in any of the formats we read?
    pub(crate) fn is_whiteout(&self, d: &LayerDir, name: &OsStr, st: &Stat) -> bool {
        if whiteout::is_whiteout_dev(st) {
            return true;
        }
        d.xwhiteouts
            && whiteout::may_be_xattr_whiteout(st)
            && whiteout::WHITEOUT_XATTRS
                .iter()
                .any(|a| matches!(sys::lgetxattr(d.raw(), name, a.as_ref()), Ok(Some(_))))
    }

    /// Where the node's topmost real entry is now.
    pub fn locate(&self, node: &Arc<Node>) -> Result<Loc> {
        if node.ino == ROOT_INO {
            let top = node.state().dirs[0].clone();
            let d = self.open_slot(&top)?;
            return Ok(Loc {
                dir: d.fd,
                name: OsString::from("."),
                layer: d.layer,
            });
        }
        if node.is_unlinked() {
            // Its names are gone: only the handle kept at unlink reaches it (open files).
            return self
                .kept_loc(node)
                .ok_or_else(|| Error::new(libc::ENOENT, "locate").at(node.path()));
        }
        self.refresh_if_stale(node)?;
        if let Some(loc) = self.try_locate(node) {
            return Ok(loc);
        }
        self.refresh(node)?;
        self.try_locate(node)
            .ok_or_else(|| Error::new(libc::ESTALE, "locate").at(node.path()))
    }

    /// The node's kept handle as a location (an empty name: the handle itself).
    pub(crate) fn kept_loc(&self, node: &Node) -> Option<Loc> {
        let kept = node.state().kept().cloned()?;
        Some(Loc {
            dir: kept.fd,
            name: OsString::new(),
            layer: kept.layer,
        })
    }

    pub(crate) fn try_locate(&self, node: &Node) -> Option<Loc> {
        let (parent, name, layer) = {
            let st = node.state();
            (st.parent.clone()?, st.name.to_os_string(), st.layer)
        };
        let dir = self.dir_in(&parent, layer)?;
        Some(Loc { dir, name, layer })
    }

    fn refresh_if_stale(&self, node: &Arc<Node>) -> Result<()> {
        if node.ino != ROOT_INO && node.state().generation != self.generation() {
            self.refresh(node)?;
        }
        Ok(())
    }

    /// Re-resolve a node at its (primary) name. If the name now holds another file, or
    /// nothing, the node keeps its last known location (an unlinked file stays usable).
    pub(crate) fn refresh(&self, node: &Arc<Node>) -> Result<()> {
        let generation = self.generation();
        let (parent, name) = {
            let st = node.state();
            match st.parent.clone() {
                Some(p) => (p, st.name.clone()),
                None => return Ok(()),
            }
        };
        let found = self.probe(&parent, &name)?;
        let mut st = node.state_mut();
        if let Some(f) = found.filter(|f| f.ino == node.ino && f.epoch >= st.changed) {
            st.layer = f.layer;
            st.dirs = self.keep_slots(f.dirs);
            node.set_real(&mut st, (f.st.st_dev, f.st.st_ino));
            st.set_data(f.data);
        }
        st.generation = generation;
        Ok(())
    }
}

/// Are there layers left to probe below the current one (through a redirect, or the
/// parent's own)? A whiteout only hides what is below: in the last layer there is none,
/// so it is not looked for there.
fn more_below<I: Iterator>(
    redirected: &Option<std::vec::IntoIter<LayerDir>>,
    pdirs: &mut std::iter::Peekable<I>,
) -> bool {
    match redirected {
        Some(below) => below.len() > 0,
        None => pdirs.peek().is_some(),
    }
}
