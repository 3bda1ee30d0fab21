//! The epoch loop: shuffling, sharded mini-batches on rayon, the SGD-Nesterov update with L2,
//! early stopping on training accuracy.

use std::time::Instant;

use aiq_data::{Dataset, DatasetKind, Split};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::Serialize;

use crate::model::{Model, ModelMeta};
use crate::net::{
    BnBatch, Ctx, DropoutKey, Net, Op, Step, Workspace, WorkspacePool, CLASSES, INPUT,
};
use crate::stats::{epoch_stats, ActStats};
use crate::{layers::batchnorm, Arch, Modifier, TrainError};

/// Images per shard. Fixed (not derived from the thread count) so results do not depend on
/// `--threads`; 50 cuts the paper's batch of 200 into 4 shards, enough for 2–4 cores.
pub const SHARD: usize = 50;
/// Keras' `l2(0.0005)`: loss += 0.0005·Σw², so the gradient gains 0.001·w.
const L2: f32 = 0.0005;
const LEARNING_RATE: f32 = 0.001;
const MOMENTUM: f32 = 0.9;
/// Parameters per chunk of the parallel update.
const UPDATE_CHUNK: usize = 1 << 14;
/// Images per inference chunk when measuring accuracy.
const EVAL_CHUNK: usize = 500;

/// Purposes of the seeded random streams, so each gets its own.
const STREAM_INIT: u64 = 1;
const STREAM_SHUFFLE: u64 = 2;

/// What to train and how. [`TrainConfig::paper`] gives the paper's recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub arch: Arch,
    pub widths: Vec<usize>,
    pub modifier: Modifier,
    pub seed: u64,
    /// Fraction of training labels replaced by random ones (§3.3), in `[0, 1]`.
    pub randomize_labels: f64,
    pub batch: usize,
    pub max_epochs: usize,
    /// Stop when the training accuracy has not beaten its best for this many epochs.
    pub patience: usize,
}

impl TrainConfig {
    /// The paper's recipe for one architecture: batch 200, at most 200 epochs, patience 5.
    pub fn paper(arch: Arch, widths: Vec<usize>) -> Self {
        TrainConfig {
            arch,
            widths,
            modifier: Modifier::None,
            seed: 0,
            randomize_labels: 0.0,
            batch: 200,
            max_epochs: 200,
            patience: 5,
        }
    }
}

/// One epoch, as logged (one JSON line per epoch).
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    /// Wall time of the epoch's training (not of the test evaluation).
    pub seconds: f64,
    pub loss: f64,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub images_per_second: f64,
    /// True when this epoch's training accuracy is the best so far (its weights are kept).
    pub best: bool,
    /// Parameter statistics of every weighted layer (see the `stats` module for where each
    /// set of values comes from).
    pub stats: Vec<aiq_paramstats::LayerStats>,
}

/// Progress reports for a progress bar and a log.
#[derive(Debug)]
pub enum Progress<'a> {
    /// After every mini-batch: running figures of the epoch so far.
    Batch {
        epoch: usize,
        batch: usize,
        batches: usize,
        loss: f64,
        accuracy: f64,
        images_per_second: f64,
    },
    Epoch(&'a EpochReport),
}

/// A ChaCha stream keyed by the seed, a purpose and an index.
pub(crate) fn stream(seed: u64, purpose: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&purpose.to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    key[24..].copy_from_slice(b"aiqtrain");
    ChaCha8Rng::from_seed(key)
}

/// Fresh parameters: He-normal kernels (Keras: normal truncated at 2σ, σ = √(2/fan_in) /
/// 0.8796…, the truncation's correction), zero biases, γ = 1, β = 0; running mean 0 and
/// variance 1.
pub(crate) fn init(net: &Net, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = stream(seed, STREAM_INIT, 0);
    let mut params = vec![0.0f32; net.n_params];
    for (range, fan_in) in &net.kernels {
        let sd = (2.0 / *fan_in as f64).sqrt() / 0.879_625_661_034_239_8;
        for w in &mut params[range.clone()] {
            let z: f64 = loop {
                let z: f64 = StandardNormal.sample(&mut rng);
                if z.abs() <= 2.0 {
                    break z;
                }
            };
            *w = (z * sd) as f32;
        }
    }
    let mut state = vec![0.0f32; net.n_state];
    for &(gamma, _beta, st, c) in &net.norms {
        params[gamma..gamma + c].fill(1.0);
        state[st + c..st + 2 * c].fill(1.0);
    }
    (params, state)
}

