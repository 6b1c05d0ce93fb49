"""Data sources, splits, normalization and batch serving, against torch/sklearn oracles."""

from __future__ import annotations

import csv
import math
import re
import struct
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from ptool.core.config import TrainConfig
from ptool.core.data import DataInfo, build_data, is_in_memory, make_loader, val_transform
from ptool.core.data.common import split_indices
from ptool.core.errors import PtoolError, UsageError


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**kw)


def raw_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    return torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16, torch.tensor(labels)


@pytest.fixture(scope="module")
def digits():
    return build_data(cfg())


def test_digits_sizes_split_and_info(digits):
    info = digits.info
    assert (info.train_size, info.val_size) == (1797 - 359, 359)
    assert (len(digits.train), len(digits.val)) == (1438, 359)
    assert (
        info.input_shape == [1, 8, 8] and info.num_outputs == 10 and info.task == "classification"
    )
    assert is_in_memory(digits.train) and is_in_memory(digits.val)


def test_digits_normalization_uses_train_statistics(digits):
    x, _ = raw_digits()
    mean, std = digits.info.mean[0], digits.info.std[0]
    train_raw = digits.train.tensors[0] * std + mean
    val_raw = digits.val.tensors[0] * std + mean
    # the splits together are exactly the dataset (as a multiset of images)
    together = torch.cat([train_raw, val_raw]).flatten(1)
    assert torch.allclose(together.sum(0), x.flatten(1).sum(0), atol=1e-2)
    assert mean == pytest.approx(train_raw.mean().item(), abs=1e-5)
    assert std == pytest.approx(train_raw.std().item(), abs=1e-5)


def test_split_is_seeded_and_stable(digits):
    again = build_data(cfg())
    assert torch.equal(again.val.tensors[0], digits.val.tensors[0])
    other = build_data(cfg(seed=1))
    assert not torch.equal(other.val.tensors[1], digits.val.tensors[1])
    custom = build_data(cfg(val_split=0.5))
    assert custom.info.val_size == round(1797 * 0.5)


def test_in_memory_batches_are_dataset_at_order(digits):
    order = torch.randperm(len(digits.train), generator=torch.Generator().manual_seed(3))
    loader = make_loader(digits.train, cfg(batch_size=100), order, train=True, device="cpu")
    batches = list(loader)
    assert len(loader) == len(batches) == 15
    x, y = digits.train.tensors
    assert torch.equal(torch.cat([b[0] for b in batches]), x[order])
    assert torch.equal(torch.cat([b[1] for b in batches]), y[order])
    tail = make_loader(digits.train, cfg(batch_size=100, drop_last=True), order[250:], train=True)
    assert len(tail) == 11 and torch.equal(next(iter(tail))[0], x[order[250:350]])
    val = make_loader(
        digits.val, cfg(batch_size=100, drop_last=True), torch.arange(359), train=False
    )
    assert len(val) == 4  # drop_last applies to training only


def test_per_sample_loader_follows_order():
    bundle = build_data(
        cfg(data="synthetic", samples=40, shape="1x8x8", augment=["flip"], flip_p=0)
    )
    assert not is_in_memory(bundle.train)
    order = torch.tensor([5, 3, 30, 1, 7])
    loader = make_loader(bundle.train, cfg(batch_size=2, num_workers=0), order, train=True)
    assert len(loader) == 3
    xs = torch.cat([x for x, _ in loader])
    assert torch.allclose(xs, torch.stack([bundle.train[i][0] for i in order.tolist()]))


def test_synthetic_is_seeded_and_shaped():
    a = build_data(cfg(data="synthetic", samples=100, shape="3x16x16", num_classes=4, seed=7))
    b = build_data(cfg(data="synthetic", samples=100, shape="3x16x16", num_classes=4, seed=7))
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert a.info.input_shape == [3, 16, 16] and a.info.num_outputs == 4
    assert a.train.tensors[1].max() < 4 and len(a.train) + len(a.val) == 100
    assert len(a.info.mean) == 3


def test_synthetic_images_are_learnable():
    """Nearest class mean on the training split classifies validation well above chance."""
    bundle = build_data(cfg(data="synthetic", samples=400, shape="1x8x8", num_classes=4))
    x, y = (t.flatten(1) if t.is_floating_point() else t for t in bundle.train.tensors)
    centroids = torch.stack([x[y == k].mean(0) for k in range(4)])
    xv, yv = bundle.val.tensors
    accuracy = (torch.cdist(xv.flatten(1), centroids).argmin(1) == yv).float().mean()
    assert accuracy > 0.9


def test_synthetic_tabular_regression():
    bundle = build_data(cfg(data="synthetic", shape="12", task="regression", samples=50))
    x, y = bundle.train.tensors
    assert x.shape[1:] == (12,) and y.shape[1:] == (1,) and y.dtype == torch.float32
    assert bundle.info.num_outputs == 1 and bundle.info.num_classes is None


