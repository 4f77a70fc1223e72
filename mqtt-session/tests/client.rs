//! Deterministic tests of the sans-IO client against a scripted broker on a fake clock.
//!
//! The harness ([`H`]) owns a [`Client`], a millisecond clock that only moves when a test moves
//! it, and drives the client the way the crate docs tell a runtime to: `connect`, `handle_read`
//! (with `TransmitFirst` honoured), `poll_transmit` drained until `None`, `poll_timeout` /
//! `handle_timeout`, and `poll_notice`. Every packet the client writes is decoded with
//! `mqtt_proto::decode` into an owned [`Out`] so tests assert on exact packets (and a few on exact
//! bytes); broker packets are built with the `mqtt_proto` API and encoded for the connection's
//! protocol version.
//!
//! Scenarios that apply to both protocol versions are plain functions taking the version; the
//! `both!` list at the end turns each into a `v311::name` and a `v5::name` test.
//!
//! The proptests at the end run random interleavings of publishes in both directions,
//! subscribes, partial delivery of the bytes on the wire, connection drops and reconnects against
//! a model broker (one with the session always kept, one where a drop may also lose it), and
//! feed arbitrary bytes after CONNECT. `all_packet_ids_in_use` holds all 65535 ids in the
//! heap-backed client.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use mqtt_proto::QoS::{AtLeastOnce as Q1, AtMostOnce as Q0, ExactlyOnce as Q2};
use mqtt_proto::{
    Ack, ConnAck, DecodeError, Disconnect, EncodeError, Packet, PacketId, Properties, Property,
    ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, Status, SubAck, SubscriptionOptions,
    TopicFilter, TopicName, UnsubAck, Will, decode,
};
use mqtt_session::{
    Client, Config, ConnectOptions, ConnectionError, Error, Event, HeapClient, Instant, Notice,
    Read, State, Token,
};
use proptest::prelude::*;

use ProtocolVersion::{V5, V31, V311};
use ReasonCode as Rc;

// ---------------------------------------------------------------------------------------------
// Owned views of what goes over the wire and what the client reports.
// ---------------------------------------------------------------------------------------------

/// A PUBLISH, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pub {
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: String,
    id: Option<u16>,
    payload: Vec<u8>,
    /// The properties, as their `Debug` text.
    props: Vec<String>,
}

/// A packet the client wrote, decoded and owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Publish(Pub),
    PubAck(u16, Rc),
    PubRec(u16, Rc),
    PubRel(u16, Rc),
    PubComp(u16, Rc),
    Subscribe {
        id: u16,
        filters: Vec<(String, SubscriptionOptions)>,
        props: Vec<String>,
    },
    Unsubscribe {
        id: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect(Rc),
    Other(String),
}

/// A received message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
    retain: bool,
    id: Option<u16>,
    props: Vec<String>,
}

/// An [`Event`], owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Connected(bool),
    Msg(Msg),
    Published(Token, Rc),
    Subscribed(u16, Vec<Rc>),
    Unsubscribed(u16, Vec<Rc>),
}

/// What the last `handle_read` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Packet,
    NeedMore(usize),
    Closed,
}

fn props_text(p: &Properties<'_>) -> Vec<String> {
    p.iter().map(|p| format!("{p:?}")).collect()
}

fn own_packet(p: Packet<'_>) -> Out {
    match p {
        Packet::Publish(p) => Out::Publish(Pub {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: p.topic.to_owned(),
            id: p.packet_id.map(PacketId::get),
            payload: p.payload.to_vec(),
            props: props_text(&p.properties),
        }),
        Packet::PubAck(a) => Out::PubAck(a.packet_id.get(), a.reason_code),
        Packet::PubRec(a) => Out::PubRec(a.packet_id.get(), a.reason_code),
        Packet::PubRel(a) => Out::PubRel(a.packet_id.get(), a.reason_code),
        Packet::PubComp(a) => Out::PubComp(a.packet_id.get(), a.reason_code),
        Packet::Subscribe(s) => Out::Subscribe {
            id: s.packet_id.get(),
            filters: s
                .filters
                .iter()
                .map(|(f, o)| (f.as_str().to_owned(), o))
                .collect(),
            props: props_text(&s.properties),
        },
        Packet::Unsubscribe(u) => Out::Unsubscribe {
            id: u.packet_id.get(),
            filters: u.filters.iter().map(|f| f.as_str().to_owned()).collect(),
        },
        Packet::PingReq => Out::PingReq,
        Packet::Disconnect(d) => Out::Disconnect(d.reason_code),
        other => Out::Other(format!("{other:?}")),
    }
}

fn own_event(e: Event<'_>) -> Ev {
    match e {
        Event::Connected { session_present } => Ev::Connected(session_present),
        Event::Message(m) => Ev::Msg(Msg {
            topic: m.topic.to_owned(),
            payload: m.payload.to_vec(),
            qos: m.qos,
            retain: m.retain,
            id: m.packet_id.map(PacketId::get),
            props: props_text(&m.properties),
        }),
        Event::Published { token, reason_code } => Ev::Published(token, reason_code),
        Event::Subscribed {
            packet_id,
            reason_codes,
        } => Ev::Subscribed(packet_id.get(), reason_codes.iter().collect()),
        Event::Unsubscribed {
            packet_id,
            reason_codes,
        } => Ev::Unsubscribed(packet_id.get(), reason_codes.iter().collect()),
        other => panic!("no scenario here expects {other:?}"),
    }
}

/// Decodes one packet the client wrote; it must be exactly one valid packet.
fn decode_out(v: ProtocolVersion, bytes: &[u8]) -> Out {
    match decode(bytes, v, usize::MAX) {
        Ok(Status::Complete((p, used))) if used == bytes.len() => own_packet(p),
        other => panic!("the client wrote an invalid packet {bytes:02x?}: {other:?}"),
    }
}

/// Encodes a broker packet.
fn enc(v: ProtocolVersion, p: &Packet<'_>) -> Vec<u8> {
    let mut buf = vec![0; p.encoded_len(v).expect("broker packet encodes")];
    let n = p.encode(v, &mut buf).expect("broker packet encodes");
    assert_eq!(n, buf.len());
    buf
}

// ---------------------------------------------------------------------------------------------
// Broker packet builders.
// ---------------------------------------------------------------------------------------------

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero packet id")
}

fn connack(session_present: bool) -> Packet<'static> {
    Packet::ConnAck(ConnAck::new(session_present, Rc::Success))
}

fn puback(n: u16) -> Packet<'static> {
    Packet::PubAck(Ack::new(pid(n)))
}

fn pubrec(n: u16) -> Packet<'static> {
    Packet::PubRec(Ack::new(pid(n)))
}

fn pubrel(n: u16) -> Packet<'static> {
    Packet::PubRel(Ack::new(pid(n)))
}

fn pubcomp(n: u16) -> Packet<'static> {
    Packet::PubComp(Ack::new(pid(n)))
}

/// A PUBLISH from the broker.
fn incoming<'a>(topic: &'a str, payload: &'a [u8], qos: QoS, id: u16, dup: bool) -> Packet<'a> {
    Packet::Publish(Publish {
        dup,
        qos,
        packet_id: (qos != Q0).then(|| pid(id)),
        ..Publish::new(topic, payload)
    })
}

/// The PUBLISH the client is expected to write.
fn out_pub(topic: &str, payload: &[u8], qos: QoS, id: Option<u16>, dup: bool) -> Out {
    Out::Publish(Pub {
        dup,
        qos,
        retain: false,
        topic: topic.to_owned(),
        id,
        payload: payload.to_vec(),
        props: Vec::new(),
    })
}

fn msg(topic: &str, payload: &[u8], qos: QoS, id: Option<u16>) -> Ev {
    Ev::Msg(Msg {
        topic: topic.to_owned(),
        payload: payload.to_vec(),
        qos,
        retain: false,
        id,
        props: Vec::new(),
    })
}

/// `(packet id, dup)` of every PUBLISH in `out`, in order.
fn pub_ids(out: &[Out]) -> Vec<(Option<u16>, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Publish(p) => Some((p.id, p.dup)),
            _ => None,
        })
        .collect()
}

fn lost(e: ConnectionError) -> Notice {
    Notice::ConnectionLost(e)
}

