//! Labeled captures to a dataset of contexts, with the plugin's own parsing, filtering,
//! encoding and context rule, so a model trains on exactly what the engine will show it.
//!
//! Storage (one safetensors file): every kept packet once, its encoded bytes with trailing
//! zeros trimmed; each context as N indices into those packets (`u32::MAX` for the zero
//! packets of a padded short flow). Overlapping contexts (stride < N) share their packets.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use combo_plugin::config::PreprocessConfig;
use combo_plugin::engine::context_due;
use combo_plugin::flow::{FiveTuple, FlowKey};
use combo_plugin::parse::{self, LinkType};
use combo_plugin::preprocess;
use safetensors::{Dtype, SafeTensors, serialize_to_file, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::capture::CaptureReader;

/// Index of the all-zero packet that pads short flows.
pub const ZERO_PACKET: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SplitMode {
    /// All contexts of a flow in one split (default).
    Flow,
    /// All flows of a capture file in one split: the model meets new networks in the test.
    Capture,
    /// Contexts split independently, as the paper did; optimistic, since packets of one flow
    /// then sit in both training and test.
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SmallClasses {
    /// Classes under the minimum are left out (and reported).
    Drop,
    /// Classes under the minimum become one class, "Other".
    Other,
}

/// Which split a context belongs to.
pub const TRAIN: u8 = 0;
pub const VALIDATION: u8 = 1;
pub const TEST: u8 = 2;
pub const SPLIT_NAMES: [&str; 3] = ["train", "validation", "test"];

/// What the dataset was built from and how; stored in the file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetInfo {
    pub labels: Vec<String>,
    pub packets_per_context: usize,
    pub stride: usize,
    pub contexts_per_flow: usize,
    pub per_class_cap: usize,
    pub min_flows_per_class: usize,
    pub seed: u64,
    pub split: SplitMode,
    pub preprocess: PreprocessConfig,
    pub source: String,
    pub captures: Vec<String>,
    /// Classes left out or merged, with their flow counts.
    pub small_classes: BTreeMap<String, usize>,
    /// Packets and flows seen but not used, by reason.
    pub unused: BTreeMap<String, u64>,
}

/// A flow of the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowEntry {
    pub capture: u32,
    pub label: u32,
    pub description: String,
}

