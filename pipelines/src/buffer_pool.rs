//! Recycled sample buffers for a source's batches. A 385-channel probe fills a 231 KB buffer every
//! 10 ms, and whichever consumer drops the batch last frees it, on another thread; allocated
//! afresh each time, the buffers came from pages the kernel had to zero on first touch (a sixth
//! of an end-to-end detection run). Here a buffer goes back to its source's pool when Arrow drops
//! the last reference to it, and the next batch reuses it.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use arrow::buffer::Buffer;

/// Free buffers kept for reuse; beyond that they are freed (a pool never holds more than this
/// many batches' worth of memory).
const KEPT: usize = 8;

#[derive(Debug, Default)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<i16>>>,
}

impl BufferPool {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A vector of `len` values, recycled when one is free. Its contents are whatever the last
    /// user left: the caller overwrites every value.
    pub fn take(&self, len: usize) -> Vec<i16> {
        let mut v = self.lock().pop().unwrap_or_default();
        // Only values past the recycled length are written here (as zeros).
        v.resize(len, 0);
        v
    }

    /// An Arrow buffer over `values` that comes back to this pool when its last user drops it.
    pub fn share(self: &Arc<Self>, values: Vec<i16>) -> Buffer {
        let len = std::mem::size_of_val(values.as_slice());
        let ptr = NonNull::from(values.as_slice()).cast::<u8>();
        let owner = Arc::new(Pooled {
            values,
            pool: Arc::clone(self),
        });
        // SAFETY: `ptr` points at `len` initialised bytes owned by `owner.values`, which is
        // neither moved (the Vec's heap block stays put inside the Arc) nor changed until the
        // owner drops, after the buffer's last reference.
        unsafe { Buffer::from_custom_allocation(ptr, len, owner) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<i16>>> {
        // A panic elsewhere while holding the lock leaves a list of whole vectors: still usable.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Pooled {
    values: Vec<i16>,
    pool: Arc<BufferPool>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let values = std::mem::take(&mut self.values);
        let mut free = self.pool.lock();
        if free.len() < KEPT {
            free.push(values);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int16Array;
    use arrow::buffer::ScalarBuffer;

    #[test]
    fn a_buffer_returns_when_its_last_array_drops() {
        let pool = BufferPool::new();
        let mut v = pool.take(6);
        v.copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        let block = v.as_ptr();
        let buffer = pool.share(v);
        let second = Int16Array::new(ScalarBuffer::new(buffer.clone(), 3, 3), None);
        drop(buffer);
        assert!(pool.lock().is_empty(), "still in use by `second`");
        assert_eq!(second.values().as_ref(), &[4, 5, 6]);
        drop(second);
        let again = pool.take(4);
        assert_eq!(again.as_ptr(), block, "the same allocation, reused");
        assert_eq!(again, [1, 2, 3, 4]);
        assert_eq!(pool.take(2), [0, 0], "a new one once the pool is empty");
    }

    #[test]
    fn keeps_at_most_a_few_free_buffers() {
        let pool = BufferPool::new();
        let shared: Vec<Buffer> = (0..KEPT + 5).map(|_| pool.share(pool.take(10))).collect();
        drop(shared);
        assert_eq!(pool.lock().len(), KEPT);
    }
}
