//! Generate the man page unionmount(8) and the bash, zsh and fish completions from the clap
//! definition in src/cli.rs, and README's option table from its table of `-o` options.
//!
//!     cargo run --example gen-assets -- OUTDIR      (what `make assets` runs)
//!     cargo run --example gen-assets -- --readme README.md
//!
//! The first writes OUTDIR/unionmount.8 and
//! OUTDIR/completions/{unionmount.bash,_unionmount,unionmount.fish}; the second rewrites the
//! option table between README's markers (tests/docs.rs fails while it is out of date). An
//! example rather than a second binary so `cargo install` installs only `unionmount` and
//! clap_mangen/clap_complete stay dev-dependencies.

#[path = "../src/cli.rs"]
#[allow(dead_code)]
pub mod cli;

use clap::CommandFactory;
use clap_complete::Shell;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

/// README's markers around the generated option table.
pub const TABLE_START: &str = "<!-- option table: generated from src/cli.rs by \
`cargo run --example gen-assets -- --readme README.md`, checked by tests/docs.rs -->";
pub const TABLE_END: &str = "<!-- end of the generated option table -->";

/// Sections after MOUNT OPTIONS, in roff. Keep in step with README.md and docs/.
const MORE: &str = r#".SH "MOUNT HELPER AND FSTAB"
\fBmount \-t fuse.unionmount\fR runs \fBmount.fuse3\fR(8), which runs
\fBunionmount \fISOURCE MOUNTPOINT\fB \-o \fIOPTIONS\fR through /bin/sh with the default
PATH, so install unionmount in /usr/bin, /usr/local/bin or another directory of it. No
\fBmount.fuse.unionmount\fR link is needed: mount(8) falls back to \fBmount.fuse\fR for any
\fBfuse.\fR\fItype\fR. \fISOURCE\fR is the branch spec, or, with \fB\-o lowerdir=\fR, a word
such as \fBnone\fR that is ignored (anything without '/', ':' or '='). It is the name the mount
is known by.
.PP
.nf
# /etc/fstab
/srv/upper=RW:/srv/base=RO  /mnt/merged  fuse.unionmount  defaults,nofail  0 0
none  /mnt/ovl  fuse.unionmount  lowerdir=/l1:/l2,upperdir=/u,workdir=/w  0 0
.fi
.PP
Then \fBmount /mnt/merged\fR, or \fBmount \-a \-t fuse.unionmount\fR. systemd turns such
lines into mount units; see docs/systemd/ in the source for a hand\-written one.
/proc/mounts shows the mount with type \fBfuse.unionmount\fR.
.SH LOGGING
Messages go to stderr while in the foreground (\fB\-f\fR, \fB\-d\fR) and nowhere once detached.
The level follows \fBRUST_LOG\fR (error, warn, info, debug, trace); without it: warn when
detaching, info with \fB\-f\fR, debug with \fB\-d\fR. A mount logs one info line naming the stack and the settings in force; at debug
level each failed operation is logged with the operation, the path, the layer and the errno.
.SH "EXIT STATUS"
As mount(8), whose helpers' status it passes on:
.TP
.B 0
mounted (detached once the mount is live), or a foreground daemon unmounted cleanly
.TP
.B 1
incorrect invocation (the command line cannot be parsed); also a foreground daemon whose
FUSE session failed
.TP
.B 2
system error (cannot fork or make a pipe)
.TP
.B 32
mount failure: a branch, the mount point or an option was refused, or the mount failed.
Nothing is mounted or created then, and one line on stderr names the branch and the problem.
.SH EXAMPLES
.nf
unionmount /srv/upper=RW:/srv/base=RO /mnt/merged
unionmount \-o lowerdir=/l1:/l2,upperdir=/u,workdir=/w /mnt/merged
unionmount /img/layer2:/img/layer1 /mnt/ro
unionmount \-d /srv/upper=RW:/srv/base=RO /mnt/merged
mount \-t fuse.unionmount /srv/upper=RW:/srv/base=RO /mnt/merged
mount \-t fuse.unionmount \-o lowerdir=/l1,upperdir=/u,workdir=/w none /mnt/merged
umount /mnt/merged        (or: fusermount3 \-u /mnt/merged)
.fi
.SH "SEE ALSO"
\fBmount\fR(8), \fBmount.fuse3\fR(8), \fBfstab\fR(5), \fBsystemd.mount\fR(5),
\fBfusermount3\fR(1), \fBfuse\fR(4)
"#;

