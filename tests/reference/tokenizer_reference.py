#!/usr/bin/env python3
"""Reference token ids from open_clip's SimpleTokenizer, for tests/tokenizer_parity.rs.

Writes a JSON file:
    {"open_clip": version, "ftfy": version, "unicode": unicodedata version,
     "context_length": 77,
     "cases":  [{"text": str, "encode": [ids], "tokens": [ids], "decoded": str}, ...],
     "decode": [{"ids": [ids], "text": str}, ...]}

- `encode`: SimpleTokenizer.encode(text): BPE ids, no start/end, no truncation.
- `tokens`: open_clip.tokenize(text, context_length=77)[0] without its padding, i.e. the
  first min(len(encode) + 2, 77) ids ([SOT, ids..., EOT], last forced to EOT when cut).
- `decoded`: SimpleTokenizer.decode(tokens).
- `decode`: decode() of fixed id runs that cover every id of the vocabulary.

The strings are fixed (no randomness). Each must be text that ftfy leaves to its
non-mojibake fixers: the Rust port does not repair mojibake, so the script fails if a
hand-written string would need `fix_encoding`, and leaves out of the Unicode sweep the
few characters that trigger it.

Usage: tokenizer_reference.py --out FILE.json
"""

import argparse
import json
import os
import sys
import unicodedata

import ftfy
import open_clip
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, SimpleTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = os.path.join(ROOT, "assets", "clip_zeroshot_prompts.json")

PLAIN = [
    "a photo of a cat",
    "a photo of a dog",
    "A photo of a cat.",
    "a diagram",
    "a dog playing in the snow",
    "two people riding bicycles along a river at sunset",
    "an oil painting of a lighthouse in a storm",
    "a close-up photo of a red apple on a wooden table",
    "a satellite image of farmland",
    "a black and white photo of New York City in 1950",
    "the Eiffel Tower at night",
    "a cartoon drawing of a happy sun",
    "an x-ray of a human hand",
    "a low-resolution photo of a car",
    "a sketch of a horse",
    "a tattoo of a dragon",
    "a plate of spaghetti with tomato sauce",
    "a person wearing a blue jacket and sunglasses",
    "a bird perched on a power line",
    "an empty parking lot in the rain",
    "a screenshot of a video game",
    "a photo of the number 7",
    "a blurry photo of a street sign that says STOP",
    "a photo of a CAT",
    "A PHOTO OF A DOG",
    "aPhOtO oF a CaT",
    "iPhone 15 Pro Max",
    "McDonald's drive-thru",
    "NASA's James Webb Space Telescope",
    "eBay listing: vintage Nikon F3 (mint)",
    "COVID-19 vaccine",
    "state-of-the-art self-driving car",
    "well-known mother-in-law",
    "C++ and C# and F#",
    "user@example.com",
    "https://example.com/path/to/page?query=cat&lang=en#section",
    "#sunset #beach @photographer",
    "file_name_with_underscores.jpg",
    "CamelCaseIdentifier and snake_case_identifier",
    "the quick brown fox jumps over the lazy dog",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "photographs photographing photographer photography",
    "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidocious",
    "a",
    "I",
    "x",
    "ok",
    "Hello, World!",
    "hello world",
    "  hello   world  ",
    "a photo of a {}.",
    "{} {}",
]

NUMBERS = [
    "0", "1", "7", "9", "10", "42", "100", "123", "2024", "1000000", "3.14159", "-273.15",
    "1,000,000", "1e-9", "6.022e23", "0x1F", "0b1010", "2024-01-01", "12:34:56",
    "+1 (555) 123-4567", "50%", "$9.99", "€20", "£5", "¥1000", "#1", "No. 5", "3/4", "1/2 cup",
    "v1.2.3", "ISO 9001", "A4 paper", "4K 60fps", "7-Eleven", "24/7", "1st 2nd 3rd 4th",
    "99 bottles", "007", "٣ ٤ ٥", "١٢٣", "१२३", "১২৩", "๑๒๓", "一二三", "½ ¼ ¾", "x² y³",
    "Ⅻ ⅻ Ⅳ", "① ② ③", "⑴ ⒈", "𝟙𝟚𝟛", "١٠٠٪", "10⁻⁶", "₂₃",
] + [str(n) for n in range(0, 130)] + [str(3**k) for k in range(5, 40)]

