//! Owners as the mount shows them and as the branches store them, after fuse-overlayfs:
//! ID mapping (`uidmapping=`, `gidmapping=`), squashing (`squash_to_root`, `squash_to_uid=`,
//! `squash_to_gid=`) and owner, group and mode kept in an xattr (`xattr_permissions=`).
//!
//! Pure: the union and the FUSE adapter apply what is decided here.

use crate::sys::Stat;

/// One range of an ID mapping, fuse-overlayfs' triple `DISK:HOST:COUNT`: the IDs
/// `disk..disk+count` stored in the branches are `host..host+count` through the mount.
/// containers-storage passes `CONTAINER:HOST:SIZE`, so an image's root-owned files show as
/// the host ID the kernel then shows as 0 inside the container's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub disk: u32,
    pub host: u32,
    pub count: u32,
}

impl IdRange {
    fn holds(start: u32, count: u32, id: u32) -> bool {
        id >= start && u64::from(id - start) < u64::from(count)
    }
}

/// An ID mapping: ranges that never overlap on either side, and the overflow ID that
/// stands for an ID outside all of them (`/proc/sys/kernel/overflowuid`, as fuse-overlayfs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<IdRange>,
    overflow: u32,
}

impl IdMap {
    /// Parse `DISK:HOST:COUNT[:DISK:HOST:COUNT...]`; empty fields are skipped
    /// (containers-storage writes a leading `:`). The error says what is wrong with `text`.
    pub fn parse(text: &str, overflow: u32) -> Result<IdMap, String> {
        let nums: Vec<&str> = text.split(':').filter(|f| !f.is_empty()).collect();
        if nums.is_empty() || !nums.len().is_multiple_of(3) {
            return Err("give ID ranges as DISK:HOST:COUNT[:DISK:HOST:COUNT...]".into());
        }
        let mut ranges: Vec<IdRange> = Vec::new();
        for t in nums.chunks(3) {
            let n: Vec<u32> = t
                .iter()
                .map(|f| f.parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("'{}' is not an ID range", t.join(":")))?;
            let r = IdRange {
                disk: n[0],
                host: n[1],
                count: n[2],
            };
            let end = |start: u32| u64::from(start) + u64::from(r.count);
            if r.count == 0 || end(r.disk) > 1 << 32 || end(r.host) > 1 << 32 {
                return Err(format!(
                    "range '{}' is empty or past the last ID",
                    t.join(":")
                ));
            }
            // Two ranges overlap when they share an ID on either side: one ID would then
            // have two meanings.
            let overlaps = |a: u32, b: u32, o: &IdRange| {
                u64::from(a) < u64::from(b) + u64::from(o.count)
                    && u64::from(b) < u64::from(a) + u64::from(r.count)
            };
            if ranges
                .iter()
                .any(|o| overlaps(r.disk, o.disk, o) || overlaps(r.host, o.host, o))
            {
                return Err(format!("range '{}' overlaps another", t.join(":")));
            }
            ranges.push(r);
        }
        Ok(IdMap { ranges, overflow })
    }

    /// The ID the mount shows for one stored in a branch.
    pub fn to_host(&self, disk: u32) -> u32 {
        self.ranges
            .iter()
            .find(|r| IdRange::holds(r.disk, r.count, disk))
            .map_or(self.overflow, |r| r.host + (disk - r.disk))
    }

    /// The ID stored for one a request carries (a creator, a chown target).
    pub fn to_disk(&self, host: u32) -> u32 {
        self.ranges
            .iter()
            .find(|r| IdRange::holds(r.host, r.count, host))
            .map_or(self.overflow, |r| r.disk + (host - r.host))
    }

    /// Maps every ID to itself (e.g. `0:0:4294967295`), so it changes nothing. A mapping
    /// that is the identity on fewer IDs still turns the others into the overflow ID.
    pub fn is_identity(&self) -> bool {
        let covered: u64 = self.ranges.iter().map(|r| u64::from(r.count)).sum();
        self.ranges.iter().all(|r| r.disk == r.host) && covered >= u64::from(u32::MAX)
    }

    pub fn ranges(&self) -> &[IdRange] {
        &self.ranges
    }

    /// As written on a command line (`0:100000:65536`).
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .ranges
            .iter()
            .map(|r| format!("{}:{}:{}", r.disk, r.host, r.count))
            .collect();
        parts.join(":")
    }
}

/// The kernel's overflow uid and gid, the IDs shown for unmappable ones (65534 unless the
/// system says otherwise).
pub fn overflow_ids() -> (u32, u32) {
    let read = |f: &str| {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(65534)
    };
    (
        read("/proc/sys/kernel/overflowuid"),
        read("/proc/sys/kernel/overflowgid"),
    )
}

