// What each timeline entry means, in words (the entries are listed in docs/lifecycle.md).

import { clock, duration, label } from "./format.js";

const people = (recipients) =>
  (recipients ?? []).map((r) => `${r.name ?? r.address} (${r.role}, ${r.channel})`).join(", ") || "nobody";

const DESCRIBE = {
  raised: (d) => `${label(d.kind)} from panel ${d.panel}; policy ${d.policy ?? "default"}`,
  repeated: (d) => `pressed again (${d.repeats}×)`,
  step_fired: (d) =>
    `${d.duress ? "DURESS · " : ""}step “${d.name}” told ${people(d.recipients)}` +
    (d.late_ms > 1000 ? ` · ${duration(d.late_ms)} late` : ""),
  escalated: (d) => `step “${d.name}” fired at once, ahead of its time`,
  step_skipped: (d) => `step “${d.name}” skipped: ${d.reason}`,
  duress_alert: (d) => `police told of the duress: ${people(d.recipients)}`,
  cancel_refused: (d) => `wrong PIN (${d.wrong_pins} so far)`,
  cancelled: (d) => (d.by ? `by ${d.by}` : ""),
  notification_held: (d) => `${d.recipient}: held (${d.reason}) until ${clock(d.until)}`,
  notification_failed: (d) => `${d.recipient}: ${d.status}${d.error_code ? ` (error ${d.error_code})` : ""}`,
  notification_confirmed: (d) => `${d.recipient}: in doubt after a stop, but the provider has it (${d.provider_id})`,
  notification_resent: (d) => `${d.recipient}: in doubt after a stop; ${d.reason}, so sent again`,
};

/** The details column of one entry. */
export function describe(entry) {
  const d = entry.detail ?? {};
  const text = DESCRIBE[entry.entry]?.(d);
  if (text !== undefined) return text;
  // acknowledged, on_scene, resolved, and anything newer: show what the entry carries.
  const { role, ...rest } = d;
  if (typeof rest.note === "string") return rest.note;
  const shown = Object.entries(rest).map(([k, v]) => `${label(k)}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
  return shown.join(" · ");
}

/** The who column: the actor, and as which role. */
export function who(entry) {
  const role = entry.detail?.role;
  const who = entry.who ?? entry.actor ?? "";
  return role ? `${who} (${label(role)})` : who;
}
