"""Which language a message is in, so that messages the model cannot read go to a person.

The encoder and every rule were trained and written for English. A Spanish complaint routed by
them gets a confident-looking but meaningless tier; ROUTING_POLICY §5 says it must go to human
review with its language reported. We use py3langid (BSD, a naive Bayes model over byte n-grams
that ships as an LZMA-compressed npz read with ``allow_pickle=False``), restricted to the
languages a helpdesk actually receives, because restricting the candidates is what keeps short
messages ("thx", "card not working") from being called Croatian.

Loading the identifier takes about half a second (LZMA decompression, which releases the GIL),
so it happens once per process on a background thread, started by ``start_loading_identifier``
as the very first step of building a pipeline; the first message waits only for what is left.
"""

from __future__ import annotations

import copy
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


class _IdentifierLoad:
    """The process-wide py3langid model, loaded once on a background thread."""

    def __init__(self) -> None:
        self.identifier: Any = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load, name="hearken-langid", daemon=True).start()

    def _load(self) -> None:
        try:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            self.identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        except Exception as exc:  # reported on first use, where it can name the fix
            self.error = exc
        finally:
            self.ready.set()

    def restricted_to(self, candidates: list[str]) -> Any:
        """A detector-private view of the shared model restricted to ``candidates``.

        ``set_languages`` only rebinds a few attributes to slices of the full model, so a shallow
        copy keeps detectors with different candidate lists from disturbing each other.
        """
        self.start()
        self.ready.wait()
        if self.identifier is None:
            return None
        identifier = copy.copy(self.identifier)
        identifier.set_languages(candidates)
        return identifier


_SHARED_LOAD = _IdentifierLoad()


def start_loading_identifier() -> None:
    """Begin loading the language identifier in the background (idempotent, returns at once)."""
    _SHARED_LOAD.start()


class LanguageDetector:
    """Tells the language of a text; the identifier loads in the background."""

    def __init__(self, config: LanguageConfig | None = None) -> None:
        self.config = config or LanguageConfig()
        self._identifier: Any = None
        if self.config.enabled:
            start_loading_identifier()

    def detect(self, text: str) -> tuple[str, float | None]:
        """``(language, probability)``; probability is None when the text was too short to tell."""
        if not self.config.enabled:
            return self.config.default, None
        cleaned = _TOKENS.sub(" ", text)
        if len(_LETTERS.findall(cleaned)) < self.config.min_letters:
            return self.config.default, None
        if self._identifier is None:
            self._identifier = _SHARED_LOAD.restricted_to(self.config.candidates)
        if self._identifier is None:
            from pipeline.errors import ConfigError

            raise ConfigError(
                f"The language identifier could not be loaded ({_SHARED_LOAD.error}).",
                fix="reinstall Hearken's dependencies (`pip install -e .` installs py3langid), or set "
                "language.enabled: false in the pipeline config",
            )
        language, probability = self._identifier.classify(cleaned)
        probability = float(probability)
        if language != self.config.default and probability < self.config.min_probability:
            return self.config.default, probability
        return str(language), probability
