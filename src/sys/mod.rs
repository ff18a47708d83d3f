//! The libc boundary: every `unsafe` block of the crate lives here.
//!
//! All path arguments are single names relative to a directory fd (`*at()` calls), so no
//! operation ever resolves a path string that a branch could redirect with a symlink.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

pub type Stat = libc::stat;

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Where an `*at()` call acts: `name` inside `dir`, not following a symlink there; or, for
/// an empty name, the file an O_PATH fd `dir` holds (through /proc, whose link is followed),
/// which still works once that file has no name left.
fn target(dir: RawFd, name: &OsStr) -> io::Result<(RawFd, CString, bool)> {
    if name.is_empty() {
        let p = format!("/proc/self/fd/{dir}");
        Ok((libc::AT_FDCWD, cstr(OsStr::new(&p))?, true))
    } else {
        Ok((dir, cstr(name)?, false))
    }
}

fn nofollow(follow: bool) -> i32 {
    if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn openat(dir: RawFd, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: c is a valid NUL-terminated string; the returned fd is owned by us.
    let fd = check(unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: fd was just returned by openat and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An O_PATH handle on a directory, never following a symlink.
pub fn open_dir_path(dir: RawFd, name: &OsStr) -> io::Result<OwnedFd> {
    openat(
        dir,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// An O_PATH handle on the directory at `parts` below `root`, in one call: openat2 with
/// RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS, so nothing in a branch can lead outside it.
/// `Ok(None)` where the kernel (before 5.6) or a seccomp filter refuses openat2, or a rename
/// raced the walk (EAGAIN): the caller walks the path one `open_dir_path` at a time instead.
pub fn open_dir_beneath(root: RawFd, parts: &[std::ffi::OsString]) -> io::Result<Option<OwnedFd>> {
    let mut path = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            path.push(b'/');
        }
        path.extend_from_slice(p.as_bytes());
    }
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // struct open_how of linux/openat2.h (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: c and how outlive the call; the size passed is how's own.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EPERM | libc::EAGAIN) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: ret is a new fd returned by openat2, owned by no one else.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(ret as RawFd) }))
}

/// Open a real file for I/O; the caller's flags minus those that would create or follow.
/// One entry of a directory listing: name, inode number, and `DT_*` type (`DT_UNKNOWN` where
/// the filesystem does not say).
pub struct RawDirent {
    pub name: std::ffi::OsString,
    pub ino: u64,
    pub kind: u8,
}

/// Every entry of the directory `dir` (an O_PATH fd), `.` and `..` left out. `noatime`: read
/// it without marking its access time (O_NOATIME, where the daemon may).
pub fn read_dir(dir: RawFd, noatime: bool) -> io::Result<Vec<RawDirent>> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let quiet = if noatime {
        openat(dir, OsStr::new("."), flags | libc::O_NOATIME, 0).ok()
    } else {
        None
    };
    let fd = match quiet {
        Some(fd) => fd,
        None => openat(dir, OsStr::new("."), flags, 0)?,
    };
    // Not zeroed: getdents64 fills what it returns (a listing per directory the kernel
    // reads, so the 64 KiB memset showed in a profile of a tree walk).
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut out = Vec::new();
    loop {
        // SAFETY: buf's spare capacity is valid for writes of that many bytes; fd is an
        // open directory.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.capacity(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(out);
        }
        // SAFETY: getdents64 initialized the first n bytes, n <= capacity.
        unsafe { buf.set_len(n as usize) };
        let mut off = 0usize;
        while off < n as usize {
            // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name (NUL-ended).
            let rec = &buf[off..n as usize];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().expect("8 bytes"));
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().expect("2 bytes")) as usize;
            let kind = rec[18];
            let name = &rec[19..reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                out.push(RawDirent {
                    name: OsStr::from_bytes(name).to_owned(),
                    ino,
                    kind,
                });
            }
            off += reclen;
        }
    }
}

