//! The Combo Packet network, the model card that describes a trained copy of it, and the
//! classifier that loads one and turns pre-processed packet bytes into class probabilities.
//!
//! # Network
//!
//! Our reading of the paper (section "Network" of `PAPER.md`), for a context of N packets of
//! L bytes each (L = `packet_bytes`, 1500 by default) and C classes:
//!
//! | step | layer | output for L = 1500 | weights |
//! | --- | --- | --- | --- |
//! | input | bytes scaled to [-1, 1], one row per packet | [B*N, 1, 1500] | |
//! | conv I | Conv1d 1 -> 200, kernel 5, stride 3; ReLU | [B*N, 200, 499] | 1 200 |
//! | SA | max, mean over channels; Conv1d 2 -> 1, kernel 7 | same | 15 |
//! | stack | the N packets of a context as rows | [B, 200, N, 499] | |
//! | conv II | Conv2d 200 -> 200, (N, 3) stride (1, 3); ReLU | [B, 200, 1, 166] | 120 000 N + 200 |
//! | SA | max, mean over channels; Conv2d 2 -> 1, 7 x 7 | same | 99 |
//! | SE | avg and max pool; shared MLP 200 -> 12 -> 200 | same | 5 012 |
//! | hidden | flatten; Linear 33 200 -> 100; ReLU; dropout 0.5 | [B, 100] | 3 320 100 |
//! | output | Linear 100 -> C (logits) | [B, C] | 101 C |
//!
//! SA and SE are present as the attention setting says; the softmax is applied by
//! [`Classifier::predict`].
//!
//! The paper gives 200 filters of (5, 3) with stride 3 for convolution II and leaves the
//! orientation open. We let the kernel span all N packets of the context (for N = 5 that is
//! the paper's 5), so the weights of convolution II grow with N as the paper's totals do. The
//! output widths are computed from L, so other packet lengths work down to
//! [`MIN_PACKET_BYTES`]. Attention runs spatial first, then channel, after convolution II.
//!
//! Parameters measured for the 12 service classes (17 application classes add 505):
//!
//! | N | paper | none | SA | SE | SA + SE |
//! | --- | --- | --- | --- | --- | --- |
//! | 1 | 3.55 M | 3 442 712 | 3 442 826 | 3 447 724 | 3 447 838 |
//! | 3 | 3.87 M | 3 682 712 | 3 682 826 | 3 687 724 | 3 687 838 |
//! | 5 | 4.19 M | 3 922 712 | 3 922 826 | 3 927 724 | 3 927 838 |
//!
//! That is 3 % to 7 % below the paper; its fully connected sizes are not given, and the gap
//! grows with N, so its convolution II is probably somewhat wider than ours.
//!
//! # Files
//!
//! A model is two files in one folder: the card `<name>.card.toml` ([`ModelCard`]) and the
//! weights `<name>.safetensors`, stored as f32 or f16 and always run as f32. Loading checks
//! every tensor's name, shape and storage type against the network the card describes.
//!
//! # Threads
//!
//! A [`Classifier`] holds libtorch tensors, which are `Send` but not `Sync`: it can be moved
//! to the inference thread, and is then used from that thread only.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::{Device, Kind, TchError, Tensor};

use crate::Error;
use crate::config::PreprocessConfig;

/// Card format version this build reads and writes.
pub const CARD_FORMAT: u32 = 1;

/// Context sizes N the paper evaluates; cards with other values are refused.
pub const SUPPORTED_PACKETS_PER_CONTEXT: [usize; 3] = [1, 3, 5];

/// Filters of convolution I (the paper's 200).
const CONV1_FILTERS: i64 = 200;
/// Width and stride of convolution I over a packet's bytes (the paper's 5 and 3).
const CONV1_KERNEL: i64 = 5;
const CONV1_STRIDE: i64 = 3;
/// Filters of convolution II (the paper's 200).
const CONV2_FILTERS: i64 = 200;
/// Width and stride of convolution II along byte positions (the paper's 3 and 3).
const CONV2_KERNEL: i64 = 3;
const CONV2_STRIDE: i64 = 3;
/// Kernel of the spatial attention convolution (the paper's 7 x 7, 7 in the 1-D form).
const SPATIAL_KERNEL: i64 = 7;
/// Channel reduction of the squeeze-excitation MLP (the usual 16; the paper gives none).
const CHANNEL_REDUCTION: i64 = 16;
/// Units of the hidden fully connected layer (the paper gives none; ours keeps the totals
/// near the paper's).
const HIDDEN_UNITS: i64 = 100;
/// Bytes of convolution I's maps that one chunk of a batch may take at inference on the CPU
/// (see `ComboNet::packet_features`): small enough to stay in this class of CPU's caches (2 MB
/// of L2 per core and 32 MB of L3 on the development machine). Measured there, with batches of
/// 256 contexts, chunks of 3 to 24 MB all ran the model 15-25 % faster than the whole batch
/// at once, 12 MB the fastest.
const CPU_CHUNK_MAP_BYTES: i64 = 12 << 20;
/// Dropout before the output layer, while training only.
const DROPOUT: f64 = 0.5;

/// Shortest packet the network accepts: convolution II needs three outputs of convolution I.
pub const MIN_PACKET_BYTES: usize = (CONV1_KERNEL + CONV1_STRIDE * (CONV2_KERNEL - 1)) as usize;

/// Longest packet the network accepts (the largest IP packet), which also keeps every size
/// computation far from overflow.
pub const MAX_PACKET_BYTES: usize = 65_535;

/// Which attention blocks the network has (the paper's ablation: none, SA, SE, SA + SE).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    /// Plain CNN.
    None,
    /// Spatial attention after each convolution.
    Sa,
    /// Channel (squeeze-excitation) attention after convolution II.
    Se,
    /// Both.
    SaSe,
}

impl Attention {
    /// Every variant, in the paper's order.
    pub const ALL: [Attention; 4] = [Self::None, Self::Sa, Self::Se, Self::SaSe];

    /// The name used in cards, configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Sa => "sa",
            Self::Se => "se",
            Self::SaSe => "sa_se",
        }
    }

    /// Whether the spatial attention blocks are present.
    pub fn spatial(self) -> bool {
        matches!(self, Self::Sa | Self::SaSe)
    }

    /// Whether the channel attention block is present.
    pub fn channel(self) -> bool {
        matches!(self, Self::Se | Self::SaSe)
    }
}

impl fmt::Display for Attention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Attention {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Self::ALL.into_iter().find(|a| a.as_str() == text).ok_or_else(|| {
            Error::Config(format!("unknown attention '{text}': use none, sa, se or sa_se"))
        })
    }
}

/// How the weights file stores its floats. The network always runs in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit floats: loads bit-exact.
    F32,
    /// 16-bit floats: half the size; weights keep 11 significant bits.
    F16,
}

impl Precision {
    /// The name used in cards and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }

    /// The largest magnitude the storage holds.
    pub fn largest(self) -> f64 {
        match self {
            Self::F32 => f64::from(f32::MAX),
            // IEEE 754 binary16: (2 - 2^-10) * 2^15.
            Self::F16 => 65_504.0,
        }
    }

