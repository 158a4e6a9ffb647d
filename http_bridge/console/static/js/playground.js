// The playground: chat with a model, streamed, through the public API with an API key the
// person pastes or creates here (model endpoints take a key, never the session; the key is
// sent without the session cookie and kept only in this page). Each reply shows its tokens,
// its cost and the rate-limit headers it came with.

import { $, ApiError, api, count, el, flash, readJson, run, signedIn, usd } from "./console.js";

const RATE_HEADERS = [
  "x-ratelimit-limit-requests",
  "x-ratelimit-remaining-requests",
  "x-ratelimit-reset-requests",
  "x-ratelimit-limit-tokens",
  "x-ratelimit-remaining-tokens",
  "x-ratelimit-reset-tokens",
];

let conversation = []; // sent with each request
let controller = null;

run(async () => {
  await signedIn();
  const keyInput = $("#api-key");
  $("#toggle-key").addEventListener("click", (event) => {
    const show = keyInput.type === "password";
    keyInput.type = show ? "text" : "password";
    event.target.textContent = show ? "Hide" : "Show";
    event.target.setAttribute("aria-pressed", String(show));
  });
  $("#create-playground-key").addEventListener("click", createKey);
  keyInput.addEventListener("change", loadModels);
  $("#chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("#prompt").addEventListener("keydown", (event) => {
    // Ctrl+Enter (⌘+Enter) sends; Enter alone is a new line.
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      send();
    }
  });
  $("#stop").addEventListener("click", () => controller && controller.abort());
  $("#new-chat").addEventListener("click", () => {
    conversation = [];
    $("#transcript").replaceChildren();
    $("#prompt").focus();
  });
  await publicModels();
});

function setModels(ids) {
  const select = $("#model");
  const chosen = select.value;
  select.replaceChildren(...ids.map((id) => el("option", { value: id, text: id })));
  if (ids.includes(chosen)) select.value = chosen;
}

// Before there is a key: the models on the status page (public).
async function publicModels() {
  try {
    const status = await api("/v1/status");
    setModels(status.models.map((model) => model.id ?? model.model).sort());
  } catch {
    // filled once a key is there
  }
}

// With a key: the models that key may call.
async function loadModels() {
  const key = $("#api-key").value.trim();
  const status = $("#playground-key-status");
  if (!key) return;
  const response = await modelCall("/v1/models", key, { method: "GET" });
  const body = await readJson(response);
  if (!response.ok) {
    status.textContent = new ApiError(response.status, body).message;
    return;
  }
  status.textContent = "";
  setModels(body.data.map((model) => model.id).sort());
}

async function createKey(event) {
  const button = event.target;
  button.disabled = true;
  try {
    const created = await api("/v1/account/keys", { method: "POST", body: { name: "playground" } });
    const keyInput = $("#api-key");
    keyInput.value = created.secret ?? created.key;
    $("#playground-key-status").textContent =
      `Created the key “playground” (${created.prefix}…) and put it in the key field. Kyma will not show it ` +
      "again: use Show to copy it if you want to keep it, or revoke it on the Keys page when you are done.";
    await loadModels();
  } catch (error) {
    flash(error.message, "error");
  } finally {
    button.disabled = false;
  }
}

function modelCall(path, key, init) {
  return fetch(path, {
    ...init,
    credentials: "omit", // the key alone authenticates a model call
    headers: { authorization: `Bearer ${key}`, ...(init.headers || {}) },
  });
}

function message(role, text) {
  const content = el("p", { class: "content", text });
  const meta = el("p", { class: "meta" });
  const node = el("div", { class: `message ${role}` }, el("span", { class: "role", text: role === "user" ? "You" : "Model" }), content, meta);
  $("#transcript").append(node);
  node.scrollIntoView({ block: "nearest" });
  return { node, content, meta };
}

// The `data:` payloads of a Server-Sent Events stream.
async function* events(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield data;
    }
  }
}

