#!/usr/bin/env python3
"""Makes the tokenizer fixtures of tests/test_tokenizer.c with Hugging Face's `tokenizers`
(pip install tokenizers): small byte-level BPE tokenizers trained here, built the way Qwen's are
(NFC, Split on Qwen's pattern + ByteLevel, ByteLevel decoder, added special and non-special
tokens), and the ids, pieces and decodings that library gives for many test strings.

  python3 tools/make_tokenizer_fixture.py [out_dir]     (default tests/fixtures/tokenizer)
  python3 tools/make_tokenizer_fixture.py --probe DIR   (the exhaustive class check, below)

Writes, under out_dir:
  qwen3/tokenizer.json, qwen3/tokenizer_config.json   Qwen2/Qwen3 pattern, NFC, ~2000 tokens
  qwen35/tokenizer.json                               Qwen3.5 pattern (letters and marks)
  gpt4/tokenizer.json                                 GPT-4 digits (\\p{N}{1,3}), no normalizer,
                                                      ignore_merges
  nfc.json     [[text, NFC(text)]]: every code point with a canonical decomposition (composed and
               decomposed), combining marks out of order, blocked and unblocked pairs, Hangul,
               as tokenizers' NFC normalizer gives them
  cases.json   [{tokenizer, text, ids, decoded, decoded_skip, pieces?}], decode-only cases
               [{tokenizer, ids, decoded}] and chat cases [{tokenizer, messages, ids}]
The C tests read these files only; nothing here runs at test time.

--probe DIR writes DIR/probe_qwen3.json and DIR/probe_qwen35.json: every code point from U+0080
to U+10FFFF in snippets whose split depends on its class, with the pieces tokenizers' Split gives
(about 60 MB each, not committed); DN_TOK_PROBE=DIR ./build/test_deltanet tok_probe compares them.
"""
import json
import os
import random
import sys
import unicodedata as ud

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

LETTERS = [r"\p{L}+", r"[\p{L}\p{M}]+"]
DIGITS = [r"\p{N}", r"\p{N}{1,3}"]
PUNCT = [r"[^\s\p{L}\p{N}]+", r"[^\s\p{L}\p{M}\p{N}]+"]


