//! Frames on a QUIC stream: versioned messages (bincode 2 over serde) and bulk blocks
//! (optionally zstd-compressed).
//!
//! ```text
//! message frame: u32 length (big endian, of what follows) | u16 wire version | bincode bytes
//! bulk block:    u8 kind (0 raw, 1 zstd, 2 end) | u32 raw length | u32 payload length | payload
//! placed piece:  u8 kind (0 raw, 1 zstd, 2 end) | u32 file | u64 offset | u32 raw length |
//!                u32 payload length | payload
//! ```
//!
//! A placed piece says where its data goes (a file of the sender's listing, a byte offset), so
//! pieces can be produced, sent and written in any order and by several workers.
//!
//! A frame of another wire version is refused, not guessed at. Lengths are bounded so a peer
//! cannot decide what we allocate: a frame's length is checked against the limit of what the
//! reader expects ([`MAX_FRAME`] at most, a few KiB for handshakes and stream opens) before
//! anything is allocated, and its buffer grows only as bytes arrive; bincode decodes under a
//! limit; a bulk transfer is refused past the total the receiver expects, and a block past
//! [`MAX_BLOCK`]. A zstd block is sent only when it is smaller than the raw one, so
//! incompressible data costs one compression attempt and no bytes (and a zstd payload larger
//! than its raw length is refused).

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::TransportError;

/// Version of the frame format and of the messages; both ends must agree. 3: migration
/// specs and reports travel as typed values (were JSON strings), a migration's mode is an
/// optional `SwitchMode`, and the hand-off may answer an abandon with `Started`. 4: a target
/// answers only its source (`NotHeld`). 5: a service spec carries its `user`, `group`,
/// `capabilities`, `umask` and `allow_setuid`. 6: and its `ha` class; Raft and coordinator
/// messages travel on the `"raft"` and `"coord"` services. 7: a migration's report carries its
/// downtime target, prediction and the service's own stop and start, and the hand-off's
/// `Started` the service's start. 8: the hand-off's `Forget` carries the move's mode and
/// downtime (the target's switch latency).
pub const WIRE_VERSION: u16 = 8;
/// Largest message frame.
pub const MAX_FRAME: usize = 16 << 20;
/// Largest frame of a connection's handshake (node names and a refusal's reason), read before
/// the peer is known.
pub(crate) const MAX_HANDSHAKE_FRAME: usize = 4 << 10;
/// Largest frame that opens a stream (a service name) or answers the open.
pub(crate) const MAX_OPEN_FRAME: usize = 1 << 10;
/// Bytes of a frame's buffer allocated before its bytes arrive: a peer that claims a large
/// frame and sends little costs no more than this.
const FRAME_PREALLOC: usize = 64 << 10;
/// Largest bulk block (raw or compressed).
pub const MAX_BLOCK: usize = 4 << 20;

const BLOCK_RAW: u8 = 0;
const BLOCK_ZSTD: u8 = 1;
const BLOCK_END: u8 = 2;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Decoding under a limit: bincode refuses a claimed length (of a string, a sequence) that
/// exceeds what is left of it, before allocating, so what a frame decodes to stays within a
/// small multiple of its size.
fn decode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME>,
> {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Writes one message frame.
pub async fn write_msg<T: Serialize, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &T,
) -> Result<(), TransportError> {
    let body = bincode::serde::encode_to_vec(msg, config())
        .map_err(|e| TransportError::Frame(e.to_string()))?;
    if body.len() + 2 > MAX_FRAME {
        return Err(TransportError::Frame(format!(
            "message of {} bytes is over the {MAX_FRAME} byte limit",
            body.len()
        )));
    }
    let mut frame = Vec::with_capacity(6 + body.len());
    frame.extend_from_slice(&((body.len() + 2) as u32).to_be_bytes());
    frame.extend_from_slice(&WIRE_VERSION.to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)
        .await
        .map_err(TransportError::connection)
}

/// Reads one message frame of at most [`MAX_FRAME`] bytes; `Ok(None)` at a clean end of
/// stream before a frame starts.
pub async fn read_msg<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<T>, TransportError> {
    read_msg_limited(r, MAX_FRAME).await
}

