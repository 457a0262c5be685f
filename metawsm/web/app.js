// Entry point: the header, the live stream, the "disconnected" banner and a hash router.
//   #/                 board          #/thread/<id>   one thread
//   #/runs             runs           #/system        health and the actor tree
//   #/ask              open a thread as a human (or operator)

import { h, refreshRelativeTimes } from "./dom.js";
import { LiveStream } from "./live.js";
import { onViewerChange, setViewerName, setViewerType, viewerName, viewerType } from "./viewer.js";
import { notificationsWanted, setNotifications, setPageTitle, startAttention } from "./attention.js";
import { mountBoard } from "./board.js";
import { mountThread } from "./thread.js";
import { mountRuns } from "./runs.js";
import { mountAsk } from "./ask.js";
import { mountSystem } from "./system.js";

const live = new LiveStream();
const main = document.getElementById("main");
const banner = document.getElementById("banner");
const liveStatus = document.getElementById("live-status");
const viewerInput = document.getElementById("viewer-name");
const viewerTypeSelect = document.getElementById("viewer-type");
const notifyToggle = document.getElementById("notify-toggle");
const TITLES = { runs: "Runs", system: "System", ask: "Ask" }; // the board is the home page: "metawsm"
let current = null;
let currentKey = "";
let disconnectedSince = 0;

function route() {
  const hash = location.hash.replace(/^#/, "").split("?")[0] || "/";
  const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "thread" && parts[1]) return { view: "board", key: `thread/${parts[1]}`, mount: (el) => mountThread(el, parts[1], { live }) };
  if (parts[0] === "ask") return { view: "ask", key: "ask", mount: (el) => mountAsk(el, { live }) };
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
  setPageTitle(TITLES[next.key] || "");
  current = next.mount(main);
  document.body.dataset.view = next.key.split("/")[0];
}

function renderStatus(status, detail) {
  if (status === "live") {
    liveStatus.textContent = "live";
    liveStatus.className = "live-status is-live";
    if (disconnectedSince && banner.dataset.kind !== "auth") {
      disconnectedSince = 0;
      banner.hidden = true;
      banner.replaceChildren();
    }
  } else if (status === "disconnected") {
    liveStatus.textContent = "disconnected";
    liveStatus.className = "live-status is-down";
    if (!disconnectedSince) disconnectedSince = Date.now();
    if (banner.dataset.kind === "auth") return; // "session expired" says more than "reconnecting"
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
live.on("decision", (decision) => current?.onDecision?.(decision));

viewerInput.value = viewerName();
viewerInput.addEventListener("change", () => setViewerName(viewerInput.value));
viewerTypeSelect.value = viewerType();
viewerTypeSelect.addEventListener("change", () => setViewerType(viewerTypeSelect.value));
onViewerChange((name, type) => {
  if (viewerInput.value.trim() !== name) viewerInput.value = name;
  if (viewerTypeSelect.value !== type) viewerTypeSelect.value = type;
  current?.viewerChanged?.(name);
});

function renderNotify(on) {
  notifyToggle.setAttribute("aria-pressed", String(on));
  notifyToggle.textContent = `Desktop notifications: ${on ? "on" : "off"}`;
}
renderNotify(notificationsWanted() && "Notification" in window && Notification.permission === "granted");
notifyToggle.addEventListener("click", async () => {
  const on = await setNotifications(notifyToggle.getAttribute("aria-pressed") !== "true");
  renderNotify(on);
  if (!on && "Notification" in window && Notification.permission === "denied") {
    notifyToggle.title = "The browser refuses notifications for this page (site settings).";
  }
});

// A 401 on any request: say so once, in the banner, until the page is logged in again.
window.addEventListener("metawsm:unauthorized", (event) => {
  const expired = event.detail?.expired;
  banner.replaceChildren(
    h("strong", {}, expired ? "Session expired" : "Not logged in"),
    " ",
    h("span", { class: "banner-detail" }, expired
      ? "The daemon no longer accepts this page's session (the operator token was rotated?). Run `metawsm ui` and open the login link it prints."
      : "Open the login link that `metawsm serve` printed, or run `metawsm ui` to get one."),
  );
  banner.hidden = false;
  banner.dataset.kind = "auth";
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
startAttention(live);
