// Try it: drop or pick images and see the top labels of a model version.

import { api } from "./api.js";
import { bar, dropZone, el, fill } from "./dom.js";
import { classifyHere } from "./local.js";

export async function predictView(container, { query }) {
  const models = await api("/models");
  // With several active models the service cannot pick one for a request without a model:
  // the first active one is chosen here instead, so the first photo does not fail.
  const active = models.filter((m) => m.active_version != null);
  const preselected = query.get("model") ?? (active.length > 1 ? active[0].name : null);
  const modelSelect = el(
    "select",
    { id: "predict-model" },
    active.length > 1 ? null : el("option", { value: "" }, "the only active model"),
    models.map((m) => el("option", { value: m.name, selected: m.name === preselected }, m.name)),
  );
  const versionSelect = el("select", { id: "predict-version" });
  const topK = el("input", { type: "number", id: "predict-top-k", min: "1", max: "20", value: "3" });
  const here = el("input", { type: "checkbox", id: "predict-here" });
  const results = el("div", { class: "predictions", id: "predictions" });
  const message = el("p", { class: "error", role: "alert", id: "predict-error", hidden: true });

  const fillVersions = async (wanted) => {
    fill(versionSelect, el("option", { value: "" }, "active version"));
    if (!modelSelect.value) return;
    const versions = await api(`/models/${encodeURIComponent(modelSelect.value)}/versions`);
    for (const v of versions) {
      versionSelect.append(el("option", { value: String(v.version), selected: String(v.version) === wanted }, `v${v.version}${v.is_active ? " (active)" : ""}`));
    }
  };
  modelSelect.addEventListener("change", () => fillVersions(null).catch(showProblem));
  await fillVersions(query.get("version"));

  function showProblem(error) {
    fill(message, error.message);
    message.hidden = false;
  }

  /** The model and version the form names (the only active model, its active version). */
  function chosen() {
    const name = modelSelect.value || active[0]?.name;
    const model = models.find((m) => m.name === name);
    const version = versionSelect.value ? Number(versionSelect.value) : model?.active_version;
    if (!name || version == null) throw new Error("Choose a model with an active version, or a version.");
    return { name, version };
  }

  async function classifyInBrowser(files) {
    message.hidden = true;
    fill(results, el("p", { class: "muted" }, `loading the model into this browser and classifying ${files.length} image(s)…`));
    try {
      const answer = await classifyHere(files, { ...chosen(), topK: Number(topK.value || "3") });
      fill(
        results,
        el("p", { class: "muted", id: "predict-summary" }, `${answer.model} v${answer.version} · in this browser (ONNX Runtime Web): ${(answer.seconds * 1000).toFixed(0)} ms, model loaded in ${(answer.loadSeconds * 1000).toFixed(0)} ms · no photo was sent · "unknown" is only answered by the service`),
        answer.predictions.map((prediction, i) => predictionCard(files[i], prediction)),
      );
    } catch (error) {
      fill(results);
      showProblem(error);
    }
  }

  async function classify(files) {
    if (here.checked) return classifyInBrowser(files);
    message.hidden = true;
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    if (modelSelect.value) form.append("model", modelSelect.value);
    if (versionSelect.value) form.append("version", versionSelect.value);
    form.append("top_k", topK.value || "3");
    fill(results, el("p", { class: "muted" }, `classifying ${files.length} image(s)…`));
    try {
      const answer = await api("/predict", { method: "POST", form });
      fill(
        results,
        el("p", { class: "muted", id: "predict-summary" }, `${answer.model} v${answer.version} · ${(answer.seconds * 1000).toFixed(0)} ms in the service${answer.task === "multilabel" ? " · multi-label: every label is listed with its threshold (Top does not apply)" : ""}`),
        answer.predictions.map((prediction, i) => predictionCard(files[i], prediction)),
      );
    } catch (error) {
      fill(results);
      showProblem(error);
    }
  }

  const { zone } = dropZone({
    accept: "image/*",
    multiple: true,
    prompt: "Drop one or more photos here, or click to choose them.",
    onFiles: classify,
  });
  fill(
    container,
    el("h1", {}, "Try it"),
    el(
      "div",
      { class: "card" },
      el("div", { class: "row" },
        el("label", {}, "Model ", modelSelect),
        el("label", {}, "Version ", versionSelect),
        el("label", {}, "Top ", topK, " labels"),
        el("label", { title: "The model's ONNX file is downloaded and run here; the photos stay on this machine" }, here, " Run in this browser")),
      zone,
    ),
    message,
    results,
  );
}

/** "Unknown" when the image is unlike every image the model was trained on: its labels are
 * still listed below, but none of them is the answer. */
function unknownNote(prediction) {
  if (!prediction.unknown) return "";
  return el(
    "div",
    { class: "unknown", title: `outlier score ${prediction.outlier_score?.toFixed(3)}` },
    "Unknown: unlike every training image. The labels below are the model's guesses.",
  );
}

/** A multi-label answer: the labels that pass their thresholds ("none of them" if none). */
function labelsNote(prediction) {
  if (!prediction.labels_above_threshold) return "";
  const passed = prediction.labels_above_threshold;
  return el("div", { class: "answer", id: "labels-above-threshold" }, passed.length ? `Labels: ${passed.join(", ")}` : "None of the labels");
}

function labelItem(l) {
  const passes = l.above_threshold == null ? "" : el("span", { class: l.above_threshold ? "passes" : "muted" }, l.above_threshold ? ` ✓ over ${l.threshold.toFixed(2)}` : ` (threshold ${l.threshold.toFixed(2)})`);
  return el("li", {}, el("span", { class: "label" }, l.label), passes, bar(l.probability));
}

function predictionCard(file, prediction) {
  const image = el("img", { alt: prediction.filename ?? "image", class: "thumb" });
  const url = URL.createObjectURL(file);
  image.src = url;
  image.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  return el(
    "figure",
    { class: "prediction card" },
    image,
    el(
      "figcaption",
      {},
      el("div", { class: "filename" }, prediction.filename ?? ""),
      unknownNote(prediction),
      labelsNote(prediction),
      el("ol", { class: "labels" }, prediction.labels.map(labelItem)),
    ),
  );
}
