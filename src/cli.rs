//! The clap definition of the command line and the table of `-o` options, and nothing else:
//! `main.rs` parses with it, `examples/gen-assets.rs` (`make assets`) turns it into the man
//! page, the shell completions and README's option table, and tests/docs.rs checks README
//! and the parser against it, so none of them disagree. It depends on clap and the
//! library's defaults alone for that reason.

use clap::Parser;
use unionmount::config::{DEFAULT_TIMEOUT, IGNORED, MAX_DEFAULT_THREADS, THREADS_PER_CORE};

/// One row of the `-o` option table.
pub struct OptionDoc {
    /// How the option is written, e.g. `timeout=SECS`; the names before each `=` (and of each
    /// comma-separated part) are the options the row documents.
    pub syntax: Vec<&'static str>,
    /// What it does, defaults included; `code` in backticks, no other markup.
    pub meaning: String,
}

/// Every `-o` option the program takes, as README's table and the man page show them.
pub fn mount_options() -> Vec<OptionDoc> {
    let t = DEFAULT_TIMEOUT.as_secs_f64();
    let row = |syntax: &[&'static str], meaning: &str| OptionDoc {
        syntax: syntax.to_vec(),
        meaning: meaning.to_string(),
    };
    // Mount(8)-only flags; default_permissions and static_nlink have rows of their own.
    let ignored: Vec<&'static str> = IGNORED
        .iter()
        .copied()
        .filter(|o| !["default_permissions", "static_nlink"].contains(o))
        .chain(["x-*", "comment=.."])
        .collect();
    vec![
        row(
            &["ro", "rw"],
            "read-only mount even if there is an RW branch; `rw` (the default) undoes an \
             earlier `ro`",
        ),
        row(
            &["allow_other", "allow_root"],
            "let other users use the mount (the default when run as root, as fuse-overlayfs \
             does); `allow_root` undoes an earlier `allow_other`",
        ),
        row(
            &["timeout=SECS"],
            &format!(
                "how long the kernel caches names, attributes and directory listings without \
                 asking (default {t}); files and directories changed by hand in a branch while \
                 mounted show their new attributes, data and entries after it (`timeout=0`: at \
                 once). Changes made through the mount show at once"
            ),
        ),
        row(
            &["negative_timeout=SECS"],
            &format!("how long the kernel caches \"no such file\" (default {t})"),
        ),
        row(
            &["threads=N"],
            &format!(
                "FUSE worker threads, 1 to 64 (default: {THREADS_PER_CORE} per core, at most \
                 {MAX_DEFAULT_THREADS})"
            ),
        ),
        row(
            &["uring", "uring=0|1"],
            "serve requests through FUSE over io_uring where the kernel offers it (Linux 6.14+ \
             with `/sys/module/fuse/parameters/enable_uring` set to Y), else through /dev/fuse \
             (default; `uring=0`: always /dev/fuse). `threads=N` are then spread over the \
             CPUs' queues. `unionmount layers` shows which is used",
        ),
        row(
            &["passthrough", "passthrough=0|1"],
            "file data through FUSE passthrough where the kernel allows it (Linux 6.9+, a \
             daemon with CAP_SYS_ADMIN; default): the kernel reads and writes upper files, \
             and every file of a read-only stack, itself. Else (`passthrough=0`, rootless, \
             `noatime`) data goes through the daemon with the page cache kept: slower for big \
             reads and writes. `unionmount layers` shows which is used",
        ),
        row(
            &["xattr=auto|on|off", "noxattrs=0|1"],
            "`auto` (default): a read-only stack none of whose branches holds an extended \
             attribute tells the kernel the mount supports none once the daemon has looked \
             (in the background from the mount on, up to 100,000 entries), and the kernel \
             stops asking: two requests fewer per file for `tar --xattrs`, `cp -a` and \
             podman's layer diffs. `getfattr` there says \"Operation not supported\" \
             (`unionmount which` still names the branch) and xattrs set by hand in a branch \
             meanwhile stay unseen. `on`: always answer. `off`: no xattrs through the mount \
             at all, also on a writable stack (get, list, set and remove fail with \
             \"Operation not supported\"; branch ACLs are not enforced; copy-ups still keep \
             the lower file's). `noxattrs=1` and `noxattrs=0` are fuse-overlayfs' spellings of \
             `off` and `auto`. `unionmount layers` shows what the look found",
        ),
        row(
            &["volatile", "fsync=0|1"],
            "no sync reaches the upper, as kernel overlayfs' `volatile`: neither the fsync \
             that makes each copy-up durable before it is published nor a caller's fsync or \
             fdatasync of a file or directory (they succeed; the kernel stops asking after \
             the first). Changes survive an unmount, not a crash. Podman mounts its build and \
             run containers so (`fsync=0` is fuse-overlayfs' spelling; `fsync=1` undoes it)",
        ),
        row(
            &["whiteout=wh|overlay"],
            "write `.wh.` files (default, needs no privilege) or kernel overlayfs' format: \
             char-device whiteouts, `trusted.overlay.opaque`, `trusted.overlay.redirect` for \
             moved directories and `trusted.overlay.metacopy` for metadata-only copies, so \
             kernel overlayfs mounts the upper too (see README, kernel interoperability)",
        ),
        row(
            &["lowerdir=L1:L2,upperdir=U,workdir=W"],
            "overlayfs-style stack (lowers top first); `lowerdir` alone is a read-only mount",
        ),
        row(
            &["workdir=DIR"],
            "where copy-ups are built; must be on the upper's filesystem. Default: \
             `.wh..wh..work` inside the upper (hidden, removed at unmount)",
        ),
        row(
            &["fsname=NAME", "subtype=NAME"],
            "the source /proc/mounts shows (default: BRANCHES or the SOURCE word as given, \
             else the upper's, or top branch's, path; fuse-overlayfs shows `fuse-overlayfs`, the kernel's \
             overlay the source given to mount). The type is always `fuse.unionmount`: \
             `subtype=` is accepted and ignored",
        ),
        row(
            &["stack"],
            "mount on top of a mount point that already has a live mount (refused without \
             it); the tools then reach the top mount, and each `umount` takes off one",
        ),
        row(
            &["uidmapping=DISK:HOST:COUNT[:...]", "gidmapping=..."],
            "IDs stored in the branches shown shifted (fuse-overlayfs' options; see \
             docs/containers.md)",
        ),
        row(
            &["squash_to_root", "squash_to_uid=N", "squash_to_gid=N"],
            "every entry shown owned by N (0); a failed chown reports success",
        ),
        row(
            &["xattr_permissions=0|1|2"],
            "owners and modes kept in `security.`/`user.fuseoverlayfs.override_stat` \
             instead of chown/chmod (`0`, the default: off)",
        ),
        row(
            &["nodev", "dev"],
            "device files in the branches or made through the mount cannot be opened \
             (`EACCES`) unless `dev` is given: `nodev` is the default, as libfuse and \
             fuse-overlayfs mount (mount(8) through mount.fuse3 passes `dev` unless fstab \
             says `nodev`)",
        ),
        row(
            &["suid", "nosuid"],
            "set-id bits work (the default, as fuse-overlayfs mounts as root and the kernel's \
             overlay: containers need them); `nosuid` ignores them on exec. Without root, \
             fusermount3 always mounts `nosuid,nodev`",
        ),
        row(
            &["exec", "noexec"],
            "`noexec`: nothing in the mount can be executed",
        ),
        row(
            &["relatime", "atime", "noatime"],
            "`relatime` (the kernel's default, as on its overlay; fuse-overlayfs mounts \
             `noatime`). `noatime`: reads and listings mark no access time, also on the branch \
             files the daemon reads (turns FUSE passthrough off: the kernel's own reads of a \
             backing file would mark it)",
        ),
        row(
            &["acl", "noacl"],
            "`noacl`: do not enforce the branches' POSIX ACLs (they are enforced by default, \
             as on fuse-overlayfs; the kernel then asks for each file's ACL once)",
        ),
        row(
            &["default_permissions"],
            "always on, as on fuse-overlayfs: the kernel checks permissions against the merged \
             entries' own modes (the kernel's overlay checks them itself)",
        ),
        row(
            &["trace"],
            "print copy-ups, whiteouts and opaque directories on the mounting command's \
             stderr as they happen (a detached daemon keeps that terminal)",
        ),
        row(
            &[
                "context=..",
                "fscontext=..",
                "defcontext=..",
                "rootcontext=..",
            ],
            "an SELinux label for the mount: ignored where SELinux is not enabled, refused \
             where it is (not supported yet)",
        ),
        row(
            &[
                "threaded=0|1",
                "fast_ino=0|1",
                "writeback=0|1",
                "redirect_dir=..",
                "static_nlink",
            ],
            "fuse-overlayfs' tuning, accepted and ignored: the result is the same without",
        ),
        row(
            &["plugins=.."],
            "refused: fuse-overlayfs' layer plugins are not supported",
        ),
        OptionDoc {
            syntax: ignored,
            meaning: "mean nothing to a FUSE filesystem, or only to mount(8), fstab or \
                      systemd: accepted and ignored"
                .into(),
        },
    ]
}

