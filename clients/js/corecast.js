// corecast browser client: one ES module, no build step, no dependencies.
//
// Speaks the v1 protocol (subprotocol `corecast.v1`, PROTOCOL.md) and does what every app
// otherwise rewrites: reconnects with capped full-jitter exponential backoff, resumes
// each topic from the id of the last event it delivered (and the broadcast stream with
// `?lastEventId=`), re-subscribes, drops duplicates, reports `recovered:false` as a
// "resync" event, reports `degraded` / `restored`, and refreshes the token before it
// expires. README.md beside this file documents the surface.

const SUBPROTOCOL = "corecast.v1";
const TOPIC = /^[A-Za-z0-9_.:\/-]{1,128}$/;
const USER = /^[A-Za-z0-9_.-]{1,64}$/;
const EVENT_ID = /^(\d{1,19}):(\d{1,19})$/;

/** A failed request: `code` is the server's error code, or `disconnected` / `closed`. */
export class CorecastError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "CorecastError";
    this.code = code;
  }
}

/** Parses `"<epoch>:<offset>"`; `null` for anything else. */
function parseId(id) {
  const m = typeof id === "string" ? EVENT_ID.exec(id) : null;
  return m ? { epoch: BigInt(m[1]), offset: BigInt(m[2]) } : null;
}

/** Whether event `id` comes after `last` in one stream (a new epoch always does). */
function isNewer(id, last) {
  const a = parseId(id);
  const b = parseId(last);
  if (!a || !b) return true;
  return a.epoch !== b.epoch || a.offset > b.offset;
}

/** The `exp` claim of a JWT (seconds), or `null`. */
function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="))).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/**
 * Connects to corecast and keeps the connection up until `close()`.
 *
 * @param {string | string[]} url node or load balancer base (`ws://host:8080`), or several
 *   node bases tried in turn
 * @param {object} options `{ user, token, backoff: { baseMs, maxMs }, connectTimeoutMs, WebSocket }`
 */
export function connect(url, options = {}) {
  return new Client(url, options);
}

class Client {
  #urls;
  #user;
  #token;
  #backoff;
  #connectTimeoutMs;
  #WebSocket;
  #ws = null;
  #state = "connecting";
  #attempt = 0;
  #urlAt = 0;
  #timer = null;
  #refreshTimer = null;
  #listeners = new Map();
  /** topic → { handlers: Set, onResync: Set, lastId, live } */
  #topics = new Map();
  #lastBroadcastId = null;
  /** Requests go one at a time: every answer and error belongs to `#inFlight`. */
  #queue = [];
  #inFlight = null;

  constructor(url, options) {
    this.#urls = (Array.isArray(url) ? url : [url]).map((u) => String(u).replace(/\/+$/, ""));
    if (this.#urls.length === 0) throw new TypeError("connect: no URL");
    if (!USER.test(options.user ?? "")) {
      throw new TypeError("connect: options.user must be 1-64 of A-Z a-z 0-9 _ . -");
    }
    this.#user = options.user;
    this.#token = options.token ?? null;
    this.#backoff = { baseMs: 250, maxMs: 15000, ...(options.backoff ?? {}) };
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.#open();
  }

  /** `connecting`, `open` or `closed` (final, after `close()`). */
  get state() {
    return this.#state;
  }

  /**
   * Listens to `state` (the new state), `resync` ({ topic } — `topic` null for the
   * broadcast stream), `degraded`, `restored`, `broadcast` and `direct` (the v1 message),
   * `refreshed` ({ exp }: the server took a new token), `error` (server errors no request
   * owns, and failed token refreshes). Returns a function that stops listening.
   */
  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return () => this.#listeners.get(event)?.delete(fn);
  }

