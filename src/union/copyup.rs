//! Copy-up: give a lower entry its own copy in the upper layer before it is changed.
//!
//! Parents first, each with its metadata. The copy is assembled in the work directory
//! (same filesystem as the upper): data (reflink, else copy_file_range skipping holes),
//! then xattrs (after data, since writing data clears security.capability), owner, mode,
//! times; fsync; and only then renamed into place. A crash or a full disk leaves either no
//! copy or a whole one, and the work directory is emptied at the next mount.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::Union;
use super::events::Event;
use super::node::{LayerDir, Node};
use super::resolve::Loc;
use super::whiteout;
use crate::error::{Context, Error, Result};
use crate::sys::{self, Stat};

/// Removes a half-built object from the work directory unless it was published.
struct Unpublished<'a> {
    dir: RawFd,
    name: &'a OsStr,
    is_dir: bool,
    armed: bool,
}

impl Drop for Unpublished<'_> {
    fn drop(&mut self) {
        if self.armed {
            if self.is_dir
                && let Ok(fd) = sys::openat(
                    self.dir,
                    self.name,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
            {
                let _ = super::layer::remove_tree_contents(fd.as_raw_fd());
            }
            let _ = sys::unlinkat(self.dir, self.name, self.is_dir);
        }
    }
}

impl Union {
    /// The upper directory of a merged directory, copying it (and its parents) up first.
    pub fn upper_dir(&self, dir: &Arc<Node>) -> Result<Arc<OwnedFd>> {
        self.check_writable("copy-up")?;
        if let Some(fd) = dir.dir_in(0) {
            return Ok(fd);
        }
        self.copy_up(dir)?;
        dir.dir_in(0)
            .ok_or_else(|| Error::new(libc::EIO, "copy-up").at(dir.path()))
    }

    /// Make sure `node` has its own entry in the upper layer and return where it is.
    pub fn copy_up(&self, node: &Arc<Node>) -> Result<Loc> {
        self.copy_up_with(node, true)
    }

    /// Copy up for a caller about to truncate the file to nothing: metadata only.
    pub fn copy_up_truncated(&self, node: &Arc<Node>) -> Result<Loc> {
        self.copy_up_with(node, false)
    }

