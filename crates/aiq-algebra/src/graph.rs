//! Layer graphs, the local values of each layer (paper §5) and the layer algebra that
//! combines them into cumulative and global values (paper §4, §6).

use serde::Serialize;

use crate::AlgebraError;

/// The shape of the data between layers: `channels × height × width`. A flat vector of `n`
/// values is `n × 1 × 1`, so a dense layer's input size is simply [`Shape::len`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Shape {
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Shape {
            channels,
            height,
            width,
        }
    }

    /// A flat vector of `n` values.
    pub const fn flat(n: usize) -> Self {
        Shape::new(n, 1, 1)
    }

    /// Number of values (the paper's `D` of a dense layer).
    pub const fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Always false for a valid shape; present for the `len` convention.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Spatial size of one feature map, the paper's `S = D × P` (eq. 8).
    pub const fn spatial(&self) -> usize {
        self.height * self.width
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.height == 1 && self.width == 1 {
            write!(f, "{}", self.channels)
        } else {
            write!(f, "{}×{}×{}", self.height, self.width, self.channels)
        }
    }
}

/// Activation functions with the paper's data-driven local values (§5.6–5.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// §5.6: p = 0.584, c = 1.713.
    Relu,
    /// A ReLU variant: §5.6 gives it ReLU's values.
    Elu,
    /// A ReLU variant: §5.6 gives it ReLU's values.
    LeakyRelu,
    /// §5.7: p = 0.628, c = 1.592.
    Tanh,
    /// §5.8: p = 0.208, c = 4.802.
    Sigmoid,
    /// §5.9: p = 1.342e-5, c = 7.454e4 (the paper's values; not exact inverses of each other).
    Softmax,
}

impl Activation {
    /// `(intrinsic power, complexity)` as printed in the paper.
    pub const fn values(self) -> (f64, f64) {
        match self {
            Activation::Relu | Activation::Elu | Activation::LeakyRelu => (0.584, 1.713),
            Activation::Tanh => (0.628, 1.592),
            Activation::Sigmoid => (0.208, 4.802),
            Activation::Softmax => (1.342e-5, 7.454e4),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Elu => "elu",
            Activation::LeakyRelu => "leaky_relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Softmax => "softmax",
        }
    }
}

/// Max or average pooling: the paper (§5.4) gives both the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolOp {
    Max,
    Avg,
}

/// What a node of the graph does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LayerKind {
    /// The network input: cumulative power and complexity start at `u = 1` (§6.1).
    Input,
    /// 2-D convolution with `filters` kernels of `kernel = (K_H, K_W)`, zero `padding` on
    /// every side: eq. 8–11.
    Conv2d {
        filters: usize,
        kernel: (usize, usize),
        stride: usize,
        padding: usize,
    },
    /// Pooling without padding, a convolution by §5.4 (see the crate docs for its `n_k`).
    Pool2d {
        op: PoolOp,
        kernel: (usize, usize),
        stride: usize,
    },
    /// Fully connected layer to `units` outputs from every input value: eq. 15–16.
    Dense {
        units: usize,
    },
    Activation(Activation),
    /// §5.10: changes nothing.
    BatchNorm,
    /// §5.11: changes nothing (the rate only matters in training).
    Dropout {
        rate: f64,
    },
    /// A reshape to a flat vector: moves no data, changes nothing.
    Flatten,
    /// Element-wise sum of two or more same-shaped inputs (a residual merge): the inputs'
    /// cumulative values merge by eq. 19–20; the sum itself changes nothing.
    Add,
}

