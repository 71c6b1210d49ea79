//! Engine configuration, read from TOML. Every field has a default, so an empty document is a
//! valid configuration apart from the model path.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Largest flow table per worker; its index is reserved up front.
pub const MAX_FLOWS: usize = 1 << 24;
/// Largest batch: on the CPU a context of N=5 needs about 6.5 MB of activations while its
/// batch runs, so 1024 already means about 7 GB.
pub const MAX_BATCH: usize = 1024;
/// Longest a context may wait for its batch to fill.
pub const MAX_WAIT_US: u64 = 1_000_000;
pub const MAX_PENDING_RECORDS: usize = 1 << 24;
/// libtorch's thread pool is process-wide; far more threads than cores only hurts (and very
/// large counts crash inside libgomp).
pub const MAX_CPU_THREADS: usize = 1024;

/// Bytes kept of every packet, from the IP header on (the paper's 1500).
pub const DEFAULT_PACKET_BYTES: usize = 1500;

/// The whole configuration of an engine.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub model: ModelConfig,
    /// Pre-processing; when given it must equal the setting the model was trained with (the
    /// model card's), otherwise the engine refuses to start. When absent, the card's is used.
    pub preprocess: Option<PreprocessConfig>,
    pub flows: FlowConfig,
    pub inference: InferenceConfig,
}

impl EngineConfig {
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    /// Reads a TOML file; a relative `model.path` is taken relative to the file's folder.
    pub fn from_toml_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut config = Self::from_toml_str(&text)?;
        if let (Some(model), Some(dir)) = (config.model.path.as_mut(), path.parent()) {
            if model.is_relative() {
                *model = dir.join(&*model);
            }
        }
        Ok(config)
    }
}

/// Which model to load and where to run it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The model card (`*.card.toml`); the weights file sits beside it, as the card names it.
    pub path: Option<PathBuf>,
    /// `auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:<index>`.
    pub device: String,
    /// Intra-op threads libtorch may use for CPU inference; 0 picks one fewer than the CPUs
    /// this process may run on (see [`ModelConfig::effective_cpu_threads`]).
    pub cpu_threads: usize,
    /// Freed CPU activation memory the model may keep for the next batch, in MB; 0 sizes it
    /// from a warm-up batch at start (twice what a full batch needed).
    pub cpu_cache_mb: usize,
    /// On a CUDA device, run the model in mixed precision (libtorch's autocast: convolutions
    /// and products in half precision, reductions and the softmax in f32). Ignored on the CPU,
    /// where half precision is slower.
    pub mixed_precision: bool,
    /// Classes reported per record, best first (at most [`crate::MAX_TOP_K`]).
    pub top_k: usize,
    /// `torch` runs the model; `null` loads only the card and answers every context with
    /// uniform probabilities, to measure the packet path with inference off.
    pub backend: BackendKind,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Torch,
    Null,
}

impl ModelConfig {
    /// The intra-op threads the engine gives libtorch: `cpu_threads`, or for 0 one fewer than
    /// the CPUs this process may run on, and at least one.
    ///
    /// libtorch's own default, one per CPU, does not fit a packet engine: the model's OpenMP
    /// threads spin while they wait for each other, on the cores the capture threads need,
    /// and whenever one of them is descheduled the others wait. Measured on 2 cores with
    /// another program busy on one: an offline corpus replay classified 88 contexts/s with 2
    /// threads and 615 with 1; on an idle machine 2 threads are about twice as fast, so a
    /// host that only replays captures may set `cpu_threads` to its core count.
    pub fn effective_cpu_threads(&self) -> usize {
        if self.cpu_threads > 0 {
            return self.cpu_threads;
        }
        std::thread::available_parallelism().map_or(1, |cpus| cpus.get().saturating_sub(1).max(1))
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: None,
            device: "auto".into(),
            cpu_threads: 0,
            cpu_cache_mb: 0,
            mixed_precision: false,
            top_k: 3,
            backend: BackendKind::Torch,
        }
    }
}

/// Which packets are kept and how they are turned into model input. Defaults are the paper's.
///
/// ICMP, ICMPv6 and every other transport but TCP and UDP are always skipped (counted as
/// `other_transport`): a context is gathered within a five-tuple flow, which needs ports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Skip DNS (port 53), mDNS (5353) and LLMNR (5355) packets: name lookups say nothing
    /// about the encrypted application.
    pub skip_dns: bool,
    /// Skip NTP (UDP port 123).
    pub skip_ntp: bool,
    /// Skip NetBIOS (ports 137-139).
    pub skip_netbios: bool,
    /// Skip TCP segments without payload whose flags are SYN, ACK or FIN (handshake,
    /// acknowledgements, teardown). The test reads the TCP flags and the TCP payload length
    /// computed from the IP and TCP headers.
    pub skip_empty_tcp: bool,
    /// Pad the 8-byte UDP header with 12 zero bytes so it is as long as a bare TCP header.
    pub pad_udp_header: bool,
    /// Zero the source and destination IP addresses.
    pub zero_ip_addresses: bool,
    /// Zero the TCP sequence and acknowledgement numbers.
    pub zero_tcp_seq_ack: bool,
    /// Bytes kept per packet from the IP header on; shorter packets are zero-padded.
    pub packet_bytes: usize,
    /// Zero the IPv4 identification field (or the IPv6 flow label): a capture-site shortcut.
    pub mask_ip_id: bool,
    /// Zero the IPv4 TTL / IPv6 hop limit: says how far the capture point was, not the app.
    pub mask_ttl: bool,
    /// Zero the IPv4 header checksum and the TCP/UDP checksums.
    pub mask_checksums: bool,
    /// Zero the TCP/UDP ports: well-known ports make the task a port lookup.
    pub mask_ports: bool,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            skip_dns: true,
            skip_ntp: true,
            skip_netbios: true,
            skip_empty_tcp: true,
            pad_udp_header: true,
            zero_ip_addresses: true,
            zero_tcp_seq_ack: true,
            packet_bytes: DEFAULT_PACKET_BYTES,
            mask_ip_id: false,
            mask_ttl: false,
            mask_checksums: false,
            mask_ports: false,
        }
    }
}

