//! Sealed datagrams: authenticated encryption with a cluster key, replay protection, keyring.
//!
//! # Wire format (version 1)
//!
//! ```text
//! offset size
//!  0      2   magic "GW"
//!  2      1   format version (1)
//!  3      1   flags: 0, or 1 for a piece of a datagram too large to seal whole (fragment.rs)
//!  4      4   key id (big endian): first 4 bytes of SHA-256("godwit-gossip-key" || key)
//!  8      8   sender session: random, drawn when the sender opens its socket
//! 16      8   counter: per session, starts at 0, +1 per datagram
//! 24      8   sender's wall clock, milliseconds since the Unix epoch
//! 32     12   nonce: random per datagram
//! 44      n   ChaCha20-Poly1305 ciphertext of the chitchat datagram, then its 16-byte tag
//! ```
//!
//! The associated data is the 44-byte header followed by the cluster id, so a header cannot be
//! altered and a datagram of another cluster sharing the key does not open.
//!
//! # Replay
//!
//! A receiver keeps, per sender session, the highest counter accepted and a 128-bit window of
//! the counters below it (as IPsec and WireGuard do): a counter seen before, or older than the
//! window, is a replay. Sessions are forgotten once their newest packet is older than the clock
//! skew tolerance (and at most [`MAX_SESSIONS`] are kept, least recently used evicted first); a
//! packet whose timestamp is further than that tolerance from our clock is refused as stale.
//! So a captured packet can never be replayed: while its session is remembered the window
//! refuses it, and after that its timestamp does. Clocks must agree within the tolerance
//! (60 s by default, NTP suffices).
//!
//! Nonces are random (96 bits) rather than counters because several senders share one key; with
//! random nonces the key should be rotated before about 2^32 datagrams were sealed with it in
//! the whole cluster (months at 500 nodes and 4 datagrams per second each).
//!
//! # Rotation
//!
//! 1. [`Keyring::install`] the new key on every node (they now accept both);
//! 2. [`Keyring::set_primary`] on every node (they now send with the new key);
//! 3. [`Keyring::remove`] the old key on every node.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;

use super::error::GossipError;

const MAGIC: [u8; 2] = *b"GW";
const FORMAT_VERSION: u8 = 1;
/// The flag of a piece of a datagram sealed in pieces (see `fragment.rs`).
pub(crate) const FLAG_FRAGMENT: u8 = 1;
/// Bytes of the sealed header.
pub(crate) const HEADER_LEN: usize = 44;
/// Bytes added to every datagram by sealing (header and tag).
pub(crate) const OVERHEAD: usize = HEADER_LEN + 16;
/// Sender sessions remembered for replay protection.
pub(crate) const MAX_SESSIONS: usize = 4096;
const WINDOW_BITS: u64 = 128;

/// Identifies a cluster key on the wire, derived from the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A 256-bit cluster key. Its `Debug` output shows only its id.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({})", self.id())
    }
}

impl ClusterKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> ClusterKey {
        ClusterKey(bytes)
    }

    /// A key from 64 hexadecimal digits.
    pub fn from_hex(text: &str) -> Result<ClusterKey, GossipError> {
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return Err(GossipError::InvalidKey(
                "expected 64 hexadecimal digits (32 bytes)".into(),
            ));
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| GossipError::InvalidKey("not hexadecimal".into()))?;
        }
        Ok(ClusterKey(bytes))
    }

    /// A fresh random key.
    pub fn generate() -> ClusterKey {
        let mut bytes = [0u8; 32];
        // The system RNG failing leaves no safe way to continue.
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system random number generator failed");
        ClusterKey(bytes)
    }

    /// The key as 64 hexadecimal digits (for generating config files).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key's id: the first 4 bytes of SHA-256("godwit-gossip-key" || key).
    pub fn id(&self) -> KeyId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"godwit-gossip-key");
        ctx.update(&self.0);
        let digest = ctx.finish();
        let d = digest.as_ref();
        KeyId(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
    }

    fn aead_key(&self) -> LessSafeKey {
        // CHACHA20_POLY1305 takes exactly 32 bytes, which the type guarantees.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &self.0)
            .expect("a 32-byte key fits ChaCha20-Poly1305");
        LessSafeKey::new(unbound)
    }
}

