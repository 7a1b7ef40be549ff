"""Windows, pooling and heads of the encoder stage, on a tiny random encoder."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch

from pipeline import runtime
from pipeline.basemodel import base_model_dir
from pipeline.bert import BertEncoder, BertSelfAttention, BertSettings
from pipeline.config import EncoderConfig
from pipeline.encoder import HeadSpec, HearkenNet, TextEncoder, load_tokenizer, plan_windows
from pipeline.errors import ModelLoadError
from pipeline.runtime import PrepackedBf16Linear

HEADS = [
    HeadSpec(name="ask", level="sentence", kind="binary", labels=["not_ask", "ask"]),
    HeadSpec(name="intent", level="sentence", kind="multiclass", labels=["a", "b", "c"]),
    HeadSpec(name="product", level="message", kind="multiclass", labels=["x", "y"]),
]


def tiny_encoder(
    batch_size: int = 8, window: int = 64, overlap: int = 8, precision: str = "fp32"
) -> TextEncoder:
    torch.manual_seed(0)
    config = BertSettings(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    net = HearkenNet(config, HEADS)
    return TextEncoder(
        net,
        load_tokenizer(base_model_dir() / "tokenizer.json"),
        EncoderConfig(
            max_window_tokens=window,
            window_overlap_tokens=overlap,
            batch_size=batch_size,
            precision=precision,
        ),
    )


def test_short_message_is_one_window_with_every_sentence():
    windows = plan_windows(0, 30, [(0, 10), (10, 20), (20, 30)], max_window_tokens=64, overlap=8)
    assert len(windows) == 1
    assert [p.sentence for p in windows[0].pieces] == [0, 1, 2]


@pytest.mark.parametrize("n_sentences", [5, 40, 200])
def test_long_message_owns_every_piece_once_with_context(n_sentences: int):
    ranges = [(i * 17, i * 17 + 17) for i in range(n_sentences)]
    n_tokens = ranges[-1][1]
    windows = plan_windows(0, n_tokens, ranges, max_window_tokens=64, overlap=8)
    owned = [p.sentence for w in windows for p in w.pieces]
    assert owned == list(range(n_sentences))
    for window in windows:
        assert window.token_end - window.token_start <= 62
        for piece in window.pieces:
            assert window.token_start <= piece.token_start < piece.token_end <= window.token_end
            if piece.token_start >= 8:  # context before, where the message has it
                assert piece.token_start - window.token_start >= 8 or window.token_start == 0
            if n_tokens - piece.token_end >= 8:
                assert window.token_end - piece.token_end >= 8


def test_oversized_sentence_is_split_into_pieces_not_truncated():
    windows = plan_windows(0, 500, [(0, 500)], max_window_tokens=64, overlap=8)
    pieces = [p for w in windows for p in w.pieces]
    assert pieces[0].token_start == 0 and pieces[-1].token_end == 500
    assert all(a.token_end == b.token_start for a, b in itertools.pairwise(pieces))
    assert all(p.sentence == 0 for p in pieces)


def test_every_sentence_of_a_long_message_is_scored_and_message_head_is_batch_independent():
    sentence = "My card was charged twice at the grocery store and I want a refund now. "
    text = sentence * 120  # far past one window
    spans = [(i * len(sentence), (i + 1) * len(sentence) - 1) for i in range(120)]
    small = tiny_encoder(batch_size=1).encode([text, "Short one."], [spans, [(0, 10)]])
    large = tiny_encoder(batch_size=64).encode([text, "Short one."], [spans, [(0, 10)]])
    assert small[0].sentence_scored.all()
    assert small[0].sentence_probs["ask"].shape == (120,)
    assert small[0].sentence_probs["intent"].shape == (120, 3)
    np.testing.assert_allclose(small[0].sentence_probs["intent"].sum(1), 1.0, rtol=1e-5)
    # the message head pools every token once, however the windows were batched
    np.testing.assert_allclose(
        small[0].message_probs["product"], large[0].message_probs["product"], rtol=1e-4
    )
    np.testing.assert_allclose(
        small[1].message_probs["product"], large[1].message_probs["product"], rtol=1e-4
    )


def test_tokeniser_is_not_cut_at_128_tokens():
    encoder = tiny_encoder()
    tokens = encoder.tokenise(["word " * 1000])
    assert len(tokens[0].ids) == 1000


def test_message_without_tokens_gets_no_scores():
    out = tiny_encoder().encode(["\u200b"], [[(0, 1)]])
    assert not out[0].sentence_scored.any()
    assert out[0].sentence_probs["ask"][0] == 0.0


def test_padding_to_a_multiple_bounds_shapes_without_changing_predictions():
    texts = ["Where is my card?", "I was charged twice for one coffee at the airport. Please refund it."]
    spans = [[(0, 17)], [(0, 48), (49, 68)]]
    exact = tiny_encoder().encode(texts, spans)
    padded_encoder = tiny_encoder()
    padded_encoder.config = padded_encoder.config.model_copy(update={"pad_to_multiple_of": 32})
    tokens = padded_encoder.tokenise(texts)
    windows = padded_encoder.plan(tokens, spans)
    from pipeline.encoder import SHORT_PAD_MULTIPLE, collate

    ids = padded_encoder.cls_id, padded_encoder.sep_id, padded_encoder.pad_id
    batch = collate(windows, tokens, *ids, 32)
    longest = int(batch.tensors["attention_mask"].sum(1).max())
    assert longest <= 32  # shorter than one multiple: rounded up to SHORT_PAD_MULTIPLE only
    assert batch.tensors["input_ids"].shape[1] == -(-longest // SHORT_PAD_MULTIPLE) * SHORT_PAD_MULTIPLE
    long_tokens = padded_encoder.tokenise(["word " * 40])
    long_batch = collate(padded_encoder.plan(long_tokens, [[(0, 200)]]), long_tokens, *ids, 32)
    assert long_batch.tensors["input_ids"].shape[1] == 64  # 42 tokens: the next multiple of 32
    padded = padded_encoder.encode(texts, spans)
    for a, b in zip(exact, padded, strict=True):
        np.testing.assert_allclose(a.sentence_probs["ask"], b.sentence_probs["ask"], atol=1e-5)
        np.testing.assert_allclose(a.message_probs["product"], b.message_probs["product"], atol=1e-5)


BF16_TEXTS = ["Where is my card?", "I was charged twice for one coffee at the airport. Please refund it."]
BF16_SPANS = [[(0, 17)], [(0, 48), (49, 68)]]


def assert_same_outputs(expected: list, actual: list) -> None:
    for a, b in zip(expected, actual, strict=True):
        np.testing.assert_array_equal(a.sentence_probs["ask"], b.sentence_probs["ask"])
        np.testing.assert_array_equal(a.sentence_probs["intent"], b.sentence_probs["intent"])
        np.testing.assert_array_equal(a.message_probs["product"], b.message_probs["product"])


def test_bf16_weights_prepacked_once_give_the_same_outputs_as_autocast_casting_per_call():
    encoder = tiny_encoder(precision="bf16")
    per_call = encoder.encode(BF16_TEXTS, BF16_SPANS)
    encoder.store_weights_for_precision()
    linear = encoder.net.encoder.encoder.layer[0].intermediate.dense
    assert isinstance(linear, PrepackedBf16Linear)  # x86 torch builds ship oneDNN
    assert isinstance(encoder.net.heads["product"][1], PrepackedBf16Linear)
    assert linear.weight.dtype == torch.bfloat16
    assert not any(isinstance(m, torch.nn.Linear) for m in encoder.net.modules())
    assert encoder.net.encoder.embeddings.LayerNorm.weight.dtype == torch.float32
    assert_same_outputs(per_call, encoder.encode(BF16_TEXTS, BF16_SPANS))


def test_bf16_weights_fall_back_to_plain_bf16_linears_when_prepacking_is_not_exact(monkeypatch):
    monkeypatch.setattr(runtime, "prepacked_linear_matches", lambda linear: False)
    encoder = tiny_encoder(precision="bf16")
    per_call = encoder.encode(BF16_TEXTS, BF16_SPANS)
    encoder.store_weights_for_precision()
    linear = encoder.net.encoder.encoder.layer[0].intermediate.dense
    assert type(linear) is torch.nn.Linear
    assert linear.weight.dtype == torch.bfloat16
    assert_same_outputs(per_call, encoder.encode(BF16_TEXTS, BF16_SPANS))


def test_prepacking_is_refused_without_onednn_or_when_its_op_fails(monkeypatch):
    linear = torch.nn.Linear(16, 8)
    assert runtime.prepacked_linear_matches(linear)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not runtime.prepacked_linear_matches(linear)
    monkeypatch.undo()

    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("no oneDNN kernel for this CPU")

    monkeypatch.setattr(PrepackedBf16Linear, "forward", lambda self, inputs: broken())
    assert not runtime.prepacked_linear_matches(linear)
    monkeypatch.setattr(PrepackedBf16Linear, "forward", lambda self, inputs: torch.zeros(2, 3, 8))
    assert not runtime.prepacked_linear_matches(linear)  # runs, but not bit-identical: refused
    assert runtime.prepack_bf16_linears(torch.nn.Sequential(linear)) == 0


def test_fp32_encoder_refuses_a_network_whose_weights_were_stored_in_bf16():
    encoder = tiny_encoder(precision="bf16")
    encoder.store_weights_for_precision()
    with pytest.raises(ModelLoadError, match="load the model folder again"):
        TextEncoder(encoder.net, encoder.tokenizer, encoder.config.model_copy(update={"precision": "fp32"}))


def test_fp32_encoder_keeps_fp32_weights():
    encoder = tiny_encoder(precision="fp32")
    encoder.store_weights_for_precision()
    assert all(p.dtype == torch.float32 for p in encoder.net.parameters())


def test_precision_override_sets_or_clears_the_variable_and_restores_the_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(runtime.PRECISION_ENV, "bf16")
    with runtime.precision_override("fp32"):
        assert runtime.resolve_precision("auto") == "fp32"
    assert os.environ[runtime.PRECISION_ENV] == "bf16"
    with runtime.precision_override(None):
        assert runtime.PRECISION_ENV not in os.environ
    assert os.environ[runtime.PRECISION_ENV] == "bf16"
    monkeypatch.delenv(runtime.PRECISION_ENV)
    with pytest.raises(RuntimeError), runtime.precision_override("fp32"):
        raise RuntimeError("a failed load")
    assert runtime.PRECISION_ENV not in os.environ


@pytest.mark.parametrize(("amx", "expected"), [(True, "fused"), (False, "explicit")])
def test_bf16_attention_kernel_follows_the_cpu_unless_the_config_names_one(
    monkeypatch: pytest.MonkeyPatch, amx: bool, expected: str
) -> None:
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: amx)
    assert runtime.resolve_bf16_attention("auto") == expected
    assert runtime.resolve_bf16_attention("explicit") == "explicit"
    assert runtime.resolve_bf16_attention("fused") == "fused"
    encoder = tiny_encoder(precision="bf16")
    assert encoder.bf16_attention == expected
    flags = {m.explicit_bf16 for m in encoder.net.modules() if isinstance(m, BertSelfAttention)}
    assert flags == {expected == "explicit"}


def test_both_bf16_attention_kernels_read_the_same_and_ignore_padding() -> None:
    """The fused and explicit kernels differ only in rounding, and neither looks at padded keys, so
    a window's states do not depend on the batch it was padded into."""
    torch.manual_seed(0)
    settings = BertSettings(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=0.2,  # BERT's 0.02 gives near-uniform attention: padding would hardly show
    )
    encoder = BertEncoder(settings).eval()
    ids = torch.randint(5, 100, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.inference_mode():
        reference = encoder(ids[1:, :6], mask[1:, :6])[0]  # fp32, fused kernel, no padding
        states = {}
        for explicit in (True, False):
            for module in encoder.modules():
                if isinstance(module, BertSelfAttention):
                    module.explicit_bf16 = explicit
            with torch.autocast("cpu", dtype=torch.bfloat16):
                padded = encoder(ids, mask)[1, :6].float()
                alone = encoder(ids[1:, :6], mask[1:, :6])[0].float()
            torch.testing.assert_close(padded, alone, atol=3e-2, rtol=0)
            torch.testing.assert_close(padded, reference, atol=6e-2, rtol=0)
            states[explicit] = padded
    torch.testing.assert_close(states[True], states[False], atol=3e-2, rtol=0)
