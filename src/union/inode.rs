//! Attributes of a merged entry: setattr (a copy-up first, of the
//! metadata only where the data need not move), owners and modes kept in xattrs
//! (`xattr_permissions=`), readlink, statfs (overlayfs' inode.c).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::fileattr::Change;
use super::idmap::{self, StatOverride};
use super::layer::LayerStack;
use super::node::Loc;
use super::node::Node;
use super::{ROOT_INO, Union};
use crate::error::{Context, Error, Result};
use crate::sys::{self, Stat, TimeSpec};

/// Attribute changes of a setattr; `None` leaves a field alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: TimeSpec,
    pub mtime: TimeSpec,
    /// Kill the set-id bits and file capability too (see `Union::kill_suidgid`): a
    /// truncate by a caller without CAP_FSETID, or a chown.
    pub kill_suidgid: bool,
}

/// The set-id bits a write, truncate or chown by a caller without CAP_FSETID kills, as
/// Linux filesystems do: set-user-ID always, set-group-ID only with group-execute (without
/// it the bit marks mandatory locking, not a privilege).
fn killed(mode: u32) -> u32 {
    let mut m = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        m &= !libc::S_ISGID;
    }
    m
}

/// What a setattr changes, as immutable and append-only inodes tell it apart.
fn protected_changes(a: &SetAttr) -> impl Iterator<Item = Change> {
    let given = |t: TimeSpec| matches!(t, Some(Some(_)));
    let now = |t: TimeSpec| matches!(t, Some(None));
    let attr = a.mode.is_some() || a.uid.is_some() || a.gid.is_some();
    [
        a.size.map(|_| Change::Write {
            append: false,
            truncate: true,
        }),
        (attr || given(a.atime) || given(a.mtime)).then_some(Change::Attr),
        (now(a.atime) || now(a.mtime)).then_some(Change::Touch),
    ]
    .into_iter()
    .flatten()
}

/// The file capability a write, truncate or chown removes (`security_inode_killpriv`).
const CAPABILITY_XATTR: &str = "security.capability";

