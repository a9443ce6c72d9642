// herbarium2field web page: pick / drop / shoot photos, send them to /api/identify, show the answer.
// Plain JS, no build step. Every text from the server or the user goes through textContent.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    drop: $("dropzone"), file: $("file-input"), camera: $("camera-input"), previews: $("previews"),
    identify: $("identify"), clear: $("clear"), error: $("error"), status: $("status"),
    results: $("results"), verdict: $("verdict"), cards: $("cards"), lookalikes: $("lookalikes"),
    nearest: $("nearest"), info: $("model-info"), lightbox: $("lightbox"), lbImg: $("lightbox-img"),
    lbCaption: $("lightbox-caption"),
  };
  const limits = { maxFiles: 5, maxMb: 15 };
  let photos = []; // [{file, url}]
  let busy = false;

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  const pct = (x) => `${(x * 100).toFixed(x >= 0.995 || x < 0.001 ? 0 : 1)}%`;

  function showError(msg) {
    els.error.textContent = msg;
    els.error.hidden = !msg;
  }

  // ---- model info -------------------------------------------------------------------------------
  fetch("/healthz").then((r) => r.json()).then((h) => {
    limits.maxFiles = h.limits.max_files;
    limits.maxMb = h.limits.max_upload_mb;
    $("max-files").textContent = limits.maxFiles;
    $("max-mb").textContent = limits.maxMb;
    const parts = [`Model ${h.run}`, `${h.species} species`, `${h.herbarium_sheets} herbarium sheets`,
      `${h.backend} backend`];
    els.info.textContent = parts.join(" · ");
    if (h.threshold && h.threshold.text) els.info.title = `Confidence: ${h.threshold.text}`;
  }).catch(() => { els.info.textContent = "The server is not answering."; });

  // ---- choosing photos --------------------------------------------------------------------------
  function addFiles(list) {
    showError("");
    const files = Array.from(list || []);
    const problems = [];
    for (const f of files) {
      if (photos.length >= limits.maxFiles) {
        problems.push(`At most ${limits.maxFiles} photos per identification.`);
        break;
      }
      if (f.size === 0) { problems.push(`${f.name}: the file is empty.`); continue; }
      if (f.size > limits.maxMb * 1e6) { problems.push(`${f.name}: larger than ${limits.maxMb} MB.`); continue; }
      photos.push({ file: f, url: URL.createObjectURL(f) });
    }
    if (problems.length) showError(problems.join(" "));
    renderPreviews();
  }

  function removePhoto(i) {
    URL.revokeObjectURL(photos[i].url);
    photos.splice(i, 1);
    renderPreviews();
  }

  function renderPreviews() {
    els.previews.replaceChildren(...photos.map((p, i) => {
      const img = el("img", { src: p.url, alt: p.file.name });
      img.addEventListener("error", () => img.replaceWith(el("span", { class: "noprev", text: p.file.name })));
      return el("li", { class: "preview" }, img,
        el("button", { type: "button", "aria-label": `Remove ${p.file.name}`, text: "×", onclick: () => removePhoto(i) }));
    }));
    els.identify.disabled = busy || photos.length === 0;
    els.clear.hidden = photos.length === 0;
    els.identify.textContent = photos.length > 1 ? `Identify (${photos.length} photos)` : "Identify";
  }

  els.file.addEventListener("change", () => { addFiles(els.file.files); els.file.value = ""; });
  els.camera.addEventListener("change", () => { addFiles(els.camera.files); els.camera.value = ""; });
  els.drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); els.file.click(); }
  });
  for (const type of ["dragenter", "dragover"]) {
    els.drop.addEventListener(type, (e) => { e.preventDefault(); els.drop.classList.add("dragover"); });
  }
  for (const type of ["dragleave", "drop"]) {
    els.drop.addEventListener(type, (e) => { e.preventDefault(); els.drop.classList.remove("dragover"); });
  }
  els.drop.addEventListener("drop", (e) => addFiles(e.dataTransfer && e.dataTransfer.files));
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  els.clear.addEventListener("click", () => {
    photos.forEach((p) => URL.revokeObjectURL(p.url));
    photos = [];
    showError("");
    els.results.hidden = true;
    renderPreviews();
  });

  // ---- identifying ------------------------------------------------------------------------------
  els.identify.addEventListener("click", async () => {
    if (!photos.length || busy) return;
    busy = true;
    showError("");
    els.identify.disabled = true;
    els.status.hidden = false;
    els.results.hidden = true;
    const form = new FormData();
    for (const p of photos) form.append("files", p.file, p.file.name);
    try {
      const resp = await fetch("/api/identify?top_k=5&sheets=4", { method: "POST", body: form });
      let body = null;
      try { body = await resp.json(); } catch { /* not JSON */ }
      if (!resp.ok) {
        showError((body && body.detail) || `The server answered ${resp.status}.`);
      } else {
        renderResults(body);
      }
    } catch {
      showError("Could not reach the server. Check your connection and try again.");
    } finally {
      busy = false;
      els.status.hidden = true;
      renderPreviews();
    }
  });

  function renderResults(ans) {
    const genusLevel = ans.answer && ans.answer.level === "genus";
    const state = ans.confident === true ? "confident" : genusLevel ? "genus" : ans.confident === false ? "uncertain" : "neutral";
    const title = state === "confident" ? ans.results[0].species : genusLevel ? ans.answer.name
      : state === "uncertain" ? "No confident match" : "Most likely species";
    els.verdict.className = `verdict ${state}`;
    const head = el("h2", { text: title });
    if (state === "confident" || genusLevel) head.style.fontStyle = "italic";
    // the server's message repeats the title for terminal use: drop that part here
    let msg = ans.message;
    if (state === "uncertain") msg = msg.replace(/^No confident match[^:]*:\s*/, "");
    if (state === "confident") msg = `Confident match (${pct(ans.results[0].score)})${ans.photos.length > 1 ? `, from ${ans.photos.length} photos` : ""}.`;
    if (genusLevel) msg = `Confident at genus level (${pct(ans.genus.score)} for the genus); no single species is.`;
    const lines = [head, el("p", { text: msg.charAt(0).toUpperCase() + msg.slice(1) })];
    if (ans.genus) {
      const g = ans.genus;
      const n = g.species.length;
      lines.push(el("p", { class: "genus-line", id: "genus-line" }, document.createTextNode("Genus: "),
        el("em", { text: g.name }), document.createTextNode(` ${pct(g.score)}`
          + (g.family ? ` · family ${g.family}` : "") + ` · ${n} species of this genus known to the model`)));
    }
    if (ans.checklist) lines.push(el("p", { class: "threshold", text: `Restricted to a checklist of ${ans.checklist.species} species.` }));
    if (ans.threshold && ans.threshold.text) lines.push(el("p", { class: "threshold", text: `Confidence rule: ${ans.threshold.text}.` }));
    els.verdict.replaceChildren(...lines);
    els.cards.className = `cards${state === "uncertain" ? " uncertain-results" : ""}`;
    els.cards.replaceChildren(...ans.results.map(card));
    const near = ans.nearest_sheets || [];
    els.lookalikes.hidden = near.length === 0;
    els.nearest.replaceChildren(...near.map((s) => sheet(s, true)));
    els.results.hidden = false;
    els.results.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function card(r) {
    const nameLine = el("div", { class: "species-line" },
      el("h3", { class: "species", text: r.species }),
      el("span", { class: "class-id", text: `id ${r.class_id}` }),
      r.with_pairs ? null : el("span", { class: "badge", title: "No field photos of this species were seen in training", text: "herbarium only" }),
      r.reserved ? el("span", { class: "badge reserved", title: `A place kept for species known only from herbarium sheets: its sheets look like your photo (match ${(r.sheet_match || 0).toFixed(2)}); the percentage is the classifier's`, text: "placed by its sheets" }) : null);
    const bar = el("div", { class: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-valuenow": String(Math.round(r.score * 100)), "aria-label": `Confidence for ${r.species}` },
    el("span"));
    bar.firstChild.style.width = `${Math.max(1, r.score * 100)}%`;
    const conf = el("div", { class: "confidence" }, bar, el("span", { class: "pct", text: pct(r.score) }));
    const sheets = el("div", { class: "sheet-row" }, ...r.herbarium.map((s) => sheet(s, false)));
    return el("li", { class: `result-card${r.rank === 1 ? " top" : ""}`, "data-class-id": r.class_id },
      el("div", { class: "rank", text: String(r.rank) }), nameLine, conf, sheets);
  }

  function sheet(s, withName) {
    const img = el("img", { src: s.thumbnail_url, alt: `Herbarium sheet ${s.image_id} of ${s.species}`, loading: "lazy" });
    const caption = withName
      ? el("span", { text: `${s.species.split(" ").slice(0, 2).join(" ")} · ${s.similarity.toFixed(2)}` })
      : el("span", {}, el("span", { class: "sim-label", text: "similarity " }), document.createTextNode(s.similarity.toFixed(2)));
    return el("button", { type: "button", class: "sheet", title: `Sheet ${s.image_id}: cosine similarity ${s.similarity.toFixed(3)}. Click to enlarge.`,
      onclick: () => openSheet(s) }, img, caption);
  }

  function openSheet(s) {
    els.lbImg.src = s.thumbnail_url; // instant, then the full sheet replaces it
    const full = new Image();
    full.onload = () => { if (els.lightbox.open) els.lbImg.src = s.image_url; };
    full.src = s.image_url;
    els.lbImg.alt = `Herbarium sheet ${s.image_id} of ${s.species}`;
    els.lbCaption.replaceChildren(el("em", { text: s.species }),
      document.createTextNode(` · sheet ${s.image_id} · similarity ${s.similarity.toFixed(3)}`));
    if (typeof els.lightbox.showModal === "function") els.lightbox.showModal();
    else window.open(s.image_url, "_blank", "noopener");
  }
  els.lightbox.addEventListener("click", (e) => { if (e.target === els.lightbox) els.lightbox.close(); });

  renderPreviews();
})();
