//! Unit tests of the union logic on temp-dir branches, without mounting.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Union;
use super::dir::{Caller, New};
use super::node::Node;
use super::{Branch, Settings, WhiteoutFormat};

struct Stack {
    _tmp: tempfile::TempDir,
    upper: PathBuf,
    lowers: Vec<PathBuf>,
}

impl Stack {
    fn new(n_lowers: usize) -> Stack {
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("upper");
        fs::create_dir(&upper).unwrap();
        let lowers: Vec<PathBuf> = (0..n_lowers)
            .map(|i| {
                let p = tmp.path().join(format!("lower{i}"));
                fs::create_dir(&p).unwrap();
                p
            })
            .collect();
        Stack {
            _tmp: tmp,
            upper,
            lowers,
        }
    }

    fn union(&self) -> Union {
        let mut branches = vec![Branch {
            path: self.upper.clone(),
            writable: true,
            spec: "upper=RW".into(),
        }];
        for (i, l) in self.lowers.iter().enumerate() {
            branches.push(Branch {
                path: l.clone(),
                writable: false,
                spec: format!("lower{i}=RO"),
            });
        }
        let settings = Settings {
            branches,
            workdir: None,
            read_only: false,
            whiteout: WhiteoutFormat::WhFiles,
            volatile: true,
            owners: Default::default(),
            noatime: false,
        };
        Union::new(&settings).unwrap()
    }
}

fn write(p: &Path, data: &str) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, data).unwrap();
}

/// Walk a merged path from the root, one lookup per component.
fn walk(u: &Union, path: &str) -> Option<Arc<Node>> {
    let mut cur = u.root();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        cur = u.lookup(&cur, OsStr::new(part)).unwrap()?.0;
    }
    Some(cur)
}

fn names(u: &Union, path: &str) -> Vec<String> {
    let dir = walk(u, path).unwrap();
    let mut v: Vec<String> = u
        .list(&dir)
        .unwrap()
        .into_iter()
        .skip(2)
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn read(u: &Union, path: &str) -> String {
    let (mut f, _) = u.open(&walk(u, path).unwrap(), libc::O_RDONLY).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

const ME: Caller = Caller {
    uid: 0,
    gid: 0,
    umask: 0o022,
};

/// A new regular file opened for reading and writing.
const RW_FILE: New<'static> = New::File {
    mode: 0o644,
    flags: libc::O_RDWR,
};

#[test]
fn topmost_file_wins_and_directories_merge() {
    let s = Stack::new(2);
    write(&s.lowers[1].join("d/a"), "bottom a");
    write(&s.lowers[1].join("d/b"), "bottom b");
    write(&s.lowers[0].join("d/a"), "middle a");
    write(&s.upper.join("d/c"), "top c");
    let u = s.union();
    assert_eq!(read(&u, "d/a"), "middle a");
    assert_eq!(read(&u, "d/b"), "bottom b");
    assert_eq!(names(&u, "d"), ["a", "b", "c"]);
}

#[test]
fn whiteouts_in_every_format_hide_lower_entries() {
    let s = Stack::new(2);
    write(&s.lowers[1].join("a"), "x");
    write(&s.lowers[1].join("b"), "x");
    write(&s.lowers[1].join("c/inner"), "x");
    write(&s.lowers[0].join(".wh.a"), "");
    // An overlayfs whiteout is a char device 0/0; only root may make one.
    let chardev = crate::sys::mknodat(
        libc::AT_FDCWD,
        s.lowers[0].join("b").as_os_str(),
        libc::S_IFCHR,
        0,
    )
    .is_ok();
    write(&s.lowers[0].join("c/.wh..wh..opq"), "");
    write(&s.lowers[0].join("c/new"), "x");
    let u = s.union();
    assert!(walk(&u, "a").is_none());
    if chardev {
        assert!(walk(&u, "b").is_none());
        assert_eq!(names(&u, ""), ["c"]);
    }
    assert!(
        walk(&u, "c/inner").is_none(),
        "opaque dir must hide lower entries"
    );
    assert_eq!(names(&u, "c"), ["new"]);
    assert!(walk(&u, ".wh.a").is_none(), "markers never show");
}

#[test]
fn copy_up_creates_parents_with_their_metadata() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("p/q/file"), "data");
    fs::set_permissions(s.lowers[0].join("p"), fs::Permissions::from_mode(0o750)).unwrap();
    let u = s.union();
    let node = walk(&u, "p/q/file").unwrap();
    let (mut f, layer) = u.open(&node, libc::O_WRONLY | libc::O_APPEND).unwrap();
    assert_eq!(layer, 0);
    f.write_all(b"+more").unwrap();
    assert_eq!(
        fs::read_to_string(s.upper.join("p/q/file")).unwrap(),
        "data+more"
    );
    assert_eq!(
        fs::read_to_string(s.lowers[0].join("p/q/file")).unwrap(),
        "data"
    );
    let mode = fs::metadata(s.upper.join("p"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o750);
    assert_eq!(
        node.ino,
        walk(&u, "p/q/file").unwrap().ino,
        "inode kept across copy-up"
    );
}

