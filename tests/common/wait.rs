//! Waiting in tests: one bound for any wait ([`WAIT`]) and one way to wait for something the
//! server does after answering ([`eventually`]).

use std::fmt::Debug;
use std::time::Duration;

/// Upper bound for any single wait in a test, so that a bug fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(10);

/// How often [`eventually`] looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// Runs `check` every [`POLL`] until it returns `Ok`, and returns that value. `check` returns
/// `Err(what it saw instead)` while the condition does not hold yet; if [`WAIT`] passes first
/// (also in the middle of a check that hangs), panics with `awaited` (what the test was waiting
/// for) and the last thing seen.
pub async fn eventually<T, E: Debug>(awaited: &str, check: impl AsyncFnMut() -> Result<T, E>) -> T {
    eventually_within(awaited, WAIT, POLL, check).await
}

/// As [`eventually`], giving up after `within` and looking every `every`.
pub async fn eventually_within<T, E: Debug>(
    awaited: &str,
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(seen)) => seen,
            Err(_) => panic!("gave up after {within:?} waiting for {awaited}: a check hung"),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {within:?} waiting for {awaited}; last seen: {seen:?}"
        );
        tokio::time::sleep(every).await;
    }
}
