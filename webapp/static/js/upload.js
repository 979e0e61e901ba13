// Resumable uploads: a small client of the tus 1.0.0 protocol (https://tus.io), creation
// extension, written here because hospital networks are closed (no CDN). Each file is sent in
// chunks with a progress bar; a dropped connection is retried from the offset the server
// reports, and a file dropped again after a reload resumes where it stopped (localStorage).
window.ThyroCine = window.ThyroCine || {};
(function (T) {
  "use strict";
  var CHUNK = 8 * 1024 * 1024;
  var RETRY_DELAYS = [1000, 3000, 5000, 10000, 20000];

  function csrf() {
    var m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (m) return decodeURIComponent(m[1]);
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }
  function b64(s) { return btoa(unescape(encodeURIComponent(String(s)))); }
  function human(n) {
    var units = ["bytes", "KB", "MB", "GB", "TB"], i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function request(method, url, headers, body, onProgress) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      xhr.open(method, url);
      xhr.withCredentials = true;
      xhr.setRequestHeader("Tus-Resumable", "1.0.0");
      xhr.setRequestHeader("X-CSRFToken", csrf());
      Object.keys(headers).forEach(function (k) { xhr.setRequestHeader(k, headers[k]); });
      if (onProgress && xhr.upload) xhr.upload.onprogress = function (e) { onProgress(e.loaded); };
      xhr.onload = function () { resolve(xhr); };
      xhr.onerror = function () { reject(new Error("network")); };
      xhr.send(body === undefined ? null : body);
    });
  }
  function detail(xhr) {
    try { return JSON.parse(xhr.responseText).detail || xhr.statusText; }
    catch (e) { return xhr.statusText || ("HTTP " + xhr.status); }
  }

  // Upload one file; resolves with the new video's id.
  T.tusUpload = function (file, opts) {
    var key = "tus::" + opts.nodule + "::" + file.name + "::" + file.size + "::" + file.lastModified;
    var url = null, attempt = 0;
    var progress = opts.onProgress || function () {};

    function create() {
      var meta = ["nodule " + b64(opts.nodule), "filename " + b64(file.name),
                  "scan_plane " + b64(opts.scanPlane || "sweep")].join(",");
      return request("POST", opts.endpoint, {"Upload-Length": String(file.size), "Upload-Metadata": meta})
        .then(function (xhr) {
          if (xhr.status !== 201) throw new Error(detail(xhr));
          url = xhr.getResponseHeader("Location");
          try { localStorage.setItem(key, url); } catch (e) { /* private mode */ }
          var video = xhr.getResponseHeader("Video-Id");
          return video ? {done: video} : 0;
        });
    }
    function resume() {
      var saved = null;
      try { saved = localStorage.getItem(key); } catch (e) { /* private mode */ }
      if (!saved) return create();
      return request("HEAD", saved, {}).then(function (xhr) {
        if (xhr.status !== 200) { localStorage.removeItem(key); return create(); }
        url = saved;
        var video = xhr.getResponseHeader("Video-Id");
        return video ? {done: video} : parseInt(xhr.getResponseHeader("Upload-Offset"), 10);
      }, function () { return create(); });
    }
    function send(offset) {
      if (offset && offset.done) return Promise.resolve(offset.done);
      progress(offset, file.size);
      var blob = file.slice(offset, Math.min(offset + CHUNK, file.size));
      return request("PATCH", url, {"Upload-Offset": String(offset),
                                    "Content-Type": "application/offset+octet-stream"}, blob,
                     function (loaded) { progress(offset + loaded, file.size); })
        .then(function (xhr) {
          if (xhr.status === 409) return send(parseInt(xhr.getResponseHeader("Upload-Offset"), 10));
          if (xhr.status !== 204) { var err = new Error(detail(xhr)); err.fatal = true; throw err; }
          attempt = 0;
          var next = parseInt(xhr.getResponseHeader("Upload-Offset"), 10);
          var video = xhr.getResponseHeader("Video-Id");
          if (video) { try { localStorage.removeItem(key); } catch (e) { /* ignore */ }
                       progress(file.size, file.size); return video; }
          return send(next);
        }, function (err) {
          // A dropped connection: ask the server how far it got, then go on from there.
          if (attempt >= RETRY_DELAYS.length) throw err;
          var wait = RETRY_DELAYS[attempt++];
          if (opts.onRetry) opts.onRetry(wait);
          return new Promise(function (r) { setTimeout(r, wait); })
            .then(function () { return request("HEAD", url, {}); })
            .then(function (xhr) { return send(parseInt(xhr.getResponseHeader("Upload-Offset"), 10)); });
        });
    }
    if (opts.maxBytes && file.size > opts.maxBytes) {
      return Promise.reject(new Error("The file is " + human(file.size) +
        "; the largest accepted upload is " + human(opts.maxBytes) + "."));
    }
    return resume().then(send);
  };

  // A list item with a progress bar for one file, which follows the video once uploaded.
  function fileRow(list, file) {
    var li = document.createElement("li");
    li.className = "upload";
    li.dataset.filename = file.name;
    li.innerHTML = '<span class="name"></span> <progress max="100" value="0"></progress> ' +
                   '<span class="state muted">waiting</span>';
    li.querySelector(".name").textContent = file.name + " (" + human(file.size) + ")";
    list.appendChild(li);
    var bar = li.querySelector("progress"), state = li.querySelector(".state");
    return {
      progress: function (sent, total) {
        bar.value = total ? Math.round(100 * sent / total) : 100;
        state.textContent = "uploading " + bar.value + "%";
      },
      retry: function (wait) { state.textContent = "connection lost, retrying in " + wait / 1000 + " s"; },
      uploaded: function (videoId) {
        bar.value = 100; li.dataset.video = videoId;
        state.textContent = "uploaded, processing…";
        follow(videoId, state, li);
      },
      failed: function (msg) { li.classList.add("failed"); state.className = "state reason"; state.textContent = msg; }
    };
  }
  function follow(videoId, state, li) {
    fetch("/api/videos/" + videoId + "/", {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (v) {
        li.dataset.status = v.status;
        if (v.status === "ready") {
          state.className = "state"; state.innerHTML = '<span class="badge ready">Ready</span> ';
          state.appendChild(document.createTextNode(v.frame_count + " frames"));
        } else if (v.status === "failed") {
          state.className = "state reason"; state.innerHTML = '<span class="badge failed">Failed</span> ';
          state.appendChild(document.createTextNode(v.failure_reason));
        } else {
          state.textContent = v.status === "processing" ? "processing…" : "queued for processing…";
          setTimeout(function () { follow(videoId, state, li); }, 1500);
        }
      })
      .catch(function () { setTimeout(function () { follow(videoId, state, li); }, 3000); });
  }

  function dropzone(root, onFiles) {
    var zone = root.querySelector("[data-testid=dropzone]");
    var input = root.querySelector("[data-testid=file-input]");
    ["dragenter", "dragover"].forEach(function (t) {
      zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (t) {
      zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.remove("over"); });
    });
    zone.addEventListener("drop", function (e) { onFiles(Array.prototype.slice.call(e.dataTransfer.files)); });
    input.addEventListener("change", function () { onFiles(Array.prototype.slice.call(input.files)); input.value = ""; });
  }

  function uploadAll(files, list, opts) {
    // One file at a time: the server's disk and the hospital link are shared.
    return files.reduce(function (chain, file) {
      var row = fileRow(list, file);
      return chain.then(function () {
        return T.tusUpload(file, {endpoint: opts.uploadUrl, nodule: opts.nodule(), maxBytes: opts.maxBytes,
                                  scanPlane: opts.scanPlane(), onProgress: row.progress, onRetry: row.retry})
          .then(row.uploaded, function (err) { row.failed(err.message); });
      });
    }, Promise.resolve());
  }

  // The nodule page: files dropped upload at once; the video table follows their status.
  T.noduleUploads = function (root, opts) {
    if (opts.poll && T.live) {
      T.live({poll: opts.poll, socket: opts.socket, interval: 3000, onData: function (d) {
        if (d.videos) d.videos.forEach(updateRow); else updateRow(d);
      }});
    }
    if (!root) return;
    var list = root.querySelector("[data-testid=uploads]");
    var plane = root.querySelector("#scan-plane");
    dropzone(root, function (files) {
      uploadAll(files, list, {uploadUrl: opts.uploadUrl, maxBytes: opts.maxBytes,
                              nodule: function () { return opts.nodule; },
                              scanPlane: function () { return plane ? plane.value : "sweep"; }});
    });
  };
  function updateRow(v) {
    var row = document.querySelector('tr[data-video="' + v.id + '"]');
    if (!row) {
      var body = document.getElementById("video-rows");
      if (!body) return;
      var empty = body.querySelector("tr.empty"); if (empty) empty.remove();
      row = document.createElement("tr"); row.dataset.video = v.id;
      row.innerHTML = '<td></td><td><a></a></td><td class="fn"></td><td><span class="badge" data-testid="video-status"></span><div class="reason" data-testid="failure-reason"></div></td><td class="frames"></td>';
      row.querySelector("a").href = v.url || ("/videos/" + v.id + "/");
      row.querySelector("a").textContent = "Video " + v.id;
      row.querySelector(".fn").textContent = v.filename || "";
      body.appendChild(row);
    }
    var badge = row.querySelector("[data-testid=video-status]");
    if (badge) { badge.className = "badge " + v.status; badge.textContent = v.status_display; }
    var reason = row.querySelector("[data-testid=failure-reason]");
    if (reason) reason.textContent = v.failure_reason || "";
    var frames = row.cells[4]; if (frames && v.frame_count) frames.textContent = v.frame_count;
  }

  // The new-case page: create the patient and nodule from the form, then upload its files.
  T.caseForm = function (form, opts) {
    var files = [], created = null, list = form.querySelector("[data-testid=uploads]");
    var status = form.querySelector("[data-testid=case-status]");
    var pending = document.createElement("ul"); pending.className = "muted pending";
    list.parentNode.insertBefore(pending, list);
    function upload(batch) {
      uploadAll(batch, list, {uploadUrl: opts.uploadUrl, maxBytes: opts.maxBytes,
                              nodule: function () { return created.nodule; },
                              scanPlane: function () { return created.scan_plane; }});
    }
    dropzone(form, function (dropped) {
      if (created) { upload(dropped); return; }  // the case exists: straight to it
      dropped.forEach(function (f) {
        files.push(f);
        var li = document.createElement("li"); li.textContent = f.name + " (" + human(f.size) + ")";
        pending.appendChild(li);
      });
    });
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      status.textContent = "creating the case…";
      fetch(form.action || location.href, {method: "POST", body: new FormData(form), credentials: "same-origin",
                                           headers: {"Accept": "application/json", "X-CSRFToken": csrf()}})
        .then(function (r) { return r.json().then(function (d) { return {ok: r.ok, d: d}; }); })
        .then(function (res) {
          if (!res.ok) {
            var errs = res.d.errors || {};
            status.textContent = Object.keys(errs).map(function (k) {
              return errs[k].map(function (e) { return e.message; }).join(" ");
            }).join(" ");
            status.className = "reason";
            return;
          }
          status.className = "muted";
          status.innerHTML = 'Case created: <a data-testid="nodule-link"></a>';
          var link = status.querySelector("a"); link.href = res.d.url; link.textContent = "open the nodule page";
          form.querySelectorAll("input, select, button[type=submit]").forEach(function (el) {
            if (el.type !== "file") el.disabled = true; });
          pending.innerHTML = "";
          created = res.d;
          var batch = files; files = [];
          upload(batch);
        })
        .catch(function (err) { status.textContent = "The case could not be created: " + err.message; });
    });
  };
})(window.ThyroCine);