    /// The libtorch type of the stored tensors.
    pub fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::F16 => Kind::Half,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            _ => Err(Error::Config(format!("unknown precision '{text}': use f32 or f16"))),
        }
    }
}

/// How a model was trained; free-form, for people reading the card. Every field may be left
/// out of the file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSummary {
    /// Where the training data came from (dataset, captures, class cap).
    pub data: String,
    /// How train, validation and test were split (by context, by flow, by capture).
    pub split: String,
    /// Commands that reproduce the model.
    pub commands: Vec<String>,
    /// Test metrics by name (accuracy, macro_f1, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Anything else worth knowing.
    pub notes: String,
}

/// Describes a model: what it classifies, the network, how its input was pre-processed and
/// where its weights are. Stored as TOML in `<name>.card.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Card format version, [`CARD_FORMAT`].
    pub format: u32,
    /// A name for people and logs.
    pub name: String,
    /// Class index -> label; the network has one output per label.
    pub labels: Vec<String>,
    /// N, the packets of one flow the model sees at once (1, 3 or 5).
    pub packets_per_context: usize,
    pub attention: Attention,
    /// The pre-processing the model was trained with; input must be made the same way.
    pub preprocess: PreprocessConfig,
    /// Weights file name, relative to the card's folder.
    pub weights: String,
    /// Storage of the weights file: "f32" or "f16".
    pub precision: String,
    /// True when the weights are untrained (a stand-in to exercise the pipeline).
    pub random_weights: bool,
    /// Number of weights; filled in when the model is built or saved.
    #[serde(default)]
    pub parameters: u64,
    #[serde(default)]
    pub training: TrainingSummary,
}

impl ModelCard {
    /// A card for a new, not yet saved model: f32 storage, no weights file yet, trained
    /// weights assumed (a [`Classifier::new_random`] marks them random).
    pub fn new(
        name: &str,
        labels: Vec<String>,
        packets_per_context: usize,
        attention: Attention,
        preprocess: PreprocessConfig,
    ) -> Self {
        Self {
            format: CARD_FORMAT,
            name: name.to_string(),
            labels,
            packets_per_context,
            attention,
            preprocess,
            weights: String::new(),
            precision: Precision::F32.as_str().to_string(),
            random_weights: false,
            parameters: 0,
            training: TrainingSummary::default(),
        }
    }

    /// Reads and checks a card. Unknown fields are refused, so a typo does not silently fall
    /// back to a default.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Model(format!("cannot read model card {}: {e}", path.display())))?;
        let bad = |what: String| Error::Model(format!("model card {}: {what}", path.display()));

        // Check the format first: a newer card fails with a clear message rather than with
        // "unknown field".
        let table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        match table.get("format").and_then(toml::Value::as_integer) {
            Some(format) if format == i64::from(CARD_FORMAT) => {}
            Some(format) => {
                return Err(bad(format!(
                    "card format {format} is not supported (this build reads {CARD_FORMAT})"
                )));
            }
            None => return Err(bad("no integer `format` field".into())),
        }

        let card: Self = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        card.validate().map_err(|e| bad(strip_model_prefix(e)))?;
        Ok(card)
    }

    /// Checks the card, then writes it (through a temporary file, so a crash leaves the old
    /// card whole).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        self.validate()?;
        let text = toml::to_string_pretty(self)
            .map_err(|e| Error::Model(format!("cannot encode model card: {e}")))?;
        write_replacing(path, text.as_bytes())
            .map_err(|e| Error::Model(format!("cannot write model card {}: {e}", path.display())))
    }

    /// Checks everything that defines the network: format, name, labels, N and
    /// pre-processing. `weights` and `precision` describe a saved file and may still be empty.
    pub fn validate_architecture(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Model(what));
        if self.format != CARD_FORMAT {
            return bad(format!("card format {} is not {CARD_FORMAT}", self.format));
        }
        if self.name.trim().is_empty() {
            return bad("the model has no name".into());
        }
        if self.labels.is_empty() {
            return bad("the model has no labels".into());
        }
        let mut seen = std::collections::HashSet::new();
        for label in &self.labels {
            if label.trim().is_empty() {
                return bad("a label is empty".into());
            }
            if !seen.insert(label.as_str()) {
                return bad(format!("label '{label}' appears twice"));
            }
        }
        if !SUPPORTED_PACKETS_PER_CONTEXT.contains(&self.packets_per_context) {
            return bad(format!(
                "packets_per_context {} is not supported (use 1, 3 or 5)",
                self.packets_per_context
            ));
        }
        self.preprocess.validate().map_err(|e| Error::Model(e.to_string()))?;
        check_packet_bytes(self.preprocess.packet_bytes)
    }

    /// [`Self::validate_architecture`], plus a known precision and a weights file name that
    /// stays in the card's folder tree.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_architecture()?;
        self.precision()?;
        let weights = Path::new(&self.weights);
        let stays_inside = weights.components().all(|c| matches!(c, Component::Normal(_)));
        if self.weights.is_empty() || !stays_inside {
            return Err(Error::Model(format!(
                "weights '{}' must be a file name relative to the card's folder",
                self.weights
            )));
        }
        Ok(())
    }

    /// The storage precision of the weights file.
    pub fn precision(&self) -> Result<Precision, Error> {
        self.precision.parse().map_err(|_| {
            Error::Model(format!("precision '{}' is neither f32 nor f16", self.precision))
        })
    }

    /// Number of classes (network outputs).
    pub fn classes(&self) -> usize {
        self.labels.len()
    }

    /// Where the weights of a card stored at `card_path` are.
    pub fn weights_path(&self, card_path: &Path) -> PathBuf {
        card_folder(card_path).join(&self.weights)
    }
}

/// The weights file name that goes with a card file: `x.card.toml` -> `x.safetensors`.
pub fn weights_file_name(card_path: &Path) -> Result<String, Error> {
    let file_name = card_path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        Error::Model(format!("card path {} has no UTF-8 file name", card_path.display()))
    })?;
    let stem = file_name
        .strip_suffix(".card.toml")
        .or_else(|| file_name.strip_suffix(".toml"))
        .filter(|stem| !stem.is_empty())
        .unwrap_or(file_name);
    Ok(format!("{stem}.safetensors"))
}

fn card_folder(card_path: &Path) -> &Path {
    card_path.parent().unwrap_or_else(|| Path::new(""))
}

/// Writes through `<path>.tmp` and a rename, so readers never see half a file.
fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = temporary_path(path);
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Our own errors already say "model:"; keep one when wrapping them with a file name.
fn strip_model_prefix(error: Error) -> String {
    match error {
        Error::Model(what) => what,
        other => other.to_string(),
    }
}

fn check_packet_bytes(packet_bytes: usize) -> Result<(), Error> {
    if !(MIN_PACKET_BYTES..=MAX_PACKET_BYTES).contains(&packet_bytes) {
        return Err(Error::Model(format!(
            "packet_bytes {packet_bytes} is outside {MIN_PACKET_BYTES}..={MAX_PACKET_BYTES}"
        )));
    }
    Ok(())
}

