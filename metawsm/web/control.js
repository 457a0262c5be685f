// Control threads and guidance answers, shared by the board, the thread page and the runs view.
//
// An agent that waits for guidance asked with a `guidance_request` control signal on its
// (run, agent) control thread; what resumes it is a `guidance_answer` control signal for that
// agent (POST /api/v1/forum/control/signal), not a plain forum answer.  So answering a control
// thread anywhere in the UI sends that signal, as the operator named in the page.

import { post } from "./api.js";
import { viewerName } from "./viewer.js";

/** Send a guidance answer to `agentName` of run `runId` (ticket: the control thread's). */
export function sendGuidanceAnswer({ runId, ticket, agentName, answer }) {
  return post("/api/v1/forum/control/signal", {
    run_id: runId,
    ticket,
    agent_name: agentName,
    actor_type: "operator",
    actor_name: viewerName(),
    payload: { schema_version: 1, control_type: "guidance_answer", run_id: runId, agent_name: agentName, answer },
  });
}

/** A control signal's JSON body, or null for a plain post. */
export function controlPayload(body) {
  const text = body || "";
  if (!text.startsWith("{")) return null;
  try {
    const payload = JSON.parse(text);
    return payload && typeof payload.control_type === "string" ? payload : null;
  } catch (_) {
    return null;
  }
}

/** One line for a control signal: "guidance request: Which DB?". */
export function controlSummary(payload) {
  const detail = payload.question || payload.answer || payload.summary || payload.status || "";
  return `${payload.control_type.replaceAll("_", " ")}${detail ? `: ${detail}` : ""}`;
}
