// The web console's only script. Live pages (the body's data-refresh, in seconds) fetch
// themselves again and swap in the new <main>, so a page left open follows the cluster (a
// failover, a job's log) without a reload and without losing its place; a replica that stops
// answering is said so at the top while the page keeps what it last showed. Forms with
// data-confirm ask first. Every page also works without this script (it reloads itself).
"use strict";
(function () {
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  var main = document.querySelector("main");
  var every = Number(document.body.getAttribute("data-refresh") || 0) * 1000;
  if (!main || !every) {
    return;
  }
  var connection = document.getElementById("connection");

  function say(text) {
    if (connection) {
      connection.textContent = text;
      connection.hidden = text === "";
    }
  }

  async function refresh() {
    try {
      var answer = await fetch(window.location.href, {
        cache: "no-store",
        credentials: "same-origin",
      });
      if (answer.redirected) {
        // Signed out or the session expired: go where the console sends us.
        window.location.href = answer.url;
        return;
      }
      var page = new DOMParser().parseFromString(await answer.text(), "text/html");
      var next = page.querySelector("main");
      if (next) {
        main.innerHTML = next.innerHTML;
      }
      every = Number(page.body.getAttribute("data-refresh") || 0) * 1000;
      say("");
    } catch (error) {
      say(
        "This replica does not answer (" + error.message + "): the page shows what it " +
          "last said and tries again. Another replica's console shows the cluster meanwhile."
      );
    }
    if (every) {
      window.setTimeout(refresh, every);
    }
  }

  window.setTimeout(refresh, every);
})();
