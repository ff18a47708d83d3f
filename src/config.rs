//! What the user asked for, parsed and validated before anything is mounted or created:
//! the union's stack and settings (`union::Settings`) and the options of the mount itself.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::union::idmap::{self, IdMap, Owners};
use crate::union::{Branch, Settings, WhiteoutFormat};

/// Return early with a `ConfigError` built like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(ConfigError(format!($($arg)*)))
    };
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The union's stack and settings: all that decides what the mount shows and does.
    /// The rest of `Config` is about the mount and the daemon.
    pub settings: Settings,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub debug: bool,
    pub allow_other: bool,
    /// Entry and attribute cache time in the kernel.
    pub timeout: Duration,
    /// Negative-entry cache time in the kernel.
    pub negative_timeout: Duration,
    /// FUSE worker threads.
    pub threads: usize,
    /// Serve through FUSE over io_uring when the kernel offers it (`-o uring=0|1`).
    pub uring: bool,
    /// Use FUSE passthrough where the kernel and privileges allow (`-o passthrough=0|1`).
    pub passthrough: bool,
    /// How xattr requests are answered (`-o xattr=auto|on|off`).
    pub xattrs: Xattrs,
    /// The source /proc/mounts shows (mount(8) matches fstab lines by it).
    pub fsname: Option<String>,
    /// nosuid, dev, noexec, noatime, noacl, as the kernel mount gets them (`noatime` is
    /// also in `settings`, for the branch files the daemon opens).
    pub flags: MountFlags,
    /// Mount on top of a mount point that already has a live mount (`-o stack`).
    pub stack: bool,
}

/// What the mount allows, as mount(8)'s flags of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountFlags {
    /// Set-id bits of files in the mount are ignored on exec (`nosuid`). Off by default:
    /// containers need their set-id programs, and fuse-overlayfs as root mounts with `suid`.
    pub nosuid: bool,
    /// Device files in the mount can be opened (`dev`). Off by default (`nodev`), as libfuse
    /// and fuse-overlayfs mount: a device node made in a branch or through the mount must
    /// not reach a real device unless asked for.
    pub dev: bool,
    /// Nothing in the mount can be executed.
    pub noexec: bool,
    /// Reading through the mount marks no access time on the branches' files.
    pub noatime: bool,
    /// POSIX ACLs of the branches are not enforced (`noacl`; they are by default, as on
    /// fuse-overlayfs).
    pub noacl: bool,
}

/// How the mount answers xattr requests (`-o xattr=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Xattrs {
    /// Per file, except on a read-only stack whose branches hold none: the kernel is told
    /// the mount has none and stops asking.
    #[default]
    Auto,
    /// Per file, always.
    On,
    /// None: the kernel is told the mount supports no xattrs (fuse-overlayfs' `noxattrs=1`).
    Off,
}

impl Config {
    /// The one line a mount logs: the stack top first with modes, the mount point, and the
    /// settings in force.
    pub fn describe(&self) -> String {
        let s = &self.settings;
        let stack: Vec<String> = s
            .branches
            .iter()
            .map(|b| {
                format!(
                    "{}={}",
                    b.path.display(),
                    if b.writable { "RW" } else { "RO" }
                )
            })
            .collect();
        let mut settings = vec![
            if s.read_only {
                "read-only"
            } else {
                "read-write"
            }
            .to_string(),
            format!("whiteout={}", s.whiteout.name()),
            format!("threads={}", self.threads),
            format!(
                "timeout={}s,negative_timeout={}s",
                self.timeout.as_secs_f64(),
                self.negative_timeout.as_secs_f64()
            ),
        ];
        if let Some(w) = &s.workdir {
            settings.push(format!("workdir={}", w.display()));
        }
        if self.allow_other {
            settings.push("allow_other".into());
        }
        if s.volatile {
            settings.push("volatile".into());
        }
        settings.extend(s.owners.describe());
        format!(
            "mounted {} on {} ({} branches; {})",
            stack.join(":"),
            self.mountpoint.display(),
            s.branches.len(),
            settings.join(", ")
        )
    }

    /// Check the branches (a spec, or `-o lowerdir=`/`upperdir=`), the mount point and the
    /// options, and build the configuration. Nothing on disk is created or changed; the first
    /// problem found comes back as one line naming the branch, directory or option.
    pub fn build(
        branches: Option<&str>,
        mountpoint: &Path,
        opts: &MountOpts,
        foreground: bool,
        debug: bool,
    ) -> Result<Config, ConfigError> {
        // (path as written, writable, spec text), top first.
        let specs: Vec<(PathBuf, bool, String)> = match (branches, &opts.lowerdir) {
            (Some(_), Some(_)) => {
                bail!("branches given twice: as BRANCHES and as -o lowerdir= (use one)")
            }
            (_, None) if opts.upperdir.is_some() => bail!("option 'upperdir' needs 'lowerdir'"),
            (Some(spec), None) => parse_branches(spec)?
                .into_iter()
                .map(|(path, mode, text)| (path, mode == Some(true), text))
                .collect(),
            (None, Some(lowers)) => {
                let upper = opts.upperdir.iter().map(|u| (u, true));
                upper
                    .chain(lowers.iter().map(|l| (l, false)))
                    .map(|(p, w)| (p.clone(), w, p.display().to_string()))
                    .collect()
            }
            (None, None) => {
                bail!(
                    "no branches for mount point '{}': give BRANCHES before it \
                     (dir=RW:dir=RO:...) or -o lowerdir=DIR[:DIR...]",
                    mountpoint.display()
                )
            }
        };
        if specs.is_empty() {
            bail!("at least one branch is required");
        }

        let mut dirs: Vec<Dir> = Vec::with_capacity(specs.len());
        let mut out = Vec::with_capacity(specs.len());
        for (path, writable, spec) in specs {
            let dir = Dir::check(format!("branch '{}'", path.display()), &path)?;
            access(&path, libc::R_OK | libc::X_OK).map_err(|e| {
                ConfigError(format!("{}: not readable ({})", dir.label, os_msg(&e)))
            })?;
            if let Some(prev) = dirs.iter().find(|d| d.same(&dir)) {
                bail!("{} is the same directory as {}", dir.label, prev.label);
            }
            if writable && !opts.read_only {
                let ro = read_only_fs(&dir.canon).map_err(|e| dir.io_err(&e))?;
                if ro {
                    bail!("upper {} is on a read-only filesystem", dir.label);
                }
                access(&path, libc::W_OK).map_err(|e| {
                    ConfigError(format!(
                        "upper {}: not writable ({})",
                        dir.label,
                        os_msg(&e)
                    ))
                })?;
            }
            out.push(Branch {
                path: dir.canon.clone(),
                writable,
                spec,
            });
            dirs.push(dir);
        }
        let upper = out[0].writable.then(|| &dirs[0]);
        // Writes to the upper must never show up in a lower, nor the other way round.
        if let Some(upper) = upper {
            dirs[1..].iter().try_for_each(|d| disjoint(d, upper))?;
        }

        let mp = Dir::check(
            format!("mount point '{}'", mountpoint.display()),
            mountpoint,
        )?;
        dirs.iter().try_for_each(|d| disjoint(&mp, d))?;

        let workdir = match &opts.workdir {
            Some(w) => Some(check_workdir(w, upper, &dirs, &mp)?),
            None => None,
        };

        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let root = crate::sys::geteuid() == 0;
        Ok(Config {
            settings: Settings {
                read_only: opts.read_only || !out[0].writable,
                branches: out,
                workdir,
                whiteout: opts.whiteout.unwrap_or_default(),
                volatile: opts.volatile,
                owners: opts.owners(),
                noatime: opts.flags.noatime,
            },
            mountpoint: mp.canon,
            foreground,
            debug,
            allow_other: opts.allow_other || root,
            timeout: opts.timeout.unwrap_or(DEFAULT_TIMEOUT),
            negative_timeout: opts.negative_timeout.unwrap_or(DEFAULT_TIMEOUT),
            threads: opts
                .threads
                .unwrap_or((threads * THREADS_PER_CORE).clamp(2, MAX_DEFAULT_THREADS)),
            uring: opts.uring.unwrap_or(true),
            passthrough: opts.passthrough.unwrap_or(true),
            xattrs: opts.xattrs,
            fsname: opts.fsname.clone(),
            flags: opts.flags,
            stack: opts.stack,
        })
    }
}