/// Checks that a split holds 28×28 images, one per row, with labels below 10.
fn check_split(kind: DatasetKind, name: &str, s: &Split) -> Result<(), TrainError> {
    let bad = |detail: String| TrainError::DataShape {
        dataset: format!("{kind} ({name})"),
        detail,
    };
    if s.rows * s.cols != INPUT || s.images.ncols() != INPUT {
        return Err(bad(format!(
            "expected 28×28 = {INPUT} pixels per image, found {}×{} in rows of {}",
            s.rows,
            s.cols,
            s.images.ncols()
        )));
    }
    if s.images.nrows() != s.labels.len() {
        return Err(bad(format!(
            "{} images but {} labels",
            s.images.nrows(),
            s.labels.len()
        )));
    }
    if s.labels.is_empty() {
        return Err(bad("no images".to_string()));
    }
    if let Some(l) = s.labels.iter().find(|&&l| usize::from(l) >= CLASSES) {
        return Err(bad(format!("label {l}, expected classes 0..{CLASSES}")));
    }
    Ok(())
}

/// Trains a network on `data` as `cfg` says, on the current rayon pool (install the call in
/// a pool to choose the thread count; the result does not depend on it). `progress` hears
/// of every batch and epoch. Fails on a non-finite loss.
pub fn train(
    data: &Dataset,
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Model, TrainError> {
    let net = Net::new(cfg.arch, &cfg.widths, cfg.modifier)?;
    if cfg.batch == 0 || cfg.max_epochs == 0 || cfg.patience == 0 {
        return Err(TrainError::Config(format!(
            "batch ({}), max epochs ({}) and patience ({}) must be at least 1",
            cfg.batch, cfg.max_epochs, cfg.patience
        )));
    }
    check_split(data.kind, "train", &data.train)?;
    check_split(data.kind, "test", &data.test)?;
    let mut labels = data.train.labels.clone();
    if cfg.randomize_labels != 0.0 {
        aiq_data::randomize_labels(&mut labels, cfg.randomize_labels, cfg.seed)?;
    }
    let train_images = data.train.images.as_standard_layout();
    let train_images = Pixels::new(train_images.as_slice().expect("standard layout"));
    let test_images = data.test.images.as_standard_layout();
    let test_images = test_images.as_slice().expect("standard layout");
    let n = labels.len();

    let mut st = Stepper::with_net(net, cfg);
    let mut perm: Vec<u32> = (0..n as u32).collect();
    let batches = n.div_ceil(cfg.batch);

    let mut best: Option<Best> = None;
    let mut since_best = 0;
    let mut epochs = 0;
    for epoch in 1..=cfg.max_epochs {
        epochs = epoch;
        perm.shuffle(&mut stream(cfg.seed, STREAM_SHUFFLE, epoch as u64));
        let start = Instant::now();
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for (b, idx) in perm.chunks(cfg.batch).enumerate() {
            let key = DropoutKey {
                seed: cfg.seed,
                epoch: epoch as u64,
                batch: b as u64,
                shard: 0,
            };
            let (ce, ok) = st.batch(&train_images, &labels, idx, key);
            if !ce.is_finite() {
                return Err(TrainError::Diverged {
                    epoch,
                    batch: b + 1,
                    loss: ce,
                });
            }
            // `ce` is the batch's mean: weight it by the batch's size.
            loss_sum += ce * idx.len() as f64;
            correct += ok;
            let seen = ((b + 1) * cfg.batch).min(n);
            progress(Progress::Batch {
                epoch,
                batch: b + 1,
                batches,
                loss: loss_sum / seen as f64,
                accuracy: correct as f64 / seen as f64,
                images_per_second: seen as f64 / start.elapsed().as_secs_f64().max(1e-9),
            });
        }
        let seconds = start.elapsed().as_secs_f64();
        let train_accuracy = correct as f64 / n as f64;
        let (test_accuracy, stats) = st.evaluate_rows(test_images, &data.test.labels, true);
        let improved = best.as_ref().is_none_or(|b| train_accuracy > b.0);
        let report = EpochReport {
            epoch,
            seconds,
            loss: loss_sum / n as f64,
            train_accuracy,
            test_accuracy,
            images_per_second: n as f64 / seconds.max(1e-9),
            best: improved,
            stats: stats.unwrap_or_default(),
        };
        progress(Progress::Epoch(&report));
        if improved {
            best = Some((
                train_accuracy,
                epoch,
                st.params.clone(),
                st.state.clone(),
                test_accuracy,
            ));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                break;
            }
        }
    }
    let (train_accuracy, best_epoch, params, state, test_accuracy) =
        best.expect("at least one epoch");
    let meta = ModelMeta {
        arch: cfg.arch,
        widths: cfg.widths.clone(),
        modifier: cfg.modifier,
        seed: cfg.seed,
        randomize_labels: cfg.randomize_labels,
        dataset: data.kind,
        epochs,
        best_epoch,
        train_accuracy,
        test_accuracy,
        parameters: st.net.n_params + st.net.n_state,
        provenance: aiq_io::Provenance::current("train", env!("CARGO_PKG_VERSION")),
    };
    Ok(Model::from_parts(meta, st.net, params, state))
}

