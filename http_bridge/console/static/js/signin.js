// Sign-in by a code mailed to the account's address; a new session each time.

import { api, flash, nextPath, run } from "./console.js";
import { codeSteps } from "./codes.js";

run(async () => {
  const params = new URLSearchParams(location.search);
  if (params.has("signed_out")) flash("You are signed out.", "ok");
  else if (params.has("next") && params.get("next") !== "/") flash("Please sign in to continue.");
  codeSteps("signin", {
    async send(email) {
      await api("/v1/auth/signin", { method: "POST", body: { email } });
    },
    async check(email, code) {
      await api("/v1/auth/signin/verify", { method: "POST", body: { email, code } });
      location.assign(nextPath("/"));
    },
  });
});
