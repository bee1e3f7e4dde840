//! Smooth weighted round robin: each pick takes the next slot of the weighted schedule through
//! one atomic cursor, so concurrent picks never take a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Picks the next slot of `schedule` whose backend is not excluded.
#[inline]
pub fn pick(schedule: &[u32], cursor: &AtomicU64, excluded: &[usize]) -> Option<usize> {
    let len = schedule.len() as u64;
    if len == 0 {
        return None;
    }
    let start = cursor.fetch_add(1, Ordering::Relaxed);
    if excluded.is_empty() {
        return Some(schedule[(start % len) as usize] as usize);
    }
    (0..len)
        .map(|step| schedule[((start + step) % len) as usize] as usize)
        .find(|index| !excluded.contains(index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::schedule;

    #[test]
    fn shares_follow_weights_exactly_over_a_period() {
        let table = schedule::build(&[1.0, 1.0, 2.0]);
        let cursor = AtomicU64::new(0);
        let mut counts = [0usize; 3];
        for _ in 0..table.len() * 4 {
            counts[pick(&table, &cursor, &[]).unwrap()] += 1;
        }
        assert_eq!(counts[0], counts[1]);
        assert_eq!(counts[2], counts[0] * 2);
    }
}
