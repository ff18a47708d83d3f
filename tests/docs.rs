//! The documentation says what the program does: README's option table and the man page are
//! generated from src/cli.rs and every `-o` option the parser takes is in them;
//! scripts/demo.sh prints no colour into a pipe; the license is declared.
mod common;
use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains(&format!("timeout={t},")), "{help}");
    // README's prose about the cache time says the same.
    assert!(
        readme().contains(&format!("`-o timeout` ({t} s)")),
        "README's 'Cached attributes' paragraph names another default than {t} s"
    );
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
    let o = cmd
        .env("UNIONMOUNT", BIN)
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "demo.sh: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Bold headings on a terminal only, and not with NO_COLOR (once: always, also in a pipe).
#[test]
fn demo_script_prints_colour_only_on_a_terminal_without_no_color() {
    let piped = demo_script(&[], false);
    assert!(piped.contains("== 1. "), "{piped}");
    assert!(!has_colour(&piped), "colour codes in a pipe:\n{piped}");
    let have_script = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_script {
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
