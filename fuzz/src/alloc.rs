//! A global allocator that counts the bytes live on the fuzzing thread and aborts (a crash to
//! libFuzzer) when one input's peak goes over [`LIMIT`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Most bytes one input may hold at once: the largest bound of a decoder (a 4 MiB block or
/// piece, decompressed) with room to spare, far below what an unbounded claim allocates.
pub(crate) const LIMIT: usize = 32 << 20;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static ON: Cell<bool> = const { Cell::new(false) };
}

struct Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

fn add(bytes: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + bytes;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
        if now > LIMIT as isize && ON.try_with(Cell::get).unwrap_or(false) {
            // No allocation from here: a fixed message, then abort (libFuzzer saves the input).
            let msg = b"godwit-fuzz: one input held more than the allocation limit\n";
            // SAFETY: writing a static buffer to stderr.
            unsafe { libc_write(2, msg.as_ptr(), msg.len()) };
            std::process::abort();
        }
    });
}

extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, count: usize) -> isize;
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

/// Starts counting one input (bytes live before it do not count).
pub(crate) fn start() {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    ON.with(|on| on.set(true));
}

/// Ends counting one input.
pub(crate) fn finish(_len: usize) {
    ON.with(|on| on.set(false));
}