/// What the engine does with flows that end before filling one context.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShortFlowPolicy {
    /// When a flow ends with fewer than N kept packets and no context yet, classify what it
    /// has, the missing packets zero (all -1 after scaling), so every flow gets a verdict.
    Pad,
    /// Such flows get no context; they are counted as `short_flows_dropped`.
    Drop,
}

/// The flow table and how contexts are cut from flows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    /// Flows tracked per worker; when full, the flow idle the longest is evicted (and its
    /// verdict reported).
    pub max_flows: usize,
    /// A flow with no packet for this long (capture time) ends and its verdict is reported.
    pub idle_timeout_secs: f64,
    /// Emit a context every `stride` kept packets of a flow; 0 means N (disjoint contexts).
    pub stride: usize,
    /// Contexts classified per flow; later packets only update counters. 0 means no limit.
    pub contexts_per_flow: usize,
    pub short_flows: ShortFlowPolicy,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            max_flows: 65_536,
            idle_timeout_secs: 120.0,
            stride: 0,
            contexts_per_flow: 4,
            short_flows: ShortFlowPolicy::Pad,
        }
    }
}

/// What a worker does when its ring towards the inference thread is full.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FullRingPolicy {
    /// Live traffic: never block the packet path; the context is dropped and counted.
    Drop,
    /// Offline replay: wait for room (back-pressure); nothing is dropped.
    Wait,
}

/// Batching and queueing between workers and the inference thread.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Largest batch handed to the model.
    pub max_batch: usize,
    /// Longest time the first context of a batch waits for the batch to fill, in microseconds.
    pub max_wait_us: u64,
    /// Contexts a worker may have in flight (queued or being classified). This bounds the
    /// memory of each worker's ring: `ring_capacity * N * packet_bytes` bytes.
    pub ring_capacity: usize,
    pub on_full: FullRingPolicy,
    /// Records a worker keeps for the caller to poll; beyond this the oldest are dropped and
    /// counted (`records_overflowed`).
    pub max_pending_records: usize,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            max_batch: 64,
            max_wait_us: 2_000,
            ring_capacity: 1024,
            on_full: FullRingPolicy::Drop,
            max_pending_records: 65_536,
        }
    }
}

impl EngineConfig {
    /// Rejects values that would make memory unbounded or the pipeline stall.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &str| Err(Error::Config(what.to_string()));
        if self.flows.max_flows == 0 || self.flows.max_flows > MAX_FLOWS {
            return bad("flows.max_flows must be between 1 and 16777216");
        }
        if !(self.flows.idle_timeout_secs > 0.0 && self.flows.idle_timeout_secs <= 86_400.0 * 365.0)
        {
            return bad("flows.idle_timeout_secs must be positive and at most a year");
        }
        if self.inference.max_batch == 0 || self.inference.max_batch > MAX_BATCH {
            return bad("inference.max_batch must be between 1 and 1024");
        }
        if self.inference.max_wait_us > MAX_WAIT_US {
            return bad("inference.max_wait_us must be at most 1000000 (one second)");
        }
        if self.inference.max_pending_records > MAX_PENDING_RECORDS {
            return bad("inference.max_pending_records must be at most 16777216");
        }
        if self.model.cpu_threads > MAX_CPU_THREADS {
            return bad("model.cpu_threads must be between 0 (one fewer than the CPUs) and 1024");
        }
        if self.model.cpu_cache_mb > 1 << 20 {
            return bad("model.cpu_cache_mb must be at most 1048576 (1 TB)");
        }
        if self.inference.ring_capacity == 0 || self.inference.ring_capacity > 1 << 20 {
            return bad("inference.ring_capacity must be between 1 and 1048576");
        }
        if self.inference.max_pending_records == 0 {
            return bad("inference.max_pending_records must be at least 1");
        }
        if self.model.top_k == 0 || self.model.top_k > crate::MAX_TOP_K {
            return bad("model.top_k must be between 1 and 5");
        }
        if let Some(pre) = &self.preprocess {
            pre.validate()?;
        }
        Ok(())
    }
}

impl PreprocessConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.packet_bytes < 60 || self.packet_bytes > 65_535 {
            return Err(Error::Config(
                "preprocess.packet_bytes must be between 60 and 65535".into(),
            ));
        }
        Ok(())
    }
}