pub struct Dataset {
    pub info: DatasetInfo,
    packet_bytes: Vec<u8>,
    /// Start of packet i in `packet_bytes`; one more entry than packets.
    packet_offsets: Vec<u64>,
    /// N packet indices per context.
    pub contexts: Vec<u32>,
    pub context_label: Vec<u32>,
    pub context_flow: Vec<u32>,
    pub context_split: Vec<u8>,
    pub flows: Vec<FlowEntry>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.context_label.len()
    }

    pub fn packet_bytes_per_packet(&self) -> usize {
        self.info.preprocess.packet_bytes
    }

    /// Indices of the contexts of one split, in storage order.
    pub fn split(&self, split: u8) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.context_split[i] == split).collect()
    }

    /// Appends the model input of the given contexts: `indices.len() * N * packet_bytes`
    /// bytes, packets oldest first, each zero-padded.
    pub fn fill_batch(&self, indices: &[usize], out: &mut Vec<u8>) {
        let size = self.packet_bytes_per_packet();
        let n = self.info.packets_per_context;
        for &context in indices {
            for &packet in &self.contexts[context * n..(context + 1) * n] {
                let start = out.len();
                if packet != ZERO_PACKET {
                    let from = self.packet_offsets[packet as usize] as usize;
                    let to = self.packet_offsets[packet as usize + 1] as usize;
                    out.extend_from_slice(&self.packet_bytes[from..to]);
                }
                out.resize(start + size, 0);
            }
        }
    }

    pub fn class_counts(&self, split: u8) -> Vec<usize> {
        let mut counts = vec![0; self.info.labels.len()];
        for i in self.split(split) {
            counts[self.context_label[i] as usize] += 1;
        }
        counts
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let as_bytes =
            |values: &[u32]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
        let offsets: Vec<u8> = self.packet_offsets.iter().flat_map(|v| v.to_le_bytes()).collect();
        let contexts = as_bytes(&self.contexts);
        let labels = as_bytes(&self.context_label);
        let flows = as_bytes(&self.context_flow);
        let flow_capture: Vec<u32> = self.flows.iter().map(|f| f.capture).collect();
        let flow_label: Vec<u32> = self.flows.iter().map(|f| f.label).collect();
        let (flow_capture, flow_label) = (as_bytes(&flow_capture), as_bytes(&flow_label));
        let n = self.info.packets_per_context;
        let views = [
            (
                "packet_bytes",
                TensorView::new(Dtype::U8, vec![self.packet_bytes.len()], &self.packet_bytes)?,
            ),
            (
                "packet_offsets",
                TensorView::new(Dtype::U64, vec![self.packet_offsets.len()], &offsets)?,
            ),
            ("contexts", TensorView::new(Dtype::U32, vec![self.len(), n], &contexts)?),
            ("context_label", TensorView::new(Dtype::U32, vec![self.len()], &labels)?),
            ("context_flow", TensorView::new(Dtype::U32, vec![self.len()], &flows)?),
            ("context_split", TensorView::new(Dtype::U8, vec![self.len()], &self.context_split)?),
            ("flow_capture", TensorView::new(Dtype::U32, vec![self.flows.len()], &flow_capture)?),
            ("flow_label", TensorView::new(Dtype::U32, vec![self.flows.len()], &flow_label)?),
        ];
        let descriptions: Vec<&str> = self.flows.iter().map(|f| f.description.as_str()).collect();
        let metadata = HashMap::from([
            ("combo_dataset".to_string(), serde_json::to_string(&self.info)?),
            ("flow_descriptions".to_string(), serde_json::to_string(&descriptions)?),
        ]);
        serialize_to_file(views, Some(metadata), path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        // The writer goes through a private temporary file (mode 0600) renamed into place;
        // give the dataset the permissions of the other files combo writes.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .with_context(|| format!("cannot set the permissions of {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let file = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a dataset file", path.display()))?;
        let (_, metadata) = SafeTensors::read_metadata(&bytes)?;
        let metadata = metadata.metadata().clone().unwrap_or_default();
        let info: DatasetInfo = serde_json::from_str(
            metadata.get("combo_dataset").context("no combo_dataset metadata: not a dataset")?,
        )?;
        let descriptions: Vec<String> =
            serde_json::from_str(metadata.get("flow_descriptions").map_or("[]", String::as_str))?;
        let raw = |name: &str| -> Result<Vec<u8>> {
            Ok(file.tensor(name).with_context(|| format!("dataset lacks {name}"))?.data().to_vec())
        };
        let u32s = |name: &str| -> Result<Vec<u32>> {
            Ok(raw(name)?
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let packet_offsets: Vec<u64> = raw("packet_offsets")?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let flow_capture = u32s("flow_capture")?;
        let flow_label = u32s("flow_label")?;
        let flows = flow_capture
            .iter()
            .zip(&flow_label)
            .enumerate()
            .map(|(i, (&capture, &label))| FlowEntry {
                capture,
                label,
                description: descriptions.get(i).cloned().unwrap_or_default(),
            })
            .collect();
        let dataset = Self {
            packet_bytes: raw("packet_bytes")?,
            packet_offsets,
            contexts: u32s("contexts")?,
            context_label: u32s("context_label")?,
            context_flow: u32s("context_flow")?,
            context_split: raw("context_split")?,
            flows,
            info,
        };
        dataset.validate().with_context(|| format!("{}: inconsistent dataset", path.display()))?;
        Ok(dataset)
    }

    /// Every index in range, so later slicing cannot panic.
    fn validate(&self) -> Result<()> {
        let n = self.info.packets_per_context;
        let packets = self.packet_offsets.len().saturating_sub(1);
        let contexts = self.context_label.len();
        if self.contexts.len() != contexts * n
            || self.context_flow.len() != contexts
            || self.context_split.len() != contexts
        {
            bail!("array lengths disagree");
        }
        if self.packet_offsets.windows(2).any(|w| w[0] > w[1])
            || self
                .packet_offsets
                .last()
                .is_some_and(|&end| end as usize != self.packet_bytes.len())
        {
            bail!("packet offsets out of order");
        }
        if self.contexts.iter().any(|&p| p != ZERO_PACKET && p as usize >= packets) {
            bail!("a context names a packet that is not there");
        }
        let classes = self.info.labels.len() as u32;
        if self.context_label.iter().any(|&l| l >= classes)
            || self.context_flow.iter().any(|&f| f as usize >= self.flows.len())
            || self.context_split.iter().any(|&s| s > TEST)
        {
            bail!("a label, flow or split index is out of range");
        }
        Ok(())
    }
}

/// Where labels come from.
pub enum LabelSource {
    /// `root/<label>/*.pcap[ng]`.
    Directories { root: PathBuf },
    /// Capture files labeled by the longest matching file-name prefix of a TSV map.
    PrefixMap { map: PathBuf, column: String, inputs: Vec<PathBuf> },
    /// A per-flow table (CSV with pcap, l4, src_ip, src_port, dst_ip, dst_port columns).
    FlowTable { table: PathBuf, column: String, filters: Vec<(String, String)>, captures: PathBuf },
}

/// How contexts are cut and classes balanced.
pub struct BuildOptions {
    pub packets_per_context: usize,
    pub stride: usize,
    pub contexts_per_flow: usize,
    pub per_class_cap: usize,
    pub min_flows_per_class: usize,
    pub small_classes: SmallClasses,
    pub seed: u64,
    pub split: SplitMode,
    pub preprocess: PreprocessConfig,
}

/// Labels of the captures to read, or of single flows within them.
enum Labeling {
    PerCapture(Vec<(PathBuf, String)>),
    PerFlow { captures: Vec<PathBuf>, flows: HashMap<(String, FlowKey), String> },
}

pub fn build(source: &LabelSource, options: &BuildOptions) -> Result<Dataset> {
    if !matches!(options.packets_per_context, 1..=64) {
        bail!("N must be between 1 and 64");
    }
    options.preprocess.validate()?;
    let (labeling, description) = resolve_labels(source)?;
    let captures: Vec<PathBuf> = match &labeling {
        Labeling::PerCapture(list) => list.iter().map(|(path, _)| path.clone()).collect(),
        Labeling::PerFlow { captures, .. } => captures.clone(),
    };
    log::info!("reading {} capture(s) from {description}", captures.len());

    // Read every capture: kept packets grouped by flow, labeled flows only.
    let mut builder = Builder::new(options);
    for (capture_index, path) in captures.iter().enumerate() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let capture_label = match &labeling {
            Labeling::PerCapture(list) => Some(list[capture_index].1.as_str()),
            Labeling::PerFlow { .. } => None,
        };
        let flow_labels = match &labeling {
            Labeling::PerFlow { flows, .. } => Some(flows),
            Labeling::PerCapture(_) => None,
        };
        builder.read_capture(path, &name, capture_index as u32, capture_label, flow_labels);
    }
    builder.finish(captures, description)
}

fn resolve_labels(source: &LabelSource) -> Result<(Labeling, String)> {
    match source {
        LabelSource::Directories { root } => {
            let mut list = Vec::new();
            let mut labels: Vec<PathBuf> = std::fs::read_dir(root)
                .with_context(|| format!("cannot list {}", root.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            labels.sort();
            for dir in labels {
                let label =
                    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                for file in capture_files(&dir)? {
                    list.push((file, label.clone()));
                }
            }
            Ok((Labeling::PerCapture(list), format!("label folders under {}", root.display())))
        }
        LabelSource::PrefixMap { map, column, inputs } => {
            let prefixes = read_prefix_map(map, column)?;
            let mut list = Vec::new();
            for input in inputs {
                let files =
                    if input.is_dir() { capture_files(input)? } else { vec![input.clone()] };
                for file in files {
                    let stem = file
                        .file_name()
                        .map(|n| n.to_string_lossy().to_lowercase())
                        .unwrap_or_default();
                    // Longest matching prefix wins; "-" keeps the file out of this task.
                    let label = prefixes
                        .iter()
                        .filter(|(prefix, _)| stem.starts_with(prefix.as_str()))
                        .max_by_key(|(prefix, _)| prefix.len())
                        .map(|(_, label)| label.clone());
                    match label {
                        Some(label) if label != "-" => list.push((file, label)),
                        _ => log::debug!("{}: no label in the map, left out", file.display()),
                    }
                }
            }
            Ok((
                Labeling::PerCapture(list),
                format!("prefix map {} column {column}", map.display()),
            ))
        }
        LabelSource::FlowTable { table, column, filters, captures } => {
            let (flows, files) = read_flow_table(table, column, filters)?;
            let captures: Vec<PathBuf> =
                files.iter().map(|f| captures.join(f)).filter(|p| p.exists()).collect();
            let filter_text: Vec<String> =
                filters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Ok((
                Labeling::PerFlow { captures, flows },
                format!("flow table {} column {column} {}", table.display(), filter_text.join(" ")),
            ))
        }
    }
}

fn capture_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    files.sort();
    Ok(files)
}

/// `prefix<TAB>label...` rows with a header naming the columns; `#` starts a comment.
fn read_prefix_map(path: &Path, column: &str) -> Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#'));
    let header: Vec<&str> = rows.next().context("empty prefix map")?.split('\t').collect();
    let index = header.iter().position(|h| *h == column).with_context(|| {
        format!("{}: no column {column:?} (columns: {header:?})", path.display())
    })?;
    Ok(rows
        .filter_map(|row| {
            let fields: Vec<&str> = row.split('\t').collect();
            Some((fields.first()?.to_lowercase(), fields.get(index)?.to_string()))
        })
        .collect())
}

type FlowLabels = HashMap<(String, FlowKey), String>;

/// Flow labels keyed by capture file name and the unordered endpoints plus protocol.
fn read_flow_table(
    path: &Path,
    column: &str,
    filters: &[(String, String)],
) -> Result<(FlowLabels, Vec<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty flow table")?.split(',').collect();
    let find = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("{}: no column {name:?}", path.display()))
    };
    let (pcap, l4, src_ip, src_port, dst_ip, dst_port) = (
        find("pcap")?,
        find("l4")?,
        find("src_ip")?,
        find("src_port")?,
        find("dst_ip")?,
        find("dst_port")?,
    );
    let label_index = find(column)?;
    let filter_indices: Vec<(usize, &str)> =
        filters.iter().map(|(k, v)| Ok((find(k)?, v.as_str()))).collect::<Result<_>>()?;
    let mut flows = HashMap::new();
    let mut files = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        if filter_indices.iter().any(|&(i, v)| get(i) != v) {
            continue;
        }
        let protocol = match get(l4) {
            "TCP" => 6,
            "UDP" => 17,
            _ => continue,
        };
        let (Ok(src), Ok(dst)) = (get(src_ip).parse::<IpAddr>(), get(dst_ip).parse::<IpAddr>())
        else {
            continue;
        };
        let (Ok(sport), Ok(dport)) = (get(src_port).parse::<u16>(), get(dst_port).parse::<u16>())
        else {
            continue;
        };
        let tuple = FiveTuple { src, dst, src_port: sport, dst_port: dport, protocol };
        let file = get(pcap).to_string();
        if !files.contains(&file) {
            files.push(file.clone());
        }
        flows.insert((file, FlowKey::from(&tuple)), get(label_index).to_string());
    }
    files.sort();
    Ok((flows, files))
}

