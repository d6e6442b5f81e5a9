"""One self-contained interactive HTML page of a scene's voxels: no network, no external script.

The page holds, per frame and per layer (GT, prediction, binary decoder), the *visible* voxels
(occupied voxels with a free face neighbour; interior ones can never be seen) as
``zlib(delta-coded uint32 flat indices ++ uint8 labels)`` in base64, and a small software renderer
written for this page (canvas 2D + a z-buffer of square voxel splats, the same shading rules as
the PNGs; the ego is a box of splats, shaded per face as in the 3D PNGs). Controls: drag to
rotate, wheel to zoom, a frame slider with play/pause, a layer selector (error layers among them),
'colour by height' (every layer in the height ramp of :mod:`b2s_core.viz.voxels`) and one toggle per
class; the frame token is shown whole (wrapped, selected with one click, a copy button). The URL
hash ``#frame=3&layer=prediction&hide=11,16&color=height`` opens a given view. Decoding uses the
browser's ``DecompressionStream('deflate')`` (Chromium 80+, Firefox 113+, Safari 16.4+).
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from b2s_core.output_paths import atomic_path
from b2s_core.viz.render3d import EGO_BOX_M, EGO_COLOR, FACE_SHADE
from b2s_core.viz.voxels import SHADE_MIN, VisualizeError, VoxelLayer, height_bands, ramp_colors, surface_mask

# Sidebar headings of the toggles per taxonomy; a semantic taxonomy gets 'classes (NAME)'.
_HEADINGS = {"height": "height bands (binary grids)", "errors": "error cases"}


@dataclass
class HtmlFrame:
    """One frame of the page: its title and the layers to switch between (same grid for all)."""

    title: str
    layers: list[VoxelLayer]
    token: str = ""  # shown whole under the title, selectable with one click


def pack_layer(layer: VoxelLayer) -> str:
    """A layer's visible voxels -> base64 of zlib(deltas uint32 LE (N,) ++ labels uint8 (N,))."""
    flat = np.flatnonzero(surface_mask(layer.occupied))  # (N,) ascending C-order indices
    deltas = np.diff(flat, prepend=0).astype("<u4")  # small numbers: compresses well
    labels = layer.labels.reshape(-1)[flat].astype(np.uint8)
    return base64.b64encode(zlib.compress(deltas.tobytes() + labels.tobytes(), 9)).decode("ascii")


