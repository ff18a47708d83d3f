//! The namespace operations, what each one means across layers: create, mkdir, mknod,
//! symlink and tmpfile, link, unlink and rmdir (overlayfs' dir.c; rename is rename.rs).
//!
//! Every change lands in the upper layer. Deleting a name that a lower layer still shows
//! leaves a whiteout; creating over a whiteout removes it (a directory made there is opaque,
//! so the old lower contents stay hidden). Where two on-disk steps are needed, the order
//! is chosen so that a crash between them leaves the old state or the new one: an entry
//! beside a `.wh.` of its own name in the same layer wins over it.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::WhiteoutFormat;
use super::events::Event;
use super::fileattr::Change;
use super::idmap::StatOverride;
use super::index;
use super::layer::{ACL_DEFAULT, remove_tree_contents};
use super::node::{Kept, LayerDir, Node, NodeState, Rare};
use super::resolve::Found;
use super::whiteout;
use super::{Options, Union};
use crate::error::{Context, Error, Result};
use crate::sys::{self, Stat};

/// What to create.
#[derive(Debug, Clone, Copy)]
pub enum New<'a> {
    File { mode: u32, flags: i32 },
    Dir { mode: u32 },
    Special { mode: u32, rdev: u64 },
    Symlink { target: &'a OsStr },
}

/// Who asks: new entries belong to the caller, not to the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
}

