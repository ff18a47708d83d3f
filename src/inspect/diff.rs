//! `unionmount diff`: the change set in `docker diff` form, or as JSON.

use std::io::Write;
use std::path::Path;

use super::changes::{ChangeSet, Source, changes};

/// The change set of an upper directory, or of a mount point's upper and its snapshots
/// (those taken after `since`, or all: every change over the lower branches).
pub fn source_for(
    target: &Path,
    lowers: &[std::path::PathBuf],
    since: Option<&str>,
) -> super::Result<Source> {
    if let Some(mp) = super::mount_point(target)? {
        let stack = super::control::stack(&mp)?;
        let Some(upper) = stack.upper() else {
            return Err(format!(
                "{}: a read-only stack has no upper branch, so no changes",
                mp.display()
            ));
        };
        let (above, mut below) = stack.snapshots_since(since)?;
        below.extend(stack.lowers());
        return Ok(Source {
            upper: upper.to_path_buf(),
            above,
            lowers: below,
        });
    }
    if let Some(name) = since {
        return Err(format!(
            "--since {name}: give the mount point (snapshots belong to a mount's upper)"
        ));
    }
    let meta = std::fs::metadata(target).map_err(|e| format!("{}: {e}", target.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", target.display()));
    }
    Ok(Source {
        upper: super::absolute(target)?,
        above: Vec::new(),
        lowers: lowers.to_vec(),
    })
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn kind_of(c: &super::changes::Change) -> &'static str {
    let Some(m) = &c.meta else {
        return "whiteout";
    };
    let t = m.file_type();
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_file() {
        "file"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() {
        "char"
    } else if t.is_block_device() {
        "block"
    } else {
        "socket"
    }
}

pub fn print(set: &ChangeSet, json: bool, out: &mut impl Write) -> std::io::Result<()> {
    if json {
        writeln!(out, "[")?;
        let n = set.changes.len();
        for (i, c) in set.changes.iter().enumerate() {
            let path = format!("/{}", c.path.display());
            write!(
                out,
                "  {{\"kind\": \"{}\", \"path\": {}, \"type\": \"{}\"",
                c.kind.letter(),
                json_str(&path),
                kind_of(c)
            )?;
            if c.opaque {
                write!(out, ", \"opaque\": true")?;
            }
            if let Some(f) = &c.moved_from {
                write!(out, ", \"moved_from\": {}", json_str(f))?;
            }
            writeln!(out, "}}{}", if i + 1 < n { "," } else { "" })?;
        }
        writeln!(out, "]")?;
    } else {
        for c in &set.changes {
            writeln!(out, "{} /{}", c.kind.letter(), c.path.display())?;
        }
    }
    Ok(())
}

pub fn run(
    target: &Path,
    lowers: &[std::path::PathBuf],
    since: Option<&str>,
    json: bool,
) -> super::Result<()> {
    let src = source_for(target, lowers, since)?;
    let set = changes(&src)?;
    for w in &set.warnings {
        eprintln!("unionmount diff: warning: {w}");
    }
    let stdout = std::io::stdout();
    print(&set, json, &mut stdout.lock()).map_err(|e| format!("stdout: {e}"))
}
