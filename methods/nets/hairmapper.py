"""HairMapper's hair-removal latent mapper (oneThousand1000/HairMapper ``mapper/networks/level_mapper.py`` with
``single_mapper.py``, class ``LevelMapper``) and the latent edit of the official inference script ``main_mapper.py``.

Layout (state-dict keys as in the official file, no prefix): ``structure_mapping.w_avg`` [512] (a buffer; loaded
but never read or updated), then ``structure_mapping.fc0`` ... ``fc7``, each a stylegan2-ada ``FullyConnectedLayer``
(512 -> 512, ``weight`` [512, 512], ``bias`` [512], ``activation='lrelu'``, ``lr_multiplier=0.01``).

Formula: only W+ rows 0-7 of ``w`` [B,18,512] are read; each layer computes
``y = leaky_relu(x @ (weight * 0.01 / sqrt(512)).T + bias * 0.01, 0.2) * sqrt(2)`` (the runtime scaling of the
equalised learning rate; no clamp), with the activation after EVERY layer, the last one included. No PixelNorm, no
input normalisation, no residual: the output [B,8,512] is the offset for rows 0-7.

Edit (:func:`w_edit`): ``w_edit = w`` with rows 0-7 ``+= alpha * mapper(w)``, rows 8-17 unchanged, where the
inference coefficient is ``ckpt['alpha'] * 1.2`` (:func:`inference_alpha`; 0.48 for the training default 0.4).
The script's style mixing (rows 7-17 ``= edited * 0.2 + edited * 0.8``) mixes the edited code with itself (it aliases
the unedited array), so the latent handed to the generator equals ``w_edit`` up to rounding (:func:`render_latent`).

Checkpoint: ``mapper/checkpoints/final/best_model.pt`` = ``{'state_dict': LevelMapper.state_dict(), 'alpha': float}``
(written by ``train_mapper.py``; tensors saved from ``cuda:0``, read here on the CPU by :func:`harness.weights.
safe_load`). Not a public download: the repository's README asks for a Google form.

Batch: the official forward does ``squeeze(0)`` ... ``unsqueeze(0)``, so it only runs with batch 1 (the scripts
process one latent at a time). This module takes any batch and gives, per sample, the official batch-1 result.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.method import Checkpoint
from harness.parity import Fixture
from harness.weights import load_state_dict_into

CHECKPOINT = Checkpoint(
    key="hairmapper_final",  # the key methods/hairflash/checkpoints.py declares for the same file
    filename="best_model.pt",
    source="https://github.com/oneThousand1000/HairMapper (README: models are form-gated, requested through the "
           "Google form https://forms.gle/a5pRbE3yxEr7sZDm7; no direct download link)",
    purpose="HairMapper 'Final HairMapper' hair-removal latent mapper (LevelMapper, edits e4e W+ rows 0-7); "
            "{'state_dict': ..., 'alpha': float}",
    official_path="mapper/checkpoints/final/best_model.pt",
)
GENERATOR_CHECKPOINT = Checkpoint(
    key="hairmapper_stylegan2_ada",
    filename="StyleGAN2-ada-Generator.pth",
    source="https://drive.google.com/file/d/1EsGehuEdY4z4t21o2LgW2dSsyN3rxYLJ (HairMapper README, ./ckpts)",
    purpose="HairMapper's StyleGAN2-ADA FFHQ 1024 generator (the latent space its mapper edits): a bare NVlabs "
            "stylegan2-ada Generator state dict (mapping.fc*, synthesis.b*), loaded onto the shared StyleGAN2",
    official_path="ckpts/StyleGAN2-ada-Generator.pth",
    download=("gdrive:1EsGehuEdY4z4t21o2LgW2dSsyN3rxYLJ",),
)
CHECKPOINTS = [CHECKPOINT, GENERATOR_CHECKPOINT]

WIDTH = 512
NUM_LAYERS = 8
EDITED_ROWS = 8  # W+ rows 0-7 are read and edited
LR_MULTIPLIER = 0.01
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
DEFAULT_ALPHA = 0.4  # train_mapper.py --alpha default (the value filled networks use)
INFERENCE_FACTOR = 1.2  # main_mapper.py: alpha_inf = ckpt['alpha'] * 1.2
STYLE_RANGE = (7, 18)  # main_mapper.py easy_style_mixing(style_range=range(7, 18), mix_ratio=0.8)
MIX_RATIO = 0.8
LAYER_OUTPUT = re.compile(r"^fc(\d+)_out$")


class MappingLayer(nn.Module):
    """stylegan2-ada ``FullyConnectedLayer`` with ``activation='lrelu'``: stored weights are scaled at run time."""

    def __init__(self, in_features: int, out_features: int, lr_multiplier: float = LR_MULTIPLIER):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [..., in] -> ``leaky_relu(x W'^T + b', 0.2) * sqrt(2)`` [..., out]."""
        y = x.matmul((self.weight * self.weight_gain).t()) + self.bias * self.bias_gain
        return F.leaky_relu(y, LRELU_SLOPE) * LRELU_GAIN