/// roff text: backslashes and hyphens escaped, no line starting with a control character.
fn roff(s: &str) -> String {
    let t = s.replace('\\', "\\e").replace('-', "\\-");
    t.lines()
        .map(|l| {
            if l.starts_with(['.', '\'']) {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// INSPECTION COMMANDS: each subcommand's usage, description, options and example.
fn tools_section() -> String {
    let mut out = String::from(".SH \"INSPECTION COMMANDS\"\n");
    out.push_str(&roff(
        "A first argument naming one of these commands runs it instead of mounting. They read \
         the branches and ask the mount's daemon over its control socket (a unix socket under \
         /run/unionmount, or $XDG_RUNTIME_DIR/unionmount, usable only by the daemon's user).",
    ));
    out.push('\n');
    let mut tools = cli::ToolCli::command();
    tools.build();
    for sub in tools.get_subcommands() {
        let mut sub = sub.clone();
        let usage = sub.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ");
        out.push_str(&format!(".TP\n\\fB{}\\fR\n", roff(usage)));
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        out.push_str(&roff(&about.replace("\n\n", "\n.IP\n")).replace("\\&.IP", ".IP"));
        out.push('\n');
        for a in sub
            .get_arguments()
            .filter(|a| a.get_long().is_some() && a.get_id() != "help")
        {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            out.push_str(&format!(
                ".IP\n\\fB\\-\\-{}\\fR: {}\n",
                roff(a.get_long().unwrap()),
                roff(&help)
            ));
        }
        if let Some(ex) = sub.get_after_help() {
            out.push_str(&format!(".IP\n.nf\n{}\n.fi\n", roff(&ex.to_string())));
        }
    }
    out
}

/// Markdown of one option-table text: `code` kept, `|` escaped for the table.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// roff of one option-table text: `code` in bold.
fn roff_text(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in roff(s).split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("\\fB{part}\\fR"));
        } else {
            out.push_str(part);
        }
    }
    out
}

/// The MOUNT OPTIONS section, from `cli::mount_options`.
fn mount_options_section() -> String {
    let mut out = String::from(".SH \"MOUNT OPTIONS\"\n");
    for d in cli::mount_options() {
        let names: Vec<String> = d
            .syntax
            .iter()
            .map(|s| format!("\\fB{}\\fR", roff(s)))
            .collect();
        out.push_str(&format!(
            ".TP\n{}\n{}.\n",
            names.join(", "),
            roff_text(&d.meaning)
        ));
    }
    out
}

/// README's option table: `-f` and `-d` from the clap definition, then every `-o` option.
pub fn readme_option_table() -> String {
    let mut out = String::from("| option | meaning |\n| --- | --- |\n");
    let cmd = cli::Cli::command();
    for a in cmd.get_arguments().filter(|a| a.get_long().is_none()) {
        let Some(short) = a.get_short().filter(|c| *c != 'o') else {
            continue;
        };
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        let mut chars = help.trim_end_matches('.').chars();
        let help: String = chars
            .next()
            .map(|c| c.to_lowercase().chain(chars).collect())
            .unwrap_or_default();
        out.push_str(&format!("| `-{short}` | {} |\n", md_cell(&help)));
    }
    for d in cli::mount_options() {
        let names: Vec<String> = d
            .syntax
            .iter()
            .map(|s| format!("`{}`", md_cell(s)))
            .collect();
        out.push_str(&format!(
            "| `-o {} | {} |\n",
            &names.join(", ")[1..],
            md_cell(&d.meaning)
        ));
    }
    out.push_str("| `--version`, `--help` | |\n");
    out
}

/// `readme` with the text between its table markers replaced by `readme_option_table()`.
pub fn readme_with_table(readme: &str) -> Result<String, String> {
    let start = readme
        .find(TABLE_START)
        .ok_or("README has no option-table start marker")?
        + TABLE_START.len();
    let end = readme[start..]
        .find(TABLE_END)
        .ok_or("README has no option-table end marker")?
        + start;
    Ok(format!(
        "{}\n{}{}",
        &readme[..start],
        readme_option_table(),
        &readme[end..]
    ))
}

/// The whole man page, unionmount(8).
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let cmd = cli::Cli::command();
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Administration")
        .source(format!("unionmount {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    page.write_all(mount_options_section().as_bytes())?;
    page.write_all(tools_section().as_bytes())?;
    page.write_all(MORE.as_bytes())?;
    Ok(page)
}

#[allow(dead_code)] // tests/docs.rs includes this file for the functions above
fn main() -> std::io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let first = args
        .next()
        .expect("usage: gen-assets OUTDIR | gen-assets --readme README.md");
    if first == "--readme" {
        let path = PathBuf::from(args.next().expect("usage: gen-assets --readme README.md"));
        let readme = fs::read_to_string(&path)?;
        let new = readme_with_table(&readme)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        fs::write(&path, new)?;
        println!("{}", path.display());
        return Ok(());
    }
    let out = PathBuf::from(first);
    fs::create_dir_all(out.join("completions"))?;
    fs::write(out.join("unionmount.8"), man_page()?)?;

    // Completions offer the inspection commands too (main.rs dispatches on them first).
    let tools = cli::ToolCli::command();
    let cmd = cli::Cli::command()
        .subcommands(tools.get_subcommands().cloned())
        .args_conflicts_with_subcommands(true);
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, "unionmount", out.join("completions"))?;
    }
    println!("{}", out.display());
    Ok(())
}
