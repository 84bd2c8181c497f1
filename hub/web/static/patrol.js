// The patrol's phone page: its zone's open alarms with two big buttons each, live.

import { api, post } from "./api.js";
import { h, showEmpty } from "./dom.js";
import { clock, elapsedAttrs, label, startTicker, tick } from "./format.js";
import { coalesced, listen } from "./live.js";
import { setupPush } from "./push.js";

const list = document.getElementById("patrol-alarms");
const message = document.getElementById("patrol-message");

async function act(alarm, action) {
  message.textContent = "";
  try {
    await post(`/api/alarms/${encodeURIComponent(alarm.id)}/${action}`, {});
  } catch (error) {
    message.textContent = `${label(action)}: ${error.message}`;
  }
  refresh();
}

function card(alarm) {
  const href = `/alarms/${encodeURIComponent(alarm.id)}`;
  return h("li", { class: alarm.duress ? "card duress" : "card", "data-alarm-id": alarm.id },
    h("div", { class: "card-head" },
      alarm.duress ? h("span", { class: "badge duress" }, "DURESS") : null,
      h("strong", {}, label(alarm.kind)),
      h("span", { class: `state state-${alarm.state}`, "data-testid": "state" }, label(alarm.state))),
    h("p", { class: "where" }, h("a", { href }, `${alarm.unit_name ?? alarm.unit_id}, ${alarm.address ?? ""}`)),
    h("p", { class: "note" }, `raised ${clock(alarm.raised_at)} · `, h("span", elapsedAttrs(alarm.raised_at))),
    h("div", { class: "big-buttons" },
      // Disabled rather than hidden, so the other button never moves under a thumb.
      h("button", { type: "button", class: "big", "data-action": "acknowledge",
        disabled: alarm.state !== "raised", onclick: () => act(alarm, "acknowledge") }, "Acknowledge"),
      h("button", { type: "button", class: "big", "data-action": "on_scene",
        disabled: !["raised", "acknowledged"].includes(alarm.state), onclick: () => act(alarm, "on_scene") }, "On scene"),
    ),
  );
}

const refresh = coalesced(async () => {
  // The API sends open alarms most urgent first; its order is the desk's order.
  const alarms = await api("/api/alarms?state=open");
  list.replaceChildren(...alarms.map(card));
  document.getElementById("alarm-count").textContent = alarms.length ? `(${alarms.length})` : "";
  showEmpty("no-alarms", alarms.length === 0);
  list.dataset.loaded = "true";
  tick();
});

listen({ open: refresh, alarm: refresh });
refresh();
startTicker();
setupPush(document.getElementById("push-enable"), document.getElementById("push-status"));
