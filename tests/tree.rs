//! `unionmount tree` on real mounts: the merged tree with each entry's branch, copied-up,
//! opaque and deleted entries, colour only on a terminal, and the HTML page rendered in
//! headless Chromium (skipped, with a note, where no Chromium is installed).
mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs of spaces made one and leading ones dropped, so the assertions do not depend on column widths.
fn squeeze(t: &str) -> String {
    t.lines()
        .map(|l| {
            l.split(' ')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The README demo: base holds `1`, `app/hello.txt`, `app/main.js`, `etc/hosts`,
/// `usr/share/man/a`; through the mount `1` is overwritten, `d` created, `app/hello.txt`
/// removed and `usr/share/man` removed and made again (opaque) with `b` in it.
fn demo(fx: &Fixture) -> Mount {
    put(&fx.l(0, "1"), "I am base file 1\n");
    put(&fx.l(0, "app/hello.txt"), "hello from base\n");
    put(&fx.l(0, "app/main.js"), "main\n");
    put(&fx.l(0, "etc/hosts"), "127.0.0.1 localhost\n");
    put(&fx.l(0, "usr/share/man/a"), "man\n");
    let m = fx.mount(&[]);
    demo_changes(fx);
    m
}

#[test]
fn tree_marks_branches_copy_ups_opaque_dirs_and_deletions() {
    let fx = Fixture::new(1);
    let _m = demo(&fx);
    let out = tool_ok(["tree", &s(&fx.mnt)]);
    assert!(!out.contains('\x1b'), "colour when piped:\n{out}");
    let want = format!(
        "\
{} upper root, merged: upper + lower0
├── 1 upper copied up, shadows lower0
├── app/ upper merged: upper + lower0
│ ├── hello.txt (deleted, was in lower0) whiteout in upper
│ └── main.js lower0
├── d upper new in upper
├── etc/ lower0
│ └── hosts lower0
└── usr/ upper merged: upper + lower0
└── share/ upper merged: upper + lower0
└── man/ upper opaque: hides lower0
├── a (deleted, was in lower0) under an opaque directory of upper
└── b upper new in upper
",
        s(&fx.mnt)
    );
    let got = squeeze(&out);
    assert!(
        got.starts_with(want.trim_end()),
        "got:\n{out}\nwant:\n{want}"
    );
    // The connectors themselves, unsqueezed.
    assert!(out.contains("\n│   └── main.js"), "{out}");
    assert!(
        out.contains("\n            ├── a (deleted, was in lower0)"),
        "{out}"
    );
    assert!(out.contains("branches (top first):"), "{out}");
    assert!(
        out.contains(&format!("upper (0, RW, {})", s(&fx.upper))),
        "{out}"
    );
    assert!(
        out.contains("legend:") && out.contains("(deleted, was in B)"),
        "{out}"
    );

    // A path inside the mount, relative or absolute, and a depth.
    let sub = squeeze(&tool_ok(["tree", &s(&fx.mnt), "usr", "--depth", "1"]));
    assert!(
        sub.starts_with(&format!(
            "{}/usr upper merged: upper + lower0\n└── share/ upper merged: upper + lower0\n\n",
            s(&fx.mnt)
        )),
        "{sub}"
    );
    let abs = squeeze(&tool_ok(["tree", &s(&fx.mnt), &s(&fx.m("usr/share/man"))]));
    assert!(abs.contains("├── a (deleted, was in lower0)"), "{abs}");
    assert!(!abs.contains("share/ upper"), "{abs}");
    let file = squeeze(&tool_ok(["tree", &s(&fx.m("app")), "main.js"]));
    assert!(
        file.starts_with(&format!("{} lower0\n", s(&fx.m("app/main.js")))),
        "{file}"
    );
    // Names that are not in the merged tree fail with one line.
    let o = tool(["tree", &s(&fx.mnt), "app/hello.txt"]);
    o.assert_fails_with("no such file");
    let o = tool(["tree", &s(&fx.root)]);
    o.assert_fails_with("not inside a unionmount");
}

#[test]
fn tree_colours_a_terminal_unless_no_color() {
    let fx = Fixture::new(1);
    let _m = demo(&fx);
    let always = tool_ok(["tree", &s(&fx.mnt), "--color", "always"]);
    assert!(always.contains("\x1b[9;31mhello.txt\x1b[0m"), "{always:?}");
    assert!(
        always.contains("\x1b[1;35mopaque: hides lower0"),
        "{always:?}"
    );
    let never = tool(["tree", &s(&fx.mnt), "--color", "never"]);
    assert!(!never.stdout.contains('\x1b'));
    // On a real terminal (script(1) gives it one): colour, unless NO_COLOR is set.
    if !succeeds("script", ["--version"]) {
        eprintln!("SKIP terminal colour: no script(1)");
        return;
    }
    let on_tty = |no_color: Option<&str>| {
        let mut c = Command::new("script");
        c.args(["-qec", &format!("{BIN} tree {}", s(&fx.mnt)), "/dev/null"])
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        expect_ok(&mut c)
    };
    let tty = on_tty(None);
    assert!(tty.contains("\x1b[9;31mhello.txt"), "{tty:?}");
    let plain = on_tty(Some("1"));
    assert!(plain.contains("hello.txt (deleted"), "{plain:?}");
    assert!(!plain.contains('\x1b'), "NO_COLOR ignored: {plain:?}");
}

#[test]
fn tree_reads_whiteouts_and_opaque_dirs_of_lower_layers() {
    // An image-style read-only stack: lower0 deletes `gone` and makes `dir` opaque over
    // lower1; lower1's `keep` shows through.
    let fx = Fixture::new(2);
    put(&fx.l(1, "gone"), "x");
    put(&fx.l(1, "keep"), "k");
    put(&fx.l(1, "dir/x"), "x");
    put(&fx.l(1, "dir/y"), "y");
    put(&fx.l(0, ".wh.gone"), "");
    put(&fx.l(0, "dir/.wh..wh..opq"), "");
    put(&fx.l(0, "dir/y"), "new y");
    put(&fx.l(0, "keep2"), "k2");
    let root = nix_is_root();
    if root {
        // An overlayfs whiteout (char device 0/0) in lower0 hides lower1's `dev-gone`.
        put(&fx.l(1, "dev-gone"), "x");
        let st = Command::new("mknod")
            .arg(fx.l(0, "dev-gone"))
            .args(["c", "0", "0"])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let _m = fx.mount_args(
        vec![fx.ro_spec(), s(&fx.mnt)],
        vec![fx.lowers[0].clone(), fx.lowers[1].clone()],
    );
    let out = squeeze(&tool_ok(["tree", &s(&fx.mnt)]));
    for want in [
        "├── dir/ lower0 opaque: hides lower1",
        "│ ├── x (deleted, was in lower1) under an opaque directory of lower0",
        "│ └── y lower0 shadows lower1",
        "gone (deleted, was in lower1) whiteout in lower0",
        "keep lower1",
        "keep2 lower0",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    if root {
        assert!(
            out.contains("dev-gone (deleted, was in lower1) whiteout in lower0"),
            "{out}"
        );
    }
    assert!(!out.contains(".wh."), "{out}");
}

fn nix_is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A Chromium to render pages with: $CHROMIUM, or chromium / chromium-browser / google-chrome
/// on PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(c));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Run headless Chromium with `args` then `url`; its stdout. Killed after 60 s.
fn headless(chrome: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut cmd = Command::new(chrome);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url);
    run_within(&mut cmd, Duration::from_secs(60)).stdout
}

#[test]
fn tree_html_is_a_self_contained_page_chromium_renders() {
    let fx = Fixture::new(1);
    let _m = demo(&fx);
    let page = fx.root.join("layers.html");
    let o = tool(["tree", &s(&fx.mnt), "--html", &s(&page)]);
    assert!(o.ok(), "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("wrote"), "{}", o.stderr);
    let html = fs::read_to_string(&page).unwrap();
    // Nothing fetched: no URLs, no external scripts, styles or images.
    for bad in ["http://", "https://", "<link", " src=", "url("] {
        assert!(!html.contains(bad), "page refers to {bad}");
    }
    // The same page on stdout.
    assert_eq!(tool_ok(["tree", &s(&fx.mnt), "--html", "-"]), html);

    let Some(chrome) = chromium() else {
        eprintln!(
            "SKIP tree_html rendering: no chromium on PATH (apt-get install chromium, or set \
             CHROMIUM)"
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}#select=app/hello.txt", page.display());
    let dom = headless(&chrome, profile.path(), &["--dump-dom"], &url);
    // The script ran (and selected the deleted entry from the URL).
    assert!(
        dom.contains("data-ready=\"1\""),
        "script did not run:\n{dom}"
    );
    let detail = dom
        .split("id=\"detail\"")
        .nth(1)
        .and_then(|d| d.split("</div>").next())
        .unwrap_or_default();
    assert!(
        detail.contains("app/hello.txt") && detail.contains("deleted, was in <b>lower0</b>"),
        "{detail}"
    );
    // Bands: the merged view first, then one per branch, top first.
    let bands: Vec<&str> = dom
        .match_indices("data-band=\"")
        .map(|(i, _)| dom[i + 11..].split('"').next().unwrap())
        .collect();
    assert_eq!(bands, ["merged", "upper", "lower0"], "{dom}");
    // Every merged entry with the branch that serves it.
    for (path, branch, flags) in [
        ("1", "upper", "copied-up"),
        ("app", "upper", "merged"),
        ("app/main.js", "lower0", "lower"),
        ("d", "upper", "new"),
        ("etc/hosts", "lower0", "lower"),
        ("usr/share/man", "upper", "opaque"),
        ("usr/share/man/b", "upper", "new"),
    ] {
        let tile = dom
            .split("<div ")
            .find(|t| t.contains(&format!("data-path=\"{path}\"")))
            .unwrap_or_else(|| panic!("no tile for {path}"));
        assert!(
            tile.contains(&format!("data-branch=\"{branch}\"")),
            "{path}: {tile}"
        );
        assert!(
            tile.contains(&format!("data-flags=\"{flags}")),
            "{path}: {tile}"
        );
    }
    // Deleted entries are present, struck through (a class the style sheet strikes).
    for path in ["app/hello.txt", "usr/share/man/a"] {
        let tile = dom
            .split("<div ")
            .find(|t| t.contains(&format!("data-path=\"{path}\"")))
            .unwrap_or_else(|| panic!("no tile for {path}"));
        assert!(tile.starts_with("class=\"tile deleted"), "{path}: {tile}");
        assert!(tile.contains("(deleted, was in lower0)"), "{path}: {tile}");
    }
    assert!(dom.contains(".merged .tile.deleted .nm{text-decoration:line-through}"));
    // The upper's band shows the whiteout and the copy that shadows lower0's `1`.
    assert!(dom.contains("data-cell=\"w\""), "no whiteout tile");
    assert!(dom.contains("class=\"tile shadowed\""), "no shadowed tile");

    // And a picture of it (set UNIONMOUNT_TREE_SCREENSHOT=docs/tree.png to keep one).
    let png = fx.root.join("tree.png");
    let url = format!("file://{}#select=1", page.display());
    headless(
        &chrome,
        profile.path(),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,760",
        ],
        &url,
    );
    let bytes = fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000);
    if let Some(keep) = std::env::var_os("UNIONMOUNT_TREE_SCREENSHOT") {
        let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join(keep);
        fs::copy(&png, &keep).unwrap();
    }
}
