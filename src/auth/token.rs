//! Verifying connection and subscription tokens.
//!
//! Runs on: the main thread ([`Verifier::for_keys`], from the key bytes the configuration
//! read; [`check_keys`] when the configuration is validated), then any shard
//! (verification is pure and `Sync`; the `Verifier` is shared by `Arc`).
//!
//! Accepted: HS256 with `--jwt-secret`, and RS256 or ES256 with `--jwt-public-key` (the
//! algorithm follows the key). A token signed with any other algorithm — `none`
//! included — is refused before its signature is looked at. `exp` and `sub` are
//! required, `nbf` is honoured, and there is no leeway: a token is valid up to and
//! including its `exp` second.

use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, de::DeserializeOwned};

use super::permissions::{ChannelsClaim, DefaultPermissions, Permissions};

/// Why a token was refused. The connection never upgrades (HTTP 401, or 403 for
/// [`AuthFailure::WrongUser`]); each reason is counted in `/healthz` under
/// `auth_rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// No token in `Authorization: Bearer` or `?token=`.
    Missing,
    /// Not three base64url parts of JSON.
    Malformed,
    /// Signed with an algorithm the node does not accept (`none` included).
    Algorithm,
    /// The signature does not verify with the node's key.
    Signature,
    /// Past its `exp`.
    Expired,
    /// Before its `nbf`.
    NotYetValid,
    /// `sub` or `exp` missing, or a claim of the wrong shape (`channels`, `channel`).
    Claims,
    /// `sub` is not the user of the path (or of the connection): 403.
    WrongUser,
}

impl AuthFailure {
    /// Every reason, in `/healthz` order.
    pub(crate) const ALL: [AuthFailure; 8] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::Algorithm,
        AuthFailure::Signature,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::Claims,
        AuthFailure::WrongUser,
    ];

    /// The reason's key under `auth_rejected`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Algorithm => "algorithm",
            AuthFailure::Signature => "signature",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::Claims => "claims",
            AuthFailure::WrongUser => "wrong_user",
        }
    }

    /// Index into the per-reason counters.
    pub(crate) fn index(self) -> usize {
        AuthFailure::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// The HTTP status of a refused upgrade.
    pub(crate) fn status(self) -> u16 {
        if self == AuthFailure::WrongUser { 403 } else { 401 }
    }

    /// One line for the client.
    pub(crate) fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing token (Authorization: Bearer <jwt> or ?token=<jwt>)",
            AuthFailure::Malformed => "malformed token",
            AuthFailure::Algorithm => "token algorithm not accepted",
            AuthFailure::Signature => "invalid token signature",
            AuthFailure::Expired => "token expired",
            AuthFailure::NotYetValid => "token not yet valid (nbf)",
            AuthFailure::Claims => "token claims missing or invalid (sub and exp are required)",
            AuthFailure::WrongUser => "token sub does not match the user id",
        }
    }
}

/// Who a connection token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The token's `exp` (Unix seconds).
    pub(crate) exp: u64,
    /// Its `channels` claim, or the node's default.
    pub(crate) permissions: Permissions,
}

#[derive(Deserialize)]
struct ConnectionClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    channels: Option<ChannelsClaim>,
}

#[derive(Deserialize)]
struct SubscriptionClaims {
    sub: String,
    exp: u64,
    channel: String,
}

/// The node's token keys and rules.
pub(crate) struct Verifier {
    hs256: Option<DecodingKey>,
    public: Option<(Algorithm, DecodingKey)>,
    defaults: Permissions,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.is_some())
            .field("public", &self.public.as_ref().map(|(alg, _)| alg))
            .finish()
    }
}

impl Verifier {
    /// The verifier for the configured keys (the `jwt_secret` bytes and the
    /// `jwt_public_key` PEM, as the configuration read them): `None` when authentication is
    /// off (neither key). `defaults` (`default_permissions`) are the permissions of a token
    /// without a `channels` claim.
    ///
    /// # Errors
    /// An empty secret, or a PEM that is neither an RSA nor a P-256 public key — each
    /// naming the option.
    pub(crate) fn for_keys(
        secret: Option<&[u8]>,
        public_key_pem: Option<&[u8]>,
        defaults: DefaultPermissions,
    ) -> Result<Option<Arc<Verifier>>, String> {
        let auth_on = secret.is_some() || public_key_pem.is_some();
        Verifier::new(secret, public_key_pem, defaults.resolve(auth_on)).map(|v| v.map(Arc::new))
    }

