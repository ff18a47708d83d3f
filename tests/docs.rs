//! The documentation says what the program does: README's option table and the man page are
//! generated from src/cli.rs and every `-o` option the parser takes is in them; README's
//! sample outputs are what the commands print on a real mount; scripts/demo.sh prints no
//! colour into a pipe; the license is declared.
mod common;
use common::*;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

#[path = "../examples/gen-assets.rs"]
#[allow(dead_code)]
mod gen_assets;
use gen_assets::cli;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn readme() -> String {
    fs::read_to_string(repo("README.md")).unwrap()
}

// ---- the option table ----

#[test]
fn readme_option_table_is_generated_from_the_clap_definition() {
    let readme = readme();
    let want = gen_assets::readme_with_table(&readme).unwrap();
    assert!(
        readme == want,
        "README's option table is not what src/cli.rs says; regenerate it with\n  \
         cargo run --example gen-assets -- --readme README.md\nwant:\n{}",
        gen_assets::readme_option_table()
    );
}

/// A value the parser takes for each documented option that needs one.
fn sample(name: &str) -> String {
    let v = match name {
        "timeout" | "negative_timeout" => "2.5",
        "threads" | "squash_to_uid" | "squash_to_gid" => "3",
        "whiteout" => "overlay",
        "lowerdir" | "upperdir" | "workdir" => "/x",
        "fsname" | "subtype" | "redirect_dir" => "x",
        "uidmapping" | "gidmapping" => "0:100000:65536",
        "context" | "fscontext" | "defcontext" | "rootcontext" => "system_u:object_r:x:s0",
        "xattr_permissions" | "fsync" | "threaded" | "fast_ino" | "writeback" => "1",
        "noxattrs" => "0",
        "comment" => "x",
        "xattr" => "on",
        "plugins" => "/p.so",
        _ => return name.to_string(),
    };
    format!("{name}={v}")
}

/// Every option the parser acts on or ignores is in the table, and every option in the
/// table is taken by the parser (`plugins` only to refuse it by name).
#[test]
fn every_option_is_documented_and_every_documented_option_is_taken() {
    use unionmount::config::{IGNORED, OPTIONS, parse_mount_options};
    let docs = cli::mount_options();
    let documented: BTreeSet<&str> = docs
        .iter()
        .flat_map(|d| d.syntax.iter())
        .flat_map(|s| cli::option_names(s))
        .collect();
    // `trace` is taken by main.rs before the mount options are parsed.
    let taken: BTreeSet<&str> = OPTIONS
        .iter()
        .chain(IGNORED)
        .copied()
        .chain(["trace", "x-*", "comment"])
        .collect();
    let undocumented: Vec<_> = taken.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&taken).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "options taken but not in src/cli.rs' table: {undocumented:?}; \
         in the table but not taken: {unknown:?}"
    );
    for name in documented {
        let item = match name {
            "trace" => continue,
            "x-*" => "x-systemd.automount".to_string(),
            n => sample(n),
        };
        let r = parse_mount_options(std::slice::from_ref(&item));
        if name == "plugins" {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("plugins"), "{e}");
        } else {
            r.unwrap_or_else(|e| panic!("-o {item}: {e}"));
        }
    }
}

/// The man page's defaults come from the same constants as the program's (it once said 1 s
/// where the program used 10), and every option has its entry.
#[test]
fn man_page_has_every_option_and_the_real_defaults() {
    use unionmount::config::DEFAULT_TIMEOUT;
    let page = String::from_utf8(gen_assets::man_page().unwrap()).unwrap();
    let t = DEFAULT_TIMEOUT.as_secs_f64();
    let section = &page[page.find(".SH \"MOUNT OPTIONS\"").expect("MOUNT OPTIONS")..];
    let section = &section[..section[4..].find(".SH").unwrap() + 4];
    for d in cli::mount_options() {
        for s in &d.syntax {
            let roff = s.replace('-', "\\-");
            assert!(section.contains(&roff), "man page lacks {s}");
        }
    }
    let defaults = section.matches(&format!("(default {t})")).count();
    assert_eq!(defaults, 2, "timeout and negative_timeout default to {t}");
    let help = tool(["--help"]).stdout;
    assert!(help.contains(&format!("timeout={t},")), "{help}");
    // README's prose about the cache time says the same.
    assert!(
        readme().contains(&format!("`-o timeout` ({t} s)")),
        "README's 'Cached attributes' paragraph names another default than {t} s"
    );
}

