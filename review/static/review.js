// The review station's page: the cases of one predict.sh output folder (fail and review first, as the
// server sorts them); a click opens the case's CT and mask in the organ viewer (/viewer/viewer.js).
"use strict";

const $ = (id) => document.getElementById(id);
let viewer = null;
const labelTable = fetch("/labels").then((answer) => answer.json());
labelTable.then((table) => {
  viewer = new SegViewer($("viewer"), table); // ready (WebGL set up) before a case is opened
  viewer.bindOrganTable($("organs"));
});

function cell(text, className) {
  return Object.assign(document.createElement("td"), { textContent: text, className: className || "" });
}

function caseRow(item) {
  const row = document.createElement("tr");
  row.dataset.case = item.case;
  row.tabIndex = 0;
  const verdict = item.status === "failed" ? "no mask" : item.verdict;
  const reasons = [...item.quality_reasons, ...(item.reason ? [item.reason] : [])].join("; ");
  row.append(
    cell(item.case), cell(verdict, item.status === "failed" ? "failed" : item.verdict),
    cell(item.status), cell(String(Object.keys(item.organs).length)), cell(reasons),
  );
  row.addEventListener("click", () => openCase(item, row));
  row.addEventListener("keydown", (event) => {
    if (event.key === "Enter") openCase(item, row);
  });
  return row;
}

async function bytes(url) {
  const answer = await fetch(url);
  if (!answer.ok) {
    let detail = "";
    try {
      detail = (await answer.json()).detail;
    } catch (e) {
      detail = answer.statusText;
    }
    throw new Error(`${answer.status}: ${detail}`);
  }
  return answer.arrayBuffer();
}

async function openCase(item, row) {
  for (const other of $("cases").tBodies[0].rows) other.removeAttribute("aria-current");
  row.setAttribute("aria-current", "true");
  $("case").hidden = false;
  $("case-title").textContent = `${item.case} (${item.input})`;
  $("case-reasons").textContent = [...item.quality_reasons, ...item.warnings, item.reason].filter(Boolean).join("; ");
  const table = await labelTable;
  const organs = Object.fromEntries(table.organs.map((organ) => [organ.name, organ]));
  const rows = Object.entries(item.organs).map(([name, volume]) => SegViewer.organRow(organs[name], [volume.toFixed(1)]));
  $("organs").tBodies[0].replaceChildren(...rows);
  if (item.status === "failed") {
    showStatus(`${item.case}: no mask was written (${item.reason})`, true);
    return;
  }
  showStatus(`Loading ${item.case}…`, false);
  try {
    const base = `/api/cases/${encodeURIComponent(item.case)}`;
    const [ct, mask] = await Promise.all([bytes(`${base}/ct`), bytes(`${base}/mask`)]);
    await viewer.show(ct, mask, performance.now());
    showStatus(`${item.case}: ${item.verdict}`, false);
  } catch (error) {
    showStatus(`${item.case} could not be shown: ${error.message || error}`, true);
  }
}

function showStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

fetch("/api/cases")
  .then((answer) => answer.json())
  .then((listing) => {
    $("folders").textContent = `outputs: ${listing.output_dir} · inputs: ${listing.input_dir || "unknown (use --input-dir)"}`;
    $("cases").tBodies[0].replaceChildren(...listing.cases.map(caseRow));
    showStatus(`${listing.cases.length} cases`, false);
  })
  .catch((error) => showStatus(`The case list could not be read: ${error}`, true));