#[test]
fn unlink_of_lower_file_leaves_whiteout() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("opt/hello.txt"), "hello");
    let u = s.union();
    let opt = walk(&u, "opt").unwrap();
    u.unlink(&opt, OsStr::new("hello.txt")).unwrap();
    assert!(s.upper.join("opt/.wh.hello.txt").exists());
    assert!(s.lowers[0].join("opt/hello.txt").exists());
    assert!(walk(&u, "opt/hello.txt").is_none());
    assert!(names(&u, "opt").is_empty());
}

#[test]
fn recreate_removes_whiteout_and_mkdir_over_whiteout_is_opaque() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("f"), "old");
    write(&s.lowers[0].join("d/old"), "old");
    let u = s.union();
    let root = u.root();
    u.unlink(&root, OsStr::new("f")).unwrap();
    let (_, _, file) = u
        .create(
            &root,
            OsStr::new("f"),
            New::File {
                mode: libc::S_IFREG | 0o644,
                flags: libc::O_WRONLY,
            },
            ME,
        )
        .unwrap();
    file.unwrap().write_all(b"new").unwrap();
    assert!(!s.upper.join(".wh.f").exists());
    assert_eq!(read(&u, "f"), "new");

    let d = walk(&u, "d").unwrap();
    u.unlink(&d, OsStr::new("old")).unwrap();
    u.rmdir(&root, OsStr::new("d")).unwrap();
    assert!(s.upper.join(".wh.d").exists());
    u.create(&root, OsStr::new("d"), New::Dir { mode: 0o755 }, ME)
        .unwrap();
    assert!(!s.upper.join(".wh.d").exists());
    assert!(s.upper.join("d/.wh..wh..opq").exists());
    assert!(walk(&u, "d/old").is_none());
    assert!(names(&u, "d").is_empty());
}

#[test]
fn rmdir_of_non_empty_merged_dir_fails() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("d/x"), "x");
    let u = s.union();
    let e = u.rmdir(&u.root(), OsStr::new("d")).unwrap_err();
    assert_eq!(e.errno, libc::ENOTEMPTY);
}

#[test]
fn reserved_names_cannot_be_created() {
    let s = Stack::new(1);
    let u = s.union();
    let e = u
        .create(&u.root(), OsStr::new(".wh.x"), New::Dir { mode: 0o755 }, ME)
        .unwrap_err();
    assert_eq!(e.errno, libc::EPERM);
    assert!(!s.upper.join(".wh.x").exists());
}

#[test]
fn rename_of_lower_directory_moves_whole_tree() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("src/a"), "A");
    write(&s.lowers[0].join("src/sub/b"), "B");
    write(&s.lowers[0].join("dst/stale"), "S");
    let u = s.union();
    let root = u.root();
    let dst = walk(&u, "dst").unwrap();
    u.unlink(&dst, OsStr::new("stale")).unwrap();
    u.rename(&root, OsStr::new("src"), &root, OsStr::new("dst"), 0)
        .unwrap();
    assert!(walk(&u, "src").is_none());
    assert_eq!(read(&u, "dst/a"), "A");
    assert_eq!(read(&u, "dst/sub/b"), "B");
    assert!(
        walk(&u, "dst/stale").is_none(),
        "old destination contents stay hidden"
    );
    assert_eq!(names(&u, "dst"), ["a", "sub"]);
    assert!(s.upper.join(".wh.src").exists());
    assert!(s.lowers[0].join("src/a").exists(), "lower untouched");
    if crate::sys::geteuid() == 0 {
        // Privileged: the directory moved alone, its files stay in the lower (a redirect).
        assert!(!s.upper.join("dst/a").exists(), "no file data copied");
        assert!(!s.upper.join("dst/sub").exists());
    }
    // And the next mount sees the same tree.
    drop(u);
    let u = s.union();
    assert_eq!(read(&u, "dst/sub/b"), "B");
    assert_eq!(names(&u, "dst"), ["a", "sub"]);
    assert!(walk(&u, "src").is_none());
}

#[test]
fn moved_directory_keeps_changes_made_after_the_move() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("d/keep"), "K");
    write(&s.lowers[0].join("d/gone"), "G");
    let u = s.union();
    let root = u.root();
    u.rename(&root, OsStr::new("d"), &root, OsStr::new("e"), 0)
        .unwrap();
    let e = walk(&u, "e").unwrap();
    u.unlink(&e, OsStr::new("gone")).unwrap();
    u.create(&e, OsStr::new("new"), New::Dir { mode: 0o755 }, ME)
        .unwrap();
    u.rename(&root, OsStr::new("e"), &root, OsStr::new("d"), 0)
        .unwrap();
    assert_eq!(names(&u, "d"), ["keep", "new"]);
    drop(u);
    let u = s.union();
    assert_eq!(names(&u, "d"), ["keep", "new"]);
    assert_eq!(read(&u, "d/keep"), "K");
    assert!(walk(&u, "e").is_none());
}