struct KeyringInner {
    keys: BTreeMap<KeyId, LessSafeKey>,
    primary: KeyId,
}

/// The cluster keys a node holds: senders seal with the primary, receivers accept any.
///
/// Cloning gives another handle on the same keyring, so keys can be rotated while the
/// cluster runs.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<RwLock<KeyringInner>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary())
            .field("keys", &self.key_ids())
            .finish()
    }
}

impl Keyring {
    /// A keyring holding one key, which is primary.
    pub fn new(primary: ClusterKey) -> Keyring {
        let id = primary.id();
        let mut keys = BTreeMap::new();
        keys.insert(id, primary.aead_key());
        Keyring {
            inner: Arc::new(RwLock::new(KeyringInner { keys, primary: id })),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyringInner> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeyringInner> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Installs a key (accepted from now on) and returns its id. Installing twice is a no-op.
    pub fn install(&self, key: ClusterKey) -> KeyId {
        let id = key.id();
        self.write()
            .keys
            .entry(id)
            .or_insert_with(|| key.aead_key());
        id
    }

    /// Makes an installed key the one used to send.
    pub fn set_primary(&self, id: KeyId) -> Result<(), GossipError> {
        let mut inner = self.write();
        if !inner.keys.contains_key(&id) {
            return Err(GossipError::UnknownKey(id));
        }
        inner.primary = id;
        Ok(())
    }

    /// Removes a key that is not primary; its datagrams are refused from now on.
    pub fn remove(&self, id: KeyId) -> Result<(), GossipError> {
        let mut inner = self.write();
        if inner.primary == id {
            return Err(GossipError::RemovePrimary(id));
        }
        inner
            .keys
            .remove(&id)
            .map(|_| ())
            .ok_or(GossipError::UnknownKey(id))
    }

    /// The id of the key used to send.
    pub fn primary(&self) -> KeyId {
        self.read().primary
    }

    /// The ids of every installed key.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.read().keys.keys().copied().collect()
    }

    /// Makes the keyring hold exactly `primary` and `others`, in one step: new keys are
    /// installed, `primary` sends, and keys not listed are removed. This is how a reloaded
    /// configuration applies a rotation step (see the module documentation).
    pub fn replace(&self, primary: ClusterKey, others: Vec<ClusterKey>) -> KeyringChange {
        let mut inner = self.write();
        let wanted: BTreeMap<KeyId, ClusterKey> = std::iter::once(primary.clone())
            .chain(others)
            .map(|k| (k.id(), k))
            .collect();
        let mut change = KeyringChange::default();
        for (id, key) in &wanted {
            if !inner.keys.contains_key(id) {
                inner.keys.insert(*id, key.aead_key());
                change.installed.push(*id);
            }
        }
        let new_primary = primary.id();
        if inner.primary != new_primary {
            change.primary = Some((inner.primary, new_primary));
            inner.primary = new_primary;
        }
        let stale: Vec<KeyId> = inner
            .keys
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            inner.keys.remove(&id);
            change.removed.push(id);
        }
        change
    }
}

/// What [`Keyring::replace`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyringChange {
    /// Keys accepted from now on.
    pub installed: Vec<KeyId>,
    /// The primary key before and after, if it changed.
    pub primary: Option<(KeyId, KeyId)>,
    /// Keys refused from now on.
    pub removed: Vec<KeyId>,
}

impl KeyringChange {
    /// True when the keyring did not change.
    pub fn is_empty(&self) -> bool {
        self.installed.is_empty() && self.primary.is_none() && self.removed.is_empty()
    }
}

/// Counters of the sealed transport, for metrics. All only grow.
#[derive(Debug, Default)]
pub(crate) struct SealCounters {
    pub(crate) sent: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) bad_key: AtomicU64,
    pub(crate) bad_tag: AtomicU64,
    pub(crate) replay: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    /// Half-received datagrams the codec did not return in time (see `transport.rs`).
    pub(crate) codec_resets: AtomicU64,
    /// The codec's and the tap's loopback addresses, once the socket is open (for tests).
    pub(crate) codec: std::sync::Mutex<Option<(std::net::SocketAddr, std::net::SocketAddr)>>,
}

