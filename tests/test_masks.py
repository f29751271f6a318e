"""Masks: the nesting the training losses rely on, on real frames and on a drawn face."""

from __future__ import annotations

import numpy as np

from avatar.contracts import face_mesh
from avatar.contracts.dataset import MASK_BITS
from avatar.preprocess.masks import MaskMaker, combine_masks
from tests.track_fixtures import real_detections, real_frames

FACE_OVAL, INNER_LIPS = list(face_mesh.FACE_OVAL), list(face_mesh.INNER_LIP_LOOP)


def unpack(bits: np.ndarray) -> dict[str, np.ndarray]:
    return {name: (bits >> bit & 1).astype(bool) for name, bit in MASK_BITS.items()}


def assert_nested(m: dict[str, np.ndarray]) -> None:
    assert not (m["face"] & ~m["head"]).any()
    assert not (m["head"] & ~m["person"]).any()
    assert not (m["mouth"] & ~m["face"]).any()
    assert not (m["torso"] & m["head"]).any()
    assert np.array_equal(m["torso"] | m["head"], m["person"])


def test_contours_are_closed_loops_of_the_mediapipe_mesh():
    from mediapipe.python.solutions import face_mesh_connections as fmc

    for loop, edges in ((FACE_OVAL, fmc.FACEMESH_FACE_OVAL), (INNER_LIPS, fmc.FACEMESH_LIPS)):
        undirected = {frozenset(e) for e in edges}
        assert all(frozenset((a, b)) in undirected for a, b in zip(loop, loop[1:] + loop[:1]))


def test_real_frames_masks_are_nested_and_plausible(shared_data):
    frames, det = real_frames(), real_detections()
    lip_gap = np.linalg.norm(det.landmarks_mp3d[:, 13, :2] - det.landmarks_mp3d[:, 14, :2], axis=1)
    maker = MaskMaker()
    for i in (0, int(np.argmax(lip_gap))):
        m = unpack(maker(frames[i], det.landmarks_mp3d[i]))
        assert_nested(m)
        area = {k: v.mean() for k, v in m.items()}
        assert 0.15 < area["person"] < 0.9 and 0.04 < area["face"] < area["head"] < area["person"]
        assert area["torso"] > 0.05
        # hair: the head reaches above the face oval's top
        top_face = np.flatnonzero(m["face"].any(1))[0]
        top_head = np.flatnonzero(m["head"].any(1))[0]
        assert top_head < top_face - 10
    assert m["mouth"].sum() > 30  # the most open mouth of the clip shows its interior
    maker.close()


def test_drawn_face_inside_a_full_person_mask():
    """A face oval and lips drawn by hand: the masks follow the polygons, rolled heads included."""
    landmarks = np.zeros((478, 2))
    angles = np.linspace(0, 2 * np.pi, len(FACE_OVAL), endpoint=False)
    landmarks[FACE_OVAL] = np.stack([100 + 40 * np.sin(angles), 100 - 55 * np.cos(angles)], -1)
    lip_angles = np.linspace(0, 2 * np.pi, len(INNER_LIPS), endpoint=False)
    landmarks[INNER_LIPS] = np.stack([100 - 15 * np.cos(lip_angles), 130 + 5 * np.sin(lip_angles)], -1)
    landmarks[[234, 454]] = [[60, 100], [140, 100]]
    landmarks[[58, 288]] = [[70, 135], [130, 135]]
    m = unpack(combine_masks(np.ones((200, 200), bool), landmarks))
    assert_nested(m)
    assert abs(m["face"].sum() - np.pi * 40 * 55) < 0.03 * np.pi * 40 * 55
    assert abs(m["mouth"].sum() - np.pi * 15 * 5) < 0.2 * np.pi * 15 * 5
    assert m["head"][5, 100] and not m["head"][190, 100] and not m["head"][100, 5]