#[test]
fn rename_exchange_and_noreplace() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("a"), "A");
    write(&s.upper.join("b"), "B");
    let u = s.union();
    let root = u.root();
    let e = u
        .rename(
            &root,
            OsStr::new("a"),
            &root,
            OsStr::new("b"),
            crate::sys::RENAME_NOREPLACE,
        )
        .unwrap_err();
    assert_eq!(e.errno, libc::EEXIST);
    u.rename(
        &root,
        OsStr::new("a"),
        &root,
        OsStr::new("b"),
        crate::sys::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(read(&u, "a"), "B");
    assert_eq!(read(&u, "b"), "A");
}

#[test]
fn hard_link_shares_inode() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("f"), "F");
    let u = s.union();
    let root = u.root();
    let f = walk(&u, "f").unwrap();
    u.link(&f, &root, OsStr::new("g")).unwrap();
    let g = walk(&u, "g").unwrap();
    assert_eq!(f.ino, g.ino);
    let st = u.getattr(&g).unwrap();
    assert_eq!(st.st_nlink, 2);
    assert_eq!(
        fs::metadata(s.upper.join("f")).unwrap().ino(),
        fs::metadata(s.upper.join("g")).unwrap().ino()
    );
}

#[test]
fn readdir_inode_numbers_match_lookup() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("lower"), "x");
    write(&s.upper.join("upper"), "x");
    let u = s.union();
    let root = u.root();
    // copy one up so its inode comes from the origin record
    u.setattr(
        &walk(&u, "lower").unwrap(),
        super::inode::SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    for e in u.list(&root).unwrap().into_iter().skip(2) {
        let n = walk(&u, &e.name.to_string_lossy()).unwrap();
        assert_eq!(n.ino, e.ino, "{:?}", e.name);
    }
}

#[test]
fn work_dir_is_cleaned_and_hidden() {
    let s = Stack::new(1);
    let work = s.upper.join(super::layer::DEFAULT_WORKDIR);
    write(&work.join("#junk"), "half a copy");
    let u = s.union();
    assert!(work.exists());
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0);
    assert!(names(&u, "").is_empty());
    u.shutdown();
    assert!(!work.exists());
}

