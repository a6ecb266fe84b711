// The Members page: an htmx answer of 400 (a refused change) is the members fragment with the error next
// to its field, so it is swapped in like a success; after any swap the focus goes to what the answer is
// about (the field in error, or the status line saying what changed).
(function () {
  "use strict";
  var swapping = false;
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (!event.detail.target || event.detail.target.id !== "members") { return; }
    var xhr = event.detail.xhr;
    if (xhr && xhr.status === 400) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
    swapping = event.detail.shouldSwap;
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (!swapping) { return; }
    swapping = false;
    var target = document.querySelector("#members [data-focus]");
    if (target) { target.focus(); }
  });
})();
