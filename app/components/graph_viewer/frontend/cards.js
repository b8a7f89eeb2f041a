// A node's card as HTML: every string from a file goes through esc() (labels, tokens and names are data,
// never markup). Feature cards: label, top-activating contexts shaded by activation, top logit effects,
// the Features page link; logit nodes: probability and the graph's top-k logits.
"use strict";
function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function fmt(v, digits) {
  return v === null || v === undefined || Number.isNaN(v) ? "-" : Number(v).toPrecision(digits || 4);
}
function title(G, i) {
  const label = G.label[i];
  return label ? `${G.name[i]} · ${label}` : G.name[i];
}

function contextHtml(ctx, scale) {
  const spans = ctx.tokens.map((tok, k) => {
    const v = ctx.values[k];
    const alpha = v === null || !(scale > 0) ? 0 : Math.max(0, Math.min(1, v / scale));
    const cls = k === ctx.center ? ' class="center"' : "";
    return `<span${cls} style="background:rgba(220,38,38,${alpha.toFixed(2)})">${esc(tok)}</span>`;
  });
  return `<div class="ctx"><span class="act">${fmt(ctx.activation, 3)}</span>${spans.join(" ")}</div>`;
}

function effectsHtml(card) {
  const list = (rows) => rows.map((r) => `<div><span class="${r[1] >= 0 ? "pos" : "neg"}">${fmt(r[1], 3)}</span> ${esc(r[0])}</div>`).join("");
  return `<div class="effects"><div><b>Raises</b>${list(card.up || [])}</div><div><b>Lowers</b>${list(card.down || [])}</div></div>`;
}

function featureCardHtml(G, i, withLink) {
  const card = G.cards[G.card[i]];
  if (!card) return `<div class="muted">No feature data for this feature (its set has none, or the graph names no set).</div>`;
  const parts = [];
  if (card.label) parts.push(`<div class="label">${esc(card.label)}</div>`);
  parts.push(`<div class="muted">density ${fmt(100 * card.density, 3)}% · max ${fmt(card.max, 3)}</div>`);
  parts.push("<b>Top-activating contexts</b>");
  parts.push((card.contexts || []).map((c) => contextHtml(c, card.max)).join("") || '<div class="muted">none</div>');
  parts.push(effectsHtml(card));
  const link = G.links[G.card[i]];
  if (withLink && link) {
    // the frame is served at <app>/component/<name>/index.html: the page's link is relative to <app>/
    const href = new URL(link, window.location.href.split("/component/")[0] + "/").href;
    parts.push(`<div><a href="${esc(href)}" target="_blank" rel="noopener" class="features-link">Open in the Features page</a></div>`);
  }
  return parts.join("");
}

function logitsHtml(G, i) {
  const rows = [];
  for (let k = 0; k < G.n; k++) if (G.kind[k] === "logit") rows.push(k);
  rows.sort((a, b) => (G.prob[b] ?? 0) - (G.prob[a] ?? 0));
  const body = rows.map((k) => `<tr class="walk" data-node="${k}"><td>${k === i ? "<b>" : ""}${esc(G.name[k])}${k === i ? "</b>" : ""}</td>` +
    `<td class="w">${fmt(G.prob[k], 3)}</td></tr>`).join("");
  return `<div>probability <b>${fmt(G.prob[i], 4)}</b></div><h4>Top-${rows.length} logits of the graph</h4><table>${body}</table>`;
}

function hoverHtml(G, i, selected) {
  const parts = [`<div><b>${esc(title(G, i))}</b></div>`,
                 `<div class="muted">${esc(G.kind[i])} · ${G.kind[i] === "feature" ? "activation" : "value"} ${fmt(G.value[i])}` +
                 ` · influence ${fmt(G.influence[i], 3)}</div>`];
  if (selected !== null && selected !== i) {
    const into = edgeBetween(G, i, selected), from = edgeBetween(G, selected, i);
    if (into !== null) parts.push(`<div>edge to the selected node: <b class="${into >= 0 ? "pos" : "neg"}">${fmt(into)}</b></div>`);
    if (from !== null) parts.push(`<div>edge from the selected node: <b class="${from >= 0 ? "pos" : "neg"}">${fmt(from)}</b></div>`);
  }
  if (G.kind[i] === "feature") parts.push(featureCardHtml(G, i, false));
  if (G.kind[i] === "logit") parts.push(`<div>probability <b>${fmt(G.prob[i], 4)}</b></div>`);
  return parts.join("");
}
