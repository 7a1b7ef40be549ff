"""Which language a message is in, so that messages the model cannot read go to a person.

The encoder and every rule were trained and written for English. A Spanish complaint routed by
them gets a confident-looking but meaningless tier; ROUTING_POLICY §5 says it must go to human
review with its language reported. We use py3langid (BSD, a naive Bayes model over byte n-grams
that ships as an LZMA-compressed npz read with ``allow_pickle=False``), restricted to the
languages a helpdesk actually receives, because restricting the candidates is what keeps short
messages ("thx", "card not working") from being called Croatian.

Loading the identifier takes a second or two (decompression), so it happens on a background
thread started when the pipeline is built; the first message waits only for what is left.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

_LETTERS = re.compile(r"[^\W\d_]", re.UNICODE)
_TOKENS = re.compile(r"\[(?:masked|date)\]|\bX{2,}\b|https?://\S+|\S+@\S+")


class LanguageConfig(BaseModel):
    """How the language is told, and when the text is too short to tell."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Detect the language (else every message is `default`).")
    default: str = Field(default="en", description="Language assumed when the text is too short to tell.")
    candidates: list[str] = Field(
        default_factory=lambda: [
            *("en", "es", "fr", "de", "pt", "it", "nl", "pl", "ro", "cs", "sv", "da", "no", "fi", "hu"),
            *("tr", "ru", "uk", "el", "ar", "he", "fa", "hi", "bn", "ur", "zh", "ja", "ko", "vi", "th"),
            *("id", "ms", "tl", "sw"),
        ],
        description="Languages the identifier may answer (ISO 639-1); fewer candidates, fewer confusions.",
    )
    min_letters: int = Field(
        default=20, ge=0, description="Below this many letters, assume `default` (too short to tell)."
    )
    min_probability: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="A language other than `default` is reported only at or above this probability.",
    )


class LanguageDetector:
    """Tells the language of a text; the identifier loads in the background."""

    def __init__(self, config: LanguageConfig | None = None) -> None:
        self.config = config or LanguageConfig()
        self._identifier: Any = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        if self.config.enabled:
            threading.Thread(target=self._load, name="hearken-langid", daemon=True).start()
        else:
            self._ready.set()

    def _load(self) -> None:
        try:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            identifier.set_languages(self.config.candidates)
            self._identifier = identifier
        except Exception as exc:  # reported on first use, where it can name the fix
            self._error = exc
        finally:
            self._ready.set()

    def detect(self, text: str) -> tuple[str, float | None]:
        """``(language, probability)``; probability is None when the text was too short to tell."""
        if not self.config.enabled:
            return self.config.default, None
        cleaned = _TOKENS.sub(" ", text)
        if len(_LETTERS.findall(cleaned)) < self.config.min_letters:
            return self.config.default, None
        self._ready.wait()
        if self._identifier is None:
            from pipeline.errors import ConfigError

            raise ConfigError(
                f"The language identifier could not be loaded ({self._error}).",
                fix="reinstall Hearken's dependencies (`pip install -e .` installs py3langid), or set "
                "language.enabled: false in the pipeline config",
            )
        language, probability = self._identifier.classify(cleaned)
        probability = float(probability)
        if language != self.config.default and probability < self.config.min_probability:
            return self.config.default, probability
        return str(language), probability
