//! Topic names and topic filters: validation (MQTT 5 sections 4.7 and 4.8.2) and wildcard matching.
//!
//! Everything here works on borrowed `&str`, never allocates and never panics, whatever the
//! input: the decoder calls [`validate_name`] and [`validate_filter`] on untrusted bytes.

use core::fmt;

/// The largest number of bytes an MQTT UTF-8 string (and so a topic) can hold.
const MAX_LEN: usize = u16::MAX as usize;

/// The prefix that marks a shared subscription (MQTT 5 section 4.8.2).
const SHARE_PREFIX: &str = "$share/";

/// Why a string is not a valid topic name or filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum TopicError {
    /// The topic is zero bytes long.
    Empty,
    /// The topic is longer than 65535 bytes.
    TooLong,
    /// The topic contains the null character U+0000.
    NullCharacter,
    /// A topic name contains a wildcard character, `+` or `#`.
    WildcardInName,
    /// A filter has `#` other than as its whole last level, or `+` other than as a whole level.
    InvalidWildcard,
    /// A `$share/` filter has an empty group, a group with `+` or `#`, or no filter after it.
    InvalidSharedSubscription,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "the topic is empty",
            TopicError::TooLong => "the topic is longer than 65535 bytes",
            TopicError::NullCharacter => "the topic contains the null character U+0000",
            TopicError::WildcardInName => "a topic name cannot contain the wildcards '+' or '#'",
            TopicError::InvalidWildcard => {
                "in a topic filter '#' must be the whole last level and '+' a whole level"
            }
            TopicError::InvalidSharedSubscription => {
                "a shared subscription must be \"$share/{group}/{filter}\" with a non-empty group \
                 without '+', '#' or '/' and a non-empty filter"
            }
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TopicError {}

/// Checks the rules every topic shares: not empty, not over the length of an MQTT string.
fn check_len(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        Err(TopicError::Empty)
    } else if s.len() > MAX_LEN {
        Err(TopicError::TooLong)
    } else {
        Ok(())
    }
}

/// Checks `s` against the rules of a topic name, as [`TopicName::new`] does.
pub(crate) fn validate_name(s: &str) -> Result<(), TopicError> {
    check_len(s)?;
    if !has_special(s.as_bytes()) {
        return Ok(());
    }
    // U+0000 is the single byte 0 in UTF-8 (a `str` never holds an overlong form), so a byte
    // scan finds it, and the first offending byte decides the error.
    match s.bytes().find(|b| matches!(b, 0 | b'+' | b'#')) {
        None => Ok(()),
        Some(0) => Err(TopicError::NullCharacter),
        Some(_) => Err(TopicError::WildcardInName),
    }
}

/// Checks `s` against the rules of a topic filter, shared subscriptions included, as
/// [`TopicFilter::new`] does.
pub(crate) fn validate_filter(s: &str) -> Result<(), TopicError> {
    check_len(s)?;
    match s.strip_prefix(SHARE_PREFIX) {
        Some(rest) => validate_shared(rest),
        None => validate_plain_filter(s),
    }
}

/// Checks what follows `$share/`: a group, a `/`, then a non-empty ordinary filter.
fn validate_shared(rest: &str) -> Result<(), TopicError> {
    let Some((group, filter)) = rest.split_once('/') else {
        // "$share/group" names no filter at all.
        return Err(TopicError::InvalidSharedSubscription);
    };
    if group.is_empty() || filter.is_empty() {
        return Err(TopicError::InvalidSharedSubscription);
    }
    match group.bytes().find(|b| matches!(b, 0 | b'+' | b'#')) {
        None => {}
        Some(0) => return Err(TopicError::NullCharacter),
        Some(_) => return Err(TopicError::InvalidSharedSubscription),
    }
    // A nested "$share/" has no meaning; refusing it keeps `SharedSubscription::filter` an
    // ordinary filter, so stripping the prefix once is always enough when matching.
    if filter.starts_with(SHARE_PREFIX) {
        return Err(TopicError::InvalidSharedSubscription);
    }
    validate_plain_filter(filter)
}

/// Checks the wildcard and character rules of a filter, without any shared-subscription meaning.
const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Whether any of the eight bytes packed in `x` is U+0000, `+` or `#` (SWAR).
const fn chunk_has_special(x: u64) -> bool {
    // Non-zero exactly when some byte of `v` is zero.
    const fn zero_byte(v: u64) -> u64 {
        v.wrapping_sub(ONES) & !v & HIGHS
    }
    zero_byte(x) | zero_byte(x ^ (ONES * b'+' as u64)) | zero_byte(x ^ (ONES * b'#' as u64)) != 0
}

