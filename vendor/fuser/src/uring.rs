//! FUSE over io_uring (Linux 6.14+, `/sys/module/fuse/parameters/enable_uring`).
//!
//! The kernel side is fs/fuse/dev_uring.c. After INIT the daemon registers ring entries
//! for every possible CPU (`qid` 0..`num_possible_cpus`), each an SQE128
//! `IORING_OP_URING_CMD` on the /dev/fuse fd with `FUSE_IO_URING_CMD_REGISTER` and two
//! buffers: a `fuse_uring_req_header` and a payload buffer. The kernel switches to the ring
//! once every queue has an entry; a request made on CPU n then completes a command of
//! queue n: `in_out` holds the `fuse_in_header`, `op_in` the first argument, the payload
//! buffer the rest (`payload_sz` bytes). The reply goes the same way (`fuse_out_header` in
//! `in_out`, the body in the payload) with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also
//! re-arms the entry: one `io_uring_enter` per request, where /dev/fuse takes a read and a
//! write. FORGET and INTERRUPT still come through /dev/fuse, and notifications still go there.
//!
//! Here: each worker thread owns one ring with [`DEPTH`] entries of one queue (not pinned to
//! its CPU; see `worker`). A request is copied out of its entry into the linear layout
//! /dev/fuse gives (so fuser's parser and dispatch serve both), and its reply is written
//! into the entry, from whichever thread replies. Setup happens in two steps around the INIT
//! reply (rings and buffers before, so a failure leaves the flag out of the reply;
//! registration after, since the kernel needs INIT done), and any failure leaves /dev/fuse
//! serving.
//!
//! Costs against /dev/fuse: the request is copied once more (out of the entry, so a reply
//! may be written into it while the request is still borrowed) and so is a reply body (into
//! the entry); it shows only for data through the daemon (no passthrough: a sequential read
//! measured ~15% slower). When the daemon dies, the kernel drops its rings, and so the
//! connection, some milliseconds after the exit (io_uring's own teardown): a request made
//! in between fails with ECONNABORTED or ECANCELED, not ENOTCONN.

use std::io;
use std::io::IoSlice;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::thread::JoinHandle;

use log::debug;
use log::warn;
use parking_lot::Mutex;

use crate::Filesystem;
use crate::ReplyEmpty;
use crate::dev_fuse::DevFuse;
use crate::ll;
use crate::ll::fuse_abi as abi;
use crate::passthrough::BackingId;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

/// Ring entries per worker thread. One: a request that blocks in the filesystem (an fsync,
/// a copy-up) then holds up only its own thread, the other threads of its queue go on.
pub(crate) const DEPTH: usize = 1;

// ---- the kernel's interface: include/uapi/linux/fuse.h --------------------------------------

const FUSE_URING_IN_OUT_HEADER_SZ: usize = 128;
const FUSE_URING_OP_IN_OUT_SZ: usize = 128;
/// The kernel's floor for the payload buffer (`FUSE_MIN_READ_BUFFER`).
const FUSE_MIN_READ_BUFFER: usize = 8192;
const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// `struct fuse_uring_ent_in_out`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct EntInOut {
    flags: u64,
    /// The request's unique id, to be echoed in the commit.
    commit_id: u64,
    /// Bytes used in the payload buffer, in either direction.
    payload_sz: u32,
    padding: u32,
    reserved: u64,
}

/// `struct fuse_uring_req_header`: `iov[0]` of a REGISTER.
#[repr(C)]
struct ReqHeader {
    /// `fuse_in_header` on fetch, `fuse_out_header` on commit.
    in_out: [u8; FUSE_URING_IN_OUT_HEADER_SZ],
    /// The first argument of the request (its fixed per-opcode struct).
    op_in: [u8; FUSE_URING_OP_IN_OUT_SZ],
    ring_ent_in_out: EntInOut,
}

/// `struct fuse_uring_cmd_req`, in the command area of the SQE.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct CmdReq {
    flags: u64,
    commit_id: u64,
    qid: u16,
    padding: [u8; 6],
}

// ---- io_uring: include/uapi/linux/io_uring.h -------------------------------------------------

const IORING_OP_URING_CMD: u8 = 46;
const IORING_SETUP_SQE128: u32 = 1 << 10;
const IORING_FEAT_SINGLE_MMAP: u32 = 1 << 0;
const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
const IORING_OFF_SQ_RING: i64 = 0;
const IORING_OFF_CQ_RING: i64 = 0x800_0000;
const IORING_OFF_SQES: i64 = 0x1000_0000;

