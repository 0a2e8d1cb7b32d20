//! Sealed datagrams too large for UDP, sent in pieces.
//!
//! chitchat fills a datagram up to 65,507 bytes (the digest of every member, then as much delta
//! as fits), and sealing adds [`OVERHEAD`] bytes: a full datagram sealed whole is over UDP's
//! limit and never arrives (`sendto` fails; the simulation cuts it). At a few hundred members
//! most replies are full. Such a datagram is sent as [`MAX_PIECES`] or fewer pieces, each sealed
//! on its own with the fragment flag, and put back together by the receiver before chitchat
//! sees it. Smaller datagrams are sealed whole, as before.
//!
//! A piece's plaintext: message id (4 bytes, big endian, per sender session), index (1),
//! count (1), then its share of the datagram. A piece authenticates alone, so a forged one is
//! dropped by the seal; an incomplete message is forgotten after [`KEEP_MS`], and at most
//! [`MAX_PARTIAL`] are kept at once.

use std::collections::HashMap;

use super::seal::OVERHEAD;

/// UDP's largest payload over IPv4.
pub(crate) const MAX_DATAGRAM: usize = 65_507;
/// Bytes before a piece's share.
const PIECE_HEADER: usize = 6;
/// The most pieces one datagram is cut into (two suffice for any chitchat datagram).
pub(crate) const MAX_PIECES: usize = 4;
/// A share of the datagram per piece, so that a sealed piece fits in [`MAX_DATAGRAM`].
pub(crate) const SHARE: usize = MAX_DATAGRAM - OVERHEAD - PIECE_HEADER;
/// Incomplete messages kept at once.
const MAX_PARTIAL: usize = 64;
/// How long an incomplete message is kept.
const KEEP_MS: u64 = 2_000;

/// Whether `plaintext` must be cut into pieces to be sealed.
pub(crate) fn needs_pieces(plaintext: &[u8]) -> bool {
    plaintext.len() + OVERHEAD > MAX_DATAGRAM
}

/// The pieces' plaintexts for `plaintext` (message `id`); `None` when it would take more than
/// [`MAX_PIECES`].
pub(crate) fn pieces(plaintext: &[u8], id: u32) -> Option<Vec<Vec<u8>>> {
    let count = plaintext.len().div_ceil(SHARE);
    if !(2..=MAX_PIECES).contains(&count) {
        return None;
    }
    Some(
        plaintext
            .chunks(SHARE)
            .enumerate()
            .map(|(i, share)| {
                let mut p = Vec::with_capacity(PIECE_HEADER + share.len());
                p.extend_from_slice(&id.to_be_bytes());
                p.push(i as u8);
                p.push(count as u8);
                p.extend_from_slice(share);
                p
            })
            .collect(),
    )
}

struct Partial {
    shares: Vec<Option<Vec<u8>>>,
    first_ms: u64,
}

/// Puts pieces back together, per sender session.
#[derive(Default)]
pub(crate) struct Reassembly {
    partial: HashMap<(u64, u32), Partial>,
}

/// Why a piece was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadPiece {
    /// Too short, a count out of range, an index past it, or a count that differs from the
    /// message's other pieces.
    Malformed,
}

