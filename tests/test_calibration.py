"""Calibration/eval data sources: every kind, seeded sampling, skipping, minimums."""

import numpy as np
import pytest
from conftest import HELDOUT
from PIL import Image

from vitedge.card import Preprocessing
from vitedge.data import open_data
from vitedge.errors import InputError
from vitedge.preprocess import preprocess

PRE = Preprocessing(input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)


def test_imagefolder_is_labeled_and_sampled_reproducibly():
    first = open_data(HELDOUT, PRE, samples=50, seed=3)
    again = open_data(HELDOUT, PRE, samples=50, seed=3)
    other = open_data(HELDOUT, PRE, samples=50, seed=4)
    assert len(first) == 50 and first.labeled and first.class_names[:3] == ["0", "1", "2"]
    batches = np.concatenate(list(first.batches(16)))
    assert batches.shape == (50, 3, 32, 32)
    assert np.array_equal(batches, np.concatenate(list(again.batches(16))))
    assert not np.array_equal(batches, np.concatenate(list(other.batches(16))))
    assert np.array_equal(first.head(5), batches[:5]) and first.head(500).shape[0] == 50
    # the cached arrays are exactly the shared preprocessing of the sampled files
    path = first._images.records[0].path
    assert np.array_equal(batches[0], preprocess(path, PRE))


def test_flat_folder_and_glob_are_unlabeled():
    flat = open_data(HELDOUT / "3", PRE, samples=None)
    assert not flat.labeled and len(flat) == len(list((HELDOUT / "3").glob("*.png")))
    globbed = open_data(str(HELDOUT / "*" / "00*.png"), PRE, samples=None, min_samples=1)
    assert not globbed.labeled and len(globbed) == len(list(HELDOUT.glob("*/00*.png")))


def test_video_frames_sampled_evenly(tmp_path):
    import cv2

    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for index in range(40):
        writer.write(np.full((48, 64, 3), index * 6, np.uint8))
    writer.release()
    data = open_data(path, PRE, samples=10)
    frames = np.concatenate(list(data.batches(4)))
    assert data.kind == "video" and frames.shape == (10, 3, 32, 32)
    brightness = frames.mean(axis=(1, 2, 3))
    assert np.all(np.diff(brightness) > 0)  # frames come in order, spread over the clip
    assert brightness[-1] - brightness[0] > 1.0


def test_npy_and_npz_tensors(tmp_path):
    array = np.random.default_rng(0).standard_normal((40, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", array)
    data = open_data(tmp_path / "x.npy", PRE, samples=12, seed=1)
    got = np.concatenate(list(data.batches(5)))
    assert got.shape == (12, 3, 32, 32)
    assert all(any(np.array_equal(row, ref) for ref in array) for row in got)
    np.savez(tmp_path / "xy.npz", x=array, y=np.arange(40) % 10)
    labeled = open_data(tmp_path / "xy.npz", PRE, samples=None)
    assert len(labeled) == 40 and labeled.labels[:3].tolist() == [0, 1, 2]
    np.save(tmp_path / "wrong.npy", array[:, :, :16])
    with pytest.raises(InputError, match=r"expected \(N, 3, 32, 32\)"):
        open_data(tmp_path / "wrong.npy", PRE)


def test_unreadable_counted_and_minimum_enforced(tmp_path):
    for index in range(12):
        Image.new("L", (8, 8), index * 20).save(tmp_path / f"{index}.png")
    for index in range(3):
        (tmp_path / f"bad{index}.png").write_bytes(b"nope")
    data = open_data(tmp_path, PRE, samples=None)
    assert len(data) == 12 and len(data.skipped) == 3
    with pytest.raises(InputError, match="has 12 usable samples.*3 unreadable.*at least 20"):
        open_data(tmp_path, PRE, samples=None, min_samples=20)


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_data(tmp_path / "nothing", PRE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="contains no image files"):
        open_data(tmp_path / "empty", PRE)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not an image, video"):
        open_data(tmp_path / "notes.txt", PRE)


def test_example_data_writes_the_checkouts_digits_and_replaces_only_its_own(tmp_path):
    """`vitedge example-data`: the files calibration/digits holds, byte for byte, from
    scikit-learn's digits; --overwrite replaces only a folder it wrote, holding nothing else."""
    import hashlib

    from conftest import assert_user_error
    from typer.testing import CliRunner

    from vitedge.cli.app import app

    runner = CliRunner()
    out = tmp_path / "digits"
    result = runner.invoke(app, ["example-data", "-o", str(out)])
    assert result.exit_code == 0, result.output
    shipped = HELDOUT.parent

    def digests(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in root.rglob("*.png")}

    assert digests(out) == digests(shipped) and len(digests(out)) == 1797
    assert_user_error(runner.invoke(app, ["example-data", "-o", str(out)]), "already exists")
    (out / "train" / "notes.txt").write_text("mine")
    assert_user_error(runner.invoke(app, ["example-data", "-o", str(out), "--overwrite"]), "notes.txt")
    assert (out / "train" / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "a.png").write_bytes(b"x")
    assert_user_error(runner.invoke(app, ["example-data", "-o", str(foreign), "--overwrite"]),
                      "not a vitedge output")
