"""Scenes: procedurally ray-cast 3D scenes with exact dense ground truth (embedded, no download).

Each image is a room box (floor y=0, four walls at x, z = +-ROOM_HALF, ceiling y=CEILING;
world y is up, metres) holding up to ``max_objects`` primitives standing on the floor:
spheres, axis-aligned boxes and vertical cylinders. A pinhole camera (focal length from
FOV_DEG over the shorter image side, principal point at the image centre, square
pixels) stands inside the room at a seeded pose looking towards its centre; every pixel
casts one ray through its centre and keeps the nearest hit (a z-buffer), in numpy,
vectorised over the pixels of a chunk of images. Shading is Lambertian + ambient under
a seeded directional light (no shadows); every surface (floor, each wall, each object)
gets a seeded procedural texture (3D checker, stripes or sine bands in two random
colours drawn from one distribution for all classes), so RGB alone does not give the
class. All targets are exact functions of the geometry, so tasks are related through it:

- ``seg``: int64 [H,W] classes 0 floor, 1 wall (the four walls and the ceiling),
  2 sphere, 3 box, 4 cylinder (``CLASSES``); every pixel hits a surface, so no -1;
- ``depth``: float32 [1,H,W], the camera z-distance (metres) of the hit, always > 0;
- ``normal``: float32 [3,H,W], the unit surface normal in camera coordinates (OpenCV
  frame: x right, y down, z forward), always facing the camera (n . ray < 0);
- ``edge``: float32 [1,H,W] in {0,1}, object boundaries: 1 at both pixels of every
  4-neighbour pair lying on different surfaces (room faces and objects are separate
  surfaces). Primitives are convex, so every occlusion contour (depth discontinuity) is
  such a boundary; contact lines and room corners are also marked;
- ``keypoint``: float32 [1,H,W] in [0,1], a heat map of Gaussian blobs (sigma =
  KP_SIGMA px at 64 px, scaled with the image) at the projections of the *visible*
  3D keypoints: the 8 room corners, the 8 corners of each box, the centre of each
  cylinder's top and the point of each sphere nearest the camera; visibility is
  exact (a ray cast to the point must not hit anything nearer); blobs combine by max.

The RGB input is float32 [3,H,W] in [0,1], stored 8-bit. Generation is deterministic in
``split_seed`` (numpy ``default_rng`` seeded by (split_seed, split), so the splits are
independent draws and resizing one leaves the others unchanged) and cached as ``.npz``
under ``<data_root>/scenes/`` (written atomically: temp file + rename). The classes and
tasks mirror NYUv2's (13-class seg, depth, normals; Eigen & Fergus 2015) and Taskonomy's
edge/keypoint tasks (Zamir et al. 2018), at toy scale.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from mtlbench.core.data import MTLData, TensorSplit, cached_arrays
from mtlbench.tasks.dense import DenseConventions, DepthTask, L1Task, NormalTask, SegmentationTask
from mtlbench.core.registry import DATASETS

CLASSES = ("floor", "wall", "sphere", "box", "cylinder")
ROOM_HALF, CEILING, FOV_DEG, KP_SIGMA = 4.0, 3.0, 60.0, 1.5
SPHERE, BOX, CYLINDER = 0, 1, 2   # object kinds; class = kind + 2; -1 = empty slot
N_ROOM = 6                        # instance ids: 0 floor, 1/2 walls -x/+x, 3/4 walls -z/+z, 5 ceiling
ROOM_INST = np.array([[1, 2], [0, 5], [3, 4]])  # [axis, ray goes +] -> room instance
CHUNK = 64
VERSION = 1


def focal(h: int, w: int) -> float:
    """Focal length in pixels: FOV_DEG spans the shorter image side."""
    return 0.5 * min(h, w) / np.tan(np.radians(FOV_DEG) / 2)


def pixel_rays(h: int, w: int) -> np.ndarray:
    """Camera-frame ray directions [h*w, 3] through pixel centres, z component 1 (so the
    ray parameter of a hit is its camera z-depth)."""
    f = focal(h, w)
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    return np.stack([(u - w / 2) / f, (v - h / 2) / f, np.ones_like(u)], -1).reshape(-1, 3)


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def sample_scenes(rng: np.random.Generator, n: int, max_objects: int) -> dict:
    """Seeded parameters of ``n`` scenes: camera (R world->camera rows [right, down,
    forward], origin), light, objects (kind [n,K], params [n,K,5] = cx, cz, a, b, height)
    and textures for the N_ROOM + K surfaces."""
    theta, rad, hgt = rng.uniform(0, 2 * np.pi, n), rng.uniform(2.6, 3.4, n), rng.uniform(1.2, 2.0, n)
    origin = np.stack([rad * np.cos(theta), hgt, rad * np.sin(theta)], -1)
    target = np.stack([rng.uniform(-.4, .4, n), rng.uniform(.2, .5, n), rng.uniform(-.4, .4, n)], -1)
    fwd = _unit(target - origin)
    right = _unit(np.cross(fwd, [0.0, 1.0, 0.0]))
    R = np.stack([right, np.cross(fwd, right), fwd], 1)
    light = _unit(np.stack([rng.uniform(-1, 1, n), rng.uniform(.5, 1.5, n), rng.uniform(-1, 1, n)], -1))
    ambient = rng.uniform(0.25, 0.45, n)
    K = max_objects
    kinds, prm = np.full((n, K), -1, np.int64), np.zeros((n, K, 5))
    for i in range(n):
        placed = []  # (x, z, footprint radius)
        for k in range(int(rng.integers(min(1, K), K + 1))):
            kind = int(rng.integers(0, 3))
            if kind == SPHERE:
                r = rng.uniform(.25, .55)
                a, b, top, foot = r, r, 2 * r, r
            elif kind == BOX:
                a, b, top = rng.uniform(.2, .5), rng.uniform(.2, .5), rng.uniform(.3, 1.)
                foot = np.hypot(a, b)
            else:
                a = b = rng.uniform(.2, .45)
                top, foot = rng.uniform(.4, 1.1), a
            for _ in range(20):  # rejection sampling: footprints do not overlap
                x, z = rng.uniform(-1.8, 1.8, 2)
                if np.hypot(x, z) + foot <= 2.5 and all(np.hypot(x - p, z - q) > foot + s for p, q, s in placed):
                    placed.append((x, z, foot))
                    kinds[i, k], prm[i, k] = kind, (x, z, a, b, top)
                    break
    m = N_ROOM + K
    tex = {"c1": rng.uniform(.1, .95, (n, m, 3)), "c2": rng.uniform(.1, .95, (n, m, 3)),
           "pattern": rng.integers(0, 3, (n, m)), "freq": rng.uniform(1.0, 3.0, (n, m)),
           "axis": _unit(rng.normal(size=(n, m, 3))), "phase": rng.uniform(.1, .9, (n, m, 3))}
    return {"R": R, "origin": origin, "light": light, "ambient": ambient, "kinds": kinds, "prm": prm, **tex}


# ----------------------------------------------------------------------------- ray casting
def _sphere(o, d, dd, p):
    c = np.stack([p[:, 0], p[:, 2], p[:, 1]], -1)  # centre (cx, r, cz)
    oc, r = o - c, p[:, 2]
    b = np.einsum("mpk,mk->mp", d, oc)
    disc = b * b - dd * ((oc * oc).sum(-1) - r * r)[:, None]
    t = (-b - np.sqrt(np.maximum(disc, 0))) / dd
    t = np.where((disc >= 0) & (t > 0), t, np.inf)
    n = (o[:, None] + np.where(np.isfinite(t), t, 0)[..., None] * d - c[:, None]) / r[:, None, None]
    return t, n


def _box(o, d, inv, p):
    lo = np.stack([p[:, 0] - p[:, 2], np.zeros(len(p)), p[:, 1] - p[:, 3]], -1)
    hi = np.stack([p[:, 0] + p[:, 2], p[:, 4], p[:, 1] + p[:, 3]], -1)
    t1, t2 = (lo - o)[:, None] * inv, (hi - o)[:, None] * inv
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    axis = tmin.argmax(-1)
    tnear = np.take_along_axis(tmin, axis[..., None], -1)[..., 0]
    t = np.where((tnear <= tmax.min(-1)) & (tnear > 0), tnear, np.inf)
    return t, _axis_normal(d, axis)


def _cylinder(o, d, p):
    ox, oz = (o[:, 0] - p[:, 0])[:, None], (o[:, 2] - p[:, 1])[:, None]
    r, top = p[:, 2][:, None], p[:, 4][:, None]
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    a, b, c = dx * dx + dz * dz, ox * dx + oz * dz, ox * ox + oz * oz - r * r
    disc = b * b - a * c
    ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
    y = o[:, 1][:, None] + ts * dy
    ts = np.where((disc >= 0) & (ts > 0) & (y >= 0) & (y <= top), ts, np.inf)
    tc = (top - o[:, 1][:, None]) / dy
    xc, zc = ox + tc * dx, oz + tc * dz
    tc = np.where((dy < 0) & (tc > 0) & (xc * xc + zc * zc <= r * r), tc, np.inf)
    cap = tc < ts
    tside = np.where(np.isfinite(ts), ts, 0)
    side_n = np.stack([ox + tside * dx, np.zeros_like(dx), oz + tside * dz], -1) / r[..., None]
    n = np.where(cap[..., None], np.array([0.0, 1.0, 0.0]), side_n)
    return np.minimum(ts, tc), n


def _axis_normal(d, axis):
    """Unit normals along ``axis`` facing against the ray: -sign(d[axis]) e_axis."""
    n = np.zeros_like(d)
    da = np.take_along_axis(d, axis[..., None], -1)
    np.put_along_axis(n, axis[..., None], -np.sign(da), -1)
    return n


def cast(o, d, kinds, prm):
    """Nearest hit of the rays ``o[n] + t d[n, P]``: (t [n,P], surface id [n,P], world normal [n,P,3])."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        pos = d > 0
        walls = np.where(pos, [ROOM_HALF, CEILING, ROOM_HALF], [-ROOM_HALF, 0.0, -ROOM_HALF])
        ta = np.where(d == 0, np.inf, (walls - o[:, None]) / d)
        axis = ta.argmin(-1)
        t = np.take_along_axis(ta, axis[..., None], -1)[..., 0]
        inst = ROOM_INST[axis, np.take_along_axis(pos, axis[..., None], -1)[..., 0].astype(int)]
        nrm = _axis_normal(d, axis)
        dd, inv = (d * d).sum(-1), 1.0 / d
        for k in range(kinds.shape[1]):
            for kind in (SPHERE, BOX, CYLINDER):
                idx = np.nonzero(kinds[:, k] == kind)[0]
                if idx.size == 0:
                    continue
                p = prm[idx, k]
                if kind == SPHERE:
                    tk, nk = _sphere(o[idx], d[idx], dd[idx], p)
                elif kind == BOX:
                    tk, nk = _box(o[idx], d[idx], inv[idx], p)
                else:
                    tk, nk = _cylinder(o[idx], d[idx], p)
                near = tk < t[idx]
                t[idx] = np.where(near, tk, t[idx])
                inst[idx] = np.where(near, N_ROOM + k, inst[idx])
                nrm[idx] = np.where(near[..., None], nk, nrm[idx])
    return t, inst, nrm


