//! SUBSCRIBEs that Redis refused while the node was connected (an ACL denial, a timeout):
//! retried with a growing pause, and the topic confirmations that wait for them.
//!
//! Runs on: the bridge thread, owned by its subscription task. Pure: no I/O, no clock
//! (the task sleeps for the pause this says).
//!
//! A shard tells its clients `subscribed` when the bus confirms the topic, and the bus
//! answers every gain a shard reported (the shard counts them). So a confirmation is
//! never dropped: it waits here until its channel is subscribed, or is no longer wanted
//! (then it goes out at once: the shard has no one left to answer). With Redis away the
//! subscription task confirms at once and subscribes again after the reconnect; this is
//! for a Redis that is there and says no.

use std::collections::BTreeSet;

use crate::ids::ShardId;

/// A topic confirmation for one shard.
pub(crate) type Confirm = (ShardId, Box<str>);

/// Refused channels and the confirmations waiting for them (module docs).
#[derive(Debug, Default)]
pub(crate) struct Refused {
    channels: BTreeSet<String>,
    /// Confirmations held for a refused channel: `(channel, confirmation)`.
    held: Vec<(String, Confirm)>,
    /// Rounds in a row that Redis refused something (the pause grows with them).
    failures: u32,
}

impl Refused {
    /// Whether nothing waits for a retry.
    pub(crate) fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Redis refused a SUBSCRIBE of `channels` (one round): they are retried later.
    pub(crate) fn refused(&mut self, channels: impl IntoIterator<Item = String>) {
        self.channels.extend(channels);
        self.failures = self.failures.saturating_add(1);
    }

    /// Rounds in a row that Redis refused something.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// A confirmation of the topic of `channel`: returned to send now, or held while the
    /// channel waits for a retry.
    pub(crate) fn confirm(&mut self, channel: String, confirm: Confirm) -> Option<Confirm> {
        if self.channels.contains(&channel) {
            self.held.push((channel, confirm));
            return None;
        }
        Some(confirm)
    }

    /// The channels to SUBSCRIBE again now.
    pub(crate) fn due(&self) -> Vec<String> {
        self.channels.iter().cloned().collect()
    }

    /// `channel` is subscribed now, or no longer wanted: the confirmations it held, to
    /// send (in the order they came).
    pub(crate) fn settled(&mut self, channel: &str) -> Vec<Confirm> {
        if !self.channels.remove(channel) {
            return Vec::new();
        }
        if self.channels.is_empty() {
            self.failures = 0;
        }
        let (mine, others): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|(c, _)| c == channel);
        self.held = others;
        mine.into_iter().map(|(_, confirm)| confirm).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confirm(shard: u16, topic: &str) -> Confirm {
        (ShardId(shard), topic.into())
    }

    #[test]
    fn a_refused_channel_holds_its_confirmations_until_it_is_settled() {
        let mut r = Refused::default();
        assert!(r.is_empty());
        r.refused(["c:secret".to_owned(), "c:open".to_owned()]);
        assert_eq!(r.failures(), 1);
        assert_eq!(r.confirm("c:secret".into(), confirm(0, "secret")), None);
        assert_eq!(r.confirm("c:other".into(), confirm(1, "other")), Some(confirm(1, "other")));
        assert_eq!(r.confirm("c:secret".into(), confirm(1, "secret")), None);
        assert_eq!(r.due(), ["c:open", "c:secret"]);
        // One of them goes through; the other is refused again.
        assert!(r.settled("c:open").is_empty());
        r.refused(["c:secret".to_owned()]);
        assert_eq!(r.failures(), 2);
        assert_eq!(r.settled("c:secret"), [confirm(0, "secret"), confirm(1, "secret")]);
        assert!(r.is_empty() && r.failures() == 0);
        assert!(r.settled("c:secret").is_empty(), "settled once");
    }
}
