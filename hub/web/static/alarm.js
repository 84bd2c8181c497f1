// One alarm: header, timeline, notifications and the actions; refetched on its live events.

import { api, post } from "./api.js";
import { h, showEmpty } from "./dom.js";
import { clock, countdownAttrs, fullTime, label, startTicker, tick } from "./format.js";
import { coalesced, listen } from "./live.js";
import { describe, who } from "./timeline.js";

const page = document.getElementById("alarm");
const alarmId = page.dataset.alarmId;
const note = document.getElementById("note");
const message = document.getElementById("action-message");
const OPEN_STATES = ["raised", "acknowledged", "on_scene"];

function renderHeader(alarm) {
  document.getElementById("alarm-kind").textContent = `${label(alarm.kind)} alarm`;
  document.getElementById("alarm-duress").hidden = !alarm.duress;
  const state = document.getElementById("alarm-state");
  state.className = `state state-${alarm.state}`;
  state.textContent = label(alarm.state);
  document.getElementById("alarm-where").replaceChildren(
    h("strong", {}, alarm.unit_name ?? alarm.unit_id), ` · ${alarm.address ?? alarm.household_id} · ${alarm.zone ?? ""}`,
    ` · raised ${clock(alarm.raised_at)}`,
  );
  document.getElementById("alarm-next").replaceChildren(
    ...(alarm.next_step_at
      ? ["Next step", alarm.next_step_name ? ` “${alarm.next_step_name}”` : "", " in ",
         h("span", { class: "countdown", "data-testid": "countdown", ...countdownAttrs(alarm.next_step_at) })]
      : ["No escalation step pending."]),
  );
  document.title = `${label(alarm.kind)} at ${alarm.unit_name ?? alarm.unit_id} · tenhub`;
}

function renderActions(alarm) {
  const open = OPEN_STATES.includes(alarm.state);
  const allowed = {
    acknowledge: open,
    on_scene: open && alarm.state !== "on_scene",
    resolve: open,
    false_alarm: open,
    escalate: open && Boolean(alarm.next_step_at),
  };
  for (const button of document.querySelectorAll("[data-action]")) {
    button.disabled = !allowed[button.dataset.action];
  }
  note.disabled = !open;
}

function renderTimeline(entries) {
  document.getElementById("timeline").replaceChildren(
    ...entries.map((e) =>
      h("tr", { "data-entry": e.entry, "data-testid": "timeline-entry" },
        h("td", { title: fullTime(e.at) }, clock(e.at)),
        h("td", { class: `entry entry-${e.entry}` }, label(e.entry)),
        h("td", {}, who(e)),
        h("td", {}, e.channel ?? ""),
        h("td", {}, describe(e)),
      ),
    ),
  );
}

function renderNotifications(notifications) {
  document.getElementById("notifications").replaceChildren(
    ...notifications.map((n) =>
      h("tr", {},
        h("td", {}, n.channel), h("td", {}, n.recipient),
        h("td", {}, h("span", { class: `status status-${n.status}` }, n.status)),
        h("td", {}, n.delivery ?? ""), h("td", { title: fullTime(n.sent_at) }, clock(n.sent_at)),
        h("td", { class: "error" }, n.last_error ?? ""),
      ),
    ),
  );
  showEmpty("no-notifications", notifications.length === 0);
}

function render(alarm) {
  renderHeader(alarm);
  renderActions(alarm);
  renderTimeline(alarm.timeline ?? []);
  renderNotifications(alarm.notifications ?? []);
  tick();
}

const refresh = coalesced(async () => render(await api(`/api/alarms/${encodeURIComponent(alarmId)}`)));

async function act(action) {
  const text = note.value.trim();
  if (action === "resolve" && !text) {
    message.textContent = "Write a note to resolve: what happened, what was done.";
    note.focus();
    return;
  }
  const body = ["resolve", "false_alarm"].includes(action) && text ? { note: text } : {};
  message.textContent = "";
  try {
    render(await post(`/api/alarms/${encodeURIComponent(alarmId)}/${action}`, body));
    if (body.note) note.value = "";
  } catch (error) {
    message.textContent = error.message;
    refresh();
  }
}

for (const button of document.querySelectorAll("[data-action]")) {
  button.addEventListener("click", () => act(button.dataset.action));
}
listen({ open: refresh, alarm: (event) => event.id === alarmId && refresh() });
refresh();
startTicker();
