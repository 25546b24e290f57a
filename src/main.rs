//! The `cairn` binary: parses the command line and hands over to [`cairn::cli`].

fn main() -> std::process::ExitCode {
    cairn::cli::main()
}
