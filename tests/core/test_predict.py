"""predict(): raw inputs through the run's preprocessing give what the model gives on val data."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ptool.core.config import TrainConfig
from ptool.core.data import build_data
from ptool.core.metrics import EpochMetrics
from ptool.core.predict import Reader, Sample, load_predictor, predict


def _train(out, **values):
    from ptool.core.engine import fit

    base = dict(samples=120, batch_size=32, epochs=1, seed=0, tensorboard=False, out=str(out))
    fit(TrainConfig.from_dict({**base, **values}), quiet=True)
    return out / "last.pt"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return _train(
        tmp_path_factory.mktemp("predict") / "img", data="synthetic", shape="1x8x8", model="cnn"
    )


def _raw_val(ckpt_path):
    """The run's validation split before normalization, and as the model saw it."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    config = TrainConfig.from_dict(ckpt["config"])
    return build_data(config.replace(normalize=False)).val.tensors, build_data(config).val.tensors


def _records(ckpt_path, inputs, stdin=None, note=lambda _: None, **kwargs):
    model, info, device, loss, precision = load_predictor(ckpt_path, "cpu")
    reader = Reader(info, stdin, note=note)
    samples = reader.read(inputs)
    return list(
        predict(model, samples, info, device=device, loss=loss, precision=precision, **kwargs)
    )


def test_a_bf16_run_predicts_under_its_autocast_as_eval_does(tmp_path):
    """predict ran a --precision bf16 run's model in fp32, eval under bf16 autocast: a near
    tie could be one class in eval's accuracy and another in predict's output."""
    ckpt = _train(tmp_path / "bf16", data="synthetic", shape="1x8x8", model="cnn", precision="bf16")
    (raw, _), (normalized, _) = _raw_val(ckpt)
    torch.save({"x": raw}, tmp_path / "x.pt")
    model = load_predictor(ckpt, "cpu").model
    with torch.no_grad():
        fp32 = model(normalized).softmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(normalized).float().softmax(1)
    assert not torch.equal(fp32, bf16)  # the oracle tells them apart
    records = _records(ckpt, [str(tmp_path / "x.pt")], top_k=10, batch_size=len(raw))
    got = torch.tensor([[r["probabilities"][str(c)] for c in range(10)] for r in records])
    assert torch.equal(got, bf16)