fn cfg(v: ProtocolVersion) -> Config {
    Config {
        version: v,
        keep_alive: 60,
        // Most tests resume sessions; the connect tests set clean start themselves.
        clean_start: false,
        session_expiry: 0,
        inflight: 32,
        max_packet_size: 1 << 20,
        response_timeout: Duration::from_secs(10),
        manual_acks: false,
        // No incoming topic aliases unless a test offers them.
        topic_alias_maximum: 0,
        receive_maximum: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// The harness.
// ---------------------------------------------------------------------------------------------

/// A client, a fake clock and a scripted broker's view of the wire.
struct H<const S: usize, const B: usize, const R: usize> {
    c: Client<S, B, R>,
    v: ProtocolVersion,
    now: u64,
    /// Packets written while `feed` had to honour `TransmitFirst`; `flush` returns them first.
    backlog: Vec<Out>,
    /// Raw bytes of every packet written by `poll_transmit`, all time.
    raw: Vec<Vec<u8>>,
    last: Option<Last>,
}

/// The size most tests use.
type Std = H<16, 8192, 8>;

impl<const S: usize, const B: usize, const R: usize> H<S, B, R> {
    fn new(v: ProtocolVersion) -> Self {
        Self::with(cfg(v))
    }

    fn with(config: Config) -> Self {
        H {
            c: Client::new(config),
            v: config.version,
            now: 1_000,
            backlog: Vec::new(),
            raw: Vec::new(),
            last: None,
        }
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    fn connect_with(&mut self, opts: &ConnectOptions<'_>) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let n = self
            .c
            .connect(self.now(), opts, &mut buf)
            .expect("connect writes CONNECT");
        buf[..n].to_vec()
    }

    fn connect(&mut self) -> Vec<u8> {
        self.connect_with(&ConnectOptions {
            client_id: "test",
            ..ConnectOptions::default()
        })
    }

    /// Connects and accepts: CONNECT, CONNACK, `Connected`.
    fn establish(&mut self, session_present: bool) {
        self.connect();
        let ev = self.broker(&connack(session_present));
        assert_eq!(ev, [Ev::Connected(session_present)]);
        assert_eq!(self.c.state(), State::Connected);
    }

    /// Feeds bytes the broker sent, as a runtime would; returns the events.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Ev> {
        let mut events = Vec::new();
        let mut pos = 0;
        let mut stalled = 0;
        self.last = None;
        while pos < bytes.len() {
            let now = self.now();
            match self.c.handle_read(now, &bytes[pos..]) {
                Read::Packet { used, event } => {
                    assert!(used > 0, "handle_read consumed nothing");
                    pos += used;
                    events.extend(event.map(own_event));
                    self.last = Some(Last::Packet);
                    stalled = 0;
                }
                Read::NeedMore(n) => {
                    self.last = Some(Last::NeedMore(n));
                    break;
                }
                Read::TransmitFirst => {
                    let out = self.drain();
                    stalled += usize::from(out.is_empty());
                    assert!(stalled < 2, "TransmitFirst but nothing to transmit");
                    self.backlog.extend(out);
                }
                Read::Closed => {
                    self.last = Some(Last::Closed);
                    break;
                }
            }
        }
        events
    }

    /// Sends one broker packet to the client.
    fn broker(&mut self, p: &Packet<'_>) -> Vec<Ev> {
        let bytes = enc(self.v, p);
        self.feed(&bytes)
    }

    fn drain(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..10_000 {
            match self.c.poll_transmit(self.now(), &mut buf) {
                Ok(Some(n)) => {
                    let bytes = buf[..n].to_vec();
                    out.push(decode_out(self.v, &bytes));
                    self.raw.push(bytes);
                }
                Ok(None) => return out,
                Err(e) => panic!("poll_transmit failed: {e:?} ({e}) after writing {out:?}"),
            }
        }
        panic!("poll_transmit never returned None");
    }

    /// Everything the client has to send now.
    fn flush(&mut self) -> Vec<Out> {
        let mut out = std::mem::take(&mut self.backlog);
        out.extend(self.drain());
        out
    }

    /// The raw bytes of the packets the next flush writes.
    fn flush_raw(&mut self) -> Vec<Vec<u8>> {
        assert!(self.backlog.is_empty());
        let before = self.raw.len();
        self.flush();
        self.raw[before..].to_vec()
    }

    fn notices(&mut self) -> Vec<Notice> {
        std::iter::from_fn(|| self.c.poll_notice()).collect()
    }

    fn try_publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        prio: u8,
    ) -> Result<Token, Error> {
        let p = Publish {
            qos,
            ..Publish::new(topic, payload)
        };
        self.c.publish(self.now(), &p, prio)
    }

    fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS) -> Token {
        self.try_publish(topic, payload, qos, 5)
            .expect("publish accepted")
    }

    fn subscribe(
        &mut self,
        filters: &[(&str, SubscriptionOptions)],
        props: &[Property<'_>],
    ) -> u16 {
        let filters: Vec<_> = filters
            .iter()
            .map(|(f, o)| (TopicFilter::new(f).expect("valid filter"), *o))
            .collect();
        self.c
            .subscribe(self.now(), &filters, props)
            .expect("subscribe accepted")
            .get()
    }

    fn unsubscribe(&mut self, filters: &[&str]) -> u16 {
        let filters: Vec<_> = filters
            .iter()
            .map(|f| TopicFilter::new(f).expect("valid filter"))
            .collect();
        self.c
            .unsubscribe(self.now(), &filters, &[])
            .expect("unsubscribe accepted")
            .get()
    }

    /// A connected client that published one message at `qos` and wrote it (id 1).
    fn published(&mut self, qos: QoS) -> Token {
        self.establish(false);
        let t = self.publish("a/b", b"hi", qos);
        assert_eq!(self.flush(), [out_pub("a/b", b"hi", qos, Some(1), false)]);
        t
    }

    /// What the client writes when it closes for a violation: DISCONNECT with `rc` in MQTT 5,
    /// nothing before.
    fn expect_close(&mut self, rc: Rc, e: ConnectionError) {
        assert_eq!(self.last, Some(Last::Closed), "handle_read must say Closed");
        assert_eq!(self.notices(), [lost(e)]);
        let expected = if self.v.is_v5() {
            vec![Out::Disconnect(rc)]
        } else {
            vec![]
        };
        assert_eq!(self.flush(), expected);
        assert_eq!(self.c.state(), State::Disconnected);
    }
}

// ---------------------------------------------------------------------------------------------
// Connect.
// ---------------------------------------------------------------------------------------------

fn connect_fields(v: ProtocolVersion) {
    let mut h = Std::with(Config {
        keep_alive: 30,
        clean_start: false,
        session_expiry: 3600,
        ..cfg(v)
    });
    let will_props = [Property::WillDelayInterval(5)];
    let will = Will {
        topic: TopicName::new("status/dev-1").unwrap(),
        payload: b"gone",
        qos: Q1,
        retain: true,
        properties: if v.is_v5() {
            Properties::new(&will_props)
        } else {
            Properties::EMPTY
        },
    };
    let user = [Property::UserProperty("k", "v")];
    let properties: &[Property<'_>] = if v.is_v5() { &user } else { &[] };
    let bytes = h.connect_with(&ConnectOptions {
        client_id: "dev-1",
        username: Some("user"),
        password: Some(b"pw"),
        will: Some(will),
        properties,
    });
    assert_eq!(h.c.state(), State::Connecting);
    let Ok(Status::Complete((Packet::Connect(c), used))) = decode(&bytes, v, usize::MAX) else {
        panic!("not a CONNECT: {bytes:02x?}");
    };
    assert_eq!(used, bytes.len());
    assert_eq!(c.protocol, v);
    assert_eq!(c.client_id, "dev-1");
    assert!(!c.clean_start);
    assert_eq!(c.keep_alive, 30);
    assert_eq!(c.username, Some("user"));
    assert_eq!(c.password, Some(&b"pw"[..]));
    let w = c.will.expect("will");
    assert_eq!(
        (w.topic.as_str(), w.payload, w.qos, w.retain),
        ("status/dev-1", &b"gone"[..], Q1, true)
    );
    let props: Vec<Property<'_>> = c.properties.iter().collect();
    if v.is_v5() {
        assert_eq!(
            w.properties.iter().collect::<Vec<_>>(),
            [Property::WillDelayInterval(5)]
        );
        assert!(
            props.contains(&Property::SessionExpiryInterval(3600)),
            "{props:?}"
        );
        assert!(props.contains(&Property::ReceiveMaximum(8)), "{props:?}");
        assert!(
            props.contains(&Property::MaximumPacketSize(1 << 20)),
            "{props:?}"
        );
        assert!(
            props.contains(&Property::UserProperty("k", "v")),
            "{props:?}"
        );
        assert_eq!(props.len(), 4, "{props:?}");
    } else {
        assert!(props.is_empty());
    }
}

fn connect_exact_bytes(v: ProtocolVersion) {
    let mut h = Std::with(Config {
        clean_start: true,
        ..cfg(v)
    });
    let bytes = h.connect_with(&ConnectOptions {
        client_id: "c",
        ..ConnectOptions::default()
    });
    let mut expected = vec![
        0x10,
        0,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        v.level(),
        0x02,
        0,
        60,
    ];
    if v.is_v5() {
        // Receive Maximum 8, Maximum Packet Size 1 MiB; no session expiry (0 is the default).
        expected.extend([8, 0x21, 0, 8, 0x27, 0, 0x10, 0, 0]);
    }
    expected.extend([0, 1, b'c']);
    expected[1] = u8::try_from(expected.len() - 2).unwrap();
    assert_eq!(bytes, expected);
}

fn connect_empty_client_id(v: ProtocolVersion) {
    let mut h = Std::with(Config {
        clean_start: true,
        ..cfg(v)
    });
    let bytes = h.connect_with(&ConnectOptions::default());
    let Ok(Status::Complete((Packet::Connect(c), _))) = decode(&bytes, v, usize::MAX) else {
        panic!("not a CONNECT");
    };
    assert_eq!(c.client_id, "");
    assert!(c.clean_start);
}

#[test]
fn connect_mqtt_31_uses_mqisdp() {
    let mut h = Std::new(V31);
    let bytes = h.connect();
    assert_eq!(
        &bytes[2..11],
        &[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3]
    );
    assert_eq!(h.broker(&connack(false)), [Ev::Connected(false)]);
}

fn connack_accepted(v: ProtocolVersion) {
    for sp in [false, true] {
        let mut h = Std::new(v);
        h.connect();
        assert_eq!(h.flush(), [], "nothing but CONNECT before CONNACK");
        assert_eq!(h.broker(&connack(sp)), [Ev::Connected(sp)]);
        assert_eq!(h.c.state(), State::Connected);
        assert_eq!(h.notices(), []);
    }
}

/// Refuses a connection with `rc` and checks the notice and its words.
fn refuse(v: ProtocolVersion, rc: Rc, words: &str) {
    let mut h = Std::new(v);
    h.connect();
    let ev = h.broker(&Packet::ConnAck(ConnAck::new(false, rc)));
    assert_eq!(ev, [], "{rc:?}");
    let notices = h.notices();
    assert_eq!(notices, [lost(ConnectionError::Refused(rc))], "{rc:?}");
    let Notice::ConnectionLost(e) = notices[0] else {
        unreachable!()
    };
    let text = e.to_string();
    assert!(
        text.contains(words),
        "{rc:?}: {text:?} should say {words:?}"
    );
    assert_eq!(h.c.state(), State::Disconnected);
    assert_eq!(h.flush(), []);
    assert_eq!(h.c.poll_timeout(), None);
}

#[test]
fn connack_refused_v311_return_codes() {
    // The raw 3.1.1 return codes 1 to 5, fed as bytes so the test does not depend on the
    // codec's mapping to reason codes being the one the client expects.
    let table = [
        (1u8, Rc::UnsupportedProtocolVersion, "MQTT version"),
        (2, Rc::ClientIdentifierNotValid, "client identifier"),
        (3, Rc::ServerUnavailable, "unavailable"),
        (4, Rc::BadUserNameOrPassword, "bad user name or password"),
        (5, Rc::NotAuthorized, "not authorized"),
    ];
    for (code, rc, words) in table {
        let mut h = Std::new(V311);
        h.connect();
        assert_eq!(h.feed(&[0x20, 0x02, 0x00, code]), []);
        let n = h.notices();
        assert_eq!(
            n,
            [lost(ConnectionError::Refused(rc))],
            "return code {code}"
        );
        let text = ConnectionError::Refused(rc).to_string();
        assert!(text.contains(words), "{text:?}");
        assert!(text.starts_with("connection refused"), "{text:?}");
        assert_eq!(h.c.state(), State::Disconnected);
    }
    refuse(V311, Rc::BadUserNameOrPassword, "bad user name or password");
}

#[test]
fn connack_refused_v5_reason_codes() {
    let table = [
        (Rc::NotAuthorized, "not authorized"),
        (Rc::Banned, "banned"),
        (Rc::BadUserNameOrPassword, "bad user name or password"),
        (Rc::ClientIdentifierNotValid, "client identifier"),
        (Rc::UnsupportedProtocolVersion, "MQTT version"),
        (Rc::ServerBusy, "unavailable"),
        (Rc::ServerUnavailable, "unavailable"),
        (Rc::QuotaExceeded, "quota exceeded"),
        (Rc::UseAnotherServer, "use another server"),
        (Rc::BadAuthenticationMethod, "authentication method"),
        (Rc::UnspecifiedError, "unspecified error"),
    ];
    for (rc, words) in table {
        refuse(V5, rc, words);
    }
}

/// `Read::Closed` means "the connection is over": a refused CONNACK ends it.
fn refused_connack_reads_closed(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.connect();
    h.broker(&Packet::ConnAck(ConnAck::new(false, Rc::NotAuthorized)));
    assert_eq!(h.last, Some(Last::Closed));
}

fn connack_timeout(v: ProtocolVersion) {
    let mut h = Std::new(v);
    let t0 = h.now;
    h.connect();
    let deadline = Instant::from_millis(t0 + 10_000);
    assert_eq!(h.c.poll_timeout(), Some(deadline));
    // Early calls are harmless.
    h.c.handle_timeout(Instant::from_millis(t0 + 9_999));
    assert_eq!(h.notices(), []);
    assert_eq!(h.c.state(), State::Connecting);
    h.c.handle_timeout(deadline);
    assert_eq!(h.notices(), [lost(ConnectionError::Timeout)]);
    assert_eq!(h.c.state(), State::Disconnected);
    assert_eq!(h.c.poll_timeout(), None);
    h.now = t0 + 10_000;
    assert_eq!(h.flush(), []);
    // A CONNACK that arrives too late is not read.
    assert_eq!(h.broker(&connack(false)), []);
    assert_eq!(h.last, Some(Last::Closed));
    // And a new attempt works.
    h.establish(false);
}

fn transport_closed_while_connecting(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.connect();
    h.c.handle_disconnect(h.now());
    assert_eq!(h.notices(), [lost(ConnectionError::TransportClosed)]);
    assert_eq!(h.c.state(), State::Disconnected);
    assert_eq!(h.c.poll_timeout(), None);
    // A second report of the same closed transport says nothing new.
    h.c.handle_disconnect(h.now());
    assert_eq!(h.notices(), []);
}

// ---------------------------------------------------------------------------------------------
// Publish.
// ---------------------------------------------------------------------------------------------

fn publish_qos0_written_once(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    h.publish("a/b", b"hi", Q0);
    assert_eq!(h.c.pending(), 1);
    let raw = h.flush_raw();
    let mut expected = vec![0x30, 0, 0, 3, b'a', b'/', b'b'];
    if v.is_v5() {
        expected.push(0); // no properties
    }
    expected.extend(b"hi");
    expected[1] = u8::try_from(expected.len() - 2).unwrap();
    assert_eq!(raw, [expected]);
    assert_eq!(h.flush(), []);
    assert_eq!(h.c.pending(), 0);
    assert_eq!(h.c.in_flight(), 0);
    // Written means done for QoS 0; the notice lets a runtime complete the publish.
    assert_eq!(h.notices(), [Notice::Sent { token: 1 }]);
}

fn publish_qos1(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let t = h.publish("a/b", b"hi", Q1);
    let raw = h.flush_raw();
    let mut expected = vec![0x32, 0, 0, 3, b'a', b'/', b'b', 0, 1];
    if v.is_v5() {
        expected.push(0);
    }
    expected.extend(b"hi");
    expected[1] = u8::try_from(expected.len() - 2).unwrap();
    assert_eq!(raw, [expected]);
    assert_eq!(h.c.in_flight(), 1);
    assert_eq!(h.flush(), [], "written once");
    assert_eq!(h.broker(&puback(1)), [Ev::Published(t, Rc::Success)]);
    assert_eq!(h.c.pending(), 0);
    assert_eq!(h.c.in_flight(), 0);
    assert_eq!(h.flush(), []);
    assert_eq!(h.notices(), []);
}

fn publish_qos2(v: ProtocolVersion) {
    let mut h = Std::new(v);
    let t = h.published(Q2);
    assert_eq!(h.broker(&pubrec(1)), []);
    assert_eq!(h.flush_raw(), [vec![0x62, 0x02, 0x00, 0x01]]);
    assert_eq!(h.c.in_flight(), 1);
    assert_eq!(h.broker(&pubcomp(1)), [Ev::Published(t, Rc::Success)]);
    assert_eq!(h.c.pending(), 0);
    assert_eq!(h.flush(), []);
    assert_eq!(h.notices(), []);
}

fn publish_qos2_repeated_pubrec_gets_pubrel_again(v: ProtocolVersion) {
    let mut h = Std::new(v);
    let t = h.published(Q2);
    h.broker(&pubrec(1));
    assert_eq!(h.flush(), [Out::PubRel(1, Rc::Success)]);
    h.broker(&pubrec(1));
    assert_eq!(h.flush(), [Out::PubRel(1, Rc::Success)]);
    assert_eq!(h.broker(&pubcomp(1)), [Ev::Published(t, Rc::Success)]);
}

fn publish_retain_and_properties(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let props = [
        Property::ContentType("text/plain"),
        Property::UserProperty("a", "b"),
    ];
    let p = Publish {
        qos: Q1,
        retain: true,
        properties: if v.is_v5() {
            Properties::new(&props)
        } else {
            Properties::EMPTY
        },
        ..Publish::new("r/t", b"x")
    };
    h.c.publish(h.now(), &p, 5).unwrap();
    let out = h.flush();
    let Out::Publish(p) = &out[0] else {
        panic!("{out:?}")
    };
    assert!(p.retain);
    assert_eq!(p.qos, Q1);
    if v.is_v5() {
        assert_eq!(p.props, props_text(&Properties::new(&props)));
    }
}

#[test]
fn puback_with_error_reason_is_reported() {
    let mut h = Std::new(V5);
    let t = h.published(Q1);
    let ev = h.broker(&Packet::PubAck(Ack::with_reason(pid(1), Rc::NotAuthorized)));
    assert_eq!(ev, [Ev::Published(t, Rc::NotAuthorized)]);
    let mut h = Std::new(V5);
    let t = h.published(Q1);
    let ev = h.broker(&Packet::PubAck(Ack::with_reason(
        pid(1),
        Rc::NoMatchingSubscribers,
    )));
    assert_eq!(ev, [Ev::Published(t, Rc::NoMatchingSubscribers)]);
}

#[test]
fn pubrec_with_error_reason_drops_without_pubrel() {
    let mut h = Std::new(V5);
    let t = h.published(Q2);
    let ev = h.broker(&Packet::PubRec(Ack::with_reason(pid(1), Rc::QuotaExceeded)));
    assert_eq!(ev, []);
    assert_eq!(
        h.notices(),
        [Notice::Dropped {
            token: t,
            reason_code: Rc::QuotaExceeded
        }]
    );
    assert_eq!(h.flush(), [], "no PUBREL after a refused PUBREC");
    assert_eq!(h.c.pending(), 0);
    assert_eq!(h.c.in_flight(), 0);
    // The id is free again and the connection still works.
    let t2 = h.publish("a/b", b"hi", Q2);
    assert_eq!(pub_ids(&h.flush()), [(Some(2), false)]);
    h.broker(&pubrec(2));
    assert_eq!(h.flush(), [Out::PubRel(2, Rc::Success)]);
    assert_eq!(h.broker(&pubcomp(2)), [Ev::Published(t2, Rc::Success)]);
}

fn packet_ids_from_1_unique_in_flight(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let tokens: Vec<Token> = (0..5)
        .map(|i| h.publish("t", b"x", if i % 2 == 0 { Q1 } else { Q2 }))
        .collect();
    let mut uniq = tokens.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), 5, "tokens are unique: {tokens:?}");
    let ids = pub_ids(&h.flush());
    assert_eq!(
        ids,
        [1, 2, 3, 4, 5].map(|i| (Some(i), false)),
        "ids start at 1 and count up"
    );
    // Subscribe shares the allocator.
    let s = h.subscribe(&[("x/#", SubscriptionOptions::new(Q1))], &[]);
    assert_eq!(s, 6);
    h.broker(&puback(1));
    h.broker(&pubrec(2));
    h.flush();
    h.broker(&pubcomp(2));
    h.publish("t", b"y", Q1);
    h.publish("t", b"y", Q1);
    let more = h.flush();
    assert_eq!(more.len(), 2);
    let mut in_flight: Vec<u16> = vec![3, 4, 5, 6];
    for (id, _) in pub_ids(&more) {
        let id = id.unwrap();
        assert!(!in_flight.contains(&id), "id {id} reused while in flight");
        in_flight.push(id);
    }
}

