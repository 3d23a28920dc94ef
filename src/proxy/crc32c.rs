//! CRC-32C (Castagnoli), the checksum of a PROXY version 2 header's `PP2_TYPE_CRC32C` TLV: the
//! reflected polynomial 0x82F63B78, initial value and final XOR all ones (RFC 4960, appendix B).
//! A table of 256 entries built at compile time; a header is a few dozen bytes, so a byte at a
//! time is all the speed it needs.

/// The reflected Castagnoli polynomial.
const POLYNOMIAL: u32 = 0x82F6_3B78;

/// The CRC of each byte value on its own, without the initial value and final XOR.
const TABLE: [u32; 256] = table();

const fn table() -> [u32; 256] {
    let mut table = [0; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLYNOMIAL
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
}

/// A CRC-32C being computed, over bytes given in pieces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Crc32c(u32);

impl Crc32c {
    pub(crate) fn new() -> Self {
        Crc32c(!0)
    }

    /// Adds `bytes` to what the checksum covers.
    pub(crate) fn update(self, bytes: &[u8]) -> Self {
        Crc32c(bytes.iter().fold(self.0, |crc, &byte| {
            TABLE[usize::from(crc as u8 ^ byte)] ^ (crc >> 8)
        }))
    }

    pub(crate) fn finish(self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Crc32c;

    fn crc32c(bytes: &[u8]) -> u32 {
        Crc32c::new().update(bytes).finish()
    }

    #[test]
    fn known_vectors() {
        // The check value of the CRC catalogues.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // RFC 3720 (iSCSI), appendix B.4.
        assert_eq!(crc32c(&[0; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFF; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        let descending: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&descending), 0x113F_DB5C);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn pieces_add_up_to_the_whole() {
        let whole = b"The quick brown fox jumps over the lazy dog";
        for split in 0..=whole.len() {
            let (first, second) = whole.split_at(split);
            assert_eq!(
                Crc32c::new().update(first).update(second).finish(),
                crc32c(whole)
            );
        }
    }
}
