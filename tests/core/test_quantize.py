"""ptool.core.quantize against its oracles: the float model's own accuracy, the saved file
reloaded by `torch.load(weights_only=True)` + `restore.model_from_checkpoint`, TorchScript."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from ptool.core import checkpoint as ckpt_io
from ptool.core.config import TrainConfig
from ptool.core.errors import PtoolError, UsageError
from ptool.core.quantize import QuantizeOptions, ao, quantize_checkpoint
from ptool.core.restore import model_from_checkpoint
from ptool.core.trust import TRUST_CODE_ENV


def write_checkpoint(path: Path, epochs: int = 2, **values) -> Path:
    """A small float checkpoint in ptool's format, trained for a few epochs on its data."""
    from ptool.core.data import build_data, make_loader
    from ptool.core.models import build_model
    from ptool.core.optim import build_loss

    config = TrainConfig(seed=0, **values)
    torch.manual_seed(0)
    data = build_data(config)
    model = build_model(config, data.info)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    loss_fn = build_loss(config, data.info)
    cpu = torch.device("cpu")
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(data.train))
        for x, y in make_loader(data.train, config, order, train=True, device=cpu):
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    payload = {
        "format": ckpt_io.FORMAT,
        "format_version": ckpt_io.FORMAT_VERSION,
        "model_state_dict": model.state_dict(),
        "config": config.to_dict(),
        "data_info": data.info.to_dict(),
        "meta": ckpt_io.meta(),
    }
    return ckpt_io.atomic_save(payload, path)


@pytest.fixture(scope="module")
def cnn_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cnn") / "best.pt"
    return write_checkpoint(path, model="cnn", channels=[8, 16])


@pytest.fixture(scope="module")
def mlp_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mlp") / "best.pt"
    return write_checkpoint(path, epochs=1, model="mlp", hidden=[128, 64])


def _fast(mode: str, **values) -> QuantizeOptions:
    return QuantizeOptions(mode=mode, bench_runs=2, **values)


def _reloaded(output: str) -> torch.nn.Module:
    ckpt = torch.load(output, weights_only=True)  # the oracle: a plain safe load
    return model_from_checkpoint(ckpt).eval()


