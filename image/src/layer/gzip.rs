//! Parallel gzip for layer blobs.
//!
//! A push or export compresses every layer it has not compressed before, and single-threaded deflate at level 6
//! runs at ~50 MB/s, well below what a local disk or network delivers. So the tar stream is cut into fixed-size
//! blocks that `gzp` deflates on all cores (the way `pigz` does) and joins into one gzip member, which every gzip
//! reader accepts. Each block is deflated with the 32 KiB before it as its dictionary, so matches reach across
//! block boundaries and the size is that of plain gzip within a fraction of a percent.
//!
//! Blocks that deflate cannot shrink (already-compressed files, random data) are written as stored blocks without
//! running the match search: near-uniform byte frequencies and repeats within deflate's window covering under 1%
//! of the block mean deflate would save under ~1.5% there, at ~50 MB/s per core. Go's `klauspost/compress`, which
//! `buildah` pushes with, also emits stored blocks for such data, which is most of why it was 3x faster here.
//!
//! The bytes must not depend on the machine, or two builds with the same `SOURCE_DATE_EPOCH` would give different
//! digests on different hosts. They do not: a block boundary falls every [`BLOCK`] bytes of input, whatever the
//! write calls or the thread count were (`flush` is not passed on, because `gzp` would cut a short block there);
//! each block is deflated from a reset compressor with a dictionary that is a function of the input; and the
//! stored-or-deflated choice is made in integer arithmetic on the block's bytes alone.
//!
//! Memory stays bounded: `gzp`'s queues hold at most a few blocks per thread, so even at [`MAX_THREADS`] it is a
//! few tens of MB, and the output streams to the caller's writer as the blocks complete, in order.

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};
use gzp::check::{Check, Crc32};
use gzp::par::compress::{ParCompress, ParCompressBuilder};
use gzp::{FormatSpec, GzpError, ZWriter};
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::thread::Scope;

/// Input bytes per block handed to a thread: `gzp`'s (and `pigz`'s) default.
pub(super) const BLOCK: usize = gzp::BUFSIZE;
/// Upper bound on compression threads, which bounds the blocks in flight (and so memory) on big machines.
const MAX_THREADS: usize = 16;
/// Deflate's window: how far back a match may reach, and the dictionary each block gets.
const WINDOW: usize = 32 * 1024;
/// Blocks shorter than this are always deflated; the stored-block test needs enough bytes to mean anything.
const MIN_STORED_TEST: usize = 4096;

/// A gzip writer that deflates blocks on worker threads scoped to `'scope` and writes the gzip stream to `W`.
pub(super) struct ParGzip<'scope, W: Write + Send + 'scope> {
    inner: Option<ParCompress<'scope, LayerGzip, W>>,
}

impl<'scope, W: Write + Send + 'scope> ParGzip<'scope, W> {
    /// Starts the compression threads in `scope`; `level` must be 0..=9.
    pub(super) fn new<'env>(out: W, level: u32, scope: &'scope Scope<'scope, 'env>) -> io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get).min(MAX_THREADS);
        Self::with_threads(out, level, threads, scope)
    }

    fn with_threads<'env>(out: W, level: u32, threads: usize, scope: &'scope Scope<'scope, 'env>) -> io::Result<Self> {
        let inner = ParCompressBuilder::<LayerGzip>::new()
            .num_threads(threads)
            .and_then(|b| b.buffer_size(BLOCK))
            .map_err(gzp_error)?
            .compression_level(Compression::new(level))
            .from_borrowed_writer(out, scope);
        Ok(ParGzip { inner: Some(inner) })
    }

    /// Compresses what is buffered, writes the gzip trailer, waits for the threads and returns the writer.
    pub(super) fn finish(mut self) -> io::Result<W> {
        match self.inner.take() {
            Some(mut inner) => inner.finish().map_err(gzp_error),
            None => Err(io::Error::other("the gzip stream failed earlier")),
        }
    }
}

impl<'scope, W: Write + Send + 'scope> Write for ParGzip<'scope, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let inner = self.inner.as_mut().ok_or_else(|| io::Error::other("the gzip stream is finished or failed"))?;
        let written = inner.write(buf);
        if written.is_err() {
            // `gzp` has shut its threads down to report the error; finishing it now would panic.
            self.inner = None;
        }
        written
    }

    /// Does nothing: a flush would end a block early and make the output depend on where callers flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'scope, W: Write + Send + 'scope> Drop for ParGzip<'scope, W> {
    /// Dropped without `finish` (the tar walk failed): stop the threads and drop the half-written stream. `gzp`'s
    /// own drop would panic if the output writer had failed too.
    fn drop(&mut self) {
        if let Some(mut inner) = self.inner.take() {
            let _ = inner.finish();
        }
    }
}

