"""TinyNeRF (Murthy, 2020), the paper's novel-view-synthesis model, as a model family.

As in the OCD authors' code: 3-D points along each camera ray are encoded
with ``frequencies`` sine/cosine pairs per axis (``3 + 6 * frequencies``
numbers), passed through three Linear layers (``layer1``, ``layer2`` of width
128 with ReLU, ``layer3`` to RGB and density), and volume-rendered with
``depth_samples`` depths between ``near`` and ``far``; no view dependence.

A sample is one camera view: its input ``x`` is the camera-to-world pose
``[4, 4]`` (OpenGL axes, as Blender's transforms), its output the rendered
image flattened to ``[H * W * 3]``. Cut at a layer (:meth:`TinyNeRF.cut`),
the layer sees a *set* of inputs per view, one per point (P = H W S: 131,072
for 64 x 64 pixels and 32 depths), the layer contract of ocd.models.cut:

- ``enter``: rays of the view, points, encoding and the layers before the cut;
  the context is the view's depths ``[S]``, which rendering needs;
- ``leave``: the layers after the cut and volume rendering;
- ``point_weights``: the base model's rendering weights ``T_i alpha_i`` of
  every point, so the conditioning is the transmittance-weighted mean of the
  layer's input and activation over the view (the authors' choice);
- ``encode_output``: a fixed image encoder (``model.encoder``, below).

Base training (:meth:`TinyNeRF.fit`) is NeRF's: minibatches of random rays
from all training views (``base.batch_size`` rays a step; an epoch is one
pass over every training ray), with depths jittered within their bins
(stratified sampling); evaluation and overfitting use the fixed bin starts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ocd.device import generator
from ocd.models.cut import LayerCut, LayerInput, ModelError
from ocd.models.fit import fit_minibatches

JITTER_STREAM = 1  # the depth jitter's draws: base.seed + 1, apart from the ray order's (base.seed)

# The conditioning's encoding of the rendered image. The authors used an
# ImageNet VGG-11, whose weights cannot be downloaded here; a network with
# random weights would be an arbitrary choice dressed up. ``thumbnail``: the
# image averaged down to 8 x 8 pixels (192 numbers): fixed, parameter-free,
# and it keeps what the view shows where. ``random``: a fixed Gaussian random
# projection of the whole image to 256 numbers (Johnson-Lindenstrauss: it
# keeps distances between images), seed 0.
ENCODERS = ("thumbnail", "random")
THUMBNAIL = 8
RANDOM_DIM = 256


def encode_points(points: torch.Tensor, frequencies: int) -> torch.Tensor:
    """[..., 3] -> [..., 3 + 6 L]: the point, then sin and cos of 2^k times it, k < L."""
    parts = [points]
    for k in range(frequencies):
        parts += [torch.sin(2.0**k * points), torch.cos(2.0**k * points)]
    return torch.cat(parts, dim=-1)


def camera_rays(poses: torch.Tensor, height: int, width: int, focal: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and directions ``[B, H * W, 3]`` through the pixel centres of each pose ``[B, 4, 4]``."""
    j, i = torch.meshgrid(torch.arange(height, dtype=poses.dtype, device=poses.device) + 0.5,
                          torch.arange(width, dtype=poses.dtype, device=poses.device) + 0.5, indexing="ij")
    dirs = torch.stack([(i - 0.5 * width) / focal, -(j - 0.5 * height) / focal, -torch.ones_like(i)], dim=-1)
    rays_d = torch.einsum("pc,brc->bpr", dirs.reshape(-1, 3), poses[:, :3, :3])
    rays_o = poses[:, None, :3, 3].expand_as(rays_d)
    return rays_o, rays_d


