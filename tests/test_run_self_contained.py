"""A trained run is self-contained: render, view and bench work once its dataset is gone, and `avatar eval`
says which dataset the run recorded and how to point it elsewhere."""

from __future__ import annotations

import json
import shutil

import pytest

from avatar.errors import UserError
from tests.export_fixtures import probe, speech_like, write_wav
from tests.train_fixtures import tiny_config, tiny_dataset  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def moved(tiny_dataset, tmp_path_factory):
    """(run, new place of its dataset): trained on a copy of the tiny dataset, which is then moved away."""
    from avatar.train.runner import run

    root = tmp_path_factory.mktemp("self_contained")
    shutil.copytree(tiny_dataset.root, root / "dataset")
    run(tiny_config(root / "dataset", root / "run"))
    shutil.move(root / "dataset", root / "elsewhere")
    return root / "run", root / "elsewhere"


def test_render_view_and_bench_do_not_need_the_dataset(moved, tmp_path):
    from avatar.bench import BenchConfig
    from avatar.bench import run as bench
    from avatar.model.talking_head import TalkingHead
    from avatar.render.config import RenderConfig
    from avatar.render.video import run as render
    from avatar.viewer.playback import Playback

    run_dir, _ = moved
    audio = write_wav(tmp_path / "speech.wav", speech_like(0.8, 16000), 16000)
    out = render(RenderConfig(run=run_dir, audio=audio, out=tmp_path / "out.mp4", fps=10.0))
    assert probe(out)["num_frames"] == 8
    head = TalkingHead.load(run_dir)
    playback = Playback(head, run_dir / "audio.wav")  # the viewer's default sound is kept in the run
    assert playback.conditions(3).rotation.shape == (1, 3, 3)
    rows = bench(BenchConfig(run=run_dir, quick=True, components=False, resolutions=(32,)))
    assert any(r.get("name") == "audio features" for r in rows)
    assert all(r["fps"] > 0 for r in rows if r.get("name", "").startswith("render"))


def test_eval_names_the_recorded_dataset_and_takes_another(moved, tmp_path):
    from avatar.eval.config import EvalConfig
    from avatar.eval.evaluate import run as evaluate

    run_dir, elsewhere = moved
    recorded = json.loads((run_dir / "run.json").read_text())["dataset"]
    quick = dict(run=run_dir, max_frames=3, baselines=False, video=False, out=tmp_path / "eval")
    with pytest.raises(UserError, match="no longer there") as missing:
        evaluate(EvalConfig(**quick))
    assert recorded in str(missing.value) and "--dataset" in str(missing.value)
    result = evaluate(EvalConfig(**quick, dataset=elsewhere))
    assert result["methods"]["avatar"]["frames"] == 3
    shutil.copytree(elsewhere, recorded)  # back at the recorded place, but changed since training
    manifest = json.loads((elsewhere / "manifest.json").read_text())
    (recorded_manifest := (run_dir.parent / "dataset" / "manifest.json")).write_text(
        json.dumps({**manifest, "stats": {}})
    )
    assert str(recorded_manifest.parent) == recorded
    with pytest.raises(UserError, match="not the dataset"):
        evaluate(EvalConfig(**quick))
