// Datasets: the list, uploading a zip with a progress bar, the ingest report, the preview, delete.

import { api, blobUrl, uploadWithProgress } from "./api.js";
import { bar, bytes, dropZone, el, fill, table, when } from "./dom.js";

const SPLITS = ["train", "validation", "test"];

function imageCount(dataset) {
  return dataset.stats.image_count ?? 0;
}

export async function datasetsView(container) {
  const datasets = await api("/datasets");
  const rows = datasets.map((d) => [
    el("a", { href: `#/datasets/${d.id}`, class: "dataset-link" }, d.name),
    d.task === "multilabel" ? "multi-label" : "one class per image",
    d.class_names.length,
    imageCount(d),
    (d.stats.warnings || []).length,
    when(d.created_at),
  ]);
  fill(
    container,
    el("h1", {}, "Datasets"),
    uploadForm(),
    el("h2", {}, "Your datasets"),
    datasets.length
      ? table(["name", "labels", "classes", "images", "warnings", "uploaded"], rows, { id: "datasets-table" })
      : el("p", { class: "muted" }, "No dataset yet: upload a zip above."),
  );
}

function uploadForm() {
  let archive = null;
  const name = el("input", { type: "text", id: "dataset-name", required: true, maxlength: "200", placeholder: "pets" });
  const chosen = el("span", { class: "muted", id: "chosen-zip" }, "no file chosen");
  const progress = el("div", { class: "upload-progress", hidden: true });
  const message = el("p", { class: "error", role: "alert", hidden: true });
  const submit = el("button", { type: "submit", id: "upload-button" }, "Upload");
  const task = el(
    "select",
    { id: "dataset-task" },
    el("option", { value: "" }, "as the labels say (multi-label where an image has several)"),
    el("option", { value: "multiclass" }, "one class per image"),
    el("option", { value: "multilabel" }, "multi-label: any number of labels per image"),
  );
  const { zone } = dropZone({
    accept: ".zip,application/zip",
    multiple: false,
    prompt: "Drop a zip of class folders here (cats/…, dogs/…, or train/ validation/ test/ each holding them), or of images with a labels.csv naming each image's labels (several per image make a multi-label dataset), or click to choose one.",
    onFiles: ([file]) => {
      archive = file;
      fill(chosen, `${file.name} (${bytes(file.size)})`);
      if (!name.value) name.value = file.name.replace(/\.zip$/i, "");
    },
  });
  const form = el(
    "form",
    { class: "card", id: "upload-form" },
    el("h2", {}, "Upload a labeled zip"),
    zone,
    chosen,
    el("label", { for: "dataset-name" }, "Name"),
    name,
    el("label", { for: "dataset-task" }, "Labels per image"),
    task,
    submit,
    progress,
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.hidden = true;
    if (!archive) {
      fill(message, "Choose a zip first.");
      message.hidden = false;
      return;
    }
    const body = new FormData();
    body.append("name", name.value);
    if (task.value) body.append("task", task.value);
    body.append("file", archive, archive.name);
    submit.disabled = true;
    progress.hidden = false;
    fill(progress, bar(0, "uploading…"));
    try {
      const dataset = await uploadWithProgress("/datasets", body, (sent, total) => {
        const label = sent < total ? `${bytes(sent)} of ${bytes(total)}` : "uploaded; checking every image…";
        fill(progress, bar(sent / total, label));
      });
      location.hash = `#/datasets/${dataset.id}`;
    } catch (error) {
      progress.hidden = true;
      fill(message, error.message);
      message.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

export async function datasetView(container, { id }) {
  const dataset = await api(`/datasets/${id}`);
  const stats = dataset.stats;
  const preview = el("img", { alt: `a few training images of each class of ${dataset.name}`, id: "preview", class: "preview" });
  fill(
    container,
    el("p", {}, el("a", { href: "#/datasets" }, "← datasets")),
    el("h1", { id: "dataset-title" }, dataset.name),
    el(
      "div",
      { class: "actions" },
      el("a", { class: "button", href: `#/train?dataset=${dataset.id}`, id: "train-this" }, "Train a model on it"),
      stats.unlabeled_count
        ? el("a", { class: "button secondary", href: `#/datasets/${dataset.id}/suggest`, id: "label-next" }, `Label next (${stats.unlabeled_count} unlabeled)`)
        : null,
      dataset.task === "multilabel" ? null : el("a", { class: "button secondary", href: `#/datasets/${dataset.id}/issues`, id: "check-labels" }, "Check the labels"),
      deleteButton(dataset),
    ),
    el("p", { class: "muted", id: "dataset-summary" }, summary(dataset)),
    warnings(stats.warnings || []),
    el("h2", {}, dataset.task === "multilabel" ? "Labels and splits" : "Classes and splits"),
    countsTable(dataset),
    el("h2", {}, "Preview"),
    preview,
    report(stats),
  );
  blobUrl(`/datasets/${id}/preview.png`).then(
    (url) => { preview.src = url; },
    (error) => preview.replaceWith(el("p", { class: "error" }, `The preview did not load: ${error.message}`)),
  );
}

function summary(dataset) {
  const stats = dataset.stats;
  const negatives = Object.values(stats.negatives || {}).reduce((a, b) => a + b, 0);
  const labels = dataset.task === "multilabel"
    ? `${dataset.class_names.length} labels (multi-label: ${stats.label_cardinality ?? 0} per image on average)`
    : `${dataset.class_names.length} classes`;
  const none = negatives ? ` · ${negatives} negative examples (none of them)` : "";
  const waiting = stats.unlabeled_count ? ` · ${stats.unlabeled_count} unlabeled` : "";
  return `${imageCount(dataset)} images, ${labels}${none}${waiting} · version ${dataset.version} · uploaded ${when(dataset.created_at)} · id ${dataset.id}`;
}

function warnings(list) {
  if (!list.length) return el("p", { class: "ok" }, "No warnings.");
  return el("ul", { class: "warnings", id: "dataset-warnings" }, list.map((w) => el("li", {}, w)));
}

function countsTable(dataset) {
  const counts = dataset.split_counts;
  const rows = dataset.class_names.map((name) => [name, ...SPLITS.map((split) => counts[split]?.[name] ?? 0)]);
  if (dataset.task === "multilabel") {
    // an image with several labels counts under each: a column's sum is not its images
    return table(["label (images with it)", ...SPLITS], rows, { id: "split-counts" });
  }
  rows.push([el("strong", {}, "total"), ...SPLITS.map((split) => Object.values(counts[split] || {}).reduce((a, b) => a + b, 0))]);
  return table(["class", ...SPLITS], rows, { id: "split-counts" });
}

function report(stats) {
  const sections = [];
  const listed = (title, total, items, headers, cells, id) => {
    sections.push(el("h2", {}, `${title} (${total})`));
    if (items.length) sections.push(table(headers, items.map(cells), { id }));
    if (total > items.length) sections.push(el("p", { class: "muted" }, `the first ${items.length} of ${total} are listed`));
  };
  listed("Skipped files", stats.skipped_count ?? 0, stats.skipped || [], ["file", "reason"], (s) => [s.file, s.reason], "skipped");
  listed("Duplicates removed", stats.duplicates_removed ?? 0, stats.duplicates || [], ["file", "same as"], (d) => [d.file, d.duplicate_of], "duplicates");
  const leakage = stats.leakage || [];
  listed("Leakage between splits", leakage.length, leakage, ["file", "same as", "kept in", "removed from"], (l) => [l.file, l.duplicate_of, l.kept_in, l.removed_from], "leakage");
  const conflicts = stats.label_conflicts || [];
  if (conflicts.length) {
    listed("Under two classes (dropped)", conflicts.length, conflicts, ["files", "classes"], (c) => [c.files.join(", "), c.labels.join(", ")], "conflicts");
  }
  const sizes = stats.image_sizes;
  if (sizes) {
    sections.push(el("h2", {}, "Image sizes"));
    sections.push(
      table(["", "min", "median", "max"], [
        ["width", sizes.width.min, sizes.width.median, sizes.width.max],
        ["height", sizes.height.min, sizes.height.median, sizes.height.max],
      ]),
    );
  }
  return el("section", { class: "report" }, sections);
}

function deleteButton(dataset) {
  const holder = el("span", { class: "delete" });
  const ask = () => fill(
    holder,
    el("span", {}, "Delete this dataset and its images? "),
    el("button", { type: "button", class: "danger", id: "confirm-delete", onclick: remove }, "Yes, delete"),
    el("button", { type: "button", class: "secondary", onclick: reset }, "Keep it"),
  );
  const reset = () => fill(holder, el("button", { type: "button", class: "danger", id: "delete-dataset", onclick: ask }, "Delete"));
  const remove = async () => {
    try {
      await api(`/datasets/${dataset.id}`, { method: "DELETE" });
      location.hash = "#/datasets";
    } catch (error) {
      fill(holder, el("span", { class: "error", role: "alert" }, error.message));
    }
  };
  reset();
  return holder;
}
