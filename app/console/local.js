// "Run in this browser": a model version's ONNX export run by ONNX Runtime Web (its npm
// package, served by this server at /ui/vendor/), so the photos never leave the machine.
// Decoding follows the service's: EXIF orientation applied, transparency on white, RGB
// 0..255, a side longer than shrink_side first divided by a whole factor; the model resizes
// the rest itself.

import { api, bytesOf } from "./api.js";

let runtime = null;
const models = new Map(); // "name/version" -> { session, labels, preprocessing }

async function onnxRuntime() {
  if (runtime === null) {
    try {
      runtime = await import("/ui/vendor/ort.wasm.min.mjs");
    } catch {
      throw new Error("ONNX Runtime Web is not installed on this server (make install runs npm ci in app/console)");
    }
    runtime.env.wasm.wasmPaths = "/ui/vendor/";
    // Threads need a cross-origin isolated page (SharedArrayBuffer); one is enough here.
    runtime.env.wasm.numThreads = 1;
  }
  return runtime;
}

async function model(name, version) {
  const key = `${name}/${version}`;
  if (!models.has(key)) {
    const path = `/models/${encodeURIComponent(name)}/versions/${version}`;
    const loading = (async () => {
      const ort = await onnxRuntime();
      const inputs = await api(`${path}/inputs`);
      const bytes = await bytesOf(`${path}/download?format=onnx`);
      const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
      return { ort, session, ...inputs };
    })();
    models.set(key, loading);
    loading.catch(() => models.delete(key));
  }
  return models.get(key);
}

/** The photo as float32 RGB (1, height, width, 3), decoded as the service decodes it. */
async function pixels(file, preprocessing) {
  const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  const keep = preprocessing.shrink_side;
  const factors = [Math.max(1, Math.floor(bitmap.width / keep)), Math.max(1, Math.floor(bitmap.height / keep))];
  const width = Math.ceil(bitmap.width / factors[0]);
  const height = Math.ceil(bitmap.height / factors[1]);
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.fillStyle = "white";
  context.fillRect(0, 0, width, height);
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  const rgba = context.getImageData(0, 0, width, height).data;
  const rgb = new Float32Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  return { data: rgb, shape: [1, height, width, 3] };
}

/** One image's answer in /predict's shape (labels, and for multi-label models thresholds). */
function answerOf(row, file, labels, topK) {
  const classes = labels.classes;
  let probabilities = Array.from(row);
  if (probabilities.length === 1 && classes.length === 2) probabilities = [1 - probabilities[0], probabilities[0]];
  const order = classes.map((_, i) => i).sort((a, b) => probabilities[b] - probabilities[a]);
  if (labels.task !== "multilabel") {
    return {
      filename: file.name,
      labels: order.slice(0, topK).map((i) => ({ label: classes[i], probability: probabilities[i] })),
    };
  }
  const listed = order.map((i) => {
    const threshold = labels.thresholds[classes[i]];
    return { label: classes[i], probability: probabilities[i], threshold, above_threshold: probabilities[i] >= threshold };
  });
  return { filename: file.name, labels: listed, labels_above_threshold: listed.filter((l) => l.above_threshold).map((l) => l.label) };
}

/** Classify `files` with version `version` of `name` in this browser: /predict's answer. */
export async function classifyHere(files, { name, version, topK }) {
  const started = performance.now();
  const { ort, session, labels, preprocessing } = await model(name, version);
  const loaded = performance.now();
  const predictions = [];
  for (const file of files) {
    const { data, shape } = await pixels(file, preprocessing);
    const outputs = await session.run({ [preprocessing.input_name]: new ort.Tensor("float32", data, shape) });
    predictions.push(answerOf(outputs[session.outputNames[0]].data, file, labels, topK));
  }
  return {
    model: name,
    version,
    task: labels.task === "multilabel" ? "multilabel" : undefined,
    predictions,
    loadSeconds: (loaded - started) / 1000,
    seconds: (performance.now() - loaded) / 1000,
    runtime: "onnxruntime-web",
  };
}
