//! Loopback ports for child processes that bind their own listeners.
//!
//! A port from `bind(":0")` comes from the kernel's ephemeral range (32768–60999 here), the
//! same range every outgoing connection takes its local port from. Handing such a port to a
//! child leaves a window in which a proxy→origin or test→proxy connection takes it, and the
//! child's bind then fails (seen in CI: the admin listener lost its port that way). These
//! ports come from below the ephemeral range, are never handed out twice by one test
//! process, and were free when picked.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Ports `LOW..HIGH` are below Linux's default ephemeral range.
const LOW: u32 = 20_000;
const HIGH: u32 = 32_000;

/// The next candidate offset; starts at a per-process value so test binaries run one after
/// another (or by two checkouts at once) do not walk the same ports.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A loopback port, below the ephemeral range, that nothing was bound to a moment ago.
pub fn free_port() -> u16 {
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % (HIGH - LOW),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..(HIGH - LOW) {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % (HIGH - LOW);
        let port = (LOW + offset) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{HIGH}");
}
