"""The four training stages behind one protocol: each gets the model and, when resuming, its own progress.

1. audio     -> expression: the audio encoder learns the tracked expression (avatar.train.audio_fit); the
             untrained avatar is then built around it (avatar.train.initialize).
2. canonical the Gaussian head is fitted to the frames, moved by the landmark prior with the TRACKED
             expression; rendered over the plate with the person's body taken from the frame; densified.
3. torso     the torso image alone is fitted to the frames outside the head, each frame's body flow applied,
             in batches: no Gaussian is rendered, so it gets many frames per second and a sharper body than the
             deformation stage's one frame per step could give it.
4. deform    the spatial-audio attention, hash tri-plane and torso image learn,
             conditioned on the tracked expression (teacher) or on the audio-predicted one, extra weight on the
             mouth, LPIPS late.

A stage talks to the runner only through its StageContext: it saves progress with `ctx.save`, reports its
validation with `ctx.record`, and checks `ctx.should_stop()` between steps (then checkpoints and raises
StopRequested). The image stages' progress holds the optimizer, the batch sampler, the stage's random
generator, the densifier's statistics and the step, so a resumed run takes exactly the steps an
uninterrupted one would.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from avatar.data.batches import FrameBatch, FrameSampler
from avatar.metrics.image import psnr, ssim
from avatar.metrics.lpips import LPIPS
from avatar.model.gaussians import GaussianSet
from avatar.model.talking_head import TalkingHead
from avatar.train.audio_fit import fit_audio_encoder
from avatar.train.context import StageContext, StopRequested
from avatar.train.densify import Densifier
from avatar.train.initialize import initial_model
from avatar.train.losses import channels_first, dssim, image_grid, weighted_l1


class Stage(Protocol):
    name: str

    def run(self, ctx: StageContext, model: TalkingHead | None, progress: dict) -> TalkingHead:
        """Train from `progress` (empty: from the start) and return the model; raises StopRequested."""
        ...


class _Clock:
    """Wall and CPU seconds of a stage over resumes (CPU seconds compare loaded and idle machines)."""

    def __init__(self, progress: dict):
        self.wall0 = time.perf_counter() - progress.get("elapsed", 0.0)
        self.cpu0 = time.process_time() - progress.get("cpu", 0.0)

    def state(self) -> dict:
        return {"elapsed": time.perf_counter() - self.wall0, "cpu": time.process_time() - self.cpu0}


class AudioStage:
    """Fit the audio encoder, then build the untrained avatar around it. Progress: the finished members."""

    name = "audio"

    def run(self, ctx: StageContext, model: TalkingHead | None, progress: dict) -> TalkingHead:

        cfg, clock = ctx.cfg, _Clock(progress)
        ctx.log(f"stage 1/4 audio -> expression ({cfg.audio_steps} steps per member)")
        encoder, metrics = fit_audio_encoder(
            ctx.dataset,
            ctx.expression,
            cfg.audio,
            cfg.audio_steps,
            cfg.seed,
            log=ctx.log,
            should_stop=ctx.should_stop,
            finished=progress.get("members"),
            on_member=lambda members: ctx.save(self.name, None, {"members": members, **clock.state()}),
        )
        ctx.log(f"audio encoder: validation lip-opening correlation {metrics['val_lip_corr']:.3f}")
        model = initial_model(ctx.dataset, cfg, encoder, ctx.expression, ctx.data.store)
        spent = clock.state()
        ctx.record(self.name, metrics, spent["elapsed"], spent["cpu"])
        return model


def gaussian_groups(s: GaussianSet, cfg, factor: float = 1.0) -> list[dict]:
    lrs = {
        "means": cfg.lr_means,
        "log_scales": cfg.lr_scales,
        "quats": cfg.lr_quats,
        "opacity_logits": cfg.lr_opacity,
        "sh": cfg.lr_colours,
    }
    return [{"params": [getattr(s, name)], "lr": lr * factor} for name, lr in lrs.items()]


class ImageStage:
    """Shared loop of the image stages: sample a batch, take a step, log, checkpoint, stop when asked,
    validate at the end."""

    name = ""
    seed_offset = 0

    def run(self, ctx: StageContext, model: TalkingHead | None, progress: dict) -> TalkingHead:
        cfg = ctx.cfg
        self.ctx, self.cfg, self.model = ctx, cfg, model
        self.steps = getattr(cfg, f"{self.name}_steps")
        self.data = ctx.data
        self.sampler = FrameSampler(ctx.dataset.indices("train"), self.batch_size(), cfg.seed + self.seed_offset)
        self.generator = torch.Generator().manual_seed(cfg.seed + self.seed_offset + 1)
        self.step = 0
        model.train()
        model.audio_encoder.eval()  # frozen after stage 1; eval mode keeps its dropout off
        self.setup()
        self.optimizer = torch.optim.Adam(self.param_groups(), eps=1e-15)
        if progress:
            self.optimizer.load_state_dict(progress["optimizer"])
            self.sampler.load_state_dict(progress["sampler"])
            self.generator.set_state(progress["generator"])
            self.step = progress["step"]
            self.load_extra(progress)
        self._lpips = None
        self.loop(_Clock(progress))
        return model

    # ----- hooks for the image stages
    def batch_size(self) -> int:
        return self.cfg.batch_size

    def setup(self) -> None: ...
    def param_groups(self) -> list[dict]:
        raise NotImplementedError

    def train_step(self, batch: FrameBatch) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        raise NotImplementedError

    def after_backward(self) -> None: ...
    def after_step(self) -> None: ...
    def extra_state(self) -> dict:
        return {}

    def load_extra(self, state: dict) -> None: ...
    def validate(self) -> dict:
        raise NotImplementedError

    # ----- the loop
    def lpips(self):
        if self._lpips is None:
            self._lpips = LPIPS("alex").to(self.ctx.device)
        return self._lpips

    def image_loss(self, pred: Tensor, gt: Tensor, batch: FrameBatch, use_lpips: bool) -> tuple[Tensor, dict]:
        cfg = self.cfg
        weight = 1 + cfg.mouth_weight * batch.mask("mouth")
        l1 = weighted_l1(pred, gt, weight)
        structure = dssim(pred, gt)
        loss = (1 - cfg.ssim_weight) * l1 + cfg.ssim_weight * structure
        logs = {"l1": l1.detach(), "dssim": structure.detach()}
        if use_lpips and cfg.lpips_weight > 0:
            lp = self.lpips()(channels_first(pred), channels_first(gt)).mean()
            loss = loss + cfg.lpips_weight * lp
            logs["lpips"] = lp.detach()
        return loss, logs

    def progress(self, clock: _Clock) -> dict:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "generator": self.generator.get_state(),
            **clock.state(),
            **self.extra_state(),
        }

    def loop(self, clock: _Clock) -> None:

        cfg, ctx, writer = self.cfg, self.ctx, self.ctx.writer
        bar = tqdm(total=self.steps, initial=self.step, desc=self.name, dynamic_ncols=True)
        while self.step < self.steps:
            batch = self.data.batch(self.sampler.next()).to(ctx.device)
            loss, out, logs = self.train_step(batch)  # logs: detached scalars
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.after_backward()
            self.optimizer.step()
            self.step += 1
            self.after_step()
            quality = float(psnr(channels_first(out["rgb"].detach()), channels_first(batch.rgb)).mean())
            loss_value = loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", psnr=f"{quality:.2f}", n=len(self.model.head))
            if self.step % cfg.log_every == 0:
                writer.add_scalar(f"{self.name}/loss", loss_value, self.step)
                writer.add_scalar(f"{self.name}/psnr", quality, self.step)
                writer.add_scalar(f"{self.name}/num_gaussians", len(self.model.head), self.step)
                for key, value in logs.items():
                    writer.add_scalar(f"{self.name}/{key}", float(value), self.step)
            if self.step % cfg.image_every == 0 or self.step == self.steps:
                writer.add_image(
                    f"{self.name}/pred_gt_error", image_grid(out["rgb"][0].detach(), batch.rgb[0]), self.step
                )
            if ctx.on_step is not None:
                ctx.on_step(self.name, self.step)
            stop = ctx.should_stop()
            if self.step % cfg.checkpoint_every == 0 or stop:
                ctx.save(self.name, self.model, self.progress(clock))
            if stop:
                bar.close()
                raise StopRequested
        bar.close()
        self.model.eval()
        metrics = self.validate()
        spent = clock.state()
        metrics["seconds"], metrics["cpu_seconds"] = spent["elapsed"], spent["cpu"]
        ctx.record(self.name, metrics, spent["elapsed"], spent["cpu"])
        self.model.train()
        self.model.audio_encoder.eval()

    # ----- validation
    def val_batches(self, size: int = 4):
        val = self.ctx.dataset.indices("val")
        ids = val[np.linspace(0, len(val) - 1, min(self.cfg.val_frames, len(val))).round().astype(int)]
        for i in range(0, len(ids), size):
            yield self.data.batch(ids[i : i + size]).to(self.ctx.device)

    @torch.no_grad()
    def measure(self, render) -> dict:
        """PSNR / SSIM / LPIPS over the validation frames of `render(batch) -> rgb` (the metrics `avatar eval`
        uses), and seconds per frame."""
        scores = {"psnr": [], "ssim": [], "lpips": []}
        seconds, frames = 0.0, 0
        for batch in self.val_batches():
            start = time.perf_counter()
            rgb = render(batch).clamp(0, 1)
            seconds += time.perf_counter() - start
            frames += len(rgb)
            pred, gt = channels_first(rgb), channels_first(batch.rgb)
            scores["psnr"] += psnr(pred, gt).tolist()
            scores["ssim"] += ssim(pred, gt).tolist()
            scores["lpips"] += self.lpips()(pred, gt).flatten().tolist()
        out = {k: float(np.mean(v)) for k, v in scores.items()}
        out["seconds_per_frame"] = seconds / max(frames, 1)
        return out


def head_background(batch: FrameBatch, plate: Tensor) -> Tensor:
    """[B, H, W, 3]: the plate inside the head mask, the frame itself elsewhere (torso from the frame)."""
    head = batch.mask("head")
    return head * plate + (1 - head) * batch.rgb


class CanonicalStage(ImageStage):
    """Fit the Gaussians to the frames, posed by tracking and moved by the landmark prior with the tracked
    expression code (all of it, eyes and brows too, for the sharpest fit); no network. Densification grows the
    head where the image gradient says detail is missing."""

    name = "canonical"
    seed_offset = 100

    def setup(self) -> None:
        self.densifier = Densifier(self.cfg.densify, self.cfg.head.max_gaussians)

    def param_groups(self) -> list[dict]:
        return gaussian_groups(self.model.head, self.cfg) + gaussian_groups(self.model.mouth, self.cfg)

    def extra_state(self) -> dict:
        return {"densifier": self.densifier.state_dict()}

    def load_extra(self, state: dict) -> None:
        self.densifier.load_state_dict(state["densifier"])

    def render(self, batch: FrameBatch, mode: str = "prior") -> dict[str, Tensor]:
        b = len(batch.indices)
        no_audio = torch.zeros(b, self.model.audio_encoder.embed_dim, device=batch.rgb.device)
        return self.model(
            no_audio,
            batch.expression,
            batch.blink,
            batch.rotation,
            batch.translation,
            batch.body,
            head_background(batch, self.model.plate),
            mode=mode,
            show_torso=False,
            code=batch.code,
        )

    def train_step(self, batch: FrameBatch):
        out = self.render(batch)
        loss, logs = self.image_loss(out["rgb"], batch.rgb, batch, use_lpips=False)
        alpha = (out["head_alpha"] - batch.mask("head")).abs().mean()
        logs["alpha"] = alpha.detach()
        return loss + self.cfg.alpha_weight * alpha, out, logs

    def after_backward(self) -> None:
        self.densifier.accumulate(self.model.head)

    def after_step(self) -> None:
        if self.densifier.due(self.step):
            counts = self.densifier.step(self.model.head, self.optimizer, self.generator)
            self.ctx.writer.add_scalar("canonical/pruned", counts["pruned"], self.step)

    def validate(self) -> dict:
        metrics = {f"prior_{k}": v for k, v in self.measure(lambda b: self.render(b)["rgb"]).items()}
        metrics.update({f"static_{k}": v for k, v in self.measure(lambda b: self.render(b, "static")["rgb"]).items()})
        metrics["num_gaussians"] = len(self.model.head) + len(self.model.mouth)
        return metrics


class TorsoStage(ImageStage):
    """Fit the torso layer's image, moved by each frame's body codes, to the frames outside the head mask,
    over the plate."""

    name = "torso"
    seed_offset = 300

    def batch_size(self) -> int:
        return self.cfg.torso_batch_size

    def param_groups(self) -> list[dict]:
        return [{"params": self.model.torso.image_parameters(), "lr": self.cfg.lr_torso}]

    def render(self, batch: FrameBatch) -> tuple[Tensor, Tensor]:
        """[B, H, W, 3] the torso layer over the plate with the frame itself inside the head mask, and the
        layer's coverage [B, H, W, 1]."""
        rgb, alpha = self.model.torso(batch.body)
        head = batch.mask("head")
        return head * batch.rgb + (1 - head) * (alpha * rgb + (1 - alpha) * self.model.plate), alpha

    def train_step(self, batch: FrameBatch):
        pred, alpha = self.render(batch)
        outside = 1 - batch.mask("head")
        l1 = weighted_l1(pred, batch.rgb, outside)
        coverage = ((alpha - batch.mask("torso")).abs() * outside).mean()
        return l1 + self.cfg.alpha_weight * coverage, {"rgb": pred}, {"l1": l1.detach(), "alpha": coverage.detach()}

    def validate(self) -> dict:
        return {f"body_{k}": v for k, v in self.measure(lambda b: self.render(b)[0]).items()}


