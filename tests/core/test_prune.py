"""ptool.core.prune against its oracles: torch.nn.utils.prune's own masks on the same weights,
the saved file reloaded by `torch.load(weights_only=True)` + `restore.model_from_checkpoint`,
and a channel-zeroed copy of the float model for compaction."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from ptool.core import checkpoint as ckpt_io
from ptool.core.config import TrainConfig
from ptool.core.errors import PtoolError, UsageError
from ptool.core.prune import PruneOptions, apply_architecture, prune_checkpoint
from ptool.core.prune.masks import schedule
from ptool.core.restore import finetune_config, model_from_checkpoint
from ptool.core.trust import TRUST_CODE_ENV
from tests.core.test_quantize import write_checkpoint

CONVS = ("body.0.conv", "body.1.conv")


@pytest.fixture(scope="module")
def cnn_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cnn") / "best.pt"
    return write_checkpoint(path, epochs=1, model="cnn", channels=[8, 16])


RESIDUAL_NET = """\
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, n)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = self.c2(torch.relu(self.c1(x)))
        return self.head((x + y).mean((2, 3)))

def build(input_shape, num_outputs):
    return Net(num_outputs)
"""


def write_residual_checkpoint(folder: Path) -> Path:
    """runs/res/best.pt of `residual_net:build`, whose residual add ties c2's output channels
    to stem's; the module goes in `folder`, which must be on sys.path (or ptool's cwd)."""
    (folder / "residual_net.py").write_text(RESIDUAL_NET)
    path = folder / "runs" / "res" / "best.pt"
    return write_checkpoint(path, epochs=0, model="residual_net:build")


@pytest.fixture(scope="module")
def residual_ckpt(tmp_path_factory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("residual")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        patch.setenv(TRUST_CODE_ENV, "1")  # the tests' own module
        yield write_residual_checkpoint(folder)


@pytest.fixture(scope="module")
def float_model(cnn_ckpt) -> nn.Module:
    return model_from_checkpoint(ckpt_io.load_checkpoint(cnn_ckpt)).eval()


def _prune(ckpt: Path, tmp_path: Path, **values) -> tuple[dict, dict]:
    values = {"evaluate": False, "bench_runs": 1, "output": str(tmp_path / "out.pt"), **values}
    report = prune_checkpoint(ckpt, PruneOptions(**values))
    return report, torch.load(report["output"], weights_only=True)  # the oracle: a safe load


def _inputs(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("amount", [0.3, 0.55, 7])
def test_l1_unstructured_masks_are_torchs_own(cnn_ckpt, float_model, tmp_path, amount):
    report, saved = _prune(cnn_ckpt, tmp_path, amount=amount, make_permanent=False)
    state = saved["model_state_dict"]
    for name in CONVS:
        oracle = copy.deepcopy(float_model.get_submodule(name))
        prune.l1_unstructured(oracle, "weight", amount=amount)
        mask = state[f"{name}.weight_mask"]
        assert torch.equal(mask, oracle.weight_mask)
        expected = amount if isinstance(amount, int) else round(amount * mask.numel())
        assert int((mask == 0).sum()) == expected  # exact, as PyTorch counts
        row = next(r for r in report["layers"] if r["name"] == name)
        assert row["nonzero_after"] == mask.numel() - expected
    assert "head.weight_mask" not in state  # the classifier is left alone by default
    assert saved["pruning"]["masks"] is True and saved["pruning"]["layers"] == list(CONVS)


def test_make_permanent_saves_plain_weights_with_the_zeros(cnn_ckpt, tmp_path):
    report, saved = _prune(cnn_ckpt, tmp_path, method="random-unstructured", amount=0.4)
    state = saved["model_state_dict"]
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    for name in CONVS:
        weight = state[f"{name}.weight"]
        assert int((weight == 0).sum()) == round(0.4 * weight.numel())
    assert report["gzip_bytes"]["after"] < report["gzip_bytes"]["before"]


def test_global_l1_hits_the_global_amount_with_torchs_masks(cnn_ckpt, float_model, tmp_path):
    report, saved = _prune(cnn_ckpt, tmp_path, method="global-l1", amount=0.6, make_permanent=False)
    oracle = copy.deepcopy(float_model)
    params = [(oracle.get_submodule(n), "weight") for n in CONVS]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.6)
    masks = [saved["model_state_dict"][f"{n}.weight_mask"] for n in CONVS]
    for mask, (module, _) in zip(masks, params, strict=True):
        assert torch.equal(mask, module.weight_mask)
    total = sum(m.numel() for m in masks)
    assert sum(int((m == 0).sum()) for m in masks) == round(0.6 * total)
    assert report["global"]["sparsity"] == pytest.approx(round(0.6 * total) / total)
    per_layer = [r["sparsity"] for r in report["layers"] if r["selected"]]
    assert per_layer[0] != per_layer[1]  # one threshold, not one amount per layer


def test_ln_structured_masks_whole_channels(cnn_ckpt, float_model, tmp_path):
    _, saved = _prune(cnn_ckpt, tmp_path, method="ln-structured", amount=0.25, make_permanent=False)
    for name in CONVS:
        oracle = copy.deepcopy(float_model.get_submodule(name))
        prune.ln_structured(oracle, "weight", amount=0.25, n=2, dim=0)
        mask = saved["model_state_dict"][f"{name}.weight_mask"]
        assert torch.equal(mask, oracle.weight_mask)
        empty = (mask.flatten(1).sum(1) == 0).sum()
        assert int(empty) == round(0.25 * mask.shape[0])


@given(
    size=st.integers(1, 5000),
    fraction=st.floats(0, 0.99),
    steps=st.integers(1, 8),
)
def test_schedule_reaches_the_one_shot_count(size, fraction, steps):
    counts = schedule(fraction, size, steps)
    assert len(counts) == steps and counts[-1] == round(fraction * size)
    assert all(a <= b for a, b in zip([0, *counts], counts, strict=False))


def test_schedule_prunes_the_same_fraction_of_what_remains():
    counts = schedule(0.875, 8000, 3)  # 1 - 0.125 ** (k/3): half of what remains each step
    assert counts == [4000, 6000, 7000]


def test_iterative_steps_end_exactly_on_the_amount(cnn_ckpt, tmp_path):
    report, saved = _prune(cnn_ckpt, tmp_path, amount=0.7, steps=3, make_permanent=False)
    for name in CONVS:
        mask = saved["model_state_dict"][f"{name}.weight_mask"]
        assert int((mask == 0).sum()) == round(0.7 * mask.numel())
    sparsities = [entry["sparsity"] for entry in report["history"]]
    assert sparsities == sorted(sparsities) and len(sparsities) == 3


def _ln_structured_channels(model: nn.Module, fraction: float) -> dict[str, torch.Tensor]:
    """The output channels `prune.ln_structured` empties in each conv (a boolean per channel)."""
    gone = {}
    for name in CONVS:
        probe = copy.deepcopy(model.get_submodule(name))
        prune.ln_structured(probe, "weight", amount=fraction, n=2, dim=0)
        gone[name] = probe.weight_mask.flatten(1).sum(1) == 0
    return gone


def _smallest_bn_scale_channels(model: nn.Module, fraction: float) -> dict[str, torch.Tensor]:
    """Network Slimming's choice: per conv, the channels whose batch-norm |scale| is smallest."""
    gone = {}
    for name in CONVS:
        scale = model.get_submodule(name.replace("conv", "norm")).weight.detach().abs()
        gone[name] = torch.zeros(scale.numel(), dtype=torch.bool)
        gone[name][scale.argsort()[: round(fraction * scale.numel())]] = True
    return gone


