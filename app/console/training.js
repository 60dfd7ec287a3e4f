// Training: the job form, the jobs list, and a job's live view with its curves and results.

import { api, blobUrl, openapi } from "./api.js";
import { drawCurves } from "./chart.js";
import { bar, el, fill, number, percent, table, when } from "./dom.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MILLISECONDS = 1000;

/** The allowed values, default and description of a property of a schema in the OpenAPI document. */
function field(schema, model, property) {
  const spec = schema.components.schemas[model].properties[property];
  const target = spec.$ref ? spec : (spec.allOf || spec.anyOf || [spec]).find((s) => s.$ref || s.enum) || spec;
  const resolved = target.$ref ? schema.components.schemas[target.$ref.split("/").at(-1)] : target;
  return { values: resolved.enum || [], default: spec.default, description: spec.description || resolved.description || "" };
}

export async function trainView(container, { query }) {
  const [schema, datasets] = await Promise.all([openapi(), api("/datasets")]);
  if (!datasets.length) {
    fill(container, el("h1", {}, "Train"), el("p", {}, "Upload a dataset first: ", el("a", { href: "#/datasets" }, "Datasets"), "."));
    return;
  }
  const method = field(schema, "JobCreate", "method");
  const base = field(schema, "JobCreate", "base_model");
  const select = (id, spec) => el("select", { id }, spec.values.map((v) => el("option", { value: v, selected: v === spec.default }, v)));
  const datasetSelect = el(
    "select",
    { id: "train-dataset" },
    datasets.map((d) => el("option", { value: d.id, selected: d.id === query.get("dataset") }, `${d.name} (${d.stats.image_count} images, ${d.class_names.length} classes)`)),
  );
  const inputs = {
    method: select("train-method", method),
    base_model: select("train-base", base),
    image_size: el("input", { type: "number", id: "train-image-size", min: "32", max: "512", placeholder: "the method's default" }),
    epochs: el("input", { type: "number", id: "train-epochs", min: "0", max: "500", placeholder: "the method's default" }),
    model_name: el("input", { type: "text", id: "train-model-name", maxlength: "100", placeholder: "the dataset's name" }),
  };
  const augmentation = el("input", { type: "checkbox", id: "train-augmentation", checked: true });
  const message = el("p", { class: "error", role: "alert", hidden: true });
  const help = (spec) => el("small", { class: "muted" }, spec.description);
  const form = el(
    "form",
    { class: "card", id: "train-form" },
    el("label", { for: "train-dataset" }, "Dataset"), datasetSelect,
    el("label", { for: "train-method" }, "Method"), inputs.method, help(method),
    el("label", { for: "train-base" }, "Base model (pretrained methods)"), inputs.base_model,
    el("label", { for: "train-image-size" }, "Image size (px)"), inputs.image_size,
    help(field(schema, "JobCreate", "image_size")),
    el("label", { for: "train-epochs" }, "Epochs"), inputs.epochs, help(field(schema, "JobCreate", "epochs")),
    el("label", { class: "inline" }, augmentation, " Augmentation (random flips, shifts, zoom… while training)"),
    el("label", { for: "train-model-name" }, "Model name"), inputs.model_name,
    el("button", { type: "submit", id: "start-training" }, "Start training"),
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const request = { dataset_id: datasetSelect.value, method: inputs.method.value, base_model: inputs.base_model.value };
    for (const name of ["image_size", "epochs"]) {
      if (inputs[name].value !== "") request[name] = Number(inputs[name].value);
    }
    if (inputs.model_name.value.trim()) request.model_name = inputs.model_name.value.trim();
    if (!augmentation.checked) request.augmentation = null; // null turns it off; omitted keeps the defaults
    try {
      const job = await api("/jobs", { method: "POST", json: request });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      fill(message, error.message);
      message.hidden = false;
    }
  });
  fill(container, el("h1", {}, "Train a model"), form);
}

export async function jobsView(container) {
  const [jobs, datasets] = await Promise.all([api("/jobs"), api("/datasets")]);
  const names = new Map(datasets.map((d) => [d.id, d.name]));
  const training = jobs.filter((j) => j.dataset_id); // worker checks have no dataset
  const rows = training.map((j) => [
    el("a", { href: `#/jobs/${j.id}` }, j.id.slice(0, 8)),
    names.get(j.dataset_id) ?? "(deleted)",
    j.method,
    j.parameters.model_name ?? "",
    el("span", { class: `status ${j.status}` }, j.status),
    bar(j.progress),
    when(j.created_at),
  ]);
  fill(
    container,
    el("h1", {}, "Jobs"),
    el("p", {}, el("a", { class: "button", href: "#/train" }, "Train a model")),
    rows.length ? table(["job", "dataset", "method", "model", "status", "progress", "started"], rows, { id: "jobs-table" }) : el("p", { class: "muted" }, "No training job yet."),
  );
}

