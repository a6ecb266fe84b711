// Drag-to-reorder for the template builder's component list (the ↑/↓ buttons are the keyboard way).
// On drop it fills the hidden reorder form and submits it; htmx swaps in the new workspace.
(function () {
  "use strict";
  let dragged = null;

  function listOf(el) { return el && el.closest("ol.tpl-components"); }
  function order(list) {
    return Array.from(list.querySelectorAll("li[data-name]")).map(function (li) { return li.dataset.name; });
  }

  document.addEventListener("dragstart", function (event) {
    const item = event.target.closest && event.target.closest("li.tpl-component");
    if (!item) return;
    dragged = item;
    dragged.dataset.before = order(listOf(item)).join(",");
    item.classList.add("dragging");
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", item.dataset.name);
  });

  document.addEventListener("dragover", function (event) {
    if (!dragged) return;
    const over = event.target.closest && event.target.closest("li.tpl-component");
    if (!over || over === dragged || listOf(over) !== listOf(dragged)) return;
    event.preventDefault();
    const box = over.getBoundingClientRect();
    const after = event.clientY > box.top + box.height / 2;
    over.parentNode.insertBefore(dragged, after ? over.nextSibling : over);
  });

  document.addEventListener("drop", function (event) {
    if (dragged) event.preventDefault();
  });

  document.addEventListener("dragend", function () {
    if (!dragged) return;
    const item = dragged;
    dragged = null;
    item.classList.remove("dragging");
    const list = listOf(item);
    const now = order(list).join(",");
    if (now === item.dataset.before) return;
    const form = document.getElementById(list.dataset.reorderForm);
    form.querySelector("input[name=order]").value = now;
    form.requestSubmit();
  });
})();
