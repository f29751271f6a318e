"""Audio -> expression: the part of the avatar that decides lip sync.

A person's video gives under a minute of speech, far too little to learn audio -> pixels directly. So the
avatar first learns audio -> the tracked facial expression (a few numbers per frame that say how the lower
face is deformed: avatar.train.expression), and the Gaussians follow that geometry.

`AudioEncoder`: per frame, a small 1D convolution over the audio-feature window; then self-attention over the
2K+1 neighbouring frames (about +-250 ms in all), so lips anticipate and follow the sound; an ensemble of
members, an example memory of the training frames, and a motion gain. How it is fitted: avatar.train.audio_fit.

Silence: an all-zero input (a silent clip after clip-level normalisation) is trained to give the person's
closed-mouth expression (`ExpressionSpace.rest`), and is constant over time, so the mouth is closed and still.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from avatar.audio.revoice import VoiceAugmentConfig


@dataclass
class AudioEncoderConfig:
    """Sizes and training settings of the audio -> expression encoder."""

    context: int = 2  # K: neighbouring frames on each side that the temporal attention sees (docs/audio.md)
    channels: int = 32  # width of the per-frame convolution over the feature window
    embed_dim: int = 64  # size of the per-frame audio embedding (the condition token of the deformation)
    heads: int = 4  # attention heads of the temporal self-attention
    layers: int = 1  # temporal self-attention layers
    dropout: float = 0.2  # dropout in the window encoder and the attention
    members: int = 3  # encoders trained on different held-out slices, predictions averaged (1 = no ensemble)
    lr: float = 2e-3  # AdamW learning rate (cosine decay)
    weight_decay: float = 0.05  # AdamW weight decay
    batch_size: int = 64  # frames per step
    feature_noise: float = 0.15  # std of Gaussian noise added to the normalised features while training
    voice_dropout: float = 0.5  # share of training samples whose voice (mel) columns are zeroed: phones alone
    freq_mask: int = 12  # SpecAugment: up to this many adjacent feature bins zeroed per sample while training
    time_shift: int = 4  # augmentation: audio shifted by up to this many feature rows (10 ms each), targets follow
    silence_fraction: float = 0.05  # share of each batch replaced by all-zero audio with the closed-mouth target
    opening_weight: float = 1.0  # extra loss weight of the inner-lip opening (relative to all targets together)
    holdout_fraction: float = 0.12  # share of the training frames held out for early stopping, per member
    eval_every: int = 50  # steps between early-stopping checks
    patience: int = 6  # checks without improvement before a member stops
    memory_k: tuple[int, ...] = (3, 5, 8)  # neighbour counts the example memory may use (chosen on held-out slices)
    memory_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # memory shares it may use (0: network only)
    memory_sigma: float = 1.0  # frames: the memory's predictions are smoothed over neighbours with this Gaussian
    # Weight of the voice columns (mel, energy, pitch) in the memory's distances: below 1 it finds the training
    # frames that said the same more than those that sounded the same, so another voice finds the right ones.
    memory_voice_weight: float = 0.5
    # At most this many training frames in the memory (evenly spaced), so long videos keep it cheap: 7500 entries
    # (5 min) cost ~8 ms a frame on a 2-core CPU and 39 MB.
    memory_max: int = 7500
    max_gain: float = 2.0  # at most this amplification of the predicted motion (see AudioEncoder.gain)
    # How much of the motion gains (`max_gain`, `max_clip_gain`) a prediction gets from its held-out lip-opening
    # correlation: none below `gain_min_corr` (mostly noise, amplifying it makes the lips chatter), all from
    # `gain_full_corr`, in proportion between (a single threshold made two trainings of one video that landed
    # either side of it opposite avatars: one lazy on every other voice, one lively; docs/audio.md).
    gain_min_corr: float = 0.4
    gain_full_corr: float = 0.7
    # A voice the encoder never heard moves the mouth less than the person's own (it hedges); each clip's
    # motion is amplified by up to this factor to the spread the person's own voice gives (1: off).
    max_clip_gain: float = 1.3
    pause_closes: bool = True  # where the phone decoder hears a pause in quiet audio, the mouth closes
    # After a pause of at least this many frames the mouth opens over the same many frames before the speech
    # that ends it, as speakers' mouths do (at most `context`: the frames the windows hold). Off by default:
    # it costs pause closure on real speech (docs/audio.md)
    pause_lead: int = 0
    voices: VoiceAugmentConfig = field(default_factory=VoiceAugmentConfig)  # re-voiced copies of the training audio


MIN_SPEAKING_FRAMES = 25  # a second of speech at 25 fps before a clip's motion is measured
# A clip's noise floor is the energy its quietest frames reach (this percentile, in clip standard deviations
# from its mean). A frame within FLOOR_QUIET of it is quiet for the pause gate, one beyond FLOOR_QUIET +
# FLOOR_RAMP is not: room noise, a music bed or hiss sits about 1.5 standard deviations below a recording's
# mean, where the fixed rule (below) counted it as voice. Kept this close to the floor because a speaker's soft,
# unparsed speech can lie a few tenths above it with the mouth open.
FLOOR_PERCENTILE = 5.0
FLOOR_QUIET, FLOOR_RAMP = 0.1, 0.3
# The fixed rule: a frame FIXED_QUIET clip standard deviations below the clip's mean starts to be quiet, one
# FIXED_RAMP further below it is: where a clean recording's pauses and a stream's digital silence fall. Starting
# lower lets a speaker's audible breath before speaking through but leaves more of real speech's pauses partly
# open (docs/results.md).
FIXED_QUIET, FIXED_RAMP = 1.0, 1.0


@dataclass(frozen=True)
class ClipLevels:
    """What the audio encoder reads off a whole driving clip before driving frames with it
    (`AudioEncoder.levels`): how much to amplify its motion and where its quiet is."""

    gain: float = 1.0  # the clip's motion gain (see `AudioEncoder.levels`)
    noise_floor: float = -math.inf  # normalised energy of the clip's quietest frames (-inf: the fixed rule only)


NO_LEVELS = ClipLevels()  # frames heard on their own (training): no gain, the fixed quietness rule


# ------------------------------------------------------------------------------------------------- model
class WindowEncoder(nn.Module):
    """[B, W, F] one frame's feature window -> [B, embed_dim]: per-row projection of the features, then 1D
    convolutions over time that halve it twice."""

    def __init__(self, feature_dim: int, window: int, channels: int, embed_dim: int, dropout: float):
        super().__init__()
        self.convs = nn.Sequential(  # a pointwise projection first: the full-width convolutions are costly on CPU
            nn.Conv1d(feature_dim, channels, 1),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.GELU(),
        )
        reduced = (window + 3) // 4
        self.out = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * reduced, embed_dim))

    def forward(self, windows: Tensor) -> Tensor:
        return self.out(self.convs(windows.transpose(1, 2)))


class EncoderMember(nn.Module):
    """One encoder: window encoder per frame, temporal self-attention, the centre frame's token."""

    def __init__(self, cfg: AudioEncoderConfig, feature_dim: int, window: int, expression_dim: int):
        super().__init__()
        frames = 2 * cfg.context + 1
        self.window_encoder = WindowEncoder(feature_dim, window, cfg.channels, cfg.embed_dim, cfg.dropout)
        self.position = nn.Parameter(torch.zeros(frames, cfg.embed_dim))
        layer = nn.TransformerEncoderLayer(
            cfg.embed_dim,
            cfg.heads,
            2 * cfg.embed_dim,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.temporal = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.head = nn.Linear(cfg.embed_dim, expression_dim)

    def forward(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        b, c, w, f = audio.shape
        tokens = self.window_encoder(audio.reshape(b * c, w, f)).reshape(b, c, -1) + self.position
        centre = self.norm(self.temporal(tokens)[:, c // 2])  # [B, embed_dim]
        return centre, self.head(centre)


class ExampleMemory(nn.Module):
    """Nearest-neighbour regression over the training frames: audio window -> the mean tracked expression of
    the k training frames whose windows are closest (Euclidean, normalised features).

    Why next to the network: with under a minute of speech, a lookup of how this person's mouth moved for
    the most similar sounds is a strong predictor of its own (on the 50 s Macron clip it follows the
    validation lip opening better than the network), and the two err differently, so their blend beats
    both. The share of each is chosen on held-out slices of the training frames (`choose_memory_blend`), so a
    dataset where the lookup does not help gets the network alone. Predictions are smoothed over the
    neighbouring frames of the window stack. Silence (the all-zero window) is stored as k entries with the
    closed-mouth expression, so a silent clip still gives a still, closed mouth. The voice columns weigh
    `memory_voice_weight` in the distances (avatars made before it was introduced: 1).
    """

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.sigma = cfg.memory_sigma
        # Sized by the dataset, hence empty until `fill` or a checkpoint's state (see _load_from_state_dict).
        self.register_buffer("keys", torch.zeros(0, 0))  # [M, W*F] flattened windows
        self.register_buffer("values", torch.zeros(0, 0))  # [M, E] tracked expression targets
        self.register_buffer("frames", torch.zeros(0, dtype=torch.long))  # [M] dataset frame id (-1: silence)
        self.register_buffer("k", torch.tensor(5))
        self.register_buffer("span", torch.tensor(0))  # frames apart before two windows share no audio
        self.register_buffer("weight", torch.tensor(0.0))  # share of the memory in the blend with the network
        self.register_buffer("voice_columns", torch.tensor(0))  # the first feature columns describe the voice
        self.register_buffer("voice_weight", torch.tensor(float(cfg.memory_voice_weight)))
        self._key_norms: tuple[Tensor, Tensor] | None = None  # (the keys they belong to, [M] squared norms)

    def fill(
        self, windows: Tensor, targets: Tensor, frames: Tensor, rest: Tensor, k: int, span: int, voice_columns: int = 0
    ) -> None:
        """[M, W, F] windows, [M, E] targets and [M] frame ids of the training frames; [E] closed mouth;
        `span`: frames apart before two windows share no audio sample; `voice_columns`: the first columns
        of the features that describe the voice."""
        self.voice_columns = torch.tensor(voice_columns)
        silence = torch.zeros(k, *windows.shape[1:], dtype=windows.dtype)
        self.keys = self._weighted(torch.cat([windows, silence])).flatten(1).float().contiguous()
        self.values = torch.cat([targets, rest.expand(k, -1)]).float()
        self.frames = torch.cat([frames.long(), torch.full((k,), -1, dtype=torch.long)])
        self.k = torch.tensor(k)
        self.span = torch.tensor(span)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("keys", "values", "frames"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        if prefix + "voice_columns" not in state_dict:  # made before the voice was weighted: all columns alike
            state_dict[prefix + "voice_columns"], state_dict[prefix + "voice_weight"] = (
                torch.tensor(0),
                torch.tensor(1.0),
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _weighted(self, windows: Tensor) -> Tensor:
        """[..., W, F] windows with their voice columns times `voice_weight`."""
        v = int(self.voice_columns)
        if v == 0:
            return windows
        return torch.cat([windows[..., :v] * self.voice_weight.to(windows.dtype), windows[..., v:]], -1)

    @property
    def active(self) -> bool:
        return len(self.frames) > 0 and float(self.weight) > 0

    def _squared_distances(self, queries: Tensor) -> Tensor:
        """[Q, W*F] -> [Q, M] squared Euclidean distances to the keys, as |q|^2 + |k|^2 - 2 q.k (the order is
        that of the distances). The keys' squared norms are kept while the keys stay the same tensor: for a
        long video's memory they would otherwise be most of each frame's work."""
        if self._key_norms is None or self._key_norms[0] is not self.keys:
            self._key_norms = (self.keys, self.keys.pow(2).sum(-1))
        keys, norms = self.keys.to(queries.dtype), self._key_norms[1].to(queries.dtype)
        return (queries.pow(2).sum(-1, keepdim=True) + norms - 2 * queries @ keys.T).clamp_min(0)

    def forward(self, audio: Tensor, frames: Tensor | None = None, k: int | None = None) -> Tensor:
        """[B, 2K+1, W, F] window stacks -> [B, E]. `frames` [B]: the dataset frames the stacks belong to;
        memory entries whose windows overlap any window of the stack are then skipped (a training frame
        must not find itself)."""
        b, c = audio.shape[:2]
        k = int(self.k) if k is None else k
        offsets = torch.arange(c, device=audio.device) - c // 2
        weights = torch.exp(-0.5 * (offsets / max(self.sigma, 1e-6)) ** 2)
        use = weights > 0.05  # context frames that matter for the smoothing
        queries = self._weighted(audio[:, use]).flatten(2)  # [B, C', W*F]
        flat = queries.reshape(-1, queries.shape[-1])
        dist = self._squared_distances(flat).reshape(b, -1, len(self.keys))  # [B, C', M]
        if frames is not None:
            reach = int(offsets[use].abs().max()) + int(self.span)  # entries this close share audio with a window
            near = (self.frames[None, :] - frames[:, None].to(self.frames.device)).abs() < reach  # [B, M]
            near &= self.frames[None, :] >= 0
            dist = dist.masked_fill(near[:, None, :], float("inf"))
        idx = dist.topk(k, dim=-1, largest=False).indices  # [B, C', k]
        per_window = self.values.to(audio.dtype)[idx].mean(-2)  # [B, C', E]
        w = weights[use] / weights[use].sum()
        return torch.einsum("bce,c->be", per_window, w)


class AudioEncoder(nn.Module):
    """[B, 2K+1, W, F] normalised audio windows of a frame and its neighbours -> (embedding [B, embed_dim],
    expression [B, E]). With several members (an ensemble trained on different held-out slices) the
    expression is their mean and the embedding their concatenation; the example memory, when it has a
    share, is blended into the expression."""

    def __init__(self, cfg: AudioEncoderConfig, feature_dim: int, window: int, expression_dim: int):
        super().__init__()
        self.cfg = cfg
        self.context = cfg.context
        self.embed_dim = cfg.embed_dim * cfg.members
        self.members = nn.ModuleList(
            EncoderMember(cfg, feature_dim, window, expression_dim) for _ in range(cfg.members)
        )
        self.memory = ExampleMemory(cfg)
        # A regressor trained for the least squared error predicts less motion than there is (it hedges
        # towards the mean), and the mouth looks lazy. The prediction's departure from the closed mouth is
        # amplified by the gain that gives the held-out lip opening the tracked one's spread (around the
        # closed mouth, not the mean: a closed mouth must stay closed, not be pushed through itself), then
        # clamped to the range the person's face showed in the training frames.
        self.register_buffer("gain", torch.tensor(1.0))
        # Share of the motion gains the held-out correlation earned (`audio_fit.gain_share`): it also scales the
        # per-clip gain's ceiling (`levels_of`).
        self.register_buffer("gain_share", torch.tensor(1.0))
        self.register_buffer("closed", torch.zeros(expression_dim))
        self.register_buffer("target_min", torch.full((expression_dim,), -float("inf")))
        self.register_buffer("target_max", torch.full((expression_dim,), float("inf")))
        # Feature columns of the phonetic silence class and of the clip-normalised log energy (-1: none).
        # Pauses inside speech are not silence to the mel features after clip normalisation (a TTS pause is
        # digital silence, a recording's is room noise), and a regressor trained on a minute of one person
        # hedges there: a half-open mouth. Where the voice-independent decoder hears a pause AND the frame is
        # quiet for this clip, the mouth is pulled to its closed shape (quiet alone is not enough: the decoder
        # also hears "silence" in voiced stretches of speech it cannot parse, such as other languages).
        self.register_buffer("silence_column", torch.tensor(-1))
        self.register_buffer("energy_column", torch.tensor(-1))
        # The inner-lip opening direction of the targets (ExpressionSpace.opening), and the spread of the
        # opening while the person's own training voice speaks (0: no clip gain, see clip_gain).
        self.register_buffer("opening", torch.zeros(expression_dim))
        self.register_buffer("speech_spread", torch.tensor(0.0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # avatars saved before the pause gate have no phonetic columns: they load with the gate off; those
        # saved before the clip gain load without it
        for name in ("silence_column", "energy_column"):
            state_dict.setdefault(prefix + name, torch.tensor(-1))
        state_dict.setdefault(prefix + "opening", torch.zeros_like(self.opening))
        state_dict.setdefault(prefix + "speech_spread", torch.tensor(0.0))
        state_dict.setdefault(prefix + "gain_share", torch.tensor(1.0))  # before the share: all or nothing
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _blend(self, audio: Tensor, frames: Tensor | None) -> tuple[Tensor, Tensor]:
        """(embedding, the members' mean expression blended with the memory's), before any gain."""
        outputs = [m(audio) for m in self.members]
        embedding = torch.cat([e for e, _ in outputs], dim=-1)
        expression = torch.stack([x for _, x in outputs]).mean(0)
        if self.memory.active:
            w = self.memory.weight.to(expression.dtype)
            expression = (1 - w) * expression + w * self.memory(audio, frames)
        return embedding, expression

    def forward(
        self, audio: Tensor, frames: Tensor | None = None, clip: ClipLevels = NO_LEVELS
    ) -> tuple[Tensor, Tensor]:
        """`frames` [B]: dataset frame ids of training-set stacks, so the memory skips their own neighbourhood;
        `clip`: the driving clip's levels (`levels`)."""
        embedding, expression = self._blend(audio, frames)
        expression = self.closed + self.gain * clip.gain * (expression - self.closed)
        if self.cfg.pause_closes and int(self.silence_column) >= 0:
            expression = self.closed + (1 - self.pause(audio, clip.noise_floor)[:, None]) * (expression - self.closed)
        expression = torch.minimum(torch.maximum(expression, self.target_min), self.target_max)
        return embedding, expression

    @torch.no_grad()
    def frame_measures(self, chunk: Tensor | np.ndarray, frames: Tensor | None = None) -> np.ndarray:
        """[b, 3] float64 per frame of `chunk` ([b, 2K+1, W, F] windows of consecutive frames): the gained lip
        opening before the pause gate, the decoder's pause certainty and the energy the gate reads
        (`_pause_parts`), from which `levels_of` finds a clip's levels; a live stream keeps them over a rolling
        span. `frames`: the chunk's dataset frame ids (for the training clip, see `forward`)."""
        audio = torch.as_tensor(
            np.array(chunk, np.float32) if isinstance(chunk, np.ndarray) else chunk, device=self.opening.device
        )
        opening = (self.gain * (self._blend(audio, frames)[1] - self.closed)) @ self.opening
        if int(self.silence_column) >= 0:
            sure, energy = self._pause_parts(audio)
        else:
            sure = energy = torch.zeros_like(opening)
        return torch.stack([opening, sure, energy], dim=1).double().cpu().numpy()

    def noise_floor(self, measures: np.ndarray) -> float:
        """The clip's noise floor (`ClipLevels`) from its frames' `frame_measures` [N, 3]."""
        if len(measures) == 0 or int(self.silence_column) < 0:
            return -math.inf
        return float(np.percentile(measures[:, 2], FLOOR_PERCENTILE))

    def speaking_spread(self, measures: np.ndarray, noise_floor: float) -> float:
        """Standard deviation of the gained lip opening over the frames that are not pauses; nan with fewer
        than MIN_SPEAKING_FRAMES of them."""
        opening, sure, energy = measures.T
        if int(self.silence_column) >= 0:
            opening = opening[sure * quietness(energy, noise_floor) < 0.5]
        return float(np.std(opening)) if len(opening) >= MIN_SPEAKING_FRAMES else float("nan")

    def levels_of(self, measures: np.ndarray) -> ClipLevels:
        """The `ClipLevels` of the frames whose `frame_measures` are `measures` [N, 3]: the noise floor, then
        the motion gain: the person's own speaking spread over the clip's, within 1 .. max_clip_gain (a voice
        the encoder never heard gives hedged, lazy predictions; a clip that already moves as much is left as
        it is, and a clip with too little speech gets 1); the ceiling is scaled by `gain_share`."""
        floor = self.noise_floor(measures)
        spread = self.speaking_spread(measures, floor)
        gain, ceiling = 1.0, 1.0 + float(self.gain_share) * (self.cfg.max_clip_gain - 1.0)
        if float(self.speech_spread) > 0 and ceiling > 1 and np.isfinite(spread) and spread > 0:
            gain = float(np.clip(float(self.speech_spread) / spread, 1.0, ceiling))
        return ClipLevels(gain, floor)

    def levels(self, chunks: Iterable[Tensor | np.ndarray], frames: Iterable[Tensor | None] = ()) -> ClipLevels:
        """The `ClipLevels` of a whole clip given as chunks of windows (see `frame_measures`)."""
        frames = iter(frames)
        measures = [self.frame_measures(chunk, next(frames, None)) for chunk in chunks]
        return self.levels_of(np.concatenate(measures) if measures else np.zeros((0, 3)))

    def _pause_parts(self, audio: Tensor, step: int = 0) -> tuple[Tensor, Tensor]:
        """[B] each: how surely the phone decoder hears a pause (its silence probability over 50 ms, from 0.5
        to 0.9, at the frame's centre or later in its window), and the clip-normalised energy over the frame's
        centre (+-20 ms) and the rest of its window ahead (see `pause`); of the frame `step` frames after
        each stack's own (a neighbour its context holds)."""
        c, w = audio.shape[1] // 2 + step, audio.shape[2] // 2
        ahead = audio[:, c, w - 2 :]  # [B, rows, F]: from 20 ms before the centre to the window's end
        span = min(5, ahead.shape[1])  # 50 ms (a 4-row window has fewer rows ahead)
        silence = ahead[..., int(self.silence_column)].unfold(1, span, 1).mean(-1)  # [B, rows - span + 1]
        sure = ((silence.amax(-1) - 0.5) / 0.4).clamp(0, 1)
        if int(self.energy_column) < 0:  # no energy column: every frame is quiet, the decoder decides alone
            return sure, torch.full_like(sure, -1e6)
        return sure, ahead[..., int(self.energy_column)].mean(-1)

    def pause(self, audio: Tensor, noise_floor: float = -math.inf) -> Tensor:
        """[B, 2K+1, W, F] -> [B] in 0..1: how surely the frame is in a pause: the decoder's silence
        probability (over 50 ms, from 0.5 to 0.9) at the frame's centre or later in its window, times the
        `quietness` of the energy over the frame's centre (+-20 ms) and the rest of its window ahead, given
        the clip's `noise_floor` (`ClipLevels`).

        Why ahead and not around: the decoder counts a word's decaying end to the word, so its pause starts
        a frame or two after the sound has faded, and the mouth would close late; looking ahead closes it as
        the sound fades. At a pause's end a speaker's mouth opens before the sound starts (their own
        recordings show it), so the speech that follows must not hold it closed: nothing looks back to close it.
        After a pause of `cfg.pause_lead` frames or more the certainty falls over the last `pause_lead` frames
        before the speech (times the mean certainty of the frame and its next `pause_lead`): the three shared
        videos' mouths open 100-300 ms before the sound that ends a pause. Shorter gaps between words are
        left as they are."""

        def certainty(step: int) -> Tensor:
            sure, energy = self._pause_parts(audio, step)
            return sure * quietness(energy, noise_floor)

        own = certainty(0)
        lead = min(self.cfg.pause_lead, audio.shape[1] // 2)  # the stacks hold this many frames ahead
        if lead == 0:
            return own
        lasted = torch.stack([certainty(-j) for j in range(1, lead + 1)]).amin(0)  # a pause this long already
        ahead = torch.stack([own] + [certainty(j) for j in range(1, lead + 1)]).mean(0)  # falls as speech nears
        return own * (1 - lasted * (1 - ahead))


def quietness(energy, noise_floor: float):
    """0..1 per frame (a tensor or array of clip-normalised energies): from FIXED_QUIET to FIXED_QUIET +
    FIXED_RAMP clip standard deviations below the clip's mean, or from FLOOR_QUIET + FLOOR_RAMP to FLOOR_QUIET
    above its noise floor, whichever says quieter (a clean recording's pauses reach both, a noisy one's only the
    second)."""
    fixed = (-FIXED_QUIET - energy) / FIXED_RAMP
    floor = (noise_floor + FLOOR_QUIET + FLOOR_RAMP - energy) / FLOOR_RAMP
    both = np.maximum(fixed, floor) if isinstance(energy, np.ndarray) else torch.maximum(fixed, floor)
    return both.clip(0, 1)
