//! The one compression sniffer: a tar stream is recognised as gzip, bzip2, xz, zstd or plain by its first bytes, as
//! Docker's `DecompressStream` does, and decoded in process by a crate (never a child process). Layers and `ADD`
//! archives both come through here, so an archive that one of them can read the other can too.

use std::io::{self, Read};

/// The compressions a tar stream is recognised in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Plain,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// The longest magic number below.
const MAGIC_LEN: usize = 6;

impl Format {
    fn sniff(head: &[u8]) -> Format {
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            Format::Gzip
        } else if head.starts_with(b"BZh") {
            Format::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Format::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Zstd
        } else {
            Format::Plain
        }
    }
}

/// `reader` decompressed according to its first bytes (which are read here and replayed to the decoder).
pub(super) fn decompressed<'r, R: Read + 'r>(mut reader: R) -> io::Result<Box<dyn Read + 'r>> {
    let mut magic = [0u8; MAGIC_LEN];
    let n = read_up_to(&mut reader, &mut magic)?;
    let head = io::Cursor::new(magic[..n].to_vec()).chain(reader);
    Ok(match Format::sniff(&magic[..n]) {
        Format::Plain => Box::new(head),
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(head)),
        // Several concatenated streams, as `pbzip2` and `cat a.bz2 b.bz2` make them, read as one like Go's reader.
        Format::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(head)),
        Format::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(head)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::new(head)?),
    })
}

/// Whether `reader` holds a tar archive, possibly compressed, judged by content as Docker's `ADD` does: its first
/// 512 decompressed bytes must be a header block with a valid checksum. A stream that fails to decompress is not an
/// archive (Docker copies such a file as it is).
pub fn is_tar_archive<R: Read>(reader: R) -> bool {
    let Ok(mut stream) = decompressed(reader) else { return false };
    let mut block = [0u8; 512];
    matches!(read_up_to(&mut stream, &mut block), Ok(512)) && is_tar_header(&block)
}

/// A 512-byte block is a tar header when its checksum field matches the sum of its bytes (with the field itself
/// counted as spaces); historic tars summed signed bytes, so both sums are accepted.
fn is_tar_header(block: &[u8; 512]) -> bool {
    let field = &block[148..156];
    let digits: Vec<u8> =
        field.iter().copied().skip_while(|&b| b == b' ').take_while(|b| (b'0'..=b'7').contains(b)).collect();
    if digits.is_empty() {
        return false;
    }
    let Ok(want) = u64::from_str_radix(&String::from_utf8_lossy(&digits), 8) else { return false };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    want == unsigned || i64::try_from(want).is_ok_and(|w| w == signed)
}

/// Fills as much of `buf` as the stream has; fewer bytes only at end of stream.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "f", &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn compressed(format: Format, data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match format {
            Format::Plain => data.to_vec(),
            Format::Gzip => {
                let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
            Format::Bzip2 => {
                let mut w = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
            Format::Xz => {
                let mut w = liblzma::write::XzEncoder::new(Vec::new(), 6);
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
            Format::Zstd => zstd::encode_all(data, 3).unwrap(),
        }
    }

    #[test]
    fn every_format_is_sniffed_and_decoded() {
        let tar = sample_tar();
        for format in [Format::Plain, Format::Gzip, Format::Bzip2, Format::Xz, Format::Zstd] {
            let blob = compressed(format, &tar);
            assert_eq!(Format::sniff(&blob[..MAGIC_LEN]), format);
            let mut out = Vec::new();
            decompressed(&blob[..]).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, tar, "{format:?}");
            assert!(is_tar_archive(&blob[..]), "{format:?}");
        }
    }

    #[test]
    fn only_a_checksummed_header_is_an_archive() {
        let tar = sample_tar();
        let block: [u8; 512] = tar[..512].try_into().unwrap();
        assert!(is_tar_header(&block));
        let mut bad = block;
        bad[0] ^= 1;
        assert!(!is_tar_header(&bad));
        assert!(!is_tar_header(&[0u8; 512]));
        assert!(!is_tar_archive(&b"not really a tar"[..]));
        // gzip magic with a broken stream behind it: not an archive, not an error.
        assert!(!is_tar_archive(&[0x1f, 0x8b, 0x08, 0, 0, 0, 1, 2, 3][..]));
        assert!(!is_tar_archive(&compressed(Format::Gzip, b"plain text")[..]));
    }
}
