//! MQTT 5 extended authentication: AUTH exchanges before CONNACK and re-authentication.

use mqtt_proto::{
    Auth, ConnAck, Packet, Properties, Property, PropertyId, ProtocolVersion, ReasonCode, Status,
    decode,
};
use mqtt_session::{Client, Config, ConnectOptions, Error, Event, Instant, Read, State};

const V: ProtocolVersion = ProtocolVersion::V5;

fn encode(p: &Packet<'_>) -> Vec<u8> {
    let mut b = vec![0; p.encoded_len(V).unwrap()];
    p.encode(V, &mut b).unwrap();
    b
}

fn auth_packet(rc: ReasonCode, data: &'static [u8]) -> Vec<u8> {
    let props = [
        Property::AuthenticationMethod("SCRAM-SHA-1"),
        Property::AuthenticationData(data),
    ];
    encode(&Packet::Auth(Auth::new(rc, Properties::new(&props))))
}

#[test]
fn challenge_response_before_connack_then_reauthentication() {
    let mut c: Client<8, 2048, 4> = Client::new(Config::default());
    let mut buf = [0u8; 256];
    let method = [
        Property::AuthenticationMethod("SCRAM-SHA-1"),
        Property::AuthenticationData(b"client-first"),
    ];
    let opts = ConnectOptions {
        client_id: "c",
        properties: &method,
        ..ConnectOptions::default()
    };
    let n = c.connect(Instant::ZERO, &opts, &mut buf).unwrap();
    let Ok(Status::Complete((Packet::Connect(connect), _))) = decode(&buf[..n], V, usize::MAX)
    else {
        panic!("no CONNECT");
    };
    assert_eq!(
        connect.properties.get(PropertyId::AuthenticationMethod),
        Some(Property::AuthenticationMethod("SCRAM-SHA-1"))
    );

    // The server challenges; the application sees it and answers.
    let challenge = auth_packet(ReasonCode::ContinueAuthentication, b"server-first");
    let Read::Packet {
        event: Some(Event::Auth {
            reason_code,
            properties,
        }),
        ..
    } = c.handle_read(Instant::from_millis(5), &challenge)
    else {
        panic!("expected an Auth event");
    };
    assert_eq!(reason_code, ReasonCode::ContinueAuthentication);
    assert_eq!(
        properties.get(PropertyId::AuthenticationData),
        Some(Property::AuthenticationData(b"server-first"))
    );
    let answer = [
        Property::AuthenticationMethod("SCRAM-SHA-1"),
        Property::AuthenticationData(b"client-final"),
    ];
    let n = c
        .auth(
            Instant::from_millis(6),
            ReasonCode::ContinueAuthentication,
            &answer,
            &mut buf,
        )
        .unwrap();
    let Ok(Status::Complete((Packet::Auth(a), _))) = decode(&buf[..n], V, usize::MAX) else {
        panic!("expected AUTH");
    };
    assert_eq!(a.reason_code, ReasonCode::ContinueAuthentication);
    assert_eq!(c.state(), State::Connecting);

    let ack = encode(&Packet::ConnAck(ConnAck::new(false, ReasonCode::Success)));
    assert!(matches!(
        c.handle_read(Instant::from_millis(7), &ack),
        Read::Packet {
            event: Some(Event::Connected { .. }),
            ..
        }
    ));

    // Re-authentication while connected.
    let n = c
        .auth(
            Instant::from_millis(8),
            ReasonCode::ReAuthenticate,
            &method,
            &mut buf,
        )
        .unwrap();
    assert!(matches!(
        decode(&buf[..n], V, usize::MAX),
        Ok(Status::Complete((Packet::Auth(a), _))) if a.reason_code == ReasonCode::ReAuthenticate
    ));
    let done = auth_packet(ReasonCode::Success, b"ok");
    assert!(matches!(
        c.handle_read(Instant::from_millis(9), &done),
        Read::Packet {
            event: Some(Event::Auth {
                reason_code: ReasonCode::Success,
                ..
            }),
            ..
        }
    ));
    assert_eq!(c.state(), State::Connected);
}

#[test]
fn auth_is_refused_before_mqtt_5_and_when_disconnected() {
    let mut buf = [0u8; 64];
    let mut v3: Client<4, 512, 2> = Client::new(Config {
        version: ProtocolVersion::V311,
        ..Config::default()
    });
    assert!(
        v3.auth(Instant::ZERO, ReasonCode::ReAuthenticate, &[], &mut buf)
            .is_err()
    );
    let mut v5: Client<4, 512, 2> = Client::new(Config::default());
    assert_eq!(
        v5.auth(Instant::ZERO, ReasonCode::ReAuthenticate, &[], &mut buf),
        Err(Error::NotConnected)
    );
}