impl SealCounters {
    /// A copy of the counters.
    pub(crate) fn snapshot(&self) -> SealStats {
        SealStats {
            sent: self.sent.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            bad_key: self.bad_key.load(Ordering::Relaxed),
            bad_tag: self.bad_tag.load(Ordering::Relaxed),
            replay: self.replay.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count(&self, rejection: Rejection) {
        let counter = match rejection {
            Rejection::Malformed => &self.malformed,
            Rejection::BadKey => &self.bad_key,
            Rejection::BadTag => &self.bad_tag,
            Rejection::Replay => &self.replay,
            Rejection::Stale => &self.stale,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Datagram counts of the sealed transport since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SealStats {
    /// Datagrams sealed and sent.
    pub sent: u64,
    /// Datagrams opened and handed to gossip.
    pub accepted: u64,
    /// Dropped: sealed with a key this node does not hold (or not sealed by godwit at all but
    /// carrying the magic).
    pub bad_key: u64,
    /// Dropped: authentication failed (tampered, or another cluster id).
    pub bad_tag: u64,
    /// Dropped: a counter already seen or older than the replay window.
    pub replay: u64,
    /// Dropped: timestamp outside the clock skew tolerance (an old replay or a wrong clock).
    pub stale: u64,
    /// Dropped: not a sealed datagram (clear-text chitchat, junk, truncated) or a payload that
    /// is not a chitchat message.
    pub malformed: u64,
    /// Datagrams that arrived, before any check.
    pub received: u64,
    /// Bytes of the datagrams sent (as on the wire, sealed or clear).
    pub bytes_sent: u64,
    /// Bytes of the datagrams that arrived.
    pub bytes_received: u64,
}

impl SealStats {
    /// All dropped datagrams.
    pub fn dropped(&self) -> u64 {
        self.bad_key + self.bad_tag + self.replay + self.stale + self.malformed
    }
}

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    Malformed,
    BadKey,
    BadTag,
    Replay,
    Stale,
}

/// The sending half: one session per opened socket.
pub(crate) struct Sealer {
    keyring: Keyring,
    cluster_id: Vec<u8>,
    session: u64,
    counter: u64,
    rng: SystemRandom,
}

impl Sealer {
    pub(crate) fn new(keyring: Keyring, cluster_id: &str) -> Sealer {
        let rng = SystemRandom::new();
        let mut session = [0u8; 8];
        rng.fill(&mut session)
            .expect("the system random number generator failed");
        Sealer {
            keyring,
            cluster_id: cluster_id.as_bytes().to_vec(),
            session: u64::from_be_bytes(session),
            counter: 0,
            rng,
        }
    }

    /// A sender of session `session` whose next counter is `counter` (the fuzz target
    /// forges sessions and counters with it).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn with_session(
        keyring: Keyring,
        cluster_id: &str,
        session: u64,
        counter: u64,
    ) -> Sealer {
        Sealer {
            session,
            counter,
            ..Sealer::new(keyring, cluster_id)
        }
    }

    /// Seals `plaintext` into `out` (cleared first), stamped with `now_ms`.
    pub(crate) fn seal(&mut self, plaintext: &[u8], now_ms: u64, out: &mut Vec<u8>) {
        self.seal_flagged(plaintext, now_ms, 0, out);
    }

    /// As [`Sealer::seal`], with `flags` in the header (authenticated with it).
    pub(crate) fn seal_flagged(
        &mut self,
        plaintext: &[u8],
        now_ms: u64,
        flags: u8,
        out: &mut Vec<u8>,
    ) {
        let mut nonce = [0u8; 12];
        self.rng
            .fill(&mut nonce)
            .expect("the system random number generator failed");
        let inner = self.keyring.read();
        let key_id = inner.primary;
        out.clear();
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(flags);
        out.extend_from_slice(&key_id.0.to_be_bytes());
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&nonce);
        debug_assert_eq!(out.len(), HEADER_LEN);
        self.counter += 1;
        let mut aad = Vec::with_capacity(HEADER_LEN + self.cluster_id.len());
        aad.extend_from_slice(out);
        aad.extend_from_slice(&self.cluster_id);
        out.extend_from_slice(plaintext);
        let mut body = out.split_off(HEADER_LEN);
        let sealed = match inner.keys.get(&key_id) {
            Some(key) => key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad[..]),
                    &mut body,
                )
                .is_ok(),
            None => false,
        };
        // The primary is always installed (remove refuses it); sealing fails only for
        // payloads larger than 256 GiB. Either way nothing unauthenticated leaves.
        if sealed {
            out.extend_from_slice(&body);
        } else {
            out.clear();
        }
    }
}

