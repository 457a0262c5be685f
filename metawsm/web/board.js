// Board: threads grouped by state (new, triaged, waiting, answered; closed folded away), filters,
// text search, the "unanswered" and "unseen by me" queues, and a two-click inline answer.
// Live: every batch of stream events schedules one reload of what the board shows; cards are
// updated in place (keyed by thread id), so an answer being typed is never lost.

import { get, post, threadPath } from "./api.js";
import { sendGuidanceAnswer } from "./control.js";
import { debounce, h, keepFocus, option, timeEl, uid } from "./dom.js";
import { GROUPS, PRIORITIES, STATES, groupOf, isControl, stateLabel, threadType } from "./forum.js";
import { actor, viewerName, viewerQuery } from "./viewer.js";

// Kept for the whole page life: going to a thread and back keeps the filters.
const filters = { ticket: "", run_id: "", agent: "", state: "", type: "", priority: "", query: "" };
const RUN_FAST_MS = [150, 500, 1000, 2000, 3000]; // re-read run statuses after a control signal
let queue = "all";
const REFRESH_DELAY_MS = 40;
const PAGE_LIMIT = 200;
const MAX_PAGES = 5;

export function mountBoard(root, { live }) {
  const cards = new Map();
  let destroyed = false;
  let loading = false;
  let again = false;
  let flashNext = false; // highlight cards that arrive through the stream (not after a filter change)
  let generation = 0;
  let excerpts = new Map(); // thread id → latest post / pending question (GET /api/v1/ui/excerpts)
  let runStatuses = new Map(); // run id → status (control thread cards show it)

  // -- filters --------------------------------------------------------------------------------
  const field = (id, label, control) => h("div", { class: "field" }, h("label", { for: id }, label), control);
  const ticketIn = h("input", { id: "f-ticket", name: "ticket", type: "text", value: filters.ticket, autocomplete: "off", spellcheck: "false" });
  const runIn = h("input", { id: "f-run", name: "run_id", type: "text", value: filters.run_id, autocomplete: "off", spellcheck: "false" });
  const agentIn = h("input", { id: "f-agent", name: "agent", type: "text", value: filters.agent, autocomplete: "off", spellcheck: "false" });
  const stateSel = h("select", { id: "f-state", name: "state" }, option("", "any"), STATES.map((s) => option(s, stateLabel(s), filters.state === s)));
  const typeSel = h("select", { id: "f-type", name: "type" }, option("", "any"),
    option("question", "questions", filters.type === "question"), option("control", "control threads", filters.type === "control"));
  const prioritySel = h("select", { id: "f-priority", name: "priority" }, option("", "any"), PRIORITIES.map((p) => option(p, p, filters.priority === p)));
  const searchIn = h("input", { id: "f-query", name: "query", type: "search", value: filters.query, placeholder: "words in titles and posts", autocomplete: "off" });
  const clearBtn = h("button", { type: "button", class: "secondary", onclick: clearFilters }, "Clear");
  const filterForm = h("form", { class: "filters", role: "search", "aria-label": "Filter and search threads", onsubmit: (e) => { e.preventDefault(); readFilters(); } },
    field("f-query", "Search", searchIn),
    field("f-ticket", "Ticket", ticketIn),
    field("f-run", "Run", runIn),
    field("f-agent", "Agent", agentIn),
    field("f-state", "State", stateSel),
    field("f-type", "Type", typeSel),
    field("f-priority", "Priority", prioritySel),
    h("div", { class: "field field-buttons" }, h("button", { type: "submit" }, "Apply"), clearBtn),
  );
  const typed = debounce(readFilters, 300);
  for (const input of [ticketIn, runIn, agentIn, searchIn]) input.addEventListener("input", typed);
  for (const select of [stateSel, typeSel, prioritySel]) select.addEventListener("change", readFilters);

  function readFilters() {
    typed.cancel();
    Object.assign(filters, {
      ticket: ticketIn.value.trim(), run_id: runIn.value.trim(), agent: agentIn.value.trim(), state: stateSel.value,
      type: typeSel.value, priority: prioritySel.value, query: searchIn.value.trim(),
    });
    reload();
  }

  function clearFilters() {
    Object.assign(filters, { ticket: "", run_id: "", agent: "", state: "", type: "", priority: "", query: "" });
    ticketIn.value = runIn.value = agentIn.value = searchIn.value = "";
    stateSel.value = typeSel.value = prioritySel.value = "";
    reload();
  }

  // -- queues ---------------------------------------------------------------------------------
  const queueButtons = {};
  const queueCounts = {};
  const queueDefs = [["all", "All threads"], ["unanswered", "Unanswered"], ["unseen", "Unseen by me"],
    ["assigned", "Assigned to me"]];
  const queueBar = h("div", { class: "queues", role: "group", "aria-label": "Queue" },
    queueDefs.map(([key, label]) => {
      queueCounts[key] = h("span", { class: "count" });
      queueButtons[key] = h("button", { type: "button", class: "queue", "data-queue": key, "aria-pressed": String(queue === key), onclick: () => setQueue(key) }, label, " ", queueCounts[key]);
      return queueButtons[key];
    }),
  );

  function setQueue(key) {
    queue = key;
    for (const [k, button] of Object.entries(queueButtons)) button.setAttribute("aria-pressed", String(k === key));
    reload();
  }

  // -- columns --------------------------------------------------------------------------------
  const lists = {};
  const counts = {};
  const empties = {};
  const column = (key, label) => {
    const headingId = `col-${key}`;
    lists[key] = h("ol", { class: "cards", "aria-labelledby": headingId });
    counts[key] = h("span", { class: "count" }, "0");
    empties[key] = h("p", { class: "empty" }, "Nothing here.");
    return h("section", { class: `column column-${key}`, "data-group": key },
      h("h2", { id: headingId }, label, " ", counts[key]), empties[key], lists[key]);
  };
  const columns = h("div", { class: "columns" }, GROUPS.map((g) => column(g.key, g.label)));
  const closedList = column("closed", "Closed");
  const closedDetails = h("details", { class: "closed-fold", open: filters.state === "closed" },
    h("summary", {}, "Closed threads ", counts.closed), closedList);
  closedList.querySelector("h2").classList.add("visually-hidden");

  const status = h("p", { class: "board-status", role: "status", "aria-live": "polite" }, "Loading…");
  const loadError = h("p", { class: "error", role: "alert" });

  root.append(
    h("div", { class: "board" },
      h("h1", { class: "visually-hidden" }, "Board"),
      filterForm,
      h("div", { class: "board-bar" }, queueBar, status,
        h("a", { href: "#/ask", class: "button-link" }, "Ask a question")),
      loadError,
      columns,
      closedDetails,
    ),
  );

  // -- loading --------------------------------------------------------------------------------
  function baseQuery() {
    return { ticket: filters.ticket, run_id: filters.run_id, state: filters.state, priority: filters.priority };
  }

  async function pages(path, query) {
    const threads = [];
    let cursor = "";
    for (let page = 0; page < MAX_PAGES; page += 1) {
      const { data } = await get(path, { ...query, cursor, limit: PAGE_LIMIT });
      threads.push(...data.threads);
      if (!data.next_cursor) return { threads, more: false };
      cursor = data.next_cursor;
    }
    return { threads, more: true };
  }

  async function fetchThreads() {
    const query = { ...baseQuery(), ...viewerQuery() };
    let threads;
    if (filters.query) {
      threads = (await pages("/api/v1/forum/search", { ...query, query: filters.query })).threads;
      // A search inside a queue: the search result carries the viewer's flags.
      if (queue === "unanswered") threads = threads.filter((t) => t.is_unanswered && t.state !== "closed");
      if (queue === "unseen") threads = threads.filter((t) => t.is_unseen && t.state !== "closed");
      if (queue === "assigned") threads = threads.filter((t) => t.assignee_name === viewerName());
    } else if (queue === "assigned") {
      threads = (await get("/api/v1/forum/threads", { ...query, assignee: viewerName(), limit: 500 })).data.threads;
    } else if (queue !== "all") {
      threads = (await pages("/api/v1/forum/queues", { ...query, type: queue })).threads;
    } else {
      threads = (await get("/api/v1/forum/threads", { ...query, limit: 500 })).data.threads;
    }
    return threads;
  }

  async function fetchAssignedCount() {
    const { data } = await get("/api/v1/forum/threads", { ...baseQuery(), assignee: viewerName(), limit: 500 });
    return String(data.threads.filter((t) => t.state !== "closed").length);
  }

  // What a card shows of the conversation: the latest post, or the question an agent waits on.
  async function fetchExcerpts() {
    try {
      const { data } = await get("/api/v1/ui/excerpts", { ticket: filters.ticket, run_id: filters.run_id, limit: 1000 });
      return new Map((data.excerpts || []).map((e) => [e.thread_id, e]));
    } catch (_) {
      return excerpts; // keep what we had: the cards still work without excerpts
    }
  }

  // The status of the runs control threads belong to (answering one resumes its run).
  async function fetchRunStatuses() {
    try {
      const { data } = await get("/api/v1/runs");
      return new Map((data.runs || []).map((r) => [r.run_id, r.status]));
    } catch (_) {
      return runStatuses;
    }
  }

  async function refreshRunStatuses() {
    if (destroyed) return;
    const next = await fetchRunStatuses();
    if (destroyed) return;
    runStatuses = next;
    for (const card of cards.values()) {
      if (!isControl(card.thread)) continue;
      const badge = card.li.querySelector('[data-field="run-status"]');
      const value = runStatuses.get(card.thread.run_id) || "";
      if (badge && badge.textContent !== value) {
        badge.textContent = value;
        badge.className = `badge run-status run-${value}`;
      }
    }
  }

  let runTimers = [];
  function hurryRuns() {
    for (const timer of runTimers) clearTimeout(timer);
    runTimers = RUN_FAST_MS.map((ms) => setTimeout(refreshRunStatuses, ms));
  }

  async function fetchQueueCount(type) {
    const { data } = await get("/api/v1/forum/queues", { ...baseQuery(), ...viewerQuery(), type, limit: PAGE_LIMIT });
    return `${data.threads.length}${data.next_cursor ? "+" : ""}`;
  }

  async function reload() {
    if (destroyed) return;
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    const mine = ++generation;
    const flash = flashNext;
    flashNext = false;
    try {
      const [threads, unanswered, unseen, assigned, found, statuses] = await Promise.all([
        fetchThreads(), fetchQueueCount("unanswered"), fetchQueueCount("unseen"), fetchAssignedCount(),
        fetchExcerpts(), fetchRunStatuses(),
      ]);
      if (destroyed || mine !== generation) return;
      excerpts = found;
      runStatuses = statuses;
      loadError.textContent = "";
      queueCounts.unanswered.textContent = `(${unanswered})`;
      queueCounts.unseen.textContent = `(${unseen})`;
      queueCounts.assigned.textContent = `(${assigned})`;
      render(threads, flash);
    } catch (error) {
      if (!destroyed) loadError.textContent = `Could not load threads: ${error.message}`;
    } finally {
      loading = false;
      if (again && !destroyed) {
        again = false;
        reload();
      }
    }
  }

  const scheduleReload = debounce(reload, REFRESH_DELAY_MS);

  // -- rendering ------------------------------------------------------------------------------
  function render(threads, flash = false) {
    const shown = threads.filter((t) => (!filters.type || threadType(t) === filters.type)
      && (!filters.agent || t.agent_name === filters.agent));
    const groups = { new: [], triaged: [], waiting: [], answered: [], closed: [] };
    for (const thread of shown) groups[groupOf(thread.state)].push(thread);
    const keep = new Set(shown.map((t) => t.thread_id));
    keepFocus(() => {
      for (const [key, list] of Object.entries(groups)) {
        list.sort((a, b) => (b.updated_at || "").localeCompare(a.updated_at || ""));
        reconcile(lists[key], list.map((t) => ensureCard(t, flash).li));
        counts[key].textContent = String(list.length);
        empties[key].hidden = list.length > 0;
      }
      for (const [id, card] of cards) {
        if (!keep.has(id)) {
          card.li.remove();
          cards.delete(id);
        }
      }
    });
    if (filters.state === "closed") closedDetails.open = true;
    const what = filters.query ? `matching “${filters.query}”` : queue === "all" ? "" : `in your ${queue} queue`;
    status.textContent = `${shown.length} thread${shown.length === 1 ? "" : "s"} ${what}`.trim() + ` · as ${viewerName()}`;
  }

  function reconcile(list, nodes) {
    nodes.forEach((node, index) => {
      if (list.children[index] !== node) list.insertBefore(node, list.children[index] || null);
    });
    while (list.children.length > nodes.length) list.lastElementChild.remove();
  }

  function signature(t) {
    const e = excerpts.get(t.thread_id) || {};
    return [t.state, t.priority, t.updated_at, t.posts_count, t.assignee_name, t.is_unseen, t.is_unanswered, t.last_event_sequence,
      e.excerpt, e.pending_question, e.posted_at, runStatuses.get(t.run_id) || ""].join("|");
  }

  function ensureCard(thread, flash) {
    let card = cards.get(thread.thread_id);
    if (!card) {
      card = createCard(thread);
      cards.set(thread.thread_id, card);
      if (flash) {
        card.li.classList.add("arrived");
        setTimeout(() => card.li.classList.remove("arrived"), 4000);
      }
    } else if (card.signature !== signature(thread)) {
      updateCard(card, thread);
    }
    return card;
  }

  function cardBody(t, titleId) {
    const link = h("a", { href: `#/thread/${encodeURIComponent(t.thread_id)}`, id: titleId, class: "card-title" }, t.title);
    const markers = [];
    if (t.is_unseen) markers.push(h("span", { class: "marker marker-unseen", title: "Something happened here since you last looked" }, "unseen"));
    if (t.is_unanswered && t.state !== "closed") markers.push(h("span", { class: "marker marker-unanswered" }, "unanswered"));
    if (isControl(t)) markers.push(h("span", { class: "marker marker-control" }, "control"));
    const meta = (label, value) => value ? h("div", {}, h("dt", {}, label), h("dd", {}, value)) : null;
    const runStatus = isControl(t) ? runStatuses.get(t.run_id) || "" : "";
    return h("div", { class: "card-body" },
      h("h3", {}, link),
      h("div", { class: "card-markers" },
        h("span", { class: `badge priority priority-${t.priority}` }, t.priority),
        h("span", { class: `badge state state-${t.state}` }, stateLabel(t.state)),
        markers,
        isControl(t) ? h("span", { class: `badge run-status run-${runStatus}`, "data-field": "run-status", title: "the run's status" }, runStatus) : null),
      cardExcerpt(t),
      h("dl", { class: "meta card-meta" },
        meta("ticket", t.ticket),
        meta("run", t.run_id),
        meta("agent", t.agent_name),
        meta("assignee", t.assignee_name ? `${t.assignee_name} (${t.assignee_type})` : ""),
        meta("posts", String(t.posts_count)),
        meta("last activity", timeEl(t.updated_at || t.last_post_at))),
    );
  }

  function cardExcerpt(t) {
    const e = excerpts.get(t.thread_id);
    if (!e) return null;
    if (e.pending_question) {
      return h("div", { class: "card-excerpt card-question", "data-field": "question" },
        h("p", {}, h("strong", {}, `${e.pending_agent || t.agent_name} asks: `), e.pending_question),
        e.pending_context ? h("p", { class: "muted small" }, e.pending_context) : null,
        h("p", { class: "muted small" }, "waiting for an answer · ", timeEl(e.pending_at)));
    }
    if (!e.excerpt) return null;
    return h("div", { class: "card-excerpt", "data-field": "excerpt" },
      h("p", {}, e.excerpt),
      h("p", { class: "muted small" }, e.author_name ? `${e.author_name} (${e.author_type})` : e.author_type, " · ", timeEl(e.posted_at)));
  }

  function createCard(t) {
    const titleId = uid("card-title");
    const formId = uid("answer-form");
    const areaId = uid("answer-text");
    const card = { id: t.thread_id, thread: t, signature: signature(t), titleId };
    card.body = cardBody(t, titleId);
    card.toggle = h("button", {
      type: "button", class: "answer-toggle", "aria-expanded": "false", "aria-controls": formId,
      "aria-describedby": titleId, onclick: () => (card.form.hidden ? openForm(card) : closeForm(card)),
    }, "Answer");
    card.textarea = h("textarea", { id: areaId, name: "body", rows: "3" });
    card.send = h("button", { type: "submit" }, "Send answer");
    card.error = h("p", { class: "error", role: "alert" });
    card.form = h("form", { class: "answer-form", id: formId, hidden: true, onsubmit: (e) => { e.preventDefault(); sendAnswer(card); } },
      h("label", { for: areaId }, isControl(t) ? `Your answer to ${t.agent_name}’s question` : `Your answer to “${t.title}”`),
      card.textarea,
      h("div", { class: "row" }, card.send,
        h("button", { type: "button", class: "secondary", onclick: () => closeForm(card, true) }, "Cancel")),
      card.error,
    );
    card.form.addEventListener("keydown", (e) => {
      if (e.key === "Escape") closeForm(card, true);
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); sendAnswer(card); }
    });
    card.actions = h("div", { class: "card-actions" }, card.toggle);
    card.li = h("li", { class: "card", "data-thread-id": t.thread_id, "data-state": t.state, "aria-labelledby": titleId },
      card.body, card.actions, card.form);
    card.actions.hidden = t.state === "closed";
    return card;
  }

  function updateCard(card, t) {
    card.thread = t;
    card.signature = signature(t);
    const body = cardBody(t, card.titleId);
    card.body.replaceWith(body);
    card.body = body;
    card.li.dataset.state = t.state;
    card.actions.hidden = t.state === "closed";
    if (t.state === "closed" && !card.form.hidden) {
      card.error.textContent = "This thread was closed meanwhile; your text is kept here.";
    }
  }

  function openForm(card) {
    card.form.hidden = false;
    card.toggle.setAttribute("aria-expanded", "true");
    card.textarea.focus();
  }

  function closeForm(card, restoreFocus = false) {
    card.form.hidden = true;
    card.toggle.setAttribute("aria-expanded", "false");
    if (restoreFocus) card.toggle.focus();
  }

  async function sendAnswer(card) {
    const text = card.textarea.value;
    if (!text.trim()) {
      card.error.textContent = "Write an answer first.";
      card.textarea.focus();
      return;
    }
    card.error.textContent = "";
    card.send.disabled = true;
    card.form.setAttribute("aria-busy", "true");
    try {
      const t = card.thread;
      // A control thread's agent resumes on a guidance_answer signal, not on a forum answer.
      const { status: code, data } = isControl(t)
        ? await sendGuidanceAnswer({ runId: t.run_id, ticket: t.ticket, agentName: t.agent_name, answer: text })
        : await post(threadPath(card.id, "answer"), { body: text, ...actor() });
      if (isControl(t)) hurryRuns();
      card.textarea.value = "";
      closeForm(card);
      if (code === 202) {
        card.error.textContent = "";
        status.textContent = `Answer to “${card.thread.title}” queued: it applies when the pipeline recovers.`;
      } else if (data?.thread) {
        keepFocus(() => render(mergeOne(data.thread)));
      }
      card.toggle.focus();
      scheduleReload();
    } catch (error) {
      card.error.textContent = error.message;
      card.textarea.focus();
    } finally {
      card.send.disabled = false;
      card.form.removeAttribute("aria-busy");
    }
  }

  function mergeOne(thread) {
    const list = [...cards.values()].map((c) => (c.id === thread.thread_id ? thread : c.thread));
    return list;
  }

  // -- live -----------------------------------------------------------------------------------
  reload();

  return {
    onEvents(events) {
      flashNext = true;
      scheduleReload();
      if (events.some((e) => (e.envelope?.event_type || e.payload_json?.type) === "forum.control.signal")) hurryRuns();
    },
    resync() { scheduleReload(); },
    reconnected() {
      if (loadError.textContent) scheduleReload(); // a load failed while the daemon was away
    },
    viewerChanged() { reload(); },
    unmount() {
      destroyed = true;
      scheduleReload.cancel();
      typed.cancel();
      for (const timer of runTimers) clearTimeout(timer);
    },
  };
}
