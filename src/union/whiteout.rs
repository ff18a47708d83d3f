//! How deletions and opaque directories are spelled on disk: a pure codec.
//!
//! Read in every format, in every layer:
//! - `.wh.<name>` files and `.wh..wh..opq` markers (OCI image layers, AUFS);
//! - a character device 0/0 named `<name>` (kernel overlayfs, Docker overlay2);
//! - `trusted.overlay.opaque` / `user.overlay.opaque` = "y" on a directory; and, in a
//!   directory whose opaque xattr is "x", empty files carrying `*.overlay.whiteout`.
//!
//! Written as `.wh.` files by default (no privilege needed), or in the overlay format.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::sys::Stat;

pub const WH_PREFIX: &[u8] = b".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Names starting `.wh..wh.` are AUFS metadata (the opaque marker, our work dir), never
/// whiteouts of a user-visible name.
const META_PREFIX: &[u8] = b".wh..wh.";

pub const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
pub const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];
/// Our own bookkeeping xattr: the inode number a copied-up file keeps. trusted.* so that
/// only a privileged daemon writes it and image tools (which copy user.*) leave it out.
pub const ORIGIN_XATTR: &str = "trusted.unionmount.origin";

/// The origin record: the inode number (8 bytes, little endian), then a flags byte whose
/// bit `METACOPY` says the upper file holds metadata only and its data is still the lower
/// file's of the same name (chmod, chown, utimens and xattr changes copy no data).
pub const METACOPY: u8 = 1;

pub fn encode_origin(ino: u64, metacopy: bool) -> Vec<u8> {
    let mut v = ino.to_le_bytes().to_vec();
    if metacopy {
        v.push(METACOPY);
    }
    v
}

/// (inode number, metacopy) from an origin record.
pub fn decode_origin(v: &[u8]) -> Option<(u64, bool)> {
    let ino = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let metacopy = v.get(8).is_some_and(|f| f & METACOPY != 0);
    Some((ino, metacopy))
}

/// Kernel overlayfs' metadata-only copy-up mark (its data is the lower file's).
pub const METACOPY_XATTRS: [&str; 2] = ["trusted.overlay.metacopy", "user.overlay.metacopy"];

/// Read-only, computed, never listed: which branch serves an entry ("<index> <directory>").
pub const LAYER_XATTR: &str = "user.unionmount.layer";

/// Where a directory moved within the upper has its lower parts: the path from the root
/// (overlayfs' redirect_dir, under our own name).
pub const REDIRECT_XATTR: &str = "trusted.unionmount.redirect";
/// Redirects read, ours first, then kernel overlayfs' (absolute "/a/b", or relative "b":
/// a name in the same parent directory).
pub const REDIRECT_XATTRS: [&str; 3] = [
    REDIRECT_XATTR,
    "trusted.overlay.redirect",
    "user.overlay.redirect",
];

/// Where a moved directory's parts are in the layers below the one holding the redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// "/a/b": that path from the root.
    Absolute(Vec<OsString>),
    /// "b": that name in the same parent directory.
    Relative(OsString),
}

impl Redirect {
    /// None for a value overlayfs would refuse too: empty, a relative one with a '/', or
    /// any "." or ".." component (a redirect never leaves the tree).
    pub fn parse(value: &[u8]) -> Option<Redirect> {
        let bad = |c: &[u8]| c == b"." || c == b"..";
        if let Some(rest) = value.strip_prefix(b"/") {
            let parts: Vec<&[u8]> = rest
                .split(|b| *b == b'/')
                .filter(|c| !c.is_empty())
                .collect();
            if parts.is_empty() || parts.iter().any(|c| bad(c)) {
                return None;
            }
            let parts = parts.into_iter().map(|c| OsString::from_vec(c.to_vec()));
            return Some(Redirect::Absolute(parts.collect()));
        }
        if value.is_empty() || value.contains(&b'/') || bad(value) {
            return None;
        }
        Some(Redirect::Relative(OsString::from_vec(value.to_vec())))
    }
}

/// A redirect value: "/a/b" from the root, as path components.
pub fn parse_redirect(value: &[u8]) -> Vec<OsString> {
    value
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b"." && *c != b"..")
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect()
}

