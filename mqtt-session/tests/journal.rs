//! The journal: records of every persistent change, transmissions gated on their durability,
//! and a session rebuilt from the records.

use std::collections::{BTreeMap, BTreeSet};

use mqtt_proto::{
    Ack, ConnAck, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, Status, decode,
};
use mqtt_session::journal::{Change, RestoreError};
use mqtt_session::{Client, Config, ConnectOptions, Event, Instant, Notice, Read};

const V: ProtocolVersion = ProtocolVersion::V311;

/// What a store holds: key → record, applied in record order.
#[derive(Default)]
struct Disk {
    records: BTreeMap<u64, Vec<u8>>,
    last_lsn: u64,
}

struct Peer {
    client: Client<16, 4096, 4>,
    now: Instant,
    buf: [u8; 1024],
}

impl Peer {
    fn new() -> Self {
        Peer::configured(false)
    }

    /// `manual_acks`: the application acknowledges (as "acknowledge after handlers" does).
    fn configured(manual_acks: bool) -> Self {
        let cfg = Config {
            version: V,
            clean_start: false,
            manual_acks,
            ..Config::default()
        };
        Peer {
            client: Client::new(cfg),
            now: Instant::ZERO,
            buf: [0; 1024],
        }
    }

    fn journaled() -> Self {
        let mut p = Peer::new();
        p.client.enable_journal();
        p
    }

    /// A new process: its sequence numbers start again.
    fn restored(disk: &mut Disk) -> Self {
        Peer::restored_with(disk, false)
    }

    /// [`Peer::restored`], acknowledging by hand or not.
    fn restored_with(disk: &mut Disk, manual_acks: bool) -> Self {
        let mut p = Peer::configured(manual_acks);
        for (k, r) in &disk.records {
            p.client
                .restore(*k, r)
                .unwrap_or_else(|e| panic!("restore {k} {r:?}: {e}"));
        }
        disk.last_lsn = 0;
        p.client.enable_journal();
        p
    }

    fn connect(&mut self, session_present: bool) {
        self.client
            .connect(self.now, &ConnectOptions::default(), &mut self.buf)
            .unwrap();
        let ack = encode(&Packet::ConnAck(ConnAck::new(
            session_present,
            ReasonCode::Success,
        )));
        assert!(matches!(
            self.client.handle_read(self.now, &ack),
            Read::Packet {
                event: Some(Event::Connected { .. }),
                ..
            }
        ));
    }

    /// Moves every pending record to `disk` (not yet durable); returns how many.
    fn records(&mut self, disk: &mut Disk) -> usize {
        let mut n = 0;
        while let Some(r) = self.client.poll_record(&mut self.buf).unwrap() {
            assert!(
                r.lsn > disk.last_lsn,
                "records come in sequence: {r:?} after {}",
                disk.last_lsn
            );
            disk.last_lsn = r.lsn;
            match r.change {
                Change::Put(len) => {
                    disk.records.insert(r.key, self.buf[..len].to_vec());
                }
                Change::Delete => {
                    assert!(
                        disk.records.remove(&r.key).is_some(),
                        "delete of a record never put"
                    );
                }
            }
            n += 1;
        }
        n
    }

    /// Records everything and declares it durable.
    fn sync(&mut self, disk: &mut Disk) -> usize {
        let n = self.records(disk);
        self.client.handle_durable(disk.last_lsn);
        n
    }

    /// Every packet the client writes now: (type, packet id, dup).
    fn sent(&mut self) -> Vec<(String, Option<u16>, bool)> {
        let mut out = Vec::new();
        while let Some(n) = self.client.poll_transmit(self.now, &mut self.buf).unwrap() {
            let Ok(Status::Complete((p, _))) = decode(&self.buf[..n], V, usize::MAX) else {
                panic!("client wrote an invalid packet");
            };
            let (id, dup) = match p {
                Packet::Publish(p) => (p.packet_id.map(PacketId::get), p.dup),
                Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                    (Some(a.packet_id.get()), false)
                }
                _ => (None, false),
            };
            out.push((format!("{:?}", p.packet_type()), id, dup));
        }
        out
    }

    fn feed(&mut self, p: &Packet<'_>) -> Option<String> {
        let bytes = encode(p);
        match self.client.handle_read(self.now, &bytes) {
            Read::Packet { used, event } => {
                assert_eq!(used, bytes.len());
                event.map(|e| format!("{e:?}"))
            }
            other => panic!("{other:?}"),
        }
    }

    fn publish(&mut self, payload: &[u8], qos: QoS) {
        let msg = Publish {
            qos,
            ..Publish::new("t", payload)
        };
        self.client.publish(self.now, &msg, 5).unwrap();
    }
}

