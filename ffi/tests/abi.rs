//! Every C entry point: NULL and out-of-range arguments give an error code and a message,
//! never a crash; a full engine/worker life cycle works through the raw functions.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};

use combo_packet::*;
use combo_plugin::config::PreprocessConfig;
use combo_plugin::model::{Attention, Classifier, ModelCard, Precision, TrainingSummary};

#[path = "../../tests/support/scratch.rs"]
mod scratch;
use scratch::Scratch;

fn last_error() -> String {
    let mut buffer = [0 as std::ffi::c_char; 512];
    // SAFETY: the buffer has 512 bytes.
    unsafe { combo_last_error(buffer.as_mut_ptr(), buffer.len()) };
    // SAFETY: combo_last_error NUL-terminates within the buffer.
    unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_string_lossy().into_owned()
}

/// A random-weight model with three labels in a fresh folder; returns the folder and the card.
fn random_model(name: &str) -> (Scratch, PathBuf) {
    let dir = Scratch::new(&format!("combo-abi-{name}"));
    let card = ModelCard {
        format: 1,
        name: "abi-test".into(),
        labels: vec!["alpha".into(), "beta".into(), "gamma".into()],
        packets_per_context: 3,
        attention: Attention::SaSe,
        preprocess: PreprocessConfig::default(),
        weights: String::new(),
        precision: String::new(),
        random_weights: true,
        parameters: 0,
        training: TrainingSummary::default(),
    };
    let path = dir.join("abi.card.toml");
    Classifier::new_random(card, tch::Device::Cpu, 7).unwrap().save(&path, Precision::F32).unwrap();
    (dir, path)
}

fn engine_for(card: &Path) -> *mut ComboEngine {
    let toml = format!(
        "[model]\npath = {:?}\ndevice = \"cpu\"\n[inference]\nmax_wait_us = 100\n",
        card.display().to_string()
    );
    let toml = CString::new(toml).unwrap();
    let mut engine = null_mut();
    // SAFETY: valid C string and out pointer.
    let status = unsafe { combo_engine_new_from_toml(toml.as_ptr(), &mut engine) };
    assert_eq!(status, ComboStatus::Ok, "{}", last_error());
    engine
}

/// An Ethernet/IPv4/TCP frame with `payload_len` payload bytes.
fn tcp_frame(src_port: u16, payload_len: usize) -> Vec<u8> {
    let mut frame = vec![0u8; 14 + 20 + 20 + payload_len];
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut frame[14..];
    ip[0] = 0x45;
    let total = (40 + payload_len) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let tcp = &mut ip[20..];
    tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH ACK
    for (i, byte) in tcp[20..].iter_mut().enumerate() {
        *byte = (i * 7) as u8;
    }
    frame
}

#[test]
fn abi_version_and_version_string() {
    assert_eq!(combo_abi_version() >> 16, COMBO_ABI_VERSION_MAJOR);
    assert_eq!(combo_abi_version() & 0xffff, COMBO_ABI_VERSION_MINOR);
    // SAFETY: a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(combo_version_string()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn null_arguments_are_refused_with_a_message() {
    let mut engine = null_mut();
    let mut worker = null_mut();
    let mut stats = ComboStats::default();
    let mut count = 0usize;
    // SAFETY: every call below passes NULL where the contract allows the library to refuse it.
    unsafe {
        assert_eq!(combo_engine_new_from_file(null(), &mut engine), ComboStatus::NullArgument);
        assert!(last_error().contains("NULL"));
        assert_eq!(combo_engine_new_from_toml(null(), &mut engine), ComboStatus::NullArgument);
        assert_eq!(combo_engine_new_from_toml(c"".as_ptr(), null_mut()), ComboStatus::NullArgument);
        assert_eq!(combo_engine_stats(null(), &mut stats), ComboStatus::NullArgument);
        assert_eq!(combo_engine_label_count(null()), 0);
        assert!(combo_engine_label_name(null(), 0).is_null());
        assert_eq!(combo_engine_packets_per_context(null()), 0);
        assert_eq!(combo_worker_new(null(), &mut worker), ComboStatus::NullArgument);
        let data = [0u8; 4];
        assert_eq!(
            combo_worker_process(null_mut(), 1, 0, data.as_ptr(), 4, 4, 0, null_mut()),
            ComboStatus::NullArgument
        );
        assert_eq!(
            combo_worker_poll(null_mut(), null_mut(), 0, &mut count),
            ComboStatus::NullArgument
        );
        assert_eq!(combo_worker_flush(null_mut(), 0), ComboStatus::NullArgument);
        assert_eq!(combo_worker_advance_clock(null_mut(), 0), ComboStatus::NullArgument);
        assert_eq!(combo_worker_stats(null(), &mut stats), ComboStatus::NullArgument);
        combo_worker_free(null_mut());
        combo_engine_free(null_mut());
        // Asking for the message length only.
        assert!(combo_last_error(null_mut(), 0) > 0);
    }
    assert!(engine.is_null() && worker.is_null());
}

