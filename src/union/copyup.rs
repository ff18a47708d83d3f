//! Copy-up: give a lower entry its own copy in the upper layer before it is changed.
//!
//! Parents first, each with its metadata. The copy is assembled in the work directory
//! (same filesystem as the upper): data (reflink, else copy_file_range skipping holes),
//! then owner, xattrs, mode and times (`copy_metadata` says why in that order); fsync; and
//! only then renamed into place. A crash or a full disk leaves either no copy or a whole
//! one, and the work directory is emptied at the next mount.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::Union;
use super::WhiteoutFormat;
use super::events::Event;
use super::index;
use super::node::{DirSlot, HeldFd, Kept, Loc, Node};
use super::whiteout;
use crate::error::{Context, Error, Result};
use crate::sys::{self, Stat};

/// How much of a file a copy-up brings along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Data {
    Full,
    /// The caller truncates the file to nothing next.
    Discarded,
    /// Metadata only; the data stays in the lower until the first write.
    Deferred,
}

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
        if let Some(fd) = self.dir_in(dir, 0) {
            return Ok(fd);
        }
        self.copy_up(dir)?;
        self.dir_in(dir, 0)
            .ok_or_else(|| Error::new(libc::EIO, "copy-up").at(dir.path()))
    }

    /// Make sure `node` has its own entry in the upper layer, data included, and return
    /// where it is.
    pub fn copy_up(&self, node: &Arc<Node>) -> Result<Loc> {
        self.copy_up_with(node, Data::Full)
    }

    /// Copy up for a caller about to truncate the file to nothing: no data.
    pub fn copy_up_truncated(&self, node: &Arc<Node>) -> Result<Loc> {
        self.copy_up_with(node, Data::Discarded)
    }

    /// Copy up for a change of metadata only (chmod, chown, utimens, xattrs): a regular file
    /// keeps its data in the lower until the first write (overlayfs' metacopy).
    pub fn copy_up_metadata(&self, node: &Arc<Node>) -> Result<Loc> {
        self.copy_up_with(node, Data::Deferred)
    }

    fn copy_up_with(&self, node: &Arc<Node>, want: Data) -> Result<Loc> {
        self.check_writable("copy-up")?;
        let loc = self.locate(node)?;
        if loc.layer > 0 && node.is_unlinked() {
            // A deleted lower entry, still open: changing it would bring it back.
            return Err(Error::new(libc::ENOENT, "copy-up").at(node.path()));
        }
        if node.data_in_upper() || (loc.layer == 0 && want == Data::Deferred) {
            return Ok(loc);
        }
        let _serial = node.copy_up_lock.lock();
        let loc = self.locate(node)?;
        if loc.layer > 0 && node.is_unlinked() {
            // Removed while we waited for the lock.
            return Err(Error::new(libc::ENOENT, "copy-up").at(node.path()));
        }
        if loc.layer == 0 {
            let data = node.state().data().cloned();
            return match data {
                Some(data) if want != Data::Deferred => self.finish_metacopy(node, loc, data, want),
                _ => Ok(loc),
            };
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
        // Deferring data needs the origin record to say so, which takes privilege; and a
        // file hard-linked in the lower is copied whole (completing a deferred copy replaces
        // the inode, which its other names share through the index).
        let want = if want == Data::Deferred
            && (st.st_mode & libc::S_IFMT != libc::S_IFREG
                || st.st_nlink > 1
                || st.st_size == 0
                || !sys::privileged())
        {
            Data::Full
        } else {
            want
        };
        // A lower file holding metadata only (a marked upper stacked as a lower) has its
        // data further down, where the lookup found it.
        let data_src = node.state().data().cloned().unwrap_or_else(|| loc.clone());
        // Another name of the same lower file was copied up before: share that copy.
        let shared = index::is_linked_lower(loc.layer, &st)
            .then(|| self.indexed(node.ino))
            .flatten();
        let copied = match &shared {
            Some((index, key)) => self.join_index(index, key, up_parent.as_raw_fd(), &loc.name),
            None => self.copy_entry(&loc, &data_src, &st, up_parent.as_raw_fd(), node.ino, want),
        };
        copied
            .map_err(|e| match e.errno {
                // Renamed over while we copied: the file we were copying is gone.
                libc::EEXIST if node.is_unlinked() => Error::new(libc::ENOENT, "copy-up"),
                _ => e,
            })
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
            libc::S_IFREG if want != Data::Deferred => {
                sys::openat(upper.raw(), &upper.name, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .ok()
                    .map(Arc::new)
            }
            _ => None,
        };
        let mut s = node.state_mut();
        s.changed = self.note_change();
        s.layer = 0;
        node.set_real(&mut s, (copied.st_dev, copied.st_ino));
        s.set_kept(copy.map(|fd| Kept { fd, layer: 0 }));
        s.set_data((want == Data::Deferred).then_some(data_src));
        if node.is_dir() {
            let fd = sys::open_dir_path(upper.raw(), &upper.name).op("open copied-up dir")?;
            Arc::make_mut(&mut s.dirs).insert(
                0,
                DirSlot {
                    layer: 0,
                    held: Some(Arc::new(HeldFd::new(Arc::new(fd), None))),
                    xwhiteouts: false,
                    path: Arc::new(Vec::new()),
                },
            );
        }
        drop(s);
        let bytes = if want == Data::Full && node.kind == libc::S_IFREG && shared.is_none() {
            st.st_size as u64
        } else {
            0
        };
        if index::is_linked_lower(loc.layer, &st) {
            self.join_known_names(node);
        }
        let took = started.elapsed();
        log::debug!(
            "copy-up {path} (node {}) from layer {} ({bytes} bytes)",
            node.id,
            loc.layer
        );
        self.events.emit(Event::CopyUp {
            path,
            from: loc.layer,
            bytes,
            took,
        });
        Ok(upper)
    }

    /// Build a copy of `src` in the work dir and publish it as `src.name` in `up_parent`;
    /// a regular file's data comes from `data_src` (`src` itself unless that holds
    /// metadata only).
    fn copy_entry(
        &self,
        src: &Loc,
        data_src: &Loc,
        st: &Stat,
        up_parent: RawFd,
        ino: u64,
        want: Data,
    ) -> Result<()> {
        let stack = self.stack();
        let work = stack.work()?;
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
                let from = self
                    .open_branch(data_src.raw(), &data_src.name, libc::O_RDONLY)
                    .op("copy-up open")?;
                let to = new_work_file(work.raw(), &tmp)?;
                match want {
                    Data::Full => copy_data(&from, &to, st.st_size as u64).op("copy-up data")?,
                    // Sparse, of the right size: reads go to the lower file meanwhile.
                    Data::Deferred => {
                        sys::ftruncate(to.as_raw_fd(), st.st_size as u64).op("copy-up size")?
                    }
                    Data::Discarded => {}
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
        // Keep the inode number the file showed before: overlayfs' "origin". A file
        // hard-linked in the lower keeps it too: its other names join this copy.
        let linked = index::is_linked_lower(src.layer, st);
        let keeps_number = kind == libc::S_IFDIR || st.st_nlink <= 1 || linked;
        let metacopy = want == Data::Deferred;
        // In overlay format the kernel's mark alone says "metadata only": kernel overlayfs
        // copies our record (not its own mark) into a whole copy it makes of this file in
        // an upper above, where a flag in the record would send reads back to stale data.
        let overlay = self.opts.whiteout == WhiteoutFormat::Overlay;
        if keeps_number {
            let record = whiteout::encode_origin(ino, metacopy && !overlay);
            let set = sys::lsetxattr(
                work.raw(),
                &tmp,
                whiteout::ORIGIN_XATTR.as_ref(),
                &record,
                0,
            );
            // Without its record a metadata-only copy would show zeros after a remount.
            if metacopy {
                set.op("copy-up metacopy record")?;
            }
        }
        // Kernel overlayfs reading this upper knows a metadata-only copy by its own mark
        // (an empty value: no verity digest); without it, it serves the sparse copy.
        if metacopy && overlay {
            let mark = whiteout::METACOPY_XATTRS[0].as_ref();
            sys::lsetxattr(work.raw(), &tmp, mark, b"", 0).op("copy-up metacopy mark")?;
        }
        copy_metadata(src.raw(), &src.name, work.raw(), &tmp, st, self.opts.squash)?;
        self.carry_fileattr(src, kind, work.raw(), &tmp, data.as_ref())?;
        if let Some(f) = &data
            && !self.opts.volatile
        {
            sys::fsync(f.as_raw_fd(), false).op("copy-up fsync")?;
        }
        let key = match linked.then(|| self.add_to_index(work.raw(), &tmp, src, st, ino)) {
            // A copy-up of another name of the file got there first: share its copy.
            Some(Err(e)) if e.errno == libc::EEXIST => {
                let (index, key) = self.indexed(ino).ok_or(e)?;
                return self.join_index(&index, &key, up_parent, &src.name);
            }
            k => k.transpose()?,
        };
        // The number is recorded before the copy is published, by the copy's own inode: a
        // rename over the name right after publishing frees that inode and must find the
        // record to drop it (looked up by name afterwards, the record could land on the
        // file renamed in instead).
        let made = sys::fstatat(work.raw(), &tmp).op("copy-up stat copy")?;
        if keeps_number {
            self.origins
                .insert((made.st_dev, made.st_ino), (ino, metacopy));
        }
        let published = sys::renameat2(
            work.raw(),
            &tmp,
            up_parent,
            &src.name,
            sys::RENAME_NOREPLACE,
        )
        .op("copy-up publish");
        if published.is_err() {
            self.forget_origin(&made);
            if let Some(key) = &key {
                self.drop_from_index(key);
            }
        }
        published?;
        guard.armed = false;
        Ok(())
    }

    /// Give a metadata-only upper file its data: a whole copy (data from the lower file,
    /// metadata from the upper one) built in the work dir replaces it in one rename. Or, for
    /// a caller about to truncate it to nothing, just empty it and drop the record.
    fn finish_metacopy(&self, node: &Arc<Node>, upper: Loc, data: Loc, want: Data) -> Result<Loc> {
        let path = node.path();
        let wrap = |e: Error| e.at(&path).in_layer(0);
        let meta = sys::fstatat(upper.raw(), &upper.name)
            .op("stat")
            .map_err(wrap)?;
        if want == Data::Discarded {
            // Emptied first: until the record goes, reads stop at the (now zero) size.
            let f = sys::open_file(upper.raw(), &upper.name, libc::O_WRONLY)
                .op("truncate")
                .map_err(wrap)?;
            sys::ftruncate(f.as_raw_fd(), 0)
                .op("truncate")
                .map_err(wrap)?;
        } else {
            let stack = self.stack();
            let work = stack.work()?;
            let tmp = work.temp_name();
            let mut guard = Unpublished {
                dir: work.raw(),
                name: &tmp,
                is_dir: false,
                armed: true,
            };
            let from = self
                .open_branch(data.raw(), &data.name, libc::O_RDONLY)
                .op("copy-up open")
                .map_err(|e| e.at(&path).in_layer(data.layer))?;
            let to = new_work_file(work.raw(), &tmp)?;
            copy_data(&from, &to, meta.st_size as u64)
                .op("copy-up data")
                .map_err(wrap)?;
            copy_metadata(
                upper.raw(),
                &upper.name,
                work.raw(),
                &tmp,
                &meta,
                self.opts.squash,
            )
            .map_err(wrap)?;
            self.carry_fileattr(&upper, libc::S_IFREG, work.raw(), &tmp, Some(&to))
                .map_err(wrap)?;
            if !self.opts.volatile {
                sys::fsync(to.as_raw_fd(), false).op("copy-up fsync")?;
            }
            let pst = sys::fstat_path(upper.raw()).op("copy-up stat parent")?;
            let record = whiteout::encode_origin(node.ino, false);
            let _ = sys::lsetxattr(
                work.raw(),
                &tmp,
                whiteout::ORIGIN_XATTR.as_ref(),
                &record,
                0,
            );
            // Recorded by the copy's own inode before it is published (as in `copy_entry`),
            // and dropped for the inode the publish frees, which the filesystem may give
            // to the next new file (until then the xattr record answers for it).
            let made = sys::fstat(to.as_raw_fd()).op("copy-up stat copy")?;
            self.origins
                .insert((made.st_dev, made.st_ino), (node.ino, false));
            let before = self.origins.remove(&(meta.st_dev, meta.st_ino));
            let published = sys::renameat2(work.raw(), &tmp, upper.raw(), &upper.name, 0)
                .op("copy-up publish")
                .map_err(wrap);
            if published.is_err() {
                self.forget_origin(&made);
                if let Some((key, record)) = before {
                    self.origins.insert(key, record);
                }
            }
            published?;
            guard.armed = false;
            let _ = sys::utimensat(
                upper.raw(),
                ".".as_ref(),
                Some(Some((pst.st_atime, pst.st_atime_nsec))),
                Some(Some((pst.st_mtime, pst.st_mtime_nsec))),
            );
            self.events.emit(Event::CopyUp {
                path: path.clone(),
                from: data.layer,
                bytes: meta.st_size as u64,
                took: std::time::Duration::ZERO,
            });
        }
        let record = whiteout::encode_origin(node.ino, false);
        sys::lsetxattr(
            upper.raw(),
            &upper.name,
            whiteout::ORIGIN_XATTR.as_ref(),
            &record,
            0,
        )
        .op("copy-up record")
        .map_err(wrap)?;
        for mark in whiteout::METACOPY_XATTRS {
            let _ = sys::lremovexattr(upper.raw(), &upper.name, mark.as_ref());
        }
        if want == Data::Discarded {
            // The same inode, no longer metadata only.
            self.origins
                .insert((meta.st_dev, meta.st_ino), (node.ino, false));
        }
        let st = sys::fstatat(upper.raw(), &upper.name)
            .op("stat")
            .map_err(wrap)?;
        let copy = sys::openat(upper.raw(), &upper.name, libc::O_PATH | libc::O_NOFOLLOW, 0).ok();
        let mut s = node.state_mut();
        s.changed = self.note_change();
        s.set_data(None);
        node.set_real(&mut s, (st.st_dev, st.st_ino));
        s.set_kept(copy.map(|fd| Kept {
            fd: Arc::new(fd),
            layer: 0,
        }));
        log::debug!("copy-up {path}: data from layer {}", data.layer);
        Ok(upper)
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

/// A new, private file in the work dir for a copy under construction.
fn new_work_file(work: RawFd, name: &OsStr) -> Result<File> {
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
    let fd = sys::openat(work, name, flags, 0o600).op("copy-up create")?;
    Ok(File::from(fd))
}

/// Give the copy `dname` in `ddir` the metadata of its source (`sname` in `sdir`, stat
/// `st`): owner, xattrs, mode, times, in the one order that keeps them all. A chown clears
/// set-id bits and security.capability, so it goes first. The xattrs follow while the copy
/// still has the work directory's private mode: an unprivileged daemon needs write
/// permission to set user.* ones, which a read-only source mode would take away. The mode
/// after them puts back set-id bits a system.posix_acl_access may have cleared (and leaves
/// the ACL as the source had it, its mask being the source mode's group bits). Times last.
/// `squash`: owners are shown squashed anyway, so a chown that fails is no failure (as
/// fuse-overlayfs' squash_to_* options).
fn copy_metadata(
    sdir: RawFd,
    sname: &OsStr,
    ddir: RawFd,
    dname: &OsStr,
    st: &Stat,
    squash: bool,
) -> Result<()> {
    match sys::fchownat(ddir, dname, Some(st.st_uid), Some(st.st_gid)) {
        Ok(()) => {}
        Err(_) if squash => {}
        // An unprivileged daemon keeps its own ids.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && sys::geteuid() != 0 => {}
        Err(e) => return Err(Error::io(e, "copy-up chown")),
    }
    copy_xattrs(sdir, sname, ddir, dname)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        sys::fchmodat(ddir, dname, st.st_mode & 0o7777).op("copy-up chmod")?;
    }
    sys::utimensat(
        ddir,
        dname,
        Some(Some((st.st_atime, st.st_atime_nsec))),
        Some(Some((st.st_mtime, st.st_mtime_nsec))),
    )
    .op("copy-up utimes")
}

/// Copy every xattr but the layering's own.
fn copy_xattrs(sdir: RawFd, sname: &OsStr, ddir: RawFd, dname: &OsStr) -> Result<()> {
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

/// A new empty directory `name` in `ddir` with the owner, xattrs (but the layering's own),
/// mode and times of the directory `src` (an fd): a fresh upper root, or a parent made for
/// a file a snapshot moves up.
pub(crate) fn copy_dir_shell(src: RawFd, ddir: RawFd, name: &OsStr) -> Result<()> {
    let st = sys::fstat_path(src).op("stat dir")?;
    sys::mkdirat(ddir, name, 0o700).op("mkdir")?;
    copy_metadata(src, ".".as_ref(), ddir, name, &st, false)
}

/// Copy the layering's own xattrs (a snapshot's copy of a file keeps its origin record);
/// those the filesystem or our privilege refuses are skipped.
pub(crate) fn copy_private_xattrs(sdir: RawFd, sname: &OsStr, ddir: RawFd, dname: &OsStr) {
    for n in sys::llistxattr(sdir, sname).unwrap_or_default() {
        let attr = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&n);
        if !whiteout::is_private_xattr(attr) {
            continue;
        }
        if let Ok(Some(v)) = sys::lgetxattr(sdir, sname, attr) {
            let _ = sys::lsetxattr(ddir, dname, attr, &v, 0);
        }
    }
}

/// A copy of the regular file `sname` in `sdir` (stat `st`) as `dname` in `ddir`: data,
/// every xattr, owner, mode, times and the inode flags a copy-up carries.
pub(crate) fn copy_file_whole(
    sdir: RawFd,
    sname: &OsStr,
    st: &Stat,
    ddir: RawFd,
    dname: &OsStr,
    sync: bool,
) -> Result<()> {
    let from = sys::open_file(sdir, sname, libc::O_RDONLY).op("open")?;
    let to = new_work_file(ddir, dname)?;
    copy_data(&from, &to, st.st_size as u64).op("copy data")?;
    copy_metadata(sdir, sname, ddir, dname, st, false)?;
    copy_private_xattrs(sdir, sname, ddir, dname);
    super::fileattr::carry_inode_flags(&from, &to);
    if sync {
        sys::fsync(to.as_raw_fd(), false).op("fsync")?;
    }
    Ok(())
}
