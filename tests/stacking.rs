//! Every upper is a valid lower: directories renamed through the mount keep their content
//! when the upper moves down into the lowers under a fresh upper, again and again, and so do
//! redirects kernel overlayfs wrote, in any layer. (Every `remount()` in the other suites
//! also checks the whole merged view across one such rotation; these tests go deeper.)
mod common;
use common::*;
use std::fs;

/// Rotate `m` `times` times; each rotation must leave the merged view as it was.
fn rotate_n(mut m: Mount, times: usize) -> Mount {
    for i in 0..times {
        let d;
        (m, d) = m.rotate();
        assert!(d.is_empty(), "rotation {}: the view changed:\n{d}", i + 1);
    }
    m
}

#[test]
fn renamed_directory_survives_rotations() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "d/a"), "a");
    put(&fx.l(0, "d/sub/b"), "b");
    let m = fx.mount(&[]);
    fs::rename(fx.m("d"), fx.m("e")).unwrap();
    let m = rotate_n(m, 1);
    assert_eq!(names(&fx.mnt), strs(&["e"]));
    assert_eq!(read(&fx.m("e/a")), "a");
    // A chain: renamed again above the layer holding the first redirect, then into
    // another renamed directory, then back to a name it had.
    fs::rename(fx.m("e"), fx.m("f")).unwrap();
    let m = rotate_n(m, 2);
    fs::create_dir(fx.m("g")).unwrap();
    fs::rename(fx.m("f/sub"), fx.m("g/sub2")).unwrap();
    let m = rotate_n(m, 1);
    fs::rename(fx.m("g"), fx.m("h")).unwrap();
    let m = rotate_n(m, 1);
    fs::rename(fx.m("f"), fx.m("d")).unwrap();
    let m = rotate_n(m, 2);
    let check = |when: &str| {
        assert_eq!(names(&fx.mnt), strs(&["d", "h"]), "{when}");
        assert_eq!(names(&fx.m("d")), strs(&["a"]), "{when}");
        assert_eq!(read(&fx.m("d/a")), "a", "{when}");
        assert_eq!(names(&fx.m("h")), strs(&["sub2"]), "{when}");
        assert_eq!(read(&fx.m("h/sub2/b")), "b", "{when}");
    };
    drop(m.check_across_remount(check));
}

/// A directory moved into a directory that was itself renamed, written to on the way, with
/// hard links and a metadata-only copy inside.
#[test]
fn moves_inside_renamed_directories_with_links_and_metacopies() {
    let fx = Fixture::new(2);
    put(&fx.l(1, "top/inner/x"), "x");
    put(&fx.l(1, "top/inner/meta"), "meta");
    put(&fx.l(1, "top/inner/h1"), "h");
    fs::hard_link(fx.l(1, "top/inner/h1"), fx.l(1, "top/inner/h2")).unwrap();
    put(&fx.l(0, "other/y"), "y");
    let m = fx.mount(&[]);
    fs::rename(fx.m("top"), fx.m("top2")).unwrap();
    let m = rotate_n(m, 1);
    fs::rename(fx.m("other"), fx.m("top2/inner/other")).unwrap();
    set_mode(&fx.m("top2/inner/meta"), 0o600);
    fs::write(fx.m("top2/inner/new"), "new").unwrap();
    let m = rotate_n(m, 1);
    fs::rename(fx.m("top2/inner"), fx.m("moved")).unwrap();
    let m = rotate_n(m, 2);
    let check = |when: &str| {
        assert_eq!(names(&fx.mnt), strs(&["moved", "top2"]), "{when}");
        assert!(names(&fx.m("top2")).is_empty(), "{when}");
        assert_eq!(
            names(&fx.m("moved")),
            strs(&["h1", "h2", "meta", "new", "other", "x"]),
            "{when}"
        );
        assert_eq!(read(&fx.m("moved/other/y")), "y", "{when}");
        assert_eq!(read(&fx.m("moved/meta")), "meta", "{when}");
        assert_eq!(mode_of(&fx.m("moved/meta")), 0o600, "{when}");
        assert_eq!(ino(&fx.m("moved/h1")), ino(&fx.m("moved/h2")), "{when}");
    };
    drop(m.check_across_remount(check));
}