def test_unknown_source_lists_valid_names():
    with pytest.raises(UsageError, match="valid: digits, synthetic, mnist.*csv:PATH.csv"):
        build_data(cfg(data="digitz"))


def test_bad_augment_and_task():
    with pytest.raises(UsageError, match="valid: crop, flip, resized-crop, color-jitter"):
        build_data(cfg(augment=["rotate"]))
    with pytest.raises(UsageError, match="needs image data"):
        build_data(cfg(data="synthetic", shape="5", augment=["flip"]))
    with pytest.raises(UsageError, match="--task regression"):
        build_data(cfg(task="regression"))


def test_color_jitter_refuses_float_images_outside_0_1(tmp_path):
    """torchvision clamps them (the oracle below): 0-255 floats trained at chance."""
    from torchvision.transforms import v2

    assert v2.ColorJitter(brightness=0.001)(torch.full((3, 2, 2), 200.0)).max() == 1.0
    y = torch.arange(40) % 2
    pixels = torch.randint(0, 256, (40, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    for x, refused in (
        (pixels.float(), True),
        (pixels.float() / 255, False),
        (pixels.byte(), False),
    ):
        torch.save({"x": x, "y": y}, tmp_path / "t.pt")
        config = cfg(data=f"tensors:{tmp_path / 't.pt'}", augment=["color-jitter"])
        if refused:
            with pytest.raises(UsageError, match=r"needs images in \[0, 1\].* in \[0, 255\]"):
                build_data(config)
        else:
            assert build_data(config).info.input_shape == [3, 4, 4]


def test_image_size_resizes_in_memory_images():
    bundle = build_data(cfg(image_size=16))
    assert bundle.info.input_shape == [1, 16, 16] and bundle.info.image_size == 16
    assert bundle.val.tensors[0].shape[1:] == (1, 16, 16)
    with pytest.raises(UsageError, match="--image-size needs image data"):
        build_data(cfg(data="synthetic", shape="4", image_size=16))


def test_augmented_digits_keep_deterministic_validation(digits):
    bundle = build_data(cfg(augment=["crop", "flip", "resized-crop", "color-jitter"]))
    x, y = bundle.train[0]
    assert x.shape == (1, 8, 8) and not is_in_memory(bundle.train)
    assert torch.equal(bundle.val.tensors[0], digits.val.tensors[0])


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_csv_classification_with_string_labels(tmp_path):
    rows = [[i, i % 3 * 1.5, ["cat", "dog"][i % 2]] for i in range(20)]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "kind"], rows)
    bundle = build_data(cfg(data=f"csv:{path}"))
    info = bundle.info
    assert info.task == "classification" and info.class_names == ["cat", "dog"]
    assert info.input_shape == [2] and info.train_size == 16
    x, _ = bundle.train.tensors
    assert torch.allclose(x.mean(0), torch.zeros(2), atol=1e-5)  # standardized with train stats


def test_csv_saved_by_excel_with_a_byte_order_mark(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["label", "a"], [[i % 2, i] for i in range(10)])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    bundle = build_data(cfg(data=f"csv:{path}", target="label"))
    assert bundle.info.input_shape == [1] and bundle.info.num_classes == 2


def test_csv_regression_and_target_choice(tmp_path):
    rows = [[i * 0.5, i * 0.25 + 0.1, i] for i in range(10)]
    path = write_csv(tmp_path / "r.csv", ["y", "x1", "x2"], rows)
    bundle = build_data(cfg(data=f"csv:{path}", target="y"))
    assert bundle.info.task == "regression" and bundle.info.num_outputs == 1
    xs, ys = (torch.cat(t) for t in zip(bundle.train.tensors, bundle.val.tensors, strict=True))
    assert xs.shape == (10, 2)
    assert sorted(ys.flatten().tolist()) == [i * 0.5 for i in range(10)]


def test_tabular_val_transform_matches_validation(tmp_path):
    rows = [[i, (i * 7) % 5, i % 2] for i in range(20)]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "y"], rows)
    bundle = build_data(cfg(data=f"csv:{path}"))
    x_val = bundle.val.tensors[0][0]
    raw = x_val * torch.tensor(bundle.info.std) + torch.tensor(bundle.info.mean)
    assert torch.allclose(val_transform(bundle.info)(raw.tolist()), x_val, atol=1e-5)