/// Output widths of convolutions I and II for packets of `packet_bytes` bytes
/// (499 and 166 for 1500).
pub fn feature_widths(packet_bytes: usize) -> Result<(usize, usize), Error> {
    check_packet_bytes(packet_bytes)?;
    let conv1 = (packet_bytes - CONV1_KERNEL as usize) / CONV1_STRIDE as usize + 1;
    let conv2 = (conv1 - CONV2_KERNEL as usize) / CONV2_STRIDE as usize + 1;
    Ok((conv1, conv2))
}

/// Floating-point operations (a multiply-add counts 2) of one context through the network:
/// the two convolutions, the spatial-attention convolutions, the channel-attention MLP and the
/// dense layers. Element-wise work (activations, pooling, scaling) is left out: it is
/// memory-bound and small next to these.
pub fn flops_per_context(
    packets: usize,
    packet_bytes: usize,
    attention: Attention,
    classes: usize,
) -> Result<f64, Error> {
    let (conv1_width, conv2_width) = feature_widths(packet_bytes)?;
    let (n, w1, w2) = (packets as f64, conv1_width as f64, conv2_width as f64);
    let (f1, f2) = (CONV1_FILTERS as f64, CONV2_FILTERS as f64);
    let conv1 = 2.0 * n * w1 * f1 * CONV1_KERNEL as f64;
    let conv2 = 2.0 * w2 * f2 * f1 * n * CONV2_KERNEL as f64;
    let dense = 2.0 * (f2 * w2 * HIDDEN_UNITS as f64 + HIDDEN_UNITS as f64 * classes as f64);
    let spatial_kernel = SPATIAL_KERNEL as f64;
    let spatial = if attention.spatial() {
        2.0 * (n * w1 * 2.0 * spatial_kernel + w2 * 2.0 * spatial_kernel * spatial_kernel)
    } else {
        0.0
    };
    let hidden = (f2 / CHANNEL_REDUCTION as f64).floor();
    let channel = if attention.channel() { 2.0 * 2.0 * (2.0 * f2 * hidden) } else { 0.0 };
    Ok(conv1 + conv2 + dense + spatial + channel)
}

/// How a convolution's weight is laid out in memory (its shape is always `[out, in, ...]`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum WeightLayout {
    /// libtorch's default: row-major in the shape's order.
    Contiguous,
    /// Input channels last (`[out, ..., in]` in memory), for 2-D convolutions over
    /// channels-last maps: oneDNN then runs its own fast kernels without reordering the
    /// weight at every call.
    ChannelsLast,
}

/// A convolution's weights and geometry (1-D or 2-D, from the weight's rank).
struct Convolution {
    weight: Tensor,
    bias: Tensor,
    stride: Vec<i64>,
    padding: Vec<i64>,
}

