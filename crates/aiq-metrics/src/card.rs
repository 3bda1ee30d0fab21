//! The score card: per-layer entropy and efficiency, network efficiency and aIQ of a set of
//! counts, as the JSON object `score-aiq --json` prints and as a readable table.

use std::fmt;

use aiq_count::{summarize_any, CountError, Counts, LayerSummary, Measurement};
use aiq_io::{Provenance, Source};
use aiq_states::ModelIdentity;
use serde::{Deserialize, Serialize};

use crate::measures::{
    aiq, efficiency, efficiency_ceiling, network_efficiency, shannon_bits_of_profile, MetricsError,
};

/// Why a stream could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Read(#[from] CountError),
    #[error("{name}: {source}")]
    Metrics {
        name: String,
        #[source]
        source: MetricsError,
    },
}

/// One layer's measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerScore {
    pub name: String,
    pub neurons: u32,
    pub observations: u64,
    pub distinct_states: u64,
    pub entropy_bits: f64,
    pub efficiency: f64,
    /// `min(1, log2(observations) / neurons)`: the most this sample can show.
    pub efficiency_ceiling: f64,
    /// States per input (1 for dense layers, spatial positions for conv layers; 0 unknown).
    pub states_per_input: u32,
}

impl LayerScore {
    fn new(l: LayerSummary) -> Self {
        let entropy_bits = shannon_bits_of_profile(&l.profile);
        LayerScore {
            efficiency: efficiency(entropy_bits, l.neurons),
            efficiency_ceiling: efficiency_ceiling(l.observations, l.neurons),
            name: l.name,
            neurons: l.neurons,
            observations: l.observations,
            distinct_states: l.distinct,
            entropy_bits,
            states_per_input: l.states_per_input,
        }
    }

    /// True when the sample size, not the network, bounds the efficiency: the ceiling is
    /// below 1 and the efficiency is within 5% of it.
    pub fn sample_limited(&self) -> bool {
        self.efficiency_ceiling < 1.0 && self.efficiency >= 0.95 * self.efficiency_ceiling
    }
}

/// Everything `score-aiq` reports. Field names are the JSON keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scorecard {
    pub layers: Vec<LayerScore>,
    pub network_efficiency: f64,
    /// Accuracy used for aIQ: given on the command line, else measured with the states.
    pub accuracy: Option<f64>,
    pub beta: f64,
    /// `None` when no accuracy is known.
    pub aiq: Option<f64>,
    /// The measured model (`None` for `.npy` imports).
    pub model: Option<ModelIdentity>,
    /// Data set and split measured.
    pub dataset: Option<String>,
    pub split: Option<String>,
    /// Inputs measured, when known.
    pub inputs: Option<u64>,
    /// The tools that produced this score, oldest first.
    pub provenance: Vec<Provenance>,
}

impl Scorecard {
    /// Scores `counts`; `accuracy` overrides the measured one; `tool` ends the provenance.
    pub fn new(
        counts: &Counts,
        beta: f64,
        accuracy: Option<f64>,
        tool: Provenance,
    ) -> Result<Self, MetricsError> {
        let layers = counts
            .layers
            .iter()
            .map(|l| LayerScore::new(l.summary()))
            .collect();
        Self::from_layers(layers, &counts.measurement, beta, accuracy, tool)
    }

    /// Scores the states or counts stream `r` (told apart by its magic) named `name`. A
    /// counts stream's header has all a score needs; its records are checked against the
    /// stream's CRC-32, not decoded ([`aiq_count::summarize_any`]). A states stream is counted
    /// first. Same numbers as [`Scorecard::new`] of the same counts.
    pub fn read<'a>(
        src: impl Into<Source<'a>>,
        name: &str,
        beta: f64,
        accuracy: Option<f64>,
        tool: Provenance,
    ) -> Result<Self, ScoreError> {
        let (measurement, summaries) = summarize_any(src, name)?;
        let layers = summaries.into_iter().map(LayerScore::new).collect();
        Self::from_layers(layers, &measurement, beta, accuracy, tool).map_err(|source| {
            ScoreError::Metrics {
                name: name.to_string(),
                source,
            }
        })
    }

    fn from_layers(
        layers: Vec<LayerScore>,
        m: &Measurement,
        beta: f64,
        accuracy: Option<f64>,
        tool: Provenance,
    ) -> Result<Self, MetricsError> {
        let effs: Vec<f64> = layers.iter().map(|l| l.efficiency).collect();
        let net = network_efficiency(&effs)?;
        let accuracy = accuracy.or_else(|| m.accuracy());
        let aiq = accuracy.map(|p| aiq(p, net, beta)).transpose()?;
        if !(beta.is_finite() && beta > 0.0) {
            return Err(MetricsError::Beta(beta));
        }
        let mut provenance = m.provenance.clone();
        provenance.push(tool);
        Ok(Scorecard {
            layers,
            network_efficiency: net,
            accuracy,
            beta,
            aiq,
            model: m.model.clone(),
            dataset: m.dataset.clone(),
            split: m.split.clone(),
            inputs: m.inputs,
            provenance,
        })
    }
}