PUNCTUATION = [
    "!", "!!!", "?!?!", "...", "…", "--", "—", "–", "---", "((()))", "[]{}<>", "<<>>",
    "@#$%^&*", "\\", "~`", "a.b,c;d:e", "a...b", "hello!!!", "what??", "wow?!", "-_-",
    ":-)", ";-)", ":D", "<3", "</3", "^_^", "¯\\_(ツ)_/¯", "(╯°□°)╯︵ ┻━┻", "***", "###",
    "$$$", "%%%", "+++", "===", "|||", "///", "a/b/c", "a\\b\\c", "a|b", "«guillemets»",
    "¿Qué?", "¡Hola!", "§ 12 ¶ 3", "© ® ™", "† ‡ •", "° ′ ″", "→ ← ↑ ↓", "∑ ∫ √ ∞",
    "≤ ≥ ≠ ≈", "€ $ £ ¥ ₹ ₿", "“”‘’", "'", "''", "\"", "\"\"", "'''", "a'b", "a''b",
    "'quoted'", "\"double quoted\"", "it's'", "'s", "'t", "<", ">", "&", "&&", "& &",
    "a & b", "a < b", "a > b", "a <b> c", "</w>", "a</w>b", "<w>", "x</w>", "< / w >",
]

CONTRACTIONS = [
    "it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "DON'T",
    "THEY'RE", "WE'VE", "I'M", "YOU'LL", "HE'D", "It'S", "Don'T", "They'Re", "We'Ve",
    "You'Ll", "He'D", "can't", "won't", "shouldn't've", "y'all", "'tis", "o'clock",
    "rock 'n' roll", "the cat's toy", "the cats' toys", "James's book", "it's a dog's life",
    "I'd've", "we'd", "she'll", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE",
    "'M", "'LL", "'D", "'Re", "'rE", "'lL", "'Ll", "x'sy", "x'ty", "'s's's", "''s",
    "it’s", "don’t", "they’re", "IT’S", "it‘s", "it‛s", "itʼs", "it`s", "it´s", "it′s",
    "it'ſ", "IT'ſ", "it'K", "Kelvin K", "ſtraße", "'ſ", "'ſt",
]

WHITESPACE = [
    "a  b", "a   b", "a\tb", "a\t\tb", "a\nb", "a\n\nb", "\n\na\n", "a\r\nb", "a\rb",
    "a\x0bb", "a\x0cb", "a\x1cb", "a\x1db", "a\x1eb", "a\x1fb", "a\x85b", "a\u00a0b",
    "a\u1680b", "a\u2000b", "a\u2002b", "a\u2003b", "a\u2009b", "a\u200ab", "a\u200bb",
    "a\u2028b", "a\u2029b", "a\u202fb", "a\u205fb", "a\u3000b", "a\u180eb", "a\u2060b",
    "a\ufeffb", "\ufeffa photo", "   leading", "trailing   ", "\t\ttabs\t\t",
    " \u00a0 \u3000 mixed \u2003 spaces \u2028 ", "line one\nline two\nline three",
    "para one\n\npara two", "crlf\r\nline\r\n", "a \n b \t c \r d",
    "word\u00a0\u00a0word", "\u3000全角スペース\u3000", "x\u200cy\u200dz",
    "a\u200eb\u200fc", "a\u202ab\u202ec",
]

