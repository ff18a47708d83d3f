//! Command line -> Config -> mount. Nothing else lives here.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use unionmount::config::{Config, ConfigError, parse_mount_options};
use unionmount::fuse::{self, UnionFs};
use unionmount::inspect;
use unionmount::mounts;
use unionmount::sys;
use unionmount::union::Union;

// The option table and its helpers are for gen-assets and tests/docs.rs.
#[allow(dead_code)]
mod cli;

/// Exit statuses, after mount(8) (whose helpers' statuses it passes on) and fuse-overlayfs.
mod exit {
    /// Mounted (detached), or a foreground daemon unmounted cleanly; `--help`, `--version`.
    pub const OK: u8 = 0;
    /// Incorrect invocation: the command line cannot be parsed.
    pub const USAGE: u8 = 1;
    /// A foreground daemon whose FUSE session ended in an error (as fuse-overlayfs).
    pub const RUNTIME: u8 = 1;
    /// System error: out of memory, cannot fork, no pipe.
    pub const SYSTEM: u8 = 2;
    /// Mount failure: a branch, the mount point or an option refused, or the mount itself
    /// failed (mount(2), fusermount3, the daemon dying before the mount was live).
    pub const MOUNT: u8 = 32;
}

/// A SOURCE that names the mount rather than branches: `none`, `unionmount`, `overlay`...
/// (mount(8) always passes one; with `-o lowerdir=` it is only a label).
fn is_source_word(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', ':', '='])
}

/// A mount point whose daemon died (killed, crashed) answers every access with ENOTCONN
/// until someone detaches it. Do that here, so mounting again needs no manual step.
fn detach_dead_mount(mountpoint: &Path) {
    // statfs always reaches the daemon; a stat may be answered from the kernel's cache.
    // Over io_uring the kernel ends the connection a few milliseconds after the daemon's
    // death; a request in between fails with ECONNABORTED or ECANCELED.
    let mut err = sys::statvfs(mountpoint)
        .err()
        .and_then(|e| e.raw_os_error());
    for _ in 0..100 {
        if !matches!(err, Some(libc::ECONNABORTED | libc::ECANCELED)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        err = sys::statvfs(mountpoint)
            .err()
            .and_then(|e| e.raw_os_error());
    }
    let dead = err == Some(libc::ENOTCONN);
    if !dead {
        return;
    }
    let detached = match std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) {
        Ok(c) if sys::geteuid() == 0 => sys::umount_lazy(&c).is_ok(),
        _ => std::process::Command::new("fusermount3")
            .arg("-uz")
            .arg(mountpoint)
            .status()
            .is_ok_and(|s| s.success()),
    };
    if detached {
        log::warn!(
            "{}: the daemon of the mount there had died; detached it",
            mountpoint.display()
        );
    }
}

/// `unionmount u=RW:l=RO` (no mount point): the one argument is taken as the mount point,
/// which would be refused as "no branches". A lone argument that can only be BRANCHES (it
/// holds ':' or '=') and no `-o lowerdir=` means the mount point was left out.
fn missing_mountpoint(args: &[String], options: &[String]) -> Option<String> {
    let [only] = args else { return None };
    let lowerdir = options
        .iter()
        .flat_map(|o| o.split(','))
        .any(|o| o.starts_with("lowerdir="));
    (!lowerdir && only.contains([':', '='])).then(|| {
        format!(
            "missing MOUNTPOINT: '{only}' is the branches; give the mount point after it \
             (unionmount BRANCHES MOUNTPOINT)"
        )
    })
}

/// Mounting over a live mount would hide it while its daemon lives on underneath, and one
/// `umount` would no longer undo one mount: refuse unless `-o stack` asks for it.
fn refuse_live_mount(mountpoint: &Path) -> Result<(), ConfigError> {
    let p = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    match mounts::mounted_at(&p) {
        // An automount point (x-systemd.automount) is meant to be mounted on.
        Ok(Some(m)) if m.fstype != "autofs" => Err(ConfigError(format!(
            "mount point '{}' already has a live mount ({}): unmount it first, or give \
             -o stack to mount on top of it",
            mountpoint.display(),
            m.describe()
        ))),
        // Anything else is Config::build's to report.
        _ => Ok(()),
    }
}