/// Thousands separators for counts in the table.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl fmt::Display for Scorecard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(m) = &self.model {
            let widths: Vec<String> = m.widths.iter().map(u32::to_string).collect();
            writeln!(
                f,
                "model     {} ({}) seed {}, trained on {}, {} epochs, {} parameters",
                m.arch,
                widths.join(","),
                m.seed,
                m.dataset,
                m.epochs,
                grouped(m.parameters)
            )?;
        }
        if let (Some(d), Some(s)) = (&self.dataset, &self.split) {
            let n = self
                .inputs
                .map(|n| format!(", {} inputs", grouped(n)))
                .unwrap_or_default();
            writeln!(f, "measured  {d} {s}{n}")?;
        }
        let w = self
            .layers
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(0)
            .max(5);
        writeln!(
            f,
            "{:<w$} {:>7} {:>13} {:>10} {:>9} {:>10} {:>8}",
            "layer", "neurons", "observations", "distinct", "entropy", "efficiency", "ceiling"
        )?;
        for l in &self.layers {
            writeln!(
                f,
                "{:<w$} {:>7} {:>13} {:>10} {:>9.4} {:>10.4} {:>8.4}{}",
                l.name,
                l.neurons,
                grouped(l.observations),
                grouped(l.distinct_states),
                l.entropy_bits,
                l.efficiency,
                l.efficiency_ceiling,
                if l.sample_limited() { " *" } else { "" }
            )?;
        }
        if self.layers.iter().any(LayerScore::sample_limited) {
            writeln!(f, "* efficiency at the ceiling log2(observations)/neurons: limited by the sample size")?;
        }
        writeln!(f, "network efficiency  {:.4}", self.network_efficiency)?;
        match (self.accuracy, self.aiq) {
            (Some(p), Some(a)) => {
                writeln!(f, "accuracy            {p:.4}")?;
                let label = format!("aIQ (beta {})", self.beta);
                writeln!(
                    f,
                    "{label:<19} {:.2}  (x100, as in the paper's tables)",
                    a * 100.0
                )
            }
            _ => writeln!(
                f,
                "aIQ                 unknown: no accuracy (give --accuracy P)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aiq_count::{write_counts, LayerCounts};

    #[test]
    fn a_streamed_score_has_the_same_bits() {
        // A narrow layer and a wide one with enough states for the table of small terms.
        let wide: Vec<u64> = (0..9000u64).map(|i| 1 + (i * i * 7919) % 3001).collect();
        let layer = |name: &str, neurons: u32, states: Vec<u64>, counts: Vec<u64>| LayerCounts {
            name: name.into(),
            neurons,
            states_per_input: 1,
            observations: counts.iter().sum(),
            states,
            counts,
        };
        let counts = Counts {
            measurement: Measurement {
                inputs: Some(10),
                correct: Some(9),
                ..Measurement::default()
            },
            layers: vec![
                layer("a", 3, vec![1, 2, 6], vec![5, 1, 2]),
                layer("b", 90, (0..18_000).collect(), wide),
            ],
        };
        let mut bytes = Vec::new();
        write_counts(&mut bytes, &counts, "c").unwrap();
        let tool = Provenance::current("t", "0");
        let want = Scorecard::new(&counts, 2.0, None, tool.clone()).unwrap();
        let got = Scorecard::read(bytes.as_slice(), "c", 2.0, None, tool).unwrap();
        assert_eq!(got, want);
        for (a, b) in got.layers.iter().zip(&want.layers) {
            assert_eq!(a.entropy_bits.to_bits(), b.entropy_bits.to_bits());
        }
        assert_eq!(got.aiq.unwrap().to_bits(), want.aiq.unwrap().to_bits());
        let e = Scorecard::read(
            bytes.as_slice(),
            "c",
            0.0,
            None,
            Provenance::current("t", "0"),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "c: beta must be a finite number > 0, got 0");
    }
}
