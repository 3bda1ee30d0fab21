//! Figure 1: heatmaps of a metric's mean over N1 × N2 for two-hidden-layer nets, each cell
//! annotated with mean ± 95% CI, as PNG (plotters' bitmap backend, encoded with `png`) and SVG.
//!
//! Text in the PNG needs a font file: plotters' `ab_glyph` backend is pure Rust and reads a
//! TrueType file we hand it, so no fontconfig or FreeType is needed at run time. The font is
//! looked up in [`FONT_CANDIDATES`] (Debian's `fonts-dejavu-core`, which
//! `scripts/sweep-deps.sh` installs) unless a path is given. The SVG names a font family and
//! needs no font file.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use crate::aggregate::Group;
use crate::tables::arch_name;
use crate::ReportError;

/// Font files tried in order when none is given (Debian/Ubuntu, Fedora, Arch, macOS paths).
pub const FONT_CANDIDATES: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
];

const FAMILY: &str = "sans-serif";

static FONT: OnceLock<Result<String, String>> = OnceLock::new();

/// Registers the font used for PNG text (once per process); returns the file used.
pub fn init_font(path: Option<&std::path::Path>) -> Result<String, ReportError> {
    let result = FONT.get_or_init(|| {
        let candidates: Vec<std::path::PathBuf> = match path {
            Some(p) => vec![p.to_path_buf()],
            None => FONT_CANDIDATES.iter().map(Into::into).collect(),
        };
        for c in &candidates {
            let Ok(bytes) = std::fs::read(c) else {
                continue;
            };
            // The font registry keeps 'static bytes; one font per process, so leaking is fine.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return match plotters::style::register_font(FAMILY, FontStyle::Normal, bytes) {
                Ok(()) => Ok(c.display().to_string()),
                Err(_) => Err(format!("{}: not a TrueType/OpenType font", c.display())),
            };
        }
        Err(match path {
            Some(p) => format!("{}: cannot read the font file", p.display()),
            None => format!(
                "no font for the PNG figures (tried {}); install Debian's fonts-dejavu-core \
                 (scripts/sweep-deps.sh), pass --font FILE, or --no-figures",
                FONT_CANDIDATES.join(", ")
            ),
        })
    });
    result
        .clone()
        .map_err(|detail| ReportError::Font { detail })
}

/// One cell: (mean, half-width of the 95% interval), `None` when the net was not run.
pub type Cell = Option<(f64, Option<f64>)>;

/// One heatmap: a metric's summary for each (N1, N2) cell.
#[derive(Debug, Clone)]
pub struct Heatmap {
    /// The panel, e.g. `(a) Test accuracy`.
    pub title: String,
    /// What was run: architecture, modifier, randomization, data, replicates.
    pub subtitle: String,
    /// File stem, e.g. `fig1-lenet300-none-r0-accuracy`.
    pub stem: String,
    pub xs: Vec<u32>,
    pub ys: Vec<u32>,
    /// `cells[iy][ix]` = (mean, ci95) or `None` when the configuration was not run.
    pub cells: Vec<Vec<Cell>>,
}

/// The Figure 1 panels (accuracy, aIQ, η of each layer) for every two-layer architecture,
/// modifier and randomization level measured on its own test split.
pub fn heatmaps(groups: &[Group]) -> Vec<Heatmap> {
    use std::collections::BTreeSet;
    let two: Vec<&Group> = groups
        .iter()
        .filter(|g| g.key.is_primary() && g.key.widths.len() == 2)
        .collect();
    let sets: BTreeSet<(String, String, u32, String)> = two
        .iter()
        .map(|g| {
            (
                g.key.arch.clone(),
                g.key.modifier.clone(),
                g.key.randomize_pct,
                g.key.trained_on.clone(),
            )
        })
        .collect();
    let panels = [
        ("accuracy", "a", "Test accuracy"),
        ("aiq", "b", "aIQ"),
        ("eta1", "c", "Neural efficiency of hidden layer 1 (η1)"),
        ("eta2", "d", "Neural efficiency of hidden layer 2 (η2)"),
    ];
    let mut out = Vec::new();
    for (arch, modifier, r, data) in sets {
        let members: Vec<&Group> = two
            .iter()
            .copied()
            .filter(|g| {
                g.key.arch == arch
                    && g.key.modifier == modifier
                    && g.key.randomize_pct == r
                    && g.key.trained_on == data
            })
            .collect();
        let xs: Vec<u32> = members
            .iter()
            .map(|g| g.key.widths[0])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let ys: Vec<u32> = members
            .iter()
            .map(|g| g.key.widths[1])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let data_tag = if data == "mnist" {
            String::new()
        } else {
            format!("-{data}")
        };
        for (metric, letter, label) in panels {
            let cells = ys
                .iter()
                .map(|&y| {
                    xs.iter()
                        .map(|&x| {
                            members
                                .iter()
                                .find(|g| g.key.widths == [x, y])
                                .and_then(|g| g.metric(metric))
                                .map(|s| (s.mean, s.ci95))
                        })
                        .collect()
                })
                .collect();
            let n = members.iter().map(|g| g.seeds.len()).max().unwrap_or(0);
            out.push(Heatmap {
                title: format!("({letter}) {label}"),
                subtitle: format!(
                    "{}, modifier {modifier}, {r}% of labels randomized, {data} test split, \
                     mean ± 95% CI of up to {n} seeds",
                    arch_name(&arch)
                ),
                stem: format!("fig1-{arch}{data_tag}-{modifier}-r{r}-{metric}"),
                xs: xs.clone(),
                ys: ys.clone(),
                cells,
            });
        }
    }
    out
}

