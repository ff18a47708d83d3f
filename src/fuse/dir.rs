//! Changing a directory's entries (overlayfs's dir.c): mknod, mkdir, create, tmpfile,
//! symlink, link, unlink, rmdir, rename.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use fuser::{Errno, INodeNo, RenameFlags, ReplyCreate, ReplyEmpty, ReplyEntry};

use super::{UnionFs, reply_empty};
use crate::sys::Stat;
use crate::union::dir::{Caller, New};
use crate::union::node::Node;

pub(super) fn mknod(
    fs: &UnionFs,
    parent: INodeNo,
    name: &OsStr,
    mode: u32,
    rdev: u32,
    caller: Caller,
    reply: ReplyEntry,
) {
    let what = New::Special {
        mode,
        rdev: rdev as u64,
    };
    make(fs, parent, name, what, caller, reply);
}

pub(super) fn mkdir(
    fs: &UnionFs,
    parent: INodeNo,
    name: &OsStr,
    mode: u32,
    caller: Caller,
    reply: ReplyEntry,
) {
    make(fs, parent, name, New::Dir { mode }, caller, reply);
}

pub(super) fn symlink(
    fs: &UnionFs,
    parent: INodeNo,
    link_name: &OsStr,
    target: &Path,
    caller: Caller,
    reply: ReplyEntry,
) {
    let what = New::Symlink {
        target: target.as_os_str(),
    };
    make(fs, parent, link_name, what, caller, reply);
}

/// The union's create of `name` in `parent`; its error logged and made an errno.
fn union_create(
    fs: &UnionFs,
    parent: INodeNo,
    name: &OsStr,
    what: New<'_>,
    caller: Caller,
) -> Result<(Arc<Node>, Stat, Option<std::fs::File>), Errno> {
    fs.node(parent).and_then(|p| {
        fs.union
            .create(&p, name, what, caller)
            .map_err(|e| fs.fail(&e))
    })
}

/// Create any kind of entry and reply with it.
fn make(
    fs: &UnionFs,
    parent: INodeNo,
    name: &OsStr,
    what: New<'_>,
    caller: Caller,
    reply: ReplyEntry,
) {
    match union_create(fs, parent, name, what, caller) {
        Ok((node, st, _)) => fs.reply_entry(reply, &node, &st),
        Err(e) => reply.error(e),
    }
}

pub(super) fn create(
    fs: &UnionFs,
    parent: INodeNo,
    name: &OsStr,
    mode: u32,
    flags: i32,
    caller: Caller,
    reply: ReplyCreate,
) {
    match union_create(fs, parent, name, New::File { mode, flags }, caller) {
        Ok((node, st, Some(file))) => fs.reply_created(node, &st, file, flags, reply),
        Ok((node, _, None)) => {
            fs.union.nodes.forget(node.id, 1);
            reply.error(Errno::EIO)
        }
        // The name is there after all: made in a branch by hand while the kernel cached its
        // absence (`negative_timeout`). Without O_EXCL, open(2) must open it: ESTALE has the
        // kernel look the name up again and open what it finds, with every check an open
        // makes (the file's permissions, O_TRUNC, a symlink followed, EISDIR).
        Err(Errno::EEXIST) if flags & libc::O_EXCL == 0 => reply.error(Errno::ESTALE),
        Err(e) => reply.error(e),
    }
}

pub(super) fn tmpfile(
    fs: &UnionFs,
    parent: INodeNo,
    mode: u32,
    flags: i32,
    caller: Caller,
    reply: ReplyCreate,
) {
    let res = fs.node(parent).and_then(|p| {
        fs.union
            .tmpfile(&p, mode, flags, caller)
            .map_err(|e| fs.fail(&e))
    });
    match res {
        Ok((node, st, file)) => fs.reply_created(node, &st, file, flags, reply),
        Err(e) => reply.error(e),
    }
}

pub(super) fn link(
    fs: &UnionFs,
    ino: INodeNo,
    newparent: INodeNo,
    newname: &OsStr,
    reply: ReplyEntry,
) {
    let res = fs
        .node(newparent)
        .and_then(|np| fs.on(ino, |n| Ok((fs.union.link(&n, &np, newname)?, n))));
    match res {
        Ok((st, n)) => fs.reply_entry(reply, &n, &st),
        Err(e) => reply.error(e),
    }
}

pub(super) fn unlink(fs: &UnionFs, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
    reply_empty(reply, fs.on(parent, |p| fs.union.unlink(&p, name)));
}

pub(super) fn rmdir(fs: &UnionFs, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
    reply_empty(reply, fs.on(parent, |p| fs.union.rmdir(&p, name)));
}

pub(super) fn rename(
    fs: &UnionFs,
    parent: INodeNo,
    name: &OsStr,
    newparent: INodeNo,
    newname: &OsStr,
    flags: RenameFlags,
    reply: ReplyEmpty,
) {
    let res = fs.node(newparent).and_then(|np| {
        fs.on(parent, |p| {
            fs.union.rename(&p, name, &np, newname, flags.bits())
        })
    });
    reply_empty(reply, res);
}
