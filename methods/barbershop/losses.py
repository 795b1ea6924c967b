"""Barbershop's losses and optimisation helpers (ZPdesu/Barbershop), batched and device-agnostic.

* :func:`p_norm_loss` (``Net.cal_p_norm_loss``): ``v = LeakyReLU(5)(w) - X_mean``, ``z = (v @ X_comp^T) / X_stdev``,
  ``loss = lambda * mean(z^2)``. LeakyReLU(5) undoes the mapping network's final LeakyReLU(0.2), so the PCA
  lives in a Gaussian-like space. The official code works for batch 1 only; ours returns one loss per sample
  (``[B]``, each equal to the batch-1 value), so summing them optimises B latents independently.
* :class:`LatentPCA`, :func:`fit_pca`, :func:`fit_latent_pca`: the PCA arrays (``X_mean``, ``X_comp``,
  ``X_stdev``, ``X_var_ratio``) in Barbershop's ``<ckpt>_PCA.npz`` layout, and their fit when no file exists
  (official: IncrementalPCA, 512 components, LeakyReLU(5) of the mapping output for 1e6 Gaussian z; ours: exact
  float64 covariance accumulated in batches, then an eigendecomposition; the same PCA up to each component's sign,
  which the loss does not see).
* :class:`StyleLoss` (``losses/style``): masked Gram-matrix loss on VGG16 ``features`` activations 3, 8, 15, 22
  (relu1_2, relu2_2, relu3_3, relu4_3) of images bilinearly resized to 256 (``align_corners=True``, scale factor
  ``256 / H``), no ImageNet normalisation. Each activation is multiplied by its image's mask, nearest-resized
  with ``scale_factor = H_feat / H_mask``; Gram ``G = F F^T / (N*C*H*W)`` over ``N*C`` rows (batch items are not
  separated); per-layer MSE of the Gram matrices, averaged over layers. The first image is the target: its
  activations are computed without gradient. ``per_sample=True`` gives one Gram and one loss per batch item
  instead (equal to the official value for batch 1).
* :class:`VGG16Features`: torchvision's VGG16 ``features`` with its key names (``features.N.weight/bias``), built
  from :class:`methods.nets.lpips.VGG16Slices`; loads ``vgg16-397923af.pth`` (:data:`VGG16_IMAGENET`).
* :class:`ClampOptimizer`: an inner optimiser step, then every parameter clamped in place to [0, 1] (the
  blending stage's ``u`` weights); the inner state (e.g. Adam moments) is untouched by the projection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.parity import Fixture, Op, arg_word, call_arg, case_op, to_numpy
from harness.weights import WeightStore, load_state_dict_into
from methods.nets.lpips import VGG16_IMAGENET, VGG16Slices
from methods.nets.lpips import fill_recipe as vgg16_fill_recipe
from methods.ops import bicubic_downsample, bicubic_taps, case_input, case_inputs, case_outputs, reference_shape

__all__ = [
    "P_NORM_LAMBDA", "PCA_KEYS", "STYLE_LAMBDA", "STYLE_LAYERS", "VGG16_IMAGENET", "ClampOptimizer", "LatentPCA",
    "StyleLoss", "VGG16Features", "fit_latent_pca", "fit_pca", "gram_matrix", "gram_style_loss", "load_vgg16_features",
    "mapping_samples", "mask_features", "p_norm_loss", "pca_filename", "vgg16_fill_recipe", "vgg16_features_state",
]

P_NORM_LAMBDA = 0.001  # opts.p_norm_lambda
STYLE_LAMBDA = 4e4  # opts.style_lambda (alignment stage)
STYLE_LAYERS = (3, 8, 15, 22)  # VGG16 features indices: relu1_2, relu2_2, relu3_3, relu4_3
STYLE_SIZE = 256
PULSE_SLOPE = 5.0  # LeakyReLU(5): inverse of the mapping network's final LeakyReLU(0.2)
PCA_KEYS = ("X_mean", "X_comp", "X_stdev", "X_var_ratio")


# ---------------------------------------------------------------- P-norm latent regulariser

@dataclass(frozen=True)
class LatentPCA:
    """PCA of LeakyReLU(5)(w): ``mean`` [D], ``components`` [K,D] (rows), ``stdev`` [K], ``var_ratio`` [K]."""

    mean: Tensor
    components: Tensor
    stdev: Tensor
    var_ratio: Tensor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LatentPCA:
        return LatentPCA(*(t.to(device=device, dtype=dtype) for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.mean, self.components, self.stdev, self.var_ratio

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> LatentPCA:
        """Read a Barbershop ``*_PCA.npz``; arrays are cast to float32 like the official loader."""
        with np.load(path, allow_pickle=False) as npz:
            arrays = [torch.from_numpy(np.asarray(npz[key], dtype=np.float32)) for key in PCA_KEYS]
        return cls(*arrays).to(device)

    def save(self, path: str | Path) -> None:
        """Write the official layout: ``X_mean`` float32, ``X_comp`` / ``X_stdev`` / ``X_var_ratio`` float64."""
        dtypes = (np.float32, np.float64, np.float64, np.float64)
        arrays = {key: t.detach().cpu().double().numpy().astype(dt)
                  for key, t, dt in zip(PCA_KEYS, self.tensors(), dtypes, strict=True)}
        with open(path, "wb") as fh:  # np.savez would append ".npz" to a name without it
            np.savez(fh, **arrays)


def pca_filename(checkpoint_filename: str) -> str:
    """Barbershop's PCA file name for a generator checkpoint: ``ffhq.pt`` -> ``ffhq_PCA.npz``."""
    stem = checkpoint_filename[:-3] if checkpoint_filename.endswith(".pt") else Path(checkpoint_filename).stem
    return f"{stem}_PCA.npz"


