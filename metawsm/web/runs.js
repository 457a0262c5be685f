// Runs: every run the daemon hosts (GET /api/v1/runs) with its status, agents and their health,
// pending guidance questions with an answer box (a guidance_answer control signal), and the
// run's actor subtree (GET /api/v1/runs/{id}/actors) on request.
//
// How it stays current: runs have no stream events of their own (status, health and activity
// change inside the daemon), so the list is polled every POLL_MS while the view is shown.  A
// control signal is what moves a run between running and awaiting_guidance, so when one arrives
// on the stream (or this page sends an answer) the view re-reads every FAST_MS for FAST_FOR_MS:
// the run's actor applies the signal just after the forum projected it, and the page shows the
// new status within a fraction of a second instead of at the next slow poll.  Any other forum
// event of a run (its forum counts) triggers one re-read.  Reads never overlap.
//
// Runs are rendered keyed by run id: a run's article, its answer boxes (with their drafts and
// focus) and its opened actor subtree are the same DOM nodes from one read to the next.

import { get } from "./api.js";
import { sendGuidanceAnswer } from "./control.js";
import { h, keepFocus, timeEl, uid } from "./dom.js";
import { mountStartForm } from "./runs_start.js";
import { agentPane, changesPanel, decisionsPanel, pullRequests, runActions } from "./runs_detail.js";

const POLL_MS = 2000;
const FAST_MS = 250;
const FAST_FOR_MS = 3000;