/// Reads one message frame of at most `max` bytes (and never more than [`MAX_FRAME`]); `Ok(None)`
/// at a clean end of stream before a frame starts. A longer frame is refused from its length
/// alone, before anything is allocated, and the buffer grows only as the frame's bytes arrive.
pub async fn read_msg_limited<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<T>, TransportError> {
    let max = max.min(MAX_FRAME);
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(TransportError::connection(e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len < 2 {
        return Err(TransportError::Frame(format!(
            "frame length {len} is shorter than its version"
        )));
    }
    if len > max {
        return Err(TransportError::Frame(format!(
            "frame of {len} bytes is over the {max} byte limit of this exchange"
        )));
    }
    let mut buf = Vec::with_capacity(len.min(FRAME_PREALLOC));
    let got = (&mut *r)
        .take(len as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(TransportError::connection)?;
    if got != len {
        return Err(TransportError::Connection(format!(
            "stream ended {got} bytes into a frame of {len}"
        )));
    }
    decode_frame_body(&buf).map(Some)
}

/// Decodes what follows a frame's length: the wire version, then exactly one message.
fn decode_frame_body<T: DeserializeOwned>(buf: &[u8]) -> Result<T, TransportError> {
    let [v0, v1, body @ ..] = buf else {
        return Err(TransportError::Frame(
            "frame shorter than its version".into(),
        ));
    };
    let version = u16::from_be_bytes([*v0, *v1]);
    if version != WIRE_VERSION {
        return Err(TransportError::Refused(format!(
            "wire version {version}, this agent speaks {WIRE_VERSION}"
        )));
    }
    let (msg, used) = bincode::serde::decode_from_slice(body, decode_config())
        .map_err(|e| TransportError::Frame(e.to_string()))?;
    if used != body.len() {
        return Err(TransportError::Frame(format!(
            "{} trailing bytes after the message",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// What a bulk transfer sent or received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BulkStats {
    /// Bytes of data.
    pub raw_bytes: u64,
    /// Bytes on the stream (headers and payloads).
    pub wire_bytes: u64,
    /// Blocks sent compressed.
    pub compressed_blocks: u64,
    /// Blocks in all.
    pub blocks: u64,
}

/// Writes `data` as blocks of at most `block` bytes, each compressed with zstd at `level` when
/// that makes it smaller (`None`: never), then the end marker.
pub async fn write_bulk<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    block: usize,
    level: Option<i32>,
) -> Result<BulkStats, TransportError> {
    let mut stats = BulkStats::default();
    for chunk in data.chunks(block.clamp(1, MAX_BLOCK)) {
        let part = write_bulk_blocks(w, chunk, level).await?;
        stats.raw_bytes += part.raw_bytes;
        stats.wire_bytes += part.wire_bytes;
        stats.blocks += part.blocks;
        stats.compressed_blocks += part.compressed_blocks;
    }
    write_block(w, BLOCK_END, 0, &[]).await?;
    stats.wire_bytes += 9;
    Ok(stats)
}

/// Writes one block of `data` (at most [`MAX_BLOCK`] bytes), without the end marker.
async fn write_bulk_blocks<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    level: Option<i32>,
) -> Result<BulkStats, TransportError> {
    let mut stats = BulkStats::default();
    if data.is_empty() {
        return Ok(stats);
    }
    {
        let chunk = data;
        let compressed = match level {
            Some(level) => zstd::bulk::compress(chunk, level)
                .ok()
                .filter(|c| c.len() < chunk.len()),
            None => None,
        };
        let (kind, payload) = match &compressed {
            Some(c) => (BLOCK_ZSTD, c.as_slice()),
            None => (BLOCK_RAW, chunk),
        };
        write_block(w, kind, chunk.len(), payload).await?;
        stats.raw_bytes += chunk.len() as u64;
        stats.wire_bytes += 9 + payload.len() as u64;
        stats.blocks += 1;
        stats.compressed_blocks += u64::from(kind == BLOCK_ZSTD);
    }
    Ok(stats)
}

async fn write_block<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    raw_len: usize,
    payload: &[u8],
) -> Result<(), TransportError> {
    let mut header = [0u8; 9];
    header[0] = kind;
    header[1..5].copy_from_slice(&(raw_len as u32).to_be_bytes());
    header[5..9].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    w.write_all(&header)
        .await
        .map_err(TransportError::connection)?;
    w.write_all(payload)
        .await
        .map_err(TransportError::connection)
}

/// Reads blocks up to the end marker, appending the data to `out`: at most `max` bytes of
/// data, what the receiver expects. A block that would go past `max` is refused from its
/// header, before its payload is read or anything allocated for it.
pub async fn read_bulk<R: AsyncRead + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
    max: u64,
) -> Result<BulkStats, TransportError> {
    read_blocks(r, max, |data| out.extend_from_slice(data))
        .await
        .map(|(stats, _)| stats)
}

/// Reads blocks up to the end marker, handing each block's data to `sink` as it arrives (so a
/// transfer larger than memory can be written out as it comes); at most `max` bytes of data,
/// as [`read_bulk`].
pub async fn read_bulk_with<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u64,
    sink: impl FnMut(&[u8]),
) -> Result<BulkStats, TransportError> {
    read_blocks(r, max, sink).await.map(|(stats, _)| stats)
}

/// Writes `blocks` (each at most [`MAX_BLOCK`] bytes) as a bulk transfer, compressing each with
/// zstd at `level` where that shrinks it, then the end marker. A block that fails to come
/// ends the transfer with that error, before the end marker.
pub async fn write_blocks<W: AsyncWrite + Unpin>(
    w: &mut W,
    blocks: impl Iterator<Item = std::io::Result<Vec<u8>>>,
    level: Option<i32>,
) -> Result<BulkStats, TransportError> {
    let mut stats = BulkStats::default();
    for block in blocks {
        let block = block.map_err(|e| TransportError::Frame(format!("reading data: {e}")))?;
        if block.len() > MAX_BLOCK {
            return Err(TransportError::Frame(format!(
                "block of {} bytes is over the {MAX_BLOCK} byte limit",
                block.len()
            )));
        }
        let part = write_bulk_blocks(w, &block, level).await?;
        stats.raw_bytes += part.raw_bytes;
        stats.wire_bytes += part.wire_bytes;
        stats.blocks += part.blocks;
        stats.compressed_blocks += part.compressed_blocks;
    }
    write_block(w, BLOCK_END, 0, &[]).await?;
    stats.wire_bytes += 9;
    Ok(stats)
}

/// Reads blocks up to the end marker and discards the data; also returns the time from the
/// first block header to the end marker (the receiver's view of the transfer).
pub async fn drain_bulk<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(BulkStats, std::time::Duration), TransportError> {
    read_blocks(r, u64::MAX, |_| {}).await
}

async fn read_blocks<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u64,
    mut sink: impl FnMut(&[u8]),
) -> Result<(BulkStats, std::time::Duration), TransportError> {
    let mut stats = BulkStats::default();
    let mut payload = Vec::new();
    let mut started = None;
    loop {
        let mut header = [0u8; 9];
        r.read_exact(&mut header)
            .await
            .map_err(TransportError::connection)?;
        let started = *started.get_or_insert_with(std::time::Instant::now);
        stats.wire_bytes += 9;
        let kind = header[0];
        let raw_len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
        if kind == BLOCK_END {
            return Ok((stats, started.elapsed()));
        }
        if raw_len > MAX_BLOCK || len > MAX_BLOCK {
            return Err(TransportError::Frame(format!(
                "block of {raw_len} (payload {len}) bytes is over the {MAX_BLOCK} byte limit"
            )));
        }
        if stats.raw_bytes.saturating_add(raw_len as u64) > max {
            return Err(TransportError::Frame(format!(
                "bulk transfer goes past the {max} bytes expected (a block of {raw_len} after {})",
                stats.raw_bytes
            )));
        }
        if len > raw_len {
            // Raw blocks carry exactly their length, and zstd is sent only when it shrinks.
            return Err(TransportError::Frame(format!(
                "block payload of {len} bytes for {raw_len} bytes of data"
            )));
        }
        // The buffer grows as the payload arrives (and is kept for the next block), so a
        // header's claim costs nothing until its bytes come.
        payload.clear();
        let got = (&mut *r)
            .take(len as u64)
            .read_to_end(&mut payload)
            .await
            .map_err(TransportError::connection)?;
        if got != len {
            return Err(TransportError::Connection(format!(
                "stream ended {got} bytes into a block of {len}"
            )));
        }
        match kind {
            BLOCK_RAW if len == raw_len => sink(&payload),
            BLOCK_ZSTD => {
                let data = zstd::bulk::decompress(&payload, raw_len)
                    .map_err(|e| TransportError::Frame(format!("zstd block: {e}")))?;
                if data.len() != raw_len {
                    return Err(TransportError::Frame(format!(
                        "zstd block gave {} bytes, header said {raw_len}",
                        data.len()
                    )));
                }
                sink(&data);
                stats.compressed_blocks += 1;
            }
            _ => {
                return Err(TransportError::Frame(format!(
                    "bad block (kind {kind}, raw {raw_len}, payload {len})"
                )))
            }
        }
        stats.raw_bytes += raw_len as u64;
        stats.wire_bytes += len as u64;
        stats.blocks += 1;
    }
}

/// A reusable zstd compressor for [`Piece::pack`] (compression stays inside this crate).
pub struct Compressor(zstd::bulk::Compressor<'static>);

impl Compressor {
    /// A compressor at zstd `level`, or `None` when zstd refuses the level.
    pub fn new(level: i32) -> Option<Compressor> {
        zstd::bulk::Compressor::new(level).ok().map(Compressor)
    }
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor")
    }
}

/// A reusable zstd decompressor for [`Piece::data`].
pub struct Decompressor(zstd::bulk::Decompressor<'static>);

impl Decompressor {
    /// A new decompressor.
    pub fn new() -> Result<Decompressor, TransportError> {
        zstd::bulk::Decompressor::new()
            .map(Decompressor)
            .map_err(|e| TransportError::Frame(format!("zstd: {e}")))
    }
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decompressor")
    }
}

/// A piece of a file's data with where it goes: `file` (an index the two sides agreed on)
/// and the byte `offset` in it. The payload is the raw data or its zstd compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Which file.
    pub file: u32,
    /// Byte offset of the data in the file.
    pub offset: u64,
    /// Length of the data.
    pub raw_len: u32,
    /// The payload is zstd-compressed.
    pub zstd: bool,
    /// Raw data, or its compression.
    pub payload: Vec<u8>,
}