struct SessionWindow {
    highest: u64,
    /// Bit i set: counter `highest - i` was accepted.
    seen: u128,
    newest_ms: u64,
    last_used: u64,
}

/// The receiving half: opens datagrams and remembers sender sessions.
pub(crate) struct Opener {
    keyring: Keyring,
    cluster_id: Vec<u8>,
    max_skew_ms: Option<u64>,
    sessions: HashMap<u64, SessionWindow>,
    tick: u64,
}

impl Opener {
    pub(crate) fn new(keyring: Keyring, cluster_id: &str, max_skew_ms: Option<u64>) -> Opener {
        Opener {
            keyring,
            cluster_id: cluster_id.as_bytes().to_vec(),
            max_skew_ms,
            sessions: HashMap::new(),
            tick: 0,
        }
    }

    /// Opens a datagram in place and returns the plaintext's length (it starts at
    /// [`HEADER_LEN`]), or why it was refused. The replay state changes only for datagrams
    /// that authenticate.
    pub(crate) fn open(&mut self, datagram: &mut [u8], now_ms: u64) -> Result<usize, Rejection> {
        if datagram.len() < OVERHEAD || datagram[0..2] != MAGIC {
            return Err(Rejection::Malformed);
        }
        if datagram[2] != FORMAT_VERSION {
            return Err(Rejection::Malformed);
        }
        let field = |range: std::ops::Range<usize>| -> u64 {
            datagram[range]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        };
        let key_id = KeyId(field(4..8) as u32);
        let session = field(8..16);
        let counter = field(16..24);
        let sent_ms = field(24..32);
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&datagram[32..44]);

        let mut aad = Vec::with_capacity(HEADER_LEN + self.cluster_id.len());
        aad.extend_from_slice(&datagram[..HEADER_LEN]);
        aad.extend_from_slice(&self.cluster_id);
        let (_, body) = datagram.split_at_mut(HEADER_LEN);
        let plaintext_len = {
            let inner = self.keyring.read();
            let key = inner.keys.get(&key_id).ok_or(Rejection::BadKey)?;
            key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                body,
            )
            .map_err(|_| Rejection::BadTag)?
            .len()
        };
        if let Some(skew) = self.max_skew_ms {
            if now_ms.abs_diff(sent_ms) > skew {
                return Err(Rejection::Stale);
            }
        }
        self.check_and_record(session, counter, sent_ms, now_ms)?;
        Ok(plaintext_len)
    }

    fn check_and_record(
        &mut self,
        session: u64,
        counter: u64,
        sent_ms: u64,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        self.tick += 1;
        let tick = self.tick;
        if !self.sessions.contains_key(&session) {
            self.evict(now_ms);
        }
        let window = self.sessions.entry(session).or_insert(SessionWindow {
            highest: counter,
            seen: 0,
            newest_ms: sent_ms,
            last_used: tick,
        });
        if window.seen == 0 && window.highest == counter {
            // First datagram of this session.
            window.seen = 1;
        } else if counter > window.highest {
            let shift = counter - window.highest;
            window.seen = if shift >= WINDOW_BITS {
                0
            } else {
                window.seen << shift
            };
            window.seen |= 1;
            window.highest = counter;
        } else {
            let age = window.highest - counter;
            if age >= WINDOW_BITS || window.seen & (1u128 << age) != 0 {
                return Err(Rejection::Replay);
            }
            window.seen |= 1u128 << age;
        }
        window.newest_ms = window.newest_ms.max(sent_ms);
        window.last_used = tick;
        Ok(())
    }

    /// Drops sessions whose packets would all be refused as stale anyway, then the least
    /// recently used ones while over [`MAX_SESSIONS`].
    fn evict(&mut self, now_ms: u64) {
        if let Some(skew) = self.max_skew_ms {
            self.sessions
                .retain(|_, w| now_ms.saturating_sub(w.newest_ms) <= skew.saturating_mul(2));
        }
        while self.sessions.len() >= MAX_SESSIONS {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, w)| w.last_used)
                .map(|(session, _)| *session);
            match oldest {
                Some(session) => {
                    self.sessions.remove(&session);
                }
                None => break,
            }
        }
    }

    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