def test_tensor_file_json_lines_and_images_match_the_validation_pipeline(image_run, tmp_path):
    (raw, labels), (normalized, _) = _raw_val(image_run)
    model = load_predictor(image_run, "cpu").model
    with torch.no_grad():
        oracle = model(normalized).softmax(1)  # what eval sees for the same samples
    torch.save({"x": raw[:6]}, tmp_path / "x.pt")
    pixels = (raw[6, 0] * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(tmp_path / "six.png")
    lines = (
        json.dumps({"input": raw[7].tolist(), "id": "seven"})
        + "\n"
        + json.dumps(raw[8, 0].tolist())
    )
    records = _records(
        image_run,
        [str(tmp_path / "x.pt"), str(tmp_path / "six.png"), "-"],
        io.StringIO(lines),
        top_k=3,
        batch_size=4,
    )
    assert [r["input"] for r in records] == [
        *(f"{tmp_path / 'x.pt'}[{i}]" for i in range(6)),
        str(tmp_path / "six.png"),
        "seven",
        "stdin:2",
    ]
    for i, record in enumerate(records):
        tolerance = 2e-3 if i == 6 else 1e-5  # the PNG stores pixels as 8-bit values
        assert record["prediction"] == int(oracle[i].argmax())
        assert record["label"] == str(record["prediction"])
        assert len(record["probabilities"]) == 3
        top = oracle[i].topk(3)
        assert list(record["probabilities"]) == [str(j) for j in top.indices.tolist()]
        assert list(record["probabilities"].values()) == pytest.approx(
            top.values.tolist(), abs=tolerance
        )
    again = _records(image_run, [str(tmp_path / "x.pt")], top_k=3, batch_size=4)
    assert again == records[:6]  # same input, same output, bit for bit


def test_a_resizing_runs_tensor_rows_of_another_size_are_resized_as_eval_resizes(tmp_path):
    """`--image-size 16` on 8x8 data: eval and image files resized, predict refused 8x8 rows."""
    run = _train(tmp_path / "run", data="synthetic", shape="1x8x8", model="cnn", image_size=16)
    config = TrainConfig.from_dict(torch.load(run, weights_only=True)["config"])
    raw, _ = build_data(config.replace(normalize=False, image_size=None)).val.tensors
    seen, _ = build_data(config).val.tensors  # resized up front, normalized: what eval reads
    with torch.no_grad():
        oracle = load_predictor(run, "cpu").model(seen).softmax(1)
    torch.save(raw[:5], tmp_path / "raw8.pt")
    torch.save(raw[:2, :, :4], tmp_path / "strip.pt")  # [2, 1, 4, 8]: also resized
    # without the channel axis, as training reads a grayscale [N, H, W] file: it was refused
    torch.save(raw[:5, 0], tmp_path / "plain8.pt")
    inputs = [str(tmp_path / name) for name in ("raw8.pt", "strip.pt", "plain8.pt")]
    records = _records(run, inputs, top_k=10)
    assert [r.get("error") for r in records] == [None] * 12
    expected_rows = [*oracle[:5], *oracle[:2], *oracle[:5]]
    for record, expected in zip(records, expected_rows, strict=True):
        if "strip" in record["input"]:
            continue  # another image: only resized
        probabilities = [record["probabilities"][str(c)] for c in range(len(expected))]
        assert probabilities == pytest.approx(expected.tolist(), abs=1e-5)
    torch.save(torch.rand(2, 3, 8, 8), tmp_path / "rgb.pt")  # other channels: still an error
    torch.save(raw[:5].flatten(1), tmp_path / "flat.pt")  # a whole 2-D tensor: no image
    line = io.StringIO(json.dumps(raw[0, 0].tolist()) + "\n")  # nor on stdin
    rgb, flat, plain = _records(run, [str(tmp_path / "rgb.pt"), str(tmp_path / "flat.pt"), "-"],
                                stdin=line)  # fmt: skip
    images = "1xHxW images (grayscale, any size: the run resizes to 16x16)"
    rows = f"expected [N, 1, H, W] or [N, H, W] for the model's {images}"
    assert rgb["error"] == f"shape [2, 3, 8, 8]; {rows}"
    assert flat["error"] == f"shape [5, 64]; {rows}"
    assert plain["error"] == f"shape [8, 8]; the model expects {images}"


def test_images_are_read_as_a_viewer_shows_them(image_run, tmp_path):
    """A nearly black 16-bit PNG read as white (Pillow's convert clips at 255), and a photo
    with an EXIF orientation came in on its side; training's loader reads them as predict."""
    from ptool.core.data.image_folder import load_image

    (raw, _), _ = _raw_val(image_run)
    pixels = (raw[6, 0] * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    Image.fromarray(pixels.astype("uint16") * 257).save(tmp_path / "deep.png")
    turned = Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90)
    exif = turned.getexif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to view
    turned.save(tmp_path / "turned.png", exif=exif)
    paths = [str(tmp_path / name) for name in ("plain.png", "deep.png", "turned.png")]
    for path in paths:
        assert load_image(path, "L").tobytes() == pixels.tobytes(), path
    plain, deep, upright = _records(image_run, paths)
    assert deep["probabilities"] == plain["probabilities"] == upright["probabilities"]


def test_bad_inputs_fail_alone(image_run, tmp_path, monkeypatch):
    (raw, _), _ = _raw_val(image_run)
    (tmp_path / "broken.png").write_text("not an image")
    Image.new("L", (16, 16)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # past twice Pillow's limit: refused
    Image.new("L", (32, 32)).save(tmp_path / "bomb.png")
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.fromarray((raw[0, 0] * 255).byte().numpy()).save(folder / "a.png")
    Image.fromarray((raw[1, 0] * 255).byte().numpy()).save(folder / "b.pgm")  # imagefolder reads it
    Image.fromarray((raw[1, 0] * 255).byte().numpy()).save(folder / "c.gif")  # imagefolder: not
    (folder / "._a.png").write_bytes(b"AppleDouble")  # hidden: not an input
    (folder / ".ipynb_checkpoints").mkdir()
    Image.new("L", (16, 16)).save(folder / ".ipynb_checkpoints" / "b.png")
    torch.save(raw[:2, :, :4], tmp_path / "small.pt")
    nan = raw[:2].clone()
    nan[0, 0, 0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    torch.save(raw[:1].to(torch.complex64), tmp_path / "complex.pt")  # was read as its real part
    torch.save(raw[:0], tmp_path / "empty.pt")  # among other inputs, it passed without a word
    lines = "{not json\n" + json.dumps({"x": 1}) + "\n" + json.dumps(raw[0].tolist()) + "\n"
    lines += '[1, "a"]\n'  # torch's "new(): invalid data type 'str'" was the reason
    inputs = ["broken.png", "big.png", "bomb.png", "missing.png", "folder", "small.pt", "nan.pt"]
    inputs += ["complex.pt", "empty.pt", "-"]
    records = _records(
        image_run, [str(tmp_path / p) if p != "-" else p for p in inputs], io.StringIO(lines)
    )
    errors = {r["input"].replace(str(tmp_path) + "/", ""): r.get("error") for r in records}
    assert errors["broken.png"] == "not an image Pillow reads"  # training's words
    assert "16x16 pixels; the model expects 1x8x8 images" in errors["big.png"]
    assert errors["bomb.png"].startswith(  # it stopped every prediction
        "too large to decode safely (Image size (1024 pixels) exceeds limit of 600 pixels"
    )
    assert errors["missing.png"] == "no such file"
    assert errors["folder/a.png"] is None and not any("/." in name for name in errors)
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    read = [name for name in errors if name.startswith("folder/")]
    assert read == ["folder/a.png", "folder/b.pgm"]  # what training's ImageFolder would take
    assert all(has_file_allowed_extension(name, IMG_EXTENSIONS) for name in read)
    assert errors["folder/b.pgm"] is None
    assert errors["small.pt"] == (  # one line for the file, not one per row
        "shape [2, 1, 4, 8]; expected [N, 1, 8, 8] or [N, 8, 8] "
        "for the model's 1x8x8 images (grayscale)"
    )
    assert errors["nan.pt[0]"] == "the input holds NaN or infinite values"
    assert errors["nan.pt[1]"] is None
    assert errors["complex.pt[0]"] == "torch.complex64 values; the model takes real numbers"
    assert errors["empty.pt"] == "no inputs in it (shape [0, 1, 8, 8])"
    assert errors["stdin:1"].startswith("not JSON")
    assert errors["stdin:2"] == 'a JSON object needs an "input" key'
    assert errors["stdin:3"] is None
    assert errors["stdin:4"] == "not a numeric array (it holds text)"


def test_uint8_tensors_are_pixels_scaled_like_image_files(image_run, tmp_path):
    """0-255 bytes in a tensor file are what an 8-bit PNG holds: both divided by 255."""
    (raw, _), _ = _raw_val(image_run)
    pixels = (raw[:4] * 255).round().to(torch.uint8)
    torch.save(pixels, tmp_path / "u8.pt")
    for i in range(4):
        Image.fromarray(pixels[i, 0].numpy()).save(tmp_path / f"{i}.png")
    pngs = _records(image_run, [str(tmp_path / f"{i}.png") for i in range(4)])
    tensors = _records(image_run, [str(tmp_path / "u8.pt")])
    assert [r["probabilities"] for r in tensors] == [r["probabilities"] for r in pngs]
    floats = _records(image_run, ["-"], io.StringIO(json.dumps((pixels[:4] / 255).tolist()[0])))
    assert tensors[0]["probabilities"] == pytest.approx(floats[0]["probabilities"], abs=1e-6)


def test_torch_files_are_recognized_by_suffix_or_content(image_run, tmp_path):
    (raw, _), _ = _raw_val(image_run)
    torch.save(raw[:3], tmp_path / "x.pt")
    torch.save(raw[:3], tmp_path / "x.pth")
    torch.save(raw[:3], tmp_path / "x.tensor")  # a zip archive
    torch.save(raw[:3], tmp_path / "legacy.data", _use_new_zipfile_serialization=False)
    expected = [r["probabilities"] for r in _records(image_run, [str(tmp_path / "x.pt")])]
    for name in ("x.pth", "x.tensor", "legacy.data"):
        records = _records(image_run, [str(tmp_path / name)])
        assert [r["input"] for r in records] == [f"{tmp_path / name}[{i}]" for i in range(3)]
        assert [r["probabilities"] for r in records] == expected
    (tmp_path / "bad.pt").write_text("garbage")
    (record,) = _records(image_run, [str(tmp_path / "bad.pt")])  # its name once, not twice
    assert record == {"input": str(tmp_path / "bad.pt"), "error": "not a PyTorch checkpoint "
                      "(not a torch.save file)"}  # fmt: skip


@pytest.mark.parametrize("sample", [lambda raw: raw[0, 0], lambda raw: raw[0]])
def test_a_file_with_one_sample_without_batch_dim(image_run, tmp_path, sample):
    """torch.save(X[0]) of a [N, 8, 8] or [N, 1, 8, 8] tensor is one input, not 8 rows."""
    (raw, _), _ = _raw_val(image_run)
    torch.save(sample(raw).clone(), tmp_path / "single.pt")
    (record,) = _records(image_run, [str(tmp_path / "single.pt")])
    (expected,) = _records(image_run, ["-"], io.StringIO(json.dumps(raw[0].tolist())))
    assert "error" not in record
    assert record["probabilities"] == expected["probabilities"]


def test_csv_rows_by_column_name_and_regression_values(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=gen) * torch.tensor([1.0, 10.0, 100.0])
    y = x @ torch.tensor([1.0, 0.1, 0.01])
    rows = ["a,b,c,target"] + [
        ",".join(map(str, [*r.tolist(), t.item()])) for r, t in zip(x, y, strict=True)
    ]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    ckpt = _train(
        tmp_path / "tab", data=f"csv:{tmp_path / 'train.csv'}", task="regression", model="mlp"
    )
    model, info, *_ = load_predictor(ckpt, "cpu")
    assert info.feature_names == ["a", "b", "c"]
    # columns in another order, the target column present, one bad row
    lines = ["target,c,a,b"] + [f"0,{r[2]},{r[0]},{r[1]}" for r in x[:3].tolist()] + ["0,1,x,2"]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    notes = []
    records = _records(ckpt, [str(tmp_path / "rows.csv")], note=notes.append)
    assert notes == [f"{tmp_path / 'rows.csv'}: ignoring columns the model does not use: target"]
    with torch.no_grad():
        oracle = model((x[:3] - torch.tensor(info.mean)) / torch.tensor(info.std))
    assert [r["prediction"] for r in records[:3]] == pytest.approx(
        oracle.flatten().tolist(), rel=1e-5
    )
    assert records[3] == {
        "input": f"{tmp_path / 'rows.csv'}:5",
        "error": "column 'a' is not a number ('x')",
    }
    a, b, c = x[0].tolist()
    (tmp_path / "bom.csv").write_text(f"\ufeffa,b,c\n{a},{b},{c}\n")  # Excel's CSV UTF-8
    (record,) = _records(ckpt, [str(tmp_path / "bom.csv")], note=notes.append)
    assert record["prediction"] == pytest.approx(records[0]["prediction"], rel=1e-6)
    assert len(notes) == 1  # the BOM is no part of column a's name
    (tmp_path / "latin.csv").write_bytes(b"a,b,c\n1,2,3\n# caf\xe9\n")  # not UTF-8
    latin, bom = _records(ckpt, [str(tmp_path / "latin.csv"), str(tmp_path / "bom.csv")])
    assert latin["error"] == "not UTF-8 text (byte 0xe9); save it as UTF-8"
    assert "prediction" in bom  # a bad input fails alone
    (tmp_path / "wrong.csv").write_text("a,b,d\n1,2,3\n")
    (record,) = _records(ckpt, [str(tmp_path / "wrong.csv")])
    assert record["error"] == "missing columns c; the model expects columns a, b, c"
    (tmp_path / "one.csv").write_text("d\n1\n")  # one column of another name: no separator
    (record,) = _records(ckpt, [str(tmp_path / "one.csv")])
    assert record["error"] == "missing columns a, b, c; the model expects columns a, b, c"
    (tmp_path / "semicolons.csv").write_text("a;b;c\n1;2;3\n")  # "missing a, b, c" said no more
    (tmp_path / "rows.txt").write_text("a,b,c\n1,2,3\n")  # read by suffix: was "an image"
    semicolons, text = _records(ckpt, [str(tmp_path / n) for n in ("semicolons.csv", "rows.txt")])
    assert semicolons["error"] == (
        "missing columns a, b, c (its header is one column, 'a;b;c': commas separate them); "
        "the model expects columns a, b, c"
    )
    assert text["error"] == (
        "not a .csv or torch.save file; the model expects 3 features (a .csv, a .pt or JSON "
        "lines on stdin)"
    )
    (tmp_path / "headless.csv").write_text("1,2,3\n4,5,6\n")
    (record,) = _records(ckpt, [str(tmp_path / "headless.csv")])
    assert record["error"] == "no header row (line 1 holds data, not column names)"
    (tmp_path / "blank.csv").write_text("a,b,c\n\n\n1,x,2\n")  # named by the file's line
    (record,) = _records(ckpt, [str(tmp_path / "blank.csv")])
    assert record["input"] == f"{tmp_path / 'blank.csv'}:4"
    (tmp_path / "twice.csv").write_text("a,a,b,c\n-99,1,2,3\n")  # the first 'a' was read
    (record,) = _records(ckpt, [str(tmp_path / "twice.csv")])
    assert record["error"] == (
        "column 'a' is named twice (columns 1 and 2); columns are matched by name"
    )
    (tmp_path / "header-only.csv").write_text("a,b,c\n")  # printed nothing, exit 0
    (record,) = _records(ckpt, [str(tmp_path / "header-only.csv")])
    assert record["error"] == "no data rows after the header"


def test_a_csv_for_a_run_without_column_names(tmp_path):
    """A tensors run saves no names: every column is a feature, the header optional, and a
    wrong column count is one error for the file (it was one per row, about the target)."""
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    torch.save({"x": x, "y": (x[:, 0] > 0).long()}, tmp_path / "t.pt")
    ckpt = _train(tmp_path / "run", data=f"tensors:{tmp_path / 't.pt'}", model="mlp")
    model, info, *_ = load_predictor(ckpt, "cpu")
    (tmp_path / "plain.csv").write_text("\n".join(",".join(map(str, r)) for r in x[:3].tolist()))
    records = _records(ckpt, [str(tmp_path / "plain.csv")])
    with torch.no_grad():
        oracle = model((x[:3] - torch.tensor(info.mean)) / torch.tensor(info.std)).argmax(1)
    assert [r["prediction"] for r in records] == oracle.tolist()
    # a first row with a gap was taken for a header and dropped, and named the columns after it
    (tmp_path / "gap.csv").write_text("0.1,NA,0.3,0.4\n" + (tmp_path / "plain.csv").read_text())
    records = _records(ckpt, [str(tmp_path / "gap.csv")])
    assert records[0] == {
        "input": f"{tmp_path / 'gap.csv'}:1",
        "error": "column '2' is not a number ('NA')",
    }
    assert [r["prediction"] for r in records[1:]] == oracle.tolist()
    rows = ["f0,f1,f2,f3,label"] + [",".join(map(str, [*r, 0])) for r in x[:30].tolist()]
    (tmp_path / "labelled.csv").write_text("\n".join(rows) + "\n")
    (record,) = _records(ckpt, [str(tmp_path / "labelled.csv")])
    assert record["error"] == (
        "5 columns; the model expects 4 features (its run saved no column names: every column "
        "is a feature)"
    )


def test_quantized_checkpoint_predictions(image_run, tmp_path):
    from ptool.core.quantize import QuantizeOptions, quantize_checkpoint

    output = str(tmp_path / "int8.pt")
    quantize_checkpoint(
        image_run,
        QuantizeOptions("static", evaluate=False, bench_runs=1, output=output, calib_batches=2),
    )
    (raw, labels), _ = _raw_val(image_run)
    torch.save(raw, tmp_path / "val.pt")
    records = _records(output, [str(tmp_path / "val.pt")])
    predicted = np.array([r["prediction"] for r in records])
    from ptool.core.evaluate import evaluate_checkpoints

    (report,) = evaluate_checkpoints([output])
    assert (predicted == labels.numpy()).mean() == pytest.approx(report["metrics"]["accuracy"])


class _Log(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)  # NaN scores for negative inputs


def test_a_nan_output_is_an_error_not_class_0():
    """A diverged model's NaN scores would argmax to class 0 with null probabilities."""
    info = SimpleNamespace(task="classification", class_names=None)
    samples = [
        Sample("a", torch.tensor([-1.0, 2.0, 3.0])),
        Sample("b", torch.tensor([1.0, 3.0, 2.0])),
    ]
    records = list(predict(_Log(), samples, info))
    assert records[0] == {"input": "a", "error": "the model's output is NaN or infinite"}
    assert records[1]["prediction"] == 1 and "error" not in records[1]


class _Tied(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x  # the inputs are the scores


def test_the_prediction_is_the_first_of_the_top_probabilities_even_on_ties():
    """Equal scores (int8 outputs tie often) go to the lower class, as eval's metrics count
    them (argmax): predict said 9 where eval said 3, and its accuracy differed."""
    info = SimpleNamespace(task="classification", class_names=None)
    scores = ([1.0, 3.0, 3.0, 0.0], [0.0] * 4, [2.0, 2.0, 5.0, 5.0], [0.0, 2.143] * 2)
    samples = [Sample(str(i), torch.tensor(s)) for i, s in enumerate(scores)]
    for record, s in zip(predict(_Tied(), samples, info, top_k=2), scores, strict=True):
        assert str(record["prediction"]) == next(iter(record["probabilities"]))
        assert record["prediction"] == int(torch.tensor(s).argmax())  # eval's rule
        metrics = EpochMetrics(
            SimpleNamespace(task="classification", num_classes=len(s)), "cpu", "val"
        )
        metrics.update(torch.tensor([s]), torch.tensor([record["prediction"]]), torch.zeros(()), 1)
        assert metrics.compute()[0]["val/accuracy"] == 1.0


def test_a_bce_with_logits_classifier_reports_its_sigmoids_not_a_softmax():
    """Trained with one sigmoid per class, its probabilities do not sum to 1."""
    from types import SimpleNamespace

    model = torch.nn.Linear(3, 4)
    info = SimpleNamespace(task="classification", class_names=None)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    samples = [Sample(f"x{i}", row) for i, row in enumerate(x)]
    records = list(predict(model, samples, info, top_k=4, loss="bce-with-logits"))
    with torch.no_grad():
        expected = torch.sigmoid(model(x))
    for record, row in zip(records, expected, strict=True):
        assert sorted(record["probabilities"].values()) == pytest.approx(sorted(row.tolist()))
    softmax = list(predict(model, samples, info, top_k=4))  # cross-entropy's
    assert sum(softmax[0]["probabilities"].values()) == pytest.approx(1.0)


def test_a_bce_with_logits_prediction_ranks_the_logits_whose_sigmoids_tie():
    """Logits of 27 and 45 both have a sigmoid of 1.0 in float32: eval's metrics take the
    argmax of the logits (class 1), and so does predict."""
    info = SimpleNamespace(task="classification", class_names=["cat", "dog"])
    logits = torch.tensor([27.3, 45.4])
    assert logits.sigmoid().tolist() == [1.0, 1.0]
    (record,) = predict(_Tied(), [Sample("x", logits)], info, loss="bce-with-logits")
    assert record["prediction"] == int(logits.argmax()) == 1 and record["label"] == "dog"
    assert list(record["probabilities"]) == ["dog", "cat"]
