//! A Redis that comes back older than the nodes saw it — restarted from an earlier
//! snapshot, or a replica that lagged promoted in its place — has lost the last writes:
//! the offsets it hands out next were handed out already. The contract: an id never
//! names two events (the stream goes on in a new epoch), connected clients are told
//! `recovered: false` and then get the new events (never silence), and a client coming
//! back with a lost id is told `recovered: false`.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::{
    recovery::{next_not_state, parse_id, publish, subscribe},
    support::{
        Client, TestServer, WAIT, connect,
        redis::{RedisServer, redis_node},
        take_id, within,
    },
};

/// The stream with subscribers on two nodes.
const TOPIC: &str = "t";
/// A stream nobody subscribes to: only its publisher's memory of its last id (the floor
/// its next publish carries) can tell that Redis lost writes of it.
const QUIET: &str = "q";

/// Publishes `data` on `topic` with a receipt, again while the node answers `unavailable`
/// (its bridge can flap right after Redis came back); returns the id.
async fn publish_when_ready(client: &mut Client, topic: &str, data: Value) -> String {
    within(WAIT, "a publish is stored", async {
        loop {
            client.send_json(json!({"op":"publish","topic":topic,"data":data,"ack":true})).await;
            let reply = next_not_state(client).await;
            match reply["type"].as_str() {
                Some("published") => return reply["id"].as_str().expect("id").to_owned(),
                Some("error") if reply["code"] == "unavailable" => continue,
                _ => panic!("unexpected reply {reply}"),
            }
        }
    })
    .await
}

/// Every id seen anywhere (receipts and deliveries) with the event it named.
#[derive(Default)]
struct Ledger(HashMap<String, Value>);

impl Ledger {
    fn record(&mut self, id: &str, data: &Value, who: &str) {
        if let Some(before) = self.0.insert(id.to_owned(), data.clone()) {
            assert_eq!(&before, data, "{who}: id {id} names two different events");
        }
    }
}

/// Three nodes on one Redis: `a` publishes, `a` and `b` have a subscriber of [`TOPIC`],
/// `c` has nothing until it publishes after the loss (it never saw the stream, so no
/// memory of its own protects its first publish).
struct Scene {
    a: TestServer,
    b: TestServer,
    c: TestServer,
    publisher: Client,
    subscribers: Vec<Client>,
    ledger: Ledger,
    /// The last ids of [`TOPIC`] and [`QUIET`] before the loss.
    last: (String, String),
}

impl Scene {
    async fn start(redis: &RedisServer) -> Scene {
        let a = redis_node(redis, "a", |_| {}).await;
        let b = redis_node(redis, "b", |_| {}).await;
        let c = redis_node(redis, "c", |_| {}).await;
        let publisher = connect(a.addr, "pub", true).await;
        let mut subscribers =
            vec![connect(a.addr, "sa", true).await, connect(b.addr, "sb", true).await];
        for s in &mut subscribers {
            subscribe(s, TOPIC, None).await;
        }
        Scene {
            a,
            b,
            c,
            publisher,
            subscribers,
            ledger: Ledger::default(),
            last: Default::default(),
        }
    }

    /// Publishes events `numbers` on both streams from `a`; both subscribers get them.
    async fn publish(&mut self, numbers: std::ops::RangeInclusive<u64>) {
        for n in numbers.clone() {
            let data = json!(format!("old-{n}"));
            let id = publish(&mut self.publisher, TOPIC, data.clone()).await;
            self.ledger.record(&id, &data, "receipt");
            self.last.0 = id;
            let quiet = json!(format!("quiet-{n}"));
            let id = publish(&mut self.publisher, QUIET, quiet.clone()).await;
            self.ledger.record(&id, &quiet, "receipt");
            self.last.1 = id;
            // A direct message to the subscriber on b: its user's stream loses events too.
            let direct = json!(format!("direct-{n}"));
            self.publisher
                .send_json(json!({"op":"direct","to":"sb","data":direct,"ack":true}))
                .await;
            let receipt = next_not_state(&mut self.publisher).await;
            assert_eq!(receipt["type"], "published", "{receipt}");
        }
        for s in &mut self.subscribers {
            let directs = if s.user == "sb" { numbers.clone().count() } else { 0 };
            let mut topic = numbers.clone();
            let mut direct = numbers.clone();
            for _ in 0..numbers.clone().count() + directs {
                let mut m = next_not_state(s).await;
                let (epoch, offset) = take_id(&mut m);
                let next = if m["type"] == "direct" { direct.next() } else { topic.next() };
                let kind = if m["type"] == "direct" { "direct" } else { "old" };
                assert_eq!(
                    m["data"],
                    json!(format!("{kind}-{}", next.unwrap_or(0))),
                    "{}: {m}",
                    s.user
                );
                if kind == "old" {
                    self.ledger.record(&format!("{epoch}:{offset}"), &m["data"], &s.user);
                }
            }
        }
    }