def p_norm_loss(latent: Tensor, pca: LatentPCA, weight: float = P_NORM_LAMBDA) -> Tensor:
    """Per-sample P-norm loss ``[B]`` of latents ``[B, ..., D]`` (W+ ``[B,18,512]`` or W ``[B,512]``).

    ``weight * mean(((LeakyReLU(5)(latent) - X_mean) @ X_comp^T / X_stdev)^2)`` over each sample's elements.
    """
    mean, components, stdev, _ = pca.to(latent.device, latent.dtype).tensors()
    z = (F.leaky_relu(latent, PULSE_SLOPE) - mean) @ components.T / stdev
    return weight * z.pow(2).flatten(1).mean(dim=1)


def fit_pca(batches: Iterable[Tensor], n_components: int | None = None) -> LatentPCA:
    """Exact PCA of the rows of all ``batches`` (``[n_i, D]`` each), memory ``O(D^2)`` whatever the count.

    float64 sums of the rows and of their outer products (shifted by the first batch's mean for accuracy), then
    the covariance (denominator ``n - 1``, as sklearn's ``explained_variance_``) and its eigendecomposition.
    Components come sorted by decreasing variance, each signed so its largest-magnitude entry is positive
    (sklearn's convention); ``stdev = sqrt(variance)``, ``var_ratio = variance / total variance``.
    """
    count, shift, first, second = 0, None, None, None
    for batch in batches:
        x = batch.detach().reshape(batch.shape[0], -1).double()
        if shift is None:
            shift = x.mean(dim=0)
            first = torch.zeros_like(shift)
            second = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        x = x - shift.to(x.device)
        first += x.sum(dim=0).to(first.device)
        second += (x.T @ x).to(second.device)
        count += x.shape[0]
    if count < 2:
        raise ValueError("fit_pca needs at least two samples")
    centred_mean = first / count
    covariance = (second - count * torch.outer(centred_mean, centred_mean)) / (count - 1)
    variances, vectors = torch.linalg.eigh(covariance)  # ascending
    variances, vectors = variances.flip(0).clamp_min(0), vectors.flip(1)
    k = vectors.shape[1] if n_components is None else int(n_components)
    components = vectors[:, :k].T.contiguous()
    peak = components.abs().argmax(dim=1)
    components *= torch.sign(components.gather(1, peak[:, None]))
    total = variances.sum().clamp_min(torch.finfo(torch.float64).tiny)  # constant data: ratios 0, not NaN
    return LatentPCA(shift + centred_mean, components, variances[:k].sqrt(), variances[:k] / total)


