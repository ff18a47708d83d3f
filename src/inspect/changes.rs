//! The change set of an upper directory, as `docker diff` sees a container: every entry
//! added (A), changed (C) or deleted (D), read from the upper alone in any whiteout format.
//! `diff` prints it, `export` turns it into an OCI layer tarball and `commit` into a layer
//! directory.
//!
//! Added or changed: with the lower branches known (a mount point, or `--lower`), an upper
//! entry whose path exists in the lowers is C, else A. From the upper alone, an entry
//! carrying a copy-up origin xattr (`trusted.unionmount.origin`, `trusted.overlay.origin`)
//! is C. Our work directory and private xattrs are never part of it. A directory moved
//! through the mount (it carries a redirect, ours or the kernel's) is new content at its
//! new place (A, opaque, its whole subtree as the stack shows it); its old path is D
//! through the whiteout the move left there.
//!
//! What the lowers hold is read through the union itself (a read-only `Union` over them,
//! and one over the whole stack for moved directories), so redirects, whiteouts and opaque
//! directories in any layer mean here what they mean in the mount.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::union::node::{Loc, Node};
use crate::union::{Settings, Union, whiteout};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Added,
    Changed,
    Deleted,
}

impl Kind {
    pub fn letter(self) -> char {
        match self {
            Kind::Added => 'A',
            Kind::Changed => 'C',
            Kind::Deleted => 'D',
        }
    }
}

#[derive(Debug)]
pub struct Change {
    /// Relative to the root of the tree.
    pub path: PathBuf,
    pub kind: Kind,
    /// The real entry to read (in the upper, or through the mount for moved content);
    /// None for a deletion.
    pub src: Option<PathBuf>,
    pub meta: Option<Metadata>,
    /// Where a metadata-only upper file (overlayfs' metacopy) still has its data.
    pub data: Option<PathBuf>,
    /// A directory that hides everything of the same directory below it.
    pub opaque: bool,
    /// A directory moved here from this lower path (its content read through the mount).
    pub moved_from: Option<String>,
}

impl Change {
    pub fn is_dir(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| m.is_dir())
    }
}

/// Where the change set comes from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub upper: PathBuf,
    /// Snapshot layers below the upper whose changes count too, top first.
    pub above: Vec<PathBuf>,
    /// Lower branches, top first (to tell A from C, and name what an opaque dir deletes).
    pub lowers: Vec<PathBuf>,
}

#[derive(Debug, Default)]
pub struct ChangeSet {
    pub changes: Vec<Change>,
    /// Things the set could not represent faithfully (a moved directory without the mount).
    pub warnings: Vec<String>,
}

const ORIGIN_XATTRS: [&str; 2] = [whiteout::ORIGIN_XATTR, "trusted.overlay.origin"];

fn xattr_get(p: &Path, name: impl AsRef<OsStr>) -> Option<Vec<u8>> {
    xattr::get(p, name).ok().flatten()
}

/// Opaque marker or overlay xattr "y"; and whether its empty files may be xattr whiteouts.
fn dir_markers(dir: &Path) -> (bool, bool) {
    if std::fs::symlink_metadata(dir.join(whiteout::OPAQUE_MARKER)).is_ok() {
        return (true, false);
    }
    let mut xwh = false;
    for a in whiteout::OPAQUE_XATTRS {
        match xattr_get(dir, a)
            .as_deref()
            .and_then(whiteout::parse_opaque_xattr)
        {
            Some(whiteout::OpaqueXattr::Opaque) => return (true, false),
            Some(whiteout::OpaqueXattr::HasXattrWhiteouts) => xwh = true,
            None => {}
        }
    }
    (false, xwh)
}

fn is_whiteout_dev(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn sorted_names(dir: &Path) -> std::io::Result<Vec<OsString>> {
    let mut v: Vec<OsString> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(v)
}

fn is_meta(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b".wh..wh.")
}

