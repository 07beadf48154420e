"""Image folders: decoding every format and mode, splits, the cache, bad input, training.

The photos are crops of scikit-learn's two sample photographs (tests/folder_files.py).
Every test points the cache at its own temporary folder (ALEXNET_K3_CACHE), so none
reads another's cache or writes outside tmp_path.
"""

import json
import os

import numpy as np
import pytest
from folder_files import (
    BAD_FILES,
    CLASSES,
    crops,
    exif_rotated,
    save_every_format,
    write_photo_folder,
)
from PIL import Image

from alexnet_k3.datasets import DatasetError, DatasetNotFoundError, decode, load_folder
from alexnet_k3.datasets import cache as folder_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The folder cache of this test (empty at the start)."""
    path = tmp_path / "cache"
    monkeypatch.setenv(folder_cache.CACHE_ENV_VAR, str(path))
    return path


def _listing(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


# --------------------------------------------------------------------------- decoding


def test_every_format_and_mode_decodes_to_the_same_photo(tmp_path, cache):
    crop = crops("flower", 1, shape=(60, 80))[0]
    paths = save_every_format(tmp_path / "formats", crop)
    reference = decode.decode_image(paths[0], 32).astype(float)  # rgb.jpg
    for path in paths:
        image = decode.decode_image(path, 32)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8, path.name
        if "grey" in path.name:  # grey images: the same picture, every channel equal
            assert (image[..., 0] == image[..., 2]).all(), path.name
            assert abs(image.mean() - reference.mean()) < 12, path.name
        elif path.name == "two-frames.gif":  # the first frame, not the inverted second
            assert np.abs(image - reference).mean() < 25, path.name
        elif path.name == "rgba.png":  # alpha 200 of 255 over white: lighter
            expected = reference * 200 / 255 + 255 * 55 / 255
            assert np.abs(image - expected).mean() < 12, path.name
        elif path.name != "palette.png":  # its transparent colour turned white
            assert np.abs(image - reference).mean() < 12, path.name


def test_exif_orientation_is_applied(tmp_path):
    top_red = np.zeros((40, 60, 3), np.uint8)
    top_red[:20, :, 0] = 255
    image, options = exif_rotated(Image.fromarray(top_red))
    image.save(tmp_path / "turned.jpg", **options)
    decoded = decode.decode_image(tmp_path / "turned.jpg", 32).astype(int)
    assert decoded[:12, :, 0].mean() > 200 and decoded[-12:, :, 0].mean() < 50


def test_sixteen_bit_alpha_and_palette_values(tmp_path):
    Image.fromarray(np.full((8, 8), 128 * 257, np.uint16)).save(tmp_path / "g.png")
    assert (decode.decode_image(tmp_path / "g.png", 8) == 128).all()  # scaled, not clipped
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    clear.save(tmp_path / "clear.png")
    assert (decode.decode_image(tmp_path / "clear.png", 8) == 255).all()  # on white
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "red.jpg")
    red = decode.decode_image(tmp_path / "red.jpg", 8).astype(int)
    assert red[..., 0].mean() > 200 and red[..., 1:].mean() < 60


def test_shorter_side_resized_then_centre_cropped(tmp_path):
    image = np.zeros((50, 100, 3), np.uint8)
    image[:, 25:75] = 255  # the centre square is white, the sides black
    Image.fromarray(image).save(tmp_path / "wide.png")
    decoded = decode.decode_image(tmp_path / "wide.png", 20)
    assert decoded.shape == (20, 20, 3) and decoded[:, 1:-1].min() == 255


def test_a_folder_of_every_format_loads_with_names_and_labels(tmp_path, cache):
    root = tmp_path / "photos"
    for name in CLASSES:
        save_every_format(root / name, crops(name, 1)[0])
    (root / "flower" / "readme.txt").write_text("ignored: not an image")
    (root / "flower" / ".DS_Store").write_bytes(b"\0\0")
    data = load_folder(root, 32, test_split=0.25)
    assert data.class_names == CLASSES and data.name == "folder"
    assert len(data.x_train) + len(data.x_test) == 26  # 13 files per class, all decoded
    assert np.bincount(data.y_test).tolist() == [3, 3]  # round(13 * 0.25), per class
    # The photos' colours tell the classes apart: china is bluer than the flower.
    blue = [data.x_train[data.y_train == c][..., 2].mean() for c in (0, 1)]
    assert blue[0] > blue[1]


def test_parallel_decoding_writes_the_same_rows(tmp_path):
    files = []
    for i, crop in enumerate(crops("china", 70, shape=(30, 40))):
        files.append(tmp_path / f"{i:03d}.png")
        Image.fromarray(crop).save(files[-1])
    files[5].write_bytes(b"")
    results = {}
    for workers in (1, 2):
        npy = tmp_path / f"x{workers}.npy"
        np.lib.format.open_memmap(npy, "w+", np.uint8, (70, 16, 16, 3)).flush()
        failures = decode.decode_into(npy, files, 16, workers=workers)
        assert [row for row, _ in failures] == [5]
        results[workers] = np.load(npy)
    np.testing.assert_array_equal(results[1], results[2])
    assert results[2][69].any()


# --------------------------------------------------------------------------- splits


def test_hold_out_is_stratified_and_seeded(tmp_path, cache):
    root = write_photo_folder(tmp_path / "photos", per_class=10)
    a, b = load_folder(root, 16, seed=0), load_folder(root, 16, seed=0)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert np.bincount(a.y_test).tolist() == [2, 2] and len(a.x_train) == 16
    other = load_folder(root, 16, seed=1, test_split=0.5)
    assert np.bincount(other.y_test).tolist() == [5, 5]


def test_train_and_test_folders_are_the_splits_and_views_of_the_cache(tmp_path, cache):
    root = tmp_path / "photos"
    write_photo_folder(root / "train", per_class=4)
    write_photo_folder(root / "val", per_class=2)
    data = load_folder(root, 16)
    assert (len(data.x_train), len(data.x_test)) == (8, 4)
    assert isinstance(data.x_train, np.memmap) and isinstance(data.x_test, np.memmap)
    assert data.y_test.tolist() == [0, 0, 1, 1]
    (root / "val" / "extra").mkdir()
    Image.fromarray(crops("china", 1)[0]).save(root / "val" / "extra" / "x.png")
    with pytest.raises(DatasetError, match="extra"):
        load_folder(root, 16)


# --------------------------------------------------------------------------- the cache


def test_cache_is_reused_and_redone_when_the_folder_changes(tmp_path, cache, monkeypatch):
    root = write_photo_folder(tmp_path / "photos")
    before = _listing(root)
    first = load_folder(root, 16)
    assert _listing(root) == before  # nothing written inside the data folder
    (cached,) = cache.iterdir()
    assert sorted(p.name for p in cached.iterdir()) == ["images.npy", "index.json"]
    calls = []
    real = decode.decode_into
    monkeypatch.setattr(
        folder_cache, "decode_into", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    second = load_folder(root, 16)
    assert calls == [] and isinstance(second.x_test, np.ndarray)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    os.utime(root / "china" / "00.jpg", ns=(1, 1))  # modified
    load_folder(root, 16)
    assert calls == [1]
    Image.fromarray(crops("china", 1)[0]).save(root / "china" / "new.png")  # added
    assert len(load_folder(root, 16).x_train) == 11  # 7 + 6, one of each held out
    assert calls == [1, 1]
    load_folder(root, 32)  # another size: another cache folder
    assert len(list(cache.iterdir())) == 2
    # The index is read from disk, so it is not trusted: one that does not fit the
    # images (or is not JSON) is a cache miss, never an error or wrong images.
    index = json.loads((cached / "index.json").read_text())
    for damaged in ({**index, "rows": [0] * len(index["rows"])}, "{not json"):
        text = damaged if isinstance(damaged, str) else json.dumps(damaged)
        (cached / "index.json").write_text(text)
        assert len(load_folder(root, 16).x_train) == 11
    assert calls == [1, 1, 1, 1, 1]


def test_an_unwritable_cache_names_its_folder_and_what_to_do(tmp_path, cache, monkeypatch):
    root = write_photo_folder(tmp_path / "photos")
    folder = folder_cache.cache_folder(root.resolve(), 16)
    (folder / f".tmp-{os.getpid()}-images.npy.all.npy").mkdir(parents=True)  # in the way
    with pytest.raises(OSError, match=f"cache in {folder} .*ALEXNET_K3_CACHE at a") as error:
        load_folder(root, 16)
    assert ".tmp-" not in str(error.value)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(folder_cache.CACHE_ENV_VAR, str(tmp_path / "a-file"))
    with pytest.raises(OSError, match=r"cache in \S*a-file/photos-16px-\w+ \(.*writable"):
        load_folder(root, 16)


def test_default_cache_is_in_the_keras_dataset_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(folder_cache.CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    root = write_photo_folder(tmp_path / "photos", per_class=3)
    load_folder(root, 16)
    (made,) = (tmp_path / "keras" / "datasets" / "alexnet_k3_folders").iterdir()
    assert made.name.startswith("photos-16px-") and (made / "index.json").is_file()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_files_are_skipped_with_one_warning(tmp_path, cache, capsys, kind):
    root = write_photo_folder(tmp_path / "photos")
    name, content = BAD_FILES[kind]
    (root / "flower" / name).write_bytes(content(crops("flower", 1)[0]))
    data = load_folder(root, 16)
    assert len(data.x_train) + len(data.x_test) == 12
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "skipped 1 file" in warnings[0]
    assert f"flower/{name}" in warnings[0]
    load_folder(root, 16)  # from the cache: the same warning again
    assert f"flower/{name}" in capsys.readouterr().err


def test_strict_refuses_bad_files_and_leaves_no_cache(tmp_path, cache):
    root = write_photo_folder(tmp_path / "photos")
    for name, content in BAD_FILES.values():
        (root / "china" / name).write_bytes(content(crops("china", 1)[0]))
    with pytest.raises(DatasetError, match="3 file.*not readable images.*empty.jpg"):
        load_folder(root, 16, strict=True)
    assert not cache.exists() or not any(cache.iterdir())


def _empty_class(root):
    write_photo_folder(root)
    (root / "dogs").mkdir()
    (root / "dogs" / "list.txt").write_text("no images here")


def _one_class(root):
    write_photo_folder(root)
    for path in (root / "flower").iterdir():
        path.unlink()
    (root / "flower").rmdir()


def _no_images(root):
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.txt").write_text("text")


def _loose_images(root):
    root.mkdir()
    Image.fromarray(crops("china", 1)[0]).save(root / "x.png")


def _all_bad(root):
    write_photo_folder(root)
    for path in (root / "flower").iterdir():
        path.write_bytes(b"")


FOLDER_ERRORS = {
    "missing": (lambda root: None, DatasetNotFoundError, "no such folder"),
    "empty class": (_empty_class, DatasetError, "dogs hold no images"),
    "single class": (_one_class, DatasetError, "one class folder .china.; .* at least two"),
    "no images": (_no_images, DatasetError, "a hold no images"),
    "images but no class folders": (_loose_images, DatasetError, "no class folders .1 images"),
    "no readable image in a class": (_all_bad, DatasetError, "flower hold no readable image"),
}


@pytest.mark.parametrize("case", sorted(FOLDER_ERRORS))
def test_folder_errors_are_clear_and_leave_nothing_behind(tmp_path, cache, case):
    from alexnet_k3.training import train

    make, error, message = FOLDER_ERRORS[case]
    root = tmp_path / "photos"
    make(root)
    with pytest.raises(error, match=message):
        load_folder(root, 16)
    out = tmp_path / "run"
    with pytest.raises(error, match=message):
        train(out, dataset="folder", data_dir=str(root), epochs=1, verbose=0)
    assert not out.exists()
    assert not cache.exists() or not any(cache.iterdir())


def test_a_bad_checkpoint_is_refused_before_the_folder_is_decoded(tmp_path, cache, monkeypatch):
    torch = pytest.importorskip("torch")
    from alexnet_k3.training import train
    from alexnet_k3.weights.errors import WeightsError

    root = write_photo_folder(tmp_path / "photos")
    bad = tmp_path / "convs-only.pth"  # a readable state_dict that lacks most layers
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, bad)
    calls = []
    real = decode.decode_into
    monkeypatch.setattr(
        folder_cache, "decode_into", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    out = tmp_path / "run"
    with pytest.raises(WeightsError, match="convs-only.pth"):
        train(out, dataset="folder", data_dir=str(root), variant="torchvision",
              weights=str(bad), epochs=1, verbose=0)  # fmt: skip
    assert calls == [] and not out.exists()
    assert not cache.exists() or not any(cache.iterdir())


def test_links_leaving_the_folder_are_not_followed(tmp_path, cache, capsys):
    root = write_photo_folder(tmp_path / "photos")
    outside = tmp_path / "elsewhere"
    write_photo_folder(outside, per_class=2)
    (root / "china" / "link.jpg").symlink_to(outside / "china" / "00.jpg")
    (root / "flower" / "more").symlink_to(outside / "flower", target_is_directory=True)
    (root / "outside-class").symlink_to(outside / "china", target_is_directory=True)
    (root / "china" / "same.jpg").symlink_to(root / "china" / "00.jpg")  # the same file: once
    (root / "china" / "inside").symlink_to(root / "china", target_is_directory=True)  # a loop
    data = load_folder(root, 16)
    assert data.class_names == CLASSES and len(data.x_train) + len(data.x_test) == 12
    err = capsys.readouterr().err
    assert "skipped 3 symbolic link(s) pointing outside" in err and "link.jpg" in err
    assert "skipped 1 symbolic link loop(s)" in err and "china/inside" in err


def test_a_link_loop_or_a_link_to_another_class_counts_no_image_twice(tmp_path, cache, capsys):
    root = write_photo_folder(tmp_path / "photos")
    (root / "china" / "loop").symlink_to("..", target_is_directory=True)  # ln -s .. china/loop
    (root / "china" / "a").mkdir()
    (root / "china" / "b").mkdir()
    (root / "china" / "a" / "to-b").symlink_to("../b", target_is_directory=True)
    (root / "china" / "b" / "to-a").symlink_to("../a", target_is_directory=True)  # a cycle
    (root / "china" / "flower.jpg").symlink_to("../flower/00.jpg")  # another class's image
    (root / "kitty").symlink_to("china", target_is_directory=True)  # a class twice
    data = load_folder(root, 16)
    assert data.class_names == CLASSES
    labels = np.concatenate([data.y_train, data.y_test])
    assert np.bincount(labels).tolist() == [6, 6]  # each image once, under its real class
    err = capsys.readouterr().err
    assert "skipped 2 symbolic link loop(s)" in err  # china/loop, and the a-b cycle once
    assert f"{root / 'china' / 'loop'} -> {root}" in err
    assert "leading out of their class folder" in err and "china/flower.jpg" in err
    assert f"{root / 'kitty'} -> {root / 'china'}" in err


def test_a_same_size_same_mtime_replacement_is_decoded_again(tmp_path, cache):
    root = write_photo_folder(tmp_path / "photos")
    first, second = crops("china", 2, shape=(16, 16), seed=3)
    path = root / "china" / "swapped.bmp"
    Image.fromarray(first).save(path)
    before = path.stat()
    data = load_folder(root, 16, test_split=0.5)
    every = np.concatenate([data.x_train, data.x_test])
    assert (every == first).all(axis=(1, 2, 3)).any()
    # Replaced in place by an image of the same size, its times put back (touch -r).
    Image.fromarray(second).save(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    data = load_folder(root, 16, test_split=0.5)
    every = np.concatenate([data.x_train, data.x_test])
    assert (every == second).all(axis=(1, 2, 3)).any()
    assert not (every == first).all(axis=(1, 2, 3)).any()


def test_settings_for_folders_only_are_refused_for_other_datasets(tmp_path):
    from alexnet_k3.training import train

    for settings in ({"test_split": 0.3}, {"strict": True}):
        with pytest.raises(ValueError, match="unless dataset='folder'"):
            train(tmp_path / "run", dataset="digits", epochs=1, **settings)
    with pytest.raises(ValueError, match=r"test_split.*\(0, 1\)"):
        train(tmp_path / "run", dataset="folder", data_dir=".", test_split=0.0)
    with pytest.raises(ValueError, match="needs data_dir="):
        load_folder(None, 16)
    assert not (tmp_path / "run").exists()


def test_cli_error_is_one_line(tmp_path, run_cli):
    result = run_cli(
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        tmp_path / "nope",
        "--out",
        "run",
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"alexnet-k3 train: error: --data-dir {tmp_path / 'nope'}: no such folder")
    )


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    """A one-epoch run on a small photo folder, and the folder."""
    from alexnet_k3.training import train

    tmp = tmp_path_factory.mktemp("photo-run")
    os.environ[folder_cache.CACHE_ENV_VAR] = str(tmp / "cache")
    try:
        root = write_photo_folder(tmp / "photos", per_class=8)
        metrics = train(tmp / "run", dataset="folder", data_dir=str(root), epochs=1, verbose=0)
    finally:
        del os.environ[folder_cache.CACHE_ENV_VAR]
    return tmp / "run", root, metrics


def test_run_saves_and_reports_the_class_names(photo_run):
    out, root, metrics = photo_run
    assert json.loads((out / "class_names.json").read_text()) == list(CLASSES)
    assert metrics["class_names"] == list(CLASSES) and metrics["dataset"] == "folder"
    assert json.loads((out / "config.json").read_text())["data_dir"] == str(root)
    assert metrics["test_images"] == 4
    report = (out / "report.md").read_text()
    assert "| china |" in report and "| flower |" in report
    assert (out / "samples.png").stat().st_size > 10_000  # the photos themselves


def test_evaluate_finds_the_runs_split_and_checks_class_names(photo_run, tmp_path, monkeypatch):
    from alexnet_k3.evaluation import evaluate

    out, root, metrics = photo_run
    monkeypatch.setenv(folder_cache.CACHE_ENV_VAR, str(tmp_path / "cache"))
    evaluated = evaluate(out / "model.keras", "folder", data_dir=str(root))
    assert evaluated["confusion_matrix"] == metrics["confusion_matrix"]
    # Without data_dir: the run's own folder, from its config.json.
    assert evaluate(out / "model.keras", "folder")["test_images"] == metrics["test_images"]
    other = write_photo_folder(tmp_path / "other")
    (other / "china").rename(other / "cat")
    with pytest.raises(DatasetError, match=r"trained on the classes \['china', 'flower'\]"):
        evaluate(out / "model.keras", "folder", data_dir=str(other))


def test_evaluate_without_a_dataset_tests_on_the_runs_folder(
    photo_run, tmp_path, monkeypatch, capsys
):
    from alexnet_k3.cli import build_parser
    from alexnet_k3.evaluation import evaluate

    out, root, metrics = photo_run
    monkeypatch.setenv(folder_cache.CACHE_ENV_VAR, str(tmp_path / "cache"))
    assert build_parser().parse_args(["evaluate", "m.keras"]).dataset is None
    evaluated = evaluate(out / "model.keras")  # `alexnet-k3 evaluate MODEL`
    assert evaluated["dataset"] == "folder"
    assert evaluated["confusion_matrix"] == metrics["confusion_matrix"]
    err = capsys.readouterr().err
    assert f"evaluating on dataset='folder', data_dir={str(root)!r}" in err
    assert str(out / "config.json") in err
    # Asked for another dataset: the error says which options test on the run's.
    with pytest.raises(DatasetError, match=f"give dataset='folder' data_dir={str(root)!r}"):
        evaluate(out / "model.keras", "digits")


@pytest.mark.slow
def test_training_on_the_digits_as_png_files_learns(digits_folder_run, tmp_path, monkeypatch):
    from alexnet_k3.datasets import load_digits

    _, root, metrics = digits_folder_run
    monkeypatch.setenv(folder_cache.CACHE_ENV_VAR, str(tmp_path / "cache"))
    data, digits = load_folder(root, 32), load_digits()
    # The same pixels as the digits dataset (sorted: the folder orders by class).
    for x, expected in ((data.x_train, digits.x_train), (data.x_test, digits.x_test)):
        assert sorted(map(bytes, x)) == sorted(map(bytes, expected))
    assert metrics["test_accuracy"] >= 0.90, metrics["test_accuracy"]


def test_a_memory_mapped_split_is_fed_from_disk(tmp_path):
    from alexnet_k3 import backend

    images = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, (10, 4, 4, 3))
    images[:] = np.arange(10, dtype=np.uint8)[:, None, None, None]
    images.flush()
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    y = np.eye(10, dtype="float32")
    feed = backend.array_feed(x, y, batch_size=4, shuffle=True)
    if backend.name() != "tensorflow":
        assert feed["x"] is x  # Keras slices each batch from the memmap
        return
    batches = list(feed["x"])
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    for batch_x, batch_y in batches:  # every image still with its own label
        assert (np.asarray(batch_x)[:, 0, 0, 0] == np.asarray(batch_y).argmax(1)).all()


def test_decode_benchmark_writes_its_records(tmp_path):
    from benchmarks import decode_speed

    images = str(decode.default_workers() * decode_speed._ROWS)
    out = str(tmp_path / "d")
    argv = ["--images", images, "--rounds", "1", "--out", out, "--note", "n."]
    assert decode_speed.main(argv) == 0
    record = json.loads((tmp_path / "d.json").read_text())
    kinds = [(r["kind"], r["workers"]) for r in record["rows"]]
    assert kinds[0] == ("threads", 1) and kinds[2] == ("processes", 1)
    assert record["cached_start_seconds"] < record["first_load_seconds"]
    text = (tmp_path / "d.md").read_text()
    assert "| threads | 1 |" in text and "| processes | 1 |" in text and "Note: n." in text


# --------------------------------------------------------------------------- decoding, safely

UNGUARDED_SCRIPT = """\
import alexnet_k3 as ak

