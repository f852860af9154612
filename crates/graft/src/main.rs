//! The `graft` command: parses arguments, runs the subcommand, maps failures to exit codes.

mod bench_cmd;
mod bench_gates;
mod bench_rollouts;
mod build_cmd;
mod cli;
mod demo_cmd;
mod demo_fleet;
mod each_cmd;
mod fleet_cmd;
mod host_cmd;
mod kernel_cmd;
mod lab_cmd;
mod progress;
mod rollout_cmd;
mod server_cmd;
mod test_cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("graft: error: {error:#}");
            ExitCode::from(exit_code_of(&error))
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Kernel(cmd) => kernel_cmd::run(cmd),
        cli::Command::Lab(cmd) => lab_cmd::run(cmd),
        cli::Command::Build(args) => build_cmd::run(args),
        cli::Command::Bench(cli::BenchCommand::Build(args)) => bench_cmd::run(args),
        cli::Command::Bench(cli::BenchCommand::Apply(args)) => bench_cmd::apply(args),
        cli::Command::Bench(cli::BenchCommand::ApplyGuest(args)) => bench_cmd::apply_guest(args),
        cli::Command::Bench(cli::BenchCommand::Gates(args)) => bench_gates::run(&args),
        cli::Command::Bench(cli::BenchCommand::Rollouts(args)) => bench_rollouts::run(&args),
        cli::Command::Test(args) => test_cmd::run(args),
        cli::Command::Demo(args) => match &args.what {
            None => demo_cmd::run(&args.kernel.target),
            Some(cli::DemoCommand::Fleet(fleet)) => demo_fleet::run(fleet),
        },
        cli::Command::Fleet(args) => fleet_cmd::run(&args),
        cli::Command::Agent(args) => fleet_cmd::agent(&args),
        cli::Command::Server(cmd) => server_cmd::run(&cmd),
        cli::Command::Apply(args) => host_cmd::apply(args),
        cli::Command::Revert(args) => host_cmd::revert(args),
        cli::Command::Status(args) => host_cmd::status(args, false),
        cli::Command::List(args) => host_cmd::status(args, true),
        cli::Command::Install(args) => host_cmd::install(args),
        cli::Command::Uninstall(args) => host_cmd::uninstall(args),
        cli::Command::Boot(args) => host_cmd::boot(args),
    }
}

/// Lab outcomes have their own statuses so automation can tell them apart from the script's.
fn exit_code_of(error: &anyhow::Error) -> u8 {
    use graft_lab::LabError;
    if let Some(build) = error
        .chain()
        .find_map(|e| e.downcast_ref::<graft_build::BuildError>())
    {
        return build.outcome().exit_code();
    }
    let lab = error.chain().find_map(|e| e.downcast_ref::<LabError>());
    match lab {
        Some(LabError::ScriptTimeout { .. }) => lab_cmd::EXIT_TIMEOUT,
        Some(LabError::KernelPanic { .. }) => lab_cmd::EXIT_PANIC,
        Some(LabError::NeverReachedScript { .. } | LabError::GuestStopped { .. }) => {
            lab_cmd::EXIT_GUEST_FAILED
        }
        _ => 1,
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("GRAFT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in logs, pipes or a lab guest's port.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
