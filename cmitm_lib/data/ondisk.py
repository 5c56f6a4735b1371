"""Records meet the disk: each record pointed at its cached copy when the preprocessing cache holds one,
and the images missing on disk counted (and, with ``check_images=True``, dropped), never silently."""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

from .images import mirror_path


def resolve_images(parts: list[list], root: Path, check_images: bool, cache_dir, skipped: Counter,
                   stacklevel: int = 3) -> list[list]:
    """Point records at cached copies, then count (and, with check_images, drop) missing images.
    `stacklevel` makes the warnings point at the caller of the public reader."""
    missing, n_cached, out = [], 0, []
    for part in parts:
        kept = []
        for r in part:
            cached = mirror_path(r.image, root, cache_dir) if cache_dir is not None else None
            if cached is not None and cached.is_file():
                r.image = str(cached)
                n_cached += 1
            elif not os.path.isfile(r.image):
                missing.append(r.image)
                if check_images:
                    continue
            kept.append(r)
        out.append(kept)
    if missing:
        key = "image missing" if check_images else "image missing (kept)"
        skipped[key] += len(missing)
        warnings.warn(f"{len(missing)} image(s) missing on disk, {'dropped' if check_images else 'kept'} "
                      f"and counted in skipped[{key!r}]; e.g. {missing[:3]}", stacklevel=stacklevel)
    if cache_dir is not None and n_cached == 0:
        warnings.warn(f"cache_dir {cache_dir} holds none of these images (was it built for root {root}?)",
                      stacklevel=stacklevel)
    return out
