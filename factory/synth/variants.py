"""Variants: the prompt (and negative prompt) a synthetic image is generated with.

A *prompt set* (fog, rain, snow, night, dawn, ...) is a list of phrasings read from a YAML file
in ``configs/prompts/``. As in the LUMEN paper (Fig. 3), a phrasing is an *edit* of the
reference's caption rather than a free prompt: the clear caption ("a photo of a city street")
keeps describing the scene and weather words are put in by replacing words and/or appending a
phrase, so the text and the layout agree and only the weather changes. A phrasing may also
give a literal prompt.

A ``Variant`` is one (prompt set, phrasing, repeat) choice. Its name is part of the synthetic
sample key ``<source key>__<variant>``, so it must be a safe key part: letters, digits, '-' and
'_' only, and never '__' (the separator stays unambiguous).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from factory.config import ConfigError, check, load_config
from factory.data.sample import check_key

KEY_SEPARATOR = "__"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def check_variant_name(name: str) -> str:
    """A variant name becomes part of a webdataset key: reject anything that could break it."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or KEY_SEPARATOR in name or name.endswith("_"):
        raise ValueError(
            f"variant name {name!r} is unsafe: use letters, digits, '-' and single '_' only, starting "
            f"with a letter or digit, without '{KEY_SEPARATOR}' and not ending in '_'"
        )
    return name


def synthetic_key(source_key: str, variant: str) -> str:
    """The key of a synthetic sample: ``<source key>__<variant>`` (checked with ``check_key``)."""
    check_variant_name(variant)
    return check_key(f"{check_key(source_key)}{KEY_SEPARATOR}{variant}")


def split_synthetic_key(key: str) -> tuple[str, str]:
    """Inverse of ``synthetic_key``: (source key, variant name)."""
    source, sep, variant = key.rpartition(KEY_SEPARATOR)
    if not sep or not source or not variant:
        raise ValueError(f"key {key!r} is not a synthetic key '<source key>{KEY_SEPARATOR}<variant>'")
    return source, variant


# --------------------------------------------------------------------------------------------
# Prompt edits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptEdit:
    """Turn a caption into a variant prompt: replace words, then append a phrase.

    ``replace`` pairs are applied in order on whole words (``"city"`` does not match inside
    ``"velocity"``); every old word must occur in the caption, otherwise the edit would silently
    do nothing and the image would not show the weather. ``prompt`` (when set) ignores the
    caption and is used as is.
    """

    replace: tuple[tuple[str, str], ...] = ()
    append: str = ""
    prompt: str | None = None

    def apply(self, caption: str) -> str:
        if self.prompt is not None:
            return self.prompt
        text = caption.strip()
        for old, new in self.replace:
            pattern = r"(?<!\w)" + re.escape(old) + r"(?!\w)"

            def literal(_m: re.Match[str], new: str = new) -> str:
                return new

            text, n = re.subn(pattern, literal, text)
            if n == 0:
                raise ValueError(
                    f"prompt edit: word {old!r} to replace does not occur in caption {caption!r} "
                    f"(fix: use a phrasing with 'append', or a caption that contains {old!r})"
                )
        if self.append:
            text = f"{text.rstrip(' ,')}, {self.append.strip()}" if text else self.append.strip()
        if not text.strip():
            raise ValueError(f"prompt edit {self} gives an empty prompt for caption {caption!r}")
        return text


@dataclass(frozen=True)
class Variant:
    """One way to re-synthesise a reference: its name (key part), prompt and negative prompt.

    ``edit`` re-renders the prompt for a per-sample caption (``prompt_for``); ``prompt`` is the
    prompt for the prompt file's base caption and is what is used when a sample has no caption.
    """

    name: str
    prompt: str
    negative_prompt: str = ""
    prompt_set: str = ""
    phrasing: int = 0
    repeat: int = 0
    edit: PromptEdit | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_variant_name(self.name)
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"variant {self.name!r}: the prompt is empty (fix: give a non-empty prompt)")
        if not isinstance(self.negative_prompt, str):
            raise ValueError(f"variant {self.name!r}: negative_prompt must be a string")

    def prompt_for(self, caption: str | None = None) -> str:
        """The prompt for a reference whose caption is ``caption`` (None: the base caption)."""
        if caption is None or self.edit is None:
            return self.prompt
        return self.edit.apply(caption)


# --------------------------------------------------------------------------------------------
# Prompt files (configs/prompts/*.yaml)
# --------------------------------------------------------------------------------------------


@dataclass
class PhrasingSpec:
    """One phrasing in YAML: ``append`` and/or ``replace``, or a literal ``prompt``."""

    append: str = ""
    replace: dict[str, str] = field(default_factory=dict)
    prompt: str | None = None

    def __post_init__(self) -> None:
        if self.prompt is not None:
            check(bool(self.prompt.strip()), "prompt", "is empty (fix: write the prompt, or remove the key)")
            check(
                not self.append and not self.replace,
                "prompt",
                "a literal prompt cannot be combined with append/replace",
            )
        else:
            check(
                bool(self.append.strip()) or bool(self.replace),
                "append",
                "a phrasing needs 'append', 'replace' or 'prompt' (fix: add one of them)",
            )
        for old in self.replace:
            check(bool(old.strip()), "replace", "a word to replace is empty")


@dataclass
class PromptSetSpec:
    phrasings: list[PhrasingSpec]
    negative_prompt: str | None = None

    def __post_init__(self) -> None:
        check(len(self.phrasings) > 0, "phrasings", "a prompt set needs at least one phrasing")


