//! The project's two architectures (the same as the training crate's) as layer graphs.

use std::fmt;
use std::str::FromStr;

use crate::graph::{Activation, Graph, LayerKind, PoolOp, Shape};
use crate::AlgebraError;

/// Largest hidden width accepted, as in training.
pub const MAX_WIDTH: usize = 4096;

/// The architectures of the paper being reproduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// 784 → dense N1 → ELU → dense N2 → ELU → dense 10 → softmax.
    Lenet300,
    /// 28×28×1 → conv 5×5 N1 → ELU → max pool 2×2/2 → conv 5×5 N2 → ELU → max pool 2×2/2
    /// → flatten → dense N3 → ELU → dense 10 → softmax.
    Lenet5,
}

impl Arch {
    /// Number of hidden widths the architecture takes.
    pub const fn width_count(self) -> usize {
        match self {
            Arch::Lenet300 => 2,
            Arch::Lenet5 => 3,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Arch::Lenet300 => "lenet300",
            Arch::Lenet5 => "lenet5",
        }
    }

    /// The layer graph for `widths` (checked: count and 1..=[`MAX_WIDTH`]), with the
    /// modifier's layer after every hidden layer's activation.
    pub fn graph(self, widths: &[usize], modifier: Modifier) -> Result<Graph, AlgebraError> {
        if widths.len() != self.width_count() {
            return Err(AlgebraError::WidthCount {
                arch: self.name(),
                expected: self.width_count(),
                found: widths.len(),
            });
        }
        if let Some(&w) = widths.iter().find(|w| !(1..=MAX_WIDTH).contains(*w)) {
            return Err(AlgebraError::WidthRange { found: w });
        }
        let elu = LayerKind::Activation(Activation::Elu);
        // Hidden layer i's activation, then the modifier's layer.
        let activate = |g: &mut Graph, i: usize| -> Result<(), AlgebraError> {
            g.push(&format!("elu{i}"), elu)?;
            match modifier {
                Modifier::None => {}
                Modifier::BatchNorm => {
                    g.push(&format!("batchnorm{i}"), LayerKind::BatchNorm)?;
                }
                Modifier::Dropout => {
                    g.push(&format!("dropout{i}"), LayerKind::Dropout { rate: 0.5 })?;
                }
            }
            Ok(())
        };
        let mut g;
        match self {
            Arch::Lenet300 => {
                g = Graph::new(Shape::flat(784))?;
                for (i, &w) in widths.iter().enumerate() {
                    g.push(&format!("dense{}", i + 1), LayerKind::Dense { units: w })?;
                    activate(&mut g, i + 1)?;
                }
                g.push("dense3", LayerKind::Dense { units: 10 })?;
            }
            Arch::Lenet5 => {
                g = Graph::new(Shape::new(1, 28, 28))?;
                for (i, &w) in widths[..2].iter().enumerate() {
                    let conv = LayerKind::Conv2d {
                        filters: w,
                        kernel: (5, 5),
                        stride: 1,
                        padding: 0,
                    };
                    g.push(&format!("conv{}", i + 1), conv)?;
                    activate(&mut g, i + 1)?;
                    let pool = LayerKind::Pool2d {
                        op: PoolOp::Max,
                        kernel: (2, 2),
                        stride: 2,
                    };
                    g.push(&format!("pool{}", i + 1), pool)?;
                }
                g.push("flatten", LayerKind::Flatten)?;
                g.push("dense3", LayerKind::Dense { units: widths[2] })?;
                activate(&mut g, 3)?;
                g.push("dense4", LayerKind::Dense { units: 10 })?;
            }
        }
        g.push("softmax", LayerKind::Activation(Activation::Softmax))?;
        Ok(g)
    }
}