#[test]
fn special_files_and_symlinks() {
    let s = Stack::new(1);
    let u = s.union();
    let root = u.root();
    u.create(
        &root,
        OsStr::new("fifo"),
        New::Special {
            mode: libc::S_IFIFO | 0o644,
            rdev: 0,
        },
        ME,
    )
    .unwrap();
    u.create(
        &root,
        OsStr::new("ln"),
        New::Symlink {
            target: OsStr::new("fifo"),
        },
        ME,
    )
    .unwrap();
    assert!(
        fs::symlink_metadata(s.upper.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(u.readlink(&walk(&u, "ln").unwrap()).unwrap(), b"fifo");
}

#[test]
fn chmod_copies_metadata_only_until_the_first_write() {
    let s = Stack::new(1);
    let data: String = "0123456789".repeat(100_000);
    write(&s.lowers[0].join("big"), &data);
    let u = s.union();
    let node = walk(&u, "big").unwrap();
    let set_mode = super::inode::SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    u.setattr(&node, set_mode, None).unwrap();
    let upper = fs::metadata(s.upper.join("big")).unwrap();
    assert_eq!(upper.permissions().mode() & 0o7777, 0o600);
    assert_eq!(upper.len(), data.len() as u64);
    if crate::sys::geteuid() == 0 {
        assert_eq!(upper.blocks(), 0, "no data copied by a chmod");
    }
    assert_eq!(read(&u, "big"), data, "reads come from the lower meanwhile");
    // The next mount knows the data is still below.
    drop(u);
    let u = s.union();
    assert_eq!(read(&u, "big"), data);
    let node = walk(&u, "big").unwrap();
    let (mut f, layer) = u.open(&node, libc::O_WRONLY | libc::O_APPEND).unwrap();
    assert_eq!(layer, 0);
    f.write_all(b"!").unwrap();
    drop(f);
    assert_eq!(read(&u, "big"), format!("{data}!"));
    assert_eq!(
        fs::metadata(s.upper.join("big"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o600
    );
    assert_eq!(
        fs::read_to_string(s.lowers[0].join("big")).unwrap(),
        data,
        "lower untouched"
    );
    drop(u);
    let u = s.union();
    assert_eq!(read(&u, "big"), format!("{data}!"));
}

#[test]
fn copy_up_of_a_lower_hard_link_is_shared_by_its_other_names() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("a"), "lower");
    fs::create_dir(s.lowers[0].join("d")).unwrap();
    fs::hard_link(s.lowers[0].join("a"), s.lowers[0].join("d/b")).unwrap();
    {
        let u = s.union();
        let a = walk(&u, "a").unwrap();
        u.copy_up(&a).unwrap();
        fs::write(s.upper.join("a"), "changed").unwrap();
        // b was never looked up: it joins the copy the first time it is.
        assert_eq!(read(&u, "d/b"), "changed");
        let (ua, ub) = (
            fs::metadata(s.upper.join("a")).unwrap(),
            fs::metadata(s.upper.join("d/b")).unwrap(),
        );
        assert_eq!(ua.ino(), ub.ino(), "one upper inode for both names");
        let st = u.getattr(&walk(&u, "a").unwrap()).unwrap();
        assert_eq!(st.st_nlink, 2, "the index's own link is not counted");
    }
    // A new union on the same upper (a remount) still shares it.
    let u = s.union();
    assert_eq!(read(&u, "d/b"), "changed");
    assert_eq!(names(&u, ""), ["a", "d"], "the index is hidden");
    assert_eq!(fs::read_to_string(s.lowers[0].join("a")).unwrap(), "lower");
}

#[test]
fn a_listed_name_resolves_as_a_lookup_does_even_if_the_upper_changed_since() {
    let s = Stack::new(3);
    write(&s.lowers[2].join("d/deep"), "bottom");
    write(&s.lowers[0].join("d/deep"), "middle");
    write(&s.lowers[2].join("d/later"), "bottom");
    fs::create_dir(s.upper.join("d")).unwrap();
    let u = s.union();
    let d = walk(&u, "d").unwrap();
    let listed = u.list(&d).unwrap();
    let layer_of = |n: &str| listed.iter().find(|e| e.name == n).unwrap().layer;
    assert_eq!((layer_of("deep"), layer_of("later")), (1, 3));
    let (node, _) = u
        .lookup_listed(&d, OsStr::new("deep"), layer_of("deep"))
        .unwrap()
        .unwrap();
    assert_eq!(read(&u, "d/deep"), "middle");
    assert_eq!(node.ino, walk(&u, "d/deep").unwrap().ino);
    // Written through the mount after the listing: the upper copy wins.
    write(&s.upper.join("d/later"), "upper");
    let (node, st) = u
        .lookup_listed(&d, OsStr::new("later"), layer_of("later"))
        .unwrap()
        .unwrap();
    assert_eq!(st.st_size, 5, "the upper file, not the listed lower one");
    assert_eq!(node.state().layer, 0);
}

/// The kernel looks names up without the child's lock (revalidation, readdirplus), so a
/// probe can begin before a copy-up and be bound after it. It must not move the node back:
/// a directory would lose its upper part (and the whiteouts in it), a file its copy.
#[test]
fn a_lookup_that_raced_a_copy_up_does_not_undo_it() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("d/gone"), "lower");
    write(&s.lowers[0].join("f"), "lower");
    let u = s.union();
    let root = u.root();
    let d = walk(&u, "d").unwrap();
    let f = walk(&u, "f").unwrap();
    let stale_d = u.probe(&root, OsStr::new("d")).unwrap().unwrap();
    let stale_f = u.probe(&root, OsStr::new("f")).unwrap().unwrap();
    // The unlink copies `d` up and leaves a whiteout in it; the write copies `f` up.
    u.unlink(&d, OsStr::new("gone")).unwrap();
    let (mut file, _) = u.open(&f, libc::O_WRONLY | libc::O_APPEND).unwrap();
    file.write_all(b" upper").unwrap();
    let (d2, _) = u.bind(&root, OsStr::new("d"), stale_d);
    let (f2, _) = u.bind(&root, OsStr::new("f"), stale_f);
    assert!(Arc::ptr_eq(&d, &d2) && Arc::ptr_eq(&f, &f2));
    assert_eq!(d.layer(), 0, "the directory stays copied up");
    assert!(
        u.lookup(&d, OsStr::new("gone")).unwrap().is_none(),
        "whiteout leaked"
    );
    assert!(names(&u, "d").is_empty());
    u.rmdir(&root, OsStr::new("d")).unwrap();
    assert_eq!(f.layer(), 0, "the file stays copied up");
    assert_eq!(read(&u, "f"), "lower upper");
}