/// The xattrs fuse-overlayfs keeps owner, group and mode in, instead of the file's own:
/// `xattr_permissions=1` writes the first, `=2` the last; containers-storage's `force_mask`
/// writes the middle one into the layers it unpacks.
pub const OVERRIDE_PRIVILEGED: &str = "security.fuseoverlayfs.override_stat";
pub const OVERRIDE_CONTAINERS: &str = "user.containers.override_stat";
pub const OVERRIDE_USER: &str = "user.fuseoverlayfs.override_stat";
/// In the order fuse-overlayfs looks for them on a layer's root directory: a layer whose
/// root has one shows the owners and modes of its files from that xattr.
pub const OVERRIDE_XATTRS: [&str; 3] = [OVERRIDE_PRIVILEGED, OVERRIDE_CONTAINERS, OVERRIDE_USER];

/// fuse-overlayfs' own namespace (origin, opaque, override records).
pub const PRIVATE_PREFIX: &str = "user.fuseoverlayfs.";

/// The xattrs that say who owns a file here: neither listed, read nor written through the
/// mount (fuse-overlayfs hides only `user.fuseoverlayfs.*`, and lets a privileged process
/// set `security.fuseoverlayfs.override_stat`, which gives a file any owner and mode).
pub fn is_owner_xattr(name: &[u8]) -> bool {
    name.starts_with(PRIVATE_PREFIX.as_bytes())
        || OVERRIDE_XATTRS.iter().any(|x| x.as_bytes() == name)
}

/// Owner, group and mode as an override xattr holds them: `UID:GID:OCTALMODE`, the mode
/// with or without its file-type bits (fuse-overlayfs writes both forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatOverride {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl StatOverride {
    pub fn of(st: &Stat) -> StatOverride {
        StatOverride {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
        }
    }

    /// `None` for anything that is not three fields (fuse-overlayfs reads the IDs with
    /// `%d`, so `-1` is 4294967295).
    pub fn parse(v: &[u8]) -> Option<StatOverride> {
        let s = std::str::from_utf8(v).ok()?.trim_end_matches(['\0', '\n']);
        let mut f = s.splitn(3, ':');
        let id = |t: Option<&str>| t?.trim().parse::<i64>().ok().map(|n| n as u32);
        let (uid, gid) = (id(f.next())?, id(f.next())?);
        let mode = u32::from_str_radix(f.next()?.trim(), 8).ok()?;
        Some(StatOverride { uid, gid, mode })
    }

    pub fn format(&self) -> Vec<u8> {
        format!("{}:{}:{:o}", self.uid, self.gid, self.mode).into_bytes()
    }

    /// Show these instead of the file's own (its type stays).
    pub fn apply(&self, st: &mut Stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_mode = (st.st_mode & libc::S_IFMT) | (self.mode & 0o7777);
    }
}

/// Only regular files and directories carry an override (as fuse-overlayfs reads them):
/// user.* xattrs cannot be set on symlinks and special files at all.
pub fn may_override(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

/// How owners are shown and stored. The default changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    pub uids: Option<IdMap>,
    pub gids: Option<IdMap>,
    /// `squash_to_uid=N` (or 0 for `squash_to_root`): stat shows N as every owner.
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    /// `xattr_permissions=1|2`: the xattr the upper keeps owners and modes in.
    pub xattr: Option<&'static str>,
}

impl Owners {
    /// The owner stat shows for a stored uid: squashing wins over the mapping.
    pub fn shown_uid(&self, disk: u32) -> u32 {
        self.squash_uid
            .unwrap_or_else(|| self.uids.as_ref().map_or(disk, |m| m.to_host(disk)))
    }

    pub fn shown_gid(&self, disk: u32) -> u32 {
        self.squash_gid
            .unwrap_or_else(|| self.gids.as_ref().map_or(disk, |m| m.to_host(disk)))
    }

    /// The uid stored for a request's (a new entry's creator, a chown target).
    pub fn stored_uid(&self, host: u32) -> u32 {
        self.uids.as_ref().map_or(host, |m| m.to_disk(host))
    }

    pub fn stored_gid(&self, host: u32) -> u32 {
        self.gids.as_ref().map_or(host, |m| m.to_disk(host))
    }

    /// With any squashing, a failed chown reports success (fuse-overlayfs): the owner
    /// shown is the squashed one whatever is stored.
    pub fn squashes(&self) -> bool {
        self.squash_uid.is_some() || self.squash_gid.is_some()
    }

