// The two steps of signing up or in: an address, then the six-digit code mailed to it.

import { $, onSubmit } from "./console.js";

// `send(email)` asks for a code; `check(email, code)` uses it and leaves the page.
export function codeSteps(prefix, { send, check }) {
  const emailStep = $(`#${prefix}-email-step`);
  const codeStep = $(`#${prefix}-code-step`);
  const emailForm = $(`#${prefix}-form`);
  const codeForm = $(`#${prefix}-code-form`);
  let email = "";

  onSubmit(emailForm, $(`#${prefix}-error`), async () => {
    const input = emailForm.elements.namedItem("email");
    email = input.value.trim();
    if (!input.checkValidity()) throw Object.assign(new Error("Enter a valid email address."), { param: "email" });
    await send(email);
    $("[data-sent-to]", codeStep).textContent = email;
    emailStep.hidden = true;
    codeStep.hidden = false;
    codeForm.reset();
    $(`#${prefix}-code-title`).focus();
  });

  onSubmit(codeForm, $(`#${prefix}-code-error`), async () => {
    const code = codeForm.elements.namedItem("code").value.trim();
    if (!/^\d{6}$/.test(code)) throw Object.assign(new Error("The code is the six digits in the mail."), { param: "code" });
    await check(email, code);
  });

  $('[data-action="restart"]', codeStep).addEventListener("click", () => {
    codeStep.hidden = true;
    emailStep.hidden = false;
    emailForm.elements.namedItem("email").focus();
  });
}
