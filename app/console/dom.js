// Building pages. Every string reaches the page as a text node or a property, never as HTML:
// names of datasets, classes and files are chosen by users and must not become markup.

/** An element: el("a", {href: "#/x", class: "link", onclick: fn}, "text", otherNode, ...). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      node.className = value;
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (key in node && typeof value !== "string") {
      node[key] = value; // properties such as checked, disabled, value, min
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace a node's content with these children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A table: headers, then rows of cells (strings, numbers or nodes). */
export function table(headers, rows, attributes = {}) {
  return el(
    "table",
    attributes,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell) => el("td", {}, cell))))),
  );
}

/** A horizontal bar for a fraction in [0, 1], with its percentage written beside it. */
export function bar(fraction, label = percent(fraction)) {
  const fillNode = el("span", { class: "bar-fill" });
  fillNode.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  return el("span", { class: "bar" }, el("span", { class: "bar-track" }, fillNode), el("span", { class: "bar-label" }, label));
}

export function percent(fraction, digits = 1) {
  return fraction === null || fraction === undefined ? "–" : `${(fraction * 100).toFixed(digits)}%`;
}

export function number(value, digits = 3) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

export function when(isoTime) {
  return isoTime ? new Date(isoTime).toLocaleString() : "–";
}

export function bytes(count) {
  const units = ["B", "KB", "MB", "GB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

/** A zone that takes dropped files, or opens the file picker when clicked. */
export function dropZone({ accept, multiple, prompt, onFiles }) {
  const input = el("input", { type: "file", accept, multiple, class: "visually-hidden" });
  const zone = el("label", { class: "drop-zone", tabindex: "0" }, input, el("span", {}, prompt));
  input.addEventListener("change", () => {
    if (input.files.length) onFiles([...input.files]);
    input.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const files = [...event.dataTransfer.files];
    if (files.length) onFiles(multiple ? files : files.slice(0, 1));
  });
  return { zone, input };
}
