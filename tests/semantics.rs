//! The rest of the foundation's promises, each on a real mount: inode numbers across
//! remounts, one copy-up for racing writers, the kernel caches we ask for, `-d`,
//! copy_file_range, and an upper on a read-only filesystem refused.
mod common;
use common::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// With every branch on one filesystem, a file keeps its number across remounts, also
/// once copied up or moved (the number is recorded with the copy, which takes root).
#[test]
fn inode_numbers_survive_remount() {
    let Some(fx) = Fixture::as_root(1, "skipped: the origin record needs root") else {
        return;
    };
    put(&fx.l(0, "f"), "f");
    put(&fx.l(0, "d/inner"), "i");
    put(&fx.l(0, "moved/x"), "x");
    put(&fx.l(0, "meta"), "m");
    put(&fx.l(0, "emptied"), "e");
    let m = fx.mount(&[]);
    let (f, d, inner) = (ino(&fx.m("f")), ino(&fx.m("d")), ino(&fx.m("d/inner")));
    let (moved, meta, emptied) = (
        ino(&fx.m("moved")),
        ino(&fx.m("meta")),
        ino(&fx.m("emptied")),
    );
    let append = |name: &str| {
        OpenOptions::new()
            .append(true)
            .open(fx.m(name))
            .unwrap()
            .write_all(b"+")
            .unwrap()
    };
    append("f");
    fs::write(fx.m("d/new"), "n").unwrap();
    fs::rename(fx.m("moved"), fx.m("here")).unwrap();
    // Metadata-only copies (chmod), then their data: copied, or emptied in place (O_TRUNC).
    set_mode(&fx.m("meta"), 0o600);
    set_mode(&fx.m("emptied"), 0o600);
    let sparse = |name: &str| fs::metadata(fx.u(name)).unwrap().blocks() == 0;
    assert!(sparse("meta") && sparse("emptied"), "metadata-only copies");
    append("meta");
    fs::write(fx.m("emptied"), "new").unwrap();
    let new = ino(&fx.m("d/new"));
    let check = |when: &str| {
        assert_eq!(ino(&fx.m("f")), f, "{when}: copied-up file");
        assert_eq!(ino(&fx.m("d")), d, "{when}: copied-up directory");
        assert_eq!(ino(&fx.m("d/inner")), inner, "{when}: lower file");
        assert_eq!(ino(&fx.m("d/new")), new, "{when}: upper file");
        assert_eq!(ino(&fx.m("here")), moved, "{when}: moved directory");
        assert_eq!(
            ino(&fx.m("meta")),
            meta,
            "{when}: metadata, then data copied"
        );
        assert_eq!(
            ino(&fx.m("emptied")),
            emptied,
            "{when}: metadata, then emptied"
        );
        assert_eq!(
            (read(&fx.m("meta")), read(&fx.m("emptied"))),
            ("m+".into(), "new".into())
        );
    };
    drop(m.check_across_remount(check));
}