def _channel_zeroed(model: nn.Module, gone: dict[str, torch.Tensor]) -> nn.Module:
    """The float model with the `gone` channels' outputs zeroed (conv rows and the batch-norm
    scale and shift), which is what removing the channels computes."""
    zeroed = copy.deepcopy(model)
    for name, channels in gone.items():
        conv = zeroed.get_submodule(name)
        norm = zeroed.get_submodule(name.replace("conv", "norm"))
        with torch.no_grad():
            conv.weight[channels] = 0
            norm.weight[channels] = 0
            norm.bias[channels] = 0
    return zeroed


def test_compaction_shapes_outputs_and_reload(cnn_ckpt, float_model, tmp_path):
    report, saved = _prune(cnn_ckpt, tmp_path, method="ln-structured", amount=0.5, compact=True)
    shapes = {r["name"]: (r["shape_before"], r["shape_after"]) for r in report["layers"]}
    assert shapes["body.0.conv"] == ([8, 1, 3, 3], [4, 1, 3, 3])
    assert shapes["body.1.conv"] == ([16, 8, 3, 3], [8, 4, 3, 3])
    assert shapes["head"] == ([10, 64], [10, 32])  # inputs shrink, the 10 classes stay
    recipe = saved["pruning"]
    assert recipe["compacted"] and recipe["architecture"]["body.0.norm.running_mean"] == [4]
    assert (
        report["parameters"]["after"]["parameters"] < report["parameters"]["before"]["parameters"]
    )

    restored = model_from_checkpoint(saved).eval()
    x = _inputs()
    with torch.no_grad():
        expected = _channel_zeroed(float_model, _ln_structured_channels(float_model, 0.5))(x)
        torch.testing.assert_close(restored(x), expected, atol=1e-5, rtol=1e-5)
        # PyTorch's ln_structured masks only the conv weight: the batch-norm shift of an
        # emptied channel still reaches the next layer, so that model is NOT the compacted one
        masked = copy.deepcopy(float_model)
        for name in CONVS:
            prune.ln_structured(masked.get_submodule(name), "weight", amount=0.5, n=2, dim=0)
        assert not torch.allclose(masked(x), expected, atol=1e-3)


