// The console's few behaviours (the CSP allows no inline script): a confirmation before a
// plain form marked data-confirm is sent (htmx asks its own hx-confirm), a refusal swapped
// into a region marked data-swap-refusals, and a readable message when an htmx request fails.
"use strict";

document.addEventListener("submit", function (event) {
  var form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.confirm) return;
  if (form.hasAttribute("hx-post") && window.htmx) return; // htmx confirms it
  if (!window.confirm(form.dataset.confirm)) event.preventDefault();
});

document.addEventListener("htmx:responseError", function (event) {
  var xhr = event.detail.xhr;
  if (xhr.status === 401) return; // HX-Redirect takes the page to the login form
  var box = document.getElementById("console-error");
  if (!box) {
    box = document.createElement("p");
    box.id = "console-error";
    box.className = "error";
    box.setAttribute("role", "alert");
    document.querySelector("main").prepend(box);
  }
  var text = "";
  try {
    text = JSON.parse(xhr.responseText).error || "";
  } catch (ignored) {
    text = "";
  }
  box.textContent = "The request failed (" + xhr.status + ")" + (text ? ": " + text : ".");
});

// htmx swaps only 2xx answers: a 4xx the server wrote for the page (a bulk action refused:
// its filter, its confirmation) goes into the region that asked for it instead of being lost.
// 401 is left to HX-Redirect (the login form).
document.addEventListener("htmx:beforeSwap", function (event) {
  var detail = event.detail;
  var status = detail.xhr.status;
  if (status < 400 || status >= 500 || status === 401) return;
  if (!detail.target || !detail.target.hasAttribute("data-swap-refusals")) return;
  detail.shouldSwap = true;
  detail.isError = false;
});