fn encode(p: &Packet<'_>) -> Vec<u8> {
    let mut b = vec![0; p.encoded_len(V).unwrap()];
    p.encode(V, &mut b).unwrap();
    b
}

fn id(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn s(t: &str, id: Option<u16>, dup: bool) -> (String, Option<u16>, bool) {
    (t.to_owned(), id, dup)
}

#[test]
fn memory_only_session_reports_no_records() {
    let mut p = Peer::new();
    p.connect(false);
    p.publish(b"a", QoS::AtLeastOnce);
    assert_eq!(p.client.poll_record(&mut [0; 64]).unwrap(), None);
    assert_eq!(p.sent(), vec![s("Publish", Some(1), false)]);
}

#[test]
fn qos1_waits_for_its_record_and_completion_deletes_it() {
    let mut disk = Disk::default();
    let mut p = Peer::journaled();
    p.connect(false);
    p.publish(b"a", QoS::AtLeastOnce);
    assert_eq!(p.sent(), vec![], "not sent before its record is durable");
    assert_eq!(p.records(&mut disk), 1);
    assert_eq!(p.sent(), vec![], "reported is not durable");
    p.client.handle_durable(disk.last_lsn);
    assert_eq!(p.sent(), vec![s("Publish", Some(1), false)]);
    // Sent with id 1: the record says so (not needed before sending QoS 1).
    assert_eq!(p.sync(&mut disk), 1);
    assert_eq!(disk.records.len(), 1);
    let ev = p.feed(&Packet::PubAck(Ack::new(id(1))));
    assert!(ev.unwrap().contains("Published"));
    assert_eq!(p.sync(&mut disk), 1);
    assert!(disk.records.is_empty(), "completed: nothing left on disk");
}

#[test]
fn qos0_is_not_journaled() {
    let mut disk = Disk::default();
    let mut p = Peer::journaled();
    p.connect(false);
    p.publish(b"a", QoS::AtMostOnce);
    assert_eq!(p.sent(), vec![s("Publish", None, false)]);
    assert_eq!(p.records(&mut disk), 0);
}

#[test]
fn qos2_id_and_pubrec_are_durable_before_publish_and_pubrel() {
    let mut disk = Disk::default();
    let mut p = Peer::journaled();
    p.connect(false);
    p.publish(b"a", QoS::ExactlyOnce);
    p.publish(b"b", QoS::ExactlyOnce);
    assert_eq!(p.sent(), vec![]);
    // Both took their ids before their first record: one record each, one sync for both.
    assert_eq!(p.sync(&mut disk), 2);
    assert_eq!(
        p.sent(),
        vec![s("Publish", Some(1), false), s("Publish", Some(2), false)]
    );
    p.sync(&mut disk);
    assert!(p.feed(&Packet::PubRec(Ack::new(id(1)))).is_none());
    assert_eq!(p.sent(), vec![], "PUBREL waits for the PUBREC record");
    assert_eq!(p.sync(&mut disk), 1);
    assert_eq!(p.sent(), vec![s("PubRel", Some(1), false)]);
    assert!(p.feed(&Packet::PubComp(Ack::new(id(1)))).is_some());
    p.sync(&mut disk);
    assert_eq!(disk.records.len(), 1, "only b is left");
}

#[test]
fn a_restart_resends_with_the_same_ids_when_the_session_was_kept() {
    let mut disk = Disk::default();
    let mut p = Peer::journaled();
    p.connect(false);
    p.publish(b"q1", QoS::AtLeastOnce);
    p.publish(b"q2", QoS::ExactlyOnce);
    p.publish(b"q2b", QoS::ExactlyOnce);
    // The driver's order: transmit (QoS 2 messages take their ids), write records, transmit.
    assert_eq!(p.sent(), vec![]);
    p.sync(&mut disk);
    let first = p.sent();
    let ids: Vec<u16> = first.iter().map(|(_, id, _)| id.unwrap()).collect();
    assert_eq!(first.len(), 3);
    p.sync(&mut disk);
    p.feed(&Packet::PubRec(Ack::new(id(ids[2]))));
    p.sync(&mut disk);
    // One more, never sent.
    p.publish(b"late", QoS::AtLeastOnce);
    p.sync(&mut disk);
    drop(p); // the process dies

    let mut p = Peer::restored(&mut disk);
    assert_eq!(p.client.pending(), 4);
    p.connect(true);
    let again = p.sent();
    assert_eq!(
        again[..3],
        [
            s("Publish", Some(ids[0]), true),
            s("Publish", Some(ids[1]), true),
            s("PubRel", Some(ids[2]), false),
        ]
    );
    assert_eq!(again.len(), 4);
    assert_eq!((&again[3].0[..], again[3].2), ("Publish", false));
    // New records continue the key space: nothing overwrites the restored ones.
    p.publish(b"new", QoS::AtLeastOnce);
    p.sync(&mut disk);
    assert_eq!(disk.records.len(), 5);
}

#[test]
fn a_restart_sends_everything_as_new_when_the_session_was_lost() {
    let mut disk = Disk::default();
    let mut p = Peer::journaled();
    p.connect(false);
    p.publish(b"q1", QoS::AtLeastOnce);
    p.publish(b"q2", QoS::ExactlyOnce);
    assert_eq!(p.sent(), vec![]);
    p.sync(&mut disk);
    assert_eq!(p.sent().len(), 2);
    p.sync(&mut disk);
    drop(p);

    let mut p = Peer::restored(&mut disk);
    p.connect(false);
    // The old ids are forgotten on disk before any is given again (two records with one id
    // could not be told apart after another restart).
    assert_eq!(p.sent(), vec![]);
    assert_eq!(p.sync(&mut disk), 2);
    // Then QoS 1 goes; the QoS 2 message takes a new id, recorded before it goes.
    assert_eq!(p.sent(), vec![s("Publish", Some(1), false)]);
    assert_eq!(p.sync(&mut disk), 2);
    assert_eq!(p.sent(), vec![s("Publish", Some(2), false)]);
}

#[test]
fn received_qos2_stays_deduplicated_across_a_restart() {
    let mut disk = Disk::default();
    let mut p = Peer::journaled();
    p.connect(false);
    let incoming = Packet::Publish(Publish {
        qos: QoS::ExactlyOnce,
        packet_id: Some(id(9)),
        ..Publish::new("in", b"x")
    });
    assert!(p.feed(&incoming).unwrap().contains("Message"));
    assert_eq!(p.sent(), vec![], "PUBREC waits for the record of id 9");
    assert_eq!(p.sync(&mut disk), 1);
    assert_eq!(p.sent(), vec![s("PubRec", Some(9), false)]);
    drop(p);

    let mut p = Peer::restored(&mut disk);
    p.connect(true);
    let dup = Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        packet_id: Some(id(9)),
        ..Publish::new("in", b"x")
    });
    assert_eq!(p.feed(&dup), None, "the resend is not delivered again");
    assert_eq!(p.sent(), vec![s("PubRec", Some(9), false)]);
    p.feed(&Packet::PubRel(Ack::new(id(9))));
    assert_eq!(
        p.sent(),
        vec![],
        "PUBCOMP waits for the delete of the id record"
    );
    assert_eq!(p.sync(&mut disk), 1);
    assert_eq!(p.sent(), vec![s("PubComp", Some(9), false)]);
    assert!(
        disk.records.is_empty(),
        "released: the id record is deleted"
    );
}

