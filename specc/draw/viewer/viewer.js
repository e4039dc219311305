// specc's model viewer: lays out boxes nested in frames, top to bottom, with no library.
// Each frame lays its children out in rows by longest path from the frame's entry; a collapsed
// frame is one box. Pan and zoom move one <g> transform, so they cost nothing per node.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("specc-data").textContent);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const GAP_X = 22, GAP_Y = 30, PAD = 12, HEADER = 20, LINE = 13;

  const boxes = new Map(DATA.boxes.map((b, i) => [b.id, Object.assign(b, {order: i})]));
  const clusters = new Map(DATA.clusters.map(c => [c.id, c]));
  const collapsed = new Set(DATA.collapsed);
  const ACROSS = DATA.rankdir === "LR";   // `specc draw --rankdir LR`: left to right
  const changes = DATA.changes || {};
  const view = {x: 20, y: 20, k: 1};
  let selected = null, matches = [], matchIndex = -1, positions = new Map();
  const hooks = {render: [], view: [], search: []};   // viewer_tools.js: result list, minimap

  // ----- structure: the children of each frame and the order key of each item -------------------
  const children = new Map([[null, []]]);
  for (const c of clusters.values()) children.set(c.id, []);
  for (const c of clusters.values()) children.get(c.parent).push({cluster: c.id});
  for (const b of boxes.values()) children.get(b.cluster).push({box: b.id});
  const orderOf = new Map();
  function order(item) {
    const key = item.box || item.cluster;
    if (orderOf.has(key)) return orderOf.get(key);
    let value = item.box ? boxes.get(item.box).order : Infinity;
    if (item.cluster) for (const child of children.get(item.cluster)) value = Math.min(value, order(child));
    orderOf.set(key, value);
    return value;
  }
  for (const list of children.values()) list.sort((a, b) => order(a) - order(b));

  function chain(boxId) {            // the frames around a box, innermost first
    const result = [];
    for (let c = boxes.get(boxId).cluster; c !== null; c = clusters.get(c).parent) result.push(c);
    return result;
  }
  const chains = new Map([...boxes.keys()].map(id => [id, chain(id)]));

  // Each arrow orders two items inside the innermost frame holding both ends.
  const dependencies = new Map();    // frame id -> [[source item key, target item key]]
  for (const arrow of DATA.arrows) {
    const sourceChain = chains.get(arrow.s), targetChain = chains.get(arrow.t);
    const common = sourceChain.find(c => targetChain.includes(c)) ?? null;
    // the item of `common` that holds the box: the box itself, or the frame just inside `common`
    const itemIn = (boxId, frames) => { const i = common === null ? frames.length : frames.indexOf(common); return i === 0 ? boxId : frames[i - 1]; };
    const source = itemIn(arrow.s, sourceChain), target = itemIn(arrow.t, targetChain);
    if (source === target) continue;
    if (!dependencies.has(common)) dependencies.set(common, []);
    dependencies.get(common).push([source, target]);
  }

  // ----- sizes and layout -----------------------------------------------------------------------
  const measure = document.createElement("canvas").getContext("2d");
  function textWidth(text, font) { measure.font = font; return measure.measureText(text).width; }
  function boxLines(b) {
    const head = b.title + (b.subtitle ? "  " + b.subtitle : "");
    return {head, details: b.details || []};
  }
  function boxSize(b) {
    const {head, details} = boxLines(b);
    let w = textWidth(head, "bold 12px sans-serif");
    for (const line of details) w = Math.max(w, textWidth(line, "10px sans-serif"));
    return {w: Math.max(60, w + 20), h: 24 + LINE * details.length};
  }
  function collapsedSize(c) {
    const w = Math.max(textWidth(c.label, "bold 12px sans-serif"), textWidth(collapsedNote(c), "10px sans-serif"));
    return {w: w + 28, h: 24 + LINE};
  }
  function collapsedNote(c) {
    return [c.kind, `${c.layers} layer${c.layers === 1 ? "" : "s"}`, `${readable(c.params)} params`].join(" · ");
  }
  const sizeCache = new Map();
  function size(item) {
    if (item.box) { if (!sizeCache.has(item.box)) sizeCache.set(item.box, boxSize(boxes.get(item.box))); return sizeCache.get(item.box); }
    const c = clusters.get(item.cluster);
    return collapsed.has(c.id) ? collapsedSize(c) : layoutFrame(c.id);
  }

  // Lays out the items of `frameId` relative to its top-left; returns its size.
  const frames = new Map();
  function layoutFrame(frameId) {
    const items = children.get(frameId), rank = new Map();
    const key = item => item.box || item.cluster, ordinal = new Map(items.map((item, i) => [key(item), i]));
    const preds = new Map();
    for (const [s, t] of dependencies.get(frameId) || []) {
      if (!ordinal.has(s) || !ordinal.has(t) || ordinal.get(s) >= ordinal.get(t)) continue;  // a back edge (shared module)
      if (!preds.has(t)) preds.set(t, []);
      preds.get(t).push(s);
    }
    const rows = [];
    for (const item of items) {
      let r = 0;
      for (const p of preds.get(key(item)) || []) r = Math.max(r, rank.get(p) + 1);
      rank.set(key(item), r);
      (rows[r] = rows[r] || []).push(item);
    }
    const top = frameId === null ? 0 : HEADER + 4, side = frameId === null ? 0 : PAD;
    if (ACROSS) return layoutAcross(frameId, rows.filter(Boolean), top, side);
    const measured = rows.filter(Boolean).map(row => {
      const sizes = row.map(size);
      return {row, sizes, w: sizes.reduce((sum, s) => sum + s.w, 0) + GAP_X * (row.length - 1),
              h: Math.max(...sizes.map(s => s.h))};
    });
    const inner = Math.max(0, ...measured.map(m => m.w));
    const placed = [];
    let y = top;
    for (const m of measured) {
      let x = side + (inner - m.w) / 2;
      m.row.forEach((item, i) => { placed.push({item, x, y: y + (m.h - m.sizes[i].h) / 2, w: m.sizes[i].w, h: m.sizes[i].h}); x += m.sizes[i].w + GAP_X; });
      y += m.h + GAP_Y;
    }
    const result = {w: Math.max(inner + 2 * side, frameId === null ? 0 : textWidth(clusters.get(frameId).label, "bold 11px sans-serif") + 40),
                    h: y - GAP_Y + (frameId === null ? 0 : PAD), placed};
    frames.set(frameId, result);
    return result;
  }

  function layoutAcross(frameId, columns, top, side) {   // `--rankdir LR`: ranks are columns, left to right
    const measured = columns.map(column => {
      const sizes = column.map(size);
      return {column, sizes, w: Math.max(...sizes.map(s => s.w)),
              h: sizes.reduce((sum, s) => sum + s.h, 0) + GAP_Y * (column.length - 1)};
    });
    const inner = Math.max(0, ...measured.map(m => m.h)), placed = [];
    let x = side;
    for (const m of measured) {
      let y = top + (inner - m.h) / 2;
      m.column.forEach((item, i) => { placed.push({item, x: x + (m.w - m.sizes[i].w) / 2, y, w: m.sizes[i].w, h: m.sizes[i].h}); y += m.sizes[i].h + GAP_Y; });
      x += m.w + 2 * GAP_X;
    }
    const result = {w: Math.max(x - 2 * GAP_X + side, frameId === null ? 0 : textWidth(clusters.get(frameId).label, "bold 11px sans-serif") + 40),
                    h: top + inner + (frameId === null ? 0 : PAD + 12), placed};   // room below for the skip lanes
    frames.set(frameId, result);
    return result;
  }

  function place(frameId, ox, oy) {   // absolute positions of everything visible
    for (const p of frames.get(frameId).placed) {
      const id = p.item.box || p.item.cluster, x = ox + p.x, y = oy + p.y;
      positions.set(id, {x, y, w: p.w, h: p.h});
      if (p.item.cluster && !collapsed.has(id)) place(id, x, y);
    }
  }

  function visible(boxId) {         // the box itself, or its outermost collapsed frame
    const frames = chains.get(boxId);
    for (let i = frames.length - 1; i >= 0; i--) if (collapsed.has(frames[i])) return frames[i];
    return boxId;
  }

  // ----- drawing ---------------------------------------------------------------------------------
  function el(name, attributes, parent, text) {
    const node = document.createElementNS(SVG_NS, name);
    for (const k in attributes) node.setAttribute(k, attributes[k]);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function render() {
    frames.clear(); positions = new Map();
    const root = layoutFrame(null);
    place(null, 0, 0);
    const layerFrames = el("g", {}), layerEdges = el("g", {}), layerNodes = el("g", {});
    const drawnFrames = [...positions.keys()].filter(id => clusters.has(id) && !collapsed.has(id));
    const labels = labelPlacer();
    for (const id of drawnFrames) labels.take(titleRect(clusters.get(id), positions.get(id)));
    for (const id of drawnFrames) drawFrame(clusters.get(id), positions.get(id), layerFrames);
    const laneEnd = drawEdges(layerEdges, labels);
    for (const [id, p] of positions) {
      if (boxes.has(id)) drawBox(boxes.get(id), p, layerNodes);
      else if (collapsed.has(id)) drawCollapsed(clusters.get(id), p, layerNodes);
    }
    viewport.replaceChildren(layerFrames, layerEdges, layerNodes);
    const margin = 40;   // room for edges that bend out to the right
    svg.setAttribute("width", Math.max(root.w + margin, ACROSS ? 0 : laneEnd + 20));
    svg.setAttribute("height", Math.max(root.h + margin, ACROSS ? laneEnd + 20 : 0));
    document.getElementById("count").textContent =
      `${layerNodes.childElementCount} nodes shown · ${boxes.size} in all · ${root.w.toFixed(0)}×${root.h.toFixed(0)} px`;
    highlight(); hooks.render.forEach(f => f());
  }

  function drawFrame(c, p, parent) {
    const g = el("g", {class: `frame frame-${c.kind}` + changeClass(c.id), "data-id": c.id}, parent);
    const style = c.color ? `fill:${c.color[0]};stroke:${c.color[1]}` : "";
    el("rect", {x: p.x, y: p.y, width: p.w, height: p.h, rx: 8, style}, g);
    const header = el("g", {class: "frame-header", "data-id": c.id}, g);
    el("rect", {x: p.x, y: p.y, width: p.w, height: HEADER, rx: 8, class: "header-hit"}, header);
    el("text", {x: p.x + 8, y: p.y + 14}, header, `▾ ${c.label}`);
  }

  function drawBox(b, p, parent) {
    const classes = `node kind-${b.kind}` + (b.id === selected ? " selected" : "") + changeClass(b.id);
    const g = el("g", {class: classes, "data-id": b.id}, parent);
    el("rect", {x: p.x, y: p.y, width: p.w, height: p.h, rx: b.kind === "merge" ? p.h / 2 : 5}, g);
    const {head, details} = boxLines(b);
    el("text", {x: p.x + p.w / 2, y: p.y + 16, class: "head"}, g, head);
    details.forEach((line, i) => el("text", {x: p.x + p.w / 2, y: p.y + 29 + i * LINE, class: "detail"}, g, line));
  }

  function drawCollapsed(c, p, parent) {
    const g = el("g", {class: "node collapsed" + (c.id === selected ? " selected" : "") + changeClass(c.id), "data-id": c.id}, parent);
    el("rect", {x: p.x + 4, y: p.y + 4, width: p.w - 4, height: p.h - 4, rx: 5, class: "stack"}, g);
    el("rect", {x: p.x, y: p.y, width: p.w - 4, height: p.h - 4, rx: 5}, g);
    el("text", {x: p.x + p.w / 2 - 2, y: p.y + 16, class: "head"}, g, `▸ ${c.label}`);
    el("text", {x: p.x + p.w / 2 - 2, y: p.y + 29, class: "detail"}, g, collapsedNote(c));
  }

  function labelPlacer() {   // viewer_edges.js; draws each label where it placed it
    const placer = window.speccEdges.labelPlacer(text => textWidth(text, "9px sans-serif"));
    return {take: placer.take, place: (text, spots, parent) => {
      const [x, y] = placer.place(text, spots);
      el("text", {x, y, class: "edge-label"}, parent, text);
    }};
  }
  function titleRect(c, p) {   // where drawFrame writes the frame's title
    return {x: p.x + 7, y: p.y + 2, w: textWidth(`▾ ${c.label}`, "bold 11px sans-serif") + 3, h: 17};
  }

  function drawEdges(parent, labels) {
    const seen = new Set(), edges = [];
    for (const a of DATA.arrows) {
      const s = visible(a.s), t = visible(a.t), key = `${s}>${t}>${a.shape}`;
      if (s === t || seen.has(key)) continue;
      seen.add(key);
      const from = positions.get(s), to = positions.get(t);
      if (from && to) edges.push({a, from, to});
    }
    const lanes = skipLanes(edges);
    if (ACROSS) for (const edge of edges) drawEdgeAcross(edge, lanes.get(edge), parent, labels);
    else for (const edge of edges) drawEdge(edge, lanes.get(edge), parent, labels);
    return Math.max(0, ...lanes.values());   // how far right (below, left to right) the lanes reach
  }

  function skipLanes(edges) {   // viewer_edges.js
    const residual = edge => edge.a.skip && positions.get(chains.get(edge.a.t)[0]);
    if (!ACROSS) return window.speccEdges.skipLanes(edges.filter(edge => !residual(edge)), [...positions.values()], GAP_Y);
    // left to right: the same lanes with x and y swapped, so they run below the boxes
    const swap = p => ({x: p.y, y: p.x, w: p.h, h: p.w}), swapped = new Map();
    for (const edge of edges) if (!residual(edge)) swapped.set({from: swap(edge.from), to: swap(edge.to)}, edge);
    const lanes = window.speccEdges.skipLanes([...swapped.keys()], [...positions.values()].map(swap), 2 * GAP_X);
    return new Map([...lanes].map(([key, lane]) => [swapped.get(key), lane]));
  }

  function drawEdge({a, from, to}, lane, parent, labels) {
    const x1 = from.x + from.w / 2, y1 = from.y + from.h, x2 = to.x + to.w / 2, y2 = to.y;
    const frame = a.skip && positions.get(chains.get(a.t)[0]);
    const side = lane ?? (frame && y2 > y1 ? frame.x + frame.w - 8 : null);   // a residual's skip: down its frame's right side
    let d;
    if (side !== null) d = `M${x1},${y1} C${x1},${y1 + 16} ${side},${y1 + 8} ${side},${y1 + 30} L${side},${y2 - 30} C${side},${y2 - 8} ${x2},${y2 - 16} ${x2},${y2}`;
    else if (y2 > y1) { const m = (y1 + y2) / 2; d = `M${x1},${y1} C${x1},${m} ${x2},${m} ${x2},${y2}`; }
    else { const out = Math.max(from.x + from.w, to.x + to.w) + 30; d = `M${x1},${y1} C${out},${y1 + 40} ${out},${y2 - 40} ${x2},${y2}`; }
    el("path", {d, class: "edge" + (a.skip ? " skip" : "") + (lane !== undefined ? " lane" : "")}, parent);
    if (!a.shape) return;
    const mx = (x1 + x2) / 2 + 4, w = textWidth(a.shape, "9px sans-serif");
    const spots = y2 > y1 ? [[mx, y2 - 6], [mx, y1 + 12], [x2 - w - 6, y2 - 6], [x1 + 4, y1 + 12], [x1 - w - 6, y1 + 12]] : [[mx, (y1 + y2) / 2]];
    if (lane !== undefined) spots.unshift([lane + 4, (y1 + y2) / 2]);
    labels.place(a.shape, spots, parent);
  }

  function drawEdgeAcross({a, from, to}, ownLane, parent, labels) {   // left to right: out of the right side, into the left
    const x1 = from.x + from.w, y1 = from.y + from.h / 2, x2 = to.x, y2 = to.y + to.h / 2;
    const frame = a.skip && positions.get(chains.get(a.t)[0]);
    let d;
    if (ownLane !== undefined || (frame && x2 > x1)) {   // a lane of its own, or a residual's along the bottom of its frame
      const lane = ownLane ?? frame.y + frame.h - 8;
      d = `M${x1},${y1} C${x1 + 16},${y1} ${x1 + 8},${lane} ${x1 + 30},${lane} L${x2 - 30},${lane} C${x2 - 8},${lane} ${x2 - 16},${y2} ${x2},${y2}`;
    } else if (x2 > x1) { const m = (x1 + x2) / 2; d = `M${x1},${y1} C${m},${y1} ${m},${y2} ${x2},${y2}`; }
    else { const below = Math.max(from.y + from.h, to.y + to.h) + 30; d = `M${x1},${y1} C${x1 + 40},${below} ${x2 - 40},${below} ${x2},${y2}`; }
    el("path", {d, class: "edge" + (a.skip ? " skip" : "") + (ownLane !== undefined ? " lane" : "")}, parent);
    if (a.shape) labels.place(a.shape, [...(ownLane !== undefined ? [[(x1 + x2) / 2, ownLane - 3]] : []),
                                        [x2 > x1 ? x1 + 4 : (x1 + x2) / 2, y1 - 4], [x1 + 4, y1 + 12],
                                        [x2 - textWidth(a.shape, "9px sans-serif") - 6, y2 - 4]], parent);
  }

  function changeClass(id) { return changes[id] ? ` change-${changes[id]}` : ""; }

  // ----- details panel ---------------------------------------------------------------------------
  const number = n => (n || 0).toLocaleString("en-US");
  function readable(n) {
    const units = ["", " K", " M", " G", " T", " P"]; let u = 0, v = n || 0;
    while (Math.abs(v) >= 1000 && u < units.length - 1) { v /= 1000; u++; }
    return u ? `${v.toFixed(2)}${units[u]}` : number(n);
  }
  function showDetails(id) {
    const rows = [];
    if (boxes.has(id)) {
      const b = boxes.get(id);
      rows.push(["name", b.title], ["path", b.path || b.tooltip], ["type", b.type || b.kind]);
      if (b.kwargs) for (const [k, v] of Object.entries(b.kwargs)) rows.push([k, v + (b.inferred.includes(k) ? "  (inferred)" : "")]);
      for (const name of b.inputs || []) {   // what flows in: each input's shape
        const source = boxes.get(name);
        rows.push([`input ${name}`, (source && source.shape) || "?"]);
      }
      if (b.shape) rows.push(["output shape", b.shape]);
      if (b.dtype && b.kind === "input") rows.push(["dtype", b.dtype]);
      if (b.kind === "module") rows.push(["params", number(b.params) + (b.shared_params ? ` (+${number(b.shared_params)} shared)` : "")]);
      if (b.flops !== undefined) rows.push(["FLOPs (batch 1)", readable(b.flops)]);
      for (const [name, shape, dtype] of b.weights || []) rows.push([name, `${shape} ${dtype}`]);
      if (b.inside && b.inside.length) {   // a specc layer opened: its submodules and their weights
        rows.push(["inside", `${b.inside.length} submodule${b.inside.length === 1 ? "" : "s"}`]);
        for (const [name, type, shapes] of b.inside) rows.push([`  ${name}`, type + (shapes ? ` · ${shapes}` : "")]);
      }
      if (b.shared_with) rows.push(["shares weights of", b.shared_with]);
      if (b.location) rows.push(["spec", b.location]);
    } else if (clusters.has(id)) {
      const c = clusters.get(id);
      rows.push(["frame", c.label], ["kind", c.kind], ["path", c.path || c.id], ["layers", number(c.layers)],
                ["params", number(c.params)], ["FLOPs (batch 1)", readable(c.flops)]);
      if (c.count) rows.push(["repetitions", c.count]);
      if (c.location) rows.push(["spec", c.location]);
    }
    if (changes[id]) rows.push(["diff", changes[id]]);
    const table = document.getElementById("details");
    table.replaceChildren(...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      tr.append(Object.assign(document.createElement("th"), {textContent: k}), Object.assign(document.createElement("td"), {textContent: v}));
      return tr;
    }));
  }

  // ----- interaction -----------------------------------------------------------------------------
  function toggle(id) { collapsed.has(id) ? collapsed.delete(id) : collapsed.add(id); render(); }
  // The <svg> is drawn once at full size; panning and zooming move it as one composited layer.
  function applyView() { svg.style.transform = `translate(${view.x}px,${view.y}px) scale(${view.k})`; hooks.view.forEach(f => f()); }
  function fit() {
    const root = frames.get(null), area = stage.getBoundingClientRect();
    view.k = Math.min(1, (area.width - 40) / Math.max(1, root.w));
    view.x = (area.width - root.w * view.k) / 2; view.y = 20; applyView();
  }
  function fitAll() {   // the whole model in view, however tall: boxes, lanes beside them and edge labels
    const box = viewport.getBBox(), area = stage.getBoundingClientRect();
    view.k = Math.min(1, (area.width - 40) / Math.max(1, box.width), (area.height - 40) / Math.max(1, box.height));
    view.x = (area.width - box.width * view.k) / 2 - box.x * view.k;
    view.y = (area.height - box.height * view.k) / 2 - box.y * view.k; applyView();
  }
  function centerOn(id) {
    const p = positions.get(id), area = stage.getBoundingClientRect();
    if (!p) return;
    view.k = Math.max(view.k, 0.8);
    view.x = area.width / 2 - (p.x + p.w / 2) * view.k; view.y = area.height / 2 - (p.y + p.h / 2) * view.k; applyView();
  }
  function search(query) {
    query = query.trim().toLowerCase();
    const has = texts => texts.some(t => t && t.toLowerCase().includes(query));
    matches = !query ? [] : [...boxes.values()].filter(b => has([b.title, b.path, b.type, b.subtitle])).map(b => b.id)
      .concat([...clusters.values()].filter(c => has([c.label, c.path])).map(c => c.id));   // frames too ("shortcut")
    matchIndex = -1;
    document.getElementById("matches").textContent = query ? `${matches.length} found` : "";
    highlight(); hooks.search.forEach(f => f());
  }
  function frameChain(frameId) {    // the frame itself and every frame around it, innermost first
    const result = [];
    for (let c = frameId; c !== null; c = clusters.get(c).parent) result.push(c);
    return result;
  }
  function nextMatch(step = 1) {   // step -1 (↑) from no match yet goes to the last one
    if (matches.length) showMatch(matchIndex < 0 && step < 0 ? matches.length - 1 : (matchIndex + step + matches.length) % matches.length);
  }
  function showMatch(index) {
    matchIndex = index;
    const id = matches[index];
    for (const c of clusters.has(id) ? frameChain(id) : chains.get(id)) collapsed.delete(c);   // open every frame around it
    selected = id; render(); showDetails(id); centerOn(id);
  }
  function highlight() {
    const found = new Set(matches.map(id => clusters.has(id) ? id : visible(id)));
    for (const node of viewport.querySelectorAll("[data-id]")) node.classList.toggle("match", found.has(node.dataset.id));
  }
  function setAll(close) {
    collapsed.clear();
    if (close) for (const c of clusters.values()) if (c.parent === null || clusters.get(c.parent).kind === "repeat") collapsed.add(c.id);
    render(); fit();
  }

  // ----- page --------------------------------------------------------------------------------------
  document.body.innerHTML = `
    <header><b>${escapeHtml(DATA.name)}</b>
      <input id="search" type="search" placeholder="search by name, path or type  (Enter: next)">
      <span id="matches"></span>
      <button id="fit">fit</button><button id="fit-all">fit all</button><button id="open-all">open all</button><button id="close-all">close all</button>
      <span id="count"></span></header>
    <main><div id="stage"><svg id="canvas"><defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#666"/></marker></defs><g id="viewport"></g></svg></div>
      <aside><h3>details</h3><table id="details"><tr><td>hover or click a box</td></tr></table>
      <div id="removed"></div>
      <p class="help">click a frame's title or a ▸ box to close or open it · drag to pan · wheel to zoom</p></aside></main>`;
  const stage = document.getElementById("stage"), svg = document.getElementById("canvas"), viewport = document.getElementById("viewport");
  if (DATA.removed && DATA.removed.length)
    document.getElementById("removed").innerHTML = "<h3>removed</h3>" + DATA.removed.map(p => `<div class="change-removed">${escapeHtml(p)}</div>`).join("");

  function escapeHtml(text) { return String(text).replace(/[&<>"]/g, ch => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[ch])); }

  let drag = null, moved = false;
  stage.addEventListener("mousedown", e => { drag = {x: e.clientX - view.x, y: e.clientY - view.y}; moved = false; });
  window.addEventListener("mousemove", e => {
    if (!drag) return;
    moved = true; view.x = e.clientX - drag.x; view.y = e.clientY - drag.y; applyView();
  });
  window.addEventListener("mouseup", () => { drag = null; });
  stage.addEventListener("wheel", e => {
    e.preventDefault();
    const factor = Math.exp(-e.deltaY * 0.0015), area = stage.getBoundingClientRect();
    const mx = e.clientX - area.left, my = e.clientY - area.top, k = Math.min(4, Math.max(0.02, view.k * factor));
    view.x = mx - (mx - view.x) * (k / view.k); view.y = my - (my - view.y) * (k / view.k); view.k = k; applyView();
  }, {passive: false});
  svg.addEventListener("click", e => {
    if (moved) return;
    const header = e.target.closest(".frame-header"), node = e.target.closest(".node");
    if (header) toggle(header.dataset.id);
    else if (node && node.classList.contains("collapsed")) { selected = null; toggle(node.dataset.id); }
    else if (node) { selected = node.dataset.id; showDetails(selected); render(); }
  });
  svg.addEventListener("mouseover", e => {
    const node = e.target.closest(".node, .frame-header");
    if (node) showDetails(node.dataset.id);
  });
  svg.addEventListener("mouseout", e => { if (selected && !e.relatedTarget?.closest?.(".node")) showDetails(selected); });
  document.getElementById("search").addEventListener("input", e => search(e.target.value));
  document.getElementById("search").addEventListener("keydown", e => { if (e.key === "Enter") nextMatch(); });
  document.getElementById("fit").addEventListener("click", fit);
  document.getElementById("fit-all").addEventListener("click", fitAll);
  document.getElementById("open-all").addEventListener("click", () => setAll(false));
  document.getElementById("close-all").addEventListener("click", () => setAll(true));

  render(); fit();
  // For scripts and tests: the same actions the mouse and keyboard take.
  window.speccViewer = {toggle, search, nextMatch, showMatch, fit, fitAll, render, collapsed, view, applyView, hooks,
                        boxes, clusters, stage, svg, matches: () => matches, matchIndex: () => matchIndex,
                        positions: () => positions, size: () => frames.get(null),
                        nodeCount: () => viewport.querySelectorAll(".node").length};
})();