/// Kernel entry/attribute and negative-entry cache time unless `-o timeout=`/`negative_timeout=`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// FUSE worker threads unless `-o threads=`: this many per core, at most `MAX_DEFAULT_THREADS`.
pub const THREADS_PER_CORE: usize = 2;
pub const MAX_DEFAULT_THREADS: usize = 8;

/// One segment of a branch spec: the path as written, the mode (`Some(true)` RW,
/// `Some(false)` RO, `None` unspecified, which means RO) and the segment text.
pub type BranchSpec = (PathBuf, Option<bool>, String);

/// Split a unionfs-fuse style spec `dir[=RW|=RO]:dir[=RO]:...` (top first). Only the first
/// branch may be RW; a spec without RW is a read-only union.
pub fn parse_branches(spec: &str) -> Result<Vec<BranchSpec>, ConfigError> {
    let mut out = Vec::new();
    for (i, seg) in spec.split(':').enumerate() {
        if seg.is_empty() {
            bail!("malformed branch spec '{spec}': branch {} is empty", i + 1);
        }
        // The last '=' starts the mode, so a path may contain '=' if a mode follows.
        let (path, mode) = match seg.rsplit_once('=') {
            None => (seg, None),
            Some((p, m)) if m.eq_ignore_ascii_case("rw") => (p, Some(true)),
            Some((p, m)) if m.eq_ignore_ascii_case("ro") => (p, Some(false)),
            Some((_, m)) => bail!("branch '{seg}': unknown mode '{m}' (use RW or RO)"),
        };
        if path.is_empty() {
            bail!("branch '{seg}': empty path");
        }
        if mode == Some(true) && i > 0 {
            bail!("branch '{path}': only the first branch may be RW");
        }
        out.push((PathBuf::from(path), mode, seg.to_string()));
    }
    Ok(out)
}

/// What the `-o` lists asked for; `None`/`false` means "not given" and `Config::build`
/// applies the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountOpts {
    /// `ro` (a later `rw` clears it).
    pub read_only: bool,
    /// `allow_other` (`allow_root` clears it).
    pub allow_other: bool,
    /// `timeout=SECS`: entry and attribute cache time.
    pub timeout: Option<Duration>,
    /// `negative_timeout=SECS`.
    pub negative_timeout: Option<Duration>,
    /// `whiteout=wh|overlay`.
    pub whiteout: Option<WhiteoutFormat>,
    /// `volatile`.
    pub volatile: bool,
    /// `nosuid`/`suid`, `dev`/`nodev`, `noexec`/`exec`, `noatime`/`atime`/`relatime`,
    /// `noacl`/`acl`.
    pub flags: MountFlags,
    /// `threads=N`, 1..=64.
    pub threads: Option<usize>,
    /// `uring=0|1`.
    pub uring: Option<bool>,
    /// `passthrough=0|1`.
    pub passthrough: Option<bool>,
    /// `xattr=auto|on|off`, `noxattrs=0|1`.
    pub xattrs: Xattrs,
    /// `workdir=DIR`.
    pub workdir: Option<PathBuf>,
    /// `lowerdir=L1:L2:...`, top first.
    pub lowerdir: Option<Vec<PathBuf>>,
    /// `upperdir=U`.
    pub upperdir: Option<PathBuf>,
    /// `fsname=NAME`: the source /proc/mounts shows.
    pub fsname: Option<String>,
    /// `subtype=NAME`: accepted and recorded; `Config` has no field for it yet.
    pub subtype: Option<String>,
    /// `uidmapping=DISK:HOST:COUNT[:...]` (fuse-overlayfs; a leading `:` is allowed, as
    /// containers-storage writes it). `None` when absent or mapping every ID to itself.
    pub uid_mapping: Option<IdMap>,
    /// `gidmapping=`, as `uid_mapping`.
    pub gid_mapping: Option<IdMap>,
    /// `squash_to_root`: every entry reports owner 0:0.
    pub squash_to_root: bool,
    /// `squash_to_uid=N`: every entry reports owner uid N (wins over `squash_to_root`).
    pub squash_to_uid: Option<u32>,
    /// `squash_to_gid=N`: every entry reports group N (wins over `squash_to_root`).
    pub squash_to_gid: Option<u32>,
    /// `xattr_permissions=0|1|2`: 0 off; 1 keep owner/mode in
    /// `security.fuseoverlayfs.override_stat`, 2 in `user.fuseoverlayfs.override_stat`.
    pub xattr_permissions: u8,
    /// `context=`/`fscontext=`/`defcontext=`/`rootcontext=`: an SELinux label for the mount.
    pub context: Option<String>,
    /// `stack`: mount on top of a live mount at the mount point instead of refusing.
    pub stack: bool,
}

impl MountOpts {
    /// Options that were parsed but that the union cannot honour yet: ignoring them would
    /// give wrong results, so the mount is refused with one line saying why.
    pub fn check_supported(&self) -> Result<(), ConfigError> {
        if let Some(c) = &self.context
            && selinux_enabled()
        {
            bail!(
                "option 'context={c}': SELinux labels on the mount are not supported yet \
                 (SELinux is enabled here)"
            );
        }
        Ok(())
    }

    /// The owner settings the union and the adapter apply. `squash_to_uid=`/`squash_to_gid=`
    /// win over `squash_to_root`, as in fuse-overlayfs.
    pub fn owners(&self) -> Owners {
        let root = self.squash_to_root.then_some(0);
        Owners {
            uids: self.uid_mapping.clone(),
            gids: self.gid_mapping.clone(),
            squash_uid: self.squash_to_uid.or(root),
            squash_gid: self.squash_to_gid.or(root),
            xattr: match self.xattr_permissions {
                1 => Some(idmap::OVERRIDE_PRIVILEGED),
                2 => Some(idmap::OVERRIDE_USER),
                _ => None,
            },
        }
    }
}

/// SELinux is enabled when its filesystem is mounted (as libselinux decides). Without it a
/// `context=` label has no meaning, and fuse-overlayfs ignores it too.
fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// Parse a fuse-overlayfs ID mapping (`idmap::IdMap::parse`). One that maps every ID to
/// itself comes back `None`: it changes nothing.
fn parse_id_mapping(item: &str, v: &str, overflow: u32) -> Result<Option<IdMap>, ConfigError> {
    let map =
        IdMap::parse(v, overflow).map_err(|e| ConfigError(format!("option '{item}': {e}")))?;
    Ok((!map.is_identity()).then_some(map))
}

