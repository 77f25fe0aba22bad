//! Readers that check what passes through them against a descriptor: a blob must be exactly
//! its descriptor's size and hash to its digest; a decompressed layer must stay under the
//! unpack cap and hash to its `diff_id`.

use std::io::{self, Read};

use oci_spec::image::{Digest, DigestAlgorithm};
use sha2::{Digest as _, Sha256, Sha512};

use crate::ImageError;

/// The two digest algorithms the image spec registers.
#[derive(Clone)]
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn for_digest(digest: &Digest) -> Result<Self, ImageError> {
        match digest.algorithm() {
            DigestAlgorithm::Sha256 => Ok(Hasher::Sha256(Sha256::new())),
            DigestAlgorithm::Sha512 => Ok(Hasher::Sha512(Sha512::new())),
            other => Err(ImageError::blob(digest, format!("digest algorithm {other} is not supported"))),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    fn hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Reads a blob, refusing to pass more bytes than its descriptor's size; [`finish`]
/// (after the consumer is done) reads what is left and checks the size and the digest.
///
/// [`finish`]: BlobReader::finish
pub struct BlobReader<R> {
    inner: R,
    digest: Digest,
    size: u64,
    read: u64,
    hasher: Hasher,
}

impl<R: Read> BlobReader<R> {
    pub fn new(inner: R, digest: &Digest, size: u64) -> Result<Self, ImageError> {
        Ok(BlobReader { inner, hasher: Hasher::for_digest(digest)?, digest: digest.clone(), size, read: 0 })
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Drains the rest of the blob and checks it against the descriptor.
    pub fn finish(mut self) -> Result<(), ImageError> {
        io::copy(&mut self, &mut io::sink()).map_err(|e| ImageError::blob(&self.digest, e))?;
        if self.read != self.size {
            return Err(ImageError::blob(
                &self.digest,
                format!("is {} bytes, its descriptor says {}", self.read, self.size),
            ));
        }
        let found = self.hasher.clone().hex();
        if found != self.digest.digest() {
            return Err(ImageError::blob(
                &self.digest,
                format!("content hashes to {}:{found}, not to its digest", self.digest.algorithm()),
            ));
        }
        Ok(())
    }
}

impl<R: Read> Read for BlobReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte past the size is enough to know the blob is too big.
        let room = (self.size + 1).saturating_sub(self.read);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if want == 0 {
            return Err(io::Error::other(format!("is bigger than its descriptor's size {}", self.size)));
        }
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        if self.read > self.size {
            return Err(io::Error::other(format!("is bigger than its descriptor's size {}", self.size)));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Counts and hashes a layer's uncompressed stream, failing a read once the image as a
/// whole has produced more than `budget` bytes (a decompression bomb stops there).
pub struct Uncompressed<R> {
    inner: R,
    budget: u64,
    cap: u64,
    read: u64,
    hasher: Hasher,
}

impl<R: Read> Uncompressed<R> {
    /// `budget` is what is left of the image's `cap` for this layer.
    pub fn new(inner: R, diff_id: &Digest, budget: u64, cap: u64) -> Result<Self, ImageError> {
        Ok(Uncompressed { inner, budget, cap, read: 0, hasher: Hasher::for_digest(diff_id)? })
    }

    /// Reads the stream to its end (a tar's trailing blocks count) and returns its size and
    /// hex digest.
    pub fn finish(mut self) -> io::Result<(u64, String)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.read, self.hasher.hex()))
    }
}

/// The error an [`Uncompressed`] reader gives once past its budget.
pub const OVER_BUDGET: &str = "unpacks to more than the unpacked-size cap";

impl<R: Read> Read for Uncompressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.budget {
            return Err(io::Error::other(format!("{OVER_BUDGET} ({} bytes)", self.cap)));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(bytes: &[u8]) -> Digest {
        let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}").parse().unwrap()
    }

    #[test]
    fn a_blob_must_match_size_and_digest() {
        let data = b"hello blob";
        let d = sha256(data);
        BlobReader::new(&data[..], &d, data.len() as u64).unwrap().finish().unwrap();

        let short = BlobReader::new(&data[..], &d, data.len() as u64 + 1).unwrap().finish().unwrap_err();
        assert!(short.to_string().contains("its descriptor says"), "{short}");

        let long = BlobReader::new(&data[..], &d, 4).unwrap().finish().unwrap_err();
        assert!(long.to_string().contains("bigger than its descriptor"), "{long}");

        let other = sha256(b"something else");
        let bad = BlobReader::new(&data[..], &other, data.len() as u64).unwrap().finish().unwrap_err();
        assert!(bad.to_string().contains("not to its digest"), "{bad}");
    }

    #[test]
    fn the_uncompressed_budget_stops_reading() {
        let data = vec![0u8; 10_000];
        let d = sha256(&data);
        let (n, hex) = Uncompressed::new(&data[..], &d, 10_000, 10_000).unwrap().finish().unwrap();
        assert_eq!((n, hex.as_str()), (10_000, d.digest()));
        let err = Uncompressed::new(&data[..], &d, 9_999, 9_999).unwrap().finish().unwrap_err();
        assert!(err.to_string().contains(OVER_BUDGET));
    }
}