export function mountRuns(root, { live }) {
  let destroyed = false;
  let timer = null;
  let inFlight = false;
  let again = false;
  let againForce = false;
  let fastUntil = 0;
  let lastJson = "";
  let loads = 0;
  let lastCount = -1;
  const cards = new Map(); // run_id → { article, details, body, forms: Map(key → parts), json }

  const status = h("p", { class: "board-status", role: "status", "aria-live": "polite" }, "Loading runs…");
  const checked = h("p", { class: "board-status runs-checked" });
  const loadError = h("p", { class: "error", role: "alert" });
  const list = h("div", { class: "runs" });
  // data-loads counts the completed reads of the list (lets tests wait for "two more reads").
  const page = h("div", { class: "runs-page", "data-loads": "0" },
    h("div", { class: "page-head" }, h("h1", {}, "Runs"),
      h("button", { type: "button", class: "secondary", onclick: () => load(true) }, "Refresh")),
    h("div", { class: "runs-bar" }, status, checked), loadError, list);
  root.append(page);
  page.insertBefore(mountStartForm({ onStarted: () => hurry() }), page.children[1]);

  function schedule() {
    clearTimeout(timer);
    if (destroyed) return;
    timer = setTimeout(() => load(), Date.now() < fastUntil ? FAST_MS : POLL_MS);
  }

  function hurry() {
    fastUntil = Date.now() + FAST_FOR_MS;
    load();
  }

  async function load(force = false) {
    if (destroyed) return;
    if (inFlight) { again = true; againForce = againForce || force; return; }
    inFlight = true;
    clearTimeout(timer);
    try {
      const { data } = await get("/api/v1/runs");
      if (destroyed) return;
      loadError.textContent = "";
      const runs = data?.runs || [];
      if (runs.length !== lastCount) {
        lastCount = runs.length;
        status.textContent = `${runs.length} run${runs.length === 1 ? "" : "s"}`;
      }
      checked.textContent = `checked ${new Date().toLocaleTimeString()}`;
      const json = JSON.stringify(runs, stable);
      if (json !== lastJson || force) {
        lastJson = json;
        keepFocus(() => render(runs, force));
      }
      refreshOpenTrees();
      loads += 1;
      page.dataset.loads = String(loads);
    } catch (error) {
      if (destroyed) return;
      loadError.textContent = error.status === 404 || error.status === 503
        ? `Runs are not available from this daemon: ${error.message}`
        : `Could not load runs: ${error.message}`;
    } finally {
      inFlight = false;
      if (!destroyed) {
        if (again) {
          const f = againForce;
          again = false;
          againForce = false;
          load(f);
        } else schedule();
      }
    }
  }

  function render(runs, force = false) {
    const shown = new Set(runs.map((r) => r.run_id));
    for (const id of [...cards.keys()]) if (!shown.has(id)) cards.delete(id);
    if (!runs.length) {
      list.replaceChildren(h("p", { class: "empty" },
        "No runs yet. Runs started through the daemon (metawsm run, metawsm bootstrap or POST /api/v1/runs) "
        + "appear here with their agents, health and pending questions."));
      return;
    }
    const articles = runs.map((run) => renderRun(run, force));
    const current = [...list.children];
    if (current.length !== articles.length || current.some((el, i) => el !== articles[i])) list.replaceChildren(...articles);
  }

  function cardFor(run) {
    let card = cards.get(run.run_id);
    if (!card) {
      card = { article: h("article", { class: "run", "data-run-id": run.run_id }), forms: new Map(), json: "" };
      card.body = h("div", { class: "actor-subtree" });
      card.details = h("details", { class: "actors" }, h("summary", {}, "Actor subtree"), card.body);
      card.details.addEventListener("toggle", () => { if (card.details.open) fillTree(run.run_id, card, true); });
      // Parts that keep their own state (open folds, a confirmation, a pane's text) across re-renders.
      card.actions = runActions(run.run_id, { onDone: () => hurry() });
      card.changes = changesPanel(run.run_id);
      card.decisions = decisionsPanel(run.run_id);
      card.panes = new Map();
      cards.set(run.run_id, card);
    }
    return card;
  }

  function renderRun(run, force = false) {
    const card = cardFor(run);
    const json = JSON.stringify(run, stable);
    if (json === card.json && !force) return card.article;
    card.json = json;
    const headingId = `run-heading-${run.run_id}`;
    const facts = (label, value) => value ? h("div", {}, h("dt", {}, label), h("dd", {}, value)) : null;
    const steps = run.steps || [];
    const done = steps.filter((s) => s.status === "done" || s.status === "skipped").length;
    const failed = steps.find((s) => s.status === "failed");
    const forum = run.forum
      ? `${run.forum.open_threads ?? 0} open of ${run.forum.threads ?? 0} thread${run.forum.threads === 1 ? "" : "s"}, `
        + `${run.forum.unanswered ?? 0} unanswered`
      : "";
    card.article.setAttribute("aria-labelledby", headingId);
    card.article.dataset.status = run.status;
    card.actions.update(run);
    const panes = (run.agents || []).map((a) => {
      const key = `${a.workspace}\u0000${a.name}`;
      if (!card.panes.has(key)) card.panes.set(key, agentPane(run.run_id, a));
      const pane = card.panes.get(key);
      pane.update(a);
      return pane.element;
    });
    // (null parts are left out: replaceChildren would print them as the text "null")
    card.article.replaceChildren(...[
      h("h2", { id: headingId }, run.run_id, " ",
        h("span", { class: `badge run-status run-${run.status}`, "data-field": "run-status" }, run.status)),
      card.actions.element,
      h("dl", { class: "meta run-facts" },
        facts("mode", run.mode),
        facts("tickets", (run.tickets || []).join(", ")),
        facts("repos", (run.repos || []).join(", ")),
        facts("created", timeEl(run.created_at)),
        facts("updated", timeEl(run.updated_at)),
        facts("steps", steps.length ? `${done} of ${steps.length} done` : ""),
        facts("failed step", failed ? `${failed.name}${failed.ticket ? ` (${failed.ticket})` : ""}: ${failed.error || "failed"}` : ""),
        facts("forum", forum),
        facts("error", run.error)),
      renderBrief(run),
      pullRequests(run),
      renderAgents(run),
      renderGuidance(run, card),
      panes.length ? h("section", { class: "panes", "aria-label": "Agent panes" }, panes) : null,
      card.changes.element,
      card.decisions.element,
      card.details].filter((part) => part !== null && part !== undefined));
    return card.article;
  }

  function renderBrief(run) {
    const b = run.brief;
    if (!b) return null;
    const row = (label, value) => value ? [h("dt", {}, label), h("dd", {}, value)] : [];
    return h("details", { class: "brief" }, h("summary", {}, "Brief"),
      h("dl", { class: "meta" },
        row("goal", b.goal), row("scope", b.scope), row("done criteria", b.done_criteria),
        row("constraints", b.constraints), row("merge intent", b.merge_intent),
        (b.qa || []).map((qa) => row(`Q: ${qa.question}`, qa.answer))));
  }

  function renderAgents(run) {
    const agents = run.agents || [];
    if (!agents.length) return h("p", { class: "muted" }, "No agents.");
    return h("div", { class: "table-scroll" }, h("table", { class: "grid agents" },
      h("caption", {}, "Agents"),
      h("thead", {}, h("tr", {}, ["agent", "status", "health", "last activity", "restarts", "tmux session",
        "completion / validation", "actions"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, agents.map((a) => {
        const used = a.restarts_used ?? 0;
        const total = a.restarts_left != null ? used + a.restarts_left : null;
        const attach = a.session && a.socket ? `tmux -L ${a.socket} attach -t ${a.session}` : "";
        return h("tr", { "data-agent": a.name, "data-workspace": a.workspace || "" },
          h("th", { scope: "row" }, a.name, a.workspace ? h("div", { class: "muted small" }, a.workspace) : null),
          h("td", { "data-field": "agent-status" }, a.status,
            a.last_error ? h("div", { class: "error small" }, a.last_error) : null),
          h("td", { "data-field": "health" },
            h("span", { class: `badge health health-${a.health || "unknown"}` }, a.health || "unknown")),
          h("td", {}, timeEl(a.last_activity_at)),
          h("td", { "data-field": "restarts" },
            total != null ? `${used} of ${total} used, ${a.restarts_left} left` : `${used} used`),
          h("td", { "data-field": "session", title: attach || null },
            a.session || "—",
            a.pane_pid ? h("div", { class: "muted small" }, `pane pid ${a.pane_pid}`) : null,
            attach ? h("div", { class: "small" }, h("code", { class: "attach", "data-field": "attach" }, attach)) : null),
          h("td", {}, a.completion_signalled ? "completed" : "not completed",
            a.validation_status ? ` / validation ${a.validation_status}` : ""),
          h("td", {}, restartButton(run, a)));
      }))));
  }

  // Restart is per agent: the button sits in the agent's row, confirmed inline like the run's actions.
  function restartButton(run, a) {
    const card = cards.get(run.run_id);
    return card.actions.restartControl(a.name);
  }

  function renderGuidance(run, card) {
    const pending = run.pending_guidance || [];
    const keys = new Set(pending.map((g) => guidanceKey(g)));
    for (const key of [...card.forms.keys()]) if (!keys.has(key)) card.forms.delete(key);
    const section = h("section", { class: "guidance" }, h("h3", {}, `Pending guidance (${pending.length})`));
    if (card.sent) section.append(h("p", { class: "note sent" }, card.sent));
    if (!pending.length) {
      section.append(h("p", { class: "muted" }, "No agent is waiting for guidance."));
      return section;
    }
    section.append(h("ul", { class: "guidance-list" }, pending.map((g) => h("li", {}, guidanceForm(run, card, g).form))));
    return section;
  }

  function guidanceKey(g) {
    return `${g.agent_name}\u0000${g.thread_id || ""}\u0000${g.question}`;
  }

  function guidanceForm(run, card, g) {
    const key = guidanceKey(g);
    const existing = card.forms.get(key);
    if (existing) return existing;
    const areaId = uid("guidance");
    const parts = {};
    parts.text = h("textarea", { id: areaId, name: "answer", rows: "2", required: true });
    parts.error = h("p", { class: "error", role: "alert" });
    parts.note = h("p", { class: "note", role: "status" });
    parts.submit = h("button", { type: "submit" }, "Send answer");
    parts.form = h("form", { class: "guidance-form", "data-agent": g.agent_name },
      h("p", { class: "question" }, h("strong", {}, g.agent_name), " asks: ", g.question),
      g.context ? h("p", { class: "context" }, g.context) : null,
      g.thread_id ? h("p", { class: "small" }, h("a", { href: `#/thread/${encodeURIComponent(g.thread_id)}` }, "Open the control thread")) : null,
      h("label", { for: areaId }, `Answer for ${g.agent_name}`),
      parts.text,
      h("div", { class: "row" }, parts.submit),
      parts.error, parts.note);
    parts.text.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        parts.form.requestSubmit();
      }
    });
    parts.form.addEventListener("submit", async (event) => {
      event.preventDefault();
      parts.error.textContent = "";
      parts.note.textContent = "";
      const answer = parts.text.value;
      if (!answer.trim()) {
        parts.error.textContent = "Write an answer first.";
        return;
      }
      parts.submit.disabled = true;
      try {
        const { status: code } = await sendGuidanceAnswer({
          runId: run.run_id, ticket: ticketOf(run, g), agentName: g.agent_name, answer,
        });
        parts.text.value = "";
        parts.note.textContent = code === 202 ? "Accepted: it applies when the pipeline recovers." : "Answer sent.";
        // The question leaves the list once the run has taken the answer; say what happened.
        card.sent = `Answer to ${g.agent_name} (“${g.question}”) sent at ${new Date().toLocaleTimeString()}.`;
        hurry();
      } catch (error) {
        parts.error.textContent = error.message;
      } finally {
        parts.submit.disabled = false;
      }
    });
    card.forms.set(key, parts);
    return parts;
  }

  async function fillTree(runId, card, first = false) {
    if (!card.details.open) return;
    if (first && !card.body.firstChild) card.body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    try {
      const { data } = await get(`/api/v1/runs/${encodeURIComponent(runId)}/actors`);
      if (destroyed) return;
      card.body.replaceChildren(actorSubtree(data.actors));
    } catch (error) {
      if (destroyed) return;
      card.body.replaceChildren(h("p", { class: "error" }, error.status === 404
        ? `No actor subtree for this run: ${error.message}`
        : `Could not load the actor subtree: ${error.message}`));
    }
  }

  function refreshOpenTrees() {
    for (const [runId, card] of cards) if (card.details.open) fillTree(runId, card);
  }

  load();

  return {
    onEvents(events) {
      let signal = false;
      let runEvent = false;
      for (const e of events) {
        const type = e.envelope?.event_type || e.payload_json?.type;
        if (type === "forum.control.signal") signal = true;
        else if (e.envelope?.run_id) runEvent = true;
      }
      if (signal) hurry();
      else if (runEvent) load();
    },
    resync() { load(); },
    reconnected() { load(); },
    onDecision(decision) {
      const card = cards.get(decision.run_id);
      if (card) card.decisions.add(decision);
      hurry();
    },
    unmount() {
      destroyed = true;
      clearTimeout(timer);
      for (const card of cards.values()) {
        for (const pane of card.panes.values()) pane.stop();
      }
    },
  };
}

