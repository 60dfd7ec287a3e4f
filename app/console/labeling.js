// Labeling help: the suggested images to label next (a click or a key each), and the labeled
// images whose label looks wrong (keep, relabel or remove). Both save one new version.

import { api, blobUrl } from "./api.js";
import { el, fill, percent, table } from "./dom.js";

const SUGGESTED = 24;
const ISSUES_SHOWN = 100;

/** The answer of a labeling-help GET once the version's analysis is ready (a worker computes
 * it on the first request: 202 with the status until then), saying so in `status` meanwhile. */
async function whenReady(path, status, view) {
  for (;;) {
    const answer = await api(path);
    if (!answer.retry_after_seconds) return answer;
    fill(status, `${answer.detail} (${answer.status})…`);
    await new Promise((resolve) => setTimeout(resolve, answer.retry_after_seconds * 1000));
    if (!view.alive) return null;
  }
}

function thumbnail(url, alt) {
  const image = el("img", { alt, width: 160, height: 160 });
  blobUrl(`${url}?size=240`).then((blob) => { image.src = blob; }, () => image.classList.add("missing"));
  return image;
}

function header(dataset, title) {
  return [
    el("p", {}, el("a", { href: `#/datasets/${dataset.id}` }, `← ${dataset.name} v${dataset.version}`)),
    el("h1", {}, `${title} · ${dataset.name} v${dataset.version}`),
  ];
}

/** Save labels (and removals) as the dataset's next version, then go to `next(version)`. */
async function save(dataset, body, message, next) {
  fill(message, "Saving…");
  try {
    const version = await api(`/datasets/${dataset.id}/labels`, { method: "POST", json: body });
    location.hash = next(version);
  } catch (error) {
    fill(message, error.message); // nothing was saved: the version is made whole or not at all
    message.classList.add("error");
  }
}

export async function suggestionsView(container, { id, view }) {
  const dataset = await api(`/datasets/${id}`);
  const status = el("p", { class: "muted", id: "suggest-status" }, "Ranking the unlabeled images…");
  fill(container, header(dataset, "Label next"), status);
  if (dataset.task === "multilabel") {
    fill(status, "Suggestions are labeled here for multiclass datasets; label a multi-label dataset's images with `smallvision datasets suggest` and `label`, or POST /datasets/{id}/labels.");
    return;
  }
  if (!(dataset.stats.unlabeled_count > 0)) {
    fill(status, "This version has no unlabeled images. Add some in a zip folder named _unlabeled (a new version: POST /datasets/{id}/versions).");
    return;
  }
  const found = await whenReady(`/datasets/${id}/suggestions?count=${SUGGESTED}`, status, view);
  if (!found) return;
  const classes = dataset.class_names;
  const chosen = new Map(); // image id -> class
  const message = el("p", { id: "suggest-message", role: "status" });
  const saveButton = el("button", { type: "button", id: "save-labels", disabled: true }, "Save labels");
  const cards = found.items.map((item, index) => {
    const picked = el("span", { class: "picked" });
    const buttons = classes.map((name, k) =>
      el("button", { type: "button", class: "secondary label-choice", dataset: { label: name }, onclick: () => choose(index, name) }, k < 9 ? `${k + 1} ${name}` : name),
    );
    const likeliest = item.predicted.map((p) => `${p.label} ${percent(p.probability, 0)}`).join(" · ");
    const card = el(
      "figure",
      { class: "suggestion", tabindex: 0, dataset: { image: item.image_id } },
      thumbnail(item.image_url, `unlabeled image ${index + 1}`),
      el(
        "figcaption",
        {},
        // an unsure pick's reason is its likeliest classes; a typical one says why it was picked
        el("span", { class: "muted reason" }, item.reason.startsWith("unsure") ? likeliest : `${item.reason} (${likeliest})`),
        el("br"),
        picked,
      ),
      el("div", { class: "choices" }, buttons),
    );
    card.addEventListener("keydown", (event) => {
      const digit = Number(event.key);
      if (Number.isInteger(digit) && digit >= 1 && digit <= Math.min(9, classes.length)) {
        event.preventDefault();
        choose(index, classes[digit - 1]);
        (cards[index + 1]?.card || card).focus();
      } else if (event.key === "Backspace" || event.key === "0") {
        event.preventDefault();
        choose(index, null);
      }
    });
    return { card, picked, item };
  });
  function choose(index, name) {
    const { card, picked, item } = cards[index];
    if (name === null) chosen.delete(item.image_id);
    else chosen.set(item.image_id, name);
    fill(picked, name === null ? "" : `→ ${name}`);
    card.classList.toggle("labeled", name !== null);
    for (const button of card.querySelectorAll(".label-choice")) button.classList.toggle("active", button.dataset.label === name);
    saveButton.disabled = chosen.size === 0;
    fill(saveButton, chosen.size ? `Save ${chosen.size} label${chosen.size === 1 ? "" : "s"} as a new version` : "Save labels");
  }
  saveButton.addEventListener("click", () =>
    save(dataset, { labels: [...chosen].map(([image_id, label]) => ({ image_id, label })) }, message, (v) => `#/datasets/${v.id}/suggest`),
  );
  fill(
    status,
    `${found.items.length} of ${found.unlabeled} unlabeled images, ranked from ${found.labeled} labeled ones: ${found.why}. ` +
      "Click a class, or focus an image and press its number (0 clears).",
  );
  container.append(
    el("div", { class: "suggestions", id: "suggestions" }, cards.map((c) => c.card)),
    el("p", { class: "actions" }, saveButton),
    message,
  );
  cards[0]?.card.focus();
}