/// The allocator wraps after 65535 and skips an id still in flight.
fn packet_ids_wrap_and_skip_in_flight(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let held = h.publish("t", b"", Q1);
    assert_eq!(pub_ids(&h.flush()), [(Some(1), false)]);
    let mut buf = [0u8; 64];
    for expected in 2..=u16::MAX {
        h.publish("t", b"", Q1);
        let n = h.c.poll_transmit(h.now(), &mut buf).unwrap().unwrap();
        assert_eq!(
            &buf[n - 2 - usize::from(v.is_v5())..n - usize::from(v.is_v5())],
            &expected.to_be_bytes()
        );
        let ack = enc(v, &puback(expected));
        assert!(matches!(
            h.c.handle_read(h.now(), &ack),
            Read::Packet { .. }
        ));
    }
    assert_eq!(h.notices(), []);
    // 65535 went out; 1 is still held, so the next id is 2.
    h.publish("t", b"", Q1);
    assert_eq!(pub_ids(&h.flush()), [(Some(2), false)]);
    assert_eq!(h.broker(&puback(1)), [Ev::Published(held, Rc::Success)]);
}

// ---------------------------------------------------------------------------------------------
// Receive.
// ---------------------------------------------------------------------------------------------

fn receive_qos0(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let ev = h.broker(&incoming("s/1", b"21.5", Q0, 0, false));
    assert_eq!(ev, [msg("s/1", b"21.5", Q0, None)]);
    assert_eq!(h.flush(), []);
}

fn receive_qos1(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let ev = h.broker(&incoming("s/1", b"21.5", Q1, 7, false));
    assert_eq!(ev, [msg("s/1", b"21.5", Q1, Some(7))]);
    assert_eq!(h.flush_raw(), [vec![0x40, 0x02, 0x00, 0x07]]);
    // A redelivery of a QoS 1 message is delivered again (at least once) and acked again.
    let ev = h.broker(&incoming("s/1", b"21.5", Q1, 7, true));
    assert_eq!(ev, [msg("s/1", b"21.5", Q1, Some(7))]);
    assert_eq!(h.flush(), [Out::PubAck(7, Rc::Success)]);
}

fn receive_qos2(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let ev = h.broker(&incoming("s/1", b"on", Q2, 9, false));
    assert_eq!(ev, [msg("s/1", b"on", Q2, Some(9))]);
    assert_eq!(h.flush_raw(), [vec![0x50, 0x02, 0x00, 0x09]]);
    assert_eq!(h.broker(&pubrel(9)), []);
    assert_eq!(h.flush_raw(), [vec![0x70, 0x02, 0x00, 0x09]]);
    assert_eq!(h.notices(), []);
}

fn receive_qos2_dup_before_pubrel_not_redelivered(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    assert_eq!(h.broker(&incoming("s/1", b"on", Q2, 9, false)).len(), 1);
    assert_eq!(h.flush(), [Out::PubRec(9, Rc::Success)]);
    for _ in 0..3 {
        assert_eq!(
            h.broker(&incoming("s/1", b"on", Q2, 9, true)),
            [],
            "delivered twice"
        );
        assert_eq!(h.flush(), [Out::PubRec(9, Rc::Success)], "PUBREC again");
    }
    h.broker(&pubrel(9));
    assert_eq!(h.flush(), [Out::PubComp(9, Rc::Success)]);
    // After the release, id 9 names a new message.
    let ev = h.broker(&incoming("s/1", b"off", Q2, 9, false));
    assert_eq!(ev, [msg("s/1", b"off", Q2, Some(9))]);
}

fn pubrel_unknown_id_gets_pubcomp(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    assert_eq!(h.broker(&pubrel(42)), []);
    let rc = if v.is_v5() {
        Rc::PacketIdentifierNotFound
    } else {
        Rc::Success
    };
    assert_eq!(h.flush(), [Out::PubComp(42, rc)]);
    assert_eq!(h.c.state(), State::Connected);
    assert_eq!(h.notices(), []);
}

