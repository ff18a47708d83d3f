//! Listing directories (overlayfs's readdir.c): opendir, readdir, readdirplus, fsyncdir.
//!
//! Directories have no handle. The kernel opens them without a round trip
//! (`FUSE_NO_OPENDIR_SUPPORT`: OPENDIR is answered ENOSYS once) and keeps each listing it
//! read in its cache (`FOPEN_CACHE_DIR`) until the directory changes through the mount.
//! Changes made by hand in a layer are seen when the kernel next asks for the directory's
//! attributes (GETATTR, LOOKUP, READDIRPLUS; at the latest once they time out):
//! `UnionFs::check_listing` drops the kernel's copy then.
//! A listing is taken at offset 0 and served from the same snapshot until the kernel asks
//! past its end.

use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyOpen,
};

use super::UnionFs;
use super::inode::file_type;
use crate::sys;
use crate::union::node::Node;
use crate::union::readdir::DirEntry;

pub(super) fn opendir(fs: &UnionFs, ino: INodeNo, reply: ReplyOpen) {
    if fs.no_opendir {
        // The kernel stops asking, and opens every directory with its cache kept.
        return reply.error(Errno::ENOSYS);
    }
    // A kernel without FUSE_NO_OPENDIR_SUPPORT (before Linux 5.1) asks at each open: keep
    // its cached listing unless a layer changed by hand.
    let node = match fs.node(ino) {
        Ok(n) => n,
        Err(e) => return reply.error(e),
    };
    if !node.is_dir() {
        return reply.error(Errno::ENOTDIR);
    }
    let flags = match fs.union.listing_stale(&node) {
        Ok(false) => FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        Ok(true) => FopenFlags::FOPEN_CACHE_DIR,
        Err(e) => return reply.error(fs.fail(&e)),
    };
    reply.opened(FileHandle(0), flags);
}

pub(super) fn readdir(fs: &UnionFs, ino: INodeNo, offset: u64, mut reply: ReplyDirectory) {
    let l = match listing(fs, ino, offset) {
        Ok(l) => l,
        Err(e) => return reply.error(e),
    };
    for e in l.rest() {
        if reply.add(INodeNo(e.ino), e.off, file_type(e.kind), &e.name) {
            break;
        }
    }
    reply.ok();
}

pub(super) fn readdirplus(fs: &UnionFs, ino: INodeNo, offset: u64, mut reply: ReplyDirectoryPlus) {
    let l = match listing(fs, ino, offset) {
        Ok(l) => l,
        Err(e) => return reply.error(e),
    };
    let dir = &l.dir;
    for e in l.rest() {
        let off = e.off;
        if e.name == "." || e.name == ".." {
            // Node id 0: nothing for the kernel to link (it skips dot entries anyway),
            // so no lookup is counted for them.
            let mut st = sys::zeroed_stat();
            st.st_ino = e.ino;
            st.st_mode = libc::S_IFDIR;
            if reply.add(
                INodeNo(0),
                off,
                &e.name,
                &Duration::ZERO,
                &fs.attr(&st),
                Generation(0),
            ) {
                break;
            }
            continue;
        }
        let (node, st) = match fs.union.lookup_listed(dir, &e.name, e.layer) {
            Ok(Some(found)) => found,
            _ => continue, // gone since the snapshot
        };
        fs.check_listing(&node);
        if reply.add(
            INodeNo(node.id),
            off,
            &e.name,
            &fs.ttl,
            &fs.attr(&st),
            Generation(0),
        ) {
            // Not sent after all: give back the reference the lookup counted.
            fs.union.nodes.forget(node.id, 1);
            break;
        }
    }
    reply.ok();
}

pub(super) fn fsyncdir(fs: &UnionFs, ino: INodeNo, datasync: bool, reply: ReplyEmpty) {
    if fs.syncs_omitted() {
        return reply.error(Errno::ENOSYS);
    }
    super::reply_empty(reply, fs.on(ino, |n| fs.union.fsync_dir(&n, datasync)));
}

/// The directory `ino`, the listing to serve from `offset` and where in it to start. A
/// fresh listing is marked as given to the kernel (see `Union::listing_stale`) before it is
/// taken, so a change by hand racing it is seen at the next check. A read past the end is
/// the kernel's last: the listing goes.
fn listing(fs: &UnionFs, ino: INodeNo, offset: u64) -> Result<Listing, Errno> {
    let dir = fs.node(ino)?;
    if !dir.is_dir() {
        return Err(Errno::ENOTDIR);
    }
    let entries = fs
        .handles
        .listing(dir.id, offset, || {
            fs.union.mark_listed(&dir)?;
            fs.union.list(&dir)
        })
        .map_err(|e| fs.fail(&e))?;
    let start = resume_at(&entries, offset);
    if start == entries.len() {
        fs.handles.listed(dir.id);
    }
    Ok(Listing {
        dir,
        entries,
        start,
    })
}

/// What `listing` found: the directory, its listing, where to start.
struct Listing {
    dir: Arc<Node>,
    entries: Arc<Vec<DirEntry>>,
    start: usize,
}

impl Listing {
    /// The entries still to give.
    fn rest(&self) -> &[DirEntry] {
        &self.entries[self.start..]
    }
}

/// Where to go on after position `offset` (entries are in position order).
fn resume_at(entries: &[DirEntry], offset: u64) -> usize {
    entries.partition_point(|e| e.off <= offset)
}