@pytest.mark.parametrize("permanent", [False, True], ids=["keep-masks", "make-permanent"])
def test_compacting_a_masked_checkpoint_removes_its_channels_and_the_new_ones(
    cnn_ckpt, float_model, tmp_path, permanent
):
    """--keep-masks (or the default --make-permanent: its empty channels count as pruned), then
    --compact: the second amount applies to the channels left (torch's iterative ln_structured
    is the oracle), and no emptied channel stays in the model."""
    _, first = _prune(
        cnn_ckpt, tmp_path, method="ln-structured", amount=0.5, make_permanent=permanent
    )
    masked = tmp_path / "masked.pt"
    ckpt_io.atomic_save(first, masked)
    options = dict(method="ln-structured", amount=0.5, compact=True, output=None)
    _, saved = _prune(masked, tmp_path, **options)
    oracle, gone = copy.deepcopy(float_model), {}
    for name in CONVS:
        conv = oracle.get_submodule(name)
        for _ in range(2):
            prune.ln_structured(conv, "weight", amount=0.5, n=2, dim=0)
        gone[name] = conv.weight_mask.flatten(1).sum(1) == 0
    assert [int(g.sum()) for g in gone.values()] == [6, 12]  # of 8 and 16: 4 + 2, 8 + 4
    state = saved["model_state_dict"]
    assert state["body.0.conv.weight"].shape[0] == 2 and state["body.1.conv.weight"].shape[0] == 4
    assert all(state[f"{n}.weight"].flatten(1).abs().sum(1).all() for n in CONVS)
    x = _inputs()
    with torch.no_grad():
        expected = _channel_zeroed(float_model, gone)(x)
        restored = model_from_checkpoint(saved).eval()
        torch.testing.assert_close(restored(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["l1-unstructured", "ln-structured"])
def test_pruning_a_made_permanent_checkpoint_again_stacks_as_torch_does(
    cnn_ckpt, float_model, tmp_path, method
):
    """The input's zeros are its earlier pruning: the new amount applies to the weights left,
    as two torch calls in a row do (it used to rank those zeros first and prune nothing)."""
    _, first = _prune(cnn_ckpt, tmp_path, method=method, amount=0.3)
    permanent = tmp_path / "permanent.pt"
    ckpt_io.atomic_save(first, permanent)
    _, saved = _prune(permanent, tmp_path, method=method, amount=0.3, make_permanent=False)
    for name in CONVS:
        oracle = copy.deepcopy(float_model.get_submodule(name))
        for _ in range(2):
            if method == "l1-unstructured":
                prune.l1_unstructured(oracle, "weight", amount=0.3)
            else:
                prune.ln_structured(oracle, "weight", amount=0.3, n=2, dim=0)
        assert torch.equal(saved["model_state_dict"][f"{name}.weight_mask"], oracle.weight_mask)


def test_a_compaction_that_breaks_a_group_norms_groups_is_refused(tmp_path):
    ckpt = write_checkpoint(
        tmp_path / "gn.pt", epochs=1, model="cnn", channels=[8, 16], norm="group"
    )
    with pytest.raises(UsageError, match="left body.0.norm with 6 channels in 8 groups") as info:
        _prune(ckpt, tmp_path, method="ln-structured", amount=0.3, compact=True)
    assert info.value.hint == (  # body.0 has 8 channels: only its exclusion works
        "choose an amount that keeps a multiple of 8 channels, or leave the layer out: "
        r"--exclude '^body\.0\.conv$'"
    )
    assert not (tmp_path / "out.pt").exists()
    report, _ = _prune(ckpt, tmp_path, method="ln-structured", amount=0.5, compact=True,
                       exclude=r"^body\.0\.conv$")  # fmt: skip
    rows = {row["name"]: row for row in report["layers"] if row["selected"]}
    assert list(rows) == ["body.1.conv"] and rows["body.1.conv"]["shape_after"][0] == 8


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"exclude": "^stem$"}, "c2's output channels are tied to stem's (e.g. by a residual "
         "add), which --exclude leaves out"),
        ({"only": "^c2$"}, "c2's output channels are tied to stem's (e.g. by a residual add), "
         "which --only leaves out"),
        ({"only": "stem"}, "stem's output channels are tied to c2's (e.g. by a residual add), "
         "which --only leaves out"),
    ],
)  # fmt: skip
def test_compact_refuses_a_tie_to_a_layer_the_filter_leaves_out(
    residual_ckpt, tmp_path, values, message
):
    """Compacting c2 would shrink stem too (it used to, shown as not pruned): refused."""
    options = {"method": "ln-structured", "amount": 0.25, "compact": True, **values}
    with pytest.raises(UsageError) as caught:
        _prune(residual_ckpt, tmp_path, **options)
    assert str(caught.value) == f"--compact: {message}"
    tied, left_out = ("stem", "c2") if values.get("only") == "stem" else ("c2", "stem")
    assert caught.value.hint == f"select {left_out} too, or leave out {tied}"
    assert not list(tmp_path.glob("*.pt"))


def test_tied_layers_that_emptied_every_channel_between_them_are_refused_up_front(
    residual_ckpt, tmp_path
):
    """stem emptied half its channels and c2 the other half: their union is every channel,
    which compacted into a model that does not run (exit 1, after the work)."""
    _, first = _prune(
        residual_ckpt, tmp_path, method="ln-structured", amount=0, make_permanent=False
    )
    state = first["model_state_dict"]
    for name, emptied in (("stem", slice(0, 8)), ("c2", slice(8, 16))):
        state[f"{name}.weight_mask"][emptied] = 0
    ckpt_io.atomic_save(first, tmp_path / "masked.pt")
    with pytest.raises(UsageError, match="--compact would remove every channel of stem"):
        _prune(tmp_path / "masked.pt", tmp_path, method="ln-structured", amount=0, compact=True)


