// The dashboard: credit, tier and limits, notices, usage per day and model (a chart whose total
// is checked against the ledger's usage entries), request history and the ledger. After Stripe
// Checkout the person lands here with ?purchase=<session>, and the page waits for the webhook's
// ledger entry before it says the credit is there.

import { $, api, count, el, flash, nanos, run, setText, signedIn, time, usd } from "./console.js";
import { acceptTermsButton } from "./terms-accept.js";

const DAYS = 30;
const PAGE = 20;
// At least 3:1 against the white background, and apart from each other for the common
// colour-vision deficiencies (after Okabe–Ito, darkened where it was too light).
const COLOURS = ["#0072B2", "#D55E00", "#007A5A", "#A3367F", "#000000", "#7B3294", "#8C510A", "#01665E"];
const KINDS = {
  welcome_bonus: "Welcome bonus",
  purchase: "Purchase",
  usage: "Usage",
  referral_reward: "Referral reward",
  adjustment: "Adjustment",
  credit_reset: "Credit reset",
};

let chart = null;
const cursors = { requests: null, ledger: null };

run(async () => {
  await signedIn();
  $("#requests-more").addEventListener("click", () => loadRequests(true));
  $("#ledger-more").addEventListener("click", () => loadLedger(true));
  await refresh();
  const params = new URLSearchParams(location.search);
  if (params.has("purchase")) {
    let sessionId = params.get("purchase");
    try {
      sessionId = sessionId || sessionStorage.getItem("kyma-checkout");
      sessionStorage.removeItem("kyma-checkout");
    } catch {
      // no storage: a purchase credited within the last hour counts (see awaitPurchase)
    }
    awaitPurchase(sessionId, Date.now()).catch((error) => flash(error.message, "error"));
  }
});

async function refresh() {
  await Promise.all([loadAccount(), loadUsage(), loadRequests(false), loadLedger(false)]);
}

async function loadAccount() {
  const account = await api("/v1/account");
  setText("#balance", usd(account.balance_usd));
  setText("#held", usd(account.held_usd));
  setText("#available", usd(account.available_usd));
  setText("#purchased", usd(account.total_purchased_usd));
  const limits = account.limits || {};
  setText("#tier", String(account.tier) + (limits.pinned ? " (set by Kyma)" : ""));
  setText("#rpm", count(limits.requests_per_minute));
  setText("#model-rpm", count(limits.requests_per_minute_per_model));
  setText("#tpm", count(limits.tokens_per_minute));

  const items = (account.notices || []).map((notice) => {
    const item = el("li", { class: "notice" }, notice.message + " ");
    if (notice.kind === "terms_changed" && account.terms) item.append(acceptTermsButton(account.terms, loadAccount));
    return item;
  });
  if (account.status && account.status !== "active") {
    const until = account.suspended_until ? " until " : "";
    const item = el("li", { class: "notice error" }, `Your account is ${account.status}${until}`);
    if (until) item.append(time(account.suspended_until));
    item.append(account.status_reason ? `: ${account.status_reason}` : ".");
    items.unshift(item);
  }
  $("#notice-list").replaceChildren(...items);
  $("#notices").hidden = items.length === 0;
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

async function loadUsage() {
  const today = new Date();
  const days = [];
  for (let back = DAYS - 1; back >= 0; back--) {
    days.push(isoDay(new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - back))));
  }
  const query = new URLSearchParams({ start_day: days[0], end_day: days[days.length - 1] });
  const rows = (await api("/v1/account/usage?" + query)).data || [];

  const totals = { requests: 0, prompt: 0, completion: 0, cost: 0n };
  const body = $("#usage-table tbody");
  body.replaceChildren(
    ...rows.map((row) => {
      totals.requests += row.requests;
      totals.prompt += row.prompt_tokens;
      totals.completion += row.completion_tokens;
      totals.cost += nanos(row.cost_usd) ?? 0n;
      const estimated = row.estimated_requests ? ` (${row.estimated_requests} estimated)` : "";
      return el(
        "tr",
        {},
        el("td", { text: row.day }),
        el("td", { text: row.model }),
        el("td", { class: "num", text: count(row.requests) + estimated }),
        el("td", { class: "num", text: count(row.prompt_tokens) }),
        el("td", { class: "num", text: count(row.completion_tokens) }),
        el("td", { class: "num", text: usd(row.cost_usd) }),
      );
    }),
  );
  const foot = $("#usage-table tfoot");
  $('[data-total="requests"]', foot).textContent = count(totals.requests);
  $('[data-total="prompt"]', foot).textContent = count(totals.prompt);
  $('[data-total="completion"]', foot).textContent = count(totals.completion);
  $('[data-total="cost"]', foot).textContent = usd(totals.cost);
  setText(
    "#usage-summary",
    `${plural(totals.requests, "request")}, ${plural(totals.prompt + totals.completion, "token")}, ${usd(totals.cost)} in the last ${DAYS} days.`,
  );
  drawChart(days, rows);
  await reconcile(days[0], totals.cost);
}

function plural(n, noun) {
  return `${count(n)} ${noun}${n === 1 ? "" : "s"}`;
}

