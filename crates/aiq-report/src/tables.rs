//! The paper's Tables 1–4 as Markdown, from the aggregated groups.
//!
//! Conventions follow the paper: accuracy in %, aIQ ×100, η_N in %, each as mean ± half-width
//! of the 95% Student-t interval across seeds; the best value of a column (or of a block in
//! Table 2) is bold; fold decrease = parameters of the most accurate net / this net's.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::aggregate::{widths_label, Group};

/// Display name of an architecture key.
pub fn arch_name(arch: &str) -> &str {
    match arch {
        "lenet300" => "LeNet-300-100",
        "lenet5" => "LeNet-5",
        other => other,
    }
}

fn modifier_name(m: &str) -> &str {
    match m {
        "none" => "None",
        "batchnorm" => "BatchNorm",
        "dropout" => "Dropout",
        other => other,
    }
}

/// Paper order for modifiers, unknown ones after.
fn modifier_rank(m: &str) -> (usize, String) {
    let r = ["none", "batchnorm", "dropout"]
        .iter()
        .position(|x| *x == m)
        .unwrap_or(3);
    (r, m.to_string())
}

/// `mean ± ci` of a metric scaled by `scale`, two decimals; `–` when absent.
fn cell(g: Option<&Group>, metric: &str, scale: f64) -> String {
    match g.and_then(|g| g.metric(metric)) {
        None => "–".to_string(),
        Some(s) => match s.ci95 {
            Some(ci) => format!("{:.2} ± {:.2}", s.mean * scale, ci * scale),
            None => format!("{:.2}", s.mean * scale),
        },
    }
}

fn bold(s: String, yes: bool) -> String {
    if yes && s != "–" {
        format!("**{s}**")
    } else {
        s
    }
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The paper's "(fold decrease)": reference / this, one decimal with thousands separators,
/// exactly `1×` for the reference itself.
pub fn fold(reference: u64, this: u64) -> String {
    if reference == this {
        return "1×".to_string();
    }
    let f = reference as f64 / this.max(1) as f64;
    let tenths = (f * 10.0).round() as u64;
    format!("{}.{}×", thousands(tenths / 10), tenths % 10)
}

fn is_max<'a>(candidates: impl IntoIterator<Item = &'a Group>, g: &Group, metric: &str) -> bool {
    let best = candidates
        .into_iter()
        .map(|c| c.mean(metric))
        .filter(|v| !v.is_nan())
        .fold(f64::NEG_INFINITY, f64::max);
    g.mean(metric) == best
}

/// Groups sorted by a metric's mean, best first (ties by key, so the order is stable).
fn top<'a>(groups: &[&'a Group], metric: &str, k: usize) -> Vec<&'a Group> {
    let mut v: Vec<&Group> = groups
        .iter()
        .copied()
        .filter(|g| !g.mean(metric).is_nan())
        .collect();
    v.sort_by(|a, b| {
        b.mean(metric)
            .total_cmp(&a.mean(metric))
            .then_with(|| a.key.cmp(&b.key))
    });
    v.truncate(k);
    v
}

