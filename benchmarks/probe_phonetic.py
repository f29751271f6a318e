"""Which audio representation predicts lip opening ACROSS speakers: a linear (ridge) probe.

The audio encoder is trained on one speaker and must move the mouth for any voice. A ridge regression from
16-row feature windows to the tracked inner-lip opening, trained on one speaker's whole clip and tested on
another's, measures how much of each representation transfers, without training a network. Compared:
per-clip-normalised log-mel windows, soft phone / viseme one-hots from pocketsphinx (English phones, also
for the French and German clips) at a few smoothing widths, and mel concatenated with each.

Also printed: decoding speed, and how far chunked decoding (20 s windows, 2 s overlap) departs from decoding
the whole clip at once. Lip openings and phone labels are cached in /tmp/probe_phonetic_cache.

    python benchmarks/probe_phonetic.py
"""

from __future__ import annotations

import time
from pathlib import Path

import av
import librosa
import numpy as np

from avatar.audio.grid import HOP, num_rows
from avatar.audio.phonetic import PHONES, SAMPLE_RATE, SILENCE, PhoneticFeatures, decode_phones, row_labels
from avatar.contracts.face_mesh import FaceMesh, mouth_opening
from avatar.examples import example_data
from avatar.tables import format_table

DATA = example_data()
CACHE = Path("/tmp/probe_phonetic_cache")
CLIPS = {"fr": "dfrf_macron_address_50s.mp4", "de": "mimictalk_german_anchor_20s.mp4", "en": "edtalk_obama_20s.mp4"}
FPS = 25.0
WINDOW = 16
MAX_LAG = 3
SIGMAS_MS = (0.0, 10.0, 20.0, 40.0)
LAMBDAS = 10.0 ** np.arange(-1, 5.5, 0.5)


def lip_openings(video: Path) -> tuple[np.ndarray, np.ndarray]:
    """(times [N] s, opening [N]) per decoded frame: `face_mesh.mouth_opening` of the 3D landmarks, NaN where
    no face was found. Time = frame timestamp + half a frame (centre)."""

    times, opening = [], []
    with av.open(str(video)) as container, FaceMesh(static=False) as mesh:
        stream = container.streams.video[0]
        half_frame = 0.5 / float(stream.average_rate)
        for frame in container.decode(stream):
            faces = mesh.faces(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time) + half_frame)
            opening.append(float(mouth_opening(faces[0])) if faces else np.nan)
    return np.array(times), np.array(opening)


