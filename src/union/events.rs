//! What the union did, for people watching: counters since mount and a live event stream
//! (copy-ups, whiteouts, opaque directories). Emitting costs one atomic load when nobody
//! listens.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use parking_lot::Mutex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `path` was copied up from layer `from`: `bytes` of data in `took`.
    CopyUp {
        path: String,
        from: usize,
        bytes: u64,
        took: Duration,
    },
    /// A whiteout now hides `path` of the lower layers.
    Whiteout { path: String },
    /// The upper directory `path` now hides everything below it.
    Opaque { path: String },
    /// A directory spanning lower layers moved without copying its files.
    Redirect { from: String, to: String },
}

#[derive(Debug, Default)]
pub struct Counters {
    pub copy_ups: AtomicU64,
    pub copied_bytes: AtomicU64,
    pub whiteouts: AtomicU64,
    pub opaques: AtomicU64,
    pub redirects: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Events {
    pub counters: Counters,
    /// What the kernel agreed to at mount (set by the FUSE adapter), for `unionmount layers`.
    pub kernel: Mutex<String>,
    listening: AtomicBool,
    listeners: Mutex<Vec<SyncSender<Event>>>,
}

impl Events {
    pub fn emit(&self, e: Event) {
        let c = &self.counters;
        match &e {
            Event::CopyUp { bytes, .. } => {
                c.copy_ups.fetch_add(1, Ordering::Relaxed);
                c.copied_bytes.fetch_add(*bytes, Ordering::Relaxed);
            }
            Event::Whiteout { .. } => {
                c.whiteouts.fetch_add(1, Ordering::Relaxed);
            }
            Event::Opaque { .. } => {
                c.opaques.fetch_add(1, Ordering::Relaxed);
            }
            Event::Redirect { .. } => {
                c.redirects.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !self.listening.load(Ordering::Acquire) {
            return;
        }
        let mut ls = self.listeners.lock();
        // A slow listener loses events rather than slowing the filesystem down.
        ls.retain(|l| !matches!(l.try_send(e.clone()), Err(TrySendError::Disconnected(_))));
        self.listening.store(!ls.is_empty(), Ordering::Release);
    }

    /// A new listener of the live stream.
    pub fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = sync_channel(1024);
        self.listeners.lock().push(tx);
        self.listening.store(true, Ordering::Release);
        rx
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::CopyUp {
                path,
                from,
                bytes,
                took,
            } => write!(
                f,
                "copy-up {path} from layer {from} ({}, {:.1} ms)",
                human_bytes(*bytes),
                took.as_secs_f64() * 1000.0
            ),
            Event::Whiteout { path } => write!(f, "whiteout {path}"),
            Event::Opaque { path } => write!(f, "opaque {path}"),
            Event::Redirect { from, to } => write!(f, "redirect {to} -> lower {from}"),
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_streams() {
        let ev = Events::default();
        ev.emit(Event::Whiteout { path: "/a".into() });
        let rx = ev.subscribe();
        ev.emit(Event::CopyUp {
            path: "/etc/hosts".into(),
            from: 1,
            bytes: 3174,
            took: Duration::from_micros(200),
        });
        assert_eq!(ev.counters.whiteouts.load(Ordering::Relaxed), 1);
        assert_eq!(ev.counters.copy_ups.load(Ordering::Relaxed), 1);
        assert_eq!(
            rx.recv().unwrap().to_string(),
            "copy-up /etc/hosts from layer 1 (3.1 KiB, 0.2 ms)"
        );
        drop(rx);
        ev.emit(Event::Opaque { path: "/d".into() });
        assert!(ev.listeners.lock().is_empty(), "a gone listener is dropped");
    }
}
