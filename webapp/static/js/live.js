// Live updates: a websocket when the server relays across processes, polling otherwise.
// The database is the truth either way, so a reload always shows the current state.
window.ThyroCine = window.ThyroCine || {};
ThyroCine.live = function (opts) {
  var interval = opts.interval || 3000, timer = null;
  function poll() {
    fetch(opts.poll, {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) { if (d) opts.onData(d); })
      .catch(function () {});
  }
  function startPolling() { if (!timer) { poll(); timer = setInterval(poll, interval); } }
  if (!opts.socket || !window.WebSocket) { startPolling(); return; }
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var ws;
  try { ws = new WebSocket(scheme + location.host + opts.socket); } catch (e) { startPolling(); return; }
  ws.onmessage = function (m) { opts.onData(JSON.parse(m.data)); };
  ws.onclose = startPolling;
  ws.onerror = startPolling;
  // Poll as well until the socket is open, so nothing is missed in between.
  ws.onopen = function () { if (timer) { clearInterval(timer); timer = null; } poll(); };
};
