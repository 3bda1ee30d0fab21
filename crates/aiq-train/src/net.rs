//! The two architectures as a flat list of layers over one flat parameter vector, and the
//! per-shard workspace that runs them forward and backward.
//!
//! Parameters live in one `Vec<f32>` (each layer owns a range), so the optimizer, the
//! gradient reduction across shards and the model file all see one slice. Every layer owns
//! its output buffer in the workspace, sized once for the shard's capacity: nothing is
//! allocated per mini-batch.

use std::ops::Range;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::layers::conv::ConvShape;
use crate::layers::{batchnorm, conv, dense, dropout, elu, loss, pool};
use crate::{Arch, LayerInfo, Modifier, TrainError};

/// Pixels of one input image (28×28): what the models take.
pub const INPUT: usize = 28 * 28;
/// Output classes.
pub(crate) const CLASSES: usize = 10;
/// Kernel side of both convolutions.
const KERNEL: usize = 5;
/// Widths allowed for a hidden layer.
pub const WIDTHS: std::ops::RangeInclusive<usize> = 1..=4096;

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Dense {
        inp: usize,
        out: usize,
        w: usize,
        b: usize,
    },
    Conv {
        s: ConvShape,
        w: usize,
        b: usize,
    },
    Elu,
    Pool {
        h: usize,
        w: usize,
        c: usize,
    },
    /// `gamma`, `beta`: parameter offsets; `state`: running mean at `state`, variance at
    /// `state + c`.
    BatchNorm {
        c: usize,
        gamma: usize,
        beta: usize,
        state: usize,
    },
    Dropout,
}

#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub op: Op,
    /// Floats per image in and out.
    pub in_size: usize,
    pub out_size: usize,
    /// Output positions per image (rows per image) and channels (columns).
    pub positions: usize,
    pub channels: usize,
}

/// A built architecture: layers, parameter layout, where the hidden states are tapped.
#[derive(Debug, Clone)]
pub(crate) struct Net {
    pub layers: Vec<Layer>,
    pub n_params: usize,
    pub n_state: usize,
    /// For each hidden layer: the index of its ELU layer (whose output is tapped) and info.
    pub taps: Vec<(usize, LayerInfo)>,
    /// Parameter blocks in order, with whether L2 applies (kernels and biases of dense and
    /// conv layers; not batch norm's γ and β).
    pub blocks: Vec<(Range<usize>, bool)>,
    /// Kernel ranges and their fan-in, for He-normal initialization.
    pub kernels: Vec<(Range<usize>, usize)>,
    /// Batch-norm layers: (γ offset, β offset, state offset, channels), for initialization.
    pub norms: Vec<(usize, usize, usize, usize)>,
}

struct Builder {
    net: Net,
    h: usize,
    w: usize,
    c: usize,
}

impl Builder {
    fn push(&mut self, op: Op, h: usize, w: usize, c: usize) {
        let in_size = self.h * self.w * self.c;
        self.h = h;
        self.w = w;
        self.c = c;
        self.net.layers.push(Layer {
            op,
            in_size,
            out_size: h * w * c,
            positions: h * w,
            channels: c,
        });
    }

    fn param(&mut self, len: usize, decayed: bool) -> usize {
        let at = self.net.n_params;
        self.net.n_params += len;
        self.net.blocks.push((at..at + len, decayed));
        at
    }

    fn dense(&mut self, out: usize) {
        let inp = self.h * self.w * self.c;
        let w = self.param(inp * out, true);
        let b = self.param(out, true);
        self.net.kernels.push((w..w + inp * out, inp));
        self.push(Op::Dense { inp, out, w, b }, 1, 1, out);
    }

    fn conv(&mut self, cout: usize) {
        let s = ConvShape {
            h: self.h,
            w: self.w,
            cin: self.c,
            cout,
            k: KERNEL,
        };
        let w = self.param(s.kdim() * cout, true);
        let b = self.param(cout, true);
        self.net.kernels.push((w..w + s.kdim() * cout, s.kdim()));
        self.push(Op::Conv { s, w, b }, s.oh(), s.ow(), cout);
    }

    fn pool(&mut self) {
        let (h, w, c) = (self.h, self.w, self.c);
        self.push(Op::Pool { h, w, c }, h / 2, w / 2, c);
    }

