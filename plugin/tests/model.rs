//! The network's size and shapes, prediction, card and weights files, and device names.

use std::collections::BTreeMap;

use combo_plugin::Error;
use combo_plugin::config::PreprocessConfig;
use combo_plugin::model::*;
use tch::{Device, Kind, Tensor, nn};

#[path = "../../tests/support/scratch.rs"]
mod scratch;
use scratch::Scratch;

/// The paper's service task.
const SERVICE_LABELS: [&str; 12] = [
    "Chat",
    "Email",
    "File",
    "P2P",
    "Streaming",
    "VoIP",
    "VPN-Chat",
    "VPN-Email",
    "VPN-File",
    "VPN-P2P",
    "VPN-Streaming",
    "VPN-VoIP",
];

/// The paper's totals for N = 1, 3, 5 (without attention, which adds about 0.01 M).
const PAPER_PARAMETERS: [(usize, f64); 3] = [(1, 3.55e6), (3, 3.87e6), (5, 4.19e6)];

fn service_card(packets: usize, attention: Attention) -> ModelCard {
    let labels = SERVICE_LABELS.iter().map(|l| l.to_string()).collect();
    ModelCard::new("service-test", labels, packets, attention, PreprocessConfig::default())
}

/// A fresh folder for one test's files (the models are several megabytes each).
fn scratch_dir(test: &str) -> Scratch {
    Scratch::new(&format!("combo-model-{test}"))
}

/// Deterministic pseudo-random bytes that look a little like packets.
fn sample_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

fn context_bytes(card: &ModelCard, batch: usize, seed: u32) -> Vec<u8> {
    sample_bytes(batch * card.packets_per_context * card.preprocess.packet_bytes, seed)
}

fn predict(classifier: &Classifier, raw: &[u8], batch: usize) -> Vec<f32> {
    let mut probs = Vec::new();
    classifier.predict(raw, batch, &mut probs).unwrap();
    probs
}

fn sorted_variables(classifier: &Classifier) -> Vec<(String, Tensor)> {
    let mut variables: Vec<_> = classifier.var_store().variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}

#[test]
fn parameter_counts_are_near_the_papers() {
    println!("| N | paper | none | sa | se | sa_se |");
    for (packets, paper) in PAPER_PARAMETERS {
        let mut row = format!("| {packets} | {:.2} M |", paper / 1e6);
        for attention in Attention::ALL {
            let var_store = nn::VarStore::new(Device::Cpu);
            let _net = ComboNet::new(&var_store.root(), packets, 1500, attention, 12);
            let count: i64 = var_store.variables().values().map(|t| t.numel() as i64).sum();

            // Convolution II grows by 200 * 200 * 3 weights per packet; SA adds 15 + 99,
            // SE a 200 -> 12 -> 200 MLP.
            let spatial = if attention.spatial() { 15 + 99 } else { 0 };
            let channel = if attention.channel() { 200 * 12 + 12 + 12 * 200 + 200 } else { 0 };
            let expected = 3_442_712 + 120_000 * (packets as i64 - 1) + spatial + channel;
            assert_eq!(count, expected, "N={packets} {attention}");

            let off = (count as f64 - paper).abs() / paper;
            assert!(off < 0.25, "N={packets} {attention}: {count} is {off:.3} off the paper");
            row += &format!(" {count} ({:+.1} %) |", (count as f64 / paper - 1.0) * 100.0);
        }
        println!("{row}");
    }
}

#[test]
fn forward_gives_one_row_of_logits_per_context() {
    for packets in SUPPORTED_PACKETS_PER_CONTEXT {
        for attention in Attention::ALL {
            let var_store = nn::VarStore::new(Device::Cpu);
            let net = ComboNet::new(&var_store.root(), packets, 1500, attention, 17);
            let xs = Tensor::rand([2, packets as i64, 1500], (Kind::Float, Device::Cpu)) * 2 - 1;
            assert_eq!(net.forward_t(&xs, false).size(), [2, 17], "N={packets} {attention}");
            let logits = nn::ModuleT::forward_t(&net, &xs, true);
            assert_eq!(logits.size(), [2, 17], "train N={packets} {attention}");
        }
    }
}

