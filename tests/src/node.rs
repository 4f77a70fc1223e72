//! A driver for `tests/interop/mqtt_packet.js`, a line-oriented bridge to the npm package
//! `mqtt-packet`.
//!
//! One node process is spawned per [`Node`] and answers newline-delimited JSON requests in order.
//! Bytes cross the bridge as hex: in packet objects every `Buffer` is `{"hex": "..."}` both ways
//! (see [`hex_value`] and [`bytes_of`]); everything else is `mqtt-packet`'s own object format
//! (`{"cmd": "publish", "topic": "a/b", "qos": 1, "messageId": 7, ...}`).
//!
//! ```no_run
//! let mut node = tests::node::Node::spawn()?;
//! assert_eq!(node.generate(4, &serde_json::json!({ "cmd": "pingreq" })), [0xc0, 0x00]);
//! assert_eq!(node.parse(4, &[0xd0, 0x00])["cmd"], "pingresp");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::{Value, json};

/// The folder holding `mqtt_packet.js`, `package.json` and (once installed) `node_modules/`.
pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// `{"hex": "..."}`: how bytes are written in a packet object sent to or read from node.
pub fn hex_value(bytes: &[u8]) -> Value {
    json!({ "hex": hex::encode(bytes) })
}

/// The bytes of a `{"hex": "..."}` value, or `None` if `v` is not one.
pub fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    hex::decode(v.as_object()?.get("hex")?.as_str()?).ok()
}

/// A running `node tests/interop/mqtt_packet.js`.
#[derive(Debug)]
pub struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Node {
    /// Starts the node bridge.
    ///
    /// Fails if `node` is not on the `PATH` or `mqtt-packet` is not installed in
    /// `tests/interop/node_modules` (run `scripts/test`, or `npm ci --prefix tests/interop`).
    pub fn spawn() -> io::Result<Node> {
        let dir = interop_dir();
        if !dir.join("node_modules/mqtt-packet/package.json").is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the npm package mqtt-packet is not installed in {}: run scripts/test, \
                     or `npm ci --prefix tests/interop`",
                    dir.display()
                ),
            ));
        }
        let mut child = Command::new("node")
            .arg(dir.join("mqtt_packet.js"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run `node`: {e}")))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(io::Error::other("node's stdin/stdout were not captured"));
        };
        let mut node = Node {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
        };
        // A first round trip, so that a broken install shows here and not in the first test.
        let pong = node.request(&json!({ "op": "generate", "protocolVersion": 4,
                                         "packet": { "cmd": "pingreq" } }))?;
        if pong["hex"] != "c000" {
            return Err(io::Error::other(format!(
                "node bridge answered {pong} to a PINGREQ"
            )));
        }
        Ok(node)
    }

    /// Starts the bridge, or returns `None` after printing why the caller should skip; under
    /// `CI=true` it panics instead, so that nothing is skipped silently there.
    #[track_caller]
    pub fn spawn_or_skip() -> Option<Node> {
        match Node::spawn() {
            Ok(node) => Some(node),
            Err(e) => {
                crate::skip_or_fail(&format!("node / mqtt-packet unavailable: {e}"));
                None
            }
        }
    }

    /// One process shared by every test of the calling test binary, started on first use.
    ///
    /// Panics (under CI) or returns `None` (elsewhere) as [`Node::spawn_or_skip`] does. The
    /// guard serialises the tests' requests; a test that panicked while holding it leaves the
    /// bridge usable, because requests are whole lines.
    #[track_caller]
    pub fn shared() -> Option<MutexGuard<'static, Node>> {
        static SHARED: OnceLock<Option<Mutex<Node>>> = OnceLock::new();
        let node = SHARED
            .get_or_init(|| Node::spawn_or_skip().map(Mutex::new))
            .as_ref();
        match node {
            Some(m) => Some(m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())),
            None => {
                // The first caller already failed (CI) or printed the reason; say it again.
                crate::skip_or_fail("node / mqtt-packet unavailable (see the first skip)");
                None
            }
        }
    }

    /// Sends one raw request object and returns the raw response object.
    pub fn request(&mut self, req: &Value) -> io::Result<Value> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("node bridge already closed"))?;
        let mut line = serde_json::to_string(req)?;
        line.push('\n');
        stdin.write_all(line.as_bytes())?;
        stdin.flush()?;
        let mut answer = String::new();
        if self.stdout.read_line(&mut answer)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "node bridge exited without answering",
            ));
        }
        Ok(serde_json::from_str(&answer)?)
    }

    /// Parses `bytes` with `mqtt-packet` at protocol `version` (3, 4 or 5).
    ///
    /// `Ok` holds every packet it parsed and the count of trailing bytes it left unparsed (an
    /// incomplete packet); `Err` holds mqtt-packet's error message.
    pub fn try_parse(&mut self, version: u8, bytes: &[u8]) -> Result<(Vec<Value>, u64), String> {
        let req = json!({ "op": "parse", "protocolVersion": version, "hex": hex::encode(bytes) });
        let resp = self
            .request(&req)
            .map_err(|e| format!("node bridge: {e}"))?;
        if resp["ok"] != true {
            return Err(resp["error"].as_str().unwrap_or("(no message)").to_owned());
        }
        let packets = resp["packets"].as_array().cloned().unwrap_or_default();
        Ok((packets, resp["left"].as_u64().unwrap_or(0)))
    }

    /// Parses `bytes`, which must hold exactly one whole packet, and returns it as
    /// `mqtt-packet`'s object (bytes as `{"hex": "..."}`).
    ///
    /// Panics if `mqtt-packet` rejects the bytes, finds another number of packets, or leaves
    /// bytes over.
    #[track_caller]
    pub fn parse(&mut self, version: u8, bytes: &[u8]) -> Value {
        let shown = hex::encode(bytes);
        match self.try_parse(version, bytes) {
            Ok((mut packets, 0)) if packets.len() == 1 => packets.remove(0),
            Ok((packets, left)) => panic!(
                "mqtt-packet (v{version}) parsed {} packets with {left} bytes left from {shown}: \
                 {packets:?}",
                packets.len()
            ),
            Err(e) => panic!("mqtt-packet (v{version}) rejected {shown}: {e}"),
        }
    }

    /// Encodes a packet object (in `mqtt-packet`'s format) with `mqtt-packet` at protocol
    /// `version`; `Err` holds its error message.
    pub fn try_generate(&mut self, version: u8, packet: &Value) -> Result<Vec<u8>, String> {
        let req = json!({ "op": "generate", "protocolVersion": version, "packet": packet });
        let resp = self
            .request(&req)
            .map_err(|e| format!("node bridge: {e}"))?;
        if resp["ok"] != true {
            return Err(resp["error"].as_str().unwrap_or("(no message)").to_owned());
        }
        let hex = resp["hex"]
            .as_str()
            .ok_or("node bridge answered without hex")?;
        hex::decode(hex).map_err(|e| format!("node bridge answered bad hex: {e}"))
    }

    /// Encodes a packet object with `mqtt-packet`; panics if it refuses.
    #[track_caller]
    pub fn generate(&mut self, version: u8, packet: &Value) -> Vec<u8> {
        match self.try_generate(version, packet) {
            Ok(bytes) => bytes,
            Err(e) => panic!("mqtt-packet (v{version}) cannot generate {packet}: {e}"),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Closing stdin ends the script's read loop; then reap the process.
        drop(self.stdin.take());
        if self.child.wait().is_err() {
            let _ = self.child.kill();
        }
    }
}
