"""Analytic 3-D scenes rendered offline: the TinyNeRF experiment's data.

The paper's Blender scenes (Lego, Hotdog, Drums) cannot be downloaded here,
so three scenes in their spirit are built from coloured primitives (boxes,
ellipsoids and capped cylinders) and rendered by an exact reference renderer:

- ``nerf_blocks`` (as Lego): a toy bulldozer of boxes with studs: flat faces,
  sharp edges, saturated colours;
- ``nerf_food`` (as Hotdog): a plate, a bun, a sausage and mustard: large,
  smooth, rounded shapes in soft colours;
- ``nerf_drums`` (as Drums): a drum kit of cylinders with cymbals on thin
  stands: thin structures, hard for a NeRF with 32 depth samples.

Each scene is an opaque density field (infinite inside a primitive, zero
outside) with a view-independent colour field: a primitive's albedo (its
caps may differ; optional stripes) times a fixed Lambertian light. The
reference renderer intersects every ray with every primitive in closed form
and takes the nearest hit, so a pixel is exact up to its antialiasing: the
mean of 2 x 2 rays per pixel. Background black, as TinyNeRF composites.

Cameras as Blender's synthetic set: on the upper hemisphere (radius 3.5, a little nearer),
looking at the origin, horizontal field of view 0.6911 rad, near 2, far 6.
100 training views and 25 test views, poses drawn from independent streams
of ``data.seed``; ``data.max_train`` / ``data.max_test`` take the first N
instead, ``data.image_size`` sets the side (64 pixels: 4,096 rays a view, as
the paper). Generated on load in about a second per 100 views, deterministic,
never stored.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ocd.data.core import DataError, Dataset
from ocd.params import DataParams

RADIUS, NEAR, FAR = 3.5, 2.0, 6.0
CAMERA_ANGLE_X = 0.6911  # Blender's lego camera
ELEVATION = (10.0, 70.0)  # degrees above the horizon
N_TRAIN, N_TEST = 100, 25
SUPERSAMPLE = 2  # rays per pixel side
LIGHT = np.array([0.4, 0.3, 1.0]) / np.linalg.norm([0.4, 0.3, 1.0])
AMBIENT = 0.35


@dataclass(frozen=True)
class Box:
    centre: tuple
    half: tuple
    colour: tuple

    def hit(self, o, d):
        c, h = np.array(self.centre), np.array(self.half)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (c - h - o) / d, (c + h - o) / d
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        lo = np.where(np.isnan(lo), -np.inf, lo)
        hi = np.where(np.isnan(hi), np.inf, hi)
        t_in, t_out = lo.max(1), hi.min(1)
        t = np.where((t_out >= t_in) & (t_in > 0), t_in, np.inf)
        axis = lo.argmax(1)
        normal = np.zeros_like(o)
        normal[np.arange(len(o)), axis] = -np.sign(d[np.arange(len(o)), axis])
        return t, normal, np.tile(self.colour, (len(o), 1))


@dataclass(frozen=True)
class Ellipsoid:
    centre: tuple
    radii: tuple
    colour: tuple

    def hit(self, o, d):
        c, r = np.array(self.centre), np.array(self.radii)
        oo, dd = (o - c) / r, d / r
        a, b, cc = (dd * dd).sum(1), 2 * (oo * dd).sum(1), (oo * oo).sum(1) - 1
        disc = b * b - 4 * a * cc
        t = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
        t = np.where(t > 0, t, np.inf)
        p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
        normal = (p - c) / r**2
        normal /= np.linalg.norm(normal, axis=1, keepdims=True).clip(1e-12)
        return t, normal, np.tile(self.colour, (len(o), 1))


@dataclass(frozen=True)
class Cylinder:
    """A capped cylinder along ``axis`` (0, 1, 2 = x, y, z); optional cap colour and stripes along the axis."""

    centre: tuple
    radius: float
    half_length: float
    colour: tuple
    axis: int = 2
    cap_colour: tuple | None = None
    stripes: float = 0.0  # stripes per unit length along the axis (0: none)

    def hit(self, o, d):
        c = np.array(self.centre)
        a = self.axis
        side = [i for i in range(3) if i != a]
        oq, dq = (o - c)[:, side], d[:, side]
        qa, qb, qc = (dq * dq).sum(1), 2 * (oq * dq).sum(1), (oq * oq).sum(1) - self.radius**2
        disc = qb * qb - 4 * qa * qc
        with np.errstate(divide="ignore", invalid="ignore"):
            t_side = np.where(disc >= 0, (-qb - np.sqrt(np.maximum(disc, 0))) / (2 * qa), np.inf)
        t_side = np.where(np.isnan(t_side) | (t_side <= 0), np.inf, t_side)
        along = (o - c)[:, a] + np.where(np.isfinite(t_side), t_side, 0) * d[:, a]
        t_side = np.where(np.abs(along) <= self.half_length, t_side, np.inf)
        t_cap, cap_sign = np.full(len(o), np.inf), np.zeros(len(o))
        for sign in (-1.0, 1.0):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (c[a] + sign * self.half_length - o[:, a]) / d[:, a]
            t = np.where(np.isnan(t) | (t <= 0), np.inf, t)
            q = (o - c)[:, side] + np.where(np.isfinite(t), t, 0)[:, None] * dq
            t = np.where((q * q).sum(1) <= self.radius**2, t, np.inf)
            closer = t < t_cap
            t_cap, cap_sign = np.where(closer, t, t_cap), np.where(closer, sign, cap_sign)
        on_cap = t_cap < t_side
        t = np.minimum(t_side, t_cap)
        p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
        normal = np.zeros_like(o)
        normal[:, side] = (p - c)[:, side] / self.radius
        normal[on_cap] = 0
        normal[on_cap, a] = cap_sign[on_cap]
        colour = np.tile(self.colour, (len(o), 1))
        if self.stripes:
            band = 0.8 + 0.2 * np.sign(np.sin(2 * math.pi * self.stripes * (p - c)[:, a]))
            colour = colour * band[:, None]
        if self.cap_colour is not None:
            colour[on_cap] = self.cap_colour
        return t, normal, colour


def _blocks():
    yellow, dark, grey, red = (0.95, 0.75, 0.1), (0.15, 0.15, 0.17), (0.55, 0.55, 0.6), (0.8, 0.15, 0.1)
    prims = [
        Box((0.0, 0.0, -0.55), (0.95, 0.7, 0.05), grey),  # base plate
        Box((0.0, 0.52, -0.35), (0.72, 0.14, 0.15), dark),  # tracks
        Box((0.0, -0.52, -0.35), (0.72, 0.14, 0.15), dark),
        Box((-0.05, 0.0, -0.12), (0.55, 0.38, 0.1), yellow),  # body
        Box((-0.25, 0.0, 0.18), (0.25, 0.3, 0.2), yellow),  # cabin
        Box((-0.02, 0.0, 0.2), (0.02, 0.22, 0.12), (0.3, 0.55, 0.85)),  # window
        Box((0.62, 0.0, -0.08), (0.08, 0.08, 0.22), red),  # arm
        Box((0.8, 0.0, -0.3), (0.12, 0.45, 0.1), yellow),  # blade
        Box((-0.25, 0.0, 0.42), (0.3, 0.34, 0.04), red),  # roof
    ]
    studs = [Cylinder((x, y, 0.03), 0.06, 0.04, yellow) for x in (0.15, 0.35) for y in (-0.22, 0.0, 0.22)]
    return prims + studs


def _food():
    return [
        Cylinder((0.0, 0.0, -0.5), 1.05, 0.04, (0.92, 0.92, 0.88), cap_colour=(0.97, 0.97, 0.95)),  # plate
        Ellipsoid((0.0, 0.22, -0.3), (0.8, 0.24, 0.17), (0.86, 0.6, 0.3)),  # bun
        Ellipsoid((0.0, -0.22, -0.3), (0.8, 0.24, 0.17), (0.82, 0.56, 0.28)),
        Ellipsoid((0.0, 0.0, -0.18), (0.95, 0.15, 0.15), (0.62, 0.22, 0.12)),  # sausage
        *[Ellipsoid((x, 0.05 * (-1) ** i, -0.04), (0.12, 0.05, 0.03), (0.95, 0.8, 0.1))  # mustard
          for i, x in enumerate(np.linspace(-0.6, 0.6, 6))],
        Ellipsoid((0.55, -0.7, -0.42), (0.18, 0.12, 0.06), (0.25, 0.6, 0.2)),  # a pickle
    ]


def _drums():
    red, white, silver, gold, grey = (0.7, 0.08, 0.1), (0.92, 0.9, 0.85), (0.75, 0.75, 0.8), (0.85, 0.68, 0.2), \
        (0.4, 0.4, 0.42)
    return [
        Cylinder((0.0, 0.15, -0.2), 0.45, 0.25, red, axis=1, cap_colour=white, stripes=2.0),  # bass drum
        Cylinder((0.33, -0.1, 0.38), 0.19, 0.1, red, cap_colour=white),  # toms
        Cylinder((-0.33, -0.1, 0.38), 0.19, 0.1, red, cap_colour=white),
        Cylinder((0.62, -0.5, -0.05), 0.22, 0.08, silver, cap_colour=white, stripes=6.0),  # snare
        Cylinder((-0.68, -0.38, -0.25), 0.25, 0.2, red, cap_colour=white),  # floor tom
        Cylinder((0.72, 0.35, 0.72), 0.3, 0.012, gold),  # cymbals
        Cylinder((-0.72, 0.35, 0.62), 0.28, 0.012, gold),
        Cylinder((0.62, -0.5, 0.3), 0.2, 0.01, gold),  # hi-hat
        Cylinder((0.72, 0.35, 0.05), 0.02, 0.67, grey),  # stands
        Cylinder((-0.72, 0.35, 0.0), 0.02, 0.62, grey),
        Cylinder((0.62, -0.5, 0.12), 0.018, 0.18, grey),
    ]


SCENES = {"nerf_blocks": _blocks, "nerf_food": _food, "nerf_drums": _drums}


def focal_length(size: int) -> float:
    return 0.5 * size / math.tan(0.5 * CAMERA_ANGLE_X)


def hemisphere_poses(n: int, rng: np.random.Generator) -> np.ndarray:
    """Camera-to-world poses ``[n, 4, 4]`` (OpenGL axes) on the upper hemisphere, looking at the origin."""
    lo, hi = (math.sin(math.radians(e)) for e in ELEVATION)
    u = rng.uniform(size=(n, 2))  # a row per view: the first k views do not depend on n
    z = lo + (hi - lo) * u[:, 0]  # uniform over the band's area
    phi = 2 * math.pi * u[:, 1]
    pos = RADIUS * np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
    forward = -pos / np.linalg.norm(pos, axis=1, keepdims=True)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    up = np.cross(right, forward)
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, 0], poses[:, :3, 1], poses[:, :3, 2], poses[:, :3, 3] = right, up, -forward, pos
    return poses


def render(primitives, pose: np.ndarray, size: int, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """The exact image ``[size, size, 3]`` of a scene from one pose: nearest hit per ray, ``supersample``^2 rays a pixel."""
    f = focal_length(size)
    sub = (np.arange(size * supersample) + 0.5) / supersample  # sub-pixel centres, in pixels
    j, i = np.meshgrid(sub, sub, indexing="ij")
    dirs = np.stack([(i - 0.5 * size) / f, -(j - 0.5 * size) / f, -np.ones_like(i)], -1).reshape(-1, 3)
    d = dirs @ pose[:3, :3].T
    o = np.broadcast_to(pose[:3, 3], d.shape)
    best = np.full(len(d), np.inf)
    colour = np.zeros((len(d), 3))
    for prim in primitives:
        t, normal, albedo = prim.hit(o, d)
        closer = t < best
        shade = AMBIENT + (1 - AMBIENT) * np.clip(normal @ LIGHT, 0, None)
        colour[closer] = albedo[closer] * shade[closer, None]
        best = np.where(closer, t, best)
    image = colour.reshape(size, supersample, size, supersample, 3).mean((1, 3))
    return np.clip(image, 0, 1)


@functools.lru_cache(maxsize=4)
def generate(name: str, seed: int, size: int, n_train: int, n_test: int):
    """(train poses, train images, test poses, test images) as float32 arrays; images ``[N, size, size, 3]``."""
    prims = SCENES[name]()
    out = []
    for stream, n in ((0, n_train), (1, n_test)):
        poses = hemisphere_poses(n, np.random.default_rng([seed, stream]))
        images = np.stack([render(prims, p, size) for p in poses]) if n else np.zeros((0, size, size, 3))
        out += [poses.astype(np.float32), images.astype(np.float32)]
    return tuple(out)


def load_scene(name: str, params: DataParams) -> Dataset:
    # caps, as for every dataset: at most the scene's 100 / 25 views
    n_train = min(params.max_train or N_TRAIN, N_TRAIN)
    n_test = min(params.max_test or N_TEST, N_TEST)
    if n_train < 2 or n_test < 1:
        raise DataError(f"{name}: needs at least 2 training views and 1 test view (data.max_train, data.max_test)")
    size = params.image_size
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in generate(name, params.seed, size, n_train, n_test))
    camera = {"height": size, "width": size, "focal": focal_length(size), "near": NEAR, "far": FAR}
    info = {"source": f"ocd.data.scenes.{name}: analytic primitives, exact ray casting, "
                      f"{SUPERSAMPLE}x{SUPERSAMPLE} rays per pixel",
            "split": f"{n_train} train / {n_test} test poses on the upper hemisphere, seed {params.seed}",
            "camera": camera, "n_train": n_train, "n_test": n_test, "n_cal": 0}
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    return Dataset(name, "rendering", x_train, flat(y_train), x_test, flat(y_test), size * size * 3, info,
                   {"height": size, "width": size})
