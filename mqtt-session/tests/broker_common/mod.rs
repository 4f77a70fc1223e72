//! The deterministic harness of the broker tests: the broker core and several peers joined in
//! memory on a fake clock that jumps to the earliest deadline.
//!
//! A peer is either our own client state machine (`HeapClient`), whose events are recorded,
//! or a raw connection written packet by packet, for tests that assert exact bytes. Every
//! packet the broker writes to any peer is kept as bytes and decoded (which checks it is valid
//! for that peer's protocol version).
#![allow(dead_code)]

pub mod model;

use mqtt_proto::{
    Connect, Packet, PacketId, Properties, Property, ProtocolVersion, QoS, ReasonCode, Status,
    SubscriptionOptions, TopicName, Will, decode,
};
use mqtt_session::broker::shard::Shard;
use mqtt_session::broker::{Answer, Broker, Config, ConnId, Event, Question, Record};
use mqtt_session::{ConnectOptions, ConnectionError, HeapClient, Instant, Notice, Read};

pub use mqtt_session::Config as ClientConfig;

pub const V5: ProtocolVersion = ProtocolVersion::V5;
pub const V311: ProtocolVersion = ProtocolVersion::V311;

/// A message a client peer received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    pub packet_id: Option<PacketId>,
    pub sub_ids: Vec<u32>,
    pub user: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation: Option<Vec<u8>>,
    pub expiry: Option<u32>,
}

/// What a client peer saw, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Connected { present: bool },
    Message(Msg),
    Published { token: u32, rc: ReasonCode },
    Subscribed { codes: Vec<ReasonCode> },
    Unsubscribed { codes: Vec<ReasonCode> },
    Auth { rc: ReasonCode },
    Lost(ConnectionError),
    Dropped { token: u32, rc: ReasonCode },
}

pub enum Kind {
    Client(Box<HeapClient<64>>),
    Raw,
}

pub struct Peer {
    pub kind: Kind,
    pub version: ProtocolVersion,
    pub conn: Option<ConnId>,
    /// Bytes written to the broker, not consumed yet.
    pub up: Vec<u8>,
    /// Bytes from the broker the client has not read yet.
    pub down: Vec<u8>,
    /// Every packet the broker sent this peer, as bytes.
    pub frames: Vec<Vec<u8>>,
    /// Frames already returned by `take_frames`.
    pub seen: usize,
    pub got: Vec<Got>,
    /// Whether the broker closed this peer's connection.
    pub closed: bool,
    /// While set, nothing moves from this peer to the broker (bytes wait in `up`, and are
    /// lost if the transport drops): a stalled network.
    pub paused: bool,
    /// The same for the other direction (bytes wait in `down`).
    pub paused_down: bool,
}

pub type Answerer = Box<dyn FnMut(&Question) -> Option<Answer>>;

pub struct Net {
    pub broker: Broker,
    pub now: Instant,
    pub peers: Vec<Peer>,
    pub records: Vec<Record>,
    pub closes: Vec<(ConnId, mqtt_session::broker::CloseReason)>,
    pub questions: Vec<Question>,
    pub answer: Option<Answerer>,
    /// Call `handle_durable` after every pump (as a store that writes at once).
    pub auto_durable: bool,
}

impl Net {
    pub fn new(cfg: Config) -> Self {
        Net::with_broker(Broker::new(cfg))
    }

    pub fn with_broker(broker: Broker) -> Self {
        Net {
            broker,
            now: Instant::ZERO,
            peers: Vec::new(),
            records: Vec::new(),
            closes: Vec::new(),
            questions: Vec::new(),
            answer: None,
            auto_durable: true,
        }
    }

    /// Adds a client peer (not connected yet); returns its index.
    pub fn client(&mut self, cfg: ClientConfig) -> usize {
        self.peers.push(Peer {
            version: cfg.version,
            kind: Kind::Client(Box::new(HeapClient::with_capacity(cfg, 4096, 4 << 20))),
            conn: None,
            up: Vec::new(),
            down: Vec::new(),
            frames: Vec::new(),
            seen: 0,
            got: Vec::new(),
            closed: false,
            paused: false,
            paused_down: false,
        });
        self.peers.len() - 1
    }

