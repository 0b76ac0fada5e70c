//! The query language: a dotted path with array indexes. Written by hand because the grammar
//! is a handful of rules and a hand parser gives exact error positions:
//!
//! ```text
//! query   := "" | "."? first step*
//! first   := key | bracket
//! step    := "." key | bracket
//! key     := one or more characters other than . [ ] "
//! bracket := "[" ( "*" | "-"? digits | quoted ) "]"
//! quoted  := '"' ( any character but " and \ | '\"' | '\\' )* '"'
//! ```
//!
//! An empty query (or a lone `.`) selects the whole document.

use std::fmt;

/// Longest query accepted, in characters; it also bounds how deep evaluation recurses.
pub const QUERY_CHARS_MAX: usize = 1024;

/// One step of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// `.name` or `["name"]`: a member of an object.
    Key(String),
    /// `[n]`, or `[-n]` counting from the end (`[-1]` is the last element).
    Index(i64),
    /// `[*]`: every element of an array; the steps after it apply to each element.
    Wildcard,
}

impl Segment {
    /// Append this step to `path` in query syntax, so error messages show a path that can be
    /// pasted back as a query.
    pub fn write_to(&self, path: &mut String) {
        match self {
            Self::Key(key) if is_bare(key) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Self::Key(key) => {
                path.push_str("[\"");
                for c in key.chars() {
                    if matches!(c, '"' | '\\') {
                        path.push('\\');
                    }
                    path.push(c);
                }
                path.push_str("\"]");
            }
            Self::Index(index) => path.push_str(&format!("[{index}]")),
            Self::Wildcard => path.push_str("[*]"),
        }
    }
}

fn is_bare(key: &str) -> bool {
    !key.is_empty() && !key.contains(['.', '[', ']', '"'])
}

/// A query that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// 0-based character offset where parsing stopped.
    pub position: usize,
    /// What was wrong there.
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

impl std::error::Error for QueryError {}

