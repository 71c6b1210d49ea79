//! Engine tests through the Rust API, with fake backends in place of the model: contexts cut
//! from flows, records, the ring policies, failures, the flow table bound, idle timeouts,
//! counters, several workers and shutdown order.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use combo_plugin::Error;
use combo_plugin::config::{EngineConfig, FullRingPolicy, PreprocessConfig, ShortFlowPolicy};
use combo_plugin::engine::{
    Backend, BackendFactory, ContextRecord, Engine, FlowEnd, FlowRecord, ModelSpec, Outcome,
    Record, Stats, Worker,
};
use combo_plugin::flow::FiveTuple;
use combo_plugin::parse::{LinkType, PROTO_TCP, Skip};
use combo_plugin::preprocess::Filter;
use common::*;

const CLASSES: usize = 4;
const PACKET_BYTES: usize = 1500;
/// Where a packet's first payload byte (its marker) lands in its slot: IPv4 + TCP headers.
const MARKER_OFFSET: usize = IPV4_HEADER_LEN + TCP_HEADER_LEN;
const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000_000_000;
/// Longest a test waits for something that should take microseconds.
const PATIENCE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Flows and frames
// ---------------------------------------------------------------------------------------------

/// One TCP connection: a client talking to port 443.
#[derive(Debug, Clone, Copy)]
struct Flow {
    client: (Ipv4Addr, u16),
    server: (Ipv4Addr, u16),
}

impl Flow {
    /// The `i`-th of many distinct flows.
    fn numbered(i: u32) -> Self {
        let client = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
        Self { client: (client, 20_000 + (i % 40_000) as u16), server: (SERVER, 443) }
    }

    /// A data packet from the client whose payload starts with `marker`.
    fn up(&self, marker: u8) -> Vec<u8> {
        tcp4(self.client, self.server, DATA, &payload(marker))
    }

    /// A data packet from the server whose payload starts with `marker`.
    fn down(&self, marker: u8) -> Vec<u8> {
        tcp4(self.server, self.client, DATA, &payload(marker))
    }

    fn bare_ack(&self) -> Vec<u8> {
        tcp4(self.client, self.server, ACK, &[])
    }

    /// The five-tuple as the client opened it.
    fn tuple(&self) -> FiveTuple {
        FiveTuple {
            src: IpAddr::V4(self.client.0),
            dst: IpAddr::V4(self.server.0),
            src_port: self.client.1,
            dst_port: self.server.1,
            protocol: PROTO_TCP,
        }
    }

    fn reversed_tuple(&self) -> FiveTuple {
        let t = self.tuple();
        FiveTuple { src: t.dst, dst: t.src, src_port: t.dst_port, dst_port: t.src_port, ..t }
    }
}

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// 16 payload bytes: the marker, then filler that is never zero.
fn payload(marker: u8) -> [u8; 16] {
    let mut bytes = [0xa5; 16];
    bytes[0] = marker;
    bytes
}

fn feed(worker: &mut Worker, frame: &[u8], ts_nanos: u64, tag: u64) -> Outcome {
    worker.process(LinkType::ETHERNET, ts_nanos, frame, frame.len() as u32, tag)
}

/// Feeds `packets` data packets of `flow` (markers 1, 2, ...), one millisecond apart from
/// `start`, tagged with their marker.
fn feed_flow(worker: &mut Worker, flow: &Flow, packets: u8, start: u64) {
    for marker in 1..=packets {
        let outcome = feed(worker, &flow.up(marker), start + u64::from(marker) * MS, marker.into());
        assert_eq!(outcome, Outcome::Accepted);
    }
}

fn drain(worker: &mut Worker) -> Vec<Record> {
    let mut records = Vec::new();
    worker.poll(&mut records, usize::MAX);
    records
}

fn split(records: &[Record]) -> (Vec<ContextRecord>, Vec<FlowRecord>) {
    let mut contexts = Vec::new();
    let mut flows = Vec::new();
    for record in records {
        match record {
            Record::Context(c) => contexts.push(c.clone()),
            Record::Flow(f) => flows.push(f.clone()),
        }
    }
    (contexts, flows)
}

/// Flushes every flow and returns what was reported.
fn finish(worker: &mut Worker) -> (Vec<ContextRecord>, Vec<FlowRecord>) {
    worker.flush(true);
    split(&drain(worker))
}

// ---------------------------------------------------------------------------------------------
// Engines and backends
// ---------------------------------------------------------------------------------------------

fn spec(packets_per_context: usize) -> ModelSpec {
    ModelSpec {
        labels: (0..CLASSES).map(|c| format!("class{c}")).collect(),
        packets_per_context,
        preprocess: PreprocessConfig::default(),
    }
}

/// Defaults, but batches are not held back long: tests wait on results.
fn config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.inference.max_wait_us = 100;
    config
}

fn start(config: EngineConfig, n: usize, factory: BackendFactory) -> Engine {
    Engine::with_backend(config, spec(n), factory).expect("engine starts")
}

fn factory(backend: impl Backend + Send + 'static) -> BackendFactory {
    Box::new(move || Ok(Box::new(backend) as Box<dyn Backend>))
}

/// The marker (first payload byte) of each of the `n` packets of a context.
fn markers(context: &[u8], n: usize) -> Vec<u8> {
    (0..n).map(|k| context[k * PACKET_BYTES + MARKER_OFFSET]).collect()
}

/// Deterministic probabilities of a context, from the marker `m` of its first packet:
/// class `m % CLASSES` gets `0.5 + m / 100`, the other classes share the rest equally.
fn probs_of(context: &[u8]) -> [f32; CLASSES] {
    let marker = context[MARKER_OFFSET];
    let best = 0.5 + f32::from(marker) / 100.0;
    let mut probs = [(1.0 - best) / (CLASSES - 1) as f32; CLASSES];
    probs[usize::from(marker) % CLASSES] = best;
    probs
}