// ---- README's samples, run on a real mount ----

/// Collapse what varies between runs and machines: runs of spaces (column widths follow
/// path lengths), hex digests, times in ms, dates, the thread count.
fn norm(line: &str) -> String {
    let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let is_date = |w: &[char]| {
        w.len() == 16
            && w.iter().enumerate().all(|(k, c)| match k {
                4 | 7 => *c == '-',
                10 => *c == ' ',
                13 => *c == ':',
                _ => c.is_ascii_digit(),
            })
    };
    while i < chars.len() {
        let hex = chars[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            .count();
        if hex >= 12 {
            out.push_str("<hex>");
            i += hex;
        } else if i + 16 <= chars.len() && is_date(&chars[i..i + 16]) {
            out.push_str("<date>");
            i += 16;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    // "threads=4" -> "threads=N", "(0 B, 27.2 ms)" -> "(0 B, N ms)"
    let mut s = out;
    for (key, end) in [("threads=", ","), (", ", " ms)")] {
        let mut res = String::new();
        let mut rest = s.as_str();
        while let Some(p) = rest.find(key) {
            let after = &rest[p + key.len()..];
            let n = after
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .count();
            res.push_str(&rest[..p + key.len()]);
            if n > 0 && after[n..].starts_with(end) {
                res.push('N');
                rest = &after[n..];
            } else {
                rest = after;
            }
        }
        res.push_str(rest);
        s = res;
    }
    s
}

/// Does `got` print what README shows as `want`? Lines compare after `norm`; a sample
/// line `...` stands for all the rest, a line ending in `...` for any ending.
fn matches(want: &[String], got: &str) -> bool {
    // A blank line that ends the output (getfattr's) is not shown.
    let got: Vec<String> = got.trim_end_matches('\n').lines().map(norm).collect();
    let mut g = got.iter();
    for w in want {
        let w = norm(w);
        if w == "..." {
            return true;
        }
        let Some(line) = g.next() else { return false };
        let ok = match w.strip_suffix("...") {
            Some(prefix) => line.starts_with(prefix),
            None => *line == w,
        };
        if !ok {
            return false;
        }
    }
    g.next().is_none()
}

/// The fenced code block that follows the heading `heading` in README.
fn block_after(readme: &str, heading: &str) -> Vec<String> {
    let at = readme.find(heading).expect(heading);
    let start = readme[at..].find("```\n").unwrap() + at + 4;
    let end = readme[start..].find("```").unwrap() + start;
    readme[start..end].lines().map(String::from).collect()
}

/// Every `$ COMMAND` in README's code blocks with the lines shown after it.
fn samples(readme: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_block = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            let cmd = cmd.split(" #").next().unwrap().trim();
            out.push((cmd.to_string(), Vec::new()));
        } else if let Some(last) = out.last_mut() {
            last.1.push(line.to_string());
        }
    }
    out
}

/// `bash -c CMD` in `dir` (README's lines are for an interactive bash: `{a,b}`), with the
/// usual umask 022 the modes README shows come from: (stdout, stderr).
fn sh(cmd: &str, dir: &Path) -> (String, String) {
    let o = run(Command::new("bash")
        .arg("-c")
        .arg(format!("umask 022; {cmd}"))
        .current_dir(dir));
    assert!(o.ok(), "{cmd}: {o:?}");
    (o.stdout, o.stderr)
}

struct Demo {
    root: PathBuf,
    merged: PathBuf,
    trace: Option<Child>,
    /// Dropped after `drop` has stopped the trace.
    _unmount: UnmountGuard,
}

impl Demo {
    /// README's `/tmp/demo` here, `unionmount` as the binary under test.
    fn cmd(&self, line: &str) -> String {
        let here = self.root.display().to_string();
        let line = line.replace("tmp/demo", &here[1..]);
        match line.strip_prefix("unionmount ") {
            Some(rest) => format!("{BIN} {rest}"),
            None => line,
        }
    }
    fn text(&self, line: &str) -> String {
        line.replace("tmp/demo", &self.root.display().to_string()[1..])
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut t) = self.trace.take() {
            let _ = t.kill();
            let _ = t.wait();
        }
    }
}

