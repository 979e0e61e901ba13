// Nodule track interpolation for the browser: the same rules as annotations/tracks.py, tested
// against the same vectors (tests/annotations/track_vectors.json) so that the box a person
// sees on frame N is the box the server exports and the model crops.
(function (root) {
  "use strict";

  function interpolateTrack(keyframes, nFrames) {
    var boxes = new Array(nFrames).fill(null);
    var ordered = keyframes.slice().sort(function (a, b) { return a.frame - b.frame; });
    for (var i = 0; i < ordered.length; i++) {
      var current = ordered[i], following = ordered[i + 1] || null;
      var end = following === null ? nFrames : Math.min(following.frame, nFrames);
      if (current.outside) continue;
      for (var frame = current.frame; frame < end; frame++) {
        if (following === null || following.outside) {
          boxes[frame] = current.box.slice();
        } else {
          var t = (frame - current.frame) / (following.frame - current.frame);
          boxes[frame] = current.box.map(function (v, k) {
            return v + (following.box[k] - v) * t;
          });
        }
      }
    }
    return boxes;
  }

  var api = { interpolateTrack: interpolateTrack };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.ThyroTracks = api;
})(this);
