//! In-process hot paths of the union logic, without FUSE: resolution through many layers,
//! the merged listing of a large directory, copy-up. `cargo bench` prints nanoseconds per
//! operation (median of several batches), so a regression shows as a changed number; the
//! side-by-side comparison with other filesystems is `scripts/bench-compare`.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use unionmount::config::{Config, MountOpts};
use unionmount::union::Union;
use unionmount::union::node::Node;

/// A stack of `lowers` read-only layers under an upper, in a temp dir.
struct Stack {
    tmp: tempfile::TempDir,
    layers: Vec<PathBuf>,
}

impl Stack {
    fn new(lowers: usize) -> Stack {
        let tmp = tempfile::tempdir().expect("temp dir");
        let layers = (0..=lowers)
            .map(|i| {
                let p = tmp.path().join(format!("l{i:03}"));
                fs::create_dir(&p).expect("layer dir");
                p
            })
            .collect();
        fs::create_dir(tmp.path().join("mnt")).expect("mount point");
        Stack { tmp, layers }
    }

    fn layer(&self, i: usize) -> &Path {
        &self.layers[i]
    }

    fn union(&self) -> Union {
        let spec: Vec<String> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}={}", p.display(), if i == 0 { "RW" } else { "RO" }))
            .collect();
        let opts = MountOpts::default();
        let config = Config::build(
            Some(&spec.join(":")),
            &self.tmp.path().join("mnt"),
            &opts,
            true,
            false,
        )
        .expect("config");
        Union::new(&config.settings).expect("union")
    }
}

/// Nanoseconds per call of `op`: the median of 7 batches of `n` calls.
fn time(n: usize, mut op: impl FnMut(usize)) -> f64 {
    let mut batches: Vec<f64> = (0..7)
        .map(|b| {
            let start = Instant::now();
            for i in 0..n {
                op(b * n + i);
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[batches.len() / 2]
}

fn report(what: &str, ns: f64) {
    println!("{what:<58} {:>10.0} ns/op", ns);
}

fn probe(u: &Union, root: &Arc<Node>, name: &str) {
    let found = u.probe(root, OsStr::new(name)).expect("probe");
    assert!(found.is_some(), "{name} resolves");
}

fn main() {
    println!("unionmount in-process hot paths (cargo bench --bench hotpaths)\n");

    // Resolution: a name in the top layer must cost the same whatever the depth; a name in
    // the bottom layer pays one stat per layer above it.
    for lowers in [1, 8, 32, 128] {
        let s = Stack::new(lowers);
        for i in 0..100 {
            fs::write(s.layer(0).join(format!("top{i}")), "x").expect("write");
            fs::write(s.layer(lowers).join(format!("bottom{i}")), "x").expect("write");
        }
        let u = s.union();
        let root = u.root();
        let top = time(2000, |i| probe(&u, &root, &format!("top{}", i % 100)));
        report(&format!("lookup, top layer, {lowers} lower(s)"), top);
        let bottom = time(500, |i| probe(&u, &root, &format!("bottom{}", i % 100)));
        report(&format!("lookup, bottom layer, {lowers} lower(s)"), bottom);
    }

    // Merge: 10k names over three layers, a third shadowed, some deleted by `.wh.` files.
    let s = Stack::new(2);
    for i in 0..10_000 {
        let layer = i % 3;
        let d = s.layer(layer).join("big");
        if i < 3 {
            fs::create_dir_all(&d).expect("dir");
        }
        fs::create_dir_all(&d).expect("dir");
        fs::write(d.join(format!("f{i:05}")), "x").expect("write");
        if layer == 1 && i % 7 == 0 {
            fs::write(s.layer(0).join("big").join(format!("f{:05}", i + 1)), "y").expect("w");
        }
        if layer == 2 && i % 11 == 0 {
            fs::write(s.layer(0).join("big").join(format!(".wh.f{i:05}")), "").expect("wh");
        }
    }
    let u = s.union();
    let root = u.root();
    let (dir, _) = u
        .lookup(&root, OsStr::new("big"))
        .expect("lookup")
        .expect("big exists");
    let listed = u.list(&dir).expect("list").len();
    report(
        &format!("merged listing of a {listed}-entry directory, 3 layers"),
        time(3, |_| {
            u.list(&dir).expect("list");
        }),
    );

    // Copy-up of small lower files (data, xattrs, owner, mode, times, atomic publish).
    let s = Stack::new(1);
    for i in 0..7 * 200 {
        fs::write(s.layer(1).join(format!("c{i}")), "0123456789").expect("write");
    }
    let u = s.union();
    let root = u.root();
    report(
        "copy-up of a 10-byte lower file",
        time(200, |i| {
            let (node, _) = u
                .lookup(&root, OsStr::new(&format!("c{i}")))
                .expect("lookup")
                .expect("exists");
            u.copy_up(&node).expect("copy-up");
        }),
    );
}