/// The 60-second demo, line by line as README has it (with `ls`/`cat` output checked
/// against its comments), then every `$` sample of README on the resulting mount:
/// which, getfattr, diff, export, tree, trace (recorded during the demo) and, last, since
/// it changes the stack, commit --remount. As root: the samples show a root mount.
#[test]
fn readme_samples_are_what_the_commands_print() {
    if !is_root() {
        return;
    }
    let readme = readme();
    let tmp = tempfile::Builder::new()
        .prefix("unionmount-docs.")
        .tempdir()
        .unwrap();
    let root = tmp.path().canonicalize().unwrap().join("demo");
    let mut demo = Demo {
        merged: root.join("merged"),
        _unmount: UnmountGuard(root.join("merged")),
        root,
        trace: None,
    };
    let trace_out = tmp.path().join("trace.out");
    let trace_err = tmp.path().join("trace.err");
    let mut failures = Vec::new();
    for line in block_after(&readme, "## 60-second demo") {
        let (cmd, comment) = match line.split_once("  #") {
            Some((c, m)) => (c.trim().to_string(), m.trim().to_string()),
            None => (line.trim().to_string(), String::new()),
        };
        if cmd.is_empty() {
            continue;
        }
        if cmd.starts_with("fusermount3 -u") {
            break; // after the samples
        }
        let (out, _) = sh(&demo.cmd(&cmd), tmp.path());
        if cmd.starts_with("unionmount ") {
            wait_mounted(&demo.merged, true);
            let t = unionmount([OsStr::new("trace"), demo.merged.as_os_str()])
                .stdout(fs::File::create(&trace_out).unwrap())
                .stderr(fs::File::create(&trace_err).unwrap())
                .spawn()
                .unwrap();
            demo.trace = Some(t);
            // It says "tracing" once the daemon answered, which subscribes just after.
            for _ in 0..100 {
                if fs::read_to_string(&trace_err).is_ok_and(|e| e.contains("tracing")) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // `# 1  app`, `# I am base file 1 / OVERRIDDEN`, `# (empty)`: what ls and cat print.
        let printed = !out.is_empty() || comment == "(empty)";
        if printed {
            let want: Vec<&str> = if comment == "(empty)" {
                vec![]
            } else if comment.contains(" / ") {
                comment.split(" / ").collect()
            } else {
                comment.split_whitespace().collect()
            };
            let got: Vec<&str> = if comment.contains(" / ") {
                out.lines().collect()
            } else {
                let all = out.split_whitespace();
                all.filter(|w| !cmd.contains("-a") || (*w != "." && *w != ".."))
                    .collect()
            };
            if want != got {
                failures.push(format!("{cmd}  # {comment}\n  prints {out:?}"));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    if let Some(mut t) = demo.trace.take() {
        let _ = t.kill();
        let _ = t.wait();
    }

    let mut all = samples(&readme);
    assert!(all.len() >= 7, "README samples: {all:?}");
    // commit --remount changes the stack the others show: last.
    all.sort_by_key(|(cmd, _)| cmd.contains(" commit "));
    for (cmd, want) in all {
        let want: Vec<String> = want.iter().map(|l| demo.text(l)).collect();
        let got = if cmd.starts_with("unionmount trace ") {
            fs::read_to_string(&trace_out).unwrap()
        } else {
            sh(&demo.cmd(&cmd), &demo.root).0
        };
        if !matches(&want, &got) {
            failures.push(format!(
                "$ {cmd}\n--- README shows\n{}\n--- it prints\n{got}",
                want.join("\n")
            ));
        }
    }
    drop(demo);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn norm_and_matches_compare_the_stable_parts() {
    assert_eq!(
        norm("copy-up 1 from base (0 B, 27.2 ms)"),
        "copy-up 1 from base (0 B, N ms)"
    );
    assert_eq!(
        norm("-o timeout=10,threads=4,whiteout=wh  /x"),
        "-o timeout=10,threads=N,whiteout=wh /x"
    );
    assert_eq!(
        norm("-rw-r--r-- 0/0   9 2026-12-07 06:41 d"),
        "-rw-r--r-- 0/0 9 <date> d"
    );
    let digest = format!("sha256:{}", "ab12".repeat(16));
    assert!(matches(&["sha256:907170a254ba...".into()], &digest));
    assert!(matches(&["a".into(), "  ...".into()], "a\nb\nc\n"));
    assert!(!matches(&["a".into()], "a\nb\n"));
    assert!(!matches(&["C /1".into()], "C /2\n"));
}

// ---- scripts/demo.sh ----

/// SGR colour sequences (`ESC [ ... m`) in `s`.
fn has_colour(s: &str) -> bool {
    s.split('\x1b').skip(1).any(|rest| {
        rest.strip_prefix('[').is_some_and(|r| {
            let n = r
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == ';')
                .count();
            r[n..].starts_with('m')
        })
    })
}

fn demo_script(env: &[(&str, &str)], tty: bool) -> String {
    let script = repo("scripts/demo.sh").display().to_string();
    let mut cmd = if tty {
        // script(1) gives the demo a terminal for its stdout.
        let mut c = Command::new("script");
        c.args(["-qec", &format!("sh {script}"), "/dev/null"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.arg(&script);
        c
    };
    let o = run(cmd
        .env("UNIONMOUNT", BIN)
        .env_remove("NO_COLOR")
        .envs(env.iter().copied()));
    assert!(o.ok(), "demo.sh: {o:?}");
    o.stdout
}

/// Bold headings on a terminal only, and not with NO_COLOR (once: always, also in a pipe).
#[test]
fn demo_script_prints_colour_only_on_a_terminal_without_no_color() {
    let piped = demo_script(&[], false);
    assert!(piped.contains("== 1. "), "{piped}");
    assert!(!has_colour(&piped), "colour codes in a pipe:\n{piped}");
    if !succeeds("script", ["--version"]) {
        eprintln!("script(1) not installed: the terminal half of the check is skipped");
        return;
    }
    assert!(has_colour(&demo_script(&[], true)), "no bold on a terminal");
    let no_color = demo_script(&[("NO_COLOR", "1")], true);
    assert!(
        !has_colour(&no_color),
        "colour codes with NO_COLOR:\n{no_color}"
    );
}

// ---- license ----

#[test]
fn license_is_mit_or_apache_2() {
    assert_eq!(env!("CARGO_PKG_LICENSE"), "MIT OR Apache-2.0");
    let mit = fs::read_to_string(repo("LICENSE-MIT")).unwrap();
    assert!(mit.contains("Copyright (c) the unionmount developers"));
    assert!(mit.contains("Permission is hereby granted, free of charge"));
    assert!(mit.contains("THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND"));
    let apache = fs::read_to_string(repo("LICENSE-APACHE")).unwrap();
    for s in [
        "Apache License",
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
    ] {
        assert!(apache.contains(s), "LICENSE-APACHE lacks {s:?}");
    }
    let readme = readme();
    assert!(readme.contains("[LICENSE-MIT](LICENSE-MIT)") && readme.contains("LICENSE-APACHE"));
}
