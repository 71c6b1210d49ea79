//! `combo bench`: how fast this machine runs the packet path and the model.
//!
//! - `packets`: frames of real captures through the C ABI (the .so, as an engine loads it),
//!   with inference off (the null backend) or on; packets/s, ns per call, and the memory of
//!   100 000 idle flows.
//! - `model`: contexts/s of the network by batch size and N, the GFLOP/s that makes against
//!   its counted FLOPs, and the GFLOP/s libtorch reaches on the same convolution and dense
//!   shapes alone (the ceiling for this network on this machine).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use combo_plugin::config::{BackendKind, EngineConfig, FullRingPolicy, PreprocessConfig};
use combo_plugin::model::{
    Attention, Classifier, ModelCard, feature_widths, flops_per_context, select_device,
};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::capture::CaptureReader;
use crate::plugin::{Plugin, PluginEngine, default_path};
use crate::replay::{expand_inputs, model_or_default};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchKind,
    /// Also write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BenchKind {
    /// The packet path through the C ABI.
    Packets(PacketArgs),
    /// The model alone, by batch size and N.
    Model(ModelArgs),
    /// Offline replay through the C ABI with the real model (policy `wait`), against the
    /// model's own throughput at the batch sizes the replay formed.
    Replay(ReplayArgs),
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Inference {
    /// Contexts are consumed by the null backend: the packet path alone.
    Off,
    /// The real model on the inference thread, policy `drop` (live traffic).
    On,
    /// Off and on, twice each, alternating; reports the ratio of the best runs.
    Both,
}

/// What `bench packets` and `bench replay` replay, through which plugin and model.
#[derive(Args)]
struct ReplayInputs {
    /// Captures (files or folders) whose frames are replayed from memory [default:
    /// data/ndpi-corpus/pcap in $COMBO_SHARED, else in ../shared].
    captures: Vec<PathBuf>,
    /// The plugin (.so) to load; by default the one built beside this program.
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Model card (with the null backend only its labels, N and pre-processing count); by
    /// default the one `combo replay` takes.
    #[arg(long)]
    model: Option<PathBuf>,
}

/// [`ReplayInputs`] ready: the frames in memory, the plugin loaded, the model card found.
struct LoadedInputs {
    frames: Vec<Frame>,
    plugin: Arc<Plugin>,
    model: PathBuf,
}

impl ReplayInputs {
    fn load(&self) -> Result<LoadedInputs> {
        let model = model_or_default(self.model.clone())?;
        let frames = if self.captures.is_empty() {
            let shared = std::env::var_os("COMBO_SHARED").map_or("../shared".into(), PathBuf::from);
            load_frames(&[shared.join("data/ndpi-corpus/pcap")])?
        } else {
            load_frames(&self.captures)?
        };
        let bytes: usize = frames.iter().map(|f| f.data.len()).sum();
        println!("{} frames ({:.1} MB) loaded into memory", frames.len(), bytes as f64 / 1e6);
        let plugin = Plugin::load(&self.plugin.clone().unwrap_or_else(default_path))?;
        Ok(LoadedInputs { frames, plugin, model })
    }
}

#[derive(Args)]
struct PacketArgs {
    #[command(flatten)]
    inputs: ReplayInputs,
    #[arg(long, value_enum, default_value_t = Inference::Off)]
    inference: Inference,
    /// Seconds of replay to time (whole passes over the frames).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Idle flows created for the memory measurement.
    #[arg(long, default_value_t = 100_000)]
    flows: usize,
    /// libtorch threads of the inference thread with `--inference on` (0: the engine's
    /// default, one fewer than the CPUs).
    #[arg(long, default_value_t = 0)]
    model_threads: usize,
}

