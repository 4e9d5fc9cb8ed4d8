"""Chest-radiograph-like images: a sampled anatomy, findings with visual signatures, and a fast numpy renderer.

Geometry is in normalised image coordinates: ``x`` and ``y`` in [-1, 1], ``y`` pointing down, ``x < 0`` the image
left, which on a PA radiograph is the **patient's right** (so ``side="right"`` draws on the image left). Brightness
is attenuation (dense = bright): air black, soft tissue grey, bone and fluid brighter.

The image is built from layers (:func:`render`):

- body outline (soft tissue) with a superior mediastinum, spine, hila;
- two lung fields (boxy superellipses cut below by the diaphragm domes, whose lateral ends make sharp
  costophrenic angles), dark, with a vessel texture that is dense at the hila and fades to the periphery;
- posterior ribs with bright cortical margins; the heart shadow (an ellipse whose width sets the
  cardiothoracic ratio);
- findings (:data:`FINDINGS`), drawn as what a radiologist would see:

  ============== ===================================================================================================
  cardiomegaly   heart width / inner thoracic width (cardiothoracic ratio) 0.55-0.68, normal 0.38-0.48
  effusion       fluid filling the lung base from the costophrenic angle up, higher laterally (meniscus); the
                 angle is blunted and the dome silhouetted
  pneumothorax   a thin bright visceral pleural line parallel to the apex and lateral chest wall, with no vessel
                 markings and darker air beyond it
  pneumonia      a focal, lobulated airspace opacity in one zone of one lung, sometimes with dark air bronchograms
  edema          bilateral hazy perihilar ("bat-wing") opacity with blurred, indistinct vessels
  atelectasis    a thin plate-like (discoid) opacity at a lung base plus volume loss: that hemidiaphragm raised
  fracture       a rib cortical break: a gap across one lateral rib with the lateral fragment displaced
  ============== ===================================================================================================

- devices (ECG leads, a central venous catheter) that the reports mention but the labels ignore;
- exposure (gain, offset, gamma), patient position (shift, scale, rotation) and quantum noise.

:func:`render` is deterministic in ``(anatomy, findings, devices, seed)``, so a test can render the same study with
and without a finding and measure the difference.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np

from convirt.data.chexpert8x200 import CHEXPERT_8X200_CATEGORIES

# The CheXpert 8x200 categories (paper Appendix D), in our column order.
CATEGORIES = CHEXPERT_8X200_CATEGORIES
FINDINGS = CATEGORIES[:-1]
NORMAL_CTR = (0.38, 0.48)
CARDIOMEGALY_CTR = (0.55, 0.68)


@dataclass
class Finding:
    """One finding: its category, the patient side (``right``/``left``; edema and cardiomegaly: ``both``), a
    severity in [0, 1], and category-specific details (zone, rib number, air bronchograms, ...)."""

    category: str
    side: str = "both"
    severity: float = 0.5
    zone: str = ""  # pneumonia: upper | middle | lower
    rib: int = 0  # fracture: posterior rib number (4..9)
    position: float = 0.0  # fracture: lateral position in [0, 1]; pneumonia: medial-lateral offset
    bronchograms: bool = False  # pneumonia

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in ("", 0, 0.0, False) or k == "severity"}


@dataclass
class Devices:
    ecg_leads: int = 0  # number of ECG electrodes drawn
    central_line: str = ""  # "" | right | left (internal jugular catheter side)


@dataclass
class Anatomy:
    """Patient geometry and exposure (sampled per study by :func:`sample_anatomy`)."""

    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0
    rotation: float = 0.0  # degrees
    body_width: float = 0.86  # half-width of the soft-tissue outline
    lung_center: float = 0.37  # |x| of each lung centre
    lung_half_width: float = 0.29
    lung_top: float = -0.80
    dome_right: float = 0.40  # y of the right dome apex (the right dome sits higher)
    dome_left: float = 0.46
    dome_depth: float = 0.20  # how far the dome falls from its apex to the costophrenic angle
    ctr: float = 0.44  # cardiothoracic ratio of a normal heart
    heart_center_x: float = 0.07
    heart_center_y: float = 0.30
    heart_half_height: float = 0.22
    rib_spacing: float = 0.145
    rib_phase: float = 0.0
    rib_curve: float = 0.55
    texture: int = 0  # which vessel texture of the bank
    texture_shift: tuple[int, int] = (0, 0)
    gain: float = 1.0
    offset: float = 0.0
    gamma: float = 1.0
    noise: float = 0.02

    @property
    def thorax_inner_width(self) -> float:
        """Distance between the lateral lung edges (the denominator of the cardiothoracic ratio)."""
        return 2.0 * (self.lung_center + self.lung_half_width)


def sample_anatomy(rng: np.random.Generator, textures: int = 8) -> Anatomy:
    return Anatomy(
        shift_x=float(rng.uniform(-0.05, 0.05)),
        shift_y=float(rng.uniform(-0.05, 0.05)),
        scale=float(rng.uniform(0.93, 1.04)),
        rotation=float(rng.uniform(-4, 4)),
        body_width=float(rng.uniform(0.82, 0.9)),
        lung_center=float(rng.uniform(0.35, 0.39)),
        lung_half_width=float(rng.uniform(0.27, 0.31)),
        lung_top=float(rng.uniform(-0.84, -0.76)),
        dome_right=float(rng.uniform(0.36, 0.44)),
        dome_left=float(rng.uniform(0.43, 0.5)),
        dome_depth=float(rng.uniform(0.17, 0.23)),
        ctr=float(rng.uniform(*NORMAL_CTR)),
        heart_center_x=float(rng.uniform(0.04, 0.1)),
        heart_center_y=float(rng.uniform(0.3, 0.35)),
        heart_half_height=float(rng.uniform(0.23, 0.28)),
        rib_spacing=float(rng.uniform(0.135, 0.155)),
        rib_phase=float(rng.uniform(0, 1)),
        rib_curve=float(rng.uniform(0.8, 1.1)),
        texture=int(rng.integers(textures)),
        texture_shift=(int(rng.integers(0, 1 << 16)), int(rng.integers(0, 1 << 16))),
        gain=float(rng.uniform(0.85, 1.15)),
        offset=float(rng.uniform(-0.05, 0.05)),
        gamma=float(rng.uniform(0.8, 1.25)),
        noise=float(rng.uniform(0.012, 0.03)),
    )


# ---------------------------------------------------------------------------------------------------------------
# Texture banks (made once per size and process)


class Banks:
    """Precomputed vessel textures and noise fields for one image size (cached by :func:`banks`)."""

    def __init__(self, size: int, count: int = 8, seed: int = 1234) -> None:
        rng = np.random.default_rng(seed)
        self.size = size
        fy = np.fft.fftfreq(size)[:, None]
        fx = np.fft.fftfreq(size)[None, :]
        radius = np.sqrt(fx * fx + fy * fy) * size
        textures = []
        for _ in range(count):
            ridges = np.zeros((size, size), np.float32)
            for band, weight in ((7.0, 1.0), (16.0, 0.6)):
                noise = rng.standard_normal((size, size))
                filt = np.exp(-(((radius - band) / (band * 0.45)) ** 2))
                field_ = np.real(np.fft.ifft2(np.fft.fft2(noise) * filt))
                field_ /= field_.std() + 1e-9
                ridges += weight * np.exp(-((field_ / 0.35) ** 2))  # thin bright ridges along the zero crossings
            ridges -= ridges.mean()
            textures.append((ridges / (ridges.std() + 1e-9)).astype(np.float32))
        self.textures = np.stack([np.tile(t, (2, 2)) for t in textures])  # tiled: a shifted view is a slice
        self.noise = rng.standard_normal((2 * size, 2 * size)).astype(np.float32)
        axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
        self.grid_y, self.grid_x = np.meshgrid(axis, axis, indexing="ij")


_BANKS: dict[int, Banks] = {}


def banks(size: int) -> Banks:
    if size not in _BANKS:
        _BANKS[size] = Banks(size)
    return _BANKS[size]


# ---------------------------------------------------------------------------------------------------------------
# Drawing helpers


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _hypot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(a * a + b * b)  # np.hypot is ~20x slower on float32 arrays


def _side_sign(side: str) -> float:
    """Image-x sign of a patient side: the patient's right is on the image left (x < 0)."""
    return -1.0 if side == "right" else 1.0