# ----------------------------------------------------------------------------- images and targets
def _gather(table, inst):
    """Per-pixel values of a per-surface table [n, m, ...] at surface ids [n, P]."""
    idx = inst.reshape(inst.shape + (1,) * (table.ndim - 2))
    return np.take_along_axis(table, idx, 1)


def _albedo(s, pts, inst):
    freq = _gather(s["freq"], inst)
    c1, c2 = _gather(s["c1"], inst), _gather(s["c2"], inst)
    checker = np.floor(pts * freq[..., None] + _gather(s["phase"], inst)).sum(-1) % 2
    band = freq * (pts * _gather(s["axis"], inst)).sum(-1) + _gather(s["phase"], inst)[..., 0]
    pat = _gather(s["pattern"], inst)
    mix = np.where(pat == 0, checker, np.where(pat == 1, np.floor(band) % 2, 0.5 + 0.5 * np.sin(2 * np.pi * band)))
    return c1 + (c2 - c1) * mix[..., None]


def _keypoints(s, h, w):
    """Visible keypoints' heat map [n, h, w] (see the module docstring)."""
    n, K = s["kinds"].shape
    L = ROOM_HALF
    room = np.array([[x, y, z] for x in (-L, L) for y in (0.0, CEILING) for z in (-L, L)])
    pts, valid = np.zeros((n, 8 + 8 * K, 3)), np.zeros((n, 8 + 8 * K), bool)
    pts[:, :8], valid[:, :8] = room, True
    sign = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (0, 1) for sz in (-1, 1)])
    for k in range(K):
        kind, (cx, cz, a, b, top) = s["kinds"][:, k], np.moveaxis(s["prm"][:, k], -1, 0)
        sl = slice(8 + 8 * k, 16 + 8 * k)
        box = np.stack([cx[:, None] + sign[:, 0] * a[:, None], sign[:, 1] * top[:, None],
                        cz[:, None] + sign[:, 2] * b[:, None]], -1)
        c = np.stack([cx, a, cz], -1)
        near = c + a[:, None] * _unit(s["origin"] - c)  # sphere point nearest the camera
        one = np.where((kind == SPHERE)[:, None], near, np.stack([cx, top, cz], -1))
        pts[:, sl] = np.where((kind == BOX)[:, None, None], box, one[:, None])
        valid[:, sl] = (kind == BOX)[:, None] | (((kind == SPHERE) | (kind == CYLINDER))[:, None] & (np.arange(8) == 0))
    rel = pts - s["origin"][:, None]
    cam = np.einsum("nij,nqj->nqi", s["R"], rel)
    z = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t, _, _ = cast(s["origin"], rel / z[..., None], s["kinds"], s["prm"])
        f = focal(h, w)
        u, v = f * cam[..., 0] / z + w / 2, f * cam[..., 1] / z + h / 2
    vis = valid & (z > 1e-6) & (t >= z * (1 - 1e-6)) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    sigma = KP_SIGMA * max(h, w) / 64
    gx = np.exp(-((np.arange(w) + 0.5 - np.where(vis, u, -1e3)[..., None]) ** 2) / (2 * sigma ** 2))
    gy = np.exp(-((np.arange(h) + 0.5 - np.where(vis, v, -1e3)[..., None]) ** 2) / (2 * sigma ** 2))
    heat = np.zeros((n, h, w))
    for q in np.nonzero(vis.any(0))[0]:
        np.maximum(heat, gy[:, q, :, None] * gx[:, q, None, :] * vis[:, q, None, None], out=heat)
    return heat


