//! CLIP byte-level BPE tokenizer.
//!
//! Mirrors `SimpleTokenizer` of open_clip_torch 3.3.0 (`open_clip/tokenizer.py`, itself
//! OpenAI CLIP's `simple_tokenizer.py`) with its default `clean='lower'`:
//!
//! 1. clean the text: `ftfy.fix_text` (see below), Python's `html.unescape` twice, strip,
//!    collapse every run of whitespace (Python `str.split()` semantics, which include
//!    U+001C..U+001F) to one space, lower-case (full Unicode mapping with final sigma, as
//!    Python's `str.lower`; `İ` becomes `i̇`);
//! 2. split it with open_clip's pattern
//!    `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`,
//!    case-insensitive (the two special names are the literal text open_clip 3.3.0 uses,
//!    not `<|startoftext|>`);
//! 3. map the UTF-8 bytes of each piece to the 256 printable stand-ins of `bytes_to_unicode`,
//!    mark the last one as word end (`</w>`) and apply the 48,894 merges of
//!    `bpe_simple_vocab_16e6.txt.gz` lowest rank first.
//!
//! The Python `regex` module applies `IGNORECASE` to the character classes too, with one
//! visible effect: U+0345 COMBINING GREEK YPOGEGRAMMENI (whose case partner is a Greek
//! letter) is matched by no alternative and silently dropped. The pattern here makes only
//! the literal alternatives case-insensitive and excludes U+0345 from the last class,
//! which reproduces that.
//!
//! # What `ftfy.fix_text` (ftfy 6.3.1, default `TextFixerConfig`) does here
//!
//! Covered, in ftfy's order, repeated per segment until nothing changes:
//! - segments: the text is fixed line by line (each segment ends after a `\n`, or after
//!   1,000,000 code points); HTML unescaping is switched off for a segment that contains
//!   `<` *and for every later segment* (ftfy's `unescape_html="auto"`);
//! - `unescape_html`: entities matching `&#?[0-9A-Za-z]{1,24};` only: the HTML5 names that
//!   end in `;`, upper-cased variants of the all-lower-case ones (`&EACUTE;` → `É`,
//!   `&SZLIG;` → `SS`) unless Python's `html.unescape` already reads them otherwise, and
//!   numeric references unless they decode to something containing `;`;
//! - `fix_c1_controls`: U+0080..U+009F read as Windows-1252 (`\x85` → `…`, `\x93` → `“`);
//! - `fix_latin_ligatures`: `ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ Ĳ ĳ ŉ Ǳ ǲ ǳ Ǆ ǅ ǆ Ǉ ǈ ǉ Ǌ ǋ ǌ` (not `æ`, `œ`);
//! - `fix_character_width`: U+FF01..U+FFEF to their NFKC form (full-width ASCII, half-width
//!   katakana and Hangul), U+3000 IDEOGRAPHIC SPACE to a space;
//! - `uncurl_quotes`: U+02BC and U+2018..U+201B to `'`, U+201C..U+201F to `"`;
//! - `fix_line_breaks`: `\r\n`, `\r`, U+2028, U+2029, U+0085 to `\n`;
//! - `remove_terminal_escapes`: ANSI sequences `ESC [ digits-or-; letter`;
//! - `remove_control_chars`: U+0000..U+0008, U+000B, U+000E..U+001F, U+007F,
//!   U+206A..U+206F, U+FEFF, U+FFF9..U+FFFC;
//! - NFC normalisation.
//!
//! Not covered:
//! - `fix_encoding`, i.e. mojibake detection and repair (`Ã©` → `é`, `â€œ` → `“`, the
//!   `restore_byte_a0`, `replace_lossy_sequences` and `decode_inconsistent_utf8` steps, and
//!   the whole-string Latin-1 → Windows-1252 re-decoding). Text that ftfy would judge to be
//!   mojibake is tokenized as written. Well-formed text, which ftfy leaves alone, is
//!   unaffected; the parity test checks that none of its strings need this step.
//! - `fix_surrogates`: a Rust `&str` cannot hold UTF-16 surrogates.
//! - Unicode versions: Python 3.11 lower-cases and normalises with Unicode 14.0; this module
//!   uses the Rust standard library's and `unicode-normalization`'s newer tables, and the
//!   `regex` crate's letter/number classes. Results may differ only for characters assigned
//!   after Unicode 14.0.
//!
//! Decoding is open_clip's `decode`: ids to bytes, bytes to UTF-8 with invalid sequences
//! replaced by U+FFFD, then every `</w>` replaced by a space.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use regex::Regex;

