//! The packet path and the inference thread.
//!
//! ```text
//!  capture thread 1 ── Worker ──(context ring)──┐                 ┌──(result ring)── Worker 1
//!  capture thread 2 ── Worker ──(context ring)──┼─ inference ─────┼──(result ring)── Worker 2
//!  ...                                          ┘   thread        └── ...
//! ```
//!
//! Each worker owns a pool of at most `ring_capacity` context jobs (the N packets' bytes plus
//! room for the class probabilities). A job travels to the inference thread through the
//! worker's context ring and comes back, classified, through its result ring; the worker then
//! reuses it. Because a worker never has more jobs than either ring holds, neither push can
//! fail, the inference thread never blocks on a worker, and memory is fixed by configuration.
//! "The ring is full" means "every job is in flight": the `drop` policy then drops the new
//! context (counted), the `wait` policy drains results until a job comes back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};
use rustc_hash::FxHashMap;

use crate::config::{BackendKind, EngineConfig, FullRingPolicy, PreprocessConfig, ShortFlowPolicy};
use crate::cpu_allocator::{self, CacheUser};
use crate::flow::{Entry, FiveTuple, FlowKey, FlowTable, Removed};
use crate::model::{Classifier, ModelCard, select_device};
use crate::parse::{self, LinkType, Skip};
use crate::preprocess::{self, Filter};
use crate::{Error, MAX_TOP_K};

/// Classifies batches of contexts. Lives on the inference thread only.
pub trait Backend {
    /// `raw` holds `batch` contexts of N packets of `packet_bytes` pre-processed bytes each;
    /// appends `batch * classes` probabilities to `probs`, which arrives empty.
    fn infer(&mut self, raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error>;
}

/// Builds the backend on the inference thread, so a model never crosses threads.
pub type BackendFactory = Box<dyn FnOnce() -> Result<Box<dyn Backend>, Error> + Send>;

impl Backend for Classifier {
    fn infer(&mut self, raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error> {
        self.predict(raw, batch, probs)
    }
}

/// The model and its share of the CPU cache, which ends with it (with the engine).
struct CachedClassifier {
    classifier: Classifier,
    _cache: Option<CacheUser>,
}

impl Backend for CachedClassifier {
    fn infer(&mut self, raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error> {
        self.classifier.infer(raw, batch, probs)
    }
}

/// Answers every context with uniform probabilities: the packet path with inference off.
pub struct NullBackend {
    pub classes: usize,
}

impl Backend for NullBackend {
    fn infer(&mut self, _raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error> {
        probs.resize(batch * self.classes, 1.0 / self.classes.max(1) as f32);
        Ok(())
    }
}

/// What the engine must know of its model before any packet arrives.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub labels: Vec<String>,
    pub packets_per_context: usize,
    pub preprocess: PreprocessConfig,
}

impl ModelSpec {
    pub fn of(card: &ModelCard) -> Self {
        Self {
            labels: card.labels.clone(),
            packets_per_context: card.packets_per_context,
            preprocess: card.preprocess.clone(),
        }
    }
}

/// What happened to one packet handed to [`Worker::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Parsed, kept and added to its flow.
    Accepted,
    /// Not parsed into a TCP/UDP packet.
    Skipped(Skip),
    /// Parsed, but dropped by the pre-processing rules.
    Filtered(Filter),
}

/// A class prediction: the best class and the top-k list, best first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub label: u32,
    pub confidence: f32,
    pub top: [(u32, f32); MAX_TOP_K],
    /// Entries of `top` in use.
    pub top_len: usize,
}

impl Prediction {
    fn from_probs(probs: &[f32], k: usize) -> Self {
        let mut top = [(0u32, f32::NEG_INFINITY); MAX_TOP_K];
        let k = k.min(MAX_TOP_K).min(probs.len());
        for (class, &p) in probs.iter().enumerate() {
            // Insertion into the short sorted list; NaN never ranks.
            let Some(position) = top[..k].iter().position(|&(_, q)| p > q) else { continue };
            top.copy_within(position..k - 1, position + 1);
            top[position] = (class as u32, p);
        }
        Self { label: top[0].0, confidence: top[0].1.max(0.0), top, top_len: k }
    }

    pub fn top(&self) -> &[(u32, f32)] {
        &self.top[..self.top_len]
    }
}

/// One classified context.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextRecord {
    pub flow_id: u64,
    pub tuple: FiveTuple,
    pub prediction: Prediction,
    /// Real packets in the context (fewer than N for a padded short flow).
    pub packets: u32,
    /// 0 for the flow's first context.
    pub index: u32,
    /// Capture time of the packet that completed the context, ns since the epoch.
    pub ts_nanos: u64,
    /// The caller's tag of that packet.
    pub user_tag: u64,
}

/// Why a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEnd {
    IdleTimeout,
    /// The table was full and this flow was idle the longest.
    Evicted,
    /// The caller ended all flows (end of capture, shutdown).
    Flushed,
}

impl FlowEnd {
    pub fn name(self) -> &'static str {
        match self {
            FlowEnd::IdleTimeout => "timeout",
            FlowEnd::Evicted => "evicted",
            FlowEnd::Flushed => "flushed",
        }
    }
}

