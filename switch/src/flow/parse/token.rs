//! Splitting a flow's text into `key=value` items.

use super::ParseError;

/// One `key`, `key=value`, `key:value` or `key(value)` item; offsets are bytes in the line.
#[derive(Debug, Clone, Copy)]
pub(super) struct Token<'a> {
    pub(super) key: &'a str,
    pub(super) at: usize,
    /// The value and its offset.
    pub(super) value: Option<(&'a str, usize)>,
    /// `=`, `:` or `(` (0 without a value).
    pub(super) sep: u8,
}

pub(super) fn is_delim(b: u8) -> bool {
    b == b',' || b.is_ascii_whitespace()
}

/// Splits `key=value` items (ovs-ofctl's `ofputil_parse_key_value` rules: values end at a
/// comma or space outside parentheses and quotes).
pub(super) struct Tokenizer<'a> {
    pub(super) line: &'a str,
    pub(super) pos: usize,
    pub(super) end: usize,
}

impl<'a> Tokenizer<'a> {
    /// The next item; with `stop_at_actions`, `actions=` takes the rest of the line.
    pub(super) fn next(&mut self, stop_at_actions: bool) -> Result<Option<Token<'a>>, ParseError> {
        let b = self.line.as_bytes();
        while self.pos < self.end && is_delim(b[self.pos]) {
            self.pos += 1;
        }
        if self.pos >= self.end {
            return Ok(None);
        }
        let at = self.pos;
        while self.pos < self.end && !is_delim(b[self.pos]) && !b"=:(".contains(&b[self.pos]) {
            if b[self.pos] == b')' {
                return Err(err(self.line, self.pos, "unbalanced ')'"));
            }
            self.pos += 1;
        }
        let key = &self.line[at..self.pos];
        if self.pos >= self.end || is_delim(b[self.pos]) {
            return Ok(Some(Token {
                key,
                at,
                value: None,
                sep: 0,
            }));
        }
        let sep = b[self.pos];
        if key.is_empty() {
            return Err(err(
                self.line,
                at,
                format!("expected a name before '{}'", sep as char),
            ));
        }
        self.pos += 1;
        let vstart = self.pos;
        if stop_at_actions && sep == b'=' && (key == "actions" || key == "action") {
            self.pos = self.end;
            return Ok(Some(Token {
                key,
                at,
                value: Some((&self.line[vstart..self.end], vstart)),
                sep,
            }));
        }
        let mut depth = usize::from(sep == b'(');
        let mut quoted = false;
        let mut escaped = false;
        while self.pos < self.end {
            let c = b[self.pos];
            if quoted {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    quoted = false;
                }
            } else if c == b'"' {
                quoted = true;
            } else if c == b'(' {
                depth += 1;
            } else if c == b')' {
                if depth == 0 {
                    return Err(err(self.line, self.pos, "unbalanced ')'"));
                }
                depth -= 1;
                if depth == 0 && sep == b'(' {
                    break;
                }
            } else if depth == 0 && is_delim(c) {
                break;
            }
            self.pos += 1;
        }
        if quoted {
            return Err(err(self.line, vstart, "unterminated quoted string"));
        }
        if depth > 0 {
            return Err(err(
                self.line,
                vstart - 1,
                format!("'{key}(' has no matching ')'"),
            ));
        }
        let value = &self.line[vstart..self.pos];
        if sep == b'(' {
            self.pos += 1; // the ')'
            if self.pos < self.end && !is_delim(b[self.pos]) {
                return Err(err(self.line, self.pos, "expected ',' after ')'"));
            }
        }
        Ok(Some(Token {
            key,
            at,
            value: Some((value, vstart)),
            sep,
        }))
    }
}

pub(super) fn column(line: &str, byte: usize) -> usize {
    line.get(..byte).map_or(byte, |s| s.chars().count()) + 1
}

pub(super) fn err(line: &str, byte: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        column: column(line, byte),
        message: message.into(),
    }
}