fn is_enoent(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

pub(super) fn exists(dir: RawFd, name: &OsStr) -> bool {
    sys::fstatat(dir, name).is_ok()
}

pub(super) fn child_path(parent: &Node, name: &OsStr) -> String {
    let p = parent.path();
    let sep = if p.ends_with('/') { "" } else { "/" };
    format!("{p}{sep}{}", name.to_string_lossy())
}

impl Union {
    fn check_new_name(&self, op: &'static str, parent: &Node, name: &OsStr) -> Result<()> {
        self.check_writable(op)?;
        if whiteout::is_reserved(name) {
            return Err(Error::new(libc::EPERM, op).at(child_path(parent, name)));
        }
        Ok(())
    }

    /// Does a layer below the upper still show `name` in `parent`?
    pub fn lower_shows(&self, parent: &Arc<Node>, name: &OsStr) -> Result<bool> {
        let wh = whiteout::whiteout_name(name);
        for d in self.dirs_of(parent)?.iter().filter(|d| d.layer > 0) {
            match sys::fstatat(d.raw(), name) {
                Ok(st) => return Ok(!self.is_whiteout(d, name, &st)),
                Err(e) if is_enoent(&e) => {
                    if exists(d.raw(), &wh) {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(Error::io(e, "lookup").in_layer(d.layer)),
            }
        }
        Ok(false)
    }

    /// Mark an upper directory opaque: nothing of the lower layers shows through it.
    pub(super) fn mark_opaque(&self, dir: RawFd, name: &OsStr, path: &str) -> Result<()> {
        self.events.emit(Event::Opaque { path: path.into() });
        put_opaque(dir, name, self.opts.whiteout)
    }

    /// Fail early, before anything changes, where a `.wh.` whiteout of `name` could not be
    /// written (NAME_MAX).
    pub(super) fn check_whiteout_fits(&self, name: &OsStr) -> Result<()> {
        let too_long = name.len() + whiteout::WH_PREFIX.len() > 255;
        if self.opts.whiteout == WhiteoutFormat::WhFiles && too_long {
            return Err(Error::new(libc::ENAMETOOLONG, "whiteout").at(name.to_string_lossy()));
        }
        Ok(())
    }

    /// Put a whiteout for `name` in the upper dir `up`, replacing the upper entry there if
    /// `existing` says there is one (`Some(is_dir)`).
    pub(super) fn put_whiteout(
        &self,
        up: RawFd,
        name: &OsStr,
        existing: Option<bool>,
        path: &str,
    ) -> Result<()> {
        self.events.emit(Event::Whiteout { path: path.into() });
        match self.opts.whiteout {
            WhiteoutFormat::WhFiles => {
                // Whiteout first: until the entry is gone it still wins over the whiteout.
                put_marker(up, &whiteout::whiteout_name(name)).op("create whiteout")?;
                if let Some(is_dir) = existing {
                    remove_entry(up, name, is_dir)?;
                }
                Ok(())
            }
            WhiteoutFormat::Overlay => {
                let stack = self.stack();
                let work = stack.work()?;
                let tmp = work.temp_name();
                sys::mknodat(work.raw(), &tmp, libc::S_IFCHR, 0).op("create whiteout")?;
                let flags = if existing.is_some() {
                    sys::RENAME_EXCHANGE
                } else {
                    sys::RENAME_NOREPLACE
                };
                sys::renameat2(work.raw(), &tmp, up, name, flags).op("publish whiteout")?;
                if let Some(is_dir) = existing {
                    remove_entry(work.raw(), &tmp, is_dir)?;
                }
                Ok(())
            }
        }
    }

    /// Create a new entry in the merged directory `parent`.
    pub fn create(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        what: New<'_>,
        caller: Caller,
    ) -> Result<(Arc<Node>, Stat, Option<File>)> {
        let path = child_path(parent, name);
        self.check_new_name("create", parent, name)?;
        if let New::Special { mode, rdev: 0 } = what
            && mode & libc::S_IFMT == libc::S_IFCHR
        {
            // A 0/0 device is a whiteout: it could never be seen again (overlayfs: EPERM).
            return Err(Error::new(libc::EPERM, "mknod whiteout device").at(path));
        }
        if self.probe(parent, name)?.is_some() {
            return Err(Error::new(libc::EEXIST, "create").at(path));
        }
        self.check_protection(parent, Change::AddEntry, "create")?;
        let up = self.upper_dir(parent)?;
        let up = up.as_raw_fd();
        let wh = whiteout::whiteout_name(name);
        let has_wh_file = exists(up, &wh);
        // An overlay-format whiteout under the very name: replace it in one rename.
        let exact_whiteout = sys::fstatat(up, name).is_ok();
        let opaque = matches!(what, New::Dir { .. }) && (has_wh_file || exact_whiteout);

        let (caller, inherit_gid, gid, default_acl) = self.made_in(up, caller)?;
        let (file, made) = if opaque || exact_whiteout {
            let stack = self.stack();
            let work = stack.work()?;
            let stage = work.staging(default_acl.as_deref())?;
            let sd = stage.raw();
            let tmp = work.temp_name();
            let (file, _) = make(sd, &tmp, what, caller, inherit_gid, gid, &self.opts)
                .map_err(|e| e.at(&path))?;
            if opaque {
                self.mark_opaque(sd, &tmp, &path)?;
            }
            if exact_whiteout {
                sys::renameat2(sd, &tmp, up, name, sys::RENAME_EXCHANGE)
                    .op("create over whiteout")?;
                remove_entry(sd, &tmp, false)?;
            } else {
                sys::renameat2(sd, &tmp, up, name, sys::RENAME_NOREPLACE).op("create")?;
            }
            // Moved (and maybe marked) since: stat it again below.
            (file, None)
        } else {
            make(up, name, what, caller, inherit_gid, gid, &self.opts).map_err(|e| e.at(&path))?
        };
        if has_wh_file {
            sys::unlinkat(up, &wh, false).op("remove whiteout")?;
        }
        // What a probe would find, without probing: the new upper entry, alone (a name that
        // showed nowhere before merges with nothing below). Stat again only if `make`
        // changed it after its own stat.
        let st = match made {
            Some(st) => st,
            None => sys::fstatat(up, name)
                .op("stat new entry")
                .map_err(|e| e.at(&path))?,
        };
        let dirs = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let fd = sys::open_dir_path(up, name).op("open new dir")?;
            vec![LayerDir {
                layer: 0,
                fd: Arc::new(fd),
                xwhiteouts: false,
                path: Arc::new(Vec::new()),
            }]
        } else {
            Vec::new()
        };
        let found = Found {
            layer: 0,
            st,
            dirs,
            ino: self.ino_of(&st),
            data: None,
            epoch: self.changes(),
        };
        let real = (st.st_dev, st.st_ino);
        let (node, st) = self.bind(parent, name, found);
        // A new entry is neither immutable nor append-only (no filesystem passes those on).
        node.known_unprotected(real);
        log::debug!("create {path}");
        Ok((node, st, file))
    }

    /// An unnamed file in the merged directory `parent` (`O_TMPFILE`), made in its upper
    /// directory. Its node has no name (it lives on its kept handle) until `link` gives it
    /// one; the kernel refuses that for one opened with `O_EXCL`.
    pub fn tmpfile(
        &self,
        parent: &Arc<Node>,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(Arc<Node>, Stat, File)> {
        let path = parent.path();
        self.check_writable("tmpfile")?;
        if self.opts.owner_xattr.is_some() {
            // Its owner would go in an xattr, set by name; it has none. (The kernel answers
            // EOPNOTSUPP, and callers fall back to a named file.)
            return Err(Error::new(libc::EOPNOTSUPP, "tmpfile").at(path));
        }
        self.check_protection(parent, Change::AddEntry, "tmpfile")?;
        let up = self.upper_dir(parent)?;
        let up = up.as_raw_fd();
        let (caller, _, gid, _) = self.made_in(up, caller)?;
        let perm = mode & 0o7777 & !caller.umask;
        let keep = flags & !(libc::O_TMPFILE | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW);
        let file = File::from(
            sys::openat(up, ".".as_ref(), keep | libc::O_TMPFILE, perm)
                .op("tmpfile")
                .map_err(|e| e.at(&path).in_layer(0))?,
        );
        let fd = file.as_raw_fd();
        let st = sys::fstat(fd).op("stat tmpfile")?;
        if (st.st_uid, st.st_gid) != (caller.uid, gid) {
            match sys::fchown(fd, Some(caller.uid), Some(gid)) {
                Ok(()) => {}
                Err(e) if self.opts.squash => log::debug!("chown tmpfile failed, squashed: {e}"),
                Err(e) => return Err(Error::io(e, "chown tmpfile").at(&path)),
            }
            // chown cleared them; put them back.
            let set_id = perm & (libc::S_ISUID | libc::S_ISGID);
            if set_id != 0 {
                sys::fchmod(fd, (st.st_mode & 0o777) | set_id).op("chmod tmpfile")?;
            }
        }
        let mut st = sys::fstat(fd).op("stat tmpfile")?;
        // The node's way to its file while it has no name (see `Node::kept`).
        let handle = sys::openat(
            libc::AT_FDCWD,
            sys::proc_path(fd, "".as_ref()).as_os_str(),
            libc::O_PATH,
            0,
        )
        .op("tmpfile handle")?;
        let ino = self.ino_of(&st);
        let real = (st.st_dev, st.st_ino);
        let (node, _) = self.nodes.get_or_insert(ino, libc::S_IFREG, real, || {
            Node::new(
                ino,
                libc::S_IFREG,
                NodeState {
                    parent: Some(parent.clone()),
                    name: OsStr::new("").into(),
                    layer: 0,
                    dirs: Arc::new(Vec::new()),
                    generation: self.generation(),
                    changed: 0,
                    real,
                    rare: Rare::new(
                        Some(Kept {
                            fd: Arc::new(handle),
                            layer: 0,
                        }),
                        None,
                    )
                    .unlinked(true),
                },
            )
        });
        self.present(&node, &mut st);
        log::debug!("tmpfile in {path}");
        Ok((node, st, file))
    }

    /// What a new entry in the upper directory `up` takes from it: the caller with the
    /// umask that applies, whether the group is inherited (a set-gid parent), that group,
    /// and the parent's default ACL. A default ACL decides the entry's permissions instead
    /// of the umask (POSIX.1e); the filesystem applies it where the entry is made.
    fn made_in(&self, up: RawFd, caller: Caller) -> Result<(Caller, bool, u32, Option<Vec<u8>>)> {
        let pst = sys::fstat_path(up).op("stat parent")?;
        // The parent as shown (its owner and mode may be kept in an xattr).
        let shown = self.shown_owner(up, ".".as_ref(), &pst);
        let inherit_gid = shown.mode & libc::S_ISGID != 0;
        let gid = if inherit_gid { shown.gid } else { caller.gid };
        let default_acl = sys::lgetxattr(up, ".".as_ref(), ACL_DEFAULT.as_ref()).unwrap_or(None);
        let caller = match default_acl {
            Some(_) => Caller { umask: 0, ..caller },
            None => caller,
        };
        Ok((caller, inherit_gid, gid, default_acl))
    }

    /// Remove a non-directory.
    pub fn unlink(&self, parent: &Arc<Node>, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    /// Remove an empty directory.
    pub fn rmdir(&self, parent: &Arc<Node>, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: &Arc<Node>, name: &OsStr, dir: bool) -> Result<()> {
        let op = if dir { "rmdir" } else { "unlink" };
        let path = child_path(parent, name);
        self.check_writable(op)?;
        let found = self.probe(parent, name)?;
        if let Some(f) = &found {
            self.check_protection(parent, Change::RemoveEntry, op)?;
            self.check_entry_protection(parent, name, f, Change::Remove, op)?;
        }
        let found = if dir {
            found
        } else {
            self.index_before_removal(parent, name, found, None)?
        };
        // Opens of the file by its name wait until it is gone (see `Node::place`); taken
        // before the copy-up lock, as an open takes them.
        let replaced = self.replaced_node(found.as_ref());
        let _place = replaced.as_ref().map(|n| n.place.write());
        let held = self.copy_up_may_race(&found);
        let _serial = held.as_ref().map(|n| n.copy_up_lock.lock());
        let found = self
            .still_found(parent, name, found, held.as_ref())?
            .ok_or_else(|| Error::new(libc::ENOENT, op).at(&path))?;
        let is_dir = found.st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        match (dir, is_dir) {
            (true, false) => return Err(Error::new(libc::ENOTDIR, op).at(&path)),
            (false, true) => return Err(Error::new(libc::EISDIR, op).at(&path)),
            _ => {}
        }
        let in_upper = found.layer == 0;
        let found_layer = found.layer;
        let live = self.live_node(&found);
        if in_upper && (is_dir || found.st.st_nlink <= 1) {
            self.forget_origin(&found.st);
        }
        if is_dir {
            let node = self.node_for(parent, name, found);
            if !self.is_empty_dir(&node)? {
                return Err(Error::new(libc::ENOTEMPTY, op).at(&path));
            }
        }
        // Found in a lower layer, the name shows from there; found in the upper, look below.
        let lower = found_layer > 0 || self.lower_shows(parent, name)?;
        self.keep_handle(live.as_ref(), parent, name, found_layer)?;
        let up = self.upper_dir(parent)?;
        let existing = in_upper.then_some(is_dir);
        // The name leaves the node before the entry leaves the disk: the filesystem may give
        // the freed inode number to a file created meanwhile, which must not find this node
        // still naming it.
        if let Some(node) = &live {
            node.drop_name(parent, name);
        }
        if lower {
            self.put_whiteout(up.as_raw_fd(), name, existing, &path)?;
        } else if let Some(is_dir) = existing {
            remove_entry(up.as_raw_fd(), name, is_dir)?;
        }
        log::debug!("{op} {path}{}", if lower { " (whiteout)" } else { "" });
        Ok(())
    }

    /// Before a name of a lower file with several names goes (removed, or renamed over):
    /// copy the file up into the index, its known names joining the copy, as overlayfs
    /// copies such a file up before it unlinks it. The count of its names still waiting in
    /// the lower (`index::PENDING_XATTR`) then stays true, and so does its link count.
    /// `found` is what a probe of the name found, `unless` the inode number of a file whose
    /// own names are not to count; returns what the name holds now.
    pub(super) fn index_before_removal(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        found: Option<Found>,
        unless: Option<u64>,
    ) -> Result<Option<Found>> {
        match found {
            Some(f) if index::is_linked_lower(f.layer, &f.st) && Some(f.ino) != unless => {
                let node = self.node_for(parent, name, f);
                self.copy_up(&node)?;
                self.probe(parent, name)
            }
            found => Ok(found),
        }
    }

    /// The live node of a file a removal or a rename is about to replace: opens of it by
    /// name must not find the name after the node has let go of it, nor whatever file comes
    /// there next. (Directories are not opened by name.)
    pub(super) fn replaced_node(&self, found: Option<&Found>) -> Option<Arc<Node>> {
        self.live_node(found?).filter(|n| !n.is_dir())
    }

    /// The live node of an entry still to be copied up (a lower one, or an upper one holding
    /// metadata only) that a removal or a rename over it is about to replace. Its copy-up (an
    /// open for writing, which the kernel does not serialize with changes to names) could
    /// publish between the probe and the change: the removed file would come back, or its
    /// copy be freed with its inode number still recorded as the entry's, to be shown by the
    /// next file given that number. The caller holds the node's copy-up lock and probes
    /// again.
    pub(super) fn copy_up_may_race(&self, found: &Option<Found>) -> Option<Arc<Node>> {
        let f = found.as_ref().filter(|f| f.layer > 0 || f.data.is_some())?;
        self.replaced_node(Some(f))
    }

    /// What `name` in `parent` holds once the copy-up lock of `held` (see
    /// `copy_up_may_race`) is taken: `found` still, unless a copy-up finished since it was
    /// probed (the count moved: the held node's own copy-up, if one ran, finished before
    /// the lock was ours), then probed again.
    pub(super) fn still_found(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        found: Option<Found>,
        held: Option<&Arc<Node>>,
    ) -> Result<Option<Found>> {
        match (&found, held) {
            (Some(f), Some(_)) if self.changes() != f.epoch => self.probe(parent, name),
            _ => Ok(found),
        }
    }

    /// Before an entry's name goes: if the kernel still holds its node, keep an O_PATH
    /// handle, so the node stays reachable without a name (open files, a lookup that raced
    /// the removal) and, for an upper entry, its inode stays allocated: the filesystem
    /// cannot give its number to a new file while the kernel may still show it for this
    /// one. The handle goes when the kernel forgets the node. `layer` is where the entry
    /// was found below `parent`.
    pub(super) fn keep_handle(
        &self,
        node: Option<&Arc<Node>>,
        parent: &Arc<Node>,
        name: &OsStr,
        layer: usize,
    ) -> Result<()> {
        // Directories are opened without telling us (no OPENDIR): any may be open.
        let Some(node) = node.filter(|n| layer == 0 || n.is_open() || n.is_dir()) else {
            return Ok(());
        };
        let dirs = self.dirs_of(parent)?;
        let Some(dir) = dirs.iter().find(|d| d.layer == layer) else {
            return Ok(());
        };
        let handle = sys::openat(dir.raw(), name, libc::O_PATH | libc::O_NOFOLLOW, 0);
        if let Ok(fd) = handle {
            node.state_mut().set_kept(Some(Kept {
                fd: Arc::new(fd),
                layer,
            }));
        }
        Ok(())
    }

    /// A moved entry keeps its inode number: in memory for this mount, and in the origin
    /// xattr for the next one.
    pub(super) fn keep_origin(&self, dir: RawFd, name: &OsStr, ino: u64) {
        let Ok(st) = sys::fstatat(dir, name) else {
            return;
        };
        if self.ino_of(&st) != ino {
            let _ = sys::lsetxattr(
                dir,
                name,
                whiteout::ORIGIN_XATTR.as_ref(),
                &ino.to_le_bytes(),
                0,
            );
            self.record_origin(dir, name, ino, false);
        }
    }

    /// A new name for an existing file.
    pub fn link(&self, node: &Arc<Node>, newparent: &Arc<Node>, newname: &OsStr) -> Result<Stat> {
        let path = child_path(newparent, newname);
        self.check_new_name("link", newparent, newname)?;
        if node.is_dir() {
            return Err(Error::new(libc::EPERM, "link").at(path));
        }
        if self.probe(newparent, newname)?.is_some() {
            return Err(Error::new(libc::EEXIST, "link").at(path));
        }
        self.check_protection(node, Change::Remove, "link")?;
        self.check_protection(newparent, Change::AddEntry, "link")?;
        let loc = self.copy_up(node)?;
        let up = self.upper_dir(newparent)?;
        if exists(up.as_raw_fd(), newname) {
            // An overlay-format whiteout holds the name: link beside it, then replace it.
            let stack = self.stack();
            let work = stack.work()?;
            let tmp = work.temp_name();
            sys::linkat(loc.raw(), &loc.name, work.raw(), &tmp)
                .op("link")
                .map_err(|e| e.at(&path))?;
            sys::renameat2(work.raw(), &tmp, up.as_raw_fd(), newname, 0)
                .op("link")
                .map_err(|e| e.at(&path))?;
        } else {
            sys::linkat(loc.raw(), &loc.name, up.as_raw_fd(), newname)
                .op("link")
                .map_err(|e| e.at(&path))?;
        }
        clear_whiteout(up.as_raw_fd(), newname)?;
        node.add_name(newparent, newname);
        self.nodes.remember(node);
        self.getattr(node)
    }
}

/// Mark the directory `name` in `dir` opaque, in `format`.
pub(super) fn put_opaque(dir: RawFd, name: &OsStr, format: WhiteoutFormat) -> Result<()> {
    match format {
        WhiteoutFormat::WhFiles => {
            let d = sys::openat(
                dir,
                name,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .op("open dir")?;
            put_marker(d.as_raw_fd(), whiteout::OPAQUE_MARKER.as_ref()).op("create opaque marker")
        }
        WhiteoutFormat::Overlay => {
            sys::lsetxattr(dir, name, whiteout::OPAQUE_XATTRS[0].as_ref(), b"y", 0)
                .op("set opaque xattr")
        }
    }
}

/// Make sure a marker file (a `.wh.` whiteout, the opaque marker) exists: only its presence
/// counts. Made without opening anything, so a symlink put there by hand is never followed
/// (it is replaced).
fn put_marker(dir: RawFd, name: &OsStr) -> std::io::Result<()> {
    for _ in 0..2 {
        match sys::mknodat(dir, name, libc::S_IFREG | 0o600, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if sys::fstatat(dir, name)?.st_mode & libc::S_IFMT != libc::S_IFLNK {
                    return Ok(());
                }
                sys::unlinkat(dir, name, false)?;
            }
            r => return r,
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::EEXIST))
}

/// Remove the `.wh.` whiteout of `name` in `dir` if there is one. A name too long to have
/// one has none.
pub(super) fn clear_whiteout(dir: RawFd, name: &OsStr) -> Result<()> {
    match sys::unlinkat(dir, &whiteout::whiteout_name(name), false) {
        Err(e) if !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENAMETOOLONG)) => {
            Err(Error::io(e, "remove whiteout"))
        }
        _ => Ok(()),
    }
}

pub(super) fn is_dir_found(f: &Found) -> bool {
    f.st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Remove an upper entry; a directory may still hold whiteouts and markers.
fn remove_entry(dir: RawFd, name: &OsStr, is_dir: bool) -> Result<()> {
    if is_dir {
        let fd = sys::openat(
            dir,
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .op("open dir")?;
        remove_tree_contents(fd.as_raw_fd())?;
    }
    sys::unlinkat(dir, name, is_dir).op("remove")
}

/// Make the object itself, owned by the caller. Returns the open file for `New::File`, and
/// the object's stat where nothing changed it after that stat was taken.
/// With `xattr_permissions=` a file or directory keeps the caller's ids and the mode in its
/// owner xattr; the object itself stays the daemon's, with rwx for it and r-x for others
/// (fuse-overlayfs' `mode | 0755`, without set-id bits: those live in the xattr only).
fn make(
    dir: RawFd,
    name: &OsStr,
    what: New<'_>,
    caller: Caller,
    inherit_gid: bool,
    gid: u32,
    opts: &Options,
) -> Result<(Option<File>, Option<Stat>)> {
    let perm = |mode: u32| mode & 0o7777 & !caller.umask;
    let in_xattr = opts
        .owner_xattr
        .filter(|_| matches!(what, New::File { .. } | New::Dir { .. }));
    let real = |m: u32| match in_xattr {
        Some(_) => (m & 0o777) | 0o755,
        None => m,
    };
    let set_id_bits = match what {
        New::File { mode, .. } | New::Special { mode, .. } => {
            perm(mode) & (libc::S_ISUID | libc::S_ISGID)
        }
        _ => 0,
    };
    let mut shown = 0;
    let file = match what {
        New::File { mode, flags } => {
            shown = libc::S_IFREG | perm(mode);
            let flags = (flags & !libc::O_NOFOLLOW) | libc::O_CREAT | libc::O_EXCL;
            Some(File::from(
                sys::openat(dir, name, flags, real(perm(mode))).op("create")?,
            ))
        }
        New::Dir { mode } => {
            let m = perm(mode) | if inherit_gid { libc::S_ISGID } else { 0 };
            shown = libc::S_IFDIR | m;
            sys::mkdirat(dir, name, real(m)).op("mkdir")?;
            None
        }
        New::Special { mode, rdev } => {
            sys::mknodat(dir, name, (mode & libc::S_IFMT) | perm(mode), rdev).op("mknod")?;
            None
        }
        New::Symlink { target } => {
            sys::symlinkat(target, dir, name).op("symlink")?;
            None
        }
    };
    if let Some(x) = in_xattr {
        let o = StatOverride {
            uid: caller.uid,
            gid,
            mode: shown,
        };
        sys::lsetxattr(dir, name, x.as_ref(), &o.format(), 0).op("write owner xattr")?;
        return Ok((file, None));
    }
    // As fuse-overlayfs: chown only where the owner is not already the caller's (an
    // unprivileged daemon creating for itself needs none), and a chown that fails fails
    // the creation (EPERM unprivileged, EINVAL for an ID its user namespace does not map)
    // unless squash_to_* makes the stored owner irrelevant.
    let st = sys::fstatat(dir, name).op("stat new entry")?;
    if (st.st_uid, st.st_gid) == (caller.uid, gid) {
        return Ok((file, Some(st)));
    }
    match sys::fchownat(dir, name, Some(caller.uid), Some(gid)) {
        Ok(()) => {}
        Err(e) if opts.squash => log::debug!("chown new entry failed, squashed: {e}"),
        Err(e) => return Err(Error::io(e, "chown new entry")),
    }
    if set_id_bits != 0 {
        // chown cleared them; put them back on the permissions the entry was made with
        // (which a default ACL may have narrowed).
        sys::fchmodat(dir, name, (st.st_mode & 0o777) | set_id_bits).op("chmod new entry")?;
    }
    Ok((file, None))
}
