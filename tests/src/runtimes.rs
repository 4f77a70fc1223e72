//! What a test needs to run the same client code on every `std` runtime: the runtime's name,
//! a place for blocking harness calls, and sleeps and time limits on the runtime's own timer.

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use mqtt_client::{Runtime, Timer};
use mqtt_smol::Smol;
use mqtt_tokio::Tokio;

/// What a test needs of a runtime beyond [`Runtime`].
pub trait TestRuntime: Runtime {
    /// A short name for topics and client ids.
    const NAME: &'static str;

    /// Runs blocking harness code (process spawns, the proxy's cuts, blocking HTTP).
    fn blocking<T>(f: impl FnOnce() -> T) -> T;
}

impl TestRuntime for Tokio {
    const NAME: &'static str = "tokio";

    fn blocking<T>(f: impl FnOnce() -> T) -> T {
        tokio::task::block_in_place(f)
    }
}

impl TestRuntime for Smol {
    const NAME: &'static str = "smol";

    fn blocking<T>(f: impl FnOnce() -> T) -> T {
        // The clients run on smol's executor threads, not on the `block_on` thread.
        f()
    }
}

/// Sleeps on the runtime's own timer.
pub async fn sleep<R: Runtime>(d: Duration) {
    let mut timer = R::timer(Instant::now() + d);
    std::future::poll_fn(|cx| timer.poll_fire(cx)).await;
}

/// Resolves `fut`, or `None` after `limit`.
pub async fn within<R: Runtime, T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    let mut timer = R::timer(Instant::now() + limit);
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => timer.poll_fire(cx).map(|()| None),
    })
    .await
}

/// Runs a scenario within `limit`, failing the test past it.
pub async fn bounded<R: Runtime>(limit: Duration, body: impl Future<Output = ()>) {
    within::<R, _>(limit, body)
        .await
        .expect("the test ran over its time limit");
}

/// Waits until `cond` holds; false when `limit` passed first.
pub async fn eventually<R: Runtime>(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        sleep::<R>(Duration::from_millis(5)).await;
    }
    true
}