/// Every context it classified, in order.
type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// Records the contexts of every batch and answers with [`probs_of`].
struct RecordingBackend {
    seen: Seen,
    context_bytes: usize,
}

impl Backend for RecordingBackend {
    fn infer(&mut self, raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error> {
        assert_eq!(raw.len(), batch * self.context_bytes, "batch size");
        probs.clear();
        let mut seen = self.seen.lock().unwrap();
        for context in raw.chunks(self.context_bytes) {
            seen.push(context.to_vec());
            probs.extend(probs_of(context));
        }
        Ok(())
    }
}

fn recording(n: usize) -> (BackendFactory, Seen) {
    let seen = Seen::default();
    let backend = RecordingBackend { seen: Arc::clone(&seen), context_bytes: n * PACKET_BYTES };
    (factory(backend), seen)
}

fn recording_engine(config: EngineConfig, n: usize) -> (Engine, Seen) {
    let (factory, seen) = recording(n);
    (start(config, n, factory), seen)
}

/// Answers with uniform probabilities, optionally after sleeping.
struct UniformBackend {
    delay: Duration,
    calls: Arc<AtomicUsize>,
}

impl Backend for UniformBackend {
    fn infer(&mut self, _raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        thread::sleep(self.delay);
        probs.clear();
        probs.resize(batch * CLASSES, 1.0 / CLASSES as f32);
        Ok(())
    }
}

fn uniform(delay: Duration) -> BackendFactory {
    factory(UniformBackend { delay, calls: Arc::default() })
}

fn assert_close(actual: f32, expected: f32, what: &str) {
    assert!((actual - expected).abs() < 1e-5, "{what}: {actual} != {expected}");
}

/// The counters that must add up once a worker is flushed.
fn assert_balanced(stats: &Stats) {
    let skipped: u64 = stats.skipped.iter().sum();
    let filtered: u64 = stats.filtered.iter().sum();
    assert_eq!(stats.packets, stats.accepted + skipped + filtered, "packets: {stats:?}");
    assert_eq!(
        stats.contexts,
        stats.contexts_classified + stats.contexts_dropped + stats.contexts_failed,
        "contexts: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Contexts and records
// ---------------------------------------------------------------------------------------------

#[test]
fn twelve_packets_make_two_contexts_and_one_flow_verdict() {
    let (engine, seen) = recording_engine(config(), 5);
    let mut worker = engine.worker();
    let flow = Flow::numbered(1);

    // 12 data packets, marker = packet number, tag = 100 + number; a bare ACK after packet 3
    // is filtered and must neither enter a context nor count as a flow packet.
    for number in 1..=12u8 {
        let ts = u64::from(number) * MS;
        let outcome = feed(&mut worker, &flow.up(number), ts, 100 + u64::from(number));
        assert_eq!(outcome, Outcome::Accepted);
        if number == 3 {
            let outcome = feed(&mut worker, &flow.bare_ack(), ts + 1, 999);
            assert_eq!(outcome, Outcome::Filtered(Filter::EmptyTcp));
        }
    }
    worker.flush(true);
    let records = drain(&mut worker);

    // What the model saw: packets 1-5, then 6-10, oldest first; 11 and 12 never fill one.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(markers(&seen[0], 5), [1, 2, 3, 4, 5]);
    assert_eq!(markers(&seen[1], 5), [6, 7, 8, 9, 10]);
    assert_eq!(seen[0].len(), 5 * PACKET_BYTES);

    // Two context records, then the flow record.
    assert_eq!(records.len(), 3, "{records:#?}");
    let (contexts, flows) = split(&records);
    assert!(matches!(records[2], Record::Flow(_)));
    let (first, second, verdict) = (&contexts[0], &contexts[1], &flows[0]);

    assert_eq!((first.index, second.index), (0, 1));
    assert_eq!((first.packets, second.packets), (5, 5));
    // Each context carries the tag and time of the packet that completed it.
    assert_eq!((first.user_tag, second.user_tag), (105, 110));
    assert_eq!((first.ts_nanos, second.ts_nanos), (5 * MS, 10 * MS));
    assert_eq!(first.tuple, flow.tuple());
    assert_eq!(first.flow_id, verdict.flow_id);
    assert_eq!(second.flow_id, verdict.flow_id);

    // Context 1 starts with marker 1: class 1 at 0.51; context 2 with marker 6: class 2 at
    // 0.56 (see `probs_of`).
    assert_eq!(first.prediction.label, 1);
    assert_close(first.prediction.confidence, 0.51, "first context");
    assert_eq!(second.prediction.label, 2);
    assert_close(second.prediction.confidence, 0.56, "second context");

    // The flow: the mean of [0.49/3, 0.51, 0.49/3, 0.49/3] and [0.44/3, 0.44/3, 0.56, 0.44/3]
    // = [0.155, 0.328333, 0.361667, 0.155].
    let prediction = verdict.prediction.expect("classified flow has a prediction");
    assert_eq!(prediction.label, 2);
    assert_close(prediction.confidence, 0.361_667, "flow confidence");
    let top = prediction.top();
    assert_eq!(top.len(), 3, "top_k defaults to 3");
    assert_eq!(top[0].0, 2);
    assert_eq!(top[1].0, 1);
    assert_close(top[1].1, 0.328_333, "flow second class");
    assert_close(top[2].1, 0.155, "flow third class");

    assert_eq!(verdict.contexts, 2);
    assert_eq!(verdict.packets, 12);
    assert_eq!(verdict.end, FlowEnd::Flushed);
    assert_eq!(verdict.user_tag, 112);
    assert_eq!((verdict.first_ts_nanos, verdict.last_ts_nanos), (MS, 12 * MS));
    assert_eq!(verdict.tuple, flow.tuple());

    let stats = worker.stats();
    assert_eq!((stats.packets, stats.accepted), (13, 12));
    assert_eq!(stats.filtered(Filter::EmptyTcp), 1);
    assert_eq!((stats.flows, stats.flows_ended), (1, 1));
    assert_eq!((stats.contexts, stats.contexts_classified), (2, 2));
    assert_eq!(stats.short_flows_padded, 0);
    assert_balanced(&stats);
}

/// Runs one flow of `packets` packets through a fresh engine; returns the markers of every
/// context the model saw and the records.
fn one_flow(config: EngineConfig, n: usize, packets: u8) -> (Vec<Vec<u8>>, Vec<ContextRecord>) {
    let (engine, seen) = recording_engine(config, n);
    let mut worker = engine.worker();
    let flow = Flow::numbered(7);
    feed_flow(&mut worker, &flow, packets, 0);
    let (contexts, flows) = finish(&mut worker);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].packets, u64::from(packets));
    assert_eq!(flows[0].contexts as usize, contexts.len());
    let seen = seen.lock().unwrap().iter().map(|context| markers(context, n)).collect();
    (seen, contexts)
}

#[test]
fn stride_one_slides_by_one_packet() {
    let mut config = config();
    config.flows.stride = 1;
    config.flows.contexts_per_flow = 0;
    let (seen, contexts) = one_flow(config, 3, 8);
    let expected: Vec<Vec<u8>> = vec![
        vec![1, 2, 3],
        vec![2, 3, 4],
        vec![3, 4, 5],
        vec![4, 5, 6],
        vec![5, 6, 7],
        vec![6, 7, 8],
    ];
    assert_eq!(seen, expected);
    let indexes: Vec<u32> = contexts.iter().map(|c| c.index).collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4, 5]);
    // The completing packet's tag is its marker.
    let tags: Vec<u64> = contexts.iter().map(|c| c.user_tag).collect();
    assert_eq!(tags, [3, 4, 5, 6, 7, 8]);
}