#[test]
fn bad_configurations_are_errors_not_crashes() {
    let cases: [(&CStr, ComboStatus); 8] = [
        (c"this is not toml = = =", ComboStatus::Config),
        (c"[inference]\nmax_wait_us = 18446744073709551615\n", ComboStatus::Config),
        (c"[inference]\nmax_batch = 4096\n", ComboStatus::Config),
        (c"[model]\ncpu_threads = 100000\n", ComboStatus::Config),
        (c"[flows]\nidle_timeout_secs = inf\n", ComboStatus::Config),
        (c"[model]\npath = \"/nonexistent/model.card.toml\"\n", ComboStatus::Model),
        (c"[inference]\nmax_batch = 0\n", ComboStatus::Config),
        (c"[flows]\nunknown_option = 3\n", ComboStatus::Config),
    ];
    for (text, expected) in cases {
        let mut engine = null_mut();
        // SAFETY: valid C string and out pointer.
        let status = unsafe { combo_engine_new_from_toml(text.as_ptr(), &mut engine) };
        assert_eq!(status, expected, "{text:?}: {}", last_error());
        assert!(engine.is_null());
        assert!(!last_error().is_empty());
    }
    let mut engine = null_mut();
    // SAFETY: valid C string and out pointer.
    let status = unsafe { combo_engine_new_from_file(c"/nonexistent.toml".as_ptr(), &mut engine) };
    assert_eq!(status, ComboStatus::Config);
    assert!(last_error().contains("/nonexistent.toml"));
}

#[test]
fn preprocessing_mismatch_is_refused() {
    let (_dir, card) = random_model("mismatch");
    let toml = format!(
        "[model]\npath = {:?}\n[preprocess]\npad_udp_header = false\n",
        card.display().to_string()
    );
    let toml = CString::new(toml).unwrap();
    let mut engine = null_mut();
    // SAFETY: valid C string and out pointer.
    let status = unsafe { combo_engine_new_from_toml(toml.as_ptr(), &mut engine) };
    assert_eq!(status, ComboStatus::Mismatch);
    assert!(last_error().contains("pad_udp_header"), "{}", last_error());
}

#[test]
fn a_flow_goes_in_and_labels_come_out() {
    let (_dir, card) = random_model("lifecycle");
    let engine = engine_for(&card);
    // SAFETY: every pointer below is a live handle or a valid buffer of the stated length.
    unsafe {
        assert_eq!(combo_engine_label_count(engine), 3);
        let name = CStr::from_ptr(combo_engine_label_name(engine, 1));
        assert_eq!(name.to_str().unwrap(), "beta");
        assert!(combo_engine_label_name(engine, 3).is_null());
        assert_eq!(combo_engine_packets_per_context(engine), 3);

        let mut worker = null_mut();
        assert_eq!(combo_worker_new(engine, &mut worker), ComboStatus::Ok);

        // Out-of-range arguments.
        let frame = tcp_frame(40000, 100);
        assert_eq!(
            combo_worker_process(worker, 1, 0, null(), 10, 10, 0, null_mut()),
            ComboStatus::NullArgument
        );
        assert_eq!(combo_worker_flush(worker, 0x80), ComboStatus::InvalidArgument);
        // An empty frame is a counted skip, not an error.
        let mut outcome = ComboOutcome::Accepted;
        assert_eq!(
            combo_worker_process(worker, 1, 0, null(), 0, 0, 0, &mut outcome),
            ComboStatus::Ok
        );
        assert_eq!(outcome, ComboOutcome::SkippedTruncated);

        // Seven data packets: two contexts of three (N = 3), then the flow's verdict.
        for i in 0..7u64 {
            let status = combo_worker_process(
                worker,
                1,
                1_700_000_000_000_000_000 + i * 1_000_000,
                frame.as_ptr(),
                frame.len() as u32,
                frame.len() as u32,
                100 + i,
                &mut outcome,
            );
            assert_eq!(status, ComboStatus::Ok);
            assert_eq!(outcome, ComboOutcome::Accepted);
        }
        assert_eq!(combo_worker_flush(worker, COMBO_FLUSH_END_FLOWS), ComboStatus::Ok);
        let mut records: Vec<ComboRecord> = Vec::with_capacity(16);
        let mut count = 0;
        assert_eq!(
            combo_worker_poll(worker, records.as_mut_ptr(), 16, &mut count),
            ComboStatus::Ok
        );
        records.set_len(count);

        let contexts: Vec<_> =
            records.iter().filter(|r| r.kind == ComboRecordKind::Context).collect();
        let flows: Vec<_> = records.iter().filter(|r| r.kind == ComboRecordKind::Flow).collect();
        assert_eq!(contexts.len(), 2);
        assert_eq!(flows.len(), 1);
        assert_eq!(contexts[0].user_tag, 102, "the tag of the packet completing the context");
        let flow = flows[0];
        assert_eq!(flow.flow_end, ComboFlowEnd::Flushed);
        assert_eq!(flow.packets, 7);
        assert_eq!(flow.contexts, 2);
        assert!((0..3).contains(&flow.label_id));
        assert!(!flow.label.is_null());
        assert!(flow.top_count >= 1 && flow.top_ids[0] == flow.label_id as u32);
        assert_eq!(flow.tuple.ip_version, 4);
        assert_eq!(&flow.tuple.src_addr[..4], &[10, 0, 0, 1]);
        assert_eq!(
            (flow.tuple.src_port, flow.tuple.dst_port, flow.tuple.protocol),
            (40000, 443, 6)
        );

        let mut stats = ComboStats::default();
        assert_eq!(combo_worker_stats(worker, &mut stats), ComboStatus::Ok);
        assert_eq!(stats.packets, 8);
        assert_eq!(stats.accepted, 7);
        assert_eq!(stats.skipped_truncated, 1);
        assert_eq!(stats.contexts, 2);
        assert_eq!(stats.contexts_classified, 2);

        // Label names stay valid after the engine handle is freed while the worker lives.
        combo_engine_free(engine);
        assert_eq!(CStr::from_ptr(flow.label).to_bytes().is_empty(), false);
        combo_worker_free(worker);
    }
}
