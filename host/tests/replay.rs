//! End to end: `combo replay` through the .so, the C example, and the same capture through the
//! Rust API, on the project's own demo capture and on the real-capture corpus in ../shared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use combo_plugin::config::FullRingPolicy;
use combo_plugin::engine::Record;
use combo_plugin::parse::LinkType;
use combo_plugin::{Engine, EngineConfig};
use serde_json::Value;

#[path = "../../tests/support/scratch.rs"]
mod scratch;
use scratch::Scratch;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared data folder: `$COMBO_SHARED`, else `../shared` beside the checkout. Tests that
/// need it say they were skipped when it is missing (`cargo test -- --nocapture` shows it).
fn shared() -> PathBuf {
    std::env::var_os("COMBO_SHARED").map_or_else(|| repo().join("../shared"), PathBuf::from)
}

fn combo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_combo"));
    command.current_dir(repo());
    command
}

fn demo() -> PathBuf {
    repo().join("tests/data/demo.pcap")
}

fn default_model() -> PathBuf {
    repo().join("models/default.card.toml")
}

/// Runs `combo replay` and returns its exit code and JSON lines.
fn replay(args: &[&str]) -> (i32, Vec<Value>, String) {
    let output = combo().arg("replay").arg("--no-progress").args(args).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines = stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    (output.status.code().unwrap_or(-1), lines, String::from_utf8_lossy(&output.stderr).into())
}

type FlowKey = (String, u64, String, u64, String);

fn flow_key(line: &Value) -> FlowKey {
    (
        line["src_ip"].as_str().unwrap().to_string(),
        line["src_port"].as_u64().unwrap(),
        line["dest_ip"].as_str().unwrap().to_string(),
        line["dest_port"].as_u64().unwrap(),
        line["proto"].as_str().unwrap().to_string(),
    )
}

fn flows_of(lines: &[Value]) -> BTreeMap<FlowKey, (String, f64)> {
    lines
        .iter()
        .filter(|line| line["event_type"] == "flow")
        .map(|line| {
            let label = line["label"].as_str().unwrap_or("(none)").to_string();
            (flow_key(line), (label, line["confidence"].as_f64().unwrap_or(0.0)))
        })
        .collect()
}

/// Frames of a classic little-endian pcap file (the demo capture's format).
fn read_classic_pcap(path: &Path) -> (u32, Vec<(u64, Vec<u8>, u32)>) {
    let bytes = std::fs::read(path).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(u32_at(0), 0xa1b2c3d4, "the demo capture is microsecond little-endian pcap");
    let link_type = u32_at(20);
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let ts = u32_at(at) as u64 * 1_000_000_000 + u32_at(at + 4) as u64 * 1_000;
        let caplen = u32_at(at + 8) as usize;
        let orig_len = u32_at(at + 12);
        frames.push((ts, bytes[at + 16..at + 16 + caplen].to_vec(), orig_len));
        at += 16 + caplen;
    }
    (link_type, frames)
}

#[test]
fn demo_capture_replays_with_labels_and_consistent_counters() {
    let (code, lines, stderr) = replay(&[demo().to_str().unwrap(), "--workers", "2"]);
    assert_eq!(code, 0, "{stderr}");
    let flows = flows_of(&lines);
    assert_eq!(flows.len(), 19, "the demo capture has 19 flows: {stderr}");
    assert!(flows.values().all(|(label, _)| label != "(none)"), "every flow has a label");
    let stats: Vec<&Value> = lines.iter().filter(|l| l["event_type"] == "stats").collect();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0]["consistent"], true);
    assert_eq!(stats[0]["stats"]["contexts_dropped"], 0, "policy wait drops nothing");
    assert!(stderr.contains("summary"));
}

#[test]
fn labels_through_the_so_equal_labels_through_the_rust_api() {
    let (code, lines, stderr) = replay(&[demo().to_str().unwrap(), "--workers", "2"]);
    assert_eq!(code, 0, "{stderr}");
    let through_so = flows_of(&lines);

    // The same capture, the same model, the engine called directly.
    let mut config = EngineConfig::default();
    config.model.path = Some(default_model());
    config.inference.on_full = FullRingPolicy::Wait;
    let engine = Engine::new(config).unwrap();
    let labels = engine.labels().to_vec();
    let mut worker = engine.worker();
    let (link_type, frames) = read_classic_pcap(&demo());
    for (i, (ts, frame, orig_len)) in frames.iter().enumerate() {
        worker.process(LinkType(link_type), *ts, frame, *orig_len, i as u64);
    }
    worker.flush(true);
    let mut records = Vec::new();
    worker.poll(&mut records, usize::MAX);
    let mut through_rust = BTreeMap::new();
    for record in records {
        let Record::Flow(flow) = record else { continue };
        let t = flow.tuple;
        let proto = if t.protocol == 6 { "TCP" } else { "UDP" };
        let key = (
            t.src.to_string(),
            t.src_port as u64,
            t.dst.to_string(),
            t.dst_port as u64,
            proto.to_string(),
        );
        let prediction = flow.prediction.unwrap();
        let label = labels[prediction.label as usize].clone();
        through_rust.insert(key, (label, prediction.confidence as f64));
    }

    assert_eq!(through_so.len(), through_rust.len());
    for (key, (label, confidence)) in &through_rust {
        let (so_label, so_confidence) = &through_so[key];
        // Batches differ between the two runs; the numbers may differ in the last bits.
        assert!(
            (confidence - so_confidence).abs() < 1e-4,
            "{key:?}: {confidence} vs {so_confidence}"
        );
        assert_eq!(label, so_label, "{key:?}");
    }
}