#[derive(Args)]
struct ModelArgs {
    #[arg(long, value_delimiter = ',', default_value = "1,32,256")]
    batches: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,3,5")]
    packets: Vec<usize>,
    #[arg(long, default_value = "sa_se")]
    attention: Attention,
    /// Seconds per measurement (at least two batches are run).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Mixed precision on a CUDA device (autocast, as `model.mixed_precision`), for the model
    /// and libtorch alone; without effect on the CPU.
    #[arg(long)]
    mixed_precision: bool,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    inputs: ReplayInputs,
    /// libtorch threads (0: the engine's default, one fewer than the CPUs); the model alone
    /// is timed on as many.
    #[arg(long, default_value_t = 0)]
    model_threads: usize,
    /// Largest batch the inference thread forms (`inference.max_batch`).
    #[arg(long, default_value_t = EngineConfig::default().inference.max_batch)]
    max_batch: usize,
    /// Seconds the model alone is timed at each batch size.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let results = match args.what {
        BenchKind::Packets(packet_args) => bench_packets(packet_args)?,
        BenchKind::Model(model_args) => bench_model(model_args)?,
        BenchKind::Replay(replay_args) => bench_replay(replay_args)?,
    };
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

struct Frame {
    link_type: u32,
    ts_nanos: u64,
    orig_len: u32,
    data: Vec<u8>,
}

fn load_frames(inputs: &[PathBuf]) -> Result<Vec<Frame>> {
    if let Some(missing) = inputs.iter().find(|input| !input.exists()) {
        bail!(
            "{}: not found (the default captures are ndpi-corpus in $COMBO_SHARED or in \
             ../shared; name capture files or folders instead, e.g. tests/data/demo.pcap)",
            missing.display()
        );
    }
    let files = expand_inputs(inputs)?;
    let mut frames = Vec::new();
    for file in files {
        let Ok(mut reader) = CaptureReader::open(&file) else { continue };
        // Unreadable tails are left out: the benchmark wants frames, not errors.
        while let Ok(Some(frame)) = reader.next_frame() {
            frames.push(Frame {
                link_type: frame.link_type,
                ts_nanos: frame.ts_nanos,
                orig_len: frame.orig_len,
                data: frame.data.to_vec(),
            });
        }
    }
    if frames.is_empty() {
        bail!("no frames in {inputs:?}");
    }
    Ok(frames)
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn bench_packets(args: PacketArgs) -> Result<serde_json::Value> {
    let LoadedInputs { frames, plugin, model } = args.inputs.load()?;

    // Memory first, in a fresh heap: after the timed runs, their freed memory (engines, job
    // pools, flow tables, activations) would be reused by the new flows unseen by the
    // resident size.
    let memory = idle_flow_memory(&plugin, &args, &model)?;

    let rounds: &[Inference] = match args.inference {
        Inference::Off => &[Inference::Off],
        Inference::On => &[Inference::On],
        // Alternate so drifts of the machine (other load, frequency) hit both sides alike.
        Inference::Both => &[Inference::Off, Inference::On, Inference::Off, Inference::On],
    };
    let mut runs = Vec::new();
    for &inference in rounds {
        runs.push(timed_replay(&plugin, &args, &model, &frames, inference)?);
    }
    let best = |wanted: Inference| {
        runs.iter()
            .filter(|run| run.inference == wanted)
            .map(|run| run.packets_per_second)
            .fold(None, |best: Option<f64>, rate| Some(best.map_or(rate, |b| b.max(rate))))
    };
    let ratio = match (best(Inference::Off), best(Inference::On)) {
        (Some(off), Some(on)) => {
            println!(
                "live policy: the packet path keeps {:.0} % of its inference-off rate with the \
                 model saturated (best of each: {:.2} vs {:.2} M packets/s)",
                100.0 * on / off,
                on / 1e6,
                off / 1e6
            );
            Some(on / off)
        }
        _ => None,
    };
    Ok(json!({
        "frames": frames.len(),
        "runs": runs.iter().map(TimedRun::to_json).collect::<Vec<_>>(),
        "live_ratio": ratio,
        "memory": memory,
    }))
}

/// One timed replay of the frames through a fresh engine.
struct TimedRun {
    inference: Inference,
    packets_per_second: f64,
    ns_per_call: f64,
    contexts: u64,
    contexts_classified: u64,
    contexts_dropped: u64,
}

impl TimedRun {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "inference": if self.inference == Inference::On { "on" } else { "off" },
            "packets_per_second": self.packets_per_second,
            "ns_per_process_call": self.ns_per_call,
            "contexts": self.contexts,
            "contexts_classified": self.contexts_classified,
            "contexts_dropped": self.contexts_dropped,
        })
    }
}