    /// Redis lost the events after the first `kept`: what every party must see next.
    async fn after_the_loss(mut self, name: &str, kept: u64) {
        let (old_epoch, old_top) = parse_id(&self.last.0);
        assert!(old_top > kept, "{name}: the scene lost events");
        for node in [&self.a, &self.b] {
            node.wait_health("reconnected to the older Redis", |h| {
                h["bridge"]["ready"] == true && h["bridge"]["reconnects"].as_u64() >= Some(4)
            })
            .await;
            // Each node delivering the stream reads it from its position after the
            // reconnect: it finds Redis below its position (and abandons the epoch), or a
            // new epoch already (another node abandoned it first). Either way, it tells.
            node.wait_health("the loss told", |h| h["bridge"]["streams_lost"].as_u64() >= Some(1))
                .await;
        }
        let abandoned = self.a.health().await["bridge"]["epochs_abandoned"].as_u64().unwrap_or(0)
            + self.b.health().await["bridge"]["epochs_abandoned"].as_u64().unwrap_or(0);
        assert!(abandoned >= 1, "{name}: a node found the loss and abandoned the epoch");
        // Connected clients are told, before anything of the new epoch: for the topic, and
        // sb for its direct messages too (two streams: in either order).
        for s in &mut self.subscribers {
            let mut expected = vec![json!({"type":"recovered","topic":TOPIC,"recovered":false})];
            if s.user == "sb" {
                expected.push(json!({"type":"recovered","direct":true,"recovered":false}));
            }
            while !expected.is_empty() {
                let m = next_not_state(s).await;
                let at = expected.iter().position(|e| *e == m);
                assert!(at.is_some(), "{name}: {}: {m}, expected one of {expected:?}", s.user);
                expected.remove(at.unwrap_or_default());
            }
        }
        // The quiet stream: its publisher's floor makes its next publish a new epoch.
        let data = json!("quiet-after");
        let id = publish_when_ready(&mut self.publisher, QUIET, data.clone()).await;
        self.ledger.record(&id, &data, "quiet receipt");
        let (quiet_epoch, _) = parse_id(&self.last.1);
        assert_eq!(
            (parse_id(&id).0 != quiet_epoch, parse_id(&id).1),
            (true, 1),
            "{name}: a publish after the loss starts a new epoch, not id {id} again"
        );
        // A node that never saw the stream publishes: new epoch, from offset 1.
        let mut late = connect(self.c.addr, "late", true).await;
        let mut new_ids = Vec::new();
        for n in 1..=5 {
            let data = json!(format!("new-{n}"));
            let id = publish_when_ready(&mut late, TOPIC, data.clone()).await;
            self.ledger.record(&id, &data, "receipt from c");
            new_ids.push(parse_id(&id));
        }
        let new_epoch = new_ids[0].0;
        assert_ne!(new_epoch, old_epoch, "{name}: the stream went on in a new epoch");
        assert_eq!(new_ids.iter().map(|i| i.1).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        // Every subscriber gets them, in order, in the new epoch.
        for s in &mut self.subscribers {
            for n in 1..=5u64 {
                let mut m = next_not_state(s).await;
                let (epoch, offset) = take_id(&mut m);
                assert_eq!((epoch, offset), (new_epoch, n), "{name}: {}: {m}", s.user);
                assert_eq!(m["data"], json!(format!("new-{n}")), "{name}: {}", s.user);
                self.ledger.record(&format!("{epoch}:{offset}"), &m["data"], &s.user);
            }
        }
        // Clients coming back with the lost id, on a node that delivers the stream and on
        // one that does not: lost, never recovered past events they never saw.
        for node in [&self.b, &self.c] {
            let mut back = connect(node.addr, "back", true).await;
            subscribe(&mut back, TOPIC, Some(&self.last.0)).await;
            assert_eq!(
                within(WAIT, "the recovery answer", next_not_state(&mut back)).await,
                json!({"type":"recovered","topic":TOPIC,"recovered":false}),
                "{name}: back with {}",
                self.last.0
            );
        }
    }
}

/// Redis restarted from a snapshot older than its last writes (`SAVE`, five more events,
/// kill -9, restart on the same directory): the nodes find the loss, the stream goes on
/// in a new epoch, and no id names two events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_from_an_older_snapshot() {
    let mut redis = RedisServer::start().await;
    let mut scene = Scene::start(&redis).await;
    scene.publish(1..=5).await;
    assert_eq!(redis.command(&["SAVE"]).await.as_str().as_deref(), Some("OK"));
    scene.publish(6..=10).await;
    redis.restart().await;
    scene.after_the_loss("restart from a snapshot", 5).await;
}