def test_csv_errors(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "b"], [[1, 0], [2, 1], [3, 0]])
    with pytest.raises(UsageError, match="no column 'label'; columns: a, b"):
        build_data(cfg(data=f"csv:{path}", target="label"))
    bad = write_csv(tmp_path / "bad.csv", ["a", "y"], [["x", 0], [2, 1], [3, 0]])
    with pytest.raises(UsageError, match="line 2: column 'a' is not a number"):
        build_data(cfg(data=f"csv:{bad}"))
    with pytest.raises(UsageError, match="no such file") as err:
        build_data(cfg(data=f"csv:{tmp_path / 'missing.csv'}"))
    assert err.value.hint is None  # an absolute path needs no word on the directory
    latin = write_csv(tmp_path / "latin.csv", ["a", "y"], [[1, 0], [2, 1], [3, 0]])
    latin.write_bytes(latin.read_bytes().replace(b"a,", b"\xe9t\xe9,"))  # Latin-1 "été"
    with pytest.raises(UsageError, match=r"latin.csv: not UTF-8 text \(byte 0xe9\)"):
        build_data(cfg(data=f"csv:{latin}"))
    (tmp_path / "long.csv").write_text("a,y\n" + "1" * 200_000 + ",0\n")
    with pytest.raises(UsageError, match=r"long.csv: not readable as CSV \(field larger"):
        build_data(cfg(data=f"csv:{tmp_path / 'long.csv'}"))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (["a", "a", "b", "y"], "column 'a' is named twice (columns 1 and 2)"),
        (["", "a", "b", "y"], "column 1 has no name (an index column written by pandas?)"),
    ],
)
def test_csv_columns_need_names_of_their_own(tmp_path, header, message):
    """Matched by name in eval and predict: the first 'a' was taken, the second never read."""
    path = write_csv(tmp_path / "t.csv", header, [[i, i % 3, i % 5, i % 2] for i in range(9)])
    with pytest.raises(UsageError, match=re.escape(message)) as caught:
        build_data(cfg(data=f"csv:{path}"))
    assert caught.value.hint == "give every column its own name: columns are matched by name"


def test_csv_errors_name_the_files_line_past_blank_lines_and_an_empty_target(tmp_path):
    """Blank lines were dropped before numbering: 'line 4' for a bad cell on line 6; an empty
    target cell became a class named ''."""
    path = tmp_path / "blank.csv"
    path.write_text("x1,x2,y\n1.0,2.0,a\n\n\n3.0,4.0,b\n1.0,foo,a\n")
    with pytest.raises(UsageError, match="line 6: column 'x2' is not a number"):
        build_data(cfg(data=f"csv:{path}"))
    path.write_text('x1,note,y\n1.0,"two\nlines",a\n\n2.0,3.0,\n')
    with pytest.raises(UsageError, match="line 2: column 'note'"):  # where the row starts
        build_data(cfg(data=f"csv:{path}"))
    path.write_text("x1,x2,y\n1.0,2.0,a\n\n3.0,4.0,\n5.0,6.0,b\n")
    with pytest.raises(UsageError, match=r"line 4: the target 'y' is empty") as err:
        build_data(cfg(data=f"csv:{path}"))
    assert err.value.hint == "fill it in, or drop the row"


def test_a_numeric_target_with_na_gaps_is_refused_by_line_not_read_as_labels(tmp_path):
    """One NA among 99 floats made a 99-class classification; text labels may still say
    'none', and --task regression names the line of a non-number."""
    rows = [[i, "NA" if i == 10 else i * 1.37] for i in range(100)]
    path = write_csv(tmp_path / "gap.csv", ["a", "y"], rows)
    for task in ("auto", "regression", "classification"):
        with pytest.raises(UsageError, match=r"line 12: the target 'y' is missing \('NA'\)"):
            build_data(cfg(data=f"csv:{path}", task=task))
    labels = write_csv(
        tmp_path / "l.csv", ["a", "y"], [[i, ["none", "cat"][i % 2]] for i in range(9)]
    )
    assert build_data(cfg(data=f"csv:{labels}")).info.class_names == ["cat", "none"]
    with pytest.raises(UsageError, match="line 2: --task regression needs a numeric target"):
        build_data(cfg(data=f"csv:{labels}", task="regression"))


def test_csv_class_targets_are_finite_labels_the_file_holds(tmp_path):
    """Each NaN label was a class of its own ("nan" four times); a new run's --num-classes
    above the labels found left eval and predict without names for the extra classes."""
    rows = [[i, i % 3, "nan" if i % 5 == 0 else i % 2] for i in range(20)]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "y"], rows)
    with pytest.raises(UsageError, match="line 2: the target 'y' is 'nan', not a class label"):
        build_data(cfg(data=f"csv:{path}", task="classification"))
    path = write_csv(
        tmp_path / "s.csv", ["a", "y"], [[i, "cat" if i % 2 else "dog"] for i in range(9)]
    )
    from ptool.core.engine import fit

    config = cfg(data=f"csv:{path}", model="mlp", num_classes=5, out=str(tmp_path / "run"))
    with pytest.raises(UsageError, match=r"--num-classes 5 is more than the 2 classes that csv:"):
        fit(config, quiet=True)
    assert not list((tmp_path / "run").glob("*.pt"))
    assert build_data(cfg(data=f"csv:{path}", num_classes=2)).info.class_names == ["cat", "dog"]
    with pytest.raises(UsageError, match=r"s.csv: labels need 2 classes, not --num-classes 1$"):
        build_data(cfg(data=f"csv:{path}", num_classes=1))