/// A network being trained: parameters, velocities, running statistics and the shards'
/// workspaces. [`train`] drives it; benchmarks run single mini-batches through
/// [`Stepper::step`], the same code path.
#[derive(Debug)]
pub struct Stepper {
    net: Net,
    phases: Vec<Vec<Step>>,
    shards: Vec<Workspace>,
    params: Vec<f32>,
    velocity: Vec<f32>,
    state: Vec<f32>,
    bn: Vec<BnBatch>,
    seed: u64,
    batch: usize,
    steps: u64,
    /// Workspaces of the per-epoch evaluation, kept from one epoch to the next.
    eval: WorkspacePool,
}

impl Stepper {
    /// Freshly initialized network and workspaces for `cfg`.
    pub fn new(cfg: &TrainConfig) -> Result<Stepper, TrainError> {
        if cfg.batch == 0 {
            return Err(TrainError::Config("batch must be at least 1".to_string()));
        }
        Ok(Stepper::with_net(
            Net::new(cfg.arch, &cfg.widths, cfg.modifier)?,
            cfg,
        ))
    }

    fn with_net(net: Net, cfg: &TrainConfig) -> Stepper {
        let (params, state) = init(&net, cfg.seed);
        let shard_cap = SHARD.min(cfg.batch);
        let shards = (0..cfg.batch.div_ceil(shard_cap))
            .map(|_| Workspace::new(&net, shard_cap, true))
            .collect();
        Stepper {
            phases: net.phases(),
            bn: vec![BnBatch::default(); net.layers.len()],
            velocity: vec![0.0; net.n_params],
            shards,
            params,
            state,
            net,
            seed: cfg.seed,
            batch: cfg.batch,
            steps: 0,
            eval: WorkspacePool::default(),
        }
    }

    /// One mini-batch: the images of `idx` (rows of `images`, 784 pixels each). Returns the
    /// batch's mean loss (L2 included) and how many it classified right.
    fn batch(
        &mut self,
        images: &Pixels<'_>,
        labels: &[u8],
        idx: &[u32],
        key: DropoutKey,
    ) -> (f64, usize) {
        let batch = Batch {
            net: &self.net,
            phases: &self.phases,
            images,
            labels,
            idx,
            key,
        };
        batch.run(
            &mut self.shards,
            &mut self.params,
            &mut self.velocity,
            &mut self.state,
            &mut self.bn,
        )
    }

    /// The evaluation [`train`] runs after every epoch: accuracy on `images` (`n × 784`,
    /// standard layout) and, with `with_stats`, the per-layer parameter statistics of the
    /// log (the gradient being the last mini-batch's). Public so benchmarks time the same
    /// code path.
    pub fn evaluate(
        &self,
        images: ndarray::ArrayView2<'_, f32>,
        labels: &[u8],
        with_stats: bool,
    ) -> Result<(f64, Option<Vec<aiq_paramstats::LayerStats>>), TrainError> {
        let n = labels.len();
        let images = images
            .as_slice()
            .filter(|s| images.ncols() == INPUT && s.len() == n * INPUT)
            .ok_or_else(|| {
                TrainError::Config(
                    "evaluate: images must be standard-layout rows of 784, one per label".into(),
                )
            })?;
        Ok(self.evaluate_rows(images, labels, with_stats))
    }

    fn evaluate_rows(
        &self,
        images: &[f32],
        labels: &[u8],
        with_stats: bool,
    ) -> (f64, Option<Vec<aiq_paramstats::LayerStats>>) {
        let mut acts = with_stats.then(|| ActStats::new(&self.net));
        let accuracy = evaluate(
            &self.net,
            &self.params,
            &self.state,
            images,
            labels,
            &self.eval,
            acts.as_mut(),
        );
        let stats = acts.map(|a| epoch_stats(&self.net, &self.params, &self.shards[0].grad, &a));
        (accuracy, stats)
    }

