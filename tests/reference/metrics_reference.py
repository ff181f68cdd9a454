#!/usr/bin/env python3
"""Reference runner for `tests/metrics_differential.rs`.

The Rust differential test writes a JSON file of generated cases, runs

    python tests/reference/metrics_reference.py IN.json OUT.json

and compares every number in OUT.json against `prompt2model::evaluator::{chrf, exact_match,
kendall}`.  The numbers here come from the *reference implementations themselves*:

* chrF / chrF++ : ``sacrebleu.metrics.CHRF`` (sacrebleu 2.6.0) -- ``corpus_score`` and
  ``sentence_score``, i.e. exactly what ``sacrebleu.corpus_chrf`` / ``sentence_chrf`` call;
* exact match   : the official SQuAD v1.1 ``evaluate-v1.1.py`` normalisation, copied verbatim
  below (the script is not on PyPI, so it cannot be imported);
* Kendall tau   : ``scipy.stats.kendalltau(x, y)`` with scipy's defaults (scipy 1.17.1);
* macro-F1      : ``sklearn.metrics.f1_score(gold, pred, average="macro")`` (scikit-learn 1.9.1).

Floats are returned as IEEE-754 bit patterns (``struct.pack('<d')`` as an unsigned integer) so
that NaN survives JSON and the Rust side can also report how many results are bit-identical.

A second mode, ``--rust-tables``, prints the Python-``str``-semantics tables (``str.isspace``,
``re``'s Unicode ``\\w``, ``str.lower`` including the Final_Sigma context) that are embedded in
``crates/metrics/src/pystr_tables.rs``; it is how those tables were generated (Python 3.11.7,
``unicodedata.unidata_version`` 14.0.0).
"""

import json
import math
import re
import string
import struct
import sys
import unicodedata
import warnings

REQUIRED = {"sacrebleu": "2.6.0", "scipy": "1.17.1", "scikit-learn": "1.9.1"}


# --------------------------------------------------------------------------------------------
# Official SQuAD v1.1 evaluation script (evaluate-v1.1.py), normalisation and EM, verbatim.
# --------------------------------------------------------------------------------------------
def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def exact_match_score(prediction, ground_truth):
    return (normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


# --------------------------------------------------------------------------------------------
def f2bits(v):
    return struct.unpack('<Q', struct.pack('<d', float(v)))[0]


def bits2f(b):
    return struct.unpack('<d', struct.pack('<Q', int(b)))[0]


def check_versions():
    import sacrebleu
    import scipy
    import sklearn
    got = {"sacrebleu": sacrebleu.__version__, "scipy": scipy.__version__,
           "scikit-learn": sklearn.__version__}
    bad = {k: v for k, v in got.items() if v != REQUIRED[k]}
    if bad:
        sys.stderr.write(f"metrics_reference.py: version mismatch {bad}, need {REQUIRED}\n")
        sys.exit(3)
    return got


def chrf_case(case):
    from sacrebleu.metrics import CHRF
    cfg = case["config"]

    def metric():
        return CHRF(char_order=cfg["char_order"], word_order=cfg["word_order"],
                    beta=cfg["beta"], lowercase=cfg["lowercase"],
                    whitespace=cfg["whitespace"], eps_smoothing=cfg["eps_smoothing"])

    hyps = case["hyps"]
    refs = case["refs"]  # refs[i] = references of hypothesis i (Rust layout)
    # sacrebleu wants reference *streams*: streams[j][i] is the j-th reference of sentence i;
    # sentences with fewer references are padded with None, which sacrebleu drops per segment.
    k = max(len(r) for r in refs)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(k)]
    m = metric()
    corpus = m.corpus_score(hyps, streams).score
    sig = m.get_signature().format()
    sentences = [f2bits(metric().sentence_score(h, r).score) for h, r in zip(hyps, refs)]
    return {"corpus": f2bits(corpus), "sentences": sentences, "signature": sig}


def em_case(case):
    pred, refs = case["pred"], case["refs"]
    return {
        "norm_pred": normalize_answer(pred),
        "norm_refs": [normalize_answer(r) for r in refs],
        "squad": bool(metric_max_over_ground_truths(exact_match_score, pred, refs)) if refs else False,
        "raw": any(pred == r for r in refs),
    }


