//! Page locking for secrets on the heap, counted per page.
//!
//! `mlock(2)` works on whole pages, and the kernel does not count: one `munlock` unlocks a
//! page however many `mlock` calls covered it. Two secrets that share a page (two small boxed
//! keys, two users' private keys) would each lock and unlock it, and dropping one would leave
//! the other swappable while it is still in use. Every lock here goes through one table of
//! per-page counts instead.
//!
//! **Invariant** (kept under the table's mutex, so that a count and the system call that
//! goes with it change together): a page has an entry exactly while at least one live
//! [`PageLock`] covers it; the entry's `count` is the number of those locks, and `locked`
//! says whether our `mlock` of it succeeded. A page is `munlock`ed only when its count drops
//! to zero, so no lock ends while another one covering the same page lives.
//!
//! Locking is best effort: without `CAP_IPC_LOCK`, `RLIMIT_MEMLOCK` bounds it. A page whose
//! `mlock` failed is tried again by the next lock that covers it.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{LazyLock, Mutex, MutexGuard};

/// The system calls, behind a trait so that the counting can be tested without them.
trait Pager {
    /// Locks page number `page` (its address divided by the page size); true on success.
    fn lock(&mut self, page: usize) -> bool;
    fn unlock(&mut self, page: usize);
    fn page_size(&self) -> usize;
}

struct Entry {
    count: usize,
    locked: bool,
}

struct Pages<P> {
    pager: P,
    entries: HashMap<usize, Entry>,
}

impl<P: Pager> Pages<P> {
    fn new(pager: P) -> Self {
        Pages {
            pager,
            entries: HashMap::new(),
        }
    }

    /// Pages `first..first + count` gain one lock each.
    fn acquire(&mut self, first: usize, count: usize) {
        for page in first..first + count {
            let entry = self.entries.entry(page).or_insert(Entry {
                count: 0,
                locked: false,
            });
            entry.count += 1;
            if !entry.locked {
                entry.locked = self.pager.lock(page);
            }
        }
    }

    /// Pages `first..first + count` lose one lock each; the last one out unlocks.
    fn release(&mut self, first: usize, count: usize) {
        for page in first..first + count {
            let Some(entry) = self.entries.get_mut(&page) else {
                debug_assert!(false, "page {page} released more often than acquired");
                continue;
            };
            entry.count -= 1;
            if entry.count == 0 {
                if entry.locked {
                    self.pager.unlock(page);
                }
                self.entries.remove(&page);
            }
        }
    }
}

/// `mlock` and `munlock` of one page.
struct Kernel {
    page_size: usize,
}

impl Pager for Kernel {
    fn lock(&mut self, page: usize) -> bool {
        let addr = (page * self.page_size) as *const libc::c_void;
        // SAFETY: mlock reads and writes no memory; it only pins the pages of the range, and
        // an address that is not mapped makes it fail with ENOMEM. Any address is sound.
        let ok = unsafe { libc::mlock(addr, self.page_size) } == 0;
        if !ok {
            log::debug!(
                "mlock of a page holding a secret: {}",
                std::io::Error::last_os_error()
            );
        }
        ok
    }

    fn unlock(&mut self, page: usize) {
        let addr = (page * self.page_size) as *const libc::c_void;
        // SAFETY: like mlock, munlock touches no memory and fails harmlessly on an address
        // that is not mapped.
        unsafe { libc::munlock(addr, self.page_size) };
    }

    fn page_size(&self) -> usize {
        self.page_size
    }
}

static PAGES: LazyLock<Mutex<Pages<Kernel>>> = LazyLock::new(|| {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Mutex::new(Pages::new(Kernel {
        page_size: usize::try_from(size).unwrap_or(4096).max(1),
    }))
});

fn pages() -> MutexGuard<'static, Pages<Kernel>> {
    // Each change to the table is complete before anything can panic, so a poisoned table is
    // still consistent.
    crate::sync::lock(&PAGES)
}

/// The page numbers `(first, count)` that bytes `addr..addr + len` lie on.
fn span(addr: usize, len: usize, page_size: usize) -> (usize, usize) {
    if len == 0 {
        return (addr / page_size, 0);
    }
    let first = addr / page_size;
    let last = (addr + (len - 1)) / page_size;
    (first, last - first + 1)
}

/// Keeps the pages under one value locked in memory until dropped.
pub(crate) struct PageLock {
    first: usize,
    count: usize,
}

impl PageLock {
    /// Locks the pages holding `value`. The lock should not outlive the value's allocation:
    /// that is harmless (the pages just stay locked a little longer), but pointless.
    pub(crate) fn covering<T: ?Sized>(value: &T) -> PageLock {
        let mut table = pages();
        let addr = (value as *const T).cast::<u8>() as usize;
        let (first, count) = span(addr, std::mem::size_of_val(value), table.pager.page_size());
        table.acquire(first, count);
        PageLock { first, count }
    }
}