@pytest.mark.parametrize("data", ["synthetic", "csv"])
def test_num_classes_of_a_regression_run_is_refused_not_ignored(tmp_path, data):
    from ptool.core.engine import fit

    values = dict(data="synthetic", shape="6", task="regression")
    if data == "csv":
        rows = [[i, i * 0.37] for i in range(20)]  # decimals: regression, found by itself
        values = dict(data=f"csv:{write_csv(tmp_path / 'r.csv', ['a', 'y'], rows)}")
    config = cfg(**values, model="mlp", num_classes=3, out=str(tmp_path / "run"))
    with pytest.raises(UsageError, match="--num-classes 3 is for classification; .* regression"):
        fit(config, quiet=True)
    assert not list((tmp_path / "run").glob("*.pt"))


def test_csv_value_beyond_float32_is_named_not_called_infinite(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "y"], [[1, 0], ["1e39", 1], [3, 0]])
    with pytest.raises(UsageError, match=r"line 3: column 'a' is 1e39, beyond float32's range"):
        build_data(cfg(data=f"csv:{path}"))
    path = write_csv(tmp_path / "r.csv", ["a", "y"], [[1, 0.5], [2, "-2e40"], [3, 1.5]])
    with pytest.raises(UsageError, match=r"line 3: column 'y' is -2e40, beyond float32's range"):
        build_data(cfg(data=f"csv:{path}"))


def test_csv_without_header_or_commas_is_refused(tmp_path):
    rows = [[i * 0.5, i % 3, ["cat", "dog"][i % 2]] for i in range(10)]
    write_csv(tmp_path / "data.csv", rows[0], rows[1:])  # the first data row as header
    with pytest.raises(UsageError, match="data.csv has no header row") as err:
        build_data(cfg(data=f"csv:{tmp_path / 'data.csv'}"))
    assert "naming the columns" in err.value.hint
    numbers = [[i, i * 2, i % 2] for i in range(10)]
    write_csv(tmp_path / "numbers.csv", numbers[0], numbers[1:])
    with pytest.raises(UsageError, match="numbers.csv has no header row"):
        build_data(cfg(data=f"csv:{tmp_path / 'numbers.csv'}"))
    write_csv(tmp_path / "pandas.csv", ["0", "1", "kind"], rows)  # DataFrame(X) column names
    assert build_data(cfg(data=f"csv:{tmp_path / 'pandas.csv'}")).info.feature_names == ["0", "1"]
    (tmp_path / "semi.csv").write_text("a;b;y\n1;2;0\n3;4;1\n5;6;0\n")
    with pytest.raises(UsageError, match="semi.csv has a single column, 'a;b;y'") as err:
        build_data(cfg(data=f"csv:{tmp_path / 'semi.csv'}", target="y"))
    assert "comma-separated" in err.value.hint


def test_tensors_dict_with_val_split(tmp_path):
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    path = tmp_path / "d.pt"
    torch.save({"inputs": x, "labels": y, "x_val": x[:4], "y_val": y[:4]}, path)
    bundle = build_data(cfg(data=f"tensors:{path}"))
    assert bundle.info.val_size == 4 and bundle.info.num_classes == 3
    xv = bundle.val.tensors[0] * torch.tensor(bundle.info.std) + torch.tensor(bundle.info.mean)
    assert torch.allclose(xv, x[:4], atol=1e-5)