#[test]
fn strides_between_one_and_more_than_n() {
    let mut config = config();
    config.flows.contexts_per_flow = 0;
    config.flows.stride = 2;
    let (seen, _) = one_flow(config.clone(), 3, 8);
    assert_eq!(seen, [[1, 2, 3], [3, 4, 5], [5, 6, 7]]);

    // A stride longer than N skips packets between contexts.
    config.flows.stride = 5;
    let (seen, _) = one_flow(config, 3, 14);
    assert_eq!(seen, [[1, 2, 3], [6, 7, 8], [11, 12, 13]]);
}

#[test]
fn contexts_per_flow_limits_and_zero_means_unlimited() {
    let mut config = config();
    config.flows.stride = 1;

    config.flows.contexts_per_flow = 2;
    let (seen, _) = one_flow(config.clone(), 3, 10);
    assert_eq!(seen, [[1, 2, 3], [2, 3, 4]]);

    // The default limit is 4.
    config.flows.contexts_per_flow = EngineConfig::default().flows.contexts_per_flow;
    let (seen, _) = one_flow(config.clone(), 3, 10);
    assert_eq!(seen.len(), 4);

    config.flows.contexts_per_flow = 0;
    let (seen, _) = one_flow(config, 3, 10);
    assert_eq!(seen.len(), 8);
    assert_eq!(seen[7], [8, 9, 10]);
}

#[test]
fn both_directions_share_one_flow_reported_as_first_seen() {
    let (engine, seen) = recording_engine(config(), 4);
    let mut worker = engine.worker();

    // Flow A opened by the client, flow B whose first packet comes from the server.
    let a = Flow::numbered(1);
    let b = Flow::numbered(2);
    for marker in 1..=4u8 {
        let (frame_a, frame_b) = if marker % 2 == 1 {
            (a.up(marker), b.down(marker + 10))
        } else {
            (a.down(marker), b.up(marker + 10))
        };
        assert_eq!(feed(&mut worker, &frame_a, u64::from(marker) * MS, 0), Outcome::Accepted);
        assert_eq!(feed(&mut worker, &frame_b, u64::from(marker) * MS, 0), Outcome::Accepted);
    }
    assert_eq!(worker.flows(), 2);
    let (contexts, flows) = finish(&mut worker);

    let seen: Vec<Vec<u8>> = seen.lock().unwrap().iter().map(|c| markers(c, 4)).collect();
    assert_eq!(seen, [[1, 2, 3, 4], [11, 12, 13, 14]]);
    assert_eq!(contexts.len(), 2);
    assert_eq!(flows.len(), 2);
    let flow_a = flows.iter().find(|f| f.tuple == a.tuple()).expect("flow A as opened");
    let flow_b = flows.iter().find(|f| f.tuple == b.reversed_tuple()).expect("flow B as opened");
    assert_eq!((flow_a.packets, flow_b.packets), (4, 4));
    assert_eq!(contexts[0].tuple, a.tuple());
    assert_eq!(contexts[1].tuple, b.reversed_tuple());
}

#[test]
fn poll_respects_its_maximum_and_pop_record_takes_the_oldest() {
    let (engine, _seen) = recording_engine(config(), 2);
    let mut worker = engine.worker();
    for i in 0..3 {
        feed_flow(&mut worker, &Flow::numbered(i), 2, 0);
    }
    worker.flush(true);
    // 3 contexts and 3 flows.
    assert_eq!(worker.pending_records(), 6);
    let mut out = Vec::new();
    assert_eq!(worker.poll(&mut out, 4), 4);
    assert_eq!(out.len(), 4);
    assert_eq!(worker.pending_records(), 2);
    assert!(worker.pop_record().is_some());
    assert!(worker.pop_record().is_some());
    assert!(worker.pop_record().is_none());
}