@dataclass
class PromptFileSpec:
    """The YAML schema of ``configs/prompts/*.yaml``."""

    base_caption: str
    sets: dict[str, PromptSetSpec]
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        check(
            bool(self.base_caption.strip()), "base_caption", "is empty (fix: e.g. 'a photo of a city street')"
        )
        check(len(self.sets) > 0, "sets", "the file defines no prompt set")
        for name in self.sets:
            try:
                check_variant_name(name)
            except ValueError as e:
                raise ConfigError(f"sets.{name}: {e}") from None


@dataclass(frozen=True)
class PromptSet:
    """A named prompt set: its phrasings (edits) and its negative prompt."""

    name: str
    phrasings: tuple[PromptEdit, ...]
    negative_prompt: str


@dataclass(frozen=True)
class PromptSets:
    """All prompt sets of one file, and the base caption their edits apply to."""

    path: Path | None
    base_caption: str
    sets: dict[str, PromptSet]

    def __getitem__(self, name: str) -> PromptSet:
        if name not in self.sets:
            where = f" in {self.path}" if self.path else ""
            raise KeyError(f"unknown prompt set {name!r}{where}; available: {sorted(self.sets)}")
        return self.sets[name]

    def variants(
        self,
        names: Sequence[str] | None = None,
        *,
        phrasings: Literal["first", "all"] = "first",
        repeats: int = 1,
    ) -> list[Variant]:
        """Expand prompt sets into variants.

        ``phrasings="first"`` gives one variant per set named after the set (``fog``);
        ``"all"`` gives one per phrasing (``fog-p0``, ``fog-p1``, ...). ``repeats > 1`` adds
        ``-r0``, ``-r1``, ...: the same prompt with different seeds (the seed hashes the name).
        """
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if phrasings not in ("first", "all"):
            raise ValueError(f"phrasings must be 'first' or 'all', got {phrasings!r}")
        names = list(self.sets) if names is None else list(names)
        if not names:
            raise ValueError("no prompt set requested (fix: list at least one set name)")
        if len(set(names)) != len(names):
            raise ValueError(f"prompt sets requested twice: {names}")
        out: list[Variant] = []
        for set_name in names:
            ps = self[set_name]
            edits = ps.phrasings if phrasings == "all" else ps.phrasings[:1]
            for p, edit in enumerate(edits):
                for r in range(repeats):
                    name = set_name
                    if phrasings == "all":
                        name += f"-p{p}"
                    if repeats > 1:
                        name += f"-r{r}"
                    out.append(
                        Variant(
                            name=name,
                            prompt=edit.apply(self.base_caption),
                            negative_prompt=ps.negative_prompt,
                            prompt_set=set_name,
                            phrasing=p,
                            repeat=r,
                            edit=edit,
                        )
                    )
        return out


def prompt_sets_from_spec(spec: PromptFileSpec, path: Path | None = None) -> PromptSets:
    """Build the prompt sets and check that every edit applies to the base caption."""
    sets: dict[str, PromptSet] = {}
    for name, s in spec.sets.items():
        edits = tuple(PromptEdit(tuple(p.replace.items()), p.append, p.prompt) for p in s.phrasings)
        for i, edit in enumerate(edits):
            try:
                edit.apply(spec.base_caption)
            except ValueError as e:
                where = f"{path}: " if path else ""
                raise ConfigError(f"{where}sets.{name}.phrasings[{i}]: {e}") from None
        neg = spec.negative_prompt if s.negative_prompt is None else s.negative_prompt
        sets[name] = PromptSet(name, edits, neg)
    return PromptSets(path, spec.base_caption, sets)


def load_prompt_sets(path: str | Path) -> PromptSets:
    """Read and validate a prompt file (``configs/prompts/*.yaml``); errors name file and key."""
    path = Path(path)
    return prompt_sets_from_spec(load_config(PromptFileSpec, path), path)


@dataclass
class VariantsConfig:
    """Which variants a job generates (a field of the generation job's config)."""

    prompts: Path = Path("configs/prompts/weather.yaml")
    sets: list[str] = field(default_factory=lambda: ["fog", "rain", "snow", "night"])
    phrasings: Literal["first", "all"] = "first"
    repeats: int = 1

    def __post_init__(self) -> None:
        check(self.repeats >= 1, "repeats", f"must be >= 1, got {self.repeats}")
        check(len(self.sets) > 0, "sets", "list at least one prompt set (e.g. [fog, rain, snow, night])")
        check(len(set(self.sets)) == len(self.sets), "sets", f"a set is listed twice: {self.sets}")

    def build(self) -> list[Variant]:
        """Load the prompt file and expand the requested sets (unknown set -> ConfigError)."""
        prompt_sets = load_prompt_sets(self.prompts)
        unknown = [s for s in self.sets if s not in prompt_sets.sets]
        if unknown:
            raise ConfigError(
                f"sets: unknown prompt set {unknown[0]!r}; {self.prompts} defines {sorted(prompt_sets.sets)}"
            )
        return prompt_sets.variants(self.sets, phrasings=self.phrasings, repeats=self.repeats)


__all__ = [
    "KEY_SEPARATOR",
    "PromptEdit",
    "PromptFileSpec",
    "PromptSet",
    "PromptSets",
    "Variant",
    "VariantsConfig",
    "check_variant_name",
    "load_prompt_sets",
    "prompt_sets_from_spec",
    "split_synthetic_key",
    "synthetic_key",
]
