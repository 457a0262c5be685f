// Who is looking: a viewer type (human, or agent to see an agent's queues) and a name, chosen
// once and kept in this browser (localStorage).  They are the viewer_type/viewer_id of the queues
// and seen markers; the name is also the actor_name of writes (made as a human: a person types
// them, whoever's queue they look at).

const KEY = "metawsm.viewer";
const TYPE_KEY = "metawsm.viewerType";
const DEFAULT = "operator";
export const VIEWER_TYPES = ["human", "agent"]; // the API's viewer types
const listeners = new Set();

export function viewerName() {
  let name = "";
  try {
    name = (localStorage.getItem(KEY) || "").trim();
  } catch (_) { /* storage disabled */ }
  return name || DEFAULT;
}

export function viewerType() {
  let type = "";
  try {
    type = localStorage.getItem(TYPE_KEY) || "";
  } catch (_) { /* storage disabled */ }
  return VIEWER_TYPES.includes(type) ? type : "human";
}

function changed() {
  for (const fn of listeners) fn(viewerName(), viewerType());
}

export function setViewerName(name) {
  const clean = (name || "").trim();
  try {
    if (clean) localStorage.setItem(KEY, clean);
    else localStorage.removeItem(KEY);
  } catch (_) { /* storage disabled */ }
  changed();
}

export function setViewerType(type) {
  try {
    if (VIEWER_TYPES.includes(type)) localStorage.setItem(TYPE_KEY, type);
  } catch (_) { /* storage disabled */ }
  changed();
}

export function onViewerChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** The viewer as list/search/queue query parameters (seen markers are per viewer). */
export function viewerQuery() {
  return { viewer_type: viewerType(), viewer_id: viewerName() };
}

/** Actor fields for writes made from this page. */
export function actor(type = "human") {
  return { actor_type: type, actor_name: viewerName() };
}