ACCENTED = [
    "café", "naïve", "résumé", "Ærøskøbing", "São Paulo", "Zürich", "Kraków", "Ångström",
    "façade", "jalapeño", "crème brûlée", "piñata", "Dvořák", "Łódź", "Øresund", "Þórsmörk",
    "Ğ ğ Ş ş", "İstanbul", "DİYARBAKIR", "ı i İ I", "ß", "ẞ", "Straße", "STRASSE",
    "cafe\u0301", "Cafe\u0301", "e\u0301e\u0300e\u0302", "n\u0303", "a\u0308o\u0308u\u0308",
    "A\u030a", "\u0301leading combining", "Å Å Å", "ǅemal", "Ǆ ǅ ǆ", "ĳsselmeer",
    "Ĳsselmeer", "œuvre", "Œuvre", "æsthetic", "Æsir", "ŉ", "Ŀl", "ơ ư", "Việt Nam",
    "Nguyễn", "Đà Nẵng", "Ḿ ḿ", "ǘǚǜ", "ÀÉÎÕÜ", "àéîõü", "ÿ Ÿ", "ÇA ÇÇ", "Ñandú",
]

GREEK_CYRILLIC = [
    "Αθήνα", "ΑΘΗΝΑ", "ΟΔΥΣΣΕΥΣ", "ΣΑΣ", "Σ", "ΑΣ", "ΑΣ.", "ΑΣΑ", "Α.Σ", "ΑΣ'", "Α'Σ",
    "ΑΣ\u0301", "ΑΣ1", "ΑΣ Β", "σ ς Σ", "ΌΣΟΣ", "α\u0345", "ᾼ ᾳ", "ΐ ΰ", "Ἀθῆναι", "φωτογραφία",
    "μια φωτογραφία μιας γάτας", "Москва", "ПРИВЕТ мир", "Ёлка", "фотография кошки",
    "Україна", "Ґ ґ Є є І і Ї ї", "Беларусь", "Србија", "Қазақстан", "Ӏ ӏ", "Ѣ ѣ",
    "Армения Հայաստան", "საქართველო", "Ⴀ ⴀ", "a\u0345b", "\u0345", "ΑΙ\u0345",
]

CJK_AND_OTHERS = [
    "猫の写真", "一只猫的照片", "一隻貓的照片", "고양이 사진", "東京タワー", "ひらがな カタカナ",
    "ｶﾀｶﾅ", "ﾊﾟﾝ", "ｶﾞｷﾞｸﾞ", "ｱｲｳｴｵ", "ﾠ", "ﾡﾢﾣ", "漢字かな交じり文", "中文，标点。",
    "「引用」", "『二重』", "〈山括弧〉", "【見出し】", "ㄅㄆㄇ", "ㄱㄴㄷ", "ᄀ ᅡ ᆨ",
    "صورة قطة", "مَرْحَبًا", "العربية", "فارسی", "اردو", "שלום עולם", "עִבְרִית",
    "बिल्ली की तस्वीर", "नमस्ते", "क्षत्रिय", "বাংলা", "தமிழ்", "తెలుగు", "ಕನ್ನಡ", "മലയാളം",
    "ગુજરાતી", "ਪੰਜਾਬੀ", "ଓଡ଼ିଆ", "සිංහල", "แมว", "ภาษาไทย", "ພາສາລາວ", "ភាសាខ្មែរ",
    "မြန်မာ", "བོད་ཡིག", "ᠮᠣᠩᠭᠣᠯ", "ትግርኛ", "ᏣᎳᎩ", "ᐃᓄᒃᑎᑐᑦ", "ꦗꦮ", "𐌰𐌱𐌲", "𓂀",
    "a cat 猫 кошка قطة बिल्ली",
]

EMOJI = [
    "🐱", "a photo of a 🐶", "🐱🐶🐭", "👍", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🏳‍🌈",
    "🇫🇷", "🇯🇵🇺🇸", "❤️", "❤", "🧑🏿‍🚀", "👩🏻‍💻", "1️⃣", "#️⃣", "🏴󠁧󠁢󠁷󠁬󠁳󠁿", "😀😃😄😁",
    "I ❤️ NY", "cat😺dog", "🐱‍👤", "👁️‍🗨️", "☕", "☕️", "©️", "🅰️", "🆗", "🔥🔥🔥", "✔ ✅",
    "🤷‍♀️", "🤷🏽‍♂️", "🧔‍♀️", "🫠", "🪿",
]