#[test]
fn a_released_id_is_not_held_after_a_restart_so_its_reuse_is_a_new_message() {
    let publish = |payload: &'static [u8]| {
        Packet::Publish(Publish {
            qos: QoS::ExactlyOnce,
            packet_id: Some(id(5)),
            ..Publish::new("in", payload)
        })
    };
    let mut disk = Disk::default();
    let mut p = Peer::journaled();
    p.connect(false);
    assert!(p.feed(&publish(b"first")).is_some());
    p.sync(&mut disk);
    assert_eq!(p.sent(), vec![s("PubRec", Some(5), false)]);
    p.feed(&Packet::PubRel(Ack::new(id(5))));
    assert_eq!(p.sent(), vec![], "no PUBCOMP before the delete is durable");
    drop(p); // killed before the delete was written: the server resends PUBREL

    let mut p = Peer::restored(&mut disk);
    p.connect(true);
    p.feed(&Packet::PubRel(Ack::new(id(5))));
    assert_eq!(p.sync(&mut disk), 1, "the restored id record is deleted");
    assert_eq!(p.sent(), vec![s("PubComp", Some(5), false)]);
    // The server reuses id 5 for a new message: it is delivered, not taken for a resend.
    let event = p
        .feed(&publish(b"second"))
        .expect("a new message is delivered");
    assert!(event.contains(&format!("{:?}", b"second")), "{event}");
}

