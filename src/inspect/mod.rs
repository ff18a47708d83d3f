//! Instruments for looking at a union: which branch serves a path, the change set of an
//! upper (`diff`), a new layer made of it (`commit`), an OCI layer tarball (`export`), the
//! live stack (`layers`) and its event stream (`trace`).
//!
//! Commands that need the running mount talk to its daemon over the control socket
//! (`control.rs`); `diff` and `export` also work on an upper directory alone.

pub mod changes;
pub mod commit;
pub mod control;
pub mod diff;
pub mod draw;
pub mod export;
pub mod map;
pub mod report;
pub mod snapshots;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::mounts;
use crate::union::whiteout;

/// An error for the user: one line, printed as `unionmount <cmd>: <msg>`.
pub type Result<T> = std::result::Result<T, String>;

/// The mount point of the unionmount mount that holds `path`, and `path` relative to its
/// root. `path` need not exist (a whited-out name): its longest existing ancestor is
/// resolved. Only the mount visible there now counts: a unionmount mount covered by another
/// mount (stacked on the same mount point, or mounted on a directory inside it) does not
/// serve the path, and its daemon is not asked.
pub fn find_mount(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let abs = absolute(path)?;
    let mut existing = abs.as_path();
    let m = loop {
        match mounts::visible(existing) {
            Ok(m) => break m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match existing.parent() {
                Some(p) => existing = p,
                None => return Err(format!("{}: {e}", path.display())),
            },
            Err(e) => return Err(format!("{}: {}", path.display(), mount_error(&e))),
        }
    };
    if !m.is_unionmount() {
        return Err(match covered_unionmount(&m) {
            Some(u) => format!(
                "{}: not inside a unionmount mount: {} covers the unionmount mount {} there",
                path.display(),
                m.describe(),
                u.describe()
            ),
            None => format!(
                "{}: not inside a unionmount mount (see /proc/self/mountinfo)",
                path.display()
            ),
        });
    }
    let inside = abs.strip_prefix(&m.mount_point).map_err(|_| {
        format!(
            "{}: outside the mount point {} of its mount",
            path.display(),
            m.mount_point.display()
        )
    })?;
    let rel = m.root.strip_prefix("/").unwrap_or(&m.root).join(inside);
    Ok((m.mount_point, rel))
}

/// If `path` is the mount point of the unionmount mount visible there, that mount point
/// (absolute). A unionmount mount covered by another mount at `path` is an error that says
/// so: its daemon is not the one serving `path`.
pub fn mount_point(path: &Path) -> Result<Option<PathBuf>> {
    let abs = absolute(path)?;
    match mounts::mounted_at(&abs) {
        Ok(Some(m)) if m.is_unionmount() => Ok(Some(abs)),
        Ok(Some(m)) => match covered_unionmount(&m) {
            Some(u) => Err(format!(
                "{}: {} covers the unionmount mount {} there; unmount it to reach that one",
                path.display(),
                m.describe(),
                u.describe()
            )),
            None => Ok(None),
        },
        Ok(None) => Ok(None),
        Err(e) => Err(format!("{}: {}", path.display(), mount_error(&e))),
    }
}

/// A unionmount mount that `m` hides: one on the same mount point or on a directory
/// above it.
fn covered_unionmount(m: &mounts::Mount) -> Option<mounts::Mount> {
    mounts::table()
        .into_iter()
        .filter(|u| u.is_unionmount() && u.id != m.id && m.mount_point.starts_with(&u.mount_point))
        .max_by_key(|u| u.mount_point.as_os_str().len())
}

/// An error reaching a mount, with what ENOTCONN means for a FUSE mount.
pub fn mount_error(e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENOTCONN) {
        format!("{e}: the daemon of the mount there has died (`fusermount3 -uz` detaches it)")
    } else {
        e.to_string()
    }
}

/// `path` made absolute with symlinks resolved as far as it exists; the missing rest is
/// appended as written (`..` and `.` are refused there).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut rest: Vec<OsString> = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(c) => {
                let mut out = c;
                for r in rest.iter().rev() {
                    out.push(r);
                }
                return Ok(out);
            }
            Err(e) => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Err(format!("{}: {e}", path.display()));
                };
                rest.push(name.to_owned());
                existing = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_path_buf()
                };
            }
        }
    }
}