/// A directory renamed and its old name used again: the new directory and the moved one
/// must not mix, however deep the layers that hold them.
#[test]
fn old_name_reused_after_rename() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "d/old"), "old");
    let m = fx.mount(&[]);
    fs::rename(fx.m("d"), fx.m("e")).unwrap();
    put(&fx.m("d/fresh"), "fresh");
    let m = rotate_n(m, 2);
    fs::remove_dir_all(fx.m("d")).unwrap();
    fs::rename(fx.m("e"), fx.m("d")).unwrap();
    let m = rotate_n(m, 1);
    assert_eq!(names(&fx.mnt), strs(&["d"]));
    assert_eq!(names(&fx.m("d")), strs(&["old"]));
    drop(m);
}

/// Kernel overlayfs' redirects in lower layers: a relative one (renamed in the same
/// directory), an absolute one into another directory, and one behind an opaque directory
/// higher up that must not show.
#[test]
fn kernel_redirects_are_followed_in_lower_layers() {
    if !is_root() {
        eprintln!("skipped: needs root (trusted.* xattrs)");
        return;
    }
    let fx = Fixture::new(3);
    // The bottom layer as it was before the moves.
    put(&fx.l(2, "a/d/f"), "f");
    put(&fx.l(2, "b/g/h"), "h");
    put(&fx.l(2, "hidden/k"), "k");
    // A former kernel upper: a/d renamed to a/e (relative), b/g moved to c/g2 (absolute).
    fs::create_dir_all(fx.l(1, "a/e")).unwrap();
    xattr::set(fx.l(1, "a/e"), "trusted.overlay.redirect", b"d").unwrap();
    mknod_whiteout(&fx.l(1, "a/d"));
    fs::create_dir_all(fx.l(1, "c/g2")).unwrap();
    xattr::set(fx.l(1, "c/g2"), "trusted.overlay.redirect", b"/b/g").unwrap();
    fs::create_dir_all(fx.l(1, "b")).unwrap();
    mknod_whiteout(&fx.l(1, "b/g"));
    // Above it, a directory redirected to /hidden, made opaque: its content hides the rest.
    fs::create_dir_all(fx.l(0, "opq")).unwrap();
    xattr::set(fx.l(0, "opq"), "trusted.overlay.redirect", b"/hidden").unwrap();
    xattr::set(fx.l(0, "opq"), "trusted.overlay.opaque", b"y").unwrap();
    let m = fx.mount(&[]);
    let check = |when: &str| {
        assert_eq!(names(&fx.m("a")), strs(&["e"]), "{when}");
        assert_eq!(read(&fx.m("a/e/f")), "f", "{when}");
        assert!(names(&fx.m("b")).is_empty(), "{when}");
        assert_eq!(read(&fx.m("c/g2/h")), "h", "{when}");
        assert!(
            names(&fx.m("opq")).is_empty(),
            "{when}: opaque beats redirect"
        );
    };
    check("mounted");
    // And moved once more through our mount, on top of the kernel's redirect.
    fs::rename(fx.m("c/g2"), fx.m("g3")).unwrap();
    let m = rotate_n(m, 1);
    check_g3(&fx);
    let m = m.remount();
    check_g3(&fx);
    drop(m);
}

fn check_g3(fx: &Fixture) {
    assert_eq!(read(&fx.m("g3/h")), "h");
    assert!(names(&fx.m("c")).is_empty());
}

/// A redirect that tries to leave the tree or is malformed is ignored, not followed.
#[test]
fn malformed_redirects_are_ignored() {
    if !is_root() {
        eprintln!("skipped: needs root (trusted.* xattrs)");
        return;
    }
    let fx = Fixture::new(2);
    put(&fx.l(1, "secret/s"), "s");
    put(&fx.l(1, "d/own"), "own");
    fs::create_dir_all(fx.l(0, "d")).unwrap();
    xattr::set(fx.l(0, "d"), "trusted.overlay.redirect", b"/x/../secret").unwrap();
    fs::create_dir_all(fx.l(0, "e")).unwrap();
    xattr::set(fx.l(0, "e"), "trusted.overlay.redirect", b"a/b").unwrap();
    let m = fx.mount(&[]);
    assert_eq!(names(&fx.m("d")), strs(&["own"]));
    assert!(names(&fx.m("e")).is_empty());
    drop(m);
}

