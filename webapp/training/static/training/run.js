// The live run page: progress, Plotly curves and the log tail. State arrives whole from the
// JSON endpoint (on load and when polling) or in pieces over the websocket; points are kept
// by step and epoch, so a piece seen twice changes nothing.
window.ThyroCine = window.ThyroCine || {};
ThyroCine.trainingRun = function (opts) {
  var steps = {}, epochs = {}, run = null;
  var $ = function (id) { return document.querySelector('[data-testid="' + id + '"]'); };
  var layout = function (title, extra) {
    return Object.assign({margin: {l: 50, r: 10, t: 10, b: 40}, height: 280,
      xaxis: {title: {text: title}}, legend: {orientation: "h"}}, extra || {});
  };
  function values(map) {
    return Object.keys(map).map(Number).sort(function (a, b) { return a - b; })
      .map(function (k) { return map[k]; });
  }
  function draw() {
    var s = values(steps), e = values(epochs);
    var perEpoch = run && run.steps_total && run.epochs ? run.steps_total / run.epochs : 1;
    Plotly.react("loss-chart", [
      {name: "step loss", mode: "lines", x: s.map(function (p) { return p.step / perEpoch; }),
       y: s.map(function (p) { return p.loss; }), line: {width: 1}},
      {name: "train loss (epoch)", mode: "lines+markers", x: e.map(function (p) { return p.epoch; }),
       y: e.map(function (p) { return p.train_loss; })},
      {name: "validation loss", mode: "lines+markers", x: e.map(function (p) { return p.epoch; }),
       y: e.map(function (p) { return p.val_loss; })}
    ], layout("epoch"), {displayModeBar: false, responsive: true});
    Plotly.react("auroc-chart", [
      {name: "validation AUROC", mode: "lines+markers", x: e.map(function (p) { return p.epoch; }),
       y: e.map(function (p) { return p.val_auroc; })}
    ], layout("epoch", {yaxis: {range: [0, 1.02]}}), {displayModeBar: false, responsive: true});
  }
  function showRun(r) {
    run = r;
    var status = $("run-status");
    status.textContent = r.status_display;
    status.className = "badge run-" + r.status;
    var bar = $("run-progress");
    if (r.progress === null || r.progress === undefined) bar.removeAttribute("value");
    else bar.value = r.progress;
    $("epoch-label").textContent = "epoch " + r.epoch + "/" + r.epochs;
    $("step-label").textContent = "step " + r.step + "/" + r.steps_total;
    $("run-phase").textContent = r.phase_display || "";
    var reason = $("failure-reason");
    reason.textContent = r.failure_reason || "";
    reason.hidden = !r.failure_reason;
    var link = $("model-link");
    if (r.model_version_number) {
      link.hidden = false;
      link.innerHTML = 'Registered as <a href="' + opts.modelUrl + r.model_version + '/">model v' +
        r.model_version_number + "</a>.";
    }
    var finished = ["succeeded", "failed", "cancelled"].indexOf(r.status) >= 0;
    var cancel = $("cancel-form");
    if (cancel && finished) cancel.hidden = true;
    if (finished && opts.state.run.status !== r.status && !opts.reloading) {
      // The actions (resume, the model link) depend on the end state: show them.
      opts.reloading = true;
      setTimeout(function () { location.reload(); }, 1500);
    }
  }
  function onData(d) {
    (d.steps || []).forEach(function (p) { steps[p.step] = p; });
    (d.epochs || []).forEach(function (p) { epochs[p.epoch] = p; });
    if (typeof d.log_tail === "string") {
      var log = $("log-tail");
      var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent = d.log_tail;
      if (atEnd) log.scrollTop = log.scrollHeight;
    }
    if (d.run) showRun(d.run);
    if ((d.steps && d.steps.length) || (d.epochs && d.epochs.length) || !d.run) draw();
  }
  onData(opts.state);
  draw();
  var log = $("log-tail");
  log.scrollTop = log.scrollHeight;
  if (["succeeded", "failed", "cancelled"].indexOf(opts.state.run.status) < 0) {
    ThyroCine.live({socket: opts.socket, poll: opts.poll, onData: onData});
  }
};