pub fn format_redirect(parts: &[OsString]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.push(b'/');
        v.extend_from_slice(p.as_bytes());
    }
    v
}

/// A name that can never be seen or created through the mount.
pub fn is_reserved(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH_PREFIX)
}

/// `.wh.<name>` for `name`.
pub fn whiteout_name(name: &OsStr) -> OsString {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    OsString::from_vec(v)
}

/// The name a `.wh.<name>` file deletes, or None for any other name (markers included).
pub fn whited_out(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b.starts_with(META_PREFIX) {
        return None;
    }
    b.strip_prefix(WH_PREFIX)
        .filter(|rest| !rest.is_empty())
        .map(OsStr::from_bytes)
}

/// A character device 0/0: overlayfs' whiteout.
pub fn is_whiteout_dev(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Could this entry be an xattr whiteout (worth reading its xattrs)?
pub fn may_be_xattr_whiteout(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size == 0
}

/// Value of an overlay opaque xattr: "y" opaque, "x" not opaque but holds xattr whiteouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpaqueXattr {
    Opaque,
    HasXattrWhiteouts,
}

pub fn parse_opaque_xattr(value: &[u8]) -> Option<OpaqueXattr> {
    match value {
        b"y" => Some(OpaqueXattr::Opaque),
        b"x" => Some(OpaqueXattr::HasXattrWhiteouts),
        _ => None,
    }
}

/// Xattrs that describe the layering itself: never shown through the mount, never copied up.
pub fn is_private_xattr(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b"trusted.overlay.")
        || b.starts_with(b"user.overlay.")
        || b.starts_with(b"trusted.unionmount.")
        || b.starts_with(b"user.unionmount.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names_round_trip() {
        let wh = whiteout_name(OsStr::new("hello.txt"));
        assert_eq!(wh, ".wh.hello.txt");
        assert_eq!(whited_out(&wh), Some(OsStr::new("hello.txt")));
        assert!(is_reserved(&wh));
    }

    #[test]
    fn markers_are_not_whiteouts() {
        assert_eq!(whited_out(OsStr::new(OPAQUE_MARKER)), None);
        assert_eq!(whited_out(OsStr::new(".wh..wh..work")), None);
        assert_eq!(whited_out(OsStr::new(".wh.")), None);
        assert_eq!(whited_out(OsStr::new("plain")), None);
        assert!(is_reserved(OsStr::new(OPAQUE_MARKER)));
        assert!(!is_reserved(OsStr::new(".whx")));
    }

    #[test]
    fn origins_round_trip() {
        assert_eq!(decode_origin(&encode_origin(42, false)), Some((42, false)));
        assert_eq!(decode_origin(&encode_origin(7, true)), Some((7, true)));
        assert_eq!(decode_origin(b"short"), None);
    }

    #[test]
    fn redirects_round_trip() {
        let parts = parse_redirect(b"/usr/share/..//doc");
        assert_eq!(parts, [OsString::from("usr"), "share".into(), "doc".into()]);
        assert_eq!(format_redirect(&parts), b"/usr/share/doc");
    }

    #[test]
    fn redirect_values() {
        assert_eq!(
            Redirect::parse(b"/a//b"),
            Some(Redirect::Absolute(vec!["a".into(), "b".into()]))
        );
        assert_eq!(Redirect::parse(b"b"), Some(Redirect::Relative("b".into())));
        for bad in [&b""[..], b"/", b"a/b", b"..", b"/a/../b", b"."] {
            assert_eq!(
                Redirect::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn opaque_xattr_values() {
        assert_eq!(parse_opaque_xattr(b"y"), Some(OpaqueXattr::Opaque));
        assert_eq!(
            parse_opaque_xattr(b"x"),
            Some(OpaqueXattr::HasXattrWhiteouts)
        );
        assert_eq!(parse_opaque_xattr(b"n"), None);
    }

    #[test]
    fn private_xattrs() {
        assert!(is_private_xattr(OsStr::new("trusted.overlay.opaque")));
        assert!(is_private_xattr(OsStr::new(ORIGIN_XATTR)));
        assert!(!is_private_xattr(OsStr::new("user.comment")));
        assert!(!is_private_xattr(OsStr::new("security.capability")));
    }
}