    /// ELU, the tap, then the modifier: what every hidden layer ends with.
    fn activation(&mut self, name: String, modifier: Modifier) {
        let (h, w, c) = (self.h, self.w, self.c);
        self.push(Op::Elu, h, w, c);
        let info = LayerInfo {
            name,
            neurons: c,
            states_per_input: h * w,
        };
        self.net.taps.push((self.net.layers.len() - 1, info));
        match modifier {
            Modifier::None => {}
            Modifier::Dropout => self.push(Op::Dropout, h, w, c),
            Modifier::Batchnorm => {
                let gamma = self.param(c, false);
                let beta = self.param(c, false);
                let state = self.net.n_state;
                self.net.n_state += 2 * c;
                self.net.norms.push((gamma, beta, state, c));
                self.push(
                    Op::BatchNorm {
                        c,
                        gamma,
                        beta,
                        state,
                    },
                    h,
                    w,
                    c,
                );
            }
        }
    }
}

impl Net {
    /// Builds `arch` with `widths`, checking the widths.
    pub fn new(arch: Arch, widths: &[usize], modifier: Modifier) -> Result<Net, TrainError> {
        let want = arch.hidden_layers();
        if widths.len() != want {
            return Err(TrainError::WidthCount {
                arch,
                expected: want,
                found: widths.len(),
            });
        }
        if let Some(&bad) = widths.iter().find(|w| !WIDTHS.contains(w)) {
            return Err(TrainError::Width { width: bad });
        }
        let empty = Net {
            layers: Vec::new(),
            n_params: 0,
            n_state: 0,
            taps: Vec::new(),
            blocks: Vec::new(),
            kernels: Vec::new(),
            norms: Vec::new(),
        };
        let mut b = match arch {
            Arch::Lenet300 => Builder {
                net: empty,
                h: 1,
                w: 1,
                c: INPUT,
            },
            Arch::Lenet5 => Builder {
                net: empty,
                h: 28,
                w: 28,
                c: 1,
            },
        };
        match arch {
            Arch::Lenet300 => {
                for (i, &n) in widths.iter().enumerate() {
                    b.dense(n);
                    b.activation(format!("dense{}", i + 1), modifier);
                }
            }
            Arch::Lenet5 => {
                for (i, &n) in widths[..2].iter().enumerate() {
                    b.conv(n);
                    b.activation(format!("conv{}", i + 1), modifier);
                    b.pool();
                }
                b.dense(widths[2]);
                b.activation("dense3".to_string(), modifier);
            }
        }
        b.dense(CLASSES);
        Ok(b.net)
    }

    /// If layer `l` is an ELU whose output only reaches a max pooling (through nothing or a
    /// dropout, a copy at inference), the index of that pooling layer.
    pub fn pool_after_elu(&self, l: usize) -> Option<usize> {
        if !matches!(self.layers[l].op, Op::Elu) {
            return None;
        }
        let mut p = l + 1;
        while matches!(self.layers.get(p)?.op, Op::Dropout) {
            p += 1;
        }
        matches!(self.layers[p].op, Op::Pool { .. }).then_some(p)
    }

    /// Largest per-image activation, for the gradient buffers.
    fn max_size(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.out_size.max(l.in_size))
            .max()
            .unwrap_or(INPUT)
    }

    pub fn logits_layer(&self) -> usize {
        self.layers.len() - 1
    }
}

/// Per-batch batch-norm statistics shared by all shards: filled by the trainer's reductions.
#[derive(Debug, Clone, Default)]
pub(crate) struct BnBatch {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub inv_std: Vec<f32>,
    pub sum_dy: Vec<f32>,
    pub sum_dy_xhat: Vec<f32>,
}

/// What a step reads: the parameters, running statistics and this batch's shared values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub net: &'a Net,
    pub params: &'a [f32],
    pub state: &'a [f32],
    /// Training mode (batch statistics, dropout) or inference.
    pub train: bool,
    /// Per layer (indexed like `net.layers`), this batch's batch-norm values.
    pub bn: &'a [BnBatch],
    /// Images in the whole mini-batch (the loss is its mean).
    pub batch: usize,
}

/// One unit of per-shard work. The trainer runs steps in phases; a phase ends where
/// statistics must be summed over all shards (batch norm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Fwd(usize),
    /// Partial Σx, Σx² of the input of batch-norm layer `l`.
    BnStats(usize),
    Loss,
    Bwd(usize),
    /// Partial Σdy, Σdy·x̂ of batch-norm layer `l` (also its γ, β gradients).
    BnGrads(usize),
}