def mapping_samples(mapping: Callable[[Tensor], Tensor], n_samples: int, batch_size: int = 50_000, seed: int = 0,
                    device: torch.device | str = "cpu", latent_dim: int = 512) -> Iterator[Tensor]:
    """LeakyReLU(5) of ``mapping(z)`` for ``n_samples`` Gaussian ``z``, in batches (no gradient).

    ``z`` is drawn on the CPU from a seeded generator (the same samples on every device); ``mapping`` is the
    generator's mapping network (``generator.style`` / ``generator.mapping``).
    """
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n_samples, batch_size):
        z = torch.randn(min(batch_size, n_samples - start), latent_dim, generator=generator)
        with torch.no_grad():
            yield F.leaky_relu(mapping(z.to(device)), PULSE_SLOPE)


def fit_latent_pca(mapping: Callable[[Tensor], Tensor], n_samples: int = 1_000_000, batch_size: int = 50_000,
                   seed: int = 0, device: torch.device | str = "cpu", latent_dim: int = 512,
                   n_components: int = 512) -> LatentPCA:
    """Barbershop's ``build_PCA_model``: PCA of LeakyReLU(5)(mapping(z)) over ``n_samples`` z (official 1e6).

    Save with :meth:`LatentPCA.save` under :func:`pca_filename` to reuse it.
    """
    samples = mapping_samples(mapping, n_samples, batch_size, seed, device, latent_dim)
    return fit_pca(samples, n_components)


# ---------------------------------------------------------------- VGG16 trunk

class VGG16Features(nn.Module):
    """torchvision VGG16 ``features`` up to relu5_3 (indices 0..29; state keys ``features.N.weight/bias``).

    The layers are :class:`methods.nets.lpips.VGG16Slices`' own (one VGG16 definition in the project), regrouped
    into one ``Sequential`` under torchvision's indices. ``forward(x, indices)`` returns the activations after
    the given layer indices, running only as far as the deepest one.
    """

    def __init__(self):
        super().__init__()
        slices = VGG16Slices()
        self.features = nn.Sequential()
        for block in slices.children():
            for name, layer in block.named_children():
                self.features.add_module(name, layer)

    def forward(self, x: Tensor, indices: Sequence[int] = STYLE_LAYERS) -> list[Tensor]:
        wanted = set(indices)
        activations = []
        for i, layer in enumerate(self.features[:max(wanted) + 1]):
            x = layer(x)
            if i in wanted:
                activations.append(x)
        return activations


def vgg16_features_state(torchvision_state: Mapping[str, Any]) -> dict[str, Any]:
    """torchvision VGG16 state dict -> its ``features.*`` entries (``classifier.*`` is unused)."""
    return {k: v for k, v in torchvision_state.items() if k.startswith("features.")}


def load_vgg16_features(weights: WeightStore, device: torch.device | str = "cpu") -> VGG16Features:
    """The ImageNet VGG16 trunk of the style loss, frozen, eval mode (gradients still flow to the input)."""
    net = VGG16Features()
    weights.load_network(net, VGG16_IMAGENET, extract=vgg16_features_state, recipe=vgg16_fill_recipe)
    return net.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------- masked Gram style loss

def mask_features(feat: Tensor, mask: Tensor | None) -> Tensor:
    """``feat * mask`` with the mask ``[N,1,Hm,Wm]`` nearest-resized by ``scale_factor = H_feat / Hm``."""
    if mask is None:
        return feat
    mask = F.interpolate(mask.to(feat.dtype), scale_factor=feat.shape[2] / mask.shape[2], mode="nearest")
    return feat * mask


def gram_matrix(feat: Tensor, per_sample: bool = False) -> Tensor:
    """``F F^T / (C*H*W)`` per item ``[N,C,C]`` (``per_sample``), else the official ``[1,N*C,N*C]`` over all rows."""
    n, c, h, w = feat.shape
    rows = feat.reshape(n, c, h * w) if per_sample else feat.reshape(1, n * c, h * w)
    return rows @ rows.transpose(1, 2) / rows[0].numel()


