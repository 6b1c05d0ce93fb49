"""Models: shapes from the data, registries, init schemes, and gradient checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ptool.core.config import TrainConfig
from ptool.core.data import DataInfo
from ptool.core.errors import PtoolError, UsageError
from ptool.core.models import MODELS, build_model


def info(shape, outputs=10, task="classification") -> DataInfo:
    return DataInfo(task, list(shape), outputs, outputs, None, None, None, None, 10, 2)


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        ("mlp", [1, 8, 8]),
        ("mlp", [20]),
        ("cnn", [1, 8, 8]),
        ("cnn", [3, 32, 32]),
        ("cnn", [3, 5, 7]),
    ],
)
def test_output_shape_follows_the_data(model, shape):
    net = build_model(TrainConfig(model=model), info(shape, outputs=7))
    assert net(torch.randn(4, *shape)).shape == (4, 7)
    assert isinstance(net.head, nn.Linear) and net.head.out_features == 7


def test_cnn_structure_is_fusable_and_named():
    net = build_model(TrainConfig(), info([1, 8, 8]))
    names = dict(net.named_modules())
    assert isinstance(names["body.0.conv"], nn.Conv2d)
    assert isinstance(names["body.0.norm"], nn.BatchNorm2d)
    assert isinstance(names["body.0.act"], nn.ReLU)
    group = build_model(TrainConfig(norm="group", channels=[16]), info([3, 8, 8]))
    assert isinstance(dict(group.named_modules())["body.0.norm"], nn.GroupNorm)


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
@pytest.mark.parametrize("activation", ["tanh", "prelu", "swish"])
def test_mlp_options(norm, activation):
    config = TrainConfig(model="mlp", hidden=[16, 8], norm=norm, activation=activation, dropout=0.1)
    net = build_model(config, info([6], outputs=2))
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [16, 8, 2]
    assert any(isinstance(m, nn.Dropout) for m in net.modules())


def test_unknown_names_list_valid_ones():
    assert set(MODELS) == {"mlp", "cnn"}
    with pytest.raises(UsageError, match="valid: mlp, cnn, torchvision:NAME"):
        build_model(TrainConfig(model="resnet"), info([1, 8, 8]))
    with pytest.raises(UsageError, match="valid: .*resnet18"):
        build_model(TrainConfig(model="torchvision:resnet1"), info([3, 32, 32]))
    with pytest.raises(UsageError, match="cnn needs image inputs"):
        build_model(TrainConfig(model="cnn"), info([12]))
    with pytest.raises(UsageError, match="not available for mlp"):
        build_model(TrainConfig(model="mlp", norm="group"), info([12]))


def test_torchvision_model_adapts_first_conv_to_channels():
    net = build_model(TrainConfig(model="torchvision:resnet18"), info([1, 16, 16], outputs=4))
    assert net.conv1.in_channels == 1 and net.fc.out_features == 4
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 4)


def test_torchvision_models_with_auxiliary_heads_give_plain_logits_in_training():
    """googlenet's train-mode output is a namedtuple with aux logits, which no loss takes."""
    net = build_model(TrainConfig(model="torchvision:googlenet"), info([3, 32, 32], outputs=4))
    net.train()
    out = net(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)


def test_user_factory(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def build(input_shape, num_outputs):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(),\n"
        "        torch.nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_outputs))\n"
        "def wrong(input_shape, num_outputs):\n"
        "    return torch.nn.Linear(3, num_outputs)\n"
        "def not_a_model(input_shape, num_outputs):\n"
        "    return 42\n"
        "class Vit(torch.nn.Module):\n"  # torchvision's ViT asserts its image size
        "    def forward(self, x):\n"
        "        assert x.shape[-1] == 224, 'Wrong image height!'\n"
        "def vit(input_shape, num_outputs):\n"
        "    return Vit()\n"
        "def boom(input_shape, num_outputs):\n"
        "    raise RuntimeError('factory failed')\n"
        "def typo(input_shape, num_outputs):\n"  # a TypeError inside: not a signature to fix
        "    return torch.nn.Linear('a', num_outputs)\n"
        "def positional(shape, n):\n"
        "    return build(shape, n)\n"
        "class Lookup(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return {}['b']\n"
        "def lookup(input_shape, num_outputs):\n"
        "    return Lookup()\n"
    )
    (tmp_path / "broken.py").write_text("raise KeyError('half-written')\n")
    monkeypatch.chdir(tmp_path)
    net = build_model(TrainConfig(model="my_models:build"), info([1, 4, 4], outputs=3))
    assert net(torch.randn(2, 1, 4, 4)).shape == (2, 3)
    for name in ("wrong", "vit"):
        with pytest.raises(UsageError, match="cannot take inputs of shape"):
            build_model(TrainConfig(model=f"my_models:{name}"), info([1, 4, 4]))
    with pytest.raises(UsageError, match="returned int"):
        build_model(TrainConfig(model="my_models:not_a_model"), info([1, 4, 4]))
    for spec, message in (
        ("my_models:boom", "my_models:boom raised RuntimeError: factory failed"),
        ("my_models:typo", "my_models:typo raised TypeError: "),
        ("my_models:lookup", "my_models:lookup forward raised KeyError: 'b'"),
        ("broken:build", "importing broken raised KeyError: 'half-written'"),
    ):
        with pytest.raises(PtoolError, match=message) as caught:
            build_model(TrainConfig(model=spec), info([1, 4, 4]))
        assert not isinstance(caught.value, UsageError) and "not in ptool" in caught.value.hint
    with pytest.raises(UsageError, match="cannot be called so: missing a required argument"):
        build_model(TrainConfig(model="my_models:positional"), info([1, 4, 4]))
    with pytest.raises(UsageError, match="cannot import model module 'nope'"):
        build_model(TrainConfig(model="nope:build"), info([1, 4, 4]))
    with pytest.raises(UsageError, match="--grad-checkpoint"):
        build_model(TrainConfig(model="my_models:build", grad_checkpoint=2), info([1, 4, 4]))


