"""Answer metrics as the benchmarks define them, following lmms-eval and VLMEvalKit (shared reference:
published_scores.md).

- `relaxed_accuracy` (ChartQA): numbers within 5% of a non-zero target, otherwise exact match.
- `anls` (DocVQA, InfoVQA): average normalised Levenshtein similarity, thresholded at 0.5.
- `vqa_accuracy` (TextVQA, VQAv2): EvalAI answer normalisation, then min(1, matches/3) averaged over the
  leave-one-out subsets of the annotators' answers.
- `multiple_choice_accuracy` (AI2D): the option letter extracted from a free-form response.

`METRICS` maps each name to a callable with one signature, ``(prediction, golds, **kw) -> float``.
"""
from __future__ import annotations

import re
import string
from typing import Callable, Sequence

from rapidfuzz.distance import Levenshtein

# ---- ChartQA: relaxed accuracy ---------------------------------------------------------------------------

PERCENT_MODES = ("divide", "strip")


def _to_float(text: str, percent: str = "divide") -> float | None:
    """ChartQA's parse: a plain float; '1,000' and '$12' do not parse. A trailing '%' divides by 100
    (percent="divide", as pix2struct / lmms-eval / VLMEvalKit) or is dropped (percent="strip")."""
    text = text.strip()
    try:
        if text.endswith("%"):
            value = float(text.rstrip("%"))
            return value / 100.0 if percent == "divide" else value
        return float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, target: str, max_relative_change: float = 0.05,
                     percent: str = "divide") -> float:
    """ChartQA: numbers within 5% of a non-zero target count as correct; otherwise case-insensitive
    exact match of the stripped strings.

    percent="strip" is a lenient variant, not the official metric: "12%" then reads as 12, so it
    matches a target of "12" (officially it reads as 0.12 and does not)."""
    if percent not in PERCENT_MODES:
        raise ValueError(f"percent={percent!r}: use one of {PERCENT_MODES}")
    p, t = _to_float(prediction, percent), _to_float(target, percent)
    if p is not None and t is not None and t != 0:
        return float(abs(p - t) / abs(t) <= max_relative_change)
    return float(prediction.strip().lower() == target.strip().lower())


def exact_match(prediction: str, target: str) -> float:
    """Case-insensitive match of the stripped strings."""
    return float(prediction.strip().lower() == target.strip().lower())


# ---- DocVQA / InfoVQA: ANLS ------------------------------------------------------------------------------

def _anls_normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, golds: Sequence[str], threshold: float = 0.5, inclusive: bool = True) -> float:
    """Average Normalised Levenshtein Similarity for one question: the best 1 - NL over the golds, where
    NL = levenshtein(normalised gold, normalised prediction) / max(len(gold), len(prediction)).

    As lmms-eval (api/metrics.py `anls`) does, the distance is taken between the normalised strings
    (whitespace collapsed, lower case) but divided by the length of the raw strings (lmms-eval measures
    `len(s.upper())`, kept here). A similarity whose NL exceeds `threshold` scores 0; NL == threshold
    keeps its score (lmms-eval); `inclusive=False` drops it too, as the ST-VQA paper's `NL < tau`."""
    prediction_norm = _anls_normalise(prediction)
    best = 0.0
    for gold in golds:
        length = max(len(gold.upper()), len(prediction.upper()))
        nl = Levenshtein.distance(_anls_normalise(gold), prediction_norm) / length if length else 0.0
        kept = nl <= threshold if inclusive else nl < threshold
        best = max(best, 1.0 - nl if kept else 0.0)
    return best


# ---- TextVQA / VQAv2: VQA accuracy -----------------------------------------------------------------------
# The answer processor of the VQA challenge as EvalAI runs it (lmms-eval:
# tasks/_task_utils/vqa_eval_metric.py `EvalAIAnswerProcessor`, copied there from pythia/mmf).

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
VQA_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                   ",", "?", "!")
# `(?!<=\d)` is the original script's typo for a look-behind; it never matches, so any period not
# followed by a digit is removed ("3.5" keeps its point, "yes." loses it). Kept as it is.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d)(\,)+(?=\d)")


def _vqa_punctuation(text: str) -> str:
    """A mark touching a space (or any text with a digit,digit comma) is deleted, otherwise it becomes a
    space: "hello-world" -> "hello world", "well - done" -> "well  done"."""
    out = text
    for mark in VQA_PUNCTUATION:
        if mark + " " in text or " " + mark in text or _COMMA_BETWEEN_DIGITS.search(text):
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    # lmms-eval passes re.UNICODE (32) where `count` goes: only answers with over 32 periods differ.
    return _PERIOD_STRIP.sub("", out)