// Layout in pixels.
const CELL: i32 = 64;
const LEFT: i32 = 80;
const TOP: i32 = 72;
const BOTTOM: i32 = 64;
const RIGHT: i32 = 110;

impl Heatmap {
    /// Image size in pixels.
    pub fn size(&self) -> (u32, u32) {
        let w = LEFT + CELL * self.xs.len() as i32 + RIGHT;
        let h = TOP + CELL * self.ys.len() as i32 + BOTTOM;
        // Leave room for the title on small grids.
        (w.max(620) as u32, h as u32)
    }

    fn range(&self) -> (f64, f64) {
        let vals = self.cells.iter().flatten().flatten().map(|c| c.0);
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if lo.is_finite() {
            (lo, hi)
        } else {
            (0.0, 1.0)
        }
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let (w, _) = self.size();
        let style = |size: u32, h: HPos, v: VPos| {
            TextStyle::from((FAMILY, size).into_font())
                .color(&BLACK)
                .pos(Pos::new(h, v))
        };
        root.draw(&Text::new(
            self.title.clone(),
            (w as i32 / 2, 16),
            style(15, HPos::Center, VPos::Center),
        ))?;
        root.draw(&Text::new(
            self.subtitle.clone(),
            (w as i32 / 2, 36),
            style(11, HPos::Center, VPos::Center),
        ))?;
        let (lo, hi) = self.range();
        let norm = |v: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
        let ny = self.ys.len() as i32;
        for (iy, row) in self.cells.iter().enumerate() {
            // N2 grows upwards: row 0 at the bottom.
            let y0 = TOP + CELL * (ny - 1 - iy as i32);
            for (ix, c) in row.iter().enumerate() {
                let x0 = LEFT + CELL * ix as i32;
                let (fill, ink) = match c {
                    Some((m, _)) => {
                        let col = viridis(norm(*m));
                        let luminance =
                            0.299 * col.0 as f64 + 0.587 * col.1 as f64 + 0.114 * col.2 as f64;
                        (col, if luminance < 140.0 { WHITE } else { BLACK })
                    }
                    None => (RGBColor(220, 220, 220), BLACK),
                };
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + CELL, y0 + CELL)],
                    fill.filled(),
                ))?;
                let (top_line, bottom_line) = match c {
                    Some((m, Some(ci))) => (format!("{m:.3}"), format!("±{ci:.3}")),
                    Some((m, None)) => (format!("{m:.3}"), String::new()),
                    None => ("–".to_string(), String::new()),
                };
                let cx = x0 + CELL / 2;
                root.draw(&Text::new(
                    top_line,
                    (cx, y0 + CELL / 2 - 8),
                    style(13, HPos::Center, VPos::Center).color(&ink),
                ))?;
                root.draw(&Text::new(
                    bottom_line,
                    (cx, y0 + CELL / 2 + 10),
                    style(11, HPos::Center, VPos::Center).color(&ink),
                ))?;
            }
        }
        // Axes: tick labels are the widths, one per cell.
        let grid_bottom = TOP + CELL * ny;
        for (ix, x) in self.xs.iter().enumerate() {
            root.draw(&Text::new(
                x.to_string(),
                (LEFT + CELL * ix as i32 + CELL / 2, grid_bottom + 12),
                style(13, HPos::Center, VPos::Center),
            ))?;
        }
        root.draw(&Text::new(
            "N1 (neurons in hidden layer 1)",
            (LEFT + CELL * self.xs.len() as i32 / 2, grid_bottom + 38),
            style(14, HPos::Center, VPos::Center),
        ))?;
        for (iy, y) in self.ys.iter().enumerate() {
            root.draw(&Text::new(
                y.to_string(),
                (LEFT - 8, TOP + CELL * (ny - 1 - iy as i32) + CELL / 2),
                style(13, HPos::Right, VPos::Center),
            ))?;
        }
        root.draw(&Text::new(
            "N2",
            (LEFT - 8, TOP - 10),
            style(14, HPos::Right, VPos::Center),
        ))?;
        // Colour bar with min, middle and max.
        let bx = LEFT + CELL * self.xs.len() as i32 + 20;
        let bh = (CELL * ny).max(40);
        let steps = 64;
        for s in 0..steps {
            let t = s as f64 / (steps - 1) as f64;
            let ya = TOP + bh - (bh * (s + 1)) / steps;
            let yb = TOP + bh - (bh * s) / steps;
            root.draw(&Rectangle::new(
                [(bx, ya), (bx + 16, yb)],
                viridis(t).filled(),
            ))?;
        }
        for (t, v) in [(0.0, lo), (0.5, 0.5 * (lo + hi)), (1.0, hi)] {
            root.draw(&Text::new(
                format!("{v:.3}"),
                (bx + 22, TOP + bh - (t * bh as f64) as i32),
                style(12, HPos::Left, VPos::Center),
            ))?;
        }
        root.present()
    }

    /// The heatmap as a PNG file's bytes, with the provenance in a tEXt chunk.
    pub fn to_png(&self, provenance: &str) -> Result<Vec<u8>, ReportError> {
        let (w, h) = self.size();
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&root).map_err(|e| self.render_error("png", e))?;
        }
        let mut bytes = Vec::new();
        let mut encode = || -> Result<(), png::EncodingError> {
            let mut enc = png::Encoder::new(&mut bytes, w, h);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.add_text_chunk("Software".into(), provenance.into())?;
            enc.write_header()?.write_image_data(&rgb)
        };
        encode().map_err(|e| ReportError::Render {
            what: format!("{}.png", self.stem),
            detail: e.to_string(),
        })?;
        Ok(bytes)
    }

    /// The heatmap as an SVG document, with the provenance in an XML comment.
    pub fn to_svg(&self, provenance: &str) -> Result<String, ReportError> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size()).into_drawing_area();
            self.draw(&root).map_err(|e| self.render_error("svg", e))?;
        }
        Ok(format!(
            "<!-- {} -->\n{svg}\n",
            xml_comment_safe(provenance)
        ))
    }

    fn render_error(&self, ext: &str, e: impl std::fmt::Display) -> ReportError {
        ReportError::Render {
            what: format!("{}.{ext}", self.stem),
            detail: e.to_string(),
        }
    }
}

