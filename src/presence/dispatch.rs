//! The webhook dispatcher: batches events and POSTs them to every receiver, signed, with
//! retries.
//!
//! Runs on: a tokio current-thread runtime — the Redis bridge thread's, or (embedded bus)
//! a thread of its own. Shards and the presence owner reach it only through a bounded
//! `WebhookQueue` that never waits: nothing here can slow a shard.
//!
//! One task gathers events into batches (up to `MAX_BATCH` events or `BATCH_WINDOW`),
//! holding vacates and member removals for the vacate delay when it must do so itself
//! (embedded bus; with Redis the delay is kept in Redis, cluster-wide). Each receiver has
//! its own task and queue of batches, sent in order: a slow or dead receiver delays only
//! its own batches. A batch is retried with exponential backoff on network errors,
//! timeouts, 5xx, 408 and 429 (`webhook::retry_after`), each attempt with a fresh
//! timestamp and signature; other answers are final. Failures are logged and counted.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::webhook::{
    self, BATCH_WINDOW, Debouncer, MAX_BATCH, WebhookEvent, is_retryable, retry_after,
};
use crate::stats::NodeStats;

/// Most batches waiting per receiver; beyond it new batches are dropped (and counted).
const RECEIVER_BACKLOG: usize = 1024;

/// Where and how webhooks are sent (from the configuration).
#[derive(Clone)]
pub(crate) struct WebhookSettings {
    /// The receivers.
    pub urls: Vec<reqwest::Url>,
    /// The signing secret (never logged).
    pub secret: Arc<[u8]>,
    /// Timeout of one request.
    pub timeout: Duration,
    /// `Some`: hold vacates and removals this long here (embedded bus).
    pub debounce: Option<Duration>,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("urls", &self.urls.len())
            .field("timeout", &self.timeout)
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

/// Runs until every sender of `events` is gone; then sends what is batched and stops.
pub(crate) async fn run(
    settings: WebhookSettings,
    events: flume::Receiver<WebhookEvent>,
    stats: Arc<NodeStats>,
) {
    let client = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(client) => client,
        Err(e) => {
            warn!(cause = %e, "cannot build the webhook HTTP client: webhooks are off");
            return;
        }
    };
    let mut receivers = Vec::new();
    let mut tasks = Vec::new();
    for url in &settings.urls {
        let (tx, rx) = mpsc::channel::<Arc<[WebhookEvent]>>(RECEIVER_BACKLOG);
        receivers.push(tx);
        let receiver = Receiver {
            client: client.clone(),
            url: url.clone(),
            secret: settings.secret.clone(),
            stats: stats.clone(),
        };
        tasks.push(tokio::task::spawn_local(receiver.run(rx)));
    }
    let mut debouncer = settings.debounce.map(Debouncer::new);
    let mut batch: Vec<WebhookEvent> = Vec::new();
    let mut batch_since = Instant::now();
    let counters = &stats.webhooks;
    loop {
        let now = Instant::now();
        let batch_due = (!batch.is_empty()).then(|| batch_since + BATCH_WINDOW);
        let held_due = debouncer.as_ref().and_then(Debouncer::next_due);
        let wake = [batch_due, held_due].into_iter().flatten().min();
        let sleep = wake.map_or(Duration::from_secs(3600), |at| at.saturating_duration_since(now));
        let received = tokio::select! {
            event = events.recv_async() => Some(event),
            () = tokio::time::sleep(sleep) => None,
        };
        let mut closed = false;
        let mut take = |event: WebhookEvent, batch: &mut Vec<WebhookEvent>| {
            if batch.is_empty() {
                batch_since = Instant::now();
            }
            batch.push(event);
        };
        match received {
            Some(Ok(event)) => {
                let now = Instant::now();
                // A held event stays queued; one cancelled with its pair is done.
                let passed = match debouncer.as_mut() {
                    Some(d) => d.offer(event, now),
                    None => Some(event),
                };
                if let Some(event) = passed {
                    take(event, &mut batch);
                }
            }
            Some(Err(_)) => closed = true,
            None => {}
        }
        if let Some(d) = debouncer.as_mut() {
            for event in d.due(Instant::now()) {
                take(event, &mut batch);
            }
        }
        let full = batch.len() >= MAX_BATCH;
        let old = !batch.is_empty() && batch_since.elapsed() >= BATCH_WINDOW;
        if full || old || (closed && !batch.is_empty()) {
            let events: Arc<[WebhookEvent]> = std::mem::take(&mut batch).into();
            for tx in &receivers {
                if tx.try_send(events.clone()).is_err() {
                    counters.dropped.fetch_add(events.len() as u64, Ordering::Relaxed);
                    warn!(
                        events = events.len(),
                        "a webhook receiver is too far behind: batch dropped"
                    );
                }
            }
        }
        // Waiting: in the queue, held for the delay, or batched.
        let held = debouncer.as_ref().map_or(0, Debouncer::len) as u64;
        counters.queued.store(events.len() as u64 + held + batch.len() as u64, Ordering::Relaxed);
        if closed {
            break;
        }
    }
    drop(receivers);
    // Bounded: what is in flight gets one request's time, not the retries' two minutes.
    let last = async {
        for task in tasks {
            let _ = task.await;
        }
    };
    let _ = tokio::time::timeout(settings.timeout + Duration::from_secs(1), last).await;
}