@dataclass
class Geometry:
    """Per-image coordinate grids and the normal-anatomy masks the findings draw on."""

    x: np.ndarray
    y: np.ndarray
    lung: dict[str, np.ndarray] = field(default_factory=dict)  # side -> soft mask
    lung_level: dict[str, np.ndarray] = field(default_factory=dict)  # side -> superellipse value (1 at the edge)
    dome: dict[str, np.ndarray] = field(default_factory=dict)  # side -> dome y per pixel column


def dome_y(anatomy: Anatomy, side: str, x: np.ndarray | float, raise_by: float = 0.0) -> np.ndarray | float:
    """The diaphragm dome's y at image x: apex above the lung centre, falling to the costophrenic angle."""
    s = _side_sign(side)
    apex = (anatomy.dome_right if side == "right" else anatomy.dome_left) - raise_by
    rel = (np.asarray(x) - s * anatomy.lung_center) / anatomy.lung_half_width
    lateral = np.clip(rel * s, 0.0, None)  # falls mostly towards the lateral side
    medial = np.clip(-rel * s, 0.0, None)
    return apex + anatomy.dome_depth * lateral**2 + 0.35 * anatomy.dome_depth * medial**2


def costophrenic_angle(anatomy: Anatomy, side: str, raise_by: float = 0.0) -> tuple[float, float]:
    """(x, y) of the costophrenic angle in *anatomical* coordinates (before position and scale)."""
    s = _side_sign(side)
    x = s * (anatomy.lung_center + 0.9 * anatomy.lung_half_width)
    return x, float(dome_y(anatomy, side, x, raise_by))


