//! Extended attributes (overlayfs's xattrs.c): setxattr, getxattr, listxattr, removexattr.

use std::ffi::OsStr;

use fuser::{Errno, INodeNo, ReplyEmpty, ReplyXattr};

use super::{UnionFs, errno, reply_empty};
use crate::config::Xattrs;
use crate::union::whiteout;

pub(super) fn setxattr(
    fs: &UnionFs,
    ino: INodeNo,
    name: &OsStr,
    value: &[u8],
    flags: i32,
    reply: ReplyEmpty,
) {
    if fs.xattrs == Xattrs::Off {
        return reply.error(Errno::ENOSYS);
    }
    reply_empty(
        reply,
        fs.on(ino, |n| fs.union.setxattr(&n, name, value, flags)),
    );
}

pub(super) fn getxattr(fs: &UnionFs, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
    // Which branch serves an entry is asked by name, and never tells the kernel "none".
    if name != whiteout::LAYER_XATTR && fs.none_to_ask() {
        return reply.error(Errno::ENOSYS);
    }
    match fs
        .node(ino)
        .and_then(|n| fs.union.getxattr(&n, name).map_err(|e| errno(&e)))
    {
        Ok(v) => reply_xattr(reply, size, &v),
        Err(e) => reply.error(e),
    }
}

/// `root`: the caller may see trusted.* names.
pub(super) fn listxattr(fs: &UnionFs, ino: INodeNo, root: bool, size: u32, reply: ReplyXattr) {
    if fs.none_to_ask() {
        return reply.error(Errno::ENOSYS);
    }
    match fs.on(ino, |n| fs.union.listxattr(&n, root)) {
        Ok(names) => {
            let mut buf = Vec::new();
            for n in names {
                buf.extend_from_slice(&n);
                buf.push(0);
            }
            reply_xattr(reply, size, &buf);
        }
        Err(e) => reply.error(e),
    }
}

pub(super) fn removexattr(fs: &UnionFs, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
    if fs.xattrs == Xattrs::Off {
        return reply.error(Errno::ENOSYS);
    }
    reply_empty(reply, fs.on(ino, |n| fs.union.removexattr(&n, name)));
}

impl UnionFs {
    /// `-o xattr=off`, or a read-only stack whose branches hold no xattr (see
    /// `Union::branches_hold_xattrs`): ENOSYS has the kernel take xattrs as unsupported by
    /// the mount, and answer every later get and list itself (EOPNOTSUPP, which tar, cp and
    /// containers/storage take as "none") instead of asking for each file: 2 requests per
    /// entry of a layer diff's walk.
    fn none_to_ask(&self) -> bool {
        match self.xattrs {
            Xattrs::Off => true,
            Xattrs::On => false,
            Xattrs::Auto => self.union.branches_hold_xattrs() == Some(false),
        }
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