impl Reassembly {
    /// Takes one opened piece from sender `session`; returns the whole datagram once its last
    /// piece arrived.
    pub(crate) fn push(
        &mut self,
        session: u64,
        piece: &[u8],
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, BadPiece> {
        if piece.len() <= PIECE_HEADER {
            return Err(BadPiece::Malformed);
        }
        let id = u32::from_be_bytes([piece[0], piece[1], piece[2], piece[3]]);
        let (index, count) = (usize::from(piece[4]), usize::from(piece[5]));
        if !(2..=MAX_PIECES).contains(&count) || index >= count {
            return Err(BadPiece::Malformed);
        }
        self.partial
            .retain(|_, p| now_ms.saturating_sub(p.first_ms) <= KEEP_MS);
        if self.partial.len() >= MAX_PARTIAL && !self.partial.contains_key(&(session, id)) {
            // The oldest goes: a message still missing a piece after many others is lost.
            if let Some(oldest) = self
                .partial
                .iter()
                .min_by_key(|(_, p)| p.first_ms)
                .map(|(k, _)| *k)
            {
                self.partial.remove(&oldest);
            }
        }
        let p = self
            .partial
            .entry((session, id))
            .or_insert_with(|| Partial {
                shares: vec![None; count],
                first_ms: now_ms,
            });
        if p.shares.len() != count {
            self.partial.remove(&(session, id));
            return Err(BadPiece::Malformed);
        }
        p.shares[index] = Some(piece[PIECE_HEADER..].to_vec());
        if p.shares.iter().any(Option::is_none) {
            return Ok(None);
        }
        let p = self.partial.remove(&(session, id)).expect("present");
        let whole: Vec<u8> = p.shares.into_iter().flatten().flatten().collect();
        if whole.len() > MAX_DATAGRAM {
            return Err(BadPiece::Malformed);
        }
        Ok(Some(whole))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::{ClusterKey, Keyring, Opener, Sealer, HEADER_LEN};

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn a_full_datagram_goes_in_two_sealed_pieces_each_within_udp_and_comes_back_whole() {
        let keyring = Keyring::new(ClusterKey::generate());
        let mut sealer = Sealer::new(keyring.clone(), "c");
        let mut opener = Opener::new(keyring, "c", Some(60_000));
        let whole = payload(MAX_DATAGRAM);
        assert!(needs_pieces(&whole));
        assert!(!needs_pieces(&whole[..MAX_DATAGRAM - OVERHEAD]));
        let pieces = pieces(&whole, 7).unwrap();
        assert_eq!(pieces.len(), 2);
        let mut r = Reassembly::default();
        let mut got = None;
        // Out of order, as UDP may deliver them.
        for p in pieces.iter().rev() {
            let mut sealed = Vec::new();
            sealer.seal_flagged(p, 1_000, crate::seal::FLAG_FRAGMENT, &mut sealed);
            assert!(sealed.len() <= MAX_DATAGRAM, "{}", sealed.len());
            let n = opener.open(&mut sealed, 1_000).unwrap();
            assert_eq!(sealed[3], crate::seal::FLAG_FRAGMENT);
            let session = u64::from_be_bytes(sealed[8..16].try_into().unwrap());
            got = r
                .push(session, &sealed[HEADER_LEN..HEADER_LEN + n], 1_000)
                .unwrap();
        }
        assert_eq!(got.as_deref(), Some(&whole[..]));
        assert!(r.partial.is_empty());
    }

    #[test]
    fn pieces_of_other_messages_and_sessions_do_not_mix_and_bad_ones_are_refused() {
        let a = pieces(&payload(65_500), 1).unwrap();
        let b = pieces(&payload(65_480), 1).unwrap();
        let mut r = Reassembly::default();
        assert_eq!(r.push(10, &a[0], 0), Ok(None));
        // The same id from another session is another message.
        assert_eq!(r.push(11, &b[1], 0), Ok(None));
        assert_eq!(r.push(10, &a[1], 0).unwrap().unwrap(), payload(65_500));
        assert_eq!(r.push(11, &b[0], 0).unwrap().unwrap(), payload(65_480));
        // Malformed: too short, count 1 or 5, index past count, a count that changes.
        assert_eq!(r.push(1, &[0; 6], 0), Err(BadPiece::Malformed));
        assert_eq!(
            r.push(1, &[0, 0, 0, 1, 0, 1, 9], 0),
            Err(BadPiece::Malformed)
        );
        assert_eq!(
            r.push(1, &[0, 0, 0, 1, 0, 5, 9], 0),
            Err(BadPiece::Malformed)
        );
        assert_eq!(
            r.push(1, &[0, 0, 0, 1, 2, 2, 9], 0),
            Err(BadPiece::Malformed)
        );
        assert_eq!(r.push(1, &[0, 0, 0, 2, 0, 2, 9], 0), Ok(None));
        assert_eq!(
            r.push(1, &[0, 0, 0, 2, 1, 3, 9], 0),
            Err(BadPiece::Malformed)
        );
        // More than four pieces' worth is not cut.
        assert!(pieces(&payload(SHARE * 4 + 1), 3).is_none());
    }

    #[test]
    fn incomplete_messages_are_forgotten_and_bounded() {
        let mut r = Reassembly::default();
        for id in 0..200u32 {
            let p = pieces(&payload(65_480), id).unwrap();
            assert_eq!(r.push(5, &p[0], u64::from(id)), Ok(None));
            assert!(r.partial.len() <= MAX_PARTIAL);
        }
        // Older than KEEP_MS: gone at the next piece.
        let p = pieces(&payload(65_480), 999).unwrap();
        assert_eq!(r.push(5, &p[0], 200 + KEEP_MS + 1), Ok(None));
        assert_eq!(r.partial.len(), 1);
    }
}
