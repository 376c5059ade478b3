"""A preview picture of a segmentation: three slices through the organs with coloured overlays.

Axial, coronal and sagittal slices through the centre of the organs' voxels, in the radiological
convention (the patient's right on the image's left; anterior up on the axial slice, on the left
of the sagittal one; superior up), scaled to millimetres, at an abdominal window (W 400, L 40),
each organ drawn in its colour (:data:`segcore.labels.ORGAN_COLORS`): its area blended at
:data:`FILL_ALPHA`, its outline opaque. A legend lists the organs with their volumes and, in
red, what the reader must know (the quality verdict, the model's notice)::

    preview = render_preview(image, labels, geometry, note="QC review: ...")
    Path("case_preview.png").write_bytes(preview.png)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segcore.labels import DISPLAY_WINDOW, ORGAN_COLORS, ORGANS
from segcore.volumes.geometry import Geometry, to_canonical

FILL_ALPHA = 0.4
"""Weight of an organ's colour over the grey CT inside the organ (its outline is opaque)."""
PANEL_HEIGHT = 360
"""Height of the slices' band in pixels (the scan's longest side); the picture is taller only
when a long legend needs it."""
GAP = 4
LEGEND_WIDTH = 300
NOTE_COLOR = (255, 90, 90)


def reader_note(verdict: str, reasons: list[str], notice: str | None) -> str:
    """What the legend must say: the quality verdict and its reasons unless ``ok``, and the model's notice."""
    parts = [f"QC {verdict}: {'; '.join(reasons)}"] if verdict != "ok" else []
    return "; ".join([*parts, *([notice] if notice else [])])


@dataclass(frozen=True)
class Preview:
    """The PNG and where each slice lies in it: name -> ``(left, top, width, height)`` pixels."""

    png: bytes
    panels: dict[str, tuple[int, int, int, int]]


def _grey(plane: np.ndarray) -> np.ndarray:
    low, high = DISPLAY_WINDOW
    scaled = (np.clip(plane.astype(np.float32), low, high) - low) * (255.0 / (high - low))
    return np.repeat(scaled[..., None], 3, axis=2)


