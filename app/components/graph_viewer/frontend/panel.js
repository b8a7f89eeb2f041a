// The node panel beside the graph: the selected node (or supernode), its strongest inputs and outputs as
// rows that select the node they name (walking the graph), pin / group controls, the pinned list.
"use strict";
function edgeRowsHtml(G, list, vis, name) {
  if (!list.length) return '<div class="muted">none</div>';
  return `<table data-list="${name}">` + list.map(([o, w]) => `<tr class="walk${vis.node[o] ? "" : " hidden"}" data-node="${o}">` +
    `<td>${esc(title(G, o))}</td><td class="w ${w >= 0 ? "pos" : "neg"}">${fmt(w)}</td></tr>`).join("") + "</table>";
}

function nodeHtml(G, S, vis, i) {
  const pinned = S.pins.has(i);
  const parts = [`<h3 id="panel-title">${esc(G.kind[i][0].toUpperCase() + G.kind[i].slice(1))} node</h3>`,
    `<div class="node-name"><b>${esc(G.name[i])}</b></div>`];
  if (G.label[i]) parts.push(`<div class="label">${esc(G.label[i])}</div>`);
  parts.push(`<div class="sub">id ${esc(G.ids[i])}</div>`,
    `<div>${G.kind[i] === "feature" ? "activation" : "value"} <b>${fmt(G.value[i])}</b> · cumulative influence ${fmt(G.influence[i], 3)}` +
    `${vis.node[i] ? "" : ' · <span class="muted">hidden at these thresholds</span>'}</div>`,
    `<div style="margin:4px 0"><button data-act="pin">${pinned ? "Unpin" : "Pin"}</button> ` +
    `<span class="muted">shift- or ctrl-click nodes to select several, then group them</span></div>`);
  if (G.kind[i] === "logit") parts.push(logitsHtml(G, i));
  parts.push("<h4>Strongest inputs</h4>", edgeRowsHtml(G, strongestOf(G, [i], true, 10), vis, "inputs"));
  parts.push("<h4>Strongest outputs</h4>", edgeRowsHtml(G, strongestOf(G, [i], false, 10), vis, "outputs"));
  if (G.kind[i] === "feature") parts.push("<h4>Feature</h4>", featureCardHtml(G, i, true));
  return parts.join("");
}

function groupHtml(G, S, vis, gi) {
  const g = S.groups[gi];
  const members = "<table>" + g.members.map((m) => `<tr class="walk" data-node="${m}"><td>${esc(title(G, m))}</td></tr>`).join("") + "</table>";
  return [`<h3 id="panel-title">Supernode ${esc(g.name)}</h3>`, `<div class="sub">${g.members.length} nodes</div>`,
    `<div style="margin:4px 0"><button data-act="ungroup" data-group="${gi}">Ungroup</button></div>`,
    "<h4>Members</h4>", members,
    "<h4>Strongest inputs</h4>", edgeRowsHtml(G, strongestOf(G, g.members, true, 10), vis, "inputs"),
    "<h4>Strongest outputs</h4>", edgeRowsHtml(G, strongestOf(G, g.members, false, 10), vis, "outputs")].join("");
}

function selectionHtml(G, S) {
  if (S.multi.size < 2) return "";
  const names = Array.from(S.multi).map((m) => esc(G.name[m])).join("; ");
  return `<h4>${S.multi.size} nodes selected</h4><div class="sub">${names}</div>` +
    `<div style="margin:4px 0"><input id="group-name" placeholder="supernode name" size="16" aria-label="Supernode name">` +
    ` <button data-act="group">Group into a supernode</button> <button data-act="pin-all">Pin all</button></div>`;
}

function pinsHtml(G, S) {
  const parts = [];
  if (S.groups.length) {
    parts.push("<h4>Supernodes</h4><table>" + S.groups.map((g, gi) =>
      `<tr class="walk" data-group="${gi}"><td>${esc(g.name)}</td><td class="muted">${g.members.length} nodes</td></tr>`).join("") + "</table>");
  }
  if (S.pins.size) {
    parts.push('<h4>Pinned</h4><table data-list="pins">' + Array.from(S.pins).map((p) =>
      `<tr class="walk" data-node="${p}"><td>${esc(title(G, p))}</td></tr>`).join("") + "</table>");
  }
  return parts.join("");
}

function renderPanel(panel, G, S, vis) {
  let body;
  if (S.selectedGroup !== null && S.groups[S.selectedGroup]) body = groupHtml(G, S, vis, S.selectedGroup);
  else if (S.selected !== null) body = nodeHtml(G, S, vis, S.selected);
  else body = '<h3 id="panel-title">No node selected</h3><div class="muted">Click a node of the graph.</div>';
  panel.innerHTML = selectionHtml(G, S) + body + pinsHtml(G, S);
}
