//! The broker driven from several threads as its crate docs describe: every thread owns its
//! connections (here our own client state machines), feeds their bytes to the shared broker
//! under a short lock, and moves what `poll_wake` names into the write buffer of whichever
//! connection it belongs to, on any thread. Every message must arrive once, in order.

use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant as StdInstant};

use mqtt_proto::{ProtocolVersion, Publish, QoS, SubscriptionOptions, TopicFilter};
use mqtt_session::broker::{Broker, Config, ConnId};
use mqtt_session::{ConnectOptions, Event, HeapClient, Instant, Read};

const THREADS: usize = 4;
const PER_PUBLISHER: u32 = 200;

type Outboxes = Arc<Mutex<HashMap<ConnId, Vec<u8>>>>;

struct Peer {
    client: Box<HeapClient<64>>,
    conn: ConnId,
    inbox: Vec<u8>,
    up: Vec<u8>,
    got: Vec<(String, u32)>,
    acked: u32,
}

/// One pass: each peer's bytes into the broker, then every woken connection drained into its
/// outbox, all under one short lock.
fn pump(broker: &Mutex<Broker>, outboxes: &Outboxes, peers: &mut [Peer]) {
    let now = Instant::ZERO;
    let mut buf = vec![0u8; 4096];
    for p in peers.iter_mut() {
        while let Some(n) = p.client.poll_transmit(now, &mut buf).expect("transmit") {
            p.up.extend_from_slice(&buf[..n]);
        }
    }
    {
        let mut b = broker.lock().expect("broker lock");
        for p in peers.iter_mut() {
            if !p.up.is_empty() {
                let used = b.handle_read(p.conn, now, &p.up).expect("read");
                p.up.drain(..used);
            }
        }
        let mut out = outboxes.lock().expect("outbox lock");
        while let Some(conn) = b.poll_wake() {
            let target = out.entry(conn).or_default();
            while let Some(n) = b
                .poll_transmit(conn, now, &mut buf)
                .expect("broker transmit")
            {
                target.extend_from_slice(&buf[..n]);
            }
        }
    }
    for p in peers.iter_mut() {
        if let Some(bytes) = outboxes.lock().expect("outbox lock").get_mut(&p.conn) {
            p.inbox.append(bytes);
        }
        while let Read::Packet { used, event } = p.client.handle_read(now, &p.inbox) {
            match event {
                Some(Event::Message(m)) => {
                    let seq = u32::from_be_bytes(m.payload.try_into().expect("4 bytes"));
                    p.got.push((m.topic.to_string(), seq));
                }
                Some(Event::Published { .. }) => p.acked += 1,
                _ => {}
            }
            p.inbox.drain(..used);
        }
    }
}

#[test]
fn n_threads_drive_one_broker_and_every_message_arrives_once_in_order() {
    let broker = Arc::new(Mutex::new(Broker::new(Config::default())));
    let outboxes: Outboxes = Arc::default();
    let subscribed = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (broker, outboxes, subscribed) =
                (broker.clone(), outboxes.clone(), subscribed.clone());
            std::thread::spawn(move || {
                let mut peers: Vec<Peer> = ["sub", "pub"]
                    .iter()
                    .map(|role| {
                        let cfg = mqtt_session::Config {
                            version: ProtocolVersion::V5,
                            keep_alive: 0,
                            ..mqtt_session::Config::default()
                        };
                        let mut client = Box::new(HeapClient::with_capacity(cfg, 1024, 1 << 20));
                        let id = format!("{role}{t}");
                        let mut buf = vec![0u8; 256];
                        let opts = ConnectOptions {
                            client_id: &id,
                            ..Default::default()
                        };
                        let n = client
                            .connect(Instant::ZERO, &opts, &mut buf)
                            .expect("connect");
                        let conn = broker.lock().expect("lock").handle_open(Instant::ZERO);
                        Peer {
                            client,
                            conn,
                            inbox: Vec::new(),
                            up: buf[..n].to_vec(),
                            got: Vec::new(),
                            acked: 0,
                        }
                    })
                    .collect();
                let filter = TopicFilter::new("load/#").expect("filter");
                peers[0]
                    .client
                    .subscribe(
                        Instant::ZERO,
                        &[(filter, SubscriptionOptions::new(QoS::AtLeastOnce))],
                        &[],
                    )
                    .expect("subscribe");
                let deadline = StdInstant::now() + Duration::from_secs(30);
                while peers[0].client.subscriptions() == 0 {
                    pump(&broker, &outboxes, &mut peers);
                    assert!(StdInstant::now() < deadline, "no SUBACK");
                }
                subscribed.wait();
                let topic = format!("load/{t}");
                let mut sent = 0;
                while peers[0].got.len() < THREADS * PER_PUBLISHER as usize
                    || peers[1].acked < PER_PUBLISHER
                {
                    // Keep a few publishes in flight at a time.
                    while sent < PER_PUBLISHER && sent < peers[1].acked + 8 {
                        sent += 1;
                        let payload = sent.to_be_bytes();
                        let msg = Publish {
                            qos: QoS::AtLeastOnce,
                            ..Publish::new(&topic, &payload)
                        };
                        peers[1]
                            .client
                            .publish(Instant::ZERO, &msg, 5)
                            .expect("publish");
                    }
                    pump(&broker, &outboxes, &mut peers);
                    assert!(
                        StdInstant::now() < deadline,
                        "stalled: {} received",
                        peers[0].got.len()
                    );
                }
                std::mem::take(&mut peers[0].got)
            })
        })
        .collect();
    for h in handles {
        let got = h.join().expect("thread");
        assert_eq!(
            got.len(),
            THREADS * PER_PUBLISHER as usize,
            "each message once"
        );
        for t in 0..THREADS {
            let topic = format!("load/{t}");
            let seqs: Vec<u32> = got
                .iter()
                .filter(|(tp, _)| *tp == topic)
                .map(|(_, s)| *s)
                .collect();
            assert_eq!(
                seqs,
                (1..=PER_PUBLISHER).collect::<Vec<_>>(),
                "order from {topic}"
            );
        }
    }
    let st = broker.lock().expect("lock").stats();
    assert_eq!(
        st.messages_received,
        u64::from(PER_PUBLISHER) * THREADS as u64
    );
    assert_eq!(st.messages_sent, st.messages_received * THREADS as u64);
}
