//! Listing directories (overlayfs's readdir.c): opendir, readdir, readdirplus, releasedir,
//! fsyncdir. A handle serves one snapshot of the merged listing, taken at offset 0.

use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyOpen,
};

use super::UnionFs;
use super::handles::{Handle, OpenDir};
use super::inode::file_type;
use crate::sys;
use crate::union::readdir::DirEntry;

pub(super) fn opendir(fs: &UnionFs, ino: INodeNo, reply: ReplyOpen) {
    let node = match fs.node(ino) {
        Ok(n) => n,
        Err(e) => return reply.error(e),
    };
    if !node.is_dir() {
        return reply.error(Errno::ENOTDIR);
    }
    // The kernel caches listings; it keeps its copy only while the layers are as they
    // were when it was made.
    let flags = match fs.union.listing_unchanged(&node) {
        Ok(true) => FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        Ok(false) => FopenFlags::FOPEN_CACHE_DIR,
        Err(e) => return reply.error(fs.fail(&e)),
    };
    // The listing is taken by the first readdir (offset 0).
    let fh = fs.handles.insert(Handle::Dir(OpenDir {
        node,
        entries: parking_lot::Mutex::new(None),
    }));
    reply.opened(FileHandle(fh), flags);
}

pub(super) fn readdir(fs: &UnionFs, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
    let entries = match snapshot(fs, fh, offset) {
        Ok(e) => e,
        Err(e) => return reply.error(e),
    };
    for e in &entries[resume_at(&entries, offset)..] {
        if reply.add(INodeNo(e.ino), e.off, file_type(e.kind), &e.name) {
            break;
        }
    }
    reply.ok();
}

pub(super) fn readdirplus(
    fs: &UnionFs,
    fh: FileHandle,
    offset: u64,
    mut reply: ReplyDirectoryPlus,
) {
    let Ok(h) = fs.file(fh) else {
        return reply.error(Errno::EBADF);
    };
    let Handle::Dir(od) = &*h else {
        return reply.error(Errno::ENOTDIR);
    };
    let entries = match snapshot(fs, fh, offset) {
        Ok(e) => e,
        Err(e) => return reply.error(e),
    };
    for e in &entries[resume_at(&entries, offset)..] {
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
        let (node, st) = match fs.union.lookup_listed(&od.node, &e.name, e.layer) {
            Ok(Some(found)) => found,
            _ => continue, // gone since the snapshot
        };
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

pub(super) fn releasedir(fs: &UnionFs, fh: FileHandle, reply: ReplyEmpty) {
    fs.handles.remove(fh.0);
    reply.ok();
}

pub(super) fn fsyncdir(reply: ReplyEmpty) {
    reply.ok();
}

/// The directory snapshot of a handle; reading from offset 0 takes a fresh one
/// (rewinddir must see the directory as it is now).
fn snapshot(fs: &UnionFs, fh: FileHandle, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
    let h = fs.file(fh)?;
    let Handle::Dir(od) = &*h else {
        return Err(Errno::ENOTDIR);
    };
    let mut entries = od.entries.lock();
    match &*entries {
        Some(e) if offset != 0 => Ok(e.clone()),
        // The start, or a handle whose first part the kernel served from its cache.
        _ => {
            let e = Arc::new(fs.union.list(&od.node).map_err(|e| fs.fail(&e))?);
            *entries = Some(e.clone());
            Ok(e)
        }
    }
}

/// Where to go on after position `offset` (entries are in position order).
fn resume_at(entries: &[DirEntry], offset: u64) -> usize {
    entries.partition_point(|e| e.off <= offset)
}
