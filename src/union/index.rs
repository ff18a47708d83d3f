//! Hard links that survive copy-up (overlayfs' `index=on`).
//!
//! A file with several names in a lower layer is one file: writing through one name must
//! show through the others. So its first copy-up also links the copy into the index
//! directory of the upper (`.wh..wh..index/<inode number it shows>`), and every other name joins
//! that copy instead of being copied again: at its own copy-up, and as soon as it is looked
//! up, so that reading it never serves the stale lower data. The index outlives the mount;
//! names nobody looked up yet join after a remount just the same.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::Union;
use super::node::{Loc, Node};
use super::whiteout;
use crate::error::{Context, Result};
use crate::sys::{self, Stat};

/// On the index entry (so on every name): how many of the file's names in its lower layer
/// have not joined the copy yet. They still count in its link count, which so stays what it
/// was: the copy's own names, plus these (as overlayfs keeps `trusted.overlay.nlink`).
pub const PENDING_XATTR: &str = "trusted.unionmount.pending";
/// What uppers written before `PENDING_XATTR` carry instead: the lower link count, the
/// least the file shows.
pub const LINKS_XATTR: &str = "trusted.unionmount.links";

/// Joins update the pending count by read, change, write: one at a time.
static JOINING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn read_count(dir: i32, name: &OsStr, attr: &str) -> Option<u64> {
    let v = sys::lgetxattr(dir, name, attr.as_ref()).ok().flatten()?;
    String::from_utf8(v).ok()?.parse().ok()
}

/// The index entry's name for the file with inode number `ino` in the merged view.
pub fn key(ino: u64) -> OsString {
    OsString::from(format!("{ino:016x}"))
}

/// Is this lower entry a file the index may hold (several names in its layer)? Any kind
/// but a directory: a symlink or a device can have several names too, and the kernel shows
/// them as one node.
pub fn is_linked_lower(layer: usize, st: &Stat) -> bool {
    layer > 0 && st.st_mode & libc::S_IFMT != libc::S_IFDIR && st.st_nlink > 1
}

impl Union {
    /// The index entry of a lower file with several names (`ino`: the number it shows),
    /// if an earlier copy-up made one.
    pub(crate) fn indexed(&self, ino: u64) -> Option<(Arc<OwnedFd>, OsString)> {
        let index = self.stack().index()?;
        let key = key(ino);
        sys::fstatat(index.as_raw_fd(), &key).ok()?;
        Some((index, key))
    }

    /// Give `name` in `parent` (an upper directory) the indexed copy of its lower file, as a
    /// hard link. The parent's times stay as they were: joining is not a change.
    pub(crate) fn join_index(
        &self,
        index: &OwnedFd,
        key: &OsStr,
        up_parent: i32,
        name: &OsStr,
    ) -> Result<()> {
        let pst = sys::fstat_path(up_parent).op("stat parent")?;
        let joining = JOINING.lock();
        match sys::linkat(index.as_raw_fd(), key, up_parent, name) {
            Ok(()) => {
                // One name fewer waits in the lower.
                let ifd = index.as_raw_fd();
                if let Some(n) = read_count(ifd, key, PENDING_XATTR) {
                    let n = n.saturating_sub(1).to_string();
                    let _ = sys::lsetxattr(ifd, key, PENDING_XATTR.as_ref(), n.as_bytes(), 0);
                }
            }
            // Joined by a racing lookup.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(crate::error::Error::io(e, "join index").in_layer(0)),
        }
        drop(joining);
        let _ = sys::utimensat(
            up_parent,
            ".".as_ref(),
            Some(Some((pst.st_atime, pst.st_atime_nsec))),
            Some(Some((pst.st_mtime, pst.st_mtime_nsec))),
        );
        log::debug!(
            "index: {} joins copy {}",
            name.to_string_lossy(),
            key.to_string_lossy()
        );
        Ok(())
    }

    /// A lower name of an indexed file, found by lookup: join the copy now, so the name
    /// resolves to it. Returns whether it did.
    pub(crate) fn join_on_lookup(&self, parent: &Arc<Node>, name: &OsStr, ino: u64) -> bool {
        let Some((index, key)) = self.indexed(ino) else {
            return false;
        };
        let joined = self
            .upper_dir(parent)
            .and_then(|up| self.join_index(&index, &key, up.as_raw_fd(), name));
        match joined {
            Ok(()) => true,
            Err(e) => {
                log::warn!(
                    "{}/{}: cannot join its copied-up hard link: {e}",
                    parent.path(),
                    name.to_string_lossy()
                );
                false
            }
        }
    }