/// Every `-o` name `parse_mount_options` acts on (besides `IGNORED`, `x-*` and `comment=`).
/// A name missing here is refused as unknown, and tests/docs.rs fails for a name here that
/// the README's option table (generated from src/cli.rs) does not document.
pub const OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "allow_other",
    "allow_root",
    "volatile",
    "nosuid",
    "suid",
    "dev",
    "nodev",
    "noexec",
    "exec",
    "noatime",
    "atime",
    "relatime",
    "noacl",
    "acl",
    "timeout",
    "negative_timeout",
    "whiteout",
    "threads",
    "uring",
    "passthrough",
    "xattr",
    "workdir",
    "upperdir",
    "lowerdir",
    "fsname",
    "subtype",
    "stack",
    "uidmapping",
    "gidmapping",
    "squash_to_root",
    "squash_to_uid",
    "squash_to_gid",
    "xattr_permissions",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "fsync",
    "noxattrs",
    "plugins",
    "threaded",
    "fast_ino",
    "writeback",
    "redirect_dir",
];

/// Ordinary mount flags that mean nothing here (or are always on) but must not be refused,
/// so fstab lines and scripts written for other filesystems work.
pub const IGNORED: &[&str] = &[
    "default_permissions",
    "async",
    "sync",
    "dirsync",
    "auto_unmount",
    // fuse-overlayfs: report nlink 1 for directories; real counts are as good.
    "static_nlink",
    "cow",
    "nonempty",
    // Meaningful only to mount(8), fstab, systemd or mount.fuse3, never to the filesystem.
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "nodiratime",
    "diratime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "norelatime",
    "iversion",
    "noiversion",
    "mand",
    "nomand",
    "silent",
    "loud",
];

/// Parse `-o` arguments, each a comma-separated list; later options override earlier ones.
/// Refuses what is malformed or unknown, and what is understood but not supported yet
/// (`MountOpts::check_supported`).
pub fn parse_mount_options(opts: &[String]) -> Result<MountOpts, ConfigError> {
    let o = parse_mount_options_all(opts)?;
    o.check_supported()?;
    Ok(o)
}

/// `parse_mount_options` without the `check_supported` step: every option fuse-overlayfs
/// takes is parsed into `MountOpts`, also those the union cannot honour yet.
pub fn parse_mount_options_all(opts: &[String]) -> Result<MountOpts, ConfigError> {
    let mut o = MountOpts::default();
    for item in opts
        .iter()
        .flat_map(|s| split_options(s))
        .filter(|s| !s.is_empty())
    {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let flag = |set: &mut bool, on: bool| match value {
            None => {
                *set = on;
                Ok(())
            }
            Some(_) => Err(ConfigError(format!("option '{key}' takes no value"))),
        };
        let text = |v: Option<&str>| match v {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => Err(ConfigError(format!(
                "option '{key}' needs a value ({key}=...)"
            ))),
        };
        let known = OPTIONS.contains(&key) || IGNORED.contains(&key);
        if !known && !key.starts_with("x-") && key != "comment" {
            bail!("unknown option '{item}'");
        }
        match key {
            "ro" => flag(&mut o.read_only, true)?,
            "rw" => flag(&mut o.read_only, false)?,
            "allow_other" => flag(&mut o.allow_other, true)?,
            "allow_root" => flag(&mut o.allow_other, false)?,
            "volatile" => flag(&mut o.volatile, true)?,
            "stack" => flag(&mut o.stack, true)?,
            "nosuid" => flag(&mut o.flags.nosuid, true)?,
            "suid" => flag(&mut o.flags.nosuid, false)?,
            "dev" => flag(&mut o.flags.dev, true)?,
            "nodev" => flag(&mut o.flags.dev, false)?,
            "noexec" => flag(&mut o.flags.noexec, true)?,
            "exec" => flag(&mut o.flags.noexec, false)?,
            "noatime" => flag(&mut o.flags.noatime, true)?,
            "atime" | "relatime" => flag(&mut o.flags.noatime, false)?,
            "noacl" => flag(&mut o.flags.noacl, true)?,
            "acl" => flag(&mut o.flags.noacl, false)?,
            "timeout" => o.timeout = Some(seconds(item, &text(value)?)?),
            "negative_timeout" => o.negative_timeout = Some(seconds(item, &text(value)?)?),
            "whiteout" => {
                o.whiteout = Some(match text(value)?.as_str() {
                    "wh" => WhiteoutFormat::WhFiles,
                    "overlay" => WhiteoutFormat::Overlay,
                    _ => bail!("option '{item}': use whiteout=wh or whiteout=overlay"),
                })
            }
            "threads" => match text(value)?.parse::<usize>() {
                Ok(n @ 1..=64) => o.threads = Some(n),
                _ => bail!("option '{item}': threads must be a number from 1 to 64"),
            },
            "uring" => match value {
                None | Some("1") => o.uring = Some(true),
                Some("0") => o.uring = Some(false),
                _ => bail!("option '{item}': use uring=0 or uring=1"),
            },
            "passthrough" => match value {
                None | Some("1") => o.passthrough = Some(true),
                Some("0") => o.passthrough = Some(false),
                _ => bail!("option '{item}': use passthrough=0 or passthrough=1"),
            },
            "xattr" => match value {
                Some("auto") => o.xattrs = Xattrs::Auto,
                Some("on") => o.xattrs = Xattrs::On,
                Some("off") => o.xattrs = Xattrs::Off,
                _ => bail!("option '{item}': use xattr=auto, xattr=on or xattr=off"),
            },
            "workdir" => o.workdir = Some(text(value)?.into()),
            "upperdir" => o.upperdir = Some(text(value)?.into()),
            "lowerdir" => {
                let list = text(value)?;
                if list.split(':').any(str::is_empty) {
                    bail!("option '{item}': empty directory in the list");
                }
                o.lowerdir = Some(list.split(':').map(PathBuf::from).collect());
            }
            "fsname" => o.fsname = Some(text(value)?),
            "subtype" => o.subtype = Some(text(value)?),
            // fuse-overlayfs' own options (containers-storage passes these).
            "uidmapping" => {
                o.uid_mapping = parse_id_mapping(item, &text(value)?, idmap::overflow_ids().0)?
            }
            "gidmapping" => {
                o.gid_mapping = parse_id_mapping(item, &text(value)?, idmap::overflow_ids().1)?
            }
            "squash_to_root" => flag(&mut o.squash_to_root, true)?,
            "squash_to_uid" => o.squash_to_uid = Some(id(item, &text(value)?)?),
            "squash_to_gid" => o.squash_to_gid = Some(id(item, &text(value)?)?),
            "xattr_permissions" => match text(value)?.as_str() {
                "0" => o.xattr_permissions = 0,
                "1" => o.xattr_permissions = 1,
                "2" => o.xattr_permissions = 2,
                _ => bail!("option '{item}': use xattr_permissions=0, 1 or 2"),
            },
            "context" | "fscontext" | "defcontext" | "rootcontext" => {
                o.context = Some(text(value)?)
            }
            // fsync=0 is fuse-overlayfs' spelling of volatile.
            "fsync" => match text(value)?.as_str() {
                "0" => o.volatile = true,
                "1" => o.volatile = false,
                _ => bail!("option '{item}': use fsync=0 or fsync=1"),
            },
            // fuse-overlayfs' spelling: noxattrs=1 is xattr=off, noxattrs=0 its default.
            "noxattrs" => match text(value)?.as_str() {
                "0" => o.xattrs = Xattrs::Auto,
                "1" => o.xattrs = Xattrs::Off,
                _ => bail!("option '{item}': use noxattrs=0 or noxattrs=1"),
            },
            "plugins" => bail!("option '{item}': fuse-overlayfs layer plugins are not supported"),
            // Tuning of fuse-overlayfs' own implementation: the result is the same without.
            "threaded" | "fast_ino" | "writeback" => match text(value)?.as_str() {
                "0" | "1" => {}
                _ => bail!("option '{item}': use {key}=0 or {key}=1"),
            },
            // Directory renames never need an overlayfs redirect here; fuse-overlayfs
            // ignores the value too.
            "redirect_dir" => {
                text(value)?;
            }
            k if value.is_none() && IGNORED.contains(&k) => {}
            k if k.starts_with("x-") || k == "comment" => {}
            _ => bail!("unknown option '{item}'"),
        }
    }
    Ok(o)
}

