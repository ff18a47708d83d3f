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

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// An error for the user: one line, printed as `unionmount <cmd>: <msg>`.
pub type Result<T> = std::result::Result<T, String>;

/// The mount point of the unionmount mount that holds `path`, and `path` relative to it.
/// `path` need not exist (a whited-out name): its longest existing ancestor is resolved.
pub fn find_mount(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let abs = absolute(path)?;
    let mounts = unionmount_mounts();
    let best = mounts
        .iter()
        .filter(|m| abs.starts_with(m))
        .max_by_key(|m| m.as_os_str().len());
    match best {
        Some(m) => {
            let rel = abs.strip_prefix(m).unwrap_or(Path::new("")).to_path_buf();
            Ok((m.clone(), rel))
        }
        None => Err(format!(
            "{}: not inside a unionmount mount (see /proc/self/mountinfo)",
            path.display()
        )),
    }
}

/// Is `path` itself the mount point of a unionmount mount?
pub fn is_mount_point(path: &Path) -> bool {
    match absolute(path) {
        Ok(abs) => unionmount_mounts().contains(&abs),
        Err(_) => false,
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

/// Mount points of every `fuse.unionmount` mount (from /proc/self/mountinfo).
pub fn unionmount_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(sep + 1) == Some(&"fuse.unionmount")
            && let Some(mp) = fields.get(4)
        {
            out.push(PathBuf::from(unescape_mountinfo(mp)));
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.len() >= i + 4
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::os::unix::ffi::OsStringExt::from_vec(out)
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
    /// (path, writable, spec), top first.
    pub branches: Vec<(PathBuf, bool, String)>,
    /// `-o` options to mount the same way again (without branches).
    pub options: String,
}

impl Stack {
    pub fn upper(&self) -> Option<&Path> {
        self.branches.first().filter(|b| b.1).map(|b| b.0.as_path())
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
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y\"), r"/x\y\");
    }

    #[test]
    fn relative_paths_stay_inside() {
        assert_eq!(
            clean_relative(Path::new("./a//b/")).unwrap(),
            Path::new("a/b")
        );
        assert!(clean_relative(Path::new("a/../../etc")).is_err());
    }
}