def _vqa_digits_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalise_vqa_answer(text: str) -> str:
    """EvalAI's answer normalisation: lower case, drop ',' and '?', split "'s", punctuation, number words
    to digits, drop articles, restore contractions ("two" -> "2", "a dog" -> "dog", "dont" -> "don't")."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digits_articles(_vqa_punctuation(text))


def vqa_accuracy(prediction: str, golds: Sequence[str]) -> float:
    """VQA accuracy: for each annotator's answer left out, min(1, matches among the others / 3); the mean
    over those subsets (10 for TextVQA; any number works). With 10 answers, 1/2/3/4+ matching give
    0.3/0.6/0.9/1.0. With fewer answers the ceiling drops: 3 identical answers score at most 2/3, and a
    single answer always scores 0, since its only subset is empty."""
    if not golds:
        return 0.0
    answer = normalise_vqa_answer(prediction)
    normalised = [normalise_vqa_answer(g) for g in golds]
    per_subset = [min(1.0, sum(g == answer for j, g in enumerate(normalised) if j != left_out) / 3)
                  for left_out in range(len(normalised))]
    return sum(per_subset) / len(per_subset)


# ---- AI2D: multiple choice -------------------------------------------------------------------------------

_LEADING_LETTER = re.compile(r"^\s*([A-Z])\.")
_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
_VLMEVALKIT_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")


def option_letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def extract_choice(response: str, options: Sequence[str]) -> str | None:
    """The option letter a free-form response picks, or None when it cannot be told. Tried in order:
    1. a leading "B." (lmms-eval's AI2D filter `^\\s*([A-Z])\\.`);
    2. the response is the letter once case and punctuation are ignored: "b", "(B)" (lmms-eval's
       exact_match with ignore_case and ignore_punctuation);
    3. exactly one option letter stands as a word: "The answer is B" (VLMEvalKit `can_infer_option`);
    4. exactly one option's text appears in the response, case-insensitively (VLMEvalKit `can_infer_text`).
    """
    letters = option_letters(len(options))
    leading = _LEADING_LETTER.match(response)
    if leading and leading.group(1) in letters:
        return leading.group(1)
    bare = response.translate(_PUNCTUATION_TABLE).strip().upper()
    if bare in letters:
        return bare
    words = _VLMEVALKIT_SEPARATORS.sub(" ", response).split()
    named = [letter for letter in letters if letter in words]
    if len(named) == 1:
        return named[0]
    lowered = response.lower()
    quoted = [letter for letter, text in zip(letters, options) if text.strip() and text.lower() in lowered]
    return quoted[0] if len(quoted) == 1 else None


def answer_letter(answer: str | int, options: Sequence[str]) -> str:
    """The gold letter from an index (AI2D stores "0".."3") or a letter."""
    letters = option_letters(len(options))
    text = str(answer).strip()
    if text.isdigit() and int(text) < len(letters):
        return letters[int(text)]
    if text.upper() in letters:
        return text.upper()
    raise ValueError(f"answer {answer!r} is neither an option index below {len(letters)} nor one of the "
                     f"letters {letters} (options: {list(options)})")


def multiple_choice_accuracy(prediction: str, answer_letter_or_index: str | int, options: Sequence[str]) -> float:
    """1.0 when the letter extracted from the response (`extract_choice`) is the gold option."""
    return float(extract_choice(prediction, options) == answer_letter(answer_letter_or_index, options))


# ---- registry: (prediction, golds, **kw) -> float --------------------------------------------------------

Metric = Callable[..., float]


def _best_over_golds(single_target: Callable[..., float]) -> Metric:
    """A single-target metric scored against each gold, keeping the best (0 with no golds)."""
    def metric(prediction: str, golds: Sequence[str], **kw) -> float:
        return max((single_target(prediction, gold, **kw) for gold in golds), default=0.0)
    metric.__name__ = single_target.__name__
    metric.__doc__ = f"Best over the golds of: {single_target.__doc__}"
    return metric


METRICS: dict[str, Metric] = {
    "relaxed_accuracy": _best_over_golds(relaxed_accuracy),
    "exact_match": _best_over_golds(exact_match),
    "anls": anls,
    "vqa_accuracy": vqa_accuracy,
    "multiple_choice_accuracy": _best_over_golds(multiple_choice_accuracy),  # needs options=[...]
}
