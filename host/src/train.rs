//! `combo train`: a dataset to a model card the plugin loads.
//!
//! Adam (batch 32 by default, as in the paper), a learning rate halved when the validation
//! loss stops improving, early stopping, the best epoch's weights kept. Adam's state lives in
//! our own tensors rather than tch's optimizer so that a checkpoint holds all of it; each
//! epoch's order and dropout draw from seeds of their own, so a run resumed from a checkpoint
//! ends exactly where an uninterrupted one does. Checkpoints are replaced whole, never partly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use combo_plugin::model::{
    Attention, Classifier, ModelCard, Precision, TrainingSummary, scale_bytes, select_device,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::dataset::{Dataset, SplitMix64, TRAIN, VALIDATION};
use crate::plot::{EpochPoint, training_curves_png};

#[derive(Args, Clone)]
pub struct TrainArgs {
    /// Dataset made by `combo dataset`.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Model card to write (`*.card.toml`); the best epoch's weights go beside it.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "sa_se")]
    pub attention: Attention,
    /// Most epochs.
    #[arg(long, default_value_t = 40)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Initial learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub learning_rate: f64,
    /// Halve the learning rate after this many epochs without a better validation loss.
    #[arg(long, default_value_t = 2)]
    pub lr_patience: usize,
    /// Stop after this many epochs without a better validation loss.
    #[arg(long, default_value_t = 5)]
    pub patience: usize,
    /// Training contexts per epoch, a random subset each epoch (0: all): a time budget.
    #[arg(long, default_value_t = 0)]
    pub epoch_contexts: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// libtorch CPU threads (0: libtorch's default, one per CPU: training has the machine).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Continue from the checkpoint beside --out.
    #[arg(long)]
    pub resume: bool,
    /// Store the final weights in half precision (half the size; predictions move ~1e-3).
    #[arg(long)]
    pub half: bool,
    /// The command line to record in the card (default: this one).
    #[arg(long)]
    pub record_command: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPSILON: f64 = 1e-8;
/// A validation loss must improve by this much to count as better.
const MIN_IMPROVEMENT: f64 = 1e-4;
/// Below this the learning rate is not lowered further.
const MIN_LEARNING_RATE: f64 = 1e-6;

/// Everything needed to continue a run, besides the weights and Adam's moments.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct RunState {
    epochs_done: usize,
    steps: i64,
    learning_rate: f64,
    best_validation_loss: f64,
    best_epoch: usize,
    epochs_without_improvement: usize,
    history: Vec<EpochPoint>,
    seconds: f64,
}

/// Adam's first and second moments, by variable name.
struct Adam {
    first: BTreeMap<String, Tensor>,
    second: BTreeMap<String, Tensor>,
}

impl Adam {
    fn new(variables: &BTreeMap<String, Tensor>) -> Result<Self> {
        let zeros = |t: &Tensor| t.f_zeros_like();
        Ok(Self {
            first: variables
                .iter()
                .map(|(n, t)| Ok((n.clone(), zeros(t)?)))
                .collect::<Result<_>>()?,
            second: variables
                .iter()
                .map(|(n, t)| Ok((n.clone(), zeros(t)?)))
                .collect::<Result<_>>()?,
        })
    }