/// The change set of `src.upper` and the snapshot layers `src.above` together: each
/// layer's own, composed oldest first. A later change of a path replaces an earlier one,
/// a later deletion or opaque directory drops what the earlier ones had below it, and
/// whether an entry is added, changed or deleted is decided against the lowers alone.
pub fn changes(src: &Source) -> super::Result<ChangeSet> {
    if src.above.is_empty() {
        return layer_changes(src);
    }
    let mut layers = vec![src.upper.clone()];
    layers.extend(src.above.iter().cloned());
    let base = if src.lowers.is_empty() {
        None
    } else {
        Some(read_only_union(&src.lowers)?)
    };
    let in_base = |p: &Path| base.as_ref().is_some_and(|u| resolve(u, p).is_some());
    // Keyed by components: a directory's entries sort right after it, parents first.
    let key = |p: &Path| p.iter().map(|c| c.as_bytes().to_vec()).collect::<Vec<_>>();
    let mut all: BTreeMap<Vec<Vec<u8>>, Change> = BTreeMap::new();
    let mut warnings = Vec::new();
    for i in (0..layers.len()).rev() {
        let mut lowers = layers[i + 1..].to_vec();
        lowers.extend(src.lowers.iter().cloned());
        let one = layer_changes(&Source {
            upper: layers[i].clone(),
            above: Vec::new(),
            lowers,
        })?;
        warnings.extend(one.warnings);
        for mut c in one.changes {
            let k = key(&c.path);
            if c.kind == Kind::Deleted || c.opaque {
                let below: Vec<_> = all
                    .range(k.clone()..)
                    .skip(1)
                    .take_while(|(o, _)| o.starts_with(&k))
                    .map(|(o, _)| o.clone())
                    .collect();
                for o in below {
                    all.remove(&o);
                }
            }
            // A directory an earlier layer made opaque stays so beneath a merging one.
            if let Some(old) = all.remove(&k) {
                c.opaque |= old.opaque && old.is_dir() && c.is_dir();
            }
            c.kind = match (c.kind, in_base(&c.path)) {
                (Kind::Deleted, false) => continue,
                (Kind::Deleted, true) => Kind::Deleted,
                (_, true) => Kind::Changed,
                (_, false) => Kind::Added,
            };
            all.insert(k, c);
        }
    }
    Ok(ChangeSet {
        changes: all.into_values().collect(),
        warnings,
    })
}

/// The change set of one layer directory over the lowers.
fn layer_changes(src: &Source) -> super::Result<ChangeSet> {
    let mut set = ChangeSet::default();
    let lowers = if src.lowers.is_empty() {
        None
    } else {
        Some(read_only_union(&src.lowers)?)
    };
    let mut all = vec![src.upper.clone()];
    all.extend(src.lowers.iter().cloned());
    let stack = read_only_union(&all)?;
    let w = Walker { src, lowers, stack };
    w.walk(&src.upper, Path::new(""), false, &mut set)
        .map_err(|e| format!("{}: {e}", src.upper.display()))?;
    Ok(set)
}

/// A union over `dirs` (top first), read-only, marking no access times.
fn read_only_union(dirs: &[PathBuf]) -> super::Result<Union> {
    let settings = Settings {
        noatime: true,
        ..Settings::read_only(dirs)
    };
    Union::new(&settings).map_err(|e| e.to_string())
}

/// The node at `rel` in `u`'s merged view, if the path is there.
fn resolve(u: &Union, rel: &Path) -> Option<Arc<Node>> {
    let mut node = u.root();
    for c in rel.iter() {
        let found = u.probe(&node, c).ok()??;
        node = u.node_for(&node, c, found);
    }
    Some(node)
}

/// The real path of a location the union found (its directory is an open fd).
fn loc_path(loc: &Loc) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::read_link(format!("/proc/self/fd/{}", loc.dir.as_raw_fd())).ok()?;
    Some(dir.join(&loc.name))
}

struct Walker<'a> {
    src: &'a Source,
    /// The lower branches alone (None without any).
    lowers: Option<Union>,
    /// The upper over the lowers: the merged view the mount shows.
    stack: Union,
}

