#!/usr/bin/env python3
"""Golden references for rankscope's Hugging Face loaders (issue 16).

Writes, under --out (default tests/data/hf-refs):
  <arch>/                 llama3, mistral, qwen2, qwen3, phi3: a tiny random checkpoint written by
                          transformers (config.json, model.safetensors, ...), inputs.json (two fixed id
                          sequences), logits_0.npy [20, V] and logits_1.npy [40, V] (float32), and
                          reference.json (what was set, what transformers wrote, proofs that each
                          architecture feature changes the logits).
  phi3_decomposed/        Phi-3 logits after replacing every fused qkv_proj by its SVD factors multiplied
                          back: full rank and rank 16, as one fused cell or as q, k, v cells.
  tokenizer_<kind>/       gpt2, llama3, qwen: a byte-level BPE tokenizer.json trained by `tokenizers`,
                          cases.jsonl (one JSON line per test string) and meta.json.
  manifest.json           versions, seeds, per-part status, per-architecture features and sizes.
  make_references.log     the log of the run.

Every part runs in its own try/except: a failing part is logged with its traceback, the run goes on,
and the exit status is 1 if any part failed. `--self-test` checks the pure-Python parts (test-string
generator, .npy writer) without torch, transformers or tokenizers.

Run: python3 tests/hf/make_references.py --out DIR --text a.txt b.txt [--archive DIR.tar.gz]
"""

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import random
import struct
import sys
import tarfile
import time
import traceback
import unicodedata
from array import array
from pathlib import Path

# Nothing here may touch the network; set before transformers / huggingface_hub are imported.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "hf-refs"

# ----------------------------------------------------------------------------------------------
# Seeds and sizes
# ----------------------------------------------------------------------------------------------
SEED_TORCH = 16          # torch.manual_seed before each model is built (its own init is overwritten)
SEED_WEIGHTS = 1600      # + architecture index: the generator that randomises every parameter
SEED_INPUTS = 1616       # the two fixed id sequences
SEED_STRINGS = 16016     # the test-string generator
INPUT_LENGTHS = (20, 40)

WEIGHT_STD = 0.1         # every matrix (embeddings, projections, lm_head): N(0, WEIGHT_STD^2)
NORM_STD = 0.1           # every norm weight (incl. Qwen3 q_norm/k_norm): 1 + NORM_STD * N(0, 1)
BIAS_STD = 0.1           # every bias (Qwen2 q/k/v): BIAS_STD * N(0, 1)

RELOAD_TOLERANCE = 1e-5       # logits of the saved folder vs the in-memory model
SAME_TOLERANCE = 1e-5         # "unchanged" in the feature proofs
CHANGED_THRESHOLD = 1e-3      # "changed" in the feature proofs
DECOMPOSED_RANK = 16

TOKENIZER_VOCAB = 2000
TOKENIZER_MIN_FREQUENCY = 2
N_CASES = 3000
CASES_MAX_BYTES = 1_900_000
TOTAL_MAX_BYTES = 15_000_000
MAX_TEXT_LINE_CHARS = 300
MAX_CODE_CHUNK_CHARS = 500
MAX_CODE_CORPUS_CHARS = 400_000

# ----------------------------------------------------------------------------------------------
# Published pre-tokenizer patterns (copied exactly; facts, not code)
# ----------------------------------------------------------------------------------------------
# GPT-2: what tokenizers' ByteLevel(use_regex=True) applies internally (recorded for documentation).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Llama 3 (tiktoken pat_str, also Meta-Llama-3 tokenizer.json Split pattern).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2 / Qwen2.5 / Qwen3 (PRETOKENIZE_REGEX in transformers' tokenization_qwen2.py): single digits.
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

GPT2_SPECIALS = ["<|endoftext|>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>",
                   "<|reserved_special_token_0|>", "<|reserved_special_token_1|>"]
LLAMA3_ADDED_NORMAL = ["<tool_call>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ALL_MARKERS = sorted(set(GPT2_SPECIALS + LLAMA3_SPECIALS + LLAMA3_ADDED_NORMAL + QWEN_SPECIALS))

# ----------------------------------------------------------------------------------------------
# Logging and parts
# ----------------------------------------------------------------------------------------------
_LOG_FILE = None


def log(msg):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if _LOG_FILE is not None:
        _LOG_FILE.write(line + "\n")
        _LOG_FILE.flush()


class FeatureNotExercised(RuntimeError):
    """The files were written, but a proof shows an architecture feature does not change the output."""


class Parts:
    """Runs each part in its own try/except and keeps its status for the manifest."""

    def __init__(self):
        self.status = {}

    def run(self, name, fn, *args, **kwargs):
        log(f"== part {name}")
        t0 = time.time()
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every failure is logged and the run goes on
            log(f"!! part {name} FAILED: {type(e).__name__}: {e}\n{traceback.format_exc()}")
            self.status[name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                 "seconds": round(time.time() - t0, 3)}
            return None
        self.status[name] = {"ok": True, "error": None, "seconds": round(time.time() - t0, 3)}
        log(f"   part {name} ok ({time.time() - t0:.1f} s)")
        return result

    def failed(self):
        return [name for name, s in self.status.items() if not s["ok"]]


def write_json(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False, default=str)
        f.write("\n")


# ----------------------------------------------------------------------------------------------
# .npy writer (format 1.0, little-endian float32, C order); needs neither numpy nor torch
# ----------------------------------------------------------------------------------------------
NPY_MAGIC = b"\x93NUMPY"
NPY_ALIGN = 64


def npy_bytes(shape, float_values):
    """The bytes of a .npy v1.0 file of dtype '<f4' holding float_values (flat, C order)."""
    count = 1
    for d in shape:
        count *= d
    if count != len(float_values):
        raise ValueError(f"npy: shape {shape} needs {count} values, got {len(float_values)}")
    if len(shape) == 1:
        shape_text = f"({shape[0]},)"
    else:
        shape_text = "(" + ", ".join(str(d) for d in shape) + ")"
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}"
    pad = NPY_ALIGN - (len(NPY_MAGIC) + 2 + 2 + len(header) + 1) % NPY_ALIGN
    header = header + " " * (pad % NPY_ALIGN) + "\n"
    data = array("f", float_values)
    if sys.byteorder != "little":
        data.byteswap()
    return NPY_MAGIC + bytes([1, 0]) + struct.pack("<H", len(header)) + header.encode("latin1") \
        + data.tobytes()


def save_npy_tensor(path, tensor):
    t = tensor.detach().to("cpu").float().contiguous()
    Path(path).write_bytes(npy_bytes(list(t.shape), t.flatten().tolist()))


# ----------------------------------------------------------------------------------------------
# Test strings (pure Python, deterministic for a given seed, text lines and code files)
# ----------------------------------------------------------------------------------------------
# Blocks fully assigned since Unicode 8 or earlier, so \p{L}/\p{N}/\s classes agree across versions.
UNICODE_RANGES = [
    (0x0020, 0x007E, 30), (0x00A0, 0x00FF, 6), (0x0100, 0x017F, 4), (0x0391, 0x03A1, 2),
    (0x03A3, 0x03C9, 2), (0x0400, 0x045F, 4), (0x05D0, 0x05EA, 2), (0x0621, 0x063A, 2),
    (0x0641, 0x064A, 1), (0x0660, 0x0669, 1), (0x0905, 0x0939, 2), (0x093E, 0x094C, 1),
    (0x0966, 0x096F, 1), (0x0E01, 0x0E3A, 1), (0x3041, 0x3096, 2), (0x30A1, 0x30FA, 2),
    (0x4E00, 0x9FA5, 4), (0xAC00, 0xD7A3, 2), (0x0300, 0x036F, 2), (0x1F600, 0x1F64F, 2),
    (0x1F300, 0x1F5FF, 2), (0x1F1E6, 0x1F1FF, 1), (0x2000, 0x200A, 1), (0x200B, 0x200D, 1),
    (0x2160, 0x2182, 1), (0x2460, 0x2473, 1), (0xFF01, 0xFF5E, 1), (0x1D400, 0x1D454, 1),
    (0x2190, 0x21FF, 1), (0x2200, 0x22FF, 1),
]
WHITESPACE_PIECES = [" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", " \n",
                     "  \n", "\t\n", " \t ", "\u00a0", "\u3000", "\u2009", "\u2028", "\x0b", "\x0c"]
