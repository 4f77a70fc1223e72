//! The heap-backed client: a store sized at run time, far larger than a stack could hold.

use mqtt_proto::{Packet, PacketId, ProtocolVersion, Publish, QoS, Status, decode};
use mqtt_session::{Config, ConnectOptions, Error, Event, HeapClient, Instant, Read};

#[test]
fn a_large_store_is_built_on_the_heap_and_keeps_order() {
    let cfg = Config {
        version: ProtocolVersion::V311,
        inflight: 5_000,
        ..Config::default()
    };
    // 16 MiB: built in place on the heap, never on the stack (it would not fit there).
    let mut c: HeapClient<8> = HeapClient::with_capacity(cfg, 10_000, 16 << 20);
    let mut buf = vec![0u8; 4096];
    c.connect(Instant::ZERO, &ConnectOptions::default(), &mut buf)
        .unwrap();
    assert!(matches!(
        c.handle_read(Instant::ZERO, &[0x20, 0x02, 0x00, 0x00]),
        Read::Packet {
            event: Some(Event::Connected { .. }),
            ..
        }
    ));
    let payload = vec![7u8; 512];
    let msg = Publish {
        qos: QoS::AtLeastOnce,
        ..Publish::new("bulk/data", &payload)
    };
    let tokens: Vec<_> = (0..10_000)
        .map(|_| c.publish(Instant::ZERO, &msg, 5).unwrap())
        .collect();
    // The slot limit holds: one more is refused (nothing evictable ranks lower).
    assert_eq!(c.publish(Instant::ZERO, &msg, 1), Err(Error::QueueFull));
    // The window lets 5 000 out, in order, with ids 1, 2, 3, ...
    let mut sent = 0u16;
    while let Some(n) = c.poll_transmit(Instant::ZERO, &mut buf).unwrap() {
        let Ok(Status::Complete((Packet::Publish(p), _))) =
            decode(&buf[..n], ProtocolVersion::V311, usize::MAX)
        else {
            panic!("expected PUBLISH");
        };
        sent += 1;
        assert_eq!(p.packet_id, PacketId::new(sent));
    }
    assert_eq!(sent, 5_000);
    assert_eq!(c.in_flight(), 5_000);
    // Acking the first completes the first token and lets one more out.
    let Read::Packet {
        event: Some(Event::Published { token, .. }),
        ..
    } = c.handle_read(Instant::ZERO, &[0x40, 0x02, 0x00, 0x01])
    else {
        panic!("expected Published");
    };
    assert_eq!(token, tokens[0]);
    assert!(c.poll_transmit(Instant::ZERO, &mut buf).unwrap().is_some());
    assert_eq!(c.pending(), 9_999);
}
