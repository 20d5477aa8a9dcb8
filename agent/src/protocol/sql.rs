//! SQL text sanitising shared by the `PostgreSQL` and `MySQL` parsers: every literal becomes `?`,
//! comments go, and the statement's operation keyword and (single, plainly named) table are
//! picked out for the span name.
//!
//! One linear pass over the bytes, output capped at [`MAX_TEXT`]: a query of any size costs
//! time proportional to the part read, never more. What cannot be told apart safely errs
//! towards hiding: an unterminated literal or comment hides everything after it, and a `MySQL`
//! `"double-quoted"` word is a string (it is one unless `ANSI_QUOTES` is set).

use std::borrow::Cow;

/// Longest sanitised text kept (bytes); longer text is cut on a char boundary and marked.
pub const MAX_TEXT: usize = 2048;
/// What marks a cut text.
const CUT: &str = "...";
/// Tokens kept for finding the operation and the table: statements name them early.
const MAX_TOKENS: usize = 96;
/// Longest `PostgreSQL` dollar-quote tag looked for (`$tag$`); a longer one is not a tag.
const MAX_TAG: usize = 64;

/// Which SQL the text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
}

/// A query fit for a span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sanitised {
    /// The text with every literal `?` and comments dropped, whitespace runs one space.
    pub text: Box<str>,
    /// First keyword uppercased (`SELECT`), the main statement's for a `WITH` when found.
    pub operation: Option<Cow<'static, str>>,
    /// The one table the (first) statement names plainly, if it does.
    pub collection: Option<Box<str>>,
    /// Statements in the text (`a; b` is 2; only blanks and `;` is 0).
    pub statements: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A bare word (keyword or identifier), its bytes in the input.
    Word,
    /// A quoted identifier (`"x"`, `` `x` ``), quotes included.
    Quoted,
    Literal,
    Punct(u8),
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// Output text, bounded.
struct Out {
    bytes: Vec<u8>,
    full: bool,
}

impl Out {
    fn push(&mut self, b: &[u8]) {
        if self.full {
            return;
        }
        if self.bytes.len() + b.len() > MAX_TEXT {
            self.full = true;
            return;
        }
        self.bytes.extend_from_slice(b);
    }

    /// One space for any run of whitespace (and for a dropped comment), none at the start.
    fn space(&mut self) {
        if self.bytes.last().is_some_and(|&b| b != b' ') {
            self.push(b" ");
        }
    }
}

fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Index just past a quoted run opened at `start` (the quote), `quote` doubled inside escaping
/// itself and, with `backslash`, `\` escaping the next byte; `None` when unterminated.
fn close_quote(text: &[u8], start: usize, quote: u8, backslash: bool) -> Option<usize> {
    let mut i = start + 1;
    while i < text.len() {
        let b = text[i];
        if backslash && b == b'\\' {
            i += 2;
            continue;
        }
        if b == quote {
            if text.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// A number literal from `start`: decimal with fraction and exponent, `0x..`, `0b..`.
fn number_end(text: &[u8], start: usize) -> usize {
    let mut i = start;
    let at = |i: usize| text.get(i).copied().unwrap_or(0);
    if at(i) == b'0' && matches!(at(i + 1), b'x' | b'X' | b'b' | b'B') {
        i += 2;
        while at(i).is_ascii_hexdigit() {
            i += 1;
        }
        return i;
    }
    while at(i).is_ascii_digit() || at(i) == b'_' {
        i += 1;
    }
    if at(i) == b'.' {
        i += 1;
        while at(i).is_ascii_digit() {
            i += 1;
        }
    }
    if matches!(at(i), b'e' | b'E')
        && (at(i + 1).is_ascii_digit()
            || (matches!(at(i + 1), b'+' | b'-') && at(i + 2).is_ascii_digit()))
    {
        i += 2;
        while at(i).is_ascii_digit() {
            i += 1;
        }
    }
    i
}

/// What a `$` opens in `PostgreSQL`.
enum Dollar {
    /// A dollar quote ending just before this index.
    Closed(usize),
    Unterminated,
}

/// A `PostgreSQL` dollar quote opened at `start` (`$$` or `$tag$`), `None` when this `$` opens
/// none.
fn dollar_quote_end(text: &[u8], start: usize) -> Option<Dollar> {
    let rest = text.get(start + 1..)?;
    let tag_len = rest
        .iter()
        .take(MAX_TAG + 1)
        .position(|&b| b == b'$')
        .filter(|&n| n <= MAX_TAG)?;
    let tag = &rest[..tag_len];
    if tag.first().is_some_and(u8::is_ascii_digit)
        || !tag.iter().all(|&b| is_word_byte(b) && b != b'$')
    {
        return None;
    }
    let delimiter = &text[start..start + tag_len + 2];
    let body = start + tag_len + 2;
    Some(
        text.get(body..)
            .and_then(|b| b.windows(delimiter.len()).position(|w| w == delimiter))
            .map_or(Dollar::Unterminated, |p| {
                Dollar::Closed(body + p + delimiter.len())
            }),
    )
}

impl Sanitised {
    /// Marks the text as cut: the query was longer than what was captured or kept.
    pub fn mark_cut(&mut self) {
        if self.text.ends_with(CUT) {
            return;
        }
        let mut text = String::from(std::mem::take(&mut self.text));
        let mut at = text.len().min(MAX_TEXT - CUT.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push_str(CUT);
        self.text = text.into_boxed_str();
    }
}

/// Sanitises `text` (the bytes as sent; invalid UTF-8 is replaced).
// One loop over the bytes with a branch per lexical form: split up, each branch would need
// the output, the token list and the position passed around.
#[allow(clippy::too_many_lines)]
#[must_use]
pub fn sanitise(text: &[u8], dialect: Dialect) -> Sanitised {
    let mysql = dialect == Dialect::Mysql;
    let mut out = Out {
        bytes: Vec::with_capacity(text.len().min(MAX_TEXT)),
        full: false,
    };
    let mut tokens: Vec<Token> = Vec::new();
    let note = |tokens: &mut Vec<Token>, kind, start, end| {
        if tokens.len() < MAX_TOKENS {
            tokens.push(Token { kind, start, end });
        }
    };
    let mut statements = 0u32;
    let mut in_statement = false;
    let mut i = 0;
    // Once the output is full nothing more is written, and tokens are kept only early on:
    // stop reading then (statements past that point go uncounted).
    while i < text.len() && !(out.full && tokens.len() >= MAX_TOKENS) {
        let b = text[i];
        let next = text.get(i + 1).copied().unwrap_or(0);
        if !b.is_ascii_whitespace() && b != b';' && !in_statement {
            in_statement = true;
            statements = statements.saturating_add(1);
        }
        // Comments: dropped whole; unterminated ones hide the rest.
        if (b == b'-' && next == b'-') || (mysql && b == b'#') {
            i = text[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(text.len(), |p| i + p + 1);
            out.space();
            continue;
        }
        if b == b'/' && next == b'*' {
            let mut depth = 0u32;
            let mut j = i;
            i = text.len();
            while j + 1 < text.len() {
                if text[j] == b'/' && text[j + 1] == b'*' {
                    depth += 1;
                    j += 2;
                } else if text[j] == b'*' && text[j + 1] == b'/' {
                    depth -= 1;
                    j += 2;
                    // PostgreSQL nests block comments; MySQL ends at the first `*/`.
                    if depth == 0 || mysql {
                        i = j;
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            out.space();
            continue;
        }
        if b.is_ascii_whitespace() {
            out.space();
            i += 1;
            continue;
        }
        // Strings: '..' always; "..": a string in MySQL, an identifier in PostgreSQL.
        if b == b'\'' || (mysql && b == b'"') {
            let end = close_quote(text, i, b, mysql);
            out.push(b"?");
            note(&mut tokens, Kind::Literal, i, i);
            match end {
                Some(end) => i = end,
                None => break,
            }
            continue;
        }
        if b == b'"' || (mysql && b == b'`') {
            // An unterminated quoted name may be a literal's start in disguise: hide the rest.
            let Some(end) = close_quote(text, i, b, false) else {
                out.push(b"?");
                break;
            };
            out.push(&text[i..end]);
            note(&mut tokens, Kind::Quoted, i, end);
            i = end;
            continue;
        }
        if b == b'$' && !mysql {
            if next.is_ascii_digit() {
                // A placeholder ($1): kept.
                let end = i
                    + 1
                    + text[i + 1..]
                        .iter()
                        .take_while(|c| c.is_ascii_digit())
                        .count();
                out.push(&text[i..end]);
                note(&mut tokens, Kind::Punct(b'?'), i, end);
                i = end;
                continue;
            }
            if let Some(end) = dollar_quote_end(text, i) {
                out.push(b"?");
                note(&mut tokens, Kind::Literal, i, i);
                match end {
                    Dollar::Closed(end) => i = end,
                    Dollar::Unterminated => break,
                }
                continue;
            }
        }
        if b.is_ascii_digit() || (b == b'.' && next.is_ascii_digit()) {
            i = number_end(text, i);
            out.push(b"?");
            note(&mut tokens, Kind::Literal, i, i);
            continue;
        }
        if is_word_start(b) {
            let end = i + text[i..].iter().take_while(|&&c| is_word_byte(c)).count();
            let word = &text[i..end];
            // E'..' (escapes), B'..', X'..', N'..' and MySQL's _charset'..': one literal.
            if text.get(end) == Some(&b'\'') {
                let escapes = mysql || word.eq_ignore_ascii_case(b"e");
                let prefix = matches!(
                    word,
                    [b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N']
                ) || (mysql && word.first() == Some(&b'_'));
                if prefix {
                    out.push(b"?");
                    note(&mut tokens, Kind::Literal, i, i);
                    match close_quote(text, end, b'\'', escapes) {
                        Some(close) => i = close,
                        None => break,
                    }
                    continue;
                }
            }
            out.push(word);
            note(&mut tokens, Kind::Word, i, end);
            i = end;
            continue;
        }
        if b == b';' {
            in_statement = false;
        }
        out.push(&[b]);
        note(&mut tokens, Kind::Punct(b), i, i + 1);
        i += 1;
    }
    while out.bytes.last() == Some(&b' ') {
        out.bytes.pop();
    }
    let mut rendered = String::from_utf8_lossy(&out.bytes).into_owned();
    // Invalid UTF-8 grows in the conversion (one byte, three of U+FFFD): cut again then.
    if out.full || rendered.len() > MAX_TEXT {
        let mut cut = rendered.len().min(MAX_TEXT - CUT.len());
        while !rendered.is_char_boundary(cut) {
            cut -= 1;
        }
        rendered.truncate(cut);
        rendered.push_str(CUT);
    }
    let (operation, collection) = analyse(text, &tokens);
    Sanitised {
        text: rendered.into_boxed_str(),
        operation,
        collection,
        statements,
    }
}

/// Keywords an operation is named by, as static strings (no allocation per span).
const OPERATIONS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "REPLACE",
    "UPSERT",
    "WITH",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "CREATE",
    "DROP",
    "ALTER",
    "TRUNCATE",
    "SET",
    "SHOW",
    "USE",
    "GRANT",
    "REVOKE",
    "EXPLAIN",
    "ANALYZE",
    "VACUUM",
    "COPY",
    "CALL",
    "EXECUTE",
    "PREPARE",
    "DEALLOCATE",
    "DECLARE",
    "FETCH",
    "CLOSE",
    "LISTEN",
    "NOTIFY",
    "UNLISTEN",
    "LOCK",
    "DO",
    "DESCRIBE",
    "DESC",
    "VALUES",
    "TABLE",
    "RESET",
    "DISCARD",
    "COMMENT",
    "REFRESH",
    "REINDEX",
    "CLUSTER",
    "CHECKPOINT",
    "LOAD",
    "HANDLER",
    "OPTIMIZE",
    "RENAME",
    "FLUSH",
    "KILL",
    "ABORT",
    "END",
];

fn word<'t>(text: &'t [u8], t: &Token) -> &'t [u8] {
    &text[t.start..t.end]
}

fn is_kw(text: &[u8], t: &Token, kw: &str) -> bool {
    t.kind == Kind::Word && word(text, t).eq_ignore_ascii_case(kw.as_bytes())
}

fn operation_of(text: &[u8], t: &Token) -> Option<Cow<'static, str>> {
    if t.kind != Kind::Word {
        return None;
    }
    let w = word(text, t);
    if let Some(known) = OPERATIONS
        .iter()
        .find(|k| w.eq_ignore_ascii_case(k.as_bytes()))
    {
        return Some(Cow::Borrowed(known));
    }
    // Other keywords: uppercased if they look like one (letters only, short).
    (w.len() <= 24 && w.iter().all(u8::is_ascii_alphabetic))
        .then(|| Cow::Owned(String::from_utf8_lossy(w).to_ascii_uppercase()))
}

/// The operation and the single plainly named table of the first statement.
fn analyse(text: &[u8], tokens: &[Token]) -> (Option<Cow<'static, str>>, Option<Box<str>>) {
    // The first statement's tokens at any depth, and the depth of each.
    let first = tokens
        .iter()
        .position(|t| t.kind == Kind::Punct(b';'))
        .map_or(tokens, |end| &tokens[..end]);
    let mut depth = 0u32;
    let mut level = Vec::with_capacity(first.len());
    for t in first {
        if t.kind == Kind::Punct(b')') {
            depth = depth.saturating_sub(1);
        }
        level.push(depth);
        if t.kind == Kind::Punct(b'(') {
            depth += 1;
        }
    }
    let Some(head) = first.first() else {
        return (None, None);
    };
    let mut operation = operation_of(text, head);
    let mut body = 0;
    if is_kw(text, head, "WITH") {
        // The main statement: the first DML keyword outside the CTEs' parentheses.
        if let Some(main) = first.iter().enumerate().skip(1).find(|(i, t)| {
            level[*i] == 0
                && ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"]
                    .iter()
                    .any(|k| is_kw(text, t, k))
        }) {
            operation = operation_of(text, main.1);
            body = main.0;
        } else {
            return (operation, None);
        }
    }
    (operation, collection(text, &first[body..], &level[body..]))
}

/// The table after FROM / INTO / UPDATE / TABLE when the statement names exactly one plainly.
fn collection(text: &[u8], tokens: &[Token], level: &[u32]) -> Option<Box<str>> {
    let top = |i: usize| level.get(i) == Some(&0);
    let mut target = None;
    // COPY names its table first; its FROM / TO name a file or STDIN.
    let copy = tokens.first().is_some_and(|t| is_kw(text, t, "COPY"));
    for (i, t) in tokens.iter().enumerate() {
        if copy {
            target = Some(1);
            break;
        }
        if !top(i) {
            continue;
        }
        let names = ["FROM", "INTO", "TABLE", "JOIN", "USING"]
            .iter()
            .any(|k| is_kw(text, t, k))
            || (i == 0 && is_kw(text, t, "UPDATE"));
        if !names {
            continue;
        }
        if target.is_some() || is_kw(text, t, "JOIN") || is_kw(text, t, "USING") {
            // A second table (join, UPDATE .. FROM, INSERT .. SELECT .. FROM): none plainly.
            return None;
        }
        target = Some(i + 1);
    }
    let mut at = target?;
    // Modifiers between the keyword and the name.
    while tokens.get(at).is_some_and(|t| {
        [
            "IF",
            "NOT",
            "EXISTS",
            "ONLY",
            "LOW_PRIORITY",
            "IGNORE",
            "TEMPORARY",
            "TEMP",
        ]
        .iter()
        .any(|k| is_kw(text, t, k))
    }) {
        at += 1;
    }
    let mut name = String::new();
    loop {
        let t = tokens.get(at)?;
        let part = match t.kind {
            Kind::Word => word(text, t),
            Kind::Quoted => {
                let w = word(text, t);
                w.get(1..w.len().saturating_sub(1)).unwrap_or_default()
            }
            _ => return None,
        };
        if part.is_empty() || name.len() + part.len() > 128 {
            return None;
        }
        name.push_str(&String::from_utf8_lossy(part));
        at += 1;
        if tokens.get(at).is_some_and(|t| t.kind == Kind::Punct(b'.')) {
            name.push('.');
            at += 1;
            continue;
        }
        break;
    }
    // `FROM a, b` or `FROM a x, b`: a list.
    let after = tokens.get(at..).unwrap_or_default();
    let list = match after {
        [first, ..] if first.kind == Kind::Punct(b',') => true,
        [alias, comma, ..] if alias.kind == Kind::Word && comma.kind == Kind::Punct(b',') => {
            !is_kw(text, alias, "SET") && !is_kw(text, alias, "VALUES")
        }
        [r#as, _, comma, ..] if is_kw(text, r#as, "AS") && comma.kind == Kind::Punct(b',') => true,
        _ => false,
    };
    // A subquery or a function in place of a table.
    let call = after.first().is_some_and(|t| t.kind == Kind::Punct(b'('))
        && !tokens.first().is_some_and(|t| {
            ["INSERT", "REPLACE", "COPY"]
                .iter()
                .any(|k| is_kw(text, t, k))
        })
        && !tokens.iter().any(|t| is_kw(text, t, "CREATE"));
    (!list && !call).then(|| name.into_boxed_str())
}

/// SQL text as a client sends it: printable (tabs and line breaks allowed), starting (after
/// blanks, parentheses or a comment's opening) with a letter.
pub fn looks_like_statement(text: &[u8]) -> bool {
    let start = text
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'('));
    let Some(start) = start else {
        return false;
    };
    let rest = &text[start..];
    (rest[0].is_ascii_alphabetic() || rest.starts_with(b"/*"))
        && text
            .iter()
            .all(|&b| b >= 0x20 || matches!(b, b'\t' | b'\r' | b'\n'))
        && std::str::from_utf8(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(text: &str) -> Sanitised {
        sanitise(text.as_bytes(), Dialect::Postgres)
    }

    fn my(text: &str) -> Sanitised {
        sanitise(text.as_bytes(), Dialect::Mysql)
    }

    #[test]
    fn literals_become_placeholders_and_the_rest_stays() {
        let s = pg("SELECT * FROM users WHERE id = 42 AND name = 'bob'");
        assert_eq!(&*s.text, "SELECT * FROM users WHERE id = ? AND name = ?");
        assert_eq!(s.operation.as_deref(), Some("SELECT"));
        assert_eq!(s.collection.as_deref(), Some("users"));
        assert_eq!(s.statements, 1);
        let s = pg("insert into t (a, b) values ($1, $2)");
        assert_eq!(&*s.text, "insert into t (a, b) values ($1, $2)");
        assert_eq!(s.operation.as_deref(), Some("INSERT"));
        assert_eq!(s.collection.as_deref(), Some("t"));
        assert_eq!(
            &*my("UPDATE t SET a = %s, b = :name, c = ? WHERE x = 1.5e-3").text,
            "UPDATE t SET a = %s, b = :name, c = ? WHERE x = ?"
        );
    }

    #[test]
    fn every_literal_form_is_hidden() {
        for (q, want) in [
            (
                "SELECT 'it''s', E'a\\'b', $$x$$, $tag$ y $ z $tag$",
                "SELECT ?, ?, ?, ?",
            ),
            (
                "SELECT 0x1F, X'ab', B'01', .5, 1e10, 3.14",
                "SELECT ?, ?, ?, ?, ?, ?",
            ),
            (
                "SELECT \"Quoted Id\" FROM \"My Table\"",
                "SELECT \"Quoted Id\" FROM \"My Table\"",
            ),
        ] {
            assert_eq!(&*pg(q).text, want, "{q}");
        }
        assert_eq!(
            pg("SELECT 1 FROM \"My Table\"").collection.as_deref(),
            Some("My Table")
        );
        for (q, want) in [
            (
                "SELECT 'a\\'b', \"s3cr3t\", `col` FROM `t`",
                "SELECT ?, ?, `col` FROM `t`",
            ),
            ("SELECT _utf8mb4'x', N'y', x'ff'", "SELECT ?, ?, ?"),
        ] {
            assert_eq!(&*my(q).text, want, "{q}");
        }
        // In PostgreSQL a backslash does not escape in a standard string.
        assert_eq!(&*pg("SELECT 'a\\', b").text, "SELECT ?, b");
    }

    #[test]
    fn comments_are_dropped_and_quotes_in_them_do_not_confuse() {
        let s = pg(
            "SELECT /* it's 's3cr3t' */ a -- don't 'x'\nFROM t WHERE b = 'c' /* /* nested */ 'd' */",
        );
        assert_eq!(&*s.text, "SELECT a FROM t WHERE b = ?");
        let s = my("SELECT a # it's\nFROM t /* 'x' */ WHERE c = 'q'");
        assert_eq!(&*s.text, "SELECT a FROM t WHERE c = ?");
        // An unterminated comment hides the rest.
        assert_eq!(&*pg("SELECT a /* 's3cr3t").text, "SELECT a");
    }

    #[test]
    fn unterminated_literals_hide_everything_after() {
        for q in [
            "SELECT 'abc s3cr3t",
            "SELECT $q$ s3cr3t",
            "SELECT E'abc\\' s3cr3t",
        ] {
            let s = pg(q);
            assert_eq!(&*s.text, "SELECT ?", "{q}");
        }
        assert_eq!(&*my("SELECT \"s3cr3t").text, "SELECT ?");
        assert_eq!(&*pg("SELECT \"s3cr3t").text, "SELECT ?");
        assert_eq!(&*my("SELECT `s3cr3t").text, "SELECT ?");
        assert_eq!(&*my("SELECT 'a\\' s3cr3t").text, "SELECT ?");
    }

    #[test]
    fn unicode_and_invalid_bytes_survive() {
        let s = pg("SELECT naïve FROM tëst WHERE x = 'ünï'");
        assert_eq!(&*s.text, "SELECT naïve FROM tëst WHERE x = ?");
        assert_eq!(s.collection.as_deref(), Some("tëst"));
        let s = sanitise(b"SELECT \xff\xfe FROM t WHERE a='\xc3", Dialect::Postgres);
        assert_eq!(&*s.text, "SELECT \u{fffd}\u{fffd} FROM t WHERE a=?");
        // Invalid bytes grow threefold as U+FFFD: still bounded.
        let s = sanitise(&[0xfe; 4000], Dialect::Mysql);
        assert!(s.text.len() <= MAX_TEXT && s.text.ends_with(CUT));
    }

    #[test]
    fn operations_and_collections() {
        for (q, op, table) in [
            (
                "DELETE FROM public.users WHERE id = 1",
                "DELETE",
                Some("public.users"),
            ),
            ("UPDATE users SET a = 1", "UPDATE", Some("users")),
            ("SELECT * FROM a JOIN b ON a.id = b.id", "SELECT", None),
            ("SELECT * FROM a, b", "SELECT", None),
            ("SELECT * FROM a x, b y", "SELECT", None),
            ("SELECT * FROM (SELECT 1) s", "SELECT", None),
            (
                "SELECT * FROM a WHERE b IN (SELECT c FROM d)",
                "SELECT",
                Some("a"),
            ),
            ("SELECT a, b FROM t ORDER BY a, b", "SELECT", Some("t")),
            (
                "WITH x AS (SELECT * FROM a) SELECT * FROM x",
                "SELECT",
                Some("x"),
            ),
            ("CREATE TABLE IF NOT EXISTS t (id int)", "CREATE", Some("t")),
            (
                "DROP TABLE IF EXISTS users; CREATE TABLE users (id int)",
                "DROP",
                Some("users"),
            ),
            ("INSERT INTO t SELECT * FROM u", "INSERT", None),
            ("UPDATE t SET a = u.a FROM u", "UPDATE", None),
            ("begin", "BEGIN", None),
            ("SELECT now()", "SELECT", None),
            ("SELECT * FROM generate_series(1, 2)", "SELECT", None),
            ("COPY t (a, b) FROM STDIN", "COPY", Some("t")),
            ("COPY (SELECT 1) TO STDOUT", "COPY", None),
        ] {
            let s = pg(q);
            assert_eq!(s.operation.as_deref(), Some(op), "{q}");
            assert_eq!(s.collection.as_deref(), table, "{q}");
        }
        assert_eq!(pg("DROP TABLE a; CREATE TABLE b (x int);").statements, 2);
        assert_eq!(pg("").operation, None);
        assert_eq!(pg("  ;; ").statements, 0);
    }

    #[test]
    fn output_is_bounded_and_cut_on_a_char_boundary() {
        let long = format!("SELECT {} FROM t", "é, ".repeat(5000));
        let s = pg(&long);
        assert!(s.text.len() <= MAX_TEXT);
        assert!(s.text.ends_with(CUT));
        assert_eq!(s.operation.as_deref(), Some("SELECT"));
        // Many literals: linear, every one hidden.
        let many = format!("INSERT INTO t VALUES {}", "('s3cr3t', 1),".repeat(100_000));
        let s = pg(&many);
        assert!(!s.text.contains("s3cr3t"));
        assert_eq!(s.collection.as_deref(), Some("t"));
    }

    #[test]
    fn hostile_bytes_never_panic() {
        for q in [
            &b"$"[..],
            b"$a",
            b"$a$",
            b"'",
            b"\"",
            b"/*",
            b"/*/",
            b"--",
            b"E'",
            b"0x",
            b"1e",
            b"1e+",
            b"`",
            b"\\",
            b"((((((",
            b"))))) FROM",
            b"FROM",
            b"FROM .",
            b"FROM a.",
        ] {
            let _ = sanitise(q, Dialect::Postgres);
            let _ = sanitise(q, Dialect::Mysql);
        }
    }
}