def audio_16k(video: Path) -> np.ndarray:
    """The clip's sound track, mono float32 at 16 kHz (PyAV decodes, librosa resamples)."""

    with av.open(str(video)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        to_mono = av.AudioResampler(format="flt", layout="mono", rate=rate)
        wave = np.concatenate(
            [out.to_ndarray().reshape(-1) for frame in container.decode(stream) for out in to_mono.resample(frame)]
        )
    return librosa.resample(wave, orig_sr=rate, target_sr=SAMPLE_RATE).astype(np.float32)


def clip_data(key: str) -> dict[str, np.ndarray]:
    """Openings at 25 fps frame centres and the 16 kHz audio (cached: tracking is the slow part), then the
    phone labels per row and the time decoding took (every run)."""
    video = DATA / CLIPS[key]
    path = CACHE / f"{video.stem}-{video.stat().st_size}.npz"
    if path.is_file():
        data = dict(np.load(path))
    else:
        times, opening = lip_openings(video)
        ok = np.isfinite(opening)
        wave = audio_16k(video)
        frames = int(min(times[-1] + 0.5 / FPS, wave.size / SAMPLE_RATE) * FPS)
        centres = (np.arange(frames) + 0.5) / FPS
        data = {"opening": np.interp(centres, times[ok], opening[ok]), "wave": wave, "face_share": np.array(ok.mean())}
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(path, **data)
    start = time.perf_counter()
    data["labels"] = row_labels(decode_phones(data["wave"]), num_rows(data["wave"].size))
    data["decode_s"] = np.array(time.perf_counter() - start)
    return data


def log_mel(wave: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """[T, n_mels] log-mel with the avatar's MelFeatures settings, normalised over the clip."""

    mel = librosa.feature.melspectrogram(
        y=wave,
        sr=SAMPLE_RATE,
        n_fft=512,
        win_length=400,
        hop_length=HOP,
        n_mels=n_mels,
        fmin=40,
        fmax=7600,
        center=True,
    )
    feats = np.log(mel + 1e-6).T
    return (feats - feats.mean(0)) / (feats.std(0) + 1e-4)


def windows(rows: np.ndarray, frames: int) -> np.ndarray:
    """[T, F] -> [frames, 16 * F]: rows round(centre * 100) - 8 .. + 7 of each frame, edges repeated."""
    centres = (np.arange(frames) + 0.5) / FPS
    idx = np.round(centres * 100).astype(np.int64)[:, None] - WINDOW // 2 + np.arange(WINDOW)[None, :]
    return rows[np.clip(idx, 0, rows.shape[0] - 1)].reshape(frames, -1)


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(column mean, weights, intercept) of ridge on centred data, solved in whichever of the primal or
    dual form is smaller."""
    mu = x.mean(0)
    xc, yc = x - mu, y - y.mean()
    if xc.shape[0] < xc.shape[1]:
        w = xc.T @ np.linalg.solve(xc @ xc.T + lam * np.eye(xc.shape[0]), yc)
    else:
        w = np.linalg.solve(xc.T @ xc + lam * np.eye(xc.shape[1]), xc.T @ yc)
    return mu, w, float(y.mean())


def ridge_predict(model: tuple[np.ndarray, np.ndarray, float], x: np.ndarray) -> np.ndarray:
    mu, w, b = model
    return (x - mu) @ w + b


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def lagged(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson r at lag 0 and the best over lags -3..3 frames (prediction shifted against the tracking)."""
    rs = []
    for lag in range(-MAX_LAG, MAX_LAG + 1):
        p, t = (pred[: len(pred) - lag], y[lag:]) if lag >= 0 else (pred[-lag:], y[: len(y) + lag])
        rs.append(pearson(p, t))
    return rs[MAX_LAG], max(rs)


def fit_cv(x: np.ndarray, y: np.ndarray, folds: int = 5) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge with lambda chosen by blocked k-fold CV on the training clip alone (contiguous folds, so
    neighbouring, near-identical frames do not leak into validation)."""
    edges = np.linspace(0, len(y), folds + 1).astype(int)
    scores = np.zeros(len(LAMBDAS))
    for k in range(folds):
        val = np.zeros(len(y), bool)
        val[edges[k] : edges[k + 1]] = True
        for j, lam in enumerate(LAMBDAS):
            scores[j] += pearson(ridge_predict(ridge_fit(x[~val], y[~val], lam), x[val]), y[val])
    return ridge_fit(x, y, float(LAMBDAS[np.argmax(scores)]))


def av_offset(c: dict[str, np.ndarray], max_lag: int = 12) -> int:
    """Frames by which the tracked opening best follows the audio's log energy (negative: lips lead)."""
    log_energy = np.log(np.sqrt(np.convolve(c["wave"] ** 2, np.ones(400) / 400, "same"))[::HOP] + 1e-4)
    energy = windows(log_energy[:, None], len(c["opening"])).mean(1)
    y = c["opening"]
    rs = [
        pearson(*((energy[: len(y) - lag], y[lag:]) if lag >= 0 else (energy[-lag:], y[: len(y) + lag])))
        for lag in range(-max_lag, max_lag + 1)
    ]
    return int(np.argmax(rs)) - max_lag


def representations(clips: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Name -> clip -> [frames, D] windows. Phonetic columns are z-scored later with the TRAINING clip's
    statistics (they are speaker independent, so the test clip's own statistics are not needed)."""
    reps: dict[str, dict[str, np.ndarray]] = {"mel": {}}
    for key, c in clips.items():
        reps["mel"][key] = windows(log_mel(c["wave"]), len(c["opening"]))
    for classes in ("phones", "visemes", "both"):
        for sigma in SIGMAS_MS:
            extractor = PhoneticFeatures(classes=classes, sigma_ms=sigma)
            name = f"{classes} s{sigma:g}ms"
            reps[name] = {k: windows(extractor.from_labels(c["labels"]), len(c["opening"])) for k, c in clips.items()}
    for classes in ("phones", "visemes"):
        for sigma in SIGMAS_MS:
            name = f"{classes} s{sigma:g}ms"
            reps[f"mel+{name}"] = {k: np.concatenate([reps["mel"][k], reps[name][k]], 1) for k in clips}
    return reps


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = train.mean(0), train.std(0) + 1e-3
    return (train - mu) / sd, (test - mu) / sd


def evaluate(
    reps: dict[str, dict[str, np.ndarray]], clips: dict[str, dict[str, np.ndarray]]
) -> tuple[list[str], dict[str, list[tuple[float, float]]]]:
    """Every representation on the 6 cross-speaker pairs and the 3 own-voice splits (last 10 % held out)."""
    keys = list(clips)
    columns = [f"{a}->{b}" for a in keys for b in keys if a != b] + [f"{a} own" for a in keys]
    table: dict[str, list[tuple[float, float]]] = {}
    for name, xs in reps.items():
        row = []
        for a in keys:
            for b in keys:
                if a != b:
                    xa, xb = standardise(xs[a], xs[b])
                    row.append(lagged(ridge_predict(fit_cv(xa, clips[a]["opening"]), xb), clips[b]["opening"]))
        for a in keys:
            split = int(0.9 * len(clips[a]["opening"]))
            xa, xb = standardise(xs[a][:split], xs[a][split:])
            y = clips[a]["opening"]
            row.append(lagged(ridge_predict(fit_cv(xa, y[:split]), xb), y[split:]))
        table[name] = row
    return columns, table


def chunk_agreement(wave: np.ndarray) -> str:
    """Share of rows whose hard phone differs between chunked and whole decoding, and where they lie."""
    extractor = PhoneticFeatures(classes="phones", sigma_ms=0.0)
    whole = extractor(wave).argmax(1)
    pieces = (wave[i : i + 16000] for i in range(0, wave.size, 16000))
    chunked = np.concatenate(list(extractor.stream(pieces))).argmax(1)
    assert chunked.shape == whole.shape
    differ = np.flatnonzero(chunked != whole)
    seams = np.arange(1, wave.size // (18 * SAMPLE_RATE) + 1) * 1800 + 100  # rows where one window hands over
    dist = np.abs(differ[:, None] - seams[None, :]).min(1) if len(seams) and len(differ) else np.zeros(0)
    visemes = PhoneticFeatures(classes="visemes", sigma_ms=0.0)
    vdiff = float(np.mean(visemes.from_labels(chunked).argmax(1) != visemes.from_labels(whole).argmax(1)))
    return (
        f"chunked (20 s windows, 2 s overlap) vs whole on {wave.size / SAMPLE_RATE:.1f} s: "
        f"{len(differ) / len(whole):.1%} of {len(whole)} rows differ in phone, {vdiff:.1%} in viseme; "
        f"seams at rows {seams.tolist()}; differing rows' distance to the nearest seam: "
        f"median {np.median(dist) if len(dist) else 0:.0f}, "
        f"within 100 rows {np.mean(dist <= 100) if len(dist) else 0:.0%}"
    )


def main() -> None:
    clips = {k: clip_data(k) for k in CLIPS}
    reps = representations(clips)
    columns, table = evaluate(reps, clips)
    cross = [i for i, c in enumerate(columns) if "->" in c]
    print(
        f"Ridge probe: Pearson r of predicted vs tracked inner-lip opening, 'lag0/best within +-{MAX_LAG} "
        f"frames'; train on the clip left of '->', test on the one right of it; own = last 10 % held out."
    )
    rows = []
    for name, row in table.items():
        mean0 = np.mean([row[i][0] for i in cross])
        meanb = np.mean([row[i][1] for i in cross])
        cells = {c: f"{r0:.2f}/{rb:.2f}" for c, (r0, rb) in zip(columns, row)}
        rows.append({"representation": name, **cells, "cross mean": f"{mean0:.2f}/{meanb:.2f}"})
    print(format_table(rows))
    for key, c in clips.items():
        seconds = c["wave"].size / SAMPLE_RATE
        labels = c["labels"]
        speech = labels != PHONES.index(SILENCE)
        print(
            f"{key}: {seconds:.1f} s audio, {len(c['opening'])} frames, face found in {float(c['face_share']):.0%}; "
            f"decode {float(c['decode_s']) / seconds:.3f} s per s of audio; {speech.mean():.0%} of rows speech, "
            f"{len(np.unique(labels[speech]))} distinct phones; opening best follows log energy at lag "
            f"{av_offset(c)} frames"
        )
    print(chunk_agreement(clips["fr"]["wave"]))


if __name__ == "__main__":
    main()
