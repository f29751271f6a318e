"""The two image-fitting stages (canonical head, audio-driven deformation) on one step loop with exact resume.

A checkpoint holds the model, the optimizer, the batch sampler, the stage's random generator, the
densifier's statistics and the step, so a resumed run takes exactly the steps an uninterrupted one would.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from avatar.config_io import from_dict, to_dict
from avatar.data.batches import FrameBatch, FrameSampler, TrainingData
from avatar.model.audio_encoder import expression_targets
from avatar.model.densify import Densifier
from avatar.model.gaussians import GaussianSet
from avatar.model.talking_head import HeadSpec, TalkingHead, _spec_template
from avatar.train.losses import image_grid, psnr, ssim_map, weighted_l1

if TYPE_CHECKING:
    from avatar.train.trainer import Runner


def restore_model(state: dict) -> TalkingHead:
    model = TalkingHead(from_dict(HeadSpec, state["spec"], _spec_template(state["spec"])))
    model.load_state_dict(state["model"])
    return model


def gaussian_groups(s: GaussianSet, cfg, factor: float = 1.0) -> list[dict]:
    lrs = {"means": cfg.lr_means, "log_scales": cfg.lr_scales, "quats": cfg.lr_quats,
           "opacity_logits": cfg.lr_opacity, "sh": cfg.lr_colours}
    return [{"params": [getattr(s, name)], "lr": lr * factor} for name, lr in lrs.items()]


class Stage:
    """Shared loop: sample a batch, take a step, log, checkpoint, honour stop requests, validate at the end."""

    name = ""
    seed_offset = 0

    def __init__(self, runner: "Runner", state: dict | None):
        cfg = runner.cfg
        self.runner, self.cfg, self.model = runner, cfg, runner.model
        self.steps = getattr(cfg, f"{self.name}_steps")
        dataset = runner.dataset
        targets, _ = expression_targets(dataset)
        self.data = TrainingData(dataset, cfg.resolution, self.model.audio_context, targets, cfg.cache_mb)
        self.sampler = FrameSampler(dataset.indices("train"), cfg.batch_size, cfg.seed + self.seed_offset)
        self.generator = torch.Generator().manual_seed(cfg.seed + self.seed_offset + 1)
        self.step = 0
        self.elapsed = 0.0  # wall seconds of this stage so far (over resumes)
        self.cpu = 0.0  # process CPU seconds: comparable between loaded and idle machines
        self.model.train()
        self.model.audio_encoder.eval()  # frozen after stage 1; eval mode keeps its dropout off
        self.setup()
        self.optimizer = torch.optim.Adam(self.param_groups(), eps=1e-15)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.sampler.load_state_dict(state["sampler"])
            self.generator.set_state(state["generator"])
            self.step, self.elapsed, self.cpu = state["step"], state["elapsed"], state["cpu"]
            self.load_extra(state)
        self._lpips = None

    # ----- hooks for the two stages
    def setup(self) -> None: ...
    def param_groups(self) -> list[dict]: raise NotImplementedError
    def train_step(self, batch: FrameBatch) -> tuple[Tensor, dict[str, Tensor], Tensor]: raise NotImplementedError
    def after_backward(self) -> None: ...
    def after_step(self) -> None: ...
    def extra_state(self) -> dict: return {}
    def load_extra(self, state: dict) -> None: ...
    def validate(self) -> dict: raise NotImplementedError

    # ----- the loop
    def lpips(self):
        if self._lpips is None:
            from avatar.train.lpips import LPIPS

            self._lpips = LPIPS("alex").to(self.runner.device)
        return self._lpips

    def image_loss(self, pred: Tensor, gt: Tensor, batch: FrameBatch, use_lpips: bool) -> tuple[Tensor, dict]:
        cfg = self.cfg
        weight = 1 + cfg.mouth_weight * batch.mask("mouth")
        l1 = weighted_l1(pred, gt, weight)
        dssim = 1 - ssim_map(pred, gt).mean()
        loss = (1 - cfg.ssim_weight) * l1 + cfg.ssim_weight * dssim
        logs = {"l1": l1.detach(), "dssim": dssim.detach()}
        if use_lpips and cfg.lpips_weight > 0:
            lp = self.lpips()(pred.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2)).mean()
            loss = loss + cfg.lpips_weight * lp
            logs["lpips"] = lp.detach()
        return loss, logs

    def checkpoint(self) -> None:
        state = {"stage": self.name, "step": self.step, "elapsed": self.elapsed, "cpu": self.cpu, "spec": to_dict(self.model.spec),
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "sampler": self.sampler.state_dict(), "generator": self.generator.get_state(), **self.extra_state()}
        self.runner.save_checkpoint(state)

    def run(self) -> None:
        from tqdm import tqdm

        cfg, writer = self.cfg, self.runner.writer
        bar = tqdm(total=self.steps, initial=self.step, desc=self.name, dynamic_ncols=True)
        started = time.perf_counter() - self.elapsed
        cpu_started = time.process_time() - self.cpu
        while self.step < self.steps:
            batch = self.data.batch(self.sampler.next()).to(self.runner.device)
            loss, out, logs = self.train_step(batch)  # logs: detached scalars
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.after_backward()
            self.optimizer.step()
            self.step += 1
            self.after_step()
            self.elapsed = time.perf_counter() - started
            self.cpu = time.process_time() - cpu_started
            quality, loss_value = psnr(out["rgb"], batch.rgb), loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", psnr=f"{quality:.2f}", n=len(self.model.head))
            if self.step % cfg.log_every == 0:
                writer.add_scalar(f"{self.name}/loss", loss_value, self.step)
                writer.add_scalar(f"{self.name}/psnr", quality, self.step)
                writer.add_scalar(f"{self.name}/num_gaussians", len(self.model.head), self.step)
                for key, value in logs.items():
                    writer.add_scalar(f"{self.name}/{key}", float(value), self.step)
            if self.step % cfg.image_every == 0 or self.step == self.steps:
                writer.add_image(f"{self.name}/pred_gt_error", image_grid(out["rgb"][0].detach(), batch.rgb[0]), self.step)
            if self.runner.on_step is not None:
                self.runner.on_step(self.runner, self.name, self.step)
            stop = self.runner._stop_requested
            if self.step % cfg.checkpoint_every == 0 or self.step == self.steps or stop:
                self.checkpoint()
            if stop:
                bar.close()
                raise KeyboardInterrupt
        bar.close()
        self.model.eval()
        metrics = self.validate()
        metrics["seconds"], metrics["cpu_seconds"] = self.elapsed, self.cpu
        self.runner.run_info["metrics"][self.name] = metrics
        self.runner.run_info["stage_seconds"][self.name] = self.elapsed
        self.runner.run_info.setdefault("stage_cpu_seconds", {})[self.name] = self.cpu
        self.runner.log(f"{self.name} validation: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
        self.runner._write_run_info()
        self.model.train()
        self.model.audio_encoder.eval()

    # ----- validation
    def val_batches(self, size: int = 4):
        val = self.runner.dataset.indices("val")
        ids = val[np.linspace(0, len(val) - 1, min(self.cfg.val_frames, len(val))).round().astype(int)]
        for i in range(0, len(ids), size):
            yield self.data.batch(ids[i:i + size]).to(self.runner.device)

    @torch.no_grad()
    def measure(self, render) -> dict:
        """PSNR / SSIM / LPIPS over the validation frames of `render(batch) -> rgb`, and seconds per frame."""
        scores = {"psnr": [], "ssim": [], "lpips": []}
        seconds, frames = 0.0, 0
        for batch in self.val_batches():
            start = time.perf_counter()
            rgb = render(batch).clamp(0, 1)
            seconds += time.perf_counter() - start
            frames += len(rgb)
            for k in range(len(rgb)):
                scores["psnr"].append(psnr(rgb[k], batch.rgb[k]))
            scores["ssim"] += ssim_map(rgb, batch.rgb).mean((1, 2, 3)).tolist()
            scores["lpips"] += self.lpips()(rgb.permute(0, 3, 1, 2), batch.rgb.permute(0, 3, 1, 2)).tolist()
        out = {k: float(np.mean(v)) for k, v in scores.items()}
        out["seconds_per_frame"] = seconds / max(frames, 1)
        return out


def head_background(batch: FrameBatch, plate: Tensor) -> Tensor:
    """[B, H, W, 3]: the plate inside the head mask, the frame itself elsewhere (torso from the frame)."""
    head = batch.mask("head")
    return head * plate + (1 - head) * batch.rgb


class CanonicalStage(Stage):
    """Fit the Gaussians to the frames, posed by tracking and moved by the landmark prior with the tracked
    expression code (all of it, eyes and brows too, for the sharpest fit); no network. Densification grows the head where the image gradient says detail is missing."""

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
        return self.model(no_audio, batch.expression, batch.blink, batch.rotation, batch.translation,
                          head_background(batch, self.model.plate), mode=mode, show_torso=False, code=batch.code)

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
            self.runner.writer.add_scalar("canonical/pruned", counts["pruned"], self.step)

    def validate(self) -> dict:
        metrics = {f"prior_{k}": v for k, v in self.measure(lambda b: self.render(b)["rgb"]).items()}
        metrics.update({f"static_{k}": v for k, v in self.measure(lambda b: self.render(b, "static")["rgb"]).items()})
        metrics["num_gaussians"] = len(self.model.head) + len(self.model.mouth)
        return metrics


class DeformStage(Stage):
    """Learn the audio-driven deformation, the hash tri-plane and the torso layer (full frames over the plate)."""

    name = "deform"
    seed_offset = 200

    def setup(self) -> None:
        with torch.no_grad():  # the audio encoder is frozen: its outputs for every frame are computed once
            windows = self.runner.dataset.audio_windows(context=self.model.audio_context)
            device = self.runner.device
            # Frame ids let the example memory skip each training frame's own neighbourhood, so these
            # predictions are as good as on unheard audio, not better.
            outs = [self.model.audio_encoder(torch.from_numpy(np.ascontiguousarray(windows[i:i + 256])).to(device),
                                             torch.arange(i, min(i + 256, len(windows)), device=device))
                    for i in range(0, len(windows), 256)]
        self.embedding = torch.cat([e for e, _ in outs])
        self.predicted = torch.cat([x for _, x in outs])

    def param_groups(self) -> list[dict]:
        m, cfg = self.model, self.cfg
        groups = gaussian_groups(m.head, cfg, cfg.gaussian_lr_factor) + gaussian_groups(m.mouth, cfg, cfg.gaussian_lr_factor)
        networks = [*m.triplane.parameters(), *m.head_deform.parameters(), *m.mouth_deform.parameters(),
                    *m.torso.linear.parameters(), *m.torso.nonlinear.parameters()]
        return groups + [{"params": networks, "lr": cfg.lr_network},
                         {"params": [m.torso.rgb_logits, m.torso.alpha_logits], "lr": cfg.lr_torso}]

    def conditions(self, batch: FrameBatch, teacher: Tensor) -> tuple[Tensor, Tensor]:
        """Audio embedding and expression of the batch; rows where `teacher` [B] is True use the tracked expression."""
        expression = torch.where(teacher[:, None], batch.expression, self.predicted[batch.indices])
        return self.embedding[batch.indices], expression

    def render(self, batch: FrameBatch, teacher: Tensor) -> dict[str, Tensor]:
        embedding, expression = self.conditions(batch, teacher)
        return self.model(embedding, expression, batch.blink, batch.rotation, batch.translation, self.model.plate, mode="full")

    def train_step(self, batch: FrameBatch):
        teacher = (torch.rand(len(batch.indices), generator=self.generator) < self.cfg.teacher_prob).to(batch.rgb.device)
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