function describeProgress(job) {
  const d = job.progress_detail || {};
  const parts = [];
  if (d.stage) parts.push(d.stage);
  if (d.epoch) parts.push(`epoch ${d.epoch}${d.epochs ? ` of at most ${d.epochs}` : ""}`);
  if (d.batch) parts.push(`batch ${d.batch}${d.batches ? ` of ${d.batches}` : ""}`);
  if (d.images !== undefined) parts.push(`${d.split ?? ""} image ${d.images} of ${d.of}`);
  if (d.file) parts.push(d.file);
  return parts.join(" · ") || (job.status === "queued" ? "waiting for a worker" : "");
}

export async function jobView(container, { id, view }) {
  const status = el("span", { class: "status", id: "job-status" });
  const progress = el("div", { id: "job-progress" });
  const cancel = el("button", { type: "button", class: "danger", id: "cancel-job" }, "Cancel");
  const error = el("div", { class: "error", role: "alert", id: "job-error", hidden: true });
  const lossChart = el("canvas", { class: "chart", id: "loss-chart" }, "loss per epoch");
  const accuracyChart = el("canvas", { class: "chart", id: "accuracy-chart" }, "accuracy per epoch");
  const results = el("section", { id: "job-results" });
  const heading = el("h1", {}, `Job ${id.slice(0, 8)}`);
  const summary = el("p", { class: "muted" });
  fill(
    container,
    el("p", {}, el("a", { href: "#/jobs" }, "← jobs")),
    heading,
    summary,
    el("div", { class: "actions" }, status, cancel),
    progress,
    error,
    el("h2", {}, "Curves"),
    el("div", { class: "charts" }, lossChart, accuracyChart),
    results,
  );
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await api(`/jobs/${id}/cancel`, { method: "POST" });
    } catch (problem) {
      fill(error, problem.message);
      error.hidden = false;
    }
  });

  let datasetName = null;
  for (;;) {
    const [job, metrics] = await Promise.all([api(`/jobs/${id}`), api(`/jobs/${id}/metrics`)]);
    if (!view.alive) return;
    const finished = FINISHED.has(job.status);
    datasetName ??= await api(`/datasets/${job.dataset_id}`).then((d) => d.name, () => "(deleted)");
    fill(summary, `${job.method} on `, el("a", { href: `#/datasets/${job.dataset_id}`, id: "job-dataset" }, datasetName), ` · model ${job.parameters.model_name ?? "–"} · started ${when(job.started_at)}`);
    fill(status, job.status);
    status.className = `status ${job.status}`;
    cancel.hidden = finished;
    if (job.cancel_requested && !finished) fill(status, `${job.status} (cancelling…)`);
    const doing = finished ? `${job.status} ${when(job.finished_at)}` : describeProgress(job);
    fill(progress, bar(job.progress, `${percent(job.progress, 0)} · ${doing}`));
    if (job.error) {
      fill(error, job.error); // e.g. which weights file is missing and where to put it
      error.hidden = false;
    }
    drawCurves(lossChart, metrics.epochs, "loss");
    drawCurves(accuracyChart, metrics.epochs, "accuracy");
    if (finished) {
      fill(results, jobResults(job, metrics));
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MILLISECONDS));
    if (!view.alive) return;
  }
}

function jobResults(job, metrics) {
  const parts = [];
  const result = job.result || {};
  if (result.model) {
    const model = result.model;
    parts.push(
      el("p", { id: "job-model" }, "Saved as ", el("a", { href: "#/models" }, `${model.name} v${model.version}`), model.active ? " (active)" : " (not active)", " · ",
        el("a", { href: `#/predict?model=${encodeURIComponent(model.name)}&version=${model.version}` }, "try it")),
    );
  }
  if (metrics.chosen) parts.push(el("p", {}, `Kept: ${metrics.chosen.method}. ${metrics.chosen.reason || ""}`));
  if (metrics.warnings.length) parts.push(el("ul", { class: "warnings" }, metrics.warnings.map((w) => el("li", {}, w))));
  if (metrics.evaluation && result.model) {
    const answers = answersView(job.id, metrics.evaluation);
    parts.push(evaluationView(metrics.evaluation, { onCell: answers.show }), answers.node);
  } else if (metrics.evaluation) {
    parts.push(evaluationView(metrics.evaluation));
  }
  if (metrics.candidates.length) {
    // multi-label candidates are compared by mAP, the others by accuracy
    const multilabel = metrics.evaluation?.task === "multilabel";
    const score = multilabel ? (s) => number(s?.mean_average_precision) : (s) => percent(s?.accuracy);
    const name = multilabel ? "mAP" : "accuracy";
    parts.push(el("h2", {}, "Candidates"));
    parts.push(
      table(
        ["method", `validation ${name}`, "validation loss", `test ${name}`, "seconds", "note"],
        metrics.candidates.map((c) => [c.method, score(c.validation), number(c.validation?.loss), score(c.test), c.seconds, c.skipped || refitNote(c.settings?.refit)]),
        { id: "candidates" },
      ),
    );
  }
  return parts;
}

