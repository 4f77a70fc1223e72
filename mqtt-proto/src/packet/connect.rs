//! CONNECT and CONNACK.

use crate::reason::ReasonContext;
use crate::wire::{Reader, Sink};
use crate::{
    ConnectReturnCode, DecodeError, EncodeError, Properties, PropertyContext, ProtocolVersion, QoS,
    ReasonCode, TopicName,
};

/// The will message a client leaves with the server, published if it disappears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Will<'a> {
    /// Topic the will is published to.
    pub topic: TopicName<'a>,
    /// The will payload.
    pub payload: &'a [u8],
    /// QoS of the will publish.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
    /// Will properties (MQTT 5): delay, expiry, content type, ...
    pub properties: Properties<'a>,
}

/// CONNECT: the first packet of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Connect<'a> {
    /// Protocol version the client speaks; decides the encoding of every later packet.
    pub protocol: ProtocolVersion,
    /// Clean start (MQTT 5) or clean session (3.x).
    pub clean_start: bool,
    /// Keep-alive interval in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// CONNECT properties (MQTT 5).
    pub properties: Properties<'a>,
    /// Client identifier; may be empty to let the server choose.
    pub client_id: &'a str,
    /// The will message, if any.
    pub will: Option<Will<'a>>,
    /// User name.
    pub username: Option<&'a str>,
    /// Password (binary data).
    pub password: Option<&'a [u8]>,
}

impl<'a> Connect<'a> {
    /// A CONNECT with no will, no credentials and no properties.
    pub const fn new(protocol: ProtocolVersion, client_id: &'a str, keep_alive: u16) -> Self {
        Connect {
            protocol,
            clean_start: true,
            keep_alive,
            properties: Properties::EMPTY,
            client_id,
            will: None,
            username: None,
            password: None,
        }
    }

    pub(crate) fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let name = r.binary()?;
        let level = r.u8()?;
        let protocol = match name {
            b"MQTT" | b"MQIsdp" => {
                let v = ProtocolVersion::from_level(level)
                    .ok_or(DecodeError::UnsupportedProtocolLevel(level))?;
                if v.protocol_name().as_bytes() != name {
                    return Err(DecodeError::ProtocolNameLevelMismatch);
                }
                v
            }
            _ => return Err(DecodeError::InvalidProtocolName),
        };
        let flags = r.u8()?;
        if flags & 0b1 != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let has_will = flags & 0b100 != 0;
        let will_qos = QoS::from_u8((flags >> 3) & 0b11).ok_or(DecodeError::InvalidWillFlags)?;
        let will_retain = flags & 0b10_0000 != 0;
        if !has_will && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(DecodeError::InvalidWillFlags);
        }
        let has_password = flags & 0b100_0000 != 0;
        let has_username = flags & 0b1000_0000 != 0;
        if has_password && !has_username && !protocol.is_v5() {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive = r.u16()?;
        let properties = if protocol.is_v5() {
            Properties::read(r, PropertyContext::Connect)?
        } else {
            Properties::EMPTY
        };
        let client_id = r.string()?;
        let will = if has_will {
            let properties = if protocol.is_v5() {
                Properties::read(r, PropertyContext::Will)?
            } else {
                Properties::EMPTY
            };
            let topic = TopicName::new(r.utf8()?).map_err(DecodeError::topic_name)?;
            Some(Will {
                topic,
                payload: r.binary()?,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(r.string()?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.binary()?)
        } else {
            None
        };
        Ok(Connect {
            protocol,
            clean_start: flags & 0b10 != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    pub(crate) fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        let v5 = self.protocol.is_v5();
        if !v5 && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::NotInVersion);
        }
        s.string(self.protocol.protocol_name())?;
        s.u8(self.protocol.level())?;
        let mut flags = u8::from(self.clean_start) << 1;
        if let Some(w) = &self.will {
            flags |= 0b100 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
        }
        flags |= u8::from(self.password.is_some()) << 6;
        flags |= u8::from(self.username.is_some()) << 7;
        s.u8(flags)?;
        s.u16(self.keep_alive)?;
        write_properties(s, self.protocol, &self.properties, PropertyContext::Connect)?;
        s.string(self.client_id)?;
        if let Some(w) = &self.will {
            write_properties(s, self.protocol, &w.properties, PropertyContext::Will)?;
            s.string(w.topic.as_str())?;
            s.binary(w.payload)?;
        }
        if let Some(u) = self.username {
            s.string(u)?;
        }
        if let Some(p) = self.password {
            s.binary(p)?;
        }
        Ok(())
    }
}

/// Writes a property list in MQTT 5; before it, only an empty list can be "written".
pub(crate) fn write_properties<S: Sink>(
    s: &mut S,
    v: ProtocolVersion,
    props: &Properties<'_>,
    ctx: PropertyContext,
) -> Result<(), EncodeError> {
    if v.is_v5() {
        props.write(s, ctx)
    } else if props.is_empty() {
        Ok(())
    } else {
        Err(EncodeError::NotInVersion)
    }
}

/// Reads a property list in MQTT 5; earlier versions have none.
pub(crate) fn read_properties<'a>(
    r: &mut Reader<'a>,
    v: ProtocolVersion,
    ctx: PropertyContext,
) -> Result<Properties<'a>, DecodeError> {
    if v.is_v5() {
        Properties::read(r, ctx)
    } else {
        Ok(Properties::EMPTY)
    }
}

