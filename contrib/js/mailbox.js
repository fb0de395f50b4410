// mailbox.js: the browser client for mailboxd. One ES module, no build
// step, no dependencies.
//
//   import { Mailbox } from "/js/mailbox.js";
//   const box = new Mailbox("/comet/alice?token=…", {
//     onMessage: (m) => console.log(m.id, m.event, m.data),
//     onGap: (g) => reloadHistory(),          // messages were missed for good
//     onState: (s) => showStatus(s),          // connecting, open, retrying, closed
//     events: ["chat"],                       // named events to receive
//   });
//   box.close();
//
// It connects with EventSource, resumes after the last id it saw (the
// server re-sends what was missed, or says there is a gap), and falls back to
// long-poll where EventSource is missing or the stream keeps failing (a
// proxy that buffers). Reconnections back off exponentially with jitter, so
// that many clients cut off at once do not come back in the same second.
//
// All tabs of one origin that open the same mailbox URL share one
// connection: through a SharedWorker (this same file), or where that is
// missing, a leader tab chosen with the Web Locks API that relays every
// message to the other tabs over a BroadcastChannel; when the leader closes,
// another tab takes over from the last id, with no loss and no repeat.
// docs/client.md has the details.

const DEFAULTS = {
  onMessage: () => {},
  onGap: () => {},
  onState: () => {},
  events: [],
  transport: "auto", // "auto" | "sse" | "poll"
  share: true,
  backoff: { base: 1000, max: 30000 },
  // Failed stream attempts in a row, with no message in between, after
  // which "auto" gives up on EventSource for long-poll.
  sseFailures: 3,
  // Messages a shared connection keeps to hand to a tab that joins later.
  history: 100,
};

function withParams(url, params) {
  const u = new URL(url, globalThis.location ? globalThis.location.href : undefined);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null) u.searchParams.set(k, String(v));
  }
  return u.toString();
}

/// Exponential backoff with jitter: `attempt` 0, 1, 2, … → a delay in ms.
export function backoffDelay(attempt, { base, max }) {
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 20));
  return Math.round(ceiling * (0.5 + Math.random() / 2));
}

/// One connection to one mailbox URL: EventSource or long-poll, resuming
/// after the last id, reporting to `emit(kind, value)` with kind "message",
/// "gap" or "state".
class Connection {
  constructor(url, options, emit) {
    this.url = url;
    this.options = options;
    this.emit = emit;
    this.lastId = null;
    this.failures = 0;
    this.usePoll =
      options.transport === "poll" ||
      (options.transport === "auto" && typeof EventSource === "undefined");
    this.stopped = true;
    this.timer = null;
    this.source = null;
    this.abort = null;
  }

  start(lastId) {
    this.lastId = lastId ?? this.lastId;
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    if (this.abort) this.abort.abort();
    this.source = null;
    this.emit("state", "closed");
  }

  deliver(id, event, data) {
    if (this.lastId !== null && id <= this.lastId) return;
    this.lastId = id;
    this.failures = 0;
    this.emit("message", { id, event: event || "message", data });
  }

