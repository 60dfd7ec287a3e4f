// The service's public HTTP API, with the key from this browser tab's session storage.

const KEY_ITEM = "smallvision.api_key";

export const session = {
  key: () => sessionStorage.getItem(KEY_ITEM),
  signIn: (key) => sessionStorage.setItem(KEY_ITEM, key),
  signOut: () => sessionStorage.removeItem(KEY_ITEM),
};

/** An error answer of the API ({"error": code, "detail": ...}), or no answer at all. */
export class ApiError extends Error {
  constructor(status, code, detail) {
    super(describe(status, code, detail));
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

function describe(status, code, detail) {
  if (status === 0) return "The service did not answer: is it running?";
  let text;
  if (Array.isArray(detail)) {
    // validation errors: name each field and what is wrong with it
    text = detail.map((item) => `${(item.loc || []).filter((part) => part !== "body").join(".")}: ${item.msg}`).join("; ");
  } else if (detail && typeof detail === "object") {
    text = Object.entries(detail).map(([key, value]) => `${key}: ${value}`).join("; ");
  } else {
    text = detail ? String(detail) : code;
  }
  const hint = {
    401: " Sign in again with a valid API key.",
    403: " Sign in with a key that has it (an admin key has every scope).",
    413: " Make the upload smaller, or raise the server's limit.",
    429: " Wait a moment and try again.",
  }[status];
  const said = text || `HTTP ${status}`;
  return hint ? `${said}${/[.!?]$/.test(said) ? "" : "."}${hint}` : said;
}

async function errorFrom(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's page): the status says enough
  }
  return new ApiError(response.status, body.error || `http_${response.status}`, body.detail);
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${session.key()}`, ...extra };
}

/** Call the API and return its JSON (null for 204). `json` is sent as a JSON body, `form` as multipart. */
export async function api(path, { method = "GET", json, form } = {}) {
  const init = { method, headers: headers() };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "unreachable", null);
  }
  if (!response.ok) throw await errorFrom(response);
  return response.status === 204 ? null : response.json();
}

/** A GET of a file the API serves (a PNG, a model) with the key: the response, or an ApiError. */
async function fetchFile(path) {
  let response;
  try {
    response = await fetch(path, { headers: headers() });
  } catch {
    throw new ApiError(0, "unreachable", null);
  }
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 202) {
    // an export a worker is building: its state, and when to ask again
    const wait = response.headers.get("Retry-After") || "5";
    throw new ApiError(202, "export_pending", `It is being built by a worker: try again in ${wait} s.`);
  }
  return response;
}

/** The bytes of a file the API serves (a model), with the key. */
export async function bytesOf(path) {
  return new Uint8Array(await (await fetchFile(path)).arrayBuffer());
}

/** A file the API serves, with the key, as a blob: URL. */
export async function blobUrl(path) {
  return URL.createObjectURL(await (await fetchFile(path)).blob());
}

/** POST multipart with upload progress (fetch cannot report it): onProgress(sent, total). */
export function uploadWithProgress(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    request.setRequestHeader("Authorization", `Bearer ${session.key()}`);
    request.responseType = "json";
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    request.addEventListener("load", () => {
      if (request.status >= 200 && request.status < 300) {
        resolve(request.response);
      } else {
        const body = request.response || {};
        reject(new ApiError(request.status, body.error || `http_${request.status}`, body.detail));
      }
    });
    request.addEventListener("error", () => reject(new ApiError(0, "unreachable", null)));
    request.send(form);
  });
}

let schemaPromise = null;

/** The OpenAPI schema (public): the training options and their descriptions come from it, so
 * the console offers exactly the methods and base models this server has. */
export function openapi() {
  schemaPromise ??= fetch("/openapi.json").then((response) => {
    if (!response.ok) throw new ApiError(response.status, "schema_unavailable", "the API schema did not load");
    return response.json();
  });
  return schemaPromise;
}
