// Start a run or a bootstrap from the browser (POST /api/v1/runs), with a dry-run preview of the
// plan first: "Preview plan" sends the request with `dry_run: true` and shows the steps and the
// agents (workspace, tmux session) it would create; "Start" is offered once the preview of the
// very same fields succeeded.  The API's refusal is shown next to the field it names.

import { post } from "./api.js";
import { h, option } from "./dom.js";

const list = (text) => text.split(/[,\s]+/).map((s) => s.trim()).filter(Boolean);

// "Q: ..." / "A: ..." lines, a question then its answer, into the brief's qa list; null when the
// lines do not pair up (the form says so next to the field).
function parseQa(text) {
  const qa = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const match = line.match(/^([QA]):\s*(.*)$/i);
    if (!match) return null;
    if (match[1].toUpperCase() === "Q") qa.push({ question: match[2], answer: "" });
    else if (qa.length && !qa[qa.length - 1].answer) qa[qa.length - 1].answer = match[2];
    else return null;
  }
  return qa.every((item) => item.question && item.answer) ? qa : null;
}
const BRIEF = [["goal", "Goal"], ["scope", "Scope"], ["done_criteria", "Done criteria"], ["constraints", "Constraints"],
  ["merge_intent", "Merge intent"]];

export function mountStartForm({ onStarted }) {
  const inputs = {};
  const errors = {};
  const field = (name, label, control, hint = "") => {
    const id = `start-${name}`;
    control.id = id;
    control.name = name;
    inputs[name] = control;
    errors[name] = h("p", { class: "field-error", id: `${id}-error`, role: "alert" });
    control.setAttribute("aria-describedby", `${id}-error`);
    return h("div", { class: "field" }, h("label", { for: id }, label), hint ? h("p", { class: "hint" }, hint) : null, control, errors[name]);
  };
  const text = () => h("input", { type: "text", autocomplete: "off", spellcheck: "false" });
  const mode = h("select", {}, option("bootstrap", "bootstrap (with a brief)", true), option("run", "run"));
  const briefBox = h("fieldset", { class: "brief-fields" }, h("legend", {}, "Brief"),
    BRIEF.map(([name, label]) => field(name, label, h("textarea", { rows: "2" }))),
    field("qa", "Questions and answers (optional)", h("textarea", { rows: "3" }),
      "One \"Q: ...\" line, then its \"A: ...\" line, for each decision already taken."));
  const preview = h("div", { class: "plan-preview", "aria-live": "polite" });
  const general = h("p", { class: "field-error", role: "alert" });
  const note = h("p", { class: "note", role: "status" });
  const previewBtn = h("button", { type: "submit", "data-step": "preview" }, "Preview plan (dry run)");
  const startBtn = h("button", { type: "button", "data-step": "start", disabled: true, onclick: () => send(false) }, "Start");
  const form = h("form", { class: "start-form", novalidate: true },
    field("mode", "Mode", mode),
    field("tickets", "Tickets", text(), "One or more, separated by commas."),
    field("repos", "Repositories", text(), "Names the daemon resolves (workspace.repo_sources) or paths."),
    field("cwd", "Directory (optional)", text(), "Where repository names are resolved; default: the daemon's."),
    field("base_branch", "Base branch (optional)", text()),
    field("agents", "Agents (optional)", text(), "Agent names from the policy; empty: all of them."),
    briefBox,
    h("div", { class: "row" }, previewBtn, startBtn),
    general, note, preview);
  const details = h("details", { class: "start-run" }, h("summary", {}, "Start a run or bootstrap"), form);
  let previewed = "";

  mode.addEventListener("change", () => { briefBox.hidden = mode.value !== "bootstrap"; });
  form.addEventListener("input", () => {
    if (previewed && previewed !== JSON.stringify(request(true))) {
      startBtn.disabled = true;
      note.textContent = "The fields changed since the preview: preview again before starting.";
    }
  });
  form.addEventListener("submit", (event) => { event.preventDefault(); send(true); });

  function request(dryRun) {
    const body = { mode: mode.value, tickets: list(inputs.tickets.value), repos: list(inputs.repos.value), dry_run: dryRun };
    for (const name of ["cwd", "base_branch"]) if (inputs[name].value.trim()) body[name] = inputs[name].value.trim();
    if (inputs.agents.value.trim()) body.agents = list(inputs.agents.value);
    if (mode.value === "bootstrap") {
      body.brief = {};
      for (const [name] of BRIEF) body.brief[name] = inputs[name].value;
      if (inputs.qa.value.trim()) body.brief.qa = parseQa(inputs.qa.value) || [];
    }
    return body;
  }

  function showError(message) {
    const at = (message.match(/\bat (?:brief\.)?([a-z_]+)/) || [])[1];
    const named = at && errors[at] ? at : Object.keys(errors).find((name) => new RegExp(`\\b${name}\\b`).test(message));
    if (named) {
      errors[named].textContent = message;
      inputs[named].setAttribute("aria-invalid", "true");
      inputs[named].focus();
    } else {
      general.textContent = message;
    }
  }

  async function send(dryRun) {
    for (const el of Object.values(errors)) el.textContent = "";
    for (const el of Object.values(inputs)) el.removeAttribute("aria-invalid");
    general.textContent = "";
    note.textContent = "";
    const body = request(dryRun);
    if (mode.value === "bootstrap" && inputs.qa.value.trim() && !parseQa(inputs.qa.value)) {
      showError("qa: write each question on a \"Q: \" line followed by its answer on an \"A: \" line");
      return;
    }
    if (!dryRun && JSON.stringify(request(true)) !== previewed) {
      general.textContent = "Preview the plan first.";
      return;
    }
    previewBtn.disabled = true;
    startBtn.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const { data } = await post("/api/v1/runs", body);
      const run = data.run;
      if (dryRun) {
        previewed = JSON.stringify(body);
        preview.replaceChildren(h("h4", {}, `Plan for ${run.run_id} (nothing started yet)`),
          h("ol", { class: "plan-steps" }, (run.steps || []).map((s) => h("li", {}, s.name, s.ticket ? ` (${s.ticket})` : ""))),
          h("ul", { class: "plan-agents" }, (run.agents || []).map((a) => h("li", {},
            `${a.name} in workspace ${a.workspace}`, a.session ? `, tmux session ${a.session}` : ""))));
        startBtn.disabled = false;
        note.textContent = "Preview ready: Start creates this run.";
      } else {
        previewed = "";
        preview.replaceChildren();
        note.replaceChildren(`Started run ${run.run_id} (${run.status}).`);
        onStarted?.(run);
      }
    } catch (err) {
      showError(err.message);
      if (!dryRun) startBtn.disabled = false;
    } finally {
      previewBtn.disabled = false;
      form.removeAttribute("aria-busy");
    }
  }

  return details;
}
