// The viewer: draws the graph on a canvas and answers hover, click, pin, group and thresholds here, in
// the browser. Python hears of it only through the component value (sent DEBOUNCE_MS after the last
// change): the graph's key, selected node, pins, supernodes and thresholds, as the saved qParams hold them.
"use strict";
const DEBOUNCE_MS = 350;
const FRAME_HEIGHT = 600;
const KIND = { feature: ["#e8a33d", "circle"], error: ["#9ca3af", "square"], token: ["#334155", "diamond"],
               logit: ["#16a34a", "triangle"], other: ["#64748b", "circle"] };
const cv = document.getElementById("cv"), tip = document.getElementById("tip"), panel = document.getElementById("panel");
const ntInput = document.getElementById("nt"), etInput = document.getElementById("et");
let G = null, L = null, V = null, sendTimer = null;
const S = { selected: null, selectedGroup: null, pins: new Set(), multi: new Set(), groups: [], nt: 0.8, et: 0.98, hover: null };
window.__viewer = { state: S, timings: [] };

function applyState(state) {
  const idx = (id) => G.index.has(id) ? G.index.get(id) : null;
  S.selected = idx(state.clickedId || "");
  S.selectedGroup = null;
  S.pins = new Set((state.pinnedIds || []).map(idx).filter((i) => i !== null));
  S.groups = (state.supernodes || []).map((g) => ({ name: String(g[0]), members: g.slice(1).map(idx).filter((i) => i !== null) }))
    .filter((g) => g.members.length);
  S.multi = new Set();
  S.nt = Number.isFinite(state.nodeThreshold) ? state.nodeThreshold : 0.8;
  S.et = Number.isFinite(state.edgeThreshold) ? state.edgeThreshold : 0.98;
  ntInput.value = S.nt; etInput.value = S.et;
}

function currentState() {
  return { graph: G.key, clickedId: S.selected === null ? "" : G.ids[S.selected], pinnedIds: Array.from(S.pins).map((i) => G.ids[i]),
           supernodes: S.groups.map((g) => [g.name, ...g.members.map((i) => G.ids[i])]), nodeThreshold: S.nt, edgeThreshold: S.et };
}

function sendSoon() {  // the click never waits for Python: the value goes later, once the user pauses
  clearTimeout(sendTimer);
  sendTimer = setTimeout(() => Streamlit.setValue(currentState()), DEBOUNCE_MS);
}

function groupOf() {
  const of = new Int32Array(G.n).fill(-1);
  S.groups.forEach((g, gi) => g.members.forEach((m) => { if (of[m] < 0) of[m] = gi; }));
  return of;
}

function recompute() {
  const keep = new Set([...S.pins, ...S.groups.flatMap((g) => g.members)]);
  if (S.selected !== null) keep.add(S.selected);
  V = visible(G, S.nt, S.et, keep);
  const box = cv.getBoundingClientRect();
  L = layout(G, V, S.groups, box.width, box.height);
  L.group = groupOf();
  L.px = new Float64Array(G.n); L.py = new Float64Array(G.n);  // drawn place: the supernode's when grouped
  for (let i = 0; i < G.n; i++) {
    const gi = L.group[i], p = gi >= 0 ? L.groupPos[gi] : null;
    L.px[i] = p ? p[0] : L.x[i]; L.py[i] = p ? p[1] : L.y[i];
  }
  let nodes = 0, edges = 0;
  for (let i = 0; i < G.n; i++) nodes += V.node[i];
  for (let j = 0; j < G.nEdges; j++) edges += V.edge[j];
  document.getElementById("ntv").textContent = S.nt.toFixed(2);
  document.getElementById("etv").textContent = S.et.toFixed(3);
  document.getElementById("counts").textContent = `${nodes} of ${G.n} nodes, ${edges} of ${G.nEdges} edges drawn`;
  V.nodes = nodes;
  L.base = paintBase(box);  // what no click or hover changes, painted once: clicks only add on top
}

function place(i) { return [L.px[i], L.py[i]]; }

function layer(box) {
  const dpr = window.devicePixelRatio || 1, c = document.createElement("canvas");
  c.width = Math.max(1, Math.round(box.width * dpr)); c.height = Math.max(1, Math.round(box.height * dpr));
  const ctx = c.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return [c, ctx];
}

