//! The protobuf wire format, as much of it as reading and lightly editing an ONNX file needs: fields are read in
//! place (no copies of weight bytes), and a message is rewritten by copying the fields it keeps verbatim.

use std::ops::Range;

/// A malformed protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf at byte {at}: {reason}")]
pub struct ProtoError {
    /// Offset of the problem within the buffer read.
    pub at: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// The value of one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2: a string, bytes, an embedded message or a packed repeated field.
    Bytes(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

/// One field of a message, with where it lies in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    /// The field number.
    pub number: u32,
    /// Its value.
    pub value: Value<'a>,
    /// The whole field, tag included, relative to the buffer the reader started on.
    pub span: Range<usize>,
    /// Where a [`Value::Bytes`] payload starts, relative to the same buffer.
    pub payload_start: usize,
}

impl<'a> Field<'a> {
    /// The payload of a length-delimited field.
    pub fn bytes(&self) -> Result<&'a [u8], ProtoError> {
        match self.value {
            Value::Bytes(b) => Ok(b),
            _ => Err(ProtoError {
                at: self.span.start,
                reason: "expected a length-delimited field",
            }),
        }
    }

    /// A length-delimited field as UTF-8 text.
    pub fn string(&self) -> Result<&'a str, ProtoError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| ProtoError {
            at: self.span.start,
            reason: "string field is not UTF-8",
        })
    }

    /// A varint field.
    pub fn varint(&self) -> Result<u64, ProtoError> {
        match self.value {
            Value::Varint(v) => Ok(v),
            _ => Err(ProtoError {
                at: self.span.start,
                reason: "expected a varint field",
            }),
        }
    }

    /// Integers of a repeated int field, packed (one length-delimited run) or not (one varint).
    pub fn ints(&self) -> Result<Vec<i64>, ProtoError> {
        match self.value {
            Value::Varint(v) => Ok(vec![v as i64]),
            Value::Bytes(b) => {
                let mut out = Vec::new();
                let mut at = 0;
                while at < b.len() {
                    let (v, used) = varint(b, at)?;
                    out.push(v as i64);
                    at += used;
                }
                Ok(out)
            }
            _ => Err(ProtoError {
                at: self.span.start,
                reason: "expected integers",
            }),
        }
    }
}

/// Reads a varint at `at`; returns it and the bytes it took.
pub fn varint(buf: &[u8], at: usize) -> Result<(u64, usize), ProtoError> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some(&byte) = buf.get(at + i) else {
            return Err(ProtoError {
                at,
                reason: "truncated varint",
            });
        };
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(ProtoError {
        at,
        reason: "varint longer than 10 bytes",
    })
}

/// Iterates over the fields of a message held in `buf`; `base` is added to every offset reported.
pub struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
    base: usize,
    failed: bool,
}

/// The fields of the message in `buf`, offsets relative to `buf` plus `base`.
pub fn fields(buf: &[u8], base: usize) -> Fields<'_> {
    Fields {
        buf,
        at: 0,
        base,
        failed: false,
    }
}

impl<'a> Fields<'a> {
    fn next_field(&mut self) -> Result<Field<'a>, ProtoError> {
        let start = self.at;
        let err = |reason| ProtoError {
            at: self.base + start,
            reason,
        };
        let (tag, used) = varint(self.buf, start).map_err(|e| ProtoError {
            at: self.base + e.at,
            ..e
        })?;
        let number = u32::try_from(tag >> 3).map_err(|_| err("field number too large"))?;
        if number == 0 {
            return Err(err("field number 0"));
        }
        let mut at = start + used;
        let fixed = |at: usize, n: usize| -> Result<&'a [u8], ProtoError> {
            self.buf.get(at..at + n).ok_or(ProtoError {
                at: self.base + at,
                reason: "truncated fixed-width field",
            })
        };
        let mut payload_start = at;
        let value = match tag & 7 {
            0 => {
                let (v, used) = varint(self.buf, at).map_err(|e| ProtoError {
                    at: self.base + e.at,
                    ..e
                })?;
                at += used;
                Value::Varint(v)
            }
            1 => {
                let b = fixed(at, 8)?;
                at += 8;
                Value::Fixed64(u64::from_le_bytes(
                    b.try_into().map_err(|_| err("fixed64"))?,
                ))
            }
            2 => {
                let (len, used) = varint(self.buf, at).map_err(|e| ProtoError {
                    at: self.base + e.at,
                    ..e
                })?;
                at += used;
                let len = usize::try_from(len).map_err(|_| err("length too large"))?;
                let end = at
                    .checked_add(len)
                    .filter(|&end| end <= self.buf.len())
                    .ok_or_else(|| err("length-delimited field runs past the end"))?;
                payload_start = at;
                let bytes = &self.buf[at..end];
                at = end;
                Value::Bytes(bytes)
            }
            5 => {
                let b = fixed(at, 4)?;
                at += 4;
                Value::Fixed32(u32::from_le_bytes(
                    b.try_into().map_err(|_| err("fixed32"))?,
                ))
            }
            _ => return Err(err("unsupported wire type (groups are not used by ONNX)")),
        };
        self.at = at;
        Ok(Field {
            number,
            value,
            span: self.base + start..self.base + at,
            payload_start: self.base + payload_start,
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.buf.len() {
            return None;
        }
        let field = self.next_field();
        self.failed = field.is_err();
        Some(field)
    }
}

/// Appends a varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-delimited field.
pub fn put_bytes(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_varint(out, (u64::from(number) << 3) | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes() {
        let mut msg = Vec::new();
        put_bytes(&mut msg, 3, b"name");
        put_varint(&mut msg, 2 << 3); // field 2, varint
        put_varint(&mut msg, 300);
        put_bytes(&mut msg, 1, &[1, 2, 0x80, 0x01]);
        let got: Vec<Field> = fields(&msg, 10).collect::<Result<_, _>>().expect("fields");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].number, 3);
        assert_eq!(got[0].string().expect("string"), "name");
        assert_eq!(got[0].span, 10..16);
        assert_eq!(got[0].payload_start, 12);
        assert_eq!(got[1].varint().expect("varint"), 300);
        assert_eq!(got[2].ints().expect("packed"), vec![1, 2, 128]);
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for bad in [
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f][..], // length far past the end
            &[0x0a, 0x05, 1, 2],                       // truncated payload
            &[0x08],                                   // varint missing
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ], // 11-byte varint
            &[0x0b],                                   // group start
            &[0x00, 0x01],                             // field 0
            &[0x09, 1, 2, 3],                          // truncated fixed64
            &[
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ], // length overflows
        ] {
            let result: Result<Vec<Field>, _> = fields(bad, 0).collect();
            assert!(result.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_message_has_no_fields() {
        assert_eq!(fields(&[], 0).count(), 0);
    }
}
