//! `combo init-model` and `combo show-model`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use combo_plugin::config::PreprocessConfig;
use combo_plugin::model::{Attention, Classifier, ModelCard, Precision};

#[derive(Args)]
pub struct InitModelArgs {
    /// Where to write the card; the weights go beside it as `<stem>.safetensors`.
    #[arg(long)]
    out: PathBuf,
    /// Class labels, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    labels: Vec<String>,
    /// Packets per context (N): 1, 3 or 5.
    #[arg(long, default_value_t = 5)]
    packets: usize,
    /// none, sa, se or sa_se.
    #[arg(long, default_value = "sa_se")]
    attention: Attention,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    seed: i64,
    /// Store the weights in half precision.
    #[arg(long)]
    half: bool,
}

pub fn init_model(args: InitModelArgs) -> Result<()> {
    if args.labels.len() < 2 {
        bail!("a classifier needs at least two labels");
    }
    let name = args
        .out
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".card.toml"))
        .context("--out must end in .card.toml")?
        .to_string();
    let mut card = ModelCard::new(
        &name,
        args.labels,
        args.packets,
        args.attention,
        PreprocessConfig::default(),
    );
    card.training.notes = "Untrained: random weights stand in until a trained model is \
                           shipped. Its labels carry no meaning."
        .into();
    let classifier = Classifier::new_random(card, tch::Device::Cpu, args.seed)?;
    let precision = if args.half { Precision::F16 } else { Precision::F32 };
    classifier.save(&args.out, precision)?;
    log::info!(
        "wrote {} ({} parameters, random weights)",
        args.out.display(),
        classifier.parameter_count()
    );
    Ok(())
}

pub fn show_model(card: &Path) -> Result<()> {
    let classifier = Classifier::load(card, tch::Device::Cpu)?;
    let card = classifier.card();
    // Written, not printed: a closed pipe (`| head`) is then an error to report, not a panic.
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", toml::to_string_pretty(card)?)?;
    writeln!(out, "# parameters counted on load: {}", classifier.parameter_count())?;
    Ok(())
}