def test_sparse_tensors_are_the_dense_ones_they_stand_for(tmp_path):
    """A sparse x was "unexpected RuntimeError: reshape is not implemented for sparse tensors"
    after torch's notice about validating it; train reads it as the dense tensor, and so does
    predict (where it also failed every other input)."""
    import warnings

    from ptool.core.predict import Reader

    x, y = torch.randn(30, 5).relu(), torch.randint(0, 3, (30,))
    torch.save({"x": x, "y": y, "x_val": x[:6], "y_val": y[:6]}, tmp_path / "d.pt")
    torch.save(
        {"x": x.to_sparse(), "y": y, "x_val": x[:6].to_sparse(), "y_val": y[:6]}, tmp_path / "s.pt"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dense, sparse = (build_data(cfg(data=f"tensors:{tmp_path / n}")) for n in ("d.pt", "s.pt"))
        samples = list(Reader(dense.info, None).read([str(tmp_path / "s.pt")]))
    assert not [w for w in caught if "sparse" in str(w.message)]
    for split in ("train", "val"):
        got = getattr(sparse, split).tensors
        assert all(
            torch.equal(a, b) for a, b in zip(getattr(dense, split).tensors, got, strict=True)
        )
    assert len(samples) == 30 and all(s.error is None for s in samples)


def test_tensors_tuple_regression_and_images(tmp_path):
    path = tmp_path / "t.pt"
    torch.save((torch.rand(20, 8, 8), torch.randn(20)), path)
    bundle = build_data(cfg(data=f"tensors:{path}"))
    assert bundle.info.task == "regression" and bundle.info.input_shape == [1, 8, 8]


@pytest.mark.parametrize("shape", [(40, 3, 5, 6), (40, 5, 6)])
def test_uint8_image_tensors_are_pixels_scaled_to_0_1(tmp_path, shape):
    """As image files and `ptool predict`'s uint8 inputs: the same data as the floats / 255."""
    pixels = torch.randint(
        0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    y = torch.arange(40) % 2
    torch.save({"x": pixels, "y": y}, tmp_path / "u8.pt")
    torch.save({"x": pixels.float() / 255, "y": y}, tmp_path / "f.pt")
    u8, f = (build_data(cfg(data=f"tensors:{tmp_path / n}")) for n in ("u8.pt", "f.pt"))
    assert (u8.info.mean, u8.info.std) == (f.info.mean, f.info.std)
    for a, b in ((u8.train, f.train), (u8.val, f.val)):
        assert torch.equal(a.tensors[0], b.tensors[0])
    _, val_idx = split_indices(40, 0.2, seed=0)
    predicted = val_transform(u8.info)(pixels[val_idx[0]])  # predict's preprocessing
    assert torch.allclose(predicted, u8.val.tensors[0][0], atol=1e-5)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"x": torch.randn(0, 4), "y": torch.zeros(0, dtype=torch.long)}, r"no samples \(0 rows\)"),
        (
            {"x": torch.randn(10, 4), "y": torch.zeros(10, dtype=torch.long),
             "x_val": torch.randn(3, 5), "y_val": torch.zeros(3, dtype=torch.long)},
            r"x_val rows have shape \[5\], the training rows \[4\]",
        ),
        (  # dropped, and a seeded split made instead
            {"x": torch.randn(10, 4), "y": torch.zeros(10, dtype=torch.long),
             "x_val": torch.randn(3, 4)},
            "holds x_val without y_val",
        ),
        ({"x": torch.rand(10, 0), "y": torch.arange(10) % 2}, r"shape \[10, 0\]: no features"),
        (  # cast to real with a warning, the imaginary parts dropped
            {"x": torch.randn(10, 4, dtype=torch.complex64), "y": torch.arange(10) % 2},
            "are torch.complex64; ptool trains on real numbers",
        ),
    ],
)  # fmt: skip
def test_tensors_without_rows_or_with_mismatched_val_rows_are_refused(tmp_path, tensors, message):
    path = tmp_path / "t.pt"
    torch.save(tensors, path)
    with pytest.raises(UsageError, match=message):
        build_data(cfg(data=f"tensors:{path}"))


ONE_HOT = torch.nn.functional.one_hot(torch.arange(30) % 3)


@pytest.mark.parametrize(
    ("y", "task", "message"),
    [
        (ONE_HOT, "auto", r"class targets must be a 1-D tensor \[N\] .*not shape \[30, 3\]"),
        (ONE_HOT.float(), "classification", r"not shape \[30, 3\]"),
        (torch.arange(30) % 4 / 2, "classification", "needs whole-number targets .*not 0.5"),
        (torch.full((30,), math.inf), "classification", "needs whole-number targets .*not inf"),
        (torch.tensor(1), "auto", "targets must be a tensor with one row per input"),
    ],
)
def test_tensors_targets_that_are_not_class_indices_are_refused(tmp_path, y, task, message):
    torch.save({"x": torch.randn(30, 4), "y": y}, tmp_path / "t.pt")
    with pytest.raises(UsageError, match=message):
        build_data(cfg(data=f"tensors:{tmp_path / 't.pt'}", task=task))


def test_tensors_targets_as_classes_or_outputs(tmp_path):
    """Whole floats are classes with --task classification; [N, K] targets regress K outputs."""
    x, labels = torch.randn(30, 4), torch.arange(30) % 3
    for y, task, outputs in (
        (labels.float(), "classification", 3),
        (labels.unsqueeze(1), "auto", 3),
        (ONE_HOT, "regression", 3),
        (torch.randn(30, 2), "auto", 2),
    ):
        torch.save({"x": x, "y": y, "x_val": x, "y_val": y}, tmp_path / "t.pt")
        bundle = build_data(cfg(data=f"tensors:{tmp_path / 't.pt'}", task=task))
        assert bundle.info.num_outputs == outputs
        expected = labels if bundle.info.task == "classification" else y.float()
        assert torch.equal(bundle.val.tensors[1], expected)


