//! Dropping a snapshot: its layer X merges into the layer A directly above it (the next
//! newer snapshot, or the upper), so that A alone means what A over X meant. Every other
//! snapshot keeps its meaning: A's point already included X's changes, and the points
//! below X never did. (Merged into the older layer below, X's changes would turn up in
//! that older snapshot's point.)
//!
//! Entries move by rename, so an entry keeps its inode wherever the view showed it from
//! X: whatever X shows that A does not hide moves into A; what A hides stays in X, which
//! is removed at the end. Where A's directory merged with X's, it takes over what X's said
//! of the layers below: opaque, or moved from (its redirect). A directory of A that X's
//! entry had cut short (a file or whiteout of X under it) becomes opaque. A metadata-only
//! file of A whose data was X's gets that data. Each step leaves the view as it was, and
//! the journal (`snapstore.rs`) has the merge run again to its end after a crash, from the
//! redirects planned before the first step (a rewritten redirect must not send a second
//! run elsewhere).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::WhiteoutFormat;
use super::layer::INDEX_DIR;
use super::whiteout::{self, Redirect};
use crate::error::{Context, Error, Result};
use crate::sys::{self, Stat};

/// A redirected directory of A and the path in X it merges with, found before the merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub a_rel: PathBuf,
    pub x_path: Option<PathBuf>,
}

fn open_dir(dir: RawFd, rel: &Path) -> Option<OwnedFd> {
    let name = if rel.as_os_str().is_empty() {
        OsStr::new(".")
    } else {
        rel.as_os_str()
    };
    let st = sys::fstatat(dir, name).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return None;
    }
    sys::openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
    .ok()
}

fn names(dir: RawFd) -> Vec<OsString> {
    let mut v: Vec<OsString> = sys::read_dir(dir, true)
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect();
    v.sort();
    v
}

fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Opaque (marker, xattr, or a `.wh.` whiteout beside it in its parent), whether it holds
/// xattr whiteouts, and its redirect.
fn marks(parent: RawFd, name: &OsStr, dir: RawFd) -> (bool, bool, Option<Redirect>) {
    let m = super::dir_marks_of(dir, true);
    let replaced = sys::fstatat(parent, &whiteout::whiteout_name(name)).is_ok();
    (m.opaque || replaced, m.xwhiteouts, m.redirect)
}

/// Is `name` in `dir` (stat `st`, or none) a whiteout, in any format?
fn whited_out(dir: RawFd, name: &OsStr, st: Option<&Stat>, xwhiteouts: bool) -> bool {
    match st {
        None => sys::fstatat(dir, &whiteout::whiteout_name(name)).is_ok(),
        Some(st) => {
            whiteout::is_whiteout_dev(st)
                || (xwhiteouts
                    && whiteout::may_be_xattr_whiteout(st)
                    && whiteout::WHITEOUT_XATTRS
                        .iter()
                        .any(|a| matches!(sys::lgetxattr(dir, name, a.as_ref()), Ok(Some(_)))))
        }
    }
}

fn absolute(r: &Redirect, parent_x: Option<&Path>) -> Option<PathBuf> {
    match r {
        Redirect::Absolute(p) => Some(p.iter().collect()),
        Redirect::Relative(n) => parent_x.map(|p| p.join(n)),
    }
}

/// Where A's directories meet X's: for each directory of A with a redirect, the path in X
/// it merges with. Read before anything moves.
pub fn plan(a_root: RawFd) -> Vec<Planned> {
    let mut out = Vec::new();
    plan_dir(a_root, &mut PathBuf::new(), Some(PathBuf::new()), &mut out);
    out
}

fn plan_dir(a_root: RawFd, a_rel: &mut PathBuf, x: Option<PathBuf>, out: &mut Vec<Planned>) {
    let Some(dir) = open_dir(a_root, a_rel) else {
        return;
    };
    for n in names(dir.as_raw_fd()) {
        if whiteout::is_reserved(&n) {
            continue;
        }
        let Some(sub) = open_dir(dir.as_raw_fd(), Path::new(&n)) else {
            continue;
        };
        let (opaque, _, redirect) = marks(dir.as_raw_fd(), &n, sub.as_raw_fd());
        a_rel.push(&n);
        let child = match (&redirect, opaque) {
            (_, true) => None,
            (Some(r), false) => {
                let to = absolute(r, x.as_deref());
                out.push(Planned {
                    a_rel: a_rel.clone(),
                    x_path: to.clone(),
                });
                to
            }
            (None, false) => x.as_ref().map(|p| p.join(&n)),
        };
        plan_dir(a_root, a_rel, child, out);
        a_rel.pop();
    }
}

