// Table cells of recorded text, for the pages that add rows as frames and sessions
// arrive (live.js, sessions.js): the text is set as text, never parsed as markup.
"use strict";

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  row.appendChild(td);
  return td;
}