    /// One training step (forward, backward, update) on the first `batch` rows of `images`
    /// (`n × 784`, standard layout) and their labels; returns the loss.
    pub fn step(
        &mut self,
        images: ndarray::ArrayView2<'_, f32>,
        labels: &[u8],
    ) -> Result<f64, TrainError> {
        let n = self.batch.min(labels.len()).min(images.nrows());
        let images = images
            .as_slice()
            .filter(|_| images.ncols() == INPUT)
            .ok_or_else(|| {
                TrainError::Config("step: images must be standard-layout rows of 784".into())
            })?;
        let idx: Vec<u32> = (0..n as u32).collect();
        self.steps += 1;
        let key = DropoutKey {
            seed: self.seed,
            epoch: 0,
            batch: self.steps,
            shard: 0,
        };
        Ok(self.batch(&Pixels::Floats(images), labels, &idx, key).0)
    }
}

/// The best epoch so far: training accuracy, epoch, parameters, running statistics, test
/// accuracy.
type Best = (f64, usize, Vec<f32>, Vec<f32>, f64);

/// One chunk of the update: its index and its parameters, velocities and gradients.
type UpdateChunk<'a> = (usize, ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]));

/// Fraction of `images` (rows of 784) the network labels right, in inference mode, in
/// parallel over fixed chunks, with workspaces from `pool`; also gathers activation
/// statistics into `stats` when given. The chunks' statistics merge in chunk order, so they
/// do not depend on the thread count.
pub(crate) fn evaluate(
    net: &Net,
    params: &[f32],
    state: &[f32],
    images: &[f32],
    labels: &[u8],
    pool: &WorkspacePool,
    stats: Option<&mut ActStats>,
) -> f64 {
    let want = stats.is_some();
    let chunks: Vec<(usize, Option<ActStats>)> = labels
        .par_chunks(EVAL_CHUNK)
        .enumerate()
        .map(|(c, labels)| {
            let imgs = &images[c * EVAL_CHUNK * INPUT..(c * EVAL_CHUNK + labels.len()) * INPUT];
            let mut ws = pool.take(net, labels.len());
            let mut part = want.then(|| ActStats::new(net));
            let logits = infer(net, params, state, &mut ws, imgs, want, &mut |hidden, m| {
                if let (Some(p), Some(xs)) = (part.as_mut(), m.as_slice()) {
                    p.add(hidden, xs);
                }
            });
            if let Some(p) = part.as_mut() {
                p.add(net.taps.len(), logits);
            }
            let correct = logits
                .chunks_exact(CLASSES)
                .zip(labels)
                .filter(|(z, &l)| crate::layers::loss::argmax(z) == usize::from(l))
                .count();
            pool.give(ws);
            (correct, part)
        })
        .collect();
    if let Some(stats) = stats {
        for part in chunks.iter().filter_map(|(_, p)| p.as_ref()) {
            stats.merge(part);
        }
    }
    let correct: usize = chunks.iter().map(|(c, _)| c).sum();
    correct as f64 / labels.len().max(1) as f64
}

/// Runs `images` (rows of 784, at most `ws.cap()` of them) through the net in inference
/// mode, calling `tap(hidden_index, state_matrix)` after each hidden layer's ELU; returns
/// the logits, `n × 10`.
///
/// With `exact_taps` the tap sees the ELU's output. Without, an ELU followed by pooling
/// runs after it instead ([`Workspace::pool_then_elu`]: a quarter of the ELUs, the same
/// logits to the bit) and the tap sees the ELU's input, whose positive entries are the
/// same (the ELU keeps the sign): enough for the states, not for activation statistics.
pub(crate) fn infer<'w>(
    net: &Net,
    params: &[f32],
    state: &[f32],
    ws: &'w mut Workspace,
    images: &[f32],
    exact_taps: bool,
    tap: &mut dyn FnMut(usize, ndarray::ArrayView2<'_, f32>),
) -> &'w [f32] {
    let n = images.len() / INPUT;
    assert!(
        n <= ws.cap(),
        "infer: {n} images in a workspace for {}",
        ws.cap()
    );
    ws.n = n;
    ws.input[..images.len()].copy_from_slice(images);
    let ctx = Ctx {
        net,
        params,
        state,
        train: false,
        bn: &[],
        batch: n,
    };
    let mut taps = net.taps.iter().enumerate().peekable();
    let mut l = 0;
    while l < net.layers.len() {
        // The layer whose output holds the states, and the next layer to run.
        let (shown, next) = match net.pool_after_elu(l).filter(|_| !exact_taps) {
            Some(p) => {
                ws.pool_then_elu(net, l, p);
                (l - 1, p + 1)
            }
            None => {
                ws.step(Step::Fwd(l), &ctx);
                (l, l + 1)
            }
        };
        if let Some(&(hidden, (at, info))) = taps.peek() {
            if *at == l {
                let rows = n * info.states_per_input;
                let m = ndarray::ArrayView2::from_shape((rows, info.neurons), ws.out(net, shown))
                    .expect("tap shape");
                tap(hidden, m);
                taps.next();
            }
        }
        l = next;
    }
    ws.out(net, net.logits_layer())
}