/// Writers racing on one lower file copy it up once: every append lands in one upper file.
#[test]
fn racing_writers_copy_up_once() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "log"), "base\n");
    let m = fx.mount(&[]);
    let n = 8;
    let gate = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (gate, path) = (gate.clone(), fx.m("log"));
            std::thread::spawn(move || {
                gate.wait();
                let mut f = OpenOptions::new().append(true).open(path).unwrap();
                f.write_all(format!("writer {i}\n").as_bytes()).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let text = read(&fx.m("log"));
    assert!(text.starts_with("base\n"), "{text:?}");
    for i in 0..n {
        assert!(
            text.contains(&format!("writer {i}\n")),
            "writer {i} lost: {text:?}"
        );
    }
    assert_eq!(text.lines().count(), n + 1, "{text:?}");
    assert_eq!(read(&fx.u("log")), text);
    assert_eq!(
        names(&fx.u(".wh..wh..work")),
        Vec::<String>::new(),
        "no copy left half-built in the work dir"
    );
    drop(m);
}

/// READDIRPLUS hands the kernel every entry's attributes with the listing, so `ls -l` of a
/// directory does not look each name up again.
#[test]
fn listing_with_attributes_needs_no_lookups() {
    let fx = Fixture::new(1);
    for i in 0..40 {
        put(&fx.l(0, &format!("dir/f{i:02}")), "x");
    }
    let m = fx.mount(&["-o", "timeout=30"]);
    let before = fs::read_to_string(&fx.log).unwrap().len();
    for e in fs::read_dir(fx.m("dir")).unwrap() {
        fs::symlink_metadata(e.unwrap().path()).unwrap();
    }
    let log = fs::read_to_string(&fx.log).unwrap();
    let lookups = log[before..]
        .lines()
        .filter(|l| l.contains("LOOKUP name \"f"))
        .count();
    assert!(lookups < 10, "{lookups} lookups for 40 listed files");
    drop(m);
}

/// The kernel keeps a directory's listing between opens (no OPENDIR or READDIR reaches
/// the daemon the second time); a change made by hand in any layer shows once the
/// directory's attributes time out (`-o timeout=`), and one made through the mount at once.
#[test]
fn listings_are_cached_until_a_layer_changes() {
    let fx = Fixture::new(2);
    for i in 0..5 {
        put(&fx.l(1, &format!("dir/f{i}")), "x");
    }
    put(&fx.l(0, "dir/mid"), "x");
    // The lowers change on purpose: the harness must not check them unchanged.
    let timeout = Duration::from_secs(2);
    let args = vec![
        "-o".into(),
        format!("timeout={}", timeout.as_secs()),
        fx.spec(),
        fx.mnt.display().to_string(),
    ];
    let m = fx.mount_args(args, vec![]);
    let requests = |from: usize| {
        let log = fs::read_to_string(&fx.log).unwrap();
        log[from..]
            .lines()
            .filter(|l| l.contains("READDIR") || l.contains("OPENDIR"))
            .count()
    };
    let listed = || {
        let mut v: Vec<String> = fs::read_dir(fx.m("dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(listed(), ["f0", "f1", "f2", "f3", "f4", "mid"]);
    let before = fs::read_to_string(&fx.log).unwrap().len();
    assert_eq!(listed().len(), 6);
    assert_eq!(
        requests(before),
        0,
        "the second listing came from the kernel's cache"
    );

    // By hand, in the bottom layer (the merged directory's own times do not change).
    let edited = Instant::now();
    put(&fx.l(1, "dir/new"), "x");
    fs::remove_file(fx.l(1, "dir/f0")).unwrap();
    let want = ["f1", "f2", "f3", "f4", "mid", "new"];
    assert!(
        eventually(timeout + Duration::from_secs(3), || listed() == want),
        "a change by hand not listed {:?} after it: {:?}",
        edited.elapsed(),
        listed()
    );
    assert!(
        edited.elapsed() < timeout + Duration::from_secs(1),
        "listed only {:?} after the change, timeout {timeout:?}",
        edited.elapsed()
    );
    // Through the mount: the kernel drops its copy itself.
    put(&fx.m("dir/made"), "x");
    assert!(listed().contains(&"made".to_string()));
    fs::remove_file(fx.m("dir/f1")).unwrap();
    assert!(!listed().contains(&"f1".to_string()));
    drop(m);
}

/// A name that does not exist is cached as such (negative entry): asking again within the
/// timeout does not reach the daemon.
#[test]
fn misses_are_cached() {
    let fx = Fixture::new(3);
    let m = fx.mount(&["-o", "negative_timeout=30"]);
    for _ in 0..5 {
        assert!(fs::symlink_metadata(fx.m("nothing-here")).is_err());
    }
    let log = fs::read_to_string(&fx.log).unwrap();
    let lookups = log
        .lines()
        .filter(|l| l.contains("LOOKUP name \"nothing-here\""))
        .count();
    assert_eq!(lookups, 1, "the miss was asked {lookups} times");
    drop(m);
}

/// `-d`: foreground, every operation logged, without RUST_LOG.
#[test]
fn debug_flag_logs_operations() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "f");
    let err = fx.root.join("d.log");
    let mut child = unionmount(["-d".to_string(), fx.spec(), s(&fx.mnt)])
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    wait_mounted(&fx.mnt, true);
    assert_eq!(read(&fx.m("f")), "f");
    assert!(fusermount_u(&fx.mnt));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let log = fs::read_to_string(&err).unwrap();
    assert!(
        log.contains("LOOKUP name \"f\""),
        "no operation logged:\n{log}"
    );
    assert!(log.contains("READ"), "no read logged");
}

/// copy_file_range between files of the mount, one of them in a lower layer.
#[test]
fn copy_file_range_through_the_mount() {
    let fx = Fixture::new(1);
    let data = "0123456789".repeat(10_000);
    put(&fx.l(0, "src"), &data);
    let m = fx.mount(&[]);
    let src = fs::File::open(fx.m("src")).unwrap();
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(fx.m("dst"))
        .unwrap();
    let mut left = data.len();
    while left > 0 {
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                left,
                0,
            )
        };
        assert!(
            n > 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        left -= n as usize;
    }
    drop((src, dst));
    assert_eq!(read(&fx.m("dst")), data);
    assert_eq!(read(&fx.u("dst")), data);
    assert!(
        !lexists(&fx.u("src")),
        "reading the source copies nothing up"
    );
    drop(m);
}

/// An upper on a read-only filesystem is refused up front, and nothing is mounted.
#[test]
fn upper_on_read_only_filesystem_is_refused() {
    let Some(fx) = Fixture::as_root(1, "skipped: making a read-only bind mount needs root") else {
        return;
    };
    let ro = fx.root.join("ro");
    fs::create_dir(&ro).unwrap();
    let ro_s = ro.to_str().unwrap();
    let bind = KernelMount::new(&["--bind", ro_s], &ro);
    assert!(succeeds("mount", ["-o", "remount,bind,ro", ro_s]));
    let out = tool([
        format!("{ro_s}=RW:{}=RO", fx.lowers[0].display()),
        s(&fx.mnt),
    ]);
    drop(bind);
    let stderr = &out.stderr;
    assert!(!out.ok());
    assert!(stderr.contains("read-only"), "{stderr}");
    assert!(stderr.contains(ro_s), "names the branch: {stderr}");
    assert!(mount_fstype(&fx.mnt).is_none());
}

/// A daemon killed outright leaves its mount point dead (ENOTCONN); mounting there again
/// just works, with no manual unmount.
#[test]
fn remount_over_a_dead_daemons_mount_point() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "f");
    let mut child = fx.daemon(&[]);
    fs::write(fx.m("f"), "written").unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        dead_mount_errno(&fx.mnt),
        libc::ENOTCONN,
        "dead mount point"
    );

    // Detaching mode: returns once the new mount is live.
    let st = tool([fx.spec(), s(&fx.mnt)]).status;
    assert!(st.success(), "mount over the dead mount point: {st}");
    assert_eq!(
        read(&fx.m("f")),
        "written",
        "the change made before the kill"
    );
    fs::write(fx.m("g"), "g").unwrap();
    assert!(fusermount_u(&fx.mnt));
    wait_mounted(&fx.mnt, false);
    assert_eq!(read(&fx.u("g")), "g");
}

