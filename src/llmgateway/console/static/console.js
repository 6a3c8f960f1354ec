// The console's few behaviours (the CSP allows no inline script): a confirmation before a
// plain form marked data-confirm is sent (htmx asks its own hx-confirm), and a readable
// message when an htmx request fails.
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
