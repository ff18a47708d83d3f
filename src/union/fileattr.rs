//! Inode flags (`lsattr`, `chattr`) of merged entries, as overlayfs keeps them: read from
//! the topmost real file, set on an upper copy. A copy-up carries `sync` and `noatime`.
//! `immutable` and `append-only` are never set on an upper file by the union: they would
//! stop the union itself from changing it (copying a child up into a directory, a
//! whiteout, a record). Like overlayfs' `overlay.protattr`, a record beside the upper copy
//! keeps them, and the union refuses what the kernel refuses such an inode
//! (`Protect::allows`): the kernel knows nothing of a FUSE inode's flags, so the union is
//! the only one to enforce them for a lower entry or a recorded one.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Union;
use super::node::{Loc, Node};
use super::resolve::Found;
use crate::error::{Context, Error, Result};
use crate::sys;

/// The record of an upper copy's immutable and append-only flags (overlayfs' name and
/// format: "i" and/or "a"), privileged first; unprivileged, the user.* one.
pub const PROTATTR_XATTRS: [&str; 2] = ["trusted.overlay.protattr", "user.overlay.protattr"];

// linux/fs.h: FS_IOC_GETFLAGS flags, and struct fsxattr's fsx_xflags.
const FS_SYNC_FL: u32 = 0x8;
const FS_IMMUTABLE_FL: u32 = 0x10;
const FS_APPEND_FL: u32 = 0x20;
const FS_NOATIME_FL: u32 = 0x80;
const FS_XFLAG_IMMUTABLE: u32 = 0x8;
const FS_XFLAG_APPEND: u32 = 0x10;
/// What a copy-up carries in the copy's own flags (overlayfs' OVL_COPY_FS_FLAGS_MASK).
const CARRIED: u32 = FS_SYNC_FL | FS_NOATIME_FL;
/// `NodeState::prot`: the flags are known (the low bits say which).
const PROT_KNOWN: u8 = 0x80;
const STATX_ATTR_IMMUTABLE: u64 = 0x10;
const STATX_ATTR_APPEND: u64 = 0x20;

/// The immutable and append-only flags a merged entry shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Protect {
    pub immutable: bool,
    pub append: bool,
}

/// What an operation is about to do to an entry, as the kernel tells them apart for an
/// immutable or append-only inode (`may_open`, `notify_change`, `may_delete`, `vfs_link`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Open for writing; `append`: with O_APPEND; `truncate`: O_TRUNC or a truncate.
    Write { append: bool, truncate: bool },
    /// chmod, chown, times set to a given value, xattrs.
    Attr,
    /// Times set to now (`touch`).
    Touch,
    /// The entry removed, renamed, or given another name.
    Remove,
    /// A name added to this directory.
    AddEntry,
    /// A name removed from this directory.
    RemoveEntry,
}

impl Protect {
    pub fn is_set(self) -> bool {
        self.immutable || self.append
    }

    /// Whether the kernel lets `change` happen to an inode with these flags.
    pub fn allows(self, change: Change) -> bool {
        match change {
            Change::Write { append, truncate } => {
                !self.immutable && !(self.append && (!append || truncate))
            }
            Change::Touch | Change::AddEntry => !self.immutable,
            Change::Attr | Change::Remove | Change::RemoveEntry => !self.is_set(),
        }
    }

    /// As `NodeState::prot` keeps it.
    fn bits(self) -> u8 {
        PROT_KNOWN | u8::from(self.immutable) | (u8::from(self.append) << 1)
    }

    fn from_bits(b: u8) -> Protect {
        Protect {
            immutable: b & 1 != 0,
            append: b & 2 != 0,
        }
    }

    fn from_flags(flags: u32) -> Protect {
        Protect {
            immutable: flags & FS_IMMUTABLE_FL != 0,
            append: flags & FS_APPEND_FL != 0,
        }
    }

    fn record(self) -> Vec<u8> {
        let mut v = Vec::new();
        if self.append {
            v.push(b'a');
        }
        if self.immutable {
            v.push(b'i');
        }
        v
    }

    fn from_record(v: &[u8]) -> Protect {
        Protect {
            immutable: v.contains(&b'i'),
            append: v.contains(&b'a'),
        }
    }

