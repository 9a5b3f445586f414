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

  // "Back" on a refusal returns to the form (without the script it leads to the overview).
  document.addEventListener("click", function (event) {
    if (event.target.closest && event.target.closest("a[data-back]")) {
      event.preventDefault();
      window.history.back();
    }
  });

  var main = document.querySelector("main");
  var every = Number(document.body.getAttribute("data-refresh") || 0) * 1000;
  if (!main || !every) {
    return;
  }
  var connection = document.getElementById("connection");

  // The other replicas' consoles this page last showed (the overview and cluster pages list
  // them), so a page whose replica went away points at the others.
  var elsewhere = [];

  function remember() {
    var seen = [];
    document.querySelectorAll("main a.console").forEach(function (link) {
      if (link.origin !== window.location.origin && seen.indexOf(link.href) < 0) {
        seen.push(link.href);
      }
    });
    if (seen.length) {
      elsewhere = seen;
    }
  }

  function say(text) {
    if (!connection) {
      return;
    }
    connection.textContent = text;
    connection.hidden = text === "";
    if (text !== "" && elsewhere.length) {
      connection.append(" The other replicas' consoles:");
      elsewhere.forEach(function (href) {
        var link = document.createElement("a");
        link.href = href;
        link.textContent = href;
        link.className = "elsewhere";
        connection.append(" ", link);
      });
    }
  }

  remember();

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
        remember();
      }
      every = Number(page.body.getAttribute("data-refresh") || 0) * 1000;
      say("");
    } catch (error) {
      say(
        "This replica does not answer (" + error.message + "): the page shows what it " +
          "last said and tries again."
      );
    }
    if (every) {
      window.setTimeout(refresh, every);
    }
  }

  window.setTimeout(refresh, every);
})();