    /// The index of a lower layer, and the key the copy at `loc` holds there (its origin).
    fn lower_index(&self, loc: &Loc) -> Option<(Arc<OwnedFd>, OsString)> {
        let index = self.stack().layers.get(loc.layer)?.old_index.clone()?;
        let origin = sys::lgetxattr(loc.raw(), &loc.name, whiteout::ORIGIN_XATTR.as_ref())
            .ok()
            .flatten()?;
        let (ino, _) = whiteout::decode_origin(&origin)?;
        Some((index, key(ino)))
    }

    /// After the copy-up of a file with several lower names: the other names the kernel
    /// knows join the copy on disk now. It serves them already (one node), but a name left
    /// unjoined on disk would show the old data once this upper is stacked as a lower, where
    /// its index no longer applies.
    pub(crate) fn join_known_names(&self, node: &Node) {
        let Some((index, key)) = self.indexed(node.ino) else {
            return;
        };
        let links = node.state().links().to_vec();
        for (parent, name) in links {
            let joined = self
                .upper_dir(&parent)
                .and_then(|up| self.join_index(&index, &key, up.as_raw_fd(), &name));
            if let Err(e) = joined {
                log::warn!(
                    "{}/{}: cannot join its copied-up hard link: {e}",
                    parent.path(),
                    name.to_string_lossy()
                );
            }
        }
    }

    /// Publish a finished copy (`tmp` in the work dir) in the index before it gets its name:
    /// a crash in between leaves a whole copy that the names join at the next mount.
    pub(crate) fn add_to_index(
        &self,
        work: i32,
        tmp: &OsStr,
        src: &Loc,
        lower: &Stat,
        ino: u64,
    ) -> Result<OsString> {
        let index = self.stack().index_or_create()?;
        let key = key(ino);
        // Every lower name but the one being copied up; a copy in a layer that was an upper
        // has one more link, its own index entry, which is no name.
        let indexed_there = self.lower_index(src).is_some_and(|(i, k)| {
            sys::fstatat(i.as_raw_fd(), &k)
                .is_ok_and(|e| (e.st_dev, e.st_ino) == (lower.st_dev, lower.st_ino))
        });
        let names = lower.st_nlink - libc::nlink_t::from(indexed_there);
        let pending = names.saturating_sub(1).to_string();
        let _ = sys::lsetxattr(work, tmp, PENDING_XATTR.as_ref(), pending.as_bytes(), 0);
        sys::linkat(work, tmp, index.as_raw_fd(), &key).op("copy-up index")?;
        Ok(key)
    }

    /// Undo `add_to_index` for a copy that was not published.
    pub(crate) fn drop_from_index(&self, key: &OsStr) {
        if let Some(index) = self.stack().index() {
            let _ = sys::unlinkat(index.as_raw_fd(), key, false);
        }
    }

    /// The link count an indexed file shows: its names (not the index's own link), and the
    /// lower names not joined yet (see `PENDING_XATTR`). Also for such a file
    /// in a layer that was the upper when the copy was made: its index came along.
    pub(crate) fn indexed_links(&self, node: &Node, st: &mut Stat) {
        if node.kind == libc::S_IFDIR || st.st_nlink < 2 {
            return;
        }
        let layer = node.state().layer;
        let found = if layer == 0 && self.writable() {
            self.stack().index().map(|i| (i, key(node.ino)))
        } else if self.stack().layers[layer].old_index.is_some() {
            self.try_locate(node).and_then(|l| self.lower_index(&l))
        } else {
            None
        };
        let Some((index, key)) = found else {
            return;
        };
        match sys::fstatat(index.as_raw_fd(), &key) {
            Ok(e) if (e.st_dev, e.st_ino) == (st.st_dev, st.st_ino) => {}
            _ => return,
        }
        let ifd = index.as_raw_fd();
        let names = st.st_nlink - 1;
        st.st_nlink = match read_count(ifd, &key, PENDING_XATTR) {
            Some(pending) => names + pending as libc::nlink_t,
            None => names.max(read_count(ifd, &key, LINKS_XATTR).unwrap_or(0) as _),
        };
    }
}
