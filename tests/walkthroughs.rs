//! The two walkthroughs from the seeds, replayed against a real mount.
mod common;
use common::*;
use std::fs::{self, OpenOptions};
use std::io::Write;

/// unionfs-fuse demo, "Method 1": base layer + writable upper, create, override, remount.
#[test]
fn unionfs_fuse_demo() {
    let fx = Fixture::new(1);
    let base = &fx.lowers[0];
    // 3. Create base files (read-only layer)
    put(&base.join("1"), "I am base file 1\n");
    put(&base.join("app/hello.txt"), "hello from base\n");

    // 4. Mount
    let m = fx.mount(&[]);

    // 5. Test behaviour
    assert_eq!(names(base), strs(&["1", "app"]));
    assert_eq!(names(&fx.mnt), strs(&["1", "app"]));

    // echo "new file" | tee merged/d
    fs::write(fx.m("d"), "new file\n").unwrap();
    assert_eq!(names(base), strs(&["1", "app"]), "base unchanged");
    assert_eq!(
        upper_names(&fx.upper),
        strs(&["d"]),
        "new file exists in upper"
    );
    assert_eq!(names(&fx.mnt), strs(&["1", "app", "d"]), "merged sees both");
    assert_eq!(read(&fx.u("d")), "new file\n");

    // 6. Override existing file: echo "OVERRIDDEN" | tee merged/1
    fs::write(fx.m("1"), "OVERRIDDEN\n").unwrap();
    assert_eq!(read(&base.join("1")), "I am base file 1\n");
    assert_eq!(read(&fx.u("1")), "OVERRIDDEN\n");
    assert_eq!(read(&fx.m("1")), "OVERRIDDEN\n");

    // Reading a lower file does not copy it up.
    assert_eq!(read(&fx.m("app/hello.txt")), "hello from base\n");
    assert!(
        !lexists(&fx.u("app")),
        "reading app/hello.txt must not copy up app/"
    );
    assert_eq!(upper_names(&fx.upper), strs(&["1", "d"]));

    // 7. Unmount
    m.unmount();
    assert!(
        names(&fx.mnt).is_empty(),
        "mount point is empty after unmount"
    );
    assert_eq!(
        names(&fx.upper),
        strs(&["1", "d"]),
        "upper after clean unmount (no work dir left)"
    );
    assert_eq!(read(&fx.u("1")), "OVERRIDDEN\n");
    assert_eq!(read(&base.join("1")), "I am base file 1\n");

    // Remount: the union is the same.
    let m = fx.mount(&[]);
    assert_eq!(names(&fx.mnt), strs(&["1", "app", "d"]));
    assert_eq!(read(&fx.m("1")), "OVERRIDDEN\n");
    assert_eq!(read(&fx.m("d")), "new file\n");
    assert_eq!(read(&fx.m("app/hello.txt")), "hello from base\n");
    assert_eq!(names(base), strs(&["1", "app"]));
    drop(m);
}

/// Docker lab 5.5: appending to an image file copies the whole file up first.
#[test]
fn docker_lab_copy_on_write_append() {
    // lower1 = alpine + `RUN echo layer1 > /msg.txt`, lower0 = `COPY hello.txt /opt/hello.txt`
    let fx = Fixture::new(2);
    put(&fx.l(1, "msg.txt"), "layer1\n");
    put(&fx.l(0, "opt/hello.txt"), "hello layers\n");
    let m = fx.mount(&[]);

    assert_eq!(read(&fx.m("msg.txt")), "layer1\n");
    let mut f = OpenOptions::new()
        .append(true)
        .open(fx.m("msg.txt"))
        .unwrap();
    f.write_all(b"runtime-change\n").unwrap();
    drop(f);
    assert_eq!(read(&fx.m("msg.txt")), "layer1\nruntime-change\n");
    // `docker diff`: C /msg.txt — the CoW copy in the upper holds the full content.
    assert_eq!(read(&fx.u("msg.txt")), "layer1\nruntime-change\n");
    assert_eq!(read(&fx.l(1, "msg.txt")), "layer1\n");
    assert_eq!(upper_names(&fx.upper), strs(&["msg.txt"]));
    assert_eq!(names(&fx.mnt), strs(&["msg.txt", "opt"]));

    let m = m.remount();
    assert_eq!(read(&fx.m("msg.txt")), "layer1\nruntime-change\n");
    assert_eq!(read(&fx.m("opt/hello.txt")), "hello layers\n");
    drop(m);
}

/// Docker lab 5.6: `rm -f /opt/hello.txt` leaves `opt/.wh.hello.txt` in the upper.
#[test]
fn docker_lab_whiteout() {
    let fx = Fixture::new(2);
    put(&fx.l(1, "msg.txt"), "layer1\n");
    put(&fx.l(0, "opt/hello.txt"), "hello layers\n");
    let m = fx.mount(&[]);

    fs::remove_file(fx.m("opt/hello.txt")).unwrap();
    assert_gone(&fx.m("opt/hello.txt"));
    assert!(names(&fx.m("opt")).is_empty());
    assert_errno(
        fs::File::open(fx.m("opt/hello.txt")),
        libc::ENOENT,
        "open deleted file",
    );
    // `ls -a upperdir/opt` shows exactly the whiteout.
    assert_eq!(names(&fx.u("opt")), strs(&[".wh.hello.txt"]));
    assert_regular_file(&fx.u("opt/.wh.hello.txt"));
    assert_eq!(
        read(&fx.l(0, "opt/hello.txt")),
        "hello layers\n",
        "image layer keeps the file"
    );

    let m = m.remount();
    assert_gone(&fx.m("opt/hello.txt"));
    assert!(names(&fx.m("opt")).is_empty());
    assert_eq!(names(&fx.mnt), strs(&["msg.txt", "opt"]));
    drop(m);
}

