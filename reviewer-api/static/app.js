// Airlock reviewer UI: live updates. The pages work without this script;
// with it, the inbox reloads when a request arrives or is decided, and a
// request page reloads when that request changes (unless a reason is being
// typed). Served by airlock-reviewer itself.
(function () {
  "use strict";
  var live = document.body.getAttribute("data-live");
  if (!live || !window.EventSource) { return; }
  var current = null;
  var card = document.querySelector("[data-request-id]");
  if (card) { current = card.getAttribute("data-request-id"); }
  var source = new EventSource("/api/v1/events");
  var pending = null;
  function reload() {
    if (pending) { return; }
    pending = setTimeout(function () { window.location.reload(); }, 300);
  }
  ["requested", "voted", "granted", "denied", "expired", "cancelled", "updated"].forEach(function (kind) {
    source.addEventListener(kind, function (e) {
      if (live === "inbox") { reload(); return; }
      var reason = document.getElementById("reason");
      if (reason && reason.value) { return; }
      try {
        var data = JSON.parse(e.data);
        if (data.request && data.request.id === current) { reload(); }
      } catch (_) { /* not ours */ }
    });
  });
})();