def render(s: dict, h: int, w: int) -> dict:
    """Render scenes ``s`` (from ``sample_scenes``) at ``h`` x ``w``: the arrays of one
    chunk (rgb uint8 [n,3,h,w], seg, depth, normal, edge, keypoint)."""
    n = len(s["origin"])
    d = np.einsum("pk,nkj->npj", pixel_rays(h, w), s["R"])  # world rays = R^T ray_cam
    t, inst, nw = cast(s["origin"], d, s["kinds"], s["prm"])
    pts = s["origin"][:, None] + t[..., None] * d
    shade = s["ambient"][:, None] + (1 - s["ambient"][:, None]) * np.maximum(
        np.einsum("npk,nk->np", nw, s["light"]), 0)
    rgb = np.clip(_albedo(s, pts, inst) * shade[..., None], 0, 1)
    cls = np.concatenate([np.tile([0, 1, 1, 1, 1, 1], (n, 1)), s["kinds"] + 2], 1)
    inst = inst.reshape(n, h, w)
    edge = np.zeros((n, h, w), bool)
    for ax in (1, 2):
        a, b = [slice(None)] * 3, [slice(None)] * 3
        a[ax], b[ax] = slice(1, None), slice(None, -1)
        diff = inst[tuple(a)] != inst[tuple(b)]
        edge[tuple(a)] |= diff
        edge[tuple(b)] |= diff
    # C-contiguous, so a fresh build and a cache load give tensors of one layout (same float sums)
    chw = lambda x: np.ascontiguousarray(np.moveaxis(x.reshape(n, h, w, -1), -1, 1))  # noqa: E731
    return {"rgb": np.round(chw(rgb) * 255).astype(np.uint8),
            "seg": np.take_along_axis(cls, inst.reshape(n, -1), 1).reshape(n, h, w).astype(np.int8),
            "depth": chw(t).astype(np.float32),
            "normal": chw(_unit(np.einsum("nij,npj->npi", s["R"], nw))).astype(np.float32),
            "edge": edge[:, None].astype(np.uint8),
            "keypoint": _keypoints(s, h, w)[:, None].astype(np.float32)}