/// Packets of one flow while a capture is read.
struct OpenFlow {
    label: String,
    description: String,
    packets: Vec<u32>,
}

struct Builder<'a> {
    options: &'a BuildOptions,
    packet_bytes: Vec<u8>,
    packet_offsets: Vec<u64>,
    /// Every labeled flow: capture, label, description, kept packets.
    flows: Vec<(u32, OpenFlow)>,
    unused: BTreeMap<String, u64>,
    scratch: Vec<u8>,
}

impl<'a> Builder<'a> {
    fn new(options: &'a BuildOptions) -> Self {
        Self {
            options,
            packet_bytes: Vec::new(),
            packet_offsets: vec![0],
            flows: Vec::new(),
            unused: BTreeMap::new(),
            scratch: vec![0; options.preprocess.packet_bytes],
        }
    }

    fn count(&mut self, reason: &str) {
        *self.unused.entry(reason.to_string()).or_default() += 1;
    }

    fn read_capture(
        &mut self,
        path: &Path,
        name: &str,
        capture: u32,
        capture_label: Option<&str>,
        flow_labels: Option<&FlowLabels>,
    ) {
        let mut reader = match CaptureReader::open(path) {
            Ok(reader) => reader,
            Err(e) => {
                log::warn!("{e}");
                self.count("unreadable_captures");
                return;
            }
        };
        let mut open: HashMap<FlowKey, OpenFlow> = HashMap::new();
        loop {
            let frame = match reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    log::warn!("{e} (the frames before it are used)");
                    self.count("capture_errors");
                    break;
                }
            };
            let Ok(packet) = parse::parse(LinkType(frame.link_type), frame.data, frame.orig_len)
            else {
                self.count("packets_not_parsed");
                continue;
            };
            if preprocess::filter(&packet, &self.options.preprocess).is_some() {
                self.count("packets_filtered");
                continue;
            }
            let tuple = FiveTuple::of(&packet);
            let key = FlowKey::from(&tuple);
            if !open.contains_key(&key) {
                let label = match (capture_label, flow_labels) {
                    (Some(label), _) => Some(label.to_string()),
                    (None, Some(labels)) => labels.get(&(name.to_string(), key)).cloned(),
                    (None, None) => None,
                };
                let Some(label) = label else {
                    self.count("packets_of_unlabeled_flows");
                    continue;
                };
                let description = format!(
                    "{name} {} {}:{} {}:{}",
                    tuple.protocol, tuple.src, tuple.src_port, tuple.dst, tuple.dst_port
                );
                open.insert(key, OpenFlow { label, description, packets: Vec::new() });
            }