/// A flow's verdict, reported once when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRecord {
    pub flow_id: u64,
    pub tuple: FiveTuple,
    /// Mean of its contexts' probabilities; `None` when no context was classified (all were
    /// dropped, or a short flow under the `drop` policy).
    pub prediction: Option<Prediction>,
    pub contexts: u32,
    /// Packets accepted into the flow, both directions.
    pub packets: u64,
    pub first_ts_nanos: u64,
    pub last_ts_nanos: u64,
    pub end: FlowEnd,
    /// The caller's tag of the flow's last packet.
    pub user_tag: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Context(ContextRecord),
    Flow(FlowRecord),
}

/// Counters of one worker, or of a whole engine. Invariants once flushed:
/// `packets = accepted + sum(skipped) + sum(filtered)` and
/// `contexts = contexts_classified + contexts_dropped + contexts_failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets: u64,
    pub accepted: u64,
    /// Indexed like [`Skip::ALL`].
    pub skipped: [u64; Skip::ALL.len()],
    /// Indexed like [`Filter::ALL`].
    pub filtered: [u64; Filter::ALL.len()],
    /// Accepted packets whose capture was shorter than the packet (snap length).
    pub snapped: u64,
    pub flows: u64,
    pub flows_ended: u64,
    pub flows_evicted: u64,
    pub contexts: u64,
    pub contexts_classified: u64,
    /// Dropped because the ring was full (policy `drop`).
    pub contexts_dropped: u64,
    /// The model failed on their batch.
    pub contexts_failed: u64,
    pub short_flows_padded: u64,
    pub short_flows_dropped: u64,
    /// Records discarded because the caller did not poll (`max_pending_records`).
    pub records_overflowed: u64,
    pub batches: u64,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        let pairs = [
            (&mut self.packets, other.packets),
            (&mut self.accepted, other.accepted),
            (&mut self.snapped, other.snapped),
            (&mut self.flows, other.flows),
            (&mut self.flows_ended, other.flows_ended),
            (&mut self.flows_evicted, other.flows_evicted),
            (&mut self.contexts, other.contexts),
            (&mut self.contexts_classified, other.contexts_classified),
            (&mut self.contexts_dropped, other.contexts_dropped),
            (&mut self.contexts_failed, other.contexts_failed),
            (&mut self.short_flows_padded, other.short_flows_padded),
            (&mut self.short_flows_dropped, other.short_flows_dropped),
            (&mut self.records_overflowed, other.records_overflowed),
            (&mut self.batches, other.batches),
        ];
        for (mine, theirs) in pairs {
            *mine += theirs;
        }
        for (mine, theirs) in self.skipped.iter_mut().zip(other.skipped) {
            *mine += theirs;
        }
        for (mine, theirs) in self.filtered.iter_mut().zip(other.filtered) {
            *mine += theirs;
        }
    }

    pub fn skipped(&self, skip: Skip) -> u64 {
        Skip::ALL.iter().position(|&s| s == skip).map_or(0, |i| self.skipped[i])
    }

    pub fn filtered(&self, filter: Filter) -> u64 {
        Filter::ALL.iter().position(|&f| f == filter).map_or(0, |i| self.filtered[i])
    }
}

/// A context on its way to the model and back.
struct Job {
    /// N packets of `packet_bytes`, oldest first.
    bytes: Box<[u8]>,
    /// Class probabilities, filled by the inference thread.
    probs: Box<[f32]>,
    ok: bool,
    flow_slot: u32,
    flow_id: u64,
    packets: u32,
    index: u32,
    ts_nanos: u64,
    user_tag: u64,
}

/// The inference thread's side of one worker.
struct WorkerLink {
    contexts: HeapCons<Job>,
    results: HeapProd<Job>,
    signal: Arc<WorkerSignal>,
}

/// What a worker and the inference thread tell each other besides the rings.
#[derive(Default)]
struct WorkerSignal {
    /// The worker is gone; its link ends once its ring is empty.
    closed: AtomicBool,
    /// The worker sleeps until results come back (policy `wait`, flush).
    waiting: AtomicBool,
    /// The thread that set `waiting`: a worker may move between threads, so it says which.
    waiter: Mutex<Option<Thread>>,
}

impl WorkerSignal {
    /// Wakes the worker if it sleeps waiting for results.
    fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            if let Some(thread) = lock(&self.waiter).as_ref() {
                thread.unpark();
            }
        }
    }
}

/// State shared by the engine handle, its workers and the inference thread.
struct Shared {
    config: EngineConfig,
    spec: ModelSpec,
    preprocess: PreprocessConfig,
    new_links: Sender<WorkerLink>,
    inference_thread: Thread,
    /// Set by the inference thread before it parks; a worker that pushes a context unparks it.
    inference_idle: AtomicBool,
    shutdown: AtomicBool,
    /// Workers flushing now: the inference thread then runs partial batches at once.
    urgent: AtomicUsize,
    /// Cleared when the inference thread ends (normally or not), so no worker waits for it.
    inference_alive: AtomicBool,
    live_workers: AtomicUsize,
    next_worker: AtomicU64,
    /// Counters of freed and live workers, under one lock so totals never go back.
    counters: Mutex<Counters>,
    batches: AtomicU64,
}

#[derive(Default)]
struct Counters {
    /// Totals of workers already freed.
    retired: Stats,
    /// The snapshot each live worker last published, by worker index.
    published: FxHashMap<u64, Stats>,
}

