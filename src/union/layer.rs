//! The branch stack: one O_PATH fd per branch root, the upper on top, and the work
//! directory where copy-ups are assembled before they are moved into place.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::snapstore::{Snap, Store};
use super::{Branch, Settings};
use crate::error::{Context, Error, Result};
use crate::sys;

/// Default work directory inside the upper. Its name begins `.wh..wh.`, so it is hidden
/// from the merged view and can never be created through it.
pub const DEFAULT_WORKDIR: &str = ".wh..wh..work";

/// Copies of files hard-linked in a lower layer, one per lower inode, linked to every name
/// copied up (see `index.rs`). In the upper beside the work dir, hidden the same way, and
/// kept across mounts.
pub const INDEX_DIR: &str = ".wh..wh..index";

#[derive(Debug)]
pub struct Layer {
    /// 0 is the top of the stack.
    pub index: usize,
    pub path: PathBuf,
    pub spec: String,
    pub root: Arc<OwnedFd>,
    pub writable: bool,
    pub dev: u64,
    /// A read-only layer that was an upper once: the hard-link index it kept (see
    /// index.rs). Opened at mount, so a lookup asks no more than a field.
    pub old_index: Option<Arc<OwnedFd>>,
    /// A snapshot of the upper (see `snapstore.rs`).
    pub snapshot: Option<Snap>,
}

impl Layer {
    /// Its name for people: `snapshot NAME`, else the directory's last component.
    pub fn name(&self) -> String {
        match &self.snapshot {
            Some(s) => format!("snapshot {}", s.name),
            None => self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.path.display().to_string()),
        }
    }
}

/// Where copy-ups and opaque directories are built: same filesystem as the upper, so a
/// finished object is published by one rename.
#[derive(Debug)]
pub struct WorkDir {
    pub path: PathBuf,
    pub fd: OwnedFd,
    /// The work dir was made by us inside the upper and is removed again at unmount.
    owned: Option<(Arc<OwnedFd>, OsString)>,
    counter: AtomicU64,
    /// Held shared while we use the dir: a daemon still exiting from the previous mount
    /// removes it only if it can take it exclusively (nobody else uses it).
    lock: OwnedFd,
}

impl WorkDir {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A fresh name for an object under construction.
    pub fn temp_name(&self) -> OsString {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#{}-{n}", std::process::id()))
    }

    /// Where to build a new entry before publishing it: the work dir itself, or, given the
    /// target directory's default ACL, a fresh directory in it carrying that ACL (an entry
    /// inherits a default ACL only from the directory it is made in). Removed on drop.
    pub fn staging(&self, default_acl: Option<&[u8]>) -> Result<Staging<'_>> {
        let Some(acl) = default_acl else {
            return Ok(Staging {
                work: self,
                sub: None,
            });
        };
        let name = self.temp_name();
        sys::mkdirat(self.raw(), &name, 0o700).op("make staging dir")?;
        let staging = sys::open_dir_path(self.raw(), &name)
            .map(|fd| Staging {
                work: self,
                sub: Some((fd, name.clone())),
            })
            .op("open staging dir");
        if staging.is_err() {
            let _ = sys::unlinkat(self.raw(), &name, true);
        }
        let staging = staging?;
        sys::lsetxattr(staging.raw(), ".".as_ref(), ACL_DEFAULT.as_ref(), acl, 0)
            .op("set default ACL on staging dir")?;
        Ok(staging)
    }

    /// Remove our own leftovers only (another daemon may be mounting on the same upper).
    fn clean_own(&self) {
        let prefix = format!("#{}-", std::process::id());
        let Ok(entries) = std::fs::read_dir(sys::proc_path(self.raw(), OsStr::new(""))) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with(&prefix) {
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                if is_dir
                    && let Ok(fd) = sys::openat(
                        self.raw(),
                        &name,
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        0,
                    )
                {
                    let _ = remove_tree_contents(fd.as_raw_fd());
                }
                let _ = sys::unlinkat(self.raw(), &name, is_dir);
            }
        }
    }

    /// Remove everything in the work dir: leftovers of a crash are incomplete by definition.
    fn clean(&self) -> Result<()> {
        let dir = sys::openat(
            self.raw(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .op("open workdir")?;
        remove_tree_contents(dir.as_raw_fd()).map_err(|e| e.at(self.path.display()))
    }
}

/// The xattr holding a directory's default POSIX ACL.
pub const ACL_DEFAULT: &str = "system.posix_acl_default";

/// A directory in the work dir to build entries in (see `WorkDir::staging`).
pub struct Staging<'a> {
    work: &'a WorkDir,
    sub: Option<(OwnedFd, OsString)>,
}

