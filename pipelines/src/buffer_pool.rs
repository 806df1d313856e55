//! Recycled buffers for a source's batches. A 385-channel probe fills a 231 KB buffer every
//! 10 ms, and whichever consumer drops the batch last frees it, on another thread; allocated
//! afresh each time, the buffers came from pages the kernel had to zero on first touch (a sixth
//! of an end-to-end detection run). Here a buffer goes back to its source's pool when Arrow drops
//! the last reference to it, and the next batch reuses it. The file sources pool de-interleaved
//! samples (`i16`), `arrow_ipc` the messages it reads off the wire (`u8`), which the decoded
//! batches point into.

use std::panic::RefUnwindSafe;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use arrow::buffer::Buffer;
use arrow::datatypes::ArrowNativeType;

/// Free buffers kept for reuse; beyond that they are freed (a pool never holds more than this
/// many batches' worth of memory).
const KEPT: usize = 8;

#[derive(Debug)]
pub struct BufferPool<T = i16> {
    free: Mutex<Vec<Vec<T>>>,
}

impl<T: ArrowNativeType + RefUnwindSafe> BufferPool<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(BufferPool {
            free: Mutex::new(Vec::new()),
        })
    }

    /// A vector of `len` values, recycled when one is free. Its contents are whatever the last
    /// user left: the caller overwrites every value.
    pub fn take(&self, len: usize) -> Vec<T> {
        let mut v = self.lock().pop().unwrap_or_default();
        // Only values past the recycled length are written here (as zeros).
        v.resize(len, T::default());
        v
    }

    /// An Arrow buffer over `values` that comes back to this pool when its last user drops it.
    pub fn share(self: &Arc<Self>, values: Vec<T>) -> Buffer {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<T>>> {
        // A panic elsewhere while holding the lock leaves a list of whole vectors: still usable.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Pooled<T: ArrowNativeType + RefUnwindSafe> {
    values: Vec<T>,
    pool: Arc<BufferPool<T>>,
}

impl<T: ArrowNativeType + RefUnwindSafe> Drop for Pooled<T> {
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
        let pool = BufferPool::<i16>::new();
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
    fn a_message_buffer_comes_back_empty_with_its_capacity() {
        let pool = BufferPool::<u8>::new();
        let mut message = pool.take(0);
        message.extend_from_slice(&[7; 1000]);
        let block = message.as_ptr();
        let body = pool.share(message).slice_with_length(8, 16);
        drop(body);
        let again = pool.take(0);
        assert_eq!((again.as_ptr(), again.len()), (block, 0));
        assert!(again.capacity() >= 1000);
    }

    #[test]
    fn keeps_at_most_a_few_free_buffers() {
        let pool = BufferPool::<i16>::new();
        let shared: Vec<Buffer> = (0..KEPT + 5).map(|_| pool.share(pool.take(10))).collect();
        drop(shared);
        assert_eq!(pool.lock().len(), KEPT);
    }
}