    /// Adds a raw peer with an open connection; returns its index.
    pub fn raw(&mut self, version: ProtocolVersion) -> usize {
        let conn = self.broker.handle_open(self.now);
        self.peers.push(Peer {
            kind: Kind::Raw,
            version,
            conn: Some(conn),
            up: Vec::new(),
            down: Vec::new(),
            frames: Vec::new(),
            seen: 0,
            got: Vec::new(),
            closed: false,
            paused: false,
            paused_down: false,
        });
        self.peers.len() - 1
    }

    pub fn cl(&mut self, i: usize) -> &mut HeapClient<64> {
        match &mut self.peers[i].kind {
            Kind::Client(c) => c,
            Kind::Raw => panic!("peer {i} is raw"),
        }
    }

    /// Opens a connection for client peer `i` and sends its CONNECT; then runs.
    pub fn connect(&mut self, i: usize, opts: &ConnectOptions<'_>) {
        let now = self.now;
        let conn = self.broker.handle_open(now);
        let mut buf = vec![0u8; 65_536];
        let n = self.cl(i).connect(now, opts, &mut buf).expect("connect");
        let p = &mut self.peers[i];
        p.conn = Some(conn);
        p.closed = false;
        p.paused = false;
        p.paused_down = false;
        p.up.clear();
        p.down.clear();
        p.up.extend_from_slice(&buf[..n]);
        self.run();
    }

    pub fn connect_id(&mut self, i: usize, id: &str) {
        self.connect(
            i,
            &ConnectOptions {
                client_id: id,
                ..Default::default()
            },
        );
    }

    /// Sends a raw packet from peer `i` (encoded for its version) and runs.
    pub fn send(&mut self, i: usize, packet: &Packet<'_>) {
        let v = self.peers[i].version;
        let mut buf = vec![0u8; packet.encoded_len(v).expect("encodable")];
        packet.encode(v, &mut buf).expect("encode");
        self.send_bytes(i, &buf);
    }

    pub fn send_bytes(&mut self, i: usize, bytes: &[u8]) {
        self.peers[i].up.extend_from_slice(bytes);
        self.run();
    }

    /// Stalls (or resumes) the network between peer `i` and the broker, per direction.
    pub fn pause(&mut self, i: usize, up: bool, down: bool) {
        self.peers[i].paused = up;
        self.peers[i].paused_down = down;
        self.run();
    }

    /// Drops peer `i`'s transport without DISCONNECT; bytes on the wire are lost.
    pub fn drop_transport(&mut self, i: usize) {
        let now = self.now;
        self.peers[i].up.clear();
        self.peers[i].down.clear();
        self.peers[i].paused = false;
        self.peers[i].paused_down = false;
        if let Some(conn) = self.peers[i].conn.take() {
            let _ = self.broker.handle_close(conn, now);
        }
        if let Kind::Client(c) = &mut self.peers[i].kind {
            c.handle_disconnect(now);
        }
        self.run();
    }