impl LayerKind {
    /// Short name used in tables and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            LayerKind::Input => "input",
            LayerKind::Conv2d { .. } => "conv2d",
            LayerKind::Pool2d {
                op: PoolOp::Max, ..
            } => "max_pool2d",
            LayerKind::Pool2d {
                op: PoolOp::Avg, ..
            } => "avg_pool2d",
            LayerKind::Dense { .. } => "dense",
            LayerKind::Activation(a) => a.name(),
            LayerKind::BatchNorm => "batchnorm",
            LayerKind::Dropout { .. } => "dropout",
            LayerKind::Flatten => "flatten",
            LayerKind::Add => "add",
        }
    }

    /// The output shape for `input`, or why the layer cannot apply to it.
    fn output_shape(&self, input: Shape) -> Result<Shape, String> {
        let window = |kernel: (usize, usize), stride: usize, padding: usize| {
            let (kh, kw) = kernel;
            if kh == 0 || kw == 0 || stride == 0 {
                return Err(format!(
                    "kernel {kh}×{kw} and stride {stride} must be positive"
                ));
            }
            let (h, w) = (input.height + 2 * padding, input.width + 2 * padding);
            if kh > h || kw > w {
                return Err(format!(
                    "kernel {kh}×{kw} is larger than its padded {h}×{w} input"
                ));
            }
            Ok(((h - kh) / stride + 1, (w - kw) / stride + 1))
        };
        match *self {
            LayerKind::Input => Err("only the first node is an input".to_string()),
            LayerKind::Conv2d {
                filters,
                kernel,
                stride,
                padding,
            } => {
                if filters == 0 {
                    return Err("a convolution needs at least one filter".to_string());
                }
                let (h, w) = window(kernel, stride, padding)?;
                Ok(Shape::new(filters, h, w))
            }
            LayerKind::Pool2d { kernel, stride, .. } => {
                let (h, w) = window(kernel, stride, 0)?;
                Ok(Shape::new(input.channels, h, w))
            }
            LayerKind::Dense { units: 0 } => Err("a dense layer needs at least one unit".into()),
            LayerKind::Dense { units } => Ok(Shape::flat(units)),
            LayerKind::Dropout { rate } if !(0.0..1.0).contains(&rate) => {
                Err(format!("dropout rate must be in [0, 1), found {rate}"))
            }
            LayerKind::Flatten => Ok(Shape::flat(input.len())),
            LayerKind::Activation(_) | LayerKind::BatchNorm | LayerKind::Dropout { .. } => {
                Ok(input)
            }
            LayerKind::Add => Ok(input),
        }
    }

    /// The local transfer function `G(L)` of the layer (§5), `None` for layers that change
    /// nothing (they are transparent to the algebra).
    fn transfer(&self, input: Shape, output: Shape) -> Option<Local> {
        // Eq. 8–11 with C_o = 1: p = n_k·S_o/(K·S_i), c = n_k·log2 K.
        let conv = |n_k: usize, (kh, kw): (usize, usize)| {
            let k = (kh * kw) as f64;
            Local {
                intrinsic_power: n_k as f64 * output.spatial() as f64
                    / (k * input.spatial() as f64),
                complexity: n_k as f64 * k.log2(),
            }
        };
        match *self {
            LayerKind::Conv2d {
                filters, kernel, ..
            } => Some(conv(filters, kernel)),
            // One K-element filter per feature map: n_k = channels (crate docs).
            LayerKind::Pool2d { kernel, .. } => Some(conv(output.channels, kernel)),
            LayerKind::Dense { units } => {
                // Eq. 15–16.
                let (d_out, d_in) = (units as f64, input.len() as f64);
                Some(Local {
                    intrinsic_power: d_out / d_in,
                    complexity: (d_out * d_in).log2(),
                })
            }
            LayerKind::Activation(a) => {
                let (intrinsic_power, complexity) = a.values();
                Some(Local {
                    intrinsic_power,
                    complexity,
                })
            }
            LayerKind::Input
            | LayerKind::BatchNorm
            | LayerKind::Dropout { .. }
            | LayerKind::Flatten
            | LayerKind::Add => None,
        }
    }
}

/// A layer's local values (§5).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Local {
    intrinsic_power: f64,
    complexity: f64,
}

/// Index of a node in its [`Graph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeId(usize);

#[derive(Debug, Clone)]
struct Node {
    name: String,
    kind: LayerKind,
    inputs: Vec<NodeId>,
    shape: Shape,
    transfer: Option<Local>,
}

/// A directed acyclic graph of layers. Nodes can only take earlier nodes as inputs, so the
/// order of insertion is a topological order and cycles cannot be built. The first node is
/// the input; the last node added is the output, where the global values are read.
///
/// A node may feed any number of later nodes (a branch keeps the cumulative values, §6.1);
/// only [`LayerKind::Add`] takes several inputs (a merge, eq. 19–20).
#[derive(Debug, Clone)]
pub struct Graph {
    nodes: Vec<Node>,
}

