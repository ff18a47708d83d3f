//! Errors of the union logic: the errno the kernel will see, plus what we were doing, where,
//! and in which layer, for the log. Only the FUSE edge reduces it to the errno.

use std::fmt;
use std::io;

#[derive(Debug)]
pub struct Error {
    pub errno: i32,
    pub op: &'static str,
    pub path: String,
    pub layer: Option<usize>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(errno: i32, op: &'static str) -> Error {
        Error {
            errno,
            op,
            path: String::new(),
            layer: None,
        }
    }

    pub fn io(e: io::Error, op: &'static str) -> Error {
        Error::new(crate::sys::errno_of(&e), op)
    }

    pub fn at(mut self, path: impl fmt::Display) -> Error {
        if self.path.is_empty() {
            self.path = path.to_string();
        }
        self
    }

    pub fn in_layer(mut self, layer: usize) -> Error {
        self.layer.get_or_insert(layer);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op, self.path)?;
        if let Some(l) = self.layer {
            write!(f, " (layer {l})")?;
        }
        write!(f, ": {}", io::Error::from_raw_os_error(self.errno))
    }
}

impl std::error::Error for Error {}

/// Attach the operation name to an io::Result.
pub trait Context<T> {
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|e| Error::io(e, op))
    }
}
