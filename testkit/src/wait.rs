//! Waiting in tests: for a condition, and for one's turn.

use std::future::Future;
use std::time::Duration;
use std::time::Instant;

use tokio::sync::Mutex;
use tokio::sync::MutexGuard;

/// Polls `check` every 100 ms until it holds; panics, naming `what`, after
/// `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

static SERIAL: Mutex<()> = Mutex::const_new(());

/// Held by a test that runs a cluster of its own: three controllers (and
/// agents) each take a core's share on these 2-core machines, so the tests
/// of one binary that start clusters run one at a time; cargo runs test
/// binaries one after another.
pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}