    /// One step with bias correction; `steps` counts this step.
    fn step(
        &mut self,
        variables: &BTreeMap<String, Tensor>,
        learning_rate: f64,
        steps: i64,
    ) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        let correction1 = 1.0 - ADAM_BETA1.powi(steps as i32);
        let correction2 = 1.0 - ADAM_BETA2.powi(steps as i32);
        for (name, variable) in variables {
            let gradient = variable.f_grad()?;
            if !gradient.defined() {
                continue;
            }
            let (Some(first), Some(second)) = (self.first.get_mut(name), self.second.get_mut(name))
            else {
                bail!("no Adam state for {name}");
            };
            let _ = first
                .f_mul_scalar_(ADAM_BETA1)?
                .f_add_(&gradient.f_mul_scalar(1.0 - ADAM_BETA1)?)?;
            let _ = second
                .f_mul_scalar_(ADAM_BETA2)?
                .f_add_(&gradient.f_mul(&gradient)?.f_mul_scalar(1.0 - ADAM_BETA2)?)?;
            let denominator =
                second.f_div_scalar(correction2)?.f_sqrt()?.f_add_scalar(ADAM_EPSILON)?;
            let update = first.f_div(&denominator)?.f_mul_scalar(learning_rate / correction1)?;
            let mut variable = variable.shallow_clone();
            let _ = variable.f_sub_(&update)?;
        }
        Ok(())
    }

    fn save(&self, path: &Path) -> Result<()> {
        // The moments take their variables' memory layouts (some weights are channels last);
        // the safetensors writer takes contiguous tensors only.
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (name, t) in &self.first {
            named.push((format!("first.{name}"), t.f_contiguous()?));
        }
        for (name, t) in &self.second {
            named.push((format!("second.{name}"), t.f_contiguous()?));
        }
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads the moments of `variables` from `path`. Each moment takes its variable's shape:
    /// a checkpoint may hold a weight in another shape with the same values in the same order
    /// (the hidden layer's weight was `[U, F * W2]` before it became `[U, F, 1, W2]`).
    fn load(path: &Path, variables: &BTreeMap<String, Tensor>, device: Device) -> Result<Self> {
        let failed = |what: String| anyhow::anyhow!("checkpoint {}: {what}", path.display());
        let mut stored: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| failed(format!("cannot read Adam's state: {e}")))?
            .into_iter()
            .collect();
        let mut adam = Self { first: BTreeMap::new(), second: BTreeMap::new() };
        for (name, variable) in variables {
            for (moment, moments) in [("first", &mut adam.first), ("second", &mut adam.second)] {
                let key = format!("{moment}.{name}");
                let tensor = stored
                    .remove(&key)
                    .ok_or_else(|| failed(format!("no Adam state '{key}' for the network")))?;
                if tensor.numel() != variable.numel() {
                    return Err(failed(format!(
                        "Adam state '{key}' has shape {:?}, the network's variable {:?}",
                        tensor.size(),
                        variable.size()
                    )));
                }
                moments
                    .insert(name.clone(), tensor.f_reshape(variable.size())?.f_to_device(device)?);
            }
        }
        if let Some(extra) = stored.keys().next() {
            return Err(failed(format!(
                "Adam state '{extra}' is for a variable the network lacks"
            )));
        }
        Ok(adam)
    }
}

/// Writes the checkpoint whole: into `<folder>.new`, then swapped in by renames, so a run
/// killed at any moment leaves one complete checkpoint (`<folder>`, or `<folder>.old` between
/// the two renames) and never weights of one epoch beside Adam's state of another.
fn write_checkpoint(
    folder: &Path,
    classifier: &Classifier,
    adam: &Adam,
    state: &RunState,
) -> Result<()> {
    let (new, old) = (sibling(folder, "new"), sibling(folder, "old"));
    let _ = std::fs::remove_dir_all(&new);
    std::fs::create_dir_all(&new)?;
    classifier.save(&new.join("last.card.toml"), Precision::F32)?;
    adam.save(&new.join("adam.safetensors"))?;
    std::fs::write(new.join("state.json"), serde_json::to_string_pretty(state)?)?;
    if folder.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(folder, &old)
            .with_context(|| format!("cannot move {} aside", folder.display()))?;
    }
    std::fs::rename(&new, folder)
        .with_context(|| format!("cannot move the new checkpoint to {}", folder.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The complete checkpoint to resume from, if any (see [`write_checkpoint`]).
fn complete_checkpoint(folder: &Path) -> Option<PathBuf> {
    [folder.to_path_buf(), sibling(folder, "old")]
        .into_iter()
        .find(|candidate| candidate.join("state.json").exists())
}

/// `<folder>.<suffix>` beside `folder`.
fn sibling(folder: &Path, suffix: &str) -> PathBuf {
    let mut name = folder.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    folder.with_file_name(name)
}

fn checkpoint_dir(out: &Path) -> PathBuf {
    let stem =
        out.file_name().and_then(|n| n.to_str()).unwrap_or("model").trim_end_matches(".card.toml");
    out.with_file_name(format!("{stem}.checkpoint"))
}

fn card_stem(out: &Path) -> Result<String> {
    out.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".card.toml"))
        .map(str::to_string)
        .context("--out must end in .card.toml")
}

