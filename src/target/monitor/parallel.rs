//! Work on several address spaces at once, one host thread per core: the
//! insight commands over a guest with many processes.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// `work` applied to every item, on up to one thread per core (each takes
/// the next item not yet taken, so a few large items do not leave a core
/// idle); the results in the items' order, whatever ran where.
pub(crate) fn map_in_parallel<I, T, W>(items: &[I], work: W) -> Vec<T>
where
    I: Sync,
    T: Send,
    W: Fn(&I) -> T + Sync,
{
    let threads = thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(work).collect();
    }
    let next = AtomicUsize::new(0);
    let take = || {
        let mut done = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(index) else {
                return done;
            };
            done.push((index, work(item)));
        }
    };
    let mut results: Vec<(usize, T)> = thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(take)).collect();
        let mut all = take();
        for helper in helpers {
            match helper.join() {
                Ok(done) => all.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    results.sort_unstable_by_key(|&(index, _)| index);
    results.into_iter().map(|(_, result)| result).collect()
}

/// Below this many items a sort stays on one thread.
const PARALLEL_SORT_MIN: usize = 1 << 16;

/// Sort `items` (a total order: equal items are the same) on up to one
/// thread per core: each sorts a part, then the parts are merged.
pub(crate) fn sort_in_parallel<T: Ord + Copy + Send>(items: &mut Vec<T>) {
    let threads = thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(items.len() / PARALLEL_SORT_MIN);
    if threads <= 1 {
        items.sort_unstable();
        return;
    }
    let mut width = items.len().div_ceil(threads);
    thread::scope(|scope| {
        for part in items.chunks_mut(width) {
            scope.spawn(move || part.sort_unstable());
        }
    });
    let mut merged = Vec::with_capacity(items.len());
    while width < items.len() {
        merged.clear();
        for pair in items.chunks(2 * width) {
            let (a, b) = pair.split_at(width.min(pair.len()));
            merge(a, b, &mut merged);
        }
        std::mem::swap(items, &mut merged);
        width *= 2;
    }
}

/// Append the sorted `a` and `b` to `out`, in order.
fn merge<T: Ord + Copy>(a: &[T], b: &[T], out: &mut Vec<T>) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if b[j] < a[i] {
            out.push(b[j]);
            j += 1;
        } else {
            out.push(a[i]);
            i += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
}

#[cfg(test)]
mod tests {
    use super::{map_in_parallel, sort_in_parallel};

    #[test]
    fn a_parallel_sort_sorts() {
        for len in [0, 1, 5, 1 << 16, 3 << 17, (1 << 18) + 7] {
            let mut items: Vec<u64> = (0..len as u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect();
            let mut expected = items.clone();
            expected.sort_unstable();
            sort_in_parallel(&mut items);
            assert_eq!(items, expected, "{len} items");
        }
    }

    #[test]
    fn results_come_in_the_items_order() {
        let items: Vec<u64> = (0..1000).collect();
        let squares = map_in_parallel(&items, |&n| n * n);
        assert_eq!(squares, items.iter().map(|n| n * n).collect::<Vec<_>>());
        assert!(map_in_parallel(&[] as &[u64], |&n| n).is_empty());
    }
}
