//! Integration and interop tests of the MQTT stack, and the helpers they share.
//!
//! The tests themselves live in `tests/tests/*.rs`. This library holds what they have in common:
//!
//! - [`node`]: a driver for the npm package `mqtt-packet`, an independent MQTT codec, used for
//!   differential tests of `mqtt-proto` (packets it generates must decode in ours to the same
//!   fields, and packets we encode must parse in it to the same fields).
//! - [`mosquitto`]: a private mosquitto broker per test on free loopback ports (password, TLS,
//!   websockets, persistence; kill and restart on the same ports).
//! - [`http`]: one blocking HTTP GET, for the health endpoints.
//! - [`certs`]: a CA, a server and a client certificate generated with `rcgen`, as PEM files.
//! - [`proxy`]: a loopback TCP proxy whose connections a test can cut mid-stream or stall.
//! - [`peers`]: `mosquitto_pub` / `mosquitto_sub` as reference peers.
//! - [`paho`]: the Python `paho-mqtt` client, in a venv made on first use.
//! - [`runtimes`]: running one generic test on tokio and smol (sleeps, time limits).
//!
//! `scripts/test` installs mosquitto, mosquitto-clients and the node packages (`npm ci` in
//! `tests/interop/`) before it runs the tests. Run it once (or `npm ci --prefix tests/interop` and
//! `apt-get install mosquitto mosquitto-clients`) before a plain `cargo test`.

pub mod certs;
pub mod http;
pub mod mosquitto;
pub mod node;
pub mod paho;
pub mod peers;
pub mod proxy;
pub mod raw;
pub mod runtimes;

/// `n` distinct free loopback ports: all bound at once (so they differ), then released.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Whether the tests run under CI (`CI` set to anything but empty, `0` or `false`).
///
/// Under CI nothing may be skipped: a missing peer (node, mosquitto) fails the test.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
}

/// Skips the calling test with a note on stderr, or fails it under CI (see [`in_ci`]).
///
/// Returns normally only outside CI; the caller then returns early from the test.
#[track_caller]
pub fn skip_or_fail(why: &str) {
    if in_ci() {
        panic!("CI=true and a test prerequisite is missing: {why}");
    }
    eprintln!("SKIPPED (a prerequisite is missing; under CI=true this fails): {why}");
}