function showRateLimits(headers) {
  const rows = RATE_HEADERS.filter((name) => headers.has(name)).map((name) =>
    el("tr", {}, el("th", { scope: "row" }, el("code", { text: name })), el("td", { text: headers.get(name) })),
  );
  if (rows.length) $("#ratelimit-table tbody").replaceChildren(...rows);
}

function fail(message, param) {
  $("#chat-error").textContent = message;
  $(param).focus();
}

async function send() {
  if (controller) return;
  $("#chat-error").textContent = "";
  const key = $("#api-key").value.trim();
  const model = $("#model").value;
  const text = $("#prompt").value.trim();
  const maxTokens = Number($("#max-tokens").value);
  if (!key) return fail("Paste an API key, or create one for the playground.", "#api-key");
  if (!model) return fail("Choose a model.", "#model");
  if (!Number.isInteger(maxTokens) || maxTokens < 1) return fail("Max tokens is a whole number from 1.", "#max-tokens");
  if (!text) return fail("Write a message first.", "#prompt");

  conversation.push({ role: "user", content: text });
  message("user", text);
  $("#prompt").value = "";
  const reply = message("assistant", "");
  const transcript = $("#transcript");
  transcript.setAttribute("aria-busy", "true");
  controller = new AbortController();
  $("#send").disabled = true;
  $("#stop").hidden = false;
  let answer = "";
  let usage = null;
  let requestId = null;
  try {
    const response = await modelCall("/v1/chat/completions", key, {
      method: "POST",
      signal: controller.signal,
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify({
        model,
        messages: conversation,
        max_tokens: maxTokens,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    requestId = response.headers.get("x-request-id");
    showRateLimits(response.headers);
    if (!response.ok) throw new ApiError(response.status, await readJson(response));
    for await (const data of events(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(502, chunk);
      for (const choice of chunk.choices || []) {
        const delta = choice.delta && choice.delta.content;
        if (delta) {
          answer += delta;
          reply.content.textContent = answer;
        }
      }
      if (chunk.usage) usage = chunk.usage;
    }
    conversation.push({ role: "assistant", content: answer });
    reply.meta.textContent = facts(usage, requestId);
    if (usage && usage.cost == null && requestId) loggedCost(requestId, usage, reply.meta);
  } catch (error) {
    if (error.name === "AbortError") {
      conversation.push({ role: "assistant", content: answer });
      reply.meta.textContent = "Stopped; you are charged for what was delivered." + (requestId ? ` Request ${requestId}.` : "");
    } else {
      conversation.pop(); // the message was not answered: it is not part of the conversation
      reply.node.classList.add("error");
      reply.content.textContent = error.message;
      reply.meta.textContent = (error.status ? `HTTP ${error.status}` : "") + (error.code ? ` · ${error.code}` : "") + (requestId ? ` · request ${requestId}` : "");
    }
  } finally {
    controller = null;
    transcript.setAttribute("aria-busy", "false");
    $("#send").disabled = false;
    $("#stop").hidden = true;
    $("#prompt").focus();
  }
}

// An upstream whose stream carried no cost: the request log has it once written (in batches,
// just after the reply), and the person's session may read it.
async function loggedCost(requestId, usage, meta) {
  for (let attempt = 0; attempt < 20; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 250 + attempt * 250));
    try {
      const rows = (await api("/v1/account/requests?limit=20")).data;
      const row = rows.find((r) => r.id === requestId);
      if (row) {
        meta.textContent = facts({ ...usage, cost: row.cost_usd }, requestId);
        return;
      }
    } catch {
      return; // "cost not reported" stays
    }
  }
}

function facts(usage, requestId) {
  const parts = [];
  if (usage) {
    parts.push(`${count(usage.prompt_tokens)} prompt + ${count(usage.completion_tokens)} completion tokens`);
    parts.push(usage.cost != null ? `cost ${usd(usage.cost)}` : "cost not reported");
    if (usage.estimated) parts.push("usage estimated");
  } else {
    parts.push("no usage reported");
  }
  if (requestId) parts.push(`request ${requestId}`);
  return parts.join(" · ");
}
