//! The session's journal on NOR flash (`FlashJournal` over sequential-storage): messages
//! accepted offline and in flight survive a restart, with their packet ids.

use embedded_storage_async::nor_flash::{
    ErrorType, MultiwriteNorFlash, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use mqtt_embassy::Journal;
use mqtt_embassy::flash::FlashJournal;
use mqtt_proto::{Ack, ConnAck, Packet, ProtocolVersion, Publish, QoS, ReasonCode, Status, decode};
use mqtt_session::{Client, Config, ConnectOptions, Instant, Read};

const V: ProtocolVersion = ProtocolVersion::V311;
const PAGE: usize = 4096;

/// NOR flash in RAM: erase sets 0xFF, a write can only clear bits.
struct Ram(Vec<u8>);

#[derive(Debug)]
struct OutOfBounds;

impl NorFlashError for OutOfBounds {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashErrorKind::OutOfBounds
    }
}

impl ErrorType for Ram {
    type Error = OutOfBounds;
}

impl ReadNorFlash for Ram {
    const READ_SIZE: usize = 1;
    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), OutOfBounds> {
        let at = offset as usize;
        let src = self.0.get(at..at + bytes.len()).ok_or(OutOfBounds)?;
        bytes.copy_from_slice(src);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.0.len()
    }
}

impl NorFlash for Ram {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = PAGE;
    async fn erase(&mut self, from: u32, to: u32) -> Result<(), OutOfBounds> {
        self.0
            .get_mut(from as usize..to as usize)
            .ok_or(OutOfBounds)?
            .fill(0xFF);
        Ok(())
    }
    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), OutOfBounds> {
        let at = offset as usize;
        let dst = self.0.get_mut(at..at + bytes.len()).ok_or(OutOfBounds)?;
        for (d, b) in dst.iter_mut().zip(bytes) {
            *d &= b;
        }
        Ok(())
    }
}

impl MultiwriteNorFlash for Ram {}

type Session = Client<8, 2048, 4>;

fn session() -> Session {
    Client::new(Config {
        version: V,
        clean_start: false,
        ..Config::default()
    })
}

fn journal(flash: Ram) -> FlashJournal<Ram, 512> {
    FlashJournal::new(flash, 0..(4 * PAGE) as u32).expect("a valid range")
}

fn connect(s: &mut Session, session_present: bool) {
    let mut buf = [0u8; 256];
    s.connect(Instant::ZERO, &ConnectOptions::default(), &mut buf)
        .unwrap();
    let mut ack = [0u8; 8];
    let n = Packet::ConnAck(ConnAck::new(session_present, ReasonCode::Success))
        .encode(V, &mut ack)
        .unwrap();
    assert!(matches!(
        s.handle_read(Instant::ZERO, &ack[..n]),
        Read::Packet { .. }
    ));
}

/// The publishes the session writes now: (payload, packet id, dup).
fn sent(s: &mut Session) -> Vec<(Vec<u8>, Option<u16>, bool)> {
    let mut buf = [0u8; 512];
    let mut out = Vec::new();
    while let Some(n) = s.poll_transmit(Instant::ZERO, &mut buf).unwrap() {
        if let Ok(Status::Complete((Packet::Publish(p), _))) = decode(&buf[..n], V, usize::MAX) {
            out.push((p.payload.to_vec(), p.packet_id.map(|i| i.get()), p.dup));
        }
    }
    out
}

fn publish(s: &mut Session, payload: &[u8], qos: QoS) {
    let msg = Publish {
        qos,
        ..Publish::new("dev/1", payload)
    };
    s.publish(Instant::ZERO, &msg, 5).unwrap();
}

#[tokio::test]
async fn messages_survive_a_restart_on_flash() {
    let mut flash = journal(Ram(vec![0xFF; 4 * PAGE]));
    let mut s = session();
    assert_eq!(flash.restore(&mut s).await.unwrap().records, 0);
    connect(&mut s, false);
    publish(&mut s, b"a", QoS::AtLeastOnce);
    publish(&mut s, b"b", QoS::ExactlyOnce);
    assert_eq!(
        sent(&mut s),
        vec![],
        "nothing goes out before it is on flash"
    );
    flash.flush(&mut s).await;
    let first = sent(&mut s);
    flash.flush(&mut s).await;
    assert_eq!(first.len(), 2);
    // `a` is acknowledged: its record is removed.
    let ida = first.iter().find(|m| m.0 == b"a").unwrap().1.unwrap();
    let mut ack = [0u8; 8];
    let n = Packet::PubAck(Ack::new(mqtt_proto::PacketId::new(ida).unwrap()))
        .encode(V, &mut ack)
        .unwrap();
    assert!(matches!(
        s.handle_read(Instant::ZERO, &ack[..n]),
        Read::Packet { .. }
    ));
    publish(&mut s, b"c", QoS::AtLeastOnce);
    flash.flush(&mut s).await;
    assert_eq!(flash.failures(), 0);
    drop(s); // power cut

    let mut flash = journal(flash.into_flash());
    let mut s = session();
    let restored = flash.restore(&mut s).await.unwrap();
    assert_eq!((restored.records, restored.set_aside), (2, 0));
    connect(&mut s, true);
    let idb = first.iter().find(|m| m.0 == b"b").unwrap().1;
    let again = sent(&mut s);
    assert_eq!(
        again[0],
        (b"b".to_vec(), idb, true),
        "resent with its id and DUP"
    );
    assert_eq!(&again[1].0, b"c");
    assert_eq!(again.len(), 2);
}