/// A probe that found a name just before its last removal binds to the node the kernel
/// still holds, not to a second node for the same file.
#[test]
fn a_lookup_that_raced_an_unlink_finds_the_node_it_had() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("low"), "lower");
    let u = s.union();
    let root = u.root();
    let (up, _, _) = u.create(&root, OsStr::new("up"), RW_FILE, ME).unwrap();
    let low = walk(&u, "low").unwrap();
    for (node, name) in [(&up, "up"), (&low, "low")] {
        let stale = u.probe(&root, OsStr::new(name)).unwrap().unwrap();
        u.unlink(&root, OsStr::new(name)).unwrap();
        let (again, _) = u.bind(&root, OsStr::new(name), stale);
        assert!(
            Arc::ptr_eq(node, &again),
            "{name}: a second node for one file"
        );
        assert!(again.is_unlinked(), "{name}");
        assert!(walk(&u, name).is_none(), "{name} came back");
    }
}

/// The branch gives a deleted file's inode number to a new file while the kernel still
/// holds the deleted one (its forget not yet in): the new file gets a node and node id of
/// its own, and the old node answers to its id until the kernel forgets it.
#[test]
fn a_reused_inode_number_gets_a_new_node_id() {
    let s = Stack::new(1);
    let u = s.union();
    let root = u.root();
    let (old, _, _) = u.create(&root, OsStr::new("old"), RW_FILE, ME).unwrap();
    u.unlink(&root, OsStr::new("old")).unwrap();
    u.create(&root, OsStr::new("new"), RW_FILE, ME).unwrap();
    // The filesystem may or may not reuse the number itself: hand it over explicitly.
    let mut found = u.probe(&root, OsStr::new("new")).unwrap().unwrap();
    found.ino = old.ino;
    let (new, st) = u.bind(&root, OsStr::new("new"), found);
    assert!(!Arc::ptr_eq(&old, &new), "the new file took the old node");
    assert_ne!(new.id, old.id, "a node id named two files");
    assert_eq!((new.ino, st.st_ino), (old.ino, old.ino), "the number shown");
    assert!(Arc::ptr_eq(&u.node(old.id).unwrap(), &old));
    assert!(Arc::ptr_eq(&u.nodes.by_ino(old.ino).unwrap(), &new));
    // The kernel forgets the old inode: the number stays the new file's.
    u.nodes.forget(old.id, 1);
    assert_eq!(u.node(old.id).unwrap_err().errno, libc::ESTALE);
    assert!(Arc::ptr_eq(&u.nodes.by_ino(old.ino).unwrap(), &new));
    u.nodes.forget(new.id, 1);
    assert!(u.nodes.by_ino(old.ino).is_none() && u.node(new.id).is_err());
}

/// The forget that takes a large table below a quarter of its peak gives memory back while
/// another node holds the number of the node it drops: it must not still hold the number's
/// lock then (shrinking takes every lock of the map: a deadlock).
#[test]
fn a_forget_that_shrinks_the_table_does_not_deadlock() {
    use super::node::{NodeState, NodeTable, Rare};
    let file = |ino: u64, unlinked: bool| {
        Node::new(
            ino,
            libc::S_IFREG,
            NodeState {
                parent: None,
                name: std::ffi::OsString::from(format!("f{ino}")).into(),
                layer: 0,
                dirs: Arc::new(Vec::new()),
                generation: 0,
                changed: 0,
                real: (0, ino),
                rare: Rare::new(None, None).unlinked(unlinked),
            },
        )
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = NodeTable::default();
        let fillers: Vec<_> = (100..8292u64)
            .map(|i| {
                t.get_or_insert(i, libc::S_IFREG, (0, i), || file(i, false))
                    .0
            })
            .collect();
        // A deleted file's number (5) given to a new file, which the kernel forgets first.
        let (old, _) = t.get_or_insert(5, libc::S_IFREG, (0, 5), || file(5, true));
        let (new, _) = t.get_or_insert(5, libc::S_IFREG, (0, 6), || file(5, false));
        assert_ne!(old.id, new.id);
        for f in &fillers[..fillers.len() - 2047] {
            t.forget(f.id, 1);
        }
        t.forget(new.id, 1);
        t.forget(old.id, 1); // the table falls below a quarter of its peak here
        tx.send(t.len()).unwrap();
    });
    let left = rx.recv_timeout(Duration::from_secs(30));
    assert_eq!(left, Ok(2047), "forget deadlocked (or lost count)");
}

/// An entry that showed another file's number got a tagged one (`bind`); operations that
/// find the entry by its probed number reach its own node, not the other file's.
#[test]
fn a_tagged_number_still_finds_its_node() {
    let s = Stack::new(1);
    let u = s.union();
    let root = u.root();
    let (a, _, _) = u.create(&root, OsStr::new("a"), RW_FILE, ME).unwrap();
    u.create(&root, OsStr::new("b"), RW_FILE, ME).unwrap();
    let probe_b = || {
        let mut f = u.probe(&root, OsStr::new("b")).unwrap().unwrap();
        f.ino = a.ino; // as a copied-up hard link's lower sibling shows the copy's number
        f
    };
    let (b, _) = u.bind(&root, OsStr::new("b"), probe_b());
    assert!(
        !Arc::ptr_eq(&a, &b) && b.ino != a.ino,
        "b took a's node or number"
    );
    assert!(Arc::ptr_eq(&u.nodes.by_ino(a.ino).unwrap(), &a));
    assert!(Arc::ptr_eq(&u.live_node(&probe_b()).unwrap(), &b));
    assert!(Arc::ptr_eq(
        &u.node_for(&root, OsStr::new("b"), probe_b()),
        &b
    ));
}

