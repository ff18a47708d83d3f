//! Extended attributes of a merged entry (overlayfs' xattrs.c): get, list, set and remove,
//! with the union's own xattrs (whiteout marks, origins, owners) kept out of sight; and
//! whether any branch holds an xattr at all, so a read-only mount without any can say so
//! once instead of being asked for every file.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::fileattr::Change;
use super::layer::LayerStack;
use super::node::Node;
use super::{Union, idmap, whiteout};
use crate::error::{Context, Error, Result};
use crate::sys;

/// Entries a look for xattrs reads before it gives up (and takes the branches to hold some):
/// a few tenths of a second in the background, an image of some 100k files.
const SCAN_LIMIT: usize = 100_000;

/// What a look through the branches for xattrs found (see `Union::branches_hold_xattrs`).
#[derive(Debug, Default)]
pub struct Scan(Arc<AtomicU8>);

const NOT_LOOKED: u8 = 0;
const LOOKING: u8 = 1;
const NONE: u8 = 2;
const SOME: u8 = 3;

impl Union {
    pub fn getxattr(&self, node: &Arc<Node>, attr: &OsStr) -> Result<Vec<u8>> {
        let _place = node.place.read();
        if attr == whiteout::LAYER_XATTR {
            // Which branch serves this entry: "<index> <branch directory>" (never listed).
            let loc = self.locate(node)?;
            let layer = &self.stack().layers[loc.layer];
            return Ok(format!("{} {}", layer.index, layer.path.display()).into_bytes());
        }
        if whiteout::is_private_xattr(attr) || idmap::is_owner_xattr(attr.as_bytes()) {
            return Err(Error::new(libc::ENODATA, "getxattr"));
        }
        let loc = self.locate(node)?;
        sys::lgetxattr(loc.raw(), &loc.name, attr)
            .op("getxattr")
            .map_err(|e| e.at(node.path()).in_layer(loc.layer))?
            .ok_or_else(|| Error::new(libc::ENODATA, "getxattr"))
    }

    /// The xattr names a caller may see. `trusted.*` ones only for root: the kernel leaves
    /// that filtering to the filesystem (ext4 and overlayfs do it), and the daemon reads
    /// the branches with more privilege than the caller may have.
    pub fn listxattr(&self, node: &Arc<Node>, root: bool) -> Result<Vec<Vec<u8>>> {
        let _place = node.place.read();
        let loc = self.locate(node)?;
        let mut names = sys::llistxattr(loc.raw(), &loc.name)
            .op("listxattr")
            .map_err(|e| e.at(node.path()).in_layer(loc.layer))?;
        names.retain(|n| {
            !whiteout::is_private_xattr(OsStr::from_bytes(n))
                && !idmap::is_owner_xattr(n)
                && (root || !n.starts_with(b"trusted."))
        });
        Ok(names)
    }

    pub fn setxattr(&self, node: &Arc<Node>, attr: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        if whiteout::is_private_xattr(attr) || idmap::is_owner_xattr(attr.as_bytes()) {
            return Err(Error::new(libc::EPERM, "setxattr").at(node.path()));
        }
        self.check_protection(node, Change::Attr, "setxattr")?;
        let _place = node.place.read();
        let loc = self.copy_up_metadata(node)?;
        sys::lsetxattr(loc.raw(), &loc.name, attr, value, flags)
            .op("setxattr")
            .map_err(|e| e.at(node.path()).in_layer(0))
    }

    pub fn removexattr(&self, node: &Arc<Node>, attr: &OsStr) -> Result<()> {
        // Nothing to remove means nothing to copy up.
        self.getxattr(node, attr)?;
        // The kernel's own removal of a file capability (a write's) is no change of the
        // caller's: kernel overlayfs lets it through to the upper copy, as here.
        if attr != "security.capability" {
            self.check_protection(node, Change::Attr, "removexattr")?;
        }
        let _place = node.place.read();
        let was_lower = self.locate(node)?.layer > 0;
        let loc = self.copy_up_metadata(node)?;
        // What the daemon may not set (security.capability, trusted.*, unprivileged) is not
        // copied up: gone already, as asked. Removing it would fail, and with it the
        // kernel's removal of a capability before a chown or truncate.
        if was_lower && matches!(sys::lgetxattr(loc.raw(), &loc.name, attr), Ok(None)) {
            return Ok(());
        }
        sys::lremovexattr(loc.raw(), &loc.name, attr)
            .op("removexattr")
            .map_err(|e| e.at(node.path()).in_layer(0))
    }

    /// Whether an entry of any branch holds an xattr a caller could see (the union's own
    /// records do not count): `Some(false)` none does, `Some(true)` one does (or the
    /// branches were too big to look through), `None` not known yet: the first call starts
    /// the look, in the background. Always `Some(true)` for a writable stack, where one may
    /// be set through the mount at any time; for a read-only one the answer holds until a
    /// branch is edited by hand.
    pub fn branches_hold_xattrs(&self) -> Option<bool> {
        if self.writable() {
            return Some(true);
        }
        let state = &self.xattr_scan.0;
        match state.load(Ordering::Acquire) {
            NONE => return Some(false),
            SOME => return Some(true),
            LOOKING => return None,
            _ => {}
        }
        if state
            .compare_exchange(NOT_LOOKED, LOOKING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let (stack, shared) = (self.stack(), state.clone());
            let spawned = std::thread::Builder::new()
                .name("xattr-scan".into())
                .spawn(move || {
                    let found = hold_xattrs(&stack);
                    log::info!(
                        "branches looked through for xattrs: {}",
                        if found { "some found" } else { "none" }
                    );
                    shared.store(if found { SOME } else { NONE }, Ordering::Release);
                });
            if spawned.is_err() {
                state.store(SOME, Ordering::Release);
            }
        }
        None
    }