            // Encode once; store without the zero padding.
            preprocess::encode(&packet, &self.options.preprocess, &mut self.scratch);
            let used = self.scratch.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            self.packet_bytes.extend_from_slice(&self.scratch[..used]);
            self.packet_offsets.push(self.packet_bytes.len() as u64);
            let index = (self.packet_offsets.len() - 2) as u32;
            if let Some(flow) = open.get_mut(&key) {
                flow.packets.push(index);
            }
        }
        let mut finished: Vec<OpenFlow> = open.into_values().collect();
        finished.sort_by(|a, b| a.description.cmp(&b.description));
        self.flows.extend(finished.into_iter().map(|flow| (capture, flow)));
    }

    fn finish(mut self, captures: Vec<PathBuf>, source: String) -> Result<Dataset> {
        let options = self.options;
        let n = options.packets_per_context;
        let stride = if options.stride == 0 { n } else { options.stride } as u64;

        // Classes by flow count; small ones dropped or merged.
        let mut flows_per_label: BTreeMap<String, usize> = BTreeMap::new();
        for (_, flow) in &self.flows {
            *flows_per_label.entry(flow.label.clone()).or_default() += 1;
        }
        let small: BTreeMap<String, usize> = flows_per_label
            .iter()
            .filter(|(_, count)| **count < options.min_flows_per_class)
            .map(|(label, &count)| (label.clone(), count))
            .collect();
        let mut labels: Vec<String> =
            flows_per_label.keys().filter(|l| !small.contains_key(*l)).cloned().collect();
        if options.small_classes == SmallClasses::Other
            && !small.is_empty()
            && !labels.iter().any(|l| l == "Other")
        {
            labels.push("Other".into());
        }
        if labels.len() < 2 {
            bail!("fewer than two classes left ({labels:?}); lower --min-flows or add data");
        }
        let label_index = |label: &str| -> Option<u32> {
            let label = if small.contains_key(label) {
                match options.small_classes {
                    SmallClasses::Drop => return None,
                    SmallClasses::Other => "Other",
                }
            } else {
                label
            };
            labels.iter().position(|l| l == label).map(|i| i as u32)
        };

        // Contexts per flow, by the engine's rule; short flows padded as the engine does.
        let mut flows = Vec::new();
        let mut contexts: Vec<u32> = Vec::new();
        let mut context_label = Vec::new();
        let mut context_flow = Vec::new();
        for (capture, flow) in std::mem::take(&mut self.flows) {
            let Some(label) = label_index(&flow.label) else {
                self.count("flows_of_small_classes");
                continue;
            };
            if flow.packets.is_empty() {
                continue;
            }
            let flow_index = flows.len() as u32;
            let mut made = 0;
            for kept in 1..=flow.packets.len() as u64 {
                let limit_reached =
                    options.contexts_per_flow > 0 && made >= options.contexts_per_flow;
                if limit_reached || !context_due(kept, n, stride) {
                    continue;
                }
                contexts.extend_from_slice(&flow.packets[kept as usize - n..kept as usize]);
                context_label.push(label);
                context_flow.push(flow_index);
                made += 1;
            }
            if made == 0 {
                contexts.extend_from_slice(&flow.packets);
                contexts.extend(std::iter::repeat_n(ZERO_PACKET, n - flow.packets.len()));
                context_label.push(label);
                context_flow.push(flow_index);
            }
            flows.push(FlowEntry { capture, label, description: flow.description });
        }

        // Down-sample each class to the cap, then split.
        let mut rng = SplitMix64(options.seed);
        let mut keep: Vec<usize> = Vec::new();
        for class in 0..labels.len() as u32 {
            let mut members: Vec<usize> =
                (0..context_label.len()).filter(|&i| context_label[i] == class).collect();
            rng.shuffle(&mut members);
            if options.per_class_cap > 0 {
                members.truncate(options.per_class_cap);
            }
            keep.extend(members);
        }
        keep.sort_unstable();
        let contexts: Vec<u32> =
            keep.iter().flat_map(|&i| contexts[i * n..(i + 1) * n].iter().copied()).collect();
        let context_label: Vec<u32> = keep.iter().map(|&i| context_label[i]).collect();
        let context_flow: Vec<u32> = keep.iter().map(|&i| context_flow[i]).collect();
        let context_split = assign_splits(
            options.split,
            &context_label,
            &context_flow,
            &flows,
            labels.len(),
            &mut rng,
        );

        let info = DatasetInfo {
            labels,
            packets_per_context: n,
            stride: stride as usize,
            contexts_per_flow: options.contexts_per_flow,
            per_class_cap: options.per_class_cap,
            min_flows_per_class: options.min_flows_per_class,
            seed: options.seed,
            split: options.split,
            preprocess: options.preprocess.clone(),
            source,
            captures: captures.iter().map(|c| c.display().to_string()).collect(),
            small_classes: small,
            unused: self.unused,
        };
        let dataset = Dataset {
            info,
            packet_bytes: self.packet_bytes,
            packet_offsets: self.packet_offsets,
            contexts,
            context_label,
            context_flow,
            context_split,
            flows,
        };
        dataset.validate()?;
        Ok(dataset)
    }
}

