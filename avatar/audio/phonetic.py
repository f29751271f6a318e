"""Speaker-independent phonetic features: pocketsphinx phone decoding turned into soft class rows at 100 Hz.

Log-mel windows carry the training speaker's voice as much as what is said, so an encoder trained on them
barely moves the mouth for another voice. Which phone is spoken, and the mouth shape it needs, do not
depend on the voice: this module decodes phones with the CMU en-us acoustic model that ships inside the
pocketsphinx wheel (nothing is downloaded) and turns them into per-row class probabilities.

Alignment: row t is centred at t / 100 s and a wave of n samples at 16 kHz gives 1 + n // 160 rows, the
rows librosa's centred frames give for hop 160 (so these rows line up with the mel rows of the same wave).
A pocketsphinx frame f covers samples [160 f, 160 f + 410), centred 1.28 rows after row f.

The rows of a clip are decoded on the fixed window grid of `avatar.audio.grid`, not as one utterance:
the acoustic model normalises each decoded utterance by its own cepstral mean (its feat.params fixes batch
CMN), so a whole-clip decode could not be reproduced by a stream in bounded memory.
pocketsphinx is imported only when phones are decoded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from avatar.audio.grid import RATE_HZ, grid_rows, num_rows
from avatar.audio.io import SAMPLE_RATE

FRAME_TO_ROW_SHIFT = 1  # pocketsphinx frame f is centred at row f + 1.28
DECODER_FRAME = 410  # samples in one pocketsphinx analysis window
DITHER_LSB = 4.0  # int16 steps (-78 dBFS): below any recording's noise floor

SILENCE = "SIL"
# The 39 CMU phones the allphone decoder emits, then the silence class (which also takes the fillers).
PHONES: tuple[str, ...] = (
    "AA",
    "AE",
    "AH",
    "AO",
    "AW",
    "AY",
    "B",
    "CH",
    "D",
    "DH",
    "EH",
    "ER",
    "EY",
    "F",
    "G",
    "HH",
    "IH",
    "IY",
    "JH",
    "K",
    "L",
    "M",
    "N",
    "NG",
    "OW",
    "OY",
    "P",
    "R",
    "S",
    "SH",
    "T",
    "TH",
    "UH",
    "UW",
    "V",
    "W",
    "Y",
    "Z",
    "ZH",
    SILENCE,
)
# Fillers of the en-us model (noisedict) and utterance markers: no articulation, so silence.
FILLERS = frozenset({"SIL", "+NSN+", "+SPN+", "<s>", "</s>", "<sil>", "(NULL)"})

# Mouth-shape classes. AO (as in "thought") is not in the usual rounded set: its jaw opening is that of
# the open vowels, and lip opening is what the avatar has to get right.
VISEMES: dict[str, tuple[str, ...]] = {
    "bilabial": ("P", "B", "M"),
    "labiodental": ("F", "V"),
    "rounded": ("W", "UW", "OW", "UH", "OY"),
    "open": ("AA", "AE", "AH", "AO", "AY", "AW"),
    "mid": ("EH", "EY", "ER"),
    "spread": ("IY", "IH", "Y"),
    "dental_alveolar": ("TH", "DH", "T", "D", "N", "L", "S", "Z"),
    "postalveolar": ("SH", "ZH", "CH", "JH"),
    "velar_glottal": ("K", "G", "NG", "HH"),
    "r": ("R",),
    "silence": (SILENCE,),
}
VISEME_NAMES: tuple[str, ...] = tuple(VISEMES)
PHONE_TO_VISEME: dict[str, str] = {p: v for v, phones in VISEMES.items() for p in phones}
assert sorted(PHONE_TO_VISEME) == sorted(PHONES), "every phone needs exactly one viseme"

Segment = tuple[str, int, int]  # (phone in PHONES, first row, end row exclusive)


def normalize_phone(label: str) -> str:
    """A decoder label -> a member of PHONES (fillers and anything unknown are silence)."""
    label = label.upper()
    return label if label in PHONES and label not in FILLERS else SILENCE


def new_decoder(**settings):
    """A fresh allphone decoder (about 0.2 s: it loads the acoustic model); `settings` override the
    decoder's (the live stream's running cepstral mean). Not reused across offline calls: a decoder keeps
    state between utterances (its cepstral mean and more), and a reused one decoded the same 50 s wave
    differently the second time (0.2 % of rows), which would make training and render-time features of the
    same audio differ."""
    import pocketsphinx  # noqa: PLC0415 - the phone decoder loads when phones are decoded

    model = pocketsphinx.get_model_path()
    return pocketsphinx.Decoder(
        hmm=os.path.join(model, "en-us", "en-us"),
        allphone=os.path.join(model, "en-us", "en-us-phone.lm.bin"),
        lw=2.0,
        pip=0.3,
        beam=1e-20,
        pbeam=1e-20,
        samprate=float(SAMPLE_RATE),
        logfn=os.devnull,
        **settings,
    )


def dither(first_sample: int, count: int, amplitude: float = DITHER_LSB) -> np.ndarray:
    """[count] uniform noise in [-amplitude, amplitude) int16 steps, a fixed function of the absolute sample
    index. Digital silence (exact zeros) decodes as a long fricative; a few steps of noise make it silence,
    and tying the noise to the sample index gives a window the same samples as the whole wave."""
    index = np.arange(first_sample, first_sample + count, dtype=np.uint64)
    hashed = (index * np.uint64(2654435761) + np.uint64(0x9E3779B9)) % np.uint64(1 << 32)
    return (hashed.astype(np.float64) / float(1 << 32) * 2.0 - 1.0) * amplitude


def decoder_pcm(wave: np.ndarray, first_sample: int = 0) -> np.ndarray:
    """[S] float samples starting at `first_sample` of a recording -> the int16 samples the decoder hears
    (with the `dither` of their sample indices)."""
    scaled = np.clip(wave, -1.0, 1.0) * 32767.0 + dither(first_sample, wave.size)
    return np.clip(np.round(scaled), -32768, 32767).astype(np.int16)


def decoded_segments(decoder, first_row: int = 0) -> list[Segment]:
    """The decoder's best path so far as (phone, start_row, end_row) on the 100 Hz row grid of a recording
    whose row `first_row` is the utterance's first frame."""
    shift = first_row + FRAME_TO_ROW_SHIFT
    return [(normalize_phone(s.word), s.start_frame + shift, s.end_frame + 1 + shift) for s in decoder.seg() or ()]


