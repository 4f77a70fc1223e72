//! What the broker fuzz targets share: the limits they configure, and the drain of a
//! connection's output that checks every packet decodes for its protocol version.

use mqtt_proto::{ProtocolVersion, Status, decode};
use mqtt_session::Instant;
use mqtt_session::broker::{Broker, ConnId, Error, Limits};

/// Small, so that inputs reach every limit.
pub const LIMITS: Limits = Limits {
    session_messages: 16,
    session_bytes: 4096,
    total_bytes: 16 * 1024,
    control_packets: 32,
    subscriptions: 8,
    retained_bytes: 4096,
    // Short, so that clock jumps reach both ends of a hold: drained, and stalled.
    backpressure_ms: 50,
    publish_rate: 0,
};

/// Writes out everything `conn` has (into a buffer of 8 bytes if `small`, so that
/// `BufferTooSmall` is exercised), checking that each packet decodes whole.
pub fn drain(broker: &mut Broker, conn: ConnId, now: Instant, small: bool) {
    let mut buf = vec![0u8; if small { 8 } else { 1 << 16 }];
    for _ in 0..10_000 {
        match broker.poll_transmit(conn, now, &mut buf) {
            Ok(Some(n)) => {
                let version = broker
                    .protocol_version(conn)
                    .unwrap_or(ProtocolVersion::V311);
                match decode(&buf[..n], version, usize::MAX) {
                    Ok(Status::Complete((_, used))) => assert_eq!(used, n),
                    other => panic!("invalid packet for {version}: {:?} {other:?}", &buf[..n]),
                }
            }
            Ok(None) | Err(Error::UnknownConnection) => return,
            Err(Error::BufferTooSmall { needed }) => {
                assert!(needed > buf.len());
                buf.resize(needed.min(1 << 20), 0);
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("poll_transmit never ran dry");
}