function drawChart(days, rows) {
  const models = [...new Set(rows.map((row) => row.model))].sort();
  const datasets = models.map((model, index) => {
    const byDay = new Map(rows.filter((row) => row.model === model).map((row) => [row.day, row.cost_usd]));
    return {
      label: model,
      // Plotted as floats (a picture); every figure shown as text is exact.
      data: days.map((day) => Number(nanos(byDay.get(day) ?? "0")) / 1e9),
      exact: days.map((day) => byDay.get(day) ?? "0"),
      backgroundColor: COLOURS[index % COLOURS.length],
    };
  });
  if (!window.Chart) return; // the table below carries the same figures
  if (chart) {
    chart.data.labels = days;
    chart.data.datasets = datasets;
    chart.update();
    return;
  }
  chart = new window.Chart($("#usage-chart"), {
    type: "bar",
    data: { labels: days, datasets },
    options: {
      animation: false,
      maintainAspectRatio: false,
      scales: {
        x: { stacked: true, ticks: { maxRotation: 0, autoSkipPadding: 12 } },
        y: {
          stacked: true,
          beginAtZero: true,
          title: { display: true, text: "USD" },
          ticks: { callback: (value) => "$" + Number(value).toLocaleString("en-US", { maximumSignificantDigits: 3 }) },
        },
      },
      plugins: {
        legend: { position: "bottom" },
        tooltip: {
          callbacks: { label: (item) => `${item.dataset.label}: ${usd(item.dataset.exact[item.dataIndex])}` },
        },
      },
    },
  });
}

// The chart's total against the ledger: the usage entries since the window's first day, read
// a few pages deep at most (a busy account's check is left to the API's own reports).
async function reconcile(firstDay, usageTotal) {
  const since = Date.parse(firstDay + "T00:00:00Z");
  let charged = 0n;
  let token = null;
  for (let page = 0; page < 5; page++) {
    const query = new URLSearchParams({ limit: "200" });
    if (token) query.set("page_token", token);
    const reply = await api("/v1/account/ledger?" + query);
    let older = false;
    for (const entry of reply.data) {
      if (timestamp(entry.created_at) < since) {
        older = true;
        break;
      }
      if (entry.kind === "usage") charged -= nanos(entry.amount_usd) ?? 0n;
    }
    token = reply.next_page_token;
    if (older || !token) {
      const note =
        charged === usageTotal
          ? `The ledger's usage charges over these days add up to the same ${usd(charged)}.`
          : `The ledger's usage charges over these days add up to ${usd(charged)}; the difference is requests still settling or made just before midnight UTC.`;
      setText("#usage-reconciled", note);
      return;
    }
  }
  setText("#usage-reconciled", "Too many ledger entries over these days to add up here.");
}

function timestamp(value) {
  return typeof value === "number" ? value * 1000 : Date.parse(value);
}

async function loadRequests(more) {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (more && cursors.requests) query.set("page_token", cursors.requests);
  let reply;
  try {
    reply = await api("/v1/account/requests?" + query);
  } catch (error) {
    if (error.status !== 404) throw error;
    setText("#requests-empty", "Request history is not available on this Kyma.");
    $("#requests-empty").hidden = false;
    $("#requests-table").closest(".table-wrap").hidden = true;
    return;
  }
  const rows = reply.data.map((request) =>
    el(
      "tr",
      {},
      el("td", {}, time(request.created_at)),
      el("td", { text: request.model }),
      el("td", { text: String(request.status) + (request.stream ? " (stream)" : "") }),
      el("td", { class: "num", text: count(request.prompt_tokens) }),
      el("td", { class: "num", text: count(request.completion_tokens) }),
      el("td", { class: "num", text: usd(request.cost_usd) }),
      el("td", {}, el("code", { text: request.id })),
    ),
  );
  const body = $("#requests-table tbody");
  if (more) body.append(...rows);
  else body.replaceChildren(...rows);
  cursors.requests = reply.next_page_token || null;
  $("#requests-more").hidden = !cursors.requests;
  $("#requests-empty").hidden = body.children.length > 0;
}

async function loadLedger(more) {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (more && cursors.ledger) query.set("page_token", cursors.ledger);
  const reply = await api("/v1/account/ledger?" + query);
  const rows = reply.data.map((entry) =>
    el(
      "tr",
      {},
      el("td", {}, time(entry.created_at)),
      el("td", { text: KINDS[entry.kind] || entry.kind }),
      el("td", { text: entry.reason }),
      el("td", { class: "num" + (String(entry.amount_usd).startsWith("-") ? "" : " amount-in"), text: usd(entry.amount_usd, { signed: true }) }),
    ),
  );
  const body = $("#ledger-table tbody");
  if (more) body.append(...rows);
  else body.replaceChildren(...rows);
  cursors.ledger = reply.next_page_token || null;
  $("#ledger-more").hidden = !cursors.ledger;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Back from Stripe Checkout: the credit lands when Stripe's webhook does, maybe later than the
// person. Look for the purchase's ledger entry (its reference is the Checkout Session) until
// it is there; then show it and everything it changed (balance, tier).
async function awaitPurchase(sessionId, since) {
  // Without a session id (Stripe did not say, and the tab kept nothing): a purchase credited
  // within the hour before this page, or since.
  const matches = (entry) =>
    entry.kind === "purchase" && (sessionId ? entry.reference === sessionId : timestamp(entry.created_at) >= since - 3600 * 1000);
  const box = $("#purchase-status");
  box.hidden = false;
  box.className = "notice";
  box.textContent = "Thank you! Waiting for Stripe to confirm your payment; this page updates by itself.";
  box.focus();
  for (let attempt = 0; attempt < 120; attempt++) {
    const reply = await api("/v1/account/ledger?limit=50");
    const entry = reply.data.find(matches);
    if (entry) {
      box.className = "notice ok";
      box.textContent = `Your purchase of ${usd(entry.amount_usd)} is credited.`;
      history.replaceState(null, "", "/");
      await refresh();
      return;
    }
    await sleep(Math.min(1000 + attempt * 500, 10000));
  }
  box.textContent = "Stripe has not confirmed the payment yet. It will appear in your ledger once it has; you may leave this page.";
  flash("Still waiting for Stripe.");
}
