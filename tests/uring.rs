//! FUSE over io_uring: the transport settled at INIT (`unionmount layers` names it), the
//! `uring=0` opt-out, and a mount served through the ring under concurrent use. Whether the
//! kernel offers the ring is the machine's (Linux 6.14+ with the fuse module's
//! `enable_uring=Y`): each test reads that and expects accordingly, so the suite passes
//! either way and exercises the ring where it exists.
mod common;
use common::*;
use std::fs;
use std::thread;

fn kernel_offers_uring() -> bool {
    fs::read_to_string("/sys/module/fuse/parameters/enable_uring").is_ok_and(|s| s.trim() == "Y")
}

fn kernel_line(fx: &Fixture) -> String {
    let out = tool_ok(["layers", &s(&fx.mnt)]);
    out.lines()
        .find(|l| l.starts_with("kernel:"))
        .unwrap_or_else(|| panic!("no kernel line:\n{out}"))
        .to_string()
}

#[test]
fn layers_names_the_transport_and_uring_0_turns_it_off() {
    let fx = Fixture::new(1);
    put(&fx.l(0, "f"), "f");
    {
        let _m = fx.mount(&[]);
        let line = kernel_line(&fx);
        if kernel_offers_uring() {
            assert!(line.contains("transport io_uring ("), "{line}");
        } else {
            assert!(
                line.contains("transport /dev/fuse (io_uring not offered"),
                "{line}"
            );
        }
        assert_eq!(read(&fx.m("f")), "f");
    }
    let _m = fx.mount(&["-o", "uring=0"]);
    let line = kernel_line(&fx);
    assert!(
        line.contains("transport /dev/fuse (io_uring turned off)"),
        "{line}"
    );
    assert_eq!(read(&fx.m("f")), "f");
}

/// Threads creating, writing, listing, reading and removing at once, with replies of every
/// size (big directory listings, xattr values, symlink targets): what each sees and what
/// lands in the upper is what /dev/fuse gives.
#[test]
fn concurrent_work_through_the_ring() {
    let fx = Fixture::new(1);
    for i in 0..300 {
        put(&fx.l(0, &format!("big/{i:04}-{}", "n".repeat(100))), "x");
    }
    let _m = fx.mount(&["-o", "timeout=0,negative_timeout=0"]);
    let workers: Vec<_> = (0..6)
        .map(|t| {
            let mnt = fx.mnt.clone();
            thread::spawn(move || {
                let dir = mnt.join(format!("t{t}"));
                fs::create_dir(&dir).unwrap();
                for i in 0..150 {
                    let f = dir.join(format!("f{i}"));
                    let body = format!("{t}:{i}:").repeat(i + 1);
                    fs::write(&f, &body).unwrap();
                    assert_eq!(fs::read_to_string(&f).unwrap(), body);
                    let value = vec![b'v'; 10 * i + 1];
                    xattr::set(&f, "user.k", &value).unwrap();
                    assert_eq!(xattr::get(&f, "user.k").unwrap(), Some(value));
                    let target = "t".repeat(200 + i);
                    std::os::unix::fs::symlink(&target, dir.join(format!("l{i}"))).unwrap();
                    assert_eq!(
                        fs::read_link(dir.join(format!("l{i}"))).unwrap(),
                        std::path::PathBuf::from(&target)
                    );
                    if i % 3 == 0 {
                        fs::remove_file(&f).unwrap();
                    }
                    if i % 25 == 0 {
                        assert_eq!(fs::read_dir(mnt.join("big")).unwrap().count(), 300);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    for t in 0..6 {
        let names = upper_names(&fx.u(&format!("t{t}")));
        assert_eq!(names.len(), 100 + 150, "t{t}: {names:?}");
        for i in (0..150).filter(|i| i % 3 != 0) {
            let body = format!("{t}:{i}:").repeat(i + 1);
            assert_eq!(read(&fx.u(&format!("t{t}/f{i}"))), body);
        }
    }
}
