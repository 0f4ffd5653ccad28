// The replay page's player: plays a session's cues, read a page at a time from
// /api/sessions/{id}/replay, with the pacing of `recorder replay`
// (recorder/replay/timing.py): each pause is the recorded time between two cues,
// capped by the idle cap, a gap between frames waited at most GAP_WAIT without one,
// divided by the speed; a late player catches up. Recorded text is only ever set as
// text (textContent, text nodes): never parsed as HTML, never a URL.
"use strict";

(() => {
  const root = document.getElementById("player");
  if (root === null) return;
  const $ = (id) => document.getElementById(id);
  const api = root.dataset.api;
  const GAP_WAIT = Number(root.dataset.gapWait) || 5;
  // The text kept on screen: a node per marker, a span per few KB of output; the
  // oldest go past MAX_NODES (a 100 000-frame session stays small).
  const MAX_NODES = 3000;
  const DROP_NODES = 1000;
  const SPAN_CHARS = 4096;
  // The next page is asked for once fewer cues than this are left to play; a
  // running session is asked again this often once nothing more has come.
  const LOW_WATER = 400;
  const POLL_MS = 1000;
  const KINDS = new Set(["asked", "tool", "status", "task", "error", "gap"]);

  const screen = $("screen");
  const playButton = $("play");
  const speedInput = $("speed");
  const idleInput = $("idle");

  let speed = positive(root.dataset.speed) || 1;
  let idle = positive(root.dataset.idle);
  let playing = true;
  let generation = 0; // every seek: a page asked for before it is dropped
  let queue = [];
  let cursor = null; // where the next page starts (null: the session's start)
  let since = null; // skip cues before this many recorded seconds (a seek to a time)
  let source = "more"; // "more", "follow" (running: poll), "done", "failed"
  let asking = false;
  let pollTimer = null;
  // Pacing (timing.py's Pacer and Due), in the page's clock (ms).
  let previousT = null;
  let afterGap = false;
  let due = null;
  let headDue = null; // when the cue at the head of the queue is due
  let timer = null;
  let pausedLeft = 0;
  let now = 0; // recorded seconds of the cue played last
  // On screen.
  let textNode = null;
  // Markers and checkpoints (from /markers), and the session's length.
  let markers = [];
  let checkpoints = [];
  let duration = null;
  let markersAsked = false;
  let following = false; // the markers were read while the session was running

  function positive(text) {
    const value = Number(text);
    return text !== "" && text !== undefined && Number.isFinite(value) && value > 0 ? value : null;
  }

  function say(text) {
    $("state").textContent = text;
  }

  // --- pacing ----------------------------------------------------------------------

  function pauseBefore(cue) {
    let pause = previousT === null ? 0 : Math.max(0, cue.t - previousT);
    previousT = cue.t;
    if (idle !== null) pause = Math.min(pause, idle);
    else if (afterGap) pause = Math.min(pause, GAP_WAIT);
    afterGap = cue.kind === "gap" && cue.edge === "";
    return (pause / speed) * 1000;
  }

  function headIsDue(at) {
    if (headDue === null) {
      if (due === null) due = at;
      due += pauseBefore(queue[0]);
      headDue = due;
    }
    return headDue <= at;
  }

  function schedule() {
    if (timer !== null || !playing) return;
    if (queue.length === 0) {
      ask();
      if (source === "done" && !asking) say("end");
      return;
    }
    headIsDue(performance.now());
    timer = setTimeout(tick, Math.max(0, headDue - performance.now()));
  }

  function tick() {
    timer = null;
    const at = performance.now();
    let played = 0;
    const stick = atBottom();
    // Every cue already due, at once (a late player catches up), a bounded batch.
    while (playing && queue.length > 0 && played < 2000 && headIsDue(at)) {
      play(queue.shift());
      headDue = null;
      played += 1;
    }
    if (played) shown(stick);
    ask();
    schedule();
  }

  function setPlaying(on) {
    if (on === playing) return;
    const at = performance.now();
    playing = on;
    if (!on) {
      clearTimeout(timer);
      timer = null;
      pausedLeft = headDue === null ? 0 : Math.max(0, headDue - at);
    } else {
      if (source === "done" && queue.length === 0) {
        seek(null, null, 0); // played to its end: from the start again
        return;
      }
      // On from where the wait stood when paused, not after the pause.
      if (headDue !== null) headDue = at + pausedLeft;
      due = headDue === null ? at : headDue;
    }
    playButton.textContent = on ? "pause" : "play";
    say(on ? "playing" : "paused");
    remember();
    schedule();
  }

  function step() {
    if (playing) return;
    if (queue.length === 0) {
      ask();
      return;
    }
    if (headDue === null) headIsDue(performance.now());
    const stick = atBottom();
    play(queue.shift());
    headDue = null;
    due = performance.now();
    shown(stick);
    remember();
    ask();
  }

  function setSpeed(value) {
    const at = performance.now();
    if (headDue !== null) {
      headDue = at + (Math.max(0, headDue - at) * speed) / value;
      due = headDue;
    }
    speed = value;
    clearTimeout(timer);
    timer = null;
    remember();
    schedule();
  }

  // --- reading pages ---------------------------------------------------------------

  function ask() {
    if (asking || pollTimer !== null || queue.length >= LOW_WATER) return;
    if (source === "done" || source === "failed") return;
    asking = true;
    const mine = generation;
    const params = new URLSearchParams();
    if (cursor !== null) params.set("cursor", cursor);
    if (since !== null) params.set("from", String(since));
    fetch(api + "/replay?" + params.toString())
      .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
      .then((page) => {
        if (mine !== generation) return;
        asking = false;
        cursor = page.cursor;
        if (page.cues.length) since = null;
        for (const cue of page.cues) queue.push(cue);
        source = page.done ? "done" : page.more ? "more" : "follow";
        if (source === "follow") {
          say(playing ? "following the running session" : "paused");
          if (!page.cues.length) {
            pollTimer = setTimeout(() => {
              pollTimer = null;
              ask();
            }, POLL_MS);
          }
        } else if (playing && $("state").textContent === "loading") {
          say("playing");
        }
        if (duration !== null && page.t > duration) showDuration(page.t);
        // The markers read the whole session: asked for once the first page is in,
        // so that they never hold it up.
        if (!markersAsked) loadMarkers();
        ask();
        schedule();
      })
      .catch((status) => {
        if (mine !== generation) return;
        asking = false;
        source = "failed";
        say("could not read the replay (" + status + ")");
      });
  }

  function seek(at, from, t) {
    generation += 1;
    clearTimeout(timer);
    clearTimeout(pollTimer);
    timer = null;
    pollTimer = null;
    asking = false;
    queue = [];
    cursor = at;
    since = from;
    source = "more";
    previousT = null;
    afterGap = false;
    due = null;
    headDue = null;
    pausedLeft = 0;
    now = t;
    screen.replaceChildren();
    textNode = null;
    if (!playing) {
      playing = true;
      playButton.textContent = "pause";
    }
    say("playing");
    shown();
    remember();
    ask();
  }

  function seekTime(t) {
    let from = null;
    for (const point of checkpoints) if (point.t <= t) from = point.cursor;
    seek(from, t, t);
  }

  // --- on screen -------------------------------------------------------------------

  function kindClass(kind) {
    return "k-" + (KINDS.has(kind) ? kind : "other");
  }

  function play(cue) {
    now = cue.t;
    if (cue.kind === "") {
      if (textNode === null || textNode.length > SPAN_CHARS) {
        const span = document.createElement("span");
        textNode = document.createTextNode("");
        span.appendChild(textNode);
        screen.appendChild(span);
      }
      textNode.appendData(cue.text);
    } else {
      const line = document.createElement("div");
      line.className = "marker " + kindClass(cue.kind);
      line.textContent = "[" + cue.kind + "] " + cue.text;
      screen.appendChild(line);
      textNode = null;
      // A running session's marker that came after the list was read.
      const last = markers.length ? markers[markers.length - 1].t : -1;
      if (following && cue.cursor && cue.t > last) addMarker(cue);
    }
    if (screen.childNodes.length > MAX_NODES) dropOldest();
  }

  function dropOldest() {
    const first = screen.firstChild;
    const note = first && first.className === "dropped" ? first : document.createElement("div");
    note.className = "dropped";
    note.textContent = "(earlier text is not kept here: seek back to see it)";
    for (let i = 0; i < DROP_NODES && screen.childNodes.length > 1; i += 1) {
      const node = note === first ? first.nextSibling : screen.firstChild;
      if (node === textNode?.parentNode) break;
      node.remove();
    }
    if (note !== first) screen.prepend(note);
  }

  // Whether the reader is at the end of the text (then it stays in view as more
  // comes), read once per batch of cues: each read lays the page out.
  function atBottom() {
    return screen.scrollHeight - screen.scrollTop - screen.clientHeight < 40;
  }

  function shown(scroll = false) {
    if (scroll) screen.scrollTop = screen.scrollHeight;
    $("clock").textContent = now.toFixed(1);
    if (duration) $("progress").style.width = Math.min(100, (100 * now) / duration) + "%";
  }

  function showDuration(t) {
    duration = t;
    $("duration").textContent = t.toFixed(1);
    for (const button of $("scrubber").querySelectorAll("button")) {
      button.style.left = place(Number(button.dataset.t));
    }
  }

  function place(t) {
    return (duration ? Math.min(100, (100 * t) / duration) : 0) + "%";
  }

  function addMarker(marker) {
    markers.push(marker);
    const label = "[" + marker.kind + "] " + marker.text;
    const go = () => {
      seek(marker.cursor, null, marker.t);
      screen.focus();
    };
    const tick = document.createElement("button");
    tick.type = "button";
    tick.className = kindClass(marker.kind);
    tick.dataset.t = String(marker.t);
    tick.style.left = place(marker.t);
    tick.title = marker.t.toFixed(1) + " s " + label;
    tick.setAttribute("aria-label", tick.title);
    tick.addEventListener("click", (event) => {
      event.stopPropagation();
      go();
    });
    $("scrubber").appendChild(tick);
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "marker " + kindClass(marker.kind);
    button.textContent = marker.t.toFixed(1) + " s " + label;
    button.addEventListener("click", go);
    item.appendChild(button);
    $("markers").appendChild(item);
  }

  function loadMarkers() {
    markersAsked = true;
    fetch(api + "/markers")
      .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
      .then((found) => {
        checkpoints = found.checkpoints;
        following = !found.ended;
        showDuration(Math.max(found.duration, now));
        for (const marker of found.markers) addMarker(marker);
        if (found.total > found.markers.length) {
          const note = document.createElement("li");
          note.textContent = found.total - found.markers.length + " more tool calls not listed";
          $("markers").appendChild(note);
        }
      })
      .catch(() => {
        $("duration").textContent = "?";
      });
  }

  function toMarker(direction) {
    const near = 1e-6;
    let target = null;
    if (direction > 0) target = markers.find((m) => m.t > now + near);
    else for (const m of markers) if (m.t < now - near) target = m;
    if (target) seek(target.cursor, null, target.t);
  }

  // --- search, the address bar, keys -------------------------------------------------

  function search(query) {
    const list = $("matches");
    list.replaceChildren();
    $("found").textContent = "searching";
    fetch(api + "/search?" + new URLSearchParams({ q: query }).toString())
      .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
      .then((found) => {
        const n = found.matches.length;
        $("found").textContent = n + (found.truncated ? "+" : "") + (n === 1 ? " match" : " matches");
        for (const match of found.matches) {
          const item = document.createElement("li");
          const button = document.createElement("button");
          button.type = "button";
          const mark = document.createElement("mark");
          mark.textContent = match.match;
          button.append(match.t.toFixed(1) + " s  …" + match.before, mark, match.after + "…");
          button.addEventListener("click", () => {
            seek(match.cursor, null, match.t);
            screen.focus();
          });
          item.appendChild(button);
          list.appendChild(item);
        }
      })
      .catch((status) => {
        $("found").textContent = "search failed (" + status + ")";
      });
  }

  function remember() {
    const params = new URLSearchParams(location.search);
    params.set("speed", String(speed));
    // Down to a tenth (not up: a link plays from before its point, never after it).
    params.set("t", String(Math.floor(now * 10 + 1e-6) / 10));
    if (idle !== null) params.set("idle", String(idle));
    else params.delete("idle");
    history.replaceState(null, "", "?" + params.toString());
  }

  playButton.addEventListener("click", () => setPlaying(!playing));
  $("step").addEventListener("click", step);
  $("previous").addEventListener("click", () => toMarker(-1));
  $("next").addEventListener("click", () => toMarker(1));
  speedInput.addEventListener("change", () => {
    const value = positive(speedInput.value);
    if (value !== null && value <= 1000) setSpeed(value);
    else speedInput.value = String(speed);
  });
  idleInput.addEventListener("change", () => {
    idle = positive(idleInput.value);
    remember();
  });
  $("scrubber").addEventListener("click", (event) => {
    if (!duration) return;
    const box = event.currentTarget.getBoundingClientRect();
    seekTime((Math.max(0, event.clientX - box.left) / box.width) * duration);
  });
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("q").value;
    if (query) search(query);
  });
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) return;
    if (event.key === " " && !(target instanceof HTMLButtonElement)) setPlaying(!playing);
    else if (event.key === ".") step();
    else if (event.key === "[") toMarker(-1);
    else if (event.key === "]") toMarker(1);
    else return;
    event.preventDefault();
  });
  setInterval(() => {
    if (playing) remember();
  }, 1000);

  const start = Number(root.dataset.start);
  if (root.dataset.start !== "" && Number.isFinite(start) && start > 0) seek(null, start, start);
  else {
    say("loading");
    ask();
  }
})();