def test_compact_refuses_a_tie_to_the_heads_classes(tmp_path, monkeypatch):
    """aux's outputs are added to the head's: compacting aux would remove classes."""
    (tmp_path / "head_tied.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, n):\n"
        "        super().__init__()\n"
        "        self.aux = nn.Linear(64, n)\n"
        "        self.head = nn.Linear(64, n)\n"
        "    def forward(self, x):\n"
        "        return self.head(x.flatten(1)) + self.aux(x.flatten(1))\n"
        "def build(input_shape, num_outputs):\n"
        "    return Net(num_outputs)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    ckpt = write_checkpoint(tmp_path / "best.pt", epochs=0, model="head_tied:build")
    with pytest.raises(UsageError, match="which is the final classifier") as caught:
        _prune(ckpt, tmp_path, method="ln-structured", amount=0.25, compact=True)
    assert caught.value.hint == "leave out aux"  # the head cannot be selected


def test_compact_leaves_layers_out_with_those_tied_to_them(residual_ckpt, tmp_path):
    """Left out together, stem and c2 keep their output channels; c2 loses only the inputs
    that c1, pruned, no longer gives."""
    report, saved = _prune(
        residual_ckpt, tmp_path, method="ln-structured", amount=0.25, compact=True,
        exclude="^(stem|c2)$",
    )  # fmt: skip
    shapes = {r["name"]: r["shape_after"] for r in report["layers"]}
    assert shapes == {
        "stem": [16, 1, 3, 3], "c1": [12, 16, 3, 3], "c2": [16, 12, 3, 3], "head": [10, 16]
    }  # fmt: skip
    assert saved["model_state_dict"]["bn.weight"].shape == (16,)


def _emptied(mask: torch.Tensor) -> torch.Tensor:
    return mask.flatten(1).sum(1) == 0


def test_compacting_tied_masks_removes_every_emptied_channel(residual_ckpt, tmp_path):
    """--keep-masks empties stem's and c2's channels apart; tied by the add, their union is
    what the group has pruned, --amount applies to the channels left (torch's iterative
    ln_structured on stem, the leader, is the oracle), and no emptied channel stays."""
    float_model = model_from_checkpoint(ckpt_io.load_checkpoint(residual_ckpt)).eval()
    options = {"method": "ln-structured", "amount": 0.25}
    _, first = _prune(residual_ckpt, tmp_path, make_permanent=False, **options)
    masked = tmp_path / "masked.pt"
    ckpt_io.atomic_save(first, masked)
    input_masks = {n: first["model_state_dict"][f"{n}.weight_mask"] for n in ("stem", "c1", "c2")}
    report, saved = _prune(masked, tmp_path, compact=True, output=None, **options)

    union = _emptied(input_masks["stem"]) | _emptied(input_masks["c2"])
    assert int(union.sum()) > 4  # the two layers emptied different channels
    stem = copy.deepcopy(float_model.stem)
    prune.custom_from_mask(stem, "weight", (~union).view(-1, 1, 1, 1).expand_as(stem.weight))
    prune.ln_structured(stem, "weight", amount=0.25, n=2, dim=0)
    c1 = copy.deepcopy(float_model.c1)
    for _ in range(2):
        prune.ln_structured(c1, "weight", amount=0.25, n=2, dim=0)
    gone = {"stem": _emptied(stem.weight_mask), "c1": _emptied(c1.weight_mask)}
    left = 16 - int(union.sum())
    assert int(gone["stem"].sum()) == 16 - left + round(0.25 * left)

    state = saved["model_state_dict"]
    assert state["stem.weight"].shape[0] == state["c2.weight"].shape[0] == 16 - gone["stem"].sum()
    for name in ("stem", "c1", "c2"):
        assert state[f"{name}.weight"].flatten(1).abs().sum(1).all(), name  # none left empty
    zeroed = copy.deepcopy(float_model)  # removing a channel computes zeros in it
    with torch.no_grad():
        for names, channels in ((("stem", "bn", "c2"), gone["stem"]), (("c1",), gone["c1"])):
            for name in names:
                zeroed.get_submodule(name).weight[channels] = 0
                zeroed.get_submodule(name).bias[channels] = 0
        x = _inputs()
        torch.testing.assert_close(model_from_checkpoint(saved).eval()(x), zeroed(x))

    rows = {r["name"]: r for r in report["layers"]}
    assert rows["c2"]["channels_follow"] == "stem"
    for name, mask in input_masks.items():  # the figures count what the files hold
        weight = first["model_state_dict"][f"{name}.weight_orig"]
        assert rows[name]["nonzero_before"] == int((weight * mask).count_nonzero())
        assert rows[name]["nonzero_after"] == int(state[f"{name}.weight"].count_nonzero())


def test_compaction_through_a_one_slope_prelu(tmp_path):
    """The cnn's --activation prelu has one shared slope: the head still loses H x W inputs
    per removed channel (Torch-Pruning alone lost the flatten's expansion behind it)."""
    ckpt = write_checkpoint(
        tmp_path / "prelu.pt", epochs=1, model="cnn", channels=[8, 16], activation="prelu"
    )
    float_model = model_from_checkpoint(ckpt_io.load_checkpoint(ckpt)).eval()
    report, saved = _prune(ckpt, tmp_path, method="ln-structured", amount=0.5, compact=True)
    assert report["layers"][-1]["shape_after"] == [10, 32]
    x = _inputs()
    with torch.no_grad():
        expected = _channel_zeroed(float_model, _ln_structured_channels(float_model, 0.5))(x)
        torch.testing.assert_close(model_from_checkpoint(saved).eval()(x), expected)


def test_bn_scale_removes_the_channels_with_the_smallest_batch_norm_scale(
    cnn_ckpt, float_model, tmp_path
):
    gone = _smallest_bn_scale_channels(float_model, 0.5)
    assert any(not torch.equal(gone[n], _ln_structured_channels(float_model, 0.5)[n]) for n in gone)

    _, masked = _prune(cnn_ckpt, tmp_path, method="bn-scale", amount=0.5, make_permanent=False)
    for name in CONVS:
        mask = masked["model_state_dict"][f"{name}.weight_mask"]
        assert torch.equal(mask.flatten(1).sum(1) == 0, gone[name])

    report, saved = _prune(cnn_ckpt, tmp_path, method="bn-scale", amount=0.5, compact=True)
    assert report["layers"][1]["shape_after"] == [8, 4, 3, 3]
    restored = model_from_checkpoint(saved).eval()
    x = _inputs()
    with torch.no_grad():
        expected = _channel_zeroed(float_model, gone)(x)
        torch.testing.assert_close(restored(x), expected, atol=1e-5, rtol=1e-5)


def test_bn_scale_steps_rank_only_the_channels_left(cnn_ckpt, float_model, tmp_path):
    """Two steps of 2 + 2 channels (of 8) end on the same 4 as one step: the ranking is fixed
    by the untouched batch-norm scales, and step 2 ranks only the channels still unpruned."""
    _, once = _prune(cnn_ckpt, tmp_path, method="bn-scale", amount=4, make_permanent=False)
    _, twice = _prune(
        cnn_ckpt, tmp_path, method="bn-scale", amount=4, steps=2, make_permanent=False
    )
    key = "body.0.conv.weight_mask"
    assert torch.equal(once["model_state_dict"][key], twice["model_state_dict"][key])


def test_bn_scale_needs_a_batch_norm_after_each_layer(tmp_path):
    ckpt = write_checkpoint(tmp_path / "best.pt", epochs=0, model="cnn", channels=[8], norm="none")
    with pytest.raises(UsageError, match="body.0.conv has none") as caught:
        _prune(ckpt, tmp_path, method="bn-scale", amount=0.5)
    assert "--method ln-structured" in caught.value.hint


def test_recalibrate_bn_measures_the_pruned_models_statistics(cnn_ckpt, tmp_path):
    """Oracle: with one batch holding the whole training set, the first batch norm's running
    statistics are that set's mean and unbiased variance of its input, measured by hand on
    the compacted model; without the flag the old statistics are only sliced."""
    from ptool.core.data import build_data
    from ptool.core.restore import config_and_info

    ckpt = ckpt_io.load_checkpoint(cnn_ckpt)
    config, _ = config_and_info(ckpt)
    train = build_data(config).train
    whole = {"batch_size": len(train)}
    options = {"method": "ln-structured", "amount": 0.5, "compact": True}
    report, saved = _prune(cnn_ckpt, tmp_path, recalibrate_bn=1, train_overrides=whole, **options)
    _, stale = _prune(cnn_ckpt, tmp_path, output=str(tmp_path / "stale.pt"), **options)
    assert report["recipe"]["recalibrate_bn"] == saved["pruning"]["recalibrate_bn"] == 1

    model = model_from_checkpoint(saved).eval()
    seen = []
    model.get_submodule("body.0.norm").register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        model(train.tensors[0])
    state = saved["model_state_dict"]
    torch.testing.assert_close(state["body.0.norm.running_mean"], seen[0].mean((0, 2, 3)))
    torch.testing.assert_close(state["body.0.norm.running_var"], seen[0].var((0, 2, 3)))
    old = stale["model_state_dict"]
    for name in ("body.0.norm", "body.1.norm"):
        assert not torch.allclose(state[f"{name}.running_var"], old[f"{name}.running_var"])


def test_keep_masks_reload_keeps_the_masks(cnn_ckpt, float_model, tmp_path):
    _, saved = _prune(cnn_ckpt, tmp_path, amount=0.5, make_permanent=False)
    restored = model_from_checkpoint(saved).eval()
    conv = restored.get_submodule("body.1.conv")
    assert prune.is_pruned(restored)
    assert torch.equal(conv.weight_mask, saved["model_state_dict"]["body.1.conv.weight_mask"])
    oracle = copy.deepcopy(float_model)
    for name in CONVS:
        prune.l1_unstructured(oracle.get_submodule(name), "weight", amount=0.5)
    with torch.no_grad():
        torch.testing.assert_close(restored(_inputs()), oracle(_inputs()))


def test_prune_a_pruned_checkpoint_again(cnn_ckpt, tmp_path):
    """Masks stack as PyTorch defines it: the second amount applies to what remains."""
    _, first = _prune(cnn_ckpt, tmp_path, amount=0.5, make_permanent=False)
    again = tmp_path / "again.pt"
    ckpt_io.atomic_save(first, again)
    _, second = _prune(again, tmp_path, amount=0.5, make_permanent=False, output=None)
    mask = second["model_state_dict"]["body.1.conv.weight_mask"]
    remaining = mask.numel() - round(0.5 * mask.numel())
    assert int(mask.sum()) == remaining - round(0.5 * remaining)
    assert second["pruning"]["previous"]["amount"] == 0.5


def test_finetune_keeps_pruned_weights_at_zero(cnn_ckpt, tmp_path):
    report, saved = _prune(
        cnn_ckpt,
        tmp_path,
        amount=0.5,
        steps=2,
        finetune_epochs=1,
        evaluate=True,
        train_overrides={"tensorboard": False, "out": str(tmp_path / "ft"), "seed": 0},
    )
    for name in CONVS:
        weight = saved["model_state_dict"][f"{name}.weight"]
        assert int((weight == 0).sum()) == round(0.5 * weight.numel())
    assert [e["finetune"]["epochs"] for e in report["history"]] == [1, 1]
    assert report["metrics"]["after_finetune"]["val/accuracy"] > 0.5
    assert report["recipe"]["seed"] == 0  # l1 draws nothing, its fine-tuning does
    # the engine's own checkpoints carry the recipe, so they rebuild (and resume) as well
    best = ckpt_io.load_checkpoint(tmp_path / "ft" / "step-2" / "best.pt")
    assert best["pruning"]["masks"] is True
    model_from_checkpoint(best)


def test_the_step_after_finetuning_ranks_the_finetuned_weights(cnn_ckpt, tmp_path):
    """Step 2 prunes the smallest |weight| of what fine-tuning's best epoch left (torch's
    iterative l1), not the masked copy from the last training forward."""
    # the best of 2 epochs by the highest val/loss: epoch 1, not the weights fit() ended with
    overrides = {"tensorboard": False, "out": str(tmp_path / "ft"), "seed": 0, "mode": "max"}
    _, saved = _prune(
        cnn_ckpt, tmp_path, amount=0.6, steps=2, finetune_epochs=2, make_permanent=False,
        train_overrides=overrides,
    )  # fmt: skip
    tuned = torch.load(tmp_path / "ft" / "step-1" / "best.pt", weights_only=True)
    assert tuned["epoch"] == 1
    for name in CONVS:
        mask = tuned["model_state_dict"][f"{name}.weight_mask"]
        weight = tuned["model_state_dict"][f"{name}.weight_orig"] * mask
        more = round(0.6 * mask.numel()) - int((mask == 0).sum())
        left = mask.flatten().nonzero().flatten()
        oracle = mask.flatten().clone()
        oracle[left[weight.flatten()[left].abs().argsort()[:more]]] = 0
        assert torch.equal(saved["model_state_dict"][f"{name}.weight_mask"].flatten(), oracle)


def test_finetuning_runs_on_this_machines_device_not_the_runs(tmp_path):
    """A checkpoint trained on cuda:3 fine-tunes where `prune` runs (auto), or on --device."""
    run = TrainConfig(device="cuda:3", compile=True, ema=0.9)
    source = tmp_path / "run" / "best.pt"
    config = finetune_config(run, source, "prune", {}, epochs=2)
    assert (config.device, config.compile, config.ema, config.epochs) == ("auto", False, None, 2)
    assert finetune_config(run, source, "prune", {"device": "cpu"}, epochs=2).device == "cpu"


def test_finetuning_drops_the_runs_warmup_unless_given(tmp_path):
    """A 30-epoch run's 5 warmup epochs would outlast a 3-epoch fine-tune (refused)."""
    from ptool.core.checks import check_config, check_new_run_options
    from ptool.core.quantize.run import qat_config

    run = TrainConfig(epochs=30, warmup_epochs=5, warmup_start_factor=0.5, scheduler="cosine",
                      schedule_epochs=20, init_from="a.pt", strict=False)  # fmt: skip
    source = tmp_path / "run" / "best.pt"
    tuned = finetune_config(run, source, "prune", {}, epochs=3)
    for config in (tuned, qat_config(run, {}, source)):
        assert config.warmup_epochs == 0
        check_config(config)
        # its config.yaml trains again as a new run: nothing kept that shapes what went
        # (a cosine over the run's 20 epochs took the 3-epoch fine-tune's lr to 0 at its end)
        check_new_run_options(config)
        assert config.schedule_epochs is None
    given = finetune_config(run, source, "prune", {"warmup_epochs": 1}, epochs=3)
    assert given.warmup_epochs == 1


def test_finetuning_a_run_that_monitored_its_ema_monitors_the_model(cnn_ckpt, tmp_path):
    """Fine-tuning drops --ema, so the run's `val_ema/loss` becomes `val/loss`."""
    ckpt = ckpt_io.load_checkpoint(cnn_ckpt)
    ckpt["config"] = {**ckpt["config"], "ema": 0.9, "monitor": "val_ema/accuracy"}
    torch.save(ckpt, tmp_path / "ema.pt")
    report, _ = _prune(
        tmp_path / "ema.pt", tmp_path, amount=0.3, finetune_epochs=1,
        train_overrides={"tensorboard": False, "out": str(tmp_path / "ft")},
    )  # fmt: skip
    assert report["history"][0]["finetune"]["monitor"] == "val/accuracy"


def test_prune_and_quantize_say_they_take_the_models_weights_not_the_ema(cnn_ckpt, tmp_path):
    """An --ema run's average was left out without a word."""
    from ptool.core.quantize import QuantizeOptions, quantize_checkpoint

    ckpt = ckpt_io.load_checkpoint(cnn_ckpt)
    ckpt["ema_state_dict"] = {k: v + 1 for k, v in ckpt["model_state_dict"].items()}
    torch.save(ckpt, tmp_path / "ema.pt")
    lines: list[str] = []
    options = PruneOptions(amount=0.0, evaluate=False, bench_runs=1, output=str(tmp_path / "p"))
    report = prune_checkpoint(tmp_path / "ema.pt", options, log=lines.append)
    pruned = torch.load(report["output"], weights_only=True)
    assert "ema_state_dict" not in pruned
    weight = "body.0.conv.weight"
    assert torch.equal(pruned["model_state_dict"][weight], ckpt["model_state_dict"][weight])
    options = QuantizeOptions(
        mode="dynamic", evaluate=False, bench_runs=1, output=str(tmp_path / "q")
    )
    quantize_checkpoint(tmp_path / "ema.pt", options, log=lines.append)
    note = "note: the checkpoint also holds EMA weights (train --ema); {} takes the model's own"
    assert [line for line in lines if line.startswith("note:")] == [
        note.format(command) + " (model_state_dict), and its output keeps no EMA"
        for command in ("prune", "quantize")
    ]


def test_compacted_finetune_run_rebuilds(cnn_ckpt, tmp_path):
    report, _ = _prune(
        cnn_ckpt,
        tmp_path,
        method="random-structured",
        amount=0.5,
        compact=True,
        finetune_epochs=1,
        train_overrides={"tensorboard": False, "out": str(tmp_path / "ft")},
    )
    run_best = ckpt_io.load_checkpoint(tmp_path / "ft" / "best.pt")
    assert run_best["pruning"]["compacted"]
    assert (
        run_best["pruning"]["sparsity"] == report["recipe"]["sparsity"] > 0.5
    )  # what inspect shows
    assert run_best["model_state_dict"]["body.0.conv.weight"].shape[0] == 4
    model_from_checkpoint(run_best)
    assert report["recipe"]["seed"] is not None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"amount": 1.0}, "a fraction must be in [0, 1)"),
        ({"amount": -1}, "cannot be negative"),
        ({"amount": 73}, "larger than layer body.0.conv (72 unpruned weights)"),
        ({"amount": 4000, "method": "global-l1"}, "larger than the selected layers together"),
        ({"amount": 9, "method": "ln-structured"}, "larger than layer body.0.conv (8 channels"),
        ({"only": "nothing"}, "the layer filter selects no layer"),
        ({"modules": ["linear"]}, "the layer filter selects no layer"),
        ({"modules": ["lstm"]}, "valid kinds: conv, linear"),
        ({"compact": True}, "--compact removes whole channels"),
        ({"compact": True, "method": "ln-structured", "dim": 1}, "not --dim 1"),
        ({"method": "ln-structured", "include_head": True}, "would remove output classes"),
        ({"method": "ln-structured", "dim": 4}, "--dim 4 does not exist"),
        (  # not read as the head's dim 0 (2 % 2): the conv layers have a dim 2
            {"method": "ln-structured", "dim": 2, "include_head": True},
            "--dim 2 does not exist in head.weight",
        ),
        (
            {"method": "ln-structured", "dim": -2, "include_head": True},
            "along --dim -2 would remove output classes of head",
        ),
        ({"method": "bn-scale", "dim": 1}, "ranks output channels (--dim 0), not --dim 1"),
        (
            {"method": "ln-structured", "compact": True, "amount": 8},
            "--amount 8 would remove all 8 channels of body.0.conv",
        ),
        ({"output": "."}, "-o . names a directory"),
        ({"train_overrides": {"lr": 0.1}}, "--lr sets fine-tuning"),
        ({"train_overrides": {"seed": 5}}, "l1-unstructured without those draws nothing"),
        ({"recalibrate_bn": -1}, "--recalibrate-bn must be at least 0"),
        ({"method": "l2"}, "valid: l1-unstructured"),
        ({"train_overrides": {"batch_size": 0}}, "--batch-size must be at least 1"),
        ({"method": "ln-structured", "n": float("nan")}, "--n nan is no norm order"),
    ],
)
def test_bad_input_is_refused_in_one_line(cnn_ckpt, tmp_path, values, message):
    with pytest.raises(UsageError) as caught:
        _prune(cnn_ckpt, tmp_path, **values)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not list(tmp_path.glob("*.pt"))  # refused before anything was written