    fn union(self, o: Protect) -> Protect {
        Protect {
            immutable: self.immutable || o.immutable,
            append: self.append || o.append,
        }
    }
}

/// EPERM, as the kernel answers, unless `p` allows `change`.
fn refuse_unless(p: Protect, change: Change, op: &str) -> Result<()> {
    if p.allows(change) {
        return Ok(());
    }
    let what = if p.immutable {
        "immutable"
    } else {
        "append-only"
    };
    log::debug!("{op}: refused, the entry is {what}");
    Err(Error::new(libc::EPERM, "inode flags"))
}

/// The flag bits of an inode-flag ioctl's argument: (immutable, append-only) bits in its
/// format, and where the flags word is (the first 4 bytes, for both formats).
fn prot_bits(cmd: u32) -> (u32, u32) {
    if cmd == libc::FS_IOC_GETFLAGS as u32 || cmd == libc::FS_IOC_SETFLAGS as u32 {
        (FS_IMMUTABLE_FL, FS_APPEND_FL)
    } else {
        (FS_XFLAG_IMMUTABLE, FS_XFLAG_APPEND)
    }
}

fn flags_word(arg: &[u8]) -> u32 {
    u32::from_ne_bytes([arg[0], arg[1], arg[2], arg[3]])
}

fn set_flags_word(arg: &mut [u8], v: u32) {
    arg[..4].copy_from_slice(&v.to_ne_bytes());
}

/// The record name this daemon writes and reads.
fn protattr_name() -> &'static OsStr {
    PROTATTR_XATTRS[usize::from(!sys::privileged())].as_ref()
}

/// The flags the record beside an upper entry keeps.
fn recorded(loc: &Loc) -> Protect {
    match sys::lgetxattr(loc.raw(), &loc.name, protattr_name()) {
        Ok(Some(v)) => Protect::from_record(&v),
        _ => Protect::default(),
    }
}

/// Keep `p` in the record of the upper entry `name` in `dir` (none: drop the record).
fn set_record(dir: RawFd, name: &OsStr, p: Protect) -> std::io::Result<()> {
    if p.is_set() {
        return sys::lsetxattr(dir, name, protattr_name(), &p.record(), 0);
    }
    match sys::lremovexattr(dir, name, protattr_name()) {
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        r => r,
    }
}

/// The file or directory `name` in `dir`, opened for its inode flags.
fn open_for_flags(dir: RawFd, name: &OsStr, kind: u32) -> Option<std::io::Result<File>> {
    let flags = match kind {
        libc::S_IFREG => libc::O_RDONLY | libc::O_NONBLOCK,
        libc::S_IFDIR => libc::O_RDONLY | libc::O_DIRECTORY,
        _ => return None,
    };
    Some(sys::open_file(dir, name, flags | libc::O_NOFOLLOW))
}

impl Node {
    /// The node's real file `real`, just made, is neither immutable nor append-only.
    pub fn known_unprotected(&self, real: (u64, u64)) {
        let s = self.state();
        if s.real == real {
            self.prot
                .store(Protect::default().bits(), Ordering::Relaxed);
        }
    }
}

impl Union {
    /// The immutable and append-only flags `node` shows: its topmost real entry's, and for
    /// an upper entry also those its record keeps. Kept in the node until its real file
    /// changes (copy-up, a lookup finding another) or a chattr through the mount: a flag
    /// changed by hand in a branch shows once the kernel forgets the entry.
    pub fn protection(&self, node: &Arc<Node>) -> Result<Protect> {
        let known = node.prot.load(Ordering::Relaxed);
        if known & PROT_KNOWN != 0 {
            return Ok(Protect::from_bits(known));
        }
        // Kept only if the real file is still the one looked at (held against `set_real`).
        let s = node.state();
        let real = s.real;
        drop(s);
        let loc = self.locate(node)?;
        let p = self.protection_at(&loc);
        let s = node.state();
        if s.real == real {
            node.prot.store(p.bits(), Ordering::Relaxed);
        }
        Ok(p)
    }

