//! Smoke test of the node bridge to `mqtt-packet`: one packet each way.

use serde_json::json;
use tests::node::{Node, bytes_of, hex_value};

#[test]
fn node_generates_pingreq_and_parses_pingresp() {
    let Some(mut node) = Node::spawn_or_skip() else {
        return;
    };
    assert_eq!(node.generate(4, &json!({ "cmd": "pingreq" })), [0xc0, 0x00]);
    assert_eq!(node.generate(5, &json!({ "cmd": "pingreq" })), [0xc0, 0x00]);
    let packet = node.parse(4, &[0xd0, 0x00]);
    assert_eq!(packet["cmd"], "pingresp", "{packet}");
}

#[test]
fn node_keeps_bytes_exact() {
    let Some(mut node) = Node::shared() else {
        return;
    };
    let payload = [0x00, 0xff, 0x80, 0x7f];
    let bytes = node.generate(
        4,
        &json!({ "cmd": "publish", "topic": "a/b", "qos": 0, "payload": hex_value(&payload) }),
    );
    assert_eq!(
        bytes,
        [
            0x30, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0xff, 0x80, 0x7f
        ]
    );
    let packet = node.parse(4, &bytes);
    assert_eq!(packet["topic"], "a/b");
    assert_eq!(bytes_of(&packet["payload"]).as_deref(), Some(&payload[..]));
}

#[test]
fn node_reports_errors_and_incomplete_input() {
    let Some(mut node) = Node::shared() else {
        return;
    };
    // AUTH does not exist in 3.1.1.
    assert!(node.try_parse(4, &[0xf0, 0x00]).is_err());
    // A PUBLISH header announcing more bytes than given: nothing parsed, bytes left over.
    let (packets, left) = node
        .try_parse(4, &[0x30, 0x05, 0x00])
        .expect("incomplete is not an error");
    assert!(packets.is_empty());
    assert!(left > 0);
}
