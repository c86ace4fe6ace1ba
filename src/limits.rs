//! The protocol's fixed limits: how long a user id or a topic name may be, and how many
//! topics one connection may hold. Fixed, not options: clients and other nodes rely on
//! them.
//!
//! Runs on: any thread. Pure constants; depends on nothing else in the crate.

/// Largest accepted user id, in bytes (ids are `[A-Za-z0-9_.-]`).
pub(crate) const MAX_USER_ID_LEN: usize = 64;
/// Largest accepted topic name, in bytes (names are `[A-Za-z0-9_.:/-]`).
pub(crate) const MAX_TOPIC_LEN: usize = 128;
/// Most topics one connection may subscribe to.
pub(crate) const MAX_TOPICS_PER_CONN: usize = 256;