CONTROL_CHARS = ["\x01", "\x02", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x85"]

WORDS = ["the", "cat", "sat", "on", "mat", "Hello", "world", "TinyStories", "Lily", "ball", "rankscope",
         "model", "rank", "SVD", "GPU", "data", "x", "I", "a", "an", "OK", "HTTP", "don", "camelCase",
         "snake_case", "URL", "naïve", "über", "東京", "Москва"]

NUMBER_SEEDS = [
    "0", "7", "42", "123", "1234", "12345", "123456", "1234567890", "00000", "007", "3.14159",
    "2.718281828459045", "-42", "+1", "1e10", "1.5e-10", "6.022E23", "0x1F", "0b1011", "1,000,000",
    "1.000.000,50", "1 000 000", "$19.99", "€5", "£3.50", "¥1000", "50%", "99.9%", "2024-01-15",
    "15/01/2024", "01.15.2024", "12:30", "23:59:59.999", "2024-01-15T12:30:45Z", "v1.2.3", "3rd",
    "21st", "1st", "100km/h", "+1 (555) 123-4567", "192.168.0.1", "3/4", "½", "¾", "²", "³", "①②③",
    "Ⅻ", "ⅻ", "１２３", "١٢٣٤", "१२३४", "๑๒๓", "〇一二三", "9" * 60, "1234567890" * 5,
]
ACCENT_WORDS = ["café", "naïve", "résumé", "jalapeño", "über", "Ångström", "façade", "crème brûlée",
                "São Paulo", "Zürich", "Dvořák", "Łódź", "İstanbul", "ıi", "Straße", "ß", "ǅemal",
                "Ǆ", "ﬁnance", "Ærøskøbing", "Niño", "piñata", "coöperate", "Citroën", "Škoda",
                "Œuvre", "élève", "Ελλάδα", "ἀρχή", "Việt Nam", "tiếng Việt", "Crème", "ÉCOLE"]
COMBINING_SEQUENCES = ["e\u0301", "a\u0308\u0301", "o\u0302\u0323", "n\u0303", "u\u0308",
                       "Z\u0324\u034e\u030d", "\u0301", "a\u0300\u0301\u0302\u0303\u0304",
                       "\u1e9b\u0323", "\u212b", "\u2126", "\u00c5", "A\u030a", "\uac00\u11a8",
                       "\u1100\u1161\u11a8"]
EMOJI = ["😀", "😂", "👍", "👍🏽", "👍🏿", "❤️", "❤", "✔️", "✨", "🔥", "🎉", "🙂", "🤖", "🧠",
         "👨‍👩‍👧‍👦", "👩‍💻", "🧑🏿‍💻", "👩‍❤️‍💋‍👨", "🏳️‍🌈", "🏴‍☠️", "🇺🇸", "🇯🇵", "🇩🇪", "🇫🇷",
         "🇧🇷", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "1️⃣", "#️⃣", "©", "®", "™", "☺", "☺️", "⌚", "🦀", "🐍"]
SCRIPT_PHRASES = ["你好，世界！", "我们正在测试分词器。", "日本語のテキストです。", "カタカナとひらがな",
                  "東京タワー", "한국어 문장입니다.", "안녕하세요", "مرحبا بالعالم", "اللغة العربية ٣ تفاحات",
                  "שלום עולם", "עברית: 123", "नमस्ते दुनिया", "हिन्दी भाषा", "क्षत्रिय", "สวัสดีชาวโลก",
                  "ภาษาไทย", "Привет, мир!", "Ёжик в тумане", "Γειά σου Κόσμε", "ქართული", "Հայերեն",
                  "ትግርኛ", "தமிழ்", "বাংলা", "ગુજરાતી", "GPT-4は2023年に発表された。", "Qwen2.5模型",
                  "\u200fשלום\u200f", "mixed English 与中文 and 日本語 text", "Ελληνικά123", "Ω≈ç√∫"]
WHITESPACE_SEEDS = ["a  b", "a\tb", "\t\tindented", "line\r\nline", "trailing   ", "   leading",
                    "    ", " ", "\t", "\n", "\n\n\n", " \n \n ", "a \n b", "\r", "\r\n\r\n", "x\u00a0y",
                    "x\u3000y", "x\u2009y", "foo  \nbar", "foo\n  bar", "  \t  \t", "a\n\n\nb",
                    "end of line \r\n", "\n    indented block\n        deeper\n", "a" + " " * 20 + "b",
                    " " * 17, "\t" * 9, "\r\n" * 4, "word \t\n word", "x \u2028 y", "  \n\n  "]
CONTRACTION_SEEDS = ["I'm", "you're", "He's", "we've", "they'll", "I'd", "don't", "CAN'T", "WE'LL",
                     "It'S", "you'Re", "THEY'VE", "she'D", "'s", "'S", "''", "'", "O'Neil",
                     "rock'n'roll", "it’s", "it ' s", "I'M", "y'all'd've", "'tis", "ma'am", "'ll",
                     "The cat's toy", "JAMES'S", "'re'", "don''t", "it's'", " 's", "l'homme",
                     "dell'arte"]
EDGE_SEEDS = ["", " ", "a", "A", "\n", "<", "|", "<|", "|>", "<||>", "''", "x" * 300, "ab" * 150,
              "🙂" * 40, "0" * 100, ".", "...", "!!!", "?!", "--", "—", "–", "\\", "\\n", "\"quoted\"",
              "{\"json\": [1, 2, 3]}", "<html><body>Hi</body></html>", "https://example.com/a?b=c&d=e",
              "user@example.com", "C:\\Windows\\System32", "#include <vector>", "$HOME/.bashrc",
              "a_b-c.d/e", "Ü", "\u00ad", "\ufeffBOM", "\u200b", "\u200d", "\ufe0f"]


def chunk_text(text, limit):
    """At most `limit` characters of text, cut at a character boundary."""
    return text if len(text) <= limit else text[:limit]


def read_lines(path):
    """Lines of a text file, line endings other than the '\\n' kept (so '\\r' of CRLF stays)."""
    return Path(path).read_text(encoding="utf-8", errors="replace").split("\n")


CODE_DIRS = ("core", "cli", "search", "evaluators", "db", "bench", "scripts", "tests")
CODE_EXTS = (".cpp", ".hpp", ".h", ".cu", ".cuh", ".py", ".sh")
CODE_EXCLUDE = ("tests/data", "tests/fuzz/corpus")


def find_code_files(root):
    """The repository's own source files, sorted (the tree travels with the script)."""
    files = []
    for top in CODE_DIRS:
        base = Path(root) / top
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(root).as_posix()
            if any(rel == ex or rel.startswith(ex + "/") for ex in CODE_EXCLUDE):
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "build")))
            for name in sorted(filenames):
                if name.endswith(CODE_EXTS):
                    files.append(Path(dirpath) / name)
    return sorted(files)


def random_unicode_string(rng):
    """A string of 1-8 runs, each a whitespace piece or 1-8 characters drawn from one block."""
    weights = [w for _, _, w in UNICODE_RANGES]
    parts = []
    for _ in range(rng.randint(1, 8)):
        if rng.random() < 0.2:
            parts.append(rng.choice(WHITESPACE_PIECES))
            continue
        lo, hi, _ = rng.choices(UNICODE_RANGES, weights=weights)[0]
        parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))))
    return "".join(parts)


def _fill(rng, seeds, target, make):
    """seeds first, then make(rng) until there are `target` strings."""
    out = list(seeds[:target])
    while len(out) < target:
        out.append(make(rng))
    return out


