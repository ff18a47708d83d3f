//! The mount's control channel: a unix socket the daemon serves, never part of the merged
//! tree. It lives at `/run/unionmount/mount-<major>-<minor>.sock` (root) or
//! `$XDG_RUNTIME_DIR/unionmount/...` (`/tmp/unionmount-<uid>/` without one), named by the
//! device number of the mount (its FUSE connection), not by the mount point: a mount point
//! can have a mount stacked on it, or be mounted again while an older daemon lives on for a
//! copy of its mount in another mount namespace, and each of them has its own socket. A tool
//! finds the socket of the mount visible at the path now (`mounts::visible`), and takes a
//! reply only if it names that device. The directory is 0700 and the socket 0600, both the
//! daemon's: only the user the daemon runs as (who can read every branch anyway) can
//! connect. One request line per connection; the reply is `ok <major>:<minor>` or `error
//! <message>`, then lines until the daemon closes the connection:
//!
//! - `stack`: `pid N`, `options OPTS`, then one `branch RW|RO|SNAP<TAB>DIR<TAB>SPEC` per
//!   layer (SNAP: a snapshot of the upper, spec `snapshot NAME`).
//! - `layers`: the live stack with file counts, counters since mount and kernel features.
//! - `which REL`: which branch serves REL (relative to the mount point), and what it hides.
//! - `tree DEPTH REL`: the merged subtree at REL with the branch of each entry and the lower
//!   entries it deletes or shadows (`map.rs` describes the lines).
//! - `trace`: one line per copy-up, whiteout, opaque directory or redirect, as they happen.
//! - `snapshot [NAME]`, `rollback [NAME]`, `drop NAME`, `snapshots`: see `snapshots.rs`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use super::report::{self, Info};
use crate::config::Config;
use crate::mounts::{self, Dev};
use crate::sys;
use crate::union::Union;

/// Where control sockets live for the current user.
pub fn runtime_dir() -> PathBuf {
    let uid = sys::geteuid();
    if sys::privileged() {
        return PathBuf::from("/run/unionmount");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("unionmount"),
        None => PathBuf::from(format!("/tmp/unionmount-{uid}")),
    }
}

/// The control socket of the mount with device number `dev`.
pub fn socket_path(dev: Dev) -> PathBuf {
    runtime_dir().join(format!("mount-{}-{}.sock", dev.major, dev.minor))
}

/// The running control server; the socket goes when this is dropped (at unmount).
pub struct Control {
    path: PathBuf,
    /// The socket's inode: a new daemon whose mount got the same device number (the old
    /// one's is gone) may have bound the path.
    ino: u64,
}