#[test]
fn a_qos2_message_acked_by_hand_is_recorded_before_delivery_and_marked_after_a_restart() {
    let incoming = |dup| {
        Packet::Publish(Publish {
            dup,
            qos: QoS::ExactlyOnce,
            packet_id: Some(id(7)),
            ..Publish::new("in", b"x")
        })
    };
    let mut disk = Disk::default();
    let mut p = Peer::restored_with(&mut Disk::default(), true);
    p.connect(false);
    let event = p.feed(&incoming(false)).unwrap();
    assert!(event.contains("redelivered: false"), "{event}");
    assert!(
        p.client.rx_record_pending(id(7)),
        "the runtime holds the message until its record is durable"
    );
    assert_eq!(p.sync(&mut disk), 1, "recorded as delivered");
    assert!(!p.client.rx_record_pending(id(7)));
    assert_eq!(disk.records.values().next().unwrap(), &vec![2, 0, 7, 1]);
    drop(p); // killed while handling it

    // Not acknowledged: the server's resend is delivered again, marked.
    let mut p = Peer::restored_with(&mut disk, true);
    p.connect(true);
    let event = p.feed(&incoming(true)).unwrap();
    assert!(event.contains("redelivered: true"), "{event}");
    assert!(!p.client.rx_record_pending(id(7)), "already on disk");
    assert_eq!(
        p.feed(&incoming(true)),
        None,
        "a resend while it is handled"
    );
    p.client.ack(id(7), ReasonCode::Success).unwrap();
    assert_eq!(p.sent(), vec![], "PUBREC waits for the acknowledged record");
    assert_eq!(p.sync(&mut disk), 1, "the same key, rewritten");
    assert_eq!(
        disk.records.values().collect::<Vec<_>>(),
        vec![&vec![2, 0, 7]]
    );
    assert_eq!(p.sent(), vec![s("PubRec", Some(7), false)]);
    drop(p); // killed before PUBREL

    // Acknowledged: the resend is only acknowledged again.
    let mut p = Peer::restored_with(&mut disk, true);
    p.connect(true);
    assert_eq!(p.feed(&incoming(true)), None);
    assert_eq!(p.sent(), vec![s("PubRec", Some(7), false)]);
    p.feed(&Packet::PubRel(Ack::new(id(7))));
    p.sync(&mut disk);
    assert!(disk.records.is_empty());

    // A message first delivered after the restart is not marked, and a QoS 1 message that
    // reuses an interrupted id is a new message.
    let mut disk = Disk {
        records: BTreeMap::from([(1, vec![2, 0, 7, 1])]),
        last_lsn: 0,
    };
    let mut p = Peer::restored_with(&mut disk, true);
    p.connect(true);
    let other = Packet::Publish(Publish {
        qos: QoS::ExactlyOnce,
        packet_id: Some(id(8)),
        ..Publish::new("in", b"y")
    });
    assert!(p.feed(&other).unwrap().contains("redelivered: false"));
    let reused = Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        packet_id: Some(id(7)),
        ..Publish::new("in", b"z")
    });
    assert!(p.feed(&reused).unwrap().contains("redelivered: false"));
    p.sync(&mut disk);
    assert_eq!(
        disk.records.values().collect::<Vec<_>>(),
        vec![&vec![2, 0, 8, 1]],
        "the interrupted id's record is gone, the new one's is there"
    );
}

#[test]
fn evictions_delete_their_records() {
    let mut disk = Disk::default();
    let mut p = Peer::journaled();
    // Offline: everything is queued; 16 slots.
    for n in 0..16u8 {
        let payload = [n];
        let msg = Publish {
            qos: QoS::AtLeastOnce,
            ..Publish::new("t", &payload)
        };
        p.client.publish(p.now, &msg, 1).unwrap();
    }
    p.sync(&mut disk);
    assert_eq!(disk.records.len(), 16);
    let important = Publish {
        qos: QoS::AtLeastOnce,
        ..Publish::new("t", b"important")
    };
    p.client.publish(p.now, &important, 9).unwrap();
    assert!(matches!(
        p.client.poll_notice(),
        Some(Notice::Evicted { .. })
    ));
    assert_eq!(p.sync(&mut disk), 2, "one delete, one put");
    assert_eq!(disk.records.len(), 16);
}

