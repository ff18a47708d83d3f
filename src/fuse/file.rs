//! Open files (overlayfs's file.c): open, read, write, flush, fsync, release, fallocate,
//! lseek, copy_file_range; whether the kernel does a file's I/O itself (passthrough) or
//! through the daemon.
//!
//! Every open gets a handle, also where there is no passthrough: the kernel could open
//! files without asking (`FUSE_NO_OPEN_SUPPORT`), but `O_TRUNC` would then reach us as a
//! truncate of its own instead of with the open (`FUSE_ATOMIC_O_TRUNC`), and a read racing
//! it reads zeros (see mount.rs). Through the page cache the union holds that truncation
//! back from the real file until the file's data next changes (see
//! union::file::HeldTruncations): a write, setattr, fallocate, lseek, fsync or
//! copy_file_range makes it first (`with_file`), and so does the release of the open that
//! truncated.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, OpenFlags, ReplyCreate, ReplyData,
    ReplyEmpty, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyWrite, WriteFlags,
};

use super::UnionFs;
use super::handles::{IoMode, OpenFile};
use crate::sys::{self, Stat};
use crate::union::node::Node;

pub(super) fn open(
    fs: &UnionFs,
    ino: INodeNo,
    flags: OpenFlags,
    kill_suidgid: bool,
    reply: ReplyOpen,
) {
    let node = match fs.node(ino) {
        Ok(n) => n,
        Err(e) => return reply.error(e),
    };
    // A file resolved just before a copy-up can lose the race to the copy the kernel
    // already uses in passthrough: open the node again, which now finds the copy.
    let mut opened = None;
    // Through the page cache an O_TRUNC truncation is held (see
    // union::file::HeldTruncations); with passthrough the kernel reads the real file.
    let hold = !fs.passthrough;
    for _ in 0..3 {
        let (file, layer) = match fs.union.open_killing(&node, flags.0, kill_suidgid, hold) {
            Ok((f, layer, killed)) => {
                if killed {
                    fs.attrs_changed(&node);
                }
                (f, layer)
            }
            Err(e) if e.errno == libc::ENOENT && !node.is_unlinked() => {
                // Its file left the branch by hand while the kernel kept the name: ESTALE
                // has the kernel look the name up again and redo the open, as after the
                // name's timeout (with O_CREAT, which the OPEN does not carry, it creates
                // the file, as on a local filesystem; without, it fails with ENOENT).
                log::debug!("open {}: gone from the branch, stale", node.path());
                return reply.error(Errno::ESTALE);
            }
            Err(e) => return reply.error(fs.fail(&e)),
        };
        let Some(mode) = fs.io_mode(&node, &file, layer, || reply.open_backing(&file)) else {
            opened = sys::fstat(file.as_raw_fd())
                .ok()
                .map(|st| (layer, st.st_dev, st.st_ino));
            continue;
        };
        let (fh, backing) = fs.insert_file(node, file, layer, flags.0, &mode);
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
        (s.layer, s.real, s.unlinked())
    };
    log::warn!(
        "{path}: no I/O mode the kernel accepts: node {} (layer {layer}, real {real:?}, \
         unlinked {unlinked}) opened (layer, dev, ino) {opened:?} beside a live \
         passthrough backing of {:?}",
        node.id,
        fs.backings.live(node.id),
    );
    reply.error(Errno::EIO);
}

/// Largest read buffer a worker thread keeps between READs: the kernel's readahead asks for
/// 128 KiB at a time; a bigger one is given back after its reply.
const KEPT_READ_BUFFER: usize = 256 << 10;

