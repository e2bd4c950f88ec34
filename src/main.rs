fn main() -> std::process::ExitCode {
    palisweep::app::main()
}
