"""What a person looks at to judge a dataset: preview.mp4 (the first seconds with landmarks, pose axes and
masks drawn over the frames, with the soundtrack, so lip sync can be checked) and contact_sheet.png (frames
spread over the whole clip with the same overlays, plus the background plate)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import soundfile as sf

from avatar.contracts.atomic import atomic_path
from avatar.contracts.camera import Intrinsics, project
from avatar.contracts.dataset import MASK_BITS, DatasetLayout, read_mask_bits, read_rgb
from avatar.preprocess.frame_io import progress

# mask name -> RGB tint; drawn in this order so the smaller regions stay visible on top
MASK_COLOURS = {"torso": (60, 120, 255), "head": (255, 200, 0), "face": (0, 220, 90), "mouth": (255, 40, 40)}
AXIS_LENGTH_M = 0.08  # drawn length of the head-frame axes


def _tint_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per mask-bit combination (5 bits): the gain [32] and offset [32, 3] that tint a pixel, so drawing a
    frame's masks is one lookup: darken what is not the person, blend each region's colour in."""
    gain, offset = np.ones(32, np.float32), np.zeros((32, 3), np.float32)
    for combo in range(32):
        if not combo >> MASK_BITS["person"] & 1:
            gain[combo] *= 0.45
        for name, colour in MASK_COLOURS.items():
            if combo >> MASK_BITS[name] & 1:
                gain[combo] *= 0.75
                offset[combo] = 0.75 * offset[combo] + 0.25 * np.asarray(colour, np.float32)
    return gain, np.round(offset).astype(np.uint8)


_TINT_GAIN, _TINT_OFFSET = _tint_tables()


class Overlay:
    """Draws the tracking of frame i of a dataset directory over its image."""

    def __init__(self, root: Path, intrinsics: Intrinsics):
        self.layout = DatasetLayout(root)
        self.K = intrinsics.K
        load = lambda name: np.load(self.layout.tracking(name), mmap_mode="r")  # noqa: E731
        self.landmarks, self.rotation, self.translation, self.valid = (
            load("landmarks"),
            load("rotation"),
            load("translation"),
            load("valid"),
        )

    def frame(self, i: int) -> np.ndarray:
        return read_rgb(self.layout.frame(i))

    def draw(self, i: int) -> np.ndarray:
        """[H, W, 3] uint8 RGB: frame i with mask tints, landmarks (red where interpolated) and pose axes."""
        bits = read_mask_bits(self.layout.mask(i)) & 31
        gain = cv2.merge([_TINT_GAIN.take(bits)] * 3)  # [H, W, 3] float32
        out = cv2.add(
            cv2.multiply(np.ascontiguousarray(self.frame(i)), gain, dtype=cv2.CV_8U), _TINT_OFFSET.take(bits, axis=0)
        )
        h, w = out.shape[:2]
        dot = int(max(1, round(h / 256)))  # dots of 2 x 2 pixels at 512
        uv = np.asarray(self.landmarks[i]).astype(np.int64)
        colour = (0, 255, 255) if self.valid[i] else (255, 0, 0)
        for du in range(dot):
            for dv in range(dot):
                u, v = np.clip(uv[:, 0] + du, 0, w - 1), np.clip(uv[:, 1] + dv, 0, h - 1)
                out[v, u] = colour
        self._axes(out, np.asarray(self.rotation[i]), np.asarray(self.translation[i]), h / 512)
        return out

    def _axes(self, img: np.ndarray, R: np.ndarray, t: np.ndarray, scale: float) -> None:
        points = np.vstack([np.zeros(3), np.eye(3) * AXIS_LENGTH_M])  # origin, x, y, z in the head frame
        if (R @ points.T + t[:, None])[2].min() <= 1e-3:
            return  # behind the camera: nothing sensible to draw
        uv = project(points, R, t, self.K)
        o = tuple(int(x) for x in uv[0])
        for k, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 128, 255)]):
            cv2.line(img, o, tuple(int(x) for x in uv[k + 1]), colour, max(2, int(3 * scale)), cv2.LINE_AA)


def label(img: np.ndarray, text: str, bottom: bool = False) -> None:
    """White `text` on a black box in a top (or bottom) left corner of `img`, in place."""
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    top = img.shape[0] - h - 10 if bottom else 0
    cv2.rectangle(img, (0, top), (w + 10, top + h + 10), (0, 0, 0), -1)
    cv2.putText(img, text, (5, top + h + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)


def write_preview(
    root: Path, num_frames: int, fps: float, intrinsics: Intrinsics, path: Path, caption: str = ""
) -> None:
    """The first `num_frames` frames with overlays (and `caption` at the bottom) as H.264, muxed with the
    dataset's audio.wav (AAC)."""

    overlay = Overlay(root, intrinsics)
    wave, sr = sf.read(str(DatasetLayout(root).audio), dtype="float32")
    wave = wave[: int(round(num_frames / fps * sr))]
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w") as container:
            video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            size = overlay.frame(0).shape[0]
            video.width = video.height = size + size % 2
            video.pix_fmt = "yuv420p"
            video.options = {"crf": "23", "preset": "veryfast"}
            audio = container.add_stream("aac", rate=sr)
            audio.layout = "mono"
            for i in progress(range(num_frames), "preview", num_frames):
                img = overlay.draw(i)
                if caption:
                    label(img, caption, bottom=True)
                if size % 2:
                    img = cv2.copyMakeBorder(img, 0, 1, 0, 1, cv2.BORDER_REPLICATE)
                for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in video.encode(None):
                container.mux(packet)
            chunk = 1024  # the AAC frame size
            for start in range(0, wave.size, chunk):
                piece = wave[start : start + chunk]
                frame = av.AudioFrame.from_ndarray(piece[None, :], format="flt", layout="mono")
                frame.sample_rate = sr
                frame.pts = start
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode(None):
                container.mux(packet)


def write_contact_sheet(
    root: Path,
    num_frames: int,
    intrinsics: Intrinsics,
    count: int,
    path: Path,
    tile: int = 256,
    columns: int = 4,
    caption: str = "",
) -> None:
    """`count` frames evenly spread over the clip with overlays, then the background plate (with `caption`
    under its label), on a grid."""
    overlay = Overlay(root, intrinsics)
    indices = np.unique(np.linspace(0, num_frames - 1, count).round().astype(int))
    tiles = [(overlay.draw(int(i)), f"frame {int(i)}") for i in indices]
    plate = read_rgb(DatasetLayout(root).background)
    tiles.append((plate, "background plate"))
    last = len(tiles) - 1
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * tile, columns * tile, 3), 32, np.uint8)
    for k, (img, name) in enumerate(tiles):
        small = cv2.resize(np.ascontiguousarray(img), (tile, tile), interpolation=cv2.INTER_AREA)
        label(small, name)
        if caption and k == last:
            label(small, caption, bottom=True)
        r, c = divmod(k, columns)
        sheet[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = small
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), sheet[:, :, ::-1])
