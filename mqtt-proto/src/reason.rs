//! MQTT 5 reason codes and the MQTT 3.x CONNACK return codes.

use core::fmt;

macro_rules! reason_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $text:literal;)*) => {
        /// An MQTT 5 reason code. `0x00` is named `Success`; it also means "normal
        /// disconnection" in DISCONNECT and "granted QoS 0" in SUBACK.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum ReasonCode {
            $($(#[$doc])* $name = $value,)*
        }

        impl ReasonCode {
            /// The reason code for a byte, if the byte is a defined code.
            pub const fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $($value => Some(ReasonCode::$name),)*
                    _ => None,
                }
            }

            /// A short description, in the spec's words.
            pub const fn description(self) -> &'static str {
                match self {
                    $(ReasonCode::$name => $text,)*
                }
            }
        }
    };
}

reason_codes! {
    /// Success, normal disconnection, or granted QoS 0.
    #[default]
    Success = 0x00, "success";
    /// SUBACK: granted QoS 1.
    GrantedQoS1 = 0x01, "granted QoS 1";
    /// SUBACK: granted QoS 2.
    GrantedQoS2 = 0x02, "granted QoS 2";
    /// DISCONNECT: the client wants the will message published.
    DisconnectWithWill = 0x04, "disconnect with will message";
    /// PUBACK/PUBREC: accepted, but nobody is subscribed.
    NoMatchingSubscribers = 0x10, "no matching subscribers";
    /// UNSUBACK: there was no such subscription.
    NoSubscriptionExisted = 0x11, "no subscription existed";
    /// AUTH: continue the authentication exchange.
    ContinueAuthentication = 0x18, "continue authentication";
    /// AUTH: start a re-authentication.
    ReAuthenticate = 0x19, "re-authenticate";
    /// The peer gives no more specific reason.
    UnspecifiedError = 0x80, "unspecified error";
    /// The packet could not be parsed.
    MalformedPacket = 0x81, "malformed packet";
    /// The packet broke the protocol.
    ProtocolError = 0x82, "protocol error";
    /// Valid, but refused by this implementation.
    ImplementationSpecificError = 0x83, "implementation specific error";
    /// The server does not speak the client's protocol version.
    UnsupportedProtocolVersion = 0x84, "unsupported protocol version";
    /// The client identifier is not accepted.
    ClientIdentifierNotValid = 0x85, "client identifier not valid";
    /// Wrong user name or password.
    BadUserNameOrPassword = 0x86, "bad user name or password";
    /// Not authorized.
    NotAuthorized = 0x87, "not authorized";
    /// The server is not available.
    ServerUnavailable = 0x88, "server unavailable";
    /// The server is busy.
    ServerBusy = 0x89, "server busy";
    /// The client has been banned.
    Banned = 0x8A, "banned";
    /// The server is shutting down.
    ServerShuttingDown = 0x8B, "server shutting down";
    /// The authentication method is not supported.
    BadAuthenticationMethod = 0x8C, "bad authentication method";
    /// No packet arrived within 1.5 times the keep-alive.
    KeepAliveTimeout = 0x8D, "keep alive timeout";
    /// Another connection took over the session.
    SessionTakenOver = 0x8E, "session taken over";
    /// The topic filter is not valid or not accepted.
    TopicFilterInvalid = 0x8F, "topic filter invalid";
    /// The topic name is not valid or not accepted.
    TopicNameInvalid = 0x90, "topic name invalid";
    /// The packet identifier is already in use.
    PacketIdentifierInUse = 0x91, "packet identifier in use";
    /// The packet identifier is not known.
    PacketIdentifierNotFound = 0x92, "packet identifier not found";
    /// More QoS 1/2 publishes in flight than the receive maximum allows.
    ReceiveMaximumExceeded = 0x93, "receive maximum exceeded";
    /// The topic alias is not valid.
    TopicAliasInvalid = 0x94, "topic alias invalid";
    /// The packet exceeds the maximum packet size.
    PacketTooLarge = 0x95, "packet too large";
    /// The message rate is too high.
    MessageRateTooHigh = 0x96, "message rate too high";
    /// A quota has been exceeded.
    QuotaExceeded = 0x97, "quota exceeded";
    /// Closed by an administrative action.
    AdministrativeAction = 0x98, "administrative action";
    /// The payload does not match the payload format indicator.
    PayloadFormatInvalid = 0x99, "payload format invalid";
    /// Retained messages are not supported.
    RetainNotSupported = 0x9A, "retain not supported";
    /// The QoS is not supported.
    QoSNotSupported = 0x9B, "QoS not supported";
    /// Use another server, temporarily.
    UseAnotherServer = 0x9C, "use another server";
    /// The server has moved, permanently.
    ServerMoved = 0x9D, "server moved";
    /// Shared subscriptions are not supported.
    SharedSubscriptionsNotSupported = 0x9E, "shared subscriptions not supported";
    /// Too many connection attempts.
    ConnectionRateExceeded = 0x9F, "connection rate exceeded";
    /// The maximum connection time has passed.
    MaximumConnectTime = 0xA0, "maximum connect time";
    /// Subscription identifiers are not supported.
    SubscriptionIdentifiersNotSupported = 0xA1, "subscription identifiers not supported";
    /// Wildcard subscriptions are not supported.
    WildcardSubscriptionsNotSupported = 0xA2, "wildcard subscriptions not supported";
}

