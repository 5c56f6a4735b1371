"""SynthCXR: a seed-driven generator of chest-radiograph-like phantoms with paired reports.

Every case is drawn from `np.random.default_rng([seed, index, domain_code])`: acquisition,
anatomy, findings and report all come from that one generator, so a case is fully determined by
(seed, index, size, domain) and the same patient looks the same at every `size`.

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

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "effusion",
    "consolidation",
    "pneumothorax",
    "nodule",
    "edema",
    "atelectasis",
)
DOMAINS = ("pretrain", "downstream")
MIN_SIZE = 32
MAX_REPORT_WORDS = 40

SIDE_WORD = {-1: "right", 1: "left"}
# lobe -> (u range, v range) of a consolidation centre, patient coordinates
LOBE_BOXES = {
    "right upper lobe": ((-0.52, -0.28), (-0.52, -0.22)),
    "right middle lobe": ((-0.40, -0.22), (0.02, 0.24)),
    "right lower lobe": ((-0.55, -0.32), (0.22, 0.38)),
    "left upper lobe": ((0.28, 0.52), (-0.52, -0.10)),
    "left lower lobe": ((0.38, 0.55), (0.20, 0.38)),
}
LOBES = tuple(LOBE_BOXES)
NODULE_ZONES = {"upper": (-0.50, -0.25), "mid": (-0.18, 0.08), "lower": (0.14, 0.32)}
MM_PER_UNIT = 175.0  # 2 patient units ~ 350 mm of chest
TEXTURE_STREAMS = ("vessels", "patch", "exposure", "noise")

# Two levels of difficulty, drawn from the same anatomy, acquisition, reports and regions:
# "lesson" (the default) draws every finding so that a person sees it in the 64-px picture the tiny
# preset's model gets (an enlarged heart by its width, fluid with a meniscus, a dense lobar opacity, a
# dark unmarked rim with a pleural line, a nodule of 4-6 px, a bat-wing haze, a thick plate above a
# raised dome); "subtle" is the realistic drawing, where most findings are a few grey levels or one or
# two pixels at 64 px (the kit's first version of the data).
LEVELS = ("lesson", "subtle")

# Base rates; edema and effusion lean on cardiomegaly, atelectasis on effusion (see draw_labels).
# The lesson level has more findings and so fewer normal studies (about a fifth, against two fifths):
# normal reports differ only in wording, so in a contrastive batch they are false negatives of each
# other, and at 1% of the labels (50 studies) each finding still has about ten positives.
PREVALENCE = {
    "subtle": {"cardiomegaly": 0.14, "effusion": 0.09, "consolidation": 0.13, "pneumothorax": 0.10,
               "nodule": 0.11, "edema": 0.06, "atelectasis": 0.11},
    "lesson": {"cardiomegaly": 0.20, "effusion": 0.15, "consolidation": 0.20, "pneumothorax": 0.16,
               "nodule": 0.18, "edema": 0.10, "atelectasis": 0.16},
}
# Per level, the ranges each finding is drawn from (patient units; density units for opacities).
SHAPES = {
    "subtle": {
        "ctr": {"mild": (0.54, 0.59), "moderate": (0.59, 0.64), "marked": (0.64, 0.70)},
        "effusion_height": {"small": (0.05, 0.09), "moderate": (0.13, 0.20), "large": (0.30, 0.45)},
        "effusion_opacity": {"small": (0.35, 0.55), "moderate": (0.45, 0.65), "large": (0.55, 0.75)},
        "effusion_density": 0.0,  # density the fluid adds on top of replacing the lung's air
        # Lobar-pneumonia sized and dense enough to be learnt with labels at 64 px (an earlier drawing's
        # smaller, fainter blobs were not learnable even with every label).
        "consolidation_opacity": {"patchy": (0.35, 0.50), "dense": (0.50, 0.70)},
        "consolidation_radius": ((0.16, 0.26), (0.14, 0.22)),
        "pneumothorax_fraction": {"small": (0.88, 0.94), "large": (0.74, 0.84)},
        "pneumothorax_lucency": 0.045,  # how much darker the unmarked air is than the lung
        "pneumothorax_line": 0.2,  # how bright the visceral pleural line is
        "nodule_diameter": {"mild": (0.07, 0.09), "any": (0.07, 0.16)},  # 12-28 mm: >= 2 px at 64 px
        "nodule_density": 0.12,  # + the diameter
        "edema_haze": {"mild": (0.06, 0.10), "moderate": (0.11, 0.17), "severe": (0.18, 0.26)},
        "edema_spread": 0.22,  # half-width of the bat wing
        "atelectasis_length": (0.11, 0.18),
        "atelectasis_thickness": {"mild": (0.012, 0.018), "any": (0.014, 0.024)},
        "atelectasis_opacity": (0.45, 0.75),
        "dome_elevation": (0.02, 0.05),
    },
    "lesson": {
        "ctr": {"mild": (0.63, 0.67), "moderate": (0.67, 0.72), "marked": (0.72, 0.78)},
        "effusion_height": {"small": (0.18, 0.25), "moderate": (0.25, 0.34), "large": (0.34, 0.46)},
        "effusion_opacity": {"small": (0.85, 0.92), "moderate": (0.88, 0.95), "large": (0.92, 1.00)},
        "effusion_density": 0.10,
        "consolidation_opacity": {"patchy": (0.60, 0.75), "dense": (0.75, 0.95)},
        "consolidation_radius": ((0.20, 0.30), (0.16, 0.24)),
        "pneumothorax_fraction": {"small": (0.68, 0.76), "large": (0.55, 0.68)},
        "pneumothorax_lucency": 0.12,
        "pneumothorax_line": 0.5,
        "nodule_diameter": {"mild": (0.13, 0.15), "any": (0.13, 0.20)},  # 23-35 mm: 4-6 px at 64 px
        "nodule_density": 0.25,
        "edema_haze": {"mild": (0.55, 0.65), "moderate": (0.65, 0.75), "severe": (0.75, 0.85)},
        "edema_spread": 0.32,  # half-width of the bat wing
        "atelectasis_length": (0.20, 0.28),
        "atelectasis_thickness": {"mild": (0.040, 0.050), "any": (0.045, 0.060)},
        "atelectasis_opacity": (0.90, 1.00),
        "dome_elevation": (0.06, 0.10),
    },
}
HEDGE_RATE_POSITIVE = 0.08
HEDGE_RATE_NEGATIVE = 0.02


@dataclass
class Case:
    """One synthetic study: image, ground truth, report and what was drawn."""

    image: np.ndarray  # float32 (size, size) in [0, 1]
    labels: np.ndarray  # float32 (7,), finding present in the image, order FINDINGS
    report_labels: np.ndarray  # float32 (7,), 1 stated, 0 negated / not mentioned, -1 hedged
    report: str
    findings: dict  # finding name -> parameters, present findings only
    acquisition: dict
    patient_id: str


@dataclass
class SynthBatch:
    """Many cases stacked; images as uint8 to keep memory small."""

    images: np.ndarray  # uint8 (n, size, size)
    labels: np.ndarray  # float32 (n, 7)
    report_labels: np.ndarray  # float32 (n, 7)
    reports: list[str]
    patient_ids: list[str]
    findings: list[dict]


# ---------------------------------------------------------------- argument checks


def _check_domain(domain: str) -> int:
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r} is not valid; use one of {DOMAINS}")
    return DOMAINS.index(domain)


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level={level!r} is not valid; use one of {LEVELS} ('lesson': findings visible at 64 px, "
                         f"'subtle': the realistic, harder drawing)")


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size={size!r} is not valid; use an integer >= {MIN_SIZE}")


def _check_non_negative(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}={value!r} is not valid; use an integer >= 0")


# ---------------------------------------------------------------- parameter drawing


def draw_acquisition(rng: np.random.Generator, domain: str) -> dict:
    """Exposure, contrast, noise and placement; downstream films are under-exposed (greyer, flatter),
    noisier and show a smaller patient (wider field of view)."""
    if domain == "pretrain":
        exposure, scale, texture = rng.uniform(0.90, 1.20), rng.uniform(0.95, 1.08), rng.uniform(0.008, 0.02)
    else:
        exposure, scale, texture = rng.uniform(0.55, 0.85), rng.uniform(0.84, 0.96), rng.uniform(0.015, 0.03)
    return {
        "exposure": float(exposure),
        "contrast": float(rng.uniform(0.95, 1.10) * (0.7 + 0.3 * exposure)),
        "brightness": float(rng.uniform(0.0, 0.05) + 0.2 * (1.0 - exposure)),
        "gamma": float(rng.uniform(0.85, 1.15)),
        "noise": float(rng.uniform(0.018, 0.030) / np.sqrt(exposure)),
        "texture": float(texture),
        "rotation_deg": float(np.clip(rng.normal(0.0, 2.0), -5.0, 5.0)),
        "scale": float(scale),
        "shift": (float(rng.normal(0.0, 0.03)), float(rng.normal(0.0, 0.03))),
    }


def draw_anatomy(rng: np.random.Generator) -> dict:
    """Normal anatomy of one patient: lung, heart, diaphragm and rib geometry."""
    lung_lateral = rng.uniform(0.27, 0.31)
    lung_cx = rng.uniform(0.35, 0.39)
    return {
        "lung_cx": float(lung_cx),
        "lung_cy": float(rng.uniform(-0.03, 0.03)),
        "lung_lateral": float(lung_lateral),
        "lung_medial": float(rng.uniform(0.21, 0.25)),
        "lung_height": float(rng.uniform(0.68, 0.76)),
        "thorax_width": float(2 * (lung_cx + lung_lateral)),
        "ctr": float(rng.uniform(0.40, 0.52)),
        "heart_density": float(rng.uniform(0.09, 0.15)),
        "heart_height": float(rng.uniform(0.23, 0.29)),
        "heart_cy": float(rng.uniform(0.27, 0.33)),
        "dome_right": float(rng.uniform(0.38, 0.44)),
        "dome_left": float(rng.uniform(0.43, 0.49)),
        "mediastinum_width": float(rng.uniform(0.10, 0.13)),
        "clavicle_v": float(rng.uniform(-0.62, -0.55)),
        "rib_spacing": float(rng.uniform(0.13, 0.16)),
        "rib_phase": float(rng.uniform(0.0, 1.0)),
        "soft_tissue": float(rng.uniform(0.40, 0.50)),
        "marking_strength": float(rng.uniform(0.05, 0.08)),
    }


def draw_labels(rng: np.random.Generator, level: str = "lesson") -> np.ndarray:
    """Presence of each finding; edema/effusion follow cardiomegaly, atelectasis follows effusion."""
    p = dict(PREVALENCE[level])
    present = {}
    present["cardiomegaly"] = rng.random() < p["cardiomegaly"]
    p["edema"] += 0.25 * present["cardiomegaly"]
    present["edema"] = rng.random() < p["edema"]
    p["effusion"] += 0.12 * present["cardiomegaly"] + 0.15 * present["edema"]
    present["effusion"] = rng.random() < p["effusion"]
    p["atelectasis"] += 0.10 * present["effusion"]
    for name in ("consolidation", "pneumothorax", "nodule", "atelectasis"):
        present[name] = rng.random() < p[name]
    return np.array([present[name] for name in FINDINGS], dtype=np.float32)


# Each _draw_<finding>(rng, mild, shape) returns that finding's parameters; `mild` (set for hedged
# findings) forces the mildest grade, `shape` is the level's SHAPES entry.


def _grade(rng: np.random.Generator, grades: tuple[str, ...], mild: bool) -> str:
    return grades[0] if mild else grades[rng.integers(len(grades))]


def _side(rng: np.random.Generator) -> int:
    return int(rng.choice((-1, 1)))


def _draw_cardiomegaly(rng, mild, shape):
    severity = _grade(rng, ("mild", "moderate", "marked"), mild)
    return {"severity": severity, "ctr": float(rng.uniform(*shape["ctr"][severity]))}


def _draw_effusion(rng, mild, shape):
    side = "bilateral" if rng.random() < 0.25 else SIDE_WORD[_side(rng)]
    size = _grade(rng, ("small", "moderate", "large"), mild)
    return {"side": side, "size": size, "height": float(rng.uniform(*shape["effusion_height"][size])),
            "opacity": float(rng.uniform(*shape["effusion_opacity"][size])), "density": shape["effusion_density"]}


def _draw_consolidation(rng, mild, shape):
    lobe = LOBES[rng.integers(len(LOBES))]
    u_range, v_range = LOBE_BOXES[lobe]
    extent = _grade(rng, ("patchy", "dense"), mild)
    opacity = shape["consolidation_opacity"][extent]
    (ru, rv) = shape["consolidation_radius"]
    return {
        "lobe": lobe,
        "extent": extent,
        "centre": (float(rng.uniform(*u_range)), float(rng.uniform(*v_range))),
        "radius": (float(rng.uniform(*ru)), float(rng.uniform(*rv))),
        "opacity": float(rng.uniform(*opacity)),
    }


def _draw_pneumothorax(rng, mild, shape):
    size = _grade(rng, ("small", "large"), mild)
    collapse = shape["pneumothorax_fraction"][size]
    return {"side": SIDE_WORD[_side(rng)], "size": size, "lung_fraction": float(rng.uniform(*collapse)),
            "lucency": shape["pneumothorax_lucency"], "line": shape["pneumothorax_line"]}


def _draw_nodule(rng, mild, shape):
    side = _side(rng)
    zone = ("upper", "mid", "lower")[rng.integers(3)]
    diameter = rng.uniform(*shape["nodule_diameter"]["mild" if mild else "any"])
    u = side * rng.uniform(0.22 if zone == "upper" else 0.34, 0.55)
    return {
        "side": SIDE_WORD[side],
        "zone": zone,
        "centre": (float(u), float(rng.uniform(*NODULE_ZONES[zone]))),
        "radius": float(diameter / 2),
        "size_mm": int(round(diameter * MM_PER_UNIT)),
        "density": float(shape["nodule_density"] + 1.0 * diameter),
    }


def _draw_edema(rng, mild, shape):
    severity = _grade(rng, ("mild", "moderate", "severe"), mild)
    return {"severity": severity, "haze": float(rng.uniform(*shape["edema_haze"][severity])),
            "spread": shape["edema_spread"]}


def _draw_atelectasis(rng, mild, shape):
    side = _side(rng)
    return {
        "side": SIDE_WORD[side],
        "centre_u": float(side * rng.uniform(0.32, 0.50)),
        "above_dome": float(rng.uniform(0.07, 0.15)),
        "half_length": float(rng.uniform(*shape["atelectasis_length"])),
        "half_thickness": float(rng.uniform(*shape["atelectasis_thickness"]["mild" if mild else "any"])),
        "angle_deg": float(rng.uniform(-15.0, 15.0)),
        "opacity": float(rng.uniform(*shape["atelectasis_opacity"])),
        "dome_elevation": float(rng.uniform(*shape["dome_elevation"])),
    }


FINDING_DRAWERS = {
    "cardiomegaly": _draw_cardiomegaly,
    "effusion": _draw_effusion,
    "consolidation": _draw_consolidation,
    "pneumothorax": _draw_pneumothorax,
    "nodule": _draw_nodule,
    "edema": _draw_edema,
    "atelectasis": _draw_atelectasis,
}


def draw_params(rng: np.random.Generator, domain: str, level: str = "lesson") -> dict:
    """Everything `render` and the report need; hedged positives get the mildest grade."""
    _check_level(level)
    acquisition = draw_acquisition(rng, domain)
    anatomy = draw_anatomy(rng)
    labels = draw_labels(rng, level)
    hedge_rate = np.where(labels == 1, HEDGE_RATE_POSITIVE, HEDGE_RATE_NEGATIVE)
    hedged = rng.random(len(FINDINGS)) < hedge_rate
    findings, mentions = {}, {}
    for i, name in enumerate(FINDINGS):
        if labels[i] or hedged[i]:
            drawn = FINDING_DRAWERS[name](rng, bool(hedged[i]), SHAPES[level])
            (findings if labels[i] else mentions)[name] = drawn
    return {
        "level": level,
        "acquisition": acquisition,
        "anatomy": anatomy,
        "labels": labels,
        "hedged": hedged,
        "findings": findings,
        "mentions": mentions,  # details of hedged findings that are absent from the image
        "texture_seed": int(rng.integers(2**31)),
    }


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


def _density(u, v, params, size):
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
    _check_size(size)
    acquisition = params["acquisition"]
    u, v = patient_coords(size, acquisition)
    density = _density(u, v, params, size)
    image = acquisition["brightness"] + acquisition["contrast"] * density ** acquisition["gamma"]
    image += acquisition["texture"] * smooth_noise(_texture_rng(params, "exposure"), size, 4)
    image += acquisition["noise"] * _texture_rng(params, "noise").standard_normal((size, size), dtype=np.float32)
    return np.clip(image, 0, 1).astype(np.float32)


# ---------------------------------------------------------------- report text
# Each template is a sentence with {placeholders} filled from the finding's parameters. The first
# positive template of each finding is the shortest; it is used when a report runs long.
# Positive sentences never contain negation words (no, not, without, normal, clear, sharp) or hedge
# words (possible, may, cannot, questionable), so a report can be checked sentence by sentence.

POSITIVE = {
    "cardiomegaly": (
        "{Sev} cardiomegaly.",
        "The heart is {sevly} enlarged.",
        "The cardiac silhouette is {sevly} enlarged.",
        "{Sev} enlargement of the cardiac silhouette.",
    ),
    "effusion": (
        "{Size} {side} pleural {effusion}.",
        "There {is} {a}{size} {side} pleural {effusion}.",
        "{Side} pleural {effusion}, {size} in size.",
        "Blunting of the {side} costophrenic {angle} from {a}{size} {effusion}.",
    ),
    "consolidation": (
        "{Lobe} consolidation.",
        "Patchy consolidation in the {lobe}.",
        "Airspace opacity in the {lobe} consistent with consolidation.",
        "Focal {extent} airspace consolidation within the {lobe}.",
    ),
    "pneumothorax": (
        "{Size} {side} pneumothorax.",
        "There is a {size} {side} apical pneumothorax.",
        "A {size} {side} pneumothorax is present with a visible pleural line.",
        "{Side} pneumothorax, {size}.",
    ),
    "nodule": (
        "{mm} mm {side} {zone} lung nodule.",
        "Nodule in the {side} {zone} lung, {mm} mm.",
        "Rounded {mm} mm nodular opacity in the {side} {zone} lung zone.",
        "Solitary {side} {zone} lung nodule measuring {mm} mm.",
    ),
    "edema": (
        "{Sev} pulmonary edema.",
        "{Sev} perihilar haziness consistent with pulmonary edema.",
        "Increased interstitial markings compatible with {sev} edema.",
        "Bilateral perihilar opacities in keeping with {sev} interstitial edema.",
    ),
    "atelectasis": (
        "{Side} basilar atelectasis.",
        "Plate-like atelectasis at the {side} lung base.",
        "Linear opacity at the {side} base consistent with subsegmental atelectasis.",
        "Mild {side} basal atelectasis with slight volume loss.",
    ),
}

HEDGED = {
    "cardiomegaly": (
        "Possible {sev} cardiomegaly.",
        "The heart may be {sevly} enlarged.",
        "Borderline heart size, cardiomegaly cannot be excluded.",
    ),
    "effusion": (
        "Possible {size} {side} pleural {effusion}.",
        "Blunting of the {side} costophrenic {angle} may represent {a}small {effusion}.",
        "Small {side} pleural {effusion} cannot be excluded.",
    ),
    "consolidation": (
        "Possible {lobe} consolidation.",
        "Hazy opacity in the {lobe} may represent early pneumonia.",
        "Subtle {lobe} opacity, cannot exclude pneumonia.",
    ),
    "pneumothorax": (
        "Possible small {side} apical pneumothorax.",
        "Subtle {side} apical lucency, cannot exclude pneumothorax.",
        "Questionable {side} pneumothorax.",
    ),
    "nodule": (
        "Possible {mm} mm nodule in the {side} {zone} lung.",
        "Rounded density in the {side} {zone} lung may represent a nodule.",
        "Questionable {side} {zone} lung nodule.",
    ),
    "edema": (
        "Possible mild pulmonary edema.",
        "Perihilar haziness may represent mild edema.",
        "Mild interstitial prominence, cannot exclude early edema.",
    ),
    "atelectasis": (
        "Linear {side} basilar opacity, possibly atelectasis.",
        "{Side} basilar opacity may represent atelectasis.",
        "Questionable {side} basilar atelectasis.",
    ),
}

IMPRESSION_POSITIVE = {
    "cardiomegaly": ("{Sev} cardiomegaly.", "Cardiomegaly."),
    "effusion": ("{Size} {side} pleural {effusion}.", "{Side} pleural {effusion}."),
    "consolidation": ("{Lobe} consolidation.", "{Lobe} pneumonia."),
    "pneumothorax": ("{Size} {side} pneumothorax.", "{Side} pneumothorax."),
    "nodule": ("{Side} {zone} lung nodule.", "{mm} mm {side} lung nodule."),
    "edema": ("{Sev} pulmonary edema.", "Pulmonary edema."),
    "atelectasis": ("{Side} basilar atelectasis.", "Atelectasis at the {side} base."),
}

IMPRESSION_HEDGED = ("Possible {short}.", "Cannot exclude {short}.", "Questionable {short}.")
SHORT = {
    "cardiomegaly": "cardiomegaly",
    "effusion": "{side} pleural {effusion}",
    "consolidation": "{lobe} pneumonia",
    "pneumothorax": "{side} pneumothorax",
    "nodule": "{side} lung nodule",
    "edema": "pulmonary edema",
    "atelectasis": "{side} basilar atelectasis",
}

# (sentence, topics it covers). Topics that are findings are negated by the sentence, so it is
# used only when they are all absent and unhedged; a report never repeats a topic.
NORMAL_SENTENCES = (
    ("Heart size is normal.", ("cardiomegaly",)),
    ("The cardiac silhouette is normal in size.", ("cardiomegaly",)),
    ("Cardiomediastinal silhouette is within normal limits.", ("cardiomegaly", "mediastinum")),
    ("No pleural effusion or pneumothorax.", ("effusion", "pneumothorax")),
    ("No pleural effusion.", ("effusion",)),
    ("The costophrenic angles are sharp.", ("effusion",)),
    ("No pneumothorax.", ("pneumothorax",)),
    ("No focal consolidation.", ("consolidation",)),
    ("No focal airspace disease.", ("consolidation",)),
    ("No pulmonary nodules.", ("nodule",)),
    ("No pulmonary edema.", ("edema",)),
    ("Pulmonary vasculature is normal.", ("edema",)),
    ("No atelectasis.", ("atelectasis",)),
    ("The lungs are clear.", ("consolidation", "edema", "nodule", "atelectasis", "pneumothorax")),
    ("Lungs are clear without focal opacity.", ("consolidation", "edema", "nodule", "atelectasis")),
    ("Mediastinal contours are unremarkable.", ("mediastinum",)),
    ("The mediastinum is normal.", ("mediastinum",)),
    ("Hilar contours are normal.", ("hila",)),
    ("Trachea is midline.", ("trachea",)),
    ("Osseous structures are intact.", ("bones",)),
    ("No acute osseous abnormality.", ("bones",)),
)
IMPRESSION_NORMAL = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "No acute disease.",
)


def _fill(template: str, params: dict) -> str:
    """Fill {placeholders} from finding parameters; capitalised keys give capitalised words."""
    side = params.get("side", "")
    plural = side == "bilateral"
    words = {
        "sev": params.get("severity", ""),
        "sevly": {"mild": "mildly", "moderate": "moderately", "marked": "markedly"}.get(params.get("severity"), ""),
        "size": params.get("size", ""),
        "side": side,
        "lobe": params.get("lobe", ""),
        "extent": params.get("extent", ""),
        "zone": params.get("zone", ""),
        "mm": str(params.get("size_mm", "")),
        "effusion": "effusions" if plural else "effusion",
        "angle": "angles" if plural else "angle",
        "is": "are" if plural else "is",
        "a": "" if plural else "a ",
    }
    words.update({k.capitalize(): w.capitalize() for k, w in words.items()})
    return template.format(**words)


def _mention_sentences(rng, name, params, hedged, compact):
    """(findings sentence, impression sentence) for one stated or hedged finding."""
    pick = (lambda options: options[0]) if compact else (lambda options: options[rng.integers(len(options))])
    if hedged:
        impression = pick(IMPRESSION_HEDGED).format(short=_fill(SHORT[name], params))
        return _fill(pick(HEDGED[name]), params), impression[0].upper() + impression[1:]
    return _fill(pick(POSITIVE[name]), params), _fill(pick(IMPRESSION_POSITIVE[name]), params)


def _normal_sentences(rng, quiet: set[str], count: int) -> list[str]:
    """Up to `count` normal sentences, negating only quiet (absent, unhedged) findings."""
    covered, chosen = set(), []
    for i in rng.permutation(len(NORMAL_SENTENCES)):
        sentence, topics = NORMAL_SENTENCES[i]
        if len(chosen) < count and covered.isdisjoint(topics) and quiet.issuperset(set(topics) & set(FINDINGS)):
            covered.update(topics)
            chosen.append(sentence)
    return chosen


def _word_count(sentences: list[str]) -> int:
    return sum(len(s.split()) for s in sentences) + 2  # + the two section headers


def compose_report(rng: np.random.Generator, params: dict) -> tuple[str, np.ndarray]:
    """Report text and report labels (1 stated, 0 negated / unmentioned, -1 hedged).

    Every stated or hedged finding gets a FINDINGS sentence and an IMPRESSION sentence; one to four
    normal sentences fill the rest. Over MAX_REPORT_WORDS, normal sentences are dropped and then
    compact templates used (a study with many findings can still run a few words over).
    """
    labels, hedged = params["labels"], params["hedged"]
    report_labels = np.where(hedged, -1.0, labels).astype(np.float32)
    mentioned = [(name, bool(hedged[i])) for i, name in enumerate(FINDINGS) if report_labels[i] != 0]
    quiet = {name for i, name in enumerate(FINDINGS) if report_labels[i] == 0}
    details = {**params["findings"], **params["mentions"]}
    pairs = [_mention_sentences(rng, name, details[name], h, False) for name, h in mentioned]
    normal = _normal_sentences(rng, quiet, int(rng.integers(1, 5)))
    impression = [i for _, i in pairs] or [IMPRESSION_NORMAL[rng.integers(len(IMPRESSION_NORMAL))]]
    while normal and _word_count([f for f, _ in pairs] + normal + impression) > MAX_REPORT_WORDS:
        normal.pop()
    if _word_count([f for f, _ in pairs] + impression) > MAX_REPORT_WORDS:
        pairs = [_mention_sentences(rng, name, details[name], h, True) for name, h in mentioned]
        impression = [i for _, i in pairs]
    findings = [f for f, _ in pairs] + normal
    findings = [findings[i] for i in rng.permutation(len(findings))]
    return "FINDINGS: " + " ".join(findings) + " IMPRESSION: " + " ".join(impression), report_labels


# ---------------------------------------------------------------- public entry points


def _case_rng(seed: int, index: int, domain: str) -> np.random.Generator:
    """The one generator a case draws everything from."""
    _check_non_negative("seed", seed)
    _check_non_negative("index", index)
    return np.random.default_rng([seed, index, _check_domain(domain)])


def case_params(seed: int, index: int, domain: str = "pretrain", level: str = "lesson") -> dict:
    """The parameters `generate_case` draws for a case, without rendering (cheap; size-independent)."""
    return draw_params(_case_rng(seed, index, domain), domain, level)


def generate_case(seed: int, index: int, size: int = 128, domain: str = "pretrain", level: str = "lesson") -> Case:
    """One deterministic case: same (seed, index, size, domain, level) -> same image and report."""
    _check_size(size)
    rng = _case_rng(seed, index, domain)
    params = draw_params(rng, domain, level)
    report, report_labels = compose_report(rng, params)
    return Case(
        image=render(params, size),
        labels=params["labels"].copy(),
        report_labels=report_labels,
        report=report,
        findings=params["findings"],
        acquisition=params["acquisition"],
        patient_id=f"synth-{domain}-{seed}-{index:06d}",
    )


def generate_cases(n: int, seed: int, size: int = 128, domain: str = "pretrain", start: int = 0,
                   level: str = "lesson") -> SynthBatch:
    """Cases start .. start + n - 1 stacked into a SynthBatch (images as uint8)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r} is not valid; use an integer >= 1")
    _check_non_negative("start", start)
    _check_size(size)
    _check_domain(domain)
    _check_level(level)
    images = np.empty((n, size, size), dtype=np.uint8)
    labels = np.empty((n, len(FINDINGS)), dtype=np.float32)
    report_labels = np.empty((n, len(FINDINGS)), dtype=np.float32)
    reports, patient_ids, findings = [], [], []
    for i in range(n):
        case = generate_case(seed, start + i, size, domain, level)
        images[i] = np.round(case.image * 255).astype(np.uint8)
        labels[i], report_labels[i] = case.labels, case.report_labels
        reports.append(case.report)
        patient_ids.append(case.patient_id)
        findings.append(case.findings)
    return SynthBatch(images, labels, report_labels, reports, patient_ids, findings)
