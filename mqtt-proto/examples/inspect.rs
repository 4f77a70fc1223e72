//! Decodes MQTT packets given as hex and prints them, then shows an encode round trip.
//!
//! ```text
//! cargo run -p mqtt-proto --example inspect -- [--v5|--v311|--v31] [HEX...]
//! ```
//! Without HEX arguments it reads hex from standard input, or, when that is a terminal or empty,
//! decodes a built-in sample conversation.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use mqtt_proto::{
    ConnAck, Connect, Packet, PacketId, Properties, Property, ProtocolVersion, Publish, QoS,
    ReasonCode, Status, SubscriptionOptions, TopicFilter, decode,
};

/// Encodes a short v5 conversation to show both directions of the codec.
fn sample() -> Vec<u8> {
    let id = PacketId::MIN;
    let props = [
        Property::MessageExpiryInterval(60),
        Property::UserProperty("unit", "celsius"),
    ];
    let filters = [(
        TopicFilter::new("sensors/+/temperature").unwrap_or_else(|e| panic!("{e}")),
        SubscriptionOptions::new(QoS::AtLeastOnce),
    )];
    let packets: [Packet<'_>; 4] = [
        Connect::new(ProtocolVersion::V5, "inspector", 30).into(),
        ConnAck::new(false, ReasonCode::Success).into(),
        mqtt_proto::Subscribe::new(id, &filters).into(),
        Publish {
            qos: QoS::AtLeastOnce,
            packet_id: Some(id),
            properties: Properties::new(&props),
            ..Publish::new("sensors/kitchen/temperature", b"21.5")
        }
        .into(),
    ];
    let mut out = Vec::new();
    for p in &packets {
        let mut buf = vec![0; p.encoded_len(ProtocolVersion::V5).unwrap_or(0)];
        match p.encode(ProtocolVersion::V5, &mut buf) {
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => eprintln!("cannot encode {:?}: {e}", p.packet_type()),
        }
    }
    out
}

fn to_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line per packet; payloads as text when they are UTF-8, else as hex.
fn describe(packet: &Packet<'_>) -> String {
    match packet {
        Packet::Publish(p) => {
            let payload = match std::str::from_utf8(p.payload) {
                Ok(text) => format!("{text:?}"),
                Err(_) => to_hex(p.payload),
            };
            format!(
                "PUBLISH topic={:?} qos={:?} retain={} dup={} packet_id={:?} properties={:?} payload={payload} ({} bytes)",
                p.topic,
                p.qos,
                p.retain,
                p.dup,
                p.packet_id,
                p.properties,
                p.payload.len()
            )
        }
        other => format!("{other:?}"),
    }
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':' && *b != b',')
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            u8::from_str_radix(s, 16).map_err(|_| format!("not hex: {s}"))
        })
        .collect()
}

fn main() -> ExitCode {
    let mut version = ProtocolVersion::V5;
    let mut hex = String::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--v5" => version = ProtocolVersion::V5,
            "--v311" => version = ProtocolVersion::V311,
            "--v31" => version = ProtocolVersion::V31,
            other => hex.push_str(other),
        }
    }
    let stdin = std::io::stdin();
    if hex.is_empty() && !stdin.is_terminal() {
        // A read failure leaves the input empty, which falls back to the sample below.
        let _ = stdin.lock().read_to_string(&mut hex);
    }
    let bytes = if hex.trim().is_empty() {
        println!("no input: decoding a sample MQTT 5 conversation\n");
        sample()
    } else {
        match parse_hex(&hex) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    };

    let mut rest = &bytes[..];
    while !rest.is_empty() {
        match decode(rest, version, usize::MAX) {
            Ok(Status::Complete((packet, used))) => {
                println!("{}\n  => {}\n", to_hex(&rest[..used]), describe(&packet));
                if let Packet::Connect(c) = packet {
                    // Later packets use the version the client asked for.
                    version = c.protocol;
                }
                let mut again = vec![0; packet.encoded_len(version).unwrap_or(used)];
                match packet.encode(version, &mut again) {
                    Ok(n) if again[..n] == rest[..used] => {}
                    Ok(n) => println!("  re-encoded (canonical form): {}\n", to_hex(&again[..n])),
                    Err(e) => println!("  cannot re-encode: {e}\n"),
                }
                rest = &rest[used..];
            }
            Ok(Status::Incomplete(n)) => {
                println!("incomplete: at least {n} more byte(s) needed");
                break;
            }
            Err(e) => {
                println!("malformed: {e} (MQTT 5 reason code: {})", e.reason_code());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
