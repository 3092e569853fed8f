//! Layer blobs come gzip'd, zstd'd or plain, whatever their media type says.

use std::io::{BufRead, Read};

/// The tar stream inside a layer blob: gzip (possibly multi-member), zstd, or plain,
/// told apart by their magic numbers (RFC 1952; RFC 8878), so a mislabelled media
/// type does no harm.
pub fn decompressed<'a, R: BufRead + 'a>(mut r: R) -> std::io::Result<Box<dyn Read + 'a>> {
    // The magic is read whole first: a stream (a spool still being downloaded) may
    // hand over its first bytes one short read at a time.
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let magic = &head[..n];
    let r = std::io::Cursor::new(magic.to_vec()).chain(r);
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out one byte per read, as a growing spool may.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(out)) => {
                    *out = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn compression_is_told_apart_even_from_a_trickle() {
        let plain = b"not compressed at all".to_vec();
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        for data in [&zst, &plain] {
            let reader = std::io::BufReader::with_capacity(1, Trickle(data));
            let mut out = Vec::new();
            decompressed(reader).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, plain);
        }
    }
}
