// Typings for corecast.js (the corecast browser client). See README.md.

/** A v1 message as the server sends it. */
export interface Message<T = unknown> {
  /** `"<epoch>:<offset>"` when the stream keeps history. */
  id?: string;
  type: "message" | "direct" | "broadcast";
  topic?: string;
  /** The publishing user, or null for payloads other publishers put on Redis. */
  sender: string | null;
  data: T;
}

export type State = "connecting" | "open" | "closed";

export interface Resync {
  /** The topic whose events were lost beyond the history; null for the broadcast stream. */
  topic: string | null;
}

export interface ConnectOptions {
  /** The user id of `/ws/{user_id}` (1-64 of A-Z a-z 0-9 _ . -). */
  user: string;
  /** A connection token (JWT), or a function returning one (called before each
   * connection, and again to refresh the token 30 s before it expires). */
  token?: string | (() => string | Promise<string>);
  /** Reconnect delays: a random wait up to min(maxMs, baseMs × 2^attempt). */
  backoff?: { baseMs?: number; maxMs?: number };
  /** How long a connection may take to open before it is given up and retried
   * (default 10000 ms). */
  connectTimeoutMs?: number;
  /** A WebSocket implementation (default: globalThis.WebSocket). */
  WebSocket?: typeof WebSocket;
}

export interface SubscribeOptions {
  /** Events were lost beyond the history: reload the topic's state from its source. */
  onResync?: (resync: Resync) => void;
  /** A subscription token (or the API key, for `corecast.stats`). */
  token?: string;
}

export interface Subscription {
  readonly topic: string;
  unsubscribe(): void;
}

/** A refused or failed request: the server's error code, or `disconnected` / `closed`. */
export class CorecastError extends Error {
  readonly code: string;
}

export interface Client {
  readonly state: State;
  subscribe<T = unknown>(
    topic: string,
    onMessage: (message: Message<T>) => void,
    options?: SubscribeOptions,
  ): Subscription;
  /** Resolves to the event id from the server's receipt (null without history). */
  publish(topic: string, data: unknown): Promise<string | null>;
  direct(user: string, data: unknown): Promise<string | null>;
  broadcast(data: unknown): Promise<string | null>;
  on(event: "state", fn: (state: State) => void): () => void;
  on(event: "resync", fn: (resync: Resync) => void): () => void;
  on(event: "degraded" | "restored", fn: (message: { type: string }) => void): () => void;
  on(event: "broadcast" | "direct", fn: (message: Message) => void): () => void;
  on(event: "refreshed", fn: (refreshed: { exp: number }) => void): () => void;
  on(event: "error", fn: (error: { code: string; message: string; topic?: string }) => void): () => void;
  close(): void;
}

/** Connects to `url` (a node or load balancer base such as `ws://host:8080`, or several
 * node bases tried in turn) and stays connected until `close()`. */
export function connect(url: string | string[], options: ConnectOptions): Client;
