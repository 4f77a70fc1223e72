//! A client that speaks raw MQTT packets over tokio TCP, for tests that assert exact reason
//! codes, packet ids and DUP flags of a broker.

use std::net::SocketAddr;
use std::time::Duration;

use mqtt_proto::{
    Ack, Connect, Filters, Packet, PacketId, Properties, Property, PropertyId, ProtocolVersion,
    Publish, QoS, ReasonCode, Status, Subscribe, SubscriptionOptions, TopicFilter, decode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long [`Raw::recv`] waits for a packet.
pub const WAIT: Duration = Duration::from_secs(10);

/// A received packet, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// CONNACK.
    ConnAck {
        /// Session present.
        present: bool,
        /// Reason code (3.x return codes mapped to their 5.0 names).
        code: ReasonCode,
        /// Authentication Data (MQTT 5 extended authentication).
        auth_data: Option<Vec<u8>>,
    },
    /// AUTH: reason code and Authentication Data.
    Auth(ReasonCode, Option<Vec<u8>>),
    /// PUBLISH.
    Publish {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
        /// QoS.
        qos: QoS,
        /// DUP flag.
        dup: bool,
        /// Packet id.
        id: Option<u16>,
    },
    /// PUBACK.
    PubAck(u16, ReasonCode),
    /// PUBREC.
    PubRec(u16, ReasonCode),
    /// PUBREL.
    PubRel(u16),
    /// PUBCOMP.
    PubComp(u16),
    /// SUBACK reason codes.
    SubAck(Vec<ReasonCode>),
    /// DISCONNECT.
    Disconnect(ReasonCode),
    /// Anything else, as debug text.
    Other(String),
}

/// A raw MQTT connection.
#[derive(Debug)]
pub struct Raw {
    /// The socket.
    pub s: TcpStream,
    v: ProtocolVersion,
    buf: Vec<u8>,
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).unwrap_or_else(|| panic!("packet id {id} is 0"))
}

impl Raw {
    /// Opens a TCP connection (no CONNECT yet).
    pub async fn open(addr: SocketAddr, v: ProtocolVersion) -> Raw {
        let s = TcpStream::connect(addr).await.expect("the broker accepts");
        Raw {
            s,
            v,
            buf: Vec::new(),
        }
    }

    /// Connects with a clean session and checks the CONNACK is a success.
    pub async fn connect(addr: SocketAddr, v: ProtocolVersion, id: &str) -> Raw {
        let mut raw = Raw::open(addr, v).await;
        let got = raw.connect_with(Connect::new(v, id, 60)).await;
        assert!(
            matches!(
                got,
                Some(Got::ConnAck {
                    code: ReasonCode::Success,
                    ..
                })
            ),
            "{id}: {got:?}"
        );
        raw
    }

    /// Connects with a persistent session (5.0: session expiry 300 s; 3.1.1: clean session
    /// off); returns the CONNACK's session-present flag.
    pub async fn connect_persistent(addr: SocketAddr, v: ProtocolVersion, id: &str) -> (Raw, bool) {
        let mut raw = Raw::open(addr, v).await;
        let props = [Property::SessionExpiryInterval(300)];
        let c = Connect {
            clean_start: false,
            properties: if v.is_v5() {
                Properties::new(&props)
            } else {
                Properties::EMPTY
            },
            ..Connect::new(v, id, 60)
        };
        match raw.connect_with(c).await {
            Some(Got::ConnAck {
                present,
                code: ReasonCode::Success,
                ..
            }) => (raw, present),
            other => panic!("{id}: {other:?}"),
        }
    }

    /// Sends a CONNECT and returns what came back.
    pub async fn connect_with(&mut self, c: Connect<'_>) -> Option<Got> {
        self.send(&Packet::Connect(c)).await;
        self.recv().await
    }

    /// Sends one packet.
    pub async fn send(&mut self, p: &Packet<'_>) {
        let len = p.encoded_len(self.v).expect("the packet encodes");
        let mut b = vec![0u8; len];
        let n = p.encode(self.v, &mut b).expect("the packet encodes");
        self.s.write_all(&b[..n]).await.expect("the write succeeds");
    }

    /// The next packet; `None` at the end of the stream or after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Got> {
        loop {
            if let Ok(Status::Complete((p, n))) = decode(&self.buf, self.v, 1 << 24) {
                let got = own(p);
                self.buf.drain(..n);
                return Some(got);
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(WAIT, self.s.read(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Subscribes to one filter and returns the SUBACK's codes.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<ReasonCode> {
        let f = [(
            TopicFilter::new(filter).expect("a valid filter"),
            SubscriptionOptions::new(qos),
        )];
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            properties: Properties::EMPTY,
            filters: Filters::new(&f),
        }))
        .await;
        match self.recv().await {
            Some(Got::SubAck(codes)) => codes,
            other => panic!("no SUBACK: {other:?}"),
        }
    }

    /// Publishes (packet id `id` for QoS 1/2).
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, id: u16) {
        self.send(&Packet::Publish(Publish {
            qos,
            packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
            ..Publish::new(topic, payload)
        }))
        .await;
    }

    /// Acknowledges a received QoS 1 PUBLISH (PUBACK) or QoS 2 one (PUBREC).
    pub async fn ack(&mut self, qos: QoS, id: u16) {
        match qos {
            QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::new(pid(id)))).await,
            QoS::ExactlyOnce => self.send(&Packet::PubRec(Ack::new(pid(id)))).await,
            QoS::AtMostOnce => {}
        }
    }

    /// Completes a QoS 2 exchange the broker started (PUBCOMP for its PUBREL).
    pub async fn complete(&mut self, id: u16) {
        self.send(&Packet::PubComp(Ack::new(pid(id)))).await;
    }
}

fn auth_data(p: &Properties<'_>) -> Option<Vec<u8>> {
    match p.get(PropertyId::AuthenticationData) {
        Some(Property::AuthenticationData(d)) => Some(d.to_vec()),
        _ => None,
    }
}

fn own(p: Packet<'_>) -> Got {
    match p {
        Packet::ConnAck(a) => Got::ConnAck {
            present: a.session_present,
            code: a.reason_code,
            auth_data: auth_data(&a.properties),
        },
        Packet::Auth(a) => Got::Auth(a.reason_code, auth_data(&a.properties)),
        Packet::Publish(p) => Got::Publish {
            topic: p.topic.to_owned(),
            payload: p.payload.to_vec(),
            qos: p.qos,
            dup: p.dup,
            id: p.packet_id.map(|i| i.get()),
        },
        Packet::PubAck(a) => Got::PubAck(a.packet_id.get(), a.reason_code),
        Packet::PubRec(a) => Got::PubRec(a.packet_id.get(), a.reason_code),
        Packet::PubRel(a) => Got::PubRel(a.packet_id.get()),
        Packet::PubComp(a) => Got::PubComp(a.packet_id.get()),
        Packet::SubAck(s) => Got::SubAck(s.reason_codes.iter().collect()),
        Packet::Disconnect(d) => Got::Disconnect(d.reason_code),
        other => Got::Other(format!("{other:?}")),
    }
}
