//! `combo eval`: a model card against one split of a dataset, at context and at flow level.
//!
//! Every context of the split goes through [`Classifier::predict`] in batches built by
//! [`Dataset::fill_batch`], so the model sees the bytes the plugin would give it. A flow's
//! verdict is the class of the mean of its contexts' probability vectors, as the plugin
//! reports a flow when it ends; only the flow's contexts in the evaluated split count (with a
//! split by flow or by capture that is all of its kept contexts).
//!
//! Output, in one folder: `metrics.json`, `confusion.csv`, `confusion.png`,
//! `flow_confusion.png`, `predictions.csv`, `flow_predictions.csv` and `report.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use combo_plugin::model::{Classifier, ModelCard, TrainingSummary, select_device};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::dataset::{Dataset, DatasetInfo, SPLIT_NAMES, SplitMode, TEST, TRAIN, VALIDATION};
use crate::metrics::{Confusion, Metrics, predicted_class};
use crate::plot::confusion_png;

/// Which split to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    Train,
    Validation,
    Test,
}

impl SplitArg {
    /// The split's index in [`Dataset::context_split`].
    pub fn index(self) -> u8 {
        match self {
            Self::Train => TRAIN,
            Self::Validation => VALIDATION,
            Self::Test => TEST,
        }
    }
}

/// `combo eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// The model card (`*.card.toml`).
    #[arg(long)]
    model: PathBuf,
    /// Dataset made by `combo dataset` with the model's labels, N and pre-processing.
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Output folder; default `<model stem>-eval/` beside the card.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Contexts per call to the model.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// One classified context.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContextPrediction {
    /// Index in the dataset.
    pub context: usize,
    /// Index into [`Dataset::flows`].
    pub flow: usize,
    pub truth: u32,
    pub predicted: u32,
    /// Probability of the predicted class.
    pub confidence: f32,
}

/// One flow's verdict: the mean of its contexts' probabilities.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowPrediction {
    pub flow: usize,
    /// Contexts of the flow in the evaluated split.
    pub contexts: usize,
    pub truth: u32,
    pub predicted: u32,
    pub confidence: f32,
}

/// Everything measured on one split.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub split: u8,
    pub context: Metrics,
    pub flow: Metrics,
    pub context_confusion: Confusion,
    pub flow_confusion: Confusion,
    /// Contexts through batch assembly and inference per second of wall time (the first,
    /// warm-up batch included).
    pub contexts_per_second: f64,
    pub seconds: f64,
    pub batch: usize,
    /// In split order.
    pub predictions: Vec<ContextPrediction>,
    /// In flow index order.
    pub flows: Vec<FlowPrediction>,
}

/// Refuses a dataset the model was not made for: other labels (or their order), N or
/// pre-processing would make every number meaningless.
pub fn check_compatible(card: &ModelCard, info: &DatasetInfo) -> Result<()> {
    if card.labels != info.labels {
        let same_set = card.labels.len() == info.labels.len()
            && card.labels.iter().all(|l| info.labels.contains(l));
        let why = if same_set { "the same labels in another order" } else { "other labels" };
        bail!(
            "the model and the dataset have {why}:\n  model:   {}\n  dataset: {}",
            card.labels.join(", "),
            info.labels.join(", ")
        );
    }
    if card.packets_per_context != info.packets_per_context {
        bail!(
            "the model takes N={} packets per context, the dataset has N={}",
            card.packets_per_context,
            info.packets_per_context
        );
    }
    if card.preprocess != info.preprocess {
        // Name the fields that differ: "pre-processing differs" alone sends people diffing.
        let model = serde_json::to_value(&card.preprocess)?;
        let data = serde_json::to_value(&info.preprocess)?;
        let mut differences = Vec::new();
        if let (Some(model), Some(data)) = (model.as_object(), data.as_object()) {
            for (key, value) in model {
                let other = data.get(key).cloned().unwrap_or_default();
                if *value != other {
                    differences.push(format!("{key}: model {value}, dataset {other}"));
                }
            }
        }
        bail!(
            "the model and the dataset were pre-processed differently: {}",
            differences.join("; ")
        );
    }
    Ok(())
}

