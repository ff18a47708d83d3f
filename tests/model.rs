//! Model check: random operation sequences applied both to the union mount and to a plain
//! directory holding the merged starting tree; results, errnos and final trees must agree,
//! also after a remount. At random points the upper also moves down into the lowers under a
//! fresh upper (the view must not change), and the operations go on above it.
//!
//! Now and then the whole mount is also snapshotted (`unionmount snapshot`: the reference
//! tree is copied aside under the snapshot's name) or rolled back (`unionmount rollback`: the
//! reference tree is restored from the copy, and the copies of later snapshots dropped).
//!
//! UNIONMOUNT_MODEL_SEQS (sequences per test, default 150), UNIONMOUNT_MODEL_OPS (ops per
//! sequence, default 30), UNIONMOUNT_MODEL_SEED (base seed, default: from the clock),
//! UNIONMOUNT_MODEL_ROTATE=0 (no rotations) and UNIONMOUNT_MODEL_SNAPSHOTS=0 (no snapshots
//! or rollbacks).
mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const NAMES: [&str; 3] = ["a", "b", "c"];
/// Relative targets without "..": a symlink never leads outside its sequence directory.
const TARGETS: [&str; 6] = ["a", "b", "c", "a/b", "c/a", "nowhere"];
const FILE_MODES: [u32; 6] = [0o644, 0o600, 0o640, 0o755, 0o444, 0o664];
const DIR_MODES: [u32; 5] = [0o755, 0o750, 0o700, 0o711, 0o775];
const BATCH: usize = 50;
/// One sequence in this many rotates the stack somewhere among its ops (a few times a batch).
const ROTATE_ONE_IN: u64 = 8;
/// Per op, the chances (in 1000) of a snapshot of the whole mount before it, and of a
/// rollback (when there is a snapshot to go back to): some 30 and 20 a batch.
const SNAPSHOT_PER_MILLE: u64 = 20;
const ROLLBACK_PER_MILLE: u64 = 15;

// ---------------------------------------------------------------------------------------------
// Random contents (the generator is common::Rng)
// ---------------------------------------------------------------------------------------------