// The scores in a candidate's row are of the model as validated; a fine-tuned model kept is
// then trained again with the validation images, and saved as that.
function refitNote(refit) {
  if (!refit) return "";
  const test = refit.test?.mean_average_precision != null ? `test mAP ${number(refit.test.mean_average_precision)}` : `test accuracy ${percent(refit.test?.accuracy)}`;
  return `then trained again with the validation images (${refit.images} images, ${refit.epochs} epoch${refit.epochs === 1 ? "" : "s"}): ${test}`;
}

/** What calibrating the probabilities did, in words (nothing when it was not done). */
function calibrationNote(calibration) {
  if (!calibration) {
    return el("p", { class: "muted", id: "calibration" }, "Probabilities are not calibrated (fewer than 20 validation images).");
  }
  const how = calibration.method === "platt" ? "Platt scaling per label" : `temperature ${calibration.temperature.toFixed(2)}`;
  return el(
    "p",
    { id: "calibration" },
    `Probabilities calibrated on ${calibration.fitted_on_images} validation images (${how}): ` +
      `calibration error on the ${calibration.split} split ${number(calibration.ece_before)} before, ${number(calibration.ece_after)} after.`,
  );
}

/** The version's "unknown" answer: its threshold and what it turned away of held-out images. */
function outliersNote(outliers) {
  if (!outliers) {
    return el("p", { class: "muted", id: "outliers" }, "No \"unknown\" answer: too few validation images (fewer than 20) to choose its threshold on, or a model that averages two views.");
  }
  const turnedAway = outliers.rejected == null ? "" : `; it turns away ${percent(outliers.rejected)} of the ${outliers.split} split's images`;
  const negatives = outliers.negatives ? `, with ${outliers.negatives} negative examples` : "";
  return el(
    "p",
    { id: "outliers" },
    `Images unlike every training image are answered "unknown" (outlier score over ${number(outliers.threshold)}, chosen on ${outliers.calibration_images} ${outliers.calibrated_on} images${negatives}${turnedAway}).`,
  );
}

/** A multi-label model's scores: mAP and the set scores, then each label's precision, recall,
 * F1 (at its threshold), average precision and threshold. No confusion matrix: an image may
 * have any number of labels. */
function labelsEvaluationView(evaluation) {
  const perLabel = evaluation.classes.map((name) => {
    const s = evaluation.per_class[name];
    return [name, number(s.precision), number(s.recall), number(s.f1), number(s.average_precision), number(s.threshold), s.support];
  });
  return el(
    "section",
    { id: "evaluation" },
    el("h2", {}, `Evaluation on the ${evaluation.split ?? "held-out"} split`),
    el("p", { class: "big" }, `mAP ${number(evaluation.mean_average_precision)} on ${evaluation.samples} images`),
    el(
      "p",
      { id: "set-scores" },
      `micro F1 ${number(evaluation.micro_f1)} · macro F1 ${number(evaluation.macro_f1)} · exact match ${number(evaluation.exact_match)} (the share of images with every label right) · mean Jaccard ${number(evaluation.mean_jaccard)}`,
    ),
    calibrationNote(evaluation.calibration),
    el("p", { class: "muted" }, "An image is answered with every label whose probability reaches that label's threshold (chosen on validation for the best F1); none of them when no label does."),
    el("h3", {}, "Per label"),
    table(["label", "precision", "recall", "F1", "average precision", "threshold", "images"], perLabel, { id: "per-label" }),
  );
}

const ANSWERS_PER_PAGE = 48;

/** The evaluated images as a grid of thumbnails with their labels: the mistakes first, or the
 * images of one cell of the confusion matrix (`show(trueLabel, predictedLabel)`). */
