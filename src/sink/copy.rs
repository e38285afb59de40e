//! Postgres' binary `COPY` format, for the sink's bulk path: the engine
//! writes each batch's decisions and explanations as one binary stream per
//! table, so neither side formats or parses text (no float printing, no
//! array literals, no JSON).
//!
//! Only the types the sink writes are here. Format: PostgreSQL docs, "COPY
//! File Formats", and each type's `*_send` function for its encoding.

use chrono::{DateTime, Utc};

/// Type OIDs of array elements (pg_type).
const FLOAT4_OID: u32 = 700;
const TEXT_OID: u32 = 25;
/// 2000-01-01T00:00:00Z, Postgres' epoch, in microseconds since Unix's.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// One `COPY … FROM STDIN (FORMAT binary)` stream being written.
pub struct BinaryCopy {
    buf: Vec<u8>,
}

impl BinaryCopy {
    pub fn new(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension
        BinaryCopy { buf }
    }

    /// Start a row of `fields` values; each value follows with one call.
    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.buf.extend_from_slice(&fields.to_be_bytes());
        self
    }

    /// The stream, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }

    fn value(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf
            .extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(bytes);
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    pub fn text(&mut self, s: &str) -> &mut Self {
        self.value(s.as_bytes())
    }

    pub fn opt_text(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    pub fn bool(&mut self, b: bool) -> &mut Self {
        self.value(&[b as u8])
    }

    pub fn int4(&mut self, v: i32) -> &mut Self {
        self.value(&v.to_be_bytes())
    }

    pub fn opt_int4(&mut self, v: Option<i32>) -> &mut Self {
        match v {
            Some(v) => self.int4(v),
            None => self.null(),
        }
    }

    pub fn int8(&mut self, v: i64) -> &mut Self {
        self.value(&v.to_be_bytes())
    }

    pub fn float4(&mut self, v: f32) -> &mut Self {
        self.value(&v.to_be_bytes())
    }

    pub fn opt_float4(&mut self, v: Option<f32>) -> &mut Self {
        match v {
            Some(v) => self.float4(v),
            None => self.null(),
        }
    }

    pub fn timestamptz(&mut self, t: DateTime<Utc>) -> &mut Self {
        self.int8(t.timestamp_micros() - PG_EPOCH_US)
    }

    pub fn opt_timestamptz(&mut self, t: Option<DateTime<Utc>>) -> &mut Self {
        match t {
            Some(t) => self.timestamptz(t),
            None => self.null(),
        }
    }

    /// A `numeric` with two decimals, from integer cents.
    pub fn numeric_cents(&mut self, cents: i64) -> &mut Self {
        // Base-10000 digits, most significant first: the integer part's,
        // then one for the two decimals (".xx" is the digit xx00).
        let (mut int, frac) = (
            cents.unsigned_abs() / 100,
            (cents.unsigned_abs() % 100) as i16,
        );
        let mut digits: Vec<i16> = Vec::with_capacity(6);
        while int > 0 {
            digits.push((int % 10_000) as i16);
            int /= 10_000;
        }
        let weight = digits.len() as i16 - 1;
        digits.reverse();
        digits.push(frac * 100);
        // No leading zero digit (zero's integer part has none), no
        // trailing one; dscale keeps the two decimals either way.
        let mut weight = weight;
        while digits.first() == Some(&0) {
            digits.remove(0);
            weight -= 1;
        }
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            weight = 0;
        }
        let sign: u16 = if cents < 0 { 0x4000 } else { 0 };
        let len = 8 + 2 * digits.len();
        self.buf.extend_from_slice(&(len as i32).to_be_bytes());
        self.buf
            .extend_from_slice(&(digits.len() as i16).to_be_bytes());
        self.buf.extend_from_slice(&weight.to_be_bytes());
        self.buf.extend_from_slice(&sign.to_be_bytes());
        self.buf.extend_from_slice(&2u16.to_be_bytes()); // dscale
        for d in digits {
            self.buf.extend_from_slice(&d.to_be_bytes());
        }
        self
    }

    /// A one-dimensional `real[]`.
    pub fn float4_array(&mut self, values: &[f32]) -> &mut Self {
        self.array(FLOAT4_OID, values.len(), 8 * values.len(), |buf| {
            for v in values {
                buf.extend_from_slice(&4i32.to_be_bytes());
                buf.extend_from_slice(&v.to_be_bytes());
            }
        })
    }

    /// A one-dimensional `text[]`.
    pub fn text_array<S: AsRef<str>>(&mut self, values: &[S]) -> &mut Self {
        let bytes: usize = values.iter().map(|s| 4 + s.as_ref().len()).sum();
        self.array(TEXT_OID, values.len(), bytes, |buf| {
            for s in values {
                let s = s.as_ref().as_bytes();
                buf.extend_from_slice(&(s.len() as i32).to_be_bytes());
                buf.extend_from_slice(s);
            }
        })
    }

    /// Array header (no NULL elements, lower bound 1), then `elements`
    /// writing `len` elements in `bytes` bytes. An empty array has no
    /// dimensions.
    fn array(
        &mut self,
        oid: u32,
        len: usize,
        bytes: usize,
        elements: impl FnOnce(&mut Vec<u8>),
    ) -> &mut Self {
        let ndim = (len > 0) as i32;
        let header = 12 + 8 * ndim as usize;
        self.buf
            .extend_from_slice(&((header + bytes) as i32).to_be_bytes());
        self.buf.extend_from_slice(&ndim.to_be_bytes());
        self.buf.extend_from_slice(&0i32.to_be_bytes()); // no NULLs
        self.buf.extend_from_slice(&oid.to_be_bytes());
        if len > 0 {
            self.buf.extend_from_slice(&(len as i32).to_be_bytes());
            self.buf.extend_from_slice(&1i32.to_be_bytes());
        }
        elements(&mut self.buf);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(c: impl FnOnce(&mut BinaryCopy)) -> Vec<u8> {
        let mut b = BinaryCopy { buf: Vec::new() };
        c(&mut b);
        b.buf
    }

    #[test]
    fn numerics_are_base_10000_digits_with_two_decimals() {
        // len, ndigits, weight, sign, dscale, digits...
        let n = |c: i64| {
            field(|b| {
                b.numeric_cents(c);
            })
        };
        let be = |v: &[i16]| v.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
        assert_eq!(n(0)[4..], be(&[0, 0, 0, 2])[..]);
        // 12345678.90 = 1234 5678 . 9000
        assert_eq!(
            n(1_234_567_890)[4..],
            be(&[3, 1, 0, 2, 1234, 5678, 9000])[..]
        );
        // 0.05 = . 0500
        assert_eq!(n(5)[4..], be(&[1, -1, 0, 2, 500])[..]);
        // 10000.00 = 1 0000 .
        assert_eq!(n(1_000_000)[4..], be(&[1, 1, 0, 2, 1])[..]);
        assert_eq!(n(-250)[4..], be(&[2, 0, 0x4000, 2, 2, 5000])[..]);
    }
}
