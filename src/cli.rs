//! The clap definition of the command line, and nothing else: `main.rs` parses with it and
//! `examples/gen-assets.rs` (`make assets`) turns it into the man page and the shell
//! completions, so the three never disagree. It depends on clap alone for that reason.

use clap::Parser;

/// `--help` text after the options: one example per way of mounting.
pub const EXAMPLES: &str = "\
Examples:
  unionmount /srv/upper=RW:/srv/base=RO /mnt/merged
      merge base (read-only) under upper (writable) at /mnt/merged
  unionmount -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w /mnt/merged
      the same in overlayfs style (lowers top first)
  unionmount /img/layer2:/img/layer1 /mnt/ro
      no RW branch: a read-only view of a layer stack
  unionmount -o lowerdir=/img/layer2:/img/layer1 /mnt/ro
      the same, overlayfs style
  unionmount -d /srv/upper=RW:/srv/base=RO /mnt/merged
      stay in the foreground, log every operation (or: RUST_LOG=debug)
  mount -t fuse.unionmount /srv/upper=RW:/srv/base=RO /mnt/merged
  mount -t fuse.unionmount -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w none /mnt/merged
      through mount(8) and mount.fuse3 (needs unionmount in /usr/bin or /usr/local/bin)
  /srv/upper=RW:/srv/base=RO  /mnt/merged  fuse.unionmount  defaults,nofail  0 0
      an /etc/fstab line (or: none /mnt/merged fuse.unionmount lowerdir=..,upperdir=.. 0 0)
  fusermount3 -u /mnt/merged      (or: umount /mnt/merged)
      unmount

Looking at the layers (`unionmount COMMAND --help` for each):
  unionmount which PATH...          which branch serves a path, what it hides
  unionmount diff UPPER|MOUNTPOINT  the change set, as `docker diff` prints it
  unionmount commit MOUNTPOINT --to DIR [--remount]   the changes as a new layer
  unionmount export UPPER|MOUNTPOINT --tar FILE [--digest]   an OCI layer tarball
  unionmount layers MOUNTPOINT      the live stack, counters, kernel features
  unionmount trace MOUNTPOINT       copy-ups, whiteouts, opaque dirs as they happen
  unionmount tree MOUNTPOINT [PATH] [--html FILE]   the merged tree, each entry's branch

Exit status: 0 mounted; 1 bad command line; 2 system error (fork, pipe);
32 mount failure (a branch, the mount point or an option refused, or mount failed).";

/// Union filesystem on FUSE: stack directories into one tree, changes land in the top branch
#[derive(Parser, Debug)]
#[command(
    name = "unionmount",
    version,
    after_help = EXAMPLES,
    long_about = "A union filesystem on FUSE: several directories (branches) stacked into one \
tree. Lookups resolve top-down; the first branch may be writable (RW) and every change lands \
in it, copying files up from the read-only (RO) branches below on first write; deletions of \
lower entries leave whiteouts. The lower branches are never modified.\n\n\
The first positional argument is BRANCHES, `dir[=RW|=RO]:dir[=RO]:...`, top first. With \
`-o lowerdir=` the branches come from the options instead; a SOURCE word given then (as \
mount(8) and mount.fuse3 pass one: `none`, `unionmount`, anything without '/', ':' or '=') \
is ignored."
)]
pub struct Cli {
    /// Stay in the foreground (default: detach once the mount is live).
    #[arg(short = 'f')]
    pub foreground: bool,
    /// Stay in the foreground and log every operation (debug level; RUST_LOG overrides).
    #[arg(short = 'd')]
    pub debug: bool,
    /// Mount options, comma-separated (repeatable): ro, rw, allow_other, timeout=SECS
    /// (default 10), negative_timeout=SECS, threads=N, volatile, whiteout=wh|overlay,
    /// lowerdir=L1:L2,upperdir=U,workdir=W, fsname=NAME, nosuid, nodev, noexec, noatime,
    /// noacl, uidmapping=, gidmapping=, squash_to_root, squash_to_uid=N, squash_to_gid=N,
    /// xattr_permissions=1|2, trace (print copy-ups, whiteouts and opaque directories on
    /// stderr as they happen); see the README for each. Flags that only mean something to
    /// mount(8) or fstab (defaults, nofail, noauto, _netdev, user, x-*, ...) are ignored.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// BRANCHES (dir[=RW|=RO]:dir[=RO]:..., top first) or a SOURCE word, then MOUNTPOINT;
    /// with -o lowerdir= only MOUNTPOINT is needed.
    #[arg(
        required = true,
        num_args = 1..=2,
        value_name = "BRANCHES MOUNTPOINT",
        value_hint = clap::ValueHint::DirPath
    )]
    pub args: Vec<String>,
}

