//! The merged listing of a directory: each name once, from the topmost layer that has it,
//! whiteouts and markers applied and hidden. A listing is a snapshot, so offsets into it
//! stay valid while entries come and go (seekdir/telldir).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Union;
use super::node::Node;
use super::whiteout;
use crate::error::{Context, Result};
use crate::sys;

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    /// `S_IFMT` bits.
    pub kind: u32,
    /// Its position (telldir): derived from the name alone, as ext4's hash cookies are, so
    /// that a reader resuming at a position in a newer listing (the kernel mixes its cached
    /// copy with fresh ones) neither repeats nor skips a name that stayed.
    pub off: u64,
    /// The topmost layer holding it.
    pub layer: usize,
}

/// The position of a name: 1 and 2 are `.` and `..`, the rest hash above them.
fn cookie(name: &OsStr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    // Positive as an off_t, never 0 (the start), 1 or 2.
    3 + h.finish() % (i64::MAX as u64 - 3)
}

/// `S_IFMT` bits of a `DT_*` directory entry type (a regular file when unknown; such an
/// entry is stat'ed).
fn kind_of(dt: u8) -> u32 {
    match dt {
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        _ => libc::S_IFREG,
    }
}

impl Union {
    /// A fingerprint of `dir`'s layers as they are now: entries added or removed by hand
    /// in any layer change a directory's mtime and ctime.
    fn layers_print(&self, dir: &Arc<Node>) -> Result<u64> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for d in self.slots_of(dir)?.iter() {
            let st = self.stat_slot(d)?;
            (d.layer, st.st_dev, st.st_ino).hash(&mut h);
            (st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec).hash(&mut h);
        }
        Ok(h.finish() | 1)
    }

    /// `dir` is about to be listed for the kernel, which keeps the listing until the
    /// directory changes through the mount or `listing_stale` says so.
    pub fn mark_listed(&self, dir: &Arc<Node>) -> Result<()> {
        let print = self.layers_print(dir)?;
        dir.listed.store(print, Ordering::Release);
        Ok(())
    }

    /// Did a layer of `dir` change since its listing was given to the kernel (by hand: the
    /// kernel drops its copy itself on changes made through the mount)? Answers yes once.
    pub fn listing_stale(&self, dir: &Arc<Node>) -> Result<bool> {
        let before = dir.listed.load(Ordering::Acquire);
        if before == 0 {
            return Ok(false);
        }
        let stale = self.layers_print(dir)? != before;
        if stale {
            dir.listed.store(0, Ordering::Release);
        }
        Ok(stale)
    }

    /// Snapshot the merged listing of `dir`: `.` and `..` first, then in position order.
    pub fn list(&self, dir: &Arc<Node>) -> Result<Vec<DirEntry>> {
        let dirs = self.dirs_of(dir)?;
        let parent_ino = dir.state().parent.as_ref().map_or(dir.ino, |p| p.ino);
        let mut out = vec![
            DirEntry {
                name: ".".into(),
                ino: dir.ino,
                kind: libc::S_IFDIR,
                off: 1,
                layer: 0,
            },
            DirEntry {
                name: "..".into(),
                ino: parent_ino,
                kind: libc::S_IFDIR,
                off: 2,
                layer: 0,
            },
        ];
        let mut seen: HashSet<OsString> = HashSet::new();
        for d in &dirs {
            // `.wh.` files hide names in the layers below, not in their own.
            let mut hide_below = Vec::new();
            let entries = sys::read_dir(d.raw(), self.opts.noatime)
                .op("readdir")
                .map_err(|e| e.at(dir.path()).in_layer(d.layer))?;
            for entry in entries {
                let name = entry.name;
                if let Some(target) = whiteout::whited_out(&name) {
                    hide_below.push(target.to_owned());
                    continue;
                }
                if whiteout::is_reserved(&name) || seen.contains(&name) {
                    continue;
                }
                let mut kind = kind_of(entry.kind);
                // A char device may be a whiteout, an empty file an xattr whiteout; and some
                // filesystems give no type at all.
                let needs_stat = kind == libc::S_IFCHR
                    || (d.xwhiteouts && kind == libc::S_IFREG)
                    || entry.kind == libc::DT_UNKNOWN;
                let st = if needs_stat || d.layer == 0 {
                    match sys::fstatat(d.raw(), &name) {
                        Ok(st) => Some(st),
                        Err(_) => continue, // gone since the listing was read
                    }
                } else {
                    None
                };
                if let Some(st) = &st {
                    if self.is_whiteout(d, &name, st) {
                        seen.insert(name);
                        continue;
                    }
                    kind = st.st_mode & libc::S_IFMT;
                }
                let ino = match &st {
                    Some(st) => self.derive_ino(Some(d.raw()), &name, d.layer, st).0,
                    None => {
                        let mut st = sys::zeroed_stat();
                        st.st_ino = entry.ino;
                        st.st_dev = self.stack().layers[d.layer].dev;
                        self.ino_of(&st)
                    }
                };
                seen.insert(name.clone());
                let off = cookie(&name);
                out.push(DirEntry {
                    name,
                    ino,
                    kind,
                    off,
                    layer: d.layer,
                });
            }
            seen.extend(hide_below);
        }
        out[2..].sort_unstable_by_key(|e| e.off);
        Ok(out)
    }

    /// Is the merged directory empty (for rmdir and rename over a directory)?
    pub fn is_empty_dir(&self, dir: &Arc<Node>) -> Result<bool> {
        Ok(self.list(dir)?.len() <= 2)
    }

    /// fsync of a merged directory (overlayfs' `ovl_dir_fsync`): its upper directory, which
    /// holds every change made through the mount; one only in lower layers has none to make
    /// durable.
    pub fn fsync_dir(&self, dir: &Arc<Node>, datasync: bool) -> Result<()> {
        let Some(upper) = self.dir_in(dir, 0) else {
            return Ok(());
        };
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        sys::openat(upper.as_raw_fd(), OsStr::new("."), flags, 0)
            .and_then(|fd| sys::fsync(fd.as_raw_fd(), datasync))
            .op("fsyncdir")
            .map_err(|e| e.at(dir.path()).in_layer(0))
    }
}
