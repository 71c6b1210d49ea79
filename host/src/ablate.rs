//! `combo ablate`: the paper's Tables 3-5 on any labeled data. N in {1, 3, 5} crossed with
//! attention {none, SA, SE, SA+SE}, same split and seed, plus the default configuration under
//! the capture split and with each shortcut field masked.
//!
//! Every run trains with the same budget and is evaluated on its dataset's test split. Runs
//! whose results already exist in the output folder are not repeated, so an interrupted
//! ablation continues where it stopped.

use anyhow::{Context, Result};
use clap::Args;
use combo_plugin::model::{Attention, Classifier, select_device};
use serde::{Deserialize, Serialize};

use crate::dataset::{self, Dataset, DatasetArgs, SplitMode, TEST};
use crate::eval::evaluate;
use crate::train::{TrainArgs, train};

#[derive(Args)]
pub struct AblateArgs {
    /// The labeled data, as for `combo dataset`; `--out` names the ablation's folder.
    #[command(flatten)]
    data: DatasetArgs,
    #[arg(long = "n", value_delimiter = ',', default_value = "1,3,5")]
    packet_counts: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "none,sa,se,sa_se")]
    attentions: Vec<Attention>,
    /// Epochs per run.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Training contexts per epoch (a random subset; 0: all).
    #[arg(long, default_value_t = 1500)]
    epoch_contexts: usize,
    #[arg(long, default_value_t = 2)]
    patience: usize,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Leave out the capture-split and shortcut-mask runs.
    #[arg(long)]
    no_extras: bool,
    /// Train nothing: write the table from the runs finished so far (the others are listed
    /// as not run).
    #[arg(long)]
    report_only: bool,
}

/// One line of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    experiment: String,
    packets: usize,
    attention: String,
    split: String,
    masks: String,
    accuracy: f64,
    macro_f1: f64,
    top1_error: f64,
    top5_error: f64,
    flow_accuracy: f64,
    parameters: u64,
    test_contexts: usize,
    epochs: usize,
    train_seconds: f64,
}

/// A run: which data and which network.
struct Run {
    experiment: String,
    packets: usize,
    attention: Attention,
    split: SplitMode,
    masks: Vec<&'static str>,
}

impl Run {
    fn slug(&self) -> String {
        let masks = if self.masks.is_empty() {
            String::new()
        } else {
            format!("-mask-{}", self.masks.join("-"))
        };
        format!("n{}-{}-{:?}{masks}", self.packets, self.attention, self.split).to_lowercase()
    }
}