    /// `protection` of the real entry at `loc`. A filesystem without these flags has none.
    fn protection_at(&self, loc: &Loc) -> Protect {
        let attrs = sys::statx_attributes(loc.raw(), &loc.name).unwrap_or(0);
        let real = Protect {
            immutable: attrs & STATX_ATTR_IMMUTABLE != 0,
            append: attrs & STATX_ATTR_APPEND != 0,
        };
        if self.keeps_records(loc.layer) {
            real.union(recorded(loc))
        } else {
            real
        }
    }

    /// Refuse (EPERM, as the kernel) a `change` that `node`'s flags forbid. A node whose
    /// entry is gone has none to check: the operation meets that itself.
    pub fn check_protection(&self, node: &Arc<Node>, change: Change, op: &str) -> Result<()> {
        let Ok(p) = self.protection(node) else {
            return Ok(());
        };
        refuse_unless(p, change, op).map_err(|e| e.at(node.path()).in_layer(node.state().layer))
    }

    /// `check_protection` of the entry `name` of the merged directory `parent`, as a probe
    /// `found` it (through its node where it has one).
    pub(crate) fn check_entry_protection(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        found: &Found,
        change: Change,
        op: &str,
    ) -> Result<()> {
        let real = (found.st.st_dev, found.st.st_ino);
        if let Some(n) = self.live_node(found).filter(|n| n.state().real == real) {
            return self.check_protection(&n, change, op);
        }
        let Some(dir) = self.dir_in(parent, found.layer) else {
            return Ok(());
        };
        let loc = Loc {
            dir,
            name: name.to_owned(),
            layer: found.layer,
        };
        refuse_unless(self.protection_at(&loc), change, op).map_err(|e| {
            e.at(super::dir::child_path(parent, name))
                .in_layer(found.layer)
        })
    }

    /// Inode flags (`lsattr`, `chattr`), as overlayfs's fileattr: the ioctl `cmd` (one of
    /// `sys::fileattr_ioctl`'s) on the node's topmost file, or for one that sets them on
    /// its upper copy, made first; immutable and append-only go to the copy's record
    /// instead (see the module's note). `file`, an open handle's current descriptor and its
    /// layer, serves a read where there is one (the name may be gone).
    pub fn fileattr(
        &self,
        node: &Arc<Node>,
        file: Option<(&File, usize)>,
        cmd: u32,
        arg: &mut [u8],
    ) -> Result<()> {
        let path = node.path();
        let ioctl = |fd: RawFd, layer: usize, arg: &mut [u8]| {
            sys::fileattr_ioctl(fd, cmd, arg)
                .op("ioctl (inode flags)")
                .map_err(|e| e.at(&path).in_layer(layer))
        };
        let not_one = || Error::new(libc::ENOTTY, "ioctl (inode flags)").at(&path);
        let (size, set) = sys::fileattr_ioctl_kind(cmd).ok_or_else(not_one)?;
        if arg.len() != size {
            return Err(Error::new(libc::EINVAL, "ioctl (inode flags)").at(&path));
        }
        let (imm_bit, app_bit) = prot_bits(cmd);
        let place = node.place.read();
        let loc = if set {
            self.copy_up(node)?
        } else {
            self.locate(node)?
        };
        let opened;
        let (fd, layer) = match file {
            Some((f, layer)) if !set => (f.as_raw_fd(), layer),
            _ => {
                opened = open_for_flags(loc.raw(), &loc.name, node.kind)
                    .ok_or_else(not_one)?
                    .op("open for its inode flags")
                    .map_err(|e| e.at(&path).in_layer(loc.layer))?;
                (opened.as_raw_fd(), loc.layer)
            }
        };
        let in_record = if layer == loc.layer && self.keeps_records(layer) {
            recorded(&loc)
        } else {
            Protect::default()
        };
        drop(place);
        if !set {
            ioctl(fd, layer, arg)?;
            let mut w = flags_word(arg);
            if in_record.immutable {
                w |= imm_bit;
            }
            if in_record.append {
                w |= app_bit;
            }
            set_flags_word(arg, w);
            return Ok(());
        }
        // Set: the copy's own flags without these two first (a record cannot be written to
        // an immutable file), then the record.
        let wanted = flags_word(arg);
        let prot = Protect {
            immutable: wanted & imm_bit != 0,
            append: wanted & app_bit != 0,
        };
        let mut own = arg.to_vec();
        set_flags_word(&mut own, wanted & !(imm_bit | app_bit));
        ioctl(fd, 0, &mut own)?;
        if let Err(e) = set_record(loc.raw(), &loc.name, prot) {
            // No record where the daemon may not write one: on the copy itself, as asked.
            log::debug!("inode flags {path}: no record ({e}), set on the upper file");
            ioctl(fd, 0, arg)?;
        }
        node.prot.store(0, Ordering::Relaxed);
        log::debug!("inode flags {path}: ioctl {cmd:#x}");
        Ok(())
    }

