// The review station's page: the cases of one predict.sh output folder (fail and review first, as the
// server sorts them); a click opens the case's CT and mask in the organ viewer (/viewer/viewer.js).
//
// One case at a time: a click clears the viewer at once and tags its requests with a generation
// number (and an AbortController), so an answer for an earlier click is dropped, never drawn under
// the later case's title. A case that cannot be shown shows its title and the reason, no image.
//
// A case on the screen can be accepted (the model's mask is right) or corrected: its label map
// becomes a drawing, painted organ by organ, and saved as the case's correction. Every action is for
// the case whose images are on the screen (shownCase), never for one still loading: the buttons are
// off from a click until its images are drawn, and a save checks again before it sends.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE_ROWS = 500; // rows added to the list at a time: a table of 100,000 cases opens as fast as one of 500
let viewer = null;
let listed = []; // the cases, in review order
let opened = 0; // the generation of the latest click
let loading = null; // the AbortController of its requests
let shownCase = null; // {item, row, generation} of the case whose images are on the screen
let saving = false;
let session = fetch("/api/session").then(answerJson); // the token a save sends
const labelTable = fetch("/labels").then(answerJson);
const viewerReady = labelTable.then((table) => {
  viewer = new SegViewer($("viewer"), table); // ready (WebGL set up) before a case is opened
  viewer.bindOrganTable($("organs"));
  viewer.onEdit = setActions;
  $("organ").replaceChildren(
    ...table.organs.map((organ) => Object.assign(document.createElement("option"), { value: String(organ.id), textContent: organ.name.replaceAll("_", " ") })),
  );
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
    cell(item.status), reviewCell(item), cell(String(Object.keys(item.organs).length)), cell(reasons),
  );
  return row;
}

function reviewCell(item) {
  const status = item.review ? item.review.status : "";
  const stale = item.review && item.review.stale;
  const text = cell(stale ? `${status}, stale` : status);
  text.className = `reviewed ${stale ? "stale" : status}`;
  if (item.review) {
    text.title = stale
      ? `${status} at ${item.review.time}, but the mask was written again since: review it again`
      : `${status} at ${item.review.time}`;
  }
  return text;
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
  shownCase = null; // no action for the previous case from now on
  setActions();
  $("review-state").textContent = item.review ? `${item.review.status} at ${item.review.time}` : "";
  $("review-state").className = "";
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
      shownCase = { item, row, generation };
      setActions();
    });
    if (current()) showStatus(`${item.case}: ${item.verdict}`, false);
  } catch (error) {
    if (!current()) return; // an earlier click's request, given up
    clearViewer();
    cannotShow(item, error.message || String(error));
  }
}

// The review buttons as the case on the screen allows: none while a case loads or a save is under way.
function setActions() {
  const ready = shownCase !== null && shownCase.generation === opened && !saving;
  const editing = viewer !== null && viewer.editing;
  $("accept").disabled = !ready || (editing && viewer.changed());
  $("correct").disabled = !ready || editing;
  $("edit-tools").hidden = !editing;
  $("edit-keys").hidden = !editing;
  $("save").disabled = !ready || !editing;
  $("undo").disabled = !ready || !viewer.canUndo();
  $("redo").disabled = !ready || !viewer.canRedo();
  $("discard").disabled = !ready;
  for (const button of $("tools").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(editing && viewer.tool === button.value));
  }
}

function startCorrecting() {
  const shown = shownCase;
  if (!shown) return;
  inTurn(async () => {
    if (shownCase !== shown) return;
    const { item } = shown;
    if (viewer.isDisplayCopy()) showStatus(`${item.case}: loading the scan at full resolution to correct it…`, false);
    await viewer.startEditing(); // on the scan's own grid: a display copy is swapped out first
    if (shownCase !== shown || !viewer.editing) return;
    showStatus(`${item.case}: ${item.verdict}`, false);
    $("organ").value = String(viewer.organ);
    $("brush-size").value = String(viewer.setBrush(Number($("brush").value)));
  });
}

function chooseTool(tool) {
  if (!viewer.editing) return;
  viewer.setTool(tool, Number($("organ").value));
  setActions();
}

function changeBrush(delta) {
  $("brush").value = String(viewer.setBrush(Number($("brush").value) + delta));
  $("brush-size").value = $("brush").value;
}

