// Referrals: the link to share, and each referral's state and progress to the token threshold
// at which both accounts are rewarded.

import { $, api, copy, count, el, run, setText, signedIn, time, usd } from "./console.js";

const STATES = {
  pending: "Pending: not enough tokens used yet",
  verified: "Verified: rewarded",
  under_review: "Under review",
  review: "Under review",
  rejected: "Rejected",
  flagged: "Flagged",
};

run(async () => {
  await signedIn();
  const [account, referrals] = await Promise.all([api("/v1/account"), api("/v1/account/referrals")]);
  const link = $("#referral-link");
  link.value = account.referral_link || "";
  $("#copy-link").addEventListener("click", () => copy(link.value, $("#copy-link-status"), link));
  $("#program-off").hidden = referrals.program_enabled !== false;

  const rows = referrals.data;
  const threshold = referrals.tokens_required ?? rows.map(required).find(Boolean);
  setText(
    "#referral-terms",
    `When someone signs up with your link and has used ${threshold ? count(threshold) : "enough"} tokens, ` +
      `you both receive ${usd(referrals.reward_usd)} of credit.`,
  );
  $("#referrals-empty").hidden = rows.length > 0;
  $("#referrals-table").closest(".table-wrap").hidden = rows.length === 0;
  $("#referrals-table tbody").replaceChildren(...rows.map(row));
});

function required(referral) {
  return referral.threshold_tokens ?? referral.tokens_required ?? null;
}

function row(referral) {
  const needed = required(referral);
  const used = Math.min(referral.tokens_used ?? 0, needed ?? Infinity);
  const progress = el("td", {});
  if (needed) {
    const label = `${count(referral.tokens_used ?? 0)} of ${count(needed)} tokens`;
    progress.append(el("progress", { max: String(needed), value: String(used), "aria-label": label }), " ", label);
  } else {
    progress.textContent = "—";
  }
  const state = STATES[referral.status] || referral.status;
  return el(
    "tr",
    {},
    el("td", { text: referral.referred_email }),
    el("td", {}, time(referral.created_at)),
    el("td", { text: state + (referral.flagged ? " (flagged for review)" : "") }),
    progress,
    el("td", {}, time(referral.verified_at)),
  );
}