fn gzp_error(e: GzpError) -> io::Error {
    match e {
        GzpError::Io(e) => e,
        other => io::Error::other(other),
    }
}

/// The gzip format as `gzp` drives it, with a dictionary per block and stored blocks for incompressible data.
#[derive(Debug, Clone, Copy)]
pub(super) struct LayerGzip;

/// One compression thread's deflate state: reset before every block.
pub(super) struct Deflater {
    deflate: Compress,
}

impl FormatSpec for LayerGzip {
    type C = Crc32;
    type Compressor = Deflater;

    const DEFAULT_BUFSIZE: usize = BLOCK;

    fn new() -> Self {
        LayerGzip
    }

    fn needs_dict(&self) -> bool {
        true
    }

    fn create_compressor(&self, level: Compression) -> Result<Deflater, GzpError> {
        Ok(Deflater { deflate: Compress::new(level, false) })
    }

    fn encode(
        &self,
        input: &[u8],
        d: &mut Deflater,
        level: Compression,
        dict: Option<&Bytes>,
        is_last: bool,
    ) -> Result<Vec<u8>, GzpError> {
        let flush = if is_last { FlushCompress::Finish } else { FlushCompress::Sync };
        let stored = level.level() == 0 || incompressible(input);
        // Every block ends byte-aligned (sync flush), so a stored one can sit between deflated ones, and the
        // block after it still gets the stored bytes as its dictionary.
        let out = if stored {
            let mut raw = Compress::new(Compression::none(), false);
            deflate_all(&mut raw, input, flush)?
        } else {
            if let Some(dict) = dict {
                d.deflate.set_dictionary(dict)?;
            }
            let out = deflate_all(&mut d.deflate, input, flush);
            d.deflate.reset();
            out?
        };
        Ok(out)
    }

    fn header(&self, level: Compression) -> Vec<u8> {
        // RFC 1952: magic, deflate, no flags, no mtime, XFL (2 = best, 4 = fastest), OS unknown.
        let xfl = match level.level() {
            9 => 2,
            1 => 4,
            _ => 0,
        };
        vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]
    }

    fn footer(&self, check: &Crc32) -> Vec<u8> {
        // CRC-32 and the input length modulo 2³², little-endian.
        [check.sum().to_le_bytes(), check.amount().to_le_bytes()].concat()
    }
}

/// Deflates all of `input` with `flush` into a fresh buffer, growing it until the stream has taken everything.
fn deflate_all(c: &mut Compress, input: &[u8], flush: FlushCompress) -> Result<Vec<u8>, GzpError> {
    // Stored blocks add 5 bytes per 64 KiB; the sync marker and final block a few more.
    let mut out = Vec::with_capacity(input.len() + input.len() / 1024 + 64);
    let start = c.total_in();
    loop {
        let consumed = usize::try_from(c.total_in() - start).unwrap_or(input.len());
        let status = c.compress_vec(&input[consumed..], &mut out, flush)?;
        let consumed = usize::try_from(c.total_in() - start).unwrap_or(input.len());
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            _ => consumed == input.len() && out.len() < out.capacity(),
        };
        if done {
            return Ok(out);
        }
        out.reserve(out.capacity() / 4 + 4096);
    }
}

/// Whether deflate would save next to nothing on `block`: byte frequencies near uniform (chi-square against the
/// uniform distribution at most n/16, where Huffman coding gains under ~0.6%) and repeats within deflate's window
/// covering under 1% of it. Integer arithmetic only, so every machine decides alike.
fn incompressible(block: &[u8]) -> bool {
    block.len() >= MIN_STORED_TEST && flat_histogram(block) && !has_repeats(block, block.len() / 100)
}

fn flat_histogram(block: &[u8]) -> bool {
    // Four tables, so that consecutive equal bytes do not wait on each other's increments.
    let mut counts = [[0u32; 256]; 4];
    let mut quads = block.chunks_exact(4);
    for q in &mut quads {
        counts[0][usize::from(q[0])] += 1;
        counts[1][usize::from(q[1])] += 1;
        counts[2][usize::from(q[2])] += 1;
        counts[3][usize::from(q[3])] += 1;
    }
    for &b in quads.remainder() {
        counts[0][usize::from(b)] += 1;
    }
    let n = block.len() as u128;
    let squares: u128 =
        (0..256).map(|b| u128::from(counts[0][b] + counts[1][b] + counts[2][b] + counts[3][b])).map(|c| c * c).sum();
    // chi² = (256·Σc² − n²) / n ≤ n/16  ⇔  16·(256·Σc² − n²) ≤ n².
    16 * (256 * squares).saturating_sub(n * n) <= n * n
}