/// Classifies every context of `split` in batches of `batch` and measures context- and
/// flow-level metrics.
pub fn evaluate(
    classifier: &Classifier,
    dataset: &Dataset,
    split: u8,
    batch: usize,
) -> Result<Evaluation> {
    evaluate_with_progress(classifier, dataset, split, batch, None)
}

fn evaluate_with_progress(
    classifier: &Classifier,
    dataset: &Dataset,
    split: u8,
    batch: usize,
    progress: Option<&ProgressBar>,
) -> Result<Evaluation> {
    check_compatible(classifier.card(), &dataset.info)?;
    if batch == 0 {
        bail!("the batch must hold at least one context");
    }
    let split_name = SPLIT_NAMES.get(split as usize).copied().unwrap_or("unknown");
    let indices = dataset.split(split);
    if indices.is_empty() {
        bail!("the {split_name} split of the dataset holds no contexts");
    }
    let classes = classifier.card().classes();

    // Predict, batch after batch, as the engine's inference thread would.
    let mut all_probs: Vec<f32> = Vec::with_capacity(indices.len() * classes);
    let (mut raw, mut probs) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for chunk in indices.chunks(batch) {
        raw.clear();
        dataset.fill_batch(chunk, &mut raw);
        classifier
            .predict(&raw, chunk.len(), &mut probs)
            .with_context(|| format!("the model failed on a batch of {}", chunk.len()))?;
        if probs.len() != chunk.len() * classes {
            bail!("the model returned {} probabilities for {} contexts", probs.len(), chunk.len());
        }
        all_probs.extend_from_slice(&probs);
        if let Some(bar) = progress {
            bar.inc(chunk.len() as u64);
        }
    }
    let seconds = started.elapsed().as_secs_f64();

    // Context level.
    let truth: Vec<u32> = indices.iter().map(|&i| dataset.context_label[i]).collect();
    let context = Metrics::from_predictions(classes, &truth, &all_probs)?;
    let context_confusion = Confusion::from_predictions(classes, &truth, &all_probs)?;
    let predictions = indices
        .iter()
        .zip(all_probs.chunks_exact(classes))
        .map(|(&i, row)| {
            let predicted = predicted_class(row);
            ContextPrediction {
                context: i,
                flow: dataset.context_flow[i] as usize,
                truth: dataset.context_label[i],
                predicted: predicted as u32,
                confidence: row.get(predicted).copied().unwrap_or(0.0),
            }
        })
        .collect();

    // Flow level: mean probabilities per flow, the flow's own label as truth.
    let context_flows: Vec<u32> = indices.iter().map(|&i| dataset.context_flow[i]).collect();
    let verdicts = flow_means(&context_flows, &all_probs, classes);
    let mut flow_truth = Vec::with_capacity(verdicts.len());
    let mut flow_probs = Vec::with_capacity(verdicts.len() * classes);
    let mut flows = Vec::with_capacity(verdicts.len());
    for (flow, contexts, mean) in verdicts {
        let Some(entry) = dataset.flows.get(flow as usize) else {
            bail!("context names flow {flow}, which the dataset does not have");
        };
        let predicted = predicted_class(&mean);
        flows.push(FlowPrediction {
            flow: flow as usize,
            contexts,
            truth: entry.label,
            predicted: predicted as u32,
            confidence: mean.get(predicted).copied().unwrap_or(0.0),
        });
        flow_truth.push(entry.label);
        flow_probs.extend_from_slice(&mean);
    }
    let flow = Metrics::from_predictions(classes, &flow_truth, &flow_probs)?;
    let flow_confusion = Confusion::from_predictions(classes, &flow_truth, &flow_probs)?;

    Ok(Evaluation {
        split,
        context,
        flow,
        context_confusion,
        flow_confusion,
        contexts_per_second: indices.len() as f64 / seconds.max(1e-9),
        seconds,
        batch,
        predictions,
        flows,
    })
}

