//! A minimal little-endian binary format for the retrievers' on-disk caches.
//!
//! Why not JSON: the model index holds millions of postings; a flat binary file loads in
//! milliseconds. Every file starts with a magic string and a format version, and is written to a
//! temporary file in the target folder and renamed into place ([`crate::util::fs::write_atomic`]), so readers
//! see either the old file or the complete new one.

use anyhow::{bail, Context, Result};

#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f32(&mut self, v: f32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
    }
    pub fn u32s(&mut self, v: &[u32]) {
        self.u64(v.len() as u64);
        for x in v {
            self.u32(*x);
        }
    }
    pub fn f32s(&mut self, v: &[f32]) {
        self.u64(v.len() as u64);
        for x in v {
            self.f32(*x);
        }
    }
}

/// Reads what [`Writer`] wrote; every read is bounds-checked and names the file on failure.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'a str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'a str) -> Self {
        Reader { buf, pos: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.pos + n > self.buf.len() {
            bail!(
                "{}: truncated at byte {} (wanted {n} more bytes); delete it to rebuild",
                self.what,
                self.pos
            );
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    pub fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    pub fn str(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec())
            .with_context(|| format!("{}: a string at byte {} is not UTF-8", self.what, self.pos))
    }
    pub fn u32s(&mut self) -> Result<Vec<u32>> {
        let n = self.u64()? as usize;
        let bytes = self.take(n.checked_mul(4).context("length overflow")?)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
    pub fn f32s(&mut self) -> Result<Vec<f32>> {
        let n = self.u64()? as usize;
        let bytes = self.take(n.checked_mul(4).context("length overflow")?)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation_is_an_error() {
        let mut w = Writer::default();
        w.str("héllo");
        w.u64(7);
        w.u32s(&[1, 2, 3]);
        w.f32s(&[0.5, -1.0]);
        let mut r = Reader::new(&w.buf, "test");
        assert_eq!(r.str().unwrap(), "héllo");
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.u32s().unwrap(), [1, 2, 3]);
        assert_eq!(r.f32s().unwrap(), [0.5, -1.0]);
        assert!(r.at_end());
        let cut = &w.buf[..w.buf.len() - 3];
        let mut r = Reader::new(cut, "cut.bin");
        r.str().unwrap();
        r.u64().unwrap();
        r.u32s().unwrap();
        let err = r.f32s().unwrap_err().to_string();
        assert!(err.contains("cut.bin") && err.contains("truncated"), "{err}");
    }
}