impl FromStr for Arch {
    type Err = AlgebraError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lenet300" => Ok(Arch::Lenet300),
            "lenet5" => Ok(Arch::Lenet5),
            _ => Err(AlgebraError::Unknown {
                what: "architecture",
                expected: "lenet300 or lenet5",
                found: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A layer inserted after every hidden layer's activation. Both change nothing in the
/// algebra (§5.10–5.11); they are listed so the tables match the trained networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modifier {
    None,
    BatchNorm,
    /// Dropout with rate 0.5.
    Dropout,
}

impl Modifier {
    pub const fn name(self) -> &'static str {
        match self {
            Modifier::None => "none",
            Modifier::BatchNorm => "batchnorm",
            Modifier::Dropout => "dropout",
        }
    }
}

impl FromStr for Modifier {
    type Err = AlgebraError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Modifier::None),
            "batchnorm" => Ok(Modifier::BatchNorm),
            "dropout" => Ok(Modifier::Dropout),
            _ => Err(AlgebraError::Unknown {
                what: "modifier",
                expected: "none, batchnorm or dropout",
                found: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for Modifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses comma-separated widths such as `3,9,4` (the range is checked by [`Arch::graph`]).
pub fn parse_widths(s: &str) -> Result<Vec<usize>, AlgebraError> {
    s.split(',')
        .map(|part| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| AlgebraError::Widths {
                    found: s.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
    }

    #[test]
    fn lenet5_3_9_4_by_hand() {
        // conv1 28×28×1 → 24×24×3: p = 3·576/(25·784) = 0.0881632653, c = 3·log2 25 = 13.9315686
        // elu:                      p = 0.584,                         c = 1.713
        // pool1 → 12×12×3:          p = 3·144/(4·576) = 0.1875,        c = 3·2 = 6
        // conv2 → 8×8×9:            p = 9·64/(25·144) = 0.16,          c = 9·log2 25 = 41.7947057
        // elu
        // pool2 → 4×4×9:            p = 9·16/(4·64) = 0.5625,          c = 9·2 = 18
        // flatten (transparent)
        // dense3 144 → 4:           p = 4/144,                         c = log2 576 = 9.169925
        // elu
        // dense4 4 → 10:            p = 10/4 = 2.5,                    c = log2 40 = 5.3219281
        // softmax:                  p = 1.342e-5,                      c = 74540
        // GCIP = 0.0881632653·0.1875·0.16·0.5625·(4/144)·2.5·0.584³·1.342e-5
        //      = 0.0881632653·0.1875 = 0.0165306122; ·0.16 = 0.00264489796; ·0.5625
        //      = 0.00148775510; ·(4/144) = 4.13265306e-5; ·2.5 = 1.03316327e-4;
        //      ·0.584³ (= 0.199176704) = 2.05782061e-5; ·1.342e-5 = 2.7615952e-10
        // GSC  = 13.9315686 + 6 + 41.7947057 + 18 + 9.169925 + 5.3219281 + 3·1.713 + 74540
        //      = 74639.357127…
        let g = Arch::Lenet5.graph(&[3, 9, 4], Modifier::None).unwrap();
        let a = g.analyze();
        let names: Vec<&str> = a.layers.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "conv1", "elu1", "pool1", "conv2", "elu2", "pool2", "flatten", "dense3", "elu3",
                "dense4", "softmax"
            ]
        );
        let log2_25 = 4.643_856_189_774_724;
        let p = [
            3.0 * 576.0 / (25.0 * 784.0),
            0.584,
            0.1875,
            0.16,
            0.584,
            0.5625,
            1.0,
            4.0 / 144.0,
            0.584,
            2.5,
            1.342e-5,
        ];
        let c = [
            3.0 * log2_25,
            1.713,
            6.0,
            9.0 * log2_25,
            1.713,
            18.0,
            0.0,
            9.169_925_001_442_312,
            1.713,
            5.321_928_094_887_363,
            74540.0,
        ];
        for (row, (p, c)) in a.layers.iter().zip(p.iter().zip(c)) {
            assert!(close(row.intrinsic_power, *p), "{row:?} p {p}");
            assert!(
                (row.complexity - c).abs() <= 1e-9 * c.abs(),
                "{row:?} c {c}"
            );
        }
        assert!((a.gcip / 2.761_595_2e-10 - 1.0).abs() < 1e-7, "{}", a.gcip);
        let gcc: f64 = c.iter().filter(|c| **c != 0.0).product();
        assert!(close(a.gcc, gcc), "{} vs {gcc}", a.gcc);
        assert!((a.gsc - 74_639.357_127).abs() < 1e-5, "{}", a.gsc);
        assert!(close(a.gwc, a.gcc * a.gsc));
        assert_eq!(g.shape(g.last()), Shape::flat(10));
    }

    #[test]
    fn lenet300_300_100_by_hand() {
        // 784 → 300 → 100 → 10: p = (300/784)(100/300)(10/100) = 10/784 before activations;
        // GCIP = 10/784 · 0.584² · 1.342e-5 = 0.0127551020·0.341056·1.342e-5 = 5.837974e-8
        // c: log2(235200) = 17.8435285, log2(30000) = 14.8726749, log2(1000) = 9.9657843
        // GSC = 17.8435285 + 14.8726749 + 9.9657843 + 2·1.713 + 74540 = 74586.1079877
        let a = Arch::Lenet300
            .graph(&[300, 100], Modifier::None)
            .unwrap()
            .analyze();
        assert_eq!(a.layers.len(), 6);
        assert!((a.gcip / 5.837_974e-8 - 1.0).abs() < 1e-6, "{}", a.gcip);
        let gcc = 17.843_528_534_611_09
            * 1.713
            * 14.872_674_880_270_605
            * 1.713
            * 9.965_784_284_662_087
            * 74540.0;
        assert!(close(a.gcc, gcc), "{} vs {gcc}", a.gcc);
        assert!((a.gsc - 74_586.107_987_7).abs() < 1e-6, "{}", a.gsc);
    }

    #[test]
    fn modifiers_add_rows_but_change_no_global_value() {
        for arch in [Arch::Lenet300, Arch::Lenet5] {
            let widths = &[5, 7, 11][..arch.width_count()];
            let plain = arch.graph(widths, Modifier::None).unwrap().analyze();
            for m in [Modifier::BatchNorm, Modifier::Dropout] {
                let a = arch.graph(widths, m).unwrap().analyze();
                assert_eq!(a.layers.len(), plain.layers.len() + arch.width_count());
                assert_eq!(
                    (a.gcc, a.gcip, a.gsc, a.gwc),
                    (plain.gcc, plain.gcip, plain.gsc, plain.gwc)
                );
                let extra: Vec<_> = a.layers.iter().filter(|r| r.kind == m.name()).collect();
                assert_eq!(extra.len(), arch.width_count());
                // Each sits right after an activation and carries its cumulative values.
                for r in extra {
                    let i = a.layers.iter().position(|x| x.name == r.name).unwrap();
                    assert_eq!(a.layers[i - 1].kind, "elu");
                    assert_eq!(
                        a.layers[i - 1].cumulative_complexity,
                        r.cumulative_complexity
                    );
                }
            }
        }
    }

    #[test]
    fn widths_and_names_are_checked() {
        let e = Arch::Lenet5
            .graph(&[3, 9], Modifier::None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lenet5") && e.contains('3') && e.contains('2'),
            "{e}"
        );
        let e = Arch::Lenet300
            .graph(&[0, 9], Modifier::None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1..=4096") && e.contains('0'), "{e}");
        assert!(Arch::Lenet300.graph(&[4097, 9], Modifier::None).is_err());
        assert!(Arch::Lenet300.graph(&[4096, 1], Modifier::None).is_ok());
        assert_eq!(parse_widths("3, 9,4").unwrap(), [3, 9, 4]);
        for bad in ["", "3,,4", "3,x", "-1,2", "3.5"] {
            let e = parse_widths(bad).unwrap_err().to_string();
            assert!(e.contains("comma-separated"), "{bad}: {e}");
        }
        assert_eq!("lenet5".parse::<Arch>().unwrap(), Arch::Lenet5);
        assert!("lenet7"
            .parse::<Arch>()
            .unwrap_err()
            .to_string()
            .contains("lenet7"));
        assert_eq!("dropout".parse::<Modifier>().unwrap(), Modifier::Dropout);
        assert!("bn".parse::<Modifier>().is_err());
    }
}