/// `--` may not appear inside an XML/HTML comment.
pub fn xml_comment_safe(s: &str) -> String {
    s.replace("--", "- -")
}

/// The viridis colour map (matplotlib's), linear between nine stops; `t` in [0, 1].
fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::aggregate;
    use crate::aggregate::tests::run;

    fn maps() -> Vec<Heatmap> {
        let mut runs = Vec::new();
        for seed in 1..=2 {
            runs.push(run(&[2, 2], "none", 0.0, seed, 0.5, 0.9));
            runs.push(run(&[4, 2], "none", 0.0, seed, 0.7, 0.6));
            runs.push(run(
                &[2, 4],
                "none",
                0.0,
                seed,
                0.6 + seed as f64 * 0.01,
                0.7,
            ));
        }
        heatmaps(&aggregate(&runs).unwrap())
    }

    #[test]
    fn one_panel_per_metric_with_missing_cells() {
        let maps = maps();
        assert_eq!(maps.len(), 4);
        let acc = &maps[0];
        assert_eq!(acc.stem, "fig1-lenet300-none-r0-accuracy");
        assert_eq!((acc.xs.clone(), acc.ys.clone()), (vec![2, 4], vec![2, 4]));
        assert_eq!(acc.cells[0][1].map(|c| c.0), Some(0.7));
        assert_eq!(acc.cells[1][1], None, "4x4 was not run");
        let (m, ci) = acc.cells[1][0].unwrap();
        assert!((m - 0.615).abs() < 1e-12);
        // sd = 0.01/√2, half-width = 12.7062047 · sd / √2 = 0.0635310.
        assert!((ci.unwrap() - 0.063_531_024).abs() < 1e-8);
    }

    #[test]
    fn renders_png_and_svg() {
        let font = init_font(None).expect("fonts-dejavu-core (scripts/sweep-deps.sh)");
        assert!(font.ends_with(".ttf"), "{font}");
        let map = &maps()[0];
        let png = map.to_png("aiq-report test").unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(png.as_slice());
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), map.size());
        assert!(info
            .uncompressed_latin1_text
            .iter()
            .any(|t| t.text == "aiq-report test"));
        let svg = map.to_svg("made by --x").unwrap();
        assert!(svg.starts_with("<!-- made by - -x -->"));
        assert!(svg.contains("<svg") && svg.contains("\n0.615\n") && svg.contains("\n±0.064\n"));
        assert!(svg.contains("\n–\n"), "missing cell is marked");
    }

    #[test]
    fn colour_map_ends() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(f64::NAN), RGBColor(68, 1, 84));
    }
}
