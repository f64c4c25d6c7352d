"""QuantEmbedding: nn.Embedding with a weight quantizer and an optional output quantizer.

A lookup, not a dot product: the indices are integers (no input quantizer), there is no
bias and no accumulator (K = 1, no MACs). The weight is quantized by the LayerSpec's
``weight`` spec, per tensor or per row (``per_channel(0)``: one scale per embedding);
the looked-up rows are those fake-quantized values, re-quantized by ``output`` if given.
``Recipe.default`` does not apply to embeddings: name them, ``Recipe(by_type={"Embedding":
LayerSpec(weight=W8)})``.

>>> import torch
>>> from hwquant.spec import W4, LayerSpec
>>> emb = QuantEmbedding(10, 3, spec=LayerSpec(weight=W4))
>>> y = emb(torch.tensor([[1, 2], [3, 1]]))
>>> y.shape, bool(torch.equal(y[0, 0], y[1, 1]))
(torch.Size([2, 2, 3]), True)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hwquant.nn.kinds import Geometry, Matrix, layer_kind
from hwquant.nn.layer import QuantWeightLayer
from hwquant.spec.a2q import A2Q
from hwquant.spec.layer_spec import LayerSpec

__all__ = ["QuantEmbedding"]


def embedding_geometry(m: nn.Module, in_shape: tuple, out_shape: tuple) -> Geometry:
    """K = 1 (a lookup), out_channels = embedding_dim, pixels = lookups per frame."""
    n = 1
    for d in in_shape[1:]:
        n *= d
    return Geometry(1, m.embedding_dim, 1, n)


def embedding_matrix(m: nn.Module, g: Geometry) -> Matrix:
    """A lookup table of num_embeddings × embedding_dim codes; no MACs (n_pix = 0)."""
    return Matrix("embedding", m.embedding_dim, m.num_embeddings, 0)


@layer_kind(
    has_weight=True,
    has_bias=False,
    accumulates=False,
    geometry_fn=embedding_geometry,
    matrix_fn=embedding_matrix,
)
class QuantEmbedding(QuantWeightLayer, nn.Embedding):
    float_type = nn.Embedding

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        *,
        spec: LayerSpec,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            num_embeddings,
            embedding_dim,
            padding_idx,
            max_norm,
            norm_type,
            scale_grad_by_freq,
            sparse,
            device=device,
            dtype=dtype,
        )
        _check_spec(spec, max_norm)
        self._setup_quant(spec)

    def forward(self, idx: Tensor) -> Tensor:
        w = self.quant_weight()  # [num_embeddings, embedding_dim]
        y = F.embedding(idx, w, self.padding_idx, None, 2.0, self.scale_grad_by_freq, self.sparse)
        return self.output_quant(y)

    @staticmethod
    def float_kwargs(m: nn.Embedding) -> dict:
        return {
            "num_embeddings": m.num_embeddings,
            "embedding_dim": m.embedding_dim,
            "padding_idx": m.padding_idx,
            "max_norm": m.max_norm,
            "norm_type": m.norm_type,
            "scale_grad_by_freq": m.scale_grad_by_freq,
            "sparse": m.sparse,
        }


def _check_spec(spec: LayerSpec, max_norm: float | None) -> None:
    if not isinstance(spec, LayerSpec):
        raise ValueError(f"QuantEmbedding.spec must be a LayerSpec, got {spec!r}")
    if spec.input is not None:
        raise ValueError(
            "QuantEmbedding: its inputs are integer indices; LayerSpec.input must be None"
        )
    if spec.bias is not None:
        raise ValueError("QuantEmbedding has no bias; LayerSpec.bias must be None")
    if isinstance(spec.weight, A2Q):
        raise ValueError("QuantEmbedding: A2Q bounds an accumulator, and a lookup has none")
    if max_norm is not None:
        raise ValueError(
            "QuantEmbedding does not support max_norm (it rewrites the weight in place)"
        )
