//! Outside text made safe for one line of a log or a terminal.
//!
//! Goals, workflow ids and approver names come from the agent or the client, reasons and request
//! ids from the policy decision point, paths and values from the environment, records from a file
//! anyone with write access may have edited. Written raw to stderr or to `audit show`'s output, a
//! newline in such text forges a log line (`… INFO stage0 check … verdict=ALLOW`), an escape
//! sequence rewrites the terminal (OSC 52 sets the clipboard, CSI moves the cursor and erases),
//! and a bidirectional override shows the text in another order than it has. So every such text
//! goes through [`escaped`] on its way out: the characters of [`needs_escape`] are written as
//! Rust writes them in `{:?}` (`\n`, `\r`, `\t`, `\\`, `\u{1b}`), everything else as it is. The
//! backslash is escaped too, so the output reads back unambiguously: a `\n` shown is always an
//! escaped newline, never two characters the text held.
//!
//! tracing-subscriber escapes ESC in the message of an event, but neither newlines nor any other
//! field, which is why the fields are escaped here, before tracing sees them.

use std::fmt::{self, Write as _};

/// Whether `c` is written escaped: the C0 and C1 control characters and DEL (Unicode category
/// `Cc`), the backslash, the line and paragraph separators (U+2028, U+2029), the bidirectional
/// formatting characters (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069) and the invisible
/// zero-width space, word joiner and byte-order mark (U+200B, U+2060, U+FEFF).
///
/// The zero-width joiner and non-joiner (U+200C, U+200D) are left alone: scripts and emoji need
/// them, and they move nothing.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\\' | '\u{2028}'
                | '\u{2029}'
                | '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200B}'
                | '\u{2060}'
                | '\u{FEFF}'
        )
}

/// `text`, whatever its type displays, with every character of [`needs_escape`] escaped: for a
/// log field (`goal = %escaped(&goal)`) or a line of `audit show`. Allocates nothing.
pub fn escaped<T: fmt::Display>(text: T) -> Escaped<T> {
    Escaped(text)
}

/// What [`escaped`] returns: displays the text it holds, escaped.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<T>(T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping(f), "{}", self.0)
    }
}

/// Passes text on to a formatter, escaping as it goes.
struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, c) in text.char_indices() {
            if needs_escape(c) {
                self.0.write_str(&text[plain..at])?;
                write!(self.0, "{}", c.escape_debug())?;
                plain = at + c.len_utf8();
            }
        }
        self.0.write_str(&text[plain..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_separator_and_bidi_characters_are_escaped_and_the_rest_is_kept() {
        for (raw, shown) in [
            ("Research Rust", "Research Rust"),
            ("a\nb\r\nc\td", r"a\nb\r\nc\td"),
            ("C:\\Users", r"C:\\Users"),
            ("\u{1b}]52;c;SGk=\u{7}", r"\u{1b}]52;c;SGk=\u{7}"),
            ("\u{9b}31m red", r"\u{9b}31m red"),
            ("nul\0 del\u{7f}", r"nul\0 del\u{7f}"),
            ("line\u{2028}para\u{2029}", r"line\u{2028}para\u{2029}"),
            ("\u{202e}gnp.exe", r"\u{202e}gnp.exe"),
            ("\u{2066}x\u{2069}\u{200f}", r"\u{2066}x\u{2069}\u{200f}"),
            ("etl\u{200b}", r"etl\u{200b}"),
            (
                "é 🦀 👩\u{200d}💻 \"quoted\" 'single'",
                "é 🦀 👩\u{200d}💻 \"quoted\" 'single'",
            ),
        ] {
            assert_eq!(escaped(raw).to_string(), shown, "{raw:?}");
        }
    }

    #[test]
    fn every_character_written_raw_is_safe_on_one_terminal_line() {
        let all: String = (0..=0x2100_u32).filter_map(char::from_u32).collect();
        let shown = escaped(&all).to_string();
        let raw = shown.chars().filter(|&c| c != '\\' && needs_escape(c));
        assert_eq!(raw.count(), 0, "{shown}");
    }

    #[test]
    fn anything_that_displays_can_be_escaped() {
        let path = std::path::Path::new("/tmp/a\nb");
        assert_eq!(escaped(path.display()).to_string(), r"/tmp/a\nb");
        assert_eq!(
            escaped(format_args!("{}-{}", "x\u{1b}", 2)).to_string(),
            r"x\u{1b}-2"
        );
    }
}