/// The training images as batches gather them. The data sets' pixels are bytes divided by
/// 255, so when every value is exactly [`aiq_data::pixel`] of some byte, the images
/// are kept as those bytes and divided again as each batch copies them: the same floats bit
/// for bit, from a quarter of the memory (MNIST's 47 MB of bytes nearly fit the cache, its
/// 188 MB of floats do not, and a batch's images are scattered through them).
#[derive(Debug)]
enum Pixels<'a> {
    Floats(&'a [f32]),
    Bytes(Vec<u8>),
}

impl<'a> Pixels<'a> {
    fn new(images: &'a [f32]) -> Pixels<'a> {
        let mut bytes = vec![0u8; images.len()];
        if to_bytes(images, &mut bytes) {
            Pixels::Bytes(bytes)
        } else {
            Pixels::Floats(images)
        }
    }

    /// Image `i` (784 values) into `dst`.
    fn copy_row(&self, i: usize, dst: &mut [f32]) {
        match self {
            Pixels::Floats(f) => dst.copy_from_slice(&f[i * INPUT..(i + 1) * INPUT]),
            Pixels::Bytes(b) => expand_pixels(&b[i * INPUT..(i + 1) * INPUT], dst),
        }
    }
}

/// `bytes[i]` = the byte whose [`aiq_data::pixel`] is `images[i]`, if every value has one.
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn to_bytes(images: &[f32], bytes: &mut [u8]) -> bool {
    let mut exact = true;
    for (b, &x) in bytes.iter_mut().zip(images) {
        // Saturating cast; whatever it gives, the check below decides.
        *b = (x * 255.0 + 0.5) as u8;
        exact &= aiq_data::pixel(*b).to_bits() == x.to_bits();
    }
    exact
}

#[multiversion::multiversion(targets("x86_64+avx2"))]
fn expand_pixels(src: &[u8], dst: &mut [f32]) {
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = aiq_data::pixel(b);
    }
}

/// One mini-batch: which images, and the net's phases.
struct Batch<'a> {
    net: &'a Net,
    phases: &'a [Vec<Step>],
    images: &'a Pixels<'a>,
    labels: &'a [u8],
    idx: &'a [u32],
    key: DropoutKey,
}

impl Batch<'_> {
    /// Forward, backward and update; returns the batch's mean loss (L2 included) and the
    /// number of images classified right.
    fn run(
        &self,
        shards: &mut [Workspace],
        params: &mut [f32],
        velocity: &mut [f32],
        state: &mut [f32],
        bn: &mut [BnBatch],
    ) -> (f64, usize) {
        let (ce, correct) = self.gradients(shards, params, state, bn);
        let used = self.idx.len().div_ceil(shards[0].cap());
        let reg = update(self.net, params, velocity, &mut shards[..used]);
        (ce + f64::from(L2) * reg, correct)
    }

    /// Forward and backward: leaves each shard's gradient of the mean cross-entropy in its
    /// workspace; returns the mean cross-entropy and the number classified right.
    fn gradients(
        &self,
        shards: &mut [Workspace],
        params: &[f32],
        state: &mut [f32],
        bn: &mut [BnBatch],
    ) -> (f64, usize) {
        let cap = shards[0].cap();
        let used = self.idx.len().div_ceil(cap);
        let shards = &mut shards[..used];
        let total = self.idx.len();
        for (p, phase) in self.phases.iter().enumerate() {
            let ctx = Ctx {
                net: self.net,
                params,
                state,
                train: true,
                bn,
                batch: total,
            };
            let work = |(s, ws): (usize, &mut Workspace)| {
                if p == 0 {
                    let idx = &self.idx[s * cap..((s + 1) * cap).min(total)];
                    ws.n = idx.len();
                    for (k, &i) in idx.iter().enumerate() {
                        let i = i as usize;
                        self.images
                            .copy_row(i, &mut ws.input[k * INPUT..(k + 1) * INPUT]);
                        ws.labels[k] = self.labels[i];
                    }
                    ws.key = DropoutKey {
                        shard: s as u64,
                        ..self.key
                    };
                }
                for &step in phase {
                    ws.step(step, &ctx);
                }
            };
            if shards.len() == 1 {
                work((0, &mut shards[0]));
            } else {
                shards.par_iter_mut().enumerate().for_each(work);
            }
            match phase.last() {
                Some(&Step::BnStats(l)) => self.reduce_stats(l, shards, state, &mut bn[l]),
                Some(&Step::BnGrads(l)) => reduce_grads(self.net, l, shards, &mut bn[l]),
                _ => {}
            }
        }
        let ce: f64 = shards.iter().map(|s| s.loss).sum::<f64>() / total as f64;
        (ce, shards.iter().map(|s| s.correct).sum())
    }

    /// Sums the shards' Σx, Σx² for batch-norm layer `l` in shard order; sets the batch's
    /// mean and variance and moves the running statistics.
    fn reduce_stats(&self, l: usize, shards: &[Workspace], state: &mut [f32], bn: &mut BnBatch) {
        let layer = &self.net.layers[l];
        let Op::BatchNorm { c, state: st, .. } = layer.op else {
            unreachable!("not batch norm")
        };
        let mut sums = vec![0.0f64; 2 * c];
        for s in shards {
            for (a, b) in sums.iter_mut().zip(&s.bn_part[l]) {
                *a += b;
            }
        }
        for v in [&mut bn.mean, &mut bn.var, &mut bn.inv_std] {
            v.resize(c, 0.0);
        }
        let rows = self.idx.len() * layer.positions;
        batchnorm::finish_stats(&sums, c, rows, &mut bn.mean, &mut bn.var, &mut bn.inv_std);
        let m = batchnorm::MOMENTUM;
        for j in 0..c {
            state[st + j] = m * state[st + j] + (1.0 - m) * bn.mean[j];
            state[st + c + j] = m * state[st + c + j] + (1.0 - m) * bn.var[j];
        }
    }
}

