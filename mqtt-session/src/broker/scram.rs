//! SCRAM-SHA-512 (RFC 5802 with SHA-512) for MQTT 5 extended authentication, over the
//! password file's `$7$` entries.
//!
//! A `$7$` entry stores PBKDF2-HMAC-SHA512 of the password with its salt and iteration count,
//! which is exactly SCRAM's `SaltedPassword`: the broker checks a client's proof without
//! ever seeing its password, and proves to the client that it holds the entry. The exchange
//! is the CONNECT's Authentication Data (client-first), the broker's AUTH 0x18
//! (server-first), the client's AUTH 0x18 (client-final) and the CONNACK's data
//! (server-final). Channel binding is not offered.
//!
//! ```
//! use mqtt_session::broker::password::{hash_entry, PasswordFile};
//!
//! let file = PasswordFile::parse(&hash_entry("alice", b"secret", b"0123456789ab", 101)?)?;
//! let (server, first) = file.scram_start(b"n,,n=alice,r=client-nonce", b"server-nonce")?;
//! assert!(first.starts_with(b"r=client-nonceserver-nonce,s="));
//! // A wrong proof (a client that does not know the password) is refused.
//! let wrong = b"c=biws,r=client-nonceserver-nonce,p=AAAA";
//! assert!(server.finish(wrong).is_err());
//! # Ok::<(), Box<dyn core::error::Error>>(())
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::password::PasswordFile;

/// The MQTT 5 Authentication Method name.
pub const METHOD: &str = "SCRAM-SHA-512";

/// The iteration count and salt told for a user that has no `$7$` entry, so that the first
/// answer does not tell which users exist (the proof then never verifies).
const DECOY_ITERATIONS: u32 = super::password::DEFAULT_ITERATIONS;

/// Why an exchange failed (all of them refuse the client, with 0x87 Not authorized).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScramError {
    /// A message is not what SCRAM says it must be.
    Malformed,
    /// The client asked for channel binding, which is not offered.
    ChannelBinding,
    /// The client-final message names another nonce or GS2 header than the exchange's.
    Mismatch,
    /// The proof is wrong: the password, or the user, is not the file's.
    BadProof,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScramError::Malformed => "malformed SCRAM message",
            ScramError::ChannelBinding => "channel binding is not supported",
            ScramError::Mismatch => "client-final does not continue this exchange",
            ScramError::BadProof => "wrong proof",
        })
    }
}

impl core::error::Error for ScramError {}

/// The broker's side of one exchange, between server-first and client-final.
#[derive(Clone)]
pub struct ScramServer {
    user: String,
    /// client-first-message-bare "," server-first-message: the start of the AuthMessage.
    transcript: String,
    nonce: String,
    /// The GS2 header the client sent, base64: what client-final's `c=` must be.
    binding: String,
    /// `None`: no `$7$` entry for the user (the proof is refused).
    salted: Option<[u8; 64]>,
}

