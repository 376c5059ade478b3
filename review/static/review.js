// The review station's page: the cases of one predict.sh output folder (fail and review first, as the
// server sorts them); a click opens the case's CT and mask in the organ viewer (/viewer/viewer.js).
//
// One case at a time: a click clears the viewer at once and tags its requests with a generation
// number (and an AbortController), so an answer for an earlier click is dropped, never drawn under
// the later case's title. A case that cannot be shown shows its title and the reason, no image.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE_ROWS = 500; // rows added to the list at a time: a table of 100,000 cases opens as fast as one of 500
let viewer = null;
let listed = []; // the cases, in review order
let opened = 0; // the generation of the latest click
let loading = null; // the AbortController of its requests
const labelTable = fetch("/labels").then(answerJson);
const viewerReady = labelTable.then((table) => {
  viewer = new SegViewer($("viewer"), table); // ready (WebGL set up) before a case is opened
  viewer.bindOrganTable($("organs"));
});
let viewerTurn = viewerReady; // what the viewer does (show, clear) runs one thing after the other

function inTurn(task) {
  const turn = viewerTurn.then(task);
  viewerTurn = turn.catch(() => {});
  return turn;
}

// An answer's JSON, or an Error naming its status and the server's reason; never a JSON parse error,
// whatever came back (an HTML or text error page, a cut-off answer).
async function answerJson(answer) {
  const text = await answer.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (e) {
    body = null;
  }
  if (!answer.ok || body === null) {
    const detail = body && typeof body.detail === "string" ? body.detail : answer.statusText || "an answer that is not the one expected";
    throw new Error(`${answer.status}: ${detail}`);
  }
  return body;
}

async function bytes(url, signal) {
  const answer = await fetch(url, { signal });
  if (!answer.ok) await answerJson(answer); // throws with the server's reason
  return answer.arrayBuffer();
}

function volumeText(volume) {
  return typeof volume === "number" && Number.isFinite(volume) ? volume.toFixed(1) : "—";
}

function cell(text, className) {
  return Object.assign(document.createElement("td"), { textContent: text, className: className || "" });
}

function caseRow(item, index) {
  const row = document.createElement("tr");
  row.dataset.case = item.case;
  row.dataset.index = String(index);
  row.tabIndex = 0;
  const verdict = item.status === "failed" ? "no mask" : item.verdict;
  const reasons = [...item.quality_reasons, ...(item.reason ? [item.reason] : [])].join("; ");
  row.append(
    cell(item.case), cell(verdict, item.status === "failed" ? "failed" : item.verdict),
    cell(item.status), cell(String(Object.keys(item.organs).length)), cell(reasons),
  );
  return row;
}

function showMoreRows() {
  const body = $("cases").tBodies[0];
  const first = body.rows.length;
  body.append(...listed.slice(first, first + PAGE_ROWS).map((item, offset) => caseRow(item, first + offset)));
  const left = listed.length - body.rows.length;
  $("more").hidden = left === 0;
  $("more").textContent = `Show ${Math.min(left, PAGE_ROWS)} more (${left} not listed yet)`;
}

// The viewer hidden at once and emptied when its turn comes (after a show already under way).
function clearViewer() {
  $("case-view").hidden = true;
  inTurn(() => viewer.clear());
}

function cannotShow(item, reason) {
  const text = `${item.case} could not be shown: ${reason}`;
  $("case-message").textContent = text;
  $("case-message").hidden = false;
  showStatus(text, true);
}

async function openCase(item, row) {
  const generation = ++opened;
  const current = () => generation === opened;
  if (loading) loading.abort();
  const controller = new AbortController();
  loading = controller;
  for (const other of $("cases").querySelectorAll("tr[aria-current]")) other.removeAttribute("aria-current");
  row.setAttribute("aria-current", "true");
  $("case").hidden = false;
  $("case-title").textContent = `${item.case} (${item.input})`;
  $("case-reasons").textContent = [...item.quality_reasons, ...item.warnings, item.reason].filter(Boolean).join("; ");
  $("case-message").hidden = true;
  clearViewer();
  if (item.status === "failed") {
    cannotShow(item, `no mask was written (${item.reason || "no reason recorded"})`);
    return;
  }
  showStatus(`Loading ${item.case}…`, false);
  try {
    const table = await labelTable;
    const organs = Object.fromEntries(table.organs.map((organ) => [organ.name, organ]));
    const rows = Object.entries(item.organs)
      .filter(([name]) => name in organs)
      .map(([name, volume]) => SegViewer.organRow(organs[name], [volumeText(volume)]));
    const base = `/api/cases/${encodeURIComponent(item.case)}`;
    const [ct, mask] = await Promise.all([bytes(`${base}/ct`, controller.signal), bytes(`${base}/mask`, controller.signal)]);
    const since = performance.now();
    await inTurn(async () => {
      if (!current()) return;
      $("organs").tBodies[0].replaceChildren(...rows);
      $("case-view").hidden = false;
      await viewer.show(ct, mask, since);
    });
    if (current()) showStatus(`${item.case}: ${item.verdict}`, false);
  } catch (error) {
    if (!current()) return; // an earlier click's request, given up
    clearViewer();
    cannotShow(item, error.message || String(error));
  }
}

function showStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function showProblems(listing) {
  const items = listing.problems.map((text) => Object.assign(document.createElement("li"), { textContent: text }));
  const unlisted = listing.problem_count - listing.problems.length;
  if (unlisted > 0) items.push(Object.assign(document.createElement("li"), { textContent: `and ${unlisted} more` }));
  $("problems").querySelector("ul").replaceChildren(...items);
  $("problems").hidden = items.length === 0;
}

function rowEvent(event) {
  const row = event.target.closest("tr[data-index]");
  if (row && (event.type === "click" || event.key === "Enter")) openCase(listed[Number(row.dataset.index)], row);
}

$("cases").tBodies[0].addEventListener("click", rowEvent);
$("cases").tBodies[0].addEventListener("keydown", rowEvent);
$("more").addEventListener("click", showMoreRows);

fetch("/api/cases")
  .then(answerJson)
  .then((listing) => {
    $("folders").textContent = `outputs: ${listing.output_dir} · inputs: ${listing.input_dir || "unknown (use --input-dir)"}`;
    listed = listing.cases;
    $("cases").tBodies[0].replaceChildren();
    showMoreRows();
    showProblems(listing);
    const skipped = listing.problem_count ? `; ${listing.problem_count} rows of summary.csv not listed (below)` : "";
    showStatus(`${listing.cases.length} cases${skipped}`, false);
  })
  .catch((error) => showStatus(`The case list could not be read: ${error.message || error}`, true));
