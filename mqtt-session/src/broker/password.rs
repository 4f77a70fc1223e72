//! The mosquitto 2.0 password file: parse it, check a CONNECT's credentials, write entries.
//!
//! One `user:hash` entry a line; lines starting with `#` and blank lines are skipped. A hash is
//! either `$7$ITERATIONS$SALT$HASH`, PBKDF2-HMAC-SHA512 (what `mosquitto_passwd` writes by
//! default, with 101 iterations and a 12-byte salt), or `$6$SALT$HASH`, one SHA-512 of the
//! password followed by the salt (mosquitto 1.6 and `mosquitto_passwd -H sha512`). Salt and hash
//! are standard base64 with padding; the hash is the 64-byte SHA-512 output.
//!
//! ```
//! use mqtt_session::broker::password::{hash_entry, PasswordFile};
//!
//! let line = hash_entry("alice", b"secret", b"0123456789ab", 101)?;
//! let file = PasswordFile::parse(&line)?;
//! assert!(file.verify("alice", b"secret"));
//! assert!(!file.verify("alice", b"wrong"));
//! # Ok::<(), Box<dyn core::error::Error>>(())
//! ```

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// The iteration count `mosquitto_passwd` uses for `$7$` entries.
pub const DEFAULT_ITERATIONS: u32 = 101;

/// The salt length in bytes `mosquitto_passwd` uses.
pub const SALT_LEN: usize = 12;

/// SHA-512 output length: the length of every stored hash.
const HASH_LEN: usize = 64;

/// Why a password file line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The line has no `:` between user name and hash.
    MissingColon,
    /// The user name before the `:` is empty.
    EmptyUser,
    /// The same user name appears on an earlier line.
    DuplicateUser,
    /// The hash does not start with `$6$` or `$7$` (e.g. a plain-text password).
    UnknownHashType,
    /// The hash has the wrong number of `$`-separated fields.
    BadFormat,
    /// The `$7$` iteration count is not a positive integer.
    BadIterations,
    /// The salt or hash is not valid base64.
    BadBase64,
    /// The decoded hash is not 64 bytes long.
    BadHashLength,
}

/// A rejected password file: the line number and a [`ParseErrorKind`].
pub type ParseError = super::LineError<ParseErrorKind>;

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseErrorKind::MissingColon => "expected `user:hash`",
            ParseErrorKind::EmptyUser => "empty user name",
            ParseErrorKind::DuplicateUser => "user name already defined on an earlier line",
            ParseErrorKind::UnknownHashType => {
                "unknown hash type (expected `$7$` or `$6$`; plain-text passwords are not accepted)"
            }
            ParseErrorKind::BadFormat => "malformed hash (expected `$7$iterations$salt$hash`)",
            ParseErrorKind::BadIterations => "iteration count is not a positive integer",
            ParseErrorKind::BadBase64 => "salt or hash is not valid base64",
            ParseErrorKind::BadHashLength => "hash is not 64 bytes",
        })
    }
}

/// Why [`hash_entry`] refused to write an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryError {
    /// The user name is empty, starts with `#`, or contains `:` or a line break.
    BadUser,
    /// The iteration count is 0.
    ZeroIterations,
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryError::BadUser => {
                "user name must be non-empty, not start with `#`, and contain no `:` or line break"
            }
            EntryError::ZeroIterations => "iteration count must be at least 1",
        })
    }
}

impl core::error::Error for EntryError {}

/// How one user's password is hashed.
#[derive(Clone, PartialEq, Eq)]
enum Hash {
    /// `$7$`: PBKDF2-HMAC-SHA512 with this many iterations.
    Pbkdf2 { iterations: u32 },
    /// `$6$`: SHA-512(password || salt).
    Sha512,
}

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    hash: Hash,
    salt: Vec<u8>,
    digest: [u8; HASH_LEN],
}

