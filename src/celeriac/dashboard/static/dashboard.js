// celeriac dashboard: confirmations for the actions, and live updates over server-sent
// events (each update fetches the page's live part again and swaps it in).
"use strict";
(function () {
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live || !window.EventSource) {
    return;
  }
  var busy = false;
  var again = false;

  function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("notice");
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null) {
          live.innerHTML = html;
          document.body.setAttribute("data-updated", String(Date.now()));
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) {
          again = false;
          refresh();
        }
      });
  }

  var source = new EventSource("/stream");
  source.addEventListener("open", function () {
    status.textContent = "live";
    status.className = "live-status on";
  });
  source.addEventListener("error", function () {
    status.textContent = "reconnecting…";
    status.className = "live-status off";
  });
  source.addEventListener("update", function (event) {
    var data = JSON.parse(event.data);
    status.textContent = "live · " + data.events + " events";
    refresh();
  });
})();