/// `which` and `tree` on a stack whose moved directory is now in a lower layer: the real
/// path is where the file is, and the directory shows as moved.
#[test]
fn which_and_tree_see_moves_in_lower_layers() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "d/a"), "a");
    let m = fx.mount(&[]);
    fs::rename(fx.m("d"), fx.m("e")).unwrap();
    let (m, d) = m.rotate();
    assert!(d.is_empty(), "{d}");
    let out = tool_ok(["which", &fx.m("e/a").display().to_string()]);
    let real = format!("real path   {}", fx.l(0, "d/a").display());
    assert!(out.contains(&real), "{out}");
    let out = tool_ok(["which", &fx.m("e").display().to_string()]);
    assert!(out.contains("its parts below are read from /d"), "{out}");
    let out = tool_ok(["tree", &fx.mnt.display().to_string(), "--color", "never"]);
    // The entry's own line: the mount's path on the first line may hold "e/" too.
    let line = out
        .lines()
        .find(|l| l.contains("── e/"))
        .unwrap_or_default();
    assert!(line.contains("moved"), "{out}");
    drop(m);
}

/// `diff`, `commit` and `export` on a stack whose lower layer holds a moved directory,
/// moved again above it: the change set follows the chain of redirects, so the committed
/// layer stacked on the same lowers shows the same tree.
#[test]
fn diff_commit_and_export_follow_redirects_in_lower_layers() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "d/a"), "a");
    put(&fx.l(0, "d/sub/b"), "b");
    let m = fx.mount(&[]);
    fs::rename(fx.m("d"), fx.m("e")).unwrap();
    let (m, d) = m.rotate();
    assert!(d.is_empty(), "{d}");
    fs::rename(fx.m("e"), fx.m("f")).unwrap();
    put(&fx.m("f/new"), "new");
    let mnt = s(&fx.mnt);
    let diff = tool_ok(["diff", &mnt]);
    let lines: Vec<&str> = diff.lines().collect();
    assert_eq!(
        lines,
        [
            "D /e",
            "A /f",
            "A /f/a",
            "A /f/new",
            "A /f/sub",
            "A /f/sub/b"
        ],
        "{diff}"
    );
    let tar = fx.root.join("layer.tar");
    tool_ok(["export", &mnt, "--tar", &s(&tar)]);
    let list = expect_ok(std::process::Command::new("tar").arg("-tf").arg(&tar));
    for p in [".wh.e", "f/a", "f/sub/b", "f/new"] {
        assert!(
            list.lines().any(|l| l.trim_end_matches('/') == p),
            "{p}:\n{list}"
        );
    }
    let before = view(&fx.mnt);
    let layer = fx.root.join("committed");
    tool_ok(["commit", &mnt, "--to", &s(&layer)]);
    drop(m);
    // The committed layer over the lowers the upper sat on gives the same tree.
    let fresh = fx.root.join("fresh");
    fs::create_dir(&fresh).unwrap();
    let lowers: Vec<String> = fs::read_dir(&fx.root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("rotated")
        })
        .filter(|p| !p.to_string_lossy().ends_with("-work"))
        .map(|p| format!("{}=RO", p.display()))
        .collect();
    assert_eq!(lowers.len(), 1, "{lowers:?}");
    let spec = format!(
        "{}=RW:{}=RO:{}:{}=RO",
        fresh.display(),
        layer.display(),
        lowers[0],
        fx.lowers[0].display()
    );
    let m = fx.mount_args(vec![spec, mnt.clone()], vec![]);
    let after = view(&fx.mnt);
    let d = view_diff(&before, &after);
    assert!(d.is_empty(), "the committed layer shows another tree:\n{d}");
    drop(m);
}