/// The primary dies and a replica that had stopped replicating five events earlier takes
/// its place (promoted with `REPLICAOF NO ONE`, at the address the nodes use): the same
/// expectations as a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_lagging_replica() {
    let primary = RedisServer::start().await;
    let mut replica = RedisServer::start_replica_of(&primary).await;
    let mut scene = Scene::start(&primary).await;
    scene.publish(1..=5).await;
    crate::support::poll_until(WAIT, "the replica has the first five events", || async {
        let topic = replica.command(&["HGET", "corecast:meta:topic:t", "o"]).await;
        let quiet = replica.command(&["HGET", "corecast:meta:topic:q", "o"]).await;
        (topic.as_str().as_deref() == Some("5") && quiet.as_str().as_deref() == Some("5"))
            .then_some(())
    })
    .await;
    // The replica stops replicating here: what follows reaches the primary only.
    replica.command(&["REPLICAOF", "NO", "ONE"]).await;
    scene.publish(6..=10).await;
    replica.take_port_of(primary).await;
    scene.after_the_loss("failover to a lagging replica", 5).await;
}

/// Streams mode (`delivery = streams`): the stream reader follows a new epoch that no
/// reconnect reveals (`FLUSHALL` on a live Redis: the next publish starts a new epoch
/// whose offsets are below the reader's cursor). The subscriber is told, then gets the new
/// epoch's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_mode_follows_a_new_epoch_without_a_reconnect() {
    let redis = RedisServer::start().await;
    let streams = |c: &mut corecast::Config| c.delivery = corecast::config::DeliveryMode::Streams;
    let a = redis_node(&redis, "a", streams).await;
    let b = redis_node(&redis, "b", streams).await;
    let mut publisher = connect(a.addr, "pub", true).await;
    let mut sub = connect(b.addr, "sub", true).await;
    subscribe(&mut sub, TOPIC, None).await;
    let mut old = String::new();
    for n in 1..=3 {
        old = publish(&mut publisher, TOPIC, json!(n)).await;
    }
    for n in 1..=3 {
        let m = next_not_state(&mut sub).await;
        assert_eq!(m["data"], json!(n), "{m}");
    }
    assert_eq!(redis.command(&["FLUSHALL"]).await.as_str().as_deref(), Some("OK"));
    let mut new = Vec::new();
    for n in 4..=6 {
        new.push(parse_id(&publish(&mut publisher, TOPIC, json!(n)).await));
    }
    assert_ne!(new[0].0, parse_id(&old).0, "a new epoch");
    assert_eq!(
        next_not_state(&mut sub).await,
        json!({"type":"recovered","topic":TOPIC,"recovered":false})
    );
    for (n, id) in (4..=6).zip(new) {
        let mut m = next_not_state(&mut sub).await;
        assert_eq!(take_id(&mut m), id);
        assert_eq!(m["data"], json!(n), "{m}");
    }
    assert_eq!(a.health().await["bus"], "redis");
}