def gram_style_loss(acts_x: Sequence[Tensor], acts_x_hat: Sequence[Tensor], mask1: Tensor | None = None,
                    mask2: Tensor | None = None, distance: Literal["l2", "l1"] = "l2",
                    per_sample: bool = False) -> Tensor:
    """``StyleLoss.cal_style`` on given activations: mean over layers of the Gram-matrix distance.

    Scalar (official), or ``[N]`` with ``per_sample``. ``mask1`` masks ``acts_x``, ``mask2`` ``acts_x_hat``.
    """
    error = F.mse_loss if distance == "l2" else F.l1_loss
    total = 0.0
    for feat_x, feat_x_hat in zip(acts_x, acts_x_hat, strict=True):
        gram_x = gram_matrix(mask_features(feat_x, mask1), per_sample)
        gram_x_hat = gram_matrix(mask_features(feat_x_hat, mask2), per_sample)
        total = total + error(gram_x, gram_x_hat, reduction="none").flatten(1).mean(dim=1)
    loss = total / len(acts_x)
    return loss if per_sample else loss[0]


class StyleLoss(nn.Module):
    """Barbershop's masked Gram style loss. ``forward(x, x_hat, mask1=None, mask2=None)``.

    ``x`` is the target (no gradient through its activations), ``x_hat`` the image being optimised; masks are
    ``[N,1,H,W]`` at any size that divides into the feature sizes. Multiply by :data:`STYLE_LAMBDA` as the
    alignment stage does (it passes ``I1*M1, I2*M2, mask1=M1, mask2=M2`` at 256x256).
    """

    def __init__(self, vgg: VGG16Features | None = None, layers: Sequence[int] = STYLE_LAYERS,
                 distance: Literal["l2", "l1"] = "l2", size: int = STYLE_SIZE, per_sample: bool = False):
        super().__init__()
        if distance not in ("l2", "l1"):
            raise ValueError(f"unknown distance {distance!r}")
        self.vgg = vgg if vgg is not None else VGG16Features()
        self.layers = tuple(int(i) for i in layers)
        self.distance = distance
        self.size = int(size)
        self.per_sample = per_sample

    @staticmethod
    def _resize(x: Tensor, scale: float) -> Tensor:
        return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=True)

    def forward(self, x: Tensor, x_hat: Tensor, mask1: Tensor | None = None, mask2: Tensor | None = None) -> Tensor:
        scale = self.size / x.shape[2]  # the official scale comes from x's height for both images
        with torch.no_grad():
            acts_x = self.vgg(self._resize(x, scale), self.layers)
        acts_x_hat = self.vgg(self._resize(x_hat, scale), self.layers)
        return gram_style_loss(acts_x, acts_x_hat, mask1, mask2, self.distance, self.per_sample)


# ---------------------------------------------------------------- projected optimiser

class ClampOptimizer:
    """``optimizer_class(params, **kwargs)`` whose ``step`` is followed by ``param.clamp_(low, high)`` in place.

    Barbershop: ``ClampOptimizer(torch.optim.Adam, [u], lr=0.01)`` for the blending weights.
    """

    def __init__(self, optimizer_class: type[torch.optim.Optimizer], params: Iterable, low: float = 0.0,
                 high: float = 1.0, **kwargs: Any):
        self.optimizer = optimizer_class(params, **kwargs)
        self.low, self.high = float(low), float(high)

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        if closure is not None:
            with torch.enable_grad():
                loss = self.optimizer.step(closure)
        else:
            loss = self.optimizer.step()
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                param.clamp_(self.low, self.high)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


# ---------------------------------------------------------------- parity (fixture barbershop_ops)

#: the ops of ``barbershop_ops`` and how a case shows which one it exercises (see :func:`harness.parity.case_op`)
PARITY_OPS = {
    "bicubic": Op(call=(r"BicubicDownSample",), names=("bicubic_f4", "bicubic_f2")),
    "p_norm": Op(call=(r"cal_p_norm_loss",)),
    "gram": Op(inputs=("feat_x", "feat_xhat"), names=("gram_masked", "gram_nomask")),
    "style_full": Op(call=(r"StyleLoss\(",), inputs=("x", "x_hat")),
    "clamp_adam": Op(call=(r"ClampOptimizer",)),
}

