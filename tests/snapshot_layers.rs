//! Snapshot layers under random changes: a snapshot and a drop leave the merged view exactly
//! as it was (names, types, modes, data, times, inode numbers), and a rollback to any
//! snapshot still there, after drops and a remount, gives the view it had when taken.
//! Directories are created, removed and moved between snapshots, so redirects and opaque
//! directories meet across layers. `UNIONMOUNT_SNAP_SEEDS=N` runs more random sequences,
//! `UNIONMOUNT_SNAP_SEED=S` one.
mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Every entry under `dir`: type and mode, content, mtime, inode number.
type Seen = BTreeMap<String, (u32, Option<String>, (i64, i64), u64)>;

fn seen(dir: &Path) -> Seen {
    let mut out = Seen::new();
    walk_tree(dir, |p, md| {
        let rel = p.strip_prefix(dir).unwrap().display().to_string();
        if rel.is_empty() {
            return;
        }
        let data = md.is_file().then(|| read(p));
        out.insert(
            rel,
            (md.mode(), data, (md.mtime(), md.mtime_nsec()), md.ino()),
        );
    });
    out
}

fn differences(a: &Seen, b: &Seen) -> String {
    let mut out = String::new();
    for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        if a.get(k) != b.get(k) {
            out += &format!("  {k}: {:?} -> {:?}\n", a.get(k), b.get(k));
        }
    }
    out
}

/// One random change through the mount: create, rewrite, append, remove, mkdir, remove a
/// tree, or move a directory or file somewhere else. Failures (a move into itself, a name
/// taken) change nothing and are part of the game.
fn change(m: &Path, rng: &mut Rng) {
    let (mut dirs, mut files) = (vec![String::new()], Vec::new());
    walk_tree(m, |p, md| {
        let rel = p.strip_prefix(m).unwrap().display().to_string();
        if rel.is_empty() {
        } else if md.is_dir() {
            dirs.push(rel);
        } else {
            files.push(rel);
        }
    });
    let dir = dirs[rng.index(dirs.len())].clone();
    let name = format!("n{}", rng.index(24));
    let at = m.join(&dir).join(&name);
    let pick = |v: &Vec<String>, rng: &mut Rng| m.join(&v[rng.index(v.len())]);
    let n = rng.index(100);
    let _ = match rng.index(8) {
        0 => fs::write(&at, format!("c{n}")),
        1 if !files.is_empty() => fs::write(pick(&files, rng), format!("w{n}")),
        2 if !files.is_empty() => fs::OpenOptions::new()
            .append(true)
            .open(pick(&files, rng))
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("+{n}").as_bytes())),
        3 if !files.is_empty() => fs::remove_file(pick(&files, rng)),
        4 => fs::create_dir(&at),
        5 if dirs.len() > 1 => fs::remove_dir_all(m.join(&dirs[1 + rng.index(dirs.len() - 1)])),
        6 if dirs.len() > 1 => fs::rename(m.join(&dirs[1 + rng.index(dirs.len() - 1)]), &at),
        7 if !files.is_empty() => fs::rename(pick(&files, rng), &at),
        _ => Ok(()),
    };
}

fn run_seed(seed: u64) {
    let fx = Fixture::new(1);
    for i in 0..6 {
        put(&fx.l(0, &format!("d{i}/f")), &format!("L{i}"));
        put(&fx.l(0, &format!("d{i}/s/g")), &format!("G{i}"));
    }
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let m = fx.mount(&[]);
    let mp = s(&fx.mnt);
    let mut points: Vec<(String, Seen)> = Vec::new();
    for k in 1..=6 {
        for _ in 0..2 + rng.index(6) {
            change(&fx.mnt, &mut rng);
        }
        let before = seen(&fx.mnt);
        let name = format!("s{k}");
        tool_ok(["snapshot", &mp, &name]);
        let after = seen(&fx.mnt);
        assert!(
            before == after,
            "seed {seed}: snapshot {name} changed the view:\n{}",
            differences(&before, &after)
        );
        points.push((name, after));
    }
    for _ in 0..4 {
        change(&fx.mnt, &mut rng);
    }
    for _ in 0..3 {
        let (name, _) = points.remove(rng.index(points.len()));
        let before = seen(&fx.mnt);
        tool_ok(["snapshot", &mp, "--drop", &name]);
        let after = seen(&fx.mnt);
        assert!(
            before == after,
            "seed {seed}: dropping {name} changed the view:\n{}",
            differences(&before, &after)
        );
        assert!(
            !fx.root.join(format!("upper.snapshots/{name}")).exists(),
            "seed {seed}: {name} is still there"
        );
    }
    let before = seen(&fx.mnt);
    m.unmount();
    let m = fx.mount(&[]);
    let after = seen(&fx.mnt);
    assert!(
        before == after,
        "seed {seed}: the remount changed the view:\n{}",
        differences(&before, &after)
    );
    let listed = tool_ok(["snapshots", &mp]);
    for (name, _) in &points {
        assert!(
            listed.contains(name.as_str()),
            "seed {seed}: {name} not listed:\n{listed}"
        );
    }
    for (name, at) in points.iter().rev() {
        tool_ok(["rollback", &mp, name]);
        let now = seen(&fx.mnt);
        assert!(
            &now == at,
            "seed {seed}: rollback to {name} does not give its view:\n{}",
            differences(at, &now)
        );
    }
    m.unmount();
}

