//! Tokens and permissions: real nodes with authentication on, real tokens signed here
//! with the same crate (`jsonwebtoken`), real WebSocket clients.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};

use crate::support::*;

const SECRET: &str = "integration-test-secret";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes()))
        .unwrap()
}

/// A key pair made by `openssl` in `dir`: (private PEM, public key file).
fn key_pair(dir: &Path, name: &str, genpkey_args: &[&str]) -> (Vec<u8>, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("openssl runs");
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(Command::new("openssl").arg("genpkey").args(genpkey_args).arg("-out").arg(&private));
    run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public));
    (std::fs::read(&private).unwrap(), public)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corecast-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An upgrade of `/ws/{user}` with `Authorization: Bearer token` (or none): the HTTP
/// status and body of the answer.
async fn upgrade_with(
    addr: std::net::SocketAddr,
    user: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut request = upgrade_request(user);
    if let Some(token) = token {
        request.truncate(request.len() - 2);
        request.push_str(&format!("Authorization: Bearer {token}\r\n\r\n"));
    }
    let raw = raw_request(addr, request.as_bytes()).await;
    parse_http(&raw)
}

/// Connects with a token in `?token=` (what browsers do) or in the header.
async fn connect_with(
    addr: std::net::SocketAddr,
    user: &str,
    token: &str,
    v1: bool,
    in_query: bool,
) -> Client {
    let url = if in_query {
        format!("ws://{addr}/ws/{user}?token={token}")
    } else {
        format!("ws://{addr}/ws/{user}")
    };
    let mut req = url.into_client_request().unwrap();
    if !in_query {
        req.headers_mut()
            .insert("Authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    }
    if v1 {
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("corecast.v1"));
    }
    let (ws, resp) = within(WAIT, "connect with a token", tokio_tungstenite::connect_async(req))
        .await
        .unwrap_or_else(|e| match e {
            tungstenite::Error::Http(resp) => panic!(
                "upgrade refused: {} {:?}",
                resp.status(),
                resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
            ),
            other => panic!("connect: {other}"),
        });
    let shard = resp.headers().get("x-corecast-shard").unwrap().to_str().unwrap().parse().unwrap();
    Client { ws, shard, user: user.to_owned() }
}

/// Every refused token gets its status before the upgrade, with a one-line reason,
/// counted per reason; valid HS256, RS256 and ES256 tokens connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_matrix() {
    let dir = temp_dir("jwt-keys");
    let (rsa_private, rsa_public) =
        key_pair(&dir, "rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let (other_rsa, _) =
        key_pair(&dir, "rsa2", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let (ec_private, ec_public) =
        key_pair(&dir, "ec", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);

    let hs_node = TestServer::start(|c| c.jwt_secret.0 = Some(SECRET.into()));
    let rs_node = TestServer::start(|c| c.jwt_public_key.0 = Some(rsa_public.clone()));
    let es_node = TestServer::start(|c| c.jwt_public_key.0 = Some(ec_public.clone()));
    let t = now();
    let alice = json!({"sub":"alice","exp":t + 600});
    let rs256 = |claims: &Value, pem: &[u8]| {
        encode(&Header::new(Algorithm::RS256), claims, &EncodingKey::from_rsa_pem(pem).unwrap())
            .unwrap()
    };
    let es256 = encode(
        &Header::new(Algorithm::ES256),
        &alice,
        &EncodingKey::from_ec_pem(&ec_private).unwrap(),
    )
    .unwrap();

    // Valid tokens upgrade: header and query, every algorithm.
    let mut a = connect_with(hs_node.addr, "alice", &hs256(&alice), true, false).await;
    let mut b = connect_with(hs_node.addr, "alice", &hs256(&alice), false, true).await;
    let mut r = connect_with(rs_node.addr, "alice", &rs256(&alice, &rsa_private), true, true).await;
    let mut e = connect_with(es_node.addr, "alice", &es256, true, false).await;
    for c in [&mut a, &mut r, &mut e] {
        c.send_json(json!({"op":"unsubscribe","topic":"x"})).await;
        assert_eq!(c.recv_json().await, json!({"type":"unsubscribed","topic":"x"}));
    }
    drop(b.ws.close(None).await);

    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let alg_none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&alice.to_string()));
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &alice,
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    let good = hs256(&alice);
    let cases: Vec<(&str, u16, Option<String>, &str)> = vec![
        ("missing", 401, None, "missing"),
        ("expired", 401, Some(hs256(&json!({"sub":"alice","exp":t - 10}))), "expired"),
        (
            "nbf",
            401,
            Some(hs256(&json!({"sub":"alice","exp":t + 600,"nbf":t + 300}))),
            "not_yet_valid",
        ),
        ("no exp", 401, Some(hs256(&json!({"sub":"alice"}))), "claims"),
        ("wrong key", 401, Some(wrong_key), "signature"),
        ("alg none", 401, Some(alg_none.clone()), "algorithm"),
        ("truncated", 401, Some(good[..good.len() - 6].to_owned()), "signature"),
        ("garbage", 401, Some("not-a-jwt".into()), "malformed"),
        (
            "sub is not the path's user",
            403,
            Some(hs256(&json!({"sub":"mallory","exp":t + 600}))),
            "wrong_user",
        ),
    ];
    let before = hs_node.health().await;
    for (what, status, token, _) in &cases {
        let (got, body) = upgrade_with(hs_node.addr, "alice", token.as_deref()).await;
        assert_eq!(got, *status, "{what}: {body}");
        assert_eq!(body.lines().count(), 1, "{what}: a one-line reason, got {body:?}");
    }
    let after = hs_node.health().await;
    assert_eq!(after["upgrades"], before["upgrades"], "nothing upgraded");
    for (what, _, _, reason) in &cases {
        let n = after["auth_rejected"][reason].as_u64().unwrap();
        assert!(n >= 1, "{what}: auth_rejected.{reason} = {n} in {after}");
    }
    assert_eq!(after["auth_rejected"]["signature"], 2, "wrong key and truncated");
    assert_eq!(after["auth"], true);

    // Algorithms other than the node's: HS256 at an RS256-only node, another RSA key,
    // RS256 at the ES256 node, alg none anywhere.
    let other_signer = rs256(&alice, &other_rsa);
    let rs_cases = [
        (rs_node.addr, good.clone(), 401, "HS256 token at an RS256-only node"),
        (rs_node.addr, other_signer, 401, "RS256 token from another key"),
        (rs_node.addr, alg_none.clone(), 401, "alg none"),
        (es_node.addr, rs256(&alice, &rsa_private), 401, "RS256 token at an ES256 node"),
    ];
    for (addr, token, status, what) in rs_cases {
        let (got, body) = upgrade_with(addr, "alice", Some(&token)).await;
        assert_eq!(got, status, "{what}: {body}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `refresh` before expiry keeps the connection; without it a v1 client gets
/// `token_expired` then Close 1008 within the grace, and a seed client only the Close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_and_expiry() {
    let grace = Duration::from_secs(2);
    // What the client may see beyond the grace: the sweep's jitter and the delivery of the
    // Close on a loaded CI machine.
    let slack = Duration::from_millis(700);
    let node = TestServer::start(|c| {
        c.jwt_secret.0 = Some(SECRET.into());
        c.token_expiry_grace.0 = grace;
        c.default_permissions = "open".parse().unwrap();
    });
    let exp = now() + 2;
    let short = |user: &str| hs256(&json!({"sub":user,"exp":exp}));
    let mut keeps = connect_with(node.addr, "keeps", &short("keeps"), true, false).await;
    let mut lapses = connect_with(node.addr, "lapses", &short("lapses"), true, false).await;
    let mut seed = connect_with(node.addr, "seedy", &short("seedy"), false, true).await;

    // Refused refreshes change nothing: another user, not later, not a token.
    let refusals = [
        hs256(&json!({"sub":"someone-else","exp":exp + 600})),
        hs256(&json!({"sub":"keeps","exp":exp})),
        "garbage".to_owned(),
    ];
    for token in refusals {
        keeps.send_json(json!({"op":"refresh","token":token})).await;
        let reply = keeps.recv_json().await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], "invalid_token", "{reply}");
    }
    let later = exp + 600;
    keeps
        .send_json(json!({"op":"refresh","token":hs256(&json!({"sub":"keeps","exp":later}))}))
        .await;
    assert_eq!(keeps.recv_json().await, json!({"type":"refreshed","exp":later}));

    // The lapsing v1 client: token_expired, then 1008 within the grace.
    assert_eq!(lapses.recv_json().await, json!({"type":"token_expired"}));
    let warned = Instant::now();
    let expired_at = UNIX_EPOCH + Duration::from_secs(exp + 1);
    let close = lapses.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "token expired");
    let late = SystemTime::now().duration_since(expired_at).unwrap_or_default();
    assert!(late <= grace + slack, "closed {late:?} after expiry");
    assert!(warned.elapsed() < grace + slack);
    let close = seed.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);

    // The refreshed client lives on: a broadcast still reaches it after both closes.
    keeps.send_json(json!({"op":"broadcast","data":"still here"})).await;
    assert_eq!(
        without_id(keeps.recv_json().await),
        json!({"type":"broadcast","sender":"keeps","data":"still here"})
    );
    // The closed clients answer their Close as they are dropped.
    drop((lapses, seed));
    node.wait_health("two expiry closes, one connection left", |h| {
        h["token_expiry_closes"] == 2 && h["connections"] == 1
    })
    .await;
    // Refresh is refused where authentication is off.
    let open = TestServer::start(|_| {});
    let mut c = connect(open.addr, "c", true).await;
    c.send_json(json!({"op":"refresh","token":short("c")})).await;
    assert_eq!(c.recv_json().await["code"], "invalid_token");
}