    /// Moves bytes and events until nothing changes.
    pub fn run(&mut self) {
        let now = self.now;
        let mut buf = vec![0u8; 1 << 21];
        for _round in 0..100_000 {
            let mut progress = false;
            for i in 0..self.peers.len() {
                // Client → broker.
                let p = &mut self.peers[i];
                if let Kind::Client(c) = &mut p.kind {
                    while let Some(n) = c.poll_transmit(now, &mut buf).expect("client transmit") {
                        p.up.extend_from_slice(&buf[..n]);
                        progress = true;
                    }
                    while let Some(notice) = c.poll_notice() {
                        p.got.push(match notice {
                            Notice::ConnectionLost(e) => Got::Lost(e),
                            Notice::Dropped { token, reason_code } => Got::Dropped {
                                token,
                                rc: reason_code,
                            },
                            _ => continue,
                        });
                    }
                }
                let p = &mut self.peers[i];
                if let Some(conn) = p.conn
                    && !p.up.is_empty()
                    && !p.paused
                {
                    let used = self.broker.handle_read(conn, now, &p.up).expect("read");
                    if used > 0 {
                        p.up.drain(..used);
                        progress = true;
                    }
                }
            }
            // Broker → peers.
            while let Some(conn) = self.broker.poll_wake() {
                let Some(i) = self.peers.iter().position(|p| p.conn == Some(conn)) else {
                    // A connection the peer already dropped: drain and forget.
                    while let Ok(Some(_)) = self.broker.poll_transmit(conn, now, &mut buf) {}
                    continue;
                };
                while let Some(n) = self.broker.poll_transmit(conn, now, &mut buf).expect("tx") {
                    let p = &mut self.peers[i];
                    let frame = buf[..n].to_vec();
                    // Every packet decodes for the peer's version and fits in one write.
                    match decode(&frame, p.version, usize::MAX) {
                        Ok(Status::Complete((_, used))) => assert_eq!(used, n),
                        other => panic!("broker wrote an invalid packet {frame:?}: {other:?}"),
                    }
                    p.down.extend_from_slice(&frame);
                    p.frames.push(frame);
                    progress = true;
                }
            }
            while let Some(r) = self.broker.poll_record() {
                self.records.push(r);
                progress = true;
            }
            if self.auto_durable {
                self.broker.handle_durable(self.broker.last_seq());
            }
            while let Some(e) = self.broker.poll_event() {
                progress = true;
                match e {
                    Event::Ask(q) => {
                        self.questions.push(q.clone());
                        let conn = match &q {
                            Question::Connect { conn, .. } | Question::Auth { conn, .. } => *conn,
                            _ => continue,
                        };
                        if let Some(a) = self.answer.as_mut().and_then(|f| f(&q)) {
                            self.broker
                                .handle_auth_answer(conn, now, a)
                                .expect("answer");
                        }
                    }
                    Event::Close { conn, reason } => {
                        self.closes.push((conn, reason));
                        // Flush, then close the transport.
                        let Some(i) = self.peers.iter().position(|p| p.conn == Some(conn)) else {
                            continue;
                        };
                        while let Some(n) =
                            self.broker.poll_transmit(conn, now, &mut buf).expect("tx")
                        {
                            let frame = buf[..n].to_vec();
                            self.peers[i].down.extend_from_slice(&frame);
                            self.peers[i].frames.push(frame);
                        }
                        self.broker.handle_close(conn, now).expect("close");
                        let p = &mut self.peers[i];
                        p.conn = None;
                        p.closed = true;
                        p.up.clear();
                        self.feed(i);
                        if let Kind::Client(c) = &mut self.peers[i].kind {
                            c.handle_disconnect(now);
                        }
                    }
                    _ => {}
                }
            }
            for i in 0..self.peers.len() {
                if self.feed(i) {
                    progress = true;
                }
            }
            if !progress {
                return;
            }
        }
        panic!("the network did not settle");
    }

    /// Lets client peer `i` read what the broker sent; returns whether it consumed anything.
    fn feed(&mut self, i: usize) -> bool {
        let now = self.now;
        let p = &mut self.peers[i];
        let Kind::Client(c) = &mut p.kind else {
            p.down.clear();
            return false;
        };
        let mut any = false;
        if p.paused_down {
            return false;
        }
        loop {
            if p.down.is_empty() {
                return any;
            }
            let (used, got) = match c.handle_read(now, &p.down) {
                Read::Packet { used, event } => (used, event.and_then(owned)),
                Read::NeedMore(_) => return any,
                Read::TransmitFirst => return any,
                Read::Closed => {
                    p.down.clear();
                    return any;
                }
            };
            any = true;
            p.down.drain(..used);
            if let Some(g) = got {
                p.got.push(g);
            }
        }
    }

    /// The next deadline of the broker or any client.
    pub fn next_deadline(&self) -> Option<Instant> {
        let clients = self.peers.iter().filter_map(|p| match &p.kind {
            Kind::Client(c) => c.poll_timeout(),
            Kind::Raw => None,
        });
        clients.chain(self.broker.poll_timeout()).min()
    }

