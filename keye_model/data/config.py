"""Configuration of the data curation stage (owned by ``keye_model.data``).

The stage filters, de-duplicates and re-samples a multimodal pool and adds synthetic structured
VQA (REFERENCE §2.1). Every knob lives here; presets in ``keye_model.recipe`` set tiny vs 671B
values, YAML files and ``--set curate.x=y`` flags override them.
"""

from __future__ import annotations

from dataclasses import dataclass

from keye_model.config_utils import field

# Mixture categories of the Keye pretraining pool (REFERENCE §2.1; the 1.5 report's data mix).
CATEGORIES: tuple[str, ...] = (
    "caption",
    "ocr",
    "chart",
    "table",
    "document",
    "math_cot",
    "interleaved",
    "video",
)

# Per-sample operators run in parallel while scanning; dedup operators need the whole corpus and
# run afterwards in one global pass, in the order listed.
FILTER_OPERATORS: tuple[str, ...] = (
    "decode",
    "image_size",
    "text_quality",
    "language",
    "clip_score",
)
DEDUP_OPERATORS: tuple[str, ...] = ("exact_dedup", "near_dup_image", "near_dup_text")
SYNTHETIC_KINDS: tuple[str, ...] = ("chart", "table", "document", "receipt", "math")


@dataclass
class FilterConfig:
    """Thresholds of the per-sample filters."""

    max_image_pixels: int = field(
        100_000_000,
        help="Decompression-bomb cap: images whose header claims more pixels are rejected before "
        "decoding (also set as PIL.Image.MAX_IMAGE_PIXELS in every worker).",
    )
    min_side: int = field(
        28, help="Minimum image side in pixels (one 28-px merged patch, REFERENCE §1.1)."
    )
    max_aspect: float = field(
        200.0,
        help="Maximum long/short side ratio; smart_resize refuses ratios above 200 (REFERENCE §1.1).",
    )
    min_pixels: int = field(
        3136, help="smart_resize min_pixels (4 image tokens) used for token accounting."
    )
    max_pixels: int = field(
        16384 * 28 * 28,
        help="smart_resize max_pixels (16384 tokens, model card) used for token accounting.",
    )
    min_text_chars: int = field(
        8, help="Minimum characters of a sample's text (caption or QA turns)."
    )
    max_text_chars: int = field(60_000, help="Maximum characters of a sample's text.")
    max_repetition: float = field(
        0.35,
        help="Reject text whose most frequent word 3-gram covers more than this share of 3-grams.",
    )
    min_alnum_ratio: float = field(
        0.55, help="Minimum share of letters/digits (any script) among non-space characters."
    )
    languages: list[str] = field(
        default_factory=lambda: ["en", "zh"],
        help="Languages kept by the language-id filter: lid.176 labels (lower-case ISO 639-1, "
        "else 639-3; 'zh' covers every Chinese script).",
    )
    min_lang_chars: int = field(
        24, help="Language id runs only on texts at least this long (short strings are unreliable)."
    )
    clip_model: str = field(
        "",
        help="Local path of a CLIP-style model for image-text similarity; empty disables the scorer.",
    )
    min_clip_score: float = field(
        0.0, help="Reject pairs whose image-text cosine similarity is below this."
    )


@dataclass
class DedupConfig:
    """Exact and near-duplicate detection."""

    phash_size: int = field(
        16,
        help="Perceptual hash side (bits = side^2). 16 (256 bits) separates look-alike photos that "
        "the 64-bit hash merges (fixtures img_pair_1/2 differ by 4 of 64 bits).",
    )
    phash_radius: int = field(
        18, help="Hamming radius (of phash_size^2 bits) under which two images are near-duplicates."
    )
    phash_band_bits: int = field(
        20,
        help="Width of the multi-index hashing bands (Norouzi et al., 2012). Buckets hold ~n / 2^bits "
        "codes, so wider bands keep queries cheap for larger corpora; 20 suits up to ~10^6 images.",
    )
    exempt_synthetic: bool = field(
        True,
        help="Skip near-duplicate checks for synthetic samples: they are unique by construction "
        "(distinct source data) while sharing layouts that perceptual hashes see as alike.",
    )
    minhash_threshold: float = field(0.8, help="Jaccard threshold of the text MinHash LSH.")
    minhash_num_perm: int = field(64, help="MinHash permutations.")
    shingle_words: int = field(3, help="Word n-gram size of text shingles.")
    min_words: int = field(8, help="Texts shorter than this many words are not near-dup checked.")
    text_categories: list[str] = field(
        default_factory=lambda: ["caption", "interleaved", "document", "ocr"],
        help="Categories whose text is near-dup checked (templated VQA questions would all collide).",
    )