async fn expect_error(c: &mut Client, code: &str) {
    let reply = c.recv_json().await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
}

/// What the `channels` claim grants, what a token without it may do, subscription
/// tokens, and seed texts without broadcast permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_permission_matrix() {
    let node = TestServer::start(|c| c.jwt_secret.0 = Some(SECRET.into()));
    let t = now() + 600;
    let claims = json!({"sub":"alice","exp":t,"channels":{
        "subscribe":["chat.*","user.alice.*"],"publish":["chat.*"],"broadcast":false,"direct":true}});
    let mut alice = connect_with(node.addr, "alice", &hs256(&claims), true, false).await;
    let admin_claims = json!({"sub":"admin","exp":t,"channels":{
        "subscribe":["*"],"publish":["*"],"broadcast":true,"direct":true}});
    let mut admin = connect_with(node.addr, "admin", &hs256(&admin_claims), true, false).await;
    let mut plain =
        connect_with(node.addr, "plain", &hs256(&json!({"sub":"plain","exp":t})), true, true).await;

    // Allowed.
    for topic in ["chat.lobby", "user.alice.inbox"] {
        alice.send_json(json!({"op":"subscribe","topic":topic})).await;
        assert_eq!(alice.recv_json().await, json!({"type":"subscribed","topic":topic}));
    }
    alice.send_json(json!({"op":"publish","topic":"chat.lobby","data":"hi"})).await;
    assert_eq!(
        without_id(alice.recv_json().await),
        json!({"type":"message","topic":"chat.lobby","sender":"alice","data":"hi"})
    );
    alice.send_json(json!({"op":"direct","to":"admin","data":"psst"})).await;
    assert_eq!(
        without_id(admin.recv_json().await),
        json!({"type":"direct","sender":"alice","data":"psst"})
    );
    // Denied: the connection stays open after each.
    let denied = [
        json!({"op":"subscribe","topic":"chat.a.b"}),
        json!({"op":"subscribe","topic":"user.bob.inbox"}),
        json!({"op":"history","topic":"secret"}),
        json!({"op":"publish","topic":"user.alice.inbox","data":"x"}),
        json!({"op":"broadcast","data":"x"}),
    ];
    for command in &denied {
        alice.send_json(command.clone()).await;
        expect_error(&mut alice, "forbidden").await;
    }
    // A token without the claim: closed defaults. It receives broadcasts and its own
    // direct messages, nothing else.
    for command in [
        json!({"op":"subscribe","topic":"chat.lobby"}),
        json!({"op":"publish","topic":"chat.lobby","data":"x"}),
        json!({"op":"direct","to":"alice","data":"x"}),
        json!({"op":"broadcast","data":"x"}),
    ] {
        plain.send_json(command).await;
        expect_error(&mut plain, "forbidden").await;
    }
    admin.send_json(json!({"op":"direct","to":"plain","data":"for you"})).await;
    assert_eq!(
        without_id(plain.recv_json().await),
        json!({"type":"direct","sender":"admin","data":"for you"})
    );
    admin.send_json(json!({"op":"broadcast","data":"all"})).await;
    for c in [&mut plain, &mut alice, &mut admin] {
        assert_eq!(
            without_id(c.recv_json().await),
            json!({"type":"broadcast","sender":"admin","data":"all"})
        );
    }

    // Subscription tokens: for this user and this topic only.
    let vip = |sub: &str, channel: &str| hs256(&json!({"sub":sub,"exp":t,"channel":channel}));
    plain.send_json(json!({"op":"subscribe","topic":"vip","token":vip("alice","vip")})).await;
    expect_error(&mut plain, "invalid_token").await;
    plain.send_json(json!({"op":"subscribe","topic":"vip","token":vip("plain","other")})).await;
    expect_error(&mut plain, "invalid_token").await;
    plain.send_json(json!({"op":"subscribe","topic":"vip","token":vip("plain","vip")})).await;
    assert_eq!(plain.recv_json().await, json!({"type":"subscribed","topic":"vip"}));
    admin.send_json(json!({"op":"publish","topic":"vip","data":"members only"})).await;
    assert_eq!(
        without_id(plain.recv_json().await),
        json!({"type":"message","topic":"vip","sender":"admin","data":"members only"})
    );
    plain.send_json(json!({"op":"publish","topic":"vip","data":"x"})).await;
    expect_error(&mut plain, "forbidden").await;

    // Seed mode without broadcast permission: the text is dropped and counted.
    let mut seed =
        connect_with(node.addr, "quiet", &hs256(&json!({"sub":"quiet","exp":t})), false, false)
            .await;
    seed.send_text("should not arrive").await;
    node.wait_health("the seed text dropped", |h| h["seed_texts_dropped"] == 1).await;
    admin.send_json(json!({"op":"broadcast","data":"marker"})).await;
    assert_eq!(
        without_id(plain.recv_json().await),
        json!({"type":"broadcast","sender":"admin","data":"marker"}),
        "the dropped text never arrived"
    );
    let h = node.health().await;
    assert_eq!(h["forbidden"], 5 + 4 + 2 + 1, "{h}");
}

