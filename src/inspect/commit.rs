//! `unionmount commit`: the "docker commit" of a union. The change set of the upper
//! becomes a new read-only layer directory, normalised to the `.wh.` format (whiteouts as
//! `.wh.<name>` files, opaque directories with `.wh..wh..opq`, moved directories
//! materialised), with owners, modes, times, xattrs and hard links kept.
//!
//! Without `--remount` the mount goes on untouched (as a container goes on after `docker
//! commit`). With `--remount` the upper becomes the layer and a fresh upper starts: the
//! mount is unmounted (refused while files are open in it: `snapshot` is the live way), the
//! layer written, the upper emptied, and the same mount point mounted again on
//! `UPPER=RW:LAYER=RO:LOWERS...` with the same options.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::changes::{ChangeSet, Kind, Source, changes, user_xattrs};
use crate::sys;
use crate::union::whiteout;

#[derive(Debug, Default)]
pub struct Counts {
    pub added: usize,
    pub changed: usize,
    pub deleted: usize,
}

fn apply_meta(dest: &Path, m: &std::fs::Metadata, src: &Path) -> io::Result<()> {
    let is_link = m.file_type().is_symlink();
    for (k, v) in user_xattrs(src) {
        if let Err(e) = xattr::set(dest, &k, &v)
            && !is_link
        {
            return Err(io::Error::other(format!(
                "set xattr {}: {e}",
                k.to_string_lossy()
            )));
        }
    }
    let d = dest.as_os_str();
    // Ownership needs privilege; unprivileged, entries belong to the committer.
    if let Err(e) = sys::fchownat(libc::AT_FDCWD, d, Some(m.uid()), Some(m.gid()))
        && sys::geteuid() == 0
    {
        return Err(e);
    }
    if !is_link {
        sys::fchmodat(libc::AT_FDCWD, d, m.mode() & 0o7777)?;
    }
    Ok(())
}

fn set_times(dest: &Path, m: &std::fs::Metadata) -> io::Result<()> {
    sys::utimensat(
        libc::AT_FDCWD,
        dest.as_os_str(),
        Some(Some((m.atime(), m.atime_nsec()))),
        Some(Some((m.mtime(), m.mtime_nsec()))),
    )
}

/// Write the change set into the empty directory `to` as a layer.
pub fn materialize(set: &ChangeSet, to: &Path) -> io::Result<Counts> {
    let mut counts = Counts::default();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut opaque: HashSet<PathBuf> = HashSet::new();
    let mut dirs: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
    for c in &set.changes {
        match c.kind {
            Kind::Added => counts.added += 1,
            Kind::Changed => counts.changed += 1,
            Kind::Deleted => counts.deleted += 1,
        }
        let dest = to.join(&c.path);
        let parent = c.path.parent().unwrap_or(Path::new("")).to_path_buf();
        let (Some(m), Some(src)) = (&c.meta, &c.src) else {
            if !opaque.contains(&parent) {
                let wh = to.join(&parent).join(whiteout::whiteout_name(
                    c.path.file_name().unwrap_or_default(),
                ));
                std::fs::File::create(&wh)?;
            }
            continue;
        };
        let ft = m.file_type();
        let err = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dest.display()));
        if ft.is_dir() {
            std::fs::create_dir(&dest).map_err(err)?;
            if c.opaque {
                opaque.insert(c.path.clone());
                std::fs::File::create(dest.join(whiteout::OPAQUE_MARKER)).map_err(err)?;
            }
            apply_meta(&dest, m, src).map_err(err)?;
            dirs.push((dest, m.clone()));
            continue;
        }
        if ft.is_file() && m.nlink() > 1 {
            let key = (m.dev(), m.ino());
            if let Some(first) = links.get(&key) {
                std::fs::hard_link(first, &dest).map_err(err)?;
                continue;
            }
            links.insert(key, dest.clone());
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(src)?, &dest).map_err(err)?;
        } else if ft.is_file() {
            let data = c.data.as_deref().unwrap_or(src);
            std::io::copy(
                &mut std::fs::File::open(data)?,
                &mut std::fs::File::create(&dest)?,
            )
            .map_err(err)?;
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_socket() {
                continue;
            }
            sys::mknodat(libc::AT_FDCWD, dest.as_os_str(), m.mode(), m.rdev()).map_err(err)?;
        }
        apply_meta(&dest, m, src).map_err(err)?;
        set_times(&dest, m).map_err(err)?;
    }
    // Directory times last, deepest first: creating their entries changed them.
    for (d, m) in dirs.iter().rev() {
        set_times(d, m)?;
    }
    Ok(counts)
}

/// `to` must be new or an empty directory, and outside the mount and every branch.
fn check_target(to: &Path, mp: &Path, branches: &[PathBuf]) -> super::Result<PathBuf> {
    let abs = super::absolute(to)?;
    if abs.starts_with(mp) {
        return Err(format!("{}: inside the mount point", to.display()));
    }
    for b in branches {
        if abs.starts_with(b) || b.starts_with(&abs) {
            return Err(format!(
                "{}: overlaps the branch {}",
                to.display(),
                b.display()
            ));
        }
    }
    match std::fs::read_dir(&abs) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(format!("{}: exists and is not empty", to.display()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&abs).map_err(|e| format!("{}: {e}", to.display()))?;
        }
        Err(e) => return Err(format!("{}: {e}", to.display())),
    }
    Ok(abs)
}

fn summary(c: &Counts) -> String {
    format!(
        "{} added, {} changed, {} deleted",
        c.added, c.changed, c.deleted
    )
}