#[repr(C)]
#[derive(Debug, Default)]
struct SqringOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct CqringOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqringOffsets,
    cq_off: CqringOffsets,
}

/// A 128-byte SQE (`IORING_SETUP_SQE128`) as a URING_CMD uses it.
#[repr(C)]
#[derive(Clone, Copy)]
struct Sqe128 {
    opcode: u8,
    flags: u8,
    ioprio: u16,
    fd: i32,
    cmd_op: u32,
    pad1: u32,
    addr: u64,
    len: u32,
    op_flags: u32,
    user_data: u64,
    buf_index: u16,
    personality: u16,
    file_index: u32,
    /// 80 bytes of command data: a `CmdReq`, then zeros.
    cmd: [u64; 10],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Cqe {
    user_data: u64,
    res: i32,
    flags: u32,
}

impl Sqe128 {
    fn fuse_cmd(fd: RawFd, cmd_op: u32, entry: usize, req: CmdReq) -> Self {
        let mut cmd = [0u64; 10];
        cmd[0] = req.flags;
        cmd[1] = req.commit_id;
        cmd[2] = u64::from(req.qid); // little-endian: qid in the low bytes, padding zero
        if cfg!(target_endian = "big") {
            cmd[2] = u64::from(req.qid) << 48;
        }
        Sqe128 {
            opcode: IORING_OP_URING_CMD,
            flags: 0,
            ioprio: 0,
            fd,
            cmd_op,
            pad1: 0,
            addr: 0,
            len: 0,
            op_flags: 0,
            user_data: entry as u64,
            buf_index: 0,
            personality: 0,
            file_index: 0,
            cmd,
        }
    }
}

/// An mmap'd region, unmapped on drop.
struct Map {
    ptr: *mut u8,
    len: usize,
}

impl Map {
    fn ring(fd: RawFd, len: usize, offset: i64) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of the ring fd; the kernel checks offset and length.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Map {
            ptr: ptr.cast(),
            len,
        })
    }

    fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Map {
            ptr: ptr.cast(),
            len,
        })
    }

    /// A pointer `off` bytes in, checked against the mapping's length.
    fn at<T>(&self, off: usize) -> *mut T {
        assert!(off + size_of::<T>() <= self.len);
        // SAFETY: in bounds, checked above.
        unsafe { self.ptr.add(off).cast() }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; no reference outlives the Map.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One io_uring: its fd and its mapped submission and completion rings.
struct Ring {
    sq_head: *const AtomicU32,
    sq_tail: *const AtomicU32,
    sq_mask: u32,
    sq_entries: u32,
    sqes: *mut Sqe128,
    cq_head: *const AtomicU32,
    cq_tail: *const AtomicU32,
    cq_mask: u32,
    cqes: *const Cqe,
    _maps: Vec<Map>,
    fd: OwnedFd,
}

// SAFETY: the raw pointers point into mappings the Ring owns; the submission side is used
// under `Queue::sq`, the completion side by the owning worker thread only.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    fn new(entries: u32) -> io::Result<Self> {
        let mut p = Params {
            flags: IORING_SETUP_SQE128,
            ..Params::default()
        };
        // SAFETY: io_uring_setup reads and fills the params struct we own.
        let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, entries, &mut p as *mut Params) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let raw = fd.as_raw_fd();
        let sq_len = p.sq_off.array as usize + p.sq_entries as usize * size_of::<u32>();
        let cq_len = p.cq_off.cqes as usize + p.cq_entries as usize * size_of::<Cqe>();
        let mut maps = Vec::new();
        let (sq, cq) = if p.features & IORING_FEAT_SINGLE_MMAP != 0 {
            maps.push(Map::ring(raw, sq_len.max(cq_len), IORING_OFF_SQ_RING)?);
            (0, 0)
        } else {
            maps.push(Map::ring(raw, sq_len, IORING_OFF_SQ_RING)?);
            maps.push(Map::ring(raw, cq_len, IORING_OFF_CQ_RING)?);
            (0, 1)
        };
        let sqes = Map::ring(
            raw,
            p.sq_entries as usize * size_of::<Sqe128>(),
            IORING_OFF_SQES,
        )?;
        let (sqm, cqm) = (&maps[sq], &maps[cq]);
        let array: *mut u32 = sqm.at(p.sq_off.array as usize);
        for i in 0..p.sq_entries {
            // SAFETY: `array` has sq_entries slots (sq_len above); identity slot -> SQE map.
            unsafe { array.add(i as usize).write(i) };
        }
        let ring = Ring {
            sq_head: sqm.at(p.sq_off.head as usize),
            sq_tail: sqm.at(p.sq_off.tail as usize),
            // SAFETY: ring_mask is a u32 the kernel wrote at setup and never changes.
            sq_mask: unsafe { *sqm.at::<u32>(p.sq_off.ring_mask as usize) },
            sq_entries: p.sq_entries,
            sqes: sqes.at(0),
            cq_head: cqm.at(p.cq_off.head as usize),
            cq_tail: cqm.at(p.cq_off.tail as usize),
            // SAFETY: as for sq_mask.
            cq_mask: unsafe { *cqm.at::<u32>(p.cq_off.ring_mask as usize) },
            cqes: cqm.at(p.cq_off.cqes as usize),
            _maps: {
                maps.push(sqes);
                maps
            },
            fd,
        };
        Ok(ring)
    }

    /// Queue an SQE. The caller serialises submissions (`Queue::sq`).
    fn push(&self, sqe: &Sqe128) -> io::Result<()> {
        // SAFETY: head/tail are the ring's atomics; only we write the tail.
        let (head, tail) = unsafe {
            (
                (*self.sq_head).load(Ordering::Acquire),
                (*self.sq_tail).load(Ordering::Relaxed),
            )
        };
        if tail.wrapping_sub(head) >= self.sq_entries {
            return Err(io::Error::other("io_uring submission queue full"));
        }
        // SAFETY: the slot at tail & mask is ours until the tail is published below.
        unsafe {
            self.sqes.add((tail & self.sq_mask) as usize).write(*sqe);
            (*self.sq_tail).store(tail.wrapping_add(1), Ordering::Release);
        }
        Ok(())
    }

    /// SQEs queued and not yet consumed by the kernel. io_uring_enter must be given no more
    /// than that: when it submits fewer than asked, it returns without waiting.
    fn pending(&self) -> u32 {
        // SAFETY: the ring's atomics, read only.
        unsafe {
            (*self.sq_tail)
                .load(Ordering::Acquire)
                .wrapping_sub((*self.sq_head).load(Ordering::Acquire))
        }
    }

    /// io_uring_enter: submit what is queued and wait for `min_complete` completions.
    fn enter(&self, to_submit: u32, min_complete: u32) -> io::Result<()> {
        let flags = if min_complete > 0 {
            IORING_ENTER_GETEVENTS
        } else {
            0
        };
        loop {
            // SAFETY: plain syscall on our ring fd, no argument pointer.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_uring_enter,
                    self.fd.as_raw_fd(),
                    to_submit,
                    min_complete,
                    flags,
                    ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    /// The oldest completion, consumed. Owner thread only.
    fn pop(&self) -> Option<Cqe> {
        // SAFETY: head is ours to advance, tail the kernel's; entries below tail are written.
        unsafe {
            let head = (*self.cq_head).load(Ordering::Relaxed);
            if head == (*self.cq_tail).load(Ordering::Acquire) {
                return None;
            }
            let cqe = self.cqes.add((head & self.cq_mask) as usize).read();
            (*self.cq_head).store(head.wrapping_add(1), Ordering::Release);
            Some(cqe)
        }
    }

    /// The completions not yet consumed, left in place. Owner thread only.
    fn peek_all(&self) -> Vec<Cqe> {
        // SAFETY: as in pop, without moving the head.
        unsafe {
            let head = (*self.cq_head).load(Ordering::Relaxed);
            let tail = (*self.cq_tail).load(Ordering::Acquire);
            (head..tail)
                .map(|i| self.cqes.add((i & self.cq_mask) as usize).read())
                .collect()
        }
    }
}

/// Where the header sits in an entry's buffer, and where the payload starts.
const PAYLOAD_OFFSET: usize = 4096;

/// A ring entry: one mapping holding the header (at 0) and the payload buffer.
struct Entry {
    buf: Map,
    iov: Box<[libc::iovec; 2]>,
    /// The request now in this entry, for its commit.
    commit_id: AtomicU64,
    /// The last command sent, to resend it on EAGAIN/EINTR.
    last_cmd: AtomicU32,
}

// SAFETY: the mapping is owned by the entry; who may touch it when is the protocol's
// (the kernel until a completion, the request's replier until the commit).
unsafe impl Send for Entry {}
// SAFETY: as above.
unsafe impl Sync for Entry {}

impl Entry {
    fn new(payload: usize) -> io::Result<Self> {
        let buf = Map::anonymous(PAYLOAD_OFFSET + payload)?;
        let iov = Box::new([
            libc::iovec {
                iov_base: buf.ptr.cast(),
                iov_len: size_of::<ReqHeader>(),
            },
            libc::iovec {
                iov_base: buf.at::<u8>(PAYLOAD_OFFSET).cast(),
                iov_len: payload,
            },
        ]);
        Ok(Entry {
            buf,
            iov,
            commit_id: AtomicU64::new(0),
            last_cmd: AtomicU32::new(FUSE_IO_URING_CMD_REGISTER),
        })
    }

    fn header(&self) -> *mut ReqHeader {
        self.buf.at(0)
    }

    fn payload(&self) -> *mut u8 {
        self.buf.at(PAYLOAD_OFFSET)
    }
}

/// One worker's ring and its entries, all of one kernel queue.
pub(crate) struct Queue {
    ring: Ring,
    /// Serialises the submission side; true while the owner dispatches (it submits then).
    sq: Mutex<bool>,
    entries: Vec<Entry>,
    payload: usize,
    qid: u16,
    dev: Arc<DevFuse>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uring::Queue(qid {})", self.qid)
    }
}