#[test]
fn receive_v5_properties_and_retain() {
    let mut h = Std::new(V5);
    h.establish(false);
    let props = [
        Property::UserProperty("unit", "C"),
        Property::SubscriptionIdentifier(3),
    ];
    let p = Packet::Publish(Publish {
        retain: true,
        properties: Properties::new(&props),
        ..Publish::new("s/1", b"21")
    });
    let ev = h.broker(&p);
    let [Ev::Msg(m)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert!(m.retain);
    assert_eq!(m.props, props_text(&Properties::new(&props)));
}

/// More unreleased QoS 2 messages than the Receive Maximum (RX = 8) the client announced.
fn receive_maximum_exceeded(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    for id in 1..=8 {
        assert_eq!(h.broker(&incoming("t", b"x", Q2, id, false)).len(), 1);
    }
    h.flush();
    assert_eq!(h.broker(&incoming("t", b"x", Q2, 9, false)), []);
    h.expect_close(
        Rc::ReceiveMaximumExceeded,
        ConnectionError::ProtocolViolation(Rc::ReceiveMaximumExceeded),
    );
}

/// MQTT 3.1.1 3.2.2.2 / MQTT 5 3.2.2.1.1: after a clean start the server must answer session
/// present 0; a 1 means the two sides disagree about the session, and the client closes.
fn session_present_after_clean_start_is_violation(v: ProtocolVersion) {
    let mut h = Std::with(Config {
        clean_start: true,
        ..cfg(v)
    });
    h.connect();
    assert_eq!(h.broker(&connack(true)), []);
    h.expect_close(
        Rc::ProtocolError,
        ConnectionError::ProtocolViolation(Rc::ProtocolError),
    );
}

/// MQTT 5 3.3.2.3.4: a Topic Alias greater than the client's Topic Alias Maximum (none was
/// offered, so 0) is a protocol error, topic name or not; close with 0x94.
/// Both with a topic name (setting the alias) and without one (using it).
#[test]
fn topic_alias_not_offered_is_violation() {
    for topic in ["t", ""] {
        let mut h = Std::new(V5);
        h.establish(false);
        let props = [Property::TopicAlias(1)];
        let p = Packet::Publish(Publish {
            properties: Properties::new(&props),
            ..Publish::new(topic, b"x")
        });
        assert_eq!(h.broker(&p), [], "topic {topic:?}");
        h.expect_close(
            Rc::TopicAliasInvalid,
            ConnectionError::ProtocolViolation(Rc::TopicAliasInvalid),
        );
    }
}

/// Many acks owed at once: `TransmitFirst` makes the runtime flush, and none is lost.
fn acks_owed_in_one_read(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let mut bytes = Vec::new();
    for id in 1..=20u16 {
        bytes.extend(enc(
            v,
            &incoming("t", b"x", if id % 3 == 0 { Q2 } else { Q1 }, id, false),
        ));
    }
    let ev = h.feed(&bytes);
    assert_eq!(ev.len(), 20);
    let out = h.flush();
    let expected: Vec<Out> = (1..=20u16)
        .map(|id| {
            if id % 3 == 0 {
                Out::PubRec(id, Rc::Success)
            } else {
                Out::PubAck(id, Rc::Success)
            }
        })
        .collect();
    assert_eq!(out, expected);
}

// ---------------------------------------------------------------------------------------------
// Manual acks.
// ---------------------------------------------------------------------------------------------

fn manual(v: ProtocolVersion) -> Std {
    let mut h = Std::with(Config {
        manual_acks: true,
        ..cfg(v)
    });
    h.establish(false);
    h
}

fn manual_acks_any_order(v: ProtocolVersion) {
    let mut h = manual(v);
    assert_eq!(
        h.broker(&incoming("a", b"1", Q1, 1, false)),
        [msg("a", b"1", Q1, Some(1))]
    );
    assert_eq!(
        h.broker(&incoming("a", b"2", Q2, 2, false)),
        [msg("a", b"2", Q2, Some(2))]
    );
    assert_eq!(
        h.broker(&incoming("a", b"3", Q1, 3, false)),
        [msg("a", b"3", Q1, Some(3))]
    );
    assert_eq!(
        h.broker(&incoming("a", b"0", Q0, 0, false)),
        [msg("a", b"0", Q0, None)]
    );
    assert_eq!(h.flush(), [], "no ack before the application acks");
    h.c.ack(pid(3), Rc::Success).unwrap();
    assert_eq!(h.flush(), [Out::PubAck(3, Rc::Success)]);
    h.c.ack(pid(2), Rc::Success).unwrap();
    assert_eq!(h.flush(), [Out::PubRec(2, Rc::Success)]);
    h.c.ack(pid(1), Rc::Success).unwrap();
    assert_eq!(h.flush(), [Out::PubAck(1, Rc::Success)]);
    // The QoS 2 exchange finishes as usual.
    assert_eq!(h.broker(&pubrel(2)), []);
    assert_eq!(h.flush(), [Out::PubComp(2, Rc::Success)]);
    assert_eq!(
        h.c.ack(pid(1), Rc::Success),
        Err(Error::UnknownPacketId),
        "acked twice"
    );
    assert_eq!(h.c.ack(pid(99), Rc::Success), Err(Error::UnknownPacketId));
    assert_eq!(h.notices(), []);
}

fn manual_ack_redelivery_not_delivered_twice(v: ProtocolVersion) {
    let mut h = manual(v);
    assert_eq!(h.broker(&incoming("a", b"1", Q1, 1, false)).len(), 1);
    assert_eq!(h.broker(&incoming("a", b"2", Q2, 2, false)).len(), 1);
    assert_eq!(h.broker(&incoming("a", b"1", Q1, 1, true)), []);
    assert_eq!(h.broker(&incoming("a", b"2", Q2, 2, true)), []);
    assert_eq!(h.flush(), [], "still waiting for the application");
    h.c.ack(pid(2), Rc::Success).unwrap();
    h.c.ack(pid(1), Rc::Success).unwrap();
    assert_eq!(
        h.flush(),
        [Out::PubRec(2, Rc::Success), Out::PubAck(1, Rc::Success)]
    );
}

#[test]
fn manual_ack_v5_reason_codes_pass_through() {
    let mut h = manual(V5);
    h.broker(&incoming("a", b"1", Q1, 1, false));
    h.broker(&incoming("a", b"2", Q2, 2, false));
    h.c.ack(pid(1), Rc::PayloadFormatInvalid).unwrap();
    h.c.ack(pid(2), Rc::QuotaExceeded).unwrap();
    assert_eq!(
        h.flush(),
        [
            Out::PubAck(1, Rc::PayloadFormatInvalid),
            Out::PubRec(2, Rc::QuotaExceeded)
        ]
    );
    // A refused QoS 2 message ends at PUBREC: a later PUBREL names an unknown id.
    h.broker(&pubrel(2));
    assert_eq!(h.flush(), [Out::PubComp(2, Rc::PacketIdentifierNotFound)]);
    // A NoMatchingSubscribers-style success code passes through too.
    h.broker(&incoming("a", b"3", Q1, 3, false));
    h.c.ack(pid(3), Rc::NoMatchingSubscribers).unwrap();
    assert_eq!(h.flush(), [Out::PubAck(3, Rc::NoMatchingSubscribers)]);
}

#[test]
fn manual_ack_v311_sends_plain_acks_whatever_the_code() {
    let mut h = manual(V311);
    h.broker(&incoming("a", b"1", Q1, 1, false));
    h.c.ack(pid(1), Rc::NotAuthorized).unwrap();
    assert_eq!(h.flush(), [Out::PubAck(1, Rc::Success)]);
}

// ---------------------------------------------------------------------------------------------
// Flow control.
// ---------------------------------------------------------------------------------------------

/// With a window of 2: the third QoS 1 publish and the QoS 0 one behind it wait for a PUBACK.
fn window_of_two(h: &mut Std) {
    let t1 = h.publish("t", b"1", Q1);
    h.publish("t", b"2", Q1);
    h.publish("t", b"3", Q1);
    h.publish("t", b"4", Q0);
    assert_eq!(
        h.flush(),
        [
            out_pub("t", b"1", Q1, Some(1), false),
            out_pub("t", b"2", Q1, Some(2), false)
        ]
    );
    assert_eq!(h.c.in_flight(), 2);
    assert_eq!(h.c.pending(), 4);
    assert_eq!(h.broker(&puback(1)), [Ev::Published(t1, Rc::Success)]);
    assert_eq!(
        h.flush(),
        [
            out_pub("t", b"3", Q1, Some(3), false),
            out_pub("t", b"4", Q0, None, false)
        ],
        "the waiting message goes first, QoS 0 keeps its place behind it"
    );
    assert_eq!(h.c.in_flight(), 2);
}

fn inflight_limit_from_config(v: ProtocolVersion) {
    let mut h = Std::with(Config {
        inflight: 2,
        ..cfg(v)
    });
    h.establish(false);
    window_of_two(&mut h);
}

#[test]
fn receive_maximum_from_connack() {
    let mut h = Std::new(V5);
    h.connect();
    let props = [Property::ReceiveMaximum(2)];
    let ack = Packet::ConnAck(ConnAck {
        properties: Properties::new(&props),
        ..ConnAck::new(false, Rc::Success)
    });
    assert_eq!(h.broker(&ack), [Ev::Connected(false)]);
    window_of_two(&mut h);
}

/// MQTT 5 4.9: the send quota starts at the server's Receive Maximum on every connection, and
/// resent PUBLISH packets use it too: with 4 unacknowledged and a new Receive Maximum of 2, only
/// two go out until a PUBACK frees a slot.
#[test]
fn resends_after_reconnect_respect_receive_maximum() {
    let mut h = Std::new(V5);
    h.establish(false);
    for i in 0..4u8 {
        h.publish("t", &[i], Q1);
    }
    assert_eq!(h.flush().len(), 4);
    h.c.handle_disconnect(h.now());
    h.notices();
    h.connect();
    let props = [Property::ReceiveMaximum(2)];
    let ack = Packet::ConnAck(ConnAck {
        properties: Properties::new(&props),
        ..ConnAck::new(true, Rc::Success)
    });
    assert_eq!(h.broker(&ack), [Ev::Connected(true)]);
    assert_eq!(
        pub_ids(&h.flush()),
        [(Some(1), true), (Some(2), true)],
        "no more than Receive Maximum unacknowledged PUBLISH packets"
    );
    h.broker(&puback(1));
    assert_eq!(pub_ids(&h.flush()), [(Some(3), true)]);
}

/// MQTT 5 3.2.2.3.4 [MQTT-3.2.2-11]: the client must not send a PUBLISH above the server's
/// Maximum QoS.
#[test]
fn server_maximum_qos_respected() {
    let mut h = Std::new(V5);
    h.connect();
    let props = [Property::MaximumQoS(Q1)];
    let ack = Packet::ConnAck(ConnAck {
        properties: Properties::new(&props),
        ..ConnAck::new(false, Rc::Success)
    });
    h.broker(&ack);
    // Connected: refused at the call, with the server's reason.
    assert_eq!(
        h.try_publish("t", b"x", Q2, 5),
        Err(Error::NotSupported(Rc::QoSNotSupported))
    );
    // Queued while offline, then the server says Maximum QoS 1: dropped, and reported.
    h.c.handle_disconnect(h.now());
    let queued = h.publish("t", b"x", Q2);
    h.connect();
    h.broker(&ack);
    let out = h.flush();
    assert!(
        out.iter()
            .all(|o| !matches!(o, Out::Publish(p) if p.qos == Q2)),
        "QoS 2 PUBLISH sent to a server whose Maximum QoS is 1: {out:?}"
    );
    assert!(h.notices().contains(&Notice::Dropped {
        token: queued,
        reason_code: Rc::QoSNotSupported
    }));
}

#[test]
fn server_maximum_packet_size_drops_oversized_message() {
    let mut h = Std::new(V5);
    h.connect();
    let props = [Property::MaximumPacketSize(32)];
    let ack = Packet::ConnAck(ConnAck {
        properties: Properties::new(&props),
        ..ConnAck::new(false, Rc::Success)
    });
    h.broker(&ack);
    let big = h.publish("t", &[0u8; 64], Q1);
    h.publish("t", b"small", Q1);
    assert_eq!(h.flush(), [out_pub("t", b"small", Q1, Some(1), false)]);
    assert_eq!(
        h.notices(),
        [Notice::Dropped {
            token: big,
            reason_code: Rc::PacketTooLarge
        }]
    );
}

fn client_maximum_packet_size_enforced_on_read(v: ProtocolVersion) {
    let mut h = Std::with(Config {
        max_packet_size: 64,
        ..cfg(v)
    });
    h.establish(false);
    h.broker(&incoming("t", &[7u8; 100], Q0, 0, false));
    h.expect_close(
        Rc::PacketTooLarge,
        ConnectionError::Malformed(DecodeError::PacketTooLarge {
            size: 105 + usize::from(v.is_v5()),
            max: 64,
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// Offline queue.
// ---------------------------------------------------------------------------------------------

fn offline_queue_sent_in_order(v: ProtocolVersion) {
    let mut h = Std::new(v);
    let tokens = [
        h.publish("q", b"0", Q0),
        h.publish("q", b"1", Q1),
        h.publish("q", b"2", Q2),
        h.publish("q", b"3", Q1),
    ];
    assert_eq!(h.c.pending(), 4);
    assert_eq!(h.flush(), [], "nothing goes out while disconnected");
    h.connect();
    assert_eq!(h.flush(), [], "nothing goes out before CONNACK");
    assert_eq!(h.broker(&connack(false)), [Ev::Connected(false)]);
    assert_eq!(
        h.flush(),
        [
            out_pub("q", b"0", Q0, None, false),
            out_pub("q", b"1", Q1, Some(1), false),
            out_pub("q", b"2", Q2, Some(2), false),
            out_pub("q", b"3", Q1, Some(3), false),
        ]
    );
    assert_eq!(
        h.broker(&puback(1)),
        [Ev::Published(tokens[1], Rc::Success)]
    );
    assert_eq!(
        h.broker(&puback(3)),
        [Ev::Published(tokens[3], Rc::Success)]
    );
    h.broker(&pubrec(2));
    h.flush();
    assert_eq!(
        h.broker(&pubcomp(2)),
        [Ev::Published(tokens[2], Rc::Success)]
    );
    assert_eq!(h.c.pending(), 0);
}

fn full_queue_evicts_lowest_priority_oldest(v: ProtocolVersion) {
    let mut h = H::<4, 4096, 4>::new(v);
    let mut accepted = Vec::new();
    let mut evicted = Vec::new();
    for (i, prio) in [5u8, 3, 3, 7].into_iter().enumerate() {
        accepted.push((h.try_publish("q", &[i as u8], Q1, prio).unwrap(), i as u8));
    }
    assert_eq!(h.notices(), []);
    // Full: the oldest of the priority-3 messages goes.
    let t = h.try_publish("q", &[4], Q1, 5).unwrap();
    accepted.push((t, 4));
    let n = h.notices();
    assert_eq!(
        n,
        [Notice::Evicted {
            token: accepted[1].0
        }]
    );
    evicted.push(accepted[1].0);
    // A message below everything queued (3, 5, 7, 5) is refused.
    assert_eq!(h.try_publish("q", &[9], Q1, 1), Err(Error::QueueFull));
    assert_eq!(h.notices(), [], "a refused message evicts nothing");
    // Same priority as the lowest: the older one goes.
    let t = h.try_publish("q", &[5], Q1, 3).unwrap();
    accepted.push((t, 5));
    assert_eq!(
        h.notices(),
        [Notice::Evicted {
            token: accepted[2].0
        }]
    );
    evicted.push(accepted[2].0);
    assert_eq!(h.c.pending(), 4);
    // Everything left is sent, in acceptance order, and completes.
    h.establish(false);
    let out = h.flush();
    let payloads: Vec<u8> = out
        .iter()
        .map(|o| match o {
            Out::Publish(p) => p.payload[0],
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(payloads, [0, 3, 4, 5]);
    let mut completed = Vec::new();
    for (id, _) in pub_ids(&out) {
        for e in h.broker(&puback(id.unwrap())) {
            let Ev::Published(t, Rc::Success) = e else {
                panic!("{e:?}")
            };
            completed.push(t);
        }
    }
    // Nothing dropped silently: every accepted token either completed or was evicted.
    let mut all: Vec<Token> = completed.iter().chain(&evicted).copied().collect();
    all.sort_unstable();
    let mut tokens: Vec<Token> = accepted.iter().map(|a| a.0).collect();
    tokens.sort_unstable();
    assert_eq!(all, tokens);
}

fn full_queue_bytes_bound(v: ProtocolVersion) {
    // About 25 bytes a message: two fit in 64 bytes, a third evicts the oldest.
    let mut h = H::<16, 64, 4>::new(v);
    let a = h.try_publish("bytes", &[1; 16], Q1, 5).unwrap();
    h.try_publish("bytes", &[2; 16], Q1, 5).unwrap();
    assert_eq!(h.notices(), []);
    h.try_publish("bytes", &[3; 16], Q1, 5).unwrap();
    assert_eq!(h.notices(), [Notice::Evicted { token: a }]);
    assert_eq!(h.c.pending(), 2);
    assert_eq!(
        h.try_publish("bytes", &[0; 100], Q1, 10),
        Err(Error::TooLarge)
    );
}

fn in_flight_messages_are_never_evicted(v: ProtocolVersion) {
    let mut h = H::<2, 4096, 4>::new(v);
    h.establish(false);
    h.publish("q", b"1", Q1);
    h.publish("q", b"2", Q2);
    h.flush();
    assert_eq!(h.try_publish("q", b"3", Q1, 10), Err(Error::QueueFull));
    assert_eq!(h.notices(), []);
    assert_eq!(h.c.in_flight(), 2);
}

/// `try_publish` never evicts a message as important as itself: back-pressure instead of
/// drop-oldest; a more important message still evicts a less important one.
fn try_publish_evicts_only_lower_priority(v: ProtocolVersion) {
    let mut h = H::<16, 64, 4>::new(v);
    let now = h.now();
    let msg = |b: &'static [u8]| Publish {
        qos: Q1,
        ..Publish::new("bytes", b)
    };
    let low = h.c.try_publish(now, &msg(&[1; 16]), 3).unwrap();
    h.c.try_publish(now, &msg(&[2; 16]), 5).unwrap();
    assert_eq!(
        h.c.try_publish(now, &msg(&[3; 16]), 3),
        Err(Error::QueueFull)
    );
    assert_eq!(h.notices(), []);
    assert_eq!(h.c.pending(), 2);
    h.c.try_publish(now, &msg(&[4; 16]), 5).unwrap();
    assert_eq!(h.notices(), [Notice::Evicted { token: low }]);
    assert_eq!(
        h.c.try_publish(now, &msg(&[5; 16]), 5),
        Err(Error::QueueFull)
    );
    assert_eq!(h.c.pending(), 2);
}

/// A new message that cannot fit even after evicting everything evictable is refused, and
/// nothing is evicted for it.
fn refused_publish_evicts_nothing(v: ProtocolVersion) {
    let mut h = H::<8, 96, 4>::new(v);
    h.establish(false);
    // In flight (not evictable): about 60 bytes.
    h.publish("big", &[0; 50], Q1);
    h.flush();
    // Queued while the connection is down: a small, low-priority message.
    h.c.handle_disconnect(h.now());
    h.notices();
    h.try_publish("s", b"x", Q1, 1).unwrap();
    // 60 bytes more can never fit next to the in-flight message.
    assert_eq!(
        h.try_publish("big2", &[0; 50], Q1, 9),
        Err(Error::QueueFull)
    );
    assert_eq!(h.notices(), [], "the small message was evicted for nothing");
    assert_eq!(h.c.pending(), 2);
}

/// Nothing is dropped silently, even when the application publishes a burst into a full queue
/// before it drains notices.
fn eviction_notices_are_never_lost(v: ProtocolVersion) {
    let mut h = H::<2, 4096, 4>::new(v);
    let first = h.try_publish("q", b"a", Q1, 1).unwrap();
    let second = h.try_publish("q", b"b", Q1, 1).unwrap();
    let mut accepted = vec![first, second];
    let mut refused = 0;
    for i in 0..40u8 {
        // With its notice queue full the client refuses instead of evicting unreported.
        match h.try_publish("q", &[i], Q1, 1) {
            Ok(t) => accepted.push(t),
            Err(Error::QueueFull) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(refused > 0, "the burst outran the notice queue");
    let mut evicted: Vec<Token> = h
        .notices()
        .into_iter()
        .map(|n| match n {
            Notice::Evicted { token } => token,
            other => panic!("{other:?}"),
        })
        .collect();
    // Once notices are drained, publishing (and evicting) goes on.
    accepted.push(h.try_publish("q", b"z", Q1, 1).unwrap());
    evicted.extend(h.notices().into_iter().map(|n| match n {
        Notice::Evicted { token } => token,
        other => panic!("{other:?}"),
    }));
    // Every accepted message is either still queued (the last two) or reported evicted.
    assert_eq!(
        evicted,
        accepted[..accepted.len() - 2],
        "every eviction is reported"
    );
    assert_eq!(h.c.pending(), 2);
}

// ---------------------------------------------------------------------------------------------
// Reconnect.
// ---------------------------------------------------------------------------------------------

/// Drops the connection and reconnects with `session_present`; returns what is sent then.
fn reconnect<const S: usize, const B: usize, const R: usize>(
    h: &mut H<S, B, R>,
    session_present: bool,
) -> Vec<Out> {
    h.c.handle_disconnect(h.now());
    assert_eq!(h.notices(), [lost(ConnectionError::TransportClosed)]);
    assert_eq!(h.c.state(), State::Disconnected);
    assert_eq!(h.flush(), [], "nothing is written without a connection");
    h.advance(1_000);
    h.establish(session_present);
    h.flush()
}

/// QoS 1 out: the connection drops after each step.
fn reconnect_qos1_out(v: ProtocolVersion) {
    for sp in [true, false] {
        // Before the PUBLISH is written: sent as a new message either way.
        let mut h = Std::new(v);
        h.establish(false);
        let t = h.publish("a/b", b"hi", Q1);
        let out = reconnect(&mut h, sp);
        assert_eq!(out, [out_pub("a/b", b"hi", Q1, Some(1), false)]);
        assert_eq!(h.broker(&puback(1)), [Ev::Published(t, Rc::Success)]);

        // After the PUBLISH is written, before PUBACK.
        let mut h = Std::new(v);
        let t = h.published(Q1);
        let out = reconnect(&mut h, sp);
        if sp {
            assert_eq!(
                out,
                [out_pub("a/b", b"hi", Q1, Some(1), true)],
                "DUP, same id"
            );
        } else {
            assert_eq!(out.len(), 1, "{out:?}");
            assert!(!pub_ids(&out)[0].1, "a new message: DUP clear");
        }
        let id = pub_ids(&out)[0].0.unwrap();
        assert_eq!(h.broker(&puback(id)), [Ev::Published(t, Rc::Success)]);
        assert_eq!(h.flush(), []);

        // After the PUBACK: nothing to resend.
        let mut h = Std::new(v);
        let t = h.published(Q1);
        assert_eq!(h.broker(&puback(1)), [Ev::Published(t, Rc::Success)]);
        assert_eq!(reconnect(&mut h, sp), []);
    }
}

/// QoS 2 out: the connection drops after each step.
fn reconnect_qos2_out(v: ProtocolVersion) {
    // After PUBLISH, before PUBREC.
    let mut h = Std::new(v);
    let t = h.published(Q2);
    assert_eq!(
        reconnect(&mut h, true),
        [out_pub("a/b", b"hi", Q2, Some(1), true)]
    );
    h.broker(&pubrec(1));
    assert_eq!(h.flush(), [Out::PubRel(1, Rc::Success)]);
    assert_eq!(h.broker(&pubcomp(1)), [Ev::Published(t, Rc::Success)]);

    // After PUBREC arrived, before PUBREL was written.
    let mut h = Std::new(v);
    let t = h.published(Q2);
    h.broker(&pubrec(1));
    assert_eq!(reconnect(&mut h, true), [Out::PubRel(1, Rc::Success)]);
    assert_eq!(h.broker(&pubcomp(1)), [Ev::Published(t, Rc::Success)]);

    // After PUBREL was written, before PUBCOMP.
    let mut h = Std::new(v);
    let t = h.published(Q2);
    h.broker(&pubrec(1));
    assert_eq!(h.flush(), [Out::PubRel(1, Rc::Success)]);
    assert_eq!(reconnect(&mut h, true), [Out::PubRel(1, Rc::Success)]);
    assert_eq!(h.broker(&pubcomp(1)), [Ev::Published(t, Rc::Success)]);
    assert_eq!(h.flush(), []);

    // After PUBCOMP: nothing.
    let mut h = Std::new(v);
    let t = h.published(Q2);
    h.broker(&pubrec(1));
    h.flush();
    assert_eq!(h.broker(&pubcomp(1)), [Ev::Published(t, Rc::Success)]);
    assert_eq!(reconnect(&mut h, true), []);

    // Without a session, at any step: the message goes again as a new PUBLISH.
    for step in 0..3 {
        let mut h = Std::new(v);
        let t = h.published(Q2);
        if step >= 1 {
            h.broker(&pubrec(1));
        }
        if step >= 2 {
            h.flush();
        }
        let out = reconnect(&mut h, false);
        assert_eq!(out.len(), 1, "step {step}: {out:?}");
        let Out::Publish(p) = &out[0] else {
            panic!("step {step}: {out:?}")
        };
        assert!(!p.dup, "step {step}: a new message has DUP clear");
        assert_eq!((p.qos, &p.payload[..]), (Q2, &b"hi"[..]));
        let id = p.id.unwrap();
        h.broker(&pubrec(id));
        assert_eq!(h.flush(), [Out::PubRel(id, Rc::Success)]);
        assert_eq!(h.broker(&pubcomp(id)), [Ev::Published(t, Rc::Success)]);
    }
}

/// Several messages at different steps are resent in order, PUBREL in place of those past PUBREC.
fn reconnect_resends_in_order(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let t1 = h.publish("o", b"1", Q1);
    let t2 = h.publish("o", b"2", Q2);
    let t3 = h.publish("o", b"3", Q2);
    let t4 = h.publish("o", b"4", Q1);
    h.flush();
    h.broker(&pubrec(2));
    h.flush();
    let t5 = h.publish("o", b"5", Q1); // accepted, never written
    let out = reconnect(&mut h, true);
    assert_eq!(
        out,
        [
            out_pub("o", b"1", Q1, Some(1), true),
            Out::PubRel(2, Rc::Success),
            out_pub("o", b"3", Q2, Some(3), true),
            out_pub("o", b"4", Q1, Some(4), true),
            out_pub("o", b"5", Q1, Some(5), false),
        ]
    );
    let mut done = Vec::new();
    done.extend(h.broker(&puback(4)));
    done.extend(h.broker(&pubcomp(2)));
    done.extend(h.broker(&puback(1)));
    done.extend(h.broker(&pubrec(3)));
    assert_eq!(h.flush(), [Out::PubRel(3, Rc::Success)]);
    done.extend(h.broker(&pubcomp(3)));
    done.extend(h.broker(&puback(5)));
    assert_eq!(
        done,
        [t4, t2, t1, t3, t5].map(|t| Ev::Published(t, Rc::Success))
    );
    assert_eq!(h.c.pending(), 0);
}

/// QoS 2 in: the connection drops after each step; the message reaches the application once.
fn reconnect_qos2_in(v: ProtocolVersion) {
    let delivered = |ev: &[Ev]| ev.iter().filter(|e| matches!(e, Ev::Msg(_))).count();

    // PUBLISH read, PUBREC never written.
    let mut h = Std::with(Config {
        clean_start: false,
        ..cfg(v)
    });
    h.establish(false);
    assert_eq!(delivered(&h.broker(&incoming("i", b"x", Q2, 5, false))), 1);
    assert_eq!(reconnect(&mut h, true), []);
    assert_eq!(
        delivered(&h.broker(&incoming("i", b"x", Q2, 5, true))),
        0,
        "delivered twice"
    );
    assert_eq!(h.flush(), [Out::PubRec(5, Rc::Success)]);
    h.broker(&pubrel(5));
    assert_eq!(h.flush(), [Out::PubComp(5, Rc::Success)]);

    // PUBREC written, the broker resends PUBREL after the reconnect.
    let mut h = Std::new(v);
    h.establish(false);
    h.broker(&incoming("i", b"x", Q2, 5, false));
    assert_eq!(h.flush(), [Out::PubRec(5, Rc::Success)]);
    assert_eq!(reconnect(&mut h, true), []);
    // A broker may still resend the PUBLISH if it never saw the PUBREC.
    assert_eq!(
        delivered(&h.broker(&incoming("i", b"x", Q2, 5, true))),
        0,
        "delivered twice"
    );
    assert_eq!(h.flush(), [Out::PubRec(5, Rc::Success)]);
    h.broker(&pubrel(5));
    assert_eq!(h.flush(), [Out::PubComp(5, Rc::Success)]);

    // PUBREL read, PUBCOMP never written: the PUBREL comes again and gets its PUBCOMP.
    let mut h = Std::new(v);
    h.establish(false);
    h.broker(&incoming("i", b"x", Q2, 5, false));
    h.flush();
    h.broker(&pubrel(5));
    assert_eq!(reconnect(&mut h, true), []);
    h.broker(&pubrel(5));
    let out = h.flush();
    assert!(
        matches!(out[..], [Out::PubComp(5, _)]),
        "PUBCOMP for the repeated PUBREL: {out:?}"
    );

    // Without a session the broker forgets the exchange, and so does the client: id 5 is new.
    let mut h = Std::new(v);
    h.establish(false);
    h.broker(&incoming("i", b"x", Q2, 5, false));
    h.flush();
    assert_eq!(reconnect(&mut h, false), []);
    assert_eq!(delivered(&h.broker(&incoming("i", b"y", Q2, 5, false))), 1);
}

/// QoS 1 in: dropped before PUBACK was written, the redelivery is delivered and acked.
fn reconnect_qos1_in(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    assert_eq!(h.broker(&incoming("i", b"x", Q1, 5, false)).len(), 1);
    assert_eq!(
        reconnect(&mut h, true),
        [],
        "the PUBACK of the old connection is gone"
    );
    assert_eq!(
        h.broker(&incoming("i", b"x", Q1, 5, true)),
        [msg("i", b"x", Q1, Some(5))]
    );
    assert_eq!(h.flush(), [Out::PubAck(5, Rc::Success)]);
}

/// A SUBSCRIBE not yet acknowledged keeps the id `subscribe` returned, so the `Subscribed` event
/// still names it after a reconnect.
fn pending_subscribe_keeps_its_id_across_reconnect(v: ProtocolVersion) {
    for sp in [true, false] {
        let mut h = Std::new(v);
        h.establish(false);
        let id = h.subscribe(&[("a/#", SubscriptionOptions::new(Q1))], &[]);
        assert!(matches!(h.flush()[..], [Out::Subscribe { .. }]));
        // Another id-using message between, so a reallocation would show.
        h.publish("t", b"x", Q1);
        h.flush();
        let out = reconnect(&mut h, sp);
        let ids: Vec<u16> = out
            .iter()
            .filter_map(|o| match o {
                Out::Subscribe { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, [id], "session present: {sp}; {out:?}");
        let codes = [Rc::GrantedQoS1];
        let ev = h.broker(&Packet::SubAck(SubAck::new(pid(id), &codes)));
        assert_eq!(ev, [Ev::Subscribed(id, vec![Rc::GrantedQoS1])]);
    }
}

/// The issue: with no session present, subscriptions are restored: the granted filters, with
/// their options, minus those unsubscribed since. With a session present nothing is resent.
fn subscriptions_restored_without_session(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let o1 = SubscriptionOptions {
        no_local: v.is_v5(),
        ..SubscriptionOptions::new(Q1)
    };
    let filters = [
        ("a/#", o1),
        ("b", SubscriptionOptions::new(Q2)),
        ("denied/#", SubscriptionOptions::new(Q0)),
    ];
    let id = h.subscribe(&filters, &[]);
    h.flush();
    let codes = [Rc::GrantedQoS1, Rc::GrantedQoS2, Rc::UnspecifiedError];
    let ev = h.broker(&Packet::SubAck(SubAck::new(pid(id), &codes)));
    assert_eq!(ev, [Ev::Subscribed(id, codes.to_vec())]);
    let uid = h.unsubscribe(&["b"]);
    h.flush();
    let ucodes: &[Rc] = if v.is_v5() { &[Rc::Success] } else { &[] };
    h.broker(&Packet::UnsubAck(UnsubAck::new(pid(uid), ucodes)));
    assert_eq!(h.notices(), []);

    assert_eq!(
        reconnect(&mut h, true),
        [],
        "the server kept the subscriptions"
    );

    for round in 0..2 {
        let out = reconnect(&mut h, false);
        let subs: Vec<(String, SubscriptionOptions)> = out
            .iter()
            .flat_map(|o| match o {
                Out::Subscribe { filters, .. } => filters.clone(),
                _ => vec![],
            })
            .collect();
        assert_eq!(subs, [("a/#".to_owned(), o1)], "round {round}: {out:?}");
        // The restore's SUBACK is accepted like any other.
        for o in &out {
            if let Out::Subscribe { id, .. } = o {
                h.broker(&Packet::SubAck(SubAck::new(pid(*id), &[Rc::GrantedQoS1])));
                assert_eq!(h.c.state(), State::Connected);
            }
        }
        assert_eq!(h.notices(), []);
        assert_eq!(h.flush(), []);
    }
}

// ---------------------------------------------------------------------------------------------
// Incoming topic aliases (MQTT 5).
// ---------------------------------------------------------------------------------------------

fn alias_cfg() -> Config {
    Config {
        topic_alias_maximum: 4,
        ..cfg(V5)
    }
}

/// A PUBLISH from the broker carrying a topic alias.
fn aliased<'a>(topic: &'a str, payload: &'a [u8], props: &'a [Property<'a>]) -> Packet<'a> {
    Packet::Publish(Publish {
        properties: Properties::new(props),
        ..Publish::new(topic, payload)
    })
}

/// Topic and payload of the message events in `ev`.
fn topics(ev: &[Ev]) -> Vec<(String, Vec<u8>)> {
    ev.iter()
        .map(|e| match e {
            Ev::Msg(m) => (m.topic.clone(), m.payload.clone()),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn incoming_topic_aliases_resolve() {
    let mut h = Std::with(alias_cfg());
    let bytes = h.connect();
    let Ok(Status::Complete((Packet::Connect(c), _))) = decode(&bytes, V5, usize::MAX) else {
        panic!("not a CONNECT");
    };
    assert!(
        c.properties
            .iter()
            .any(|p| p == Property::TopicAliasMaximum(4)),
        "{:?}",
        c.properties
    );
    h.broker(&connack(false));
    let one = [Property::TopicAlias(1)];
    let two = [Property::TopicAlias(2)];
    let mut ev = h.broker(&aliased("a/b", b"1", &one));
    ev.extend(h.broker(&aliased("", b"2", &one)));
    ev.extend(h.broker(&aliased("x", b"3", &two)));
    ev.extend(h.broker(&aliased("", b"4", &two)));
    // Alias 1 now names another topic.
    ev.extend(h.broker(&aliased("c", b"5", &one)));
    ev.extend(h.broker(&aliased("", b"6", &one)));
    ev.extend(h.broker(&aliased("", b"7", &two)));
    let expected: Vec<(String, Vec<u8>)> = [
        ("a/b", "1"),
        ("a/b", "2"),
        ("x", "3"),
        ("x", "4"),
        ("c", "5"),
        ("c", "6"),
        ("x", "7"),
    ]
    .iter()
    .map(|(t, p)| ((*t).to_owned(), p.as_bytes().to_vec()))
    .collect();
    assert_eq!(topics(&ev), expected);
    assert_eq!(h.notices(), []);
    assert_eq!(h.c.pending(), 0, "aliases are not pending messages");
}

#[test]
fn incoming_alias_above_maximum_is_violation() {
    let mut h = Std::with(alias_cfg());
    h.establish(false);
    let five = [Property::TopicAlias(5)];
    assert_eq!(h.broker(&aliased("a", b"1", &five)), []);
    h.expect_close(
        Rc::TopicAliasInvalid,
        ConnectionError::ProtocolViolation(Rc::TopicAliasInvalid),
    );
}

/// An empty topic with an alias that has no mapping is a protocol error.
#[test]
fn incoming_unmapped_alias_is_violation() {
    let mut h = Std::with(alias_cfg());
    h.establish(false);
    let two = [Property::TopicAlias(2)];
    assert_eq!(h.broker(&aliased("", b"1", &two)), []);
    assert_eq!(h.last, Some(Last::Closed));
    let n = h.notices();
    let [Notice::ConnectionLost(ConnectionError::ProtocolViolation(rc))] = n[..] else {
        panic!("{n:?}")
    };
    assert!(
        matches!(rc, Rc::TopicAliasInvalid | Rc::ProtocolError),
        "{rc:?}"
    );
    assert_eq!(h.flush(), [Out::Disconnect(rc)]);
}

/// MQTT 5 3.3.2.3.4: alias mappings last one network connection.
#[test]
fn incoming_aliases_are_forgotten_on_reconnect() {
    let mut h = Std::with(alias_cfg());
    h.establish(false);
    let one = [Property::TopicAlias(1)];
    h.broker(&aliased("a/b", b"1", &one));
    reconnect(&mut h, true);
    assert_eq!(h.broker(&aliased("", b"2", &one)), []);
    assert_eq!(h.last, Some(Last::Closed));
}

/// The broker may use every alias the client offered whatever the client's outgoing queue holds:
/// a full queue must not turn a valid alias into a lost connection.
#[test]
fn incoming_alias_needs_no_room_in_the_outgoing_queue() {
    let mut h = H::<2, 4096, 4>::with(alias_cfg());
    h.establish(false);
    h.publish("out", b"1", Q1);
    h.publish("out", b"2", Q1);
    assert_eq!(h.flush().len(), 2);
    let one = [Property::TopicAlias(1)];
    let mut ev = h.broker(&aliased("a/b", b"1", &one));
    ev.extend(h.broker(&aliased("", b"2", &one)));
    assert_eq!(h.notices(), []);
    assert_eq!(
        topics(&ev),
        [
            ("a/b".to_owned(), b"1".to_vec()),
            ("a/b".to_owned(), b"2".to_vec())
        ]
    );
    assert_eq!(h.c.state(), State::Connected);
}

/// Nor may aliases the broker set up take the room of messages the application publishes.
#[test]
fn incoming_aliases_do_not_shrink_the_outgoing_queue() {
    let mut h = H::<2, 4096, 4>::with(alias_cfg());
    h.establish(false);
    let one = [Property::TopicAlias(1)];
    let two = [Property::TopicAlias(2)];
    h.broker(&aliased("a/b", b"1", &one));
    h.broker(&aliased("c/d", b"1", &two));
    assert_eq!(h.notices(), []);
    h.try_publish("out", b"1", Q1, 5).unwrap();
    h.try_publish("out", b"2", Q1, 5).unwrap();
    assert_eq!(
        h.notices(),
        [],
        "nothing evicted: the queue holds 2 messages"
    );
}

// ---------------------------------------------------------------------------------------------
// Keep-alive.
// ---------------------------------------------------------------------------------------------

fn keep_alive_ping_cycle(v: ProtocolVersion) {
    let mut h = Std::with(Config {
        keep_alive: 30,
        ..cfg(v)
    });
    h.establish(false);
    let t0 = h.now;
    assert_eq!(h.c.keep_alive(), Duration::from_secs(30));
    assert_eq!(h.c.poll_timeout(), Some(Instant::from_millis(t0 + 30_000)));
    // Sending something moves the deadline.
    h.now = t0 + 10_000;
    let t = h.publish("t", b"x", Q0);
    h.flush();
    assert_eq!(h.notices(), [Notice::Sent { token: t }]);
    assert_eq!(h.c.poll_timeout(), Some(Instant::from_millis(t0 + 40_000)));
    // Early is harmless.
    h.now = t0 + 39_999;
    h.c.handle_timeout(h.now());
    assert_eq!(h.flush(), []);
    h.now = t0 + 40_000;
    h.c.handle_timeout(h.now());
    assert_eq!(h.flush_raw(), [vec![0xC0, 0x00]]);
    let ping = h.now;
    assert_eq!(
        h.c.poll_timeout(),
        Some(Instant::from_millis(ping + 10_000))
    );
    h.now = ping + 2_000;
    assert_eq!(h.feed(&[0xD0, 0x00]), []);
    assert_eq!(
        h.c.poll_timeout(),
        Some(Instant::from_millis(ping + 30_000))
    );
    h.now = ping + 30_000;
    h.c.handle_timeout(h.now());
    assert_eq!(h.flush(), [Out::PingReq]);
    assert_eq!(h.notices(), []);
}

fn keep_alive_timeout(v: ProtocolVersion) {
    let mut h = Std::with(Config {
        keep_alive: 30,
        ..cfg(v)
    });
    h.establish(false);
    h.advance(30_000);
    h.c.handle_timeout(h.now());
    assert_eq!(h.flush(), [Out::PingReq]);
    let ping = h.now;
    let deadline = Instant::from_millis(ping + 10_000);
    assert_eq!(h.c.poll_timeout(), Some(deadline));
    h.now = ping + 9_999;
    h.c.handle_timeout(h.now());
    assert_eq!(h.notices(), []);
    h.now = ping + 10_000;
    h.c.handle_timeout(h.now());
    assert_eq!(h.notices(), [lost(ConnectionError::Timeout)]);
    if v.is_v5() {
        assert_eq!(h.flush_raw(), [vec![0xE0, 0x01, 0x8D]]);
    } else {
        assert_eq!(h.flush(), []);
    }
    assert_eq!(h.c.state(), State::Disconnected);
    assert_eq!(h.c.poll_timeout(), None);
}

/// `poll_timeout` must not keep returning a deadline that `handle_timeout` does nothing about:
/// a runtime would spin until the response timeout.
fn no_busy_deadline_while_waiting_for_pingresp(v: ProtocolVersion) {
    // Keep-alive (5 s) shorter than the response timeout (10 s).
    let mut h = Std::with(Config {
        keep_alive: 5,
        ..cfg(v)
    });
    h.establish(false);
    let mut wakeups = 0;
    // Drive like a runtime: sleep to the deadline, handle it, flush. No PINGRESP comes.
    while h.notices().is_empty() {
        let t = h.c.poll_timeout().expect("a deadline while connected");
        assert!(t.as_millis() >= h.now, "deadline in the past");
        h.now = t.as_millis();
        h.c.handle_timeout(h.now());
        h.flush();
        wakeups += 1;
        assert!(wakeups < 10, "runtime woken {wakeups} times at {}ms", h.now);
    }
}

#[test]
fn server_keep_alive_wins() {
    let mut h = Std::new(V5);
    h.connect();
    let props = [Property::ServerKeepAlive(5)];
    let ack = Packet::ConnAck(ConnAck {
        properties: Properties::new(&props),
        ..ConnAck::new(false, Rc::Success)
    });
    h.broker(&ack);
    assert_eq!(h.c.keep_alive(), Duration::from_secs(5));
    let t0 = h.now;
    assert_eq!(h.c.poll_timeout(), Some(Instant::from_millis(t0 + 5_000)));
    h.now = t0 + 5_000;
    h.c.handle_timeout(h.now());
    assert_eq!(h.flush(), [Out::PingReq]);
}

/// MQTT 5 3.2.2.3.14: the client MUST use the server's keep-alive; 0 switches keep-alive off.
#[test]
fn server_keep_alive_zero_disables_pings() {
    let mut h = Std::new(V5);
    h.connect();
    let props = [Property::ServerKeepAlive(0)];
    let ack = Packet::ConnAck(ConnAck {
        properties: Properties::new(&props),
        ..ConnAck::new(false, Rc::Success)
    });
    h.broker(&ack);
    assert_eq!(h.c.keep_alive(), Duration::ZERO);
    assert_eq!(h.c.poll_timeout(), None);
}

fn keep_alive_zero_means_no_deadline(v: ProtocolVersion) {
    let mut h = Std::with(Config {
        keep_alive: 0,
        ..cfg(v)
    });
    h.establish(false);
    assert_eq!(h.c.poll_timeout(), None);
    h.advance(1_000_000);
    h.c.handle_timeout(h.now());
    assert_eq!(h.flush(), []);
}

// ---------------------------------------------------------------------------------------------
// Subscribe / unsubscribe.
// ---------------------------------------------------------------------------------------------

fn subscribe_several_filters(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let filters = [
        ("sensors/+/temperature", SubscriptionOptions::new(Q1)),
        ("alerts/#", SubscriptionOptions::new(Q2)),
        ("status", SubscriptionOptions::new(Q0)),
    ];
    let id = h.subscribe(&filters, &[]);
    assert_eq!(id, 1);
    assert_eq!(
        h.flush(),
        [Out::Subscribe {
            id,
            filters: filters.iter().map(|(f, o)| ((*f).to_owned(), *o)).collect(),
            props: vec![],
        }]
    );
    let codes = [Rc::GrantedQoS1, Rc::UnspecifiedError, Rc::Success];
    let ev = h.broker(&Packet::SubAck(SubAck::new(pid(id), &codes)));
    assert_eq!(ev, [Ev::Subscribed(id, codes.to_vec())]);
    assert_eq!(h.c.pending(), 0);

    let uid = h.unsubscribe(&["alerts/#", "status"]);
    assert_eq!(uid, 2);
    assert_eq!(
        h.flush(),
        [Out::Unsubscribe {
            id: uid,
            filters: vec!["alerts/#".into(), "status".into()]
        }]
    );
    let ucodes = [Rc::Success, Rc::NoSubscriptionExisted];
    let sent: &[Rc] = if v.is_v5() { &ucodes } else { &[] };
    let ack = UnsubAck::new(pid(uid), sent);
    let ev = h.broker(&Packet::UnsubAck(ack));
    let expected = if v.is_v5() { ucodes.to_vec() } else { vec![] };
    assert_eq!(ev, [Ev::Unsubscribed(uid, expected)]);
    assert_eq!(h.c.pending(), 0);
    assert_eq!(h.notices(), []);
}

#[test]
fn subscribe_v5_options_and_properties() {
    let mut h = Std::new(V5);
    h.establish(false);
    let o1 = SubscriptionOptions {
        qos: Q1,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    let o2 = SubscriptionOptions {
        retain_handling: RetainHandling::SendIfNew,
        ..SubscriptionOptions::new(Q2)
    };
    let props = [
        Property::SubscriptionIdentifier(42),
        Property::UserProperty("k", "v"),
    ];
    let id = h.subscribe(&[("a/+", o1), ("b/#", o2)], &props);
    assert_eq!(
        h.flush(),
        [Out::Subscribe {
            id,
            filters: vec![("a/+".into(), o1), ("b/#".into(), o2)],
            props: props_text(&Properties::new(&props)),
        }]
    );
    let codes = [Rc::NotAuthorized, Rc::GrantedQoS2];
    let ev = h.broker(&Packet::SubAck(SubAck::new(pid(id), &codes)));
    assert_eq!(ev, [Ev::Subscribed(id, codes.to_vec())]);
}

#[test]
fn subscribe_v5_options_refused_in_v311() {
    let mut h = Std::new(V311);
    h.establish(false);
    let o = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::new(Q1)
    };
    let f = [(TopicFilter::new("a").unwrap(), o)];
    assert_eq!(
        h.c.subscribe(h.now(), &f, &[]),
        Err(Error::Encode(EncodeError::NotInVersion))
    );
    assert_eq!(h.c.pending(), 0);
}

fn subscribe_while_offline_goes_out_after_connack(v: ProtocolVersion) {
    let mut h = Std::new(v);
    let id = h.subscribe(&[("a", SubscriptionOptions::new(Q0))], &[]);
    h.connect();
    assert_eq!(h.flush(), []);
    h.broker(&connack(false));
    let out = h.flush();
    assert!(
        matches!(&out[..], [Out::Subscribe { id: i, .. }] if *i == id),
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Protocol violations.
// ---------------------------------------------------------------------------------------------

fn unknown_ids_are_violations(v: ProtocolVersion) {
    let codes = [Rc::Success];
    let ucodes: &[Rc] = if v.is_v5() { &[Rc::Success] } else { &[] };
    let cases: Vec<(&str, Packet<'_>)> = vec![
        ("PUBACK", puback(3)),
        ("PUBREC", pubrec(3)),
        ("PUBCOMP", pubcomp(3)),
        ("SUBACK", Packet::SubAck(SubAck::new(pid(3), &codes))),
        ("UNSUBACK", Packet::UnsubAck(UnsubAck::new(pid(3), ucodes))),
    ];
    for (name, p) in cases {
        let mut h = Std::new(v);
        h.establish(false);
        assert_eq!(h.broker(&p), [], "{name}");
        h.expect_close(
            Rc::ProtocolError,
            ConnectionError::ProtocolViolation(Rc::ProtocolError),
        );
        // The client reads nothing more on this connection.
        assert_eq!(h.broker(&incoming("t", b"x", Q0, 0, false)), []);
        assert_eq!(h.last, Some(Last::Closed));
    }
}

/// An ack of the wrong kind for an id in flight (PUBACK for a QoS 2 message) is a violation.
fn wrong_ack_kind_is_violation(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.published(Q2);
    h.broker(&puback(1));
    h.expect_close(
        Rc::ProtocolError,
        ConnectionError::ProtocolViolation(Rc::ProtocolError),
    );
}

fn packets_before_connack_are_violations(v: ProtocolVersion) {
    let codes = [Rc::Success];
    for p in [
        Packet::SubAck(SubAck::new(pid(1), &codes)),
        incoming("t", b"x", Q0, 0, false),
        Packet::PingResp,
    ] {
        let mut h = Std::new(v);
        h.connect();
        assert_eq!(h.broker(&p), []);
        assert_eq!(h.last, Some(Last::Closed), "{p:?}");
        assert_eq!(
            h.notices(),
            [lost(ConnectionError::ProtocolViolation(Rc::ProtocolError))]
        );
        assert_eq!(h.c.state(), State::Disconnected);
    }
}

/// MQTT 5 lets the client send DISCONNECT with a reason code after CONNECT, before CONNACK;
/// the brief asks for it on every violation.
#[test]
fn violation_before_connack_writes_disconnect_in_v5() {
    let mut h = Std::new(V5);
    h.connect();
    let codes = [Rc::Success];
    h.broker(&Packet::SubAck(SubAck::new(pid(1), &codes)));
    h.notices();
    assert_eq!(h.flush(), [Out::Disconnect(Rc::ProtocolError)]);
}

fn second_connack_is_violation(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    h.broker(&connack(false));
    h.expect_close(
        Rc::ProtocolError,
        ConnectionError::ProtocolViolation(Rc::ProtocolError),
    );
}

fn malformed_bytes(v: ProtocolVersion) {
    let cases: [(&[u8], DecodeError); 5] = [
        (&[0x00, 0x00], DecodeError::InvalidPacketType(0)),
        (&[0x42, 0x02, 0x00, 0x01], DecodeError::InvalidHeaderFlags),
        (&[0x40, 0x01, 0x00], DecodeError::UnexpectedEnd),
        (&[0x40, 0x02, 0x00, 0x00], DecodeError::ZeroPacketId),
        (
            &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            DecodeError::InvalidQoS,
        ),
    ];
    for (bytes, err) in cases {
        let mut h = Std::new(v);
        h.establish(false);
        assert_eq!(h.feed(bytes), []);
        h.expect_close(err.reason_code(), ConnectionError::Malformed(err));
    }
    // A fifth remaining-length byte is malformed as soon as it is seen.
    let mut h = Std::new(v);
    h.establish(false);
    h.feed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    h.expect_close(
        Rc::MalformedPacket,
        ConnectionError::Malformed(DecodeError::RemainingLengthTooLong),
    );
}

fn partial_packets_need_more(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let bytes = enc(v, &incoming("t/u", b"payload", Q1, 4, false));
    for cut in 1..bytes.len() {
        {
            assert_eq!(h.feed(&bytes[..cut]), []);
            assert!(
                matches!(h.last, Some(Last::NeedMore(n)) if n > 0),
                "cut {cut}: {:?}",
                h.last
            );
        }
    }
    assert_eq!(h.feed(&bytes), [msg("t/u", b"payload", Q1, Some(4))]);
    // Two packets in one read.
    let mut two = enc(v, &incoming("a", b"1", Q0, 0, false));
    two.extend(enc(v, &incoming("b", b"2", Q0, 0, false)));
    assert_eq!(
        h.feed(&two),
        [msg("a", b"1", Q0, None), msg("b", b"2", Q0, None)]
    );
}

fn publish_with_empty_topic(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    let v5_bytes: &[u8] = &[0x30, 0x04, 0x00, 0x00, 0x00, b'x'];
    let v3_bytes: &[u8] = &[0x30, 0x03, 0x00, 0x00, b'x'];
    let (bytes, err) = if v.is_v5() {
        (v5_bytes, DecodeError::MissingTopic)
    } else {
        (
            v3_bytes,
            DecodeError::InvalidTopicName(mqtt_proto::TopicError::Empty),
        )
    };
    assert_eq!(h.feed(bytes), []);
    h.expect_close(err.reason_code(), ConnectionError::Malformed(err));
}

#[test]
fn auth_in_v311_is_malformed() {
    let mut h = Std::new(V311);
    h.establish(false);
    h.feed(&[0xF0, 0x00]);
    h.expect_close(
        Rc::MalformedPacket,
        ConnectionError::Malformed(DecodeError::InvalidPacketType(15)),
    );
}

#[test]
fn server_disconnect_with_reason() {
    for rc in [
        Rc::ServerShuttingDown,
        Rc::SessionTakenOver,
        Rc::KeepAliveTimeout,
    ] {
        let mut h = Std::new(V5);
        h.establish(false);
        assert_eq!(h.broker(&Packet::Disconnect(Disconnect::new(rc))), []);
        let n = h.notices();
        assert_eq!(n, [lost(ConnectionError::ServerDisconnect(rc))]);
        let text = ConnectionError::ServerDisconnect(rc).to_string();
        assert!(text.contains(rc.description()), "{text}");
        assert_eq!(h.c.state(), State::Disconnected);
        assert_eq!(
            h.flush(),
            [],
            "no DISCONNECT back to a server that disconnected"
        );
    }
}

/// `Read::Closed` means the connection is over; a server DISCONNECT ends it.
#[test]
fn server_disconnect_reads_closed() {
    let mut h = Std::new(V5);
    h.establish(false);
    h.broker(&Packet::Disconnect(Disconnect::new(Rc::ServerShuttingDown)));
    assert_eq!(h.last, Some(Last::Closed));
}

// ---------------------------------------------------------------------------------------------
// Deliberate disconnect.
// ---------------------------------------------------------------------------------------------

fn deliberate_disconnect(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    h.publish("t", b"x", Q1);
    h.flush();
    h.broker(&incoming("t", b"y", Q1, 3, false));
    assert_eq!(h.flush(), [Out::PubAck(3, Rc::Success)]);
    h.c.disconnect(Rc::Success);
    assert_eq!(h.c.state(), State::Closed);
    assert_eq!(
        h.flush_raw(),
        [vec![0xE0, 0x00]],
        "only DISCONNECT, nothing after it"
    );
    assert_eq!(h.c.state(), State::Closed);
    assert_eq!(h.c.poll_timeout(), None);
    let mut buf = [0u8; 256];
    assert_eq!(
        h.c.connect(h.now(), &ConnectOptions::default(), &mut buf),
        Err(Error::Closed)
    );
    assert_eq!(h.try_publish("t", b"x", Q1, 5), Err(Error::Closed));
    assert_eq!(h.broker(&puback(1)), []);
    assert_eq!(h.last, Some(Last::Closed));
    h.c.handle_timeout(Instant::from_millis(h.now + 1_000_000));
    h.c.handle_disconnect(h.now());
    assert_eq!(h.c.state(), State::Closed);
    assert_eq!(
        h.notices(),
        [],
        "a deliberate close is not a lost connection"
    );
    let f = [(TopicFilter::new("a").unwrap(), SubscriptionOptions::new(Q0))];
    assert_eq!(h.c.subscribe(h.now(), &f, &[]), Err(Error::Closed));
}

#[test]
fn deliberate_disconnect_v5_reason_code() {
    let mut h = Std::new(V5);
    h.establish(false);
    h.c.disconnect(Rc::DisconnectWithWill);
    assert_eq!(h.flush_raw(), [vec![0xE0, 0x01, 0x04]]);
}

/// MQTT 3.1.1 DISCONNECT has no reason code: a v5-only code must not wedge `poll_transmit`.
#[test]
fn deliberate_disconnect_v311_ignores_reason_code() {
    let mut h = Std::new(V311);
    h.establish(false);
    h.c.disconnect(Rc::DisconnectWithWill);
    assert_eq!(h.flush_raw(), [vec![0xE0, 0x00]]);
}

fn transmit_buffer_too_small_loses_nothing(v: ProtocolVersion) {
    let mut h = Std::new(v);
    h.establish(false);
    h.broker(&incoming("t", b"x", Q1, 9, false));
    h.publish("topic", &[1; 40], Q1);
    let mut tiny = [0u8; 3];
    assert!(matches!(
        h.c.poll_transmit(h.now(), &mut tiny),
        Err(Error::Encode(EncodeError::BufferTooSmall { needed: 4 }))
    ));
    let mut small = [0u8; 4];
    assert_eq!(h.c.poll_transmit(h.now(), &mut small), Ok(Some(4)));
    let needed = match h.c.poll_transmit(h.now(), &mut tiny) {
        Err(Error::Encode(EncodeError::BufferTooSmall { needed })) => needed,
        other => panic!("{other:?}"),
    };
    assert!(needed > 40);
    assert_eq!(h.flush(), [out_pub("topic", &[1; 40], Q1, Some(1), false)]);
}

// ---------------------------------------------------------------------------------------------
// Packet ids exhausted.
// ---------------------------------------------------------------------------------------------

/// Every id is taken only when 65535 packets are in flight, so the store needs 65535 slots:
/// the heap-backed client holds them (and finds free ids in O(1)).
#[test]
fn all_packet_ids_in_use() {
    let mut c: HeapClient<4> = HeapClient::with_capacity(cfg(V311), 70_000, 2 << 20);
    let f = [(TopicFilter::new("a").unwrap(), SubscriptionOptions::new(Q0))];
    let now = Instant::from_millis(0);
    for i in 1..=u16::MAX {
        assert_eq!(c.subscribe(now, &f, &[]).map(PacketId::get), Ok(i));
    }
    // The store has room; the ids are what runs out, and that is an error, not a spin.
    assert_eq!(c.subscribe(now, &f, &[]), Err(Error::PacketIdsExhausted));
    assert_eq!(
        c.publish(
            now,
            &Publish {
                qos: Q1,
                ..Publish::new("t", b"x")
            },
            5
        )
        .map(|_| ()),
        Ok(()),
        "a publish queues without an id"
    );
    // Connected, the queued publish cannot get an id either: poll_transmit says so.
    let mut buf = [0u8; 64];
    assert!(c.connect(now, &ConnectOptions::default(), &mut buf).is_ok());
    assert!(matches!(
        c.handle_read(now, &[0x20, 0x02, 0x00, 0x00]),
        Read::Packet { .. }
    ));
    let mut sent = 0;
    let result = loop {
        match c.poll_transmit(now, &mut buf) {
            Ok(Some(_)) => sent += 1,
            other => break other,
        }
    };
    // The 65535 SUBSCRIBEs go out with their ids; the PUBLISH then finds none free.
    assert_eq!(sent, 65_535);
    assert_eq!(result, Err(Error::PacketIdsExhausted));
}

// ---------------------------------------------------------------------------------------------
// Arbitrary broker bytes never panic.
// ---------------------------------------------------------------------------------------------

proptest! {
    // Failures are reported with their minimal input; no regression file is written.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_broker_bytes_never_panic(
        v5 in any::<bool>(),
        connacked in any::<bool>(),
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
    ) {
        let v = if v5 { V5 } else { V311 };
        let mut h = Std::new(v);
        h.publish("t", b"x", Q2);
        h.connect();
        if connacked {
            h.broker(&connack(true));
        }
        for chunk in &chunks {
            h.feed(chunk);
            h.flush();
            h.advance(5_000);
            h.c.handle_timeout(h.now());
            h.flush();
            for n in h.notices() {
                if let Notice::ConnectionLost(e) = n {
                    let _ = e.to_string();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The model: random interleavings against a broker that acks correctly.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// The application publishes at QoS 1 (false) or 2 (true).
    Publish(bool),
    /// The broker publishes to the client at QoS 1 (false) or 2 (true).
    BrokerPublish(bool),
    /// The client writes up to n packets to the wire.
    ClientSend(u8),
    /// The broker reads up to n packets from the wire.
    BrokerRead(u8),
    /// The client reads up to n packets from the wire.
    ClientRead(u8),
    /// The application subscribes to one more filter.
    Subscribe,
    /// The connection drops (bytes on the wire are lost) and the client reconnects; with `true`
    /// the broker also loses the session (CONNACK with session present 0).
    Drop(bool),
}

/// Operations; `session_loss` lets drops lose the broker's session too.
fn op(session_loss: bool) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<bool>().prop_map(Op::Publish),
        2 => any::<bool>().prop_map(Op::BrokerPublish),
        3 => (1u8..4).prop_map(Op::ClientSend),
        3 => (1u8..4).prop_map(Op::BrokerRead),
        3 => (1u8..4).prop_map(Op::ClientRead),
        1 => Just(Op::Subscribe),
        1 => any::<bool>().prop_map(move |lose| Op::Drop(lose && session_loss)),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutboundState {
    Unsent,
    AwaitAck,
    AwaitComp,
}

#[derive(Debug)]
struct BrokerMsg {
    id: u16,
    seq: u32,
    qos: QoS,
    state: OutboundState,
}

struct Model {
    v: ProtocolVersion,
    c: Client<32, 16384, 16>,
    now: u64,
    up: VecDeque<Vec<u8>>,
    down: VecDeque<Vec<u8>>,
    // Client side.
    next_seq: u32,
    tokens: HashMap<Token, (u32, QoS)>,
    completed: HashMap<Token, usize>,
    app_got: HashMap<u32, usize>,
    /// Ids `subscribe` returned whose `Subscribed` event has not come yet.
    subscribing: Vec<u16>,
    next_filter: u32,
    /// Whether the broker ever lost the session (QoS 2 dedupe state included).
    session_lost: bool,
    // Broker side.
    connected: bool,
    had_session: bool,
    broker_got: HashMap<u32, usize>,
    broker_qos2: HashMap<u16, u32>,
    outbound: Vec<BrokerMsg>,
    outbound_qos: HashMap<u32, QoS>,
    next_broker_seq: u32,
    next_broker_id: u16,
}

impl Model {
    fn new(v: ProtocolVersion, inflight: u16) -> Self {
        let mut m = Model {
            v,
            c: Client::new(Config {
                keep_alive: 0,
                clean_start: false,
                session_expiry: 3600,
                inflight,
                ..cfg(v)
            }),
            now: 0,
            up: VecDeque::new(),
            down: VecDeque::new(),
            next_seq: 0,
            tokens: HashMap::new(),
            completed: HashMap::new(),
            app_got: HashMap::new(),
            subscribing: Vec::new(),
            next_filter: 0,
            session_lost: false,
            connected: false,
            had_session: false,
            broker_got: HashMap::new(),
            broker_qos2: HashMap::new(),
            outbound: Vec::new(),
            outbound_qos: HashMap::new(),
            next_broker_seq: 1_000_000,
            next_broker_id: 1,
        };
        m.reconnect();
        m
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    fn reconnect(&mut self) {
        let mut buf = [0u8; 256];
        let opts = ConnectOptions {
            client_id: "model",
            ..ConnectOptions::default()
        };
        let n = self.c.connect(self.now(), &opts, &mut buf).unwrap();
        self.up.push_back(buf[..n].to_vec());
    }

    fn check_notices(&mut self) {
        while let Some(n) = self.c.poll_notice() {
            assert_eq!(
                n,
                lost(ConnectionError::TransportClosed),
                "unexpected notice"
            );
        }
    }

    fn apply(&mut self, op: &Op) {
        self.now += 10;
        match *op {
            // Keep the store from filling up (eviction is tested elsewhere).
            Op::Publish(_) if self.c.pending() >= 30 => {}
            Op::Publish(qos2) => {
                let qos = if qos2 { Q2 } else { Q1 };
                let seq = self.next_seq;
                self.next_seq += 1;
                let payload = seq.to_be_bytes();
                let p = Publish {
                    qos,
                    ..Publish::new("model/up", &payload)
                };
                let t = self
                    .c
                    .publish(self.now(), &p, 5)
                    .expect("the queue is big enough");
                assert!(
                    self.tokens.insert(t, (seq, qos)).is_none(),
                    "token {t} reused"
                );
            }
            Op::BrokerPublish(qos2) => self.broker_publish(if qos2 { Q2 } else { Q1 }),
            Op::ClientSend(n) => self.client_send(usize::from(n)),
            Op::BrokerRead(n) => {
                for _ in 0..n {
                    let Some(bytes) = self.up.pop_front() else {
                        break;
                    };
                    self.broker_handle(&bytes);
                }
            }
            Op::ClientRead(n) => self.client_read(usize::from(n)),
            Op::Subscribe => {
                let name = format!("model/s{}", self.next_filter);
                self.next_filter += 1;
                let f = [(
                    TopicFilter::new(&name).unwrap(),
                    SubscriptionOptions::new(Q1),
                )];
                let id = self.c.subscribe(self.now(), &f, &[]).expect("subscribe");
                assert!(!self.subscribing.contains(&id.get()), "id {id} given twice");
                self.subscribing.push(id.get());
            }
            Op::Drop(lose_session) => {
                self.c.handle_disconnect(self.now());
                self.up.clear();
                self.down.clear();
                self.connected = false;
                if lose_session {
                    // The broker forgets everything about this client, its undelivered
                    // messages included.
                    self.session_lost = true;
                    self.had_session = false;
                    self.broker_qos2.clear();
                    for m in self.outbound.drain(..) {
                        self.outbound_qos.remove(&m.seq);
                    }
                }
                self.check_notices();
                self.reconnect();
            }
        }
        self.check_notices();
    }

    fn client_send(&mut self, n: usize) {
        let mut buf = [0u8; 1024];
        for _ in 0..n {
            match self.c.poll_transmit(self.now(), &mut buf).unwrap() {
                Some(len) => self.up.push_back(buf[..len].to_vec()),
                None => break,
            }
        }
    }

    fn client_read(&mut self, n: usize) {
        for _ in 0..n {
            let Some(bytes) = self.down.pop_front() else {
                break;
            };
            loop {
                let now = self.now();
                match self.c.handle_read(now, &bytes) {
                    Read::Packet { used, event } => {
                        assert_eq!(used, bytes.len());
                        if let Some(e) = event.map(own_event) {
                            self.client_event(e);
                        }
                        break;
                    }
                    Read::TransmitFirst => self.client_send(usize::MAX),
                    other => {
                        let other = format!("{other:?}");
                        let notices: Vec<_> = std::iter::from_fn(|| self.c.poll_notice()).collect();
                        panic!(
                            "client read {:?} -> {other}; notices: {notices:?}",
                            decode_out(self.v, &bytes),
                        );
                    }
                }
            }
        }
    }

    fn client_event(&mut self, e: Ev) {
        match e {
            Ev::Connected(_) => {}
            Ev::Published(t, rc) => {
                assert_eq!(rc, Rc::Success);
                assert!(self.tokens.contains_key(&t), "unknown token {t}");
                let n = self.completed.entry(t).or_default();
                *n += 1;
                assert_eq!(*n, 1, "token {t} completed twice");
            }
            Ev::Msg(m) => {
                let seq = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
                assert!(seq >= 1_000_000, "a message the broker never sent");
                let n = self.app_got.entry(seq).or_default();
                *n += 1;
                if m.qos == Q2 {
                    assert_eq!(*n, 1, "QoS 2 message {seq} delivered twice");
                }
            }
            Ev::Subscribed(id, codes) => {
                let i = self.subscribing.iter().position(|&s| s == id);
                let i = i.unwrap_or_else(|| {
                    panic!(
                        "Subscribed({id}) but subscribe returned {:?}",
                        self.subscribing
                    )
                });
                self.subscribing.remove(i);
                assert_eq!(codes, [Rc::GrantedQoS1]);
            }
            other => panic!("unexpected event {other:?}"),
        }
    }

    fn send_down(&mut self, p: &Packet<'_>) {
        self.down.push_back(enc(self.v, p));
    }

    fn broker_publish(&mut self, qos: QoS) {
        // Stay within the client's Receive Maximum (16).
        if self.outbound.len() >= 8 {
            return;
        }
        let seq = self.next_broker_seq;
        self.next_broker_seq += 1;
        let mut id = self.next_broker_id;
        while self.outbound.iter().any(|m| m.id == id) {
            id = id % 50 + 1;
        }
        self.next_broker_id = id % 50 + 1;
        self.outbound_qos.insert(seq, qos);
        self.outbound.push(BrokerMsg {
            id,
            seq,
            qos,
            state: OutboundState::Unsent,
        });
        if self.connected {
            self.send_outbound(self.outbound.len() - 1);
        }
    }

    fn send_outbound(&mut self, i: usize) {
        let m = &self.outbound[i];
        let (id, seq, qos, state) = (m.id, m.seq, m.qos, m.state);
        match state {
            OutboundState::AwaitComp => self.send_down(&pubrel(id)),
            _ => {
                let payload = seq.to_be_bytes();
                let p = incoming(
                    "model/down",
                    &payload,
                    qos,
                    id,
                    state != OutboundState::Unsent,
                );
                self.send_down(&p);
                self.outbound[i].state = OutboundState::AwaitAck;
            }
        }
    }

    fn broker_handle(&mut self, bytes: &[u8]) {
        let p = match decode(bytes, self.v, usize::MAX) {
            Ok(Status::Complete((p, _))) => p,
            other => panic!("broker got garbage {bytes:02x?}: {other:?}"),
        };
        match p {
            Packet::Connect(_) => {
                assert!(!self.connected, "CONNECT twice on one connection");
                self.connected = true;
                let sp = self.had_session;
                self.had_session = true;
                self.send_down(&connack(sp));
                for i in 0..self.outbound.len() {
                    self.send_outbound(i);
                }
            }
            _ if !self.connected => panic!("{p:?} before CONNECT"),
            Packet::Publish(p) => {
                let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                let id = p
                    .packet_id
                    .expect("the model publishes QoS 1 and 2 only")
                    .get();
                match p.qos {
                    Q1 => {
                        *self.broker_got.entry(seq).or_default() += 1;
                        self.send_down(&puback(id));
                    }
                    Q2 => {
                        match self.broker_qos2.get(&id) {
                            Some(&s) => assert_eq!(
                                s, seq,
                                "id {id} reused for message {seq} before PUBCOMP of {s}: a real \
                                 broker drops {seq} as a duplicate"
                            ),
                            None => {
                                self.broker_qos2.insert(id, seq);
                                *self.broker_got.entry(seq).or_default() += 1;
                            }
                        }
                        self.send_down(&pubrec(id));
                    }
                    Q0 => panic!("QoS 0 from the model client"),
                }
            }
            Packet::PubRel(a) => {
                self.broker_qos2.remove(&a.packet_id.get());
                self.send_down(&pubcomp(a.packet_id.get()));
            }
            Packet::PubAck(a) => {
                let id = a.packet_id.get();
                let i = self
                    .outbound
                    .iter()
                    .position(|m| m.id == id && m.qos == Q1 && m.state == OutboundState::AwaitAck);
                let i = i.unwrap_or_else(|| panic!("PUBACK {id} for nothing: {:?}", self.outbound));
                self.outbound.remove(i);
            }
            Packet::PubRec(a) => {
                let id = a.packet_id.get();
                let i = self
                    .outbound
                    .iter()
                    .position(|m| m.id == id && m.qos == Q2 && m.state != OutboundState::Unsent);
                let i = i.unwrap_or_else(|| panic!("PUBREC {id} for nothing: {:?}", self.outbound));
                self.outbound[i].state = OutboundState::AwaitComp;
                self.send_down(&pubrel(id));
            }
            Packet::PubComp(a) => {
                let id = a.packet_id.get();
                if let Some(i) = self
                    .outbound
                    .iter()
                    .position(|m| m.id == id && m.state == OutboundState::AwaitComp)
                {
                    self.outbound.remove(i);
                }
            }
            Packet::PingReq => self.send_down(&Packet::PingResp),
            Packet::Subscribe(s) => {
                let codes = vec![Rc::GrantedQoS1; s.filters.len()];
                self.send_down(&Packet::SubAck(SubAck::new(s.packet_id, &codes)));
            }
            other => panic!("broker got unexpected {other:?}"),
        }
    }

    /// Runs the connection without faults until nothing moves, then checks the guarantees.
    fn settle_and_check(&mut self) {
        for _ in 0..1_000 {
            self.client_send(usize::MAX);
            let moved = !self.up.is_empty() || !self.down.is_empty();
            self.apply(&Op::BrokerRead(u8::MAX));
            self.client_read(usize::MAX);
            self.check_notices();
            if !moved && self.up.is_empty() && self.down.is_empty() {
                break;
            }
        }
        assert_eq!(self.c.state(), State::Connected);
        for (t, (seq, qos)) in &self.tokens {
            assert_eq!(
                self.completed.get(t),
                Some(&1),
                "message {seq} (QoS {qos:?}, token {t}) never completed; pending {}",
                self.c.pending()
            );
            let got = self.broker_got.get(seq).copied().unwrap_or(0);
            match qos {
                // Once the broker lost a session, a QoS 2 message may legitimately arrive again.
                Q2 if !self.session_lost => {
                    assert_eq!(got, 1, "QoS 2 message {seq} reached the broker {got} times");
                }
                _ => assert!(got >= 1, "QoS 1 message {seq} never reached the broker"),
            }
        }
        assert_eq!(self.c.pending(), 0);
        assert_eq!(self.subscribing, [], "SUBSCRIBE never acknowledged");
        assert!(
            self.broker_qos2.is_empty(),
            "unreleased: {:?}",
            self.broker_qos2
        );
        assert!(
            self.outbound.is_empty(),
            "broker messages unacked: {:?}",
            self.outbound
        );
        for (seq, qos) in &self.outbound_qos {
            let n = self.app_got.get(seq).copied().unwrap_or(0);
            match qos {
                Q2 => assert_eq!(n, 1, "QoS 2 message {seq} delivered {n} times"),
                _ => assert!(n >= 1, "QoS 1 message {seq} never delivered"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_interleavings_lose_nothing_and_never_duplicate_qos2(
        v5 in any::<bool>(),
        inflight in 1u16..5,
        ops in proptest::collection::vec(op(false), 0..80),
    ) {
        let mut m = Model::new(if v5 { V5 } else { V311 }, inflight);
        for op in &ops {
            m.apply(op);
        }
        m.settle_and_check();
    }

    /// The same with drops that also lose the broker's session: QoS 1/2 messages are sent again
    /// as new ones, subscriptions restored, and every `publish` and `subscribe` still completes
    /// exactly once.
    #[test]
    fn random_interleavings_with_session_loss_complete_everything_once(
        v5 in any::<bool>(),
        inflight in 1u16..5,
        ops in proptest::collection::vec(op(true), 0..80),
    ) {
        let mut m = Model::new(if v5 { V5 } else { V311 }, inflight);
        for op in &ops {
            m.apply(op);
        }
        m.settle_and_check();
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios run for both protocol versions.
// ---------------------------------------------------------------------------------------------

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod v311 {
            $(#[test]
            fn $name() {
                super::$name(mqtt_proto::ProtocolVersion::V311);
            })*
        }
        mod v5 {
            $(#[test]
            fn $name() {
                super::$name(mqtt_proto::ProtocolVersion::V5);
            })*
        }
    };
}

both!(
    connect_fields,
    connect_exact_bytes,
    connect_empty_client_id,
    connack_accepted,
    refused_connack_reads_closed,
    connack_timeout,
    transport_closed_while_connecting,
    publish_qos0_written_once,
    publish_qos1,
    publish_qos2,
    publish_qos2_repeated_pubrec_gets_pubrel_again,
    publish_retain_and_properties,
    packet_ids_from_1_unique_in_flight,
    packet_ids_wrap_and_skip_in_flight,
    receive_qos0,
    receive_qos1,
    receive_qos2,
    receive_qos2_dup_before_pubrel_not_redelivered,
    pubrel_unknown_id_gets_pubcomp,
    acks_owed_in_one_read,
    receive_maximum_exceeded,
    session_present_after_clean_start_is_violation,
    manual_acks_any_order,
    manual_ack_redelivery_not_delivered_twice,
    inflight_limit_from_config,
    client_maximum_packet_size_enforced_on_read,
    offline_queue_sent_in_order,
    full_queue_evicts_lowest_priority_oldest,
    full_queue_bytes_bound,
    try_publish_evicts_only_lower_priority,
    in_flight_messages_are_never_evicted,
    refused_publish_evicts_nothing,
    eviction_notices_are_never_lost,
    reconnect_qos1_out,
    reconnect_qos2_out,
    reconnect_resends_in_order,
    reconnect_qos2_in,
    reconnect_qos1_in,
    pending_subscribe_keeps_its_id_across_reconnect,
    subscriptions_restored_without_session,
    keep_alive_ping_cycle,
    keep_alive_timeout,
    no_busy_deadline_while_waiting_for_pingresp,
    keep_alive_zero_means_no_deadline,
    subscribe_several_filters,
    subscribe_while_offline_goes_out_after_connack,
    unknown_ids_are_violations,
    wrong_ack_kind_is_violation,
    packets_before_connack_are_violations,
    second_connack_is_violation,
    malformed_bytes,
    partial_packets_need_more,
    publish_with_empty_topic,
    deliberate_disconnect,
    transmit_buffer_too_small_loses_nothing,
);
