// The limit fields of a key (cap, reset interval, expiry, model allow-list), shared by the keys
// page's create and change forms: filled from a key, read into the API's fields.

import { api, el } from "./console.js";

let modelIds = null;

// The public model ids, for the allow-list's tick boxes (GET /v1/status needs no key).
export async function knownModels() {
  if (modelIds === null) {
    try {
      const status = await api("/v1/status");
      modelIds = (status.models || []).map((model) => model.id ?? model.model).sort();
    } catch {
      modelIds = []; // the free-text field still takes any id
    }
  }
  return modelIds;
}

export function addModelChoices(form, models) {
  const box = form.querySelector("[data-models]");
  box.replaceChildren(
    ...models.map((id) =>
      el("label", {}, el("input", { type: "checkbox", name: "allowed_models", value: id }), id),
    ),
  );
}

function fail(message, param) {
  return Object.assign(new Error(message), { param });
}

// The form's limits as the API takes them; null clears a limit.
export function readLimits(form) {
  const fields = form.elements;
  const cap = fields.namedItem("spend_cap_usd").value.trim().replace(/^\$/, "");
  const interval = fields.namedItem("cap_interval").value;
  const expires = fields.namedItem("expires_at").value;
  if (cap && !/^\d+(\.\d{1,9})?$/.test(cap)) throw fail("The spend cap is an amount in USD, like 5 or 2.50.", "spend_cap_usd");
  if (interval && !cap) throw fail("Set a spend cap for it to reset.", "spend_cap_usd");
  const ticked = [...form.querySelectorAll('input[name="allowed_models"]:checked')].map((box) => box.value);
  const other = fields
    .namedItem("allowed_models_other")
    .value.split(",")
    .map((id) => id.trim())
    .filter(Boolean);
  const models = [...new Set([...ticked, ...other])];
  let expiresAt = null;
  if (expires) {
    const date = new Date(expires); // the person's local time
    if (Number.isNaN(date.getTime())) throw fail("The expiry is not a date and time.", "expires_at");
    expiresAt = date.toISOString();
  }
  return {
    spend_cap_usd: cap || null,
    cap_interval: interval || null,
    expires_at: expiresAt,
    allowed_models: models.length ? models : null,
  };
}

function localInput(value) {
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 16);
}

export function fillLimits(form, key) {
  const fields = form.elements;
  fields.namedItem("spend_cap_usd").value = key.spend_cap_usd ? trimZeros(key.spend_cap_usd) : "";
  fields.namedItem("cap_interval").value = key.cap_interval || "";
  fields.namedItem("expires_at").value = key.expires_at ? localInput(key.expires_at) : "";
  const allowed = new Set(key.allowed_models || []);
  for (const box of form.querySelectorAll('input[name="allowed_models"]')) {
    box.checked = allowed.has(box.value);
    allowed.delete(box.value);
  }
  fields.namedItem("allowed_models_other").value = [...allowed].join(", ");
}

function trimZeros(amount) {
  return String(amount).includes(".") ? String(amount).replace(/0+$/, "").replace(/\.$/, "") : String(amount);
}
