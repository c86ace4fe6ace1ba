//! A set of connection ids that stays small for the common case.
//!
//! Runs on: one shard (inside the hub). Most users have one or two connections and many
//! topics have a handful of subscribers: those sets are a short inline-scanned `Vec`
//! (no hashing, one small allocation: an idle connection's user entry costs what a plain
//! `Vec` would). Past [`INLINE_MAX`] members the set becomes a hash set, so joining or
//! leaving a topic of 100,000 subscribers costs O(1), not a scan.

use std::collections::HashMap;

use crate::ids::ConnId;

/// Members kept in a scanned `Vec`: a scan of 16 `u32`s is cheaper than hashing one.
const INLINE_MAX: usize = 16;

/// A set of [`ConnId`]s.
#[derive(Debug)]
pub(crate) enum ConnSet {
    /// Up to [`INLINE_MAX`] members, unordered.
    Few(Vec<ConnId>),
    /// More (boxed: the set stays as small as a `Vec` in every hub entry).
    Many(Box<Indexed>),
}

/// A large set: members in a dense `Vec`, and where each one is.
#[derive(Debug, Default)]
pub(crate) struct Indexed {
    members: Vec<ConnId>,
    position: HashMap<ConnId, u32>,
}

impl Indexed {
    fn insert(&mut self, id: ConnId) -> bool {
        if self.position.contains_key(&id) {
            return false;
        }
        self.position.insert(id, self.members.len() as u32);
        self.members.push(id);
        true
    }

    fn remove(&mut self, id: ConnId) -> bool {
        let Some(at) = self.position.remove(&id) else { return false };
        let at = at as usize;
        self.members.swap_remove(at);
        if let Some(moved) = self.members.get(at) {
            self.position.insert(*moved, at as u32);
        }
        true
    }
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
            ConnSet::Many(s) => s.position.contains_key(&id),
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
                let mut set = Indexed::default();
                for member in v.drain(..) {
                    set.insert(member);
                }
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
                let removed = s.remove(id);
                let len = s.members.len();
                if len <= INLINE_MAX / 2 {
                    // Back to the small form (half the threshold: no flapping at the edge).
                    *self = ConnSet::Few(std::mem::take(&mut s.members));
                } else if s.members.capacity() > 4 * len.max(64) {
                    // A mass leave must not pin the peak's memory.
                    s.members.shrink_to_fit();
                    s.position.shrink_to_fit();
                }
                removed
            }
        }
    }

    /// Number of members.
    pub(crate) fn len(&self) -> usize {
        match self {
            ConnSet::Few(v) => v.len(),
            ConnSet::Many(s) => s.members.len(),
        }
    }

    /// No members.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members, in no particular order (a slice: fan-out walks it at memory speed).
    pub(crate) fn as_slice(&self) -> &[ConnId] {
        match self {
            ConnSet::Few(v) => v,
            ConnSet::Many(s) => &s.members,
        }
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
            if i < 80 {
                let mut members: Vec<u32> = set.as_slice().iter().map(|c| c.0).collect();
                members.sort_unstable();
                assert_eq!(members, (i + 1..100).collect::<Vec<_>>(), "after removing {i}");
            }
        }
        assert!(matches!(set, ConnSet::Few(_)));
        assert!(!set.contains(ConnId(3)) && set.contains(ConnId(97)));
        let mut left: Vec<u32> = set.as_slice().iter().map(|c| c.0).collect();
        left.sort_unstable();
        assert_eq!(left, [95, 96, 97, 98, 99]);
    }
}
