"""The rendered scenes: exact ray casting, poses, determinism and the dataset entries."""

import math

import numpy as np
import pytest

from ocd.data.core import DataError
from ocd.data.registry import load_dataset
from ocd.data.scenes import FAR, NEAR, RADIUS, SCENES, Box, Cylinder, Ellipsoid, hemisphere_poses, load_scene, render
from ocd.params import DataParams


def _inside(prim, p):
    c = np.array(prim.centre)
    if isinstance(prim, Box):
        return np.all(np.abs(p - c) <= np.array(prim.half), axis=-1)
    if isinstance(prim, Ellipsoid):
        return (((p - c) / np.array(prim.radii)) ** 2).sum(-1) <= 1
    side = [i for i in range(3) if i != prim.axis]
    q = (p - c)[..., side]
    return ((q * q).sum(-1) <= prim.radius**2) & (np.abs((p - c)[..., prim.axis]) <= prim.half_length)


@pytest.mark.parametrize("name", sorted(SCENES))
def test_the_exact_hit_equals_a_fine_march_through_the_density(name):
    """The first point inside a primitive along each ray, found by marching 20,000 steps
    through the scene's density, lies where the closed-form intersection says."""
    rng = np.random.default_rng(0)
    prims = SCENES[name]()
    o = np.tile(hemisphere_poses(1, rng)[0, :3, 3], (300, 1))
    target = rng.uniform(-0.8, 0.8, (300, 3))
    d = target - o
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    ts = np.linspace(NEAR, FAR, 20_000)
    pts = o[:, None] + ts[None, :, None] * d[:, None]
    occupied = np.zeros(pts.shape[:2], bool)
    for prim in prims:
        occupied |= _inside(prim, pts)
    first = np.where(occupied.any(1), ts[occupied.argmax(1)], np.inf)
    exact = np.min([prim.hit(o, d)[0] for prim in prims], axis=0)
    hit = np.isfinite(first)
    assert hit.sum() > 50 and np.array_equal(hit, np.isfinite(exact))
    step = ts[1] - ts[0]
    assert np.all(np.abs(first[hit] - exact[hit]) <= step + 1e-9)


def test_the_normals_face_the_camera_and_have_unit_length():
    o = np.array([[0.0, 0.0, 4.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    d = -o / 4.0
    for prim in (Box((0, 0, 0), (0.5, 0.5, 0.5), (1, 1, 1)), Ellipsoid((0, 0, 0), (0.5, 0.3, 0.4), (1, 1, 1)),
                 Cylinder((0, 0, 0), 0.5, 0.4, (1, 1, 1), axis=1)):
        t, normal, _ = prim.hit(o, d)
        assert np.all(np.isfinite(t))
        np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1.0, atol=1e-9)
        assert np.all((normal * d).sum(1) < 0), type(prim).__name__


def test_poses_lie_on_the_hemisphere_and_look_at_the_centre():
    poses = hemisphere_poses(50, np.random.default_rng(1))
    pos, forward = poses[:, :3, 3], -poses[:, :3, 2]
    np.testing.assert_allclose(np.linalg.norm(pos, axis=1), RADIUS)
    elevation = np.degrees(np.arcsin(pos[:, 2] / RADIUS))
    assert elevation.min() >= 10 - 1e-9 and elevation.max() <= 70 + 1e-9
    np.testing.assert_allclose(np.cross(forward, -pos), 0, atol=1e-9)  # looking at the origin
    np.testing.assert_allclose(poses[:, :3, :3] @ poses[:, :3, :3].transpose(0, 2, 1), np.tile(np.eye(3), (50, 1, 1)),
                               atol=1e-9)


def test_a_scene_is_deterministic_from_its_seed_and_caps_take_the_first_views():
    a = load_scene("nerf_blocks", DataParams(name="nerf_blocks", image_size=8, max_train=5, max_test=2))
    b = load_scene("nerf_blocks", DataParams(name="nerf_blocks", image_size=8, max_train=5, max_test=2))
    more = load_scene("nerf_blocks", DataParams(name="nerf_blocks", image_size=8, max_train=7, max_test=2))
    other = load_scene("nerf_blocks", DataParams(name="nerf_blocks", seed=1, image_size=8, max_train=5, max_test=2))
    assert a.x_train.shape == (5, 4, 4) and a.y_train.shape == (5, 8 * 8 * 3) and a.task == "rendering"
    assert np.array_equal(a.y_train, b.y_train) and np.array_equal(a.x_train, more.x_train[:5])
    assert not np.array_equal(a.x_train, other.x_train)
    assert 0 < float(a.y_train.mean()) < 1 and float(a.y_train.max()) <= 1
    assert a.info["camera"]["focal"] == pytest.approx(0.5 * 8 / math.tan(0.5 * 0.6911))
    assert a.x_cal is None  # no temperature for images of colours


def test_a_cap_above_the_scene_size_keeps_the_scene_size():
    data = load_scene("nerf_food", DataParams(name="nerf_food", image_size=2, max_train=500, max_test=90))
    assert (len(data.y_train), len(data.y_test)) == (100, 25)


def test_the_three_scenes_differ_and_are_named_in_the_registry():
    images = [render(SCENES[n](), hemisphere_poses(1, np.random.default_rng(0))[0], 16) for n in sorted(SCENES)]
    assert all(not np.allclose(images[0], im) for im in images[1:])
    with pytest.raises(DataError, match="nerf_blocks.*nerf_drums.*nerf_food"):
        load_dataset(DataParams(name="nerf_lego"))
    with pytest.raises(DataError, match="at least 2 training views"):
        load_scene("nerf_food", DataParams(name="nerf_food", max_train=1))