/// Wait until the daemon `pid` has exited (it cleans its work directory on the way out).
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    // Gone, or a zombie its parent has not reaped yet.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            let state = st.rsplit_once(')').map(|(_, r)| r.trim_start());
            !state.is_some_and(|r| r.starts_with('Z') || r.starts_with('X'))
        })
    };
    while alive() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn empty_dir(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

fn mount_args(stack: &super::Stack, layer: Option<&Path>) -> Vec<String> {
    let mut spec: Vec<String> = Vec::new();
    for (i, (p, w, _)) in stack.branches.iter().enumerate() {
        spec.push(format!("{}={}", p.display(), if *w { "RW" } else { "RO" }));
        if i == 0
            && let Some(l) = layer
        {
            spec.push(format!("{}=RO", l.display()));
        }
    }
    vec![
        "-o".into(),
        stack.options.clone(),
        spec.join(":"),
        stack.mountpoint.display().to_string(),
    ]
}

/// `println!` that ignores a closed stdout: once it has started, a commit goes on whoever
/// stopped reading (`unionmount commit ... | head -1` must not leave the stack half swapped).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub fn run(mountpoint: &Path, to: &Path, remount: bool) -> super::Result<()> {
    let Some(mp) = super::mount_point(mountpoint)? else {
        return Err(format!(
            "{}: not the mount point of a unionmount mount",
            mountpoint.display()
        ));
    };
    let stack = super::control::stack(&mp)?;
    let Some(upper) = stack.upper().map(Path::to_path_buf) else {
        return Err(format!(
            "{}: a read-only stack has no upper branch to commit",
            mp.display()
        ));
    };
    let branches: Vec<PathBuf> = stack.branches.iter().map(|b| b.0.clone()).collect();
    let layer = check_target(to, &mp, &branches)?;
    let src = Source {
        upper: upper.clone(),
        above: stack.snapshots.iter().map(|s| s.1.clone()).collect(),
        lowers: stack.lowers(),
    };
    if !remount {
        let set = changes(&src)?;
        let counts = materialize(&set, &layer).map_err(|e| e.to_string())?;
        say!(
            "committed {} to {} ({})",
            upper.display(),
            layer.display(),
            summary(&counts)
        );
        say!(
            "the mount goes on with its upper unchanged. To stack the layer under a fresh upper:\n  \
             unionmount commit {} --to NEWDIR --remount\nor mount it yourself:\n  unionmount {}",
            super::shell_quote(&mp.display().to_string()),
            mount_args(&stack, Some(&layer))
                .iter()
                .map(|a| super::shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        return Ok(());
    }
    for p in branches.iter().chain([&layer, &mp]) {
        let s = p.display().to_string();
        if s.contains([':', '=', ',']) {
            return Err(format!(
                "{s}: cannot remount with a path holding ':', '=' or ','"
            ));
        }
    }
    let _ = std::fs::remove_dir(&layer);
    // 1. Unmount: refused while anything is open in the mount.
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(&mp)
        .output()
        .map_err(|e| format!("fusermount3: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let busy = err.contains("busy");
        return Err(format!(
            "cannot unmount {}: {}{}\nnothing was changed",
            mp.display(),
            err.trim(),
            if busy {
                "\nthe mount is busy: a process has a file open or its working directory in it. \
                 --remount unmounts; close them (`fuser -vm MOUNTPOINT` lists them) and \
                 retry, commit without --remount, or take a live `unionmount snapshot`"
            } else {
                ""
            }
        ));
    }
    if stack.pid != 0 && !wait_gone(stack.pid, Duration::from_secs(10)) {
        return Err(format!(
            "the daemon (pid {}) has not exited after unmount; the upper is left as it was",
            stack.pid
        ));
    }
    say!("unmounted {}", mp.display());
    // 2. The layer, then a fresh upper.
    let layer = check_target(&layer, &mp, &branches)?;
    let committed =
        changes(&src).and_then(|set| materialize(&set, &layer).map_err(|e| e.to_string()));
    let counts = match committed {
        Ok(c) => c,
        Err(e) => {
            let _ = remount_with(&stack, None);
            return Err(format!(
                "commit to {} failed: {e}; the upper is untouched and the old stack remounted",
                layer.display()
            ));
        }
    };
    say!(
        "committed {} to {} ({})",
        upper.display(),
        layer.display(),
        summary(&counts)
    );
    empty_dir(&upper).map_err(|e| format!("emptying {}: {e}", upper.display()))?;
    say!("emptied the upper {}", upper.display());
    // The snapshots' changes are in the layer too: as points to go back to they would
    // now undo the commit, and stacked again they would hide the layer.
    if !stack.snapshots.is_empty() {
        let store = crate::union::snapstore::store_of(&upper);
        crate::union::snapstore::remove_tree(&store)
            .map_err(|e| format!("removing the committed snapshots: {e}"))?;
        say!(
            "removed the snapshots committed with it ({}: {})",
            store.display(),
            stack
                .snapshots
                .iter()
                .map(|s| s.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // 3. Mount again with the layer under the fresh upper.
    let args = remount_with(&stack, Some(&layer))?;
    say!(
        "remounted: unionmount {}",
        args.iter()
            .map(|a| super::shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

fn remount_with(stack: &super::Stack, layer: Option<&Path>) -> super::Result<Vec<String>> {
    let args = mount_args(stack, layer);
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let st = Command::new(exe)
        .args(&args)
        .status()
        .map_err(|e| format!("remount: {e}"))?;
    if !st.success() {
        return Err(format!(
            "remount failed ({st}): unionmount {}",
            args.join(" ")
        ));
    }
    Ok(args)
}
