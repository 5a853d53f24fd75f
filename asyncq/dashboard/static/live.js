// Live updates: the server sends a notice over SSE when tasks or workers change; the page fetches
// its live part again (?partial=1) and swaps it in. Without JavaScript the pages work as they are.
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });
  var live = document.getElementById("live");
  if (!live || !window.EventSource || !window.fetch) return;
  var topics = (live.getAttribute("data-topics") || "").split(" ");
  var root = document.body.getAttribute("data-root") || "";
  var timer = null;
  var last = 0;
  var spacing = 1000;  // at least this many ms between two fetches: a busy cluster sends many notices
  function busy() {
    var active = document.activeElement;
    return active && live.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
  }
  function refresh() {
    timer = null;
    last = Date.now();
    if (busy()) { timer = setTimeout(refresh, 1000); return; }  // do not swap a form being typed in
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    url.searchParams.delete("msg");
    url.searchParams.delete("error");
    fetch(url, { credentials: "same-origin" }).then(function (response) {
      return response.ok ? response.text() : null;
    }).then(function (html) {
      if (html !== null) live.innerHTML = html;
    }).catch(function () {});
  }
  function schedule() {
    if (!timer) timer = setTimeout(refresh, Math.max(150, spacing - (Date.now() - last)));
  }
  var source = new EventSource(root + "/api/events");
  // What changed between the server's rendering and this subscription has no notice: fetch once.
  source.addEventListener("open", schedule);
  topics.forEach(function (topic) {
    if (!topic) return;
    source.addEventListener(topic, schedule);
  });
})();
