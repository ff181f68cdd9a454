//! Short excerpts of long text, for error messages, logs and prompts.

/// At most `max_chars` characters of `text`, with `…` when it was cut.
pub fn excerpt(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// `text` with its whitespace runs flattened to single spaces, then [`excerpt`]ed.
pub fn flat_excerpt(text: &str, max_chars: usize) -> String {
    excerpt(&text.split_whitespace().collect::<Vec<_>>().join(" "), max_chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_cut_on_characters() {
        assert_eq!(excerpt("日本語テキスト", 3), "日本語…");
        assert_eq!(excerpt("abc", 3), "abc");
        assert_eq!(flat_excerpt(" a \n b\tc ", 10), "a b c");
        assert_eq!(flat_excerpt("a  b  c  d", 3), "a b…");
    }
}
