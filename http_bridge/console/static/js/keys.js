// API keys: create one (its secret shown this once, with a copy button), see each key's use
// and limits, change the limits, revoke.

import { $, api, copy, el, flash, nanos, onSubmit, run, setText, signedIn, time, usd } from "./console.js";
import { addModelChoices, fillLimits, knownModels, readLimits } from "./limits.js";

const INTERVALS = { daily: "every day", weekly: "every week", monthly: "every month" };
let models = [];

run(async () => {
  await signedIn();
  models = await knownModels();
  const form = $("#create-key-form");
  addModelChoices(form, models);

  onSubmit(form, $("#create-key-error"), async () => {
    const name = form.elements.namedItem("name").value.trim();
    if (!name) throw Object.assign(new Error("Give the key a name, so that you know it again."), { param: "name" });
    const body = { name };
    for (const [field, value] of Object.entries(readLimits(form))) {
      if (value !== null) body[field] = value;
    }
    const created = await api("/v1/account/keys", { method: "POST", body });
    showSecret(created.secret ?? created.key, created.name);
    form.reset();
    await loadKeys();
  });

  $("#copy-new-key").addEventListener("click", () =>
    copy($("#new-key-secret").textContent, $("#copy-new-key-status"), $("#new-key-secret")),
  );
  $("#new-key-done").addEventListener("click", () => {
    $("#new-key-secret").textContent = "";
    $("#copy-new-key-status").textContent = "";
    $("#new-key").hidden = true;
    $("#key-name").focus();
  });
  await loadKeys();
});

function showSecret(secret, name) {
  $("#new-key-title").textContent = `Your new key “${name}”`;
  $("#new-key-secret").textContent = secret;
  $("#copy-new-key-status").textContent = "";
  $("#new-key").hidden = false;
  $("#new-key").focus();
}

function expired(key) {
  return key.expires_at != null && timestamp(key.expires_at) <= Date.now();
}

function timestamp(value) {
  return typeof value === "number" ? value * 1000 : Date.parse(value);
}

async function loadKeys() {
  const keys = (await api("/v1/account/keys")).data;
  // Live keys first; within each group, as the API lists them.
  keys.sort((a, b) => Number(a.revoked_at != null) - Number(b.revoked_at != null));
  $("#key-list").replaceChildren(...keys.map(card));
  $("#keys-empty").hidden = keys.length > 0;
}

function capText(key) {
  if (!key.spend_cap_usd) return document.createTextNode("No cap");
  const span = el("span", {}, `${usd(key.spent_usd ?? "0")} of ${usd(key.spend_cap_usd)} spent`);
  if (key.held_usd && nanos(key.held_usd) > 0n) span.append(` (${usd(key.held_usd)} held)`);
  if (key.cap_interval) {
    span.append(`, resets ${INTERVALS[key.cap_interval] || key.cap_interval}`);
    if (key.cap_resets_at) span.append(" (next ", time(key.cap_resets_at), ")");
  } else {
    span.append(" (for the key's life)");
  }
  return span;
}

function card(key) {
  const node = $("#key-template").content.firstElementChild.cloneNode(true);
  const field = (name) => $(`[data-field="${name}"]`, node);
  node.dataset.keyId = key.id;
  field("name").textContent = key.name || "(no name)";
  field("prefix").textContent = key.prefix + "…";
  const state = field("state");
  if (key.revoked_at != null) {
    state.replaceChildren(el("span", { class: "state-ended" }, "Revoked "), time(key.revoked_at));
    node.classList.add("revoked");
  } else if (expired(key)) {
    state.replaceChildren(el("span", { class: "state-ended", text: "Expired" }));
  } else {
    state.replaceChildren(el("span", { class: "state-live", text: "Live" }));
  }
  setText(field("created"), time(key.created_at));
  setText(field("last_used"), key.last_used_at != null ? time(key.last_used_at) : "Never");
  setText(field("cap"), capText(key));
  setText(field("expires"), key.expires_at != null ? time(key.expires_at) : "Never");
  setText(field("models"), key.allowed_models ? key.allowed_models.join(", ") : "All models");

  const edit = $('[data-part="edit"]', node);
  const revoke = $('[data-action="revoke"]', node);
  if (key.revoked_at != null) {
    edit.remove();
    revoke.remove();
    return node;
  }
  $("summary", edit).textContent = `Change limits of “${key.name}”`;
  revoke.textContent = `Revoke “${key.name}”`;
  const form = $("form", edit);
  addModelChoices(form, models);
  fillLimits(form, key);
  onSubmit(form, $(".form-error", form), async () => {
    await api(`/v1/account/keys/${encodeURIComponent(key.id)}`, { method: "PATCH", body: readLimits(form) });
    flash(`The limits of “${key.name}” are saved.`, "ok");
    await loadKeys();
  });
  revoke.addEventListener("click", async () => {
    if (!confirm(`Revoke the key “${key.name}”? Requests with it are refused from now on; this cannot be undone.`)) return;
    revoke.disabled = true;
    try {
      await api(`/v1/account/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      flash(`The key “${key.name}” is revoked.`, "ok");
      await loadKeys();
    } catch (error) {
      flash(error.message, "error");
      revoke.disabled = false;
    }
  });
  return node;
}
