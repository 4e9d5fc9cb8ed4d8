"""Each synthetic finding is visibly present: measured on the rendered pixels, against the same study without it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from convirt.synthetic.render import (
    CARDIOMEGALY_CTR,
    NORMAL_CTR,
    Devices,
    Finding,
    costophrenic_angle,
    dome_y,
    fracture_x,
    render,
    rib_y,
    sample_anatomy,
    to_pixel,
)

SIZE = 256
CASES = range(8)


def anatomy(i: int):
    return sample_anatomy(np.random.default_rng([99, i]))


def side_of(i: int) -> tuple[str, float]:
    return ("right", -1.0) if i % 2 else ("left", 1.0)


def patch(image: np.ndarray, a, x: float, y: float, half: int = 4) -> np.ndarray:
    r, c = to_pixel(a, x, y, SIZE)
    return image[r - half : r + half + 1, c - half : c + half + 1].astype(float)


def delta(after: np.ndarray, before: np.ndarray, a, x: float, y: float, half: int = 4) -> float:
    """Mean grey-level change of the patch at anatomical (x, y)."""
    return float((patch(after, a, x, y, half) - patch(before, a, x, y, half)).mean())


def cardiothoracic_ratio(image: np.ndarray, a) -> float:
    """Measured on the image: width of the bright heart shadow / width between the outer lung edges, on the row
    through the heart's centre (threshold halfway between aerated lung and the heart's density)."""
    row, col = to_pixel(a, 0.0, a.heart_center_y, SIZE)
    profile = np.convolve(image[row - 2 : row + 3].astype(float).mean(0), np.ones(5) / 5, mode="same")
    lung = np.percentile(profile[SIZE // 8 : 7 * SIZE // 8], 10)
    tissue = np.median(profile[col - 3 : col + 4])
    bright = profile > (lung + tissue) / 2
    left = right = col
    while left > 0 and bright[left - 1]:
        left -= 1
    while right < SIZE - 1 and bright[right + 1]:
        right += 1
    outer_left, outer_right = left - 1, right + 1
    while outer_left > 0 and not bright[outer_left - 1]:
        outer_left -= 1
    while outer_right < SIZE - 1 and not bright[outer_right + 1]:
        outer_right += 1
    return (right - left + 1) / (outer_right - outer_left + 1)


def test_render_is_deterministic_and_uint8():
    a = anatomy(0)
    first = render(a, [Finding("Edema", "both", 0.5)], Devices(ecg_leads=2), 128, seed=3)
    again = render(a, [Finding("Edema", "both", 0.5)], Devices(ecg_leads=2), 128, seed=3)
    assert first.dtype == np.uint8 and first.shape == (128, 128)
    assert np.array_equal(first, again)
    assert 20 < first.mean() < 200 and first.std() > 20  # an image, not a flat field


@pytest.mark.parametrize("i", CASES)
def test_cardiomegaly_heart_wider_than_half_the_thorax(i):
    a = anatomy(i)
    normal = cardiothoracic_ratio(render(a, [], None, SIZE, seed=i), a)
    severity = i / (len(CASES) - 1)
    enlarged = cardiothoracic_ratio(render(a, [Finding("Cardiomegaly", "both", severity)], None, SIZE, seed=i), a)
    assert NORMAL_CTR[0] - 0.04 < normal < 0.5, normal
    assert 0.52 < enlarged < CARDIOMEGALY_CTR[1] + 0.04, enlarged
    assert enlarged > normal + 0.08


@pytest.mark.parametrize("i", CASES)
def test_effusion_fills_and_blunts_the_costophrenic_angle_on_its_side_only(i):
    a = anatomy(i)
    side, s = side_of(i)
    normal = render(a, [], None, SIZE, seed=i)
    effusion = render(a, [Finding("Pleural Effusion", side, i / 8)], None, SIZE, seed=i)
    cx, cy = costophrenic_angle(a, side)
    at_angle = delta(effusion, normal, a, cx - s * 0.03, cy - 0.04)
    other = delta(effusion, normal, a, -cx + s * 0.03, cy - 0.04)
    assert at_angle > 25, at_angle  # fluid density where there was air
    assert abs(other) < 2
    # the meniscus: fluid reaches higher at the lateral wall than near the lung centre
    lateral = delta(effusion, normal, a, cx - s * 0.01, cy - 0.18, 2)
    central = s * a.lung_center
    middle_y = float(dome_y(a, side, central)) - 0.05
    middle = delta(effusion, normal, a, central, middle_y - 0.13, 2)
    assert lateral > middle


@pytest.mark.parametrize("i", CASES)
def test_pneumothorax_has_no_lung_markings_beyond_the_pleural_line(i):
    a = replace(anatomy(i), noise=0.0)
    other_texture = replace(a, texture=(a.texture + 3) % 8, texture_shift=(a.texture_shift[0] + 40, 7))
    side, s = side_of(i)
    ptx = [Finding("Pneumothorax", side, i / 8)]
    x, y = s * (a.lung_center + 0.9 * a.lung_half_width), -0.3
    # beyond the line the pixels do not depend on the vessel texture at all; in a normal lung they do
    sick, sick_other = render(a, ptx, None, SIZE), render(other_texture, ptx, None, SIZE)
    well, well_other = render(a, [], None, SIZE), render(other_texture, [], None, SIZE)
    with_ptx = np.abs(patch(sick, a, x, y, 2) - patch(sick_other, a, x, y, 2))
    normal = np.abs(patch(well, a, x, y, 2) - patch(well_other, a, x, y, 2))
    assert with_ptx.mean() < 1.0
    assert normal.mean() > 3 * with_ptx.mean() + 1.0
    # and the space is darker (air without lung)
    assert delta(sick, well, a, x, y, 2) < -5
    # the visceral pleural line: a bright ridge on the row, medial to the air space
    row, col = to_pixel(a, x, y, SIZE)
    centre = to_pixel(a, s * a.lung_center, y, SIZE)[1]
    segment = sick[row, min(col, centre) : max(col, centre) + 1].astype(float)
    assert segment.max() - np.median(segment) > 12


@pytest.mark.parametrize("i", CASES)
def test_pneumonia_is_a_focal_opacity_in_its_zone(i):
    a = anatomy(i)
    side, s = side_of(i)
    zone = ("upper", "middle", "lower")[i % 3]
    finding = Finding("Pneumonia", side, i / 8, zone=zone, position=0.2, bronchograms=bool(i % 2))
    normal, sick = render(a, [], None, SIZE, seed=i), render(a, [finding], None, SIZE, seed=i)
    y = {"upper": -0.45, "middle": -0.05, "lower": 0.2}[zone]
    x = s * (a.lung_center + 0.35 * 0.2 * a.lung_half_width)
    assert delta(sick, normal, a, x, y, 3) > 20
    assert abs(delta(sick, normal, a, -x, y, 3)) < 2  # the other lung is clear
    far_y = 0.3 if zone == "upper" else -0.62  # focal: another zone of the same lung is unchanged
    assert abs(delta(sick, normal, a, x, far_y, 3)) < 3


@pytest.mark.parametrize("i", CASES)
def test_edema_is_bilateral_perihilar_haze(i):
    a = anatomy(i)
    normal = render(a, [], None, SIZE, seed=i)
    edema = render(a, [Finding("Edema", "both", i / 8)], None, SIZE, seed=i)
    for x in (-0.25, 0.25):
        perihilar = delta(edema, normal, a, x, 0.0)
        peripheral = delta(edema, normal, a, 1.75 * x + np.sign(x) * 0.15, -0.6)
        assert perihilar > 20
        assert perihilar > 2 * peripheral


@pytest.mark.parametrize("i", CASES)
def test_atelectasis_plate_opacity_and_volume_loss(i):
    a = anatomy(i)
    side, s = side_of(i)
    normal = render(a, [], None, SIZE, seed=i)
    sick = render(a, [Finding("Atelectasis", side, i / 8)], None, SIZE, seed=i)
    apex = float(dome_y(a, side, s * a.lung_center))
    # volume loss: the hemidiaphragm rises, so soft tissue where aerated lung was just above the dome
    assert delta(sick, normal, a, s * a.lung_center, apex - 0.03, 2) > 30
    ox = -s * (a.lung_center + 0.4 * a.lung_half_width)  # the other base (lateral: away from the shifted heart)
    oy = float(dome_y(a, "left" if side == "right" else "right", ox)) - 0.03
    assert abs(delta(sick, normal, a, ox, oy, 2)) < 2
    # the plate: a band of opacity above the raised dome, in the lung centre's column
    diff = sick.astype(float) - normal.astype(float)
    r, c = to_pixel(a, s * a.lung_center, apex - 0.1, SIZE)
    column = diff[:, c - 2 : c + 3].mean(1)
    assert column[r - 30 : r].max() > 30


@pytest.mark.parametrize("i", CASES)
def test_fracture_is_a_cortical_break_in_one_rib(i):
    a = anatomy(i)
    side, s = side_of(i)
    fracture = Finding("Fracture", side, i / 8, rib=4 + i % 6, position=(i % 4) / 3)
    normal, broken = render(a, [], None, SIZE, seed=i), render(a, [fracture], None, SIZE, seed=i)
    x = s * fracture_x(a, fracture)
    y = rib_y(a, fracture.rib, x)
    gap = delta(broken, normal, a, x, y, 1)
    assert gap < -8, gap  # the bone is interrupted
    # the rest of the rib medial to the break is intact
    medial = x - s * 0.12
    assert abs(delta(broken, normal, a, medial, rib_y(a, fracture.rib, medial), 1)) < 2
    # and the other hemithorax is untouched
    other = slice(0, SIZE // 2 - 20) if s > 0 else slice(SIZE // 2 + 20, SIZE)
    assert np.array_equal(broken[:, other], normal[:, other])
