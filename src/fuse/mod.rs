//! The thin FUSE adapter: decode a request, call the union, encode the reply. Any logic
//! beyond that belongs in `union`.
//!
//! Split as kernel overlayfs splits the same surface, so an operation is found from the
//! file list:
//! - `mount.rs`: mounting (mount(2) or fusermount3), init, destroy, statfs
//! - `namei.rs`: lookup, forget
//! - `inode.rs`: getattr, setattr, readlink, access; a stat as the kernel gets it
//! - `file.rs`: open, read, write, flush, fsync, release, fallocate, lseek,
//!   copy_file_range; passthrough or through the daemon
//! - `dir.rs`: mknod, mkdir, create, tmpfile, symlink, link, unlink, rmdir, rename
//! - `readdir.rs`: opendir, readdir, readdirplus, fsyncdir (a releasedir has nothing to free)
//! - `xattr.rs`: setxattr, getxattr, listxattr, removexattr
//! - `handles.rs`: open files by file handle, listings being read; passthrough backings
//!
//! This file holds the adapter type, what every handler shares (node ids to nodes, errors
//! to errnos, owners mapped between the kernel's IDs and the branches') and the
//! `Filesystem` impl, which only dispatches: each method is one call into the file its
//! path names. The `Request` stops here: handlers get the caller's IDs as stored.

mod dir;
mod file;
pub mod handles;
mod inode;
mod mount;
mod namei;
mod readdir;
mod xattr;

pub use mount::{Unmount, mount};

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, Filesystem, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::config::{Config, Xattrs};
use crate::error::Error;
use crate::sys::Stat;
use crate::union::Union;
use crate::union::dir::Caller;
use crate::union::idmap::Owners;
use crate::union::node::Node;
use handles::{Backings, Handles, OpenFile};

pub struct UnionFs {
    union: Arc<Union>,
    handles: Arc<Handles>,
    backings: Backings,
    /// The kernel agreed to FUSE passthrough (decided at init).
    passthrough: bool,
    /// The kernel opens directories without asking (`FUSE_NO_OPENDIR_SUPPORT`).
    no_opendir: bool,
    ttl: Duration,
    negative_ttl: Duration,
    /// The stack and settings, for the one line a mount logs (at init, with the kernel's
    /// features).
    description: String,
    /// ID mapping and squashing: applied here, where IDs cross between the kernel's view and
    /// the union's (which works with the IDs stored in the branches).
    owners: Owners,
    /// Enforce the branches' POSIX ACLs (the kernel checks them, with the mode bits).
    acl: bool,
    /// `-o xattr=`: how xattr requests are answered (see xattr.rs).
    xattrs: Xattrs,
    /// Passthrough allowed: not with `passthrough=0`, nor with `noatime` (the kernel opens
    /// its own backing file with the reader's flags, so its reads mark access times on the
    /// branch files).
    may_passthrough: bool,
    /// To tell the kernel of changes it did not ask for (set once the session exists).
    notifier: Arc<OnceLock<fuser::Notifier>>,
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno)
}

