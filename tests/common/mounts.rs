//! What /proc/self/mountinfo shows: mount points, their types, the unionmount on a path.

use super::*;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// /proc/self/mountinfo
// ---------------------------------------------------------------------------------------------

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (mount point, fstype) of every mount.
pub fn mounts() -> Vec<(PathBuf, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or("").to_string();
        out.push((PathBuf::from(unescape_mountinfo(mp)), fstype));
    }
    out
}

/// The unionmount mount visible on exactly `path` (the top one), if it is one.
pub fn visible_unionmount(path: &Path) -> Option<unionmount::mounts::Mount> {
    unionmount::mounts::visible(path).ok().filter(|m| {
        m.is_unionmount()
            && (m.mount_point == path || path.canonicalize().is_ok_and(|c| c == m.mount_point))
    })
}

/// The control socket of the unionmount mount visible on `path`, waited for until it
/// takes connections (the daemon binds it just after the mount is live).
pub fn control_socket(path: &Path) -> PathBuf {
    let m = visible_unionmount(path).expect("no unionmount mount there");
    let sock = unionmount::inspect::control::socket_path(m.dev);
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never answered",
            sock.display()
        );
        sleep(Duration::from_millis(10));
    }
    sock
}

/// fstype of the (topmost) mount on exactly `path`, if any.
pub fn mount_fstype(path: &Path) -> Option<String> {
    mounts()
        .into_iter()
        .rev()
        .find(|(mp, _)| mp == path)
        .map(|(_, t)| t)
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .map(|(mp, _)| mp)
        .filter(|mp| mp.starts_with(dir))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Kernel mounts a test makes: tmpfs, kernel overlayfs
// ---------------------------------------------------------------------------------------------

/// Overlay-style options: `lowerdir=L1:L2..,upperdir=UPPER,workdir=WORK`.
pub fn overlay_opts(lowers: &[&Path], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    )
}

/// A mount made with mount(8) (kernel overlayfs, a tmpfs), unmounted on drop: `umount`,
/// lazily if it is busy.
pub struct KernelMount {
    pub mnt: PathBuf,
    live: bool,
}

impl KernelMount {
    /// `mount ARGS... MNT`, which must succeed.
    pub fn new(args: &[&str], mnt: &Path) -> KernelMount {
        let ok = std::process::Command::new("mount")
            .args(args)
            .arg(mnt)
            .status()
            .is_ok_and(|st| st.success());
        assert!(ok, "mount {} {}", args.join(" "), mnt.display());
        KernelMount {
            mnt: mnt.to_path_buf(),
            live: true,
        }
    }

    /// `mount -t tmpfs [-o OPTS] tmpfs DIR`, making DIR first.
    pub fn tmpfs(dir: &Path, opts: &str) -> KernelMount {
        mkdir_p(dir);
        let mut args = vec!["-t", "tmpfs"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.push("tmpfs");
        KernelMount::new(&args, dir)
    }

    /// Kernel overlayfs: `mount -t overlay overlay -o EXTRAlowerdir=..,upperdir=..,workdir=..
    /// MNT`, making WORK first; `extra` ("metacopy=on,") goes before the layers.
    pub fn overlay(
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        mnt: &Path,
        extra: &str,
    ) -> KernelMount {
        mkdir_p(work);
        let opts = format!("{extra}{}", overlay_opts(lowers, upper, work));
        KernelMount::new(&["-t", "overlay", "overlay", "-o", &opts], mnt)
    }

    /// `umount MNT`, which must succeed.
    pub fn unmount(mut self) {
        self.live = false;
        assert!(
            succeeds("umount", [&self.mnt]),
            "umount {}",
            self.mnt.display()
        );
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        if self.live && !succeeds("umount", [&self.mnt]) {
            succeeds("umount", [OsStr::new("-l"), self.mnt.as_os_str()]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// FUSE connections
// ---------------------------------------------------------------------------------------------

/// The FUSE connection number of the unionmount mount visible on `mnt` (its device's minor
/// number, as /sys/fs/fuse/connections names it).
pub fn fuse_connection(mnt: &Path) -> Option<u32> {
    visible_unionmount(mnt).map(|m| m.dev.minor)
}

/// Abort the FUSE connection `conn` (`echo 1 > /sys/fs/fuse/connections/CONN/abort`,
/// mounting fusectl there first if need be): every request waiting on it fails with
/// ENOTCONN. The way out when a daemon cannot die (a thread of it blocked on its own
/// mount); needs root. Whether it worked.
pub fn abort_fuse_connection(conn: u32) -> bool {
    let dir = Path::new("/sys/fs/fuse/connections");
    if !dir.join(conn.to_string()).exists() {
        succeeds(
            "mount",
            ["-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"],
        );
    }
    fs::write(dir.join(conn.to_string()).join("abort"), "1").is_ok()
}

/// Each thread of process `pid` with its kernel stack (/proc/PID/task/*/stack; root only),
/// for a message about a process that hangs.
pub fn thread_stacks(pid: u32) -> String {
    let mut out = String::new();
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in rd.flatten() {
        let p = t.path();
        let comm = fs::read_to_string(p.join("comm")).unwrap_or_default();
        let stack = fs::read_to_string(p.join("stack")).unwrap_or_default();
        out += &format!("  thread {} {}", t.file_name().to_string_lossy(), comm);
        for l in stack.lines().take(12) {
            out += &format!("      {l}\n");
        }
    }
    out
}