function paintBase(box) {
  const [edgeCanvas, ectx] = layer(box), [nodeCanvas, nctx] = layer(box);
  drawAxes(nctx, box);
  drawEdges(ectx);
  const r = L.radius;
  for (let i = 0; i < G.n; i++) {
    if (!V.node[i] || L.group[i] >= 0) continue;
    const [colour, form] = KIND[G.kind[i]] || KIND.other;
    shape(nctx, form, L.x[i], L.y[i], r);
    nctx.fillStyle = colour; nctx.fill(); nctx.lineWidth = 0.5; nctx.strokeStyle = "#1f2937"; nctx.stroke();
  }
  drawGroups(nctx, r);
  for (const i of S.pins) if (V.node[i] && L.group[i] < 0) ring(nctx, L.x[i], L.y[i], r + 3, "#7c3aed");
  return { edges: edgeCanvas, nodes: nodeCanvas };
}

function drawEdges(ctx) {  // one path per sign and strength bin: a few strokes, however many edges
  const bins = [[0, 0.6, 0.18], [0.1, 1.2, 0.4], [0.4, 2.4, 0.75]];
  for (const sign of [1, -1]) {
    for (let b = 0; b < bins.length; b++) {
      const lo = bins[b][0], hi = b + 1 < bins.length ? bins[b + 1][0] : Infinity;
      ctx.beginPath();
      for (let j = 0; j < G.nEdges; j++) {
        if (!V.edge[j] || Math.sign(G.w[j]) !== sign) continue;
        const s = Math.abs(G.w[j]) / G.maxW, a = G.src[j], c = G.tgt[j];
        if (s < lo || s >= hi || (L.px[a] === L.px[c] && L.py[a] === L.py[c])) continue;
        ctx.moveTo(L.px[a], L.py[a]); ctx.lineTo(L.px[c], L.py[c]);
      }
      ctx.lineWidth = bins[b][1];
      ctx.strokeStyle = `rgba(${sign > 0 ? "220,38,38" : "37,99,235"},${bins[b][2]})`;
      ctx.stroke();
    }
  }
}

function drawFocus(ctx, focus) {  // the selected node's edges on top, at full strength
  for (const j of focusEdges(focus)) {
    const a = G.src[j], c = G.tgt[j];
    ctx.beginPath(); ctx.moveTo(L.px[a], L.py[a]); ctx.lineTo(L.px[c], L.py[c]);
    ctx.lineWidth = 1 + 3 * Math.abs(G.w[j]) / G.maxW;
    ctx.strokeStyle = G.w[j] >= 0 ? "rgba(220,38,38,0.95)" : "rgba(37,99,235,0.95)";
    ctx.stroke();
  }
}

function focusEdges(focus) {
  const out = [];
  for (const i of focus) for (const j of [...G.inEdges[i], ...G.outEdges[i]]) if (V.edge[j]) out.push(j);
  return out;
}

function shape(ctx, kind, x, y, r) {
  ctx.beginPath();
  if (kind === "square") ctx.rect(x - r, y - r, 2 * r, 2 * r);
  else if (kind === "diamond") { ctx.moveTo(x, y - r * 1.3); ctx.lineTo(x + r * 1.3, y); ctx.lineTo(x, y + r * 1.3); ctx.lineTo(x - r * 1.3, y); ctx.closePath(); }
  else if (kind === "triangle") { ctx.moveTo(x, y - r * 1.3); ctx.lineTo(x + r * 1.2, y + r); ctx.lineTo(x - r * 1.2, y + r); ctx.closePath(); }
  else ctx.arc(x, y, r, 0, 2 * Math.PI);
}

function ring(ctx, x, y, r, colour, dash) {
  ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.setLineDash(dash || []);
  ctx.lineWidth = 2; ctx.strokeStyle = colour; ctx.stroke(); ctx.setLineDash([]);
}

function drawAxes(ctx, box) {
  ctx.fillStyle = "#64748b"; ctx.font = "11px sans-serif"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (let r = 0; r < G.nRows; r++) ctx.fillText(G.rowNames[r] || "", L.margin.l - 8, L.margin.t + (G.nRows - 1 - r + 0.5) * L.band);
  ctx.textAlign = "center";
  for (let p = 0; p < G.nPos; p++) {
    const label = (G.tokens[p] ?? String(p)).slice(0, Math.max(2, Math.floor(L.colWidth[p] / 6)));
    ctx.fillText(label, L.colStart[p] + L.colWidth[p] / 2, box.height - 12);
    ctx.strokeStyle = "#f1f5f9"; ctx.beginPath(); ctx.moveTo(L.colStart[p], L.margin.t); ctx.lineTo(L.colStart[p], box.height - L.margin.b); ctx.stroke();
  }
}