pub fn open_file(dir: RawFd, name: &OsStr, flags: i32) -> io::Result<File> {
    let (dir, c, follow) = target(dir, name)?;
    let mut flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW);
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    // SAFETY: c is a valid C string; the returned fd is owned by us.
    let fd = check(unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by openat and is not owned elsewhere.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// An all-zero stat, to fill in by hand.
pub fn zeroed_stat() -> Stat {
    // SAFETY: libc::stat is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

pub fn fstatat(dir: RawFd, name: &OsStr) -> io::Result<Stat> {
    let (dir, c, follow) = target(dir, name)?;
    let mut st = zeroed_stat();
    // SAFETY: c and st are valid for the duration of the call.
    check(unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, nofollow(follow)) })?;
    Ok(st)
}

pub fn fstat(fd: RawFd) -> io::Result<Stat> {
    // SAFETY: zeroed stat is a valid out-parameter for fstat.
    let mut st: Stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for the duration of the call.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// stat of the directory an O_PATH fd refers to.
pub fn fstat_path(fd: RawFd) -> io::Result<Stat> {
    fstatat_empty(fd)
}

fn fstatat_empty(fd: RawFd) -> io::Result<Stat> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: Stat = unsafe { std::mem::zeroed() };
    // SAFETY: an empty C string with AT_EMPTY_PATH stats fd itself.
    check(unsafe {
        libc::fstatat(
            fd,
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

pub fn mkdirat(dir: RawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: c is a valid C string.
    check(unsafe { libc::mkdirat(dir, c.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: RawFd, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: c is a valid C string.
    check(unsafe { libc::mknodat(dir, c.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &OsStr, dir: RawFd, name: &OsStr) -> io::Result<()> {
    let (t, c) = (cstr(target)?, cstr(name)?);
    // SAFETY: both are valid C strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir, c.as_ptr()) }).map(drop)
}

pub fn readlinkat(dir: RawFd, name: &OsStr) -> io::Result<Vec<u8>> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is writable for buf.len() bytes.
    let n = unsafe { libc::readlinkat(dir, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn unlinkat(dir: RawFd, name: &OsStr, is_dir: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: c is a valid C string.
    check(unsafe { libc::unlinkat(dir, c.as_ptr(), flags) }).map(drop)
}

pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;
pub const RENAME_WHITEOUT: u32 = libc::RENAME_WHITEOUT;

pub fn renameat2(
    olddir: RawFd,
    old: &OsStr,
    newdir: RawFd,
    new: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let (o, n) = (cstr(old)?, cstr(new)?);
    // SAFETY: both are valid C strings.
    check(unsafe { libc::renameat2(olddir, o.as_ptr(), newdir, n.as_ptr(), flags) }).map(drop)
}

/// A new name for `old` in `olddir`; with an empty `old`, for the file `olddir` is a handle
/// on (through /proc, which needs no privilege; the kernel allows it only for a file that
/// has names, or an `O_TMPFILE` one opened without `O_EXCL`).
pub fn linkat(olddir: RawFd, old: &OsStr, newdir: RawFd, new: &OsStr) -> io::Result<()> {
    let (olddir, o, follow) = target(olddir, old)?;
    let n = cstr(new)?;
    let flags = if follow { libc::AT_SYMLINK_FOLLOW } else { 0 };
    // SAFETY: both are valid C strings.
    check(unsafe { libc::linkat(olddir, o.as_ptr(), newdir, n.as_ptr(), flags) }).map(drop)
}

pub fn fchownat(dir: RawFd, name: &OsStr, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let (dir, c, follow) = target(dir, name)?;
    let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
    // SAFETY: c is a valid C string; -1 leaves an id unchanged.
    check(unsafe { libc::fchownat(dir, c.as_ptr(), u, g, nofollow(follow)) }).map(drop)
}

/// Set once fchmodat2 turned out missing (kernels before 6.6; see `newer_or_older`).
static NO_FCHMODAT2: AtomicBool = AtomicBool::new(false);

/// chmod of `name` itself, never of what a symlink there points to; a symlink gets
/// EOPNOTSUPP, as lchmod does. One fchmodat2 call with AT_SYMLINK_NOFOLLOW (Linux 6.6+);
/// before it (fchmodat has no working AT_SYMLINK_NOFOLLOW) and for an empty name, the
/// entry is pinned with O_PATH and changed through its /proc link.
pub fn fchmodat(dir: RawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    if name.is_empty() {
        return chmod_pinned(dir, name, mode);
    }
    newer_or_older(
        &NO_FCHMODAT2,
        || {
            let c = cstr(name)?;
            // SAFETY: c is a valid C string; a plain syscall on a directory fd we hold.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_fchmodat2,
                    dir,
                    c.as_ptr(),
                    mode,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        },
        || chmod_pinned(dir, name, mode),
    )
}

/// A call made by a newer system call where the kernel has it, else the older way:
/// `newer` answering ENOSYS (an older kernel) sets `missing` and takes `older` from then
/// on, and so does EPERM where `older` does not fail with EPERM too (a seccomp filter that
/// predates the call).
fn newer_or_older<T>(
    missing: &AtomicBool,
    newer: impl FnOnce() -> io::Result<T>,
    older: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    if missing.load(Ordering::Relaxed) {
        return older();
    }
    match newer() {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            missing.store(true, Ordering::Relaxed);
            older()
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let r = older();
            if !matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EPERM)) {
                missing.store(true, Ordering::Relaxed);
            }
            r
        }
        r => r,
    }
}

/// chmod of `name` (or, empty, of what the O_PATH fd `dir` holds) through its /proc link,
/// the entry pinned with O_PATH first: a symlink gets EOPNOTSUPP.
fn chmod_pinned(dir: RawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let pinned;
    let fd = if name.is_empty() {
        dir
    } else {
        pinned = openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        pinned.as_raw_fd()
    };
    if fstat(fd)?.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let c = cstr(OsStr::new(&format!("/proc/self/fd/{fd}")))?;
    // SAFETY: c is a valid C string; the /proc link names the pinned inode, not a path.
    check(unsafe { libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), mode, 0) }).map(drop)
}

pub fn fchown(fd: RawFd, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
    // SAFETY: plain syscall on an fd we hold; -1 leaves an id unchanged.
    check(unsafe { libc::fchown(fd, u, g) }).map(drop)
}

pub fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we hold.
    check(unsafe { libc::fchmod(fd, mode) }).map(drop)
}

/// The inode-flag ioctls (`lsattr`/`chattr`: FS_IOC_GETFLAGS/SETFLAGS, and the fsxattr
/// pair FS_IOC_FSGETXATTR/FSSETXATTR), as FUSE forwards them: (command, bytes of the
/// argument, whether it sets). The flags are an int, whatever the command's encoding says.
const FILEATTR_IOCTLS: [(u32, usize, bool); 4] = [
    (libc::FS_IOC_GETFLAGS as u32, 4, false),
    (libc::FS_IOC_SETFLAGS as u32, 4, true),
    (0x801c_581f, 28, false), // FS_IOC_FSGETXATTR: _IOR('X', 31, struct fsxattr)
    (0x401c_5820, 28, true),  // FS_IOC_FSSETXATTR: _IOW('X', 32, struct fsxattr)
];

/// For an inode-flag ioctl `cmd`: the size of its argument, and whether it sets the flags.
pub fn fileattr_ioctl_kind(cmd: u32) -> Option<(usize, bool)> {
    FILEATTR_IOCTLS
        .iter()
        .find(|(c, ..)| *c == cmd)
        .map(|&(_, size, set)| (size, set))
}

/// Run the inode-flag ioctl `cmd` on `fd`, reading or writing its argument in `arg`.
pub fn fileattr_ioctl(fd: RawFd, cmd: u32, arg: &mut [u8]) -> io::Result<()> {
    match fileattr_ioctl_kind(cmd) {
        Some((size, _)) if arg.len() == size => {}
        Some(_) => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        None => return Err(io::Error::from_raw_os_error(libc::ENOTTY)),
    }
    // SAFETY: cmd is one of FILEATTR_IOCTLS, each of which reads or writes exactly
    // arg.len() bytes at the pointer, valid for the call.
    check(unsafe { libc::ioctl(fd, cmd as _, arg.as_mut_ptr()) }).map(drop)
}

/// The inode flags of the file open at `fd` (FS_IOC_GETFLAGS).
pub fn inode_flags(fd: RawFd) -> io::Result<u32> {
    let mut arg = [0u8; 4];
    fileattr_ioctl(fd, libc::FS_IOC_GETFLAGS as u32, &mut arg)?;
    Ok(u32::from_ne_bytes(arg))
}

/// Set the inode flags of the file open at `fd` (FS_IOC_SETFLAGS).
pub fn set_inode_flags(fd: RawFd, flags: u32) -> io::Result<()> {
    let mut arg = flags.to_ne_bytes();
    fileattr_ioctl(fd, libc::FS_IOC_SETFLAGS as u32, &mut arg)
}

/// The `statx` attributes (`STATX_ATTR_*`: immutable, append-only, ...) of `name` in
/// `dir`, not following a symlink there and syncing nothing.
pub fn statx_attributes(dir: RawFd, name: &OsStr) -> io::Result<u64> {
    let (dir, c, follow) = target(dir, name)?;
    // SAFETY: zeroed statx is a valid out-parameter.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let flags = nofollow(follow) | libc::AT_STATX_DONT_SYNC;
    // SAFETY: c and stx are valid for the call.
    check(unsafe { libc::statx(dir, c.as_ptr(), flags, 0, &mut stx) })?;
    Ok(stx.stx_attributes & stx.stx_attributes_mask)
}

/// A timestamp to set: `None` leaves it unchanged, `Some(None)` means now.
pub type TimeSpec = Option<Option<(i64, i64)>>;

fn timespec(t: TimeSpec) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(None) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(Some((s, ns))) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
    }
}

pub fn utimensat(dir: RawFd, name: &OsStr, atime: TimeSpec, mtime: TimeSpec) -> io::Result<()> {
    let (dir, c, follow) = target(dir, name)?;
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: c and ts are valid for the call.
    check(unsafe { libc::utimensat(dir, c.as_ptr(), ts.as_ptr(), nofollow(follow)) }).map(drop)
}

pub fn futimens(fd: RawFd, atime: TimeSpec, mtime: TimeSpec) -> io::Result<()> {
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: ts is valid for the call.
    check(unsafe { libc::futimens(fd, ts.as_ptr()) }).map(drop)
}

pub fn ftruncate(fd: RawFd, size: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we hold.
    check(unsafe { libc::ftruncate(fd, size as i64) }).map(drop)
}

pub fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we hold.
    check(unsafe { libc::fallocate(fd, mode, offset as i64, len as i64) }).map(drop)
}

pub fn fsync(fd: RawFd, data_only: bool) -> io::Result<()> {
    // SAFETY: plain syscalls on an fd we hold.
    check(unsafe {
        if data_only {
            libc::fdatasync(fd)
        } else {
            libc::fsync(fd)
        }
    })
    .map(drop)
}

pub fn lseek(fd: RawFd, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall on an fd we hold.
    let r = unsafe { libc::lseek(fd, offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Share the source's extents (reflink) where the filesystem can.
pub fn ficlone(dst: RawFd, src: RawFd) -> io::Result<()> {
    // SAFETY: FICLONE takes the source fd as its argument.
    check(unsafe { libc::ioctl(dst, libc::FICLONE, src) }).map(drop)
}

pub fn copy_file_range(
    src: RawFd,
    src_off: &mut i64,
    dst: RawFd,
    dst_off: &mut i64,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: the offsets are valid for writes for the duration of the call.
    let n = unsafe { libc::copy_file_range(src, src_off, dst, dst_off, len, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub fn fstatvfs(fd: RawFd) -> io::Result<libc::statvfs> {
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for the call.
    check(unsafe { libc::fstatvfs(fd, &mut st) })?;
    Ok(st)
}

/// access(2) on a path given by the user (configuration checks only).
pub fn access(path: &std::path::Path, mode: i32) -> io::Result<()> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: c is a valid C string.
    check(unsafe { libc::access(c.as_ptr(), mode) }).map(drop)
}

/// statvfs(2) on a path given by the user (configuration checks only).
pub fn statvfs(path: &std::path::Path) -> io::Result<libc::statvfs> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c and st are valid for the call.
    check(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    Ok(st)
}

/// Which mount a path resolves into, as the kernel has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountStat {
    /// The device of the filesystem (for FUSE, its connection): (major, minor).
    pub dev: (u32, u32),
    /// The mount id of /proc/self/mountinfo's first field (kernel >= 5.8).
    pub mnt_id: Option<u64>,
    /// Whether the path is the root of that mount (kernel >= 5.8).
    pub mount_root: Option<bool>,
}

/// statx(2) of a path given by the user, asking for nothing a filesystem must supply and
/// syncing nothing (`AT_STATX_DONT_SYNC`), so a FUSE daemon that is hung or dead is never
/// asked; symlinks and automounts at the last component are not followed.
pub fn statx_mount(path: &std::path::Path) -> io::Result<MountStat> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: zeroed statx is a valid out-parameter.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT | libc::AT_STATX_DONT_SYNC;
    // SAFETY: c and stx are valid for the call.
    check(unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), flags, 0, &mut stx) })?;
    let root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok(MountStat {
        dev: (stx.stx_dev_major, stx.stx_dev_minor),
        mnt_id: (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id),
        mount_root: (stx.stx_attributes_mask & root != 0).then_some(stx.stx_attributes & root != 0),
    })
}

/// The path through /proc that names `name` inside the directory `dir` without following
/// a symlink at `name`: used for the xattr calls that have no `*at()` form.
pub fn proc_path(dir: RawFd, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{dir}"));
    if !name.is_empty() {
        p.push(name);
    }
    p
}

/// Raise the open-file limit as far as we may: every merged directory the kernel holds
/// keeps one O_PATH fd per layer it spans, so deep stacks need many. A privileged daemon
/// lifts the hard limit to the system's maximum (fs.nr_open) too.
pub fn raise_nofile_limit() {
    let system_max = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
    // SAFETY: zeroed rlimit is a valid out-parameter; getrlimit/setrlimit are plain syscalls.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return;
        }
        if let Some(max) = system_max.filter(|m| *m > r.rlim_max) {
            let wide = libc::rlimit {
                rlim_cur: max,
                rlim_max: max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wide) == 0 {
                return;
            }
        }
        if r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The open-file limit in force (soft).
pub fn nofile_limit() -> u64 {
    // SAFETY: zeroed rlimit is a valid out-parameter.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur
        } else {
            1024
        }
    }
}

/// flock(2) on an fd we hold: `op` is LOCK_SH, LOCK_EX, optionally | LOCK_NB.
pub fn flock(fd: RawFd, op: i32) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we hold.
    check(unsafe { libc::flock(fd, op) }).map(drop)
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Has process `pid` CAP_FSETID in its effective set (`CapEff` of /proc/PID/status)? None
/// where that cannot be read (the process is gone, or pid 0: the kernel itself).
pub fn has_cap_fsetid(pid: u32) -> Option<bool> {
    const CAP_FSETID: u32 = 4;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let caps = u64::from_str_radix(hex.trim(), 16).ok()?;
    Some(caps & (1 << CAP_FSETID) != 0)
}

/// Root of the initial user namespace: the one that may write trusted.* xattrs, use FUSE
/// passthrough, and own /run. Root inside a user namespace (rootless containers,
/// `unshare -r`) is not.
pub fn privileged() -> bool {
    static PRIVILEGED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRIVILEGED.get_or_init(|| {
        // The initial namespace maps every id to itself: "0 0 4294967295".
        let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        let initial = map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
        geteuid() == 0 && initial
    })
}

/// Serve every thread's allocations from one malloc arena, unless `MALLOC_ARENA_MAX` says
/// otherwise. glibc gives each thread that allocates while another holds an arena one of its
/// own: every worker then keeps its own share of nodes and its own free holes (about 300 KiB
/// more per daemon after a find over a Debian rootfs); its per-thread cache takes the small
/// allocations of a request without the arena's lock. Call before other threads start.
pub fn one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Return free heap memory to the system (glibc keeps freed small blocks otherwise).
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases memory malloc no longer uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn set_umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe {
        libc::umask(mask);
    }
}

