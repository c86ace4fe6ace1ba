use serde_json::json;

use crate::support::*;

/// Subscribe/publish/unsubscribe: subscribers (sender included) get the message, others
/// do not, and after unsubscribing nothing more arrives. "Does not arrive" is proven by
/// a marker broadcast sent afterwards arriving first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_subscribe_publish_unsubscribe() {
    let server = TestServer::start(|_| {});
    let mut alice = connect(server.addr, "alice", true).await;
    let mut bob = connect(server.addr, "bob", true).await;
    let mut carol = connect(server.addr, "carol", true).await;

    for c in [&mut alice, &mut bob] {
        c.send_json(json!({"op":"subscribe","topic":"news"})).await;
        assert_eq!(c.recv_json().await, json!({"type":"subscribed","topic":"news"}));
    }
    alice
        .send_json(json!({"op":"publish","topic":"news","data":{"headline":"hi","n":[1,2]}}))
        .await;
    let expected = json!({"type":"message","topic":"news","sender":"alice","data":{"headline":"hi","n":[1,2]}});
    let (mut at_alice, mut at_bob) = (alice.recv_json().await, bob.recv_json().await);
    assert_eq!(take_id(&mut at_alice), take_id(&mut at_bob), "one id per event");
    assert_eq!((at_alice, at_bob), (expected.clone(), expected));

    bob.send_json(json!({"op":"unsubscribe","topic":"news"})).await;
    assert_eq!(bob.recv_json().await, json!({"type":"unsubscribed","topic":"news"}));
    alice.send_json(json!({"op":"publish","topic":"news","data":"second"})).await;
    assert_eq!(alice.recv_json().await["data"], "second");
    alice.send_json(json!({"op":"broadcast","data":"marker"})).await;
    for c in [&mut alice, &mut bob, &mut carol] {
        let m = c.recv_json().await;
        assert_eq!(
            without_id(m),
            json!({"type":"broadcast","sender":"alice","data":"marker"}),
            "{}: nothing before the marker",
            c.user
        );
    }
}

/// A direct message reaches every connection of the user, on both shards, exactly once,
/// and no one else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reaches_all_connections_of_a_user_across_shards() {
    let server = TestServer::start(|_| {});
    // Connect until both shards are covered, then keep one per shard plus one more.
    let mut pool: Vec<Client> = Vec::new();
    while pool.len() < 64
        && !(pool.iter().any(|c| c.shard == 0)
            && pool.iter().any(|c| c.shard == 1)
            && pool.len() >= 3)
    {
        pool.push(connect(server.addr, "dora", true).await);
    }
    let first0 = pool.iter().position(|c| c.shard == 0).expect("a connection on shard 0");
    let first1 = pool.iter().position(|c| c.shard == 1).expect("a connection on shard 1");
    let third = (0..pool.len()).find(|i| *i != first0 && *i != first1).expect("a third connection");
    let keep = [first0, first1, third];
    let mut dora: Vec<Client> = Vec::new();
    for (i, c) in pool.into_iter().enumerate() {
        if keep.contains(&i) {
            dora.push(c);
        }
    }
    server.wait_health("extra connections closed", |h| h["connections"] == 3).await;
    let shards: std::collections::HashSet<u16> = dora.iter().map(|c| c.shard).collect();
    assert_eq!((dora.len(), shards.len()), (3, 2), "dora has 3 connections on 2 shards");

    let mut eve = connect(server.addr, "eve", true).await;
    eve.send_json(json!({"op":"direct","to":"dora","data":{"secret":42}})).await;
    for c in &mut dora {
        assert_eq!(
            without_id(c.recv_json().await),
            json!({"type":"direct","sender":"eve","data":{"secret":42}})
        );
    }
    eve.send_json(json!({"op":"broadcast","data":"after"})).await;
    assert_eq!(eve.recv_json().await["data"], "after", "the sender did not get the direct message");
    for c in &mut dora {
        assert_eq!(c.recv_json().await["data"], "after", "exactly one copy of the direct message");
    }
}

/// Broadcasts cross protocols: a v1 broadcast reaches seed clients as `{"sender","text"}`
/// (text = the data's JSON text when it is not a string) and a seed client's text
/// reaches v1 clients as `{"type":"broadcast",...,"data":text}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_seed_and_v1_clients() {
    let server = TestServer::start(|_| {});
    let mut v1 = connect(server.addr, "vee", true).await;
    let mut seed = connect(server.addr, "sid", false).await;

    v1.send_json(json!({"op":"broadcast","data":{"x":1}})).await;
    assert_eq!(
        without_id(v1.recv_json().await),
        json!({"type":"broadcast","sender":"vee","data":{"x":1}})
    );
    assert_eq!(without_id(seed.recv_json().await), json!({"sender":"vee","text":"{\"x\":1}"}));

    v1.send_json(json!({"op":"broadcast","data":"plain"})).await;
    assert_eq!(without_id(seed.recv_json().await), json!({"sender":"vee","text":"plain"}));
    assert_eq!(v1.recv_json().await["data"], "plain");

    seed.send_text("hello from seed").await;
    let (mut at_seed, mut at_v1) = (seed.recv_json().await, v1.recv_json().await);
    assert_eq!(take_id(&mut at_seed), take_id(&mut at_v1), "one id, both formats");
    assert_eq!(at_seed, json!({"sender":"sid","text":"hello from seed"}));
    assert_eq!(at_v1, json!({"type":"broadcast","sender":"sid","data":"hello from seed"}));
}

/// Malformed and unknown commands get `{"type":"error","code":...}` and the connection
/// keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_commands_get_errors_and_the_connection_stays() {
    let server = TestServer::start(|_| {});
    let mut c = connect(server.addr, "mallory", true).await;
    let cases = [
        ("not json at all", "invalid_json"),
        ("[1,2,3]", "invalid_command"),
        (r#"{"topic":"x"}"#, "missing_field"),
        (r#"{"op":"dance"}"#, "unknown_op"),
        (r#"{"op":"publish","topic":"x"}"#, "missing_field"),
        (r#"{"op":"subscribe","topic":"has space"}"#, "invalid_topic"),
        (r#"{"op":"direct","to":"bad/user","data":1}"#, "invalid_user"),
        (r#"{"op":1}"#, "invalid_command"),
    ];
    for (input, code) in cases {
        c.send_text(input).await;
        let reply = c.recv_json().await;
        assert_eq!(reply["type"], "error", "{input}");
        assert_eq!(reply["code"], code, "{input}: {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    c.send_json(json!({"op":"subscribe","topic":"still-works"})).await;
    assert_eq!(c.recv_json().await, json!({"type":"subscribed","topic":"still-works"}));
}