/// Id of the start-of-text token (`<start_of_text>`).
pub const SOT_TOKEN: i64 = 49406;
/// Id of the end-of-text token (`<end_of_text>`).
pub const EOT_TOKEN: i64 = 49407;
/// Number of token positions of the CLIP text transformer.
pub const CONTEXT_LENGTH: usize = 77;

/// The merges file of OpenAI CLIP (sha256 924691ac…6804a), gzipped.
const VOCAB_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");
/// Merges read from the file (after its header line): with the 512 byte symbols (with and
/// without word-end mark) and the 2 special tokens they make the 49,408 ids.
const MERGE_COUNT: usize = 49152 - 256 - 2;
/// Marks the last symbol of a word in the vocabulary.
const WORD_END: &str = "</w>";
const SOT_TEXT: &str = "<start_of_text>";
const EOT_TEXT: &str = "<end_of_text>";
/// open_clip's pre-tokenizer, see the module documentation for the U+0345 exclusion.
const PATTERN: &str = r"(?i:<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+";
/// Words kept in the BPE cache before it is emptied (bounds memory on endless input).
const CACHE_CAPACITY: usize = 1 << 18;

/// One merge rule: its priority (lower first) and the id of the merged symbol.
#[derive(Clone, Copy, Debug)]
struct Merge {
    rank: u32,
    id: u32,
}