impl Staging<'_> {
    pub fn raw(&self) -> RawFd {
        match &self.sub {
            Some((fd, _)) => fd.as_raw_fd(),
            None => self.work.raw(),
        }
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if let Some((_, name)) = &self.sub {
            let _ = sys::unlinkat(self.work.raw(), name, true);
        }
    }
}

/// Delete every entry below `dir` (the directory itself stays).
pub fn remove_tree_contents(dir: RawFd) -> Result<()> {
    let entries = std::fs::read_dir(sys::proc_path(dir, OsStr::new(""))).op("readdir")?;
    for entry in entries {
        let entry = entry.op("readdir")?;
        let name = entry.file_name();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            let sub = sys::openat(
                dir,
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .op("open")?;
            remove_tree_contents(sub.as_raw_fd())?;
        }
        sys::unlinkat(dir, &name, is_dir).op("unlink")?;
    }
    Ok(())
}

#[derive(Debug)]
pub struct LayerStack {
    pub layers: Vec<Layer>,
    pub work: Option<WorkDir>,
    /// The upper's index directory, once it exists.
    index: parking_lot::Mutex<Option<Arc<OwnedFd>>>,
    /// Per layer, the xattrs its files' owners and modes are shown from (see
    /// `Union::find_override_xattrs`); all empty without `xattr_permissions=` or such a layer.
    pub override_xattrs: std::sync::OnceLock<Vec<Vec<&'static str>>>,
}

impl LayerStack {
    /// Open every branch; prepare (and clean) the work directory if there is an upper.
    pub fn open(settings: &Settings) -> Result<LayerStack> {
        Self::open_with(settings, true)
    }

    /// The stack as the disk holds it now, for a mount that swaps its stack live (see
    /// `snapshot.rs`): an operation just finished, and the trash is emptied elsewhere.
    pub fn reopen(settings: &Settings) -> Result<LayerStack> {
        Self::open_with(settings, false)
    }

    fn open_with(settings: &Settings, recover: bool) -> Result<LayerStack> {
        let mut branches: Vec<(Branch, Option<Snap>)> = settings
            .branches
            .iter()
            .map(|b| (b.clone(), None))
            .collect();
        // The upper's snapshots stack right below it, newest first.
        if let Some(upper) = settings.upper() {
            let store = Store::of_upper(&upper.path);
            if recover {
                store.recover(!settings.read_only, settings.whiteout)?;
            }
            for s in store.list()?.into_iter().rev() {
                let b = Branch {
                    path: s.dir.clone(),
                    writable: false,
                    spec: format!("snapshot {}", s.name),
                };
                let at = branches.len() - settings.branches.len() + 1;
                branches.insert(at, (b, Some(s)));
            }
        }
        let mut layers = Vec::with_capacity(branches.len());
        for (index, (b, snapshot)) in branches.iter().enumerate() {
            let root = open_root(&b.path).map_err(|e| e.at(b.path.display()).in_layer(index))?;
            let st = sys::fstat_path(root.as_raw_fd()).op("stat branch")?;
            let writable = b.writable && index == 0 && !settings.read_only;
            let old_index = (!writable)
                .then(|| sys::open_dir_path(root.as_raw_fd(), INDEX_DIR.as_ref()).ok())
                .flatten()
                .map(Arc::new);
            layers.push(Layer {
                index,
                path: b.path.clone(),
                spec: b.spec.clone(),
                root: Arc::new(root),
                writable,
                dev: st.st_dev,
                old_index,
                snapshot: snapshot.clone(),
            });
        }
        let work = match layers.first().filter(|l| l.writable) {
            Some(upper) => Some(open_workdir(upper, settings.workdir.as_deref())?),
            None => None,
        };
        if let Some(w) = &work {
            w.clean()?;
        }
        let index = match layers.first().filter(|l| l.writable) {
            Some(upper) => sys::open_dir_path(upper.root.as_raw_fd(), INDEX_DIR.as_ref())
                .ok()
                .map(Arc::new),
            None => None,
        };
        Ok(LayerStack {
            layers,
            work,
            index: parking_lot::Mutex::new(index),
            override_xattrs: Default::default(),
        })
    }