/// Text-like contents of a random length: lines of one letter's neighbours.
fn data(rng: &mut Rng) -> Vec<u8> {
    let len = rng.pick(&[0usize, 1, 5, 17, 100, 4099]);
    let tag = b'A' + rng.below(26) as u8;
    (0..len)
        .map(|i| {
            if i % 7 == 6 {
                b'\n'
            } else {
                tag + (i % 3) as u8
            }
        })
        .collect()
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Starting trees
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Spec {
    File(Vec<u8>, u32),
    Symlink(&'static str),
    Dir(u32),
}

fn make(path: &Path, spec: &Spec) {
    match spec {
        Spec::File(data, mode) => {
            fs::write(path, data).unwrap();
            set_mode(path, *mode);
        }
        Spec::Symlink(t) => std::os::unix::fs::symlink(t, path).unwrap(),
        Spec::Dir(mode) => {
            fs::create_dir(path).unwrap();
            set_mode(path, *mode);
        }
    }
}

fn random_leaf(rng: &mut Rng) -> Spec {
    if rng.chance(75) {
        Spec::File(data(rng), rng.pick(&FILE_MODES))
    } else {
        Spec::Symlink(rng.pick(&TARGETS))
    }
}

/// Something in a lower layer that must never be visible (a directory only when `dir_ok`:
/// a directory under a directory would merge, legitimately).
fn decoy_of(rng: &mut Rng, path: &Path, dir_ok: bool) {
    match rng.below(if dir_ok { 3 } else { 2 }) {
        0 => put(path, "DECOY"),
        1 => std::os::unix::fs::symlink("DECOY", path).unwrap(),
        _ => put(&path.join("a"), "DECOY"),
    }
}

fn decoy(rng: &mut Rng, path: &Path) {
    decoy_of(rng, path, true)
}

fn whiteout(rng: &mut Rng, dir: &Path, name: &str) {
    if rng.chance(50) {
        put(&dir.join(format!(".wh.{name}")), "")
    } else {
        mknod_whiteout(&dir.join(name))
    }
}

fn make_opaque(rng: &mut Rng, dir: &Path) {
    match rng.below(3) {
        0 => put(&dir.join(OPQ), ""),
        1 => xattr::set(dir, "trusted.overlay.opaque", b"y").unwrap(),
        _ => xattr::set(dir, "user.overlay.opaque", b"y").unwrap(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Place {
    L0,
    L1,
    Both,
}

/// Build sequence directory `seq` in the lowers (l1 only if given) and its merged result in `rf`.
fn gen_start(rng: &mut Rng, seq: &str, l0: &Path, l1: Option<&Path>, rf: &Path) {
    let (l0, rf) = (l0.join(seq), rf.join(seq));
    let l1 = l1.map(|l| l.join(seq));
    for d in [Some(&l0), l1.as_ref(), Some(&rf)].into_iter().flatten() {
        fs::create_dir(d).unwrap();
        set_mode(d, 0o755);
    }
    let two = l1.is_some();
    for n in NAMES {
        match rng.below(10) {
            0 | 1 => {
                if let Some(l1) = &l1
                    && rng.chance(50)
                {
                    if rng.chance(80) {
                        decoy(rng, &l1.join(n));
                    }
                    whiteout(rng, &l0, n);
                }
            }
            2..=5 => {
                let spec = random_leaf(rng);
                make(&rf.join(n), &spec);
                match &l1 {
                    Some(l1) if rng.chance(50) => make(&l1.join(n), &spec),
                    _ => {
                        make(&l0.join(n), &spec);
                        if let Some(l1) = &l1
                            && rng.chance(30)
                        {
                            decoy(rng, &l1.join(n));
                        }
                    }
                }
            }
            _ => {
                let mode = rng.pick(&DIR_MODES);
                let place = if two {
                    rng.pick(&[Place::L0, Place::L1, Place::Both])
                } else {
                    Place::L0
                };
                let opaque = place == Place::Both && rng.chance(25);
                fs::create_dir(rf.join(n)).unwrap();
                if place != Place::L1 {
                    fs::create_dir(l0.join(n)).unwrap();
                }
                if let Some(l1) = &l1 {
                    match place {
                        Place::L0 if rng.chance(20) => put(&l1.join(n), "DECOY"),
                        Place::L0 => {}
                        _ => fs::create_dir(l1.join(n)).unwrap(),
                    }
                    if opaque {
                        make_opaque(rng, &l0.join(n));
                        for c in NAMES {
                            if rng.chance(50) {
                                decoy(rng, &l1.join(n).join(c));
                            }
                        }
                    }
                }
                for c in NAMES {
                    let kind = rng.below(8);
                    if kind < 3 {
                        if place == Place::Both && !opaque && rng.chance(40) {
                            decoy(rng, &l1.as_ref().unwrap().join(n).join(c));
                            whiteout(rng, &l0.join(n), c);
                        }
                        continue;
                    }
                    let spec = if kind == 7 {
                        Spec::Dir(rng.pick(&DIR_MODES))
                    } else {
                        random_leaf(rng)
                    };
                    make(&rf.join(n).join(c), &spec);
                    let in_l0 = match place {
                        Place::L0 => true,
                        Place::L1 => false,
                        Place::Both => opaque || rng.chance(50),
                    };
                    if in_l0 {
                        make(&l0.join(n).join(c), &spec);
                        if place == Place::Both && !opaque && rng.chance(30) {
                            let dir_ok = !matches!(spec, Spec::Dir(_));
                            decoy_of(rng, &l1.as_ref().unwrap().join(n).join(c), dir_ok);
                        }
                    } else {
                        make(&l1.as_ref().unwrap().join(n).join(c), &spec);
                    }
                }
                // Modes last; the merged directory takes the topmost layer's attributes.
                set_mode(&rf.join(n), mode);
                if place != Place::L1 {
                    set_mode(&l0.join(n), mode);
                }
                if let Some(l1) = &l1
                    && place != Place::L0
                {
                    let m1 = if place == Place::Both {
                        rng.pick(&DIR_MODES)
                    } else {
                        mode
                    };
                    set_mode(&l1.join(n), m1);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
enum Op {
    Write(String, Vec<u8>),
    WriteAt(String, u64, Vec<u8>),
    Append(String, Vec<u8>),
    Truncate(String, u64),
    Rename(String, String),
    Unlink(String),
    Mkdir(String, u32),
    Rmdir(String),
    Link(String, String),
    Chmod(String, u32),
    Symlink(&'static str, String),
    Read(String),
    List(String),
    Stat(String),
}

/// Short form for the op log: data shown by length and first bytes.
impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let d = |d: &Vec<u8>| {
            format!(
                "<{} bytes {:?}>",
                d.len(),
                String::from_utf8_lossy(&d[..d.len().min(8)])
            )
        };
        match self {
            Op::Write(p, data) => write!(f, "write {p} {}", d(data)),
            Op::WriteAt(p, off, data) => write!(f, "pwrite {p} @{off} {}", d(data)),
            Op::Append(p, data) => write!(f, "append {p} {}", d(data)),
            Op::Truncate(p, len) => write!(f, "truncate {p} {len}"),
            Op::Rename(a, b) => write!(f, "rename {a} {b}"),
            Op::Unlink(p) => write!(f, "unlink {p}"),
            Op::Mkdir(p, m) => write!(f, "mkdir {p} {m:o}"),
            Op::Rmdir(p) => write!(f, "rmdir {p}"),
            Op::Link(a, b) => write!(f, "link {a} {b}"),
            Op::Chmod(p, m) => write!(f, "chmod {p} {m:o}"),
            Op::Symlink(t, p) => write!(f, "symlink {t} {p}"),
            Op::Read(p) => write!(f, "read {p}"),
            Op::List(p) => write!(f, "list {p}"),
            Op::Stat(p) => write!(f, "lstat {p}"),
        }
    }
}

fn all_paths() -> Vec<String> {
    let mut v: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    for a in NAMES {
        for b in NAMES {
            v.push(format!("{a}/{b}"));
        }
    }
    v
}

#[derive(Clone, Copy, PartialEq)]
enum K {
    Missing,
    File,
    Dir,
    Symlink,
}

/// What each namespace path currently is in the reference tree.
fn state(root: &Path, paths: &[String]) -> Vec<(String, K)> {
    paths
        .iter()
        .map(|p| {
            let k = match fs::symlink_metadata(root.join(p)) {
                Err(_) => K::Missing,
                Ok(md) if md.is_dir() => K::Dir,
                Ok(md) if md.is_file() => K::File,
                Ok(_) => K::Symlink,
            };
            (p.clone(), k)
        })
        .collect()
}

/// Mostly pick paths that make the op succeed (given the reference state), sometimes any path.
fn gen_op(rng: &mut Rng, st: &[(String, K)]) -> Op {
    let kind_of = |p: &str| {
        st.iter()
            .find(|(q, _)| q == p)
            .map_or(K::Missing, |(_, k)| *k)
    };
    let creatable = |p: &str, k: K| {
        k == K::Missing
            && p.rsplit_once('/')
                .is_none_or(|(parent, _)| kind_of(parent) == K::Dir)
    };
    let pick = |rng: &mut Rng, ok: &dyn Fn(&str, K) -> bool| -> String {
        let good: Vec<&String> = st
            .iter()
            .filter(|(p, k)| ok(p, *k))
            .map(|(p, _)| p)
            .collect();
        if good.is_empty() || rng.chance(15) {
            st[rng.index(st.len())].0.clone()
        } else {
            good[rng.index(good.len())].clone()
        }
    };
    let file = |_: &str, k: K| k == K::File;
    let dir = |_: &str, k: K| k == K::Dir;
    let exists = |_: &str, k: K| k != K::Missing;
    let leaf = |_: &str, k: K| k == K::File || k == K::Symlink;
    match rng.below(100) {
        0..=11 => {
            let p = if rng.chance(50) {
                pick(rng, &file)
            } else {
                pick(rng, &creatable)
            };
            Op::Write(p, data(rng))
        }
        12..=19 => Op::WriteAt(
            pick(rng, &file),
            rng.pick(&[0, 1, 100, 4095, 4096, 10000]),
            data(rng),
        ),
        20..=25 => Op::Append(pick(rng, &file), data(rng)),
        26..=31 => Op::Truncate(pick(rng, &file), rng.pick(&[0, 1, 3, 4096, 10000])),
        32..=41 => {
            let a = pick(rng, &exists);
            let b = if rng.chance(60) {
                pick(rng, &creatable)
            } else {
                pick(rng, &exists)
            };
            Op::Rename(a, b)
        }
        42..=49 => Op::Unlink(pick(rng, &leaf)),
        50..=57 => Op::Mkdir(pick(rng, &creatable), rng.pick(&DIR_MODES)),
        58..=63 => Op::Rmdir(pick(rng, &dir)),
        64..=68 => Op::Link(pick(rng, &leaf), pick(rng, &creatable)),
        69..=73 => Op::Chmod(pick(rng, &exists), rng.pick(&FILE_MODES)),
        74..=78 => Op::Symlink(rng.pick(&TARGETS), pick(rng, &creatable)),
        79..=87 => Op::Read(pick(rng, &leaf)),
        88..=93 => Op::List(pick(rng, &dir)),
        _ => Op::Stat(pick(rng, &exists)),
    }
}

fn describe(md: &fs::Metadata) -> String {
    let ft = md.file_type();
    if ft.is_file() {
        format!(
            "file perm={:o} size={} nlink={}",
            md.mode() & 0o7777,
            md.len(),
            md.nlink()
        )
    } else if ft.is_dir() {
        format!("dir perm={:o}", md.mode() & 0o7777)
    } else if ft.is_symlink() {
        format!("symlink size={}", md.len())
    } else {
        format!("other {:?} perm={:o}", ft, md.mode() & 0o7777)
    }
}

/// Apply `op` under `root`; Ok(observed data) or Err(errno).
fn apply(root: &Path, op: &Op) -> Result<String, i32> {
    let at = |p: &str| root.join(p);
    let r: std::io::Result<String> = (|| {
        match op {
            Op::Write(p, d) => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o644)
                    .open(at(p))?;
                f.write_all(d)?;
            }
            Op::WriteAt(p, off, d) => OpenOptions::new()
                .write(true)
                .open(at(p))?
                .write_all_at(d, *off)?,
            Op::Append(p, d) => OpenOptions::new().append(true).open(at(p))?.write_all(d)?,
            Op::Truncate(p, len) => {
                cvt(unsafe { libc::truncate(cstr(&at(p)).as_ptr(), *len as libc::off_t) })?;
            }
            Op::Rename(a, b) => fs::rename(at(a), at(b))?,
            Op::Unlink(p) => fs::remove_file(at(p))?,
            Op::Mkdir(p, mode) => DirBuilder::new().mode(*mode).create(at(p))?,
            Op::Rmdir(p) => fs::remove_dir(at(p))?,
            Op::Link(a, b) => fs::hard_link(at(a), at(b))?,
            Op::Chmod(p, mode) => fs::set_permissions(at(p), fs::Permissions::from_mode(*mode))?,
            Op::Symlink(t, p) => std::os::unix::fs::symlink(t, at(p))?,
            Op::Read(p) => return Ok(String::from_utf8_lossy(&fs::read(at(p))?).into_owned()),
            Op::List(p) => {
                let mut v = Vec::new();
                for e in fs::read_dir(at(p))? {
                    v.push(e?.file_name().to_string_lossy().into_owned());
                }
                v.sort();
                return Ok(v.join(" "));
            }
            Op::Stat(p) => return Ok(describe(&fs::symlink_metadata(at(p))?)),
        }
        Ok(String::new())
    })();
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

// ---------------------------------------------------------------------------------------------
// Tree comparison
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Node {
    File {
        perm: u32,
        nlink: u64,
        data: Vec<u8>,
    },
    Dir {
        perm: u32,
    },
    Symlink(PathBuf),
    Other(String),
}

/// Every entry below `root`, plus the groups of paths that share an inode (hard links).
fn tree(root: &Path) -> (BTreeMap<String, Node>, BTreeSet<Vec<String>>) {
    fn walk(
        root: &Path,
        rel: &str,
        out: &mut BTreeMap<String, Node>,
        inos: &mut BTreeMap<u64, Vec<String>>,
    ) {
        for e in fs::read_dir(root.join(rel)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p).unwrap();
            let perm = md.mode() & 0o7777;
            let node = if md.is_file() {
                inos.entry(md.ino()).or_default().push(r.clone());
                Node::File {
                    perm,
                    nlink: md.nlink(),
                    data: fs::read(&p).unwrap(),
                }
            } else if md.is_dir() {
                walk(root, &r, out, inos);
                Node::Dir { perm }
            } else if md.file_type().is_symlink() {
                inos.entry(md.ino()).or_default().push(r.clone());
                Node::Symlink(fs::read_link(&p).unwrap())
            } else {
                Node::Other(describe(&md))
            };
            out.insert(r, node);
        }
    }
    let mut out = BTreeMap::new();
    let mut inos = BTreeMap::new();
    walk(root, "", &mut out, &mut inos);
    let links = inos
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    (out, links)
}

fn short(n: Option<&Node>) -> String {
    match n {
        Some(Node::File { perm, nlink, data }) => {
            format!(
                "file perm={perm:o} nlink={nlink} {} bytes {:?}",
                data.len(),
                String::from_utf8_lossy(&data[..data.len().min(40)])
            )
        }
        other => format!("{other:?}"),
    }
}

/// "" when the union tree equals the reference tree.
fn tree_diff(union: &Path, reference: &Path) -> String {
    let (u, ul) = tree(union);
    let (r, rl) = tree(reference);
    let mut s = String::new();
    let keys: BTreeSet<&String> = u.keys().chain(r.keys()).collect();
    for k in keys {
        if u.get(k) != r.get(k) {
            s += &format!(
                "  {k}: union {} / reference {}\n",
                short(u.get(k)),
                short(r.get(k))
            );
        }
    }
    if ul != rl {
        s += &format!("  hard links: union {ul:?} / reference {rl:?}\n");
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

/// `extra`: mount options of every mount of the run.
fn run_model(two_lowers: bool, default_seqs: u64, extra: &[&str]) {
    let seqs = env_num("UNIONMOUNT_MODEL_SEQS", default_seqs) as usize;
    let n_ops = env_num("UNIONMOUNT_MODEL_OPS", 30) as usize;
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let base = env_num("UNIONMOUNT_MODEL_SEED", clock);
    eprintln!(
        "model check: UNIONMOUNT_MODEL_SEED={base} seqs={seqs} ops={n_ops} two_lowers={two_lowers} {extra:?}"
    );
    let paths = all_paths();
    // UNIONMOUNT_MODEL_ROTATE=0 leaves the stack alone (to tell a stacking failure apart).
    let rotate = env_num("UNIONMOUNT_MODEL_ROTATE", 1) != 0;
    let snapshots = env_num("UNIONMOUNT_MODEL_SNAPSHOTS", 1) != 0;

    let mut first = 0;
    while first < seqs {
        let batch: Vec<usize> = (first..seqs.min(first + BATCH)).collect();
        first += BATCH;
        let fx = Fixture::new(if two_lowers { 2 } else { 1 });
        let rf = fx.root.join("ref");
        fs::create_dir(&rf).unwrap();
        let mut rngs = Vec::new();
        for &i in &batch {
            let mut rng = Rng::new(base ^ splitmix(i as u64));
            let l1 = if two_lowers {
                Some(fx.lowers[1].as_path())
            } else {
                None
            };
            gen_start(&mut rng, &format!("s{i}"), &fx.lowers[0], l1, &rf);
            rngs.push(rng);
        }
        let mut m = fx.mount(extra);
        let mut logs: Vec<Vec<String>> = Vec::new();
        // The mount's snapshots, oldest first: each name with a copy of the reference tree
        // as it was then.
        let mut saved: Vec<(String, PathBuf)> = Vec::new();
        let mut taken = 0;
        for (&i, rng) in batch.iter().zip(rngs.iter_mut()) {
            let seq = format!("s{i}");
            let (mroot, rroot) = (fx.mnt.join(&seq), rf.join(&seq));
            let start = tree_diff(&mroot, &rroot);
            assert!(
                start.is_empty(),
                "seed {base} sequence {i}: starting tree differs:\n{start}"
            );
            let mut log = Vec::new();
            for _ in 0..n_ops {
                // Now and then the upper moves down into the lowers under a fresh one
                // (`Mount::rotate` checks the view is unchanged); the ops go on above it.
                if rotate && rng.next() % (ROTATE_ONE_IN * n_ops as u64) == 0 {
                    let d;
                    // The upper's snapshots move down with it, below it in the same order
                    // (`Rotation`): the only place where they show the same view, since the
                    // upper's changes were made on top of them. There they are plain lowers
                    // of the new command line, no longer snapshots of the fresh upper,
                    // which has none: nothing to roll back to any more.
                    (m, d) = m.rotate();
                    for (_, copy) in saved.drain(..) {
                        fs::remove_dir_all(copy).unwrap();
                    }
                    log.push("    (the upper moved down under a fresh upper)".into());
                    assert!(
                        d.is_empty(),
                        "UNIONMOUNT_MODEL_SEED={base} sequence {i}: the view changed when the upper moved down:\n{d}  ops in s{i}:\n{}",
                        log.join("\n")
                    );
                }
                // Drawn with or without snapshots: UNIONMOUNT_MODEL_SNAPSHOTS=0 replays the
                // same ops without them (to tell a snapshot failure apart).
                let (roll, snap, pick, by_default) = (
                    rng.next() % 1000 < ROLLBACK_PER_MILLE,
                    rng.next() % 1000 < SNAPSHOT_PER_MILLE,
                    rng.next(),
                    rng.chance(30),
                );
                if snapshots {
                    if roll && !saved.is_empty() {
                        let at = (pick % saved.len() as u64) as usize;
                        let what = rollback_both(&fx, &rf, &mut saved, at, by_default);
                        log.push(format!("    {what}"));
                        for l in logs.iter_mut() {
                            l.push(format!("    ({what}, in sequence s{i})"));
                        }
                        let d = tree_diff(&fx.mnt, &rf);
                        assert!(
                            d.is_empty(),
                            "UNIONMOUNT_MODEL_SEED={base} sequence {i}: trees differ after {what}:\n{d}  ops in s{i}:\n{}",
                            log.join("\n")
                        );
                    } else if snap {
                        taken += 1;
                        let name = format!("m{taken}");
                        let copy = fx.root.join(format!("saved-{name}"));
                        copy_tree(&rf, &copy);
                        tool_ok(["snapshot".to_string(), s(&fx.mnt), name.clone()]);
                        log.push(format!("    snapshot {name}"));
                        saved.push((name, copy));
                    }
                }
                let op = gen_op(rng, &state(&rroot, &paths));
                let got = apply(&mroot, &op);
                let want = apply(&rroot, &op);
                log.push(format!("    {op:?} -> {}", fmt_res(&want)));
                assert!(
                    got == want,
                    "UNIONMOUNT_MODEL_SEED={base} sequence {i}: union returned {} where the reference returned {}\n  ops in s{i}:\n{}",
                    fmt_res(&got),
                    fmt_res(&want),
                    log.join("\n")
                );
            }
            let d = tree_diff(&mroot, &rroot);
            assert!(
                d.is_empty(),
                "UNIONMOUNT_MODEL_SEED={base} sequence {i}: trees differ after the sequence:\n{d}  ops in s{i}:\n{}",
                log.join("\n")
            );
            logs.push(log);
        }
        let m = m.remount();
        for (&i, log) in batch.iter().zip(&logs) {
            let seq = format!("s{i}");
            let d = tree_diff(&fx.mnt.join(&seq), &rf.join(&seq));
            assert!(
                d.is_empty(),
                "UNIONMOUNT_MODEL_SEED={base} sequence {i}: trees differ after remount:\n{d}  ops in s{i}:\n{}",
                log.join("\n")
            );
        }
        drop(m);
    }
}

/// `unionmount rollback` to `saved[at]` (by name, or with none when it is the latest and
/// `by_default`), and the reference tree restored from its copy; the later snapshots go.
/// What was done, for the log.
fn rollback_both(
    fx: &Fixture,
    rf: &Path,
    saved: &mut Vec<(String, PathBuf)>,
    at: usize,
    by_default: bool,
) -> String {
    let name = saved[at].0.clone();
    let mut args = vec!["rollback".to_string(), s(&fx.mnt)];
    if !(by_default && at == saved.len() - 1) {
        args.push(name.clone());
    }
    let out = tool_ok(&args);
    assert_eq!(out, format!("rolled back to {name}\n"), "{args:?}");
    for (_, copy) in saved.drain(at + 1..) {
        fs::remove_dir_all(copy).unwrap();
    }
    fs::remove_dir_all(rf).unwrap();
    copy_tree(&saved[at].1, rf);
    format!("{} (to {name})", args.join(" ").replace(&s(&fx.mnt), "MNT"))
}

/// Copy the tree `src` to `dst` (which must not exist): files, directories and symlinks
/// with their modes, hard links kept as links.
fn copy_tree(src: &Path, dst: &Path) {
    fn walk(src: &Path, dst: &Path, links: &mut BTreeMap<u64, PathBuf>) {
        let md = fs::symlink_metadata(src).unwrap();
        if md.is_dir() {
            fs::create_dir(dst).unwrap();
            for e in fs::read_dir(src).unwrap() {
                let n = e.unwrap().file_name();
                walk(&src.join(&n), &dst.join(&n), links);
            }
            fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777)).unwrap();
        } else if let Some(first) = links.get(&md.ino()) {
            // Symlinks get hard-linked too (`link` of a symlink links the link itself): a
            // copy that split them would make rename of one onto the other do something else.
            fs::hard_link(first, dst).unwrap();
        } else {
            if md.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(src).unwrap(), dst).unwrap();
            } else {
                fs::copy(src, dst).unwrap();
                fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777)).unwrap();
            }
            if md.nlink() > 1 {
                links.insert(md.ino(), dst.to_path_buf());
            }
        }
    }
    walk(src, dst, &mut BTreeMap::new());
}

fn fmt_res(r: &Result<String, i32>) -> String {
    match r {
        Ok(s) if s.len() > 60 => format!("Ok({:?}...)", s.chars().take(60).collect::<String>()),
        Ok(s) => format!("Ok({s:?})"),
        Err(e) => format!("Err({})", std::io::Error::from_raw_os_error(*e)),
    }
}

/// Starting tree entirely in one lower.
#[test]
fn model_one_lower() {
    run_model(false, 150, &[]);
}

/// Starting tree spread over two lowers, with shadowed decoys, whiteouts in both formats and
/// opaque directories in all three formats.
#[test]
fn model_two_lowers_with_whiteouts() {
    run_model(true, 150, &[]);
}

/// Without passthrough, as every rootless mount: every read and write goes through the
/// daemon and the kernel's page cache (`UNIONMOUNT_MODEL_SEQS` counts for this run too).
#[test]
fn model_two_lowers_without_passthrough() {
    run_model(true, 60, &["-o", "passthrough=0"]);
}
