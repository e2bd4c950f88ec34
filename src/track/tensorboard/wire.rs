//! The protocol-buffer wire format, by hand: the few messages TensorBoard
//! reads (events, summaries, the hparams plugin's data) need only varints,
//! 32- and 64-bit fixed values and length-delimited fields.
//!
//! Every field set through [`Message`] is written, zero values included: a
//! zero inside a `oneof` (a scalar of 0.0, an hparam of 0) must be present
//! for the reader to know which member is set.

/// A message being encoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message(Vec<u8>);

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

impl Message {
    pub fn new() -> Self {
        Message(Vec::new())
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        put_varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire_type));
    }

    /// `int32`, `int64`, `uint64`, `bool` and enum fields (negative numbers
    /// as ten-byte two's complement, as protobuf does).
    #[must_use]
    pub fn varint(mut self, field: u32, value: u64) -> Self {
        self.key(field, VARINT);
        put_varint(&mut self.0, value);
        self
    }

    #[must_use]
    pub fn int64(self, field: u32, value: i64) -> Self {
        self.varint(field, value as u64)
    }

    #[must_use]
    pub fn bool(self, field: u32, value: bool) -> Self {
        self.varint(field, u64::from(value))
    }

    #[must_use]
    pub fn double(mut self, field: u32, value: f64) -> Self {
        self.key(field, FIXED64);
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    #[must_use]
    pub fn float(mut self, field: u32, value: f32) -> Self {
        self.key(field, FIXED32);
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    #[must_use]
    pub fn bytes(mut self, field: u32, value: &[u8]) -> Self {
        self.key(field, LEN);
        put_varint(&mut self.0, value.len() as u64);
        self.0.extend_from_slice(value);
        self
    }

    #[must_use]
    pub fn string(self, field: u32, value: &str) -> Self {
        self.bytes(field, value.as_bytes())
    }

    #[must_use]
    pub fn message(self, field: u32, value: &Message) -> Self {
        self.bytes(field, &value.0)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Why bytes are not a well-formed message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated protobuf message")]
    Truncated,
    #[error("varint longer than ten bytes")]
    VarintTooLong,
    #[error("unsupported wire type {0}")]
    WireType(u8),
    #[error("field {field}: expected {expected}")]
    Unexpected { field: u32, expected: &'static str },
    #[error("field {field}: not UTF-8")]
    Utf8 { field: u32 },
}

/// One decoded field's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    pub fn as_u64(self, field: u32) -> Result<u64, DecodeError> {
        match self {
            Value::Varint(v) => Ok(v),
            _ => Err(DecodeError::Unexpected {
                field,
                expected: "a varint",
            }),
        }
    }

    pub fn as_f64(self, field: u32) -> Result<f64, DecodeError> {
        match self {
            Value::Fixed64(v) => Ok(f64::from_bits(v)),
            _ => Err(DecodeError::Unexpected {
                field,
                expected: "a double",
            }),
        }
    }

    pub fn as_f32(self, field: u32) -> Result<f32, DecodeError> {
        match self {
            Value::Fixed32(v) => Ok(f32::from_bits(v)),
            _ => Err(DecodeError::Unexpected {
                field,
                expected: "a float",
            }),
        }
    }

    pub fn as_bytes(self, field: u32) -> Result<&'a [u8], DecodeError> {
        match self {
            Value::Bytes(v) => Ok(v),
            _ => Err(DecodeError::Unexpected {
                field,
                expected: "a length-delimited field",
            }),
        }
    }

    pub fn as_str(self, field: u32) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.as_bytes(field)?).map_err(|_| DecodeError::Utf8 { field })
    }
}

/// The fields of an encoded message, in order.
pub struct Fields<'a> {
    rest: &'a [u8],
}

/// Iterates over the fields of `bytes`.
pub fn fields(bytes: &[u8]) -> Fields<'_> {
    Fields { rest: bytes }
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.rest.split_first().ok_or(DecodeError::Truncated)?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintTooLong)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<(u32, Value<'a>), DecodeError> {
        let key = self.varint()?;
        let field = (key >> 3) as u32;
        let value = match (key & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            FIXED64 => {
                let b = self.take(8)?;
                Value::Fixed64(u64::from_le_bytes(b.try_into().expect("eight bytes")))
            }
            LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
                Value::Bytes(self.take(n)?)
            }
            FIXED32 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes(b.try_into().expect("four bytes")))
            }
            other => return Err(DecodeError::WireType(other)),
        };
        Ok((field, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = self.field();
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_with_zero_values_kept() {
        let inner = Message::new().string(1, "tag");
        let bytes = Message::new()
            .varint(1, 300)
            .int64(2, -1)
            .double(3, 0.0)
            .float(4, 1.5)
            .message(5, &inner)
            .bool(6, true)
            .into_bytes();
        let decoded: Vec<(u32, Value)> = fields(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(decoded.len(), 6);
        assert_eq!(decoded[0], (1, Value::Varint(300)));
        assert_eq!(decoded[1].1.as_u64(2).unwrap().cast_signed(), -1);
        assert_eq!(decoded[2].1.as_f64(3).unwrap().to_bits(), 0.0f64.to_bits());
        assert!((decoded[3].1.as_f32(4).unwrap() - 1.5).abs() < f32::EPSILON);
        let tag: Vec<_> = fields(decoded[4].1.as_bytes(5).unwrap())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tag[0].1.as_str(1).unwrap(), "tag");
        assert_eq!(decoded[5], (6, Value::Varint(1)));
    }

    #[test]
    fn a_known_encoding_and_malformed_input() {
        // From the protobuf encoding guide: field 1 = 150 is 08 96 01.
        assert_eq!(
            Message::new().varint(1, 150).into_bytes(),
            [0x08, 0x96, 0x01]
        );
        assert_eq!(
            fields(&[0x08, 0x96]).next(),
            Some(Err(DecodeError::Truncated))
        );
        assert_eq!(fields(&[0x0b]).next(), Some(Err(DecodeError::WireType(3))));
        assert_eq!(
            fields(&[0x12, 0x05, 0x01]).next(),
            Some(Err(DecodeError::Truncated))
        );
    }
}
