// Parts of a run's card that keep their own state across the runs view's re-renders:
//
// * runActions — stop / resume / close / cleanup for the run and restart per agent, each asking
//   for an inline confirmation first; the API's refusal (e.g. `run_busy`) is shown under them.
// * agentPane — a live tail of an agent's pane: the last 200 lines of the log file the daemon
//   pipes the tmux pane into (GET …/agents/{agent}/pane), read incrementally (`after_bytes`)
//   every second while the fold is open.
// * changesPanel — per workspace and repository, the files changed against the base branch and
//   the unified diff (GET …/changes), added and removed lines coloured.
// * decisionsPanel — the operator's decisions for the run (GET /api/v1/operator/decisions and the
//   stream's `operator.decision` frames).
// * pullRequests — the delivery state: pull requests (links) once `metawsm pr` opened them.

import { get, post } from "./api.js";
import { h, timeEl } from "./dom.js";

const PANE_LINES = 200;
const PANE_POLL_MS = 1000;

// What each run action does, in the sentence its confirmation asks.
export const ACTIONS = {
  stop: { label: "Stop", ask: "Stop the run? Its agents' tmux sessions are stopped; resume brings them back." },
  resume: { label: "Resume", ask: "Resume the run? Stopped agents are started again in their workspaces." },
  close: { label: "Close", ask: "Close the run? The close gates are checked (completion and validation of every agent)." },
  cleanup: { label: "Clean up", ask: "Clean up the run? Its tmux sessions and workspaces are removed (commit or merge first)." },
};
export function runActions(runId, { onDone }) {
  const error = h("p", { class: "error", role: "alert" });
  const note = h("p", { class: "note", role: "status" });
  const confirmBox = h("div", { class: "confirm", hidden: true, role: "group", "aria-label": "Confirm" });
  const buttons = {};
  const restarts = new Map();
  let pending = null;

  function ask(action, sentence, body) {
    pending = { action, body };
    error.textContent = "";
    note.textContent = "";
    const yes = h("button", { type: "button", class: "danger", onclick: () => run() }, `Yes, ${sentence.label.toLowerCase()}`);
    confirmBox.replaceChildren(h("p", {}, sentence.ask), h("div", { class: "row" }, yes,
      h("button", { type: "button", class: "secondary", onclick: cancel }, "Cancel")));
    confirmBox.hidden = false;
    yes.focus();
  }

  function cancel() {
    pending = null;
    confirmBox.hidden = true;
    confirmBox.replaceChildren();
  }

  async function run() {
    if (!pending) return;
    const { action, body } = pending;
    cancel();
    for (const b of Object.values(buttons)) b.disabled = true;
    note.textContent = `${action}…`;
    try {
      const { data } = await post(`/api/v1/runs/${encodeURIComponent(runId)}/${action}`, body);
      const status = data?.run?.status;
      note.textContent = data?.cleanup
        ? `Cleaned up: ${data.cleanup.sessions.length} session(s), ${data.cleanup.workspaces.length} workspace(s) removed.`
        : `${action} done${status ? `: the run is ${status}` : ""}.`;
    } catch (err) {
      note.textContent = "";
      error.textContent = `${action} refused: ${err.message}`;
    } finally {
      for (const b of Object.values(buttons)) b.disabled = false;
      onDone?.();
    }
  }

  for (const [action, sentence] of Object.entries(ACTIONS)) {
    buttons[action] = h("button", { type: "button", class: "secondary", "data-action": action,
      onclick: () => ask(action, sentence, {}) }, sentence.label);
  }
  const element = h("div", { class: "run-actions" },
    h("div", { class: "row", role: "group", "aria-label": `Actions on run ${runId}` }, Object.values(buttons)),
    confirmBox, error, note);

  return {
    element,
    update(snapshot) {
      // Every action is offered: the daemon decides, and its refusal ("run … is running; stop or
      // close it before cleanup") is shown here, which says more than a greyed-out button.
      element.dataset.status = snapshot.status;
    },
    restartControl(agent) {
      if (!restarts.has(agent)) {
        restarts.set(agent, h("button", { type: "button", class: "secondary", "data-action": "restart", "data-agent": agent,
          onclick: () => ask("restart", { label: "Restart", ask: `Restart agent ${agent}? Its tmux session is started again (one restart of its budget).` }, { agent }) },
        `Restart ${agent}`));
      }
      return restarts.get(agent);
    },
  };
}

