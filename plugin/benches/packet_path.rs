//! The per-packet path, in isolation (`cargo bench -p combo-plugin`): parsing, the
//! pre-processing filter and encoding, and a whole `Worker::process` call with inference off.

use std::hint::black_box;

use combo_plugin::config::EngineConfig;
use combo_plugin::engine::{BackendFactory, Engine, ModelSpec, NullBackend};
use combo_plugin::parse::{self, LinkType};
use combo_plugin::preprocess;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Ethernet, IPv4, TCP with `payload` bytes; the source port varies with `flow`.
fn tcp_frame(flow: u16, payload: usize) -> Vec<u8> {
    let mut frame = vec![0u8; 14 + 20 + 20 + payload];
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    frame[14] = 0x45;
    frame[16..18].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
    frame[22] = 64;
    frame[23] = 6;
    frame[26..30].copy_from_slice(&[10, 0, 0, 1]);
    frame[30..34].copy_from_slice(&[10, 0, 0, 2]);
    frame[34..36].copy_from_slice(&(20_000 + flow).to_be_bytes());
    frame[36..38].copy_from_slice(&443u16.to_be_bytes());
    frame[46] = 5 << 4;
    frame[47] = 0x18;
    frame
}

fn packet_path(c: &mut Criterion) {
    let preprocess = combo_plugin::config::PreprocessConfig::default();
    let frame = tcp_frame(1, 600);
    let mut group = c.benchmark_group("packet");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse", |b| {
        b.iter(|| parse::parse(LinkType::ETHERNET, black_box(&frame), frame.len() as u32))
    });
    let mut out = vec![0u8; preprocess.packet_bytes];
    group.bench_function("filter_and_encode", |b| {
        let packet = parse::parse(LinkType::ETHERNET, &frame, frame.len() as u32).unwrap();
        b.iter(|| {
            let kept = preprocess::filter(black_box(&packet), &preprocess).is_none();
            preprocess::encode(&packet, &preprocess, &mut out);
            kept
        })
    });

    // Whole calls: 1024 flows of 8 packets each, round-robin, inference off.
    let frames: Vec<Vec<u8>> = (0..1024).map(|flow| tcp_frame(flow, 600)).collect();
    let spec = ModelSpec {
        labels: vec!["a".into(), "b".into()],
        packets_per_context: 5,
        preprocess: preprocess.clone(),
    };
    let factory: BackendFactory = Box::new(|| Ok(Box::new(NullBackend { classes: 2 }) as _));
    let engine = Engine::with_backend(EngineConfig::default(), spec, factory).unwrap();
    let mut worker = engine.worker();
    let mut records = Vec::new();
    let mut i = 0usize;
    group.bench_function("worker_process_inference_off", |b| {
        b.iter(|| {
            let frame = &frames[i % frames.len()];
            i += 1;
            let outcome =
                worker.process(LinkType::ETHERNET, i as u64, frame, frame.len() as u32, 0);
            if i % 4096 == 0 {
                records.clear();
                worker.poll(&mut records, usize::MAX);
            }
            outcome
        })
    });
    group.finish();
}

criterion_group!(benches, packet_path);
criterion_main!(benches);
