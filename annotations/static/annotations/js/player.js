// Frame-exact video player on a canvas, fed from the frame store (annotations/framestore.py).
//
// Frames arrive as JPEGs packed in chunk files ("TCF1" header + offsets), fetched whole so
// that one request prefetches many frames; frame N is always the Nth decoded frame of the
// source video, so a label drawn on frame N lands on frame N in exports and training clips.
// Annotation layers and heatmaps draw on top through `onDraw(ctx, frame, view)`.
//
//   const player = ThyroPlayer.create(canvas, {
//     frameCount: 3000, fps: 30, chunkSize: 32,
//     chunkUrl: (k) => `/files/videos/7/v1/chunks/${k}`,
//     onFrame: (n) => {...}, onDraw: (ctx, n, view) => {...},
//   });
(function (root) {
  "use strict";

  var MAGIC = [0x54, 0x43, 0x46, 0x31]; // "TCF1"

  function parseChunk(buffer) {
    var bytes = new Uint8Array(buffer);
    for (var i = 0; i < 4; i++) {
      if (bytes[i] !== MAGIC[i]) throw new Error("not a frame-store chunk");
    }
    var view = new DataView(buffer);
    var n = view.getUint32(4, true);
    var frames = [];
    for (var k = 0; k < n; k++) {
      var start = view.getUint32(8 + 4 * k, true);
      var end = view.getUint32(12 + 4 * k, true);
      frames.push(new Blob([bytes.subarray(start, end)], {type: "image/jpeg"}));
    }
    return frames;
  }

  function clamp(v, lo, hi) { return Math.max(lo, Math.min(hi, v)); }

  function create(canvas, opts) {
    var ctx = canvas.getContext("2d");
    var frameCount = opts.frameCount, chunkSize = opts.chunkSize, fps = opts.fps || 30;
    var cacheLimit = opts.cacheFrames || 600; // decoded frames kept (LRU)
    var prefetchChunks = opts.prefetchChunks || 3;
    var bitmaps = new Map(); // frame -> ImageBitmap
    var chunkRequests = new Map(); // chunk -> Promise
    var listeners = {frame: [], buffering: []};
    if (opts.onFrame) listeners.frame.push(opts.onFrame);
    var state = {
      frame: 0, shown: -1, playing: false, speed: 1, buffering: false,
      brightness: 100, contrast: 100, zoom: 1, panX: 0, panY: 0,
      lastTick: 0, carry: 0,
    };

    function emit(name, value) { listeners[name].forEach(function (f) { f(value); }); }

    function remember(frame, bitmap) {
      bitmaps.set(frame, bitmap);
      if (bitmaps.size > cacheLimit) {
        // Evict the frame farthest from the playhead: it is the least likely to be shown.
        var worst = null, worstDistance = -1;
        bitmaps.forEach(function (_, f) {
          var d = Math.abs(f - state.frame);
          if (d > worstDistance) { worst = f; worstDistance = d; }
        });
        var old = bitmaps.get(worst);
        bitmaps.delete(worst);
        if (old && old.close) old.close();
      }
    }

    function loadChunk(chunk) {
      if (chunk < 0 || chunk * chunkSize >= frameCount) return Promise.resolve();
      if (chunkRequests.has(chunk)) return chunkRequests.get(chunk);
      var request = fetch(opts.chunkUrl(chunk), {credentials: "same-origin"})
        .then(function (r) {
          if (!r.ok) throw new Error("chunk " + chunk + ": HTTP " + r.status);
          return r.arrayBuffer();
        })
        .then(function (buffer) {
          var blobs = parseChunk(buffer);
          return Promise.all(blobs.map(function (blob, i) {
            return createImageBitmap(blob).then(function (bitmap) {
              remember(chunk * chunkSize + i, bitmap);
            });
          }));
        })
        .catch(function (err) {
          chunkRequests.delete(chunk); // allow a retry on the next visit
          if (opts.onError) opts.onError(err);
        });
      chunkRequests.set(chunk, request);
      return request;
    }

    function ensureAround(frame) {
      var chunk = Math.floor(frame / chunkSize);
      var wait = loadChunk(chunk);
      for (var k = 1; k <= prefetchChunks; k++) loadChunk(chunk + k);
      loadChunk(chunk - 1);
      return wait;
    }

    function viewTransform() {
      var img = bitmaps.get(state.shown) || bitmaps.get(state.frame);
      var w = img ? img.width : canvas.width, h = img ? img.height : canvas.height;
      var fit = Math.min(canvas.width / w, canvas.height / h);
      var scale = fit * state.zoom;
      return {
        scale: scale, width: w, height: h,
        offsetX: (canvas.width - w * scale) / 2 + state.panX,
        offsetY: (canvas.height - h * scale) / 2 + state.panY,
        // Canvas pixel -> frame pixel, for tools that draw on the video.
        toFrame: function (x, y) {
          return [(x - this.offsetX) / this.scale, (y - this.offsetY) / this.scale];
        },
        toCanvas: function (x, y) {
          return [x * this.scale + this.offsetX, y * this.scale + this.offsetY];
        },
      };
    }

    function draw() {
      var bitmap = bitmaps.get(state.frame);
      if (!bitmap) return false;
      state.shown = state.frame;
      var view = viewTransform();
      ctx.save();
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.filter = "brightness(" + state.brightness + "%) contrast(" + state.contrast + "%)";
      ctx.imageSmoothingEnabled = state.zoom < 2; // show real pixels when zoomed in
      ctx.drawImage(bitmap, view.offsetX, view.offsetY, view.width * view.scale,
                    view.height * view.scale);
      ctx.filter = "none";
      if (opts.onDraw) opts.onDraw(ctx, state.frame, view);
      ctx.restore();
      canvas.dataset.frame = String(state.frame);
      return true;
    }

    function setBuffering(value) {
      if (state.buffering !== value) { state.buffering = value; emit("buffering", value); }
    }

    function seek(frame) {
      state.frame = clamp(Math.round(frame), 0, frameCount - 1);
      emit("frame", state.frame);
      if (!draw()) {
        setBuffering(true);
        var wanted = state.frame;
        ensureAround(wanted).then(function () {
          if (state.frame === wanted) { draw(); setBuffering(false); }
        });
      } else {
        setBuffering(false);
        ensureAround(state.frame);
      }
      return state.frame;
    }

    function tick(now) {
      if (!state.playing) return;
      var elapsed = state.lastTick ? (now - state.lastTick) / 1000 : 0;
      state.lastTick = now;
      if (!state.buffering) {
        // Accumulate fractional frames so that playback keeps the video's own rate.
        state.carry += elapsed * fps * state.speed;
        var advance = Math.floor(state.carry);
        if (advance >= 1) {
          var next = state.frame + advance;
          if (next >= frameCount) { next = frameCount - 1; pause(); }
          // Never skip a frame that is not decoded yet: hold and buffer instead.
          var target = state.frame;
          for (var f = state.frame + 1; f <= next && bitmaps.has(f); f++) target = f;
          state.carry = target === next ? state.carry - advance : 0;
          if (target !== state.frame) seek(target);
          else if (target < next) { setBuffering(true); ensureAround(target + 1).then(function () { setBuffering(false); }); }
        }
      }
      root.requestAnimationFrame(tick);
    }

    function play() {
      if (state.playing) return;
      if (state.frame >= frameCount - 1) seek(0);
      state.playing = true;
      state.lastTick = 0;
      state.carry = 0;
      root.requestAnimationFrame(tick);
    }

    function pause() { state.playing = false; }

    var player = {
      get frame() { return state.frame; },
      get playing() { return state.playing; },
      get speed() { return state.speed; },
      frameCount: frameCount,
      fps: fps,
      seek: seek,
      step: function (delta) { pause(); return seek(state.frame + delta); },
      play: play,
      pause: pause,
      toggle: function () { if (state.playing) pause(); else play(); },
      setSpeed: function (s) { state.speed = clamp(s, 0.1, 8); },
      setBrightness: function (v) { state.brightness = clamp(v, 10, 300); draw(); },
      setContrast: function (v) { state.contrast = clamp(v, 10, 300); draw(); },
      zoomBy: function (factor) { state.zoom = clamp(state.zoom * factor, 1, 16); draw(); },
      panBy: function (dx, dy) { state.panX += dx; state.panY += dy; draw(); },
      resetView: function () { state.zoom = 1; state.panX = 0; state.panY = 0; draw(); },
      redraw: draw,
      view: viewTransform,
      on: function (name, f) { listeners[name].push(f); },
      isLoaded: function (frame) { return bitmaps.has(frame); },
    };
    seek(0);
    return player;
  }

  // Keyboard shortcuts, shared by every page with a player. Returns the help table rows.
  var SHORTCUTS = [
    ["Space", "play / pause"],
    ["\u2190 / \u2192", "one frame back / forward"],
    ["Shift + \u2190 / \u2192", "ten frames back / forward"],
    ["Home / End", "first / last frame"],
    ["[ / ]", "slower / faster"],
    ["+ / -", "zoom in / out"],
    ["0", "reset zoom and pan"],
    ["?", "show or hide this help"],
  ];

  function bindKeys(player, target, onHelp) {
    (target || document).addEventListener("keydown", function (e) {
      var tag = (e.target && e.target.tagName) || "";
      var type = (e.target && e.target.type) || "";
      // Typing in a form field is not a shortcut; a focused slider keeps its own arrow keys.
      if (tag === "TEXTAREA" || tag === "SELECT") return;
      if (tag === "INPUT" && type !== "range" && type !== "button" && type !== "checkbox") return;
      if (tag === "INPUT" && type === "range" && e.key.indexOf("Arrow") === 0) return;
      var handled = true;
      switch (e.key) {
        case " ": player.toggle(); break;
        case "ArrowRight": player.step(e.shiftKey ? 10 : 1); break;
        case "ArrowLeft": player.step(e.shiftKey ? -10 : -1); break;
        case "Home": player.pause(); player.seek(0); break;
        case "End": player.pause(); player.seek(player.frameCount - 1); break;
        case "]": player.setSpeed(player.speed * 2); break;
        case "[": player.setSpeed(player.speed / 2); break;
        case "+": case "=": player.zoomBy(1.25); break;
        case "-": player.zoomBy(0.8); break;
        case "0": player.resetView(); break;
        case "?": if (onHelp) onHelp(); break;
        default: handled = false;
      }
      if (handled) e.preventDefault();
    });
  }

  root.ThyroPlayer = {create: create, parseChunk: parseChunk, bindKeys: bindKeys,
                      SHORTCUTS: SHORTCUTS};
})(this);
