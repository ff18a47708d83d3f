//! unionmount: a union filesystem on FUSE.
//!
//! `union` is the filesystem's meaning (layers, resolution, whiteouts, copy-up) and knows
//! nothing of FUSE; `fuse` is the thin adapter that turns kernel requests into union calls;
//! `sys` is the only place that talks to libc.

pub mod config;
pub mod error;
pub mod fuse;
pub mod inspect;
pub mod mounts;
pub mod sys;
pub mod union;