impl Drop for PageLock {
    fn drop(&mut self) {
        pages().release(self.first, self.count);
    }
}

/// A value in a heap allocation of its own whose pages stay locked in memory while it lives.
/// Moving a `Locked` moves only the pointer, so a map of them can grow and rehash without
/// leaving copies of the values in freed memory. The value's own `Drop` wipes it (hold
/// zeroizing types), before its pages are unlocked.
pub(crate) struct Locked<T> {
    // Field order matters: the value is dropped (and wiped) while its pages are still locked.
    value: Box<T>,
    _pages: PageLock,
}

impl<T> Locked<T> {
    /// Moves `value` into its own allocation and locks it there. (The copy `value` was passed
    /// in is the caller's to keep short-lived: Rust moves do not wipe their source.)
    pub(crate) fn new(value: T) -> Self {
        let value = Box::new(value);
        let pages = PageLock::covering(&*value);
        Locked {
            value,
            _pages: pages,
        }
    }
}

impl<T> Deref for Locked<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the calls; refuses to lock the pages in `refuse`.
    #[derive(Default)]
    struct Fake {
        locks: Vec<usize>,
        unlocks: Vec<usize>,
        refuse: Vec<usize>,
    }

    impl Pager for Fake {
        fn lock(&mut self, page: usize) -> bool {
            self.locks.push(page);
            !self.refuse.contains(&page)
        }

        fn unlock(&mut self, page: usize) {
            self.unlocks.push(page);
        }

        fn page_size(&self) -> usize {
            4096
        }
    }

    #[test]
    fn a_shared_page_stays_locked_until_its_last_user_goes() {
        let mut pages = Pages::new(Fake::default());
        pages.acquire(7, 1);
        pages.acquire(7, 1);
        assert_eq!(pages.pager.locks, [7], "locked once, counted twice");
        pages.release(7, 1);
        assert!(
            pages.pager.unlocks.is_empty(),
            "the other lock still covers page 7"
        );
        assert_eq!(pages.entries[&7].count, 1);
        pages.release(7, 1);
        assert_eq!(pages.pager.unlocks, [7]);
        assert!(pages.entries.is_empty());
    }

    #[test]
    fn overlapping_ranges_count_each_page() {
        let mut pages = Pages::new(Fake::default());
        pages.acquire(1, 3); // pages 1, 2, 3
        pages.acquire(3, 2); // pages 3, 4
        assert_eq!(pages.pager.locks, [1, 2, 3, 4]);
        pages.release(1, 3);
        assert_eq!(pages.pager.unlocks, [1, 2]);
        let mut left: Vec<_> = pages.entries.keys().copied().collect();
        left.sort();
        assert_eq!(left, [3, 4]);
        pages.release(3, 2);
        assert_eq!(pages.pager.unlocks, [1, 2, 3, 4]);
    }

    #[test]
    fn a_failed_lock_is_retried_and_never_unlocked() {
        let mut pages = Pages::new(Fake {
            refuse: vec![5],
            ..Fake::default()
        });
        pages.acquire(5, 1);
        assert!(!pages.entries[&5].locked);
        pages.pager.refuse.clear();
        pages.acquire(5, 1);
        assert!(pages.entries[&5].locked, "the second lock retries");
        assert_eq!(pages.pager.locks, [5, 5]);
        pages.release(5, 1);
        pages.release(5, 1);
        assert_eq!(pages.pager.unlocks, [5]);

        pages.pager.refuse.push(6);
        pages.acquire(6, 1);
        pages.release(6, 1);
        assert_eq!(pages.pager.unlocks, [5], "page 6 was never locked");
    }

    #[test]
    fn spans_cover_every_byte() {
        assert_eq!(span(0, 1, 4096), (0, 1));
        assert_eq!(span(4095, 1, 4096), (0, 1));
        assert_eq!(span(4095, 2, 4096), (0, 2));
        assert_eq!(span(8192, 4096, 4096), (2, 1));
        assert_eq!(span(8192, 4097, 4096), (2, 2));
        assert_eq!(span(100, 0, 4096), (0, 0));
    }

    #[test]
    fn locked_values_register_their_pages_and_leave_no_entry() {
        let page_size = pages().pager.page_size();
        let a = Locked::new([1u8; 32]);
        let b = Locked::new([2u8; 32]);
        let page_of = |v: &[u8; 32]| v.as_ptr() as usize / page_size;
        let (pa, pb) = (page_of(&a), page_of(&b));
        let count = |page| pages().entries.get(&page).map_or(0, |e| e.count);
        assert!(count(pa) >= 1 && count(pb) >= 1);
        if pa == pb {
            assert!(count(pa) >= 2, "both values count on their shared page");
        }
        assert_eq!(*a, [1u8; 32]);
        drop(a);
        assert!(count(pb) >= 1, "dropping one value keeps the other's page");
        drop(b);
        // Nothing else in these tests locks memory, so both entries are gone.
        assert_eq!((count(pa), count(pb)), (0, 0));
    }
}