def weights(net):
    return [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def test_kaiming_normal_has_the_he_std_and_zero_bias():
    torch.manual_seed(0)
    net = build_model(
        TrainConfig(model="mlp", hidden=[512], norm="none", init="kaiming-normal"), info([400])
    )
    first = weights(net)[0]
    assert first.weight.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.05)
    assert torch.count_nonzero(first.bias) == 0


def test_orthogonal_rows_are_orthonormal_times_gain():
    net = build_model(
        TrainConfig(model="mlp", hidden=[32], norm="none", init="orthogonal", activation="tanh"),
        info([64]),
    )
    w = weights(net)[0].weight
    gain = nn.init.calculate_gain("tanh")
    assert torch.allclose(w @ w.T, gain**2 * torch.eye(32), atol=1e-4)


def saved_tensor_count(net, x) -> int:
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x).sum().backward()
    return count


@pytest.mark.parametrize(
    ("config", "shape"),
    [
        (TrainConfig(model="mlp", hidden=[32, 32, 32, 32], dropout=0.2), [10]),
        (TrainConfig(model="cnn", channels=[8, 8, 8]), [3, 16, 16]),
    ],
)
def test_grad_checkpoint_gives_same_outputs_grads_and_running_stats(config, shape):
    torch.manual_seed(0)
    plain = build_model(config, info(shape))
    checkpointed = build_model(config.replace(grad_checkpoint=2), info(shape))
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(8, *shape)
    outs = []
    for net in (plain, checkpointed):
        torch.manual_seed(1)  # same dropout masks
        out = net(x)
        out.square().mean().backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    for a, b in zip(plain.buffers(), checkpointed.buffers(), strict=True):
        assert torch.equal(a, b)  # BatchNorm statistics updated once, not twice
    torch.manual_seed(1)
    assert saved_tensor_count(checkpointed, x) < saved_tensor_count(plain, x)


def test_grad_checkpoint_under_torch_compile_gives_the_eager_grads():
    """`--compile --grad-checkpoint 2` stopped in dynamo ("checkpoint not implemented for ...
    context_fn"); the checkpointed body now runs eagerly inside the compiled model."""
    config = TrainConfig(model="mlp", hidden=[8, 8], norm="batch", grad_checkpoint=2)
    torch.manual_seed(0)
    eager = build_model(config, info([6]))
    compiled_net = build_model(config, info([6]))
    compiled_net.load_state_dict(eager.state_dict())
    x = torch.randn(4, 6)
    eager(x).square().mean().backward()
    torch.compile(compiled_net)(x).square().mean().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled_net.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    for a, b in zip(eager.buffers(), compiled_net.buffers(), strict=True):
        assert torch.equal(a, b)


def test_grad_checkpoint_cuts_k_segments_as_checkpoint_sequential_does(monkeypatch):
    """5 blocks in 4 segments: torch's checkpoint_sequential (the oracle) checkpoints [1, 1, 1]
    and runs the last 2 plainly; ptool did ceil(5 / 4) = 2 blocks each (3 segments). More
    segments than blocks is refused for a new run."""
    import torch.utils.checkpoint as torch_checkpoint

    from ptool.core import models
    from ptool.core.models import check_grad_checkpoint

    config = TrainConfig(model="mlp", hidden=[8, 8, 8, 8], grad_checkpoint=4)
    net = build_model(config, info([6]))
    assert len(net.body) == 5  # Flatten and 4 hidden blocks
    ran, segments = [], []
    for block in net.body:
        block.register_forward_hook(lambda *_: ran.append(1))

    def spy(function, x, **kwargs):  # how many blocks each checkpointed segment runs
        before = len(ran)
        out = function(x)
        segments.append(len(ran) - before)
        return out

    monkeypatch.setattr(models, "checkpoint", spy)
    monkeypatch.setattr(torch_checkpoint, "checkpoint", spy)
    x = torch.randn(2, 6)
    net(x)
    ours, segments[:] = list(segments), []
    torch_checkpoint.checkpoint_sequential(net.body, 4, x, use_reentrant=False)
    assert ours == segments == [1, 1, 1]
    check_grad_checkpoint(net, config)
    with pytest.raises(UsageError, match="--grad-checkpoint 6: the mlp body has 5 blocks"):
        check_grad_checkpoint(net, config.replace(grad_checkpoint=6))
