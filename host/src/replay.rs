//! `combo replay`: capture files through the plugin, flows spread over K worker handles.
//!
//! ```text
//!  reader (main thread) ──frames by flow hash──> worker threads ──records──> writer thread
//! ```
//!
//! The reader parses only enough of each frame to hash its flow, so both directions of a flow
//! reach the same worker. At the end of each file every worker flushes with "end flows", so
//! every flow of the file reports its verdict before the next file starts.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use combo_packet::{ComboFlowEnd, ComboRecord, ComboRecordKind, ComboStats, ComboTuple};
use combo_plugin::config::{EngineConfig, FullRingPolicy};
use combo_plugin::flow::{FiveTuple, FlowKey};
use combo_plugin::parse::{self, LinkType};
use crossbeam::channel::{self, Receiver, Sender};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::capture::CaptureReader;
use crate::plugin::{Plugin, PluginEngine, PluginWorker, default_path};

#[derive(Clone, Copy, ValueEnum)]
pub enum Policy {
    /// Back-pressure: wait for the model, drop nothing (offline replay).
    Wait,
    /// Drop contexts when a worker's ring is full, as on live traffic.
    Drop,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// Capture files (pcap or pcapng) or folders of them.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The plugin library (default: libcombo_packet.so beside this binary).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Engine configuration (TOML); command-line options override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model card (default: models/default.card.toml of this project).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Worker handles (capture threads) to spread flows over.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// What a full ring does [default: wait, or the --config file's inference.on_full].
    #[arg(long, value_enum)]
    policy: Option<Policy>,
    /// Also print one line per classified context.
    #[arg(long)]
    contexts: bool,
    /// Write the summary as JSON to this file too.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Frames handed to a worker thread at once, to keep channel traffic off the per-packet cost.
const FRAMES_PER_CHUNK: usize = 256;
/// A chunk is sent early when its frames reach this size (jumbo or huge frames).
const BYTES_PER_CHUNK: usize = 1 << 20;
/// Chunks queued per worker before the reader waits: with the two limits above, the replay
/// holds at most about 64 MiB of frames per worker.
const CHUNKS_QUEUED: usize = 64;

struct FrameMeta {
    link_type: u32,
    ts_nanos: u64,
    orig_len: u32,
    start: usize,
    end: usize,
    user_tag: u64,
}

#[derive(Default)]
struct Chunk {
    bytes: Vec<u8>,
    frames: Vec<FrameMeta>,
}

enum ToWorker {
    Frames(Chunk),
    EndOfFile { file: usize },
}

/// Records on their way to the writer thread.
struct RecordBatch(Vec<ComboRecord>);

// SAFETY: the only pointer in a record is its label name, owned by the engine, which outlives
// the writer; the writer reads labels by id and never dereferences it.
unsafe impl Send for RecordBatch {}

enum ToWriter {
    Records { file: usize, records: RecordBatch },
    FileDone { file: usize, stats: ComboStats },
    Failure(String),
}

pub fn run(args: ReplayArgs) -> Result<ExitCode> {
    let files = expand_inputs(&args.inputs)?;
    if args.workers == 0 || args.workers > 256 {
        bail!("--workers must be between 1 and 256");
    }

    // Configuration: the file's own keys (checked here, so errors name the file), then the
    // command-line overrides. Only keys the user set travel to the plugin, so a plugin built
    // before a new optional key still accepts the text.
    let config = match &args.config {
        Some(path) => EngineConfig::from_toml_file(path)?,
        None => EngineConfig::default(),
    };
    let mut table: toml::Table = match &args.config {
        Some(path) => toml::from_str(&std::fs::read_to_string(path)?)?,
        None => toml::Table::new(),
    };
    let model = match (&args.model, &config.model.path) {
        (Some(model), _) => model.clone(),
        (None, Some(from_file)) => from_file.clone(),
        (None, None) => default_model()?,
    };
    // Offline replay waits for the model unless told otherwise.
    let on_full = match (args.policy, &args.config) {
        (Some(Policy::Wait), _) | (None, None) => FullRingPolicy::Wait,
        (Some(Policy::Drop), _) => FullRingPolicy::Drop,
        (None, Some(_)) => config.inference.on_full,
    };
    let section = |table: &mut toml::Table, name: &str| -> Result<toml::Table> {
        match table.remove(name) {
            Some(toml::Value::Table(section)) => Ok(section),
            None => Ok(toml::Table::new()),
            Some(_) => bail!("[{name}] must be a table"),
        }
    };
    let mut model_section = section(&mut table, "model")?;
    model_section.insert("path".into(), toml::Value::String(model.display().to_string()));
    table.insert("model".into(), toml::Value::Table(model_section));
    let mut inference_section = section(&mut table, "inference")?;
    let policy = if on_full == FullRingPolicy::Wait { "wait" } else { "drop" };
    inference_section.insert("on_full".into(), toml::Value::String(policy.into()));
    table.insert("inference".into(), toml::Value::Table(inference_section));
    let config_toml = toml::to_string(&table).context("serialising the configuration")?;

    let plugin_path = args.plugin.clone().unwrap_or_else(default_path);
    let plugin = Plugin::load(&plugin_path)?;
    let engine = Arc::new(PluginEngine::new(&plugin, &config_toml)?);
    let labels = engine.labels();
    log::info!(
        "replaying {} file(s) through {} with {} worker(s), {} classes",
        files.len(),
        plugin_path.display(),
        args.workers,
        labels.len()
    );

    // Worker threads, each owning one worker handle.
    let (writer_sender, writer_receiver) = channel::unbounded::<ToWriter>();
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for index in 0..args.workers {
        let (sender, receiver) = channel::bounded::<ToWorker>(CHUNKS_QUEUED);
        let worker = engine.worker()?;
        let out = writer_sender.clone();
        senders.push(sender);
        threads.push(
            thread::Builder::new()
                .name(format!("replay-worker-{index}"))
                .spawn(move || worker_loop(worker, receiver, out))?,
        );
    }
    drop(writer_sender);

    // The writer prints records and per-file statistics.
    let file_names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let writer = {
        let labels = labels.clone();
        let workers = args.workers;
        let with_contexts = args.contexts;
        let names = file_names.clone();
        thread::Builder::new()
            .name("replay-writer".into())
            .spawn(move || write_loop(writer_receiver, &labels, &names, workers, with_contexts))?
    };

    // Read every file, spreading frames by flow.
    let started = Instant::now();
    let total_bytes: u64 = files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
    let progress = if args.no_progress {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(total_bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    let mut failed_files = Vec::new();
    let mut bytes_before = 0;
    for (file_index, path) in files.iter().enumerate() {
        progress.set_message(
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        );
        if let Err(e) = read_file(path, file_index, &senders, &progress, bytes_before) {
            progress.suspend(|| eprintln!("combo: {e}"));
            failed_files.push(path.display().to_string());
        }
        bytes_before += path.metadata().map(|m| m.len()).unwrap_or(0);
        for sender in &senders {
            sender
                .send(ToWorker::EndOfFile { file: file_index })
                .context("a worker thread stopped")?;
        }
    }
    drop(senders);
    for thread in threads {
        if thread.join().is_err() {
            bail!("a worker thread panicked");
        }
    }
    progress.finish_and_clear();
    let mut summary = writer.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    let elapsed = started.elapsed().as_secs_f64();

    // Summary: totals from the engine, rates from the wall clock.
    let totals = engine.stats()?;
    let packets = totals.packets as f64;
    summary.insert("files".into(), json!(files.len()));
    summary.insert("files_failed".into(), json!(failed_files));
    summary.insert("seconds".into(), json!(elapsed));
    summary.insert("packets_per_second".into(), json!(packets / elapsed.max(1e-9)));
    summary.insert(
        "contexts_per_second".into(),
        json!(totals.contexts_classified as f64 / elapsed.max(1e-9)),
    );
    summary.insert("totals".into(), stats_json(&totals));
    print_summary(&summary, &totals);
    if let Some(path) = &args.summary_json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let consistent =
        summary.get("inconsistent_files").and_then(Value::as_array).is_none_or(|a| a.is_empty());
    if !consistent {
        eprintln!("combo: counters do not add up for some files (see the summary)");
        return Ok(ExitCode::from(3));
    }
    Ok(if failed_files.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// Files named, and the pcap/pcapng files of folders named (sorted, not recursive).
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot list {}", input.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| {
                    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
                    path.is_file() && matches!(ext, "pcap" | "pcapng" | "cap")
                })
                .collect();
            found.sort();
            if found.is_empty() {
                bail!(
                    "{}: no .pcap, .pcapng or .cap files in this folder (not searched recursively)",
                    input.display()
                );
            }
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    if files.is_empty() {
        bail!("no capture files given");
    }
    Ok(files)
}

/// `model`, or else the project's default model (see [`default_model`]).
pub fn model_or_default(model: Option<PathBuf>) -> Result<PathBuf> {
    model.map_or_else(default_model, Ok)
}

/// The project's default model: `$COMBO_MODEL`, else `models/default.card.toml` under the
/// working directory or the checkout the binary was built in.
fn default_model() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("COMBO_MODEL") {
        return Ok(PathBuf::from(path));
    }
    let relative = Path::new("models/default.card.toml");
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    [relative.to_path_buf(), built_in]
        .into_iter()
        .find(|p| p.exists())
        .context("no model given and models/default.card.toml not found; pass --model")
}

fn read_file(
    path: &Path,
    file_index: usize,
    senders: &[Sender<ToWorker>],
    progress: &ProgressBar,
    bytes_before: u64,
) -> Result<()> {
    let mut reader = CaptureReader::open(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    progress.set_length(progress.length().unwrap_or(0).max(bytes_before + reader.total_bytes()));
    let mut chunks: Vec<Chunk> = senders.iter().map(|_| Chunk::default()).collect();
    let mut frame_number: u64 = 0;
    let result = loop {
        let frame = match reader.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(e) => break Err(anyhow::anyhow!("{e}")),
        };
        frame_number += 1;
        let target = worker_for(frame.link_type, frame.data, frame.orig_len, senders.len());
        let chunk = &mut chunks[target];
        let start = chunk.bytes.len();
        chunk.bytes.extend_from_slice(frame.data);
        chunk.frames.push(FrameMeta {
            link_type: frame.link_type,
            ts_nanos: frame.ts_nanos,
            orig_len: frame.orig_len,
            start,
            end: chunk.bytes.len(),
            user_tag: ((file_index as u64) << 40) | frame_number,
        });
        if chunk.frames.len() >= FRAMES_PER_CHUNK || chunk.bytes.len() >= BYTES_PER_CHUNK {
            let full = std::mem::take(chunk);
            senders[target].send(ToWorker::Frames(full)).context("a worker thread stopped")?;
            progress.set_position(bytes_before + reader.bytes_read());
        }
    };
    // Frames read before an error are still classified.
    for (target, chunk) in chunks.into_iter().enumerate() {
        if !chunk.frames.is_empty() {
            senders[target].send(ToWorker::Frames(chunk)).context("a worker thread stopped")?;
        }
    }
    result
}

/// Both directions of a flow hash alike; frames that do not parse go to worker 0.
fn worker_for(link_type: u32, data: &[u8], orig_len: u32, workers: usize) -> usize {
    let Ok(packet) = parse::parse(LinkType(link_type), data, orig_len) else { return 0 };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    FlowKey::from(&FiveTuple::of(&packet)).hash(&mut hasher);
    (hasher.finish() % workers as u64) as usize
}

fn worker_loop(mut worker: PluginWorker, receiver: Receiver<ToWorker>, out: Sender<ToWriter>) {
    let mut records = Vec::new();
    let mut current_file = 0;
    let mut before = ComboStats::default();
    let failure = |e: anyhow::Error| {
        let _ = out.send(ToWriter::Failure(format!("{e:#}")));
    };
    for message in receiver {
        match message {
            ToWorker::Frames(chunk) => {
                for frame in &chunk.frames {
                    let data = &chunk.bytes[frame.start..frame.end];
                    if let Err(e) = worker.process(
                        frame.link_type,
                        frame.ts_nanos,
                        data,
                        frame.orig_len,
                        frame.user_tag,
                    ) {
                        return failure(e);
                    }
                    current_file = (frame.user_tag >> 40) as usize;
                }
                if let Err(e) = worker.poll(&mut records) {
                    return failure(e);
                }
                if !records.is_empty() {
                    let batch = std::mem::take(&mut records);
                    let records = RecordBatch(batch);
                    let _ = out.send(ToWriter::Records { file: current_file, records });
                }
            }
            ToWorker::EndOfFile { file } => {
                let flushed = worker.flush(true).and_then(|()| worker.poll(&mut records));
                if let Err(e) = flushed {
                    return failure(e);
                }
                let batch = RecordBatch(std::mem::take(&mut records));
                let _ = out.send(ToWriter::Records { file, records: batch });
                let after = match worker.stats() {
                    Ok(stats) => stats,
                    Err(e) => return failure(e),
                };
                let _ = out.send(ToWriter::FileDone { file, stats: subtract(&after, &before) });
                before = after;
            }
        }
    }
}

fn write_loop(
    receiver: Receiver<ToWriter>,
    labels: &[String],
    files: &[String],
    workers: usize,
    with_contexts: bool,
) -> Result<serde_json::Map<String, Value>> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut per_file: BTreeMap<usize, (usize, ComboStats)> = BTreeMap::new();
    let mut flow_labels: BTreeMap<String, u64> = BTreeMap::new();
    let mut inconsistent = Vec::new();
    let mut failures = Vec::new();
    for message in receiver {
        match message {
            ToWriter::Records { file, records } => {
                let name = files.get(file).map(String::as_str).unwrap_or("");
                for record in &records.0 {
                    let is_flow = record.kind == ComboRecordKind::Flow;
                    if is_flow {
                        let label = label_name(labels, record.label_id).unwrap_or("(none)");
                        *flow_labels.entry(label.to_string()).or_default() += 1;
                    }
                    if is_flow || with_contexts {
                        writeln!(out, "{}", record_json(record, labels, name))?;
                    }
                }
            }
            ToWriter::FileDone { file, stats } => {
                let entry = per_file.entry(file).or_default();
                entry.0 += 1;
                add(&mut entry.1, &stats);
                if entry.0 == workers {
                    let stats = entry.1;
                    let name = files.get(file).map(String::as_str).unwrap_or("");
                    let consistent = counters_add_up(&stats);
                    if !consistent {
                        inconsistent.push(name.to_string());
                    }
                    let line = json!({
                        "event_type": "stats",
                        "pcap": name,
                        "consistent": consistent,
                        "stats": stats_json(&stats),
                    });
                    writeln!(out, "{line}")?;
                }
            }
            ToWriter::Failure(message) => {
                eprintln!("combo: worker failed: {message}");
                failures.push(message);
            }
        }
    }
    out.flush()?;
    if !failures.is_empty() {
        bail!("{} worker(s) failed: {}", failures.len(), failures.join("; "));
    }
    let mut summary = serde_json::Map::new();
    summary.insert("flow_labels".into(), json!(flow_labels));
    summary.insert("inconsistent_files".into(), json!(inconsistent));
    Ok(summary)
}

