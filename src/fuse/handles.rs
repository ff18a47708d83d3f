//! Open files and directory snapshots, by FUSE file handle.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::union::node::Node;
use crate::union::readdir::DirEntry;

#[derive(Debug)]
pub struct OpenFile {
    pub node: Arc<Node>,
    /// The real file, and the layer it was opened in: a read-only open of a lower file is
    /// reopened from the upper once the file has been copied up, so readers see writes.
    pub file: RwLock<(File, usize)>,
    pub flags: i32,
}

#[derive(Debug)]
pub struct OpenDir {
    pub node: Arc<Node>,
    pub entries: Mutex<Vec<DirEntry>>,
}

#[derive(Debug)]
pub enum Handle {
    File(OpenFile),
    Dir(OpenDir),
}

#[derive(Debug, Default)]
pub struct Handles {
    map: DashMap<u64, Arc<Handle>>,
    next: AtomicU64,
}

impl Handles {
    pub fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map.insert(fh, Arc::new(h));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.map.get(&fh).map(|h| h.clone())
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.map.remove(&fh).map(|(_, h)| h)
    }
}
