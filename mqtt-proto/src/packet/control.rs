//! DISCONNECT and AUTH.

use super::publish::{read_reason_and_properties, write_reason_and_properties};
use crate::reason::ReasonContext;
use crate::wire::{Reader, Sink};
use crate::{DecodeError, EncodeError, Properties, PropertyContext, ProtocolVersion, ReasonCode};

/// DISCONNECT: the end of a connection, with a reason in MQTT 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Disconnect<'a> {
    /// Why the connection ends; `Success` is a normal disconnection.
    pub reason_code: ReasonCode,
    /// DISCONNECT properties (MQTT 5): session expiry, reason string, server reference.
    pub properties: Properties<'a>,
}

impl<'a> Disconnect<'a> {
    /// A DISCONNECT with a reason code and no properties.
    pub const fn new(reason_code: ReasonCode) -> Self {
        Disconnect {
            reason_code,
            properties: Properties::EMPTY,
        }
    }

    pub(crate) fn read(r: &mut Reader<'a>, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let (reason_code, properties) = read_reason_and_properties(
            r,
            v,
            ReasonContext::Disconnect,
            PropertyContext::Disconnect,
        )?;
        Ok(Disconnect {
            reason_code,
            properties,
        })
    }

    pub(crate) fn write<S: Sink>(&self, s: &mut S, v: ProtocolVersion) -> Result<(), EncodeError> {
        write_reason_and_properties(
            s,
            v,
            self.reason_code,
            &self.properties,
            ReasonContext::Disconnect,
            PropertyContext::Disconnect,
        )
    }
}

/// AUTH: a step of an MQTT 5 extended authentication exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Auth<'a> {
    /// `Success`, `ContinueAuthentication` or `ReAuthenticate`.
    pub reason_code: ReasonCode,
    /// AUTH properties: authentication method and data, reason string, user properties.
    pub properties: Properties<'a>,
}

impl<'a> Auth<'a> {
    /// An AUTH with a reason code and properties.
    pub const fn new(reason_code: ReasonCode, properties: Properties<'a>) -> Self {
        Auth {
            reason_code,
            properties,
        }
    }

    pub(crate) fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let (reason_code, properties) = read_reason_and_properties(
            r,
            ProtocolVersion::V5,
            ReasonContext::Auth,
            PropertyContext::Auth,
        )?;
        Ok(Auth {
            reason_code,
            properties,
        })
    }

    pub(crate) fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        if !self.reason_code.allowed_in(ReasonContext::Auth) {
            return Err(EncodeError::ReasonCodeNotAllowed(self.reason_code));
        }
        // Only a successful AUTH without properties may leave out both fields.
        if self.reason_code == ReasonCode::Success && self.properties.is_empty() {
            return Ok(());
        }
        s.u8(self.reason_code as u8)?;
        self.properties.write(s, PropertyContext::Auth)
    }
}
