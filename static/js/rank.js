/* Pickwise annotation page: rank by click, keys and drag; rank badges on the candidates; a full-size view and a
 * two-up compare; inline errors for what is missing, and a Submit that says what it still needs.
 *
 * The form is plain HTML that works without JavaScript (a rank <select> per image, radios, links to the
 * full-size images). This script keeps those controls as the single source of truth the form submits, and adds:
 *   - click a candidate to rank it next (Shift+click: tie it with the one before; click again: take it back);
 *     in best-of-N and pairwise modes a click picks it;
 *   - keys: digits 1..9 rank (or pick) image A..I, "=" then a digit ties, Backspace takes back, Escape clears,
 *     Enter submits, V opens the full-size view, C the two-up compare, ? the shortcut sheet. They act only
 *     while the focus is not on a link, a button or a text field, so Enter on a link still follows it;
 *   - drag the rows of the ranking list to reorder them;
 *   - forms marked data-validate check themselves on submit: every missing answer gets an error next to its
 *     field and the focus moves to the first one; the Submit button's note always says what is still needed.
 * No dependencies; runs again on every htmx swap (htmx:load).
 */
(function () {
  "use strict";

  var LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  var BLOCKERS = "a[href], button, summary, select, textarea, [contenteditable]:not([contenteditable=false]), " +
                 "[role=button], [role=link], [role=textbox], [role=combobox]";
  var errorSeq = 0;

  function $$(root, selector) { return Array.prototype.slice.call(root.querySelectorAll(selector)); }
  function rankForm() { return document.querySelector("form[data-rank-form]"); }
  function textOf(el) { return el ? el.textContent.replace(/\*|\(optional\)/g, "").replace(/\s+/g, " ").trim() : ""; }
  /** A label as the subject of a sentence: quoted when it ends in its own punctuation ("Why is it the best?"). */
  function named(label) { return /[?!.:]$/.test(label) ? "“" + label + "”" : label; }
  function listWords(items) {
    if (items.length < 2) return items.join("");
    return items.slice(0, -1).join(", ") + " and " + items[items.length - 1];
  }

  /** Shortcuts act only when the focus is not on a link, a button or a text field (radios and checkboxes are fine). */
  function allowsShortcuts(el) {
    if (!el || el === document.body || el === document.documentElement) return true;
    if (el.matches(BLOCKERS)) return false;
    if (el.tagName === "INPUT") return el.type === "radio" || el.type === "checkbox";
    return true;
  }

  function letterOf(form, id, index) {
    var figure = form.querySelector('.ann-image[data-image="' + id + '"]');
    return (figure && figure.dataset.letter) || LETTERS[index % 26];
  }

  // --- full ranking ------------------------------------------------------------------------------

  function fullRanking(fieldset, form, changed) {
    var list = fieldset.querySelector(".ann-rank-list");
    if (!list) return null;
    var ties = fieldset.dataset.ties === "true";
    var partial = fieldset.dataset.partial === "true";
    var legend = textOf(fieldset.querySelector("legend"));
    var rows = $$(list, "li[data-image]");
    var original = rows.map(function (li) { return li.dataset.image; });
    var letters = {};
    original.forEach(function (id, i) { letters[id] = letterOf(form, id, i); });
    var state = { groups: [], pendingTie: false };

    rows.forEach(function (li, index) {
      var handle = document.createElement("span");
      handle.className = "rank-handle"; handle.textContent = "⠿"; handle.title = "Drag to reorder";
      handle.setAttribute("aria-hidden", "true");
      li.prepend(handle);
      if (index < 9) {
        var key = document.createElement("kbd");
        key.textContent = String(index + 1);
        key.title = "Press " + (index + 1) + " to rank image " + letters[li.dataset.image] + " next";
        li.append(key);
      }
      if (ties) {
        var tie = document.createElement("button");
        tie.type = "button"; tie.className = "rank-tie secondary"; tie.textContent = "= Tie";
        tie.setAttribute("aria-label", "Tie image " + letters[li.dataset.image] + " with the image above");
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
        if (!moved || moved === li.dataset.image || original.indexOf(moved) < 0) return;
        var order = currentOrder().filter(function (id) { return id !== moved; });
        var target = order.indexOf(li.dataset.image);
        var rect = li.getBoundingClientRect();
        order.splice(e.clientY > rect.top + rect.height / 2 ? target + 1 : target, 0, moved);
        state.groups = order.map(function (id) { return [id]; });
        state.pendingTie = false;
        render();
      });
      li.querySelector("select").addEventListener("change", readSelects);
    });

    function currentOrder() { return $$(list, "li[data-image]").map(function (li) { return li.dataset.image; }); }
    function ranked() { return [].concat.apply([], state.groups); }
    function groupIndex(id) { return state.groups.findIndex(function (g) { return g.indexOf(id) >= 0; }); }
    function toggleTie(id) {
      if (ranked().indexOf(id) < 0) state.groups = currentOrder().map(function (x) { return [x]; });
      var gi = groupIndex(id), group = state.groups[gi];
      if (group.length > 1 && group[0] !== id) {            // untie: split it off after its group
        group.splice(group.indexOf(id), 1);
        state.groups.splice(gi + 1, 0, [id]);
      } else if (gi > 0 && group.length === 1) {             // tie with the group above
        state.groups.splice(gi, 1);
        state.groups[gi - 1].push(id);
      }
      render();
    }
    function readSelects() {                                  // a rank chosen by hand in a row's <select>
      var byRank = {};
      rows.forEach(function (li) {
        var value = li.querySelector("select").value;
        if (value) (byRank[value] = byRank[value] || []).push(li.dataset.image);
      });
      state.groups = Object.keys(byRank).sort(function (a, b) { return a - b; }).map(function (k) { return byRank[k]; });
      render();
    }
    function unrank(id) {
      var gi = groupIndex(id);
      if (gi < 0) return;
      state.groups[gi].splice(state.groups[gi].indexOf(id), 1);
      if (!state.groups[gi].length) state.groups.splice(gi, 1);
    }
    function rankNext(id, tie) {
      if (ranked().indexOf(id) >= 0) return;
      if ((tie || state.pendingTie) && ties && state.groups.length) state.groups[state.groups.length - 1].push(id);
      else state.groups.push([id]);
      state.pendingTie = false;
    }
    function render() {
      var flat = ranked();
      flat.concat(original.filter(function (id) { return flat.indexOf(id) < 0; })).forEach(function (id) {
        list.appendChild(list.querySelector('li[data-image="' + id + '"]'));
      });
      rows.forEach(function (li) {
        var id = li.dataset.image, gi = groupIndex(id);
        li.querySelector("select").value = gi >= 0 ? String(gi + 1) : "";
        li.classList.toggle("rank-ranked", gi >= 0);
        li.classList.toggle("rank-tied", gi >= 0 && state.groups[gi][0] !== id);
        li.querySelector("[data-rank-badge]").textContent = gi >= 0 ? "#" + (gi + 1) : "–";
      });
      var tieButtons = $$(list, ".rank-tie");                // the top row has nothing above it to tie with
      tieButtons.forEach(function (button, i) { button.classList.toggle("is-first", i === 0); });
      fieldset.dataset.ranked = String(flat.length);
      changed();
    }

    readSelects();                                           // an amended answer or a re-rendered form keeps its ranks
    return {
      images: original,
      status: function (id) {
        var gi = groupIndex(id);
        if (gi < 0) return { badge: "", ranked: false, words: "not ranked", action: "rank next" };
        var tied = state.groups[gi].length > 1;
        return { badge: String(gi + 1) + (tied ? "=" : ""), ranked: true, tied: tied,
                 words: "ranked " + (gi + 1) + (tied ? " (tie)" : ""), action: "take back" };
      },
      pick: function (id, tie) {
        if (ranked().indexOf(id) >= 0) unrank(id); else rankNext(id, tie);
        render();
      },
      key: function (key) {
        if (/^[1-9]$/.test(key)) {
          var id = original[Number(key) - 1];
          if (id) { rankNext(id, false); render(); }
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
      },
      problem: function () {
        var flat = ranked();
        var missing = original.filter(function (id) { return flat.indexOf(id) < 0; }).map(function (id) { return letters[id]; });
        if (!partial && missing.length) {
          return { message: legend + ": " + listWords(missing) + (missing.length > 1 ? " are" : " is") + " not ranked yet.",
                   short: "rank " + listWords(missing) };
        }
        if (partial && original.length >= 2 && flat.length < 2) {
          return { message: legend + ": rank at least two images.", short: "rank at least two images" };
        }
        return null;
      },
    };
  }

  // --- best-of-N and pairwise --------------------------------------------------------------------

  function choiceRanking(fieldset, form, changed) {
    var inputs = $$(fieldset, "input[type=radio], input[type=checkbox]");
    if (!inputs.length) return null;
    var pairwise = fieldset.dataset.mode === "pairwise";
    var legend = textOf(fieldset.querySelector("legend"));
    var imageInputs = inputs.filter(function (i) { return i.value !== "tie"; });
    var tieInput = inputs.filter(function (i) { return i.value === "tie"; })[0];
    inputs.forEach(function (input) { input.addEventListener("change", changed); });
    function chosen() { return inputs.filter(function (i) { return i.checked; }).map(function (i) { return i.value; }); }
    return {
      images: imageInputs.map(function (i) { return i.value; }),
      status: function (id) {
        var picked = chosen();
        if (picked.indexOf("tie") >= 0) return { badge: "Tie", ranked: true, words: "tie", action: pairwise ? "choose as better" : "pick" };
        if (picked.indexOf(id) >= 0) {
          return { badge: pairwise ? "Better" : "Best", ranked: true, words: pairwise ? "chosen as better" : "picked as the best",
                   action: "" };
        }
        return { badge: "", ranked: false, words: pairwise ? "not chosen" : "not picked",
                 action: pairwise ? "choose as better" : "pick as the best" };
      },
      pick: function (id) {
        var input = imageInputs.filter(function (i) { return i.value === id; })[0];
        if (input) input.click();
      },
      key: function (key) {
        var input = null;
        if (/^[1-9]$/.test(key)) input = imageInputs[Number(key) - 1];
        if (key === "=") input = tieInput;
        if (!input) return false;
        input.click();
        return true;
      },
      problem: function () {
        if (chosen().length) return null;
        if (pairwise) {
          return { message: legend + ": choose which image is better" + (tieInput ? ", or Tie." : "."),
                   short: "choose the better image" };
        }
        return { message: legend + ": pick the best image.", short: "pick the best image" };
      },
    };
  }

  function rankingOf(form) {
    var fieldset = form && form.querySelector("fieldset.ann-ranking");
    return fieldset && fieldset.ranking;
  }

  // --- the candidates: click to rank, badges, full-size button --------------------------------------

  function enhanceCandidates(form) {
    var ranking = rankingOf(form);
    $$(form, ".ann-image[data-image]").forEach(function (figure) {
      var frame = figure.querySelector(".cand-frame");
      var img = frame && frame.querySelector("img");
      if (!img || frame.dataset.ready) return;
      frame.dataset.ready = "1";
      var id = figure.dataset.image, letter = figure.dataset.letter;
      if (img.complete) sharpen(img);
      if (ranking && ranking.images.indexOf(id) >= 0) {
        var pick = document.createElement("button");
        pick.type = "button"; pick.className = "cand-pick"; pick.dataset.pick = id;
        // A click must not leave the focus on the button, or the keys would stop working until the next click.
        pick.addEventListener("mousedown", function (e) { e.preventDefault(); });
        pick.addEventListener("click", function (e) {
          if (e.detail > 1) return;                           // the second click of a double-click undoes nothing
          ranking.pick(id, e.shiftKey);
        });
        var holder = img.closest("a.ann-enlarge") || img;
        holder.replaceWith(pick);
        pick.append(img);
        img.alt = "Candidate " + letter;
      }
      if (figure.closest("[data-enlarge]") && figure.dataset.full) {
        var zoom = document.createElement("button");
        zoom.type = "button"; zoom.className = "cand-zoom"; zoom.dataset.zoom = id; zoom.textContent = "⤢";
        zoom.title = "Full size (V)";
        zoom.setAttribute("aria-label", "View candidate " + letter + " full size");
        zoom.addEventListener("mousedown", function (e) { e.preventDefault(); });
        frame.append(zoom);
      }
    });
  }

  function paint(form) {
    var ranking = rankingOf(form);
    if (!ranking) return;
    $$(form, ".ann-image[data-image]").forEach(function (figure) {
      var status = ranking.status(figure.dataset.image);
      var badge = figure.querySelector("[data-badge]");
      if (badge) { badge.textContent = status.badge; badge.classList.toggle("tied", !!status.tied); }
      figure.classList.toggle("is-ranked", status.ranked);
      var pick = figure.querySelector(".cand-pick");
      if (pick) {
        pick.setAttribute("aria-label", "Candidate " + figure.dataset.letter + ", " + status.words +
                          (status.action ? ": " + status.action : ""));
      }
    });
    if (viewer.dialog && viewer.dialog.open) viewer.render();
  }

  /** The candidates fill the height left under the grid: where the grid starts is measured, not guessed. */
  function measure(root) {
    $$(root, ".ann-grid").forEach(function (grid) {
      // From the top of the form body (the candidates may be stuck to the top of the window while scrolled).
      var body = grid.closest(".ann-body"), section = grid.closest(".ann-component");
      if (!body || !section) return;
      var top = body.getBoundingClientRect().top + window.scrollY +
                grid.getBoundingClientRect().top - section.getBoundingClientRect().top;
      grid.style.setProperty("--stage-top", Math.round(top) + "px");
    });
  }

  // --- validation: inline errors, focus, and what Submit still needs --------------------------------

  function labelOf(el, scope) {
    if (el.labels && el.labels.length) return textOf(el.labels[0]);
    var legend = scope && scope.querySelector("legend");
    return textOf(legend) || el.getAttribute("aria-label") || (scope && scope.getAttribute("aria-label")) || el.name;
  }

  function noOptionsNote(scope) {
    var note = scope && scope.parentNode && scope.parentNode.querySelector("[data-no-options]");
    return note ? textOf(note) : "there is nothing to choose from yet.";
  }

  function controlProblem(el, scope) {
    var name = named(labelOf(el, scope));
    var value = (el.value || "").trim();
    if (el.tagName === "SELECT") {
      if (el.required && !value) {
        var real = $$(el, "option").filter(function (o) { return o.value; });
        if (!real.length) return { message: name + ": " + noOptionsNote(el), short: "choose " + name };
        return { message: "Choose " + name + ".", short: "choose " + name };
      }
      return null;
    }
    if (el.type === "radio") {
      var group = Array.prototype.filter.call(el.form.elements, function (r) { return r.type === "radio" && r.name === el.name; });
      var required = group.some(function (r) { return r.required; });
      if (required && !group.some(function (r) { return r.checked; })) return { message: name + ": choose one.", short: "choose " + name };
      return null;
    }
    if (el.type === "checkbox") return el.required && !el.checked ? { message: name + " is required.", short: name } : null;
    if (el.required && !value) return { message: name + " is required.", short: "fill in " + name };
    if (value && el.minLength > 0 && value.length < el.minLength) {
      return { message: name + ": at least " + el.minLength + " characters (now " + value.length + ").",
               short: "write at least " + el.minLength + " characters in " + name };
    }
    if (!el.checkValidity()) return { message: name + ": " + el.validationMessage, short: "fix " + name };
    return null;
  }

  function problemsOf(form) {
    var out = [], scopes = [];
    $$(form, "fieldset.ann-ranking").forEach(function (fieldset) {
      var problem = fieldset.ranking && fieldset.ranking.problem();
      if (problem) out.push({ scope: fieldset, focus: fieldset, message: problem.message, short: problem.short });
      scopes.push(fieldset);
    });
    $$(form, "[data-required-group]").forEach(function (group) {
      scopes.push(group);
      var boxes = $$(group, "input[type=checkbox]");
      if (boxes.some(function (b) { return b.checked; })) return;
      var name = named(textOf(group.querySelector("legend")));
      out.push({ scope: group, focus: boxes[0] || group, short: "choose " + name,
                 message: boxes.length ? name + ": choose at least one." : name + ": " + noOptionsNote(group.querySelector("legend")) });
    });
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.willValidate || el.type === "hidden") return;
      if (scopes.some(function (s) { return s.contains(el); })) return;
      var scope = el.closest("[data-error-scope]") || el;
      if (scope !== el && scopes.indexOf(scope) >= 0) return;
      var problem = controlProblem(el, scope !== el ? scope : null);
      if (!problem) return;
      scopes.push(scope);
      out.push({ scope: scope, focus: el, message: problem.message, short: problem.short });
    });
    out.sort(function (a, b) {
      return a.scope.compareDocumentPosition(b.scope) & Node.DOCUMENT_POSITION_FOLLOWING ? -1 : 1;
    });
    return out;
  }

  function clearErrors(form) {
    (form.shownErrors || []).forEach(function (shown) {
      shown.error.remove();
      var described = (shown.target.getAttribute("aria-describedby") || "").split(" ").filter(function (x) {
        return x && x !== shown.error.id;
      });
      if (described.length) shown.target.setAttribute("aria-describedby", described.join(" "));
      else shown.target.removeAttribute("aria-describedby");
      shown.target.removeAttribute("aria-invalid");
      shown.scope.classList.remove("has-error");
    });
    form.shownErrors = [];
  }

  function showErrors(form, problems, moveFocus) {
    clearErrors(form);
    problems.forEach(function (problem) {
      var error = document.createElement("p");
      error.className = "inline-error";
      error.id = "inline-error-" + (++errorSeq);
      error.dataset.errorFor = problem.focus.name || problem.scope.id || "";
      error.textContent = problem.message;
      var scope = problem.scope;
      if (scope.tagName === "FIELDSET" || scope.matches("[data-error-scope]")) {
        var legend = scope.querySelector("legend");
        if (legend) legend.after(error); else scope.prepend(error);
      } else {
        (scope.closest(".inline-field") || scope).after(error);
      }
      var target = problem.focus.tagName === "FIELDSET" || problem.focus.type === "checkbox" || problem.focus.type === "radio"
        ? scope : problem.focus;
      target.setAttribute("aria-describedby", (error.id + " " + (target.getAttribute("aria-describedby") || "")).trim());
      if (target.tagName !== "FIELDSET" && !target.matches("[data-error-scope]:not(input, select, textarea)")) {
        target.setAttribute("aria-invalid", "true");
      }
      scope.classList.add("has-error");
      form.shownErrors.push({ error: error, target: target, scope: scope });
    });
    if (moveFocus && problems.length) {
      var details = problems[0].focus.closest("details");
      if (details) details.open = true;
      problems[0].focus.focus();
    }
  }

  /** After any change: the Submit note says what is still needed; errors already shown follow the answers. */
  function refresh(form) {
    var problems = problemsOf(form);
    if (form.shownErrors && form.shownErrors.length) showErrors(form, problems, false);
    var note = form.querySelector("[data-submit-why]");
    var button = form.querySelector("[data-submit]");
    if (note) {
      note.textContent = problems.length
        ? "Still needed: " + problems.map(function (p) { return p.short; }).join("; ") + "."
        : "Ready: Enter or Submit sends it and opens the next task.";
      note.classList.toggle("is-blocked", problems.length > 0);
    }
    if (button) button.setAttribute("aria-disabled", problems.length ? "true" : "false");
    paint(form);
  }

  function submitForm(form) {
    var button = form.querySelector("[data-submit]") || form.querySelector("button[type=submit]");
    if (button && button.disabled) return;                   // a submission is already on its way
    form.requestSubmit(button || undefined);
  }

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!form.matches || !form.matches("form[data-validate]")) return;
    if (e.submitter && e.submitter.formNoValidate) return;
    var problems = problemsOf(form);
    if (problems.length) {
      e.preventDefault();
      e.stopImmediatePropagation();                         // htmx never sees an incomplete answer
      showErrors(form, problems, true);
      return;
    }
    clearErrors(form);
    var duration = form.querySelector("input[name=duration_ms]");
    if (duration && form.dataset.startedAt) duration.value = String(Date.now() - Number(form.dataset.startedAt));
  }, true);

  // --- the full-size view and two-up compare -------------------------------------------------------

  var viewer = {
    dialog: null, form: null, items: [], left: 0, right: -1, opener: null,
    open: function (index, compare) {
      var form = rankForm();
      var dialog = document.querySelector("dialog[data-viewer]");
      if (!form || !dialog) return;
      this.items = $$(form, ".ann-image[data-full]").map(function (figure) {
        return { id: figure.dataset.image, letter: figure.dataset.letter, url: figure.dataset.full };
      });
      if (!this.items.length) return;
      this.dialog = dialog; this.form = form;
      this.left = Math.max(0, Math.min(index, this.items.length - 1));
      this.right = compare && this.items.length > 1 ? (this.left + 1) % this.items.length : -1;
      this.opener = document.activeElement;
      if (!dialog.open) dialog.showModal();
      this.render();
      dialog.focus();
    },
    next: function (from, delta, avoid) {
      var n = this.items.length, i = from;
      do { i = (i + delta + n) % n; } while (i === avoid && n > 1);
      return i;
    },
    step: function (delta, pane) {
      if (pane === 1 && this.right >= 0) this.right = this.next(this.right, delta, this.left);
      else this.left = this.next(this.left, delta, this.right);
      this.render();
    },
    toggleCompare: function () {
      this.right = this.right >= 0 || this.items.length < 2 ? -1 : this.next(this.left, 1, -1);
      this.render();
    },
    render: function () {
      var self = this, ranking = rankingOf(this.form), compare = this.right >= 0;
      var shown = compare ? [this.left, this.right] : [this.left];
      $$(this.dialog, "[data-pane]").forEach(function (pane, p) {
        pane.hidden = p >= shown.length;
        if (pane.hidden) return;
        var item = self.items[shown[p]], img = pane.querySelector("[data-pane-img]");
        if (img.getAttribute("src") !== item.url) {
          img.classList.remove("pixelated");
          img.src = item.url;
        }
        img.alt = "Candidate " + item.letter;
        if (img.complete) sharpen(img);
        var status = ranking ? ranking.status(item.id).words : "";
        pane.querySelector("[data-pane-caption]").textContent = item.letter + (status ? " · " + status : "");
        $$(pane, "[data-pane-step]").forEach(function (b) { b.hidden = !compare; });
      });
      var title = compare
        ? "Comparing " + this.items[this.left].letter + " and " + this.items[this.right].letter
        : "Candidate " + this.items[this.left].letter + " (" + (this.left + 1) + " of " + this.items.length + ")";
      this.dialog.querySelector("[data-viewer-title]").textContent = title;
      this.dialog.dataset.showing = shown.map(function (i) { return self.items[i].letter; }).join("");
      var toggle = this.dialog.querySelector("[data-viewer-compare]");
      toggle.setAttribute("aria-pressed", compare ? "true" : "false");
      toggle.textContent = compare ? "One at a time" : "Compare two";
    },
    key: function (e) {
      var key = e.key;
      if (key === "ArrowLeft" || key === "ArrowRight") {
        this.step(key === "ArrowLeft" ? -1 : 1, e.shiftKey || this.right < 0 ? 0 : 1);
        e.preventDefault();
      } else if (key === "c" || key === "C") {
        this.toggleCompare();
        e.preventDefault();
      } else if (key !== "Escape" && key !== "Enter" && key !== " " && key !== "Tab") {
        var ranking = rankingOf(this.form);
        if (ranking && ranking.key(key)) { e.preventDefault(); this.render(); }
      }
    },
  };
  // Small renders (the 64-pixel shapes world) are enlarged pixel-sharp; larger images are smoothed as usual.
  function sharpen(img) { img.classList.toggle("pixelated", img.naturalWidth > 0 && img.naturalWidth < 256); }
  document.addEventListener("load", function (e) {
    if (e.target.matches && e.target.matches(".ann-image img, [data-pane-img]")) sharpen(e.target);
  }, true);

  function openDialog(dialog) {
    dialog.returnFocusTo = document.activeElement;
    dialog.showModal();
  }

  document.addEventListener("close", function (e) {
    var dialog = e.target;
    var back = dialog === viewer.dialog ? viewer.opener : dialog.returnFocusTo;
    if (back && back.isConnected && back !== document.body) back.focus();
  }, true);

  document.addEventListener("click", function (e) {
    var el = e.target.closest && e.target.closest("[data-zoom], [data-viewer-step], [data-viewer-compare], [data-viewer-close], [data-pane-step], [data-shortcuts-open]");
    if (!el) return;
    if (el.matches("[data-zoom]")) {
      var ids = $$(rankForm(), ".ann-image[data-full]").map(function (f) { return f.dataset.image; });
      viewer.open(ids.indexOf(el.dataset.zoom), false);
    } else if (el.matches("[data-viewer-step]")) {
      viewer.step(Number(el.dataset.viewerStep), viewer.right >= 0 ? 1 : 0);
    } else if (el.matches("[data-viewer-compare]")) {
      viewer.toggleCompare();
    } else if (el.matches("[data-viewer-close]")) {
      viewer.dialog.close();
    } else if (el.matches("[data-pane-step]")) {
      viewer.step(Number(el.dataset.paneStep), Number(el.closest("[data-pane]").dataset.pane));
    } else if (el.matches("[data-shortcuts-open]")) {
      var sheet = document.querySelector("dialog[data-shortcuts]");
      if (sheet) openDialog(sheet);
    }
  });

  // --- keys --------------------------------------------------------------------------------------

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
    if (viewer.dialog && viewer.dialog.open) { viewer.key(e); return; }
    if (document.querySelector("dialog[open]")) return;        // the shortcut sheet: Esc closes it
    if (!allowsShortcuts(e.target)) return;
    if (e.key === "?") {
      var sheet = document.querySelector("dialog[data-shortcuts]");
      if (sheet) { e.preventDefault(); openDialog(sheet); }
      return;
    }
    var form = rankForm();
    if (!form) return;
    if (e.key === "Enter") { e.preventDefault(); submitForm(form); return; }
    if (e.key === "v" || e.key === "V" || e.key === "c" || e.key === "C") {
      e.preventDefault();
      viewer.open(0, e.key === "c" || e.key === "C");
      return;
    }
    var ranking = rankingOf(form);
    if (ranking && ranking.key(e.key)) e.preventDefault();
  });

  // --- set-up (again after every htmx swap) ------------------------------------------------------------

  function initForm(form) {
    if (form.dataset.rankReady) return;
    form.dataset.rankReady = "1";
    if (form.matches("[data-validate]")) form.noValidate = true;
    form.shownErrors = [];
    var changed = function () { refresh(form); };
    $$(form, "fieldset.ann-ranking").forEach(function (fieldset) {
      fieldset.ranking = fieldset.dataset.mode === "full" ? fullRanking(fieldset, form, changed)
                                                           : choiceRanking(fieldset, form, changed);
    });
    enhanceCandidates(form);
    form.addEventListener("input", changed);
    form.addEventListener("change", changed);
    if (form.matches("[data-rank-form]") && !form.dataset.startedAt) form.dataset.startedAt = String(Date.now());
    refresh(form);
  }

  function init(root) {
    var scope = root && root.querySelectorAll ? root : document;
    var forms = $$(scope, "form[data-rank-form], form[data-validate]");
    if (scope.matches && scope.matches("form[data-rank-form], form[data-validate]")) forms.push(scope);
    forms.forEach(initForm);
    $$(document, "[data-shortcuts-open]").forEach(function (b) { b.hidden = false; });
    measure(document);
  }

  window.addEventListener("load", function () { measure(document); });    // after fonts and images settle
  var measuring = 0;
  window.addEventListener("resize", function () {
    cancelAnimationFrame(measuring);
    measuring = requestAnimationFrame(function () { measure(document); });
  });
  // Let htmx swap a 400 answer (it holds the form with the error message).
  document.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail.xhr && e.detail.xhr.status === 400) { e.detail.shouldSwap = true; e.detail.isError = false; }
  });
  // After a saved answer the next task comes in the same response: say so where screen readers hear it.
  var notice = "";
  document.addEventListener("htmx:beforeRequest", function (e) {
    var elt = e.detail.elt;                                    // still in the page (afterRequest may not see it)
    notice = elt && elt.matches && elt.matches("form[data-rank-form]") ? "Saved. Here is the next task."
      : elt && elt.id === "skip-form" ? "Skipped. Here is the next task." : "";
  });
  document.addEventListener("htmx:afterRequest", function (e) { if (!e.detail.successful) notice = ""; });
  document.addEventListener("htmx:afterSettle", function () {
    var region = notice && document.querySelector("[data-notice]");
    if (region) region.textContent = notice;
    notice = "";
  });
  document.addEventListener("htmx:load", function (e) { init(e.detail.elt); });
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", function () { init(document); });
  else init(document);
})();
