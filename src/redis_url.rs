//! Where the Redis bridge connects: checking a Redis URL without connecting, showing it
//! without its password, and reading the CA file of a `rediss://` URL. Configuration
//! checks its options with these; the bridge uses them to build its clients.
//!
//! Runs on: the main thread (option parsing and validation), then the bridge thread.
//! [`check_url`] and [`redact_url`] are pure; [`load_ca`] reads a file. Depends on nothing
//! else in the crate.

use fred::types::config::Config as RedisConfig;

/// `url` with the password of its user part replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "***".into() };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(name, _)| name);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Checks a Redis URL without connecting. The error never contains the URL (it may hold
/// a password).
///
/// # Errors
/// A message saying what is wrong.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err("the Redis URL must start with redis:// (or rediss://)".into());
    }
    RedisConfig::from_url(url)
        .map(|_| ())
        .map_err(|e| format!("the Redis URL is invalid: {}", e.details()))
}

/// Reads the CA certificates of `path` (PEM) into a root store for `rediss://`.
///
/// # Errors
/// A message naming the file when it cannot be read or holds no certificate.
pub(crate) fn load_ca(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("redis_tls_ca {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("redis_tls_ca {shown}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("redis_tls_ca {shown}: no usable CA certificate in the file"));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_echoing_them() {
        assert!(check_url("redis://:s3cret@127.0.0.1:6390/2").is_ok());
        assert!(check_url("rediss://:s3cret@127.0.0.1:6390/2").is_ok());
        let err = check_url("http://:s3cret@host/").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        let err = check_url("redis://:s3cret@[::1/").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
