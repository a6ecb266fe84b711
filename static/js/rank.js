/* Pickwise ranking: drag-and-drop and keyboard on top of the plain rank <select>s.
 *
 * Without JavaScript the ranking partial is a list of <select name="<c>.rank.<image>">; this
 * script keeps those selects as the single source of truth the form submits, and adds:
 *   - drag a row to reorder the ranking (HTML5 drag and drop);
 *   - digits 1..9 put image A..I next in the ranking, "=" then a digit ties it with the previous;
 *   - Backspace takes back the last image, Escape clears, Enter submits.
 * Best-of-N and pairwise modes: a digit picks image N, "=" picks the tie.
 * No dependencies; works again after every htmx swap (htmx:load).
 */
(function () {
  "use strict";

  function rankForm() { return document.querySelector("form[data-rank-form]"); }

  function initFull(fieldset) {
    var list = fieldset.querySelector(".ann-rank-list");
    if (!list || list.dataset.rankReady) return;
    list.dataset.rankReady = "1";
    var ties = fieldset.dataset.ties === "true";
    var rows = Array.prototype.slice.call(list.querySelectorAll("li[data-image]"));
    var original = rows.map(function (li) { return li.dataset.image; });
    var form = fieldset.closest("form");
    var state = { groups: [], pendingTie: false };

    rows.forEach(function (li, index) {
      var figure = form && form.querySelector('.ann-image[data-image="' + li.dataset.image + '"] img');
      var badge = document.createElement("span");
      badge.className = "rank-badge";
      li.prepend(badge);
      if (figure) {
        var thumb = document.createElement("img");
        thumb.src = figure.src; thumb.alt = ""; thumb.className = "rank-thumb";
        badge.after(thumb);
      }
      var key = document.createElement("kbd");
      key.textContent = String(index + 1);
      key.title = "Press " + (index + 1) + " to rank this image next";
      li.append(key);
      if (ties) {
        var tie = document.createElement("button");
        tie.type = "button"; tie.className = "rank-tie secondary"; tie.textContent = "= tie with above";
        tie.addEventListener("click", function () { toggleTie(li.dataset.image); });
        li.append(tie);
      }
      li.draggable = true;
      li.addEventListener("dragstart", function (e) {
        e.dataTransfer.setData("text/plain", li.dataset.image);
        e.dataTransfer.effectAllowed = "move";
      });
      li.addEventListener("dragover", function (e) { e.preventDefault(); li.classList.add("rank-dragover"); });
      li.addEventListener("dragleave", function () { li.classList.remove("rank-dragover"); });
      li.addEventListener("drop", function (e) {
        e.preventDefault();
        li.classList.remove("rank-dragover");
        var moved = e.dataTransfer.getData("text/plain");
        if (!moved || moved === li.dataset.image) return;
        var order = currentOrder().filter(function (id) { return id !== moved; });
        var target = order.indexOf(li.dataset.image);
        var rect = li.getBoundingClientRect();
        var after = e.clientY > rect.top + rect.height / 2;
        order.splice(after ? target + 1 : target, 0, moved);
        state.groups = order.map(function (id) { return [id]; });
        state.pendingTie = false;
        render();
      });
      li.querySelector("select").addEventListener("change", readSelects);
    });

    function currentOrder() {
      return Array.prototype.map.call(list.querySelectorAll("li[data-image]"), function (li) { return li.dataset.image; });
    }
    function ranked() { return [].concat.apply([], state.groups); }
    function toggleTie(id) {
      var flat = ranked();
      if (flat.indexOf(id) < 0) { state.groups = currentOrder().map(function (x) { return [x]; }); }
      var gi = state.groups.findIndex(function (g) { return g.indexOf(id) >= 0; });
      var group = state.groups[gi];
      if (group.length > 1 && group[0] !== id) {           // untie: split it off after its group
        group.splice(group.indexOf(id), 1);
        state.groups.splice(gi + 1, 0, [id]);
      } else if (gi > 0 && group.length === 1) {            // tie with the group above
        state.groups.splice(gi, 1);
        state.groups[gi - 1].push(id);
      }
      render();
    }
    function readSelects() {                                 // a select changed by hand (no-drag path)
      var byRank = {};
      rows.forEach(function (li) {
        var value = li.querySelector("select").value;
        if (value) (byRank[value] = byRank[value] || []).push(li.dataset.image);
      });
      state.groups = Object.keys(byRank).sort(function (a, b) { return a - b; }).map(function (k) { return byRank[k]; });
      render();
    }
    function render() {
      var flat = ranked();
      var orderIds = flat.concat(original.filter(function (id) { return flat.indexOf(id) < 0; }));
      orderIds.forEach(function (id) { list.appendChild(list.querySelector('li[data-image="' + id + '"]')); });
      rows.forEach(function (li) {
        var id = li.dataset.image;
        var gi = state.groups.findIndex(function (g) { return g.indexOf(id) >= 0; });
        var select = li.querySelector("select");
        select.value = gi >= 0 ? String(gi + 1) : "";
        li.classList.toggle("rank-ranked", gi >= 0);
        li.classList.toggle("rank-tied", gi >= 0 && state.groups[gi][0] !== id);
        li.querySelector(".rank-badge").textContent = gi >= 0 ? "#" + (gi + 1) : "–";
      });
      fieldset.dataset.ranked = String(flat.length);
    }
    fieldset.rankKey = function (key) {
      if (/^[1-9]$/.test(key)) {
        var id = original[Number(key) - 1];
        if (!id || ranked().indexOf(id) >= 0) return true;
        if (state.pendingTie && state.groups.length) state.groups[state.groups.length - 1].push(id);
        else state.groups.push([id]);
        state.pendingTie = false;
        render();
        return true;
      }
      if (key === "=" && ties) { state.pendingTie = true; return true; }
      if (key === "Backspace") {
        var last = state.groups[state.groups.length - 1];
        if (last) { last.pop(); if (!last.length) state.groups.pop(); }
        render();
        return true;
      }
      if (key === "Escape") { state.groups = []; state.pendingTie = false; render(); return true; }
      return false;
    };
    render();
  }

  function initChoice(fieldset) {
    var inputs = Array.prototype.slice.call(fieldset.querySelectorAll("input[type=radio], input[type=checkbox]"));
    fieldset.rankKey = function (key) {
      var input = null;
      if (/^[1-9]$/.test(key)) input = inputs.filter(function (i) { return i.value !== "tie"; })[Number(key) - 1];
      if (key === "=") input = inputs.filter(function (i) { return i.value === "tie"; })[0];
      if (!input) return false;
      input.click();
      return true;
    };
  }

  function init(root) {
    (root.querySelectorAll ? root : document).querySelectorAll("fieldset.ann-ranking").forEach(function (fs) {
      if (fs.dataset.mode === "full") initFull(fs); else initChoice(fs);
    });
    var form = rankForm();
    if (form && !form.dataset.startedAt) form.dataset.startedAt = String(Date.now());
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var form = rankForm();
    if (!form) return;
    var tag = (e.target.tagName || "").toLowerCase();
    if (tag === "textarea" || tag === "select" || (tag === "input" && e.target.type !== "radio" && e.target.type !== "checkbox")) return;
    if (e.key === "Enter") { e.preventDefault(); form.requestSubmit(); return; }
    var fieldset = form.querySelector("fieldset.ann-ranking");
    if (fieldset && fieldset.rankKey && fieldset.rankKey(e.key)) e.preventDefault();
  });

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!form.matches || !form.matches("form[data-rank-form]")) return;
    var duration = form.querySelector("input[name=duration_ms]");
    if (duration && form.dataset.startedAt) duration.value = String(Date.now() - Number(form.dataset.startedAt));
  }, true);

  // Let htmx swap a 400 answer (it holds the form with the error message).
  document.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail.xhr && e.detail.xhr.status === 400) { e.detail.shouldSwap = true; e.detail.isError = false; }
  });
  document.addEventListener("htmx:load", function (e) { init(e.detail.elt); });
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", function () { init(document); });
  else init(document);
})();
