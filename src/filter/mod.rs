//! The content filter: a word list (`config/filter-words.txt` plus the `filter_words` table) matched with
//! Aho-Corasick after normalising both sides the same way — NFKC (full width → half width), lower case, and every
//! space, punctuation mark, symbol and zero-width character removed, so `暴 力`, `Ｖｉｏｌｅｎｃｅ`, `v.i.o.l.e.n.c.e`
//! and `暴\u{200B}力` all match their entry.

use std::path::Path;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::engine::normalize_prompt;

/// Why the word list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The automaton could not be built.
    #[error("content filter: {0}")]
    Build(String),
}

/// The comparison form of text: normalised, lower case, letters and digits only.
pub fn normalize(text: &str) -> String {
    normalize_prompt(text)
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// Reads a word list: one entry a line, `#` starts a comment, blank lines ignored.
pub fn read_word_file(path: &Path) -> Result<Vec<String>, FilterError> {
    let text = std::fs::read_to_string(path).map_err(|source| FilterError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_words(&text))
}

/// The entries of a word list's text.
pub fn parse_words(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect()
}

/// A compiled word list.
#[derive(Debug, Clone, Default)]
pub struct ContentFilter {
    /// The entries as listed, in automaton pattern order.
    words: Vec<String>,
    automaton: Option<AhoCorasick>,
}

impl ContentFilter {
    /// Compiles `words` (entries that normalise to nothing are dropped).
    pub fn new(words: impl IntoIterator<Item = String>) -> Result<Self, FilterError> {
        let (words, patterns): (Vec<String>, Vec<String>) = words
            .into_iter()
            .map(|w| {
                let pattern = normalize(&w);
                (w, pattern)
            })
            .filter(|(_, p)| !p.is_empty())
            .unzip();
        if patterns.is_empty() {
            return Ok(Self::default());
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .map_err(|e| FilterError::Build(e.to_string()))?;
        Ok(Self {
            words,
            automaton: Some(automaton),
        })
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The first listed entry found in `text`, if any.
    pub fn find(&self, text: &str) -> Option<&str> {
        let automaton = self.automaton.as_ref()?;
        let found = automaton.find(&normalize(text))?;
        self.words
            .get(found.pattern().as_usize())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> ContentFilter {
        ContentFilter::new(parse_words(
            "# comment\n暴力\n\nViolence  # trailing comment\n血腥\nnsfw\n  \n。，\n",
        ))
        .expect("filter")
    }

    #[test]
    fn obfuscated_words_are_found() {
        let f = filter();
        assert_eq!(f.len(), 4, "an entry of only punctuation is dropped");
        for text in [
            "画一个暴力场景",
            "暴 力",
            "暴　力",
            "暴\u{200B}力",
            "暴.力",
            "暴-_-力",
            "violence",
            "VIOLENCE",
            "Ｖｉｏｌｅｎｃｅ",
            "v i o l e n c e",
            "v.i.o.l.e.n.c.e",
            "a very violent violence scene",
            "NSFW",
            "n\u{200D}s\u{FEFF}f\u{2060}w",
        ] {
            assert!(f.find(text).is_some(), "{text:?}");
        }
        assert_eq!(f.find("血 腥 的 月亮"), Some("血腥"));
        assert_eq!(f.find("Violence"), Some("Violence"), "reported as listed");
    }

    #[test]
    fn innocent_text_passes() {
        let f = filter();
        for text in [
            "嫦娥抱玉兔",
            "a violin in the moonlight",
            "暴雨",
            "力量",
            "",
            "。。。",
            "🌕",
        ] {
            assert_eq!(f.find(text), None, "{text:?}");
        }
        assert_eq!(
            ContentFilter::default().find("暴力"),
            None,
            "an empty list blocks nothing"
        );
    }

    #[test]
    fn the_shipped_list_loads() {
        let words = read_word_file(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/filter-words.txt"
        )))
        .expect("shipped list");
        let f = ContentFilter::new(words).expect("compiles");
        assert!(!f.is_empty());
        assert!(f.find("嫦娥抱玉兔").is_none());
        let long = "月".repeat(200_000);
        assert!(f.find(&long).is_none());
        assert!(read_word_file(Path::new("/nonexistent/words.txt")).is_err());
    }
}
