// The map of units: an inline SVG, positions projected from the units' own bounding box.

import { s } from "./dom.js";

const WIDTH = 400;
const HEIGHT = 300;
const MARGIN = 40;
const MIN_GAP = 20; // px between dots, so neighbouring blocks stay told apart
const CHAR_WIDTH = 6.2;

/** Lat/lon to SVG x/y: equirectangular, longitude shrunk by cos(latitude), fit to the box. */
function project(units) {
  const lats = units.map((u) => u.location.lat);
  const lons = units.map((u) => u.location.lon);
  const midLat = (Math.min(...lats) + Math.max(...lats)) / 2;
  const midLon = (Math.min(...lons) + Math.max(...lons)) / 2;
  const squeeze = Math.cos((midLat * Math.PI) / 180);
  const spanX = (Math.max(...lons) - Math.min(...lons)) * squeeze;
  const spanY = Math.max(...lats) - Math.min(...lats);
  const scale = Math.min((WIDTH - 2 * MARGIN) / (spanX || 1), (HEIGHT - 2 * MARGIN) / (spanY || 1));
  return units.map((u) => ({
    unit: u,
    x: WIDTH / 2 + (u.location.lon - midLon) * squeeze * scale,
    y: HEIGHT / 2 - (u.location.lat - midLat) * scale,
  }));
}

/** Push dots that would overlap apart: a schematic map, not a survey. */
function spread(points) {
  for (let round = 0; round < 30; round++) {
    let moved = false;
    for (const a of points) {
      for (const b of points) {
        if (a === b) continue;
        const dx = b.x - a.x || 0.01;
        const dy = b.y - a.y;
        const gap = Math.hypot(dx, dy);
        if (gap >= MIN_GAP) continue;
        const push = (MIN_GAP - gap) / 2 / (gap || 1);
        a.x -= dx * push;
        a.y -= dy * push;
        b.x += dx * push;
        b.y += dy * push;
        moved = true;
      }
    }
    if (!moved) break;
  }
}

const overlaps = (a, b) => a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;
const inside = (box) => box.x0 >= 2 && box.x1 <= WIDTH - 2 && box.y0 >= 2 && box.y1 <= HEIGHT - 2;

/** Candidate label boxes around a dot, best first: beside it (nudged up or down), under, over. */
function candidates(p, width) {
  const beside = [0, -12, 12, -24, 24].flatMap((dy) => [
    { x0: p.x + 10, x1: p.x + 10 + width, anchor: "start", tx: p.x + 10, dy },
    { x0: p.x - 10 - width, x1: p.x - 10, anchor: "end", tx: p.x - 10, dy },
  ]);
  const mid = { x0: p.x - width / 2, x1: p.x + width / 2, anchor: "middle", tx: p.x };
  return [...beside, { ...mid, dy: 16 }, { ...mid, dy: -16 }].map((c) => ({
    ...c, y0: p.y + c.dy - 8, y1: p.y + c.dy + 6, ty: p.y + c.dy + 4,
  }));
}

/** Give each label the first place that stays in the box and covers no dot or label. */
function placeLabels(points) {
  const taken = points.map((p) => ({ x0: p.x - 8, x1: p.x + 8, y0: p.y - 8, y1: p.y + 8 }));
  for (const p of points) {
    const options = candidates(p, p.unit.name.length * CHAR_WIDTH);
    const free = options.find((box) => inside(box) && !taken.some((t) => overlaps(box, t)));
    p.label = free ?? options.find(inside) ?? options[0];
    taken.push(p.label);
  }
}

const count = (households) => (Array.isArray(households) ? households.length : households);

/** Draw `units` into `svg`; units without a location are named in `note`. */
function drawMap(svg, units, alarms, note) {
  const duressUnits = new Set(alarms.filter((a) => a.duress).map((a) => a.unit_id));
  const placed = units.filter((u) => u.location);
  const points = placed.length ? project(placed) : [];
  spread(points);
  placeLabels(points);
  svg.replaceChildren(
    s("rect", { class: "ground", x: 0, y: 0, width: WIDTH, height: HEIGHT, rx: 6 }),
    ...points.map((p) =>
      s("g", { class: ["unit", p.unit.open_alarms ? "alarm" : "", duressUnits.has(p.unit.id) ? "duress" : ""].join(" ").trim(),
        "data-unit-id": p.unit.id },
        s("title", {}, `${p.unit.name} (${p.unit.zone}): ${count(p.unit.households)} households, ` +
          `${p.unit.open_alarms} open alarm${p.unit.open_alarms === 1 ? "" : "s"}`),
        s("circle", { cx: p.x.toFixed(1), cy: p.y.toFixed(1), r: p.unit.open_alarms ? 8 : 6 }),
        s("text", { x: p.label.tx.toFixed(1), y: p.label.ty.toFixed(1), "text-anchor": p.label.anchor }, p.unit.name),
      ),
    ),
  );
  const unplaced = units.filter((u) => !u.location).map((u) => u.name);
  note.hidden = unplaced.length === 0;
  note.textContent = unplaced.length ? `Not on the map (no location): ${unplaced.join(", ")}` : "";
}

/** The local sketch of the units, drawn without tiles: same calls as the tile map. */
export function sketchMap(svg, note) {
  return {
    draw: (units, alarms) => drawMap(svg, units, alarms, note),
    highlight(unitId) {
      for (const g of svg.querySelectorAll(".unit")) g.classList.toggle("selected", g.dataset.unitId === unitId);
    },
  };
}
