"""Prediction: a trained model names its classes, the ImageNet model matches torchvision,
and the same model file predicts the same on every backend."""

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from folder_files import crops, photo
from PIL import Image

import alexnet_k3 as ak
from alexnet_k3.weights.records import imagenet_categories

BACKEND = keras.config.backend()
# Each backend's session predicts with the next one too, so every backend reads a model
# file written on another (torch's channels_first model on jax: tensorflow's CPU
# kernels cannot run it, which load_model says in one line).
NEXT_BACKEND = {"torch": "jax", "jax": "tensorflow", "tensorflow": "torch"}[BACKEND]


@pytest.mark.slow
def test_a_trained_model_names_its_training_images(digits_folder_run):
    run, root, _ = digits_folder_run
    images = root / "train" / "3"  # a folder of one class: every image is a 3
    rows = ak.predict(run / "model.keras", images, top=3)
    files = sorted(images.iterdir())
    assert [row["image"] for row in rows] == [str(p) for p in files]  # walked, sorted
    assert np.mean([row["top"][0]["class"] == "3" for row in rows]) >= 0.9
    for row in rows:
        assert row["error"] is None and len(row["top"]) == 3
        assert {e["class"] for e in row["top"]} <= {str(d) for d in range(10)}
        probabilities = [e["probability"] for e in row["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1
    # An array predicts as the same image saved as a file does.
    image = np.asarray(Image.open(files[0]).convert("RGB"))
    (from_array,) = ak.predict(run / "model.keras", image, top=3)
    assert from_array["image"] == "array[0]"
    assert [e["index"] for e in from_array["top"]] == [e["index"] for e in rows[0]["top"]]
    np.testing.assert_allclose(
        [e["probability"] for e in from_array["top"]],
        [e["probability"] for e in rows[0]["top"]],
        rtol=1e-5,
        atol=1e-7,
    )


@pytest.mark.slow
def test_the_same_model_file_predicts_the_same_on_another_backend(
    digits_folder_run, run_cli, tmp_path
):
    run, root, _ = digits_folder_run
    images = [root / "test" / str(d) for d in range(10)]
    here = ak.predict(run / "model.keras", images, top=3)
    out = tmp_path / "there.json"
    run_cli("predict", run / "model.keras", *images, "--top", 3, "--out", out,
            backend=NEXT_BACKEND, expect_ok=True)  # fmt: skip
    there = json.loads(out.read_text())
    assert [r["image"] for r in there] == [r["image"] for r in here]
    for a, b in zip(here, there):
        assert [e["index"] for e in a["top"]] == [e["index"] for e in b["top"]], (a, b)
        np.testing.assert_allclose(
            [e["probability"] for e in a["top"]],
            [e["probability"] for e in b["top"]],
            rtol=1e-5,
            atol=1e-7,
        )


@pytest.fixture(scope="module")
def imagenet_checkpoint(tmp_path_factory):
    """A random-weight torchvision AlexNet (its last layer scaled up, so that the top-5
    stand apart) and JPEG/PNG photos of several sizes; (path, module, photos)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    tmp = tmp_path_factory.mktemp("imagenet")
    torch.manual_seed(0)
    module = torchvision.models.alexnet().eval()
    with torch.no_grad():
        module.classifier[6].weight.mul_(30)
    torch.save(module.state_dict(), tmp / "random.pth")
    photos = []
    for name in ("china", "flower"):
        photos.append(tmp / f"{name}.jpg")
        Image.fromarray(photo(name)).save(photos[-1], quality=90)
    for i, crop in enumerate(crops("flower", 2, shape=(300, 230), seed=1)):
        photos.append(tmp / f"crop{i}.png")
        Image.fromarray(crop).save(photos[-1])
    return tmp / "random.pth", module, photos


def test_imagenet_predictions_match_torchvision(imagenet_checkpoint):
    import torch
    import torchvision

    checkpoint, module, photos = imagenet_checkpoint
    rows = ak.predict(checkpoint, photos, top=5)
    transform = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.transforms()
    for path, row in zip(photos, rows):
        rgb = np.array(Image.open(path).convert("RGB"))
        with torch.no_grad():
            logits = module(transform(torch.from_numpy(rgb).permute(2, 0, 1))[None])
        expected = torch.softmax(logits.double(), dim=1)[0].numpy()
        top5 = np.argsort(-expected)[:5]
        assert [e["index"] for e in row["top"]] == list(top5)
        assert [e["class"] for e in row["top"]] == [imagenet_categories()[i] for i in top5]
        np.testing.assert_allclose(
            [e["probability"] for e in row["top"]], expected[top5], rtol=1e-4
        )


def test_imagenet_class_names_are_torchvisions():
    torchvision = pytest.importorskip("torchvision")
    names = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    assert list(imagenet_categories()) == list(names)
    from alexnet_k3.weights import IMAGENET1K_V1

    assert IMAGENET1K_V1.categories == imagenet_categories()


def test_unreadable_files_get_a_row_and_the_others_go_on(imagenet_checkpoint, tmp_path):
    checkpoint, _, photos = imagenet_checkpoint
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "notes.txt").write_text("ignored in a folder")
    cut = photos[0].read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(cut[: len(cut) // 3])
    Image.fromarray(photo("china")[:100, :120]).save(tmp_path / "ok.png")
    rows = ak.predict(checkpoint, tmp_path, top=3, batch_size=2)
    by_name = {Path(r["image"]).name: r for r in rows}
    assert sorted(by_name) == ["empty.jpg", "ok.png", "text.png", "truncated.jpg"]
    for name in ("empty.jpg", "text.png", "truncated.jpg"):
        assert by_name[name]["top"] == [] and by_name[name]["error"], by_name[name]
    assert by_name["ok.png"]["error"] is None and len(by_name["ok.png"]["top"]) == 3


def test_cli_prints_a_table_and_writes_csv_and_json(imagenet_checkpoint, run_cli, tmp_path):
    checkpoint, _, photos = imagenet_checkpoint
    result = run_cli(
        "predict", "--weights", checkpoint, *photos[:2], "--top", 3, "--out", tmp_path / "p.csv",
        expect_ok=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0] == "| image | rank | class | probability |"
    assert sum(str(photos[0]) in line for line in lines) == 3
    with open(tmp_path / "p.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["image"] for row in table] == [str(p) for p in photos[:2]]
    first = ak.predict(checkpoint, photos[0], top=3)[0]
    assert table[0]["class_1"] == first["top"][0]["class"]
    assert float(table[0]["probability_1"]) == pytest.approx(first["top"][0]["probability"])
    run_cli("predict", "--weights", checkpoint, photos[0], "--out", tmp_path / "p.json",
            expect_ok=True)  # fmt: skip
    (row,) = json.loads((tmp_path / "p.json").read_text())
    assert row["image"] == str(photos[0]) and len(row["top"]) == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.txt", "x.jpg"], "the first argument must be a model.keras"),
        (["--weights", "imagenet", "nowhere"], "No image or folder at nowhere"),
        (["--weights", "imagenet", ".", "--out", "p.txt"], "--out p.txt: expected a file"),
        (["--weights", "missing.pth", "img.png"], "Weights file 'missing.pth' does not exist"),
        (["run/model.keras"], "no images were given after run/model.keras"),
        (["--weights", "imagenet", "--top", "0", "."], "argument --top: expected a positive"),
    ],
)
def test_cli_errors_are_one_line(run_cli, tmp_path, args, message):
    Image.fromarray(photo("china")[:50, :50]).save(tmp_path / "img.png")
    result = run_cli("predict", *args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1], result.stderr


def test_python_errors_say_what_was_expected(tmp_path):
    model = ak.AlexNet(3, variant="cifar")
    with pytest.raises(ValueError, match="top=0 must be a positive integer"):
        ak.predict(model, np.zeros((32, 32, 3), np.uint8), top=0)
    with pytest.raises(ValueError, match="must be uint8"):
        ak.predict(model, np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="2 class names were given for a model of 3 classes"):
        ak.predict(model, np.zeros((32, 32, 3), np.uint8), class_names=["a", "b"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image files"):
        ak.predict(model, tmp_path / "empty")


def test_a_failed_out_names_the_users_file_never_a_temporary_one(tmp_path):
    import os

    from alexnet_k3 import prediction

    top = [{"class": "x", "index": 0, "probability": 1.0}]
    rows = [{"image": "a.png", "error": None, "top": top}]
    (tmp_path / "p.csv").mkdir()
    with pytest.raises(IsADirectoryError, match=r"out=.*p.csv' is a folder\. Give a file"):
        prediction.write(rows, tmp_path / "p.csv")
    (tmp_path / f".tmp-{os.getpid()}-q.csv").mkdir()  # in the way of the atomic write
    with pytest.raises(OSError, match=r"out=.*q.csv': could not write it .*Give a file") as error:
        prediction.write(rows, tmp_path / "q.csv")
    assert ".tmp-" not in str(error.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(PermissionError, match=r"cannot write in .*file \(not a folder\)"):
        prediction.check_output(tmp_path / "file" / "r.csv")
    prediction.write(rows, tmp_path / "new" / "r.csv")  # a new folder is made
    assert (tmp_path / "new" / "r.csv").read_text().startswith("image,error")