    /// A verifier for an HS256 secret and/or a PEM public key; `None` with neither.
    ///
    /// # Errors
    /// An empty secret, or a PEM that is neither an RSA nor an EC (P-256) public key.
    pub(crate) fn new(
        secret: Option<&[u8]>,
        public_key_pem: Option<&[u8]>,
        defaults: Permissions,
    ) -> Result<Option<Verifier>, String> {
        check_secret(secret)?;
        let public = public_key_pem.map(public_key).transpose()?;
        let hs256 = secret.map(DecodingKey::from_secret);
        if hs256.is_none() && public.is_none() {
            return Ok(None);
        }
        Ok(Some(Verifier { hs256, public, defaults }))
    }

    /// Verifies a connection token for `user` at `now` (Unix seconds).
    pub(crate) fn connection(
        &self,
        token: Option<&str>,
        user: &str,
        now: u64,
    ) -> Result<Identity, AuthFailure> {
        let token = token.ok_or(AuthFailure::Missing)?;
        let claims: ConnectionClaims = self.verify(token, now)?;
        if claims.sub != user {
            return Err(AuthFailure::WrongUser);
        }
        let permissions = match claims.channels {
            Some(claim) => Permissions::from_claim(claim).map_err(|_| AuthFailure::Claims)?,
            None => self.defaults.clone(),
        };
        Ok(Identity { exp: claims.exp, permissions })
    }

    /// Verifies a subscription token: `sub` is `user`, `channel` is `topic`. Returns its
    /// `exp`.
    pub(crate) fn subscription(
        &self,
        token: &str,
        user: &str,
        topic: &str,
        now: u64,
    ) -> Result<u64, AuthFailure> {
        let claims: SubscriptionClaims = self.verify(token, now)?;
        if claims.sub != user {
            return Err(AuthFailure::WrongUser);
        }
        if claims.channel != topic {
            return Err(AuthFailure::Claims);
        }
        Ok(claims.exp)
    }

    fn verify<C: DeserializeOwned>(&self, token: &str, now: u64) -> Result<C, AuthFailure> {
        let alg = header_algorithm(token)?;
        let key = match (alg, &self.hs256, &self.public) {
            (Algorithm::HS256, Some(key), _) => key,
            (alg, _, Some((public_alg, key))) if alg == *public_alg => key,
            _ => return Err(AuthFailure::Algorithm),
        };
        let mut validation = Validation::new(alg);
        // `exp` and `nbf` are compared below against the caller's clock, so that the
        // upgrade, `refresh` and the expiry sweep judge a token by the same `now`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
            .map_err(|e| failure_of(e.kind()))?;
        let claims = data.claims;
        if claims.get("exp").and_then(serde_json::Value::as_u64).is_some_and(|exp| exp < now) {
            return Err(AuthFailure::Expired);
        }
        if claims.get("nbf").and_then(serde_json::Value::as_u64).is_some_and(|nbf| nbf > now) {
            return Err(AuthFailure::NotYetValid);
        }
        serde_json::from_value(claims).map_err(|_| AuthFailure::Claims)
    }
}

/// Checks the configured keys as [`Verifier::new`] would take them, keeping nothing: the
/// configuration's validation (and so `--check-config`) refuses what the node would.
///
/// # Errors
/// An empty secret, or a PEM that is neither an RSA nor an EC (P-256) public key.
pub(crate) fn check_keys(
    secret: Option<&[u8]>,
    public_key_pem: Option<&[u8]>,
) -> Result<(), String> {
    check_secret(secret)?;
    public_key_pem.map(public_key).transpose().map(drop)
}

/// An HS256 secret must not be empty.
fn check_secret(secret: Option<&[u8]>) -> Result<(), String> {
    if secret.is_some_and(<[u8]>::is_empty) {
        return Err("jwt_secret is empty".into());
    }
    Ok(())
}

/// The public key of a PEM and the algorithm it verifies: RS256 for an RSA key, ES256 for
/// a P-256 EC key.
fn public_key(pem: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    DecodingKey::from_rsa_pem(pem)
        .map(|key| (Algorithm::RS256, key))
        .or_else(|_| DecodingKey::from_ec_pem(pem).map(|key| (Algorithm::ES256, key)))
        .map_err(|_| "jwt_public_key: not a PEM RSA or EC (P-256) public key".to_owned())
}