    fn copy_up_with(&self, node: &Arc<Node>, with_data: bool) -> Result<Loc> {
        self.check_writable("copy-up")?;
        let loc = self.locate(node)?;
        if loc.layer == 0 {
            return Ok(loc);
        }
        let _serial = node.copy_up_lock.lock();
        let loc = self.locate(node)?;
        if loc.layer == 0 {
            return Ok(loc);
        }
        let started = std::time::Instant::now();
        let parent = node
            .state()
            .parent
            .clone()
            .ok_or_else(|| Error::new(libc::EIO, "copy-up root"))?;
        let up_parent = self.upper_dir(&parent)?;
        let path = node.path();
        let st = sys::fstatat(loc.raw(), &loc.name)
            .op("copy-up stat")
            .map_err(|e| e.at(&path).in_layer(loc.layer))?;
        // Publishing the copy must not make the parent look modified (as on overlayfs).
        let pst = sys::fstat_path(up_parent.as_raw_fd()).op("copy-up stat parent")?;
        self.copy_entry(&loc, &st, up_parent.as_raw_fd(), node.ino, with_data)
            .map_err(|e| e.at(&path).in_layer(loc.layer))?;
        let _ = sys::utimensat(
            up_parent.as_raw_fd(),
            ".".as_ref(),
            Some(Some((pst.st_atime, pst.st_atime_nsec))),
            Some(Some((pst.st_mtime, pst.st_mtime_nsec))),
        );
        let upper = Loc {
            dir: up_parent,
            name: loc.name.clone(),
            layer: 0,
        };
        let copied = sys::fstatat(upper.raw(), &upper.name).op("copy-up stat copy")?;
        let copy = match node.kind {
            libc::S_IFREG => {
                sys::openat(upper.raw(), &upper.name, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .ok()
                    .map(Arc::new)
            }
            _ => None,
        };
        let mut s = node.state_mut();
        s.layer = 0;
        s.real = (copied.st_dev, copied.st_ino);
        s.copy = copy;
        if node.is_dir() {
            let fd = sys::open_dir_path(upper.raw(), &upper.name).op("open copied-up dir")?;
            s.dirs.insert(
                0,
                LayerDir {
                    layer: 0,
                    fd: Arc::new(fd),
                    xwhiteouts: false,
                },
            );
        }
        drop(s);
        let bytes = if with_data && node.kind == libc::S_IFREG {
            st.st_size as u64
        } else {
            0
        };
        let took = started.elapsed();
        log::debug!("copy-up {path} from layer {} ({bytes} bytes)", loc.layer);
        self.events.emit(Event::CopyUp {
            path,
            from: loc.layer,
            bytes,
            took,
        });
        Ok(upper)
    }

    /// Build a copy of `src` in the work dir and publish it as `src.name` in `up_parent`.
    fn copy_entry(
        &self,
        src: &Loc,
        st: &Stat,
        up_parent: RawFd,
        ino: u64,
        with_data: bool,
    ) -> Result<()> {
        let work = self.stack.work()?;
        let tmp = work.temp_name();
        let kind = st.st_mode & libc::S_IFMT;
        let mut guard = Unpublished {
            dir: work.raw(),
            name: &tmp,
            is_dir: kind == libc::S_IFDIR,
            armed: true,
        };
        let mut data: Option<File> = None;
        match kind {
            libc::S_IFDIR => sys::mkdirat(work.raw(), &tmp, 0o700).op("copy-up mkdir")?,
            libc::S_IFREG => {
                let from =
                    sys::open_file(src.raw(), &src.name, libc::O_RDONLY).op("copy-up open")?;
                let to = File::from(
                    sys::openat(
                        work.raw(),
                        &tmp,
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                        0o600,
                    )
                    .op("copy-up create")?,
                );
                if with_data {
                    copy_data(&from, &to, st.st_size as u64).op("copy-up data")?;
                }
                data = Some(to);
            }
            libc::S_IFLNK => {
                let target = sys::readlinkat(src.raw(), &src.name).op("copy-up readlink")?;
                sys::symlinkat(
                    std::os::unix::ffi::OsStrExt::from_bytes(&target),
                    work.raw(),
                    &tmp,
                )
                .op("copy-up symlink")?;
            }
            _ => sys::mknodat(work.raw(), &tmp, st.st_mode, st.st_rdev).op("copy-up mknod")?,
        }
        copy_xattrs(src.raw(), &src.name, work.raw(), &tmp)?;
        // Keep the inode number the file showed before: overlayfs' "origin". Not for a file
        // hard-linked in the lower: its other names keep that number, the copy is another file.
        let keeps_number = kind == libc::S_IFDIR || st.st_nlink <= 1;
        if keeps_number {
            let _ = sys::lsetxattr(
                work.raw(),
                &tmp,
                whiteout::ORIGIN_XATTR.as_ref(),
                &ino.to_le_bytes(),
                0,
            );
        }
        set_owner_mode_times(work.raw(), &tmp, st)?;
        if let Some(f) = &data
            && !self.opts.volatile
        {
            sys::fsync(f.as_raw_fd(), false).op("copy-up fsync")?;
        }
        sys::renameat2(
            work.raw(),
            &tmp,
            up_parent,
            &src.name,
            sys::RENAME_NOREPLACE,
        )
        .op("copy-up publish")?;
        guard.armed = false;
        if keeps_number {
            self.record_origin(up_parent, &src.name, ino);
        }
        Ok(())
    }

    /// Copy up a whole merged subtree (used to move a directory that spans layers).
    pub fn copy_up_tree(&self, dir: &Arc<Node>) -> Result<()> {
        self.copy_up(dir)?;
        for entry in self.list(dir)?.into_iter().skip(2) {
            let Some(found) = self.probe(dir, &entry.name)? else {
                continue;
            };
            let child = self.node_for(dir, &entry.name, found);
            if child.is_dir() {
                self.copy_up_tree(&child)?;
            } else {
                self.copy_up(&child)?;
            }
        }
        Ok(())
    }
}

/// Owner first (chown clears set-id bits), then mode, then times (both change ctime only).
pub fn set_owner_mode_times(dir: RawFd, name: &OsStr, st: &Stat) -> Result<()> {
    match sys::fchownat(dir, name, Some(st.st_uid), Some(st.st_gid)) {
        Ok(()) => {}
        // An unprivileged daemon keeps its own ids, as fuse-overlayfs does.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && sys::geteuid() != 0 => {}
        Err(e) => return Err(Error::io(e, "copy-up chown")),
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        sys::fchmodat(dir, name, st.st_mode & 0o7777).op("copy-up chmod")?;
    }
    sys::utimensat(
        dir,
        name,
        Some(Some((st.st_atime, st.st_atime_nsec))),
        Some(Some((st.st_mtime, st.st_mtime_nsec))),
    )
    .op("copy-up utimes")
}

/// Copy every xattr but the layering's own.
pub fn copy_xattrs(sdir: RawFd, sname: &OsStr, ddir: RawFd, dname: &OsStr) -> Result<()> {
    let names = match sys::llistxattr(sdir, sname) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => return Ok(()),
        Err(e) => return Err(Error::io(e, "copy-up listxattr")),
    };
    for n in names {
        let attr = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&n);
        if whiteout::is_private_xattr(attr) {
            continue;
        }
        let Some(value) = sys::lgetxattr(sdir, sname, attr).op("copy-up getxattr")? else {
            continue;
        };
        match sys::lsetxattr(ddir, dname, attr, &value, 0) {
            Ok(()) => {}
            // user.* cannot be set on symlinks and special files; trusted.* needs privilege.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOTSUP)) => {
                log::debug!("copy-up: xattr {} not copied: {e}", attr.to_string_lossy());
            }
            Err(e) => return Err(Error::io(e, "copy-up setxattr")),
        }
    }
    Ok(())
}