def _overlay(plane: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 of a HU plane with its labels drawn: fill blended, outline opaque."""
    rgb = _grey(plane)
    palette = np.zeros((256, 3), np.float32)
    for organ, color in ORGAN_COLORS.items():
        palette[organ] = color
    inside = labels > 0
    rgb[inside] = (1 - FILL_ALPHA) * rgb[inside] + FILL_ALPHA * palette[labels[inside]]
    edge = np.zeros_like(inside)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge &= inside
    rgb[edge] = palette[labels[edge]]
    return np.round(rgb).astype(np.uint8)


def _panel(plane: np.ndarray, labels: np.ndarray, mm_per_row: float, mm_per_column: float, px_per_mm: float):
    """One slice as a picture at ``px_per_mm`` (the same scale for the three slices)."""
    picture = Image.fromarray(_overlay(plane, labels))
    size = (
        max(1, round(plane.shape[1] * mm_per_column * px_per_mm)),
        max(1, round(plane.shape[0] * mm_per_row * px_per_mm)),
    )
    return picture.resize(size, Image.Resampling.NEAREST)


def render_preview(
    image: np.ndarray, labels: np.ndarray, geometry: Geometry, *, volumes_ml: dict[str, float] | None = None,
    note: str = "",
) -> Preview:  # fmt: skip
    """The preview of ``labels`` on ``image`` (both ``(z, y, x)`` on ``geometry``'s grid, in the
    file's array order): three slices through the organs' centre (the volume's centre when the
    mask is empty), a legend with ``volumes_ml`` per organ name (counted here when None), ``note``."""
    canonical_image, reorientation = to_canonical(image, geometry)
    canonical_labels = reorientation.apply(labels)  # views: nothing of the volume is copied
    spacing_z, spacing_y, spacing_x = reorientation.canonical.spacing_zyx
    if volumes_ml is None:
        counts = np.bincount(labels.reshape(-1), minlength=256)
        voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
        volumes_ml = {name: float(counts[organ]) * voxel_ml for organ, name in ORGANS.items() if counts[organ]}
    centre = _organ_centre(canonical_labels)
    z, y, x = centre
    extent_mm = max(n * s for n, s in zip(canonical_image.shape, (spacing_z, spacing_y, spacing_x), strict=True))
    scale = PANEL_HEIGHT / extent_mm  # the longest side of the scan fills a panel's height
    panels = {
        # axial: rows anterior -> posterior, columns the patient's right -> left
        "axial": _panel(canonical_image[z], canonical_labels[z], spacing_y, spacing_x, scale),
        # coronal: rows superior -> inferior, columns right -> left
        "coronal": _panel(canonical_image[::-1, y], canonical_labels[::-1, y], spacing_z, spacing_x, scale),
        # sagittal: rows superior -> inferior, columns anterior -> posterior
        "sagittal": _panel(canonical_image[::-1, :, x], canonical_labels[::-1, :, x], spacing_z, spacing_y, scale),
    }
    legend = _legend(volumes_ml, note)
    width = sum(panel.width + GAP for panel in panels.values()) + LEGEND_WIDTH
    canvas = Image.new("RGB", (width, max(PANEL_HEIGHT, legend.height)), (0, 0, 0))
    boxes, left = {}, 0
    for name, panel in panels.items():
        top = (PANEL_HEIGHT - panel.height) // 2
        canvas.paste(panel, (left, top))
        boxes[name] = (left, top, panel.width, panel.height)
        left += panel.width + GAP
    canvas.paste(legend, (left, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=1)
    return Preview(buffer.getvalue(), boxes)


CENTRE_STEP = 4
"""The organs' centre is taken on every 4th voxel along each axis (a preview needs no more)."""


def _organ_centre(labels: np.ndarray) -> tuple[int, int, int]:
    """The mean position of the organ voxels, on every :data:`CENTRE_STEP`-th voxel (the volume's
    centre when there are none), from per-axis projections."""
    inside = labels[::CENTRE_STEP, ::CENTRE_STEP, ::CENTRE_STEP] > 0
    total = int(np.count_nonzero(inside))
    if total == 0:
        return tuple(size // 2 for size in labels.shape)
    centre = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        profile = np.count_nonzero(inside, axis=others)
        mean = float(np.dot(profile, np.arange(inside.shape[axis]))) / total
        centre.append(min(labels.shape[axis] - 1, int(round(mean * CENTRE_STEP))))
    return tuple(centre)


def _legend(volumes_ml: dict[str, float], note: str) -> Image.Image:
    """The organs with their colours and volumes, then ``note`` in red, wrapped to :data:`LEGEND_WIDTH`."""
    font = ImageFont.load_default(size=14)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines, line = [], ""
    for word in note.split():
        if line and measure.textlength(f"{line} {word}", font=font) > LEGEND_WIDTH - 20:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines += [line] if line else []
    rows = [(organ, name) for organ, name in ORGANS.items() if name in volumes_ml]
    height = 10 + 20 * max(1, len(rows)) + 10 + 18 * len(lines) + 10
    legend = Image.new("RGB", (LEGEND_WIDTH, height), (0, 0, 0))
    draw, top = ImageDraw.Draw(legend), 10
    for organ, name in rows:
        draw.rectangle((10, top + 2, 24, top + 16), fill=ORGAN_COLORS[organ])
        draw.text((32, top), f"{name.replace('_', ' ')}  {volumes_ml[name]:.1f} mL", fill=(230, 230, 230), font=font)
        top += 20
    if not rows:
        draw.text((10, top), "no organ found", fill=(230, 230, 230), font=font)
        top += 20
    for text in lines:
        draw.text((10, top + 10), text, fill=NOTE_COLOR, font=font)
        top += 18
    return legend
