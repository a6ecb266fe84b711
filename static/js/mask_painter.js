// The image-editing form on the annotation page (no inline scripts: the CSP forbids them).
//
// - Source image: an uploaded file (checked against the size limit before it is sent), the task's image or an
//   earlier candidate; the chosen one is shown under the mask painter and in the outpaint preview.
// - Mask painter: a canvas the size of the source over the image. Brush and eraser with a size slider, rectangle,
//   invert, clear, undo, select all; mouse, pen (pressure) and touch through Pointer Events; from the keyboard
//   with the canvas focused: arrows move the brush (Shift: faster), Space paints, E switches brush and eraser,
//   R rectangle, [ and ] change the size, Ctrl+Z undoes. White (painted) = repaint.
// - On submit the mask goes as a PNG (black keep, white repaint, the source's size) into the file input
//   <name>.png, then the form is sent (htmx sends it as multipart, with the file).
// - Outpaint canvas: sides snap to multiples of 8 within the model's limit; a preview shows the new size.
// - Strength: the slider's value is shown beside it.
(function () {
  "use strict";

  const MAX_UNDO = 30;
  const painters = new WeakMap();

  function formOf(el) { return el.closest("form[data-edit-form]"); }

  function sourceFieldset(form, name) {
    return form.querySelector('[data-source-image="' + name + '"]');
  }

  // --- the source image -------------------------------------------------------------------------------

  // The chosen image's URL: an upload is read as a data: URL (the CSP allows data: images, not blob:).
  function chosenSourceUrl(fieldset) {
    const radio = fieldset.querySelector('input[type=radio]:checked');
    if (radio && radio.value === "upload") {
      const file = fieldset.querySelector("[data-source-file]");
      if (!file || !file.files || !file.files.length) return Promise.resolve(null);
      const chosen = file.files[0];
      return new Promise(function (resolve) {
        const reader = new FileReader();
        reader.onload = function () { resolve(typeof reader.result === "string" ? reader.result : null); };
        reader.onerror = function () { resolve(null); };
        reader.readAsDataURL(chosen);
      });
    }
    return Promise.resolve(radio && radio.dataset.sourceUrl ? radio.dataset.sourceUrl : null);
  }

  function fieldMessage(fieldset, text) {
    let p = fieldset.querySelector("[data-source-error]");
    if (!p) {
      p = document.createElement("p");
      p.className = "error field-error";
      p.setAttribute("data-source-error", "");
      p.setAttribute("role", "alert");
      fieldset.appendChild(p);
    }
    p.textContent = text;
    p.hidden = !text;
    const file = fieldset.querySelector("[data-source-file]");
    if (file) { if (text) file.setAttribute("aria-invalid", "true"); else file.removeAttribute("aria-invalid"); }
  }

  function megabytes(n) { return (n / 1000000).toFixed(1).replace(/\.0$/, "") + " MB"; }

  function checkUpload(fieldset) {
    const file = fieldset.querySelector("[data-source-file]");
    const radio = fieldset.querySelector('input[type=radio]:checked');
    if (!file || !radio || radio.value !== "upload" || !file.files || !file.files.length) { fieldMessage(fieldset, ""); return true; }
    const max = Number(fieldset.dataset.maxBytes || 0);
    const f = file.files[0];
    if (max && f.size > max) {
      fieldMessage(fieldset, "Source image: the image is " + megabytes(f.size) + "; the limit is " + megabytes(max) + ".");
      return false;
    }
    if (f.type && !/^image\/(png|jpeg|webp)$/.test(f.type)) {
      fieldMessage(fieldset, "Source image: not an image: upload a PNG, JPEG or WebP.");
      return false;
    }
    fieldMessage(fieldset, "");
    return true;
  }

  function loadImage(url) {
    return new Promise(function (resolve, reject) {
      const img = new Image();
      img.onload = function () { resolve(img); };
      img.onerror = function () { reject(new Error("The image could not be read.")); };
      img.src = url;
    });
  }

  function sourceChanged(fieldset) {
    const form = formOf(fieldset);
    if (!form) return;
    const ok = checkUpload(fieldset);
    const name = fieldset.dataset.sourceImage;
    const done = (ok ? chosenSourceUrl(fieldset) : Promise.resolve(null)).then(function (url) {
      return url ? loadImage(url) : null;
    });
    done.then(function (img) {
      form.querySelectorAll('[data-mask-painter][data-source="' + name + '"]').forEach(function (el) { painter(el).setSource(img); });
      form.querySelectorAll('[data-outpaint][data-source="' + name + '"]').forEach(function (el) { outpaintPreview(el, img); });
    }, function () {
      fieldMessage(fieldset, "Source image: not an image: upload a PNG, JPEG or WebP.");
    });
  }

  // --- the mask painter -------------------------------------------------------------------------------

  function Painter(root) {
    this.root = root;
    this.stage = root.querySelector("[data-mask-stage]");
    this.size = root.querySelector("[data-brush-size]");
    this.sizeOut = root.querySelector("[data-brush-size-out]");
    this.coverage = root.querySelector("[data-mask-coverage]");
    this.fileInput = root.querySelector("[data-mask-file]");
    this.tool = "brush";
    this.undo = [];
    this.canvas = null;
    this.cursor = { x: 0, y: 0 };
    this.painted = false;
    const self = this;
    root.querySelectorAll("[data-tool]").forEach(function (b) {
      b.addEventListener("click", function () { self.setTool(b.dataset.tool); });
    });
    root.querySelectorAll("[data-mask-action]").forEach(function (b) {
      b.addEventListener("click", function () { self.action(b.dataset.maskAction); });
    });
    if (this.size) this.size.addEventListener("input", function () { self.sizeChosen = true; self.showSize(); });
    if (this.fileInput) this.fileInput.addEventListener("change", function () { self.fileInput.dataset.userFile = self.fileInput.files.length ? "1" : ""; });
  }

  Painter.prototype.brush = function () { return Number(this.size ? this.size.value : 32); };

  Painter.prototype.showSize = function () {
    if (this.sizeOut) this.sizeOut.textContent = this.brush() + " px";
    this.drawCursor();
  };

  Painter.prototype.setTool = function (tool) {
    this.tool = tool;
    this.root.querySelectorAll("[data-tool]").forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.tool === tool)); });
    if (this.canvas) this.canvas.dataset.activeTool = tool;
  };

  Painter.prototype.setSource = function (img) {
    this.stage.querySelectorAll(".mask-layer").forEach(function (el) { el.remove(); });
    const placeholder = this.stage.querySelector("[data-mask-placeholder]");
    this.undo = [];
    this.canvas = null;
    if (!img) { if (placeholder) placeholder.hidden = false; this.updateCoverage(); return; }
    if (placeholder) placeholder.hidden = true;
    const w = img.naturalWidth, h = img.naturalHeight;
    // A small source gets a brush to match (an eighth of its longer side), until the annotator picks a size:
    // the template's default on a 64 px image would cover half of it.
    if (this.size && !this.sizeChosen) {
      if (!this.size.dataset.defaultSize) this.size.dataset.defaultSize = this.size.value;
      this.size.value = String(Math.max(2, Math.min(Number(this.size.dataset.defaultSize), Math.round(Math.max(w, h) / 8))));
      if (this.sizeOut) this.sizeOut.textContent = this.brush() + " px";
    }
    const wrap = document.createElement("div");
    wrap.className = "mask-layer";
    wrap.style.aspectRatio = w + " / " + h;
    const shown = document.createElement("img");
    shown.src = img.src;
    shown.alt = "The source image (" + w + "×" + h + " px)";
    const canvas = document.createElement("canvas");
    canvas.width = w; canvas.height = h;
    canvas.className = "mask-canvas";
    canvas.tabIndex = 0;
    canvas.setAttribute("role", "application");
    canvas.setAttribute("aria-label", "Mask over the source image: paint the part to repaint");
    canvas.setAttribute("aria-describedby", this.root.querySelector(".mask-help").id);
    canvas.dataset.activeTool = this.tool;
    canvas.dataset.maskCanvas = "";
    const cursor = document.createElement("canvas");
    cursor.width = w; cursor.height = h;
    cursor.className = "mask-cursor";
    cursor.setAttribute("aria-hidden", "true");
    wrap.append(shown, canvas, cursor);
    this.stage.appendChild(wrap);
    this.canvas = canvas;
    this.cursorCanvas = cursor;
    this.ctx = canvas.getContext("2d");
    this.cursor = { x: Math.round(w / 2), y: Math.round(h / 2) };
    this.bindCanvas(canvas);
    this.updateCoverage();
  };

  Painter.prototype.snapshot = function () {
    this.undo.push(this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height));
    if (this.undo.length > MAX_UNDO) this.undo.shift();
  };

  Painter.prototype.point = function (event) {
    const box = this.canvas.getBoundingClientRect();
    return { x: (event.clientX - box.left) * this.canvas.width / box.width,
             y: (event.clientY - box.top) * this.canvas.height / box.height };
  };

  // The brush size is in source pixels; a pen's pressure scales it (0.5 pressure = the set size).
  Painter.prototype.width = function (event) {
    const base = this.brush();
    if (event && event.pointerType === "pen" && event.pressure > 0) return Math.max(1, base * Math.min(2, event.pressure * 2));
    return base;
  };

  Painter.prototype.stroke = function (from, to, width) {
    const ctx = this.ctx;
    ctx.save();
    ctx.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = "rgba(255, 0, 170, 1)";
    ctx.lineWidth = width;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x + 0.01, to.y);
    ctx.stroke();
    ctx.restore();
  };

  Painter.prototype.rect = function (a, b, preview) {
    const x = Math.min(a.x, b.x), y = Math.min(a.y, b.y), w = Math.abs(a.x - b.x), h = Math.abs(a.y - b.y);
    if (preview) {
      const c = this.cursorCanvas.getContext("2d");
      c.clearRect(0, 0, this.cursorCanvas.width, this.cursorCanvas.height);
      c.setLineDash([6, 4]);
      c.lineWidth = Math.max(1, this.canvas.width / 200);
      c.strokeStyle = "#fff";
      c.strokeRect(x, y, w, h);
      return;
    }
    this.ctx.save();
    this.ctx.fillStyle = "rgba(255, 0, 170, 1)";
    this.ctx.fillRect(x, y, w, h);
    this.ctx.restore();
  };

  Painter.prototype.bindCanvas = function (canvas) {
    const self = this;
    let last = null, start = null, active = null;
    canvas.addEventListener("pointerdown", function (event) {
      if (event.button !== 0 && event.pointerType === "mouse") return;
      event.preventDefault();
      canvas.focus();
      try { canvas.setPointerCapture(event.pointerId); } catch (e) { /* a pointer already gone: paint anyway */ }
      active = event.pointerId;
      self.snapshot();
      last = start = self.point(event);
      if (self.tool !== "rect") self.stroke(last, last, self.width(event));
    });
    canvas.addEventListener("pointermove", function (event) {
      const p = self.point(event);
      self.cursor = { x: Math.round(p.x), y: Math.round(p.y) };
      if (active !== event.pointerId) { if (self.tool !== "rect") self.drawCursor(); return; }
      const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
      if (self.tool === "rect") { self.rect(start, p, true); return; }
      (events.length ? events : [event]).forEach(function (e) {
        const q = self.point(e);
        self.stroke(last, q, self.width(e));
        last = q;
      });
    });
    function end(event) {
      if (active !== event.pointerId) return;
      active = null;
      if (self.tool === "rect" && start) {
        self.rect(start, self.point(event), false);
        self.cursorCanvas.getContext("2d").clearRect(0, 0, self.cursorCanvas.width, self.cursorCanvas.height);
      }
      start = last = null;
      self.changed();
    }
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("pointerleave", function () {
      if (active === null) self.cursorCanvas.getContext("2d").clearRect(0, 0, self.cursorCanvas.width, self.cursorCanvas.height);
    });
    canvas.addEventListener("keydown", function (event) { self.key(event); });
    canvas.addEventListener("focus", function () { self.drawCursor(); });
    canvas.addEventListener("blur", function () {
      self.cursorCanvas.getContext("2d").clearRect(0, 0, self.cursorCanvas.width, self.cursorCanvas.height);
    });
  };

  Painter.prototype.drawCursor = function () {
    if (!this.cursorCanvas) return;
    const c = this.cursorCanvas.getContext("2d");
    c.clearRect(0, 0, this.cursorCanvas.width, this.cursorCanvas.height);
    c.beginPath();
    c.lineWidth = Math.max(1, this.canvas.width / 256);
    c.strokeStyle = this.tool === "eraser" ? "#000" : "#fff";
    c.arc(this.cursor.x, this.cursor.y, Math.max(1, this.brush() / 2), 0, 2 * Math.PI);
    c.stroke();
  };

  Painter.prototype.key = function (event) {
    if (event.key !== "Tab") event.stopPropagation();   // the ranking page's shortcuts do not see the painter's keys
    const step = Math.max(1, Math.round(this.canvas.width / (event.shiftKey ? 8 : 32)));
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (moves[event.key]) {
      event.preventDefault();
      const from = { x: this.cursor.x, y: this.cursor.y };
      this.cursor.x = Math.min(this.canvas.width, Math.max(0, this.cursor.x + moves[event.key][0] * step));
      this.cursor.y = Math.min(this.canvas.height, Math.max(0, this.cursor.y + moves[event.key][1] * step));
      if (this.spaceDown) { this.stroke(from, this.cursor, this.brush()); this.changed(); }
      this.drawCursor();
    } else if (event.key === " ") {
      event.preventDefault();
      if (!this.spaceDown) { this.snapshot(); this.spaceDown = true; }
      this.stroke(this.cursor, this.cursor, this.brush());
      this.changed();
    } else if (event.key === "e" || event.key === "E") {
      this.setTool(this.tool === "eraser" ? "brush" : "eraser");
      this.drawCursor();
    } else if (event.key === "r" || event.key === "R") {
      this.setTool("rect");
    } else if (event.key === "[" || event.key === "]") {
      event.preventDefault();
      const v = this.brush() + (event.key === "]" ? 4 : -4);
      this.sizeChosen = true;
      this.size.value = String(Math.max(Number(this.size.min), Math.min(Number(this.size.max), v)));
      this.showSize();
    } else if ((event.key === "z" || event.key === "Z") && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      this.action("undo");
    } else if (event.key === "Enter") {
      event.preventDefault();     // Enter on the canvas does not submit half a mask
    }
  };

  document.addEventListener("keyup", function (event) {
    if (event.key !== " " || !event.target.matches || !event.target.matches("[data-mask-canvas]")) return;
    const root = event.target.closest("[data-mask-painter]");
    if (root) painter(root).spaceDown = false;
  });

  Painter.prototype.action = function (what) {
    if (!this.canvas) return;
    const ctx = this.ctx, w = this.canvas.width, h = this.canvas.height;
    if (what === "undo") {
      const previous = this.undo.pop();
      if (previous) ctx.putImageData(previous, 0, 0);
    } else {
      this.snapshot();
      if (what === "clear") ctx.clearRect(0, 0, w, h);
      if (what === "all") { ctx.save(); ctx.fillStyle = "rgba(255, 0, 170, 1)"; ctx.fillRect(0, 0, w, h); ctx.restore(); }
      if (what === "invert") {
        const data = ctx.getImageData(0, 0, w, h), px = data.data;
        for (let i = 0; i < px.length; i += 4) {
          const on = px[i + 3] >= 128;
          px[i] = 255; px[i + 1] = 0; px[i + 2] = 170; px[i + 3] = on ? 0 : 255;
        }
        ctx.putImageData(data, 0, 0);
      }
    }
    this.changed();
  };

  Painter.prototype.changed = function () {
    this.painted = true;
    this.updateCoverage();
  };

  Painter.prototype.fraction = function () {
    if (!this.canvas) return 0;
    const px = this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height).data;
    let on = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] >= 128) on++;
    return on / (px.length / 4);
  };

  Painter.prototype.updateCoverage = function () {
    if (!this.coverage) return;
    if (!this.canvas) { this.coverage.textContent = ""; return; }
    const share = this.fraction();
    this.root.dataset.coverage = share.toFixed(4);
    this.coverage.textContent = share > 0 ? "Painted: " + (share * 100).toFixed(1) + "% of the image." : "Nothing painted yet.";
  };

  // The mask PNG: black (keep) everywhere, white (repaint) where painted (alpha >= 128), the source's size.
  Painter.prototype.maskBlob = function () {
    const w = this.canvas.width, h = this.canvas.height;
    const out = document.createElement("canvas");
    out.width = w; out.height = h;
    const octx = out.getContext("2d");
    const src = this.ctx.getImageData(0, 0, w, h).data;
    const img = octx.createImageData(w, h), px = img.data;
    for (let i = 0; i < src.length; i += 4) {
      const v = src[i + 3] >= 128 ? 255 : 0;
      px[i] = px[i + 1] = px[i + 2] = v; px[i + 3] = 255;
    }
    octx.putImageData(img, 0, 0);
    return new Promise(function (resolve) { out.toBlob(resolve, "image/png"); });
  };

  function painter(root) {
    let p = painters.get(root);
    if (!p) { p = new Painter(root); painters.set(root, p); }
    return p;
  }

  // --- outpaint and strength ----------------------------------------------------------------------------

  function snapSide(input) {
    const step = Number(input.step || 8), max = Number(input.max || 0);
    let v = Math.round(Number(input.value || 0) / step) * step;
    if (!isFinite(v) || v < 0) v = 0;
    if (max && v > max) v = max - (max % step);
    input.value = String(v);
  }

  function outpaintPreview(root, img) {
    const stage = root.querySelector("[data-outpaint-stage]");
    if (!stage) return;
    if (img !== undefined) root._img = img;
    img = root._img;
    stage.textContent = "";
    if (!img) return;
    const side = function (name) { const el = root.querySelector('[data-outpaint-side="' + name + '"]'); return el ? Number(el.value || 0) : 0; };
    const l = side("left"), t = side("top"), r = side("right"), b = side("bottom");
    const w = img.naturalWidth + l + r, h = img.naturalHeight + t + b;
    const canvas = document.createElement("canvas");
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#c9c9d6";
    ctx.fillRect(0, 0, w, h);
    ctx.drawImage(img, l, t);
    ctx.strokeStyle = "#d0007a";
    ctx.lineWidth = Math.max(1, w / 200);
    ctx.setLineDash([6, 4]);
    ctx.strokeRect(l, t, img.naturalWidth, img.naturalHeight);
    const caption = document.createElement("p");
    caption.className = "hint";
    caption.textContent = "New size: " + w + "×" + h + " px (the grey border is generated).";
    stage.append(canvas, caption);
  }

  document.addEventListener("change", function (event) {
    const t = event.target;
    if (!t.closest) return;
    const fieldset = t.closest("[data-source-image]");
    if (fieldset && formOf(fieldset)) { sourceChanged(fieldset); return; }
    if (t.matches("[data-outpaint-side]")) { snapSide(t); outpaintPreview(t.closest("[data-outpaint]")); }
  });

  document.addEventListener("input", function (event) {
    const t = event.target;
    if (t.matches && t.matches("[data-strength]")) {
      const out = t.parentNode.querySelector("[data-strength-out]");
      if (out) out.textContent = Number(t.value).toFixed(2);
    }
  });

  // Before the form is sent (by htmx or plainly): check the upload, and put each painted mask in its file input.
  // Runs in the capture phase, so it comes before htmx's own submit handler; it sends the form again when ready.
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!form.matches || !form.matches("form[data-edit-form]")) return;
    if (form.dataset.masksReady === "1") { form.dataset.masksReady = ""; return; }
    event.preventDefault();
    event.stopImmediatePropagation();
    let ok = true;
    form.querySelectorAll("[data-source-image]").forEach(function (fs) { ok = checkUpload(fs) && ok; });
    if (!ok) { const bad = form.querySelector("[aria-invalid=true]"); if (bad) bad.focus(); return; }
    const submitter = event.submitter || null;
    const jobs = [];
    form.querySelectorAll("[data-mask-painter]").forEach(function (root) {
      const p = painter(root);
      if (!p.canvas || !p.fileInput || p.fileInput.dataset.userFile === "1") return;
      jobs.push(p.maskBlob().then(function (blob) {
        const transfer = new DataTransfer();
        transfer.items.add(new File([blob], "mask.png", { type: "image/png" }));
        p.fileInput.files = transfer.files;
      }));
    });
    Promise.all(jobs).then(function () {
      form.dataset.masksReady = "1";
      if (submitter) form.requestSubmit(submitter); else form.requestSubmit();
    });
  }, true);

  function init(root) {
    (root || document).querySelectorAll("form[data-edit-form]").forEach(function (form) {
      form.querySelectorAll("[data-mask-painter]").forEach(painter);
      form.querySelectorAll("[data-outpaint-side]").forEach(snapSide);
      form.querySelectorAll("[data-source-image]").forEach(sourceChanged);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", function () { init(document); });
  else init(document);
  document.addEventListener("htmx:afterSettle", function (event) {
    if (event.detail && event.detail.target && event.detail.target.querySelector &&
        event.detail.target.querySelector("form[data-edit-form]")) init(event.detail.target);
  });
})();