/// Runs the dispatcher on a thread of its own (the embedded bus has no bridge thread).
///
/// # Errors
/// The runtime or the thread could not be created.
pub(crate) fn spawn_thread(
    settings: WebhookSettings,
    events: flume::Receiver<WebhookEvent>,
    stats: Arc<NodeStats>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the webhook runtime: {e}"))?;
    std::thread::Builder::new()
        .name("webhooks".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, run(settings, events, stats));
        })
        .map_err(|e| format!("cannot spawn the webhook thread: {e}"))
}

/// Builds the settings from the configuration; `None` without webhook URLs.
///
/// # Errors
/// The secret cannot be read.
pub(crate) fn settings_of(
    cfg: &crate::config::Config,
    embedded: bool,
) -> Result<Option<WebhookSettings>, String> {
    if cfg.webhook_url.0.is_empty() {
        return Ok(None);
    }
    let secret = cfg.webhook_secret()?.ok_or("webhook_url needs webhook_secret")?;
    let urls = cfg
        .webhook_url
        .0
        .iter()
        .map(|u| reqwest::Url::parse(u).map_err(|e| format!("webhook_url: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(WebhookSettings {
        urls,
        secret: secret.into(),
        timeout: cfg.webhook_timeout.0,
        debounce: embedded.then_some(cfg.webhook_vacate_delay.0),
    }))
}

/// One receiver's sender.
struct Receiver {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Arc<[u8]>,
    stats: Arc<NodeStats>,
}

impl Receiver {
    /// Sends each batch in turn until the dispatcher is gone.
    async fn run(self, mut batches: mpsc::Receiver<Arc<[WebhookEvent]>>) {
        while let Some(events) = batches.recv().await {
            let delivered = self.deliver(&events).await;
            let counter =
                if delivered { &self.stats.webhooks.sent } else { &self.stats.webhooks.failed };
            counter.fetch_add(events.len() as u64, Ordering::Relaxed);
        }
    }

    /// Sends one batch, retrying as `retry_after` allows. Returns whether it was
    /// delivered.
    async fn deliver(&self, events: &[WebhookEvent]) -> bool {
        let body = webhook::body(events);
        let first = Instant::now();
        let mut attempt = 1;
        loop {
            let t = crate::clock::unix_now();
            let signature = webhook::signature(&self.secret, t, &body);
            let sent = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-Corecast-Signature", signature)
                .body(body.clone())
                .send()
                .await;
            let failure = match sent {
                Ok(answer) if answer.status().is_success() => {
                    debug!(events = events.len(), attempt, "webhook delivered");
                    return true;
                }
                Ok(answer) => {
                    let status = answer.status().as_u16();
                    if !is_retryable(status) {
                        warn!(host = ?self.url.host_str(), status, events = events.len(), "webhook refused: not retried");
                        return false;
                    }
                    format!("HTTP {status}")
                }
                Err(e) => format!("{}", e.without_url()),
            };
            attempt += 1;
            let Some(wait) = retry_after(attempt, first, Instant::now()) else {
                warn!(host = ?self.url.host_str(), cause = %failure, events = events.len(), attempts = attempt - 1, "webhook failed: giving up");
                return false;
            };
            debug!(host = ?self.url.host_str(), cause = %failure, ?wait, "webhook failed: retrying");
            tokio::time::sleep(wait).await;
        }
    }
}