def test_nan_or_infinite_values_are_refused_at_load(tmp_path):
    x = torch.randn(30, 4)
    x[[5, 9], 1] = torch.tensor([math.nan, math.inf])
    path = tmp_path / "t.pt"
    torch.save({"x": x, "y": torch.arange(30) % 2}, path)
    with pytest.raises(UsageError, match=r"NaN or infinite input values: 2 \(the first: row 5\)"):
        build_data(cfg(data=f"tensors:{path}"))
    (tmp_path / "n.csv").write_text("a,b,y\n1,2,0.5\n3,4,nan\n5,6,1.5\n7,8,2.5\n")
    with pytest.raises(UsageError, match=r"NaN or infinite target values: 1 \(the first: line 3\)"):
        build_data(cfg(data=f"csv:{tmp_path / 'n.csv'}", target="y", task="regression"))


def test_pickled_tensor_dataset_is_refused_with_layouts(tmp_path):
    path = tmp_path / "ds.pt"
    torch.save(TensorDataset(torch.randn(4, 2), torch.zeros(4)), path)
    with pytest.raises(UsageError, match="TensorDataset") as err:
        build_data(cfg(data=f"tensors:{path}"))
    assert "'x': X" in err.value.hint


def make_image_folder(root, classes=("a", "b"), per_class=5, size=(12, 10)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_imagefolder_split_and_val_transform(tmp_path):
    make_image_folder(tmp_path / "imgs")
    bundle = build_data(cfg(data=f"imagefolder:{tmp_path / 'imgs'}", image_size=16))
    info = bundle.info
    assert info.input_shape == [3, 16, 16] and info.class_names == ["a", "b"]
    assert (info.train_size, info.val_size) == (8, 2) and info.image_size == 16
    x, y = bundle.val[0]
    assert x.shape == (3, 16, 16)
    from PIL import Image

    base = bundle.val.dataset
    image = Image.open(base.samples[bundle.val.indices[0]][0])
    assert torch.allclose(val_transform(info)(image), x, atol=1e-4)


def test_imagefolder_train_val_subfolders(tmp_path):
    make_image_folder(tmp_path / "train", per_class=3)
    make_image_folder(tmp_path / "val", per_class=2)
    bundle = build_data(cfg(data=f"imagefolder:{tmp_path}", augment=["flip", "crop"]))
    assert (bundle.info.train_size, bundle.info.val_size) == (6, 4)
    assert bundle.train[0][0].shape == (3, 64, 64)
    make_image_folder(tmp_path / "train", classes=("c",), per_class=2)  # val/ has no c
    with pytest.raises(UsageError, match=r"val has classes \['a', 'b'\], .*train has") as err:
        build_data(cfg(data=f"imagefolder:{tmp_path}"))
    assert "or --val-split 0.2 to validate on a seeded split of train/" in err.value.hint
    split = build_data(cfg(data=f"imagefolder:{tmp_path}", val_split=0.25)).info  # the way out
    assert (split.class_names, split.train_size, split.val_size) == (["a", "b", "c"], 6, 2)
    make_image_folder(tmp_path / "one", classes=("a",))
    with pytest.raises(UsageError, match="holds one class folder") as err:
        build_data(cfg(data=f"imagefolder:{tmp_path / 'one'}"))
    assert "eval --split all reads a held-out folder of one class" in err.value.hint


def test_imagefolder_skips_hidden_folders_and_files(tmp_path):
    """A .git or .ipynb_checkpoints folder was a class; macOS's ._0.png a sample (unreadable)."""
    make_image_folder(tmp_path / "imgs")
    make_image_folder(tmp_path / "imgs" / ".ipynb_checkpoints" / "x")
    make_image_folder(tmp_path / "imgs" / "a" / ".cache" / "y", per_class=1)
    (tmp_path / "imgs" / "b" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    bundle = build_data(cfg(data=f"imagefolder:{tmp_path / 'imgs'}"))
    assert bundle.info.class_names == ["a", "b"]
    assert bundle.info.train_size + bundle.info.val_size == 10


def test_imagefolder_follows_links_but_not_round_a_loop(tmp_path):
    """A link to a folder above (`ln -s .. up`, or `/`) sent torchvision's walk round and
    round, forever; other links are followed as torchvision follows them, in its order."""
    from torchvision.datasets import ImageFolder

    from ptool.core.data.image_folder import VisibleImageFolder

    make_image_folder(tmp_path / "imgs", per_class=2)
    make_image_folder(tmp_path / "extra", classes=("deep",), per_class=2)
    (tmp_path / "imgs" / "a" / "more").symlink_to(tmp_path / "extra")
    torchvision_reads = ImageFolder(str(tmp_path / "imgs")).samples
    assert len(torchvision_reads) == 6  # the linked folder's two images count for a
    for name, target in [("up", ".."), ("root", "/"), ("self", ".")]:
        (tmp_path / "imgs" / "b" / name).symlink_to(target)
    (tmp_path / "extra" / "deep" / "back").symlink_to(tmp_path / "imgs")
    assert VisibleImageFolder(tmp_path / "imgs").samples == torchvision_reads


def test_an_unreadable_image_is_named_when_it_is_read(tmp_path, monkeypatch):
    """A truncated file reached the user as "unexpected OSError: Truncated File Read"."""
    from ptool.core.data.image_folder import UnreadableImage

    make_image_folder(tmp_path / "imgs", per_class=1)
    whole = (tmp_path / "imgs" / "a" / "0.png").read_bytes()
    (tmp_path / "imgs" / "a" / "0.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "imgs" / "b" / "0.png").write_text("not a png")
    bundle = build_data(cfg(data=f"imagefolder:{tmp_path / 'imgs'}", val_split=0.5))
    images = bundle.train.dataset
    with pytest.raises(UnreadableImage, match=r"a/0.png: cannot read the image \(") as err:
        images[0]
    assert err.value.hint == "remove or replace that file"
    with pytest.raises(UnreadableImage, match=r"b/0.png: not an image Pillow reads$"):
        images[1]
    monkeypatch.setattr("PIL.Image.MAX_IMAGE_PIXELS", 50)  # its error is no OSError
    (tmp_path / "imgs" / "b" / "0.png").write_bytes(whole)  # 120 pixels, past twice that
    with pytest.raises(UnreadableImage, match=r"b/0.png: too large to decode safely \("):
        images[1]


def test_a_relative_data_path_that_is_not_there_names_the_directory(tmp_path, monkeypatch):
    """A run records --data as typed: its eval from elsewhere said only 'tv is not a
    directory'."""
    monkeypatch.chdir(tmp_path)
    for spec in ("imagefolder:tv", "csv:data/t.csv"):
        with pytest.raises(UsageError) as err:
            build_data(cfg(data=spec))
        assert err.value.hint == (
            f"{spec.split(':')[1]} is relative to {tmp_path}: run from the folder it was given "
            "in, or give its path from here"
        )


def test_imagefolder_refusals_a_single_class_and_a_val_folder_without_train(tmp_path):
    """A single class reached torchmetrics ("unexpected ValueError ... report it"); PATH/val
    beside the class folders was read as a class named 'val'."""
    make_image_folder(tmp_path / "one", classes=("cat",))
    with pytest.raises(UsageError, match="holds one class folder \\(cat\\); nothing to classify"):
        build_data(cfg(data=f"imagefolder:{tmp_path / 'one'}"))
    make_image_folder(tmp_path / "mixed", classes=("apple", "banana", "val"))
    with pytest.raises(UsageError, match="has val/ but no train/, so 'val' would be read as a"):
        build_data(cfg(data=f"imagefolder:{tmp_path / 'mixed'}"))


def test_data_refusals_name_the_file_or_folder(tmp_path):
    """An empty class folder said "Found no valid file for the classes b. " (torchvision's
    words, no path); a single-class tensors: or csv: file did not name the file."""
    make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"))
    for image in (tmp_path / "imgs" / "b").iterdir():
        image.rename(image.with_suffix(".txt"))
    with pytest.raises(UsageError, match=f"^imagefolder: no image in {tmp_path / 'imgs' / 'b'} "):
        build_data(cfg(data=f"imagefolder:{tmp_path / 'imgs'}"))
    torch.save({"x": torch.randn(6, 2), "y": torch.zeros(6, dtype=torch.long)}, tmp_path / "t.pt")
    write_csv(tmp_path / "t.csv", ["f", "label"], [[i, "cat"] for i in range(6)])
    for spec in (f"tensors:{tmp_path / 't.pt'}", f"csv:{tmp_path / 't.csv'}"):
        kind, path = spec.split(":", 1)
        with pytest.raises(UsageError, match=f"^{kind}: {path}: the target has a single class"):
            build_data(cfg(data=spec))


def test_val_transform_matches_digits_validation(digits):
    x, _ = raw_digits()
    raw_val = digits.val.tensors[0] * digits.info.std[0] + digits.info.mean[0]
    transform = val_transform(DataInfo.from_dict(digits.info.to_dict()))
    assert torch.allclose(transform(raw_val[0]), digits.val.tensors[0][0], atol=1e-5)
    uint8 = (raw_val[0, 0] * 255).round().to(torch.uint8)  # (H, W) 0-255 also accepted
    assert transform(uint8).shape == (1, 8, 8)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_val_transform_converts_channels_of_arrays_as_pillow_does_images(channels, mode):
    """An RGBA array for an RGB model became its red channel three times, an RGB one for a
    grayscale model the plain mean. The oracle: the same pixels as a PIL image."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, len(mode)), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(2) if mode == "L" else pixels, mode)
    info = DataInfo(task="classification", input_shape=[channels, 6, 5], num_outputs=2,
                    num_classes=2, class_names=None, mean=None, std=None, image_size=None,
                    train_size=1, val_size=1)  # fmt: skip
    array = torch.from_numpy(pixels).permute(2, 0, 1)
    transform = val_transform(info)
    assert torch.allclose(transform(array), transform(image), atol=1 / 255)


def test_data_info_survives_weights_only_load(tmp_path, digits):
    torch.save({"data_info": digits.info.to_dict()}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)["data_info"]
    assert DataInfo.from_dict(loaded) == digits.info


def test_a_folder_given_as_a_file_and_a_file_as_a_folder_are_named_so(tmp_path, monkeypatch):
    """`csv:DIR` said "no such file", `--data-dir FILE` "does not exist"; `~` was a folder."""
    for spec in (f"csv:{tmp_path}", f"tensors:{tmp_path}"):
        with pytest.raises(UsageError, match=f"{tmp_path} is a directory, not a file$"):
            build_data(cfg(data=spec))
    (tmp_path / "mnist.zip").write_bytes(b"PK")
    with pytest.raises(UsageError, match="mnist.zip is a file, not a folder"):
        build_data(cfg(data="mnist", data_dir=str(tmp_path / "mnist.zip")))
    monkeypatch.setenv("HOME", str(tmp_path))
    make_image_folder(tmp_path / "imgs")
    assert build_data(cfg(data="imagefolder:~/imgs")).info.class_names == ["a", "b"]


def test_torchvision_missing_dir_names_the_flags(tmp_path):
    with pytest.raises(UsageError, match="--data-dir .*does not exist") as err:
        build_data(cfg(data="mnist", data_dir=str(tmp_path / "nope")))
    assert "--download" in err.value.hint
    with pytest.raises(UsageError, match="mnist not found under --data-dir") as err:
        build_data(cfg(data="mnist", data_dir=str(tmp_path)))
    assert "--download" in err.value.hint


MIRRORS_FAILED = RuntimeError(  # what torchvision's MNIST raises when every mirror failed
    "Error downloading train-images-idx3-ubyte.gz:\n"
    "Tried https://ossci-datasets.s3.amazonaws.com/mnist/, got:\n<urlopen error timed out>\n"
    "Tried http://yann.lecun.com/exdb/mnist/, got:\n<urlopen error [Errno -2] unknown name>\n"
)


@pytest.mark.parametrize(
    ("name", "cls", "error"),
    [
        ("mnist", "MNIST", MIRRORS_FAILED),
        ("fashion-mnist", "FashionMNIST", MIRRORS_FAILED),
        ("kmnist", "KMNIST", MIRRORS_FAILED),
        ("cifar10", "CIFAR10", URLError(OSError(-2, "unknown name"))),
    ],
)
def test_torchvision_download_offline_is_one_line(tmp_path, monkeypatch, name, cls, error):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise error

    monkeypatch.setattr(torchvision.datasets, cls, offline)
    expected = rf"^could not download {name} into --data-dir .*dl: <urlopen error \[Errno -2\] "
    with pytest.raises(PtoolError, match=expected + "unknown name>$") as err:
        build_data(cfg(data=name, data_dir=str(tmp_path / "dl"), download=True))
    assert err.value.hint.startswith("offline?")


@pytest.mark.parametrize(("content", "error"), [(b"", "ValueError"), (b"\x07" * 100, "Assertion")])
def test_torchvision_files_that_cannot_be_parsed_are_one_line(tmp_path, content, error):
    """A download cut short: "unexpected AssertionError: " before, with nothing after it."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            (raw / f"{split}-{kind}-ubyte").write_bytes(content)
    with pytest.raises(PtoolError, match=f"^mnist files under --data-dir {tmp_path} cannot be "
                       rf"read \({error}") as err:  # fmt: skip
        build_data(cfg(data="mnist", data_dir=str(tmp_path)))
    assert "--download" in err.value.hint


def write_idx(path, array: np.ndarray) -> None:
    """The MNIST idx format: magic (type 0x08 = ubyte, ndim), sizes, then bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_local_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 6)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    bundle = build_data(cfg(data="mnist", data_dir=str(tmp_path)))
    assert (bundle.info.train_size, bundle.info.val_size) == (12, 6)
    assert bundle.info.mean == [0.1307] and bundle.info.input_shape == [1, 28, 28]
    loader = make_loader(
        bundle.train, cfg(batch_size=5, num_workers=0), torch.arange(12), train=True
    )
    x, y = next(iter(loader))
    assert x.shape == (5, 1, 28, 28) and y.tolist() == [0, 1, 2, 3, 4]
