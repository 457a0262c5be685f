// System: pipeline health (lag, outbox, bus, actors) and the whole actor tree with restarts,
// mailbox depth and failures.  Re-read every two seconds while shown.

import { get } from "./api.js";
import { h, timeEl } from "./dom.js";

const POLL_MS = 2000;

/** A table of an ActorNode tree (also used by the runs view for a run's subtree). */
export function actorTree(rootNode) {
  const rows = [];
  const walk = (node, depth) => {
    const name = h("th", { scope: "row", class: "actor-name", title: node.path }, node.name);
    name.style.setProperty("--depth", String(depth));
    const failure = node.last_failure ? `${node.last_failure.type}: ${node.last_failure.message}` : "";
    rows.push(h("tr", { "data-path": node.path, "data-state": node.state },
      name,
      h("td", {}, node.kind),
      h("td", {}, h("span", { class: `badge actor-state actor-${node.state}` }, node.state)),
      h("td", { class: "num" }, String(node.restarts ?? 0)),
      h("td", { class: "num" }, String(node.mailbox ?? 0)),
      h("td", { class: "num" }, String(node.processed ?? 0)),
      h("td", {}, timeEl(node.started_at)),
      h("td", { class: "failure" }, failure || "—"),
      h("td", { class: "details" }, detailsText(node.details)),
    ));
    for (const child of node.children || []) walk(child, depth + 1);
  };
  walk(rootNode, 0);
  return h("div", { class: "table-scroll" }, h("table", { class: "grid actor-tree" },
    h("caption", {}, "Actors"),
    h("thead", {}, h("tr", {}, ["actor", "kind", "state", "restarts", "mailbox", "processed", "started", "last failure", "details"]
      .map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows)));
}

function detailsText(details) {
  const entries = Object.entries(details || {});
  if (!entries.length) return "—";
  return entries.map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ");
}

export function mountSystem(root, { live }) {
  let destroyed = false;
  const healthBox = h("section", { class: "panel health", "aria-labelledby": "health-heading" },
    h("h2", { id: "health-heading" }, "Health"), h("p", { class: "muted" }, "Loading…"));
  const streamBox = h("section", { class: "panel stream", "aria-labelledby": "stream-heading" },
    h("h2", { id: "stream-heading" }, "This page's stream"));
  const actorsBox = h("section", { class: "panel actors-panel", "aria-labelledby": "actors-heading" },
    h("h2", { id: "actors-heading" }, "Actor tree"), h("p", { class: "muted" }, "Loading…"));
  root.append(h("div", { class: "system-page" },
    h("div", { class: "page-head" }, h("h1", {}, "System"),
      h("button", { type: "button", class: "secondary", onclick: () => load() }, "Refresh")),
    h("div", { class: "panels" }, healthBox, streamBox), actorsBox));

  const kv = (pairs) => h("dl", { class: "meta" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));

  function renderHealth(body, httpStatus) {
    const parts = [h("h2", { id: "health-heading" }, "Health ",
      h("span", { class: `badge health-status status-${body.status}`, "data-field": "health-status" }, body.status))];
    if (body.reason) parts.push(h("p", { class: "error" }, body.reason));
    parts.push(kv([["HTTP", String(httpStatus)], ["started", timeEl(body.started_at)], ["now", body.now]]));
    const w = body.worker;
    if (w) {
      parts.push(h("h3", {}, "Worker and lag"), kv([
        ["running", w.running ? "yes" : "no"],
        ["processed", String(w.total_processed)],
        ["last processed", timeEl(w.last_processed_at)],
        ["consecutive errors", String(w.consecutive_errors)],
        w.last_error ? ["last error", w.last_error] : null,
        ["outbox pending", String(w.lag.outbox_pending)],
        ["oldest pending", `${Number(w.lag.oldest_pending_age_seconds || 0).toFixed(1)} s`],
        ["stream pending", w.lag.stream_pending == null ? "unknown" : String(w.lag.stream_pending)],
        ...Object.entries(w.lag.projection_lag || {}).map(([name, lag]) => [`lag ${name}`, String(lag)]),
      ]));
    }
    if (body.outbox) {
      const o = body.outbox;
      parts.push(h("h3", {}, "Outbox"), kv([["pending", String(o.pending_count)], ["processing", String(o.processing_count)],
        ["failed", String(o.failed_count)], ["parked", String(o.parked_count)], ["sent", String(o.sent_count)]]));
    }
    if (body.forum_bus) {
      parts.push(h("h3", {}, "Bus"), kv([["healthy", body.forum_bus.healthy ? "yes" : "no"],
        body.forum_bus.error ? ["error", body.forum_bus.error] : null, ["redis", body.forum_bus.redis_url]]));
    }
    if (body.actors) {
      const a = body.actors;
      parts.push(h("h3", {}, "Actors"), kv([["total", String(a.total)], ["alive", String(a.alive)],
        ["restarting", String(a.restarting)], ["restarts (total)", String(a.restarts_total)]]));
    }
    healthBox.replaceChildren(...parts);
  }

  function renderStream() {
    const s = live.snapshot();
    streamBox.replaceChildren(h("h2", { id: "stream-heading" }, "This page's stream"), kv([
      ["status", s.status], ["cursor", String(s.cursor ?? "—")], ["last event", String(s.lastSequence)],
      ["connections", String(s.connects)], ["events received", String(s.eventsDelivered)],
      ["duplicates dropped", String(s.duplicatesDropped)],
    ]));
  }

  async function load() {
    renderStream();
    // Health answers 503 with its own body when failed: read both without the error wrapper.
    try {
      const response = await fetch("/api/v1/health", { headers: { Accept: "application/json" } });
      const body = await response.json();
      if (!destroyed) renderHealth(body, response.status);
    } catch (error) {
      if (!destroyed) healthBox.replaceChildren(h("h2", { id: "health-heading" }, "Health"),
        h("p", { class: "error", role: "alert" }, `The daemon did not answer: ${error.message}`));
    }
    try {
      const { data: body } = await get("/api/v1/debug/actors");
      if (destroyed) return;
      actorsBox.replaceChildren(h("h2", { id: "actors-heading" }, "Actor tree"), actorTree(body.actors));
    } catch (error) {
      if (!destroyed) actorsBox.replaceChildren(h("h2", { id: "actors-heading" }, "Actor tree"),
        h("p", { class: "error", role: "alert" }, `Could not read the actor tree: ${error.message}`));
    }
  }

  load();
  const timer = setInterval(load, POLL_MS);
  const offStatus = live.on("status", renderStream);

  return {
    onEvents() { renderStream(); },
    unmount() {
      destroyed = true;
      clearInterval(timer);
      offStatus();
    },
  };
}