impl Piece {
    /// The piece for `data` (at most [`MAX_BLOCK`] bytes), compressed with `compressor` when
    /// that makes it smaller.
    pub fn pack(
        file: u32,
        offset: u64,
        data: Vec<u8>,
        compressor: Option<&mut Compressor>,
    ) -> Piece {
        debug_assert!(data.len() <= MAX_BLOCK);
        let raw_len = data.len() as u32;
        let compressed = compressor
            .and_then(|c| c.0.compress(&data).ok())
            .filter(|c| c.len() < data.len());
        match compressed {
            Some(payload) => Piece {
                file,
                offset,
                raw_len,
                zstd: true,
                payload,
            },
            None => Piece {
                file,
                offset,
                raw_len,
                zstd: false,
                payload: data,
            },
        }
    }

    /// Bytes this piece takes on the stream.
    pub fn wire_len(&self) -> u64 {
        PIECE_HEADER as u64 + self.payload.len() as u64
    }

    /// The data: the payload, or its decompression (which must give `raw_len` bytes).
    pub fn data<'a>(
        &'a self,
        decompressor: &mut Decompressor,
        buf: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], TransportError> {
        if !self.zstd {
            return Ok(&self.payload);
        }
        buf.clear();
        buf.reserve(self.raw_len as usize);
        let n = decompressor
            .0
            .decompress_to_buffer(&self.payload, buf)
            .map_err(|e| TransportError::Frame(format!("zstd piece: {e}")))?;
        if n != self.raw_len as usize {
            return Err(TransportError::Frame(format!(
                "zstd piece gave {n} bytes, header said {}",
                self.raw_len
            )));
        }
        Ok(&buf[..n])
    }
}