/// Whether matches within the window cover more than `allowed` bytes of `block`. Only anchors are looked up: the
/// positions whose 8-byte word hashes to a value with its top 4 bits clear, one in 16 on average. Anchors depend on
/// content, not on position, so a copy has its anchors where the original has them, and any repeat longer than a
/// few dozen bytes is found from its first anchor and measured by comparing forward.
fn has_repeats(block: &[u8], allowed: usize) -> bool {
    const SLOT_BITS: u32 = 12;
    let mut last_seen = vec![0u32; 1 << SLOT_BITS];
    let mut repeated = 0;
    let mut i = 0;
    // Anchors are found eight positions at a time into a bit mask, without a branch per position.
    while i + 16 <= block.len() {
        let mut anchors = 0u32;
        for k in 0..8 {
            anchors |= u32::from(anchor_hash(&block[i + k..]).is_some()) << k;
        }
        let mut next = i + 8;
        while anchors != 0 {
            let at = i + anchors.trailing_zeros() as usize;
            anchors &= anchors - 1;
            let Some(hash) = anchor_hash(&block[at..]) else { continue };
            let slot = (hash >> (64 - ANCHOR_BITS - SLOT_BITS)) as usize & ((1 << SLOT_BITS) - 1);
            // Positions are stored plus one, so 0 means empty; blocks are far smaller than u32::MAX.
            let previous = last_seen[slot] as usize;
            last_seen[slot] = u32::try_from(at + 1).unwrap_or(0);
            if let Some(p) = previous.checked_sub(1)
                && at - p <= WINDOW
                && block[p..p + 8] == block[at..at + 8]
            {
                let len = 8 + block[at + 8..].iter().zip(&block[p + 8..]).take_while(|(x, y)| x == y).count();
                repeated += len;
                if repeated > allowed {
                    return true;
                }
                next = at + len;
                break;
            }
        }
        i = next;
    }
    false
}

/// One position in 2^ANCHOR_BITS is an anchor, chosen by the 8 bytes starting there.
const ANCHOR_BITS: u32 = 4;

