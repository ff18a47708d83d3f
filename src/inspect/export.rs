//! `unionmount export`: the change set as an OCI image layer tarball: deletions as empty
//! `.wh.<name>` files, opaque directories with a `.wh..wh..opq` entry, numeric owners,
//! modes, mtimes, xattrs as PAX `SCHILY.xattr.*` records, hard links as link entries. The
//! order is fixed (parents first, names sorted), so the same upper gives the same bytes and
//! the same diff ID (the sha256 of the uncompressed tar).

use std::collections::{HashMap, HashSet};
use std::io::{self, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::changes::{Change, ChangeSet, Kind, user_xattrs};
use crate::union::whiteout;

/// A writer that hashes what passes through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    pub bytes: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub fn digest(&self) -> String {
        let d = self.hasher.clone().finalize();
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + base.to_string().len();
    if len.to_string().len() != base.to_string().len() {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn dev_major(d: u64) -> u32 {
    (((d >> 32) & 0xffff_f000) | ((d >> 8) & 0x0000_0fff)) as u32
}

fn dev_minor(d: u64) -> u32 {
    (((d >> 12) & 0xffff_ff00) | (d & 0x0000_00ff)) as u32
}

struct Progress {
    on: bool,
    last: Instant,
    entries: u64,
    bytes: u64,
}

impl Progress {
    fn tick(&mut self, bytes: u64) {
        self.entries += 1;
        self.bytes += bytes;
        if self.on && self.last.elapsed().as_millis() >= 200 {
            self.last = Instant::now();
            eprint!(
                "\rexporting: {} entries, {}   ",
                self.entries,
                crate::union::events::human_bytes(self.bytes)
            );
        }
    }
    fn done(&self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}

/// Write the change set as a layer tarball to `out`.
pub fn write_tar<W: Write>(set: &ChangeSet, out: W, progress: bool) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut opaque: HashSet<PathBuf> = HashSet::new();
    let mut prog = Progress {
        on: progress,
        last: Instant::now(),
        entries: 0,
        bytes: 0,
    };
    for c in &set.changes {
        let parent = c.path.parent().unwrap_or(Path::new("")).to_path_buf();
        if c.kind == Kind::Deleted {
            // Below an opaque directory its marker already hides everything.
            if opaque.contains(&parent) {
                continue;
            }
            let wh = parent.join(whiteout::whiteout_name(
                c.path.file_name().unwrap_or_default(),
            ));
            let mut h = Header::new_ustar();
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            h.set_mtime(0);
            b.append_data(&mut h, &wh, io::empty())?;
            prog.tick(0);
            continue;
        }
        append_entry(&mut b, c, &mut links)?;
        prog.tick(
            c.meta
                .as_ref()
                .map_or(0, |m| if m.is_file() { m.len() } else { 0 }),
        );
        if c.opaque {
            opaque.insert(c.path.clone());
            let mut h = Header::new_ustar();
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            h.set_mtime(0);
            b.append_data(&mut h, c.path.join(whiteout::OPAQUE_MARKER), io::empty())?;
        }
    }
    prog.done();
    b.into_inner()
}

fn append_entry<W: Write>(
    b: &mut tar::Builder<W>,
    c: &Change,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let (Some(m), Some(src)) = (&c.meta, &c.src) else {
        return Ok(());
    };
    let ft = m.file_type();
    if ft.is_socket() {
        eprintln!(
            "unionmount export: skipping socket /{} (tar cannot hold one)",
            c.path.display()
        );
        return Ok(());
    }
    // Xattrs go in a PAX header of their own just before the entry.
    let xattrs = user_xattrs(src);
    if !xattrs.is_empty() {
        let mut data = Vec::new();
        for (k, v) in &xattrs {
            data.extend(pax_record(
                &format!("SCHILY.xattr.{}", String::from_utf8_lossy(k.as_bytes())),
                v,
            ));
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        let name = format!(
            "PaxHeaders.0/{}",
            c.path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        let name: String = name.chars().take(99).collect();
        h.set_path(name)?;
        h.set_cksum();
        b.append(&h, &data[..])?;
    }
    let mut h = Header::new_ustar();
    h.set_mode(m.mode() & 0o7777);
    h.set_uid(m.uid() as u64);
    h.set_gid(m.gid() as u64);
    h.set_mtime(m.mtime().max(0) as u64);
    h.set_size(0);
    if ft.is_file() && m.nlink() > 1 {
        let key = (m.dev(), m.ino());
        if let Some(first) = links.get(&key) {
            h.set_entry_type(EntryType::Link);
            return b.append_link(&mut h, &c.path, first);
        }
        links.insert(key, c.path.clone());
    }
    if ft.is_dir() {
        h.set_entry_type(EntryType::Directory);
        b.append_data(&mut h, &c.path, io::empty())
    } else if ft.is_symlink() {
        h.set_entry_type(EntryType::Symlink);
        let target = std::fs::read_link(src)?;
        b.append_link(&mut h, &c.path, target)
    } else if ft.is_file() {
        h.set_entry_type(EntryType::Regular);
        h.set_size(m.len());
        let f = std::fs::File::open(c.data.as_deref().unwrap_or(src))?;
        b.append_data(&mut h, &c.path, io::Read::take(f, m.len()))
    } else {
        h.set_entry_type(if ft.is_fifo() {
            EntryType::Fifo
        } else if ft.is_char_device() {
            EntryType::Char
        } else {
            EntryType::Block
        });
        if !ft.is_fifo() {
            h.set_device_major(dev_major(m.rdev()))?;
            h.set_device_minor(dev_minor(m.rdev()))?;
        }
        b.append_data(&mut h, &c.path, io::empty())
    }
}

/// `unionmount export TARGET --tar FILE [--digest]`.
pub fn run(target: &Path, lowers: &[PathBuf], tar: &Path, digest: bool) -> super::Result<()> {
    let src = super::diff::source_for(target, lowers, None)?;
    let set = super::changes::changes(&src)?;
    if !set.warnings.is_empty() {
        return Err(format!(
            "cannot export a faithful layer: {}",
            set.warnings.join("; ")
        ));
    }
    let to_stdout = tar == Path::new("-");
    let progress = std::io::stderr().is_terminal();
    let sink: Box<dyn Write> = if to_stdout {
        Box::new(io::BufWriter::new(io::stdout().lock()))
    } else {
        let f = std::fs::File::create(tar).map_err(|e| format!("{}: {e}", tar.display()))?;
        Box::new(io::BufWriter::new(f))
    };
    let hw = write_tar(&set, HashWriter::new(sink), progress)
        .map_err(|e| format!("{}: {e}", tar.display()))?;
    let id = hw.digest();
    let mut inner = hw.inner;
    inner
        .flush()
        .map_err(|e| format!("{}: {e}", tar.display()))?;
    if digest {
        if to_stdout {
            eprintln!("{id}");
        } else {
            println!("{id}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        for v in [&b""[..], b"hi", &[b'x'; 95][..], &[b'y'; 990][..]] {
            let r = pax_record("SCHILY.xattr.user.k", v);
            let (len, _) = std::str::from_utf8(&r[..r.iter().position(|b| *b == b' ').unwrap()])
                .map(|n| (n.parse::<usize>().unwrap(), ()))
                .unwrap();
            assert_eq!(len, r.len());
        }
    }

    #[test]
    fn device_numbers() {
        let makedev = |ma: u64, mi: u64| {
            ((ma & 0xffff_f000) << 32)
                | ((ma & 0xfff) << 8)
                | ((mi & 0xffff_ff00) << 12)
                | (mi & 0xff)
        };
        for (ma, mi) in [(8, 1), (259, 65537), (4096, 300)] {
            let d = makedev(ma, mi);
            assert_eq!((dev_major(d), dev_minor(d)), (ma as u32, mi as u32));
        }
    }
}