/** What a run looks like for "has it changed?": the age of the last activity moves on every read
 * and is not shown (the time of the last activity is), so it does not count. */
function stable(key, value) {
  return key === "last_activity_age_seconds" ? undefined : value;
}

/** The ticket of a pending question: the one its answer command names (the control thread's
 * ticket, which matters in a run with several tickets), else the run's first ticket. */
function ticketOf(run, g) {
  const argv = shellWords(g.answer_command || "");
  const i = argv.indexOf("--ticket");
  return (i >= 0 && argv[i + 1]) || (run.tickets || [])[0] || "";
}

/** Split a POSIX-shell-quoted command line (as Python's shlex.quote writes it) into words. */
export function shellWords(text) {
  const words = [];
  let word = null;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (c === "'") {
      const end = text.indexOf("'", i + 1);
      const stop = end < 0 ? text.length : end;
      word = (word ?? "") + text.slice(i + 1, stop);
      i = stop;
    } else if (c === "\"") {
      word = word ?? "";
      for (i += 1; i < text.length && text[i] !== "\""; i += 1) {
        if (text[i] === "\\" && i + 1 < text.length) i += 1;
        word += text[i];
      }
    } else if (c === "\\" && i + 1 < text.length) {
      word = (word ?? "") + text[i + 1];
      i += 1;
    } else if (/\s/.test(c)) {
      if (word !== null) words.push(word);
      word = null;
    } else {
      word = (word ?? "") + c;
    }
  }
  if (word !== null) words.push(word);
  return words;
}