function draw() {  // the painted base (edges dimmed under a selection), then what selection and hover add
  const box = cv.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  if (cv.width !== Math.round(box.width * dpr) || cv.height !== Math.round(box.height * dpr)) {
    cv.width = Math.round(box.width * dpr); cv.height = Math.round(box.height * dpr);
  }
  const ctx = cv.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, cv.width, cv.height);
  const focus = new Set();
  if (S.selectedGroup !== null && S.groups[S.selectedGroup]) S.groups[S.selectedGroup].members.forEach((m) => focus.add(m));
  else if (S.selected !== null) focus.add(S.selected);
  ctx.globalAlpha = focus.size ? 0.35 : 1;
  ctx.drawImage(L.base.edges, 0, 0);
  ctx.globalAlpha = 1;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  drawFocus(ctx, focus);
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.drawImage(L.base.nodes, 0, 0);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const r = L.radius;
  for (const i of S.multi) ring(ctx, L.px[i], L.py[i], r + 5, "#0ea5e9", [3, 2]);
  if (S.selected !== null && V.node[S.selected] && S.selectedGroup === null) ring(ctx, L.px[S.selected], L.py[S.selected], r + 6, "#dc2626");
  if (S.hover !== null && V.node[S.hover]) ring(ctx, L.px[S.hover], L.py[S.hover], r + 2, "#0f172a");
}

function drawGroups(ctx, r) {
  ctx.font = "bold 11px sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "bottom";
  S.groups.forEach((g, gi) => {
    const p = L.groupPos[gi];
    if (!p) return;
    const w = Math.max(28, ctx.measureText(g.name).width + 12), h = 2.6 * r + 8;
    ctx.beginPath(); ctx.roundRect(p[0] - w / 2, p[1] - h / 2, w, h, 6);
    ctx.fillStyle = "rgba(124,58,237,0.22)"; ctx.fill();
    ctx.lineWidth = 1.5; ctx.strokeStyle = "#7c3aed"; ctx.stroke();
    ctx.fillStyle = "#4c1d95"; ctx.fillText(`${g.name} (${g.members.length})`, p[0], p[1] - h / 2 - 2);
  });
}

function hit(mx, my) {  // the drawn node or supernode under the pointer: ["node", i] / ["group", gi] / null
  const r = L.radius + 4;
  for (let gi = 0; gi < S.groups.length; gi++) {
    const p = L.groupPos[gi];
    if (p && Math.abs(mx - p[0]) < Math.max(18, r * 2) && Math.abs(my - p[1]) < r * 1.6) return ["group", gi];
  }
  let best = null, bestD = r * r;
  for (let i = 0; i < G.n; i++) {
    if (!V.node[i] || L.group[i] >= 0) continue;
    const dx = L.x[i] - mx, dy = L.y[i] - my, d = dx * dx + dy * dy;
    if (d <= bestD) { best = i; bestD = d; }
  }
  return best === null ? null : ["node", best];
}

function hitEdge(mx, my) {  // an edge of the selected node near the pointer (edge weights on hover)
  if (S.selected === null) return null;
  let best = null, bestD = 16;
  for (const j of focusEdges(new Set([S.selected]))) {
    const [ax, ay] = place(G.src[j]), [bx, by] = place(G.tgt[j]);
    const vx = bx - ax, vy = by - ay, t = Math.max(0, Math.min(1, ((mx - ax) * vx + (my - ay) * vy) / (vx * vx + vy * vy || 1)));
    const dx = ax + t * vx - mx, dy = ay + t * vy - my, d = dx * dx + dy * dy;
    if (d < bestD) { best = j; bestD = d; }
  }
  return best;
}

function showTip(html, mx, my) {
  tip.innerHTML = html; tip.hidden = false;
  const box = cv.getBoundingClientRect(), w = tip.offsetWidth, h = tip.offsetHeight;
  tip.style.left = `${Math.max(4, Math.min(mx + 14, box.width - w - 4))}px`;
  tip.style.top = `${Math.max(4, Math.min(my + 14, box.height - h - 4))}px`;
}

function refresh(full) {
  if (full) recompute();
  draw();
  renderPanel(panel, G, S, V);
}

