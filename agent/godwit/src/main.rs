//! The `godwit` binary: parses arguments and hands over to the library.

fn main() -> std::process::ExitCode {
    godwit::cli::main()
}
