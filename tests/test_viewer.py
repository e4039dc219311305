"""The interactive HTML viewer (`specc draw spec.yaml -o model.html`): a self-contained page whose
figures match the summary's, driven in a real headless Chromium (skipped without one, never in CI)."""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specc.cli import app
from specc.draw.drawing import draw

sys.path.insert(0, str(Path(__file__).parent))
from browser import Browser, find_chromium  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _data(html: str) -> dict:
    payload = re.search(r'<script type="application/json" id="specc-data">(.*?)</script>', html, re.S).group(1)
    return json.loads(payload.replace("<\\/", "</"))


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no chromium is installed (.ci/run installs it)")
        pytest.skip("no chromium/chrome browser installed: the viewer's browser tests need one")
    instance = Browser(executable)
    yield instance
    instance.close()


def test_page_is_self_contained_and_carries_the_summary_figures(tmp_path):
    result = CliRunner().invoke(app, ["draw", str(ROOT / "specs/resnet18.yaml"), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r.html").read_text()
    # nothing is fetched: no external script, stylesheet, image or font
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=', html)
    assert "@import" not in html and "url(http" not in html
    data = _data(html)
    boxes = {box["id"]: box for box in data["boxes"]}
    assert sum(box.get("params", 0) for box in boxes.values()) == 11_689_512     # specc summary's total
    assert sum(box.get("flops", 0) for box in boxes.values()) == 3_628_146_688    # at batch 1
    conv1 = boxes["conv1"]
    assert conv1["type"] == "Conv2d" and conv1["params"] == 9408 and conv1["shape"] == "B×64×112×112"
    assert conv1["kwargs"]["kernel_size"] == "7" and "in_channels" in conv1["inferred"]
    assert re.fullmatch(r".*resnet18\.yaml:\d+:\d+", conv1["location"])
    # the repeated layer1 starts closed; its frame sums what is inside it
    layer1 = next(c for c in data["clusters"] if c["id"] == "repeat:layer1")
    assert layer1["id"] in data["collapsed"] and layer1["label"] == "layer1 ×2"
    assert layer1["params"] == 147_968 and layer1["layers"] == 12   # 2 × (conv, bn, relu, conv, bn, relu)


def test_depth_and_expand_choose_what_starts_closed():
    spec = ROOT / "specs/gpt2_small.yaml"
    opened = _data(draw(spec, expand=True).to_html())
    assert opened["collapsed"] == []
    top_only = _data(draw(spec, depth=0, expand=True).to_html())
    assert "block:h.0" in top_only["collapsed"] and "block:h.11" in top_only["collapsed"]


def test_writes_to_stdout_and_by_format(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["draw", str(ROOT / "specs/parallel_cnn.yaml"), "-o", "-", "--format", "html"])
    assert result.exit_code == 0 and result.stdout.startswith("<!DOCTYPE html>")
    result = runner.invoke(app, ["draw", str(ROOT / "specs/parallel_cnn.yaml"), "-o", str(tmp_path / "x"),
                                 "--format", "mmd"])
    assert result.exit_code == 0 and (tmp_path / "x").read_text().startswith("---\ntitle: parallel_cnn")
    result = runner.invoke(app, ["draw", str(ROOT / "specs/parallel_cnn.yaml"), "-o", "-", "--format", "gif"])
    assert result.exit_code == 2 and "html" in result.output


def test_clicking_a_repeat_opens_gpt2s_twelve_blocks(browser, tmp_path):
    page = tmp_path / "gpt2_small.html"
    page.write_text(draw(ROOT / "specs/gpt2_small.yaml").to_html())
    browser.open(page)
    data = _data(page.read_text())
    closed = browser.evaluate("window.speccViewer.nodeCount()")
    assert closed == len(data["boxes"]) - 12 * 6 + 1   # h: 12 × (norm, attn, add, norm, mlp, add) as one box
    box = browser.evaluate("""(() => { const r = document.querySelector('.node.collapsed[data-id="repeat:h"]')
                              .getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()""")
    browser.click(*box)
    assert browser.evaluate("window.speccViewer.nodeCount()") == len(data["boxes"])
    assert browser.evaluate("document.querySelectorAll('.frame-block').length") == 12
    # hovering a box shows its type, kwargs, shape, params, FLOPs and where the spec says it
    browser.evaluate("""document.querySelector('.node[data-id="h.3.attention.body.attn"]')
                        .dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))""")
    details = browser.evaluate("document.getElementById('details').innerText")
    assert "CausalSelfAttention" in details and "n_heads\t12" in details and "B×block_size×768" in details
    assert "2,362,368" in details and re.search(r"gpt2_small\.yaml:\d+:\d+", details)
    browser.evaluate("window.speccViewer.search('ln_f')")
    assert browser.evaluate("document.getElementById('matches').textContent") == "1 found"
    shot = browser.screenshot(tmp_path / "gpt2_small_open.png")
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_a_thousand_item_spec_pans_and_zooms(browser, tmp_path):
    items = "\n".join(f"  - Linear: {{out_features: {16 + index % 7}}}\n    name: fc{index}" if index % 2 == 0
                      else "  - ReLU: {}" for index in range(1000))
    spec = tmp_path / "wide.yaml"
    spec.write_text(f"name: thousand\ninputs:\n  x: {{shape: [32]}}\nlayers:\n{items}\n")
    page = tmp_path / "thousand.html"
    assert CliRunner().invoke(app, ["draw", str(spec), "-o", str(page)]).exit_code == 0
    started = time.perf_counter()
    browser.open(page)
    assert browser.evaluate("window.speccViewer.nodeCount()") == 1002      # 1000 items, input, output
    # pan and zoom: the time per painted frame (headless Chromium paints at most 60 frames a second)
    frame_ms = browser.evaluate("""(async () => { const v = window.speccViewer, t = performance.now();
        for (let i = 0; i < 30; i++) { v.view.k *= (i % 2 ? 1.1 : 0.9); v.view.x += 3; v.applyView();
                                       await new Promise(done => requestAnimationFrame(done)); }
        return (performance.now() - t) / 30; })()""")
    layout_ms = browser.evaluate("(() => { const t = performance.now(); window.speccViewer.render(); "
                                 "return performance.now() - t; })()")
    print(f"1,000 items: open {time.perf_counter() - started:.2f} s, a pan/zoom frame {frame_ms:.1f} ms, "
          f"a relayout {layout_ms:.0f} ms")
    assert browser.evaluate("window.speccViewer.nodeCount()") == 1002
    browser.screenshot(tmp_path / "thousand.png")


def test_a_spec_with_free_tensors_draws_as_html(tmp_path):
    """parameter/constant items (ViT's class token, position table) carry their figures into the page."""
    result = CliRunner().invoke(app, ["draw", str(ROOT / "specs/vit_b_16.yaml"), "-o", str(tmp_path / "vit.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "vit.html").read_text()
    assert "class_token" in page and "pos_embedding" in page


def test_search_finds_frame_labels_and_opens_the_frame(browser, tmp_path):
    """`shortcut` names frames (resnet18's downsampling shortcuts), not boxes: search finds them too."""
    page = tmp_path / "resnet18.html"
    page.write_text(draw(ROOT / "specs/resnet18.yaml", depth=0).to_html())
    browser.open(page)
    data = _data(page.read_text())
    frames = [c["id"] for c in data["clusters"] if "shortcut" in (c.get("label", "") + c.get("path", "")).lower()]
    browser.evaluate("window.speccViewer.search('shortcut')")
    assert browser.evaluate("document.getElementById('matches').textContent") == f"{len(frames)} found"
    assert len(frames) == 3   # layer2, layer3, layer4
    browser.evaluate("window.speccViewer.nextMatch()")
    assert browser.evaluate(f"document.querySelector('.frame.match[data-id=\"{frames[0]}\"]') !== null")
    assert frames[0] not in browser.evaluate("[...window.speccViewer.collapsed]")


def test_rankdir_lr_lays_the_viewer_out_left_to_right(browser, tmp_path):
    for rankdir in ("TB", "LR"):
        page = tmp_path / f"mnist_{rankdir}.html"
        result = CliRunner().invoke(app, ["draw", str(ROOT / "specs/mnist_net.yaml"), "-o", str(page), "--rankdir", rankdir])
        assert result.exit_code == 0, result.output
        assert _data(page.read_text())["rankdir"] == rankdir
        browser.open(page)
        centres = browser.evaluate("""[...document.querySelectorAll('.node')].map(n => {
            const r = n.getBoundingClientRect(); return [n.dataset.id, r.x + r.width / 2, r.y + r.height / 2]; })""")
        xs, ys = [x for _, x, _ in centres], [y for _, _, y in centres]
        along, across = (ys, xs) if rankdir == "TB" else (xs, ys)
        assert along == sorted(along) and max(along) - min(along) > 5 * (max(across) - min(across) + 1), centres
    result = CliRunner().invoke(app, ["draw", str(ROOT / "specs/mnist_net.yaml"), "-o", str(tmp_path / "x.html"),
                                      "--rankdir", "BT"])
    assert result.exit_code == 2 and "TB or LR" in result.output


def test_details_list_input_shapes_and_every_weight_and_fit_all_shows_the_whole_model(browser, tmp_path):
    page = tmp_path / "resnet18.html"
    page.write_text(draw(ROOT / "specs/resnet18.yaml", expand=True).to_html())
    data = _data(page.read_text())
    conv = next(b for b in data["boxes"] if b.get("path") == "layer2.0.downsample.0")
    assert conv["weights"] == [["weight", "128×64×1×1", "float32"]]
    bn = next(b for b in data["boxes"] if b.get("path") == "bn1")
    assert [name for name, _, _ in bn["weights"]] == ["weight", "bias", "running_mean", "running_var",
                                                      "num_batches_tracked"]
    browser.open(page)
    browser.evaluate("""document.querySelector('.node[data-id="layer2.0.downsample.0"]')
                        .dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))""")
    details = browser.evaluate("document.getElementById('details').innerText")
    assert "input layer1.1.1\tB×64×56×56" in details and "weight\t128×64×1×1 float32" in details
    browser.evaluate("window.speccViewer.fitAll()")
    assert browser.evaluate(ALL_IN_VIEW.replace("SELECTOR", ".node"))


ALL_IN_VIEW = """(() => { const s = document.getElementById('stage').getBoundingClientRect();
    return [...document.querySelectorAll('SELECTOR')].every(n => { const r = n.getBoundingClientRect();
        return r.top >= s.top - 1 && r.bottom <= s.bottom + 1 && r.left >= s.left - 1 && r.right <= s.right + 1; }); })()"""


@pytest.mark.parametrize("rankdir", ["TB", "LR"])
def test_fit_all_shows_the_lanes_and_labels_too(browser, tmp_path, rankdir):
    """U-Net's skips run in lanes beside the column, past its widest box: fit all keeps them in view."""
    page = tmp_path / f"unet_{rankdir}.html"
    page.write_text(draw(ROOT / "specs/unet.yaml", rankdir=rankdir).to_html())
    browser.open(page)
    assert browser.evaluate("document.querySelectorAll('path.edge.lane').length") > 0
    # a stage long across the lanes: its narrow side decides the scale, so a lane past the widest box
    # (below the lowest, left to right) would poke out
    width, height = (300, 30000) if rankdir == "TB" else (30000, 150)
    browser.evaluate(f"""(() => {{ const s = document.getElementById('stage');
        s.style.flex = 'none'; s.style.width = '{width}px'; s.style.height = '{height}px'; }})()""")
    browser.evaluate("window.speccViewer.fitAll()")
    for selector in (".node", "path.edge", ".edge-label"):
        assert browser.evaluate(ALL_IN_VIEW.replace("SELECTOR", selector)), selector


def test_search_lists_every_match_and_a_result_opens_centres_and_selects_it(browser, tmp_path):
    page = tmp_path / "resnet18.html"
    page.write_text(draw(ROOT / "specs/resnet18.yaml", depth=0).to_html())
    browser.open(page)
    browser.evaluate("window.speccViewer.search('downsample')")
    rows = browser.evaluate("[...document.querySelectorAll('#results .result')].map(r => r.innerText)")
    matches = browser.evaluate("window.speccViewer.matches()")
    assert len(rows) == len(matches) >= 6   # layer2..4: the frame and its conv and norm boxes
    assert any("layer3.0.downsample.0" in row and "Conv2d" in row for row in rows), rows
    index = next(i for i, row in enumerate(rows) if "layer3.0.downsample.0" in row)
    target = matches[index]
    assert target in browser.evaluate("window.speccViewer.matches()")
    row = browser.evaluate(f"""(() => {{ const r = document.querySelectorAll('#results .result')[{index}]
        .getBoundingClientRect(); return [r.x + 20, r.y + r.height / 2]; }})()""")
    browser.click(*row)
    # every frame around it opened, the box selected and in the middle of the stage
    assert not {"block:layer3", "block:layer3.0"} & set(browser.evaluate("[...window.speccViewer.collapsed]"))
    assert browser.evaluate(f"document.querySelector('.node.selected[data-id=\"{target}\"]') !== null")
    centre = browser.evaluate(f"""(() => {{ const s = document.getElementById('stage').getBoundingClientRect(),
        r = document.querySelector('.node[data-id="{target}"]').getBoundingClientRect();
        return [r.x + r.width / 2 - (s.x + s.width / 2), r.y + r.height / 2 - (s.y + s.height / 2)]; }})()""")
    assert abs(centre[0]) < 2 and abs(centre[1]) < 2, centre
    assert browser.evaluate("document.querySelector('#results .result.current').dataset.index") == str(index)
    # the arrow keys step through the list
    browser.evaluate("""document.getElementById('search').dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowDown'}))""")
    assert browser.evaluate("window.speccViewer.matchIndex()") == (index + 1) % len(matches)
    assert browser.evaluate("document.querySelector('#results .result.current').dataset.index") == str((index + 1) % len(matches))
    browser.evaluate("window.speccViewer.search('downsample')")   # a new search: ↑ goes to the last result
    browser.evaluate("""document.getElementById('search').dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowUp'}))""")
    assert browser.evaluate("window.speccViewer.matchIndex()") == len(matches) - 1
    browser.evaluate("window.speccViewer.search('')")
    assert browser.evaluate("getComputedStyle(document.getElementById('results')).display") == "none"


def test_the_minimap_shows_the_view_and_a_click_on_it_moves_the_view_there(browser, tmp_path):
    page = tmp_path / "gpt2.html"
    page.write_text(draw(ROOT / "specs/gpt2_small.yaml", expand=True).to_html())
    browser.open(page)
    before = browser.evaluate("document.getElementById('minimap-view').getBoundingClientRect().top")
    # the minimap point of the output box: its drawing position times the minimap's scale
    point = browser.evaluate("""(() => { const v = window.speccViewer, canvas = document.querySelector('#minimap canvas'),
        box = canvas.getBoundingClientRect(), scale = Math.min(canvas.width / v.size().w, canvas.height / v.size().h),
        p = v.positions().get([...v.boxes.values()].find(b => b.kind === 'output').id);
        return [box.x + (p.x + p.w / 2) * scale, box.y + (p.y + p.h / 2) * scale, v.view.k / scale + 2]; })()""")
    browser.click(*point[:2])
    offset = browser.evaluate("""(() => { const s = document.getElementById('stage').getBoundingClientRect(),
        r = document.querySelector('.node.kind-output').getBoundingClientRect();
        return [r.x + r.width / 2 - (s.x + s.width / 2), r.y + r.height / 2 - (s.y + s.height / 2)]; })()""")
    assert abs(offset[0]) < point[2] and abs(offset[1]) < point[2], offset   # within a minimap pixel
    after = browser.evaluate("document.getElementById('minimap-view').getBoundingClientRect().top")
    assert after > before + 20   # the view's rectangle went down with the view
    # dragging in the minimap drags the view along (and does not pan the drawing the other way)
    box = browser.evaluate("(() => { const r = document.querySelector('#minimap canvas').getBoundingClientRect(); "
                           "return [r.x + r.width / 2, r.y, r.height]; })()")
    y_before = browser.evaluate("window.speccViewer.view.y")
    browser.send("Input.dispatchMouseEvent", type="mousePressed", x=box[0], y=box[1] + box[2] * 0.5, button="left", clickCount=1)
    middle = browser.evaluate("window.speccViewer.view.y")
    browser.send("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1] + box[2] * 0.25, button="left")
    browser.send("Input.dispatchMouseEvent", type="mouseReleased", x=box[0], y=box[1] + box[2] * 0.25, button="left", clickCount=1)
    quarter = browser.evaluate("window.speccViewer.view.y")
    assert y_before < middle < quarter   # further up the model: the drawing moves down in the stage
    height = browser.evaluate("window.speccViewer.size().h * window.speccViewer.view.k")
    assert abs((quarter - middle) - height / 4) < height / 50, (middle, quarter, height)


def test_export_saves_the_current_view_as_svg_and_png(browser, tmp_path):
    import xml.etree.ElementTree as ElementTree

    page = tmp_path / "mnist.html"
    page.write_text(draw(ROOT / "specs/mnist_net.yaml").to_html())
    browser.open(page)
    capture = """(async (button) => { let saved = null; const click = HTMLAnchorElement.prototype.click;
        HTMLAnchorElement.prototype.click = function () { saved = [this.download, this.href]; };
        try { document.getElementById(button).click();
              for (let i = 0; i < 100 && !saved; i++) await new Promise(done => setTimeout(done, 20)); }
        finally { HTMLAnchorElement.prototype.click = click; }
        const blob = await (await fetch(saved[1])).blob(), bytes = new Uint8Array(await blob.arrayBuffer());
        return [saved[0], blob.type, blob.type === 'image/png' ? [...bytes.slice(0, 8)] : new TextDecoder().decode(bytes)];
    })"""
    visible = browser.evaluate("""(() => { const s = document.getElementById('stage').getBoundingClientRect();
        return [...document.querySelectorAll('.node')].filter(n => { const r = n.getBoundingClientRect();
            return r.bottom > s.top && r.top < s.bottom && r.right > s.left && r.left < s.right; })
            .map(n => n.querySelector('text.head').textContent); })()""")
    assert len(visible) >= 5
    name, kind, text = browser.evaluate(capture + "('export-svg')")
    assert name == "mnist_net.svg" and kind == "image/svg+xml"
    root = ElementTree.fromstring(text)   # a standalone, parseable SVG
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and len(root.get("viewBox").split()) == 4
    style = root.find("{http://www.w3.org/2000/svg}style").text
    assert ".node rect" in style and ".edge" in style   # the styles travel inside it
    texts = {element.text for element in root.iter("{http://www.w3.org/2000/svg}text")}
    assert set(visible) <= texts, set(visible) - texts
    name, kind, head = browser.evaluate(capture + "('export-png')")
    assert name == "mnist_net.png" and kind == "image/png" and bytes(head) == b"\x89PNG\r\n\x1a\n"


def test_the_details_panel_opens_a_specc_layer_to_show_its_submodules(browser, tmp_path):
    page = tmp_path / "gpt2_small.html"
    page.write_text(draw(ROOT / "specs/gpt2_small.yaml", expand=True).to_html())
    attention = next(b for b in _data(page.read_text())["boxes"] if b.get("path") == "h.0.attention.body.attn")
    assert attention["inside"] == [["c_attn", "Linear", "weight 2304×768, bias 2304"],
                                   ["c_proj", "Linear", "weight 768×768, bias 768"], ["resid_dropout", "Dropout", ""]]
    browser.open(page)
    browser.evaluate("""document.querySelector('.node[data-id="h.0.attention.body.attn"] rect')
                        .dispatchEvent(new MouseEvent('click', {bubbles: true}))""")
    details = browser.evaluate("document.getElementById('details').innerText")
    assert "inside\t3 submodules" in details
    assert "c_attn\tLinear · weight 2304×768, bias 2304" in details
    assert "c_proj\tLinear · weight 768×768, bias 768" in details


LABEL_OVERLAPS = """(() => {
    const boxOf = node => { const b = node.getBBox(); return {x: b.x, y: b.y, w: b.width, h: b.height, text: node.textContent}; };
    const labels = [...document.querySelectorAll('text.edge-label')].map(boxOf);
    const titles = [...document.querySelectorAll('.frame-header text')].map(boxOf);
    const hit = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
    const found = [];
    labels.forEach((a, i) => {
        labels.slice(i + 1).forEach(b => { if (hit(a, b)) found.push([a.text, b.text]); });
        titles.forEach(t => { if (hit(a, t)) found.push([a.text, t.text]); });
    });
    return [labels.length, found.slice(0, 5)]; })()"""


@pytest.mark.parametrize("spec, options", [("llama2_7b", {"depth": 1}), ("llama2_7b", {"depth": 2}),
                                           ("llama2_7b", {"expand": True}), ("resnet18", {"expand": True}),
                                           ("resnet18", {}), ("resnet18", {"rankdir": "LR"}), ("unet", {})])
def test_edge_labels_overprint_no_other_label_and_no_frame_title(browser, tmp_path, spec, options):
    page = tmp_path / f"{spec}.html"
    page.write_text(draw(ROOT / f"specs/{spec}.yaml", **options).to_html())
    browser.open(page)
    count, overlaps = browser.evaluate(LABEL_OVERLAPS)
    assert count >= 5 and overlaps == []
    # the same after opening every frame
    browser.evaluate("document.getElementById('open-all').click()")
    count, overlaps = browser.evaluate(LABEL_OVERLAPS)
    assert count >= 5 and overlaps == []


@pytest.mark.parametrize("rankdir", ["TB", "LR"])
def test_unets_skip_connections_run_in_lanes_of_their_own_beside_the_column(browser, tmp_path, rankdir):
    from specc.draw.html import spec_html

    page = tmp_path / "unet.html"
    page.write_text(spec_html(ROOT / "specs/unet.yaml", rankdir=rankdir))
    browser.open(page)
    # TB: how far right each edge reaches, past every box and frame; LR: how far down
    end = "b.x + b.width" if rankdir == "TB" else "b.y + b.height"
    paths, column_right = browser.evaluate(f"""(() => {{
        const right = Math.max(...[...document.querySelectorAll('.node, .frame')].map(n => {{ const b = n.getBBox(); return {end}; }}));
        return [[...document.querySelectorAll('path.edge')].map(p => {{ const b = p.getBBox();
            return [p.getAttribute('d'), {end}, p.classList.contains('lane')]; }}), right]; }})()""")
    # down1 -> cat and down2 -> cat: the two skips, each right of every box and frame, in two lanes
    outside = [right for _, right, _ in paths if right > column_right]
    assert len(outside) == 2 and len(set(outside)) == 2
    assert sum(lane for _, _, lane in paths) == 2
    assert len({d for d, _, _ in paths}) == len(paths)