function answersView(jobId, evaluation) {
  const title = el("h3", {}, "Images answered wrong");
  const summary = el("p", { class: "muted", id: "answers-summary" });
  const grid = el("div", { class: "answers", id: "answers" });
  const more = el("button", { type: "button", class: "secondary", hidden: true }, "Show more");
  const showMistakes = el("button", { type: "button", class: "secondary", hidden: true, onclick: () => show() }, "Back to the mistakes");
  let filter = {};
  let offset = 0;
  let urls = [];
  let asked = 0; // the latest request: an answer to an earlier one (another cell) is dropped
  async function load() {
    const mine = ++asked;
    const query = new URLSearchParams({ limit: ANSWERS_PER_PAGE, offset, ...filter });
    const page = await api(`/jobs/${jobId}/predictions?${query}`);
    if (mine !== asked) return;
    const wrong = page.evaluated - page.correct;
    fill(summary, filter.mistakes
      ? `${wrong} of the ${page.evaluated} ${page.split} images answered wrong${wrong ? " (true label, then the answer):" : "."}`
      : `${page.matching} ${page.split} images of ${filter.true_label}, answered ${filter.predicted_label}:`);
    for (const item of page.items) {
      const image = el("img", { alt: `${item.true_labels.join(", ")} answered ${item.predicted_labels.join(", ")}`, width: 120, height: 120 });
      const top = Math.max(...Object.values(item.probabilities));
      grid.append(
        el("figure", { class: item.correct ? "right" : "wrong" }, image,
          el("figcaption", {}, el("span", {}, item.true_labels.join(", ") || "(no label)"), " → ",
            el("strong", {}, item.predicted_labels.join(", ") || "(none)"), ` ${percent(top, 0)}`)),
      );
      blobUrl(`${item.image_url}?size=240`).then((url) => {
        if (mine !== asked) return URL.revokeObjectURL(url);
        urls.push(url);
        image.src = url;
      }, () => image.classList.add("missing"));
    }
    offset += page.items.length;
    more.hidden = offset >= page.matching;
  }
  async function show(trueLabel, predictedLabel) {
    for (const url of urls) URL.revokeObjectURL(url);
    urls = [];
    filter = trueLabel === undefined ? { mistakes: "true" } : { true_label: trueLabel, predicted_label: predictedLabel };
    offset = 0;
    grid.replaceChildren();
    fill(title, trueLabel === undefined ? "Images answered wrong" : `True ${trueLabel}, answered ${predictedLabel}`);
    showMistakes.hidden = trueLabel === undefined;
    try {
      await load();
    } catch (error) {
      fill(summary, error.message); // e.g. a model trained before answers were kept
    }
  }
  more.addEventListener("click", () => load());
  show();
  return { node: el("section", { id: "answers-section" }, title, summary, grid, el("p", {}, more, " ", showMistakes)), show };
}

/** Accuracy, the confusion matrix (rows: true class, columns: predicted) and per-class scores;
 * with `onCell`, each cell is a button showing its images. */
export function evaluationView(evaluation, { onCell } = {}) {
  if (evaluation.task === "multilabel") return labelsEvaluationView(evaluation);
  const classes = evaluation.classes;
  const matrix = evaluation.confusion_matrix;
  const largest = Math.max(1, ...matrix.flat());
  const header = el("tr", {}, el("th", { class: "corner" }, "true ↓ / predicted →"), classes.map((c) => el("th", { scope: "col" }, c)));
  const body = matrix.map((row, i) =>
    el("tr", {}, el("th", { scope: "row" }, classes[i]), row.map((count, j) => {
      const content = onCell && count
        ? el("button", { type: "button", class: "cell", title: `show the ${count} images of ${classes[i]} answered ${classes[j]}`, onclick: () => onCell(classes[i], classes[j]) }, String(count))
        : String(count);
      const cell = el("td", { class: i === j ? "diagonal" : count ? "confused" : "" }, content);
      cell.style.setProperty("--weight", String(count / largest));
      return cell;
    })),
  );
  const perClass = classes.map((name) => {
    const scores = evaluation.per_class[name];
    return [name, number(scores.precision), number(scores.recall), number(scores.f1), scores.support];
  });
  return el(
    "section",
    { id: "evaluation" },
    el("h2", {}, `Evaluation on the ${evaluation.split ?? "held-out"} split`),
    el("p", { class: "big" }, `accuracy ${percent(evaluation.accuracy)} on ${evaluation.samples} images`),
    calibrationNote(evaluation.calibration),
    outliersNote(evaluation.outliers),
    el("h3", {}, "Confusion matrix"),
    el("table", { class: "confusion", id: "confusion-matrix" }, el("thead", {}, header), el("tbody", {}, body)),
    el("h3", {}, "Per class"),
    table(["class", "precision", "recall", "F1", "images"], perClass, { id: "per-class" }),
  );
}