    /// During a copy-up of `src` (of type `kind`) to `tmp` in `work`: carry `sync` and
    /// `noatime` to the copy, and record immutable and append-only beside it. `copy`: the
    /// copy's file, if open. A filesystem without inode flags has nothing to carry.
    pub(crate) fn carry_fileattr(
        &self,
        src: &Loc,
        kind: u32,
        work: RawFd,
        tmp: &OsStr,
        copy: Option<&File>,
    ) -> Result<()> {
        let Some(Ok(from)) = open_for_flags(src.raw(), &src.name, kind) else {
            return Ok(());
        };
        let flags = sys::inode_flags(from.as_raw_fd()).unwrap_or(0);
        if flags & CARRIED != 0 {
            let opened;
            let to = match copy {
                Some(f) => f,
                None => {
                    opened = open_for_flags(work, tmp, kind)
                        .ok_or_else(|| Error::new(libc::EIO, "copy-up inode flags"))?
                        .op("copy-up open for inode flags")?;
                    &opened
                }
            };
            put_carried(flags, to);
        }
        // A snapshot layer's entry may hold a record of its own.
        let mut prot = Protect::from_flags(flags);
        if self.keeps_records(src.layer) {
            prot = prot.union(recorded(src));
        }
        if prot.is_set()
            && let Err(e) = set_record(work, tmp, prot)
        {
            // As overlayfs: an upper that takes no such record gets a copy without them.
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) {
                return Err(Error::io(e, "copy-up: record of immutable/append-only"));
            }
            if !WARNED.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "copy-up of an immutable or append-only entry: the upper takes no {} \
                     record ({e}); its copies lose those flags",
                    protattr_name().to_string_lossy()
                );
            }
        }
        Ok(())
    }
}

/// Add the inode flags of `flags` that a copy keeps (`sync`, `noatime`) to the copy `to`.
fn put_carried(flags: u32, to: &File) {
    let now = sys::inode_flags(to.as_raw_fd()).unwrap_or(0);
    if let Err(e) = sys::set_inode_flags(to.as_raw_fd(), now | (flags & CARRIED)) {
        log::debug!("copy: inode flags {flags:#x} not carried: {e}");
    }
}

/// Carry `from`'s `sync` and `noatime` to `to`, a copy of its data (a snapshot's copy of a
/// file open for writing; immutable and append-only go by the copy's private xattrs). A
/// filesystem without inode flags has nothing to carry.
pub(crate) fn carry_inode_flags(from: &File, to: &File) {
    let flags = sys::inode_flags(from.as_raw_fd()).unwrap_or(0);
    if flags & CARRIED != 0 {
        put_carried(flags, to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_rules_for_immutable_and_append_only() {
        let none = Protect::default();
        let imm = Protect {
            immutable: true,
            append: false,
        };
        let app = Protect {
            immutable: false,
            append: true,
        };
        let write = |append, truncate| Change::Write { append, truncate };
        for c in [
            write(false, false),
            write(true, true),
            Change::Attr,
            Change::Touch,
            Change::Remove,
            Change::AddEntry,
            Change::RemoveEntry,
        ] {
            assert!(none.allows(c), "{c:?}");
            assert!(!imm.allows(c), "{c:?}");
        }
        assert!(app.allows(write(true, false)));
        assert!(!app.allows(write(false, false)) && !app.allows(write(true, true)));
        assert!(app.allows(Change::Touch) && app.allows(Change::AddEntry));
        assert!(!app.allows(Change::Attr) && !app.allows(Change::Remove));
        assert!(!app.allows(Change::RemoveEntry));
        assert_eq!(
            Protect::from_record(&imm.union(app).record()),
            imm.union(app)
        );
        assert_eq!(Protect::from_record(b""), none);
    }
}