/// CLIP's BPE tokenizer with the vocabulary embedded in the binary.
///
/// Mirrors open_clip's `SimpleTokenizer` (open_clip/tokenizer.py). BPE results are cached
/// per word, so tokenizing many similar prompts is cheap; the tokenizer is `Sync`.
pub struct Tokenizer {
    /// Id of the single-byte symbol for each byte value.
    byte_ids: [u32; 256],
    /// Id of the single-byte symbol with the word-end mark, for each byte value.
    byte_end_ids: [u32; 256],
    /// Merge rules keyed by the pair of symbol ids they join.
    merges: HashMap<(u32, u32), Merge>,
    /// Bytes each id decodes to, `</w>` included.
    decoder: Vec<Vec<u8>>,
    /// Pre-tokenizer.
    pattern: Regex,
    /// BPE ids of every word seen so far.
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("merges", &self.merges.len())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Build the tokenizer from the embedded `bpe_simple_vocab_16e6.txt.gz`.
    pub fn new() -> Result<Tokenizer> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(VOCAB_GZ)
            .read_to_string(&mut text)
            .context("cannot gunzip the embedded bpe_simple_vocab_16e6.txt.gz")?;
        Tokenizer::from_merges_text(&text)
    }

    /// Build the tokenizer from the text of a CLIP merges file (one header line, then one
    /// `left right` pair a line).
    fn from_merges_text(text: &str) -> Result<Tokenizer> {
        let merge_lines: Vec<&str> = text.split('\n').skip(1).take(MERGE_COUNT).collect();
        if merge_lines.len() != MERGE_COUNT {
            bail!(
                "the BPE merges file has {} merges, expected {MERGE_COUNT}",
                merge_lines.len()
            );
        }
        let mut pairs = Vec::with_capacity(MERGE_COUNT);
        for (i, line) in merge_lines.iter().enumerate() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(left), Some(right), None) => pairs.push((left, right)),
                _ => bail!(
                    "line {} of the BPE merges file is not a pair: {line:?}",
                    i + 2
                ),
            }
        }

        let byte_chars = byte_to_char();
        let mut vocab: Vec<String> = Vec::with_capacity(2 * 256 + MERGE_COUNT + 2);
        vocab.extend(
            byte_order()
                .iter()
                .map(|&b| byte_chars[b as usize].to_string()),
        );
        vocab.extend(
            byte_order()
                .iter()
                .map(|&b| format!("{}{WORD_END}", byte_chars[b as usize])),
        );
        vocab.extend(pairs.iter().map(|(left, right)| format!("{left}{right}")));
        vocab.push(SOT_TEXT.to_string());
        vocab.push(EOT_TEXT.to_string());

        // As in Python's dict(zip(vocab, range(...))): a later duplicate wins.
        let encoder: HashMap<&str, u32> = vocab
            .iter()
            .enumerate()
            .map(|(id, token)| (token.as_str(), id as u32))
            .collect();
        let lookup = |token: &str| -> Result<u32> {
            encoder
                .get(token)
                .copied()
                .with_context(|| format!("BPE token {token:?} is missing from the vocabulary"))
        };

        let mut merges = HashMap::with_capacity(MERGE_COUNT);
        for (rank, (left, right)) in pairs.iter().enumerate() {
            let merge = Merge {
                rank: rank as u32,
                id: lookup(&format!("{left}{right}"))?,
            };
            merges.insert((lookup(left)?, lookup(right)?), merge);
        }

        let mut byte_ids = [0u32; 256];
        let mut byte_end_ids = [0u32; 256];
        for byte in 0..=255u8 {
            let symbol = byte_chars[byte as usize];
            byte_ids[byte as usize] = lookup(&symbol.to_string())?;
            byte_end_ids[byte as usize] = lookup(&format!("{symbol}{WORD_END}"))?;
        }

        let char_bytes: HashMap<char, u8> =
            (0..=255u8).map(|b| (byte_chars[b as usize], b)).collect();
        let decoder = vocab
            .iter()
            .map(|token| {
                token
                    .chars()
                    .map(|c| {
                        char_bytes.get(&c).copied().with_context(|| {
                            format!("BPE token {token:?} holds {c:?}, which stands for no byte")
                        })
                    })
                    .collect::<Result<Vec<u8>>>()
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Tokenizer {
            byte_ids,
            byte_end_ids,
            merges,
            decoder,
            pattern: Regex::new(PATTERN).context("compiling the pre-tokenizer pattern")?,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Number of token ids (49,408: 512 byte symbols, 48,894 merges, start and end).
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// BPE ids of `text` after open_clip's 'lower' cleaning, without start/end tokens and
    /// without truncation. The literal texts `<start_of_text>` and `<end_of_text>` map to
    /// [`SOT_TOKEN`] and [`EOT_TOKEN`], as in open_clip.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let cleaned = clean::clean_lower(text);
        let mut ids = Vec::new();
        for piece in self.pattern.find_iter(&cleaned) {
            match piece.as_str() {
                SOT_TEXT => ids.push(SOT_TOKEN),
                EOT_TEXT => ids.push(EOT_TOKEN),
                word => ids.extend(self.word_ids(word).into_iter().map(i64::from)),
            }
        }
        ids
    }

    /// `[SOT, encode(text)..., EOT]`, cut to [`CONTEXT_LENGTH`] like open_clip: the first
    /// 77 ids are kept and the last of them is replaced by [`EOT_TOKEN`]. Not padded.
    pub fn tokenize(&self, text: &str) -> Vec<i64> {
        let mut ids = vec![SOT_TOKEN];
        ids.extend(self.encode(text));
        ids.push(EOT_TOKEN);
        if ids.len() > CONTEXT_LENGTH {
            ids.truncate(CONTEXT_LENGTH);
            ids[CONTEXT_LENGTH - 1] = EOT_TOKEN;
        }
        ids
    }

    /// Text of `ids` as open_clip's `decode` gives it: the bytes of every token, invalid
    /// UTF-8 replaced by U+FFFD, each `</w>` turned into a space. Special tokens decode to
    /// `<start_of_text>` / `<end_of_text>`; an id outside the vocabulary (where open_clip
    /// raises `KeyError`) decodes to U+FFFD.
    pub fn decode(&self, ids: &[i64]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let token = usize::try_from(id).ok().and_then(|i| self.decoder.get(i));
            match token {
                Some(token_bytes) => bytes.extend_from_slice(token_bytes),
                None => bytes.extend_from_slice("\u{fffd}".as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).replace(WORD_END, " ")
    }

    /// BPE ids of one pre-tokenized word, from the cache when possible.
    fn word_ids(&self, word: &str) -> Vec<u32> {
        if let Some(ids) = self.lock_cache().get(word) {
            return ids.clone();
        }
        let ids = self.bpe(word);
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(word.to_string(), ids.clone());
        ids
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u32>>> {
        // The cache holds no invariant a panicking thread could break.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Apply the merges to one word: start from its bytes (the last one word-final) and
    /// repeatedly join every occurrence, left to right, of the adjacent pair of lowest rank.
    fn bpe(&self, word: &str) -> Vec<u32> {
        let bytes = word.as_bytes();
        let Some((&last, init)) = bytes.split_last() else {
            return Vec::new();
        };
        let mut symbols: Vec<u32> = init.iter().map(|&b| self.byte_ids[b as usize]).collect();
        symbols.push(self.byte_end_ids[last as usize]);

        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .filter_map(|pair| {
                    let key = (pair[0], pair[1]);
                    self.merges.get(&key).map(|merge| (key, *merge))
                })
                .min_by_key(|(_, merge)| merge.rank);
            let Some((pair, merge)) = best else {
                break;
            };
            symbols = join_pair(&symbols, pair, merge.id);
        }
        symbols
    }
}

/// Replace each non-overlapping occurrence of `pair`, scanning left to right, by `merged`.
fn join_pair(symbols: &[u32], pair: (u32, u32), merged: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(symbols.len());
    let mut i = 0;
    while i < symbols.len() {
        if i + 1 < symbols.len() && (symbols[i], symbols[i + 1]) == pair {
            out.push(merged);
            i += 2;
        } else {
            out.push(symbols[i]);
            i += 1;
        }
    }
    out
}

/// Bytes that stand for themselves in `bytes_to_unicode`: printable Latin-1 except U+00AD.
fn is_printable_byte(byte: u8) -> bool {
    matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// Byte values in vocabulary order: the printable ones ascending, then the others.
fn byte_order() -> Vec<u8> {
    let printable = (0..=255u8).filter(|&b| is_printable_byte(b));
    let others = (0..=255u8).filter(|&b| !is_printable_byte(b));
    printable.chain(others).collect()
}

/// CLIP's `bytes_to_unicode`: printable bytes map to the same code point, the others to
/// U+0100, U+0101, … in ascending byte order.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for byte in 0..=255u8 {
        table[byte as usize] = if is_printable_byte(byte) {
            char::from(byte)
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    table
}

/// open_clip's text cleaning: a partial `ftfy.fix_text`, Python's `html.unescape`,
/// whitespace collapse and lower-casing (see the module documentation).
mod clean {
    use std::{borrow::Cow, collections::HashMap, sync::OnceLock};
    use {regex::Regex, unicode_normalization::UnicodeNormalization};

    /// Code points per ftfy segment (`TextFixerConfig.max_decode_length`).
    const MAX_SEGMENT_CHARS: usize = 1_000_000;

    /// Windows-1252 reading of U+0080..U+009F, undefined bytes kept as they are (ftfy's
    /// "sloppy-windows-1252"; also Python's `html._invalid_charrefs`).
    const WINDOWS_1252_C1: [char; 32] = [
        '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}',
        '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}',
        '\u{178}',
    ];

    /// open_clip's `_clean_lower`: `whitespace_clean(basic_clean(text)).lower()`.
    pub(super) fn clean_lower(text: &str) -> String {
        let fixed = fix_text(text);
        let unescaped = html_unescape(&html_unescape(&fixed)).into_owned();
        let words: Vec<&str> = unescaped
            .split(is_python_whitespace)
            .filter(|word| !word.is_empty())
            .collect();
        words.join(" ").to_lowercase()
    }

    /// Python's `str.isspace`.
    pub(super) fn is_python_whitespace(c: char) -> bool {
        matches!(
            c,
            '\t'..='\r'
                | '\u{1c}'..='\u{20}'
                | '\u{85}'
                | '\u{a0}'
                | '\u{1680}'
                | '\u{2000}'..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
        )
    }

    /// The covered part of `ftfy.fix_text` with the default configuration.
    pub(super) fn fix_text(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut unescape = true;
        for segment in segments(text) {
            // ftfy switches unescaping off for good once a segment holds a '<'.
            if segment.contains('<') {
                unescape = false;
            }
            out.push_str(&fix_segment(segment, unescape));
        }
        out
    }

    /// ftfy's segments: each line with its `\n`, cut every `MAX_SEGMENT_CHARS` code points.
    fn segments(text: &str) -> impl Iterator<Item = &str> {
        text.split_inclusive('\n').flat_map(|line| {
            let mut rest = line;
            std::iter::from_fn(move || {
                if rest.is_empty() {
                    return None;
                }
                let cut = rest
                    .char_indices()
                    .nth(MAX_SEGMENT_CHARS)
                    .map_or(rest.len(), |(i, _)| i);
                let (head, tail) = rest.split_at(cut);
                rest = tail;
                Some(head)
            })
        })
    }

    /// ftfy's `fix_and_explain` loop for one segment: apply the fixers until stable.
    fn fix_segment(segment: &str, unescape: bool) -> String {
        let mut text = segment.to_string();
        loop {
            let mut fixed = if unescape {
                ftfy_unescape_html(&text)
            } else {
                text.clone()
            };
            fixed = fixed.chars().map(fix_c1_control).collect();
            fixed = fix_latin_ligatures(&fixed);
            fixed = fix_character_width(&fixed);
            fixed = fixed.chars().map(uncurl_quote).collect();
            fixed = fix_line_breaks(&fixed);
            fixed = remove_terminal_escapes(&fixed).into_owned();
            fixed.retain(|c| !is_removed_control(c));
            fixed = fixed.nfc().collect();
            if fixed == text {
                return fixed;
            }
            text = fixed;
        }
    }

    /// `fix_c1_controls`: a C1 control read as its Windows-1252 byte.
    fn fix_c1_control(c: char) -> char {
        match c {
            '\u{80}'..='\u{9f}' => WINDOWS_1252_C1[c as usize - 0x80],
            _ => c,
        }
    }

    /// `fix_latin_ligatures`.
    fn fix_latin_ligatures(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                'Ĳ' => out.push_str("IJ"),
                'ĳ' => out.push_str("ij"),
                'ŉ' => out.push_str("\u{2bc}n"),
                'Ǳ' => out.push_str("DZ"),
                'ǲ' => out.push_str("Dz"),
                'ǳ' => out.push_str("dz"),
                'Ǆ' => out.push_str("DŽ"),
                'ǅ' => out.push_str("Dž"),
                'ǆ' => out.push_str("dž"),
                'Ǉ' => out.push_str("LJ"),
                'ǈ' => out.push_str("Lj"),
                'ǉ' => out.push_str("lj"),
                'Ǌ' => out.push_str("NJ"),
                'ǋ' => out.push_str("Nj"),
                'ǌ' => out.push_str("nj"),
                'ﬀ' => out.push_str("ff"),
                'ﬁ' => out.push_str("fi"),
                'ﬂ' => out.push_str("fl"),
                'ﬃ' => out.push_str("ffi"),
                'ﬄ' => out.push_str("ffl"),
                'ﬅ' => out.push_str("ſt"),
                'ﬆ' => out.push_str("st"),
                _ => out.push(c),
            }
        }
        out
    }

    /// `fix_character_width`: half- and full-width forms to their NFKC form.
    fn fix_character_width(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                '\u{3000}' => out.push(' '),
                '\u{ff01}'..='\u{ffef}' => out.extend(std::iter::once(c).nfkc()),
                _ => out.push(c),
            }
        }
        out
    }

    /// `uncurl_quotes`.
    fn uncurl_quote(c: char) -> char {
        match c {
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
            '\u{201c}'..='\u{201f}' => '"',
            _ => c,
        }
    }

    /// `fix_line_breaks`.
    fn fix_line_breaks(text: &str) -> String {
        text.replace("\r\n", "\n")
            .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
    }

    /// `remove_terminal_escapes`: ANSI escape sequences such as `ESC[31m`.
    fn remove_terminal_escapes(text: &str) -> Cow<'_, str> {
        static ANSI: OnceLock<Regex> = OnceLock::new();
        if !text.contains('\u{1b}') {
            return Cow::Borrowed(text);
        }
        ANSI.get_or_init(|| Regex::new(r"\x1b\[[\d;]*[a-zA-Z]").expect("valid ANSI pattern"))
            .replace_all(text, "")
    }

    /// Characters `remove_control_chars` deletes.
    fn is_removed_control(c: char) -> bool {
        matches!(
            c,
            '\0'..='\u{8}'
                | '\u{b}'
                | '\u{e}'..='\u{1f}'
                | '\u{7f}'
                | '\u{206a}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffc}'
        )
    }

    /// ftfy's `unescape_html`: replace the entities matching `&#?[0-9A-Za-z]{1,24};`
    /// that ftfy knows (see [`ftfy_entities`]) or that are numeric.
    fn ftfy_unescape_html(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find('&') {
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            let Some(len) = ftfy_entity_len(rest.as_bytes()) else {
                out.push('&');
                rest = &rest[1..];
                continue;
            };
            let entity = &rest[..len];
            if let Some(value) = ftfy_entities().get(entity) {
                out.push_str(value);
            } else if entity.starts_with("&#") {
                let value = html_unescape(entity);
                out.push_str(if value.contains(';') { entity } else { &value });
            } else {
                out.push_str(entity);
            }
            rest = &rest[len..];
        }
        out.push_str(rest);
        out
    }

    /// Length of the match of `&#?[0-9A-Za-z]{1,24};` at the start of `bytes`, if any.
    fn ftfy_entity_len(bytes: &[u8]) -> Option<usize> {
        let name_then_semicolon = |start: usize| {
            let name = bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
            let ok = (1..=24).contains(&name) && bytes.get(start + name) == Some(&b';');
            ok.then_some(start + name + 1)
        };
        if bytes.first() != Some(&b'&') {
            return None;
        }
        if bytes.get(1) == Some(&b'#') {
            if let Some(len) = name_then_semicolon(2) {
                return Some(len);
            }
        }
        name_then_semicolon(1)
    }

    /// ftfy's `HTML_ENTITIES`: every HTML5 name ending in `;`, plus the upper-cased form of
    /// each all-lower-case one (mapped to the upper-cased value) when Python's
    /// `html.unescape` leaves that form alone.
    fn ftfy_entities() -> &'static HashMap<String, String> {
        static TABLE: OnceLock<HashMap<String, String>> = OnceLock::new();
        TABLE.get_or_init(|| {
            let mut table = HashMap::new();
            for (name, value) in htmlize::ENTITIES.entries() {
                let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value))
                else {
                    continue;
                };
                if !name.ends_with(';') {
                    continue;
                }
                table.insert(name.to_string(), value.to_string());
                if name == name.to_ascii_lowercase() {
                    let upper = name.to_ascii_uppercase();
                    if html_unescape(&upper) == upper {
                        table.insert(upper, value.to_uppercase());
                    }
                }
            }
            table
        })
    }

    /// An HTML5 named character reference, `&` and any `;` included.
    fn html5_entity(name: &str) -> Option<&'static str> {
        htmlize::ENTITIES
            .get(name.as_bytes())
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Python's `html.unescape` (Python 3.11): numeric references with or without `;`,
    /// HTML5 named references, and names without `;` by their longest known prefix.
    pub(super) fn html_unescape(text: &str) -> Cow<'_, str> {
        if !text.contains('&') {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find('&') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            match char_reference(after) {
                Some((value, len)) => {
                    out.push_str(&value);
                    rest = &after[len..];
                }
                None => {
                    out.push('&');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        Cow::Owned(out)
    }

    /// The replacement for the character reference that `after` (the text following an
    /// `&`) starts with, and the byte length it spans; `None` where Python's pattern
    /// `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)` does not match.
    fn char_reference(after: &str) -> Option<(Cow<'static, str>, usize)> {
        let bytes = after.as_bytes();
        if bytes.first() == Some(&b'#') {
            let (digits_start, radix) = match bytes.get(1) {
                Some(b'x' | b'X') => (2, 16),
                _ => (1, 10),
            };
            let digits = bytes[digits_start..]
                .iter()
                .take_while(|b| match radix {
                    16 => b.is_ascii_hexdigit(),
                    _ => b.is_ascii_digit(),
                })
                .count();
            if digits == 0 {
                return None;
            }
            let end = digits_start + digits;
            // Too long for u32 means above U+10FFFF, as does any value that overflows.
            let value = u32::from_str_radix(&after[digits_start..end], radix).unwrap_or(u32::MAX);
            let len = end + usize::from(bytes.get(end) == Some(&b';'));
            return Some((numeric_reference(value), len));
        }

        let name_len: usize = after
            .chars()
            .take_while(|c| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
            .take(32)
            .map(char::len_utf8)
            .sum();
        if name_len == 0 {
            return None;
        }
        let len = name_len + usize::from(bytes.get(name_len) == Some(&b';'));
        let reference = &after[..len];
        if let Some(value) = html5_entity(&format!("&{reference}")) {
            return Some((Cow::Borrowed(value), len));
        }
        // The longest known prefix of at least two characters, the rest kept as text.
        let prefix_ends: Vec<usize> = reference.char_indices().map(|(i, _)| i).skip(2).collect();
        for &end in prefix_ends.iter().rev() {
            if let Some(value) = html5_entity(&format!("&{}", &reference[..end])) {
                return Some((Cow::Owned(format!("{value}{}", &reference[end..])), len));
            }
        }
        Some((Cow::Owned(format!("&{reference}")), len))
    }

    /// Python's reading of a numeric character reference.
    fn numeric_reference(value: u32) -> Cow<'static, str> {
        let replacement = Cow::Borrowed("\u{fffd}");
        match value {
            0 => replacement,
            0x0d => Cow::Borrowed("\r"),
            0x80..=0x9f => Cow::Owned(WINDOWS_1252_C1[value as usize - 0x80].to_string()),
            0xd800..=0xdfff | 0x11_0000.. => replacement,
            0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef => Cow::Borrowed(""),
            _ if value & 0xfffe == 0xfffe => Cow::Borrowed(""),
            _ => char::from_u32(value).map_or(replacement, |c| Cow::Owned(c.to_string())),
        }
    }

    #[cfg(test)]
    pub(super) fn ftfy_entity_count() -> usize {
        ftfy_entities().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn tokenizer() -> Tokenizer {
        Tokenizer::new().expect("embedded vocabulary")
    }

    #[test]
    fn embedded_vocab_checksum() {
        let digest = Sha256::digest(VOCAB_GZ);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
        );
    }

    #[test]
    fn vocabulary_shape() {
        let tok = tokenizer();
        assert_eq!(tok.vocab_size(), 49408);
        assert_eq!(tok.merges.len(), MERGE_COUNT);
        assert_eq!(tok.decoder[SOT_TOKEN as usize], SOT_TEXT.as_bytes());
        assert_eq!(tok.decoder[EOT_TOKEN as usize], EOT_TEXT.as_bytes());
        // Merged symbols follow the 512 byte symbols in rank order: no duplicates.
        assert!(tok.merges.values().all(|m| m.id == 512 + m.rank));
    }

    #[test]
    fn byte_table_matches_clip() {
        let chars = byte_to_char();
        assert_eq!(chars[b'a' as usize], 'a');
        assert_eq!(chars[0], '\u{100}');
        assert_eq!(chars[b' ' as usize], '\u{120}');
        assert_eq!(chars[0xad], '\u{143}');
        let order = byte_order();
        assert_eq!(order.len(), 256);
        assert_eq!(order[0], b'!');
        assert_eq!(order[188], 0);
    }

    #[test]
    fn tokenizes_a_prompt() {
        let tok = tokenizer();
        assert_eq!(
            tok.tokenize("a photo of a cat"),
            vec![49406, 320, 1125, 539, 320, 2368, 49407]
        );
        assert_eq!(
            tok.encode("a photo of a cat"),
            vec![320, 1125, 539, 320, 2368]
        );
        assert_eq!(tok.tokenize(""), vec![SOT_TOKEN, EOT_TOKEN]);
    }

    #[test]
    fn truncates_like_open_clip() {
        let tok = tokenizer();
        let long = "cat ".repeat(200);
        let ids = tok.tokenize(&long);
        assert_eq!(ids.len(), CONTEXT_LENGTH);
        assert_eq!(ids[0], SOT_TOKEN);
        assert_eq!(ids[CONTEXT_LENGTH - 1], EOT_TOKEN);
        assert!(ids[1..CONTEXT_LENGTH - 1].iter().all(|&id| id == 2368));
        // 75 words fill the context exactly, with no truncation.
        assert_eq!(tok.tokenize(&"cat ".repeat(75)).len(), CONTEXT_LENGTH);
    }

    #[test]
    fn special_token_text_maps_to_special_ids() {
        let tok = tokenizer();
        assert_eq!(tok.encode("<start_of_text>"), vec![SOT_TOKEN]);
        assert_eq!(tok.encode("<END_OF_TEXT>"), vec![EOT_TOKEN]);
    }

    #[test]
    fn decode_inverts_encode() {
        let tok = tokenizer();
        let ids = tok.tokenize("A photo of a café, 猫!");
        assert_eq!(
            tok.decode(&ids),
            "<start_of_text>a photo of a café , 猫 ! <end_of_text>"
        );
        assert_eq!(tok.decode(&[-1, 49408]), "\u{fffd}\u{fffd}");
    }

    #[test]
    fn cache_returns_the_same_ids() {
        let tok = tokenizer();
        let first = tok.encode("photographs photographs");
        assert_eq!(first.len() % 2, 0);
        assert_eq!(first[..first.len() / 2], first[first.len() / 2..]);
        assert!(tok.lock_cache().contains_key("photographs"));
    }

    #[test]
    fn cleaning_follows_python() {
        use clean::clean_lower;
        // ftfy deletes U+001C before Python's split() could treat it as a space.
        assert_eq!(clean_lower("  A\u{a0}B\u{3000}C\u{1c}D\n"), "a b cd");
        assert_eq!(clean_lower("İstanbul"), "i\u{307}stanbul");
        // Final sigma, as Python's str.lower.
        assert_eq!(clean_lower("ΟΔΟΣ ΣΑΣ"), "οδο\u{3c2} σα\u{3c2}");
        assert_eq!(clean_lower("ﬁsh “x” ‘y’ ＡＢＣ"), "fish \"x\" 'y' abc");
        assert_eq!(clean_lower("cafe\u{301}"), "café");
        assert_eq!(clean_lower("\u{1b}[31mred\u{1b}[0m"), "red");
        assert_eq!(clean_lower("a\u{85}b"), "a…b");
    }

    #[test]
    fn html_unescape_follows_python() {
        use clean::html_unescape;
        let cases = [
            ("&amp;", "&"),
            ("&amp", "&"),
            ("&ampx", "&x"),
            ("&notit;", "¬it;"),
            ("&notin;", "∉"),
            ("&#39;", "'"),
            ("&#x27", "'"),
            ("&#0;", "\u{fffd}"),
            ("&#1;", ""),
            ("&#128;", "€"),
            ("&#xD800;", "\u{fffd}"),
            ("&#99999999999999999999;", "\u{fffd}"),
            ("&#xFFFF;", ""),
            ("&#;", "&#;"),
            ("&;", "&;"),
            ("&zz;", "&zz;"),
            ("a & b", "a & b"),
        ];
        for (input, expected) in cases {
            assert_eq!(html_unescape(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn ftfy_unescapes_only_outside_markup() {
        use clean::fix_text;
        assert_eq!(
            fix_text("&lt;b&gt; &EACUTE; &SZLIG; &#59;"),
            "<b> É SS &#59;"
        );
        assert_eq!(fix_text("&amp;amp;"), "&");
        assert_eq!(fix_text("a < b &amp; c"), "a < b &amp; c");
        assert_eq!(fix_text("x &amp;\n<y>\n&amp;"), "x &\n<y>\n&amp;");
        // ftfy's table (checked against ftfy 6.3.1: len(ftfy.chardata.HTML_ENTITIES)).
        assert_eq!(clean::ftfy_entity_count(), 3501);
    }

    #[test]
    fn whitespace_matches_python_isspace() {
        let python = [
            0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000,
            0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028,
            0x2029, 0x202f, 0x205f, 0x3000,
        ];
        let ours: Vec<u32> = (0..=0x10ffffu32)
            .filter_map(char::from_u32)
            .filter(|&c| clean::is_python_whitespace(c))
            .map(u32::from)
            .collect();
        assert_eq!(ours, python);
    }
}
