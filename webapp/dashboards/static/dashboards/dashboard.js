// Performance dashboard: ROC curves per centre and calibration, drawn with the Plotly bundle
// served from the installed plotly package. PNG through Plotly's own camera button; SVG
// through an extra mode-bar button that calls Plotly.downloadImage.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("dashboard-data").textContent);
  var centres = Object.keys(data.centres);
  var svgButton = {
    name: "Download plot as SVG",
    icon: Plotly.Icons.disk,
    click: function (gd) { Plotly.downloadImage(gd, {format: "svg", filename: gd.id}); },
  };
  var config = {responsive: true, displaylogo: false, modeBarButtonsToAdd: [svgButton]};
  var diagonal = {x: [0, 1], y: [0, 1], mode: "lines", name: "chance",
                  line: {dash: "dot", color: "#98a2b3"}, hoverinfo: "skip"};

  function label(code, p) {
    return code + " (n=" + p.n + ", AUROC " + (p.auroc === null ? "-" : p.auroc.toFixed(3)) + ")";
  }

  var roc = [diagonal];
  centres.forEach(function (code) {
    var p = data.centres[code];
    if (!p.roc) return;
    roc.push({x: p.roc.fpr, y: p.roc.tpr, mode: "lines", name: label(code, p),
              line: {shape: "hv"}});
    // The operating point at the frozen threshold.
    if (p.sensitivity && p.specificity) {
      roc.push({x: [1 - p.specificity.estimate], y: [p.sensitivity.estimate], mode: "markers",
                name: code + " at threshold", showlegend: false, marker: {size: 9, symbol: "x"}});
    }
  });
  if (data.overall.roc && centres.length > 1) {
    roc.push({x: data.overall.roc.fpr, y: data.overall.roc.tpr, mode: "lines",
              name: label("all", data.overall), line: {shape: "hv", color: "#101820", width: 3}});
  }
  Plotly.newPlot("roc-chart", roc, {
    margin: {t: 10, r: 10}, xaxis: {title: {text: "1 - specificity"}, range: [0, 1]},
    yaxis: {title: {text: "Sensitivity"}, range: [0, 1.02]}, legend: {x: 0.35, y: 0.05},
  }, config);

  var cal = [diagonal];
  var groups = centres.map(function (c) { return [c, data.centres[c]]; });
  if (centres.length > 1) groups.push(["all", data.overall]);
  groups.forEach(function (g) {
    var p = g[1];
    if (!p.calibration) return;
    cal.push({x: p.calibration.mean_predicted, y: p.calibration.observed, mode: "lines+markers",
              name: g[0] + " (Brier " + p.brier.toFixed(3) + ")",
              text: p.calibration.counts.map(function (n) { return n + " cases"; })});
  });
  Plotly.newPlot("calibration-chart", cal, {
    margin: {t: 10, r: 10}, xaxis: {title: {text: "Mean predicted probability"}, range: [0, 1]},
    yaxis: {title: {text: "Observed share malignant"}, range: [0, 1.02]},
    legend: {x: 0.02, y: 0.98},
  }, config);
})();