HTML = [
    "&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x27;", "&nbsp;", "&eacute;", "&amp;amp;",
    "&amp;amp;amp;", "&amp;lt;b&amp;gt;", "fish &amp; chips", "&lt;b&gt;bold&lt;/b&gt;",
    "&quot;hi&quot;", "caf&eacute;", "caf&Eacute;", "CAF&EACUTE;", "&NTILDE; &ntilde; &nTILDE;",
    "BUNDESSTRA&SZLIG;E", "&SZLIG;", "&frac12;", "&FRAC12;", "&ltimes;", "&LTIMES;", "&Jscr;ohn",
    "&checkmark;", "&hellip;", "it&rsquo;s", "&ldquo;quoted&rdquo;", "&mdash;", "&ndash;",
    "&copy 2024", "&copy;2024", "&amp;#39;", "&#38;amp;", "&&amp;", "& amp;", "&;", "&#;",
    "&notit;", "&not", "&notin;", "this&not that", "&ampersand", "&AMP;", "&AMP", "&amp",
    "&lt", "&LT", "&gt3", "&#0;", "&#1;", "&#9;", "&#10;", "&#13;", "&#127;", "&#128;",
    "&#x80;", "&#133;", "&#150;", "&#151;", "&#x9F;", "&#xD800;", "&#x110000;",
    "&#99999999999999999999;", "&#65", "&#x41", "&#X41;", "&#65;&#66;&#67;", "&#59;",
    "&#x3B;", "&#x3b", "&#xZZ;", "&#65a;", "&#xFDD0;", "&#xFFFE;", "&#x1FFFF;", "&#x1F600;",
    "&#128512;", "&#x3C;b&#x3E;", "&#60;", "a &lt; b", "a < b &amp; c", "a <b>&amp;</b>",
    "x &lt;\ny < z\n&amp;", "line1 &amp;\nline2 < x\nline3 &amp;amp;", "&amp;\n&amp;",
    "&zwnj;", "&zwj;", "&shy;", "&nbsp;&nbsp;x", "&ensp;a&emsp;b&thinsp;c", "&NewLine;",
    "&Tab;x", "&#8217;", "&#x2019;s", "&apos;", "&APOS;", "&aacute&eacute", "&eacutex",
    "&eacute;x", "&verylongnamethatisnotanentityatallreally;", "&abcdefghijklmnopqrstuvwx;",
    "&abcdefghijklmnopqrstuvwxy;", "&#0000065;", "&#x0000041;", "&amp;&amp;&amp;",
    "&lt;&lt;&gt;&gt;", "5 &times 4", "5 &times; 4", "&pound;10", "&euro;5", "&deg;C",
    "&micro;m", "&alpha;&beta;&gamma;", "&Alpha;", "&ALPHA;", "&infin;", "&rarr;",
    "&fjlig;", "&nvlt;", "&NotEqualTilde;", "&ThickSpace;", "&#x2028;", "&#8232;x",
]

QUOTES_AND_LIGATURES = [
    "‘hello’", "“quoted”", "it’s", "‛x‟", "ʼ", "„low“", "‚single low‘", "«French»",
    "‹single›", "“nested ‘quotes’ here”", "’90s", "‘’“”‛‟‚„", "ﬁsh", "ﬂower", "ﬀ ﬃ ﬄ ﬅ ﬆ",
    "oﬃce", "ﬁnal ﬂight", "Ĳ ĳ ŉ Ǳ ǲ ǳ Ǆ ǅ ǆ Ǉ ǈ ǉ Ǌ ǋ ǌ", "æ œ Æ Œ", "ﬗ ﬓ", "ﬞ",
    "ＬＯＵＤ　ＮＯＩＳＥＳ", "ａｂｃ１２３", "！？", "￥100", "￣", "￤", "＂ｑｕｏｔｅ＂",
    "＜ｔａｇ＞", "＆ａｍｐ；", "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ", "Ａ ｐｈｏｔｏ ｏｆ ａ ｃａｔ",
    "ｰ", "ￂￃￄ", "ￚￛￜ", "￡￢￦", "￨￩￪￫￬￭￮", "｟｠", "､｡",
]

