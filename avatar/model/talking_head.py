"""The trained avatar: audio + blink + pose (head pose, body codes) -> image. Everything a renderer needs is
in `RUN/avatar.pt`: the modules' settings and weights and the driving data (the person's pose track, blinks,
feature settings).

Per frame: the audio encoder predicts the expression; the landmark prior moves every Gaussian with the
landmarks it is skinned to (the big, geometric lip motion); the spatial-audio attention adds residual
offsets; head and mouth-interior Gaussians are rasterized together in the pose's camera over the torso
layer, which is itself over the background plate.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from avatar.config_io import from_dict, to_dict
from avatar.contracts.atomic import atomic_path, load_versioned
from avatar.contracts.camera import Intrinsics
from avatar.errors import UserError
from avatar.model.audio_encoder import NO_LEVELS, AudioEncoder, AudioEncoderConfig, ClipLevels
from avatar.model.deform import DeformConfig, Offsets, SpatialAudioAttention, pose_features
from avatar.model.driving import DrivingData
from avatar.model.gaussians import GaussianSet, HeadConfig, skinned_displacement
from avatar.model.hash_triplane import HashTriplane, HashTriplaneConfig
from avatar.model.mouth import MouthConfig
from avatar.model.torso import TorsoLayer
from avatar.rasterizer.compose import Layer
from avatar.rasterizer.rasterize import rasterize
from avatar.rasterizer.types import Camera, Gaussians

# 3: self-contained (driving data inside, no dataset path), payload checksum; 4: the torso follows the body's
# tracked motion (body codes in the pose track) instead of a warp from the head pose
AVATAR_FORMAT_VERSION = 4
Mode = Literal["static", "prior", "full"]  # canonical head only | + landmark prior | + attention offsets


@dataclass
class FrameConditions:
    """A batch of B frames to render."""

    audio: Tensor  # [B, C, W, F] normalised audio windows of each frame and its neighbours (C = 2 * audio_context + 1)
    rotation: Tensor  # [B, 3, 3] head-to-camera rotation
    translation: Tensor  # [B, 3]
    blink: Tensor  # [B, 2] eyeBlinkLeft, eyeBlinkRight in 0..1
    body: Tensor  # [B, K] the body's motion codes of the pose track's rows (avatar.model.torso)
    clip: ClipLevels = NO_LEVELS  # the driving clip's motion gain and noise floor (AudioEncoder.levels)

    @staticmethod
    def from_arrays(
        device: torch.device | str,
        audio: np.ndarray,
        rotation: np.ndarray,
        translation: np.ndarray,
        blink: np.ndarray,
        body: np.ndarray,
        clip: ClipLevels = NO_LEVELS,
    ) -> FrameConditions:
        """The same fields as numpy arrays (any float dtype), as float32 tensors on `device`."""

        def tensor(array: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(device)

        return FrameConditions(tensor(audio), tensor(rotation), tensor(translation), tensor(blink), tensor(body), clip)


@dataclass
class HeadSpec:
    """What it takes to rebuild the modules before loading their weights (saved in avatar.pt)."""

    fps: float
    resolution: int
    intrinsics: dict  # Intrinsics at `resolution`
    feature_dim: int
    feature_window: int
    expression_dim: int  # E, the audio encoder's targets
    code_dim: int  # P, the dataset's expression PCA code
    bbox_min: list[float]
    bbox_max: list[float]
    head: HeadConfig = field(default_factory=HeadConfig)
    mouth: MouthConfig = field(default_factory=MouthConfig)
    deform: DeformConfig = field(default_factory=DeformConfig)
    triplane: HashTriplaneConfig = field(default_factory=HashTriplaneConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    backend: Literal["auto", "cuda", "torch"] = "auto"


def _empty_set(sh_degree: int, neighbours: int) -> GaussianSet:
    """A zero-sized set: loading a state dict resizes it (see GaussianSet._load_from_state_dict)."""
    return GaussianSet(
        torch.zeros(0, 3), sh_degree, torch.zeros(0, neighbours, dtype=torch.long), torch.zeros(0, neighbours)
    )


class TalkingHead(nn.Module):
    """Gaussian head + mouth interior + torso layer + audio encoder + spatial-audio attention."""

    def __init__(self, spec: HeadSpec, driving: DrivingData | None = None):
        super().__init__()
        self.spec = spec
        self.driving = driving  # set when training ends; rendering new audio needs it
        self.fps = spec.fps
        self.resolution = spec.resolution
        self.intrinsics = Intrinsics(**spec.intrinsics)
        self.feature_window = spec.feature_window
        self.audio_context = spec.audio.context
        sh = spec.head.sh_degree
        self.head = _empty_set(sh, spec.head.skin_neighbours)
        self.mouth = _empty_set(sh, 2 * spec.mouth.neighbours)
        self.triplane = HashTriplane(spec.triplane, spec.bbox_min, spec.bbox_max)
        self.audio_encoder = AudioEncoder(spec.audio, spec.feature_dim, spec.feature_window, spec.expression_dim)
        args = (spec.deform, self.triplane.out_dim, self.audio_encoder.embed_dim, spec.expression_dim)
        self.head_deform = SpatialAudioAttention(*args)
        self.mouth_deform = SpatialAudioAttention(*args)
        self.torso = TorsoLayer(spec.resolution)
        self.register_buffer("K", torch.as_tensor(self.intrinsics.K, dtype=torch.float32))
        self.register_buffer("reference_translation", torch.zeros(3))  # the training frames' mean head position
        self.register_buffer("canonical_face", torch.zeros(478, 3))
        self.register_buffer("expression_basis", torch.zeros(spec.code_dim, 478, 3))
        self.register_buffer(
            "to_code", torch.zeros(spec.expression_dim, spec.code_dim)
        )  # see audio_encoder.expression_to_code
        self.register_buffer("code_mean", torch.zeros(spec.code_dim))
        self.register_buffer("plate", torch.zeros(spec.resolution, spec.resolution, 3))
        self._feature_cache: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ conditions
    def expression_code(self, expression: Tensor) -> Tensor:
        """[B, E] normalised expression (predicted or tracked targets) -> [B, P] dataset expression code."""
        return self.code_mean + expression @ self.to_code

    def landmark_offsets(self, code: Tensor) -> Tensor:
        """[B, P] expression code -> [B, 478, 3] landmark displacement in the canonical frame."""
        return torch.einsum("bp,pkc->bkc", code, self.expression_basis)

    def gaussian_features(self) -> tuple[Tensor, Tensor]:
        """Tri-plane features of the canonical head [N, F] and mouth [M, F]. They do not depend on the frame,
        so outside training they are computed once and cached."""
        if not self.training and self._feature_cache is not None:
            return self._feature_cache
        both = self.triplane(torch.cat([self.head.means, self.mouth.means]))
        features = (both[: len(self.head)], both[len(self.head) :])
        self._feature_cache = None if self.training else tuple(f.detach() for f in features)
        return features

    def train(self, mode: bool = True) -> TalkingHead:
        if mode:  # weights may change from here on; the cache is kept through eval()
            self._feature_cache = None
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self._feature_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------ rendering
    def forward(
        self,
        embedding: Tensor,
        expression: Tensor,
        blink: Tensor,
        rotation: Tensor,
        translation: Tensor,
        body: Tensor,
        background: Tensor,
        mode: Mode = "full",
        show_torso: bool = True,
        camera: Camera | None = None,
        code: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Differentiable render of B frames.

        embedding [B, A] audio embedding; expression [B, E] normalised expression (audio-predicted, or the
        tracked targets while training); blink [B, 2]; rotation [B, 3, 3], translation [B, 3] head pose;
        body [B, K] the body's motion codes; background [H, W, 3] or [B, H, W, 3]; code [B, P] overrides the
        expression code the landmark prior uses (the canonical fit passes the tracked one). Returns "rgb"
        [B, H, W, 3], "alpha" [B, H, W, 1] (head and torso coverage) and "head_alpha" [B, H, W, 1]."""
        b = rotation.shape[0]
        offsets = [None, None]
        displacement = [torch.zeros(b, len(s), 3, device=rotation.device) for s in (self.head, self.mouth)]
        if mode != "static":
            lm = self.landmark_offsets(self.expression_code(expression) if code is None else code)
            displacement = [skinned_displacement(lm, s.skin_index, s.skin_weight) for s in (self.head, self.mouth)]
        if mode == "full":
            head_features, mouth_features = self.gaussian_features()
            pose = pose_features(rotation, translation, self.reference_translation)
            tokens = self.head_deform.tokens(embedding, expression, blink, pose)
            offsets = [
                self.head_deform(head_features, tokens)[0],
                self.mouth_deform(mouth_features, self.mouth_deform.tokens(embedding, expression, blink, pose))[0],
            ]
        colours, alphas = [], []
        for i in range(b):
            gaussians = _concat(
                [_frame_gaussians(s, displacement[k][i], offsets[k], i) for k, s in enumerate((self.head, self.mouth))],
                self.head.sh_degree,
            )
            cam = (
                camera
                if camera is not None
                else Camera(_world_to_cam(rotation[i], translation[i]), self.K, self.resolution, self.resolution)
            )
            out = rasterize(gaussians, cam, backend=self.spec.backend)  # premultiplied, over nothing
            colours.append(out.rgb)
            alphas.append(out.alpha)
        head = Layer(torch.stack(colours), torch.stack(alphas))
        stacked = head.over(Layer.from_image(*self.torso(body))) if show_torso else head
        return {"rgb": stacked.onto(background), "alpha": stacked.alpha, "head_alpha": head.alpha}

    @torch.no_grad()
    def render(
        self,
        cond: FrameConditions,
        background: Tensor | None = None,
        deform: bool = True,
        camera: Camera | None = None,
        show_torso: bool = True,
        expression: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Audio-driven frames: "rgb" [B, H, W, 3] 0..1, "alpha" [B, H, W, 1]. background None: the plate.
        deform False renders the static canonical head (the baseline). A `camera` other than the training
        one sees the head from there (its world frame is the canonical head frame); the torso layer and the
        plate stay those of the training camera. `expression` [B, E]: shown instead of the one the audio
        encoder predicts (the evaluation's tracked-expression row)."""
        if self.training:  # (eval() walks every submodule: not for every frame when live)
            self.eval()
        embedding, predicted = self.audio_encoder(cond.audio, clip=cond.clip)
        expression = predicted if expression is None else expression
        out = self.forward(
            embedding,
            expression,
            cond.blink,
            cond.rotation,
            cond.translation,
            cond.body,
            self.plate if background is None else background,
            "full" if deform else "static",
            show_torso,
            camera,
        )
        return {"rgb": out["rgb"].clamp(0, 1), "alpha": out["alpha"]}

    # ------------------------------------------------------------------ files
    def save(self, path: Path | str) -> None:
        """The self-contained avatar file: settings, weights, driving data and a checksum of the payload."""

        if self.driving is None:
            raise ValueError("an avatar is saved with its driving data (DrivingData.from_dataset)")
        state = self.state_dict()
        driving = self.driving.to_dict()
        payload = {
            "format_version": AVATAR_FORMAT_VERSION,
            "spec": to_dict(self.spec),
            "driving": driving,
            "state_dict": state,
            "checksum": payload_checksum(state, driving),
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def from_state(cls, spec: dict, state_dict: dict, driving: DrivingData | None = None) -> TalkingHead:
        """The one way to rebuild an avatar from saved settings (avatar files and training checkpoints)."""
        head = cls(from_dict(HeadSpec, spec, _spec_template(spec)), driving)
        head.load_state_dict(state_dict)
        return head

    @classmethod
    def from_file(cls, path: Path | str, device: str | torch.device = "cpu") -> TalkingHead:

        path = Path(path)
        data = load_versioned(
            path, AVATAR_FORMAT_VERSION, "avatar file", "Retrain the avatar with this version of `avatar train`."
        )
        state, driving = data["state_dict"], data["driving"]
        if data.get("checksum") != payload_checksum(state, driving):
            raise UserError(
                f"{path}: the avatar file is damaged (its content does not match the checksum written "
                "when it was saved). Copy it again from a good source, or retrain with `avatar train`."
            )
        bad = [name for name, t in state.items() if t.is_floating_point() and torch.isnan(t).any()]  # (an unbounded
        if bad:  # clamp is a legitimate infinity)
            raise UserError(
                f"{path}: the avatar holds weights that are not numbers (NaN: {', '.join(bad[:3])}): its "
                "training diverged. Retrain it (a lower learning rate, or another --seed)."
            )
        try:
            head = cls.from_state(data["spec"], state, DrivingData.from_dict(driving))
        except (KeyError, TypeError, RuntimeError) as exc:
            raise UserError(f"{path}: the avatar file does not fit this version ({exc}). Retrain it.") from exc
        return head.to(device).eval()

    @classmethod
    def load(cls, run_dir: Path | str, device: str | torch.device = "cpu") -> TalkingHead:
        """The final avatar of a run directory (`RUN/avatar.pt`)."""
        run_dir = Path(run_dir)
        path = run_dir / "avatar.pt"
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: no such run directory. Train one with `avatar train DATASET --out {run_dir}`.")
        if not path.is_file():
            raise UserError(
                f"{path}: missing; training has not finished. Run the same `avatar train ... --out "
                f"{run_dir}` command again to resume it."
            )
        return cls.from_file(path, device)


def payload_checksum(state_dict: dict, driving: dict) -> str:
    """sha256 over every tensor and array of an avatar file (names, shapes, types, bytes), in name order."""

    digest = hashlib.sha256()
    items = [(f"state/{k}", v) for k, v in state_dict.items()] + [(f"driving/{k}", v) for k, v in driving.items()]
    for name, value in sorted(items, key=lambda kv: kv[0]):
        if isinstance(value, Tensor):
            value = value.detach().cpu().contiguous().numpy()
        digest.update(name.encode())
        if isinstance(value, np.ndarray):
            digest.update(f"{value.shape}{value.dtype}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def _spec_template(data: dict) -> HeadSpec:
    """A HeadSpec with the saved required fields (from_dict fills the rest, nested configs included)."""
    required = [
        f.name
        for f in dataclasses.fields(HeadSpec)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    return HeadSpec(**{name: data[name] for name in required})


def _world_to_cam(rotation: Tensor, translation: Tensor) -> Tensor:
    m = torch.eye(4, dtype=rotation.dtype, device=rotation.device)
    m[:3, :3] = rotation
    m[:3, 3] = translation
    return m


def _frame_gaussians(s: GaussianSet, displacement: Tensor, offsets: Offsets | None, i: int) -> Gaussians:
    """Frame i of a set: canonical parameters + landmark displacement [N, 3] + attention offsets."""
    means, quats, log_scales, logits, sh = s.means + displacement, s.quats, s.log_scales, s.opacity_logits, s.sh
    if offsets is not None:
        means = means + offsets.means[i]
        quats = quats + offsets.quats[i]
        log_scales = log_scales + offsets.log_scales[i]
        logits = logits + offsets.opacity_logits[i]
        sh = torch.cat([sh[:, :1] + offsets.colours[i][:, None], sh[:, 1:]], 1)
    return Gaussians(means, quats, log_scales.exp(), torch.sigmoid(logits), sh, s.sh_degree)


def _concat(parts: list[Gaussians], sh_degree: int) -> Gaussians:
    return Gaussians(
        *(torch.cat([getattr(p, name) for p in parts]) for name in ("means", "quats", "scales", "opacities", "colors")),
        sh_degree=sh_degree,
    )
