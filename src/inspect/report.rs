//! What the daemon answers on the control channel: the stack, the live layer report,
//! `which` for one path, and trace lines. Everything here reads the union through its
//! public API and changes nothing: `which` walks with nodes of its own that the kernel
//! never sees.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::{Config, MountFlags};
use crate::sys;
use crate::union::events::{Event, human_bytes};
use crate::union::whiteout;
use crate::union::{Union, WhiteoutFormat};

/// The mount's settings, kept from its Config.
#[derive(Debug, Clone)]
pub struct Info {
    pub timeout: Duration,
    pub negative_timeout: Duration,
    pub threads: usize,
    pub whiteout: WhiteoutFormat,
    pub volatile: bool,
    /// Mounted with `-o stack` (a remount on top of what is below it needs it again).
    pub stack: bool,
    pub read_only: bool,
    pub allow_other: bool,
    pub workdir: Option<std::path::PathBuf>,
    pub flags: MountFlags,
}

impl Info {
    pub fn from_config(c: &Config) -> Info {
        Info {
            timeout: c.timeout,
            negative_timeout: c.negative_timeout,
            threads: c.threads,
            whiteout: c.settings.whiteout,
            volatile: c.settings.volatile,
            stack: c.stack,
            read_only: c.settings.read_only,
            allow_other: c.allow_other,
            workdir: c.settings.workdir.clone(),
            flags: c.flags,
        }
    }

    /// `-o` options that mount the same way again.
    pub fn options(&self) -> String {
        let mut o = vec![
            format!("timeout={}", self.timeout.as_secs_f64()),
            format!("negative_timeout={}", self.negative_timeout.as_secs_f64()),
            format!("threads={}", self.threads),
            format!("whiteout={}", self.whiteout.name()),
        ];
        if self.volatile {
            o.push("volatile".into());
        }
        if self.stack {
            o.push("stack".into());
        }
        if self.read_only {
            o.push("ro".into());
        }
        if self.allow_other {
            o.push("allow_other".into());
        }
        if let Some(w) = &self.workdir {
            o.push(format!("workdir={}", w.display()));
        }
        // Only what differs from the defaults, so `commit --remount` keeps `-o dev` too.
        let f = self.flags;
        for (on, name) in [
            (f.nosuid, "nosuid"),
            (f.dev, "dev"),
            (f.noexec, "noexec"),
            (f.noatime, "noatime"),
            (f.noacl, "noacl"),
        ] {
            if on {
                o.push(name.into());
            }
        }
        o.join(",")
    }
}

/// Reply to `stack`.
pub fn stack(u: &Union, info: &Info) -> Vec<String> {
    let mut out = vec![
        format!("pid {}", std::process::id()),
        format!("options {}", info.options()),
    ];
    for l in &u.stack().layers {
        out.push(format!(
            "branch {}\t{}\t{}",
            match (l.writable, &l.snapshot) {
                (true, _) => "RW",
                (false, Some(_)) => "SNAP",
                (false, None) => "RO",
            },
            l.path.display(),
            l.spec
        ));
    }
    out
}

/// Reply to `layers`: the human-readable report.
pub fn layers(u: &Union, info: &Info) -> Vec<String> {
    let mut out = vec![format!(
        "{:<3} {:<14} {:<4} {:>8} {:>10}  directory",
        "#", "branch", "mode", "files", "bytes"
    )];
    for l in &u.stack().layers {
        let super::Usage { files, bytes, .. } = super::usage(&l.path);
        out.push(format!(
            "{:<3} {:<14} {:<4} {:>8} {:>10}  {}",
            l.index,
            l.name(),
            if l.writable { "RW" } else { "RO" },
            files,
            human_bytes(bytes),
            l.path.display()
        ));
    }
    let c = &u.events.counters;
    out.push(String::new());
    out.push(format!(
        "since mount: {} copy-ups ({}), {} whiteouts, {} opaque dirs, {} redirected dirs",
        c.copy_ups.load(Ordering::Relaxed),
        human_bytes(c.copied_bytes.load(Ordering::Relaxed)),
        c.whiteouts.load(Ordering::Relaxed),
        c.opaques.load(Ordering::Relaxed),
        c.redirects.load(Ordering::Relaxed),
    ));
    out.push(format!(
        "nodes known to the kernel: {}; daemon pid {}",
        u.nodes.len(),
        std::process::id()
    ));
    let kernel = match u.events.kernel.lock().clone() {
        k if k.is_empty() => "not reported".to_string(),
        k => k,
    };
    out.push(format!("kernel: {kernel}"));
    out.push(format!("xattrs in the branches: {}", u.xattr_scan_state()));
    out.push(format!(
        "cache: entry/attr TTL {}s, negative TTL {}s; {} threads; whiteouts written as {}{}{}",
        info.timeout.as_secs_f64(),
        info.negative_timeout.as_secs_f64(),
        info.threads,
        match info.whiteout {
            WhiteoutFormat::WhFiles => ".wh. files",
            WhiteoutFormat::Overlay => "overlay char devices",
        },
        if info.volatile { "; volatile" } else { "" },
        if info.read_only || !u.writable() {
            "; read-only"
        } else {
            ""
        },
    ));
    out
}

