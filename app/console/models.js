// The model registry: names, versions with their metrics, activate, and every download format
// (the formats for devices with the accuracy their check measured).

import { api, blobUrl } from "./api.js";
import { bytes, el, fill, percent, table, when } from "./dom.js";

export async function modelsView(container) {
  const models = await api("/models");
  const versions = await Promise.all(models.map((m) => api(`/models/${encodeURIComponent(m.name)}/versions`)));
  const message = el("p", { class: "error", role: "alert", id: "models-error", hidden: true });
  const problem = (error) => {
    fill(message, error.message);
    message.hidden = false;
  };
  fill(
    container,
    el("h1", {}, "Models"),
    message,
    models.length ? models.map((model, i) => modelCard(model, versions[i], problem)) : el("p", { class: "muted" }, "No model yet: train one from a dataset."),
  );
}

function modelCard(model, versions, problem) {
  const rows = versions.map((v) => {
    const summary = v.metrics_summary || {};
    return [
      el("span", {}, `v${v.version} `, v.is_active ? el("span", { class: "status succeeded" }, "active") : null),
      summary.method ?? "",
      percent(summary.validation_accuracy),
      percent(summary.test_accuracy),
      el("span", { class: "warnings" }, (summary.warnings || []).join(" ")),
      bytes(v.size_bytes),
      when(v.created_at),
      el(
        "span",
        { class: "row-actions" },
        v.is_active ? null : el("button", { type: "button", class: "activate", "data-version": String(v.version), onclick: () => activate(model.name, v.version, problem) }, "Activate"),
        el("button", { type: "button", class: "secondary download", "data-version": String(v.version), onclick: (event) => download(model.name, v.version, "keras", event.target, problem) }, "Download"),
        el("a", { class: "button secondary", href: `#/predict?model=${encodeURIComponent(model.name)}&version=${v.version}` }, "Try it"),
        v.job_id ? el("a", { href: `#/jobs/${v.job_id}` }, "job") : null,
      ),
    ];
  });
  return el(
    "section",
    { class: "card model", "data-model": model.name },
    el("h2", {}, model.name),
    el("p", { class: "muted" }, `${model.versions} version(s); active: ${model.active_version ? `v${model.active_version}` : "none"}`),
    el("div", { class: "table-scroll" }, table(["version", "method", "validation accuracy", "test accuracy", "warnings", "stored", "created", ""], rows)),
    versions.map((v) => downloads(model.name, v, problem)),
  );
}

// The version's own files, then the formats a worker builds (ready or not).
const OWN_FORMATS = [
  ["keras", "Keras (.keras)"],
  ["onnx", "ONNX"],
  ["docker", "Serve-only: Dockerfile, ONNX and server.py"],
];
const BUILT_FORMATS = [
  ["savedmodel", "TF Serving SavedModel"],
  ["tflite", "TFLite float32"],
  ["tflite_fp16", "TFLite float16"],
  ["tflite_int8", "TFLite int8"],
  ["onnx_int8", "ONNX int8"],
];

function downloads(name, version, problem) {
  const built = Object.fromEntries((version.exports || []).map((e) => [e.format, e]));
  const rows = [...OWN_FORMATS, ...BUILT_FORMATS].map(([format, title]) => {
    const own = OWN_FORMATS.some(([f]) => f === format);
    const exported = built[format];
    const check = exported?.report;
    const state = own ? "ready" : exported ? exported.status : "made on first download";
    const degraded = Boolean(check?.degraded);
    const button = (bundle) =>
      el(
        "button",
        {
          type: "button",
          class: "secondary",
          "data-format": format,
          "data-bundle": String(bundle),
          onclick: (event) => download(name, version.version, format, event.target, problem, { bundle, degraded }),
        },
        format === "docker" ? "zip" : bundle ? "zip with predict.py" : "file",
      );
    const actions = format === "docker" ? [button(false)] : [button(false), button(true)];
    if (format === "onnx_int8" && exported?.status === "ready" && !degraded) actions.push(servingButton(name, version, problem));
    return [
      title,
      el("span", { class: degraded ? "status failed" : "" }, degraded ? "degraded" : state),
      exported?.size_bytes ? bytes(exported.size_bytes) : "",
      check ? `${percent(check.accuracy)} (float ${percent(check.float_accuracy)})` : "",
      check ? percent(check.agreement) : "",
      check ? `${check.images} ${check.evaluated_on} images` : "",
      el("span", { class: "row-actions" }, actions),
    ];
  });
  return el(
    "details",
    { class: "downloads", "data-version": String(version.version) },
    el("summary", {}, `v${version.version} downloads · /predict runs ${version.serving_precision ?? "float32"}`),
    el(
      "p",
      { class: "muted" },
      "Every format takes raw RGB pixels of any size. The formats for devices are checked by their own runtime on the test split beside the float model; a degraded one lost more accuracy than allowed.",
    ),
    el("div", { class: "table-scroll" }, table(["format", "state", "size", "accuracy", "agrees with float", "checked on", ""], rows)),
  );
}

/** Make /predict answer from the int8 ONNX export by default, or from the float model again. */
function servingButton(name, version, problem) {
  const int8 = version.serving_precision === "int8";
  return el(
    "button",
    {
      type: "button",
      class: "secondary",
      "data-serving": int8 ? "float32" : "int8",
      onclick: async () => {
        try {
          await api(`/models/${encodeURIComponent(name)}/versions/${version.version}/serving`, { method: "PUT", json: { precision: int8 ? "float32" : "int8" } });
          if (location.hash === "#/models") await modelsView(document.getElementById("view"));
        } catch (error) {
          problem(error);
        }
      },
    },
    int8 ? "serve float32 again" : "serve /predict from it",
  );
}

async function activate(name, version, problem) {
  try {
    await api(`/models/${encodeURIComponent(name)}/versions/${version}/activate`, { method: "POST" });
    if (location.hash === "#/models") await modelsView(document.getElementById("view"));
  } catch (error) {
    problem(error);
  }
}

const SUFFIX = {
  keras: ".keras",
  onnx: ".onnx",
  savedmodel: "-savedmodel.tar.gz",
  tflite: ".tflite",
  tflite_fp16: "_fp16.tflite",
  tflite_int8: "_int8.tflite",
  onnx_int8: "_int8.onnx",
  docker: "-docker.zip",
};

async function download(name, version, format, button, problem, { bundle = false, degraded = false } = {}) {
  if (degraded && !window.confirm(`The ${format} export of ${name} v${version} lost more accuracy than allowed against the float model. Download it anyway?`)) return;
  const label = button.textContent;
  button.disabled = true;
  button.textContent = "Downloading…";
  try {
    const query = new URLSearchParams({ format });
    if (bundle) query.set("bundle", "true");
    if (degraded) query.set("allow_degraded", "true");
    const url = await blobUrl(`/models/${encodeURIComponent(name)}/versions/${version}/download?${query}`);
    const file = bundle ? `${name}-v${version}-${format}.zip` : `${name}-v${version}${SUFFIX[format]}`;
    const link = el("a", { href: url, download: file, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    problem(error);
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}