/// Wall clock in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn pair() -> (Sealer, Opener, Keyring) {
        let keyring = Keyring::new(ClusterKey::from_bytes([7u8; 32]));
        let sealer = Sealer::new(keyring.clone(), "c");
        let opener = Opener::new(keyring.clone(), "c", Some(60_000));
        (sealer, opener, keyring)
    }

    fn seal(sealer: &mut Sealer, msg: &[u8], now: u64) -> Vec<u8> {
        let mut out = Vec::new();
        sealer.seal(msg, now, &mut out);
        out
    }

    #[test]
    fn round_trip() {
        let (mut s, mut o, _) = pair();
        let mut d = seal(&mut s, b"hello", T0);
        assert_eq!(d.len(), 5 + OVERHEAD);
        let n = o.open(&mut d, T0).unwrap();
        assert_eq!(&d[HEADER_LEN..HEADER_LEN + n], b"hello");
    }

    #[test]
    fn tampering_anywhere_is_refused() {
        let (mut s, mut o, _) = pair();
        let d = seal(&mut s, b"hello world", T0);
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x01;
            let r = o.open(&mut t, T0);
            assert!(r.is_err(), "byte {i} flipped was accepted");
        }
        // Header bytes protected by the tag report bad tag, key id bytes bad key.
        let mut t = d.clone();
        t[50] ^= 0x80;
        assert_eq!(o.open(&mut t, T0), Err(Rejection::BadTag));
        // The untampered one still opens: failures did not touch the replay state.
        let mut ok = d.clone();
        assert!(o.open(&mut ok, T0).is_ok());
    }

    #[test]
    fn another_cluster_or_key_is_refused() {
        let (mut s, _, _) = pair();
        let mut d = seal(&mut s, b"x", T0);
        let other_key = Keyring::new(ClusterKey::from_bytes([8u8; 32]));
        let mut o2 = Opener::new(other_key, "c", None);
        assert_eq!(o2.open(&mut d.clone(), T0), Err(Rejection::BadKey));
        let same_key = Keyring::new(ClusterKey::from_bytes([7u8; 32]));
        let mut o3 = Opener::new(same_key, "other-cluster", None);
        assert_eq!(o3.open(&mut d, T0), Err(Rejection::BadTag));
    }

    #[test]
    fn replays_are_refused_and_reordering_is_not() {
        let (mut s, mut o, _) = pair();
        let packets: Vec<Vec<u8>> = (0..10).map(|i| seal(&mut s, &[i], T0)).collect();
        // Out of order delivery within the window is fine.
        for i in [0usize, 2, 1, 5, 3, 4, 9, 6, 8, 7] {
            assert!(o.open(&mut packets[i].clone(), T0).is_ok(), "packet {i}");
        }
        for (i, packet) in packets.iter().enumerate() {
            assert_eq!(
                o.open(&mut packet.clone(), T0),
                Err(Rejection::Replay),
                "replay of {i}"
            );
        }
        // Far behind the window.
        let old = packets[0].clone();
        for i in 0..200u8 {
            let mut p = seal(&mut s, &[i], T0);
            assert!(o.open(&mut p, T0).is_ok());
        }
        assert_eq!(o.open(&mut old.clone(), T0), Err(Rejection::Replay));
    }

    #[test]
    fn stale_timestamps_are_refused() {
        let (mut s, mut o, _) = pair();
        let mut d = seal(&mut s, b"x", T0);
        assert_eq!(o.open(&mut d.clone(), T0 + 61_000), Err(Rejection::Stale));
        assert!(o.open(&mut d, T0 + 59_000).is_ok());
    }

    #[test]
    fn forgotten_sessions_stay_protected_by_the_clock() {
        let (mut s, mut o, _) = pair();
        let d = seal(&mut s, b"x", T0);
        assert!(o.open(&mut d.clone(), T0).is_ok());
        // A new session much later evicts the old one ...
        let mut s2 = Sealer::new(s.keyring.clone(), "c");
        let mut d2 = seal(&mut s2, b"y", T0 + 200_000);
        assert!(o.open(&mut d2, T0 + 200_000).is_ok());
        assert_eq!(o.sessions(), 1);
        // ... and the old packet is still refused, now as stale.
        assert_eq!(o.open(&mut d.clone(), T0 + 200_000), Err(Rejection::Stale));
    }

    #[test]
    fn rotation() {
        let (mut s, mut o, ring_a) = pair();
        let ring_b = Keyring::new(ClusterKey::from_bytes([7u8; 32]));
        let mut s_b = Sealer::new(ring_b.clone(), "c");
        let new_key = ClusterKey::from_bytes([9u8; 32]);
        let new_id = ring_a.install(new_key.clone());
        assert_eq!(ring_b.install(new_key), new_id);
        ring_a.set_primary(new_id).unwrap();
        // a sends with the new key; both still open each other's datagrams.
        assert!(o.open(&mut seal(&mut s, b"1", T0), T0).is_ok());
        assert!(o.open(&mut seal(&mut s_b, b"2", T0), T0).is_ok());
        let old_id = ClusterKey::from_bytes([7u8; 32]).id();
        assert!(matches!(
            ring_a.remove(new_id),
            Err(GossipError::RemovePrimary(_))
        ));
        ring_a.remove(old_id).unwrap();
        // b has not switched yet: its datagrams are now refused by a.
        assert_eq!(
            o.open(&mut seal(&mut s_b, b"3", T0), T0),
            Err(Rejection::BadKey)
        );
        ring_b.set_primary(new_id).unwrap();
        assert!(o.open(&mut seal(&mut s_b, b"4", T0), T0).is_ok());
        assert_eq!(ring_a.key_ids(), vec![new_id]);
    }

    #[test]
    fn replace_applies_each_rotation_step() {
        let old = ClusterKey::from_bytes([7u8; 32]);
        let new = ClusterKey::from_bytes([9u8; 32]);
        let (mut s, mut o, ring) = pair();
        // Unchanged config: nothing happens.
        assert!(ring.replace(old.clone(), vec![]).is_empty());
        // Step 1: install the new key second.
        let c = ring.replace(old.clone(), vec![new.clone()]);
        assert_eq!(c.installed, vec![new.id()]);
        assert_eq!((c.primary, c.removed.len()), (None, 0));
        // Step 2: new key first: it seals, the old one still opens.
        let c = ring.replace(new.clone(), vec![old.clone()]);
        assert_eq!(c.primary, Some((old.id(), new.id())));
        assert!(c.installed.is_empty());
        let mut d = seal(&mut s, b"x", T0);
        assert_eq!(d[4..8], new.id().0.to_be_bytes());
        assert!(o.open(&mut d, T0).is_ok());
        // Step 3: the old key goes.
        let c = ring.replace(new.clone(), vec![]);
        assert_eq!(c.removed, vec![old.id()]);
        assert_eq!(ring.key_ids(), vec![new.id()]);
        // A jump straight to an unknown key is one atomic change too.
        let third = ClusterKey::from_bytes([3u8; 32]);
        let c = ring.replace(third.clone(), vec![]);
        assert_eq!(c.installed, vec![third.id()]);
        assert_eq!(c.primary, Some((new.id(), third.id())));
        assert_eq!(c.removed, vec![new.id()]);
    }

    #[test]
    fn hex_keys() {
        let k = ClusterKey::generate();
        assert_eq!(ClusterKey::from_hex(&k.to_hex()).unwrap(), k);
        assert!(ClusterKey::from_hex("abc").is_err());
        assert!(ClusterKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(!format!("{k:?}").contains(&k.to_hex()));
    }

    #[test]
    fn junk_never_panics() {
        let (_, mut o, _) = pair();
        for len in 0..80 {
            let mut junk: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            if len >= 2 {
                junk[0] = b'G';
                junk[1] = b'W';
            }
            if len >= 3 {
                junk[2] = 1;
            }
            assert!(o.open(&mut junk, T0).is_err());
        }
    }
}