const PIECE_HEADER: usize = 21;

/// Writes one placed piece.
pub async fn write_piece<W: AsyncWrite + Unpin>(
    w: &mut W,
    piece: &Piece,
) -> Result<(), TransportError> {
    let kind = if piece.zstd { BLOCK_ZSTD } else { BLOCK_RAW };
    write_piece_header(
        w,
        kind,
        piece.file,
        piece.offset,
        piece.raw_len,
        piece.payload.len(),
    )
    .await?;
    w.write_all(&piece.payload)
        .await
        .map_err(TransportError::connection)
}

/// Appends one placed piece, as [`write_piece`] writes it, to `out`: small pieces are sent in
/// batches (one stream write for many), since a write on a QUIC stream has a fixed cost
/// (locking the connection, waking its driver) that dwarfs a 4 KiB page.
pub fn encode_piece(piece: &Piece, out: &mut Vec<u8>) {
    let kind = if piece.zstd { BLOCK_ZSTD } else { BLOCK_RAW };
    out.extend_from_slice(&piece_header(
        kind,
        piece.file,
        piece.offset,
        piece.raw_len,
        piece.payload.len(),
    ));
    out.extend_from_slice(&piece.payload);
}

/// Writes the end of a run of placed pieces.
pub async fn write_pieces_end<W: AsyncWrite + Unpin>(w: &mut W) -> Result<(), TransportError> {
    write_piece_header(w, BLOCK_END, 0, 0, 0, 0).await
}