def fracture_x(anatomy: Anatomy, fracture: Finding) -> float:
    """|x| of a rib fracture: over the lateral half of the lung field."""
    return anatomy.lung_center + (0.1 + 0.7 * fracture.position) * anatomy.lung_half_width


def rib_y(anatomy: Anatomy, rib: int, x: float) -> float:
    """y of the axis of posterior rib ``rib`` at anatomical x (the inverse of the renderer's rib coordinate)."""
    ax = abs(x)
    return (rib + 0.5 - anatomy.rib_phase) * anatomy.rib_spacing - 1.0 + anatomy.rib_curve * (ax - 0.2) ** 2 - 0.15 * ax


def to_image_coords(anatomy: Anatomy, x: float, y: float) -> tuple[float, float]:
    """Map anatomical (x, y) to normalised image coordinates (the inverse of the renderer's position transform)."""
    angle = math.radians(anatomy.rotation)
    c, s = math.cos(angle), math.sin(angle)
    xs, ys = x * anatomy.scale, y * anatomy.scale
    return c * xs - s * ys + anatomy.shift_x, s * xs + c * ys + anatomy.shift_y


def to_pixel(anatomy: Anatomy, x: float, y: float, size: int) -> tuple[int, int]:
    """(row, column) of anatomical (x, y) in a ``size`` x ``size`` image."""
    xi, yi = to_image_coords(anatomy, x, y)
    return round((yi + 1) / 2 * size - 0.5), round((xi + 1) / 2 * size - 0.5)


def _coordinates(anatomy: Anatomy, b: Banks) -> tuple[np.ndarray, np.ndarray]:
    angle = math.radians(anatomy.rotation)
    c, s = math.cos(angle), math.sin(angle)
    gx = b.grid_x - anatomy.shift_x
    gy = b.grid_y - anatomy.shift_y
    x = (c * gx + s * gy) / anatomy.scale
    y = (-s * gx + c * gy) / anatomy.scale
    return x, y


def _segment_distance(x, y, x0, y0, x1, y1):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    return _hypot(x - (x0 + t * dx), y - (y0 + t * dy))


# ---------------------------------------------------------------------------------------------------------------
# The renderer


