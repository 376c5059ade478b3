"""The random patient: body habitus, trunk outline, spine and diaphragm, in the patient frame.

Patient frame (mm, LPS axes): ``x`` to the patient's left, ``y`` posterior, ``z`` superior;
the origin is the centre of the abdominal cavity at the level of the first lumbar vertebra
(L1). The scanner places this frame somewhere in its own coordinates (see
:mod:`segcore.phantom.scanner`). All anatomy is defined here, in physical units, so it does
not depend on the grid or on how the scan is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Patient:
    """Scalar anatomy of one patient (mm unless stated).

    Attributes:
        scale: overall size factor (1 is an average adult).
        cavity_a, cavity_b: half width (x) and half depth (y) of the abdominal cavity at L1.
        cavity_power: super-ellipse exponent of the cavity outline (2 is an ellipse, more is boxier).
        outline_harmonics: ``(k, 3)`` rows of (order, relative amplitude, phase) deforming the outline.
        wall_mm: thickness of the muscular wall; paraspinal_mm: extra thickness behind the spine.
        fat_mm: subcutaneous fat at the flanks; fat_anterior: extra factor at the belly.
        skin_mm: skin thickness.
        z_waves: ``(k, 3)`` rows of (relative amplitude, wavelength mm, phase): how the trunk
            widens and narrows along z.
        pitch: height of one vertebra plus its disc.
        spine_y: y of the L1 vertebral body centre; spine_rx, spine_ry: its half width and depth.
        dome_right, dome_left: z of the top of each diaphragm dome.
        dome_depth: how far the diaphragm falls from a dome top to the cavity wall.
        lordosis_mm: how far lumbar lordosis brings L3-L4 forward (per unit of ``scale``).
        fat_posterior: subcutaneous fat on the back, as a share of ``fat_mm``.
    """

    scale: float
    cavity_a: float
    cavity_b: float
    cavity_power: float
    outline_harmonics: np.ndarray
    wall_mm: float
    paraspinal_mm: float
    fat_mm: float
    fat_anterior: float
    skin_mm: float
    z_waves: np.ndarray
    pitch: float
    spine_y: float
    spine_rx: float
    spine_ry: float
    dome_right: float
    dome_left: float
    dome_depth: float
    lordosis_mm: float = 12.0
    fat_posterior: float = 0.55

    def cavity_radius(self, theta: np.ndarray) -> np.ndarray:
        """Radius (mm) of the cavity outline at L1 at polar angle ``theta`` (from +x towards +y)."""
        cos, sin = np.abs(np.cos(theta)), np.abs(np.sin(theta))
        n = self.cavity_power
        radius = ((cos / self.cavity_a) ** n + (sin / self.cavity_b) ** n) ** (-1.0 / n)
        for order, amplitude, phase in self.outline_harmonics:
            radius = radius * (1.0 + amplitude * np.cos(order * theta + phase))
        return radius

    def wall_thickness(self, theta: np.ndarray) -> np.ndarray:
        """Muscle wall thickness (mm) at angle ``theta``; the paraspinal muscles bulge behind the spine."""
        from_back = _angle_from(theta, np.pi / 2)
        return self.wall_mm + self.paraspinal_mm * np.exp(-0.5 * (from_back / 0.28) ** 2)

    def fat_thickness(self, theta: np.ndarray) -> np.ndarray:
        """Subcutaneous fat thickness (mm) at angle ``theta``: thickest at the belly, thinnest on the back."""
        from_front = _angle_from(theta, -np.pi / 2)
        belly = np.exp(-0.5 * (from_front / 0.9) ** 2)
        return self.fat_mm * (self.fat_posterior + self.fat_anterior * belly)

    def outer_radius(self, theta: np.ndarray) -> np.ndarray:
        """Skin surface radius (mm) at L1."""
        return self.cavity_radius(theta) + self.wall_thickness(theta) + self.fat_thickness(theta) + self.skin_mm

    def z_scale(self, z: np.ndarray) -> np.ndarray:
        """Factor by which the trunk cross-section at height ``z`` (mm) is larger than at L1."""
        z = np.asarray(z, dtype=np.float64)
        scale = np.ones_like(z)
        for amplitude, wavelength, phase in self.z_waves:
            scale += amplitude * (np.sin(2 * np.pi * z / wavelength + phase) - np.sin(phase))
        return scale

    def spine_y_at(self, z: np.ndarray) -> np.ndarray:
        """y (mm) of the vertebral body centre at height ``z``: lumbar lordosis brings L3-L4 forward."""
        z = np.asarray(z, dtype=np.float64)
        lordosis = self.lordosis_mm * self.scale * np.exp(-0.5 * ((z + 2.5 * self.pitch) / (2.5 * self.pitch)) ** 2)
        # Below L5 the sacrum sweeps backwards.
        sacrum = np.clip(-(z + 5.0 * self.pitch), 0.0, None) * 0.6
        return self.spine_y - lordosis + self.lordosis_mm * self.scale * np.exp(-0.5) + sacrum

    def diaphragm(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height (mm) of the diaphragm above point ``(x, y)``: two domes, falling towards the wall.

        Behind the domes the lungs reach down only in a narrow band along the back wall (the
        posterior recesses), so the adrenals and the upper kidney poles stay below it.
        """
        posterior = np.clip(y, 0.0, None) / (0.95 * self.cavity_b)
        anterior = np.clip(y, None, 0.0) / (1.5 * self.cavity_b)
        depth_y = posterior**6 + anterior**2
        domes = []
        for top, side in ((self.dome_right, -1.0), (self.dome_left, 1.0)):
            dx = (x - side * 0.45 * self.cavity_a) / (0.75 * self.cavity_a)
            domes.append(top - self.dome_depth * (dx * dx + depth_y))
        return np.maximum(domes[0], domes[1])

    @property
    def trunk_extent(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, y_min, y_max)`` of the skin surface (mm) where the trunk is widest."""
        theta = np.linspace(-np.pi, np.pi, 721)
        radius = self.outer_radius(theta) * self.max_z_scale
        x, y = radius * np.cos(theta), radius * np.sin(theta)
        return float(x.min()), float(x.max()), float(y.min()), float(y.max())

    @property
    def max_z_scale(self) -> float:
        return 1.0 + 2.0 * float(np.abs(self.z_waves[:, 0]).sum())


def _angle_from(theta: np.ndarray, reference: float) -> np.ndarray:
    """Absolute angle (rad, 0..pi) between ``theta`` and ``reference``."""
    return np.abs(np.angle(np.exp(1j * (theta - reference))))


def sample_patient(rng: np.random.Generator) -> Patient:
    """A random adult: size, habitus and outline drawn from plausible ranges."""
    scale = rng.uniform(0.9, 1.1)
    fat = rng.uniform(6.0, 45.0) * rng.choice([1.0, 1.4], p=[0.8, 0.2])
    pitch = 30.0 * scale
    cavity_b = scale * rng.uniform(88.0, 102.0)
    spine_ry = scale * rng.uniform(15.0, 18.0)
    dome_right = 3.6 * pitch + rng.normal(0.0, 8.0)
    return Patient(
        scale=scale,
        cavity_a=scale * rng.uniform(128.0, 148.0),
        cavity_b=cavity_b,
        cavity_power=rng.uniform(2.1, 2.6),
        outline_harmonics=np.column_stack(
            [np.array([2.0, 3.0, 4.0]), rng.uniform(0.0, 0.03, 3), rng.uniform(0.0, 2 * np.pi, 3)]
        ),
        wall_mm=scale * rng.uniform(9.0, 16.0),
        paraspinal_mm=scale * rng.uniform(35.0, 48.0),
        fat_mm=fat,
        fat_anterior=rng.uniform(0.6, 1.4),
        skin_mm=2.0,
        z_waves=np.column_stack(
            [rng.uniform(0.0, 0.025, 2), rng.uniform(250.0, 600.0, 2), rng.uniform(0.0, 2 * np.pi, 2)]
        ),
        pitch=pitch,
        # The vertebral bodies bulge into the back of the cavity.
        spine_y=cavity_b - spine_ry - 6.0 * scale,
        spine_rx=scale * rng.uniform(20.0, 24.0),
        spine_ry=spine_ry,
        dome_right=dome_right,
        dome_left=dome_right - rng.uniform(5.0, 25.0),
        dome_depth=rng.uniform(80.0, 100.0) * scale,
    )


SPINE_SETBACK_MM = (0.0, 22.0)
"""With ``detailed``: how far (mm, per unit of ``scale``) the back of the L1 vertebral body lies in
front of the cavity's back wall (the average anatomy: 6). The lumbar bodies stand into the
abdominal cavity between the psoas muscles by an amount that varies with build and lordosis
(Gray's Anatomy, posterior abdominal wall)."""


def detailed_habitus(patient: Patient, rng: np.random.Generator) -> Patient:
    """The patient's back drawn on its own: the spine's depth in the cavity, the paraspinal muscle
    mass, lumbar lordosis and the fat on the back vary independently of the trunk's outline, so no
    organ or vessel keeps a fixed fraction of the body's depth. Body habitus (sarcopenia, obesity)
    changes muscle and fat by tens of millimetres at the same skeleton (Gray's Anatomy; CT body
    composition studies of the L3 level)."""
    k = patient.scale
    setback = k * rng.uniform(*SPINE_SETBACK_MM)
    return replace(
        patient,
        spine_y=patient.cavity_b - patient.spine_ry - setback,
        paraspinal_mm=k * rng.uniform(22.0, 62.0),
        lordosis_mm=rng.uniform(3.0, 24.0),
        fat_posterior=rng.uniform(0.25, 0.9),
    )


def spine_setback(patient: Patient) -> float:
    """How far (mm) the back of the L1 vertebral body lies in front of the cavity's back wall."""
    return patient.cavity_b - (patient.spine_y + patient.spine_ry)
