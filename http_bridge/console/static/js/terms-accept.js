// The button that accepts the current terms, shown wherever the console says they changed.

import { api, el, flash } from "./console.js";

export function acceptTermsButton(terms, after) {
  const button = el("button", { type: "button", class: "secondary", text: `Accept the terms (version ${terms.current_version})` });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api("/v1/account/terms/accept", { method: "POST", body: { version: terms.current_version } });
      flash("Thank you: you accepted the current terms of service.", "ok");
      await after();
    } catch (error) {
      flash(error.message, "error");
      button.disabled = false;
    }
  });
  return button;
}