/// The payload buffer the kernel requires: `max(FUSE_MIN_READ_BUFFER, max_write,
/// max_pages * PAGE_SIZE)` (fuse_uring_create).
pub(crate) fn payload_size(max_write: u32, max_pages: u16) -> usize {
    let page = page_size::get();
    FUSE_MIN_READ_BUFFER
        .max(max_write as usize)
        .max(usize::from(max_pages) * page)
}

impl Queue {
    fn new(qid: u16, payload: usize, dev: Arc<DevFuse>) -> io::Result<Self> {
        let ring = Ring::new(DEPTH as u32)?;
        let entries = (0..DEPTH)
            .map(|_| Entry::new(payload))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Queue {
            ring,
            sq: Mutex::new(false),
            entries,
            payload,
            qid,
            dev,
        })
    }

    fn sqe(&self, cmd_op: u32, e: usize) -> Sqe128 {
        let ent = &self.entries[e];
        let mut sqe = Sqe128::fuse_cmd(
            self.dev.as_raw_fd(),
            cmd_op,
            e,
            CmdReq {
                qid: self.qid,
                commit_id: if cmd_op == FUSE_IO_URING_CMD_REGISTER {
                    0
                } else {
                    ent.commit_id.load(Ordering::Relaxed)
                },
                ..CmdReq::default()
            },
        );
        if cmd_op == FUSE_IO_URING_CMD_REGISTER {
            sqe.addr = ent.iov.as_ptr() as u64;
            sqe.len = 2;
        }
        ent.last_cmd.store(cmd_op, Ordering::Relaxed);
        sqe
    }

    /// Register every entry; an error the kernel answers at once (it keeps good ones
    /// without a completion) fails the queue.
    fn register(&self) -> io::Result<()> {
        {
            let _sq = self.sq.lock();
            for e in 0..self.entries.len() {
                self.ring.push(&self.sqe(FUSE_IO_URING_CMD_REGISTER, e))?;
            }
        }
        self.ring.enter(self.entries.len() as u32, 0)?;
        match self.ring.peek_all().iter().find(|c| c.res < 0) {
            Some(c) => Err(io::Error::from_raw_os_error(-c.res)),
            None => Ok(()),
        }
    }

    /// Queue a command for entry `e`: the owner submits it with its next wait while it
    /// dispatches, any other thread (a reply sent from elsewhere) right away.
    fn submit(&self, cmd_op: u32, e: usize) -> io::Result<()> {
        let now = {
            let dispatching = self.sq.lock();
            self.ring.push(&self.sqe(cmd_op, e))?;
            !*dispatching
        };
        if now {
            self.ring.enter(1, 0)?;
        }
        Ok(())
    }

    /// Copy the request in entry `e` into `buf` as /dev/fuse would deliver it:
    /// `fuse_in_header`, the first argument, the rest. Returns its length.
    fn request(&self, e: usize, buf: &mut [u8]) -> Option<usize> {
        let ent = &self.entries[e];
        let hdr = ent.header();
        // SAFETY: the kernel wrote the header before completing the command; until we
        // commit, the entry is ours and nobody else touches it.
        let (inh, io) = unsafe {
            (
                ptr::read_unaligned((*hdr).in_out.as_ptr().cast::<abi::fuse_in_header>()),
                ptr::read(ptr::addr_of!((*hdr).ring_ent_in_out)),
            )
        };
        ent.commit_id.store(io.commit_id, Ordering::Relaxed);
        const IN: usize = size_of::<abi::fuse_in_header>();
        let total = inh.len as usize;
        let payload = io.payload_sz as usize;
        let op_len = total.checked_sub(IN + payload)?;
        if op_len > FUSE_URING_OP_IN_OUT_SZ || payload > self.payload || total > buf.len() {
            return None;
        }
        // SAFETY: sizes checked above against both sides.
        unsafe {
            ptr::copy_nonoverlapping((*hdr).in_out.as_ptr(), buf.as_mut_ptr(), IN);
            ptr::copy_nonoverlapping((*hdr).op_in.as_ptr(), buf.as_mut_ptr().add(IN), op_len);
            ptr::copy_nonoverlapping(ent.payload(), buf.as_mut_ptr().add(IN + op_len), payload);
        }
        Some(total)
    }

    /// Write a reply (a `fuse_out_header`, then the body) into entry `e` and commit it.
    fn reply(&self, e: usize, iov: &[IoSlice<'_>]) -> io::Result<()> {
        const OUT: usize = size_of::<abi::fuse_out_header>();
        let ent = &self.entries[e];
        let hdr = ent.header();
        let total: usize = iov.iter().map(|s| s.len()).sum();
        if total < OUT || total - OUT > self.payload {
            return Err(io::Error::other(format!(
                "reply of {total} bytes does not fit the ring entry"
            )));
        }
        let mut at = 0;
        for s in iov {
            let mut s: &[u8] = s;
            // SAFETY (both copies): the entry is ours until the commit below; the header
            // part ends at OUT <= 128 bytes, the payload part at total - OUT <= self.payload.
            if at < OUT {
                let n = (OUT - at).min(s.len());
                unsafe {
                    ptr::copy_nonoverlapping(s.as_ptr(), (*hdr).in_out.as_mut_ptr().add(at), n)
                };
                at += n;
                s = &s[n..];
            }
            if !s.is_empty() {
                unsafe {
                    ptr::copy_nonoverlapping(s.as_ptr(), ent.payload().add(at - OUT), s.len())
                };
                at += s.len();
            }
        }
        // SAFETY: as above.
        unsafe {
            (*hdr).ring_ent_in_out.payload_sz = (total - OUT) as u32;
        }
        self.submit(FUSE_IO_URING_CMD_COMMIT_AND_FETCH, e)
    }

    /// Serve requests until the kernel ends the queue (unmount, abort).
    fn serve<FS: Filesystem>(self: &Arc<Self>, se: &SessionEventLoop<FS>) -> io::Result<()> {
        let mut words = vec![0u64; (PAYLOAD_OFFSET + self.payload).div_ceil(8)];
        // SAFETY: reinterpreting u64s as bytes; u8 has no alignment or validity demands.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8)
        };
        let mut live = self.entries.len();
        loop {
            // Submit the commits queued while dispatching, and wait for the next request.
            self.ring.enter(self.ring.pending(), 1)?;
            while let Some(cqe) = self.ring.pop() {
                let e = cqe.user_data as usize;
                if e >= self.entries.len() {
                    continue;
                }
                if cqe.res < 0 {
                    match -cqe.res {
                        libc::EAGAIN | libc::EINTR => {
                            let cmd = self.entries[e].last_cmd.load(Ordering::Relaxed);
                            self.submit(cmd, e)?;
                            continue;
                        }
                        libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV => {
                            debug!("uring qid {}: ended ({})", self.qid, -cqe.res);
                        }
                        err => warn!(
                            "uring qid {}: entry lost: {}",
                            self.qid,
                            io::Error::from_raw_os_error(err)
                        ),
                    }
                    live -= 1;
                    if live == 0 {
                        return Ok(());
                    }
                    continue;
                }
                let Some(len) = self.request(e, buf) else {
                    warn!("uring qid {}: malformed request", self.qid);
                    // Answer it so the entry comes back.
                    let unique = self.entries[e].commit_id.load(Ordering::Relaxed);
                    let _ = crate::ll::ResponseErrno(ll::Errno::EIO)
                        .with_iovec(ll::RequestId(unique), |iov| self.reply(e, iov));
                    continue;
                };
                *self.sq.lock() = true;
                let reply = UringReply {
                    queue: self.clone(),
                    entry: e,
                };
                match RequestWithSender::new_uring(se.ch.sender(), reply, &buf[..len]) {
                    Some(req) => {
                        if let Ok(ll::Operation::Destroy(_)) = req.request.operation() {
                            req.reply::<ReplyEmpty>().ok();
                        } else {
                            req.dispatch(se);
                        }
                    }
                    None => {
                        let unique = self.entries[e].commit_id.load(Ordering::Relaxed);
                        let _ = crate::ll::ResponseErrno(ll::Errno::EIO)
                            .with_iovec(ll::RequestId(unique), |iov| self.reply(e, iov));
                    }
                }
                *self.sq.lock() = false;
            }
        }
    }
}