#[test]
fn widths_follow_the_packet_length() {
    assert_eq!(feature_widths(1500).unwrap(), (499, 166));
    assert_eq!(feature_widths(MIN_PACKET_BYTES).unwrap(), (3, 1));
    assert!(feature_widths(MIN_PACKET_BYTES - 1).is_err());

    // A shorter input (the paper's future work) builds and runs.
    let var_store = nn::VarStore::new(Device::Cpu);
    let net = ComboNet::new(&var_store.root(), 3, 100, Attention::SaSe, 12);
    let xs = Tensor::zeros([4, 3, 100], (Kind::Float, Device::Cpu));
    assert_eq!(net.forward_t(&xs, false).size(), [4, 12]);

    let var_store = nn::VarStore::new(Device::Cpu);
    let too_short = ComboNet::try_new(&var_store.root(), 3, 10, Attention::None, 12);
    assert!(matches!(too_short, Err(Error::Model(_))));
    let no_classes = ComboNet::try_new(&var_store.root(), 3, 1500, Attention::None, 0);
    assert!(matches!(no_classes, Err(Error::Model(_))));
}

#[test]
fn forward_refuses_a_wrong_input_shape() {
    let var_store = nn::VarStore::new(Device::Cpu);
    let net = ComboNet::new(&var_store.root(), 3, 1500, Attention::None, 12);
    let xs = Tensor::zeros([2, 5, 1500], (Kind::Float, Device::Cpu));
    assert!(matches!(net.f_forward_t(&xs, false), Err(Error::Mismatch(_))));
}

#[test]
fn scaling_maps_bytes_onto_minus_one_to_one() {
    let xs = scale_bytes(&[0, 255, 51, 204], 2, 1, 2, Device::Cpu).unwrap();
    assert_eq!(xs.size(), [2, 1, 2]);
    assert_eq!(xs.kind(), Kind::Float);
    let values = Vec::<f32>::try_from(xs.flatten(0, -1)).unwrap();
    assert_eq!(values, [-1.0, 1.0, -0.6, 0.6]);
    assert!(matches!(scale_bytes(&[0; 5], 2, 1, 2, Device::Cpu), Err(Error::Mismatch(_))));
}

#[test]
fn predict_gives_deterministic_probabilities() {
    let card = service_card(3, Attention::SaSe);
    let classifier = Classifier::new_random(card.clone(), Device::Cpu, 7).unwrap();
    assert!(classifier.card().random_weights);
    assert_eq!(classifier.card().parameters, classifier.parameter_count());
    assert_eq!(classifier.parameter_count(), 3_687_838);

    let batch = 4;
    let raw = context_bytes(&card, batch, 1);
    let probs = predict(&classifier, &raw, batch);
    assert_eq!(probs.len(), batch * 12);
    for row in probs.chunks(12) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "row sums to {sum}");
        assert!(row.iter().all(|p| (0.0..=1.0).contains(p)));
    }
    assert_eq!(predict(&classifier, &raw, batch), probs, "same input, same output");

    // The seed alone fixes the weights; mixed precision is for CUDA and changes nothing here.
    let mut twin = Classifier::new_random(card.clone(), Device::Cpu, 7).unwrap();
    assert_eq!(predict(&twin, &raw, batch), probs);
    twin.set_mixed_precision(true);
    assert_eq!(predict(&twin, &raw, batch), probs);
    let other = Classifier::new_random(card, Device::Cpu, 8).unwrap();
    assert_ne!(predict(&other, &raw, batch), probs);

    // A context is classified the same alone as in a batch.
    let first = predict(&classifier, &raw[..raw.len() / batch], 1);
    for (alone, batched) in first.iter().zip(&probs[..12]) {
        assert!((alone - batched).abs() < 1e-5);
    }
}

