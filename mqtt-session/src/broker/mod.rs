//! The broker core: built-in answers to authentication (password file) and authorization (ACL file).
pub mod acl;
pub mod password;

use core::fmt;

/// A rejected configuration file: the 1-based line number and what is wrong there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineError<K> {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong with that line.
    pub kind: K,
}

impl<K: fmt::Display> fmt::Display for LineError<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.kind)
    }
}

impl<K: fmt::Display + fmt::Debug> core::error::Error for LineError<K> {}

/// The lines of a mosquitto-style file that hold something: 1-based number and trimmed text,
/// without blank lines and `#` comments.
fn statements(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(index, line)| (index + 1, line))
}
