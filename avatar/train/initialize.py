"""The untrained avatar of a dataset: Gaussians on the tracked face, colours and torso from the frames."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from avatar.contracts.dataset import Dataset
from avatar.data.frames import MASK_NAMES, FrameStore
from avatar.model.audio_encoder import AudioEncoder
from avatar.model.gaussians import SH_C0, head_gaussians, sample_colours
from avatar.model.mouth import mouth_gaussians
from avatar.model.talking_head import HeadSpec, TalkingHead
from avatar.train.config import TrainConfig
from avatar.train.expression import ExpressionSpace

SAMPLE_FRAMES = 24  # training frames averaged for the initial colours and torso


def initial_model(
    dataset: Dataset, cfg: TrainConfig, encoder: AudioEncoder, space: ExpressionSpace, store: FrameStore
) -> TalkingHead:
    face = np.asarray(dataset.tracking("canonical_face"), np.float64)
    head = head_gaussians(face, cfg.head, cfg.seed)
    mouth = mouth_gaussians(face, cfg.mouth, cfg.head.sh_degree, cfg.seed)
    points = torch.cat([head.means, mouth.means]).detach()
    lo, hi = points.min(0).values, points.max(0).values
    pad = 0.15 * (hi - lo)
    res = cfg.resolution
    intrinsics = dataset.intrinsics.scaled(res, res)
    basis = np.asarray(dataset.tracking("expression_basis"), np.float32)
    spec = HeadSpec(
        fps=dataset.fps,
        resolution=res,
        intrinsics=dataclasses.asdict(intrinsics),
        feature_dim=dataset.manifest.features.dim,
        feature_window=dataset.manifest.features.window,
        expression_dim=space.dim,
        code_dim=basis.shape[0],
        bbox_min=(lo - pad).tolist(),
        bbox_max=(hi + pad).tolist(),
        head=cfg.head,
        mouth=cfg.mouth,
        deform=cfg.deform,
        triplane=cfg.triplane,
        audio=cfg.audio,
        backend=cfg.backend,
    )
    model = TalkingHead(spec)
    model.head, model.mouth = head, mouth
    model.audio_encoder.load_state_dict(encoder.state_dict())
    model.canonical_face.copy_(torch.from_numpy(face).float())
    model.expression_basis.copy_(torch.as_tensor(np.array(basis)))  # a copy: the memory map is read-only
    model.to_code.copy_(torch.from_numpy(space.to_code))
    model.code_mean.copy_(torch.from_numpy(space.code_mean))

    model.plate.copy_(torch.from_numpy(store.plate()).float() / 255)
    train = dataset.indices("train")
    ids = train[np.linspace(0, len(train) - 1, SAMPLE_FRAMES).round().astype(int)]
    items = [store.get(i) for i in ids]
    frames = torch.from_numpy(np.stack([f for f, _ in items])).float() / 255
    masks = torch.from_numpy(np.stack([m for _, m in items])).float() / 255
    rotation = np.asarray(dataset.tracking("rotation"), np.float32)
    translation = np.asarray(dataset.tracking("translation"), np.float32)
    with torch.no_grad():
        rgb = sample_colours(
            head.means, frames, torch.from_numpy(rotation[ids]), torch.from_numpy(translation[ids]), model.K
        )
        head.sh[:, 0] = (rgb - 0.5) / SH_C0
        model.reference_translation.copy_(torch.from_numpy(translation[train].mean(0)))
        motion = dataset.body_motion()
        model.torso.set_body_motion(torch.from_numpy(motion.mean), torch.from_numpy(motion.basis))
        outside_head = masks[..., MASK_NAMES.index("person")] * (1 - masks[..., MASK_NAMES.index("head")])
        model.torso.init_from_frames(frames, outside_head, model.plate, torch.from_numpy(motion.codes[ids]))
    return model