@dataclass
class MixtureConfig:
    """Re-sampling to a target category mixture under a token budget."""

    weights: dict[str, float] = field(
        default_factory=lambda: {
            "caption": 0.25,
            "ocr": 0.15,
            "chart": 0.12,
            "table": 0.1,
            "document": 0.1,
            "math_cot": 0.13,
            "interleaved": 0.1,
            "video": 0.05,
        },
        help="Target token share per category; renormalised over the categories present in the data.",
    )
    token_budget: int = field(
        0, help="Total tokens to emit; 0 keeps the kept pool's total and only rebalances it."
    )
    max_repeat: float = field(
        2.0, help="Cap on how often a scarce category's samples may be repeated to meet its share."
    )
    enabled: bool = field(
        True, help="Re-sample to the mixture; off keeps every filtered sample once."
    )


@dataclass
class CurateConfig:
    """Data curation: filtering, dedup, re-sampling and synthesis (REFERENCE §2.1)."""

    num_synthetic: int = field(
        2000, help="Samples drawn from the built-in synthesizers when no input is given."
    )
    synthetic_kinds: list[str] = field(
        default_factory=lambda: list(SYNTHETIC_KINDS),
        help=f"Synthesizers used round-robin when no input is given: any of {list(SYNTHETIC_KINDS)}.",
    )
    synthetic_max_side: int = field(640, help="Longest side of synthetic images in pixels.")
    shard_size: int = field(
        1000,
        help="Maximum samples per output shard, and samples per synthetic work unit. A work unit is "
        "one input file (or synthetic block); its survivors fill shards <unit>-<part>.tar.",
    )
    seed: int = field(0, help="Seed for synthesis and re-sampling; a run is reproducible from it.")
    num_workers: int = field(1, help="Worker processes for scanning and writing (0 = all cores).")
    operators: list[str] = field(
        default_factory=lambda: [*FILTER_OPERATORS[:4], *DEDUP_OPERATORS],
        help=f"Operators in order; filters {list(FILTER_OPERATORS)} run per sample, dedup "
        f"{list(DEDUP_OPERATORS)} run in a global pass after them.",
    )
    default_category: str = field("caption", help="Category of input samples that do not name one.")
    tokenizer: str = field(
        "tiny", help="Tokenizer for text-token accounting: 'tiny' or a local path."
    )
    rejected_bytes_max: int = field(
        65536,
        help="Rejected samples up to this size keep their original bytes (base64) in rejected/.",
    )
    keep_work: bool = field(
        False, help="Keep <output>/work/ (staging shards, signatures) after success."
    )
    filters: FilterConfig = field(
        default_factory=FilterConfig, help="Per-sample filter thresholds."
    )
    dedup: DedupConfig = field(default_factory=DedupConfig, help="Duplicate detection.")
    mixture: MixtureConfig = field(default_factory=MixtureConfig, help="Category re-sampling.")

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        known = set(FILTER_OPERATORS) | set(DEDUP_OPERATORS)
        for op in self.operators:
            if op not in known:
                raise ValueError(
                    f"curate.operators: unknown operator {op!r}; known: {sorted(known)}"
                )
        if "decode" not in self.operators and any(
            op in self.operators for op in ("image_size", "clip_score", "near_dup_image")
        ):
            raise ValueError("curate.operators: image operators need 'decode' listed first")
        if "clip_score" in self.operators and not self.filters.clip_model:
            raise ValueError(
                "curate.filters.clip_model: the clip_score operator needs a local model path"
            )
        for kind in self.synthetic_kinds:
            if kind not in SYNTHETIC_KINDS:
                raise ValueError(
                    f"curate.synthetic_kinds: unknown kind {kind!r}; known: {list(SYNTHETIC_KINDS)}"
                )
        for cat, weight in self.mixture.weights.items():
            if cat not in CATEGORIES:
                raise ValueError(
                    f"curate.mixture.weights: unknown category {cat!r}; known: {list(CATEGORIES)}"
                )
            if weight < 0:
                raise ValueError(f"curate.mixture.weights.{cat}: must be >= 0, got {weight}")
        if self.default_category not in CATEGORIES:
            raise ValueError(
                f"curate.default_category: {self.default_category!r} not in {list(CATEGORIES)}"
            )
        if self.shard_size < 1:
            raise ValueError(f"curate.shard_size: must be >= 1, got {self.shard_size}")
        if not 1.0 <= self.filters.max_aspect <= 200.0:
            raise ValueError("curate.filters.max_aspect: must lie in [1, 200] (smart_resize limit)")
        if not 4 <= self.dedup.phash_band_bits <= min(32, self.dedup.phash_size**2):
            raise ValueError("curate.dedup.phash_band_bits: must lie in [4, min(32, phash_size^2)]")
        if self.mixture.max_repeat < 1.0:
            raise ValueError(
                f"curate.mixture.max_repeat: must be >= 1, got {self.mixture.max_repeat}"
            )
