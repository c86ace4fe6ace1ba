//! Files the node serves to browsers, embedded in the binary (no CDN, works offline).
//!
//! Runs on: whichever shard accepted the HTTP request. Pure: the bytes are compiled in.
//!
//! - `GET /corecast.js`: the browser client (`clients/js/corecast.js`), with
//!   `Access-Control-Allow-Origin: *` so that a page from any origin may import it.
//! - `GET /`: the live dashboard (`clients/dashboard/index.html`), which imports the
//!   client from the same node; with an API key set it needs the key (the shard checks).

/// One embedded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Asset {
    /// `Content-Type`.
    pub(crate) content_type: &'static str,
    /// The file.
    pub(crate) body: &'static str,
    /// Readable from pages of any origin.
    pub(crate) any_origin: bool,
}

/// The browser client module.
pub(crate) const CLIENT_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../clients/js/corecast.js"),
    any_origin: true,
};

/// The dashboard page.
pub(crate) const DASHBOARD: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("../clients/dashboard/index.html"),
    any_origin: false,
};

/// The asset at `path`, if it is one.
pub(crate) fn at(path: &str) -> Option<Asset> {
    match path {
        "/corecast.js" => Some(CLIENT_JS),
        "/" | "/index.html" => Some(DASHBOARD),
        _ => None,
    }
}

/// The full HTTP response for `asset` (`Connection: close`, like every non-upgrade answer).
pub(crate) fn response(asset: Asset) -> Vec<u8> {
    let cors = if asset.any_origin { "Access-Control-Allow-Origin: *\r\n" } else { "" };
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n{cors}\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n{}",
        asset.content_type,
        asset.body.len(),
        asset.body
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_module_is_served_to_any_origin() {
        let asset = at("/corecast.js").expect("served");
        let text = String::from_utf8(response(asset)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("\r\nContent-Type: text/javascript; charset=utf-8\r\n"));
        assert!(head.contains("\r\nAccess-Control-Allow-Origin: *\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        assert!(body.contains("export function connect("));
        assert_eq!(at("/corecast.js/x"), None);
        let page = String::from_utf8(response(at("/").unwrap())).unwrap();
        assert!(page.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"));
        assert!(!page.contains("Access-Control-Allow-Origin"));
        for hook in ["connections", "deliveries_per_s", "nodes"] {
            assert!(page.contains(&format!("data-metric=\"{hook}\"")), "{hook}");
        }
        for hook in ["chat-input", "chat-log"] {
            assert!(page.contains(&format!("data-role=\"{hook}\"")), "{hook}");
        }
    }
}