#[test]
fn a_tmpfile_node_has_no_name_until_link_gives_it_one() {
    let s = Stack::new(1);
    write(&s.lowers[0].join("d/base"), "base");
    let u = s.union();
    let d = walk(&u, "d").unwrap();
    let (node, st, mut f) = u.tmpfile(&d, 0o640, libc::O_RDWR, ME).unwrap();
    f.write_all(b"unnamed").unwrap();
    assert_eq!(st.st_nlink, 0);
    assert!(node.is_unlinked());
    assert_eq!(names(&u, "d"), ["base"]);
    assert!(
        s.upper.join("d").is_dir(),
        "made in the parent's upper directory"
    );
    u.link(&node, &d, OsStr::new("named")).unwrap();
    assert!(!node.is_unlinked());
    assert_eq!(node.path(), "/d/named");
    assert_eq!(read(&u, "d/named"), "unnamed");
    assert_eq!(
        walk(&u, "d/named").unwrap().id,
        node.id,
        "a lookup finds the same node"
    );
    assert_eq!(fs::read(s.upper.join("d/named")).unwrap(), b"unnamed");
}

#[test]
fn inode_flags_are_read_below_and_set_on_the_upper_copy() {
    const NODUMP: u32 = 0x40; // FS_NODUMP_FL
    let get = libc::FS_IOC_GETFLAGS as u32;
    let set = libc::FS_IOC_SETFLAGS as u32;
    let s = Stack::new(1);
    write(&s.lowers[0].join("d/f"), "data");
    let u = s.union();
    let f = walk(&u, "d/f").unwrap();
    let mut arg = [0u8; 4];
    if u.fileattr(&f, None, get, &mut arg).is_err() {
        eprintln!("skipped: the branches' filesystem has no inode flags");
        return;
    }
    assert!(!s.upper.join("d").exists(), "a read copies nothing up");
    let flags = u32::from_ne_bytes(arg) | NODUMP;
    let mut arg = flags.to_ne_bytes();
    u.fileattr(&f, None, set, &mut arg).unwrap();
    assert_eq!(fs::read_to_string(s.upper.join("d/f")).unwrap(), "data");
    let mut arg = [0u8; 4];
    u.fileattr(&f, None, get, &mut arg).unwrap();
    assert_eq!(u32::from_ne_bytes(arg) & NODUMP, NODUMP);
    let lower = fs::File::open(s.lowers[0].join("d/f")).unwrap();
    let mut lower_flags = [0u8; 4];
    crate::sys::fileattr_ioctl(
        std::os::fd::AsRawFd::as_raw_fd(&lower),
        get,
        &mut lower_flags,
    )
    .unwrap();
    assert_eq!(
        u32::from_ne_bytes(lower_flags) & NODUMP,
        0,
        "the lower is left"
    );
    // Not an inode-flag ioctl (TCGETS), and a size that does not fit the command.
    assert_eq!(
        u.fileattr(&f, None, 0x5401, &mut [0u8; 4])
            .unwrap_err()
            .errno,
        libc::ENOTTY
    );
    assert_eq!(
        u.fileattr(&f, None, get, &mut [0u8; 8]).unwrap_err().errno,
        libc::EINVAL
    );
}

