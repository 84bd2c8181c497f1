// How times, states and people read on the pages; one ticker keeps the clocks moving.

const pad = (n) => String(n).padStart(2, "0");

/** Local wall-clock time of an epoch-ms instant: 14:03:22. */
export function clock(ms) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** The full local date and time, for tooltips. */
export const fullTime = (ms) => (ms ? new Date(ms).toLocaleString() : "");

/** A duration in ms as m:ss, or h:mm:ss past an hour. */
export function duration(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = pad(total % 60);
  return h ? `${h}:${pad(m)}:${sec}` : `${m}:${sec}`;
}

/** A state or entry name for people: on_scene → on scene. */
export const label = (name) => String(name ?? "").replaceAll("_", " ");

const ROLE_WORDS = { neighbors: "neighbour", key_households: "key household", police: "police", patrol: "patrol", command: "command" };

/** Who answered: "Team 1, Zhang Wei (patrol, sms)", "2-402 (neighbour, panel)". */
export function answerer(a) {
  const how = [ROLE_WORDS[a.role] ?? label(a.role), a.channel].filter(Boolean).join(", ");
  const who = a.who ?? a.actor;
  return how ? `${who} (${how})` : who;
}

/**
 * Attributes that the ticker keeps current: a countdown to `due` (epoch ms) or the time
 * elapsed since `since`.
 */
export const countdownAttrs = (due) => (due ? { "data-due": due } : {});
export const elapsedAttrs = (since) => ({ "data-since": since });

/** Update every countdown and elapsed time on the page now. */
export function tick() {
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-due]")) {
    const left = Number(el.dataset.due) - now;
    el.textContent = left > 0 ? duration(left) : "due now";
    el.classList.toggle("soon", left < 15000);
  }
  for (const el of document.querySelectorAll("[data-since]")) {
    el.textContent = `${duration(now - Number(el.dataset.since))} ago`;
  }
}

/** Tick every second, in step with the wall clock's seconds. */
export function startTicker() {
  tick();
  setTimeout(() => {
    tick();
    setInterval(tick, 1000);
  }, 1000 - (Date.now() % 1000));
}