def parity_adapter(fixture: Fixture) -> Callable[[Mapping], dict[str, np.ndarray]]:
    """Fixture ``barbershop_ops``: VGG16 filled from the spec (strict), other cases are pure functions."""
    ctor = fixture.constructor
    style = ctor.get("StyleLoss", {})
    vgg = VGG16Features()
    load_state_dict_into(vgg, fixture.torch_state_dict(), f"fixture {fixture.name}")
    vgg.eval().float().requires_grad_(False)
    style_loss = StyleLoss(vgg, style.get("VGG16_ACTIVATIONS_LIST", STYLE_LAYERS), style.get("distance", "l2"))
    p_norm_lambda = float(ctor.get("p_norm_lambda", P_NORM_LAMBDA))
    clamp = ctor.get("ClampOptimizer", {})

    def tensor(case: Mapping, word: str) -> Tensor | None:
        arrays = case_inputs(fixture, case, word)
        return torch.from_numpy(np.array(arrays[0])).float() if arrays else None

    def tensors(case: Mapping, word: str) -> list[Tensor]:
        return [torch.from_numpy(np.array(a)).float() for a in case_inputs(fixture, case, word)]

    def run(case: Mapping) -> dict[str, np.ndarray]:
        op = case_op(case, PARITY_OPS)
        extra: dict[str, Tensor] = {}
        if op == "bicubic":
            x = torch.from_numpy(np.array(case_input(fixture, case, arg_word(next(iter(case["inputs"])))))).float()
            given = call_arg(case, "BicubicDownSample", "factor", 0)
            out = {}
            for word in map(arg_word, case["outputs"]):
                factor = int(given) if given else x.shape[-1] // reference_shape(fixture, case, word)[-1]
                with torch.no_grad():
                    out[word] = bicubic_downsample(x, factor)
                const = f"const/bicubic_kernel_factor{factor}"
                if const in fixture.data:  # the stored taps, compared as an extra output
                    extra[const] = bicubic_taps(factor)
        elif op == "p_norm":
            pca = LatentPCA(tensor(case, "X_mean"), tensor(case, "X_comp"), tensor(case, "X_stdev"),
                            torch.ones(()))
            latent = tensor(case, "latent_in")
            with torch.no_grad():
                out = {"loss": p_norm_loss(latent, pca, p_norm_lambda).sum(),
                       "loss_lambda1": p_norm_loss(latent, pca, 1.0).sum()}
        elif op == "gram":
            with torch.no_grad():
                out = {"loss": gram_style_loss(tensors(case, "feat_x"), tensors(case, "feat_xhat"),
                                               tensor(case, "mask1"), tensor(case, "mask2"), style_loss.distance)}
        elif op == "style_full":
            with torch.no_grad():
                out = {"loss": style_loss(tensor(case, "x"), tensor(case, "x_hat"), tensor(case, "mask1"),
                                          tensor(case, "mask2"))}
        else:  # clamp_adam
            target = tensor(case, "target")
            steps = reference_shape(fixture, case, "trajectory")[0]
            inner = getattr(torch.optim, str(clamp.get("optimizer", "torch.optim.Adam")).rsplit(".", 1)[-1])
            lr = clamp.get("lr_in_case") or call_arg(case, "ClampOptimizer", "lr") or 0.2
            param = torch.zeros_like(target, requires_grad=True)
            optimizer = ClampOptimizer(inner, [param], lr=float(lr))
            trajectory = []
            for _ in range(steps):
                optimizer.zero_grad()
                ((param - target) ** 2).sum().backward()
                optimizer.step()
                trajectory.append(param.detach().clone())
            out = {"trajectory": torch.stack(trajectory)}
        return {k: to_numpy(v) for k, v in {**case_outputs(case, out), **extra}.items()}

    return run


PARITY = {"barbershop_ops": parity_adapter}
