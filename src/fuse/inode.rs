//! Attributes (overlayfs's inode.c): getattr, setattr, readlink, access, and the encoding
//! of a stat as the kernel gets it, which every reply with attributes uses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileHandle, FileType, INodeNo, ReplyAttr, ReplyData, ReplyEmpty, TimeOrNow};

use super::UnionFs;
use crate::sys::{self, Stat};
use crate::union::inode::SetAttr;

/// What a setattr asks to change, as the kernel sent it (only what Linux sends).
pub(super) struct Changes {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    /// FATTR_KILL_SUIDGID: kill set-id bits and file capability (truncate, chown).
    pub kill_suidgid: bool,
}

pub(super) fn getattr(fs: &UnionFs, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
    let node = match fs.node(ino) {
        Ok(n) => n,
        Err(e) => return reply.error(e),
    };
    // An open file may be unlinked: its handle still knows it.
    match fs.with_open(fh, |file| {
        fs.union.getattr_open(&node, file.map(|(f, _)| f))
    }) {
        Ok(st) => {
            fs.check_listing(&node);
            reply.attr(&fs.ttl, &fs.attr(&st))
        }
        Err(e) => reply.error(fs.fail(&e)),
    }
}

pub(super) fn setattr(
    fs: &UnionFs,
    ino: INodeNo,
    pid: u32,
    changes: Changes,
    fh: Option<FileHandle>,
    reply: ReplyAttr,
) {
    let node = match fs.node(ino) {
        Ok(n) => n,
        Err(e) => return reply.error(e),
    };
    // The kernel's check before a write or fallocate (file_remove_privs) leaves the kill
    // to us with KILLPRIV_V2 but sends it as a SETATTR with nothing to change: a write
    // through the daemon brings its own flag, but a fallocate does not, nor does a write
    // through FUSE passthrough (to a file that got set-id bits while open: files that had
    // them at open go through the daemon), which never reaches us. The same SETATTR comes
    // after the kernel removed a file capability (REMOVEXATTR) for a caller who may keep
    // set-id bits: kill only for a caller without CAP_FSETID, as the kernel decides.
    let only_size = changes.mode.is_none()
        && changes.uid.is_none()
        && changes.gid.is_none()
        && changes.atime.is_none()
        && changes.mtime.is_none();
    let empty = only_size && changes.size.is_none();
    let remove_privs = empty && !sys::has_cap_fsetid(pid).unwrap_or(false);
    let a = SetAttr {
        mode: changes.mode,
        uid: changes.uid.map(|u| fs.owners.stored_uid(u)),
        gid: changes.gid.map(|g| fs.owners.stored_gid(g)),
        size: changes.size,
        atime: time_spec(changes.atime),
        mtime: time_spec(changes.mtime),
        kill_suidgid: changes.kill_suidgid || remove_privs,
    };
    // Through the page cache a truncate to 0 is held as an O_TRUNC open's is (see
    // union::file::HeldTruncations): a read racing it would otherwise read zeros.
    if !fs.passthrough && a.size == Some(0) && only_size {
        return match fs.union.truncate_holding(&node, a.kill_suidgid) {
            Ok((st, _)) => reply.attr(&fs.ttl, &fs.attr(&st)),
            Err(e) => reply.error(fs.fail(&e)),
        };
    }
    // A held truncation is made first: a size, mode or time set now must not be undone
    // by it later. The handle is taken before the truncation's lock, as a write takes them.
    let res = fs.with_open(fh, |file| {
        fs.union
            .truncation_done(&node, || fs.union.setattr(&node, a, file))
    });
    match res.and_then(|r| r) {
        Ok(st) => reply.attr(&fs.ttl, &fs.attr(&st)),
        Err(e) => reply.error(fs.fail(&e)),
    }
}

pub(super) fn readlink(fs: &UnionFs, ino: INodeNo, reply: ReplyData) {
    match fs.on(ino, |n| fs.union.readlink(&n)) {
        Ok(t) => reply.data(&t),
        Err(e) => reply.error(e),
    }
}

pub(super) fn access(reply: ReplyEmpty) {
    // default_permissions: the kernel checks modes itself.
    reply.ok();
}

pub(super) fn file_type(mode: u32) -> FileType {
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

pub(super) fn file_attr(st: &Stat) -> FileAttr {
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