impl Graph {
    /// A graph holding only its input node, named `input`.
    pub fn new(input: Shape) -> Result<Self, AlgebraError> {
        if input.is_empty() {
            return Err(AlgebraError::Layer {
                name: "input".into(),
                detail: format!("input shape {input} has no values"),
            });
        }
        Ok(Graph {
            nodes: vec![Node {
                name: "input".into(),
                kind: LayerKind::Input,
                inputs: Vec::new(),
                shape: input,
                transfer: None,
            }],
        })
    }

    /// The input node.
    pub fn input(&self) -> NodeId {
        NodeId(0)
    }

    /// The last node added (the output).
    pub fn last(&self) -> NodeId {
        NodeId(self.nodes.len() - 1)
    }

    /// Output shape of `node`.
    pub fn shape(&self, node: NodeId) -> Shape {
        self.nodes[node.0].shape
    }

    /// Adds a layer fed by `inputs` (earlier nodes of this graph) and returns its id.
    pub fn add(
        &mut self,
        name: &str,
        kind: LayerKind,
        inputs: &[NodeId],
    ) -> Result<NodeId, AlgebraError> {
        let err = |detail: String| AlgebraError::Layer {
            name: name.to_string(),
            detail,
        };
        if let Some(bad) = inputs.iter().find(|id| id.0 >= self.nodes.len()) {
            return Err(err(format!(
                "input node {} does not exist (the graph has {} nodes)",
                bad.0,
                self.nodes.len()
            )));
        }
        let input = match (kind, inputs) {
            (LayerKind::Add, [first, rest @ ..]) if !rest.is_empty() => {
                let shape = self.shape(*first);
                if let Some(other) = rest.iter().find(|id| self.shape(**id) != shape) {
                    return Err(err(format!(
                        "add needs inputs of one shape, found {shape} ({}) and {} ({})",
                        self.nodes[first.0].name,
                        self.shape(*other),
                        self.nodes[other.0].name
                    )));
                }
                shape
            }
            (LayerKind::Add, _) => {
                return Err(err(format!(
                    "add needs at least 2 inputs, found {}",
                    inputs.len()
                )))
            }
            (_, [only]) => self.shape(*only),
            _ => return Err(err(format!("needs 1 input, found {}", inputs.len()))),
        };
        let shape = kind.output_shape(input).map_err(err)?;
        self.nodes.push(Node {
            name: name.to_string(),
            kind,
            inputs: inputs.to_vec(),
            shape,
            transfer: kind.transfer(input, shape),
        });
        Ok(self.last())
    }

    /// Adds a layer fed by the last node: the common sequential case.
    pub fn push(&mut self, name: &str, kind: LayerKind) -> Result<NodeId, AlgebraError> {
        let last = self.last();
        self.add(name, kind, &[last])
    }

    /// Applies the layer algebra: local values, cumulative values along the graph and the
    /// global values at the output.
    pub fn analyze(&self) -> Analysis {
        // Cumulative (power, complexity) at each node's output.
        let mut cumulative: Vec<(f64, f64)> = Vec::with_capacity(self.nodes.len());
        let mut layers = Vec::with_capacity(self.nodes.len() - 1);
        let mut gsc = 0.0;
        for node in &self.nodes {
            // What enters the node: u = 1 at the input (§6.1); one input passes its values
            // on; a merge takes the largest power (eq. 19) and the sum of complexities (eq. 20).
            let entering = match node.inputs.as_slice() {
                [] => (1.0, 1.0),
                [only] => cumulative[only.0],
                many => many
                    .iter()
                    .map(|id| cumulative[id.0])
                    .fold((f64::NEG_INFINITY, 0.0), |(p, c), (pi, ci)| {
                        (p.max(pi), c + ci)
                    }),
            };
            // Eq. 17–18 for both metrics: multiply by the local transfer function.
            let out = match node.transfer {
                Some(t) => (entering.0 * t.intrinsic_power, entering.1 * t.complexity),
                None => entering,
            };
            cumulative.push(out);
            if node.kind == LayerKind::Input {
                continue;
            }
            let local = node.transfer.unwrap_or(Local {
                intrinsic_power: 1.0,
                complexity: 0.0,
            });
            gsc += local.complexity; // eq. 3
            layers.push(LayerRow {
                name: node.name.clone(),
                kind: node.kind.name(),
                output_shape: node.shape,
                complexity: local.complexity,
                intrinsic_power: local.intrinsic_power,
                cumulative_complexity: out.1,
                cumulative_intrinsic_power: out.0,
            });
        }
        let (gcip, gcc) = cumulative[cumulative.len() - 1];
        Analysis {
            layers,
            gcc,
            gcip,
            gsc,
            gwc: gcc * gsc,
        }
    }
}

