// The live page: frames as they are committed, from /api/live (server-sent events).
// Every value is recorded, so hostile: it is only ever set as textContent. The view
// never moves under a reader who has scrolled up; rows arrive at the bottom, and a
// button says how many came.
"use strict";

const MAX_ROWS = 500;
const FIRST = 20; // the newest frames a fresh stream starts with

const feed = document.getElementById("feed");
const rows = document.getElementById("rows");
const unseenButton = document.getElementById("new-rows");
const state = document.getElementById("live-state");
const pauseButton = document.getElementById("pause");
const form = document.getElementById("live-filters");

let source = null;
let paused = false;
let lastId = null; // the last frame id handed to us (or looked past): a resume's key
let unseen = 0;

function atBottom() {
  return feed.scrollHeight - feed.scrollTop - feed.clientHeight < 4;
}

function link(text, href) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  return a;
}

function rowOf(frame) {
  const tr = document.createElement("tr");
  tr.className = frame.direction === "in" ? "frame dir-in" : "frame dir-out";
  const id = Number(frame.id);
  cell(tr, "", "n").appendChild(link(String(id), "/frames/" + id));
  cell(tr, String(frame.time), "time");
  cell(tr, String(frame.arrow), "dir").title = String(frame.direction);
  cell(tr, String(frame.type), "type");
  cell(tr, String(frame.size), "n");
  const session = cell(tr, "", "id");
  // The server's own path to the session (percent-encoded): never a recorded URL.
  const href = frame.session_href;
  if (frame.session && typeof href === "string" && href.startsWith("/sessions/")) {
    session.appendChild(link(String(frame.session), href));
  } else {
    session.textContent = String(frame.session || "");
  }
  cell(tr, String(frame.connection), "n");
  cell(tr, String(frame.preview), "preview");
  return tr;
}

function showUnseen() {
  unseenButton.hidden = unseen === 0;
  unseenButton.textContent = unseen + " new ↓";
}

function add(frame) {
  const stick = atBottom();
  const top = feed.scrollTop;
  rows.appendChild(rowOf(frame));
  const extra = rows.rows.length - MAX_ROWS;
  if (extra > 0) {
    const height = feed.scrollHeight;
    for (let i = 0; i < extra; i += 1) rows.deleteRow(0);
    // Rows gone from above the view: what the reader looks at stays where it was.
    if (!stick) feed.scrollTop = top - (height - feed.scrollHeight);
  }
  if (stick) {
    feed.scrollTop = feed.scrollHeight;
  } else {
    unseen += 1;
    showUnseen();
  }
}

function filters() {
  const params = new URLSearchParams();
  for (const name of ["session", "type"]) {
    const value = form.elements[name].value;
    if (value) params.set(name, value);
  }
  return params;
}

function connect() {
  const params = filters();
  if (lastId !== null) params.set("after", String(lastId));
  else params.set("last", String(FIRST));
  source = new EventSource("/api/live?" + params.toString());
  state.textContent = "connecting…";
  source.onopen = () => {
    state.textContent = "live";
  };
  source.onmessage = (message) => {
    const frame = JSON.parse(message.data);
    lastId = Number(frame.id);
    add(frame);
  };
  source.addEventListener("cursor", (message) => {
    lastId = Number(message.data);
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (too many live pages, a bad filter): try again in a while.
      state.textContent = "disconnected; retrying…";
      source = null;
      setTimeout(() => {
        if (!paused && source === null) connect();
      }, 5000);
    } else {
      state.textContent = "reconnecting…";
    }
  };
}

function disconnect() {
  if (source !== null) source.close();
  source = null;
}

pauseButton.addEventListener("click", () => {
  paused = !paused;
  pauseButton.textContent = paused ? "resume" : "pause";
  if (paused) {
    disconnect();
    state.textContent = "paused";
  } else {
    connect(); // after the last frame shown: none lost while paused
  }
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const params = filters().toString();
  history.replaceState(null, "", "/live" + (params ? "?" + params : ""));
  disconnect();
  rows.replaceChildren();
  lastId = null;
  unseen = 0;
  showUnseen();
  if (!paused) connect();
});

feed.addEventListener("scroll", () => {
  if (unseen && atBottom()) {
    unseen = 0;
    showUnseen();
  }
});

unseenButton.addEventListener("click", () => {
  feed.scrollTop = feed.scrollHeight;
  unseen = 0;
  showUnseen();
});

connect();
