// Controls for ThyroPlayer: buttons, scrubber with the frame number, speed, brightness and
// contrast, zoom, and a keyboard help overlay. Pages call ThyroPlayer.mount(root, options);
// `root` holds a <canvas>. Mouse wheel zooms, dragging with the middle button (or Alt) pans.
(function (root) {
  "use strict";

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function mount(container, opts) {
    var canvas = container.querySelector("canvas");
    var player = root.ThyroPlayer.create(canvas, opts);
    var bar = el("div", {"class": "player-controls"});
    var button = function (label, title, action, testid) {
      var b = el("button", {type: "button", title: title, "class": "secondary",
                            "data-testid": testid}, label);
      b.addEventListener("click", action);
      bar.appendChild(b);
      return b;
    };
    button("\u00AB", "Ten frames back (Shift+\u2190)", function () { player.step(-10); }, "back10");
    button("\u2039", "One frame back (\u2190)", function () { player.step(-1); }, "back1");
    var playButton = button("\u25B6", "Play / pause (Space)", function () { player.toggle(); },
                            "play");
    button("\u203A", "One frame forward (\u2192)", function () { player.step(1); }, "fwd1");
    button("\u00BB", "Ten frames forward (Shift+\u2192)", function () { player.step(10); },
           "fwd10");
    var scrubber = el("input", {type: "range", min: "0", max: String(opts.frameCount - 1),
                                value: "0", "aria-label": "Frame", "data-testid": "scrubber"});
    scrubber.addEventListener("input", function () { player.pause(); player.seek(+scrubber.value); });
    bar.appendChild(scrubber);
    var counter = el("span", {"class": "frame-counter", "data-testid": "frame-counter"});
    bar.appendChild(counter);
    var speed = el("select", {"aria-label": "Speed", "data-testid": "speed"});
    [0.25, 0.5, 1, 2, 4].forEach(function (s) {
      var o = el("option", {value: String(s)}, s + "\u00D7");
      if (s === 1) o.selected = true;
      speed.appendChild(o);
    });
    speed.addEventListener("change", function () { player.setSpeed(+speed.value); });
    bar.appendChild(speed);
    [["Brightness", "setBrightness"], ["Contrast", "setContrast"]].forEach(function (pair) {
      var label = el("label", {"class": "slider"}, pair[0] + " ");
      var input = el("input", {type: "range", min: "30", max: "250", value: "100",
                               "aria-label": pair[0]});
      input.addEventListener("input", function () { player[pair[1]](+input.value); });
      label.appendChild(input);
      bar.appendChild(label);
    });
    button("?", "Keyboard shortcuts (?)", function () { toggleHelp(); }, "help");
    container.appendChild(bar);

    var help = el("div", {"class": "player-help", hidden: "", role: "dialog",
                          "aria-label": "Keyboard shortcuts"});
    var table = el("table");
    root.ThyroPlayer.SHORTCUTS.forEach(function (row) {
      var tr = el("tr");
      tr.appendChild(el("td", {}, row[0]));
      tr.appendChild(el("td", {}, row[1]));
      table.appendChild(tr);
    });
    help.appendChild(el("h3", {}, "Keyboard shortcuts"));
    help.appendChild(table);
    container.appendChild(help);
    function toggleHelp() { help.hidden = !help.hidden; }

    function update(frame) {
      counter.textContent = "Frame " + frame + " / " + (opts.frameCount - 1);
      scrubber.value = String(frame);
      playButton.textContent = player.playing ? "\u275A\u275A" : "\u25B6";
    }
    player.on("frame", update);
    player.on("buffering", function (b) { container.classList.toggle("buffering", b); });
    update(player.frame);
    setInterval(function () { playButton.textContent = player.playing ? "\u275A\u275A" : "\u25B6"; }, 250);

    canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      player.zoomBy(e.deltaY < 0 ? 1.1 : 1 / 1.1);
    }, {passive: false});
    var drag = null;
    canvas.addEventListener("mousedown", function (e) {
      if (e.button === 1 || e.altKey) { drag = [e.clientX, e.clientY]; e.preventDefault(); }
    });
    window.addEventListener("mousemove", function (e) {
      if (!drag) return;
      player.panBy(e.clientX - drag[0], e.clientY - drag[1]);
      drag = [e.clientX, e.clientY];
    });
    window.addEventListener("mouseup", function () { drag = null; });
    root.ThyroPlayer.bindKeys(player, document, toggleHelp);
    return player;
  }

  root.ThyroPlayer.mount = mount;
})(this);
