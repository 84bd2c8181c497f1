// The police desk: open alarms, live; the offline panels; the map of units.

import { api } from "./api.js";
import { beep, offerSound } from "./beep.js";
import { h, showEmpty } from "./dom.js";
import { answerer, clock, countdownAttrs, elapsedAttrs, fullTime, label, startTicker, tick } from "./format.js";
import { coalesced, listen } from "./live.js";
import { sketchMap } from "./map.js";
import { setupPush } from "./push.js";
import { tileMap } from "./tilemap.js";

const FLASH_MS = 10000;
const tbody = document.querySelector("#alarms tbody");
const rows = new Map(); // alarm id → its <tr>, kept across refreshes so a flash is not restarted
let firstLoad = true;
let openAlarms = [];
const mapElement = document.getElementById("map");
const unplacedNote = document.getElementById("unplaced");
// Real tiles when the operator configured a tile source, else the local sketch.
const map = mapElement.dataset.tileUrl ? tileMap(mapElement, unplacedNote) : sketchMap(mapElement, unplacedNote);

function cells(alarm) {
  const href = `/alarms/${encodeURIComponent(alarm.id)}`;
  const answered = alarm.answered_by ?? [];
  return [
    h("td", { class: "kind" }, alarm.duress ? h("span", { class: "badge duress" }, "DURESS") : null, " ", label(alarm.kind)),
    h("td", { class: "where" },
      h("a", { href }, alarm.unit_name ?? alarm.unit_id), h("br"),
      h("small", {}, `${alarm.address ?? alarm.household_id} · ${alarm.zone ?? ""}`)),
    h("td", {}, h("span", { class: `state state-${alarm.state}`, "data-testid": "state" }, label(alarm.state))),
    h("td", { title: fullTime(alarm.raised_at) }, clock(alarm.raised_at), h("br"),
      h("small", elapsedAttrs(alarm.raised_at))),
    h("td", { class: "num", "data-testid": "notified" }, alarm.notified ?? 0),
    h("td", { "data-testid": "answered" }, answered.length ? answered.map(answerer).join("; ") : "—"),
    h("td", { class: "next" },
      h("span", { class: "countdown", "data-testid": "countdown", ...countdownAttrs(alarm.next_step_at) }, "—"),
      alarm.next_step_name ? h("small", {}, " ", alarm.next_step_name) : null),
  ];
}

function rowFor(alarm, fresh) {
  let row = rows.get(alarm.id);
  if (!row) {
    row = h("tr", { "data-alarm-id": alarm.id, "data-testid": "alarm-row" });
    // The whole row opens the alarm; the link inside stays for keyboards.
    row.addEventListener("click", (event) => {
      if (!event.target.closest("a")) location.assign(`/alarms/${encodeURIComponent(alarm.id)}`);
    });
    // Pointing at an alarm points out its unit on the map.
    row.addEventListener("mouseenter", () => map.highlight(alarm.unit_id));
    row.addEventListener("mouseleave", () => map.highlight(null));
    rows.set(alarm.id, row);
  }
  if (fresh) {
    row.classList.add("flash");
    setTimeout(() => row.classList.remove("flash"), FLASH_MS);
  }
  row.classList.toggle("duress", Boolean(alarm.duress));
  row.replaceChildren(...cells(alarm));
  return row;
}

function renderAlarms(alarms) {
  openAlarms = alarms;
  const fresh = firstLoad ? new Set() : new Set(alarms.filter((a) => !rows.has(a.id)).map((a) => a.id));
  const open = new Set(alarms.map((a) => a.id));
  for (const [id, row] of rows) {
    if (!open.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  alarms.forEach((alarm, i) => {
    const row = rowFor(alarm, fresh.has(alarm.id));
    // Only move rows that are out of place: moving restarts their animation.
    if (tbody.children[i] !== row) tbody.insertBefore(row, tbody.children[i] ?? null);
  });
  document.getElementById("alarm-count").textContent = alarms.length ? `(${alarms.length})` : "";
  showEmpty("no-alarms", alarms.length === 0);
  tick();
  if (fresh.size) beep();
  firstLoad = false;
  tbody.parentElement.dataset.loaded = "true";
}

function renderOffline(panels) {
  document.getElementById("offline-panels").replaceChildren(
    ...panels.map((p) =>
      h("li", { "data-panel-id": p.panel_id },
        h("strong", {}, p.panel_id), ` ${p.address ?? p.household_id ?? ""} · ${p.unit_id}`,
        h("br"),
        h("small", {}, p.last_seen ? `last seen ${clock(p.last_seen)}` : "never seen",
          p.battery !== null && p.battery !== undefined ? ` · battery ${p.battery}%` : ""),
      ),
    ),
  );
  document.getElementById("offline-count").textContent = panels.length ? `(${panels.length})` : "";
  showEmpty("no-offline", panels.length === 0);
}

function renderTroubles(troubles) {
  // Offline panels have their own list; here what else needs someone: tamper, faults.
  const others = troubles.filter((t) => t.kind !== "offline");
  document.getElementById("troubles").replaceChildren(
    ...others.map((t) =>
      h("li", { "data-trouble-id": t.id },
        h("strong", {}, label(t.kind)), ` ${t.panel_id} · ${t.address ?? ""} · ${t.unit_id ?? ""}`,
        h("br"), h("small", {}, `since ${clock(t.opened_at)}`),
      ),
    ),
  );
  document.getElementById("trouble-count").textContent = others.length ? `(${others.length})` : "";
  showEmpty("no-troubles", others.length === 0);
}

const refreshAlarms = coalesced(async () => renderAlarms(await api("/api/alarms?state=open")));
// After the alarms: the map marks the units of duress alarms among them.
const refreshUnits = coalesced(async () => map.draw(await api("/api/units"), openAlarms));
const refreshPanels = coalesced(async () => {
  renderOffline(await api("/api/panels?state=offline"));
  renderTroubles(await api("/api/troubles"));
});
const refreshAll = () => Promise.all([refreshAlarms().then(refreshUnits), refreshPanels()]);

listen({
  open: refreshAll,
  alarm: () => refreshAlarms().then(refreshUnits),
  panel: refreshPanels,
});
// A safety net behind the live feed: a desk must never show a stale picture for long.
setInterval(refreshAll, 30000);
refreshAll();
startTicker();
offerSound(document.getElementById("sound"));
setupPush(document.getElementById("push-enable"), document.getElementById("push-status"));