  retry() {
    if (this.stopped) return;
    const delay = backoffDelay(this.failures, this.options.backoff);
    this.failures += 1;
    this.emit("state", "retrying");
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  connect() {
    if (this.stopped) return;
    this.emit("state", "connecting");
    if (this.usePoll) this.poll();
    else this.sse();
  }

  sse() {
    const params = this.lastId !== null ? { last_id: this.lastId } : {};
    const es = new EventSource(withParams(this.url, params));
    this.source = es;
    let opened = false;
    const onEvent = (e) => {
      if (e.lastEventId === "") return;
      this.deliver(Number(e.lastEventId), e.type, e.data);
    };
    es.onopen = () => {
      opened = true;
      this.emit("state", "open");
    };
    es.onmessage = onEvent;
    for (const name of this.options.events) es.addEventListener(name, onEvent);
    es.addEventListener("gap", (e) => {
      let gap = {};
      try {
        gap = JSON.parse(e.data);
      } catch (_) {}
      this.emit("gap", gap);
    });
    es.onerror = () => {
      // EventSource retries by itself while readyState is CONNECTING; a
      // refused answer (503, 403, a proxy's 502) closes it for good.
      if (es.readyState === EventSource.CONNECTING && opened) {
        this.emit("state", "retrying");
        return;
      }
      es.close();
      this.source = null;
      if (
        this.options.transport === "auto" &&
        this.failures + 1 >= this.options.sseFailures
      ) {
        this.usePoll = true;
      }
      this.retry();
    };
  }

  async poll() {
    const controller = new AbortController();
    this.abort = controller;
    try {
      const params = { transport: "poll" };
      if (this.lastId !== null) params.since = this.lastId;
      const res = await fetch(withParams(this.url, params), {
        signal: controller.signal,
        cache: "no-store",
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const body = await res.json();
      this.emit("state", "open");
      if (body.gap) this.emit("gap", { since: this.lastId ?? 0 });
      for (const m of body.messages) this.deliver(m.id, m.event, m.data);
      if (this.lastId === null || body.last_id > this.lastId) this.lastId = body.last_id;
      this.failures = 0;
      if (!this.stopped) this.timer = setTimeout(() => this.connect(), 0);
    } catch (e) {
      if (!this.stopped) this.retry();
    }
  }
}

/// A mailbox, as a page sees it.
export class Mailbox {
  constructor(url, options = {}) {
    this.url = new URL(url, globalThis.location ? globalThis.location.href : undefined).toString();
    this.options = { ...DEFAULTS, ...options };
    this.lastId = null;
    this.closed = false;
    const share = this.options.share;
    if (share && typeof SharedWorker !== "undefined") this.viaWorker();
    else if (share && typeof BroadcastChannel !== "undefined" && globalThis.navigator?.locks)
      this.viaLeader();
    else this.alone();
    globalThis.addEventListener?.("pagehide", () => this.close());
  }

  /// Hands a message to the page once, in id order.
  receive(m) {
    if (this.lastId !== null && m.id <= this.lastId) return;
    this.lastId = m.id;
    if (this.history && !this.leading) {
      // A follower keeps what it saw too, to hand on if it leads one day.
      this.history.push(m);
      if (this.history.length > this.options.history) this.history.shift();
    }
    this.options.onMessage(m);
  }

  report(kind, value) {
    if (kind === "message") this.receive(value);
    else if (kind === "gap") this.options.onGap(value);
    else if (kind === "state" && !this.closed) this.options.onState(value);
  }

  alone() {
    this.connection = new Connection(this.url, this.options, (k, v) => this.report(k, v));
    this.connection.start(null);
  }

  viaWorker() {
    this.worker = new SharedWorker(import.meta.url, { type: "module", name: "mailbox.js" });
    this.port = this.worker.port;
    this.port.onmessage = (e) => this.report(e.data.kind, e.data.value);
    const { onMessage, onGap, onState, ...plain } = this.options;
    this.port.postMessage({ op: "open", url: this.url, options: plain });
  }

  viaLeader() {
    const name = `mailbox.js ${this.url}`;
    this.channel = new BroadcastChannel(name);
    this.history = [];
    this.channel.onmessage = (e) => {
      const { kind, value } = e.data;
      if (kind === "hello") {
        // A tab that opened later: the leader hands it what it has kept.
        if (this.leading) {
          for (const m of this.history) this.channel.postMessage({ kind: "message", value: m });
          this.channel.postMessage({ kind: "state", value: this.state });
        }
        return;
      }
      if (kind === "message" || kind === "gap") this.report(kind, value);
      if (kind === "state" && !this.leading) this.report("state", value);
    };
    this.channel.postMessage({ kind: "hello" });
    this.releaseLock = null;
    navigator.locks.request(name, () => {
      if (this.closed) return;
      // Leader from here: one connection, resumed after what this tab saw.
      this.leading = true;
      this.connection = new Connection(this.url, this.options, (kind, value) => {
        if (kind === "message") {
          this.history.push(value);
          if (this.history.length > this.options.history) this.history.shift();
        }
        if (kind === "state") this.state = value;
        this.channel.postMessage({ kind, value });
        this.report(kind, value);
      });
      this.connection.start(this.lastId);
      return new Promise((resolve) => (this.releaseLock = resolve));
    });
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.port) this.port.postMessage({ op: "close" });
    if (this.connection) this.connection.stop();
    if (this.releaseLock) this.releaseLock();
    if (this.channel) this.channel.close();
    this.options.onState("closed");
  }
}

// Running as the SharedWorker: one connection per mailbox URL for every
// tab (port) of the origin, with the last messages kept for tabs that
// join later.
if (typeof SharedWorkerGlobalScope !== "undefined" && self instanceof SharedWorkerGlobalScope) {
  const shared = new Map(); // url → { connection, ports, history, state }
  self.onconnect = (e) => {
    const port = e.ports[0];
    port.onmessage = (m) => {
      const { op, url, options } = m.data;
      if (op === "open") {
        let entry = shared.get(url);
        if (!entry) {
          const opts = { ...DEFAULTS, ...options };
          entry = { ports: new Set(), history: [], state: "connecting", url };
          entry.connection = new Connection(url, opts, (kind, value) => {
            if (kind === "message") {
              entry.history.push(value);
              if (entry.history.length > opts.history) entry.history.shift();
            }
            if (kind === "state") entry.state = value;
            for (const p of entry.ports) p.postMessage({ kind, value });
          });
          shared.set(url, entry);
          entry.connection.start(null);
        }
        for (const value of entry.history) port.postMessage({ kind: "message", value });
        port.postMessage({ kind: "state", value: entry.state });
        entry.ports.add(port);
        port.entry = entry;
      } else if (op === "close" && port.entry) {
        const entry = port.entry;
        entry.ports.delete(port);
        if (entry.ports.size === 0) {
          entry.connection.stop();
          shared.delete(entry.url);
        }
      }
    };
  };
}
