// The map of units on real tiles (Leaflet, served by the hub), when the operator set a tile
// source: units with open alarms in red, duress darker, neighbours clustered when zoomed out.

import { h } from "./dom.js";

const PIN = 16;
const ALARM_PIN = 22;

const count = (households) => (Array.isArray(households) ? households.length : households);
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function pinIcon(unit, duress) {
  const alarm = unit.open_alarms > 0;
  const size = alarm ? ALARM_PIN : PIN;
  const classes = ["unit-pin", alarm ? "alarm" : "", duress ? "duress" : ""].filter(Boolean);
  return L.divIcon({
    className: classes.join(" "),
    html: h("span", { "data-unit-id": unit.id }),
    iconSize: [size, size],
  });
}

/** A cluster: how many units, red with the number of alarms when any of them has one. */
function clusterIcon(cluster) {
  const units = cluster.getAllChildMarkers().map((m) => m.options.unit);
  const alarms = units.reduce((sum, u) => sum + u.open_alarms, 0);
  const duress = cluster.getAllChildMarkers().some((m) => m.options.duress);
  const classes = ["unit-cluster", alarms ? "alarm" : "", duress ? "duress" : ""].filter(Boolean);
  const title = `${plural(units.length, "unit")}` + (alarms ? `, ${plural(alarms, "open alarm")}` : "");
  return L.divIcon({
    className: classes.join(" "),
    html: h("span", { title }, alarms ? String(alarms) : String(units.length)),
    iconSize: [36, 36],
  });
}

/** A Leaflet map in `element` (its data-* attributes name the tiles); returns draw/highlight. */
export function tileMap(element, note) {
  const map = L.map(element, { zoomControl: true, attributionControl: true });
  L.tileLayer(element.dataset.tileUrl, {
    attribution: element.dataset.attribution || "",
    maxZoom: Number(element.dataset.maxZoom) || 19,
  }).addTo(map);
  const clusters = L.markerClusterGroup({
    maxClusterRadius: 40,
    showCoverageOnHover: false,
    spiderfyOnMaxZoom: true,
    iconCreateFunction: clusterIcon,
  }).addTo(map);
  const markers = new Map(); // unit id → its marker
  let fitted = "";

  function draw(units, alarms) {
    const duressUnits = new Set(alarms.filter((a) => a.duress).map((a) => a.unit_id));
    const placed = units.filter((u) => u.location);
    markers.clear();
    clusters.clearLayers();
    const layers = placed.map((u) => {
      const duress = duressUnits.has(u.id);
      const marker = L.marker([u.location.lat, u.location.lon], {
        icon: pinIcon(u, duress),
        unit: u,
        duress,
        // Alarmed units above the rest where they overlap.
        zIndexOffset: u.open_alarms ? 1000 : 0,
        keyboard: false,
      });
      marker.bindTooltip(
        h("span", {}, `${u.name} (${u.zone}): ${plural(count(u.households), "household")}, ` +
          plural(u.open_alarms, "open alarm")),
      );
      markers.set(u.id, marker);
      return marker;
    });
    clusters.addLayers(layers);
    // Frame the units once (and again when the set changes), not on every refresh: the
    // operator's own pan and zoom must stay.
    const key = placed.map((u) => u.id).join(",");
    if (key !== fitted && placed.length) {
      map.fitBounds(L.latLngBounds(placed.map((u) => [u.location.lat, u.location.lon])), {
        padding: [24, 24],
        maxZoom: 16,
      });
      fitted = key;
    }
    element.dataset.units = String(placed.length);
    const unplaced = units.filter((u) => !u.location).map((u) => u.name);
    note.hidden = unplaced.length === 0;
    note.textContent = unplaced.length ? `Not on the map (no location): ${unplaced.join(", ")}` : "";
  }

  /** Mark the unit of an alarm (or its cluster, when it is folded into one); null: none. */
  function highlight(unitId) {
    for (const el of element.querySelectorAll(".selected")) el.classList.remove("selected");
    const marker = unitId ? markers.get(unitId) : null;
    if (!marker) return;
    const shown = clusters.getVisibleParent(marker);
    shown?.getElement()?.classList.add("selected");
  }

  return { draw, highlight };
}
