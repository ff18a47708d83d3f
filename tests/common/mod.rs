//! Test harness: temp branches, a real FUSE mount of the `unionmount` binary, commands run
//! with a deadline, and tree snapshots.
//!
//! - `mount.rs`: `Fixture` (upper/, lower0/.., mnt/ in a temp dir; `as_root` for root-only
//!   tests) and the `Mount` guard. Every `Mount` snapshots its read-only branches before the
//!   daemon starts and, when dropped (even after a failed assertion), unmounts, waits for
//!   the daemon, and — unless the test is already failing — asserts that the daemon exited
//!   cleanly, the mount is gone, and the read-only branches are byte-for-byte, mode-for-mode
//!   unchanged. `remount()` also checks the merged view across a rotation of the upper into
//!   the lowers, and `check_across_remount(check)` runs a test's checks before and after
//!   it. `Fixture::daemon` spawns a daemon the harness does not own, for tests that kill it
//!   (`daemon_env` with variables such as `UNIONMOUNT_CRASH_AT`). A rotation carries the
//!   upper's snapshots (`UPPER.snapshots/NNNN-NAME`) down with it, as plain lowers below it.
//! - `run.rs`: the `unionmount` tools and other commands run to completion with a deadline
//!   (`tool`, `tool_ok`, `run`, `run_within` -> `Finished`), `succeeds`, `as_user`;
//!   waiting for a child or a condition (`wait_within`, `wait_or_kill`, `eventually`);
//!   unmounting (`unmount`, `unmount_and_wait`, `unmount_all`, `UnmountGuard`).
//! - `mounts.rs`: /proc/self/mountinfo; `KernelMount` (kernel overlayfs, tmpfs, any mount(8)
//!   line, unmounted on drop) and `overlay_opts`; aborting a hung FUSE connection.
//! - `snapshot.rs`: snapshots of branch trees, their differences, and `walk_tree`.
//! - here: small helpers for populating branches and asserting.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

mod mount;
mod mounts;
mod run;
mod snapshot;
// Each test file uses a part of the harness.
#[allow(unused_imports)]
pub use {mount::*, mounts::*, run::*, snapshot::*};

pub const BIN: &str = env!("CARGO_BIN_EXE_unionmount");
/// Hidden work directory the daemon may keep in the upper while mounted.
pub const WORKDIR: &str = ".wh..wh..work";
/// Opaque-directory marker file.
pub const OPQ: &str = ".wh..wh..opq";
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Small helpers for populating branches and asserting
// ---------------------------------------------------------------------------------------------

/// FS_IOC_GETFLAGS of `p` (`lsattr`), opened read-only.
pub fn inode_flags(p: &Path) -> io::Result<u32> {
    let f = fs::File::open(p)?;
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int into `flags`, which outlives the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags as u32)
}