fn reply_empty(reply: ReplyEmpty, res: Result<(), Errno>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl UnionFs {
    pub fn new(union: Arc<Union>, config: &Config) -> UnionFs {
        let handles = Arc::new(Handles::default());
        let notifier: Arc<OnceLock<fuser::Notifier>> = Arc::default();
        union.watch(Arc::new(handles::StackWatcher {
            handles: handles.clone(),
            notifier: notifier.clone(),
        }));
        UnionFs {
            union,
            handles,
            backings: Backings::default(),
            passthrough: false,
            no_opendir: false,
            ttl: config.timeout,
            negative_ttl: config.negative_timeout,
            description: config.describe(),
            owners: config.settings.owners.clone(),
            acl: !config.flags.noacl,
            xattrs: config.xattrs,
            may_passthrough: config.passthrough && !config.flags.noatime,
            notifier,
        }
    }

    /// The kernel's cached attributes of `node` are stale: a write or `O_TRUNC` open killed
    /// set-id bits (the kernel sees no new attributes in either reply, and a `stat` asking
    /// for the mode alone would be answered from its cache until the timeout).
    fn attrs_changed(&self, node: &Node) {
        if let Some(n) = self.notifier.get()
            && let Err(e) = n.inval_inode(INodeNo(node.id), -1, 0)
        {
            log::debug!("{}: invalidating the kernel's attributes: {e}", node.path());
        }
    }

    /// A layer of directory `node` changed by hand since the kernel cached its listing:
    /// the kernel drops its copy (and the attributes the reply is about to give, so the
    /// next stat asks again). Asked wherever the kernel gets a listed directory's
    /// attributes anew (GETATTR, LOOKUP, READDIRPLUS): it asks when they time out, and
    /// before it lists a directory from its cache.
    fn check_listing(&self, node: &Arc<Node>) {
        if !node.is_dir() {
            return;
        }
        match self.union.listing_stale(node) {
            Ok(false) => {}
            Ok(true) => {
                if let Some(n) = self.notifier.get()
                    && let Err(e) = n.inval_inode(INodeNo(node.id), 0, 0)
                {
                    log::debug!("{}: dropping the kernel's listing: {e}", node.path());
                }
            }
            Err(e) => log::debug!("{}: checking the layers: {e}", node.path()),
        }
    }

    /// `volatile`: no sync reaches the upper (kernel overlayfs' meaning; podman mounts its
    /// build and run containers so). FSYNC and FSYNCDIR are answered ENOSYS: the kernel
    /// then stops sending either and answers every later fsync and fdatasync itself.
    fn syncs_omitted(&self) -> bool {
        self.union.opts.volatile
    }

    /// Attributes as the kernel gets them: owners as shown (mapped, squashed).
    fn attr(&self, st: &Stat) -> FileAttr {
        let mut a = inode::file_attr(st);
        a.uid = self.owners.shown_uid(st.st_uid);
        a.gid = self.owners.shown_gid(st.st_gid);
        a
    }

    /// Who creates: the request's ids as stored in the branches.
    fn caller(&self, req: &Request, umask: u32) -> Caller {
        Caller {
            uid: self.owners.stored_uid(req.uid()),
            gid: self.owners.stored_gid(req.gid()),
            umask,
        }
    }

    /// The node a request names. fuser calls the node id `ino`; it is not the inode number
    /// the mount shows (see `Node::id`).
    fn node(&self, id: INodeNo) -> Result<Arc<Node>, Errno> {
        self.union.node(id.0).map_err(|e| self.fail(&e))
    }

    /// Log a failed operation (naming the branch it concerns) and reduce it to the errno.
    fn fail(&self, e: &Error) -> Errno {
        let stack = self.union.stack();
        match e.layer.and_then(|l| stack.layers.get(l)) {
            Some(b) => log::debug!("{e} [branch {}]", b.path.display()),
            None => log::debug!("{e}"),
        }
        errno(e)
    }

    /// Run a union operation on the node `id`, its error reduced to the errno.
    fn on<T>(
        &self,
        id: INodeNo,
        f: impl FnOnce(Arc<Node>) -> crate::error::Result<T>,
    ) -> Result<T, Errno> {
        f(self.node(id)?).map_err(|e| self.fail(&e))
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.handles.get(fh.0).ok_or(Errno::EBADF)
    }

    /// The kernel keys its inode by the node id; `stat` shows `st.st_ino`. Node ids are
    /// never reused, so the generation can stay 0.
    fn reply_entry(&self, reply: ReplyEntry, node: &Arc<Node>, st: &Stat) {
        self.check_listing(node);
        reply.entry_node(INodeNo(node.id), &self.ttl, &self.attr(st), Generation(0));
    }
}

/// Dispatch only: the arguments a handler does not use stop here.
impl Filesystem for UnionFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        mount::init(self, config)
    }

    fn destroy(&mut self) {
        mount::destroy(self)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _in = self.union.enter();
        mount::statfs(self, reply)
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _in = self.union.enter();
        namei::lookup(self, parent, name, reply)
    }

    fn forget(&self, _req: &Request, id: INodeNo, nlookup: u64) {
        namei::forget(self, id, nlookup)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _in = self.union.enter();
        inode::getattr(self, ino, fh, reply)
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        kill_suidgid: bool,
        reply: ReplyAttr,
    ) {
        let _in = self.union.enter();
        let changes = inode::Changes {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            kill_suidgid,
        };
        // The caller, whose capabilities tell an empty SETATTR's meaning (see inode.rs).
        inode::setattr(self, ino, req.pid(), changes, fh, reply)
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _in = self.union.enter();
        inode::readlink(self, ino, reply)
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _in = self.union.enter();
        inode::access(reply)
    }

    fn open(
        &self,
        _req: &Request,
        ino: INodeNo,
        flags: OpenFlags,
        kill_suidgid: bool,
        reply: ReplyOpen,
    ) {
        let _in = self.union.enter();
        file::open(self, ino, flags, kill_suidgid, reply)
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _in = self.union.enter();
        file::read(self, fh, offset, size, flags.0, reply)
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _in = self.union.enter();
        file::write(self, fh, offset, data, write_flags, reply)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _in = self.union.enter();
        file::flush(reply)
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _in = self.union.enter();
        file::ioctl(self, ino, fh, cmd, in_data, reply)
    }

    /// Not served: the branches' files are always ready, as on a local filesystem. ENOSYS
    /// tells the kernel so once; it then answers every poll on the mount itself (readable
    /// and writable).
    fn poll(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        log::debug!("poll {}: not served, the kernel answers ready", ino.0);
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _in = self.union.enter();
        file::fsync(self, fh, datasync, reply)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _in = self.union.enter();
        file::release(self, fh, reply)
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _in = self.union.enter();
        file::fallocate(self, fh, offset, length, mode, reply)
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _in = self.union.enter();
        file::lseek(self, fh, offset, whence, reply)
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _in = self.union.enter();
        file::copy_file_range(self, (fh_in, offset_in), (fh_out, offset_out), len, reply)
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _in = self.union.enter();
        dir::mknod(
            self,
            parent,
            name,
            mode,
            rdev,
            self.caller(req, umask),
            reply,
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _in = self.union.enter();
        dir::mkdir(self, parent, name, mode, self.caller(req, umask), reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _in = self.union.enter();
        dir::create(
            self,
            parent,
            name,
            mode,
            flags,
            self.caller(req, umask),
            reply,
        )
    }

    fn tmpfile(
        &self,
        req: &Request,
        parent: INodeNo,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _in = self.union.enter();
        dir::tmpfile(self, parent, mode, flags, self.caller(req, umask), reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _in = self.union.enter();
        dir::symlink(self, parent, link_name, target, self.caller(req, 0), reply)
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _in = self.union.enter();
        dir::link(self, ino, newparent, newname, reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _in = self.union.enter();
        dir::unlink(self, parent, name, reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _in = self.union.enter();
        dir::rmdir(self, parent, name, reply)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _in = self.union.enter();
        dir::rename(self, parent, name, newparent, newname, flags, reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _in = self.union.enter();
        readdir::opendir(self, ino, reply)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let _in = self.union.enter();
        readdir::readdir(self, ino, offset, reply)
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let _in = self.union.enter();
        readdir::readdirplus(self, ino, offset, reply)
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _in = self.union.enter();
        readdir::fsyncdir(self, ino, datasync, reply)
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _in = self.union.enter();
        xattr::setxattr(self, ino, name, value, flags, reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _in = self.union.enter();
        xattr::getxattr(self, ino, name, size, reply)
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _in = self.union.enter();
        xattr::listxattr(self, ino, req.uid() == 0, size, reply)
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _in = self.union.enter();
        xattr::removexattr(self, ino, name, reply)
    }
}
