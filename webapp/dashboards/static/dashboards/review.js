// Case review: the frame-exact player with the model's heatmaps drawn over the video.
//
// Heatmaps come from a permission-checked URL as one small binary (webapp/dashboards/
// heatmaps.py): "THM1", uint32 K, T, H, W, then Grad-CAM (T*H*W bytes) and K attention maps
// (K*T*H*W bytes), values / 255. Map frame t belongs to video frame t and covers the clip
// region [x, y, w, h] of the frame. A timeline under the player shows the shown map's mass
// per frame (its mean value); clicking it seeks there.
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("review-config").textContent);
  var $ = function (sel) { return document.querySelector(sel); };
  var COLORS = {punctate: "#ff3b30", macro: "#ffcc00", rim: "#34c759", comet: "#5ac8fa",
                nodule: "#00e5ff"};
  // Colour maps as stops (value, r, g, b), interpolated into a 256-entry table.
  var STOPS = {
    jet: [[0, 0, 0, 131], [0.125, 0, 60, 170], [0.375, 5, 255, 255], [0.625, 255, 255, 0],
          [0.875, 250, 0, 0], [1, 128, 0, 0]],
    inferno: [[0, 0, 0, 4], [0.25, 87, 16, 110], [0.5, 188, 55, 84], [0.75, 249, 142, 9],
              [1, 252, 255, 164]],
    hot: [[0, 10, 0, 0], [0.375, 255, 0, 0], [0.75, 255, 255, 0], [1, 255, 255, 255]],
    gray: [[0, 0, 0, 0], [1, 255, 255, 255]],
  };
  function lut(name) {
    var stops = STOPS[name] || STOPS.jet, table = new Uint8ClampedArray(256 * 3);
    for (var i = 0; i < 256; i++) {
      var v = i / 255, k = 1;
      while (k < stops.length - 1 && stops[k][0] < v) k++;
      var a = stops[k - 1], b = stops[k], t = (v - a[0]) / ((b[0] - a[0]) || 1);
      for (var c = 0; c < 3; c++) table[3 * i + c] = a[c + 1] + t * (b[c + 1] - a[c + 1]);
    }
    return table;
  }

  var state = {maps: null, K: 0, T: 0, H: 0, W: 0, table: lut("jet"), boxes: []};
  var scratch = document.createElement("canvas");
  var scratchCtx = scratch.getContext("2d");

  function controls() {
    return {
      gradcam: $("#show-gradcam").checked, attention: $("#show-attention").checked,
      attentionIndex: +($("#attention-index").value || 0), marks: $("#show-marks").checked,
      opacity: +$("#opacity").value / 100,
    };
  }

  // The (H*W) bytes of the map shown on frame `frame`, or null.
  function mapFor(which, frame, k) {
    if (!state.maps || !state.T) return null;
    var t = Math.min(frame, state.T - 1), size = state.H * state.W;
    if (which === "gradcam") return state.maps.subarray(t * size, (t + 1) * size);
    if (k >= state.K) return null;
    var start = state.T * size + (k * state.T + t) * size;
    return state.maps.subarray(start, start + size);
  }

  function drawHeat(ctx, map, view, opacity) {
    var image = scratchCtx.createImageData(state.W, state.H), px = image.data;
    for (var i = 0; i < map.length; i++) {
      var v = map[i];
      px[4 * i] = state.table[3 * v];
      px[4 * i + 1] = state.table[3 * v + 1];
      px[4 * i + 2] = state.table[3 * v + 2];
      // Transparent where the map is cold, so that the anatomy stays readable.
      px[4 * i + 3] = Math.round(255 * opacity * Math.min(1, v / 128));
    }
    scratchCtx.putImageData(image, 0, 0);
    var r = cfg.region, a = view.toCanvas(r[0], r[1]);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(scratch, a[0], a[1], r[2] * view.scale, r[3] * view.scale);
  }

  function drawMarks(ctx, frame, view) {
    var doc = cfg.annotation;
    if (!doc) return;
    ctx.lineWidth = 2;
    (doc.tracks || []).forEach(function (t, i) {
      var box = (state.boxes[i] || [])[frame];
      if (!box) return;
      var a = view.toCanvas(box[0], box[1]), b = view.toCanvas(box[2], box[3]);
      ctx.strokeStyle = COLORS.nodule;
      ctx.strokeRect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
    });
    (doc.marks || []).forEach(function (m) {
      if (frame < m.frame_start || frame > m.frame_end) return;
      ctx.strokeStyle = COLORS[m.type] || "#fff";
      var pts = m.points.map(function (p) { return view.toCanvas(p[0], p[1]); });
      ctx.beginPath();
      if (m.shape === "point") ctx.arc(pts[0][0], pts[0][1], 5, 0, 2 * Math.PI);
      else if (m.shape === "box") ctx.rect(pts[0][0], pts[0][1], pts[1][0] - pts[0][0], pts[1][1] - pts[0][1]);
      else {
        pts.forEach(function (p, i) { if (i) ctx.lineTo(p[0], p[1]); else ctx.moveTo(p[0], p[1]); });
        ctx.closePath();
      }
      ctx.stroke();
    });
  }

  function drawOverlay(ctx, frame, view) {
    var c = controls();
    if (c.gradcam) { var g = mapFor("gradcam", frame); if (g) drawHeat(ctx, g, view, c.opacity); }
    if (c.attention) {
      var m = mapFor("attention", frame, c.attentionIndex);
      if (m) drawHeat(ctx, m, view, c.opacity);
    }
    if (c.marks) drawMarks(ctx, frame, view);
  }

  // --- timeline of heatmap mass -------------------------------------------------------------
  var timeline = $("#heat-timeline");
  var masses = {};
  function massOf(which, k) {
    var key = which + k;
    if (masses[key]) return masses[key];
    var out = new Float32Array(cfg.frameCount);
    for (var f = 0; f < cfg.frameCount; f++) {
      var map = mapFor(which, f, k), sum = 0;
      if (!map) continue;
      for (var i = 0; i < map.length; i++) sum += map[i];
      out[f] = sum / (map.length * 255);
    }
    masses[key] = out;
    return out;
  }
  function drawTimeline() {
    var ctx = timeline.getContext("2d"), w = timeline.width, h = timeline.height;
    ctx.fillStyle = "#101820";
    ctx.fillRect(0, 0, w, h);
    if (!state.maps || !cfg.frameCount) return;
    var c = controls();
    var series = c.attention && !c.gradcam ? massOf("attention", c.attentionIndex)
      : massOf("gradcam", 0);
    var peak = Math.max.apply(null, Array.prototype.slice.call(series)) || 1;
    var step = w / cfg.frameCount;
    ctx.fillStyle = "#f79009";
    for (var f = 0; f < cfg.frameCount; f++) {
      var bar = (series[f] / peak) * (h - 6);
      ctx.fillRect(f * step, h - bar, Math.max(1, step - 0.5), bar);
    }
    var x = (player ? player.frame : 0) * step;
    ctx.fillStyle = "#fff";
    ctx.fillRect(x, 0, Math.max(2, step), h);
  }
  timeline.addEventListener("click", function (e) {
    var rect = timeline.getBoundingClientRect();
    var frame = Math.floor((e.clientX - rect.left) / rect.width * cfg.frameCount);
    player.pause();
    player.seek(frame);
  });

  var player = null;
  player = ThyroPlayer.mount(document.getElementById("player"), {
    frameCount: cfg.frameCount, fps: cfg.fps, chunkSize: cfg.chunkSize,
    chunkUrl: function (k) { return cfg.chunkBase + k; },
    onDraw: drawOverlay,
    onFrame: function () { drawTimeline(); },
  });

  function refresh() { masses = {}; player.redraw(); drawTimeline(); }
  ["#show-gradcam", "#show-attention", "#attention-index", "#show-marks", "#opacity"].forEach(
    function (sel) { $(sel).addEventListener("input", refresh); $(sel).addEventListener("change", refresh); });
  $("#colormap").addEventListener("change", function () {
    state.table = lut($("#colormap").value);
    player.redraw();
  });

  if (cfg.annotation && window.ThyroTracks) {
    state.boxes = (cfg.annotation.tracks || []).map(function (t) {
      return ThyroTracks.interpolateTrack(t.keyframes, cfg.frameCount);
    });
  }

  var status = $("#heatmap-status");
  status.textContent = "loading heatmaps\u2026";
  fetch(cfg.heatmapUrl, {credentials: "same-origin"})
    .then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.arrayBuffer();
    })
    .then(function (buffer) {
      var head = new Uint8Array(buffer, 0, 4);
      if (String.fromCharCode.apply(null, head) !== "THM1") throw new Error("not a heatmap file");
      var dv = new DataView(buffer);
      state.K = dv.getUint32(4, true); state.T = dv.getUint32(8, true);
      state.H = dv.getUint32(12, true); state.W = dv.getUint32(16, true);
      state.maps = new Uint8Array(buffer, 20);
      scratch.width = state.W; scratch.height = state.H;
      var select = $("#attention-index");
      for (var k = 0; k < state.K; k++) {
        var o = document.createElement("option");
        o.value = k; o.textContent = "map " + (k + 1);
        select.appendChild(o);
      }
      $("#show-attention").disabled = state.K === 0;
      status.textContent = "";
      // A heatmap (HiResCAM) that is zero in every frame draws nothing (no location argued
      // for malignancy, as for many cases a model calls benign). Say so and
      // show the attention map instead of an overlay that looks broken.
      var size = state.T * state.H * state.W, empty = true;
      for (var i = 0; i < size && empty; i++) { if (state.maps[i]) empty = false; }
      if (empty) {
        $("#show-gradcam").checked = false;
        if (state.K) $("#show-attention").checked = true;
        status.textContent = "The heatmap is zero in every frame" +
          (state.K ? ": showing the attention map" : "");
      }
      document.getElementById("player").dataset.heatmaps = "loaded";
      refresh();
    })
    .catch(function (err) { status.textContent = "heatmaps unavailable (" + err.message + ")"; });

  window.thyroReview = {player: player, refresh: refresh};
})();