/// Parse a query into its steps.
///
/// # Errors
/// [`QueryError`], with the character position where parsing stopped, when the query is longer than
/// [`QUERY_CHARS_MAX`] characters, a key is empty, a bracket holds neither `*`, an index nor a
/// quoted key or is not closed, an index overflows or is `-0`, a quoted key is not closed or has an
/// escape other than `\"` and `\\`, or a step starts with anything but `.` or `[`.
pub fn parse(query: &str) -> Result<Vec<Segment>, QueryError> {
    let chars: Vec<char> = query.chars().collect();
    if chars.len() > QUERY_CHARS_MAX {
        return Err(QueryError {
            position: QUERY_CHARS_MAX,
            message: format!("the query is longer than {QUERY_CHARS_MAX} characters"),
        });
    }
    let mut parser = Parser { chars, pos: 0 };
    let mut segments = Vec::new();
    // jq habit: `.a.b` and `.` are accepted as well as `a.b` and the empty query.
    parser.eat('.');
    if parser.peek().is_none() {
        return Ok(segments);
    }
    segments.push(if parser.peek() == Some('[') { parser.bracket()? } else { Segment::Key(parser.key()?) });
    while let Some(c) = parser.peek() {
        match c {
            '.' => {
                parser.pos += 1;
                segments.push(Segment::Key(parser.key()?));
            }
            '[' => segments.push(parser.bracket()?),
            _ => return Err(parser.error(format!("unexpected `{c}`; expected `.`, `[` or the end of the query"))),
        }
    }
    Ok(segments)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.pos += 1;
        }
        found
    }

    fn error(&self, message: impl Into<String>) -> QueryError {
        QueryError { position: self.pos, message: message.into() }
    }

    fn found(&self) -> String {
        self.peek().map_or_else(|| "the end of the query".to_string(), |c| format!("`{c}`"))
    }

    fn key(&mut self) -> Result<String, QueryError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| !matches!(c, '.' | '[' | ']' | '"')) {
            self.pos += 1;
        }
        if self.pos == start {
            let hint = if self.peek() == Some('"') { "; quote a key as `[\"...\"]`" } else { "" };
            return Err(self.error(format!("expected a key, found {}{hint}", self.found())));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    /// At a `[`: an index, a wildcard or a quoted key, through the closing `]`.
    fn bracket(&mut self) -> Result<Segment, QueryError> {
        self.pos += 1;
        let segment = match self.peek() {
            Some('*') => {
                self.pos += 1;
                Segment::Wildcard
            }
            Some('"') => Segment::Key(self.quoted()?),
            Some(c) if c == '-' || c.is_ascii_digit() => Segment::Index(self.index()?),
            _ => {
                return Err(
                    self.error(format!("expected an index, `*` or a quoted key after `[`, found {}", self.found()))
                );
            }
        };
        if !self.eat(']') {
            return Err(self.error(format!("expected `]`, found {}", self.found())));
        }
        Ok(segment)
    }

    fn index(&mut self) -> Result<i64, QueryError> {
        let start = self.pos;
        let negative = self.eat('-');
        let digits_start = self.pos;
        let mut value: i64 = 0;
        while let Some(digit) = self.peek().and_then(|c| c.to_digit(10)) {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(digit)))
                .ok_or_else(|| QueryError { position: start, message: "the index is too large".to_string() })?;
            self.pos += 1;
        }
        if self.pos == digits_start {
            return Err(self.error(format!("expected digits, found {}", self.found())));
        }
        if negative && value == 0 {
            return Err(QueryError {
                position: start,
                message: "`-0` is not an index; `[-1]` is the last element".to_string(),
            });
        }
        Ok(if negative { -value } else { value })
    }

    /// At a `"`: the key up to the closing quote, with `\"` and `\\` unescaped.
    fn quoted(&mut self) -> Result<String, QueryError> {
        let open = self.pos;
        self.pos += 1;
        let mut key = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(QueryError { position: open, message: "this quoted key is never closed".to_string() });
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(key);
                }
                Some('\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c @ ('"' | '\\')) => key.push(c),
                        _ => {
                            return Err(self
                                .error(format!("only `\\\"` and `\\\\` escapes are allowed, found {}", self.found())));
                        }
                    }
                }
                Some(c) => key.push(c),
            }
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Segment::{Index, Key, Wildcard};

    fn key(k: &str) -> Segment {
        Key(k.to_string())
    }

    fn ok(query: &str) -> Vec<Segment> {
        parse(query).unwrap_or_else(|e| panic!("{query:?} should parse: {e}"))
    }

    fn err(query: &str) -> QueryError {
        match parse(query) {
            Ok(segments) => panic!("{query:?} should not parse, got {segments:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_keys_indexes_and_wildcards() {
        assert_eq!(ok("a.b[2].c"), [key("a"), key("b"), Index(2), key("c")]);
        assert_eq!(ok("items[-1]"), [key("items"), Index(-1)]);
        assert_eq!(ok("a[*].b[*]"), [key("a"), Wildcard, key("b"), Wildcard]);
        assert_eq!(ok("[0][1]"), [Index(0), Index(1)]);
        assert_eq!(ok("a[007]"), [key("a"), Index(7)]);
        assert_eq!(ok("first name.ünï-cødé_1"), [key("first name"), key("ünï-cødé_1")]);
    }

    #[test]
    fn empty_and_dot_select_the_root_and_a_leading_dot_is_optional() {
        assert_eq!(ok(""), []);
        assert_eq!(ok("."), []);
        assert_eq!(ok(".a.b"), ok("a.b"));
        assert_eq!(ok(".[0]"), [Index(0)]);
    }

    #[test]
    fn quoted_keys_hold_any_character() {
        assert_eq!(ok(r#"["a.b"]"#), [key("a.b")]);
        assert_eq!(ok(r#"x["[weird]"].y"#), [key("x"), key("[weird]"), key("y")]);
        assert_eq!(ok(r#"["say \"hi\" \\ bye"]"#), [key(r#"say "hi" \ bye"#)]);
        assert_eq!(ok(r#"[""]"#), [key("")]);
    }

    #[test]
    fn reports_where_a_malformed_query_goes_wrong() {
        let cases = [
            ("a.", 2, "expected a key, found the end"),
            ("a..b", 2, "expected a key, found `.`"),
            ("..", 1, "expected a key"),
            ("a[", 2, "expected an index"),
            ("a[]", 2, "found `]`"),
            ("a[x]", 2, "found `x`"),
            ("a[1", 3, "expected `]`, found the end"),
            ("a[1x]", 3, "expected `]`, found `x`"),
            ("a[-]", 3, "expected digits"),
            ("a[-0]", 2, "`-0` is not an index"),
            ("a[*x]", 3, "expected `]`"),
            ("a[0]b", 4, "unexpected `b`"),
            ("a]", 1, "unexpected `]`"),
            ("]", 0, "expected a key, found `]`"),
            (r#""a""#, 0, "quote a key as"),
            (r#"a["b"#, 2, "never closed"),
            (r#"a["b\n"]"#, 5, "escapes are allowed, found `n`"),
            ("a[99999999999999999999]", 2, "too large"),
            ("a[ 1]", 2, "found ` `"),
        ];
        for (query, position, message) in cases {
            let e = err(query);
            assert_eq!(e.position, position, "{query:?}: {e}");
            assert!(e.message.contains(message), "{query:?}: {e}");
        }
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        assert_eq!(err("ééé..").position, 4);
    }

    #[test]
    fn rejects_overlong_queries() {
        assert!(parse(&"a".repeat(QUERY_CHARS_MAX)).is_ok());
        let e = err(&"a".repeat(QUERY_CHARS_MAX + 1));
        assert!(e.message.contains("longer than"), "{e}");
    }

    #[test]
    fn written_paths_parse_back_to_the_same_segments() {
        for query in ["a.b[2].c", r#"x["a.b"]["q\"uote"][-3][*]"#, r#"[""].k"#, "[0].a"] {
            let segments = ok(query);
            let mut written = String::new();
            for segment in &segments {
                segment.write_to(&mut written);
            }
            assert_eq!(ok(&written), segments, "{query:?} was written as {written:?}");
        }
    }
}
