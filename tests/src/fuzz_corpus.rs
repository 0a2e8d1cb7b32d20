//! The fuzz corpus as regression tests, without the fuzzer: every committed input of every
//! target (`fuzz/corpus/<target>/`: seeds and the fuzzer's minimised corpus;
//! `fuzz/crashes/<target>/`: every crash found, kept after its fix) goes through the same
//! function `cargo xtask fuzz` fuzzes, which must return without panicking and without holding
//! more than [`LIMIT`] bytes at once.
//!
//! Allocations are counted per thread by this test binary's global allocator, so tests running
//! in parallel do not disturb each other's figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use godwit::fuzzing::TARGETS;

/// Most bytes one input may hold at once (the fuzz binary aborts over the same figure).
const LIMIT: isize = 32 << 20;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

struct Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

fn add(bytes: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + bytes;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: the caller's layout, as given.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: the caller's layout, as given.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        // SAFETY: a pointer this allocator gave, with its layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        // SAFETY: a pointer this allocator gave, with its layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` on `data` and returns the most bytes it held at once.
fn peak_of(f: fn(&[u8]), data: &[u8]) -> isize {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    f(data);
    PEAK.with(Cell::get)
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every file of `fuzz/<kind>/<target>/`, sorted (none when the directory is absent).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_committed_corpus() {
    for (name, _) in TARGETS {
        let n = inputs("corpus", name).len();
        assert!(
            n >= 5,
            "fuzz/corpus/{name}/ holds {n} inputs; commit a seed corpus"
        );
    }
}

#[test]
fn every_corpus_and_crash_input_runs_clean_and_bounded() {
    let mut ran = 0;
    for (name, target) in TARGETS {
        for path in inputs("corpus", name)
            .into_iter()
            .chain(inputs("crashes", name))
        {
            let data = std::fs::read(&path).unwrap();
            let peak = std::panic::catch_unwind(|| peak_of(*target, &data)).unwrap_or_else(|_| {
                panic!("{name}: {} panics", path.display());
            });
            assert!(
                peak <= LIMIT,
                "{name}: {} held {peak} bytes at once (limit {LIMIT})",
                path.display()
            );
            ran += 1;
        }
    }
    assert!(ran > 0);
}

#[test]
fn a_sender_claiming_large_sizes_costs_the_receiver_little() {
    // Hostile claims, each a few bytes: a 16 MiB handshake frame, a 16 MiB message frame
    // with 8 bytes sent, a 4 MiB bulk block to a receiver expecting 4 KiB (also drained), a
    // 4 MiB zstd piece. None costs more than the frame preallocation, except the piece: its
    // decompression buffer is one block, reused for every piece of the stream.
    let frame = |pick: u8, len: u32| {
        let mut v = vec![pick];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&3u16.to_be_bytes());
        v.extend_from_slice(&[0; 8]);
        v
    };
    let mut bulk = vec![2u8, 0];
    bulk.extend_from_slice(&(4u32 << 20).to_be_bytes());
    bulk.extend_from_slice(&(4u32 << 20).to_be_bytes());
    let mut piece = vec![1u8];
    piece.extend_from_slice(&[0; 12]);
    piece.extend_from_slice(&(4u32 << 20).to_be_bytes());
    piece.extend_from_slice(&16u32.to_be_bytes());
    piece.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let cases: [(&str, Vec<u8>, isize); 4] = [
        ("transport_frame", frame(0, 16 << 20), 1 << 10),
        ("transport_frame", frame(3, 16 << 20), 128 << 10),
        ("transport_bulk", bulk, 64 << 10),
        ("transport_piece", piece, (4 << 20) + (64 << 10)),
    ];
    for (name, data, bound) in cases {
        let target = godwit::fuzzing::target(name).unwrap();
        // The first run may set up a thread's decompressor; the second is the input's cost.
        peak_of(target, &data);
        let peak = peak_of(target, &data);
        assert!(
            peak <= bound,
            "{name}: {peak} bytes for {data:?} (bound {bound})"
        );
    }
}
