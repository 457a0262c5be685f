// Ask (#/ask): open a thread as the viewer (a human by default): ticket, title, body, priority
// and optionally the run and agent it is about.  POST /api/v1/forum/threads; the API's refusal
// is shown next to the field it names (or under the form), and what was typed is kept.  The
// new thread is on the board at once (the stream carries it to every open page).

import { post } from "./api.js";
import { h, option } from "./dom.js";
import { PRIORITIES } from "./forum.js";
import { actor, viewerName } from "./viewer.js";

// Which input an API message is about: "forum thread title is required", "... at ticket".
const FIELD_WORDS = [
  ["agent_name", /\bagent(_name)?\b/], ["run_id", /\brun(_id)?\b/], ["priority", /\bpriority\b/],
  ["title", /\btitle\b/], ["ticket", /\bticket\b/], ["body", /\bbody\b/],
];

export function fieldOfError(message) {
  const text = message || "";
  const at = text.match(/\bat ([a-z_]+)/);
  if (at && FIELD_WORDS.some(([name]) => name === at[1])) return at[1];
  const found = FIELD_WORDS.find(([, pattern]) => pattern.test(text.replace(/request body/g, "")));
  return found ? found[0] : "";
}

export function mountAsk(root) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const errors = {};
  const inputs = {};
  const field = (name, label, control, hint = "") => {
    const id = `ask-${name}`;
    control.id = id;
    control.name = name;
    errors[name] = h("p", { class: "field-error", id: `${id}-error`, role: "alert" });
    control.setAttribute("aria-describedby", `${id}-error`);
    inputs[name] = control;
    return h("div", { class: "field" }, h("label", { for: id }, label), hint ? h("p", { class: "hint" }, hint) : null,
      control, errors[name]);
  };
  const general = h("p", { class: "error", role: "alert" });
  const note = h("p", { class: "note", role: "status" });
  const submit = h("button", { type: "submit" }, "Open thread");
  const form = h("form", { class: "ask-form action", novalidate: true, "aria-labelledby": "ask-heading" },
    h("h1", { id: "ask-heading" }, "Ask a question"),
    h("p", { class: "hint" }, `Opens a thread as ${viewerName()} (human). Agents and people see it on the board.`),
    field("ticket", "Ticket", h("input", { type: "text", autocomplete: "off", spellcheck: "false", value: params.get("ticket") || "" })),
    field("title", "Title", h("input", { type: "text", autocomplete: "off" })),
    field("body", "Your question", h("textarea", { rows: "5" })),
    field("priority", "Priority", h("select", {}, PRIORITIES.map((p) => option(p, p, p === "normal")))),
    field("run_id", "Run (optional)", h("input", { type: "text", autocomplete: "off", spellcheck: "false", value: params.get("run") || "" })),
    field("agent_name", "Agent (optional)", h("input", { type: "text", autocomplete: "off", spellcheck: "false", value: params.get("agent") || "" })),
    h("div", { class: "row" }, submit),
    general, note);

  form.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const el of Object.values(errors)) el.textContent = "";
    for (const el of Object.values(inputs)) el.removeAttribute("aria-invalid");
    general.textContent = "";
    note.replaceChildren();
    const body = {
      ticket: inputs.ticket.value.trim(), title: inputs.title.value.trim(), body: inputs.body.value,
      priority: inputs.priority.value, ...actor(),
    };
    if (inputs.run_id.value.trim()) body.run_id = inputs.run_id.value.trim();
    if (inputs.agent_name.value.trim()) body.agent_name = inputs.agent_name.value.trim();
    submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const { status, data } = await post("/api/v1/forum/threads", body);
      const id = data?.thread?.thread_id || data?.thread_id;
      note.append(status === 202 ? "Accepted: the thread opens when the pipeline recovers. " : "Thread opened. ",
        id ? h("a", { href: `#/thread/${encodeURIComponent(id)}`, "data-thread-id": id }, "Open it") : "");
      for (const name of ["title", "body"]) inputs[name].value = "";
      inputs.title.focus();
    } catch (error) {
      const name = fieldOfError(error.message);
      if (name && errors[name]) {
        errors[name].textContent = error.message;
        inputs[name].setAttribute("aria-invalid", "true");
        inputs[name].focus();
      } else {
        general.textContent = error.message;
      }
    } finally {
      submit.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });

  root.append(h("div", { class: "ask-page" }, form));
  inputs[params.get("ticket") ? "title" : "ticket"].focus();
  return {};
}
