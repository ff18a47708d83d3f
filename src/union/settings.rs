//! What a union is made of and how it behaves: the branch stack and the settings that
//! change its meaning. The mount command builds them after validating what the user asked
//! for; a tool opens a union over a few directories with `Settings::read_only`. Nothing here
//! knows how the values were asked for, so the meaning cannot depend on it.

use std::path::PathBuf;

use super::idmap::Owners;

/// One branch of the stack, top first in `Settings::branches`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// The branch directory (canonical and absolute when it came from the command line).
    pub path: PathBuf,
    /// Only the first branch may be writable.
    pub writable: bool,
    /// The text the branch was asked for with (for messages and `which`).
    pub spec: String,
}

/// Whiteout format written to the upper branch (every format is read in every layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutFormat {
    /// `.wh.<name>` files and `.wh..wh..opq` markers (OCI/AUFS); needs no privilege.
    #[default]
    WhFiles,
    /// Kernel overlayfs: char device 0/0 and `trusted.overlay.opaque` (needs CAP_MKNOD/SYS_ADMIN).
    Overlay,
}

impl WhiteoutFormat {
    /// The name `-o whiteout=` takes.
    pub fn name(self) -> &'static str {
        match self {
            WhiteoutFormat::WhFiles => "wh",
            WhiteoutFormat::Overlay => "overlay",
        }
    }
}

/// Everything `Union::new` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Top first. If the first is writable it is the upper; all others are read-only lowers.
    pub branches: Vec<Branch>,
    /// Where copy-ups are built; must be on the upper's filesystem. `None`: a hidden
    /// directory inside the upper (see `layer::DEFAULT_WORKDIR`).
    pub workdir: Option<PathBuf>,
    /// Nothing is written, not even to a writable first branch.
    pub read_only: bool,
    pub whiteout: WhiteoutFormat,
    /// Skip the fsync that makes a copy-up durable before it is published (containers'
    /// `volatile`).
    pub volatile: bool,
    /// How owners are shown and stored: ID mapping, squashing, owners kept in an xattr.
    pub owners: Owners,
    /// Read the branches' files without marking their access time.
    pub noatime: bool,
}

impl Settings {
    /// A read-only union of plain directories, top first, with every other setting at its
    /// default: for tools that look at a stack without mounting it. The paths are taken as
    /// given (nothing is checked until `Union::new` opens them).
    pub fn read_only(paths: &[PathBuf]) -> Settings {
        Settings {
            branches: paths
                .iter()
                .map(|p| Branch {
                    path: p.clone(),
                    writable: false,
                    spec: p.display().to_string(),
                })
                .collect(),
            workdir: None,
            read_only: true,
            whiteout: WhiteoutFormat::default(),
            volatile: false,
            owners: Owners::default(),
            noatime: false,
        }
    }

    /// The branch asked to be writable (the upper), if any; with `read_only` nothing is
    /// written to it all the same.
    pub fn upper(&self) -> Option<&Branch> {
        self.branches.first().filter(|b| b.writable)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::fs;

    use super::*;
    use crate::union::Union;

    #[test]
    fn read_only_stack_of_plain_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let (top, bottom) = (tmp.path().join("top"), tmp.path().join("bottom"));
        fs::create_dir(&top).unwrap();
        fs::create_dir(&bottom).unwrap();
        fs::write(top.join("f"), "top").unwrap();
        fs::write(bottom.join("f"), "bottom").unwrap();
        fs::write(bottom.join("gone"), "").unwrap();
        fs::write(top.join(".wh.gone"), "").unwrap();

        let settings = Settings::read_only(&[top.clone(), bottom.clone()]);
        assert!(settings.read_only && settings.upper().is_none());
        assert_eq!(settings.branches[1].spec, bottom.display().to_string());
        let u = Union::new(&settings).unwrap();
        assert!(!u.writable());
        assert_eq!(
            u.check_writable("test").unwrap_err().errno,
            libc::EROFS,
            "nothing is written to a read-only stack"
        );
        let root = u.root();
        let f = u.probe(&root, OsStr::new("f")).unwrap().unwrap();
        assert_eq!(f.layer, 0);
        assert!(u.probe(&root, OsStr::new("gone")).unwrap().is_none());
        // Opening it made no work directory in the top branch.
        let names: Vec<_> = fs::read_dir(&top)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