/// With authentication off, `default_permissions = closed` applies to everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_defaults_without_authentication() {
    let node = TestServer::start(|c| c.default_permissions = "closed".parse().unwrap());
    let mut c = connect(node.addr, "c", true).await;
    c.send_json(json!({"op":"subscribe","topic":"news"})).await;
    expect_error(&mut c, "forbidden").await;
    c.send_json(json!({"op":"subscribe","topic":"news","token":"a.b.c"})).await;
    expect_error(&mut c, "forbidden").await;
    let h = node.health().await;
    assert_eq!(h["auth"], false);
}

/// The JWT secret and the API key never show: `--check-config` prints them as `***`,
/// and a node's debug logs do not contain them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_never_shown() {
    let (secret, key) = ("jwt-S3cr3t-value", "api-K3y-value");
    let check = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["--check-config", "--jwt-secret", secret, "--api-key", key])
        .output()
        .expect("binary runs");
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(
        printed.contains("jwt_secret = \"***\"") && printed.contains("api_key = \"***\""),
        "{printed}"
    );
    assert!(!printed.contains(secret) && !printed.contains(key), "{printed}");

    let node =
        LoggedNode::start(&[], &[("CORECAST_JWT_SECRET", secret), ("CORECAST_API_KEY", key)]).await;
    // A token in the query (signed with another secret): refused, and not logged.
    let token = hs256(&json!({"sub":"alice","exp":now() + 60}));
    let request = format!(
        "GET /ws/alice?token={token} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    assert_eq!(parse_http(&raw_request(node.addr, request.as_bytes()).await).0, 401);
    let logs = node.stop().await;
    assert!(logs.contains("request refused"), "debug logs captured: {logs}");
    for hidden in [secret, key, token.as_str()] {
        assert!(!logs.contains(hidden), "{hidden} appears in the logs:\n{logs}");
    }
}

