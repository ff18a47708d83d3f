//! Operations that change the merged tree: what each one means across layers.
//!
//! Every change lands in the upper layer. Deleting a name that a lower layer still shows
//! leaves a whiteout; creating over a whiteout removes it (a directory made there is opaque,
//! so the old lower contents stay hidden). Where two on-disk steps are needed, the order
//! is chosen so that a crash between them leaves the old state or the new one: an entry
//! beside a `.wh.` of its own name in the same layer wins over it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::WhiteoutFormat;
use super::events::Event;
use super::idmap::{self, StatOverride};
use super::index;
use super::layer::{ACL_DEFAULT, remove_tree_contents};
use super::node::Loc;
use super::node::{Kept, LayerDir, Node, NodeState};
use super::resolve::Found;
use super::whiteout;
use super::{Options, ROOT_INO, Union};
use crate::error::{Context, Error, Result};
use crate::sys::{self, Stat, TimeSpec};

/// How a rename's source got into the upper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// Nothing to bring along (a non-directory, or an upper-only directory).
    Plain,
    /// A directory copied up alone, its lower parts found through a redirect.
    Redirect,
    /// A directory copied up with its whole subtree, made opaque.
    Whole,
}

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

/// Attribute changes of a setattr; `None` leaves a field alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: TimeSpec,
    pub mtime: TimeSpec,
}