  /**
   * Subscribes to `topic`; `onMessage` gets each v1 message (`id`, `topic`, `sender`,
   * `data`) once, in order, across reconnects. `onResync` is called when events were lost
   * beyond the history: reload the topic's state from your source of truth. `token` is a
   * subscription token (or, for `corecast.stats`, the API key), sent with every
   * (re)subscribe.
   */
  subscribe(topic, onMessage, { onResync, token } = {}) {
    if (!TOPIC.test(topic)) throw new TypeError(`subscribe: invalid topic ${JSON.stringify(topic)}`);
    let entry = this.#topics.get(topic);
    if (!entry) {
      entry = { handlers: new Set(), onResync: new Set(), lastId: null, live: false, token };
      this.#topics.set(topic, entry);
      if (this.#state === "open") this.#subscribeOnServer(topic, entry);
    }
    const handler = { onMessage };
    entry.handlers.add(handler);
    if (onResync) entry.onResync.add(onResync);
    return {
      topic,
      unsubscribe: () => {
        entry.handlers.delete(handler);
        if (onResync) entry.onResync.delete(onResync);
        if (entry.handlers.size === 0 && this.#topics.get(topic) === entry) {
          this.#topics.delete(topic);
          if (this.#state === "open") {
            this.#request({ op: "unsubscribe", topic }, "unsubscribed").catch(() => {});
          }
        }
      },
    };
  }

  /**
   * Publishes `data` on `topic`. Resolves to the event id from the server's receipt (null
   * when the topic keeps no history); rejects with a CorecastError if the server refuses
   * it, or with code `disconnected` if the connection drops after it was sent and before
   * the receipt (it may or may not have been stored). Never sent twice: a publish not yet
   * sent waits for the connection.
   */
  publish(topic, data) {
    if (!TOPIC.test(topic)) return Promise.reject(new TypeError(`publish: invalid topic ${JSON.stringify(topic)}`));
    return this.#request({ op: "publish", topic, data, ack: true }, "published").then((m) => m.id);
  }

  /** Sends `data` to every connection of user `user`; resolves to the event id. */
  direct(user, data) {
    if (!USER.test(user)) return Promise.reject(new TypeError(`direct: invalid user ${JSON.stringify(user)}`));
    return this.#request({ op: "direct", to: user, data, ack: true }, "published").then((m) => m.id);
  }

  /** Sends `data` to every connection of the cluster; resolves to the event id. */
  broadcast(data) {
    return this.#request({ op: "broadcast", data, ack: true }, "published").then((m) => m.id);
  }

  /** Closes for good: state `closed`, pending requests rejected, no reconnect. */
  close() {
    if (this.#state === "closed") return;
    clearTimeout(this.#timer);
    clearTimeout(this.#refreshTimer);
    this.#setState("closed");
    this.#failAll("closed", "client closed");
    const ws = this.#ws;
    this.#ws = null;
    if (ws) ws.close(1000, "client closed");
  }

  // ---- connection ----

  #emit(event, value) {
    for (const fn of this.#listeners.get(event) ?? []) {
      try {
        fn(value);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit("state", state);
  }

  async #currentToken() {
    return typeof this.#token === "function" ? await this.#token() : this.#token;
  }

  async #open() {
    if (this.#state === "closed") return;
    const base = this.#urls[this.#urlAt % this.#urls.length];
    this.#urlAt += 1;
    let token = null;
    try {
      token = await this.#currentToken();
    } catch (e) {
      this.#emit("error", { code: "token", message: String(e) });
    }
    if (this.#state === "closed") return;
    const query = new URLSearchParams();
    if (token) query.set("token", token);
    if (this.#lastBroadcastId) query.set("lastEventId", this.#lastBroadcastId);
    const qs = query.toString();
    const target = `${base}/ws/${encodeURIComponent(this.#user)}${qs ? `?${qs}` : ""}`;
    let ws;
    try {
      ws = new this.#WebSocket(target, SUBPROTOCOL);
    } catch (e) {
      this.#emit("error", { code: "connect", message: String(e) });
      this.#retry();
      return;
    }
    this.#ws = ws;
    // A connection that neither opens nor fails (a silent network) is given up on.
    const opening = setTimeout(() => lost(), this.#connectTimeoutMs);
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      clearTimeout(opening);
      this.#attempt = 0;
      this.#setState("open");
      this.#scheduleRefresh(token);
      for (const [topic, entry] of this.#topics) this.#subscribeOnServer(topic, entry);
      this.#pump();
    };
    ws.onmessage = (e) => {
      if (this.#ws !== ws) return;
      let message;
      try {
        message = JSON.parse(e.data);
      } catch {
        return;
      }
      this.#receive(message);
    };
    // The end of this connection, whichever of close, error or the open timeout comes
    // first, handled once. `error` counts on its own: browsers follow it with `close`,
    // but Node's WebSocket (undici) fires only `error` when the connection is refused.
    const lost = () => {
      clearTimeout(opening);
      if (this.#ws !== ws) return;
      this.#ws = null;
      try {
        ws.close();
      } catch {
        // already closing
      }
      clearTimeout(this.#refreshTimer);
      this.#failSent("disconnected", "connection lost before the answer");
      for (const entry of this.#topics.values()) entry.live = false;
      if (this.#state === "closed") return;
      this.#setState("connecting");
      this.#retry();
    };
    ws.onclose = lost;
    ws.onerror = lost;
  }

  /** Full jitter: a random wait up to min(max, base × 2^attempt). */
  #retry() {
    const cap = Math.min(this.#backoff.maxMs, this.#backoff.baseMs * 2 ** Math.min(this.#attempt, 20));
    this.#attempt += 1;
    this.#timer = setTimeout(() => this.#open(), Math.random() * cap);
  }

  #scheduleRefresh(token) {
    clearTimeout(this.#refreshTimer);
    if (typeof this.#token !== "function" || !token) return;
    const exp = tokenExpiry(token);
    if (exp === null) return;
    const inMs = Math.max(1000, (exp - 30) * 1000 - Date.now());
    this.#refreshTimer = setTimeout(() => this.#refresh(), inMs);
  }

  async #refresh() {
    let token;
    try {
      token = await this.#currentToken();
      const answer = await this.#request({ op: "refresh", token }, "refreshed");
      this.#scheduleRefresh(token);
      this.#emit("refreshed", { exp: answer.exp });
    } catch (e) {
      this.#emit("error", { code: e.code ?? "token", message: String(e.message ?? e) });
    }
  }

  // ---- requests: one at a time ----

  /** Queues a request; `first` ones (subscriptions, on a new connection) go ahead of
   * publishes still waiting, so that a subscriber receives what it publishes next. */
  #request(command, answer, first = false) {
    if (this.#state === "closed") return Promise.reject(new CorecastError("closed", "client closed"));
    return new Promise((resolve, reject) => {
      const keep = answer === "published"; // waits across reconnects until sent
      const request = { command, answer, resolve, reject, keep, first };
      const at = first ? this.#queue.findIndex((r) => !r.first) : -1;
      if (at === -1) this.#queue.push(request);
      else this.#queue.splice(at, 0, request);
      this.#pump();
    });
  }

  #pump() {
    if (this.#inFlight || this.#state !== "open" || !this.#ws) return;
    const next = this.#queue.shift();
    if (!next) return;
    this.#inFlight = next;
    this.#ws.send(JSON.stringify(next.command));
  }

  #settle(error, message) {
    const request = this.#inFlight;
    this.#inFlight = null;
    if (error) request.reject(error);
    else request.resolve(message);
    this.#pump();
  }

  /** The request on the wire fails; queued publishes wait; the rest (subscribes,
   * history, refresh) are dropped: the next connection redoes them. */
  #failSent(code, why) {
    const sent = this.#inFlight;
    this.#inFlight = null;
    const dropped = this.#queue.filter((r) => !r.keep);
    this.#queue = this.#queue.filter((r) => r.keep);
    if (sent) sent.reject(new CorecastError(code, why));
    for (const r of dropped) r.reject(new CorecastError(code, why));
  }

  #failAll(code, why) {
    const all = this.#inFlight ? [this.#inFlight, ...this.#queue] : this.#queue;
    this.#inFlight = null;
    this.#queue = [];
    for (const r of all) r.reject(new CorecastError(code, why));
  }

  /** Subscribes on the server, from the last delivered id when there is one. */
  #subscribeOnServer(topic, entry) {
    const command = { op: "subscribe", topic };
    if (entry.lastId) command.since = entry.lastId;
    if (entry.token) command.token = entry.token;
    this.#request(command, "subscribed", true).then(
      () => {
        entry.live = true;
        // No position yet: learn where the stream stands, so that a reconnect can resume.
        if (!entry.lastId) {
          const where = { op: "history", topic, since: "latest", limit: 1 };
          this.#request(where, "history", true).then(
            (page) => {
              if (page.position && !entry.lastId) entry.lastId = page.position;
            },
            () => {},
          );
        }
      },
      (e) => {
        // A lost connection is not the topic's fault: the next one subscribes again.
        if (e.code !== "disconnected" && e.code !== "closed") {
          this.#emit("error", { code: e.code, message: e.message, topic });
        }
      },
    );
  }

  #receive(m) {
    const inFlight = this.#inFlight;
    switch (m.type) {
      case "message": {
        const entry = this.#topics.get(m.topic);
        if (!entry) return;
        if (m.id) {
          if (entry.lastId && !isNewer(m.id, entry.lastId)) return; // seen already
          entry.lastId = m.id;
        }
        for (const h of [...entry.handlers]) h.onMessage(m);
        return;
      }
      case "broadcast":
        if (m.id) {
          if (this.#lastBroadcastId && !isNewer(m.id, this.#lastBroadcastId)) return;
          this.#lastBroadcastId = m.id;
        }
        this.#emit("broadcast", m);
        return;
      case "direct":
        this.#emit("direct", m);
        return;
      case "recovered":
        if (m.recovered === false) {
          const topic = m.topic ?? null;
          const entry = topic === null ? null : this.#topics.get(topic);
          for (const fn of entry?.onResync ?? []) fn({ topic });
          this.#emit("resync", { topic });
        }
        return;
      case "degraded":
      case "restored":
        this.#emit(m.type, m);
        return;
      case "token_expired":
        if (typeof this.#token === "function") this.#refresh();
        return;
      case "error":
        if (inFlight) this.#settle(new CorecastError(m.code, m.message));
        else this.#emit("error", m);
        return;
      default:
        if (inFlight && m.type === inFlight.answer) this.#settle(null, m);
    }
  }
}