ak.train("runs/x", dataset="folder", data_dir="photos", variant="cifar", epochs=1,
         batch_size=32, test_split=0.9, image_size=16, verbose=0)
"""


def _litter(folder):
    """Temporary files, locks and half-written files under `folder`."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.startswith((".tmp-", ".lock")) or p.name.endswith(".all.npy")
    )


@pytest.mark.once
@pytest.mark.slow
def test_the_readme_call_as_an_unguarded_script_finishes(tmp_path):
    """The README's Python call, saved as a script without `if __name__ == "__main__":`,
    on a folder of 3000 images: decoding must neither hang nor re-run the script."""
    import signal
    import subprocess
    import sys

    for i in range(3000):
        folder = tmp_path / "photos" / ("dark", "light")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        value = 40 + 150 * (i % 2) + i % 31
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(folder / f"{i:04d}.png")
    (tmp_path / "script.py").write_text(UNGUARDED_SCRIPT)
    env = {**os.environ, folder_cache.CACHE_ENV_VAR: str(tmp_path / "cache")}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [sys.executable, "script.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so a hang can be ended with everything it started
    )
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the script still ran after 240 s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    assert output.count("decoding photos: 3000/3000") == 1, output[-3000:]
    run = tmp_path / "runs" / "x"
    assert (run / "model.keras").is_file() and (run / "metrics.json").is_file()
    assert _litter(tmp_path) == []
    (cached,) = (tmp_path / "cache").iterdir()
    assert sorted(p.name for p in cached.iterdir()) == ["images.npy", "index.json"]