def test_a_finetune_out_holding_another_run_is_refused_before_pruning(cnn_ckpt, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "last.pt").write_bytes(cnn_ckpt.read_bytes())
    for steps, where in ((1, taken), (2, taken / "step-2")):
        where.mkdir(exist_ok=True)
        (where / "last.pt").write_bytes(cnn_ckpt.read_bytes())
        overrides = {"out": str(taken)}  # step K of several fine-tunes in taken/step-K
        with pytest.raises(UsageError, match=f"--out {where} holds another run's"):
            _prune(cnn_ckpt, tmp_path, steps=steps, finetune_epochs=1, train_overrides=overrides)
    assert not list(tmp_path.glob("*.pt"))


def test_a_filter_that_excludes_the_included_head_too_hints_only_the_filter(cnn_ckpt, tmp_path):
    with pytest.raises(UsageError) as caught:
        _prune(cnn_ckpt, tmp_path, exclude=".*", include_head=True)
    assert caught.value.hint == "loosen --only/--exclude"


def test_bn_scale_with_the_head_names_only_what_works(cnn_ckpt, tmp_path):
    with pytest.raises(UsageError) as caught:
        _prune(cnn_ckpt, tmp_path, method="bn-scale", include_head=True)
    assert caught.value.hint == "drop --include-head"