#[test]
fn c_example_builds_and_classifies_the_demo_capture() {
    let out_dir = Scratch::new("combo-c-example");
    let library_dir = Path::new(env!("CARGO_BIN_EXE_combo")).parent().unwrap().to_path_buf();
    assert!(
        library_dir.join("libcombo_packet.so").exists(),
        "libcombo_packet.so must be built beside the combo binary"
    );
    let binary = out_dir.join("classify");
    let status = Command::new("cc")
        .current_dir(repo())
        .args(["-std=c11", "-D_DEFAULT_SOURCE", "-Wall", "-Wextra", "-Werror", "-Iinclude"])
        .arg("examples/c/classify.c")
        .arg(format!("-L{}", library_dir.display()))
        .args(["-lcombo_packet", "-lpcap"])
        .arg(format!("-Wl,-rpath,{}", library_dir.display()))
        .arg("-o")
        .arg(&binary)
        .status()
        .expect("a C compiler (cc) and libpcap-dev are needed; scripts/setup.sh installs them");
    assert!(status.success(), "the C example must compile without warnings");

    let config = out_dir.join("engine.toml");
    std::fs::write(
        &config,
        format!("[model]\npath = {:?}\n[inference]\non_full = \"wait\"\n", default_model()),
    )
    .unwrap();
    let output = Command::new(&binary).arg(&config).arg(demo()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let c_flows: BTreeMap<String, String> = stdout
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (format!("{} {} {}", fields[0], fields[2], fields[3]), fields[4].to_string())
        })
        .collect();
    assert_eq!(c_flows.len(), 19, "{stdout}");

    // The same labels as the Rust host's replay.
    let (_, lines, _) = replay(&[demo().to_str().unwrap(), "--workers", "1"]);
    for (key, (label, _)) in flows_of(&lines) {
        let (src, sport, dst, dport, proto) = key;
        let bracket = |ip: &str| ip.to_string();
        let c_key = format!("{}:{sport} {}:{dport} {proto}", bracket(&src), bracket(&dst));
        assert_eq!(c_flows.get(&c_key), Some(&label), "{c_key}");
    }
}

#[test]
fn unreadable_files_are_named_with_their_offset_and_the_rest_go_on() {
    let dir = Scratch::new("combo-bad-files");
    let garbage = dir.join("garbage.pcap");
    std::fs::write(&garbage, b"this is not a capture file at all").unwrap();
    let truncated = dir.join("truncated.pcap");
    let demo_bytes = std::fs::read(demo()).unwrap();
    std::fs::write(&truncated, &demo_bytes[..demo_bytes.len() / 2]).unwrap();

    let (code, lines, stderr) =
        replay(&[garbage.to_str().unwrap(), truncated.to_str().unwrap(), demo().to_str().unwrap()]);
    assert_eq!(code, 2, "some files were unreadable: {stderr}");
    assert!(stderr.contains("garbage.pcap"), "{stderr}");
    assert!(stderr.contains("truncated.pcap") && stderr.contains("byte"), "{stderr}");
    let stats: Vec<&Value> = lines.iter().filter(|l| l["event_type"] == "stats").collect();
    assert_eq!(stats.len(), 3, "every file, readable or not, gets its counters");
    assert!(stats.iter().all(|s| s["consistent"] == true));
    // The truncated file's first half was still classified.
    assert!(stats[1]["stats"]["packets"].as_u64().unwrap() > 100);
    assert!(stats[2]["stats"]["contexts_classified"].as_u64().unwrap() > 0);
}

/// Every capture of the real-traffic corpus goes through the .so with two workers: no crash,
/// and each file's counters add up.
#[test]
fn ndpi_corpus_replays_without_a_crash_and_counters_add_up() {
    let corpus = shared().join("data/ndpi-corpus/pcap");
    if !corpus.is_dir() {
        eprintln!("skipped: {} is not here", corpus.display());
        return;
    }
    let files = std::fs::read_dir(&corpus)
        .unwrap()
        .filter(|entry| {
            let path = entry.as_ref().unwrap().path();
            matches!(path.extension().and_then(|e| e.to_str()), Some("pcap" | "pcapng" | "cap"))
        })
        .count();
    // One context per flow keeps this test's model time short; the pipeline is the same.
    let dir = Scratch::new("combo-corpus");
    let config = dir.join("engine.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = {:?}\n[flows]\ncontexts_per_flow = 1\n[inference]\nmax_batch = 128\n",
            default_model()
        ),
    )
    .unwrap();
    let summary = dir.join("summary.json");
    let (code, lines, stderr) = replay(&[
        corpus.to_str().unwrap(),
        "--workers",
        "2",
        "--config",
        config.to_str().unwrap(),
        "--summary-json",
        summary.to_str().unwrap(),
    ]);
    assert!(code == 0 || code == 2, "exit code {code}: {stderr}");
    let stats: Vec<&Value> = lines.iter().filter(|l| l["event_type"] == "stats").collect();
    assert_eq!(stats.len(), files, "one stats line per file");
    let inconsistent: Vec<&Value> =
        stats.iter().filter(|s| s["consistent"] != true).map(|s| &s["pcap"]).collect();
    assert!(inconsistent.is_empty(), "counters do not add up for {inconsistent:?}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let totals = &summary["totals"];
    assert!(totals["packets"].as_u64().unwrap() > 90_000, "{totals}");
    assert_eq!(totals["contexts_dropped"], 0);
    assert_eq!(totals["contexts_failed"], 0);
    eprintln!(
        "corpus: {} files ({} unreadable), {} packets, {} contexts classified",
        files,
        summary["files_failed"].as_array().map_or(0, |a| a.len()),
        totals["packets"],
        totals["contexts_classified"]
    );
}