    /// The look's state in words, for `unionmount layers`.
    pub fn xattr_scan_state(&self) -> &'static str {
        if self.writable() {
            return "kept per file (writable stack)";
        }
        match self.xattr_scan.0.load(Ordering::Acquire) {
            NONE => "none in any branch",
            SOME => "some branch holds them",
            LOOKING => "looking through the branches",
            _ => "not asked for yet",
        }
    }
}

/// Does any entry of any layer (the roots included) hold an xattr a caller could see? Read
/// without marking access times where allowed; anything unreadable, or more than
/// `SCAN_LIMIT` entries, counts as yes.
fn hold_xattrs(stack: &LayerStack) -> bool {
    let mut seen = 0usize;
    // Directories still to look at, as (parent, name), a root as (itself, "."): opened
    // only when read, so the look holds one fd per level of the tree, not one per
    // directory waiting (a wide tree must not take the fds the daemon's requests need).
    let mut dirs: Vec<(Arc<OwnedFd>, OsString)> = stack
        .layers
        .iter()
        .map(|l| (l.root.clone(), ".".into()))
        .collect();
    while let Some((parent, name)) = dirs.pop() {
        if has_visible(parent.as_raw_fd(), &name) {
            return true;
        }
        let Ok(dir) = sys::open_dir_path(parent.as_raw_fd(), &name) else {
            return true;
        };
        let dir = Arc::new(dir);
        let Ok(entries) = sys::read_dir(dir.as_raw_fd(), true) else {
            return true;
        };
        for e in entries {
            seen += 1;
            if seen > SCAN_LIMIT {
                return true;
            }
            let is_dir = match e.kind {
                libc::DT_DIR => true,
                libc::DT_UNKNOWN => sys::fstatat(dir.as_raw_fd(), &e.name)
                    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR),
                _ => false,
            };
            if is_dir {
                dirs.push((dir.clone(), e.name));
            } else if has_visible(dir.as_raw_fd(), &e.name) {
                return true;
            }
        }
    }
    false
}

/// Does `name` in `dir` hold an xattr a caller could see? Unreadable counts as yes.
fn has_visible(dir: std::os::fd::RawFd, name: &OsStr) -> bool {
    sys::llistxattr(dir, name).map_or(true, |names| names.iter().any(|n| visible(n)))
}

/// An xattr a caller could be shown (the union's own are hidden from every listing).
fn visible(name: &[u8]) -> bool {
    !whiteout::is_private_xattr(OsStr::from_bytes(name)) && !idmap::is_owner_xattr(name)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::union::settings::Settings;

    fn look(u: &Union) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = u.branches_hold_xattrs() {
                return found;
            }
            assert!(Instant::now() < deadline, "the look never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_read_only_stack_is_looked_through_for_xattrs_a_caller_could_see() {
        let tmp = tempfile::tempdir().unwrap();
        let (top, bottom) = (tmp.path().join("top"), tmp.path().join("bottom"));
        fs::create_dir_all(top.join("a/b")).unwrap();
        fs::create_dir_all(&bottom).unwrap();
        fs::write(top.join("a/b/f"), "x").unwrap();
        fs::write(bottom.join("g"), "y").unwrap();
        // A whiteout mark of ours is no xattr of the caller's.
        if xattr::set(top.join("a"), "user.overlay.opaque", b"y").is_err() {
            eprintln!("skipped: {} takes no user xattrs", tmp.path().display());
            return;
        }
        let settings = Settings::read_only(&[top.clone(), bottom.clone()]);
        assert!(!look(&Union::new(&settings).unwrap()), "no xattr anywhere");

        xattr::set(bottom.join("g"), "user.k", b"v").unwrap();
        assert!(look(&Union::new(&settings).unwrap()), "one in the lower");
        xattr::remove(bottom.join("g"), "user.k").unwrap();
        xattr::set(top.join("a/b"), "user.k", b"v").unwrap();
        assert!(look(&Union::new(&settings).unwrap()), "one on a directory");
        xattr::remove(top.join("a/b"), "user.k").unwrap();
        xattr::set(&top, "user.k", b"v").unwrap();
        assert!(
            look(&Union::new(&settings).unwrap()),
            "one on a branch root"
        );

        // A writable stack may get one at any time: never "none".
        let mut writable = Settings::read_only(&[top, bottom]);
        writable.read_only = false;
        writable.branches[0].writable = true;
        xattr::remove(&writable.branches[0].path, "user.k").unwrap();
        assert_eq!(
            Union::new(&writable).unwrap().branches_hold_xattrs(),
            Some(true)
        );
    }
}
