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

// Keyboard edits keep the focus where the hand is: htmx swaps the whole workspace after every edit, so the
// control that made the change (a ↑/↓ button, "+ Add", Save) is focused again in the new workspace; a move
// button that can no longer move (the item reached the top or bottom) hands the focus to its other arrow.
// A live region says where the moved component is now.
(function () {
  "use strict";
  let pending = null;

  document.addEventListener("htmx:beforeSwap", function (event) {
    if (!event.detail.target || event.detail.target.id !== "workspace") return;
    const active = document.activeElement;
    if (!active || !active.id || !document.getElementById("workspace").contains(active)) { pending = null; return; }
    const item = active.closest("li.tpl-component");
    pending = { id: active.id, move: active.dataset.move || "", component: active.dataset.component || "",
                position: item ? Number(item.dataset.position) : 0 };
  });

  document.addEventListener("htmx:afterSettle", function () {
    const workspace = document.getElementById("workspace");
    if (!pending || !workspace) return;
    const want = pending;
    pending = null;
    let target = document.getElementById(want.id);
    if (want.move) {
      const other = want.move === "up" ? "down" : "up";
      if (!target || target.disabled) target = document.getElementById("move-" + other + "-" + want.component);
      const item = workspace.querySelector('li.tpl-component[data-name="' + want.component + '"]');
      const status = document.querySelector("[data-builder-status]");
      if (item && status) {
        status.textContent = want.component + " moved " + want.move + ": now " + item.dataset.position + " of " + item.dataset.count + ".";
      }
    }
    if (!target && want.position) {                     // removed: the component now in its place, or the last one
      const links = workspace.querySelectorAll("ol.tpl-components li[data-name] > a");
      target = links[Math.min(want.position, links.length) - 1] || null;
    }
    if (target && !target.disabled) target.focus();
  });
})();
