"""Settings of `avatar train DATASET --out RUN` (presets: configs/train/{tiny,default,quality}.toml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import tyro

from avatar.errors import UserError
from avatar.model.audio_encoder import AudioEncoderConfig
from avatar.model.deform import DeformConfig
from avatar.model.gaussians import HeadConfig
from avatar.model.hash_triplane import HashTriplaneConfig
from avatar.model.mouth import MouthConfig
from avatar.train.densify import DensifyConfig


@dataclass
class TrainConfig:
    """Train a talking-head avatar from a dataset made by `avatar preprocess`."""

    # checked by config_io.check_values; the nested configs' ranges are named with dots
    LIMITS: ClassVar[dict] = {
        "seed": (0, None),
        "resolution": (16, 4096),
        "batch_size": (1, None),
        "audio_steps": (0, None),
        "canonical_steps": (0, None),
        "deform_steps": (0, None),
        "torso_steps": (0, None),
        "torso_batch_size": (1, None),
        "lr_means": (0, None),
        "lr_scales": (0, None),
        "lr_quats": (0, None),
        "lr_opacity": (0, None),
        "lr_colours": (0, None),
        "lr_network": (0, None),
        "lr_torso": (0, None),
        "gaussian_lr_factor": (0, None),
        "ssim_weight": (0, 1),
        "lpips_weight": (0, None),
        "lpips_start": (0, None),
        "mouth_weight": (0, None),
        "alpha_weight": (0, None),
        "teacher_prob": (0, 1),
        "log_every": (1, None),
        "image_every": (1, None),
        "checkpoint_every": (1, None),
        "val_frames": (1, None),
        "cache_mb": (0, None),
        "threads": (1, None),
        "min_train_frames": (1, None),
        "head.num_face": (1, None),
        "head.num_shell": (0, None),
        "head.max_gaussians": (1, None),
        "head.sh_degree": (0, 3),
        "head.skin_neighbours": (1, None),
        "head.skin_falloff_m": (1e-4, None),
        "mouth.num_gaussians": (1, None),
        "mouth.half_height_m": (0, None),
        "mouth.depth_m": (0, None),
        "mouth.neighbours": (1, None),
        "densify.start_step": (0, None),
        "densify.stop_step": (0, None),
        "densify.every": (1, None),
        "densify.grow_fraction": (0, 1),
        "densify.split_scale_m": (0, None),
        "densify.prune_opacity": (0, 1),
        "densify.prune_scale_m": (0, None),
        "deform.token_dim": (1, None),
        "deform.hidden": (1, None),
        "deform.position_scale_m": (0, None),
        "triplane.num_levels": (1, None),
        "triplane.features_per_level": (1, None),
        "triplane.log2_hashmap_size": (4, 30),
        "triplane.base_resolution": (2, None),
        "triplane.max_resolution": (2, None),
        "audio.context": (0, None),
        "audio.channels": (1, None),
        "audio.embed_dim": (1, None),
        "audio.heads": (1, None),
        "audio.layers": (1, None),
        "audio.dropout": (0, 0.9),
        "audio.members": (1, None),
        "audio.lr": (0, None),
        "audio.weight_decay": (0, None),
        "audio.batch_size": (1, None),
        "audio.feature_noise": (0, None),
        "audio.freq_mask": (0, None),
        "audio.time_shift": (0, None),
        "audio.silence_fraction": (0, 1),
        "audio.opening_weight": (0, None),
        "audio.holdout_fraction": (0, 0.5),
        "audio.eval_every": (1, None),
        "audio.patience": (1, None),
        "audio.memory_k": (1, None),
        "audio.memory_weights": (0, 1),
        "audio.memory_sigma": (0, None),
        "audio.memory_voice_weight": (0, None),
        "audio.memory_max": (1, None),
        "audio.max_gain": (1, None),
        "audio.gain_min_corr": (-1, 1),
        "audio.gain_full_corr": (-1, 1),
        "audio.pause_lead": (0, None),
        "audio.voices.copies": (0, None),
        "audio.voices.clean_share": (0, 1),
        "audio.voices.pitch_semitones": (0, 12),
        "audio.voices.vtlp": (0, 0.5),
        "audio.voices.loudness_db": (0, None),
        "audio.voices.reverb_s": (0, 10),
        "audio.voices.noise_snr_db": (0, None),
    }

    dataset: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="DATASET")] = tyro.MISSING  # type: ignore[assignment]
    """the dataset directory written by `avatar preprocess`"""
    out: Path = Path("runs/avatar")
    """the run directory (checkpoints, tensorboard logs, the final avatar.pt)"""
    preset: str = "default"
    """the preset these settings started from (recorded in run.json; pick one with --preset NAME)"""
    seed: int = 0
    """seed of every random choice (initialisation, batches, conditioning), so runs repeat exactly"""
    resume: bool = False
    """continue an interrupted run in --out exactly where its last checkpoint stopped"""
    resolution: int = 128
    """training and rendering resolution in pixels (square); frames are resized from the dataset's"""
    batch_size: int = 2
    """frames per step"""
    audio_steps: int = 600
    """steps of the audio -> expression encoder fit (per ensemble member; it may stop earlier)"""
    canonical_steps: int = 400
    """steps of the canonical head fit (tracked expressions drive the landmark prior, no network)"""
    torso_steps: int = 300
    """steps of the torso layer's own fit to the frames outside the head (no Gaussians rendered: cheap)"""
    torso_batch_size: int = 8
    """frames per step of the torso fit"""
    deform_steps: int = 600
    """steps of the audio-driven deformation stage"""
    lr_means: float = 2e-4
    """Adam learning rate of the Gaussian centres, metres"""
    lr_scales: float = 1e-2
    """... of the log scales"""
    lr_quats: float = 2e-3
    """... of the rotations"""
    lr_opacity: float = 5e-2
    """... of the opacity logits"""
    lr_colours: float = 1e-2
    """... of the colour (SH) coefficients"""
    lr_network: float = 2e-3
    """... of the attention networks and the hash tri-plane"""
    lr_torso: float = 1e-2
    """... of the torso layer's image"""
    gaussian_lr_factor: float = 0.3
    """the Gaussians' learning rates are scaled by this in the deformation stage (they are nearly fitted)"""
    ssim_weight: float = 0.2
    """loss = (1 - w) * L1 + w * (1 - SSIM) + ..."""
    lpips_weight: float = 0.05
    """weight of LPIPS (AlexNet) once enabled"""
    lpips_start: int = 400
    """deformation-stage step from which LPIPS is added (it is slow on CPU; perceptual detail comes last)"""
    mouth_weight: float = 4.0
    """extra L1 weight on the mouth-region pixels (the mouth is small but is what lip sync is judged on)"""
    alpha_weight: float = 0.1
    """L1 between the rendered coverage and the mask (head in the canonical stage, person afterwards)"""
    teacher_prob: float = 0.5
    """deformation stage: chance a frame is conditioned on its TRACKED expression rather than the audio-predicted
    one (the renderer learns appearance from true motion; inference uses audio)"""
    log_every: int = 10
    """steps between tensorboard scalars"""
    image_every: int = 100
    """steps between tensorboard image grids (prediction | ground truth | error)"""
    checkpoint_every: int = 100
    """steps between checkpoints (also written at the end of each stage and on Ctrl-C)"""
    val_frames: int = 8
    """validation frames (evenly spaced over the validation split) measured at the end of each stage"""
    cache_mb: float = 512
    """memory for resized frames; the video is streamed from disk beyond this"""
    threads: int = 2
    """CPU threads torch may use"""
    device: str = "auto"
    """torch device: auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"""
    backend: Literal["auto", "cuda", "torch"] = "auto"
    """rasterizer backend: CUDA kernels on a GPU, the torch reference elsewhere"""
    min_train_frames: int = 50
    """refuse datasets with fewer training frames (about 2 s): too little to learn from"""
    head: HeadConfig = field(default_factory=HeadConfig)
    mouth: MouthConfig = field(default_factory=MouthConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    deform: DeformConfig = field(default_factory=DeformConfig)
    triplane: HashTriplaneConfig = field(default_factory=HashTriplaneConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)

    def check(self) -> None:
        """Rules between options (config_io.check_values calls it before any work)."""
        if self.audio.embed_dim % self.audio.heads:
            raise UserError(
                f"--audio.embed-dim {self.audio.embed_dim} --audio.heads {self.audio.heads}: the attention "
                "heads split the embedding, so --audio.heads must divide --audio.embed-dim."
            )
        if self.audio.gain_full_corr <= self.audio.gain_min_corr:
            raise UserError(
                f"--audio.gain-full-corr {self.audio.gain_full_corr}: must be above --audio.gain-min-corr "
                f"({self.audio.gain_min_corr}): between the two the motion gains grow from none to all."
            )
        if self.audio.pause_lead > self.audio.context:
            raise UserError(
                f"--audio.pause-lead {self.audio.pause_lead}: at most --audio.context ({self.audio.context}), the "
                "neighbouring frames the encoder's windows hold (the gate reads the coming frames there)."
            )
        if self.triplane.max_resolution < self.triplane.base_resolution:
            raise UserError(
                f"--triplane.max-resolution {self.triplane.max_resolution}: must be at least "
                f"--triplane.base-resolution ({self.triplane.base_resolution})."
            )
