// crossview review page: keyboard-first verdicts over a server-rendered grid. No build step.
"use strict";

const DATA = JSON.parse(document.getElementById("page-data").textContent);
const cards = Array.from(document.querySelectorAll(".card"));
const noteEl = document.getElementById("note");
const focusEl = document.getElementById("focus");
const toastEl = document.getElementById("toast");
const KEY_VERDICT = { "1": DATA.keys[0], "2": DATA.keys[1], "3": DATA.keys[2], "4": DATA.keys[3] };
const UNDO_KEY = "crossview-review-undo";
const CURSOR_KEY = "crossview-review-cursor:" + location.search;

let cursor = Math.min(Number(sessionStorage.getItem(CURSOR_KEY) || 0), Math.max(cards.length - 1, 0));
const selected = new Set();
const undoStack = JSON.parse(sessionStorage.getItem(UNDO_KEY) || "[]");

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function toast(message, isError = false) {
  toastEl.textContent = message;
  toastEl.className = "toast show" + (isError ? " error" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { toastEl.className = "toast"; }, isError ? 6000 : 2500);
}

async function api(path, body) {
  const res = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

function setCursor(i, scroll = true) {
  if (!cards.length) return;
  cursor = Math.max(0, Math.min(i, cards.length - 1));
  cards.forEach((c, k) => c.classList.toggle("cursor", k === cursor));
  if (scroll) cards[cursor].scrollIntoView({ block: "nearest" });
  sessionStorage.setItem(CURSOR_KEY, String(cursor));
  if (!focusEl.hidden) showFocus();
}

function move(step) {
  const next = cursor + step;
  if (next >= cards.length && document.getElementById("next-page")) return goPage("next-page", 0);
  if (next < 0 && document.getElementById("prev-page")) return goPage("prev-page", 1e6);
  setCursor(next);
}

function goPage(id, at) {
  const link = document.getElementById(id);
  if (!link) return;
  sessionStorage.setItem("crossview-review-cursor:" + new URL(link.href).search, String(at));
  location.href = link.href;
}

function renderSelection() {
  cards.forEach((c) => c.classList.toggle("selected", selected.has(c.dataset.id)));
  document.getElementById("selection").textContent = selected.size ? `${selected.size} selected: 1–4 applies to all` : "";
}

function toggleSelect() {
  if (!cards.length) return;
  const id = cards[cursor].dataset.id;
  if (selected.has(id)) selected.delete(id); else selected.add(id);
  renderSelection();
}

function selectAll() {
  const all = cards.every((c) => selected.has(c.dataset.id));
  cards.forEach((c) => (all ? selected.delete(c.dataset.id) : selected.add(c.dataset.id)));
  renderSelection();
}

function renderVerdict(id, v) {
  const card = cards.find((c) => c.dataset.id === id);
  if (!card) return;
  const box = card.querySelector(".verdict");
  box.innerHTML = v ? `<span class="badge v-${esc(v.verdict)}" title="${esc(v.curator)} ${esc(v.timestamp)}">${esc(DATA.verdicts[v.verdict])}</span>`
    + (v.note ? ` <span class="vnote">${esc(v.note)}</span>` : "") : "";
}

function pct(x) { return x === null || x === undefined ? "–" : x.toFixed(2); }

function renderSummary(s) {
  const parts = [`<span class="stat"><b>${s.reviewed}</b> reviewed of ${s.photos}</span>`];
  for (const [m, a] of Object.entries(s.models)) {
    parts.push(`<span class="stat model" title="${esc(m)} drops vs curator ${esc(a.label)}: ${a.tp} agree, ${a.fp} false drops, ${a.fn} missed, over ${a.reviewed} reviewed">`
      + `${esc(m)}: precision ${pct(a.precision)} · recall ${pct(a.recall)}</span>`);
  }
  if (s.pending) parts.push(`<span class="stat pending">${s.pending} not applied yet: run <code>${esc(s.apply)}</code></span>`);
  document.getElementById("summary").innerHTML = parts.join("");
}

async function applyVerdict(verdict) {
  if (!cards.length) return;
  const bulk = selected.size > 0;
  const ids = bulk ? Array.from(selected) : [cards[cursor].dataset.id];
  const at = cursor;
  const note = noteEl.value.trim();
  noteEl.value = "";
  selected.clear();
  renderSelection();
  if (!bulk) setCursor(cursor + 1); // move on at once: a fast second key press judges the next photo
  try {
    const res = await api("/api/verdicts", { ids, verdict, note });
    undoStack.push(res.rows.map((r) => ({ id: r.id, timestamp: r.timestamp, curator: r.curator })));
    sessionStorage.setItem(UNDO_KEY, JSON.stringify(undoStack.slice(-200)));
    res.rows.forEach((r) => renderVerdict(r.id, r));
    renderSummary(res.summary);
    toast(`Saved “${DATA.verdicts[verdict]}” for ${ids.length === 1 ? "#" + ids[0] : ids.length + " photos"} (u to undo)`);
    if (bulk && !focusEl.hidden) showFocus();
  } catch (err) {
    noteEl.value = note;
    setCursor(at);
    toast(`Not saved: ${err.message}`, true);
  }
}

async function undo() {
  const rows = undoStack.pop();
  if (!rows) return toast("Nothing to undo");
  try {
    const res = await api("/api/undo", { rows });
    sessionStorage.setItem(UNDO_KEY, JSON.stringify(undoStack));
    for (const [id, v] of Object.entries(res.verdicts)) renderVerdict(id, v);
    renderSummary(res.summary);
    const i = cards.findIndex((c) => c.dataset.id === rows[0].id);
    if (i >= 0) setCursor(i);
    toast(`Undone: ${res.removed} verdict${res.removed === 1 ? "" : "s"}`);
  } catch (err) {
    undoStack.push(rows);
    toast(`Undo failed: ${err.message}`, true);
  }
}

function row(cells, cls = "") {
  const span = cells.length === 1 ? ' colspan="4"' : "";
  return `<tr class="${cls}">${cells.map((c) => `<td${span}>${c}</td>`).join("")}</tr>`;
}

async function showFocus() {
  if (!cards.length) return;
  const id = cards[cursor].dataset.id;
  focusEl.hidden = false;
  focusEl.dataset.id = id;
  let d;
  try { d = await api(`/api/pair/${encodeURIComponent(id)}`); } catch (err) { return toast(err.message, true); }
  if (focusEl.dataset.id !== id) return; // the cursor moved on meanwhile
  document.getElementById("f-title").textContent = `#${d.id} · ${d.title || "(untitled)"}`;
  document.getElementById("f-photo").src = d.photo ? d.photo.replace("size=thumb", "size=large") : "";
  document.getElementById("f-chip").src = d.chip ? d.chip.replace("size=thumb", "size=large") : "";
  const m = d.meta;
  const info = [
    ["owner", esc(m.owner_name || m.owner)],
    ["licence", m.licence_url ? `<a href="${esc(m.licence_url)}" target="_blank" rel="noopener">${esc(m.licence)}</a>` : esc(m.licence)],
    ["date taken", esc(m.date_taken || "–")],
    ["geotag accuracy", `${esc(m.accuracy ?? "–")} <span class="sub">(Flickr 1–16; 16 = street)</span>`],
    ["lat, lon", `${Number(m.lat).toFixed(6)}, ${Number(m.lon).toFixed(6)}`],
    ["city · split", `${esc(d.city)} · ${esc(d.split || "–")}`],
    ["pair", esc(d.pair.status || "–") + (d.pair.reason ? ` (${esc(d.pair.reason)})` : "") + (d.pair.tile_id ? ` · tile ${esc(d.pair.tile_id)}` : "")],
    ["photo", d.download.width ? `${d.download.width} × ${d.download.height} px` : esc(d.download.status || "–")],
    ["chip", d.chip_info.width ? `${d.chip_info.width} px = ${d.edge_m} m · nodata ${(100 * (d.chip_info.nodata_fraction || 0)).toFixed(1)} %` : esc(d.chip_info.status || "–")],
    ["photo page", m.page_url ? `<a href="${esc(m.page_url)}" target="_blank" rel="noopener">${esc(m.page_url)}</a>` : "–"],
  ];
  document.getElementById("f-meta").innerHTML = info.map(([k, v]) => row([k, v])).join("");
  document.getElementById("f-decisions").innerHTML = !d.decisions.length
    ? row(["none yet: the filter stage has not run on this photo (<code>dvc repro</code>)"])
    : row(["<b>filter</b>", "<b>kind</b>", "<b>result</b>", "<b>score</b>"]) + d.decisions.map((x) => row([esc(x.filter), x.kind, x.kept ? "kept" + (x.reason ? `: ${esc(x.reason)}` : "") : esc(x.reason),
      x.score === null ? "" : x.score.toFixed(3)], x.kept ? "" : "drop")).join("");
  const pending = (d.verdict ? d.verdict.verdict : undefined) !== (d.applied || undefined);
  document.getElementById("f-history").innerHTML = d.history.length
    ? d.history.map((h) => row([esc(DATA.verdicts[h.verdict]), esc(h.curator), esc(h.timestamp), esc(h.note)])).join("")
      + (pending ? row(["<i>not applied yet: run <code>dvc repro</code></i>"]) : "")
    : row(["none yet"]);
}

function hideFocus() { focusEl.hidden = true; focusEl.dataset.id = ""; }

function onKey(e) {
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (typing) {
    if (e.key === "Escape" || e.key === "Enter") { document.activeElement.blur(); if (e.key === "Enter") e.preventDefault(); }
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const actions = {
    j: () => move(1), ArrowRight: () => move(1), ArrowDown: () => move(1),
    k: () => move(-1), ArrowLeft: () => move(-1), ArrowUp: () => move(-1),
    Enter: () => (focusEl.hidden ? showFocus() : hideFocus()), f: () => (focusEl.hidden ? showFocus() : hideFocus()),
    Escape: () => (focusEl.hidden ? (selected.clear(), renderSelection()) : hideFocus()),
    x: toggleSelect, A: selectAll, u: undo, n: () => noteEl.focus(),
    "]": () => goPage("next-page", 0), "[": () => goPage("prev-page", 0),
  };
  const verdict = KEY_VERDICT[e.key];
  if (verdict) { e.preventDefault(); applyVerdict(verdict); return; }
  if (actions[e.key]) { e.preventDefault(); actions[e.key](); }
}

function onQueueChange() {
  const form = document.getElementById("queue-form");
  const value = document.getElementById("value");
  if (this.id === "queue") value.value = "";
  form.querySelector("[name=per_page]").disabled = false;
  form.submit();
}

document.addEventListener("keydown", onKey);
cards.forEach((c, k) => {
  c.addEventListener("click", (e) => { if (e.shiftKey) { setCursor(k, false); toggleSelect(); } else setCursor(k, false); });
  c.addEventListener("dblclick", () => { setCursor(k, false); showFocus(); });
  c.querySelectorAll("img").forEach((img) => img.addEventListener("error", () => { img.replaceWith(Object.assign(document.createElement("span"), { className: "missing", textContent: "image unavailable" })); }));
});
document.querySelectorAll(".vbtn").forEach((b) => b.addEventListener("click", () => applyVerdict(b.dataset.verdict)));
document.getElementById("undo").addEventListener("click", undo);
document.getElementById("f-close").addEventListener("click", hideFocus);
focusEl.addEventListener("click", (e) => { if (e.target === focusEl) hideFocus(); });
["queue", "value", "reviewed"].forEach((id) => document.getElementById(id).addEventListener("change", onQueueChange));
document.getElementById("value-label").hidden = !["model_dropped", "reason", "city", "split"].includes(DATA.queue);
renderSummary(DATA.summary);
setCursor(cursor, true);