    /// The settings in force, as options (empty when the default).
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(m) = &self.uids {
            out.push(format!("uidmapping={}", m.describe()));
        }
        if let Some(m) = &self.gids {
            out.push(format!("gidmapping={}", m.describe()));
        }
        if let Some(u) = self.squash_uid {
            out.push(format!("squash_to_uid={u}"));
        }
        if let Some(g) = self.squash_gid {
            out.push(format!("squash_to_gid={g}"));
        }
        if let Some(x) = self.xattr {
            out.push(format!("owners and modes in {x}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(s: &str) -> IdMap {
        IdMap::parse(s, 65534).unwrap()
    }

    #[test]
    fn podman_mapping_shifts_both_ways() {
        // The values fuse-overlayfs 1.10 gives with uidmapping=0:100000:65536.
        let m = map(":0:100000:65536");
        assert_eq!(m.to_host(0), 100000);
        assert_eq!(m.to_host(5), 100005);
        assert_eq!(m.to_host(65535), 165535);
        assert_eq!(m.to_host(65536), 65534);
        assert_eq!(m.to_host(70000), 65534);
        assert_eq!(m.to_disk(100005), 5);
        assert_eq!(m.to_disk(165535), 65535);
        // An unmapped chown target is stored as the overflow ID, then shows shifted.
        assert_eq!(m.to_disk(5), 65534);
        assert_eq!(m.to_host(m.to_disk(5)), 165534);
    }

    #[test]
    fn several_ranges_and_the_overflow_id() {
        let m = IdMap::parse("0:100000:1:1:200000:65535", 4242).unwrap();
        assert_eq!(m.ranges().len(), 2);
        assert_eq!(m.to_host(0), 100000);
        assert_eq!(m.to_host(1), 200000);
        assert_eq!(m.to_host(65535), 265534);
        assert_eq!(m.to_host(65536), 4242);
        assert_eq!(m.to_disk(200009), 10);
        assert_eq!(m.to_disk(100001), 4242);
        assert_eq!(m.describe(), "0:100000:1:1:200000:65535");
        // Up to the last ID.
        let top = map("4294967294:0:1");
        assert_eq!((top.to_host(4294967294), top.to_disk(0)), (0, 4294967294));
    }

    #[test]
    fn identity_only_when_it_maps_every_id() {
        assert!(map("0:0:4294967295").is_identity());
        assert!(map("0:0:10:10:10:4294967285").is_identity());
        let partial = map("0:0:10");
        assert!(!partial.is_identity());
        assert_eq!((partial.to_host(3), partial.to_host(20)), (3, 65534));
    }

    #[test]
    fn malformed_mappings_are_refused() {
        for bad in [
            "",
            ":",
            "0:1",
            "0:1:2:3",
            "a:1:2",
            "-1:0:1",
            "0:1:0",
            "4294967295:0:2",
            "0:100:10:5:200:10",
            "0:100:10:20:105:1",
        ] {
            assert!(IdMap::parse(bad, 65534).is_err(), "{bad}");
        }
    }

    #[test]
    fn squashing_wins_over_mapping_when_shown_only() {
        let o = Owners {
            uids: Some(map("0:100000:65536")),
            gids: Some(map("0:100000:65536")),
            squash_uid: Some(0),
            squash_gid: None,
            xattr: None,
        };
        assert_eq!((o.shown_uid(5), o.shown_gid(5)), (0, 100005));
        assert_eq!((o.stored_uid(100007), o.stored_gid(100008)), (7, 8));
        assert!(o.squashes());
        let plain = Owners::default();
        assert_eq!((plain.shown_uid(7), plain.stored_gid(8)), (7, 8));
        assert!(!plain.squashes() && plain.describe().is_empty());
    }

    #[test]
    fn override_values_read_and_written_like_fuse_overlayfs() {
        // As fuse-overlayfs 1.10 wrote them: a file with its type bits, a mkdir'ed
        // directory without, and a chgrp that left the uid as -1.
        let f = StatOverride::parse(b"7:8:100600").unwrap();
        assert_eq!((f.uid, f.gid, f.mode), (7, 8, 0o100600));
        assert_eq!(StatOverride::parse(b"0:0:755").unwrap().mode, 0o755);
        assert_eq!(StatOverride::parse(b"-1:9:100600").unwrap().uid, u32::MAX);
        for bad in [&b""[..], b"1:2", b"x:1:644", b"1:2:9", b"1:2:"] {
            assert_eq!(StatOverride::parse(bad), None, "{bad:?}");
        }
        let o = StatOverride {
            uid: 5,
            gid: 6,
            mode: 0o40750,
        };
        assert_eq!(o.format(), b"5:6:40750");
        assert_eq!(StatOverride::parse(&o.format()), Some(o));
        let mut st = crate::sys::zeroed_stat();
        st.st_mode = libc::S_IFREG | 0o644;
        StatOverride::parse(b"1:2:40700").unwrap().apply(&mut st);
        assert_eq!(
            (st.st_uid, st.st_gid, st.st_mode),
            (1, 2, libc::S_IFREG | 0o700)
        );
        assert!(may_override(libc::S_IFDIR | 0o755) && !may_override(libc::S_IFLNK));
        assert!(is_owner_xattr(b"user.fuseoverlayfs.origin"));
        assert!(is_owner_xattr(b"user.containers.override_stat"));
        assert!(is_owner_xattr(b"security.fuseoverlayfs.override_stat"));
        assert!(!is_owner_xattr(b"user.containers.other") && !is_owner_xattr(b"user.x"));
    }
}