/// The defaults, with the benchmark's model, policy and libtorch threads.
fn bench_config(model: &Path, on_full: FullRingPolicy, model_threads: usize) -> EngineConfig {
    let mut config = EngineConfig::default();
    config.model.path = Some(model.to_path_buf());
    config.inference.on_full = on_full;
    config.model.cpu_threads = model_threads;
    config
}

fn engine_config(args: &PacketArgs, model: &Path, inference: Inference) -> EngineConfig {
    let mut config = bench_config(model, FullRingPolicy::Drop, args.model_threads);
    config.model.backend = match inference {
        Inference::On => BackendKind::Torch,
        Inference::Off | Inference::Both => BackendKind::Null,
    };
    config.flows.max_flows = args.flows.max(65_536) + 1;
    config
}

fn timed_replay(
    plugin: &Arc<Plugin>,
    args: &PacketArgs,
    model: &Path,
    frames: &[Frame],
    inference: Inference,
) -> Result<TimedRun> {
    let config = engine_config(args, model, inference);
    let engine = Arc::new(PluginEngine::new(plugin, &toml::to_string(&config)?)?);
    let mut worker = engine.worker()?;
    let mut records = Vec::new();

    // Whole passes over the frames until the time is up. Between passes (not timed) every flow
    // ends as at the end of a capture, through the clock rather than `flush`, which would wait
    // for the model to classify every padded context; so every pass does the same work.
    let budget = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut packets = 0u64;
    let mut process_time = Duration::ZERO;
    while started.elapsed() < budget || packets == 0 {
        let pass = Instant::now();
        for (i, frame) in frames.iter().enumerate() {
            worker.process(
                frame.link_type,
                frame.ts_nanos,
                &frame.data,
                frame.orig_len,
                i as u64,
            )?;
        }
        process_time += pass.elapsed();
        packets += frames.len() as u64;
        worker.advance_clock(u64::MAX)?;
        worker.poll(&mut records)?;
        records.clear();
    }
    let stats = worker.stats()?;
    let run = TimedRun {
        inference,
        packets_per_second: packets as f64 / process_time.as_secs_f64(),
        ns_per_call: process_time.as_nanos() as f64 / packets as f64,
        contexts: stats.contexts,
        contexts_classified: stats.contexts_classified,
        contexts_dropped: stats.contexts_dropped,
    };
    println!(
        "packet path, inference {}: {:.2} M packets/s on one worker, {:.0} ns per process call; \
         contexts {} sent, {} classified, {} dropped (ring full), {} still in flight",
        if inference == Inference::On { "on (drop policy)" } else { "off (null backend)" },
        run.packets_per_second / 1e6,
        run.ns_per_call,
        run.contexts,
        run.contexts_classified,
        run.contexts_dropped,
        run.contexts.saturating_sub(run.contexts_classified + run.contexts_dropped)
    );
    Ok(run)
}

