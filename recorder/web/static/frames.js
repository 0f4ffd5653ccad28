// The frames table: a click anywhere on a row opens that frame (the id cell links
// there too, for keyboards and without script).
"use strict";
document.addEventListener("click", (event) => {
  const target = event.target;
  if (!(target instanceof Element) || target.closest("a")) return;
  const row = target.closest("tr.frame");
  if (row === null) return;
  const id = Number(row.querySelector("td a")?.textContent);
  if (Number.isSafeInteger(id) && id > 0) window.location.assign("/frames/" + id);
});