#[test]
fn an_immutable_lower_file_refuses_a_write_and_is_not_copied_up() {
    const IMMUTABLE: u32 = 0x10; // FS_IMMUTABLE_FL
    let s = Stack::new(1);
    write(&s.lowers[0].join("d/f"), "data");
    let lower = s.lowers[0].join("d/f");
    let flags_of = |p: &Path| {
        let f = fs::File::open(p).unwrap();
        crate::sys::inode_flags(std::os::fd::AsRawFd::as_raw_fd(&f))
    };
    let set_flags = |p: &Path, v: u32| {
        let f = fs::File::open(p).unwrap();
        crate::sys::set_inode_flags(std::os::fd::AsRawFd::as_raw_fd(&f), v)
    };
    match flags_of(&lower).and_then(|v| set_flags(&lower, v | IMMUTABLE)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("skipped: cannot make a file immutable here ({e})");
            return;
        }
    }
    // Cleared however the test ends: the stack's directories could not be removed.
    struct Unflag<'a>(&'a Path);
    impl Drop for Unflag<'_> {
        fn drop(&mut self) {
            if let Ok(f) = fs::File::open(self.0) {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
                if let Ok(v) = crate::sys::inode_flags(fd) {
                    let _ = crate::sys::set_inode_flags(fd, v & !IMMUTABLE);
                }
            }
        }
    }
    let _unflag = Unflag(&lower);
    let u = s.union();
    let f = walk(&u, "d/f").unwrap();
    assert!(u.protection(&f).unwrap().immutable);
    assert_eq!(u.open(&f, libc::O_WRONLY).unwrap_err().errno, libc::EPERM);
    let d = walk(&u, "d").unwrap();
    assert_eq!(u.unlink(&d, "f".as_ref()).unwrap_err().errno, libc::EPERM);
    assert!(!s.upper.join("d").exists(), "nothing was copied up");
    // chattr -i through the union: the copy takes the change, and writes go through.
    let mut arg = [0u8; 4];
    u.fileattr(&f, None, libc::FS_IOC_GETFLAGS as u32, &mut arg)
        .unwrap();
    let mut arg = (u32::from_ne_bytes(arg) & !IMMUTABLE).to_ne_bytes();
    u.fileattr(&f, None, libc::FS_IOC_SETFLAGS as u32, &mut arg)
        .unwrap();
    assert!(!u.protection(&f).unwrap().immutable);
    u.open(&f, libc::O_WRONLY).unwrap();
    assert_eq!(
        flags_of(&lower).unwrap() & IMMUTABLE,
        IMMUTABLE,
        "the lower is left"
    );
}

#[test]
fn a_held_truncation_shows_an_empty_file_and_is_made_before_the_next_change() {
    let s = Stack::new(1);
    write(&s.upper.join("f"), "old data");
    write(&s.lowers[0].join("g"), "lower data");
    let u = s.union();
    let f = walk(&u, "f").unwrap();
    let trunc = libc::O_WRONLY | libc::O_TRUNC;
    let (w, _, _) = u.open_killing(&f, trunc, false, true).unwrap();
    // Shown empty; the real file keeps the old data for reads sent before.
    assert_eq!(u.getattr(&f).unwrap().st_size, 0);
    assert_eq!(fs::read_to_string(s.upper.join("f")).unwrap(), "old data");
    assert!(u.read_held(&f, |held| held));
    // Another open's close makes nothing; a write makes it, then writes.
    let (other, _, _) = u.open_killing(&f, libc::O_RDONLY, false, true).unwrap();
    u.truncation_closed(&f, &other).unwrap();
    assert!(u.read_held(&f, |held| held));
    u.truncation_done(&f, || w.write_all_at(b"new", 0))
        .unwrap()
        .unwrap();
    assert!(!u.read_held(&f, |held| held));
    assert_eq!(fs::read_to_string(s.upper.join("f")).unwrap(), "new");
    assert_eq!(u.getattr(&f).unwrap().st_size, 3);

    // A lower file: the copy is empty at once, and a descriptor open on the lower file
    // keeps reading it until the truncation is made, here by the truncating open's close.
    let g = walk(&u, "g").unwrap();
    let (r, layer) = u.open(&g, libc::O_RDONLY).unwrap();
    assert_eq!(layer, 1);
    let (w, _, _) = u.open_killing(&g, trunc, false, true).unwrap();
    assert_eq!(fs::read_to_string(s.upper.join("g")).unwrap(), "");
    assert!(u.follow_copy_up(&g, layer, libc::O_RDONLY).is_none());
    let mut buf = [0u8; 16];
    assert_eq!(
        r.read_at(&mut buf, 0).unwrap(),
        10,
        "the lower file, unchanged"
    );
    u.truncation_closed(&g, &w).unwrap();
    let copy = u.follow_copy_up(&g, layer, libc::O_RDONLY).unwrap();
    assert_eq!(copy.read_at(&mut buf, 0).unwrap(), 0, "now the empty copy");

    // Two truncating opens, one truncation: the second writer's write keeps the first's
    // data past its own, as where each open truncated at once.
    let (a, _, _) = u.open_killing(&f, trunc, false, true).unwrap();
    let (b, _, _) = u.open_killing(&f, trunc, false, true).unwrap();
    u.truncation_done(&f, || a.write_all_at(b"aaaa", 0))
        .unwrap()
        .unwrap();
    u.truncation_done(&f, || b.write_all_at(b"b", 0))
        .unwrap()
        .unwrap();
    u.truncation_closed(&f, &b).unwrap();
    assert_eq!(fs::read_to_string(s.upper.join("f")).unwrap(), "baaa");
    assert_eq!(u.getattr(&f).unwrap().st_size, 4);

    // The unmount makes what is still held, with the mtime shown meanwhile.
    let (_w, _, _) = u.open_killing(&f, trunc, false, true).unwrap();
    assert_eq!(fs::read_to_string(s.upper.join("f")).unwrap(), "baaa");
    let shown = u.getattr(&f).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    u.shutdown();
    let real = fs::metadata(s.upper.join("f")).unwrap();
    assert_eq!(real.len(), 0);
    assert_eq!(
        (real.mtime(), real.mtime_nsec()),
        (shown.st_mtime, shown.st_mtime_nsec)
    );
}