impl Net {
    /// Training steps in phases; every phase but the last ends with a `BnStats`/`BnGrads`
    /// step whose partials the trainer reduces before the next phase.
    pub fn phases(&self) -> Vec<Vec<Step>> {
        let mut phases = vec![Vec::new()];
        for (l, layer) in self.layers.iter().enumerate() {
            if matches!(layer.op, Op::BatchNorm { .. }) {
                phases.last_mut().expect("phase").push(Step::BnStats(l));
                phases.push(Vec::new());
            }
            phases.last_mut().expect("phase").push(Step::Fwd(l));
        }
        phases.last_mut().expect("phase").push(Step::Loss);
        for (l, layer) in self.layers.iter().enumerate().rev() {
            if matches!(layer.op, Op::BatchNorm { .. }) {
                phases.last_mut().expect("phase").push(Step::BnGrads(l));
                phases.push(Vec::new());
            }
            phases.last_mut().expect("phase").push(Step::Bwd(l));
        }
        phases
    }
}

/// Identifies a shard's dropout stream: masks depend on (seed, epoch, batch, shard, layer)
/// only, never on which thread runs the shard.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DropoutKey {
    pub seed: u64,
    pub epoch: u64,
    pub batch: u64,
    pub shard: u64,
}

/// Inference workspaces kept between calls, so evaluating many chunks (from several
/// threads, every epoch or every `forward_hidden` call) does not allocate and zero the
/// buffers each time.
#[derive(Debug, Default)]
pub(crate) struct WorkspacePool(std::sync::Mutex<Vec<Workspace>>);

impl WorkspacePool {
    /// A kept inference workspace holding at least `n` images, or a new one.
    pub fn take(&self, net: &Net, n: usize) -> Workspace {
        let mut spare = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match spare.iter().position(|w| w.cap() >= n) {
            Some(i) => spare.swap_remove(i),
            None => {
                drop(spare);
                Workspace::new(net, n.max(1), false)
            }
        }
    }

    /// Keeps `ws` for a later [`WorkspacePool::take`]: a few (one per worker thread,
    /// typically); the rest are dropped.
    pub fn give(&self, ws: Workspace) {
        let mut spare = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < 16 {
            spare.push(ws);
        }
    }
}

/// Buffers for running up to `cap` images through a net.
#[derive(Debug)]
pub(crate) struct Workspace {
    cap: usize,
    /// Images in use now.
    pub n: usize,
    pub input: Vec<f32>,
    pub labels: Vec<u8>,
    outs: Vec<Vec<f32>>,
    arg: Vec<Vec<u8>>,
    mask: Vec<Vec<u64>>,
    xhat: Vec<Vec<f32>>,
    /// Per layer: this shard's partial sums for a batch-norm reduction.
    pub bn_part: Vec<Vec<f64>>,
    /// Per convolution: its own im2col buffer, so the backward pass can reuse the forward
    /// pass's when the shard fits one chunk.
    cols: Vec<Vec<f32>>,
    g: [Vec<f32>; 2],
    cur: usize,
    /// This shard's parameter gradient (training workspaces only).
    pub grad: Vec<f32>,
    pub loss: f64,
    pub correct: usize,
    pub key: DropoutKey,
}