/// A deep stack times many directories needs more directory fds than a process may hold:
/// past its budget the daemon reopens lower directories by path instead of failing with
/// EMFILE. Here a daemon limited to 256 open files serves 8 layers x 60 directories.
#[test]
fn deep_stacks_stay_within_the_open_file_limit() {
    use std::os::unix::process::CommandExt;
    let fx = Fixture::new(8);
    for (i, l) in fx.lowers.iter().enumerate() {
        for d in 0..60 {
            put(&l.join(format!("d{d}/f{i}")), &format!("{d}/{i}"));
        }
    }
    let mut cmd = unionmount(["-f".to_string(), fx.spec(), s(&fx.mnt)]);
    // SAFETY: setrlimit is async-signal-safe; the child only lowers its own limit.
    unsafe {
        cmd.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = cmd.spawn().unwrap();
    wait_mounted(&fx.mnt, true);
    let mut files = 0;
    for d in 0..60 {
        let names = names(&fx.m(&format!("d{d}")));
        assert_eq!(names.len(), 8, "d{d}: {names:?}");
        for i in 0..8 {
            assert_eq!(read(&fx.m(&format!("d{d}/f{i}"))), format!("{d}/{i}"));
            files += 1;
        }
    }
    assert_eq!(files, 480);
    assert!(fusermount_u(&fx.mnt));
    assert!(child.wait().unwrap().success());
}
