//! `unionmount snapshot`, `rollback` and `snapshots`: the commands, and the daemon's side
//! of their control requests (the work itself is `union::snapshot`).
//!
//! Requests: `snapshot [NAME]`, `rollback [NAME]` and `drop NAME` answer `snap SEQ<TAB>NAME<TAB>DIR`;
//! `snapshots` one `snap SEQ<TAB>NAME<TAB>TIME<TAB>ENTRIES<TAB>BYTES<TAB>DIR` per
//! snapshot, oldest first, then `upper<TAB>ENTRIES<TAB>BYTES<TAB>DIR` for the changes
//! since the last one.

use std::path::Path;

use crate::union::Union;
use crate::union::snapstore::Snap;

fn snap_line(s: &Snap) -> String {
    format!("snap {}\t{}\t{}", s.seq, s.name, s.dir.display())
}

fn name_arg(arg: &str) -> Option<&str> {
    Some(arg.trim()).filter(|a| !a.is_empty())
}

/// The daemon's answer to `snapshot`, `rollback` and `snapshots`.
pub fn serve(u: &Union, cmd: &str, arg: &str) -> Result<Vec<String>, String> {
    let err = |e: crate::error::Error| e.to_string();
    match cmd {
        "snapshot" => Ok(vec![snap_line(&u.snapshot(name_arg(arg)).map_err(err)?)]),
        "rollback" => Ok(vec![snap_line(&u.rollback(name_arg(arg)).map_err(err)?)]),
        "drop" => Ok(vec![snap_line(&u.drop_snapshot(arg.trim()).map_err(err)?)]),
        "snapshots" => {
            let mut out = Vec::new();
            for s in u.snapshots().map_err(err)? {
                let u = super::usage(&s.dir);
                let (entries, bytes) = (u.files + u.dirs, u.bytes);
                out.push(format!(
                    "snap {}\t{}\t{}\t{entries}\t{bytes}\t{}",
                    s.seq,
                    s.name,
                    s.time,
                    s.dir.display()
                ));
            }
            if let Some(up) = u.settings.upper() {
                let u = super::usage(&up.path);
                let (entries, bytes) = (u.files + u.dirs, u.bytes);
                out.push(format!("upper\t{entries}\t{bytes}\t{}", up.path.display()));
            }
            Ok(out)
        }
        _ => Err(format!("unknown request {cmd:?}")),
    }
}

/// `2026-12-07 08:31:59 UTC` for seconds since the epoch.
pub fn utc(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86400), t.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 || unit == "TiB" {
            return if unit == "B" {
                format!("{bytes} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    unreachable!()
}

fn ask(mountpoint: &Path, req: &str) -> super::Result<Vec<String>> {
    let mp = match super::mount_point(mountpoint)? {
        Some(mp) => mp,
        None => {
            return Err(format!(
                "{}: not the mount point of a unionmount mount",
                mountpoint.display()
            ));
        }
    };
    super::control::request_lines(&mp, req)
}

fn with_name(cmd: &str, name: Option<&str>) -> super::Result<String> {
    match name {
        Some(n) => {
            crate::union::snapstore::check_name(n)?;
            Ok(format!("{cmd} {n}"))
        }
        None => Ok(cmd.to_string()),
    }
}

fn answered(lines: &[String]) -> (String, String) {
    let f: Vec<&str> = lines
        .first()
        .and_then(|l| l.strip_prefix("snap "))
        .unwrap_or_default()
        .split('\t')
        .collect();
    (
        f.get(1).unwrap_or(&"").to_string(),
        f.get(2).unwrap_or(&"").to_string(),
    )
}

/// `unionmount snapshot MOUNTPOINT [NAME]`
pub fn snapshot(mountpoint: &Path, name: Option<&str>) -> super::Result<()> {
    let lines = ask(mountpoint, &with_name("snapshot", name)?)?;
    let (name, dir) = answered(&lines);
    println!("snapshot {name} taken: {dir}");
    Ok(())
}

/// `unionmount snapshot MOUNTPOINT --drop NAME`
pub fn drop(mountpoint: &Path, name: &str) -> super::Result<()> {
    let lines = ask(mountpoint, &with_name("drop", Some(name))?)?;
    let (name, _) = answered(&lines);
    println!("snapshot {name} dropped: its changes are kept in the layer above it");
    Ok(())
}

/// `unionmount rollback MOUNTPOINT [NAME]`
pub fn rollback(mountpoint: &Path, name: Option<&str>) -> super::Result<()> {
    let lines = ask(mountpoint, &with_name("rollback", name)?)?;
    let (name, _) = answered(&lines);
    println!("rolled back to {name}");
    Ok(())
}

/// `unionmount snapshots MOUNTPOINT`
pub fn list(mountpoint: &Path) -> super::Result<()> {
    let lines = ask(mountpoint, "snapshots")?;
    let mut rows = vec![[
        "NAME".to_string(),
        "TAKEN".to_string(),
        "ENTRIES".to_string(),
        "SIZE".to_string(),
        "DIRECTORY".to_string(),
    ]];
    for l in &lines {
        let f: Vec<&str> = l.split('\t').collect();
        if f[0].starts_with("snap ") && f.len() == 6 {
            rows.push([
                f[1].to_string(),
                utc(f[2].parse().unwrap_or(0)),
                f[3].to_string(),
                human(f[4].parse().unwrap_or(0)),
                f[5].to_string(),
            ]);
        } else if f[0] == "upper" && f.len() == 4 {
            rows.push([
                "(upper)".to_string(),
                "-".to_string(),
                f[1].to_string(),
                human(f[2].parse().unwrap_or(0)),
                f[3].to_string(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 4 {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", line.join("  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_632_319), "2026-12-07 08:31:59 UTC");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(4096), "4.0 KiB");
    }
}
