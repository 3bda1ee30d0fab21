//! Softmax cross-entropy on the logits, the training loss (Keras'
//! `SparseCategoricalCrossentropy(from_logits=True)`, averaged over the mini-batch).

/// Index of the largest value, the first on ties (NaN never wins).
pub(crate) fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate().skip(1) {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// For `labels.len()` rows of `classes` logits: writes `dlogits = (softmax − onehot)·scale`
/// and returns the summed (unscaled) loss and the number of rows whose argmax is the label.
pub(crate) fn softmax_xent(
    logits: &[f32],
    labels: &[u8],
    classes: usize,
    scale: f32,
    dlogits: &mut [f32],
) -> (f64, usize) {
    let mut loss = 0.0f64;
    let mut correct = 0;
    for ((z, d), &label) in logits
        .chunks_exact(classes)
        .zip(dlogits.chunks_exact_mut(classes))
        .zip(labels)
    {
        let label = label as usize;
        if argmax(z) == label {
            correct += 1;
        }
        let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for (d, &v) in d.iter_mut().zip(z) {
            let e = (v - m).exp();
            *d = e;
            sum += e;
        }
        loss += f64::from(m + sum.ln() - z[label]);
        let inv = scale / sum;
        for d in d.iter_mut() {
            *d *= inv;
        }
        d[label] -= scale;
    }
    (loss, correct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::*;

    #[test]
    fn gradients_match_finite_differences() {
        let (n, k) = (4, 10);
        let mut g = rng(9);
        let mut z = uniform(&mut g, n * k, -3.0, 3.0);
        let labels = [3u8, 0, 9, 3];
        let mut d = vec![0.0; n * k];
        let (loss, _) = softmax_xent(&z, &labels, k, 1.0, &mut d);
        assert!(loss > 0.0);
        let mut scratch = vec![0.0; n * k];
        grad_check("xent dz", &mut z, &d, 1, 1e-2, |z| {
            softmax_xent(z, &labels, k, 1.0, &mut scratch).0
        });
    }

    #[test]
    fn counts_correct_and_is_stable_for_large_logits() {
        let z = [1000.0f32, 0.0, -1000.0, 0.0, 5.0, 5.0];
        let mut d = [0.0; 6];
        let (loss, correct) = softmax_xent(&z, &[0, 2], 3, 0.5, &mut d);
        assert!(loss.is_finite());
        assert_eq!(
            correct, 1,
            "tie at 5,5 goes to the first index, label 2 is wrong"
        );
        assert!((d[0] - 0.0).abs() < 1e-6 && (d[1] - 0.0).abs() < 1e-6);
    }
}