pub fn run(args: AblateArgs) -> Result<()> {
    let out = args.data.out_path().to_path_buf();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let device = select_device(&args.device)?;

    // The grid, then the default configuration under harder conditions.
    let mut runs = Vec::new();
    for &packets in &args.packet_counts {
        for &attention in &args.attentions {
            runs.push(Run {
                experiment: "grid".into(),
                packets,
                attention,
                split: SplitMode::Flow,
                masks: vec![],
            });
        }
    }
    if !args.no_extras {
        let default = |experiment: &str, split, masks| Run {
            experiment: experiment.into(),
            packets: 5,
            attention: Attention::SaSe,
            split,
            masks,
        };
        runs.push(default("capture split", SplitMode::Capture, vec![]));
        for mask in ["ip_id", "ttl", "checksums", "ports"] {
            runs.push(default("shortcut mask", SplitMode::Flow, vec![mask]));
        }
        runs.push(default(
            "shortcut mask",
            SplitMode::Flow,
            vec!["ip_id", "ttl", "checksums", "ports"],
        ));
    }

    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        let slug = run.slug();
        let result_path = out.join(format!("{slug}.result.json"));
        if let Ok(text) = std::fs::read_to_string(&result_path) {
            if let Ok(row) = serde_json::from_str::<Row>(&text) {
                log::info!("[{}/{}] {slug}: done before, reusing", index + 1, runs.len());
                rows.push(row);
                continue;
            }
        }
        if args.report_only {
            missing.push(slug);
            continue;
        }
        log::info!("[{}/{}] {slug}", index + 1, runs.len());

        // Data for this N, split and masks (cheap to rebuild; cached by name).
        let dataset_path = out.join(
            format!(
                "data-n{}-{:?}{}.safetensors",
                run.packets,
                run.split,
                if run.masks.is_empty() {
                    String::new()
                } else {
                    format!("-mask-{}", run.masks.join("-"))
                }
            )
            .to_lowercase(),
        );
        if !dataset_path.exists() {
            let mut options = args.data.options();
            options.packets_per_context = run.packets;
            options.split = run.split;
            for mask in &run.masks {
                match *mask {
                    "ip_id" => options.preprocess.mask_ip_id = true,
                    "ttl" => options.preprocess.mask_ttl = true,
                    "checksums" => options.preprocess.mask_checksums = true,
                    _ => options.preprocess.mask_ports = true,
                }
            }
            dataset::build(&args.data.source()?, &options)?.save(&dataset_path)?;
        }

        // Train with the common budget, then evaluate the best epoch on the test split.
        let model_path = out.join(format!("{slug}.card.toml"));
        let outcome = train(&TrainArgs {
            dataset: dataset_path.clone(),
            out: model_path.clone(),
            attention: run.attention,
            epochs: args.epochs,
            batch: 32,
            learning_rate: 1e-3,
            lr_patience: 1,
            patience: args.patience,
            epoch_contexts: args.epoch_contexts,
            seed: args.data.seed(),
            device: args.device.clone(),
            threads: 0,
            resume: true,
            half: false,
            record_command: Some(format!("combo ablate (run {slug})")),
            quiet: true,
        })?;
        let dataset = Dataset::load(&dataset_path)?;
        let classifier = Classifier::load(&model_path, device)?;
        let evaluation = evaluate(&classifier, &dataset, TEST, 64)?;
        let row = Row {
            experiment: run.experiment.clone(),
            packets: run.packets,
            attention: run.attention.to_string(),
            split: format!("{:?}", run.split).to_lowercase(),
            masks: if run.masks.is_empty() { "-".into() } else { run.masks.join("+") },
            accuracy: evaluation.context.accuracy,
            macro_f1: evaluation.context.macro_f1,
            top1_error: evaluation.context.top1_error,
            top5_error: evaluation.context.top5_error,
            flow_accuracy: evaluation.flow.accuracy,
            parameters: classifier.parameter_count(),
            test_contexts: evaluation.context.samples as usize,
            epochs: outcome.epochs_run,
            train_seconds: outcome.seconds,
        };
        std::fs::write(&result_path, serde_json::to_string_pretty(&row)?)?;
        log::info!("{slug}: accuracy {:.3}, macro-F1 {:.3}", row.accuracy, row.macro_f1);
        rows.push(row);
    }

    let mut table = markdown(&rows, &args);
    if !missing.is_empty() {
        table += &format!("\nNot run (budget): {}\n", missing.join(", "));
    }
    std::fs::write(out.join("ablation.md"), &table)?;
    std::fs::write(out.join("ablation.json"), serde_json::to_string_pretty(&rows)?)?;
    println!("{table}");
    Ok(())
}

fn markdown(rows: &[Row], args: &AblateArgs) -> String {
    let mut text = format!(
        "Budget per run: at most {} epochs of {} training contexts (batch 32, Adam 1e-3, \
         halved on a plateau, early stop after {} epochs), device {}; metrics on the test \
         split (context level, flow level by averaged context probabilities).\n\n",
        args.epochs,
        if args.epoch_contexts == 0 { "all".to_string() } else { args.epoch_contexts.to_string() },
        args.patience,
        args.device
    );
    text += "| experiment | N | attention | split | masked | accuracy | macro-F1 | top-1 err | \
             top-5 err | flow acc | params | epochs | train s |\n";
    text += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for r in rows {
        text += &format!(
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} M \
             | {} | {:.0} |\n",
            r.experiment,
            r.packets,
            r.attention,
            r.split,
            r.masks,
            r.accuracy,
            r.macro_f1,
            r.top1_error,
            r.top5_error,
            r.flow_accuracy,
            r.parameters as f64 / 1e6,
            r.epochs,
            r.train_seconds
        );
    }
    text
}