impl Convolution {
    fn new(
        p: &nn::Path,
        inputs: i64,
        outputs: i64,
        kernel: &[i64],
        stride: &[i64],
        padding: &[i64],
        layout: WeightLayout,
    ) -> Result<Self, TchError> {
        let fan_in = inputs * kernel.iter().product::<i64>();
        let init = default_init(fan_in);
        let weight = match layout {
            WeightLayout::Contiguous => {
                let mut dims = vec![outputs, inputs];
                dims.extend_from_slice(kernel);
                p.f_var("weight", &dims, init)?
            }
            WeightLayout::ChannelsLast => {
                // Drawn as [out, kernel..., in] and viewed in the shape's order; the weights
                // file stores the shape's order as always (`save_weights` makes it contiguous).
                let mut dims = vec![outputs];
                dims.extend_from_slice(kernel);
                dims.push(inputs);
                let mut order: Vec<i64> = vec![0, dims.len() as i64 - 1];
                order.extend(1..dims.len() as i64 - 1);
                let drawn = nn::f_init(init, &dims, p.device(), Kind::Float)?;
                p.add("weight", drawn.f_permute(order.as_slice())?, true)
            }
        };
        Ok(Self {
            weight,
            bias: p.f_var("bias", &[outputs], init)?,
            stride: stride.to_vec(),
            padding: padding.to_vec(),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        let dilation = vec![1; self.stride.len()];
        let bias = Some(&self.bias);
        if self.stride.len() == 1 {
            xs.f_conv1d(&self.weight, bias, &self.stride, &self.padding, &dilation, 1)
        } else {
            xs.f_conv2d(&self.weight, bias, &self.stride, &self.padding, &dilation, 1)
        }
    }
}

/// A fully connected layer.
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn new(p: &nn::Path, inputs: i64, outputs: i64) -> Result<Self, TchError> {
        let init = default_init(inputs);
        Ok(Self {
            weight: p.f_var("weight", &[outputs, inputs], init)?,
            bias: p.f_var("bias", &[outputs], init)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        xs.f_linear(&self.weight, Some(&self.bias))
    }
}

/// The hidden layer: fully connected over a whole context map `[B, F, 1, W2]`, read in
/// PyTorch's flattening order (`[B, F * W2]`, channel-major). Its weight is held as the
/// `[U, F, 1, W2]` kernel of a convolution that spans the map, channels last like the maps,
/// so neither the maps nor the weight are reordered at any call. In weights files it is a
/// linear layer's `[U, F * W2]` (see [`file_shape`]).
struct ContextDense {
    layer: Convolution,
}

impl ContextDense {
    fn new(p: &nn::Path, channels: i64, width: i64, outputs: i64) -> Result<Self, TchError> {
        let layout = WeightLayout::ChannelsLast;
        Ok(Self {
            layer: Convolution::new(p, channels, outputs, &[1, width], &[1, 1], &[0, 0], layout)?,
        })
    }

    /// xs: [B, F, 1, W2]; returns [B, U].
    fn forward(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        let batch = xs.size().first().copied().unwrap_or(0);
        if xs.device() == Device::Cpu && batch >= 2 {
            // oneDNN's convolution: from 2 contexts on, it ran this product 2-2.7 times as
            // fast as MKL's matrix product, which keeps to AVX2 on AMD processors.
            return self.layer.forward(xs)?.f_flatten(1, -1);
        }
        // One context (oneDNN took 1.1 ms there, MKL's matrix-vector product 0.15 ms), or a
        // GPU: a product over both tensors' channels-last memory as it lies.
        let units = self.layer.weight.size()[0];
        let rows = xs.f_permute([0, 2, 3, 1])?.f_reshape([batch, -1])?;
        let weight = self.layer.weight.f_permute([0, 2, 3, 1])?.f_reshape([units, -1])?;
        rows.f_linear(&weight, Some(&self.layer.bias))
    }
}

/// PyTorch's default for convolution and linear layers: uniform in +-1/sqrt(fan_in), for
/// the weights and the biases alike.
fn default_init(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// `xs * gate`. Without autograd (inference) in place, in `xs`'s own memory: the maps after
/// convolution I are the largest tensors of the network, and each pass that allocates and
/// writes a new one costs as much as the convolution itself on the CPU.
fn scale(xs: &Tensor, gate: &Tensor) -> Result<Tensor, TchError> {
    if xs.requires_grad() { xs.f_mul(gate) } else { xs.shallow_clone().f_mul_(gate) }
}

/// `relu(xs)`, in place without autograd (see [`scale`]).
fn relu(xs: Tensor) -> Result<Tensor, TchError> {
    if xs.requires_grad() { xs.f_relu() } else { xs.shallow_clone().f_relu_() }
}

/// Spatial attention: weighs each position by what all channels say about it.
struct SpatialAttention {
    conv: Convolution,
}

impl SpatialAttention {
    /// `dims` is 1 for per-packet maps [., C, W] and 2 for context maps [., C, H, W].
    fn new(p: &nn::Path, dims: usize) -> Result<Self, TchError> {
        let kernel = vec![SPATIAL_KERNEL; dims];
        let padding = vec![SPATIAL_KERNEL / 2; dims];
        let stride = vec![1; dims];
        let layout = WeightLayout::Contiguous;
        Ok(Self { conv: Convolution::new(p, 2, 1, &kernel, &stride, &padding, layout)? })
    }

    /// xs: the context maps [B, C, 1, W]. They are one row high (convolution II spans all
    /// the packets), so the rows of the 7 x 7 kernel above and below the middle only ever
    /// meet the zero padding: the gate is the 1-D convolution with the middle row, the same
    /// values at a quarter of the cost of libtorch's 2-D convolution on so small a map.
    fn forward(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        let &[batch, _, 1, width] = xs.size().as_slice() else {
            return Err(TchError::Shape(format!("context maps of shape {:?}", xs.size())));
        };
        let (max, mean) = channel_max_and_mean(xs, 1)?;
        let pooled = Tensor::f_cat(&[max, mean], 1)?.f_reshape([batch, 2, width])?;
        let middle_row = self.conv.weight.f_select(2, SPATIAL_KERNEL / 2)?;
        let gate = pooled
            .f_conv1d(&middle_row, Some(&self.conv.bias), [1], [SPATIAL_KERNEL / 2], [1], 1)?
            .f_sigmoid()?
            .f_reshape([batch, 1, 1, width])?;
        scale(xs, &gate)
    }

    /// xs: the packet maps as [B, N, W1, C] (channels last); each packet's positions are
    /// weighed on their own, as the 1-D form over `[., C, W1]` does.
    fn forward_packets(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        let &[batch, packets, width, _] = xs.size().as_slice() else {
            return Err(TchError::Shape(format!("packet maps of shape {:?}", xs.size())));
        };
        let max = xs.f_amax([3], false)?;
        let mean = xs.f_mean_dim([3].as_slice(), false, None::<Kind>)?;
        let pooled = Tensor::f_stack(&[max, mean], 2)?.f_reshape([batch * packets, 2, width])?;
        let gate = self.gate(&pooled)?.f_reshape([batch, packets, width, 1])?;
        scale(xs, &gate)
    }

    fn gate(&self, pooled: &Tensor) -> Result<Tensor, TchError> {
        self.conv.forward(pooled)?.f_sigmoid()
    }
}

/// Maximum and mean over the channel dimension `dim`, kept as a dimension of size 1.
fn channel_max_and_mean(xs: &Tensor, dim: i64) -> Result<(Tensor, Tensor), TchError> {
    let max = xs.f_amax([dim], true)?;
    let mean = xs.f_mean_dim([dim].as_slice(), true, None::<Kind>)?;
    Ok((max, mean))
}

/// Channel attention (squeeze-excitation with average and max pooling): weighs each filter
/// by what the whole map says about it.
struct ChannelAttention {
    squeeze: Dense,
    excite: Dense,
}

impl ChannelAttention {
    fn new(p: &nn::Path, channels: i64) -> Result<Self, TchError> {
        let hidden = (channels / CHANNEL_REDUCTION).max(1);
        Ok(Self {
            squeeze: Dense::new(&(p / "squeeze"), channels, hidden)?,
            excite: Dense::new(&(p / "excite"), hidden, channels)?,
        })
    }

    fn mlp(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        self.excite.forward(&self.squeeze.forward(xs)?.f_relu()?)
    }

    /// xs: [B, C, H, W].
    fn forward(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        let positions = [2i64, 3];
        let average = xs.f_mean_dim(positions.as_slice(), false, None::<Kind>)?;
        let max = xs.f_amax(positions, false)?;
        let gate = self.mlp(&average)?.f_add(&self.mlp(&max)?)?.f_sigmoid()?;
        scale(xs, &gate.f_unsqueeze(-1)?.f_unsqueeze(-1)?)
    }
}

/// The Combo Packet CNN (see the module documentation for its layers).
pub struct ComboNet {
    packets: usize,
    packet_bytes: usize,
    classes: usize,
    attention: Attention,
    conv1_width: usize,
    conv1: Convolution,
    spatial1: Option<SpatialAttention>,
    conv2: Convolution,
    spatial2: Option<SpatialAttention>,
    channel: Option<ChannelAttention>,
    hidden: ContextDense,
    output: Dense,
}

impl fmt::Debug for ComboNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComboNet")
            .field("packets", &self.packets)
            .field("packet_bytes", &self.packet_bytes)
            .field("classes", &self.classes)
            .field("attention", &self.attention)
            .finish_non_exhaustive()
    }
}

impl ComboNet {
    /// Builds the network's variables under `p`.
    ///
    /// # Panics
    ///
    /// When the sizes are out of range (see [`Self::try_new`], which returns the error
    /// instead) or libtorch cannot allocate the weights.
    pub fn new(
        p: &nn::Path,
        packets: usize,
        packet_bytes: usize,
        attention: Attention,
        classes: usize,
    ) -> Self {
        match Self::try_new(p, packets, packet_bytes, attention, classes) {
            Ok(net) => net,
            Err(e) => panic!("cannot build ComboNet: {e}"),
        }
    }

    /// Builds the network's variables under `p`. Any N from 1 up works here; the card
    /// limits models to the paper's 1, 3 and 5. Needs `packet_bytes` in
    /// [`MIN_PACKET_BYTES`]..=[`MAX_PACKET_BYTES`] and at least one class.
    pub fn try_new(
        p: &nn::Path,
        packets: usize,
        packet_bytes: usize,
        attention: Attention,
        classes: usize,
    ) -> Result<Self, Error> {
        let (conv1_width, conv2_width) = feature_widths(packet_bytes)?;
        // 1024 packets or classes is far beyond any use, and keeps the sizes in i64.
        if !(1..=1024).contains(&packets) {
            return Err(Error::Model(format!("packets per context {packets} not in 1..=1024")));
        }
        if !(1..=1024).contains(&classes) {
            return Err(Error::Model(format!("class count {classes} not in 1..=1024")));
        }
        let n = packets as i64;

        let conv1 = Convolution::new(
            &(p / "conv1"),
            1,
            CONV1_FILTERS,
            &[CONV1_KERNEL],
            &[CONV1_STRIDE],
            &[0],
            WeightLayout::Contiguous,
        )?;
        let conv2 = Convolution::new(
            &(p / "conv2"),
            CONV1_FILTERS,
            CONV2_FILTERS,
            &[n, CONV2_KERNEL],
            &[1, CONV2_STRIDE],
            &[0, 0],
            WeightLayout::ChannelsLast,
        )?;
        let (spatial1, spatial2) = if attention.spatial() {
            let first = SpatialAttention::new(&(p / "spatial1"), 1)?;
            let second = SpatialAttention::new(&(p / "spatial2"), 2)?;
            (Some(first), Some(second))
        } else {
            (None, None)
        };
        let channel = if attention.channel() {
            Some(ChannelAttention::new(&(p / "channel"), CONV2_FILTERS)?)
        } else {
            None
        };
        let hidden =
            ContextDense::new(&(p / "hidden"), CONV2_FILTERS, conv2_width as i64, HIDDEN_UNITS)?;
        let output = Dense::new(&(p / "output"), HIDDEN_UNITS, classes as i64)?;

        Ok(Self {
            packets,
            packet_bytes,
            classes,
            attention,
            conv1_width,
            conv1,
            spatial1,
            conv2,
            spatial2,
            channel,
            hidden,
            output,
        })
    }

    /// N, packets per context.
    pub fn packets(&self) -> usize {
        self.packets
    }

    /// L, bytes per packet.
    pub fn packet_bytes(&self) -> usize {
        self.packet_bytes
    }

    /// Outputs (classes).
    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn attention(&self) -> Attention {
        self.attention
    }

    /// xs: [batch, packets, packet_bytes] f32 scaled to [-1, 1]; returns logits
    /// [batch, classes]. `train` turns dropout on.
    ///
    /// # Panics
    ///
    /// When the input has the wrong shape or libtorch fails; [`Self::f_forward_t`] returns
    /// the error instead.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self.f_forward_t(xs, train) {
            Ok(logits) => logits,
            Err(e) => panic!("ComboNet forward: {e}"),
        }
    }

