use clap::Parser;

fn main() -> std::process::ExitCode {
    huabi::cli::run(huabi::cli::Cli::parse())
}