def generate(split_seed: int, sizes: dict, size=(64, 64), max_objects: int = 5) -> dict:
    """All splits' arrays (``<split>_<array>``) plus each image's camera (``<split>_R``,
    ``<split>_origin``) and the focal length; deterministic in ``split_seed``."""
    h, w = size
    out = {"focal": np.float64(focal(h, w))}
    for j, split in enumerate(("train", "val", "test")):
        rng = np.random.default_rng([j, int(split_seed) % 2**63])
        s = sample_scenes(rng, sizes[split], max_objects)
        chunks = [render({k: v[i:i + CHUNK] for k, v in s.items()}, h, w) for i in range(0, sizes[split], CHUNK)]
        for k in chunks[0]:
            out[f"{split}_{k}"] = np.concatenate([c[k] for c in chunks])
        out[f"{split}_R"], out[f"{split}_origin"] = s["R"], s["origin"]
    return out


def _cached(root, split_seed: int, sizes: dict, size, max_objects: int) -> dict:
    spec = {"seed": int(split_seed), **sizes, "size": list(size), "max_objects": max_objects, "v": VERSION}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(root) / "scenes" / f"scenes-{key}.npz" if root else None
    return cached_arrays(path, lambda: generate(split_seed, sizes, size, max_objects))


def _size(size):
    hw = [size, size] if isinstance(size, int) else list(size)
    if len(hw) != 2 or not all(isinstance(v, int) and v >= 8 for v in hw):
        raise ValueError(f"dataset.size must be [H, W] with integers >= 8 (got {size!r})")
    return hw