fn label_name(labels: &[String], id: i32) -> Option<&str> {
    usize::try_from(id).ok().and_then(|i| labels.get(i)).map(String::as_str)
}

fn record_json(record: &ComboRecord, labels: &[String], pcap: &str) -> Value {
    let (src, dst) = addresses(&record.tuple);
    let top: Vec<Value> = record
        .top_ids
        .iter()
        .zip(record.top_probs.iter())
        .take(record.top_count as usize)
        .map(|(&id, &p)| json!({"label": label_name(labels, id as i32), "probability": p}))
        .collect();
    let proto = match record.tuple.protocol {
        6 => "TCP".to_string(),
        17 => "UDP".to_string(),
        other => other.to_string(),
    };
    let is_flow = record.kind == ComboRecordKind::Flow;
    let mut line = json!({
        "timestamp": eve_timestamp(record.first_ts_nanos),
        "flow_id": record.flow_id,
        "event_type": if is_flow { "flow" } else { "context" },
        "pcap": pcap,
        "src_ip": src.to_string(),
        "src_port": record.tuple.src_port,
        "dest_ip": dst.to_string(),
        "dest_port": record.tuple.dst_port,
        "proto": proto,
        "label": label_name(labels, record.label_id),
        "confidence": record.confidence,
        "top_k": top,
        "packets": record.packets,
    });
    if is_flow {
        line["contexts"] = json!(record.contexts);
        line["end"] = json!(match record.flow_end {
            ComboFlowEnd::IdleTimeout => "timeout",
            ComboFlowEnd::Evicted => "evicted",
            ComboFlowEnd::Flushed => "flushed",
            ComboFlowEnd::None => "none",
        });
        line["last_timestamp"] = json!(eve_timestamp(record.last_ts_nanos));
    } else {
        line["context_index"] = json!(record.contexts);
        line["packet_tag"] = json!(record.user_tag);
    }
    line
}

