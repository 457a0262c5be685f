// Board: threads grouped by state (new, triaged, waiting, answered; closed folded away), filters,
// text search, the "unanswered" and "unseen by me" queues, and a two-click inline answer.
// Live: every batch of stream events schedules one reload of what the board shows; cards are
// updated in place (keyed by thread id), so an answer being typed is never lost.

import { get, post, threadPath } from "./api.js";
import { debounce, h, keepFocus, option, timeEl, uid } from "./dom.js";
import { GROUPS, PRIORITIES, STATES, groupOf, isControl, stateLabel, threadType } from "./forum.js";
import { actor, viewerName, viewerQuery } from "./viewer.js";

// Kept for the whole page life: going to a thread and back keeps the filters.
const filters = { ticket: "", run_id: "", state: "", type: "", priority: "", query: "" };
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

  // -- filters --------------------------------------------------------------------------------
  const field = (id, label, control) => h("div", { class: "field" }, h("label", { for: id }, label), control);
  const ticketIn = h("input", { id: "f-ticket", name: "ticket", type: "text", value: filters.ticket, autocomplete: "off", spellcheck: "false" });
  const runIn = h("input", { id: "f-run", name: "run_id", type: "text", value: filters.run_id, autocomplete: "off", spellcheck: "false" });
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
    field("f-state", "State", stateSel),
    field("f-type", "Type", typeSel),
    field("f-priority", "Priority", prioritySel),
    h("div", { class: "field field-buttons" }, h("button", { type: "submit" }, "Apply"), clearBtn),
  );
  const typed = debounce(readFilters, 300);
  for (const input of [ticketIn, runIn, searchIn]) input.addEventListener("input", typed);
  for (const select of [stateSel, typeSel, prioritySel]) select.addEventListener("change", readFilters);

  function readFilters() {
    typed.cancel();
    Object.assign(filters, {
      ticket: ticketIn.value.trim(), run_id: runIn.value.trim(), state: stateSel.value,
      type: typeSel.value, priority: prioritySel.value, query: searchIn.value.trim(),
    });
    reload();
  }

  function clearFilters() {
    Object.assign(filters, { ticket: "", run_id: "", state: "", type: "", priority: "", query: "" });
    ticketIn.value = runIn.value = searchIn.value = "";
    stateSel.value = typeSel.value = prioritySel.value = "";
    reload();
  }

  // -- queues ---------------------------------------------------------------------------------
  const queueButtons = {};
  const queueCounts = {};
  const queueDefs = [["all", "All threads"], ["unanswered", "Unanswered"], ["unseen", "Unseen by me"]];
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
      h("div", { class: "board-bar" }, queueBar, status),
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
    } else if (queue !== "all") {
      threads = (await pages("/api/v1/forum/queues", { ...query, type: queue })).threads;
    } else {
      threads = (await get("/api/v1/forum/threads", { ...query, limit: 500 })).data.threads;
    }
    return threads;
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
      const [threads, unanswered, unseen] = await Promise.all([
        fetchThreads(), fetchQueueCount("unanswered"), fetchQueueCount("unseen"),
      ]);
      if (destroyed || mine !== generation) return;
      loadError.textContent = "";
      queueCounts.unanswered.textContent = `(${unanswered})`;
      queueCounts.unseen.textContent = `(${unseen})`;
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
    const shown = threads.filter((t) => !filters.type || threadType(t) === filters.type);
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
    return [t.state, t.priority, t.updated_at, t.posts_count, t.assignee_name, t.is_unseen, t.is_unanswered, t.last_event_sequence].join("|");
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
    return h("div", { class: "card-body" },
      h("h3", {}, link),
      h("div", { class: "card-markers" },
        h("span", { class: `badge priority priority-${t.priority}` }, t.priority),
        h("span", { class: `badge state state-${t.state}` }, stateLabel(t.state)),
        markers),
      h("dl", { class: "meta card-meta" },
        meta("ticket", t.ticket),
        meta("run", t.run_id),
        meta("agent", t.agent_name),
        meta("assignee", t.assignee_name ? `${t.assignee_name} (${t.assignee_type})` : ""),
        meta("posts", String(t.posts_count)),
        meta("last activity", timeEl(t.updated_at || t.last_post_at))),
    );
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
      h("label", { for: areaId }, `Your answer to “${t.title}”`),
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
      const { status: code, data } = await post(threadPath(card.id, "answer"), { body: text, ...actor() });
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
    onEvents() {
      flashNext = true;
      scheduleReload();
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
    },
  };
}