#[test]
fn predict_reports_bad_input_without_panicking() {
    let card = service_card(1, Attention::None);
    let classifier = Classifier::new_random(card, Device::Cpu, 1).unwrap();
    let mut probs = vec![0.5; 3];
    let result = classifier.predict(&[0; 1499], 1, &mut probs);
    assert!(matches!(result, Err(Error::Mismatch(_))), "{result:?}");
    assert!(probs.is_empty());

    classifier.predict(&[], 0, &mut probs).unwrap();
    assert!(probs.is_empty());
}

#[test]
fn f32_weights_round_trip_bit_exact() {
    let dir = scratch_dir("f32");
    let card_path = dir.join("service.card.toml");
    let card = service_card(5, Attention::SaSe);
    let original = Classifier::new_random(card.clone(), Device::Cpu, 3).unwrap();
    original.save(&card_path, Precision::F32).unwrap();
    assert!(dir.join("service.safetensors").is_file());

    // Files hold every weight in its layer's own shape: the hidden layer's (a convolution
    // over the whole context map in memory) as the linear layer's [units, F * W2].
    let stored: BTreeMap<String, Vec<i64>> =
        Tensor::read_safetensors(dir.join("service.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(name, tensor)| (name, tensor.size()))
            .collect();
    assert_eq!(stored["hidden.weight"], [100, 200 * 166]);
    assert_eq!(stored["conv2.weight"], [200, 200, 5, 3]);

    let loaded = Classifier::load(&card_path, Device::Cpu).unwrap();
    assert_eq!(loaded.card().weights, "service.safetensors");
    assert_eq!(loaded.card().precision, "f32");
    assert!(loaded.card().random_weights);
    assert_eq!(loaded.parameter_count(), original.parameter_count());

    let (before, after) = (sorted_variables(&original), sorted_variables(&loaded));
    assert_eq!(before.len(), after.len());
    for ((name, a), (loaded_name, b)) in before.iter().zip(&after) {
        assert_eq!(name, loaded_name);
        assert_eq!(b.kind(), Kind::Float);
        assert!(a.equal(b), "tensor {name} changed");
    }

    let raw = context_bytes(&card, 3, 2);
    assert_eq!(predict(&loaded, &raw, 3), predict(&original, &raw, 3));
}

#[test]
fn f16_refuses_weights_beyond_its_range() {
    let dir = scratch_dir("f16-range");
    let card_path = dir.join("big.card.toml");
    let classifier = Classifier::new_random(service_card(1, Attention::None), Device::Cpu, 1);
    let classifier = classifier.unwrap();
    tch::no_grad(|| {
        let mut bias = classifier.var_store().variables()["output.bias"].shallow_clone();
        let _ = bias.fill_(1e5);
    });
    let message = classifier.save(&card_path, Precision::F16).unwrap_err().to_string();
    assert!(message.contains("output.bias"), "{message}");
    assert!(!card_path.exists(), "no card for a model that was not saved");
    classifier.save(&card_path, Precision::F32).unwrap();
}

#[test]
fn classifier_moves_to_the_inference_thread() {
    fn must_be_send<T: Send>() {}
    must_be_send::<Classifier>();
}

#[test]
fn f16_weights_round_trip_close() {
    let dir = scratch_dir("f16");
    let card_path = dir.join("app.card.toml");
    let labels = (0..17).map(|i| format!("app{i}")).collect();
    let card = ModelCard::new("app", labels, 3, Attention::Se, PreprocessConfig::default());
    let original = Classifier::new_random(card.clone(), Device::Cpu, 11).unwrap();
    original.save(&card_path, Precision::F16).unwrap();

    // About half the bytes of f32.
    let bytes = std::fs::metadata(dir.join("app.safetensors")).unwrap().len();
    let f32_bytes = original.parameter_count() * 4;
    assert!(bytes < f32_bytes * 6 / 10, "{bytes} bytes for {f32_bytes} in f32");

    let loaded = Classifier::load(&card_path, Device::Cpu).unwrap();
    assert_eq!(loaded.card().precision, "f16");
    for (_, tensor) in sorted_variables(&loaded) {
        assert_eq!(tensor.kind(), Kind::Float, "weights run as f32");
    }

    let raw = context_bytes(&card, 8, 5);
    let (exact, rounded) = (predict(&original, &raw, 8), predict(&loaded, &raw, 8));
    let worst = exact.iter().zip(&rounded).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    println!("f16 storage moves probabilities by at most {worst:e}");
    assert!(worst < 1e-2);
}

#[test]
fn card_round_trips_through_toml() {
    let dir = scratch_dir("card");
    let path = dir.join("m.card.toml");
    let mut card = service_card(5, Attention::SaSe);
    card.weights = "m.safetensors".into();
    card.precision = "f16".into();
    card.parameters = 3_927_838;
    card.preprocess.mask_ports = true;
    card.training.data = "ISCX VPN-nonVPN 2016, 5000 per class".into();
    card.training.split = "8:1:1 by flow".into();
    card.training.commands = vec!["combo train --packets 5".into()];
    card.training.metrics.insert("accuracy".into(), 0.9704);
    card.save(&path).unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("attention = \"sa_se\""), "{text}");
    assert_eq!(ModelCard::load(&path).unwrap(), card);

    // The training summary may be left out.
    let short = text.split("[training]").next().unwrap();
    std::fs::write(&path, short).unwrap();
    assert_eq!(ModelCard::load(&path).unwrap().training, TrainingSummary::default());
}

#[test]
fn a_card_for_a_new_model_needs_no_file_fields() {
    let mut card = service_card(1, Attention::Se);
    card.precision = String::new();
    let classifier = Classifier::new_random(card, Device::Cpu, 1).unwrap();
    let dir = scratch_dir("fresh");
    classifier.save(&dir.join("fresh.card.toml"), Precision::F16).unwrap();
    let loaded = ModelCard::load(&dir.join("fresh.card.toml")).unwrap();
    assert_eq!((loaded.weights.as_str(), loaded.precision.as_str()), ("fresh.safetensors", "f16"));
}

#[test]
fn attention_names() {
    for (attention, name) in Attention::ALL.into_iter().zip(["none", "sa", "se", "sa_se"]) {
        assert_eq!(attention.to_string(), name);
        assert_eq!(name.parse::<Attention>().unwrap(), attention);
    }
    assert!(matches!("cbam".parse::<Attention>(), Err(Error::Config(_))));
    // Command-line parsers (clap) need a boxable error.
    let error: Box<dyn std::error::Error + Send + Sync> =
        "cbam".parse::<Attention>().unwrap_err().into();
    assert!(error.to_string().contains("sa_se"));
    assert_eq!("f16".parse::<Precision>().unwrap(), Precision::F16);
    assert!("f64".parse::<Precision>().is_err());
}

#[test]
fn load_refuses_weights_of_another_shape() {
    let dir = scratch_dir("shape");
    let card_path = dir.join("three.card.toml");
    let classifier = Classifier::new_random(service_card(3, Attention::None), Device::Cpu, 1);
    classifier.unwrap().save(&card_path, Precision::F32).unwrap();

    // The same weights under a card that says N = 5.
    let mut card = ModelCard::load(&card_path).unwrap();
    card.packets_per_context = 5;
    let five_path = dir.join("five.card.toml");
    card.save(&five_path).unwrap();
    let message = Classifier::load(&five_path, Device::Cpu).unwrap_err().to_string();
    assert!(message.contains("conv2.weight") && message.contains("shape"), "{message}");
    assert!(message.contains("three.safetensors"), "{message}");

    // ... under a card that adds attention (missing tensors).
    card.packets_per_context = 3;
    card.attention = Attention::Sa;
    card.save(&five_path).unwrap();
    let message = Classifier::load(&five_path, Device::Cpu).unwrap_err().to_string();
    assert!(message.contains("missing"), "{message}");

    // ... under a card that says f16.
    card.attention = Attention::None;
    card.precision = "f16".into();
    card.save(&five_path).unwrap();
    let message = Classifier::load(&five_path, Device::Cpu).unwrap_err().to_string();
    assert!(message.contains("f16"), "{message}");
}

#[test]
fn load_refuses_tensors_the_network_lacks() {
    let dir = scratch_dir("extra");
    let card_path = dir.join("sa.card.toml");
    let classifier = Classifier::new_random(service_card(1, Attention::Sa), Device::Cpu, 1);
    classifier.unwrap().save(&card_path, Precision::F32).unwrap();
    let mut card = ModelCard::load(&card_path).unwrap();
    card.attention = Attention::None;
    card.save(&card_path).unwrap();
    let message = Classifier::load(&card_path, Device::Cpu).unwrap_err().to_string();
    assert!(message.contains("spatial1.weight"), "{message}");
}

#[test]
fn load_refuses_a_missing_weights_file() {
    let dir = scratch_dir("missing");
    let card_path = dir.join("gone.card.toml");
    let mut card = service_card(3, Attention::Se);
    card.weights = "gone.safetensors".into();
    card.save(&card_path).unwrap();
    let error = Classifier::load(&card_path, Device::Cpu).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::Model(_)));
    assert!(message.contains("gone.safetensors") && message.contains("no such file"), "{message}");
}