/// A trace line, branches named by their directory: `copy-up etc/hosts from base (3.1 KiB, 0.2 ms)`.
pub fn event_line(u: &Union, e: &Event) -> String {
    let rel = |p: &str| p.trim_start_matches('/').to_string();
    match e {
        Event::CopyUp {
            path,
            from,
            bytes,
            took,
        } => {
            let name = u
                .stack()
                .layers
                .get(*from)
                .map(|l| l.name())
                .unwrap_or_else(|| format!("layer {from}"));
            format!(
                "copy-up {} from {name} ({}, {:.1} ms)",
                rel(path),
                human_bytes(*bytes),
                took.as_secs_f64() * 1000.0
            )
        }
        Event::Whiteout { path } => format!("whiteout {}", rel(path)),
        Event::Opaque { path } => format!("opaque {}", rel(path)),
        Event::Redirect { from, to } => format!("redirect {} -> lower {}", rel(to), rel(from)),
    }
}

fn describe_layer(u: &Union, i: usize) -> String {
    let l = &u.stack().layers[i];
    format!(
        "{} (branch {}, {}, {})",
        l.name(),
        i,
        if l.writable { "RW" } else { "RO" },
        l.spec
    )
}

fn kind_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "directory",
        libc::S_IFREG => "file",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        _ => "entry",
    }
}

/// Where `name` in the layer directory `d` really is (a directory moved within a layer has
/// its parts below at another path).
fn real_path(u: &Union, d: &crate::union::node::LayerDir, name: &OsStr) -> std::path::PathBuf {
    let mut p = u.stack().layers[d.layer].path.clone();
    p.extend(d.path.iter());
    p.join(name)
}

/// Entries named `name` in the parent's layers below `below` (what the top one hides),
/// as "<real path> (<branch>)"; stops at a whiteout, as resolution does.
fn hidden_below(
    u: &Union,
    pdirs: &[crate::union::node::LayerDir],
    name: &OsStr,
    below: usize,
) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let wh = whiteout::whiteout_name(name);
    for d in pdirs.iter().filter(|d| d.layer > below) {
        let real = real_path(u, d, name);
        match sys::fstatat(d.raw(), name) {
            Ok(st) if whiteout::is_whiteout_dev(&st) => {
                out.push((
                    d.layer,
                    format!(
                        "{} (a whiteout in {})",
                        real.display(),
                        u.stack().layers[d.layer].name()
                    ),
                ));
                break;
            }
            Ok(st) => {
                out.push((
                    d.layer,
                    format!(
                        "{} ({}, {})",
                        real.display(),
                        kind_name(st.st_mode),
                        u.stack().layers[d.layer].name()
                    ),
                ));
                if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    break;
                }
            }
            Err(_) => {
                if sys::fstatat(d.raw(), &wh).is_ok() {
                    break;
                }
            }
        }
    }
    out
}