/// Per flow, in flow order: (flow, contexts, mean probability vector). Sums in f32 and
/// divides by the count, as the plugin does when it reports a flow.
pub fn flow_means(
    context_flows: &[u32],
    probs: &[f32],
    classes: usize,
) -> Vec<(u32, usize, Vec<f32>)> {
    let mut sums: BTreeMap<u32, (usize, Vec<f32>)> = BTreeMap::new();
    for (&flow, row) in context_flows.iter().zip(probs.chunks_exact(classes.max(1))) {
        let (count, sum) = sums.entry(flow).or_insert_with(|| (0, vec![0.0; classes]));
        *count += 1;
        for (s, p) in sum.iter_mut().zip(row) {
            *s += p;
        }
    }
    sums.into_iter()
        .map(|(flow, (count, sum))| {
            let mean = sum.into_iter().map(|s| s / count as f32).collect();
            (flow, count, mean)
        })
        .collect()
}

/// The model as the report describes it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub path: String,
    pub name: String,
    pub attention: String,
    pub packets_per_context: usize,
    pub packet_bytes: usize,
    pub classes: usize,
    pub parameters: u64,
    pub precision: String,
    pub random_weights: bool,
    pub device: String,
    pub training: TrainingSummary,
}

impl ModelSummary {
    pub fn of(classifier: &Classifier, path: &Path) -> Self {
        let card = classifier.card();
        Self {
            path: path.display().to_string(),
            name: card.name.clone(),
            attention: card.attention.to_string(),
            packets_per_context: card.packets_per_context,
            packet_bytes: card.preprocess.packet_bytes,
            classes: card.classes(),
            parameters: classifier.parameter_count(),
            precision: card.precision.clone(),
            random_weights: card.random_weights,
            device: format!("{:?}", classifier.device()),
            training: card.training.clone(),
        }
    }
}

/// The dataset and the evaluated split as the report describes them.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetSummary {
    pub path: String,
    pub source: String,
    pub labels: Vec<String>,
    pub packets_per_context: usize,
    pub stride: usize,
    pub per_class_cap: usize,
    pub split_mode: SplitMode,
    pub seed: u64,
    /// Header fields zeroed as shortcut masks.
    pub masks: Vec<String>,
    pub contexts: usize,
    pub flows: usize,
    /// The evaluated split.
    pub split: String,
    pub split_contexts: usize,
    pub split_flows: usize,
    /// Contexts of each class in the split.
    pub split_class_contexts: Vec<usize>,
}

impl DatasetSummary {
    pub fn of(dataset: &Dataset, path: &Path, split: u8) -> Self {
        let info = &dataset.info;
        let indices = dataset.split(split);
        let mut split_flows: Vec<u32> = indices.iter().map(|&i| dataset.context_flow[i]).collect();
        split_flows.sort_unstable();
        split_flows.dedup();
        let p = &info.preprocess;
        let masks = [
            ("ip_id", p.mask_ip_id),
            ("ttl", p.mask_ttl),
            ("checksums", p.mask_checksums),
            ("ports", p.mask_ports),
        ];
        Self {
            path: path.display().to_string(),
            source: info.source.clone(),
            labels: info.labels.clone(),
            packets_per_context: info.packets_per_context,
            stride: info.stride,
            per_class_cap: info.per_class_cap,
            split_mode: info.split,
            seed: info.seed,
            masks: masks.iter().filter(|m| m.1).map(|m| m.0.to_string()).collect(),
            contexts: dataset.len(),
            flows: dataset.flows.len(),
            split: SPLIT_NAMES.get(split as usize).copied().unwrap_or("unknown").to_string(),
            split_contexts: indices.len(),
            split_flows: split_flows.len(),
            split_class_contexts: dataset.class_counts(split),
        }
    }
}

/// What was evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct Subject {
    pub model: ModelSummary,
    pub dataset: DatasetSummary,
}

/// The layout of `metrics.json`.
#[derive(Serialize)]
struct MetricsFile<'a> {
    split: &'a str,
    model: &'a ModelSummary,
    dataset: &'a DatasetSummary,
    batch: usize,
    seconds: f64,
    contexts_per_second: f64,
    context: &'a Metrics,
    flow: &'a Metrics,
    /// Rows = true class, columns = predicted, in label order.
    context_confusion: Vec<Vec<u64>>,
    flow_confusion: Vec<Vec<u64>>,
}

