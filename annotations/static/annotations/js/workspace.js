// Annotation workspace: the frame-exact player (player.js) with a nodule track (keyframes,
// interpolated by tracks.js exactly as the server does), calcification marks by type, the
// TI-RADS form, review comments pinned to frames, and saving without loss:
// - every change autosaves through the JSON API with the version it was based on;
// - a stale write (HTTP 409) opens a prompt: reload theirs, or merge (three-way, by item id);
// - a network error keeps a draft in localStorage and retries with back-off; the draft is
//   restored on the next visit if it never reached the server;
// - undo / redo (Ctrl+Z, Ctrl+Shift+Z or Ctrl+Y).
(function () {
  "use strict";

  var cfg = JSON.parse(document.getElementById("workspace-config").textContent);
  var DRAFT_KEY = "thyrocine-annotation-draft-" + cfg.annotationId;
  var COLORS = {punctate: "#ff3b30", macro: "#ffcc00", rim: "#34c759", comet: "#5ac8fa",
                nodule: "#00e5ff"};
  var $ = function (sel) { return document.querySelector(sel); };

  var state = {
    data: null, // the document being edited
    base: null, // the server's document at `version` (for three-way merges)
    version: 0, annotation: null, perms: {},
    undo: [], redo: [], dirty: false, saving: false, saveTimer: null, retryTimer: null,
    backoff: 1000, conflict: null, boxes: {}, drag: null, polygon: null,
  };

  // --- helpers ----------------------------------------------------------------------------
  function clone(x) { return JSON.parse(JSON.stringify(x)); }
  function same(a, b) { return JSON.stringify(a) === JSON.stringify(b); }
  function newId(prefix) { return prefix + "-" + Math.random().toString(36).slice(2, 12); }
  function csrf() {
    var m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }
  function api(method, url, body) {
    return fetch(url, {
      method: method, credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf(),
                "Accept": "application/json"},
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (json) {
        return {status: r.status, json: json};
      });
    });
  }
  function status(text, kind) {
    var el = $("[data-testid=save-status]");
    el.textContent = text;
    el.dataset.kind = kind || "";
  }
  function typeLabel(type) {
    for (var i = 0; i < cfg.markTypes.length; i++) if (cfg.markTypes[i][0] === type) return cfg.markTypes[i][1];
    return type;
  }
  function r1(v) { return Math.round(v * 10) / 10; }

  // --- player -----------------------------------------------------------------------------
  ThyroPlayer.SHORTCUTS.push(["N / C", "nodule / calcification tool"],
                             ["Enter / Esc", "close / cancel a polygon"],
                             ["Ctrl+Z / Ctrl+Shift+Z", "undo / redo"]);
  var container = document.getElementById("player");
  var canvas = container.querySelector("canvas");
  var player = ThyroPlayer.mount(container, {
    frameCount: cfg.frameCount, fps: cfg.fps, chunkSize: cfg.chunkSize,
    chunkUrl: function (k) { return cfg.chunkBase + k; },
    onDraw: drawOverlay,
    // The player announces frame 0 while mounting, before `player` is assigned.
    onFrame: function () { if (player) { renderTrackInfo(); drawTimeline(); } },
  });

  function recomputeTracks() {
    state.boxes = {};
    (state.data ? state.data.tracks : []).forEach(function (t) {
      state.boxes[t.id] = ThyroTracks.interpolateTrack(t.keyframes, cfg.frameCount);
    });
  }
  function nodule() { return state.data && state.data.tracks.length ? state.data.tracks[0] : null; }
  function keyframeAt(track, frame) {
    for (var i = 0; i < track.keyframes.length; i++) if (track.keyframes[i].frame === frame) return track.keyframes[i];
    return null;
  }
  function marksOn(frame) {
    return state.data ? state.data.marks.filter(function (m) {
      return m.frame_start <= frame && frame <= m.frame_end;
    }) : [];
  }

  function drawOverlay(ctx, frame, view) {
    if (!state.data) return;
    ctx.lineWidth = 2;
    state.data.tracks.forEach(function (t) {
      var box = (state.boxes[t.id] || [])[frame];
      if (!box) return;
      var a = view.toCanvas(box[0], box[1]), b = view.toCanvas(box[2], box[3]);
      ctx.strokeStyle = COLORS.nodule;
      ctx.setLineDash(keyframeAt(t, frame) ? [] : [6, 4]);
      ctx.beginPath();
      if (t.shape === "ellipse") {
        ctx.ellipse((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, Math.abs(b[0] - a[0]) / 2,
                    Math.abs(b[1] - a[1]) / 2, 0, 0, 2 * Math.PI);
      } else {
        ctx.rect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
      }
      ctx.stroke();
      ctx.setLineDash([]);
    });
    marksOn(frame).forEach(function (m) {
      ctx.strokeStyle = ctx.fillStyle = COLORS[m.type];
      var pts = m.points.map(function (p) { return view.toCanvas(p[0], p[1]); });
      ctx.beginPath();
      if (m.shape === "point") {
        ctx.arc(pts[0][0], pts[0][1], 5, 0, 2 * Math.PI);
        ctx.stroke();
        ctx.beginPath();
        ctx.arc(pts[0][0], pts[0][1], 2.5, 0, 2 * Math.PI);
        ctx.fill();
      } else if (m.shape === "box") {
        ctx.rect(pts[0][0], pts[0][1], pts[1][0] - pts[0][0], pts[1][1] - pts[0][1]);
        ctx.stroke();
      } else {
        pts.forEach(function (p, i) { if (i) ctx.lineTo(p[0], p[1]); else ctx.moveTo(p[0], p[1]); });
        ctx.closePath();
        ctx.stroke();
      }
    });
    // What is being drawn now.
    ctx.strokeStyle = "#fff";
    ctx.setLineDash([3, 3]);
    if (state.drag && state.drag.to) {
      var p = view.toCanvas(state.drag.from[0], state.drag.from[1]);
      var q = view.toCanvas(state.drag.to[0], state.drag.to[1]);
      ctx.strokeRect(p[0], p[1], q[0] - p[0], q[1] - p[1]);
    }
    if (state.polygon && state.polygon.length) {
      ctx.beginPath();
      state.polygon.forEach(function (pt, i) {
        var c = view.toCanvas(pt[0], pt[1]);
        if (i) ctx.lineTo(c[0], c[1]); else ctx.moveTo(c[0], c[1]);
      });
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  // --- timeline strip ---------------------------------------------------------------------
  var timeline = document.querySelector("[data-testid=timeline] canvas");
  var ROWS = ["nodule", "punctate", "macro", "rim", "comet"];
  function frameX(f) { return (f + 0.5) * timeline.width / Math.max(cfg.frameCount, 1); }
  function drawTimeline() {
    var c = timeline.getContext("2d"), w = timeline.width, h = timeline.height;
    var rowH = (h - 6) / ROWS.length, fw = Math.max(w / Math.max(cfg.frameCount, 1), 1);
    c.fillStyle = "#1d2733";
    c.fillRect(0, 0, w, h);
    if (state.data) {
      var track = nodule();
      if (track) {
        var boxes = state.boxes[track.id] || [];
        c.fillStyle = "#00e5ff55";
        boxes.forEach(function (b, f) { if (b) c.fillRect(frameX(f) - fw / 2, 0, fw, rowH); });
        c.fillStyle = COLORS.nodule;
        track.keyframes.forEach(function (k) {
          c.fillRect(frameX(k.frame) - 1, 0, 2, rowH);
        });
      }
      state.data.marks.forEach(function (m) {
        var row = ROWS.indexOf(m.type);
        c.fillStyle = COLORS[m.type];
        var x0 = frameX(m.frame_start) - fw / 2, x1 = frameX(m.frame_end) + fw / 2;
        c.fillRect(x0, row * rowH + 1, Math.max(x1 - x0, 2), rowH - 2);
      });
    }
    ((state.annotation && state.annotation.comments) || []).forEach(function (cm) {
      c.fillStyle = "#ff6b6b";
      var x = frameX(cm.frame);
      c.beginPath(); c.moveTo(x - 4, h); c.lineTo(x + 4, h); c.lineTo(x, h - 7); c.fill();
    });
    c.fillStyle = "#fff";
    c.fillRect(frameX(player.frame) - 1, 0, 2, h);
  }
  timeline.addEventListener("click", function (e) {
    var rect = timeline.getBoundingClientRect();
    var f = Math.floor((e.clientX - rect.left) / rect.width * cfg.frameCount);
    player.pause();
    player.seek(f);
  });

  // --- side panels ------------------------------------------------------------------------
  function renderTrackInfo() {
    var el = $("[data-testid=track-info]"), track = nodule(), frame = player.frame;
    if (!track) { el.textContent = "No nodule drawn yet."; return; }
    var box = (state.boxes[track.id] || [])[frame], key = keyframeAt(track, frame);
    if (key && key.outside) el.textContent = "Frame " + frame + ": nodule outside the view (keyframe)";
    else if (!box) el.textContent = "Frame " + frame + ": nodule not visible";
    else el.textContent = "Frame " + frame + ": " + (key ? "keyframe" : "interpolated") + " box " +
      box.map(function (v) { return r1(v); }).join(", ");
  }

  function renderMarks() {
    var list = $("[data-testid=marks]");
    list.innerHTML = "";
    var marks = state.data ? state.data.marks.slice().sort(function (a, b) {
      return a.frame_start - b.frame_start;
    }) : [];
    $("[data-testid=mark-count]").textContent = "(" + marks.length + ")";
    marks.forEach(function (m) {
      var li = document.createElement("li");
      li.dataset.testid = "mark";
      li.setAttribute("data-testid", "mark");
      var frames = m.frame_start === m.frame_end ? "frame " + m.frame_start
        : "frames " + m.frame_start + "\u2013" + m.frame_end;
      var flags = (m.small_comet_tail ? ", small comet-tail" : "") + (m.rim_interrupted ? ", rim interrupted" : "");
      var go = document.createElement("button");
      go.type = "button"; go.className = "link"; go.textContent = typeLabel(m.type) + " \u00b7 " + m.shape + " \u00b7 " + frames + flags;
      go.addEventListener("click", function () { player.pause(); player.seek(m.frame_start); });
      var del = document.createElement("button");
      del.type = "button"; del.className = "secondary small"; del.textContent = "Delete";
      del.setAttribute("aria-label", "Delete mark on " + frames);
      del.disabled = !state.perms.edit;
      del.addEventListener("click", function () {
        change(function (d) { d.marks = d.marks.filter(function (x) { return x.id !== m.id; }); });
      });
      li.appendChild(go); li.appendChild(del);
      list.appendChild(li);
    });
  }

  var tiradsForm = $("#tirads");
  (function buildTirads() {
    ["composition", "echogenicity", "shape", "margin"].forEach(function (name) {
      var label = document.createElement("label");
      label.textContent = name.charAt(0).toUpperCase() + name.slice(1) + " ";
      var select = document.createElement("select");
      select.name = name;
      select.setAttribute("aria-label", "TI-RADS " + name);
      select.appendChild(new Option("\u2014", ""));
      cfg.tirads[name].forEach(function (c) { select.appendChild(new Option(c[1], c[0])); });
      label.appendChild(select);
      tiradsForm.appendChild(label);
    });
    var fs = document.createElement("fieldset");
    var legend = document.createElement("legend");
    legend.textContent = "Echogenic foci (all that apply)";
    fs.appendChild(legend);
    cfg.tirads.echogenic_foci.forEach(function (c) {
      var l = document.createElement("label"), box = document.createElement("input");
      box.type = "checkbox"; box.name = "echogenic_foci"; box.value = c[0];
      l.appendChild(box); l.appendChild(document.createTextNode(" " + c[1]));
      fs.appendChild(l);
    });
    tiradsForm.appendChild(fs);
  })();
  tiradsForm.addEventListener("change", function (e) {
    if (e.target.name === "echogenic_foci" && e.target.checked) {
      // "None" excludes the others, as in the ACR chart.
      tiradsForm.querySelectorAll("input[name=echogenic_foci]").forEach(function (b) {
        if ((e.target.value === "none") !== (b.value === "none")) b.checked = false;
      });
    }
    var form = {echogenic_foci: []};
    ["composition", "echogenicity", "shape", "margin"].forEach(function (n) {
      form[n] = tiradsForm.elements[n].value;
    });
    tiradsForm.querySelectorAll("input[name=echogenic_foci]:checked").forEach(function (b) {
      form.echogenic_foci.push(b.value);
    });
    $("[data-testid=tirads-result]").textContent = "Scoring\u2026";
    change(function (d) { d.tirads = form; });
  });
  function renderTirads() {
    var form = (state.data && state.data.tirads) || {};
    ["composition", "echogenicity", "shape", "margin"].forEach(function (n) {
      tiradsForm.elements[n].value = form[n] || "";
    });
    tiradsForm.querySelectorAll("input[name=echogenic_foci]").forEach(function (b) {
      b.checked = (form.echogenic_foci || []).indexOf(b.value) >= 0;
    });
    tiradsForm.querySelectorAll("select, input").forEach(function (x) { x.disabled = !state.perms.edit; });
  }
  function renderTiradsResult(result) {
    var el = $("[data-testid=tirads-result]");
    el.textContent = result ? result.name + ": " + result.points + " points \u00b7 " +
      result.recommendation_label : "Fill in every category to score the nodule.";
  }

  function renderReview() {
    var a = state.annotation, perms = state.perms;
    $("[data-testid=state]").textContent = a.state_label;
    $("[data-testid=state]").className = "badge state-" + a.state;
    var list = $("[data-testid=comments]");
    list.innerHTML = "";
    a.comments.forEach(function (c) {
      var li = document.createElement("li");
      li.setAttribute("data-testid", "comment");
      var go = document.createElement("button");
      go.type = "button"; go.className = "link";
      go.textContent = "Frame " + c.frame;
      go.addEventListener("click", function () {
        player.pause(); player.seek(c.frame);
        container.scrollIntoView({block: "nearest"}); // the comment is about what is there
      });
      li.appendChild(go);
      li.appendChild(document.createTextNode(" " + c.author + ": " + c.text));
      li.classList.toggle("resolved", !!c.resolved);
      if (perms.resolve_comments) {
        // The annotator ticks what they have dealt with; the reviewer sees it before accepting.
        var label = document.createElement("label");
        var box = document.createElement("input");
        box.type = "checkbox"; box.checked = !!c.resolved;
        box.addEventListener("change", function () { resolveComment(c, box); });
        label.appendChild(box);
        label.appendChild(document.createTextNode(" addressed"));
        li.appendChild(document.createTextNode(" "));
        li.appendChild(label);
      } else if (c.resolved) {
        li.appendChild(document.createTextNode(" (addressed)"));
      }
      list.appendChild(li);
    });
    $("#submit").hidden = !perms.submit;
    $("#accept").hidden = !perms.accept;
    $("#request-box").hidden = !perms.request_changes;
    $("#reopen-box").hidden = !perms.reopen;
    document.querySelectorAll(".workspace-side fieldset select, .workspace-side fieldset input, #outside, #delete-key, #undo, #redo, #import-file")
      .forEach(function (x) { x.disabled = !perms.edit; });
    document.body.classList.toggle("read-only", !perms.edit);
    if (!perms.edit) status("Read only: " + a.state_label.toLowerCase(), "locked");
  }

  function renderAll() {
    recomputeTracks();
    renderTrackInfo();
    renderMarks();
    renderTirads();
    renderReview();
    drawTimeline();
    player.redraw();
  }

  // --- changes, undo, saving --------------------------------------------------------------
  function change(mutate) {
    if (!state.perms.edit) return;
    state.undo.push(clone(state.data));
    if (state.undo.length > 200) state.undo.shift();
    state.redo = [];
    mutate(state.data);
    changed();
  }
  function changed() {
    recomputeTracks();
    renderTrackInfo(); renderMarks(); renderTirads(); drawTimeline(); player.redraw();
    writeDraft();
    scheduleSave(600);
  }
  function undo() {
    if (!state.perms.edit || !state.undo.length) return;
    state.redo.push(clone(state.data));
    state.data = state.undo.pop();
    changed();
  }
  function redo() {
    if (!state.perms.edit || !state.redo.length) return;
    state.undo.push(clone(state.data));
    state.data = state.redo.pop();
    changed();
  }

  function writeDraft() {
    state.dirty = !same(state.data, state.base);
    try {
      if (state.dirty) localStorage.setItem(DRAFT_KEY, JSON.stringify({version: state.version, data: state.data}));
      else localStorage.removeItem(DRAFT_KEY);
    } catch (e) { /* storage full or disabled: the server copy still saves */ }
    if (state.dirty) status("Unsaved changes", "dirty");
  }
  function scheduleSave(delay) {
    clearTimeout(state.saveTimer);
    if (state.conflict) return;
    state.saveTimer = setTimeout(save, delay);
  }

  function adopt(json) {
    // The server's view of the annotation (after load, save or a transition).
    state.annotation = json;
    state.perms = json.permissions;
    state.version = json.version;
    state.base = json.data;
    renderTiradsResult(json.tirads_result);
  }

  function save() {
    if (state.saving || state.conflict || !state.perms.edit) return Promise.resolve();
    if (same(state.data, state.base)) {
      // Back to what the server holds (an undo and a redo, say): nothing to send.
      state.dirty = false;
      status("Saved \u00b7 version " + state.version, "saved");
      return Promise.resolve();
    }
    state.saving = true;
    var sent = clone(state.data);
    status("Saving\u2026", "saving");
    return api("PUT", cfg.apiUrl, {version: state.version, data: sent}).then(function (r) {
      state.saving = false;
      if (r.status === 200) {
        state.backoff = 1000;
        adopt(r.json);
        state.base = sent; // what we sent is what the server holds (ids included)
        writeDraft();
        if (state.dirty) scheduleSave(300);
        else status("Saved \u00b7 version " + state.version, "saved");
        renderReview();
      } else if (r.status === 409) {
        showConflict(r.json);
      } else if (r.status === 403 || r.status === 404) {
        status("Not saved: " + (r.json.detail || "not allowed"), "error");
        load(false);
      } else if (r.status === 400) {
        status("Not saved: " + (r.json.detail || "invalid"), "error");
      } else {
        offline();
      }
    }, function () { state.saving = false; offline(); });
  }
  function offline() {
    writeDraft();
    status("Offline: your changes are kept in this browser; retrying\u2026", "offline");
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(save, state.backoff);
    state.backoff = Math.min(state.backoff * 2, 15000);
  }
  window.addEventListener("online", function () { state.backoff = 1000; save(); });
  window.addEventListener("beforeunload", function (e) {
    if (state.dirty) { writeDraft(); e.preventDefault(); e.returnValue = ""; }
  });

  // Three-way merge by item id (marks, tracks) and by frame (keyframes): what I changed since
  // `base` goes on top of `theirs`; what only they changed stays.
  function mergeList(base, theirs, mine, key, mergeItem) {
    var index = function (list) { var m = {}; list.forEach(function (x) { m[key(x)] = x; }); return m; };
    var b = index(base), t = index(theirs), mi = index(mine), out = {};
    Object.keys(t).forEach(function (k) { out[k] = t[k]; });
    Object.keys(mi).forEach(function (k) {
      if (!(k in b)) out[k] = mi[k]; // mine, new
      else if (!same(mi[k], b[k])) out[k] = mergeItem && k in t ? mergeItem(b[k], t[k], mi[k]) : mi[k];
    });
    Object.keys(b).forEach(function (k) { if (!(k in mi) && k in out && same(out[k], b[k])) delete out[k]; });
    return Object.keys(out).map(function (k) { return out[k]; });
  }
  function merge(base, theirs, mine) {
    base = base || {tracks: [], marks: [], tirads: {}};
    var merged = clone(theirs);
    merged.marks = mergeList(base.marks, theirs.marks, mine.marks, function (m) { return m.id; });
    merged.tracks = mergeList(base.tracks, theirs.tracks, mine.tracks, function (t) { return t.id; },
      function (b, t, m) {
        var out = clone(m);
        out.keyframes = mergeList(b.keyframes, t.keyframes, m.keyframes,
                                  function (k) { return String(k.frame); })
          .sort(function (x, y) { return x.frame - y.frame; });
        return out;
      });
    merged.tirads = clone(theirs.tirads || {});
    var bt = base.tirads || {}, mt = mine.tirads || {};
    Object.keys(mt).forEach(function (k) { if (!same(mt[k], bt[k])) merged.tirads[k] = mt[k]; });
    return merged;
  }

  var conflictBox = $("#conflict");
  function showConflict(json) {
    state.conflict = json;
    clearTimeout(state.saveTimer);
    writeDraft();
    $("[data-testid=conflict-message]").textContent =
      "This annotation was saved elsewhere (now version " + json.current_version +
      ") since you loaded version " + state.version + ". Your changes are kept in this browser.";
    conflictBox.hidden = false;
    status("Conflict: choose reload or merge", "conflict");
  }
  conflictBox.addEventListener("click", function (e) {
    var action = e.target.dataset && e.target.dataset.action;
    if (!action || !state.conflict) return;
    var theirs = state.conflict.data, mine = state.data;
    state.undo.push(clone(mine)); // reloading stays undoable: nothing is lost
    state.data = action === "merge" ? merge(state.base, theirs, mine) : clone(theirs);
    state.version = state.conflict.current_version;
    state.base = clone(theirs);
    state.conflict = null;
    conflictBox.hidden = true;
    if (action === "reload") load(false); else changed();
  });

  function load(restoreDraft) {
    return api("GET", cfg.apiUrl).then(function (r) {
      if (r.status !== 200) { status("Cannot load the annotation (HTTP " + r.status + ")", "error"); return; }
      adopt(r.json);
      state.data = clone(r.json.data);
      var draft = null;
      if (restoreDraft) {
        try { draft = JSON.parse(localStorage.getItem(DRAFT_KEY) || "null"); } catch (e) { draft = null; }
      }
      renderAll();
      if (draft && state.perms.edit && !same(draft.data, state.data)) {
        if (draft.version === state.version) {
          state.data = draft.data;
          status("Restored unsaved changes from this browser", "dirty");
          changed();
        } else {
          // Saved elsewhere meanwhile: the same choice as a conflicting save.
          state.data = draft.data;
          state.version = draft.version;
          showConflict({current_version: r.json.version, data: r.json.data});
          state.base = null;
          renderAll();
        }
      } else if (state.perms.edit) {
        try { localStorage.removeItem(DRAFT_KEY); } catch (e) { /* ignore */ }
        status("Saved \u00b7 version " + state.version, "saved");
      }
    }, function () { status("Offline: cannot load the annotation; retrying\u2026", "offline");
                     setTimeout(function () { load(restoreDraft); }, 3000); });
  }

  // --- drawing on the canvas --------------------------------------------------------------
  function tool() { return document.querySelector("input[name=tool]:checked").value; }
  document.querySelectorAll("input[name=tool]").forEach(function (r) {
    r.addEventListener("change", function () {
      r.blur(); // arrow keys step frames, not radio buttons
      document.querySelectorAll("fieldset[data-tool]").forEach(function (fs) {
        fs.hidden = fs.dataset.tool !== tool();
      });
      state.polygon = null;
      player.redraw();
    });
  });
  var markType = $("#mark-type");
  cfg.markTypes.forEach(function (t) { markType.appendChild(new Option(t[1], t[0])); });

  function framePoint(e) {
    var rect = canvas.getBoundingClientRect();
    var x = (e.clientX - rect.left) * canvas.width / rect.width;
    var y = (e.clientY - rect.top) * canvas.height / rect.height;
    var p = player.view().toFrame(x, y);
    return [r1(p[0]), r1(p[1])];
  }
  function frameToClient(x, y) {
    var rect = canvas.getBoundingClientRect(), c = player.view().toCanvas(x, y);
    return [rect.left + c[0] * rect.width / canvas.width, rect.top + c[1] * rect.height / canvas.height];
  }

  function setKeyframe(frame, entry) {
    change(function (d) {
      var track = d.tracks[0];
      if (!track) {
        track = {id: newId("t"), label: "nodule", shape: $("#track-shape").value, keyframes: []};
        d.tracks.push(track);
      }
      track.keyframes = track.keyframes.filter(function (k) { return k.frame !== frame; });
      if (entry) track.keyframes.push(Object.assign({frame: frame}, entry));
      track.keyframes.sort(function (a, b) { return a.frame - b.frame; });
      if (!track.keyframes.length) d.tracks.shift();
    });
  }
  function addMark(shape, points) {
    var span = Math.max(1, parseInt($("#mark-span").value, 10) || 1);
    var start = player.frame;
    change(function (d) {
      d.marks.push({id: newId("m"), type: markType.value, shape: shape, frame_start: start,
                    frame_end: Math.min(start + span - 1, cfg.frameCount - 1), points: points,
                    small_comet_tail: $("#flag-comet").checked, rim_interrupted: $("#flag-rim").checked});
    });
  }

  canvas.addEventListener("mousedown", function (e) {
    if (e.button !== 0 || e.altKey || !state.perms.edit) return;
    player.pause();
    var p = framePoint(e);
    var markShape = $("#mark-shape").value;
    if (tool() === "mark" && markShape === "point") { addMark("point", [p]); return; }
    if (tool() === "mark" && markShape === "polygon") {
      state.polygon = (state.polygon || []).concat([p]);
      player.redraw();
      return;
    }
    state.drag = {from: p, to: null};
  });
  window.addEventListener("mousemove", function (e) {
    if (!state.drag) return;
    state.drag.to = framePoint(e);
    player.redraw();
  });
  window.addEventListener("mouseup", function () {
    var drag = state.drag;
    state.drag = null;
    if (!drag || !drag.to) { player.redraw(); return; }
    var box = [Math.min(drag.from[0], drag.to[0]), Math.min(drag.from[1], drag.to[1]),
               Math.max(drag.from[0], drag.to[0]), Math.max(drag.from[1], drag.to[1])];
    if (box[2] - box[0] < 2 || box[3] - box[1] < 2) { player.redraw(); return; }
    if (tool() === "track") setKeyframe(player.frame, {box: box, outside: false});
    else addMark("box", [[box[0], box[1]], [box[2], box[3]]]);
  });
  $("#track-shape").addEventListener("change", function (e) {
    if (nodule()) change(function (d) { d.tracks[0].shape = e.target.value; });
  });
  $("#outside").addEventListener("click", function () { setKeyframe(player.frame, {outside: true}); });
  $("#delete-key").addEventListener("click", function () {
    var t = nodule();
    if (t && keyframeAt(t, player.frame)) setKeyframe(player.frame, null);
  });
  $("#undo").addEventListener("click", undo);
  $("#redo").addEventListener("click", redo);

  document.addEventListener("keydown", function (e) {
    var tag = (e.target && e.target.tagName) || "";
    if (tag === "TEXTAREA" || (tag === "INPUT" && e.target.type === "text")) return;
    var key = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && key === "z") { e.preventDefault(); if (e.shiftKey) redo(); else undo(); }
    else if ((e.ctrlKey || e.metaKey) && key === "y") { e.preventDefault(); redo(); }
    else if (e.ctrlKey || e.metaKey || e.altKey) return;
    else if (key === "n") { document.querySelector("input[name=tool][value=track]").click(); }
    else if (key === "c") { document.querySelector("input[name=tool][value=mark]").click(); }
    else if (key === "enter" && state.polygon) {
      if (state.polygon.length >= 3) addMark("polygon", state.polygon);
      state.polygon = null; player.redraw();
    } else if (key === "escape") { state.polygon = null; state.drag = null; player.redraw(); }
  });

  // --- review workflow, consensus, import -------------------------------------------------
  function resolveComment(comment, box) {
    box.disabled = true;
    api("POST", cfg.apiUrl + "comments/" + comment.id + "/", {resolved: box.checked})
      .then(function (r) {
        if (r.status !== 200) {
          box.checked = !box.checked;
          status(r.json.detail || "HTTP " + r.status, "error");
        } else {
          // Only the comments change: the document and any unsaved edits stay as they are.
          state.annotation.comments = r.json.comments;
        }
        renderReview();
      });
  }
  function transition(body) {
    return save().then(function () {
      if (state.dirty || state.conflict) { status("Save your changes first", "error"); return; }
      return api("POST", cfg.transitionUrl, body).then(function (r) {
        if (r.status !== 200) { status(r.json.detail || "HTTP " + r.status, "error"); return; }
        adopt(r.json);
        state.data = clone(r.json.data);
        renderAll();
        if (state.perms.edit) status("Saved \u00b7 version " + state.version, "saved");
      });
    });
  }
  $("#submit").addEventListener("click", function () { transition({action: "submit"}); });
  $("#accept").addEventListener("click", function () { transition({action: "accept"}); });
  $("#request-changes").addEventListener("click", function () {
    transition({action: "request_changes", comment: $("#review-comment").value, frame: player.frame})
      .then(function () { $("#review-comment").value = ""; });
  });
  $("#reopen").addEventListener("click", function () {
    transition({action: "reopen", reason: $("#reopen-reason").value});
  });
  var consensusForm = $("#consensus-form");
  if (consensusForm) consensusForm.addEventListener("submit", function (e) {
    e.preventDefault();
    api("POST", consensusForm.action, {consensus: true, source: +consensusForm.dataset.source})
      .then(function (r) {
        if (r.status === 200 || r.status === 201) window.location = "/annotations/" + r.json.id + "/";
        else status(r.json.detail || "HTTP " + r.status, "error");
      });
  });
  $("#import-file").addEventListener("change", function (e) {
    var file = e.target.files[0];
    if (!file) return;
    save().then(function () { return file.text(); }).then(function (text) {
      var isJson = /^\s*\{/.test(text);
      return fetch(cfg.apiUrl + "import/?version=" + state.version, {
        method: "POST", credentials: "same-origin", body: text,
        headers: {"Content-Type": isJson ? "application/json" : "application/xml",
                  "X-CSRFToken": csrf()},
      }).then(function (r) { return r.json().then(function (j) { return {status: r.status, json: j}; }); });
    }).then(function (r) {
      if (r.status === 200) { adopt(r.json); state.undo.push(clone(state.data)); state.data = clone(r.json.data); renderAll(); status("Imported \u00b7 version " + state.version, "saved"); }
      else if (r.status === 409) showConflict(r.json);
      else status("Import refused: " + (r.json.detail || r.status), "error");
      e.target.value = "";
    });
  });

  window.thyroWorkspace = {
    player: player, state: state, frameToClient: frameToClient, save: save, merge: merge,
    boxAt: function (frame) { var t = nodule(); return t ? (state.boxes[t.id] || [])[frame] || null : null; },
  };
  load(true);
})();
