// The one WebSocket to /api/v1/forum/stream.
//
// * The first connection starts "now" (no cursor); every frame carries next_cursor, which we keep.
// * When the connection drops (daemon restarted, network), we reconnect with ?cursor=<last
//   next_cursor>: the server replays every event after it from SQLite, then goes live. No gap.
// * Every event is delivered to the views at most once: anything at or below the highest
//   sequence already delivered is dropped (counted in duplicatesDropped). No duplicate.
// * While disconnected the status is "disconnected" and app.js shows a banner.

import { pageKey } from "./session.js";

const PATH = "/api/v1/forum/stream";
const BACKOFF_MS = [250, 500, 1000, 2000, 3000];
const SILENCE_LIMIT_MS = 45000; // three missed 15 s heartbeats: assume the connection is dead

export class LiveStream {
  constructor() {
    this.cursor = null; // last next_cursor from the server (null: never connected)
    this.lastSequence = 0; // highest event sequence delivered to the views
    this.connects = 0;
    this.duplicatesDropped = 0;
    this.eventsDelivered = 0;
    this.status = "connecting";
    this.lastUrl = "";
    this.lastFrameAt = 0;
    this.ws = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.handlers = { events: new Set(), status: new Set(), resync: new Set(), reconnected: new Set(), decision: new Set() };
  }

  on(kind, fn) {
    this.handlers[kind].add(fn);
    return () => this.handlers[kind].delete(fn);
  }

  emit(kind, ...args) {
    for (const fn of this.handlers[kind]) {
      try {
        fn(...args);
      } catch (error) {
        console.error(`live ${kind} handler failed`, error);
      }
    }
  }

  setStatus(status, detail = "") {
    this.status = status;
    this.statusDetail = detail;
    document.body.dataset.live = status;
    this.emit("status", status, detail);
  }

  start() {
    this.connect();
    this.watchdog = setInterval(() => {
      if (this.ws && this.ws.readyState === WebSocket.OPEN && Date.now() - this.lastFrameAt > SILENCE_LIMIT_MS) {
        this.ws.close(4000, "no frame for too long");
      }
    }, 5000);
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = this.cursor === null ? "" : `?cursor=${this.cursor}`;
    return `${scheme}//${location.host}${PATH}${query}`;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const withoutCursor = this.cursor === null;
    this.lastUrl = this.url();
    let ws;
    try {
      // A handshake cannot carry headers: the page key goes as a subprotocol the daemon selects.
      const key = pageKey();
      ws = new WebSocket(this.lastUrl, key ? [`metawsm.key.${key}`] : []);
    } catch (error) {
      this.lost(`cannot open the stream: ${error.message}`);
      return;
    }
    this.ws = ws;
    let gotFrame = false;
    ws.addEventListener("open", () => {
      if (this.ws === ws) this.lastFrameAt = Date.now(); // the silence watchdog counts from here
    });
    ws.addEventListener("message", (message) => {
      if (this.ws !== ws) return;
      this.lastFrameAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch (_) {
        return;
      }
      if (!gotFrame) {
        gotFrame = true;
        this.connects += 1;
        this.attempt = 0;
        this.setStatus("live");
        // A stream opened without a cursor starts "now": whatever happened between the views'
        // first load and this moment is not replayed, so the views reload once.  With a
        // cursor (every reconnect after the first frame) the catch-up covers the gap instead.
        if (withoutCursor) this.emit("resync");
        else this.emit("reconnected");
      }
      this.frame(frame);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.lost(event.reason || `connection closed (code ${event.code})`);
    });
    ws.addEventListener("error", () => {
      // a close event follows; nothing to do here
    });
  }

  frame(frame) {
    if (frame.type === "forum.events") {
      const events = Array.isArray(frame.events) ? frame.events : [];
      const fresh = [];
      for (const event of events) {
        if (typeof event.sequence !== "number" || event.sequence <= this.lastSequence) {
          this.duplicatesDropped += 1;
          continue;
        }
        this.lastSequence = event.sequence;
        fresh.push(event);
      }
      this.advance(frame.next_cursor);
      this.advance(this.lastSequence);
      if (fresh.length) {
        this.eventsDelivered += fresh.length;
        this.emit("events", fresh);
      }
    } else if (frame.type === "operator.decision") {
      // The operator's decisions (docs/operator.md) ride the same socket; they carry no sequence.
      if (frame.decision) this.emit("decision", frame.decision);
    } else if (frame.type === "heartbeat") {
      this.advance(frame.next_cursor);
    } else if (frame.type === "error") {
      console.warn("stream error frame:", frame.message);
      this.setStatus("live", `server said: ${frame.message}`);
    }
    document.body.dataset.cursor = String(this.cursor ?? "");
  }

  advance(cursor) {
    if (typeof cursor === "number" && cursor >= 0 && (this.cursor === null || cursor > this.cursor)) {
      this.cursor = cursor;
    }
  }

  lost(reason) {
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    this.setStatus("disconnected", reason);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  /** Reconnect now (the banner's "retry now" button). */
  retryNow() {
    if (this.status !== "live") this.connect();
  }

  snapshot() {
    return {
      status: this.status,
      cursor: this.cursor,
      lastSequence: this.lastSequence,
      connects: this.connects,
      duplicatesDropped: this.duplicatesDropped,
      eventsDelivered: this.eventsDelivered,
      lastUrl: this.lastUrl,
    };
  }
}