    /// Jumps the clock to the earliest deadline (if at or before `limit`) and handles it.
    pub fn step(&mut self, limit: Instant) -> bool {
        let Some(t) = self.next_deadline().filter(|t| *t <= limit) else {
            return false;
        };
        self.now = self.now.max(t);
        let now = self.now;
        self.broker.handle_timeout(now);
        for p in &mut self.peers {
            if let Kind::Client(c) = &mut p.kind {
                c.handle_timeout(now);
            }
        }
        self.run();
        true
    }

    /// Advances the clock to `t`, handling every deadline on the way.
    pub fn advance_to(&mut self, t: Instant) {
        for _ in 0..1_000_000 {
            if !self.step(t) {
                break;
            }
        }
        self.now = self.now.max(t);
        let now = self.now;
        self.broker.handle_timeout(now);
        self.run();
    }

    pub fn advance_ms(&mut self, ms: u64) {
        let t = Instant::from_millis(self.now.as_millis() + ms);
        self.advance_to(t);
    }

    /// Messages client peer `i` received so far, removing them.
    pub fn messages(&mut self, i: usize) -> Vec<Msg> {
        let got = std::mem::take(&mut self.peers[i].got);
        let (msgs, rest): (Vec<_>, Vec<_>) =
            got.into_iter().partition(|g| matches!(g, Got::Message(_)));
        self.peers[i].got = rest;
        msgs.into_iter()
            .map(|g| match g {
                Got::Message(m) => m,
                _ => unreachable!(),
            })
            .collect()
    }

    /// Packets the broker sent peer `i` since the last call, as bytes.
    pub fn take_frames(&mut self, i: usize) -> Vec<Vec<u8>> {
        let p = &mut self.peers[i];
        let new = p.frames[p.seen..].to_vec();
        p.seen = p.frames.len();
        new
    }
}

/// Decodes one frame the broker sent for `version`.
pub fn packet(frame: &[u8], version: ProtocolVersion) -> Packet<'_> {
    match decode(frame, version, usize::MAX) {
        Ok(Status::Complete((p, _))) => p,
        other => panic!("not a packet: {other:?}"),
    }
}

fn owned(e: mqtt_session::Event<'_>) -> Option<Got> {
    use mqtt_session::Event as E;
    Some(match e {
        E::Connected { session_present } => Got::Connected {
            present: session_present,
        },
        E::Message(m) => {
            let mut msg = Msg {
                topic: m.topic.to_string(),
                payload: m.payload.to_vec(),
                qos: m.qos,
                retain: m.retain,
                packet_id: m.packet_id,
                sub_ids: Vec::new(),
                user: Vec::new(),
                content_type: None,
                response_topic: None,
                correlation: None,
                expiry: None,
            };
            for p in m.properties.iter() {
                match p {
                    Property::SubscriptionIdentifier(id) => msg.sub_ids.push(id),
                    Property::UserProperty(k, v) => msg.user.push((k.into(), v.into())),
                    Property::ContentType(s) => msg.content_type = Some(s.into()),
                    Property::ResponseTopic(s) => msg.response_topic = Some(s.into()),
                    Property::CorrelationData(d) => msg.correlation = Some(d.to_vec()),
                    Property::MessageExpiryInterval(e) => msg.expiry = Some(e),
                    _ => {}
                }
            }
            Got::Message(msg)
        }
        E::Published { token, reason_code } => Got::Published {
            token,
            rc: reason_code,
        },
        E::Subscribed { reason_codes, .. } => Got::Subscribed {
            codes: reason_codes.iter().collect(),
        },
        E::Unsubscribed { reason_codes, .. } => Got::Unsubscribed {
            codes: reason_codes.iter().collect(),
        },
        E::Auth { reason_code, .. } => Got::Auth { rc: reason_code },
        _ => return None,
    })
}

/// A client configuration for `version` with defaults suited to the tests.
pub fn ccfg(version: ProtocolVersion) -> ClientConfig {
    ClientConfig {
        version,
        keep_alive: 0,
        ..ClientConfig::default()
    }
}

