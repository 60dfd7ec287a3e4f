// Training curves on a <canvas>: one metric, its training and validation values per epoch.

const COLORS = { train: "#2563eb", validation: "#ea580c", grid: "#e5e7eb", text: "#374151", stage: "#9ca3af" };
const MARGIN = { left: 52, right: 16, top: 28, bottom: 34 };

/**
 * Draw `epochs` (the API's EpochRead list, in order) on `canvas`:
 * metric "loss" plots loss and val_loss, "accuracy" plots accuracy and val_accuracy.
 * Epochs are numbered across stages (head, then fine-tuning); a dashed line marks where a
 * stage starts. canvas.dataset.epochs tells how many epochs are drawn.
 */
export function drawCurves(canvas, epochs, metric) {
  const isAccuracy = metric === "accuracy";
  const series = [
    { name: "train", color: COLORS.train, values: epochs.map((e) => e[metric]) },
    { name: "validation", color: COLORS.validation, values: epochs.map((e) => e[`val_${metric}`]) },
  ];
  const context = fitToCss(canvas);
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  context.clearRect(0, 0, width, height);
  context.font = "12px system-ui, sans-serif";
  context.fillStyle = COLORS.text;
  context.fillText(isAccuracy ? "accuracy" : "loss", MARGIN.left, 16);
  canvas.dataset.epochs = String(epochs.length);
  const latest = epochs.at(-1);
  canvas.setAttribute(
    "aria-label",
    latest
      ? `${metric} per epoch; epoch ${epochs.length}: train ${format(latest[metric], isAccuracy)}, validation ${format(latest[`val_${metric}`], isAccuracy)}`
      : `${metric} per epoch: no epoch finished yet`,
  );
  if (!epochs.length) {
    context.fillText("waiting for the first epoch to finish…", MARGIN.left, height / 2);
    return;
  }
  const values = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  let [low, high] = isAccuracy ? [0, 1] : [Math.min(...values), Math.max(...values)];
  if (!isAccuracy) {
    const pad = (high - low) * 0.08 || Math.abs(high) * 0.1 || 0.1;
    [low, high] = [Math.max(0, low - pad), high + pad];
  }
  const plot = { x: MARGIN.left, y: MARGIN.top, w: width - MARGIN.left - MARGIN.right, h: height - MARGIN.top - MARGIN.bottom };
  const count = epochs.length;
  const xAt = (index) => plot.x + (count === 1 ? plot.w / 2 : (index / (count - 1)) * plot.w);
  const yAt = (value) => plot.y + plot.h - ((value - low) / (high - low)) * plot.h;

  drawGrid(context, plot, low, high, yAt, isAccuracy);
  drawEpochAxis(context, plot, epochs, xAt);
  for (const line of series) drawLine(context, line, xAt, yAt);
  drawLegend(context, plot, series);
}

function format(value, isAccuracy) {
  if (value === null || value === undefined) return "–";
  return isAccuracy ? `${(value * 100).toFixed(1)}%` : value.toFixed(3);
}

function fitToCss(canvas) {
  // Draw at the screen's pixel density, so lines stay sharp on high-DPI displays.
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(canvas.clientWidth * ratio);
  canvas.height = Math.round(canvas.clientHeight * ratio);
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  return context;
}

function drawGrid(context, plot, low, high, yAt, isAccuracy) {
  context.strokeStyle = COLORS.grid;
  context.fillStyle = COLORS.text;
  context.lineWidth = 1;
  context.textAlign = "right";
  context.textBaseline = "middle";
  const steps = 4;
  for (let i = 0; i <= steps; i += 1) {
    const value = low + ((high - low) * i) / steps;
    const y = yAt(value);
    context.beginPath();
    context.moveTo(plot.x, y);
    context.lineTo(plot.x + plot.w, y);
    context.stroke();
    context.fillText(isAccuracy ? `${Math.round(value * 100)}%` : value.toFixed(2), plot.x - 6, y);
  }
}

function drawEpochAxis(context, plot, epochs, xAt) {
  context.fillStyle = COLORS.text;
  context.textAlign = "center";
  context.textBaseline = "top";
  const every = Math.max(1, Math.ceil(epochs.length / 10));
  epochs.forEach((_, index) => {
    if (index % every === 0 || index === epochs.length - 1) {
      context.fillText(String(index + 1), xAt(index), plot.y + plot.h + 6);
    }
  });
  context.fillText("epoch", plot.x + plot.w / 2, plot.y + plot.h + 20);
  // Stages (a head, then fine-tuning of the base): a dashed line where each one starts.
  context.strokeStyle = COLORS.stage;
  context.fillStyle = COLORS.stage;
  context.setLineDash([4, 4]);
  context.textAlign = "left";
  epochs.forEach((epoch, index) => {
    if (index === 0 || epoch.stage !== epochs[index - 1].stage) {
      const x = index === 0 ? plot.x : (xAt(index - 1) + xAt(index)) / 2;
      if (index > 0) {
        context.beginPath();
        context.moveTo(x, plot.y);
        context.lineTo(x, plot.y + plot.h);
        context.stroke();
      }
      context.fillText(epoch.stage, x + 4, plot.y + 2);
    }
  });
  context.setLineDash([]);
}

function drawLine(context, line, xAt, yAt) {
  context.strokeStyle = line.color;
  context.fillStyle = line.color;
  context.lineWidth = 2;
  context.beginPath();
  let drawing = false;
  line.values.forEach((value, index) => {
    if (value === null || value === undefined) {
      drawing = false;
      return;
    }
    if (drawing) context.lineTo(xAt(index), yAt(value));
    else context.moveTo(xAt(index), yAt(value));
    drawing = true;
  });
  context.stroke();
  line.values.forEach((value, index) => {
    if (value === null || value === undefined) return;
    context.beginPath();
    context.arc(xAt(index), yAt(value), 3, 0, 2 * Math.PI);
    context.fill();
  });
}

function drawLegend(context, plot, series) {
  context.textAlign = "left";
  context.textBaseline = "middle";
  let x = plot.x + plot.w - 170;
  for (const line of series) {
    context.fillStyle = line.color;
    context.fillRect(x, 10, 14, 3);
    context.fillStyle = COLORS.text;
    context.fillText(line.name, x + 18, 12);
    x += 90;
  }
}