impl Workspace {
    /// A workspace for `cap` images; `train` adds gradient and backward buffers.
    pub fn new(net: &Net, cap: usize, train: bool) -> Workspace {
        let per = |f: &dyn Fn(&Layer) -> usize| net.layers.iter().map(f).collect::<Vec<_>>();
        let outs = per(&|l| cap * l.out_size)
            .into_iter()
            .map(|n| vec![0.0; n])
            .collect();
        // Argmax of each pooling window, for the backward pass only.
        let arg = per(&|l| {
            if train && matches!(l.op, Op::Pool { .. }) {
                cap * l.out_size
            } else {
                0
            }
        })
        .into_iter()
        .map(|n| vec![0u8; n])
        .collect();
        let mask = per(&|l| {
            if train && matches!(l.op, Op::Dropout) {
                (cap * l.out_size).div_ceil(64)
            } else {
                0
            }
        })
        .into_iter()
        .map(|n| vec![0u64; n])
        .collect();
        let xhat = per(&|l| {
            if train && matches!(l.op, Op::BatchNorm { .. }) {
                cap * l.out_size
            } else {
                0
            }
        })
        .into_iter()
        .map(|n| vec![0.0; n])
        .collect();
        let bn_part = per(&|l| {
            if let Op::BatchNorm { c, .. } = l.op {
                2 * c
            } else {
                0
            }
        })
        .into_iter()
        .map(|n| vec![0.0; n])
        .collect();
        let gsize = if train { cap * net.max_size() } else { 0 };
        Workspace {
            cap,
            n: 0,
            input: vec![0.0; cap * INPUT],
            labels: vec![0; cap],
            outs,
            arg,
            mask,
            xhat,
            bn_part,
            // At inference, a convolution the direct kernels take uses one image's worth
            // of scratch: a full-size buffer would only spread the touched ones over more
            // pages, each zeroed whole on first touch.
            cols: per(&|l| match &l.op {
                Op::Conv { s, .. } if train || conv::forward_uses_im2col(s) => s.col_len(cap),
                Op::Conv { s, .. } => s.col_len(1),
                _ => 0,
            })
            .into_iter()
            .map(|n| vec![0.0; n])
            .collect(),
            g: [vec![0.0; gsize], vec![0.0; gsize]],
            cur: 0,
            grad: if train {
                vec![0.0; net.n_params]
            } else {
                Vec::new()
            },
            loss: 0.0,
            correct: 0,
            key: DropoutKey::default(),
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Output of layer `l` for the `n` images in use.
    pub fn out(&self, net: &Net, l: usize) -> &[f32] {
        &self.outs[l][..self.n * net.layers[l].out_size]
    }

    /// Inference of ELU layer `elu` and pooling layer `pool` (see [`Net::pool_after_elu`])
    /// in the other order: pooling the ELU's input, then ELU on the quarter as many pooled
    /// values. The same bits: the ELU is non-decreasing (checked over every negative
    /// `f32`, see `elu::tests`), keeps NaN and never returns −0, so it commutes with the
    /// first-maximum pooling. The ELU layer's own output is not computed.
    pub fn pool_then_elu(&mut self, net: &Net, elu: usize, pool: usize) {
        let n = self.n;
        let Op::Pool { h, w, c } = net.layers[pool].op else {
            unreachable!("pool_then_elu: layer {pool} is not a pooling layer")
        };
        let (before, after) = self.outs.split_at_mut(pool);
        let x = &before[elu - 1][..n * net.layers[elu].in_size];
        let y = &mut after[0][..n * net.layers[pool].out_size];
        pool::forward(x, n, h, w, c, y, None);
        elu::forward_in_place(y);
    }

    /// Runs one step on this shard.
    pub fn step(&mut self, step: Step, ctx: &Ctx<'_>) {
        match step {
            Step::Fwd(l) => self.forward(l, ctx),
            Step::BnStats(l) => {
                let layer = &ctx.net.layers[l];
                let rows = self.n * layer.positions;
                let x = if l == 0 {
                    &self.input[..]
                } else {
                    &self.outs[l - 1][..]
                };
                batchnorm::partial_stats(x, rows, layer.channels, &mut self.bn_part[l]);
            }
            Step::Loss => {
                let l = ctx.net.logits_layer();
                let n = self.n;
                let scale = 1.0 / ctx.batch as f32;
                let (loss, correct) = loss::softmax_xent(
                    &self.outs[l][..n * CLASSES],
                    &self.labels[..n],
                    CLASSES,
                    scale,
                    &mut self.g[0][..n * CLASSES],
                );
                self.loss = loss;
                self.correct = correct;
                self.cur = 0;
            }
            Step::Bwd(l) => self.backward(l, ctx),
            Step::BnGrads(l) => {
                let layer = &ctx.net.layers[l];
                let Op::BatchNorm { c, gamma, beta, .. } = layer.op else {
                    unreachable!("BnGrads on a non-batch-norm layer")
                };
                let rows = self.n * layer.positions;
                let part = &mut self.bn_part[l];
                batchnorm::partial_grads(&self.g[self.cur], &self.xhat[l], rows, c, part);
                for j in 0..c {
                    self.grad[beta + j] = part[j] as f32;
                    self.grad[gamma + j] = part[c + j] as f32;
                }
            }
        }
    }

    fn forward(&mut self, l: usize, ctx: &Ctx<'_>) {
        let layer = &ctx.net.layers[l];
        let n = self.n;
        let p = ctx.params;
        let (before, after) = self.outs.split_at_mut(l);
        let x = if l == 0 {
            &self.input[..n * layer.in_size]
        } else {
            &before[l - 1][..n * layer.in_size]
        };
        let y = &mut after[0][..n * layer.out_size];
        match &layer.op {
            Op::Dense { inp, out, w, b } => {
                dense::forward(x, &p[*w..w + inp * out], &p[*b..b + out], n, *inp, *out, y)
            }
            Op::Conv { s, w, b } => conv::forward(
                x,
                &p[*w..w + s.kdim() * s.cout],
                &p[*b..b + s.cout],
                n,
                s,
                &mut self.cols[l],
                y,
            ),
            Op::Elu => elu::forward(x, y),
            Op::Pool { h, w, c } => {
                let arg = ctx.train.then_some(&mut self.arg[l][..]);
                pool::forward(x, n, *h, *w, *c, y, arg)
            }
            Op::Dropout if ctx.train => {
                let k = self.key;
                let mut seed = [0u8; 32];
                for (i, v) in [k.seed, k.epoch, k.batch, (k.shard << 16) | l as u64]
                    .iter()
                    .enumerate()
                {
                    seed[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
                }
                let mut rng = ChaCha8Rng::from_seed(seed);
                dropout::draw_mask(&mut rng, y.len(), &mut self.mask[l]);
                dropout::forward(x, &self.mask[l], y);
            }
            Op::Dropout => y.copy_from_slice(x),
            Op::BatchNorm {
                c,
                gamma,
                beta,
                state,
            } => {
                let rows = n * layer.positions;
                let (g, bt) = (&p[*gamma..gamma + c], &p[*beta..beta + c]);
                if ctx.train {
                    let bn = &ctx.bn[l];
                    batchnorm::normalize(
                        x,
                        rows,
                        *c,
                        &bn.mean,
                        &bn.inv_std,
                        g,
                        bt,
                        Some(&mut self.xhat[l]),
                        y,
                    );
                } else {
                    let (mean, var) = (
                        &ctx.state[*state..state + c],
                        &ctx.state[state + c..state + 2 * c],
                    );
                    let (scale, shift) = batchnorm::inference_affine(g, bt, mean, var);
                    for (yr, xr) in y.chunks_exact_mut(*c).zip(x.chunks_exact(*c)) {
                        for j in 0..*c {
                            yr[j] = xr[j] * scale[j] + shift[j];
                        }
                    }
                }
            }
        }
    }

    fn backward(&mut self, l: usize, ctx: &Ctx<'_>) {
        let layer = &ctx.net.layers[l];
        let n = self.n;
        let p = ctx.params;
        let [g0, g1] = &mut self.g;
        let (dy, dx) = if self.cur == 0 {
            (&*g0, g1)
        } else {
            (&*g1, g0)
        };
        let dy = &dy[..n * layer.out_size];
        let x = if l == 0 {
            &self.input[..n * layer.in_size]
        } else {
            &self.outs[l - 1][..n * layer.in_size]
        };
        let y = &self.outs[l][..n * layer.out_size];
        let want_dx = l > 0;
        let dxs = &mut dx[..n * layer.in_size];
        let grad = &mut self.grad;
        match &layer.op {
            Op::Dense { inp, out, w, b } => {
                let (gw, gb) = grad[*w..b + out].split_at_mut(inp * out);
                dense::backward(
                    x,
                    &p[*w..w + inp * out],
                    dy,
                    n,
                    *inp,
                    *out,
                    gw,
                    gb,
                    want_dx.then_some(dxs),
                );
            }
            Op::Conv { s, w, b } => {
                let kw = s.kdim() * s.cout;
                let (gw, gb) = grad[*w..b + s.cout].split_at_mut(kw);
                conv::backward(
                    x,
                    &p[*w..w + kw],
                    dy,
                    n,
                    s,
                    &mut self.cols[l],
                    // Training runs backward right after forward on the same images.
                    true,
                    gw,
                    gb,
                    want_dx.then_some(dxs),
                );
            }
            Op::Elu => elu::backward(y, dy, dxs),
            Op::Pool { h, w, c } => pool::backward(dy, &self.arg[l], n, *h, *w, *c, dxs),
            Op::Dropout => dropout::backward(dy, &self.mask[l], dxs),
            Op::BatchNorm { c, gamma, .. } => {
                let bn = &ctx.bn[l];
                batchnorm::backward_dx(
                    dy,
                    &self.xhat[l],
                    n * layer.positions,
                    *c,
                    &p[*gamma..gamma + c],
                    &bn.inv_std,
                    &bn.sum_dy,
                    &bn.sum_dy_xhat,
                    ctx.batch * layer.positions,
                    dxs,
                );
            }
        }
        self.cur = 1 - self.cur;
    }
}