/// Writes the seven output files into `out` (created if missing). `flow_descriptions` are
/// the dataset's flow descriptions, by flow index, for `predictions.csv`.
pub fn write_report(
    out: &Path,
    subject: &Subject,
    evaluation: &Evaluation,
    flow_descriptions: &[String],
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let labels = &subject.dataset.labels;
    let write = |name: &str, text: &str| -> Result<()> {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };

    // metrics.json.
    let file = MetricsFile {
        split: &subject.dataset.split,
        model: &subject.model,
        dataset: &subject.dataset,
        batch: evaluation.batch,
        seconds: evaluation.seconds,
        contexts_per_second: evaluation.contexts_per_second,
        context: &evaluation.context,
        flow: &evaluation.flow,
        context_confusion: evaluation.context_confusion.rows(),
        flow_confusion: evaluation.flow_confusion.rows(),
    };
    write("metrics.json", &(serde_json::to_string_pretty(&file)? + "\n"))?;

    // confusion.csv: a header row of labels, then one row per true class.
    write("confusion.csv", &confusion_csv(labels, &evaluation.context_confusion))?;

    // predictions.csv.
    let label = |class: u32| labels.get(class as usize).map_or("?", String::as_str);
    let mut csv = String::from("context,flow,flow_description,truth,predicted,confidence\n");
    for p in &evaluation.predictions {
        let description = flow_descriptions.get(p.flow).map_or("", String::as_str);
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{:.6}",
            p.context,
            p.flow,
            csv_field(description),
            csv_field(label(p.truth)),
            csv_field(label(p.predicted)),
            p.confidence
        );
    }
    write("predictions.csv", &csv)?;

    // flow_predictions.csv: the verdict of every flow of the split.
    let mut csv = String::from("flow,flow_description,contexts,truth,predicted,confidence\n");
    for f in &evaluation.flows {
        let description = flow_descriptions.get(f.flow).map_or("", String::as_str);
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{:.6}",
            f.flow,
            csv_field(description),
            f.contexts,
            csv_field(label(f.truth)),
            csv_field(label(f.predicted)),
            f.confidence
        );
    }
    write("flow_predictions.csv", &csv)?;

    // Figures.
    let split = SPLIT_NAMES.get(evaluation.split as usize).copied().unwrap_or("unknown");
    let title = format!("{}: contexts of the {split} split", subject.model.name);
    confusion_png(&out.join("confusion.png"), labels, &evaluation.context_confusion, &title)?;
    let title = format!("{}: flows of the {split} split", subject.model.name);
    confusion_png(&out.join("flow_confusion.png"), labels, &evaluation.flow_confusion, &title)?;

    write("report.md", &report_markdown(subject, evaluation))
}

/// A CSV cell, quoted when it holds a separator, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn confusion_csv(labels: &[String], confusion: &Confusion) -> String {
    let mut csv = String::from("truth\\predicted");
    for label in labels {
        csv.push(',');
        csv.push_str(&csv_field(label));
    }
    csv.push('\n');
    for (t, label) in labels.iter().enumerate() {
        csv.push_str(&csv_field(label));
        for p in 0..labels.len() {
            let _ = write!(csv, ",{}", confusion.get(t, p));
        }
        csv.push('\n');
    }
    csv
}

/// A rate as a percentage with two decimals, as the paper prints them.
fn pct(rate: f64) -> String {
    format!("{:.2}", 100.0 * rate)
}

