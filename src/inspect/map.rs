//! `unionmount tree`: the picture teachers draw on the whiteboard, from a live mount. What
//! the user sees in the merged tree, the branch that serves each entry, what was copied up,
//! which directories are opaque, and the lower entries a whiteout or an opaque directory
//! deleted, shown under their directory as `name (deleted, was in <branch>)`.
//!
//! This is the daemon's side: it answers one `tree DEPTH REL` request with the whole
//! subtree (`subtree`), read through the same union API `which` uses. The command's side,
//! drawing the reply as text or HTML, is `draw.rs`.
//!
//! The reply, after `ok`, one line each, fields separated by tabs:
//! - `branch I RW|RO NAME DIR` for every branch, top first;
//! - `entry LEVEL KIND FLAGS LAYER FROM SHADOWS CELLS NAME` in tree order (a directory's
//!   entries follow it, sorted by name), the first one (LEVEL 0) the directory asked for.
//!   KIND is `f d l c b p s`; FLAGS a comma list of `root new copied-up metacopy lower merged
//!   opaque moved deleted whiteout hidden`; LAYER the branch serving it (for a deleted entry,
//!   the one it was in); FROM the branches a directory merges (for a deleted entry, the one
//!   whose whiteout or opaque directory hides it); SHADOWS the lower branches holding a copy
//!   it hides; CELLS one character per branch for what that branch holds there on disk (`-`
//!   nothing, `f` file, `d` directory, `o` opaque directory, `w` whiteout, `l` symlink, `x`
//!   other); NAME escaped (`\\`, `\t`, `\n`, control and non-UTF-8 bytes as `\xNN`);
//! - `truncated` if the walk stopped at `MAX_ENTRIES`.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::union::Union;
use crate::union::node::{LayerDir, Node};
use crate::union::resolve::Found;
use crate::union::whiteout;

/// The most entries one `tree` reply carries.
pub const MAX_ENTRIES: usize = 100_000;

// ---------------------------------------------------------------------------------------------
// Daemon side: the `tree` request
// ---------------------------------------------------------------------------------------------

