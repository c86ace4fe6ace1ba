//! What authentication adds to an upgrade: verifying its connection token (signature,
//! claims, permissions), for each accepted algorithm, next to what every upgrade already
//! computes (the `Sec-WebSocket-Accept` key: a SHA-1 and base64) as the same-run baseline.
//!
//! Keys: an HS256 secret, and an RSA-2048 and a P-256 key made by `openssl` at start.
//! Run: `cargo bench --bench token_verify`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::{hint::black_box, process::Command};

use corecast::testing::TokenVerifier;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

const NOW: u64 = 1_800_000_000;

fn key_pair(dir: &std::path::Path, name: &str, args: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let ok = Command::new("openssl").arg("genpkey").args(args).arg("-out").arg(&private).output();
    assert!(ok.is_ok_and(|o| o.status.success()), "openssl genpkey");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output();
    assert!(ok.is_ok_and(|o| o.status.success()), "openssl pkey");
    (std::fs::read(private).unwrap(), std::fs::read(public).unwrap())
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("corecast-token-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let claims = serde_json::json!({"sub":"alice","exp":NOW + 600,
        "channels":{"subscribe":["chat.*","user.alice.*"],"publish":["chat.*"],"direct":true}});
    let mut group = c.benchmark_group("upgrade");
    group.bench_function("accept_key (baseline)", |b| {
        b.iter(|| tungstenite::handshake::derive_accept_key(black_box(b"dGhlIHNhbXBsZSBub25jZQ==")))
    });
    let secret = b"bench-secret";
    let hs =
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)).unwrap();
    let v = TokenVerifier::new(Some(secret), None);
    assert!(v.admits(&hs, "alice", NOW));
    group.bench_function("token HS256", |b| b.iter(|| v.admits(black_box(&hs), "alice", NOW)));
    let (rsa_private, rsa_public) =
        key_pair(&dir, "rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&rsa_private).unwrap(),
    )
    .unwrap();
    let v = TokenVerifier::new(None, Some(&rsa_public));
    assert!(v.admits(&rs, "alice", NOW));
    group.bench_function("token RS256", |b| b.iter(|| v.admits(black_box(&rs), "alice", NOW)));
    let (ec_private, ec_public) =
        key_pair(&dir, "ec", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let es = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&ec_private).unwrap(),
    )
    .unwrap();
    let v = TokenVerifier::new(None, Some(&ec_public));
    assert!(v.admits(&es, "alice", NOW));
    group.bench_function("token ES256", |b| b.iter(|| v.admits(black_box(&es), "alice", NOW)));
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