#[test]
fn cards_are_checked() {
    let dir = scratch_dir("checks");
    let path = dir.join("bad.card.toml");
    let mut card = service_card(3, Attention::None);
    card.weights = "bad.safetensors".into();
    card.save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();

    let refused = |edited: String, needle: &str| {
        std::fs::write(&path, edited).unwrap();
        let message = ModelCard::load(&path).unwrap_err().to_string();
        assert!(message.contains(needle), "{needle}: {message}");
    };
    refused(text.replace("packets_per_context = 3", "packets_per_context = 4"), "4");
    refused(text.replace("format = 1", "format = 2"), "format 2");
    refused(text.replace("attention = \"none\"", "attention = \"cbam\""), "cbam");
    refused(text.replace("random_weights", "random_wieghts"), "random_wieghts");
    refused(text.replace("\"bad.safetensors\"", "\"../bad.safetensors\""), "relative");
    refused(text.replace("precision = \"f32\"", "precision = \"f64\""), "f64");

    // N = 4 is refused when building too.
    let error = Classifier::new_random(service_card(4, Attention::None), Device::Cpu, 1);
    assert!(matches!(error, Err(Error::Model(_))));
}

#[test]
fn weights_file_names_follow_the_card() {
    let name = |card: &str| weights_file_name(std::path::Path::new(card)).unwrap();
    assert_eq!(name("/m/service.card.toml"), "service.safetensors");
    assert_eq!(name("service.toml"), "service.safetensors");
    assert_eq!(name("service"), "service.safetensors");
}