/// `report.md`: what was evaluated, the headline numbers at both levels, a per-class table,
/// the most confused pairs and how the model was trained.
pub fn report_markdown(subject: &Subject, evaluation: &Evaluation) -> String {
    let (model, data) = (&subject.model, &subject.dataset);
    let (c, f) = (&evaluation.context, &evaluation.flow);
    let mut md = String::new();

    // What was evaluated.
    let _ = writeln!(md, "# Evaluation of `{}` on the {} split\n", model.name, data.split);
    let _ = writeln!(
        md,
        "- Model: `{}`: N = {}, attention {}, {} classes, {} parameters, {} weights{}.",
        model.path,
        model.packets_per_context,
        model.attention,
        model.classes,
        model.parameters,
        model.precision,
        if model.random_weights { ", **random weights**" } else { "" }
    );
    let masks = if data.masks.is_empty() { "none".to_string() } else { data.masks.join(", ") };
    let _ = writeln!(
        md,
        "- Dataset: `{}` ({}): {} contexts of {} flows, N = {}, stride {}, per-class cap {}, \
         split by {} (seed {}), masks: {masks}.",
        data.path,
        data.source,
        data.contexts,
        data.flows,
        data.packets_per_context,
        data.stride,
        data.per_class_cap,
        split_mode_name(data.split_mode),
        data.seed
    );
    let _ = writeln!(
        md,
        "- Evaluated: the {} split, {} contexts of {} flows.",
        data.split, data.split_contexts, data.split_flows
    );
    let _ = writeln!(
        md,
        "- Speed: {:.1} contexts/s on {} in batches of {} ({:.1} s; batch assembly and \
         inference, first batch included).\n",
        evaluation.contexts_per_second, model.device, evaluation.batch, evaluation.seconds
    );

    // Warnings that change how to read the numbers.
    let mut warnings = Vec::new();
    if model.random_weights {
        warnings.push(format!(
            "The weights are random: expect chance level (1/{} = {} % if the classes were \
             balanced); the numbers only show that the pipeline runs.",
            model.classes,
            pct(1.0 / model.classes.max(1) as f64)
        ));
    }
    if data.split == SPLIT_NAMES[TRAIN as usize] {
        warnings.push(
            "This is the training split: the numbers say how well the model fits, \
                       not how well it generalises."
                .to_string(),
        );
    }
    if data.split_mode == SplitMode::Sample {
        warnings.push(
            "The dataset splits contexts independently (as the paper did): packets \
                       of one flow sit in training and test, which inflates every number, and \
                       a flow's verdict here uses only its contexts in this split."
                .to_string(),
        );
    }
    for warning in &warnings {
        let _ = writeln!(md, "> **Note.** {warning}\n");
    }

    // Headline metrics.
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(md, "Percentages. Macro means run over the classes present in the split.\n");
    let _ = writeln!(md, "| metric | contexts | flows |");
    let _ = writeln!(md, "| --- | ---: | ---: |");
    type Value = fn(&Metrics) -> f64;
    let rows: [(&str, Value); 8] = [
        ("accuracy", |m| m.accuracy),
        ("macro precision", |m| m.macro_precision),
        ("macro recall", |m| m.macro_recall),
        ("macro F1", |m| m.macro_f1),
        ("weighted precision", |m| m.weighted_precision),
        ("weighted recall", |m| m.weighted_recall),
        ("weighted F1", |m| m.weighted_f1),
        ("top-1 error", |m| m.top1_error),
    ];
    for (name, value) in rows {
        let _ = writeln!(md, "| {name} | {} | {} |", pct(value(c)), pct(value(f)));
    }
    let _ =
        writeln!(md, "| top-{} error | {} | {} |", c.top_k, pct(c.top5_error), pct(f.top5_error));
    let _ = writeln!(md, "| samples | {} | {} |", c.samples, f.samples);
    let _ = writeln!(
        md,
        "| classes present | {} | {} |\n",
        c.classes_with_support, f.classes_with_support
    );

    // Per class.
    let _ = writeln!(md, "## Per class\n");
    let _ =
        writeln!(md, "Precision, recall and F1 in percent; \"-\": no such sample in the split.\n");
    let _ = writeln!(md, "| class | contexts | P | R | F1 | flows | P | R | F1 |");
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (class, label) in data.labels.iter().enumerate() {
        let cells = |m: &Metrics| -> String {
            match m.per_class.get(class) {
                Some(k) if k.support > 0 => {
                    format!(
                        "{} | {} | {} | {}",
                        k.support,
                        pct(k.precision),
                        pct(k.recall),
                        pct(k.f1)
                    )
                }
                Some(k) if k.predicted > 0 => format!("0 | {} | - | -", pct(k.precision)),
                _ => "0 | - | - | -".to_string(),
            }
        };
        let _ = writeln!(md, "| {} | {} | {} |", label.replace('|', "\\|"), cells(c), cells(f));
    }
    md.push('\n');

    // Most confused pairs, contexts.
    let confusion = &evaluation.context_confusion;
    let mut pairs: Vec<(u64, usize, usize)> = (0..confusion.classes())
        .flat_map(|t| (0..confusion.classes()).map(move |p| (t, p)))
        .filter(|&(t, p)| t != p)
        .map(|(t, p)| (confusion.get(t, p), t, p))
        .filter(|&(count, _, _)| count > 0)
        .collect();
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    if !pairs.is_empty() {
        let _ = writeln!(md, "## Most confused (contexts)\n");
        let _ = writeln!(md, "| true class | predicted as | contexts | share of the true class |");
        let _ = writeln!(md, "| --- | --- | ---: | ---: |");
        let name = |class: usize| data.labels.get(class).map_or("?", String::as_str);
        for &(count, t, p) in pairs.iter().take(8) {
            let share = count as f64 / confusion.row_total(t).max(1) as f64;
            let _ = writeln!(md, "| {} | {} | {count} | {} % |", name(t), name(p), pct(share));
        }
        md.push('\n');
    }

    // How the model came about.
    let _ = writeln!(md, "## Training\n");
    let training = &model.training;
    let recorded = !training.data.is_empty()
        || !training.split.is_empty()
        || !training.notes.is_empty()
        || !training.commands.is_empty()
        || !training.metrics.is_empty();
    if !recorded {
        let _ = writeln!(md, "The card records no training summary.\n");
    }
    if !training.data.is_empty() {
        let _ = writeln!(md, "- Data: {}", training.data);
    }
    if !training.split.is_empty() {
        let _ = writeln!(md, "- Split: {}", training.split);
    }
    if !training.notes.is_empty() {
        let _ = writeln!(md, "- Budget and notes: {}", training.notes);
    }
    for command in &training.commands {
        let _ = writeln!(md, "- Command: `{command}`");
    }
    if !training.metrics.is_empty() {
        let values: Vec<String> =
            training.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        let _ = writeln!(md, "- Recorded on the card: {}", values.join(", "));
    }
    if recorded {
        md.push('\n');
    }

    // How to read it.
    let _ = writeln!(md, "## Conventions\n");
    let _ = writeln!(
        md,
        "- A context's class is its most probable one (lower class index on ties), as the \
         plugin reports it. A flow's class is that of the mean of its contexts' probability \
         vectors, as the plugin reports a flow; its truth is the flow's label.\n\
         - A ratio with a zero denominator counts as 0 (a class never predicted has precision \
         0). Macro means run over the classes with at least one sample in the split; weighted \
         means weigh classes by their samples, so weighted recall equals accuracy. F1 means \
         are means of the per-class F1.\n\
         - Top-{k} error: the true class is not among the {k} most probable (k = min(5, \
         classes)).\n",
        k = c.top_k
    );
    let _ = writeln!(
        md,
        "Files: `metrics.json`, `confusion.csv` and `confusion.png` (contexts), \
         `flow_confusion.png`, `predictions.csv` (contexts), `flow_predictions.csv`."
    );
    md
}