function stepOrgan(delta) {
  const select = $("organ");
  select.selectedIndex = (select.selectedIndex + delta + select.options.length) % select.options.length;
  chooseTool(viewer.tool === "erase" ? "paint" : viewer.tool);
}

// Send a review of the case on the screen: its correction (the drawing) or its acceptance.
async function sendReview(kind) {
  const shown = shownCase;
  if (!shown || saving) return;
  const { item, row } = shown;
  saving = true;
  setActions();
  const said = $("review-state");
  try {
    let body = null;
    if (kind === "correction") {
      body = await inTurn(async () => {
        if (shownCase !== shown || shown.generation !== opened) throw new Error("another case was opened: nothing saved");
        return viewer.drawingBytes();
      });
    }
    const url = `/api/cases/${encodeURIComponent(item.case)}/${kind === "correction" ? "correction" : "accept"}`;
    const send = async () => {
      const { token, header } = await session;
      return fetch(url, { method: kind === "correction" ? "PUT" : "POST", body, headers: { [header]: token } });
    };
    let sent = await send();
    if (sent.status === 403) {
      session = fetch("/api/session").then(answerJson); // a restarted station has a new token: once more with it
      sent = await send();
    }
    const answer = await answerJson(sent);
    if (kind === "correction") viewer.markSaved();
    const known = item.review;
    item.review = { status: answer.status, time: answer.time, stale: false };
    row.replaceChild(reviewCell(item), row.cells[3]);
    let text = `${item.case} saved as ${answer.status} at ${answer.time}`;
    if (answer.replaced) {
      const elsewhere = !known || known.time !== answer.replaced.time;
      text += elsewhere
        ? `; it replaced a review saved elsewhere (another tab?): ${answer.replaced.status} at ${answer.replaced.time}`
        : `; it replaced the earlier review (${answer.replaced.status} at ${answer.replaced.time})`;
    }
    said.textContent = text;
    said.className = "";
  } catch (error) {
    said.textContent = `${item.case}: not saved: ${error.message || error}`;
    said.className = "error";
  } finally {
    saving = false;
    setActions();
  }
}

function onEditKey(event) {
  if (!viewer || !viewer.editing || event.target.closest("input, select, textarea")) return;
  const key = event.key.toLowerCase();
  const command = event.ctrlKey || event.metaKey;
  const actions = {
    p: () => chooseTool("paint"), f: () => chooseTool("fill"), e: () => chooseTool("erase"),
    "[": () => changeBrush(-1), "]": () => changeBrush(1), ",": () => stepOrgan(-1), ".": () => stepOrgan(1),
  };
  let action = null;
  if (command && key === "z") action = event.shiftKey ? () => viewer.redo() : () => viewer.undo();
  else if (command && key === "y") action = () => viewer.redo();
  else if (command && key === "s") action = () => sendReview("correction");
  else if (!command && !event.altKey && key in actions) action = actions[key];
  if (!action) return;
  event.preventDefault();
  action();
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

// Whether the painting on the screen may be left: nothing unsaved, or the reviewer says so.
function mayLeave() {
  if (!viewer || !viewer.changed() || !shownCase) return true;
  return window.confirm(`${shownCase.item.case}: the correction is not saved. Leave it and lose the changes?`);
}

function rowEvent(event) {
  const row = event.target.closest("tr[data-index]");
  if (row && (event.type === "click" || event.key === "Enter") && mayLeave()) openCase(listed[Number(row.dataset.index)], row);
}

$("cases").tBodies[0].addEventListener("click", rowEvent);
$("cases").tBodies[0].addEventListener("keydown", rowEvent);
$("more").addEventListener("click", showMoreRows);
$("accept").addEventListener("click", () => sendReview("accept"));
$("correct").addEventListener("click", startCorrecting);
$("save").addEventListener("click", () => sendReview("correction"));
$("undo").addEventListener("click", () => viewer.undo());
$("redo").addEventListener("click", () => viewer.redo());
$("discard").addEventListener("click", () => shownCase && mayLeave() && openCase(shownCase.item, shownCase.row));
window.addEventListener("beforeunload", (event) => {
  if (viewer && viewer.changed()) event.preventDefault(); // the browser asks before the page is left
});
$("tools").addEventListener("click", (event) => event.target.value && chooseTool(event.target.value));
$("organ").addEventListener("change", () => chooseTool(viewer.tool === "erase" ? "paint" : viewer.tool));
$("brush").addEventListener("input", () => changeBrush(0));
window.addEventListener("keydown", onEditKey);

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
