//! The `sockspan` binary; everything lives in the library (see `lib.rs`).

fn main() -> std::process::ExitCode {
    sockspan::cli_main()
}