fn split_mode_name(mode: SplitMode) -> &'static str {
    match mode {
        SplitMode::Flow => "flow",
        SplitMode::Capture => "capture",
        SplitMode::Sample => "context (sample)",
    }
}

/// `<folder>/<stem>-eval` for a card `<folder>/<stem>.card.toml`.
fn default_out(model: &Path) -> PathBuf {
    let name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name
        .strip_suffix(".card.toml")
        .or_else(|| name.rsplit_once('.').map(|(stem, _)| stem))
        .unwrap_or(&name);
    model.with_file_name(format!("{stem}-eval"))
}

pub fn run(args: EvalArgs) -> Result<()> {
    // Model and dataset; refuse a mismatch before any inference.
    let device = select_device(&args.device)?;
    let classifier = Classifier::load(&args.model, device)?;
    let dataset = Dataset::load(&args.dataset)?;
    check_compatible(classifier.card(), &dataset.info).with_context(|| {
        format!("{} cannot be evaluated on {}", args.model.display(), args.dataset.display())
    })?;
    let split = args.split.index();
    let subject = Subject {
        model: ModelSummary::of(&classifier, &args.model),
        dataset: DatasetSummary::of(&dataset, &args.dataset, split),
    };

    // Classify the split.
    let bar = ProgressBar::new(subject.dataset.split_contexts as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} contexts {per_sec} {eta}")
    {
        bar.set_style(style);
    }
    let evaluation = evaluate_with_progress(&classifier, &dataset, split, args.batch, Some(&bar))?;
    bar.finish_and_clear();

    // Write and summarise.
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.model));
    let descriptions: Vec<String> = dataset.flows.iter().map(|f| f.description.clone()).collect();
    write_report(&out, &subject, &evaluation, &descriptions)?;
    let (c, f) = (&evaluation.context, &evaluation.flow);
    println!(
        "{} split: contexts accuracy {} % macro F1 {} % ({}), flows accuracy {} % macro F1 {} % \
         ({}); {:.1} contexts/s",
        subject.dataset.split,
        pct(c.accuracy),
        pct(c.macro_f1),
        c.samples,
        pct(f.accuracy),
        pct(f.macro_f1),
        f.samples,
        evaluation.contexts_per_second
    );
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use combo_plugin::config::PreprocessConfig;
    use combo_plugin::model::Attention;

    fn info(labels: &[&str]) -> DatasetInfo {
        DatasetInfo {
            labels: labels.iter().map(|l| l.to_string()).collect(),
            packets_per_context: 5,
            stride: 5,
            contexts_per_flow: 0,
            per_class_cap: 0,
            min_flows_per_class: 0,
            seed: 1,
            split: SplitMode::Flow,
            preprocess: PreprocessConfig::default(),
            source: "test".into(),
            captures: Vec::new(),
            small_classes: BTreeMap::new(),
            unused: BTreeMap::new(),
        }
    }

    fn card(labels: &[&str]) -> ModelCard {
        let labels = labels.iter().map(|l| l.to_string()).collect();
        ModelCard::new("m", labels, 5, Attention::SaSe, PreprocessConfig::default())
    }

    #[test]
    fn mismatches_are_refused_with_the_reason() {
        assert!(check_compatible(&card(&["a", "b"]), &info(&["a", "b"])).is_ok());
        let order = check_compatible(&card(&["b", "a"]), &info(&["a", "b"])).unwrap_err();
        assert!(order.to_string().contains("another order"), "{order}");
        assert!(check_compatible(&card(&["a", "c"]), &info(&["a", "b"])).is_err());
        let mut other_n = info(&["a", "b"]);
        other_n.packets_per_context = 3;
        assert!(
            check_compatible(&card(&["a", "b"]), &other_n).unwrap_err().to_string().contains("N=3")
        );
        let mut masked = info(&["a", "b"]);
        masked.preprocess.mask_ttl = true;
        let error = check_compatible(&card(&["a", "b"]), &masked).unwrap_err().to_string();
        assert!(error.contains("mask_ttl"), "{error}");
    }

    #[test]
    fn flow_verdict_is_the_mean_of_its_contexts() {
        // Flow 7: (0.9, 0.1) and (0.2, 0.8) -> mean (0.55, 0.45): class 0, though its second
        // context alone says class 1. Flow 3: one context (0.4, 0.6).
        let flows = [7, 3, 7];
        let probs = [0.9, 0.1, 0.4, 0.6, 0.2, 0.8];
        let means = flow_means(&flows, &probs, 2);
        assert_eq!(means.len(), 2);
        assert_eq!((means[0].0, means[0].1), (3, 1));
        assert_eq!((means[1].0, means[1].1), (7, 2));
        assert!((means[1].2[0] - 0.55).abs() < 1e-6 && (means[1].2[1] - 0.45).abs() < 1e-6);
        assert_eq!(predicted_class(&means[1].2), 0);
    }

    #[test]
    fn csv_and_paths() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
        let mut confusion = Confusion::new(2);
        confusion.add(0, 1).unwrap();
        let labels = ["x".to_string(), "y,z".to_string()];
        assert_eq!(
            confusion_csv(&labels, &confusion),
            "truth\\predicted,x,\"y,z\"\nx,0,1\n\"y,z\",0,0\n"
        );
        assert_eq!(default_out(Path::new("/m/a.card.toml")), Path::new("/m/a-eval"));
        assert_eq!(default_out(Path::new("b.toml")), Path::new("b-eval"));
    }
}