/// What a finished run produced.
pub struct TrainOutcome {
    pub best_epoch: usize,
    pub best_validation_loss: f64,
    pub epochs_run: usize,
    pub seconds: f64,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let outcome = train(&args)?;
    println!(
        "best epoch {} of {} (validation loss {:.4}) in {:.0} s; model: {}",
        outcome.best_epoch,
        outcome.epochs_run,
        outcome.best_validation_loss,
        outcome.seconds,
        args.out.display()
    );
    Ok(())
}

pub fn train(args: &TrainArgs) -> Result<TrainOutcome> {
    if args.batch == 0 || args.epochs == 0 {
        bail!("--batch and --epochs must be positive");
    }
    if args.threads > 0 {
        tch::set_num_threads(args.threads as i32);
    }
    let device = select_device(&args.device)?;
    let name = card_stem(&args.out)?;
    let weights = args.out.with_file_name(format!("{name}.safetensors"));
    if std::fs::canonicalize(&weights).ok() == std::fs::canonicalize(&args.dataset).ok()
        && weights.exists()
    {
        bail!(
            "the model's weights {} would overwrite the dataset; choose another --out",
            weights.display()
        );
    }
    let dataset = Dataset::load(&args.dataset)?;
    let train_indices = dataset.split(TRAIN);
    let validation_indices = dataset.split(VALIDATION);
    if train_indices.is_empty() || validation_indices.is_empty() {
        bail!("the dataset needs training and validation contexts");
    }
    let info = &dataset.info;
    let checkpoint = checkpoint_dir(&args.out);

    // A fresh model, or the last checkpoint with its optimizer state.
    let resume_from = if args.resume { complete_checkpoint(&checkpoint) } else { None };
    if args.resume && resume_from.is_none() {
        log::warn!("--resume: no checkpoint at {}; starting a new run", checkpoint.display());
    }
    let (mut classifier, mut adam, mut state) = if let Some(folder) = resume_from {
        let classifier = Classifier::load(&folder.join("last.card.toml"), device)?;
        let card = classifier.card();
        if card.attention != args.attention
            || card.packets_per_context != info.packets_per_context
            || card.labels != info.labels
        {
            bail!(
                "--resume: the checkpoint in {} is a model with attention {}, N = {} and {} \
                 labels; this run asks for attention {} on a dataset of N = {} with {} labels \
                 (start a new run without --resume, or keep the checkpoint's settings)",
                folder.display(),
                card.attention,
                card.packets_per_context,
                card.labels.len(),
                args.attention,
                info.packets_per_context,
                info.labels.len()
            );
        }
        let adam =
            Adam::load(&folder.join("adam.safetensors"), &named_variables(&classifier), device)?;
        let state_path = folder.join("state.json");
        let state: RunState = serde_json::from_str(&std::fs::read_to_string(&state_path)?)
            .with_context(|| format!("cannot read {}", state_path.display()))?;
        log::info!("resuming after epoch {} from {}", state.epochs_done, folder.display());
        (classifier, adam, state)
    } else {
        let card = ModelCard::new(
            &name,
            info.labels.clone(),
            info.packets_per_context,
            args.attention,
            info.preprocess.clone(),
        );
        let classifier = Classifier::new_random(card, device, args.seed as i64)?;
        let adam = Adam::new(&named_variables(&classifier))?;
        let state = RunState {
            epochs_done: 0,
            steps: 0,
            learning_rate: args.learning_rate,
            best_validation_loss: f64::INFINITY,
            best_epoch: 0,
            epochs_without_improvement: 0,
            history: Vec::new(),
            seconds: 0.0,
        };
        (classifier, adam, state)
    };
    log::info!(
        "training N={} {} on {} contexts ({} validation), {} classes, {} parameters, {:?}",
        info.packets_per_context,
        args.attention,
        train_indices.len(),
        validation_indices.len(),
        info.labels.len(),
        classifier.parameter_count(),
        device
    );

    let variables = named_variables(&classifier);
    let mut raw = Vec::new();
    while state.epochs_done < args.epochs && state.epochs_without_improvement < args.patience {
        let epoch = state.epochs_done + 1;
        let started = Instant::now();

        // The epoch's order depends only on the seed and the epoch, so a resumed run sees
        // what an uninterrupted one would.
        let epoch_seed = args.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9);
        let mut order = train_indices.clone();
        SplitMix64(epoch_seed).shuffle(&mut order);
        // Dropout draws from libtorch's generator: seeded per epoch, for the same reason.
        tch::manual_seed(epoch_seed as i64);
        if args.epoch_contexts > 0 {
            order.truncate(args.epoch_contexts);
        }
        let progress =
            if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(order.len() as u64) };
        progress.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        progress.set_prefix(format!("{epoch}/{}", args.epochs));
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0usize);
        for batch in order.chunks(args.batch) {
            raw.clear();
            dataset.fill_batch(batch, &mut raw);
            let (xs, targets) = inputs(&dataset, batch, &raw, device)?;
            for variable in variables.values() {
                let mut variable = variable.shallow_clone();
                variable.zero_grad();
            }
            let logits = classifier.net().f_forward_t(&xs, true)?;
            let loss = cross_entropy(&logits, &targets, tch::Reduction::Mean)?;
            loss.f_backward()?;
            state.steps += 1;
            adam.step(&variables, state.learning_rate, state.steps)?;
            loss_sum += loss.f_double_value(&[])? * batch.len() as f64;
            correct += logits
                .f_argmax(-1, false)?
                .f_eq_tensor(&targets)?
                .f_sum(Kind::Int64)?
                .f_int64_value(&[])?;
            seen += batch.len();
            progress.inc(batch.len() as u64);
            progress.set_message(format!(
                "loss {:.4} acc {:.3}",
                loss_sum / seen as f64,
                correct as f64 / seen as f64
            ));
        }
        progress.finish_and_clear();
        let (validation_loss, validation_accuracy) =
            evaluate_loss(&classifier, &dataset, &validation_indices, args.batch.max(64), device)?;
        let point = EpochPoint {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            validation_loss,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            validation_accuracy,
            learning_rate: state.learning_rate,
        };
        state.seconds += started.elapsed().as_secs_f64();
        log::info!(
            "epoch {epoch}: train loss {:.4} acc {:.3} | validation loss {:.4} acc {:.3} | \
             lr {:.1e} | {:.0} s",
            point.train_loss,
            point.train_accuracy,
            point.validation_loss,
            point.validation_accuracy,
            point.learning_rate,
            started.elapsed().as_secs_f64()
        );
        state.history.push(point);
        state.epochs_done = epoch;

        // Keep the best epoch; lower the rate on a plateau; stop on a long one.
        if validation_loss < state.best_validation_loss - MIN_IMPROVEMENT {
            state.best_validation_loss = validation_loss;
            state.best_epoch = epoch;
            state.epochs_without_improvement = 0;
            save_best(&mut classifier, args, &dataset, &state)?;
        } else {
            state.epochs_without_improvement += 1;
            if state.epochs_without_improvement % args.lr_patience.max(1) == 0 {
                state.learning_rate = (state.learning_rate * 0.5).max(MIN_LEARNING_RATE);
            }
        }

        write_checkpoint(&checkpoint, &classifier, &adam, &state)?;
    }

    // The curves and the log beside the model.
    let stem = card_stem(&args.out)?;
    let log_path = args.out.with_file_name(format!("{stem}.training.json"));
    std::fs::write(&log_path, serde_json::to_string_pretty(&state)?)?;
    training_curves_png(&args.out.with_file_name(format!("{stem}.training.png")), &state.history)?;
    Ok(TrainOutcome {
        best_epoch: state.best_epoch,
        best_validation_loss: state.best_validation_loss,
        epochs_run: state.epochs_done,
        seconds: state.seconds,
    })
}