/// Resident memory of idle flows: one small UDP packet each, so each holds one buffered packet.
fn idle_flow_memory(
    plugin: &Arc<Plugin>,
    args: &PacketArgs,
    model: &Path,
) -> Result<serde_json::Value> {
    let config = engine_config(args, model, Inference::Off);
    let engine = Arc::new(PluginEngine::new(plugin, &toml::to_string(&config)?)?);
    let mut worker = engine.worker()?;
    let before = resident_bytes();
    let mut frame = synthetic_udp_frame();
    for flow in 0..args.flows as u32 {
        frame[26..30].copy_from_slice(&(0x0a00_0000 | flow).to_be_bytes());
        worker.process(1, 1_000_000_000, &frame, frame.len() as u32, 0)?;
    }
    let grown = resident_bytes().saturating_sub(before);
    let per_flow = grown as f64 / args.flows as f64;
    let card = ModelCard::load(model)?;
    let buffered = (card.packets_per_context * card.preprocess.packet_bytes) as f64;
    println!(
        "memory: {:.1} MB for {} idle flows = {:.0} B per flow, of which {:.0} B is its packet \
         buffer (N x packet_bytes) and {:.0} B the flow's own state",
        grown as f64 / 1e6,
        args.flows,
        per_flow,
        buffered,
        per_flow - buffered
    );
    Ok(json!({
        "idle_flows": args.flows,
        "bytes_per_idle_flow": per_flow,
        "buffer_bytes_per_flow": buffered,
    }))
}

fn bench_replay(args: ReplayArgs) -> Result<serde_json::Value> {
    let LoadedInputs { frames, plugin, model } = args.inputs.load()?;
    let mut config = bench_config(&model, FullRingPolicy::Wait, args.model_threads);
    config.inference.max_batch = args.max_batch;
    let engine = Arc::new(PluginEngine::new(&plugin, &toml::to_string(&config)?)?);

    // As `combo replay` runs a capture: every frame, records drained as they come, then every
    // flow ended and every context waited for.
    let mut worker = engine.worker()?;
    let mut records = Vec::new();
    let started = Instant::now();
    for (i, frame) in frames.iter().enumerate() {
        worker.process(frame.link_type, frame.ts_nanos, &frame.data, frame.orig_len, i as u64)?;
        if i % 1024 == 0 {
            worker.poll(&mut records)?;
            records.clear();
        }
    }
    worker.flush(true)?;
    worker.poll(&mut records)?;
    let elapsed = started.elapsed().as_secs_f64();
    let worker_stats = worker.stats()?;
    drop(worker);
    let batches = engine.stats()?.batches.max(1);
    let classified = worker_stats.contexts_classified;
    if worker_stats.contexts_dropped + worker_stats.contexts_failed > 0 {
        bail!(
            "{} contexts dropped and {} failed under the wait policy",
            worker_stats.contexts_dropped,
            worker_stats.contexts_failed
        );
    }
    if batches < 10 {
        println!(
            "note: {batches} batches are too few to compare with the model alone; replay more \
             packets (the default is all of ndpi-corpus)"
        );
    }
    let pipeline_rate = classified as f64 / elapsed;
    let mean_batch = classified as f64 / batches as f64;
    let packet_rate = frames.len() as f64 / elapsed;
    println!(
        "replay (policy wait): {} packets and {classified} contexts in {elapsed:.1} s = \
         {packet_rate:.0} packets/s, {pipeline_rate:.1} contexts/s, {batches} batches of \
         {mean_batch:.1} on average",
        frames.len()
    );

    // The model alone, in this process, on the same threads, at the replay's batch sizes. The
    // engine stays alive (idle) meanwhile: libtorch's CPU allocator is now the plugin's, whose
    // cache lives as long as an engine uses it.
    tch::set_num_threads(i32::try_from(config.model.effective_cpu_threads()).unwrap_or(i32::MAX));
    let classifier = Classifier::load(&model, Device::Cpu)?;
    let mut model_rates = Vec::new();
    let mean = (mean_batch.round() as usize).max(1);
    let sizes = if mean == args.max_batch { vec![mean] } else { vec![mean, args.max_batch] };
    for batch in sizes {
        let rate = batch as f64 / seconds_per_batch(&classifier, batch, args.seconds)?;
        println!(
            "model alone, batch {batch}: {rate:.1} contexts/s; the replay reaches {:.0} % of it",
            100.0 * pipeline_rate / rate
        );
        model_rates.push(json!({ "batch": batch, "contexts_per_second": rate }));
    }
    let results = json!({
        "packets": frames.len(),
        "packets_per_second": packet_rate,
        "contexts": classified,
        "seconds": elapsed,
        "contexts_per_second": pipeline_rate,
        "batches": batches,
        "mean_batch": mean_batch,
        "model_alone": model_rates,
        "threads": tch::get_num_threads(),
    });
    drop(engine);
    Ok(results)
}