// Hand-written: the salted password must never reach a log.
impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 64] {
    // HMAC takes a key of any length: the error cannot happen (and would fail the proof).
    let Ok(mut mac) = <Hmac<Sha512> as Mac>::new_from_slice(key) else {
        return [0; 64];
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A `saslname` with `=2C` and `=3D` decoded; `None` for any other `=` escape or a `,`.
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(rest.get(..i)?);
        match rest.get(i..i + 3)? {
            "=2C" => out.push(','),
            "=3D" => out.push('='),
            _ => return None,
        }
        rest = rest.get(i + 3..)?;
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

/// A nonce is printable ASCII without `,`.
fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

impl PasswordFile {
    /// Starts an exchange from the client-first message (the CONNECT's Authentication Data);
    /// `server_nonce` must be fresh random printable bytes from the runtime (18 or more).
    /// Gives the exchange and the server-first message to send in AUTH 0x18.
    pub fn scram_start(
        &self,
        client_first: &[u8],
        server_nonce: &[u8],
    ) -> Result<(ScramServer, Vec<u8>), ScramError> {
        let text = core::str::from_utf8(client_first).map_err(|_| ScramError::Malformed)?;
        let snonce = core::str::from_utf8(server_nonce).map_err(|_| ScramError::Malformed)?;
        if !valid_nonce(snonce) {
            return Err(ScramError::Malformed);
        }
        // gs2-header: "n," or "y," (no binding), then an optional authzid, then ",".
        let mut parts = text.splitn(3, ',');
        let (flag, authzid, bare) = (parts.next(), parts.next(), parts.next());
        let (Some(flag), Some(authzid), Some(bare)) = (flag, authzid, bare) else {
            return Err(ScramError::Malformed);
        };
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed),
        }
        let mut fields = bare.split(',');
        let user = fields
            .next()
            .and_then(|f| f.strip_prefix("n="))
            .and_then(unescape)
            .ok_or(ScramError::Malformed)?;
        let cnonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .filter(|n| valid_nonce(n))
            .ok_or(ScramError::Malformed)?;
        // An authorization identity other than the user is not supported.
        if let Some(a) = authzid.strip_prefix("a=") {
            if unescape(a).as_deref() != Some(user.as_str()) {
                return Err(ScramError::Malformed);
            }
        } else if !authzid.is_empty() {
            return Err(ScramError::Malformed);
        }
        let (salt, iterations, salted) = match self.pbkdf2_entry(&user) {
            Some((salt, iterations, digest)) => (salt.to_vec(), iterations, Some(*digest)),
            None => {
                let decoy: [u8; 64] = Sha512::digest(user.as_bytes()).into();
                let salt = decoy.get(..super::password::SALT_LEN).unwrap_or_default();
                (salt.to_vec(), DECOY_ITERATIONS, None)
            }
        };
        let nonce = alloc::format!("{cnonce}{snonce}");
        let first = alloc::format!("r={nonce},s={},i={iterations}", BASE64.encode(salt));
        let gs2 = text.get(..text.len() - bare.len()).unwrap_or_default();
        let server = ScramServer {
            user,
            transcript: alloc::format!("{bare},{first}"),
            nonce,
            binding: BASE64.encode(gs2),
            salted,
        };
        Ok((server, first.into_bytes()))
    }
}

