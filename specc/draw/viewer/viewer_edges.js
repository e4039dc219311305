// specc's model viewer, edge helpers (inlined before viewer.js): where edge labels go so none
// overprints another or a frame title, and the lanes of edges that pass over boxes.
(function () {
  "use strict";
  // Edge labels go where they cover no other label and no frame title: a grid of taken rectangles,
  // the first free candidate spot, else the first spot free further right.
  function labelPlacer(width) {   // width(text): the label's width in px
    const CELL = 80, grid = new Map(), widths = new Map();
    const overlap = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
    function cells(r, visit) {
      for (let gx = Math.floor(r.x / CELL); gx <= Math.floor((r.x + r.w) / CELL); gx++)
        for (let gy = Math.floor(r.y / CELL); gy <= Math.floor((r.y + r.h) / CELL); gy++) visit(gx + "," + gy);
    }
    function free(r) {
      let ok = true;
      cells(r, key => { if (ok) for (const other of grid.get(key) || []) if (overlap(r, other)) { ok = false; break; } });
      return ok;
    }
    function take(r) { cells(r, key => { if (!grid.has(key)) grid.set(key, []); grid.get(key).push(r); }); }
    function place(text, spots) {   // spots: [x, y] text baselines to try, best first; returns the one taken
      if (!widths.has(text)) widths.set(text, width(text));
      const w = widths.get(text) + 2, rect = ([x, y]) => ({x: x - 1, y: y - 9, w, h: 12});
      let spot = spots.find(s => free(rect(s)));
      for (let step = 1; !spot; step++) { const s = [spots[0][0] + step * 6, spots[0][1]]; if (free(rect(s))) spot = s; }
      take(rect(spot));
      return spot;
    }
    return {take, place};
  }
  // An edge that passes over boxes or frames (U-Net's skips) gets a lane of its own right of them,
  // shortest first, each beside the lanes it overlaps, so no edge hides under the column.
  // edges: [{from, to}] (residual skips left out), items: every placed box and frame {x, y, w, h};
  // returns Map(edge -> the lane's x).
  function skipLanes(edges, items, GAP_Y) {
    const lanes = new Map(), placed = [];
    const long = edges.filter(({from, to}) => to.y - (from.y + from.h) > GAP_Y + 2);
    long.sort((e, f) => (e.to.y - e.from.y) - (f.to.y - f.from.y));
    for (const edge of long) {
      const y1 = edge.from.y + edge.from.h, y2 = edge.to.y;
      const xs = [edge.from.x + edge.from.w / 2, edge.to.x + edge.to.w / 2], left = Math.min(...xs), right = Math.max(...xs);
      let lane = -Infinity;
      for (const p of items) if (p.y >= y1 && p.y + p.h <= y2 && p.x <= right && p.x + p.w >= left) lane = Math.max(lane, p.x + p.w + 12);
      if (lane === -Infinity) continue;   // nothing in the way: the plain curve shows
      for (const other of placed) if (other.y1 < y2 && y1 < other.y2) lane = Math.max(lane, other.lane + 10);
      placed.push({y1, y2, lane});
      lanes.set(edge, lane);
    }
    return lanes;
  }

  window.speccEdges = {labelPlacer, skipLanes};
})();
