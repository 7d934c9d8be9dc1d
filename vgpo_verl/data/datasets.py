"""The datasets of the VGPO paper: where each lives, which columns hold what, and its prompt template.

Sources. Training and validation are the VGPO authors' (their ``train_vgpo_7B.sh``, github
wzb-bupt/VGPO): ``PAPOGalaxy/PAPO_ViRL39K_train`` (38,870 rows) and ``PAPOGalaxy/PAPO_MMK12_test``
(2,000 rows; its one split is called ``train``, which is what their EasyR1 loader reads, and is
written here as ``mmk12/test.parquet``). The original releases stay available as ``virl39k_tiger``
(TIGER-Lab/ViRL39K: image paths into ``images.zip``, read from the zip or an unzipped folder) and
``mmk12_fanqingm`` (FanqingM/MMK12, split ``test``). Benchmarks take their question, answer and image
from the fields Look-Back's ``eval/utils/data_loaders.py`` (github PKU-YuanGroup/Look-Back) reads, or
from the dataset card where Look-Back has no loader; each spec below says which.

Prompt templates (``--prompt``; each dataset has its default):
    math_format_perception  the VGPO authors' training template
                            (examples/format_prompt/math_format_perception.jinja): the trimmed question,
                            a blank line, then the <think>/\\boxed{} instruction. Training sets.
    math                    the trimmed question, a space, then the upper-case instruction of their
                            examples/format_prompt/math.jinja, which is also the default
                            ``--system-prompt`` Look-Back's eval/main.py appends (``--version back``).
                            Benchmarks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

# The instruction texts of the two templates (see the module doc), and what joins them to the question.
PERCEPTION_INSTRUCTION = (
    "You first think through the reasoning process as an internal monologue, enclosed within <think> </think> "
    "tags. Then, provide your final answer enclosed within \\boxed{}."
)
MATH_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer MUST BE put in \\boxed{}."
)
PROMPTS: dict[str, tuple[str, str]] = {
    "math_format_perception": ("\n\n", PERCEPTION_INSTRUCTION),
    "math": (" ", MATH_INSTRUCTION),
}


def render_prompt(template: str, question: str) -> str:
    """The template applied to the question: ``{{ content | trim }}<separator><instruction>``."""
    try:
        separator, instruction = PROMPTS[template]
    except KeyError:
        raise ValueError(f"unknown prompt template {template!r}; the templates are {sorted(PROMPTS)}") from None
    return f"{question.strip()}{separator}{instruction}"


# Spec: training images between 262,144 and 4,194,304 pixels; the evaluation protocol 262,144..1,000,000.
TRAIN_PIXELS = (262_144, 4_194_304)
EVAL_PIXELS = (262_144, 1_000_000)

# The question of a row whose question is printed in the image only (MMMU-Pro's vision setting). [ours]
QUESTION_IN_IMAGE = "Answer the question shown in the image."


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives, which of its columns hold what (first name present wins), and its prompt."""

    name: str
    hf_name: str | None
    default_split: str
    pixels: tuple[int, int]
    prompt: str  # a PROMPTS key
    source_note: str  # the card or loader this spec follows
    id_cols: tuple[str, ...] = ("id", "qid", "pid", "ID", "sample_index", "index")
    question_cols: tuple[str, ...] = ("problem", "question")
    answer_cols: tuple[str, ...] = ("answer",)
    image_cols: tuple[str, ...] = ("images", "image", "decoded_image", "image_path")
    # Columns that are ALL images of one row, in order (MMMU's image_1..image_7); used when present.
    all_image_cols: tuple[str, ...] = ()
    # A column of options to list after the question as (A) ... (MMMU-Pro's standard setting only).
    options_col: str | None = None
    # The answer is the text of the right choice in this column; the letter of it is the ground truth.
    answer_is_choice_of: str | None = None
    # The answer is written `\\boxed{x}` (TIGER-Lab ViRL39K card): the ground truth is x.
    answer_boxed: bool = False
    # Builds the question from the row when it is not one column (WeMath's Look-Back format).
    question_from_row: Callable[[dict], str] | None = None
    id_from_row: Callable[[dict], str] | None = None
    # Rows in a chat layout ({"messages": [user, assistant], "images": [...]}, Look-Back's GeoMath loader).
    chat_rows: bool = False
    meta_cols: tuple[str, ...] = ()
    hf_config: str | None = None
    # The question is printed in the image only: the prompt asks to answer it (QUESTION_IN_IMAGE).
    question_in_image: bool = False
    # Why `--hf-name` cannot work for this release (then --input is required).
    hub_refusal: str | None = None
    # Output file name of an input split, where they differ (PAPO_MMK12_test's `train` split is a test set).
    output_split: dict[str, str] = dataclasses.field(default_factory=dict)
    # Benchmark subsets (rows outside are counted as `outside_subset`, not as bad rows).
    subset: Callable[[dict], bool] | None = None
    subset_doc: str = ""


def _mathverse_vision_only(row: dict) -> bool:
    return str(row.get("problem_version", "")).strip().lower() == "vision only"


def _wemath_question(row: dict) -> str:
    # Look-Back eval/utils/data_loaders.py load_wemath_dataset, verbatim layout.
    return f"{row['question']}\n\nOptions: {row['option']}\nYour final answer must be one of A, B, C, or D."


def _wemath_id(row: dict) -> str:
    return f"{row['ID']}@{row['key']}"  # Look-Back's id: a problem's ID repeats across its steps


_TRAINING = dict(pixels=TRAIN_PIXELS, prompt="math_format_perception")
_BENCHMARK = dict(pixels=EVAL_PIXELS, prompt="math")

