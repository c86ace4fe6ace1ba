//! Reading the secret and key options: a secret is given inline (`jwt_secret`,
//! `api_key`, `webhook_secret`) or in a file (`<name>_file`), a public key in a PEM file
//! (`jwt_public_key`). This reads the bytes; it parses none of them (`auth` parses the JWT
//! keys).
//!
//! Runs on: the main thread, at start-up — when the configuration is validated (the bytes
//! are read to check them, then dropped), and again when `server::start` builds the token
//! verifier, the API key and the webhook settings from them.
//!
//! Errors name the option; they never contain a secret.

use super::{
    options::Config,
    values::{OptionalPath, Secret},
};

/// A secret given inline (option `name`) or in a file (`<name>_file`): its bytes, the
/// file's without its trailing line end (editors add one). `None` with neither.
///
/// # Errors
/// Both set, or the file cannot be read — naming the option.
fn secret_bytes(
    inline: &Secret,
    file: &OptionalPath,
    name: &str,
) -> std::result::Result<Option<Vec<u8>>, String> {
    match (&inline.0, &file.0) {
        (Some(_), Some(_)) => Err(format!("{name} and {name}_file: set one, not both")),
        (Some(secret), None) => Ok(Some(secret.clone().into_bytes())),
        (None, Some(path)) => {
            let mut bytes =
                std::fs::read(path).map_err(|e| format!("{name}_file {}: {e}", path.display()))?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            Ok(Some(bytes))
        }
        (None, None) => Ok(None),
    }
}

/// The JWT keys as the options give them: bytes, not yet parsed (`auth` parses them).
pub(crate) struct JwtKeys {
    /// The HS256 secret (`jwt_secret`, or the content of `jwt_secret_file`).
    pub(crate) secret: Option<Vec<u8>>,
    /// The PEM public key read from `jwt_public_key`.
    pub(crate) public_key_pem: Option<Vec<u8>>,
}

impl Config {
    /// The JWT keys' bytes, read from the options (and their files).
    ///
    /// # Errors
    /// Both `jwt_secret` and `jwt_secret_file` set, or an unreadable file — naming the
    /// option.
    pub(crate) fn jwt_keys(&self) -> std::result::Result<JwtKeys, String> {
        let secret = secret_bytes(&self.jwt_secret, &self.jwt_secret_file, "jwt_secret")?;
        let public_key_pem = match &self.jwt_public_key.0 {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("jwt_public_key {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(JwtKeys { secret, public_key_pem })
    }

    /// The secret that signs webhook requests: `None` without one.
    ///
    /// # Errors
    /// Both `webhook_secret` and `webhook_secret_file` set, or an unreadable file.
    pub(crate) fn webhook_secret(&self) -> std::result::Result<Option<Vec<u8>>, String> {
        secret_bytes(&self.webhook_secret, &self.webhook_secret_file, "webhook_secret")
    }

    /// The server API's key: `None` when the API is off.
    ///
    /// # Errors
    /// Both `api_key` and `api_key_file` set, an unreadable file, or an empty key.
    pub(crate) fn api_key(&self) -> std::result::Result<Option<String>, String> {
        let Some(key) = secret_bytes(&self.api_key, &self.api_key_file, "api_key")? else {
            return Ok(None);
        };
        let key = String::from_utf8(key).map_err(|_| "api_key_file: not UTF-8".to_owned())?;
        if key.is_empty() {
            return Err("the API key is empty".into());
        }
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_inline_or_in_a_file_without_its_line_end() {
        let dir = std::env::temp_dir().join(format!("corecast-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s");
        std::fs::write(&file, "s3cret\r\n").unwrap();
        let inline = Secret(Some("abc".into()));
        let path = OptionalPath(Some(file));
        let none = (Secret::default(), OptionalPath::default());
        assert_eq!(secret_bytes(&inline, &none.1, "x").unwrap(), Some(b"abc".to_vec()));
        assert_eq!(secret_bytes(&none.0, &path, "x").unwrap(), Some(b"s3cret".to_vec()));
        assert_eq!(secret_bytes(&none.0, &none.1, "x").unwrap(), None);
        let err = secret_bytes(&inline, &path, "api_key").unwrap_err();
        assert_eq!(err, "api_key and api_key_file: set one, not both");
        let err =
            secret_bytes(&none.0, &OptionalPath(Some(dir.join("missing"))), "api_key").unwrap_err();
        assert!(err.starts_with("api_key_file "), "{err}");
    }
}
