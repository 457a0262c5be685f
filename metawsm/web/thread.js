// Thread page: header (state, priority, assignee, type), posts oldest first, and the actions
// answer, post, assign, change state (only what the state machine allows), priority and close.
// Each action has its own form and its own error line; a refused action keeps what was typed.
// Live: posts arrive from the stream (deduplicated by post id); the header is re-read after
// every event on this thread.

import { get, post, threadPath } from "./api.js";
import { setPageTitle } from "./attention.js";
import { controlPayload, controlSummary, sendGuidanceAnswer } from "./control.js";
import { debounce, formatTime, h, keepFocus, option, timeEl, uid } from "./dom.js";
import { ASSIGNEE_TYPES, PRIORITIES, allowedTargets, isControl, stateLabel, threadType } from "./forum.js";
import { actor, viewerName, viewerQuery, viewerType } from "./viewer.js";

export function mountThread(root, threadId, { live }) {
  let destroyed = false;
  let thread = null;
  let shownPriority = null;
  const postIds = new Set();
  const eventSeqs = new Set(); // timeline entries of non-post events, by sequence
  const postSeq = new Map(); // post id → the sequence of the event that added it
  let runStatus = ""; // a control thread's run status (answering resumes the run)
  let runTimers = [];

  const crumbs = h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/" }, "← Board"));
  const head = h("header", { class: "thread-head" }, h("h1", {}, "Loading thread…"));
  const loadError = h("p", { class: "error", role: "alert" });
  const postsHeading = h("h2", { id: "posts-heading" }, "Timeline");
  const postList = h("ol", { class: "posts", "aria-labelledby": "posts-heading" });
  const actions = h("aside", { class: "actions", "aria-label": "Actions" });
  root.append(h("div", { class: "thread-page", "data-thread-id": threadId },
    crumbs, head, loadError,
    h("div", { class: "thread-layout" },
      h("section", { class: "thread-posts" }, postsHeading, postList),
      actions)));

  // -- actions --------------------------------------------------------------------------------
  /** One action: a <form> with its own submit button, error line and "working" state. */
  function actionForm(title, controls, submitLabel, run, { reset = false, cls = "" } = {}) {
    const headingId = uid("action");
    const error = h("p", { class: "error", role: "alert" });
    const note = h("p", { class: "note", role: "status" });
    const submit = h("button", { type: "submit" }, submitLabel);
    const form = h("form", { class: `action ${cls}`.trim(), "aria-labelledby": headingId },
      h("h2", { id: headingId }, title), controls, h("div", { class: "row" }, submit), error, note);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      note.textContent = "";
      submit.disabled = true;
      form.setAttribute("aria-busy", "true");
      try {
        const result = await run();
        if (result?.status === 202) note.textContent = "Accepted: it applies when the pipeline recovers.";
        else if (result?.data?.thread) setThread(result.data.thread);
        if (reset) form.reset();
      } catch (err) {
        error.textContent = err.message; // the API's own sentence; the inputs are left as they were
      } finally {
        form.removeAttribute("aria-busy");
        submit.disabled = false;
        syncControls();
      }
    });
    form.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
    });
    return { form, error, note, submit };
  }

  const field = (id, label, control) => h("div", { class: "field" }, h("label", { for: id }, label), control);

  const answerText = h("textarea", { id: "answer-body", name: "body", rows: "4", required: true });
  const answerField = field("answer-body", "Answer (moves the thread to answered)", answerText);
  // On a control thread the answer is a guidance_answer signal for the thread's agent: that is
  // what resumes a run waiting for guidance (a plain forum answer would not).
  const answer = actionForm("Answer", answerField, "Answer",
    () => (thread && isControl(thread)
      ? sendGuidanceAnswer({ runId: thread.run_id, ticket: thread.ticket, agentName: thread.agent_name, answer: answerText.value })
      : post(threadPath(threadId, "answer"), { body: answerText.value, ...actor() })),
    { reset: true, cls: "action-answer" });

  const postText = h("textarea", { id: "post-body", name: "body", rows: "3", required: true });
  const addPost = actionForm("Post", field("post-body", "Post (state unchanged)", postText), "Post",
    () => post(threadPath(threadId, "posts"), { body: postText.value, ...actor() }), { reset: true, cls: "action-post" });

  const stateSelect = h("select", { id: "state-to", name: "to_state" });
  const stateHint = h("p", { class: "hint", id: "state-hint" });
  const state = actionForm("Change state", [field("state-to", "New state", stateSelect), stateHint], "Change state",
    () => post(threadPath(threadId, "state"), { to_state: stateSelect.value, ...actor() }), { cls: "action-state" });
  stateSelect.setAttribute("aria-describedby", "state-hint");

  const prioritySelect = h("select", { id: "priority-to", name: "priority" }, PRIORITIES.map((p) => option(p, p)));
  const priority = actionForm("Priority", field("priority-to", "Priority", prioritySelect), "Set priority",
    () => post(threadPath(threadId, "priority"), { priority: prioritySelect.value, ...actor() }), { cls: "action-priority" });

  const assigneeType = h("select", { id: "assignee-type", name: "assignee_type" }, ASSIGNEE_TYPES.map((t) => option(t, t)));
  const assigneeName = h("input", { id: "assignee-name", name: "assignee_name", type: "text", autocomplete: "off" });
  const assignNote = h("input", { id: "assign-note", name: "assignment_note", type: "text", autocomplete: "off" });
  const assign = actionForm("Assign",
    [field("assignee-type", "Assignee type", assigneeType), field("assignee-name", "Assignee name", assigneeName),
      field("assign-note", "Note (optional)", assignNote)],
    "Assign",
    () => post(threadPath(threadId, "assign"), {
      assignee_type: assigneeType.value, assignee_name: assigneeName.value,
      ...(assignNote.value.trim() ? { assignment_note: assignNote.value } : {}), ...actor(),
    }), { cls: "action-assign" });

  const close = actionForm("Close", h("p", { class: "hint" }, "A closed thread takes no more posts or changes."), "Close thread",
    () => post(threadPath(threadId, "close"), { ...actor() }), { cls: "action-close" });

  actions.append(answer.form, addPost.form, state.form, priority.form, assign.form, close.form);

  // -- rendering ------------------------------------------------------------------------------
  function setThread(next) {
    if (!next || next.thread_id !== threadId) return;
    if (thread && next.last_event_sequence < thread.last_event_sequence) return; // an older read
    thread = next;
    keepFocus(renderHeader);
  }

  function renderHeader() {
    const t = thread;
    setPageTitle(t.title);
    answerField.querySelector("label").textContent = isControl(t)
      ? `Answer ${t.agent_name} (a guidance answer: resumes the run)`
      : "Answer (moves the thread to answered)";
    const row = (label, value) => h("div", {}, h("dt", {}, label), h("dd", {}, value || h("span", { class: "muted" }, "—")));
    head.replaceChildren(
      h("h1", {}, t.title),
      h("dl", { class: "thread-facts" },
        row("state", h("span", { class: `badge state state-${t.state}`, "data-field": "state" }, stateLabel(t.state))),
        row("priority", h("span", { class: `badge priority priority-${t.priority}`, "data-field": "priority" }, t.priority)),
        row("assignee", t.assignee_name ? `${t.assignee_name} (${t.assignee_type})` : ""),
        row("type", isControl(t) ? `control (run ${t.run_id}, agent ${t.agent_name})` : threadType(t)),
        isControl(t) ? row("run status", runStatus
          ? h("span", { class: `badge run-status run-${runStatus}`, "data-field": "run-status" }, runStatus) : "") : null,
        row("ticket", t.ticket),
        row("run", t.run_id),
        row("agent", t.agent_name),
        row("opened", [t.opened_by_name || t.opened_by_type, " · ", timeEl(t.opened_at)]),
        row("last activity", timeEl(t.updated_at)),
      ),
    );
    // Only the transitions the state machine allows from the state we know (the server has
    // the last word: if another client moved the thread meanwhile, its refusal is shown).
    const targets = allowedTargets(t.state);
    const chosen = stateSelect.value;
    stateSelect.replaceChildren(...targets.map((s) => option(s, stateLabel(s), s === chosen)));
    stateHint.textContent = t.state === "closed"
      ? "Closed is final: no state change is possible."
      : `From ${stateLabel(t.state)} the thread can move to: ${targets.map(stateLabel).join(", ")}.`;
    // Follow the thread's priority unless the person has picked another one and not sent it yet.
    if (shownPriority === null || prioritySelect.value === shownPriority) prioritySelect.value = t.priority;
    shownPriority = t.priority;
    syncControls();
  }

  function syncControls() {
    if (!thread) return;
    const closed = thread.state === "closed";
    stateSelect.disabled = closed;
    state.submit.disabled = closed || stateSelect.options.length === 0;
    for (const part of [answer, addPost, priority, assign, close]) part.submit.disabled = closed;
    close.submit.textContent = closed ? "Closed" : "Close thread";
  }

  function authorOf(type, name) {
    return name ? `${name} (${type})` : type;
  }

  function postBody(body) {
    const payload = controlPayload(body);
    if (payload) {
      return h("div", { class: "post-body control" },
        h("p", {}, h("strong", {}, payload.control_type.replaceAll("_", " ")), ": ",
          payload.question || payload.answer || payload.summary || payload.status || ""),
        h("pre", {}, JSON.stringify(payload, null, 2)));
    }
    return h("div", { class: "post-body" }, body || "");
  }

  /** Put a timeline entry in place: by event sequence, else (a post read without its event) by time. */
  function place(item, seq, time) {
    item.dataset.seq = String(seq ?? "");
    item.dataset.time = time || "";
    const later = [...postList.children].find((li) => {
      const other = Number(li.dataset.seq || NaN);
      if (seq != null && !Number.isNaN(other)) return other > seq;
      return (li.dataset.time || "") > (time || "\uffff");
    });
    postList.insertBefore(item, later || null);
    postsHeading.textContent = `Timeline (${postIds.size} post${postIds.size === 1 ? "" : "s"}, ${eventSeqs.size} event${eventSeqs.size === 1 ? "" : "s"})`;
  }

  function addPostItem(p, seq = postSeq.get(p.post_id), label = "") {
    if (!p.post_id || postIds.has(p.post_id)) return;
    postIds.add(p.post_id);
    const payload = controlPayload(p.body);
    const item = h("li", { class: `post${payload ? " post-signal" : ""}`, "data-post-id": p.post_id, "data-kind": payload ? `signal-${payload.control_type}` : "post" },
      h("div", { class: "post-head" },
        h("span", { class: `author author-${p.author_type}` }, authorOf(p.author_type, p.author_name)),
        label ? h("span", { class: "muted" }, ` ${label}`) : null,
        " ",
        p.created_at ? h("time", { datetime: p.created_at }, formatTime(p.created_at)) : null),
      postBody(p.body));
    place(item, seq, p.created_at);
  }

  /** A timeline line for an event that is not a post: state, priority, assignment, close. */
  function describeEvent(type, p) {
    switch (type) {
      case "forum.state.changed": return [`changed the state from ${stateLabel(p.from_state)} to `, h("strong", {}, stateLabel(p.to_state))];
      case "forum.priority.changed": return [`changed the priority from ${p.from_priority} to `, h("strong", {}, p.to_priority)];
      case "forum.assigned": return ["assigned the thread to ", h("strong", {}, `${p.assignee_name} (${p.assignee_type})`),
        p.assignment_note ? `: ${p.assignment_note}` : ""];
      case "forum.thread.closed": return [h("strong", {}, "closed"), ` the thread (it was ${stateLabel(p.from_state)})`];
      default: return [type || "event"];
    }
  }

  function applyEvent(event) {
    const p = event.payload_json || {};
    const env = event.envelope || {};
    const type = p.type || env.event_type;
    const seq = event.sequence;
    if (p.post_id) postSeq.set(p.post_id, seq);
    const asPost = postFromEvent(event);
    if (asPost) {
      const payload = controlPayload(asPost.body);
      const label = type === "forum.thread.opened" || p.opens_thread ? "opened the thread"
        : payload ? `sent a signal (${controlSummary(payload).split(":")[0]})` : "";
      addPostItem(asPost, seq, label);
      return;
    }
    if (typeof seq !== "number" || eventSeqs.has(seq)) return;
    eventSeqs.add(seq);
    const item = h("li", { class: "timeline-event", "data-event-type": type, "data-sequence": String(seq) },
      h("span", { class: `author author-${env.actor_type}` }, authorOf(env.actor_type, env.actor_name)), " ",
      describeEvent(type, p), " ",
      env.occurred_at ? h("time", { datetime: env.occurred_at }, formatTime(env.occurred_at)) : null);
    place(item, seq, env.occurred_at);
  }

  function postFromEvent(event) {
    const p = event.payload_json || {};
    const env = event.envelope || {};
    const type = p.type || env.event_type;
    if (!["forum.thread.opened", "forum.post.added", "forum.control.signal"].includes(type) || !p.post_id) return null;
    return {
      post_id: p.post_id, thread_id: env.thread_id, event_id: env.event_id, author_type: env.actor_type,
      author_name: env.actor_name, body: p.body, created_at: env.occurred_at,
    };
  }

  async function load({ posts = true } = {}) {
    try {
      const { data } = await get(threadPath(threadId), viewerQuery());
      if (destroyed) return;
      loadError.textContent = "";
      const first = !thread;
      setThread(data.thread);
      if (first) readRunStatus();
      for (const e of data.events || []) applyEvent(e);
      if (posts) for (const p of data.posts) addPostItem(p);
      markSeen();
    } catch (error) {
      if (destroyed) return;
      if (!thread) head.replaceChildren(h("h1", {}, "Thread not available"));
      loadError.textContent = error.status === 404 ? `No such thread: ${error.message}` : `Could not load the thread: ${error.message}`;
    }
  }

  // The person has this thread open: everything up to its latest event counts as seen.
  const markSeen = debounce(async () => {
    if (destroyed || !thread) return;
    try {
      await post(threadPath(threadId, "seen"), {
        viewer_type: viewerType(), viewer_id: viewerName(), last_seen_event_sequence: thread.last_event_sequence,
      });
    } catch (_) { /* a seen marker is best effort */ }
  }, 300);

  const refreshHeader = debounce(() => load({ posts: false }), 40);

  async function readRunStatus() {
    if (destroyed || !thread || !isControl(thread)) return;
    try {
      // The list (by the thread's ticket) rather than the run itself: a control thread may belong
      // to a run this daemon does not host, and that is no error worth a 404 in the console.
      const { data } = await get("/api/v1/runs", { ticket: thread.ticket });
      const run = (data.runs || []).find((r) => r.run_id === thread.run_id);
      if (destroyed || !run || run.status === runStatus) return;
      runStatus = run.status;
      keepFocus(renderHeader);
    } catch (_) { /* a control thread of a run this daemon does not host: no status to show */ }
  }

  // The run takes a signal just after the forum projected it: read its status a few times.
  function hurryRunStatus() {
    for (const timer of runTimers) clearTimeout(timer);
    runTimers = [0, 250, 750, 1500, 3000].map((ms) => setTimeout(readRunStatus, ms));
  }

  load();

  return {
    onEvents(events) {
      let touched = false;
      for (const event of events) {
        if (event.envelope?.thread_id !== threadId) continue;
        touched = true;
        applyEvent(event);
      }
      if (touched) refreshHeader();
      if (touched && events.some((e) => e.envelope?.thread_id === threadId
        && (e.envelope?.event_type || e.payload_json?.type) === "forum.control.signal")) hurryRunStatus();
    },
    resync() { load(); }, // posts merge by id: a reload never shows one twice
    reconnected() {
      if (loadError.textContent) load({ posts: !thread }); // a load failed while the daemon was away
    },
    viewerChanged() { load({ posts: false }); },
    unmount() {
      destroyed = true;
      refreshHeader.cancel();
      markSeen.cancel();
      for (const timer of runTimers) clearTimeout(timer);
    },
  };
}
