//! Entries by name (overlayfs's namei.c): lookup, and forget, which gives back the
//! references lookups counted.

use std::ffi::OsStr;

use fuser::{Generation, INodeNo, ReplyEntry};

use super::UnionFs;
use crate::sys;

pub(super) fn lookup(fs: &UnionFs, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
    let parent = match fs.node(parent) {
        Ok(p) => p,
        Err(e) => return reply.error(e),
    };
    match fs.union.lookup(&parent, name) {
        Ok(Some((node, st))) => fs.reply_entry(reply, &node, &st),
        // A negative entry the kernel may cache: a miss costs a probe of every layer.
        Ok(None) => {
            let mut st = sys::zeroed_stat();
            st.st_mode = libc::S_IFREG;
            reply.entry(&fs.negative_ttl, &fs.attr(&st), Generation(0));
        }
        Err(e) => reply.error(fs.fail(&e)),
    }
}

pub(super) fn forget(fs: &UnionFs, id: INodeNo, nlookup: u64) {
    fs.union.nodes.forget(id.0, nlookup);
    fs.handles.forgotten(id.0);
}
