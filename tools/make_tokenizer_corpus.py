#!/usr/bin/env python3
"""Writes the tokenizer test corpus (tests/fixtures/tokenizer/corpus.jsonl): varied strings, one
{"text": ...} per line, covering scripts, emoji, code, whitespace, digits and special-token text.
Deterministic: a fixed seed and no input."""
import argparse
import json
import random

SCRIPTS = {
    "latin": "Café naïve résumé façade jalapeño Ångström Straße Łódź Čeština žluťoučký kůň über ÆØÅ œuvre",
    "cyrillic": "Привет мир съешь же ещё этих мягких французских булок Ёжик Україна Беларусь",
    "greek": "Καλημέρα κόσμε ξεσκεπάζω την ψυχοφθόρα βδελυγμία Ωμέγα ΣΊΣΥΦΟΣ",
    "arabic": "مرحبا بالعالم اللغة العربية جميلة ٠١٢٣٤٥٦٧٨٩ كتاب",
    "hebrew": "שלום עולם עברית היא שפה שמית",
    "devanagari": "नमस्ते दुनिया हिन्दी भाषा क्षत्रिय ज्ञान १२३",
    "thai": "สวัสดีชาวโลก ภาษาไทยไม่มีการเว้นวรรค",
    "cjk": "你好世界 中文分词很难 漢字 日本語の文章です 한국어",
    "hangul": "안녕하세요 세계 한글은 과학적인 문자입니다",
    "kana": "こんにちは世界 カタカナ ひらがな ｶﾀｶﾅ ーッ",
    "misc": "ᚠᛇᚻ ᐊᓕᒍᖅ ሰላም ជំរាបសួរ ⠓⠑⠇⠇⠕ Ⅻ ① ²³ ½ ℃ № ™",
}
EMOJI = ["😀", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🇯🇵", "🇺🇸", "🏳️‍🌈", "❤️", "🤦🏼‍♂️", "🧑🏿‍🚀", "✨", "🔥", "🙂",
         "👋🏻", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "1️⃣", "©️"]
CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "for i in range(10):\n\tprint(f'{i:03d}')\n",
    "#include <vector>\nint main() { std::vector<int> v{1,2,3}; return v[0]; }\n",
    "template <typename T>\nT add(T a, T b) {\n  return a + b;\n}\n",
    '{"key": "value", "n": 123, "list": [1, 2.5, null, true], "nested": {"a": "b"}}',
    "if [ -f \"$HOME/.bashrc\" ]; then\n  source ~/.bashrc\nfi\nls -la | grep '^d' | wc -l\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "x = [i*i for i in range(100) if i % 3 == 0]\r\n",
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "fn main() { let s: &str = \"héllo\"; println!(\"{}\", s); }",
]
WORDS = ("the quick brown fox jumps over a lazy dog while we are testing tokenizers with many words "
         "and punctuation , . ; : ! ? ( ) [ ] { } - -- — – ... ' \" ` ~ @ # $ % ^ & * _ + = | \\ / < >").split(" ")
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'M", "'LL", "'D", "'rE"]
SPECIALS = ["<s>", "</s>", "<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|reserved_special_token_5|>", "<|eot_id", "<s", "</s >", "<<s>>", "<|eot_id|><|eot_id|>"]
ODD = ["\ufffd", "\ue000", "\U0010ffff", "\U000f0000", "\u200b", "\u200d", "\ufeff", "\u00a0", "\u3000", "\u2028",
       "\u0085", "\u000b", "\u000c", "\u2009", "\u0301", "e\u0301", "\u00ad", "\U0001d400", "\x7f", "\x01"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", " \t ", "\n", "\r\n", "\r", "\n\n", "\r\n\r\n", "\n\r", " \n ", "    \n"]


def rand_text(r, n):
    parts = []
    for _ in range(n):
        k = r.random()
        if k < 0.35:
            parts.append(r.choice(WORDS))
        elif k < 0.50:
            s = r.choice(list(SCRIPTS.values())).split(" ")
            parts.append(r.choice(s))
        elif k < 0.57:
            parts.append(r.choice(EMOJI))
        elif k < 0.64:
            parts.append(str(r.randrange(10 ** r.randint(1, 12))))
        elif k < 0.70:
            parts.append(r.choice(WORDS) + r.choice(CONTRACTIONS))
        elif k < 0.75:
            parts.append(r.choice(SPECIALS))
        elif k < 0.80:
            parts.append(r.choice(ODD))
        else:
            parts.append(r.choice(SPACES))
        parts.append(r.choice([" ", " ", " ", "", "\n", "  "]))
    return "".join(parts)


def corpus():
    r = random.Random(20240611)
    out = ["", " ", "  ", "\n", "\t", "Hello world", "Hello", " Hello", "hello world!", "HELLO WORLD",
           " leading space", "trailing space ", "  both  ", "a", "▁", "▁▁x", "Ġ", "I'm", "you'll", "they'RE",
           "don't", "it's", "We've", "she'd", "I'M", "'s", "'", "''", "1", "12", "123", "1234", "12345",
           "123456789012345678901234567890", "3.14159", "1,000,000", "٣٤٥", "१२३४", "1e10", "0x1F", "v1.2.3"]
    # Every printable ASCII char and a sample of single code points.
    out += [chr(c) for c in range(32, 127)]
    out += [chr(c) for c in (0xA1, 0xBF, 0xD7, 0xF7, 0x100, 0x17F, 0x391, 0x416, 0x5D0, 0x627, 0x905, 0xE01,
                             0x1100, 0x3042, 0x30A2, 0x4E00, 0x9FFF, 0xAC00, 0xFF21, 0x1F600)]
    out += ODD + SPACES + EMOJI + CODE + SPECIALS
    for name, s in SCRIPTS.items():
        out += [s, s.upper(), s.lower(), " " + s, s.replace(" ", ""), s + "\n" + s]
    for c in CONTRACTIONS:
        out += ["it" + c, "IT" + c, "x" + c + " y", " " + c]
    for sp in SPACES:
        out += ["a" + sp + "b", sp + "x", "x" + sp, sp + "x" + sp + "y" + sp]
    for n in range(1, 25):
        out.append("".join(str((i * 7 + n) % 10) for i in range(n)))
    for s in SPECIALS:
        out += [s + "Hello", "Hello " + s + " world", "x" + s, s + " " + s, " " + s + "\n"]
    out += ["a" * n for n in (50, 300, 1000)] + ["supercalifragilisticexpialidocious" * 5,
            "Donaudampfschifffahrtsgesellschaftskapitän", "ab" * 400, "é" * 200, "😀" * 50, "\n" * 40, " " * 64]
    for e in EMOJI:
        out += ["I like " + e + "!", e + e, e + " " + e + "text"]
    for c in CODE:
        out += [c.replace("\n", "\r\n"), c.replace("    ", "\t")]
    while len(out) < 2300:
        out.append(rand_text(r, r.randint(1, 40)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="tests/fixtures/tokenizer/corpus.jsonl")
    args = ap.parse_args()
    texts = corpus()
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(texts)} lines")


if __name__ == "__main__":
    main()
