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

/// What an HTTP error answer says, in one line: the hub's and most JSON APIs' `{"error": "..."}`,
/// else the start of the body, flattened.
pub fn error_answer(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| flat_excerpt(body, 300))
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

    #[test]
    fn an_error_answer_is_its_json_error_else_the_body_flattened() {
        assert_eq!(error_answer(r#"{"error": "Repository not found"}"#), "Repository not found");
        assert_eq!(error_answer("<html>\n  Bad   gateway\n</html>"), "<html> Bad gateway </html>");
        assert_eq!(error_answer(r#"{"message": "x"}"#), r#"{"message": "x"}"#);
    }
}