/// FS_IOC_SETFLAGS of `p` (`chattr`), opened read-only as chattr does.
pub fn set_inode_flags(p: &Path, flags: u32) -> io::Result<()> {
    let f = fs::File::open(p)?;
    let flags = flags as libc::c_int;
    // SAFETY: FS_IOC_SETFLAGS reads one int from `flags`, which outlives the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// -1 -> last OS error.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Write `content` to `path`, creating parent directories.
pub fn put(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// README's demo, the changes made through the mount of `fx` (whose lower 0 holds `1`,
/// `app/hello.txt` and `usr/share/man/a`): `d` created, `1` overwritten, `app/hello.txt`
/// removed, `usr/share/man` removed and made again (opaque) with `b` in it.
pub fn demo_changes(fx: &Fixture) {
    put(&fx.m("d"), "new file\n");
    put(&fx.m("1"), "OVERRIDDEN\n");
    fs::remove_file(fx.m("app/hello.txt")).unwrap();
    fs::remove_dir_all(fx.m("usr/share/man")).unwrap();
    mkdir_p(&fx.m("usr/share/man"));
    put(&fx.m("usr/share/man/b"), "new man\n");
}

/// `put` then chmod.
pub fn put_mode(path: &Path, content: &str, mode: u32) {
    put(path, content);
    set_mode(path, mode);
}

pub fn mkdir_p(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", path.display()));
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// Set atime and mtime (not following symlinks).
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    };
    let times = [ts, ts];
    cvt(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(path).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Overlayfs-style whiteout: a char device 0/0.
pub fn mknod_whiteout(path: &Path) {
    cvt(unsafe {
        libc::mknod(
            cstr(path).as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(0, 0),
        )
    })
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    cvt(unsafe { libc::mkfifo(cstr(path).as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// renameat2(AT_FDCWD, from, AT_FDCWD, to, flags) through the raw syscall.
pub fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (f, t) = (cstr(from), cstr(to));
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Sorted names in a directory, exactly as readdir returns them (minus . and ..).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `names`, ignoring the daemon's work directory (for upper directories).
pub fn upper_names(dir: &Path) -> Vec<String> {
    names(dir).into_iter().filter(|n| n != WORKDIR).collect()
}

/// A path as a command-line argument.
pub fn s(path: &Path) -> String {
    path.display().to_string()
}

/// Names as `["a", "b"]` literal helper.
pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn lexists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// The errno of a failed result; panics (with `what`) on success.
pub fn errno<T: std::fmt::Debug>(r: io::Result<T>, what: &str) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: not an OS error: {e}")),
    }
}

pub fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, expected: i32, what: &str) {
    let got = errno(r, what);
    assert_eq!(
        got,
        expected,
        "{what}: expected {}, got {}",
        io::Error::from_raw_os_error(expected),
        io::Error::from_raw_os_error(got)
    );
}

/// The path does not exist (lstat gives ENOENT).
pub fn assert_gone(path: &Path) {
    assert_errno(
        fs::symlink_metadata(path),
        libc::ENOENT,
        &format!("lstat {}", path.display()),
    );
}

/// A regular, empty-or-not file (the `.wh.` whiteout / opaque marker format).
pub fn assert_regular_file(path: &Path) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    assert!(
        md.file_type().is_file(),
        "{} is not a regular file: {:?}",
        path.display(),
        md.file_type()
    );
}

pub fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
        .ino()
}

/// name -> d_ino as readdir reports it.
pub fn dir_inos(dir: &Path) -> BTreeMap<String, u64> {
    use std::os::unix::fs::DirEntryExt;
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.ino())
        })
        .collect()
}

pub fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Running as root (some tests need privileges and skip themselves otherwise).
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Wait (up to 10 s) until `mnt` is, or is no longer, a unionmount mount point.
pub fn wait_mounted(mnt: &Path, mounted: bool) {
    let done = eventually(Duration::from_secs(10), || {
        mount_fstype(mnt).is_some() == mounted
    });
    let state = if mounted {
        "not mounted"
    } else {
        "still mounted"
    };
    assert!(done, "{}: {state} after 10 s", mnt.display());
}

/// The content of a file (read without marking its atime) or a symlink's target; nothing
/// for other types.
pub fn quiet_content(p: &Path, md: &fs::Metadata) -> Vec<u8> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut data = Vec::new();
    if md.is_file() {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(p)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
    } else if md.file_type().is_symlink() {
        data = fs::read_link(p)
            .unwrap()
            .into_os_string()
            .into_encoded_bytes();
    }
    data
}

/// The errno a lookup in `mnt`, whose daemon died, settles on: over io_uring the kernel
/// ends the connection a moment after the daemon exits, and answers ECONNABORTED or
/// ECANCELED until then (ENOTCONN after). Waits up to 5 s. A name never asked before: the
/// kernel may answer anything else from its caches (an open of a directory needs no
/// request at all).
pub fn dead_mount_errno(mnt: &Path) -> i32 {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut last = 0;
    eventually(Duration::from_secs(5), || {
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = mnt.join(format!(".dead-mount-probe-{}-{n}", std::process::id()));
        last = errno(fs::symlink_metadata(probe), "a lookup in a dead mount");
        !matches!(last, libc::ECONNABORTED | libc::ECANCELED)
    });
    last
}

/// splitmix64 of `z`: spreads a seed (or a counter) over all 64 bits.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small xorshift64 generator: a test's random workload is the same for the same seed.
/// `Rng(state)` takes a state as it is (it must not be 0); `Rng::new(seed)` any seed.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix(seed).max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 for 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// An index into something of length `n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True `percent` times in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.index(v.len())]
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}
