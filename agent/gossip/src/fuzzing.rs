//! Entry point of the gossip-opener fuzz target (`fuzz/`, `cargo xtask fuzz`) and of its corpus
//! regression test. Built only with the `fuzzing` feature.

use super::seal::{ClusterKey, Keyring, Opener, Sealer, HEADER_LEN, MAX_SESSIONS};

const CLUSTER: &str = "fuzz";
const T0: u64 = 1_800_000_000_000;

/// A run of datagrams through one opener, as a socket receives them. The input is a script;
/// each step starts with a byte `c`:
///
/// - `c < 0x80`: a raw datagram of the next `c` bytes (junk, truncations, forged headers);
/// - otherwise a datagram sealed with the cluster key (or, when `c & 0x20`, another key) by
///   session `c & 0x07`, at counter `u16` (big endian) and clock offset `i8` seconds, with a
///   payload of the next byte's count of bytes; when `c & 0x40`, the byte at the next byte's
///   index is flipped before it is opened.
///
/// The opener's clock moves by the step's byte of milliseconds. A datagram that opens gives
/// the payload it was sealed with, and tampering never opens.
pub fn open(data: &[u8]) {
    let keyring = Keyring::new(ClusterKey::from_bytes([7; 32]));
    let other = Keyring::new(ClusterKey::from_bytes([8; 32]));
    let mut opener = Opener::new(keyring.clone(), CLUSTER, Some(60_000));
    let mut now = T0;
    let mut rest = data;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    while let Some(&[c]) = take(1) {
        if c < 0x80 {
            let Some(raw) = take(usize::from(c)) else {
                return;
            };
            let mut datagram = raw.to_vec();
            if let Ok(n) = opener.open(&mut datagram, now) {
                assert!(HEADER_LEN + n <= datagram.len());
            }
            continue;
        }
        let Some(&[c0, c1, skew, len, flip, tick]) = take(6) else {
            return;
        };
        let Some(payload) = take(usize::from(len)) else {
            return;
        };
        let ring = if c & 0x20 != 0 { &other } else { &keyring };
        let counter = u64::from(u16::from_be_bytes([c0, c1]));
        let mut sealer = Sealer::with_session(ring.clone(), CLUSTER, u64::from(c & 0x07), counter);
        let sent = now.saturating_add_signed(i64::from(skew as i8) * 1000);
        let mut datagram = Vec::new();
        sealer.seal(payload, sent, &mut datagram);
        let tampered = c & 0x40 != 0;
        if tampered {
            let at = usize::from(flip) % datagram.len();
            datagram[at] ^= 0x01;
        }
        if let Ok(n) = opener.open(&mut datagram, now) {
            assert!(!tampered, "a tampered datagram opened");
            assert!(c & 0x20 == 0, "a datagram of another key opened");
            assert_eq!(&datagram[HEADER_LEN..HEADER_LEN + n], payload);
        }
        assert!(opener.sessions() <= MAX_SESSIONS);
        now += u64::from(tick);
    }
}

/// Pieces of datagrams sealed in pieces, through one reassembly, as a socket receives them
/// once opened. The input is a script of steps `[session, id, index, count, tick, len]` and
/// `len` bytes of share (a share is the piece without its six-byte header, which the step
/// gives). No input panics, nothing put back together exceeds UDP's limit, and a datagram cut
/// by the sender's own rule comes back whole whatever came before it.
pub fn reassemble(data: &[u8]) {
    use super::fragment::{pieces, Reassembly, MAX_DATAGRAM};
    let mut r = Reassembly::default();
    let mut now = T0;
    let mut rest = data;
    while let Some((step, tail)) = rest.split_first_chunk::<6>() {
        let [session, id, index, count, tick, len] = *step;
        let Some((share, tail)) = tail.split_at_checked(usize::from(len)) else {
            break;
        };
        rest = tail;
        now += u64::from(tick) * 16;
        let mut piece = vec![0, 0, 0, id, index, count];
        piece.extend_from_slice(share);
        if let Ok(Some(whole)) = r.push(u64::from(session & 3), &piece, now) {
            assert!(whole.len() <= MAX_DATAGRAM);
        }
    }
    let whole: Vec<u8> = (0..MAX_DATAGRAM).map(|i| (i % 251) as u8).collect();
    let cut = pieces(&whole, 0xffff_ffff).expect("a full datagram goes in pieces");
    let mut got = None;
    for p in cut.iter().rev() {
        got = r.push(9, p, now).expect("its own pieces are well formed");
    }
    assert_eq!(got.as_deref(), Some(&whole[..]));
}
