//! For the tests only: the heap allocations made on the calling thread, counted by a
//! wrapper around the system allocator (what a scrape costs, in allocations).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

/// Allocations (and reallocations) made on this thread so far.
pub fn now() -> u64 {
    COUNT.with(Cell::get)
}

struct Counting;

fn count() {
    // `try_with`: a thread being torn down has no counter left; not counted then.
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: each method forwards to the system allocator with the caller's arguments
// unchanged, so the system allocator's contract is the caller's; the counter is a
// const-initialised thread-local Cell, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as is (see the impl's comment).
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;