/// Whether `bytes` holds U+0000, `+` or `#`.
///
/// Topics are checked on every packet, so this looks at eight bytes per step: most topics hold
/// none of the three, and the exact rules only run where one is.
pub(crate) fn has_special(bytes: &[u8]) -> bool {
    let (chunks, rest) = bytes.as_chunks::<8>();
    chunks
        .iter()
        .any(|c| chunk_has_special(u64::from_ne_bytes(*c)))
        || rest.iter().any(|&b| matches!(b, 0 | b'+' | b'#'))
}

fn validate_plain_filter(s: &str) -> Result<(), TopicError> {
    let bytes = s.as_bytes();
    // Only the special bytes need a look: a wildcard is valid exactly when it is the whole
    // level ('#' only the last one), which its two neighbours tell.
    let check = |i: usize, b: u8| {
        let starts_level = i
            .checked_sub(1)
            .and_then(|p| bytes.get(p))
            .is_none_or(|&p| p == b'/');
        match b {
            0 => Err(TopicError::NullCharacter),
            b'+' if !starts_level || !matches!(bytes.get(i + 1), None | Some(b'/')) => {
                Err(TopicError::InvalidWildcard)
            }
            b'#' if !starts_level || i + 1 != bytes.len() => Err(TopicError::InvalidWildcard),
            _ => Ok(()),
        }
    };
    let (chunks, rest) = bytes.as_chunks::<8>();
    for (n, chunk) in chunks.iter().enumerate() {
        if chunk_has_special(u64::from_ne_bytes(*chunk)) {
            for (j, &b) in chunk.iter().enumerate() {
                check(n * 8 + j, b)?;
            }
        }
    }
    let base = chunks.len() * 8;
    for (j, &b) in rest.iter().enumerate() {
        check(base + j, b)?;
    }
    Ok(())
}

/// Whether topic `name` matches `filter`, per MQTT 5 section 4.7 (both assumed already valid).
///
/// `+` matches exactly one level (an empty one too), `#` as the last level matches its parent
/// and any number of levels below it, and a filter that starts with a wildcard never matches a
/// name that starts with `$`. A `$share/` prefix gets no special meaning here; use
/// [`TopicFilter::matches`] for that. On invalid input the result is unspecified but the call
/// still returns: a wildcard that is not a whole level is compared as a literal.
#[must_use]
pub fn matches(filter: &str, name: &str) -> bool {
    let mut f = filter.as_bytes();
    let mut n = name.as_bytes();
    // Section 4.7.2: `$` topics are for the server, so wildcards at the top never reach them.
    if n.first() == Some(&b'$') && matches!(f.first(), Some(b'+' | b'#')) {
        return false;
    }
    // Each turn of the outer loop starts at the beginning of a level in both strings, and each
    // byte of either string is looked at once.
    loop {
        match f {
            // '#' matches whatever is left, even nothing.
            [b'#'] => return true,
            // A last '+' matches the rest of the name if that is a single level.
            [b'+'] => return !n.contains(&b'/'),
            [b'+', b'/', f_rest @ ..] => {
                f = f_rest;
                match n.iter().position(|&b| b == b'/') {
                    // `get` cannot fail here (the '/' is inside `n`), it just avoids indexing.
                    Some(i) => n = n.get(i + 1..).unwrap_or_default(),
                    // The name ended in the level '+' took: only a "#" left can still match
                    // ("a/+/#" matches "a/b", as '#' includes its parent).
                    None => return f == b"#",
                }
            }
            _ => loop {
                // Compare one literal level byte by byte.
                match (f.split_first(), n.split_first()) {
                    (Some((b'/', f_rest)), Some((b'/', n_rest))) => {
                        f = f_rest;
                        n = n_rest;
                        break;
                    }
                    (Some((a, f_rest)), Some((b, n_rest))) if a == b => {
                        f = f_rest;
                        n = n_rest;
                    }
                    (None, None) => return true,
                    // The name ended with this level: "sport/#" still matches "sport".
                    (Some((b'/', f_rest)), None) => return f_rest == b"#",
                    _ => return false,
                }
            },
        }
    }
}

