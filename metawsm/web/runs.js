// Runs: every run with status, agents and their health, pending guidance questions with an
// answer box (a guidance_answer control signal), and the run's actor subtree on request.
// Runs have no stream events of their own: the list is re-read every few seconds while shown
// and after every control signal on the stream.

import { get, post } from "./api.js";
import { debounce, h, keepFocus, timeEl, uid } from "./dom.js";
import { viewerName } from "./viewer.js";
import { actorTree } from "./system.js";

const POLL_MS = 3000;

export function mountRuns(root, { live }) {
  let destroyed = false;
  let lastJson = "";
  const guidanceForms = new Map(); // `${run_id}\u0000${agent}\u0000${question}` → form parts (drafts survive refreshes)
  const openTrees = new Set();

  const status = h("p", { class: "board-status", role: "status", "aria-live": "polite" }, "Loading runs…");
  const loadError = h("p", { class: "error", role: "alert" });
  const list = h("div", { class: "runs" });
  root.append(h("div", { class: "runs-page" },
    h("div", { class: "page-head" }, h("h1", {}, "Runs"),
      h("button", { type: "button", class: "secondary", onclick: () => load(true) }, "Refresh")),
    status, loadError, list));

  async function load(force = false) {
    try {
      const { data } = await get("/api/v1/runs");
      if (destroyed) return;
      loadError.textContent = "";
      const runs = data.runs || [];
      status.textContent = `${runs.length} run${runs.length === 1 ? "" : "s"} · checked ${new Date().toLocaleTimeString()}`;
      const json = JSON.stringify(runs);
      if (json === lastJson && !force) return;
      lastJson = json;
      keepFocus(() => render(runs));
    } catch (error) {
      if (destroyed) return;
      loadError.textContent = error.status === 404
        ? `Runs are not available from this daemon: ${error.message}`
        : `Could not load runs: ${error.message}`;
    }
  }

  function render(runs) {
    if (!runs.length) {
      list.replaceChildren(h("p", { class: "empty" },
        "No runs yet. Runs started through the daemon appear here with their agents, health and pending questions."));
      return;
    }
    list.replaceChildren(...runs.map(renderRun));
  }

  function renderRun(run) {
    const headingId = uid("run");
    const facts = (label, value) => value ? [h("dt", {}, label), h("dd", {}, value)] : [];
    const article = h("article", { class: "run", "data-run-id": run.run_id, "aria-labelledby": headingId },
      h("h2", { id: headingId }, run.run_id, " ", h("span", { class: `badge run-status run-${run.status}` }, run.status)),
      h("dl", { class: "meta" },
        facts("mode", run.mode),
        facts("tickets", (run.tickets || []).join(", ")),
        facts("repos", (run.repos || []).join(", ")),
        facts("created", timeEl(run.created_at)),
        facts("updated", timeEl(run.updated_at)),
        facts("forum", run.forum ? `${run.forum.open_threads} open of ${run.forum.threads} threads, ${run.forum.unanswered} unanswered` : ""),
        facts("error", run.error)),
      renderAgents(run),
      renderGuidance(run),
      renderActors(run));
    return article;
  }

  function renderAgents(run) {
    const agents = run.agents || [];
    if (!agents.length) return h("p", { class: "muted" }, "No agents.");
    return h("table", { class: "grid" },
      h("caption", {}, "Agents"),
      h("thead", {}, h("tr", {}, ["agent", "status", "health", "last activity", "restarts", "session", "completion / validation"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, agents.map((a) => h("tr", { "data-agent": a.name },
        h("th", { scope: "row" }, a.name),
        h("td", {}, a.status),
        h("td", {}, h("span", { class: `badge health health-${a.health || "unknown"}` }, a.health || "unknown")),
        h("td", {}, timeEl(a.last_activity_at)),
        h("td", {}, `${a.restarts_used ?? 0} used${a.restarts_left != null ? `, ${a.restarts_left} left` : ""}`),
        h("td", {}, a.session || "—"),
        h("td", {}, [a.completion_signalled ? "completed" : "not completed", a.validation_status ? ` / validation ${a.validation_status}` : ""]),
      ))));
  }

  function renderGuidance(run) {
    const pending = run.pending_guidance || [];
    const section = h("section", { class: "guidance" }, h("h3", {}, `Pending guidance (${pending.length})`));
    if (!pending.length) {
      section.append(h("p", { class: "muted" }, "No agent is waiting for guidance."));
      return section;
    }
    section.append(h("ul", { class: "guidance-list" }, pending.map((g) => h("li", {}, guidanceForm(run, g).form))));
    return section;
  }

  function guidanceForm(run, g) {
    const key = `${run.run_id}\u0000${g.agent_name}\u0000${g.question}`;
    const existing = guidanceForms.get(key);
    if (existing) return existing;
    const areaId = uid("guidance");
    const parts = {};
    parts.text = h("textarea", { id: areaId, name: "answer", rows: "3", required: true });
    parts.error = h("p", { class: "error", role: "alert" });
    parts.note = h("p", { class: "note", role: "status" });
    parts.submit = h("button", { type: "submit" }, "Send answer");
    parts.form = h("form", { class: "guidance-form", "data-agent": g.agent_name },
      h("p", { class: "question" }, h("strong", {}, g.agent_name), " asks: ", g.question),
      g.context ? h("p", { class: "context" }, g.context) : null,
      g.thread_id ? h("p", {}, h("a", { href: `#/thread/${encodeURIComponent(g.thread_id)}` }, "Open the control thread")) : null,
      h("label", { for: areaId }, `Answer for ${g.agent_name}`),
      parts.text,
      h("div", { class: "row" }, parts.submit),
      parts.error, parts.note);
    parts.form.addEventListener("submit", async (event) => {
      event.preventDefault();
      parts.error.textContent = "";
      parts.submit.disabled = true;
      try {
        const answer = parts.text.value;
        const { status: code } = await post("/api/v1/forum/control/signal", {
          run_id: run.run_id,
          ticket: (run.tickets || [])[0] || "",
          agent_name: g.agent_name,
          actor_type: "operator",
          actor_name: viewerName(),
          payload: { schema_version: 1, control_type: "guidance_answer", run_id: run.run_id, agent_name: g.agent_name, answer },
        });
        parts.text.value = "";
        parts.note.textContent = code === 202 ? "Accepted: it applies when the pipeline recovers." : "Answer sent.";
        load(true);
      } catch (error) {
        parts.error.textContent = error.message;
      } finally {
        parts.submit.disabled = false;
      }
    });
    guidanceForms.set(key, parts);
    return parts;
  }

  function renderActors(run) {
    const body = h("div", { class: "actor-subtree" });
    const details = h("details", { class: "actors", open: openTrees.has(run.run_id) },
      h("summary", {}, "Actor subtree"), body);
    const fill = async () => {
      body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
      try {
        const { data } = await get(`/api/v1/runs/${encodeURIComponent(run.run_id)}/actors`);
        body.replaceChildren(actorTree(data.actors));
      } catch (error) {
        body.replaceChildren(h("p", { class: "error" }, error.status === 404
          ? `No actor subtree for this run: ${error.message}`
          : `Could not load the actor subtree: ${error.message}`));
      }
    };
    details.addEventListener("toggle", () => {
      if (details.open) { openTrees.add(run.run_id); fill(); } else openTrees.delete(run.run_id);
    });
    if (details.open) fill();
    return details;
  }

  const onSignal = debounce(() => load(), 100);
  load();
  const timer = setInterval(() => load(), POLL_MS);

  return {
    onEvents(events) {
      if (events.some((e) => (e.envelope?.event_type || e.payload_json?.type) === "forum.control.signal")) onSignal();
    },
    resync() { load(); },
    unmount() {
      destroyed = true;
      clearInterval(timer);
      onSignal.cancel();
    },
  };
}