/** A run's actor subtree: the Run actor and its TmuxAgent children with what their details say. */
function actorSubtree(rootNode) {
  const rows = [];
  const walk = (node, depth) => {
    const d = node.details || {};
    const name = h("th", { scope: "row", class: "actor-name", title: node.path }, node.name);
    name.style.setProperty("--depth", String(depth));
    const failure = node.last_failure ? `${node.last_failure.type}: ${node.last_failure.message}` : "";
    const statusText = [d.status, d.health].filter(Boolean);
    rows.push(h("tr", { "data-path": node.path, "data-kind": node.kind, "data-state": node.state },
      name,
      h("td", {}, node.kind),
      h("td", {}, h("span", { class: `badge actor-state actor-${node.state}` }, node.state)),
      h("td", { "data-field": "health" }, d.health
        ? [d.status ? `${d.status} · ` : "", h("span", { class: `badge health health-${d.health}` }, d.health)]
        : (statusText.join(" · ") || "—")),
      h("td", { "data-field": "session" }, d.session || "—"),
      h("td", { class: "num", "data-field": "pane-pid" }, d.pane_pid != null ? String(d.pane_pid) : "—"),
      h("td", {}, d.last_activity_at ? timeEl(d.last_activity_at) : "—"),
      h("td", { class: "num", "data-field": "restarts-left" }, d.restarts_left != null ? String(d.restarts_left) : "—"),
      h("td", { class: "num" }, String(node.restarts ?? 0)),
      h("td", { class: "num" }, String(node.mailbox ?? 0)),
      h("td", { class: "failure" }, failure || "—"),
    ));
    for (const child of node.children || []) walk(child, depth + 1);
  };
  walk(rootNode, 0);
  return h("div", { class: "table-scroll" }, h("table", { class: "grid actor-tree run-actors" },
    h("caption", {}, "Actors of this run"),
    h("thead", {}, h("tr", {}, ["actor", "kind", "state", "status / health", "tmux session", "pane pid",
      "last activity", "restarts left", "actor restarts", "mailbox", "last failure"]
      .map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows)));
}