impl Entry {
    fn digest_of(&self, password: &[u8]) -> [u8; HASH_LEN] {
        match self.hash {
            Hash::Pbkdf2 { iterations } => pbkdf2_sha512(password, &self.salt, iterations),
            Hash::Sha512 => Sha512::new()
                .chain_update(password)
                .chain_update(&self.salt)
                .finalize()
                .into(),
        }
    }
}

// Hand-written so that `{:?}` of a parsed file never prints hashes or salts.
impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.hash {
            Hash::Pbkdf2 { .. } => "$7$..",
            Hash::Sha512 => "$6$..",
        })
    }
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    pbkdf2::pbkdf2_hmac_array::<Sha512, HASH_LEN>(password, salt, iterations)
}

/// A parsed password file: user names and their salted hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: BTreeMap<String, Entry>,
}

impl PasswordFile {
    /// Parses the text of a password file; the first bad line is the error.
    pub fn parse(text: &str) -> Result<PasswordFile, ParseError> {
        let mut users = BTreeMap::new();
        for (line_number, line) in super::statements(text) {
            let err = |kind| ParseError {
                line: line_number,
                kind,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or(err(ParseErrorKind::MissingColon))?;
            let user = user.trim();
            if user.is_empty() {
                return Err(err(ParseErrorKind::EmptyUser));
            }
            let entry = parse_hash(hash.trim()).map_err(err)?;
            if users.insert(user.to_string(), entry).is_some() {
                return Err(err(ParseErrorKind::DuplicateUser));
            }
        }
        Ok(PasswordFile { users })
    }

    /// Whether `user` is in the file and `password` is theirs (the hashes compare in constant
    /// time; an unknown user costs a default `$7$` hash too, so that timing does not tell
    /// which names exist when the entries have the default strength).
    #[must_use]
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(entry) => bool::from(entry.digest_of(password).ct_eq(&entry.digest)),
            None => {
                let _ = core::hint::black_box(pbkdf2_sha512(
                    password,
                    &[0; SALT_LEN],
                    DEFAULT_ITERATIONS,
                ));
                false
            }
        }
    }

    /// The salt, iteration count and PBKDF2 digest of `user`'s `$7$` entry (SCRAM's salted
    /// password).
    pub(crate) fn pbkdf2_entry(&self, user: &str) -> Option<(&[u8], u32, &[u8; HASH_LEN])> {
        let e = self.users.get(user)?;
        match e.hash {
            Hash::Pbkdf2 { iterations } => Some((&e.salt, iterations, &e.digest)),
            Hash::Sha512 => None,
        }
    }

    /// Whether the file has an entry for `user`.
    #[must_use]
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The number of users.
    #[must_use]
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

fn parse_hash(hash: &str) -> Result<Entry, ParseErrorKind> {
    let mut fields = hash.split('$');
    if fields.next() != Some("") {
        return Err(ParseErrorKind::UnknownHashType);
    }
    let kind = match fields.next() {
        Some("7") => {
            let iterations = fields
                .next()
                .and_then(|s| s.parse::<u32>().ok())
                .filter(|&n| n > 0)
                .ok_or(ParseErrorKind::BadIterations)?;
            Hash::Pbkdf2 { iterations }
        }
        Some("6") => Hash::Sha512,
        _ => return Err(ParseErrorKind::UnknownHashType),
    };
    let (Some(salt), Some(digest), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(ParseErrorKind::BadFormat);
    };
    let salt = BASE64.decode(salt).map_err(|_| ParseErrorKind::BadBase64)?;
    let digest = BASE64
        .decode(digest)
        .map_err(|_| ParseErrorKind::BadBase64)?;
    let digest = digest
        .try_into()
        .map_err(|_| ParseErrorKind::BadHashLength)?;
    Ok(Entry {
        hash: kind,
        salt,
        digest,
    })
}

