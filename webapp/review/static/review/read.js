// The reading page's player: the case's frames, frame-exact, nothing drawn over them.
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("review-player").textContent);
  ThyroPlayer.mount(document.getElementById("player"), {
    frameCount: cfg.frameCount, fps: cfg.fps, chunkSize: cfg.chunkSize,
    chunkUrl: function (k) { return cfg.chunkBase + k; },
  });
})();