def render(
    anatomy: Anatomy,
    findings: list[Finding] | tuple[Finding, ...] = (),
    devices: Devices | None = None,
    size: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Render one frontal radiograph as a (size, size) uint8 array."""
    b = banks(size)
    x, y = _coordinates(anatomy, b)
    px = 2.0 / size  # one pixel in normalised units
    by_category = {f.category: f for f in findings}
    ax = np.abs(x)

    # volume loss (atelectasis) raises the hemidiaphragm on its side and pulls the heart towards it
    raise_by = {"right": 0.0, "left": 0.0}
    heart_x = anatomy.heart_center_x
    atelectasis = by_category.get("Atelectasis")
    if atelectasis is not None:
        raise_by[atelectasis.side] = 0.05 + 0.07 * atelectasis.severity
        heart_x += _side_sign(atelectasis.side) * (0.01 + 0.02 * atelectasis.severity)

    # body and lungs
    body = _sigmoid((anatomy.body_width - ax - 0.06 * (y + 0.2) ** 2) / (3 * px))
    lungs: dict[str, np.ndarray] = {}
    levels: dict[str, np.ndarray] = {}
    for side in ("right", "left"):
        s = _side_sign(side)
        cx = s * anatomy.lung_center
        cy = 0.5 * (anatomy.lung_top + 1.0)
        half_h = 0.5 * (1.0 - anatomy.lung_top)  # the superellipse reaches below the domes, which cut it
        qx = (x - cx) * (1.0 / anatomy.lung_half_width)
        qx = qx * qx
        qy = (y - cy) * (1.0 / half_h)
        qy = qy * qy
        level = qx * qx + qy * np.sqrt(qy)  # a boxy superellipse: |qx|^4 + |qy|^2.5
        levels[side] = level
        below_dome = dome_y(anatomy, side, x, raise_by[side]) - y
        lungs[side] = _sigmoid((1.0 - level) / 0.04) * _sigmoid(below_dome / (1.5 * px))
    lung = lungs["right"] + lungs["left"]

    # heart (ellipse) and mediastinum (vertical band above it)
    heart_half_width = anatomy.ctr * anatomy.thorax_inner_width / 2.0
    cardio = by_category.get("Cardiomegaly")
    if cardio is not None:
        ctr = CARDIOMEGALY_CTR[0] + (CARDIOMEGALY_CTR[1] - CARDIOMEGALY_CTR[0]) * cardio.severity
        heart_half_width = ctr * anatomy.thorax_inner_width / 2.0
        heart_x += 0.02 * cardio.severity  # an enlarged heart grows mostly to the patient's left
    heart_r = _hypot((x - heart_x) / heart_half_width, (y - anatomy.heart_center_y) / anatomy.heart_half_height)
    heart = _sigmoid((1.0 - heart_r) / 0.03) * (y > anatomy.heart_center_y - anatomy.heart_half_height * 1.2)
    mediastinum = _sigmoid((0.11 + 0.03 * (y + 1) - ax) / (2 * px)) * _sigmoid((anatomy.heart_center_y - y) / 0.05)
    solid = np.maximum(heart, mediastinum)
    air = lung * (1.0 - solid)

    # opacities inside the lungs (0 = aerated, 1 = fluid/soft-tissue density)
    clear = np.ones_like(x)
    vessel_gain = np.ones_like(x)
    ptx_zone = np.zeros_like(x)
    pleural_line = np.zeros_like(x)
    for finding in findings:
        cat = finding.category
        if cat == "Pleural Effusion":
            side = finding.side
            _, cpy = costophrenic_angle(anatomy, side, raise_by[side])
            height = 0.28 + 0.4 * finding.severity  # fluid height at the lateral wall
            s = _side_sign(side)
            lateral = np.clip((x - s * anatomy.lung_center) * s / anatomy.lung_half_width, -1.0, 1.2)
            rise = (lateral + 1.0) / 2.2
            surface = cpy - height * (0.25 + 0.75 * rise * rise)  # higher laterally: the meniscus
            fluid = _sigmoid((y - surface) / (2.5 * px)) * lungs[side]
            clear *= 1.0 - 0.92 * fluid
        elif cat == "Pneumonia":
            s = _side_sign(finding.side)
            zone_y = {"upper": -0.45, "middle": -0.05, "lower": 0.2}[finding.zone or "lower"]
            cx = s * (anatomy.lung_center + 0.35 * finding.position * anatomy.lung_half_width)
            radius = 0.08 + 0.1 * finding.severity
            blob = np.zeros_like(x)
            rng = np.random.default_rng([seed, 7])
            for _ in range(4):
                ox, oy = rng.normal(0, 0.45 * radius, 2)
                r = radius * rng.uniform(0.6, 1.0)
                q = ((x - cx - ox) ** 2 + (y - zone_y - oy) ** 2) / (r * r)
                blob = np.maximum(blob, np.exp(-q * np.sqrt(q)))
            density = (0.55 + 0.35 * finding.severity) * blob * lungs[finding.side]
            if finding.bronchograms:
                branches = np.full_like(x, 10.0)
                for _ in range(3):
                    angle = rng.uniform(-0.6, 0.6) + (math.pi / 2 if zone_y > 0 else -math.pi / 2)
                    x1 = cx + math.cos(angle) * radius * 1.2
                    y1 = zone_y + math.sin(angle) * radius * 1.2
                    branches = np.minimum(branches, _segment_distance(x, y, cx - s * 0.05, zone_y, x1, y1))
                density *= 1.0 - 0.55 * np.exp(-((branches / (1.3 * px)) ** 2)) * (blob > 0.4)
            clear *= 1.0 - density
        elif cat == "Edema":
            amount = 0.35 + 0.45 * finding.severity
            spread = 0.2 + 0.08 * finding.severity
            for side in ("right", "left"):
                hx = _side_sign(side) * 0.2
                haze = np.exp(-(((x - hx) / (spread * 1.1)) ** 2 + ((y - 0.0) / (spread * 1.5)) ** 2))
                clear *= 1.0 - amount * haze * lungs[side]
            vessel_gain *= 1.0 - 0.6 * finding.severity  # indistinct vessels
        elif cat == "Atelectasis":
            side = finding.side
            s = _side_sign(side)
            base_y = float(dome_y(anatomy, side, s * anatomy.lung_center, raise_by[side])) - 0.1
            half_len = 0.12 + 0.08 * finding.severity
            thick = 0.012 + 0.012 * finding.severity
            tilt = 0.15 * s
            x0, x1 = s * anatomy.lung_center - half_len, s * anatomy.lung_center + half_len
            dist = _segment_distance(x, y, x0, base_y - tilt * half_len * s, x1, base_y + tilt * half_len * s)
            plate = _sigmoid((thick - dist) / px) * lungs[side]
            clear *= 1.0 - 0.8 * plate
        elif cat == "Pneumothorax":
            side = finding.side
            s = _side_sign(side)
            depth = 0.14 + 0.24 * finding.severity  # how far the lung edge has fallen away from the wall
            inner = 1.0 - depth
            level = np.sqrt(np.sqrt(levels[side]))  # ~ normalised distance from the lung centre (1 at the edge)
            upper_lateral = _sigmoid(((x - s * anatomy.lung_center) * s + 0.3 * (0.2 - y)) / 0.06)
            zone = _sigmoid((level - inner) / 0.006) * lungs[side] * upper_lateral
            ptx_zone = np.maximum(ptx_zone, zone)
            # the visceral pleural line: a thin bright curve where the collapsed lung ends
            line = np.exp(-(((level - inner) / 0.006) ** 2)) * lungs[side] * upper_lateral
            pleural_line = np.maximum(pleural_line, line)
    opacity = 1.0 - clear

    # ribs with cortical margins (posterior ribs: rising near the spine, falling laterally)
    rib_coord = (y + 1.0 - anatomy.rib_curve * (ax - 0.2) ** 2 + 0.15 * ax) / anatomy.rib_spacing + anatomy.rib_phase
    fracture = by_category.get("Fracture")
    gap = None
    if fracture is not None:
        s = _side_sign(fracture.side)
        fx = fracture_x(anatomy, fracture)
        on_side = (x * s) > 0
        rib_index = np.floor(rib_coord)
        on_rib = on_side & (rib_index == fracture.rib) | on_side & (np.abs(rib_coord - fracture.rib - 0.5) < 0.9)
        displaced = _sigmoid((ax - fx) / px) * on_rib
        rib_coord = rib_coord + (0.35 + 0.25 * fracture.severity) * displaced
        gap = np.exp(-(((ax - fx) / (2.0 * px + 0.015 * fracture.severity)) ** 2)) * on_rib
    phase = rib_coord - np.floor(rib_coord)
    rib_half = 0.22
    d = np.abs(phase - 0.5) / rib_half  # 0 at the rib axis, 1 at its margins
    rib = _sigmoid((1.0 - d) / 0.08) * (0.55 + 0.45 * np.exp(-(((d - 0.9) / 0.12) ** 2)))
    rib_field = _sigmoid((anatomy.lung_top + 0.02 - y) * -1 / 0.02) * _sigmoid((anatomy.body_width - 0.05 - ax) / 0.03)
    rib = rib * rib_field * _sigmoid((ax - 0.1) / 0.02) * (y < 0.75)
    if gap is not None:
        rib = rib * (1.0 - gap)

    # vessels: dense at the hila, fading to the periphery; absent beyond a pneumothorax's pleural line
    t0, t1 = anatomy.texture_shift[0] % size, anatomy.texture_shift[1] % size
    tex = b.textures[anatomy.texture % len(b.textures), t0 : t0 + size, t1 : t1 + size]
    hilar = np.exp(-(((ax - 0.2) / 0.45) ** 2 + (y / 0.6) ** 2))
    vessels = np.clip(tex, 0.0, None) * (0.45 + 0.55 * hilar) * vessel_gain * (1.0 - ptx_zone)

    # compose (attenuation)
    image = 0.58 * body
    image += 0.1 * mediastinum * _sigmoid((0.035 - ax) / px)  # spine
    image -= 0.42 * air * (1.0 - opacity)
    image -= 0.08 * ptx_zone * air  # pure air beyond the pleural line
    image += 0.055 * vessels * air * (1.0 - opacity)
    image += 0.13 * rib * (0.5 + 0.5 * lung)
    image += 0.07 * heart
    image += 0.3 * pleural_line * air

    if devices is not None:
        image = _draw_devices(image, x, y, devices, size, seed)

    # exposure and noise
    levels_ = np.linspace(0.0, 1.0, 1024, dtype=np.float32)
    curve = levels_**anatomy.gamma * anatomy.gain + anatomy.offset  # exposure as a lookup table (pow is slow)
    image = curve[(np.clip(image, 0.0, 1.0) * 1023.0 + 0.5).astype(np.int32)]
    r0, c0 = (seed * 7919) % size, (seed * 104729) % size
    image += anatomy.noise * b.noise[r0 : r0 + size, c0 : c0 + size]
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _draw_devices(image: np.ndarray, x: np.ndarray, y: np.ndarray, devices: Devices, size: int, seed: int):
    rng = np.random.default_rng([seed, 11])
    px = 2.0 / size
    if devices.central_line:
        s = _side_sign(devices.central_line)
        points = [(s * 0.3, -1.0), (s * 0.16, -0.62), (s * 0.05, -0.35), (-0.02, rng.uniform(-0.2, -0.1))]
        dist = np.full_like(x, 10.0)
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            dist = np.minimum(dist, _segment_distance(x, y, x0, y0, x1, y1))
        image = image + 0.3 * np.exp(-((dist / (1.2 * px)) ** 2))
    for _ in range(devices.ecg_leads):
        cx, cy = rng.uniform(-0.75, 0.75), rng.uniform(-0.85, 0.6)
        ring = np.abs(_hypot(x - cx, y - cy) - 0.035)
        image = image + 0.35 * np.exp(-((ring / (1.3 * px)) ** 2))
    return image


def without(findings: list[Finding], category: str) -> list[Finding]:
    return [f for f in findings if f.category != category]


def with_severity(finding: Finding, severity: float) -> Finding:
    return replace(finding, severity=severity)