/// The `alg` of a token's header, read only to pick the key: unknown algorithms (`none`
/// included) are [`AuthFailure::Algorithm`], an unreadable header is
/// [`AuthFailure::Malformed`].
fn header_algorithm(token: &str) -> Result<Algorithm, AuthFailure> {
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthFailure::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthFailure::Malformed)?;
    let header: Header = serde_json::from_slice(&bytes).map_err(|_| AuthFailure::Malformed)?;
    match header.alg.as_str() {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        _ => Err(AuthFailure::Algorithm),
    }
}

fn failure_of(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::Crypto(_) => AuthFailure::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => AuthFailure::Algorithm,
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidSubject
        | ErrorKind::InvalidAudience
        | ErrorKind::InvalidIssuer => AuthFailure::Claims,
        _ => AuthFailure::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";
    const NOW: u64 = 1_800_000_000;

    fn verifier() -> Verifier {
        Verifier::new(Some(SECRET), None, Permissions::closed()).unwrap().unwrap()
    }

    fn hs(claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    #[test]
    fn the_token_matrix() {
        let v = verifier();
        let ok = hs(json!({"sub":"alice","exp":NOW + 60}));
        let id = v.connection(Some(&ok), "alice", NOW).unwrap();
        assert_eq!(id.exp, NOW + 60);
        assert_eq!(id.permissions, Permissions::closed(), "no claim: the default");
        assert_eq!(v.connection(Some(&ok), "bob", NOW), Err(AuthFailure::WrongUser));
        assert_eq!(v.connection(None, "alice", NOW), Err(AuthFailure::Missing));
        assert_eq!(v.connection(Some(&ok), "alice", NOW + 61), Err(AuthFailure::Expired));
        assert!(v.connection(Some(&ok), "alice", NOW + 60).is_ok(), "valid through exp");
        let early = hs(json!({"sub":"alice","exp":NOW + 60,"nbf":NOW + 10}));
        assert_eq!(v.connection(Some(&early), "alice", NOW), Err(AuthFailure::NotYetValid));
        let no_exp = hs(json!({"sub":"alice"}));
        assert_eq!(v.connection(Some(&no_exp), "alice", NOW), Err(AuthFailure::Claims));
        let wrong_key = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub":"alice","exp":NOW + 60}),
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert_eq!(v.connection(Some(&wrong_key), "alice", NOW), Err(AuthFailure::Signature));
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"alice","exp":1900000000}"#)
        );
        assert_eq!(v.connection(Some(&none), "alice", NOW), Err(AuthFailure::Algorithm));
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &json!({"sub":"alice","exp":NOW + 60}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(v.connection(Some(&hs512), "alice", NOW), Err(AuthFailure::Algorithm));
        assert_eq!(
            v.connection(Some(&ok[..ok.len() - 5]), "alice", NOW),
            Err(AuthFailure::Signature)
        );
        assert_eq!(v.connection(Some("abc"), "alice", NOW), Err(AuthFailure::Malformed));
        assert_eq!(v.connection(Some("a.b.c"), "alice", NOW), Err(AuthFailure::Malformed));
        let bad_claim = hs(json!({"sub":"alice","exp":NOW + 60,"channels":{"subscribe":["a b"]}}));
        assert_eq!(v.connection(Some(&bad_claim), "alice", NOW), Err(AuthFailure::Claims));
        let claim = hs(json!({"sub":"alice","exp":NOW + 60,"channels":{"publish":["chat.*"]}}));
        let id = v.connection(Some(&claim), "alice", NOW).unwrap();
        assert!(id.permissions.may_publish("chat.x") && !id.permissions.may_subscribe("chat.x"));
    }

    #[test]
    fn subscription_tokens_name_the_user_and_the_topic() {
        let v = verifier();
        let t = hs(json!({"sub":"alice","exp":NOW + 60,"channel":"secret.room"}));
        assert_eq!(v.subscription(&t, "alice", "secret.room", NOW), Ok(NOW + 60));
        assert_eq!(v.subscription(&t, "bob", "secret.room", NOW), Err(AuthFailure::WrongUser));
        assert_eq!(v.subscription(&t, "alice", "other", NOW), Err(AuthFailure::Claims));
        let no_channel = hs(json!({"sub":"alice","exp":NOW + 60}));
        assert_eq!(v.subscription(&no_channel, "alice", "x", NOW), Err(AuthFailure::Claims));
    }

    #[test]
    fn unusable_keys_are_refused_at_start() {
        assert!(Verifier::new(None, Some(b"not a pem"), Permissions::closed()).is_err());
        assert!(Verifier::new(Some(b""), None, Permissions::closed()).is_err());
        assert!(Verifier::new(None, None, Permissions::closed()).unwrap().is_none());
    }
}