/// Split a `-o` list at commas outside double quotes, as mount(8) and the kernel do: podman
/// writes an SELinux label with categories as `context="...:s0:c1,c2"`.
fn split_options(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A uid or gid: 0..=4294967294 (u32::MAX is the "no ID" value of chown(2)).
fn id(item: &str, v: &str) -> Result<u32, ConfigError> {
    match v.parse::<u32>() {
        Ok(n) if n != u32::MAX => Ok(n),
        _ => bail!("option '{item}': not a user or group ID"),
    }
}

/// Non-negative, finite seconds, fractions allowed.
fn seconds(item: &str, v: &str) -> Result<Duration, ConfigError> {
    v.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| ConfigError(format!("option '{item}': not a number of seconds")))
}

/// The one line the user sees when the command line is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A directory named on the command line, checked to exist.
#[derive(Clone)]
struct Dir {
    /// How messages name it: `branch '/x'`, `mount point '/m'`.
    label: String,
    canon: PathBuf,
    /// (st_dev, st_ino), `None` for a workdir not created yet.
    id: Option<(u64, u64)>,
}

impl Dir {
    fn check(label: String, path: &Path) -> Result<Dir, ConfigError> {
        let md = match fs::metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!("{label}: no such directory"),
            Err(e) => bail!("{label}: {}", os_msg(&e)),
        };
        if !md.is_dir() {
            bail!("{label}: not a directory");
        }
        match fs::canonicalize(path) {
            Ok(canon) => Ok(Dir {
                label,
                canon,
                id: Some((md.dev(), md.ino())),
            }),
            Err(e) => bail!("{label}: {}", os_msg(&e)),
        }
    }

    /// Same directory, also when reached through a symlink or a bind mount.
    fn same(&self, other: &Dir) -> bool {
        self.canon == other.canon || (self.id.is_some() && self.id == other.id)
    }

    fn io_err(&self, e: &io::Error) -> ConfigError {
        ConfigError(format!("{}: {}", self.label, os_msg(e)))
    }
}

/// Refuse two directories that share files: the same one, or one inside the other
/// (`starts_with` compares whole components).
fn disjoint(a: &Dir, b: &Dir) -> Result<(), ConfigError> {
    if a.same(b) {
        bail!("{} is the same directory as {}", a.label, b.label);
    }
    if a.canon.starts_with(&b.canon) {
        bail!("{} is inside {}", a.label, b.label);
    }
    if b.canon.starts_with(&a.canon) {
        bail!("{} is inside {}", b.label, a.label);
    }
    Ok(())
}

/// `workdir=` must be a directory, or not exist yet inside an existing directory: the mount
/// creates it then (`LayerStack::open`); `build` itself creates nothing. It must be on the
/// upper's filesystem (finished copy-ups are renamed out of it), writable, and share no tree
/// with a branch or the mount point (the mount empties a subdirectory of it).
fn check_workdir(
    w: &Path,
    upper: Option<&Dir>,
    branches: &[Dir],
    mp: &Dir,
) -> Result<PathBuf, ConfigError> {
    let label = format!("workdir '{}'", w.display());
    let Some(upper) = upper else {
        bail!("{label}: a workdir needs a writable (RW) upper branch");
    };
    // `on` is the workdir itself or, if it does not exist yet, its parent.
    let (on, work) = match fs::symlink_metadata(w) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = match w.parent() {
                Some(p) if p.as_os_str().is_empty() => Path::new("."),
                Some(p) => p,
                None => bail!("{label}: no such directory"),
            };
            let (Some(last), true) = (w.file_name(), parent.is_dir()) else {
                bail!("{label}: no such directory, nor a parent directory to create it in");
            };
            let on = Dir::check(label.clone(), parent)?;
            let canon = on.canon.join(last);
            (
                on,
                Dir {
                    label,
                    canon,
                    id: None,
                },
            )
        }
        _ => {
            let on = Dir::check(label, w)?;
            (on.clone(), on)
        }
    };
    if on.id.map(|id| id.0) != upper.id.map(|id| id.0) {
        bail!(
            "{} is not on the filesystem of the upper {}",
            work.label,
            upper.label
        );
    }
    branches
        .iter()
        .chain([mp])
        .try_for_each(|d| disjoint(&work, d))?;
    access(&on.canon, libc::R_OK | libc::W_OK | libc::X_OK)
        .map_err(|e| ConfigError(format!("{}: not writable ({})", work.label, os_msg(&e))))?;
    Ok(work.canon)
}

