"""Transformer descriptions for trace synthesis: the model zoo (zoo/*.toml) and overrides.

`load_model("gpt3-175b")` reads a zoo entry; `load_model("my.toml")` a file of the same shape;
keyword overrides (`layers=`, `hidden=`, `heads=`, `kv_heads=`, `ffn_hidden=`, `vocab=`, `seq=`)
replace fields, so any dense transformer can be described on the command line.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tracesim.exceptions import TracesimError

ZOO_DIR = Path(__file__).parent / "zoo"


class ModelConfigError(TracesimError):
    """A model description that cannot be used (unknown name, bad field, inconsistent shape)."""


class ModelSpec(BaseModel):
    """A decoder-only transformer. `kv_heads` < `heads` is grouped-query attention;
    `activation = "swiglu"` makes the first FFN GEMM produce gate and up projections (2 × ffn_hidden).
    `experts` > 0 makes every layer's FFN a mixture of `experts` FFNs of `ffn_hidden`, of which
    each token uses `top_k`, chosen by a router GEMM (h × experts)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    family: str = "custom"
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int | None = Field(default=None, gt=0)
    ffn_hidden: int | None = Field(default=None, gt=0)
    vocab: int = Field(gt=0)
    seq: int = Field(default=2048, gt=0)
    activation: Literal["gelu", "swiglu"] = "gelu"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    position: Literal["learned", "rope"] = "learned"
    tied_embeddings: bool = True
    experts: int = Field(default=0, ge=0)
    top_k: int = Field(default=0, ge=0)
    capacity_factor: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        if self.heads % self.n_kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.n_kv_heads}")
        if self.experts and not 0 < self.top_k <= self.experts:
            raise ValueError(f"top_k {self.top_k} must be in 1..experts ({self.experts})")
        return self

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads if self.kv_heads is not None else self.heads

    @property
    def ffn(self) -> int:
        return self.ffn_hidden if self.ffn_hidden is not None else 4 * self.hidden

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def qkv_out(self) -> int:
        """Output width of the fused QKV projection: h + 2 · kv_heads · head_dim."""
        return self.hidden + 2 * self.n_kv_heads * self.head_dim

    @property
    def fc1_out(self) -> int:
        return 2 * self.ffn if self.activation == "swiglu" else self.ffn

    @property
    def norm_params(self) -> int:
        """Parameters of one norm: scale (+ bias for LayerNorm)."""
        return 2 * self.hidden if self.norm == "layernorm" else self.hidden

    @property
    def attn_params(self) -> int:
        """QKV and output projection weights of one layer."""
        return self.hidden * self.qkv_out + self.hidden * self.hidden

    @property
    def expert_params(self) -> int:
        """FC1 and FC2 weights of one FFN (of one expert in a mixture-of-experts layer)."""
        return self.hidden * self.fc1_out + self.ffn * self.hidden

    @property
    def router_params(self) -> int:
        return self.hidden * self.experts

    @property
    def gemm_params_per_layer(self) -> int:
        """All GEMM weights of one layer: attention, and the FFN (every expert and the router)."""
        if self.experts:
            return self.attn_params + self.experts * self.expert_params + self.router_params
        return self.attn_params + self.expert_params

    @property
    def active_gemm_params_per_layer(self) -> int:
        """GEMM weights one token passes through: attention, router and top_k experts."""
        if self.experts:
            return self.attn_params + self.top_k * self.expert_params + self.router_params
        return self.gemm_params_per_layer

    @property
    def params_per_layer(self) -> int:
        """GEMM weights and two norms (biases are not modelled)."""
        return self.gemm_params_per_layer + 2 * self.norm_params

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """All parameters: layers, embedding, final norm, and the output layer when untied."""
        n = self.layers * self.params_per_layer + self.embedding_params + self.norm_params
        if self.position == "learned":
            n += self.seq * self.hidden
        if not self.tied_embeddings:
            n += self.embedding_params
        return n


OVERRIDABLE = ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq")


def zoo_names() -> list[str]:
    return sorted(p.stem for p in ZOO_DIR.glob("*.toml"))


def load_model(model: str | Path | ModelSpec, **overrides: Any) -> ModelSpec:
    """A zoo name, a TOML path or a ModelSpec, with the fields in `overrides` (None = keep) replaced."""
    if isinstance(model, ModelSpec):
        raw: dict[str, Any] = model.model_dump()
        where = model.name
    else:
        text_path = Path(model)
        zoo = ZOO_DIR / f"{model}.toml"
        if isinstance(model, str) and zoo.is_file():
            path = zoo
        elif text_path.suffix == ".toml" and text_path.is_file():
            path = text_path
        else:
            zoo_list = ", ".join(zoo_names())
            raise ModelConfigError(
                f"--model: {str(model)!r} is neither a zoo model nor a TOML file; zoo: {zoo_list}"
            )
        where = str(path)
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ModelConfigError(f"{path}: not valid TOML: {e}") from None
        raw.setdefault("name", path.stem)
    for key, value in overrides.items():
        if key not in OVERRIDABLE:
            raise ModelConfigError(f"cannot override model field {key!r}; allowed: {', '.join(OVERRIDABLE)}")
        if value is not None:
            raw[key] = value
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "model"
        raise ModelConfigError(f"{where}: field {loc!r}: {err['msg']}") from None
