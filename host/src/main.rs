//! `combo`: the Combo Packet command line.
//!
//! `replay` feeds capture files through the plugin's C ABI, loaded with libloading exactly as
//! a packet engine would load it; the model commands use the engine crate directly.

mod ablate;
mod bench;
mod capture;
mod dataset;
mod eval;
mod metrics;
mod model_cmd;
mod plot;
mod plugin;
mod replay;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "combo", version, about = "Classify encrypted traffic from packet contexts")]
struct Cli {
    /// Log level: error, warn, info, debug, trace (overridden by RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay pcap/pcapng files through the plugin and print one JSON line per flow.
    Replay(replay::ReplayArgs),
    /// Create a model with random weights (a stand-in until a trained one exists).
    InitModel(model_cmd::InitModelArgs),
    /// Build a dataset of labeled contexts from captures.
    Dataset(dataset::DatasetArgs),
    /// Train a model on a dataset.
    Train(train::TrainArgs),
    /// Evaluate a model on a split of a dataset: metrics, confusion matrices, report.
    Eval(eval::EvalArgs),
    /// The paper's ablation (N x attention) plus capture split and shortcut masks.
    Ablate(ablate::AblateArgs),
    /// Measure the packet path and the model on this machine.
    Bench(bench::BenchArgs),
    /// Print a model card and its parameter count.
    ShowModel {
        /// The model card (`*.card.toml`).
        card: PathBuf,
    },
}

/// Freed CPU activation memory `combo train`, `eval` and `bench` keep for their next batch.
const HOST_CPU_CACHE_BYTES: usize = 4 << 30;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`combo bench model | head`) panics.
    // Output goes to pipes often: end quietly there, as other command-line tools do.
    // SAFETY: restoring a signal's default disposition has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    env_logger::Builder::new()
        .parse_filters(&cli.log)
        .parse_env("RUST_LOG")
        .format_timestamp(None)
        .init();
    // Commands that run the model in this process keep freed activations for the next batch
    // (replay leaves it to the plugin's engine, which sizes its own cache).
    let _cpu_cache = match cli.command {
        Command::Replay(_) => None,
        _ => combo_plugin::cpu_allocator::CacheUser::join(HOST_CPU_CACHE_BYTES),
    };
    let result = match cli.command {
        Command::Dataset(args) => dataset::run(args).map(|()| ExitCode::SUCCESS),
        Command::Train(args) => train::run(args).map(|()| ExitCode::SUCCESS),
        Command::Eval(args) => eval::run(args).map(|()| ExitCode::SUCCESS),
        Command::Ablate(args) => ablate::run(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
        Command::Replay(args) => replay::run(args),
        Command::InitModel(args) => model_cmd::init_model(args).map(|()| ExitCode::SUCCESS),
        Command::ShowModel { card } => model_cmd::show_model(&card).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("combo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