use crate::ll::reply::Response as _;

/// Where a reply to a ring request goes: back into its entry.
#[derive(Debug, Clone)]
pub(crate) struct UringReply {
    queue: Arc<Queue>,
    entry: usize,
}

impl UringReply {
    pub(crate) fn send(&self, iov: &[IoSlice<'_>]) -> io::Result<()> {
        self.queue.reply(self.entry, iov)
    }

    pub(crate) fn open_backing(&self, fd: BorrowedFd<'_>) -> io::Result<BackingId> {
        BackingId::create(&self.queue.dev, fd)
    }

    pub(crate) unsafe fn wrap_backing(&self, id: u32) -> BackingId {
        // SAFETY: forwarded; the caller vouches for `id` as for the channel's wrap_backing.
        unsafe { BackingId::wrap_raw(&self.queue.dev, id) }
    }
}

// ---- the workers ------------------------------------------------------------------------------

enum Go<FS: Filesystem> {
    Register,
    Serve(SessionEventLoop<FS>),
}

struct Worker<FS: Filesystem> {
    qid: usize,
    go: mpsc::Sender<Go<FS>>,
    handle: JoinHandle<io::Result<()>>,
}

/// The ring workers of a session, from setup (before the INIT reply) to serving.
pub(crate) struct Pool<FS: Filesystem> {
    workers: Vec<Worker<FS>>,
    done: mpsc::Receiver<(usize, io::Result<()>)>,
    queues: usize,
}

impl<FS: Filesystem> std::fmt::Debug for Pool<FS> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "uring::Pool({} queues, {} threads)",
            self.queues,
            self.workers.len()
        )
    }
}