/// The names an option row documents: `lowerdir=L1:L2,upperdir=U` -> lowerdir, upperdir.
pub fn option_names(syntax: &str) -> Vec<&str> {
    syntax
        .split(',')
        .map(|part| part.split('=').next().unwrap_or(part))
        .collect()
}

/// The `-o` help (`--help`): the options by name with the defaults; README and the man page
/// say what each does.
fn options_help() -> String {
    let docs = mount_options();
    // Up to `trace`: the rest are fuse-overlayfs' and mount(8)'s, accepted for compatibility.
    let own = docs
        .iter()
        .position(|d| d.syntax == ["trace"])
        .map_or(docs.len(), |i| i + 1);
    let names: Vec<&str> = docs[..own]
        .iter()
        .flat_map(|d| d.syntax.iter().copied())
        .collect();
    format!(
        "Mount options, comma-separated (repeatable): {}. Defaults: timeout={t}, \
         negative_timeout={t}, threads={THREADS_PER_CORE} per core (at most \
         {MAX_DEFAULT_THREADS}), whiteout=wh, nodev, suid, relatime, allow_other as root. \
         fuse-overlayfs' other options (context=, threaded=, ...) are accepted, and flags that \
         only mean something to mount(8) or fstab (defaults, nofail, _netdev, x-*, ...) \
         ignored. See MOUNT OPTIONS in unionmount(8) or the README for each.",
        names.join(", "),
        t = DEFAULT_TIMEOUT.as_secs_f64()
    )
}

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
    #[arg(
        short = 'o',
        value_name = "OPTIONS",
        help = "Mount options, comma-separated (repeatable); --help lists them",
        long_help = options_help()
    )]
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
pub const TOOLS: [&str; 10] = [
    "which",
    "diff",
    "commit",
    "export",
    "layers",
    "trace",
    "tree",
    "snapshot",
    "rollback",
    "snapshots",
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
    /// mount point (its upper, snapshots and lowers are asked of the daemon: the changes of
    /// the upper and every snapshot, or with --since those made since one) or an upper directory;
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
        /// Only the changes made since the snapshot NAME (a mount point's).
        #[arg(long, value_name = "NAME")]
        since: Option<String>,
        /// One JSON array of {"kind", "path", "type"[, "opaque", "moved_from"]}.
        #[arg(long)]
        json: bool,
    },
    /// Turn a mount's changes into a new read-only layer directory ("docker commit").
    ///
    /// Writes the change set of the mount's upper into DIR (new or empty) in the .wh.
    /// format, keeping owners, modes, times, xattrs and hard links. The mount goes on
    /// unchanged. With --remount the upper becomes the layer and a fresh upper starts: the
    /// mount is unmounted (refused while files are open in it; `unionmount snapshot` moves
    /// the upper down live instead), DIR written, the upper emptied, and the mount point
    /// mounted again on UPPER=RW:DIR=RO:LOWERS... with the same options.
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
    /// Remember the mount's state now, live: the changes so far become a snapshot.
    ///
    /// The upper directory becomes a read-only layer named NAME (default snap-N), stacked
    /// right below a fresh, empty upper, while the mount stays in use: one rename, however
    /// much changed. Files open for writing (or read through FUSE passthrough) stay where
    /// their descriptors are and the snapshot gets a copy of them, so it never changes once
    /// taken. Snapshots live beside the upper, in UPPER.snapshots/NNNN-NAME, each a plain
    /// layer directory, and are stacked again by the next mount of the same upper.
    ///
    /// With --drop NAME, forget the snapshot NAME as a point to roll back to but keep its
    /// changes: its layer merges into the layer above it (the next newer snapshot, or the
    /// upper), so every other snapshot still means what it meant.
    #[command(after_help = "Examples:
  unionmount snapshot /mnt/merged before-apt
  unionmount snapshots /mnt/merged
  unionmount rollback /mnt/merged before-apt
  unionmount snapshot /mnt/merged --drop before-apt")]
    Snapshot {
        #[arg(value_hint = clap::ValueHint::DirPath)]
        mountpoint: std::path::PathBuf,
        /// Its name: letters, digits and . _ - + @ (default: snap-N).
        #[arg(conflicts_with = "drop")]
        name: Option<String>,
        /// Drop the snapshot NAME instead, keeping its changes.
        #[arg(long, value_name = "NAME")]
        drop: Option<String>,
    },
    /// Go back to a snapshot, live: every change made since it is discarded.
    ///
    /// The upper and every snapshot taken after NAME (default: the latest snapshot) are
    /// thrown away; NAME stays, so the same point can be rolled back to again. Descriptors
    /// open on a discarded file go on reading and writing it as if it had been unlinked;
    /// nothing they do shows in the mount.
    #[command(after_help = "Example:
  unionmount rollback /mnt/merged before-apt")]
    Rollback {
        #[arg(value_hint = clap::ValueHint::DirPath)]
        mountpoint: std::path::PathBuf,
        /// The snapshot to go back to (default: the latest).
        name: Option<String>,
    },
    /// The mount's snapshots, oldest first: name, when taken, entries, size, directory.
    ///
    /// The last row, (upper), is what changed since the latest snapshot.
    #[command(after_help = "Example:
  unionmount snapshots /mnt/merged")]
    Snapshots {
        #[arg(value_hint = clap::ValueHint::DirPath)]
        mountpoint: std::path::PathBuf,
    },
}