/// A `$7$` (PBKDF2-HMAC-SHA512) password file line for `user`, without a line break.
///
/// The caller supplies the salt (the core has no randomness): [`SALT_LEN`] random bytes, and
/// [`DEFAULT_ITERATIONS`] for what `mosquitto_passwd` writes.
pub fn hash_entry(
    user: &str,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Result<String, EntryError> {
    if user.is_empty() || user.starts_with('#') || user.contains([':', '\n', '\r']) {
        return Err(EntryError::BadUser);
    }
    if iterations == 0 {
        return Err(EntryError::ZeroIterations);
    }
    let digest = pbkdf2_sha512(password, salt, iterations);
    let mut line = String::with_capacity(user.len() + 120);
    line.push_str(user);
    line.push_str(":$7$");
    line.push_str(&iterations.to_string());
    line.push('$');
    BASE64.encode_string(salt, &mut line);
    line.push('$');
    BASE64.encode_string(digest, &mut line);
    Ok(line)
}

/// The user name of a password file line, `None` for comments and lines without a `:`.
fn user_of(line: &str) -> Option<&str> {
    let line = line.trim();
    if line.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(user, _)| user.trim())
}

/// The password file `text` with `entry` (a [`hash_entry`] line) in place of its user's line,
/// or appended if the user has none; comments, other lines and their order are kept.
#[must_use]
pub fn with_entry(text: &str, entry: &str) -> String {
    let user = user_of(entry);
    let mut out = String::with_capacity(text.len() + entry.len() + 1);
    let mut replaced = false;
    for line in text.lines() {
        let this = !replaced && user.is_some() && user_of(line) == user;
        out.push_str(if this { entry } else { line });
        out.push('\n');
        replaced |= this;
    }
    if !replaced {
        out.push_str(entry);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by `mosquitto_passwd -b -c FILE alice secret` and `-H sha512 -b FILE bob secret`
    // (mosquitto 2.0.11).
    const MOSQUITTO: &str = "\
alice:$7$101$2NPI1Ycmu+ls5FE9$0eWySje5nb+RP0kbNT9EWcppLacyXi5d84Gwv2kRRnYKoj2Oss+ubmrjJ6Z76NshxCklIielD8s7dq7u0xLuPg==
bob:$6$laKxoIt98CHde6PY$BHjynceLRMM4RVknnGdiRX6lFkj6Vj1GtPqN5kCKObetj4oJPZXkqsyXmzquTVyWU1eIjaE3Uzj/jy28cQuExQ==
";

    #[test]
    fn verifies_mosquitto_entries() {
        let file = PasswordFile::parse(MOSQUITTO).unwrap();
        assert_eq!(file.len(), 2);
        assert!(file.verify("alice", b"secret"));
        assert!(file.verify("bob", b"secret"));
        for (user, pass) in [
            ("alice", &b"Secret"[..]),
            ("alice", b"secret "),
            ("alice", b""),
            ("bob", b"secre"),
            ("carol", b"secret"),
            ("", b"secret"),
        ] {
            assert!(!file.verify(user, pass), "{user:?} {pass:?}");
        }
    }

    #[test]
    fn hash_entry_round_trips() {
        let salt = b"0123456789ab";
        let line = hash_entry("dave", b"pw", salt, 1000).unwrap();
        let (head, _) = line.rsplit_once('$').unwrap();
        assert_eq!(head, "dave:$7$1000$MDEyMzQ1Njc4OWFi");
        let file = PasswordFile::parse(&line).unwrap();
        assert!(file.verify("dave", b"pw"));
        assert!(!file.verify("dave", b"pW"));
        // The same inputs give the same line, which is what mosquitto would compute.
        assert_eq!(hash_entry("dave", b"pw", salt, 1000).unwrap(), line);
        assert_eq!(hash_entry("a:b", b"pw", salt, 1), Err(EntryError::BadUser));
        assert_eq!(hash_entry("#x", b"pw", salt, 1), Err(EntryError::BadUser));
        assert_eq!(hash_entry("", b"pw", salt, 1), Err(EntryError::BadUser));
        assert_eq!(
            hash_entry("x", b"pw", salt, 0),
            Err(EntryError::ZeroIterations)
        );
    }

    #[test]
    fn comments_blank_lines_and_spaces() {
        let entry = hash_entry("eve", b"x", b"salt", 2).unwrap();
        let text = alloc::format!("# users\n\n   \n  {entry}  \r\n#eve:nothing\n");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 1);
        assert!(file.contains("eve"));
        assert!(file.verify("eve", b"x"));
        assert!(PasswordFile::parse("").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let good = hash_entry("u", b"x", b"salt", 1).unwrap();
        let (prefix, digest) = good.rsplit_once('$').unwrap();
        let short = alloc::format!("{prefix}${}", &digest[4..]);
        let cases: &[(&str, usize, ParseErrorKind)] = &[
            ("no colon here", 1, ParseErrorKind::MissingColon),
            ("# c\n:$6$YQ==$YQ==", 2, ParseErrorKind::EmptyUser),
            ("u:plaintext", 1, ParseErrorKind::UnknownHashType),
            ("u:$5$abc$def", 1, ParseErrorKind::UnknownHashType),
            ("u:$7$0$YQ==$YQ==", 1, ParseErrorKind::BadIterations),
            ("u:$7$x$YQ==$YQ==", 1, ParseErrorKind::BadIterations),
            ("u:$7$-1$YQ==$YQ==", 1, ParseErrorKind::BadIterations),
            ("u:$6$YQ==", 1, ParseErrorKind::BadFormat),
            ("u:$6$YQ==$YQ==$x", 1, ParseErrorKind::BadFormat),
            ("\n\nu:$6$@@$YQ==", 3, ParseErrorKind::BadBase64),
            ("u:$6$YQ==$YQ==", 1, ParseErrorKind::BadHashLength),
            (&short, 1, ParseErrorKind::BadHashLength),
        ];
        for &(text, line, kind) in cases {
            assert_eq!(
                PasswordFile::parse(text),
                Err(ParseError { line, kind }),
                "{text:?}"
            );
        }
        let dup = alloc::format!("{good}\n# again\n{good}\n");
        let err = PasswordFile::parse(&dup).unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(err.kind, ParseErrorKind::DuplicateUser);
        assert_eq!(
            alloc::format!("{err}"),
            "line 3: user name already defined on an earlier line"
        );
    }

    #[test]
    fn with_entry_replaces_or_appends() {
        let first = hash_entry("alice", b"one", b"salt", 1).unwrap();
        let second = hash_entry("alice", b"two", b"salt", 1).unwrap();
        let bob = hash_entry("bob", b"b", b"salt", 1).unwrap();
        let text = alloc::format!("# header\n{first}\n{bob}");
        let updated = with_entry(&text, &second);
        assert_eq!(updated, alloc::format!("# header\n{second}\n{bob}\n"));
        let file = PasswordFile::parse(&updated).unwrap();
        assert!(file.verify("alice", b"two") && !file.verify("alice", b"one"));
        assert!(file.verify("bob", b"b"));
        let carol = hash_entry("carol", b"c", b"salt", 1).unwrap();
        assert_eq!(
            with_entry(&updated, &carol),
            alloc::format!("{updated}{carol}\n")
        );
        assert_eq!(with_entry("", &carol), alloc::format!("{carol}\n"));
        // A commented-out line for the same user is not an entry.
        let commented = alloc::format!("#{first}\n");
        assert_eq!(
            with_entry(&commented, &second),
            alloc::format!("{commented}{second}\n")
        );
    }

    #[test]
    fn debug_hides_hashes() {
        let file = PasswordFile::parse(MOSQUITTO).unwrap();
        let text = alloc::format!("{file:?}");
        assert!(text.contains("alice") && !text.contains("2NPI"), "{text}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(
            text in ".{0,120}",
            hash in "\\$[67]\\$[0-9a-zA-Z+/=$]{0,100}",
            password in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let _ = PasswordFile::parse(&text);
            // Near-miss entries: the right prefix, random fields.
            if let Ok(file) = PasswordFile::parse(&alloc::format!("u:{hash}")) {
                proptest::prop_assert!(!file.verify("v", &password));
                let _ = file.verify("u", &password);
            }
        }
    }
}
