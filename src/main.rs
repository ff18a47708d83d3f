//! Command line -> Config -> mount. Nothing else lives here.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use unionmount::config::{Config, parse_mount_options};
use unionmount::fuse::{self, UnionFs};
use unionmount::sys;
use unionmount::union::Union;

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

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    // Quiet on success when detaching, as mount(8) and fuse-overlayfs are; RUST_LOG overrides.
    let level = match (cli.debug, cli.foreground) {
        (true, _) => "debug",
        (false, true) => "info",
        (false, false) => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();

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
        return serve(&config, None);
    }
    detach(&config)
}

/// Fork; the parent exits once the child reports the mount live (or why it is not).
fn detach(config: &Config) -> ExitCode {
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
            serve(config, Some(std::fs::File::from(wr)))
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

/// Mount and serve until unmounted. `ready` is told "ok" once the mount is live.
fn serve(config: &Config, mut ready: Option<std::fs::File>) -> ExitCode {
    let mut fail = |msg: String| {
        match ready.take() {
            Some(mut w) => {
                let _ = writeln!(w, "{msg}");
            }
            None => eprintln!("unionmount: {msg}"),
        }
        ExitCode::from(exit::MOUNT)
    };
    let union = match Union::new(config) {
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
    std::thread::spawn(move || {
        let sig = sys::wait_signal(&signals);
        log::info!("signal {sig}: unmounting");
        if let Err(e) = unmounter.unmount() {
            log::warn!("unmount: {e}");
        }
    });
    if let Some(mut w) = ready.take() {
        let _ = w.write_all(b"ok\n");
        drop(w);
        sys::redirect_stdio_to_null();
    }
    match session.run() {
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
}