thread_local! {
    /// Each worker's read buffer, kept so that a READ neither allocates, zeroes nor faults
    /// in fresh pages (a fresh 128 KiB buffer per READ was a tenth of the daemon's time in
    /// a sequential read through it).
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `flags`: the open file's, as the kernel sends them with the READ.
pub(super) fn read(
    fs: &UnionFs,
    fh: FileHandle,
    offset: u64,
    size: u32,
    flags: i32,
    reply: ReplyData,
) {
    READ_BUFFER.with_borrow_mut(|buf| {
        let res = fs.with_node_file(fh, |node, f| {
            fs.union.read_held(node, |held| {
                if held && flags & libc::O_DIRECT != 0 {
                    // Past the end of the truncated file: only a read through the page
                    // cache may have been sent before the truncation.
                    buf.clear();
                    return Ok(());
                }
                sys::pread_into(f.as_raw_fd(), buf, size as usize, offset).map_err(Errno::from)
            })
        });
        match res {
            Ok(()) => reply.data(buf),
            Err(e) => reply.error(e),
        }
        if buf.capacity() > KEPT_READ_BUFFER {
            *buf = Vec::new();
        }
    });
}

pub(super) fn write(
    fs: &UnionFs,
    fh: FileHandle,
    offset: u64,
    data: &[u8],
    flags: WriteFlags,
    reply: ReplyWrite,
) {
    // A caller without CAP_FSETID: the kernel leaves killing set-id bits to us.
    let kill = flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
    let res = fs.with_node_file(fh, |node, f| {
        if kill
            && fs
                .union
                .kill_suidgid(node, Some(f))
                .map_err(|e| fs.fail(&e))?
        {
            fs.attrs_changed(node);
        }
        fs.union
            .truncation_done(node, || f.write_all_at(data, offset))
            .map_err(|e| fs.fail(&e))?
            .map_err(Errno::from)
    });
    match res {
        Ok(()) => reply.written(data.len() as u32),
        Err(e) => reply.error(e),
    }
}

/// ioctl: the inode flags' (`lsattr`, `chattr`; the kernel asks them of the daemon with
/// the file opened for it), and no other. Those the kernel sends because the VFS does not
/// handle them itself (Python's `open` asks `isatty` of every file it opens: TCGETS) get
/// ENOTTY, as a local file answers, without a warning logged per call.
pub(super) fn ioctl(
    fs: &UnionFs,
    ino: INodeNo,
    fh: FileHandle,
    cmd: u32,
    in_data: &[u8],
    reply: ReplyIoctl,
) {
    let Some((size, set)) = sys::fileattr_ioctl_kind(cmd) else {
        log::debug!("ioctl {cmd:#x}: not served");
        return reply.error(Errno::ENOTTY);
    };
    let node = match fs.node(ino) {
        Ok(n) => n,
        Err(e) => return reply.error(e),
    };
    let mut arg = vec![0u8; size];
    if set {
        if in_data.len() != size {
            return reply.error(Errno::EINVAL);
        }
        arg.copy_from_slice(in_data);
    }
    // A directory has no handle (no OPENDIR is sent): its fh 0 finds none.
    match fs.with_open(Some(fh), |file| {
        fs.union.fileattr(&node, file, cmd, &mut arg)
    }) {
        Ok(()) if set => reply.ioctl(0, &[]),
        Ok(()) => reply.ioctl(0, &arg),
        Err(e) => reply.error(fs.fail(&e)),
    }
}

pub(super) fn flush(reply: ReplyEmpty) {
    reply.ok();
}

pub(super) fn release(fs: &UnionFs, fh: FileHandle, reply: ReplyEmpty) {
    if let Some(of) = fs.handles.remove(fh.0) {
        // The open that truncated is done with: the kernel knows the size since it
        // returned (see union::file::HeldTruncations). Another open's RELEASE, late,
        // must not make a truncation held since: it is tied to its open's descriptor.
        if of.flags & libc::O_TRUNC != 0
            && let Err(e) = fs.union.truncation_closed(&of.node, &of.file.read().0)
        {
            log::warn!("{e}");
        }
        let (id, cached) = (of.node.id, of.backing.is_none());
        drop(of);
        fs.backings.release(id, cached);
    }
    reply.ok();
}

pub(super) fn fsync(fs: &UnionFs, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
    if fs.syncs_omitted() {
        return reply.error(Errno::ENOSYS);
    }
    match fs.with_file(fh, |f| sys::fsync(f.as_raw_fd(), datasync)) {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

pub(super) fn fallocate(
    fs: &UnionFs,
    fh: FileHandle,
    offset: u64,
    length: u64,
    mode: i32,
    reply: ReplyEmpty,
) {
    match fs.with_file(fh, |f| sys::fallocate(f.as_raw_fd(), mode, offset, length)) {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

pub(super) fn lseek(fs: &UnionFs, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
    match fs.with_file(fh, |f| sys::lseek(f.as_raw_fd(), offset, whence)) {
        Ok(o) => reply.offset(o),
        Err(e) => reply.error(e),
    }
}

/// `(handle, offset)` of each side.
pub(super) fn copy_file_range(
    fs: &UnionFs,
    (fh_in, offset_in): (FileHandle, u64),
    (fh_out, offset_out): (FileHandle, u64),
    len: u64,
    reply: ReplyWrite,
) {
    let res = fs.with_file(fh_in, |src| {
        let src = src.try_clone()?;
        Ok(src)
    });
    let res = res.and_then(|src| {
        fs.with_file(fh_out, |dst| {
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

impl UnionFs {
    /// Run `f` on the real file of an open handle to change its data, or to look at where
    /// the data lies: a held truncation is made first (see union::file::HeldTruncations).
    pub(super) fn with_file<T>(
        &self,
        fh: FileHandle,
        f: impl FnOnce(&std::fs::File) -> io::Result<T>,
    ) -> Result<T, Errno> {
        self.with_node_file(fh, |node, file| {
            self.union
                .truncation_done(node, || f(file))
                .map_err(|e| self.fail(&e))?
                .map_err(Errno::from)
        })
    }

    /// Run `f` on the real file of an open handle, and its node. A read-only handle opened
    /// on a lower file is first reopened from the upper if the file has been copied up
    /// since.
    pub(super) fn with_node_file<T>(
        &self,
        fh: FileHandle,
        f: impl FnOnce(&Arc<Node>, &std::fs::File) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let of = self.file(fh)?;
        let guard = self.current(&of);
        f(&of.node, &guard.0)
    }

    /// The file behind an open file handle, if `fh` is one, and the layer it is open in,
    /// for a union call that prefers a descriptor to the name.
    pub(super) fn with_open<T>(
        &self,
        fh: Option<FileHandle>,
        f: impl FnOnce(Option<(&std::fs::File, usize)>) -> T,
    ) -> T {
        let Some(of) = fh.and_then(|fh| self.handles.get(fh.0)) else {
            return f(None);
        };
        let guard = self.current(&of);
        f(Some((&guard.0, guard.1)))
    }

    /// An open file's descriptor, moved to the copy if the node was copied up since.
    fn current<'a>(
        &self,
        of: &'a OpenFile,
    ) -> parking_lot::RwLockReadGuard<'a, (std::fs::File, usize)> {
        let layer = of.file.read().1;
        if let Some(fresh) = self.union.follow_copy_up(&of.node, layer, of.flags) {
            *of.file.write() = (fresh, 0);
        }
        of.file.read()
    }

    /// Answer a create or tmpfile with its new node, opened. No entry without an I/O mode:
    /// none only when fstat of the new file fails, or another real file has a live backing
    /// under the node's id (a new file's node has a new id, and an existing file opened by
    /// a racing create is the same real file); the reference the creation counted goes back.
    pub(super) fn reply_created(
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
        // A file that may be copied up while open goes through the daemon: its stat is
        // needed only beside a live passthrough of the same node.
        let st = if self.union.may_copy_up(layer) {
            None
        } else {
            Some(sys::fstat(file.as_raw_fd()).ok()?)
        };
        // With FUSE_HANDLE_KILLPRIV_V2 the kernel drops the kill of set-id bits that a
        // passthrough write by a caller without CAP_FSETID calls for (it leaves that to the
        // daemon, which never sees the write): such files go through the daemon. A node
        // already live in passthrough stays there (the kernel allows one mode at a time).
        let through_daemon = st
            .as_ref()
            .is_none_or(|st| self.union.write_kills_bits(node, st));
        let real = || {
            st.or_else(|| sys::fstat(file.as_raw_fd()).ok())
                .map(|st| (st.st_dev, st.st_ino))
        };
        self.backings
            .choose(node.id, real, through_daemon, register)
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
        let fh = self.handles.insert(OpenFile {
            node,
            file: parking_lot::RwLock::new((file, layer)),
            flags,
            backing: backing.clone(),
        });
        (FileHandle(fh), backing)
    }
}

fn fopen_flags(mode: &IoMode) -> FopenFlags {
    // Our flush does nothing (data is written through to the real file), so the kernel
    // need not send one at every close. (A held truncation is made at the RELEASE, which
    // comes a moment after close returns: a FLUSH would make it before, at two requests
    // more per rewrite with a shell redirection.)
    let flags = FopenFlags::FOPEN_NOFLUSH;
    match mode {
        IoMode::Passthrough(_) => flags,
        // File data changes only through us (or by hand in a lower, which the attribute
        // timeout and auto_inval_data catch): keep the page cache across opens.
        IoMode::Cached => flags | FopenFlags::FOPEN_KEEP_CACHE,
    }
}
