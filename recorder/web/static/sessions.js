// The sessions list, live: on its first page (no `before`), new sessions appear at
// the top as they are recorded, without moving what the reader is looking at.
//
// Why insert rather than show an "N new sessions" bar: a reader at the top is
// watching for new sessions and wants them to appear (mitmweb, a logbook); a reader
// scrolled down is reading older rows, and those must stay exactly where they are
// (mitmproxy #4662). So new rows go in at once, and when the reader is scrolled
// down the page scrolls by the inserted height: the row they look at stays put and
// the new rows wait above, announced in the live note. Browsers with scroll
// anchoring do part of this themselves: the row's own position is measured before
// and after, and only what is left is corrected, so nothing moves twice.
//
// Every recorded value is text: cells are set with textContent, links are our own
// path with the id percent-encoded (as the server's session_href does).
(function () {
  "use strict";
  var POLL_MS = 3000;
  var table = document.querySelector("table.sessions[data-live]");
  if (!table) return;
  var body = table.tBodies[0];
  var note = document.getElementById("live-note");
  var added = 0;
  var stopped = false;

  function topId() {
    var first = body.rows[0];
    return first ? first.dataset.id : null;
  }

  function query() {
    // The page's own filters (status, since, orchestrator, q), and the key.
    var params = new URLSearchParams(window.location.search);
    params.delete("before");
    params.delete("newer_than");
    params.delete("token");
    var top = topId();
    if (top !== null) params.set("newer_than", top);
    return "/api/sessions?" + params.toString();
  }

  function rowOf(session, shown) {
    var tr = document.createElement("tr");
    tr.dataset.id = session.id;
    tr.className = "fresh";
    var idCell = cell(tr, "", "id");
    var link = document.createElement("a");
    link.href = "/sessions/" + encodeURIComponent(session.id);
    link.textContent = session.id;
    idCell.appendChild(link);
    var status = String(shown.status);
    cell(tr, status, "status status-" + status.toLowerCase().replace(/ /g, "-"));
    cell(tr, shown.orchestrator, "");
    cell(tr, shown.type, "");
    cell(tr, shown.task, "task");
    cell(tr, String(shown.frames), "n");
    cell(tr, shown.first_seen, "");
    cell(tr, shown.took, "");
    return tr;
  }

  // The first row the reader can see: the one to keep still.
  function anchor() {
    for (var i = 0; i < body.rows.length; i++) {
      if (body.rows[i].getBoundingClientRect().bottom > 0) return body.rows[i];
    }
    return null;
  }

  function insert(sessions, shown) {
    if (!sessions.length) return;
    var scrolled = window.scrollY > 0;
    var kept = scrolled ? anchor() : null;
    var before = kept ? kept.getBoundingClientRect().top : 0;
    var fragment = document.createDocumentFragment();
    for (var i = 0; i < sessions.length; i++) fragment.appendChild(rowOf(sessions[i], shown[i]));
    body.insertBefore(fragment, body.firstChild);
    table.hidden = false;
    var empty = document.querySelector("p.empty");
    if (empty) empty.remove();
    if (kept) {
      var moved = kept.getBoundingClientRect().top - before;
      if (moved) window.scrollBy(0, moved);
    }
    added += sessions.length;
    if (note) note.textContent = added + " new session" + (added === 1 ? "" : "s") + " since this page opened" + (scrolled ? ", above" : "") + ".";
  }

  function schedule(ms) {
    if (!stopped) window.setTimeout(poll, ms);
  }

  function poll() {
    if (document.hidden) {
      // Nobody is reading: look again once the tab is shown.
      document.addEventListener("visibilitychange", poll, { once: true });
      return;
    }
    var first = topId() === null;
    fetch(query(), { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.status >= 400 && response.status < 500) {
          stopped = true; // a bad filter or a token gone: asking again says the same
          return null;
        }
        return response.ok ? response.json() : null;
      })
      .then(function (page) {
        if (page === null) return schedule(POLL_MS * 2);
        // Without a key (an empty list), the newest page: its cells are not in the
        // answer, so the page is loaded again once, with them, keyed.
        if (first) {
          if (page.sessions.length) window.location.reload();
          return schedule(POLL_MS);
        }
        insert(page.sessions, page.rows);
        schedule(page.more ? 0 : POLL_MS);
      })
      .catch(function () {
        schedule(POLL_MS * 2); // the console restarting: try again, slower
      });
  }

  schedule(POLL_MS);
})();
