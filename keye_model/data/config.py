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
SYNTHETIC_KINDS: tuple[str, ...] = ("chart", "table", "document", "receipt", "math", "arithmetic")


@dataclass
class FilterConfig:
    """Thresholds of the per-sample filters."""

    max_image_pixels: int = field(
        100_000_000,
        help="Decompression-bomb cap: images whose header claims more pixels are rejected before "
        "decoding (also set as PIL.Image.MAX_IMAGE_PIXELS in every worker).",
    )
    decode_side: int = field(
        224,
        help="Pixels kept per side of a one-image sample's decoded copy (for pHash and CLIP): "
        "JPEGs decode at the libjpeg scale (1/2..1/8) that keeps at least this many, other "
        "formats are box-reduced to it; every byte is still decoded, so corrupt and truncated "
        "files are caught as at full size. 224 hashes the test photos' near-copies as close as "
        "a full decode does, at about half the cost for 640x480 JPEGs. 0 keeps full size. "
        "pHash bits depend on it: compare signatures made with one value only.",
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
        24,
        help="Width b of the multi-index hashing bands (Norouzi et al., 2012). A candidate bucket "
        "holds ~n / 2^(b-1) random codes besides true matches, so wider bands keep the work linear "
        "for larger corpora: 24 gives ~0.06 strangers per bucket at 10^6 images. The bands must fit "
        "the code: (radius // (s + 1) + 1) * b <= phash_size^2 picks the per-band radius s.",
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
    video_frames: int = field(
        4,
        help="Frames hashed per video for video near-duplicates (at evenly spaced times, so "
        "re-encoded or resized copies are hashed at the same moments).",
    )
    video_min_match: float = field(
        0.75,
        help="Two videos are near-duplicates when at least this share of their aligned frame "
        "hashes lie within phash_radius (one differing frame of four may be a cut or a fade).",
    )
    max_bucket: int = field(
        64,
        help="Hot-bucket cap: inside a candidate bucket each sample is compared with the next "
        "max_bucket samples (input order) only, so a bucket of m near-identical samples costs "
        "m * max_bucket checks, not m^2 / 2. Capped buckets are counted in the manifest; "
        "identical hashes never count against it (they are joined before bucketing).",
    )
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


ENGINES: tuple[str, ...] = ("local", "ray")


@dataclass
class RayJobConfig:
    """The KubeRay ``RayJob`` that runs curation on a cluster (engine=ray from the KFP component)."""

    enabled: bool = field(
        False,
        help="In the KFP curate component: submit a RayJob (a Ray cluster that runs the stage and "
        "is torn down after) instead of curating inside the component's pod. Needs engine=ray.",
    )
    namespace: str = field("kubeflow", help="Namespace of the RayJob and its pods.")
    image: str = field(
        "", help="Image of the head and workers ('' = components.images.TOOLS_IMAGE)."
    )
    ray_version: str = field("2.60.0", help="Ray version in the image (KubeRay reads it).")
    head_cpu: str = field("4", help="CPU of the head pod (Kubernetes quantity).")
    head_memory: str = field(
        "64Gi",
        help="Memory of the head pod: the driver holds the duplicate edges for connected "
        "components (~50 bytes per edge; see keye_model/data/README.md).",
    )
    workers: int = field(4, help="Worker pods.")
    worker_cpu: str = field("16", help="CPU of each worker pod (Kubernetes quantity).")
    worker_memory: str = field("64Gi", help="Memory of each worker pod (Kubernetes quantity).")
    service_account: str = field(
        "", help="Service account of the Ray pods (S3 access through IRSA or similar)."
    )
    env_secrets: list[str] = field(
        default_factory=lambda: ["keye-s3", "keye-mlflow"],
        help="Secrets whose keys become the Ray pods' environment (optional; credentials are "
        "never written into the RayJob object).",
    )
    timeout_s: float = field(
        3 * 24 * 3600.0, help="activeDeadlineSeconds of the RayJob; the stage fails after it."
    )
    poll_s: float = field(10.0, help="Seconds between status polls while following the job.")


@dataclass
class CurateConfig:
    """Data curation: filtering, dedup, re-sampling and synthesis (REFERENCE §2.1)."""

    num_synthetic: int = field(
        2000, help="Samples drawn from the built-in synthesizers when no input is given."
    )
    synthetic_kinds: list[str] = field(
        # arithmetic is the tiny recipe's learnable RL task; the published mix does not need it.
        default_factory=lambda: [k for k in SYNTHETIC_KINDS if k != "arithmetic"],
        help=f"Synthesizers used round-robin when no input is given: any of {list(SYNTHETIC_KINDS)}.",
    )
    synthetic_max_side: int = field(640, help="Longest side of synthetic images in pixels.")
    shard_size: int = field(
        1000,
        help="Maximum samples per output shard, and samples per synthetic work unit. A work unit is "
        "one input file (or synthetic block); its survivors fill shards <unit>-<part>.tar.",
    )
    seed: int = field(0, help="Seed for synthesis and re-sampling; a run is reproducible from it.")
    num_workers: int = field(
        1,
        help="Worker processes (engine=local) or Ray workers (engine=ray) for scanning, "
        "de-duplicating and writing (0 = all cores of this machine or Ray cluster).",
    )
    engine: str = field(
        "local",
        help=f"Where the phases run: one of {list(ENGINES)}. 'local' is this process with forked "
        "workers; 'ray' runs scan, dedup, mixture and write as Ray Data jobs. Both take their "
        "decisions from the same code and write byte-identical output.",
    )
    ray_address: str = field(
        "",
        help="engine=ray: '' starts a private Ray on this machine (num_workers CPUs, no "
        "dashboard); 'auto' joins the Ray cluster this process runs in (a RayJob's entrypoint); "
        "else a cluster address such as ray://head:10001.",
    )
    ray_shuffle_min: int = field(
        1 << 16,
        help="engine=ray: below this many signatures the dedup runs as one Ray task instead of "
        "shuffles (each shuffle costs ~0.2 s of task overhead; a few thousand rows take less to "
        "dedup in one place). The decisions are the same either way; 0 always shuffles.",
    )
    ray_round_bytes: int = field(
        0,
        help="engine=ray: most bytes of route rows one dedup shuffle moves; a kind with more is "
        "shuffled in rounds of its bands (same decisions, less spilling). 0: half the Ray "
        "cluster's object store.",
    )
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
    rayjob: RayJobConfig = field(
        default_factory=RayJobConfig, help="KubeRay RayJob of engine=ray on a cluster."
    )

    def working_side(self) -> int:
        """The fewest pixels per side the operators need of a decoded image (pHash, CLIP)."""
        return max(4 * self.dedup.phash_size, 224 if "clip_score" in self.operators else 0)

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
        side = self.filters.decode_side
        if side < 0 or 0 < side < self.working_side():
            raise ValueError(
                f"curate.filters.decode_side: {side} is below the {self.working_side()} px the "
                "configured operators need (pHash resamples from 4 * dedup.phash_size px, CLIP "
                "from 224); raise it, or set 0 (full size)"
            )
        if not 4 <= self.dedup.phash_band_bits <= min(32, self.dedup.phash_size**2):
            raise ValueError("curate.dedup.phash_band_bits: must lie in [4, min(32, phash_size^2)]")
        if not 1 <= self.dedup.video_frames <= 16:
            raise ValueError(
                f"curate.dedup.video_frames: must lie in [1, 16], got {self.dedup.video_frames}"
            )
        if not 0.0 < self.dedup.video_min_match <= 1.0:
            raise ValueError("curate.dedup.video_min_match: must lie in (0, 1]")
        if self.dedup.max_bucket < 1:
            raise ValueError(f"curate.dedup.max_bucket: must be >= 1, got {self.dedup.max_bucket}")
        if self.engine not in ENGINES:
            raise ValueError(f"curate.engine: {self.engine!r} is not one of {list(ENGINES)}")
        if self.rayjob.enabled and self.engine != "ray":
            raise ValueError(
                "curate.rayjob.enabled: a RayJob runs engine=ray; set curate.engine=ray"
            )
        for name in ("ray_shuffle_min", "ray_round_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"curate.{name}: must be >= 0, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"curate.num_workers: must be >= 0, got {self.num_workers}")
        if self.mixture.max_repeat < 1.0:
            raise ValueError(
                f"curate.mixture.max_repeat: must be >= 1, got {self.mixture.max_repeat}"
            )