/// Sums the shards' Σdy, Σdy·x̂ for batch-norm layer `l` in shard order.
fn reduce_grads(net: &Net, l: usize, shards: &[Workspace], bn: &mut BnBatch) {
    let Op::BatchNorm { c, .. } = net.layers[l].op else {
        unreachable!("not batch norm")
    };
    let mut sums = vec![0.0f64; 2 * c];
    for s in shards {
        for (a, b) in sums.iter_mut().zip(&s.bn_part[l]) {
            *a += b;
        }
    }
    bn.sum_dy = sums[..c].iter().map(|&v| v as f32).collect();
    bn.sum_dy_xhat = sums[c..].iter().map(|&v| v as f32).collect();
}

/// Adds the shards' gradients in shard order (into shard 0's buffer), adds the L2 gradient
/// and applies Keras' Nesterov step. Returns Σw² over the regularized parameters before
/// the step (the L2 loss is 0.0005 times it). Parallel over fixed chunks; the chunks'
/// sums are added in order.
fn update(net: &Net, params: &mut [f32], velocity: &mut [f32], shards: &mut [Workspace]) -> f64 {
    let (first, rest) = shards.split_first_mut().expect("a shard");
    let mut reg = 0.0f64;
    for (range, decayed) in &net.blocks {
        let decay = if *decayed { 2.0 * L2 } else { 0.0 };
        let chunk = |(c, ((p, v), g)): UpdateChunk<'_>| -> f64 {
            let at = range.start + c * UPDATE_CHUNK;
            for s in rest.iter() {
                for (g, o) in g.iter_mut().zip(&s.grad[at..at + p.len()]) {
                    *g += o;
                }
            }
            let mut sq = 0.0f32;
            for ((w, v), g) in p.iter_mut().zip(v.iter_mut()).zip(g.iter()) {
                sq += *w * *w;
                let g = g + decay * *w;
                *v = MOMENTUM * *v - LEARNING_RATE * g;
                *w += MOMENTUM * *v - LEARNING_RATE * g;
            }
            if *decayed {
                f64::from(sq)
            } else {
                0.0
            }
        };
        let (p, v, g) = (
            &mut params[range.clone()],
            &mut velocity[range.clone()],
            &mut first.grad[range.clone()],
        );
        if range.len() <= 2 * UPDATE_CHUNK {
            reg += chunk((0, ((p, v), g)));
        } else {
            let sums: Vec<f64> = p
                .par_chunks_mut(UPDATE_CHUNK)
                .zip(v.par_chunks_mut(UPDATE_CHUNK))
                .zip(g.par_chunks_mut(UPDATE_CHUNK))
                .enumerate()
                .map(chunk)
                .collect();
            reg += sums.iter().sum::<f64>();
        }
    }
    reg
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aiq_data::Split;
    use ndarray::Array2;
    use rand::Rng;

    /// A learnable synthetic data set: the label is the brightest of 10 horizontal bands
    /// (plus noise), so small networks get well above chance in an epoch or two.
    pub(crate) fn synthetic(n_train: usize, n_test: usize, seed: u64) -> Dataset {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut split = |n: usize| {
            let mut images = Array2::<f32>::zeros((n, INPUT));
            let mut labels = Vec::with_capacity(n);
            for i in 0..n {
                let label: u8 = rng.gen_range(0..10);
                for p in 0..INPUT {
                    let band = (p / 28) * 10 / 28;
                    let base = if band == usize::from(label) { 0.7 } else { 0.2 };
                    images[[i, p]] = (base + rng.gen_range(-0.2f32..0.2)).clamp(0.0, 1.0);
                }
                labels.push(label);
            }
            Split {
                images,
                labels,
                rows: 28,
                cols: 28,
            }
        };
        let train = split(n_train);
        let test = split(n_test);
        Dataset {
            kind: DatasetKind::Mnist,
            train,
            test,
        }
    }

    /// Mean cross-entropy of a batch and the reduced gradient, shards of `cap` images.
    fn loss_and_grad(
        net: &Net,
        params: &[f32],
        images: &[f32],
        labels: &[u8],
        cap: usize,
        key: DropoutKey,
    ) -> (f64, Vec<f32>) {
        let idx: Vec<u32> = (0..labels.len() as u32).collect();
        let phases = net.phases();
        let mut shards: Vec<Workspace> = (0..labels.len().div_ceil(cap))
            .map(|_| Workspace::new(net, cap, true))
            .collect();
        let mut state = init(net, 0).1;
        let mut bn = vec![BnBatch::default(); net.layers.len()];
        let batch = Batch {
            net,
            phases: &phases,
            images: &Pixels::Floats(images),
            labels,
            idx: &idx,
            key,
        };
        let (ce, _) = batch.gradients(&mut shards, params, &mut state, &mut bn);
        let mut g = vec![0.0f32; net.n_params];
        for s in &shards {
            for (a, b) in g.iter_mut().zip(&s.grad) {
                *a += b;
            }
        }
        (ce, g)
    }

    #[test]
    fn byte_pixels_give_back_the_same_floats() {
        let bytes: Vec<f32> = (0..2 * INPUT)
            .map(|i| aiq_data::pixel((i * 7 % 256) as u8))
            .collect();
        let px = Pixels::new(&bytes);
        assert!(matches!(px, Pixels::Bytes(_)));
        let mut row = vec![f32::NAN; INPUT];
        px.copy_row(1, &mut row);
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&row, &bytes[INPUT..]));
        // Anything else stays floats: a value between bytes, -0, NaN, out of range.
        for odd in [0.5 / 255.0, -0.0, f32::NAN, 2.0, -1.0 / 255.0] {
            let mut v = bytes.clone();
            v[INPUT + 3] = odd;
            let px = Pixels::new(&v);
            assert!(matches!(px, Pixels::Floats(_)), "{odd}");
            px.copy_row(1, &mut row);
            assert!(same(&row, &v[INPUT..]));
        }
    }

    #[test]
    fn whole_network_gradients_match_finite_differences() {
        let data = synthetic(3, 1, 11);
        let images = data.train.images.as_slice().unwrap();
        let labels = &data.train.labels;
        let key = DropoutKey {
            seed: 5,
            epoch: 1,
            batch: 0,
            shard: 0,
        };
        for (arch, widths) in [(Arch::Lenet300, vec![3, 4]), (Arch::Lenet5, vec![2, 3, 4])] {
            for modifier in [Modifier::None, Modifier::Batchnorm, Modifier::Dropout] {
                let net = Net::new(arch, &widths, modifier).unwrap();
                let (mut params, _) = init(&net, 3);
                // Nudge γ, β and biases off their initial 1 / 0 so every path is exercised.
                let mut rng = ChaCha8Rng::seed_from_u64(9);
                for (range, _) in &net.blocks {
                    if range.len() < 20 {
                        for p in &mut params[range.clone()] {
                            *p += rng.gen_range(-0.3..0.3);
                        }
                    }
                }
                // Two shards (2 + 1 images): batch-norm statistics span shards.
                let (_, grad) = loss_and_grad(&net, &params, images, labels, 2, key);
                let (_, one) = loss_and_grad(&net, &params, images, labels, 3, key);
                if modifier != Modifier::Dropout {
                    for (a, b) in grad.iter().zip(&one) {
                        assert!(
                            (a - b).abs() <= 1e-5 + 1e-4 * a.abs(),
                            "{arch} {modifier}: shards change the gradient: {a} vs {b}"
                        );
                    }
                }
                // Every block's first entries plus a stride through the rest.
                let mut picks: Vec<usize> = net
                    .blocks
                    .iter()
                    .flat_map(|(r, _)| [r.start, r.start + r.len() / 2])
                    .collect();
                picks.extend((0..net.n_params).step_by(net.n_params / 25 + 1));
                let eps = 2e-3f32;
                for i in picks {
                    let a = f64::from(grad[i]);
                    let mut numeric = 0.0;
                    // A kink (a pooling winner changing, ELU's curvature at 0) within eps of
                    // the point spoils one difference; a real error fails at both steps.
                    let ok = [eps, eps / 4.0, eps / 16.0].into_iter().any(|e| {
                        let keep = params[i];
                        params[i] = keep + e;
                        let up = loss_and_grad(&net, &params, images, labels, 2, key).0;
                        params[i] = keep - e;
                        let down = loss_and_grad(&net, &params, images, labels, 2, key).0;
                        params[i] = keep;
                        numeric = (up - down) / (2.0 * f64::from(e));
                        (a - numeric).abs() <= 3e-4 + 2e-2 * a.abs().max(numeric.abs())
                    });
                    assert!(
                        ok,
                        "{arch} {widths:?} {modifier} param {i}: analytic {a} vs numeric {numeric}"
                    );
                }
            }
        }
    }

    fn tiny(arch: Arch, widths: Vec<usize>, modifier: Modifier) -> TrainConfig {
        TrainConfig {
            modifier,
            seed: 4,
            batch: 64,
            max_epochs: 2,
            patience: 5,
            ..TrainConfig::paper(arch, widths)
        }
    }

    #[test]
    fn same_model_whatever_the_thread_count() {
        let data = synthetic(150, 40, 12);
        for (arch, widths, modifier) in [
            (Arch::Lenet300, vec![6, 5], Modifier::Batchnorm),
            (Arch::Lenet5, vec![2, 3, 4], Modifier::Dropout),
        ] {
            let cfg = tiny(arch, widths, modifier);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| train(&data, &cfg, &mut |_| {})).unwrap()
            };
            let (a, b) = (run(1), run(3));
            assert_eq!(a.parameters(), b.parameters(), "{arch} {modifier}");
            assert_eq!(a.running_statistics(), b.running_statistics());
            assert_eq!(a.meta().train_accuracy, b.meta().train_accuracy);
        }
    }

    #[test]
    fn learns_the_synthetic_task_and_stops_early() {
        let data = synthetic(400, 100, 13);
        let cfg = TrainConfig {
            max_epochs: 8,
            patience: 1,
            ..tiny(Arch::Lenet300, vec![16, 12], Modifier::None)
        };
        let mut reports = Vec::new();
        let model = train(&data, &cfg, &mut |p| {
            if let Progress::Epoch(r) = p {
                reports.push(r.clone());
            }
        })
        .unwrap();
        let m = model.meta();
        assert!(m.test_accuracy > 0.5, "test accuracy {}", m.test_accuracy);
        assert_eq!(m.epochs, reports.len());
        let best = reports.iter().map(|r| r.train_accuracy).fold(0.0, f64::max);
        assert_eq!(m.train_accuracy, best);
        assert_eq!(reports[m.best_epoch - 1].test_accuracy, m.test_accuracy);
        // The kept weights are the best epoch's: their test accuracy is reproduced.
        let again = model.accuracy(data.test.images.view(), &data.test.labels);
        assert_eq!(again, m.test_accuracy);
        // Early stopping: a stop before max_epochs must follow `patience` epochs without a new best.
        if m.epochs < cfg.max_epochs {
            assert_eq!(m.epochs, m.best_epoch + cfg.patience);
        }
    }

    #[test]
    fn divergence_is_an_error() {
        let mut data = synthetic(100, 10, 14);
        data.train.images.fill(f32::NAN);
        let err = train(
            &data,
            &tiny(Arch::Lenet300, vec![4, 4], Modifier::None),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                TrainError::Diverged {
                    epoch: 1,
                    batch: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn data_that_does_not_fit_is_an_error() {
        let mut data = synthetic(10, 10, 15);
        data.test.rows = 32;
        let err = train(
            &data,
            &tiny(Arch::Lenet5, vec![2, 2, 2], Modifier::None),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, TrainError::DataShape { .. }), "{err}");
        let mut data = synthetic(10, 10, 15);
        data.train.labels[3] = 10;
        let err = train(
            &data,
            &tiny(Arch::Lenet5, vec![2, 2, 2], Modifier::None),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("label 10"), "{err}");
    }
}