def pattern(marks, digits3):
    return (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?" + LETTERS[marks] + "|" +
            DIGITS[digits3] + "| ?" + PUNCT[marks] + r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


CORPUS = [
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! the end.",
    "I'm sure you'll see that it's what we've done; they're here and he'd know. I'M SURE YOU'LL "
    "SEE IT'S DONE, THEY'RE HERE, HE'D KNOW, WE'VE GOT IT.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1234 2024-05-17 3.14159 1,000,000 +7 -12 50%",
    "def main(argv):\n    for i in range(10):\n        print(i ** 2)  # squares\n    return 0\n",
    "int main(void) {\n\treturn printf(\"%d\\n\", x && y || !z);\n}\n",
    "{\"key\": [1, 2, 3], \"name\": \"value\", \"ok\": true, \"none\": null}",
    "Café, naïve, résumé, déjà vu, façade, jalapeño, Ångström, Øresund, straße, Œuvre.",
    "Привет, как дела? Всё хорошо. Καλημέρα κόσμε. Γειά σου.",
    "中文测试：你好，世界。今天天气很好，我们去公园散步吧！机器学习和自然语言处理。",
    "日本語のテキストです。カタカナとひらがな、漢字を混ぜて書きます。",
    "한국어 문장입니다. 안녕하세요, 반갑습니다.",
    "العربية لغة جميلة. עברית היא שפה. हिन्दी भाषा बहुत सुंदर है। ภาษาไทยสวยงาม",
    "Emoji: 😀 😂 👍🏽 ❤️ 🎉 👨‍👩‍👧‍👦 🇺🇸 🇯🇵 ✨🔥",
    "Whitespace   runs\t\ttabs\n\n\nnewlines\r\nwindows   \n  trailing   ",
    "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\nHi! How can I help?<|im_end|>",
    "Punctuation!!! ??? ... --- *** ### @@@ $$$ (( )) [[ ]] {{ }} <<>> // \\\\ || && ;; ::",
    "URLs like https://example.com/path?q=1&r=2#frag and emails like a.b@c.org.",
    "MiXeD CaSe WoRdS and camelCaseIdentifiers and snake_case_names and SCREAMING_CASE.",
]

TEXTS = [
    "", "a", " ", "  ", "\n", "hello world", "Hello  world", "   leading spaces", "trailing   ",
    "tab\there", "\t\tx", "line1\nline2", "crlf\r\nnext", "\r\n\r\n", "a\n\n\nb", "x \n y",
    "  \n  ", " \t \n\t z", "word\n\n  indented",
    "I'M HERE, YOU'LL SEE, SHE'S FINE, WE'RE OK, THEY'VE GONE, I'D GO",
    "don't can't won't it's we're they've I'd", "'S 'LL 'Re 'vE 'M 'D 'T", "''s", "'ſ and 'ſt",
    "x's'll're", "'", "' s", "'sa'tb",
    "1234567890", "3.14159", "1,000,000", "x²³ ½ Ⅻ ٣٤٥ ১২৩", "12ab34", "a1b2c3",
    "!!!\n\n", "...?!\r\n", " --- \n", "a+b=c;", "(x)", " ((( )))\n\r\n",
    "def f(x):\n    return x**2  # square\n", "if (a && b) { return; }", "<div class=\"x\">",
    "{\"k\": [1, 2]}",
    "café naïve résumé", "cafe\u0301", "A\u030A", "\u1E0A\u0323", "\u0044\u0323\u0307",
    "e\u0301\u0301", "\u212B \u2126 \u00C5", "ﬁ ligature", "\u1100\u1161\u11A8 한국어",
    "\u0958\u0959 devanagari qa", "\u0F73 tibetan", "\u0344", "\u1F82",
    "中文测试，你好。", "日本語のテキスト、カタカナ", "Привет мир", "Καλημέρα", "العربية", "עברית",
    "हिन्दी", "ภาษาไทย", "ગુજરાતી", "ᚠᛇᚻ runes", "Ꭰꭰ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "😀👍🏽", "👨‍👩‍👧‍👦", "🇺🇸🇯🇵", "❤️", "a😀b", " 😀", "😀\n",
    "\u00A0nbsp", "\u3000ideographic", "a\u2028b\u2029c", "x\u0085y", "\u200Bzwsp",
    "\ufeffbom", "\u0000nul", "\x01\x02\x7f", "\u180e mongolian",
    "special <|im_start|>user\nhi<|im_end|>", "<|endoftext|><|endoftext|>", "x<|im_end|>y",
    "<think>\nreasoning\n</think>\n\nanswer", "<|im_start", "<|im_end|", "<<|im_end|>>",
    "<tool_call>x</tool_call>", "a<think>b", "<|endoftext|>", "\u00C5-tok A\u030A-tok A-tok",
    "\u2126 \u03A9 \u4e2dx\u00e9 \u4e2dxe\u0301 \u0120a b",
    "a" * 300, " " * 100, "1" * 50, "!" * 40 + "\n" * 3, "ab" * 100,
    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n",
    "camelCaseWord snake_case_word SCREAMING_CASE", "üÜöÖäÄß",
]
TEXTS += CORPUS


def build(marks, digits3, nfc, vocab, ignore_merges):
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC() if nfc else None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern(marks, digits3)), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, min_frequency=1, show_progress=False,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3 + TEXTS, trainer)
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False),
                    AddedToken("<tool_call>", special=False, normalized=True),
                    AddedToken("A\u030A-tok", special=False, normalized=True),
                    AddedToken("\u2126", special=False, normalized=True),
                    AddedToken("\u4e2dx\u00e9", special=False, normalized=False),
                    AddedToken("\u0120a b", special=False, normalized=False)])
    tok.add_special_tokens([AddedToken("<|fim_pad|>", special=True, normalized=False)])
    if ignore_merges:
        j = json.loads(tok.to_str())
        j["model"]["ignore_merges"] = True
        tok = Tokenizer.from_str(json.dumps(j))
    return tok


