// The model registry: names, versions with their metrics, activate, download.

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
        el("button", { type: "button", class: "secondary download", "data-version": String(v.version), onclick: (event) => download(model.name, v.version, event.target, problem) }, "Download"),
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
    table(["version", "method", "validation accuracy", "test accuracy", "warnings", "size", "created", ""], rows),
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

async function download(name, version, button, problem) {
  const label = button.textContent;
  button.disabled = true;
  button.textContent = "Downloading…";
  try {
    const url = await blobUrl(`/models/${encodeURIComponent(name)}/versions/${version}/download`);
    const link = el("a", { href: url, download: `${name}-v${version}.keras`, hidden: true });
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