#[test]
fn top_k_is_bounded_by_the_class_count() {
    let mut config = config();
    config.model.top_k = 5;
    let (engine, _seen) = recording_engine(config, 2);
    let mut worker = engine.worker();
    feed_flow(&mut worker, &Flow::numbered(1), 2, 0);
    let (contexts, _) = finish(&mut worker);
    let top = contexts[0].prediction.top();
    assert_eq!(top.len(), CLASSES);
    // Best first, and the probabilities sum to one.
    assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
    assert_close(top.iter().map(|&(_, p)| p).sum(), 1.0, "probability sum");
}

// ---------------------------------------------------------------------------------------------
// Short flows
// ---------------------------------------------------------------------------------------------

#[test]
fn short_flow_padded_context_has_real_count_and_zero_tail() {
    let mut config = config();
    config.flows.short_flows = ShortFlowPolicy::Pad;
    let (engine, seen) = recording_engine(config, 5);
    let mut worker = engine.worker();
    let flow = Flow::numbered(3);
    feed_flow(&mut worker, &flow, 3, 0);
    let (contexts, flows) = finish(&mut worker);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(markers(&seen[0], 3), [1, 2, 3]);
    // Packets 4 and 5 are missing: all zero.
    assert!(seen[0][3 * PACKET_BYTES..].iter().all(|&b| b == 0));

    assert_eq!(contexts.len(), 1);
    assert_eq!(contexts[0].packets, 3);
    assert_eq!(contexts[0].index, 0);
    assert_eq!(contexts[0].user_tag, 3, "the tag of the flow's last packet");
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].contexts, 1);
    assert!(flows[0].prediction.is_some());

    let stats = worker.stats();
    assert_eq!(stats.short_flows_padded, 1);
    assert_eq!(stats.short_flows_dropped, 0);
    assert_eq!((stats.contexts, stats.contexts_classified), (1, 1));
}

#[test]
fn short_flow_dropped_gets_a_verdict_without_prediction() {
    let mut config = config();
    config.flows.short_flows = ShortFlowPolicy::Drop;
    let (engine, seen) = recording_engine(config, 5);
    let mut worker = engine.worker();
    feed_flow(&mut worker, &Flow::numbered(3), 4, 0);
    let (contexts, flows) = finish(&mut worker);

    assert!(seen.lock().unwrap().is_empty());
    assert!(contexts.is_empty());
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].prediction, None);
    assert_eq!(flows[0].contexts, 0);
    assert_eq!(flows[0].packets, 4);
    let stats = worker.stats();
    assert_eq!(stats.short_flows_dropped, 1);
    assert_eq!(stats.short_flows_padded, 0);
    assert_eq!(stats.contexts, 0);
}

// ---------------------------------------------------------------------------------------------
// Ring policies
// ---------------------------------------------------------------------------------------------

/// Blocks in every batch until the test drops the gate's sender (or `PATIENCE` passes, so a
/// broken test cannot hang forever), telling the test when it has entered.
struct GatedBackend {
    entered: mpsc::Sender<()>,
    gate: mpsc::Receiver<()>,
    finished: Arc<AtomicUsize>,
}