def decode_phones(wave: np.ndarray, first_sample: int = 0) -> list[Segment]:
    """Phones of a mono float wave at 16 kHz as (phone, start_row, end_row) on the 100 Hz row grid, end
    exclusive, in time order, gaps between segments left out. Fillers come back as SIL. `first_sample` is
    where `wave` starts in a longer recording (it only selects the dither). Under one decoder frame
    (410 samples) there is nothing to decode: no segments."""
    wave = np.asarray(wave, np.float32).reshape(-1)
    if wave.size < DECODER_FRAME:
        return []
    decoder = new_decoder()
    decoder.start_utt()
    decoder.process_raw(decoder_pcm(wave, first_sample).tobytes(), full_utt=True)
    decoder.end_utt()
    return decoded_segments(decoder)


def row_labels(segments: list[Segment], rows: int) -> np.ndarray:
    """[rows] phone indices into PHONES: each row takes its segment, rows in gaps are silence, rows before
    the first or after the last segment repeat the edge segment (the decoder has no frame there)."""
    labels = np.full(rows, PHONES.index(SILENCE), np.int64)
    if not segments:
        return labels
    for phone, start, end in segments:
        labels[max(start, 0) : max(min(end, rows), 0)] = PHONES.index(phone)
    first, last = segments[0], segments[-1]
    labels[: max(min(first[1], rows), 0)] = PHONES.index(first[0])
    labels[max(last[2], 0) :] = PHONES.index(last[0])
    return labels


