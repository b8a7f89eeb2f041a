// The graph as the browser holds it, and what thresholds and supernodes make of it (no drawing here).
// 1. fromPayload: Python's columnar nodes and edges into typed arrays, edges ranked by |weight| once.
// 2. visible: nodes whose cumulative influence is within the node threshold (tokens, logits, pinned and
//    grouped nodes always), then the strongest edges between them holding the edge-threshold share of
//    their |weight|, then features left with no visible input or output dropped (the pruner's rule).
// 3. layout: token positions across, layer rows up; each position as wide as the most nodes one of its
//    cells holds (wrapped into lines, shorter lines until all fit the box); supernodes at their members' mean.
"use strict";
const MAX_PER_LINE = 24, MIN_SLOT = 4;

function fromPayload(p) {
  const n = p.nodes.id.length, e = p.edges.source.length;
  const G = {
    key: p.key, n: n, ids: p.nodes.id, kind: p.nodes.kind, name: p.nodes.name, label: p.nodes.label,
    row: Int32Array.from(p.nodes.row), pos: Int32Array.from(p.nodes.pos), value: p.nodes.value,
    influence: p.nodes.influence, prob: p.nodes.prob, card: p.nodes.card, cards: p.cards || {},
    links: p.links || {}, tokens: p.tokens, rowNames: p.rowNames, nRows: p.nRows, notes: p.notes || [],
    src: Int32Array.from(p.edges.source), tgt: Int32Array.from(p.edges.target),
    w: Float64Array.from(p.edges.weight), nEdges: e, index: new Map(),
  };
  p.nodes.id.forEach((id, i) => G.index.set(id, i));
  G.order = Array.from({ length: e }, (_, j) => j).sort((a, b) => Math.abs(G.w[b]) - Math.abs(G.w[a]));
  G.inEdges = Array.from({ length: n }, () => []);
  G.outEdges = Array.from({ length: n }, () => []);
  for (const j of G.order) { G.inEdges[G.tgt[j]].push(j); G.outEdges[G.src[j]].push(j); }  // strongest first
  G.maxW = e ? Math.abs(G.w[G.order[0]]) : 1;
  G.nPos = Math.max(G.tokens.length, 1 + Math.max(-1, ...G.pos));
  return G;
}

function visible(G, nt, et, keep) {
  const node = new Uint8Array(G.n), edge = new Uint8Array(G.nEdges);
  for (let i = 0; i < G.n; i++) {
    const k = G.kind[i], inf = G.influence[i];
    node[i] = (k === "token" || k === "logit" || inf === null || inf <= nt + 1e-9 || keep.has(i)) ? 1 : 0;
  }
  let total = 0;
  for (let j = 0; j < G.nEdges; j++) if (node[G.src[j]] && node[G.tgt[j]]) total += Math.abs(G.w[j]);
  let held = 0;
  for (const j of G.order) {
    if (!(node[G.src[j]] && node[G.tgt[j]])) continue;
    if (et < 1 && held >= et * total) break;
    edge[j] = 1; held += Math.abs(G.w[j]);
  }
  for (let changed = true; changed;) {  // features and errors must feed a visible edge, features be fed by one
    changed = false;
    const fed = new Uint8Array(G.n), feeds = new Uint8Array(G.n);
    for (let j = 0; j < G.nEdges; j++) {
      if (edge[j] && node[G.src[j]] && node[G.tgt[j]]) { fed[G.tgt[j]] = 1; feeds[G.src[j]] = 1; } else edge[j] = 0;
    }
    for (let i = 0; i < G.n; i++) {
      const k = G.kind[i];
      if (!node[i] || keep.has(i) || (k !== "feature" && k !== "error")) continue;
      if (!feeds[i] || (k === "feature" && !fed[i])) { node[i] = 0; changed = true; }
    }
  }
  return { node: node, edge: edge };
}

function layout(G, vis, groups, width, height) {
  const margin = { l: 54, r: 12, t: 14, b: 34 };
  const cells = new Map();
  const ranked = [];
  for (let i = 0; i < G.n; i++) if (vis.node[i]) ranked.push(i);
  ranked.sort((a, b) => (G.influence[a] ?? 2) - (G.influence[b] ?? 2));
  for (const i of ranked) {
    const key = G.row[i] * 100000 + G.pos[i];
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(i);
  }
  // each position as wide as its fullest cell, wrapped at perLine nodes a line: fewer a line until the
  // positions fit the box at MIN_SLOT pixels a node
  const room = width - margin.l - margin.r;
  let perLine = MAX_PER_LINE, slots, totalSlots;
  for (;;) {
    slots = new Array(G.nPos).fill(1);
    for (const [key, members] of cells) {
      const p = key % 100000;
      slots[p] = Math.max(slots[p], Math.min(members.length, perLine));
    }
    totalSlots = slots.reduce((a, b) => a + b, 0);
    if (totalSlots * MIN_SLOT <= room || perLine <= 2) break;
    perLine = Math.max(2, Math.floor(perLine * 0.75));
  }
  const slot = Math.min(26, room / totalSlots);
  const colStart = [], colWidth = [];
  let x0 = margin.l;
  for (let p = 0; p < G.nPos; p++) { colStart.push(x0); colWidth.push(slots[p] * slot); x0 += slots[p] * slot; }
  const band = (height - margin.t - margin.b) / G.nRows;
  const x = new Float64Array(G.n).fill(NaN), y = new Float64Array(G.n).fill(NaN);
  for (const [key, members] of cells) {
    const r = Math.floor(key / 100000), p = key % 100000;
    const lines = Math.ceil(members.length / perLine);
    members.forEach((i, j) => {
      const line = Math.floor(j / perLine), inLine = Math.min(perLine, members.length - line * perLine);
      const c = j % perLine;
      x[i] = colStart[p] + colWidth[p] / 2 + (c - (inLine - 1) / 2) * slot;
      y[i] = margin.t + (G.nRows - 1 - r + 0.5) * band + (line - (lines - 1) / 2) * Math.min(12, band / (lines + 1));
    });
  }
  const groupPos = groups.map((g) => {
    const ms = g.members.filter((i) => vis.node[i]);
    if (!ms.length) return null;
    return [ms.reduce((a, i) => a + x[i], 0) / ms.length, ms.reduce((a, i) => a + y[i], 0) / ms.length];
  });
  return { x: x, y: y, slot: slot, perLine: perLine, band: band, margin: margin, colStart: colStart, colWidth: colWidth, groupPos: groupPos,
           radius: Math.max(2.5, Math.min(6, slot / 2.6)) };
}

// the strongest visible-or-not inputs (incoming) or outputs of node set `members` (a node or a supernode),
// summed per other node, edges inside the set left out
function strongestOf(G, members, incoming, k) {
  const inside = new Set(members), sums = new Map();
  for (const i of members) {
    for (const j of (incoming ? G.inEdges[i] : G.outEdges[i])) {
      const o = incoming ? G.src[j] : G.tgt[j];
      if (!inside.has(o)) sums.set(o, (sums.get(o) || 0) + G.w[j]);
    }
  }
  return Array.from(sums).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, k);
}

function edgeBetween(G, a, b) {
  for (const j of G.outEdges[a]) if (G.tgt[j] === b) return G.w[j];
  return null;
}
