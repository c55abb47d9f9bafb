//! Text shared by the renderers: BuildKit's step numbers, durations, and step output made safe to draw.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// BuildKit's `#N`: steps numbered in the order they first show up.
#[derive(Default)]
pub struct Numbers(Mutex<BTreeMap<usize, usize>>);

impl Numbers {
    pub fn of(&self, vertex: usize) -> usize {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let next = n.len() + 1;
        *n.entry(vertex).or_insert(next)
    }
}

/// `1.2s`, as BuildKit prints a step's time.
pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// A line of a step's output as a live view may draw it: escape sequences (which would move the cursor, clear the
/// screen or change colours under the view's feet) are removed by `console`, other control characters are dropped
/// (tabs become spaces), and without a UTF-8 locale every non-ASCII character becomes `?`.
pub fn drawable(line: &str, utf8: bool) -> String {
    console::strip_ansi_codes(line)
        .chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() => None,
            c if !utf8 && !c.is_ascii() => Some('?'),
            c => Some(c),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawable_drops_terminal_control_and_keeps_text() {
        assert_eq!(drawable("\u{1b}[2J\u{1b}[1;1Hred \u{1b}[31mtext\u{1b}[0m\r", true), "red text");
        assert_eq!(drawable("a\tb\u{7}c", true), "a bc");
        assert_eq!(drawable("größe ✓", true), "größe ✓");
        assert_eq!(drawable("größe ✓", false), "gr??e ?");
    }

    #[test]
    fn numbers_follow_first_appearance() {
        let n = Numbers::default();
        assert_eq!((n.of(7), n.of(3), n.of(7)), (1, 2, 1));
    }
}