impl Union {
    /// Change attributes. `file` is an open descriptor of the node's file and the layer it
    /// was opened in, if the caller has one: one of the upper file is used instead of the
    /// name, which may be gone (an open, unlinked file) or may name another file by now (a
    /// lower one would change the lower file). With `xattr_permissions=` the owner, group
    /// and mode of a file or directory change in its xattr, the file's own stay.
    pub fn setattr(
        &self,
        node: &Arc<Node>,
        a: SetAttr,
        file: Option<(&File, usize)>,
    ) -> Result<Stat> {
        for change in protected_changes(&a) {
            self.check_protection(node, change, "setattr")?;
        }
        let file = file.filter(|(_, layer)| *layer == 0).map(|(f, _)| f);
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
            // Before a chmod of the same request, which then has the last word. Not after a
            // chown: one that was done killed them in the branch itself (Linux's chown kills
            // set-id bits and the capability for any caller), one that failed and was
            // forgiven (squash_to_*) changed nothing.
            if a.kill_suidgid && !chown {
                self.kill_suidgid(node, Some(f))?;
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
        if a.kill_suidgid && !chown {
            self.kill_in(node, Some(&loc), None)?;
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

    /// Kill the set-user-ID bit, the set-group-ID bit where group-execute is set, and the
    /// `security.capability` xattr of a node's upper file, for a write, truncate, chown or
    /// `O_TRUNC` open by a caller without CAP_FSETID. The kernel leaves that to the
    /// filesystem (`FUSE_HANDLE_KILLPRIV_V2`, which spares it a GETXATTR of the capability
    /// at each write), and the branch would not do it: the daemon writes with CAP_FSETID.
    /// `file`, a descriptor of the upper file, is used where one is open (the name may be
    /// gone); the node must have been copied up. With `xattr_permissions=` the mode killed
    /// is the one the owner xattr keeps. True if the mode changed (the kernel's cached
    /// attributes are stale then).
    pub fn kill_suidgid(&self, node: &Arc<Node>, file: Option<&File>) -> Result<bool> {
        // The name only where the descriptor does not do: the owner xattr is read by name.
        let loc = match (file, self.opts.owner_xattr) {
            (Some(_), None) => None,
            _ => Some(self.locate(node)?),
        };
        if loc.as_ref().is_some_and(|l| l.layer != 0) {
            return Err(Error::new(libc::EIO, "kill suid/sgid: not copied up").at(node.path()));
        }
        self.kill_in(node, loc.as_ref(), file)
    }

    /// Would a write by a caller without CAP_FSETID kill set-id bits of a node's file, whose
    /// `fstat` is `st` (its mode as shown)? Such a file must not be opened in FUSE
    /// passthrough: the kernel leaves the kill to us and a passthrough write never reaches us.
    pub fn write_kills_bits(&self, node: &Node, st: &Stat) -> bool {
        let mut st = *st;
        if self.opts.owner_xattr.is_some() {
            self.apply_override(node, &mut st);
        }
        st.st_mode & libc::S_IFMT == libc::S_IFREG && killed(st.st_mode) != st.st_mode
    }

    /// `kill_suidgid` of the upper file open at `file`, else at `loc`.
    fn kill_in(&self, node: &Arc<Node>, loc: Option<&Loc>, file: Option<&File>) -> Result<bool> {
        let path = node.path();
        let wrap = |e: Error| e.at(&path).in_layer(0);
        let st = match (file, loc) {
            (Some(f), _) => sys::fstat(f.as_raw_fd()),
            (None, Some(l)) => sys::fstatat(l.raw(), &l.name),
            (None, None) => return Ok(false),
        }
        .op("stat")
        .map_err(wrap)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(false);
        }
        let in_xattr = self.opts.owner_xattr.zip(loc);
        let mode = match in_xattr {
            Some((_, l)) => self.shown_owner(l.raw(), &l.name, &st).mode,
            None => st.st_mode,
        };
        let changed = killed(mode) != mode;
        if changed {
            match (in_xattr, file, loc) {
                (Some((x, l)), _, _) => {
                    let a = SetAttr {
                        mode: Some(killed(mode)),
                        ..SetAttr::default()
                    };
                    self.set_owner_xattr(x, l, &a).map_err(wrap)?;
                }
                (None, Some(f), _) => sys::fchmod(f.as_raw_fd(), killed(mode) & 0o7777)
                    .op("kill suid/sgid")
                    .map_err(wrap)?,
                (None, None, Some(l)) => sys::fchmodat(l.raw(), &l.name, killed(mode) & 0o7777)
                    .op("kill suid/sgid")
                    .map_err(wrap)?,
                (None, None, None) => {}
            }
        }
        // Looked for first: removing it needs CAP_SETFCAP even where there is none, which a
        // daemon without privilege lacks (its writes would all fail).
        let cap = OsStr::new(CAPABILITY_XATTR);
        let has = match (file, loc) {
            (Some(f), _) => sys::fhasxattr(f.as_raw_fd(), cap),
            (None, Some(l)) => sys::lgetxattr(l.raw(), &l.name, cap).map(|v| v.is_some()),
            (None, None) => Ok(false),
        };
        let r = match (has, file, loc) {
            (Ok(false), _, _) => Ok(()),
            (Err(e), _, _) => Err(e),
            (Ok(true), Some(f), _) => sys::fremovexattr(f.as_raw_fd(), cap),
            (Ok(true), None, Some(l)) => sys::lremovexattr(l.raw(), &l.name, cap),
            (Ok(true), None, None) => Ok(()),
        };
        match r {
            Err(e) if !matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => {
                Err(e).op("remove file capability").map_err(wrap)
            }
            _ => Ok(changed),
        }
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

    /// Attributes of an open file, by its descriptor (its name may be gone), as the merged
    /// view shows them; by its name without one.
    pub fn getattr_open(&self, node: &Arc<Node>, file: Option<&File>) -> Result<Stat> {
        if let Some(mut st) = file.and_then(|f| sys::fstat(f.as_raw_fd()).ok()) {
            self.present(node, &mut st);
            return Ok(st);
        }
        self.getattr(node)
    }

    /// Where a layer shows owners and modes from its files' xattrs, as fuse-overlayfs
    /// decides: a layer whose root directory carries one of `idmap::OVERRIDE_XATTRS` uses
    /// that one, and the upper with `xattr_permissions=` the option's, which its root is
    /// given first (from the first lower root that has it, else the upper root's own owner
    /// and mode, as fuse-overlayfs 1.10 writes it). The upper also reads the lowers' ones:
    /// a copy-up copies a lower file's xattr as it is.
    pub(crate) fn find_override_xattrs(
        &self,
        stack: &LayerStack,
    ) -> Result<Vec<Vec<&'static str>>> {
        let writable = stack.upper().is_some();
        let root_value = |l: usize, x: &str| {
            let fd = stack.layers[l].root.as_raw_fd();
            sys::lgetxattr(fd, ".".as_ref(), x.as_ref()).ok().flatten()
        };
        let mut own: Vec<Option<&'static str>> = (0..stack.layers.len())
            .map(|l| {
                idmap::OVERRIDE_XATTRS
                    .into_iter()
                    .find(|x| root_value(l, x).is_some())
            })
            .collect();
        if let (Some(x), true) = (self.opts.owner_xattr, writable) {
            if root_value(0, x).is_none() {
                // fuse-overlayfs' xattr_permissions=2 also takes containers-storage's.
                let names: &[&str] = if x == idmap::OVERRIDE_USER {
                    &[x, idmap::OVERRIDE_CONTAINERS]
                } else {
                    &[x]
                };
                let lower = (1..stack.layers.len())
                    .find_map(|l| names.iter().find_map(|n| root_value(l, n)));
                let upper = &stack.layers[0];
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
        if writable {
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
    pub(crate) fn shown_owner(&self, dir: RawFd, name: &OsStr, st: &Stat) -> StatOverride {
        let stack = self.stack();
        let names = stack.override_xattrs().first().map_or(&[][..], |n| &n[..]);
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
            (s.layer, s.parent.clone(), s.name.to_os_string())
        };
        let stack = self.stack();
        let Some(names) = stack.override_xattrs().get(layer).filter(|n| !n.is_empty()) else {
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

    /// Space figures of the upper (or the top layer of a read-only stack).
    pub fn statfs(&self) -> Result<libc::statvfs> {
        let top = &self.stack().layers[0];
        sys::fstatvfs(top.root.as_raw_fd()).op("statfs")
    }

    /// Where a node is now (for callers outside the union module).
    pub fn location(&self, node: &Arc<Node>) -> Result<Loc> {
        self.locate(node)
    }
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