/// The first arguments that select an inspection command instead of mounting.
pub const TOOLS: [&str; 7] = [
    "which", "diff", "commit", "export", "layers", "trace", "tree",
];

/// The inspection commands: `unionmount COMMAND ...` where COMMAND is one of `TOOLS`.
#[derive(Parser, Debug)]
#[command(name = "unionmount", version)]
pub struct ToolCli {
    #[command(subcommand)]
    pub tool: Tool,
}

#[derive(clap::Subcommand, Debug)]
pub enum Tool {
    /// Which branch serves a path of a mount, and what it hides below.
    ///
    /// For each PATH inside a unionmount mount: the branch that serves it (upper or which
    /// lower, by name, spec and directory), whether it was copied up, created in the upper,
    /// whited out or is an opaque directory, and the entries of lower branches it hides. The
    /// short form is an xattr on the merged file: `getfattr -n user.unionmount.layer PATH`
    /// ("<index> <branch directory>"; never listed, so cp -a and tar do not copy it).
    #[command(after_help = "Example:
  unionmount which /mnt/merged/etc/hosts /mnt/merged/app/hello.txt")]
    Which {
        #[arg(required = true, value_hint = clap::ValueHint::AnyPath)]
        paths: Vec<std::path::PathBuf>,
    },
    /// The change set of an upper directory, as `docker diff` prints it.
    ///
    /// One line per entry: A added, C changed (it exists in a lower branch), D deleted (a
    /// whiteout in any format: .wh. file, char device 0/0, overlay xattr). TARGET is a
    /// mount point (its upper and lowers are asked of the daemon) or an upper directory;
    /// then A and C are told apart by --lower directories if given, else by the copy-up
    /// origin xattr unionmount and overlayfs leave on copied-up entries (as root).
    #[command(after_help = "Examples:
  unionmount diff /mnt/merged
  unionmount diff /srv/upper --lower /srv/base --json")]
    Diff {
        #[arg(value_hint = clap::ValueHint::DirPath)]
        target: std::path::PathBuf,
        /// A lower branch (repeatable, top first), to tell changed from added.
        #[arg(long = "lower", value_name = "DIR")]
        lowers: Vec<std::path::PathBuf>,
        /// One JSON array of {"kind", "path", "type"[, "opaque", "moved_from"]}.
        #[arg(long)]
        json: bool,
    },
    /// Turn a mount's changes into a new read-only layer directory ("docker commit").
    ///
    /// Writes the change set of the mount's upper into DIR (new or empty) in the .wh.
    /// format, keeping owners, modes, times, xattrs and hard links. The mount goes on
    /// unchanged. With --remount the upper becomes the layer and a fresh upper starts: the
    /// mount is unmounted (refused while files are open in it: the stack cannot be swapped
    /// under open files), DIR written, the upper emptied, and the mount point mounted again
    /// on UPPER=RW:DIR=RO:LOWERS... with the same options.
    #[command(after_help = "Examples:
  unionmount commit /mnt/merged --to /srv/layer1
  unionmount commit /mnt/merged --to /srv/layer1 --remount")]
    Commit {
        #[arg(value_hint = clap::ValueHint::DirPath)]
        mountpoint: std::path::PathBuf,
        /// The new layer directory (must not exist or be empty).
        #[arg(long = "to", value_name = "DIR", required = true)]
        to: std::path::PathBuf,
        /// Unmount, commit, empty the upper and mount again with DIR stacked below it.
        #[arg(long)]
        remount: bool,
    },
    /// The change set as an OCI image layer tarball (podman/docker can import it).
    ///
    /// Deletions become `.wh.<name>` entries, opaque directories get `.wh..wh..opq`; owners,
    /// modes, mtimes, xattrs (PAX SCHILY.xattr) and hard links are kept; entries in a fixed
    /// order, so the same upper gives the same bytes. TARGET as for `diff`.
    #[command(after_help = "Examples:
  unionmount export /mnt/merged --tar layer.tar --digest
  unionmount export /srv/upper --lower /srv/base --tar - | tar -tvf -")]
    Export {
        #[arg(value_hint = clap::ValueHint::DirPath)]
        target: std::path::PathBuf,
        /// Where to write the tarball (`-`: standard output).
        #[arg(long = "tar", value_name = "FILE", required = true)]
        tar: std::path::PathBuf,
        /// A lower branch (repeatable, top first), for a directory moved through the mount.
        #[arg(long = "lower", value_name = "DIR")]
        lowers: Vec<std::path::PathBuf>,
        /// Print the layer's diff ID (sha256 of the uncompressed tar).
        #[arg(long)]
        digest: bool,
    },
    /// The live stack of a mount: branches, modes, files, bytes, counters, kernel features.
    #[command(after_help = "Example:
  unionmount layers /mnt/merged")]
    Layers {
        #[arg(value_hint = clap::ValueHint::DirPath)]
        mountpoint: std::path::PathBuf,
    },
    /// Follow a mount's copy-ups, whiteouts and opaque directories as they happen.
    ///
    /// One line per event until interrupted, e.g. `copy-up etc/hosts from base (3.1 KiB,
    /// 0.2 ms)`, `whiteout opt/hello.txt`, `opaque usr/share/man`. `-o trace` at mount time
    /// prints the same lines on the mounting terminal.
    #[command(after_help = "Example:
  unionmount trace /mnt/merged &   # then work in /mnt/merged")]
    Trace {
        #[arg(value_hint = clap::ValueHint::DirPath)]
        mountpoint: std::path::PathBuf,
    },
    /// Draw the merged tree with the branch that serves each entry (the layer map).
    ///
    /// Each entry of the merged tree under PATH (default: the whole mount) is marked with
    /// the branch that serves it; copied-up entries, new ones, merged and opaque directories
    /// are flagged; lower entries hidden by a whiteout or an opaque directory are listed
    /// under their directory as `name (deleted, was in BRANCH)`, struck through on a
    /// terminal. A legend follows. Colour on a terminal, plain text when piped or when
    /// NO_COLOR is set. With --html, a self-contained page instead: the merged view on top,
    /// one band per branch below it; hover or click an entry to see what it shadows.
    #[command(after_help = "Examples:
  unionmount tree /mnt/merged
  unionmount tree /mnt/merged usr/share --depth 2
  unionmount tree /mnt/merged --html layers.html   # open it in a browser
  unionmount tree /mnt/merged | less               # plain text when piped")]
    Tree {
        /// The mount point (or a directory inside the mount).
        #[arg(value_hint = clap::ValueHint::DirPath)]
        mountpoint: std::path::PathBuf,
        /// A path inside the mount to draw from (relative to MOUNTPOINT, or absolute).
        #[arg(value_hint = clap::ValueHint::AnyPath)]
        path: Option<std::path::PathBuf>,
        /// Levels below PATH to draw (default: all).
        #[arg(long, value_name = "N")]
        depth: Option<usize>,
        /// Write a self-contained HTML page to FILE (`-`: standard output) instead.
        #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
        html: Option<std::path::PathBuf>,
        /// Colour: auto (on a terminal, unless NO_COLOR is set), always or never.
        #[arg(long, value_name = "WHEN", default_value = "auto", value_parser = ["auto", "always", "never"])]
        color: String,
    },
}