/// The CPUs the kernel may have ("possible": it makes one queue for each) or has "online".
fn cpu_list(which: &str) -> io::Result<Vec<usize>> {
    let s = std::fs::read_to_string(format!("/sys/devices/system/cpu/{which}"))?;
    parse_cpu_list(s.trim()).ok_or_else(|| io::Error::other(format!("cpu list {s:?}")))
}

/// "0-3,5" -> [0, 1, 2, 3, 5]
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

impl<FS: Filesystem> Pool<FS> {
    /// Start `per_queue` workers for every possible CPU, each with its ring and buffers,
    /// and wait until they all are ready to register, or one failed.
    pub(crate) fn prepare(
        dev: &Arc<DevFuse>,
        per_queue: usize,
        payload: usize,
    ) -> io::Result<Self> {
        let cpus = cpu_list("possible")?;
        let online = cpu_list("online").unwrap_or_else(|_| cpus.clone());
        let (done_tx, done) = mpsc::channel();
        let mut pool = Pool {
            workers: Vec::new(),
            done,
            queues: cpus.len(),
        };
        for (qid, &cpu) in cpus.iter().enumerate() {
            // A CPU that is not online gets one worker: requests only come from running tasks.
            let n = if online.contains(&cpu) {
                per_queue.max(1)
            } else {
                1
            };
            for t in 0..n {
                let (go_tx, go_rx) = mpsc::channel::<Go<FS>>();
                let done_tx = done_tx.clone();
                let dev = dev.clone();
                let idx = pool.workers.len();
                let handle = thread::Builder::new()
                    .name(format!("fuser-ring-{qid}.{t}"))
                    .spawn(move || worker(idx, qid as u16, payload, dev, done_tx, go_rx))?;
                pool.workers.push(Worker {
                    qid,
                    go: go_tx,
                    handle,
                });
            }
        }
        pool.wait("set up")?;
        Ok(pool)
    }