/// A name made safe for one tab-separated field (and for a terminal).
pub fn escape(name: &OsStr) -> String {
    let mut out = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                c if c.is_control() => {
                    let mut b = [0u8; 4];
                    for byte in c.encode_utf8(&mut b).bytes() {
                        let _ = write!(out, "\\x{byte:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// What a branch holds at `dir/name` on disk, as one cell character.
fn cell(dir: &Path, name: &OsStr) -> char {
    let p = dir.join(name);
    match std::fs::symlink_metadata(&p) {
        Ok(m) => {
            let ft = m.file_type();
            let whiteout = (ft.is_char_device() && m.rdev() == 0)
                || (ft.is_file() && m.len() == 0 && is_xattr_whiteout(&p));
            if whiteout {
                'w'
            } else if ft.is_dir() {
                if is_opaque(&p) { 'o' } else { 'd' }
            } else if ft.is_file() {
                'f'
            } else if ft.is_symlink() {
                'l'
            } else {
                'x'
            }
        }
        Err(_) if std::fs::symlink_metadata(dir.join(whiteout::whiteout_name(name))).is_ok() => 'w',
        Err(_) => '-',
    }
}

fn is_xattr_whiteout(p: &Path) -> bool {
    whiteout::WHITEOUT_XATTRS
        .iter()
        .any(|a| matches!(xattr::get(p, a), Ok(Some(_))))
}

fn is_opaque(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(whiteout::OPAQUE_MARKER)).is_ok()
        || whiteout::OPAQUE_XATTRS.iter().any(|a| {
            xattr::get(dir, a)
                .ok()
                .flatten()
                .and_then(|v| whiteout::parse_opaque_xattr(&v))
                == Some(whiteout::OpaqueXattr::Opaque)
        })
}

fn kind_char(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => 'f',
    }
}

fn kind_of_cell(c: char) -> char {
    match c {
        'o' => 'd',
        'x' => 'c',
        c => c,
    }
}

fn join_layers(v: &[usize]) -> String {
    v.iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Where a directory of the merged tree is on disk, in every branch that has it: the
/// branches it merges (open fds) and lower directories of the same name it hides.
struct Place {
    /// (layer, directory), by layer.
    dirs: Vec<(usize, PathBuf)>,
    /// Layers that contribute to the merged listing.
    merged: Vec<usize>,
    /// Keeps the fds behind the /proc paths in `dirs` open.
    _held: Vec<LayerDir>,
}

impl Place {
    fn new(contributing: Vec<LayerDir>, hidden: Vec<(usize, PathBuf)>) -> Place {
        let mut dirs: Vec<(usize, PathBuf)> = contributing
            .iter()
            .map(|d| (d.layer, crate::sys::proc_path(d.raw(), "".as_ref())))
            .collect();
        let merged: Vec<usize> = contributing.iter().map(|d| d.layer).collect();
        for (l, p) in hidden {
            if !merged.contains(&l) {
                dirs.push((l, p));
            }
        }
        dirs.sort_by_key(|d| d.0);
        Place {
            dirs,
            merged,
            _held: contributing,
        }
    }

    fn cells(&self, layers: usize, name: &OsStr) -> String {
        (0..layers)
            .map(|l| match self.dirs.iter().find(|d| d.0 == l) {
                Some((_, p)) => cell(p, name),
                None => '-',
            })
            .collect()
    }
}

struct Walk<'a> {
    u: &'a Union,
    depth: Option<usize>,
    out: Vec<String>,
    entries: usize,
    truncated: bool,
}

impl Walk<'_> {
    fn push(&mut self, line: String) -> bool {
        if self.entries >= MAX_ENTRIES {
            self.truncated = true;
            return false;
        }
        self.entries += 1;
        self.out.push(line);
        true
    }

    /// One merged entry `name` of the directory at `parent`, then its subtree.
    fn merged(
        &mut self,
        parent: &Arc<Node>,
        place: &Place,
        name: &OsStr,
        label: &str,
        found: Found,
        level: usize,
    ) -> Result<(), String> {
        let u = self.u;
        let n = u.stack().layers.len();
        let cells = place.cells(n, name);
        let top = found.layer;
        let is_dir = found.st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let from: Vec<usize> = if is_dir {
            found.dirs.iter().map(|d| d.layer).collect()
        } else {
            vec![top]
        };
        let shadows: Vec<usize> = cells
            .chars()
            .enumerate()
            .filter(|&(l, c)| l > top && !from.contains(&l) && !matches!(c, '-' | 'w'))
            .map(|(l, _)| l)
            .collect();
        let upper = top == 0 && u.writable();
        let mut flags = Vec::new();
        if is_dir {
            let opaque = found
                .dirs
                .first()
                .is_some_and(|d| u.dir_markers(d.raw()).map(|m| m.0).unwrap_or(false));
            // Moved within its layer: through this mount, or when that layer was an upper.
            let moved = place
                ._held
                .iter()
                .find(|d| d.layer == top)
                .is_some_and(|d| u.redirect_in(d.raw(), name).is_some());
            if opaque {
                flags.push("opaque");
            }
            if moved {
                flags.push("moved");
            }
            if from.len() > 1 {
                flags.push("merged");
            } else if upper && !opaque && !moved {
                flags.push(if shadows.is_empty() {
                    "new"
                } else {
                    "copied-up"
                });
            } else if !upper && !opaque {
                flags.push("lower");
            }
        } else if upper && found.data.is_some() {
            flags.push("metacopy");
        } else if upper && !shadows.is_empty() {
            flags.push("copied-up");
        } else if upper {
            flags.push("new");
        } else {
            flags.push("lower");
        }
        let line = format!(
            "entry\t{level}\t{}\t{}\t{top}\t{}\t{}\t{cells}\t{label}",
            kind_char(found.st.st_mode),
            flags.join(","),
            join_layers(&from),
            join_layers(&shadows),
        );
        if !self.push(line) || !is_dir || self.depth.is_some_and(|d| level >= d) {
            return Ok(());
        }
        // Lower directories of this name that do not merge into it: what it hides.
        let hidden: Vec<(usize, PathBuf)> = place
            .dirs
            .iter()
            .filter(|(l, _)| !from.contains(l))
            .filter(|(_, p)| {
                std::fs::symlink_metadata(p.join(name)).is_ok_and(|m| m.is_dir())
                    && cell(p, name) != 'w'
            })
            .map(|(l, p)| (*l, p.join(name)))
            .collect();
        let node = u.node_for(parent, name, found);
        let dirs = u.dirs_of(&node).map_err(|e| e.to_string())?;
        let child = Place::new(dirs, hidden);
        self.children(&node, &child, level + 1)
    }

    /// The entries of the directory `dir` at `place`: merged ones and deleted ones, by name.
    fn children(&mut self, dir: &Arc<Node>, place: &Place, level: usize) -> Result<(), String> {
        let u = self.u;
        let n = u.stack().layers.len();
        let listing = u.list(dir).map_err(|e| e.to_string())?;
        let mut names: BTreeMap<Vec<u8>, Option<OsString>> = BTreeMap::new();
        for e in listing.into_iter().skip(2) {
            names.insert(e.name.as_bytes().to_vec(), Some(e.name));
        }
        // Real entries of every branch's copy of this directory that the merged view lacks.
        for (_, p) in &place.dirs {
            let Ok(rd) = std::fs::read_dir(p) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                if whiteout::is_reserved(&name) || names.contains_key(name.as_bytes()) {
                    continue;
                }
                if !matches!(cell(p, &name), '-' | 'w') {
                    names.insert(name.as_bytes().to_vec(), None);
                }
            }
        }
        for (key, merged) in names {
            if self.truncated {
                break;
            }
            let name = OsStr::from_bytes(&key);
            let label = escape(name);
            if merged.is_some() {
                match u.probe(dir, name).map_err(|e| e.to_string())? {
                    Some(found) => self.merged(dir, place, name, &label, found, level)?,
                    None => continue, // gone since the listing
                }
                continue;
            }
            let cells = place.cells(n, name);
            let Some(was) = cells.chars().position(|c| !matches!(c, '-' | 'w')) else {
                continue;
            };
            // Hidden by a whiteout above it, or else by the directory the lookup stops at.
            let (reason, by) = match cells[..was].chars().position(|c| c == 'w') {
                Some(l) => ("whiteout", l),
                None => {
                    let last = place.merged.last().copied().unwrap_or(0);
                    let opaque = place
                        .dirs
                        .iter()
                        .find(|d| d.0 == last)
                        .is_some_and(|d| is_opaque(&d.1));
                    (if opaque { "opaque" } else { "hidden" }, last)
                }
            };
            let kind = kind_of_cell(cells.as_bytes()[was] as char);
            self.push(format!(
                "entry\t{level}\t{kind}\tdeleted,{reason}\t{was}\t{by}\t\t{cells}\t{label}"
            ));
        }
        Ok(())
    }
}