/// 8:1:1 by flow (per class, so every class reaches each split when it has ten flows), by
/// capture, or by context.
fn assign_splits(
    mode: SplitMode,
    context_label: &[u32],
    context_flow: &[u32],
    flows: &[FlowEntry],
    classes: usize,
    rng: &mut SplitMix64,
) -> Vec<u8> {
    let by_rank = |rank: usize, total: usize| -> u8 {
        // Rank r of `total` shuffled members: the first 80 % train, then 10 % validation.
        let position = (rank * 10) / total.max(1);
        match position {
            0..=7 => TRAIN,
            8 => VALIDATION,
            _ => TEST,
        }
    };
    match mode {
        SplitMode::Sample => {
            let mut split = vec![TRAIN; context_label.len()];
            for class in 0..classes as u32 {
                let mut members: Vec<usize> =
                    (0..context_label.len()).filter(|&i| context_label[i] == class).collect();
                rng.shuffle(&mut members);
                for (rank, &i) in members.iter().enumerate() {
                    split[i] = by_rank(rank, members.len());
                }
            }
            split
        }
        SplitMode::Flow => {
            let mut flow_split = vec![TRAIN; flows.len()];
            for class in 0..classes as u32 {
                let mut members: Vec<usize> =
                    (0..flows.len()).filter(|&f| flows[f].label == class).collect();
                rng.shuffle(&mut members);
                for (rank, &f) in members.iter().enumerate() {
                    flow_split[f] = by_rank(rank, members.len());
                }
            }
            context_flow.iter().map(|&f| flow_split[f as usize]).collect()
        }
        SplitMode::Capture => {
            let captures = flows.iter().map(|f| f.capture).max().map_or(0, |m| m as usize + 1);
            let mut order: Vec<usize> = (0..captures).collect();
            rng.shuffle(&mut order);
            let mut capture_split = vec![TRAIN; captures];
            for (rank, &c) in order.iter().enumerate() {
                capture_split[c] = by_rank(rank, captures);
            }
            context_flow
                .iter()
                .map(|&f| capture_split[flows[f as usize].capture as usize])
                .collect()
        }
    }
}