#[test]
fn device_names() {
    let has_cuda = tch::Cuda::is_available();
    let auto = select_device("auto").unwrap();
    assert_eq!(auto, if has_cuda { Device::Cuda(0) } else { Device::Cpu });
    assert_eq!(select_device("cpu").unwrap(), Device::Cpu);
    assert_eq!(select_device(" CPU ").unwrap(), Device::Cpu);
    if !has_cuda {
        let message = select_device("cuda").unwrap_err().to_string();
        assert!(message.contains("no CUDA device"), "{message}");
        assert!(select_device("cuda:1").is_err());
    }
    for bad in ["gpu7", "cuda:", "cuda:x", "cuda:-1", ""] {
        assert!(matches!(select_device(bad), Err(Error::Config(_))), "{bad}");
    }
}

/// How long one batch of 64 contexts of 5 packets takes (`cargo test -- --ignored`).
#[test]
#[ignore]
fn time_a_batch_of_64() {
    let card = service_card(5, Attention::SaSe);
    let classifier = Classifier::new_random(card.clone(), Device::Cpu, 1).unwrap();
    let raw = context_bytes(&card, 64, 9);
    let mut probs = Vec::new();
    classifier.predict(&raw, 64, &mut probs).unwrap();
    let rounds = 5;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        classifier.predict(&raw, 64, &mut probs).unwrap();
    }
    let each = start.elapsed() / rounds;
    println!("batch of 64 x N=5 (sa_se) on CPU, {} threads: {each:?}", tch::get_num_threads());
}
