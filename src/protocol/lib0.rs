//! The lib0 binary primitives that the Yjs wire protocol is built from: unsigned LEB128
//! variable-length integers and length-prefixed byte arrays.
//!
//! Pure and allocation-free on the read side: a [`Reader`] borrows the frame and every
//! read checks the declared length against the bytes that remain, so a hostile length can
//! never make it allocate or read past the end. It knows nothing of message types.

use thiserror::Error;

/// Why bytes could not be read as lib0 primitives.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Lib0Error {
    /// The input ended inside a value.
    #[error("unexpected end of input")]
    UnexpectedEnd,
    /// A variable-length integer does not fit in 64 bits.
    #[error("variable-length integer overflows 64 bits")]
    VarIntOverflow,
    /// A declared length is larger than the bytes that follow it.
    #[error("declared length {declared} exceeds the {remaining} bytes that remain")]
    LengthTooLarge {
        /// The length the input declared.
        declared: u64,
        /// The bytes actually left.
        remaining: usize,
    },
}

/// A cursor over a borrowed byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Reads an unsigned LEB128 integer (at most 10 bytes, at most 64 bits).
    pub fn read_var_u64(&mut self) -> Result<u64, Lib0Error> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = *self.buf.get(self.pos).ok_or(Lib0Error::UnexpectedEnd)?;
            self.pos += 1;
            let low = u64::from(byte & 0x7f);
            if shift == 63 && low > 1 || shift > 63 {
                return Err(Lib0Error::VarIntOverflow);
            }
            value |= low << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// Reads a length-prefixed byte array, borrowing it from the input.
    pub fn read_var_bytes(&mut self) -> Result<&'a [u8], Lib0Error> {
        let declared = self.read_var_u64()?;
        let remaining = self.remaining();
        if declared > remaining as u64 {
            return Err(Lib0Error::LengthTooLarge {
                declared,
                remaining,
            });
        }
        let start = self.pos;
        self.pos += declared as usize;
        Ok(&self.buf[start..self.pos])
    }
}

/// Appends `value` as an unsigned LEB128 integer.
pub fn write_var_u64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `bytes` prefixed with its length.
pub fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// How many bytes `value` takes as an unsigned LEB128 integer.
pub fn var_u64_len(mut value: u64) -> usize {
    let mut n = 1;
    while value >= 0x80 {
        value >>= 7;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut out = Vec::new();
        write_var_u64(&mut out, 0);
        write_var_u64(&mut out, 127);
        write_var_u64(&mut out, 128);
        write_var_u64(&mut out, 300);
        assert_eq!(out, [0x00, 0x7f, 0x80, 0x01, 0xac, 0x02]);
    }

    #[test]
    fn truncated_varint_is_an_error() {
        assert_eq!(
            Reader::new(&[0x80, 0x80]).read_var_u64(),
            Err(Lib0Error::UnexpectedEnd)
        );
    }

    #[test]
    fn overlong_varint_is_an_error() {
        let bytes = [0xff; 11];
        assert_eq!(
            Reader::new(&bytes).read_var_u64(),
            Err(Lib0Error::VarIntOverflow)
        );
    }

    #[test]
    fn hostile_length_is_refused_without_allocating() {
        // The amplification prefix from DESIGN.md: declares ~1e9 bytes, carries none.
        let err = Reader::new(&[0xfe, 0xc9, 0x9a, 0x3b]).read_var_bytes();
        assert!(matches!(err, Err(Lib0Error::LengthTooLarge { .. })));
    }

    proptest! {
        #[test]
        fn varint_round_trips(value in any::<u64>()) {
            let mut out = Vec::new();
            write_var_u64(&mut out, value);
            prop_assert_eq!(out.len(), var_u64_len(value));
            let mut reader = Reader::new(&out);
            prop_assert_eq!(reader.read_var_u64(), Ok(value));
            prop_assert_eq!(reader.remaining(), 0);
        }

        #[test]
        fn bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            write_var_bytes(&mut out, &bytes);
            let mut reader = Reader::new(&out);
            prop_assert_eq!(reader.read_var_bytes(), Ok(&bytes[..]));
        }

        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut reader = Reader::new(&bytes);
            while reader.read_var_bytes().is_ok() && reader.remaining() > 0 {}
        }
    }
}