    /// See the field.
    pub fn override_xattrs(&self) -> &[Vec<&'static str>] {
        self.override_xattrs.get().map_or(&[], |v| &v[..])
    }

    /// The index directory if it exists (it is made by the first copy-up that needs it).
    pub fn index(&self) -> Option<Arc<OwnedFd>> {
        self.index.lock().clone()
    }

    /// The index directory, made now if need be.
    pub fn index_or_create(&self) -> Result<Arc<OwnedFd>> {
        let mut index = self.index.lock();
        if let Some(fd) = &*index {
            return Ok(fd.clone());
        }
        let upper = self.upper().ok_or(Error::new(libc::EROFS, "index dir"))?;
        let fd = Arc::new(
            ensure_dir(upper.root.as_raw_fd(), INDEX_DIR.as_ref())
                .map_err(|e| e.at(upper.path.join(INDEX_DIR).display()).in_layer(0))?,
        );
        *index = Some(fd.clone());
        Ok(fd)
    }

    pub fn upper(&self) -> Option<&Layer> {
        self.layers.first().filter(|l| l.writable)
    }

    pub fn work(&self) -> Result<&WorkDir> {
        self.work
            .as_ref()
            .ok_or(Error::new(libc::EROFS, "work dir"))
    }

    /// Remove the work directory we created inside the upper (clean unmount).
    pub fn close(&self) {
        if let Some(w) = &self.work {
            w.clean_own();
            let alone = sys::flock(w.lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB).is_ok();
            if let (Some((parent, name)), true) = (&w.owned, alone) {
                let _ = sys::unlinkat(parent.as_raw_fd(), name, true);
            }
        }
    }
}

fn open_root(path: &Path) -> Result<OwnedFd> {
    sys::openat(
        libc::AT_FDCWD,
        path.as_os_str(),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .op("open branch")
}

fn open_workdir(upper: &Layer, configured: Option<&Path>) -> Result<WorkDir> {
    // A daemon of the previous mount may remove the directory as we open it: try again.
    for _ in 0..4 {
        let w = open_workdir_once(upper, configured)?;
        sys::flock(w.lock.as_raw_fd(), libc::LOCK_SH).op("lock workdir")?;
        if sys::fstat(w.lock.as_raw_fd()).op("stat workdir")?.st_nlink > 0 {
            return Ok(w);
        }
    }
    Err(Error::new(libc::EBUSY, "open workdir").at(upper.path.display()))
}

fn open_workdir_once(upper: &Layer, configured: Option<&Path>) -> Result<WorkDir> {
    let (path, fd, owned) = match configured {
        Some(p) => {
            // overlayfs-style: the work dir is given; we use a subdirectory of our own so
            // cleaning it never touches anything else.
            if !p.exists() {
                std::fs::create_dir_all(p)
                    .op("create workdir")
                    .map_err(|e| e.at(p.display()))?;
            }
            let parent = Arc::new(open_root(p).map_err(|e| e.at(p.display()))?);
            let name = OsString::from("unionmount");
            let fd = ensure_dir(parent.as_raw_fd(), &name).map_err(|e| e.at(p.display()))?;
            (p.join(&name), fd, None)
        }
        None => {
            let name = OsString::from(DEFAULT_WORKDIR);
            let fd = ensure_dir(upper.root.as_raw_fd(), &name)
                .map_err(|e| e.at(upper.path.display()).in_layer(0))?;
            (
                upper.path.join(DEFAULT_WORKDIR),
                fd,
                Some((upper.root.clone(), name)),
            )
        }
    };
    let st = sys::fstat_path(fd.as_raw_fd()).op("stat workdir")?;
    if st.st_dev != upper.dev {
        return Err(
            Error::new(libc::EXDEV, "workdir not on the upper's filesystem").at(path.display()),
        );
    }
    let lock = sys::openat(
        fd.as_raw_fd(),
        OsStr::new("."),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .op("open workdir")?;
    Ok(WorkDir {
        path,
        fd,
        owned,
        counter: AtomicU64::new(0),
        lock,
    })
}

fn ensure_dir(parent: RawFd, name: &OsStr) -> Result<OwnedFd> {
    match sys::mkdirat(parent, name, 0o700) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(Error::io(e, "create workdir")),
    }
    sys::open_dir_path(parent, name).op("open workdir")
}
