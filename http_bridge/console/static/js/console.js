// What every console page shares: calling Kyma's public HTTP API with the session cookie (and
// the session's CSRF token on every state-changing call), the session itself, exact money
// formatting, and a few DOM helpers. No framework: the pages are server-rendered shells.

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `Kyma answered ${status}.`);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
  }
}

let session = null; // {account_id, email, csrf_token, expires_at} once signed in

// One call on the JSON API. Session-authenticated: a 401 means the session is over, so the
// person is sent to sign in and come back here.
export async function api(path, { method = "GET", body, headers: extra = {} } = {}) {
  const headers = { accept: "application/json", ...extra };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && session) headers["x-csrf-token"] = session.csrf_token;
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, { error: { message: "Kyma could not be reached. Check your connection and try again." } });
  }
  const data = await readJson(response);
  if (response.status === 401 && session) toSignin();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export async function readJson(response) {
  const text = await response.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

function toSignin() {
  const next = location.pathname + location.search;
  location.assign("/signin?" + new URLSearchParams({ next }));
}

// The session of a page that needs one: without it the person goes to sign in.
export async function signedIn() {
  try {
    session = await api("/v1/auth/session");
  } catch (error) {
    if (error.status === 401) {
      toSignin();
      return new Promise(() => {}); // the page is going away
    }
    throw error;
  }
  for (const button of document.querySelectorAll('[data-action="sign-out"]')) {
    button.addEventListener("click", signOut);
  }
  return session;
}

export function currentSession() {
  return session;
}

export async function signOut() {
  try {
    await api("/v1/auth/signout", { method: "POST", body: {} });
  } catch (error) {
    if (error.status !== 401) return flash(error.message, "error");
  }
  session = null;
  location.assign("/signin?signed_out=1");
}

// A local path to go to after signing in; anything else (another origin) is ignored.
export function nextPath(fallback = "/") {
  const next = new URLSearchParams(location.search).get("next") || "";
  return /^\/(?![/\\])/.test(next) ? next : fallback;
}

// --- money: decimal USD strings, summed exactly as integer nano-dollars (BigInt) -----------

const NANOS = 1000000000n;

export function nanos(usd) {
  const match = /^(-?)(\d+)(?:\.(\d{1,9}))?$/.exec(String(usd ?? "").trim());
  if (!match) return null;
  const value = BigInt(match[2]) * NANOS + BigInt((match[3] || "").padEnd(9, "0"));
  return match[1] ? -value : value;
}

// "$0.50", "$0.0000028", "-$1.25"; at least cents, every significant digit kept.
export function usd(value, { signed = false } = {}) {
  const n = typeof value === "bigint" ? value : nanos(value);
  if (n === null) return "—";
  const abs = n < 0n ? -n : n;
  let fraction = (abs % NANOS).toString().padStart(9, "0").replace(/0+$/, "");
  fraction = fraction.padEnd(2, "0");
  const text = "$" + (abs / NANOS).toLocaleString("en-US") + "." + fraction;
  if (n < 0n) return "-" + text;
  return signed && n > 0n ? "+" + text : text;
}

export function count(value) {
  return value == null ? "—" : Number(value).toLocaleString("en-US");
}

// A time from the API (RFC 3339 string, or seconds since the epoch) as a <time> element.
export function time(value) {
  if (value == null || value === "") return document.createTextNode("—");
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return document.createTextNode(String(value));
  const node = document.createElement("time");
  node.dateTime = date.toISOString();
  node.textContent = date.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  return node;
}

// --- DOM ------------------------------------------------------------------------------------

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value == null) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child != null) node.append(child);
  }
  return node;
}

export function setText(selector, value) {
  const node = typeof selector === "string" ? $(selector) : selector;
  node.replaceChildren(value instanceof Node ? value : document.createTextNode(String(value)));
  node.removeAttribute("data-loading");
}

// A message in the page's live region (announced to screen readers).
export function flash(message, kind = "") {
  const box = $("#flash");
  box.className = "flash " + kind;
  box.textContent = message;
}

// Run a form's submit handler with its button disabled; an API error goes to `errorBox`.
export function onSubmit(form, errorBox, handler) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.textContent = "";
    const buttons = form.querySelectorAll("button");
    for (const button of buttons) button.disabled = true;
    try {
      await handler(event);
    } catch (error) {
      errorBox.textContent = error.message;
      const field = error.param && form.elements.namedItem(error.param);
      if (field && field.focus) field.focus();
    } finally {
      for (const button of buttons) button.disabled = false;
    }
  });
}

// Copy `text`; where the Clipboard API is not available (a page not served over TLS or
// loopback), select `fallback` so that the person can copy it by hand.
export async function copy(text, statusBox, fallback) {
  try {
    await navigator.clipboard.writeText(text);
    statusBox.textContent = "Copied to the clipboard.";
  } catch {
    if (fallback) {
      const range = document.createRange();
      range.selectNodeContents(fallback);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      if (fallback.select) fallback.select();
    }
    statusBox.textContent = "Copying is blocked here: the text is selected, copy it with Ctrl+C (⌘C).";
  }
}

// A device id kept in this browser, sent with sign-ups as a signal against referral abuse.
export function deviceId() {
  try {
    let id = localStorage.getItem("kyma-device");
    if (!id) {
      const bytes = crypto.getRandomValues(new Uint8Array(16));
      id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      localStorage.setItem("kyma-device", id);
    }
    return id;
  } catch {
    return null;
  }
}

// Run a page's script. A failure to load shows in the live region instead of "…" forever;
// either way the page marks itself loaded (body[data-ready]), which the browser tests wait on.
export function run(main) {
  main()
    .then(() => (document.body.dataset.ready = "ok"))
    .catch((error) => {
      flash(error.message || String(error), "error");
      document.body.dataset.ready = "failed";
    });
}
