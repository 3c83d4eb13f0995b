//! Outside text cut to a length fit for an answer or a log line: a peer's
//! bytes are quoted in errors (a JSON parser's "unknown field `…`", a
//! backend's health state), and must not make those as long as the input.
//! Pure functions, called from the admin server, the prober and the
//! handover (control-plane thread, or the main thread at start-up).

/// Characters of outside text quoted at most.
pub(crate) const QUOTED_CHARS: usize = 64;

/// `text` cut to `max` characters; `…` marks a cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// `text` cut in the middle to about `max` characters: both ends kept
/// (a config error starts with the key and ends with its hint).
pub(crate) fn cut_middle(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let half = max / 2;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(count - half).collect();
    format!("{head} … {tail}")
}

/// A serde_json error as one short line: what it says, cut (it may quote
/// the input: a field name, a string), then where (`at line L column C`),
/// kept whole.
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let at = if e.line() > 0 {
        format!(" at line {} column {}", e.line(), e.column())
    } else {
        String::new()
    };
    let what = full.strip_suffix(&at).unwrap_or(&full);
    // Room for the parser's own words around the quoted part.
    format!("{}{at}", cut(what, 2 * QUOTED_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_cut_on_a_char_boundary() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "abc…");
        assert_eq!(cut("ééé", 2), "éé…");
        assert_eq!(cut_middle("abcdef", 6), "abcdef");
        assert_eq!(cut_middle("abcdefg", 4), "ab … fg");
    }

    #[test]
    fn json_errors_keep_their_position() {
        let long = format!("{{\"{}\": 1}}", "w".repeat(5000));
        let e = serde_json::from_str::<std::collections::HashMap<String, String>>(&long)
            .expect_err("not strings");
        let short = json_error(&e);
        assert!(short.len() < 200, "{short}");
        assert!(
            short.ends_with(&format!(" at line 1 column {}", e.column())),
            "{short}"
        );
    }
}