@pytest.mark.parametrize(
    ("values", "hint"),
    [
        ({"method": "ln-structured", "compact": True}, "drop --compact"),
        ({"method": "bn-scale"}, "use --method ln-structured"),
    ],
)
def test_untraceable_model_is_refused_for_compact_and_bn_scale(tmp_path, monkeypatch, values, hint):
    module = tmp_path / "numpy_net.py"
    module.write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, n):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(1, 8, 3)\n"
        "        self.head = nn.Linear(8, n)\n"
        "    def forward(self, x):\n"
        "        y = self.conv(x).mean((2, 3)).detach().numpy()\n"
        "        return self.head(torch.from_numpy(y))\n"
        "def build(input_shape, num_outputs):\n"
        "    return Net(num_outputs)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    ckpt = write_checkpoint(tmp_path / "best.pt", epochs=0, model="numpy_net:build")
    with pytest.raises(PtoolError, match="Torch-Pruning cannot trace this model") as caught:
        _prune(ckpt, tmp_path, amount=0.5, **values)
    assert hint in caught.value.hint


def test_apply_architecture_refuses_unknown_layer_kinds():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    with pytest.raises(PtoolError, match=r"cannot resize 0 \(Embedding\)"):
        apply_architecture(model, {"0.weight": [10, 3], "1.weight": [2, 3], "1.bias": [2]})
    resized = apply_architecture(
        nn.Sequential(nn.Linear(4, 3)), {"0.weight": [2, 4], "0.bias": [2]}
    )
    assert (resized[0].in_features, resized[0].out_features) == (4, 2)