impl Walker<'_> {
    fn in_lowers(&self, rel: &Path) -> bool {
        self.lowers
            .as_ref()
            .is_some_and(|u| resolve(u, rel).is_some())
    }

    /// Names the lowers show in the directory at `rel` (for what an opaque directory
    /// deletes).
    fn lower_names(&self, rel: &Path) -> Vec<OsString> {
        let Some(u) = &self.lowers else {
            return Vec::new();
        };
        let Some(dir) = resolve(u, rel).filter(|n| n.is_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<OsString> = u
            .list(&dir)
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n != "." && n != "..")
            .collect();
        out.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        out
    }

    fn walk(
        &self,
        dir: &Path,
        rel: &Path,
        added: bool,
        set: &mut ChangeSet,
    ) -> std::io::Result<()> {
        let names = sorted_names(dir)?;
        let (opaque, xwh) = dir_markers(dir);
        // Children in name order, deletions among them by the name they delete.
        let mut items: Vec<(OsString, Option<Metadata>)> = Vec::new();
        for n in &names {
            if is_meta(n) {
                continue;
            }
            if let Some(target) = whiteout::whited_out(n) {
                // An entry beside a whiteout of its own name replaced the lower one.
                if !names.iter().any(|m| m == target) {
                    items.push((target.to_owned(), None));
                }
                continue;
            }
            let p = dir.join(n);
            let m = std::fs::symlink_metadata(&p)?;
            let xattr_whiteout = xwh
                && m.is_file()
                && m.len() == 0
                && whiteout::WHITEOUT_XATTRS
                    .iter()
                    .any(|a| xattr_get(&p, a).is_some());
            if is_whiteout_dev(&m) || xattr_whiteout {
                items.push((n.clone(), None));
            } else {
                items.push((n.clone(), Some(m)));
            }
        }
        if opaque && !added && !rel.as_os_str().is_empty() && !self.src.lowers.is_empty() {
            for n in self.lower_names(rel) {
                if !items.iter().any(|(m, _)| *m == n) {
                    items.push((n, None));
                }
            }
        }
        items.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, meta) in items {
            let crel = rel.join(&name);
            let Some(meta) = meta else {
                // Kept even below a directory that looks new: from the upper alone a
                // copied-up directory may look new, and its whiteouts must not be lost.
                set.changes.push(Change {
                    path: crel,
                    kind: Kind::Deleted,
                    src: None,
                    meta: None,
                    data: None,
                    opaque: false,
                    moved_from: None,
                });
                continue;
            };
            let p = dir.join(&name);
            let replaced = names.contains(&whiteout::whiteout_name(&name));
            let kind = if added {
                Kind::Added
            } else if replaced {
                Kind::Changed
            } else if !self.src.lowers.is_empty() {
                if self.in_lowers(&crel) {
                    Kind::Changed
                } else {
                    Kind::Added
                }
            } else if ORIGIN_XATTRS.iter().any(|a| xattr_get(&p, a).is_some())
                || (meta.is_dir() && dir_markers(&p).0)
            {
                // Copied up; or an opaque directory, which replaced a lower one.
                Kind::Changed
            } else {
                Kind::Added
            };
            let moved = if meta.is_dir() {
                moved_from(&p, rel)
            } else {
                None
            };
            if let Some(from) = moved {
                self.moved(&p, &crel, from, meta, set)?;
                continue;
            }
            let is_dir = meta.is_dir();
            let child_opaque = is_dir && (dir_markers(&p).0 || replaced);
            let data = if meta.is_file() && is_metacopy(&p) {
                self.data_of(&crel, set)
            } else {
                None
            };
            set.changes.push(Change {
                path: crel.clone(),
                kind,
                src: Some(p.clone()),
                meta: Some(meta),
                data,
                opaque: child_opaque,
                moved_from: None,
            });
            if is_dir {
                self.walk(&p, &crel, kind == Kind::Added, set)?;
            }
        }
        Ok(())
    }

    /// A directory moved through the mount: new content at `rel`, its merged subtree as
    /// the whole stack shows it there (the upper directory over the lower directories its
    /// redirect leads to, through any redirects they carry in turn).
    fn moved(
        &self,
        upper: &Path,
        rel: &Path,
        from: String,
        meta: Metadata,
        set: &mut ChangeSet,
    ) -> std::io::Result<()> {
        if self.src.lowers.is_empty() {
            set.warnings.push(format!(
                "/{} was moved from {from} through the mount and its files still live in the \
                 lower branches there: give the mount point, or the lowers with --lower",
                rel.display()
            ));
        }
        set.changes.push(Change {
            path: rel.to_path_buf(),
            kind: Kind::Added,
            src: Some(upper.to_path_buf()),
            meta: Some(meta),
            data: None,
            opaque: true,
            moved_from: Some(from),
        });
        match resolve(&self.stack, rel).filter(|n| n.is_dir()) {
            Some(dir) => self.walk_merged(&dir, rel, set),
            None => Ok(()),
        }
    }

    /// Everything below the directory `dir` of the whole stack, as added, with each entry
    /// read where the union finds it.
    fn walk_merged(&self, dir: &Arc<Node>, rel: &Path, set: &mut ChangeSet) -> std::io::Result<()> {
        let u = &self.stack;
        let io = |e: crate::error::Error| std::io::Error::from_raw_os_error(e.errno);
        let pdirs = u.dirs_of(dir).map_err(io)?;
        let mut names: Vec<OsString> = u
            .list(dir)
            .map_err(io)?
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            let Some(found) = u.probe(dir, &n).map_err(io)? else {
                continue;
            };
            let Some(holder) = pdirs.iter().find(|d| d.layer == found.layer) else {
                continue;
            };
            let mut p = u.stack().layers[holder.layer].path.clone();
            p.extend(holder.path.iter());
            p.push(&n);
            let m = std::fs::symlink_metadata(&p)?;
            let data = found.data.as_ref().and_then(loc_path);
            if m.is_file() && data.is_none() && is_metacopy(&p) {
                set.warnings.push(format!(
                    "/{} holds metadata only and its data is in no lower branch",
                    rel.join(&n).display()
                ));
            }
            let child = u.node_for(dir, &n, found);
            set.changes.push(Change {
                path: rel.join(&n),
                kind: Kind::Added,
                src: Some(p),
                meta: Some(m),
                data,
                opaque: false,
                moved_from: None,
            });
            if child.is_dir() {
                self.walk_merged(&child, &rel.join(&n), set)?;
            }
        }
        Ok(())
    }

    /// Where the upper metadata-only file at `rel` has its data, as the stack resolves it.
    fn data_of(&self, rel: &Path, set: &mut ChangeSet) -> Option<PathBuf> {
        let found = resolve(&self.stack, rel).and_then(|n| n.state().data().cloned());
        let path = found.as_ref().and_then(loc_path);
        if path.is_none() {
            set.warnings.push(format!(
                "/{} holds metadata only and its data is in a lower branch: give the mount \
                 point, or the lowers with --lower",
                rel.display()
            ));
        }
        path
    }
}