async fn write_piece_header<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    file: u32,
    offset: u64,
    raw_len: u32,
    len: usize,
) -> Result<(), TransportError> {
    w.write_all(&piece_header(kind, file, offset, raw_len, len))
        .await
        .map_err(TransportError::connection)
}

fn piece_header(kind: u8, file: u32, offset: u64, raw_len: u32, len: usize) -> [u8; PIECE_HEADER] {
    let mut header = [0u8; PIECE_HEADER];
    header[0] = kind;
    header[1..5].copy_from_slice(&file.to_be_bytes());
    header[5..13].copy_from_slice(&offset.to_be_bytes());
    header[13..17].copy_from_slice(&raw_len.to_be_bytes());
    header[17..21].copy_from_slice(&(len as u32).to_be_bytes());
    header
}

/// Reads one placed piece; `Ok(None)` at the end marker. Lengths are checked against
/// [`MAX_BLOCK`], and a raw piece's payload must be its raw length.
pub async fn read_piece<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Piece>, TransportError> {
    let mut header = [0u8; PIECE_HEADER];
    r.read_exact(&mut header)
        .await
        .map_err(TransportError::connection)?;
    let kind = header[0];
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let file = be32(1);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&header[5..13]);
    let offset = u64::from_be_bytes(offset);
    let raw_len = be32(13);
    let len = be32(17) as usize;
    let ok = match kind {
        BLOCK_END => return Ok(None),
        BLOCK_RAW => len == raw_len as usize,
        BLOCK_ZSTD => len < raw_len as usize,
        _ => false,
    };
    if !ok || raw_len as usize > MAX_BLOCK || len > MAX_BLOCK {
        return Err(TransportError::Frame(format!(
            "bad piece (kind {kind}, raw {raw_len}, payload {len})"
        )));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .await
        .map_err(TransportError::connection)?;
    Ok(Some(Piece {
        file,
        offset,
        raw_len,
        zstd: kind == BLOCK_ZSTD,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Hello { node: String, n: u64 },
        Bye,
    }

    #[tokio::test]
    async fn messages_round_trip_and_end_cleanly() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let m = Msg::Hello {
            node: "n1".into(),
            n: 7,
        };
        write_msg(&mut a, &m).await.unwrap();
        write_msg(&mut a, &Msg::Bye).await.unwrap();
        drop(a);
        assert_eq!(read_msg::<Msg, _>(&mut b).await.unwrap(), Some(m));
        assert_eq!(read_msg::<Msg, _>(&mut b).await.unwrap(), Some(Msg::Bye));
        assert_eq!(read_msg::<Msg, _>(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn another_version_and_bad_lengths_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&[0, 0, 0, 3, 0, 9, 0]).await.unwrap();
        assert!(matches!(
            read_msg::<Msg, _>(&mut b).await,
            Err(TransportError::Refused(_))
        ));
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_msg::<Msg, _>(&mut b).await,
            Err(TransportError::Frame(_))
        ));
    }

    #[tokio::test]
    async fn bulk_compresses_only_what_shrinks() {
        // Half the blocks compressible (zeros), half not (pseudo-random).
        let mut data = vec![0u8; 1 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in data[..1 << 19].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let sent = data.clone();
        let writer =
            tokio::spawn(
                async move { write_bulk(&mut a, &sent, 64 << 10, Some(1)).await.unwrap() },
            );
        let mut got = Vec::new();
        let recv = read_bulk(&mut b, &mut got, 1 << 20).await.unwrap();
        let sent_stats = writer.await.unwrap();
        assert_eq!(got, data);
        assert_eq!(sent_stats.blocks, 16);
        assert_eq!(
            sent_stats.compressed_blocks, 8,
            "only the zero blocks shrink"
        );
        assert_eq!(recv, sent_stats);
        assert!(sent_stats.wire_bytes < data.len() as u64 * 6 / 10);
    }

    #[tokio::test]
    async fn placed_pieces_round_trip_compressed_where_it_pays() {
        let mut z = Compressor::new(1).unwrap();
        let zeros = Piece::pack(3, 8192, vec![0u8; 65536], Some(&mut z));
        let mut noise = vec![0u8; 4096];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let raw = Piece::pack(1, 0, noise.clone(), Some(&mut z));
        assert!(zeros.zstd && zeros.payload.len() < 1000);
        assert!(!raw.zstd, "incompressible data goes raw");
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let sent = (zeros.clone(), raw.clone());
        let writer = tokio::spawn(async move {
            write_piece(&mut a, &sent.0).await.unwrap();
            // A batch of encoded pieces reads back the same as pieces written one by one.
            let mut batch = Vec::new();
            encode_piece(&sent.1, &mut batch);
            a.write_all(&batch).await.unwrap();
            write_pieces_end(&mut a).await.unwrap();
        });
        let mut d = Decompressor::new().unwrap();
        let mut buf = Vec::new();
        let got = read_piece(&mut b).await.unwrap().unwrap();
        assert_eq!((got.file, got.offset, got.raw_len), (3, 8192, 65536));
        assert_eq!(got.data(&mut d, &mut buf).unwrap(), &[0u8; 65536][..]);
        let got = read_piece(&mut b).await.unwrap().unwrap();
        assert_eq!(got, raw);
        assert_eq!(got.data(&mut d, &mut buf).unwrap(), &noise[..]);
        assert_eq!(read_piece(&mut b).await.unwrap(), None);
        writer.await.unwrap();
        // A piece that lies about its length is refused.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_piece_header(&mut a, BLOCK_RAW, 0, 0, 10, 20)
            .await
            .unwrap();
        assert!(matches!(
            read_piece(&mut b).await,
            Err(TransportError::Frame(_))
        ));
    }

    #[tokio::test]
    async fn corrupt_zstd_block_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_block(&mut a, BLOCK_ZSTD, 100, b"not zstd at all")
            .await
            .unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            read_bulk(&mut b, &mut out, 1 << 20).await,
            Err(TransportError::Frame(_))
        ));
    }

    /// The error's text, for the tests that check a refusal says why.
    fn frame_error<T>(r: Result<T, TransportError>) -> String {
        match r {
            Err(TransportError::Frame(why)) => why,
            Err(e) => panic!("expected a frame error, got {e}"),
            Ok(_) => panic!("expected a frame error, got a value"),
        }
    }

    #[tokio::test]
    async fn a_frame_over_the_exchange_limit_is_refused_from_its_length() {
        // A handshake frame claiming 16 MiB: refused from its four length bytes, with nothing
        // else sent (a reader that allocated first would wait for the body instead).
        let claim = (MAX_FRAME as u32).to_be_bytes();
        let why =
            frame_error(read_msg_limited::<Msg, _>(&mut &claim[..], MAX_HANDSHAKE_FRAME).await);
        assert!(why.contains("over the 4096 byte limit"), "{why}");
        let claim = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let why = frame_error(read_msg::<Msg, _>(&mut &claim[..]).await);
        assert!(why.contains("over the"), "{why}");
        // A frame within the limit is read; one byte over is not.
        let mut frame = Vec::new();
        write_msg(&mut frame, &Msg::Bye).await.unwrap();
        let n = frame.len() - 4;
        assert_eq!(
            read_msg_limited::<Msg, _>(&mut frame.as_slice(), n)
                .await
                .unwrap(),
            Some(Msg::Bye)
        );
        assert!(read_msg_limited::<Msg, _>(&mut frame.as_slice(), n - 1)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_claimed_frame_allocates_only_what_arrives() {
        // 16 MiB claimed, 10 bytes sent, then the stream ends: an error, and the buffer never
        // grew past what arrived (the preallocation).
        let mut stream = (MAX_FRAME as u32).to_be_bytes().to_vec();
        stream.extend_from_slice(&WIRE_VERSION.to_be_bytes());
        stream.extend_from_slice(&[0u8; 8]);
        assert!(matches!(
            read_msg::<Msg, _>(&mut stream.as_slice()).await,
            Err(TransportError::Connection(_))
        ));
    }

    #[tokio::test]
    async fn bincode_claims_beyond_the_frame_are_refused() {
        // A string claiming 2^40 bytes inside a 16-byte frame: bincode's limit refuses it
        // before allocating.
        let mut body = WIRE_VERSION.to_be_bytes().to_vec();
        body.push(0); // Msg::Hello
        body.push(253); // varint u64 follows
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let why = frame_error(read_msg::<Msg, _>(&mut frame.as_slice()).await);
        assert!(!why.is_empty());
    }

    #[tokio::test]
    async fn a_bulk_transfer_past_what_the_receiver_expects_is_refused() {
        let data = vec![7u8; 10_000];
        let mut stream = Vec::new();
        write_bulk(&mut stream, &data, 4096, None).await.unwrap();
        let mut out = Vec::new();
        let stats = read_bulk(&mut stream.as_slice(), &mut out, 10_000)
            .await
            .unwrap();
        assert_eq!((stats.raw_bytes, out.len()), (10_000, 10_000));
        // One byte fewer expected: refused at the third block's header, before its payload.
        let mut out = Vec::new();
        let why = frame_error(read_bulk(&mut stream.as_slice(), &mut out, 9_999).await);
        assert!(why.contains("past the 9999 bytes expected"), "{why}");
        assert_eq!(out.len(), 8192, "the block past the limit was not taken");
        // A header claiming a 4 MiB block against a 4 KiB receiver: refused from the header
        // alone (no payload follows it here).
        let mut header = Vec::new();
        write_block(&mut header, BLOCK_RAW, MAX_BLOCK, &[])
            .await
            .unwrap();
        header.truncate(9);
        header[5..9].copy_from_slice(&(MAX_BLOCK as u32).to_be_bytes());
        let why = frame_error(read_bulk(&mut header.as_slice(), &mut Vec::new(), 4096).await);
        assert!(why.contains("past the 4096 bytes expected"), "{why}");
    }

    #[tokio::test]
    async fn a_zstd_payload_larger_than_its_data_is_refused() {
        let mut stream = Vec::new();
        write_block(&mut stream, BLOCK_ZSTD, 10, &[0u8; 100])
            .await
            .unwrap();
        let why = frame_error(read_bulk(&mut stream.as_slice(), &mut Vec::new(), 1 << 20).await);
        assert!(why.contains("payload of 100 bytes for 10"), "{why}");
        let mut stream = Vec::new();
        write_piece_header(&mut stream, BLOCK_ZSTD, 0, 0, 10, 100)
            .await
            .unwrap();
        assert!(matches!(
            read_piece(&mut stream.as_slice()).await,
            Err(TransportError::Frame(_))
        ));
    }
}