def kendall_case(case):
    from scipy import stats
    x = [bits2f(b) for b in case["x"]]
    y = [bits2f(b) for b in case["y"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.kendalltau(x, y)
    return {"tau": f2bits(res.statistic), "p": f2bits(res.pvalue)}


def macro_f1_case(case):
    from sklearn.metrics import f1_score
    return f2bits(f1_score(case["gold"], case["pred"], average="macro"))


# --------------------------------------------------------------------------------------------
# Python str semantics tables (for the exhaustive check and for --rust-tables)
# --------------------------------------------------------------------------------------------
def _codepoints():
    return (c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)


def _ranges(cps):
    out = []
    for c in cps:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def unicode_tables():
    word_re = re.compile(r'\w')
    space, word, cased, ignorable, lower = [], [], [], [], []
    for c in _codepoints():
        ch = chr(c)
        if ch.isspace():
            space.append(c)
        # `re`'s Unicode \w is str.isalnum() or '_' -- check that claim on every code point.
        is_word = bool(word_re.match(ch))
        assert is_word == (ch.isalnum() or ch == '_'), hex(c)
        if is_word:
            word.append(c)
        low = ch.lower()
        if low != ch:
            lower.append([c, low])
        # CPython's Final_Sigma rule (unicodeobject.c: handle_capital_sigma) uses the Cased and
        # Case_Ignorable properties, which Python does not expose; recover them from
        # islower/isupper/istitle (Cased = Lowercase | Uppercase | Lt) and from lower() itself.
        is_cased = ch.islower() or ch.isupper() or ch.istitle()
        if is_cased:
            # ' ' + c + 'Σ': Σ is final iff c is *not* ignorable (then c, being cased, counts).
            is_ign = (' ' + ch + '\u03a3').lower()[-1] == '\u03c3'
        else:
            # 'A' + c + 'Σ': Σ is final iff c is ignorable (skipped, so 'A' precedes).
            is_ign = ('A' + ch + '\u03a3').lower()[-1] == '\u03c2'
        # consistency check of the derivation from the other side of Σ
        expect_follow = '\u03c3' if (is_ign or is_cased) else '\u03c2'
        assert ('A\u03a3' + ch + 'B').lower()[1] == expect_follow, hex(c)
        if is_cased:
            cased.append(c)
        if is_ign:
            ignorable.append(c)
    return {
        "unidata_version": unicodedata.unidata_version,
        "python": sys.version.split()[0],
        "space": space,
        "word": _ranges(word),
        "cased": _ranges(cased),
        "case_ignorable": _ranges(ignorable),
        "lower": lower,
    }


def emit_rust_tables():
    t = unicode_tables()
    multi = [(c, l) for c, l in t["lower"] if len(l) != 1]
    assert multi == [(0x130, 'i\u0307')], multi

    def emit_ranges(name, rs, doc):
        print(f"    /// {doc}")
        print(f"    pub(crate) const {name}: &[(u32, u32)] = &[")
        for i in range(0, len(rs), 6):
            print("        " + " ".join(f"(0x{a:X}, 0x{b:X})," for a, b in rs[i:i + 6]))
        print("    ];")

    print(f"    // Generated by `python tests/reference/metrics_reference.py --rust-tables` with "
          f"Python {t['python']}, unicodedata {t['unidata_version']}.")
    print(f"    pub const UNIDATA_VERSION: &str = \"{t['unidata_version']}\";")
    print("    /// `str.isspace()` (== the separators of `str.split()`).")
    print("    pub(crate) const SPACE: &[u32] = &[" + ", ".join(f"0x{c:X}" for c in t["space"]) + "];")
    emit_ranges("WORD", t["word"], "`re` Unicode `\\w`: `str.isalnum()` or `_` (inclusive ranges).")
    emit_ranges("CASED", t["cased"], "Unicode Cased as CPython sees it (inclusive ranges).")
    emit_ranges("CASE_IGNORABLE", t["case_ignorable"], "Unicode Case_Ignorable as CPython sees it.")
    single = [(c, ord(l)) for c, l in t["lower"] if len(l) == 1]
    print("    /// `str.lower()` simple mappings (U+0130 is special-cased: it maps to \"i\\u{307}\").")
    print("    pub(crate) const LOWER: &[(u32, u32)] = &[")
    for i in range(0, len(single), 6):
        print("        " + " ".join(f"(0x{a:X}, 0x{b:X})," for a, b in single[i:i + 6]))
    print("    ];")


def main(argv):
    if len(argv) == 2 and argv[1] == "--rust-tables":
        emit_rust_tables()
        return 0
    if len(argv) != 3:
        sys.stderr.write("usage: metrics_reference.py IN.json OUT.json | --rust-tables\n")
        return 2
    try:
        versions = check_versions()
    except ImportError as e:
        sys.stderr.write(f"metrics_reference.py: cannot import reference packages: {e}\n")
        return 3
    with open(argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    out = {
        "versions": versions,
        "chrf": [chrf_case(c) for c in cases.get("chrf", [])],
        "em": [em_case(c) for c in cases.get("em", [])],
        "kendall": [kendall_case(c) for c in cases.get("kendall", [])],
        "macro_f1": [macro_f1_case(c) for c in cases.get("macro_f1", [])],
    }
    if cases.get("unicode_tables"):
        out["unicode"] = unicode_tables()
    with open(argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