/// The merge itself (see the module comment). `format`: how A marks a directory opaque
/// and records a redirect.
pub struct Merge<'a> {
    pub a_root: RawFd,
    pub x_root: RawFd,
    pub planned: &'a [Planned],
    pub format: WhiteoutFormat,
}

impl Merge<'_> {
    pub fn run(&self) -> Result<()> {
        self.merge_index()?;
        self.dir(&mut PathBuf::new(), Some(PathBuf::new()))
    }

    /// Entries of X's hard-link index that A's lacks.
    fn merge_index(&self) -> Result<()> {
        let Some(xi) = open_dir(self.x_root, Path::new(INDEX_DIR)) else {
            return Ok(());
        };
        if sys::fstatat(self.a_root, INDEX_DIR.as_ref()).is_err() {
            return sys::renameat2(
                self.x_root,
                INDEX_DIR.as_ref(),
                self.a_root,
                INDEX_DIR.as_ref(),
                sys::RENAME_NOREPLACE,
            )
            .op("move index");
        }
        let ai = open_dir(self.a_root, Path::new(INDEX_DIR))
            .ok_or_else(|| Error::new(libc::ENOTDIR, "open index"))?;
        for n in names(xi.as_raw_fd()) {
            if sys::fstatat(ai.as_raw_fd(), &n).is_err() {
                sys::renameat2(
                    xi.as_raw_fd(),
                    &n,
                    ai.as_raw_fd(),
                    &n,
                    sys::RENAME_NOREPLACE,
                )
                .op("move index entry")?;
            }
        }
        Ok(())
    }

    /// Merge into A's directory `a_rel` what X holds at `x` (None: nothing of X merges
    /// there), then go on into its subdirectories.
    fn dir(&self, a_rel: &mut PathBuf, x: Option<PathBuf>) -> Result<()> {
        let a = open_dir(self.a_root, a_rel)
            .ok_or_else(|| Error::new(libc::ENOENT, "merge").at(a_rel.display()))?;
        let a_dirs: Vec<OsString> = names(a.as_raw_fd())
            .into_iter()
            .filter(|n| !whiteout::is_reserved(n))
            .filter(|n| sys::fstatat(a.as_raw_fd(), n).is_ok_and(|s| is_dir(&s)))
            .collect();
        let xd = x.as_ref().and_then(|p| open_dir(self.x_root, p));
        // Entries moving in change the directory's times: the view's must not.
        let times = super::snapstore::dir_times(a.as_raw_fd(), Path::new(""));
        let a_moved = match (a_rel.parent(), a_rel.file_name()) {
            (Some(parent), Some(name)) => open_dir(self.a_root, parent)
                .is_some_and(|p| marks(p.as_raw_fd(), name, a.as_raw_fd()).2.is_some()),
            _ => false,
        };
        let mut x_moved = false;
        if let (Some(xd), Some(xp)) = (&xd, &x) {
            if let (Some(parent), Some(name)) = (xp.parent(), xp.file_name()) {
                let pfd = open_dir(self.x_root, parent)
                    .ok_or_else(|| Error::new(libc::ENOENT, "merge"))?;
                x_moved = marks(pfd.as_raw_fd(), name, xd.as_raw_fd()).2.is_some();
            }
            self.entries(&a, a_rel, xd)?;
            if let Some((at, mt)) = times {
                let _ = sys::futimens(a.as_raw_fd(), Some(Some(at)), Some(Some(mt)));
            }
        }
        // What this directory says of the layers below from now on: a redirect of A's, or
        // one X's part brings, now leads where X's would have led (or nowhere: opaque).
        let after = match &x {
            Some(xp) if a_moved || x_moved => Some(self.below_x(xp)),
            Some(xp) if xd.is_some() && self.below_x(xp).is_none() => Some(None),
            _ => None,
        };
        for n in a_dirs {
            let Some(sub) = open_dir(a.as_raw_fd(), Path::new(&n)) else {
                continue;
            };
            let (opaque, _, redirect) = marks(a.as_raw_fd(), &n, sub.as_raw_fd());
            a_rel.push(&n);
            let child = if opaque {
                None
            } else if redirect.is_some() {
                self.planned
                    .iter()
                    .find(|p| p.a_rel == *a_rel)
                    .and_then(|p| p.x_path.clone())
            } else {
                x.as_ref().map(|p| p.join(&n))
            };
            self.dir(a_rel, child)?;
            a_rel.pop();
        }
        if let Some(below) = after
            && !a_rel.as_os_str().is_empty()
        {
            self.take_over(a_rel, below)?;
        }
        Ok(())
    }

    /// A's directory at `a_rel` now holds X's part: it says of the layers below what X's
    /// said: where they hold its parts, or (None) nothing: opaque.
    fn take_over(&self, a_rel: &Path, below: Option<PathBuf>) -> Result<()> {
        let parent = open_dir(self.a_root, a_rel.parent().unwrap_or(Path::new("")))
            .ok_or_else(|| Error::new(libc::ENOENT, "merge").at(a_rel.display()))?;
        let name = a_rel.file_name().unwrap_or_default();
        let Some(to) = below else {
            for a in whiteout::REDIRECT_XATTRS {
                let _ = sys::lremovexattr(parent.as_raw_fd(), name, a.as_ref());
            }
            return self.cut_short(parent.as_raw_fd(), name);
        };
        let present = sys::llistxattr(parent.as_raw_fd(), name).unwrap_or_default();
        let had: Vec<&str> = whiteout::REDIRECT_XATTRS
            .into_iter()
            .filter(|a| present.iter().any(|p| p == a.as_bytes()))
            .collect();
        let parts: Vec<OsString> = to.iter().map(OsStr::to_owned).collect();
        let value = whiteout::format_redirect(&parts);
        let attrs: Vec<&str> = if had.is_empty() {
            match self.format {
                WhiteoutFormat::WhFiles => vec![whiteout::REDIRECT_XATTR],
                WhiteoutFormat::Overlay => vec![whiteout::REDIRECT_XATTRS[1]],
            }
        } else {
            had
        };
        for a in attrs {
            let set = sys::lsetxattr(parent.as_raw_fd(), name, a.as_ref(), &value, 0);
            if set.is_err() && a == whiteout::REDIRECT_XATTR {
                // Unprivileged: as the mount records one there.
                sys::lsetxattr(
                    parent.as_raw_fd(),
                    name,
                    whiteout::REDIRECT_XATTRS[2].as_ref(),
                    &value,
                    0,
                )
                .op("set redirect")
                .map_err(|e| e.at(a_rel.display()))?;
            } else {
                set.op("set redirect").map_err(|e| e.at(a_rel.display()))?;
            }
        }
        Ok(())
    }

    /// X's entries of one directory against A's.
    fn entries(&self, a: &OwnedFd, a_rel: &Path, x: &OwnedFd) -> Result<()> {
        let (ad, xd) = (a.as_raw_fd(), x.as_raw_fd());
        let a_xwh = super::dir_marks_of(ad, false).xwhiteouts;
        let x_xwh = super::dir_marks_of(xd, false).xwhiteouts;
        let x_names = names(xd);
        for n in &x_names {
            if n.as_bytes().starts_with(b".wh..wh.") {
                continue;
            }
            // A `.wh.` whiteout of X: alone it deletes; beside its entry, it goes with it.
            if let Some(target) = whiteout::whited_out(n) {
                if x_names.iter().any(|m| m == target) {
                    continue;
                }
                let a_st = sys::fstatat(ad, target).ok();
                match a_st {
                    Some(st) if is_dir(&st) && !whited_out(ad, target, Some(&st), a_xwh) => {
                        self.cut_short(ad, target)?
                    }
                    Some(_) => {}
                    None if whited_out(ad, target, None, a_xwh) => {}
                    None => self.move_entry(xd, n, ad)?,
                }
                continue;
            }
            let x_st = sys::fstatat(xd, n)
                .op("stat")
                .map_err(|e| e.at(n.to_string_lossy()))?;
            let x_is_wh = whited_out(xd, n, Some(&x_st), x_xwh);
            let a_st = sys::fstatat(ad, n).ok();
            match a_st {
                None if whited_out(ad, n, None, a_xwh) => {}
                None => {
                    if x_is_wh && x_xwh && !a_xwh {
                        // An xattr whiteout means nothing in a directory not marked for them.
                        self.mark_xwhiteouts(ad)?;
                    }
                    self.move_entry(xd, n, ad)?;
                    if sys::fstatat(xd, &whiteout::whiteout_name(n)).is_ok() {
                        self.move_entry(xd, &whiteout::whiteout_name(n), ad)?;
                    }
                }
                Some(st) if whited_out(ad, n, Some(&st), a_xwh) => {}
                Some(st) if is_dir(&st) => {
                    // Both directories: merged when the walk reaches A's (unless it hides
                    // X's). Anything else of X here ends the merge below A's directory.
                    if x_is_wh || !is_dir(&x_st) {
                        let sub = open_dir(ad, Path::new(n));
                        let hides = sub.is_some_and(|s| {
                            let (o, _, r) = marks(ad, n, s.as_raw_fd());
                            o || r.is_some()
                        });
                        if !hides {
                            self.cut_short(ad, n)?;
                        }
                    }
                }
                Some(st) => {
                    if st.st_mode & libc::S_IFMT == libc::S_IFREG
                        && x_st.st_mode & libc::S_IFMT == libc::S_IFREG
                        && !x_is_wh
                        && holds_metadata_only(ad, n)
                        && !holds_metadata_only(xd, n)
                    {
                        give_data(xd, n, ad, n).map_err(|e| e.at(a_rel.join(n).display()))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Where the layers below X look for what X holds at `xp`: its path, as X's redirects
    /// on the way down change it; None where X cuts them off (an opaque directory, a
    /// whiteout or a file of X on the way).
    fn below_x(&self, xp: &Path) -> Option<PathBuf> {
        let mut below = PathBuf::new();
        let mut at = Some(PathBuf::new());
        for c in xp.iter() {
            let dir = at.as_ref().and_then(|a| open_dir(self.x_root, a));
            let Some(dir) = dir else {
                below.push(c);
                continue;
            };
            let d = dir.as_raw_fd();
            let st = sys::fstatat(d, c).ok();
            let xwh = super::dir_marks_of(d, false).xwhiteouts;
            if whited_out(d, c, st.as_ref(), xwh) {
                return None;
            }
            match st {
                None => {
                    below.push(c);
                    at = None;
                }
                Some(st) if !is_dir(&st) => return None,
                Some(_) => {
                    let sub = open_dir(d, Path::new(c))?;
                    let (opaque, _, r) = marks(d, c, sub.as_raw_fd());
                    if opaque {
                        return None;
                    }
                    below = match r {
                        Some(Redirect::Absolute(to)) => to.iter().collect(),
                        Some(Redirect::Relative(q)) => below.join(q),
                        None => below.join(c),
                    };
                    if let Some(a) = at.as_mut() {
                        a.push(c);
                    }
                }
            }
        }
        Some(below)
    }

    /// Make A's directory `name` opaque (in A's format), its times kept.
    fn cut_short(&self, ad: RawFd, name: &OsStr) -> Result<()> {
        let times = super::snapstore::dir_times(ad, Path::new(name));
        super::dir::put_opaque(ad, name, self.format)?;
        if let Some((at, mt)) = times {
            let _ = sys::utimensat(ad, name, Some(Some(at)), Some(Some(mt)));
        }
        Ok(())
    }

    fn mark_xwhiteouts(&self, ad: RawFd) -> Result<()> {
        let value = b"x";
        let set = sys::lsetxattr(
            ad,
            ".".as_ref(),
            whiteout::OPAQUE_XATTRS[0].as_ref(),
            value,
            0,
        );
        if set.is_err() {
            sys::lsetxattr(
                ad,
                ".".as_ref(),
                whiteout::OPAQUE_XATTRS[1].as_ref(),
                value,
                0,
            )
            .op("mark xattr whiteouts")?;
        }
        Ok(())
    }

    fn move_entry(&self, xd: RawFd, name: &OsStr, ad: RawFd) -> Result<()> {
        sys::renameat2(xd, name, ad, name, sys::RENAME_NOREPLACE)
            .op("move into the layer above")
            .map_err(|e| e.at(name.to_string_lossy()))
    }
}

fn holds_metadata_only(dir: RawFd, name: &OsStr) -> bool {
    let present = sys::llistxattr(dir, name).unwrap_or_default();
    let has = |a: &str| present.iter().any(|p| p == a.as_bytes());
    whiteout::METACOPY_XATTRS.iter().any(|a| has(a))
        || (has(whiteout::ORIGIN_XATTR)
            && sys::lgetxattr(dir, name, whiteout::ORIGIN_XATTR.as_ref())
                .ok()
                .flatten()
                .and_then(|v| whiteout::decode_origin(&v))
                .is_some_and(|(_, m)| m))
}

/// The metadata-only file `aname` in `ad` gets the data of `xname` in `xd`, and loses its
/// marks.
fn give_data(xd: RawFd, xname: &OsStr, ad: RawFd, aname: &OsStr) -> Result<()> {
    let from = sys::open_file(xd, xname, libc::O_RDONLY).op("open data")?;
    let size = sys::fstat(from.as_raw_fd()).op("stat data")?.st_size as u64;
    let to = sys::open_file(ad, aname, libc::O_WRONLY).op("open metadata-only file")?;
    super::copyup::copy_data(&from, &to, size).op("copy data")?;
    sys::fsync(to.as_raw_fd(), false).op("fsync")?;
    for a in whiteout::METACOPY_XATTRS {
        let _ = sys::lremovexattr(ad, aname, a.as_ref());
    }
    if let Ok(Some(v)) = sys::lgetxattr(ad, aname, whiteout::ORIGIN_XATTR.as_ref())
        && let Some((ino, true)) = whiteout::decode_origin(&v)
    {
        let record = whiteout::encode_origin(ino, false);
        sys::lsetxattr(ad, aname, whiteout::ORIGIN_XATTR.as_ref(), &record, 0)
            .op("rewrite origin record")?;
    }
    Ok(())
}