def gaussian_smooth(one_hot: np.ndarray, sigma_rows: float) -> np.ndarray:
    """Cross-fade class rows over neighbouring rows (edges repeated); rows still sum to one. A phone's
    mouth shape starts before its acoustic onset and lingers after it (coarticulation)."""
    if sigma_rows <= 0:
        return one_hot
    radius = int(np.ceil(3 * sigma_rows))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_rows) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(one_hot, ((radius, radius), (0, 0)), mode="edge")
    out = np.zeros_like(one_hot)
    for k, w in enumerate(kernel):
        out += w * padded[k : k + one_hot.shape[0]]
    return out


_VISEME_OF_PHONE = np.array([VISEME_NAMES.index(PHONE_TO_VISEME[p]) for p in PHONES])


@dataclass
class PhoneticFeatures:
    """Soft one-hot phone and/or viseme classes at 100 Hz; same interface as the mel extractor
    (`name`, `rate_hz`, `dim`, `__call__(wave) -> [T, dim]`), so it can stand in for it or be concatenated
    with it. `sigma_ms` is the Gaussian cross-fade across class boundaries (0: hard one-hot).

    Defaults from benchmarks/probe_phonetic.py (ridge from windows to lip opening, trained on one speaker,
    tested on another): visemes beat phones across speakers (11 classes generalise where 40 overfit one
    speaker), mel + visemes beat mel alone, and the cross-fade width barely matters (10-40 ms)."""

    classes: Literal["phones", "visemes", "both"] = "visemes"
    sigma_ms: float = 20.0
    rate_hz: float = RATE_HZ
    window_s: float = 20.0  # decoding window of the fixed grid (see the module docstring)
    overlap_s: float = 2.0
    seconds: float = field(default=0.0, compare=False, repr=False)  # time spent decoding so far (for reports)

    @property
    def name(self) -> str:
        return f"pocketsphinx-{self.classes}-s{self.sigma_ms:g}ms-w{self.window_s:g}s-v2"

    @property
    def dim(self) -> int:
        return {"phones": len(PHONES), "visemes": len(VISEME_NAMES), "both": len(PHONES) + len(VISEME_NAMES)}[
            self.classes
        ]

    @property
    def silence_index(self) -> int:
        """Column of the silence class in this extractor's rows."""
        return PHONES.index(SILENCE) if self.classes in ("phones", "both") else VISEME_NAMES.index("silence")

    def from_labels(self, labels: np.ndarray) -> np.ndarray:
        """[T] phone indices -> [T, dim] float32 soft class rows."""
        sigma = self.sigma_ms / 1000.0 * self.rate_hz
        parts = []
        if self.classes in ("phones", "both"):
            parts.append(gaussian_smooth(np.eye(len(PHONES), dtype=np.float32)[labels], sigma))
        if self.classes in ("visemes", "both"):
            parts.append(gaussian_smooth(np.eye(len(VISEME_NAMES), dtype=np.float32)[_VISEME_OF_PHONE[labels]], sigma))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """[S] float32 at 16 kHz -> [1 + S // 160, dim] float32 (decoded on the fixed window grid)."""
        wave = np.asarray(wave, np.float32).reshape(-1)
        return np.concatenate(list(self.stream([wave])))

    def rows(self, wave: np.ndarray, first_sample: int = 0) -> np.ndarray:
        """Rows of `wave` decoded as ONE utterance; `first_sample`: where it starts in a longer recording."""
        wave = np.asarray(wave, np.float32).reshape(-1)
        start = time.perf_counter()
        segments = decode_phones(wave, first_sample)
        self.seconds += time.perf_counter() - start
        return self.from_labels(row_labels(segments, num_rows(wave.size)))

    def stream(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Consecutive blocks of the rows of audio given as consecutive sample chunks, holding at most
        `window_s` of samples; concatenated, they are `__call__`'s rows (see `grid_rows`)."""
        return grid_rows(chunks, self.rows, self.window_s, self.overlap_s, self.rate_hz)
