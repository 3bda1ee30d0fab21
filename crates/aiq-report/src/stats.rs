//! Mean and Student-t confidence interval across replicates (the paper's "mean ± 95% CI").
//!
//! The t quantile is computed here rather than taken from a statistics crate: it is the only
//! distribution function the report needs, the well-known crate for it pulls a linear-algebra
//! library into the build, and the quantile is a few lines on top of the regularized
//! incomplete beta function (continued fraction, Numerical Recipes §6.4), checked below
//! against the closed forms for 1 and 2 degrees of freedom and against published tables.

use serde::Serialize;

/// Summary of one metric over the replicates (seeds) of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of replicates.
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (divisor n − 1); `None` for a single replicate.
    pub sd: Option<f64>,
    /// Half-width of the two-sided 95% interval, t(0.975, n − 1) · sd / √n; `None` for n = 1.
    pub ci95: Option<f64>,
}

impl Summary {
    /// Summarizes `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Some(Summary {
                n,
                mean,
                sd: None,
                ci95: None,
            });
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let sd = var.sqrt();
        let ci95 = student_t_quantile(0.975, (n - 1) as f64) * sd / (n as f64).sqrt();
        Some(Summary {
            n,
            mean,
            sd: Some(sd),
            ci95: Some(ci95),
        })
    }
}

/// The `p` quantile of Student's t distribution with `df` degrees of freedom (`0 < p < 1`,
/// `df > 0`), to about 1e-12 relative accuracy.
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    assert!(
        p > 0.0 && p < 1.0 && df > 0.0,
        "t quantile needs 0<p<1, df>0"
    );
    if p < 0.5 {
        return -student_t_quantile(1.0 - p, df);
    }
    if p == 0.5 {
        return 0.0;
    }
    // Bracket, then bisect: the CDF is monotone, and 200 halvings reach f64 resolution.
    let mut hi = 1.0;
    while student_t_cdf(hi, df) < p {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= f64::EPSILON * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// CDF of Student's t: for t ≥ 0, 1 − ½·I_{df/(df+t²)}(df/2, ½).
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    let x = df / (df + t * t);
    let tail = 0.5 * regularized_incomplete_beta(x, 0.5 * df, 0.5);
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// I_x(a, b), the regularized incomplete beta function.
fn regularized_incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    // The continued fraction converges fast for x < (a+1)/(a+b+2); use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

/// Modified Lentz evaluation of the incomplete beta continued fraction.
fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let nonzero = |v: f64| if v.abs() < TINY { TINY } else { v };
    // One Lentz step with coefficient `aa`: updates c and d, returns the factor for h.
    let step = |aa: f64, c: &mut f64, d: &mut f64| {
        *d = 1.0 / nonzero(1.0 + aa * *d);
        *c = nonzero(1.0 + aa / *c);
        *d * *c
    };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / nonzero(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..1000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        h *= step(m * (b - m) * x / ((qam + m2) * (a + m2)), &mut c, &mut d);
        let del = step(
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
            &mut c,
            &mut d,
        );
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut acc = COEF[0];
    for (i, c) in COEF.iter().enumerate().skip(1) {
        acc += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + acc.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1.0)
    }

    #[test]
    fn t_quantile_matches_closed_forms() {
        for p in [0.6, 0.9, 0.975, 0.995] {
            // df = 1 is the Cauchy distribution: tan(π(p − ½)).
            let cauchy = (std::f64::consts::PI * (p - 0.5)).tan();
            assert!(close(student_t_quantile(p, 1.0), cauchy, 1e-10), "p={p}");
            // df = 2: (2p − 1) / sqrt(2p(1 − p)).
            let two = (2.0 * p - 1.0) / (2.0 * p * (1.0 - p)).sqrt();
            assert!(close(student_t_quantile(p, 2.0), two, 1e-10), "p={p}");
        }
    }

    #[test]
    fn t_quantile_matches_published_table() {
        // Two-sided 95% critical values (t_{0.975}), as printed in statistics tables.
        let table = [
            (1.0, 12.706_204_736),
            (2.0, 4.302_652_730),
            (3.0, 3.182_446_305),
            (10.0, 2.228_138_852),
            (30.0, 2.042_272_456),
            (100.0, 1.983_971_519),
            (1000.0, 1.962_339_081),
        ];
        for (df, t) in table {
            let q = student_t_quantile(0.975, df);
            assert!(close(q, t, 1e-8), "df={df}: {q} vs {t}");
        }
        assert!(close(student_t_quantile(0.025, 10.0), -2.228_138_852, 1e-8));
    }

    #[test]
    fn summary_by_hand() {
        // Values 1, 2, 3, 4: mean 2.5, sd = sqrt(5/3), half-width t(0.975,3)·sd/2.
        let s = Summary::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.n, 4);
        assert!(close(s.mean, 2.5, 1e-15));
        let sd = (5.0f64 / 3.0).sqrt();
        assert!(close(s.sd.unwrap(), sd, 1e-14));
        assert!(close(s.ci95.unwrap(), 3.182_446_305 * sd / 2.0, 1e-8));
        let one = Summary::of(&[0.7]).unwrap();
        assert_eq!((one.mean, one.sd, one.ci95), (0.7, None, None));
        assert!(Summary::of(&[]).is_none());
        // Identical replicates: zero width.
        assert_eq!(Summary::of(&[0.5, 0.5, 0.5]).unwrap().ci95, Some(0.0));
    }
}