#[test]
fn damaged_records_are_refused() {
    let mut p = Peer::new();
    assert_eq!(p.client.restore(1, b""), Err(RestoreError::Malformed));
    assert_eq!(
        p.client.restore(1, &[1, 0, 0, 5, 0, 0, 0x30]),
        Err(RestoreError::Malformed)
    );
    assert_eq!(
        p.client.restore(2, &[2, 0, 0]),
        Err(RestoreError::Malformed)
    );
    assert_eq!(
        p.client.restore(0, &[2, 0, 1]),
        Err(RestoreError::Malformed)
    );
    assert_eq!(p.client.restore(3, &[2, 0, 1]), Ok(()));
    p.client.enable_journal();
    assert_eq!(p.client.restore(4, &[2, 0, 2]), Err(RestoreError::TooLate));
}

/// Random publishes, transmissions, acknowledgments, partial syncs and crashes: a QoS 1/2
/// PUBLISH never goes out before a durable record of it (for QoS 2, of its packet id), a
/// PUBREL never before a durable record of its PUBREC, and after a crash the session holds
/// exactly the messages whose records were durable.
#[test]
fn nothing_goes_out_ahead_of_its_durable_record() {
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Publish(bool),
        Transmit,
        Records,
        Durable(usize),
        Ack(usize),
        Crash(bool),
        /// The server sends QoS 2 message with this id (again, if it is in progress).
        Incoming(u16),
        /// The server releases a QoS 2 message it got PUBREC for.
        Release(usize),
    }
    let op = prop_oneof![
        3 => any::<bool>().prop_map(Op::Publish),
        3 => Just(Op::Transmit),
        2 => Just(Op::Records),
        2 => (0usize..8).prop_map(Op::Durable),
        3 => (0usize..8).prop_map(Op::Ack),
        1 => any::<bool>().prop_map(Op::Crash),
        2 => (1u16..4).prop_map(Op::Incoming),
        1 => (0usize..4).prop_map(Op::Release),
    ];

    /// (packet id, payload, state code) of an outgoing record.
    fn parse(rec: &[u8]) -> Option<(u16, Vec<u8>, u8)> {
        if rec.first() != Some(&1) {
            return None;
        }
        let Ok(Status::Complete((Packet::Publish(p), _))) = decode(&rec[6..], V, usize::MAX) else {
            return None;
        };
        Some((
            u16::from_be_bytes([rec[4], rec[5]]),
            p.payload.to_vec(),
            rec[2],
        ))
    }

    proptest!(ProptestConfig::with_cases(200), |(ops in proptest::collection::vec(op, 1..120))| {
        let mut p = Peer::journaled();
        p.connect(false);
        // The durable records, and those reported but not yet durable (in order).
        let mut durable: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut pending: Vec<(u64, u64, Option<Vec<u8>>)> = Vec::new();
        // Packets the "broker" owes an answer to: (id, what it answers with).
        let mut owed: Vec<(u16, u8)> = Vec::new();
        let mut next = 0u32;
        // Incoming QoS 2 ids the client sent PUBREC for.
        let mut recd: Vec<u16> = Vec::new();
        // Incoming ids in progress (not released): a PUBREC queued for a resend that is
        // written after the release is stale and harmless, and needs no record.
        let mut live: BTreeSet<u16> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Publish(two) => {
                    let payload = next.to_be_bytes();
                    next += 1;
                    let msg = Publish {
                        qos: if two { QoS::ExactlyOnce } else { QoS::AtLeastOnce },
                        ..Publish::new("t", &payload)
                    };
                    let _ = p.client.publish(p.now, &msg, 5);
                }
                Op::Transmit => {
                    let mut buf = [0u8; 256];
                    while let Some(n) = p.client.poll_transmit(p.now, &mut buf).unwrap() {
                        let Ok(Status::Complete((packet, _))) = decode(&buf[..n], V, usize::MAX) else {
                            panic!("invalid packet");
                        };
                        match packet {
                            Packet::Publish(m) => {
                                let id = m.packet_id.unwrap().get();
                                let on_disk = durable.values().filter_map(|r| parse(r)).find(|r| r.1 == m.payload);
                                let Some((rid, _, _)) = on_disk else {
                                    panic!("PUBLISH {:?} sent before its record was durable", m.payload);
                                };
                                if m.qos == QoS::ExactlyOnce {
                                    prop_assert_eq!(rid, id, "QoS 2 sent before the record of its id");
                                }
                                owed.push((id, if m.qos == QoS::ExactlyOnce { 5 } else { 4 }));
                            }
                            Packet::PubRel(a) => {
                                let id = a.packet_id.get();
                                let recorded = durable.values().filter_map(|r| parse(r)).any(|r| r.0 == id && r.2 == 3);
                                prop_assert!(recorded, "PUBREL {} before its PUBREC record was durable", id);
                                owed.push((id, 7));
                            }
                            Packet::PubRec(a) => {
                                let id = a.packet_id.get();
                                let rx = [2u8, (id >> 8) as u8, id as u8];
                                let recorded = !live.contains(&id) || durable.values().any(|r| r[..] == rx);
                                prop_assert!(recorded, "PUBREC {} before the record of the id was durable", id);
                                recd.push(id);
                            }
                            _ => {}
                        }
                    }
                }
                Op::Records => {
                    while let Some(r) = p.client.poll_record(&mut p.buf).unwrap() {
                        let value = match r.change {
                            Change::Put(n) => Some(p.buf[..n].to_vec()),
                            Change::Delete => None,
                        };
                        pending.push((r.lsn, r.key, value));
                    }
                }
                Op::Durable(k) => {
                    let k = k.min(pending.len());
                    if k > 0 {
                        let lsn = pending[k - 1].0;
                        for (_, key, value) in pending.drain(..k) {
                            match value {
                                Some(v) => { durable.insert(key, v); }
                                None => { durable.remove(&key); }
                            }
                        }
                        p.client.handle_durable(lsn);
                    }
                }
                Op::Ack(i) => {
                    if owed.is_empty() {
                        continue;
                    }
                    let (id, kind) = owed.remove(i % owed.len());
                    let packet = match kind {
                        4 => Packet::PubAck(Ack::new(PacketId::new(id).unwrap())),
                        5 => Packet::PubRec(Ack::new(PacketId::new(id).unwrap())),
                        _ => Packet::PubComp(Ack::new(PacketId::new(id).unwrap())),
                    };
                    let bytes = encode(&packet);
                    match p.client.handle_read(p.now, &bytes) {
                        Read::Packet { .. } => {}
                        // Acknowledgments owed wait for their records: read again later.
                        Read::TransmitFirst => owed.push((id, kind)),
                        other => prop_assert!(false, "an acknowledgment was refused: {:?}", other),
                    }
                }
                Op::Incoming(id) => {
                    let packet = Packet::Publish(Publish {
                        qos: QoS::ExactlyOnce,
                        packet_id: Some(PacketId::new(id).unwrap()),
                        ..Publish::new("in", b"x")
                    });
                    let bytes = encode(&packet);
                    // Refused for now (TransmitFirst): as if the server had not sent it yet.
                    if matches!(p.client.handle_read(p.now, &bytes), Read::Packet { .. }) {
                        live.insert(id);
                    }
                }
                Op::Release(i) => {
                    if recd.is_empty() {
                        continue;
                    }
                    let id = recd.remove(i % recd.len());
                    live.remove(&id);
                    let bytes = encode(&Packet::PubRel(Ack::new(PacketId::new(id).unwrap())));
                    let _ = p.client.handle_read(p.now, &bytes);
                }
                Op::Crash(session_present) => {
                    // What was not durable is gone.
                    pending.clear();
                    owed.clear();
                    recd.clear();
                    live = durable
                        .values()
                        .filter(|r| r.first() == Some(&2))
                        .map(|r| u16::from_be_bytes([r[1], r[2]]))
                        .collect();
                    let mut disk = Disk { records: durable.clone(), last_lsn: 0 };
                    p = Peer::restored(&mut disk);
                    let kept = durable.values().filter(|r| r.first() == Some(&1)).count();
                    let ids = durable.values().filter(|r| r.first() == Some(&2)).count();
                    // Each durable received id is known: the server's resend is not delivered.
                    prop_assert!(ids <= 4);
                    prop_assert_eq!(p.client.pending(), kept);
                    p.connect(session_present);
                    if !session_present {
                        // A new broker session: what it owed is forgotten with it.
                        owed.clear();
                    }
                }
            }
        }
    });
}
