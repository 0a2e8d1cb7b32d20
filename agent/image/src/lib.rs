//! Images: a content-addressed chunk store (FastCDC, SHA-256), manifests, and pushing an image
//! to a peer so that only the chunks it lacks move.
//!
//! # Code map
//!
//! | file | what |
//! | --- | --- |
//! | `store.rs` | [`ImageStore`]: chunks, manifests, import of a directory, export to one |
//! | `push.rs` | the `"image"` transport service: offer, want, chunks, commit |
//! | `fuzzing.rs` | the manifest fuzz target's entry point (feature `fuzzing`) |
//!
//! # Invariants
//!
//! - **A chunk is its hash.** Nothing is stored under a name its bytes do not hash to, and
//!   every read checks again.
//! - **A manifest is committed only when complete**, and its id is the hash of its content.
//! - **A manifest from a peer is validated before anything is written**: relative normalised
//!   paths, sorted and unique, nothing below a file or a link, sizes that add up. A chunk is
//!   read up to the length its manifest gives, never more. Writing an
//!   image out builds it beside the destination and renames it into place.

mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod push;
mod store;

#[cfg(test)]
mod tests;

pub use error::ImageError;
pub use push::{push, PushStats};
pub use store::{
    ChunkRef, Digest, Entry, EntryKind, ImageStore, ImportStats, Manifest, AVG_CHUNK, MAX_CHUNK,
    MIN_CHUNK,
};