/// Reply to `which REL`.
pub fn which(u: &Union, rel: &str) -> Result<Vec<String>, String> {
    let rel = super::clean_relative(Path::new(rel))?;
    let comps: Vec<OsString> = rel.iter().map(|c| c.to_owned()).collect();
    let mut out = Vec::new();
    if comps.is_empty() {
        let root = u.root();
        let dirs = u.dirs_of(&root).map_err(|e| e.to_string())?;
        let layers: Vec<String> = dirs
            .iter()
            .map(|d| u.stack().layers[d.layer].name())
            .collect();
        out.push(format!("served by   {}", describe_layer(u, dirs[0].layer)));
        out.push(format!(
            "state       the root, merged from {}",
            layers.join(", ")
        ));
        return Ok(out);
    }
    let mut parent = u.root();
    for (i, name) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let here: std::path::PathBuf = comps[..=i].iter().collect();
        let pdirs = u.dirs_of(&parent).map_err(|e| e.to_string())?;
        if whiteout::is_reserved(name) {
            return Err(format!(
                "{}: names beginning .wh. never show in the merged tree",
                here.display()
            ));
        }
        let found = u.probe(&parent, name).map_err(|e| e.to_string())?;
        let Some(found) = found else {
            // Not in the merged view: whited out, or simply absent.
            let wh = whiteout::whiteout_name(name);
            for d in &pdirs {
                let layer = &u.stack().layers[d.layer];
                let whpath = layer.path.join(&here);
                let marker = match sys::fstatat(d.raw(), name) {
                    Ok(st) if whiteout::is_whiteout_dev(&st) => {
                        Some(format!("{} (character device 0/0)", whpath.display()))
                    }
                    Ok(_) => Some(format!("{} (overlay whiteout xattr)", whpath.display())),
                    Err(_) if sys::fstatat(d.raw(), &wh).is_ok() => Some(
                        layer
                            .path
                            .join(here.parent().unwrap_or(Path::new("")))
                            .join(&wh)
                            .display()
                            .to_string(),
                    ),
                    Err(_) => None,
                };
                if let Some(m) = marker {
                    out.push(format!("whited out  in {}", describe_layer(u, d.layer)));
                    out.push(format!("whiteout    {m}"));
                    for (_, h) in hidden_below(u, &pdirs, name, d.layer) {
                        out.push(format!("hides       {h}"));
                    }
                    if !last {
                        out.push(format!("(so {} does not exist either)", rel.display()));
                    }
                    return Ok(out);
                }
            }
            return Err(if last {
                "no such file or directory in the merged tree".to_string()
            } else {
                format!(
                    "{}: no such file or directory in the merged tree",
                    here.display()
                )
            });
        };
        let is_dir = found.st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if !last {
            if !is_dir {
                return Err(format!("{}: not a directory", here.display()));
            }
            parent = u.node_for(&parent, name, found);
            continue;
        }
        let top = found.layer;
        let holder = pdirs.iter().find(|d| d.layer == top);
        out.push(format!("served by   {}", describe_layer(u, top)));
        out.push(format!(
            "real path   {}",
            match holder {
                Some(d) => real_path(u, d, name),
                None => u.stack().layers[top].path.join(&here),
            }
            .display()
        ));
        let merged: Vec<usize> = found.dirs.iter().map(|d| d.layer).collect();
        let hidden: Vec<String> = hidden_below(u, &pdirs, name, top)
            .into_iter()
            .filter(|(l, _)| !is_dir || !merged.contains(l))
            .map(|(_, h)| h)
            .collect();
        let upper = top == 0 && u.writable();
        let mut state = Vec::new();
        if is_dir {
            let opaque = u
                .dir_markers(found.dirs[0].raw())
                .map(|m| m.0)
                .unwrap_or(false)
                || (upper && sys::fstatat(pdirs[0].raw(), &whiteout::whiteout_name(name)).is_ok());
            // Moved within its layer, through this mount or when that layer was an upper.
            let redirect = holder.and_then(|d| u.redirect_of(d.raw(), name, &parent));
            if let Some(r) = redirect {
                let from: std::path::PathBuf = r.iter().collect();
                state.push(format!(
                    "moved here in {}; its parts below are read from /{}",
                    u.stack().layers[top].name(),
                    from.display()
                ));
            }
            if opaque && !hidden.is_empty() {
                state.push(
                    "opaque directory: nothing of the same directory in lower branches shows"
                        .into(),
                );
            } else if opaque {
                state.push("opaque directory".into());
            }
            if found.dirs.len() > 1 {
                let names: Vec<String> = found
                    .dirs
                    .iter()
                    .map(|d| u.stack().layers[d.layer].name())
                    .collect();
                state.push(format!("directory merged from {}", names.join(", ")));
            } else if upper && !hidden.is_empty() && !opaque {
                state.push("directory copied up".into());
            } else if upper && hidden.is_empty() {
                state.push("directory created in the upper".into());
            } else if !opaque {
                state.push(format!(
                    "directory of {} only",
                    u.stack().layers[top].name()
                ));
            }
        } else if upper && !hidden.is_empty() {
            state.push(format!(
                "{} copied up (the lower copy is hidden)",
                kind_name(found.st.st_mode)
            ));
        } else if upper {
            state.push(format!(
                "{} created in the upper (new)",
                kind_name(found.st.st_mode)
            ));
        } else {
            state.push(format!(
                "{} from a read-only branch (not copied up)",
                kind_name(found.st.st_mode)
            ));
        }
        for s in state {
            out.push(format!("state       {s}"));
        }
        for h in hidden {
            out.push(format!("hides       {h}"));
        }
    }
    Ok(out)
}