def _inputs(ckpt_path: Path) -> torch.Tensor:
    shape = ckpt_io.load_checkpoint(ckpt_path)["data_info"]["input_shape"]
    return torch.randn(8, *shape, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def static_report(cnn_ckpt, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "cnn.int8.pt"
    options = _fast("static", output=str(output), torchscript=True, calib_batches=4)
    return quantize_checkpoint(cnn_ckpt, options)


def test_static_keeps_the_float_models_accuracy(static_report):
    fp32 = static_report["fp32"]["metrics"]["val/accuracy"]
    int8 = static_report["quantized"]["metrics"]["val/accuracy"]
    assert fp32 > 0.8  # the fixture learned something, so the comparison means something
    assert int8 >= fp32 - 0.02
    assert static_report["metrics_change"]["val/accuracy"] == pytest.approx(int8 - fp32)


def test_static_fuses_conv_bn_relu_and_quantizes_every_conv_and_linear(static_report):
    assert static_report["fused_modules"] == [
        ["body.0.conv", "body.0.norm", "body.0.act"],
        ["body.1.conv", "body.1.norm", "body.1.act"],
    ]
    assert static_report["quantized_layers"] == ["body.0.conv", "body.1.conv", "head"]
    assert static_report["ratios"]["param_bytes"] > 3.5


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_static_output_reloads_with_identical_outputs(static_report, cnn_ckpt):
    saved = torch.load(static_report["output"], weights_only=True)
    assert saved["quantization"]["mode"] == "static"
    assert saved["quantization"]["backend"] == ao.resolve_backend("auto")
    assert saved["config"] == ckpt_io.load_checkpoint(cnn_ckpt)["config"]
    x = _inputs(cnn_ckpt)
    first = _reloaded(static_report["output"])
    second = _reloaded(static_report["output"])
    with ao.quiet():
        assert torch.equal(first(x), second(x))
    extra = {ckpt_io.TORCHSCRIPT_TAG: ""}
    scripted = torch.jit.load(static_report["torchscript"], _extra_files=extra)
    with ao.quiet():
        assert torch.equal(scripted(x), first(x))
    assert json.loads(extra[ckpt_io.TORCHSCRIPT_TAG])["mode"] == "static"  # its recipe


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:FutureWarning")
def test_torchscript_replaces_its_own_archive_but_never_a_users_file(mlp_ckpt, tmp_path):
    output = tmp_path / "deploy.pt"
    script = tmp_path / "deploy.torchscript.pt"
    options = _fast("dynamic", evaluate=False, torchscript=True, output=str(output))
    for users in (b"my own exported model", _scripted_bytes(tmp_path)):
        script.write_bytes(users)
        with pytest.raises(UsageError, match=r"--torchscript \(.*\) would replace"):
            quantize_checkpoint(mlp_ckpt, options)
        assert script.read_bytes() == users and not output.exists()
    script.unlink()
    first = quantize_checkpoint(mlp_ckpt, options)["torchscript"]
    assert quantize_checkpoint(mlp_ckpt, options)["torchscript"] == first  # a rerun
    # a later quantize without --torchscript replaces the output, not the archive: said
    lines: list[str] = []
    options = _fast("dynamic", evaluate=False, output=str(output))
    assert quantize_checkpoint(mlp_ckpt, options, log=lines.append)["torchscript"] is None
    assert lines == [
        f"note: {script} is an earlier model's, not this one's (--torchscript writes it anew)"
    ]
    script.write_bytes(_scripted_bytes(tmp_path))  # not ptool's: not called a model of it
    lines.clear()
    quantize_checkpoint(mlp_ckpt, options, log=lines.append)
    assert lines == []


@pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:FutureWarning")
def test_a_torchscript_archive_is_written_atomically(mlp_ckpt, tmp_path, monkeypatch):
    """It was saved to `.NAME.tmp` then renamed, unsynced: a full disk escaped as a raw
    error and left the temporary file, which no later run removed."""
    from ptool.core import rundir

    script = tmp_path / "deploy.torchscript.pt"

    def full_disk(path, mode="r", *args, **kwargs):
        full = "torchscript" in Path(path).name
        return open("/dev/full" if full else path, mode, *args, **kwargs)

    monkeypatch.setattr(rundir, "open", full_disk, raising=False)  # atomic_write's
    options = _fast("dynamic", evaluate=False, torchscript=True, output=str(tmp_path / "deploy.pt"))
    with pytest.raises(PtoolError, match=f"could not write checkpoint {script}: no space left"):
        quantize_checkpoint(mlp_ckpt, options)
    assert [p.name for p in tmp_path.iterdir()] == ["deploy.pt"]


def _scripted_bytes(folder: Path) -> bytes:
    """A TorchScript archive ptool did not write."""
    path = folder / "theirs.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path.read_bytes()


def test_a_backend_this_cpu_lacks_is_one_line_when_loading(static_report):
    saved = torch.load(static_report["output"], weights_only=True)
    saved["quantization"]["backend"] = "onednn-future"  # written by another machine's torch
    with pytest.raises(PtoolError, match="laid out for the 'onednn-future' backend, which"):
        model_from_checkpoint(saved)


def _int8_layers(path) -> dict[str, dict]:
    """The layers inspect-checkpoint lists as quantized (weights of an int8 dtype)."""
    from ptool.core.inspect.report import InspectOptions, inspect

    layers = inspect(path, InspectOptions())["quantization"]["layers"]
    return {layer["name"]: layer for layer in layers if layer.get("weight_dtype") == "qint8"}


def test_static_int8_layers_carry_per_channel_scales_and_output_qparams(static_report):
    layers = _int8_layers(static_report["output"])
    assert set(layers) == {"body.0.conv", "body.1.conv", "head"}
    conv = layers["body.0.conv"]
    assert conv["qscheme"] == "per_channel_affine"  # symmetric: stored as affine, zero point 0
    assert conv["zero_point_range"] == [0, 0] and conv["axis"] == 0  # per output channel
    assert conv["output_scale"] > 0 and isinstance(conv["output_zero_point"], int)


def test_dynamic_quantizes_linear_layers_and_reloads(mlp_ckpt, tmp_path):
    report = quantize_checkpoint(mlp_ckpt, _fast("dynamic", output=str(tmp_path / "d.pt")))
    assert report["quantized_layers"] == ["body.1.linear", "body.2.linear", "head"]
    assert report["fp32"]["metrics"]["val/accuracy"] > 0.8
    assert report["metrics_change"]["val/accuracy"] >= -0.02
    model = model_from_checkpoint(ckpt_io.load_checkpoint(report["output"]))
    assert set(_int8_layers(report["output"])) == set(report["quantized_layers"])
    x = _inputs(mlp_ckpt)
    with ao.quiet():
        float_model = model_from_checkpoint(ckpt_io.load_checkpoint(mlp_ckpt))
        direct = ao.quantize_dynamic(float_model, report["recipe"])
        assert torch.equal(model(x), direct(x))


def test_dynamic_float16_and_no_eval(mlp_ckpt, tmp_path):
    options = _fast("dynamic", dtype="float16", evaluate=False)
    report = quantize_checkpoint(mlp_ckpt, options)
    assert report["output"].endswith("best.fp16.pt")
    assert report["fp32"]["metrics"] is None and report["metrics_change"] is None
    # fp16 weights live packed in memory; torch's state dict unpacks them to float32
    assert report["recipe"]["dtype"] == "float16"
    x = _inputs(mlp_ckpt)
    float_model = model_from_checkpoint(ckpt_io.load_checkpoint(mlp_ckpt)).eval()
    with torch.no_grad(), ao.quiet():
        assert torch.allclose(_reloaded(report["output"])(x), float_model(x), atol=1e-2)


def test_default_output_is_next_to_the_input(mlp_ckpt):
    report = quantize_checkpoint(mlp_ckpt, _fast("dynamic", evaluate=False))
    assert Path(report["output"]) == mlp_ckpt.with_name("best.int8.pt")


def test_refuses_an_already_quantized_checkpoint(static_report):
    with pytest.raises(UsageError, match="already quantized"):
        quantize_checkpoint(static_report["output"], _fast("static"))


def test_outputs_never_replace_the_input_or_land_on_a_directory(mlp_ckpt, tmp_path):
    """The --torchscript file is derived from -o: it must not be the input either."""
    source = tmp_path / "model.torchscript.pt"
    source.write_bytes(mlp_ckpt.read_bytes())
    before = source.read_bytes()
    options = _fast("dynamic", evaluate=False, torchscript=True, output=str(tmp_path / "model.pt"))
    with pytest.raises(UsageError, match=r"--torchscript \(.*\) would overwrite the input"):
        quantize_checkpoint(source, options)
    assert source.read_bytes() == before
    with pytest.raises(UsageError, match="names a directory"):
        quantize_checkpoint(mlp_ckpt, _fast("dynamic", evaluate=False, output=str(tmp_path)))
    inside_a_file = mlp_ckpt / "sub" / "q.pt"  # "unexpected FileExistsError", once quantized
    with pytest.raises(UsageError) as refused:
        quantize_checkpoint(mlp_ckpt, _fast("dynamic", evaluate=False, output=str(inside_a_file)))
    assert str(refused.value) == f"-o {inside_a_file}: {mlp_ckpt} is a file, not a folder"


def test_output_replaces_a_derived_file_but_never_a_training_checkpoint(mlp_ckpt, tmp_path):
    """A rerun replaces its own output; a run's last.pt or another tool's file is refused."""
    last = tmp_path / "last.pt"
    last.write_bytes(mlp_ckpt.read_bytes())
    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, foreign)
    for target in (last, foreign):
        before = target.read_bytes()
        options = _fast("dynamic", evaluate=False, output=str(target))
        with pytest.raises(UsageError, match="which is not a pruned or quantized checkpoint"):
            quantize_checkpoint(mlp_ckpt, options)
        assert target.read_bytes() == before
    options = _fast("dynamic", evaluate=False, output=str(tmp_path / "q.pt"))
    first = quantize_checkpoint(mlp_ckpt, options)
    assert quantize_checkpoint(mlp_ckpt, options)["output"] == first["output"]


def test_refuses_cuda_before_loading_anything(tmp_path):
    with pytest.raises(UsageError, match="CPU only"):
        quantize_checkpoint(tmp_path / "missing.pt", _fast("static", device="cuda"))


def test_refuses_a_backend_this_cpu_lacks(cnn_ckpt, monkeypatch):
    monkeypatch.setattr(ao, "supported_backends", lambda: ["qnnpack"])
    with pytest.raises(UsageError, match="--backend x86 is not supported on this CPU"):
        quantize_checkpoint(cnn_ckpt, _fast("static", backend="x86"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(mode="dynamic", modules=["conv"]), "--modules conv"),
        (dict(mode="qat", observer="histogram"), "--observer histogram does not work with qat"),
        (dict(mode="static", calib_batches=0), "--calib-batches must be at least 1"),
        (dict(mode="qat", freeze_observers_epoch=0), "--freeze-observers-epoch must be at least 1"),
        (dict(mode="qat", freeze_bn_epoch=-1), "--freeze-bn-epoch must be at least 0"),
    ],
)
def test_refuses_bad_options(options, message, tmp_path):
    with pytest.raises(UsageError, match=message):
        quantize_checkpoint(tmp_path / "x.pt", QuantizeOptions(**options))