/// Ethernet, IPv4, UDP 40000 -> 443 with 32 bytes of payload; the source address varies.
fn synthetic_udp_frame() -> Vec<u8> {
    let mut frame = vec![0u8; 14 + 20 + 8 + 32];
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    frame[14] = 0x45;
    frame[16..18].copy_from_slice(&(20u16 + 8 + 32).to_be_bytes());
    frame[22] = 64;
    frame[23] = 17;
    frame[30..34].copy_from_slice(&[192, 0, 2, 1]);
    frame[34..36].copy_from_slice(&40000u16.to_be_bytes());
    frame[36..38].copy_from_slice(&443u16.to_be_bytes());
    frame[38..40].copy_from_slice(&(8u16 + 32).to_be_bytes());
    frame
}

/// Runs `step` until `seconds` pass (at least twice, after one warm-up); seconds per call.
fn time_per_call(seconds: f64, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    step()?;
    let started = Instant::now();
    let mut calls = 0u32;
    while calls < 2 || started.elapsed().as_secs_f64() < seconds {
        step()?;
        calls += 1;
    }
    Ok(started.elapsed().as_secs_f64() / calls as f64)
}

fn bench_model(args: ModelArgs) -> Result<serde_json::Value> {
    // Random weights of a typical label set; the class count only sizes the output layer, a
    // negligible share of the cost.
    let classes = 11;
    let packet_bytes = PreprocessConfig::default().packet_bytes;
    let device = select_device(&args.device)?;
    let autocast = args.mixed_precision && device.is_cuda();
    if args.mixed_precision && !autocast {
        println!("note: --mixed-precision applies on CUDA devices only; timing f32 on {device:?}");
    }
    println!(
        "threads: libtorch {} intra-op; attention {}; {} classes; {:?}{}",
        tch::get_num_threads(),
        args.attention,
        classes,
        device,
        if autocast { ", mixed precision" } else { "" }
    );
    println!(
        "{:>2} {:>6} {:>12} {:>10} {:>10} {:>14} {:>8}",
        "N", "batch", "contexts/s", "ms/batch", "GFLOP/s", "libtorch GF/s", "ratio"
    );
    let mut rows = Vec::new();
    for &packets in &args.packets {
        let card = ModelCard::new(
            "bench",
            (0..classes).map(|i| format!("class{i}")).collect(),
            packets,
            args.attention,
            PreprocessConfig::default(),
        );
        let mut classifier = Classifier::new_random(card, device, 1)?;
        classifier.set_mixed_precision(autocast);
        let flops = flops_per_context(packets, packet_bytes, args.attention, classes)?;
        for &batch in &args.batches {
            // The model and libtorch alone take turns, and each keeps its best round: on a
            // shared or virtual machine a slow spell then hits neither side alone.
            let reference = LibtorchReference::new(packets, packet_bytes, batch, device)?;
            let round_seconds = args.seconds / MODEL_ROUNDS as f64;
            let (mut seconds, mut reference_seconds) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..MODEL_ROUNDS {
                seconds = seconds.min(seconds_per_batch(&classifier, batch, round_seconds)?);
                reference_seconds = reference_seconds
                    .min(tch::autocast(autocast, || reference.seconds_per_call(round_seconds))?);
            }
            let reference = reference.flops / reference_seconds / 1e9;
            let achieved = flops * batch as f64 / seconds / 1e9;
            println!(
                "{packets:>2} {batch:>6} {:>12.1} {:>10.2} {:>10.1} {:>14.1} {:>7.0}%",
                batch as f64 / seconds,
                seconds * 1e3,
                achieved,
                reference,
                100.0 * achieved / reference
            );
            rows.push(json!({
                "packets": packets, "batch": batch, "contexts_per_second": batch as f64 / seconds,
                "gflops": achieved, "libtorch_gflops": reference, "flops_per_context": flops,
            }));
        }
    }
    Ok(json!({ "model": rows, "threads": tch::get_num_threads(), "mixed_precision": autocast }))
}

