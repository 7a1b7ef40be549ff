"""Pipeline configuration: one pydantic model per stage, composed into ``PipelineConfig``.

Every field has a description and unknown keys are rejected, so a typo in a YAML/JSON config
fails loudly instead of silently using a default. The resolved config is saved inside each
model folder: a model always runs with the settings it was evaluated with.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.language import LanguageConfig
from pipeline.normalise import NormaliserConfig
from pipeline.runtime import Bf16Attention, Precision
from pipeline.segment import SegmenterConfig
from pipeline.signals import SignalConfig


class EncoderConfig(BaseModel):
    """How message text is cut into encoder windows and run."""

    model_config = ConfigDict(extra="forbid")

    max_window_tokens: int = Field(
        default=256,
        ge=32,
        le=512,
        description="Tokens per encoder window including [CLS]/[SEP]; 256 is what all-MiniLM-L6-v2 was "
        "tuned on and is faster than 512 for long messages.",
    )
    window_overlap_tokens: int = Field(
        default=64, ge=0, description="Context shared by consecutive windows of a long message."
    )
    pad_to_multiple_of: int = Field(
        default=32,
        ge=1,
        le=512,
        description="Pad each batch to a multiple of this many tokens: few distinct shapes, flat memory.",
    )
    batch_size: int = Field(
        default=8, ge=1, description="Windows per forward pass (8 was best on 2-core CPUs)."
    )
    precision: Precision = Field(
        default="auto", description="auto picks bf16 autocast on CPUs with native bf16, else fp32."
    )
    bf16_attention: Bf16Attention = Field(
        default="auto",
        description="Attention kernel on the bf16 path: auto picks torch's fused kernel on CPUs with AMX "
        "and two explicit bf16 matmuls elsewhere (each the faster one there, measured); fp32 always "
        "uses the fused kernel.",
    )
    num_threads: int | None = Field(default=None, description="torch intra-op threads; None = torch default.")

    @model_validator(mode="after")
    def _overlap_fits(self) -> EncoderConfig:
        if self.window_overlap_tokens * 2 >= self.max_window_tokens - 2:
            raise ValueError("window_overlap_tokens must be less than half of max_window_tokens")
        return self


class AskConfig(BaseModel):
    """Which scored sentences are reported as asks."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Minimum ask probability; chosen on held-out dev data."
    )
    max_asks: int = Field(default=5, ge=1, description="At most this many asks are reported, best first.")
    intent_reads_ask_alone_too: bool = Field(
        default=True,
        description="In long messages, average each ask's intent read in its context with the same "
        "sentence read alone (one short extra pass over those ask sentences). Long background pulls "
        "an in-context reading off: on dev compositions (Banking77 dev utterances buried in CFPB dev "
        "background) intent accuracy went from 0.813 to 0.842 (bare: 0.905).",
    )
    intent_alone_weight: float = Field(
        default=0.75,
        gt=0.0,
        le=1.0,
        description="The reading alone's share when it is averaged with the reading in context (the "
        "rest is the context's). The context still counts, since it is what makes a terse ask readable, "
        "but hundreds of words of background pull its reading towards the background's topics. On 1,000 "
        "dev compositions (Banking77 dev utterances after 200-600 words of CFPB dev-split background) "
        "intent accuracy was 0.848 at 0.5, 0.857 at 0.75 and 0.848 at 1.0 (bare: 0.918).",
    )
    intent_alone_min_words: int = Field(
        default=100,
        ge=0,
        description="Only messages of at least this many words get the reading alone: in a short "
        "message the context is what makes a terse ask ('What do I do?') readable, and reading it "
        "alone only blurs a calibrated confidence (Banking77 test ECE 0.021 -> 0.065 without this).",
    )


class PipelineConfig(BaseModel):
    """Everything the pipeline needs besides weights; saved as ``config.json`` in the model folder."""

    model_config = ConfigDict(extra="forbid")

    normaliser: NormaliserConfig = Field(default_factory=NormaliserConfig, description="Normalise stage.")
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig, description="Segment stage.")
    encoder: EncoderConfig = Field(default_factory=EncoderConfig, description="Encoder windows and runtime.")
    asks: AskConfig = Field(default_factory=AskConfig, description="Ask reporting.")
    language: LanguageConfig = Field(default_factory=LanguageConfig, description="Language detection.")
    signals: SignalConfig = Field(default_factory=SignalConfig, description="Signal detection.")
