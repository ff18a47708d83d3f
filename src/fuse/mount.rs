//! The mount and its session (overlayfs's super.c): mounting with mount(2) or
//! fusermount3, the features agreed with the kernel at init, destroy, statfs, unmounting.

use std::io;

use fuser::{InitFlags, KernelConfig, MountOption, ReplyStatfs, SessionACL};

use super::UnionFs;
use crate::config::{Config, Xattrs};
use crate::sys;

pub(super) fn init(fs: &mut UnionFs, config: &mut KernelConfig) -> io::Result<()> {
    // Every listing with attributes (no FUSE_READDIRPLUS_AUTO, which asks for them only at
    // offset 0 and leaves the rest of a big directory to one LOOKUP per name): a walk of a
    // fresh Debian rootfs mount went from 2,008 requests to 1,584.
    let wanted = InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_PARALLEL_DIROPS
        // O_TRUNC done by the OPEN itself. Without it (and so with FUSE_NO_OPEN_SUPPORT,
        // where there is no OPEN) it comes as a truncate of its own, and a read racing it
        // through the page cache reads zeros: between our truncate and the kernel taking
        // the new size, its short READ fills a page with zeros that the old size shows.
        // Through the page cache the OPEN's truncation is held for the same reason (see
        // union::file::HeldTruncations).
        | InitFlags::FUSE_ATOMIC_O_TRUNC
        | InitFlags::FUSE_CACHE_SYMLINKS
        | InitFlags::FUSE_AUTO_INVAL_DATA
        | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
        // Set-id bits and file capabilities are ours to kill, on the flag the kernel sends
        // with a write, truncate, chown or O_TRUNC open (union::inode::kill_suidgid):
        // otherwise the kernel asks for security.capability (GETXATTR) before each write.
        | InitFlags::FUSE_HANDLE_KILLPRIV_V2
        // No OPENDIR and RELEASEDIR round trips: directories need no handle (listings are
        // kept by node, and by the kernel in its cache; see readdir.rs).
        | InitFlags::FUSE_NO_OPENDIR_SUPPORT;
    // Without it the kernel checks mode bits only: an ACL denying a user on a branch
    // would not deny them through an allow_other mount.
    // With ACLs the umask is ours to apply (`FUSE_DONT_MASK`): a parent's default ACL
    // replaces it.
    let wanted = if fs.acl {
        wanted | InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK
    } else {
        wanted
    };
    let mut supported = config.capabilities() & wanted;
    fs.no_opendir = supported.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
    // Start looking through a read-only stack for xattrs now, so that the answer is there
    // by the time a walk asks (see xattr.rs).
    if fs.xattrs == Xattrs::Auto {
        let _ = fs.union.branches_hold_xattrs();
    }
    // Passthrough needs CAP_SYS_ADMIN; a stack depth of 2 lets branches sit on overlayfs.
    if config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
        && sys::privileged()
        && fs.may_passthrough
        && config.set_max_stack_depth(2).is_ok()
    {
        supported |= InitFlags::FUSE_PASSTHROUGH;
        fs.passthrough = true;
    }
    let _ = config.add_capabilities(supported);
    let kernel = format!(
        "FUSE {}: data {}, readdirplus {}",
        config.kernel_abi(),
        if fs.passthrough {
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
    log::info!("{}; kernel {kernel}", fs.description);
    *fs.union.events.kernel.lock() = kernel;
    Ok(())
}

pub(super) fn destroy(fs: &mut UnionFs) {
    fs.union.shutdown();
    log::info!("unmounted");
}

pub(super) fn statfs(fs: &UnionFs, reply: ReplyStatfs) {
    match fs.union.statfs() {
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
        Err(e) => reply.error(fs.fail(&e)),
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
    let notifier = fs.notifier.clone();
    let union = fs.union.clone();
    // Settled at INIT, after `init` wrote the kernel line.
    let transport = move |s: &fuser::Session<UnionFs>| {
        let t = s.transport();
        log::info!("transport: {t}");
        union
            .events
            .kernel
            .lock()
            .push_str(&format!(", transport {t}"));
    };
    if sys::geteuid() != 0 {
        let mut s = fuser::Session::new(fs, &config.mountpoint, &session_config)?;
        transport(&s);
        let _ = notifier.set(s.notifier());
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
        Ok(s) => {
            transport(&s);
            let _ = notifier.set(s.notifier());
            Ok((s, Unmount::Direct(path)))
        }
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
    c.io_uring = config.uring;
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
