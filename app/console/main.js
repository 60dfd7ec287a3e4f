// The console's shell: sign in and out, the navigation, and one view per address (#/...).

import { api, ApiError, session } from "./api.js";
import { datasetsView, datasetView } from "./datasets.js";
import { el, fill } from "./dom.js";
import { issuesView, suggestionsView } from "./labeling.js";
import { modelsView } from "./models.js";
import { predictView } from "./predict.js";
import { jobsView, jobView, trainView } from "./training.js";

const ROUTES = [
  { pattern: /^#\/datasets\/([0-9a-f-]+)$/, view: datasetView, nav: "datasets" },
  { pattern: /^#\/datasets\/([0-9a-f-]+)\/suggest$/, view: suggestionsView, nav: "datasets" },
  { pattern: /^#\/datasets\/([0-9a-f-]+)\/issues$/, view: issuesView, nav: "datasets" },
  { pattern: /^#\/datasets$/, view: datasetsView, nav: "datasets" },
  { pattern: /^#\/train$/, view: trainView, nav: "train" },
  { pattern: /^#\/jobs\/([0-9a-f-]+)$/, view: jobView, nav: "jobs" },
  { pattern: /^#\/jobs$/, view: jobsView, nav: "jobs" },
  { pattern: /^#\/models$/, view: modelsView, nav: "models" },
  { pattern: /^#\/predict$/, view: predictView, nav: "predict" },
];

const NAV = [
  ["datasets", "Datasets"],
  ["train", "Train"],
  ["jobs", "Jobs"],
  ["models", "Models"],
  ["predict", "Try it"],
];

const main = document.getElementById("view");
const nav = document.getElementById("nav");
let current = null; // the view being shown: polling stops once it is replaced

/** Render the view the address names (query parameters after "?" go to the view). */
async function route() {
  if (current) current.alive = false;
  const token = { alive: true };
  current = token;
  if (!session.key()) {
    renderNav(null);
    signInView(main);
    return;
  }
  const [path, query] = (location.hash || "#/datasets").split("?");
  const match = ROUTES.map((r) => ({ r, m: path.match(r.pattern) })).find((x) => x.m);
  if (!match) {
    location.hash = "#/datasets";
    return;
  }
  renderNav(match.r.nav);
  fill(main, el("p", { class: "muted" }, "Loading…"));
  try {
    await match.r.view(main, { id: match.m[1], query: new URLSearchParams(query || ""), view: token });
  } catch (error) {
    if (token.alive) showError(error);
  }
}

function renderNav(active) {
  const links = session.key()
    ? NAV.map(([name, label]) => el("a", { href: `#/${name}`, class: name === active ? "active" : "", "data-nav": name }, label))
    : [];
  const signOut = session.key()
    ? el("button", { type: "button", class: "secondary", id: "sign-out", onclick: () => { session.signOut(); route(); } }, "Sign out")
    : null;
  fill(nav, links, signOut);
}

/** Show an error of a view: a refused key signs out; anything else is written in the view. */
export function showError(error) {
  if (error instanceof ApiError && error.status === 401) {
    session.signOut();
    renderNav(null);
    signInView(main, error.message);
    return;
  }
  fill(main, el("div", { class: "error", role: "alert" }, error.message || String(error)));
}

function signInView(container, problem) {
  const input = el("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off", required: true, placeholder: "sv_…" });
  const message = el("p", { class: "error", role: "alert", hidden: !problem }, problem || "");
  const form = el(
    "form",
    { class: "card narrow", id: "sign-in" },
    el("h1", {}, "Sign in"),
    el("p", {}, "Paste an API key. ", el("code", {}, "make run"), " prints one on its first start; more with ", el("code", {}, "python -m app.cli keys create"), "."),
    el("p", { class: "muted" }, "The key stays in this browser tab (session storage) and is sent only to this server."),
    el("label", { for: "api-key" }, "API key"),
    input,
    message,
    el("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    session.signIn(input.value.trim());
    try {
      await api("/models"); // any key that may read the registry (train or predict) passes
      if (!location.hash || location.hash === "#/") location.hash = "#/datasets";
      else route();
    } catch (error) {
      session.signOut();
      fill(message, error.status === 401 ? "That key was not accepted (401): check it, or create a new one." : error.message);
      message.hidden = false;
    }
  });
  fill(container, form);
  input.focus();
}

window.addEventListener("hashchange", route);
route();