/// Seconds the classifier takes per batch of `batch` contexts of made-up bytes.
fn seconds_per_batch(classifier: &Classifier, batch: usize, seconds: f64) -> Result<f64> {
    let card = classifier.card();
    let context_bytes = card.packets_per_context * card.preprocess.packet_bytes;
    let raw: Vec<u8> = (0..batch * context_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let mut probs = Vec::new();
    time_per_call(seconds, || classifier.predict(&raw, batch, &mut probs).map_err(Into::into))
}

/// Rounds `bench model` alternates between the model and libtorch alone.
const MODEL_ROUNDS: usize = 3;

/// libtorch alone on the network's two convolutions and first dense layer, with the same
/// shapes and batch: what the model could reach if nothing else cost time.
struct LibtorchReference {
    bytes: Tensor,
    conv1_weight: Tensor,
    /// Convolution II's input and weight, both channels first and both channels last:
    /// libtorch picks different kernels for the two (on the CPU oneDNN's, which run faster
    /// channels last, the form the model uses), and the faster counts.
    conv2_layouts: [(Tensor, Tensor); 2],
    dense_input: Tensor,
    dense_weight: Tensor,
    /// FLOPs of one call.
    flops: f64,
}

impl LibtorchReference {
    fn new(packets: usize, packet_bytes: usize, batch: usize, device: Device) -> Result<Self> {
        let (w1, w2) = feature_widths(packet_bytes)?;
        let (b, n, l) = (batch as i64, packets as i64, packet_bytes as i64);
        let options = (Kind::Float, device);
        let conv2_input = Tensor::f_randn([b, 200, n, w1 as i64], options)?;
        let conv2_weight = Tensor::f_randn([200, 200, n, 3], options)?;
        // The same tensors channels last: [., C, H, W] stored as [., H, W, C].
        let channels_last = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?)
        };
        let conv2_layouts = [
            (channels_last(&conv2_input)?, channels_last(&conv2_weight)?),
            (conv2_input, conv2_weight),
        ];
        let flops = 2.0
            * batch as f64
            * (packets as f64 * w1 as f64 * 200.0 * 5.0
                + w2 as f64 * 200.0 * 200.0 * packets as f64 * 3.0
                + 200.0 * w2 as f64 * 100.0);
        Ok(Self {
            bytes: Tensor::f_randn([b * n, 1, l], options)?,
            conv1_weight: Tensor::f_randn([200, 1, 5], options)?,
            conv2_layouts,
            dense_input: Tensor::f_randn([b, 200 * w2 as i64], options)?,
            dense_weight: Tensor::f_randn([100, 200 * w2 as i64], options)?,
            flops,
        })
    }

    /// Seconds per call, the faster of the two layouts of convolution II.
    fn seconds_per_call(&self, seconds: f64) -> Result<f64> {
        let _no_grad = tch::no_grad_guard();
        let mut fastest = f64::INFINITY;
        for (conv2_input, conv2_weight) in &self.conv2_layouts {
            let time = time_per_call(seconds / 2.0, || {
                let _ =
                    self.bytes.f_conv1d(&self.conv1_weight, None::<Tensor>, [3], [0], [1], 1)?;
                let _ = conv2_input.f_conv2d(
                    conv2_weight,
                    None::<Tensor>,
                    [1, 3],
                    [0, 0],
                    [1, 1],
                    1,
                )?;
                let product = self.dense_input.f_matmul(&self.dense_weight.f_tr()?)?;
                // GPU work is asynchronous: reading one value waits for all of it.
                let _ = product.f_sum(Kind::Float)?.f_double_value(&[])?;
                Ok(())
            })?;
            fastest = fastest.min(time);
        }
        Ok(fastest)
    }
}
