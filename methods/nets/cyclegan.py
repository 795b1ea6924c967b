"""CycleGAN's networks (junyanz/pytorch-CycleGAN-and-pix2pix ``models/networks.py``): the ResNet generator
(``ResnetGenerator`` as ``define_G`` builds it for ``resnet_9blocks``, ``norm='instance'``, ``--no_dropout``) and the
PatchGAN discriminator (``NLayerDiscriminator``, ``define_D`` with ``basic`` / ``n_layers``, ``norm='instance'``).

Layout of ``model`` (keys ``model.<index>...``): reflection pad 3, 7x7 conv, two stride-2 3x3 convs, ``n_blocks``
residual blocks (``conv_block``: pad 1, 3x3 conv, IN, ReLU, pad 1, 3x3 conv, IN; ``x + conv_block(x)`` with no
activation after the sum), two 3x3 transposed convs (stride 2, padding 1, output padding 1), reflection pad 3, 7x7
conv, tanh. Every norm is ``InstanceNorm2d(affine=False, track_running_stats=False)`` (eps 1e-5, biased variance per
sample and channel; no state-dict entries), so every conv before one has a bias. Fully convolutional: any H, W.

Discriminator layout (keys ``model.<index>``): 4x4 conv stride 2 (``ndf``), LeakyReLU 0.2; ``n_layers - 1`` times
a 4x4 stride-2 conv (channels doubling, at most ``8 * ndf``), IN, LeakyReLU; one 4x4 stride-1 conv, IN, LeakyReLU;
a 4x4 stride-1 conv to one channel (every conv padding 1, with a bias): a map of per-patch real/fake scores (70x70
patches for ``n_layers=3``). Training initialises every conv weight N(0, 0.02) and bias 0 (``init_type='normal'``).

Files: ``<epoch>_net_G[_A|_B].pth`` / ``<epoch>_net_D_A|_B.pth``, bare state dicts (``latest_net_G.pth`` for released
generators). The official loader drops InstanceNorm ``running_mean`` / ``running_var`` / ``num_batches_tracked``
entries that pre-0.4 PyTorch files carry; :func:`generator_state_dict` does the same. Images in [-1, 1]
(``ToTensor`` then mean/std 0.5).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from harness.method import Checkpoint
from harness.parity import Fixture
from harness.weights import filled_state_dict, load_state_dict_into, safe_load

CHECKPOINT = Checkpoint(
    key="cyclegan_generator",
    filename="latest_net_G.pth",
    source="a generator trained with junyanz/pytorch-CycleGAN-and-pix2pix (saved as latest_net_G_A.pth / "
           "latest_net_G_B.pth by training; released generators are named latest_net_G.pth)",
    purpose="CycleGAN ResNet generator (resnet_9blocks, instance norm, no dropout); a bare state_dict",
)
CHECKPOINTS = [CHECKPOINT]

IN_EPS = 1e-5
INIT_GAIN = 0.02  # init_type 'normal': N(0, 0.02) conv weights, zero biases
STALE_NORM_KEY = re.compile(r"\.(running_mean|running_var|num_batches_tracked)$")


@dataclass(frozen=True)
class GeneratorConfig:
    """``ResnetGenerator`` constructor facts (the released layout by default)."""

    input_nc: int = 3
    output_nc: int = 3
    ngf: int = 64
    n_blocks: int = 9

    @classmethod
    def from_constructor(cls, values: Mapping[str, Any]) -> GeneratorConfig:
        if values.get("use_dropout") or values.get("norm", "instance") != "instance" or \
                values.get("padding_type", "reflect") != "reflect":
            raise ValueError("only the instance-norm, reflection-padded generator without dropout is implemented")
        return cls(values.get("input_nc", 3), values.get("output_nc", 3), values.get("ngf", 64),
                   values.get("n_blocks", 9))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> GeneratorConfig:
        """The configuration a saved generator was built with, read from its tensor shapes (released files carry
        no options): ``model.1`` is the 7x7 input conv [ngf, input_nc, 7, 7], the last conv gives ``output_nc``,
        residual blocks are the ``model.K.conv_block`` indices."""
        try:
            first = state["model.1.weight"]
        except KeyError:
            raise ValueError("not a ResnetGenerator state dict (no model.1.weight)") from None
        blocks = {k.split(".")[1] for k in state if ".conv_block." in k}
        last = max(int(k.split(".")[1]) for k in state if k.startswith("model.") and k.endswith(".weight"))
        return cls(int(first.shape[1]), int(state[f"model.{last}.weight"].shape[0]), int(first.shape[0]),
                   len(blocks))


@dataclass(frozen=True)
class DiscriminatorConfig:
    """``NLayerDiscriminator`` constructor facts (``define_D`` defaults: ndf 64, 3 layers)."""

    input_nc: int = 3
    ndf: int = 64
    n_layers: int = 3


def instance_norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, eps=IN_EPS, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), instance_norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), instance_norm(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Image [B,input_nc,H,W] in [-1, 1] -> image [B,output_nc,H,W] in (-1, 1)."""

    def __init__(self, config: GeneratorConfig | None = None):
        super().__init__()
        self.config = c = config or GeneratorConfig()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(c.input_nc, c.ngf, 7), instance_norm(c.ngf),
                                   nn.ReLU(True)]
        for i in range(2):
            width = c.ngf * 2 ** i
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), instance_norm(2 * width), nn.ReLU(True)]
        layers += [ResnetBlock(4 * c.ngf) for _ in range(c.n_blocks)]
        for i in range(2):
            width = c.ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1),
                       instance_norm(width // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c.ngf, c.output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: image [B,input_nc,H,W] -> per-patch scores [B,1,H',W'] (LSGAN: regressed to 1 real / 0 fake)."""

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = c = config or DiscriminatorConfig()
        layers: list[nn.Module] = [nn.Conv2d(c.input_nc, c.ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = c.ndf
        for n in range(1, c.n_layers + 1):
            out = c.ndf * min(2 ** n, 8)
            stride = 2 if n < c.n_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride=stride, padding=1), instance_norm(out), nn.LeakyReLU(0.2, True)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    @staticmethod
    def config_from_state_dict(state: Mapping[str, Any]) -> DiscriminatorConfig:
        first = state["model.0.weight"]
        convs = [k for k in state if k.startswith("model.") and k.endswith(".weight")]
        return DiscriminatorConfig(int(first.shape[1]), int(first.shape[0]), len(convs) - 2)


def init_normal(module: nn.Module, gain: float = INIT_GAIN) -> nn.Module:
    """The official training initialisation: conv (and transposed conv) weights N(0, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


# ---------------------------------------------------------------- fill rule and loading

def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """The ``cyclegan_resnet`` fixture's fill: weights (transposed ones too) ``1/sqrt(prod(shape[1:]))``, biases
    0.01."""
    if key.endswith(".bias"):
        return {"kind": "normal", "mean": 0.0, "std": 0.01}
    return {"kind": "normal", "mean": 0.0, "std": 1.0 / float(np.sqrt(np.prod(shape[1:])))}


def generator_state_dict(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A saved generator's entries without the InstanceNorm statistics old files carry (the official clean-up)."""
    return {k: v for k, v in obj.items() if not STALE_NORM_KEY.search(k)}


def generator_from_file(path: str | Path, device: str | torch.device = "cpu") -> ResnetGenerator:
    """A generator from a saved file in the official layout (any ngf / n_blocks, read from the shapes); eval, no
    grad. Old files' InstanceNorm statistics are dropped as the official loader does."""
    state = generator_state_dict(safe_load(path))
    generator = ResnetGenerator(GeneratorConfig.from_state_dict(state))
    load_state_dict_into(generator, state, str(path))
    return generator.to(device).eval().requires_grad_(False)


def load_generator(weights, device: str | torch.device = "cpu", config: GeneratorConfig | None = None,
                   checkpoint: Checkpoint = CHECKPOINT) -> ResnetGenerator:
    """The generator from ``checkpoint`` (strict after the clean-up), or filled by the parity rule; eval, no grad."""
    generator = ResnetGenerator(config)
    weights.load_network(generator, checkpoint, extract=generator_state_dict, recipe=fill_recipe)
    return generator.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------- parity

def parity_adapter(fixture: Fixture) -> Callable[[dict], dict[str, np.ndarray]]:
    """``cyclegan_resnet``: the ``full`` configuration from the fixture's state dict, the ``small`` one filled under
    ``<namespace>.small``; ``y = G(x)`` per case."""
    spec = fixture.spec
    full = ResnetGenerator(GeneratorConfig.from_constructor(spec["constructor"]))
    load_state_dict_into(full, fixture.torch_state_dict(), f"fixture {fixture.name}")
    small = ResnetGenerator(GeneratorConfig.from_constructor(spec["constructor_small"]))
    load_state_dict_into(small, filled_state_dict(small, spec["namespace_small"], fill_recipe), "small fill")
    generators = {"full": full.eval(), "small": small.eval()}

    def run(case: dict) -> dict[str, np.ndarray]:
        (arg,) = case["inputs"]
        x = torch.from_numpy(np.array(fixture.input(case, arg))).float()
        named = re.search(r"\*\*constructor_(\w+)", case.get("call", ""))  # without a "config" entry
        config = case.get("config") or (named.group(1) if named else "full")
        with torch.no_grad():
            y = generators[config](x).numpy()
        return {name: y for name in case["outputs"]}

    return run


PARITY = {"cyclegan_resnet": parity_adapter}
