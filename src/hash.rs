//! The default hasher, kept opaque so it can change without breaking users.

use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// The default [`BuildHasher`]: foldhash, randomly seeded per cache, so keys
/// crafted to collide in one process do not collide in another.
///
/// ```
/// use std::hash::BuildHasher;
/// let a = larder::DefaultHashBuilder::default();
/// let b = larder::DefaultHashBuilder::default();
/// assert_ne!(a.hash_one(42u64), b.hash_one(42u64)); // seeded per instance
/// ```
#[derive(Clone, Default)]
pub struct DefaultHashBuilder(foldhash::fast::RandomState);

impl fmt::Debug for DefaultHashBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DefaultHashBuilder")
    }
}

impl BuildHasher for DefaultHashBuilder {
    type Hasher = DefaultHasher;

    #[inline]
    fn build_hasher(&self) -> DefaultHasher {
        DefaultHasher(self.0.build_hasher())
    }
}

/// The [`Hasher`] built by [`DefaultHashBuilder`].
pub struct DefaultHasher(foldhash::fast::FoldHasher<'static>);

impl fmt::Debug for DefaultHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DefaultHasher")
    }
}

impl Hasher for DefaultHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0.finish()
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes)
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0.write_u8(i)
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.0.write_u16(i)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.0.write_u32(i)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0.write_u64(i)
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.0.write_u128(i)
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.0.write_usize(i)
    }
}
