"""SynthCXR rendering: a case's parameters drawn as a chest-radiograph-like image.

Conventions
-----------
* Images are PA films: the patient's RIGHT is the IMAGE LEFT. The heart bulges to the image right.
* Geometry lives in "patient coordinates" (u, v): u runs left -> right across the image, v runs
  top -> bottom, both about [-1, 1] for an unrotated, unit-scale, centred patient. The acquisition
  (rotation, scale, shift) maps image pixels to patient coordinates before anything is drawn.
* Side codes: -1 = patient right (image left), +1 = patient left (image right).
* Rendering works on a "density" map (air 0, soft tissue ~0.45, bone and heart brighter) that the
  acquisition turns into brightness with exposure, gamma, low-frequency texture and noise.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .synth_params import check_size

TEXTURE_STREAMS = ("vessels", "patch", "exposure", "noise")


# ---------------------------------------------------------------- rendering helpers


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates in [-1, 1] at pixel centres (x right, y down)."""
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2 - 1
    return np.meshgrid(t, t)


def _bspline3(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, 2 / 3 - x**2 + x**3 / 2, np.where(x < 2, (2 - x) ** 3 / 6, 0.0))


@lru_cache(maxsize=32)
def _upsampler(size: int, cells: int) -> np.ndarray:
    """(size, cells + 3) cubic B-spline weights, rows scaled so the field has unit variance."""
    t = (np.arange(size) + 0.5) / size * cells
    centres = np.arange(cells + 3) - 1.5
    weights = _bspline3(t[:, None] - centres[None, :])
    return (weights / np.sqrt((weights**2).sum(1, keepdims=True))).astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance random field with about `cells` bumps across the image."""
    b = _upsampler(size, cells)
    g = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    return b @ g @ b.T


def _ramp(z: np.ndarray, width: float) -> np.ndarray:
    """Smooth step from 0 (z <= -width/2) to 1 (z >= width/2)."""
    t = z * (1.0 / width) + 0.5
    np.clip(t, 0.0, 1.0, out=t)
    return t * t * (3 - 2 * t)


def patient_coords(size: int, acquisition: dict) -> tuple[np.ndarray, np.ndarray]:
    """Patient coordinates (u, v) of every pixel after rotation, scale and shift."""
    x, y = _pixel_grid(size)
    theta = np.deg2rad(acquisition["rotation_deg"])
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    dx, dy = x - acquisition["shift"][0], y - acquisition["shift"][1]
    k = np.float32(1.0 / acquisition["scale"])
    return (c * dx + s * dy) * k, (c * dy - s * dx) * k


def patient_to_pixel(u: float, v: float, acquisition: dict, size: int) -> tuple[float, float]:
    """(row, col) pixel position of a patient-coordinate point, e.g. a finding centre."""
    theta = np.deg2rad(acquisition["rotation_deg"])
    c, s = np.cos(theta), np.sin(theta)
    su, sv = u * acquisition["scale"], v * acquisition["scale"]
    x = c * su - s * sv + acquisition["shift"][0]
    y = s * su + c * sv + acquisition["shift"][1]
    return float((y + 1) / 2 * size - 0.5), float((x + 1) / 2 * size - 0.5)


def _dome(u: np.ndarray, anatomy: dict, elevation: dict) -> np.ndarray:
    """v of the diaphragm surface at every u (right dome under image left)."""
    cx = anatomy["lung_cx"]
    right = anatomy["dome_right"] - elevation.get(-1, 0.0) + 1.2 * (u + cx) ** 2
    left = anatomy["dome_left"] - elevation.get(1, 0.0) + 1.2 * (u - cx) ** 2
    return np.where(u < 0, right, left)


def _lung_radius(u, v, anatomy, side, fraction=1.0):
    """Elliptic radius of one lung, tapered at the apex (1 on its outline).

    `fraction` < 1 gives the collapsed lung of a pneumothorax, shrunk towards hilum and base.
    """
    a_lat, a_med, b = anatomy["lung_lateral"], anatomy["lung_medial"], anatomy["lung_height"]
    cx = side * (anatomy["lung_cx"] + (1 - fraction) * (a_med - a_lat))
    cy = anatomy["lung_cy"] + (1 - fraction) * b
    du, dv = u - cx, (v - cy) / (b * fraction)
    taper = 1 + 0.2 * np.minimum(dv, 0)  # narrower towards the apex
    a = np.where(side * du > 0, a_lat, a_med) * fraction * taper
    return np.sqrt((du / a) ** 2 + dv**2)


def _heart(u, v, anatomy, findings):
    """Heart mask: a sheared ellipse (apex down and to the image right) of width ctr * thorax."""
    ctr = findings.get("cardiomegaly", {}).get("ctr", anatomy["ctr"])
    width = ctr * anatomy["thorax_width"]
    cx, cy = 0.08 + 0.12 * width, anatomy["heart_cy"]
    a, b = width / 2, anatomy["heart_height"] + 0.15 * (width - 0.6)
    rho = np.sqrt(((u - cx - 0.25 * (v - cy)) / a) ** 2 + ((v - cy) / b) ** 2)
    return _ramp(1 - rho, 0.08)


def _body(u, v):
    """Soft-tissue envelope: chest, shoulders and neck."""
    half_width = 0.30 + 0.62 * _ramp(v + 0.74, 0.40)
    return _ramp(half_width - np.abs(u), 0.05)


def _mediastinum(u, v, anatomy):
    """Central soft-tissue column with the aortic knob bulging to the image right."""
    column = _ramp(anatomy["mediastinum_width"] - np.abs(u - 0.01), 0.03)
    knob = _ramp(0.07 - np.sqrt((u - 0.12) ** 2 + (v + 0.30) ** 2), 0.03)
    return np.maximum(column, knob)


def _ribs(u, v, dome, anatomy):
    """Posterior (arched) and fainter anterior (sloped) rib bands, above the diaphragm."""
    au = np.abs(u)
    posterior = v - 0.55 * (au - 0.08) ** 2 - anatomy["rib_phase"] * anatomy["rib_spacing"]
    anterior = v + 0.35 * au
    bands = np.clip((np.cos(2 * np.pi * posterior / anatomy["rib_spacing"]) - 0.35) / 0.65, 0, 1)
    bands += 0.4 * np.clip((np.cos(2 * np.pi * anterior / (1.3 * anatomy["rib_spacing"])) - 0.5) / 0.5, 0, 1)
    return bands * _ramp(0.70 - au, 0.05) * _ramp(v + 0.75, 0.05) * _ramp(dome + 0.06 - v, 0.06)


def _clavicles(u, v, anatomy):
    au = np.abs(u)
    centre = anatomy["clavicle_v"] - 0.2 * (au - 0.1)
    return _ramp(0.028 - np.abs(v - centre), 0.012) * _ramp(0.62 - au, 0.04) * _ramp(au - 0.04, 0.03)


def _spine_and_trachea(u, v):
    spine = _ramp(0.065 - np.abs(u), 0.02) * (0.8 + 0.2 * np.cos(2 * np.pi * v / 0.11))
    trachea = _ramp(0.035 - np.abs(u), 0.015) * _ramp(-0.28 - v, 0.06)
    return spine, trachea


def _sides(side_word: str) -> tuple[int, ...]:
    return {"right": (-1,), "left": (1,), "bilateral": (-1, 1)}[side_word]


# ---------------------------------------------------------------- finding opacities


def _effusion_fluid(u, v, dome, params):
    """Where the fluid is (0..1): the base up to a meniscus that climbs the lateral chest wall."""
    fluid = np.zeros_like(u)
    for side in _sides(params["side"]):
        lateral = np.clip((side * u - 0.15) / 0.5, 0, 1)
        surface = dome - params["height"] + 0.6 * params["height"] * (1 - lateral) ** 2
        fluid = np.maximum(fluid, _ramp(v - surface, 0.04) * (side * u > 0))
    return fluid


def _consolidation_opacity(u, v, patch, params):
    """Soft-edged blob in one lobe, broken up by a smooth patch texture."""
    (cu, cv), (ru, rv) = params["centre"], params["radius"]
    r2 = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2
    blob = np.exp(-0.7 * r2)
    return params["opacity"] * np.clip(1.5 * blob - 0.6 * (1 - patch), 0, 1)


def _edema_opacity(u, v, params):
    """Bilateral perihilar ("bat-wing") haze."""
    w = params["spread"]
    return params["haze"] * np.exp(-(((np.abs(u) - 0.22) / w) ** 2) - (v / (w + 0.10)) ** 2)


def _atelectasis_opacity(u, v, dome, params):
    """Plate-like band above one hemidiaphragm."""
    theta = np.deg2rad(params["angle_deg"])
    cu = params["centre_u"]
    du, dv = u - cu, v - (dome - params["above_dome"])
    along = np.cos(theta) * du + np.sin(theta) * dv
    across = -np.sin(theta) * du + np.cos(theta) * dv
    band = _ramp(params["half_thickness"] - np.abs(across), 0.02) * _ramp(params["half_length"] - np.abs(along), 0.08)
    return params["opacity"] * band


def _nodule_density(u, v, params):
    """Sphere-like bright disc (added density, it can overlie anything)."""
    cu, cv = params["centre"]
    r2 = ((u - cu) ** 2 + (v - cv) ** 2) / params["radius"] ** 2
    return params["density"] * np.sqrt(np.clip(1 - r2, 0, 1))


# ---------------------------------------------------------------- render


def _texture_rng(params: dict, stream: str) -> np.random.Generator:
    """Independent random stream per texture, so removing a finding leaves the others unchanged."""
    return np.random.default_rng([params["texture_seed"], TEXTURE_STREAMS.index(stream)])


def density_map(u, v, params, size):
    """Density map (air 0, soft tissue ~0.45, bone/heart brighter) of one patient with findings."""
    anatomy, findings = params["anatomy"], params["findings"]
    elevation = {}
    if "atelectasis" in findings:
        elevation[_sides(findings["atelectasis"]["side"])[0]] = findings["atelectasis"]["dome_elevation"]
    dome = _dome(u, anatomy, elevation)
    body = _body(u, v)
    mediastinum = _mediastinum(u, v, anatomy)
    heart = _heart(u, v, anatomy, findings)
    above_dome = _ramp(dome - v, 0.03)

    lungs = np.zeros_like(u)
    collapsed = np.zeros_like(u)  # pneumothorax space: air without lung markings
    for side in (-1, 1):
        depth = 1 - _lung_radius(u, v, anatomy, side)  # thinner lung (less air) near the outline
        lung = _ramp(depth, 0.05) * (0.6 + 0.4 * np.clip(depth / 0.35, 0, 1)) * above_dome * (u * side > 0)
        lungs += lung
        ptx = findings.get("pneumothorax")
        if ptx and _sides(ptx["side"])[0] == side:
            inner = _lung_radius(u, v, anatomy, side, ptx["lung_fraction"])
            collapsed += lung * _ramp(inner - 1, 0.03)
            pleural_line = np.clip(1 - np.abs(inner - 1) / 0.02, 0, 1)
            lungs -= lung * ptx["line"] * pleural_line  # thin visible visceral pleura
    lungs *= (1 - mediastinum) * (1 - 0.85 * heart)

    opacity = np.zeros_like(u)
    fluid = np.zeros_like(u)
    if "effusion" in findings:
        fluid = _effusion_fluid(u, v, dome, findings["effusion"])
        opacity = np.maximum(opacity, findings["effusion"]["opacity"] * fluid)
    if "consolidation" in findings:
        patch = np.clip(0.5 + 0.35 * smooth_noise(_texture_rng(params, "patch"), size, 18), 0, 1)
        opacity = np.maximum(opacity, _consolidation_opacity(u, v, patch, findings["consolidation"]))
    if "atelectasis" in findings:
        opacity = np.maximum(opacity, _atelectasis_opacity(u, v, dome, findings["atelectasis"]))
    markings_gain = 1.0
    if "edema" in findings:
        opacity = 1 - (1 - opacity) * (1 - _edema_opacity(u, v, findings["edema"]))
        markings_gain += 2 * findings["edema"]["haze"]

    hilum = np.exp(-(((np.abs(u) - 0.2) / 0.12) ** 2) - ((v + 0.02) / 0.14) ** 2)
    vessels = np.clip(1 - np.abs(smooth_noise(_texture_rng(params, "vessels"), size, 22)) / 0.6, 0, 1) ** 2
    markings = anatomy["marking_strength"] * markings_gain * vessels * (0.35 + 0.65 * np.sqrt(hilum))

    spine, trachea = _spine_and_trachea(u, v)
    d = anatomy["soft_tissue"] * body
    d += body * np.maximum(0.10 * (1 - above_dome), anatomy["heart_density"] * heart)  # abdomen, heart
    d += body * (0.08 * mediastinum + 0.12 * spine - 0.10 * trachea)
    d -= 0.30 * lungs * (1 - opacity)
    d -= (findings["pneumothorax"]["lucency"] if "pneumothorax" in findings else 0.0) * collapsed
    d += lungs * (1 - collapsed) * (markings + 0.06 * hilum)
    d += body * (0.07 * _ribs(u, v, dome, anatomy) + 0.12 * _clavicles(u, v, anatomy))
    if "effusion" in findings:
        d += findings["effusion"]["density"] * body * fluid
    if "nodule" in findings:
        d += _nodule_density(u, v, findings["nodule"])
    return np.clip(d, 0, None)


def render(params: dict, size: int = 128) -> np.ndarray:
    """Float32 (size, size) image in [0, 1] from `draw_params` output (findings may be edited)."""
    check_size(size)
    acquisition = params["acquisition"]
    u, v = patient_coords(size, acquisition)
    density = density_map(u, v, params, size)
    image = acquisition["brightness"] + acquisition["contrast"] * density ** acquisition["gamma"]
    image += acquisition["texture"] * smooth_noise(_texture_rng(params, "exposure"), size, 4)
    image += acquisition["noise"] * _texture_rng(params, "noise").standard_normal((size, size), dtype=np.float32)
    return np.clip(image, 0, 1).astype(np.float32)