def _break_decoding(monkeypatch, name: str, fault):
    """Decoding runs `fault()` instead of decoding the file whose path ends in `name`."""
    real = decode._decode_image

    def decode_or_fail(path, size):
        if str(path).endswith(name):
            fault()
        return real(path, size)

    monkeypatch.setattr(decode, "_decode_image", decode_or_fail)


def test_a_worker_that_stops_is_an_error_naming_the_file_and_leaves_nothing(
    tmp_path, cache, monkeypatch
):
    from alexnet_k3.training import train

    root = write_photo_folder(tmp_path / "photos")

    def stop():  # not a bad file (those are skipped): decoding itself breaks
        raise SystemExit("worker gone")

    _break_decoding(monkeypatch, "flower/03.jpg", stop)
    with pytest.raises(decode.DecodeError, match=r"stopped at \S*flower/03.jpg: SystemExit"):
        load_folder(root, 16)
    out = tmp_path / "run"
    with pytest.raises(decode.DecodeError, match="flower/03.jpg"):
        train(out, dataset="folder", data_dir=str(root), epochs=1, verbose=0)
    assert not out.exists()
    assert not cache.exists() or not any(cache.iterdir())
    assert _litter(tmp_path) == []


def test_a_stalled_decode_is_an_error_naming_the_file(tmp_path, cache, monkeypatch):
    import time

    root = write_photo_folder(tmp_path / "photos")
    monkeypatch.setattr(decode, "STALL_SECONDS", 0.5)
    _break_decoding(monkeypatch, "china/02.jpg", lambda: time.sleep(2.0))
    with pytest.raises(decode.DecodeError, match=r"stalled.*while decoding \S*china/02.jpg"):
        load_folder(root, 16)
    assert not cache.exists() or not any(cache.iterdir())


def test_an_image_above_pillows_bomb_warning_limit_is_named(tmp_path, cache, capsys, recwarn):
    root = write_photo_folder(tmp_path / "photos")  # 80x60 = 4800 pixels each
    Image.fromarray(crops("china", 1, shape=(10, 10))[0]).save(root / "china" / "small.png")
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that.
    Image.MAX_IMAGE_PIXELS, limit = 3000, Image.MAX_IMAGE_PIXELS
    try:
        data = load_folder(root, 16)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    assert len(data.x_train) + len(data.x_test) == 13
    err = capsys.readouterr().err
    assert "12 image(s) exceed Pillow's decompression-bomb warning limit of 3,000 pixels" in err
    assert f"{root / 'china' / '00.jpg'} (80x60)" in err and "small.png" not in err
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
