//! A set of connection ids that stays small for the common case.
//!
//! Runs on: one shard (inside the hub). Most users have one or two connections and many
//! topics have a handful of subscribers: those sets are a short inline-scanned `Vec`
//! (no hashing, one small allocation: an idle connection's user entry costs what a plain
//! `Vec` would). Past [`INLINE_MAX`] members the set becomes a hash set, so joining or
//! leaving a topic of 100,000 subscribers costs O(1), not a scan.

use std::collections::HashSet;

use super::ConnId;

/// Members kept in a scanned `Vec`: a scan of 16 `u32`s is cheaper than hashing one.
const INLINE_MAX: usize = 16;

/// A set of [`ConnId`]s.
#[derive(Debug)]
pub(crate) enum ConnSet {
    /// Up to [`INLINE_MAX`] members, unordered.
    Few(Vec<ConnId>),
    /// More (boxed: the set stays as small as a `Vec` in every hub entry).
    #[allow(clippy::box_collection, reason = "one pointer instead of 48 bytes in every set")]
    Many(Box<HashSet<ConnId>>),
}

impl Default for ConnSet {
    fn default() -> ConnSet {
        ConnSet::Few(Vec::new())
    }
}

impl ConnSet {
    /// Whether `id` is a member.
    pub(crate) fn contains(&self, id: ConnId) -> bool {
        match self {
            ConnSet::Few(v) => v.contains(&id),
            ConnSet::Many(s) => s.contains(&id),
        }
    }

    /// Adds `id`; `false` when it already was a member.
    pub(crate) fn insert(&mut self, id: ConnId) -> bool {
        match self {
            ConnSet::Few(v) if v.contains(&id) => false,
            ConnSet::Few(v) if v.len() < INLINE_MAX => {
                v.push(id);
                true
            }
            ConnSet::Few(v) => {
                let mut set: HashSet<ConnId> = v.drain(..).collect();
                set.insert(id);
                *self = ConnSet::Many(Box::new(set));
                true
            }
            ConnSet::Many(s) => s.insert(id),
        }
    }

    /// Removes `id`; `false` when it was not a member.
    pub(crate) fn remove(&mut self, id: ConnId) -> bool {
        match self {
            ConnSet::Few(v) => match v.iter().position(|c| *c == id) {
                Some(at) => {
                    v.swap_remove(at);
                    true
                }
                None => false,
            },
            ConnSet::Many(s) => {
                let removed = s.remove(&id);
                if s.len() <= INLINE_MAX / 2 {
                    // Back to the small form (half the threshold: no flapping at the edge).
                    *self = ConnSet::Few(s.drain().collect());
                } else if s.capacity() > 4 * s.len().max(64) {
                    // A mass leave must not pin the peak's table.
                    s.shrink_to_fit();
                }
                removed
            }
        }
    }

    /// Number of members.
    pub(crate) fn len(&self) -> usize {
        match self {
            ConnSet::Few(v) => v.len(),
            ConnSet::Many(s) => s.len(),
        }
    }

    /// No members.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = ConnId> + '_ {
        let (few, many) = match self {
            ConnSet::Few(v) => (Some(v.iter().copied()), None),
            ConnSet::Many(s) => (None, Some(s.iter().copied())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_a_hash_set_and_back() {
        let mut set = ConnSet::default();
        for i in 0..100 {
            assert!(set.insert(ConnId(i)));
            assert!(!set.insert(ConnId(i)));
        }
        assert!(matches!(set, ConnSet::Many(_)));
        assert_eq!(set.len(), 100);
        for i in 0..95 {
            assert!(set.remove(ConnId(i)));
            assert!(!set.remove(ConnId(i)));
        }
        assert!(matches!(set, ConnSet::Few(_)));
        let mut left: Vec<u32> = set.iter().map(|c| c.0).collect();
        left.sort_unstable();
        assert_eq!(left, [95, 96, 97, 98, 99]);
    }
}