@DATASETS.register("scenes")
def scenes(root=None, split_seed: int = 0, n_train: int = 2400, n_val: int = 300, n_test: int = 300,
           size=(64, 64), max_objects: int = 5, upsample_align_corners: bool = True,
           metric_aggregation: str = "pixel", miou_classes: str = "union") -> MTLData:
    """All five tasks (seg, depth, normal, edge, keypoint); the config's ``tasks`` picks
    a subset (default seg, depth, normal, also in ``info['default_tasks']``); the dense
    conventions' keys as in ``mtlbench.tasks.dense``."""
    conv = DenseConventions(upsample_align_corners, metric_aggregation, miou_classes)
    sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    if min(sizes.values()) < 1 or int(max_objects) < 0:
        raise ValueError(f"scenes needs n_train, n_val, n_test >= 1 and max_objects >= 0 (got {sizes}, {max_objects})")
    hw = _size(size)
    arrays = _cached(root, split_seed, sizes, hw, int(max_objects))
    splits = {}
    for s in ("train", "val", "test"):
        a = lambda k: torch.from_numpy(arrays[f"{s}_{k}"])  # noqa: E731
        splits[s] = TensorSplit(a("rgb").float().div_(255.0), {
            "seg": a("seg").long(), "depth": a("depth"), "normal": a("normal"),
            "edge": a("edge").float(), "keypoint": a("keypoint")})
    tasks = [SegmentationTask("seg", num_classes=len(CLASSES), ignore_index=-1, conventions=conv),
             DepthTask("depth", conventions=conv), NormalTask("normal", conventions=conv),
             L1Task("edge", 1, conventions=conv), L1Task("keypoint", 1, conventions=conv)]
    return MTLData("scenes", tasks, (3, *hw), splits,
                   info={"classes": list(CLASSES), "default_tasks": ["seg", "depth", "normal"],
                         "focal_px": float(arrays["focal"]), "source": "procedural ray casting (datasets/scenes.py)"})