#[test]
fn a_truncation_is_held_a_second_at_most() {
    let s = Stack::new(1);
    write(&s.upper.join("f"), "old data");
    let u = s.union();
    let f = walk(&u, "f").unwrap();
    let opened = std::time::Instant::now();
    let (_w, _, _) = u
        .open_killing(&f, libc::O_WRONLY | libc::O_TRUNC, false, true)
        .unwrap();
    let shown = u.getattr(&f).unwrap();
    assert_eq!(fs::metadata(s.upper.join("f")).unwrap().len(), 8);
    // The open stays open, nothing is written: the upper has it anyway, soon.
    while u.read_held(&f, |held| held) {
        assert!(
            opened.elapsed() < Duration::from_secs(5),
            "still held 5 s after the open"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "held for a while"
    );
    let real = fs::metadata(s.upper.join("f")).unwrap();
    assert_eq!(
        (real.len(), real.mtime(), real.mtime_nsec()),
        (0, shown.st_mtime, shown.st_mtime_nsec)
    );
}

#[test]
fn a_held_truncate_to_zero_is_not_made_by_an_unrelated_close() {
    let s = Stack::new(1);
    write(&s.upper.join("f"), "old data");
    write(&s.lowers[0].join("g"), "lower data");
    let u = s.union();
    let f = walk(&u, "f").unwrap();
    let (st, killed) = u.truncate_holding(&f, false).unwrap();
    assert_eq!((st.st_size, killed), (0, false));
    assert_eq!(fs::read_to_string(s.upper.join("f")).unwrap(), "old data");
    // The truncate's own descriptor is closed: an open that reuses its number is not
    // the truncating one.
    let (r, _, _) = u.open_killing(&f, libc::O_RDONLY, false, true).unwrap();
    u.truncation_closed(&f, &r).unwrap();
    assert!(u.read_held(&f, |held| held));
    assert_eq!(u.getattr(&f).unwrap().st_size, 0);
    u.truncation_done(&f, || ()).unwrap();
    assert_eq!(fs::read_to_string(s.upper.join("f")).unwrap(), "");
    // A lower file is copied up empty.
    let g = walk(&u, "g").unwrap();
    assert_eq!(u.truncate_holding(&g, false).unwrap().0.st_size, 0);
    assert_eq!(fs::read_to_string(s.upper.join("g")).unwrap(), "");
    assert_eq!(
        fs::read_to_string(s.lowers[0].join("g")).unwrap(),
        "lower data"
    );
}

#[test]
fn a_truncation_held_while_another_is_being_made_is_not_skipped() {
    let s = Stack::new(1);
    write(&s.upper.join("f"), "old data");
    let u = Arc::new(s.union());
    let f = walk(&u, "f").unwrap();
    let trunc = libc::O_WRONLY | libc::O_TRUNC;
    let (a, _, _) = u.open_killing(&f, trunc, false, true).unwrap();
    // A's write makes A's truncation and is still under way when B truncates anew.
    let (started, writing) = std::sync::mpsc::channel();
    let t = {
        let (u, f) = (u.clone(), f.clone());
        std::thread::spawn(move || {
            u.truncation_done(&f, || {
                started.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(100));
                a.write_all_at(b"AAAA", 0).unwrap();
            })
            .unwrap();
        })
    };
    writing.recv().unwrap();
    let (b, _, _) = u.open_killing(&f, trunc, false, true).unwrap();
    assert_eq!(u.getattr(&f).unwrap().st_size, 0, "B's truncation shows");
    u.truncation_done(&f, || b.write_all_at(b"BB", 0).unwrap())
        .unwrap();
    t.join().unwrap();
    u.truncation_closed(&f, &b).unwrap();
    assert_eq!(fs::read_to_string(s.upper.join("f")).unwrap(), "BB");
}

#[test]
fn a_held_truncation_outlives_its_node_being_forgotten() {
    let s = Stack::new(1);
    write(&s.upper.join("f"), "old data");
    let u = s.union();
    let f = walk(&u, "f").unwrap();
    u.truncate_holding(&f, false).unwrap();
    // The kernel forgets the inode; the name is looked up again, to a new node.
    u.nodes.forget(f.id, 1000);
    let g = walk(&u, "f").unwrap();
    assert_ne!(f.id, g.id);
    assert_eq!(u.getattr(&g).unwrap().st_size, 0);
    let (w, _) = u.open(&g, libc::O_WRONLY).unwrap();
    u.truncation_done(&g, || w.write_all_at(b"new", 0).unwrap())
        .unwrap();
    u.truncations_done().unwrap();
    assert_eq!(fs::read_to_string(s.upper.join("f")).unwrap(), "new");
}