/// Take `trace` out of the -o options (it is ours, not the mount's): was it there?
fn take_trace_option(options: &mut [String]) -> bool {
    let mut found = false;
    for o in options.iter_mut() {
        let kept: Vec<&str> = o
            .split(',')
            .filter(|w| {
                let t = *w == "trace";
                found |= t;
                !t
            })
            .collect();
        *o = kept.join(",");
    }
    found
}

/// Parse the command line, or print clap's help, version or usage error and say how to exit.
fn parse<T: Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        let _ = e.print();
        ExitCode::from(if e.use_stderr() {
            exit::USAGE
        } else {
            exit::OK
        })
    })
}

/// `unionmount which|diff|commit|export|layers|trace|tree|snapshot|rollback|snapshots ...`
fn run_tool() -> ExitCode {
    use cli::Tool;
    let parsed = match parse::<cli::ToolCli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // A report piped into `head` ends quietly when the pipe closes. Not commit: killed
    // between unmount and remount it would leave the stack half swapped, so it goes on and
    // ignores its closed stdout.
    if !matches!(parsed.tool, Tool::Commit { .. }) {
        sys::default_sigpipe();
    }
    let (name, result) = match parsed.tool {
        Tool::Which { paths } => ("which", which(&paths)),
        Tool::Diff {
            target,
            lowers,
            since,
            json,
        } => (
            "diff",
            inspect::diff::run(&target, &lowers, since.as_deref(), json),
        ),
        Tool::Commit {
            mountpoint,
            to,
            remount,
        } => ("commit", inspect::commit::run(&mountpoint, &to, remount)),
        Tool::Export {
            target,
            tar,
            lowers,
            digest,
        } => (
            "export",
            inspect::export::run(&target, &lowers, &tar, digest),
        ),
        Tool::Layers { mountpoint } => ("layers", layers(&mountpoint)),
        Tool::Trace { mountpoint } => ("trace", trace(&mountpoint)),
        Tool::Snapshot {
            mountpoint,
            name,
            drop,
        } => (
            "snapshot",
            match drop {
                Some(d) => inspect::snapshots::drop(&mountpoint, &d),
                None => inspect::snapshots::snapshot(&mountpoint, name.as_deref()),
            },
        ),
        Tool::Rollback { mountpoint, name } => (
            "rollback",
            inspect::snapshots::rollback(&mountpoint, name.as_deref()),
        ),
        Tool::Snapshots { mountpoint } => ("snapshots", inspect::snapshots::list(&mountpoint)),
        Tool::Tree {
            mountpoint,
            path,
            depth,
            html,
            color,
        } => (
            "tree",
            inspect::draw::run(
                &mountpoint,
                path.as_deref(),
                depth,
                html.as_deref(),
                match color.as_str() {
                    "always" => inspect::draw::Color::Always,
                    "never" => inspect::draw::Color::Never,
                    _ => inspect::draw::Color::Auto,
                },
            ),
        ),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("unionmount {name}: {e}");
            ExitCode::from(exit::RUNTIME)
        }
    }
}

fn which(paths: &[std::path::PathBuf]) -> inspect::Result<()> {
    let mut failed = 0;
    for (i, p) in paths.iter().enumerate() {
        let answer = inspect::find_mount(p).and_then(|(mp, rel)| {
            let rel = inspect::clean_relative(&rel)?;
            inspect::control::request_lines(&mp, &format!("which {}", rel.display()))
        });
        if i > 0 {
            println!();
        }
        match answer {
            Ok(lines) => {
                println!("{}", p.display());
                for l in lines {
                    println!("  {l}");
                }
            }
            Err(e) => {
                eprintln!("unionmount which: {}: {e}", p.display());
                failed += 1;
            }
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} of {} paths not answered", paths.len())),
    }
}

fn mount_point_of(p: &Path) -> inspect::Result<std::path::PathBuf> {
    let (mp, rel) = inspect::find_mount(p)?;
    if !rel.as_os_str().is_empty() {
        return Err(format!(
            "{} is inside the mount {}: give the mount point",
            p.display(),
            mp.display()
        ));
    }
    Ok(mp)
}

fn layers(p: &Path) -> inspect::Result<()> {
    let mp = mount_point_of(p)?;
    println!("{}", mp.display());
    for l in inspect::control::request_lines(&mp, "layers")? {
        println!("{l}");
    }
    Ok(())
}