def sweep_text(rng):
    """Code points of every class, taken at the ends of the runs of one class (where a table
    is most likely wrong), each in a snippet whose split depends on its class."""
    def cls(c):
        cat = ud.category(chr(c))
        if cat == "Cn" or cat == "Cs" or cat == "Co":
            return None
        return cat[0] if cat[0] in "LMN" else ("S" if cat in ("Zs", "Zl", "Zp") else cat)
    ends, prev = [], None
    for c in range(0x80, 0x32000):
        k = cls(c)
        if k != prev and k is not None:
            ends.append(c)
            if c > 0x80 and cls(c - 1) is not None:
                ends.append(c - 1)
        prev = k
    ends = sorted(set(ends))
    pick = sorted(rng.sample(ends, 1200)) + [c for c in range(0x80, 0x3001) if ud.category(chr(c))[0] == "Z"]
    pick += [0x85, 0x180E, 0x200B, 0xFEFF, 0x17F, 0x2028, 0x2029, 0x3000, 0x1680, 0x202F, 0x205F]
    snippets = []
    for c in pick:
        ch = chr(c)
        snippets.append(ch + "!" + ch + "a " + ch + "1" + ch + ch + "\t" + ch)
    return [" ".join(snippets[i:i + 60]) for i in range(0, len(snippets), 60)]


def nfc_cases(rng):
    nfc = normalizers.NFC()
    texts = []
    marks = [c for c in range(0x300, 0x30000) if ud.combining(chr(c))]
    for c in range(0xA0, 0x30000):
        ch = chr(c)
        d = ud.decomposition(ch)
        if d and not d.startswith("<"):
            texts.append(ch)
            texts.append(ud.normalize("NFD", ch))
            texts.append(ud.normalize("NFD", ch) + chr(rng.choice(marks)))
    for _ in range(1500):  # a starter and marks in any order, some starters between
        s = rng.choice("aeiouAEOUnczsgkyw") + "".join(
            chr(rng.choice(marks)) if rng.random() < 0.8 else rng.choice("aeo\u0915\u05d0")
            for _ in range(rng.randrange(1, 5)))
        texts.append(s)
    for _ in range(300):  # Hangul: jamo sequences and syllables followed by jamo
        L = chr(0x1100 + rng.randrange(19)); V = chr(0x1161 + rng.randrange(21))
        T = chr(0x11A8 + rng.randrange(27)); S = chr(0xAC00 + rng.randrange(11172))
        texts.append(rng.choice([L + V, L + V + T, S + T, S + V, L + L + V, S + "\u0300" + T]))
    # the expected values are tokenizers' own, which leaves marks and compositions newer than
    # its Unicode data alone (tools/gen_unicode_tables.py masks the same code points)
    out = [[t, nfc.normalize_str(t)] for t in texts]
    newer = sum(want != ud.normalize("NFC", t) for t, want in out)
    print("nfc: %d cases, %d where tokenizers differs from Python's Unicode %s" %
          (len(out), newer, ud.unidata_version))
    return out