/// Subscribes client peer `i` to one filter and runs.
pub fn subscribe(net: &mut Net, i: usize, filter: &str, opts: mqtt_proto::SubscriptionOptions) {
    let f = mqtt_proto::TopicFilter::new(filter).expect("filter");
    let now = net.now;
    net.cl(i)
        .subscribe(now, &[(f, opts)], &[])
        .expect("subscribe");
    net.run();
}

/// Publishes from client peer `i` and runs; returns the token.
pub fn publish(
    net: &mut Net,
    i: usize,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
) -> u32 {
    let msg = mqtt_proto::Publish {
        qos,
        retain,
        ..mqtt_proto::Publish::new(topic, payload)
    };
    let now = net.now;
    let t = net.cl(i).publish(now, &msg, 5).expect("publish");
    net.run();
    t
}

pub fn will<'a>(topic: &'a str, payload: &'a [u8], props: &'a [Property<'a>]) -> Will<'a> {
    Will {
        topic: TopicName::new(topic).unwrap(),
        payload,
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::new(props),
    }
}

/// Raw v5 CONNECT with properties.
pub fn connect_v5<'a>(id: &'a str, clean: bool, props: &'a [Property<'a>]) -> Packet<'a> {
    Packet::Connect(Connect {
        clean_start: clean,
        properties: Properties::new(props),
        ..Connect::new(ProtocolVersion::V5, id, 0)
    })
}

pub fn raw_subscribe<'a>(
    id: u16,
    filters: &'a [(mqtt_proto::TopicFilter<'a>, SubscriptionOptions)],
    props: &'a [Property<'a>],
) -> Packet<'a> {
    Packet::Subscribe(mqtt_proto::Subscribe {
        packet_id: pid(id),
        properties: Properties::new(props),
        filters: mqtt_proto::Filters::new(filters),
    })
}

pub fn filter(f: &str) -> mqtt_proto::TopicFilter<'_> {
    mqtt_proto::TopicFilter::new(f).unwrap()
}

/// A PUBLISH as (dup, qos, packet id, topic, payload).
pub type Pub = (bool, QoS, Option<u16>, String, Vec<u8>);

/// The PUBLISH packets among frames.
pub fn publishes(frames: &[Vec<u8>], v: ProtocolVersion) -> Vec<Pub> {
    frames
        .iter()
        .filter_map(|f| match packet(f, v) {
            Packet::Publish(p) => Some((
                p.dup,
                p.qos,
                p.packet_id.map(|i| i.get()),
                p.topic.to_string(),
                p.payload.to_vec(),
            )),
            _ => None,
        })
        .collect()
}

pub fn connack(frame: &[u8], v: ProtocolVersion) -> mqtt_proto::ConnAck<'_> {
    match packet(frame, v) {
        Packet::ConnAck(a) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

pub fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

pub fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::new(qos)
}

/// `n` sibling brokers, one harness each.
pub struct Siblings {
    pub nets: Vec<Net>,
}

impl Siblings {
    pub fn new(n: u16) -> Self {
        Self::with(n, Config::default())
    }

    pub fn with(n: u16, cfg: Config) -> Self {
        let nets = (0..n)
            .map(|index| {
                Net::new(Config {
                    shard: Shard { index, count: n },
                    ..cfg.clone()
                })
            })
            .collect();
        Siblings { nets }
    }

    /// Hands every forward to its siblings, in order, until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            for net in &mut self.nets {
                net.run();
            }
            if !self.pump() {
                return;
            }
        }
        panic!("the siblings did not settle");
    }

    /// Hands what each sibling forwarded so far to the others, once, in order (as channels
    /// between cores would, late); then runs them. Whether anything moved.
    pub fn pump(&mut self) -> bool {
        let mut moved = false;
        for from in 0..self.nets.len() {
            while let Some(f) = self.nets[from].broker.poll_forward() {
                moved = true;
                for to in 0..self.nets.len() {
                    if to == from || f.to.is_some_and(|t| usize::from(t) != to) {
                        continue;
                    }
                    let now = self.nets[to].now;
                    let from = u16::try_from(from).unwrap();
                    self.nets[to]
                        .broker
                        .handle_forward(now, from, f.relay.clone());
                }
            }
        }
        for net in &mut self.nets {
            net.run();
        }
        moved
    }
}
