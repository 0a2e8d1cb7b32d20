//! Entry points of the fuzz targets (`fuzz/`, `cargo xtask fuzz`) and of their corpus
//! regression test: each takes bytes as a peer would send them on a stream and must return
//! without panicking, whatever they are, and without allocating more than the readers' bounds
//! allow. Built only with the `fuzzing` feature.

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use serde::de::DeserializeOwned;

use super::endpoint::Handshake;
use super::service::{Open, Opened};
use super::wire::{
    drain_bulk, read_bulk, read_msg_limited, read_piece, Decompressor, MAX_BLOCK, MAX_FRAME,
    MAX_HANDSHAKE_FRAME, MAX_OPEN_FRAME,
};

/// Runs a future whose reader is a byte slice to its end: such a reader never waits, so the
/// first poll finishes it (`None` if it did not).
pub fn block_on<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Reads frames of type `T` from `data` under `max` until the end, an error or 64 frames;
/// returns how many decoded.
pub fn frames_of<T: DeserializeOwned>(mut data: &[u8], max: usize) -> usize {
    let mut n = 0;
    while n < 64 {
        match block_on(read_msg_limited::<T, _>(&mut data, max)) {
            Some(Ok(Some(_))) => n += 1,
            _ => break,
        }
    }
    n
}

/// The frame reader: the first byte picks what the frames are read as (a handshake, a stream
/// open, its answer, or a generic message under the full limit), the rest is the stream.
pub fn frame(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        0 => frames_of::<Handshake>(rest, MAX_HANDSHAKE_FRAME),
        1 => frames_of::<Open>(rest, MAX_OPEN_FRAME),
        2 => frames_of::<Opened>(rest, MAX_OPEN_FRAME),
        _ => frames_of::<(String, Vec<u64>, Option<Vec<u8>>, bool)>(rest, MAX_FRAME),
    };
}

/// What a bulk receiver may expect, picked by the first byte of [`bulk`]'s input.
const BULK_LIMITS: [u64; 5] = [0, 1, 4096, 256 << 10, 1 << 20];

/// The bulk reader: the first byte picks the total the receiver expects, the rest is the
/// stream; it is also drained, as the path probe does.
pub fn bulk(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let max = BULK_LIMITS[usize::from(pick) % BULK_LIMITS.len()];
    let mut out = Vec::new();
    let mut stream = rest;
    if let Some(Ok(stats)) = block_on(read_bulk(&mut stream, &mut out, max)) {
        assert!(
            out.len() as u64 <= max,
            "read_bulk gave more than its maximum"
        );
        assert_eq!(stats.raw_bytes, out.len() as u64);
    }
    let mut stream = rest;
    let _ = block_on(drain_bulk(&mut stream));
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// The placed-piece reader: pieces up to the end marker, each one's data decompressed.
pub fn piece(mut data: &[u8]) {
    DECOMPRESSOR.with_borrow_mut(|d| {
        if d.is_none() {
            *d = Decompressor::new().ok();
        }
        let Some(d) = d.as_mut() else {
            return;
        };
        let mut buf = Vec::new();
        for _ in 0..64 {
            match block_on(read_piece(&mut data)) {
                Some(Ok(Some(piece))) => {
                    assert!(piece.payload.len() <= MAX_BLOCK);
                    if let Ok(got) = piece.data(d, &mut buf) {
                        assert_eq!(got.len(), piece.raw_len as usize);
                    }
                }
                _ => break,
            }
        }
    });
}
