// Account settings: who and in what standing, which terms were accepted, the low-balance
// alert, and signing out everywhere.

import { $, api, flash, onSubmit, run, setText, signedIn, time } from "./console.js";
import { acceptTermsButton } from "./terms-accept.js";

run(async () => {
  const session = await signedIn();
  setText("#session-expires", time(session.expires_at));
  await loadAccount();

  const form = $("#threshold-form");
  onSubmit(form, $("#threshold-error"), async () => {
    const value = form.elements.namedItem("low_balance_threshold_usd").value.trim().replace(/^\$/, "");
    if (value && !/^\d+(\.\d{1,9})?$/.test(value)) {
      throw Object.assign(new Error("The threshold is an amount in USD, like 5 or 2.50."), { param: "low_balance_threshold_usd" });
    }
    await api("/v1/account", { method: "PATCH", body: { low_balance_threshold_usd: value || null } });
    flash(value ? `We will email you when your available balance falls below $${value}.` : "The low-balance alert is off.", "ok");
    await loadAccount();
  });

  $("#signout-everywhere").addEventListener("click", async (event) => {
    if (!confirm("Sign out of Kyma on every device, this one included?")) return;
    event.target.disabled = true;
    try {
      await api("/v1/auth/signout-everywhere", { method: "POST", body: {} });
      location.assign("/signin?signed_out=1");
    } catch (error) {
      flash(error.message, "error");
      event.target.disabled = false;
    }
  });
});

async function loadAccount() {
  const account = await api("/v1/account");
  setText("#email", account.email);
  setText("#account-id", account.id);
  let status = account.status;
  if (account.status_reason) status += `: ${account.status_reason}`;
  setText("#status", status);
  setText("#created", time(account.created_at));
  const terms = account.terms || {};
  const accepted = $("#terms-accepted");
  if (terms.accepted_version) {
    accepted.replaceChildren(`Version ${terms.accepted_version}, `, time(terms.accepted_at));
  } else {
    accepted.textContent = "Not recorded";
  }
  setText("#terms-current", terms.current_version ? `Version ${terms.current_version}` : "—");
  const box = $("#terms-accept");
  box.hidden = !terms.needs_acceptance;
  if (terms.needs_acceptance) box.replaceChildren(box.firstElementChild, acceptTermsButton(terms, loadAccount));
  const threshold = account.low_balance_threshold_usd;
  $("#threshold").value = threshold ? String(threshold).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "") : "";
}