/// A small, seedable generator (SplitMix64): splits and shuffles are the same for a seed on
/// every machine.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// A one-line account of a dataset, per split and class.
pub fn describe(dataset: &Dataset) -> String {
    let mut text = format!(
        "{} contexts of N={} from {} flows, {} classes, split by {:?}\n",
        dataset.len(),
        dataset.info.packets_per_context,
        dataset.flows.len(),
        dataset.info.labels.len(),
        dataset.info.split
    );
    let counts: Vec<Vec<usize>> = (0..3).map(|s| dataset.class_counts(s)).collect();
    for (class, label) in dataset.info.labels.iter().enumerate() {
        text += &format!(
            "  {label:<20} train {:>6} validation {:>6} test {:>6}\n",
            counts[0][class], counts[1][class], counts[2][class]
        );
    }
    if !dataset.info.small_classes.is_empty() {
        text += &format!("  classes under the minimum: {:?}\n", dataset.info.small_classes);
    }
    text += &format!("  not used: {:?}", dataset.info.unused);
    text
}

/// `combo dataset`: exactly one label source.
#[derive(clap::Args)]
pub struct DatasetArgs {
    /// Output file (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Label source: a folder with one sub-folder of captures per label.
    #[arg(long, conflicts_with_all = ["prefix_map", "flow_table"])]
    dirs: Option<PathBuf>,
    /// Label source: a TSV of file-name prefixes (longest wins, `-` excludes).
    #[arg(long, requires = "inputs")]
    prefix_map: Option<PathBuf>,
    /// Label source: a per-flow CSV (pcap, l4, src_ip, src_port, dst_ip, dst_port, labels).
    #[arg(long, requires = "captures")]
    flow_table: Option<PathBuf>,
    /// Column of the prefix map or flow table holding the label.
    #[arg(long, default_value = "category")]
    column: String,
    /// Keep only flow-table rows where COLUMN=VALUE (repeatable), e.g. encrypted=1.
    #[arg(long, value_parser = parse_filter)]
    filter: Vec<(String, String)>,
    /// Captures (files or folders) for --prefix-map.
    #[arg(long, num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// Folder of the captures named by --flow-table.
    #[arg(long)]
    captures: Option<PathBuf>,
    /// Packets per context (N).
    #[arg(long, default_value_t = 5)]
    packets: usize,
    /// A context every `stride` kept packets; 0 = N.
    #[arg(long, default_value_t = 0)]
    stride: usize,
    /// Contexts per flow, first ones first; 0 = all.
    #[arg(long, default_value_t = 0)]
    contexts_per_flow: usize,
    /// Most contexts per class (down-sampling, the paper's 5000); 0 = no cap.
    #[arg(long, default_value_t = 5000)]
    per_class_cap: usize,
    /// Classes with fewer flows are dropped or merged into "Other".
    #[arg(long, default_value_t = 0)]
    min_flows: usize,
    #[arg(long, value_enum, default_value_t = SmallClasses::Drop)]
    small_classes: SmallClasses,
    #[arg(long, value_enum, default_value_t = SplitMode::Flow)]
    split: SplitMode,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Shortcut masks (see the README): zero these header fields.
    #[arg(long)]
    mask_ip_id: bool,
    #[arg(long)]
    mask_ttl: bool,
    #[arg(long)]
    mask_checksums: bool,
    #[arg(long)]
    mask_ports: bool,
}

