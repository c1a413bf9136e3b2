// Router and login. Pages are addressed by the URL fragment (ids only, never the key).
import { api, session } from "./api.js";
import { auditPage } from "./audit.js";
import { jobPage } from "./job.js";
import { modelPage, modelsPage } from "./models.js";
import { detailPage, listPage } from "./requests.js";
import { h, render } from "./ui.js";

const $ = (id) => document.getElementById(id);

const ROUTES = [
  [/^#\/requests\/([\w-]+)$/, (m) => detailPage(m[1]), "requests"],
  [/^#\/jobs\/([\w-]+)$/, (m) => jobPage(m[1]), "requests"],
  [/^#\/models\/([\w.-]+)$/, (m) => modelPage(m[1]), "models"],
  [/^#\/models$/, () => modelsPage(), "models"],
  [/^#\/audit$/, () => auditPage(), "audit"],
  [/^#\/requests$/, () => listPage(), "requests"],
];

function showLogin(message) {
  $("login").hidden = false;
  $("view").hidden = $("nav").hidden = $("who").hidden = true;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
  $("key").focus();
}

async function route() {
  if (!session.key()) return showLogin();
  const hash = location.hash || "#/requests";
  const hit = ROUTES.map(([re, build, section]) => [hash.match(re), build, section]).find(([m]) => m);
  $("login").hidden = true;
  $("view").hidden = $("nav").hidden = $("who").hidden = false;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", Boolean(hit) && a.dataset.section === hit[2]);
  if (!hit) return render($("view"), () => h("p", { class: "problem" }, "No such page."));
  return render($("view"), () => hit[1](hit[0]));
}

async function login(key) {
  session.set(key);
  try {
    const me = await api.get("/v1/keys/me");
    $("who-name").textContent = me.name;
    $("who-scopes").textContent = me.scopes.join(" ");
    return true;
  } catch (err) {
    session.clear();
    showLogin(err.text || String(err));
    return false;
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = $("key").value.trim();
    $("key").value = "";
    if (key && (await login(key))) route();
  });
  $("logout").addEventListener("click", () => { session.clear(); showLogin(); });
  window.addEventListener("hashchange", route);
  window.addEventListener("lethe:unauthorized", () => { session.clear(); showLogin("The key was refused (401)."); });
  document.addEventListener("lethe:rerender", route);
  if (session.key() && !(await login(session.key()))) return;
  route();
});