// -- the pane ------------------------------------------------------------------------------------

/** Terminal output as plain text: colour and cursor escapes and carriage-return overwrites removed. */
export function plainTerminal(text) {
  return text
    .replace(/\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g, "") // OSC (window titles)
    .replace(/\x1b\[[0-9;?]*[ -/]*[@-~]/g, "") // CSI (colours, cursor moves)
    .replace(/\x1b[@-Z\\-_]/g, "")
    .replace(/[^\n]*\r(?!\n)/g, "") // a line overwritten after a bare carriage return
    .replace(/\r/g, "")
    .replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "");
}

export function agentPane(runId, agent) {
  const pre = h("pre", { class: "pane-text", tabindex: "0", "aria-label": `Last ${PANE_LINES} lines of ${agent.name}'s pane` });
  const info = h("p", { class: "muted small" });
  const error = h("p", { class: "error", role: "alert" });
  const details = h("details", { class: "pane", "data-agent": agent.name },
    h("summary", {}, `Pane of ${agent.name} (live tail)`), info, pre, error);
  let size = null;
  let lines = [];
  let timer = null;
  let inFlight = false;
  let workspace = agent.workspace;

  async function read() {
    clearTimeout(timer);
    if (!details.open || !details.isConnected || inFlight) return;
    inFlight = true;
    try {
      const { data } = await get(`/api/v1/runs/${encodeURIComponent(runId)}/agents/${encodeURIComponent(agent.name)}/pane`,
        { workspace, after_bytes: size ?? "", lines: PANE_LINES });
      const pane = data.pane;
      error.textContent = "";
      const fresh = plainTerminal(pane.text);
      if (pane.reset) lines = [];
      if (fresh) {
        // The first piece may finish the line we hold.
        const parts = fresh.split("\n");
        if (!pane.reset && lines.length && !lines[lines.length - 1].endsWith("\n")) lines[lines.length - 1] += parts.shift();
        lines.push(...parts);
        lines = lines.slice(-PANE_LINES - 1);
      }
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      const text = lines.join("\n").replace(/\n$/, "");
      if (pre.textContent !== text) {
        pre.textContent = text;
        if (atBottom) pre.scrollTop = pre.scrollHeight;
      }
      size = pane.size;
      info.replaceChildren(pane.exists ? `${pane.log_path} · ${pane.size} bytes · tmux session ${pane.session}` : "No output yet.");
    } catch (err) {
      error.textContent = `Could not read the pane: ${err.message}`;
    } finally {
      inFlight = false;
      if (details.open && details.isConnected) timer = setTimeout(read, PANE_POLL_MS);
    }
  }

  details.addEventListener("toggle", () => { if (details.open) read(); else clearTimeout(timer); });
  return {
    element: details,
    update(a) { workspace = a.workspace; },
    stop() { clearTimeout(timer); },
  };
}

// -- changes -------------------------------------------------------------------------------------

