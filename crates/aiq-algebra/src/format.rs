//! Human-readable renderings of an [`Analysis`]: an aligned text table and Markdown.

use crate::graph::Analysis;

const HEADER: [&str; 7] = ["layer", "kind", "output", "c", "p", "C (cum.)", "P (cum.)"];

/// `x` with 4 significant digits: fixed notation between 1e-3 and 1e5, scientific outside,
/// so values from softmax's 1.342e-5 to a GCC of 1e12 stay short and comparable.
pub fn sig4(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let exp = x.abs().log10().floor() as i32;
    if (-3..5).contains(&exp) {
        format!("{:.*}", (3 - exp).max(0) as usize, x)
    } else {
        format!("{x:.3e}")
    }
}

impl Analysis {
    fn cells(&self) -> Vec<[String; 7]> {
        self.layers
            .iter()
            .map(|r| {
                [
                    r.name.clone(),
                    r.kind.to_string(),
                    r.output_shape.to_string(),
                    sig4(r.complexity),
                    sig4(r.intrinsic_power),
                    sig4(r.cumulative_complexity),
                    sig4(r.cumulative_intrinsic_power),
                ]
            })
            .collect()
    }

    fn globals(&self) -> [(&'static str, String); 4] {
        [
            ("GCC", sig4(self.gcc)),
            ("GCIP", sig4(self.gcip)),
            ("GSC", sig4(self.gsc)),
            ("GWC", sig4(self.gwc)),
        ]
    }

    /// An aligned text table (text left-aligned, numbers right-aligned) and the globals.
    pub fn to_table(&self) -> String {
        let cells = self.cells();
        let mut width = HEADER.map(str::len);
        for row in &cells {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |row: &[String]| {
            let mut s = String::new();
            for (i, (cell, w)) in row.iter().zip(width).enumerate() {
                let pad = " ".repeat(w - cell.chars().count());
                if i > 0 {
                    s.push_str("  ");
                }
                if i < 3 {
                    s.push_str(cell);
                    s.push_str(&pad);
                } else {
                    s.push_str(&pad);
                    s.push_str(cell);
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&HEADER.map(String::from));
        for row in &cells {
            out.push_str(&line(row));
        }
        out.push('\n');
        for (name, value) in self.globals() {
            out.push_str(&format!("{name:<4}  {value}\n"));
        }
        out
    }

    /// A Markdown table of the layers followed by one of the global values.
    pub fn to_markdown(&self) -> String {
        let row = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut out = row(&HEADER.map(String::from));
        out.push_str("|---|---|---|---:|---:|---:|---:|\n");
        for cells in self.cells() {
            out.push_str(&row(&cells));
        }
        out.push_str("\n| GCC | GCIP | GSC | GWC |\n|---:|---:|---:|---:|\n");
        out.push_str(&row(&self.globals().map(|(_, v)| v)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, Modifier};

    #[test]
    fn four_significant_digits() {
        assert_eq!(sig4(0.0881632653), "0.08816");
        assert_eq!(sig4(74540.0), "74540");
        assert_eq!(sig4(184526.9), "1.845e5");
        assert_eq!(sig4(1.713), "1.713");
        assert_eq!(sig4(0.0), "0");
        assert_eq!(sig4(1.342e-5), "1.342e-5");
        assert_eq!(sig4(1.15e12), "1.150e12");
        assert_eq!(sig4(-2.5), "-2.500");
    }

    #[test]
    fn table_and_markdown_list_every_layer() {
        let a = Arch::Lenet300
            .graph(&[300, 100], Modifier::Dropout)
            .unwrap()
            .analyze();
        let table = a.to_table();
        let lines: Vec<&str> = table.lines().collect();
        // Header + 8 layers + blank + 4 globals.
        assert_eq!(lines.len(), 1 + 8 + 1 + 4, "{table}");
        assert!(lines[1].starts_with("dense1    dense"), "{table}");
        // Right-aligned numbers: every layer line ends at the same column as the header.
        let end = lines[0].chars().count();
        assert!(
            lines[1..9].iter().all(|l| l.chars().count() == end),
            "{table}"
        );
        assert!(lines[12].starts_with("GSC   74586"), "{table}");
        let md = a.to_markdown();
        assert_eq!(md.lines().filter(|l| l.starts_with("| dropout")).count(), 2);
        assert!(
            md.contains("| softmax | softmax | 10 | 74540 | 1.342e-5 |"),
            "{md}"
        );
    }
}