/// One layer's local and cumulative values. Layers that change nothing report the neutral
/// values `complexity = 0` (adds nothing to GSC) and `intrinsic_power = 1`, and pass their
/// input's cumulative values on unchanged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerRow {
    pub name: String,
    pub kind: &'static str,
    pub output_shape: Shape,
    pub complexity: f64,
    pub intrinsic_power: f64,
    pub cumulative_complexity: f64,
    pub cumulative_intrinsic_power: f64,
}

/// The layer algebra of a graph: one row per layer (the input node excluded) and the global
/// values at the output node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub layers: Vec<LayerRow>,
    /// Global cumulative complexity `C^L` (§6.2).
    pub gcc: f64,
    /// Global cumulative intrinsic power `P^L` (§6.1).
    pub gcip: f64,
    /// Global sum complexity (eq. 3): the local complexities summed, topology ignored.
    pub gsc: f64,
    /// Global weighted complexity `C_W = C^L · C_GS` (§7.4).
    pub gwc: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
    }

    macro_rules! assert_close {
        ($a:expr, $b:expr) => {{
            let (a, b) = ($a, $b);
            assert!(close(a, b), "{} = {a}, expected {b}", stringify!($a));
        }};
    }

    #[test]
    fn conv_eq_8_to_11() {
        // 28×28×1 → conv 5×5, 3 filters, valid → 24×24×3.
        // p = n_k·S_o/(K·S_i) = 3·576/(25·784) = 1728/19600 = 0.088163265306…
        // c = n_k·log2 K = 3·log2 25 = 3·4.643856189774724 = 13.931568569324172
        let mut g = Graph::new(Shape::new(1, 28, 28)).unwrap();
        let conv = LayerKind::Conv2d {
            filters: 3,
            kernel: (5, 5),
            stride: 1,
            padding: 0,
        };
        let id = g.push("conv", conv).unwrap();
        assert_eq!(g.shape(id), Shape::new(3, 24, 24));
        let a = g.analyze();
        assert_close!(a.layers[0].intrinsic_power, 0.088_163_265_306_122_45);
        assert_close!(a.layers[0].complexity, 13.931_568_569_324_172);
        // A single layer after u = 1: cumulative = local, GSC = c, GWC = c².
        assert_close!(a.gcip, 0.088_163_265_306_122_45);
        assert_close!(a.gcc, 13.931_568_569_324_172);
        assert_close!(a.gsc, 13.931_568_569_324_172);
        assert_close!(a.gwc, 13.931_568_569_324_172 * 13.931_568_569_324_172);
    }

    #[test]
    fn strided_padded_conv_uses_output_size() {
        // 1×10×10 → conv 3×3, stride 2, padding 1, 2 filters: (10+2−3)/2+1 = 5 → 5×5×2.
        // p = 2·25/(9·100) = 50/900 = 0.0555…; c = 2·log2 9 = 2·3.169925001442312.
        let mut g = Graph::new(Shape::new(1, 10, 10)).unwrap();
        let kind = LayerKind::Conv2d {
            filters: 2,
            kernel: (3, 3),
            stride: 2,
            padding: 1,
        };
        let id = g.push("c", kind).unwrap();
        assert_eq!(g.shape(id), Shape::new(2, 5, 5));
        let row = &g.analyze().layers[0];
        assert_close!(row.intrinsic_power, 0.055_555_555_555_555_55);
        assert_close!(row.complexity, 6.339_850_002_884_624);
    }

    #[test]
    fn pooling_is_a_convolution_with_one_filter_per_channel() {
        // 24×24×3 → max pool 2×2 stride 2 → 12×12×3; n_k = 3 channels, K = 4.
        // p = 3·144/(4·576) = 432/2304 = 0.1875; c = 3·log2 4 = 6.
        let mut g = Graph::new(Shape::new(3, 24, 24)).unwrap();
        let pool = LayerKind::Pool2d {
            op: PoolOp::Max,
            kernel: (2, 2),
            stride: 2,
        };
        let id = g.push("pool", pool).unwrap();
        assert_eq!(g.shape(id), Shape::new(3, 12, 12));
        let row = &g.analyze().layers[0];
        assert_close!(row.intrinsic_power, 0.1875);
        assert_close!(row.complexity, 6.0);
        // Average pooling has the same values (§5.4).
        let mut g = Graph::new(Shape::new(3, 24, 24)).unwrap();
        let avg = LayerKind::Pool2d {
            op: PoolOp::Avg,
            kernel: (2, 2),
            stride: 2,
        };
        g.push("pool", avg).unwrap();
        assert_eq!(g.analyze().layers[0].intrinsic_power, 0.1875);
    }

    #[test]
    fn dense_eq_15_16_on_any_shape() {
        // 4×4×9 = 144 values → dense 4: p = 4/144 = 0.02777…; c = log2 576 = 9.169925001442312.
        let mut g = Graph::new(Shape::new(9, 4, 4)).unwrap();
        g.push("fc", LayerKind::Dense { units: 4 }).unwrap();
        let row = &g.analyze().layers[0];
        assert_close!(row.intrinsic_power, 0.027_777_777_777_777_776);
        assert_close!(row.complexity, 9.169_925_001_442_312);
    }

    #[test]
    fn activations_take_the_papers_values() {
        for (act, p, c) in [
            (Activation::Relu, 0.584, 1.713),
            (Activation::Elu, 0.584, 1.713),
            (Activation::LeakyRelu, 0.584, 1.713),
            (Activation::Tanh, 0.628, 1.592),
            (Activation::Sigmoid, 0.208, 4.802),
            (Activation::Softmax, 1.342e-5, 74540.0),
        ] {
            let mut g = Graph::new(Shape::flat(7)).unwrap();
            g.push("a", LayerKind::Activation(act)).unwrap();
            let row = &g.analyze().layers[0];
            assert_eq!((row.intrinsic_power, row.complexity), (p, c), "{act:?}");
        }
    }

    #[test]
    fn chain_multiplies_both_metrics() {
        // 784 → dense 300 → relu → dense 10 → softmax.
        // P = (300/784)·0.584·(10/300)·1.342e-5 = 0.3826530612·0.584·0.0333333·1.342e-5
        //   = 9.996531e-8
        // C = log2(235200)·1.713·log2(3000)·74540
        //   = 17.84352853461109·1.713·11.550746785383243·74540 = 2.631707…e7
        // GSC = 17.84352853461109 + 1.713 + 11.550746785383243 + 74540 = 74571.10727531999
        let mut g = Graph::new(Shape::flat(784)).unwrap();
        g.push("d1", LayerKind::Dense { units: 300 }).unwrap();
        g.push("a1", LayerKind::Activation(Activation::Relu))
            .unwrap();
        g.push("d2", LayerKind::Dense { units: 10 }).unwrap();
        g.push("sm", LayerKind::Activation(Activation::Softmax))
            .unwrap();
        let a = g.analyze();
        assert_close!(a.gcip, (300.0 / 784.0) * 0.584 * (10.0 / 300.0) * 1.342e-5);
        assert!((a.gcip / 9.996_531e-8 - 1.0).abs() < 1e-6, "{}", a.gcip);
        assert_close!(
            a.gcc,
            17.843_528_534_611_09 * 1.713 * 11.550_746_785_383_243 * 74540.0
        );
        assert!((a.gcc / 2.631_707e7 - 1.0).abs() < 1e-6, "{}", a.gcc);
        assert_close!(a.gsc, 74_571.107_275_319_99);
        assert_close!(a.gwc, a.gcc * a.gsc);
        // Cumulative values after the first two layers: 300/784 and 300/784·0.584.
        assert_close!(
            a.layers[1].cumulative_intrinsic_power,
            0.382_653_061_224_489_8 * 0.584
        );
        assert_close!(
            a.layers[1].cumulative_complexity,
            17.843_528_534_611_09 * 1.713
        );
    }

    #[test]
    fn transparent_layers_change_nothing() {
        // The neutral element of the products (eq. 18) is 1 and that of the sum (eq. 3) is 0,
        // so a layer that "changes nothing" cannot be one number: it is skipped by the
        // products and adds 0 to GSC.
        let build = |extra: &[LayerKind]| {
            let mut g = Graph::new(Shape::new(1, 8, 8)).unwrap();
            for k in extra {
                g.push("x", *k).unwrap();
            }
            g.push("d", LayerKind::Dense { units: 5 }).unwrap();
            for k in extra {
                g.push("x", *k).unwrap();
            }
            g.push("a", LayerKind::Activation(Activation::Tanh))
                .unwrap();
            g.analyze()
        };
        let plain = build(&[]);
        let padded = build(&[
            LayerKind::BatchNorm,
            LayerKind::Dropout { rate: 0.5 },
            LayerKind::Flatten,
        ]);
        assert_eq!(plain.layers.len() + 6, padded.layers.len());
        assert_eq!(
            (plain.gcc, plain.gcip, plain.gsc, plain.gwc),
            (padded.gcc, padded.gcip, padded.gsc, padded.gwc)
        );
        // 64 → 5: p = 5/64, c = log2 320 = 8.321928094887363; then tanh 0.628 / 1.592.
        assert_close!(plain.gcip, 5.0 / 64.0 * 0.628);
        assert_close!(plain.gcc, 8.321_928_094_887_363 * 1.592);
        for row in padded.layers.iter().filter(|r| r.name == "x") {
            assert_eq!((row.intrinsic_power, row.complexity), (1.0, 0.0));
        }
        // A batch norm after the dense layer carries the dense layer's cumulative values.
        assert_eq!(padded.layers[4].kind, "batchnorm");
        assert_close!(padded.layers[4].cumulative_intrinsic_power, 5.0 / 64.0);
        assert_close!(
            padded.layers[4].cumulative_complexity,
            8.321_928_094_887_363
        );
    }

    /// A ResNet-style block with an identity shortcut:
    /// input 8×8×1 → stem conv 3×3 pad 1, 4 filters → relu ─┬→ conv → relu → conv ─→ add → relu
    ///                                                      └──────── shortcut ───────↗
    fn resnet_block() -> Graph {
        let conv = LayerKind::Conv2d {
            filters: 4,
            kernel: (3, 3),
            stride: 1,
            padding: 1,
        };
        let relu = LayerKind::Activation(Activation::Relu);
        let mut g = Graph::new(Shape::new(1, 8, 8)).unwrap();
        g.push("stem", conv).unwrap();
        let branch = g.push("stem_relu", relu).unwrap();
        g.push("conv_a", conv).unwrap();
        g.push("relu_a", relu).unwrap();
        let residual = g.push("conv_b", conv).unwrap();
        g.add("add", LayerKind::Add, &[residual, branch]).unwrap();
        g.push("out_relu", relu).unwrap();
        g
    }

    #[test]
    fn residual_merge_takes_max_power_and_sums_complexity() {
        // Each 3×3 'same' conv with 4 filters on 8×8: p = 4·64/(9·64) = 4/9,
        // c = 4·log2 9 = 12.679700005769249. With relu: a conv+relu pair multiplies power by
        // g_p = 4/9·0.584 = 0.25955555… and complexity by g_c = 12.679700005769249·1.713
        // = 21.720326109882724.
        // Shortcut (after stem+relu): P_s = g_p = 0.259555…, C_s = g_c = 21.7203261…
        // Residual (after conv_b):   P_r = g_p²·4/9 = 0.02994…, C_r = g_c²·12.6797
        //                            = 471.7725663…·12.6797 = 5981.93…
        // Add (eq. 19–20): P = max(P_s, P_r) = P_s; C = C_s + C_r.
        // Output relu: P·0.584, C·1.713.
        let a = resnet_block().analyze();
        let g_p = 4.0 / 9.0 * 0.584;
        let g_c = 12.679_700_005_769_249 * 1.713;
        let (p_s, c_s) = (g_p, g_c);
        let (p_r, c_r) = (g_p * g_p * 4.0 / 9.0, g_c * g_c * 12.679_700_005_769_249);
        assert!(p_s > p_r, "the shortcut keeps the stronger power");
        let add = a.layers.iter().find(|r| r.name == "add").unwrap();
        assert_eq!((add.intrinsic_power, add.complexity), (1.0, 0.0));
        assert_close!(add.cumulative_intrinsic_power, p_s);
        assert_close!(add.cumulative_intrinsic_power, 0.259_555_555_555_555_6);
        assert_close!(add.cumulative_complexity, c_s + c_r);
        assert!((c_r - 5981.9).abs() < 0.1, "{c_r}");
        assert_close!(a.gcip, p_s * 0.584);
        assert_close!(a.gcc, (c_s + c_r) * 1.713);
        // GSC ignores the topology: 3 convs + 3 relus, each counted once.
        assert_close!(a.gsc, 3.0 * 12.679_700_005_769_249 + 3.0 * 1.713);
        assert_close!(a.gwc, a.gcc * a.gsc);
    }

    #[test]
    fn merge_of_two_weighted_branches() {
        // Diamond: 16 → dense 8 (p 1/2, c log2 128 = 7) and 16 → dense 8 → dense 8
        // (p 1/2·1 = 1/2 … make the second differ): 16 → dense 4 → dense 8
        // (p 4/16·8/4 = 1/2, c log2 64 · log2 32 = 6·5 = 30). Add: P = max(1/2, 1/2) = 1/2,
        // C = 7 + 30 = 37. Then a sigmoid: P = 0.104, C = 37·4.802 = 177.674.
        let mut g = Graph::new(Shape::flat(16)).unwrap();
        let x = g.input();
        let left = g.add("left", LayerKind::Dense { units: 8 }, &[x]).unwrap();
        g.add("r1", LayerKind::Dense { units: 4 }, &[x]).unwrap();
        let right = g.push("r2", LayerKind::Dense { units: 8 }).unwrap();
        g.add("add", LayerKind::Add, &[left, right]).unwrap();
        g.push("sig", LayerKind::Activation(Activation::Sigmoid))
            .unwrap();
        let a = g.analyze();
        assert_close!(a.gcip, 0.104);
        assert_close!(a.gcc, 177.674);
        assert_close!(a.gsc, 7.0 + 6.0 + 5.0 + 4.802);
        // Power: the max picks the larger side when they differ (1/2 vs 1/4).
        let mut g = Graph::new(Shape::flat(16)).unwrap();
        let x = g.input();
        let big = g.add("big", LayerKind::Dense { units: 8 }, &[x]).unwrap();
        g.add("s1", LayerKind::Dense { units: 4 }, &[x]).unwrap();
        let small = g
            .push("s2", LayerKind::Activation(Activation::Sigmoid))
            .unwrap();
        let s3 = g.push("s3", LayerKind::Dense { units: 8 }).unwrap();
        assert_eq!(small, NodeId(3));
        g.add("add", LayerKind::Add, &[s3, big]).unwrap();
        // big: 1/2. s-path: 4/16·0.208·8/4 = 0.104. max = 1/2.
        assert_close!(g.analyze().gcip, 0.5);
    }

    #[test]
    fn invalid_graphs_are_errors() {
        let mut g = Graph::new(Shape::new(1, 4, 4)).unwrap();
        let conv = LayerKind::Conv2d {
            filters: 2,
            kernel: (5, 5),
            stride: 1,
            padding: 0,
        };
        let e = g.push("big", conv).unwrap_err().to_string();
        assert!(e.contains("big") && e.contains("larger"), "{e}");
        let d = g.push("d", LayerKind::Dense { units: 3 }).unwrap();
        let x = g.input();
        let e = g
            .add("sum", LayerKind::Add, &[d, x])
            .unwrap_err()
            .to_string();
        assert!(e.contains("one shape"), "{e}");
        let e = g.add("sum", LayerKind::Add, &[d]).unwrap_err().to_string();
        assert!(e.contains("at least 2"), "{e}");
        let e = g
            .add("two", LayerKind::Flatten, &[d, x])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 1 input"), "{e}");
        let e = g
            .add("ghost", LayerKind::Flatten, &[NodeId(9)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(g.push("z", LayerKind::Dense { units: 0 }).is_err());
        assert!(g.push("r", LayerKind::Dropout { rate: 1.0 }).is_err());
        assert!(g.push("i", LayerKind::Input).is_err());
        assert!(Graph::new(Shape::new(0, 3, 3)).is_err());
        // Failed additions leave the graph as it was: input and the dense layer.
        assert_eq!(g.analyze().layers.len(), 1);
    }
}