/// Let a write to a closed pipe end the process quietly, as it ends `cat` or `ls` (Rust
/// ignores SIGPIPE, so `println!` would panic instead).
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL is a valid disposition; no handler of ours is replaced.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Detach from the terminal: fork, and let the parent wait for the child's word.
/// Returns in the child; the parent exits with the status the child reports.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: called before any thread is spawned, so the child is a full copy.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

pub fn setsid() {
    // SAFETY: plain syscall; failure (already a leader) is harmless.
    unsafe {
        libc::setsid();
    }
}

/// Point stdin/stdout/stderr at /dev/null once the daemon is detached.
pub fn redirect_stdio_to_null() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard fds, which we own.
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// Block SIGINT/SIGTERM/SIGHUP in this thread (and so in threads spawned after), and wait
/// for one of them in a thread of its own.
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask on the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

pub fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: set is a valid sigset; sig is a valid out-parameter.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
    sig
}

/// Detach the mount at `path` (used when a signal asks us to stop).
pub fn umount_lazy(path: &CStr) -> io::Result<()> {
    // SAFETY: path is a valid C string.
    check(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Linux 6.13's `*xattrat` calls, numbered alike on every architecture: they name a file by
/// directory fd and name, where older kernels need a path through /proc/self/fd, whose
/// lookup allocates a /proc inode each time (about 1 us more a call here).
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;
/// Set once the `*xattrat` calls turned out missing (see `newer_or_older`): the /proc path
/// from then on.
static NO_XATTRAT: AtomicBool = AtomicBool::new(false);

/// `struct xattr_args` of the `*xattrat` calls.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// One xattr call on `name` inside `dir`, never following a symlink there: `at` by the
/// `*xattrat` call (given dir, name and AT_SYMLINK_NOFOLLOW), `path` by the /proc path,
/// which an empty name (the file an O_PATH fd holds, which the `*at` calls refuse) and
/// kernels before 6.13 need. Returns what the call returned, or its error.
fn xattr_call(
    dir: RawFd,
    name: &OsStr,
    at: impl Fn(RawFd, &CStr, libc::c_int) -> libc::c_long,
    path: impl Fn(&CStr) -> libc::c_long,
) -> io::Result<usize> {
    let answer = |n: libc::c_long| match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        n => Ok(n as usize),
    };
    let by_path = || answer(path(&cstr(proc_path(dir, name).as_os_str())?));
    if name.is_empty() {
        return by_path();
    }
    newer_or_older(
        &NO_XATTRAT,
        || answer(at(dir, &cstr(name)?, libc::AT_SYMLINK_NOFOLLOW)),
        by_path,
    )
}

/// Extended attributes of `name` inside `dir` (`.` for the directory itself), never
/// following a symlink at `name`.
pub fn lgetxattr(dir: RawFd, name: &OsStr, attr: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let a = cstr(attr)?;
    // Into buf, or (empty) only the value's size.
    let get = |buf: &mut [u8]| {
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        xattr_call(
            dir,
            name,
            |d, n, at| {
                let mut args = XattrArgs {
                    value: ptr as u64,
                    size: len as u32,
                    flags: 0,
                };
                // SAFETY: args names a buffer writable for len bytes; n and a are valid C
                // strings; the size passed is that of the struct.
                unsafe {
                    libc::syscall(
                        SYS_GETXATTRAT,
                        d,
                        n.as_ptr(),
                        at,
                        a.as_ptr(),
                        &mut args as *mut XattrArgs,
                        std::mem::size_of::<XattrArgs>(),
                    )
                }
            },
            // SAFETY: the buffer is writable for len bytes; p and a are valid C strings.
            |p| unsafe { libc::lgetxattr(p.as_ptr(), a.as_ptr(), ptr.cast(), len) as libc::c_long },
        )
    };
    let mut buf = vec![0u8; 256];
    loop {
        match get(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::ENODATA) => return Ok(None),
                // Asked again at the size it has now; it may grow in between.
                Some(libc::ERANGE) => buf.resize(get(&mut [])? + 1, 0),
                _ => return Err(e),
            },
        }
    }
}

