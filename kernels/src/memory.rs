//! Large buffers. A 384-channel chain's calibration ring is ~100 MB, written once through
//! within its first seconds: with 4 KiB pages that is ~25 000 page faults, a tenth of the CPU
//! chain's time over its first 10 s. Huge pages (2 MiB, where the kernel grants them on request,
//! Linux's default `madvise` mode) make it ~50.

/// `len` zeroed f32 (untouched pages from the allocator), on huge pages where available.
pub(crate) fn zeroed_f32(len: usize) -> Vec<f32> {
    let v = vec![0.0f32; len];
    advise_huge_pages(&v);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(v: &[f32]) {
    const HUGE: usize = 2 << 20;
    let (start, bytes) = (v.as_ptr() as usize, std::mem::size_of_val(v));
    let (from, to) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
    if to > from {
        // SAFETY: [from, to) lies within `v`'s allocation and is page-aligned; MADV_HUGEPAGE
        // only changes how the pages are backed, never their contents. Failure is harmless
        // (small pages, as without it).
        unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &[f32]) {}