/// Copy file data: share extents where the filesystem can, else copy the data regions
/// (holes stay holes), in the kernel where possible.
pub fn copy_data(from: &File, to: &File, size: u64) -> std::io::Result<()> {
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    if size == 0 || sys::ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut off: i64 = 0;
    let end = size as i64;
    while off < end {
        let data = match sys::lseek(src, off, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(_) => off, // no SEEK_DATA support: treat everything as data
        };
        let hole = sys::lseek(src, data, libc::SEEK_HOLE)
            .unwrap_or(end)
            .min(end);
        copy_range(from, to, data, hole)?;
        off = hole.max(data + 1);
    }
    sys::ftruncate(dst, size)
}

fn copy_range(from: &File, to: &File, start: i64, end: i64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (mut so, mut dof) = (start, start);
    while so < end {
        let want = ((end - so) as usize).min(1 << 30);
        match sys::copy_file_range(from.as_raw_fd(), &mut so, to.as_raw_fd(), &mut dof, want) {
            Ok(0) => return Ok(()), // source shrank under us
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP)
                ) =>
            {
                break;
            }
            Err(e) => return Err(e),
        }
    }
    // Fallback: plain reads and writes.
    let mut buf = vec![0u8; 1 << 20];
    while so < end {
        let want = ((end - so) as usize).min(buf.len());
        let n = from.read_at(&mut buf[..want], so as u64)?;
        if n == 0 {
            break;
        }
        to.write_all_at(&buf[..n], so as u64)?;
        so += n as i64;
    }
    Ok(())
}