CONTROL = [
    "a\x00b", "a\x07b", "\x1b[31mred\x1b[0m", "\x1b[1;32mbold green\x1b[m", "\x1b[A",
    "a\x1bb", "a\x7fb", "a\u206ab", "a\u206fb", "a\ufff9b", "a\ufffab", "a\ufffbb",
    "a\ufffcb", "a\ufffdb", "\x01\x02\x03text", "tab\tand\x0bvt", "bell\x07",
]

SPECIAL_TOKENS = [
    "<start_of_text>", "<end_of_text>", "a <start_of_text> b", "<START_OF_TEXT>",
    "<End_Of_Text>", "<start_of_text><end_of_text>", "x<end_of_text>y", "<|startoftext|>",
    "<|endoftext|>", "<|startoftext|>a photo<|endoftext|>", "<ſtart_of_text>",
    "<start_of_text", "start_of_text>", "<start of text>", "<end_of_text>>",
]

TEMPLATES_EXTRA = [
    "a photo of a {}, a type of pet.", "a photo of a {}, a type of bird.",
    "a centered satellite photo of {}.", "a photo of a {}, a type of aircraft.",
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
]


def unique(strings):
    """Strings in first-seen order, each once."""
    seen = set()
    out = []
    for s in strings:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def zero_shot_prompts():
    with open(PROMPTS, encoding="utf-8") as f:
        prompts = json.load(f)
    cifar_templates = prompts["cifar100"]["templates"]
    assert len(cifar_templates) == 18, len(cifar_templates)
    out = []
    for dataset in ("cifar100", "food101", "cifar10"):
        for template in cifar_templates:
            for name in prompts[dataset]["classes"]:
                out.append(template.format(name))
    for template in prompts["food101"]["templates"]:
        for name in prompts["food101"]["classes"]:
            out.append(template.format(name))
    imagenet = prompts["imagenet"]
    out.extend(imagenet["classes"])
    out.extend(imagenet["templates"][0].format(name) for name in imagenet["classes"])
    for i, template in enumerate(imagenet["templates"]):
        out.append(template.format(imagenet["classes"][(7 * i) % len(imagenet["classes"])]))
    for template in TEMPLATES_EXTRA:
        out.append(template.format("golden retriever"))
    return out


def long_texts():
    out = [
        "a photo of a cat " * 30,
        "a" * 500,
        "abc" * 300,
        "1234567890" * 20,
        "🐱" * 100,
        "猫" * 200,
        "!?" * 200,
        "x " * 200,
        "The quick brown fox jumps over the lazy dog. " * 12,
        "supercalifragilisticexpialidocious " * 40,
        "é" * 300,
        "&amp;" * 100,
        ("word " * 5000).strip(),
    ]
    # Around the context boundary: 'cat' is one token, so n words give n + 2 ids.
    out.extend(("cat " * n).strip() for n in range(70, 81))
    out.extend(("a photo of " * n) + "a cat" for n in range(23, 28))
    out.extend("🐱" * n for n in range(17, 22))
    return out


def cased_characters():
    """Every character Python's str.lower changes, 40 to a string, with spaces and in runs."""
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and chr(c).lower() != chr(c)]
    out = []
    for i in range(0, len(chars), 40):
        chunk = chars[i:i + 40]
        out.append("".join(chunk))
        out.append(" ".join(chunk))
    return out


def fixes_encoding(text):
    """True when ftfy's mojibake repair (not ported) would change the text."""
    return ftfy.fix_text(text) != ftfy.fix_text(text, fix_encoding=False)