impl Backend for GatedBackend {
    fn infer(&mut self, _raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error> {
        let _ = self.entered.send(());
        let _ = self.gate.recv_timeout(PATIENCE);
        probs.clear();
        probs.resize(batch * CLASSES, 1.0 / CLASSES as f32);
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn full_ring_drops_contexts_without_blocking() {
    let mut config = config();
    config.inference.ring_capacity = 2;
    config.inference.on_full = FullRingPolicy::Drop;
    let (entered_sender, entered) = mpsc::channel();
    let (release, gate) = mpsc::channel::<()>();
    let finished = Arc::new(AtomicUsize::new(0));
    let backend = GatedBackend { entered: entered_sender, gate, finished: Arc::clone(&finished) };
    let engine = start(config, 2, factory(backend));
    let mut worker = engine.worker();

    // The first context reaches the backend, which then holds it.
    feed_flow(&mut worker, &Flow::numbered(0), 2, 0);
    entered.recv_timeout(PATIENCE).expect("the backend receives the first context");

    // One more context fits the ring; the other nine find every job in flight.
    let started = Instant::now();
    for i in 1..=10 {
        feed_flow(&mut worker, &Flow::numbered(i), 2, u64::from(i) * 10 * MS);
    }
    let elapsed = started.elapsed();
    assert_eq!(finished.load(Ordering::SeqCst), 0, "process() returned before the backend did");
    assert!(elapsed < Duration::from_secs(1), "process() blocked for {elapsed:?}");
    let stats = worker.stats();
    assert_eq!(stats.contexts, 11);
    assert_eq!(stats.contexts_dropped, 9);

    // Release the backend and end every flow.
    drop(release);
    let (contexts, flows) = finish(&mut worker);
    let stats = worker.stats();
    assert_balanced(&stats);
    assert_eq!(stats.contexts_classified, 2);
    assert_eq!(stats.contexts_dropped, 9);
    assert_eq!(contexts.len() as u64, stats.contexts_classified);
    // Every flow reports; only those whose context got through have a prediction.
    assert_eq!(flows.len(), 11);
    assert_eq!(flows.iter().filter(|f| f.prediction.is_some()).count(), 2);
    // A dropped context is not retried as a padded one.
    assert_eq!(stats.short_flows_padded, 0);
}

#[test]
fn wait_policy_applies_back_pressure_and_drops_nothing() {
    let mut config = config();
    config.inference.ring_capacity = 2;
    config.inference.on_full = FullRingPolicy::Wait;
    let engine = start(config, 2, uniform(Duration::from_millis(3)));
    let mut worker = engine.worker();

    let started = Instant::now();
    for i in 0..30 {
        feed_flow(&mut worker, &Flow::numbered(i), 2, u64::from(i) * 10 * MS);
    }
    let (contexts, flows) = finish(&mut worker);
    assert!(started.elapsed() < Duration::from_secs(2));

    let stats = worker.stats();
    assert_balanced(&stats);
    assert_eq!(stats.contexts, 30);
    assert_eq!(stats.contexts_dropped, 0);
    assert_eq!(stats.contexts_classified, 30);
    assert_eq!(contexts.len(), 30);
    assert_eq!(flows.len(), 30);
}

// ---------------------------------------------------------------------------------------------
// Backend failures
// ---------------------------------------------------------------------------------------------

struct FailingBackend;

impl Backend for FailingBackend {
    fn infer(&mut self, _raw: &[u8], _batch: usize, _probs: &mut Vec<f32>) -> Result<(), Error> {
        Err(Error::Inference("test backend always fails".into()))
    }
}

/// Claims success but returns one probability too few.
struct ShortAnswerBackend;

impl Backend for ShortAnswerBackend {
    fn infer(&mut self, _raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error> {
        probs.clear();
        probs.resize(batch * CLASSES - 1, 0.25);
        Ok(())
    }
}

fn assert_all_failed(factory: BackendFactory) {
    let engine = start(config(), 2, factory);
    let mut worker = engine.worker();
    feed_flow(&mut worker, &Flow::numbered(0), 2, 0);
    feed_flow(&mut worker, &Flow::numbered(1), 4, 0);
    // A short flow: its padded context fails too.
    feed_flow(&mut worker, &Flow::numbered(2), 1, 0);
    let (contexts, flows) = finish(&mut worker);

    let stats = worker.stats();
    assert_balanced(&stats);
    assert_eq!(stats.contexts, 4);
    assert_eq!(stats.contexts_failed, 4);
    assert_eq!(stats.contexts_classified, 0);
    assert!(contexts.is_empty());
    assert_eq!(flows.len(), 3);
    assert!(flows.iter().all(|f| f.prediction.is_none() && f.contexts == 0));
}

#[test]
fn failing_backend_counts_failures_and_flows_still_report() {
    assert_all_failed(factory(FailingBackend));
}

#[test]
fn wrong_number_of_probabilities_counts_as_failure() {
    assert_all_failed(factory(ShortAnswerBackend));
}

/// Panics on its first batch only.
struct PanicOnceBackend {
    calls: usize,
}

impl Backend for PanicOnceBackend {
    fn infer(&mut self, _raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error> {
        self.calls += 1;
        if self.calls == 1 {
            panic!("test backend panics on purpose");
        }
        probs.clear();
        probs.resize(batch * CLASSES, 0.25);
        Ok(())
    }
}

#[test]
fn panicking_backend_fails_one_batch_and_keeps_working() {
    let engine = start(config(), 2, factory(PanicOnceBackend { calls: 0 }));
    let mut worker = engine.worker();

    // One context per batch: wait for each before sending the next.
    feed_flow(&mut worker, &Flow::numbered(0), 2, 0);
    worker.flush(false);
    assert_eq!(worker.stats().contexts_failed, 1);
    feed_flow(&mut worker, &Flow::numbered(1), 2, 10 * MS);
    worker.flush(false);
    assert_eq!(worker.stats().contexts_classified, 1);

    let (contexts, flows) = finish(&mut worker);
    assert_eq!(contexts.len(), 1);
    assert_eq!(contexts[0].tuple, Flow::numbered(1).tuple());
    let first = flows.iter().find(|f| f.tuple == Flow::numbered(0).tuple()).unwrap();
    let second = flows.iter().find(|f| f.tuple == Flow::numbered(1).tuple()).unwrap();
    assert_eq!(first.prediction, None);
    assert!(second.prediction.is_some());
    assert_balanced(&worker.stats());
}

/// Appends its answer to `probs` without clearing it first. The trait only asks a backend to
/// write `batch * classes` probabilities into `probs`; the buffer is the engine's and reused.
struct AppendingBackend;

impl Backend for AppendingBackend {
    fn infer(&mut self, _raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error> {
        probs.extend(std::iter::repeat_n(0.25, batch * CLASSES));
        Ok(())
    }
}

#[test]
fn backend_that_appends_probabilities_works_for_every_batch() {
    let engine = start(config(), 2, factory(AppendingBackend));
    let mut worker = engine.worker();
    // Three batches, one context each.
    for i in 0..3u32 {
        feed_flow(&mut worker, &Flow::numbered(i), 2, u64::from(i) * 10 * MS);
        worker.flush(false);
    }
    let stats = worker.stats();
    assert_eq!(stats.contexts_failed, 0, "{stats:?}");
    assert_eq!(stats.contexts_classified, 3);
}

#[test]
fn backend_factory_errors_are_returned() {
    let failing: BackendFactory = Box::new(|| Err(Error::Model("no weights".into())));
    match Engine::with_backend(config(), spec(2), failing) {
        Err(Error::Model(message)) => assert!(message.contains("no weights")),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("an engine without a backend started"),
    }
    let panicking: BackendFactory = Box::new(|| panic!("factory panics on purpose"));
    assert!(Engine::with_backend(config(), spec(2), panicking).is_err());
}

// ---------------------------------------------------------------------------------------------
// Flow table, timeouts, record queue
// ---------------------------------------------------------------------------------------------

#[test]
fn flow_table_is_bounded_and_evicts_the_oldest() {
    let mut config = config();
    config.flows.max_flows = 4;
    let engine = start(config, 2, uniform(Duration::ZERO));
    let mut worker = engine.worker();

    // Even flows fill a context, odd ones are short and get a padded one when they end.
    for i in 0..10u32 {
        let packets = if i % 2 == 0 { 2 } else { 1 };
        feed_flow(&mut worker, &Flow::numbered(i), packets, u64::from(i) * 10 * MS);
        assert!(worker.flows() <= 4, "{} flows after flow {i}", worker.flows());
    }
    assert_eq!(worker.stats().flows_evicted, 6);
    let (_, flows) = finish(&mut worker);

    assert_eq!(flows.len(), 10);
    for i in 0..10u32 {
        let tuple = Flow::numbered(i).tuple();
        let flow = flows.iter().find(|f| f.tuple == tuple).expect("every flow reports");
        let expected = if i < 6 { FlowEnd::Evicted } else { FlowEnd::Flushed };
        assert_eq!(flow.end, expected, "flow {i}");
        assert!(flow.prediction.is_some(), "flow {i} was classified");
    }
    let stats = worker.stats();
    assert_eq!((stats.flows, stats.flows_ended, stats.flows_evicted), (10, 10, 6));
    assert_eq!(stats.short_flows_padded, 5);
    assert_balanced(&stats);
}

#[test]
fn idle_flows_time_out_on_packets_and_on_advance_clock() {
    let mut config = config();
    config.flows.idle_timeout_secs = 1.0;
    let engine = start(config, 2, uniform(Duration::ZERO));
    let mut worker = engine.worker();
    let a = Flow::numbered(1);
    let b = Flow::numbered(2);

    // Flow A at t = 0, flow B at t = 5 s: B's packet ends A.
    feed(&mut worker, &a.up(1), 0, 1);
    feed(&mut worker, &a.up(2), 0, 2);
    feed(&mut worker, &b.up(1), 5 * SECOND, 3);
    worker.flush(false);
    let (contexts, flows) = split(&drain(&mut worker));
    assert_eq!(contexts.len(), 1);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].tuple, a.tuple());
    assert_eq!(flows[0].end, FlowEnd::IdleTimeout);
    assert!(flows[0].prediction.is_some());
    assert_eq!(worker.flows(), 1);

    // Within the timeout nothing happens.
    worker.advance_clock(5 * SECOND + SECOND / 2);
    worker.flush(false);
    assert!(drain(&mut worker).is_empty());
    assert_eq!(worker.flows(), 1);

    // Past it, B ends too (short: padded).
    worker.advance_clock(7 * SECOND);
    worker.flush(false);
    let (_, flows) = split(&drain(&mut worker));
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].tuple, b.tuple());
    assert_eq!(flows[0].end, FlowEnd::IdleTimeout);
    assert_eq!(worker.flows(), 0);
    assert_eq!(worker.stats().flows_ended, 2);
}

#[test]
fn a_flow_stamped_far_in_the_future_does_not_stop_other_flows_expiring() {
    let mut config = config();
    config.flows.idle_timeout_secs = 1.0;
    let engine = start(config, 2, uniform(Duration::ZERO));
    let mut worker = engine.worker();

    // A bogus frame a day ahead opens flow 0; ten normal flows follow, a few seconds apart.
    feed(&mut worker, &Flow::numbered(0).up(1), 86_400 * SECOND, 0);
    for i in 1..=10u32 {
        feed(&mut worker, &Flow::numbered(i).up(1), u64::from(i) * 3 * SECOND, u64::from(i));
    }
    worker.advance_clock(40 * SECOND);
    worker.flush(false);
    let (_, flows) = split(&drain(&mut worker));
    let timed_out = flows.iter().filter(|f| f.end == FlowEnd::IdleTimeout).count();
    assert_eq!(timed_out, 11, "the ten normal flows and the bogus one all time out");
    assert_eq!(worker.flows(), 0);
}

/// Answers with NaN, as a model with non-finite weights does.
struct NanBackend;

impl Backend for NanBackend {
    fn infer(&mut self, _raw: &[u8], batch: usize, probs: &mut Vec<f32>) -> Result<(), Error> {
        probs.resize(batch * CLASSES, f32::NAN);
        Ok(())
    }
}

#[test]
fn non_finite_probabilities_fail_the_batch_instead_of_labelling() {
    let engine = start(config(), 2, factory(NanBackend));
    let mut worker = engine.worker();
    feed_flow(&mut worker, &Flow::numbered(1), 4, 0);
    let (contexts, flows) = finish(&mut worker);
    assert!(contexts.is_empty());
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].prediction, None);
    let stats = worker.stats();
    assert_eq!(stats.contexts_failed, stats.contexts);
    assert!(stats.contexts > 0);
}