export async function issuesView(container, { id, view }) {
  const dataset = await api(`/datasets/${id}`);
  const status = el("p", { class: "muted", id: "issues-status" }, "Checking the labels…");
  fill(container, header(dataset, "Label issues"), status);
  if (dataset.task === "multilabel") {
    fill(status, "Label issues are found in multiclass datasets only.");
    return;
  }
  const found = await whenReady(`/datasets/${id}/label-issues?limit=${ISSUES_SHOWN}`, status, view);
  if (!found) return;
  fill(
    status,
    `${found.found} of ${found.checked} labeled images look mislabeled (${found.method}; the held-out answers agree with ${percent(found.out_of_fold_accuracy)} of the labels).`,
  );
  if (!found.items.length) return;
  const decisions = new Map(); // image id -> {label} or "remove"
  const message = el("p", { id: "issues-message", role: "status" });
  const apply = el("button", { type: "button", id: "apply-fixes", disabled: true }, "Apply");
  const rows = found.items.map((issue) => {
    const choice = el(
      "select",
      { class: "issue-choice", dataset: { image: issue.image_id }, "aria-label": `what to do with the image labeled ${issue.given_label}` },
      el("option", { value: "keep" }, `keep ${issue.given_label}`),
      dataset.class_names.filter((c) => c !== issue.given_label).map((c) => el("option", { value: `label:${c}`, selected: false }, `relabel ${c}${c === issue.suggested_label ? " (suggested)" : ""}`)),
      el("option", { value: "remove" }, "remove it"),
    );
    choice.addEventListener("change", () => {
      if (choice.value === "keep") decisions.delete(issue.image_id);
      else decisions.set(issue.image_id, choice.value);
      apply.disabled = decisions.size === 0;
      fill(apply, decisions.size ? `Apply ${decisions.size} change${decisions.size === 1 ? "" : "s"} as a new version` : "Apply");
    });
    return [thumbnail(issue.image_url, `labeled ${issue.given_label}`), issue.given_label, `${issue.suggested_label} (${percent(issue.suggested_probability, 0)})`, percent(issue.given_probability, 0), issue.split, choice];
  });
  apply.addEventListener("click", () => {
    const labels = [];
    const remove = [];
    for (const [image_id, decision] of decisions) {
      if (decision === "remove") remove.push(image_id);
      else labels.push({ image_id, label: decision.slice("label:".length) });
    }
    save(dataset, { labels, remove }, message, (v) => `#/datasets/${v.id}`);
  });
  container.append(
    table(["image", "given", "suggested", "p(given)", "split", "do"], rows, { id: "label-issues", class: "issues" }),
    el("p", { class: "actions" }, apply),
    message,
  );
}