    /// One report from every worker; the first failure, if any.
    fn wait(&self, what: &str) -> io::Result<Vec<bool>> {
        let mut ok = vec![false; self.workers.len()];
        let mut first = None;
        for _ in 0..self.workers.len() {
            let (idx, r) = self
                .done
                .recv()
                .map_err(|_| io::Error::other("ring worker gone"))?;
            match r {
                Ok(()) => ok[idx] = true,
                Err(e) => {
                    let q = self.workers[idx].qid;
                    debug!("uring qid {q}: {what}: {e}");
                    first.get_or_insert(io::Error::new(e.kind(), format!("qid {q}: {what}: {e}")));
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(ok),
        }
    }

    /// After the INIT reply: register every worker's entries. Ok if the kernel's ring is
    /// complete (every queue has entries); then the kernel serves requests through it.
    pub(crate) fn register(&mut self) -> io::Result<()> {
        for w in &self.workers {
            let _ = w.go.send(Go::Register);
        }
        let mut ok = vec![false; self.workers.len()];
        let mut first = None;
        for _ in 0..self.workers.len() {
            let (idx, r) = self
                .done
                .recv()
                .map_err(|_| io::Error::other("ring worker gone"))?;
            match r {
                Ok(()) => ok[idx] = true,
                Err(e) => {
                    let q = self.workers[idx].qid;
                    first
                        .get_or_insert(io::Error::new(e.kind(), format!("qid {q}: register: {e}")));
                }
            }
        }
        let mut queue_ok = vec![false; self.queues];
        for (w, ok) in self.workers.iter().zip(&ok) {
            queue_ok[w.qid] |= ok;
        }
        if queue_ok.iter().all(|&q| q) {
            if let Some(e) = first {
                warn!("io_uring: some ring workers failed ({e}); the others serve");
            }
            // Workers that failed have ended; keep the rest.
            let workers = std::mem::take(&mut self.workers);
            self.workers = workers
                .into_iter()
                .zip(ok)
                .filter_map(|(w, ok)| ok.then_some(w))
                .collect();
            Ok(())
        } else {
            Err(first.unwrap_or_else(|| io::Error::other("a queue has no entries")))
        }
    }

    pub(crate) fn queues(&self) -> usize {
        self.queues
    }

    pub(crate) fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Hand each worker its event loop; returns their handles to join.
    pub(crate) fn serve(
        self,
        make: impl Fn(String) -> SessionEventLoop<FS>,
    ) -> Vec<JoinHandle<io::Result<()>>> {
        self.workers
            .into_iter()
            .map(|w| {
                let name = w.handle.thread().name().unwrap_or("fuser-ring").to_string();
                let _ = w.go.send(Go::Serve(make(name)));
                w.handle
            })
            .collect()
    }
}

fn worker<FS: Filesystem>(
    idx: usize,
    qid: u16,
    payload: usize,
    dev: Arc<DevFuse>,
    done: mpsc::Sender<(usize, io::Result<()>)>,
    go: mpsc::Receiver<Go<FS>>,
) -> io::Result<()> {
    // Not pinned to the queue's CPU (libfuse pins): on a machine whose CPUs are busy with
    // other work, a pinned worker waits for its CPU while another is idle; measured on two
    // shared cores, pinning made the slow runs of a lookup or small-file read loop 2-3x
    // slower and the fast ones no faster.
    let queue = match Queue::new(qid, payload, dev) {
        Ok(q) => Arc::new(q),
        Err(e) => {
            let _ = done.send((idx, Err(e)));
            return Ok(());
        }
    };
    let _ = done.send((idx, Ok(())));
    let Ok(Go::Register) = go.recv() else {
        return Ok(());
    };
    let r = queue.register();
    let failed = r.is_err();
    let _ = done.send((idx, r));
    if failed {
        return Ok(());
    }
    match go.recv() {
        Ok(Go::Serve(se)) => queue.serve(&se),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod test {
    use std::mem::offset_of;

    use super::*;

    #[test]
    fn abi_layout() {
        assert_eq!(size_of::<EntInOut>(), 32);
        assert_eq!(size_of::<ReqHeader>(), 288);
        assert_eq!(offset_of!(ReqHeader, op_in), 128);
        assert_eq!(offset_of!(ReqHeader, ring_ent_in_out), 256);
        assert_eq!(offset_of!(EntInOut, payload_sz), 16);
        assert_eq!(size_of::<CmdReq>(), 24);
        assert_eq!(size_of::<Sqe128>(), 128);
        assert_eq!(offset_of!(Sqe128, cmd_op), 8);
        assert_eq!(offset_of!(Sqe128, addr), 16);
        assert_eq!(offset_of!(Sqe128, len), 24);
        assert_eq!(offset_of!(Sqe128, user_data), 32);
        assert_eq!(offset_of!(Sqe128, cmd), 48);
        assert_eq!(size_of::<Cqe>(), 16);
        assert_eq!(size_of::<Params>(), 120);
        assert_eq!(offset_of!(Params, sq_off), 40);
        assert_eq!(offset_of!(Params, cq_off), 80);
        assert!(size_of::<ReqHeader>() <= PAYLOAD_OFFSET);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-3,5"), Some(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_cpu_list("0-1,4-5"), Some(vec![0, 1, 4, 5]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn payload_floor() {
        assert_eq!(
            payload_size(4096, 1),
            FUSE_MIN_READ_BUFFER.max(page_size::get())
        );
        assert_eq!(
            payload_size(1 << 20, 256),
            (1 << 20).max(256 * page_size::get())
        );
    }

    #[test]
    fn fuse_cmd_area() {
        let s = Sqe128::fuse_cmd(
            3,
            FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
            7,
            CmdReq {
                commit_id: 42,
                qid: 5,
                ..CmdReq::default()
            },
        );
        // SAFETY: Sqe128 is plain old data of 128 bytes.
        let bytes: [u8; 128] = unsafe { std::mem::transmute(s) };
        assert_eq!(bytes[0], IORING_OP_URING_CMD);
        assert_eq!(&bytes[8..12], &2u32.to_ne_bytes());
        assert_eq!(&bytes[32..40], &7u64.to_ne_bytes());
        assert_eq!(&bytes[56..64], &42u64.to_ne_bytes());
        assert_eq!(&bytes[64..66], &5u16.to_ne_bytes());
        assert!(bytes[66..].iter().all(|&b| b == 0));
    }

    /// A request laid out in an entry comes out as /dev/fuse would deliver it, and a reply
    /// goes into the entry split into header and payload.
    #[test]
    fn request_and_reply_layout() {
        let dev = Arc::new(DevFuse(std::fs::File::open("/dev/null").unwrap()));
        let Ok(q) = Queue::new(0, payload_size(8192, 2), dev) else {
            eprintln!("no io_uring here; skipped");
            return;
        };
        let ent = &q.entries[0];
        let hdr = ent.header();
        let inh = |len| abi::fuse_in_header {
            len,
            opcode: 1,
            unique: 99,
            nodeid: 1,
            uid: 0,
            gid: 0,
            pid: 0,
            padding: 0,
        };
        // SAFETY: test-local entry, no kernel involved.
        unsafe {
            ptr::write_unaligned((*hdr).in_out.as_mut_ptr().cast(), inh(40 + 8 + 6));
            (&mut (*hdr).op_in)[..8].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            ptr::copy_nonoverlapping(b"hello!".as_ptr(), ent.payload(), 6);
            (*hdr).ring_ent_in_out = EntInOut {
                commit_id: 99,
                payload_sz: 6,
                ..EntInOut::default()
            };
        }
        let mut buf = vec![0u8; 200];
        assert_eq!(q.request(0, &mut buf), Some(54));
        assert_eq!(&buf[40..48], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&buf[48..54], b"hello!");
        assert_eq!(ent.commit_id.load(Ordering::Relaxed), 99);

        // Bad length: larger than header + op_in + payload can hold.
        // SAFETY: as above.
        unsafe {
            ptr::write_unaligned((*hdr).in_out.as_mut_ptr().cast(), inh(40 + 200 + 6));
        }
        assert_eq!(q.request(0, &mut buf), None);

        // The split of a reply, header spread over two slices. No kernel: the commit's
        // submission fails on /dev/null, after the buffers are written.
        let out = [1u8; 16];
        let _ = q.reply(
            0,
            &[
                IoSlice::new(&out[..10]),
                IoSlice::new(&out[10..]),
                IoSlice::new(b"abc"),
                IoSlice::new(b"de"),
            ],
        );
        // SAFETY: as above.
        unsafe {
            assert_eq!(&(&(*hdr).in_out)[..16], &out);
            assert_eq!(std::slice::from_raw_parts(ent.payload(), 5), b"abcde");
            assert_eq!((*hdr).ring_ent_in_out.payload_sz, 5);
        }
    }
}