/// A subscription token's `exp` ends the subscription it granted (the client is told);
/// subscribing again with a later token before then extends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_tokens_expire() {
    let node = TestServer::start(|c| c.jwt_secret.0 = Some(SECRET.into()));
    let t = now();
    let connect_as = |user: &'static str| {
        let token = hs256(&json!({"sub":user,"exp":t + 600}));
        async move { connect_with(node.addr, user, &token, true, false).await }
    };
    let mut lapses = connect_as("lapses").await;
    let mut renews = connect_as("renews").await;
    let admin_claims =
        json!({"sub":"admin","exp":t + 600,"channels":{"publish":["vip"],"direct":true}});
    let mut admin = connect_with(node.addr, "admin", &hs256(&admin_claims), true, false).await;
    let vip = |sub: &str, exp: u64| hs256(&json!({"sub":sub,"exp":exp,"channel":"vip"}));
    for (c, user) in [(&mut lapses, "lapses"), (&mut renews, "renews")] {
        c.send_json(json!({"op":"subscribe","topic":"vip","token":vip(user, t + 2)})).await;
        assert_eq!(c.recv_json().await, json!({"type":"subscribed","topic":"vip"}));
    }
    renews.send_json(json!({"op":"subscribe","topic":"vip","token":vip("renews", t + 600)})).await;
    assert_eq!(renews.recv_json().await, json!({"type":"subscribed","topic":"vip"}));
    assert_eq!(
        lapses.recv_json().await,
        json!({"type":"unsubscribed","topic":"vip","reason":"subscription token expired"})
    );
    admin.send_json(json!({"op":"publish","topic":"vip","data":"after"})).await;
    admin.send_json(json!({"op":"direct","to":"lapses","data":"marker"})).await;
    assert_eq!(without_id(renews.recv_json().await)["data"], "after", "the renewed grant holds");
    assert_eq!(
        without_id(lapses.recv_json().await),
        json!({"type":"direct","sender":"admin","data":"marker"}),
        "nothing of vip after the grant ended"
    );
    lapses.send_json(json!({"op":"subscribe","topic":"vip"})).await;
    let reply = lapses.recv_json().await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
}