# Hub names as published; `--hf-name` overrides, `--input` needs none.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("virl39k", "PAPOGalaxy/PAPO_ViRL39K_train", "train", **_TRAINING,
                    source_note="card PAPOGalaxy/PAPO_ViRL39K_train: problem (with <image> markers), answer, "
                                "images (list of image bytes); the authors' train_vgpo_7B.sh TRAIN_FILE"),
        DatasetSpec("virl39k_tiger", None, "train", **_TRAINING, answer_boxed=True,
                    question_cols=("question",), image_cols=("image",), meta_cols=("category", "source"),
                    hub_refusal="TIGER-Lab/ViRL39K's `image` column holds paths into images.zip, which "
                                "`datasets` cannot load: download the snapshot and pass --input (the zip is read "
                                "in place), or use `virl39k` (the authors' PAPO release)",
                    source_note="card TIGER-Lab/ViRL39K: question, answer (always \\boxed{}), image (paths into "
                                "images.zip), qid, category, source"),
        DatasetSpec("mmk12", "PAPOGalaxy/PAPO_MMK12_test", "train", **_TRAINING, output_split={"train": "test"},
                    source_note="card PAPOGalaxy/PAPO_MMK12_test (MMK12's test set as PAPO adapted it; problem, "
                                "answer, images); the authors' train_vgpo_7B.sh VAL_FILE, read by EasyR1 as split "
                                "train"),
        DatasetSpec("mmk12_fanqingm", "FanqingM/MMK12", "test", **_TRAINING, meta_cols=("subject",),
                    source_note="card FanqingM/MMK12: id, subject, question, answer, image; split test"),
        DatasetSpec("geo3k", "hiyouga/geometry3k", "test", **_BENCHMARK,
                    source_note="card hiyouga/geometry3k: problem (with <image>), answer, images"),
        DatasetSpec("mathvista", "AI4Math/MathVista", "testmini", **_BENCHMARK, question_cols=("query",),
                    answer_is_choice_of="choices", meta_cols=("pid", "question_type", "answer_type", "precision", "unit"),
                    source_note="Look-Back load_mathvista_dataset: question = query (it carries the hint, unit, "
                                "precision and choices), a multi_choice answer becomes the letter of its choice"),
        DatasetSpec("mathverse", "AI4Math/MathVerse", "testmini", **_BENCHMARK, hf_config="testmini",
                    question_cols=("query_cot",), meta_cols=("sample_index", "problem_index", "problem_version",
                                                             "question_type"),
                    source_note="Look-Back load_mathverse_dataset: testmini (all five versions, 3,940 rows), "
                                "question = query_cot, answer"),
        DatasetSpec("mathverse_vision", "AI4Math/MathVerse", "testmini", **_BENCHMARK, hf_config="testmini",
                    question_cols=("query_cot",), meta_cols=("sample_index", "problem_index", "problem_version",
                                                             "question_type"),
                    subset=_mathverse_vision_only, subset_doc="problem_version == 'Vision Only'",
                    source_note="as mathverse, the Vision Only version"),
        DatasetSpec("wemath", "We-Math/We-Math", "testmini", **_BENCHMARK, question_from_row=_wemath_question,
                    id_from_row=_wemath_id, meta_cols=("ID", "key", "knowledge concept", "question number"),
                    source_note="Look-Back load_wemath_dataset: question + options + 'one of A, B, C, or D', "
                                "id = ID@key; ID and key kept for WeMath's 4-dimensional score"),
        DatasetSpec("logicvista", "lscpku/LogicVista", "test", **_BENCHMARK, meta_cols=("skill",),
                    source_note="card lscpku/LogicVista: question (options inside), answer (a letter or several, "
                                "'A, C'; graded as is), image"),
        DatasetSpec("mmmu_pro", "MMMU/MMMU_Pro", "test", **_BENCHMARK, hf_config="standard (10 options)",
                    all_image_cols=tuple(f"image_{i}" for i in range(1, 8)), options_col="options",
                    meta_cols=("subject", "topic_difficulty"),
                    source_note="card MMMU/MMMU_Pro 'standard (10 options)': question, options (A-J, may hold "
                                "<image n>), answer letter, image_1..image_7"),
        DatasetSpec("mmmu_pro_vision", "MMMU/MMMU_Pro", "test", **_BENCHMARK, hf_config="vision",
                    question_in_image=True, meta_cols=("subject",),
                    source_note="card MMMU/MMMU_Pro 'vision': question and options are in the image (no text is "
                                "added), answer letter"),
        DatasetSpec("clevr_count", "BUAADreamer/clevr_count_70k", "test", **_BENCHMARK,
                    source_note="card BUAADreamer/clevr_count_70k: problem, answer (a count), images; split test"),
        DatasetSpec("superclevr", None, "test", **_BENCHMARK, chat_rows=True,
                    hub_refusal="no SuperCLEVR counting release on the hub could be checked; pass --input a json "
                                "in Look-Back's layout (id, images, messages)",
                    source_note="Look-Back's chat-layout loaders (GeoMath/Tallyqa): messages [user, assistant], "
                                "images (paths next to the json)"),
        DatasetSpec("geomath", None, "test", **_BENCHMARK, chat_rows=True,
                    hub_refusal="Look-Back reads GeoMath from a local GeoMath/GeoMath-data.json; pass it with --input",
                    source_note="Look-Back load_GeoMath_dataset: GeoMath-data.json, messages [user, assistant], "
                                "images (paths relative to the json's folder)"),
    ]
}
