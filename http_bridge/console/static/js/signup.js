// Sign-up: address (with the referral code of the link that brought the person here), the
// terms accepted, then the mailed code; the console asks for a session, never a key.

import { $, api, deviceId, nextPath, run } from "./console.js";
import { codeSteps } from "./codes.js";

run(async () => {
  let termsVersion = null;
  codeSteps("signup", {
    async send(email) {
      const form = $("#signup-form");
      if (!form.elements.namedItem("accept_terms").checked) {
        throw Object.assign(new Error("Please read and accept the terms of service to sign up."), { param: "accept_terms" });
      }
      const body = { email };
      const code = form.elements.namedItem("referral_code").value.trim();
      if (code) body.referral_code = code;
      const device = deviceId();
      await api("/v1/auth/signup", {
        method: "POST",
        body,
        headers: device ? { "x-client-fingerprint": device } : {},
      });
    },
    async check(email, code) {
      const body = { email, code, session: true };
      if (termsVersion) body.accepted_terms_version = termsVersion;
      const device = deviceId();
      await api("/v1/auth/verify", {
        method: "POST",
        body,
        headers: device ? { "x-client-fingerprint": device } : {},
      });
      location.assign(nextPath("/"));
    },
  });
  try {
    const terms = await api("/v1/terms");
    termsVersion = terms.version;
    $("[data-terms-version]").textContent = ` (version ${terms.version})`;
  } catch {
    // The terms page says what is wrong; sign-up goes on without naming a version.
  }
});
