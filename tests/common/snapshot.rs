//! Snapshots of branch trees: every entry with its metadata, content hash and xattrs.

use super::*;
use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Snapshots of branch trees
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char(u64),
    Block(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits incl. setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files only (0 otherwise).
    pub size: u64,
    pub mtime: (i64, i64),
    /// Hash of a regular file's content, or a symlink's target.
    pub data: String,
    /// Sorted `user.*` and `trusted.*` extended attributes.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

pub type Snapshot = BTreeMap<String, Entry>;

/// Metadata, content hash/target and xattrs of one path (not following symlinks).
pub fn entry(path: &Path) -> Entry {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else if ft.is_char_device() {
        Kind::Char(md.rdev())
    } else {
        Kind::Block(md.rdev())
    };
    let data = match kind {
        Kind::File => {
            let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            format!("{:016x}", h.finish())
        }
        Kind::Symlink => fs::read_link(path).unwrap().display().to_string(),
        _ => String::new(),
    };
    let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Ok(names) = xattr::list(path) {
        for n in names {
            let n = n.to_string_lossy().into_owned();
            // trusted.unionmount.* is unionmount's own bookkeeping (the inode number a
            // copied-up file keeps), not part of the file's content.
            let ours = n.starts_with("trusted.unionmount.");
            if (n.starts_with("user.") || n.starts_with("trusted.")) && !ours {
                let v = xattr::get(path, &n).ok().flatten().unwrap_or_default();
                xattrs.push((n, v));
            }
        }
    }
    xattrs.sort();
    Entry {
        size: if kind == Kind::File { md.size() } else { 0 },
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: (md.mtime(), md.mtime_nsec()),
        data,
        xattrs,
    }
}

/// Every entry under `dir` (relative paths, "" is `dir` itself), skipping the work directory.
pub fn snapshot(dir: &Path) -> Snapshot {
    fn walk(base: &Path, rel: &Path, out: &mut Snapshot) {
        let p = base.join(rel);
        let e = entry(&p);
        let is_dir = e.kind == Kind::Dir;
        out.insert(rel.display().to_string(), e);
        if is_dir {
            for de in fs::read_dir(&p).unwrap() {
                let name = de.unwrap().file_name();
                if name == WORKDIR {
                    continue;
                }
                walk(base, &rel.join(name), out);
            }
        }
    }
    let mut out = Snapshot::new();
    walk(dir, Path::new(""), &mut out);
    out
}

/// Call `visit(path, lstat)` for `dir` and every entry below it, parents first, without
/// following symlinks.
pub fn walk_tree(dir: &Path, mut visit: impl FnMut(&Path, &fs::Metadata)) {
    fn walk(p: &Path, visit: &mut dyn FnMut(&Path, &fs::Metadata)) {
        let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        visit(p, &md);
        if md.is_dir() {
            for e in fs::read_dir(p).unwrap_or_else(|e| panic!("readdir {}: {e}", p.display())) {
                walk(&e.unwrap().path(), visit);
            }
        }
    }
    walk(dir, &mut visit);
}

/// Human-readable differences between two snapshots ("" if equal).
pub fn snapshot_diff(a: &Snapshot, b: &Snapshot) -> String {
    let mut s = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => s += &format!("  removed {k:?}: {v:?}\n"),
            Some(w) if w != v => {
                s += &format!("  changed {k:?}:\n    before {v:?}\n    after  {w:?}\n")
            }
            _ => {}
        }
    }
    for (k, w) in b {
        if !a.contains_key(k) {
            s += &format!("  added {k:?}: {w:?}\n");
        }
    }
    s
}