function diffBlock(text) {
  const pre = h("pre", { class: "diff", tabindex: "0" });
  for (const line of text.split("\n")) {
    let cls = "";
    if (line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ") || line.startsWith("index ")) cls = "diff-file";
    else if (line.startsWith("+")) cls = "diff-add";
    else if (line.startsWith("-")) cls = "diff-del";
    else if (line.startsWith("@@")) cls = "diff-hunk";
    pre.append(h("span", { class: cls || null }, line), "\n");
  }
  return pre;
}

const FILE_STATUS = { A: "added", M: "modified", D: "deleted", "?": "new (untracked)", T: "type changed" };

export function changesPanel(runId) {
  const body = h("div", { class: "changes-body" });
  const refresh = h("button", { type: "button", class: "secondary", onclick: () => load() }, "Refresh changes");
  const details = h("details", { class: "changes" }, h("summary", {}, "Changes against the base branch"),
    h("div", { class: "row" }, refresh), body);

  async function load() {
    if (!body.firstChild) body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    try {
      const { data } = await get(`/api/v1/runs/${encodeURIComponent(runId)}/changes`);
      body.replaceChildren(...(data.changes.length ? data.changes.map((c) => h("section", { class: "repo-changes", "data-workspace": c.workspace, "data-repo": c.repo },
        h("h4", {}, `${c.workspace} / ${c.repo}`, c.base_branch ? h("span", { class: "muted small" }, ` against ${c.base_branch}`) : null),
        c.error ? h("p", { class: "error" }, c.error) : null,
        !c.error && !c.files.length ? h("p", { class: "muted" }, "No changes.") : null,
        c.files.length ? h("ul", { class: "changed-files" }, c.files.map((f) => h("li", { "data-path": f.path },
          h("code", {}, f.path), " ", h("span", { class: "muted small" }, FILE_STATUS[f.status[0]] || f.status)))) : null,
        c.diff ? diffBlock(c.diff) : null,
        c.truncated ? h("p", { class: "muted small" }, "The diff is cut here (too long to show whole).") : null))
        : [h("p", { class: "muted" }, "No workspaces.")]));
    } catch (err) {
      body.replaceChildren(h("p", { class: "error", role: "alert" }, `Could not read the changes: ${err.message}`));
    }
  }

  details.addEventListener("toggle", () => { if (details.open) load(); });
  return { element: details, load };
}

// -- decisions -----------------------------------------------------------------------------------

export function decisionsPanel(runId) {
  const list = h("ol", { class: "decisions" });
  const empty = h("p", { class: "muted" }, "No decisions yet.");
  const error = h("p", { class: "error", role: "alert" });
  const details = h("details", { class: "decisions-fold" }, h("summary", {}, "Operator decisions"), empty, list, error);
  const ids = new Set();

  function add(d) {
    if (d.id != null && ids.has(d.id)) return;
    if (d.id != null) ids.add(d.id);
    empty.hidden = true;
    list.append(h("li", { "data-decision-id": d.id ?? "" },
      timeEl(d.at), " ", h("strong", {}, d.intent || "decision"),
      d.agent_name ? ` (${d.agent_name})` : "", d.reason ? `: ${d.reason}` : "",
      d.cause ? h("span", { class: "muted small" }, ` · cause: ${d.cause}`) : null,
      d.executed === false ? h("span", { class: "muted small" }, " · not executed") : null));
  }

  async function load() {
    try {
      const { data } = await get("/api/v1/operator/decisions", { run_id: runId });
      error.textContent = "";
      for (const d of data.decisions || []) add(d);
    } catch (err) {
      error.textContent = err.status === 404 ? "This daemon keeps no operator decisions." : `Could not read the decisions: ${err.message}`;
    }
  }

  details.addEventListener("toggle", () => { if (details.open) load(); });
  return { element: details, add, load };
}

// -- delivery ------------------------------------------------------------------------------------

export function pullRequests(run) {
  const prs = run.pull_requests || [];
  if (!prs.length) return null;
  return h("section", { class: "delivery" }, h("h3", {}, "Delivery"),
    h("ul", {}, prs.map((pr) => h("li", {},
      `${pr.ticket} / ${pr.repo}: `,
      pr.url ? h("a", { href: pr.url, rel: "noreferrer noopener", target: "_blank" }, pr.number ? `#${pr.number}` : pr.url) : pr.branch,
      pr.state ? ` (${pr.state})` : ""))));
}