/// Reply to `tree DEPTH REL`: DEPTH a number of levels below REL or `-` for all of them.
pub fn subtree(u: &Union, arg: &str) -> Result<Vec<String>, String> {
    let (depth, rel) = arg.split_once(' ').unwrap_or((arg, ""));
    let depth = match depth {
        "-" | "" => None,
        d => Some(d.parse::<usize>().map_err(|_| format!("bad depth {d:?}"))?),
    };
    let rel = super::clean_relative(Path::new(rel))?;
    let mut w = Walk {
        u,
        depth,
        out: Vec::new(),
        entries: 0,
        truncated: false,
    };
    for l in &u.stack().layers {
        w.out.push(format!(
            "branch\t{}\t{}\t{}\t{}",
            l.index,
            if l.writable { "RW" } else { "RO" },
            escape(OsStr::new(&l.name())),
            escape(l.path.as_os_str())
        ));
    }
    let n = u.stack().layers.len();
    let root = u.root();
    let root_dirs = u.dirs_of(&root).map_err(|e| e.to_string())?;
    let comps: Vec<OsString> = rel.iter().map(|c| c.to_owned()).collect();
    if comps.is_empty() {
        let from: Vec<usize> = root_dirs.iter().map(|d| d.layer).collect();
        let cells: String = (0..n)
            .map(|l| if from.contains(&l) { 'd' } else { '-' })
            .collect();
        w.push(format!(
            "entry\t0\td\troot\t{}\t{}\t\t{cells}\t",
            from[0],
            join_layers(&from)
        ));
        if depth != Some(0) {
            let place = Place::new(root_dirs, Vec::new());
            w.children(&root, &place, 1)?;
        }
    } else {
        // Walk down to the parent of the entry asked for, keeping where it is on disk.
        let mut parent = root;
        let mut place = Place::new(root_dirs, Vec::new());
        for (i, name) in comps.iter().enumerate() {
            let here: PathBuf = comps[..=i].iter().collect();
            if whiteout::is_reserved(name) {
                return Err(format!(
                    "{}: names beginning .wh. never show in the merged tree",
                    here.display()
                ));
            }
            let found = u
                .probe(&parent, name)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "{}: no such file or directory in the merged tree",
                        here.display()
                    )
                })?;
            let is_dir = found.st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if i + 1 == comps.len() {
                let label = escape(here.as_os_str());
                w.merged(&parent, &place, name, &label, found, 0)?;
                break;
            }
            if !is_dir {
                return Err(format!("{}: not a directory", here.display()));
            }
            let from: Vec<usize> = found.dirs.iter().map(|d| d.layer).collect();
            let hidden: Vec<(usize, PathBuf)> = place
                .dirs
                .iter()
                .filter(|(l, p)| !from.contains(l) && cell(p, name) != 'w')
                .filter(|(_, p)| std::fs::symlink_metadata(p.join(name)).is_ok_and(|m| m.is_dir()))
                .map(|(l, p)| (*l, p.join(name)))
                .collect();
            parent = u.node_for(&parent, name, found);
            let dirs = u.dirs_of(&parent).map_err(|e| e.to_string())?;
            place = Place::new(dirs, hidden);
        }
    }
    if w.truncated {
        w.out.push("truncated".into());
    }
    Ok(w.out)
}

// ---------------------------------------------------------------------------------------------
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_for_one_field() {
        assert_eq!(escape(OsStr::new("a\tb\nc\\d")), "a\\tb\\nc\\\\d");
        assert_eq!(escape(OsStr::from_bytes(b"x\xffy\x1b")), "x\\xffy\\x1b");
        assert_eq!(escape(OsStr::new("héllo wörld")), "héllo wörld");
    }
}