pub fn lsetxattr(
    dir: RawFd,
    name: &OsStr,
    attr: &OsStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let a = cstr(attr)?;
    xattr_call(
        dir,
        name,
        |d, n, at| {
            let args = XattrArgs {
                value: value.as_ptr() as u64,
                size: value.len() as u32,
                flags: flags as u32,
            };
            // SAFETY: args names value, readable for its length; n and a are valid C
            // strings; the size passed is that of the struct.
            unsafe {
                libc::syscall(
                    SYS_SETXATTRAT,
                    d,
                    n.as_ptr(),
                    at,
                    a.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            }
        },
        |p| {
            // SAFETY: value is readable for value.len() bytes; p and a are valid C strings.
            let r = unsafe {
                libc::lsetxattr(
                    p.as_ptr(),
                    a.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            };
            r as libc::c_long
        },
    )
    .map(drop)
}

pub fn lremovexattr(dir: RawFd, name: &OsStr, attr: &OsStr) -> io::Result<()> {
    let a = cstr(attr)?;
    xattr_call(
        dir,
        name,
        // SAFETY: n and a are valid C strings.
        |d, n, at| unsafe { libc::syscall(SYS_REMOVEXATTRAT, d, n.as_ptr(), at, a.as_ptr()) },
        // SAFETY: p and a are valid C strings.
        |p| unsafe { libc::lremovexattr(p.as_ptr(), a.as_ptr()) as libc::c_long },
    )
    .map(drop)
}

/// Has the file open at `fd` the extended attribute `attr`?
pub fn fhasxattr(fd: RawFd, attr: &OsStr) -> io::Result<bool> {
    let a = cstr(attr)?;
    // SAFETY: a null buffer of size 0 asks for the value's size only; a is a valid C string.
    let n = unsafe { libc::fgetxattr(fd, a.as_ptr(), std::ptr::null_mut(), 0) };
    if n >= 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODATA | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

/// Remove an extended attribute of the file open at `fd`.
pub fn fremovexattr(fd: RawFd, attr: &OsStr) -> io::Result<()> {
    let a = cstr(attr)?;
    // SAFETY: plain syscall on an fd we hold; a is a valid C string.
    check(unsafe { libc::fremovexattr(fd, a.as_ptr()) }).map(drop)
}

/// Up to `len` bytes of `fd` from `off` into `buf` (emptied first), short only at the end
/// of the file. Reads into the buffer's spare room, so a buffer kept between calls is
/// neither zeroed nor faulted in again.
pub fn pread_into(fd: RawFd, buf: &mut Vec<u8>, len: usize, off: u64) -> io::Result<()> {
    buf.clear();
    buf.reserve(len);
    while buf.len() < len {
        let done = buf.len();
        let at = libc::off_t::try_from(off + done as u64)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the spare capacity after `done` holds at least len - done bytes, and
        // pread writes at most that many there.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().add(done).cast(), len - done, at) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        // SAFETY: pread initialized the n bytes after `done`.
        unsafe { buf.set_len(done + n as usize) };
    }
    Ok(())
}

/// Attribute names, each without its NUL.
pub fn llistxattr(dir: RawFd, name: &OsStr) -> io::Result<Vec<Vec<u8>>> {
    // Into buf, or (empty) only the list's size.
    let list = |buf: &mut [u8]| {
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        xattr_call(
            dir,
            name,
            // SAFETY: the buffer is writable for len bytes; n is a valid C string.
            |d, n, at| unsafe { libc::syscall(SYS_LISTXATTRAT, d, n.as_ptr(), at, ptr, len) },
            // SAFETY: the buffer is writable for len bytes; p is a valid C string.
            |p| unsafe { libc::llistxattr(p.as_ptr(), ptr.cast(), len) as libc::c_long },
        )
    };
    let mut buf = vec![0u8; 1024];
    loop {
        match list(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                break;
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::ERANGE) => buf.resize(list(&mut [])? + 1, 0),
                Some(libc::ENOTSUP) => return Ok(Vec::new()),
                _ => return Err(e),
            },
        }
    }
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// Mount a FUSE filesystem directly (needs CAP_SYS_ADMIN): open /dev/fuse and mount(2) it
/// with the given type ("fuse.<subtype>") and options; returns the /dev/fuse fd.
pub fn mount_fuse(
    source: &str,
    target: &std::path::Path,
    fstype: &str,
    flags: libc::c_ulong,
    options: &str,
) -> io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let fd = OwnedFd::from(dev);
    let data = format!("fd={},{options}", fd.as_raw_fd());
    let (src, tgt, ty, data) = (
        cstr(OsStr::new(source))?,
        cstr(target.as_os_str())?,
        cstr(OsStr::new(fstype))?,
        cstr(OsStr::new(&data))?,
    );
    // SAFETY: all arguments are valid C strings for the duration of the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            ty.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The xattr and chmod calls by directory fd and name, then by the /proc paths older
    /// kernels take: both ways see and change the same file, and neither follows a
    /// symlink. The fallback switches stay set after this test; both ways are correct.
    #[test]
    fn calls_by_name_and_by_proc_path_agree() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", tmp.path().join("l")).unwrap();
        let dir = open_dir_path(libc::AT_FDCWD, tmp.path().as_os_str()).unwrap();
        let d = dir.as_raw_fd();
        let (f, l, a) = (OsStr::new("f"), OsStr::new("l"), OsStr::new("user.k"));
        for by_proc in [false, true] {
            NO_XATTRAT.store(by_proc, Ordering::Relaxed);
            NO_FCHMODAT2.store(by_proc, Ordering::Relaxed);
            let mode = if by_proc { 0o640 } else { 0o604 };
            fchmodat(d, f, mode).unwrap();
            let m = std::fs::metadata(tmp.path().join("f")).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, mode);
            assert_eq!(
                fchmodat(d, l, 0o600).unwrap_err().raw_os_error(),
                Some(libc::EOPNOTSUPP)
            );
            if lsetxattr(d, f, a, b"v", 0).is_err() {
                continue; // a tmpfs before 6.6: no user xattrs to test with
            }
            assert_eq!(lgetxattr(d, f, a).unwrap(), Some(b"v".to_vec()));
            // longer than the first buffer: the size is asked and the value read again
            let long = vec![b'z'; 3000];
            lsetxattr(d, f, a, &long, libc::XATTR_REPLACE).unwrap();
            assert_eq!(lgetxattr(d, f, a).unwrap(), Some(long));
            assert!(llistxattr(d, f).unwrap().contains(&b"user.k".to_vec()));
            assert_eq!(
                lsetxattr(d, f, a, b"w", libc::XATTR_CREATE)
                    .unwrap_err()
                    .raw_os_error(),
                Some(libc::EEXIST)
            );
            lremovexattr(d, f, a).unwrap();
            assert_eq!(lgetxattr(d, f, a).unwrap(), None);
            // the symlink itself, not its target: user xattrs are refused on symlinks
            assert!(lsetxattr(d, l, a, b"v", 0).is_err());
            assert_eq!(lgetxattr(d, f, a).unwrap(), None);
        }
        // A seccomp filter older than the *at calls refuses them with EPERM where the /proc
        // path works: that call succeeds the /proc way, and so does every later one.
        NO_XATTRAT.store(false, Ordering::Relaxed);
        let refused = |_: RawFd, _: &CStr, _: libc::c_int| {
            // SAFETY: errno is this thread's; setting it is what a failing call does.
            unsafe { *libc::__errno_location() = libc::EPERM };
            -1
        };
        // SAFETY: a null buffer of size 0 asks for the list's size; p is a valid C string.
        let size = |p: &CStr| unsafe {
            libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) as libc::c_long
        };
        assert!(xattr_call(d, f, refused, size).is_ok());
        assert!(
            NO_XATTRAT.load(Ordering::Relaxed),
            "the /proc way from now on"
        );
        NO_XATTRAT.store(false, Ordering::Relaxed);
        NO_FCHMODAT2.store(false, Ordering::Relaxed);
    }
}
