// Kyma's status (public): each model's availability over the last hour and day, and incidents.

import { $, api, el, run, time } from "./console.js";

const STATES = {
  operational: "Operational",
  degraded: "Degraded: some of its providers are failing",
  down: "Down",
};

function percent(value, requests) {
  if (value == null) return "no requests";
  const share = (Number(value) * 100).toFixed(2) + "%";
  return requests == null ? share : `${share} of ${Number(requests).toLocaleString("en-US")}`;
}

run(async () => {
  const status = await api("/v1/status");
  $("#models-table tbody").replaceChildren(
    ...status.models.map((model) =>
      el(
        "tr",
        {},
        el("th", { scope: "row", text: model.id ?? model.model }),
        el("td", { text: STATES[model.state] || model.state }),
        el("td", { class: "num", text: percent(model.availability_1h, model.requests_1h) }),
        el("td", { class: "num", text: percent(model.availability_24h, model.requests_24h) }),
      ),
    ),
  );
  const incidents = status.incidents || [];
  $("#no-incidents").hidden = incidents.length > 0;
  $("#incident-list").replaceChildren(
    ...incidents.map((incident) => {
      const dates = el("p", { class: "help" }, "Posted ", time(incident.created_at));
      if (incident.updated_at) dates.append(", updated ", time(incident.updated_at));
      if (incident.resolved_at) dates.append(", resolved ", time(incident.resolved_at));
      return el(
        "li",
        { class: "card" },
        el("h3", { text: `${incident.title} (${incident.status})` }),
        dates,
        el("p", { class: "terms", text: incident.body || "" }),
      );
    }),
  );
});
