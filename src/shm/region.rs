//! A region: a base pointer and a length over memory that other processes may share.
//!
//! The lock-free cores see shared memory only through this type. It hands out atomics at
//! offsets (bounds- and alignment-checked) and copies payload bytes in and out; it never forms
//! a `&[u8]` over bytes except through the `unsafe` accessors whose callers promise that the
//! protocol gives them ownership of those bytes.
//!
//! Under `cfg(loom)` the region is a heap model: one loom atomic per 8-byte word (and per
//! 4-byte word for 32-bit atomics), and one loom `UnsafeCell` per payload byte, so the model
//! checker sees every access and reports data races on payloads.

#[cfg(not(loom))]
pub use self::mapped::Region;
#[cfg(loom)]
pub use self::model::Region;

#[cfg(not(loom))]
mod mapped {
    use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use std::ptr::NonNull;
    use std::sync::Arc;

    /// The panic of an access outside the region (a bug in shmq: offsets come from validated
    /// geometry), out of line so that each access inlines to a compare and a branch.
    #[cold]
    #[inline(never)]
    fn outside(off: usize, size: usize, len: usize) -> ! {
        panic!("shmq internal error: access at {off}+{size} outside a region of {len} bytes")
    }

    /// Shared memory: a base pointer, a length, and whatever keeps the memory mapped.
    #[derive(Clone)]
    pub struct Region {
        base: NonNull<u8>,
        len: usize,
        hints: CacheHints,
        _owner: Arc<dyn Send + Sync>,
    }

    /// The cache-line hints this CPU carries out: each is a hint (it reads and writes no
    /// memory, never faults and changes no result), given only where CPUID says the CPU has
    /// it. Read once per process.
    #[derive(Clone, Copy, Default)]
    struct CacheHints {
        /// `PREFETCHW`: fetch a line for writing, invalidating other cores' copies.
        prefetchw: bool,
        /// `CLDEMOTE`: move a line from this core's private caches to the shared one.
        cldemote: bool,
    }

