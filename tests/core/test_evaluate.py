"""evaluate(): torchmetrics figures against scikit-learn; checkpoints against their own logs."""

from __future__ import annotations

import pytest
import torch
from sklearn import metrics as skm
from torch.utils.data import TensorDataset

from ptool.core.config import TrainConfig
from ptool.core.data import DataInfo, build_data
from ptool.core.errors import UsageError
from ptool.core.evaluate import evaluate, evaluate_checkpoints, split_dataset
from ptool.core.optim import build_loss


def _info(task: str, outputs: int) -> DataInfo:
    classes = outputs if task == "classification" else None
    return DataInfo(task, [6], outputs, classes, None, None, None, None, 0, 40)


def _batches(x, y, size=16):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def test_a_class_weighted_loss_does_not_depend_on_the_batch_size():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=gen), torch.randint(4, (50,), generator=gen)
    model, weight = torch.nn.Linear(6, 4), torch.tensor([1.0, 2.0, 3.0, 4.0])
    with torch.no_grad():
        oracle = torch.nn.CrossEntropyLoss(weight=weight)(model(x), y).item()
    info = _info("classification", 4)
    loss_fn = build_loss(TrainConfig(class_weights=weight.tolist()), info)
    for size in (1, 16, 50):
        result = evaluate(model, _batches(x, y, size), info, loss_fn)
        assert result.metrics["val/loss"] == pytest.approx(oracle, rel=1e-5)


def test_classification_figures_match_sklearn():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=gen), torch.randint(4, (50,), generator=gen)
    model = torch.nn.Linear(6, 4)
    info = _info("classification", 4)
    result = evaluate(model, _batches(x, y), info, build_loss(TrainConfig(), info))
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1).numpy()
    assert result.metrics["val/loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5
    )
    assert result.metrics["val/accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert result.metrics["val/f1"] == pytest.approx(
        skm.f1_score(y, pred, average="macro", zero_division=0), rel=1e-5
    )
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, pred, labels=range(4), zero_division=0
    )
    for i, row in enumerate(result.per_class):
        assert row["precision"] == pytest.approx(precision[i], rel=1e-5)
        assert row["recall"] == pytest.approx(recall[i], rel=1e-5)
        assert row["f1"] == pytest.approx(f1[i], rel=1e-5)
        assert row["support"] == support[i]
    assert result.confusion == skm.confusion_matrix(y, pred, labels=range(4)).tolist()
    assert (result.samples, result.batches) == (50, 4)
    assert result.samples_per_s > 0 and result.batch_latency_ms > 0


