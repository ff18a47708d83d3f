//! The thin FUSE adapter: decode a request, call the union, encode the reply. Any logic
//! beyond that belongs in `union`.

pub mod handles;

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};

use crate::config::Config;
use crate::error::Error;
use crate::sys::{self, Stat};
use crate::union::Union;
use crate::union::idmap::Owners;
use crate::union::node::Node;
use crate::union::ops::{Caller, New, SetAttr};
use handles::{Backings, Handle, Handles, IoMode, OpenDir, OpenFile};

pub struct UnionFs {
    union: Arc<Union>,
    handles: Handles,
    backings: Backings,
    /// The kernel agreed to FUSE passthrough (decided at init).
    passthrough: bool,
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
    /// `noatime`: no passthrough, whose reads mark access times on the branch files (the
    /// kernel opens its own backing file with the reader's flags).
    noatime: bool,
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno)
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn file_attr(st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn time_spec(t: Option<TimeOrNow>) -> sys::TimeSpec {
    t.map(|t| match t {
        TimeOrNow::Now => None,
        TimeOrNow::SpecificTime(s) => Some(match s.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (s, n) = (-(d.as_secs() as i64), d.subsec_nanos() as i64);
                if n == 0 {
                    (s, 0)
                } else {
                    (s - 1, 1_000_000_000 - n)
                }
            }
        }),
    })
}

impl UnionFs {
    pub fn new(union: Arc<Union>, config: &Config) -> UnionFs {
        UnionFs {
            union,
            handles: Handles::default(),
            backings: Backings::default(),
            passthrough: false,
            ttl: config.timeout,
            negative_ttl: config.negative_timeout,
            description: config.describe(),
            owners: config.settings.owners.clone(),
            acl: !config.flags.noacl,
            noatime: config.flags.noatime,
        }
    }

