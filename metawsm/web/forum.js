// Forum vocabulary and the thread state machine (forum.md), encoded once for every view.

export const STATES = ["new", "triaged", "waiting_operator", "waiting_human", "answered", "closed"];
export const PRIORITIES = ["low", "normal", "high", "urgent"];
export const ASSIGNEE_TYPES = ["human", "operator", "agent", "system"];

// from → allowed targets (the same state is always allowed, and a no-op, so it is not offered).
export const TRANSITIONS = {
  new: ["triaged", "waiting_operator", "waiting_human", "answered", "closed"],
  triaged: ["waiting_operator", "waiting_human", "answered", "closed"],
  waiting_operator: ["waiting_human", "answered", "triaged", "closed"],
  waiting_human: ["waiting_operator", "answered", "triaged", "closed"],
  answered: ["waiting_operator", "waiting_human", "closed"],
  closed: [],
};

export function allowedTargets(state) {
  return TRANSITIONS[state] || [];
}

export const STATE_LABELS = {
  new: "new",
  triaged: "triaged",
  waiting_operator: "waiting for operator",
  waiting_human: "waiting for human",
  answered: "answered",
  closed: "closed",
};

export function stateLabel(state) {
  return STATE_LABELS[state] || state;
}

/** Control threads are the one-per-(run, agent) threads the control signals are posted on. */
export function isControl(thread) {
  return Boolean(thread.run_id && thread.agent_name && thread.title === `Control: ${thread.agent_name}`);
}

export function threadType(thread) {
  return isControl(thread) ? "control" : "question";
}

/** Board columns: the four open groups; closed threads are folded away below them. */
export const GROUPS = [
  { key: "new", label: "New", states: ["new"] },
  { key: "triaged", label: "Triaged", states: ["triaged"] },
  { key: "waiting", label: "Waiting", states: ["waiting_operator", "waiting_human"] },
  { key: "answered", label: "Answered", states: ["answered"] },
];

export function groupOf(state) {
  const group = GROUPS.find((g) => g.states.includes(state));
  return group ? group.key : "closed";
}
