// Buying credits: an amount, then Stripe Checkout; Stripe sends the person back to the
// dashboard, which shows the purchase once Stripe's webhook has credited it.

import { $, api, onSubmit, run, setText, signedIn, usd } from "./console.js";

run(async () => {
  await signedIn();
  if (new URLSearchParams(location.search).has("cancelled")) $("#checkout-cancelled").hidden = false;
  const form = $("#checkout-form");
  const amount = form.elements.namedItem("amount_usd");
  for (const preset of form.querySelectorAll("[data-amount]")) {
    preset.addEventListener("click", () => {
      amount.value = preset.dataset.amount;
      amount.focus();
    });
  }
  onSubmit(form, $("#checkout-error"), async () => {
    const value = amount.value.trim().replace(/^\$/, "");
    if (!/^\d+(\.\d{1,2})?$/.test(value)) {
      throw Object.assign(new Error("Enter an amount in US dollars, like 25 or 12.50."), { param: "amount_usd" });
    }
    const session = await api("/v1/billing/checkout", { method: "POST", body: { amount_usd: value } });
    // Stripe may send the person back without naming the session: the dashboard finds it here.
    try {
      sessionStorage.setItem("kyma-checkout", session.id);
    } catch {
      // without storage the dashboard waits for the next purchase instead
    }
    location.assign(session.url);
  });
  const account = await api("/v1/account");
  setText("#billing-balance", usd(account.balance_usd));
  setText("#billing-tier", String(account.tier));
  setText("#billing-purchased", usd(account.total_purchased_usd));
});