@pytest.mark.parametrize(
    ("architecture", "message"),
    [
        ({"0.weight": [3, 10**8]}, r"gives 0.weight the shape \[3, 100000000\]: a compacted"),
        ({"0.weight": [-3, 4]}, r"gives 0.weight the shape \[-3, 4\]"),
        ({"0.weight": [3.5, 4]}, r"gives 0.weight the shape \[3.5, 4\]"),
        ({"0.weight": [3]}, r"gives 0.weight the shape \[3\]"),
        ({"0.weight": "os.system"}, r"gives 0.weight the shape 'os.system'"),
        ([["0.weight", [3, 4]]], "the saved architecture is a list, not tensor names"),
    ],
)
def test_apply_architecture_refuses_shapes_no_compaction_makes(architecture, message):
    """A 280 KB file whose architecture said [10, 10**8] for the head allocated 4.5 GB before
    its weights' size mismatch; negative, fractional or text sizes were 'unexpected ...
    report it'. Compaction only removes channels: each size is at most the built model's."""
    with pytest.raises(PtoolError, match=message) as caught:
        apply_architecture(nn.Sequential(nn.Linear(4, 3)), architecture)
    assert caught.value.exit_code == 1


def test_a_pruned_output_cannot_be_resumed_and_the_hint_fine_tunes_it(cnn_ckpt, tmp_path):
    from ptool.core.errors import PtoolError
    from ptool.core.resume import plan_resume

    report, _ = _prune(cnn_ckpt, tmp_path, method="ln-structured", amount=0.5, compact=True)
    with pytest.raises(PtoolError, match="cannot be resumed") as caught:
        plan_resume(report["output"], {})
    assert caught.value.hint == (
        f"fine-tune it with: ptool prune {report['output']} --amount 0 --finetune-epochs 3"
    )
    overrides = {"out": str(tmp_path / "again"), "tensorboard": False}
    _, saved = _prune(
        Path(report["output"]),
        tmp_path,
        amount=0,
        finetune_epochs=1,
        train_overrides=overrides,
        output=str(tmp_path / "again.pt"),
    )  # the hint's command, with 1 epoch
    assert saved["model_state_dict"]["body.0.conv.weight"].shape[0] == 4


