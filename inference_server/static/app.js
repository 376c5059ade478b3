// The service's page: upload one CT, show it with its organs in the viewer (/viewer/viewer.js), the
// organ table, the verdict and the preview, offer the files. One request (POST /segment?output=bundle)
// brings everything: the server keeps nothing between requests. The viewer shows the uploaded NIfTI
// itself, or for a DICOM series the copy the bundle carries (ct_nifti_base64).
"use strict";

const $ = (id) => document.getElementById(id);

const STATUS_WORDS = {
  400: "The file could not be read",
  401: "The server needs a valid API key",
  408: "The upload stalled and the server gave up waiting",
  413: "The file is larger than the server accepts",
  422: "The file is not a 3-D CT the service can segment",
  503: "The server is busy",
  504: "The segmentation took longer than the server allows",
};

function showStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function errorText(xhr) {
  let detail = "";
  try {
    detail = JSON.parse(xhr.responseText).detail || "";
  } catch (e) {
    detail = "";
  }
  const words = STATUS_WORDS[xhr.status] || `The server answered ${xhr.status}`;
  const retry = xhr.getResponseHeader("Retry-After");
  const later = xhr.status === 503 && retry ? ` Try again in ${retry} s.` : "";
  return `${words}${detail ? ": " + detail : "."}${later}`;
}

let viewer = null;
const labelTable = fetch("/labels").then((answer) => answer.json());
labelTable.then((table) => {
  viewer = new SegViewer($("viewer"), table); // ready (WebGL set up) before any answer arrives
  viewer.bindOrganTable($("organs"));
});

function download(name, base64, type) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([SegViewer.bytesOf(base64)], { type }));
  link.download = name;
  link.textContent = `Download ${name}`;
  return link;
}

function stemOf(name) {
  return name.replace(/\.(nii\.gz|nii|zip)$/i, "").replace(/[^A-Za-z0-9._-]/g, "_") || "ct";
}

async function showInViewer(bundle, file, arrived) {
  const ct = bundle.ct_nifti_base64 ? SegViewer.bytesOf(bundle.ct_nifti_base64) : await file.arrayBuffer();
  await viewer.show(ct, SegViewer.bytesOf(bundle.mask_nifti_base64), arrived);
}

async function showResult(bundle, file, arrived) {
  const fileName = file.name;
  const quality = bundle.quality;
  const verdict = $("verdict");
  verdict.className = quality.verdict;
  verdict.textContent = quality.verdict === "ok"
    ? "Quality check: ok"
    : `Quality check: ${quality.verdict.toUpperCase()} — ${quality.reasons.join("; ")}`;
  const warnings = $("warnings");
  // The missing DICOM-SEG is said once, beside the downloads, not again among the warnings.
  const listed = bundle.warnings.filter((text) => text !== bundle.dicom_seg_note);
  warnings.replaceChildren(...listed.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
  $("preview").src = `data:image/png;base64,${bundle.preview_png_base64}`;
  const organs = Object.fromEntries((await labelTable).organs.map((organ) => [organ.id, organ]));
  const rows = Object.values(bundle.organs).map((organ) =>
    SegViewer.organRow(organs[organ.label], [organ.volume_ml.toFixed(1), organ.mean_hu.toFixed(1)]),
  );
  $("organs").tBodies[0].replaceChildren(...rows);
  const stem = stemOf(fileName);
  const links = [download(`${stem}_labels.nii.gz`, bundle.mask_nifti_base64, "application/gzip")];
  if (bundle.dicom_seg_base64) {
    links.push(download(`${stem}_seg.dcm`, bundle.dicom_seg_base64, "application/dicom"));
  }
  const note = bundle.dicom_seg_note ? [Object.assign(document.createElement("span"), { textContent: bundle.dicom_seg_note })] : [];
  $("downloads").replaceChildren(...links, ...note);
  if (bundle.model_notice) {
    $("notice").textContent = `Model notice: ${bundle.model_notice}`;
    $("notice").hidden = false;
  }
  $("result").hidden = false;
  try {
    await showInViewer(bundle, file, arrived);
  } catch (error) {
    showStatus(`The viewer could not show the scan (${error.message || error}); the files are below.`, true);
  }
}

$("upload").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/segment?output=bundle");
  const key = $("key").value.trim();
  if (key) xhr.setRequestHeader("X-API-Key", key);
  xhr.responseType = "text";
  const bar = $("progress");
  bar.hidden = false;
  bar.value = 0;
  $("send").disabled = true;
  $("result").hidden = true;
  showStatus(`Uploading ${file.name}…`, false);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total;
  };
  xhr.upload.onload = () => showStatus("Segmenting…", false);
  xhr.onload = () => {
    const arrived = performance.now();
    $("send").disabled = false;
    bar.hidden = true;
    if (xhr.status !== 200) {
      showStatus(errorText(xhr), true);
      return;
    }
    const bundle = JSON.parse(xhr.responseText);
    const seconds = xhr.getResponseHeader("X-Inference-Seconds");
    showStatus(`Done: ${Object.keys(bundle.organs).length} organs${seconds ? ` in ${seconds} s` : ""}.`, false);
    showResult(bundle, file, arrived);
  };
  xhr.onerror = () => {
    $("send").disabled = false;
    bar.hidden = true;
    showStatus("The server could not be reached.", true);
  };
  xhr.send(form);
});