    /// [`Self::forward_t`] that reports a wrong input shape or a libtorch failure as an error.
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor, Error> {
        let size = xs.size();
        let (n, bytes) = (self.packets as i64, self.packet_bytes as i64);
        let batch = match size.as_slice() {
            &[batch, packets, length] if packets == n && length == bytes => batch,
            _ => {
                return Err(Error::Mismatch(format!(
                    "input shape {size:?} is not [batch, {n}, {bytes}]"
                )));
            }
        };

        let mut context = self.convolutions(xs, batch, train)?;
        if let Some(attention) = &self.spatial2 {
            context = attention.forward(&context)?;
        }
        if let Some(attention) = &self.channel {
            context = attention.forward(&context)?;
        }

        // Classify.
        let hidden = self.hidden.forward(&context)?.f_relu()?.f_dropout(DROPOUT, train)?;
        Ok(self.output.forward(&hidden)?)
    }
}

impl ComboNet {
    /// Convolution I, its attention and convolution II with its ReLU: `[B, N, L]` bytes to
    /// `[B, F, 1, W2]` (channels last in memory).
    fn convolutions(&self, xs: &Tensor, batch: i64, train: bool) -> Result<Tensor, TchError> {
        let features = self.packet_features(xs, batch, train)?;
        // Convolution II spans the whole context: the packets are the rows of one map.
        relu(self.context_convolution(&features)?)
    }

    /// Convolution I with its ReLU and attention: `[B, N, L]` bytes to maps `[B, N, W1, C]`.
    ///
    /// At inference on the CPU the batch goes through in chunks whose maps fit in the cache
    /// (see [`CPU_CHUNK_MAP_BYTES`]), each chunk written into its rows of the batch's maps:
    /// these are the network's largest tensors, and the ReLU and the attention's pooling and
    /// scaling each pass over them. With a whole batch's maps (100 MB at N = 1, batch 256)
    /// every one of those passes went to memory; chunked, the maps go to memory once, and
    /// convolution II then reads them once, for the whole batch (oneDNN runs its products
    /// faster on large batches than on a chunk at a time).
    fn packet_features(&self, xs: &Tensor, batch: i64, train: bool) -> Result<Tensor, TchError> {
        let (n, width) = (self.packets as i64, self.conv1_width as i64);
        let chunk = (CPU_CHUNK_MAP_BYTES / (n * width * CONV1_FILTERS * 4)).max(1);
        if train || xs.device() != Device::Cpu || batch <= chunk || self.records_gradients()? {
            return self.chunk_features(xs, batch, None);
        }
        let features = Tensor::f_empty([batch, n, width, CONV1_FILTERS], (xs.kind(), Device::Cpu))?;
        let mut start = 0;
        while start < batch {
            let rows = chunk.min(batch - start);
            let into = features.f_narrow(0, start, rows)?;
            let chunk_features =
                self.chunk_features(&xs.f_narrow(0, start, rows)?, rows, Some(&into))?;
            // The ReLU and the attention's scaling work in place without autograd, so the
            // chunk's maps are already in `into`; should a step ever return a new tensor
            // instead, copy it rather than lose it.
            if chunk_features.data_ptr() != into.data_ptr() {
                let _ = into.shallow_clone().f_copy_(&chunk_features)?;
            }
            start += rows;
        }
        Ok(features)
    }

    /// [`Self::packet_features`] of `batch` contexts, written into `into` (contiguous
    /// `[batch, N, W1, C]`) when given.
    fn chunk_features(
        &self,
        xs: &Tensor,
        batch: i64,
        into: Option<&Tensor>,
    ) -> Result<Tensor, TchError> {
        let mut features = relu(self.packet_convolution(xs, batch, into)?)?;
        if let Some(attention) = &self.spatial1 {
            features = attention.forward_packets(&features)?;
        }
        Ok(features)
    }

    /// Whether libtorch is recording operations for autograd: the result of an operation on
    /// a weight requires a gradient only then (tch does not expose the grad mode itself, and
    /// views do not tell: they keep their base's flag). Outputs written into a preallocated
    /// tensor cannot be recorded.
    fn records_gradients(&self) -> Result<bool, TchError> {
        Ok(self.conv1.bias.f_neg()?.requires_grad())
    }

