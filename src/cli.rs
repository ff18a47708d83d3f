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
    /// Mount options, comma-separated (repeatable): ro, rw, allow_other, timeout=SECS,
    /// negative_timeout=SECS, threads=N, volatile, whiteout=wh|overlay,
    /// lowerdir=L1:L2,upperdir=U,workdir=W, fsname=NAME. Flags that only mean something to
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