def probe(out):
    os.makedirs(out, exist_ok=True)
    cps = [c for c in range(0x80, 0x110000) if not 0xD800 <= c < 0xE000]
    for name, marks in (("qwen3", 0), ("qwen35", 1)):
        split = pre_tokenizers.Split(Regex(pattern(marks, 0)), behavior="isolated", invert=False)
        texts, pieces = [], []
        for i in range(0, len(cps), 400):
            s = " ".join(chr(c) + "!" + chr(c) + "a " + chr(c) + "1" + chr(c) + chr(c) + "\t" + chr(c)
                         for c in cps[i:i + 400])
            texts.append(s)
            pieces.append([len(p.encode()) for p, _ in split.pre_tokenize_str(s)])
        with open(os.path.join(out, "probe_%s.json" % name), "w") as f:
            json.dump({"texts": texts, "piece_bytes": pieces}, f, ensure_ascii=False)
    print("wrote the class probes under", out)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--probe":
        return probe(sys.argv[2])
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tokenizer"
    rng = random.Random(11)
    with open(os.path.join(out, "nfc.json"), "w") as f:
        json.dump({"unicode_python": ud.unidata_version, "cases": nfc_cases(random.Random(5))}, f,
                  ensure_ascii=False, separators=(",", ":"))
    configs = {
        "qwen3": build(0, 0, True, 2000, False),
        "qwen35": build(1, 0, True, 900, False),
        "gpt4": build(0, 1, False, 700, True),
    }
    sweep = sweep_text(rng)
    cases, dec_cases, chat_cases = [], [], []
    for name, tok in configs.items():
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
        if name == "qwen3":
            cfg = {
                "add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>", "model_max_length": 131072,
                "tokenizer_class": "Qwen2Tokenizer", "errors": "replace",
                "chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + "
                                 "'\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
            }
            with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
                json.dump(cfg, f, indent=2)
        split = pre_tokenizers.Split(Regex(pattern(*{"qwen3": (0, 0), "qwen35": (1, 0), "gpt4": (0, 1)}[name])),
                                     behavior="isolated", invert=False)
        texts = TEXTS + (sweep if name != "gpt4" else sweep[:3])
        for text in texts:
            enc = tok.encode(text, add_special_tokens=True)
            ids = enc.ids
            c = {"tokenizer": name, "text": text, "ids": ids,
                 "decoded": tok.decode(ids, skip_special_tokens=False),
                 "decoded_skip": tok.decode(ids, skip_special_tokens=True)}
            norm = tok.normalizer.normalize_str(text) if tok.normalizer else text
            if "<|" not in text and "<t" not in text and "</" not in text and "-tok" not in text and "a b" not in text:
                c["pieces"] = [p for p, _ in split.pre_tokenize_str(norm)]
            cases.append(c)
        vs = tok.get_vocab_size(with_added_tokens=True)
        for k in range(30):
            ids = [rng.randrange(vs) for _ in range(rng.randrange(1, 12))]
            dec_cases.append({"tokenizer": name, "ids": ids,
                              "decoded": tok.decode(ids, skip_special_tokens=False),
                              "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    tok = configs["qwen3"]
    for msgs, gen in [
        ([{"role": "user", "content": "Hello!"}], True),
        ([{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Write a poem about the sea, in 中文.\n  Please."},
          {"role": "assistant", "content": "大海 🌊\n\nwaves"},
          {"role": "user", "content": "Thanks!  "}], True),
        ([{"role": "user", "content": ""}], False),
    ]:
        text = "".join("<|im_start|>" + m["role"] + "\n" + m["content"] + "<|im_end|>\n" for m in msgs)
        if gen:
            text += "<|im_start|>assistant\n"
        chat_cases.append({"tokenizer": "qwen3", "messages": msgs, "add_generation_prompt": gen,
                           "text": text, "ids": tok.encode(text).ids})
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"tokenizers_version": tokenizers.__version__, "unicode_python": ud.unidata_version,
                   "encode": cases, "decode": dec_cases, "chat": chat_cases},
                  f, ensure_ascii=False, separators=(",", ":"))
    print("wrote", out, "with", len(cases), "encode,", len(dec_cases), "decode,", len(chat_cases),
          "chat cases (tokenizers", tokenizers.__version__ + ")")


if __name__ == "__main__":
    main()
