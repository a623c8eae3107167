//! Per-op vectors, allocated so that the kernel may back them with transparent huge pages.
//!
//! A 10-million-op replay allocates a few hundred MiB of fresh per-op arrays. With 4 KiB pages
//! the first write to each page faults; those faults cost about a third of the replay's time.
//! Asking for huge pages (`MADV_HUGEPAGE`, honoured where THP is in `madvise` or `always`
//! mode) cuts the faults 512-fold. The advice never changes contents, so a kernel that ignores
//! it gives the same answer, only slower.

/// Below this size a vector cannot hold an aligned 2 MiB huge page worth advising.
const MIN_ADVISED_BYTES: usize = 4 << 20;
const HUGE_PAGE: usize = 2 << 20;

/// `n` copies of `value`.
pub fn filled<T: Clone>(n: usize, value: T) -> Vec<T> {
    let mut v = reserved(n);
    v.resize(n, value);
    v
}

/// A copy of `items`.
pub fn copied<T: Copy>(items: &[T]) -> Vec<T> {
    let mut v = reserved(items.len());
    v.extend_from_slice(items);
    v
}

/// An empty vector with room for `n` items.
pub fn reserved<T>(n: usize) -> Vec<T> {
    let v = Vec::with_capacity(n);
    advise_huge_pages(&v);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages<T>(v: &Vec<T>) {
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    if bytes < MIN_ADVISED_BYTES {
        return;
    }
    let start = v.as_ptr() as usize;
    let lo = start.next_multiple_of(HUGE_PAGE);
    let hi = (start + bytes) / HUGE_PAGE * HUGE_PAGE;
    if hi > lo {
        // SAFETY: [lo, hi) lies inside the vector's own allocation, and MADV_HUGEPAGE only
        // changes how the kernel backs those pages, never their contents. Failure (a kernel
        // without THP) is harmless, so the result is ignored.
        unsafe {
            libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<T>(_v: &Vec<T>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_and_reserved_behave_like_plain_vectors() {
        for n in [0, 1, 1000, (MIN_ADVISED_BYTES / 8) * 3 + 7] {
            let v = filled(n, 7u64);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 7));
            assert_eq!(copied(&v), v);
            let r: Vec<u32> = reserved(n);
            assert!(r.is_empty() && r.capacity() >= n);
        }
    }
}