def composite(rgb: torch.Tensor, sigma: torch.Tensor, depths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Volume rendering along rays: rgb ``[..., S, 3]``, sigma ``[..., S]``, depths ``[..., S]``
    (broadcast) -> (colour ``[..., 3]`` on black, weights ``[..., S]``)."""
    gaps = depths[..., 1:] - depths[..., :-1]
    gaps = torch.cat([gaps, torch.full_like(gaps[..., :1], 1e10)], dim=-1)
    alpha = 1 - torch.exp(-sigma * gaps)
    # transmittance before each sample: the exclusive cumulative product of (1 - alpha)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1] + 1e-10], -1), -1)
    weights = alpha * trans
    return (weights[..., None] * rgb).sum(-2), weights


class TinyNeRF(nn.Module):
    def __init__(self, height: int, width: int, focal: float, near: float, far: float,
                 depth_samples: int = 32, frequencies: int = 10, hidden: int = 128, encoder: str = "thumbnail"):
        super().__init__()
        if encoder not in ENCODERS:
            raise ModelError(f"unknown image encoder {encoder!r}; valid: {', '.join(ENCODERS)}")
        self.height, self.width, self.focal = int(height), int(width), float(focal)
        self.frequencies, self.encoder = int(frequencies), encoder
        self.layer1 = nn.Linear(3 + 6 * self.frequencies, hidden)
        self.layer2 = nn.Linear(hidden, hidden)
        self.layer3 = nn.Linear(hidden, 4)
        self.register_buffer("depths", torch.linspace(near, far, depth_samples + 1)[:-1], persistent=False)
        self.bin = (far - near) / depth_samples
        # views per batched pass: about 2^19 points
        self.rows_per_pass = max(1, 2**19 // (self.height * self.width * depth_samples))

    # -- the forward pass, in the pieces the cut needs

    @property
    def chain(self) -> list[nn.Linear]:
        return [self.layer1, self.layer2, self.layer3]

    def _run(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Layers ``start..stop-1`` of the chain on h, with the ReLU after each hidden layer."""
        for i in range(start, stop):
            h = self.chain[i](h)
            if i < len(self.chain) - 1:
                h = F.relu(h)
        return h

    def points(self, poses: torch.Tensor) -> torch.Tensor:
        """Encoded points of every ray of every view: ``[B, H * W * S, 3 + 6 L]``."""
        rays_o, rays_d = camera_rays(poses, self.height, self.width, self.focal)
        pts = rays_o[..., None, :] + rays_d[..., None, :] * self.depths[:, None]  # [B, HW, S, 3]
        return encode_points(pts, self.frequencies).flatten(1, 2)

    def render(self, raw: torch.Tensor, depths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs ``[B, HW * S, 4]`` and depths ``[B, S]`` -> (images ``[B, HW * 3]``, weights ``[B, HW, S]``)."""
        raw = raw.unflatten(1, (self.height * self.width, -1))
        rgb, weights = composite(torch.sigmoid(raw[..., :3]), F.relu(raw[..., 3]), depths[:, None, :])
        return rgb.flatten(1), weights

    def view_depths(self, n: int) -> torch.Tensor:
        return self.depths.expand(n, -1)

    def forward(self, poses: torch.Tensor) -> torch.Tensor:
        """Rendered images ``[B, H * W * 3]`` of the poses ``[B, 4, 4]``."""
        return self.render(self._run(self.points(poses), 0, 3), self.view_depths(len(poses)))[0]

    # -- the layer contract

    def cut(self, name: str) -> LayerCut:
        names = ["layer1", "layer2", "layer3"]
        i = names.index(name)
        last = i == len(names) - 1

        def enter(poses):
            return LayerInput(self._run(self.points(poses), 0, i), self.view_depths(len(poses)))

        def rest(z):
            return z if last else self._run(F.relu(z), i + 1, 3)

        def leave(z, depths):
            return self.render(rest(z), depths)[0]

        def point_weights(z, depths):
            w = self.render(rest(z), depths)[1].flatten(1)  # [B, HW * S]
            total = w.sum(1, keepdim=True)
            # a view that sees nothing: every point weighs the same
            return torch.where(total > 1e-8, w / total.clamp_min(1e-8), torch.full_like(w, 1 / w.shape[1]))

        return LayerCut(name, self.chain[i], enter, leave, activation=(lambda z: z) if last else F.relu,
                        point_weights=point_weights, encode_output=self.encode_image,
                        output_grid=(3, THUMBNAIL, THUMBNAIL) if self.encoder == "thumbnail" else ())

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """The conditioning's encoding of rendered images ``[B, H * W * 3]`` (``model.encoder``)."""
        if self.encoder == "thumbnail":
            img = images.view(-1, self.height, self.width, 3).permute(0, 3, 1, 2)
            return F.adaptive_avg_pool2d(img, THUMBNAIL).flatten(1)
        gen = generator(0)  # one fixed projection for every model
        proj = torch.randn(images.shape[1], RANDOM_DIM, generator=gen) / math.sqrt(images.shape[1])
        return images @ proj.to(images)

    # -- base training

    def fit(self, task, x: torch.Tensor, y: torch.Tensor, params, device, progress: bool = True) -> list[float]:
        """NeRF training: Adam on the mean squared colour error of random ray batches
        from all views, depths jittered in their bins; returns the loss per epoch."""

        self.to(device)
        torch.manual_seed(params.seed)
        jitter = generator(params.seed, JITTER_STREAM)
        with torch.no_grad():
            rays_o, rays_d = (r.flatten(0, 1) for r in camera_rays(x.to(device), self.height, self.width, self.focal))
        colours = y.to(device).view(-1, 3)

        def loss_of(idx):
            idx = idx.to(device)
            offsets = torch.rand(len(idx), len(self.depths), generator=jitter).to(device) * self.bin
            depths = self.depths + offsets  # [R, S]
            pts = rays_o[idx, None, :] + rays_d[idx, None, :] * depths[..., None]
            raw = self._run(encode_points(pts, self.frequencies), 0, 3)
            rgb, _ = composite(torch.sigmoid(raw[..., :3]), F.relu(raw[..., 3]), depths)
            return F.mse_loss(rgb, colours[idx])

        return fit_minibatches(self, params, len(colours), loss_of, "train TinyNeRF", progress)


def tinynerf(in_shape: tuple[int, ...], n_outputs: int, height: int, width: int, focal: float, near: float,
             far: float, depth_samples: int, frequencies: int, encoder: str) -> TinyNeRF:
    if tuple(in_shape) != (4, 4) or n_outputs != height * width * 3:
        raise ModelError(f"tinynerf renders views: inputs are 4x4 camera poses and outputs H*W*3 = "
                         f"{height * width * 3} colours; the dataset has inputs {tuple(in_shape)}, outputs {n_outputs}")
    return TinyNeRF(height, width, focal, near, far, depth_samples, frequencies, encoder=encoder)


def options(params, info: dict) -> dict:
    """tinynerf's build options: the camera from the dataset (a rendered scene), the rest from ``model:``."""
    camera = info.get("camera")
    if not camera:
        raise ModelError("model tinynerf renders camera views; the dataset is not a rendered scene "
                         "(a data.name nerf_*)")
    return {**{k: camera[k] for k in ("height", "width", "focal", "near", "far")},
            "depth_samples": params.depth_samples, "frequencies": params.frequencies, "encoder": params.encoder}
