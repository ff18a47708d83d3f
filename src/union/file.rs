//! Opening a merged entry's file for I/O: for writing it is copied up first (overlayfs'
//! file.c).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::Union;
use super::fileattr::Change;
use super::node::Node;
use crate::error::{Context, Result};
use crate::sys;

impl Union {
    /// Open a node's file for I/O; opening for writing copies it up first.
    pub fn open(&self, node: &Arc<Node>, flags: i32) -> Result<(File, usize)> {
        self.open_killing(node, flags, false)
            .map(|(f, layer, _)| (f, layer))
    }

    /// `open`, and with `kill_suidgid` (an `O_TRUNC` open by a caller without CAP_FSETID)
    /// kill the set-id bits and file capability of the truncated upper file, as the
    /// truncate would on a local filesystem (see `kill_suidgid`). The bool: the mode
    /// changed.
    pub fn open_killing(
        &self,
        node: &Arc<Node>,
        flags: i32,
        kill_suidgid: bool,
    ) -> Result<(File, usize, bool)> {
        let _place = node.place.read();
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writing {
            let change = Change::Write {
                append: flags & libc::O_APPEND != 0,
                truncate: flags & libc::O_TRUNC != 0,
            };
            self.check_protection(node, change, "open")?;
        }
        let loc = if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            self.copy_up_truncated(node)?
        } else if writing {
            self.copy_up(node)?
        } else {
            // A metadata-only copy reads its data from the lower file.
            let data = node.state().data().cloned();
            match data {
                Some(d) => d,
                None => self.locate(node)?,
            }
        };
        let f = self
            .open_branch(loc.raw(), &loc.name, flags)
            .op("open")
            .map_err(|e| e.at(node.path()).in_layer(loc.layer))?;
        let killed = kill_suidgid
            && flags & libc::O_TRUNC != 0
            && loc.layer == 0
            && self.kill_suidgid(node, Some(&f))?;
        Ok((f, loc.layer, killed))
    }

    /// A descriptor opened in `layer` before the node was copied up reads the lower file,
    /// and its writes would miss the copy: the copy, opened the same way, to use instead.
    pub fn follow_copy_up(&self, node: &Arc<Node>, layer: usize, flags: i32) -> Option<File> {
        if layer == 0 || !node.data_in_upper() {
            return None;
        }
        self.reopen_copy(node, flags).ok()
    }

    /// May a file opened in `layer` be copied up while it is open (so its data move)?
    pub fn may_copy_up(&self, layer: usize) -> bool {
        layer > 0 && self.writable()
    }

    /// Reopen a node's file after it was copied up, for a descriptor opened on the lower
    /// file before: the copy itself, even if its name has since gone or been reused.
    pub fn reopen_copy(&self, node: &Arc<Node>, flags: i32) -> Result<File> {
        // Opened the same way, but creating and truncating were done the first time.
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
        let copy = node.state().kept().cloned().filter(|k| k.layer == 0);
        match copy.map(|k| k.fd) {
            Some(fd) => sys::openat(
                libc::AT_FDCWD,
                sys::proc_path(fd.as_raw_fd(), "".as_ref()).as_os_str(),
                flags,
                0,
            )
            .map(File::from)
            .op("reopen copy"),
            None => Ok(self.open(node, flags)?.0),
        }
    }
}
