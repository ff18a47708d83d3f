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

const EXAMPLES: &str = "\
Examples:
  unionmount /srv/upper=RW:/srv/base=RO /mnt/merged
      merge base (read-only) under upper (writable) at /mnt/merged
  unionmount -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w /mnt/merged
      the same in overlayfs style (lowers top first)
  unionmount /img/layer2:/img/layer1 /mnt/ro
      no RW branch: a read-only view of a layer stack
  fusermount3 -u /mnt/merged      (or: umount /mnt/merged)
      unmount";

/// A union filesystem: several directories stacked into one tree; changes land in the
/// writable top branch, the read-only branches below are never modified.
#[derive(Parser, Debug)]
#[command(name = "unionmount", version, after_help = EXAMPLES)]
struct Cli {
    /// Stay in the foreground (default: detach once the mount is live).
    #[arg(short = 'f')]
    foreground: bool,
    /// Stay in the foreground and log every operation.
    #[arg(short = 'd')]
    debug: bool,
    /// Mount options, comma-separated (repeatable): ro, allow_other, timeout=SECS,
    /// negative_timeout=SECS, threads=N, volatile, whiteout=wh|overlay,
    /// lowerdir=L1:L2,upperdir=U,workdir=W.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// BRANCHES (dir[=RW|=RO]:dir[=RO]:..., top first) and MOUNTPOINT; with -o lowerdir=
    /// only MOUNTPOINT.
    #[arg(required = true, num_args = 1..=2, value_name = "BRANCHES MOUNTPOINT")]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.debug { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();

    let (branches, mountpoint) = match cli.args.as_slice() {
        [m] => (None, m.as_str()),
        [b, m] => (Some(b.as_str()), m.as_str()),
        _ => unreachable!("clap enforces 1..=2 arguments"),
    };
    let config = parse_mount_options(&cli.options).and_then(|opts| {
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
            return ExitCode::FAILURE;
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
            return ExitCode::FAILURE;
        }
    };
    match sys::fork() {
        Err(e) => {
            eprintln!("unionmount: fork: {e}");
            ExitCode::FAILURE
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
                ExitCode::SUCCESS
            } else {
                if msg.is_empty() {
                    msg = "the daemon exited before the mount was live\n".into();
                }
                eprint!("unionmount: {msg}");
                ExitCode::FAILURE
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
        ExitCode::FAILURE
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
    log::info!(
        "mounted {} on {} ({} branches, {})",
        config
            .branches
            .iter()
            .map(|b| b.spec.as_str())
            .collect::<Vec<_>>()
            .join(":"),
        config.mountpoint.display(),
        config.branches.len(),
        if config.read_only {
            "read-only"
        } else {
            "read-write"
        }
    );
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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("session ended: {e}");
            ExitCode::FAILURE
        }
    }
}