fn arches(groups: &[Group]) -> Vec<String> {
    let mut a: Vec<String> = groups
        .iter()
        .map(|g| g.key.arch.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // LeNet-300-100 before LeNet-5, as in the paper.
    a.sort_by_key(|x| (x != "lenet300", x != "lenet5", x.clone()));
    a
}

fn layer_header(n: usize) -> String {
    (1..=n)
        .map(|i| format!("Layer {i}"))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn widths_cells(widths: &[u32]) -> String {
    widths_label(widths, " | ")
}

fn n_note(groups: &[&Group]) -> String {
    let ns: BTreeSet<usize> = groups.iter().map(|g| g.seeds.len()).collect();
    match (ns.first(), ns.last()) {
        (Some(a), Some(b)) if a == b => format!("n = {a}"),
        (Some(a), Some(b)) => format!("n = {a}–{b}"),
        _ => "n = 0".to_string(),
    }
}

const FOOT: &str = "Mean ± half-width of the 95% Student-t interval across seeds; aIQ ×100; \
measured on the test split.";

/// All four tables, each under its own heading, with a line saying why a table is absent.
pub fn render_tables(groups: &[Group]) -> String {
    let mut out = String::new();
    out.push_str(&table1(groups));
    out.push_str(&table2(groups));
    out.push_str(&table3(groups));
    out.push_str(&table4(groups));
    out
}

/// Table 1: per architecture, the top three by test accuracy and by aIQ (no modifier, true
/// labels), with parameters and fold decrease against the most accurate.
pub fn table1(groups: &[Group]) -> String {
    let mut out = String::from("## Table 1. The top three architectures by accuracy and aIQ\n\n");
    let mut any = false;
    for arch in arches(groups) {
        let cands: Vec<&Group> = groups
            .iter()
            .filter(|g| {
                g.key.arch == arch
                    && g.key.is_primary()
                    && g.key.modifier == "none"
                    && g.key.randomize_pct == 0
            })
            .collect();
        let by_acc = top(&cands, "accuracy", 3);
        let by_aiq = top(&cands, "aiq", 3);
        let Some(reference) = by_acc.first() else {
            continue;
        };
        any = true;
        let nl = reference.key.widths.len();
        let beta = reference.beta;
        let _ = writeln!(out, "**{}** ({})\n", arch_name(&arch), n_note(&cands));
        let _ = writeln!(
            out,
            "| {} | Test accuracy (%) | aIQ (β = {beta}) | Parameters (fold decrease) |",
            layer_header(nl)
        );
        let _ = writeln!(out, "|{}", "---|".repeat(nl + 3));
        for g in by_acc.iter().chain(by_aiq.iter()) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} ({}) |",
                widths_cells(&g.key.widths),
                bold(
                    cell(Some(g), "accuracy", 100.0),
                    is_max(cands.iter().copied(), g, "accuracy")
                ),
                bold(
                    cell(Some(g), "aiq", 100.0),
                    is_max(cands.iter().copied(), g, "aiq")
                ),
                thousands(g.parameters),
                fold(reference.parameters, g.parameters)
            );
        }
        out.push('\n');
    }
    if any {
        let _ = writeln!(out, "{FOOT}\n");
    } else {
        out.push_str("No runs without modifier on true labels.\n\n");
    }
    out
}

