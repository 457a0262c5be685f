// What needs the supervisor, whatever view is shown: the number of pending guidance requests in
// the tab title ("(2) Board · metawsm") and, opted in, a desktop notification (Notification
// API) for each new one.  Read from GET /api/v1/runs: every 10 s, and quickly after a control
// signal arrives on the stream (the run takes a signal just after the forum projected it).

import { get } from "./api.js";

const SLOW_MS = 10000;
const NOTIFY_KEY = "metawsm.notify";
let base = "metawsm";
let count = 0;
let known = null; // keys of the pending questions already seen (null: not read yet)
let timer = null;
let inFlight = false;
const followUps = [];
const listeners = new Set();

export function setPageTitle(title) {
  base = title ? `${title} · metawsm` : "metawsm";
  render();
}

export function pendingCount() {
  return count;
}

export function onPending(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function render() {
  document.title = count ? `(${count}) ${base}` : base;
  document.body.dataset.pending = String(count);
}

export function notificationsWanted() {
  try {
    return localStorage.getItem(NOTIFY_KEY) === "on";
  } catch (_) {
    return false;
  }
}

/** Turn desktop notifications on (asks the browser's permission) or off; resolves the new state. */
export async function setNotifications(on) {
  let granted = false;
  if (on && "Notification" in window) {
    const permission = Notification.permission === "default" ? await Notification.requestPermission() : Notification.permission;
    granted = permission === "granted";
  }
  try {
    localStorage.setItem(NOTIFY_KEY, on && granted ? "on" : "off");
  } catch (_) { /* storage disabled */ }
  return on && granted;
}

function notify(run, g) {
  if (!notificationsWanted() || !("Notification" in window) || Notification.permission !== "granted") return;
  try {
    const note = new Notification(`${g.agent_name} asks (run ${run.run_id})`, { body: g.question, tag: `${run.run_id}/${g.agent_name}` });
    note.onclick = () => {
      window.focus();
      location.hash = g.thread_id ? `#/thread/${encodeURIComponent(g.thread_id)}` : "#/runs";
    };
  } catch (_) { /* some browsers only notify from a service worker */ }
}

async function read() {
  if (inFlight) return;
  inFlight = true;
  clearTimeout(timer);
  try {
    const { data } = await get("/api/v1/runs");
    const runs = data?.runs || [];
    const keys = new Set();
    let total = 0;
    for (const run of runs) {
      for (const g of run.pending_guidance || []) {
        total += 1;
        const key = `${run.run_id}\u0000${g.agent_name}\u0000${g.question}`;
        keys.add(key);
        if (known && !known.has(key)) notify(run, g);
      }
    }
    known = keys;
    count = total;
    render();
    for (const fn of listeners) fn(count);
  } catch (_) {
    // Runs not hosted, or not logged in: the views say so; the title just has no count.
  } finally {
    inFlight = false;
    timer = setTimeout(read, SLOW_MS);
  }
}

/** Start reading; `live` is the page's stream (a control signal triggers quick re-reads). */
export function startAttention(live) {
  live.on("events", (events) => {
    if (!events.some((e) => (e.envelope?.event_type || e.payload_json?.type) === "forum.control.signal")) return;
    while (followUps.length) clearTimeout(followUps.pop());
    for (const ms of [150, 600, 1500, 3000]) followUps.push(setTimeout(read, ms));
  });
  live.on("reconnected", read);
  read();
}