#[test]
fn pending_records_are_bounded_and_the_oldest_dropped_but_flush_keeps_all() {
    let mut config = config();
    config.inference.max_pending_records = 3;
    config.flows.short_flows = ShortFlowPolicy::Drop;
    // One flow at a time: each new flow evicts the previous one, which reports at once.
    config.flows.max_flows = 1;
    let engine = start(config, 2, uniform(Duration::ZERO));
    let mut worker = engine.worker();

    // Five one-packet flows, never polled: four evictions, the oldest record dropped.
    for i in 0..5u32 {
        let flow = Flow::numbered(i);
        feed(&mut worker, &flow.up(1), u64::from(i) * MS, u64::from(i));
    }
    assert_eq!(worker.pending_records(), 3);
    assert_eq!(worker.stats().records_overflowed, 1);

    // Flushing cannot be interrupted by a poll, so it drops nothing.
    worker.flush(true);
    assert_eq!(worker.pending_records(), 4);
    let (_, flows) = split(&drain(&mut worker));
    let tags: Vec<u64> = flows.iter().map(|f| f.user_tag).collect();
    assert_eq!(tags, [1, 2, 3, 4]);
    assert_eq!(worker.stats().records_overflowed, 1);
}

// ---------------------------------------------------------------------------------------------
// Configuration against the model
// ---------------------------------------------------------------------------------------------