/// A validated topic name (what PUBLISH carries): non-empty, <= 65535 bytes, no U+0000, no wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TopicName<'a>(&'a str);

impl<'a> TopicName<'a> {
    /// Checks `s` and wraps it as a topic name.
    ///
    /// # Errors
    /// The first rule of a topic name that `s` breaks.
    pub fn new(s: &'a str) -> Result<Self, TopicError> {
        validate_name(s).map(|()| TopicName(s))
    }

    /// Wraps `s` without checking it (tests feed invalid names to the matcher).
    #[cfg(test)]
    pub(crate) const fn new_unchecked(s: &'a str) -> Self {
        TopicName(s)
    }

    /// The topic name as a string slice.
    #[must_use]
    pub const fn as_str(&self) -> &'a str {
        self.0
    }

    /// Whether the name starts with `$`, the prefix the server keeps for its own topics.
    #[must_use]
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// Iterates over the levels (the parts between `/`), empty ones included.
    #[must_use]
    pub fn levels(&self) -> core::str::Split<'a, char> {
        self.0.split('/')
    }
}

impl AsRef<str> for TopicName<'_> {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl fmt::Display for TopicName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` rather than `write_str` so width and alignment flags work as for a `str`.
        f.pad(self.0)
    }
}

impl<'a> TryFrom<&'a str> for TopicName<'a> {
    type Error = TopicError;

    fn try_from(s: &'a str) -> Result<Self, TopicError> {
        TopicName::new(s)
    }
}

impl PartialEq<str> for TopicName<'_> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TopicName<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A validated topic filter (what SUBSCRIBE and UNSUBSCRIBE carry).
///
/// It is non-empty, at most 65535 bytes, without U+0000, has `#` only as its whole last level
/// and `+` only as whole levels. If it starts with `$share/` it is a shared subscription
/// `$share/{group}/{filter}`: the group is non-empty without `/`, `+` or `#`, and the filter is a
/// non-empty valid filter that does not itself start with `$share/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TopicFilter<'a>(&'a str);

impl<'a> TopicFilter<'a> {
    /// Checks `s` and wraps it as a topic filter.
    ///
    /// # Errors
    /// The first rule of a topic filter (or shared subscription) that `s` breaks.
    pub fn new(s: &'a str) -> Result<Self, TopicError> {
        validate_filter(s).map(|()| TopicFilter(s))
    }

    /// Wraps `s` without checking it; for strings the crate has already validated.
    pub(crate) const fn new_unchecked(s: &'a str) -> Self {
        TopicFilter(s)
    }

    /// The whole filter as a string slice, `$share/{group}/` prefix included.
    #[must_use]
    pub const fn as_str(&self) -> &'a str {
        self.0
    }

    /// Whether the filter contains a `+` or `#` wildcard.
    #[must_use]
    pub fn has_wildcards(&self) -> bool {
        // A share group cannot hold wildcards, so looking at the whole string is enough.
        self.0.bytes().any(|b| matches!(b, b'+' | b'#'))
    }

    /// The group and inner filter if this is a shared subscription (`$share/{group}/{filter}`).
    #[must_use]
    pub fn shared(&self) -> Option<SharedSubscription<'a>> {
        let (group, filter) = self.0.strip_prefix(SHARE_PREFIX)?.split_once('/')?;
        Some(SharedSubscription {
            group,
            filter: TopicFilter(filter),
        })
    }

    /// Whether `name` matches this filter; a shared subscription matches with its inner filter.
    #[must_use]
    pub fn matches(&self, name: &TopicName<'_>) -> bool {
        let filter = self.shared().map_or(self.0, |s| s.filter.0);
        matches(filter, name.0)
    }

    /// Iterates over the levels of the whole string (for a shared filter `$share` and the group
    /// come first; use [`TopicFilter::shared`] for the inner filter's levels).
    #[must_use]
    pub fn levels(&self) -> core::str::Split<'a, char> {
        self.0.split('/')
    }
}

impl AsRef<str> for TopicFilter<'_> {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl fmt::Display for TopicFilter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.0)
    }
}

impl<'a> TryFrom<&'a str> for TopicFilter<'a> {
    type Error = TopicError;

    fn try_from(s: &'a str) -> Result<Self, TopicError> {
        TopicFilter::new(s)
    }
}

