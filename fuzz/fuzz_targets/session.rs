//! The client state machine after CONNECT, fed arbitrary broker bytes in arbitrary chunks,
//! with the clock, publishes and transmits interleaved: it must never panic, never write a
//! packet the codec rejects, and always end in a state it can leave.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_proto::{PacketId, ProtocolVersion, Publish, QoS, ReasonCode, Status, decode};
use mqtt_session::{Client, Config, ConnectOptions, Instant, Read, State};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let version = if selector & 1 == 0 {
        ProtocolVersion::V311
    } else {
        ProtocolVersion::V5
    };
    let cfg = Config {
        version,
        manual_acks: selector & 2 != 0,
        inflight: u16::from(selector >> 4) + 1,
        ..Config::default()
    };
    let mut client: Client<8, 2048, 4> = Client::new(cfg);
    let mut out = [0u8; 4096];
    let mut now = Instant::ZERO;
    if client
        .connect(
            now,
            &ConnectOptions {
                client_id: "fuzz",
                ..Default::default()
            },
            &mut out,
        )
        .is_err()
    {
        return;
    }
    // Control bytes steer the run; the rest is what the broker "sends".
    let mut rest = data;
    let mut inbox: Vec<u8> = Vec::new();
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 8 {
            0 | 1 | 2 => {
                let take = usize::from(op >> 3).min(rest.len());
                let (chunk, tail) = rest.split_at(take);
                inbox.extend_from_slice(chunk);
                rest = tail;
            }
            3 => now = now + core::time::Duration::from_millis(u64::from(op) * 500),
            4 => {
                let qos = QoS::from_u8(op >> 6).unwrap_or(QoS::AtLeastOnce);
                let msg = Publish {
                    qos,
                    ..Publish::new("fuzz/topic", b"payload")
                };
                let _ = client.publish(now, &msg, op >> 3);
            }
            5 => {
                if let Some(id) = PacketId::new(u16::from(op >> 3) + 1) {
                    let _ = client.ack(id, ReasonCode::Success);
                }
            }
            6 => client.handle_timeout(now),
            _ => {
                if client.state() == State::Disconnected {
                    client.handle_disconnect(now);
                    let _ = client.connect(now, &ConnectOptions::default(), &mut out);
                    inbox.clear();
                }
            }
        }
        // Feed what arrived, as a runtime would.
        let mut used_total = 0;
        loop {
            match client.handle_read(now, &inbox[used_total..]) {
                Read::Packet { used, .. } => used_total += used,
                _ => break,
            }
        }
        inbox.drain(..used_total);
        // Everything the client writes must be a packet our own decoder accepts.
        while let Ok(Some(n)) = client.poll_transmit(now, &mut out) {
            match decode(&out[..n], version, usize::MAX) {
                Ok(Status::Complete((_, used))) => assert_eq!(used, n),
                other => panic!(
                    "client wrote an invalid packet: {other:?} {:02x?}",
                    &out[..n]
                ),
            }
        }
        while client.poll_notice().is_some() {}
        if let Some(t) = client.poll_timeout() {
            assert!(t >= Instant::ZERO);
        }
    }
});