USER_MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Matmul(nn.Module):
        def __init__(self, n, k):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(n, k))
        def forward(self, x):
            return x.flatten(1) @ self.weight

    class Gate(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    def no_layers(input_shape, num_outputs):
        return Matmul(64, num_outputs)

    def untraceable(input_shape, num_outputs):
        return nn.Sequential(nn.Flatten(), Gate(), nn.Linear(64, num_outputs))
    """
)


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "qusermodels.py").write_text(USER_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(TRUST_CODE_ENV, "1")  # the tests' own module
    return tmp_path


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_refuses_a_model_without_quantizable_layers(user_models, mode):
    path = write_checkpoint(user_models / "m.pt", epochs=0, model="qusermodels:no_layers")
    with pytest.raises(UsageError, match="no quantizable layers"):
        quantize_checkpoint(path, _fast(mode))


def test_names_the_layer_that_stops_tracing(user_models):
    path = write_checkpoint(user_models / "g.pt", epochs=0, model="qusermodels:untraceable")
    with pytest.raises(UsageError, match=r"layer 1 \(Gate\) cannot be traced by torch.fx"):
        quantize_checkpoint(path, _fast("static"))
    report = quantize_checkpoint(path, _fast("dynamic", evaluate=False))  # needs no tracing
    assert report["quantized_layers"] == ["2"]


def test_missing_torch_ao_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ao(name, *args, **kwargs):
        if name.startswith("torch.ao.quantization"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    ao._ao.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_ao)
    try:
        with pytest.raises(PtoolError, match="has no torch.ao.quantization"):
            ao.prepare(torch.nn.Linear(2, 2), {"backend": "x86"})
    finally:
        monkeypatch.undo()
        ao._ao.cache_clear()


def _qat(ckpt: Path, tmp_path: Path, name: str, epochs: int, resume: str | None = None):
    """A QAT run into tmp_path/name; only the uninterrupted one is evaluated (speed)."""
    overrides = {"epochs": epochs, "tensorboard": False, "out": str(tmp_path / name)}
    options = _fast(
        "qat",
        freeze_observers_epoch=1,
        freeze_bn_epoch=1,
        train_overrides=overrides,
        resume=resume,
        output=str(tmp_path / f"{name}.int8.pt"),
        evaluate=name == "whole",
    )
    if resume:
        options.output = None  # the run remembers its -o
    return quantize_checkpoint(None if resume else ckpt, options)


def test_qat_fine_tunes_through_the_engine_and_resumes_exactly(cnn_ckpt, tmp_path, monkeypatch):
    whole = _qat(cnn_ckpt, tmp_path, "whole", epochs=2)
    assert whole["qat"]["epochs"] == 2 and whole["qat"]["status"] == "completed"
    assert whole["metrics_change"]["val/accuracy"] >= -0.02
    assert whole["fused_modules"][0] == ["body.0.conv", "body.0.norm", "body.0.act"]
    run_ckpt = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert run_ckpt["quantization"]["converted"] is False
    assert "activation_post_process_0.scale" in run_ckpt["model_state_dict"]  # fake-quant state

    import signal

    from ptool.core.quantize.run import FreezeSchedule
    from ptool.core.signals import Interrupted

    def ctrl_c_after_epoch_1(self, trainer, metrics):
        trainer.stop.signum = signal.SIGINT if trainer.state.epoch == 1 else None

    monkeypatch.setattr(FreezeSchedule, "on_epoch_end", ctrl_c_after_epoch_1)
    with pytest.raises(Interrupted) as info:
        _qat(cnn_ckpt, tmp_path, "part", epochs=2)
    monkeypatch.undo()
    hint = f"resume with: ptool quantize qat --resume {tmp_path / 'part'}"
    assert info.value.hint == hint  # not `ptool resume`, which refuses a QAT run
    from ptool.core.rundir import refuse_other_run

    with pytest.raises(UsageError) as taken:  # a new run's --out naming that folder
        refuse_other_run(tmp_path / "part")
    assert f"ptool quantize qat --resume {tmp_path / 'part'}" in taken.value.hint
    resumed = _qat(cnn_ckpt, tmp_path, "part", epochs=2, resume=str(tmp_path / "part"))
    assert resumed["checkpoint"] == str(cnn_ckpt)  # found through the run's recipe
    assert resumed["output"] == str(tmp_path / "part.int8.pt")  # not next to cnn_ckpt
    a = torch.load(whole["output"], weights_only=True)["model_state_dict"]
    b = torch.load(resumed["output"], weights_only=True)["model_state_dict"]
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key


def test_qat_drops_the_runs_ema_compile_precision_and_grad_checkpoint(tmp_path):
    """The flags QAT refuses are not inherited from the run either (an EMA of the float model
    failed on the fake-quant model's new buffers; torch.fx could not trace --grad-checkpoint's
    segments); its `val_ema/` monitor becomes `val/`."""
    run = {"ema": 0.9, "monitor": "val_ema/accuracy", "precision": "bf16", "compile": True}
    run["grad_checkpoint"] = 2
    ckpt = write_checkpoint(
        tmp_path / "ema" / "best.pt", epochs=1, channels=[4], channels_last=True, **run
    )
    report = _qat(ckpt, tmp_path, "qat", epochs=1)
    assert report["qat"]["status"] == "completed"
    config = torch.load(tmp_path / "qat" / "last.pt", weights_only=True)["config"]
    dropped = ("ema", "compile", "precision", "channels_last", "grad_checkpoint")
    assert [config[name] for name in dropped] == [None, False, "fp32", False, 0]
    assert config["monitor"] == "val/accuracy"


def test_qat_of_a_pruned_checkpoint_rebuilds_and_claims_only_what_it_keeps(cnn_ckpt, tmp_path):
    """A compacted model's QAT run checkpoints carry its shapes; a masked one's zeros regrow
    in QAT, so the output does not claim them."""
    from ptool.core.prune import PruneOptions, prune_checkpoint

    def pruned(name: str, **values) -> Path:
        options = PruneOptions(amount=0.5, evaluate=False, bench_runs=1, **values)
        options.output = str(tmp_path / f"{name}.pt")
        return Path(prune_checkpoint(cnn_ckpt, options)["output"])

    compact = pruned("compact", method="ln-structured", compact=True)
    _qat(compact, tmp_path, "part", epochs=1)
    run_ckpt = ckpt_io.load_checkpoint(tmp_path / "part" / "last.pt")
    assert run_ckpt["pruning"]["compacted"]
    with torch.no_grad():  # rebuilt at the compacted size, fake-quantized
        assert model_from_checkpoint(run_ckpt)(torch.randn(2, 1, 8, 8)).shape == (2, 10)

    lines: list[str] = []
    masked = pruned("masked", make_permanent=False)
    overrides = {"epochs": 1, "tensorboard": False, "out": str(tmp_path / "masked_qat")}
    options = _fast("qat", train_overrides=overrides, evaluate=False)
    options.output = str(tmp_path / "masked.int8.pt")
    quantize_checkpoint(masked, options, log=lines.append)
    assert any("zeros of l1-unstructured pruning grow back" in line for line in lines)
    assert "pruning" not in torch.load(options.output, weights_only=True)


def test_a_moved_qat_run_resumes_from_anywhere(cnn_ckpt, tmp_path, monkeypatch):
    """The run finds its float checkpoint from its own directory; another CKPT is refused."""
    import shutil

    (tmp_path / "old").mkdir()
    shutil.copy(cnn_ckpt, tmp_path / "old" / "best.pt")
    monkeypatch.chdir(tmp_path / "old")
    _qat(Path("best.pt"), tmp_path / "old", "qat/run", epochs=1)  # source recorded as "best.pt"
    shutil.move(tmp_path / "old", tmp_path / "new")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "new" / "qat" / "run"
    overrides = {"epochs": 2, "tensorboard": False}
    options = _fast("qat", resume=str(run), train_overrides=overrides, evaluate=False)
    report = quantize_checkpoint(None, options)  # a run directory, moved since
    assert Path(report["checkpoint"]).resolve() == (tmp_path / "new" / "best.pt").resolve()
    # no -o: written where the first command's -o said, found from the moved run directory
    assert Path(report["output"]).resolve() == (tmp_path / "new" / "qat" / "run.int8.pt").resolve()
    assert ckpt_io.load_checkpoint(run / "last.pt")["epoch"] == 2  # continued where it is now
    assert not (tmp_path / "old").exists()
    options = _fast("qat", resume=str(run), evaluate=False)
    with pytest.raises(UsageError, match="continues the QAT of .*, not of"):
        quantize_checkpoint(cnn_ckpt, options)


def test_qat_train_flags_are_checked_before_any_data_is_loaded(cnn_ckpt, tmp_path):
    """The run's data is gone (a CSV that was moved): a bad --lr is still what is reported."""
    ckpt = ckpt_io.load_checkpoint(cnn_ckpt)
    ckpt["config"] = {**ckpt["config"], "data": f"csv:{tmp_path / 'moved.csv'}"}
    torch.save(ckpt, tmp_path / "moved.pt")
    options = QuantizeOptions(mode="qat", train_overrides={"lr": -1.0}, output=str(tmp_path / "q"))
    with pytest.raises(UsageError, match="--lr must be finite and positive"):
        quantize_checkpoint(tmp_path / "moved.pt", options)


def test_resume_needs_a_qat_run_checkpoint(cnn_ckpt):
    with pytest.raises(UsageError, match="is not a checkpoint of a `ptool quantize qat` run"):
        quantize_checkpoint(None, _fast("qat", resume=str(cnn_ckpt)))


def test_static_quantizes_shufflenet_on_small_inputs(tmp_path):
    """shufflenet's final mean over a 1x1 map (32 px inputs) trips torch's int8 `mean`;
    ao.convert rewrites it to the keepdim form, which must give the float model's answers."""
    ckpt = write_checkpoint(
        tmp_path / "best.pt",
        model="torchvision:shufflenet_v2_x0_5",
        data="synthetic",
        shape="3x32x32",
        samples=512,
        num_classes=4,
    )
    report = quantize_checkpoint(ckpt, _fast("static", calib_batches=4))
    assert report["metrics_change"]["val/accuracy"] >= -0.05
    x = _inputs(ckpt)
    assert _reloaded(report["output"])(x).shape == (8, 4)


def test_a_qat_runs_ranges_are_set_by_training_data_only(cnn_ckpt, tmp_path):
    """FakeQuantize observes in eval mode too: validation (in the run, and `ptool eval` of its
    checkpoint) must not move the int8 ranges, so eval reproduces the logged metrics."""
    from ptool.core.evaluate import evaluate_checkpoints

    overrides = {"epochs": 1, "tensorboard": False, "out": str(tmp_path / "run")}
    options = _fast("qat", train_overrides=overrides, evaluate=False)
    quantize_checkpoint(cnn_ckpt, options)
    run_ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for _ in range(2):
        (report,) = evaluate_checkpoints([tmp_path / "run" / "last.pt"], device="cpu")
        assert report["metrics"]["loss"] == pytest.approx(run_ckpt["metrics"]["val/loss"], rel=1e-6)


def test_the_report_lists_the_layers_left_in_float_and_no_dropout_as_int8(tmp_path):
    """GroupNorm and GELU run on dequantized values between the int8 convs: the report said
    nothing of them, and listed the mlp's Dropout among the quantized layers."""
    ckpt = write_checkpoint(
        tmp_path / "gn.pt", model="cnn", channels=[8, 16], norm="group", activation="gelu"
    )
    report = quantize_checkpoint(ckpt, _fast("static", calib_batches=2, evaluate=False))
    assert report["kept_float"] == ["body.0.norm", "body.0.act", "body.1.norm", "body.1.act"]
    assert report["quantized_layers"] == ["body.0.conv", "body.1.conv", "head"]
    mlp = write_checkpoint(tmp_path / "mlp.pt", model="mlp", hidden=[16], dropout=0.1)
    report = quantize_checkpoint(mlp, _fast("static", calib_batches=2, evaluate=False))
    assert report["quantized_layers"] == ["body.1.linear", "head"]
    assert report["kept_float"] == []


@pytest.mark.parametrize("mode", ["static", "qat"])
def test_prelu_stays_float_and_the_written_file_evaluates_as_reported(mode, tmp_path):
    """torch's int8 PReLU keeps its slope and output qparams outside the state dict (a reload
    drew them at random: 7% accuracy) and its lowering ignores a None qconfig; ptool keeps
    the layer in float, so `ptool eval` of the file reproduces the report's metrics."""
    from ptool.core.evaluate import evaluate_checkpoints

    ckpt = write_checkpoint(tmp_path / "best.pt", model="cnn", channels=[8, 16], activation="prelu")
    overrides = {"epochs": 1, "tensorboard": False, "out": str(tmp_path / "run")}
    extra = {"train_overrides": overrides} if mode == "qat" else {"calib_batches": 4}
    report = quantize_checkpoint(ckpt, _fast(mode, output=str(tmp_path / "q.pt"), **extra))
    assert report["kept_float"] == ["body.0.act", "body.1.act"]
    assert report["quantized_layers"] == ["body.0.conv", "body.1.conv", "head"]
    assert report["metrics_change"]["val/accuracy"] >= -0.03
    (evaluated,) = evaluate_checkpoints([tmp_path / "q.pt"], device="cpu")
    quantized = report["quantized"]["metrics"]
    assert evaluated["metrics"]["accuracy"] == pytest.approx(quantized["val/accuracy"])
    assert evaluated["metrics"]["loss"] == pytest.approx(quantized["val/loss"], rel=1e-5)


def test_calib_data_is_read_as_eval_reads_held_out_data(tmp_path):
    """--calib-data takes the run's normalization and matches columns by name: read with its
    own statistics, inputs 10x larger calibrated like the run's, and reordered columns (the
    label first) were taken by position or refused."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 3, generator=gen)
    labels = ["cat" if v > 0 else "dog" for v in x[:, 0] + x[:, 1]]
    rows = [[f"{v:.4f}" for v in row] + [k] for row, k in zip(x.tolist(), labels, strict=True)]

    def write(name: str, header: str, lines) -> str:
        (tmp_path / name).write_text("\n".join([header, *(",".join(line) for line in lines)]))
        return f"csv:{tmp_path / name}"

    train = write("train.csv", "a,b,c,label", rows)
    ckpt = write_checkpoint(tmp_path / "best.pt", epochs=1, model="mlp", hidden=[16], data=train)
    held = rows[:40]
    same = write("same.csv", "a,b,c,label", held)
    moved = write("moved.csv", "label,c,a,b", ([k, c, a, b] for a, b, c, k in held))
    larger = write(
        "larger.csv", "a,b,c,label", ([*(f"{10 * float(v)}" for v in r[:3]), r[3]] for r in held)
    )

    def input_scale(spec: str) -> float:
        output = tmp_path / f"{spec.rsplit('/', 1)[1]}.int8.pt"
        options = _fast("static", output=str(output), calib_data=spec, evaluate=False)
        quantize_checkpoint(ckpt, options)
        state = torch.load(output, weights_only=True)["model_state_dict"]
        return float(next(v for k, v in state.items() if k.endswith("scale_0")))

    assert input_scale(moved) == input_scale(same)
    assert input_scale(larger) > 5 * input_scale(same)
    # nor is the run's own data read (gone, as often when --calib-data is given)
    (tmp_path / "train.csv").unlink()
    assert input_scale(same) > 0