    /// Convolution I, `[B, N, L]` bytes to maps `[B, N, W1, C]`, channels last. Its windows
    /// (5 bytes, stride 3) are taken from the input by `unfold` and multiplied by the
    /// `[C, 1, 5]` weights as one `[B*N*W1, 5] x [5, C]` product, so the largest tensor of
    /// the network is written once, with its channels contiguous: the attention then pools
    /// along contiguous memory, and convolution II reads it as a channels-last map. libtorch's
    /// own 1-D convolution writes `[B*N, C, W1]`, which would have to be reordered.
    fn packet_convolution(
        &self,
        xs: &Tensor,
        batch: i64,
        into: Option<&Tensor>,
    ) -> Result<Tensor, TchError> {
        let (n, width) = (self.packets as i64, self.conv1_width as i64);
        let rows = batch * n * width;
        let windows =
            xs.f_unfold(2, CONV1_KERNEL, CONV1_STRIDE)?.f_reshape([rows, CONV1_KERNEL])?;
        let weight = self.conv1.weight.f_reshape([CONV1_FILTERS, CONV1_KERNEL])?.f_tr()?;
        let maps = match into {
            Some(into) => self.conv1.bias.f_addmm_out(
                &into.f_view([rows, CONV1_FILTERS])?,
                &windows,
                &weight,
            )?,
            None => self.conv1.bias.f_addmm(&windows, &weight)?,
        };
        maps.f_view([batch, n, width, CONV1_FILTERS])
    }

    /// Convolution II, maps `[B, N, W1, C]` to `[B, F, 1, W2]` (channels last in memory). The
    /// maps are handed to libtorch as the channels-last `[B, C, N, W1]` tensor they are, with
    /// a channels-last weight: libtorch then runs oneDNN's convolution, which on this class of
    /// CPU reached twice the GFLOP/s of the matrix product libtorch uses otherwise (MKL keeps
    /// to AVX2 on AMD processors; oneDNN uses AVX-512).
    fn context_convolution(&self, features: &Tensor) -> Result<Tensor, TchError> {
        self.conv2.forward(&features.f_permute([0, 3, 1, 2])?)
    }
}

impl nn::ModuleT for ComboNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        ComboNet::forward_t(self, xs, train)
    }
}

/// Turns pre-processed bytes into network input: `2 * b / 255 - 1`, shape
/// [batch, packets, packet_bytes], f32 on `device`. The bytes travel to the device as u8
/// (a quarter of the f32 size) and are scaled there.
pub fn scale_bytes(
    raw: &[u8],
    batch: usize,
    packets: usize,
    packet_bytes: usize,
    device: Device,
) -> Result<Tensor, Error> {
    let expected = batch.checked_mul(packets).and_then(|n| n.checked_mul(packet_bytes));
    if expected != Some(raw.len()) {
        return Err(Error::Mismatch(format!(
            "{} bytes given for {batch} contexts of {packets} packets of {packet_bytes} bytes",
            raw.len()
        )));
    }
    let shape = [batch, packets, packet_bytes].map(|d| d as i64);
    let bytes = Tensor::f_from_slice(raw)?.f_to_device(device)?.f_reshape(shape)?;
    // In place on the converted copy, in the order training used: the same values exactly.
    let mut scaled = bytes.f_to_kind(Kind::Float)?;
    let _ = scaled.f_mul_scalar_(2.0)?.f_div_scalar_(255.0)?.f_sub_scalar_(1.0)?;
    Ok(scaled)
}

/// Parses a device name: `auto` (the first CUDA device when libtorch sees one, else the CPU),
/// `cpu`, `cuda` (device 0) or `cuda:<index>`.
pub fn select_device(spec: &str) -> Result<Device, Error> {
    let name = spec.trim().to_ascii_lowercase();
    let cuda_devices = || usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    let index = match name.as_str() {
        "auto" if tch::Cuda::is_available() => return Ok(Device::Cuda(0)),
        "auto" | "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match name.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => index,
            _ => {
                return Err(Error::Config(format!(
                    "unknown device '{spec}': use auto, cpu, cuda or cuda:<index>"
                )));
            }
        },
    };
    let available = cuda_devices();
    if available == 0 {
        return Err(Error::Config(format!(
            "device '{spec}' asks for CUDA, but libtorch sees no CUDA device (CPU-only \
             libtorch, no driver or no GPU); use 'cpu' or 'auto'"
        )));
    }
    if index >= available {
        return Err(Error::Config(format!(
            "device '{spec}': only {available} CUDA device(s), numbered from 0"
        )));
    }
    Ok(Device::Cuda(index))
}

/// A model ready to classify: its card, its weights and the network, on one device.
///
/// Not `Sync` (libtorch tensors are only `Send`): one thread owns it and calls
/// [`Self::predict`].
pub struct Classifier {
    card: ModelCard,
    var_store: nn::VarStore,
    net: ComboNet,
    device: Device,
    mixed_precision: bool,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("name", &self.card.name)
            .field("device", &self.device)
            .field("net", &self.net)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// A model with untrained weights drawn from `seed`: a stand-in that exercises the whole
    /// pipeline. The same seed gives the same weights on every device and in every thread.
    pub fn new_random(mut card: ModelCard, device: Device, seed: i64) -> Result<Self, Error> {
        card.validate_architecture()?;
        let (var_store, net) = build(&card, device)?;
        fill_deterministic(&var_store, seed)?;
        card.random_weights = true;
        card.parameters = count_parameters(&var_store);
        log::debug!(
            "random model '{}': N={} attention={} {} parameters on {device:?}",
            card.name,
            card.packets_per_context,
            card.attention,
            card.parameters
        );
        Ok(Self { card, var_store, net, device, mixed_precision: false })
    }

    /// Reads the card at `card_path`, then the weights file it names (relative to the card's
    /// folder), checking that every tensor the network needs is there with its shape.
    pub fn load(card_path: &Path, device: Device) -> Result<Self, Error> {
        let mut card = ModelCard::load(card_path)?;
        let precision = card.precision()?;
        let weights_path = card.weights_path(card_path);
        let (var_store, net) = build(&card, device)?;
        load_weights(&var_store, &weights_path, precision)?;

        let parameters = count_parameters(&var_store);
        if card.parameters != parameters {
            log::debug!(
                "card {} says {} parameters, the network has {parameters}",
                card_path.display(),
                card.parameters
            );
            card.parameters = parameters;
        }
        log::debug!(
            "loaded model '{}' from {}: N={} attention={} {} classes, {parameters} parameters \
             ({precision}{}) on {device:?}",
            card.name,
            card_path.display(),
            card.packets_per_context,
            card.attention,
            card.classes(),
            if card.random_weights { ", random weights" } else { "" },
        );
        Ok(Self { card, var_store, net, device, mixed_precision: false })
    }

    /// Writes the weights as `<stem>.safetensors` next to `card_path` (`x.card.toml` ->
    /// `x.safetensors`) in the given precision, then the card naming them. The card kept in
    /// memory is left as it was.
    pub fn save(&self, card_path: &Path, precision: Precision) -> Result<(), Error> {
        let weights_name = weights_file_name(card_path)?;
        let weights_path = card_folder(card_path).join(&weights_name);
        let mut card = self.card.clone();
        card.weights = weights_name;
        card.precision = precision.as_str().to_string();
        card.parameters = count_parameters(&self.var_store);
        card.validate()?;

        // Weights first: a card never names a file that is not there yet.
        save_weights(&self.var_store, &weights_path, precision)?;
        card.save(card_path)?;
        log::debug!("saved model '{}' to {} ({precision})", card.name, card_path.display());
        Ok(())
    }

    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// Records how the weights were trained and marks them as no longer random; training
    /// code calls this before [`Self::save`].
    pub fn mark_trained(&mut self, training: TrainingSummary) {
        self.card.training = training;
        self.card.random_weights = false;
    }

