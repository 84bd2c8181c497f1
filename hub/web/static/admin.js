// Admin: the registry in and out (YAML or households CSV), and the accounts.

import { api, post } from "./api.js";
import { h } from "./dom.js";

const SOURCES = {
  yaml: { path: "/api/registry", type: "application/yaml" },
  csv: { path: "/api/registry/households.csv", type: "text/csv" },
};
const registryForm = document.getElementById("registry-form");
const registryText = document.getElementById("registry-text");
const registryMessage = document.getElementById("registry-message");
const problems = document.getElementById("registry-problems");
const userForm = document.getElementById("user-form");
const userMessage = document.getElementById("user-message");

const source = () => SOURCES[registryForm.elements.format.value];

function showProblems(list) {
  problems.replaceChildren(...list.map((line) => h("li", {}, h("code", {}, line))));
}

document.getElementById("registry-load").addEventListener("click", async () => {
  try {
    registryText.value = await api(source().path);
    registryMessage.textContent = "";
  } catch (error) {
    registryMessage.textContent = error.message;
  }
});

document.getElementById("registry-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  registryText.value = await file.text();
  if (file.name.endsWith(".csv")) registryForm.elements.format.value = "csv";
  else registryForm.elements.format.value = "yaml";
});

registryForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const { path, type } = source();
  showProblems([]);
  registryMessage.textContent = "Checking…";
  try {
    const answer = await api(path, { method: "PUT", body: registryText.value, type });
    const warnings = answer.problems ?? [];
    registryMessage.textContent = `Saved: the hub uses it now.${warnings.length ? ` ${warnings.length} warning(s):` : ""}`;
    showProblems(warnings);
  } catch (error) {
    const found = error.body?.problems;
    registryMessage.textContent = found ? `Not saved: ${found.length} problem(s).` : `Not saved: ${error.message}`;
    showProblems(found ?? []);
  }
});

function userRow(user) {
  const disabled = Boolean(user.disabled) || user.active === false;
  return h("tr", { "data-username": user.username, class: disabled ? "disabled" : null },
    h("td", {}, user.username),
    h("td", {}, user.role),
    h("td", {}, (user.zones ?? []).join(", ") || (user.role === "admin" ? "all" : "—")),
    h("td", {}, user.phone ?? ""),
    h("td", {}, disabled ? "disabled" : "active"),
    h("td", {}, disabled ? null :
      h("button", { type: "button", class: "secondary", onclick: () => disable(user.username) }, "Disable")),
  );
}

async function loadUsers() {
  document.getElementById("users").replaceChildren(...(await api("/api/users")).map(userRow));
}

async function loadZones() {
  const zones = [...new Set((await api("/api/units")).map((u) => u.zone))].sort();
  document.getElementById("zones").replaceChildren(...zones.map((z) => h("option", { value: z })));
}

async function disable(username) {
  if (!confirm(`Disable ${username}? They are logged out and cannot log in again.`)) return;
  try {
    await post(`/api/users/${encodeURIComponent(username)}/disable`, {});
    userMessage.textContent = `${username} is disabled.`;
  } catch (error) {
    userMessage.textContent = error.message;
  }
  loadUsers();
}

/** FastAPI's 422 lists problems as objects; show them as lines. */
function explain(error) {
  const detail = error.body?.detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc ?? []).slice(1).join(".")}: ${d.msg}`).join("; ");
  return error.message;
}

userForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const f = userForm.elements;
  const zones = f.zones.value.split(",").map((z) => z.trim()).filter(Boolean);
  const user = { username: f.username.value.trim(), password: f.password.value, role: f.role.value, zones };
  if (f.phone.value.trim()) user.phone = f.phone.value.trim();
  try {
    await post("/api/users", user);
    userMessage.textContent = `${user.username} can log in now.`;
    userForm.reset();
  } catch (error) {
    userMessage.textContent = `Not added: ${explain(error)}`;
  }
  loadUsers();
});

loadUsers().catch((error) => (userMessage.textContent = error.message));
loadZones().catch((error) => console.error(error));
