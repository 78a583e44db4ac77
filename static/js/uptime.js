/* Ticking uptimes: an element `<time data-uptime datetime="ISO start">` shows how long ago that
   was as "1 h 02 min 03 s", redrawn every second while the page is visible. The server renders
   the same text, so without this file the figure is right as of the page's load. Elements the
   live socket swaps in are picked up on the next tick (they are looked up each time). */
(function () {
  "use strict";

  function two(n) { return (n < 10 ? "0" : "") + n; }

  function uptime(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
    var m = Math.floor(s % 3600 / 60), r = s % 60;
    if (d) return d + " d " + two(h) + " h " + two(m) + " min";
    if (h) return h + " h " + two(m) + " min " + two(r) + " s";
    if (m) return m + " min " + two(r) + " s";
    return r + " s";
  }

  function tick() {
    if (document.hidden) return;
    var now = Date.now();
    var items = document.querySelectorAll("time[data-uptime]");
    for (var i = 0; i < items.length; i++) {
      var at = Date.parse(items[i].getAttribute("datetime"));
      if (isNaN(at)) continue;
      var text = uptime((now - at) / 1000);
      if (items[i].textContent !== text) items[i].textContent = text;
    }
  }

  setInterval(tick, 1000);
  document.addEventListener("htmx:wsAfterMessage", tick);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", tick);
  else tick();
})();