/// Table 2: per architecture, the best net by aIQ under each modifier, shown under every
/// modifier (accuracy, aIQ, η_N); the best of each block is bold.
pub fn table2(groups: &[Group]) -> String {
    let mut out = String::from(
        "## Table 2. The top architectures by aIQ with batch normalization, dropout or neither\n\n",
    );
    let mut any = false;
    for arch in arches(groups) {
        let cands: Vec<&Group> = groups
            .iter()
            .filter(|g| g.key.arch == arch && g.key.is_primary() && g.key.randomize_pct == 0)
            .collect();
        let mut modifiers: Vec<String> = cands
            .iter()
            .map(|g| g.key.modifier.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        modifiers.sort_by_key(|m| modifier_rank(m));
        if modifiers.len() < 2 {
            continue;
        }
        any = true;
        let mut picks: Vec<Vec<u32>> = Vec::new();
        for m in &modifiers {
            let under: Vec<&Group> = cands
                .iter()
                .copied()
                .filter(|g| &g.key.modifier == m)
                .collect();
            if let Some(best) = top(&under, "aiq", 1).first() {
                if !picks.contains(&best.key.widths) {
                    picks.push(best.key.widths.clone());
                }
            }
        }
        let nl = picks.first().map_or(0, Vec::len);
        let _ = writeln!(out, "**{}** ({})\n", arch_name(&arch), n_note(&cands));
        let _ = writeln!(
            out,
            "| {} | Modifier | Test accuracy (%) | aIQ (β = {}) | η_N (%) |",
            layer_header(nl),
            cands[0].beta
        );
        let _ = writeln!(out, "|{}", "---|".repeat(nl + 4));
        for widths in &picks {
            let block: Vec<&Group> = cands
                .iter()
                .copied()
                .filter(|g| &g.key.widths == widths)
                .collect();
            for (i, m) in modifiers.iter().enumerate() {
                let g = block.iter().copied().find(|g| &g.key.modifier == m);
                let first = if i == 0 {
                    widths_cells(widths)
                } else {
                    vec![""; nl].join(" | ")
                };
                let b = |metric: &str| g.is_some_and(|g| is_max(block.iter().copied(), g, metric));
                let _ = writeln!(
                    out,
                    "| {first} | {} | {} | {} | {} |",
                    modifier_name(m),
                    bold(cell(g, "accuracy", 100.0), b("accuracy")),
                    bold(cell(g, "aiq", 100.0), b("aiq")),
                    bold(
                        cell(g, "network_efficiency", 100.0),
                        b("network_efficiency")
                    ),
                );
            }
        }
        out.push('\n');
    }
    if any {
        let _ = writeln!(out, "{FOOT}\n");
    } else {
        out.push_str("No architecture was run with more than one modifier.\n\n");
    }
    out
}

/// The nets Tables 3 and 4 follow for one architecture and modifier: the most accurate and
/// the best by aIQ when trained on true labels (deduplicated).
fn picks_on_true_labels(cands: &[&Group]) -> Vec<Vec<u32>> {
    let base: Vec<&Group> = cands
        .iter()
        .copied()
        .filter(|g| g.key.randomize_pct == 0)
        .collect();
    let mut picks: Vec<Vec<u32>> = Vec::new();
    for metric in ["accuracy", "aiq"] {
        if let Some(g) = top(&base, metric, 1).first() {
            if !picks.contains(&g.key.widths) {
                picks.push(g.key.widths.clone());
            }
        }
    }
    picks
}

/// (arch, modifier) pairs in paper order.
fn arch_modifiers(groups: &[&Group]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = groups
        .iter()
        .map(|g| (g.key.arch.clone(), g.key.modifier.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    v.sort_by_key(|(a, m)| (a != "lenet300", a != "lenet5", a.clone(), modifier_rank(m)));
    v
}

/// Table 3: test accuracy of the most accurate and the best-aIQ nets (chosen on true labels)
/// when trained with 0–100% of the labels randomized; one block per architecture and modifier
/// that has randomized runs.
pub fn table3(groups: &[Group]) -> String {
    let mut out = String::from("## Table 3. Accuracy under label randomization\n\n");
    let primary: Vec<&Group> = groups.iter().filter(|g| g.key.is_primary()).collect();
    let mut any = false;
    for (arch, modifier) in arch_modifiers(&primary) {
        let cands: Vec<&Group> = primary
            .iter()
            .copied()
            .filter(|g| g.key.arch == arch && g.key.modifier == modifier)
            .collect();
        let levels: BTreeSet<u32> = cands.iter().map(|g| g.key.randomize_pct).collect();
        if levels.iter().all(|&r| r == 0) || !levels.contains(&0) {
            continue;
        }
        let picks = picks_on_true_labels(&cands);
        let nl = picks.first().map_or(0, Vec::len);
        any = true;
        let _ = writeln!(
            out,
            "**{}, modifier {}** ({})\n",
            arch_name(&arch),
            modifier_name(&modifier),
            n_note(&cands)
        );
        let cols: Vec<String> = levels.iter().map(|r| format!("{r}% Rand")).collect();
        let _ = writeln!(out, "| {} | {} |", layer_header(nl), cols.join(" | "));
        let _ = writeln!(out, "|{}{}", "---|".repeat(nl), "---|".repeat(levels.len()));
        for widths in &picks {
            let cells: Vec<String> = levels
                .iter()
                .map(|&r| {
                    let g = cands
                        .iter()
                        .copied()
                        .find(|g| &g.key.widths == widths && g.key.randomize_pct == r);
                    cell(g, "accuracy", 100.0)
                })
                .collect();
            let _ = writeln!(out, "| {} | {} |", widths_cells(widths), cells.join(" | "));
        }
        out.push('\n');
    }
    if any {
        out.push_str(
            "Test accuracy (%), mean ± 95% CI; rows are the most accurate and the best-aIQ \
             nets on true labels; % Rand is the share of training labels randomized.\n\n",
        );
    } else {
        out.push_str("No runs with randomized labels (and the same nets on true labels).\n\n");
    }
    out
}

/// Table 4: the same nets trained on MNIST, measured on MNIST and on EMNIST digits, at each
/// randomization level that has EMNIST measurements.
pub fn table4(groups: &[Group]) -> String {
    let mut out = String::from("## Table 4. Generalization from MNIST to EMNIST digits\n\n");
    let emnist: Vec<&Group> = groups
        .iter()
        .filter(|g| g.key.trained_on == "mnist" && g.key.measured_on == "emnist-digits")
        .collect();
    let primary: Vec<&Group> = groups
        .iter()
        .filter(|g| g.key.is_primary() && g.key.trained_on == "mnist")
        .collect();
    let mut any = false;
    for (arch, modifier) in arch_modifiers(&emnist) {
        let cands: Vec<&Group> = primary
            .iter()
            .copied()
            .filter(|g| g.key.arch == arch && g.key.modifier == modifier)
            .collect();
        let on_emnist: Vec<&Group> = emnist
            .iter()
            .copied()
            .filter(|g| g.key.arch == arch && g.key.modifier == modifier)
            .collect();
        let levels: BTreeSet<u32> = on_emnist.iter().map(|g| g.key.randomize_pct).collect();
        let picks = picks_on_true_labels(&cands);
        if picks.is_empty() {
            continue;
        }
        any = true;
        let nl = picks[0].len();
        let _ = writeln!(
            out,
            "**{}, modifier {}** ({})\n",
            arch_name(&arch),
            modifier_name(&modifier),
            n_note(&on_emnist)
        );
        let mut cols: Vec<String> = levels.iter().map(|r| format!("MNIST {r}% Rand")).collect();
        cols.extend(levels.iter().map(|r| format!("EMNIST {r}% Rand")));
        let _ = writeln!(out, "| {} | {} |", layer_header(nl), cols.join(" | "));
        let _ = writeln!(out, "|{}{}", "---|".repeat(nl), "---|".repeat(cols.len()));
        for widths in &picks {
            fn find<'g>(set: &[&'g Group], widths: &[u32], r: u32) -> Option<&'g Group> {
                set.iter()
                    .copied()
                    .find(|g| g.key.widths == widths && g.key.randomize_pct == r)
            }
            let mut cells: Vec<String> = levels
                .iter()
                .map(|&r| cell(find(&cands, widths, r), "accuracy", 100.0))
                .collect();
            cells.extend(
                levels
                    .iter()
                    .map(|&r| cell(find(&on_emnist, widths, r), "accuracy", 100.0)),
            );
            let _ = writeln!(out, "| {} | {} |", widths_cells(widths), cells.join(" | "));
        }
        out.push('\n');
    }
    if any {
        out.push_str(
            "Accuracy (%), mean ± 95% CI, of nets trained on MNIST (rows: most accurate and \
             best aIQ on true labels), measured on the MNIST and EMNIST-digits test splits.\n\n",
        );
    } else {
        out.push_str("No EMNIST measurements (score-emnist.json); see docs/sweeps.md.\n\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::aggregate;
    use crate::aggregate::tests::run;

    #[test]
    fn number_formats() {
        assert_eq!(thousands(43_030_538), "43,030,538");
        assert_eq!(thousands(923), "923");
        assert_eq!(thousands(1000), "1,000");
        // The paper's Table 1: 242,826 / 8733 = 27.8×, 242,826 / 474,378 = 0.5×.
        assert_eq!(fold(242_826, 8_733), "27.8×");
        assert_eq!(fold(242_826, 474_378), "0.5×");
        assert_eq!(fold(43_030_538, 1_392), "30,912.7×");
        assert_eq!(fold(5, 5), "1×");
    }

    fn sample() -> Vec<Group> {
        let mut runs = Vec::new();
        for seed in 1..=3 {
            let s = seed as f64 * 0.01;
            runs.push(run(&[64, 64], "none", 0.0, seed, 0.97 + s, 0.2));
            runs.push(run(&[8, 4], "none", 0.0, seed, 0.90 + s, 0.8));
            runs.push(run(&[2, 2], "none", 0.0, seed, 0.50 + s, 0.9));
            runs.push(run(&[8, 4], "batchnorm", 0.0, seed, 0.92 + s, 0.9));
            runs.push(run(&[64, 64], "batchnorm", 0.0, seed, 0.98 + s, 0.3));
            runs.push(run(&[8, 4], "batchnorm", 0.5, seed, 0.85 + s, 0.8));
            runs.push(run(&[64, 64], "batchnorm", 0.5, seed, 0.40 + s, 0.3));
        }
        aggregate(&runs).unwrap()
    }

    #[test]
    fn table1_orders_and_bolds() {
        let t = table1(&sample());
        let rows: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("| ") && !l.contains("Layer"))
            .collect();
        assert_eq!(rows.len(), 6, "{t}");
        assert!(rows[0].starts_with("| 64 | 64 | **99.00 ± "), "{t}");
        assert!(rows[0].ends_with("(1×) |"), "{t}");
        assert!(rows[1].starts_with("| 8 | 4 | 92.00 ± "), "{t}");
        // Best aIQ: 8x4 (acc 0.92, η 0.8) beats 64x64 (0.99, 0.2) and 2x2 (0.52, 0.9).
        assert!(
            rows[3].starts_with("| 8 | 4 |") && rows[3].contains("| **"),
            "{t}"
        );
        // 8x4 has 1200 parameters vs 12800: 10.7× fold decrease.
        assert!(rows[3].ends_with("1,200 (10.7×) |"), "{t}");
        assert!(t.contains("n = 3"));
        assert_columns(&t);
    }

    /// Every row of every Markdown table has as many cells as its header.
    fn assert_columns(md: &str) {
        let mut want = None;
        for line in md.lines() {
            if !line.starts_with('|') {
                want = None;
                continue;
            }
            let n = line.matches('|').count();
            assert_eq!(*want.get_or_insert(n), n, "{line}\n{md}");
        }
    }

    #[test]
    fn table2_blocks_per_best_net() {
        let t = table2(&sample());
        // Best by aIQ is 8x4 under both modifiers: one block with None and BatchNorm rows.
        assert!(t.contains("| 8 | 4 | None |"), "{t}");
        assert!(t.contains("|  |  | BatchNorm | **94.00 ± "), "{t}");
        assert_eq!(t.matches("| None |").count(), 1, "{t}");
        assert_columns(&t);
    }

    #[test]
    fn table3_follows_nets_across_randomization() {
        let t = table3(&sample());
        assert!(t.contains("modifier BatchNorm"), "{t}");
        assert!(!t.contains("modifier None"), "{t}");
        assert!(
            t.contains("| Layer 1 | Layer 2 | 0% Rand | 50% Rand |"),
            "{t}"
        );
        assert!(
            t.contains("| 64 | 64 | 100.00 ± ") || t.contains("| 64 | 64 | 99.00"),
            "{t}"
        );
        assert!(t.contains("| 8 | 4 | 94.00 ± 2.48 | 87.00 ± 2.48 |"), "{t}");
        assert_columns(&t);
        let t4 = table4(&sample());
        assert!(t4.contains("No EMNIST measurements"), "{t4}");
    }

    #[test]
    fn table4_pairs_mnist_and_emnist() {
        let mut runs = Vec::new();
        for seed in 1..=2 {
            let s = seed as f64 * 0.01;
            for (r, acc) in [(0.0, 0.9), (0.75, 0.6)] {
                runs.push(run(&[64, 64], "none", r, seed, acc + s, 0.2));
                runs.push(run(&[8, 4], "none", r, seed, acc - 0.1 + s, 0.9));
                let mut e = run(&[64, 64], "none", r, seed, acc - 0.2 + s, 0.2);
                e.score.dataset = "emnist-digits".into();
                runs.push(e);
                let mut e = run(&[8, 4], "none", r, seed, acc - 0.4 + s, 0.9);
                e.score.dataset = "emnist-digits".into();
                runs.push(e);
            }
        }
        let t = table4(&aggregate(&runs).unwrap());
        assert!(
            t.contains("| Layer 1 | Layer 2 | MNIST 0% Rand | MNIST 75% Rand | EMNIST 0% Rand | EMNIST 75% Rand |"),
            "{t}"
        );
        // Mean of 0.91, 0.92 etc.; half-width 12.706·0.01/2 = 6.35 (in %).
        assert!(
            t.contains("| 64 | 64 | 91.50 ± 6.35 | 61.50 ± 6.35 | 71.50 ± 6.35 | 41.50 ± 6.35 |"),
            "{t}"
        );
        assert!(
            t.contains("| 8 | 4 | 81.50 ± 6.35 | 51.50 ± 6.35 | 51.50 ± 6.35 | 21.50 ± 6.35 |"),
            "{t}"
        );
        assert_columns(&t);
        // The EMNIST groups are not primary: Table 1 only sees the MNIST measurements.
        let t1 = table1(&aggregate(&runs).unwrap());
        assert!(!t1.contains("71.50"), "{t1}");
    }
}
