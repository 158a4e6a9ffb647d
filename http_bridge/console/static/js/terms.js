// The terms of service, from GET /v1/terms (public).

import { $, api, run, setText, time } from "./console.js";

run(async () => {
  const terms = await api("/v1/terms");
  const meta = $("#terms-meta");
  meta.replaceChildren(`Version ${terms.version}, published `, time(terms.published_at), ".");
  meta.removeAttribute("data-loading");
  setText("#terms-text", terms.text);
});