fn trace(p: &Path) -> inspect::Result<()> {
    use std::io::BufRead;
    let mp = mount_point_of(p)?;
    let r = inspect::control::request(&mp, "trace")?;
    eprintln!("tracing {} (Ctrl-C to stop)", mp.display());
    let stdout = std::io::stdout();
    for line in r.lines() {
        let Ok(line) = line else { break };
        let mut o = stdout.lock();
        if writeln!(o, "{line}").and_then(|_| o.flush()).is_err() {
            break;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Some(a) = std::env::args_os().nth(1)
        && a.to_str().is_some_and(|a| cli::TOOLS.contains(&a))
    {
        return run_tool();
    }
    let mut cli = match parse::<cli::Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Quiet on success when detaching, as mount(8) and fuse-overlayfs are; RUST_LOG overrides.
    let level = match (cli.debug, cli.foreground) {
        (true, _) => "debug",
        (false, true) => "info",
        (false, false) => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let trace = take_trace_option(&mut cli.options);

    if let Some(msg) = missing_mountpoint(&cli.args, &cli.options) {
        eprintln!("unionmount: {msg}");
        return ExitCode::from(exit::USAGE);
    }
    let config = parse_mount_options(&cli.options).and_then(|mut opts| {
        // `unionmount SOURCE MOUNTPOINT -o ...`, the form mount.fuse3 runs: SOURCE is the
        // branch spec, or with lowerdir= a word to ignore. Either way it names the mount.
        let (branches, mountpoint) = match cli.args.as_slice() {
            [m] => (None, m.as_str()),
            [s, m] if opts.lowerdir.is_some() && is_source_word(s) => (None, m.as_str()),
            [b, m] => (Some(b.as_str()), m.as_str()),
            _ => unreachable!("clap enforces 1..=2 arguments"),
        };
        if cli.args.len() == 2 && !cli.args[0].contains(',') {
            opts.fsname.get_or_insert_with(|| cli.args[0].clone());
        }
        detach_dead_mount(Path::new(mountpoint));
        if !opts.stack {
            refuse_live_mount(Path::new(mountpoint))?;
        }
        Config::build(
            branches,
            Path::new(mountpoint),
            &opts,
            cli.foreground || cli.debug,
            cli.debug,
        )
    });
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("unionmount: {e}");
            return ExitCode::from(exit::MOUNT);
        }
    };
    // Modes of created files come from the caller's request, not from our umask.
    sys::set_umask(0);
    sys::raise_nofile_limit();
    if config.foreground {
        return serve(&config, None, trace);
    }
    detach(&config, trace)
}

/// Fork; the parent exits once the child reports the mount live (or why it is not).
fn detach(config: &Config, trace: bool) -> ExitCode {
    let (rd, wr) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("unionmount: pipe: {e}");
            return ExitCode::from(exit::SYSTEM);
        }
    };
    match sys::fork() {
        Err(e) => {
            eprintln!("unionmount: fork: {e}");
            ExitCode::from(exit::SYSTEM)
        }
        Ok(0) => {
            drop(rd);
            sys::setsid();
            serve(config, Some(std::fs::File::from(wr)), trace)
        }
        Ok(_) => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            if msg == "ok\n" {
                ExitCode::from(exit::OK)
            } else {
                if msg.is_empty() {
                    msg = "the daemon exited before the mount was live\n".into();
                }
                eprint!("unionmount: {msg}");
                ExitCode::from(exit::MOUNT)
            }
        }
    }
}

