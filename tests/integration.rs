//! The single integration-test binary. Every test starts a real node in-process on
//! 127.0.0.1:0 with 2 shards (or the real binary, for signals) and talks to it with real
//! WebSocket clients over loopback.

mod support;

/// The server API: every endpoint across nodes, errors, idempotency, disconnect.
mod api;
/// Connection tokens, refresh and expiry, permissions and subscription tokens.
mod auth;
/// Slow consumers are cut off with 1013 without slowing anyone else; memory stays bounded.
mod backpressure;
/// Seed protocol fan-out: every client's text reaches every connection, once, in order.
mod broadcast;
/// The browser client in headless Chromium: resume across a killed node.
mod browser;
/// The bus contract: one order per stream across shards, exactly once, interest.
mod bus_contract;
/// Several nodes on one real Redis: delivery across nodes, interest, wire format, faults.
mod cluster;
/// Hostile input, class by class: the right status or close code, and a bystander unaffected.
mod hostile;
/// Configured limits: connection cap, heartbeat deadlines, application pings.
mod limits;
/// `/metrics` in the Prometheus text format, moving with real traffic across nodes.
mod metrics;
/// Presence, occupancy and webhooks across nodes, with a node killed.
mod presence;
/// Event ids, history and recovery, embedded and across nodes, with Redis faults.
mod recovery;
/// Redis that comes back older (a snapshot, a lagging replica): new epochs, never an id twice.
mod rollback;
/// The binary as a process: SIGTERM drains (readyz 503, Close 1012 spread over the drain
/// period) and exits 0; configuration
/// precedence with real environment variables.
mod shutdown;
/// The simulation's model of Redis against a real redis-server, answer for answer.
mod sim_model;
/// The v1 protocol: topics, direct messages, broadcast across protocols, command errors.
mod v1;
