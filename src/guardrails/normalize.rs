//! Text as the rules see it: compatibility forms folded (full-width digits and letters,
//! ideographic spaces — NFKC), invisible characters dropped (zero-width spaces and
//! joiners, soft hyphens, byte-order marks), look-alike letters from other scripts
//! folded to Latin (Cyrillic `а`, Greek `ο`…), lower-cased. Every character keeps the
//! index of the original character it came from, so a match maps back to a span of
//! what the client actually wrote.

use unicode_normalization::UnicodeNormalization;

/// Normalised text with, per character, its original character index.
#[derive(Debug, Clone)]
pub struct Normalized {
    pub text: String,
    /// Original char index of each normalised char.
    origin: Vec<usize>,
    /// Byte offset of each normalised char in `text`.
    offsets: Vec<usize>,
    /// Byte offset of each original char (and the end) in the original text.
    original_offsets: Vec<usize>,
}

/// Characters that render as nothing and are used to break words apart.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FE00}'..='\u{FE0F}'
    )
}

/// Traditional characters of the words the rules look for, folded to simplified ones.
fn simplified(c: char) -> char {
    match c {
        '證' => '证',
        '穩' => '稳',
        '賺' => '赚',
        '賠' => '赔',
        '險' => '险',
        '無' => '无',
        '風' => '风',
        '護' => '护',
        '碼' => '码',
        '號' => '号',
        '銀' => '银',
        '帳' => '账',
        '賬' => '账',
        '戶' => '户',
        '餘' => '余',
        '額' => '额',
        '訴' => '诉',
        '騙' => '骗',
        '錢' => '钱',
        '貸' => '贷',
        '規' => '规',
        '則' => '则',
        '詞' => '词',
        '設' => '设',
        '統' => '统',
        '給' => '给',
        '說' => '说',
        '顧' => '顾',
        '問' => '问',
        '轉' => '转',
        '經' => '经',
        '漲' => '涨',
        '將' => '将',
        '會' => '会',
        '預' => '预',
        '計' => '计',
        '報' => '报',
        '稅' => '税',
        '遺' => '遗',
        '繼' => '继',
        '離' => '离',
        '師' => '师',
        '訟' => '讼',
        '們' => '们',
        '係' => '系',
        '費' => '费',
        '藥' => '药',
        '診' => '诊',
        '斷' => '断',
        '寫' => '写',
        '詩' => '诗',
        other => other,
    }
}

/// Letters of other scripts that look like Latin ones.
fn homoglyph(c: char) -> char {
    match c {
        'а' | 'α' => 'a',
        'в' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ε' => 'e',
        'һ' => 'h',
        'і' | 'ι' | 'ı' => 'i',
        'ј' => 'j',
        'к' | 'κ' => 'k',
        'м' => 'm',
        'п' | 'η' => 'n',
        'о' | 'ο' | 'σ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'г' => 'r',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' => 'u',
        'ν' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        'ᴢ' => 'z',
        other => other,
    }
}

impl Normalized {
    pub fn new(original: &str) -> Normalized {
        let mut text = String::with_capacity(original.len());
        let mut origin = Vec::with_capacity(original.len());
        let mut offsets = Vec::with_capacity(original.len());
        let mut original_offsets = Vec::with_capacity(original.len() + 1);
        for (i, (at, c)) in original.char_indices().enumerate() {
            original_offsets.push(at);
            if invisible(c) {
                continue;
            }
            let mut push = |n: char| {
                offsets.push(text.len());
                text.push(n);
                origin.push(i);
            };
            if c.is_ascii() {
                push(c.to_ascii_lowercase());
                continue;
            }
            for n in std::iter::once(c).nfkc() {
                if invisible(n) {
                    continue;
                }
                for l in homoglyph(simplified(n)).to_lowercase() {
                    push(homoglyph(l));
                }
            }
        }
        original_offsets.push(original.len());
        Normalized {
            text,
            origin,
            offsets,
            original_offsets,
        }
    }

    /// The byte range in the original text of the normalised byte range `start..end`.
    pub fn original_range(&self, start: usize, end: usize) -> std::ops::Range<usize> {
        let first = self.offsets.partition_point(|&o| o < start);
        let last = self.offsets.partition_point(|&o| o < end).saturating_sub(1);
        if first >= self.origin.len() || last < first {
            return 0..0;
        }
        let from = self.original_offsets[self.origin[first]];
        let to = self.original_offsets[self.origin[last] + 1];
        from..to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_full_width_invisible_and_look_alike_characters() {
        let n = Normalized::new("ｉｇｎｏｒｅ １３８ 保\u{200B}本 guаrаnteed ＡＢＣ");
        assert_eq!(n.text, "ignore 138 保本 guaranteed abc");
    }

    #[test]
    fn maps_matches_back_to_what_was_written() {
        let original = "电话：１３８\u{200B}００１３８０００。";
        let n = Normalized::new(original);
        let start = n.text.find("138").unwrap();
        let end = start + "13800138000".len();
        assert_eq!(&n.text[start..end], "13800138000");
        let range = n.original_range(start, end);
        assert_eq!(&original[range], "１３８\u{200B}００１３８０００");
    }
}
