// Entry point: the header, the live stream, the "disconnected" banner and a hash router.
//   #/                 board          #/thread/<id>   one thread
//   #/runs             runs           #/system        health and the actor tree

import { h, refreshRelativeTimes } from "./dom.js";
import { LiveStream } from "./live.js";
import { onViewerChange, setViewerName, viewerName } from "./viewer.js";
import { mountBoard } from "./board.js";
import { mountThread } from "./thread.js";
import { mountRuns } from "./runs.js";
import { mountSystem } from "./system.js";

const live = new LiveStream();
const main = document.getElementById("main");
const banner = document.getElementById("banner");
const liveStatus = document.getElementById("live-status");
const viewerInput = document.getElementById("viewer-name");
let current = null;
let currentKey = "";
let disconnectedSince = 0;

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "thread" && parts[1]) return { view: "board", key: `thread/${parts[1]}`, mount: (el) => mountThread(el, parts[1], { live }) };
  if (parts[0] === "runs") return { view: "runs", key: "runs", mount: (el) => mountRuns(el, { live }) };
  if (parts[0] === "system") return { view: "system", key: "system", mount: (el) => mountSystem(el, { live }) };
  return { view: "board", key: "board", mount: (el) => mountBoard(el, { live }) };
}

function show() {
  const next = route();
  if (next.key === currentKey && current) return;
  if (current?.unmount) current.unmount();
  currentKey = next.key;
  main.replaceChildren();
  for (const link of document.querySelectorAll(".nav a")) {
    if (link.dataset.view === next.view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  current = next.mount(main);
  document.body.dataset.view = next.key.split("/")[0];
}

function renderStatus(status, detail) {
  if (status === "live") {
    liveStatus.textContent = "live";
    liveStatus.className = "live-status is-live";
    if (disconnectedSince) {
      disconnectedSince = 0;
      banner.hidden = true;
      banner.replaceChildren();
    }
  } else if (status === "disconnected") {
    liveStatus.textContent = "disconnected";
    liveStatus.className = "live-status is-down";
    if (!disconnectedSince) disconnectedSince = Date.now();
    banner.replaceChildren(
      h("strong", {}, "Disconnected — reconnecting…"),
      " ",
      h("span", { class: "banner-detail" },
        `The live stream to the daemon was lost (${detail}). The page keeps its place and resumes from event ${live.cursor ?? "now"} without a gap.`),
      " ",
      h("button", { type: "button", class: "link-button", onclick: () => live.retryNow() }, "Retry now"),
    );
    banner.hidden = false;
  } else {
    liveStatus.textContent = status;
    liveStatus.className = "live-status";
  }
}

live.on("status", renderStatus);
live.on("events", (events) => current?.onEvents?.(events));
live.on("resync", () => current?.resync?.());
live.on("reconnected", () => current?.reconnected?.());

viewerInput.value = viewerName();
viewerInput.addEventListener("change", () => setViewerName(viewerInput.value));
onViewerChange((name) => {
  if (viewerInput.value.trim() !== name) viewerInput.value = name;
  current?.viewerChanged?.(name);
});

window.addEventListener("hashchange", () => {
  show();
  window.scrollTo(0, 0);
  main.focus({ preventScroll: true });
});
setInterval(() => refreshRelativeTimes(), 30000);

// For people (and tests) inspecting the page from the devtools console.
window.metawsm = { live, snapshot: () => live.snapshot() };

show();
live.start();
