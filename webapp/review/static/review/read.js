// The reading page's player: the case's frames, frame-exact. In an aided read with a stored
// prediction, the model's Grad-CAM (webapp/dashboards/heatmaps.py's binary: "THM1", uint32 K,
// T, H, W, then T*H*W bytes of Grad-CAM) is drawn over the clip region [x, y, w, h].
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("review-player").textContent);
  var heat = {maps: null, T: 0, H: 0, W: 0};
  var scratch = document.createElement("canvas");
  var scratchCtx = scratch.getContext("2d");
  var toggle = document.getElementById("show-heatmap");

  // Cold to hot: transparent blue, then yellow, then red.
  function colour(v) {
    var t = v / 255;
    return t < 0.5 ? [0, Math.round(510 * t), 255 - Math.round(510 * t)]
                   : [255, 255 - Math.round(510 * (t - 0.5)), 0];
  }

  function drawHeat(ctx, frame, view) {
    if (!heat.maps || !toggle || !toggle.checked) return;
    var size = heat.H * heat.W, t = Math.min(frame, heat.T - 1);
    var map = heat.maps.subarray(t * size, (t + 1) * size);
    var image = scratchCtx.createImageData(heat.W, heat.H), px = image.data;
    for (var i = 0; i < size; i++) {
      var c = colour(map[i]);
      px[4 * i] = c[0]; px[4 * i + 1] = c[1]; px[4 * i + 2] = c[2];
      px[4 * i + 3] = Math.round(140 * Math.min(1, map[i] / 128));  // anatomy stays readable
    }
    scratchCtx.putImageData(image, 0, 0);
    var r = cfg.region, a = view.toCanvas(r[0], r[1]);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(scratch, a[0], a[1], r[2] * view.scale, r[3] * view.scale);
  }

  var player = ThyroPlayer.mount(document.getElementById("player"), {
    frameCount: cfg.frameCount, fps: cfg.fps, chunkSize: cfg.chunkSize,
    chunkUrl: function (k) { return cfg.chunkBase + k; },
    onDraw: drawHeat,
  });

  if (cfg.heatmapUrl) {
    var status = document.getElementById("heatmap-status");
    status.textContent = "loading\u2026";
    toggle.addEventListener("change", function () { player.redraw(); });
    fetch(cfg.heatmapUrl, {credentials: "same-origin"})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.arrayBuffer(); })
      .then(function (buffer) {
        var dv = new DataView(buffer);
        if (String.fromCharCode.apply(null, new Uint8Array(buffer, 0, 4)) !== "THM1") {
          throw new Error("not a heatmap file");
        }
        heat.T = dv.getUint32(8, true); heat.H = dv.getUint32(12, true);
        heat.W = dv.getUint32(16, true);
        heat.maps = new Uint8Array(buffer, 20);
        scratch.width = heat.W; scratch.height = heat.H;
        status.textContent = "";
        document.getElementById("player").dataset.heatmaps = "loaded";
        player.redraw();
      })
      .catch(function (err) { status.textContent = "heatmap unavailable (" + err.message + ")"; });
  }
  window.thyroReader = {player: player};
})();