fn is_enoent(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

fn exists(dir: RawFd, name: &OsStr) -> bool {
    sys::fstatat(dir, name).is_ok()
}

fn child_path(parent: &Node, name: &OsStr) -> String {
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
    fn mark_opaque(&self, dir: RawFd, name: &OsStr, path: &str) -> Result<()> {
        self.events.emit(Event::Opaque { path: path.into() });
        match self.opts.whiteout {
            WhiteoutFormat::WhFiles => {
                let d = sys::openat(
                    dir,
                    name,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
                .op("open dir")?;
                put_marker(d.as_raw_fd(), whiteout::OPAQUE_MARKER.as_ref())
                    .op("create opaque marker")
            }
            WhiteoutFormat::Overlay => {
                sys::lsetxattr(dir, name, whiteout::OPAQUE_XATTRS[0].as_ref(), b"y", 0)
                    .op("set opaque xattr")
            }
        }
    }

    /// Fail early, before anything changes, where a `.wh.` whiteout of `name` could not be
    /// written (NAME_MAX).
    fn check_whiteout_fits(&self, name: &OsStr) -> Result<()> {
        let too_long = name.len() + whiteout::WH_PREFIX.len() > 255;
        if self.opts.whiteout == WhiteoutFormat::WhFiles && too_long {
            return Err(Error::new(libc::ENAMETOOLONG, "whiteout").at(name.to_string_lossy()));
        }
        Ok(())
    }

    /// Put a whiteout for `name` in the upper dir `up`, replacing the upper entry there if
    /// `existing` says there is one (`Some(is_dir)`).
    fn put_whiteout(
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
                let work = self.stack.work()?;
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
        let up = self.upper_dir(parent)?;
        let up = up.as_raw_fd();
        let wh = whiteout::whiteout_name(name);
        let has_wh_file = exists(up, &wh);
        // An overlay-format whiteout under the very name: replace it in one rename.
        let exact_whiteout = sys::fstatat(up, name).is_ok();
        let opaque = matches!(what, New::Dir { .. }) && (has_wh_file || exact_whiteout);

        let (caller, inherit_gid, gid, default_acl) = self.made_in(up, caller)?;
        let file = if opaque || exact_whiteout {
            let work = self.stack.work()?;
            let stage = work.staging(default_acl.as_deref())?;
            let sd = stage.raw();
            let tmp = work.temp_name();
            let file = make(sd, &tmp, what, caller, inherit_gid, gid, &self.opts)
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
            file
        } else {
            make(up, name, what, caller, inherit_gid, gid, &self.opts).map_err(|e| e.at(&path))?
        };
        if has_wh_file {
            sys::unlinkat(up, &wh, false).op("remove whiteout")?;
        }
        // What a probe would find, without probing: the new upper entry, alone (a name that
        // showed nowhere before merges with nothing below).
        let st = sys::fstatat(up, name)
            .op("stat new entry")
            .map_err(|e| e.at(&path))?;
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
        let (node, st) = self.bind(parent, name, found);
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
                    name: OsString::new(),
                    links: Vec::new(),
                    layer: 0,
                    dirs: Arc::new(Vec::new()),
                    generation: self.generation(),
                    changed: 0,
                    unlinked: true,
                    real,
                    kept: Some(Kept {
                        fd: Arc::new(handle),
                        layer: 0,
                    }),
                    data: None,
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
        if !dir {
            self.index_before_removal(parent, name)?;
        }
        let found = self.probe(parent, name)?;
        // Opens of the file by its name wait until it is gone (see `Node::place`); taken
        // before the copy-up lock, as an open takes them.
        let replaced = self.replaced_node(found.as_ref());
        let _place = replaced.as_ref().map(|n| n.place.write());
        let held = self.copy_up_may_race(&found);
        let _serial = held.as_ref().map(|n| n.copy_up_lock.lock());
        let found = if held.is_some() {
            self.probe(parent, name)?
        } else {
            found
        }
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
    fn index_before_removal(&self, parent: &Arc<Node>, name: &OsStr) -> Result<()> {
        let Some(found) = self.probe(parent, name)? else {
            return Ok(());
        };
        if index::is_linked_lower(found.layer, &found.st) {
            let node = self.node_for(parent, name, found);
            self.copy_up(&node)?;
        }
        Ok(())
    }

    /// The live node of a file a removal or a rename is about to replace: opens of it by
    /// name must not find the name after the node has let go of it, nor whatever file comes
    /// there next. (Directories are not opened by name.)
    fn replaced_node(&self, found: Option<&Found>) -> Option<Arc<Node>> {
        self.live_node(found?).filter(|n| !n.is_dir())
    }

    /// The live node of an entry still to be copied up (a lower one, or an upper one holding
    /// metadata only) that a removal or a rename over it is about to replace. Its copy-up (an
    /// open for writing, which the kernel does not serialize with changes to names) could
    /// publish between the probe and the change: the removed file would come back, or its
    /// copy be freed with its inode number still recorded as the entry's, to be shown by the
    /// next file given that number. The caller holds the node's copy-up lock and probes
    /// again.
    fn copy_up_may_race(&self, found: &Option<Found>) -> Option<Arc<Node>> {
        let f = found.as_ref().filter(|f| f.layer > 0 || f.data.is_some())?;
        self.replaced_node(Some(f))
    }

    /// Rename within the merged tree. A directory that spans lower layers moves as a whole
    /// upper copy marked opaque, so no EXDEV ever reaches the caller.
    pub fn rename(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        newparent: &Arc<Node>,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let path = child_path(parent, name);
        self.check_writable("rename")?;
        if whiteout::is_reserved(newname) {
            return Err(Error::new(libc::EPERM, "rename").at(child_path(newparent, newname)));
        }
        // As overlayfs: RENAME_WHITEOUT would leave a 0/0 device, which the union reads as a
        // whiteout (the name would vanish instead of showing the device).
        if flags & !(sys::RENAME_EXCHANGE | sys::RENAME_NOREPLACE) != 0 {
            return Err(Error::new(libc::EINVAL, "rename").at(&path));
        }
        let exchange = flags & sys::RENAME_EXCHANGE != 0;
        if !exchange {
            self.index_before_removal(newparent, newname)?;
        }
        let src = self
            .probe(parent, name)?
            .ok_or_else(|| Error::new(libc::ENOENT, "rename").at(&path))?;
        let dst = self.probe(newparent, newname)?;
        let replaced = self.replaced_node(dst.as_ref().filter(|_| !exchange));
        let _place = replaced.as_ref().map(|n| n.place.write());
        // (An exchange copies the destination up itself, under the same lock.)
        let held = self.copy_up_may_race(&dst).filter(|_| !exchange);
        let _serial = held.as_ref().map(|n| n.copy_up_lock.lock());
        let dst = if held.is_some() {
            self.probe(newparent, newname)?
        } else {
            dst
        };
        if let Some(d) = &dst {
            if d.ino == src.ino && !exchange {
                return Ok(()); // two names of one file: POSIX says do nothing
            }
            if flags & sys::RENAME_NOREPLACE != 0 {
                return Err(Error::new(libc::EEXIST, "rename").at(&path));
            }
        } else if exchange {
            return Err(Error::new(libc::ENOENT, "rename").at(child_path(newparent, newname)));
        }
        let src_dir = is_dir_found(&src);
        if let (Some(d), false) = (&dst, exchange) {
            match (src_dir, is_dir_found(d)) {
                (true, false) => return Err(Error::new(libc::ENOTDIR, "rename").at(&path)),
                (false, true) => return Err(Error::new(libc::EISDIR, "rename").at(&path)),
                _ => {}
            }
        }
        if let Some(d) = dst.as_ref().filter(|d| d.layer == 0 && !exchange)
            && (is_dir_found(d) || d.st.st_nlink <= 1)
        {
            self.forget_origin(&d.st);
        }
        if let Some(d) = dst.as_ref().filter(|_| !exchange) {
            self.keep_handle(self.live_node(d).as_ref(), newparent, newname, d.layer)?;
        }
        let src_node = self.node_for(parent, name, src);
        let dst_node = dst.map(|d| self.node_for(newparent, newname, d));
        if let (Some(d), false) = (&dst_node, exchange)
            && d.is_dir()
            && !self.is_empty_dir(d)?
        {
            return Err(Error::new(libc::ENOTEMPTY, "rename").at(&path));
        }
        let src_lower = self.lower_shows(parent, name)?;
        if src_lower && !exchange {
            self.check_whiteout_fits(name)?;
        }
        let samedir = Arc::ptr_eq(parent, newparent);
        let src_move = self.copy_up_for_move(&src_node, samedir)?;
        let dst_move = match &dst_node {
            Some(d) if exchange => self.copy_up_for_move(d, samedir)?,
            _ => Move::Plain,
        };
        let up_src = self.upper_dir(parent)?;
        let up_dst = self.upper_dir(newparent)?;
        let (us, ud) = (up_src.as_raw_fd(), up_dst.as_raw_fd());
        let dst_lower = self.lower_shows(newparent, newname)?;
        // A directory arriving where a lower layer has the name must hide it.
        // (A redirected one finds its lower parts by its redirect, not by its name.)
        if src_node.is_dir() && dst_lower && src_move != Move::Redirect {
            self.mark_opaque(us, name, &child_path(newparent, newname))?;
        }
        if exchange {
            let dst_dir = dst_node.as_ref().is_some_and(|d| d.is_dir());
            if dst_dir && src_lower && dst_move != Move::Redirect {
                self.mark_opaque(ud, newname, &path)?;
            }
        } else if let Some(d) = &dst_node {
            // Replacing an (empty) upper directory: clear its markers so rename can.
            if d.is_dir()
                && d.state().layer == 0
                && let Ok(fd) = sys::openat(
                    ud,
                    newname,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
            {
                remove_tree_contents(fd.as_raw_fd())?;
            }
        }
        // An overlay-format whiteout under the new name: a directory cannot replace it, so
        // the two swap places and the old name keeps the whiteout (if it needs one).
        let swap_whiteout =
            !exchange && dst_node.is_none() && src_node.is_dir() && exists(ud, newname);
        // The old name's whiteout goes in before the move, so a crash leaves the entry under
        // one name or the other: `.wh.` files first (the entry wins over its own until it
        // moves), overlay devices by the rename itself (RENAME_WHITEOUT).
        let whiteout_old = !exchange && src_lower && !swap_whiteout;
        let mut kflags = if exchange || swap_whiteout {
            sys::RENAME_EXCHANGE
        } else {
            0
        };
        if whiteout_old {
            match self.opts.whiteout {
                WhiteoutFormat::WhFiles => self.put_whiteout(us, name, None, &path)?,
                WhiteoutFormat::Overlay => {
                    kflags |= sys::RENAME_WHITEOUT;
                    self.events.emit(Event::Whiteout { path: path.clone() });
                }
            }
        }
        if let Some(d) = dst_node.as_ref().filter(|_| !exchange) {
            d.drop_name(newparent, newname);
        }
        // From the move until the nodes follow it, opens of them wait (see `Node::place`).
        let _moving = (!replaced.as_ref().is_some_and(|r| Arc::ptr_eq(r, &src_node)))
            .then(|| src_node.place.write());
        let _moving_back = dst_node
            .as_ref()
            .filter(|_| exchange)
            .map(|d| d.place.write());
        sys::renameat2(us, name, ud, newname, kflags)
            .op("rename")
            .map_err(|e| e.at(&path).in_layer(0))?;
        if swap_whiteout && !src_lower {
            sys::unlinkat(us, name, false).op("remove whiteout")?;
        }
        if !exchange {
            clear_whiteout(ud, newname)?;
        }
        // The moved entries keep their inode numbers across remounts.
        self.keep_origin(ud, newname, src_node.ino);
        if let Some(d) = dst_node.as_ref().filter(|_| exchange) {
            self.keep_origin(us, name, d.ino);
        }

        // Bookkeeping: names, and locations that may now be stale.
        src_node.move_name((parent, name), (newparent, newname));
        if let Some(d) = dst_node.as_ref().filter(|_| exchange) {
            d.move_name((newparent, newname), (parent, name));
        }
        self.refresh(&src_node)?;
        if let Some(d) = dst_node.as_ref().filter(|_| exchange) {
            self.refresh(d)?;
        }
        if src_move == Move::Redirect {
            let to = child_path(newparent, newname);
            self.events.emit(Event::Redirect {
                from: path.clone(),
                to,
            });
        }
        // Nodes below a directory copied up whole may still point into the lower layers.
        if src_move == Move::Whole || dst_move == Move::Whole {
            self.bump_generation();
        }
        log::debug!("rename {path} -> {}", child_path(newparent, newname));
        Ok(())
    }

    /// Bring a rename's source into the upper so it can move by one rename. A directory
    /// with lower parts is copied up alone and records where its lower parts are (a
    /// redirect), so no file data moves; where that cannot be recorded (an upper without
    /// xattrs) its whole subtree is copied up and made opaque.
    /// `samedir`: the move stays in the same directory.
    fn copy_up_for_move(&self, node: &Arc<Node>, samedir: bool) -> Result<Move> {
        if !node.is_dir() {
            self.copy_up(node)?;
            return Ok(Move::Plain);
        }
        if !node.state().dirs.iter().any(|d| d.layer > 0) {
            return Ok(Move::Plain);
        }
        let loc = self.copy_up(node)?;
        // Where its lower parts are, as the layers below see it (computed before the move).
        let value = whiteout::format_redirect(&self.lower_path(node));
        // In the overlay format, only the kernel's name: kernel overlayfs copies our
        // xattrs into its copy-ups, where a stale one of ours would win over its own.
        let attr = match self.opts.whiteout {
            WhiteoutFormat::WhFiles => whiteout::REDIRECT_XATTR,
            WhiteoutFormat::Overlay => whiteout::REDIRECT_XATTRS[1],
        };
        match self.redirect_in(loc.raw(), &loc.name) {
            // Moved before: an absolute redirect still holds anywhere, a relative one (a
            // name in its parent, as the kernel writes) only in the same directory; else it
            // becomes absolute, as overlayfs does.
            Some(whiteout::Redirect::Absolute(_)) => return Ok(Move::Redirect),
            Some(whiteout::Redirect::Relative(_)) if samedir => return Ok(Move::Redirect),
            Some(whiteout::Redirect::Relative(_)) => {
                let present = sys::llistxattr(loc.raw(), &loc.name).unwrap_or_default();
                for a in whiteout::REDIRECT_XATTRS {
                    if present.iter().any(|p| p == a.as_bytes()) {
                        sys::lsetxattr(loc.raw(), &loc.name, a.as_ref(), &value, 0)
                            .op("rewrite redirect")
                            .map_err(|e| e.at(node.path()).in_layer(0))?;
                    }
                }
                return Ok(Move::Redirect);
            }
            None => {}
        }
        if sys::lsetxattr(loc.raw(), &loc.name, attr.as_ref(), &value, 0).is_ok() {
            return Ok(Move::Redirect);
        }
        // Unprivileged (rootless), trusted.* cannot be written: record it as kernel
        // overlayfs does there (`userxattr`). Image tools copy user.* xattrs, but ours
        // never go into a layer (`diff`, `export`, `commit` leave them out).
        let user = whiteout::REDIRECT_XATTRS[2];
        if sys::lsetxattr(loc.raw(), &loc.name, user.as_ref(), &value, 0).is_ok() {
            return Ok(Move::Redirect);
        }
        self.copy_up_tree(node)?;
        self.mark_opaque(loc.raw(), &loc.name, &node.path())?;
        Arc::make_mut(&mut node.state_mut().dirs).retain(|d| d.layer == 0);
        Ok(Move::Whole)
    }

    /// Before an entry's name goes: if the kernel still holds its node, keep an O_PATH
    /// handle, so the node stays reachable without a name (open files, a lookup that raced
    /// the removal) and, for an upper entry, its inode stays allocated: the filesystem
    /// cannot give its number to a new file while the kernel may still show it for this
    /// one. The handle goes when the kernel forgets the node. `layer` is where the entry
    /// was found below `parent`.
    fn keep_handle(
        &self,
        node: Option<&Arc<Node>>,
        parent: &Arc<Node>,
        name: &OsStr,
        layer: usize,
    ) -> Result<()> {
        let Some(node) = node.filter(|n| layer == 0 || n.is_open()) else {
            return Ok(());
        };
        let dirs = self.dirs_of(parent)?;
        let Some(dir) = dirs.iter().find(|d| d.layer == layer) else {
            return Ok(());
        };
        let handle = sys::openat(dir.raw(), name, libc::O_PATH | libc::O_NOFOLLOW, 0);
        if let Ok(fd) = handle {
            node.state_mut().kept = Some(Kept {
                fd: Arc::new(fd),
                layer,
            });
        }
        Ok(())
    }

    /// A moved entry keeps its inode number: in memory for this mount, and in the origin
    /// xattr for the next one.
    fn keep_origin(&self, dir: RawFd, name: &OsStr, ino: u64) {
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
        let loc = self.copy_up(node)?;
        let up = self.upper_dir(newparent)?;
        if exists(up.as_raw_fd(), newname) {
            // An overlay-format whiteout holds the name: link beside it, then replace it.
            let work = self.stack.work()?;
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

    /// Open a node's file for I/O; opening for writing copies it up first.
    pub fn open(&self, node: &Arc<Node>, flags: i32) -> Result<(File, usize)> {
        let _place = node.place.read();
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let loc = if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            self.copy_up_truncated(node)?
        } else if writing {
            self.copy_up(node)?
        } else {
            // A metadata-only copy reads its data from the lower file.
            let data = node.state().data.clone();
            match data {
                Some(d) => d,
                None => self.locate(node)?,
            }
        };
        let f = self
            .open_branch(loc.raw(), &loc.name, flags)
            .op("open")
            .map_err(|e| e.at(node.path()).in_layer(loc.layer))?;
        Ok((f, loc.layer))
    }

    /// Reopen a node's file after it was copied up, for a descriptor opened on the lower
    /// file before: the copy itself, even if its name has since gone or been reused.
    pub fn reopen_copy(&self, node: &Arc<Node>, flags: i32) -> Result<File> {
        let copy = node.state().kept.clone().filter(|k| k.layer == 0);
        match copy.map(|k| k.fd) {
            Some(fd) => {
                let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
                sys::openat(
                    libc::AT_FDCWD,
                    sys::proc_path(fd.as_raw_fd(), "".as_ref()).as_os_str(),
                    flags,
                    0,
                )
                .map(File::from)
                .op("reopen copy")
            }
            None => Ok(self.open(node, flags & !libc::O_TRUNC)?.0),
        }
    }

    /// Change attributes. `file` is an open descriptor of the node's upper file, if the
    /// caller has one: it is used instead of the name, which may be gone (an open, unlinked
    /// file) or may name another file by now. With `xattr_permissions=` the owner, group
    /// and mode of a file or directory change in its xattr, the file's own stay.
    pub fn setattr(&self, node: &Arc<Node>, a: SetAttr, file: Option<&File>) -> Result<Stat> {
        let path = node.path();
        let wrap = |e: Error| e.at(&path).in_layer(0);
        let in_xattr = self
            .opts
            .owner_xattr
            .filter(|_| idmap::may_override(node.kind));
        let chown = (a.uid.is_some() || a.gid.is_some()) && in_xattr.is_none();
        let chmod = a.mode.filter(|_| in_xattr.is_none());
        if let Some(f) = file {
            let fd = f.as_raw_fd();
            if let Some(size) = a.size {
                sys::ftruncate(fd, size).op("truncate").map_err(wrap)?;
            }
            if chown {
                self.chowned(sys::fchown(fd, a.uid, a.gid))
                    .op("chown")
                    .map_err(wrap)?;
            }
            if let Some(mode) = chmod {
                sys::fchmod(fd, mode & 0o7777).op("chmod").map_err(wrap)?;
            }
            if a.atime.is_some() || a.mtime.is_some() {
                sys::futimens(fd, a.atime, a.mtime)
                    .op("utimens")
                    .map_err(wrap)?;
            }
            if let Some(x) = in_xattr {
                let loc = self.locate(node)?;
                self.set_owner_xattr(x, &loc, &a).map_err(wrap)?;
            }
            let mut st = sys::fstat(fd).op("stat").map_err(wrap)?;
            self.present(node, &mut st);
            return Ok(st);
        }
        let place = node.place.read();
        let loc = match a.size {
            Some(0) => self.copy_up_truncated(node)?,
            Some(_) => self.copy_up(node)?,
            None => self.copy_up_metadata(node)?,
        };
        if let Some(size) = a.size {
            let f = sys::open_file(loc.raw(), &loc.name, libc::O_WRONLY)
                .op("truncate")
                .map_err(wrap)?;
            sys::ftruncate(f.as_raw_fd(), size)
                .op("truncate")
                .map_err(wrap)?;
        }
        if chown {
            self.chowned(sys::fchownat(loc.raw(), &loc.name, a.uid, a.gid))
                .op("chown")
                .map_err(wrap)?;
        }
        if let Some(mode) = chmod {
            sys::fchmodat(loc.raw(), &loc.name, mode & 0o7777)
                .op("chmod")
                .map_err(wrap)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            sys::utimensat(loc.raw(), &loc.name, a.atime, a.mtime)
                .op("utimens")
                .map_err(wrap)?;
        }
        if let Some(x) = in_xattr {
            self.set_owner_xattr(x, &loc, &a).map_err(wrap)?;
        }
        drop(place);
        log::debug!("setattr {path}");
        self.getattr(node)
    }

    /// A chown's result as the caller sees it: with squash_to_* a failure is a success
    /// (fuse-overlayfs), the owner shown being the squashed one anyway.
    fn chowned(&self, r: std::io::Result<()>) -> std::io::Result<()> {
        match r {
            Err(e) if self.opts.squash => {
                log::debug!("chown failed, squashed: {e}");
                Ok(())
            }
            r => r,
        }
    }

    /// Record a chown and chmod in the owner xattr of the upper entry at `loc`.
    fn set_owner_xattr(&self, xattr: &str, loc: &Loc, a: &SetAttr) -> Result<()> {
        if a.uid.is_none() && a.gid.is_none() && a.mode.is_none() {
            return Ok(());
        }
        let st = sys::fstatat(loc.raw(), &loc.name).op("stat")?;
        let cur = self.shown_owner(loc.raw(), &loc.name, &st);
        let kind = st.st_mode & libc::S_IFMT;
        // Fields not changed keep their shown value (fuse-overlayfs writes -1 for them).
        let new = StatOverride {
            uid: a.uid.unwrap_or(cur.uid),
            gid: a.gid.unwrap_or(cur.gid),
            mode: kind | (a.mode.unwrap_or(cur.mode) & 0o7777),
        };
        let r = sys::lsetxattr(loc.raw(), &loc.name, xattr.as_ref(), &new.format(), 0);
        let r = if a.mode.is_none() { self.chowned(r) } else { r };
        r.op("write owner xattr")
    }

    /// Where a layer shows owners and modes from its files' xattrs, as fuse-overlayfs
    /// decides: a layer whose root directory carries one of `idmap::OVERRIDE_XATTRS` uses
    /// that one, and the upper with `xattr_permissions=` the option's, which its root is
    /// given first (from the first lower root that has it, else the upper root's own owner
    /// and mode, as fuse-overlayfs 1.10 writes it). The upper also reads the lowers' ones:
    /// a copy-up copies a lower file's xattr as it is.
    pub(crate) fn find_override_xattrs(&self) -> Result<Vec<Vec<&'static str>>> {
        let root_value = |l: usize, x: &str| {
            let fd = self.stack.layers[l].root.as_raw_fd();
            sys::lgetxattr(fd, ".".as_ref(), x.as_ref()).ok().flatten()
        };
        let mut own: Vec<Option<&'static str>> = (0..self.stack.layers.len())
            .map(|l| {
                idmap::OVERRIDE_XATTRS
                    .into_iter()
                    .find(|x| root_value(l, x).is_some())
            })
            .collect();
        if let (Some(x), true) = (self.opts.owner_xattr, self.writable()) {
            if root_value(0, x).is_none() {
                // fuse-overlayfs' xattr_permissions=2 also takes containers-storage's.
                let names: &[&str] = if x == idmap::OVERRIDE_USER {
                    &[x, idmap::OVERRIDE_CONTAINERS]
                } else {
                    &[x]
                };
                let lower = (1..self.stack.layers.len())
                    .find_map(|l| names.iter().find_map(|n| root_value(l, n)));
                let upper = &self.stack.layers[0];
                let fd = upper.root.as_raw_fd();
                let value = match lower {
                    Some(v) => v,
                    None => StatOverride::of(&sys::fstat_path(fd).op("stat upper")?).format(),
                };
                sys::lsetxattr(fd, ".".as_ref(), x.as_ref(), &value, 0)
                    .op("xattr_permissions: write the owner xattr")
                    .map_err(|e| e.at(format!("{} ({x})", upper.path.display())).in_layer(0))?;
            }
            own[0] = Some(x);
        }
        let mut out: Vec<Vec<&'static str>> =
            own.iter().map(|o| o.iter().copied().collect()).collect();
        if self.writable() {
            for x in own[1..].iter().flatten() {
                if !out[0].contains(x) {
                    out[0].push(x);
                }
            }
        }
        Ok(out)
    }

    /// Owner, group and mode of the upper entry `name` in `dir` as shown: from its owner
    /// xattr if it has one, else its own (`st`).
    fn shown_owner(&self, dir: RawFd, name: &OsStr, st: &Stat) -> StatOverride {
        let names = self.override_xattrs.first().map_or(&[][..], |n| &n[..]);
        read_override(dir, name, names).unwrap_or_else(|| StatOverride::of(st))
    }

    /// Show a node's owner, group and mode from its xattr where its layer keeps them there.
    /// An entry without one shows its own (fuse-overlayfs fails its stat with ENODATA).
    pub(crate) fn apply_override(&self, node: &Node, st: &mut Stat) {
        if !idmap::may_override(st.st_mode) {
            return;
        }
        let (layer, parent, name) = {
            let s = node.state();
            (s.layer, s.parent.clone(), s.name.clone())
        };
        let Some(names) = self.override_xattrs.get(layer).filter(|n| !n.is_empty()) else {
            return;
        };
        let place = if node.ino == ROOT_INO {
            self.dir_in(node, layer).map(|d| (d, ".".into()))
        } else if node.is_unlinked() {
            None
        } else {
            parent
                .and_then(|p| self.dir_in(&p, layer))
                .map(|d| (d, name))
        };
        let Some((dir, name)) = place else {
            return;
        };
        if let Some(o) = read_override(dir.as_raw_fd(), &name, names) {
            o.apply(st);
        }
    }

    pub fn readlink(&self, node: &Arc<Node>) -> Result<Vec<u8>> {
        let _place = node.place.read();
        let loc = self.locate(node)?;
        sys::readlinkat(loc.raw(), &loc.name)
            .op("readlink")
            .map_err(|e| e.at(node.path()).in_layer(loc.layer))
    }

    pub fn getxattr(&self, node: &Arc<Node>, attr: &OsStr) -> Result<Vec<u8>> {
        let _place = node.place.read();
        if attr == whiteout::LAYER_XATTR {
            // Which branch serves this entry: "<index> <branch directory>" (never listed).
            let loc = self.locate(node)?;
            let layer = &self.stack.layers[loc.layer];
            return Ok(format!("{} {}", layer.index, layer.path.display()).into_bytes());
        }
        if whiteout::is_private_xattr(attr) || idmap::is_owner_xattr(attr.as_bytes()) {
            return Err(Error::new(libc::ENODATA, "getxattr"));
        }
        let loc = self.locate(node)?;
        sys::lgetxattr(loc.raw(), &loc.name, attr)
            .op("getxattr")
            .map_err(|e| e.at(node.path()).in_layer(loc.layer))?
            .ok_or_else(|| Error::new(libc::ENODATA, "getxattr"))
    }

    /// The xattr names a caller may see. `trusted.*` ones only for root: the kernel leaves
    /// that filtering to the filesystem (ext4 and overlayfs do it), and the daemon reads
    /// the branches with more privilege than the caller may have.
    pub fn listxattr(&self, node: &Arc<Node>, root: bool) -> Result<Vec<Vec<u8>>> {
        let _place = node.place.read();
        let loc = self.locate(node)?;
        let mut names = sys::llistxattr(loc.raw(), &loc.name)
            .op("listxattr")
            .map_err(|e| e.at(node.path()).in_layer(loc.layer))?;
        names.retain(|n| {
            !whiteout::is_private_xattr(OsStr::from_bytes(n))
                && !idmap::is_owner_xattr(n)
                && (root || !n.starts_with(b"trusted."))
        });
        Ok(names)
    }

    pub fn setxattr(&self, node: &Arc<Node>, attr: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        if whiteout::is_private_xattr(attr) || idmap::is_owner_xattr(attr.as_bytes()) {
            return Err(Error::new(libc::EPERM, "setxattr").at(node.path()));
        }
        let _place = node.place.read();
        let loc = self.copy_up_metadata(node)?;
        sys::lsetxattr(loc.raw(), &loc.name, attr, value, flags)
            .op("setxattr")
            .map_err(|e| e.at(node.path()).in_layer(0))
    }

    pub fn removexattr(&self, node: &Arc<Node>, attr: &OsStr) -> Result<()> {
        // Nothing to remove means nothing to copy up.
        self.getxattr(node, attr)?;
        let _place = node.place.read();
        let was_lower = self.locate(node)?.layer > 0;
        let loc = self.copy_up_metadata(node)?;
        // What the daemon may not set (security.capability, trusted.*, unprivileged) is not
        // copied up: gone already, as asked. Removing it would fail, and with it the
        // kernel's removal of a capability before a chown or truncate.
        if was_lower && matches!(sys::lgetxattr(loc.raw(), &loc.name, attr), Ok(None)) {
            return Ok(());
        }
        sys::lremovexattr(loc.raw(), &loc.name, attr)
            .op("removexattr")
            .map_err(|e| e.at(node.path()).in_layer(0))
    }

    /// Space figures of the upper (or the top layer of a read-only stack).
    pub fn statfs(&self) -> Result<libc::statvfs> {
        let top = &self.stack.layers[0];
        sys::fstatvfs(top.root.as_raw_fd()).op("statfs")
    }

    /// Where a node is now (for callers outside the union module).
    pub fn location(&self, node: &Arc<Node>) -> Result<Loc> {
        self.locate(node)
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
fn clear_whiteout(dir: RawFd, name: &OsStr) -> Result<()> {
    match sys::unlinkat(dir, &whiteout::whiteout_name(name), false) {
        Err(e) if !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENAMETOOLONG)) => {
            Err(Error::io(e, "remove whiteout"))
        }
        _ => Ok(()),
    }
}

fn is_dir_found(f: &Found) -> bool {
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

/// Owner, group and mode from the first of `names` that `name` in `dir` carries.
fn read_override(dir: RawFd, name: &OsStr, names: &[&str]) -> Option<StatOverride> {
    names.iter().find_map(|x| {
        let v = sys::lgetxattr(dir, name, x.as_ref()).ok().flatten()?;
        let o = StatOverride::parse(&v);
        if o.is_none() {
            log::debug!("{}: malformed {x}, ignored", name.to_string_lossy());
        }
        o
    })
}

/// Make the object itself, owned by the caller. Returns the open file for `New::File`.
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
) -> Result<Option<File>> {
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
        return Ok(file);
    }
    // As fuse-overlayfs: chown only where the owner is not already the caller's (an
    // unprivileged daemon creating for itself needs none), and a chown that fails fails
    // the creation (EPERM unprivileged, EINVAL for an ID its user namespace does not map)
    // unless squash_to_* makes the stored owner irrelevant.
    let st = sys::fstatat(dir, name).op("stat new entry")?;
    if (st.st_uid, st.st_gid) == (caller.uid, gid) {
        return Ok(file);
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
    Ok(file)
}