    /// Attributes as the kernel gets them: owners as shown (mapped, squashed).
    fn attr(&self, st: &Stat) -> FileAttr {
        let mut a = file_attr(st);
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

    /// Answer a create or tmpfile with its new node, opened. No entry without an I/O mode:
    /// none only when fstat of the new file fails, or another real file has a live backing
    /// under the node's id (a new file's node has a new id, and an existing file opened by
    /// a racing create is the same real file); the reference the creation counted goes back.
    fn reply_created(
        &self,
        node: Arc<Node>,
        st: &Stat,
        file: File,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let Some(mode) = self.io_mode(&node, &file, 0, || reply.open_backing(&file)) else {
            self.union.nodes.forget(node.id, 1);
            return reply.error(Errno::EIO);
        };
        let id = INodeNo(node.id);
        let (fh, backing) = self.insert_file(node, file, 0, flags, &mode);
        reply.created_node(
            id,
            &self.ttl,
            &self.attr(st),
            Generation(0),
            fh,
            fopen_flags(&mode),
            backing.as_deref(),
        );
    }

    /// The node a request names. fuser calls the node id `ino`; it is not the inode number
    /// the mount shows (see `Node::id`).
    fn node(&self, id: INodeNo) -> Result<Arc<Node>, Errno> {
        self.union.node(id.0).map_err(|e| self.fail(&e))
    }

    /// Log a failed operation (naming the branch it concerns) and reduce it to the errno.
    fn fail(&self, e: &Error) -> Errno {
        let branch = e.layer.and_then(|l| self.union.stack.layers.get(l));
        match branch {
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

    fn file(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.handles.get(fh.0).ok_or(Errno::EBADF)
    }

    /// The kernel keys its inode by the node id; `stat` shows `st.st_ino`. Node ids are
    /// never reused, so the generation can stay 0.
    fn reply_entry(&self, reply: ReplyEntry, node: &Node, st: &Stat) {
        reply.entry_node(INodeNo(node.id), &self.ttl, &self.attr(st), Generation(0));
    }

    /// Run `f` on the real file of an open handle. A read-only handle opened on a lower
    /// file is first reopened from the upper if the file has been copied up since.
    fn with_file<T>(
        &self,
        fh: FileHandle,
        f: impl FnOnce(&std::fs::File) -> io::Result<T>,
    ) -> Result<T, Errno> {
        let h = self.file(fh)?;
        let Handle::File(of) = &*h else {
            return Err(Errno::EISDIR);
        };
        if of.file.read().1 > 0
            && of.node.data_in_upper()
            && let Ok(fresh) = self.union.reopen_copy(&of.node, of.flags)
        {
            *of.file.write() = (fresh, 0);
        }
        let guard = of.file.read();
        f(&guard.0).map_err(Errno::from)
    }
}

impl Filesystem for UnionFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        // Without it the kernel checks mode bits only: an ACL denying a user on a branch
        // would not deny them through an allow_other mount.
        // With ACLs the umask is ours to apply (`FUSE_DONT_MASK`): a parent's default ACL
        // replaces it.
        let wanted = if self.acl {
            wanted | InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK
        } else {
            wanted
        };
        let mut supported = config.capabilities() & wanted;
        // Passthrough needs CAP_SYS_ADMIN; a stack depth of 2 lets branches sit on overlayfs.
        if config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && sys::privileged()
            && !self.noatime
            && config.set_max_stack_depth(2).is_ok()
        {
            supported |= InitFlags::FUSE_PASSTHROUGH;
            self.passthrough = true;
        }
        let _ = config.add_capabilities(supported);
        let kernel = format!(
            "FUSE {}: data {}, readdirplus {}",
            config.kernel_abi(),
            if self.passthrough {
                "passthrough"
            } else {
                "through the daemon (page cache kept)"
            },
            if supported.contains(InitFlags::FUSE_DO_READDIRPLUS) {
                "on"
            } else {
                "off"
            },
        );
        log::info!("{}; kernel {kernel}", self.description);
        *self.union.events.kernel.lock() = kernel;
        Ok(())
    }

    fn destroy(&mut self) {
        self.union.shutdown();
        log::info!("unmounted");
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = match self.node(parent) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.union.lookup(&parent, name) {
            Ok(Some((node, st))) => self.reply_entry(reply, &node, &st),
            // A negative entry the kernel may cache: a miss costs a probe of every layer.
            Ok(None) => {
                let mut st = sys::zeroed_stat();
                st.st_mode = libc::S_IFREG;
                reply.entry(&self.negative_ttl, &self.attr(&st), Generation(0));
            }
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn forget(&self, _req: &Request, id: INodeNo, nlookup: u64) {
        self.union.nodes.forget(id.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        // An open file may be unlinked: its handle still knows it.
        if let Some(fh) = fh
            && let Ok(mut st) = self.with_file(fh, |f| sys::fstat(f.as_raw_fd()))
        {
            self.union.present(&node, &mut st);
            return reply.attr(&self.ttl, &self.attr(&st));
        }
        match self.union.getattr(&node) {
            Ok(st) => reply.attr(&self.ttl, &self.attr(&st)),
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
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
        reply: ReplyAttr,
    ) {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let a = SetAttr {
            mode,
            uid: uid.map(|u| self.owners.stored_uid(u)),
            gid: gid.map(|g| self.owners.stored_gid(g)),
            size,
            atime: time_spec(atime),
            mtime: time_spec(mtime),
        };
        // Truncate through an open upper handle when there is one (the name may be gone).
        let handle = fh.and_then(|fh| self.handles.get(fh.0));
        let file = handle.as_deref().and_then(|h| match h {
            Handle::File(of) if of.file.read().1 == 0 => Some(of),
            _ => None,
        });
        let guard = file.map(|of| of.file.read());
        match self.union.setattr(&node, a, guard.as_ref().map(|g| &g.0)) {
            Ok(st) => reply.attr(&self.ttl, &self.attr(&st)),
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.on(ino, |n| self.union.readlink(&n)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
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
        let what = New::Special {
            mode,
            rdev: rdev as u64,
        };
        self.make(req, parent, name, what, umask, reply);
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
        self.make(req, parent, name, New::Dir { mode }, umask, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.on(parent, |p| self.union.unlink(&p, name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.on(parent, |p| self.union.rmdir(&p, name)));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let what = New::Symlink {
            target: target.as_os_str(),
        };
        self.make(req, parent, link_name, what, 0, reply);
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
        let res = self.node(newparent).and_then(|np| {
            self.on(parent, |p| {
                self.union.rename(&p, name, &np, newname, flags.bits())
            })
        });
        reply_empty(reply, res);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let res = self
            .node(newparent)
            .and_then(|np| self.on(ino, |n| Ok((self.union.link(&n, &np, newname)?, n))));
        match res {
            Ok((st, n)) => self.reply_entry(reply, &n, &st),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        // A file resolved just before a copy-up can lose the race to the copy the kernel
        // already uses in passthrough: open the node again, which now finds the copy.
        let mut opened = None;
        for _ in 0..3 {
            let (file, layer) = match self.union.open(&node, flags.0) {
                Ok(f) => f,
                Err(e) => return reply.error(self.fail(&e)),
            };
            let Some(mode) = self.io_mode(&node, &file, layer, || reply.open_backing(&file)) else {
                opened = sys::fstat(file.as_raw_fd())
                    .ok()
                    .map(|st| (layer, st.st_dev, st.st_ino));
                continue;
            };
            let (fh, backing) = self.insert_file(node, file, layer, flags.0, &mode);
            return match (&mode, backing) {
                (IoMode::Passthrough(_), Some(b)) => {
                    reply.opened_passthrough(fh, fopen_flags(&mode), &b)
                }
                _ => reply.opened(fh, fopen_flags(&mode)),
            };
        }
        let path = node.path();
        let (layer, real, unlinked) = {
            let s = node.state();
            (s.layer, s.real, s.unlinked)
        };
        log::warn!(
            "{path}: no I/O mode the kernel accepts: node {} (layer {layer}, real {real:?}, \
             unlinked {unlinked}) opened (layer, dev, ino) {opened:?} beside a live \
             passthrough backing of {:?}",
            node.id,
            self.backings.live(node.id),
        );
        reply.error(Errno::EIO);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let res = self.with_file(fh, |f| {
            let mut buf = vec![0u8; size as usize];
            let mut done = 0;
            while done < buf.len() {
                match f.read_at(&mut buf[done..], offset + done as u64)? {
                    0 => break,
                    n => done += n,
                }
            }
            buf.truncate(done);
            Ok(buf)
        });
        match res {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with_file(fh, |f| f.write_all_at(data, offset)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
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
        if let Some(h) = self.handles.remove(fh.0)
            && let Handle::File(of) = &*h
        {
            let (id, cached) = (of.node.id, of.backing.is_none());
            drop(h);
            self.backings.release(id, cached);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.with_file(fh, |f| sys::fsync(f.as_raw_fd(), datasync)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if !node.is_dir() {
            return reply.error(Errno::ENOTDIR);
        }
        // The kernel caches listings; it keeps its copy only while the layers are as they
        // were when it was made.
        let flags = match self.union.listing_unchanged(&node) {
            Ok(true) => FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            Ok(false) => FopenFlags::FOPEN_CACHE_DIR,
            Err(e) => return reply.error(self.fail(&e)),
        };
        // The listing is taken by the first readdir (offset 0).
        let fh = self.handles.insert(Handle::Dir(OpenDir {
            node,
            entries: parking_lot::Mutex::new(None),
        }));
        reply.opened(FileHandle(fh), flags);
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.snapshot(fh, offset) {
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

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Ok(h) = self.file(fh) else {
            return reply.error(Errno::EBADF);
        };
        let Handle::Dir(od) = &*h else {
            return reply.error(Errno::ENOTDIR);
        };
        let entries = match self.snapshot(fh, offset) {
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
                    &self.attr(&st),
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            let (node, st) = match self.union.lookup_listed(&od.node, &e.name, e.layer) {
                Ok(Some(found)) => found,
                _ => continue, // gone since the snapshot
            };
            if reply.add(
                INodeNo(node.id),
                off,
                &e.name,
                &self.ttl,
                &self.attr(&st),
                Generation(0),
            ) {
                // Not sent after all: give back the reference the lookup counted.
                self.union.nodes.forget(node.id, 1);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(self.fail(&e)),
        }
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
        reply_empty(
            reply,
            self.on(ino, |n| self.union.setxattr(&n, name, value, flags)),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self
            .node(ino)
            .and_then(|n| self.union.getxattr(&n, name).map_err(|e| errno(&e)))
        {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.on(ino, |n| self.union.listxattr(&n, req.uid() == 0)) {
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

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.on(ino, |n| self.union.removexattr(&n, name)));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks modes itself.
        reply.ok();
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
        let res = self.node(parent).and_then(|p| {
            self.union
                .create(&p, name, New::File { mode, flags }, self.caller(req, umask))
                .map_err(|e| self.fail(&e))
        });
        match res {
            Ok((node, st, Some(file))) => self.reply_created(node, &st, file, flags, reply),
            Ok((node, _, None)) => {
                self.union.nodes.forget(node.id, 1);
                reply.error(Errno::EIO)
            }
            Err(e) => reply.error(e),
        }
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
        let res = self.node(parent).and_then(|p| {
            self.union
                .tmpfile(&p, mode, flags, self.caller(req, umask))
                .map_err(|e| self.fail(&e))
        });
        match res {
            Ok((node, st, file)) => self.reply_created(node, &st, file, flags, reply),
            Err(e) => reply.error(e),
        }
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
        match self.with_file(fh, |f| sys::fallocate(f.as_raw_fd(), mode, offset, length)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        match self.with_file(fh, |f| sys::lseek(f.as_raw_fd(), offset, whence)) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
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
        let res = self.with_file(fh_in, |src| {
            let src = src.try_clone()?;
            Ok(src)
        });
        let res = res.and_then(|src| {
            self.with_file(fh_out, |dst| {
                let (mut si, mut so) = (offset_in as i64, offset_out as i64);
                let want = len.min(u32::MAX as u64 / 2) as usize;
                sys::copy_file_range(src.as_raw_fd(), &mut si, dst.as_raw_fd(), &mut so, want)
            })
        });
        match res {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }
}

impl UnionFs {
    /// Passthrough where the kernel allows it, else through the daemon.
    fn io_mode(
        &self,
        node: &Node,
        file: &std::fs::File,
        layer: usize,
        register: impl FnOnce() -> io::Result<fuser::BackingId>,
    ) -> Option<IoMode> {
        if !self.passthrough {
            return Some(IoMode::Cached);
        }
        let may_copy_up = layer > 0 && self.union.writable();
        let st = sys::fstat(file.as_raw_fd()).ok()?;
        self.backings
            .choose(node.id, (st.st_dev, st.st_ino), may_copy_up, register)
    }

    fn insert_file(
        &self,
        node: Arc<Node>,
        file: std::fs::File,
        layer: usize,
        flags: i32,
        mode: &IoMode,
    ) -> (FileHandle, Option<Arc<fuser::BackingId>>) {
        let backing = match mode {
            IoMode::Passthrough(b) => Some(b.clone()),
            _ => None,
        };
        let fh = self.handles.insert(Handle::File(OpenFile {
            node,
            file: parking_lot::RwLock::new((file, layer)),
            flags: flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL),
            backing: backing.clone(),
        }));
        (FileHandle(fh), backing)
    }

    /// Create any kind of entry and reply with it.
    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        what: New<'_>,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let res = self.node(parent).and_then(|p| {
            self.union
                .create(&p, name, what, self.caller(req, umask))
                .map_err(|e| self.fail(&e))
        });
        match res {
            Ok((node, st, _)) => self.reply_entry(reply, &node, &st),
            Err(e) => reply.error(e),
        }
    }

    /// The directory snapshot of a handle; reading from offset 0 takes a fresh one
    /// (rewinddir must see the directory as it is now).
    fn snapshot(
        &self,
        fh: FileHandle,
        offset: u64,
    ) -> Result<Arc<Vec<crate::union::readdir::DirEntry>>, Errno> {
        let h = self.file(fh)?;
        let Handle::Dir(od) = &*h else {
            return Err(Errno::ENOTDIR);
        };
        let mut entries = od.entries.lock();
        match &*entries {
            Some(e) if offset != 0 => Ok(e.clone()),
            // The start, or a handle whose first part the kernel served from its cache.
            _ => {
                let e = Arc::new(self.union.list(&od.node).map_err(|e| self.fail(&e))?);
                *entries = Some(e.clone());
                Ok(e)
            }
        }
    }
}

/// Where to go on after position `offset` (entries are in position order).
fn resume_at(entries: &[crate::union::readdir::DirEntry], offset: u64) -> usize {
    entries.partition_point(|e| e.off <= offset)
}

fn fopen_flags(mode: &IoMode) -> FopenFlags {
    // Our flush does nothing (data is written through to the real file), so the kernel
    // need not send one at every close.
    let flags = FopenFlags::FOPEN_NOFLUSH;
    match mode {
        IoMode::Passthrough(_) => flags,
        // File data changes only through us (or by hand in a lower, which the attribute
        // timeout and auto_inval_data catch): keep the page cache across opens.
        IoMode::Cached => flags | FopenFlags::FOPEN_KEEP_CACHE,
    }
}

fn reply_empty(reply: ReplyEmpty, res: Result<(), Errno>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
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

/// How to end the mount from inside the daemon (on SIGINT/SIGTERM).
pub enum Unmount {
    /// We mounted it ourselves with mount(2).
    Direct(std::ffi::CString),
    /// fusermount3 mounted it for us.
    Helper(fuser::SessionUnmounter),
}

impl Unmount {
    pub fn unmount(&mut self) -> io::Result<()> {
        match self {
            Unmount::Direct(path) => sys::umount_lazy(path),
            Unmount::Helper(u) => u.unmount(),
        }
    }
}

/// Mount `fs` at the configured mount point. As root we call mount(2) ourselves so the
/// mount shows as `fuse.unionmount`; otherwise fusermount3 does it.
pub fn mount(fs: UnionFs, config: &Config) -> io::Result<(fuser::Session<UnionFs>, Unmount)> {
    let session_config = session_config(config);
    if sys::geteuid() != 0 {
        let mut s = fuser::Session::new(fs, &config.mountpoint, &session_config)?;
        let u = Unmount::Helper(s.unmount_callable());
        return Ok((s, u));
    }
    let mode = sys::fstatat(libc::AT_FDCWD, config.mountpoint.as_os_str())?.st_mode;
    let mut options = format!(
        "rootmode={:o},user_id=0,group_id=0,default_permissions",
        mode & libc::S_IFMT
    );
    if config.allow_other {
        options.push_str(",allow_other");
    }
    let mut flags = 0;
    for (on, flag) in [
        (config.settings.read_only, libc::MS_RDONLY),
        (config.flags.nosuid, libc::MS_NOSUID),
        (!config.flags.dev, libc::MS_NODEV),
        (config.flags.noexec, libc::MS_NOEXEC),
        (config.flags.noatime, libc::MS_NOATIME),
    ] {
        if on {
            flags |= flag;
        }
    }
    let fd = sys::mount_fuse(
        &fsname(config),
        &config.mountpoint,
        "fuse.unionmount",
        flags,
        &options,
    )?;
    let path = std::ffi::CString::new(config.mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let acl = session_config.acl;
    match fuser::Session::from_fd(fs, fd, acl, session_config) {
        Ok(s) => Ok((s, Unmount::Direct(path))),
        Err(e) => {
            let _ = sys::umount_lazy(&path);
            Err(e)
        }
    }
}

/// Session settings: worker threads, and the options fusermount3 passes to the kernel.
fn session_config(config: &Config) -> fuser::Config {
    let mut opts = vec![
        MountOption::FSName(fsname(config)),
        MountOption::Subtype("unionmount".into()),
        MountOption::DefaultPermissions,
    ];
    for (on, opt) in [
        (config.settings.read_only, MountOption::RO),
        (config.flags.nosuid, MountOption::NoSuid),
        (!config.flags.dev, MountOption::NoDev),
        (config.flags.noexec, MountOption::NoExec),
        (config.flags.noatime, MountOption::NoAtime),
    ] {
        if on {
            opts.push(opt);
        }
    }
    let mut c = fuser::Config::default();
    c.mount_options = opts;
    c.acl = if config.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    c.n_threads = Some(config.threads.max(1));
    c.clone_fd = true;
    c
}

/// The source /proc/mounts shows: `fsname=` (mount(8) passes the fstab source), else the
/// upper (or top) branch.
fn fsname(config: &Config) -> String {
    config
        .fsname
        .clone()
        .or_else(|| {
            let top = config.settings.upper().or(config.settings.branches.first());
            top.map(|b| b.path.display().to_string())
        })
        .unwrap_or_else(|| "unionmount".into())
        .replace([',', ' '], "_")
}