impl ScramServer {
    /// The user the client says it is (authenticated only once [`ScramServer::finish`]
    /// succeeds).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Checks the client-final message (the client's AUTH data); gives the server-final
    /// message for the CONNACK's Authentication Data.
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text = core::str::from_utf8(client_final).map_err(|_| ScramError::Malformed)?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
        let mut fields = without_proof.split(',');
        let binding = fields.next().and_then(|f| f.strip_prefix("c="));
        let nonce = fields.next().and_then(|f| f.strip_prefix("r="));
        let (Some(binding), Some(nonce)) = (binding, nonce) else {
            return Err(ScramError::Malformed);
        };
        if binding != self.binding || nonce != self.nonce {
            return Err(ScramError::Mismatch);
        }
        let proof = BASE64.decode(proof).map_err(|_| ScramError::Malformed)?;
        let Some(salted) = self.salted else {
            return Err(ScramError::BadProof);
        };
        if proof.len() != 64 {
            return Err(ScramError::BadProof);
        }
        let auth = alloc::format!("{},{without_proof}", self.transcript);
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 64] = Sha512::digest(client_key).into();
        let signature = hmac(&stored, auth.as_bytes());
        let mut recovered = [0u8; 64];
        for ((r, p), s) in recovered.iter_mut().zip(&proof).zip(&signature) {
            *r = p ^ s;
        }
        let recovered_stored: [u8; 64] = Sha512::digest(recovered).into();
        if !bool::from(recovered_stored.ct_eq(&stored)) {
            return Err(ScramError::BadProof);
        }
        let server_key = hmac(&salted, b"Server Key");
        let verifier = hmac(&server_key, auth.as_bytes());
        Ok(alloc::format!("v={}", BASE64.encode(verifier)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::password::hash_entry;

    /// The client's side, written from RFC 5802 §3 apart from the server's code above.
    fn client_final(password: &[u8], first_bare: &str, server_first: &str) -> (String, String) {
        let fields: Vec<&str> = server_first.split(',').collect();
        let nonce = fields[0].strip_prefix("r=").unwrap();
        let salt = BASE64
            .decode(fields[1].strip_prefix("s=").unwrap())
            .unwrap();
        let i: u32 = fields[2].strip_prefix("i=").unwrap().parse().unwrap();
        let salted = pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(password, &salt, i);
        let without = alloc::format!("c=biws,r={nonce}");
        let auth = alloc::format!("{first_bare},{server_first},{without}");
        let client_key = hmac(&salted, b"Client Key");
        let stored = Sha512::digest(client_key);
        let sig = hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(k, s)| k ^ s).collect();
        let server_sig = hmac(&hmac(&salted, b"Server Key"), auth.as_bytes());
        (
            alloc::format!("{without},p={}", BASE64.encode(proof)),
            alloc::format!("v={}", BASE64.encode(server_sig)),
        )
    }

    fn file() -> PasswordFile {
        let entry = hash_entry("al,ice", b"secret", b"0123456789ab", 101).unwrap();
        PasswordFile::parse(&entry).unwrap()
    }

    #[test]
    fn the_right_password_completes_and_the_server_proves_itself() {
        let bare = "n=al=2Cice,r=fyko+d2lbbFgONRv9qkxdawL";
        let (server, first) = file()
            .scram_start(
                alloc::format!("n,,{bare}").as_bytes(),
                b"3rfcNHYJY1ZVvWVs7j",
            )
            .unwrap();
        assert_eq!(server.user(), "al,ice");
        let first = String::from_utf8(first).unwrap();
        assert!(first.starts_with("r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s="));
        assert!(first.ends_with(",i=101"));
        let (last, expected) = client_final(b"secret", bare, &first);
        let got = server.finish(last.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), expected);
    }

    #[test]
    fn a_wrong_password_an_unknown_user_or_another_nonce_are_refused() {
        let f = file();
        let start = |bare: &str| {
            let (s, first) = f
                .scram_start(alloc::format!("n,,{bare}").as_bytes(), b"snonce")
                .unwrap();
            (s, String::from_utf8(first).unwrap())
        };
        let bare = "n=al=2Cice,r=c";
        let (s, first) = start(bare);
        let (last, _) = client_final(b"wrong", bare, &first);
        assert_eq!(s.finish(last.as_bytes()), Err(ScramError::BadProof));
        // An unknown user gets a first answer of the same shape, then the refusal.
        let bare = "n=bob,r=c";
        let (s, first) = start(bare);
        assert!(first.starts_with("r=csnonce,s=") && first.ends_with(",i=101"));
        let (last, _) = client_final(b"secret", bare, &first);
        assert_eq!(s.finish(last.as_bytes()), Err(ScramError::BadProof));
        let (s, _) = start("n=al=2Cice,r=c");
        assert_eq!(
            s.finish(b"c=biws,r=other,p=AAAA"),
            Err(ScramError::Mismatch)
        );
        let (s, _) = start("n=al=2Cice,r=c");
        assert_eq!(s.finish(b"c=biws,r=csnonce"), Err(ScramError::Malformed));
    }

    #[test]
    fn malformed_first_messages_and_channel_binding_are_refused() {
        let f = file();
        for bad in [
            &b""[..],
            b"n,,",
            b"n,,r=x",
            b"n,,n=,r=x",
            b"n,,n=a=2Xb,r=x",
            b"n,,n=al=2Cice",
            b"q,,n=al=2Cice,r=x",
            b"n,a=bob,n=al=2Cice,r=x",
            b"n,,n=al=2Cice,r=x y",
            b"\xff,,n=a,r=x",
        ] {
            assert_eq!(
                f.scram_start(bad, b"s").map(|_| ()),
                Err(ScramError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let bound = f.scram_start(b"p=tls-unique,,n=al=2Cice,r=x", b"s");
        assert_eq!(bound.map(|_| ()), Err(ScramError::ChannelBinding));
    }
}