/// How long a signalled daemon waits for its session to end after unmounting, before it
/// ends the FUSE connection itself.
const SESSION_END_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Mount and serve until unmounted. `ready` is told "ok" once the mount is live. With
/// `trace`, every copy-up, whiteout and opaque directory is printed on stderr, which a
/// detached daemon then keeps (the mounting terminal).
fn serve(config: &Config, mut ready: Option<std::fs::File>, trace: bool) -> ExitCode {
    sys::one_malloc_arena();
    let mut fail = |msg: String| {
        match ready.take() {
            Some(mut w) => {
                let _ = writeln!(w, "{msg}");
            }
            None => eprintln!("unionmount: {msg}"),
        }
        ExitCode::from(exit::MOUNT)
    };
    let union = match Union::new(&config.settings) {
        Ok(u) => Arc::new(u),
        Err(e) => return fail(e.to_string()),
    };
    // Signals are taken by one thread of their own, so block them before any other starts.
    let signals = sys::block_signals();
    let fs = UnionFs::new(union.clone(), config);
    let (session, mut unmounter) = match fuse::mount(fs, config) {
        Ok(s) => s,
        Err(e) => {
            union.shutdown();
            return fail(format!("mount {}: {e}", config.mountpoint.display()));
        }
    };
    // Our mount's device number (its FUSE connection): the control socket is named by it,
    // and a signal detaches the mount at our path only while the one there is ours.
    let dev = match mounts::visible(&config.mountpoint) {
        Ok(m) if m.is_unionmount() => Some(m.dev),
        Ok(m) => {
            log::warn!("the mount visible now is {}, not ours", m.describe());
            None
        }
        Err(e) => {
            log::warn!("{}: {e}", config.mountpoint.display());
            None
        }
    };
    // The control socket (`unionmount which/layers/trace/commit`), gone at unmount.
    let control = match dev.map(|d| inspect::control::Control::start(union.clone(), config, d)) {
        Some(Ok(c)) => Some(Arc::new(c)),
        Some(Err(e)) => {
            log::warn!(
                "control socket: {e}; which, layers, trace and commit will not reach this mount"
            );
            None
        }
        None => None,
    };
    if trace {
        let rx = union.events.subscribe();
        let u = union.clone();
        std::thread::spawn(move || {
            for ev in rx {
                eprintln!("unionmount: {}", inspect::report::event_line(&u, &ev));
            }
        });
    }
    let (ended, session_ended) = std::sync::mpsc::channel::<()>();
    {
        let (union, control, mountpoint) =
            (union.clone(), control.clone(), config.mountpoint.clone());
        std::thread::spawn(move || {
            let sig = sys::wait_signal(&signals);
            log::info!("signal {sig}: unmounting {}", mountpoint.display());
            // By path we can only detach what is visible there; a newer mount on top of ours,
            // or at the same place after ours was unmounted, is not ours to take away.
            let ours = dev.is_none_or(|d| mounts::visible(&mountpoint).is_ok_and(|m| m.dev == d));
            if !ours {
                log::info!("{}: the mount there now is not ours", mountpoint.display());
            } else if let Err(e) = unmounter.unmount() {
                log::warn!("unmount: {e}");
            }
            // The kernel ends the session once the mount is gone from every namespace.
            if session_ended.recv_timeout(SESSION_END_GRACE)
                != Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            {
                return;
            }
            // Another mount namespace holds a copy of the mount (or ours is covered, or busy
            // files keep it): ending the process closes /dev/fuse, which ends the connection
            // everywhere. Its users then see ENOTCONN, and the next mount detaches it.
            log::info!(
                "the mount is still in use (open files, another mount namespace, a mount on \
                 top); ending its FUSE connection"
            );
            if let Some(c) = &control {
                c.remove();
            }
            union.shutdown();
            log::info!("unmounted");
            std::process::exit(i32::from(exit::OK));
        });
    }
    if let Some(mut w) = ready.take() {
        let _ = w.write_all(b"ok\n");
        drop(w);
        if !trace {
            sys::redirect_stdio_to_null();
        }
    }
    let result = session.run();
    let _ = ended.send(());
    if let Some(c) = &control {
        c.remove();
    }
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            log::error!("session ended: {e}");
            ExitCode::from(exit::RUNTIME)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_words() {
        for w in ["none", "unionmount", "overlay", "my-union"] {
            assert!(is_source_word(w), "{w}");
        }
        for s in ["", "/u=RW:/b", "upper=RW", "a:b", "./x"] {
            assert!(!is_source_word(s), "{s}");
        }
    }

    #[test]
    fn a_lone_branch_spec_lacks_its_mount_point() {
        let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for spec in ["u=RW:l=RO", "/u=RW", "a:b"] {
            let msg = missing_mountpoint(&strs(&[spec]), &[]).unwrap();
            assert!(msg.contains("MOUNTPOINT") && msg.contains(spec), "{msg}");
        }
        // A lone mount point with lowerdir=, or BRANCHES and MOUNTPOINT: nothing missing.
        let lower = strs(&["ro,lowerdir=/a:/b"]);
        assert_eq!(missing_mountpoint(&strs(&["/m"]), &lower), None);
        assert_eq!(missing_mountpoint(&strs(&["/u=RW:/l", "/m"]), &[]), None);
    }
}