fn parse_filter(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not COLUMN=VALUE"))
}

impl DatasetArgs {
    /// `--out`: the dataset file, or for `combo ablate` its output folder.
    pub fn out_path(&self) -> &Path {
        &self.out
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn source(&self) -> Result<LabelSource> {
        if let Some(root) = &self.dirs {
            return Ok(LabelSource::Directories { root: root.clone() });
        }
        if let Some(map) = &self.prefix_map {
            return Ok(LabelSource::PrefixMap {
                map: map.clone(),
                column: self.column.clone(),
                inputs: self.inputs.clone(),
            });
        }
        if let (Some(table), Some(captures)) = (&self.flow_table, &self.captures) {
            return Ok(LabelSource::FlowTable {
                table: table.clone(),
                column: self.column.clone(),
                filters: self.filter.clone(),
                captures: captures.clone(),
            });
        }
        bail!(
            "give one label source: --dirs, --prefix-map with --inputs, \
             or --flow-table with --captures"
        )
    }

    pub fn options(&self) -> BuildOptions {
        BuildOptions {
            packets_per_context: self.packets,
            stride: self.stride,
            contexts_per_flow: self.contexts_per_flow,
            per_class_cap: self.per_class_cap,
            min_flows_per_class: self.min_flows,
            small_classes: self.small_classes,
            seed: self.seed,
            split: self.split,
            preprocess: PreprocessConfig {
                mask_ip_id: self.mask_ip_id,
                mask_ttl: self.mask_ttl,
                mask_checksums: self.mask_checksums,
                mask_ports: self.mask_ports,
                ..PreprocessConfig::default()
            },
        }
    }
}

pub fn run(args: DatasetArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let dataset = build(&args.source()?, &args.options())?;
    dataset.save(&args.out)?;
    println!("{}", describe(&dataset));
    log::info!("wrote {} in {:.1} s", args.out.display(), started.elapsed().as_secs_f64());
    Ok(())
}