/// A relative path as the union sees it: components only, no `..`.
pub fn clean_relative(rel: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            _ => return Err(format!("{}: `..` is not allowed here", rel.display())),
        }
    }
    Ok(out)
}

/// A short name for a branch: its directory's last component ("base", "upper").
pub fn branch_name(path: &Path) -> String {
    path.file_name()
        .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The stack of a running mount as its daemon reports it (`stack` request).
#[derive(Debug, Clone)]
pub struct Stack {
    pub mountpoint: PathBuf,
    pub pid: u32,
    /// (path, writable, spec), top first: the branches it was mounted with.
    pub branches: Vec<(PathBuf, bool, String)>,
    /// The upper's snapshot layers (found beside it at mount), top first: (name, directory).
    pub snapshots: Vec<(String, PathBuf)>,
    /// `-o` options to mount the same way again (without branches).
    pub options: String,
}

impl Stack {
    pub fn upper(&self) -> Option<&Path> {
        self.branches.first().filter(|b| b.1).map(|b| b.0.as_path())
    }

    /// The snapshot layers above the one named `since` (all with `None`), and those from
    /// it down; an unknown name is an error.
    pub fn snapshots_since(&self, since: Option<&str>) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        let dirs = self.snapshots.iter().map(|s| s.1.clone());
        let Some(name) = since else {
            return Ok((dirs.collect(), Vec::new()));
        };
        let Some(at) = self.snapshots.iter().position(|s| s.0 == name) else {
            return Err(format!(
                "{}: no snapshot named {name} (see `unionmount snapshots`)",
                self.mountpoint.display()
            ));
        };
        let all: Vec<PathBuf> = dirs.collect();
        Ok((all[..at].to_vec(), all[at..].to_vec()))
    }

    pub fn lowers(&self) -> Vec<PathBuf> {
        let skip = usize::from(self.upper().is_some());
        self.branches
            .iter()
            .skip(skip)
            .map(|b| b.0.clone())
            .collect()
    }
}

/// What a layer directory holds, as `layers` and `snapshots` report it.
#[derive(Debug, Default, PartialEq)]
pub struct Usage {
    /// Entries other than directories: files, links, devices, whiteouts (each is a change).
    pub files: u64,
    pub dirs: u64,
    /// Of regular files.
    pub bytes: u64,
}

/// Walk a layer directory, our own hidden entries (the work and index directories, opaque
/// markers) left out. Unreadable entries are skipped: the figures are a report.
pub fn usage(dir: &Path) -> Usage {
    use std::os::unix::fs::MetadataExt;
    let mut u = Usage::default();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if whiteout::is_reserved(&name) && whiteout::whited_out(&name).is_none() {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                u.dirs += 1;
                todo.push(e.path());
            } else {
                u.files += 1;
                if m.is_file() {
                    u.bytes += m.size();
                }
            }
        }
    }
    u
}

/// Quote a path for a shell command line shown to the user.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_inside() {
        assert_eq!(
            clean_relative(Path::new("./a//b/")).unwrap(),
            Path::new("a/b")
        );
        assert!(clean_relative(Path::new("a/../../etc")).is_err());
    }

    /// Whiteouts and links count as files, directories apart; the work directory (and all
    /// in it) and opaque markers are ours and do not count.
    #[test]
    fn a_layer_usage_counts_changes_not_our_own_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        std::fs::create_dir_all(p("d")).unwrap();
        std::fs::create_dir_all(p(".wh..wh..work/inside")).unwrap();
        std::fs::write(p(".wh..wh..work/inside/x"), "xxxxxxxx").unwrap();
        std::fs::write(p("a"), "aaaaa").unwrap();
        std::fs::write(p(".wh.b"), "").unwrap();
        std::fs::write(p("d/.wh..wh..opq"), "").unwrap();
        std::fs::write(p("d/c"), "ccc").unwrap();
        std::os::unix::fs::symlink("a", p("l")).unwrap();
        let want = Usage {
            files: 4,
            dirs: 1,
            bytes: 8,
        };
        assert_eq!(usage(tmp.path()), want);
    }
}