def unicode_sweep():
    """Every assigned code point (Unicode of this Python) in runs of 64, large ideograph
    and syllable blocks sampled; a run that ftfy would repair as mojibake is split until
    its pieces are left alone."""
    sampled = [
        (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x17000, 0x187F7),
        (0x20000, 0x2A6DF), (0x2A700, 0x2EBEF), (0x30000, 0x3134F),
    ]
    chars = []
    for cp in list(range(0x20, 0x32000)) + list(range(0xE0000, 0xE0200)):
        if 0xD800 <= cp <= 0xDFFF or 0xE000 <= cp <= 0xF8FF:
            continue
        if unicodedata.category(chr(cp)) == "Cn":
            continue
        if any(lo <= cp <= hi for lo, hi in sampled) and cp % 41:
            continue
        chars.append(chr(cp))
    out = []
    for i in range(0, len(chars), 64):
        out.extend(without_mojibake("".join(chars[i:i + 64])))
    return out


def without_mojibake(text):
    """`text` if ftfy would not repair it as mojibake, else its halves, recursively."""
    if not fixes_encoding(text):
        return [text]
    if len(text) == 1:
        return []
    middle = len(text) // 2
    return without_mojibake(text[:middle]) + without_mojibake(text[middle:])


def corpus():
    hand_written = (
        PLAIN + NUMBERS + PUNCTUATION + CONTRACTIONS + WHITESPACE + ACCENTED
        + GREEK_CYRILLIC + CJK_AND_OTHERS + EMOJI + HTML + QUOTES_AND_LIGATURES + CONTROL
        + SPECIAL_TOKENS
    )
    # Case and spacing variants of the hand-written strings.
    variants = []
    for s in hand_written:
        variants += [s.upper(), s.title(), "  " + s + "\n", f"a photo of {s}.", f"{s} {s}"]
    texts = unique(hand_written + variants + zero_shot_prompts() + long_texts() + cased_characters())
    needs_mojibake_repair = [t for t in texts if fixes_encoding(t)]
    if needs_mojibake_repair:
        sys.exit(
            "these strings need ftfy's fix_encoding, which the Rust tokenizer does not port; "
            f"remove them: {needs_mojibake_repair[:20]!r}"
        )
    return unique(texts + unicode_sweep())


def decode_runs(tokenizer):
    """Id runs that cover the whole vocabulary (byte symbols in odd orders included)."""
    n = tokenizer.vocab_size
    runs = [list(range(start, min(start + 64, n))) for start in range(0, n, 64)]
    runs += [[i] for i in range(512)]
    runs.append([tokenizer.sot_token_id, 320, tokenizer.eot_token_id])
    runs += [list(range(n - 1, n - 600, -1)), [187, 94, 9], [161, 127], [246, 248, 90]]
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()

    tokenizer = SimpleTokenizer()
    cases = []
    for text in corpus():
        encoded = tokenizer.encode(text)
        padded = open_clip.tokenize([text], context_length=DEFAULT_CONTEXT_LENGTH)[0].tolist()
        length = min(len(encoded) + 2, DEFAULT_CONTEXT_LENGTH)
        tokens = padded[:length]
        assert tokens[0] == tokenizer.sot_token_id and tokens[-1] == tokenizer.eot_token_id
        assert all(t == 0 for t in padded[length:])
        cases.append({
            "text": text,
            "encode": encoded,
            "tokens": tokens,
            "decoded": tokenizer.decode(tokens),
        })
    decode = [{"ids": ids, "text": tokenizer.decode(ids)} for ids in decode_runs(tokenizer)]
    result = {
        "open_clip": open_clip.__version__,
        "ftfy": ftfy.__version__,
        "unicode": unicodedata.unidata_version,
        "context_length": DEFAULT_CONTEXT_LENGTH,
        "cases": cases,
        "decode": decode,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=True)
    print(f"{len(cases)} strings, {len(decode)} decode runs -> {args.out}")


if __name__ == "__main__":
    main()