def test_regression_figures_match_sklearn():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 6, generator=gen), torch.randn(40, 1, generator=gen)
    model = torch.nn.Linear(6, 1)
    info = _info("regression", 1)
    result = evaluate(model, _batches(x, y), info, build_loss(TrainConfig(), info))
    with torch.no_grad():
        pred = model(x).numpy()
    assert result.metrics["val/mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-5)
    assert result.metrics["val/rmse"] == pytest.approx(
        skm.root_mean_squared_error(y, pred), rel=1e-5
    )
    assert result.metrics["val/r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-4)
    assert result.per_class is None and result.confusion is None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch CNN run on synthetic 1x8x8 images (about a second)."""
    from ptool.core.engine import fit

    out = tmp_path_factory.mktemp("evaluate") / "run"
    config = TrainConfig.from_dict(
        dict(
            data="synthetic",
            shape="1x8x8",
            samples=200,
            model="cnn",
            batch_size=32,
            epochs=2,
            seed=0,
            tensorboard=False,
            out=str(out),
        )
    )
    fit(config, quiet=True)
    return out


def test_checkpoint_evaluation_equals_what_training_logged(run):
    ckpt = torch.load(run / "last.pt", weights_only=True)
    (report,) = evaluate_checkpoints([run / "last.pt"], device="cpu")
    logged = {k.split("/", 1)[1]: v for k, v in ckpt["metrics"].items() if k.startswith("val/")}
    assert set(report["metrics"]) == set(logged)
    for name, value in logged.items():
        assert report["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-7)
    assert report["samples"] == ckpt["data_info"]["val_size"] == 40
    assert sum(map(sum, report["confusion_matrix"])) == 40


def test_train_split_uses_validation_transforms_and_other_sources_the_runs_statistics(
    run, tmp_path
):
    ckpt = torch.load(run / "last.pt", weights_only=True)
    config = TrainConfig.from_dict(ckpt["config"])
    info = DataInfo.from_dict(ckpt["data_info"])
    plain = build_data(config)
    augmented = split_dataset(config.replace(augment=["flip"]), info, split="train")
    assert isinstance(augmented, TensorDataset)  # served without the random flip
    assert torch.equal(augmented.tensors[0], plain.train.tensors[0])

    # The same samples saved raw as a tensors file: normalized with the checkpoint's mean/std.
    raw = build_data(config.replace(normalize=False))
    path = tmp_path / "raw.pt"
    x, y = raw.train.tensors
    xv, yv = raw.val.tensors
    torch.save({"x": x, "y": y, "x_val": xv, "y_val": yv}, path)
    other = split_dataset(config, info, data=f"tensors:{path}", split="val")
    torch.testing.assert_close(other.tensors[0], plain.val.tensors[0])
    (own,) = evaluate_checkpoints([run / "last.pt"])
    (file,) = evaluate_checkpoints([run / "last.pt"], data=f"tensors:{path}")
    for name, value in own["metrics"].items():
        assert file["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-7)
    # --split all: every sample of a held-out source, not its 20% validation split
    whole = split_dataset(config, info, data=f"tensors:{path}", split="all")
    torch.testing.assert_close(
        whole.tensors[0], torch.cat([plain.train.tensors[0], other.tensors[0]])
    )
    (every,) = evaluate_checkpoints([run / "last.pt"], data=f"tensors:{path}", split="all")
    assert every["samples"] == len(x) + len(xv)

    torch.save({"x": torch.rand(20, 3, 8, 8), "y": torch.randint(10, (20,))}, path)
    with pytest.raises(UsageError, match=r"model expects \[1, 8, 8\]"):
        split_dataset(config, info, data=f"tensors:{path}")


def test_refusals(run, tmp_path):
    with pytest.raises(UsageError, match="no test split"):
        evaluate_checkpoints([run / "last.pt"], split="test")
    with pytest.raises(UsageError, match="unknown --split"):
        evaluate_checkpoints([run / "last.pt"], split="holdout")
    for key, value in (("mean", [0.0]), ("std", [2.0])):  # another std passed
        other = torch.load(run / "last.pt", weights_only=True)
        other["data_info"][key] = value
        torch.save(other, tmp_path / "other.pt")
        with pytest.raises(UsageError, match="other data or preprocessing"):
            evaluate_checkpoints([run / "last.pt", tmp_path / "other.pt"])
    (tmp_path / "rows.csv").write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    with pytest.raises(UsageError) as tabular:
        evaluate_checkpoints([run / "last.pt"], data=f"csv:{tmp_path / 'rows.csv'}")
    assert str(tabular.value).endswith("is tabular; the model expects images of shape [1, 8, 8]")
    # a regression file: its labels were read first ("labels need 12 classes, not ...")
    rows = "".join(f"{i},{i + 1},{i / 4}\n" for i in range(12))  # 12 values: 12 "classes"
    (tmp_path / "reg.csv").write_text("a,b,y\n" + rows)
    with pytest.raises(UsageError, match="is tabular; the model expects images of shape"):
        evaluate_checkpoints([run / "last.pt"], data=f"csv:{tmp_path / 'reg.csv'}")
    # labels past the model's classes: eval has no --num-classes to name
    torch.save({"x": torch.rand(20, 1, 8, 8), "y": torch.arange(20)}, tmp_path / "many.pt")
    with pytest.raises(UsageError, match=r"many.pt: labels need 20 classes; the model has 10$"):
        evaluate_checkpoints([run / "last.pt"], data=f"tensors:{tmp_path / 'many.pt'}")


def test_the_runs_own_data_changed_since_training_is_refused(tmp_path):
    """A CSV that gained rows rebuilt another seeded split: eval reported 12 samples at 100%
    (6 of them trained on) as the run's validation, exit 0."""
    from ptool.core.errors import PtoolError
    from tests.core.test_engine import csv_run

    data, rows = csv_run(tmp_path)
    best = tmp_path / "run" / "best.pt"
    (report,) = evaluate_checkpoints([best])
    assert report["samples"] == 8
    with data.open("a") as file:
        file.write("\n".join(rows[:10]) + "\n")
    with pytest.raises(PtoolError) as err:
        evaluate_checkpoints([best])
    assert str(err.value) == (
        f"--data csv:{data} is not the data this run trained on: 40 training and 10 "
        "validation samples now, 32 and 8 when it trained"
    )
    assert "--split all" in err.value.hint
    (report,) = evaluate_checkpoints([best], split="all")  # every sample, as the file is now
    assert report["samples"] == 50
    with data.open("a") as file:
        file.write("1,2,c\n")
    with pytest.raises(PtoolError, match=r"class names \[a, b, c\] now, \[a, b\] when it"):
        evaluate_checkpoints([best], split="all")


def test_compare_with_a_quantized_checkpoint_runs_on_cpu(run, tmp_path):
    from ptool.core.quantize import QuantizeOptions, quantize_checkpoint

    output = str(tmp_path / "int8.pt")
    options = QuantizeOptions("dynamic", evaluate=False, bench_runs=1, output=output)
    quantize_checkpoint(run / "last.pt", options)
    float_report, int8 = evaluate_checkpoints([run / "last.pt", output])
    assert (int8["kind"], int8["device"]) == ("quantized", "cpu")
    assert int8["metrics"]["accuracy"] == pytest.approx(
        float_report["metrics"]["accuracy"], abs=0.1
    )
    assert int8["vs_first"]["loss"] == pytest.approx(
        int8["metrics"]["loss"] - float_report["metrics"]["loss"]
    )
    with pytest.raises(UsageError, match="CPU only"):
        evaluate_checkpoints([output], device="cuda")


def test_a_bf16_runs_checkpoint_evaluates_in_bf16_as_its_validation_did(tmp_path):
    from ptool.core.engine import fit

    config = TrainConfig(
        data="synthetic", shape="12", samples=200, num_classes=3, model="mlp", hidden=[32],
        epochs=1, seed=0, precision="bf16", tensorboard=False, out=str(tmp_path / "run"),
    )  # fmt: skip
    fit(config, quiet=True)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    (report,) = evaluate_checkpoints([tmp_path / "run" / "last.pt"], device="cpu")
    assert report["precision"] == "bf16"
    assert report["metrics"]["loss"] == pytest.approx(ckpt["metrics"]["val/loss"], rel=1e-6)


def test_ema_weights_evaluate_to_the_logged_val_ema_metrics(tmp_path):
    from ptool.core.engine import fit
    from ptool.core.predict import load_predictor

    config = TrainConfig(
        data="synthetic", shape="12", samples=200, num_classes=3, model="mlp", hidden=[32],
        epochs=2, seed=0, ema=0.9, monitor="val_ema/loss", tensorboard=False,
        out=str(tmp_path / "run"),
    )  # fmt: skip
    fit(config, quiet=True)
    best = tmp_path / "run" / "best.pt"
    logged = torch.load(best, weights_only=True)["metrics"]
    (ema,) = evaluate_checkpoints([best], device="cpu", ema=True)
    (raw,) = evaluate_checkpoints([best], device="cpu")
    assert ema["weights"] == "ema" and raw["weights"] == "model"
    assert ema["metrics"]["loss"] == pytest.approx(logged["val_ema/loss"], rel=1e-6)
    assert raw["metrics"]["loss"] == pytest.approx(logged["val/loss"], rel=1e-6)
    assert ema["metrics"]["loss"] != raw["metrics"]["loss"]
    model = load_predictor(best, "cpu", ema=True).model
    saved = torch.load(best, weights_only=True)["ema_state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    fit(config.replace(ema=None, monitor="val/loss", out=str(tmp_path / "plain")), quiet=True)
    with pytest.raises(UsageError, match=r"holds no EMA weights \(its run had no --ema\)"):
        evaluate_checkpoints([tmp_path / "plain" / "best.pt"], device="cpu", ema=True)
    from ptool.core.prune import PruneOptions, prune_checkpoint

    pruned = tmp_path / "pruned.pt"  # of the --ema run: its EMA is not what was pruned
    prune_checkpoint(best, PruneOptions(amount=0.5, evaluate=False, bench_runs=1, output=pruned))
    with pytest.raises(UsageError, match=r"\(pruned files hold the model's weights only"):
        evaluate_checkpoints([pruned], device="cpu", ema=True)


def _csv_run(tmp_path, lines: list[str], epochs: int):
    """An mlp trained on `lines` saved as train.csv; its last.pt."""
    from ptool.core.engine import fit

    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    config = TrainConfig(
        data=f"csv:{tmp_path / 'train.csv'}", model="mlp", epochs=epochs, seed=0,
        tensorboard=False, out=str(tmp_path / "run"),
    )  # fmt: skip
    fit(config, quiet=True)
    return tmp_path / "run" / "last.pt"


def test_a_held_out_csv_is_read_by_column_and_class_name(tmp_path):
    """Its columns were read by position (another order: accuracy 0.43 instead of 0.78), and a
    file without one of the classes was refused. The run's target is its file's last column;
    the held-out file's last column is another one."""
    from ptool.core.restore import model_from_checkpoint

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 3, generator=gen) * torch.tensor([1.0, 5.0, 0.2])
    species = ["bird", "cat", "dog"]
    y = (x[:, 0] > 0).long() + (x[:, 1] > 2).long()
    lines = ["f0,f1,f2,species"] + [  # the target last: the default --target
        f"{a},{b},{c},{species[k]}" for (a, b, c), k in zip(x.tolist(), y.tolist(), strict=True)
    ]
    ckpt_path = _csv_run(tmp_path, lines, epochs=2)
    ckpt = torch.load(ckpt_path, weights_only=True)
    model, info = model_from_checkpoint(ckpt).eval(), ckpt["data_info"]

    def oracle_accuracy(rows) -> float:
        inputs = torch.tensor([r[:3] for r in rows])
        with torch.no_grad():
            logits = model((inputs - torch.tensor(info["mean"])) / torch.tensor(info["std"]))
        names = [info["class_names"][i] for i in logits.argmax(1).tolist()]
        return sum(n == r[3] for n, r in zip(names, rows, strict=True)) / len(rows)

    pairs = zip(x[:60].tolist(), y[:60].tolist(), strict=True)
    held = [[*map(float, v), species[k]] for v, k in pairs]
    # other columns are left, as predict leaves them, text too (it was "not a number")
    reordered = ["f2,species,f1,f0,extra,note"] + [f"{c},{k},{b},{a},9,x" for a, b, c, k in held]
    (tmp_path / "held.csv").write_text("\n".join(reordered) + "\n")
    (report,) = evaluate_checkpoints([ckpt_path], data=f"csv:{tmp_path / 'held.csv'}", split="all")
    assert report["metrics"]["accuracy"] == pytest.approx(oracle_accuracy(held))
    without_birds = [r for r in held if r[3] != "bird"]
    (tmp_path / "cats.csv").write_text(
        "\n".join(["f0,f1,f2,species"] + [",".join(map(str, r)) for r in without_birds]) + "\n"
    )
    (report,) = evaluate_checkpoints([ckpt_path], data=f"csv:{tmp_path / 'cats.csv'}", split="all")
    assert report["metrics"]["accuracy"] == pytest.approx(oracle_accuracy(without_birds))
    dogs = [r for r in held if r[3] == "dog"]  # a single class
    (tmp_path / "dogs.csv").write_text(
        "\n".join(["f0,f1,f2,species"] + [",".join(map(str, r)) for r in dogs]) + "\n"
    )
    (report,) = evaluate_checkpoints([ckpt_path], data=f"csv:{tmp_path / 'dogs.csv'}", split="all")
    assert report["metrics"]["accuracy"] == pytest.approx(oracle_accuracy(dogs))
    # one and two rows, too few for a 20% validation split, which --split all never needed
    for rows in (1, 2):
        (tmp_path / "few.csv").write_text(
            "\n".join(["f0,f1,f2,species"] + [",".join(map(str, r)) for r in held[:rows]]) + "\n"
        )
        few = f"csv:{tmp_path / 'few.csv'}"
        (report,) = evaluate_checkpoints([ckpt_path], data=few, split="all")
        assert report["samples"] == rows
        assert report["metrics"]["accuracy"] == pytest.approx(oracle_accuracy(held[:rows]))
    (tmp_path / "few.csv").write_text(f"f0,f1,f2,species\n{','.join(map(str, held[0]))}\n")
    with pytest.raises(UsageError, match="at least 2 data rows") as refused:  # for a split
        evaluate_checkpoints([ckpt_path], data=few, split="val")
    assert "eval --split all reads a held-out file whole" in refused.value.hint
    with pytest.raises(UsageError) as refused:  # said "not --num-classes 3", never given
        evaluate_checkpoints([ckpt_path], data="digits")
    assert "has classes the model does not know" in str(refused.value)
    torch.save({"x": x[:1], "y": y[:1]}, tmp_path / "one.pt")
    (report,) = evaluate_checkpoints(
        [ckpt_path], data=f"tensors:{tmp_path / 'one.pt'}", split="all"
    )
    assert report["samples"] == 1
    assert report["metrics"]["accuracy"] == pytest.approx(oracle_accuracy(held[:1]))
    (tmp_path / "other.csv").write_text("a,species,b,c\n1,cat,2,3\n4,dog,5,6\n7,cat,8,9\n")
    with pytest.raises(UsageError, match="has no column 'f0', 'f1', 'f2'; the model reads f0"):
        evaluate_checkpoints([ckpt_path], data=f"csv:{tmp_path / 'other.csv'}", split="all")
    # a tensors file's labels are the model's class indices (its classes have no names)
    torch.save({"x": x[:60], "y": y[:60]}, tmp_path / "held.pt")
    (report,) = evaluate_checkpoints(
        [ckpt_path], data=f"tensors:{tmp_path / 'held.pt'}", split="all"
    )
    assert report["metrics"]["accuracy"] == pytest.approx(oracle_accuracy(held))
    (tmp_path / "fish.csv").write_text("f0,f1,f2,species\n1,2,3,fish\n4,5,6,cat\n7,8,9,cat\n")
    with pytest.raises(UsageError, match="has classes the model does not know: fish"):
        evaluate_checkpoints([ckpt_path], data=f"csv:{tmp_path / 'fish.csv'}", split="all")


def test_a_held_out_csv_takes_the_runs_task_not_a_guess_from_its_values(tmp_path):
    """A regression run's held-out file of whole-number prices was read as 3 classes and
    refused ("is classification with 3 outputs; the model is regression"). Oracle: the
    model's outputs on the file's rows, normalized with the run's statistics, and their MSE."""
    from ptool.core.restore import model_from_checkpoint

    rows = [(a % 7, a % 3) for a in range(60)]
    train = ["a,b,price"] + [f"{a},{b},{3 * a + b + 0.5}" for a, b in rows]
    ckpt_path = _csv_run(tmp_path, train, epochs=1)
    held = [(a, b, (a + b) % 3) for a, b in rows[:20]]  # three whole numbers: looks like classes
    (tmp_path / "held.csv").write_text(
        "\n".join(["a,b,price"] + [f"{a},{b},{p}" for a, b, p in held]) + "\n"
    )
    (report,) = evaluate_checkpoints([ckpt_path], data=f"csv:{tmp_path / 'held.csv'}", split="all")
    ckpt = torch.load(ckpt_path, weights_only=True)
    model, info = model_from_checkpoint(ckpt).eval(), ckpt["data_info"]
    inputs = (torch.tensor([r[:2] for r in held], dtype=torch.float32) - torch.tensor(
        info["mean"])) / torch.tensor(info["std"])  # fmt: skip
    with torch.no_grad():
        predicted = model(inputs).squeeze(1)
    mse = torch.nn.functional.mse_loss(predicted, torch.tensor([float(r[2]) for r in held]))
    assert report["metrics"]["loss"] == pytest.approx(mse.item(), rel=1e-5)


def test_held_out_regression_targets_must_be_as_many_as_the_outputs(tmp_path):
    """One target column for a 3-output model was accepted: MSE broadcast [B, 3] against
    [B, 1] and reported a loss of nothing in particular. Held-out classes may be fewer."""
    from ptool.core.engine import fit

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=gen)
    torch.save({"x": x, "y": x[:, :3] * 2}, tmp_path / "train.pt")
    config = TrainConfig(
        data=f"tensors:{tmp_path / 'train.pt'}", model="mlp", hidden=[8], epochs=1, seed=0,
        tensorboard=False, out=str(tmp_path / "run"),
    )  # fmt: skip
    fit(config, quiet=True)
    torch.save({"x": x[:10], "y": x[:10, :1]}, tmp_path / "one.pt")
    with pytest.raises(
        UsageError, match="is regression with 1 output; the model is regression with 3"
    ):
        evaluate_checkpoints(
            [tmp_path / "run" / "last.pt"], data=f"tensors:{tmp_path / 'one.pt'}", split="all"
        )
    torch.save({"x": x[:10], "y": x[:10, :3]}, tmp_path / "three.pt")
    (report,) = evaluate_checkpoints(
        [tmp_path / "run" / "last.pt"], data=f"tensors:{tmp_path / 'three.pt'}", split="all"
    )
    assert report["samples"] == 10


def test_an_image_folder_is_read_in_grayscale_for_a_one_channel_model(tmp_path):
    """It was refused ("gives inputs of shape [3, 16, 16]; the model expects [1, 16, 16]")
    while `ptool predict` read the same files as Pillow's L. The oracle: L, / 255, the run's
    statistics, the model, mean cross-entropy."""
    import numpy as np
    from PIL import Image

    from ptool.core.engine import fit
    from ptool.core.restore import model_from_checkpoint

    config = TrainConfig(data="synthetic", shape="1x16x16", num_classes=2, samples=64,
                         model="cnn", channels=[4], epochs=1, seed=0, tensorboard=False,
                         out=str(tmp_path / "run"))  # fmt: skip
    fit(config, quiet=True)
    rng = np.random.default_rng(0)
    files = []
    for label in ("0", "1"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i, mode in enumerate(("RGB", "L", "RGBA")):
            pixels = rng.integers(0, 255, (16, 16, 4), dtype=np.uint8)
            image = Image.fromarray(pixels, "RGBA").convert(mode)
            image.save(tmp_path / "imgs" / label / f"{i}.png")
            files.append((tmp_path / "imgs" / label / f"{i}.png", int(label)))
    best = tmp_path / "run" / "best.pt"
    (report,) = evaluate_checkpoints([best], data=f"imagefolder:{tmp_path / 'imgs'}", split="all")
    ckpt = torch.load(best, weights_only=True)
    model, info = model_from_checkpoint(ckpt).eval(), ckpt["data_info"]
    x = torch.stack([
        torch.from_numpy(np.array(Image.open(path).convert("L"))).float().unsqueeze(0) / 255
        for path, _ in files
    ])  # fmt: skip
    with torch.no_grad():
        logits = model((x - torch.tensor(info["mean"])) / torch.tensor(info["std"]))
    labels = torch.tensor([label for _, label in files])
    loss = torch.nn.functional.cross_entropy(logits, labels)
    assert report["samples"] == 6
    assert report["metrics"]["loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_a_held_out_image_folder_of_one_class_and_one_image_is_read_whole(tmp_path):
    """`--split all` of a held-out folder was split anyway: one image failed with "--val-split
    0.2 of 1 samples" (a flag never given), and one class folder was "nothing to classify".
    A folder with train/ and val/ still gives both."""
    import numpy as np
    from PIL import Image

    from ptool.core.engine import fit
    from ptool.core.errors import UsageError

    config = TrainConfig(data="synthetic", shape="3x8x8", num_classes=3, samples=48,
                         model="mlp", epochs=1, seed=0, tensorboard=False,
                         out=str(tmp_path / "run"))  # fmt: skip
    fit(config, quiet=True)
    best = tmp_path / "run" / "best.pt"
    rng = np.random.default_rng(0)
    layout = {"one": ["1/a.png"], "both": ["train/1/a.png", "val/1/b.png", "val/1/c.png"]}
    for folder, files in layout.items():
        for name in files:
            (tmp_path / folder / name).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / folder / name)
    for folder, files in layout.items():
        (report,) = evaluate_checkpoints([best], data=f"imagefolder:{tmp_path / folder}",
                                         split="all")  # fmt: skip
        assert report["samples"] == len(files)
        assert [sum(row) for row in report["confusion_matrix"]] == [0, len(files), 0]
    with pytest.raises(UsageError, match=r"^a validation split of 0.2 of 1 samples") as caught:
        evaluate_checkpoints([best], data=f"imagefolder:{tmp_path / 'one'}", split="val")
    assert "eval --split all" in caught.value.hint


def test_an_image_folders_test_split_is_its_test_folder_also_under_a_tilde(tmp_path, monkeypatch):
    """`--split test` of a run on `imagefolder:~/photos` looked for a folder named `~` and
    said the data has no test split. The oracle: the test folder given as held-out data."""
    from ptool.core.engine import fit
    from tests.core.test_data import make_image_folder

    monkeypatch.setenv("HOME", str(tmp_path))
    make_image_folder(tmp_path / "photos" / "train", per_class=4, size=(8, 8))
    make_image_folder(tmp_path / "photos" / "val", per_class=2, size=(8, 8))
    make_image_folder(tmp_path / "photos" / "test", per_class=3, size=(8, 8))
    config = TrainConfig(
        data="imagefolder:~/photos", image_size=8, model="mlp", hidden=[8], epochs=1, seed=0,
        tensorboard=False, out=str(tmp_path / "run"),
    )  # fmt: skip
    fit(config, quiet=True)
    best = tmp_path / "run" / "best.pt"
    (test,) = evaluate_checkpoints([best], split="test")
    (held,) = evaluate_checkpoints([best], data=f"imagefolder:{tmp_path / 'photos' / 'test'}",
                                   split="all")  # fmt: skip
    assert test["samples"] == held["samples"] == 6
    assert test["metrics"] == pytest.approx(held["metrics"])


def test_a_held_out_image_sources_wrappers_pickle_for_spawned_workers():
    """macOS and Windows start DataLoader workers by spawning: the dataset is pickled."""
    import pickle
    from types import SimpleNamespace

    from torch.utils.data import Subset

    from ptool.core.evaluate import _in_the_models_terms, _with_run_normalization

    images = Subset(TensorDataset(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 0, 1])), [0, 1, 2])
    found = SimpleNamespace(feature_names=None, class_names=["cat", "dog"])
    info = SimpleNamespace(
        feature_names=None, class_names=["bird", "cat", "dog"], mean=[0.5] * 3, std=[0.2] * 3
    )
    dataset = _with_run_normalization(_in_the_models_terms(images, found, info, "x"), info)
    again = pickle.loads(pickle.dumps(dataset))
    assert [int(again[i][1]) for i in range(3)] == [1, 2, 1]  # cat, dog, cat in the model's terms
    torch.testing.assert_close(again[0][0], (images[0][0] - 0.5) / 0.2)


def test_a_checkpoint_fetches_its_dataset_only_when_the_user_asks(tmp_path, monkeypatch):
    """A checkpoint's own `download: true` made eval (prune, quantize) reach the network and
    write into the --data-dir the file named; --download is the user's flag now."""
    from urllib.error import URLError

    import torchvision.datasets

    from ptool.core.errors import PtoolError
    from tests.core.test_quantize import write_checkpoint

    asked = []

    def offline(*args, **kwargs):
        asked.append(kwargs.get("download"))
        raise URLError(OSError(-2, "unknown name"))

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    path = write_checkpoint(tmp_path / "run.pt", epochs=0, data="synthetic", shape="1x28x28")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"].update(data="mnist", data_dir=str(tmp_path / "dl"), download=True)
    torch.save(ckpt, path)
    with pytest.raises(UsageError, match="--data-dir .*dl does not exist") as err:
        evaluate_checkpoints([path], device="cpu")
    assert "--download" in err.value.hint and asked == []
    with pytest.raises(PtoolError, match="could not download mnist into --data-dir"):
        evaluate_checkpoints([path], device="cpu", download=True)
    assert asked == [True]
