"""SynthCXR case parameters: what a case is made of, drawn from the case's one random generator.

The findings, the two acquisition domains and the two levels of difficulty; per level, how common each
finding is (`PREVALENCE`) and the ranges it is drawn from (`SHAPES`); the argument checks shared by
the generator's modules; and `draw_params`, which draws acquisition, anatomy, labels, hedges and each
present (or hedged) finding's details, in that order, from one `np.random.Generator`. Geometry is in
patient coordinates (see `synth_render`); side codes: -1 = patient right (image left), +1 = patient
left (image right).
"""
from __future__ import annotations

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


# ---------------------------------------------------------------- argument checks


def check_domain(domain: str) -> int:
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r} is not valid; use one of {DOMAINS}")
    return DOMAINS.index(domain)


def check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level={level!r} is not valid; use one of {LEVELS} ('lesson': findings visible at 64 px, "
                         f"'subtle': the realistic, harder drawing)")


def check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size={size!r} is not valid; use an integer >= {MIN_SIZE}")


def check_non_negative(name: str, value: int) -> None:
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
    check_level(level)
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
