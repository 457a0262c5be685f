// Who is looking: a name kept in this browser (localStorage), used as viewer_id and actor_name.

const KEY = "metawsm.viewer";
const DEFAULT = "operator";
const listeners = new Set();

export function viewerName() {
  let name = "";
  try {
    name = (localStorage.getItem(KEY) || "").trim();
  } catch (_) { /* storage disabled */ }
  return name || DEFAULT;
}

export function setViewerName(name) {
  const clean = (name || "").trim();
  try {
    if (clean) localStorage.setItem(KEY, clean);
    else localStorage.removeItem(KEY);
  } catch (_) { /* storage disabled */ }
  for (const fn of listeners) fn(viewerName());
}

export function onViewerChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** The viewer as list/search/queue query parameters (seen markers are per human viewer). */
export function viewerQuery() {
  return { viewer_type: "human", viewer_id: viewerName() };
}

/** Actor fields for writes made from this page. */
export function actor(type = "human") {
  return { actor_type: type, actor_name: viewerName() };
}