    /// Which cache-line hint to give (see [`Region::hint`]).
    #[derive(Clone, Copy)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    enum Hint {
        Write,
        Read,
        Demote,
    }

    impl CacheHints {
        fn of_this_cpu() -> Self {
            static HINTS: std::sync::OnceLock<CacheHints> = std::sync::OnceLock::new();
            *HINTS.get_or_init(|| {
                #[cfg(target_arch = "x86_64")]
                {
                    use std::arch::x86_64::{__cpuid, __cpuid_count};
                    // The functions are safe in recent Rust, unsafe in the oldest we support.
                    #[allow(unused_unsafe)]
                    // SAFETY: CPUID exists on every x86_64 CPU, and leaves 0 and 80000000H
                    // (the highest leaves it reports) on every one.
                    let (max, max_ext) = unsafe { (__cpuid(0).eax, __cpuid(0x8000_0000).eax) };
                    #[allow(unused_unsafe)]
                    // SAFETY: as above, for leaves the CPU reports.
                    let (l7, e1) = unsafe {
                        (
                            (max >= 7).then(|| __cpuid_count(7, 0).ecx),
                            (max_ext >= 0x8000_0001).then(|| __cpuid(0x8000_0001).ecx),
                        )
                    };
                    CacheHints {
                        // CPUID.80000001H:ECX.PRFCHW[bit 8]; CPUID.(EAX=07H,ECX=0):ECX.CLDEMOTE[bit 25].
                        prefetchw: e1.is_some_and(|ecx| ecx & (1 << 8) != 0),
                        cldemote: l7.is_some_and(|ecx| ecx & (1 << 25) != 0),
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                CacheHints::default()
            })
        }
    }

    // SAFETY: a Region only hands out atomics (Sync) and raw copies whose callers uphold the
    // ownership protocol; the memory it points to is kept alive by `_owner`, which is itself
    // Send + Sync.
    unsafe impl Send for Region {}
    // SAFETY: as above; all shared mutation goes through atomics or owned slot bytes.
    unsafe impl Sync for Region {}

    impl Region {
        /// A region over `len` bytes at `base`, kept valid by `owner`.
        ///
        /// # Safety
        /// `base` must be 8-byte aligned and valid for reads and writes of `len` bytes for as
        /// long as `owner` is alive, and those bytes must only be accessed through atomics or by
        /// whoever the shmq protocol makes their owner.
        pub unsafe fn new(base: NonNull<u8>, len: usize, owner: Arc<dyn Send + Sync>) -> Self {
            debug_assert_eq!(base.as_ptr() as usize % 8, 0);
            Region {
                base,
                len,
                hints: CacheHints::of_this_cpu(),
                _owner: owner,
            }
        }

        /// A zeroed region on the heap, for tests and in-process queues.
        #[cfg_attr(not(test), allow(dead_code))]
        pub fn heap(len: usize) -> Self {
            let words: Arc<[AtomicU64]> = (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect();
            let base = NonNull::new(words.as_ptr() as *mut u8).expect("Arc data is never null");
            // SAFETY: the Arc'd slice of AtomicU64 is 8-aligned, at least `len` bytes long, lives
            // as long as the Arc stored as owner, and is interior-mutable (atomics).
            unsafe { Region::new(base, len, Arc::new(words)) }
        }

        /// Length in bytes.
        pub fn len(&self) -> usize {
            self.len
        }

        #[inline]
        fn ptr(&self, off: usize, size: usize, align: usize) -> *mut u8 {
            if !(off % align == 0 && off.checked_add(size).is_some_and(|end| end <= self.len)) {
                outside(off, size, self.len);
            }
            // SAFETY: `off + size <= len` was just checked, so the result stays in the region.
            unsafe { self.base.as_ptr().add(off) }
        }

        /// The `n` 64-bit atomics from `off` (8-aligned, in bounds: checked).
        #[inline]
        pub fn u64_words(&self, off: usize, n: usize) -> &[AtomicU64] {
            let p = self.ptr(off, n * 8, 8);
            // SAFETY: as for `u64_at`, for `n` consecutive words, all in bounds (checked).
            unsafe { std::slice::from_raw_parts(p as *const AtomicU64, n) }
        }

        /// The 64-bit atomic at `off` (8-aligned, in bounds: checked).
        #[inline]
        pub fn u64_at(&self, off: usize) -> &AtomicU64 {
            let p = self.ptr(off, 8, 8);
            // SAFETY: `p` is in bounds, 8-aligned and valid while `self` lives; AtomicU64 has
            // the size and alignment of u64 and tolerates concurrent access from other processes.
            unsafe { &*(p as *const AtomicU64) }
        }

        /// The 32-bit atomic at `off` (4-aligned, in bounds: checked).
        #[inline]
        pub fn u32_at(&self, off: usize) -> &AtomicU32 {
            let p = self.ptr(off, 4, 4);
            // SAFETY: as for `u64_at`, with 4-byte size and alignment.
            unsafe { &*(p as *const AtomicU32) }
        }

        /// The 64-bit atomic at `off`, unchecked: for a caller that validated its offsets once
        /// (a ring's slot array) and must not pay a check per access.
        ///
        /// # Safety
        /// `off` is a multiple of 8 and `off + 8 <= self.len()`.
        #[inline]
        pub unsafe fn u64_at_unchecked(&self, off: usize) -> &AtomicU64 {
            debug_assert!(off % 8 == 0 && off + 8 <= self.len);
            let p = self.base.as_ptr().wrapping_add(off);
            // SAFETY: in bounds and aligned (the caller's contract), so as for `u64_at`.
            unsafe { &*(p as *const AtomicU64) }
        }

        /// The 32-bit atomic at `off`, unchecked (see [`u64_at_unchecked`](Self::u64_at_unchecked)).
        ///
        /// # Safety
        /// `off` is a multiple of 4 and `off + 4 <= self.len()`.
        #[inline]
        pub unsafe fn u32_at_unchecked(&self, off: usize) -> &AtomicU32 {
            debug_assert!(off % 4 == 0 && off + 4 <= self.len);
            let p = self.base.as_ptr().wrapping_add(off);
            // SAFETY: in bounds and aligned (the caller's contract), so as for `u32_at`.
            unsafe { &*(p as *const AtomicU32) }
        }

        /// A hint that this thread will soon write the cache line holding byte `off`: its
        /// transfer (and the invalidation of other cores' copies) starts now, beside the
        /// caller's next accesses, instead of stalling a later locked instruction, which
        /// waits for every earlier store. Nothing outside the region, or without `PREFETCHW`.
        #[inline]
        pub fn prefetch_for_write(&self, off: usize) {
            self.hint(Hint::Write, off);
        }

        /// A hint that this thread will soon read the cache line holding byte `off`
        /// (`PREFETCHT0`, which every x86_64 CPU has). Nothing outside the region.
        #[inline]
        pub fn prefetch(&self, off: usize) {
            self.hint(Hint::Read, off);
        }

        /// A hint that another core reads the cache line holding byte `off` next: the line
        /// moves from this core's private caches to the shared last-level cache, where that
        /// core's miss finds it sooner than in this core's. Nothing outside the region, or
        /// without `CLDEMOTE`.
        #[inline]
        pub fn demote(&self, off: usize) {
            self.hint(Hint::Demote, off);
        }

        /// Gives `hint` for the line holding byte `off`, if it lies in the region and the CPU
        /// has the instruction (`hint` is a constant at every call, so this folds to one).
        #[inline]
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
        fn hint(&self, hint: Hint, off: usize) {
            #[cfg(target_arch = "x86_64")]
            if off < self.len {
                use std::arch::asm;
                let p = self.base.as_ptr().wrapping_add(off);
                // Each instruction below only moves a cache line between caches: it reads no
                // memory into a register, writes none (so it changes nothing another process
                // sees, and no result), and never faults; `p` is inside the mapping (checked).
                match hint {
                    // SAFETY: as above; this CPU has PREFETCHW (`CacheHints`).
                    Hint::Write if self.hints.prefetchw => unsafe {
                        asm!("prefetchw [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly))
                    },
                    // SAFETY: as above; every x86_64 CPU has PREFETCHT0.
                    Hint::Read => unsafe {
                        asm!("prefetcht0 [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly))
                    },
                    // SAFETY: as above; this CPU has CLDEMOTE (`CacheHints`).
                    Hint::Demote if self.hints.cldemote => unsafe {
                        asm!("cldemote [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly))
                    },
                    _ => {}
                }
            }
        }

        /// Copies `src` into the region at `off`.
        ///
        /// # Safety
        /// The caller must own `off..off + src.len()` under the protocol: no other process or
        /// thread reads or writes those bytes until the caller publishes them with a Release store.
        #[inline]
        pub unsafe fn write(&self, off: usize, src: &[u8]) {
            let p = self.ptr(off, src.len(), 1);
            // SAFETY: `p..p+len` is in bounds (checked) and owned by the caller (contract), so
            // nobody else accesses it; `src` is a distinct, valid slice.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        }

        /// Stores `src` at `off` (8-aligned) as relaxed 64-bit atomic stores; the last word is
        /// zero-padded, so `round_up(src.len(), 8)` bytes are written.
        ///
        /// For seqlock-style sharing, where readers may copy while a writer overwrites: racing
        /// atomic accesses are defined behaviour, and readers validate what they copied.
        #[inline]
        pub fn store_words(&self, off: usize, src: &[u8]) {
            let mut chunks = src.chunks_exact(8);
            let mut at = off;
            for chunk in &mut chunks {
                let word = u64::from_ne_bytes(chunk.try_into().expect("chunks_exact(8)"));
                self.u64_at(at).store(word, Ordering::Relaxed);
                at += 8;
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                let mut last = [0u8; 8];
                last[..rest.len()].copy_from_slice(rest);
                self.u64_at(at)
                    .store(u64::from_ne_bytes(last), Ordering::Relaxed);
            }
        }

        /// Loads `dst.len()` bytes at `off` (8-aligned) with relaxed 64-bit atomic loads;
        /// `round_up(dst.len(), 8)` bytes are read. The result may be torn if a writer raced:
        /// the caller validates it afterwards.
        #[inline]
        pub fn load_words(&self, off: usize, dst: &mut [u8]) {
            let mut chunks = dst.chunks_exact_mut(8);
            let mut at = off;
            for chunk in &mut chunks {
                chunk.copy_from_slice(&self.u64_at(at).load(Ordering::Relaxed).to_ne_bytes());
                at += 8;
            }
            let rest = chunks.into_remainder();
            if !rest.is_empty() {
                let n = rest.len();
                rest.copy_from_slice(&self.u64_at(at).load(Ordering::Relaxed).to_ne_bytes()[..n]);
            }
        }

        /// The bytes at `off..off + len` as a slice, for zero-copy receive.
        ///
        /// # Safety
        /// The caller must own those bytes for the slice's whole lifetime `'a`: nobody writes them
        /// until the caller gives the slot back, and `'a` must not outlive the region.
        #[inline]
        pub unsafe fn slice<'a>(&self, off: usize, len: usize) -> &'a [u8] {
            let p = self.ptr(off, len, 1);
            // SAFETY: in bounds (checked); immutable while owned (contract); lifetime (contract).
            unsafe { std::slice::from_raw_parts(p, len) }
        }

        /// The bytes at `off..off + len` as a mutable slice, for zero-copy send.
        ///
        /// # Safety
        /// As for [`Region::slice`], and the caller is the only one with any reference to them.
        #[inline]
        #[allow(clippy::mut_from_ref)]
        pub unsafe fn slice_mut<'a>(&self, off: usize, len: usize) -> &'a mut [u8] {
            let p = self.ptr(off, len, 1);
            // SAFETY: in bounds (checked); exclusively owned for `'a` (contract).
            unsafe { std::slice::from_raw_parts_mut(p, len) }
        }
    }
}

#[cfg(loom)]
mod model {
    use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use loom::cell::UnsafeCell;
    use std::sync::Arc;

    struct Words {
        w64: Box<[AtomicU64]>,
        w32: Box<[AtomicU32]>,
        bytes: Box<[UnsafeCell<u8>]>,
    }

    /// The loom model of a region: every word and byte tracked by the model checker.
    #[derive(Clone)]
    pub struct Region {
        words: Arc<Words>,
        len: usize,
    }

    impl Region {
        /// A zeroed model region of `len` bytes.
        pub fn heap(len: usize) -> Self {
            let words = Words {
                w64: (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect(),
                w32: (0..len.div_ceil(4)).map(|_| AtomicU32::new(0)).collect(),
                bytes: (0..len).map(|_| UnsafeCell::new(0)).collect(),
            };
            Region {
                words: Arc::new(words),
                len,
            }
        }

        /// Length in bytes.
        pub fn len(&self) -> usize {
            self.len
        }

        pub fn u64_words(&self, off: usize, n: usize) -> &[AtomicU64] {
            assert!(off % 8 == 0 && off + 8 * n <= self.len);
            &self.words.w64[off / 8..off / 8 + n]
        }

        pub fn u64_at(&self, off: usize) -> &AtomicU64 {
            assert!(off % 8 == 0 && off + 8 <= self.len);
            &self.words.w64[off / 8]
        }

        pub fn u32_at(&self, off: usize) -> &AtomicU32 {
            assert!(off % 4 == 0 && off + 4 <= self.len);
            &self.words.w32[off / 4]
        }

        /// # Safety
        /// None needed in the model (checked), kept `unsafe` to match the mapped region.
        pub unsafe fn u64_at_unchecked(&self, off: usize) -> &AtomicU64 {
            self.u64_at(off)
        }

        /// # Safety
        /// As for `u64_at_unchecked`.
        pub unsafe fn u32_at_unchecked(&self, off: usize) -> &AtomicU32 {
            self.u32_at(off)
        }

        /// Cache hints: nothing to do in the model.
        pub fn prefetch_for_write(&self, _off: usize) {}

        pub fn prefetch(&self, _off: usize) {}

        pub fn demote(&self, _off: usize) {}

        pub fn store_words(&self, off: usize, src: &[u8]) {
            for (i, chunk) in src.chunks(8).enumerate() {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                self.u64_at(off + 8 * i)
                    .store(u64::from_ne_bytes(w), Ordering::Relaxed);
            }
        }

        pub fn load_words(&self, off: usize, dst: &mut [u8]) {
            for (i, chunk) in dst.chunks_mut(8).enumerate() {
                let w = self
                    .u64_at(off + 8 * i)
                    .load(Ordering::Relaxed)
                    .to_ne_bytes();
                let n = chunk.len();
                chunk.copy_from_slice(&w[..n]);
            }
        }

        /// # Safety
        /// As for the mapped region; loom checks it.
        pub unsafe fn write(&self, off: usize, src: &[u8]) {
            for (i, b) in src.iter().enumerate() {
                // SAFETY: loom's UnsafeCell checks exclusive access itself.
                self.words.bytes[off + i].with_mut(|p| unsafe { *p = *b });
            }
        }

        /// # Safety
        /// As for the mapped region; loom checks it.
        pub unsafe fn read(&self, off: usize, dst: &mut [u8]) {
            for (i, b) in dst.iter_mut().enumerate() {
                // SAFETY: loom's UnsafeCell checks that no write races with this read.
                *b = self.words.bytes[off + i].with(|p| unsafe { *p });
            }
        }
    }
}
