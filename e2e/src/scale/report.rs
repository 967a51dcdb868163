//! The bench's printed figures: one table per phase, as `what | value` rows, and request
//! counts by verb and resource.

use std::collections::BTreeMap;
use std::fmt::Write;

/// A table of figures under a title.
#[derive(Debug, Default)]
pub struct Table {
    title: String,
    rows: Vec<(String, String)>,
}

impl Table {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, what: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.rows.push((what.into(), value.into()));
        self
    }

    /// Request counts, most frequent first, the rest summed into one row.
    pub fn counts(&mut self, prefix: &str, counts: &BTreeMap<String, usize>, top: usize) -> &mut Self {
        let mut sorted: Vec<(&String, &usize)> = counts.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (k, v) in sorted.iter().take(top) {
            self.row(format!("{prefix}{k}"), v.to_string());
        }
        let rest: usize = sorted.iter().skip(top).map(|(_, v)| **v).sum();
        if rest > 0 {
            self.row(format!("{prefix}(others)"), rest.to_string());
        }
        self
    }

    pub fn render(&self) -> String {
        let width = self.rows.iter().map(|(w, _)| w.len()).max().unwrap_or(0).max(10);
        let mut out = format!("\n## {}\n\n", self.title);
        let _ = writeln!(out, "| {:width$} | value |", "what");
        let _ = writeln!(out, "|{}|-------|", "-".repeat(width + 2));
        for (w, v) in &self.rows {
            let _ = writeln!(out, "| {w:width$} | {v} |");
        }
        out
    }
}

/// `a / b` with two decimals, or `-` when b is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 { "-".into() } else { format!("{:.2}", a / b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_sorts_counts_and_sums_the_tail() {
        let counts = BTreeMap::from([
            ("get a".to_owned(), 1),
            ("list b".to_owned(), 5),
            ("patch c".to_owned(), 3),
        ]);
        let text = Table::new("t").row("x", "1").counts("req ", &counts, 2).render();
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| ")).collect();
        assert!(rows[2].contains("req list b") && rows[2].ends_with("| 5 |"), "{text}");
        assert!(rows[3].contains("req patch c"), "{text}");
        assert!(rows[4].contains("req (others)") && rows[4].ends_with("| 1 |"), "{text}");
        assert_eq!(ratio(3.0, 2.0), "1.50");
        assert_eq!(ratio(1.0, 0.0), "-");
    }
}