/// One classifier shared by any number of workers. Cheap to keep; dropping it lets the
/// inference thread finish once every worker is gone.
pub struct Engine {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Loads the model named by the configuration and starts the inference thread.
    pub fn new(config: EngineConfig) -> Result<Self, Error> {
        config.validate()?;
        let Some(card_path) = config.model.path.clone() else {
            return Err(Error::Config("model.path is required".into()));
        };
        let card = ModelCard::load(&card_path)?;
        let spec = ModelSpec::of(&card);
        if config.model.backend == BackendKind::Null {
            log::info!("null backend: contexts are consumed, not classified");
            let classes = card.labels.len();
            let factory: BackendFactory =
                Box::new(move || Ok(Box::new(NullBackend { classes }) as Box<dyn Backend>));
            return Self::with_backend(config, spec, factory);
        }
        let device = select_device(&config.model.device)?;
        let threads = config.model.effective_cpu_threads();
        log::info!(
            "model {} ({} classes, N={}, attention {}) on {:?}",
            card.name,
            card.labels.len(),
            card.packets_per_context,
            card.attention,
            device
        );
        if card.random_weights {
            log::warn!("model {} has random weights: its labels mean nothing", card.name);
        }
        let cache_mb = config.model.cpu_cache_mb;
        let max_batch = config.inference.max_batch;
        let mixed_precision = config.model.mixed_precision;
        if mixed_precision {
            if device.is_cuda() {
                log::info!("mixed precision on {device:?}");
            } else {
                log::info!("model.mixed_precision applies on CUDA devices only: f32 on {device:?}");
            }
        }
        log::info!("{threads} libtorch CPU thread(s) (model.cpu_threads)");
        let factory: BackendFactory = Box::new(move || {
            // Set on the inference thread, which runs the model: OpenMP keeps a thread count
            // per calling thread (libtorch also takes it for threads that start using it later).
            tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
            let mut cache = match device {
                tch::Device::Cpu => CacheUser::join(cache_mb << 20),
                _ => None,
            };
            let mut classifier = Classifier::load(&card_path, device)?;
            classifier.set_mixed_precision(mixed_precision);
            if let Some(cache) = &mut cache {
                if cache_mb == 0 {
                    size_cpu_cache(&classifier, max_batch, cache)?;
                } else {
                    log::info!("up to {cache_mb} MB of CPU activation memory kept between batches");
                }
            }
            Ok(Box::new(CachedClassifier { classifier, _cache: cache }) as Box<dyn Backend>)
        });
        Self::with_backend(config, spec, factory)
    }