def test_an_interrupted_finetune_says_what_its_resume_gives(cnn_ckpt, tmp_path, monkeypatch):
    """Ctrl-C during the fine-tune's first epoch (the real engine stops after it)."""
    import signal

    from ptool.core import engine
    from ptool.core.signals import Interrupted

    end_epoch = engine.Trainer.end_epoch

    def ctrl_c_then_end_epoch(trainer):
        trainer.stop.signum = signal.SIGINT
        return end_epoch(trainer)

    monkeypatch.setattr(engine.Trainer, "end_epoch", ctrl_c_then_end_epoch)
    out = tmp_path / "ft"
    with pytest.raises(Interrupted) as info:
        _prune(cnn_ckpt, tmp_path, finetune_epochs=2, train_overrides={"out": str(out)})
    assert info.value.hint == (
        f"resume with: ptool resume {out}; its best.pt is then the pruned, fine-tuned model "
        "(this prune's report and output file are not written)"
    )
    assert info.value.exit_code == 130 and not (tmp_path / "out.pt").exists()


def test_the_metrics_before_pruning_are_evals_under_the_runs_precision(tmp_path):
    """A --precision bf16 run's figures were fp32 ones: neither the run's val/accuracy nor
    `ptool eval`'s. The oracle: eval of the same checkpoint."""
    from ptool.core.evaluate import evaluate_checkpoints

    ckpt = write_checkpoint(tmp_path / "best.pt", epochs=1, model="cnn", channels=[4, 8],
                            precision="bf16")  # fmt: skip
    report, _ = _prune(ckpt, tmp_path, amount=0.0, evaluate=True)
    (evaluated,) = evaluate_checkpoints([ckpt], device="cpu")  # prune evaluates on the CPU
    before = report["metrics"]["before"]
    assert before["val/loss"] == pytest.approx(evaluated["metrics"]["loss"], rel=1e-6)
