use std::mem::align_of;

use crate::ll::fuse_abi as abi;
use crate::session::MAX_WRITE_SIZE;

/// Size of the buffer for reading a request from the kernel. Since the kernel may send
/// up to `MAX_WRITE_SIZE` bytes in a write request, we use that value plus some extra space.
const BUFFER_SIZE: usize = MAX_WRITE_SIZE + 4096;

/// A buffer that provides an aligned sub-slice for FUSE operations.
///
/// The buffer is an anonymous mapping of its own: its pages cost memory only once a
/// request is read into them, and give the memory back when it is dropped. A `Vec` from
/// malloc would come from a thread's arena once glibc's mmap threshold has risen past
/// this size (the first buffer freed raises it), and zeroing it then dirties the arena's
/// old top, about 130 KiB per worker thread, resident for the thread's life.
#[derive(Debug)]
pub(crate) struct FuseReadBuf {
    buffer: Buffer,
}

#[derive(Debug)]
enum Buffer {
    Mapped { ptr: *mut u8, len: usize },
    Heap(Vec<u8>),
}

impl FuseReadBuf {
    /// Creates a new `FuseReadBuf` with the default buffer size.
    ///
    /// The actual buffer may be slightly larger to accommodate alignment requirements.
    pub(crate) fn new() -> Self {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                BUFFER_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let buffer = if ptr == libc::MAP_FAILED {
            Buffer::Heap(vec![0; BUFFER_SIZE])
        } else {
            Buffer::Mapped {
                ptr: ptr.cast(),
                len: BUFFER_SIZE,
            }
        };
        Self { buffer }
    }

    /// Returns a mutable reference to the aligned portion of the buffer.
    pub(crate) fn as_mut(&mut self) -> &mut [u8] {
        let buffer: &mut [u8] = match &mut self.buffer {
            // SAFETY: ptr/len are a live mapping this buffer owns, zero-filled by the
            // kernel, borrowed through `&mut self` only.
            Buffer::Mapped { ptr, len } => unsafe { std::slice::from_raw_parts_mut(*ptr, *len) },
            Buffer::Heap(v) => v,
        };
        let alignment = align_of::<abi::fuse_in_header>();
        let off = alignment - (buffer.as_ptr() as usize) % alignment;
        if off == alignment {
            buffer
        } else {
            &mut buffer[off..]
        }
    }
}

impl Drop for FuseReadBuf {
    fn drop(&mut self) {
        if let Buffer::Mapped { ptr, len } = self.buffer {
            // SAFETY: ptr/len are exactly what mmap returned; no borrow outlives the buffer.
            unsafe { libc::munmap(ptr.cast(), len) };
        }
    }
}