impl Control {
    /// Remove the socket (at unmount, or when a signal ends the daemon).
    pub fn remove(&self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Control {
    /// Bind the socket of the mount with device number `dev` and serve it on a thread of
    /// its own.
    pub fn start(union: Arc<Union>, config: &Config, dev: Dev) -> io::Result<Control> {
        let dir = runtime_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let meta = std::fs::symlink_metadata(&dir)?;
        if !meta.is_dir() || meta.uid() != sys::geteuid() {
            return Err(io::Error::other(format!(
                "{} is not a directory of ours",
                dir.display()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let path = socket_path(dev);
        // A socket already there is a gone mount's: no live filesystem shares our device
        // number. Its daemon may not have exited yet; it never removes a socket of ours.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let ino = std::fs::symlink_metadata(&path)?.ino();
        let info = Arc::new(Info::from_config(config));
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (union, info) = (union.clone(), info.clone());
                    let _ = std::thread::Builder::new()
                        .name("control-conn".into())
                        .spawn(move || {
                            if let Err(e) = serve_one(&union, &info, dev, stream) {
                                log::debug!("control: {e}");
                            }
                        });
                }
            })?;
        Ok(Control { path, ino })
    }
}

fn serve_one(union: &Union, info: &Info, dev: Dev, stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?)
        .take(8192)
        .read_line(&mut line)?;
    let line = line.trim_end_matches(['\n', '\r']);
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    let mut out = io::BufWriter::new(stream.try_clone()?);
    let reply = match cmd {
        "stack" => {
            // diff, export and commit read the upper next: the files as the mount shows
            // them (see union::file::HeldTruncations).
            match union.truncations_done() {
                Ok(()) => Ok(report::stack(union, info)),
                Err(e) => Err(e.to_string()),
            }
        }
        "layers" => Ok(report::layers(union, info)),
        "which" => {
            let _in = union.enter();
            report::which(union, arg)
        }
        "tree" => {
            let _in = union.enter();
            super::map::subtree(union, arg)
        }
        "snapshot" | "rollback" | "drop" | "snapshots" => super::snapshots::serve(union, cmd, arg),
        "trace" => {
            writeln!(out, "ok {dev}")?;
            out.flush()?;
            return trace(union, stream);
        }
        _ => Err(format!("unknown request {cmd:?}")),
    };
    match reply {
        Ok(lines) => {
            writeln!(out, "ok {dev}")?;
            for l in lines {
                writeln!(out, "{l}")?;
            }
        }
        Err(e) => writeln!(out, "error {e}")?,
    }
    out.flush()
}

/// Stream events until the client goes away.
fn trace(union: &Union, stream: UnixStream) -> io::Result<()> {
    let rx = union.events.subscribe();
    let mut probe = stream.try_clone()?;
    probe.set_nonblocking(true)?;
    let mut out = stream;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(ev) => writeln!(out, "{}", report::event_line(union, &ev))?,
            Err(RecvTimeoutError::Timeout) => {
                let mut b = [0u8; 64];
                match probe.read(&mut b) {
                    Ok(0) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

/// Send `request` to the daemon of the unionmount mount visible at `mountpoint` now; the
/// reply's lines after `ok`. A reply from any other daemon is refused.
pub fn request(mountpoint: &Path, request: &str) -> super::Result<BufReader<UnixStream>> {
    let m = match mounts::visible(mountpoint) {
        Ok(m) if m.is_unionmount() && m.mount_point == mountpoint => m,
        Ok(m) => {
            return Err(format!(
                "{}: the mount visible there is {}, not a unionmount mount",
                mountpoint.display(),
                m.describe()
            ));
        }
        Err(e) => {
            return Err(format!(
                "{}: {}",
                mountpoint.display(),
                super::mount_error(&e)
            ));
        }
    };
    let path = socket_path(m.dev);
    // The socket is bound just after the mount goes live: allow for that moment. Until
    // then the path may also hold the socket of a daemon that died without removing it,
    // on an earlier mount that had the same device number (the kernel reuses them).
    let deadline = Instant::now() + Duration::from_secs(2);
    let stream = loop {
        match UnixStream::connect(&path) {
            Ok(s) => break s,
            Err(e)
                if Instant::now() < deadline
                    && (e.kind() == io::ErrorKind::NotFound
                        || (e.kind() == io::ErrorKind::ConnectionRefused
                            && sys::statvfs(mountpoint).is_ok())) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(format!(
                    "{}: cannot reach the daemon's control socket {}: {e}{}",
                    mountpoint.display(),
                    path.display(),
                    match e.kind() {
                        io::ErrorKind::PermissionDenied =>
                            " (only the user the daemon runs as may use it)",
                        io::ErrorKind::NotFound =>
                            " (is it a unionmount mount of this user, and of this version?)",
                        io::ErrorKind::ConnectionRefused
                            if sys::statvfs(mountpoint)
                                .is_err_and(|e| { e.raw_os_error() == Some(libc::ENOTCONN) }) =>
                            " (its daemon has died: the mount answers \"Transport endpoint is \
                             not connected\"; `fusermount3 -uz` detaches it)",
                        io::ErrorKind::ConnectionRefused => " (its daemon has exited)",
                        _ => "",
                    }
                ));
            }
        }
    };
    let mut w = stream
        .try_clone()
        .map_err(|e| format!("control socket: {e}"))?;
    writeln!(w, "{request}").map_err(|e| format!("control socket: {e}"))?;
    let mut r = BufReader::new(stream);
    let mut first = String::new();
    r.read_line(&mut first)
        .map_err(|e| format!("control socket: {e}"))?;
    let first = first.trim_end();
    if let Some(e) = first.strip_prefix("error ") {
        return Err(e.to_string());
    }
    match first.strip_prefix("ok").map(str::trim) {
        Some(d) if d.parse() == Ok(m.dev) => Ok(r),
        Some(d) => Err(format!(
            "{}: the daemon on {} serves the mount with device {}, not the one visible there \
             ({}, device {}); its answer is not used",
            mountpoint.display(),
            path.display(),
            if d.is_empty() { "unknown" } else { d },
            m.describe(),
            m.dev
        )),
        None => Err("the daemon closed the connection".to_string()),
    }
}

/// The whole reply as lines.
pub fn request_lines(mountpoint: &Path, req: &str) -> super::Result<Vec<String>> {
    let r = request(mountpoint, req)?;
    r.lines()
        .collect::<io::Result<Vec<String>>>()
        .map_err(|e| format!("control socket: {e}"))
}

/// The stack of the mount at `mountpoint`.
pub fn stack(mountpoint: &Path) -> super::Result<super::Stack> {
    let mut s = super::Stack {
        mountpoint: mountpoint.to_path_buf(),
        pid: 0,
        branches: Vec::new(),
        snapshots: Vec::new(),
        options: String::new(),
    };
    for line in request_lines(mountpoint, "stack")? {
        let (k, v) = line.split_once(' ').unwrap_or((&line, ""));
        match k {
            "pid" => s.pid = v.parse().unwrap_or(0),
            "options" => s.options = v.to_string(),
            "branch" => {
                let f: Vec<&str> = v.splitn(3, '\t').collect();
                match (f.len(), f.first()) {
                    (3, Some(&"SNAP")) => {
                        let name = f[2].strip_prefix("snapshot ").unwrap_or(f[2]);
                        s.snapshots.push((name.to_string(), PathBuf::from(f[1])));
                    }
                    (3, _) => {
                        s.branches
                            .push((PathBuf::from(f[1]), f[0] == "RW", f[2].to_string()))
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(s)
}