class SingleMappingNetwork(nn.Module):
    """``structure_mapping``: ``fc0`` ... ``fc<n-1>`` applied row-wise, plus the unused ``w_avg`` buffer."""

    def __init__(self, width: int = WIDTH, num_layers: int = NUM_LAYERS, lr_multiplier: float = LR_MULTIPLIER):
        super().__init__()
        self.num_layers = num_layers
        for i in range(num_layers):
            self.add_module(f"fc{i}", MappingLayer(width, width, lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(width))  # in the file, never used by the mapper

    def layer_outputs(self, x: Tensor) -> list[Tensor]:
        """The activation after every layer (the last one is the network output)."""
        outputs = []
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
            outputs.append(x)
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        return self.layer_outputs(x)[-1]


class LevelMapper(nn.Module):
    """HairMapper's ``LevelMapper`` (same state-dict keys): W+ [B,18,512] -> offsets for rows 0-7 [B,8,512]."""

    def __init__(self, width: int = WIDTH, num_layers: int = NUM_LAYERS, rows: int = EDITED_ROWS,
                 lr_multiplier: float = LR_MULTIPLIER):
        super().__init__()
        self.rows = rows
        self.structure_mapping = SingleMappingNetwork(width, num_layers, lr_multiplier)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], rows: int = EDITED_ROWS) -> LevelMapper:
        """The mapper a state dict was saved from (width and layer count read from the shapes)."""
        try:
            width = int(state["structure_mapping.fc0.weight"].shape[1])
        except KeyError:
            raise ValueError("not a LevelMapper state dict (no structure_mapping.fc0.weight)") from None
        layers = sum(1 for k in state if re.fullmatch(r"structure_mapping\.fc\d+\.weight", k))
        return cls(width, layers, rows)

    def layer_outputs(self, w: Tensor) -> list[Tensor]:
        """Every layer's activation on rows 0-7 of ``w`` (each [B,8,512])."""
        return self.structure_mapping.layer_outputs(w[:, :self.rows])

    def forward(self, w: Tensor) -> Tensor:
        return self.structure_mapping(w[:, :self.rows])


# ---------------------------------------------------------------- the edit

def inference_alpha(ckpt_alpha: float) -> float:
    """The coefficient ``main_mapper.py`` applies: ``float(ckpt['alpha']) * 1.2``."""
    return float(ckpt_alpha) * INFERENCE_FACTOR


def w_edit(w: Tensor, mapper_out: Tensor, alpha: float) -> Tensor:
    """A new W+ code: rows ``0..rows-1`` of ``w`` plus ``alpha * mapper_out`` ([B,rows,512]); the other rows copied.
    ``alpha`` is the inference coefficient (:func:`inference_alpha`); ``w`` is left unchanged."""
    rows = mapper_out.shape[1]
    return torch.cat([w[:, :rows] + alpha * mapper_out, w[:, rows:]], dim=1)


def render_latent(edited: Tensor, style_range: Sequence[int] = STYLE_RANGE, mix_ratio: float = MIX_RATIO) -> Tensor:
    """The W+ code the official script renders: its style mixing applied as it really runs, with the edited code
    as both operands (``edited * (1 - r) + edited * r`` on ``style_range``): ``edited`` up to rounding. Not the
    intended mix with the unedited code."""
    start, stop = style_range
    part = edited[:, start:stop]
    return torch.cat([edited[:, :start], part * (1 - mix_ratio) + part * mix_ratio, edited[:, stop:]], dim=1)


# ---------------------------------------------------------------- fill rule and loading

def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """The ``hairmapper`` fixture's fill: weights std ``1/lr_multiplier`` (100, the official init scale; runtime
    std ``1/sqrt(512)``), biases std ``0.1/lr_multiplier`` (10; runtime 0.1), the unused ``w_avg`` std 1."""
    if key.endswith(".weight"):
        return {"kind": "normal", "mean": 0.0, "std": 1.0 / LR_MULTIPLIER}
    if key.endswith(".bias"):
        return {"kind": "normal", "mean": 0.0, "std": 0.1 / LR_MULTIPLIER}
    return {"kind": "normal", "mean": 0.0, "std": 1.0}