#[test]
fn preprocess_must_match_the_model() {
    let mut config = config();
    config.preprocess = Some(PreprocessConfig { mask_ports: true, ..PreprocessConfig::default() });
    match Engine::with_backend(config.clone(), spec(2), uniform(Duration::ZERO)) {
        Err(Error::Mismatch(message)) => {
            assert!(message.contains("mask_ports"), "message names the field: {message}")
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a mismatched engine started"),
    }

    config.preprocess = Some(PreprocessConfig::default());
    assert!(Engine::with_backend(config, spec(2), uniform(Duration::ZERO)).is_ok());
}

#[test]
fn invalid_configuration_and_model_are_refused() {
    let mut bad = config();
    bad.inference.ring_capacity = 0;
    assert!(matches!(
        Engine::with_backend(bad, spec(2), uniform(Duration::ZERO)),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Engine::with_backend(config(), spec(0), uniform(Duration::ZERO)),
        Err(Error::Model(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------------

/// An IPv4 frame whose IHL (4) is impossible.
fn bad_header_frame(flow: &Flow) -> Vec<u8> {
    let mut frame = flow.up(1);
    frame[ETHERNET_HEADER_LEN] = 0x44;
    frame
}

#[test]
fn counters_add_up_on_a_mix_of_packets() {
    let (engine, _seen) = recording_engine(config(), 5);
    let mut worker = engine.worker();
    let flow = Flow::numbered(1);
    let client = flow.client;
    let dns = udp4(client, (SERVER, 53), b"query");
    let ntp = udp4((client.0, 123), (SERVER, 123), &[0x23; 48]);
    let netbios = udp4((client.0, 137), (SERVER, 137), &[0x01; 50]);
    let truncated = flow.up(9)[..ETHERNET_HEADER_LEN + 10].to_vec();
    let unsupported = LinkType(147);
    // Captured without its last 8 payload bytes (the snap length): accepted, counted as
    // snapped; `process` gets the wire length.
    let mut snapped = flow.up(4);
    snapped.truncate(snapped.len() - 8);

    let cases: Vec<(Vec<u8>, LinkType, Outcome)> = vec![
        (flow.up(1), LinkType::ETHERNET, Outcome::Accepted),
        (arp_frame(), LinkType::ETHERNET, Outcome::Skipped(Skip::NonIp)),
        (flow.up(2), LinkType::ETHERNET, Outcome::Accepted),
        (truncated, LinkType::ETHERNET, Outcome::Skipped(Skip::Truncated)),
        (bad_header_frame(&flow), LinkType::ETHERNET, Outcome::Skipped(Skip::BadHeader)),
        (fragment_frame(client, flow.server), LinkType::ETHERNET, Outcome::Skipped(Skip::Fragment)),
        (icmp_frame(client.0, SERVER), LinkType::ETHERNET, Outcome::Skipped(Skip::OtherTransport)),
        (flow.up(3), unsupported, Outcome::Skipped(Skip::UnsupportedLink)),
        (dns, LinkType::ETHERNET, Outcome::Filtered(Filter::Dns)),
        (ntp, LinkType::ETHERNET, Outcome::Filtered(Filter::Ntp)),
        (netbios, LinkType::ETHERNET, Outcome::Filtered(Filter::Netbios)),
        (flow.bare_ack(), LinkType::ETHERNET, Outcome::Filtered(Filter::EmptyTcp)),
        (flow.bare_ack(), LinkType::ETHERNET, Outcome::Filtered(Filter::EmptyTcp)),
        (flow.up(3), LinkType::ETHERNET, Outcome::Accepted),
    ];
    for (i, (frame, link, expected)) in cases.iter().enumerate() {
        let outcome = worker.process(*link, i as u64 * MS, frame, frame.len() as u32, 0);
        assert_eq!(outcome, *expected, "case {i}");
    }
    let wire_len = snapped.len() as u32 + 8;
    let outcome = worker.process(LinkType::ETHERNET, 99 * MS, &snapped, wire_len, 0);
    assert_eq!(outcome, Outcome::Accepted);
    let (contexts, flows) = finish(&mut worker);

    let stats = worker.stats();
    assert_eq!(stats.packets, cases.len() as u64 + 1);
    assert_eq!(stats.accepted, 4);
    assert_eq!(stats.snapped, 1);
    for skip in Skip::ALL {
        assert_eq!(stats.skipped(skip), 1, "{}", skip.name());
    }
    assert_eq!(stats.filtered(Filter::Dns), 1);
    assert_eq!(stats.filtered(Filter::Ntp), 1);
    assert_eq!(stats.filtered(Filter::Netbios), 1);
    assert_eq!(stats.filtered(Filter::EmptyTcp), 2);
    assert_balanced(&stats);
    // The four accepted packets form one short, padded flow.
    assert_eq!((stats.flows, stats.short_flows_padded, stats.contexts_classified), (1, 1, 1));
    assert_eq!(contexts.len(), 1);
    assert_eq!(contexts[0].packets, 4);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].packets, 4);
}

// ---------------------------------------------------------------------------------------------
// Threads and shutdown
// ---------------------------------------------------------------------------------------------

/// Everything but `batches`, which a worker reports engine-wide.
fn without_batches(mut stats: Stats) -> Stats {
    stats.batches = 0;
    stats
}

#[test]
fn several_workers_on_several_threads() {
    const WORKERS: u32 = 4;
    const FLOWS: u32 = 200;
    let mut config = config();
    config.inference.on_full = FullRingPolicy::Wait;
    config.inference.ring_capacity = 64;
    let (engine, seen) = recording_engine(config, 2);

    let per_worker: Vec<Stats> = thread::scope(|scope| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let engine = &engine;
                scope.spawn(move || {
                    let mut worker = engine.worker();
                    for i in 0..FLOWS {
                        let flow = Flow::numbered(w * 1000 + i);
                        feed_flow(&mut worker, &flow, 2, u64::from(i) * MS);
                    }
                    let (contexts, flows) = finish(&mut worker);
                    assert_eq!(contexts.len(), FLOWS as usize);
                    assert_eq!(flows.len(), FLOWS as usize);
                    assert!(flows.iter().all(|f| f.prediction.is_some()));
                    worker.stats()
                    // The worker is dropped here, on its own thread.
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker thread")).collect()
    });

    let mut sum = Stats::default();
    for stats in &per_worker {
        assert_balanced(stats);
        sum.add(stats);
    }
    let total = engine.stats();
    assert_eq!(without_batches(total.clone()), without_batches(sum));
    assert_eq!(total.contexts_classified, u64::from(WORKERS * FLOWS));
    assert_eq!(total.contexts_dropped, 0);
    assert!(total.batches >= 1);
    assert_eq!(seen.lock().unwrap().len(), (WORKERS * FLOWS) as usize);
}

#[test]
fn engine_stats_never_go_back_while_workers_retire() {
    // A race: try for a while; on two cores it shows within a second nearly every time.
    const TRYING: Duration = Duration::from_millis(1500);
    let (engine, _seen) = recording_engine(config(), 2);
    let done = std::sync::atomic::AtomicBool::new(false);
    let arp = arp_frame();
    let started = Instant::now();
    let (backwards, retired) = thread::scope(|scope| {
        // Workers that publish (flush) and retire (drop), one after another, until the reader
        // sees a total go down.
        let writer = scope.spawn(|| {
            let mut retired = 0u32;
            while started.elapsed() < TRYING && !done.load(Ordering::SeqCst) {
                // One packet that never reaches the model keeps each round short.
                let mut worker = engine.worker();
                feed(&mut worker, &arp, 0, 0);
                worker.flush(false);
                drop(worker);
                retired += 1;
            }
            done.store(true, Ordering::SeqCst);
            retired
        });

        // Totals only ever grow: each worker is counted in `published` or in `retired`.
        let mut most = 0;
        let mut backwards = 0;
        while !done.load(Ordering::SeqCst) {
            let packets = engine.stats().packets;
            if packets < most {
                backwards += 1;
                done.store(true, Ordering::SeqCst);
            }
            most = most.max(packets);
        }
        (backwards, writer.join().expect("writer thread"))
    });
    assert_eq!(backwards, 0, "engine.stats().packets went down after {retired} workers");
    assert_eq!(engine.stats().packets, u64::from(retired));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Runs `body` on its own thread and fails the test if it does not finish in time, instead of
/// hanging the test run.
fn within<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(body());
    });
    match result.recv_timeout(limit) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("did not finish within {limit:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the test thread panicked"),
    }
}

#[test]
fn handles_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send::<Worker>();
    assert_send_sync::<Engine>();

    // A worker made on one thread, used and dropped on another.
    let (engine, _seen) = recording_engine(config(), 2);
    let mut worker = engine.worker();
    let (contexts, _) = thread::spawn(move || {
        feed_flow(&mut worker, &Flow::numbered(5), 2, 0);
        finish(&mut worker)
    })
    .join()
    .expect("worker thread");
    assert_eq!(contexts.len(), 1);
    assert_eq!(engine.stats().contexts_classified, 1);
}

#[test]
fn workers_outlive_their_engine() {
    let (contexts, flows) = within(PATIENCE, || {
        let engine = start(config(), 2, uniform(Duration::from_millis(2)));
        let mut worker = engine.worker();
        // A context is in flight when the engine goes.
        feed_flow(&mut worker, &Flow::numbered(0), 2, 0);
        drop(engine);
        feed_flow(&mut worker, &Flow::numbered(1), 2, 10 * MS);
        let records = finish(&mut worker);
        drop(worker);
        records
    });
    assert_eq!(contexts.len(), 2);
    assert_eq!(flows.len(), 2);
    assert!(flows.iter().all(|f| f.prediction.is_some()));
}

#[test]
fn engine_drops_cleanly_with_and_without_work() {
    within(PATIENCE, || {
        // Never used.
        drop(start(config(), 2, uniform(Duration::ZERO)));
        // A worker dropped with contexts in flight and records never polled.
        let engine = start(config(), 2, uniform(Duration::from_millis(5)));
        let mut worker = engine.worker();
        for i in 0..4 {
            feed_flow(&mut worker, &Flow::numbered(i), 2, 0);
        }
        drop(worker);
        let stats = engine.stats();
        assert_eq!(stats.contexts_classified, 4, "the worker waited for its jobs");
        drop(engine);
    });
}

#[test]
fn the_model_leaves_capture_threads_a_core_unless_told_otherwise() {
    let mut model = EngineConfig::default().model;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(model.cpu_threads, 0);
    assert_eq!(model.effective_cpu_threads(), cpus.saturating_sub(1).max(1));
    model.cpu_threads = 7;
    assert_eq!(model.effective_cpu_threads(), 7);
}
