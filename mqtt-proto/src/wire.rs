//! Primitive field readers and writers: integers, variable byte integers, strings, binary data.

use crate::{DecodeError, EncodeError, MAX_REMAINING_LENGTH};

/// A cursor over the body of one packet. Running past its end is malformed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) const fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) const fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The unread bytes, consuming them.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    /// Fails unless every byte was read.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::UnexpectedEnd);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(DecodeError::UnexpectedEnd)?;
        self.buf = tail;
        Ok(*head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array::<1>().map(|[b]| b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    /// A variable byte integer inside a body (property lengths, subscription identifiers).
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match decode_varint(self.buf) {
            Ok(Some((value, used))) => {
                self.buf = self.buf.get(used..).unwrap_or_default();
                Ok(value)
            }
            // Inside a complete frame, running out of bytes is malformed.
            Ok(None) => Err(DecodeError::UnexpectedEnd),
            Err(_) => Err(DecodeError::InvalidVarInt),
        }
    }

    /// Binary data: a two-byte length and that many bytes.
    pub(crate) fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()?;
        self.bytes(usize::from(len))
    }

    /// A UTF-8 string: valid UTF-8 (so no surrogates) and no U+0000.
    pub(crate) fn string(&mut self) -> Result<&'a str, DecodeError> {
        let raw = self.binary()?;
        check_str(raw)
    }

    /// A string that is only checked to be UTF-8: for topics, whose own validation covers
    /// U+0000, and for lists that were fully checked when decoded.
    pub(crate) fn utf8(&mut self) -> Result<&'a str, DecodeError> {
        core::str::from_utf8(self.binary()?).map_err(|_| DecodeError::InvalidUtf8)
    }
}

/// Checks an MQTT UTF-8 string field.
pub(crate) fn check_str(raw: &[u8]) -> Result<&str, DecodeError> {
    let s = core::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)?;
    if raw.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    Ok(s)
}

/// Decodes a variable byte integer at the start of `buf`.
///
/// `Ok(None)` means more bytes are needed. A fifth byte or a non-minimal encoding is an error.
pub(crate) fn decode_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, &b) in buf.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // A zero final byte after the first means a longer encoding than needed.
            if b == 0 && i > 0 {
                return Err(DecodeError::InvalidVarInt);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::RemainingLengthTooLong)
    } else {
        Ok(None)
    }
}

/// How many bytes the variable byte integer for `v` takes.
pub(crate) const fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A destination for encoded bytes whose capacity was checked before writing started.
///
/// Encoding makes two passes, one to count the length and one to write. Only the counting pass
/// runs the content checks (string, topic and property rules), so a packet that fails them
/// writes nothing.
pub(crate) trait Sink {
    /// Whether this pass validates the content.
    const CHECK: bool;

    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError>;

    fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.put(&[v])
    }

    fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.put(&v.to_be_bytes())
    }

    fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.put(&v.to_be_bytes())
    }

    fn varint(&mut self, v: usize) -> Result<(), EncodeError> {
        if v > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge);
        }
        let mut out = [0u8; 4];
        let mut n = v;
        let mut len = 0;
        for slot in out.iter_mut() {
            // Truncation is the point: the low seven bits go into each byte.
            let mut byte = (n & 0x7f) as u8;
            n >>= 7;
            len += 1;
            if n > 0 {
                byte |= 0x80;
            }
            *slot = byte;
            if n == 0 {
                break;
            }
        }
        self.put(out.get(..len).unwrap_or_default())
    }

    /// Binary data with its two-byte length.
    fn binary(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong)?;
        self.u16(len)?;
        self.put(data)
    }

    /// A UTF-8 string with its two-byte length; U+0000 is refused.
    fn string(&mut self, s: &str) -> Result<(), EncodeError> {
        if Self::CHECK && s.as_bytes().contains(&0) {
            return Err(EncodeError::NullCharacter);
        }
        self.binary(s.as_bytes())
    }
}

/// Writes into a caller's slice.
pub(crate) struct SliceSink<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl<'b> SliceSink<'b> {
    pub(crate) fn new(buf: &'b mut [u8]) -> Self {
        SliceSink { buf, pos: 0 }
    }

    pub(crate) const fn written(&self) -> usize {
        self.pos
    }
}

impl Sink for SliceSink<'_> {
    const CHECK: bool = false;

    #[inline]
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos + bytes.len();
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(EncodeError::BufferTooSmall { needed: end })?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }
}

/// Writes into a `bytes::BufMut` whose remaining capacity was checked first.
#[cfg(feature = "bytes")]
pub(crate) struct BufSink<'b, B: bytes::BufMut + ?Sized>(pub(crate) &'b mut B);

#[cfg(feature = "bytes")]
impl<B: bytes::BufMut + ?Sized> Sink for BufSink<'_, B> {
    const CHECK: bool = false;

    #[inline]
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        if self.0.remaining_mut() < bytes.len() {
            return Err(EncodeError::BufferTooSmall {
                needed: bytes.len(),
            });
        }
        self.0.put_slice(bytes);
        Ok(())
    }
}

/// Counts bytes instead of writing them: gives encoders their length for free.
#[derive(Default)]
pub(crate) struct CountSink(pub(crate) usize);

impl Sink for CountSink {
    const CHECK: bool = true;

    #[inline]
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.0 += bytes.len();
        Ok(())
    }
}