impl PartialEq<str> for TopicFilter<'_> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TopicFilter<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A shared subscription "$share/{group}/{filter}" split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SharedSubscription<'a> {
    /// The share name: the server hands each message to one subscriber of this group.
    pub group: &'a str,
    /// The filter the group subscribes to.
    pub filter: TopicFilter<'a>,
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;
    use std::string::{String, ToString};
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    fn name(s: &str) -> TopicName<'_> {
        TopicName::new(s).unwrap()
    }

    fn filter(s: &str) -> TopicFilter<'_> {
        TopicFilter::new(s).unwrap()
    }

    /// Checks `matches` and `TopicFilter::matches` agree with the expectation.
    fn check(f: &str, n: &str, expected: bool) {
        assert_eq!(matches(f, n), expected, "matches({f:?}, {n:?})");
        assert_eq!(
            filter(f).matches(&name(n)),
            expected,
            "{f:?}.matches({n:?})"
        );
    }

    #[test]
    fn spec_multi_level_wildcard() {
        // MQTT 5 section 4.7.1.2.
        for n in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            check("sport/tennis/player1/#", n, true);
        }
        check("sport/#", "sport", true);
        check("sport/#", "sport/", true);
        check("sport/#", "sport/a/b", true);
        check("sport/tennis/#", "sport/tennis", true);
        check("sport/tennis/#", "sport/tennisx", false);
        check("sport/tennis/#", "sport", false);
        check("#", "sport/tennis/player1", true);
        check("#", "/", true);
        check("a/+/#", "a/b", true);
        check("+/#", "a", true);
        check("a/+/#", "a", false);
    }

    #[test]
    fn spec_single_level_wildcard() {
        // MQTT 5 section 4.7.1.3.
        check("sport/tennis/+", "sport/tennis/player1", true);
        check("sport/tennis/+", "sport/tennis/player2", true);
        check("sport/tennis/+", "sport/tennis/player1/ranking", false);
        check("sport/+", "sport", false);
        check("sport/+", "sport/", true);
        check("sport/+", "sport/tennis/player1", false);
        check("+/+", "/finance", true);
        check("/+", "/finance", true);
        check("+", "/finance", false);
        check("+", "a", true);
        check("+", "a/b", false);
        check("a/+/c", "a//c", true);
        check("a/+/c", "a/b/c", true);
        check("a/+/c", "a/b/d", false);
        check("+/tennis/#", "sport/tennis/player1", true);
        check("sport/+/player1", "sport/tennis/player1", true);
        check("sport/+/player1", "sport/tennis/player2", false);
    }

    #[test]
    fn spec_dollar_topics() {
        // MQTT 5 section 4.7.2.
        check("#", "$SYS/monitor/Clients", false);
        check("+/monitor/Clients", "$SYS/monitor/Clients", false);
        check("$SYS/#", "$SYS/monitor/Clients", true);
        check("$SYS/monitor/+", "$SYS/monitor/Clients", true);
        check("+", "$SYS", false);
        check("#", "$", false);
        check("a/#", "a/$b", true);
        check("a/+", "a/$b", true);
        assert!(name("$SYS/x").is_system());
        assert!(!name("SYS/$x").is_system());
    }

    #[test]
    fn literal_levels() {
        check("a/b", "a/b", true);
        check("a/b", "a/B", false);
        check("a/b", "a/b/c", false);
        check("a/b/c", "a/b", false);
        check("a/b", "a/bc", false);
        check("a/bc", "a/b", false);
        check("a/", "a/", true);
        check("a/", "a", false);
        check("/", "/", true);
        check("//", "/", false);
        check("é/ü", "é/ü", true);
        check("$SYS", "$SYS", true);
    }

    #[test]
    fn names() {
        assert_eq!(TopicName::new("a/b"), Ok(name("a/b")));
        assert_eq!(TopicName::new("/"), Ok(name("/")));
        assert_eq!(TopicName::new(""), Err(TopicError::Empty));
        assert_eq!(TopicName::new("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(TopicName::new("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a+b"), Err(TopicError::WildcardInName));
        // The first offending byte decides.
        assert_eq!(TopicName::new("\0+"), Err(TopicError::NullCharacter));
        assert_eq!(TopicName::new("+\0"), Err(TopicError::WildcardInName));
        let max = "a".repeat(MAX_LEN);
        assert!(TopicName::new(&max).is_ok());
        let long = "a".repeat(MAX_LEN + 1);
        assert_eq!(TopicName::new(&long), Err(TopicError::TooLong));
        assert_eq!(TopicName::try_from("x/y"), Ok(name("x/y")));
        assert_eq!(validate_name("a/b"), Ok(()));
        assert_eq!(validate_name("a/#"), Err(TopicError::WildcardInName));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "/",
            "a",
            "a/#",
            "+/+",
            "/+",
            "+/",
            "a/+/b",
            "a//b",
            "+/#",
            "$SYS/#",
            "$share",
            "$sharex/a",
        ] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok:?}");
        }
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
        assert_eq!(TopicFilter::new("a/\0"), Err(TopicError::NullCharacter));
        for bad in [
            "a/#/b", "#/", "##", "a#", "a/b#", "#a", "a+", "+a", "a/+b", "a/b+/c", "++", "+#",
        ] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(TopicError::InvalidWildcard),
                "{bad:?}"
            );
        }
        let long = "+/".repeat(MAX_LEN / 2 + 1);
        assert_eq!(TopicFilter::new(&long), Err(TopicError::TooLong));
        assert_eq!(TopicFilter::try_from("a/+"), Ok(filter("a/+")));
        assert_eq!(validate_filter("a/#"), Ok(()));
        assert_eq!(validate_filter("a#"), Err(TopicError::InvalidWildcard));
    }

    #[test]
    fn shared_subscriptions() {
        let f = filter("$share/g/a/#");
        assert_eq!(
            f.shared(),
            Some(SharedSubscription {
                group: "g",
                filter: filter("a/#")
            })
        );
        assert!(f.matches(&name("a/b")));
        assert!(!f.matches(&name("$share/g/a/b")));
        // The free function does not strip the prefix.
        assert!(!matches("$share/g/a/#", "a/b"));
        assert!(filter("$share/g/#").matches(&name("x")));
        assert!(!filter("$share/g/#").matches(&name("$SYS/x")));
        assert_eq!(filter("$share/g/+").shared().unwrap().filter, "+");
        assert_eq!(filter("$share/g//").shared().unwrap().filter, "/");
        assert_eq!(filter("a/#").shared(), None);
        assert_eq!(filter("$share").shared(), None);
        for bad in [
            "$share//a",
            "$share/g",
            "$share/g/",
            "$share/g+/a",
            "$share/g#/a",
            "$share/+/a",
            "$share/#",
            "$share/",
            "$share/g/$share/h/a",
        ] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(TopicError::InvalidSharedSubscription),
                "{bad:?}"
            );
        }
        assert_eq!(
            TopicFilter::new("$share/g/a#"),
            Err(TopicError::InvalidWildcard)
        );
        assert_eq!(
            TopicFilter::new("$share/g\0/a"),
            Err(TopicError::NullCharacter)
        );
        assert_eq!(
            TopicFilter::new("$share/g/a\0"),
            Err(TopicError::NullCharacter)
        );
        // A shared subscription is an ordinary topic name (no wildcards), if a strange one.
        assert!(TopicName::new("$share/g").is_ok());
    }

    #[test]
    fn accessors_and_traits() {
        let n = name("a//b");
        assert_eq!(n.as_str(), "a//b");
        assert_eq!(n.as_ref(), "a//b");
        assert_eq!(n.levels().collect::<Vec<_>>(), ["a", "", "b"]);
        assert_eq!(n, "a//b");
        assert_eq!(n, *"a//b");
        assert_eq!(format!("[{n:>6}]"), "[  a//b]");
        let f = filter("$share/g/+/x");
        assert_eq!(f.as_str(), "$share/g/+/x");
        assert_eq!(f.as_ref(), "$share/g/+/x");
        assert_eq!(f.levels().collect::<Vec<_>>(), ["$share", "g", "+", "x"]);
        assert_eq!(f, "$share/g/+/x");
        assert_eq!(f, *"$share/g/+/x");
        assert_eq!(f.to_string(), "$share/g/+/x");
        assert!(f.has_wildcards());
        assert!(filter("a/#").has_wildcards());
        assert!(!filter("a/b").has_wildcards());
        assert_eq!(TopicName::new_unchecked("x").as_str(), "x");
        assert_eq!(TopicFilter::new_unchecked("x").as_str(), "x");
    }

    #[test]
    fn error_display() {
        let all = [
            TopicError::Empty,
            TopicError::TooLong,
            TopicError::NullCharacter,
            TopicError::WildcardInName,
            TopicError::InvalidWildcard,
            TopicError::InvalidSharedSubscription,
        ];
        for e in all {
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(TopicError::Empty.to_string(), "the topic is empty");
    }

    /// A straightforward model of section 4.7 to compare the single-pass `matches` against.
    fn reference_matches(filter: &str, name: &str) -> bool {
        if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let f: Vec<&str> = filter.split('/').collect();
        let n: Vec<&str> = name.split('/').collect();
        for (i, level) in f.iter().enumerate() {
            match *level {
                "#" => return true,
                "+" if i < n.len() => {}
                l if n.get(i) == Some(&l) => {}
                _ => return false,
            }
        }
        f.len() == n.len()
    }

    /// Every string of up to a few bytes from a small alphabet, for exhaustive checks.
    fn all_strings(alphabet: &[char], max_len: usize) -> Vec<String> {
        let mut all = Vec::from([String::new()]);
        let mut last = all.clone();
        for _ in 0..max_len {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn matches_agrees_with_reference_exhaustively() {
        let filters: Vec<String> = all_strings(&['a', '/', '+', '#', '$'], 5)
            .into_iter()
            .filter(|f| validate_filter(f).is_ok())
            .collect();
        let names: Vec<String> = all_strings(&['a', 'b', '/', '$'], 4)
            .into_iter()
            .filter(|n| validate_name(n).is_ok())
            .collect();
        for f in &filters {
            for n in &names {
                assert_eq!(matches(f, n), reference_matches(f, n), "{f:?} {n:?}");
            }
        }
    }

    /// Valid topic names as their levels: short levels, `$`, spaces and non-ASCII included.
    fn name_levels() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec("[a-c$ é]{0,3}", 1..6)
            .prop_filter("a name is not empty", |l| !l.join("/").is_empty())
    }

    proptest::proptest! {
        #[test]
        fn name_matches_itself(levels in name_levels()) {
            let n = levels.join("/");
            prop_assert_eq!(validate_name(&n), Ok(()));
            prop_assert!(matches(&n, &n));
            if !n.starts_with(SHARE_PREFIX) {
                prop_assert!(filter(&n).matches(&name(&n)));
            }
        }

        #[test]
        fn hash_matches_all_but_dollar(levels in name_levels()) {
            let n = levels.join("/");
            prop_assert_eq!(matches("#", &n), !n.starts_with('$'));
        }

        #[test]
        fn plus_replaces_any_level(levels in name_levels(), i in any::<prop::sample::Index>()) {
            let n = levels.join("/");
            let i = i.index(levels.len());
            let mut f = levels.clone();
            f[i] = "+".into();
            let f = f.join("/");
            prop_assert_eq!(validate_filter(&f), Ok(()));
            let dollar_blocked = i == 0 && n.starts_with('$');
            prop_assert_eq!(matches(&f, &n), !dollar_blocked);
        }

        #[test]
        fn hash_after_any_prefix(levels in name_levels(), k in any::<prop::sample::Index>()) {
            let n = levels.join("/");
            let k = k.index(levels.len() + 1);
            let f = if k == 0 { "#".into() } else { levels[..k].join("/") + "/#" };
            prop_assert_eq!(validate_filter(&f), Ok(()));
            let dollar_blocked = k == 0 && n.starts_with('$');
            prop_assert_eq!(matches(&f, &n), !dollar_blocked);
        }

        #[test]
        fn matches_agrees_with_reference(f in "[ab/+#$]{0,8}", n in "[ab/$]{0,8}") {
            // Over valid inputs the single pass must give the model's answer.
            if validate_filter(&f).is_ok() && validate_name(&n).is_ok() {
                prop_assert_eq!(matches(&f, &n), reference_matches(&f, &n), "{:?} {:?}", f, n);
            }
        }

        #[test]
        fn never_panics(f in "[ab/+#$\0]{0,10}|\\PC*", n in "[ab/+#$\0]{0,10}|\\PC*") {
            let _ = matches(&f, &n);
            let _ = matches(&n, &f);
            let _ = validate_name(&n);
            if let Ok(t) = TopicFilter::new(&f) {
                // A valid shared filter's inner filter is a valid filter too.
                if let Some(s) = t.shared() {
                    prop_assert_eq!(validate_filter(s.filter.as_str()), Ok(()));
                    prop_assert!(!s.group.is_empty());
                }
                let _ = t.matches(&TopicName::new_unchecked(&n));
            }
        }
    }
}