    /// The weights, for training.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.var_store
    }

    /// The weights, for training (optimizers need it mutable).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.var_store
    }

    pub fn net(&self) -> &ComboNet {
        &self.net
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Number of weights of the network.
    pub fn parameter_count(&self) -> u64 {
        count_parameters(&self.var_store)
    }

    /// Whether [`Self::predict`] runs in mixed precision on a CUDA device (see
    /// `ModelConfig::mixed_precision`); the CPU always runs f32.
    pub fn set_mixed_precision(&mut self, on: bool) {
        self.mixed_precision = on;
    }

    /// Classifies `batch` contexts. `raw` holds batch * N * packet_bytes pre-processed bytes,
    /// context after context; `probs` receives batch * classes softmax probabilities, row
    /// after row (it is cleared first, and left empty on error). Never panics.
    pub fn predict(&self, raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error> {
        probs.clear();
        let result = self.predict_into(raw, batch, probs);
        if result.is_err() {
            probs.clear();
        }
        result
    }

    fn predict_into(&self, raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error> {
        let (packets, packet_bytes) = (self.net.packets, self.net.packet_bytes);
        let xs = scale_bytes(raw, batch, packets, packet_bytes, self.device)?;
        if batch == 0 {
            return Ok(());
        }

        // No autograd graph: inference only, and it halves the memory.
        let _no_grad = tch::no_grad_guard();
        let forward = || self.net.f_forward_t(&xs, false);
        // Outside mixed precision, no autocast call at all: tch's asks CUDA whether a device
        // exists every time.
        let logits = if self.mixed_precision && self.device.is_cuda() {
            tch::autocast(true, forward)?
        } else {
            forward()?
        };
        let rows = logits.f_softmax(-1, Kind::Float)?.f_to_device(Device::Cpu)?.f_contiguous()?;

        let values = batch * self.net.classes;
        probs.resize(values, 0.0);
        rows.f_copy_data(probs, values)?;
        Ok(())
    }
}

/// A fresh var store with the network the card describes.
fn build(card: &ModelCard, device: Device) -> Result<(nn::VarStore, ComboNet), Error> {
    let var_store = nn::VarStore::new(device);
    let net = ComboNet::try_new(
        &var_store.root(),
        card.packets_per_context,
        card.preprocess.packet_bytes,
        card.attention,
        card.classes(),
    )?;
    Ok((var_store, net))
}

fn count_parameters(var_store: &nn::VarStore) -> u64 {
    var_store.variables().values().map(|t| t.numel() as u64).sum()
}

/// The variables sorted by name, so files and random draws do not depend on hash order.
fn sorted_variables(var_store: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut variables: Vec<_> = var_store.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}

/// Overwrites every variable with PyTorch-style uniform values from our own generator, seeded
/// by `seed` and the variable's name. libtorch's generator is global: another thread drawing
/// from it would make `manual_seed` + init non-reproducible.
fn fill_deterministic(var_store: &nn::VarStore, seed: i64) -> Result<(), Error> {
    let variables = sorted_variables(var_store);
    let shapes: HashMap<&str, Vec<i64>> =
        variables.iter().map(|(name, t)| (name.as_str(), t.size())).collect();
    let _no_grad = tch::no_grad_guard();
    for (name, tensor) in &variables {
        // A bias takes the bound of its layer's weight.
        let weight_name = name.strip_suffix("bias").map(|layer| format!("{layer}weight"));
        let weight_shape = weight_name.as_deref().and_then(|w| shapes.get(w));
        let shape = weight_shape.cloned().unwrap_or_else(|| tensor.size());
        let fan_in: i64 = shape.iter().skip(1).product();
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();

        let mut generator = SplitMix64::new(seed as u64 ^ fnv1a(name.as_bytes()));
        let values: Vec<f32> = (0..tensor.numel())
            .map(|_| ((generator.next_unit() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let source = Tensor::f_from_slice(&values)?.f_reshape(tensor.size())?;
        tensor.shallow_clone().f_copy_(&source)?;
    }
    Ok(())
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, and good enough to draw stand-in weights.
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// FNV-1a, to give each variable its own random stream.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// The hidden layer's weight, held as a convolution's `[U, F, 1, W2]` (see [`ContextDense`]).
const HIDDEN_WEIGHT: &str = "hidden.weight";

/// A variable's shape in weights files: its own, except for the hidden layer's weight, which
/// files hold as the linear layer's `[U, F * W2]` it is (as the first models were written,
/// and as other tools expect a dense layer); the values are in the same order in both.
fn file_shape(name: &str, shape: Vec<i64>) -> Vec<i64> {
    match shape.split_first() {
        Some((&units, rest)) if name == HIDDEN_WEIGHT => vec![units, rest.iter().product()],
        _ => shape,
    }
}

/// Writes every variable, converted to `precision`, in safetensors format.
fn save_weights(var_store: &nn::VarStore, path: &Path, precision: Precision) -> Result<(), Error> {
    let failed = |e: &dyn fmt::Display| {
        Error::Model(format!("cannot write weights {}: {e}", path.display()))
    };
    let _no_grad = tch::no_grad_guard();

    // The safetensors writer copies host memory: bring every tensor to the CPU, contiguous.
    let mut stored = Vec::new();
    for (name, tensor) in sorted_variables(var_store) {
        // A weight beyond the storage's range would come back as infinity; a NaN would
        // poison every prediction. Refuse both rather than write a broken model.
        let largest = tensor
            .f_abs()
            .and_then(|t| t.f_max())
            .and_then(|t| t.f_double_value(&[]))
            .map_err(|e| failed(&format!("tensor '{name}': {e}")))?;
        if largest.is_nan() || largest > precision.largest() {
            return Err(failed(&format!(
                "tensor '{name}' holds {largest}, which {precision} cannot store"
            )));
        }

        let host = tensor
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_to_kind(precision.kind()))
            .and_then(|t| t.f_contiguous())
            .and_then(|t| t.f_reshape(file_shape(&name, t.size())))
            .map_err(|e| failed(&format!("tensor '{name}': {e}")))?;
        stored.push((name, host));
    }

    let temporary = temporary_path(path);
    Tensor::write_safetensors(&stored, &temporary).map_err(|e| failed(&e))?;
    std::fs::rename(&temporary, path).map_err(|e| failed(&e))
}

/// Reads a safetensors file into the var store, checking names, shapes and storage type.
fn load_weights(var_store: &nn::VarStore, path: &Path, precision: Precision) -> Result<(), Error> {
    let bad = |what: String| Error::Model(format!("weights {}: {what}", path.display()));
    if !path.is_file() {
        return Err(bad("no such file (the card names it in `weights`)".into()));
    }
    let stored: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| bad(format!("cannot read: {e}")))?
        .into_iter()
        .collect();

    // Check everything before touching a weight, so a bad file changes nothing.
    let variables = sorted_variables(var_store);
    for (name, variable) in &variables {
        let Some(tensor) = stored.get(name) else {
            return Err(bad(format!("tensor '{name}' is missing")));
        };
        let needed = file_shape(name, variable.size());
        if tensor.size() != needed {
            return Err(bad(format!(
                "tensor '{name}' has shape {:?}, the network needs {needed:?}",
                tensor.size()
            )));
        }
        let kind = tensor.f_kind().map_err(|e| bad(format!("tensor '{name}': {e}")))?;
        if kind != precision.kind() {
            return Err(bad(format!(
                "tensor '{name}' is stored as {kind:?}, the card says {precision}"
            )));
        }
    }
    let mut unknown: Vec<&str> = stored
        .keys()
        .map(String::as_str)
        .filter(|name| !variables.iter().any(|(known, _)| known == name))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(bad(format!(
            "tensors the network does not have: {} (is it a model with other attention?)",
            unknown.join(", ")
        )));
    }

    // Copy, as f32, onto the var store's device.
    let _no_grad = tch::no_grad_guard();
    for (name, variable) in variables {
        if let Some(tensor) = stored.get(&name) {
            let source = tensor
                .f_to_kind(Kind::Float)
                .and_then(|t| t.f_reshape(variable.size()))
                .map_err(|e| bad(e.to_string()))?;
            variable
                .shallow_clone()
                .f_copy_(&source)
                .map_err(|e| bad(format!("tensor '{name}': {e}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Convolution II on the channels-last maps, with its channels-last weight, gives what
    /// libtorch's 2-D convolution gives on the contiguous `[B, C, N, W1]` map with a
    /// contiguous copy of the weights.
    #[test]
    fn context_convolution_equals_the_2d_convolution() {
        tch::manual_seed(3);
        for packets in SUPPORTED_PACKETS_PER_CONTEXT {
            let store = nn::VarStore::new(Device::Cpu);
            let net = ComboNet::try_new(&store.root(), packets, 1500, Attention::SaSe, 4).unwrap();
            let (batch, n) = (3i64, packets as i64);
            let stacked = Tensor::randn(
                [batch, n, CONV1_FILTERS, net.conv1_width as i64],
                (Kind::Float, Device::Cpu),
            );
            let channels_last = stacked.permute([0, 1, 3, 2]).contiguous();
            let fast = net.context_convolution(&channels_last).unwrap();
            let reference = stacked.permute([0, 2, 1, 3]).conv2d(
                &net.conv2.weight.contiguous(),
                Some(&net.conv2.bias),
                [1, 3],
                [0, 0],
                [1, 1],
                1,
            );
            assert_eq!(fast.size(), reference.size());
            let difference = (fast - reference).abs().max().double_value(&[]);
            assert!(difference < 1e-3, "N={packets}: largest difference {difference}");
        }
    }

    /// The context maps' spatial attention, computed with the middle row of its kernel,
    /// gives what libtorch's 7 x 7 convolution with zero padding gives on the one-row map.
    #[test]
    fn context_attention_equals_the_2d_convolution() {
        tch::manual_seed(11);
        let store = nn::VarStore::new(Device::Cpu);
        let attention = SpatialAttention::new(&store.root(), 2).unwrap();
        let xs = Tensor::randn([3, CONV2_FILTERS, 1, 166], (Kind::Float, Device::Cpu));
        // Without autograd the attention scales its input in place: give it a copy.
        let fast = attention.forward(&xs.copy()).unwrap();
        let (max, mean) = channel_max_and_mean(&xs, 1).unwrap();
        let gate = attention.conv.forward(&Tensor::cat(&[max, mean], 1)).unwrap().sigmoid();
        let difference = (fast - &xs * gate).abs().max().double_value(&[]);
        assert!(difference < 1e-5, "largest difference {difference}");
        let two_rows = Tensor::zeros([1, CONV2_FILTERS, 2, 166], (Kind::Float, Device::Cpu));
        assert!(attention.forward(&two_rows).is_err());
    }

    /// At inference on the CPU a batch larger than a chunk goes through convolution I and its
    /// attention a chunk at a time; the logits equal those of the whole batch at once (the
    /// path taken while autograd records).
    #[test]
    fn chunked_inference_equals_the_whole_batch() {
        tch::manual_seed(7);
        for (packets, batch) in [(1usize, 70i64), (5, 13)] {
            let store = nn::VarStore::new(Device::Cpu);
            let net = ComboNet::try_new(&store.root(), packets, 1500, Attention::SaSe, 4).unwrap();
            let map_bytes = packets as i64 * net.conv1_width as i64 * CONV1_FILTERS * 4;
            assert!(batch > 2 * (CPU_CHUNK_MAP_BYTES / map_bytes), "N={packets}: one chunk");
            let xs =
                Tensor::rand([batch, packets as i64, 1500], (Kind::Float, Device::Cpu)) * 2 - 1;
            let whole = net.forward_t(&xs, false);
            assert!(net.records_gradients().unwrap());
            let chunked = tch::no_grad(|| {
                assert!(!net.records_gradients().unwrap());
                net.forward_t(&xs, false)
            });
            let difference = (whole.detach() - chunked).abs().max().double_value(&[]);
            assert!(difference < 1e-4, "N={packets}: largest difference {difference}");
        }
    }

    /// Convolution I as a product over byte windows, and the spatial attention on the
    /// channels-last maps, give what libtorch's 1-D convolution and the channels-first
    /// attention give per packet, with the same weights.
    #[test]
    fn packet_features_equal_the_1d_convolution_and_attention() {
        tch::manual_seed(5);
        let _no_grad = tch::no_grad_guard();
        for packets in SUPPORTED_PACKETS_PER_CONTEXT {
            let store = nn::VarStore::new(Device::Cpu);
            let net = ComboNet::try_new(&store.root(), packets, 1500, Attention::SaSe, 4).unwrap();
            let (batch, n) = (2i64, packets as i64);
            let bytes = Tensor::rand([batch, n, 1500], (Kind::Float, Device::Cpu));
            let spatial = net.spatial1.as_ref().unwrap();
            let fast = net.packet_convolution(&bytes, batch, None).unwrap().relu();
            let fast = spatial.forward_packets(&fast).unwrap();

            let per_packet = net.conv1.forward(&bytes.reshape([batch * n, 1, 1500])).unwrap();
            let pooled_input = per_packet.relu();
            let max = pooled_input.amax([1], true);
            let mean = pooled_input.mean_dim([1].as_slice(), true, Kind::Float);
            let gate = spatial.conv.forward(&Tensor::cat(&[max, mean], 1)).unwrap().sigmoid();
            let reference = (&pooled_input * gate)
                .reshape([batch, n, CONV1_FILTERS, net.conv1_width as i64])
                .permute([0, 1, 3, 2]);
            assert_eq!(fast.size(), reference.size());
            let difference = (fast - reference).abs().max().double_value(&[]);
            assert!(difference < 1e-4, "N={packets}: largest difference {difference}");
        }
    }
}
