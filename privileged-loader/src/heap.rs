//! How the loader's heap gives memory back. A map walk (a listing, the sweep, a reload's
//! handover) holds a whole map's slots for a moment — ~13 MB at 131k slots — on whichever
//! blocking-pool thread runs it. With glibc's defaults such a buffer, once one like it has
//! been freed, comes from that thread's arena instead of its own mapping (the mmap
//! threshold rises to the largest chunk freed, up to 32 MB), and an arena keeps the pages
//! it grew to: every blocking thread that ever walked kept a walk's worth, and under 100
//! clients with two lists running the loader's RSS climbed past 280 MB and stayed. Pinning
//! the threshold keeps large buffers in mappings of their own, returned when freed, and
//! capping the arenas bounds what small allocations spread over threads can strand.
//! (`docs/benchmarks.md` records the loader's RSS under load.)

/// Buffers at least this large are mapped on their own and unmapped when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 256 * 1024;

/// Arenas glibc may create (its default is 8 per core): the loader's async workers and the
/// few map walks at once need no more.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MAX_ARENAS: libc::c_int = 4;

/// Sets the allocator's policy; call first thing in `main`, before any thread starts. A
/// refusal only costs memory, so it is logged, not fatal.
pub fn return_freed_buffers_to_the_kernel() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (param, value, name) in [
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES, "M_MMAP_THRESHOLD"),
        (libc::M_ARENA_MAX, MAX_ARENAS, "M_ARENA_MAX"),
    ] {
        // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
        if unsafe { libc::mallopt(param, value) } != 1 {
            eprintln!(
                "privileged-loader: mallopt({name}, {value}) was refused; freed memory may stay resident"
            );
        }
    }
}

/// Hands the allocator's free pages back to the kernel (glibc's `malloc_trim`): what a
/// burst of connections left behind in small chunks, below the mapping threshold, stays
/// resident otherwise. Costs about a millisecond on the loader's heap; call it when idle.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}