    /// Starts an engine around any backend (tests, benchmarks with inference off).
    pub fn with_backend(
        config: EngineConfig,
        spec: ModelSpec,
        factory: BackendFactory,
    ) -> Result<Self, Error> {
        config.validate()?;
        let preprocess = match &config.preprocess {
            Some(wanted) if *wanted != spec.preprocess => {
                return Err(Error::Mismatch(format!(
                    "the configuration's [preprocess] differs from the setting the model was \
                     trained with ({}); remove [preprocess] or retrain",
                    describe_differences(wanted, &spec.preprocess)
                )));
            }
            _ => spec.preprocess.clone(),
        };
        if spec.labels.is_empty() || spec.packets_per_context == 0 {
            return Err(Error::Model("the model has no classes or N = 0".into()));
        }

        let (link_sender, link_receiver) = channel::unbounded();
        let (ready_sender, ready_receiver) = channel::bounded(1);
        let shared_slot: Arc<Mutex<Option<Arc<Shared>>>> = Arc::new(Mutex::new(None));
        let slot_for_thread = Arc::clone(&shared_slot);
        let classes = spec.labels.len();
        let context_bytes = spec.packets_per_context * preprocess.packet_bytes;
        let inference = config.inference.clone();
        let thread = thread::Builder::new().name("combo-inference".into()).spawn(move || {
            let backend = match factory() {
                Ok(backend) => backend,
                Err(e) => {
                    let _ = ready_sender.send(Err(e));
                    return;
                }
            };
            let _ = ready_sender.send(Ok(()));
            // The engine publishes its shared state right after the thread reports ready.
            let shared = loop {
                if let Some(shared) = lock(&slot_for_thread).clone() {
                    break shared;
                }
                thread::park_timeout(Duration::from_millis(1));
            };
            let _alive = AliveGuard(Arc::clone(&shared));
            let mut runner = InferenceLoop {
                shared,
                backend,
                links: Vec::new(),
                link_receiver,
                max_batch: inference.max_batch,
                max_wait: Duration::from_micros(inference.max_wait_us),
                context_bytes,
                classes,
            };
            runner.run();
        })?;

        match ready_receiver.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::Inference("the inference thread died while loading".into()));
            }
        }
        let shared = Arc::new(Shared {
            config,
            spec,
            preprocess,
            new_links: link_sender,
            inference_thread: thread.thread().clone(),
            inference_idle: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            urgent: AtomicUsize::new(0),
            inference_alive: AtomicBool::new(true),
            live_workers: AtomicUsize::new(0),
            next_worker: AtomicU64::new(0),
            counters: Mutex::new(Counters::default()),
            batches: AtomicU64::new(0),
        });
        *lock(&shared_slot) = Some(Arc::clone(&shared));
        thread.thread().unpark();
        Ok(Self { shared, thread: Some(thread) })
    }

    /// A new packet-path handle, for one capture thread.
    pub fn worker(&self) -> Worker {
        Worker::new(Arc::clone(&self.shared))
    }

    pub fn labels(&self) -> &[String] {
        &self.shared.spec.labels
    }

    pub fn packets_per_context(&self) -> usize {
        self.shared.spec.packets_per_context
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Totals over freed workers and the last snapshot each live worker published (workers
    /// publish when polled, flushed and freed).
    pub fn stats(&self) -> Stats {
        let counters = lock(&self.shared.counters);
        let mut total = counters.retired.clone();
        for stats in counters.published.values() {
            total.add(stats);
        }
        total.batches = self.shared.batches.load(Ordering::Relaxed);
        total
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.inference_thread.unpark();
        // With workers still alive the thread keeps serving them and ends after the last.
        if self.shared.live_workers.load(Ordering::Acquire) == 0 {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Runs one full batch of zeros and lets the CPU cache keep twice the activation memory it
/// needed: room for the blocks of full batches and of the smaller ones a flush sends.
fn size_cpu_cache(
    classifier: &Classifier,
    max_batch: usize,
    cache: &mut CacheUser,
) -> Result<(), Error> {
    let context_bytes =
        classifier.card().packets_per_context * classifier.card().preprocess.packet_bytes;
    cpu_allocator::reset_peak();
    let before = cpu_allocator::counters();
    let mut probs = Vec::new();
    classifier.predict(&vec![0; max_batch * context_bytes], max_batch, &mut probs)?;
    let after = cpu_allocator::counters();
    let batch_bytes = after.peak_live_bytes.saturating_sub(before.live_bytes);
    cache.set_limit(usize::try_from(batch_bytes.saturating_mul(2)).unwrap_or(usize::MAX));
    log::info!(
        "a batch of {max_batch} contexts uses {} MB of CPU activation memory; up to {} MB of it \
         is kept for the next batches",
        batch_bytes >> 20,
        (batch_bytes * 2) >> 20
    );
    Ok(())
}

fn describe_differences(a: &PreprocessConfig, b: &PreprocessConfig) -> String {
    let (a, b) = (toml::to_string(a).unwrap_or_default(), toml::to_string(b).unwrap_or_default());
    let differing: Vec<String> = a
        .lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("config `{x}`, model `{y}`"))
        .collect();
    differing.join("; ")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain counters behind; keep going.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Per-flow state on the packet path.
#[derive(Default)]
struct FlowState {
    id: u64,
    tuple: Option<FiveTuple>,
    first_ts: u64,
    last_ts: u64,
    last_tag: u64,
    packets: u64,
    /// Kept packets so far (the model's packets, not counting filtered ones).
    kept: u64,
    /// The last N kept packets, a ring of N slots of `packet_bytes`; allocated on the first
    /// kept packet and given back when the flow needs no more contexts.
    history: Vec<u8>,
    contexts_sent: u32,
    contexts_done: u32,
    in_flight: u32,
    prob_sum: Vec<f32>,
}

/// A flow that ended while some of its contexts were still being classified.
struct EndingFlow {
    state: FlowState,
    end: FlowEnd,
}

/// The packet path for one capture thread. Not shareable between threads (it is `Send`, so it
/// may move to the thread that uses it).
pub struct Worker {
    shared: Arc<Shared>,
    index: u64,
    table: FlowTable<FlowState>,
    contexts: HeapProd<Job>,
    results: HeapCons<Job>,
    signal: Arc<WorkerSignal>,
    free_jobs: Vec<Job>,
    jobs_created: usize,
    history_pool: Vec<Vec<u8>>,
    ending: FxHashMap<u64, EndingFlow>,
    records: VecDeque<Record>,
    stats: Stats,
    now_ns: u64,
    next_flow: u64,
    polls_since_publish: u32,
    /// Inside `flush`: nothing may be dropped.
    flushing: bool,
    // Copied from the configuration for the hot path.
    packets_per_context: usize,
    packet_bytes: usize,
    stride: u64,
    contexts_per_flow: u32,
    idle_timeout_ns: u64,
    classes: usize,
    top_k: usize,
    ring_capacity: usize,
}

/// Whether the flow's `kept`-th kept packet (counting from 1) completes a context of its last
/// `n` packets: at the n-th, then every `stride` packets. Shared with dataset building, so
/// models train on the contexts the engine classifies.
pub fn context_due(kept: u64, n: usize, stride: u64) -> bool {
    let n = n as u64;
    kept >= n && (kept - n) % stride.max(1) == 0
}

/// Polls between two publications of a worker's counters to the engine (a mutex each).
const POLLS_PER_PUBLISH: u32 = 1024;

/// Longest sleep of a waiting worker between looks at its result ring; results wake it
/// earlier. Bounds the wait should the inference thread die without waking anyone.
const WAIT_RECHECK: Duration = Duration::from_millis(10);

/// Most idle flows expired per packet, so one packet never pays for a mass expiry.
const EXPIRIES_PER_PACKET: usize = 8;

impl Worker {
    fn new(shared: Arc<Shared>) -> Self {
        let config = &shared.config;
        let ring_capacity = config.inference.ring_capacity;
        let (contexts, consumer) = HeapRb::<Job>::new(ring_capacity).split();
        let (producer, results) = HeapRb::<Job>::new(ring_capacity).split();
        let signal = Arc::new(WorkerSignal::default());
        let link =
            WorkerLink { contexts: consumer, results: producer, signal: Arc::clone(&signal) };
        let index = shared.next_worker.fetch_add(1, Ordering::Relaxed);
        shared.live_workers.fetch_add(1, Ordering::AcqRel);
        // The receiver lives as long as the inference thread, which outlives every worker.
        let _ = shared.new_links.send(link);
        shared.inference_thread.unpark();
        let packets_per_context = shared.spec.packets_per_context;
        let stride = match config.flows.stride {
            0 => packets_per_context,
            stride => stride,
        };
        Self {
            index,
            table: FlowTable::new(config.flows.max_flows),
            contexts,
            results,
            signal,
            free_jobs: Vec::new(),
            jobs_created: 0,
            history_pool: Vec::new(),
            ending: FxHashMap::default(),
            records: VecDeque::new(),
            stats: Stats::default(),
            now_ns: 0,
            next_flow: 0,
            polls_since_publish: 0,
            flushing: false,
            packets_per_context,
            packet_bytes: shared.preprocess.packet_bytes,
            stride: stride as u64,
            contexts_per_flow: match config.flows.contexts_per_flow {
                0 => u32::MAX,
                n => n.min(u32::MAX as usize) as u32,
            },
            idle_timeout_ns: (config.flows.idle_timeout_secs * 1e9).min(u64::MAX as f64) as u64,
            classes: shared.spec.labels.len(),
            top_k: config.model.top_k,
            ring_capacity,
            shared,
        }
    }

    /// Handles one captured frame. Never blocks under the `drop` policy; under `wait` it may
    /// wait for the model when this worker's ring is full.
    pub fn process(
        &mut self,
        link: LinkType,
        ts_nanos: u64,
        frame: &[u8],
        orig_len: u32,
        user_tag: u64,
    ) -> Outcome {
        self.stats.packets += 1;
        // The clock is the current packet's time, not the latest ever seen: one frame stamped
        // far in the future then ends a few flows early instead of every flow after it.
        self.now_ns = ts_nanos;
        self.collect_results();
        self.expire_idle(EXPIRIES_PER_PACKET);

        // Parse and filter.
        let packet = match parse::parse(link, frame, orig_len) {
            Ok(packet) => packet,
            Err(skip) => {
                log::trace!("packet skipped: {}", skip.name());
                self.stats.skipped[skip_index(skip)] += 1;
                return Outcome::Skipped(skip);
            }
        };
        if let Some(filter) = preprocess::filter(&packet, &self.shared.preprocess) {
            self.stats.filtered[filter_index(filter)] += 1;
            return Outcome::Filtered(filter);
        }
        self.stats.accepted += 1;
        self.stats.snapped += packet.snapped as u64;

        // Find or create the flow; a full table hands back the flow it evicted.
        let tuple = FiveTuple::of(&packet);
        let worker_bits = (self.index + 1) << 40;
        let next_flow = &mut self.next_flow;
        let entry = self.table.lookup_or_insert(FlowKey::from(&tuple), ts_nanos, || {
            *next_flow += 1;
            FlowState {
                id: worker_bits | *next_flow,
                tuple: Some(tuple),
                first_ts: ts_nanos,
                ..FlowState::default()
            }
        });
        let slot = match entry {
            Entry::Existing(slot) => slot,
            Entry::Inserted { slot, evicted } => {
                self.stats.flows += 1;
                if let Some(evicted) = evicted {
                    self.stats.flows_evicted += 1;
                    self.end_flow(evicted, FlowEnd::Evicted);
                }
                slot
            }
        };

        // Record the packet in the flow's history when more contexts are wanted.
        let flow = self.table.state_mut(slot);
        flow.packets += 1;
        flow.last_ts = flow.last_ts.max(ts_nanos);
        flow.last_tag = user_tag;
        if flow.contexts_sent >= self.contexts_per_flow {
            return Outcome::Accepted;
        }
        let n = self.packets_per_context;
        let size = self.packet_bytes;
        if flow.history.is_empty() {
            // Buffers from the pool keep their old bytes: no context ever reads a slot this
            // flow has not written (a full context needs N kept packets, a padded one copies
            // only the kept slots), so clearing 7.5 KB per new flow would be wasted work.
            flow.history = self.history_pool.pop().unwrap_or_default();
            flow.history.resize(n * size, 0);
        }
        let position = (flow.kept % n as u64) as usize;
        preprocess::encode(
            &packet,
            &self.shared.preprocess,
            &mut flow.history[position * size..(position + 1) * size],
        );
        flow.kept += 1;

        // Every `stride` packets once N are there, the last N packets form a context.
        if context_due(flow.kept, n, self.stride) {
            self.send_context(slot, ts_nanos, user_tag);
        }
        Outcome::Accepted
    }

    /// Moves finished records into `out` (appending); returns how many.
    pub fn poll(&mut self, out: &mut Vec<Record>, max: usize) -> usize {
        self.collect_results();
        let n = max.min(self.records.len());
        out.extend(self.records.drain(..n));
        self.polls_since_publish += 1;
        if self.polls_since_publish >= POLLS_PER_PUBLISH {
            self.polls_since_publish = 0;
            self.publish_stats();
        }
        n
    }

    /// The oldest pending record, if any.
    pub fn pop_record(&mut self) -> Option<Record> {
        self.collect_results();
        self.records.pop_front()
    }

    pub fn pending_records(&self) -> usize {
        self.records.len()
    }

    /// Waits until every context sent so far has a result. With `end_flows`, first ends every
    /// flow (short flows get their padded context) so each reports its verdict.
    pub fn flush(&mut self, end_flows: bool) {
        // While flushing, the caller cannot poll and has asked to wait: records are kept
        // (at most one per flow in the table plus one per context in flight, so still
        // bounded) and contexts wait for room whatever the policy.
        self.flushing = true;
        self.shared.urgent.fetch_add(1, Ordering::AcqRel);
        self.shared.inference_thread.unpark();
        if end_flows {
            for slot in self.table.slots_oldest_first() {
                let removed = self.table.remove(slot);
                self.end_flow(removed, FlowEnd::Flushed);
            }
        }
        self.wait_for_jobs();
        self.shared.urgent.fetch_sub(1, Ordering::AcqRel);
        self.flushing = false;
        self.publish_stats();
    }

    /// Waits until every job is back, unless the inference thread is gone; jobs it never
    /// returned then count as failed.
    fn wait_for_jobs(&mut self) {
        while self.jobs_in_flight() > 0 {
            if self.collect_results() {
                continue;
            }
            if !self.shared.inference_alive.load(Ordering::Acquire) {
                let lost = self.jobs_in_flight();
                log::warn!("inference thread is gone; {lost} contexts count as failed");
                self.stats.contexts_failed += lost as u64;
                self.jobs_created -= lost;
                return;
            }
            self.sleep_until_results();
        }
    }

    /// Sleeps until the inference thread returns jobs (or a short while passes). Sleeping,
    /// not polling: on a machine with few cores a polling worker takes the core the model's
    /// threads need, and the whole pipeline slows down to wait for itself.
    fn sleep_until_results(&mut self) {
        {
            let mut waiter = lock(&self.signal.waiter);
            let current = thread::current();
            if waiter.as_ref().is_none_or(|thread| thread.id() != current.id()) {
                *waiter = Some(current);
            }
        }
        self.signal.waiting.store(true, Ordering::SeqCst);
        // Look again after announcing the wait: a result pushed in between must not wait for
        // the timeout.
        if self.results.is_empty() {
            self.shared.inference_thread.unpark();
            thread::park_timeout(WAIT_RECHECK);
        }
        self.signal.waiting.store(false, Ordering::SeqCst);
    }

    /// Ends flows idle for longer than the timeout at capture time `now_nanos`; for live
    /// captures that go quiet, call this from time to time.
    pub fn advance_clock(&mut self, now_nanos: u64) {
        self.now_ns = now_nanos;
        self.collect_results();
        self.expire_idle(usize::MAX);
    }

    /// This worker's counters; `batches` is engine-wide and left 0 here (a batch mixes
    /// contexts of several workers).
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    pub fn flows(&self) -> usize {
        self.table.len()
    }

    pub fn labels(&self) -> &[String] {
        &self.shared.spec.labels
    }

    fn jobs_in_flight(&self) -> usize {
        self.jobs_created - self.free_jobs.len()
    }

    fn publish_stats(&self) {
        lock(&self.shared.counters).published.insert(self.index, self.stats.clone());
    }

    fn expire_idle(&mut self, limit: usize) {
        let Some(deadline) = self.now_ns.checked_sub(self.idle_timeout_ns) else { return };
        let future = self.now_ns.saturating_add(self.idle_timeout_ns);
        for _ in 0..limit {
            let Some(slot) = self.table.oldest_before(deadline, future) else { break };
            let removed = self.table.remove(slot);
            self.end_flow(removed, FlowEnd::IdleTimeout);
        }
    }

    fn end_flow(&mut self, removed: Removed<FlowState>, end: FlowEnd) {
        let mut state = removed.state;
        self.stats.flows_ended += 1;

        // A flow shorter than N that never filled a context.
        let n = self.packets_per_context as u64;
        if state.contexts_sent == 0 && state.kept > 0 && state.kept < n {
            match self.shared.config.flows.short_flows {
                ShortFlowPolicy::Pad => {
                    self.stats.short_flows_padded += 1;
                    self.send_padded_context(&mut state);
                }
                ShortFlowPolicy::Drop => self.stats.short_flows_dropped += 1,
            }
        }
        self.recycle_history(std::mem::take(&mut state.history));
        if state.in_flight > 0 {
            self.ending.insert(state.id, EndingFlow { state, end });
        } else {
            self.report_flow(state, end);
        }
    }

    /// Keeps a flow's history buffer for the next new flow (at most one per table slot).
    fn recycle_history(&mut self, history: Vec<u8>) {
        if history.capacity() > 0 && self.history_pool.len() < self.table.capacity() {
            self.history_pool.push(history);
        }
    }

    fn report_flow(&mut self, state: FlowState, end: FlowEnd) {
        let Some(tuple) = state.tuple else { return };
        let prediction = (state.contexts_done > 0).then(|| {
            let mean: Vec<f32> =
                state.prob_sum.iter().map(|p| p / state.contexts_done as f32).collect();
            Prediction::from_probs(&mean, self.top_k)
        });
        self.push_record(Record::Flow(FlowRecord {
            flow_id: state.id,
            tuple,
            prediction,
            contexts: state.contexts_done,
            packets: state.packets,
            first_ts_nanos: state.first_ts,
            last_ts_nanos: state.last_ts,
            end,
            user_tag: state.last_tag,
        }));
    }

    fn push_record(&mut self, record: Record) {
        if !self.flushing && self.records.len() >= self.shared.config.inference.max_pending_records
        {
            self.records.pop_front();
            self.stats.records_overflowed += 1;
        }
        self.records.push_back(record);
    }

    /// Takes a free job, making one while under the ring capacity; under the `wait` policy
    /// waits for one to come back. `None` means the context must be dropped.
    fn take_job(&mut self) -> Option<Job> {
        loop {
            if let Some(job) = self.free_jobs.pop() {
                return Some(job);
            }
            if self.jobs_created < self.ring_capacity {
                self.jobs_created += 1;
                let context_bytes = self.packets_per_context * self.packet_bytes;
                return Some(Job {
                    bytes: vec![0; context_bytes].into_boxed_slice(),
                    probs: vec![0.0; self.classes].into_boxed_slice(),
                    ok: false,
                    flow_slot: 0,
                    flow_id: 0,
                    packets: 0,
                    index: 0,
                    ts_nanos: 0,
                    user_tag: 0,
                });
            }
            if self.collect_results() {
                continue;
            }
            match self.shared.config.inference.on_full {
                policy
                    if (policy == FullRingPolicy::Wait || self.flushing)
                        && self.shared.inference_alive.load(Ordering::Acquire) =>
                {
                    self.sleep_until_results();
                }
                _ => return None,
            }
        }
    }

    fn send_context(&mut self, slot: u32, ts_nanos: u64, user_tag: u64) {
        self.stats.contexts += 1;
        let Some(mut job) = self.take_job() else {
            log::trace!("context dropped: ring full");
            self.stats.contexts_dropped += 1;
            // A dropped context still uses up one of the flow's contexts, so a saturated
            // model sheds load instead of retrying every later packet.
            self.table.state_mut(slot).contexts_sent += 1;
            return;
        };
        let n = self.packets_per_context;
        let size = self.packet_bytes;
        let flow = self.table.state_mut(slot);

        // Unroll the history ring, oldest packet first.
        let oldest = (flow.kept % n as u64) as usize;
        let split = oldest * size;
        let tail = flow.history.len() - split;
        job.bytes[..tail].copy_from_slice(&flow.history[split..]);
        job.bytes[tail..].copy_from_slice(&flow.history[..split]);

        job.flow_slot = slot;
        job.flow_id = flow.id;
        job.packets = n as u32;
        job.index = flow.contexts_sent;
        job.ts_nanos = ts_nanos;
        job.user_tag = user_tag;
        flow.contexts_sent += 1;
        flow.in_flight += 1;
        if flow.contexts_sent >= self.contexts_per_flow {
            let history = std::mem::take(&mut flow.history);
            self.recycle_history(history);
        }
        self.push_job(job);
    }

    fn send_padded_context(&mut self, state: &mut FlowState) {
        self.stats.contexts += 1;
        let Some(mut job) = self.take_job() else {
            self.stats.contexts_dropped += 1;
            return;
        };
        // The packets in arrival order (the ring has not wrapped: fewer than N), then zeros.
        let kept_bytes = state.kept as usize * self.packet_bytes;
        job.bytes[..kept_bytes].copy_from_slice(&state.history[..kept_bytes]);
        job.bytes[kept_bytes..].fill(0);
        job.flow_slot = u32::MAX;
        job.flow_id = state.id;
        job.packets = state.kept as u32;
        job.index = 0;
        job.ts_nanos = state.last_ts;
        job.user_tag = state.last_tag;
        state.contexts_sent += 1;
        state.in_flight += 1;
        self.push_job(job);
    }

    fn push_job(&mut self, job: Job) {
        if let Err(job) = self.contexts.try_push(job) {
            // Unreachable while jobs never outnumber the ring's slots; keep the job anyway.
            self.free_jobs.push(job);
            self.stats.contexts_dropped += 1;
            return;
        }
        if self.shared.inference_idle.swap(false, Ordering::AcqRel) {
            self.shared.inference_thread.unpark();
        }
    }

    /// Takes classified jobs back, updates their flows and queues records. Returns whether
    /// any came back.
    fn collect_results(&mut self) -> bool {
        let mut any = false;
        while let Some(mut job) = self.results.try_pop() {
            any = true;
            self.finish_job(&mut job);
            self.free_jobs.push(job);
        }
        any
    }

    fn finish_job(&mut self, job: &mut Job) {
        let classes = self.classes;
        if job.ok {
            self.stats.contexts_classified += 1;
        } else {
            self.stats.contexts_failed += 1;
        }

        // The flow is either still in the table (same id in its slot) or ending.
        let live = self
            .table
            .state(job.flow_slot)
            .is_some_and(|state| state.id == job.flow_id && state.tuple.is_some());
        let state = if live {
            Some(self.table.state_mut(job.flow_slot))
        } else {
            self.ending.get_mut(&job.flow_id).map(|ending| &mut ending.state)
        };
        let Some(state) = state else { return };
        state.in_flight = state.in_flight.saturating_sub(1);
        let tuple = state.tuple;
        if job.ok {
            if state.prob_sum.len() != classes {
                state.prob_sum.clear();
                state.prob_sum.resize(classes, 0.0);
            }
            for (sum, p) in state.prob_sum.iter_mut().zip(job.probs.iter()) {
                *sum += p;
            }
            state.contexts_done += 1;
        }
        let finished = !live && state.in_flight == 0;

        if let (true, Some(tuple)) = (job.ok, tuple) {
            let prediction = Prediction::from_probs(&job.probs, self.top_k);
            self.push_record(Record::Context(ContextRecord {
                flow_id: job.flow_id,
                tuple,
                prediction,
                packets: job.packets,
                index: job.index,
                ts_nanos: job.ts_nanos,
                user_tag: job.user_tag,
            }));
        }
        if finished {
            if let Some(ending) = self.ending.remove(&job.flow_id) {
                self.report_flow(ending.state, ending.end);
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Let in-flight jobs come back so the totals stay consistent, then retire.
        self.wait_for_jobs();
        let mut counters = lock(&self.shared.counters);
        counters.published.remove(&self.index);
        counters.retired.add(&self.stats);
        drop(counters);
        self.signal.closed.store(true, Ordering::Release);
        self.shared.live_workers.fetch_sub(1, Ordering::AcqRel);
        self.shared.inference_thread.unpark();
    }
}

fn skip_index(skip: Skip) -> usize {
    Skip::ALL.iter().position(|&s| s == skip).unwrap_or(0)
}

fn filter_index(filter: Filter) -> usize {
    Filter::ALL.iter().position(|&f| f == filter).unwrap_or(0)
}

/// Marks the inference thread dead when it returns or unwinds.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.inference_alive.store(false, Ordering::Release);
    }
}

/// The inference thread: gathers batches from every worker's ring and runs the backend.
struct InferenceLoop {
    shared: Arc<Shared>,
    backend: Box<dyn Backend>,
    links: Vec<WorkerLink>,
    link_receiver: Receiver<WorkerLink>,
    max_batch: usize,
    max_wait: Duration,
    context_bytes: usize,
    classes: usize,
}

/// Longest sleep between looks at the rings while a batch fills.
const BATCH_POLL: Duration = Duration::from_micros(200);

/// How long the inference thread sleeps when idle before looking again on its own.
const IDLE_PARK: Duration = Duration::from_millis(50);

impl InferenceLoop {
    fn run(&mut self) {
        let mut batch: Vec<(usize, Job)> = Vec::with_capacity(self.max_batch);
        let mut raw: Vec<u8> = Vec::with_capacity(self.max_batch * self.context_bytes);
        let mut probs: Vec<f32> = Vec::with_capacity(self.max_batch * self.classes);
        let mut next_link = 0;
        loop {
            self.links.extend(self.link_receiver.try_iter());

            // Gather round-robin until the batch is full or the first context waited enough.
            let mut first_at: Option<Instant> = None;
            loop {
                let before = batch.len();
                let count = self.links.len();
                for step in 0..count {
                    let index = (next_link + step) % count;
                    while batch.len() < self.max_batch {
                        let Some(job) = self.links[index].contexts.try_pop() else { break };
                        batch.push((index, job));
                    }
                }
                if count > 0 {
                    next_link = (next_link + 1) % count;
                }
                if batch.len() > before && first_at.is_none() {
                    first_at = Some(Instant::now());
                }
                let Some(first_at) = first_at else { break };
                let waited = first_at.elapsed();
                let urgent = self.shared.urgent.load(Ordering::Acquire) > 0;
                if batch.len() >= self.max_batch || waited >= self.max_wait || urgent {
                    break;
                }
                if batch.len() == before {
                    // Sleep, not spin: a worker's push or flush unparks us.
                    self.shared.inference_idle.store(true, Ordering::Release);
                    thread::park_timeout((self.max_wait - waited).min(BATCH_POLL));
                    self.shared.inference_idle.store(false, Ordering::Release);
                }
            }

            if batch.is_empty() {
                if self.finished() {
                    return;
                }
                self.shared.inference_idle.store(true, Ordering::Release);
                // Look once more after announcing idleness: a push in between must not wait.
                if self.links.iter().all(|link| link.contexts.is_empty()) {
                    thread::park_timeout(IDLE_PARK);
                }
                self.shared.inference_idle.store(false, Ordering::Release);
                continue;
            }
            self.classify(&mut batch, &mut raw, &mut probs);
        }
    }

    fn classify(&mut self, batch: &mut Vec<(usize, Job)>, raw: &mut Vec<u8>, probs: &mut Vec<f32>) {
        raw.clear();
        for (_, job) in batch.iter() {
            raw.extend_from_slice(&job.bytes);
        }
        // A panic inside libtorch or a backend fails this batch, not the whole engine.
        probs.clear();
        let backend = &mut self.backend;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            backend.infer(raw, batch.len(), probs)
        }))
        .unwrap_or_else(|_| Err(Error::Inference("the model panicked".into())));
        let ok = match result {
            Ok(()) if probs.len() == batch.len() * self.classes => {
                // NaN or infinite weights give garbage, not labels.
                let finite = probs.iter().all(|p| p.is_finite());
                if !finite {
                    log::warn!("the model returned non-finite probabilities; batch failed");
                }
                finite
            }
            Ok(()) => {
                log::warn!(
                    "model returned {} probabilities for {} contexts",
                    probs.len(),
                    batch.len()
                );
                false
            }
            Err(e) => {
                log::warn!("inference failed for a batch of {}: {e}", batch.len());
                false
            }
        };
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        for (row, (link, mut job)) in batch.drain(..).enumerate() {
            job.ok = ok;
            if ok {
                job.probs.copy_from_slice(&probs[row * self.classes..(row + 1) * self.classes]);
            }
            // Cannot fail: a worker never has more jobs out than its result ring holds.
            let _ = self.links[link].results.try_push(job);
        }
        for link in &self.links {
            link.signal.wake();
        }
        self.links.retain(|link| {
            !(link.signal.closed.load(Ordering::Acquire) && link.contexts.is_empty())
        });
    }

    fn finished(&mut self) -> bool {
        self.links.retain(|link| !link.signal.closed.load(Ordering::Acquire));
        self.shared.shutdown.load(Ordering::Acquire)
            && self.shared.live_workers.load(Ordering::Acquire) == 0
    }
}