/// The hash of the 8 bytes at the start of `from` if that position is an anchor.
fn anchor_hash(from: &[u8]) -> Option<u64> {
    let &[a, b, c, d, e, f, g, h, ..] = from else { return None };
    let hash = u64::from_le_bytes([a, b, c, d, e, f, g, h]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (hash >> (64 - ANCHOR_BITS) == 0).then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Compression, LayerOptions, write_compressed_layer};
    use std::io::Read;
    use std::process::{Command, Stdio};

    /// Input spanning several blocks, with an incompressible part and a compressible part, and a ragged end.
    fn sample() -> Vec<u8> {
        let mut data = Vec::with_capacity(5 * BLOCK + 1234);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while data.len() < 2 * BLOCK + 77 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        let mut n = 0u32;
        while data.len() < 5 * BLOCK + 1234 {
            data.extend_from_slice(format!("line {n} of a fairly repetitive text file\n").as_bytes());
            n += 1;
        }
        data
    }

    /// Compresses `data` with `threads` threads, writing it in pieces of `piece` bytes and flushing after each.
    fn compress(data: &[u8], level: u32, threads: usize, piece: usize) -> Vec<u8> {
        std::thread::scope(|scope| {
            let mut gz = ParGzip::with_threads(Vec::new(), level, threads, scope).unwrap();
            for chunk in data.chunks(piece) {
                gz.write_all(chunk).unwrap();
                gz.flush().unwrap();
            }
            gz.finish().unwrap()
        })
    }

    #[test]
    fn output_is_one_gzip_member_that_round_trips() {
        let data = sample();
        let gz = compress(&data, 6, 3, 100_000);
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        assert!(gz.len() < data.len(), "the text part must compress");
        // A single-member decoder stops at the end of the first member: it must see all the data.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut out).unwrap();
        assert!(out == data, "decoded {} bytes of {}", out.len(), data.len());
        // The trailer's ISIZE is the input length.
        let isize = u32::from_le_bytes(gz[gz.len() - 4..].try_into().unwrap());
        assert_eq!(isize as usize, data.len());
    }

    #[test]
    fn gzip_tool_accepts_the_output() {
        let data = sample();
        let gz = compress(&data, 6, 2, BLOCK);
        let mut child = Command::new("gzip")
            .arg("-dc")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("gzip (an essential Debian package) must be installed");
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || stdin.write_all(&gz));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(out.status.success(), "gzip -dc: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == data);
    }

    #[test]
    fn bytes_do_not_depend_on_threads_write_sizes_or_flushes() {
        let data = sample();
        let reference = compress(&data, 6, 1, data.len());
        for (threads, piece) in [(2, 7), (3, 4096), (4, BLOCK), (8, BLOCK + 1), (2, 3 * BLOCK - 5)] {
            assert!(compress(&data, 6, threads, piece) == reference, "threads {threads}, writes of {piece}");
        }
        assert!(compress(&data, 1, 2, 4096) != reference, "the level must matter");
        let stored = compress(&data, 0, 2, 4096);
        assert!(stored.len() > data.len(), "level 0 stores");
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(stored.as_slice()).read_to_end(&mut out).unwrap();
        assert!(out == data);
    }

    fn xorshift(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn only_blocks_deflate_cannot_shrink_are_stored() {
        let random = xorshift(BLOCK, 1);
        assert!(incompressible(&random));
        assert!(!incompressible(&sample()[2 * BLOCK..3 * BLOCK]), "text");
        // Uniform bytes, but a 4 KiB piece repeated: deflate halves it, so it must be deflated.
        let piece = xorshift(4096, 2);
        let repeats = piece.repeat(BLOCK / 4096);
        assert!(!incompressible(&repeats));
        // A 2 KiB stretch (1.5% of the block) copied from 20 KB earlier, wherever it falls, is found by the
        // sparse scan even deep into a run of misses.
        for (from, to) in [(40_000, 60_000), (1_000, 30_000), (90_001, 110_017), (100_000, 129_000)] {
            let mut copied = random.clone();
            copied.copy_within(from..from + 2048, to.min(BLOCK - 2048));
            assert!(!incompressible(&copied), "copy of {from} at {to}");
        }
        // The same repeated 64 KiB apart is out of deflate's reach: stored.
        assert!(incompressible(&xorshift(BLOCK / 2, 2).repeat(2)));
        // No repeats, but only 16 distinct byte values: Huffman coding halves it.
        let nibbles: Vec<u8> = random.iter().map(|b| b & 0x0f).collect();
        assert!(!incompressible(&nibbles));
        assert!(!incompressible(&random[..MIN_STORED_TEST - 1]), "too short to judge");

        // Random data comes out stored: a few bytes of framing per 64 KiB, and it still round-trips.
        let data = xorshift(3 * BLOCK + 100, 3);
        let gz = compress(&data, 9, 2, BLOCK);
        assert!(gz.len() > data.len() && gz.len() < data.len() + data.len() / 1000 + 64, "{}", gz.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut out).unwrap();
        assert!(out == data);
    }

    #[test]
    fn dictionaries_keep_the_size_of_single_stream_gzip() {
        let data: Vec<u8> = sample()[2 * BLOCK..].to_vec();
        let parallel = compress(&data, 6, 2, BLOCK).len();
        let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap().len();
        // Without dictionaries every block would restart from an empty window.
        assert!(parallel * 1000 <= single * 1005, "parallel {parallel} vs single-stream {single}");
    }

    /// A writer that fails after `budget` bytes.
    struct Failing {
        budget: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.len() > self.budget {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            self.budget -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_output_is_an_error_not_a_panic() {
        let data = sample();
        let err = std::thread::scope(|scope| {
            let mut gz = ParGzip::with_threads(Failing { budget: 1000 }, 6, 2, scope).unwrap();
            // Writes may or may not see the failure yet, depending on timing; finish must report it.
            let written = data.chunks(BLOCK / 2).try_for_each(|c| gz.write_all(c));
            match written {
                Ok(()) => gz.finish().map(drop).unwrap_err(),
                Err(e) => e,
            }
        });
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
        // Dropped unfinished with a failed output: no panic, threads stopped.
        std::thread::scope(|scope| {
            let mut gz = ParGzip::with_threads(Failing { budget: 0 }, 6, 2, scope).unwrap();
            let _ = gz.write_all(&data[..BLOCK + 10]);
        });
    }

    #[test]
    fn layers_are_identical_across_runs_and_read_back() {
        let dir = tempfile::TempDir::new().unwrap();
        let data = sample();
        for (name, len) in [("a", data.len()), ("b/c", 10), ("b/d", 3 * BLOCK)] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &data[..len]).unwrap();
        }
        let opts = LayerOptions { clamp_mtime: Some(1_700_000_000) };
        let gzip = Compression::Gzip { level: 6 };
        let mut first = Vec::new();
        let d1 = write_compressed_layer(dir.path(), &mut first, gzip, &opts).unwrap();
        let mut second = Vec::new();
        let d2 = write_compressed_layer(dir.path(), &mut second, gzip, &opts).unwrap();
        assert_eq!(d1, d2);
        assert!(first == second);
        let mut plain = Vec::new();
        let n = write_compressed_layer(dir.path(), &mut plain, Compression::None, &opts).unwrap();
        assert_eq!((d1.diff_id, d1.diff_size), (n.digest, n.size));
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(first.as_slice()).read_to_end(&mut unzipped).unwrap();
        assert!(unzipped == plain);
    }
}