#[test]
fn snapshots_and_drops_keep_the_view_and_rollbacks_find_each_point() {
    let seeds: Vec<u64> = match std::env::var("UNIONMOUNT_SNAP_SEED") {
        Ok(s) => vec![s.parse().expect("UNIONMOUNT_SNAP_SEED")],
        Err(_) => {
            let n = std::env::var("UNIONMOUNT_SNAP_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(6);
            (1..=n).collect()
        }
    };
    for seed in seeds {
        run_seed(seed);
    }
}

#[test]
fn a_snapshot_layer_works_as_a_plain_lower() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "keep"), "base");
    put(&fx.l(0, "gone"), "base");
    put(&fx.l(0, "d/x"), "base");
    let m = fx.mount(&[]);
    let mp = s(&fx.mnt);
    put(&fx.m("keep"), "changed");
    fs::remove_file(fx.m("gone")).unwrap();
    fs::rename(fx.m("d"), fx.m("e")).unwrap();
    tool_ok(["snapshot", &mp, "one"]);
    let want = seen(&fx.mnt);
    m.unmount();
    // The snapshot directory alone over the lower, read-only: the same tree.
    let snap = fx.root.join("upper.snapshots/0001-one");
    let spec = format!("{}=RO:{}=RO", s(&snap), s(&fx.lowers[0]));
    let m2 = fx.mount_args(vec![spec, s(&fx.mnt)], vec![snap.clone()]);
    let got = seen(&fx.mnt);
    let names = |v: &Seen| v.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want));
    assert_eq!(read(&fx.m("keep")), "changed");
    assert_eq!(read(&fx.m("e/x")), "base");
    m2.unmount();
}

#[test]
fn kernel_overlayfs_stacks_snapshots_taken_in_overlay_format() {
    if !is_root() {
        eprintln!("skipped: mounting kernel overlayfs needs root");
        return;
    }
    let fx = Fixture::new(1);
    put(&fx.l(0, "keep"), "base");
    put(&fx.l(0, "gone"), "base");
    put(&fx.l(0, "d/x"), "base");
    put(&fx.l(0, "o/old"), "base");
    let m = fx.mount(&["-o", "whiteout=overlay"]);
    let mp = s(&fx.mnt);
    put(&fx.m("keep"), "one");
    fs::remove_file(fx.m("gone")).unwrap();
    tool_ok(["snapshot", &mp, "one"]);
    fs::rename(fx.m("d"), fx.m("e")).unwrap();
    fs::remove_dir_all(fx.m("o")).unwrap();
    fs::create_dir(fx.m("o")).unwrap();
    put(&fx.m("o/new"), "two");
    tool_ok(["snapshot", &mp, "two"]);
    let want: Vec<(String, Option<String>)> =
        seen(&fx.mnt).into_iter().map(|(k, v)| (k, v.1)).collect();
    m.unmount();
    // Both snapshots, newest first, over the lower: kernel overlayfs, read-only.
    let snaps = fx.root.join("upper.snapshots");
    let opts = format!(
        "lowerdir={}:{}:{},redirect_dir=follow",
        s(&snaps.join("0002-two")),
        s(&snaps.join("0001-one")),
        s(&fx.lowers[0])
    );
    let k = KernelMount::new(&["-t", "overlay", "overlay", "-o", &opts], &fx.mnt);
    let got: Vec<(String, Option<String>)> =
        seen(&fx.mnt).into_iter().map(|(k, v)| (k, v.1)).collect();
    drop(k);
    assert_eq!(got, want, "kernel overlayfs shows another tree");
}
