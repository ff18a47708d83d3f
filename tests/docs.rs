//! The documentation says what the program does: scripts/demo.sh prints no colour into a
//! pipe; the license is declared.
mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn readme() -> String {
    fs::read_to_string(repo("README.md")).unwrap()
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
