// Keyboard shortcuts: an element with data-key="x" is clicked when x is pressed, one with
// data-focus-key="x" is focused; never while typing in a field, never with a modifier.
"use strict";
document.addEventListener("keydown", function (e) {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  var t = e.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
            t.isContentEditable)) return;
  var key = (e.key || "").toLowerCase();
  if (!/^[a-z]$/.test(key)) return;
  var el = document.querySelector('[data-key="' + key + '"]');
  if (el) { e.preventDefault(); el.click(); return; }
  el = document.querySelector('[data-focus-key="' + key + '"]');
  if (el) { e.preventDefault(); el.focus(); }
});
// a decision form is sent once: a second key press while the next page loads does nothing
document.addEventListener("submit", function (e) {
  var f = e.target;
  if (f.dataset.sent) { e.preventDefault(); return; }
  f.dataset.sent = "1";
});