class DeformStage(ImageStage):
    """Learn the audio-driven deformation, the hash tri-plane and the torso image (full frames over the plate)."""

    name = "deform"
    seed_offset = 200

    def setup(self) -> None:
        with torch.no_grad():  # the audio encoder is frozen: its outputs for every frame are computed once
            dataset, device = self.ctx.dataset, self.ctx.device
            # Frame ids let the example memory skip each training frame's own neighbourhood, so these
            # predictions are as good as on unheard audio, not better.
            parts = [np.arange(i, min(i + 256, dataset.num_frames)) for i in range(0, dataset.num_frames, 256)]
            outs = [
                self.model.audio_encoder(
                    torch.from_numpy(dataset.audio_windows(self.model.audio_context, part)).to(device),
                    torch.from_numpy(part).to(device),
                )
                for part in parts
            ]
        self.embedding = torch.cat([e for e, _ in outs])
        self.predicted = torch.cat([x for _, x in outs])

    def param_groups(self) -> list[dict]:
        m, cfg = self.model, self.cfg
        groups = gaussian_groups(m.head, cfg, cfg.gaussian_lr_factor) + gaussian_groups(
            m.mouth, cfg, cfg.gaussian_lr_factor
        )
        networks = [*m.triplane.parameters(), *m.head_deform.parameters(), *m.mouth_deform.parameters()]
        return groups + [
            {"params": networks, "lr": cfg.lr_network},
            {"params": m.torso.image_parameters(), "lr": cfg.lr_torso},
        ]

    def conditions(self, batch: FrameBatch, teacher: Tensor) -> tuple[Tensor, Tensor]:
        """Audio embedding and expression of the batch; rows where `teacher` [B] is True use the tracked expression."""
        expression = torch.where(teacher[:, None], batch.expression, self.predicted[batch.indices])
        return self.embedding[batch.indices], expression

    def render(self, batch: FrameBatch, teacher: Tensor) -> dict[str, Tensor]:
        embedding, expression = self.conditions(batch, teacher)
        return self.model(
            embedding,
            expression,
            batch.blink,
            batch.rotation,
            batch.translation,
            batch.body,
            self.model.plate,
            mode="full",
        )

    def train_step(self, batch: FrameBatch):
        teacher = (torch.rand(len(batch.indices), generator=self.generator) < self.cfg.teacher_prob).to(
            batch.rgb.device
        )
        out = self.render(batch, teacher)
        loss, logs = self.image_loss(out["rgb"], batch.rgb, batch, use_lpips=self.step >= self.cfg.lpips_start)
        alpha = (out["alpha"] - batch.mask("person")).abs().mean()
        logs["alpha"] = alpha.detach()
        return loss + self.cfg.alpha_weight * alpha, out, logs

    def validate(self) -> dict:
        def audio(b):
            return self.render(b, torch.zeros(len(b.indices), dtype=torch.bool, device=b.rgb.device))["rgb"]

        def tracked(b):
            return self.render(b, torch.ones(len(b.indices), dtype=torch.bool, device=b.rgb.device))["rgb"]

        metrics = {f"audio_{k}": v for k, v in self.measure(audio).items()}
        metrics.update({f"tracked_{k}": v for k, v in self.measure(tracked).items()})
        return metrics