fn named_variables(classifier: &Classifier) -> BTreeMap<String, Tensor> {
    classifier.var_store().variables().into_iter().collect()
}

/// Cross-entropy of `logits` against the class indices `targets`; no index is ignored (-100,
/// libtorch's default ignore index, is no class's).
fn cross_entropy(logits: &Tensor, targets: &Tensor, reduction: tch::Reduction) -> Result<Tensor> {
    const IGNORE_NONE: i64 = -100;
    let log_probabilities = logits.f_log_softmax(-1, Kind::Float)?;
    Ok(log_probabilities.f_nll_loss(targets, None::<Tensor>, reduction, IGNORE_NONE)?)
}

fn inputs(
    dataset: &Dataset,
    batch: &[usize],
    raw: &[u8],
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let info = &dataset.info;
    let xs = scale_bytes(
        raw,
        batch.len(),
        info.packets_per_context,
        info.preprocess.packet_bytes,
        device,
    )?;
    let labels: Vec<i64> = batch.iter().map(|&i| dataset.context_label[i] as i64).collect();
    let targets = Tensor::f_from_slice(&labels)?.f_to_device(device)?;
    Ok((xs, targets))
}

/// Mean loss and accuracy over some contexts, without dropout or gradients.
fn evaluate_loss(
    classifier: &Classifier,
    dataset: &Dataset,
    indices: &[usize],
    batch: usize,
    device: Device,
) -> Result<(f64, f64)> {
    let _no_grad = tch::no_grad_guard();
    let (mut loss_sum, mut correct) = (0.0, 0i64);
    let mut raw = Vec::new();
    for chunk in indices.chunks(batch) {
        raw.clear();
        dataset.fill_batch(chunk, &mut raw);
        let (xs, targets) = inputs(dataset, chunk, &raw, device)?;
        let logits = classifier.net().f_forward_t(&xs, false)?;
        let loss = cross_entropy(&logits, &targets, tch::Reduction::Sum)?;
        loss_sum += loss.f_double_value(&[])?;
        correct += logits
            .f_argmax(-1, false)?
            .f_eq_tensor(&targets)?
            .f_sum(Kind::Int64)?
            .f_int64_value(&[])?;
    }
    let n = indices.len().max(1) as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

fn save_best(
    classifier: &mut Classifier,
    args: &TrainArgs,
    dataset: &Dataset,
    state: &RunState,
) -> Result<()> {
    let info = &dataset.info;
    let command = args
        .record_command
        .clone()
        .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
    let mut metrics = BTreeMap::new();
    metrics.insert("validation_loss".to_string(), state.best_validation_loss);
    if let Some(point) = state.history.last() {
        metrics.insert("validation_accuracy".to_string(), point.validation_accuracy);
        metrics.insert("train_accuracy".to_string(), point.train_accuracy);
    }
    classifier.mark_trained(TrainingSummary {
        data: format!(
            "{} ({} contexts: {} train, {} validation; {} flows; N={}, stride {}, \
             per-class cap {})",
            info.source,
            dataset.len(),
            dataset.split(TRAIN).len(),
            dataset.split(VALIDATION).len(),
            dataset.flows.len(),
            info.packets_per_context,
            info.stride,
            info.per_class_cap
        ),
        split: format!("{:?}, 8:1:1, seed {}", info.split, info.seed).to_lowercase(),
        commands: vec![command],
        metrics,
        notes: format!(
            "best of {} epochs at epoch {} ({:.0} s so far), batch {}, Adam lr {} halved after {} \
             epochs without improvement, device {}",
            state.epochs_done,
            state.best_epoch,
            state.seconds,
            args.batch,
            args.learning_rate,
            args.lr_patience,
            args.device
        ),
    });
    let precision = if args.half { Precision::F16 } else { Precision::F32 };
    classifier.save(&args.out, precision)?;
    Ok(())
}