fn addresses(tuple: &ComboTuple) -> (IpAddr, IpAddr) {
    let convert = |bytes: [u8; 16]| -> IpAddr {
        if tuple.ip_version == 4 {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
    };
    (convert(tuple.src_addr), convert(tuple.dst_addr))
}

/// EVE's timestamp form, `2016-03-01T12:34:56.789012+0000`, in UTC.
fn eve_timestamp(nanos: u64) -> String {
    let seconds = nanos / 1_000_000_000;
    let micros = (nanos % 1_000_000_000) / 1_000;
    let days = (seconds / 86_400) as i64;
    let in_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}+0000",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (proleptic calendar, era arithmetic).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Every counter with its name, in the order of the C struct.
fn stats_fields(s: &ComboStats) -> [(&'static str, u64); 24] {
    [
        ("packets", s.packets),
        ("accepted", s.accepted),
        ("skipped_unsupported_link", s.skipped_unsupported_link),
        ("skipped_non_ip", s.skipped_non_ip),
        ("skipped_truncated", s.skipped_truncated),
        ("skipped_bad_header", s.skipped_bad_header),
        ("skipped_fragment", s.skipped_fragment),
        ("skipped_other_transport", s.skipped_other_transport),
        ("filtered_dns", s.filtered_dns),
        ("filtered_ntp", s.filtered_ntp),
        ("filtered_netbios", s.filtered_netbios),
        ("filtered_empty_tcp", s.filtered_empty_tcp),
        ("snapped", s.snapped),
        ("flows", s.flows),
        ("flows_ended", s.flows_ended),
        ("flows_evicted", s.flows_evicted),
        ("contexts", s.contexts),
        ("contexts_classified", s.contexts_classified),
        ("contexts_dropped", s.contexts_dropped),
        ("contexts_failed", s.contexts_failed),
        ("short_flows_padded", s.short_flows_padded),
        ("short_flows_dropped", s.short_flows_dropped),
        ("records_overflowed", s.records_overflowed),
        ("batches", s.batches),
    ]
}

fn stats_json(stats: &ComboStats) -> Value {
    let map: serde_json::Map<String, Value> = stats_fields(stats)
        .into_iter()
        .map(|(name, value)| (name.to_string(), json!(value)))
        .collect();
    Value::Object(map)
}

fn combine(a: &ComboStats, b: &ComboStats, op: fn(u64, u64) -> u64) -> ComboStats {
    let values: Vec<u64> =
        stats_fields(a).iter().zip(stats_fields(b)).map(|((_, x), (_, y))| op(*x, y)).collect();
    ComboStats {
        packets: values[0],
        accepted: values[1],
        skipped_unsupported_link: values[2],
        skipped_non_ip: values[3],
        skipped_truncated: values[4],
        skipped_bad_header: values[5],
        skipped_fragment: values[6],
        skipped_other_transport: values[7],
        filtered_dns: values[8],
        filtered_ntp: values[9],
        filtered_netbios: values[10],
        filtered_empty_tcp: values[11],
        snapped: values[12],
        flows: values[13],
        flows_ended: values[14],
        flows_evicted: values[15],
        contexts: values[16],
        contexts_classified: values[17],
        contexts_dropped: values[18],
        contexts_failed: values[19],
        short_flows_padded: values[20],
        short_flows_dropped: values[21],
        records_overflowed: values[22],
        batches: values[23],
    }
}

fn subtract(after: &ComboStats, before: &ComboStats) -> ComboStats {
    combine(after, before, u64::wrapping_sub)
}

fn add(total: &mut ComboStats, more: &ComboStats) {
    *total = combine(total, more, u64::wrapping_add);
}

/// The invariants the engine promises once flushed.
fn counters_add_up(s: &ComboStats) -> bool {
    let outcomes = s.accepted
        + s.skipped_unsupported_link
        + s.skipped_non_ip
        + s.skipped_truncated
        + s.skipped_bad_header
        + s.skipped_fragment
        + s.skipped_other_transport
        + s.filtered_dns
        + s.filtered_ntp
        + s.filtered_netbios
        + s.filtered_empty_tcp;
    let contexts = s.contexts_classified + s.contexts_dropped + s.contexts_failed;
    // A record the replay failed to collect is a loss, not a counted skip.
    let nothing_lost = s.records_overflowed == 0;
    outcomes == s.packets && contexts == s.contexts && s.flows == s.flows_ended && nothing_lost
}

fn print_summary(summary: &serde_json::Map<String, Value>, totals: &ComboStats) {
    let skipped = totals.skipped_unsupported_link
        + totals.skipped_non_ip
        + totals.skipped_truncated
        + totals.skipped_bad_header
        + totals.skipped_fragment
        + totals.skipped_other_transport;
    let filtered = totals.filtered_dns
        + totals.filtered_ntp
        + totals.filtered_netbios
        + totals.filtered_empty_tcp;
    eprintln!("── summary ──────────────────────────────────────────");
    eprintln!(
        "packets     {} in: {} accepted, {} filtered (dns {}, ntp {}, netbios {}, empty tcp {}), \
         {} skipped (non-ip {}, truncated {}, bad header {}, fragment {}, other transport {}, \
         unsupported link {})",
        totals.packets,
        totals.accepted,
        filtered,
        totals.filtered_dns,
        totals.filtered_ntp,
        totals.filtered_netbios,
        totals.filtered_empty_tcp,
        skipped,
        totals.skipped_non_ip,
        totals.skipped_truncated,
        totals.skipped_bad_header,
        totals.skipped_fragment,
        totals.skipped_other_transport,
        totals.skipped_unsupported_link,
    );
    eprintln!(
        "flows       {} ({} evicted); short flows padded {}, dropped {}",
        totals.flows, totals.flows_evicted, totals.short_flows_padded, totals.short_flows_dropped
    );
    eprintln!(
        "contexts    {} sent: {} classified, {} dropped (ring full), {} failed; model batches: {}",
        totals.contexts,
        totals.contexts_classified,
        totals.contexts_dropped,
        totals.contexts_failed,
        totals.batches
    );
    if let Some(Value::Object(labels)) = summary.get("flow_labels") {
        let listed: Vec<String> = labels.iter().map(|(label, n)| format!("{label} {n}")).collect();
        eprintln!("flow labels {}", listed.join(", "));
    }
    let rate = |key: &str| summary.get(key).and_then(Value::as_f64).unwrap_or(0.0);
    eprintln!(
        "speed       {:.0} packets/s, {:.1} contexts/s over {:.2} s",
        rate("packets_per_second"),
        rate("contexts_per_second"),
        rate("seconds")
    );
    if let Some(Value::Array(failed)) = summary.get("files_failed") {
        if !failed.is_empty() {
            eprintln!(
                "unreadable  {} file(s); frames read before an error were still replayed",
                failed.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eve_timestamps_are_utc_calendar_dates() {
        assert_eq!(eve_timestamp(0), "1970-01-01T00:00:00.000000+0000");
        // 2016-02-29 12:34:56.789012 UTC, a leap day.
        assert_eq!(eve_timestamp(1_456_749_296_789_012_345), "2016-02-29T12:34:56.789012+0000");
        assert_eq!(eve_timestamp(1_767_225_599_000_000_000), "2025-12-31T23:59:59.000000+0000");
    }

    #[test]
    fn counters_must_add_up() {
        let mut s = ComboStats {
            packets: 10,
            accepted: 7,
            filtered_dns: 2,
            skipped_non_ip: 1,
            ..Default::default()
        };
        s.contexts = 3;
        s.contexts_classified = 2;
        s.contexts_dropped = 1;
        assert!(counters_add_up(&s));
        s.packets = 11;
        assert!(!counters_add_up(&s));
    }

    #[test]
    fn stats_difference_and_sum_are_fieldwise() {
        let a = ComboStats { packets: 5, batches: 2, ..Default::default() };
        let b = ComboStats { packets: 7, batches: 3, ..Default::default() };
        let d = subtract(&b, &a);
        assert_eq!((d.packets, d.batches), (2, 1));
        let mut t = a;
        add(&mut t, &d);
        assert_eq!((t.packets, t.batches), (7, 3));
    }
}