def make_test_strings(text_lines, code_files, seed=SEED_STRINGS, total=N_CASES):
    """[(category, text)] of exactly `total` strings, deterministic for the same inputs."""
    rng = random.Random(seed)
    cases = []

    def add(cat, strings):
        cases.extend((cat, s) for s in strings)

    # Text: lines of the given files (non-empty ones preferred), and a few multi-line paragraphs.
    n_text = total * 30 // 100
    non_empty = [ln for ln in text_lines if ln.strip()]
    if non_empty:
        picks = [chunk_text(rng.choice(non_empty), MAX_TEXT_LINE_CHARS) for _ in range(n_text)]
        add("text", picks)
        paragraphs = []
        for _ in range(total * 2 // 100):
            start = rng.randrange(len(text_lines))
            paragraphs.append(chunk_text("\n".join(text_lines[start:start + rng.randint(2, 5)]),
                                         2 * MAX_TEXT_LINE_CHARS))
        add("paragraph", paragraphs)

    # Code: 1-8 consecutive lines of the repository's own sources, indentation kept.
    n_code = total * 13 // 100
    code_lines = []
    for path in code_files:
        try:
            code_lines.append(path.read_text(encoding="utf-8", errors="replace").split("\n"))
        except OSError:
            continue
    code_lines = [lines for lines in code_lines if any(ln.strip() for ln in lines)]
    if code_lines:
        chunks = []
        for _ in range(n_code):
            lines = rng.choice(code_lines)
            start = rng.randrange(len(lines))
            chunks.append(chunk_text("\n".join(lines[start:start + rng.randint(1, 8)]),
                                     MAX_CODE_CHUNK_CHARS))
        add("code", chunks)

    def make_number(r):
        kind = r.randrange(6)
        if kind == 0:
            return "".join(r.choice("0123456789") for _ in range(r.randint(1, 60)))
        if kind == 1:
            return f"{r.randint(0, 10**6)}.{r.randint(0, 10**6):06d}"
        if kind == 2:
            return f"{r.randint(1900, 2099)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        if kind == 3:
            return f"{r.choice(WORDS)} {r.randint(0, 99999)} {r.choice(WORDS)}{r.randint(0, 9)}"
        if kind == 4:
            return f"{r.choice(NUMBER_SEEDS)} {r.choice(['+', '-', '*', '/', '=', ','])} " \
                   f"{r.choice(NUMBER_SEEDS)}"
        return r.choice(NUMBER_SEEDS) + r.choice(["", " ", "\n", "th", "%", "px"])

    add("numbers", _fill(rng, NUMBER_SEEDS, total * 7 // 100, make_number))

    def make_accent(r):
        words = [r.choice(ACCENT_WORDS + COMBINING_SEQUENCES) for _ in range(r.randint(1, 4))]
        s = " ".join(words)
        form = r.choice(["NFC", "NFD", "NFKC", "mixed", "raw"])
        if form == "mixed":
            return " ".join(unicodedata.normalize(r.choice(["NFC", "NFD"]), w) for w in words)
        return s if form == "raw" else unicodedata.normalize(form, s)

    accent_seeds = []
    for w in ACCENT_WORDS[:12]:
        accent_seeds += [unicodedata.normalize("NFC", w), unicodedata.normalize("NFD", w)]
    add("accents", _fill(rng, accent_seeds + COMBINING_SEQUENCES, total * 5 // 100, make_accent))

    def make_emoji(r):
        parts = []
        for _ in range(r.randint(1, 6)):
            parts.append(r.choice(EMOJI) if r.random() < 0.6 else r.choice(WORDS))
            parts.append(r.choice(["", " ", "", "\n", "!"]))
        return "".join(parts)

    add("emoji", _fill(rng, EMOJI, total * 4 // 100, make_emoji))

    def make_script(r):
        return r.choice(["", " "]).join(r.choice(SCRIPT_PHRASES + WORDS) for _ in range(r.randint(1, 4)))

    add("scripts", _fill(rng, SCRIPT_PHRASES, total * 7 // 100, make_script))

    def make_whitespace(r):
        parts = []
        for _ in range(r.randint(1, 6)):
            parts.append(r.choice(WHITESPACE_PIECES))
            parts.append(r.choice(WORDS + ["", ".", "{", "}"]))
        return "".join(parts)

    add("whitespace", _fill(rng, WHITESPACE_SEEDS, total * 5 // 100, make_whitespace))

    def make_contraction(r):
        parts = []
        for _ in range(r.randint(1, 5)):
            c = r.choice(CONTRACTION_SEEDS + WORDS)
            parts.append(c.upper() if r.random() < 0.2 else c)
        return r.choice([" ", "", "\n"]).join(parts)

    add("contractions", _fill(rng, CONTRACTION_SEEDS, total * 4 // 100, make_contraction))

    chat = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n" \
           "<|im_start|>assistant\n"
    special_seeds = [chat, "<|begin_of_text|>Hello<|end_of_text|>", "<tool_call>{\"a\": 1}</tool_call>"]
    for m in ALL_MARKERS:
        special_seeds += [m, f"Hello{m}world", f"Hello {m} world", f"{m}{m}", f"{m}\n", f" {m}",
                          m[:-1], m[1:], m.upper(), m.replace("|", "| ", 1)]

    def make_special(r):
        parts = []
        for _ in range(r.randint(1, 5)):
            parts.append(r.choice(ALL_MARKERS) if r.random() < 0.4 else r.choice(WORDS))
            parts.append(r.choice(["", " ", "\n", "  "]))
        return "".join(parts)

    add("specials", _fill(rng, special_seeds, total * 5 // 100, make_special))

    def make_edge(r):
        c = r.choice(CONTROL_CHARS)
        return r.choice([c, f"a{c}b", f"{c} {r.choice(WORDS)}", c * r.randint(2, 5)])

    add("edge", _fill(rng, EDGE_SEEDS, total * 3 // 100, make_edge))

    # The rest: random Unicode.
    add("random", [random_unicode_string(rng) for _ in range(max(0, total - len(cases)))])
    return cases[:total]


def check_test_strings(cases, total):
    """Raises if the generated strings are not what the tokenizer part expects."""
    if len(cases) != total:
        raise AssertionError(f"{len(cases)} test strings, expected {total}")
    for cat, s in cases:
        if not isinstance(s, str):
            raise AssertionError(f"category {cat}: not a str: {s!r}")
        if any(0xD800 <= ord(ch) <= 0xDFFF for ch in s):
            raise AssertionError(f"category {cat}: surrogate in {s!r}")
        s.encode("utf-8")


# ----------------------------------------------------------------------------------------------
# Versions
# ----------------------------------------------------------------------------------------------
def versions():
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("torch", "transformers", "tokenizers", "safetensors", "huggingface_hub", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            out[mod] = f"unavailable ({type(e).__name__})"
    return out


def transformers_major():
    import transformers
    return int(transformers.__version__.split(".")[0])


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
def arch_specs():
    """One dict per architecture: classes, config fields, RoPE, what the proofs must show."""
    common = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
                  max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=None)
    return [
        dict(name="llama3", model_cls="LlamaForCausalLM", config_cls="LlamaConfig",
             fields=dict(common, vocab_size=512, intermediate_size=176, num_hidden_layers=2,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False,
                         mlp_bias=False),
             rope=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                       high_freq_factor=4.0, original_max_position_embeddings=16),
             expect=dict(num_key_value_heads=2, tie_word_embeddings=False)),
        dict(name="mistral", model_cls="MistralForCausalLM", config_cls="MistralConfig",
             fields=dict(common, vocab_size=512, intermediate_size=128, num_hidden_layers=3,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=16),
             rope=dict(rope_type="default", rope_theta=10000.0),
             expect=dict(num_key_value_heads=2, sliding_window=16, tie_word_embeddings=False)),
        dict(name="qwen2", model_cls="Qwen2ForCausalLM", config_cls="Qwen2Config",
             fields=dict(common, vocab_size=640, intermediate_size=160, num_hidden_layers=2,
                         rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False),
             rope=dict(rope_type="default", rope_theta=1000000.0),
             expect=dict(num_key_value_heads=2, tie_word_embeddings=False, use_sliding_window=False)),
        dict(name="qwen3", model_cls="Qwen3ForCausalLM", config_cls="Qwen3Config",
             fields=dict(common, vocab_size=1000, intermediate_size=128, num_hidden_layers=2,
                         head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         attention_bias=False, use_sliding_window=False),
             rope=dict(rope_type="default", rope_theta=1000000.0),
             expect=dict(num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)),
        dict(name="phi3", model_cls="Phi3ForCausalLM", config_cls="Phi3Config",
             fields=dict(common, vocab_size=512, intermediate_size=128, num_hidden_layers=2,
                         rms_norm_eps=1e-5, tie_word_embeddings=False,
                         original_max_position_embeddings=128),
             rope=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5),
             expect=dict(num_key_value_heads=2, tie_word_embeddings=False)),
    ]


def uses_rope_parameters(config_cls):
    """transformers 5 keeps RoPE in `rope_parameters` (theta inside); 4.x in rope_theta/rope_scaling."""
    try:
        return hasattr(config_cls(), "rope_parameters")
    except Exception:  # noqa: BLE001
        return False


def allowed_config_keys(config_cls):
    import dataclasses
    import inspect
    keys = set()
    if dataclasses.is_dataclass(config_cls):
        keys |= {f.name for f in dataclasses.fields(config_cls)}
    with contextlib.suppress(TypeError, ValueError):
        keys |= set(inspect.signature(config_cls.__init__).parameters)
    return keys


def build_config(config_cls, fields, rope):
    """The config built from a dict in the form this transformers wants; returns (config, kwargs, dropped)."""
    kwargs = dict(fields)
    rope = dict(rope)
    if uses_rope_parameters(config_cls):
        kwargs["rope_parameters"] = rope
    else:
        kwargs["rope_theta"] = rope.pop("rope_theta")
        if "partial_rotary_factor" in rope:
            kwargs["partial_rotary_factor"] = rope.pop("partial_rotary_factor")
        if rope.get("rope_type", "default") != "default":
            kwargs["rope_scaling"] = rope
    passed = copy.deepcopy(kwargs)      # transformers may fill in the dicts it is given
    try:
        return config_cls(**kwargs), passed, []
    except Exception as first:  # noqa: BLE001 - TypeError (unknown kwarg) or a strict-dataclass error
        allowed = allowed_config_keys(config_cls)
        dropped = sorted(k for k in passed if k not in allowed)
        if not dropped:
            raise
        log(f"   {config_cls.__name__} rejected the kwargs ({type(first).__name__}: {first}); "
            f"retrying without {dropped}")
        kept = {k: v for k, v in passed.items() if k not in dropped}
        return config_cls(**copy.deepcopy(kept)), kept, dropped


def rope_of(config_dict):
    """(rope dict, theta, partial_rotary_factor) from a config.to_dict() of transformers 4 or 5."""
    rope = config_dict.get("rope_parameters") or config_dict.get("rope_scaling") or {}
    theta = rope.get("rope_theta", config_dict.get("rope_theta"))
    partial = rope.get("partial_rotary_factor", config_dict.get("partial_rotary_factor"))
    return rope, theta, partial


def verify_config(spec, config):
    """Raises if transformers did not keep a feature we set (e.g. a renamed key silently dropped)."""
    d = config.to_dict()
    problems = []
    for key, want in spec["expect"].items():
        got = getattr(config, key, d.get(key))
        if got != want:
            problems.append(f"{key}: set {want!r}, config has {got!r}")
    rope, theta, partial = rope_of(d)
    want = spec["rope"]
    if theta is None or abs(float(theta) - want["rope_theta"]) > 1e-6 * want["rope_theta"]:
        problems.append(f"rope_theta: set {want['rope_theta']}, config has {theta}")
    if want["rope_type"] != "default":
        if rope.get("rope_type", rope.get("type")) != want["rope_type"]:
            problems.append(f"rope_type: set {want['rope_type']}, config has {rope}")
        for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if key in want and rope.get(key) != want[key]:
                problems.append(f"rope {key}: set {want[key]}, config has {rope.get(key)}")
    if "partial_rotary_factor" in want and partial != want["partial_rotary_factor"]:
        problems.append(f"partial_rotary_factor: set {want['partial_rotary_factor']}, config has {partial}")
    if problems:
        raise RuntimeError(f"{spec['name']}: config does not hold what was set: " + "; ".join(problems))
    return d


def set_eager(config):
    with contextlib.suppress(Exception):
        config._attn_implementation = "eager"


def attn_implementation(model):
    return getattr(model.config, "_attn_implementation", None)


def make_model(spec, fields_override=None):
    import torch
    import transformers
    config_cls = getattr(transformers, spec["config_cls"])
    model_cls = getattr(transformers, spec["model_cls"])
    fields = dict(spec["fields"], **(fields_override or {}))
    config, kwargs, dropped = build_config(config_cls, fields, spec["rope"])
    set_eager(config)
    torch.manual_seed(SEED_TORCH)
    model = model_cls(config)
    if attn_implementation(model) != "eager" and hasattr(model, "set_attn_implementation"):
        with contextlib.suppress(Exception):
            model.set_attn_implementation("eager")
    model = model.to(torch.float32).eval()
    return model, kwargs, dropped


def randomise_parameters(model, seed):
    """Every parameter gets a visible random value: matrices N(0, s^2), norms 1 + s N, biases s N."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    summary = {"matrices": 0, "norms": 0, "biases": 0}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda item: item[0]):
            noise = torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(WEIGHT_STD * noise)
                summary["matrices"] += 1
            elif name.endswith("bias"):
                p.copy_(BIAS_STD * noise)
                summary["biases"] += 1
            else:
                p.copy_(1.0 + NORM_STD * noise)
                summary["norms"] += 1
        # A tied lm_head must be the embedding, in memory as in the saved folder (which has no lm_head).
        if getattr(model.config, "tie_word_embeddings", False):
            with contextlib.suppress(Exception):
                model.tie_weights()
            head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
            if head is not embed and head.data_ptr() != embed.data_ptr():
                head.copy_(embed)
                summary["tied_by_copy"] = True
    return summary


def param_count(model):
    seen = {}
    for p in model.parameters():
        seen[id(p)] = p.numel()
    return sum(seen.values())


def make_inputs(vocab_size):
    rng = random.Random(SEED_INPUTS)
    seqs = [[rng.randrange(vocab_size) for _ in range(n)] for n in INPUT_LENGTHS]
    seqs[1][3] = 0
    seqs[1][4] = vocab_size - 1
    return seqs


def logits_of(model, ids):
    import torch
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].detach().float().contiguous()


def save_model(model, directory):
    """save_pretrained as safetensors: transformers 5 removed `safe_serialization` (always safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    if transformers_major() >= 5:
        model.save_pretrained(str(directory))
    else:
        try:
            model.save_pretrained(str(directory), safe_serialization=True)
        except TypeError:
            model.save_pretrained(str(directory))
    if not list(directory.glob("*.safetensors")):
        raise RuntimeError(f"{directory}: save_pretrained wrote no .safetensors file: "
                           f"{sorted(p.name for p in directory.iterdir())}")


def load_model(spec, directory):
    """from_pretrained in fp32 with eager attention (`dtype` in transformers 5, `torch_dtype` in 4)."""
    import torch
    import transformers
    model_cls = getattr(transformers, spec["model_cls"])
    errors = []
    for dtype_key in ("dtype", "torch_dtype"):
        try:
            model = model_cls.from_pretrained(str(directory), **{dtype_key: torch.float32},
                                              attn_implementation="eager")
            return model.to(torch.float32).eval()
        except TypeError as e:
            errors.append(f"{dtype_key}: {e}")
    raise RuntimeError(f"from_pretrained failed: {errors}")


def safetensors_inventory(directory):
    """{tensor name: {dtype, shape}} read from the safetensors headers (no library needed)."""
    tensors, metadata = {}, {}
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        metadata[path.name] = header.pop("__metadata__", None)
        for name, info in header.items():
            tensors[name] = {"dtype": info["dtype"], "shape": info["shape"], "file": path.name}
    return tensors, metadata


def max_abs_diff(a, b, rows=None):
    d = (a - b).abs()
    if rows is not None:
        d = d[rows]
    return float(d.max()) if d.numel() else 0.0


def default_inv_freq(theta, dim):
    import torch
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def llama3_regimes(rope, dim):
    """For each frequency, which branch of Llama 3.1's scaling applies (wavelength vs the two bounds)."""
    low_wavelen = rope["original_max_position_embeddings"] / rope["low_freq_factor"]
    high_wavelen = rope["original_max_position_embeddings"] / rope["high_freq_factor"]
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * rope["rope_theta"] ** (i / dim)
        out.append("unchanged" if wavelen < high_wavelen else "scaled" if wavelen > low_wavelen
                   else "smoothed")
    return out


def _proof_llama3(spec, model, logits, inputs, proofs, failures):
    rope = spec["rope"]
    head_dim = proofs["head_dim_effective"]
    inv_freq = model.model.rotary_emb.inv_freq
    base = default_inv_freq(rope["rope_theta"], head_dim)
    rel = ((inv_freq.float() - base).abs() / base).tolist()
    proofs["inv_freq_unscaled"] = [float(x) for x in base]
    proofs["inv_freq_rel_change"] = rel
    proofs["llama3_regimes"] = llama3_regimes(rope, head_dim)
    if max(rel) < CHANGED_THRESHOLD:
        failures.append("llama3 rope scaling leaves inv_freq unchanged")


def _proof_mistral(spec, model, logits, inputs, proofs, failures):
    window = spec["fields"]["sliding_window"]
    nowin, _, _ = make_model(spec, {"sliding_window": None})
    nowin.load_state_dict(model.state_dict())
    per_seq = []
    for k, ids in enumerate(inputs):
        other = logits_of(nowin, ids)
        before = max_abs_diff(logits[k], other, slice(0, window))
        after = max_abs_diff(logits[k], other, slice(window, None))
        per_seq.append({"length": len(ids), "max_abs_diff_positions_below_window": before,
                        "max_abs_diff_positions_from_window": after})
        if before > SAME_TOLERANCE or after < CHANGED_THRESHOLD:
            failures.append(f"sequence {k}: sliding window not visible (before {before}, after {after})")
    proofs["sliding_window"] = {
        "window": window, "semantics": "query q attends keys k with q - window < k <= q",
        "vs_sliding_window_none": per_seq,
        "logits_differ_from_no_window": any(s["max_abs_diff_positions_from_window"] >= CHANGED_THRESHOLD
                                            for s in per_seq)}


def _proof_qwen2(spec, model, logits, inputs, proofs, failures):
    attn0 = model.model.layers[0].self_attn
    biases = {p: float(getattr(attn0, p).bias.abs().max()) for p in ("q_proj", "k_proj", "v_proj")
              if getattr(getattr(attn0, p), "bias", None) is not None}
    proofs["qkv_bias_max_abs"] = biases
    proofs["o_proj_has_bias"] = attn0.o_proj.bias is not None
    if len(biases) != 3 or min(biases.values()) == 0.0:
        failures.append(f"qwen2 q/k/v biases missing or zero: {biases}")


def _proof_qwen3(spec, model, logits, inputs, proofs, failures):
    attn0 = model.model.layers[0].self_attn
    norms = {p: float((getattr(attn0, p).weight - 1.0).abs().max()) for p in ("q_norm", "k_norm")}
    proofs["qk_norm_max_abs_deviation_from_1"] = norms
    proofs["q_proj_shape"] = list(attn0.q_proj.weight.shape)
    head, embed = model.lm_head.weight, model.model.embed_tokens.weight
    proofs["lm_head_is_embed_tokens"] = head is embed or head.data_ptr() == embed.data_ptr()
    if proofs["head_dim_effective"] != spec["fields"]["head_dim"] or min(norms.values()) == 0.0:
        failures.append(f"qwen3 head_dim {proofs['head_dim_effective']} or q/k norms {norms} not exercised")
    if not proofs["lm_head_is_embed_tokens"]:
        failures.append("qwen3 lm_head is not tied to embed_tokens")


def _proof_phi3(spec, model, logits, inputs, proofs, failures):
    attn0 = model.model.layers[0].self_attn
    head_dim = proofs["head_dim_effective"]
    n_q = spec["fields"]["num_attention_heads"] * head_dim
    n_kv = spec["fields"]["num_key_value_heads"] * head_dim
    set_factor = spec["rope"]["partial_rotary_factor"]
    proofs["qkv_proj_shape"] = list(attn0.qkv_proj.weight.shape)
    proofs["qkv_row_blocks"] = {"q": [0, n_q], "k": [n_q, n_q + n_kv], "v": [n_q + n_kv, n_q + 2 * n_kv]}
    proofs["gate_up_proj_shape"] = list(model.model.layers[0].mlp.gate_up_proj.weight.shape)
    proofs["gate_up_order"] = "rows [0, intermediate) are gate, [intermediate, 2*intermediate) are up"
    proofs["partial_rotary_factor_set"] = set_factor
    proofs["rotary_dims"] = "the first rotary_dim of each head are rotated (rotate_half within them), " \
                            "the rest pass through"
    if proofs.get("rotary_dim_effective") != int(head_dim * set_factor):
        failures.append(f"phi3 partial rotary not applied: rotary dim {proofs.get('rotary_dim_effective')}, "
                        f"expected {int(head_dim * set_factor)}")


PROOFS = {"llama3": _proof_llama3, "mistral": _proof_mistral, "qwen2": _proof_qwen2,
          "qwen3": _proof_qwen3, "phi3": _proof_phi3}


def feature_proofs(spec, model, logits, inputs):
    """Per architecture, numbers showing its features are on, and the list of features that are not."""
    proofs, failures = {"attn_implementation": attn_implementation(model)}, []
    try:
        attn0 = model.model.layers[0].self_attn
        proofs["head_dim_effective"] = getattr(attn0, "head_dim", None)
        rotary = getattr(model.model, "rotary_emb", None)
        inv_freq = getattr(rotary, "inv_freq", None)
        if inv_freq is not None:
            proofs["inv_freq"] = [float(x) for x in inv_freq.flatten()]
            proofs["rotary_dim_effective"] = 2 * inv_freq.numel()
            proofs["attention_scaling"] = float(getattr(rotary, "attention_scaling", 1.0))
        if hasattr(attn0, "k_proj") and proofs["head_dim_effective"]:
            proofs["kv_heads_effective"] = attn0.k_proj.weight.shape[0] // proofs["head_dim_effective"]
        PROOFS[spec["name"]](spec, model, logits, inputs, proofs, failures)
    except Exception as e:  # noqa: BLE001 - a proof that cannot run is a failed proof, files stay
        failures.append(f"proof raised {type(e).__name__}: {e}")
        log(traceback.format_exc())
    return proofs, failures


def build_arch(spec, index, out_dir, loaded):
    """One architecture: build, randomise, save, reload, logits, proofs."""
    name = spec["name"]
    directory = out_dir / name
    if directory.exists():
        for p in directory.iterdir():
            if p.is_file():
                p.unlink()
    model, kwargs, dropped = make_model(spec)
    config_dict = verify_config(spec, model.config)
    init = randomise_parameters(model, SEED_WEIGHTS + index)
    inputs = make_inputs(spec["fields"]["vocab_size"])
    in_memory = [logits_of(model, ids) for ids in inputs]

    save_model(model, directory)
    reloaded = load_model(spec, directory)
    reload_problems = []
    try:
        verify_config(spec, reloaded.config)
    except RuntimeError as e:
        reload_problems.append(f"after reload: {e}")
    logits = [logits_of(reloaded, ids) for ids in inputs]
    reload_diff = max(max_abs_diff(a, b) for a, b in zip(logits, in_memory))

    write_json(directory / "inputs.json", {"sequences": inputs, "lengths": [len(s) for s in inputs],
                                           "note": "no BOS added; batch of 1 per sequence, no padding"})
    logit_files = []
    for k, t in enumerate(logits):
        save_npy_tensor(directory / f"logits_{k}.npy", t)
        logit_files.append({"file": f"logits_{k}.npy", "shape": list(t.shape),
                            "max_abs": float(t.abs().max()), "std": float(t.std())})

    proofs, failures = feature_proofs(spec, reloaded, logits, inputs)
    failures += reload_problems
    if reload_diff > RELOAD_TOLERANCE:
        failures.append(f"reloaded folder gives different logits (max abs diff {reload_diff})")
    tensors, st_meta = safetensors_inventory(directory)
    written = json.loads((directory / "config.json").read_text())
    reference = {
        "architecture": name, "model_class": spec["model_cls"], "config_class": spec["config_cls"],
        "features_set": {"fields": spec["fields"], "rope": spec["rope"]},
        "config_kwargs_passed": kwargs, "config_kwargs_dropped": dropped,
        "config_json_written": written, "config_to_dict": config_dict,
        "param_count": param_count(reloaded), "init": dict(init, weight_std=WEIGHT_STD,
                                                           norm_std=NORM_STD, bias_std=BIAS_STD,
                                                           seed=SEED_WEIGHTS + index),
        "safetensors": {"tensors": tensors, "metadata": st_meta,
                        "lm_head_in_file": "lm_head.weight" in tensors},
        "inputs": "inputs.json", "logits": logit_files,
        "reload_max_abs_diff": reload_diff,
        "logits_source": "the folder reloaded with from_pretrained (fp32, eager, CPU, eval)",
        "proofs": proofs, "proof_failures": failures,
    }
    write_json(directory / "reference.json", reference)
    loaded[name] = (reloaded, inputs, logits, directory)
    log(f"   {name}: {reference['param_count']} params, reload diff {reload_diff:.3g}, "
        f"attn {proofs['attn_implementation']}, max |logit| {max(f['max_abs'] for f in logit_files):.3f}")
    summary = {"dir": name, "param_count": reference["param_count"], "features_set":
               reference["features_set"], "proofs": proofs, "reload_max_abs_diff": reload_diff,
               "config_kwargs_dropped": dropped}
    if failures:
        raise FeatureNotExercised(f"{name}: " + "; ".join(failures))
    return summary


def clone_model(spec, model, directory):
    try:
        return copy.deepcopy(model)
    except Exception as e:  # noqa: BLE001
        log(f"   deepcopy failed ({e}); reloading {directory}")
        return load_model(spec, directory)


def phi3_decomposed(spec, loaded, out_dir):
    """Phi-3 with every qkv_proj replaced by U diag(S) V^T (fp64 SVD, back to fp32): fused or split."""
    import torch
    if "phi3" not in loaded:
        # A run of this part alone: take the folder an earlier run wrote.
        model_dir = out_dir / "phi3"
        if not (model_dir / "config.json").is_file():
            raise RuntimeError(f"no phi3 model: the phi3 part did not run and {model_dir} has none")
        model = load_model(spec, model_dir)
        inputs = json.loads((model_dir / "inputs.json").read_text())["sequences"]
        loaded["phi3"] = (model, inputs, [logits_of(model, ids) for ids in inputs], model_dir)
    model, inputs, base_logits, model_dir = loaded["phi3"]
    directory = out_dir / "phi3_decomposed"
    directory.mkdir(parents=True, exist_ok=True)
    attn0 = model.model.layers[0].self_attn
    head_dim = attn0.head_dim
    n_q = model.config.num_attention_heads * head_dim
    n_kv = model.config.num_key_value_heads * head_dim
    variants = {"fused": (True, None), "split": (False, None),
                f"fused_r{DECOMPOSED_RANK}": (True, DECOMPOSED_RANK),
                f"split_r{DECOMPOSED_RANK}": (False, DECOMPOSED_RANK)}
    write_json(directory / "inputs.json", {"sequences": inputs, "lengths": [len(x) for x in inputs],
                                           "note": f"the same sequences as ../{model_dir.name}/inputs.json"})
    record = {"model_dir": model_dir.name, "inputs": "inputs.json",
              "weight": "model.layers.{i}.self_attn.qkv_proj.weight [out, in], y = x W^T",
              "cells": {"fused": {"qkv": [0, n_q + 2 * n_kv]},
                        "split": {"q": [0, n_q], "k": [n_q, n_q + n_kv], "v": [n_q + n_kv, n_q + 2 * n_kv]}},
              "method": "torch.linalg.svd in float64 of each cell (full_matrices=False), keep the first "
                        "r singular triplets, W_cell = U[:, :r] diag(S[:r]) Vh[:r] cast to float32; other "
                        "weights untouched",
              "variants": {}}
    variant_logits = {}
    for vname, (fused, rank) in variants.items():
        m = clone_model(spec, model, model_dir)
        layers = []
        with torch.no_grad():
            for layer in m.model.layers:
                w = layer.self_attn.qkv_proj.weight
                w64 = w.detach().double()
                cells = record["cells"]["fused" if fused else "split"]
                new = torch.empty_like(w64)
                cell_info = {}
                for cname, (a, b) in cells.items():
                    u, s, vh = torch.linalg.svd(w64[a:b], full_matrices=False)
                    r = s.numel() if rank is None else min(rank, s.numel())
                    new[a:b] = (u[:, :r] * s[:r]) @ vh[:r]
                    err = float(torch.linalg.norm(new[a:b] - w64[a:b]) / torch.linalg.norm(w64[a:b]))
                    cell_info[cname] = {"rows": [a, b], "shape": [b - a, w64.shape[1]], "rank": r,
                                        "full_rank": s.numel(), "rel_frobenius_error": err,
                                        "singular_values": [float(x) for x in s]}
                w.copy_(new.float())
                layers.append(cell_info)
        files = []
        variant_logits[vname] = []
        for k, ids in enumerate(inputs):
            t = logits_of(m, ids)
            variant_logits[vname].append(t)
            fname = f"logits_{vname}_{k}.npy"
            save_npy_tensor(directory / fname, t)
            files.append({"file": fname, "shape": list(t.shape),
                          "max_abs_diff_vs_original": max_abs_diff(t, base_logits[k])})
        record["variants"][vname] = {"fused": fused, "rank": rank if rank is not None else "full",
                                     "layers": layers, "logits": files}
        log(f"   phi3 {vname}: max diff vs original "
            f"{max(f['max_abs_diff_vs_original'] for f in files):.3g}")
    full = max(f["max_abs_diff_vs_original"] for v in ("fused", "split")
               for f in record["variants"][v]["logits"])
    trunc = {v: max(f["max_abs_diff_vs_original"] for f in record["variants"][v]["logits"])
             for v in record["variants"] if v.endswith(f"_r{DECOMPOSED_RANK}")}
    problems = []
    if full > 1e-3:
        problems.append(f"full-rank reconstruction moved the logits by {full}")
    if min(trunc.values()) < CHANGED_THRESHOLD:
        problems.append(f"rank {DECOMPOSED_RANK} did not change the logits: {trunc}")
    # Rank 16 of one [q;k;v] cell and rank 16 of each block are different approximations.
    fused_vs_split = max(max_abs_diff(a, b) for a, b in zip(variant_logits[f"fused_r{DECOMPOSED_RANK}"],
                                                            variant_logits[f"split_r{DECOMPOSED_RANK}"]))
    record["fused_vs_split_truncated_max_abs_diff"] = fused_vs_split
    write_json(directory / "decomposed.json", record)
    if fused_vs_split < CHANGED_THRESHOLD:
        problems.append(f"rank {DECOMPOSED_RANK} fused and split give the same logits ({fused_vs_split})")
    record_summary = {"dir": "phi3_decomposed", "full_rank_max_abs_diff": full,
                      "truncated_max_abs_diff": trunc, "fused_vs_split_truncated_max_abs_diff": fused_vs_split,
                      "files": [f["file"] for v in record["variants"].values() for f in v["logits"]]}
    if problems:
        raise FeatureNotExercised("; ".join(problems))
    return record_summary


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------
def training_corpus(text_lines, code_files):
    """Blocks of ~40 lines (newlines kept) of the text files, then of code, capped."""
    blocks = []
    block = 40
    for i in range(0, len(text_lines), block):
        blocks.append("\n".join(text_lines[i:i + block]) + "\n")
    used = 0
    for path in code_files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        lines = text.split("\n")
        for i in range(0, len(lines), block):
            chunk = "\n".join(lines[i:i + block]) + "\n"
            blocks.append(chunk)
            used += len(chunk)
        if used >= MAX_CODE_CORPUS_CHARS:
            break
    return blocks


def build_tokenizer(kind, corpus, vocab_size):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, \
        pre_tokenizers, processors, trainers
    info = {"kind": kind}
    if kind == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        info.update(pattern=GPT2_PATTERN, pattern_source="ByteLevel(use_regex=True) built-in")
        trainer_specials = list(GPT2_SPECIALS)
    elif kind == "llama3":
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        info.update(pattern=LLAMA3_PATTERN, pattern_source="Split(isolated)")
        trainer_specials = []
    elif kind == "qwen":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        info.update(pattern=QWEN2_PATTERN, pattern_source="Split(isolated)")
        trainer_specials = []
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=TOKENIZER_MIN_FREQUENCY,
                                  show_progress=False, special_tokens=trainer_specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    info["special_tokens_in_model_vocab"] = bool(trainer_specials)

    # Specials after training take the ids after the model vocabulary (as Llama 3 and Qwen do).
    if kind == "llama3":
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in LLAMA3_SPECIALS])
        tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in LLAMA3_ADDED_NORMAL])
    elif kind == "qwen":
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])

    post = None
    try:
        if kind == "llama3":
            bos = tok.token_to_id("<|begin_of_text|>")
            template = processors.TemplateProcessing(
                single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                special_tokens=[("<|begin_of_text|>", bos)])
            try:
                post = processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
            except Exception:  # noqa: BLE001 - older tokenizers: no processors.Sequence
                post = template
        else:
            post = processors.ByteLevel(trim_offsets=False)
        tok.post_processor = post
    except Exception as e:  # noqa: BLE001
        log(f"   {kind}: no post-processor ({type(e).__name__}: {e})")
        info["post_processor_error"] = f"{type(e).__name__}: {e}"

    # ignore_merges must survive training (the trainer rewrites vocab and merges only); enforce it.
    data = json.loads(tok.to_str())
    if kind == "llama3" and data["model"].get("ignore_merges") is not True:
        log(f"   llama3: ignore_merges was {data['model'].get('ignore_merges')!r} after training; setting it")
        data["model"]["ignore_merges"] = True
        tok = Tokenizer.from_str(json.dumps(data))
    return tok, info


def encode_all(tok, texts, *, parse_special, add_special_tokens=False):
    """ids of every text; parse_special=False splits special added tokens as plain text."""
    if parse_special:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=add_special_tokens)]
    tok.encode_special_tokens = True
    try:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=add_special_tokens)]
    finally:
        tok.encode_special_tokens = False


def json_line(obj):
    """One compact JSON line; U+2028/U+2029/U+0085 escaped so no line splitter breaks it."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\u0085", "\\u0085")


def build_tokenizer_part(kind, corpus, cases, out_dir, vocab_size):
    from tokenizers import Tokenizer
    directory = out_dir / f"tokenizer_{kind}"
    directory.mkdir(parents=True, exist_ok=True)
    trained, info = build_tokenizer(kind, corpus, vocab_size)
    trained.save(str(directory / "tokenizer.json"))
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))     # what the file says
    data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))

    added = {a["content"]: {"id": a["id"], "special": a["special"]} for a in data.get("added_tokens", [])}
    specials = [c for c, a in added.items() if a["special"]]
    texts = [s for _, s in cases]

    # Can special tokens be switched off (tokenizers >= 0.15: Tokenizer.encode_special_tokens)?
    probe = specials[0] if specials else None
    switch_works = False
    if probe is not None:
        with contextlib.suppress(Exception):
            tok.encode_special_tokens = True
            switch_works = tok.encode(probe, add_special_tokens=False).ids != [added[probe]["id"]]
            tok.encode_special_tokens = False
    problems = []
    if probe is not None and not switch_works:
        # Still write the cases (with special tokens matched everywhere), but fail the part.
        problems.append("Tokenizer.encode_special_tokens does not turn special-token matching off: "
                        "'ids' are WITH special tokens matched")
    ids_plain = encode_all(tok, texts, parse_special=not switch_works)
    ids_special = encode_all(tok, texts, parse_special=True)
    ids_post = encode_all(tok, texts, parse_special=True, add_special_tokens=True)
    decoded = tok.decode_batch(ids_plain, skip_special_tokens=False)
    decoded_special = tok.decode_batch(ids_special, skip_special_tokens=False)

    ids_no_ignore = None
    if data["model"].get("ignore_merges"):
        other = json.loads(json.dumps(data))
        other["model"]["ignore_merges"] = False
        tok_nm = Tokenizer.from_str(json.dumps(other))
        ids_no_ignore = encode_all(tok_nm, texts, parse_special=not switch_works)

    # The post-processor adds BOS (llama3) or nothing; checked over every case, recorded, not stored.
    bos = [added["<|begin_of_text|>"]["id"]] if kind == "llama3" else []
    post_mismatch = sum(1 for a, b in zip(ids_post, ids_special) if a != bos + b)

    lines, counts = [], {"with_special": 0, "ignore_merges_differs": 0, "special_differs_without_marker": 0}
    for i, (cat, text) in enumerate(cases):
        rec = {"cat": cat, "text": text, "ids": ids_plain[i]}
        has_special = any(s in text for s in specials)
        if has_special:
            rec["ids_special"] = ids_special[i]
            counts["with_special"] += 1
        elif ids_special[i] != ids_plain[i]:
            counts["special_differs_without_marker"] += 1
        if ids_no_ignore is not None and ids_no_ignore[i] != ids_plain[i]:
            rec["ids_without_ignore_merges"] = ids_no_ignore[i]
            counts["ignore_merges_differs"] += 1
        rec["decoded"] = decoded[i]
        if has_special and decoded_special[i] != decoded[i]:
            rec["decoded_special"] = decoded_special[i]
        lines.append(json_line(rec))

    # Keep the file under its budget: drop the longest text/code/random cases first.
    sizes = [len(ln.encode("utf-8")) + 1 for ln in lines]
    total = sum(sizes)
    dropped = set()
    if total > CASES_MAX_BYTES:
        droppable = sorted((i for i, (cat, _) in enumerate(cases) if cat in ("text", "paragraph", "code",
                                                                            "random")),
                           key=lambda i: -sizes[i])
        for i in droppable:
            if total <= CASES_MAX_BYTES:
                break
            dropped.add(i)
            total -= sizes[i]
    with open(directory / "cases.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for i, ln in enumerate(lines):
            if i not in dropped:
                f.write(ln + "\n")

    meta = dict(info)
    meta.update({
        "tokenizer_json": "tokenizer.json", "cases": "cases.jsonl",
        "n_cases": len(lines) - len(dropped), "n_dropped_for_size": len(dropped),
        "cases_bytes": (directory / "cases.jsonl").stat().st_size,
        "model_vocab_size": tok.get_vocab_size(with_added_tokens=False),
        "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
        "n_merges": len(data["model"].get("merges", [])),
        "ignore_merges": data["model"].get("ignore_merges"),
        "normalizer": data.get("normalizer"), "pre_tokenizer": data.get("pre_tokenizer"),
        "post_processor": data.get("post_processor"), "decoder": data.get("decoder"),
        "added_tokens": added,
        "fields": {
            "ids": "encode(text, add_special_tokens=False) with tok.encode_special_tokens = True: special "
                   "added tokens are NOT matched (split as plain text); non-special added tokens are",
            "ids_special": "present where text contains one of this tokenizer's special tokens: encode(text, "
                           "add_special_tokens=False) with special tokens matched (the library default)",
            "ids_without_ignore_merges": "present where it differs from ids: the same tokenizer.json with "
                                         "model.ignore_merges = false",
            "decoded": "decode(ids, skip_special_tokens=False)",
            "decoded_special": "decode(ids_special, skip_special_tokens=False), where it differs from decoded",
        },
        "post_processor_check": {
            "rule": f"encode(text, add_special_tokens=True) == {bos} + ids_special (or ids if absent)",
            "mismatches": post_mismatch},
        "counts": counts, "encode_special_tokens_switch_works": switch_works,
        "categories": {c: sum(1 for i, (cat, _) in enumerate(cases) if cat == c and i not in dropped)
                       for c in sorted({cat for cat, _ in cases})},
    })
    write_json(directory / "meta.json", meta)
    log(f"   {kind}: vocab {meta['model_vocab_size']} (+{len(added)} added), {meta['n_cases']} cases, "
        f"{meta['cases_bytes']} bytes, {counts}, post mismatches {post_mismatch}")
    if post_mismatch:
        problems.append(f"post-processor check failed on {post_mismatch} cases")
    if counts["special_differs_without_marker"]:
        problems.append(f"{counts['special_differs_without_marker']} cases differ with special matching "
                        "although they contain no special token")
    if meta["cases_bytes"] > CASES_MAX_BYTES:
        problems.append(f"cases.jsonl is {meta['cases_bytes']} bytes")
    if problems:
        raise RuntimeError(f"{kind}: " + "; ".join(problems))
    return {k: meta[k] for k in ("model_vocab_size", "vocab_size_with_added", "n_cases", "n_dropped_for_size",
                                 "cases_bytes", "ignore_merges", "counts", "added_tokens")}


# ----------------------------------------------------------------------------------------------
# Self-test (no torch / transformers / tokenizers needed)
# ----------------------------------------------------------------------------------------------
def self_test(text_files):
    ok = True

    def check(cond, what):
        nonlocal ok
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        ok = ok and bool(cond)

    raw = npy_bytes([2, 3], [0.0, 1.0, -2.5, 3.25, 1e-3, 7.0])
    header_len = struct.unpack("<H", raw[8:10])[0]
    check(raw[:6] == NPY_MAGIC and raw[6:8] == b"\x01\x00", "npy magic and version 1.0")
    check((10 + header_len) % NPY_ALIGN == 0, f"npy header aligned to {NPY_ALIGN} (len {header_len})")
    header = raw[10:10 + header_len].decode("latin1")
    check(header.endswith("\n") and "'descr': '<f4'" in header and "'shape': (2, 3)" in header,
          f"npy header {header.strip()!r}")
    check(list(struct.unpack("<6f", raw[10 + header_len:])) == [0.0, 1.0, -2.5, 3.25,
                                                                 struct.unpack('<f', struct.pack('<f', 1e-3))[0],
                                                                 7.0], "npy data little-endian float32")
    check("'shape': (5,)" in npy_bytes([5], [0.0] * 5)[10:].decode("latin1", "replace"), "npy 1-D shape")

    lines = []
    for path in text_files:
        lines += read_lines(path)
    if not lines:
        lines = read_lines(REPO_ROOT / "README.md")
    code = find_code_files(REPO_ROOT)
    check(len(code) > 0, f"{len(code)} code files found under {REPO_ROOT}")
    t0 = time.time()
    cases = make_test_strings(lines, code)
    again = make_test_strings(lines, code)
    check(cases == again, f"generator deterministic ({time.time() - t0:.2f} s for two runs)")
    try:
        check_test_strings(cases, N_CASES)
        check(True, f"{len(cases)} strings, valid UTF-8, no surrogates")
    except AssertionError as e:
        check(False, str(e))
    cats = {}
    for cat, _ in cases:
        cats[cat] = cats.get(cat, 0) + 1
    check(set(cats) >= {"text", "paragraph", "code", "numbers", "accents", "emoji", "scripts", "whitespace",
                        "contractions", "specials", "edge", "random"}, f"categories {cats}")
    joined = "".join(s for _, s in cases)
    for what, probe in [("NFD combining", "\u0301"), ("ZWJ", "\u200d"), ("flag", "\U0001F1FA"),
                        ("CJK", "\u4f60"), ("Arabic", "\u0645"), ("Hebrew", "\u05e9"),
                        ("Devanagari", "\u0928"), ("CRLF", "\r\n"), ("tab", "\t"), ("'LL", "'LL"),
                        ("special", "<|im_start|>"), ("Llama special", "<|begin_of_text|>")]:
        check(probe in joined, f"test strings contain {what}")
    est = sum(len(json_line({"cat": c, "text": s, "ids": [1000] * max(1, len(s.encode()) // 3),
                             "decoded": s})) + 1 for c, s in cases)
    check(est < CASES_MAX_BYTES, f"estimated cases.jsonl size {est} bytes (< {CASES_MAX_BYTES})")
    line = json_line({"text": "a\u2028b\u0085c"})
    check("\u2028" not in line and "\u0085" not in line and json.loads(line)["text"] == "a\u2028b\u0085c",
          "json_line escapes line separators")
    corpus = training_corpus(lines, code)
    check(sum(map(len, corpus)) > 10_000, f"training corpus {sum(map(len, corpus))} chars")
    print("self-test " + ("passed" if ok else "FAILED"), flush=True)
    return 0 if ok else 1


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------
def file_inventory(out_dir):
    files = {}
    for p in sorted(out_dir.rglob("*")):
        if p.is_file():
            files[p.relative_to(out_dir).as_posix()] = p.stat().st_size
    return files


def merged_with_previous(path, manifest, complete_run):
    """A run of some parts keeps what an earlier run in the same folder recorded for the others."""
    if complete_run or not path.is_file():
        return manifest
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return manifest
    for key in ("parts", "models", "tokenizers"):
        merged = dict(previous.get(key, {}))
        merged.update(manifest.get(key, {}))
        manifest[key] = merged
    manifest["previous_runs"] = previous.get("previous_runs", []) + [
        {k: previous.get(k) for k in ("created_utc", "argv", "versions")}]
    return manifest


def main(argv=None):
    global _LOG_FILE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default %(default)s)")
    ap.add_argument("--text", nargs="*", default=[], help="plain text files: tokenizer training text and "
                    "test lines (default: the repository's README.md and docs/*.md)")
    ap.add_argument("--parts", default="all", help="comma list of: models, decomposed, tokenizers, or "
                    "single names (llama3, mistral, qwen2, qwen3, phi3, gpt2, llama3-tok, qwen); default all")
    ap.add_argument("--archive", type=Path, default=None, help="also write the output folder as this .tar.gz")
    ap.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--self-test", action="store_true", help="check the pure-Python parts and exit")
    args = ap.parse_args(argv)

    if args.self_test:
        return self_test(args.text)
    known_parts = {"all", "models", "decomposed", "tokenizers", "llama3", "mistral", "qwen2", "qwen3", "phi3",
                   "gpt2", "llama3-tok", "qwen"}
    unknown = sorted(set(args.parts.split(",")) - known_parts)
    if unknown:
        ap.error(f"unknown --parts {unknown}; known: {sorted(known_parts)}")

    t_start = time.time()
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    _LOG_FILE = open(out_dir / "make_references.log", "a", encoding="utf-8")
    parts = Parts()
    wanted = set(args.parts.split(","))

    def want(*names):
        return "all" in wanted or any(n in wanted for n in names)

    log(f"==== make_references.py {' '.join(sys.argv[1:])}")
    log(f"out {out_dir}, text {args.text}, parts {sorted(wanted)}")
    env = versions()
    log(f"versions {env}")
    manifest = {"generator": "tests/hf/make_references.py", "created_utc":
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": sys.argv[1:], "versions": env,
                "seeds": {"torch_manual_seed": SEED_TORCH, "weights": f"{SEED_WEIGHTS} + architecture index",
                          "inputs": SEED_INPUTS, "strings": SEED_STRINGS},
                "init": {"matrices": f"N(0, {WEIGHT_STD}^2)", "norms": f"1 + {NORM_STD} N(0, 1)",
                         "biases": f"{BIAS_STD} N(0, 1)"},
                "models": {}, "tokenizers": {}}

    def setup_torch():
        import torch
        torch.set_num_threads(max(1, args.threads))
        torch.set_default_dtype(torch.float32)
        manifest["torch_threads"] = torch.get_num_threads()

    parts.run("setup_torch", setup_torch)
    torch_ok = parts.status["setup_torch"]["ok"]

    loaded = {}
    specs = arch_specs()
    if torch_ok:
        for index, spec in enumerate(specs):
            if want("models", spec["name"]):
                summary = parts.run(f"model_{spec['name']}", build_arch, spec, index, out_dir, loaded)
                if summary is not None:
                    manifest["models"][spec["name"]] = summary
                elif spec["name"] in loaded:
                    ref = out_dir / spec["name"] / "reference.json"
                    with contextlib.suppress(Exception):
                        r = json.loads(ref.read_text())
                        manifest["models"][spec["name"]] = {
                            "dir": spec["name"], "param_count": r["param_count"],
                            "features_set": r["features_set"], "proofs": r["proofs"],
                            "proof_failures": r["proof_failures"]}
        if want("decomposed", "models", "phi3"):
            phi3 = next(s for s in specs if s["name"] == "phi3")
            summary = parts.run("phi3_decomposed", phi3_decomposed, phi3, loaded, out_dir)
            if summary is not None:
                manifest["models"]["phi3_decomposed"] = summary

    if want("tokenizers", "gpt2", "llama3-tok", "qwen"):
        state = {}

        missing = [p for p in args.text if not Path(p).is_file()]
        if missing:
            def report_missing():
                raise FileNotFoundError(f"--text files not found (going on without them): {missing}")
            parts.run("text_files", report_missing)

        def prepare_strings():
            text_files = [p for p in args.text if Path(p).is_file()] or [
                str(p) for p in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
                if Path(p).is_file()]
            lines = []
            for path in text_files:
                lines += read_lines(path)
            code = find_code_files(REPO_ROOT)
            cases = make_test_strings(lines, code)
            check_test_strings(cases, N_CASES)
            state["cases"] = cases
            state["corpus"] = training_corpus(lines, code)
            manifest["tokenizer_inputs"] = {"text_files": [Path(p).name for p in text_files],
                                            "text_lines": len(lines), "code_files": len(code),
                                            "corpus_chars": sum(map(len, state["corpus"])),
                                            "n_cases": len(cases)}
            log(f"   {len(cases)} test strings; corpus {manifest['tokenizer_inputs']['corpus_chars']} chars")

        parts.run("test_strings", prepare_strings)
        if "cases" in state:
            for kind, alias in (("gpt2", "gpt2"), ("llama3", "llama3-tok"), ("qwen", "qwen")):
                if want("tokenizers", alias):
                    summary = parts.run(f"tokenizer_{kind}", build_tokenizer_part, kind, state["corpus"],
                                        state["cases"], out_dir, TOKENIZER_VOCAB)
                    if summary is not None:
                        manifest["tokenizers"][kind] = summary

    def finish():
        files = file_inventory(out_dir)
        total = sum(files.values())
        manifest["files"] = files
        manifest["total_bytes"] = total
        if total > TOTAL_MAX_BYTES:
            raise RuntimeError(f"output is {total} bytes, over the {TOTAL_MAX_BYTES} budget")

    parts.run("size_budget", finish)
    manifest["parts"] = parts.status
    manifest["elapsed_s"] = round(time.time() - t_start, 2)
    try:
        manifest = merged_with_previous(out_dir / "manifest.json", manifest, "all" in wanted)
        write_json(out_dir / "manifest.json", manifest)
    except Exception as e:  # noqa: BLE001
        log(f"!! manifest.json FAILED: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        parts.status["manifest"] = {"ok": False, "error": str(e), "seconds": 0.0}

    failed = parts.failed()
    log("== summary")
    for name, s in parts.status.items():
        log(f"   {'ok  ' if s['ok'] else 'FAIL'} {name:22s} {s['seconds']:7.2f} s  {s['error'] or ''}")
    log(f"   {len(parts.status) - len(failed)} ok, {len(failed)} failed, {manifest.get('total_bytes', 0)} bytes, "
        f"{time.time() - t_start:.1f} s")
    if args.archive is not None:
        try:
            _LOG_FILE.flush()
            args.archive.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(args.archive, "w:gz") as tar:
                tar.add(str(out_dir), arcname=out_dir.name)
            log(f"   archive {args.archive} ({args.archive.stat().st_size} bytes)")
        except Exception as e:  # noqa: BLE001
            log(f"!! archive FAILED: {type(e).__name__}: {e}")
            failed.append("archive")
    _LOG_FILE.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
