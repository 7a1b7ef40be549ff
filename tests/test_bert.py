"""Hearken's plain-torch BERT encoder against transformers' BertModel.

The run-time encoder is our own module (so routing never imports transformers); these tests
hold it to transformers' outputs, names and config format, on a tiny random model and on the
real pretrained base weights.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from pipeline.basemodel import base_model_dir
from pipeline.bert import BertEncoder, BertSettings, skipped_parameter_init
from pipeline.errors import ModelLoadError


def padded_batch(vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab_size, (3, 17), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # a shorter window padded at the end
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 0
    return input_ids, attention_mask


def transformers_twin(settings: BertSettings, encoder: BertEncoder) -> BertModel:
    reference = BertModel(BertConfig.from_dict(settings.to_dict()), add_pooling_layer=False).eval()
    missing, unexpected = reference.load_state_dict(encoder.state_dict(), strict=False)
    assert not unexpected
    assert all("position_ids" in key or "token_type_ids" in key for key in missing)
    return reference


def test_tiny_random_encoder_matches_transformers_on_padded_batches():
    torch.manual_seed(0)
    settings = BertSettings(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    ours = BertEncoder(settings).eval()
    reference = transformers_twin(settings, ours)
    input_ids, attention_mask = padded_batch(settings.vocab_size)
    with torch.inference_mode():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        got = ours(input_ids, attention_mask)
    keep = attention_mask.bool()
    assert got.shape == expected.shape
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-4)


def test_pretrained_base_weights_give_transformers_outputs():
    base = base_model_dir()
    settings = BertSettings.from_dict(json.loads((base / "config.json").read_text()))
    ours = BertEncoder(settings)
    ours.load_checkpoint(load_file(str(base / "model.safetensors")))
    ours.eval()
    reference = BertModel.from_pretrained(base, add_pooling_layer=False).eval()
    input_ids, attention_mask = padded_batch(settings.vocab_size, seed=1)
    with torch.inference_mode():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        got = ours(input_ids, attention_mask)
    keep = attention_mask.bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-4, rtol=1e-4)


def test_bf16_inference_attention_matches_the_fused_kernel_and_ignores_padding():
    """bf16 inference takes the explicit attention path (faster there); it must agree with the
    fused kernel on the same bf16 inputs and never look at padded keys."""
    base = base_model_dir()
    settings = BertSettings.from_dict(json.loads((base / "config.json").read_text()))
    ours = BertEncoder(settings)
    ours.load_checkpoint(load_file(str(base / "model.safetensors")))
    ours.eval()
    attention = ours.encoder.layer[0].attention.self
    generator = torch.Generator().manual_seed(3)
    query, key, value = (
        torch.randn(2, settings.num_attention_heads, 9, attention.head_size, generator=generator).to(
            torch.bfloat16
        )
        for _ in range(3)
    )
    bias = torch.zeros(2, 1, 1, 9)
    bias[1, ..., 5:] = torch.finfo(torch.float32).min
    with torch.inference_mode():
        explicit = attention.explicit_attention(query, key, value, bias)
        fused = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=bias.to(torch.bfloat16)
        )
        # Changing what sits in padded key positions must change nothing.
        key2, value2 = key.clone(), value.clone()
        key2[1, :, 5:], value2[1, :, 5:] = 100.0, -100.0
        moved = attention.explicit_attention(query, key2, value2, bias)
    torch.testing.assert_close(explicit.float(), fused.float(), atol=2e-2, rtol=2e-2)
    assert torch.equal(explicit[1], moved[1])

    input_ids, attention_mask = padded_batch(settings.vocab_size, seed=2)
    keep = attention_mask.bool()
    with torch.inference_mode():
        fp32 = ours(input_ids, attention_mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = ours(input_ids, attention_mask)
    cosine = torch.nn.functional.cosine_similarity(bf16[keep].float(), fp32[keep], dim=-1)
    assert cosine.min() > 0.99


def test_bf16_attention_casts_the_hidden_states_once_exactly_as_autocast_casts_them_per_projection():
    torch.manual_seed(0)
    settings = BertSettings(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    attention = BertEncoder(settings).eval().encoder.layer[0].attention.self
    hidden = torch.randn(2, 7, 16)
    bias = torch.zeros(2, 1, 1, 7)
    bias[1, ..., 4:] = torch.finfo(torch.float32).min
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        once = attention(hidden, bias)
        # What autocast alone does: each projection casts the fp32 hidden states itself.
        query, key, value = (
            attention.split_heads(projection(hidden))
            for projection in (attention.query, attention.key, attention.value)
        )
        per_projection = (
            attention.explicit_attention(query, key, value, bias).transpose(1, 2).reshape(2, 7, 16)
        )
    assert once.dtype == torch.bfloat16
    assert torch.equal(once, per_projection)


def test_training_mode_applies_dropout_and_eval_mode_is_deterministic():
    torch.manual_seed(0)
    settings = BertSettings(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    encoder = BertEncoder(settings)
    input_ids, attention_mask = padded_batch(settings.vocab_size)
    encoder.train()
    assert not torch.equal(encoder(input_ids, attention_mask), encoder(input_ids, attention_mask))
    encoder.eval()
    assert torch.equal(encoder(input_ids, attention_mask), encoder(input_ids, attention_mask))


def test_config_round_trips_through_transformers_format():
    settings = BertSettings(
        vocab_size=99, hidden_size=24, num_hidden_layers=3, num_attention_heads=3, intermediate_size=48
    )
    written = settings.to_dict()
    assert BertSettings.from_dict(written) == settings
    assert BertConfig.from_dict(written).num_hidden_layers == 3


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model_type": "roberta"}, "model_type"),
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"num_attention_heads": 5}, "multiple"),
        ({"hidden_size": "wide"}, "hidden_size"),
    ],
)
def test_unsupported_or_invalid_configs_are_refused_by_name(change, named):
    values = BertSettings(
        vocab_size=99, hidden_size=24, num_hidden_layers=1, num_attention_heads=3, intermediate_size=48
    ).to_dict()
    values.update(change)
    with pytest.raises(ModelLoadError, match=named):
        BertSettings.from_dict(values)


def test_checkpoint_with_wrong_names_or_shapes_is_refused():
    settings = BertSettings(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    encoder = BertEncoder(settings)
    state = dict(encoder.state_dict())
    renamed = {("bert." + k): v for k, v in state.items()}
    with pytest.raises(ModelLoadError, match="names differ"):
        encoder.load_checkpoint(renamed)
    reshaped = dict(state)
    reshaped["embeddings.word_embeddings.weight"] = torch.zeros(51, 16)
    with pytest.raises(ModelLoadError, match="shape"):
        encoder.load_checkpoint(reshaped)


def test_skipped_parameter_init_leaves_weights_for_loading_and_restores_torch_init():
    originals = {name: getattr(torch.nn.init, name) for name in ("kaiming_uniform_", "normal_", "ones_")}
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    with skipped_parameter_init():
        torch.nn.Linear(64, 64)
        torch.nn.Embedding(10, 8)
    # No random numbers were drawn: the constructors' initialisation was skipped.
    assert torch.equal(torch.random.get_rng_state(), before)
    with pytest.raises(RuntimeError), skipped_parameter_init():
        raise RuntimeError("a failed build")
    assert all(getattr(torch.nn.init, name) is function for name, function in originals.items())
    torch.nn.Linear(4, 4)
    assert not torch.equal(torch.random.get_rng_state(), before)