/// CONNACK: the server's answer to CONNECT.
///
/// In MQTT 3.x the return code is carried as the [`ReasonCode`] with the same meaning (see
/// [`ConnectReturnCode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConnAck<'a> {
    /// Whether the server resumed an existing session.
    pub session_present: bool,
    /// `Success`, or why the connection was refused.
    pub reason_code: ReasonCode,
    /// CONNACK properties (MQTT 5).
    pub properties: Properties<'a>,
}

impl<'a> ConnAck<'a> {
    /// A CONNACK with no properties.
    pub const fn new(session_present: bool, reason_code: ReasonCode) -> Self {
        ConnAck {
            session_present,
            reason_code,
            properties: Properties::EMPTY,
        }
    }

    /// The MQTT 3.x return code, if this reason code has one.
    pub const fn return_code(&self) -> Option<ConnectReturnCode> {
        ConnectReturnCode::from_reason_code(self.reason_code)
    }

    pub(crate) fn read(r: &mut Reader<'a>, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        if flags & !1 != 0 {
            return Err(DecodeError::InvalidConnAckFlags);
        }
        let code = r.u8()?;
        let reason_code = if v.is_v5() {
            ReasonCode::from_u8(code)
                .filter(|c| c.allowed_in(ReasonContext::ConnAck))
                .ok_or(DecodeError::InvalidReasonCode(code))?
        } else {
            ConnectReturnCode::from_u8(code)
                .ok_or(DecodeError::InvalidReasonCode(code))?
                .to_reason_code()
        };
        let session_present = flags & 1 != 0;
        if session_present && reason_code != ReasonCode::Success {
            return Err(DecodeError::SessionPresentOnRefusal);
        }
        let properties = read_properties(r, v, PropertyContext::ConnAck)?;
        Ok(ConnAck {
            session_present,
            reason_code,
            properties,
        })
    }

    pub(crate) fn write<S: Sink>(&self, s: &mut S, v: ProtocolVersion) -> Result<(), EncodeError> {
        let code = if v.is_v5() {
            if !self.reason_code.allowed_in(ReasonContext::ConnAck) {
                return Err(EncodeError::ReasonCodeNotAllowed(self.reason_code));
            }
            self.reason_code as u8
        } else {
            ConnectReturnCode::from_reason_code(self.reason_code)
                .ok_or(EncodeError::ReasonCodeNotAllowed(self.reason_code))? as u8
        };
        if self.session_present && self.reason_code != ReasonCode::Success {
            return Err(EncodeError::SessionPresentOnRefusal);
        }
        s.u8(u8::from(self.session_present))?;
        s.u8(code)?;
        write_properties(s, v, &self.properties, PropertyContext::ConnAck)
    }
}
