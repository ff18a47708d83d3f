//! The mount table, and which mount is visible at a path. One mount point can hold several
//! mounts stacked on each other (and other mount namespaces their own), but a path reaches
//! only the top one: that is the one a mount refuses to cover and the one the tools ask.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::sys;

/// A filesystem's device number. For a FUSE mount it names the connection (the directory
/// in /sys/fs/fuse/connections): bind mounts of it and its copies in other mount namespaces
/// share it, and no other live filesystem has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dev {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl std::str::FromStr for Dev {
    type Err = ();
    fn from_str(s: &str) -> Result<Dev, ()> {
        let (a, b) = s.split_once(':').ok_or(())?;
        Ok(Dev {
            major: a.parse().map_err(drop)?,
            minor: b.parse().map_err(drop)?,
        })
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    pub dev: Dev,
    /// The directory of the filesystem mounted here (`/` unless a bind mount of a subtree).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl Mount {
    /// `SOURCE on MOUNTPOINT type FSTYPE`, as mount(8) lists it.
    pub fn describe(&self) -> String {
        format!(
            "{} on {} type {}",
            self.source,
            self.mount_point.display(),
            self.fstype
        )
    }

    pub fn is_unionmount(&self) -> bool {
        self.fstype == "fuse.unionmount"
    }
}

/// Every mount of this process's mount namespace, in /proc/self/mountinfo's order.
pub fn table() -> Vec<Mount> {
    parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`
pub fn parse(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (Some(id), Some(dev), Some(root), Some(mp), Some(fstype), Some(source)) = (
            l.first().and_then(|v| v.parse().ok()),
            l.get(2).and_then(|v| v.parse().ok()),
            l.get(3),
            l.get(4),
            r.first(),
            r.get(1),
        ) else {
            continue;
        };
        out.push(Mount {
            id,
            dev,
            root: PathBuf::from(unescape(root)),
            mount_point: PathBuf::from(unescape(mp)),
            fstype: fstype.to_string(),
            source: unescape(source).to_string_lossy().into_owned(),
        });
    }
    out
}

/// The mount `path` resolves into now: for a mount point, the top of what is mounted
/// there. No FUSE daemon is asked (`sys::statx_mount`), so a dead or hung one cannot make
/// this fail or block for the mount point itself.
pub fn visible(path: &Path) -> io::Result<Mount> {
    entry_of(path, &sys::statx_mount(path)?)
}

fn entry_of(path: &Path, st: &sys::MountStat) -> io::Result<Mount> {
    let dev = Dev {
        major: st.dev.0,
        minor: st.dev.1,
    };
    let table = table();
    let found = match st.mnt_id {
        Some(id) => table.into_iter().find(|m| m.id == id),
        // Before Linux 5.8: the deepest mount point above the path with this device.
        None => table
            .into_iter()
            .filter(|m| m.dev == dev && path.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.as_os_str().len()),
    };
    found.ok_or_else(|| {
        io::Error::other(format!(
            "{}: its mount (device {dev}) is not in /proc/self/mountinfo",
            path.display()
        ))
    })
}

/// The mount whose root `path` is, if `path` is a mount point (of any filesystem). A path
/// that does not exist is no mount point.
pub fn mounted_at(path: &Path) -> io::Result<Option<Mount>> {
    let st = match sys::statx_mount(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        r => r?,
    };
    let m = entry_of(path, &st)?;
    let root = st.mount_root.unwrap_or(m.mount_point == path);
    Ok(root.then_some(m))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> OsString {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/x\134y\"), r"/x\y\");
    }

    #[test]
    fn mountinfo_lines() {
        let t = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                 612 27 0:52 / /tmp/m\\040n rw,nosuid shared:1 master:2 - fuse.unionmount \
                 /u=RW:/b=RO rw,user_id=0\n\
                 bad line\n";
        let m = parse(t);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[1],
            Mount {
                id: 612,
                dev: Dev {
                    major: 0,
                    minor: 52
                },
                root: "/".into(),
                mount_point: "/tmp/m n".into(),
                fstype: "fuse.unionmount".into(),
                source: "/u=RW:/b=RO".into(),
            }
        );
        assert_eq!(
            m[1].describe(),
            "/u=RW:/b=RO on /tmp/m n type fuse.unionmount"
        );
        assert_eq!("0:52".parse(), Ok(m[1].dev));
    }
}