/// Opaque directories: a lower dir removed with rm -rf and re-created hides the old content.
#[test]
fn docker_lab_opaque_dir() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "etc/conf/a.conf"), "a\n");
    put(&fx.l(0, "etc/conf/sub/b.conf"), "b\n");
    put(&fx.l(0, "etc/other"), "o\n");
    let m = fx.mount(&[]);

    fs::remove_dir_all(fx.m("etc/conf")).unwrap();
    assert_gone(&fx.m("etc/conf"));
    assert_regular_file(&fx.u("etc/.wh.conf"));

    fs::create_dir(fx.m("etc/conf")).unwrap();
    fs::write(fx.m("etc/conf/new.conf"), "new\n").unwrap();

    let check = |when: &str| {
        assert_eq!(
            names(&fx.m("etc/conf")),
            strs(&["new.conf"]),
            "{when}: ls shows only new content"
        );
        assert_errno(
            fs::File::open(fx.m("etc/conf/a.conf")),
            libc::ENOENT,
            "open old a.conf by name",
        );
        assert_errno(
            fs::metadata(fx.m("etc/conf/sub")),
            libc::ENOENT,
            "stat old sub/ by name",
        );
        assert_errno(
            fs::File::open(fx.m("etc/conf/sub/b.conf")),
            libc::ENOENT,
            "open old sub/b.conf",
        );
        assert_eq!(read(&fx.m("etc/conf/new.conf")), "new\n");
        assert_eq!(names(&fx.m("etc")), strs(&["conf", "other"]), "{when}");
        // On disk: an opaque directory, and no whiteout for the re-created name.
        let opq = fx.u(&format!("etc/conf/{OPQ}"));
        assert_regular_file(&opq);
        assert_eq!(
            fs::metadata(&opq).unwrap().len(),
            0,
            "opaque marker is empty"
        );
        assert!(
            !lexists(&fx.u("etc/.wh.conf")),
            "{when}: whiteout removed when the name is re-created"
        );
        assert_eq!(upper_names(&fx.u("etc/conf")), strs(&[OPQ, "new.conf"]));
    };
    drop(m.check_across_remount(check));
}

/// "Docker commit": the first container's upper becomes a read-only layer of a second mount.
#[test]
fn docker_lab_layer_stacking() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "1"), "base file\n");
    put(&fx.l(0, "gone"), "to be deleted\n");
    put(&fx.l(0, "dir/old"), "old\n");

    // Container 1.
    let m = fx.mount(&[]);
    fs::write(fx.m("d"), "new file\n").unwrap();
    fs::write(fx.m("1"), "changed\n").unwrap();
    fs::remove_file(fx.m("gone")).unwrap();
    fs::remove_dir_all(fx.m("dir")).unwrap();
    fs::create_dir(fx.m("dir")).unwrap();
    fs::write(fx.m("dir/new"), "new\n").unwrap();
    assert_eq!(read(&fx.l(0, "1")), "base file\n");
    assert_eq!(read(&fx.u("1")), "changed\n");
    m.unmount();

    // Container 2: lowerdir=layer1(=upper of container 1):lower, fresh upper2/work2 (overlay style).
    let layer1 = fx.upper.clone();
    let upper2 = fx.root.join("upper2");
    let work2 = fx.root.join("work2");
    fs::create_dir(&upper2).unwrap();
    fs::create_dir(&work2).unwrap();
    let opts = overlay_opts(&[&layer1, &fx.lowers[0]], &upper2, &work2);
    let args = vec!["-o".to_string(), opts, fx.mnt.display().to_string()];
    let m = fx.mount_args(args.clone(), vec![layer1.clone(), fx.lowers[0].clone()]);

    let check_stack = |when: &str| {
        assert_eq!(
            names(&fx.mnt),
            strs(&["1", "d", "dir"]),
            "{when}: gone/ hidden by layer1's whiteout"
        );
        assert_eq!(read(&fx.m("1")), "changed\n");
        assert_eq!(read(&fx.m("d")), "new file\n");
        assert_eq!(
            names(&fx.m("dir")),
            strs(&["new"]),
            "{when}: layer1's opaque dir hides lower dir/old"
        );
        assert_errno(
            fs::File::open(fx.m("dir/old")),
            libc::ENOENT,
            "open dir/old",
        );
        assert_gone(&fx.m("gone"));
    };
    check_stack("stacked");

    // Writes go to upper2 only.
    fs::write(fx.m("1"), "v3\n").unwrap();
    fs::remove_file(fx.m("d")).unwrap();
    fs::write(fx.m("e"), "e\n").unwrap();
    assert_eq!(read(&fx.m("1")), "v3\n");
    assert_eq!(read(&upper2.join("1")), "v3\n");
    assert_eq!(read(&layer1.join("1")), "changed\n");
    assert_regular_file(&upper2.join(".wh.d"));
    assert!(lexists(&layer1.join("d")), "layer1 keeps d");
    assert_eq!(upper_names(&upper2), strs(&[".wh.d", "1", "e"]));
    assert_eq!(names(&fx.mnt), strs(&["1", "dir", "e"]));
    m.unmount();

    let m = fx.mount_args(args, vec![layer1.clone(), fx.lowers[0].clone()]);
    assert_eq!(names(&fx.mnt), strs(&["1", "dir", "e"]));
    assert_eq!(read(&fx.m("1")), "v3\n");
    assert_eq!(names(&fx.m("dir")), strs(&["new"]));
    drop(m);
}