/// Which packet a reason code appears in; each allows its own set of codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReasonContext {
    ConnAck,
    PubAck,
    PubRel,
    SubAck,
    /// SUBACK of MQTT 3.x: granted QoS 0-2 or failure (0x80).
    SubAckV3,
    UnsubAck,
    Disconnect,
    Auth,
}

impl ReasonCode {
    /// The code's byte.
    pub const fn to_u8(self) -> u8 {
        self as u8
    }

    /// Whether this code reports a failure (0x80 and above).
    pub const fn is_error(self) -> bool {
        self as u8 >= 0x80
    }

    /// Whether the spec lists this code for the given packet.
    pub(crate) fn allowed_in(self, ctx: ReasonContext) -> bool {
        use ReasonCode::*;
        match ctx {
            ReasonContext::ConnAck => matches!(
                self,
                Success
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | NotAuthorized
                    | ServerUnavailable
                    | ServerBusy
                    | Banned
                    | BadAuthenticationMethod
                    | TopicNameInvalid
                    | PacketTooLarge
                    | QuotaExceeded
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QoSNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | ConnectionRateExceeded
            ),
            ReasonContext::PubAck => matches!(
                self,
                Success
                    | NoMatchingSubscribers
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicNameInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | PayloadFormatInvalid
            ),
            ReasonContext::PubRel => matches!(self, Success | PacketIdentifierNotFound),
            ReasonContext::SubAck => matches!(
                self,
                Success
                    | GrantedQoS1
                    | GrantedQoS2
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | SharedSubscriptionsNotSupported
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            ReasonContext::SubAckV3 => {
                matches!(self, Success | GrantedQoS1 | GrantedQoS2 | UnspecifiedError)
            }
            ReasonContext::UnsubAck => matches!(
                self,
                Success
                    | NoSubscriptionExisted
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
            ),
            ReasonContext::Disconnect => !matches!(
                self,
                GrantedQoS1
                    | GrantedQoS2
                    | NoMatchingSubscribers
                    | NoSubscriptionExisted
                    | ContinueAuthentication
                    | ReAuthenticate
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | ServerUnavailable
                    | Banned
                    | BadAuthenticationMethod
                    | PacketIdentifierInUse
                    | PacketIdentifierNotFound
            ),
            ReasonContext::Auth => {
                matches!(self, Success | ContinueAuthentication | ReAuthenticate)
            }
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02x})", self.description(), *self as u8)
    }
}

/// The CONNACK return code of MQTT 3.1 and 3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum ConnectReturnCode {
    /// Connection accepted.
    Accepted = 0,
    /// The server does not support the requested protocol level.
    UnacceptableProtocolVersion = 1,
    /// The client identifier is not allowed.
    IdentifierRejected = 2,
    /// The MQTT service is unavailable.
    ServerUnavailable = 3,
    /// The user name or password is malformed or wrong.
    BadUserNameOrPassword = 4,
    /// The client is not authorized to connect.
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    /// The return code for a byte, if defined.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => ConnectReturnCode::Accepted,
            1 => ConnectReturnCode::UnacceptableProtocolVersion,
            2 => ConnectReturnCode::IdentifierRejected,
            3 => ConnectReturnCode::ServerUnavailable,
            4 => ConnectReturnCode::BadUserNameOrPassword,
            5 => ConnectReturnCode::NotAuthorized,
            _ => return None,
        })
    }

    /// The MQTT 5 reason code with the same meaning.
    pub const fn to_reason_code(self) -> ReasonCode {
        match self {
            ConnectReturnCode::Accepted => ReasonCode::Success,
            ConnectReturnCode::UnacceptableProtocolVersion => {
                ReasonCode::UnsupportedProtocolVersion
            }
            ConnectReturnCode::IdentifierRejected => ReasonCode::ClientIdentifierNotValid,
            ConnectReturnCode::ServerUnavailable => ReasonCode::ServerUnavailable,
            ConnectReturnCode::BadUserNameOrPassword => ReasonCode::BadUserNameOrPassword,
            ConnectReturnCode::NotAuthorized => ReasonCode::NotAuthorized,
        }
    }

    /// The 3.x return code for an MQTT 5 reason code, if one has the same meaning.
    pub const fn from_reason_code(code: ReasonCode) -> Option<Self> {
        Some(match code {
            ReasonCode::Success => ConnectReturnCode::Accepted,
            ReasonCode::UnsupportedProtocolVersion => {
                ConnectReturnCode::UnacceptableProtocolVersion
            }
            ReasonCode::ClientIdentifierNotValid => ConnectReturnCode::IdentifierRejected,
            ReasonCode::ServerUnavailable => ConnectReturnCode::ServerUnavailable,
            ReasonCode::BadUserNameOrPassword => ConnectReturnCode::BadUserNameOrPassword,
            ReasonCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
            _ => return None,
        })
    }
}

impl fmt::Display for ConnectReturnCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectReturnCode::Accepted => "connection accepted",
            ConnectReturnCode::UnacceptableProtocolVersion => "unacceptable protocol version",
            ConnectReturnCode::IdentifierRejected => "client identifier rejected",
            ConnectReturnCode::ServerUnavailable => "server unavailable",
            ConnectReturnCode::BadUserNameOrPassword => "bad user name or password",
            ConnectReturnCode::NotAuthorized => "not authorized",
        })
    }
}
