// specc's viewer, the tools around the drawing: the search result list, the minimap and the
// SVG / PNG export of the current view. Runs after viewer.js and uses only window.speccViewer.
(function () {
  "use strict";
  const viewer = window.speccViewer, stage = viewer.stage;
  const MAX_RESULTS = 200;          // a list longer than this is no help, and costs page time
  const MAP_W = 180, MAP_H = 140;   // the minimap's largest size, px

  // ----- search results: every match with its kind and path; click, Enter or arrows to go ------
  const results = Object.assign(document.createElement("div"), {id: "results"});
  stage.appendChild(results);
  function describe(id) {
    if (viewer.boxes.has(id)) { const b = viewer.boxes.get(id); return [b.title, b.type || b.kind, b.path || b.id]; }
    const c = viewer.clusters.get(id);
    return [c.label, `${c.kind} frame`, c.path || c.id];
  }
  function listResults() {
    const matches = viewer.matches();
    results.replaceChildren(...matches.slice(0, MAX_RESULTS).map((id, index) => {
      const row = Object.assign(document.createElement("div"), {className: "result"});
      row.dataset.index = index;
      const [label, kind, path] = describe(id);
      row.append(Object.assign(document.createElement("b"), {textContent: label}),
                 Object.assign(document.createElement("span"), {className: "kind", textContent: kind}),
                 Object.assign(document.createElement("span"), {className: "path", textContent: path}));
      return row;
    }));
    if (matches.length > MAX_RESULTS)
      results.append(Object.assign(document.createElement("div"), {className: "more", textContent: `… ${matches.length - MAX_RESULTS} more`}));
    results.style.display = matches.length ? "block" : "none";
    markCurrent();
  }
  function markCurrent() {
    for (const row of results.querySelectorAll(".result")) {
      const current = Number(row.dataset.index) === viewer.matchIndex();
      row.classList.toggle("current", current);
      if (current) row.scrollIntoView({block: "nearest"});
    }
  }
  results.addEventListener("mousedown", e => e.stopPropagation());   // not a pan of the drawing
  results.addEventListener("wheel", e => e.stopPropagation());
  results.addEventListener("click", e => {
    const row = e.target.closest(".result");
    if (row) { viewer.showMatch(Number(row.dataset.index)); markCurrent(); }
  });
  document.getElementById("search").addEventListener("keydown", e => {
    if (e.key === "ArrowDown" || e.key === "ArrowUp") { e.preventDefault(); viewer.nextMatch(e.key === "ArrowDown" ? 1 : -1); }
    if (e.key === "Escape") results.style.display = "none";
    markCurrent();
  });
  viewer.hooks.search.push(listResults);

  // ----- minimap: the visible boxes as rectangles, once per layout; the view as one moved <div> --
  const map = Object.assign(document.createElement("div"), {id: "minimap"});
  const canvas = document.createElement("canvas"), frameOfView = Object.assign(document.createElement("div"), {id: "minimap-view"});
  map.append(canvas, frameOfView);
  stage.appendChild(map);
  let scale = 1;
  function drawMap() {
    const root = viewer.size(), context = canvas.getContext("2d");
    scale = Math.min(MAP_W / Math.max(1, root.w), MAP_H / Math.max(1, root.h));
    canvas.width = Math.max(1, Math.ceil(root.w * scale)); canvas.height = Math.max(1, Math.ceil(root.h * scale));
    context.fillStyle = "#9aa4b1"; context.strokeStyle = "#c8ced6";
    for (const [id, p] of viewer.positions()) {
      if (viewer.boxes.has(id) || viewer.collapsed.has(id)) context.fillRect(p.x * scale, p.y * scale, Math.max(1, p.w * scale), Math.max(1, p.h * scale));
      else context.strokeRect(p.x * scale, p.y * scale, p.w * scale, p.h * scale);
    }
    moveMap();
  }
  function moveMap() {   // the part of the drawing the stage shows, in minimap pixels
    const v = viewer.view, area = stage.getBoundingClientRect(), k = scale / v.k;
    Object.assign(frameOfView.style, {left: `${-v.x * k}px`, top: `${-v.y * k}px`, width: `${area.width * k}px`, height: `${area.height * k}px`});
  }
  let mapDrag = false;
  function centreAt(e) {   // the view's centre to the drawing point under the pointer
    const box = canvas.getBoundingClientRect(), v = viewer.view, area = stage.getBoundingClientRect();
    const x = (e.clientX - box.left) / scale, y = (e.clientY - box.top) / scale;
    v.x = area.width / 2 - x * v.k; v.y = area.height / 2 - y * v.k; viewer.applyView();
  }
  map.addEventListener("mousedown", e => { e.stopPropagation(); e.preventDefault(); mapDrag = true; centreAt(e); });
  window.addEventListener("mousemove", e => { if (mapDrag) centreAt(e); });
  window.addEventListener("mouseup", () => { mapDrag = false; });
  map.addEventListener("wheel", e => e.stopPropagation());
  viewer.hooks.render.push(drawMap);
  viewer.hooks.view.push(moveMap);
  drawMap();

  // ----- export: the current view as a standalone SVG (styles inlined) or as a PNG of it -----------
  function viewSvg() {
    const v = viewer.view, area = stage.getBoundingClientRect();
    const copy = viewer.svg.cloneNode(true);
    const [x, y, w, h] = [-v.x / v.k, -v.y / v.k, area.width / v.k, area.height / v.k];
    copy.removeAttribute("style"); copy.removeAttribute("id");
    copy.setAttribute("xmlns", "http://www.w3.org/2000/svg");
    copy.setAttribute("viewBox", `${x} ${y} ${w} ${h}`);
    copy.setAttribute("width", Math.round(area.width)); copy.setAttribute("height", Math.round(area.height));
    const style = document.createElementNS("http://www.w3.org/2000/svg", "style");
    style.textContent = [...document.querySelectorAll("style")].map(s => s.textContent).join("\n");
    const background = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    for (const [k, value] of Object.entries({x, y, width: w, height: h, fill: "#fff"})) background.setAttribute(k, value);
    copy.prepend(style, background);
    return new XMLSerializer().serializeToString(copy);
  }
  function download(name, url) {
    const link = Object.assign(document.createElement("a"), {href: url, download: name});
    document.body.appendChild(link); link.click(); link.remove();
  }
  const baseName = (document.title.split(" · ")[0] || "model").replace(/[^\w.-]+/g, "_");
  function exportSvg() {
    download(`${baseName}.svg`, URL.createObjectURL(new Blob([viewSvg()], {type: "image/svg+xml"})));
  }
  function exportPng(ratio = window.devicePixelRatio || 1) {
    const text = viewSvg(), image = new Image(), area = stage.getBoundingClientRect();
    return new Promise((done, fail) => {
      image.onload = () => {
        const canvas = document.createElement("canvas");
        canvas.width = Math.round(area.width * ratio); canvas.height = Math.round(area.height * ratio);
        canvas.getContext("2d").drawImage(image, 0, 0, canvas.width, canvas.height);
        canvas.toBlob(blob => { download(`${baseName}.png`, URL.createObjectURL(blob)); done(); }, "image/png");
      };
      image.onerror = () => fail(new Error("the SVG of the view did not load as an image"));
      image.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(text);
    });
  }
  const buttons = document.getElementById("close-all");
  const svgButton = Object.assign(document.createElement("button"), {id: "export-svg", textContent: "SVG", title: "save the current view as SVG"});
  const pngButton = Object.assign(document.createElement("button"), {id: "export-png", textContent: "PNG", title: "save the current view as PNG"});
  buttons.after(svgButton, pngButton);
  svgButton.addEventListener("click", exportSvg);
  pngButton.addEventListener("click", () => exportPng());
  Object.assign(viewer, {viewSvg, exportSvg, exportPng, listResults});
})();