function select(i, additive) {
  S.selectedGroup = null;
  if (additive) {  // shift/ctrl-click: toggle the node in the multi-selection (which starts with the selected node)
    if (!S.multi.size && S.selected !== null && S.selected !== i) S.multi.add(S.selected);
    if (S.multi.has(i)) S.multi.delete(i); else S.multi.add(i);
  } else S.multi = new Set();
  const hidden = !V.node[i];
  S.selected = i;
  refresh(hidden);
  sendSoon();
}

function pointer(event) {
  const box = cv.getBoundingClientRect();
  return [event.clientX - box.left, event.clientY - box.top];
}

cv.addEventListener("mousemove", (event) => {
  if (!G) return;
  const [mx, my] = pointer(event), found = hit(mx, my);
  const hover = found && found[0] === "node" ? found[1] : null;
  if (found && found[0] === "node") showTip(hoverHtml(G, found[1], S.selected), mx, my);
  else if (found) showTip(`<b>Supernode ${esc(S.groups[found[1]].name)}</b><div class="muted">${S.groups[found[1]].members.length} nodes</div>`, mx, my);
  else {
    const j = hitEdge(mx, my);
    if (j !== null) showTip(`${esc(G.name[G.src[j]])} &rarr; ${esc(G.name[G.tgt[j]])}<br>weight <b class="${G.w[j] >= 0 ? "pos" : "neg"}">${fmt(G.w[j])}</b>`, mx, my);
    else tip.hidden = true;
  }
  cv.style.cursor = found ? "pointer" : "default";
  if (hover !== S.hover) { S.hover = hover; draw(); }
});
cv.addEventListener("mouseleave", () => { tip.hidden = true; if (S.hover !== null) { S.hover = null; draw(); } });
cv.addEventListener("click", (event) => {
  if (!G) return;
  const t0 = performance.now();
  const found = hit(...pointer(event));
  if (!found) return;
  if (found[0] === "group") { S.selectedGroup = found[1]; S.multi = new Set(); refresh(false); }
  else select(found[1], event.shiftKey || event.ctrlKey || event.metaKey);
  window.__viewer.timings.push(performance.now() - t0);
});

panel.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (button) { act(button.dataset.act, button); return; }
  const row = event.target.closest("tr.walk");
  if (!row) return;
  if (row.dataset.group !== undefined) { S.selectedGroup = Number(row.dataset.group); refresh(false); }
  else select(Number(row.dataset.node), event.shiftKey || event.ctrlKey || event.metaKey);
});

function act(what, button) {
  if (what === "pin" && S.selected !== null) { if (S.pins.has(S.selected)) S.pins.delete(S.selected); else S.pins.add(S.selected); }
  if (what === "pin-all") S.multi.forEach((m) => S.pins.add(m));
  if (what === "group") {
    const input = document.getElementById("group-name");
    const name = (input && input.value.trim()) || `group ${S.groups.length + 1}`;
    const taken = new Set(S.groups.flatMap((g) => g.members));
    const members = Array.from(S.multi).filter((m) => !taken.has(m));
    if (members.length) { S.groups.push({ name: name, members: members }); S.selectedGroup = S.groups.length - 1; S.multi = new Set(); }
  }
  if (what === "ungroup") { S.groups.splice(Number(button.dataset.group), 1); S.selectedGroup = null; }
  refresh(true);
  sendSoon();
}

function onThreshold() {
  S.nt = Number(ntInput.value); S.et = Number(etInput.value);
  refresh(true);
  sendSoon();
}
ntInput.addEventListener("input", onThreshold);
etInput.addEventListener("input", onThreshold);
window.addEventListener("resize", () => { if (G) refresh(true); });

Streamlit.onRender((args) => {
  // a rerun sends the same graph again: keep what the user did since (the value may still be on its way)
  if (!G || G.key !== args.graph.key) {
    G = fromPayload(args.graph);
    applyState(args.state || {});
    refresh(true);
  }
  Streamlit.setHeight(args.height || FRAME_HEIGHT);
});
Streamlit.ready();
Streamlit.setHeight(FRAME_HEIGHT);
window.__viewer.nodeAt = (id) => {  // for tests: where a node is drawn, in the frame's coordinates
  const i = G.index.get(id), box = cv.getBoundingClientRect();
  if (i === undefined || !V.node[i]) return null;
  const [x, y] = place(i);
  return { x: box.left + x, y: box.top + y };
};
window.__viewer.graph = () => G;
window.__viewer.visible = () => V;
