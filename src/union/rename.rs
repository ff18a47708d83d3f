//! Rename within the merged tree (overlayfs' ovl_rename in dir.c): files and directories,
//! RENAME_NOREPLACE and RENAME_EXCHANGE, and no EXDEV ever reaching the caller. A directory
//! with lower parts moves alone and records where they are (a redirect); the old name gets
//! a whiteout when a lower layer still shows it.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::Union;
use super::WhiteoutFormat;
use super::dir::{child_path, clear_whiteout, exists, is_dir_found};
use super::events::Event;
use super::fileattr::Change;
use super::layer::remove_tree_contents;
use super::node::Node;
use super::whiteout;
use crate::error::{Context, Error, Result};
use crate::sys;

/// How a rename's source got into the upper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// Nothing to bring along (a non-directory, or an upper-only directory).
    Plain,
    /// A directory copied up alone, its lower parts found through a redirect.
    Redirect,
    /// A directory copied up with its whole subtree, made opaque.
    Whole,
}

impl Union {
    /// Rename within the merged tree. A directory that spans lower layers moves as a whole
    /// upper copy marked opaque, so no EXDEV ever reaches the caller.
    pub fn rename(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        newparent: &Arc<Node>,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let path = child_path(parent, name);
        self.check_writable("rename")?;
        if whiteout::is_reserved(newname) {
            return Err(Error::new(libc::EPERM, "rename").at(child_path(newparent, newname)));
        }
        // As overlayfs: RENAME_WHITEOUT would leave a 0/0 device, which the union reads as a
        // whiteout (the name would vanish instead of showing the device).
        if flags & !(sys::RENAME_EXCHANGE | sys::RENAME_NOREPLACE) != 0 {
            return Err(Error::new(libc::EINVAL, "rename").at(&path));
        }
        let exchange = flags & sys::RENAME_EXCHANGE != 0;
        let src = self
            .probe(parent, name)?
            .ok_or_else(|| Error::new(libc::ENOENT, "rename").at(&path))?;
        let dst = self.probe(newparent, newname)?;
        self.check_protection(parent, Change::RemoveEntry, "rename")?;
        self.check_entry_protection(parent, name, &src, Change::Remove, "rename")?;
        self.check_protection(newparent, Change::AddEntry, "rename")?;
        if let Some(d) = &dst {
            self.check_protection(newparent, Change::RemoveEntry, "rename")?;
            self.check_entry_protection(newparent, newname, d, Change::Remove, "rename")?;
        }
        // (Not for a rename that may not replace, nor between two names of one file, nor of
        // a directory over a file: it changes nothing, or fails.)
        let dst = if !exchange && flags & sys::RENAME_NOREPLACE == 0 && !is_dir_found(&src) {
            self.index_before_removal(newparent, newname, dst, Some(src.ino))?
        } else {
            dst
        };
        let replaced = self.replaced_node(dst.as_ref().filter(|_| !exchange));
        let _place = replaced.as_ref().map(|n| n.place.write());
        // (An exchange copies the destination up itself, under the same lock.)
        let held = self.copy_up_may_race(&dst).filter(|_| !exchange);
        let _serial = held.as_ref().map(|n| n.copy_up_lock.lock());
        let dst = self.still_found(newparent, newname, dst, held.as_ref())?;
        if let Some(d) = &dst {
            if d.ino == src.ino && !exchange {
                return Ok(()); // two names of one file: POSIX says do nothing
            }
            if flags & sys::RENAME_NOREPLACE != 0 {
                return Err(Error::new(libc::EEXIST, "rename").at(&path));
            }
        } else if exchange {
            return Err(Error::new(libc::ENOENT, "rename").at(child_path(newparent, newname)));
        }
        let src_dir = is_dir_found(&src);
        if let (Some(d), false) = (&dst, exchange) {
            match (src_dir, is_dir_found(d)) {
                (true, false) => return Err(Error::new(libc::ENOTDIR, "rename").at(&path)),
                (false, true) => return Err(Error::new(libc::EISDIR, "rename").at(&path)),
                _ => {}
            }
        }
        if let Some(d) = dst.as_ref().filter(|d| d.layer == 0 && !exchange)
            && (is_dir_found(d) || d.st.st_nlink <= 1)
        {
            self.forget_origin(&d.st);
        }
        if let Some(d) = dst.as_ref().filter(|_| !exchange) {
            self.keep_handle(self.live_node(d).as_ref(), newparent, newname, d.layer)?;
        }
        let src_node = self.node_for(parent, name, src);
        let dst_node = dst.map(|d| self.node_for(newparent, newname, d));
        if let (Some(d), false) = (&dst_node, exchange)
            && d.is_dir()
            && !self.is_empty_dir(d)?
        {
            return Err(Error::new(libc::ENOTEMPTY, "rename").at(&path));
        }
        let src_lower = self.lower_shows(parent, name)?;
        if src_lower && !exchange {
            self.check_whiteout_fits(name)?;
        }
        let samedir = Arc::ptr_eq(parent, newparent);
        let src_move = self.copy_up_for_move(&src_node, samedir)?;
        let dst_move = match &dst_node {
            Some(d) if exchange => self.copy_up_for_move(d, samedir)?,
            _ => Move::Plain,
        };
        let up_src = self.upper_dir(parent)?;
        let up_dst = self.upper_dir(newparent)?;
        let (us, ud) = (up_src.as_raw_fd(), up_dst.as_raw_fd());
        let dst_lower = self.lower_shows(newparent, newname)?;
        // A directory arriving where a lower layer has the name must hide it.
        // (A redirected one finds its lower parts by its redirect, not by its name.)
        if src_node.is_dir() && dst_lower && src_move != Move::Redirect {
            self.mark_opaque(us, name, &child_path(newparent, newname))?;
        }
        if exchange {
            let dst_dir = dst_node.as_ref().is_some_and(|d| d.is_dir());
            if dst_dir && src_lower && dst_move != Move::Redirect {
                self.mark_opaque(ud, newname, &path)?;
            }
        } else if let Some(d) = &dst_node {
            // Replacing an (empty) upper directory: clear its markers so rename can.
            if d.is_dir()
                && d.state().layer == 0
                && let Ok(fd) = sys::openat(
                    ud,
                    newname,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
            {
                remove_tree_contents(fd.as_raw_fd())?;
            }
        }
        // An overlay-format whiteout under the new name: a directory cannot replace it, so
        // the two swap places and the old name keeps the whiteout (if it needs one).
        let swap_whiteout =
            !exchange && dst_node.is_none() && src_node.is_dir() && exists(ud, newname);
        // The old name's whiteout goes in before the move, so a crash leaves the entry under
        // one name or the other: `.wh.` files first (the entry wins over its own until it
        // moves), overlay devices by the rename itself (RENAME_WHITEOUT).
        let whiteout_old = !exchange && src_lower && !swap_whiteout;
        let mut kflags = if exchange || swap_whiteout {
            sys::RENAME_EXCHANGE
        } else {
            0
        };
        if whiteout_old {
            match self.opts.whiteout {
                WhiteoutFormat::WhFiles => self.put_whiteout(us, name, None, &path)?,
                WhiteoutFormat::Overlay => {
                    kflags |= sys::RENAME_WHITEOUT;
                    self.events.emit(Event::Whiteout { path: path.clone() });
                }
            }
        }
        if let Some(d) = dst_node.as_ref().filter(|_| !exchange) {
            d.drop_name(newparent, newname);
        }
        // From the move until the nodes follow it, opens of them wait (see `Node::place`).
        let _moving = (!replaced.as_ref().is_some_and(|r| Arc::ptr_eq(r, &src_node)))
            .then(|| src_node.place.write());
        let _moving_back = dst_node
            .as_ref()
            .filter(|_| exchange)
            .map(|d| d.place.write());
        sys::renameat2(us, name, ud, newname, kflags)
            .op("rename")
            .map_err(|e| e.at(&path).in_layer(0))?;
        if swap_whiteout && !src_lower {
            sys::unlinkat(us, name, false).op("remove whiteout")?;
        }
        if !exchange {
            clear_whiteout(ud, newname)?;
        }
        // The moved entries keep their inode numbers across remounts.
        self.keep_origin(ud, newname, src_node.ino);
        if let Some(d) = dst_node.as_ref().filter(|_| exchange) {
            self.keep_origin(us, name, d.ino);
        }

        // Bookkeeping: names, and locations that may now be stale.
        src_node.move_name((parent, name), (newparent, newname));
        if let Some(d) = dst_node.as_ref().filter(|_| exchange) {
            d.move_name((newparent, newname), (parent, name));
        }
        self.refresh(&src_node)?;
        if let Some(d) = dst_node.as_ref().filter(|_| exchange) {
            self.refresh(d)?;
        }
        if src_move == Move::Redirect {
            let to = child_path(newparent, newname);
            self.events.emit(Event::Redirect {
                from: path.clone(),
                to,
            });
        }
        // Nodes below a directory copied up whole may still point into the lower layers.
        if src_move == Move::Whole || dst_move == Move::Whole {
            self.bump_generation();
        }
        log::debug!("rename {path} -> {}", child_path(newparent, newname));
        Ok(())
    }

    /// Bring a rename's source into the upper so it can move by one rename. A directory
    /// with lower parts is copied up alone and records where its lower parts are (a
    /// redirect), so no file data moves; where that cannot be recorded (an upper without
    /// xattrs) its whole subtree is copied up and made opaque.
    /// `samedir`: the move stays in the same directory.
    fn copy_up_for_move(&self, node: &Arc<Node>, samedir: bool) -> Result<Move> {
        if !node.is_dir() {
            self.copy_up(node)?;
            return Ok(Move::Plain);
        }
        if !node.state().dirs.iter().any(|d| d.layer > 0) {
            return Ok(Move::Plain);
        }
        let loc = self.copy_up(node)?;
        // Where its lower parts are, as the layers below see it (computed before the move).
        let value = whiteout::format_redirect(&self.lower_path(node));
        // In the overlay format, only the kernel's name: kernel overlayfs copies our
        // xattrs into its copy-ups, where a stale one of ours would win over its own.
        let attr = match self.opts.whiteout {
            WhiteoutFormat::WhFiles => whiteout::REDIRECT_XATTR,
            WhiteoutFormat::Overlay => whiteout::REDIRECT_XATTRS[1],
        };
        match self.redirect_in(loc.raw(), &loc.name) {
            // Moved before: an absolute redirect still holds anywhere, a relative one (a
            // name in its parent, as the kernel writes) only in the same directory; else it
            // becomes absolute, as overlayfs does.
            Some(whiteout::Redirect::Absolute(_)) => return Ok(Move::Redirect),
            Some(whiteout::Redirect::Relative(_)) if samedir => return Ok(Move::Redirect),
            Some(whiteout::Redirect::Relative(_)) => {
                let present = sys::llistxattr(loc.raw(), &loc.name).unwrap_or_default();
                for a in whiteout::REDIRECT_XATTRS {
                    if present.iter().any(|p| p == a.as_bytes()) {
                        sys::lsetxattr(loc.raw(), &loc.name, a.as_ref(), &value, 0)
                            .op("rewrite redirect")
                            .map_err(|e| e.at(node.path()).in_layer(0))?;
                    }
                }
                return Ok(Move::Redirect);
            }
            None => {}
        }
        if sys::lsetxattr(loc.raw(), &loc.name, attr.as_ref(), &value, 0).is_ok() {
            return Ok(Move::Redirect);
        }
        // Unprivileged (rootless), trusted.* cannot be written: record it as kernel
        // overlayfs does there (`userxattr`). Image tools copy user.* xattrs, but ours
        // never go into a layer (`diff`, `export`, `commit` leave them out).
        let user = whiteout::REDIRECT_XATTRS[2];
        if sys::lsetxattr(loc.raw(), &loc.name, user.as_ref(), &value, 0).is_ok() {
            return Ok(Move::Redirect);
        }
        self.copy_up_tree(node)?;
        self.mark_opaque(loc.raw(), &loc.name, &node.path())?;
        Arc::make_mut(&mut node.state_mut().dirs).retain(|d| d.layer == 0);
        Ok(Move::Whole)
    }
}