def unpack_layer(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_layer` -> ((N,) int64 flat indices, (N,) uint8 labels); what the page's JS does."""
    raw = zlib.decompress(base64.b64decode(text))
    count = len(raw) // 5
    deltas = np.frombuffer(raw[: 4 * count], dtype="<u4").astype(np.int64)
    return np.cumsum(deltas), np.frombuffer(raw[4 * count :], dtype=np.uint8)


def page_data(frames: list[HtmlFrame], title: str) -> dict:
    """Everything the page shows, as JSON-ready data."""
    if not frames or not frames[0].layers:
        raise VisualizeError(f"{title}: nothing to put on the page (no frames or no layers)")
    grid = frames[0].layers[0].grid
    taxonomies, layer_names, present = {}, [], {}
    for frame in frames:
        for layer in frame.layers:
            if not layer.grid.same_geometry(grid):
                raise VisualizeError(f"{title}: layer '{layer.title}' of frame '{frame.title}' is on another grid")
            taxonomies.setdefault(layer.taxonomy.name, layer.taxonomy)
            present.setdefault(layer.taxonomy.name, set()).update(layer.present_labels())
            if layer.title not in layer_names:
                layer_names.append(layer.title)
    num_z = grid.shape[2]
    return {
        "title": title,
        "grid": {"shape": list(grid.shape), "range_min": list(grid.range_min), "voxel_size": list(grid.voxel_size)},
        "shade_min": SHADE_MIN,
        # 'colour by height': the ramp colour of every height level (that of its band), and the metres it spans
        "height": {"colors": ramp_colors(int(height_bands(num_z)[-1]) + 1)[height_bands(num_z)].tolist(),
                   "z_min": grid.range_min[2], "z_max": grid.range_max[2]},
        # the ego box as the 3D PNGs draw it: size (m), colour, and (axis, side, brightness) per face
        "ego": {"size": list(EGO_BOX_M), "color": list(EGO_COLOR),
                "faces": [[axis, side, bright] for (axis, side), bright in FACE_SHADE.items()]},
        "taxonomies": {
            name: {"class_names": list(t.class_names), "colors": [list(c) for c in t.colors], "free_index": t.free_index,
                   "present": sorted(present[name]),  # only these get a toggle
                   "heading": _HEADINGS.get(name, f"classes ({name})")}
            for name, t in taxonomies.items()
        },
        "layer_names": layer_names,
        "frames": [
            {
                "title": frame.title,
                "token": frame.token,
                "layers": {layer.title: {"taxonomy": layer.taxonomy.name, "shaded": layer.height_shaded,
                                         "voxels": pack_layer(layer)} for layer in frame.layers},
            }
            for frame in frames
        ],
    }


def write_html(frames: list[HtmlFrame], path: Path, *, title: str = "b2s scene") -> Path:
    """Write the page (temporary file, then rename) and return its path."""
    data = json.dumps(page_data(frames, title), separators=(",", ":")).replace("</", "<\\/")
    page = _PAGE.replace("__TITLE__", _escape(title)).replace("__DATA__", data)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
 body{margin:0;background:#1c1c20;color:#e8e8e8;font:13px system-ui,sans-serif;display:flex;height:100vh}
 #side{width:230px;flex:none;padding:10px;overflow-y:auto;box-sizing:border-box;border-right:1px solid #333;
  overflow-wrap:anywhere}
 #token{display:block;margin-top:3px;padding:2px 4px;background:#26262b;font:12px ui-monospace,monospace;
  word-break:break-all;user-select:all;-webkit-user-select:all;cursor:text}
 #ramp{height:10px;margin:3px 0 1px;border:1px solid #555} .ends{display:flex;justify-content:space-between;color:#bbb;font-size:11px}
 #main{flex:1;position:relative} canvas{width:100%;height:100%;display:block;cursor:grab}
 h1{font-size:14px;margin:0 0 8px} label{display:block;margin:2px 0;cursor:pointer}
 .sw{display:inline-block;width:11px;height:11px;margin:0 5px -1px 0;border:1px solid #555}
 #status{position:absolute;left:10px;bottom:8px;color:#bbb} .row{margin:8px 0} input[type=range]{width:100%}
 button{background:#333;color:#eee;border:1px solid #555;padding:2px 8px;cursor:pointer}
</style></head><body>
<div id="side"><h1>__TITLE__</h1>
 <div class="row" id="layers"></div>
 <div class="row">frame <span id="frameno"></span><br><input type="range" id="frame" min="0" value="0">
  <button id="play">play</button> <button id="reset">reset view</button></div>
 <div class="row" id="frametitle"></div>
 <div class="row" id="tokenrow">token <button id="copy" title="copy the frame token">copy</button><code id="token"
  title="one click selects the whole token"></code></div>
 <div class="row"><label><input type="checkbox" id="byheight"> colour by height</label>
  <div id="ramp"></div><div class="ends"><span id="zmin"></span><span id="zmax"></span></div></div>
 <div class="row" id="classes"></div>
 <div class="row" style="color:#999">drag: rotate &middot; wheel: zoom &middot; keys 1-9: layer</div>
</div>
<div id="main"><canvas id="view"></canvas><div id="status">loading&hellip;</div></div>
<script type="application/json" id="b2s-data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("b2s-data").textContent);
const [NX, NY, NZ] = D.grid.shape, R0 = D.grid.range_min, VS = D.grid.voxel_size;
const HALF = NX * VS[0] / 2;
const state = {frame: 0, layer: D.layer_names[0], yaw: Math.PI, pitch: 0.75, dist: 1.8 * HALF, hidden: {}, playing: null, byHeight: false};
const cache = new Map();  // "frame/layer" -> {pos: Float32Array(3N), lab: Uint8Array(N), k: Uint8Array(N)}

async function inflate(b64) {
  const bin = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const stream = new Blob([bin]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
async function voxels(f, name) {
  const key = f + "/" + name;
  if (cache.has(key)) return cache.get(key);
  const entry = D.frames[f].layers[name];
  if (!entry) return null;
  const raw = await inflate(entry.voxels), n = raw.length / 5;
  const deltas = new DataView(raw.buffer, 0, 4 * n), lab = raw.slice(4 * n);
  const pos = new Float32Array(3 * n), k = new Uint8Array(n);
  let flat = 0;
  for (let i = 0; i < n; i++) {
    flat += deltas.getUint32(4 * i, true);  // C order over (X, Y, Z)
    const z = flat % NZ, y = Math.floor(flat / NZ) % NY, x = Math.floor(flat / (NY * NZ));
    pos[3 * i] = R0[0] + (x + 0.5) * VS[0]; pos[3 * i + 1] = R0[1] + (y + 0.5) * VS[1]; pos[3 * i + 2] = R0[2] + (z + 0.5) * VS[2];
    k[i] = z;
  }
  const out = {pos, lab, k, taxonomy: entry.taxonomy, shaded: entry.shaded};
  cache.set(key, out);
  return out;
}

const canvas = document.getElementById("view"), ctx = canvas.getContext("2d");
let zbuf = null, img = null, pix = null;
function resize() {
  const w = Math.max(canvas.clientWidth, 64), h = Math.max(canvas.clientHeight, 64);
  if (canvas.width !== w || canvas.height !== h || !img) {
    canvas.width = w; canvas.height = h;
    img = ctx.createImageData(w, h); pix = new Uint32Array(img.data.buffer); zbuf = new Float32Array(w * h);
  }
}
function rgba(c, s) {  // little-endian ABGR word of colour c shaded by s
  return (255 << 24) | (Math.round(c[2] * s) << 16) | (Math.round(c[1] * s) << 8) | Math.round(c[0] * s);
}
const EGO = (() => {  // points 0.1 m apart on each face of the ego box (bottom at z = 0), coloured as the 3D PNGs shade that face
  const ext = D.ego.size, lo = [-ext[0] / 2, -ext[1] / 2, 0], step = 0.1, pos = [], col = [];
  for (const [axis, side, bright] of D.ego.faces) {
    const a = (axis + 1) % 3, b = (axis + 2) % 3;
    const na = Math.max(Math.round(ext[a] / step), 1), nb = Math.max(Math.round(ext[b] / step), 1);
    for (let i = 0; i <= na; i++) for (let j = 0; j <= nb; j++) {
      const p = [0, 0, 0];
      p[axis] = lo[axis] + (side > 0 ? ext[axis] : 0); p[a] = lo[a] + ext[a] * i / na; p[b] = lo[b] + ext[b] * j / nb;
      pos.push(p[0], p[1], p[2]); col.push(rgba(D.ego.color, bright));
    }
  }
  return {pos, col, step};
})();
function draw(v) {
  resize();
  const W = canvas.width, H = canvas.height;
  pix.fill(rgba([28, 28, 32], 1)); zbuf.fill(Infinity);
  const cp = Math.cos(state.pitch);
  const target = [0.2 * HALF * Math.cos(state.yaw + Math.PI), 0.2 * HALF * Math.sin(state.yaw + Math.PI), 0];
  const eye = [target[0] + state.dist * cp * Math.cos(state.yaw), target[1] + state.dist * cp * Math.sin(state.yaw),
               target[2] + state.dist * Math.sin(state.pitch)];
  const fw = norm([target[0] - eye[0], target[1] - eye[1], target[2] - eye[2]]);
  const rt = norm([fw[1], -fw[0], 0]);  // forward x up(0,0,1)
  const dn = [fw[1] * rt[2] - fw[2] * rt[1], fw[2] * rt[0] - fw[0] * rt[2], fw[0] * rt[1] - fw[1] * rt[0]];
  const f = 0.5 * W / Math.tan(Math.PI / 6), cx = W / 2, cy = H / 2, vs = Math.max(VS[0], VS[1], VS[2]);
  // One square splat of side ~1.24 * size metres at (x, y, z), z-buffered; false when behind the eye or off screen.
  function splat(x, y, z, size, col, edge) {
    const dx = x - eye[0], dy = y - eye[1], dz = z - eye[2];
    const depth = dx * fw[0] + dy * fw[1] + dz * fw[2];
    if (depth < 0.5) return false;
    const u = cx + f * (dx * rt[0] + dy * rt[1] + dz * rt[2]) / depth, w = cy + f * (dx * dn[0] + dy * dn[1] + dz * dn[2]) / depth;
    const r = Math.min(Math.max(Math.round(0.62 * size * f / depth), 1), 40);  // a little over half a voxel: no gaps
    const c0 = Math.round(u), r0 = Math.round(w);
    if (c0 + r < 0 || c0 - r >= W || r0 + r < 0 || r0 - r >= H) return false;
    if (r < 3) edge = col;
    for (let yy = Math.max(r0 - r, 0); yy <= Math.min(r0 + r, H - 1); yy++) {
      const onRow = yy === r0 - r || yy === r0 + r;
      for (let xx = Math.max(c0 - r, 0); xx <= Math.min(c0 + r, W - 1); xx++) {
        const p = yy * W + xx;
        if (depth < zbuf[p]) { zbuf[p] = depth; pix[p] = (onRow || xx === c0 - r || xx === c0 + r) ? edge : col; }
      }
    }
    return true;
  }
  const tax = D.taxonomies[v.taxonomy], hid = state.hidden[v.taxonomy] || {};
  const lut = [], rim = [];
  for (let z = 0; z < NZ; z++) { lut.push([]); rim.push([]); }
  tax.colors.forEach((c, l) => { for (let z = 0; z < NZ; z++) {
    // by height: the level's ramp colour as it is; otherwise the class colour, height-shaded unless the
    // layer's colours already say a height band or an error case
    const base = state.byHeight ? D.height.colors[z] : c;
    const s = state.byHeight || !v.shaded ? 1 : D.shade_min + (1 - D.shade_min) * z / Math.max(NZ - 1, 1);
    lut[z][l] = rgba(base, s); rim[z][l] = rgba(base, s * 0.7); } });
  const {pos, lab, k} = v, n = lab.length;
  let drawn = 0;
  for (let i = 0; i < n; i++) {
    const l = lab[i];
    if (hid[l]) continue;
    if (splat(pos[3 * i], pos[3 * i + 1], pos[3 * i + 2], vs, lut[k[i]][l], rim[k[i]][l])) drawn++;
  }
  for (let i = 0; i < EGO.col.length; i++) splat(EGO.pos[3 * i], EGO.pos[3 * i + 1], EGO.pos[3 * i + 2], EGO.step, EGO.col[i], EGO.col[i]);
  ctx.putImageData(img, 0, 0);
  return drawn;
}
function norm(a) { const l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; }

let pending = false;
async function redraw() {
  const v = await voxels(state.frame, state.layer);
  const status = document.getElementById("status");
  if (!v) {
    resize(); pix.fill(rgba([28, 28, 32], 1)); ctx.putImageData(img, 0, 0);
    status.textContent = "no '" + state.layer + "' in this frame";
    return;
  }
  const t0 = performance.now(), drawn = draw(v);
  status.textContent = state.layer + ": " + drawn + " of " + v.lab.length + " visible voxels, " +
    Math.round(performance.now() - t0) + " ms";
  document.body.dataset.drawn = String(drawn);
}
function request() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; redraw(); }); } }

function buildControls() {
  const layers = document.getElementById("layers");
  D.layer_names.forEach((name, i) => {
    const lab = document.createElement("label");
    lab.innerHTML = '<input type="radio" name="layer"' + (i === 0 ? " checked" : "") + "> " + (i + 1) + ". ";
    lab.appendChild(document.createTextNode(name));
    lab.firstChild.onchange = () => { state.layer = name; request(); };
    layers.appendChild(lab);
  });
  const classes = document.getElementById("classes");
  for (const [tname, tax] of Object.entries(D.taxonomies)) {
    state.hidden[tname] = {};
    const head = document.createElement("div"); head.textContent = tax.heading; classes.appendChild(head);
    tax.colors.forEach((c, l) => {
      if (!tax.present.includes(l)) return;
      const lab = document.createElement("label");
      lab.innerHTML = '<input type="checkbox" checked data-taxonomy="' + tname + '" data-label="' + l + '">' +
        '<span class="sw" style="background:rgb(' + c.join(",") + ')"></span>';
      lab.appendChild(document.createTextNode(tax.class_names[l]));
      lab.firstChild.onchange = e => { state.hidden[tname][l] = !e.target.checked; request(); };
      classes.appendChild(lab);
    });
  }
  const stops = D.height.colors.map((c, z) => "rgb(" + c.join(",") + ") " + (100 * z / NZ) + "% " + (100 * (z + 1) / NZ) + "%");
  document.getElementById("ramp").style.background = "linear-gradient(to right," + stops.join(",") + ")";
  document.getElementById("zmin").textContent = "z " + D.height.z_min.toFixed(1) + " m";
  document.getElementById("zmax").textContent = D.height.z_max.toFixed(1) + " m";
  document.getElementById("byheight").onchange = e => { state.byHeight = e.target.checked; request(); };
  document.getElementById("copy").onclick = e => {
    const token = D.frames[state.frame].token, button = e.target;
    const done = () => { button.textContent = "copied"; setTimeout(() => { button.textContent = "copy"; }, 1200); };
    const bySelection = () => {  // no async clipboard (some browsers on file:// pages): select the text and copy it
      const range = document.createRange(); range.selectNodeContents(document.getElementById("token"));
      const sel = getSelection(); sel.removeAllRanges(); sel.addRange(range);
      if (document.execCommand("copy")) done();
    };
    if (navigator.clipboard) navigator.clipboard.writeText(token).then(done, bySelection); else bySelection();
  };
  const slider = document.getElementById("frame");
  slider.max = String(D.frames.length - 1);
  slider.oninput = () => setFrame(+slider.value);
  document.getElementById("play").onclick = e => {
    if (state.playing) { clearInterval(state.playing); state.playing = null; e.target.textContent = "play"; return; }
    e.target.textContent = "pause";
    state.playing = setInterval(() => setFrame((state.frame + 1) % D.frames.length), 500);
  };
  document.getElementById("reset").onclick = () => { Object.assign(state, {yaw: Math.PI, pitch: 0.75, dist: 1.8 * HALF}); request(); };
  let drag = null;
  canvas.onpointerdown = e => { drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); };
  canvas.onpointerup = () => { drag = null; };
  canvas.onpointermove = e => {
    if (!drag) return;
    state.yaw -= 0.008 * (e.clientX - drag[0]);
    state.pitch = Math.min(Math.max(state.pitch + 0.008 * (e.clientY - drag[1]), 0.05), 1.55);
    drag = [e.clientX, e.clientY]; request();
  };
  canvas.onwheel = e => {
    e.preventDefault();
    state.dist = Math.min(Math.max(state.dist * Math.exp(0.001 * e.deltaY), 2), 6 * HALF);
    request();
  };
  window.onkeydown = e => {
    const i = +e.key - 1;
    if (i >= 0 && i < D.layer_names.length) layers.querySelectorAll("input")[i].click();
  };
  window.onresize = request;
}
function setFrame(f) {
  state.frame = f;
  document.getElementById("frame").value = String(f);
  document.getElementById("frameno").textContent = (f + 1) + " / " + D.frames.length;
  document.getElementById("frametitle").textContent = D.frames[f].title;
  document.getElementById("token").textContent = D.frames[f].token;
  document.getElementById("tokenrow").style.display = D.frames[f].token ? "" : "none";
  request();
}
function applyHash() {  // deep link: #frame=3&layer=prediction&hide=11,16 (labels)&color=height -- shareable views, and tests
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("color") === "height") document.getElementById("byheight").click();
  const layer = D.layer_names.indexOf(params.get("layer"));
  if (layer >= 0) document.querySelectorAll("#layers input")[layer].click();
  for (const l of (params.get("hide") || "").split(",").filter(x => x !== "")) {
    document.querySelectorAll('#classes input[data-label="' + l + '"]').forEach(box => { if (box.checked) box.click(); });
  }
  const f = Math.min(Math.max(parseInt(params.get("frame") || "0", 10) || 0, 0), D.frames.length - 1);
  setFrame(f);
}
buildControls();
applyHash();
redraw();
</script></body></html>
"""
