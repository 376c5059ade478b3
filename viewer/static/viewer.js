// The organ viewer of the service's page and of the review station: the CT with its label map drawn
// over it, scrollable, in NiiVue (vendored in /viewer/niivue/, see viewer/README.md). No build step:
// a classic script that needs niivue.umd.js loaded before it and defines window.SegViewer.
//
// Conventions, the same as the preview PNG and the DICOM-SEG: radiological (the patient's right on
// the screen's left), superior up, the organ colours of segcore.labels.ORGAN_COLORS (given by the
// server's /labels), the CT at the abdominal window (W 400, L 40) until the user drags it.
"use strict";

(function () {
  const VIEWS = {
    axial: { label: "Axial", type: 0, axis: 2 },
    coronal: { label: "Coronal", type: 1, axis: 1 },
    sagittal: { label: "Sagittal", type: 2, axis: 0 },
    multi: { label: "3 planes", type: 3, axis: 2 },
  };
  // Keys that step one slice through the view's axis (the 3-plane layout steps the axial plane).
  const STEP_KEYS = { ArrowUp: 1, ArrowRight: 1, PageUp: 1, ArrowDown: -1, ArrowLeft: -1, PageDown: -1 };
  const TOOLS = { paint: false, fill: true, erase: false }; // NiiVue's filled pen fills the outline drawn
  const HISTORY = 32; // undo steps kept (the history holds one drawing more: the one before them)

  // A label map's voxels as runs (value, length): a drawing of 80 M voxels is a few MB of history.
  function encodeRuns(bitmap) {
    const values = [];
    const lengths = [];
    let start = 0;
    for (let i = 1; i <= bitmap.length; i++) {
      if (i === bitmap.length || bitmap[i] !== bitmap[start]) {
        values.push(bitmap[start]);
        lengths.push(i - start);
        start = i;
      }
    }
    return { values: Uint8Array.from(values), lengths: Uint32Array.from(lengths), size: bitmap.length };
  }

  function decodeRuns(runs) {
    const bitmap = new Uint8Array(runs.size);
    let at = 0;
    for (let r = 0; r < runs.values.length; r++) {
      bitmap.fill(runs.values[r], at, at + runs.lengths[r]);
      at += runs.lengths[r];
    }
    return bitmap;
  }

  const DISPLAY_IN_PLANE = 256; // a display copy's largest in-plane size: a 640-pixel canvas shows no more

  // A NIfTI file's bytes unpacked (gzip-ed or not), by the browser's own gunzip.
  async function unpacked(buffer) {
    const head = new Uint8Array(buffer, 0, 2);
    if (!(head[0] === 0x1f && head[1] === 0x8b)) return buffer;
    const stream = new Blob([buffer]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).arrayBuffer();
  }

  const VOXEL_TYPES = { 2: Uint8Array, 4: Int16Array, 8: Int32Array, 16: Float32Array, 64: Float64Array, 256: Int8Array, 512: Uint16Array, 768: Uint32Array };

  // A NIfTI-1 file (unpacked, little-endian, one file) read enough to resample it: its header's
  // fields, its first volume's voxels; null for anything else (it is then shown as it is).
  function niftiVolume(buffer) {
    if (buffer.byteLength < 352) return null;
    const view = new DataView(buffer);
    if (view.getInt32(0, true) !== 348 || view.getUint8(344) !== 0x6e || view.getUint8(345) !== 0x2b) return null;
    const dims = [1, 2, 3].map((i) => view.getInt16(40 + 2 * i, true));
    const Type = VOXEL_TYPES[view.getInt16(70, true)];
    const offset = Math.round(view.getFloat32(108, true));
    const count = dims[0] * dims[1] * dims[2];
    if (!Type || dims.some((n) => n < 1) || offset < 352 || offset + count * Type.BYTES_PER_ELEMENT > buffer.byteLength) return null;
    const slope = view.getFloat32(112, true);
    const scaled = Number.isFinite(slope) && slope !== 0;
    return {
      buffer, view, dims, offset,
      voxels: new Type(buffer.slice(offset, offset + count * Type.BYTES_PER_ELEMENT)),
      slope: scaled ? slope : 1, inter: scaled ? view.getFloat32(116, true) : 0,
    };
  }

  // A display copy of a volume: every step-th voxel in-plane (the slices all kept), as 8 bits
  // (value(v) for each voxel v), with the header of the original made to fit: the sample grid starts
  // at the original's first voxel, so the copy lies exactly where the original does.
  function displayCopy(volume, step, value) {
    const [nx, ny, nz] = volume.dims;
    const [mx, my] = [Math.ceil(nx / step), Math.ceil(ny / step)];
    const out = new ArrayBuffer(352 + mx * my * nz);
    const bytes = new Uint8Array(out);
    bytes.set(new Uint8Array(volume.buffer, 0, 348));
    const header = new DataView(out);
    header.setInt16(40, 3, true);
    header.setInt16(42, mx, true);
    header.setInt16(44, my, true);
    for (let i = 4; i < 8; i++) header.setInt16(40 + 2 * i, 1, true);
    header.setInt16(70, 2, true); // uint8
    header.setInt16(72, 8, true);
    header.setFloat32(80, volume.view.getFloat32(80, true) * step, true); // pixdim x, y
    header.setFloat32(84, volume.view.getFloat32(84, true) * step, true);
    header.setFloat32(108, 352, true);
    header.setFloat32(112, 1, true);
    header.setFloat32(116, 0, true);
    header.setFloat32(124, 255, true);
    header.setFloat32(128, 0, true);
    for (const row of [280, 296, 312]) {
      for (const column of [0, 1]) header.setFloat32(row + 4 * column, volume.view.getFloat32(row + 4 * column, true) * step, true);
    }
    const voxels = volume.voxels;
    let at = 352;
    for (let z = 0; z < nz; z++) {
      for (let y = 0; y < ny; y += step) {
        const row = (z * ny + y) * nx;
        for (let x = 0; x < nx; x += step) bytes[at++] = value(voxels[row + x]);
      }
    }
    return out;
  }

  // The CT windowed to 0-255 and the labels, both as display copies, when the CT is larger in-plane
  // than the canvas can show; null when it is not (or a file is not plain NIfTI-1: shown as it is).
  function displayCopies(ct, mask, window) {
    const [back, labels] = [niftiVolume(ct), niftiVolume(mask)];
    if (!back || !labels || back.dims.some((n, i) => n !== labels.dims[i])) return null;
    const step = Math.ceil(Math.max(back.dims[0], back.dims[1]) / DISPLAY_IN_PLANE);
    if (step < 2) return null;
    const [low, high] = window;
    const scale = 255 / (high - low);
    const { slope, inter } = back;
    const grey = (v) => Math.min(255, Math.max(0, Math.round((v * slope + inter - low) * scale)));
    let value = grey;
    if (back.voxels instanceof Int16Array || back.voxels instanceof Uint16Array) {
      const offset = back.voxels instanceof Int16Array ? 32768 : 0; // a table of all 65,536 values
      const table = new Uint8Array(65536);
      for (let i = 0; i < 65536; i++) table[i] = grey(i - offset);
      value = (v) => table[v + offset];
    }
    return { ct: displayCopy(back, step, value), mask: displayCopy(labels, step, (v) => v), step };
  }

  function element(tag, properties, children) {
    const node = Object.assign(document.createElement(tag), properties || {});
    node.append(...(children || []));
    return node;
  }

  class SegViewer {
    // container: an empty element the viewer fills (tool bar, canvas, slice readout);
    // table: the server's /labels answer, {organs: [{id, name, color: [r, g, b]}], window: [low, high]}.
    constructor(container, table) {
      this.table = table;
      this.hidden = new Set();
      this.opacity = 0.5;
      this.view = "axial";
      this.firstSliceMs = null;
      this.buildControls(container);
      this.nv = new niivue.Niivue({
        backColor: [0, 0, 0, 1],
        crosshairColor: [1, 1, 0.4, 0.3],
        crosshairWidth: 0.5,
        show3Dcrosshair: false,
        isRadiologicalConvention: true,
        multiplanarShowRender: niivue.SHOW_RENDER.NEVER,
        isColorbar: false,
        logLevel: "warn",
        loadingText: "",
      });
      this.nv.onLocationChange = () => this.showSlice();
      this.editing = false;
      this.history = [];
      this.position = -1;
      this.shownCount = 0;
      this.full = null;
      this.onEdit = () => {}; // called after every change of the drawing (stroke, undo, redo)
      this.nv.onDrawingChanged = (action) => {
        if (this.editing && action === "draw") this.remember();
      };
      // WebGL and the shaders are set up now, not when a scan arrives: a page builds its viewer
      // before it has anything to show.
      this.attached = this.nv.attachToCanvas(this.canvas);
      // A press focuses the canvas (for the arrow keys) without scrolling the page: a browser scrolls a
      // partly hidden element into view on focus, and a page that jumps under the pen puts the rest of a
      // stroke elsewhere than its first point.
      this.canvas.addEventListener(
        "mousedown",
        (event) => {
          event.preventDefault();
          this.canvas.focus({ preventScroll: true });
        },
        { capture: true },
      );
      window.addEventListener("keydown", (event) => this.onKey(event), { capture: true });
    }

    buildControls(container) {
      this.buttons = Object.entries(VIEWS).map(([name, view]) => {
        const button = element("button", { type: "button", textContent: view.label, value: name });
        button.addEventListener("click", () => this.setView(name));
        return button;
      });
      this.slider = element("input", { type: "range", min: "0", max: "1", step: "0.05", value: String(this.opacity) });
      this.slider.className = "viewer-opacity";
      this.slider.addEventListener("input", () => this.setOpacity(Number(this.slider.value)));
      this.readout = element("span", { className: "viewer-slice", role: "status" });
      this.fullButton = element("button", { type: "button", textContent: "Full resolution", hidden: true });
      this.fullButton.className = "viewer-full";
      this.fullButton.title = "a copy at a lower in-plane resolution is shown: load the scan as it is";
      this.fullButton.addEventListener("click", () => this.showFullResolution());
      const views = element("span", { className: "viewer-views", role: "group" }, this.buttons);
      const opacity = element("label", { className: "viewer-opacity-label" }, ["overlay opacity ", this.slider]);
      this.canvas = element("canvas", { className: "viewer-canvas", tabIndex: 0 });
      this.canvas.setAttribute("aria-label", "CT with the organs drawn; mouse wheel or arrow keys change the slice");
      const tools = element("div", { className: "viewer-tools" }, [views, opacity, this.readout, this.fullButton]);
      const frame = element("div", { className: "viewer-frame" }, [this.canvas]);
      container.replaceChildren(tools, frame);
    }

    // Show a CT and its label map (ArrayBuffers of .nii or .nii.gz files, told apart by their bytes).
    // since: the performance.now() the answer arrived at; firstSliceMs is measured from it.
    // The label map is NiiVue's drawing layer (setVolumes). A CT larger in-plane than the canvas
    // shows is first shown as a display copy (every second or
    // third voxel in-plane, 8 bits, at the CT window): a few times less to parse and to make textures
    // of, which is most of the wait without a GPU. showFullResolution() swaps in the files as they
    // are (a button, and before correcting: a correction is painted on the case's own grid).
    async show(ct, mask, since) {
      await this.attached;
      const shown = ++this.shownCount;
      const started = performance.now();
      const full = { ct: await unpacked(ct), mask: await unpacked(mask) };
      const inflated = performance.now();
      const display = displayCopies(full.ct, full.mask, this.table.window);
      const copied = performance.now();
      if (shown !== this.shownCount) return; // cleared meanwhile
      this.full = display ? full : null;
      this.displayStep = display ? display.step : 1;
      const [back, labels] = await this.volumesOf(display || full, display ? [0, 255] : this.table.window);
      const parsed = performance.now();
      this.hidden.clear();
      this.setVolumes(back, labels);
      this.nv.gl.finish();
      const drawn = performance.now();
      await new Promise((resolve) => requestAnimationFrame(() => resolve()));
      // Where the time went: reading both files (inflating them, the display copies, NiiVue parsing the
      // copies), making the textures and drawing, showing the frame.
      this.timings = {
        read_ms: parsed - started, textures_ms: drawn - parsed, frame_ms: performance.now() - drawn,
        inflate_ms: inflated - started, display_copy_ms: copied - inflated, parse_ms: parsed - copied,
      };
      this.firstSliceMs = since === undefined ? null : performance.now() - since;
      this.canvas.dataset.firstSliceMs = this.firstSliceMs === null ? "" : this.firstSliceMs.toFixed(1);
      this.canvas.dataset.hidden = "";
      this.canvas.dataset.ready = "1";
    }

    // NiiVue's images of a pair of unpacked NIfTI files; the CT shown from low to high.
    async volumesOf(files, [low, high]) {
      // An ArrayBuffer as the url: NiiVue reads it, fetching nothing; the name gives the format.
      const back = await niivue.NVImage.loadFromUrl({ url: files.ct, name: "ct.nii", colormap: "gray", cal_min: low, cal_max: high });
      const labels = await niivue.NVImage.loadFromUrl({ url: files.mask, name: "labels.nii", opacity: 1 });
      return [back, labels];
    }

    // The CT as NiiVue's volume, the label map as its drawing layer: one 8-bit texture coloured by a
    // table in the slice shader, where an overlay volume would be resampled into a colour texture of
    // the CT's size, slice by slice, a few seconds without a GPU. Correcting paints on it.
    setVolumes(back, labels) {
      // The colour table first: setDrawColormap() would remake every texture once more.
      this.nv.drawLut = niivue.cmapper.makeDrawLut(this.colourTable());
      this.nv.volumes = [back];
      this.nv.setVolume(back, 0); // textures made, NiiVue's background set
      this.nv.loadDrawing(labels);
      this.nv.setDrawOpacity(this.opacity);
      this.centreCrosshair();
      this.setOpacity(this.opacity);
      this.setView(this.view);
      this.canvas.dataset.resolution = this.full ? "display" : "full";
      this.fullButton.hidden = !this.full;
      this.canvas.dataset.columns = String(back.dims[1]);
    }

    // Whether a display copy is shown (the files themselves not yet).
    isDisplayCopy() {
      return this.full !== null && this.full !== undefined;
    }

    // The case's files in place of its display copy (nothing when they are shown already). One load
    // at a time: the button and "Correct mask" share it, so a second load cannot land over strokes.
    showFullResolution() {
      if (!this.isDisplayCopy() || this.editing) return Promise.resolve();
      if (!this.fullLoad) this.fullLoad = this.loadFullResolution().finally(() => (this.fullLoad = null));
      return this.fullLoad;
    }

    async loadFullResolution() {
      const shown = this.shownCount;
      const [back, labels] = await this.volumesOf(this.full, this.table.window);
      if (shown !== this.shownCount || this.editing) return; // another case, or none, meanwhile
      this.full = null;
      this.displayStep = 1;
      this.setVolumes(back, labels);
      this.applyColours();
    }

    // Show nothing: no CT, no mask, no drawing, no slice (before another case's images are shown, or
    // when they cannot be).
    clear() {
      this.shownCount++;
      this.full = null;
      this.fullButton.hidden = true;
      this.stopEditing();
      if (this.nv.drawBitmap) this.nv.closeDrawing();
      this.nv.drawBitmap = null;
      this.nv.volumes = [];
      this.nv.drawScene();
      this.canvas.dataset.ready = "";
      this.showSlice();
    }

    // The label colour table: every organ in its colour, hidden organs and the background clear.
    colourTable() {
      const table = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: ["background"] };
      for (const organ of this.table.organs) {
        table.R.push(organ.color[0]);
        table.G.push(organ.color[1]);
        table.B.push(organ.color[2]);
        table.A.push(this.hidden.has(organ.id) ? 0 : 255);
        table.I.push(organ.id);
        table.labels.push(organ.name);
      }
      return table;
    }

    // Correcting: the label map becomes NiiVue's drawing, painted and erased on the CT's own grid
    // (the files themselves, not a display copy).
    async startEditing() {
      await this.showFullResolution();
      if (this.editing || !this.nv.drawBitmap) return;
      this.nv.opts.drawFillOverwrites = true;
      this.editing = true;
      this.history = [encodeRuns(this.nv.drawBitmap)];
      this.position = 0;
      this.savedAt = 0;
      this.setTool(this.tool || "paint", this.organ || this.table.organs[0].id);
      this.nv.setDrawingEnabled(true);
      this.canvas.dataset.editing = "1";
      this.onEdit();
    }

    stopEditing() {
      if (!this.editing) return;
      this.nv.setDrawingEnabled(false);
      this.editing = false;
      this.history = [];
      this.position = -1;
      this.canvas.dataset.editing = "";
      this.onEdit();
    }

    // tool: paint, fill (the outline drawn is filled) or erase; organ: the label painted.
    setTool(tool, organ) {
      this.tool = tool;
      if (organ !== undefined) this.organ = organ;
      this.nv.setPenValue(tool === "erase" ? 0 : this.organ, TOOLS[tool]);
    }

    setBrush(size) {
      this.nv.opts.penSize = Math.max(1, Math.min(31, Math.round(size)));
      return this.nv.opts.penSize;
    }

    // After a stroke: the drawing is a new step of the history (the steps undone are dropped).
    remember() {
      this.history = this.history.slice(0, this.position + 1);
      this.history.push(encodeRuns(this.nv.drawBitmap));
      if (this.history.length > HISTORY + 1) {
        this.history.shift();
        if (this.savedAt !== null) this.savedAt = this.savedAt > 0 ? this.savedAt - 1 : null; // dropped
      }
      this.position = this.history.length - 1;
      this.onEdit();
    }

    canUndo() {
      return this.editing && this.position > 0;
    }

    canRedo() {
      return this.editing && this.position < this.history.length - 1;
    }

    undo() {
      if (this.canUndo()) this.restore(this.position - 1);
    }

    redo() {
      if (this.canRedo()) this.restore(this.position + 1);
    }

    restore(position) {
      this.position = position;
      this.nv.drawBitmap = decodeRuns(this.history[position]);
      this.nv.refreshDrawing(true);
      this.onEdit();
    }

    // Whether the drawing differs from the one last saved (or loaded).
    changed() {
      return this.editing && this.position !== this.savedAt;
    }

    // The drawing as it is now was saved.
    markSaved() {
      this.savedAt = this.position;
      this.onEdit();
    }

    // The drawing as a gzip-ed NIfTI file in the CT's voxel order and header (NiiVue's own save).
    async drawingBytes() {
      const nifti = await this.nv.saveImage({ filename: "", isSaveDrawing: true, volumeByIndex: 0 });
      if (!nifti) throw new Error("no drawing to save");
      const gzip = new Blob([nifti]).stream().pipeThrough(new CompressionStream("gzip"));
      return new Response(gzip).arrayBuffer();
    }

    // Redraw the label layer alone with the colour table (the CT's texture stays as it is).
    // The colour table alone is remade (a row of NiiVue's colour-map texture): no volume texture.
    async applyColours() {
      this.nv.drawLut = niivue.cmapper.makeDrawLut(this.colourTable());
      this.nv.refreshColormaps();
      this.nv.drawScene();
      this.canvas.dataset.hidden = [...this.hidden].sort((a, b) => a - b).join(",");
    }

    setView(name) {
      this.view = name;
      for (const button of this.buttons) button.setAttribute("aria-pressed", String(button.value === name));
      this.nv.setSliceType(VIEWS[name].type);
      this.showSlice();
    }

    // The overlay's opacity is a uniform of NiiVue's slice shader: a redraw, no texture remade.
    setOpacity(value) {
      this.opacity = value;
      this.slider.value = String(value);
      this.nv.setDrawOpacity(value);
    }

    // Show or hide one organ; returns whether it is now shown.
    toggleOrgan(id) {
      if (this.hidden.has(id)) this.hidden.delete(id);
      else this.hidden.add(id);
      this.coloured = this.nv.drawBitmap ? this.applyColours() : Promise.resolve();
      return !this.hidden.has(id);
    }

    // Rows with a data-label attribute toggle their organ when clicked (or Enter / Space).
    bindOrganTable(table) {
      const toggle = (row) => {
        const shown = this.toggleOrgan(Number(row.dataset.label));
        row.classList.toggle("organ-hidden", !shown);
        row.setAttribute("aria-pressed", String(shown));
      };
      table.addEventListener("click", (event) => {
        const row = event.target.closest("tr[data-label]");
        if (row) toggle(row);
      });
      table.addEventListener("keydown", (event) => {
        const row = event.target.closest("tr[data-label]");
        if (row && (event.key === "Enter" || event.key === " ")) {
          event.preventDefault();
          toggle(row);
        }
      });
    }

    // The slice shown, along the view's axis of the CT's display grid: {index, count} (1-based).
    slice() {
      const back = this.nv.volumes[0];
      if (!back) return null;
      const axis = VIEWS[this.view].axis;
      const count = back.dimsRAS[axis + 1];
      const index = Math.min(count, Math.max(1, Math.round(this.nv.scene.crosshairPos[axis] * count + 0.5)));
      return { index, count };
    }

    step(delta) {
      const move = [0, 0, 0];
      move[VIEWS[this.view].axis] = delta;
      this.centreCrosshair(); // no draw: the move draws
      this.nv.moveCrosshairInVox(...move);
      this.showSlice();
    }

    // The crosshair on the centre of its voxel along every axis: a slice drawn between two voxels
    // (NiiVue starts at the middle of the volume, a voxel boundary when the count is even) blends
    // them, and a label on one of the two would show faded, half there.
    centreCrosshair() {
      const back = this.nv.volumes[0];
      if (!back) return;
      const position = this.nv.scene.crosshairPos;
      this.nv.scene.crosshairPos = [0, 1, 2].map((axis) => {
        const count = back.dimsRAS[axis + 1];
        return (Math.min(count - 1, Math.max(0, Math.floor(position[axis] * count))) + 0.5) / count;
      });
    }

    showSlice() {
      const where = this.slice();
      this.readout.textContent = where ? `${VIEWS[this.view].label} slice ${where.index} / ${where.count}` : "";
      this.canvas.dataset.slice = where ? String(where.index) : "";
    }

    onKey(event) {
      if (document.activeElement !== this.canvas || !(event.key in STEP_KEYS)) return;
      event.preventDefault();
      event.stopImmediatePropagation(); // NiiVue's own arrow keys move the crosshair within the plane
      this.step(STEP_KEYS[event.key]);
    }
  }

  // A row of an organ table that bindOrganTable() toggles: a colour swatch and the name, then cells.
  // organ: {id, name, color} of the /labels table.
  SegViewer.organRow = (organ, cells) => {
    const row = element("tr", { tabIndex: 0, title: "click to hide or show this organ in the viewer" });
    row.dataset.label = String(organ.id);
    row.setAttribute("aria-pressed", "true");
    const swatch = element("span", { className: "swatch" });
    swatch.style.backgroundColor = `rgb(${organ.color.join(",")})`;
    row.append(element("td", {}, [swatch, organ.name.replaceAll("_", " ")]));
    row.append(...cells.map((text) => element("td", { textContent: text })));
    return row;
  };

  // The base64 of a file in a JSON answer as the ArrayBuffer of its bytes.
  SegViewer.bytesOf = (base64) => Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)).buffer;

  window.SegViewer = SegViewer;
})();