/// The path a directory moved through the mount came from, as its redirect records it (ours
/// or the kernel's; a relative one names a sibling in the parent at `parent_rel`).
fn moved_from(p: &Path, parent_rel: &Path) -> Option<String> {
    let v = whiteout::REDIRECT_XATTRS
        .iter()
        .find_map(|a| xattr_get(p, a))?;
    Some(match whiteout::Redirect::parse(&v)? {
        whiteout::Redirect::Absolute(parts) => {
            format!("/{}", parts.iter().collect::<PathBuf>().display())
        }
        whiteout::Redirect::Relative(name) => format!("/{}", parent_rel.join(name).display()),
    })
}

/// An upper file that holds metadata only: its origin record says so, or kernel
/// overlayfs marked it (`metacopy=on`).
fn is_metacopy(p: &Path) -> bool {
    whiteout::METACOPY_XATTRS
        .iter()
        .any(|a| xattr_get(p, a).is_some())
        || xattr_get(p, whiteout::ORIGIN_XATTR)
            .and_then(|v| whiteout::decode_origin(&v))
            .is_some_and(|(_, m)| m)
}

/// Xattrs of a real entry worth carrying into a layer: all but the layering's own.
pub fn user_xattrs(p: &Path) -> Vec<(OsString, Vec<u8>)> {
    let Ok(names) = xattr::list(p) else {
        return Vec::new();
    };
    let mut out: Vec<(OsString, Vec<u8>)> = names
        .filter(|n| !whiteout::is_private_xattr(n))
        .filter_map(|n| xattr_get(p, &n).map(|v| (n, v)))
        .collect();
    out.sort();
    out
}