def checkpoint_state_dict(obj: Any) -> Mapping[str, Any]:
    """The ``state_dict`` entry of a ``best_model.pt`` object."""
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        raise ValueError(f"{CHECKPOINT.filename}: expected {{'state_dict': ..., 'alpha': float}}")
    return obj["state_dict"]


def checkpoint_alpha(obj: Mapping[str, Any]) -> float:
    """The training ``alpha`` stored in a ``best_model.pt`` object (a float, or a 0-d tensor)."""
    if "alpha" not in obj:
        raise ValueError(f"{CHECKPOINT.filename}: no 'alpha' entry (the official script reads ckpt['alpha'])")
    return float(obj["alpha"])


def load_mapper(weights, device: str | torch.device = "cpu") -> tuple[LevelMapper, float]:
    """``(mapper, ckpt_alpha)`` from ``best_model.pt`` (strict; CUDA-saved tensors are read on the CPU), or the
    mapper filled by the parity rule with the default alpha 0.4 when ``weights.fill``. Eval, no grad. The edit
    uses :func:`inference_alpha` of the returned alpha."""
    mapper = LevelMapper()
    obj = weights.load_network(mapper, CHECKPOINT, extract=checkpoint_state_dict, recipe=fill_recipe)
    alpha = DEFAULT_ALPHA if obj is None else checkpoint_alpha(obj)
    return mapper.float().to(device).eval().requires_grad_(False), alpha


# ---------------------------------------------------------------- parity

def _case_input(fixture: Fixture, case: dict) -> np.ndarray:
    inputs = case["inputs"]
    if len(inputs) != 1:
        raise ValueError(f"case {case['name']}: expected one input (the W+ code), got {sorted(inputs)}")
    return fixture.data[next(iter(inputs.values()))]


def parity_adapter(fixture: Fixture) -> Callable[[dict], dict[str, np.ndarray]]:
    """``hairmapper``: the mapper with the fixture's filled state dict (strict, float32); per case every listed
    output among ``mapper_out``, ``w_edit``, ``w_render`` and ``fc<i>_out`` (a layer's activation), with alpha =
    the spec's checkpoint alpha times its inference factor."""
    spec = fixture.spec
    constructor = fixture.constructor
    if constructor.get("change_512_index", 0) != 0:
        raise ValueError("only change_512_index=0 (the released configuration) is implemented")
    edit = spec.get("edit", {})
    start, stop = edit.get("rows_edited", (0, EDITED_ROWS))
    if start != 0:
        raise ValueError(f"edited rows must start at 0, got {start}")
    state = fixture.torch_state_dict()
    mapper = LevelMapper.from_state_dict(state, rows=stop)
    if mapper.structure_mapping.fc0.weight.shape[1] != constructor.get("input_dim", WIDTH):
        raise ValueError("the state dict's width does not match the constructor's input_dim")
    load_state_dict_into(mapper, state, f"fixture {fixture.name}")
    mapper = mapper.float().eval()
    alpha = float(edit.get("ckpt_alpha_assumed", DEFAULT_ALPHA)) * float(edit.get("inference_factor",
                                                                                  INFERENCE_FACTOR))
    if "alpha_inference" in edit and not math.isclose(alpha, float(edit["alpha_inference"]), rel_tol=1e-9):
        raise ValueError(f"alpha {alpha} disagrees with the spec's alpha_inference {edit['alpha_inference']}")
    mixing = edit.get("style_mixing", {})
    style_range = tuple(mixing.get("style_range", STYLE_RANGE))
    mix_ratio = float(mixing.get("mix_ratio", MIX_RATIO))

    def run(case: dict) -> dict[str, np.ndarray]:
        w = torch.from_numpy(np.array(_case_input(fixture, case))).float()
        names = list(case["outputs"])
        with torch.no_grad():
            layers = mapper.layer_outputs(w)
            edited = w_edit(w, layers[-1], alpha)
            values: dict[str, Tensor] = {"mapper_out": layers[-1], "w_edit": edited}
            if "w_render" in names:
                values["w_render"] = render_latent(edited, style_range, mix_ratio)
        out = {}
        for name in names:
            match = LAYER_OUTPUT.match(name)
            if match and int(match.group(1)) < len(layers):
                out[name] = layers[int(match.group(1))].numpy()
            elif name in values:
                out[name] = values[name].numpy()
            else:
                raise KeyError(f"case {case['name']}: unknown output {name!r}")
        return out

    return run


PARITY = {"hairmapper": parity_adapter}