/// An I/O error's text without the " (os error N)" suffix.
fn os_msg(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// access(2): checks with the real uid, as the daemon will act.
fn access(p: &Path, mode: libc::c_int) -> io::Result<()> {
    crate::sys::access(p, mode)
}

fn read_only_fs(p: &Path) -> io::Result<bool> {
    Ok(crate::sys::statvfs(p)?.f_flag & libc::ST_RDONLY != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use tempfile::TempDir;

    /// A temp dir with `upper/`, `lower0..2/` and `mnt/`; `root` is canonical.
    struct Fx {
        _tmp: TempDir,
        root: PathBuf,
    }

    impl Fx {
        fn new() -> Fx {
            let tmp = TempDir::new().unwrap();
            let root = tmp.path().canonicalize().unwrap();
            for d in ["upper", "lower0", "lower1", "lower2", "mnt"] {
                fs::create_dir(root.join(d)).unwrap();
            }
            Fx { _tmp: tmp, root }
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }
        fn s(&self, rel: &str) -> String {
            self.p(rel).display().to_string()
        }
        /// `upper=RW:lower0=RO`
        fn spec(&self) -> String {
            format!("{}=RW:{}=RO", self.s("upper"), self.s("lower0"))
        }
        fn build(&self, spec: &str, mnt: &str, opts: &[&str]) -> Result<Config, ConfigError> {
            Config::build(Some(spec), &self.p(mnt), &opts_of(opts), false, false)
        }
        /// `build` fails with a message containing every one of `want`.
        fn refused(&self, spec: &str, mnt: &str, opts: &[&str], want: &[&str]) {
            let msg = self.build(spec, mnt, opts).unwrap_err().to_string();
            for w in want {
                assert!(msg.contains(w), "{msg:?} does not mention {w:?}");
            }
            assert!(!msg.contains('\n'), "{msg:?} is more than one line");
        }
        /// Every path under the root with its mode and mtime.
        fn listing(&self) -> BTreeMap<PathBuf, (u32, i64, i64)> {
            fn walk(p: &Path, out: &mut BTreeMap<PathBuf, (u32, i64, i64)>) {
                let md = fs::symlink_metadata(p).unwrap();
                out.insert(p.to_path_buf(), (md.mode(), md.mtime(), md.mtime_nsec()));
                if md.is_dir() {
                    for e in fs::read_dir(p).unwrap() {
                        walk(&e.unwrap().path(), out);
                    }
                }
            }
            let mut out = BTreeMap::new();
            walk(&self.root, &mut out);
            out
        }
    }

    fn opts_of(list: &[&str]) -> MountOpts {
        parse_mount_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn opt_err(list: &[&str]) -> String {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        parse_mount_options(&list).unwrap_err().to_string()
    }

    fn is_root() -> bool {
        crate::sys::geteuid() == 0
    }

    // ---- parse_branches ----

    #[test]
    fn branch_modes_are_case_insensitive_and_default_to_unspecified() {
        let got = parse_branches("/u=rw:/a=RO:/b:/c=Ro").unwrap();
        let want = [("/u", Some(true), "/u=rw"), ("/a", Some(false), "/a=RO")];
        let want = want
            .into_iter()
            .chain([("/b", None, "/b"), ("/c", Some(false), "/c=Ro")]);
        let want: Vec<BranchSpec> = want.map(|(p, m, t)| (p.into(), m, t.into())).collect();
        assert_eq!(got, want);
        assert_eq!(parse_branches("/u=RW").unwrap()[0].1, Some(true));
    }

    #[test]
    fn branch_path_may_contain_equals_before_the_mode() {
        let got = parse_branches("/x=y=RO").unwrap();
        assert_eq!(
            got,
            vec![(PathBuf::from("/x=y"), Some(false), "/x=y=RO".into())]
        );
    }

    #[test]
    fn empty_branch_segments_are_malformed() {
        for spec in ["a::b", ":a", "a:", "", ":", "/u=RW::/l=RO"] {
            let msg = parse_branches(spec).unwrap_err().to_string();
            assert!(
                msg.contains("malformed") && msg.contains(spec),
                "{spec:?}: {msg}"
            );
        }
        let msg = parse_branches("a:=RO").unwrap_err().to_string();
        assert!(msg.contains("empty path") && msg.contains("=RO"), "{msg}");
    }

    #[test]
    fn unknown_mode_is_refused() {
        let msg = parse_branches("/u=RW:/l=RX").unwrap_err().to_string();
        assert!(
            msg.contains("/l=RX") && msg.contains("unknown mode 'RX'"),
            "{msg}"
        );
        assert!(
            parse_branches("/u=")
                .unwrap_err()
                .0
                .contains("unknown mode")
        );
        assert!(
            parse_branches("/a=b")
                .unwrap_err()
                .0
                .contains("unknown mode 'b'")
        );
    }

    #[test]
    fn only_the_first_branch_may_be_rw() {
        let msg = parse_branches("/l=RO:/u=RW").unwrap_err().to_string();
        assert!(
            msg.contains("'/u'") && msg.contains("only the first branch may be RW"),
            "{msg}"
        );
        let msg = parse_branches("/u=RW:/l=rw").unwrap_err().to_string();
        assert!(msg.contains("'/l'") && msg.contains("RW"), "{msg}");
    }

    // ---- parse_mount_options ----

    #[test]
    fn several_option_lists_later_wins() {
        let o = opts_of(&["ro,allow_other", "timeout=0.5,threads=4", "rw,volatile"]);
        assert!(!o.read_only && o.allow_other && o.volatile);
        assert_eq!(o.timeout, Some(Duration::from_millis(500)));
        assert_eq!(o.threads, Some(4));
        assert!(opts_of(&["rw", "ro"]).read_only);
        assert!(!opts_of(&["allow_other,allow_root"]).allow_other);
        assert_eq!(opts_of(&[]), MountOpts::default());
        assert_eq!(
            opts_of(&["ro,,", ""]),
            MountOpts {
                read_only: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn timeouts_parse_as_seconds() {
        let o = opts_of(&["timeout=2,negative_timeout=1.25"]);
        assert_eq!(o.timeout, Some(Duration::from_secs(2)));
        assert_eq!(o.negative_timeout, Some(Duration::from_millis(1250)));
        assert_eq!(opts_of(&["timeout=0"]).timeout, Some(Duration::ZERO));
        for bad in [
            "timeout=abc",
            "timeout=-1",
            "timeout=inf",
            "timeout=nan",
            "timeout=",
            "timeout",
        ] {
            assert!(opt_err(&[bad]).contains("timeout"), "{bad}");
        }
        assert!(opt_err(&["negative_timeout=x"]).contains("negative_timeout=x"));
    }

    #[test]
    fn unknown_options_are_refused_by_name() {
        assert_eq!(opt_err(&["bogus_option"]), "unknown option 'bogus_option'");
        assert_eq!(
            opt_err(&["ro", "ro,bogus_option=1"]),
            "unknown option 'bogus_option=1'"
        );
        assert!(opt_err(&["nodev=1"]).contains("'nodev' takes no value"));
        assert!(opt_err(&["ro=1"]).contains("'ro' takes no value"));
    }

    #[test]
    fn ordinary_mount_flags_are_accepted() {
        assert_eq!(opts_of(&[&IGNORED.join(",")]), MountOpts::default());
    }

    #[test]
    fn valued_options() {
        let o = opts_of(&["lowerdir=/a:/b,upperdir=/u,workdir=/w", "whiteout=overlay"]);
        assert_eq!(
            o.lowerdir,
            Some(vec![PathBuf::from("/a"), PathBuf::from("/b")])
        );
        assert_eq!(
            (o.upperdir.unwrap(), o.workdir.unwrap()),
            ("/u".into(), "/w".into())
        );
        assert_eq!(o.whiteout, Some(WhiteoutFormat::Overlay));
        assert_eq!(
            opts_of(&["whiteout=wh"]).whiteout,
            Some(WhiteoutFormat::WhFiles)
        );
        let o = opts_of(&["fsname=merged,subtype=u"]);
        assert_eq!(
            (o.fsname.as_deref(), o.subtype.as_deref()),
            (Some("merged"), Some("u"))
        );
        assert_eq!(opts_of(&["threads=1"]).threads, Some(1));
        assert_eq!(opts_of(&["uring=0"]).uring, Some(false));
        assert_eq!(opts_of(&["uring=1"]).uring, Some(true));
        assert_eq!(opts_of(&["uring"]).uring, Some(true));
        assert!(parse_mount_options(&["uring=x".to_string()]).is_err());
        assert_eq!(opts_of(&["passthrough=0"]).passthrough, Some(false));
        assert_eq!(opts_of(&["passthrough"]).passthrough, Some(true));
        assert!(parse_mount_options(&["passthrough=no".to_string()]).is_err());
        assert_eq!(opts_of(&["xattr=auto"]).xattrs, Xattrs::Auto);
        assert_eq!(opts_of(&["xattr=on"]).xattrs, Xattrs::On);
        assert_eq!(opts_of(&["xattr=off"]).xattrs, Xattrs::Off);
        assert_eq!(opts_of(&["noxattrs=1"]).xattrs, Xattrs::Off);
        assert_eq!(opts_of(&["xattr=on,noxattrs=0"]).xattrs, Xattrs::Auto);
        for bad in ["xattr", "xattr=none", "xattr=1"] {
            assert!(opt_err(&[bad]).contains(bad), "{bad}");
        }
        assert_eq!(opts_of(&["threads=64"]).threads, Some(64));
        for bad in ["threads=0", "threads=65", "threads=x"] {
            assert!(opt_err(&[bad]).contains(bad), "{bad}");
        }
        assert!(opt_err(&["whiteout=aufs"]).contains("whiteout=aufs"));
        assert!(opt_err(&["lowerdir=/a::/b"]).contains("lowerdir=/a::/b"));
        assert!(opt_err(&["upperdir="]).contains("'upperdir' needs a value"));
        assert!(opt_err(&["workdir"]).contains("'workdir' needs a value"));
    }

    fn all_of(list: &[&str]) -> MountOpts {
        parse_mount_options_all(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn all_err(list: &[&str]) -> String {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        parse_mount_options_all(&list).unwrap_err().to_string()
    }

    #[test]
    fn podman_option_lists_are_accepted() {
        // As podman 4.3 passes them (trailing and doubled commas included).
        let o = opts_of(&["lowerdir=/l/A:/l/B,upperdir=/d/diff,workdir=/d/work,,volatile"]);
        assert!(o.volatile && o.upperdir.is_some() && o.lowerdir.unwrap().len() == 2);
        let o = opts_of(&["lowerdir=/d/diff:/d/empty"]);
        assert_eq!(o.lowerdir.unwrap().len(), 2);
        assert!(
            opts_of(&["lowerdir=/a,upperdir=/u,workdir=/w,"])
                .upperdir
                .is_some()
        );
    }

    #[test]
    fn id_mappings_parse_like_fuse_overlayfs() {
        let o = opts_of(&["uidmapping=:0:100000:65536,gidmapping=0:200000:1000:1000:0:1"]);
        let (u, g) = (o.uid_mapping.unwrap(), o.gid_mapping.unwrap());
        assert_eq!((u.to_host(0), u.to_disk(100005)), (100000, 5));
        assert_eq!(
            (g.to_host(999), g.to_host(1000), g.ranges().len()),
            (200999, 0, 2)
        );
        // Every ID to itself changes nothing: as if not given.
        let o = opts_of(&["uidmapping=:0:0:4294967295,gidmapping=0:0:10:10:10:4294967285"]);
        assert_eq!((o.uid_mapping, o.gid_mapping), (None, None));
        // The identity on some IDs still shows the others as the overflow ID.
        assert!(opts_of(&["gidmapping=0:0:10"]).gid_mapping.is_some());
        for bad in [
            "uidmapping=",
            "uidmapping=:",
            "uidmapping=0:1",
            "uidmapping=0:1:2:3",
            "uidmapping=a:1:2",
            "uidmapping=-1:0:1",
            "uidmapping=0:1:0",
            "uidmapping=4294967295:0:2",
            "uidmapping=0:100:10:5:200:10",
            "gidmapping=0:100:10:20:105:1",
        ] {
            let msg = all_err(&[bad]);
            assert!(msg.contains(bad.split_once('=').unwrap().0), "{bad}: {msg}");
        }
    }

    #[test]
    fn mappings_squashing_and_xattr_permissions_reach_the_owners() {
        let o = opts_of(&["uidmapping=:0:100000:65536,gidmapping=:0:100000:65536"]).owners();
        assert_eq!((o.shown_uid(0), o.shown_gid(5)), (100000, 100005));
        assert_eq!((o.stored_uid(100007), o.stored_gid(100008)), (7, 8));
        assert!(!o.squashes() && o.xattr.is_none());
        let o = opts_of(&["squash_to_root"]).owners();
        assert_eq!((o.squash_uid, o.squash_gid), (Some(0), Some(0)));
        // squash_to_uid/gid win over squash_to_root, whatever the order.
        let o = opts_of(&["squash_to_uid=5,squash_to_root,squash_to_gid=6"]).owners();
        assert_eq!((o.squash_uid, o.squash_gid), (Some(5), Some(6)));
        assert_eq!(opts_of(&["squash_to_gid=7"]).owners().squash_uid, None);
        assert_eq!(
            opts_of(&["xattr_permissions=1"]).owners().xattr,
            Some("security.fuseoverlayfs.override_stat")
        );
        assert_eq!(
            opts_of(&["xattr_permissions=2"]).owners().xattr,
            Some("user.fuseoverlayfs.override_stat")
        );
        assert_eq!(
            opts_of(&["xattr_permissions=0"]).owners(),
            Default::default()
        );
        for bad in [
            "squash_to_root=1",
            "squash_to_uid=",
            "squash_to_uid=x",
            "squash_to_gid=-1",
            "squash_to_gid=4294967295",
            "xattr_permissions=3",
        ] {
            assert!(
                all_err(&[bad]).contains(bad.split('=').next().unwrap()),
                "{bad}"
            );
        }
    }

    #[test]
    fn mount_flags_parse_and_a_later_one_wins() {
        let o = opts_of(&["nosuid,nodev,noexec,noatime"]);
        let all = MountFlags {
            nosuid: true,
            dev: false,
            noexec: true,
            noatime: true,
            noacl: false,
        };
        assert_eq!(o.flags, all);
        let o = opts_of(&["nosuid,dev,noexec,noatime", "suid,nodev,exec,relatime"]);
        assert_eq!(o.flags, MountFlags::default());
        // nodev is the default; dev turns device files on.
        assert!(!MountFlags::default().dev && opts_of(&["dev"]).flags.dev);
        assert!(opt_err(&["nosuid=1"]).contains("takes no value"));
    }

    #[test]
    fn other_fuse_overlayfs_options() {
        assert!(opts_of(&["fsync=0"]).volatile);
        assert!(!opts_of(&["volatile,fsync=1"]).volatile);
        let o = opts_of(&["static_nlink,threaded=1,fast_ino=0,writeback=1,noxattrs=0"]);
        assert_eq!(o, MountOpts::default());
        assert!(opts_of(&["noacl"]).flags.noacl);
        assert_eq!(opts_of(&["redirect_dir=off"]), MountOpts::default());
        assert!(opt_err(&["plugins=/x.so"]).contains("plugins"));
        for bad in [
            "fsync=2",
            "threaded=x",
            "writeback",
            "fast_ino=",
            "noxattrs=yes",
        ] {
            assert!(
                opt_err(&[bad]).contains(bad.split('=').next().unwrap()),
                "{bad}"
            );
        }
        let o = all_of(&["context=\"system_u:object_r:container_file_t:s0:c1,c2\",ro"]);
        let want = "\"system_u:object_r:container_file_t:s0:c1,c2\"";
        assert_eq!(o.context.as_deref(), Some(want));
        assert!(o.read_only);
        if !selinux_enabled() {
            assert!(
                opts_of(&["context=system_u:object_r:container_file_t:s0"])
                    .context
                    .is_some()
            );
        } else {
            assert!(opt_err(&["context=x"]).contains("SELinux"));
        }
    }

    // ---- Config::build: accepted ----

    #[test]
    fn upper_rw_over_base_ro() {
        let fx = Fx::new();
        let c = fx.build(&fx.spec(), "mnt", &[]).unwrap();
        let want = vec![
            Branch {
                path: fx.p("upper"),
                writable: true,
                spec: format!("{}=RW", fx.s("upper")),
            },
            Branch {
                path: fx.p("lower0"),
                writable: false,
                spec: format!("{}=RO", fx.s("lower0")),
            },
        ];
        assert_eq!(c.settings.branches, want);
        assert_eq!(c.settings.upper(), Some(&want[0]));
        assert_eq!(c.mountpoint, fx.p("mnt"));
        assert!(!c.settings.read_only && !c.settings.volatile && !c.foreground && !c.debug);
        assert_eq!(c.allow_other, is_root());
        assert_eq!(
            (c.timeout, c.negative_timeout),
            (DEFAULT_TIMEOUT, DEFAULT_TIMEOUT)
        );
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.settings.whiteout, WhiteoutFormat::WhFiles);
        assert!((2..=8).contains(&c.threads), "{}", c.threads);
        assert_eq!(c.settings.workdir, None);
    }

    #[test]
    fn options_reach_the_config() {
        let fx = Fx::new();
        let o = ["timeout=3,negative_timeout=0,threads=5,volatile,whiteout=overlay,allow_other"];
        let c = Config::build(Some(&fx.spec()), &fx.p("mnt"), &opts_of(&o), true, true).unwrap();
        assert_eq!(
            (c.timeout, c.negative_timeout),
            (Duration::from_secs(3), Duration::ZERO)
        );
        assert_eq!(
            (c.threads, c.settings.volatile, c.settings.whiteout),
            (5, true, WhiteoutFormat::Overlay)
        );
        assert!(c.allow_other && c.foreground && c.debug);
        let o = ["uidmapping=0:100000:65536,squash_to_gid=3,xattr_permissions=2"];
        let c = Config::build(Some(&fx.spec()), &fx.p("mnt"), &opts_of(&o), true, true).unwrap();
        assert_eq!(
            (
                c.settings.owners.shown_uid(1),
                c.settings.owners.shown_gid(1)
            ),
            (100001, 3)
        );
        let line = c.describe();
        assert!(line.contains("uidmapping=0:100000:65536") && line.contains("squash_to_gid=3"));
    }

    #[test]
    fn paths_are_canonicalised_and_spec_text_kept() {
        let fx = Fx::new();
        symlink(fx.p("upper"), fx.p("link")).unwrap();
        let spec = format!(
            "{}/./link=RW:{}/../lower0",
            fx.root.display(),
            fx.s("upper")
        );
        let c = fx.build(&spec, "mnt/..//mnt", &[]).unwrap();
        assert_eq!(c.settings.branches[0].path, fx.p("upper"));
        assert_eq!(
            c.settings.branches[0].spec,
            format!("{}/./link=RW", fx.root.display())
        );
        assert_eq!(c.settings.branches[1].path, fx.p("lower0"));
        assert_eq!(c.mountpoint, fx.p("mnt"));
    }

    #[test]
    fn no_rw_branch_is_a_read_only_union() {
        let fx = Fx::new();
        let spec = format!(
            "{}:{}=RO:{}=ro",
            fx.s("lower0"),
            fx.s("lower1"),
            fx.s("lower2")
        );
        let c = fx.build(&spec, "mnt", &[]).unwrap();
        assert!(c.settings.read_only && c.settings.upper().is_none());
        assert_eq!(c.settings.branches.len(), 3);
        assert!(c.settings.branches.iter().all(|b| !b.writable));
        // `-o ro` makes a stack with an upper read-only too.
        let c = fx.build(&fx.spec(), "mnt", &["ro"]).unwrap();
        assert!(c.settings.read_only && c.settings.branches[0].writable);
    }

    #[test]
    fn overlay_style_options() {
        let fx = Fx::new();
        fs::create_dir(fx.p("work")).unwrap();
        let o = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            fx.s("lower0"),
            fx.s("lower1"),
            fx.s("upper"),
            fx.s("work")
        );
        let c = Config::build(None, &fx.p("mnt"), &opts_of(&[&o]), false, false).unwrap();
        let got: Vec<_> = c
            .settings
            .branches
            .iter()
            .map(|b| (b.path.clone(), b.writable))
            .collect();
        let want = [("upper", true), ("lower0", false), ("lower1", false)];
        assert_eq!(got, want.map(|(d, w)| (fx.p(d), w)));
        assert_eq!(c.settings.branches[1].spec, fx.s("lower0"));
        assert_eq!(c.settings.workdir, Some(fx.p("work")));
        assert!(!c.settings.read_only);
        // lowerdir alone: read-only.
        let o = format!("lowerdir={}:{}", fx.s("lower0"), fx.s("lower1"));
        let c = Config::build(None, &fx.p("mnt"), &opts_of(&[&o]), false, false).unwrap();
        assert!(
            c.settings.read_only && c.settings.upper().is_none() && c.settings.branches.len() == 2
        );
    }

    #[test]
    fn sixty_four_lowers() {
        let fx = Fx::new();
        let mut spec = format!("{}=RW", fx.s("upper"));
        for i in 0..64 {
            fs::create_dir(fx.p(&format!("l{i}"))).unwrap();
            spec.push_str(&format!(":{}=RO", fx.s(&format!("l{i}"))));
        }
        let c = fx.build(&spec, "mnt", &[]).unwrap();
        assert_eq!(c.settings.branches.len(), 65);
        assert_eq!(c.settings.branches[64].path, fx.p("l63"));
        assert_eq!(c.settings.branches.iter().filter(|b| b.writable).count(), 1);
    }

    #[test]
    fn workdir_may_be_created_later_but_build_creates_nothing() {
        let fx = Fx::new();
        let before = fx.listing();
        let c = fx
            .build(&fx.spec(), "mnt", &[&format!("workdir={}", fx.s("work"))])
            .unwrap();
        assert_eq!(c.settings.workdir, Some(fx.p("work")));
        assert_eq!(fx.listing(), before);
    }

    // ---- Config::build: refused ----

    #[test]
    fn missing_branch() {
        let fx = Fx::new();
        let spec = format!("{}=RW:{}=RO", fx.s("upper"), fx.s("nope"));
        fx.refused(
            &spec,
            "mnt",
            &[],
            &[&format!("branch '{}': no such directory", fx.s("nope"))],
        );
    }

    #[test]
    fn branch_that_is_a_file() {
        let fx = Fx::new();
        fs::write(fx.p("file"), "x").unwrap();
        let spec = format!("{}=RW:{}=RO", fx.s("upper"), fx.s("file"));
        fx.refused(
            &spec,
            "mnt",
            &[],
            &[&format!("branch '{}': not a directory", fx.s("file"))],
        );
    }

    #[test]
    fn unreadable_branch() {
        if is_root() {
            eprintln!("skipped: root can read any directory");
            return;
        }
        let fx = Fx::new();
        fs::set_permissions(fx.p("lower0"), fs::Permissions::from_mode(0o300)).unwrap();
        let want = format!(
            "branch '{}': not readable (Permission denied)",
            fx.s("lower0")
        );
        let msg = fx.build(&fx.spec(), "mnt", &[]).unwrap_err().0;
        fs::set_permissions(fx.p("lower0"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(msg, want);
    }

    #[test]
    fn same_directory_twice() {
        let fx = Fx::new();
        let (u, l) = (fx.s("upper"), fx.s("lower0"));
        fx.refused(
            &format!("{u}=RW:{l}=RO:{l}=RO"),
            "mnt",
            &[],
            &[&l, "same directory"],
        );
        fx.refused(
            &format!("{u}=RW:{u}=RO"),
            "mnt",
            &[],
            &[&u, "same directory"],
        );
        fx.refused(
            &format!("{u}=RW:{l}:{l}/."),
            "mnt",
            &[],
            &[&format!("'{l}/.'"), "same"],
        );
        symlink(fx.p("lower0"), fx.p("alias")).unwrap();
        let a = fx.s("alias");
        fx.refused(
            &format!("{u}=RW:{l}:{a}"),
            "mnt",
            &[],
            &[&a, &l, "same directory"],
        );
    }

    #[test]
    fn lower_and_upper_must_not_nest() {
        let fx = Fx::new();
        fs::create_dir(fx.p("upper/sub")).unwrap();
        fs::create_dir(fx.p("lower0/sub")).unwrap();
        let (u, l) = (fx.s("upper"), fx.s("lower0"));
        let spec = format!("{u}=RW:{u}/sub=RO");
        fx.refused(
            &spec,
            "mnt",
            &[],
            &[&format!("branch '{u}/sub' is inside branch '{u}'")],
        );
        let spec = format!("{l}/sub=RW:{l}=RO");
        fx.refused(
            &spec,
            "mnt",
            &[],
            &[&format!("branch '{l}/sub' is inside branch '{l}'")],
        );
        // Read-only branches may nest.
        fx.build(&format!("{l}:{l}/sub"), "mnt", &[]).unwrap();
    }

    #[test]
    fn bad_mount_point() {
        let fx = Fx::new();
        fs::write(fx.p("file"), "x").unwrap();
        fs::create_dir(fx.p("upper/m")).unwrap();
        fs::create_dir(fx.p("lower0/m")).unwrap();
        let spec = fx.spec();
        let mp = |rel: &str| format!("mount point '{}'", fx.s(rel));
        fx.refused(
            &spec,
            "nomnt",
            &[],
            &[&format!("{}: no such directory", mp("nomnt"))],
        );
        fx.refused(
            &spec,
            "file",
            &[],
            &[&format!("{}: not a directory", mp("file"))],
        );
        for b in ["upper", "lower0"] {
            let want = format!("{} is the same directory as branch '{}'", mp(b), fx.s(b));
            fx.refused(&spec, b, &[], &[&want]);
            let want = format!("{} is inside branch '{}'", mp(&format!("{b}/m")), fx.s(b));
            fx.refused(&spec, &format!("{b}/m"), &[], &[&want]);
        }
        let mnt = Config::build(Some(&spec), &fx.root, &MountOpts::default(), false, false);
        let want = format!(
            "branch '{}' is inside mount point '{}'",
            fx.s("upper"),
            fx.root.display()
        );
        assert_eq!(mnt.unwrap_err().0, want);
    }

    #[test]
    fn upper_on_a_read_only_filesystem() {
        // A read-only mount of the host's (commonly /sys or /proc/sys in containers).
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let ro = info.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let ro = f.get(5)?.split(',').any(|o| o == "ro");
            let p = Path::new(*f.get(4)?);
            (ro && (p.starts_with("/sys") || p.starts_with("/proc")) && p.is_dir()).then_some(p)
        });
        let Some(ro) = ro else {
            eprintln!("skipped: no read-only /sys or /proc mount here");
            return;
        };
        let fx = Fx::new();
        let spec = format!("{}=RW:{}", ro.display(), fx.s("lower0"));
        let want = format!(
            "upper branch '{}' is on a read-only filesystem",
            ro.display()
        );
        fx.refused(&spec, "mnt", &[], &[&want]);
        fx.build(&spec, "mnt", &["ro"]).unwrap();
    }

    #[test]
    fn branch_sources_conflict_or_are_missing() {
        let fx = Fx::new();
        let none = Config::build(None, &fx.p("mnt"), &MountOpts::default(), false, false);
        assert!(none.unwrap_err().0.contains("no branches"));
        let lower = format!("lowerdir={}", fx.s("lower0"));
        fx.refused(&fx.spec(), "mnt", &[&lower], &["lowerdir", "twice"]);
        let upper = format!("upperdir={}", fx.s("upper"));
        let only_upper = Config::build(None, &fx.p("mnt"), &opts_of(&[&upper]), false, false);
        assert_eq!(
            only_upper.unwrap_err().0,
            "option 'upperdir' needs 'lowerdir'"
        );
        fx.refused(&fx.spec(), "mnt", &[&upper], &["upperdir"]);
        let o = opts_of(&[&format!("lowerdir={}", fx.s("nope"))]);
        let r = Config::build(None, &fx.p("mnt"), &o, false, false);
        assert_eq!(
            r.unwrap_err().0,
            format!("branch '{}': no such directory", fx.s("nope"))
        );
        let o = MountOpts {
            lowerdir: Some(vec![]),
            ..Default::default()
        };
        let r = Config::build(None, &fx.p("mnt"), &o, false, false);
        assert!(r.unwrap_err().0.contains("at least one branch"));
    }

    #[test]
    fn bad_workdir() {
        let fx = Fx::new();
        fs::write(fx.p("file"), "x").unwrap();
        fs::create_dir(fx.p("upper/w")).unwrap();
        let (spec, ro_spec) = (fx.spec(), format!("{}=RO", fx.s("lower0")));
        let w = |rel: &str| format!("workdir={}", fx.s(rel));
        let label = |rel: &str| format!("workdir '{}'", fx.s(rel));
        fx.refused(&ro_spec, "mnt", &[&w("work")], &[&label("work"), "upper"]);
        fx.refused(
            &spec,
            "mnt",
            &[&w("no/work")],
            &[&label("no/work"), "no such directory"],
        );
        fx.refused(
            &spec,
            "mnt",
            &[&w("file")],
            &[&format!("{}: not a directory", label("file"))],
        );
        fx.refused(
            &spec,
            "mnt",
            &[&w("file/w")],
            &[&label("file/w"), "Not a directory"],
        );
        let lower = format!("branch '{}'", fx.s("lower0"));
        fx.refused(
            &spec,
            "mnt",
            &[&w("lower0")],
            &[&label("lower0"), "same directory", &lower],
        );
        fx.refused(
            &spec,
            "mnt",
            &[&w("lower0/w")],
            &[&format!("{} is inside {lower}", label("lower0/w"))],
        );
        fx.refused(
            &spec,
            "mnt",
            &[&w("upper")],
            &[&label("upper"), "same directory"],
        );
        fx.refused(
            &spec,
            "mnt",
            &[&w("upper/w")],
            &[&label("upper/w"), "is inside branch"],
        );
        fx.refused(
            &spec,
            "mnt",
            &[&w("mnt/w")],
            &[&label("mnt/w"), "inside mount point"],
        );
        let root = format!("workdir={}", fx.root.display());
        let want = format!(
            "branch '{}' is inside workdir '{}'",
            fx.s("upper"),
            fx.root.display()
        );
        fx.refused(&spec, "mnt", &[&root], &[&want]);
        // /proc is never on the temp dir's filesystem.
        let want = format!(
            "workdir '/proc' is not on the filesystem of the upper branch '{}'",
            fx.s("upper")
        );
        fx.refused(&spec, "mnt", &["workdir=/proc"], &[&want]);
    }

    #[test]
    fn refusals_create_nothing() {
        let fx = Fx::new();
        fs::write(fx.p("file"), "x").unwrap();
        let before = fx.listing();
        let (u, l) = (fx.s("upper"), fx.s("lower0"));
        let cases: &[(String, &str, &[&str])] = &[
            (format!("{u}=RW:{}=RO", fx.s("nope")), "mnt", &[]),
            (format!("{u}=RW:{u}/x=RO"), "mnt", &[]),
            (format!("{u}=RW:{l}=RO"), "nomnt", &[]),
            (format!("{u}=RW:{l}=RO"), "upper", &[]),
            (format!("{u}=RW:{l}=RO"), "mnt", &["workdir=/proc"]),
        ];
        for (spec, mnt, opts) in cases {
            assert!(fx.build(spec, mnt, opts).is_err(), "{spec} {mnt} {opts:?}");
        }
        let nested = format!("workdir={}", fx.s("nowhere/work"));
        assert!(fx.build(&fx.spec(), "mnt", &[&nested]).is_err());
        let inside = format!("workdir={}", fx.s("lower0/work"));
        assert!(fx.build(&fx.spec(), "mnt", &[&inside]).is_err());
        assert_eq!(fx.listing(), before);
    }
}
