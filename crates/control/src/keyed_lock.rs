//! Async locks by key (a VM; a balancer and a VM), made on first use and dropped when nobody holds
//! or waits for one, so that work on one key waits only for work on the same key.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

/// A set of async locks, one per key.
#[derive(Debug)]
pub struct KeyedLocks<K> {
    locks: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K: Eq + Hash + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self {
            locks: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// Waits for the lock of `key`; it is held until the guard drops.
    pub async fn lock(&self, key: &K) -> KeyGuard<'_, K> {
        let lock = self.locks.lock().entry(key.clone()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        KeyGuard {
            locks: self,
            key: key.clone(),
            lock,
            guard: Some(guard),
        }
    }

    /// Keys with a lock held or awaited.
    pub fn len(&self) -> usize {
        self.locks.lock().len()
    }

    /// Whether no lock is held or awaited.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A held lock; the key's entry goes away with the last guard.
#[derive(Debug)]
pub struct KeyGuard<'a, K: Eq + Hash + Clone> {
    locks: &'a KeyedLocks<K>,
    key: K,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash + Clone> Drop for KeyGuard<'_, K> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.locks.locks.lock();
        // The map's copy and ours: nobody else holds or waits for it (copies are made under the
        // map's mutex, which is held here).
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn different_keys_never_wait_and_entries_go_away() {
        let locks: KeyedLocks<u32> = KeyedLocks::default();
        let a = locks.lock(&1).await;
        let b = tokio::time::timeout(Duration::from_millis(100), locks.lock(&2))
            .await
            .expect("another key is free");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), locks.lock(&1))
                .await
                .is_err(),
            "the same key waits"
        );
        drop(a);
        drop(b);
        assert!(locks.is_empty());
    }
}
